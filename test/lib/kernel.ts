// Test harness for kernel tests: a private cgroup and bpffs directory per test, the real agent as a child process,
// and cleanup that runs also when the test fails. Nothing here ever touches the root cgroup.
import './childenv.js'; // first: what this starts runs without tap's instrumentation
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer, type AddressInfo } from 'node:net';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import { AGENT_NODE_FLAGS } from '../../agent/runtime.js';
import { killCgroup, removeCgroup } from '../../lab/cgroup.js';

// Killing and removing cgroup trees: the lab's (one definition for the lab, the tests and the benches).
export { killCgroup, removeCgroup };

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const AGENT = join(ROOT, 'dist', 'agent', 'main.js');
export const MESHCTL = join(ROOT, 'dist', 'cli', 'meshctl.js');
/**
 * A prefix for the argv of a daemon a test starts (agent, control plane, tunnel end): the kernel kills it when the
 * test process dies, also when that death skips the teardown (tap's timeout, a crash, a SIGKILL); an agent left
 * running keeps its listeners and pins (one was found 23 minutes later). PR_SET_PDEATHSIG survives the exec of
 * nsenter and node (util-linux's setpriv, in every Debian/Ubuntu base).
 */
export const DIES_WITH_TEST = ['setpriv', '--pdeathsig', 'SIGKILL'];

interface Teardown { teardown(fn: () => void | Promise<void>): void }

/** Why kernel tests cannot run here, or null when they can. */
export function kernelSkipReason(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'needs root (loads BPF programs)';
  if (!cgroup2Root()) return 'no cgroup v2 mounted';
  // the BPF addon, and the proxy's (the agent under test runs its L7 proxy on it)
  for (const addon of ['sockmesh', 'sockmesh_netio']) {
    if (!existsSync(join(ROOT, 'build', 'Release', `${addon}.node`))) return `native addon ${addon}.node not built (npm ci)`;
  }
  if (!existsSync(join(ROOT, 'build', 'bpf', 'sock_lb.bpf.o'))) return 'BPF objects not built (npm ci)';
  if (!existsSync(AGENT)) return 'agent not compiled (npm ci / tsc)';
  return null;
}

let seq = 0;
const uniq = (name: string): string => `sockmesh-test-${name}-${process.pid}-${++seq}`;

export interface TestCgroup {
  path: string;
  /** the cgroup the test runner started in (the agent runs there, never inside the meshed cgroup) */
  original: string;
  /** a child cgroup for clients/servers (processes never live in the attached cgroup itself) */
  child(name: string): string;
  /** Move this test process into a child cgroup (undone at teardown, before the cgroup is removed). */
  enter(name?: string): void;
  leave(): void;
}

const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true; } catch { return false; } };
let swept = false;

/**
 * Remove what a test run killed before its teardown (SIGKILL, a crashed runner) left behind: cgroups and pins named
 * sockmesh-test-*-<pid>-* whose pid is gone. Runs once per test process.
 */
function sweepStale(root: string): void {
  if (swept) return;
  swept = true;
  const stale = (name: string): boolean => {
    const m = /^sockmesh-test-.+-(\d+)-\d+$/.exec(name);
    return m !== null && Number(m[1]) !== process.pid && !alive(Number(m[1]));
  };
  for (const name of existsSync('/sys/fs/bpf') ? readdirSync('/sys/fs/bpf') : []) {
    if (stale(name)) spawnSync(process.execPath, [AGENT, 'cleanup', '--bpffs', join('/sys/fs/bpf', name)], { stdio: 'ignore' });
  }
  for (const name of readdirSync(root)) {
    if (!stale(name)) continue;
    try { killCgroup(join(root, name)); removeCgroup(join(root, name)); } catch { /* reported by the next run */ }
  }
}

/** A cgroup of the test's own under the cgroup2 mount, removed at teardown with everything in it. */
export function testCgroup(t: Teardown, name: string): TestCgroup {
  const root = cgroup2Root()!;
  sweepStale(root);
  const path = join(root, uniq(name));
  mkdirSync(path);
  const original = join(root, readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3));
  const cg: TestCgroup = {
    path,
    original,
    child(n: string) {
      const p = join(path, n);
      if (!existsSync(p)) mkdirSync(p);
      return p;
    },
    enter(n = 'self') { writeFileSync(join(cg.child(n), 'cgroup.procs'), String(process.pid)); },
    leave() { writeFileSync(join(original, 'cgroup.procs'), String(process.pid)); },
  };
  t.teardown(() => {
    cg.leave();
    killCgroup(path);
    removeCgroup(path);
  });
  return cg;
}

export interface AgentHandle {
  proc: ChildProcess;
  bpffs: string;
  runDir: string;
  configFile: string;
  cgroup: string;
  /** every stdout line, parsed (pino JSON) */
  logs: Record<string, unknown>[];
  /** resolves when a log line matching pred appears (rejects after timeoutMs) */
  waitLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  writeConfig(text: string): void;
  kill(signal?: NodeJS.Signals): Promise<void>;
  restart(): Promise<void>;
}

/** config: the text of a config file the agent watches; or xds: a control plane address (no file). */
export interface AgentOpts {
  config?: string; configName?: string; xds?: string; extraArgs?: string[];
  /** the agent's config source flags instead of --config/--xds (e.g. ['--kubernetes', '--kubeconfig', f]) */
  source?: string[];
  /** run the agent in this cgroup (e.g. a child of the meshed one, as a DaemonSet pod under kubepods) instead of the test's original */
  inCgroup?: string;
  /** run the agent in this network namespace (a lab node's: lab/cluster.ts), with nsenter --net (bpffs stays visible) */
  netns?: string;
  /** the instance's bpffs and run directories (a lab node's) instead of fresh ones named by the test */
  bpffs?: string;
  runDir?: string;
  /** Node flags before the agent's script, after AGENT_NODE_FLAGS (e.g. --expose-gc and bench/lib/soakgc.js's import) */
  nodeFlags?: string[];
}

