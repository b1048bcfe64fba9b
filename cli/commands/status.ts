// meshctl status: is the agent up, what node is this, what is attached, how full are the maps.
// With the agent down it still reports what the pins say: the datapath keeps working without the agent.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { ProgramReport, StateFile, StatusReport } from '../../agent/admin/protocol.js';
import { CGROUP_PROGRAMS } from '../../agent/datapath/datapath.js';
import { native } from '../../agent/datapath/native.js';
import type { NodeFacts } from '../../agent/observe/node.js';
import { AgentUnreachable } from '../client.js';
import type { Context } from '../context.js';
import { CliError, EXIT } from '../errors.js';
import { duration, humanBytes, percent } from '../format.js';
import { renderFacts, renderTable } from '../table.js';
import type { Style } from '../style.js';

type MapFill = StatusReport['maps'][number];

/** A link pinned under <bpffs>/links; `attached` is null when the addon is not there to ask the kernel. */
export interface PinnedProgram { program: string; attachType: string; attached: boolean | null }

/** --json shape of `status` with the agent down. With the agent up it is { running: true, ...StatusReport }. */
export interface DownStatus {
  running: false;
  error: string;
  lastAgent: (StateFile & { alive: boolean }) | null;
  node: NodeFacts | null;
  bpffs: string;
  pinned: boolean;
  programs: PinnedProgram[];
  maps: MapFill[];
  mapsError: string | null;
}

export async function status(ctx: Context): Promise<void> {
  let report: StatusReport;
  try {
    report = await ctx.client.get<StatusReport>('/v1/status');
  } catch (e) {
    if (!(e instanceof AgentUnreachable)) throw e;
    return statusDown(ctx, e);
  }
  ctx.print({ running: true, ...report }, () => renderStatus(report, ctx.style));
}

function pidAlive(pid: number): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The links a previous agent pinned, and whether each still has a live cgroup behind it. */
function pinnedPrograms(bpffs: string): PinnedProgram[] {
  const dir = join(bpffs, 'links');
  if (!existsSync(dir)) return [];
  let n: ReturnType<typeof native> | null = null;
  try { n = native(); } catch { /* no addon: list names only */ }
  return readdirSync(dir).sort().map((program) => {
    let attached: boolean | null = null;
    let attachType = CGROUP_PROGRAMS[program] ?? '?';
    if (n) {
      try {
        // A link whose cgroup was removed stays pinned but is defunct: the kernel reports cgroup id 0.
        attached = n.linkInfo(join(dir, program)).cgroupId !== 0;
      } catch {
        attached = false;
      }
    }
    if (attachType === '?') attachType = 'unknown';
    return { program, attachType, attached };
  });
}

async function statusDown(ctx: Context, why: AgentUnreachable): Promise<void> {
  const state = ctx.state();
  const pinned = ctx.hasPins();
  let maps: MapFill[] = [];
  let mapsError: string | null = null;
  if (pinned) {
    try {
      maps = ctx.readPins(why, (r) => r.fill());
    } catch (e) {
      mapsError = (e as Error).message;
    }
  }
  let node: NodeFacts | null = null;
  // Loaded only here: systeminformation is not worth its start-up time on the other paths.
  try { node = await (await import('../../agent/observe/node.js')).nodeFacts(); } catch { /* facts are a nicety here */ }
  const down: DownStatus = {
    running: false, error: why.message,
    lastAgent: state ? { ...state, alive: pidAlive(state.pid) } : null,
    node, bpffs: ctx.bpffs, pinned, programs: pinned ? pinnedPrograms(ctx.bpffs) : [], maps, mapsError,
  };
  ctx.print(down, () => renderDown(down, ctx.style));
  // The exit code says what the printout already did: no agent (3), or nothing pinned at all (4).
  throw new CliError(pinned ? `${why.message}: the agent is not running` : `${why.message}, and no sockmesh datapath pinned at ${ctx.bpffs}`,
    pinned ? EXIT.agentDown : EXIT.noDatapath);
}

function proxyLine(p: NonNullable<StatusReport['proxy']>, style: Style): string {
  const where = [p.v4 ? `${p.v4}:${p.port}` : '', p.v6 ? `[${p.v6}]:${p.port}` : ''].filter(Boolean).join(' ');
  const state = p.alive ? style.green('alive') : style.yellow(p.heartbeatAgeMs === null ? 'down (L7 services follow their fail mode)'
    // a fresh heartbeat without the listener in the kernel: the process died since its last beat
    : p.heartbeatAgeMs <= p.timeoutMs ? 'down: its listener is closed, the agent died (L7 services follow their fail mode)'
      : `down: no heartbeat for ${p.heartbeatAgeMs} ms (L7 services follow their fail mode)`);
  // Pods in their own network namespaces reach the proxy only through a node address (--proxy-node-address, or the one
  // the pods' routes go to, found by the agent).
  const node = [p.nodeV4 ? `${p.nodeV4}:${p.port}` : '', p.nodeV6 ? `[${p.nodeV6}]:${p.port}` : ''].filter(Boolean).join(' ');
  const pods = node ? `  pods via ${node}` : '  pods: not redirected (no node address: none given, and no pod routes to one)';
  return `${where}  ${state}${p.inMesh ? '  in the mesh (fast path)' : ''}${pods}`;
}

