// What a connected UDP client sees, call by call, when its backend is removed: the agent destroys the socket
// (sock_diag SOCK_DESTROY -> the kernel's udp_abort(): the socket gets a pending ECONNABORTED and is disconnected).
// The README's "Removing a backend" says the same, per call; this checks it (errnos from a small C client,
// test/lib/udp-probe.c: Node's dgram cannot make every call).
import t from 'tap';
import { spawn } from 'node:child_process';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { udpServer } from '../lib/net.js';
import { compileUdpProbe, udpProbe, type Probe } from '../lib/udpprobe.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const VIP = '127.77.4.53';
const config = (...ports: number[]): string => `services:
  - name: dns
    vips: [${VIP}]
    ports: [{ port: 53, protocol: udp }]
    backends: [${ports.map((p) => `{ address: 127.0.0.1, port: ${p} }`).join(', ')}]
`;

t.test('a connected UDP client of a removed backend: what each call returns', { skip: skip ?? false }, async (t) => {
  const { bin, error } = compileUdpProbe(t);
  if (!t.equal(error, null, `udp-probe compiled ${error ?? ''}`)) return;
  const cg = testCgroup(t, 'udprm');
  cg.enter('client'); // the probes are children: meshed too
  const u1 = await udpServer('u1');
  const u2 = await udpServer('u2');
  t.teardown(() => { u1.close(); u2.close(); });
  const agent = await startAgent(t, cg, { config: config(u1.port, u2.port) });

  // every sequence of calls, each on its own socket connected to u1 (the one removed), and what the README says of it
  const sequences: Record<string, [string[], string[]]> = {
    // send() finds the socket disconnected, every time; the pending error waits for a receive
    'send first (a send-only client: statsd, syslog)': [['send', 'send', 'recv', 'recv', 'send'],
      ['send EDESTADDRREQ', 'send EDESTADDRREQ', 'recv ECONNABORTED', 'recv EAGAIN', 'send EDESTADDRREQ']],
    // the error once, then nothing more comes (the socket is no longer connected nor bound)
    'recv first (a client waiting for an answer)': [['recv', 'recv', 'send'], ['recv ECONNABORTED', 'recv EAGAIN', 'send EDESTADDRREQ']],
    // the pending error once, then each datagram is balanced (cgroup sendmsg4) to a live backend
    'sendto first': [['sendto', 'sendto', 'recvwait'], ['sendto ECONNABORTED', 'sendto ok', 'recvwait ok u2']],
    // what a client should do: connect again (balanced to a live backend); the pending error comes with the first send
    'connect again': [['connect', 'send', 'send', 'recvwait'], ['connect ok', 'send ECONNABORTED', 'send ok', 'recvwait ok u2']],
  };
  const probes = new Map<string, Probe>();
  const others: Probe[] = [];
  t.teardown(() => { for (const p of [...probes.values(), ...others]) p.kill(); });
  for (const [name, [ops]] of Object.entries(sequences)) {
    for (let i = 0; i < 40 && !probes.has(name); i++) {
      const p = await udpProbe((args) => spawn(bin, args, { stdio: ['pipe', 'pipe', 'inherit'] }), VIP, 53, ops);
      if (p.backend === 'u1') probes.set(name, p); else others.push(p);
    }
    t.ok(probes.has(name), `${name}: a socket connected to u1`);
  }
  const n = agent.logs.length;
  agent.writeConfig(config(u2.port));
  const applied = await agent.waitLog((l) => l.msg === 'config applied' && agent.logs.indexOf(l) >= n);
  // u1's sockets are destroyed with the retired table that still names it, a grace time after the apply
  const reaped = await agent.waitLog((l) => l.msg === 'retired tables reaped' && agent.logs.indexOf(l) > agent.logs.indexOf(applied));
  t.ok(Number(reaped.udpSocketsDestroyed) >= probes.size, `UDP sockets destroyed: ${reaped.udpSocketsDestroyed}`);
  for (const [name, p] of probes) t.same(await p.go(), sequences[name]![1], name);
});
