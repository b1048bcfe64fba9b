// Pods on the node lab (test/lib/lab.ts): connect-time balancing from a pod's own network namespace and cgroup to
// backends that are other pods, through VIPs routed nowhere; the sockmap fast path between pods (the agent finds the
// pods' addresses itself, from the meshed cgroup tree) and never to a peer that is not a local pod. Real agent, real
// programs, real namespaces and veths.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MapReader } from '../../agent/datapath/inspect.js';
import { inCgroupNsenter } from '../../bench/lib/netns.js';
import { freePort, kernelSkipReason, ROOT, startAgent, testCgroup } from '../lib/kernel.js';
import { Lab, testLab, type LabPod } from '../lib/lab.js';
import { POD_ECHO } from '../lib/podecho.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);
const noV6 = skip || Lab.v6PodToPod ? false : 'this kernel has no per-interface IPv6 forwarding (force_forwarding, 6.17+): no IPv6 between pods';

const TCP_PORT = 8080, UDP_PORT = 5353, ECHO_PORT = 7070, SINK_PORT = 7071;

// A server for a pod: on TCP, answers every connection with "<id> <peer address>" and closes; on UDP, answers every
// datagram with "<id> <datagram>". On :: it is dual-stack (one socket each), serving the pod's v4 and v6 address.
const SERVER = `
import socket, sys, threading
pid, addr, tport, uport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
t = socket.socket(fam); u = socket.socket(fam, socket.SOCK_DGRAM)
if fam == socket.AF_INET6:
    for x in (t, u): x.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((addr, tport)); t.listen(128)
u.bind((addr, uport))
def udp():
    while True:
        d, a = u.recvfrom(2048); u.sendto(pid.encode() + b' ' + d, a)
threading.Thread(target=udp, daemon=True).start()
print('ready', flush=True)
while True:
    c, a = t.accept()
    peer = a[0][7:] if a[0].startswith('::ffff:') else a[0]
    c.sendall(f'{pid} {peer}\\n'.encode()); c.close()
`;

// A client for a pod: n TCP connections (or UDP requests) to host:port, one JSON line each: what answered and what
// getpeername() (TCP) or recvfrom() (UDP) said the peer was; {"error": ...} for a failed one.
const CLIENT = `
import json, socket, sys
proto, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
for i in range(n):
    try:
        if proto == 'tcp':
            s = socket.socket(fam); s.settimeout(3); s.connect((host, port))
            peer = s.getpeername()[0]; data = s.recv(200).decode().strip()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(f'q{i}'.encode(), (host, port))
            d, a = s.recvfrom(2048); data = d.decode(); peer = a[0]
        s.close(); print(json.dumps({'answer': data, 'peer': peer}))
    except OSError as e:
        print(json.dumps({'error': e.strerror or str(e)}))
`;

interface Reply { answer?: string; peer?: string; error?: string }

// The setup race (DESIGN.md): n connections, each writing many small pieces (one send() each) the moment connect()
// returns, then half-closing and reading the echo back. One JSON line: connections whose echo was byte-exact.
const RACE = `
import json, socket, sys
host, port, n, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
exact, total = 0, 0
for r in range(n):
    s = socket.socket(fam); s.settimeout(10); s.connect((host, port))
    want = b''.join(f'{r}:{i};'.encode() for i in range(parts))
    for i in range(parts): s.send(f'{r}:{i};'.encode())
    s.shutdown(socket.SHUT_WR)
    got = b''
    while True:
        d = s.recv(65536)
        if not d: break
        got += d
    s.close(); total += len(want)
    exact += got == want
print(json.dumps({'exact': exact, 'bytes': total}))
`;

