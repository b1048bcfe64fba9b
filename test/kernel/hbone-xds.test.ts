// The mesh settings over xDS on the multi-node lab (issue 13): a DaemonSet's way, the agents of n1 and n2 fed only by
// sockmesh-controlplane (`serve --dir`, in n1's namespace, with its CA): no config file on the nodes. From the control
// plane's nodes, workloads (with their node), modes and L4 policies the agents get a working tunnel (a pod on n1 ->
// VIP -> a strict pod on n2, through n1's hand-over and HBONE, byte-exact), strict mode (a raw connection from n1's
// namespace to the strict pod is dropped by n2's kernel), an L4 deny by identity at the destination agent (a tunnelled
// caller its policy names is refused) and in n1's kernel at connect() (same node: the caller's cgroup, which only n1
// is served), and a policy changed at the control plane in force on the next connection. IPv4.
import t from 'tap';
import { spawn } from 'node:child_process';
import { relative } from 'node:path';
import { kernelSkipReason, meshctl, testCgroup, type AgentHandle } from '../lib/kernel.js';
import { testCluster, type ClusterNode } from '../lib/cluster.js';
import { startMeshCa } from '../lib/meshca.js';
import { until } from '../lib/net.js';
import { Lab, type LabPod } from '../lib/lab.js';
import { startGreeter } from '../lib/podecho.js';
import { MapReader } from '../../agent/datapath/inspect.js';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import type { TunnelReport } from '../../agent/admin/protocol.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const TD = 'cluster.local';
const id = (sa: string): string => `spiffe://${TD}/ns/shop/sa/${sa}`;
const PORT = 9090;

// A pod's server: "<name> <peer>\n", then every byte back until the client's FIN.

// A client: connect (timeout argv[4] s), send argv[3] seeded bytes, half-close, read to the end; one JSON line.
const ASK = `import errno, json, random, socket, sys, time
host, port, size, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = random.Random(7).randbytes(size); t0 = time.monotonic(); out = {}
try:
    s = socket.create_connection((host, port), timeout=limit); s.settimeout(15)
    out['connectMs'] = round((time.monotonic() - t0) * 1000, 1)
    s.sendall(data); s.shutdown(socket.SHUT_WR)
    b = b''
    while True:
        d = s.recv(65536)
        if not d: break
        b += d
    nl = b.find(b'\\n')
    out.update(greeting=b[:nl].decode() if nl >= 0 else None, exact=b[nl + 1:] == data if nl >= 0 else False, received=len(b))
except OSError as e:
    out['error'] = 'timeout' if isinstance(e, socket.timeout) or e.errno is None else errno.errorcode.get(e.errno, str(e))
    out['ms'] = round((time.monotonic() - t0) * 1000, 1)
print(json.dumps(out))`;

// An independent HBONE client (node:http2 over TLS 1.3 with a workload certificate): one CONNECT to argv[3] through
// argv[1]:argv[2]; prints {"status", "greeting"} or {"error"}.
const HBONE = `const http2 = require('node:http2'), fs = require('node:fs');
const [host, port, authority, ca, cert, key] = process.argv.slice(1);
const s = http2.connect('https://' + host + ':' + port, { ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key),
  minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
let said = false;
const done = (o) => { if (said) return; said = true; process.stdout.write(JSON.stringify(o) + '\\n'); s.destroy(); process.exit(0); };
s.on('error', (e) => done({ error: e.code || e.message }));
const st = s.request({ ':method': 'CONNECT', ':authority': authority });
let status, body = '';
st.on('response', (h) => { status = h[':status']; if (status === 200) st.end('x'); else done({ status }); });
st.on('data', (d) => { body += d; });
st.on('close', () => done({ status, greeting: body.split('\\n')[0] }));
st.on('error', () => {});
setTimeout(() => done({ status, error: 'timeout' }), 10000);`;

interface Answer { greeting?: string | null; exact?: boolean; received?: number; connectMs?: number; error?: string; ms?: number }
const answer = (out: string): Answer => {
  try { return JSON.parse(out) as Answer; } catch { throw new Error(`client printed: ${out}`); }
};
const fromPod = async (pod: LabPod, host: string, port: number, size: number, limitS = 5): Promise<Answer> =>
  answer((await pod.exec('python3', ['-c', ASK, host, String(port), String(size), String(limitS)], { timeoutMs: 30_000 })).stdout);
