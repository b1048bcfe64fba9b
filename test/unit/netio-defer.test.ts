// NetIo({ deferWrites: true }) (native/netio.cc LoopState::deferWrites, the L7 proxy's loop): the plain sockets' writes
// made while a batch is delivered are sent once the batch is over, in the order the sockets were first written to,
// each socket's in one send; against real node:net peers on loopback. Whether a byte was sent is read synchronously
// from the peer's own fd inside the batch (readSync: EAGAIN = nothing sent yet), so these checks fail on a loop that
// sends at once (the control below shows it does).
import t from 'tap';
import { readSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { NetIo, type NetConn } from '../../agent/proxy/netio.js';

const settle = (ms = 150): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** a NetIo (deferWrites as asked) with n node clients connected to it, and the accepted NetConns in the same order */
async function setup(t: { teardown(fn: () => void): void }, deferWrites: boolean, n: number): Promise<{ io: NetIo; conns: NetConn[]; clients: Socket[] }> {
  const io = new NetIo({ deferWrites });
  const conns: NetConn[] = [];
  let wake: () => void = () => {};
  const l = io.listen('127.0.0.1', 0, (c) => { c.on('error', () => {}); conns.push(c); wake(); });
  const clients: Socket[] = [];
  t.teardown(() => { for (const c of clients) c.destroy(); io.close(); });
  for (let i = 0; i < n; i++) {
    const c = connect({ port: l.port, host: '127.0.0.1' });
    c.on('error', () => {});
    clients.push(c);
    // one at a time, so that conns[i] is clients[i]'s
    await new Promise<void>((r) => { wake = r; if (conns.length > i) r(); });
  }
  return { io, conns, clients };
}

/** the bytes waiting in a node socket's fd now ('' if none: EAGAIN), taken from it */
function takeNow(s: Socket): string {
  const fd = (s as unknown as { _handle: { fd: number } })._handle.fd;
  const buf = Buffer.alloc(65536);
  try {
    return buf.toString('latin1', 0, readSync(fd, buf, 0, buf.length, null));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return '';
    throw e;
  }
}

function collect(s: Socket): { text: () => string } {
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  return { text: () => Buffer.concat(parts).toString('latin1') };
}

t.test('control: without deferWrites a write is sent before write() returns', async (t) => {
  const { conns, clients } = await setup(t, false, 1);
  const seen: string[] = [];
  conns[0]!.on('data', () => { conns[0]!.write('now'); seen.push(takeNow(clients[0]!)); });
  clients[0]!.write('x');
  await settle();
  t.same(seen, ['now'], 'the peer could read it inside the batch');
});

t.test('the writes of a batch go out when it is over: several connections, in order, each whole', async (t) => {
  const { conns, clients } = await setup(t, true, 3);
  const [a, b, c] = conns as [NetConn, NetConn, NetConn];
  const got = clients.map(collect);
  const during: string[] = [];
  a.on('data', () => {
    a.write('one;');
    b.write('two;');
    a.write(Buffer.from('three;'));
    c.write('four;');
    b.write('five;');
    // a microtask of the batch writes too: still the batch's (it runs before the loop gets control back)
    queueMicrotask(() => { c.write('six;'); during.push(takeNow(clients[2]!)); });
    during.push(takeNow(clients[0]!), takeNow(clients[1]!), takeNow(clients[2]!));
  });
  clients[0]!.write('go');
  await settle();
  t.same(during, ['', '', '', ''], 'nothing was sent while the batch was delivered');
  t.equal(got[0]!.text(), 'one;three;', 'a: its writes in order');
  t.equal(got[1]!.text(), 'two;five;', 'b: its writes in order');
  t.equal(got[2]!.text(), 'four;six;', 'c: the microtask\'s write too');
});

t.test('writes outside a batch, and a large write, are sent at once; a large one after a held one keeps the order', async (t) => {
  const { conns, clients } = await setup(t, true, 2);
  const [a, b] = conns as [NetConn, NetConn];
  const gotB = collect(clients[1]!);
  const seen: string[] = [];
  await new Promise<void>((r) => setTimeout(() => { a.write('timer'); seen.push(takeNow(clients[0]!)); r(); }, 10));
  t.same(seen, ['timer'], 'a write from a timer went out before write() returned');
  const big = Buffer.alloc(100_000, 'z');
  const sizes: number[] = [];
  a.on('data', () => {
    a.write(big);
    sizes.push(takeNow(clients[0]!).length);
    b.write('small;');
    b.write(big);
    sizes.push(takeNow(clients[1]!).length);
  });
  clients[0]!.write('go');
  await settle(300);
  t.ok(sizes[0]! > 0, `a 100 kB write was sent at once (${sizes[0]} B readable in the batch)`);
  t.equal(sizes[1], 0, 'a large write behind a held one waits with it');
  t.equal(gotB.text(), 'small;' + big.toString('latin1'), 'b: the small write and then the large one, whole');
});

t.test('end(), destroy() and a reset after writes in the same batch: the writes go first', async (t) => {
  const { conns, clients } = await setup(t, true, 3);
  const [a, b, c] = conns as [NetConn, NetConn, NetConn];
  const got = clients.map(collect);
  const ended = clients.map((s) => new Promise<string>((r) => { s.on('end', () => r('end')); s.on('error', (e) => r((e as NodeJS.ErrnoException).code ?? 'error')); s.on('close', () => r('close')); }));
  a.on('data', () => {
    a.write('bye a');
    a.end();
    b.write('bye b');
    b.destroy();
    c.write('bye c');
  });
  clients[0]!.write('go');
  await settle();
  t.equal(got[0]!.text(), 'bye a', 'end(): the write, then the FIN');
  t.equal(await ended[0], 'end');
  t.equal(got[1]!.text(), 'bye b', 'destroy(): the write was sent before the close');
  t.equal(got[2]!.text(), 'bye c', 'a connection only written to');
});

t.test('a write to a connection whose peer has reset it: the error comes at a later wake, then close', async (t) => {
  const { conns, clients } = await setup(t, true, 2);
  const [a, b] = conns as [NetConn, NetConn];
  const errors: string[] = [];
  let closed = false;
  b.on('error', (e) => errors.push((e as NodeJS.ErrnoException).code ?? e.message));
  b.on('close', () => { closed = true; });
  clients[1]!.resetAndDestroy();
  await settle(50);
  a.on('data', () => { b.write('into a reset connection'); });
  clients[0]!.write('go');
  await settle(300);
  t.ok(closed, 'b closed');
  t.ok(errors.length === 0 || errors.every((c) => c === 'ECONNRESET' || c === 'EPIPE'), `errors: ${errors.join(', ') || 'none (the reset was read first)'}`);
});
