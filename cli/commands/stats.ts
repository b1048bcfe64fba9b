// meshctl stats: the datapath's global counters and per-service counters.
import type { StatsReport } from '../../agent/admin/protocol.js';
import type { Context } from '../context.js';
import { humanBytes, humanCount } from '../format.js';
import { renderTable } from '../table.js';
import type { Style } from '../style.js';

export async function stats(ctx: Context): Promise<void> {
  const { value } = await ctx.fromAgentOrPins<StatsReport>('/v1/stats', (r, names) => r.stats(names));
  ctx.print(value, () => renderStats(value, ctx.style));
}

/** enum sm_global_counter names, as a person reads them. Counters not listed here still print, by their own name. */
export const GLOBAL_LABELS: Record<string, string> = {
  lb_connect: 'connections balanced',
  lb_udp_send: 'UDP messages balanced',
  lb_no_backend: 'no-backend refusals',
  affinity_hit: 'affinity hits',
  revnat_miss: 'reverse-NAT misses',
  sock_insert: 'sockmap inserts',
  sock_insert_fail: 'sockmap insert failures',
  redirect: 'redirects',
  redirect_miss: 'redirect misses',
  tcp_only: 'tcp-only fallbacks',
  bulk_leave: 'left the fast path (bulk)',
  bulk_kept: 'bulk senders kept in the sockmap',
  event_drop: 'event drops',
};

export function renderStats(s: StatsReport, style: Style): string[] {
  const known = Object.keys(GLOBAL_LABELS).filter((k) => k in s.global);
  const extra = Object.keys(s.global).filter((k) => !(k in GLOBAL_LABELS));
  const out = renderTable(
    [{ header: 'COUNTER' }, { header: 'VALUE', align: 'right' }],
    [...known, ...extra].map((k) => [GLOBAL_LABELS[k] ?? k, humanCount(s.global[k] ?? 0)]),
    { style },
  );
  out.push('');
  if (s.services.length === 0) {
    out.push('no per-service counters yet');
    return out;
  }
  out.push(...renderTable(
    [
      { header: 'SERVICE' }, { header: 'CONNS', align: 'right' }, { header: 'UDP MSGS', align: 'right' },
      { header: 'NO BACKEND', align: 'right' }, { header: 'AFFINITY HITS', align: 'right' },
      { header: 'REDIRECTS', align: 'right' }, { header: 'REDIRECTED', align: 'right' },
    ],
    s.services.map((x) => [
      x.service, humanCount(x.counters.connections), humanCount(x.counters.udpMessages), humanCount(x.counters.noBackend),
      humanCount(x.counters.affinityHits), humanCount(x.counters.redirects), humanBytes(x.counters.redirectBytes),
    ]),
    { style },
  ));
  return out;
}
