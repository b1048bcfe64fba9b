// The agent's hand decoder of ClusterLoadAssignment (agent/sources/xds/cla.ts) against the path it replaces:
// protobufjs' decode + toObject, then digestEndpoints. Three kinds of input:
//  - well-formed bytes of many shapes, written field by field here so that they hold what an encoder of the .proto
//    would not write: fields out of order, singular fields twice, unknown fields of every wire type (groups too),
//    enum values no .proto names, empty wrappers, fields sockmesh does not read. Both paths must agree exactly
//    (endpoints, weights, positions, notes, or the same error for a bad endpoint);
//  - the same bytes mutated at random (flips, insertions, deletions, truncation): when both accept, they agree; when
//    protobufjs refuses, the hand decoder may accept only by having skipped the broken part (counted); when the hand
//    decoder refuses what protobufjs reads, its error is one of its documented strict checks;
//  - hand-made bad bytes: the error names the field and the byte.
import t from 'tap';
import { prng } from '../../bench/lib/fleet.js';
import { decodeClusterLoadAssignment } from '../../agent/sources/xds/cla.js';
import { digestEndpoints, type EndpointsDigest } from '../../agent/sources/xds/digest.js';
import { XdsResourceError } from '../../agent/sources/xds/errors.js';
import { TYPE } from '../../xds/envoy.js';
import { unpackAny } from '../../xds/protos.js';
import { encodeClusterLoadAssignment } from '../../controlplane/snapshot.js';

const random = prng(99); // seeded: a failure is the same on every run
const rand = (n: number): number => Math.floor(random() * n);
const chance = (p: number) => rand(1000) < p * 1000;
const pick = <T>(xs: readonly T[]): T => xs[rand(xs.length)]!;

// ---- a field-by-field protobuf writer (the test's own, independent of both decoders) ----

function varint(n: number | bigint): number[] {
  let v = BigInt.asUintN(64, BigInt(n));
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}
type Bytes = number[];
const tag = (field: number, wire: number) => varint(field * 8 + wire);
const vfield = (field: number, n: number | bigint): Bytes => [...tag(field, 0), ...varint(n)];
const ld = (field: number, body: Bytes): Bytes => [...tag(field, 2), ...varint(body.length), ...body];
const str = (field: number, s: string): Bytes => ld(field, [...Buffer.from(s, 'utf8')]);

/** An unknown field of a random wire type (a group holds a few more), numbered away from the known ones. */
function unknownField(depth = 0): Bytes {
  const field = pick([15, 16, 100, 999, 2047, 536870911]);
  switch (rand(depth < 2 ? 5 : 4)) {
    case 0: return vfield(field, pick([0, 1, 300, 2 ** 40, -1n]));
    case 1: return [...tag(field, 1), ...Array.from({ length: 8 }, () => rand(256))];
    case 2: return ld(field, Array.from({ length: rand(20) }, () => rand(256)));
    case 3: return [...tag(field, 5), ...Array.from({ length: 4 }, () => rand(256))];
    default: {
      const inner: Bytes = [];
      for (let i = rand(3); i > 0; i--) inner.push(...unknownField(depth + 1));
      return [...tag(field, 3), ...inner, ...tag(field, 4)];
    }
  }
}

/**
 * Fields of a message in random order, with unknown ones sprinkled in. `block`: a repeated field's entries, kept in
 * their order and together, placed between two of the other fields.
 */
function message(fields: Bytes[], ordered = false, block: Bytes[] = []): Bytes {
  const list = fields.slice();
  if (!ordered) {
    for (let i = list.length - 1; i > 0; i--) {
      const j = rand(i + 1);
      [list[i], list[j]] = [list[j]!, list[i]!];
    }
  }
  if (block.length > 0) list.splice(rand(list.length + 1), 0, block.flat());
  const out: Bytes = [];
  for (const f of list) {
    if (chance(0.15)) out.push(...unknownField());
    out.push(...f);
  }
  if (chance(0.1)) out.push(...unknownField());
  return out;
}

const randomAddress = () => pick(['127.0.0.1', '10.1.2.3', '198.18.0.7', '::1', '2001:db8::42', 'fd00::1', '', 'not-an-ip', 'ä€😀', '127.0.0.' + rand(256)]);
const wrapper = (n?: number): Bytes => (n === undefined ? [] : vfield(1, n));

