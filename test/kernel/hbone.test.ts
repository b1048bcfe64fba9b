// HBONE end to end (issue 13), the whole path with the real programs on the multi-node lab: sockmesh-controlplane and
// its CA in n1's namespace, one real agent per node with the tunnel on. A meshed pod on n1 connects to a VIP whose
// backend is a STRICT pod on n2: n1's kernel hands the connection to n1's agent, which carries it in an HTTP/2 CONNECT
// over mTLS to n2's agent on 15008, which connects to the pod. The bytes arrive byte-exact both ways (the pod echoes
// them), the pod sees the connection from n2's tunnel end, and both agents' tunnel metrics count the stream and its
// bytes. The same pod reached by a raw connection from n1's own namespace straight to its address is dropped by n2's
// kernel (strict: the SYN is never answered); a permissive pod on n2 is reached both ways. IPv4 and IPv6.
// Then n1's agent is SIGKILLed: the strict destination is refused at once (ECONNREFUSED), the permissive one is reached
// directly.
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
import type { AuthzReport } from '../../cli/commands/authz.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);
const noV6 = skip || Lab.v6PodToPod ? false : 'no per-interface IPv6 forwarding (force_forwarding, 6.17+) on this kernel';

const TD = 'cluster.local';
const id = (ns: string, sa: string): string => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const WEB = id('shop', 'web'), VAULT = id('shop', 'vault'), SHELF = id('shop', 'shelf');
const PORT = 9090;


// A client: connect (bounded by argv[4] s), send a seeded random payload of argv[3] bytes in 1,000-byte writes from
// right after connect() while a thread reads, half-close, read to EOF. One JSON line: the greeting, whether the echo
// equals what was sent, the peer the app saw (getpeername: the VIP), connect() time; or the error and its time.
const CLIENT = `import errno, json, random, socket, sys, threading, time
host, port, size, ct = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = random.Random(size).randbytes(size)
t0 = time.monotonic()
ms = lambda: round((time.monotonic() - t0) * 1000, 1)
def err(e): return 'timeout' if isinstance(e, socket.timeout) or e.errno is None else errno.errorcode.get(e.errno, str(e))
try:
    s = socket.create_connection((host, port), timeout=ct)
except OSError as e:
    print(json.dumps({'error': err(e), 'ms': ms()})); sys.exit(0)
out = {'connectMs': ms(), 'seenAs': s.getpeername()[0]}
s.settimeout(15)
got, failed = [], []
def read():
    try:
        while True:
            d = s.recv(65536)
            if not d: break
            got.append(d)
    except OSError as e: failed.append(err(e))
r = threading.Thread(target=read); r.start()
try:
    for i in range(0, size, 1000): s.sendall(data[i:i + 1000])
    s.shutdown(socket.SHUT_WR)
except OSError as e: failed.append(err(e))
r.join()
b = b''.join(got); nl = b.find(b'\\n')
out.update(greeting=b[:nl].decode(), exact=b[nl + 1:] == data, received=len(b) - nl - 1)
if failed: out['error'] = failed[0]
print(json.dumps(out))`;

