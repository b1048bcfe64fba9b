// The mesh benchmark (issue 13, "Speed"): a client pod on node n1 and a server pod on node n2 of the multi-node lab
// (lab/cluster.ts: two node namespaces routed to each other, a real agent per node), and the same three workloads
//   iperf3 (one stream, Gbit/s), sockperf ping-pong 64 B (p50/p99), wrk HTTP/1.1 against nginx (req/s, p99)
// through
//  (a) the server pod's IP, no mesh: plaintext pod -> pod across the nodes;
//  (b) a sockmesh VIP whose backend is the server pod, mTLS: the kernel hands the connection to n1's agent, which
//      carries it in its pooled HBONE tunnel to n2's agent;
//  (c) a sidecar pair with mTLS: a haproxy in each pod (the client's originating TLS, the server's terminating it),
//      TCP mode, TLS 1.3 with the tunnel's cipher (AES-128-GCM, netio TLS's first choice), certificates from one root;
//  (d) a sockmesh VIP with `mtls: off`: connect-time balancing to the pod across the nodes, plaintext;
//  (t) the tunnel alone, as information: agent/tunnel's TunnelClient and TunnelServer in bench processes in n1's and
//      n2's node namespaces (the agent's place), the client pod dialling n1's node address (no kernel hand-over).
// One cluster carries every scenario, so that they share the servers: the clients of (a), (c), (t) and the sidecars
// and tunnel ends run in cgroups outside the agents' meshed trees (the kernel leaves them alone) but inside the pods'
// network namespaces; (d)'s services have backend ports of their own (the same servers, second instances), because a
// port's mTLS mode is the strictest of the services sharing it. Rounds are interleaved (each round runs every
// scenario, in an order rotated per round), medians reported; CPU per run is read per cgroup (client, the mesh on each
// node, the server pod) and for the whole machine, so that a missed target shows where the time went. Everything is
// removed on the way out, also on error or Ctrl-C; every process and every run is bounded in time.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { availableParallelism, cpus, loadavg, release } from 'node:os';
import { join, relative } from 'node:path';
import { Cluster, type ClusterNode } from '../lab/cluster.js';
import { Lab, type LabPod } from '../lab/lab.js';
import { nodeSpiffeId } from '../agent/model/spiffe.js';
import { inCgroupNsenter } from '../lab/cgroup.js';
import { emitResult } from './chart.js';
import { Agent, agentEntry, cleanupAgent, globalCounterNames } from './lib/agent.js';
import type { TunnelReport } from '../agent/admin/protocol.js';
import { existsSync } from 'node:fs';
import { benchWorkspace, cgroup2Mount, createChildCgroup } from './lib/cgroup.js';
import { makeBenchCerts } from './lib/certs.js';
import { clockTicks } from './lib/cpu.js';
import { iperf3ClientArgv, parseIperf3 } from './lib/iperf3.js';
import { nginxArgv, nginxConfig } from './lib/nginx.js';
import { parseWrk, wrkArgv } from './lib/loadgen.js';
import {
  addMeshSample, checkLines, formatCpuSplit, formatMeshTable, formatPingCpu, meshChecks, meshJson, MESH_LABELS, MESH_LETTERS,
  MESH_SCENARIOS, MESH_WORKLOADS, newMeshResult, type CpuSplit, type MeshResult, type MeshScenario, type MeshWorkload,
} from './lib/meshreport.js';
import { Background, CLIENT_SLACK_MS, interrupted, log, onCleanup, requireRootAndTools, run } from './lib/proc.js';
import { parseSockperf, sockperfClientArgv, sockperfServerArgv } from './lib/sockperf.js';
import type { TunnelEndConfig } from './lib/tunnelend.js';

export interface MeshOptions {
  root: string;
  /** sockperf ping-pong run, seconds */
  seconds: number;
  /** iperf3 run, seconds */
  streamSeconds: number;
  /** wrk run, seconds */
  httpSeconds: number;
  /** wrk connections */
  connections: number;
  /** interleaved rounds; medians are reported */
  rounds: number;
  /** seconds of the unmeasured wrk run per scenario before the rounds (pools dialled, JIT warm) */
  warmup: number;
  /** seconds of the sockperf run under strace -c after the rounds (syscalls per round trip; 0: not counted) */
  syscallSeconds: number;
  scenarios: MeshScenario[];
  chartDir: string | null;
}

const TD = 'bench.local';
const CLIENT_ID = `spiffe://${TD}/ns/bench/sa/client`;
const SERVER_ID = `spiffe://${TD}/ns/bench/sa/server`;
/** the node identity the tunnel's server end presents, and the client checks against the node it dialled */
const NODE_ID = (n: string): string => nodeSpiffeId(TD, n);

/**
 * The workloads' ports. Each scenario reaches the server pod's `app` port (its own port `plain` for (d)); (c)'s client
 * sidecar listens on `sidecar` in the client pod and its server sidecar on `tls` in the server pod; (t)'s client end
 * listens on `tunnel` on n1's node address.
 */
const SERVICES = [
  { name: 'sockperf', app: 11111, plain: 11112, tls: 21111, sidecar: 31111, tunnel: 41111, vip: 1, plainVip: 11 },
  { name: 'iperf3', app: 5201, plain: 5202, tls: 25201, sidecar: 35201, tunnel: 45201, vip: 2, plainVip: 12 },
  { name: 'nginx', app: 8080, plain: 8081, tls: 28080, sidecar: 38080, tunnel: 48080, vip: 3, plainVip: 13 },
] as const;
type Service = (typeof SERVICES)[number];
const svc = (n: Service['name']): Service => SERVICES.find((s) => s.name === n)!;
/** (t)'s server end: not 15008, which (b)'s agent on n2 listens on. */
const TUNNEL_END_PORT = 15108;
/**
 * (c)'s TLS: 1.3 only, the cipher the tunnel negotiates, so that both pay for the same cipher. Both tunnel ends are
 * netio TLS (native/netio.cc), whose first choice is AES-128-GCM (unit/netio-tls checks it); until the tunnel left
 * node:tls it was AES-256-GCM, Node's first choice, and (c) used that.
 */
