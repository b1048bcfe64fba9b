// meshctl doctor: everything worth checking before filing a bug, each with a verdict and what to do about it.
// The kernel-side checks read the host and the pins directly, so they run with the agent down too; the agent-side
// ones ask the admin socket and say so when nobody answers.
import { existsSync, readdirSync, readFileSync, statSync, type Stats } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { gunzipSync } from 'node:zlib';
import { request } from 'node:http';
import type { StatusReport } from '../../agent/admin/protocol.js';
import { ABI_VERSION, u32 } from '../../agent/datapath/abi.js';
import { bpffsMountOf, cgroup2Root, mounts } from '../../agent/datapath/cgroup.js';
import { CGROUP_PROGRAMS, MAP_NAMES, abiVersionOf } from '../../agent/datapath/datapath.js';
import { MapReader, type KernelProxyReport } from '../../agent/datapath/inspect.js';
import { native, type LinkInfo, type Native } from '../../agent/datapath/native.js';
import { L7_FEATURES, REQUIRED_FEATURES, SOCKMAP_FEATURES, probeFeatures } from '../../agent/datapath/features.js';
import { AgentUnreachable } from '../client.js';
import type { Context } from '../context.js';
import { percent } from '../format.js';
import type { Style } from '../style.js';
import { renderTable } from '../table.js';

export type Verdict = 'ok' | 'warn' | 'fail' | 'skip';

export interface Check {
  /** what is checked, e.g. 'bpffs mount', 'feature: BPF ring buffers' */
  check: string;
  verdict: Verdict;
  /** what was found */
  detail: string;
  /** what to do about it (warn and fail; a skip says why it was skipped in detail) */
  hint?: string;
}

/**
 * The exit code of `meshctl doctor`: 0 when every check is ok (or skipped), 2 when the worst is a warning, 1 when any
 * check failed. (Usage errors exit 1 too, without a report.)
 */
export const DOCTOR_EXIT = { ok: 0, fail: 1, warn: 2 } as const;

export function exitCodeFor(checks: readonly Check[]): number {
  if (checks.some((c) => c.verdict === 'fail')) return DOCTOR_EXIT.fail;
  if (checks.some((c) => c.verdict === 'warn')) return DOCTOR_EXIT.warn;
  return DOCTOR_EXIT.ok;
}

export function summary(checks: readonly Check[]): Record<Verdict, number> {
  const s: Record<Verdict, number> = { ok: 0, warn: 0, fail: 0, skip: 0 };
  for (const c of checks) s[c.verdict]++;
  return s;
}

const ok = (check: string, detail: string): Check => ({ check, verdict: 'ok', detail });
const skip = (check: string, detail: string): Check => ({ check, verdict: 'skip', detail });
const warn = (check: string, detail: string, hint: string): Check => ({ check, verdict: 'warn', detail, hint });
const fail = (check: string, detail: string, hint: string): Check => ({ check, verdict: 'fail', detail, hint });

// ---- checks that are pure functions of what was read (unit-tested) ----

/** One check per feature the agent probes for; what lacks a required one fails, an optional one warns. */
export function featureChecks(flat: Record<string, boolean>, sockmap: boolean): Check[] {
  const needs = new Map<string, { what: string; for: string[] }>();
  const add = (list: [string, string][], purpose: string): void => {
    for (const [key, what] of list) {
      const e = needs.get(key) ?? { what, for: [] };
      e.for.push(purpose);
      needs.set(key, e);
    }
  };
  add(REQUIRED_FEATURES, 'required');
  add(L7_FEATURES, 'L7 redirect');
  add(SOCKMAP_FEATURES, 'sockmap fast path');
  const KIND: Record<string, string> = { progTypes: 'prog', mapTypes: 'map', helpers: 'helper' };
  return [...needs].map(([key, { what, for: purposes }]) => {
    const [group = '', feature = key] = key.split(/\.(.*)/s);
    const name = `bpf ${KIND[group] ?? group} ${feature}`;
    const need = purposes.join(', ');
    if (flat[key] === undefined) return skip(name, `not probed by this addon (${need})`);
    if (flat[key]) return ok(name, `${what} (${need})`);
    if (purposes.includes('required')) {
      return fail(name, `missing: ${what}`, 'the agent refuses to start without it: a newer kernel, or one built with the option named');
    }
    if (purposes.includes('sockmap fast path') && sockmap && !purposes.includes('L7 redirect')) {
      return fail(name, `missing: ${what} (${need})`, 'run the agent with --no-sockmap (connect-time balancing only), or a newer kernel');
    }
    return warn(name, `missing: ${what} (${need})`,
      purposes.includes('L7 redirect') ? 'L7 services follow their fail mode without it; a newer kernel (5.15+) gets them the proxy'
        : 'run the agent with --no-sockmap, or a newer kernel');
  });
}

