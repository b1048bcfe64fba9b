// A ClusterLoadAssignment read straight from its protobuf bytes into the digest the agent keeps (EndpointsDigest),
// without protobufjs.
//
// Why: a full state of 10,000 services is 100,000 endpoints; protobufjs decoded each into a message object tree,
// converted that into a second tree of plain objects (toObject), and digestEndpoints then read the few fields it
// uses: ~0.6 s of the agent's CPU in a full sync and most of its garbage (issue 12). Here one pass over the bytes
// fills the digest's arrays.
//
// What it must keep: exactly what digestEndpoints(name, protobufjs' plain object) gives (the same endpoints, weights,
// positions, notes and the same error for the same bad endpoint), which unit/xds-cla checks on many shapes and on
// random and mutated bytes. Protobuf's rules as protobufjs applies them: fields in any order; a repeated field's
// entries appended; a singular field given twice keeps the last (a message included: protobufjs replaces, it does
// not merge); unknown fields (every wire type, groups included) skipped; enum values it does not know kept as
// numbers; 32-bit fields the low 32 bits of their varint. Fields sockmesh does not read (metadata, locality, health
// check config, hostname, LEDS, policy, named endpoints...) are skipped by their length without looking inside.
// Bad framing is refused with where it is (byte offset and field path): truncation, a length past its message, a
// varint of more than 10 bytes, wire types 6 and 7, an unmatched end of group, a field number 0, and a field
// sockmesh reads that arrives with another wire type than its .proto's (protobufjs would read it as if it had the
// right one, i.e. misread it).
import type { EndpointsDigest } from './digest.js';
import { sealNotes } from './digest.js';
import { fail } from './errors.js';
import { TYPE } from '../../../xds/envoy.js';

/** HealthStatus values digestEndpoints looks at (envoy.config.core.v3.HealthStatus). */
const UNHEALTHY = 2;
const DRAINING = 3;
const TIMEOUT = 4;
/** Deepest group nesting skipped (protobufjs' own recursion limit is 100). */
const MAX_GROUP_DEPTH = 100;

class DecodeError extends Error {
  override name = 'DecodeError';
}

// The parser's state: one message at a time, synchronously (module state instead of an object per call).
let buf: Buffer = Buffer.alloc(0);
let pos = 0;
/**
 * Where the parser is: endpoints[atP].lb_endpoints[atQ] (-1: not inside one). Field paths are static strings below
 * that, joined to these only when an error is reported: building them per endpoint cost more than the parsing.
 */
let atP = -1;
let atQ = -1;

function pathOf(field: string): string {
  let path = atP < 0 ? '' : `endpoints[${atP}]`;
  if (atQ >= 0) path += `.lb_endpoints[${atQ}]`;
  if (field) path += path ? `.${field}` : field;
  return path;
}

function bad(field: string, message: string, at = pos): never {
  const path = pathOf(field);
  throw new DecodeError(`cannot decode ${TYPE.endpoint}: ${path ? `${path}: ` : ''}${message} at byte ${at}`);
}

/** A varint as a JavaScript number: exact up to 2^53, the low 32 bits always exact (what uint32/int32 fields keep). */
let varHi = 0; // the bits above 32 of the last varint read (readVarint32 keeps the low ones)
function readVarint32(path: string, end: number): number {
  const start = pos;
  let lo = 0;
  let shift = 0;
  varHi = 0;
  for (let i = 0; i < 10; i++) {
    if (pos >= end) bad(path, 'truncated varint', start);
    const b = buf[pos++]!;
    if (shift < 28) lo |= (b & 0x7f) << shift;
    else if (shift === 28) {
      lo |= (b & 0x0f) << 28;
      varHi = (b & 0x7f) >>> 4;
    } else varHi += (b & 0x7f) * 2 ** (shift - 32);
    if (b < 0x80) return lo >>> 0;
    shift += 7;
  }
  bad(path, 'varint longer than 10 bytes', start);
}

/** A length (of a string, bytes or nested message) that must fit in what is left of its message. */
function readLength(path: string, end: number): number {
  const len = readVarint32(path, end);
  if (varHi !== 0 || pos + len > end) bad(path, `length ${varHi !== 0 ? 'over 4 GiB' : len} past the end of its message (${end - pos} bytes left)`);
  return len;
}

function readString(path: string, end: number): string {
  const len = readLength(path, end);
  const s = buf.toString('utf8', pos, pos + len); // what protobufjs' BufferReader does (invalid UTF-8 -> U+FFFD)
  pos += len;
  return s;
}