export const TLS_CIPHER = 'TLS_AES_128_GCM_SHA256';

const LISTEN_TIMEOUT_MS = 10_000;
/** After the agents are ready: time for them to find the pods of their cgroup trees (pod discovery follows within 1 s). */
const DISCOVERY_MS = 1500;

interface Ctx {
  opts: MeshOptions;
  workDir: string;
  cluster: Cluster;
  n1: ClusterNode;
  n2: ClusterNode;
  client: LabPod;
  server: LabPod;
  /** cgroups outside the meshed trees: the unmeshed clients, and the mesh processes of (c) and (t) per node */
  cg: { client: string; side1: string; side2: string; tun1: string; tun2: string; controlplane: string };
  maxMs: number;
  agents: Partial<Record<'n1' | 'n2', Agent>>;
  /** why the agents did not start ((b) and (d) are then not available) */
  agentsFailed?: string;
  /** the agent flags that get a node its certificates from the control plane's CA ((b)'s tunnel), when it runs */
  caFlags?: (node: string) => string[];
}

interface Scenario {
  result: MeshResult;
  /** the cgroup the clients run in: the client pod's (meshed: (b), (d)) or the unmeshed one */
  clientCgroup: string;
  /** where the client connects for a service */
  target(s: Service): { host: string; port: number };
  /** the cgroups of the mesh's processes on n1 (src) and n2 (dst); none for (a) */
  mesh?: { src: string; dst: string };
  setup(): Promise<void>;
  /** kernel counters (sm_global of n1's agent) read around each run; their deltas are the scenario's evidence */
  counters?(): Promise<Record<string, number>>;
  /** TLS handshakes the mesh has made so far (a tunnel's count), when it counts them */
  handshakes?(): Promise<number>;
}

const label = (s: Scenario): string => MESH_LABELS[s.result.name];

/** A server-side process in a cgroup and network namespace, up once its port listens. */
async function startListening(ctx: Ctx, name: string, cgroup: string, ns: string, argv: string[], port: number): Promise<Background> {
  const [cmd, args] = inCgroupNsenter(cgroup, ns, undefined, argv);
  const bg = new Background(name, cmd, args, ctx.maxMs);
  try {
    await waitListeningNs(ns, port, () => bg.running);
  } catch (e) {
    await bg.stop();
    throw new Error(`${name}: ${(e as Error).message}: ${bg.tail(3).replace(/\s*\n\s*/g, ' | ')}`);
  }
  return bg;
}

/** Wait until something listens on TCP `port` in the namespace `ns` (nsenter: lab namespaces are entered that way). */
async function waitListeningNs(ns: string, port: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + LISTEN_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!alive()) throw new Error(`exited before listening on port ${port}`);
    const r = await run('nsenter', [`--net=/run/netns/${ns}`, 'ss', '-Hltn', `sport = :${port}`], 5000);
    if (r.code === 0 && r.stdout.trim() !== '') return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`nothing listens on port ${port} in ${ns} after ${LISTEN_TIMEOUT_MS} ms`);
}

/** The server pod's servers: one of each on the `app` ports and one on the `plain` ports ((d)'s). */
async function startServers(ctx: Ctx): Promise<void> {
  const pod = ctx.server;
  const ip = pod.v4!;
  const dir = join(ctx.workDir, 'server');
  mkdirSync(dir);
  writeFileSync(join(dir, 'nginx.conf'), nginxConfig(dir, [[ip, svc('nginx').app], [ip, svc('nginx').plain]], 'mesh bench'));
  const start = (name: string, argv: string[], port: number) => startListening(ctx, `server ${name}`, pod.cgroup, pod.ns, argv, port);
  for (const port of [svc('sockperf').app, svc('sockperf').plain]) await start(`sockperf :${port}`, sockperfServerArgv(ip, port), port);
  // no -1: one server for every round's run, one after the other
  for (const port of [svc('iperf3').app, svc('iperf3').plain]) await start(`iperf3 :${port}`, ['iperf3', '-s', '-B', ip, '-p', String(port)], port);
  await start('nginx', nginxArgv(dir, join(dir, 'nginx.conf')), svc('nginx').app);
  await waitListeningNs(pod.ns, svc('nginx').plain, () => true);
}

function newScenario(ctx: Ctx, name: MeshScenario): Scenario {
  return {
    result: newMeshResult(name),
    clientCgroup: ctx.cg.client,
    target: (s) => ({ host: ctx.server.v4!, port: s.app }),
    setup: async () => {},
  };
}

/** What (b)'s part of the agents' config names: the nodes' tunnel addresses, the two pods as workloads. */
export interface MeshTopology {
  nodes: Array<{ name: string; address: string }>;
  /** cgroup: the pod's cgroup path from the cgroup2 root ('/...'), where the agent finds the client's identity */
  workloads: Array<{ name: string; identity: string; node: string; address: string; cgroup: string }>;
}

/**
 * The agents' config (both nodes, as a control plane would serve it): (d)'s services, `mtls: off`; with `mesh`, also
 * (b)'s: the nodes and workloads and the services at the mesh's default mode (permissive, as in Istio: tunnelled).
 */
export function meshAgentConfig(serverIp: string, mesh?: MeshTopology): string {
  const lines: string[] = [];
  if (mesh) {
    lines.push('nodes:', ...mesh.nodes.map((n) => `  - { name: ${n.name}, addresses: [${n.address}] }`));
    lines.push('workloads:', ...mesh.workloads.map((w) =>
      `  - { name: ${w.name}, identity: "${w.identity}", node: ${w.node}, addresses: [${w.address}], cgroups: ["${w.cgroup}"] }`));
  }
  lines.push('services:');
  const service = (name: string, vip: number, port: number, mtlsOff: boolean): void => {
    lines.push(`  - name: ${name}`, `    vips: [${Lab.vip4(vip)}]`, `    ports: [{ port: ${port}, protocol: tcp }]`,
      `    backends: [{ address: ${serverIp}, port: ${port} }]`, ...(mtlsOff ? ['    mtls: off'] : []));
  };
  for (const s of SERVICES) {
    if (mesh) service(s.name, s.vip, s.app, false);
    service(`${s.name}-plain`, s.plainVip, s.plain, true);
  }
  return lines.join('\n') + '\n';
}

