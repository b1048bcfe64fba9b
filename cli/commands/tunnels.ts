// meshctl tunnels: this node's HBONE tunnels (issue 13): per peer (out: a destination node this node's pods reach
// through a pooled mTLS connection; in: a node whose pods reach ours) the identity, connections, handshakes (steady
// state: no new ones), streams open and total, bytes each way; then the kernel's hand-over (connections of this node's
// pods sent to the tunnel: tunnelled, or reset and why); the L7 proxy's upstreams through it; then the refusals by reason.
import type { TunnelReport } from '../../agent/admin/protocol.js';
import type { Context } from '../context.js';
import { humanBytes, humanCount } from '../format.js';
import { renderTable, type Column } from '../table.js';
import { agentOnly } from './backends.js';

export async function tunnels(ctx: Context): Promise<void> {
  const report = await agentOnly<TunnelReport>(ctx, '/v1/tunnels', 'tunnels');
  ctx.print(report, () => renderTunnels(report));
}

export function renderTunnels(r: TunnelReport): string[] {
  const lines: string[] = [];
  if (r.listening) lines.push(r.listening.length ? `listening on ${r.listening.join(', ')} (HBONE: HTTP/2 CONNECT over mTLS)` : `not listening (${r.state ?? 'no tunnel server'})`);
  // the node's own certificate: what other nodes' clients check (its identity names this node)
  if (r.identity) lines.push(`node identity ${r.identity}${r.certificate ? `, certificate ${r.certificate.serial}, expires ${r.certificate.notAfter}` : ': no certificate yet'}`);
  if (r.peers.length === 0) lines.push('no tunnels yet');
  else {
    const cols: Column[] = [
      { header: 'DIR' }, { header: 'PEER' }, { header: 'IDENTITY' }, { header: 'CONNS', align: 'right' }, { header: 'HANDSHAKES', align: 'right' },
      { header: 'STREAMS', align: 'right' }, { header: 'TOTAL', align: 'right' }, { header: 'BYTES IN', align: 'right' }, { header: 'BYTES OUT', align: 'right' },
    ];
    const rows = [...r.peers].sort((a, b) => a.direction.localeCompare(b.direction) || a.peer.localeCompare(b.peer) || a.identity.localeCompare(b.identity))
      .map((p) => [p.direction, p.peer, p.identity, String(p.connections), humanCount(p.handshakes), String(p.streamsOpen), humanCount(p.streamsTotal),
        humanBytes(p.bytesIn), humanBytes(p.bytesOut)]);
    lines.push(...renderTable(cols, rows));
  }
  const h = r.handover;
  if (h) {
    const refused = Object.entries(h.refused).filter(([, n]) => n > 0);
    lines.push(`kernel hand-over on ${h.listening.join(', ') || 'nothing (not listening)'}: ${humanCount(h.accepted)} handed over, ${humanCount(h.tunnelled)} tunnelled, `
      + `${refused.length ? `reset: ${refused.map(([k, n]) => `${k} ${n}`).join(', ')}` : '0 reset'}`);
  }
  const p = r.proxy;
  if (p) {
    const refused = Object.entries(p.refused).filter(([, n]) => n > 0);
    lines.push(`L7 proxy upstreams to other nodes: ${humanCount(p.tunnelled)} tunnelled, ${refused.length ? `refused: ${refused.map(([k, n]) => `${k} ${n}`).join(', ')}` : '0 refused'}`);
  }
  for (const dir of ['in', 'out'] as const) {
    const refused = Object.entries(r.refusals[dir] ?? {}).filter(([, n]) => n > 0);
    if (refused.length) lines.push(`${dir === 'in' ? 'refused by this node\'s server' : 'refused or failed going out'}: ${refused.map(([k, n]) => `${k} ${n}`).join(', ')}`);
  }
  return lines;
}
