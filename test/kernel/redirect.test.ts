// The kernel side of the L7 redirect: real programs attached to a cgroup of our own, a stand-in proxy (a plain net
// server) and real clients. The datapath runs in this process (Datapath + Reconciler), so the test plays the agent:
// it announces the proxy, beats (or stops beating) its heart, and takes original destinations out of the kernel.
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { connectId, idServer, sleep, type IdServer } from '../lib/net.js';
import { Datapath, cleanup, type ProxySettings } from '../../agent/datapath/datapath.js';
import { Reconciler } from '../../agent/datapath/reconcile.js';
import { MapReader } from '../../agent/datapath/inspect.js';
import { native } from '../../agent/datapath/native.js';
import { addonPath } from '../../agent/addon.js';
import { encode } from '../../agent/datapath/abi.js';
import { ownCgroupId } from '../../agent/datapath/cgroup.js';
import type { Backend, HttpPolicy, Model, Service } from '../../agent/model/types.js';
import type { OriginalDst } from '../../agent/model/redirect.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const cgroupId = (path: string): bigint => statSync(path, { bigint: true }).ino;
let bpffsSeq = 0;
// Named like testCgroup's directories, so a run killed before its teardown is swept by the next one.
const bpffsDir = (name: string): string => `/sys/fs/bpf/sockmesh-test-${name}-${process.pid}-${100 + ++bpffsSeq}`;

function service(name: string, vip: string, port: number, backends: IdServer[], http?: Partial<HttpPolicy>, host = '127.0.0.1'): Service {
  const family = vip.includes(':') ? 6 : 4;
  const be: Backend[] = backends.map((s) => ({ address: host, family, port: s.port, weight: 1 }));
  return {
    name, algorithm: 'random', affinityTimeoutSeconds: 0, maglevTableSize: 251,
    frontends: [{ vip, family, port, protocol: 'tcp', backends: be }],
    // Only failMode matters to the kernel; the rest is the proxy's.
    http: http as HttpPolicy | undefined,
  };
}

/** A datapath of our own on a cgroup of our own, removed at teardown. */
function datapath(t: Test, cgroup: string, name: string, sockmap: boolean, model: Model): { dp: Datapath; reader: MapReader } {
  const bpffs = bpffsDir(name);
  const dp = new Datapath({ bpffs, cgroup, sockmap, eventSample: 1 });
  t.teardown(() => { dp.close(); cleanup(bpffs); });
  dp.load();
  dp.configure();
  const rec = new Reconciler(dp.maps, native());
  rec.syncLocalAddresses();
  rec.apply(model);
  dp.attach();
  return { dp, reader: MapReader.fromFds(dp.maps.fds) };
}

interface StandIn {
  port: number;
  /** put the stand-in's listening sockets into the kernel's sm_proxy_socks, as the agent does for its own */
  record(dp: Datapath): void;
  /** originalDst() results by client `address|port`: the first lookup and a second one */
  seen: Map<string, { first: OriginalDst | null; second: OriginalDst | null }>;
  close(): Promise<void>;
}

/** The stand-in proxy: 127.0.0.1 and ::1 on one port, in this process (outside the meshed cgroup). Greets, then echoes. */
async function standIn(lookup: () => Datapath): Promise<StandIn> {
  const seen: StandIn['seen'] = new Map();
  const sockets = new Set<Socket>();
  const onConn = (c: Socket): void => {
    sockets.add(c);
    c.on('close', () => sockets.delete(c));
    c.on('error', () => {});
    const dp = lookup();
    const first = dp.originalDst(c.remoteAddress!, c.remotePort!);
    const second = dp.originalDst(c.remoteAddress!, c.remotePort!);
    seen.set(`${c.remoteAddress}|${c.remotePort}`, { first, second });
    c.write('proxy\n');
    c.on('data', (d) => c.write(d));
  };
  for (let attempt = 0; ; attempt++) {
    const v4 = createServer(onConn);
    await new Promise<void>((r) => v4.listen(0, '127.0.0.1', () => r()));
    const port = (v4.address() as AddressInfo).port;
    const v6 = createServer(onConn);
    const ok = await new Promise<boolean>((r) => { v6.once('error', () => r(false)); v6.listen(port, '::1', () => r(true)); });
    if (!ok) {
      v4.close();
      if (attempt < 5) continue;
      throw new Error('no port free on both 127.0.0.1 and ::1');
    }
    const closeAll = (s: Server): Promise<void> => new Promise((r) => s.close(() => r()));
    const record = (dp: Datapath): void => {
      dp.proxyListener('127.0.0.1', port, serverFd(v4));
      dp.proxyListener('::1', port, serverFd(v6));
    };
    return { port, seen, record, close: async () => { for (const c of sockets) c.destroy(); await Promise.all([closeAll(v4), closeAll(v6)]); } };
  }
}

