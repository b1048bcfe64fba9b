// NetIo / NetConn (agent/proxy/netio.ts over native/netio.cc): the proxy's own sockets on the addon's epoll
// loop, against real node:net peers on loopback (v4 and v6): echo, backpressure through the native write
// queue, pause/resume, half-close both ways, resets and refused connects as errors with node's codes,
// 'close' exactly once, idle timeouts, the fd hand-over to node:net, many connections at once, and that the
// loop does not hold the process open.
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { connect, createServer, Socket, type AddressInfo, type Server } from 'node:net';
import { NETIO_CONSTANTS, NetConn, NetIo, checkNetioConstants, netioAddon } from '../../agent/proxy/netio.js';

const HOSTS: [string, string][] = [['127.0.0.1', 'v4'], ['::1', 'v6']];

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** collect a connection's 'data' until 'end' or 'close' */
function collect(c: NetConn | Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let done = false;
    const fin = (): void => { if (!done) { done = true; resolve(Buffer.concat(parts)); } };
    c.on('data', (d: Buffer) => parts.push(d));
    c.on('end', fin);
    c.on('close', fin);
  });
}

function onceEvent<T = void>(e: NodeJS.EventEmitter, name: string, ms = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${name}' within ${ms} ms`)), ms);
    e.once(name, (v: T) => { clearTimeout(timer); resolve(v); });
  });
}

async function nodeServer(host: string, onConn: (s: Socket) => void): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => {}); onConn(s); });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  return {
    server, port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/** an ES module `code` run in a child with this test's TypeScript loader (killed after 15 s): exit status and output */
async function runChild(code: string, ...args: string[]): Promise<{ status: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', code, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const status = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  clearTimeout(timer);
  return { status, out, err };
}

/** counts 'close' per connection: exactly once is checked at the end of each test */
function closeCounter(c: NetConn): { n: number } {
  const r = { n: 0 };
  c.on('close', () => { r.n++; });
  return r;
}

for (const [host, fam] of HOSTS) {
  t.test(`${fam}: echo server on NetIo, node client; peer address; close once`, async (t) => {
    const io = new NetIo();
    t.teardown(() => io.close());
    const accepted: NetConn[] = [];
    let closes = { n: 0 };
    const l = io.listen(host, 0, (c) => {
      accepted.push(c);
      closes = closeCounter(c);
      c.on('data', (d: Buffer) => c.write(d));
    });
    t.ok(l.port > 0);
    const s = connect({ host, port: l.port });
    await onceEvent(s, 'connect');
    const [localAddress, localPort] = [s.localAddress, s.localPort];
    const payload = randomBytes(200_000);
    const got = collect(s);
    s.write(payload);
    // after the echo of everything, half-close: the server ends too (allowHalfOpen false)
    let n = 0;
    s.on('data', (d: Buffer) => { n += d.length; if (n === payload.length) s.end(); });
    const back = await got;
    t.equal(sha(back), sha(payload), 'bytes intact');
    t.equal(accepted.length, 1);
    const c = accepted[0]!;
    t.equal(c.remoteAddress, localAddress, 'remoteAddress is the client address');
    t.equal(c.remotePort, localPort, 'remotePort is the client port');
    if (closes.n === 0) await onceEvent(c, 'close');
    await new Promise((r) => setTimeout(r, 20));
    t.equal(closes.n, 1, "'close' once");
    t.equal(io.openCount(), 1, 'only the listener is left open');
    l.close();
    t.equal(io.openCount(), 0);
  });

  t.test(`${fam}: client on NetIo to a node server: connect, write, read, end`, async (t) => {
    const io = new NetIo();
    t.teardown(() => io.close());
    const srv = await nodeServer(host, (s) => { s.on('data', (d) => s.write(d)); });
    t.teardown(() => srv.close());
    const c = io.connect({ address: host, port: srv.port });
    const closes = closeCounter(c);
    // written before the connect finished: queued and sent once it does
    c.write('early ');
    await onceEvent(c, 'connect');
    c.write('late', 'latin1');
    const parts: Buffer[] = [];
    c.on('data', (d: Buffer) => { parts.push(d); if (Buffer.concat(parts).length === 10) c.end(); });
    await onceEvent(c, 'close');
    t.equal(Buffer.concat(parts).toString(), 'early late');
    await new Promise((r) => setTimeout(r, 20));
    t.equal(closes.n, 1, "'close' once");
    t.equal(io.openCount(), 0);
  });
}

t.test('a large write to a slow reader: false, native queue, drain, bytes intact', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  let sock: Socket | null = null;
  const srv = await nodeServer('127.0.0.1', (s) => { sock = s; s.pause(); });
  t.teardown(() => srv.close());
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  await onceEvent(c, 'connect');
  const big = randomBytes(8 * 1024 * 1024);
  const ok = c.write(big);
  t.equal(ok, false, 'write returns false: the kernel did not take 8 MiB at once');
  let drained = false;
  c.on('drain', () => { drained = true; });
  await new Promise((r) => setTimeout(r, 100));
  t.equal(drained, false, 'no drain while the reader does not read');
  while (sock === null) await new Promise((r) => setTimeout(r, 5));
  const s = sock as Socket;
  const got = collect(s);
  // read slowly: resume and pause a few times
  for (let i = 0; i < 5; i++) {
    s.resume();
    await new Promise((r) => setTimeout(r, 10));
    s.pause();
    await new Promise((r) => setTimeout(r, 10));
  }
  s.resume();
  if (!drained) await onceEvent(c, 'drain');
  t.ok(drained || true, 'drain');
  c.end();
  const back = await got;
  t.equal(back.length, big.length);
  t.equal(sha(back), sha(big), 'bytes intact');
});