// A one-way stream: the sink reads until the client half-closes, then answers the sha256 of what it got; the client
// sends 8 MiB in 64 KiB writes (a bulk stream by the fast path's rule, were it loopback) and prints both digests.
const SINK = `
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', int(sys.argv[1]))); s.listen(16)
print('ready', flush=True)
while True:
    c, a = s.accept(); h = hashlib.sha256()
    while True:
        d = c.recv(262144)
        if not d: break
        h.update(d)
    c.sendall(h.hexdigest().encode()); c.close()
`;
const STREAM = `
import hashlib, json, os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET); s.settimeout(30); s.connect((host, port))
h = hashlib.sha256()
for i in range(128):
    b = os.urandom(65536); h.update(b); s.sendall(b)
s.shutdown(socket.SHUT_WR)
got = b''
while True:
    d = s.recv(256)
    if not d: break
    got += d
print(json.dumps({'sent': h.hexdigest(), 'got': got.decode()}))
`;

async function race(pod: LabPod, host: string, port: number, n: number, parts: number): Promise<{ exact: number; bytes: number }> {
  const r = await pod.exec('python3', ['-c', RACE, host, String(port), String(n), String(parts)], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`race client in ${pod.name} exited ${r.code}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as { exact: number; bytes: number };
}

/**
 * The lines a process prints, kept from its start (a line printed while nobody waits is not lost): line() resolves
 * with the first line not taken yet that matches, within ms.
 */
function lineOf(p: ChildProcess, match: RegExp | string, ms = 10_000): Promise<string> {
  const st = linesOf(p);
  return new Promise((resolve, reject) => {
    const take = (): boolean => {
      const i = st.lines.findIndex((l) => (typeof match === 'string' ? l === match : match.test(l)));
      if (i < 0) return false;
      const [hit] = st.lines.splice(i, 1);
      done(null, hit);
      return true;
    };
    const timer = setTimeout(() => done(new Error(`no line ${match} in ${ms} ms: ${st.lines.join('|')} ${st.err}`)), ms);
    const onExit = (): void => { if (!take()) done(new Error(`exited before ${match}: ${st.lines.join('|')} ${st.err}`)); };
    const done = (e: Error | null, line?: string): void => {
      clearTimeout(timer);
      st.waiters.delete(take);
      p.off('exit', onExit);
      if (e) reject(e); else resolve(line!);
    };
    if (take()) return;
    st.waiters.add(take);
    p.once('exit', onExit);
  });
}

const withLines = (p: ChildProcess): ChildProcess => { linesOf(p); return p; };

interface LineState { lines: string[]; err: string; waiters: Set<() => boolean> }
const lineStates = new WeakMap<ChildProcess, LineState>();
function linesOf(p: ChildProcess): LineState {
  let st = lineStates.get(p);
  if (st) return st;
  const state: LineState = { lines: [], err: '', waiters: new Set() };
  let buf = '';
  p.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    const ls = buf.split('\n');
    buf = ls.pop()!;
    state.lines.push(...ls);
    for (const w of [...state.waiters]) w();
  });
  p.stderr!.on('data', (d: Buffer) => { state.err += d.toString(); });
  lineStates.set(p, state);
  return (st = state);
}

/** ms until cond() holds (polled every 20 ms), or -1 after limitMs. */
async function within(cond: () => boolean, limitMs: number): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (cond()) return performance.now() - t0;
    if (performance.now() - t0 > limitMs) return -1;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function ask(pod: LabPod, proto: 'tcp' | 'udp', host: string, port: number, n = 1): Promise<Reply[]> {
  const r = await pod.exec('python3', ['-c', CLIENT, proto, host, String(port), String(n)], { timeoutMs: 20_000 });
  if (r.code !== 0) throw new Error(`client in ${pod.name} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Reply);
}

async function startEcho(pod: LabPod): Promise<ChildProcess> {
  const p = pod.spawn('python3', ['-c', POD_ECHO, String(ECHO_PORT)]);
  await lineOf(p, 'ready');
  return p;
}

function startServer(pod: LabPod, addr = '::', tcpPort = TCP_PORT, udpPort = UDP_PORT): Promise<ChildProcess> {
  const p = pod.spawn('python3', ['-c', SERVER, pod.name, addr, String(tcpPort), String(udpPort)]);
  let err = '';
  p.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  return new Promise((resolve, reject) => {
    p.stdout!.once('data', () => resolve(p));
    p.once('exit', (code) => reject(new Error(`server in ${pod.name} exited ${code}: ${err.trim()}`)));
  });
}