function nodeLine(n: NodeFacts): string {
  return `${n.hostname}  ${n.distro}  kernel ${n.kernel}  ${n.arch}  ${n.cpus} CPU${n.cpus === 1 ? '' : 's'}  ${humanBytes(n.memoryTotalBytes)} memory`;
}

function fillRows(maps: MapFill[], style: Style): string[][] {
  return [...maps].sort((a, b) => a.map.localeCompare(b.map)).map((m) => {
    const f = m.maxEntries ? m.entries / m.maxEntries : 0;
    const p = percent(f);
    return [m.map, String(m.entries), String(m.maxEntries), f >= 0.9 ? style.red(p) : f >= 0.75 ? style.yellow(p) : p];
  });
}

const FILL_COLUMNS = [{ header: 'MAP' }, { header: 'ENTRIES', align: 'right' as const }, { header: 'MAX', align: 'right' as const },
  { header: 'FILL', align: 'right' as const }];

export function renderStatus(s: StatusReport, style: Style): string[] {
  const a = s.agent;
  const reconcile = a.lastReconcile ? `, last reconcile ${a.lastReconcile.ms} ms at ${a.lastReconcile.at}` : '';
  const out = renderFacts([
    ['agent', `${style.green('running')}  pid ${a.pid}  version ${a.version}  up ${duration(a.uptimeSeconds)}`],
    ['config', `${a.configSource}  version ${a.configVersion}${reconcile}`],
    ['config error', a.lastConfigError ? style.red(a.lastConfigError) : 'none'],
    ['node', nodeLine(s.node)],
    ['cpu', s.node.cpuModel],
    ['cgroup', s.kernel.cgroup],
    ['bpffs', s.kernel.bpffs],
    ['sockmap', s.kernel.sockmap ? 'on' : style.yellow('off (connect-time balancing only)')],
    ...(s.proxy ? [['l7 proxy', proxyLine(s.proxy, style)]] as [string, string][] : []),
    ...(s.health ? [
      ['health', `${s.health.probed} backends probed, ${s.health.out ? style.yellow(`${s.health.out} out`) : '0 out'}` +
        `${s.health.panics ? style.red(`, ${s.health.panics} frontends in panic`) : ''}${s.health.out ? ' (meshctl backends)' : ''}`],
      ['metrics', s.health.metrics ?? 'off'],
    ] as [string, string][] : []),
  ], { style });
  // Program and map types only: the helper probes are per program type, and most pairs are unsupported by design.
  const missing = Object.entries(s.kernel.features)
    .filter(([k, ok]) => !ok && (k.startsWith('progTypes.') || k.startsWith('mapTypes.'))).map(([k]) => k);
  if (missing.length) out.push(...renderFacts([['kernel lacks', style.yellow(missing.join(', '))]], { style }));
  if (s.controlPlane) out.push('', ...renderControlPlane(s.controlPlane, style));
  if (s.kubernetes) out.push('', ...renderKubernetes(s.kubernetes, style));
  out.push('');
  out.push(...renderTable([{ header: 'PROGRAM' }, { header: 'ATTACH TYPE' }, { header: 'HOW' }],
    s.programs.map((p: ProgramReport) => [p.program, p.attachType, p.how]), { style }));
  out.push('');
  out.push(...renderTable(FILL_COLUMNS, fillRows(s.maps, style), { style }));
  return out;
}

/** The xDS connection: state, what was last ACKed per type, the last NACK and what is not supported. */
export function renderControlPlane(cp: NonNullable<StatusReport['controlPlane']>, style: Style): string[] {
  const state = cp.state === 'connected' ? style.green('connected') : style.yellow(cp.state);
  const since = cp.connectedSince ? ` since ${cp.connectedSince}` : '';
  const out = renderFacts([
    ['control plane', `${cp.server}  ${cp.mode === 'delta' ? 'delta ADS' : 'state-of-the-world ADS'}  ${state}${since}`],
    ['synced', cp.synced ? 'yes' : style.yellow('not yet: the kernel keeps its previous state')],
    ['reconnects', String(cp.reconnects)],
    ['last error', cp.lastError ? style.yellow(cp.lastError) : 'none'],
    ['last NACK', cp.lastNack ? style.red(`${cp.lastNack.typeUrl.split('.').pop()} version ${cp.lastNack.version || '(none)'} at ${cp.lastNack.at}: ${cp.lastNack.reason}`) : 'none'],
  ], { style });
  const acked = Object.entries(cp.acked).sort(([a], [b]) => a.localeCompare(b));
  if (acked.length) {
    out.push('');
    out.push(...renderTable([{ header: 'TYPE' }, { header: 'ACKED VERSION' }, { header: 'RESOURCES', align: 'right' as const }, { header: 'AT' }],
      acked.map(([type, a]) => [type.split('.').pop()!, a.version, String(a.resources), a.at]), { style }));
  }
  for (const w of cp.warming) out.push(style.yellow(`warming: ${w}`));
  for (const u of cp.unsupported) out.push(style.yellow(`not supported: ${u}`));
  return out;
}