/** Start the real agent (compiled) on a private bpffs dir and config file; torn down (and cleaned) at teardown. */
export async function startAgent(t: Teardown, cgroup: TestCgroup, opts: AgentOpts): Promise<AgentHandle> {
  const id = uniq('agent');
  const bpffs = opts.bpffs ?? join('/sys/fs/bpf', id);
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-test-'));
  const runDir = opts.runDir ?? join(dir, 'run');
  const configFile = join(dir, opts.configName ?? 'config.yaml');
  if (opts.config !== undefined) writeFileSync(configFile, opts.config);
  const h: AgentHandle = {
    proc: undefined as unknown as ChildProcess, bpffs, runDir, configFile, cgroup: cgroup.path, logs: [],
    waitLog: (pred, timeoutMs = 15000) => new Promise((res, rej) => {
      const found = h.logs.find(pred);
      if (found) return res(found);
      const timer = setTimeout(() => { clearInterval(iv); rej(new Error(`agent log line not seen in ${timeoutMs} ms; last lines:\n${h.logs.slice(-5).map((l) => JSON.stringify(l)).join('\n')}`)); }, timeoutMs);
      let seen = h.logs.length;
      const iv = setInterval(() => {
        for (; seen < h.logs.length; seen++) {
          if (pred(h.logs[seen]!)) { clearTimeout(timer); clearInterval(iv); return res(h.logs[seen]!); }
        }
      }, 10);
    }),
    writeConfig: (text) => {
      // Write-then-rename, as editors and config management do: the agent never sees half a file.
      writeFileSync(`${configFile}.tmp`, text);
      spawnSync('mv', [`${configFile}.tmp`, configFile]);
    },
    kill: async (signal = 'SIGTERM') => {
      const p = h.proc;
      if (p.exitCode !== null || p.signalCode !== null) return;
      await new Promise<void>((res) => { p.once('exit', () => res()); p.kill(signal); });
    },
    restart: async () => { await launch(); },
  };
  // Each test agent gets a proxy port of its own (the default 15001 may be held by another agent on this machine, and
  // an agent whose proxy cannot listen sends L7 services to their fail mode), and no metrics endpoint unless asked.
  const extra = [...(opts.extraArgs ?? [])];
  if (!extra.includes('--proxy-port')) extra.push('--proxy-port', String(await freePort()));
  if (!extra.includes('--metrics-listen')) extra.push('--metrics-listen', 'off');
  const launch = async (): Promise<void> => {
    // The agent runs in the cgroup the test started in (or opts.inCgroup), even when the test process has entered the meshed one.
    const source = opts.source ?? (opts.xds ? ['--xds', opts.xds] : ['--config', configFile]);
    const args = [AGENT, ...source, '--cgroup', cgroup.path, '--bpffs', bpffs, '--run-dir', runDir, ...extra];
    const netns = opts.netns ? ['nsenter', `--net=/run/netns/${opts.netns}`] : [];
    const proc = spawn('/bin/sh', ['-c', `echo $$ > '${opts.inCgroup ?? cgroup.original}/cgroup.procs' && exec "$@"`, 'sh', ...DIES_WITH_TEST, ...netns, process.execPath, ...AGENT_NODE_FLAGS, ...(opts.nodeFlags ?? []), ...args],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    h.proc = proc;
    let buf = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) {
        try { h.logs.push(JSON.parse(l) as Record<string, unknown>); } catch { h.logs.push({ msg: l }); }
      }
    });
    let err = '';
    proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    const start = h.logs.length;
    await Promise.race([
      h.waitLog((l) => l.msg === 'datapath ready' && h.logs.indexOf(l) >= start, 20000),
      new Promise((_, rej) => proc.once('exit', (code) => rej(new Error(`agent exited with ${code}: ${err.trim()}`)))),
    ]);
  };
  t.teardown(async () => {
    await h.kill('SIGTERM');
    spawnSync(process.execPath, [AGENT, 'cleanup', '--bpffs', bpffs, '--run-dir', runDir], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  });
  await launch();
  return h;
}

/** A TCP port free on both 127.0.0.1 and ::1 right now. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => resolve(p)); });
    });
    const v6free = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code !== 'EADDRINUSE'));
      s.listen(port, '::1', () => s.close(() => resolve(true)));
    });
    if (v6free) return port;
  }
}

/** Run meshctl against an agent instance; returns exit code and output. */
export function meshctl(agent: Pick<AgentHandle, 'bpffs' | 'runDir'>, args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MESHCTL, '--bpffs', agent.bpffs, '--run-dir', agent.runDir, ...args], { encoding: 'utf8', timeout: 20000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Run the real agent binary with a config that does not exist and `args`, as an operator would start it, for a flag it
 * must refuse before touching the kernel: its exit code and stderr.
 */
export function runAgentRefusing(dir: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((done) => {
    const p = spawn(process.execPath, [AGENT, '--config', join(dir, 'none.yaml'), '--bpffs', join(dir, 'bpffs'), '--run-dir', join(dir, 'run'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    p.on('exit', (code) => done({ code, stderr }));
  });
}