/** (b)'s mesh: the two nodes at their node addresses, the client pod on n1 and the server pod on n2 as workloads. */
function meshTopology(ctx: Ctx): MeshTopology {
  const root = cgroup2Mount();
  return {
    nodes: [ctx.n1, ctx.n2].map((n) => ({ name: n.name, address: n.nodeV4 })),
    workloads: [
      { name: 'client', identity: CLIENT_ID, node: ctx.n1.name, address: ctx.client.v4!, cgroup: `/${relative(root, ctx.client.cgroup)}` },
      { name: 'server', identity: SERVER_ID, node: ctx.n2.name, address: ctx.server.v4!, cgroup: `/${relative(root, ctx.server.cgroup)}` },
    ],
  };
}

/** The control plane's CA API (in n1's node namespace, reached by both agents over the nodes' link). */
const CA_PORT = 18000;

/** sockmesh-controlplane with its CA (generated in the bench's directory) and a bootstrap token per node. */
async function startControlPlane(ctx: Ctx): Promise<void> {
  const dir = join(ctx.workDir, 'controlplane');
  mkdirSync(join(dir, 'services'), { recursive: true });
  // the CA issues a node only the identities of the workloads its model places there: the same config as the agents'
  writeFileSync(join(dir, 'services', 'mesh.yaml'), meshAgentConfig(ctx.server.v4!, meshTopology(ctx)));
  const tokens = [ctx.n1, ctx.n2].map((n) => [n.name, randomBytes(16).toString('hex')] as const);
  writeFileSync(join(dir, 'tokens'), tokens.map(([n, tok]) => `${tok} ${n}\n`).join(''), { mode: 0o600 });
  for (const [n, tok] of tokens) writeFileSync(join(dir, `${n}.token`), `${tok}\n`, { mode: 0o600 });
  const argv = [process.execPath, join(ctx.opts.root, 'dist', 'controlplane', 'main.js'), 'serve', '--dir', join(dir, 'services'),
    '--listen', `${ctx.n1.nodeV4}:${CA_PORT}`, '--ca-dir', join(dir, 'ca'), '--node-tokens', join(dir, 'tokens'), '--trust-domain', TD];
  await startListening(ctx, 'control plane (CA)', ctx.cg.controlplane, ctx.n1.netns, argv, CA_PORT);
  ctx.caFlags = (node) => ['--node-token-file', join(dir, `${node}.token`), '--ca-address', `${ctx.n1.nodeV4}:${CA_PORT}`, '--trust-domain', TD];
  log(`control plane CA on ${ctx.n1.nodeV4}:${CA_PORT} (n1's node namespace), a token per node`);
}

/** One agent per node, in its node's namespace and agent cgroup, meshing the node's pods cgroup. */
async function startAgents(ctx: Ctx): Promise<void> {
  const mesh = ctx.caFlags && meshTopology(ctx);
  for (const node of [ctx.n1, ctx.n2]) {
    // Registered before the start, so that Ctrl-C during start-up still unpins and detaches.
    onCleanup(`agent ${node.name} pins and links`, () => cleanupAgent(ctx.opts.root, node.bpffs, node.meshedCgroup));
    const agent = await Agent.start({
      root: ctx.opts.root, cgroupDir: node.meshedCgroup, bpffsDir: node.bpffs, configPath: join(ctx.workDir, `agent-${node.name}.yaml`),
      vip: '', port: 0, backend: '', configText: meshAgentConfig(ctx.server.v4!, mesh),
      extraArgs: ['--run-dir', node.runDir, ...node.nodeFlags(), '--metrics-listen', 'off', '--event-sample', '0', ...(ctx.caFlags?.(node.name) ?? [])],
      launch: (argv) => node.agentArgv(argv),
    });
    onCleanup(`agent ${node.name}`, () => agent.stop());
    ctx.agents[node.name as 'n1' | 'n2'] = agent;
    log(`agent ${node.name} ready (node netns ${node.netns}, cgroup ${node.meshedCgroup}, pins ${node.bpffs})`);
  }
  await new Promise((r) => setTimeout(r, DISCOVERY_MS));
}

/** `meshctl <args> --json` against a node's agent (its admin socket), parsed. */
async function meshctlJson<T>(ctx: Ctx, node: ClusterNode, args: string[]): Promise<T> {
  const r = await run(process.execPath, [join(ctx.opts.root, 'dist', 'cli', 'meshctl.js'), '--bpffs', node.bpffs, '--run-dir', node.runDir, ...args, '--json'], 20_000);
  if (r.code !== 0) throw new Error(`meshctl ${args.join(' ')}: exit ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim().slice(-300)}`);
  return JSON.parse(r.stdout) as T;
}

/** (b) and (d): the client pod (meshed) dials a VIP; the agents are the mesh on each node. */
function meshedScenario(ctx: Ctx, name: 'sockmesh' | 'plain', unavailable: () => Promise<string | undefined>): Scenario {
  const s = newScenario(ctx, name);
  s.clientCgroup = ctx.client.cgroup;
  s.target = name === 'plain' ? (x) => ({ host: Lab.vip4(x.plainVip), port: x.plain }) : (x) => ({ host: Lab.vip4(x.vip), port: x.app });
  s.mesh = { src: ctx.n1.agentCgroup, dst: ctx.n2.agentCgroup };
  s.setup = async () => {
    const why = ctx.agentsFailed ?? await unavailable();
    if (why) s.result.skipped = why;
  };
  // n1's kernel counters that moved during this scenario's runs (the two scenarios share the agents): whether the
  // VIP's connects were balanced (d) or handed to the tunnel (b) by the agent, and not taken some other path
  s.counters = async () => (ctx.agents.n1 ? ctx.agents.n1.counters() : {});
  return s;
}

/** (d): the client pod's connect() to the VIP is rewritten to the server pod on n2; plaintext. */
const plainScenario = (ctx: Ctx): Scenario => meshedScenario(ctx, 'plain', async () => undefined);

/** meshctl tunnels' report, with the kernel hand-over's part (agent/tunnelhandover.ts) where the agent has it. */
type HandoverReport = TunnelReport & { handover?: { accepted: number; tunnelled: number; refused: Record<string, number> } };