t.test('pause stops data, resume brings what arrived meanwhile', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  let srvSock: Socket | null = null;
  const srv = await nodeServer('127.0.0.1', (s) => { srvSock = s; });
  t.teardown(() => srv.close());
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  await onceEvent(c, 'connect');
  while (srvSock === null) await new Promise((r) => setTimeout(r, 5));
  let got = '';
  c.on('data', (d: Buffer) => { got += d.toString(); });
  c.pause();
  (srvSock as Socket).write('while paused');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(got, '', 'nothing delivered while paused');
  c.resume();
  await new Promise((r) => setTimeout(r, 100));
  t.equal(got, 'while paused');
  c.destroy();
});

t.test('a connection paused by another one in the same batch gets its data only after resume, in order, then its end', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const server: NetConn[] = [];
  const got: string[] = [];
  const l = io.listen('127.0.0.1', 0, (c) => {
    server.push(c);
    const me = server.length - 1;
    c.on('data', (d: Buffer) => {
      got.push(`${me}:${d.toString()}`);
      // whoever is first in the batch pauses the other
      server[1 - me]!.pause();
    });
    c.on('end', () => got.push(`${me}:end`));
  });
  const a = connect({ host: '127.0.0.1', port: l.port });
  const b = connect({ host: '127.0.0.1', port: l.port });
  await Promise.all([onceEvent(a, 'connect'), onceEvent(b, 'connect')]);
  while (server.length < 2) await new Promise((r) => setTimeout(r, 5));
  // both in the kernel before the loop wakes: one batch
  a.end('A');
  b.end('B');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(got.length, 2, `one connection's data and end delivered, the other's held: ${got.join(' ')}`);
  const first = Number(got[0]![0]);
  t.same(got, [`${first}:${first === 0 ? 'A' : 'B'}`, `${first}:end`]);
  server[1 - first]!.resume();
  await new Promise((r) => setTimeout(r, 50));
  t.same(got.slice(2), [`${1 - first}:${first === 0 ? 'B' : 'A'}`, `${1 - first}:end`], 'held data then end, after resume');
});

