// The L7 proxy's upstream legs to other nodes through the HBONE tunnel (issue 13), on the multi-node lab with the real
// programs, the control plane's CA and one agent per node: an L7 service on n1 (http rules; upstreamProtocol http1,
// and h2) whose backend is a STRICT pod on n2. curl in a meshed pod on n1 -> the VIP -> n1's proxy, whose upstream is
// a CONNECT stream over n1's pooled mTLS connection to n2's agent, opened as the curl pod's identity -> the pod.
// Checked: 200 and the body byte-exact; the pod saw the connection from n2's tunnel end (a raw one from n1 would be
// dropped: strict); the streams counted at both ends under the client's identity; keep-alive reuse per identity
// (three requests of one client: one stream; a second identity: its own stream); n1's kernel handed nothing over (the
// proxy's own connection); an identity denied at n2 (an L4 DENY on the pod's service) gets 503 once, not retried
// although the route retries connect failures, and counted on both nodes (meshctl tunnels).
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { kernelSkipReason, meshctl, testCgroup, type AgentHandle } from '../lib/kernel.js';
import { testCluster } from '../lib/cluster.js';
import { startMeshCa } from '../lib/meshca.js';
import { until } from '../lib/net.js';
import { Lab, type LabPod } from '../lib/lab.js';
import { MapReader } from '../../agent/datapath/inspect.js';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import type { TunnelReport } from '../../agent/admin/protocol.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const TD = 'cluster.local';
const id = (ns: string, sa: string): string => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const WEB = id('shop', 'web'), OPS = id('shop', 'ops'), LEGACY = id('shop', 'legacy'), VAULT = id('shop', 'vault');
const H1_PORT = 9080, H2_PORT = 9081;
const SIZE = 200_000;
const payload = (): Buffer => Buffer.from(Array.from({ length: SIZE }, (_, i) => (i * 7 + 3) % 251));

// The pod's servers: HTTP/1.1 on argv[2], h2c (prior knowledge) on argv[3]. GET /data: "<name> <peer address>\n" and
// SIZE seeded bytes.
const SERVE = `const http = require('node:http'), http2 = require('node:http2');
const [name, p1, p2, size] = process.argv.slice(1);
const data = Buffer.from(Array.from({ length: Number(size) }, (_, i) => (i * 7 + 3) % 251));
const answer = (peer, res) => {
  const p = String(peer).replace(/^::ffff:/, '');
  const body = Buffer.concat([Buffer.from(name + ' ' + p + '\\n'), data]);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
  res.end(body);
};
const h1 = http.createServer((req, res) => answer(req.socket.remoteAddress, res));
h1.keepAliveTimeout = 60000;
const h2 = http2.createServer((req, res) => answer(req.stream.session.socket.remoteAddress, res));
let up = 0;
const ready = () => { if (++up === 2) console.log('ready'); };
h1.listen(Number(p1), '::', ready);
h2.listen(Number(p2), '::', ready);`;