/** The kernel's count of connect()s handed to the tunnel (ABI v9, issue 13). */
const HANDOVER_COUNTER = 'SM_G_TUNNEL_HANDOVER';

/**
 * (b): the client pod's connect() to the VIP is handed to n1's agent, which tunnels it to n2's. Available when the
 * kernel can hand over (the ABI's hand-over counter) and n2's agent serves the tunnel (meshctl tunnels: listening).
 */
function sockmeshScenario(ctx: Ctx): Scenario {
  const s = meshedScenario(ctx, 'sockmesh', async () => {
    const names = globalCounterNames(readFileSync(join(ctx.opts.root, 'bpf', 'include', 'sockmesh_abi.h'), 'utf8'));
    if (!names.includes(HANDOVER_COUNTER)) return `the kernel hand-over of cross-node connections to the tunnel is not on this tree (no ${HANDOVER_COUNTER} in the ABI)`;
    if (!ctx.caFlags) return 'the agent has no --node-token-file (workload and node certificates from the CA)';
    // the certificates come from the CA after the agents' start: give them a moment
    let rep: TunnelReport & { state?: string } = { peers: [], refusals: { in: {}, out: {} } };
    for (const deadline = Date.now() + 15_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 250))) {
      rep = await meshctlJson<typeof rep>(ctx, ctx.n2, ['tunnels']);
      if (rep.listening?.length) return undefined;
    }
    return `n2's agent serves no HBONE tunnel after 15 s (meshctl tunnels: ${rep.state ?? 'listening on nothing'})`;
  });
  s.handshakes = async () => {
    const rep = await meshctlJson<HandoverReport>(ctx, ctx.n1, ['tunnels']);
    const out = rep.peers.filter((p) => p.direction === 'out');
    s.result.evidence.tunnelStreams = out.reduce((n, p) => n + p.streamsTotal, 0);
    // what n1's hand-over did with the connections the kernel gave it (a reset names its reason)
    if (rep.handover) {
      s.result.evidence['handover.accepted'] = rep.handover.accepted;
      s.result.evidence['handover.tunnelled'] = rep.handover.tunnelled;
      for (const [why, n] of Object.entries(rep.handover.refused)) s.result.evidence[`handover.reset.${why}`] = n;
    }
    for (const [why, n] of Object.entries(rep.refusals.out)) s.result.evidence[`tunnel.refused.${why}`] = n;
    return out.reduce((n, p) => n + p.handshakes, 0);
  };
  return s;
}

/** haproxy in TCP mode, one thread: (c)'s client sidecar (originates mTLS) or server sidecar (terminates it). */
export function sidecarConfig(side: 'client' | 'server', o: { serverIp: string; rootFile: string; pemFile: string }): string {
  const lines = [
    'global',
    '  nbthread 1',
    '  maxconn 4000',
    `  ssl-default-bind-ciphersuites ${TLS_CIPHER}`,
    `  ssl-default-server-ciphersuites ${TLS_CIPHER}`,
    '  ssl-default-bind-options ssl-min-ver TLSv1.3',
    '  ssl-default-server-options ssl-min-ver TLSv1.3',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 120s',
    '  timeout server 120s',
  ];
  for (const s of SERVICES) {
    if (side === 'client') {
      // the app dials its own pod's loopback, as with an outbound sidecar; the server's chain is verified
      lines.push(`listen out_${s.name}`, `  bind 127.0.0.1:${s.sidecar}`,
        `  server up ${o.serverIp}:${s.tls} ssl verify required ca-file ${o.rootFile} crt ${o.pemFile}`);
    } else {
      lines.push(`listen in_${s.name}`, `  bind ${o.serverIp}:${s.tls} ssl crt ${o.pemFile} ca-file ${o.rootFile} verify required`,
        `  server app ${o.serverIp}:${s.app}`);
    }
  }
  return lines.join('\n') + '\n';
}

function sidecarScenario(ctx: Ctx, certs: () => ReturnType<typeof makeBenchCerts>): Scenario {
  const s = newScenario(ctx, 'sidecars');
  s.target = (x) => ({ host: '127.0.0.1', port: x.sidecar });
  s.mesh = { src: ctx.cg.side1, dst: ctx.cg.side2 };
  s.setup = async () => {
    const c = certs();
    const serverIp = ctx.server.v4!;
    const files = { server: join(ctx.workDir, 'sidecar-server.cfg'), client: join(ctx.workDir, 'sidecar-client.cfg') };
    writeFileSync(files.server, sidecarConfig('server', { serverIp, rootFile: c.rootFile, pemFile: c.pemFile('server') }));
    writeFileSync(files.client, sidecarConfig('client', { serverIp, rootFile: c.rootFile, pemFile: c.pemFile('client') }));
    await startListening(ctx, '(c) server sidecar', ctx.cg.side2, ctx.server.ns, ['haproxy', '-db', '-f', files.server], svc('nginx').tls);
    await startListening(ctx, '(c) client sidecar', ctx.cg.side1, ctx.client.ns, ['haproxy', '-db', '-f', files.client], svc('nginx').sidecar);
  };
  return s;
}

