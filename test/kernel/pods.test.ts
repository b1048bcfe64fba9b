// Pods on the node lab (test/lib/lab.ts): connect-time balancing from a pod's own network namespace and cgroup to
// backends that are other pods, through VIPs routed nowhere. Real agent, real programs, real namespaces and veths.
import t from 'tap';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { MapReader } from '../../agent/datapath/inspect.js';
import { freePort, kernelSkipReason, ROOT, startAgent, testCgroup } from '../lib/kernel.js';
import { Lab, testLab, type LabPod } from '../lib/lab.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);
const noV6 = skip || Lab.v6PodToPod ? false : 'this kernel has no per-interface IPv6 forwarding (force_forwarding, 6.17+): no IPv6 between pods';

const TCP_PORT = 8080, UDP_PORT = 5353;

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

async function ask(pod: LabPod, proto: 'tcp' | 'udp', host: string, port: number, n = 1): Promise<Reply[]> {
  const r = await pod.exec('python3', ['-c', CLIENT, proto, host, String(port), String(n)], { timeoutMs: 20_000 });
  if (r.code !== 0) throw new Error(`client in ${pod.name} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Reply);
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
    pods: [{ name: 'client' }, { name: 'client2' }, { name: 'server1' }, { name: 'server2' }, { name: 'host', hostNetwork: true }],
  });
  const [client, client2, s1, s2, host] = ['client', 'client2', 'server1', 'server2', 'host'].map((n) => lab.pod(n)) as
    [LabPod, LabPod, LabPod, LabPod, LabPod];
  for (const s of [s1, s2]) await startServer(s);
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
      // Issue 11: the fast path does not know pods yet. Reported, not asserted: the next step turns these on.
      t.comment(`pod -> pod via VIP: sock_insert +${after.sock_insert! - before.sock_insert!}, redirect +${after.redirect! - before.redirect!}`);
    });
  }

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
    t.comment(`pod -> hostNetwork via VIP: sock_insert +${after.sock_insert! - before.sock_insert!}, redirect +${after.redirect! - before.redirect!}`);
  });

  t.test('hostNetwork -> pod: a VIP whose backends are pods, from the node\'s namespace', async (t) => {
    const rs = await ask(host, 'tcp', Lab.vip4(1), 80, 20);
    t.same(rs.filter((r) => r.error), [], 'no connection failed');
    t.same(answeredBy(rs), ['server1', 'server2'], 'both server pods answer');
    t.ok(rs.every((r) => r.peer === Lab.vip4(1)), 'getpeername() is the VIP');
    t.ok(rs.every((r) => r.answer?.split(' ')[1] === lab.nodeV4), `the servers saw the node address ${lab.nodeV4}`);
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