t.test('in one batch the reads of connections we made (upstreams: responses) come before those of accepted ones', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const accepted: NetConn[] = [];
  const l = io.listen('127.0.0.1', 0, (c) => accepted.push(c));
  const peers: Socket[] = [];
  const srv = await nodeServer('127.0.0.1', (s) => peers.push(s));
  t.teardown(() => srv.close());
  const up = io.connect({ address: '127.0.0.1', port: srv.port });
  await onceEvent(up, 'connect');
  const clients = [connect({ host: '127.0.0.1', port: l.port }), connect({ host: '127.0.0.1', port: l.port })];
  t.teardown(() => { for (const c of clients) c.destroy(); });
  await Promise.all(clients.map((c) => onceEvent(c, 'connect')));
  while (accepted.length < 2 || peers.length < 1) await new Promise((r) => setTimeout(r, 5));
  const order: string[] = [];
  up.on('data', (d: Buffer) => order.push(`up:${d}`));
  accepted.forEach((c, i) => c.on('data', (d: Buffer) => order.push(`in${i}:${d}`)));
  for (let round = 0; round < 3; round++) {
    order.length = 0;
    // all in the kernel before the loop wakes, the accepted ones ready first (epoll reports them first)
    clients[0]!.write('a');
    clients[1]!.write('b');
    peers[0]!.write('r');
    await new Promise((r) => setTimeout(r, 50));
    t.equal(order.length, 3, order.join(' '));
    t.equal(order[0], 'up:r', `round ${round}: the upstream's bytes first (${order.join(' ')})`);
    t.same(order.slice(1).sort(), ['in0:a', 'in1:b']);
  }
  // an upstream that ends in the same wake as it sends: its data, then its end, as ever
  const ended: string[] = [];
  up.on('end', () => ended.push('end'));
  clients[0]!.write('c');
  peers[0]!.end('last');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(order[order.length - 1], 'in0:c');
  t.ok(order.includes('up:last'), 'the last bytes came');
  t.same(ended, ['end'], 'then the end');
});

t.test('half-close: our end() with data queued, then the peer answers and ends', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  // the server reads until our EOF, then answers with the byte count and ends
  const srv = await nodeServer('127.0.0.1', (s) => {
    let n = 0;
    s.on('data', (d) => { n += d.length; });
    s.on('end', () => { s.end(`got ${n}`); });
  });
  t.teardown(() => srv.close());
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  const closes = closeCounter(c);
  c.write(randomBytes(3 * 1024 * 1024));
  c.end(); // shut down once the queue is flushed
  let ended = false;
  c.on('end', () => { ended = true; });
  const back = await collect(c);
  t.equal(back.toString(), `got ${3 * 1024 * 1024}`, 'the peer saw everything, then our EOF, and could still answer');
  t.ok(ended, "'end'");
  if (closes.n === 0) await onceEvent(c, 'close');
  await new Promise((r) => setTimeout(r, 20));
  t.equal(closes.n, 1);
});

t.test("half-close: the peer's end() -> 'end', our side ends (allowHalfOpen false), 'close'", async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const l = io.listen('127.0.0.1', 0, (c) => {
    // reply after the peer's end: our side is still writable until we end
    c.on('end', () => { c.write('bye'); });
  });
  const s = connect({ host: '127.0.0.1', port: l.port, allowHalfOpen: true });
  await onceEvent(s, 'connect');
  const got = collect(s);
  s.end('x');
  t.equal((await got).toString(), 'bye', 'the write in the end handler went out before our FIN');
  await onceEvent(s, 'close');
});

t.test("peer reset -> 'error' ECONNRESET, then 'close' once", async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const srv = await nodeServer('127.0.0.1', (s) => {
    s.once('data', () => s.resetAndDestroy());
  });
  t.teardown(() => srv.close());
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  const closes = closeCounter(c);
  const errs: NodeJS.ErrnoException[] = [];
  c.on('error', (e) => errs.push(e));
  await onceEvent(c, 'connect');
  c.write('boom');
  await onceEvent(c, 'close');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(errs.length, 1, 'one error');
  t.equal(errs[0]!.code, 'ECONNRESET');
  t.match(errs[0]!.message, /ECONNRESET/);
  t.equal(closes.n, 1);
  t.ok(c.destroyed);
});

