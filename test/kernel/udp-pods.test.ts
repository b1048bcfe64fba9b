// UDP sockets of a removed backend are destroyed in the pods' network namespaces too (the agent finds them from the
// meshed cgroup tree's processes), and only those sockmesh balanced (an sm_revnat entry for that backend): a socket
// that merely talks to the same address, in the same pod or another one, is left alone. On the node lab
// (test/lib/lab.ts); the client is test/lib/udp-probe.c, which reports each call's errno.
import t from 'tap';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { Lab, testLab, type LabPod } from '../lib/lab.js';
import { compileUdpProbe, udpProbe, type Probe } from '../lib/udpprobe.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const PORT = 5353;
// A UDP server for a pod: answers every datagram with "<id>:<datagram>" (udp-probe reads the id before the colon).
const SERVER = `
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((sys.argv[2], int(sys.argv[3])))
print('ready', flush=True)
while True:
    d, a = u.recvfrom(2048); u.sendto(sys.argv[1].encode() + b':' + d, a)
`;

/** udp-probe in a pod, connected to host:port. */
const probe = (pod: LabPod, bin: string, host: string, port: number, ops: string[]): Promise<Probe> =>
  udpProbe((args) => pod.spawn(bin, args), host, port, ops);

t.test('pods: a removed backend\'s balanced UDP sockets are destroyed in the pods, unbalanced ones to it are not', { skip: skip ?? false }, async (t) => {
  const { bin, error } = compileUdpProbe(t);
  if (!t.equal(error, null, `udp-probe compiled ${error ?? ''}`)) return;
  const cg = testCgroup(t, 'udppods');
  const lab = await testLab(t, {
    meshedCgroup: cg.path, prefix: 'udppods',
    pods: [{ name: 'client', v6: false }, { name: 'other', v6: false }, { name: 's1', v6: false }, { name: 's2', v6: false }],
  });
  const [client, other, s1, s2] = ['client', 'other', 's1', 's2'].map((n) => lab.pod(n)) as [LabPod, LabPod, LabPod, LabPod];
  const probes: Probe[] = [];
  t.teardown(() => { for (const p of probes) p.kill(); });
  for (const s of [s1, s2]) {
    const p = s.spawn('python3', ['-c', SERVER, s.name, s.v4!, String(PORT)]);
    await new Promise<void>((res, rej) => { p.stdout!.once('data', () => res()); p.once('exit', (c) => rej(new Error(`server in ${s.name} exited ${c}`))); });
  }
  const vip = Lab.vip4(9);
  const config = (s: LabPod): string => `services:
  - name: dns
    vips: [${vip}]
    ports: [{ port: 53, protocol: udp }]
    backends: [{ address: ${s.v4}, port: ${PORT} }]
`;
  const agent = await startAgent(t, cg, { config: config(s1) });

  // recv first: a destroyed socket returns its pending ECONNABORTED; a live one has nothing queued (EAGAIN), then
  // sends and hears its backend again.
  const OPS = ['recv', 'send', 'recvwait'];
  const balanced = await probe(client, bin, vip, 53, OPS);
  const samePod = await probe(client, bin, s1.v4!, PORT, OPS);
  const otherPod = await probe(other, bin, s1.v4!, PORT, OPS);
  probes.push(balanced, samePod, otherPod);
  t.equal(balanced.backend, 's1', 'the pod client is balanced to s1 through the VIP');
  t.equal(samePod.backend, 's1', 'a socket of the same pod talks to s1 directly');
  t.equal(otherPod.backend, 's1', 'a socket of another pod talks to s1 directly');

  const n = agent.logs.length;
  agent.writeConfig(config(s2));
  const applied = await agent.waitLog((l) => l.msg === 'config applied' && agent.logs.indexOf(l) >= n);
  const reaped = await agent.waitLog((l) => l.msg === 'retired tables reaped' && agent.logs.indexOf(l) > agent.logs.indexOf(applied));
  t.equal(Number(reaped.udpSocketsDestroyed), 1, 'one UDP socket destroyed: the balanced one, in the client pod\'s namespace');
  t.same(await balanced.go(), ['recv ECONNABORTED', 'send EDESTADDRREQ', 'recvwait timeout'], 'the balanced socket was destroyed');
  t.same(await samePod.go(), ['recv EAGAIN', 'send ok', 'recvwait ok s1'], 'the same pod\'s direct socket to s1 lives on');
  t.same(await otherPod.go(), ['recv EAGAIN', 'send ok', 'recvwait ok s1'], 'the other pod\'s direct socket to s1 lives on');
  const again = await probe(client, bin, vip, 53, []);
  probes.push(again);
  t.equal(again.backend, 's2', 'a new socket of the pod is balanced to s2');
});