function socketAddress(): Bytes {
  const f: Bytes[] = [];
  if (chance(0.99)) f.push(str(2, randomAddress()));
  if (chance(0.99)) f.push(vfield(3, chance(0.02) ? pick([0, 65536, 2 ** 32 + 80]) : pick([80, 8080, 1, 65535, 443 + rand(1000)])));
  if (chance(0.2)) f.push(vfield(1, pick([0, 1, 7]))); // protocol
  if (chance(0.1)) f.push(str(5, 'resolver'));
  if (chance(0.1)) f.push(vfield(6, 1));
  if (chance(0.05)) f.push(str(4, 'named')); // named_port
  if (chance(0.05)) f.push(vfield(3, 9090)); // port_value twice: the last counts
  return message(f);
}

function address(): Bytes {
  const f: Bytes[] = [];
  if (chance(0.99)) f.push(ld(1, socketAddress()));
  if (chance(0.05)) f.push(ld(2, str(1, '/run/x.sock'))); // pipe
  if (chance(0.04)) f.push(ld(1, socketAddress())); // socket_address twice: protobufjs keeps the last
  return message(f);
}

function lbEndpoint(): Bytes {
  const f: Bytes[] = [];
  if (chance(0.99)) {
    const ep: Bytes[] = [];
    if (chance(0.99)) ep.push(ld(1, address()));
    if (chance(0.1)) ep.push(str(3, 'host.example'));
    if (chance(0.1)) ep.push(ld(2, vfield(1, 8081))); // health_check_config
    if (chance(0.05)) ep.push(ld(1, address())); // address twice
    f.push(ld(1, message(ep)));
  }
  if (chance(0.5)) f.push(vfield(2, pick([0, 1, 1, 1, 2, 3, 4, 5, 9, -1n])));
  if (chance(0.6)) f.push(ld(4, wrapper(pick([undefined, 0, 1, 2, 100, 10000, 2 ** 32 - 1]))));
  if (chance(0.01)) f.push(str(5, pick(['', 'named-ep'])));
  // metadata (not read): a filter_metadata entry with its Struct (protobufjs' toObject fails on an entry without one)
  if (chance(0.1)) f.push(ld(3, ld(1, [...str(1, 'k'), ...ld(2, [])])));
  if (chance(0.03)) f.push(ld(1, ld(1, address()))); // endpoint twice
  return message(f);
}

function locality(): Bytes {
  const f: Bytes[] = [];
  const n = pick([0, 1, 2, 3, 10, 40]);
  for (let i = 0; i < n; i++) f.push(ld(2, lbEndpoint()));
  if (chance(0.3)) f.push(ld(1, message([str(1, 'region'), str(2, 'zone')])));
  if (chance(0.5)) f.push(ld(3, wrapper(1)));
  if (chance(0.25)) f.push(vfield(5, pick([0, 0, 1, 2, 2 ** 32])));
  if (chance(0.05)) f.push(ld(6, wrapper(3))); // proximity
  if (chance(0.05)) f.push(ld(9, [])); // metadata
  // lb_endpoints keep their order whatever the other fields do
  return message(f.filter((b) => b[0] !== 0x12), false, f.filter((b) => b[0] === 0x12));
}

function assignment(): Buffer {
  const f: Bytes[] = [];
  if (chance(0.95)) f.push(str(1, pick(['svc-1', 'ns/svc', 'ä€😀-cluster', 'x'.repeat(200)])));
  const groups = pick([0, 1, 1, 1, 2, 3]);
  const eps: Bytes[] = [];
  for (let i = 0; i < groups; i++) eps.push(ld(2, locality()));
  if (chance(0.1)) f.push(ld(4, message([ld(2, str(1, 'cat')), ld(3, wrapper(140))]))); // policy: drop_overloads, overprovisioning_factor
  if (chance(0.05)) f.push(ld(5, message([str(1, 'k'), ld(2, ld(1, address()))]))); // named_endpoints (a map entry)
  if (chance(0.03)) f.push(str(1, 'renamed')); // cluster_name twice: the last counts
  return Buffer.from(message(f, false, eps));
}

// ---- the two paths ----

type Outcome = { digest: EndpointsDigest; name: string } | { refused: string } | { malformed: string };