/** A listening net.Server's fd (node keeps it on the handle; the agent's own proxy gets it from its netio loop). */
const serverFd = (s: Server): number => (s as unknown as { _handle: { fd: number } })._handle.fd;

/**
 * JS for a child process that listens in another cgroup or namespace: once `server` listens on host, it records its
 * socket in the pinned sm_proxy_socks itself (a socket cannot be handed to this process without SCM_RIGHTS).
 */
const recordInChild = (bpffs: string, host: string): string =>
  `const rec=(port,fd)=>{const n=require(${JSON.stringify(addonPath('sockmesh'))});const k=Buffer.alloc(20);` +
  `k[10]=0xff;k[11]=0xff;${JSON.stringify(host)}.split('.').forEach((o,i)=>{k[12+i]=Number(o)});k.writeUInt16BE(port,16);` +
  `const v=Buffer.alloc(4);v.writeUInt32LE(fd);n.mapUpdate(n.objGet(${JSON.stringify(bpffs + '/sm_proxy_socks')}),k,v)};`;

const refused = async (host: string, port: number): Promise<{ code?: string; ms: number }> => {
  const t0 = performance.now();
  const err = await connectId(host, port, { timeoutMs: 3000 }).then(() => null, (e: NodeJS.ErrnoException) => e);
  return { code: err?.code ?? (err ? err.message : 'connected'), ms: performance.now() - t0 };
};