/** Skip one field of wire type `wire` (its tag read). `field`: for the end of a group. */
function skip(path: string, wire: number, field: number, end: number, depth: number): void {
  switch (wire) {
    case 0:
      readVarint32(path, end);
      return;
    case 1:
      if (pos + 8 > end) bad(path, 'truncated fixed64');
      pos += 8;
      return;
    case 2: {
      const len = readLength(path, end); // moves pos: not `pos += readLength()`, which adds to the old pos
      pos += len;
      return;
    }
    case 5:
      if (pos + 4 > end) bad(path, 'truncated fixed32');
      pos += 4;
      return;
    case 3: {
      if (depth >= MAX_GROUP_DEPTH) bad(path, `groups nested deeper than ${MAX_GROUP_DEPTH}`);
      for (;;) {
        const at = pos;
        const tag = readVarint32(path, end);
        const w = tag & 7;
        if (w === 4) {
          if (tag >>> 3 !== field) bad(path, `end of group ${tag >>> 3} inside group ${field}`, at);
          return;
        }
        if (tag >>> 3 === 0) bad(path, 'field number 0', at);
        skip(path, w, tag >>> 3, end, depth + 1);
      }
    }
    case 4:
      bad(path, `end of group ${field} without its start`);
    default:
      bad(path, `invalid wire type ${wire}`);
  }
}

/** The next tag of a message ending at `end`: field number and wire type, checked. */
let wire = 0;
function readTag(path: string, end: number): number {
  const at = pos;
  const tag = readVarint32(path, end);
  const field = tag >>> 3;
  wire = tag & 7;
  if (field === 0 || varHi !== 0) bad(path, `invalid field number ${field === 0 ? 0 : 'over 2^29'}`, at);
  return field;
}

function expectWire(path: string, want: number, field: number): void {
  if (wire !== want) bad(path, `field ${field} has wire type ${wire}, its .proto says ${want}`);
}

// ---- one LbEndpoint ----

/** What an LbEndpoint holds that the digest needs; reused (one at a time). */
const lb = { hasEndpoint: false, endpointName: '', hasEndpointName: false, health: 0, hasSocket: false, address: undefined as string | undefined, port: undefined as number | undefined, weight: undefined as number | undefined };

// Field paths below endpoints[p].lb_endpoints[q] (static: see atP).
const ADDRESS = 'endpoint.address';
const SA = 'endpoint.address.socket_address';
const WEIGHT = 'load_balancing_weight';

/** SocketAddress { address = 2; port_value = 3 } (the rest skipped). */
function socketAddress(end: number): void {
  lb.hasSocket = true;
  lb.address = undefined;
  lb.port = undefined;
  while (pos < end) {
    const f = readTag(SA, end);
    if (f === 2) {
      expectWire(SA, 2, f);
      lb.address = readString(`${SA}.address`, end);
    } else if (f === 3) {
      expectWire(SA, 0, f);
      lb.port = readVarint32(`${SA}.port_value`, end);
    } else skip(SA, wire, f, end, 0);
  }
}

/** Address { socket_address = 1 } (pipe, envoy_internal_address skipped). */
function address(end: number): void {
  lb.hasSocket = false;
  lb.address = undefined;
  lb.port = undefined;
  while (pos < end) {
    const f = readTag(ADDRESS, end);
    if (f === 1) {
      expectWire(ADDRESS, 2, f);
      const len = readLength(SA, end);
      socketAddress(pos + len);
    } else skip(ADDRESS, wire, f, end, 0);
  }
}

/** Endpoint { address = 1 } (health_check_config, hostname, additional_addresses skipped). */
function endpoint(end: number): void {
  lb.hasEndpoint = true;
  lb.hasSocket = false;
  lb.address = undefined;
  lb.port = undefined;
  while (pos < end) {
    const f = readTag('endpoint', end);
    if (f === 1) {
      expectWire('endpoint', 2, f);
      const len = readLength(ADDRESS, end);
      address(pos + len);
    } else skip('endpoint', wire, f, end, 0);
  }
}

/** UInt32Value { value = 1 }: an empty wrapper is 0 (see wellknown.ts num). */
function uint32Value(end: number): number {
  let v = 0;
  while (pos < end) {
    const f = readTag(WEIGHT, end);
    if (f === 1) {
      expectWire(WEIGHT, 0, f);
      v = readVarint32(`${WEIGHT}.value`, end);
    } else skip(WEIGHT, wire, f, end, 0);
  }
  return v;
}

/** LbEndpoint { endpoint = 1; health_status = 2; load_balancing_weight = 4; endpoint_name = 5 } (metadata skipped). */
function lbEndpoint(end: number): void {
  lb.hasEndpoint = false;
  lb.hasEndpointName = false;
  lb.endpointName = '';
  lb.health = 0;
  lb.hasSocket = false;
  lb.address = undefined;
  lb.port = undefined;
  lb.weight = undefined;
  while (pos < end) {
    const f = readTag('', end);
    if (f === 1) {
      expectWire('', 2, f);
      const len = readLength('endpoint', end);
      endpoint(pos + len);
    } else if (f === 2) {
      expectWire('', 0, f);
      lb.health = readVarint32('health_status', end) | 0; // an int32 enum
    } else if (f === 4) {
      expectWire('', 2, f);
      const len = readLength(WEIGHT, end);
      lb.weight = uint32Value(pos + len);
    } else if (f === 5) {
      expectWire('', 2, f);
      lb.endpointName = readString('endpoint_name', end);
      lb.hasEndpointName = true;
    } else skip('', wire, f, end, 0);
  }
}

