// A DATA frame split across reads (agent/proxy/h2/session.ts): handed on in parts as the bytes come, each part a view
// of the bytes read (no reassembly copy: the tunnel's 64 KiB frames arrive in 16 KiB TLS records), with the frame's
// checks and window accounting done once, at its header; END_STREAM with the last part; a stream reset between parts
// gets no more of the frame, and the frames after it are read in step. Fed byte-exact splits through a Conn of the
// test's own (the split points are the test's, not the kernel's).
import t from 'tap';
import { EventEmitter } from 'node:events';
import { H2_ERROR, H2Session, type H2Stream, type H2StreamHandler } from '../../agent/proxy/h2/session.js';
import { block, frame, HELLO } from '../lib/h2raw.js';

/** A Conn the test feeds: what the session writes is kept. */
class FedConn extends EventEmitter {
  remoteAddress = '127.0.0.1';
  remotePort = 1;
  destroyed = false;
  written: Buffer[] = [];
  write(d: Buffer | Uint8Array | string): boolean { this.written.push(Buffer.from(d as Buffer)); return true; }
  cork(): void {}
  uncork(): void {}
  pause(): this { return this; }
  resume(): this { return this; }
  end(): this { return this; }
  destroy(): this { this.destroyed = true; return this; }
  setNoDelay(): this { return this; }
  setTimeout(): this { return this; }
  /** the frames written so far, as [type, flags, id, payload] */
  frames(): { type: number; flags: number; id: number; payload: Buffer }[] {
    const b = Buffer.concat(this.written);
    const out = [];
    for (let p = 0; p + 9 <= b.length;) {
      const len = b.readUIntBE(p, 3);
      out.push({ type: b[p + 3]!, flags: b[p + 4]!, id: b.readUInt32BE(p + 5) & 0x7fffffff, payload: b.subarray(p + 9, p + 9 + len) });
      p += 9 + len;
    }
    return out;
  }
}

class Parts implements H2StreamHandler {
  parts: { data: Buffer; end: boolean }[] = [];
  resetCode = -1;
  constructor(readonly onPart?: (s: Parts) => void) {}
  stream!: H2Stream;
  onHeaders(): void {}
  onData(data: Buffer, end: boolean): void { this.parts.push({ data, end }); this.onPart?.(this); }
  onTrailers(): void {}
  onReset(code: number): void { this.resetCode = code; }
  onWritable(): void {}
}

const head = (id: number): Buffer => frame(1, 0x4, id, block([':method', 'POST', ':scheme', 'http', ':path', '/', ':authority', 'x']));

