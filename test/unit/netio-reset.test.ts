// NetConn's half-open mode, reset and destroySoon (agent/proxy/netio.ts, native/netio.cc reset()), what the tunnel's
// splice needs of the pod-side sockets it now keeps in netio (issue 13), against real node:net peers on loopback:
//  - allowHalfOpen: the peer's FIN is an 'end' and our side stays open: an answer written after it arrives whole;
//  - resetAndDestroy(): the peer reads ECONNRESET (SO_LINGER 0), not an end, and 'close' comes once;
//  - a peer's reset right behind its data: 'error' ECONNRESET, never 'end' (netio reads until the
//    error where libuv reports EOF: agent/tunnel/sockreset.ts);
//  - destroySoon(): what is queued goes out, then our FIN, and the connection closes without waiting for the peer's.
import t from 'tap';
import { connect, createServer, type Socket } from 'node:net';
import { NetIo, type NetConn } from '../../agent/proxy/netio.js';

const settle = (ms = 100): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** a NetIo listener and a node client connected to it, with the accepted NetConn (allowHalfOpen as asked) */
async function pair(t: { teardown(fn: () => void): void }, allowHalfOpen: boolean): Promise<{ io: NetIo; conn: NetConn; client: Socket }> {
  const io = new NetIo();
  let got!: (c: NetConn) => void;
  const accepted = new Promise<NetConn>((r) => { got = r; });
  const l = io.listen('127.0.0.1', 0, (c) => { c.allowHalfOpen = allowHalfOpen; c.on('error', () => {}); got(c); });
  const client = connect({ port: l.port, host: '127.0.0.1', allowHalfOpen: true });
  client.on('error', () => {});
  const conn = await accepted;
  t.teardown(() => { client.destroy(); io.close(); });
  return { io, conn, client };
}

/** what a node socket reads until it ends or fails: bytes and 'end' or the error's code */
function readAll(s: Socket): Promise<{ bytes: number; how: string }> {
  return new Promise((resolve) => {
    let bytes = 0;
    s.on('data', (d: Buffer) => { bytes += d.length; });
    s.once('end', () => resolve({ bytes, how: 'end' }));
    s.once('error', (e: NodeJS.ErrnoException) => resolve({ bytes, how: e.code ?? e.message }));
  });
}

t.test('allowHalfOpen: the peer\'s FIN is an end, and the answer written after it arrives', async (t) => {
  const { conn, client } = await pair(t, true);
  const ended = new Promise<void>((r) => conn.once('end', () => r()));
  let closed = 0;
  conn.on('close', () => closed++);
  client.end('question');
  await ended;
  await settle();
  t.notOk(conn.destroyed, 'still open after the peer\'s FIN');
  const answer = readAll(client);
  t.ok(conn.write(Buffer.alloc(200_000, 1)) || true, 'written after the end');
  conn.end();
  t.same(await answer, { bytes: 200_000, how: 'end' }, 'the client reads the whole answer, then our FIN');
  await settle();
  t.equal(closed, 1, 'closed once both sides ended');
});

t.test('without allowHalfOpen the peer\'s FIN ends our side too (node\'s default, the proxy\'s)', async (t) => {
  const { conn, client } = await pair(t, false);
  const answer = readAll(client);
  client.end();
  t.same(await answer, { bytes: 0, how: 'end' }, 'our FIN follows the peer\'s');
  await settle();
  t.ok(conn.destroyed, 'and the connection closed');
});

t.test('resetAndDestroy(): the peer reads ECONNRESET, not an end', async (t) => {
  const { conn, client } = await pair(t, true);
  const seen = readAll(client);
  let closed = 0;
  conn.on('close', () => closed++);
  conn.write(Buffer.alloc(1000));
  await settle();
  conn.resetAndDestroy();
  t.same(await seen, { bytes: 1000, how: 'ECONNRESET' }, 'the data, then the reset');
  await settle();
  t.equal(closed, 1, '\'close\' once');
  t.ok(conn.destroyed);
});