/** cgroup v2: unified (cgroup2 alone at /sys/fs/cgroup) or hybrid (cgroup2 next to v1 hierarchies); fail without. */
export function cgroupMountCheck(root: string | null, v1Hierarchies: number): Check {
  const name = 'cgroup v2 mount';
  if (!root) return fail(name, 'no cgroup2 filesystem is mounted', 'mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1)');
  return ok(name, `${root} (${v1Hierarchies ? `hybrid: ${v1Hierarchies} cgroup v1 hierarch${v1Hierarchies === 1 ? 'y' : 'ies'} beside it` : 'unified'})`);
}

/** The ABI version the pinned sm_config records against the one this build expects. */
export function abiCheck(pinned: bigint | null): Check {
  const name = 'pins ABI version';
  if (pinned === null) return fail(name, 'sm_config holds no entry', 'start the agent: it writes the ABI version when it loads');
  if (pinned === 0n) return warn(name, `not recorded yet (this build: v${ABI_VERSION})`, 'start the agent once: it records the ABI version of the maps');
  if (pinned !== BigInt(ABI_VERSION)) {
    return fail(name, `pins are ABI v${pinned}, this build expects v${ABI_VERSION}`,
      'the maps were made by another sockmesh version: stop the agent, run sockmesh-agent cleanup --bpffs <dir>, start it again');
  }
  return ok(name, `v${pinned}`);
}

/** Map fill: warn above 80%, fail when a map is full (inserts into it fail; LRU maps evict instead). */
/**
 * Every address the kernel may redirect to has the proxy's listening socket in sm_proxy_socks. The kernel drops a
 * socket from there when it closes, so a missing one with the proxy not marked down means the agent died (or could
 * not record it): the kernel gives those clients the fail mode, whatever the heartbeat says.
 */
export function proxyListenersCheck(proxy: KernelProxyReport | null): Check {
  const name = 'proxy listeners';
  if (!proxy) return skip(name, 'no L7 proxy announced in sm_proxy');
  if (proxy.heartbeatAgeMs === null) return skip(name, 'the proxy is marked down: no listener expected');
  const hp = (a: string): string => (a.includes(':') ? `[${a}]:${proxy.port}` : `${a}:${proxy.port}`);
  const want = [proxy.v4, proxy.v6, proxy.nodeV4, proxy.nodeV6].filter((a): a is string => a !== null).map(hp);
  const missing = want.filter((w) => !proxy.listeners.includes(w));
  if (missing.length === 0) return ok(name, `${want.join(' ')} in sm_proxy_socks`);
  return fail(name, `not in sm_proxy_socks: ${missing.join(' ')} (${proxy.listeners.length ? `held: ${proxy.listeners.join(' ')}` : 'none held'})`,
    'the agent that ran the proxy is gone (its sockets closed): its clients get their fail mode; start the agent');
}

