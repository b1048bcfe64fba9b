// meshctl sockets: the SOCKHASH, i.e. the sockets on the sockmap fast path, with what the kernel noted about them.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { SocketReport } from '../../agent/admin/protocol.js';
import type { Context } from '../context.js';
import { renderTable } from '../table.js';
import type { Style } from '../style.js';

export async function sockets(ctx: Context): Promise<void> {
  // An agent run with --no-sockmap pins no SOCKHASH: then there is simply nothing on the fast path.
  const { value } = await ctx.fromAgentOrPins<SocketReport[]>('/v1/sockets',
    (r) => (existsSync(join(ctx.bpffs, 'sm_sockets')) ? r.sockets() : []));
  const names = ctx.serviceNames();
  ctx.print(value, () => renderSockets(value, names, ctx.style));
}

export function renderSockets(list: SocketReport[], names: Map<number, string>, style: Style): string[] {
  if (list.length === 0) return ['no sockets on the sockmap fast path'];
  const sorted = [...list].sort((a, b) => a.netnsCookie.localeCompare(b.netnsCookie, 'en', { numeric: true }) ||
    a.local.localeCompare(b.local, 'en', { numeric: true }) || a.remote.localeCompare(b.remote, 'en', { numeric: true }));
  return renderTable(
    [
      { header: 'LOCAL' }, { header: 'REMOTE' }, { header: 'NETNS', align: 'right' }, { header: 'SIDE' },
      { header: 'SERVICE' }, { header: 'BACKEND', align: 'right' }, { header: 'PATH' },
    ],
    sorted.map((s) => [
      s.local, s.remote, s.netnsCookie, s.active ? 'connect' : 'accept',
      // service 0: the connection did not go through a VIP (e.g. the accepted end, or a direct connect).
      s.serviceId ? names.get(s.serviceId) ?? `#${s.serviceId}` : '-', s.backendId ? String(s.backendId) : '-',
      s.tcpOnly ? style.yellow('tcp-only') : 'sockmap',
    ]),
    { style },
  ).concat(['', `${list.length} socket${list.length === 1 ? '' : 's'}, ` +
    `${list.filter((s) => s.tcpOnly).length} tcp-only (a send found no peer in the map, so they stay on TCP to keep order)`]);
}