t.test("connect refused -> 'error' ECONNREFUSED naming the address, then 'close'", async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  // a port that was just free
  const srv = await nodeServer('127.0.0.1', () => {});
  const port = srv.port;
  await srv.close();
  for (const host of ['127.0.0.1', '::1']) {
    const c = io.connect({ address: host, port });
    const closes = closeCounter(c);
    let err: NodeJS.ErrnoException | null = null;
    let connected = false;
    c.on('error', (e) => { err = e; });
    c.on('connect', () => { connected = true; });
    await onceEvent(c, 'close');
    await new Promise((r) => setTimeout(r, 20));
    t.equal(connected, false);
    t.equal(err!.code, 'ECONNREFUSED', host);
    t.match(err!.message, new RegExp(`connect ECONNREFUSED ${host.replace(/\./g, '\\.')}:${port}`));
    t.equal(closes.n, 1);
  }
  // not an address: the error comes after the call, like a refused connect
  const bad = io.connect({ address: 'no-such-host', port: 80 });
  let badErr: Error | null = null;
  bad.on('error', (e) => { badErr = e; });
  await onceEvent(bad, 'close');
  t.match(badErr!.message, /connect no-such-host:80: not a numeric/);
  t.equal(io.openCount(), 0);
});

t.test('destroy with data queued: close once, the peer sees the connection end early, no error', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  let sock: Socket | null = null;
  const srv = await nodeServer('127.0.0.1', (s) => { sock = s; s.pause(); });
  t.teardown(() => srv.close());
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  const closes = closeCounter(c);
  let errors = 0;
  c.on('error', () => { errors++; });
  await onceEvent(c, 'connect');
  t.equal(c.write(randomBytes(8 * 1024 * 1024)), false);
  c.destroy();
  t.ok(c.destroyed);
  t.equal(c.write('more'), false, 'writes after destroy are refused');
  await onceEvent(c, 'close');
  while (sock === null) await new Promise((r) => setTimeout(r, 5));
  const got = collect(sock as Socket);
  (sock as Socket).resume();
  const back = await got;
  t.ok(back.length < 8 * 1024 * 1024, `the peer got ${back.length} bytes, not all`);
  await new Promise((r) => setTimeout(r, 20));
  t.equal(closes.n, 1);
  t.equal(errors, 0);
  c.destroy();
  await new Promise((r) => setTimeout(r, 20));
  t.equal(closes.n, 1, 'a second destroy emits nothing');
});

t.test('idle timeout: fires after the idle period, not while traffic flows; 0 turns it off', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const srv = await nodeServer('127.0.0.1', (s) => { s.on('data', (d) => s.write(d)); });
  t.teardown(() => srv.close());
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  await onceEvent(c, 'connect');
  c.on('data', () => {});
  const t0 = performance.now();
  let fired = 0;
  c.setTimeout(300, () => { fired++; });
  // keep it busy for 600 ms: no timeout
  let lastWrite = 0;
  while (performance.now() - t0 < 600) {
    c.write('ping');
    lastWrite = performance.now();
    await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(fired, 0, 'no timeout while active');
  await onceEvent(c, 'timeout', 5000);
  const waited = performance.now() - lastWrite;
  t.ok(waited >= 250, `timeout after ${waited.toFixed(0)} ms idle`);
  t.equal(fired, 1);
  // no activity: it does not come again (as node); after activity, a whole idle period later
  c.on('timeout', () => { fired++; });
  await new Promise((r) => setTimeout(r, 700));
  t.equal(fired, 1, 'once per idle period, not every period');
  c.write('ping');
  await onceEvent(c, 'timeout', 5000);
  t.equal(fired, 2, 'again after activity');
  c.setTimeout(0);
  c.write('ping');
  await new Promise((r) => setTimeout(r, 500));
  t.equal(fired, 2, 'off after setTimeout(0)');
  t.equal(c.destroyed, false, "'timeout' is only a notice");
  c.destroy();
});