export function fillCheck(maps: readonly { map: string; entries: number; maxEntries: number }[]): Check {
  const name = 'map fill';
  if (!maps.length) return skip(name, 'no maps readable');
  const frac = (m: { entries: number; maxEntries: number }): number => (m.maxEntries ? m.entries / m.maxEntries : 0);
  const sorted = [...maps].sort((a, b) => frac(b) - frac(a));
  const top = sorted[0]!;
  const over = sorted.filter((m) => frac(m) > 0.8);
  const list = (ms: typeof maps): string => ms.map((m) => `${m.map} ${m.entries}/${m.maxEntries} (${percent(frac(m))})`).join(', ');
  if (!over.length) return ok(name, `fullest: ${list([top])}`);
  const full = over.filter((m) => frac(m) >= 1);
  const hint = 'fewer services/backends per node, or larger maps (bpf/lib/maps.h); LRU maps (sm_affinity, sm_revnat) evict the oldest entries';
  return full.length ? fail(name, `full: ${list(full)}`, hint) : warn(name, `above 80%: ${list(over)}`, hint);
}

/** CONFIG_INET_DIAG_DESTROY from the kernel's config text (null: no config to read, and why). */
export function diagDestroyCheck(config: { text: string; from: string } | { missing: string }): Check {
  const name = 'CONFIG_INET_DIAG_DESTROY';
  if ('missing' in config) return skip(name, config.missing);
  const m = /^CONFIG_INET_DIAG_DESTROY=(\w+)/m.exec(config.text);
  if (m?.[1] === 'y') return ok(name, `=y (${config.from})`);
  return warn(name, `not set (${config.from})`,
    'UDP clients of a removed backend keep their connected socket (the agent cannot destroy it): a kernel with CONFIG_INET_DIAG_DESTROY=y');
}

/** The admin socket's file: a socket, owned by root, mode 0600 (what the agent sets). */
export function adminSocketCheck(path: string, st: Pick<Stats, 'mode' | 'uid' | 'isSocket'> | null, answering: boolean): Check {
  const name = 'admin socket';
  if (!st) return fail(name, `${path} is missing`, 'the agent is not running with this --run-dir (or --bpffs): start it, or point meshctl at it');
  if (!st.isSocket()) return fail(name, `${path} is not a socket`, 'remove the file and restart the agent');
  if (!answering) return fail(name, `${path} is left over: nobody answers on it`, 'the agent died without cleaning up: start it again (it replaces the socket)');
  const mode = st.mode & 0o777;
  const octal = `0${mode.toString(8)}`;
  if (mode & 0o077) {
    return fail(name, `${path} mode ${octal}: others may talk to the agent`, `chmod 600 ${path} (and find out what changed it: the agent creates it 0600)`);
  }
  if (st.uid !== 0) return warn(name, `${path} mode ${octal}, owned by uid ${st.uid}, not root`, 'run the agent as root');
  return ok(name, `${path} mode ${octal}, owner root`);
}

/** The clock the kernel keeps time with: tsc (or a paravirtual clock) is cheap to read; hpet and acpi_pm are not. */
export function clockCheck(current: string | null): Check {
  const name = 'clock source';
  if (current === null) return skip(name, 'no /sys/devices/system/clocksource/clocksource0/current_clocksource');
  if (['hpet', 'acpi_pm', 'jiffies', 'pit'].includes(current)) {
    return warn(name, `${current}: reading the time is slow (timestamps, heartbeats, latency numbers)`,
      'check dmesg for "clocksource" (an unstable TSC): on VMs kvm-clock, on bare metal tsc');
  }
  return ok(name, current);
}

/** The xDS connection as status reports it; skipped when the config comes from a file. */
export function controlPlaneCheck(cp: StatusReport['controlPlane'] | undefined, configSource: string): Check {
  const name = 'control plane';
  if (!cp) return skip(name, `config from ${configSource}, not xDS`);
  if (cp.state !== 'connected') {
    return fail(name, `${cp.server}: ${cp.state}${cp.lastError ? ` (${cp.lastError})` : ''}, ${cp.reconnects} reconnects`,
      'check the address, TLS settings and that the control plane is up; the kernel keeps the last applied state meanwhile');
  }
  if (!cp.synced) return warn(name, `${cp.server}: connected, not synced yet`, 'the control plane has not sent a complete state (warming: meshctl status)');
  if (cp.lastNack) {
    return warn(name, `${cp.server}: connected; last NACK ${cp.lastNack.typeUrl.split('.').pop()} at ${cp.lastNack.at}: ${cp.lastNack.reason}`,
      'fix the resource the control plane sends (meshctl status shows the NACK)');
  }
  return ok(name, `${cp.server}: connected since ${cp.connectedSince ?? '?'}, synced`);
}

