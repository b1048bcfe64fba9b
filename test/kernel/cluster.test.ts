// The multi-node lab (lab/cluster.ts, issue 13): three node namespaces routed to each other, each with its own pods;
// a pod on one node reaches pods on the others by their own addresses (IPv4 and IPv6, no NAT: the server sees the
// client pod's address), and one real agent runs per node, in that node's namespace and its own cgroup, meshing only
// that node's pods cgroup, pinning in its own bpffs directory and answering on its own admin socket. Everything goes
// away at down(), and the machine's own namespace never sees a link, route or address of the cluster.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { kernelSkipReason, meshctl, testCgroup } from '../lib/kernel.js';
import { Cluster, startNodeAgent, testCluster } from '../lib/cluster.js';
import { Lab, type LabPod } from '../lib/lab.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);
const noV6 = skip || Lab.v6PodToPod ? false : 'no per-interface IPv6 forwarding (force_forwarding, 6.17+) on this kernel';

// A TCP server in a pod (dual-stack on ::): answers each connection with "<name> <peer address>" and closes.
const SERVE = `import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', 9090)); s.listen(64)
print('ready', flush=True)
while True:
    c, a = s.accept(); p = a[0][7:] if a[0].startswith('::ffff:') else a[0]
    c.sendall(f'{sys.argv[1]} {p}'.encode()); c.close()`;
const CONNECT = `import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print(s.recv(200).decode())
except OSError as e:
    print('error', e.strerror or e)`;

async function serve(pod: LabPod): Promise<void> {
  const p = pod.spawn('python3', ['-c', SERVE, pod.name]);
  await new Promise((res, rej) => { p.stdout!.once('data', res); p.once('exit', (c) => rej(new Error(`server in ${pod.name} exited ${c}`))); });
}
const ask = async (from: LabPod, host: string, port = 9090): Promise<string> =>
  (await from.exec('python3', ['-c', CONNECT, host, String(port)], { timeoutMs: 10_000 })).stdout.trim();
const netnsIno = (path: string): number => statSync(path).ino;

t.test('three nodes, routed to each other, one agent each', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'cluster');
  const c = await testCluster(t, cg, {
    prefix: 'clustertest',
    nodes: [{ name: 'n1', pods: [{ name: 'a' }] }, { name: 'n2', pods: [{ name: 'b' }] }, { name: 'n3', pods: [{ name: 'c' }] }],
  });
  const [n1, n2, n3] = c.nodes as [typeof c.nodes[0], typeof c.nodes[0], typeof c.nodes[0]];
  const a = n1.lab.pod('a'), b = n2.lab.pod('b'), cc = n3.lab.pod('c');
  t.not(n1.nodeV4, n2.nodeV4, 'each node has an address of its own');
  t.equal(c.nodeOf(b.v4!)?.name, 'n2', 'a pod address names its node');
  const host = ['link', 'route', 'addr'].map((w) => spawnSync('ip', ['-o', w, 'show'], { encoding: 'utf8' }).stdout).join('\n');
  for (const n of c.nodes) t.notOk(host.includes(`${n.nodeV4}/`) || host.includes(`smc${n.lab.state.slot}to`), `the machine's namespace has nothing of node ${n.name}`);

  await serve(b);
  await serve(cc);
  t.equal(await ask(a, b.v4!), `b ${a.v4}`, 'pod a (n1) reaches pod b (n2) over IPv4, with its own address');
  t.equal(await ask(a, cc.v4!), `c ${a.v4}`, 'pod a (n1) reaches pod c (n3)');
  t.equal(await ask(b, cc.v4!), `c ${b.v4}`, 'pod b (n2) reaches pod c (n3)');
  if (!noV6) t.equal(await ask(a, b.v6!), `b ${a.v6}`, 'pod a (n1) reaches pod b (n2) over IPv6');
  t.match(await ask(a, '198.18.250.1'), /^error/, 'a range no node owns is not routed anywhere');

  // One agent per node: each meshes its node's pods cgroup; the VIP's backend is a pod on another node.
  const config = (backend: LabPod): string => `
services:
  - name: web
    vips: [${Lab.vip4(1)}]
    ports: [{ port: 80 }]
    backends: [{ address: "${backend.v4}", port: 9090 }]
`;
  const agents = [await startNodeAgent(t, n1, { config: config(b) }), await startNodeAgent(t, n2, { config: config(cc) }),
    await startNodeAgent(t, n3, { config: config(b) })];
  for (const [i, n] of c.nodes.entries()) {
    const ag = agents[i]!;
    const pid = ag.proc.pid!;
    t.ok(readFileSync(join(n.agentCgroup, 'cgroup.procs'), 'utf8').split('\n').includes(String(pid)), `agent ${n.name} runs in its own cgroup`);
    t.equal(netnsIno(`/proc/${pid}/ns/net`), netnsIno(`/run/netns/${n.netns}`), `agent ${n.name} runs in its node's namespace`);
    t.ok(existsSync(n.adminSocket), `agent ${n.name} answers on its own admin socket`);
    const st = JSON.parse(meshctl(ag, ['status', '--json']).stdout) as { agent: { pid: number }; kernel: { cgroup: string; bpffs: string } };
    t.same([st.agent.pid, st.kernel.cgroup, st.kernel.bpffs], [pid, n.meshedCgroup, n.bpffs], `agent ${n.name}: its cgroup and bpffs`);
    t.ok(readdirSync(n.bpffs).length > 0, `agent ${n.name} pinned in ${n.bpffs}`);
  }
  t.equal(await ask(a, Lab.vip4(1), 80), `b ${a.v4}`, 'n1\'s agent balances its pod\'s VIP to a pod on n2');
  t.equal(await ask(b, Lab.vip4(1), 80), `c ${b.v4}`, 'n2\'s agent balances its pod\'s VIP to a pod on n3');

  for (const ag of agents) await ag.kill();
  await c.down();
  t.same(c.leftovers(), [], 'nothing of the cluster is left (namespaces, links, cgroups, pins, run directories, state)');
  t.same(Cluster.attach('clustertest'), null, 'no state file');
  t.notMatch(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout, /sockmesh-lab-clustertest/, 'no namespace of the cluster');
});

t.test('a cluster that fails half-way is removed', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'clusterfail');
  // the second node's pod name is refused after the first node is up: up() must remove the first one
  await t.rejects(Cluster.up({ prefix: 'clusterfail', cgroupRoot: cg.path, nodes: [{ name: 'n1', pods: [{ name: 'a' }] }, { name: 'n2', pods: [{ name: 'Bad!' }] }] }),
    /pod name Bad!/);
  t.notMatch(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout, /sockmesh-lab-clusterfail/, 'no namespace left');
  t.same(readdirSync(cg.path).filter((d) => !d.startsWith('cgroup.') && !/^(cpu|io|memory|pids)\./.test(d)), [], 'no cgroup left');
  t.same(Cluster.attach('clusterfail'), null, 'no state file');
  await t.rejects(Cluster.up({ prefix: 'clusterfail', cgroupRoot: cg.path, nodes: [{ name: 'n1', pods: [] }] }), /2 or 3 nodes/);
});
