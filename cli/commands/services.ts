// meshctl services: each frontend (service, VIP:port/proto, algorithm, affinity) with its backends underneath.
import type { FrontendReport } from '../../agent/admin/protocol.js';
import type { Context } from '../context.js';
import { duration, hostport, humanBytes, humanCount, percent } from '../format.js';
import { measure, renderTable, type Column, type Row } from '../table.js';
import type { Style } from '../style.js';
import { upstreamText } from './routes.js';

export async function services(ctx: Context): Promise<void> {
  const { value } = await ctx.fromAgentOrPins<FrontendReport[]>('/v1/services', (r, names) => r.frontends(names));
  ctx.print(value, () => renderServices(value, ctx.style));
}

const BACKEND_COLUMNS: Column[] = [
  { header: 'BACKEND' }, { header: 'WEIGHT', align: 'right' }, { header: 'SHARE', align: 'right' }, { header: 'STATE' },
  { header: 'LOCAL' }, { header: 'CONNS', align: 'right' }, { header: 'UDP MSGS', align: 'right' },
  { header: 'REDIRECTS', align: 'right' }, { header: 'REDIRECTED', align: 'right' },
];

export function renderServices(frontends: FrontendReport[], style: Style): string[] {
  if (frontends.length === 0) return ['no services configured'];
  // UDP columns only earn their place when some frontend is UDP.
  const udp = frontends.some((f) => f.protocol === 'udp');
  const cols = BACKEND_COLUMNS.filter((c) => udp || c.header !== 'UDP MSGS');
  const rowsOf = (f: FrontendReport): Row[] => f.backends.map((b) => [
    hostport(b.address, b.port), String(b.weight), percent(b.share),
    b.state === 'active' ? style.green(b.state) : style.yellow(b.state), b.local ? 'yes' : 'no',
    humanCount(b.counters.connections), ...(udp ? [humanCount(b.counters.udpMessages)] : []),
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
