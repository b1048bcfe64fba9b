// The L7 path for clients in another network namespace (a pod): they cannot reach the proxy's loopback listener, so
// the kernel sends them to the proxy on a node address their routes reach (here the host end of the veths into a node
// lab's pods): given with --proxy-node-address, or found by the agent from the pods' routes without it. Real agent,
// real programs, real namespaces and veths.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MapReader } from '../../agent/datapath/inspect.js';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import { freePort, kernelSkipReason, meshctl, startAgent, testCgroup, type TestCgroup } from '../lib/kernel.js';
import { Lab, testLab } from '../lib/lab.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

interface HttpBackend { port: number; server: Server; seen: { path: string; headers: IncomingHttpHeaders; peer: string }[] }

/** An HTTP backend on 127.0.0.1 in the host namespace, answering 'backend' and remembering what it was asked. */
async function httpBackend(t: Test, host = '127.0.0.1'): Promise<HttpBackend> {
  const b: HttpBackend = { port: 0, server: undefined as unknown as Server, seen: [] };
  b.server = createServer((req, res) => {
    b.seen.push({ path: req.url ?? '', headers: req.headers, peer: req.socket.remoteAddress ?? '' });
    req.resume();
    req.on('end', () => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('backend'); });
  });
  b.server.keepAliveTimeout = 500;
  await new Promise<void>((r) => b.server.listen(0, host, () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  t.teardown(async () => { b.server.closeAllConnections(); await new Promise((r) => b.server.close(r)); });
  return b;
}

/**
 * Two pods of a node lab (test/lib/lab.ts), each in its own namespace and cgroup; the lab's node address (on every
 * pod's host veth) is where pods reach the proxy. The IPv6 VIP is routed nowhere: a connect() the programs missed
 * fails inside the pod.
 */
async function podNamespace(t: Test, cg: TestCgroup, prefix: string) {
  const lab = await testLab(t, { meshedCgroup: cg.path, prefix, pods: [{ name: 'pod-a' }, { name: 'pod-b' }] });
  const a = lab.pod('pod-a');
  return { ns: a.ns, hostAddr: lab.nodeV4, podAddr: a.v4!, hostAddr6: lab.nodeV6, podAddr6: a.v6!, vip6: Lab.vip6(1), a, b: lab.pod('pod-b') };
}

interface Answer { status?: number; headers?: IncomingHttpHeaders; body?: string; error?: string; local?: string; usPerRequest?: number }

// One HTTP GET from inside the pod; prints the answer (or the socket error's code) as JSON, with the client's address.
// With a count, that many more GETs one after the other on one kept-alive connection, timed.
const CLIENT = `
const http = require('http');
const [host, port, path, count] = [process.argv[1], Number(process.argv[2]), process.argv[3], Number(process.argv[4] || 0)];
const agent = count ? new http.Agent({ keepAlive: true, maxSockets: 1 }) : false;
let local = '';
const one = (done) => {
  const req = http.get({ host, port, path, agent, timeout: 5000 }, (res) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (d) => { body += d; });
    res.on('end', () => done({ status: res.statusCode, headers: res.headers, body, local }));
  });
  req.on('socket', (s) => { if (s.localAddress) local = s.localAddress; else s.on('connect', () => { local = s.localAddress; }); });
  req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
  req.on('error', (e) => { console.log(JSON.stringify({ error: e.code || e.message, local })); process.exit(0); });
};
one((first) => {
  if (!count) { console.log(JSON.stringify(first)); return; }
  let left = count;
  const t0 = process.hrtime.bigint();
  const next = () => one(() => {
    if (--left > 0) return next();
    first.usPerRequest = Number(process.hrtime.bigint() - t0) / 1000 / count;
    console.log(JSON.stringify(first));
    agent.destroy();
  });
  next();
});
`;

/**
 * Run the client in cgroup `cgroupDir` (joined first) and in the pod's namespace (nsenter --net, never `ip netns exec`:
 * it remounts /sys). Asynchronous: the backend answering it lives in this process. Bounded in time.
 */
function podGet(pod: { ns: string } | null, cgroupDir: string, host: string, port: number, path: string, count = 0): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const enter = pod ? `nsenter --net=/run/netns/${pod.ns} ` : ''; // null: the host's (the proxy's) namespace
    const p = spawn('/bin/sh', ['-c', `echo $$ > '${cgroupDir}/cgroup.procs' && exec ${enter}"$@"`,
      'sh', process.execPath, '-e', CLIENT, host, String(port), path, String(count)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), 15000);
    p.on('close', (code) => {
      clearTimeout(timer);
      try { resolve(JSON.parse(out.trim()) as Answer); } catch { reject(new Error(`pod client exited ${code}: ${out.trim()} ${err.trim()}`)); }
    });
  });
}