const answeredBy = (rs: Reply[]): string[] => [...new Set(rs.map((r) => r.answer?.split(' ')[0] ?? `error:${r.error}`))].sort();

t.test('pods: connect-time balancing from a pod to VIPs whose backends are pods', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'pods');
  const lab = await testLab(t, {
    meshedCgroup: cg.path, prefix: 'podtest',
    pods: [{ name: 'client' }, { name: 'client2' }, { name: 'server1' }, { name: 'server2' }, { name: 'host', hostNetwork: true },
      { name: 'remote' }],
  });
  const [client, client2, s1, s2, host, remote] = ['client', 'client2', 'server1', 'server2', 'host', 'remote'].map((n) => lab.pod(n)) as
    [LabPod, LabPod, LabPod, LabPod, LabPod, LabPod];
  for (const s of [s1, s2]) await startServer(s);
  await startEcho(s1);
  // Outside the mesh: processes of no meshed cgroup, in namespaces of their own (a "remote" peer: its address is no
  // local pod's, as for a pod on another node), or in a lab pod's namespace (a gone pod's process, a pod's server
  // outside the mesh).
  const limbo = testCgroup(t, 'podlimbo');
  const outside = (ns: string, script: string, args: string[]): ChildProcess => {
    const [c, a] = inCgroupNsenter(limbo.path, ns, undefined, ['python3', '-c', script, ...args]);
    const p = spawn(c, a, { stdio: 'pipe' });
    linesOf(p);
    return p;
  };
  const remoteSrv = outside(remote.ns, SERVER, ['remote', '::', String(TCP_PORT), String(UDP_PORT)]);
  await lineOf(remoteSrv, 'ready');
  // The hostNetwork pod's server shares the node's ports: free ones, on the node address only.
  const hostPort = await freePort();
  await startServer(host, lab.nodeV4, hostPort, await freePort());
  const be = (addr: string | undefined, port: number): string => `{ address: "${addr}", port: ${port} }`;
  const both = (fam: 'v4' | 'v6', port: number): string => `[${be(s1[fam], port)}, ${be(s2[fam], port)}]`;
  const agent = await startAgent(t, cg, {
    config: `
services:
  - name: web4
    vips: [${Lab.vip4(1)}]
    ports: [{ port: 80 }]
    backends: ${both('v4', TCP_PORT)}
  - name: web6
    vips: ["${Lab.vip6(1)}"]
    ports: [{ port: 80 }]
    backends: ${both('v6', TCP_PORT)}
  - name: dns4
    vips: [${Lab.vip4(2)}]
    ports: [{ port: 53, protocol: udp }]
    backends: ${both('v4', UDP_PORT)}
  - name: dns6
    vips: ["${Lab.vip6(2)}"]
    ports: [{ port: 53, protocol: udp }]
    backends: ${both('v6', UDP_PORT)}
  - name: sticky
    vips: [${Lab.vip4(3)}]
    ports: [{ port: 80 }]
    affinity: { timeoutSeconds: 60 }
    backends: ${both('v4', TCP_PORT)}
  - name: hostnet
    vips: [${Lab.vip4(4)}]
    ports: [{ port: 80 }]
    backends: [${be(lab.nodeV4, hostPort)}]
  - name: echo4
    vips: [${Lab.vip4(5)}]
    ports: [{ port: 7 }]
    backends: [${be(s1.v4, ECHO_PORT)}]
  - name: echo6
    vips: ["${Lab.vip6(5)}"]
    ports: [{ port: 7 }]
    backends: [${be(s1.v6, ECHO_PORT)}]
  - name: remote
    vips: [${Lab.vip4(6)}]
    ports: [{ port: 80 }]
    backends: [${be(remote.v4, TCP_PORT)}]
`,
  });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());

  t.test('the pods reach each other directly (the lab\'s routing, no mesh involved)', async (t) => {
    t.same(answeredBy(await ask(client, 'tcp', s1.v4!, TCP_PORT)), ['server1'], 'v4 pod IP');
  });
  t.test('the pods reach each other directly over IPv6', { skip: noV6 }, async (t) => {
    t.same(answeredBy(await ask(client, 'tcp', s2.v6!, TCP_PORT)), ['server2'], 'v6 pod IP');
  });

  for (const [fam, vip] of [['v4', Lab.vip4(1)], ['v6', Lab.vip6(1)]] as const) {
    t.test(`TCP ${fam}: a VIP from a pod reaches both server pods; getpeername() shows the VIP`, { skip: fam === 'v6' && noV6 }, async (t) => {
      const before = reader.stats().global;
      const rs = await ask(client, 'tcp', vip, 80, 40);
      t.same(rs.filter((r) => r.error), [], 'no connection failed');
      t.same(answeredBy(rs), ['server1', 'server2'], 'both backends answer (40 connections, random)');
      t.ok(rs.every((r) => r.peer === vip), `getpeername() is the VIP in the pod (${rs[0]?.peer})`);
      t.ok(rs.every((r) => r.answer?.split(' ')[1] === client[fam]), `the server saw the client pod's address ${client[fam]} (no NAT)`);
      const after = reader.stats().global;
      t.equal(after.lb_connect! - before.lb_connect!, 40, 'balanced at connect(): 40');
      // The fast path: both ends of each connection in the SOCKHASH (keys without the netns: the two ends are in
      // different namespaces), and each server's answer handed to the client socket by sk_msg.
      t.equal(after.sock_insert! - before.sock_insert!, 80, 'pod -> pod via VIP: both ends of 40 connections inserted');
      t.ok(after.redirect! - before.redirect! >= 40, `pod -> pod via VIP: answers redirected (${after.redirect! - before.redirect!})`);
      t.equal(after.redirect_miss! - before.redirect_miss!, 0, 'no send missed its peer');
    });

    t.test(`TCP ${fam}: to a pod IP directly, the same fast path`, { skip: fam === 'v6' && noV6 }, async (t) => {
      const before = reader.stats().global;
      const rs = await ask(client, 'tcp', s2[fam]!, TCP_PORT, 20);
      t.same(answeredBy(rs), ['server2'], 'server2 answers');
      const after = reader.stats().global;
      t.equal(after.lb_connect! - before.lb_connect!, 0, 'no balancing (not a VIP)');
      t.equal(after.sock_insert! - before.sock_insert!, 40, 'pod -> pod IP: both ends of 20 connections inserted');
      t.ok(after.redirect! - before.redirect! >= 20, `pod -> pod IP: answers redirected (${after.redirect! - before.redirect!})`);
    });

    t.test(`TCP ${fam}: both directions, and the setup race from pods: many small writes right after connect, byte-exact`,
      { skip: fam === 'v6' && noV6 }, async (t) => {
        for (const [what, host, port] of [['via VIP', fam === 'v4' ? Lab.vip4(5) : Lab.vip6(5), 7], ['direct', s1[fam]!, ECHO_PORT]] as const) {
          const before = reader.stats().global;
          const r = await race(client, host, port, 20, 2000);
          t.equal(r.exact, 20, `${what}: 20/20 connections echoed byte-exact (${r.bytes} bytes)`);
          const after = reader.stats().global;
          t.equal(after.sock_insert! - before.sock_insert!, 40, `${what}: both ends inserted`);
          // client -> server: 20 x 2000 sends. A connection whose first send came before the server's end was in the
          // map stays on TCP (the ordering guard); most are redirected. (Server -> client: the answers above.)
          const redirects = after.redirect! - before.redirect!;
          t.ok(redirects >= 10 * 2000, `${what}: the client's sends redirected (${redirects} redirects, tcp_only ${after.tcp_only! - before.tcp_only!})`);
        }
      });
  }

  t.test('a one-way bulk stream pod -> pod stays on the fast path (the bulk rule judges loopback connections only)', async (t) => {
    const sink = s1.spawn('python3', ['-c', SINK, String(SINK_PORT)]);
    t.teardown(() => { sink.kill('SIGKILL'); });
    await lineOf(sink, 'ready');
    const before = reader.stats().global;
    const r = await client.exec('python3', ['-c', STREAM, s1.v4!, String(SINK_PORT)], { timeoutMs: 60_000 });
    t.equal(r.code, 0, `stream client exited 0 ${r.stderr.trim()}`);
    const { sent, got } = JSON.parse(r.stdout) as { sent: string; got: string };
    t.equal(got, sent, '8 MiB arrived byte-exact (sha256)');
    const after = reader.stats().global;
    t.equal(after.bulk_leave! - before.bulk_leave!, 0, 'no socket left the fast path');
    t.ok(after.redirect! - before.redirect! >= 100, `the stream's sends were redirected (${after.redirect! - before.redirect!})`);
  });

  t.test('a peer that is not a local pod never gets the fast path (a pod on another node, as the lab shows one)', async (t) => {
    t.notOk(reader.localAddresses().includes(remote.v4!), `${remote.v4} is not in sm_local_addrs (no meshed process there)`);
    t.ok(reader.localAddresses().includes(s1.v4!), `a meshed pod's address ${s1.v4} is`);
    for (const [what, h, p] of [['pod IP', remote.v4!, TCP_PORT], ['VIP', Lab.vip4(6), 80]] as const) {
      const before = reader.stats().global;
      const rs = await ask(client, 'tcp', h, p, 10);
      t.same(answeredBy(rs), ['remote'], `${what}: the remote peer answers`);
      const after = reader.stats().global;
      t.equal(after.sock_insert! - before.sock_insert!, 0, `${what}: no socket inserted (it would pay for sk_msg on every send)`);
      t.equal(after.redirect_miss! - before.redirect_miss!, 0, `${what}: no sk_msg ran`);
    }
  });

  for (const [fam, vip] of [['v4', Lab.vip4(2)], ['v6', Lab.vip6(2)]] as const) {
    t.test(`UDP ${fam}: sendto() a VIP from a pod; recvfrom() shows the VIP`, { skip: fam === 'v6' && noV6 }, async (t) => {
      const rs = await ask(client, 'udp', vip, 53, 40);
      t.same(rs.filter((r) => r.error), [], 'every request answered');
      t.same(answeredBy(rs), ['server1', 'server2'], 'both backends answer');
      t.ok(rs.every((r) => r.peer === vip), `recvfrom() names the VIP (${rs[0]?.peer})`);
      t.ok(rs.every((r, i) => r.answer?.endsWith(` q${i}`)), 'each answer is to its own request');
    });
  }

  t.test('affinity is per pod: all connections of one pod go to one backend', async (t) => {
    for (const pod of [client, client2]) {
      const rs = await ask(pod, 'tcp', Lab.vip4(3), 80, 20);
      t.equal(answeredBy(rs).length, 1, `${pod.name}: one backend (${answeredBy(rs).join(',')})`);
    }
  });

  t.test('pod -> hostNetwork: a VIP whose backend is on the node address', async (t) => {
    const before = reader.stats().global;
    const rs = await ask(client, 'tcp', Lab.vip4(4), 80, 10);
    t.same(answeredBy(rs), ['host'], 'the hostNetwork pod answers');
    t.ok(rs.every((r) => r.peer === Lab.vip4(4)), 'getpeername() is the VIP');
    t.ok(rs.every((r) => r.answer?.split(' ')[1] === client.v4), 'the server saw the client pod\'s address');
    const after = reader.stats().global;
    t.equal(after.sock_insert! - before.sock_insert!, 20, 'pod -> hostNetwork: both ends of 10 connections inserted');
    t.ok(after.redirect! - before.redirect! >= 10, `pod -> hostNetwork: answers redirected (${after.redirect! - before.redirect!})`);
  });

  t.test('hostNetwork -> pod: a VIP whose backends are pods, from the node\'s namespace', async (t) => {
    const before = reader.stats().global;
    const rs = await ask(host, 'tcp', Lab.vip4(1), 80, 20);
    t.same(rs.filter((r) => r.error), [], 'no connection failed');
    t.same(answeredBy(rs), ['server1', 'server2'], 'both server pods answer');
    t.ok(rs.every((r) => r.peer === Lab.vip4(1)), 'getpeername() is the VIP');
    t.ok(rs.every((r) => r.answer?.split(' ')[1] === lab.nodeV4), `the servers saw the node address ${lab.nodeV4}`);
    const after = reader.stats().global;
    t.equal(after.sock_insert! - before.sock_insert!, 40, 'hostNetwork -> pod: both ends of 20 connections inserted');
    t.ok(after.redirect! - before.redirect! >= 20, `hostNetwork -> pod: answers redirected (${after.redirect! - before.redirect!})`);
  });

  t.test('a new pod is on the fast path within 1 s of its first process; a deleted pod\'s entries are gone', async (t) => {
    const late = await lab.addPod({ name: 'late' });
    // its addresses exist from addPod on; the agent sees the pod from its first process in the meshed tree on
    const t0 = performance.now();
    await startServer(late);
    const seen = await within(() => reader.localAddresses().includes(late.v4!) && (noV6 !== false || reader.localAddresses().includes(late.v6!)), 1000);
    const inMs = performance.now() - t0;
    t.ok(seen >= 0 && inMs <= 1000, `its addresses are in sm_local_addrs ${inMs.toFixed(0)} ms after its first process started (limit 1000)`);
    const before = reader.stats().global;
    t.same(answeredBy(await ask(client, 'tcp', late.v4!, TCP_PORT, 5)), ['late'], 'the new pod answers');
    const after = reader.stats().global;
    t.equal(after.sock_insert! - before.sock_insert!, 10, 'both ends of 5 connections inserted');
    t.ok(after.redirect! - before.redirect! >= 5, 'answers redirected');
    // A connection to it left open: the pod's end is in the SOCKHASH until the pod is deleted.
    const holder = client.spawn('python3', ['-c', `
import socket, sys
s = socket.socket(); s.connect(('${late.v4}', ${TCP_PORT})); print('connected', flush=True); sys.stdin.read()`]);
    await lineOf(holder, 'connected');
    t.teardown(() => { holder.kill(); });
    const mine = (): string[] => reader.sockets().map((x) => `${x.local} ${x.remote}`).filter((x) => x.includes(`${late.v4}:`) || x.includes(`[${late.v6}]:`));
    t.ok(mine().length > 0, `sockets of the pod are in the map while it runs (${mine().length})`);
    await lab.removePod('late');
    const outMs = await within(() => !reader.localAddresses().includes(late.v4!) && !reader.localAddresses().includes(late.v6!), 1000);
    t.ok(outMs >= 0, `its addresses left sm_local_addrs after ${outMs.toFixed(0)} ms (limit 1000)`);
    t.same(mine().filter((x) => x.startsWith(`${late.v4}:`)), [], 'no socket of the deleted pod is left in the SOCKHASH');
  });

  t.test('a new pod reusing a deleted pod\'s IP never pairs with a socket the deleted pod left behind', async (t) => {
    const P = 9300, X = 45123;
    const old = await lab.addPod({ name: 'old' });
    // old's server: accepts one connection and holds it; on a line, sends STALE and reports what it received
    const oldSrv = old.spawn('python3', ['-c', `
import json, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', ${P})); s.listen(1)
print('ready', flush=True)
c, _ = s.accept(); print('accepted', flush=True)
sys.stdin.readline(); c.sendall(b'STALE\\n'); print('sent', flush=True)
c.settimeout(3); got = b''
try:
    while True:
        d = c.recv(100)
        if not d: break
        got += d
except OSError: pass
print(json.dumps({'got': got.decode(errors='replace')}), flush=True)`]);
    linesOf(oldSrv);
    t.teardown(() => { oldSrv.kill('SIGKILL'); });
    await lineOf(oldSrv, 'ready');
    t.ok(await within(() => reader.localAddresses().includes(old.v4!), 1000) >= 0, 'the old pod is local');
    // the client: a connection from the fixed port X to old, closed with a reset (port X free at once) on a line
    const dial = (pre: string): ChildProcess => withLines(client.spawn('python3', ['-c', `
import json, socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', ${X}))
s.settimeout(5); s.connect(('${old.v4}', ${P})); print('connected', flush=True)
sys.stdin.readline()
${pre}`]));
    const a1 = dial(`s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); s.close(); print('closed', flush=True)`);
    await lineOf(a1, 'connected');
    await lineOf(oldSrv, 'accepted');
    const pair = reader.sockets().filter((x) => (x.local === `${old.v4}:${P}` && x.remote === `${client.v4}:${X}`) ||
      (x.local === `${client.v4}:${X}` && x.remote === `${old.v4}:${P}`));
    t.equal(pair.length, 2, 'both ends of the first connection are in the SOCKHASH');
    // The pod is deleted, but its server lives on outside it (a process the kubelet failed to kill), holding its
    // namespace and its socket, which stays in the map. The client's end goes (reset, nothing reaches old).
    writeFileSync(join(limbo.path, 'cgroup.procs'), String(oldSrv.pid));
    await lab.removePod('old');
    a1.stdin!.write('\n');
    await lineOf(a1, 'closed');
    // A new pod gets old's address. Its server runs outside the mesh (a pause-like process is in the pod's cgroup):
    // its end of a connection is never in the map, so whatever the map holds under that key stays there.
    const nw = await lab.addPod({ name: 'new' });
    t.equal(nw.v4, old.v4, `the new pod reuses ${old.v4}`);
    nw.spawn('sleep', ['60']);
    const newSrv = outside(nw.ns, `
import json, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', ${P})); s.listen(1)
print('ready', flush=True)
c, _ = s.accept(); c.settimeout(5); got = b''
try:
    while not got.endswith(b'\\n'):
        d = c.recv(100)
        if not d: break
        got += d
    c.sendall(b'fresh\\n')
except OSError: pass
print(json.dumps({'got': got.decode(errors='replace')}), flush=True)`, []);
    t.teardown(() => { newSrv.kill('SIGKILL'); });
    await lineOf(newSrv, 'ready');
    t.ok(await within(() => reader.localAddresses().includes(nw.v4!), 1000) >= 0, 'the new pod is local');
    const before = reader.stats().global;
    // the same 4-tuple as the stale socket's, mirrored: the client's key's reverse is the stale socket's key
    const a2 = dial(`s.sendall(b'hello-new\\n'); s.settimeout(3); got = b''
try:
    while not got.endswith(b'\\n'):
        d = s.recv(100)
        if not d: break
        got += d
except OSError: pass
print(json.dumps({'got': got.decode(errors='replace')}), flush=True)`);
    await lineOf(a2, 'connected');
    t.equal(reader.stats().global.stale_peer! - before.stale_peer!, 1, 'the stale socket was taken out of the map at connect');
    oldSrv.stdin!.write('\n');
    await lineOf(oldSrv, 'sent');
    a2.stdin!.write('\n');
    const got = (p: ChildProcess): Promise<string> => lineOf(p, /^\{/, 15_000).then((l) => (JSON.parse(l) as { got: string }).got);
    const [a2got, newGot, oldGot] = await Promise.all([got(a2), got(newSrv), got(oldSrv)]);
    t.equal(a2got, 'fresh\n', 'the client got the new pod\'s answer, nothing of the stale socket');
    t.equal(newGot, 'hello-new\n', 'the new pod got the client\'s bytes');
    t.equal(oldGot, '', 'the stale socket got nothing');
  });

  t.test('a VIP port the agent does not serve fails in the pod: VIPs are routed nowhere', async (t) => {
    const [r] = await ask(client, 'tcp', Lab.vip4(1), 81);
    t.match(r?.error ?? '', /unreachable/i, `connect() to an unserved VIP port: ${r?.error}`);
  });
});