// Until SIGTERM: one new TCP connection after another to host:port, each sending 1,000 bytes and checking the echo.
// Prints {"ok", "errors": {kind: n}, "worstMs", "slow": [[seconds since start, ms], ...] (attempts over 500 ms)}.
const LOOP = `import errno, json, signal, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
payload = bytes(range(250)) * 4
def one():
    s = socket.create_connection((host, port), timeout=10); s.sendall(payload); s.shutdown(socket.SHUT_WR)
    b = b''
    while True:
        d = s.recv(65536)
        if not d: break
        b += d
    s.close()
    nl = b.find(b'\\n')
    if nl < 0 or b[nl + 1:] != payload: raise ValueError('bad echo: %d bytes' % len(b))
ok, errors, worst, slow, t00 = 0, {}, 0.0, [], time.monotonic()
while not stop:
    t0 = time.monotonic()
    try:
        one(); ok += 1
    except Exception as e:
        k = type(e).__name__ + (' ' + errno.errorcode.get(e.errno, '') if isinstance(e, OSError) and e.errno else ' ' + str(e)[:60])
        errors[k] = errors.get(k, 0) + 1
    ms = (time.monotonic() - t0) * 1000; worst = max(worst, ms)
    if ms > 500: slow.append([round(t0 - t00, 2), round(ms)])
print(json.dumps({'ok': ok, 'errors': errors, 'worstMs': round(worst, 1), 'slow': slow}), flush=True)`;
// The same with each attempt its own new HBONE connection (a Node process, node:http2 over TLS 1.3 with a workload
// certificate): TCP + TLS + one CONNECT to the authority, 1,000 bytes over the stream, the echo checked. (Not
// python3-h2: after a GOAWAY its state machine refuses the rest of a stream the GOAWAY let finish.)
const HLOOP = `const http2 = require('node:http2'), fs = require('node:fs');
const [host, port, authority, ca, cert, key] = process.argv.slice(1);
let stop = false;
process.on('SIGTERM', () => { stop = true; });
const payload = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 250));
const tls = { ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key), minVersion: 'TLSv1.3',
  checkServerIdentity: () => undefined /* a SPIFFE URI SAN, no host name: the chain is what is checked here */ };
const one = () => new Promise((resolve, reject) => {
  const s = http2.connect('https://' + (host.includes(':') ? '[' + host + ']' : host) + ':' + port, tls);
  const timer = setTimeout(() => { s.destroy(); reject(new Error('timeout')); }, 10000);
  const fail = (e) => { clearTimeout(timer); s.destroy(); reject(e); };
  s.on('error', fail);
  const st = s.request({ ':method': 'CONNECT', ':authority': authority });
  st.on('error', fail);
  st.on('response', (h) => { if (h[':status'] !== 200) fail(new Error('status ' + h[':status'])); else st.end(payload); });
  const chunks = [];
  st.on('data', (d) => chunks.push(d));
  st.on('end', () => {
    clearTimeout(timer);
    const b = Buffer.concat(chunks), nl = b.indexOf(10);
    s.close();
    if (nl < 0 || !b.subarray(nl + 1).equals(payload)) reject(new Error('bad echo: ' + b.length + ' bytes')); else resolve();
  });
});
(async () => {
  let ok = 0, worst = 0;
  const errors = {}, slow = [], t00 = performance.now();
  while (!stop) {
    const t0 = performance.now();
    try { await one(); ok++; } catch (e) { const k = e.code || String(e.message).slice(0, 60); errors[k] = (errors[k] || 0) + 1; }
    const ms = performance.now() - t0;
    worst = Math.max(worst, ms);
    if (ms > 500) slow.push([Math.round(t0 - t00) / 1000, Math.round(ms)]);
  }
  process.stdout.write(JSON.stringify({ ok, errors, worstMs: Math.round(worst * 10) / 10, slow }) + '\\n');
})();`;

interface LoopOut { ok: number; errors: Record<string, number>; worstMs: number; slow: [number, number][] }
/** Start LOOP (a ChildProcess running until stop()); stop() resolves with what it printed. */
function loop(cmd: string, args: string[]): { stop(): Promise<LoopOut> } {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  return {
    stop: async () => {
      p.kill('SIGTERM');
      await exited;
      try { return JSON.parse(out) as LoopOut; } catch { throw new Error(`loop printed ${JSON.stringify(out)}; stderr ${err.slice(-500)}`); }
    },
  };
}

interface Answer { greeting?: string; exact?: boolean; received?: number; seenAs?: string; connectMs?: number; error?: string; ms?: number }

async function run(cmd: string, args: string[]): Promise<string> {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const code = await new Promise<number | null>((r) => p.once('exit', r));
  if (code !== 0) throw new Error(`${cmd} ${args.slice(0, 3).join(' ')}: exit ${code}: ${err.trim()}`);
  return out;
}
const parse = (out: string): Answer => {
  try { return JSON.parse(out) as Answer; } catch { throw new Error(`client printed: ${out}`); }
};
/** From a pod (a meshed cgroup: the kernel's programs apply). */
const fromPod = async (pod: LabPod, host: string, port: number, size: number, timeoutS = 5): Promise<Answer> =>
  parse((await pod.exec('python3', ['-c', CLIENT, host, String(port), String(size), String(timeoutS)], { timeoutMs: 30_000 })).stdout);
/** From a node's own namespace (not meshed: no hand-over; the node's address is the source). */
const fromNode = async (node: ClusterNode, host: string, size: number, timeoutS = 5): Promise<Answer> => {
  const [cmd, args] = node.lab.onNode(['python3', '-c', CLIENT, host, String(PORT), String(size), String(timeoutS)]);
  return parse(await run(cmd, args));
};
const serve = (pod: LabPod): Promise<void> => startGreeter(pod, PORT);

