// The node lab with a node network namespace of its own (nodeNetns), as the pods bench builds it: pods reach each
// other through the node's namespace, anything added "on the node" (kube-proxy's iptables rules and the conntrack
// they switch on) stays there, the machine's own namespace never sees a veth, route or rule of the lab, and down()
// removes the node's namespace with all of it.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { kernelSkipReason, testCgroup } from '../lib/kernel.js';
import { Lab, testLab } from '../lib/lab.js';

const skip = kernelSkipReason() ?? (spawnSync('sh', ['-c', 'command -v iptables']).status === 0 ? null : 'iptables is not installed');
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const sh = (argv: [string, string[]]): { code: number | null; out: string } => {
  const r = spawnSync(argv[0], argv[1], { encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, out: (r.stdout ?? '') + (r.stderr ?? '') };
};
const hostView = (): string => ['link', 'route', 'addr'].map((w) => sh(['ip', ['-o', w, 'show']]).out).join('\n');

// A one-shot TCP server in a pod and a client in another: the client prints what the server wrote.
const SERVE = `import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 9090)); s.listen(1)
print('ready', flush=True); c, a = s.accept(); c.sendall(('hello ' + a[0]).encode()); c.close()`;
const CONNECT = `import socket, sys
s = socket.create_connection((sys.argv[1], 9090), timeout=5); print(s.recv(100).decode())`;

t.test('a lab whose node is a network namespace of its own', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'labnode');
  const lab = await testLab(t, {
    meshedCgroup: cg.path, prefix: 'labnodetest', nodeNetns: true,
    pods: [{ name: 'a', v6: false }, { name: 'b', v6: false }, { name: 'h', hostNetwork: true, v6: false }],
  });
  t.equal(lab.nodeNs, 'sockmesh-lab-labnodetest--node');
  const a = lab.pod('a'), b = lab.pod('b');
  const host = hostView();
  t.notMatch(host, new RegExp(`smlab${lab.state.slot}p|198\\.18\\.${lab.state.slot}\\.|${lab.nodeV4.replace(/\./g, '\\.')}`),
    'the machine\'s namespace has no veth, route or address of the lab');
  const inNode = sh(lab.onNode(['ip', '-o', 'addr', 'show']));
  t.match(inNode.out, `${lab.nodeV4}/32`, 'the node address is in the node\'s namespace');
  t.match(sh(lab.pod('h').argv('ip', ['-o', 'addr', 'show'])).out, `${lab.nodeV4}/32`, 'a hostNetwork pod runs in the node\'s namespace');

  const server = b.spawn('python3', ['-c', SERVE, b.v4!]);
  await new Promise((res, rej) => { server.stdout!.once('data', res); server.once('exit', rej); });
  const got = await a.exec('python3', ['-c', CONNECT, b.v4!], { timeoutMs: 10_000 });
  t.equal(got.stdout.trim(), `hello ${a.v4}`, 'pod a reaches pod b through the node\'s namespace, with its own address');

  // kube-proxy "on the node": a rule and the conntrack it brings, only there
  const rule = ['-t', 'nat', '-A', 'OUTPUT', '-d', `${Lab.vip4(9)}/32`, '-p', 'tcp', '-j', 'DNAT', '--to-destination', `${b.v4}:9090`];
  t.equal(sh(lab.onNode(['iptables', ...rule])).code, 0, 'iptables in the node\'s namespace');
  t.match(sh(lab.onNode(['iptables', '-t', 'nat', '-S', 'OUTPUT'])).out, Lab.vip4(9), 'the rule is on the node');
  // (the machine's own tables are not even listed: on a legacy iptables that could instantiate them)

  await lab.down();
  t.same(lab.leftovers(), [], 'nothing left, the node\'s namespace included');
  t.notMatch(sh(['ip', ['netns', 'list']]).out, /sockmesh-lab-labnodetest/, 'no namespace of the lab');
  t.same(Lab.attach('labnodetest'), null, 'no state file');
});