t.test('release(): the fd goes to a node:net Socket that keeps working with the same bytes', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  let handed: Socket | null = null;
  const l = io.listen('127.0.0.1', 0, (c) => {
    c.once('data', (first: Buffer) => {
      const fd = c.release();
      const s = new Socket({ fd, readable: true, writable: true });
      handed = s;
      // the sniffed bytes go back first, as the h2 hand-over does
      s.pause();
      s.unshift(first);
      s.on('data', (d) => s.write(d));
      s.resume();
    });
  });
  t.teardown(() => { l.close(); (handed as Socket | null)?.destroy(); });
  const cli = connect({ host: '127.0.0.1', port: l.port });
  await onceEvent(cli, 'connect');
  const parts: Buffer[] = [];
  cli.on('data', (d: Buffer) => parts.push(d));
  cli.write('first');
  while (Buffer.concat(parts).length < 5) await new Promise((r) => setTimeout(r, 5));
  cli.write(' second');
  while (Buffer.concat(parts).length < 12) await new Promise((r) => setTimeout(r, 5));
  t.equal(Buffer.concat(parts).toString(), 'first second');
  const s = handed as unknown as Socket;
  t.equal(s.remoteAddress, '127.0.0.1', 'remoteAddress of the handed-over socket');
  t.equal(s.remotePort, cli.localPort);
  t.equal(io.openCount(), 1, 'only the listener is left in the loop');
  cli.destroy();
  await onceEvent(s, 'close');
});

t.test('EADDRINUSE is thrown naming the address', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const a = io.listen('127.0.0.1', 0, () => {});
  t.throws(() => io.listen('127.0.0.1', a.port, () => {}), { message: `listen 127.0.0.1:${a.port}: EADDRINUSE`, code: 'EADDRINUSE' });
  const b = io.listen('::1', 0, () => {});
  t.throws(() => io.listen('::1', b.port, () => {}), { message: `listen [::1]:${b.port}: EADDRINUSE` });
  t.throws(() => io.listen('localhost', 0, () => {}), /not a numeric/);
});

t.test('hundreds of connections at once, interleaved traffic, ids never confused after close/reopen', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  // each connection says its number first; the server echoes every chunk prefixed with that number
  const l = io.listen('127.0.0.1', 0, (c) => {
    let tag: string | null = null;
    c.on('data', (d: Buffer) => {
      if (tag === null) { tag = d.toString(); c.write(`hello ${tag}\n`); return; }
      c.write(d);
    });
  });
  const N = 300;
  const round = async (base: number): Promise<void> => {
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < N; i++) {
      jobs.push(new Promise<void>((resolve, reject) => {
        const id = `${base + i}`;
        const s = connect({ host: '127.0.0.1', port: l.port });
        s.on('error', reject);
        let buf = '';
        let step = 0;
        const msgs = [`a${id};`, `b${id};`, `c${id};`];
        s.on('data', (d) => {
          buf += d.toString();
          if (step === 0 && buf === `hello ${id}\n`) { buf = ''; step = 1; s.write(msgs[0]!); return; }
          if (step >= 1 && buf === msgs[step - 1]) {
            buf = '';
            if (step === 3) { s.end(); resolve(); return; }
            const m = msgs[step]!;
            step++;
            // interleave: the next message a little later
            setTimeout(() => s.write(m), Math.random() * 5);
          } else if (buf.length > 64) reject(new Error(`connection ${id} got '${buf}'`));
        });
        s.write(id);
      }));
    }
    await Promise.all(jobs);
  };
  await round(0);
  // close/reopen: the server side of round 1 is gone; new connections get new ids and their own bytes
  await new Promise((r) => setTimeout(r, 100));
  t.equal(io.conns.size, 0, 'every server side closed after the clients ended');
  await round(1000);
  t.pass('600 connections, each got exactly its own bytes');
});

t.test('the event and error codes are native/netio.cc\'s: the addon exports them, netio.ts checks them at load', async (t) => {
  // as abiConstants for the ABI header: the addon reports what the compiler has
  t.same({ ...netioAddon().constants }, NETIO_CONSTANTS, 'the same names and values on both sides');
  t.ok(Object.isFrozen(netioAddon().constants), 'frozen');
  checkNetioConstants(NETIO_CONSTANTS);
  t.throws(() => checkNetioConstants({ ...NETIO_CONSTANTS, EV_DATA: 9 }), /EV_DATA: native 9, agent\/proxy\/netio.ts 2/, 'a changed value refuses to load');
  const { OP_SHUTDOWN: _gone, ...missing } = NETIO_CONSTANTS;
  t.throws(() => checkNetioConstants(missing), /OP_SHUTDOWN: native undefined/, 'a code the addon lacks');
  t.throws(() => checkNetioConstants({ ...NETIO_CONSTANTS, EV_NEW: 8 }), /EV_NEW: native 8, agent\/proxy\/netio.ts undefined/, 'a code netio.ts does not know');
});