// ---- rendering ----

function mark(v: Verdict, style: Style): string {
  switch (v) {
    case 'ok': return style.green('ok');
    case 'warn': return style.yellow('warn');
    case 'fail': return style.red('FAIL');
    case 'skip': return style.dim('skip');
  }
}

export function renderDoctor(checks: readonly Check[], style: Style): string[] {
  const out = renderTable([{ header: 'VERDICT' }, { header: 'CHECK' }, { header: 'DETAIL' }],
    checks.map((c) => [mark(c.verdict, style), c.check, c.detail]), { style });
  const todo = checks.filter((c) => c.hint && (c.verdict === 'fail' || c.verdict === 'warn'));
  if (todo.length) {
    out.push('', style.bold('What to do'));
    for (const c of todo) out.push(`  ${mark(c.verdict, style)} ${c.check}: ${c.hint}`);
  }
  const s = summary(checks);
  out.push('', `${s.ok} ok, ${s.warn} warn, ${s.fail} fail, ${s.skip} skipped`);
  return out;
}

// ---- reading the host ----

function kernelConfig(): { text: string; from: string } | { missing: string } {
  const boot = `/boot/config-${release()}`;
  try {
    if (existsSync('/proc/config.gz')) return { text: gunzipSync(readFileSync('/proc/config.gz')).toString('utf8'), from: '/proc/config.gz' };
    if (existsSync(boot)) return { text: readFileSync(boot, 'utf8'), from: boot };
  } catch (e) {
    return { missing: `the kernel config cannot be read: ${(e as Error).message}` };
  }
  return { missing: `neither /proc/config.gz (CONFIG_IKCONFIG_PROC) nor ${boot} exists` };
}

function readOr<T>(fn: () => T, fallback: T): T {
  try { return fn(); } catch { return fallback; }
}

/** Programs attached directly to a cgroup, by bpftool (null when bpftool is not installed). */
function bpftoolCgroup(path: string): { id: number; name: string; attach_type: string }[] | null {
  try {
    const out = execFileSync('bpftool', ['-j', 'cgroup', 'show', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 });
    return out.trim() ? JSON.parse(out) as { id: number; name: string; attach_type: string }[] : [];
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`bpftool cgroup show ${path}: ${((e as { stderr?: string }).stderr ?? (e as Error).message).toString().trim()}`);
  }
}

function httpReachable(url: string, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'GET', timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode === 200 ? null : `HTTP ${res.statusCode}`);
    });
    req.on('timeout', () => { req.destroy(); resolve(`no answer within ${timeoutMs} ms`); });
    req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    req.end();
  });
}

// ---- the checks that read the pins ----

export interface LinkFacts { program: string; info: LinkInfo | null; error?: string }

function readLinks(n: Native, bpffs: string): LinkFacts[] {
  const dir = join(bpffs, 'links');
  if (!existsSync(dir)) return [];
  return readdirSync(dir).sort().map((program) => {
    try {
      return { program, info: n.linkInfo(join(dir, program)) };
    } catch (e) {
      return { program, info: null, error: (e as Error).message };
    }
  });
}

