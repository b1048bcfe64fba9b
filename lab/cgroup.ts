// The cgroup side of the node lab, shared by the lab, the kernel tests' harness and the benches: a process joins its
// pod's cgroup FIRST and then enters the pod's network namespace (`ip netns exec` remounts /sys, where the cgroup tree
// would look empty); killing and removing a cgroup tree, also while killed tasks are still being reaped.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Command line that runs `argv` in cgroup `cgroupDir`, netns `ns`: nsenter changes the network namespace only, so a
 * process that needs cgroupfs and bpffs (the agent) still sees them. `cpus` is a taskset list ('0', '0-1');
 * undefined = not pinned. Every step execs: the pid the caller holds is the pid of the program.
 */
export function inCgroupNsenter(cgroupDir: string, ns: string, cpus: string | undefined, argv: string[]): [string, string[]] {
  // $0 is the cgroup dir and "$@" the rest: no quoting of user data inside the script.
  const script = 'echo $$ > "$0/cgroup.procs" && exec "$@"';
  const pin = cpus === undefined ? [] : ['taskset', '-c', cpus];
  return ['sh', ['-c', script, cgroupDir, 'nsenter', `--net=/run/netns/${ns}`, ...pin, ...argv]];
}

/** Kill every process in a cgroup and its children (not this one). */
export function killCgroup(path: string): void {
  if (!existsSync(path)) return;
  for (const sub of readdirSync(path, { withFileTypes: true })) if (sub.isDirectory()) killCgroup(join(path, sub.name));
  if (existsSync(join(path, 'cgroup.kill'))) {
    try { writeFileSync(join(path, 'cgroup.kill'), '1'); } catch { /* older kernel */ }
  }
  for (const pid of readFileSync(join(path, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
    if (Number(pid) === process.pid) continue;
    try { process.kill(Number(pid), 'SIGKILL'); } catch { /* gone */ }
  }
}

/** Remove a cgroup and its children, waiting out EBUSY while killed tasks are reaped. */
export function removeCgroup(path: string): void {
  if (!existsSync(path)) return;
  for (const sub of readdirSync(path, { withFileTypes: true })) if (sub.isDirectory()) removeCgroup(join(path, sub.name));
  for (let i = 0; i < 50; i++) {
    try { rmdirSync(path); return; } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EBUSY') throw e;
      spawnSync('sleep', ['0.05']);
    }
  }
  rmdirSync(path);
}
