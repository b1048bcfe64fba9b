// meshctl services: each frontend (service, VIP:port/proto, algorithm, affinity) with its backends underneath.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { FrontendReport, KubeReport, Unserved } from '../../agent/admin/protocol.js';
import { labelBackends, podNamesOf } from '../../agent/identity/podns.js';
import type { Context } from '../context.js';
import { duration, hostport, humanBytes, humanCount, percent } from '../format.js';
import { measure, renderTable, type Column, type Row } from '../table.js';
import type { Style } from '../style.js';
import { upstreamText } from './routes.js';

export async function services(ctx: Context): Promise<void> {
  // The agent names the pods and counts fast-path connections; from the pins, meshctl does the same itself.
  const cgroup = ctx.state()?.cgroup;
  const { value, source } = await ctx.fromAgentOrPins<FrontendReport[]>('/v1/services', (r, names) => {
    const list = r.frontends(names);
    if (!cgroup) return list;
    return labelBackends(list, existsSync(join(ctx.bpffs, 'sm_sockets')) ? r.sockets() : [], podNamesOf(cgroup, r.n));
  });
  // With Kubernetes, what is not served too (headless, ExternalName: no VIP; NodePort/LoadBalancer/externalIPs parts).
  // Text only: --json keeps its shape (the frontends); the list is GET /v1/kubernetes.
  const kube = source === 'agent' && !ctx.json ? await kubeReport(ctx) : null;
  ctx.print(value, () => [...renderServices(value, ctx.style), ...(kube ? renderUnserved(kube, ctx.style) : [])]);
}

async function kubeReport(ctx: Context): Promise<KubeReport | null> {
  try {
    return await ctx.client.get<KubeReport>('/v1/kubernetes');
  } catch {
    return null; // no Kubernetes source (404), or an agent older than it
  }
}

const UNSERVED_KIND: Record<Unserved['kind'], string> = {
  'headless': 'headless (no VIP)', 'external-name': 'ExternalName (no VIP)', 'node-port': 'NodePort: not served',
  'load-balancer': 'LoadBalancer: not served', 'external-ips': 'externalIPs: not served', 'sctp': 'SCTP: not served',
  'other-proxy': 'another proxy\'s', 'no-cluster-ip': 'no cluster IP', 'invalid': 'invalid',
};

/**
 * The Kubernetes services (or parts) with nothing in the kernel. With --kube-pods the services come over xDS: the
 * control plane knows what it does not serve (its /v1/kubernetes), the agent does not.
 */
export function renderUnserved(k: KubeReport, style: Style): string[] {
  if (k.status.mode === 'pods') return ['', style.dim('kubernetes: services come from the control plane; what it does not serve is on its status endpoint (/v1/kubernetes)')];
  if (k.unserved.length === 0) return [];
  const rows: Row[] = [...k.unserved]
    .sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`) || a.kind.localeCompare(b.kind))
    .map((u) => [`${u.namespace}/${u.name}`, UNSERVED_KIND[u.kind] ?? u.kind, u.reason]);
  return ['', style.bold('not served by sockmesh (Kubernetes)'), ...renderTable([{ header: 'SERVICE' }, { header: 'WHAT' }, { header: 'WHY' }], rows, { indent: '  ', style })];
}

const BACKEND_COLUMNS: Column[] = [
  { header: 'BACKEND' }, { header: 'POD' }, { header: 'WEIGHT', align: 'right' }, { header: 'SHARE', align: 'right' }, { header: 'STATE' },
  { header: 'LOCAL' }, { header: 'CONNS', align: 'right' }, { header: 'FAST PATH', align: 'right' }, { header: 'UDP MSGS', align: 'right' },
  { header: 'REDIRECTS', align: 'right' }, { header: 'REDIRECTED', align: 'right' },
];

export function renderServices(frontends: FrontendReport[], style: Style): string[] {
  if (frontends.length === 0) return ['no services configured'];
  // UDP columns only earn their place when some frontend is UDP.
  const udp = frontends.some((f) => f.protocol === 'udp');
  // POD when some backend is a known local pod; FAST PATH when the answer counted fast-path connections
  const pods = frontends.some((f) => f.backends.some((b) => b.pod));
  const fast = frontends.some((f) => f.backends.some((b) => b.fastPath !== undefined));
  const cols = BACKEND_COLUMNS.filter((c) => (udp || c.header !== 'UDP MSGS') && (pods || c.header !== 'POD') && (fast || c.header !== 'FAST PATH'));
  const rowsOf = (f: FrontendReport): Row[] => f.backends.map((b) => [
    hostport(b.address, b.port), ...(pods ? [b.pod || '-'] : []), String(b.weight), percent(b.share),
    b.state === 'active' ? style.green(b.state) : style.yellow(b.state), b.local ? 'yes' : 'no',
    humanCount(b.counters.connections), ...(fast ? [humanCount(b.fastPath ?? 0)] : []), ...(udp ? [humanCount(b.counters.udpMessages)] : []),
    humanCount(b.counters.redirects), humanBytes(b.counters.redirectBytes),
  ]);
  const groups = frontends.map((f) => ({ f, rows: rowsOf(f) }));
  // One width per column across every frontend, so the backend tables line up under each other.
  const widths = measure(cols, ...groups.map((g) => g.rows));
  const out: string[] = [];
  for (const [i, { f, rows }] of groups.entries()) {
    if (i > 0) out.push('');
    const affinity = f.affinityTimeoutSeconds ? `affinity ${duration(f.affinityTimeoutSeconds)}` : 'no affinity';
    const table = f.tableSize ? `${f.tableSize} slots` : 'no table';
    const l7 = f.l7 ? `  ${style.bold('L7')} ${f.l7}${f.upstreamProtocol ? ` upstream ${upstreamText(f.upstreamProtocol)}` : ''}` : '';
    out.push(`${style.bold(f.service)}  ${hostport(f.vip, f.port)}/${f.protocol}${l7}  ${f.algorithm}  ${affinity}  ${style.dim(table)}`);
    if (rows.length === 0) out.push(`  ${style.yellow('no backends')}: connections to this VIP are refused`);
    else out.push(...renderTable(cols, rows, { indent: '  ', widths, style }));
  }
  return out;
}