/** (t): the tunnel's two ends as bench processes where the agents run (node namespaces), outside the meshed trees. */
function tunnelScenario(ctx: Ctx, certs: () => ReturnType<typeof makeBenchCerts>): Scenario {
  const s = newScenario(ctx, 'tunnel');
  s.target = (x) => ({ host: ctx.n1.nodeV4, port: x.tunnel });
  s.mesh = { src: ctx.cg.tun1, dst: ctx.cg.tun2 };
  let clientEnd: Background | undefined;
  s.setup = async () => {
    const c = certs();
    const entry = join(ctx.opts.root, 'dist', 'bench', 'lib', 'tunnelend.js');
    const nodeId = NODE_ID(ctx.n2.name);
    const server: TunnelEndConfig = {
      role: 'server', identity: nodeId, material: [c.material.get(nodeId)!], address: ctx.n2.nodeV4, port: TUNNEL_END_PORT, local: [ctx.server.v4!],
    };
    const client: TunnelEndConfig = {
      role: 'client', source: CLIENT_ID, material: [c.material.get(CLIENT_ID)!], address: ctx.n1.nodeV4,
      routes: SERVICES.map((x) => ({ listen: x.tunnel, dst: { address: ctx.server.v4!, port: x.app } })),
      node: { name: ctx.n2.name, address: ctx.n2.nodeV4, port: TUNNEL_END_PORT },
    };
    const start = async (name: string, cgroup: string, ns: string, cfg: TunnelEndConfig): Promise<Background> => {
      const file = join(ctx.workDir, `tunnelend-${cfg.role}.json`);
      writeFileSync(file, JSON.stringify(cfg), { mode: 0o600 });
      const [cmd, args] = inCgroupNsenter(cgroup, ns, undefined, [process.execPath, entry, file]);
      const bg = new Background(name, cmd, args, ctx.maxMs);
      await bg.waitForLine((l) => l.includes('"ready"'), LISTEN_TIMEOUT_MS);
      return bg;
    };
    await start('(t) tunnel server end', ctx.cg.tun2, ctx.n2.netns, server);
    clientEnd = await start('(t) tunnel client end', ctx.cg.tun1, ctx.n1.netns, client);
  };
  s.handshakes = async () => {
    const end = clientEnd!;
    const line = end.waitForLine((l) => l.includes('"report"'), 5000);
    process.kill(end.child.pid!, 'SIGUSR2');
    const r = JSON.parse(await line) as { out: { handshakes: number; streamsTotal: number } };
    s.result.evidence.tunnelStreams = r.out.streamsTotal;
    return r.out.handshakes;
  };
  return s;
}

// ---- CPU accounting ----

interface CpuSnap { at: number; cg: Record<string, number>; machine: number; softirq: number }

/** usage_usec of a cgroup (its whole subtree), in seconds; 0 when it does not exist (any more). */
function cgroupCpu(dir: string): number {
  try {
    const m = /^usage_usec (\d+)$/m.exec(readFileSync(join(dir, 'cpu.stat'), 'utf8'));
    return m ? Number(m[1]) / 1e6 : 0;
  } catch {
    return 0;
  }
}

/** Busy and softirq CPU-seconds of the whole machine (/proc/stat's first line). */
function machineCpu(): { busy: number; softirq: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user already)
  const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
  return { busy: busy / clockTicks(), softirq: f[6]! / clockTicks() };
}

function snap(groups: Record<string, string>): CpuSnap {
  const m = machineCpu();
  return { at: performance.now(), cg: Object.fromEntries(Object.entries(groups).map(([k, d]) => [k, cgroupCpu(d)])), machine: m.busy, softirq: m.softirq };
}

function split(a: CpuSnap, b: CpuSnap): CpuSplit {
  const wall = (b.at - a.at) / 1000;
  const pct = (x: number) => (x / wall) * 100;
  const d = (k: string) => (k in a.cg ? pct(b.cg[k]! - a.cg[k]!) : 0);
  return { client: d('client'), src: d('src'), dst: d('dst'), server: d('server'), softirq: pct(b.softirq - a.softirq), machine: pct(b.machine - a.machine) };
}

/** Resident memory of every process in a cgroup subtree, MiB. */
function cgroupRssMiB(dir: string): number {
  let kib = 0;
  const walk = (d: string): void => {
    for (const pid of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
      try {
        const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
        if (m) kib += Number(m[1]);
      } catch { /* gone */ }
    }
  };
  walk(dir);
  return kib / 1024;
}

// ---- the runs ----

type ClientRun = (argv: string[], maxMs: number, what: string) => Promise<{ stdout: string; stderr: string }>;

/** One client run in a scenario; its CPU split into the result. Errors mark the workload failed. */
async function measure(ctx: Ctx, s: Scenario, w: MeshWorkload, keep: boolean, fn: (client: ClientRun) => Promise<number | void>): Promise<{ cpu: CpuSplit; seconds: number } | undefined> {
  if (interrupted() || s.result.skipped || s.result.errors[w]) return undefined;
  const groups: Record<string, string> = { client: s.clientCgroup, server: ctx.server.cgroup, ...(s.mesh ?? {}) };
  const client: ClientRun = async (argv, maxMs, what) => {
    const [cmd, args] = inCgroupNsenter(s.clientCgroup, ctx.client.ns, undefined, argv);
    const r = await run(cmd, args, maxMs);
    if (r.code !== 0) {
      const why = r.timedOut ? `timed out after ${maxMs} ms` : `exit ${r.code ?? r.signal}`;
      throw new Error(`${what}: ${why}: ${(r.stderr || r.stdout).trim().slice(-300)}`);
    }
    return r;
  };
  try {
    const k0 = s.counters ? await s.counters() : undefined;
    const a = snap(groups);
    const gbps = await fn(client);
    const b = snap(groups);
    if (!keep) return undefined;
    if (k0) {
      for (const [k, v] of Object.entries(await s.counters!())) {
        const d = v - (k0[k] ?? 0);
        if (d !== 0) s.result.evidence[`n1.${k}`] = Number(s.result.evidence[`n1.${k}`] ?? 0) + d;
      }
    }
    const c = split(a, b);
    (s.result.cpu[w] ??= []).push(c);
    if (typeof gbps === 'number' && s.mesh) s.result.meshCpuPerGbps.push((c.src + c.dst) / 100 / gbps);
    return { cpu: c, seconds: (b.at - a.at) / 1000 };
  } catch (e) {
    s.result.errors[w] = (e as Error).message.split('\n')[0]!;
    if (!interrupted()) log(`${label(s)} ${w} failed: ${(e as Error).message}`);
    return undefined;
  }
}