/** Links vs. pins: every pinned link live and known; with the agent up, exactly what it says it attached. */
export function linksCheck(links: readonly LinkFacts[], agentPrograms: string[] | null): Check {
  const name = 'links vs pins';
  if (!links.length) {
    return fail(name, 'no program links pinned: nothing is attached', 'start the agent (it attaches the programs and pins their links)');
  }
  const problems: string[] = [];
  const defunct = links.filter((l) => !l.info || l.info.cgroupId === 0).map((l) => l.program);
  if (defunct.length) problems.push(`defunct (cgroup gone or unreadable): ${defunct.join(', ')}`);
  const unknown = links.filter((l) => !(l.program in CGROUP_PROGRAMS)).map((l) => l.program);
  if (unknown.length) problems.push(`not sockmesh programs: ${unknown.join(', ')}`);
  const pinned = new Set(links.map((l) => l.program));
  if (agentPrograms) {
    const notPinned = agentPrograms.filter((p) => !pinned.has(p));
    const notAgents = [...pinned].filter((p) => p in CGROUP_PROGRAMS && !agentPrograms.includes(p));
    if (notPinned.length) problems.push(`attached by the agent but no pinned link: ${notPinned.join(', ')}`);
    if (notAgents.length) problems.push(`pinned but not attached by the running agent: ${notAgents.join(', ')}`);
  } else {
    const core = ['sm_connect4', 'sm_connect6', 'sm_sendmsg4', 'sm_sendmsg6', 'sm_recvmsg4', 'sm_recvmsg6', 'sm_getpeername4', 'sm_getpeername6'];
    const missing = core.filter((p) => !pinned.has(p));
    if (missing.length) problems.push(`missing: ${missing.join(', ')}`);
  }
  if (problems.length) {
    return fail(name, problems.join('; '), 'restart the agent (it re-attaches what is missing); if that does not help: sockmesh-agent cleanup, then start it');
  }
  return ok(name, `${links.length} links pinned and live${agentPrograms ? ', as the agent reports' : ''}`);
}

/** The cgroup the links are attached to is the meshed one, and it is not the root cgroup; bpftool confirms the programs. */
function attachChecks(links: readonly LinkFacts[], meshed: string | null, root: string | null): Check[] {
  const nameMeshed = 'programs on the meshed cgroup';
  const nameRoot = 'root cgroup untouched';
  const out: Check[] = [];
  const live = links.filter((l) => l.info && l.info.cgroupId !== 0);
  const rootId = root ? readOr(() => statSync(root).ino, null) : null;
  if (!meshed) {
    out.push(skip(nameMeshed, 'meshed cgroup unknown (no agent, no state.json): pass --cgroup'));
  } else if (!existsSync(meshed)) {
    out.push(fail(nameMeshed, `${meshed} does not exist`, 'the meshed cgroup was removed: restart the agent (it makes it again), or fix --cgroup'));
  } else {
    const id = statSync(meshed).ino;
    const elsewhere = live.filter((l) => l.info!.cgroupId !== id);
    let onCgroup: { id: number; name: string }[] | null = null;
    let bpftoolError: string | null = null;
    try { onCgroup = bpftoolCgroup(meshed); } catch (e) { bpftoolError = (e as Error).message; }
    const kernelIds = onCgroup ? new Set(onCgroup.map((p) => p.id)) : null;
    const unseen = kernelIds ? live.filter((l) => !kernelIds.has(l.info!.progId)).map((l) => l.program) : [];
    const bpftoolNote = onCgroup ? `, bpftool sees ${onCgroup.length} program${onCgroup.length === 1 ? '' : 's'} there`
      : bpftoolError ? ` (bpftool failed: ${bpftoolError})` : ' (bpftool not installed: not cross-checked)';
    if (!live.length) {
      out.push(fail(nameMeshed, `no live sockmesh link on ${meshed}${bpftoolNote}`, 'start the agent with --cgroup ' + meshed));
    } else if (elsewhere.length) {
      out.push(fail(nameMeshed, `${elsewhere.map((l) => l.program).join(', ')} attached to cgroup id ${elsewhere[0]!.info!.cgroupId}, not ${meshed} (id ${id})`,
        'the pins belong to an agent on another cgroup: check --cgroup/--bpffs, or sockmesh-agent cleanup and restart'));
    } else if (unseen.length) {
      out.push(fail(nameMeshed, `the kernel does not list ${unseen.join(', ')} on ${meshed}${bpftoolNote}`, 'restart the agent'));
    } else {
      out.push(ok(nameMeshed, `${live.length} on ${meshed}${bpftoolNote}`));
    }
  }
  if (!root) {
    out.push(skip(nameRoot, 'no cgroup2 mount'));
    return out;
  }
  const onRoot = live.filter((l) => rootId !== null && l.info!.cgroupId === rootId).map((l) => l.program);
  let rootProgs: { name: string }[] | null = null;
  try { rootProgs = bpftoolCgroup(root); } catch { /* reported through the link ids alone */ }
  const ours = (rootProgs ?? []).filter((p) => p.name.startsWith('sm_')).map((p) => p.name);
  const meshedIsRoot = meshed !== null && existsSync(meshed) && rootId !== null && statSync(meshed).ino === rootId;
  if (onRoot.length || ours.length || meshedIsRoot) {
    out.push(fail(nameRoot, `sockmesh programs on the root cgroup ${root}: ${[...new Set([...onRoot, ...ours])].join(', ') || '(the meshed cgroup is the root)'}`,
      'every process on this machine is meshed: stop that agent and run it with a --cgroup of its own (sockmesh-agent cleanup removes the links)'));
  } else {
    out.push(ok(nameRoot, `no sockmesh program on ${root}${rootProgs ? '' : ' (by link ids; bpftool not installed)'}`));
  }
  return out;
}

