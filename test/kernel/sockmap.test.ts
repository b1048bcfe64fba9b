// The sockmap fast path: same-node sockets hand data over without the TCP/IP stack, and the stream stays exact.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { MapReader } from '../../agent/datapath/inspect.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

/** Server: for each connection, sends `serverPayload` (if any) and echoes everything back; ends when the client ends. */
async function echoServer(serverPayload?: Buffer): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => {});
    if (serverPayload) c.write(serverPayload);
    c.on('data', (d) => c.write(d));
    c.on('end', () => c.end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, port: (server.address() as AddressInfo).port };
}

/** Connect, run `send` right after connect, half-close, and collect everything until the server closes. */
function exchange(host: string, port: number, send: (s: Socket) => void, timeoutMs = 20000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = connect({ host, port, allowHalfOpen: true });
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`exchange with ${host}:${port} timed out after ${timeoutMs} ms (${Buffer.concat(chunks).length} bytes)`)); }, timeoutMs);
    s.on('connect', () => { send(s); s.end(); });
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(chunks)); });
  });
}

t.test('sockmap fast path', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'sockmap');
  // Join the meshed cgroup before creating any socket: an accepted socket belongs to the cgroup of the process that
  // created the listener, and only sockets of the attached cgroup are put on the fast path.
  cg.enter('client');
  const fromServer = randomBytes(1 << 20);
  const echo = await echoServer();
  const both = await echoServer(fromServer);
  t.teardown(() => { echo.server.close(); both.server.close(); });
  const agent = await startAgent(t, cg, {
    config: `
services:
  - name: echo
    vips: [127.77.2.1]
    ports: [{ port: 7000 }]
    backends: [{ address: 127.0.0.1, port: ${echo.port} }]
  - name: both
    vips: [127.77.2.2]
    ports: [{ port: 7000 }]
    backends: [{ address: 127.0.0.1, port: ${both.port} }]
`,
  });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());

  t.test('1 MiB of random data each way, byte-exact, with half-close', async (t) => {
    const before = reader.stats().global;
    const payload = randomBytes(1 << 20);
    const got = await exchange('127.77.2.2', 7000, (s) => {
      for (let o = 0; o < payload.length; o += 16384) s.write(payload.subarray(o, o + 16384));
    });
    // The server's own 1 MiB arrives first, then the echo of ours; only the boundary interleaving is unknown, so
    // check both byte streams: the total, and that removing the server's stream from the front leaves our echo.
    t.equal(got.length, 2 << 20, 'received 2 MiB');
    t.equal(sha(got.subarray(0, 1 << 20)), sha(fromServer), 'server -> client stream byte-exact');
    t.equal(sha(got.subarray(1 << 20)), sha(payload), 'client -> server -> client echo byte-exact');
    const after = reader.stats().global;
    t.ok(after.redirect! > before.redirect!, `redirects rose by ${after.redirect! - before.redirect!}`);
  });

  t.test('many small writes right after connect stay in order', async (t) => {
    for (let round = 0; round < 5; round++) {
      const parts: Buffer[] = [];
      for (let i = 0; i < 5000; i++) parts.push(Buffer.from(`${round}:${i};`));
      const want = Buffer.concat(parts);
      const got = await exchange('127.77.2.1', 7000, (s) => { for (const p of parts) s.write(p); });
      t.equal(got.length, want.length, `round ${round}: ${want.length} bytes`);
      t.ok(got.equals(want), `round ${round}: byte-exact`);
    }
    const g = reader.stats().global;
    t.comment(`global: redirect=${g.redirect} redirect_miss=${g.redirect_miss} tcp_only=${g.tcp_only} sock_insert=${g.sock_insert}`);
  });

  t.test('a direct (non-VIP) loopback connection between meshed sockets is redirected too', async (t) => {
    const before = reader.stats().global;
    const payload = randomBytes(256 * 1024);
    const got = await exchange('127.0.0.1', echo.port, (s) => s.write(payload));
    t.ok(got.equals(payload), 'byte-exact');
    t.ok(reader.stats().global.redirect! > before.redirect!, 'redirected');
  });

  t.test('a peer outside the mesh: the message takes the normal path, and the stream is not reordered', async (t) => {
    // An echo server in the test runner's original cgroup: its accepted sockets are never in the SOCKHASH, so our
    // client's first send misses and the socket is pinned to TCP (redirecting later bytes would reorder them).
    const script = "require('net').createServer({allowHalfOpen:true},c=>{c.on('data',d=>c.write(d));c.on('end',()=>c.end())})" +
      ".listen(0,'127.0.0.1',function(){console.log(this.address().port)})";
    const child = spawn('/bin/sh', ['-c', `echo $$ > '${cg.original}/cgroup.procs' && exec "$0" -e "$1"`, process.execPath, script],
      { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(() => { child.kill('SIGKILL'); });
    const port = await new Promise<number>((r) => child.stdout!.once('data', (d: Buffer) => r(Number(d.toString().trim()))));
    const before = reader.stats().global;
    const parts: Buffer[] = [];
    for (let i = 0; i < 3000; i++) parts.push(Buffer.from(`outside:${i};`));
    const want = Buffer.concat(parts);
    const got = await exchange('127.0.0.1', port, (s) => { for (const p of parts) s.write(p); });
    t.ok(got.equals(want), `byte-exact (${got.length}/${want.length} bytes)`);
    const after = reader.stats().global;
    t.ok(after.redirect_miss! > before.redirect_miss!, `a miss was counted (${after.redirect_miss! - before.redirect_miss!})`);
    t.ok(after.tcp_only! > before.tcp_only!, `later sends stayed on TCP (${after.tcp_only! - before.tcp_only!})`);
  });

  t.test('redirects are counted per service and backend', async (t) => {
    const svc = reader.frontends().find((f) => f.vip === '127.77.2.2')!;
    t.ok(svc.backends[0]!.counters.redirects > 0, `backend redirects ${svc.backends[0]!.counters.redirects}`);
    t.ok(svc.backends[0]!.counters.redirectBytes >= 2 << 20, `backend redirect bytes ${svc.backends[0]!.counters.redirectBytes}`);
    const st = reader.stats().services.find((s) => s.serviceId === svc.serviceId)!;
    t.ok(st.counters.redirects > 0, 'service redirects');
    t.ok(st.counters.connections >= 1, 'service connections');
  });

  t.test('sockets of live connections are in the SOCKHASH with the netns cookie in the key', async (t) => {
    const s = connect({ host: '127.77.2.1', port: 7000 });
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write('x');
    await new Promise<void>((r) => s.once('data', () => r()));
    const local = `${s.localAddress}:${s.localPort}`;
    const entries = reader.sockets();
    const mine = entries.find((e) => e.local === local);
    t.ok(mine, `client socket ${local} is in the map`);
    t.ok(entries.find((e) => e.remote === local), 'and so is its peer (the accepted socket)');
    t.not(mine?.netnsCookie, '0', 'netns cookie set');
    s.destroy();
  });

  t.test('1,000 concurrent connections through the VIP all exchange data exactly', async (t) => {
    const n = 1000;
    const conns: Promise<boolean>[] = [];
    for (let i = 0; i < n; i++) {
      const msg = Buffer.from(`conn-${i}-${'x'.repeat(i % 100)}`);
      conns.push(exchange('127.77.2.1', 7000, (s) => s.write(msg), 60000).then((b) => b.equals(msg)));
    }
    const ok = (await Promise.all(conns)).filter(Boolean).length;
    t.equal(ok, n, `${ok}/${n} exact`);
  });
});