t.test('a split DATA frame: parts as views of the reads, END_STREAM with the last, window counted once', async (t) => {
  const conn = new FedConn();
  const streams: Parts[] = [];
  const session = new H2Session(conn as never, {
    role: 'server', settings: { initialWindowSize: 1 << 20, maxFrameSize: 1 << 16 },
    onStream: (st) => { const p = new Parts(streams.length === 1 ? (s) => s.stream.reset(H2_ERROR.CANCEL) : undefined); p.stream = st; st.handler = p; streams.push(p); },
  });
  const body = Buffer.alloc(40_000);
  for (let i = 0; i < body.length; i++) body[i] = i % 251;
  const data = frame(0, 0x1, 1, body);
  // stream 1: HEADERS + the DATA frame's header and 100 bytes; then 30,000; then the rest, with a PING after it
  const r1 = Buffer.concat([HELLO, head(1), data.subarray(0, 9 + 100)]);
  const r2 = Buffer.from(data.subarray(9 + 100, 9 + 30_100));
  const ping = frame(6, 0, 0, Buffer.from('pingpong'));
  const r3 = Buffer.concat([data.subarray(9 + 30_100), ping]);
  for (const r of [r1, r2, r3]) conn.emit('data', r);
  const s1 = streams[0]!;
  t.same(s1.parts.map((p) => [p.data.length, p.end]), [[100, false], [30_000, false], [9_900, true]], 'three parts, END_STREAM with the last');
  t.ok(Buffer.concat(s1.parts.map((p) => p.data)).equals(body), 'the bytes, in order');
  t.ok(s1.parts[1]!.data.buffer === r2.buffer && s1.parts[1]!.data.byteOffset === r2.byteOffset, 'a part is a view of the read, not a copy');
  t.ok(s1.stream.closed === false, 'the stream stays open until our side ends');
  await new Promise((r) => setImmediate(r));
  t.ok(conn.frames().some((f) => f.type === 6 && (f.flags & 1) === 1 && f.payload.toString() === 'pingpong'), 'the frame after the split one is read in step (PING answered)');

  // stream 3: its owner resets it at the first part: the rest of the frame is dropped, the next frame still read
  const data3 = frame(0, 0x1, 3, body);
  conn.emit('data', Buffer.concat([head(3), data3.subarray(0, 9 + 10)]));
  conn.emit('data', Buffer.from(data3.subarray(9 + 10, 9 + 20_000)));
  conn.emit('data', Buffer.concat([data3.subarray(9 + 20_000), frame(6, 0, 0, Buffer.from('again..!'))]));
  const s3 = streams[1]!;
  t.same(s3.parts.map((p) => p.data.length), [10], 'after the reset, no more parts');
  await new Promise((r) => setImmediate(r));
  const fr = conn.frames();
  t.ok(fr.some((f) => f.type === 3 && f.id === 3 && f.payload.readUInt32BE(0) === H2_ERROR.CANCEL), 'RST_STREAM CANCEL sent');
  t.ok(fr.some((f) => f.type === 6 && (f.flags & 1) === 1 && f.payload.toString() === 'again..!'), 'and the next frame read in step');
  t.notOk(fr.some((f) => f.type === 7), 'no GOAWAY: the stream window was counted once per frame, not per part');

  // stream 5 (another session, whose SETTINGS are acknowledged: 50,000-byte stream windows): a split frame over the
  // stream's window is refused at its header (FLOW_CONTROL_ERROR), nothing handed on
  const big = frame(0, 0, 5, Buffer.alloc(60_000));
  const conn2 = new FedConn();
  const got: Parts[] = [];
  new H2Session(conn2 as never, { role: 'server', settings: { initialWindowSize: 50_000, maxFrameSize: 1 << 16 }, onStream: (st) => { const p = new Parts(); p.stream = st; st.handler = p; got.push(p); } });
  conn2.emit('data', Buffer.concat([HELLO, frame(4, 1, 0), head(5), big.subarray(0, 9 + 5)]));
  conn2.emit('data', Buffer.concat([big.subarray(9 + 5), frame(6, 0, 0, Buffer.from('third..!'))]));
  await new Promise((r) => setImmediate(r));
  t.same(got[0]!.parts.length, 0, 'nothing of the frame handed on');
  t.equal(got[0]!.resetCode, H2_ERROR.FLOW_CONTROL_ERROR, 'the stream got FLOW_CONTROL_ERROR');
  t.ok(conn2.frames().some((f) => f.type === 6 && (f.flags & 1) === 1 && f.payload.toString() === 'third..!'), 'and the session read on in step');
  session.destroy();
});

t.test('a padded DATA frame split across reads is still reassembled whole', async (t) => {
  const conn = new FedConn();
  const got: Parts[] = [];
  new H2Session(conn as never, { role: 'server', settings: { initialWindowSize: 1 << 20, maxFrameSize: 1 << 16 }, onStream: (st) => { const p = new Parts(); p.stream = st; st.handler = p; got.push(p); } });
  const payload = Buffer.concat([Buffer.from([7]), Buffer.alloc(1000, 0x61), Buffer.alloc(7)]);
  const f = frame(0, 0x1 | 0x8, 1, payload);
  conn.emit('data', Buffer.concat([HELLO, head(1), f.subarray(0, 9 + 300)]));
  conn.emit('data', Buffer.from(f.subarray(9 + 300)));
  t.same(got[0]!.parts.map((p) => [p.data.length, p.end]), [[1000, true]], 'one part, padding removed');
});
