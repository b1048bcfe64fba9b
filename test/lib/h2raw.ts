// Raw HTTP/2 for tests that must send what no well-behaved client would: frames built by hand, and a reader
// that collects the peer's frames until a condition or its close (bounded in time).
import { connect as netConnect } from 'node:net';

export interface RawFrame { type: number; flags: number; id: number; payload: Buffer }

export function frame(type: number, flags: number, id: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const p = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  const h = Buffer.alloc(9);
  h.writeUIntBE(p.length, 0, 3);
  h[3] = type; h[4] = flags;
  h.writeUInt32BE(id, 5);
  return Buffer.concat([h, p]);
}

export const u32 = (v: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(v); return b; };

/** a header block of literals without indexing (RFC 7541 6.2.2), names and values under 127 bytes */
export function block(pairs: string[]): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < pairs.length; i += 2) {
    parts.push(Buffer.from([0x00, pairs[i]!.length]), Buffer.from(pairs[i]!, 'latin1'), Buffer.from([pairs[i + 1]!.length]), Buffer.from(pairs[i + 1]!, 'latin1'));
  }
  return Buffer.concat(parts);
}

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
/** the client preface and an empty SETTINGS */
export const HELLO = Buffer.concat([PREFACE, frame(4, 0, 0)]);

/** write bytes raw, read frames until `until` says so or the server closes (bounded) */
export function raw(port: number, bytes: Buffer, until: (f: RawFrame) => boolean): Promise<{ frames: RawFrame[]; closed: boolean }> {
  return new Promise((resolve) => {
    const sock = netConnect(port, '127.0.0.1');
    const frames: RawFrame[] = [];
    let buf = Buffer.alloc(0);
    let closed = false;
    const finish = (): void => { clearTimeout(timer); sock.destroy(); resolve({ frames, closed }); };
    const timer = setTimeout(finish, 5000);
    sock.on('error', () => {});
    sock.on('close', () => { closed = true; finish(); });
    sock.on('end', () => { closed = true; finish(); });
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) break;
        const f = { type: buf[3]!, flags: buf[4]!, id: buf.readUInt32BE(5) & 0x7fffffff, payload: buf.subarray(9, 9 + len) };
        frames.push(f);
        buf = buf.subarray(9 + len);
        if (until(f)) {
          // a connection error closes the connection: wait for that too
          if (f.type === 7) setTimeout(finish, 1000); else finish();
          return;
        }
      }
    });
    sock.write(bytes);
  });
}

export const isGoaway = (f: RawFrame): boolean => f.type === 7;
export const goawayCode = (r: { frames: RawFrame[] }): number => { const g = r.frames.find(isGoaway); return g === undefined ? -1 : g.payload.readUInt32BE(4); };