async function fromNode(node: ClusterNode, host: string, limitS: number): Promise<Answer> {
  const [cmd, args] = node.lab.onNode(['python3', '-c', ASK, host, String(PORT), '1000', String(limitS)]);
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  await new Promise((r) => p.once('exit', r));
  return answer(out);
}
/** HBONE's CONNECT to `pod`:PORT through `node`'s 15008 from n1's namespace, as `cert`'s identity. */
async function hbone(from: ClusterNode, node: ClusterNode, pod: LabPod, bundle: string, cert: [string, string]): Promise<{ status?: number; greeting?: string; error?: string }> {
  const [cmd, args] = from.lab.onNode([process.execPath, '-e', HBONE, node.nodeV4, '15008', `${pod.v4}:${PORT}`, bundle, ...cert]);
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  await new Promise((r) => p.once('exit', r));
  try { return JSON.parse(out.split('\n')[0]!) as { status?: number }; } catch { throw new Error(`hbone client printed: ${out}`); }
}

const serve = (pod: LabPod): Promise<void> => startGreeter(pod, PORT);

t.test('agents fed by the control plane over xDS: tunnel, strict mode, L4 deny by identity', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'hbonexds');
  const c = await testCluster(t, cg, {
    prefix: 'hbonexds',
    nodes: [{ name: 'n1', pods: [{ name: 'web' }, { name: 'legacy' }] }, { name: 'n2', pods: [{ name: 'vault' }, { name: 'shelf' }] }],
  });
  const n1 = c.node('n1'), n2 = c.node('n2');
  const web = n1.lab.pod('web'), legacy = n1.lab.pod('legacy'), vault = n2.lab.pod('vault'), shelf = n2.lab.pod('shelf');
  for (const p of [web, vault, shelf]) await serve(p);
  // Before any agent: n1's namespace reaches vault straight, so a refusal later is strict mode's.
  const before = await fromNode(n1, vault.v4!, 6);
  t.equal(before.greeting, `vault ${n1.nodeV4}`, `without agents n1's namespace reaches vault (${JSON.stringify(before)})`);

  const root = cgroup2Root()!;
  const cgPath = (p: LabPod): string => `/${relative(root, p.cgroup)}`;
  const workload = (p: LabPod, node: ClusterNode) => `  - {name: ${p.name}, cgroups: [${cgPath(p)}], identity: "${id(p.name)}", node: ${node.name}, addresses: [${p.v4}]}`;
  const config = (extraPolicy = '') => `
nodes:
  - {name: n1, addresses: [${n1.nodeV4}]}
  - {name: n2, addresses: [${n2.nodeV4}]}
workloads:
${workload(web, n1)}
${workload(legacy, n1)}
${workload(vault, n2)}
${workload(shelf, n2)}
mtls: {mode: permissive, namespaces: {}}
authorization:
  - {name: deny-legacy, action: DENY, services: [vault, web], from: [{principals: ["*/sa/legacy"]}]}
${extraPolicy}
services:
  - {name: vault, mtls: strict, vips: [${Lab.vip4(1)}], ports: [{port: 80, targetPort: ${PORT}}], backends: [{address: ${vault.v4}}]}
  - {name: shelf, vips: [${Lab.vip4(2)}], ports: [{port: 80, targetPort: ${PORT}}], backends: [{address: ${shelf.v4}}]}
  - {name: web, vips: [${Lab.vip4(3)}], ports: [{port: 80, targetPort: ${PORT}}], backends: [{address: ${web.v4}}]}
`;
  const ca = await startMeshCa(t, n1, [n1, n2], config(), TD);
  const ag1 = await ca.agentXds(n1), ag2 = await ca.agentXds(n2);
  await ag2.waitLog((l) => l.msg === 'tunnel: HBONE server listening', 30_000);
  await ag1.waitLog((l) => String(l.msg).startsWith('tunnel hand-over listening'), 30_000);
  const ids = (ag: AgentHandle): string[] => (JSON.parse(meshctl(ag, ['identities', '--json']).stdout) as { state: string }[]).map((i) => i.state);
  await until('the certificates', () => [...ids(ag1), ...ids(ag2)].length === 6 && [...ids(ag1), ...ids(ag2)].every((st) => st === 'issued'));
  t.pass('each agent holds its node\'s and its workloads\' certificates (3 + 3), from the workloads the control plane placed on it');
  for (const ag of [ag1, ag2]) {
    const st = JSON.parse(meshctl(ag, ['status', '--json']).stdout) as { controlPlane?: { lastNack: unknown; acked: Record<string, unknown>; unsupported: string[] } };
    t.same([st.controlPlane?.lastNack, Object.keys(st.controlPlane?.acked ?? {}).filter((u) => u.includes('sockmesh.mesh')).length, st.controlPlane?.unsupported],
      [null, 4, []], 'on xDS: the four mesh types ACKed, nothing NACKed or left unapplied');
  }
  const tunnels = (ag: AgentHandle): TunnelReport => JSON.parse(meshctl(ag, ['tunnels', '--json']).stdout) as TunnelReport;
  const globals = (): Record<string, number> => MapReader.fromPins(n1.bpffs).globals();

  // the tunnel: web -> VIP -> strict vault on n2
  const g0 = globals();
  const SIZE = 200_000;
  const r = await fromPod(web, Lab.vip4(1), 80, SIZE);
  t.same([r.greeting, r.exact, r.error], [`vault ${n2.nodeV4}`, true, undefined], `web -> VIP -> strict vault on n2: ${SIZE} bytes each way through the tunnel, vault saw n2's tunnel end (${JSON.stringify(r)})`);
  t.equal(globals().tunnel_handover! - g0.tunnel_handover!, 1, 'n1\'s kernel handed the connection to its agent');
  const inbound = () => tunnels(ag2).peers.filter((p) => p.direction === 'in' && p.identity === id('web')).reduce((n, p) => n + p.streamsTotal, 0);
  t.equal(inbound(), 1, 'n2\'s tunnel server took one stream from web\'s identity');

  // strict mode: a raw connection from n1's namespace to vault is dropped by n2's kernel; permissive shelf is reached
  const raw = await fromNode(n1, vault.v4!, 2);
  t.equal(raw.error, 'timeout', `n1's namespace straight to vault: dropped (${JSON.stringify(raw)})`);
  const open = await fromNode(n1, shelf.v4!, 5);
  t.equal(open.greeting, `shelf ${n1.nodeV4}`, `n1's namespace straight to permissive shelf: reached (${JSON.stringify(open)})`);

  // L4 deny by identity. The source's node holds the same policies: legacy's connect() to the VIP is refused by n1's
  // kernel at once. At the destination, n2's agent decides for what arrives through its tunnel end: an independent
  // HBONE client with legacy's certificate is refused there (403), one with web's is let through.
  const viaVip = await fromPod(legacy, Lab.vip4(1), 80, 1000);
  t.equal(viaVip.error, 'EACCES', `legacy -> VIP -> vault: connect() refused by n1's kernel (${JSON.stringify(viaVip)})`);
  const certs = { legacy: await ca.issue('legacy', id('legacy')), web: await ca.issue('web', id('web')) };
  const d0 = tunnels(ag2).refusals.in['denied'] ?? 0;
  const asLegacy = await hbone(n1, n2, vault, ca.bundle, certs.legacy);
  t.same(asLegacy, { status: 403 }, `HBONE CONNECT to vault as legacy: 403 from n2's agent (${JSON.stringify(asLegacy)})`);
  t.equal((tunnels(ag2).refusals.in['denied'] ?? 0) - d0, 1, 'n2 counted the denial');
  const asWeb = await hbone(n1, n2, vault, ca.bundle, certs.web);
  t.same([asWeb.status, asWeb.greeting], [200, `vault ${n2.nodeV4}`], `HBONE CONNECT to vault as web: through (${JSON.stringify(asWeb)})`);
  // and on the same node, in n1's kernel at connect(): legacy's cgroup is its workload's (served to n1 only)
  const local = await fromPod(legacy, Lab.vip4(3), 80, 1000);
  t.equal(local.error, 'EACCES', `legacy -> VIP -> web on the same node: connect() refused by the kernel (${JSON.stringify(local)})`);
  t.ok(local.ms! < 500, `at once (${local.ms} ms)`);
  const self = await fromPod(web, Lab.vip4(3), 80, 1000);
  t.same([self.greeting, self.exact], [`web ${web.v4}`, true], `web -> VIP -> web: allowed (${JSON.stringify(self)})`);

  // a policy changed at the control plane: in force on the next connection, on both nodes
  const seen = [ag1.logs.length, ag2.logs.length];
  ca.serve(config(`  - {name: deny-web, action: DENY, services: [vault], from: [{principals: ["${id('web').slice('spiffe://'.length)}"]}]}`));
  await Promise.all([ag1, ag2].map((ag, i) => ag.waitLog((l) => ag.logs.indexOf(l) >= seen[i]! && l.msg === 'xds: mesh settings applied', 15_000)));
  const now = await fromPod(web, Lab.vip4(1), 80, 1000);
  t.equal(now.error, 'EACCES', `web -> VIP -> vault after deny-web was served: refused at connect() (${JSON.stringify(now)})`);
  const nowHbone = await hbone(n1, n2, vault, ca.bundle, certs.web);
  t.same(nowHbone, { status: 403 }, `and at n2's tunnel end (${JSON.stringify(nowHbone)})`);
  t.equal((tunnels(ag2).refusals.in['denied'] ?? 0) - d0, 2, 'n2 counted it');
  const still = await fromPod(web, Lab.vip4(2), 80, 1000);
  t.same([still.greeting, still.exact], [`shelf ${n2.nodeV4}`, true], `web -> shelf: still tunnelled (${JSON.stringify(still)})`);
});
