// meshctl on the node lab: `sockets` and `services` name pods (their cgroup below the meshed one, found from its
// processes: agent/identity/podns.ts) and show which connections are on the fast path, from the agent and from the pins;
// `exec --pod NAME` runs a program in a pod's cgroup and network namespace, and refuses an unknown pod by name.
import t, { type Test } from 'tap';
import { statSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { Lab, testLab, type LabPod } from '../lib/lab.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const PORT = 8080;
// An echo server that keeps its connections.
const SERVER = `
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
print('ready', flush=True)
def echo(c):
    for d in iter(lambda: c.recv(100), b''): c.sendall(d)
while True:
    c, a = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
`;
// A client that connects, exchanges one message and holds the connection.
const CLIENT = `
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); c.sendall(b'hi'); c.recv(10)
print('connected', flush=True); time.sleep(120)
`;

function started(p: ChildProcess, what: string): Promise<void> {
  let err = '';
  p.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  return new Promise((res, rej) => {
    p.stdout!.once('data', () => res());
    p.once('exit', (code) => rej(new Error(`${what} exited ${code}: ${err.trim()}`)));
  });
}

interface Sock { local: string; remote: string; pod?: string; peerPod?: string; active: boolean; tcpOnly: boolean }
interface Backend { address: string; port: number; pod?: string; fastPath?: number }
interface Frontend { service: string; backends: Backend[] }

t.test('meshctl names pods and shows the fast path; exec --pod', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'mctlpods');
  const lab = await testLab(t, { meshedCgroup: cg.path, prefix: 'mctlpods', pods: [{ name: 'pod-a' }, { name: 'pod-b' }, { name: 'pod-c' }] });
  const [a, b] = ['pod-a', 'pod-b'].map((n) => lab.pod(n)) as [LabPod, LabPod];
  const procs: ChildProcess[] = [];
  t.teardown(() => { for (const p of procs) p.kill('SIGKILL'); });
  const spawnIn = async (pod: LabPod, code: string, args: string[]): Promise<void> => {
    const p = pod.spawn('python3', ['-c', code, ...args]);
    procs.push(p);
    await started(p, `${code === SERVER ? 'server' : 'client'} in ${pod.name}`);
  };
  await spawnIn(a, SERVER, ['127.0.0.1', String(PORT)]);
  await spawnIn(b, SERVER, [b.v4!, String(PORT)]);
  const agent = await startAgent(t, cg, {
    config: `services:
  - name: inpod
    vips: [127.77.9.1]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${PORT} }]
  - name: podb
    vips: [${Lab.vip4(1)}]
    ports: [{ port: 80 }]
    backends: [{ address: ${b.v4}, port: ${PORT} }]
`,
  });
  // a client in pod-a to its own server through a VIP (loopback in the pod: both ends on the fast path), and one to
  // pod-b's server (pod to pod: named by address)
  await spawnIn(a, CLIENT, ['127.77.9.1', '80']);
  await spawnIn(a, CLIENT, [Lab.vip4(1), '80']);
  const A = 'kubepods-mctlpods/pod-a', B = 'kubepods-mctlpods/pod-b';

  const check = (t: Test, from: string): void => {
    const s = meshctl(agent, ['sockets', '--json']);
    t.equal(s.code, 0, s.stderr);
    const socks = JSON.parse(s.stdout) as Sock[];
    const inPod = socks.filter((x) => x.remote === `127.0.0.1:${PORT}` || x.local === `127.0.0.1:${PORT}`);
    t.equal(inPod.length, 2, `${from}: both ends of pod-a's loopback connection in the SOCKHASH`);
    t.ok(inPod.every((x) => x.pod === A && x.peerPod === A && !x.tcpOnly), `${from}: in pod-a, peer in pod-a, on the fast path`);
    const text = meshctl(agent, ['sockets']).stdout;
    t.match(text, /^LOCAL\s+REMOTE\s+POD\s+PEER\s+NETNS/m, `${from}: POD and PEER columns`);
    t.match(text, new RegExp(`127\\.0\\.0\\.1:${PORT}\\s+${A}\\s+${A}\\s.*sockmap`), `${from}: the pod by name, the path`);

    const v = meshctl(agent, ['services', '--json']);
    t.equal(v.code, 0, v.stderr);
    const fes = JSON.parse(v.stdout) as Frontend[];
    const inpod = fes.find((f) => f.service === 'inpod')!.backends[0]!;
    const podb = fes.find((f) => f.service === 'podb')!.backends[0]!;
    t.equal(inpod.fastPath, 1, `${from}: one connection to the in-pod backend on the fast path`);
    t.equal(podb.pod, B, `${from}: pod-b's backend named by its address`);
    const vt = meshctl(agent, ['services']).stdout;
    t.match(vt, /BACKEND\s+POD\s+WEIGHT.*CONNS\s+FAST PATH/, `${from}: POD and FAST PATH columns`);
    t.match(vt, new RegExp(`${b.v4!.replace(/\./g, '\\.')}:${PORT}\\s+${B}\\s`), `${from}: pod-b in its backend row`);
  };

  t.test('from the agent', async (t) => check(t, 'agent'));

  t.test('exec --pod: the pod\'s cgroup, then its network namespace', async (t) => {
    const show = ['sh', '-c', 'grep ^0:: /proc/self/cgroup; stat -L -c %i /proc/self/ns/net'];
    for (const [name, pod] of [['pod-a', a], [A, a], ['pod-c', lab.pod('pod-c')]] as [string, LabPod][]) {
      const r = meshctl(agent, ['exec', '--pod', name, '--', ...show]);
      t.equal(r.code, 0, `${name}: ${r.stderr}`);
      const [cgLine, ino] = r.stdout.trim().split('\n');
      t.ok(cgLine?.endsWith(`/kubepods-mctlpods/${pod.name}`), `${name}: in the pod's cgroup (${cgLine})`);
      t.equal(ino, String(statSync(`/run/netns/${pod.ns}`).ino), `${name}: in the pod's network namespace`);
    }
    const code = meshctl(agent, ['exec', '--pod', 'pod-b', '--', 'sh', '-c', 'exit 7']);
    t.equal(code.code, 7, 'the program\'s exit code');
    const bad = meshctl(agent, ['exec', '--pod', 'nope', '--', 'true']);
    t.equal(bad.code, 1, 'an unknown pod: exit 1');
    t.match(bad.stderr, /^meshctl: no pod 'nope' in the meshed cgroup .* \(pods: .*kubepods-mctlpods\/pod-a.*kubepods-mctlpods\/pod-b/, bad.stderr);
  });

  t.test('from the pins, the agent down', async (t) => {
    await agent.kill('SIGTERM');
    check(t, 'pins');
  });
});