/** A cgroup's path as the config names it: from the cgroup2 mount. */
const cgroupRel = (dir: string): string => dir.slice(cgroup2Root()!.length);

function config(podA: string, backendPort: number, v6?: { vip: string; backendPort: number }): string {
  return `
workloads:
  - name: pod-a
    cgroups: [${cgroupRel(podA)}]
services:
  - name: web
    vips: [127.89.0.1]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${backendPort} }]
    http:
      failMode: closed
      routes:
        - name: web-all
          requestHeaders: { set: { x-via: web }, remove: [] }
          responseHeaders: { set: { x-mesh-route: web-all } }
  - name: secure
    vips: [127.89.0.2]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${backendPort} }]
    http:
      failMode: closed
      routes:
        - name: secure-all
          responseHeaders: { set: { x-mesh-route: secure-all } }
      authz:
        default: deny
        rules:
          - { name: pod-a-only, action: allow, from: [pod-a] }
${v6 ? `  - name: web6
    vips: ['${v6.vip}']
    ports: [{ port: 80 }]
    backends: [{ address: '::1', port: ${v6.backendPort} }]
    http:
      failMode: closed
      routes:
        - name: web6-all
          responseHeaders: { set: { x-mesh-route: web6-all } }
` : ''}`;
}

t.test('a client in a pod network namespace reaches the proxy on its node address', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'podns');
  const pod = await podNamespace(t, cg, 'l7podns');
  const backend = await httpBackend(t);
  const backend6 = await httpBackend(t, '::1');
  const podA = pod.a.cgroup, podB = pod.b.cgroup;
  const proxyPort = await freePort();
  // The agent inside the meshed cgroup (as a DaemonSet pod): its accepted sockets get sock_ops, so this also shows the
  // pod's leg to the node address on the fast path (keys without the netns for addresses other than loopback).
  const agent = await startAgent(t, cg, {
    config: config(podA, backend.port, { vip: pod.vip6, backendPort: backend6.port }), inCgroup: cg.child('agent'),
    extraArgs: ['--proxy-node-address', `${pod.hostAddr},${pod.hostAddr6}`, '--proxy-port', String(proxyPort)],
  });
  await agent.waitLog((l) => l.msg === 'L7 proxy listening');
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());

  t.test('the kernel knows the node address', async (t) => {
    const px = reader.proxy();
    t.equal(px?.nodeV4, pod.hostAddr, 'sm_proxy.node_v4');
    t.equal(px?.nodeV6, pod.hostAddr6, 'sm_proxy.node_v6');
    t.equal(px?.v4, '127.0.0.1', 'the loopback listener stays for clients in the proxy\'s namespace');
    t.match(meshctl(agent, ['status']).stdout, new RegExp(`l7 proxy .* pods via ${pod.hostAddr.replace(/\./g, '\\.')}:${proxyPort}`),
      'meshctl status says where pods reach the proxy');
  });

  t.test('GET to a VIP from the pod goes through the proxy to the backend', async (t) => {
    const before = reader.stats(new Map()).global;
    const r = await podGet(pod, podA, '127.89.0.1', 80, '/hello');
    t.equal(r.error, undefined, 'no socket error');
    t.equal(r.status, 200);
    t.equal(r.body, 'backend');
    t.equal(r.headers?.['x-mesh-route'], 'web-all', 'response header set by the route of the service the VIP names');
    t.equal(r.local, pod.podAddr, 'the client spoke from its pod address');
    const seen = backend.seen.at(-1);
    t.equal(seen?.path, '/hello');
    t.equal(seen?.headers['x-via'], 'web', 'request header set by the route');
    t.equal(seen?.peer, '127.0.0.1', 'the backend was reached by the proxy from the host namespace');
    const after = reader.stats(new Map()).global;
    t.equal(after.l7_redirect! - before.l7_redirect!, 1, 'one redirect');
    t.equal(after.l7_handoff! - before.l7_handoff!, 1, 'one hand-over to the pod address');
    t.equal(after.l7_fail_closed! - before.l7_fail_closed!, 0, 'not refused');
  });

  t.test('IPv6: a v6 VIP from the pod goes to the proxy\'s v6 node address', async (t) => {
    const before = reader.stats(new Map()).global;
    const r = await podGet(pod, podA, pod.vip6, 80, '/six');
    t.equal(r.error, undefined, 'no socket error');
    t.equal(r.status, 200);
    t.equal(r.headers?.['x-mesh-route'], 'web6-all', 'the route of the v6 service');
    t.equal(r.local, pod.podAddr6, 'the client spoke from its pod v6 address');
    t.equal(backend6.seen.at(-1)?.path, '/six', 'the v6 backend answered');
    const after = reader.stats(new Map()).global;
    t.equal(after.l7_handoff! - before.l7_handoff!, 1, 'one hand-over to the pod v6 address');
  });

  t.test('the proxy takes the original destination from the hand-over: a second VIP is another service', async (t) => {
    const r = await podGet(pod, podA, '127.89.0.2', 80, '/x');
    t.equal(r.status, 200);
    t.equal(r.headers?.['x-mesh-route'], 'secure-all', 'the route of service secure, not web');
  });

  t.test('authorization sees the client\'s cgroup: pod-a allowed, pod-b denied', async (t) => {
    const a = await podGet(pod, podA, '127.89.0.2', 80, '/private');
    t.equal(a.status, 200, 'pod-a is the workload the rule allows');
    const n = backend.seen.length;
    const b = await podGet(pod.b, podB, '127.89.0.2', 80, '/private');
    t.equal(b.status, 403, 'pod-b is in no workload: default deny');
    t.equal(backend.seen.length, n, 'the denied request never reached the backend');
  });

  t.test('the pod\'s leg to the node address is on the fast path: both ends in the SOCKHASH (the proxy runs in the mesh)', async (t) => {
    // A kept-alive connection would be needed to look while it lives: sock_ops inserts at ESTABLISHED, and the entry
    // goes with the socket. Open one from the pod and look during it.
    const script = `const s=require('net').connect(80,'127.89.0.1');s.on('connect',()=>{console.log('up');setTimeout(()=>process.exit(0),1500)});` +
      `s.on('error',e=>{console.log(e.code);process.exit(0)})`;
    const p = spawn('/bin/sh', ['-c', `echo $$ > '${podA}/cgroup.procs' && exec nsenter --net=/run/netns/${pod.ns} "$@"`,
      'sh', process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    const timer = setTimeout(() => p.kill('SIGKILL'), 15000);
    const up = await new Promise<string>((r) => p.stdout.once('data', (d: Buffer) => r(d.toString().trim())));
    t.equal(up, 'up', 'connected');
    const socks = reader.sockets();
    // Keys without the netns for addresses other than loopback: the pod's end and the proxy's (in the node's netns)
    // mirror each other and pair.
    t.ok(socks.some((s) => s.remote.includes(`${pod.hostAddr}:${proxyPort}`) && s.netnsCookie === '0'), 'the client socket to the node address');
    t.ok(socks.some((s) => s.local.includes(`${pod.hostAddr}:${proxyPort}`) && s.netnsCookie === '0'), 'the accepted socket on the node address');
    await new Promise((r) => p.on('close', r));
    clearTimeout(timer);
  });

  t.test('latency through the proxy: a pod client (veth, node address) and a host client (loopback)', async (t) => {
    // Reported, not asserted (a shared, loaded machine): 300 sequential GETs on one kept-alive connection each.
    const pod1 = await podGet(pod, podA, '127.89.0.1', 80, '/lat', 300);
    const host1 = await podGet(null, podA, '127.89.0.1', 80, '/lat', 300);
    t.equal(pod1.status, 200, 'pod client served');
    t.equal(host1.status, 200, 'host client served');
    t.equal(pod1.local, pod.podAddr, 'from the pod address');
    t.equal(host1.local, '127.0.0.1', 'from loopback');
    t.comment(`µs per request: pod via node address ${pod1.usPerRequest?.toFixed(0)}, host via loopback ${host1.usPerRequest?.toFixed(0)}`);
  });

  t.test('a connection to the node address without a hand-over gets no service', async (t) => {
    // Anything that routes to the node address can connect; with no entry in the kernel the proxy answers 421 and closes.
    const before = backend.seen.length;
    const r = await podGet(pod, cg.original, pod.hostAddr, proxyPort, '/');
    t.equal(r.status, 421, `421 Misdirected Request (got ${JSON.stringify(r)})`);
    t.equal(backend.seen.length, before, 'nothing reached the backend');
  });
});

