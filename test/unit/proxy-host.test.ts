// The agent's L7 proxy host without a kernel: what the kernel is told when a listener cannot be had (IPv6 on
// loopback taken: IPv4 only; a node address: withdrawn; IPv4 itself: no proxy, no heartbeat), and the heartbeat.
import t, { type Test } from 'tap';
import { createServer, type Server } from 'node:net';
import type { ProxySettings } from '../../agent/datapath/datapath.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { BackendStates } from '../../agent/health/states.js';
import { ProxyHost, type ProxyKernel } from '../../agent/proxyhost.js';
import { captureLog } from '../lib/l7model.js';

function fakeKernel() {
  const told: ProxySettings[] = [];
  const k = { told, beats: 0, downs: 0, nodes: [], listeners: [] } as {
    told: ProxySettings[]; beats: number; downs: number; nodes: [string, string][]; listeners: { host: string; port: number; fd: number; beatsBefore: number }[];
  };
  const dp: ProxyKernel = {
    setProxy: (p) => { told.push(p); },
    setProxyNode: (v4, v6) => { k.nodes.push([v4, v6]); },
    heartbeat: () => { k.beats++; },
    proxyDown: () => { k.downs++; },
    originalDst: () => null,
    proxyListener: (host, port, fd) => { k.listeners.push({ host, port, fd, beatsBefore: k.beats }); },
  };
  return { k, dp };
}

/** a port free on 127.0.0.1 whose [host]:port is held by someone else */
async function hold(t: Test, host: string): Promise<number> {
  const s: Server = createServer();
  await new Promise<void>((res, rej) => { s.once('error', rej); s.listen(0, host, () => res()); });
  t.teardown(() => s.close());
  return (s.address() as { port: number }).port;
}

function host(t: Test, dp: ProxyKernel, o: Partial<ConstructorParameters<typeof ProxyHost>[2]>) {
  const states = new BackendStates();
  const { log, lines } = captureLog('info');
  const h = new ProxyHost(dp, new ProxyPolicy({ states, log }), { cgroupId: 7n, inMesh: false, heartbeatMs: 50, ...o }, log);
  t.teardown(async () => { await h.stop(); states.close(); });
  return { h, lines };
}

t.test('IPv6 loopback taken: the proxy listens on IPv4 only and the kernel is told so', async (t) => {
  let port: number;
  try { port = await hold(t, '::1'); } catch { t.comment('skipped: no IPv6 on loopback'); return; }
  const { k, dp } = fakeKernel();
  const { h, lines } = host(t, dp, { port });
  h.announce();
  t.match(k.told, [{ v4: '127.0.0.1', v6: '::1', port, timeoutMs: 150, cgroupId: 7n, nodeV4: '', nodeV6: '' }]);
  await h.start();
  t.equal(k.told.length, 2);
  t.match(k.told[1], { v4: '127.0.0.1', v6: '', port }, 'v6 withdrawn');
  t.ok(lines.some((l) => l.msg === 'the L7 proxy listens on IPv4 only'));
  t.ok(k.beats >= 1, 'beating once it listens');
  await h.stop();
  t.equal(k.downs, 1, 'marked down at stop');
});

t.test('IPv4 taken: no proxy, no heartbeat (L7 services follow their fail mode)', async (t) => {
  const port = await hold(t, '127.0.0.1');
  const { k, dp } = fakeKernel();
  const { h, lines } = host(t, dp, { port, v6: '' });
  h.announce();
  await h.start();
  t.equal(k.beats, 0);
  t.ok(lines.some((l) => l.msg === 'the L7 proxy cannot listen: L7 services follow their fail mode'));
});

t.test('a node address that cannot be listened on is withdrawn; loopback still serves', async (t) => {
  const { k, dp } = fakeKernel();
  // 192.0.2.1 (TEST-NET-1) is on no interface of this machine: listening there fails (EADDRNOTAVAIL)
  const { h, lines } = host(t, dp, { port: 0, v6: '', nodeV4: '192.0.2.1' });
  h.announce();
  await h.start();
  t.match(k.told.at(-1), { v4: '127.0.0.1', nodeV4: '' }, 'the node address withdrawn');
  t.ok(lines.some((l) => String(l.msg).startsWith('the L7 proxy cannot listen on its node address')));
  t.ok(k.beats >= 1);
});