t.test('L7 redirect at connect()', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'redirect');
  const a = await idServer('a');
  const b = await idServer('b');
  const a6 = await idServer('a6', '::1');
  t.teardown(async () => { await a.close(); await b.close(); await a6.close(); });
  const model: Model = {
    services: [
      service('closed', '127.100.0.1', 80, [a], { failMode: 'closed' }),
      service('open', '127.100.0.2', 80, [b], { failMode: 'open' }),
      service('plain', '127.100.0.3', 80, [a]),
      service('closed6', '::1', 9086, [a6], { failMode: 'closed' }, '::1'),
    ],
  };
  let current!: Datapath;
  const proxy = await standIn(() => current);
  t.teardown(() => proxy.close());
  const { dp, reader } = datapath(t, cg.path, 'redirect', true, model);
  current = dp;
  const agentCgroup = ownCgroupId(); // this process plays the agent: its own cgroup is the proxy's
  const settings: ProxySettings = { v4: '127.0.0.1', v6: '::1', port: proxy.port, cgroupId: agentCgroup, timeoutMs: 60_000 };
  dp.setProxy(settings);
  proxy.record(dp);
  dp.heartbeat();
  const clientCg = cg.child('client');
  cg.enter('client');
  const g = (): Record<string, number> => reader.stats().global;

  t.test('a client is redirected to the proxy, which learns the VIP and the client\'s cgroup once', async (t) => {
    const before = g();
    const conn = await connectId('127.100.0.1', 80, { keep: true });
    t.equal(conn.id, 'proxy', 'the stand-in proxy answered, not the backend');
    t.equal(`${conn.remoteAddress}:${conn.remotePort}`, '127.100.0.1:80', 'getpeername() shows the VIP');
    const s = proxy.seen.get(`${conn.socket.localAddress}|${conn.socket.localPort}`);
    t.same(s?.first, { vip: '127.100.0.1', port: 80, cgroupId: cgroupId(clientCg) }, 'originalDst(peer): VIP, port, client cgroup id');
    t.equal(s?.second, null, 'a second lookup finds nothing: the entry was taken');
    t.notOk(reader.sockets().some((e) => e.local === `${conn.socket.localAddress}:${conn.socket.localPort}`),
      'the proxy is outside the mesh: the client socket stays off the SOCKHASH (no sk_msg cost for nothing)');
    conn.socket.write('echo\n');
    const echoed = await new Promise<string>((r) => conn.socket.once('data', (d) => r(d.toString())));
    t.equal(echoed, 'echo\n', 'the connection to the proxy carries data');
    conn.socket.destroy();
    const after = g();
    t.equal(after.l7_redirect! - before.l7_redirect!, 1, 'l7_redirect counted');
    t.equal(after.l7_handoff! - before.l7_handoff!, 1, 'sock_ops handed the entry over');
    t.equal(dp.originalDst('127.0.0.1', 1), null, 'an unknown peer: null');
  });

  t.test('dialing the proxy port directly finds no original destination, not a stale one', async (t) => {
    // A stale entry under the tuple the client will use (as if an earlier redirected connection was never accepted).
    const free = createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', () => r()));
    const localPort = (free.address() as AddressInfo).port;
    await new Promise<void>((r) => free.close(() => r()));
    const key = encode('sm_l7_key', { netns_cookie: native().netnsCookie(-1), addr: '127.0.0.1', port: localPort });
    native().mapUpdate(dp.maps.fd('sm_l7_peers'), key,
      encode('sm_orig_dst', { vip: '127.100.0.1', port: 80, service_id: 1, cgroup_id: 1n }));
    const s = connect({ host: '127.0.0.1', port: proxy.port, localAddress: '127.0.0.1', localPort });
    await new Promise<void>((r, j) => { s.once('data', () => r()); s.once('error', j); });
    t.equal(s.localPort, localPort, 'the client used the tuple of the stale entry');
    const seen = proxy.seen.get(`127.0.0.1|${localPort}`);
    t.equal(seen?.first, null, 'the proxy learns nothing: sock_ops dropped the stale entry');
    s.destroy();
  });

  t.test('a new agent announcing the proxy drops the hand-overs an earlier one never accepted', async (t) => {
    const key = encode('sm_l7_key', { netns_cookie: native().netnsCookie(-1), addr: '127.0.0.1', port: 1 });
    native().mapUpdate(dp.maps.fd('sm_l7_peers'), key, encode('sm_orig_dst', { vip: '127.100.0.1', port: 80, service_id: 1, cgroup_id: 1n }));
    t.equal(native().mapKeys(dp.maps.fd('sm_l7_peers')).length >= 1, true, 'a stale entry is there');
    dp.setProxy(settings);
    dp.heartbeat();
    t.equal(native().mapKeys(dp.maps.fd('sm_l7_peers')).length, 0, 'setProxy removed it');
  });

  t.test('a plain (L4) service next to it is balanced as before', async (t) => {
    const conn = await connectId('127.100.0.3', 80);
    t.equal(conn.id, 'a');
  });

  t.test('the service entries carry the L7 flags (as meshctl services shows them)', async (t) => {
    const byVip = new Map(reader.frontends().map((f) => [`${f.vip}:${f.port}`, f.l7]));
    t.equal(byVip.get('127.100.0.1:80'), 'fail-closed');
    t.equal(byVip.get('127.100.0.2:80'), 'fail-open');
    t.equal(byVip.get('127.100.0.3:80'), undefined, 'a plain service is not L7');
    t.equal(byVip.get('::1:9086'), 'fail-closed');
  });

  t.test('a dual-stack socket to the v4-mapped VIP goes to the v4 listener', async (t) => {
    const conn = await connectId('::ffff:127.100.0.1', 80, { keep: true });
    t.equal(conn.id, 'proxy');
    t.equal(`${conn.remoteAddress}:${conn.remotePort}`, '::ffff:127.100.0.1:80', 'getpeername() shows the mapped VIP');
    // The stand-in's v4 listener sees the peer as plain IPv4.
    const la = conn.socket.localAddress!.replace(/^::ffff:/, '');
    t.same(proxy.seen.get(`${la}|${conn.socket.localPort}`)?.first, { vip: '127.100.0.1', port: 80, cgroupId: cgroupId(clientCg) });
    conn.socket.destroy();
  });

  t.test('IPv6 VIP: redirected to the v6 listener, originalDst has the v6 VIP', async (t) => {
    const conn = await connectId('::1', 9086, { keep: true });
    t.equal(conn.id, 'proxy');
    t.equal(`[${conn.remoteAddress}]:${conn.remotePort}`, '[::1]:9086', 'getpeername() shows the VIP');
    t.same(proxy.seen.get(`::1|${conn.socket.localPort}`)?.first, { vip: '::1', port: 9086, cgroupId: cgroupId(clientCg) });
    conn.socket.destroy();
  });

  t.test('proxy down: fail-closed refuses at once, fail-open goes straight to a backend; back up: redirected again', async (t) => {
    dp.proxyDown();
    const before = g();
    const r = await refused('127.100.0.1', 80);
    t.equal(r.code, 'EPERM', 'fail-closed: connect() fails with EPERM');
    t.ok(r.ms < 500, `refused in ${r.ms.toFixed(1)} ms`);
    const r6 = await refused('::1', 9086);
    t.equal(r6.code, 'EPERM', 'fail-closed IPv6 too');
    const open = await connectId('127.100.0.2', 80, { keep: true });
    t.equal(open.id, 'b', 'fail-open: the backend answered directly');
    t.equal(`${open.remoteAddress}:${open.remotePort}`, '127.100.0.2:80', 'getpeername() still shows the VIP');
    open.socket.destroy();
    const after = g();
    t.equal(after.l7_fail_closed! - before.l7_fail_closed!, 2, 'two refusals counted');
    t.equal(after.l7_fail_open! - before.l7_fail_open!, 1, 'one fail-open counted');
    // Refused connects count as no_backend on their service.
    const closedId = reader.frontends().find((f) => f.vip === '127.100.0.1')!.serviceId;
    t.equal(reader.stats().services.find((s) => s.serviceId === closedId)?.counters.noBackend, 1, 'the refusal shows on the service counters');

    dp.heartbeat();
    t.equal((await connectId('127.100.0.1', 80)).id, 'proxy', 'fail-closed service redirected again');
    t.equal((await connectId('127.100.0.2', 80)).id, 'proxy', 'fail-open service redirected again');
  });

  t.test('the proxy\'s listener closes (its process died) with the heartbeat fresh: the fail mode at the next connect()', async (t) => {
    let cur!: Datapath;
    const gone = await standIn(() => cur);
    cur = dp;
    let closed = false;
    t.teardown(async () => { if (!closed) await gone.close(); });
    dp.setProxy({ ...settings, port: gone.port });
    gone.record(dp);
    dp.heartbeat();
    try {
      t.same(reader.proxy()?.listeners, [`127.0.0.1:${gone.port}`, `127.0.0.1:${proxy.port}`, `[::1]:${gone.port}`, `[::1]:${proxy.port}`].sort(),
        'both stand-ins\' listeners are in sm_proxy_socks');
      t.equal((await connectId('127.100.0.1', 80)).id, 'proxy', 'redirected while it listens');
      await gone.close();
      closed = true;
      t.same(reader.proxy()?.listeners, [`127.0.0.1:${proxy.port}`, `[::1]:${proxy.port}`], 'closed: the kernel took its sockets out');
      t.match(reader.proxy(), { alive: false }, 'reported down although the heartbeat is fresh');
      t.ok(reader.proxy()!.heartbeatAgeMs! < 60_000);
      const before = g();
      const r = await refused('127.100.0.1', 80);
      t.equal(r.code, 'EPERM', `fail-closed: refused in ${r.ms.toFixed(1)} ms`);
      t.ok(r.ms < 100, 'at once');
      t.equal((await refused('::1', 9086)).code, 'EPERM', 'IPv6 too');
      t.equal((await connectId('127.100.0.2', 80)).id, 'b', 'fail-open: straight to the backend');
      const after = g();
      t.equal(after.l7_proxy_gone! - before.l7_proxy_gone!, 3, 'l7_proxy_gone counted for each');
      t.equal(after.l7_fail_closed! - before.l7_fail_closed!, 2);
      t.equal(after.l7_fail_open! - before.l7_fail_open!, 1);
      t.equal(after.l7_redirect! - before.l7_redirect!, 0, 'nothing redirected to the closed port');
    } finally {
      dp.setProxy(settings);
      dp.heartbeat();
    }
    t.equal((await connectId('127.100.0.1', 80)).id, 'proxy', 'the live proxy again: redirected');
  });

  t.test('heartbeat expiry: after the timeout without a beat the fail mode applies by itself', async (t) => {
    // Generous margins: a loaded machine may take a while between the beat and the connect() that checks it.
    dp.setProxy({ ...settings, timeoutMs: 1500 });
    dp.heartbeat();
    t.equal((await connectId('127.100.0.1', 80)).id, 'proxy', 'fresh heartbeat: redirected');
    await sleep(2500);
    const r = await refused('127.100.0.1', 80);
    t.equal(r.code, 'EPERM', `stale heartbeat (2500 ms > 1500 ms): refused in ${r.ms.toFixed(1)} ms`);
    t.equal((await connectId('127.100.0.2', 80)).id, 'b', 'fail-open: straight to the backend');
    dp.heartbeat();
    t.equal((await connectId('127.100.0.1', 80)).id, 'proxy', 'beating again: redirected');
    dp.setProxy(settings);
    dp.heartbeat();
  });

  t.test('a connect() from the proxy\'s own cgroup is balanced at L4, never looped back to the proxy', async (t) => {
    const proxySide = cg.child('proxyside');
    dp.setProxy({ ...settings, cgroupId: cgroupId(proxySide) });
    dp.heartbeat();
    cg.enter('proxyside');
    try {
      const before = g();
      const conn = await connectId('127.100.0.1', 80, { keep: true });
      t.equal(conn.id, 'a', 'the backend answered');
      t.equal(`${conn.remoteAddress}:${conn.remotePort}`, '127.100.0.1:80', 'getpeername() shows the VIP');
      conn.socket.destroy();
      t.equal((await connectId('::1', 9086)).id, 'a6', 'IPv6 too');
      t.equal(g().l7_from_proxy! - before.l7_from_proxy!, 2, 'counted as from the proxy');
    } finally {
      cg.enter('client');
      dp.setProxy(settings);
      dp.heartbeat();
    }
    t.equal((await connectId('127.100.0.1', 80)).id, 'proxy', 'other cgroups are still redirected');
  });

  t.test('many clients at once: every accepted connection finds its own original destination', async (t) => {
    const n = 200;
    const conns = await Promise.all(Array.from({ length: n }, (_, i) =>
      connectId(i % 2 ? '127.100.0.1' : '127.100.0.2', 80, { keep: true })));
    let right = 0;
    for (const c of conns) {
      const s = proxy.seen.get(`${c.socket.localAddress}|${c.socket.localPort}`);
      if (c.id === 'proxy' && s?.first?.vip === c.remoteAddress && s.first.port === 80 && s.second === null) right++;
      c.socket.destroy();
    }
    t.equal(right, n, `${right}/${n} connections matched their VIP`);
  });

  t.test('the app-to-proxy leg is on the sockmap fast path when the proxy listens inside the meshed cgroup', async (t) => {
    // A proxy in a child cgroup of the attached one: its accepted sockets get sock_ops too. It only echoes.
    const proxyCg = cg.child('proxy');
    const script = recordInChild(dp.opts.bpffs, '127.0.0.1') +
      "require('net').createServer({allowHalfOpen:true},c=>{c.on('data',d=>c.write(d));c.on('end',()=>c.end())})" +
      ".listen(0,'127.0.0.1',function(){rec(this.address().port,this._handle.fd);console.log(this.address().port)})";
    const child = spawn('/bin/sh', ['-c', `echo $$ > '${proxyCg}/cgroup.procs' && exec "$0" -e "$1"`, process.execPath, script],
      { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(() => { child.kill('SIGKILL'); });
    const port = await new Promise<number>((r) => child.stdout!.once('data', (d: Buffer) => r(Number(d.toString().trim()))));
    dp.setProxy({ ...settings, v6: '', port, cgroupId: cgroupId(proxyCg), inMesh: true });
    dp.heartbeat();
    try {
      const before = g();
      const parts: Buffer[] = [];
      for (let i = 0; i < 4000; i++) parts.push(Buffer.from(`l7:${i};`));
      const want = Buffer.concat(parts);
      let local = '';
      let peer = '';
      const got = await new Promise<Buffer>((resolve, reject) => {
        const chunks: Buffer[] = [];
        const s: Socket = connect({ host: '127.100.0.1', port: 80, allowHalfOpen: true });
        const timer = setTimeout(() => { s.destroy(); reject(new Error('exchange timed out')); }, 20000);
        s.on('connect', () => {
          local = `${s.localAddress}:${s.localPort}`;
          peer = `${s.remoteAddress}:${s.remotePort}`;
          const inMap = reader.sockets();
          t.ok(inMap.some((e) => e.local === local), 'the client socket is in the SOCKHASH');
          t.ok(inMap.some((e) => e.remote === local), 'and so is the proxy\'s accepted socket');
          for (const p of parts) s.write(p);
          s.end();
        });
        s.on('data', (d) => chunks.push(d));
        s.on('error', (e) => { clearTimeout(timer); reject(e); });
        s.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(chunks)); });
      });
      t.equal(peer, '127.100.0.1:80', 'getpeername() shows the VIP');
      t.equal(got.length, want.length, `${want.length} bytes back`);
      t.ok(got.equals(want), 'byte-exact through the redirected leg');
      const after = g();
      t.ok(after.redirect! > before.redirect!, `sk_msg redirects rose by ${after.redirect! - before.redirect!}`);
      t.equal(after.tcp_only! - before.tcp_only!, 0, 'no send fell back to TCP');
      // The hand-over happened too: the entry for this client is waiting in the kernel.
      const [addr, p] = [local.slice(0, local.lastIndexOf(':')), Number(local.slice(local.lastIndexOf(':') + 1))];
      t.same(dp.originalDst(addr, p), { vip: '127.100.0.1', port: 80, cgroupId: cgroupId(clientCg) }, 'originalDst for this client');
    } finally {
      dp.setProxy(settings);
      dp.heartbeat();
    }
  });

  t.test('a client in another network namespace is not sent to a loopback proxy it cannot reach, but to a node address', async (t) => {
    // Our own namespace, removed at teardown. The client joins the meshed cgroup first, then enters the namespace
    // (ip netns exec remounts /sys). Its 127.0.0.1 is not the proxy's: fail-closed must refuse, not redirect there.
    const ns = `sockmesh-test-redirect-${process.pid}`;
    const add = spawnSync('ip', ['netns', 'add', ns], { encoding: 'utf8' });
    if (add.status !== 0) { t.plan(0, `skipped: cannot create a network namespace: ${add.stderr.trim()}`); return; }
    t.teardown(() => { spawnSync('ip', ['netns', 'del', ns]); });
    spawnSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    const script = "const s=require('net').connect(80,'127.100.0.1');s.on('connect',()=>{console.log('connected');process.exit(0)});" +
      "s.on('error',e=>{console.log(e.code);process.exit(0)})";
    const clientCgProcs = `${cg.child('nsclient')}/cgroup.procs`;
    // nsenter, not `ip netns exec` (which remounts /sys, see DESIGN.md): the cgroup is joined before.
    const inNs = (): string => spawnSync('/bin/sh', ['-c', `echo $$ > '${clientCgProcs}' && exec nsenter --net=/run/netns/${ns} "$0" -e "$1"`,
      process.execPath, script], { encoding: 'utf8', timeout: 10000 }).stdout.trim();
    const before = g();
    t.equal(inNs(), 'EPERM', 'fail-closed: refused (redirected, it would have met ECONNREFUSED there)');
    t.equal(g().l7_redirect! - before.l7_redirect!, 0, 'not redirected');

    // With a node address (--proxy-node-address) the same client is redirected there instead. Here the address lives on
    // the namespace's own loopback device, so nothing can leave the namespace, and a stand-in listens there (recording
    // its socket in the kernel as the agent does): the connection shows where it was sent (kernel/l7-podns goes all the
    // way through a veth pair to a real proxy).
    const nodeAddr = `10.254.${process.pid % 250}.1`;
    spawnSync('ip', ['-n', ns, 'addr', 'add', `${nodeAddr}/32`, 'dev', 'lo']);
    dp.setProxy({ ...settings, nodeV4: nodeAddr });
    dp.heartbeat();
    try {
      t.equal(reader.proxy()?.nodeV4, nodeAddr, 'the kernel has the node address');
      const b1 = g();
      t.equal(inNs(), 'EPERM', 'no listener of the proxy on the node address: refused, never sent to a port nobody serves');
      t.equal(g().l7_proxy_gone! - b1.l7_proxy_gone!, 1, 'counted as l7_proxy_gone');
      const listenerScript = recordInChild(dp.opts.bpffs, nodeAddr) +
        `require('net').createServer(c=>c.destroy()).listen(${settings.port},${JSON.stringify(nodeAddr)},function(){rec(${settings.port},this._handle.fd);console.log('listening')})`;
      const listener = spawn('nsenter', [`--net=/run/netns/${ns}`, process.execPath, '-e', listenerScript], { stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = new Promise<void>((r) => listener.once('exit', () => r()));
      t.teardown(() => { listener.kill('SIGKILL'); });
      await new Promise<void>((r) => listener.stdout!.once('data', () => r()));
      t.ok(reader.proxy()?.listeners.includes(`${nodeAddr}:${settings.port}`), 'its socket is in sm_proxy_socks');
      const b2 = g();
      t.equal(inNs(), 'connected', 'redirected to the node address in its namespace, where the listener accepted it');
      t.equal(g().l7_redirect! - b2.l7_redirect!, 1, 'counted as a redirect');
      t.equal(g().l7_fail_closed! - b2.l7_fail_closed!, 0, 'not refused');
      listener.kill('SIGKILL');
      await exited;
      t.notOk(reader.proxy()?.listeners.includes(`${nodeAddr}:${settings.port}`), 'the killed listener left sm_proxy_socks by itself');
      const b3 = g();
      t.equal(inNs(), 'EPERM', 'its process killed: refused at once, the heartbeat still fresh');
      t.equal(g().l7_proxy_gone! - b3.l7_proxy_gone!, 1, 'counted as l7_proxy_gone');
      const conn = await connectId('127.100.0.1', 80);
      t.equal(conn.id, 'proxy', 'a client in the proxy\'s own namespace still goes to the loopback listener');
    } finally {
      dp.setProxy(settings);
      dp.heartbeat();
    }
  });

  t.test('flow events name the redirect and the refusal', async (t) => {
    const events: number[] = [];
    const sub = native().ringbufSubscribe(dp.maps.fd('sm_events'), (rec) => { events.push(rec.readUInt8(68)); });
    try {
      await connectId('127.100.0.1', 80);
      dp.proxyDown();
      await refused('127.100.0.1', 80);
      dp.heartbeat();
      await sleep(300);
    } finally {
      sub.close();
    }
    t.ok(events.includes(4), `an l7-redirect event (kinds seen: ${[...new Set(events)].join(',')})`);
    t.ok(events.includes(5), 'an l7-refused event');
  });
});