async function pingpong(ctx: Ctx, s: Scenario, r: number): Promise<void> {
  const { opts } = ctx;
  const t = s.target(svc('sockperf'));
  let roundTrips = 0;
  const m = await measure(ctx, s, 'pingpong', true, async (client) => {
    const out = await client(sockperfClientArgv(t.host, t.port, opts.seconds, 64), opts.seconds * 1000 + CLIENT_SLACK_MS, 'sockperf');
    const lat = parseSockperf(out.stdout + '\n' + out.stderr);
    roundTrips = lat.roundTrips ?? lat.observations;
    addMeshSample(s.result, 'pingP50', lat.p50);
    addMeshSample(s.result, 'pingP99', lat.p99);
    log(`round ${r + 1} ${label(s)} ping-pong 64 B: p50 ${lat.p50} µs, p99 ${lat.p99} µs`);
  });
  // where a round trip's time goes: each part's CPU over the run divided by the round trips it made (the replies of
  // sockperf's whole run, its warm-up included); the parts run one after the other, so they add up to most of an RTT
  if (m && roundTrips > 0) {
    const perRt = (pct: number): number => (pct / 100) * m.seconds * 1e6 / roundTrips;
    const c = { client: perRt(m.cpu.client), src: perRt(m.cpu.src), dst: perRt(m.cpu.dst), server: perRt(m.cpu.server), softirq: perRt(m.cpu.softirq) };
    s.result.pingCpuUs.push(c);
    if (s.mesh) log(`round ${r + 1} ${label(s)} ping-pong CPU per round trip: mesh src ${c.src.toFixed(1)} µs, dst ${c.dst.toFixed(1)} µs`);
  }
}

/** The pids of the processes in a cgroup and its descendants. */
function cgroupPids(dir: string): number[] {
  const out: number[] = [];
  const walk = (d: string): void => {
    try {
      for (const l of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n')) if (l) out.push(Number(l));
      for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
    } catch { /* gone */ }
  };
  walk(dir);
  return out;
}

/** `strace -c` summary (its table) -> calls and errors per syscall */
export function parseStraceSummary(text: string): { calls: Record<string, number>; errors: number } {
  const calls: Record<string, number> = {};
  let errors = 0;
  for (const line of text.split('\n')) {
    // % time     seconds  usecs/call     calls    errors syscall
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+)?\s*([a-z_0-9]+)\s*$/.exec(line);
    if (!m || m[3] === 'total') continue;
    calls[m[3]!] = (calls[m[3]!] ?? 0) + Number(m[1]);
    errors += Number(m[2] ?? 0);
  }
  return { calls, errors };
}

/**
 * Information, after the measured rounds: the syscalls of the mesh's processes per 64 B round trip, counted by
 * `strace -c -f` attached to every process of each node's mesh cgroup during a short sockperf run (strace slows them:
 * its figures are counts, not times). The futex and other calls of Node's helper threads are counted too.
 */
async function pingSyscalls(ctx: Ctx, s: Scenario): Promise<void> {
  if (!s.mesh || s.result.skipped || s.result.errors.pingpong || interrupted()) return;
  const seconds = ctx.opts.syscallSeconds;
  if (seconds <= 0) return;
  const files = { src: join(ctx.workDir, `strace-${s.result.name}-src.txt`), dst: join(ctx.workDir, `strace-${s.result.name}-dst.txt`) };
  const tracers: Background[] = [];
  try {
    for (const side of ['src', 'dst'] as const) {
      const pids = cgroupPids(s.mesh[side]);
      if (pids.length === 0) throw new Error(`no process in ${s.mesh[side]}`);
      tracers.push(new Background(`strace ${label(s)} ${side}`, 'strace', ['-c', '-f', '-q', '-o', files[side], ...pids.flatMap((p) => ['-p', String(p)])], seconds * 1000 + 60_000));
    }
    await new Promise((r) => setTimeout(r, 1000)); // attached
    const t = s.target(svc('sockperf'));
    const [cmd, args] = inCgroupNsenter(s.clientCgroup, ctx.client.ns, undefined, sockperfClientArgv(t.host, t.port, seconds, 64));
    const r = await run(cmd, args, seconds * 1000 + CLIENT_SLACK_MS);
    if (r.code !== 0) throw new Error(`sockperf: exit ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim().slice(-200)}`);
    const lat = parseSockperf(r.stdout + '\n' + r.stderr);
    const roundTrips = lat.roundTrips ?? lat.observations;
    for (const tr of tracers.splice(0)) await tr.stop('SIGINT');
    const per = (f: string) => {
      const { calls, errors } = parseStraceSummary(readFileSync(f, 'utf8'));
      const each = Object.fromEntries(Object.entries(calls).map(([k, n]) => [k, Math.round((n / roundTrips) * 100) / 100]));
      return { total: Object.values(calls).reduce((a, b) => a + b, 0) / roundTrips, errors: errors / roundTrips, calls: each };
    };
    s.result.pingSyscalls = { src: per(files.src), dst: per(files.dst), roundTrips };
    log(`${label(s)} syscalls per 64 B round trip (strace, ${roundTrips} round trips): src ${s.result.pingSyscalls.src.total.toFixed(1)}, dst ${s.result.pingSyscalls.dst.total.toFixed(1)}`);
  } catch (e) {
    s.result.evidence['syscalls.error'] = (e as Error).message.split('\n')[0]!;
    log(`${label(s)} syscall count failed: ${(e as Error).message}`);
  } finally {
    for (const tr of tracers) await tr.stop('SIGINT');
  }
}

async function stream(ctx: Ctx, s: Scenario, r: number): Promise<void> {
  const { opts } = ctx;
  const t = s.target(svc('iperf3'));
  await measure(ctx, s, 'iperf3', true, async (client) => {
    const out = await client(iperf3ClientArgv(t.host, t.port, opts.streamSeconds), opts.streamSeconds * 1000 + CLIENT_SLACK_MS, 'iperf3');
    const st = parseIperf3(out.stdout);
    addMeshSample(s.result, 'streamGbps', st.gbps);
    log(`round ${r + 1} ${label(s)} iperf3: ${st.gbps.toFixed(2)} Gbit/s`);
    return st.gbps;
  });
}

async function http(ctx: Ctx, s: Scenario, r: number, seconds: number, keep: boolean): Promise<void> {
  const t = s.target(svc('nginx'));
  await measure(ctx, s, 'wrk', keep, async (client) => {
    const out = await client(wrkArgv(`http://${t.host}:${t.port}/`, ctx.opts.connections, seconds), seconds * 1000 + CLIENT_SLACK_MS, 'wrk');
    const h = parseWrk(out.stdout);
    if (h.errors > 0) throw new Error(`wrk: ${h.errorDetail}`);
    if (h.requests === 0) throw new Error('wrk: no request answered');
    if (!keep) return;
    addMeshSample(s.result, 'httpRps', h.rps);
    addMeshSample(s.result, 'httpP99', h.p99);
    log(`round ${r + 1} ${label(s)} wrk: ${h.rps.toFixed(0)} req/s, p99 ${h.p99} µs`);
  });
}

