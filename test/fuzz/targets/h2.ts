// The HTTP/2 session fed a peer's bytes (h2-server: a client's, after the preface; h2-client: a server's, with three
// requests of ours open), in reads of a size the input's first byte picks. Crashes: anything thrown out of the
// session, and the session's own safety net catching one of its bugs (it reports a throwing stream handler; ours never
// throw). Invariants: the HPACK table within its limits; what the session writes is whole frames, none over 64 KiB.
import { EventEmitter } from 'node:events';
import { H2Session, type H2Stream, type H2StreamHandler } from '../../../agent/proxy/h2/session.js';
import type { HpackDecoder } from '../../../agent/proxy/h2/hpack.js';
import type { Conn } from '../../../agent/proxy/conn.js';
import { invariant } from './common.js';

export const dict = [
  '\x00\x00\x00\x04\x00\x00\x00\x00\x00', '\x00\x00\x00\x04\x01\x00\x00\x00\x00', '\x00\x00\x08\x06\x00\x00\x00\x00\x00', '\x00\x00\x04\x08\x00\x00\x00\x00\x01',
  '\x00\x00\x04\x03\x00\x00\x00\x00\x01', '\x00\x00\x08\x07\x00\x00\x00\x00\x00', '\x00\x00\x05\x02\x00\x00\x00\x00\x03', '\x00\x00\x00\x09\x04\x00\x00\x00\x01',
  '\x01\x04\x00\x00\x00', '\x01\x05\x00\x00\x00', '\x00\x04', '\x00\x01', '\x00\x03', '\x00\x05', '\x00\x06', '\x00\x08', '\x7f\xff\xff\xff', '\x80\x00\x00\x00',
  '\x82\x84\x86\x41\x01a', '\x88', '\x00\x00\x00\x01', '\x00\x00\x00\x03', '\x08', '\x20', '\x3f\xe1\x1f', '\x40\x0acontent-length\x015',
];

const SPLITS = [0, 1, 2, 3, 7, 9, 10, 100];

class FakeConn extends EventEmitter {
  remoteAddress = '127.0.0.1';
  remotePort = 1;
  destroyed = false;
  out: Buffer[] = [];
  write(d: Buffer | Uint8Array | string): boolean { this.out.push(Buffer.from(d as Buffer)); return true; }
  cork(): void {}
  uncork(): void {}
  pause(): this { return this; }
  resume(): this { return this; }
  end(): this { return this; }
  destroy(): this { if (!this.destroyed) { this.destroyed = true; this.emit('close'); } return this; }
  setNoDelay(): this { return this; }
  setTimeout(): this { return this; }
}

const sink = (st: () => H2Stream | undefined): H2StreamHandler => ({
  onHeaders: () => {}, onData: (d) => { st()?.consumed(d.length); }, onTrailers: () => {}, onReset: () => {}, onWritable: () => {},
});

function checkOutput(bytes: Buffer, client: boolean): void {
  if (bytes.length === 0) return; // (nothing read: the first flush was still scheduled when the session ended)
  let p = client ? 24 : 0;
  while (p + 9 <= bytes.length) {
    const len = bytes.readUIntBE(p, 3);
    invariant(len <= 64 * 1024, `we wrote a ${len}-byte frame`);
    p += 9 + len;
  }
  invariant(p === bytes.length, `what we wrote ends mid-frame (${bytes.length - p} bytes left)`);
}

export function runRole(role: 'server' | 'client', data: Buffer): void {
  if (data.length === 0) return;
  const conn = new FakeConn();
  let bug: Error | undefined;
  const session = new H2Session(conn as unknown as Conn, {
    role, settingsTimeoutMs: 0, enableConnectProtocol: (data[0]! & 8) !== 0,
    settings: { maxConcurrentStreams: 100, maxHeaderListSize: 8192, headerTableSize: (data[0]! & 16) !== 0 ? 256 : 4096 },
    onStream: (st, headers, endStream, tooLarge) => {
      st.handler = sink(() => st);
      if (tooLarge) { st.sendHeaders([':status', '431'], true); return; }
      if (headers.includes('x-reset')) { st.reset(8); return; }
      st.sendHeaders([':status', '200', 'content-type', 'text/plain'], false);
      st.sendData(Buffer.from('hello'), endStream);
      if (!endStream) st.sendTrailers(['grpc-status', '0']);
    },
    onClose: (err) => {
      // read() turns a throw inside the session into "a stream handler threw": our handlers never do
      if (err && /stream handler threw/.test(err.message)) bug = (err.cause as Error) ?? err;
    },
  });
  if (role === 'client') {
    const streams: H2Stream[] = [];
    streams.push(session.request([':method', 'GET', ':scheme', 'http', ':path', '/', ':authority', 'a'], true, sink(() => streams[0])));
    const post = session.request([':method', 'POST', ':scheme', 'http', ':path', '/up', ':authority', 'a', 'content-length', '5'], false, sink(() => streams[1]));
    streams.push(post);
    post.sendData(Buffer.from('hello'), true);
    streams.push(session.request([':method', 'HEAD', ':scheme', 'http', ':path', '/h', ':authority', 'a'], true, sink(() => streams[2])));
  }
  const split = SPLITS[data[0]! & 7]!;
  const body = role === 'server' ? Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), data.subarray(1)]) : data.subarray(1);
  const step = split === 0 ? body.length || 1 : split;
  for (let p = 0; p < body.length && !session.closed; p += step) conn.emit('data', body.subarray(p, p + step));
  if (bug) throw bug;
  const dec = (session as unknown as { decoder: HpackDecoder }).decoder;
  invariant(dec.tableSize <= dec.tableLimit && dec.tableLimit <= Math.max(dec.maxTableSize, 4096), `HPACK table ${dec.tableSize}/${dec.tableLimit}`);
  session.destroy();
  checkOutput(Buffer.concat(conn.out), role === 'client');
}