function reference(bytes: Buffer): Outcome {
  let obj: Record<string, unknown>;
  try {
    obj = unpackAny({ type_url: TYPE.endpoint, value: bytes });
  } catch (e) {
    return { malformed: (e as Error).message };
  }
  const name = (obj['cluster_name'] as string | undefined) || 'unnamed';
  try {
    return { digest: digestEndpoints(name, obj), name };
  } catch (e) {
    if (!(e instanceof XdsResourceError)) throw e;
    return { refused: e.message };
  }
}

function hand(bytes: Buffer): Outcome {
  let d: ReturnType<typeof decodeClusterLoadAssignment>;
  try {
    d = decodeClusterLoadAssignment(bytes);
  } catch (e) {
    if ((e as Error).name !== 'DecodeError') throw e;
    return { malformed: (e as Error).message };
  }
  const name = d.clusterName || 'unnamed';
  try {
    return { digest: d.digest(name), name };
  } catch (e) {
    if (!(e instanceof XdsResourceError)) throw e;
    return { refused: e.message };
  }
}

const plain = (o: Outcome) => ('digest' in o ? { name: o.name, addrs: o.digest.addrs, nums: o.digest.nums, notes: o.digest.notes, digestName: o.digest.name } : o);

t.test('well-formed assignments of many shapes: the same digest, notes or refusal as protobufjs + digestEndpoints', async (t) => {
  const counts = { digests: 0, endpoints: 0, refused: 0, notes: 0, malformed: 0 };
  let differ = 0;
  for (let i = 0; i < 3000; i++) {
    const bytes = assignment();
    const want = reference(bytes);
    const got = hand(bytes);
    if ('malformed' in want) counts.malformed++;
    else if ('refused' in want) counts.refused++;
    else {
      counts.digests++;
      counts.endpoints += want.digest.addrs.length;
      counts.notes += want.digest.notes.length;
    }
    if (JSON.stringify(plain(got)) !== JSON.stringify(plain(want)) || ('digest' in got && 'digest' in want && !sameArrays(got.digest, want.digest))) {
      if (differ++ < 5) t.same(plain(got), plain(want), `input ${i} (${bytes.toString('hex').slice(0, 160)})`);
    }
  }
  t.equal(differ, 0, `3000 inputs: ${JSON.stringify(counts)}`);
  t.equal(counts.malformed, 0, 'the generator writes only well-formed bytes');
  t.ok(counts.digests > 1500 && counts.refused > 300 && counts.notes > 100 && counts.endpoints > 5000, 'every outcome is exercised');
});

/** JSON turns undefined in an array into null: compare the address lists element by element too. */
function sameArrays(a: EndpointsDigest, b: EndpointsDigest): boolean {
  return a.addrs.length === b.addrs.length && a.addrs.every((x, i) => x === b.addrs[i]);
}

t.test('what the control plane serves decodes to the same digest both ways', async (t) => {
  const backends = Array.from({ length: 300 }, (_, i) => ({ address: i % 2 ? `2001:db8::${i.toString(16)}` : `127.1.${i >> 8}.${i & 255}`, family: (i % 2 ? 6 : 4) as 4 | 6, port: 1 + i * 211, weight: i % 3 }));
  for (const [name, list] of [['svc', backends], ['empty', []], ['ä€😀'.repeat(50), backends.slice(0, 3)]] as const) {
    const bytes = encodeClusterLoadAssignment(name, [...list]);
    t.same(plain(hand(bytes)), plain(reference(bytes)), `${name.slice(0, 10)}: ${list.length} backends`);
  }
});

// The hand decoder's checks protobufjs does not make. 'truncated': a field of a message it reads, known to the .proto
// but sent with another wire type than the .proto's (ipv4_compat as a fixed64): protobufjs reads it by its .proto type
// (misreads it), the hand decoder skips it by the wire type it says it has, and that can run past the end.
const STRICT = /wire type|past the end|varint longer|field number|end of group|groups nested|truncated/;

