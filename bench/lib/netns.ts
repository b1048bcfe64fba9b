// Private network namespaces for the benchmark, and the one way benchmark processes are started:
// join the cgroup first, then enter the namespace (`ip netns exec` remounts /sys, so the cgroup
// tree is not visible from inside), then pin to a CPU. Every step execs, so the pid we hold is
// the pid of the measured program and signals reach it directly.
import { run, runChecked } from './proc.js';

const IP_TIMEOUT_MS = 10_000;

export async function addNetns(name: string): Promise<void> {
  if (!/^sockmesh-bench-[\w-]+$/.test(name)) throw new Error(`refusing netns name ${name}`);
  await runChecked('ip', ['netns', 'add', name], IP_TIMEOUT_MS);
  await runChecked('ip', ['-n', name, 'link', 'set', 'lo', 'up'], IP_TIMEOUT_MS);
}

export async function delNetns(name: string): Promise<void> {
  const r = await run('ip', ['netns', 'del', name], IP_TIMEOUT_MS);
  if (r.code !== 0 && !/No such file/.test(r.stderr)) throw new Error(`ip netns del ${name}: ${r.stderr.trim()}`);
}

/** Command line that runs `argv` in cgroup `cgroupDir`, netns `ns`, pinned to `cpu`. */
export function inCgroupNetns(cgroupDir: string, ns: string, cpu: number, argv: string[]): [string, string[]] {
  // $0 is the cgroup dir and "$@" the rest: no quoting of user data inside the script.
  const script = 'echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@"';
  return ['sh', ['-c', script, cgroupDir, ns, 'taskset', '-c', String(cpu), ...argv]];
}

/** Command line that runs `argv` inside netns `ns` (setup tools, not measured). */
export function inNetns(ns: string, argv: string[]): [string, string[]] {
  return ['ip', ['netns', 'exec', ns, ...argv]];
}

/** Wait until something listens on TCP `port` inside `ns`; `alive` aborts the wait early. */
export async function waitListening(ns: string, port: number, timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive()) throw new Error(`server for port ${port} in ${ns} exited before listening`);
    const [cmd, args] = inNetns(ns, ['ss', '-Hltn', `sport = :${port}`]);
    const r = await run(cmd, args, 5000);
    if (r.code === 0 && r.stdout.trim() !== '') return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`nothing listens on port ${port} in ${ns} after ${timeoutMs} ms`);
}

// Like inCgroupNetns, but entering the namespace with nsenter, which changes the network namespace only (the lab's).
export { inCgroupNsenter } from '../../lab/cgroup.js';
