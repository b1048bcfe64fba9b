// meshctl identities / meshctl certs: the workload identities this node's agent holds certificates for, from the
// agent's certificate manager (GET /v1/certs). Keys never leave the agent; only what is public is shown.
import type { CertsReport } from '../../agent/admin/protocol.js';
import { AgentError, AgentUnreachable } from '../client.js';
import type { Context } from '../context.js';
import { CliError, EXIT } from '../errors.js';
import { duration } from '../format.js';
import { renderTable } from '../table.js';
import type { Style } from '../style.js';

async function report(ctx: Context): Promise<CertsReport> {
  try {
    return await ctx.client.get<CertsReport>('/v1/certs');
  } catch (e) {
    if (e instanceof AgentUnreachable) throw new CliError(`${e.message}: certificates are held by the agent only`, EXIT.agentDown);
    if (e instanceof AgentError && e.status === 404) throw new CliError('this agent has no workload certificates (start it with --node-token-file)');
    throw e;
  }
}

export async function identities(ctx: Context): Promise<void> {
  const r = await report(ctx);
  ctx.print(r.identities, () => renderIdentities(r, ctx.style));
}

export async function certs(ctx: Context): Promise<void> {
  const r = await report(ctx);
  ctx.print(r, () => renderCerts(r, ctx.style, Date.now()));
}

function stateCell(state: string, style: Style): string {
  return state === 'issued' ? style.green(state) : state === 'failed' ? style.red(state) : style.yellow(state);
}

export function renderIdentities(r: CertsReport, style: Style): string[] {
  if (r.identities.length === 0) return ['no workload identities on this node (the model places none here: workloads[].node, .identity)'];
  return renderTable(
    [{ header: 'IDENTITY' }, { header: 'STATE' }, { header: 'RENEWALS', align: 'right' }, { header: 'FAILURES', align: 'right' }, { header: 'LAST ERROR' }],
    r.identities.map((i) => [i.identity, stateCell(i.state, style), String(i.renewals), String(i.failures), i.lastError ?? '']),
    { style },
  );
}

export function renderCerts(r: CertsReport, style: Style, now: number): string[] {
  const out: string[] = [];
  if (r.identities.length === 0) out.push('no workload certificates (no identities on this node)');
  else {
    out.push(...renderTable(
      [{ header: 'IDENTITY' }, { header: 'SERIAL' }, { header: 'NOT AFTER' }, { header: 'TIME LEFT', align: 'right' }, { header: 'NEXT RENEWAL', align: 'right' }, { header: 'ISSUER' }],
      r.identities.map((i) => {
        const left = i.notAfter ? (Date.parse(i.notAfter) - now) / 1000 : NaN;
        const next = i.nextAttempt ? (Date.parse(i.nextAttempt) - now) / 1000 : NaN;
        return [
          i.identity, i.serial ?? stateCell(i.state, style), i.notAfter ?? '-',
          Number.isNaN(left) ? '-' : left <= 0 ? style.red('expired') : duration(left),
          Number.isNaN(next) ? '-' : `in ${duration(next)}`,
          i.issuer ?? (i.lastError ? style.red(i.lastError) : '-'),
        ];
      }),
      { style },
    ));
  }
  out.push('');
  out.push(`trust bundle: ${r.bundle.length} root${r.bundle.length === 1 ? '' : 's'}${r.bundle.length > 1 ? ' (a rotation is under way)' : ''}`);
  for (const b of r.bundle) out.push(`  ${b.subject}  not after ${b.notAfter}  sha256 ${b.fingerprint.slice(0, 23)}...`);
  out.push(`issued ${r.issued}, renewed ${r.renewed}, failed requests ${r.failed}`);
  return out;
}