t.test('following the node address pods route to: the new one listened on, then told; the old one closed', async (t) => {
  const { createConnection } = await import('node:net');
  const reach = (addr: string, port: number): Promise<boolean> => new Promise((res) => {
    const c = createConnection({ host: addr, port }, () => { c.destroy(); res(true); });
    c.on('error', () => res(false));
  });
  const port = await hold(t, '127.0.0.9'); // a port free on 127.0.0.1 (held on another address: never listened on)
  const { k, dp } = fakeKernel();
  const { h, lines } = host(t, dp, { port, v6: '' });
  h.announce();
  await h.followNode({ v4: '127.0.0.2', v6: '' });
  t.same(k.nodes, [], 'not listening yet: nothing');
  await h.start();
  await h.followNode({ v4: '127.0.0.2', v6: '' });
  t.same(k.nodes, [['127.0.0.2', '']], 'the kernel told the node address');
  t.ok(await reach('127.0.0.2', port), 'listening on it');
  await h.followNode({ v4: '127.0.0.3', v6: '' });
  t.same(k.nodes[1], ['127.0.0.3', ''], 'a changed address: told');
  t.ok(await reach('127.0.0.3', port), 'listening on the new one');
  t.notOk(await reach('127.0.0.2', port), 'the old one closed');
  await h.followNode({ v4: '', v6: '' });
  await h.followNode({ v4: '127.0.0.3', v6: '' });
  t.equal(k.nodes.length, 2, 'none found, or the same: nothing changes');
  t.equal(k.told.length, 1, 'setProxy only at announce: the heartbeat and hand-overs are never reset');
  t.ok(lines.some((l) => l.msg === 'L7 proxy: clients in pods are sent to the node address their routes use'));
  t.same(k.listeners.map((l) => l.host), ['127.0.0.1', '127.0.0.1', '127.0.0.2', '127.0.0.1', '127.0.0.2', '127.0.0.3'],
    'every listener recorded in the kernel at start and again with each new node address');
});

t.test('the kernel is given each listening socket (by fd) before the first heartbeat', async (t) => {
  const { fstatSync } = await import('node:fs');
  const { k, dp } = fakeKernel();
  const port = await hold(t, '127.0.0.9'); // free on 127.0.0.1 and .4
  const { h } = host(t, dp, { port, v6: '', nodeV4: '127.0.0.4' });
  h.announce();
  await h.start();
  t.equal(k.listeners.length, 2, 'loopback and node address');
  t.same(k.listeners.map((l) => l.host), ['127.0.0.1', '127.0.0.4']);
  for (const l of k.listeners) {
    t.equal(l.beatsBefore, 0, `${l.host}: recorded before the first beat`);
    t.equal(l.port, port, `${l.host}: the port the kernel redirects to`);
    t.ok(fstatSync(l.fd).isSocket(), `${l.host}: fd ${l.fd} is a socket`);
  }
  t.ok(k.beats >= 1);
});

t.test('a listener the kernel refuses is logged as such; the proxy still serves the others', async (t) => {
  const { k, dp } = fakeKernel();
  dp.proxyListener = (host) => { if (host === '127.0.0.1') throw new Error('map update sm_proxy_socks: EOPNOTSUPP'); k.listeners.push({ host, port: 0, fd: 0, beatsBefore: 0 }); };
  const { h, lines } = host(t, dp, { port: 0, v6: '', nodeV4: '127.0.0.5' });
  h.announce();
  await h.start();
  const line = lines.find((l) => l.msg === 'the kernel cannot hold the L7 proxy\'s listener: its clients follow their fail mode');
  t.ok(line, 'logged');
  t.match(line, { host: '127.0.0.1', error: /EOPNOTSUPP/ });
  t.same(k.listeners.map((l) => l.host), ['127.0.0.5']);
});