t.test('without the sockmap fast path the redirect still works (its own sock_ops program)', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'redirect-nosockmap');
  const a = await idServer('a');
  t.teardown(() => a.close());
  let current!: Datapath;
  const proxy = await standIn(() => current);
  t.teardown(() => proxy.close());
  const { dp, reader } = datapath(t, cg.path, 'redirect-nosockmap', false,
    { services: [service('closed', '127.100.1.1', 80, [a], { failMode: 'closed' })] });
  current = dp;
  dp.setProxy({ v4: '127.0.0.1', v6: '::1', port: proxy.port, cgroupId: ownCgroupId(), timeoutMs: 60_000 });
  proxy.record(dp);
  dp.heartbeat();
  const clientCg = cg.child('client');
  cg.enter('client');
  const conn = await connectId('127.100.1.1', 80, { keep: true });
  t.equal(conn.id, 'proxy');
  t.same(proxy.seen.get(`${conn.socket.localAddress}|${conn.socket.localPort}`)?.first,
    { vip: '127.100.1.1', port: 80, cgroupId: cgroupId(clientCg) });
  conn.socket.destroy();
  t.equal(reader.sockets().length, 0, 'nothing in the SOCKHASH');
  t.notOk(dp.attached.some((x) => x.program === 'sm_sockops' && x.how !== 'detached'), 'the fast path\'s sock_ops is not attached');
});

