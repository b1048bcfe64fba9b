// meshctl backends [service]: every backend in or out of service, and when out, why (failed health check or outlier
// ejection) and since when; the health checker's last probe; the proxy's live numbers for L7 services. This state
// lives in the agent only: no agent, no answer (the kernel's view without reasons: meshctl services).
import type { BackendHealthReport, BackendsReport } from '../../agent/admin/protocol.js';
import { AgentError, AgentUnreachable } from '../client.js';
import type { Context } from '../context.js';
import { CliError, EXIT } from '../errors.js';
import { duration, hostport } from '../format.js';
import { measure, renderTable, type Column, type Row } from '../table.js';
import type { Style } from '../style.js';

/** GET a report that only the agent has; a missing agent or an unknown service become meshctl's usual exits. */
export async function agentOnly<T>(ctx: Context, path: string, what: string, service?: string): Promise<T> {
  try {
    return await ctx.client.get<T>(path);
  } catch (e) {
    if (e instanceof AgentUnreachable) {
      if (!ctx.hasPins()) throw new CliError(`${e.message}, and no sockmesh datapath pinned at ${ctx.bpffs}`, EXIT.noDatapath);
      throw new CliError(`${e.message}: ${what} are kept by the agent only (the kernel's view: meshctl services)`, EXIT.agentDown);
    }
    if (e instanceof AgentError && e.status === 404 && service !== undefined) throw new CliError(`no service named '${service}'`);
    throw e;
  }
}

export async function backends(ctx: Context, service?: string): Promise<void> {
  const path = service === undefined ? '/v1/backends' : `/v1/backends?service=${encodeURIComponent(service)}`;
  const report = await agentOnly<BackendsReport>(ctx, path, 'backend health states', service);
  ctx.print(report, () => renderBackends(report, ctx.style));
}

/** Local time of day: states change within minutes or hours; the date is in --json. */
function clock(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

const ago = (iso: string, now: number): string => `${duration((now - Date.parse(iso)) / 1000)} ago`;
const ms = (n: number): string => (n % 1000 === 0 ? `${n / 1000}s` : `${n} ms`);

function stateCell(b: BackendHealthReport, style: Style): string {
  switch (b.state) {
    case 'in': return style.green('in');
    case 'out': return style.red('out');
    case 'panic': return style.yellow('out (panic: kept)');
    case 'drained': return style.dim('drained');
  }
}

function whyCell(b: BackendHealthReport, now: number): string {
  const parts: string[] = [];
  if (b.probe?.failingSince) parts.push(`health check: ${b.reasons.find((r) => r.startsWith('health check: '))?.slice(14) ?? 'failing'}`);
  if (b.ejection) {
    const left = Math.max(0, Date.parse(b.ejection.until) - now) / 1000;
    parts.push(`ejected #${b.ejection.count}: ${b.ejection.reason} (until ${clock(b.ejection.until)}, ${duration(left)} left)`);
  }
  // A reason without a checker report (e.g. a probe verdict from before a config change) still shows.
  for (const r of b.reasons) if (!parts.some((p) => p.startsWith(r.split(':')[0]!))) parts.push(r);
  return parts.join('; ');
}

function probeCell(b: BackendHealthReport, now: number, style: Style): string {
  const p = b.probe;
  if (!p) return '';
  if (!p.last) return style.dim('not probed yet');
  const what = p.last.healthy ? `ok ${p.last.ms} ms` : p.last.reason;
  const streak = p.last.healthy ? p.consecutiveSuccesses : p.consecutiveFailures;
  return `${what}, ${ago(p.last.at, now)} (${streak}x)`;
}

const num = (x: unknown): number | undefined => (typeof x === 'number' && Number.isFinite(x) ? x : undefined);

export function renderBackends(r: BackendsReport, style: Style, now = Date.now()): string[] {
  const out: string[] = [];
  if (r.services.length === 0) return ['no services configured'];
  const all = r.services.flatMap((s) => s.frontends.flatMap((f) => f.backends));
  const groups = all.some((b) => b.group !== 'default');
  const probes = all.some((b) => b.probe);
  const active = all.some((b) => num(b.proxy?.['activeRequests']) !== undefined);
  const cols: Column[] = [
    { header: 'BACKEND' },
    ...(groups ? [{ header: 'GROUP' }] : []),
    { header: 'WEIGHT', align: 'right' }, { header: 'STATE' }, { header: 'SINCE' }, { header: 'WHY' },
    { header: 'EJECTIONS', align: 'right' },
    ...(active ? [{ header: 'ACTIVE', align: 'right' as const }] : []),
    ...(probes ? [{ header: 'LAST PROBE' }] : []),
  ];
  const rowOf = (b: BackendHealthReport): Row => [
    b.backend,
    ...(groups ? [b.group] : []),
    b.effectiveWeight === b.weight ? String(b.weight) : `${b.weight}->${b.effectiveWeight}`,
    stateCell(b, style),
    b.since ? `${clock(b.since)} (${ago(b.since, now)})` : '',
    whyCell(b, now),
    String(b.ejections),
    ...(active ? [String(num(b.proxy?.['activeRequests']) ?? '')] : []),
    ...(probes ? [probeCell(b, now, style)] : []),
  ];
  const blocks = r.services.map((s) => ({ s, frontends: s.frontends.map((f) => ({ f, rows: f.backends.map(rowOf) })) }));
  const widths = measure(cols, ...blocks.flatMap((b) => b.frontends.map((f) => f.rows)));
  for (const [i, { s, frontends }] of blocks.entries()) {
    if (i > 0) out.push('');
    const hc = s.healthCheck;
    const check = hc
      ? `${hc.kind}${hc.kind === 'http' ? ` ${hc.path ?? '/'}` : hc.kind === 'grpc' && hc.grpcService ? ` ${hc.grpcService}` : ''} health check every ${ms(hc.intervalMs)} ` +
        `(timeout ${ms(hc.timeoutMs)}, out after ${hc.unhealthyThreshold}, in after ${hc.healthyThreshold})`
      : 'no health check';
    out.push(`${style.bold(s.service)}${s.l7 ? '  L7' : ''}  ${style.dim(check)}`);
    for (const { f, rows } of frontends) {
      const panic = f.panic ? `  ${style.yellow('PANIC: every backend is out; all are kept in service')}` : '';
      out.push(`  ${hostport(f.vip, f.port)}/${f.protocol}${panic}`);
      if (rows.length === 0) out.push(`    ${style.yellow('no backends')}`);
      else out.push(...renderTable(cols, rows, { indent: '    ', widths, style }));
    }
  }
  if (r.proxyError) out.push('', style.yellow(r.proxyError));
  return out;
}
