// meshctl routes [service]: the L7 routes of each service (match, split, timeout, retries: how many, per-try timeout,
// on what, for which methods) with the proxy's live numbers (requests, 5xx, retries, budget exhaustions, breaker
// overflows) when the proxy runs.
import type { RouteReport, RoutesReport } from '../../agent/admin/protocol.js';
import type { Context } from '../context.js';
import { humanCount } from '../format.js';
import { renderTable, type Column } from '../table.js';
import type { Style } from '../style.js';
import { agentOnly } from './backends.js';

export async function routes(ctx: Context, service?: string): Promise<void> {
  const path = service === undefined ? '/v1/routes' : `/v1/routes?service=${encodeURIComponent(service)}`;
  const report = await agentOnly<RoutesReport>(ctx, path, 'L7 routes', service);
  ctx.print(report, () => renderRoutes(report, ctx.style));
}

const num = (x: unknown): number | undefined => (typeof x === 'number' && Number.isFinite(x) ? x : undefined);
/** The sum of a { name: count } record (requests by status class, overflows by limit). */
function total(x: unknown): number | undefined {
  if (!x || typeof x !== 'object') return undefined;
  let n = 0;
  for (const v of Object.values(x as Record<string, unknown>)) n += num(v) ?? 0;
  return n;
}

const ms = (n: number): string => (n === 0 ? '-' : n % 1000 === 0 ? `${n / 1000}s` : `${n} ms`);

/**
 * '2 x 500 ms on 5xx,unavailable': retries, per-try timeout, what is retried (retriable-status-codes as its codes);
 * ', any method' when non-idempotent requests are retried too (else only idempotent ones, and gRPC calls only on a
 * connect failure or a gRPC code named).
 */
export function retryText(x: RouteReport): string {
  if (!x.retries) return 'none';
  const on = (x.retryOn ?? []).map((c) => (c === 'retriable-status-codes' ? (x.retriableStatusCodes ?? []).join('|') || c : c));
  return `${x.retries}${x.perTryTimeoutMs ? ` x ${ms(x.perTryTimeoutMs)}` : ''}${on.length ? ` on ${on.join(',')}` : ''}${x.retryNonIdempotent ? ', any method' : ''}`;
}

/** 'h2', 'http1', or 'as client' (downstream: the client's own protocol; '-' from an agent that does not say) */
export function upstreamText(p: string | undefined): string {
  return p === undefined ? '-' : p === 'downstream' ? 'as client' : p;
}

export function renderRoutes(r: RoutesReport, style: Style): string[] {
  if (r.routes.length === 0) return [r.proxyError ?? 'no L7 routes (no service has http rules)'];
  const live = r.routes.some((x) => x.live);
  const cols: Column[] = [
    { header: 'SERVICE' }, { header: 'ROUTE' }, { header: 'MATCH' }, { header: 'SPLIT' }, { header: 'UPSTREAM' },
    { header: 'TIMEOUT', align: 'right' }, { header: 'RETRIES' },
    ...(live ? [
      { header: 'REQUESTS', align: 'right' as const }, { header: '5XX', align: 'right' as const },
      { header: 'LOCAL', align: 'right' as const }, { header: 'RETRIED', align: 'right' as const },
      { header: 'BUDGET OUT', align: 'right' as const }, { header: 'OVERFLOWS', align: 'right' as const },
    ] : []),
  ];
  const cell = (n: number | undefined): string => (n === undefined ? '-' : humanCount(n));
  const row = (x: RouteReport): string[] => {
    const req = x.live?.['requests'] as Record<string, unknown> | undefined;
    const fivexx = num(req?.['5xx']);
    return [
      x.service, x.route, x.match,
      x.split.length === 1 ? x.split[0]!.group : x.split.map((s) => `${s.group}=${s.weight}`).join(' '),
      upstreamText(x.upstreamProtocol),
      ms(x.timeoutMs),
      retryText(x),
      ...(live ? [
        cell(total(req)), fivexx ? style.red(humanCount(fivexx)) : cell(fivexx), cell(num(req?.['local'])),
        cell(num(x.live?.['retries'])), cell(num(x.live?.['budgetExhausted'])), cell(total(x.live?.['overflows'])),
      ] : []),
    ];
  };
  const out = renderTable(cols, r.routes.map(row), { style });
  if (r.proxyError) out.push('', style.yellow(r.proxyError));
  return out;
}