const preflight = (): Promise<void> => requireRootAndTools('mesh', 'netns, veths, cgroups, BPF',
  ['ip', 'ss', 'nsenter', 'sockperf', 'iperf3', 'wrk', 'nginx', 'haproxy', 'openssl', 'bpftool']);

/** Runs the bench, prints the table, the checks and (last line) the JSON; returns the exit status. */
export async function runMesh(opts: MeshOptions): Promise<number> {
  await preflight();
  const { id, cgroup, workDir } = benchWorkspace();
  const perRound = (opts.seconds + opts.streamSeconds + opts.httpSeconds) * 1000 + 3 * CLIENT_SLACK_MS;
  const maxMs = opts.scenarios.length * (opts.rounds * perRound + opts.warmup * 1000) + 180_000;
  const prefix = `mb${process.pid}`;
  // down() before the bench cgroup goes (cleanups run last-registered first); also after a failed up()
  onCleanup(`cluster ${prefix}`, () => Cluster.sweep(prefix));
  const cluster = await Cluster.up({
    prefix, cgroupRoot: cgroup,
    nodes: [{ name: 'n1', pods: [{ name: 'client', v6: false }] }, { name: 'n2', pods: [{ name: 'server', v6: false }] }],
  });
  onCleanup(`cluster ${prefix} down`, () => cluster.down());
  const n1 = cluster.node('n1'), n2 = cluster.node('n2');
  const plain = createChildCgroup(cgroup, 'plain');
  const ctx: Ctx = {
    opts, workDir, cluster, n1, n2, client: n1.lab.pod('client'), server: n2.lab.pod('server'), maxMs, agents: {},
    cg: {
      client: createChildCgroup(plain, 'client'), side1: createChildCgroup(plain, 'sidecar-n1'), side2: createChildCgroup(plain, 'sidecar-n2'),
      tun1: createChildCgroup(plain, 'tunnel-n1'), tun2: createChildCgroup(plain, 'tunnel-n2'), controlplane: createChildCgroup(plain, 'controlplane'),
    },
  };
  log(`cgroup ${cgroup}, cluster ${prefix} (n1 ${n1.nodeV4}: client pod ${ctx.client.v4}; n2 ${n2.nodeV4}: server pod ${ctx.server.v4}); ` +
    `${opts.rounds} rounds: sockperf -t ${opts.seconds}, iperf3 -t ${opts.streamSeconds}, wrk -c${opts.connections} -d ${opts.httpSeconds}; ` +
    `every process bounded (${Math.round(maxMs / 1000)} s at most)`);
  // Each pod's infrastructure process (the pause container's part): the agents find the pods' namespaces in their
  // cgroup trees whoever else comes and goes.
  for (const p of [ctx.client, ctx.server]) new Background(`${p.name} pause`, ...p.argv('sleep', [String(Math.ceil(maxMs / 1000))]), maxMs);
  await startServers(ctx);
  if (opts.scenarios.some((n) => n === 'sockmesh' || n === 'plain')) {
    try {
      if (!existsSync(agentEntry(opts.root))) throw new Error(`agent not built (${agentEntry(opts.root)} missing)`);
      // (b)'s certificates: the real CA, the agents authenticated by their node tokens (an agent without the flag
      // cannot run (b); (d) runs anyway)
      const help = await run(process.execPath, [agentEntry(opts.root), '--help'], 20_000);
      if (opts.scenarios.includes('sockmesh') && /--node-token-file\b/.test(help.stdout)) await startControlPlane(ctx);
      await startAgents(ctx);
    } catch (e) {
      ctx.agentsFailed = `the agents did not start: ${(e as Error).message.split('\n').slice(0, 3).join(' | ')}`;
      log(ctx.agentsFailed);
    }
  }

  let certs: ReturnType<typeof makeBenchCerts> | undefined;
  const getCerts = () => (certs ??= makeBenchCerts(join(workDir, 'certs'), [
    { name: 'client', identity: CLIENT_ID }, { name: 'server', identity: SERVER_ID }, { name: 'node-n2', identity: NODE_ID('n2') },
  ]));
  const makers: Record<MeshScenario, () => Scenario> = {
    direct: () => newScenario(ctx, 'direct'),
    sockmesh: () => sockmeshScenario(ctx),
    sidecars: () => sidecarScenario(ctx, getCerts),
    plain: () => plainScenario(ctx),
    tunnel: () => tunnelScenario(ctx, getCerts),
  };
  const scenarios = MESH_SCENARIOS.filter((n) => opts.scenarios.includes(n)).map((n) => makers[n]());
  for (const s of scenarios) {
    if (interrupted()) break;
    try {
      await s.setup();
      if (s.result.skipped) log(`${label(s)} not available: ${s.result.skipped}`);
    } catch (e) {
      s.result.skipped = `setup failed: ${(e as Error).message.split('\n')[0]}`;
      if (!interrupted()) log(`${label(s)} setup failed: ${(e as Error).message}`);
    }
  }
  const started = Date.now();
  const active = () => scenarios.filter((s) => !s.result.skipped);
  // Warm-up: every path carries traffic once (the tunnel's pooled connection is dialled, Node's JIT warm), unmeasured.
  for (const s of active()) await http(ctx, s, -1, opts.warmup, false);
  const hs0 = new Map<Scenario, number>();
  for (const s of active()) {
    if (!s.handshakes) continue;
    try { hs0.set(s, await s.handshakes()); } catch (e) { log(`${label(s)} handshake count: ${(e as Error).message}`); }
  }
  for (let r = 0; r < opts.rounds && !interrupted(); r++) {
    const k = r % Math.max(1, scenarios.length);
    const order = [...scenarios.slice(k), ...scenarios.slice(0, k)].filter((s) => !s.result.skipped);
    for (const s of order) await pingpong(ctx, s, r);
    for (const s of order) await stream(ctx, s, r);
    for (const s of order) await http(ctx, s, r, opts.httpSeconds, true);
  }
  for (const s of active()) {
    try {
      if (s.handshakes && hs0.has(s)) s.result.handshakes = (await s.handshakes()) - hs0.get(s)!;
      if (s.mesh) s.result.rssMiB = { src: cgroupRssMiB(s.mesh.src), dst: cgroupRssMiB(s.mesh.dst) };
      // (b) and (d) through the agent or not at all: a VIP whose connects n1's kernel did not balance was reached
      // some other way, and its figures are not the mesh's
      const moved = (k: string): number => Number(s.result.evidence[`n1.${k}`] ?? 0);
      const wrong = s.result.name === 'plain'
        ? (moved('SM_G_LB_CONNECT') > 0 ? (moved(HANDOVER_COUNTER) > 0 ? `${HANDOVER_COUNTER} moved: (d)'s connects were tunnelled` : undefined)
          : 'n1\'s agent balanced no connect() to the VIP during the runs (SM_G_LB_CONNECT did not move)')
        : s.result.name === 'sockmesh' && !(moved(HANDOVER_COUNTER) > 0) ? `n1's kernel handed no connect() to the tunnel during the runs (${HANDOVER_COUNTER} did not move)` : undefined;
      if (wrong) for (const w of MESH_WORKLOADS) s.result.errors[w] ??= wrong;
    } catch (e) {
      s.result.evidence.error = (e as Error).message.split('\n')[0]!;
    }
  }
  // information, not timed: after every measured run and count (strace slows what it traces)
  for (const s of active()) await pingSyscalls(ctx, s);
  for (const [n, a] of Object.entries(ctx.agents)) if (!a.running) throw new Error(`agent ${n} exited during the run: ${a.tail(3)}`);
  const signal = interrupted();
  if (signal) throw new Error(`interrupted by ${signal}: no results`);
  log(`measured in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const load = loadavg().map((l) => Number(l.toFixed(2)));
  const results = scenarios.map((s) => s.result);
  const checks = meshChecks(results, 'sockmesh');
  const info = results.some((r) => r.name === 'tunnel' && !r.skipped) ? meshChecks(results, 'tunnel') : [];
  const out: string[] = [];
  out.push(`mesh bench — kernel ${release()}, ${availableParallelism()} CPUs (${cpus()[0]?.model ?? '?'}); a client pod on node n1, a server pod ` +
    'on node n2 of the multi-node lab (two node namespaces routed over a veth), one agent per node; ' +
    `load average ${load.join(' ')} at the end (the machine's other users show in the CPU splits' "machine")`);
  out.push(`medians of ${opts.rounds} interleaved rounds; nothing pinned; iperf3 one stream ${opts.streamSeconds} s; sockperf ping-pong 64 B ` +
    `${opts.seconds} s, one-way µs (RTT/2); wrk -t1 -c${opts.connections} ${opts.httpSeconds} s against nginx (1 worker), keep-alive`);
  out.push(`cipher: TLS 1.3 ${TLS_CIPHER} in (b), (c) and (t); (b), (t): netio TLS at both tunnel ends; ` +
    '(c): haproxy 1 thread per pod, TCP mode, mutual (verify required, one root); mesh CPU per Gbit/s: ' +
    'CPU-seconds of the mesh\'s processes (agents, sidecars, tunnel ends; both nodes) per Gbit carried during iperf3 (= cores per Gbit/s)');
  if (results.some((r) => r.name === 'tunnel')) {
    out.push('* (t) is information, not a scenario of the issue: agent/tunnel\'s TunnelClient + TunnelServer as bench processes in the ' +
      'node namespaces, the client pod dialling n1\'s node address (no kernel hand-over); one pooled mTLS HTTP/2 connection');
  }
  out.push('');
  out.push(formatMeshTable(results));
  out.push('');
  for (const r of results) {
    const ev = Object.entries(r.evidence);
    if (ev.length || r.handshakes !== undefined) {
      out.push(`${MESH_LABELS[r.name]} evidence: ${[...(r.handshakes !== undefined ? [`handshakes=${r.handshakes}`] : []), ...ev.map(([k, v]) => `${k}=${v}`)].join(' ')}`);
    }
    for (const [w, e] of Object.entries(r.errors)) out.push(`${MESH_LABELS[r.name]} ${w} failed: ${e}`);
  }
  out.push('CPU during iperf3 (median % of one CPU):', ...formatCpuSplit(results, 'iperf3'));
  out.push('CPU per 64 B round trip during sockperf (median µs of CPU; src/dst: the mesh\'s processes on each node; syscalls: ' +
    'strace -c of them in a separate run after the rounds):', ...formatPingCpu(results));
  out.push(...checkLines(checks, results));
  out.push(...checkLines(info, results, 'INFO '));
  process.stdout.write(out.join('\n') + '\n');

  // A target not measured (a scenario skipped or failed, or left out with --only) is not a pass.
  const failedRun = results.some((r) => r.skipped || Object.keys(r.errors).length > 0) || checks.some((c) => c.status === 'SKIP');
  const missed = checks.some((c) => c.status === 'FAIL');
  const summary = {
    bench: 'mesh',
    kernel: release(),
    cpus: availableParallelism(),
    cgroup2: cgroup2Mount(),
    loadavg: load,
    letters: MESH_LETTERS,
    units: { streamGbps: 'Gbit/s', pingP50: 'us one-way (sockperf RTT/2)', pingP99: 'us one-way', httpRps: 'req/s', httpP99: 'us', meshCpuPerGbps: 'CPU-s per Gbit', rssMiB: 'MiB', cpu: '% of one CPU' },
    seconds: opts.seconds, streamSeconds: opts.streamSeconds, httpSeconds: opts.httpSeconds, connections: opts.connections, rounds: opts.rounds,
    tls: { version: 'TLSv1.3', cipher: TLS_CIPHER },
    ...meshJson(results, checks, info),
    ok: !failedRun && !missed,
  };
  await emitResult(summary, opts.chartDir);
  return failedRun ? 1 : missed ? 2 : 0;
}