t.test('without --proxy-node-address: the node address the pods route to is found, and followed', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'podns-auto');
  const pod = await podNamespace(t, cg, 'l7podnsauto');
  const backend = await httpBackend(t);
  const backend6 = await httpBackend(t, '::1');
  const proxyPort = await freePort();
  const agent = await startAgent(t, cg, {
    config: config(pod.a.cgroup, backend.port, { vip: pod.vip6, backendPort: backend6.port }), inCgroup: cg.child('agent'),
    extraArgs: ['--proxy-port', String(proxyPort)],
  });
  await agent.waitLog((l) => l.msg === 'L7 proxy listening');
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  // no process in any pod yet: no pod's routes to read
  t.equal(reader.proxy()?.nodeV4, null, 'no pod running: no node address in the kernel');
  // a pod starts (a process in pod-b's cgroup and namespace): its routes name the node address within a second or so
  const sleeper = pod.b.spawn('sleep', ['60']);
  t.teardown(() => { sleeper.kill('SIGKILL'); });
  const started = Date.now();
  while (reader.proxy()?.nodeV4 !== pod.hostAddr && Date.now() - started < 5000) await new Promise((r) => setTimeout(r, 50));
  const px = reader.proxy();
  t.equal(px?.nodeV4, pod.hostAddr, `sm_proxy.node_v4: the pods' gateway (after ${Date.now() - started} ms)`);
  t.equal(px?.nodeV6, pod.hostAddr6, 'sm_proxy.node_v6');
  t.ok(px?.alive, 'the heartbeat kept: the proxy is alive');
  t.ok(agent.logs.some((l) => l.msg === 'L7 proxy: clients in pods are sent to the node address their routes use'), 'logged');
  t.match(meshctl(agent, ['status']).stdout, new RegExp(`l7 proxy .* pods via ${pod.hostAddr.replace(/\./g, '\\.')}:${proxyPort}`),
    'meshctl status says where pods reach the proxy');

  const before = reader.stats(new Map()).global;
  const r = await podGet(pod, pod.a.cgroup, '127.89.0.1', 80, '/auto');
  t.equal(r.error, undefined, 'no socket error');
  t.equal(r.status, 200);
  t.equal(r.headers?.['x-mesh-route'], 'web-all', 'through the proxy: the route of the service');
  t.equal(r.local, pod.podAddr, 'from the pod address');
  t.equal(backend.seen.at(-1)?.path, '/auto');
  const r6 = await podGet(pod, pod.a.cgroup, pod.vip6, 80, '/auto6');
  t.equal(r6.status, 200, 'IPv6 too');
  t.equal(r6.headers?.['x-mesh-route'], 'web6-all');
  const after = reader.stats(new Map()).global;
  t.equal(after.l7_handoff! - before.l7_handoff!, 2, 'two hand-overs to pod addresses');
  t.equal(after.l7_fail_closed! - before.l7_fail_closed!, 0, 'none refused');
  // authorization still sees the client's cgroup
  t.equal((await podGet(pod.b, pod.b.cgroup, '127.89.0.2', 80, '/private')).status, 403, 'pod-b denied by the workload rule');
});