t.test('a meshed pod -> the kernel\'s hand-over -> HBONE -> a strict pod on another node', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'hbone');
  const c = await testCluster(t, cg, {
    prefix: 'hbonee2e',
    nodes: [{ name: 'n1', pods: [{ name: 'a' }] }, { name: 'n2', pods: [{ name: 'vault' }, { name: 'shelf' }] }],
  });
  const n1 = c.node('n1'), n2 = c.node('n2');
  const a = n1.lab.pod('a'), vault = n2.lab.pod('vault'), shelf = n2.lab.pod('shelf');
  await serve(vault);
  await serve(shelf);
  const families: { fam: string; addr: (p: LabPod) => string; node: (n: ClusterNode) => string; vip: (i: number) => string }[] = [
    { fam: 'IPv4', addr: (p) => p.v4!, node: (n) => n.nodeV4, vip: Lab.vip4 },
  ];
  if (!noV6) families.push({ fam: 'IPv6', addr: (p) => p.v6!, node: (n) => n.nodeV6, vip: Lab.vip6 });
  else t.comment(`IPv6 not checked: ${noV6}`);

  // Before any agent: n1's namespace reaches both pods straight, so a refusal later is strict mode's. (6 s: the lab's
  // first IPv6 SYNs across nodes are lost while neighbours resolve.)
  for (const { fam, addr, node } of families) {
    for (const pod of [vault, shelf]) {
      const r = await fromNode(n1, addr(pod), 1000, 6);
      t.same([r.greeting, r.exact], [`${pod.name} ${node(n1)}`, true], `${fam}: without agents, n1's namespace reaches ${pod.name} straight (${JSON.stringify(r)})`);
    }
  }

  const root = cgroup2Root()!;
  const cgPath = (p: LabPod): string => `/${relative(root, p.cgroup)}`;
  const vips = (i: number): string => families.map(({ vip }) => `"${vip(i)}"`).join(', ');
  const backends = (p: LabPod): string => families.map(({ addr }) => `{address: "${addr(p)}"}`).join(', ');
  const config = `
nodes:
  - {name: n1, addresses: [${n1.nodeV4}, "${n1.nodeV6}"]}
  - {name: n2, addresses: [${n2.nodeV4}, "${n2.nodeV6}"]}
workloads:
  - {name: a, cgroups: [${cgPath(a)}], identity: "${WEB}", node: n1, addresses: [${a.v4}, "${a.v6}"]}
  - {name: vault, cgroups: [${cgPath(vault)}], identity: "${VAULT}", node: n2, addresses: [${vault.v4}, "${vault.v6}"]}
  - {name: shelf, cgroups: [${cgPath(shelf)}], identity: "${SHELF}", node: n2, addresses: [${shelf.v4}, "${shelf.v6}"]}
services:
  - {name: vault, mtls: strict, vips: [${vips(1)}], ports: [{port: 80, targetPort: ${PORT}}], backends: [${backends(vault)}]}
  - {name: shelf, mtls: permissive, vips: [${vips(2)}], ports: [{port: 80, targetPort: ${PORT}}], backends: [${backends(shelf)}]}
`;
  const ca = await startMeshCa(t, n1, [n1, n2], config, TD);
  const ag1 = await ca.agent(n1), ag2 = await ca.agent(n2);
  await ag2.waitLog((l) => l.msg === 'tunnel: HBONE server listening', 30_000);
  await ag1.waitLog((l) => String(l.msg).startsWith('tunnel hand-over listening'), 30_000);
  const ids = (ag: AgentHandle): string[] => (JSON.parse(meshctl(ag, ['identities', '--json']).stdout) as { state: string }[]).map((i) => i.state);
  await until('the certificates', () => [...ids(ag1), ...ids(ag2)].length === 5 && [...ids(ag1), ...ids(ag2)].every((st) => st === 'issued'));
  const report = (ag: AgentHandle): TunnelReport => {
    const r = meshctl(ag, ['tunnels', '--json']);
    try { return JSON.parse(r.stdout) as TunnelReport; } catch { throw new Error(`meshctl tunnels: exit ${r.code} ${r.stderr}`); }
  };
  /** n2's inbound streams and bytes from pod a's identity; n1's outbound streams */
  const counts = (): { inStreams: number; toPod: number; fromPod: number; outStreams: number } => {
    const inb = report(ag2).peers.filter((p) => p.direction === 'in' && p.identity === WEB);
    const out = report(ag1).peers.filter((p) => p.direction === 'out' && p.identity === WEB);
    const sum = (ps: typeof inb, k: 'streamsTotal' | 'bytesIn' | 'bytesOut'): number => ps.reduce((n, p) => n + p[k], 0);
    return { inStreams: sum(inb, 'streamsTotal'), toPod: sum(inb, 'bytesIn'), fromPod: sum(inb, 'bytesOut'), outStreams: sum(out, 'streamsTotal') };
  };
  const globals = (): Record<string, number> => MapReader.fromPins(n1.bpffs).globals();

  const SIZE = 300_000;
  for (const { fam, addr, node, vip } of families) {
    // the strict pod through the VIP: handed over, tunnelled, echoed
    const c0 = counts(), g0 = globals();
    const r = await fromPod(a, vip(1), 80, SIZE);
    t.same([r.greeting, r.exact, r.received, r.error], [`vault ${node(n2)}`, true, SIZE, undefined],
      `${fam}: pod a -> VIP -> strict pod vault on n2: ${SIZE} bytes each way, byte-exact, and vault saw n2's tunnel end (${JSON.stringify(r)})`);
    t.equal(r.seenAs, vip(1), `${fam}: the app sees the VIP as its peer`);
    t.equal(globals().tunnel_handover! - g0.tunnel_handover!, 1, `${fam}: n1's kernel handed the connection to its agent`);
    const greeting = `vault ${node(n2)}\n`.length;
    const c1 = await until(`${fam}: the tunnel's counts`, () => { const x = counts(); return x.inStreams > c0.inStreams && x.fromPod - c0.fromPod >= SIZE + greeting ? x : undefined; }, 5000).catch(() => counts());
    t.same([c1.inStreams - c0.inStreams, c1.outStreams - c0.outStreams], [1, 1], `${fam}: one stream out of n1's tunnel client, one into n2's server, from pod a's identity`);
    t.same([c1.toPod - c0.toPod, c1.fromPod - c0.fromPod], [SIZE, SIZE + greeting], `${fam}: n2 counted the bytes to the pod and back (payload and greeting)`);

    // the strict pod straight from n1's own namespace: dropped by n2's kernel
    const raw = await fromNode(n1, addr(vault), 1000, 2);
    t.equal(raw.error, 'timeout', `${fam}: n1's namespace straight to vault ${addr(vault)}:${PORT}: dropped, the connect times out (${JSON.stringify(raw)})`);

    // the permissive pod both ways
    const viaTunnel = await fromPod(a, vip(2), 80, SIZE);
    t.same([viaTunnel.greeting, viaTunnel.exact], [`shelf ${node(n2)}`, true], `${fam}: pod a -> VIP -> permissive pod shelf: tunnelled, byte-exact (${JSON.stringify(viaTunnel)})`);
    const straight = await fromNode(n1, addr(shelf), SIZE);
    t.same([straight.greeting, straight.exact], [`shelf ${node(n1)}`, true], `${fam}: n1's namespace straight to shelf: accepted (permissive), byte-exact (${JSON.stringify(straight)})`);
  }
  const authz = JSON.parse(meshctl(ag2, ['authz', '--json']).stdout) as AuthzReport;
  for (const { fam, addr } of families) {
    const d = authz.strict.destinations.find((x) => x.address === addr(vault) && x.port === PORT);
    t.equal(d?.mode, 'strict', `${fam}: n2 holds vault:${PORT} as strict`);
    t.ok((d?.dropped ?? 0) >= 1, `${fam}: and counted the raw connection's drop (${d?.dropped})`);
    t.ok((d?.local ?? 0) >= 1, `${fam}: and the tunnel end's connection it let through (${d?.local})`);
  }
  const rep1 = report(ag1);
  // the pool is per (source identity, node, node address): one connection per address family
  t.equal(rep1.peers.filter((p) => p.direction === 'out').reduce((n, p) => n + p.handshakes, 0), families.length,
    `n1: ${families.length} mTLS handshake(s), one per address family of n2's tunnel end, carried every connection`);
  t.match(rep1.handover, { tunnelled: 2 * families.length, refused: {} }, 'n1\'s hand-over: every connection tunnelled, none reset');

  // Planned restarts of n2's agent (the tunnel's server end) under load: new connections all the time, through the
  // hand-over and n1's pooled tunnel (a pod's connections to the VIP), and each its own new HBONE connection to
  // n2:15008 (python3-h2 from n1's namespace, with a workload certificate of the same CA): the new agent takes the
  // 15008 listeners over, so no SYN is refused in between and nothing fails.
  const [cert, key] = await ca.issue('web', WEB);
  const pyLoop = (n: number) => Array.from({ length: n }, () => {
    const [cmd, args] = n1.lab.onNode([process.execPath, '-e', HLOOP, n2.nodeV4, '15008', `${vault.v4}:${PORT}`, ca.bundle, cert, key]);
    return loop(cmd, args);
  });
  const hbone = pyLoop(2);
  const viaVip = [1, 2].map(() => { const [cmd, args] = a.argv('python3', ['-c', LOOP, Lab.vip4(1), '80']); return loop(cmd, args); });
  const RESTARTS = 3;
  const restartMs: number[] = [];
  await new Promise((r) => setTimeout(r, 1000));
  for (let i = 0; i < RESTARTS; i++) {
    const seen = ag2.logs.length;
    const t0 = performance.now();
    await ag2.restart();
    await ag2.waitLog((l) => ag2.logs.indexOf(l) >= seen && l.msg === 'tunnel: HBONE server listening', 30_000);
    restartMs.push(Math.round(performance.now() - t0));
    await new Promise((r) => setTimeout(r, 1000));
  }
  const [h1, h2, v1, v2] = await Promise.all([...hbone, ...viaVip].map((l) => l.stop()));
  const sumOk = (xs: LoopOut[]): number => xs.reduce((n, x) => n + x.ok, 0);
  t.comment(`${RESTARTS} restarts of n2's agent (${restartMs.join(', ')} ms to its HBONE server listening); new HBONE connections: ${JSON.stringify([h1, h2])}; through the VIP: ${JSON.stringify([v1, v2])}`);
  t.same([h1!.errors, h2!.errors], [{}, {}], `a new HBONE connection per attempt across ${RESTARTS} restarts: none refused or failed (${sumOk([h1!, h2!])} ok, worst ${Math.max(h1!.worstMs, h2!.worstMs)} ms)`);
  t.same([v1!.errors, v2!.errors], [{}, {}], `pod a -> VIP -> tunnel across ${RESTARTS} restarts: none refused or failed (${sumOk([v1!, v2!])} ok, worst ${Math.max(v1!.worstMs, v2!.worstMs)} ms)`);
  t.ok(sumOk([h1!, h2!]) >= 10 * RESTARTS && sumOk([v1!, v2!]) >= 10 * RESTARTS, 'both loads kept going throughout');
  const takenOver = ag2.logs.filter((l) => l.msg === 'tunnel: HBONE server listening' && l.takenOver === true).length;
  t.equal(takenOver, RESTARTS, `each new agent served 15008 on the listeners it took over (${takenOver} of ${RESTARTS})`);

  // n1's agent dies: the strict destination is refused at once, the permissive one reached directly
  await ag1.kill('SIGKILL');
  const k0 = globals();
  const locked = await fromPod(a, families[0]!.vip(1), 80, 1000, 5);
  t.equal(locked.error, 'ECONNREFUSED', `agent down: the strict destination is refused (${JSON.stringify(locked)})`);
  t.ok(locked.ms! < 200, `at once: connect() failed after ${locked.ms} ms`);
  const open = await fromPod(a, families[0]!.vip(2), 80, 1000);
  t.same([open.greeting, open.exact], [`shelf ${a.v4}`, true], `agent down: the permissive destination is reached directly (${JSON.stringify(open)})`);
  const k1 = globals();
  t.same([k1.tunnel_refused! - k0.tunnel_refused!, k1.tunnel_direct! - k0.tunnel_direct!, k1.tunnel_handover! - k0.tunnel_handover!], [1, 1, 0],
    'n1\'s kernel: one refused, one direct, nothing handed to the dead listener');
  const still = await fromNode(n1, vault.v4!, 1000, 2);
  t.equal(still.error, 'timeout', 'n1\'s namespace straight to vault: still dropped');
  t.comment(`strict refusal with the agent down: connect() failed in ${locked.ms} ms`);
});