// ---- the command ----

export interface DoctorOptions { cgroup?: string }

export async function runChecks(ctx: Context, opts: DoctorOptions = {}): Promise<Check[]> {
  const checks: Check[] = [];

  // The agent first: what it says decides what the pins are compared with.
  let status: StatusReport | null = null;
  try {
    status = await ctx.client.get<StatusReport>('/v1/status');
    checks.push(ok('agent', `running, pid ${status.agent.pid}, version ${status.agent.version}, config ${status.agent.configSource}`));
  } catch (e) {
    const st = ctx.state();
    const last = st?.pid ? ` (last agent: pid ${st.pid}${readOr(() => { process.kill(st.pid, 0); return true; }, false) ? ', still alive but not answering' : ', gone'})` : '';
    checks.push(fail('agent', `${e instanceof AgentUnreachable ? e.message : (e as Error).message}${last}`,
      'start sockmesh-agent (systemctl start sockmesh-agent, or see its log); the datapath keeps balancing from the pins meanwhile'));
  }
  const state = ctx.state();

  // Kernel.
  checks.push(ok('kernel', release()));
  let n: Native | null = null;
  let addonError = '';
  try { n = native(); } catch (e) { addonError = (e as Error).message; }
  if (n) {
    try {
      checks.push(...featureChecks(probeFeatures(), status?.kernel.sockmap ?? true));
    } catch (e) {
      checks.push(fail('BPF features', `probing failed: ${(e as Error).message}`, 'run meshctl doctor as root'));
    }
  } else {
    checks.push(skip('BPF features', `native addon not loadable: ${addonError}`));
  }
  checks.push(clockCheck(readOr(() => readFileSync('/sys/devices/system/clocksource/clocksource0/current_clocksource', 'utf8').trim(), null)));
  checks.push(diagDestroyCheck(kernelConfig()));

  // Mounts.
  const root = cgroup2Root();
  checks.push(cgroupMountCheck(root, mounts().filter((m) => m.fstype === 'cgroup').length));
  const bpfMount = bpffsMountOf(ctx.bpffs);
  checks.push(bpfMount ? ok('bpffs mount', `${ctx.bpffs} on the bpf filesystem at ${bpfMount}`)
    : fail('bpffs mount', `${ctx.bpffs} is not inside a mounted bpf filesystem`,
      'mount -t bpf bpf /sys/fs/bpf, and check --bpffs (the agent\'s default is /sys/fs/bpf/sockmesh)'));

  // Pins.
  const missingPins = MAP_NAMES.filter((m) => !existsSync(join(ctx.bpffs, m)));
  if (missingPins.length === MAP_NAMES.length) {
    checks.push(fail('pins', `nothing sockmesh pinned at ${ctx.bpffs}`, 'wrong --bpffs, or the agent never ran here'));
  } else if (missingPins.length) {
    checks.push(fail('pins', `missing at ${ctx.bpffs}: ${missingPins.join(', ')}`,
      'restart the agent (it pins what is missing; state in a removed map is lost)'));
  } else {
    checks.push(ok('pins', `all ${MAP_NAMES.length} maps pinned at ${ctx.bpffs}`));
  }
  const meshed = opts.cgroup ?? status?.kernel.cgroup ?? (state?.cgroup || null);
  if (n && ctx.hasPins()) {
    let reader: MapReader | null = null;
    try {
      reader = MapReader.fromPins(ctx.bpffs, n);
      checks.push(abiCheck(pinnedAbi(n, ctx.bpffs)));
      const links = readLinks(n, ctx.bpffs);
      const agentPrograms = status ? status.programs.filter((p) => p.how !== 'detached' && p.program in CGROUP_PROGRAMS).map((p) => p.program) : null;
      checks.push(linksCheck(links, agentPrograms));
      checks.push(...attachChecks(links, meshed, root));
      const proxy = reader.proxy();
      checks.push(!proxy ? skip('proxy heartbeat', 'no L7 proxy announced in sm_proxy')
        : proxy.alive ? ok('proxy heartbeat', `${proxy.heartbeatAgeMs} ms old (timeout ${proxy.timeoutMs} ms)`)
          : fail('proxy heartbeat', proxy.heartbeatAgeMs === null ? 'the proxy is marked down' : `stale: ${proxy.heartbeatAgeMs} ms old (timeout ${proxy.timeoutMs} ms)`,
            'L7 services follow their fail mode until the agent (which runs the proxy) is back: start it'));
      checks.push(proxyListenersCheck(proxy));
      checks.push(fillCheck(reader.fill()));
    } catch (e) {
      checks.push(fail('pinned maps', `cannot read the pins at ${ctx.bpffs}: ${(e as Error).message}`, 'run meshctl doctor as root'));
    } finally {
      reader?.close();
    }
  } else {
    const why = !n ? `native addon not loadable: ${addonError}` : `nothing pinned at ${ctx.bpffs}`;
    for (const c of ['pins ABI version', 'links vs pins', 'programs on the meshed cgroup', 'root cgroup untouched', 'proxy heartbeat', 'proxy listeners', 'map fill']) {
      checks.push(skip(c, why));
    }
  }

  // Agent side.
  const sock = join(ctx.runDir, 'admin.sock');
  checks.push(adminSocketCheck(sock, readOr(() => statSync(sock), null), status !== null));
  if (status) {
    const a = status.agent;
    checks.push(a.lastConfigError ? warn('config', `last config rejected: ${a.lastConfigError}`, 'fix the config; the agent keeps the last good one in force')
      : ok('config', `${a.configSource} version ${a.configVersion}`));
    const metrics = status.health?.metrics ?? null;
    if (!metrics) checks.push(skip('metrics endpoint', 'the agent runs without one (--metrics-listen off)'));
    else {
      const err = await httpReachable(metrics, Math.min(ctx.client.timeoutMs, 3000));
      checks.push(err ? fail('metrics endpoint', `${metrics}: ${err}`, 'check --metrics-listen and local firewalls') : ok('metrics endpoint', metrics));
    }
    checks.push(controlPlaneCheck(status.controlPlane, a.configSource));
  } else {
    for (const c of ['config', 'metrics endpoint', 'control plane']) checks.push(skip(c, 'the agent is not answering'));
  }
  return checks;
}

/** sm_config's ABI version, or null when the entry is missing. */
function pinnedAbi(n: Native, bpffs: string): bigint | null {
  const fd = n.objGet(join(bpffs, 'sm_config'));
  try {
    const v = n.mapLookup(fd, u32(0));
    return v ? abiVersionOf(v) : null;
  } finally {
    n.close(fd);
  }
}

export async function doctor(ctx: Context, opts: DoctorOptions = {}): Promise<number> {
  const checks = await runChecks(ctx, opts);
  const code = exitCodeFor(checks);
  ctx.print({ checks, summary: summary(checks), exitCode: code }, () => renderDoctor(checks, ctx.style));
  return code;
}