t.test('the proxy\'s sockets need neither libbpf nor the BPF addon (sockmesh_netio.node is its own addon)', async (t) => {
  // a child with the same TypeScript loader: after a connection on NetIo, what the process has mapped
  const src = new URL('../../agent/proxy/netio.ts', import.meta.url).href;
  const code = `
    import { NetIo } from ${JSON.stringify(src)};
    import { readFileSync } from 'node:fs';
    const io = new NetIo();
    const l = io.listen('127.0.0.1', 0, (c) => c.destroy());
    const c = io.connect({ address: '127.0.0.1', port: l.port });
    c.on('error', () => {});
    c.on('close', () => {
      io.close();
      const maps = readFileSync('/proc/self/maps', 'utf8');
      console.log(JSON.stringify({ netio: maps.includes('/sockmesh_netio.node'), bpfAddon: maps.includes('/sockmesh.node'), libbpf: /libbpf/.test(maps) }));
    });
  `;
  const { status, out, err } = await runChild(code);
  t.equal(status, 0, err);
  t.same(JSON.parse(out.trim() || '{}'), { netio: true, bpfAddon: false, libbpf: false }, 'sockmesh_netio.node mapped; sockmesh.node and libbpf not');
});

t.test('the loop does not keep the process alive: idle, and after close()', async (t) => {
  // a child process with the same TypeScript loader as this test: it must exit by itself
  const src = new URL('../../agent/proxy/netio.ts', import.meta.url).href;
  const code = `
    import { NetIo } from ${JSON.stringify(src)};
    import { connect } from 'node:net';
    const mode = process.argv[process.argv.length - 1];
    const io = new NetIo();
    const l = io.listen('127.0.0.1', 0, (c) => { c.on('data', (d) => c.write(d)); });
    const up = io.connect({ address: '127.0.0.1', port: l.port });
    up.on('data', () => {});
    const s = connect(l.port, '127.0.0.1', () => s.write('x'));
    s.on('data', () => {
      s.destroy();
      setTimeout(() => {
        if (mode === 'close') io.close(); else { l.close(); up.destroy(); }
        console.log('done ' + mode);
      }, 50);
    });
  `;
  for (const mode of ['close', 'each']) {
    const { status, out, err } = await runChild(code, mode);
    t.equal(status, 0, `${mode}: the process exited by itself`);
    t.equal(out.trim(), `done ${mode}`, err);
  }
});

t.test('out of fds: accept fails with EMFILE, is reported, the listener rests and accepts the rest later', async (t) => {
  // a child with a low fd limit (prlimit), so that this process keeps its own
  const src = new URL('../../agent/proxy/netio.ts', import.meta.url).href;
  const code = `
    import { NetIo } from ${JSON.stringify(src)};
    const io = new NetIo();
    const held = [];
    let accepted = 0, errors = [];
    const l = io.listen('127.0.0.1', 0, (c) => {
      accepted++;
      held.push(c);
      if (accepted === 100) { console.log('accepted ' + accepted + ' errors ' + [...new Set(errors)].join(',')); io.close(); }
    }, (e) => {
      errors.push(e.code);
      // make room: the connections held so far go
      for (const c of held.splice(0)) c.destroy();
    });
    console.log('port ' + l.port);
  `;
  const child = spawn('prlimit', ['--nofile=80:80', process.execPath, ...process.execArgv, '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '', err = '';
  child.stderr.on('data', (d) => { err += d; });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      const m = /port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error(`child exited: ${err}`)));
  });
  const clients: Socket[] = [];
  for (let i = 0; i < 100; i++) {
    const s = connect({ host: '127.0.0.1', port });
    s.on('error', () => {});
    clients.push(s);
  }
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const status = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  clearTimeout(timer);
  for (const s of clients) s.destroy();
  t.equal(status, 0, err);
  t.match(out, /accepted 100 errors EMFILE/, 'every connection accepted in the end, EMFILE reported');
});
