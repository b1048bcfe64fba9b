// meshctl monitor: a live stream of what the node does (balancing decisions, refusals, fast-path inserts and misses,
// L7 requests, health and config changes) until Ctrl-C, as `hubble observe` does for Cilium. Filters and the rate
// limit are applied by the agent (a reader that wants little costs little); what was not shown is said: the kernel's
// sampling (its own counts vs. the events seen), the rate limit, and lines lost because this reader was slow.
import type { MonitorEvent, MonitorQuery, MonitorSummary } from '../../agent/admin/protocol.js';
import { monitorQueryString } from '../../agent/observe/filter.js';
import { AgentUnreachable } from '../client.js';
import type { Context } from '../context.js';
import { CliError, EXIT } from '../errors.js';
import type { Style } from '../style.js';
import { clock } from './events.js';

export interface MonitorOptions extends Partial<MonitorQuery> {
  /** stop after this many seconds (default: until Ctrl-C) */
  durationMs?: number;
}

export async function monitor(ctx: Context, opts: MonitorOptions): Promise<void> {
  const abort = new AbortController();
  const stop = (): void => abort.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const timer = opts.durationMs ? setTimeout(stop, opts.durationMs) : undefined;
  const view = new MonitorView(ctx.style);
  let events = 0;
  let last: MonitorSummary | undefined;
  try {
    await ctx.client.stream(`/v1/monitor${monitorQueryString(opts)}`, (o) => {
      const e = o as MonitorEvent | MonitorSummary;
      if (e.type !== 'summary') events++;
      else last = e;
      if (ctx.json) ctx.stdout.write(`${JSON.stringify(e)}\n`);
      else for (const line of view.render(e)) ctx.stdout.write(`${line}\n`);
    }, abort.signal);
  } catch (e) {
    if (!(e instanceof AgentUnreachable)) throw e;
    if (!ctx.hasPins()) throw new CliError(`${e.message}, and no sockmesh datapath pinned at ${ctx.bpffs}`, EXIT.noDatapath);
    throw new CliError(`${e.message}: the live monitor needs the agent (counters without it: meshctl stats)`, EXIT.agentDown);
  } finally {
    clearTimeout(timer);
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  // The last word on stderr, so that --json output stays events only on stdout.
  if (!abort.signal.aborted) ctx.stderr.write('meshctl: the agent ended the stream (stopped?)\n');
  ctx.stderr.write(`${events} events shown${last ? `; ${hiddenText(last)}` : ''}\n`);
}

const BAD = new Set(['refused', 'error', 'out', 'rejected', 'nack', 'missed']);

/** What the kernel's sampling, the rate limit and a slow reader hid, in one line. */
export function hiddenText(s: MonitorSummary): string {
  const kinds = Object.keys(s.kernel.counted).filter((k) => (s.kernel.counted[k] ?? 0) > 0 || (s.kernel.seen[k] ?? 0) > 0);
  const counts = kinds.map((k) => `${k} ${s.kernel.seen[k] ?? 0}/${s.kernel.counted[k] ?? 0}`).join(', ');
  const sampling = s.sample === 0 ? 'kernel flow events off (--event-sample 0): no L4 or fast-path events'
    : s.sample === 1 ? 'kernel sampling 1 in 1' : `kernel sampling 1 in ${s.sample}: most L4 and fast-path events are not emitted`;
  return [
    sampling,
    `events seen/counted by the kernel: ${counts || 'none yet'}`,
    ...(s.kernel.ringFull ? [`${s.kernel.ringFull} lost in a full ring buffer`] : []),
    `${s.rateLimited} over --rate`,
    `${s.slowReader} lost (reader too slow)`,
  ].join('; ');
}

/** The text view: one line per event; a summary line when something new was hidden. */
export class MonitorView {
  lastSummary?: MonitorSummary;
  private shown = '';
  constructor(private readonly style: Style) {}

  render(e: MonitorEvent | MonitorSummary): string[] {
    if (e.type === 'summary') {
      const first = this.lastSummary === undefined;
      this.lastSummary = e;
      const hidden = e.rateLimited + e.slowReader + e.kernel.ringFull +
        Object.keys(e.kernel.counted).reduce((n, k) => n + Math.max(0, (e.kernel.counted[k] ?? 0) - (e.kernel.seen[k] ?? 0)), 0);
      const text = hiddenText(e);
      // At the start always (the sampling rate); later only when something was hidden and the line changed.
      if (!first && (hidden === 0 || text === this.shown)) return [];
      this.shown = text;
      return [this.style.dim(`-- ${text}`)];
    }
    const s = this.style;
    const verdict = BAD.has(e.verdict) ? s.red(e.verdict) : e.verdict;
    const head = `${clock(e.time)} ${e.type.toUpperCase().padEnd(8)} ${e.kind.padEnd(13)} ${verdict.padEnd(10 + verdict.length - e.verdict.length)}`;
    switch (e.type) {
      case 'l4': {
        const who = e.pod ? `pod ${e.pod}` : e.cgroup ? `cgroup ${e.cgroup}` : `cgroup #${e.cgroupId}`;
        const to = e.backend === '-' ? 'no backend' : `${e.kind === 'l7-redirect' ? 'proxy' : 'backend'} ${e.backend}`;
        const algo = e.kind === 'l7-redirect' || e.kind === 'l7-refused' ? '' : ` ${e.algorithm}${e.affinityHit ? ' affinity-hit' : ''}`;
        return [`${head} ${who} -> ${e.service} ${e.vip}/${e.protocol} => ${to}${algo}`];
      }
      case 'fastpath':
        return [`${head} ${e.service === '-' ? '' : `${e.service} `}${e.local} <-> ${e.peer} (${e.active ? 'client' : 'server'} side)`];
      case 'l7': {
        const status = e.status >= 500 || e.status === 0 ? s.red(String(e.status)) : String(e.status);
        const backend = e.backend ? ` backend ${e.backend}` : '';
        const why = e.reason ? ` (${e.reason})` : '';
        return [`${head} ${e.service} ${e.method} ${e.path} -> ${status}${why} route ${e.route || '-'}${backend} retries ${e.retries} ${e.durationMs}ms`];
      }
      case 'health':
        return [`${head} ${e.service} ${e.backend}${e.reason ? ` ${e.reason}` : ''}`];
      case 'config':
        return [`${head} ${e.version !== undefined ? `version ${e.version}` : ''}${e.why ? ` (${e.why})` : ''}${e.typeUrl ? `${e.typeUrl} ${e.resourceVersion ?? ''}` : ''}${e.error ? ` ${e.error}` : ''}`.trimEnd()];
    }
  }
}