// ---- the assignment ----

/** A ClusterLoadAssignment read from its bytes: its name, and its digest once the resource's name is settled. */
export interface DecodedAssignment {
  /** cluster_name ('' when absent, as protobufjs' object gives nothing). */
  clusterName: string;
  /** The digest as digestEndpoints(name, ...) makes it; throws its XdsResourceError for a bad endpoint. */
  digest(name: string): EndpointsDigest;
}

/** Where lb_endpoints entries of one LocalityLbEndpoints are (start, end pairs), kept until its priority is known. */
let ranges: number[] = [];

/**
 * Read a ClusterLoadAssignment. Throws (naming the byte and the field) on bytes that are not one; a bad endpoint in
 * a well-formed one is reported by digest(), after the name checks, as the protobufjs path did.
 */
export function decodeClusterLoadAssignment(bytes: Uint8Array): DecodedAssignment {
  buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  pos = 0;
  atP = -1;
  atQ = -1;
  const end = buf.length;
  let clusterName = '';
  const addrs: string[] = [];
  const nums: number[] = [];
  /** endpoints[p] of priority n (not 0) with endpoints: the note digestEndpoints writes. */
  const skipped: number[] = [];
  /** The first endpoint digestEndpoints would refuse: [field path, message]. */
  let refused: [string, string] | undefined;
  let p = 0;
  try {
    while (pos < end) {
      const f = readTag('', end);
      if (f === 1) {
        expectWire('', 2, f);
        clusterName = readString('cluster_name', end);
        continue;
      }
      if (f !== 2) {
        skip('', wire, f, end, 0);
        continue;
      }
      // endpoints[p]: a LocalityLbEndpoints { lb_endpoints = 2; priority = 5 } (the rest skipped)
      expectWire('', 2, f);
      atP = p;
      const groupLen = readLength('', end);
      const groupEnd = pos + groupLen;
      let priority = 0;
      ranges.length = 0;
      while (pos < groupEnd) {
        const g = readTag('', groupEnd);
        if (g === 2) {
          expectWire('', 2, g);
          atQ = ranges.length / 2;
          const len = readLength('', groupEnd);
          atQ = -1;
          ranges.push(pos, pos + len);
          pos += len;
        } else if (g === 5) {
          expectWire('', 0, g);
          priority = readVarint32('priority', groupEnd);
        } else skip('', wire, g, groupEnd, 0);
      }
      const after = pos;
      // Every entry is read (a bad one fails the whole message, as in protobufjs), used only at priority 0.
      for (let q = 0; q < ranges.length / 2; q++) {
        atQ = q;
        pos = ranges[2 * q]!;
        lbEndpoint(ranges[2 * q + 1]!);
        if (priority !== 0 || refused) continue;
        if (lb.hasEndpointName && lb.endpointName !== '') {
          refused = [pathOf('endpoint_name'), 'named endpoints are not supported'];
          continue;
        }
        if (lb.health === UNHEALTHY || lb.health === TIMEOUT) continue;
        if (!lb.hasEndpoint || !lb.hasSocket) {
          refused = [pathOf(ADDRESS), 'only socket_address is supported'];
          continue;
        }
        const port = lb.port;
        if (port === undefined || port < 1 || port > 65535) {
          refused = [pathOf(`${SA}.port_value`), `must be a port 1..65535, got ${port ?? 'nothing'}`];
          continue;
        }
        addrs.push(lb.address as string); // undefined when absent, as the object path pushed it (the model refuses it)
        nums.push(port, lb.health === DRAINING ? 0 : (lb.weight ?? 1), p, q);
      }
      atP = -1;
      atQ = -1;
      if (priority !== 0 && ranges.length > 0) skipped.push(p, priority);
      pos = after;
      p++;
    }
  } finally {
    buf = Buffer.alloc(0); // do not keep the response alive
  }
  return {
    clusterName,
    digest(name: string): EndpointsDigest {
      const what = `cluster_load_assignment '${name}'`;
      const notes: string[] = [];
      // digestEndpoints notes a skipped priority as it passes it, and stops at the first refused endpoint
      if (refused) fail(what, refused[0], refused[1]);
      for (let i = 0; i < skipped.length; i += 2) notes.push(`${what}: endpoints[${skipped[i]}]: priority ${skipped[i + 1]} endpoints not used (priority 0 only)`);
      return sealNotes({ name, addrs, nums, notes });
    },
  };
}
