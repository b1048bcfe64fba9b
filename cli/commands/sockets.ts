// meshctl sockets: the SOCKHASH, i.e. the sockets on the sockmap fast path, with what the kernel noted about them.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { SocketReport } from '../../agent/admin/protocol.js';
import { labelSockets, podNamesOf } from '../../agent/identity/podns.js';
import type { Context } from '../context.js';
import { renderTable } from '../table.js';
import type { Style } from '../style.js';

export async function sockets(ctx: Context): Promise<void> {
  // An agent run with --no-sockmap pins no SOCKHASH: then there is simply nothing on the fast path.
  // The agent names the pods; from the pins, meshctl does the same from the meshed cgroup its state.json names.
  const cgroup = ctx.state()?.cgroup;
  const { value } = await ctx.fromAgentOrPins<SocketReport[]>('/v1/sockets', (r) => {
    const list = existsSync(join(ctx.bpffs, 'sm_sockets')) ? r.sockets() : [];
    return cgroup ? labelSockets(list, podNamesOf(cgroup, r.n)) : list;
  });
  const names = ctx.serviceNames();
  ctx.print(value, () => renderSockets(value, names, ctx.style));
}

export function renderSockets(list: SocketReport[], names: Map<number, string>, style: Style): string[] {
  if (list.length === 0) return ['no sockets on the sockmap fast path'];
  const sorted = [...list].sort((a, b) => a.netnsCookie.localeCompare(b.netnsCookie, 'en', { numeric: true }) ||
    a.local.localeCompare(b.local, 'en', { numeric: true }) || a.remote.localeCompare(b.remote, 'en', { numeric: true }));
  // POD and PEER only when some socket is in a known pod (the agent or meshctl found the meshed cgroup's pods)
  const pods = list.some((s) => s.pod || s.peerPod);
  return renderTable(
    [
      { header: 'LOCAL' }, { header: 'REMOTE' }, ...(pods ? [{ header: 'POD' }, { header: 'PEER' }] : []),
      { header: 'NETNS', align: 'right' as const }, { header: 'SIDE' },
      { header: 'SERVICE' }, { header: 'BACKEND', align: 'right' }, { header: 'PATH' },
    ],
    sorted.map((s) => [
      s.local, s.remote, ...(pods ? [s.pod || '-', s.peerPod || '-'] : []), s.netnsCookie, s.active ? 'connect' : 'accept',
      // service 0: the connection did not go through a VIP (e.g. the accepted end, or a direct connect).
      s.serviceId ? names.get(s.serviceId) ?? `#${s.serviceId}` : '-', s.backendId ? String(s.backendId) : '-',
      s.tcpOnly ? style.yellow('tcp-only') : 'sockmap',
    ]),
    { style },
  ).concat(['', `${list.length} socket${list.length === 1 ? '' : 's'}, ` +
    `${list.filter((s) => s.tcpOnly).length} tcp-only (a send found no peer in the map, so they stay on TCP to keep order)`]);
}
