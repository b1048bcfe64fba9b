// Pooled reads (NetConn.pooledReads, issue 13: the tunnel's splice) and reused write buffers (Conn.holdsWrites,
// Output.rewind): a read of an opted-in connection comes in a pooled buffer that is filled again only once given back
// (recycle), never while a consumer may hold it; a connection that did not opt in gets fresh buffers as before; an
// HTTP/2 session over a NetConn writes its frames from the start of one buffer again once the NetConn copied them out,
// and not while a cork holds them. Real sockets on loopback, node:net peers.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { NetConn, NetIo } from '../../agent/proxy/netio.js';
import { Output } from '../../agent/proxy/h2/frames.js';

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function nodeServer(onConn: (s: Socket) => void): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => {}); onConn(s); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

function connected(c: NetConn): Promise<void> {
  return new Promise((resolve, reject) => { c.once('connect', resolve); c.once('error', reject); });
}

/** A NetConn (pooled reads or not) connected to a node:net peer, both torn down with the test. */
async function netConnToPeer(t: { teardown(fn: () => unknown): void }, pooledReads: boolean): Promise<{ io: NetIo; c: NetConn; peer: Socket }> {
  const io = new NetIo();
  t.teardown(() => io.close());
  let peer!: Socket;
  const srv = await nodeServer((s) => { peer = s; });
  t.teardown(() => srv.close());
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  if (pooledReads) c.pooledReads = true;
  await connected(c);
  await new Promise((r) => setTimeout(r, 20)); // the peer's accept callback has run
  return { io, c, peer };
}

t.test('pooled reads: given back, the buffer is filled again; kept, it is never written over', async (t) => {
  const { io, c, peer } = await netConnToPeer(t, true);
  const next = (): Promise<Buffer> => new Promise((r) => c.once('data', r));

  // 1. a chunk kept (not given back): later reads never land in its buffer
  peer.write(Buffer.alloc(1000, 0x61));
  const kept = await next();
  t.equal(kept.byteOffset, 0, 'a pooled chunk starts its buffer');
  t.equal(kept.buffer.byteLength, 256 * 1024, 'in a 256 KiB pool buffer');
  const keptCopy = Buffer.from(kept);

  // 2. a chunk given back: the next read comes in the same buffer
  peer.write(Buffer.alloc(500, 0x62));
  const given = await next();
  t.not(given.buffer, kept.buffer, 'a kept buffer is not lent again');
  c.recycle(given);
  t.equal(io.poolFreeCount, 1, 'given back: one buffer free');
  c.recycle(given);
  t.equal(io.poolFreeCount, 1, 'given back twice: still one (the second is ignored)');
  c.recycle(Buffer.alloc(256 * 1024));
  t.equal(io.poolFreeCount, 1, 'a buffer that is not the pool\'s is ignored');
  peer.write(Buffer.alloc(300, 0x63));
  const again = await next();
  t.equal(again.buffer, given.buffer, 'the next read is in the buffer given back');
  t.equal(again.length, 300);
  t.ok(again.every((b) => b === 0x63), 'with the new bytes');
  t.same(kept, keptCopy, 'the kept chunk is unchanged');

  // 3. bulk: 8 MiB through, each chunk given back once checked; the bytes are right and few buffers were made
  const data = randomBytes(8 * 1024 * 1024);
  const parts: Buffer[] = [];
  const buffers = new Set<ArrayBufferLike>();
  let got = 0;
  const done = new Promise<void>((resolve) => {
    c.on('data', (d: Buffer) => {
      parts.push(Buffer.from(d));
      buffers.add(d.buffer);
      got += d.length;
      c.recycle(d);
      if (got >= data.length) resolve();
    });
  });
  peer.write(data);
  await done;
  t.equal(sha(Buffer.concat(parts)), sha(data), '8 MiB arrive intact through recycled buffers');
  t.ok(buffers.size <= 2, `${parts.length} reads used ${buffers.size} pool buffer(s)`);
  c.destroy();
});

t.test('a connection that did not opt in gets fresh buffers; recycle() of them is ignored', async (t) => {
  const { io, c, peer } = await netConnToPeer(t, false);
  peer.write(Buffer.alloc(100_000, 1));
  const a = await new Promise<Buffer>((r) => c.once('data', r));
  c.recycle(a);
  t.equal(io.poolFreeCount, 0, 'not a pool buffer: not taken');
  peer.write(Buffer.alloc(100_000, 2));
  const b = await new Promise<Buffer>((r) => c.once('data', r));
  t.not(b.buffer, a.buffer, 'a fresh buffer');
  t.ok(a.every((x) => x === 1), 'the first read is unchanged');
  c.destroy();
});

t.test('holdsWrites: false once a write was copied out, true while corked', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const received: Buffer[] = [];
  const srv = await nodeServer((s) => { s.on('data', (d) => received.push(d)); });
  t.teardown(() => srv.close());
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  await connected(c);
  const b = Buffer.from('hello');
  c.write(b);
  t.equal(c.holdsWrites(), false, 'written at once: nothing held');
  b.write('HELLO'); // the caller may reuse its buffer now
  c.cork();
  const b2 = Buffer.from(' world');
  c.write(b2);
  t.equal(c.holdsWrites(), true, 'corked: the buffer is held');
  c.uncork();
  t.equal(c.holdsWrites(), false, 'uncorked: sent or copied');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(Buffer.concat(received).toString(), 'hello world', 'the peer got what was written, not what the buffer became');
  c.destroy();
});

t.test('Output.rewind: from the start again only when everything was handed over; a large buffer is let go', (t) => {
  const o = new Output();
  const first = o.buf;
  o.reserve(100);
  o.bytes(Buffer.alloc(100, 7), 0, 100);
  o.rewind();
  t.equal(o.end, 100, 'bytes not handed over yet: no rewind');
  const v = o.take()!;
  o.rewind();
  t.equal(o.start, 0);
  t.equal(o.end, 0, 'handed over: written from the start again');
  t.equal(o.buf, first, 'in the same buffer');
  t.ok(v.every((x) => x === 7));
  o.reserve(2 * 1024 * 1024);
  o.end += 2 * 1024 * 1024;
  o.take();
  o.rewind();
  t.ok(o.buf.length <= 64 * 1024, 'a buffer grown past 1 MiB is replaced by a small one');
  t.end();
});