t.test('a peer\'s reset right behind its data: ECONNRESET (what was read before it is the kernel\'s choice), never an end', async (t) => {
  for (let i = 0; i < 5; i++) {
    let serverSide!: (s: Socket) => void;
    const got = new Promise<Socket>((r) => { serverSide = r; });
    const srv = createServer((s) => { s.on('error', () => {}); serverSide(s); });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const io = new NetIo();
    t.teardown(() => { io.close(); srv.close(); });
    const c = io.connect({ address: '127.0.0.1', port: (srv.address() as { port: number }).port });
    c.allowHalfOpen = true;
    const s = await got;
    let bytes = 0;
    const outcome = new Promise<string>((resolve) => {
      c.on('data', (d: Buffer) => { bytes += d.length; });
      c.once('end', () => resolve('end'));
      c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
    s.write(Buffer.alloc(100_000, 7));
    s.resetAndDestroy();
    const how = await outcome;
    t.equal(how, 'ECONNRESET', `run ${i}: a reset, not an end (${bytes} bytes read before it)`);
    io.close();
    srv.close();
  }
});

t.test('destroySoon(): queued bytes and our FIN go out, then close without the peer\'s FIN', async (t) => {
  const { conn, client } = await pair(t, true);
  client.pause(); // the client reads nothing yet: our bytes queue natively
  let closed = false;
  conn.on('close', () => { closed = true; });
  conn.write(Buffer.alloc(4 * 1024 * 1024, 2));
  conn.destroySoon();
  await settle();
  t.notOk(closed, 'not closed while bytes wait for the peer to read');
  const seen = readAll(client);
  client.resume();
  t.same(await seen, { bytes: 4 * 1024 * 1024, how: 'end' }, 'every byte, then a FIN (no reset)');
  await settle();
  t.ok(closed, 'closed once written, though the peer never sent its FIN');
});

t.test('coalesceWrites: the writes made while a batch is delivered go out in one native call, in order, with back-pressure', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  // the native loop's methods bound, write/writev counted for b (connections take the loop they are made with)
  const native = (io as unknown as { loop: Record<string, (...x: unknown[]) => unknown> }).loop;
  const calls: string[] = [];
  let bId = -1;
  const proto = Object.getPrototypeOf(native) as object;
  const wrapper: Record<string, unknown> = {};
  for (const k of Object.getOwnPropertyNames(proto)) if (k !== 'constructor' && typeof native[k] === 'function') wrapper[k] = native[k]!.bind(native);
  wrapper.write = (id: unknown, ...rest: unknown[]) => { if (id === bId) calls.push('write'); return native.write!(id, ...rest); };
  wrapper.writev = (id: unknown, ...rest: unknown[]) => { if (id === bId) calls.push(`writev ${(rest[0] as unknown[]).length}`); return native.writev!(id, ...rest); };
  (io as unknown as { loop: unknown }).loop = wrapper;
  const conns: NetConn[] = [];
  let gotTwo!: () => void;
  const two = new Promise<void>((r) => { gotTwo = r; });
  const l = io.listen('127.0.0.1', 0, (c) => { c.allowHalfOpen = true; c.on('error', () => {}); conns.push(c); if (conns.length === 2) gotTwo(); });
  const from = connect({ port: l.port, host: '127.0.0.1' });
  await new Promise<void>((r) => from.once('connect', () => r()));
  const to = connect({ port: l.port, host: '127.0.0.1', allowHalfOpen: true });
  to.on('error', () => {});
  from.on('error', () => {});
  t.teardown(() => { from.destroy(); to.destroy(); });
  await two;
  const [a, b] = conns as [NetConn, NetConn];
  b.coalesceWrites = true;
  bId = b.id;
  const results: boolean[] = [];
  let drains = 0;
  b.on('drain', () => drains++);
  a.on('data', (d: Buffer) => {
    // four pieces per read, as the splice writes one DATA frame's payload at a time
    const q = Math.ceil(d.length / 4);
    for (let i = 0; i < d.length; i += q) results.push(b.write(d.subarray(i, Math.min(d.length, i + q))));
    results.push(calls.length === 0); // nothing sent while the batch is delivered
  });
  const payload = Buffer.alloc(40_000);
  for (let i = 0; i < payload.length; i++) payload[i] = i % 251;
  const seen: Buffer[] = [];
  to.on('data', (d: Buffer) => seen.push(d));
  from.write(payload);
  await settle(300);
  t.ok(calls.length >= 1, `b's writes were sent (${calls.join(', ')})`);
  t.ok(calls.every((c) => c === 'writev 4' || /^writev|^write$/.test(c)) && calls.length <= Math.ceil(results.length / 5), `one native call per batch, not one per write (${calls.length} calls for ${results.length} results)`);
  t.ok(results.filter((_, i) => i % 5 === 4).every(Boolean), 'nothing was sent before the batch ended');
  t.ok(results.some((r, i) => i % 5 !== 4 && r === false), 'write() said false once the held bytes passed the high-water mark');
  t.ok(drains >= 1, `'drain' followed (${drains})`);
  t.equal(Buffer.concat(seen).equals(payload), true, 'the bytes arrived whole and in order');
});