t.test('the agent announces its proxy to the kernel, beats, and marks it down when it stops', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'redirect-agent');
  const a = await idServer('a');
  t.teardown(() => a.close());
  const agent = await startAgent(t, cg, {
    config: `
services:
  - name: shop
    vips: [127.100.2.1]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${a.port} }]
    http: { failMode: open }
  - name: plain
    vips: [127.100.2.2]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${a.port} }]
`,
    extraArgs: ['--proxy-port', '15999', '--proxy-heartbeat-ms', '200'],
  });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  const px = reader.proxy();
  t.match(px, { v4: '127.0.0.1', v6: '::1', port: 15999, timeoutMs: 600, inMesh: false },
    'addresses, --proxy-port, timeout = 3 x --proxy-heartbeat-ms; the agent runs outside the meshed cgroup');
  // The agent runs in the cgroup the test started in (startAgent): that is the proxy's cgroup.
  t.equal(px?.cgroupId, String(cgroupId(cg.original)), 'the agent\'s own cgroup id');
  t.same(px?.listeners, ['127.0.0.1:15999', '[::1]:15999'], 'the agent recorded its listening sockets in sm_proxy_socks');
  const services = JSON.parse(meshctl(agent, ['services', '--json']).stdout) as { service: string; l7?: string }[];
  t.equal(services.find((s) => s.service === 'shop')?.l7, 'fail-open', 'meshctl services shows the L7 service');
  t.equal(services.find((s) => s.service === 'plain')?.l7, undefined);
  const status = JSON.parse(meshctl(agent, ['status', '--json']).stdout) as { proxy?: { port: number; alive: boolean } };
  t.match(status.proxy, { port: 15999, alive: true }, 'meshctl status reports the proxy, alive (the agent runs it and beats)');
  t.match(meshctl(agent, ['status']).stdout, /l7 proxy\s+127\.0\.0\.1:15999 \[::1\]:15999\s+alive.*pods: not redirected/);
  await agent.kill('SIGTERM');
  const after = reader.proxy();
  t.equal(after?.heartbeatAgeMs, null, 'a clean stop marks the proxy down at once');
  t.equal(after?.alive, false);
  t.same(after?.listeners, [], 'and its listeners left sm_proxy_socks with their sockets');
});
