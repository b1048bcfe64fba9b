// What a connected UDP client sees, call by call, when its backend is removed: the agent destroys the socket
// (sock_diag SOCK_DESTROY -> the kernel's udp_abort(): the socket gets a pending ECONNABORTED and is disconnected).
// The README's "Removing a backend" says the same, per call; this checks it (errnos from a small C client,
// test/lib/udp-probe.c: Node's dgram cannot make every call).
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { udpServer } from '../lib/net.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const VIP = '127.77.4.53';
const config = (...ports: number[]): string => `services:
  - name: dns
    vips: [${VIP}]
    ports: [{ port: 53, protocol: udp }]
    backends: [${ports.map((p) => `{ address: 127.0.0.1, port: ${p} }`).join(', ')}]
`;

interface Probe { backend: string; go(): Promise<string[]>; kill(): void }

/** A udp-probe connected to the VIP (its backend known), that runs ops when told. */
async function probe(bin: string, ops: string[]): Promise<Probe> {
  const proc = spawn(bin, [VIP, '53', ...ops], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let wake = () => {};
  let exited = false; // its output read to the end
  createInterface({ input: proc.stdout! }).on('line', (l) => { lines.push(l); wake(); }).on('close', () => { exited = true; wake(); });
  const until = async (n: number): Promise<void> => {
    const end = Date.now() + 10_000;
    while (lines.length < n && !exited && Date.now() < end) await new Promise<void>((r) => { wake = r; setTimeout(r, 100); });
  };
  await until(1);
  const backend = /^backend (\S+)$/.exec(lines[0] ?? '')?.[1] ?? '';
  return {
    backend,
    go: async () => { proc.stdin!.end('go\n'); await until(1 + ops.length); return lines.slice(1); },
    kill: () => proc.kill('SIGKILL'),
  };
}

t.test('a connected UDP client of a removed backend: what each call returns', { skip: skip ?? false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-udp-probe-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'udp-probe');
  const cc = spawnSync('gcc', ['-O1', '-D_GNU_SOURCE', '-o', bin, new URL('../lib/udp-probe.c', import.meta.url).pathname], { encoding: 'utf8' });
  if (!t.equal(cc.status, 0, `udp-probe compiled ${cc.stderr ?? cc.error?.message ?? ''}`)) return;
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
      const p = await probe(bin, ops);
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
