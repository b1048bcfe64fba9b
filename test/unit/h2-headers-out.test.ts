// Header blocks without a Buffer of their own: the session encodes a block straight into its output after a
// HEADERS frame header it fills in afterwards, and decodes blocks in place in the bytes it read. Checked against
// node:http2 (an independent HPACK): bursts whose blocks cross the output's 64 KiB chunks (the unsent bytes move
// to a new chunk while a block is being encoded), blocks over the peer's frame size (HEADERS + CONTINUATION),
// and HpackDecoder.decode over a range of a larger buffer (same fields, error offsets counted from the block).
import t from 'tap';
import { createHash } from 'node:crypto';
import { createServer as h2server, type Http2Server } from 'node:http2';
import { connect as netConnect, type AddressInfo } from 'node:net';
import { H2Session, type H2Stream, type H2StreamHandler } from '../../agent/proxy/h2/session.js';
import { HpackDecoder, HpackEncoder, HpackError, type HeaderList } from '../../agent/proxy/h2/hpack.js';
import { seeded } from '../lib/l7model.js';

const sha = (s: string): string => createHash('sha256').update(s, 'latin1').digest('hex');

function field(h: HeaderList, name: string): string | undefined {
  for (let i = 0; i < h.length; i += 2) if (h[i] === name) return h[i + 1];
  return undefined;
}

class Got implements H2StreamHandler {
  stream!: H2Stream;
  head: HeaderList | null = null;
  resetCode = -1;
  readonly done: Promise<void>;
  private resolve!: () => void;
  constructor() { this.done = new Promise((r) => { this.resolve = r; }); }
  onHeaders(h: HeaderList, end: boolean): void { if (!h[1]!.startsWith('1')) this.head = h; if (end) this.resolve(); }
  onData(d: Buffer, end: boolean): void { this.stream.consumed(d.length); if (end) this.resolve(); }
  onTrailers(): void { this.resolve(); }
  onReset(code: number): void { this.resetCode = code; this.resolve(); }
  onWritable(): void { /* nothing queued */ }
}

/** a node:http2 server answering each request with the length and sha256 of its x-blob header, in headers */
async function blobServer(): Promise<{ server: Http2Server; port: number }> {
  const server = h2server({ settings: { maxHeaderListSize: 1 << 20 }, maxSessionMemory: 256 });
  server.on('stream', (s, h) => {
    const v = String(h['x-blob'] ?? '');
    // the answer carries a blob too (its own size), so that our decoder reads blocks in place as well
    const back = 'b'.repeat(Number(h['x-back'] ?? 0));
    s.respond({ ':status': 200, 'x-len': String(v.length), 'x-sha': sha(v), 'x-back': back }, { endStream: true });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

function clientSession(port: number): H2Session {
  return new H2Session(netConnect({ host: '127.0.0.1', port, noDelay: true }), {
    role: 'client', settings: { maxHeaderListSize: 1 << 20 },
  });
}

t.test('bursts of header blocks that cross the output chunks arrive whole (node:http2 decodes them)', async (tt) => {
  const { server, port } = await blobServer();
  const session = clientSession(port);
  tt.teardown(() => { session.destroy(); server.close(); });
  const rnd = seeded(3);
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789-_.~';
  let checked = 0;
  for (let round = 0; round < 6; round++) {
    // all in one tick: one output of up to ~700 KiB, so several chunk moves happen inside encodeInto
    const sent: { got: Got; blob: string; back: number }[] = [];
    for (let i = 0; i < 90; i++) {
      const len = 1 + Math.floor(rnd() * 8000);
      let blob = '';
      for (let k = 0; k < len; k++) blob += alphabet[Math.floor(rnd() * alphabet.length)];
      const back = Math.floor(rnd() * 3000);
      const got = new Got();
      got.stream = session.request([':method', 'GET', ':scheme', 'http', ':authority', 'x', ':path', `/${round}/${i}`, 'x-blob', blob, 'x-back', String(back)], true, got);
      sent.push({ got, blob, back });
    }
    await Promise.all(sent.map((s) => s.got.done));
    for (const { got, blob, back } of sent) {
      if (got.head === null || field(got.head, ':status') !== '200' || field(got.head, 'x-len') !== String(blob.length) ||
        field(got.head, 'x-sha') !== sha(blob) || field(got.head, 'x-back')?.length !== back) {
        tt.fail(`round ${round}: a ${blob.length}-byte blob came back as ${JSON.stringify(got.head?.slice(0, 6))} (reset ${got.resetCode})`);
        return;
      }
      checked++;
    }
  }
  tt.equal(checked, 540, 'every request and answer whole');
});

t.test('a block over the peer\'s frame size goes out as HEADERS + CONTINUATION', async (tt) => {
  const { server, port } = await blobServer();
  const session = clientSession(port);
  tt.teardown(() => { session.destroy(); server.close(); });
  // (nghttp2, under node:http2, refuses a single field much over 64 KiB: the session, not the field, is what is tested)
  for (const len of [16_384 - 40, 16_384, 40_000, 60_000]) {
    const blob = 'z'.repeat(len);
    const got = new Got();
    got.stream = session.request([':method', 'GET', ':scheme', 'http', ':authority', 'x', ':path', '/big', 'x-blob', blob], true, got);
    await got.done;
    tt.equal(got.head !== null && field(got.head, 'x-len'), String(len), `${len}-byte field: length`);
    tt.equal(got.head !== null && field(got.head, 'x-sha'), sha(blob), `${len}-byte field: content`);
  }
});

t.test('HpackDecoder.decode over a range of a larger buffer', (tt) => {
  const enc = new HpackEncoder({ huffman: true });
  const lists: HeaderList[] = [
    [':method', 'GET', ':path', '/a', 'user-agent', 'test/1'],
    [':method', 'POST', ':path', '/b', 'user-agent', 'test/1', 'content-type', 'application/grpc'],
  ];
  const whole = new HpackDecoder();
  const ranged = new HpackDecoder();
  for (const l of lists) {
    const block = enc.encode(l);
    const big = Buffer.concat([Buffer.from('garbage!'), block, Buffer.from([0x80, 0xff])]);
    tt.same(ranged.decode(big, 8, 8 + block.length), whole.decode(block), 'same fields');
    tt.same(ranged.tableEntries(), whole.tableEntries(), 'same dynamic table');
  }
  // 0x80 is index 0: the error names byte 1 of the block (1 + 7 in the buffer)
  const bad = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0x82, 0x80]);
  let err: unknown;
  try { new HpackDecoder().decode(bad, 7, 9); } catch (e) { err = e; }
  tt.ok(err instanceof HpackError && err.code === 'COMPRESSION_ERROR', 'a compression error');
  tt.match((err as Error).message, /index 0 at byte 1 of the header block/);
  tt.throws(() => new HpackDecoder().decode(bad, 5, 10), /block 5\.\.10 outside the 9 bytes/);
  tt.same(new HpackDecoder().decode(bad, 3, 3), [], 'an empty range is an empty list');
  tt.end();
});