/**
 * The Kubernetes source: one line that says whether the API server is reachable and since when ("kubernetes:
 * unreachable since <time>": everything stays as it is meanwhile), then per watch its state, objects and relists.
 */
export function renderKubernetes(k: NonNullable<StatusReport['kubernetes']>, style: Style): string[] {
  const h = k.health;
  const out = [`kubernetes: ${h.connected ? (h.synced ? style.green(k.summary) : style.yellow(k.summary)) : style.red(k.summary)}`];
  const what = k.mode === 'direct' ? 'services, endpointslices, httproutes cluster-wide; this node and its pods' : 'this node\'s pods (services over xDS)';
  const last = k.lastTranslate;
  out.push(...renderFacts([
    ['watching', `${what}  node ${k.node}`],
    ...(k.mode === 'direct' ? [
      ['last sync', last ? `${last.at}  ${last.services} services, ${last.changed} changed${last.relist ? ' (after a relist)' : ''}, translated in ${last.ms} ms` : style.yellow('none yet')],
      ['not served', k.unserved ? `${k.unserved} (meshctl services lists them)` : 'none'],
      ['left out', k.issues ? style.yellow(`${k.issues} problems in objects (GET /v1/kubernetes)`) : 'none'],
      ['route status', `${k.routeStatus.writes} written${k.routeStatus.failures ? style.yellow(`, ${k.routeStatus.failures} failed`) : ''}`],
    ] as [string, string][] : []),
    ...(k.fromCache ? [['model', style.yellow('the last applied one (kept from before the restart), until the API server is synced')]] as [string, string][] : []),
    ...(k.lastError ? [['last error', style.red(k.lastError)]] as [string, string][] : []),
  ], { indent: '  ', style }));
  out.push('');
  out.push(...renderTable([{ header: 'WATCH' }, { header: 'STATE' }, { header: 'SINCE' }, { header: 'OBJECTS', align: 'right' as const },
    { header: 'RELISTS', align: 'right' as const }, { header: 'LAST ERROR' }],
  h.watches.map((w) => [w.resource, w.connected ? (w.synced ? 'watching' : 'listing') : style.red('unreachable'), w.since, String(w.objects),
    String(w.relists), w.lastError ?? '']), { style }));
  return out;
}

export function renderDown(d: DownStatus, style: Style): string[] {
  const last = d.lastAgent;
  const lastLine = !last ? 'none recorded (no state.json in the run dir)'
    : `pid ${last.pid} ${last.alive ? style.yellow('still alive but not answering') : 'gone'}, cgroup ${last.cgroup}`;
  const facts: [string, string][] = [
    ['agent', `${style.red('not running')}: ${d.error}`],
    ['last agent', lastLine],
  ];
  if (d.node) facts.push(['node', nodeLine(d.node)]);
  facts.push(['bpffs', d.bpffs]);
  const out = renderFacts(facts, { style });
  out.push('');
  if (!d.pinned) {
    out.push(`nothing is pinned at ${d.bpffs}: no sockmesh datapath is installed there`);
    return out;
  }
  const live = d.programs.filter((p) => p.attached !== false).length;
  out.push(d.programs.length && live
    ? `the datapath keeps working without the agent: ${d.programs.length} program link${d.programs.length === 1 ? '' : 's'} pinned` +
      (d.programs.some((p) => p.attached === null) ? '' : `, ${live} attached`)
    : style.yellow('no attached program links are pinned: the maps are there but nothing uses them'));
  if (d.programs.length) {
    out.push('');
    out.push(...renderTable([{ header: 'PROGRAM' }, { header: 'ATTACH TYPE' }, { header: 'STATE' }],
      d.programs.map((p) => [p.program, p.attachType,
        p.attached === null ? 'pinned' : p.attached ? 'attached' : style.yellow('defunct (cgroup gone)')]), { style }));
  }
  out.push('');
  if (d.mapsError) out.push(style.yellow(`map fill unavailable: ${d.mapsError}`));
  else out.push(...renderTable(FILL_COLUMNS, fillRows(d.maps, style), { style }));
  return out;
}
