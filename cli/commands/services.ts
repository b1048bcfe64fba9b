// meshctl services: each frontend (service, VIP:port/proto, algorithm, affinity) with its backends underneath.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { FrontendReport } from '../../agent/admin/protocol.js';
import { labelBackends, podNamesOf } from '../../agent/identity/podns.js';
import type { Context } from '../context.js';
import { duration, hostport, humanBytes, humanCount, percent } from '../format.js';
import { measure, renderTable, type Column, type Row } from '../table.js';
import type { Style } from '../style.js';
import { upstreamText } from './routes.js';

export async function services(ctx: Context): Promise<void> {
  // The agent names the pods and counts fast-path connections; from the pins, meshctl does the same itself.
  const cgroup = ctx.state()?.cgroup;
  const { value } = await ctx.fromAgentOrPins<FrontendReport[]>('/v1/services', (r, names) => {
    const list = r.frontends(names);
    if (!cgroup) return list;
    return labelBackends(list, existsSync(join(ctx.bpffs, 'sm_sockets')) ? r.sockets() : [], podNamesOf(cgroup, r.n));
  });
  ctx.print(value, () => renderServices(value, ctx.style));
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
