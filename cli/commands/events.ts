// meshctl events: the most recent sampled flow events. They live only in the agent's memory: no agent, no events.
import type { FlowEvent } from '../../agent/admin/protocol.js';
import { AgentUnreachable } from '../client.js';
import type { Context } from '../context.js';
import { CliError, EXIT } from '../errors.js';
import { renderTable } from '../table.js';
import type { Style } from '../style.js';

export async function events(ctx: Context): Promise<void> {
  let list: FlowEvent[];
  try {
    list = await ctx.client.get<FlowEvent[]>('/v1/events');
  } catch (e) {
    if (!(e instanceof AgentUnreachable)) throw e;
    if (!ctx.hasPins()) throw new CliError(`${e.message}, and no sockmesh datapath pinned at ${ctx.bpffs}`, EXIT.noDatapath);
    throw new CliError(`${e.message}: flow events are kept by the agent only (counters: meshctl stats)`, EXIT.agentDown);
  }
  ctx.print(list, () => renderEvents(list, ctx.style));
}

/** Local time of day with milliseconds: events are recent, the date is noise. */
export function clock(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

export function renderEvents(list: FlowEvent[], style: Style): string[] {
  if (list.length === 0) return ['no flow events yet (sampling is set by the agent\'s --event-sample)'];
  return renderTable(
    [{ header: 'TIME' }, { header: 'KIND' }, { header: 'PROTO' }, { header: 'SERVICE' }, { header: 'VIP' }, { header: 'BACKEND' }],
    // strict-drop has no backend: its column names the other node's source that was dropped
    list.map((e) => [clock(e.time), e.kind === 'no-backend' || e.kind === 'strict-drop' ? style.red(e.kind) : e.kind, e.protocol, e.service, e.vip,
      e.source ? `from ${e.source}` : e.backend]),
    { style },
  );
}