t.test('the L7 proxy\'s upstream to a strict pod on another node goes through the tunnel as the client', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'hbonel7');
  const c = await testCluster(t, cg, {
    prefix: 'hbonel7',
    nodes: [{ name: 'n1', pods: [{ name: 'a' }, { name: 'b' }, { name: 'c' }] }, { name: 'n2', pods: [{ name: 'vault' }] }],
  });
  const n1 = c.node('n1'), n2 = c.node('n2');
  const a = n1.lab.pod('a'), b = n1.lab.pod('b'), cc = n1.lab.pod('c'), vault = n2.lab.pod('vault');
  const srv = vault.spawn(process.execPath, ['-e', SERVE, 'vault', String(H1_PORT), String(H2_PORT), String(SIZE)]);
  t.teardown(() => { srv.kill('SIGKILL'); });
  await new Promise((res, rej) => { srv.stdout!.once('data', res); srv.once('exit', (code) => rej(new Error(`server exited ${code}`))); });

  const root = cgroup2Root()!;
  const cgPath = (p: LabPod): string => `/${relative(root, p.cgroup)}`;
  const wl = (name: string, p: LabPod, identity: string, node: string): string =>
    `  - {name: ${name}, cgroups: [${cgPath(p)}], identity: "${identity}", node: ${node}, addresses: [${p.v4}]}`;
  const retries = 'routes: [{name: all, retries: {attempts: 2, retryOn: [connect-failure, reset, gateway-error], backoff: {base: 10ms}}}]';
  const config = `
nodes:
  - {name: n1, addresses: [${n1.nodeV4}]}
  - {name: n2, addresses: [${n2.nodeV4}]}
workloads:
${wl('a', a, WEB, 'n1')}
${wl('b', b, OPS, 'n1')}
${wl('c', cc, LEGACY, 'n1')}
${wl('vault', vault, VAULT, 'n2')}
authorization:
  - {name: no-legacy, action: DENY, services: [vault-l4], from: [{principals: ["*/sa/legacy"]}]}
services:
  - {name: vault-h1, mtls: strict, vips: [${Lab.vip4(1)}], ports: [{port: 80, targetPort: ${H1_PORT}}], backends: [{address: ${vault.v4}}],
     http: {upstreamProtocol: http1, ${retries}}}
  - {name: vault-h2, mtls: strict, vips: [${Lab.vip4(2)}], ports: [{port: 80, targetPort: ${H2_PORT}}], backends: [{address: ${vault.v4}}],
     http: {upstreamProtocol: h2, ${retries}}}
  - {name: vault-l4, mtls: strict, vips: [${Lab.vip4(3)}], ports: [{port: 80, targetPort: ${H1_PORT}}, {port: 81, targetPort: ${H2_PORT}}], backends: [{address: ${vault.v4}}]}
`;
  const ca = await startMeshCa(t, n1, [n1, n2], config, TD);
  const ag1 = await ca.agent(n1), ag2 = await ca.agent(n2);
  await ag2.waitLog((l) => l.msg === 'tunnel: HBONE server listening', 30_000);
  await ag1.waitLog((l) => String(l.msg).startsWith('tunnel hand-over listening'), 30_000);
  const ids = (ag: AgentHandle): string[] => (JSON.parse(meshctl(ag, ['identities', '--json']).stdout) as { state: string }[]).map((i) => i.state);
  await until('the certificates', () => [...ids(ag1), ...ids(ag2)].length === 6 && [...ids(ag1), ...ids(ag2)].every((st) => st === 'issued'));
  const report = (ag: AgentHandle): TunnelReport => {
    const r = meshctl(ag, ['tunnels', '--json']);
    try { return JSON.parse(r.stdout) as TunnelReport; } catch { throw new Error(`meshctl tunnels: exit ${r.code} ${r.stderr}`); }
  };
  const streams = (ag: AgentHandle, dir: 'in' | 'out', identity: string): number =>
    report(ag).peers.filter((p) => p.direction === dir && p.identity === identity).reduce((n, p) => n + p.streamsTotal, 0);
  const handshakes = (): number => report(ag1).peers.filter((p) => p.direction === 'out').reduce((n, p) => n + p.handshakes, 0);
  const globals = (): Record<string, number> => MapReader.fromPins(n1.bpffs).globals();

  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-hbonel7-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let files = 0;
  /** n GETs of /data on one keep-alive connection from pod p with curl: per request status, connects, the body file */
  const curl = async (p: LabPod, vip: string, n: number, extra: string[] = []): Promise<{ code: string; connects: string; file: string; headers: string }[]> => {
    const args = ['-sS', '--max-time', '20', ...extra];
    const out: { file: string; headers: string }[] = [];
    for (let i = 0; i < n; i++) {
      const f = join(dir, `body-${files++}`);
      out.push({ file: f, headers: `${f}.h` });
      args.push(`http://${vip}/data`, '-o', f, '-D', `${f}.h`);
    }
    args.push('-w', '%{http_code} %{num_connects}\\n');
    const r = await p.exec('curl', args, { timeoutMs: 40_000 });
    const lines = r.stdout.trim().split('\n');
    return out.map((o, i) => { const [code, connects] = (lines[i] ?? '').split(' '); return { ...o, code: code ?? '', connects: connects ?? '' }; });
  };
  const want = Buffer.concat([Buffer.from(`vault ${n2.nodeV4}\n`), payload()]);

  for (const [proto, vip] of [['http1', Lab.vip4(1)], ['h2', Lab.vip4(2)]] as const) {
    const g0 = globals(), w0 = streams(ag1, 'out', WEB), o0 = streams(ag1, 'out', OPS), wi0 = streams(ag2, 'in', WEB), oi0 = streams(ag2, 'in', OPS);
    const ra = await curl(a, vip, 3);
    t.same(ra.map((x) => [x.code, x.connects]), [['200', '1'], ['200', '0'], ['200', '0']], `${proto}: pod a -> ${vip} -> proxy -> tunnel -> strict pod on n2: three 200s on one client connection`);
    const exact = ra.map((x) => readFileSync(x.file).equals(want));
    t.same(exact, [true, true, true], `${proto}: each body byte-exact (${SIZE} bytes), and the pod saw the connection from n2's tunnel end ${n2.nodeV4}${exact.every(Boolean) ? '' : `: got ${readFileSync(ra[0]!.file).subarray(0, 60).toString('latin1')}`}`);
    const rb = await curl(b, vip, 2);
    t.same(rb.map((x) => x.code), ['200', '200'], `${proto}: pod b (another identity): 200s`);
    t.ok(readFileSync(rb[1]!.file).equals(want), `${proto}: pod b's body byte-exact`);
    const w1 = await until(`${proto}: the streams counted`, () => { const x = streams(ag2, 'in', OPS); return x > oi0 ? x : undefined; }, 5000).catch(() => 0);
    t.same([streams(ag1, 'out', WEB) - w0, streams(ag1, 'out', OPS) - o0], [1, 1],
      `${proto}: n1's tunnel client: one upstream stream per identity (a's three requests reused one; b got its own)`);
    t.same([streams(ag2, 'in', WEB) - wi0, w1 - oi0], [1, 1], `${proto}: n2's server: one stream from each identity`);
    t.equal(globals().tunnel_handover! - g0.tunnel_handover!, 0, `${proto}: n1's kernel handed nothing over (the proxy opened the stream)`);
  }
  t.equal(handshakes(), 2, 'n1: one mTLS handshake per identity (a and b), every stream after it on the pooled connections');

  // pod c's identity is denied at n2 (an L4 DENY on the pod's service): 503, once, though the route retries connect failures
  const d0 = report(ag2).refusals.in.denied ?? 0, p0 = report(ag1).proxy?.refused.denied ?? 0;
  const rc = await curl(cc, Lab.vip4(1), 1);
  t.equal(rc[0]!.code, '503', 'pod c (denied at n2): 503');
  t.match(readFileSync(rc[0]!.headers, 'latin1'), /x-sockmesh-error: connect-failure/i, 'as an upstream connect failure (as an Istio waypoint\'s client sees a destination\'s refusal)');
  await until('n2 counted the denial', () => (report(ag2).refusals.in.denied ?? 0) > d0, 5000).catch(() => undefined);
  t.equal((report(ag2).refusals.in.denied ?? 0) - d0, 1, 'n2 denied one CONNECT: not retried on another attempt');
  t.equal((report(ag1).proxy?.refused.denied ?? 0) - p0, 1, 'n1 counted the proxy upstream\'s denial (meshctl tunnels)');
  const rok = await curl(a, Lab.vip4(1), 1);
  t.equal(rok[0]!.code, '200', 'pod a still gets 200 after c\'s denial (the backend was not ejected, nothing held against it)');
  const text = meshctl(ag1, ['tunnels']).stdout;
  t.match(text, /L7 proxy upstreams to other nodes: \d+ tunnelled, refused: denied 1/, `meshctl tunnels shows the proxy's upstreams:\n${text}`);
  t.ok((report(ag1).proxy?.tunnelled ?? 0) >= 4, `n1 counted its tunnelled proxy upstreams (${report(ag1).proxy?.tunnelled})`);
});