t.test('the lab leaves nothing behind', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'podlab');
  const lab = await testLab(t, { meshedCgroup: cg.path, prefix: 'podtestclean', pods: [{ name: 'a' }, { name: 'b', v6: false }] });
  t.equal(lab.pod('b').v6, undefined, 'a v4-only pod');
  t.same(lab.leftovers().filter((l) => l.startsWith('netns')).length, 2, 'leftovers() sees the lab while it is up');
  const sleeper = lab.pod('a').spawn('sleep', ['60']); // a process in a pod: down() must kill it
  const gone = new Promise((r) => sleeper.once('exit', r));
  await lab.down();
  await lab.down(); // idempotent
  t.same(lab.leftovers(), [], 'no namespace, veth, route, cgroup or state file left');
  await gone;
  t.pass('the pod\'s process was killed');

  t.test('pods come and go: a removed pod leaves nothing, a new one reuses its addresses', async (t) => {
    const churn = await testLab(t, { meshedCgroup: cg.path, prefix: 'podtestchurn', pods: [{ name: 'a' }, { name: 'b' }] });
    const b = churn.pod('b');
    await startServer(b);
    await churn.removePod('b');
    t.same(churn.leftovers([b]), [], 'nothing of the removed pod left (its server was killed with it)');
    t.same(Lab.attach('podtestchurn')?.pods.map((p) => p.name), ['a'], 'the state file follows');
    const c = await churn.addPod({ name: 'c' });
    t.same([c.v4, c.v6, c.hostIf], [b.v4, b.v6, b.hostIf], 'the new pod has the removed one\'s addresses (and veth name)');
    await startServer(c);
    t.same(answeredBy(await ask(churn.pod('a'), 'tcp', c.v4!, TCP_PORT)), ['c'], 'the new pod answers on the reused v4 address');
    if (!noV6) t.same(answeredBy(await ask(churn.pod('a'), 'tcp', c.v6!, TCP_PORT)), ['c'], 'and on the reused v6 address');
  });

  t.test('npm run lab: up, status, exec, down; nothing left', async (t) => {
    const cli = (...args: string[]): { code: number | null; out: string } => {
      const r = spawnSync(process.execPath, ['--import', '@tapjs/typescript/import', 'lab/cli.ts', '--prefix', 'podtestcli', ...args],
        { cwd: ROOT, encoding: 'utf8', timeout: 30_000, env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' } });
      return { code: r.status, out: r.stdout + r.stderr };
    };
    const up = cli('up', '--cgroup', cg.path, '--pods', '2');
    t.equal(up.code, 0, 'up');
    const made = Lab.attach('podtestcli');
    t.teardown(() => made?.down());
    t.same(made?.pods.map((p) => p.name), ['pod-a', 'pod-b'], 'two pods, in the state file');
    t.match(up.out, made?.pod('pod-b').v4 ?? 'never', 'up prints the pods\' addresses');
    t.match(cli('status').out, /pod-a .*pod-b/s, 'status lists them');
    const ex = cli('exec', 'pod-a', '--', 'ip', '-br', 'addr', 'show', 'eth0');
    t.equal(ex.code, 0, 'exec');
    t.match(ex.out, `${made?.pod('pod-a').v4}/32`, 'exec runs in the pod\'s namespace');
    t.equal(cli('down').code, 0, 'down');
    t.same(made?.leftovers(), [], 'down removed everything up made');
    t.match(cli('status').out, /no lab up/, 'status says so');
  });

  t.test('a crashed lab is swept: by Lab.sweep, and by the next Lab.up of its prefix', async (t) => {
    const crashed = await Lab.up({ meshedCgroup: cg.path, prefix: 'podtestcrash', pods: [{ name: 'x' }] });
    crashed.pod('x').spawn('sleep', ['60']);
    t.ok(crashed.leftovers().length > 0, 'the first lab is up');
    // Never downed, as if its process had died: the sweep finds it from its state file.
    Lab.sweep('podtestcrash', undefined, cg.path);
    t.same(crashed.leftovers(), [], 'swept: nothing left');
    const again = await Lab.up({ meshedCgroup: cg.path, prefix: 'podtestcrash', pods: [{ name: 'x' }] });
    // The same names again: without the sweep in up(), `ip netns add` would fail on the old namespace.
    const next = await testLab(t, { meshedCgroup: cg.path, prefix: 'podtestcrash', pods: [{ name: 'x' }] });
    t.equal(next.state.slot, again.state.slot, 'the next lab of the prefix took over the swept one\'s slot and names');
    const [r] = await ask(next.pod('x'), 'tcp', next.nodeV4, 9, 1);
    t.match(r?.error ?? '', /refused/i, `the new pod reaches the node address (${r?.error})`);
  });
});