t.test('mutated bytes: agreement where both read them, clean errors otherwise', async (t) => {
  const seen = { bothRead: 0, bothRefused: 0, handStricter: 0, handSkippedBroken: 0 };
  let problems = 0;
  const problem = (msg: string) => {
    if (problems++ < 5) t.fail(msg);
  };
  for (let i = 0; i < 6000; i++) {
    const b = [...assignment()];
    for (let m = 1 + rand(3); m > 0 && b.length > 0; m--) {
      const at = rand(b.length);
      switch (rand(5)) {
        case 0: b[at] = rand(256); break;
        case 1: b.splice(at, 0, rand(256)); break;
        case 2: b.splice(at, 1); break;
        case 3: b.length = at; break;
        default: b[at]! ^= 1 << rand(8);
      }
    }
    const bytes = Buffer.from(b);
    const want = reference(bytes);
    let got: Outcome;
    try {
      got = hand(bytes);
    } catch (e) {
      problem(`input ${i}: the hand decoder threw ${(e as Error).name}: ${(e as Error).message}`);
      continue;
    }
    const wantMalformed = 'malformed' in want;
    const gotMalformed = 'malformed' in got ? got.malformed : undefined;
    if (wantMalformed && gotMalformed !== undefined) {
      seen.bothRefused++;
      if (!/^cannot decode type\.googleapis\.com\/envoy\.config\.endpoint\.v3\.ClusterLoadAssignment: .* at byte \d+$/.test(gotMalformed)) problem(`input ${i}: error without its place: ${gotMalformed}`);
    } else if (gotMalformed !== undefined) {
      seen.handStricter++;
      if (!STRICT.test(gotMalformed)) problem(`input ${i}: refused what protobufjs reads, not by a documented check: ${gotMalformed} (${bytes.toString('hex')})`);
    } else if (wantMalformed) {
      seen.handSkippedBroken++; // broken inside a field sockmesh skips by its length (metadata, locality, ...)
    } else {
      seen.bothRead++;
      if (JSON.stringify(plain(got)) !== JSON.stringify(plain(want))) problem(`input ${i}: ${JSON.stringify(plain(got)).slice(0, 300)} != ${JSON.stringify(plain(want)).slice(0, 300)} (${bytes.toString('hex')})`);
    }
  }
  t.equal(problems, 0, `6000 mutated inputs: ${JSON.stringify(seen)}`);
  t.ok(seen.bothRead > 500 && seen.bothRefused > 500, 'both outcomes are common');
});

t.test('bad bytes: refused with the field and the byte', async (t) => {
  const lbWith = (...f: Bytes[]) => Buffer.from([...str(1, 'c'), ...ld(2, ld(2, message(f, true)))]);
  const cases: Array<[string, Buffer, RegExp]> = [
    ['truncated varint', Buffer.from([0x0a, 0x80]), /: truncated varint at byte 1$/],
    ['length past the end', Buffer.from([0x0a, 0x05, 0x61]), /cluster_name: length 5 past the end of its message \(1 bytes left\) at byte 2$/],
    ['lb_endpoints as a varint', Buffer.from([...str(1, 'c'), ...ld(2, vfield(2, 5))]), /endpoints\[0\]: field 2 has wire type 0, its \.proto says 2 at byte 6$/],
    ['wire type 7', Buffer.from([0x7f, 0x00]), /invalid wire type 7 at byte 1$/],
    ['field number 0', Buffer.from([0x02, 0x00]), /invalid field number 0 at byte 0$/],
    ['end of group without a start', Buffer.from([0x7c]), /end of group 15 without its start/],
    ['groups unmatched', Buffer.from([...tag(15, 3), ...tag(16, 4)]), /end of group 16 inside group 15/],
    ['varint of 11 bytes', Buffer.from([0x78, ...Array(10).fill(0xff), 0x01]), /varint longer than 10 bytes at byte 1$/],
    ['a port as a string', lbWith(ld(1, ld(1, ld(1, str(3, '80'))))), /endpoints\[0\]\.lb_endpoints\[0\]\.endpoint\.address\.socket_address: field 3 has wire type 2, its \.proto says 0 at byte \d+$/],
    ['a weight past its wrapper', lbWith(ld(4, [0x08, 0x81])), /lb_endpoints\[0\]\.load_balancing_weight\.value: truncated varint/],
  ];
  for (const [what, bytes, re] of cases) {
    const got = hand(bytes);
    t.match('malformed' in got ? got.malformed : JSON.stringify(got), re, what);
  }
  // A bad endpoint in good bytes: the digest's own error, after the name is settled (as digestEndpoints words it).
  const named = decodeClusterLoadAssignment(lbWith(str(5, 'ep-1')));
  t.equal(named.clusterName, 'c');
  t.throws(() => named.digest('c'), new XdsResourceError("cluster_load_assignment 'c': endpoints[0].lb_endpoints[0].endpoint_name: named endpoints are not supported"));
});
