// The sockmesh agent as a benchmark subject: start it on the bench cgroup with a one-service
// config, wait until its datapath is ready, read its global counters, stop it and remove every
// pin and link it made.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Background, run } from './proc.js';
import { parseGcLine } from './gctrace.js';
import { AGENT_NODE_FLAGS } from '../../agent/runtime.js';

export interface AgentOptions {
  root: string; // project root (dist/agent/main.js lives under it)
  cgroupDir: string;
  bpffsDir: string;
  configPath: string;
  vip: string;
  port: number;
  backend: string;
  /** the config file's text (default: benchConfig(vip, port, backend), one TCP service) */
  configText?: string;
  /** more agent flags (e.g. --proxy-port, --run-dir) */
  extraArgs?: string[];
  /** more Node.js flags after the agent's own (e.g. --trace-gc-nvp) */
  nodeFlags?: string[];
  /** wraps the agent's command line (e.g. into a cgroup and network namespace); default: run it as is */
  launch?: (argv: string[]) => [string, string[]];
}

export function agentEntry(root: string): string {
  return join(root, 'dist', 'agent', 'main.js');
}

/**
 * The config the agent reads: one TCP service, VIP -> the local server (on the VIP's port unless backendPort says
 * otherwise); `more`: further lines of the service (e.g. an `http:` block).
 */
export function benchConfig(vip: string, port: number, backend: string, o: { name?: string; backendPort?: number; more?: string[] } = {}): string {
  return [
    'services:',
    `  - name: ${o.name ?? 'bench'}`,
    `    vips: [${vip}]`,
    `    ports: [{ port: ${port}, protocol: tcp }]`,
    `    backends: [{ address: ${backend}, port: ${o.backendPort ?? port} }]`,
    ...(o.more ?? []),
    '',
  ].join('\n');
}

const READY_TIMEOUT_MS = 30_000;
const AGENT_MAX_MS = 10 * 60_000;
const CLEANUP_TIMEOUT_MS = 20_000;

export class Agent {
  private constructor(private readonly opts: AgentOptions, private readonly proc: Background) {}

  static async start(opts: AgentOptions): Promise<Agent> {
    writeFileSync(opts.configPath, opts.configText ?? benchConfig(opts.vip, opts.port, opts.backend));
    const argv = [
      process.execPath, ...AGENT_NODE_FLAGS, ...(opts.nodeFlags ?? []), agentEntry(opts.root), '--config', opts.configPath, '--cgroup', opts.cgroupDir, '--bpffs', opts.bpffsDir,
      ...(opts.extraArgs ?? []),
    ];
    const [cmd, args] = opts.launch ? opts.launch(argv) : [argv[0]!, argv.slice(1)];
    const proc = new Background('sockmesh agent', cmd, args, AGENT_MAX_MS);
    const agent = new Agent(opts, proc);
    try {
      await proc.waitForLine((line) => isReadyLine(line), READY_TIMEOUT_MS);
    } catch (e) {
      await agent.stop();
      throw e;
    }
    return agent;
  }

  get running(): boolean {
    return this.proc.running;
  }

  /** The agent's pid (the launcher execs into it), for its CPU time. */
  get pid(): number | undefined {
    return this.proc.child.pid;
  }

  /** Call `listener` with every later stdout line; returns the unsubscribe function. */
  onLine(listener: (line: string) => void): () => void {
    return this.proc.onLine(listener);
  }

  /** The agent's last output lines, for error messages. */
  tail(lines = 10): string {
    // without --trace-gc-nvp's lines (nodeFlags), which would crowd out what the agent said
    return this.proc.tail(lines + 200).split('\n').filter((l) => !parseGcLine(l)).slice(-lines).join('\n');
  }

  /** The sm_global counters, by name (from the ABI header), summed over CPUs. */
  async counters(): Promise<Record<string, number>> {
    const names = globalCounterNames(readFileSync(join(this.opts.root, 'bpf', 'include', 'sockmesh_abi.h'), 'utf8'));
    const r = await run('bpftool', ['-j', 'map', 'dump', 'pinned', join(this.opts.bpffsDir, 'sm_global')], 10_000);
    if (r.code !== 0) throw new Error(`bpftool map dump sm_global: ${r.stderr.trim()}`);
    const byIndex = sumPerCpu(r.stdout);
    const out: Record<string, number> = {};
    names.forEach((name, i) => (out[name] = byIndex.get(i) ?? 0));
    return out;
  }

  /** SIGTERM, then the agent's own cleanup; whatever is still pinned after that is unpinned here. */
  async stop(): Promise<void> {
    const r = await this.proc.stop('SIGTERM');
    if (r.code !== 0 && r.code !== null) process.stderr.write(`agent exited with ${r.code}\n${this.proc.tail()}\n`);
    await cleanupAgent(this.opts.root, this.opts.bpffsDir, this.opts.cgroupDir);
  }
}

function isReadyLine(line: string): boolean {
  if (!line.includes('datapath ready')) return false;
  try {
    return (JSON.parse(line) as { msg?: unknown }).msg === 'datapath ready';
  } catch {
    return false;
  }
}

/** `agent cleanup`, then remove the bpffs dir ourselves if anything is left in it. */
export async function cleanupAgent(root: string, bpffsDir: string, cgroupDir: string): Promise<void> {
  if (existsSync(agentEntry(root))) {
    const r = await run(
      process.execPath,
      [agentEntry(root), 'cleanup', '--bpffs', bpffsDir, '--cgroup', cgroupDir],
      CLEANUP_TIMEOUT_MS,
    );
    if (r.code !== 0) process.stderr.write(`agent cleanup exited with ${r.code ?? r.signal}: ${r.stderr.trim()}\n`);
  }
  // Unpinning drops our references; links die with the cgroup, which the caller removes next.
  if (existsSync(bpffsDir)) rmSync(bpffsDir, { recursive: true, force: true });
}

/** Names of `enum sm_global_counter`, in index order, read from the ABI header (declared once). */
export function globalCounterNames(header: string): string[] {
  const m = /enum\s+sm_global_counter\s*\{([^}]*)\}/.exec(header);
  if (!m) throw new Error('ABI header has no enum sm_global_counter');
  const names: string[] = [];
  for (const raw of m[1].replace(/\/\*[\s\S]*?\*\//g, '').split(',')) {
    const [name, value] = raw.trim().split(/\s*=\s*/);
    if (!name || name === 'SM_G__MAX') continue;
    if (value !== undefined && Number(value) !== names.length) throw new Error(`unexpected ${name} = ${value}`);
    names.push(name);
  }
  return names;
}

type Hexes = string[];
interface DumpEntry {
  key: number | Hexes;
  values: Array<{ cpu: number; value: number | Hexes }>;
  formatted?: { key: number; values: Array<{ cpu: number; value: number }> };
}

function littleEndian(v: number | Hexes): number {
  if (typeof v === 'number') return v;
  let n = 0n;
  for (let i = v.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(parseInt(v[i], 16));
  return Number(n);
}

/** `bpftool -j map dump` of a PERCPU_ARRAY (raw or BTF-formatted) -> index -> sum over CPUs. */
export function sumPerCpu(json: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const e of JSON.parse(json) as DumpEntry[]) {
    const entry = e.formatted ?? e;
    const key = littleEndian(entry.key);
    out.set(key, entry.values.reduce((s, c) => s + littleEndian(c.value), 0));
  }
  return out;
}
