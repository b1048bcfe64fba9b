// The benchmark's private cgroup. Programs are attached only to it (never to the root cgroup),
// and every benchmark process joins it before entering its network namespace.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { onCleanup } from './proc.js';

/** The cgroup2 mount point, read from /proc/mounts (it is /sys/fs/cgroup/unified on hybrid hosts). */
export function cgroup2Mount(mounts = readFileSync('/proc/mounts', 'utf8')): string {
  for (const line of mounts.split('\n')) {
    const f = line.split(' ');
    if (f[2] === 'cgroup2') return f[1].replace(/\\040/g, ' ');
  }
  throw new Error('no cgroup2 mount in /proc/mounts (cgroup v2 is required)');
}

/** Create `<cgroup2>/<name>`; `name` must be one of ours so removal can never hit anything else. */
export function createCgroup(name: string): string {
  if (!/^sockmesh-bench-[\w-]+$/.test(name)) throw new Error(`refusing cgroup name ${name}`);
  const dir = join(cgroup2Mount(), name);
  mkdirSync(dir); // fails if it exists: we never adopt someone else's cgroup
  return dir;
}

/** Create a child cgroup (a leaf that processes can join). */
export function createChildCgroup(parent: string, name: string): string {
  const dir = join(parent, name);
  mkdirSync(dir);
  return dir;
}

/** Pids currently in the cgroup (not its children). */
export function cgroupPids(dir: string): number[] {
  return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
}

function children(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => join(dir, d.name));
}

function subtreePids(dir: string): number[] {
  return [...cgroupPids(dir), ...children(dir).flatMap(subtreePids)];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Kill whatever is left in the cgroup and its children, then remove them all. Removing a cgroup
 * also detaches any program still attached to it: the last line of defence for the agent's links.
 */
export async function removeCgroup(dir: string): Promise<void> {
  if (!basename(dir).startsWith('sockmesh-bench-') || dirname(dir) !== cgroup2Mount()) {
    throw new Error(`refusing to remove ${dir}`);
  }
  if (!existsSync(dir)) return;
  const deadline = Date.now() + 5000;
  for (;;) {
    const pids = subtreePids(dir);
    if (pids.length === 0) break;
    // cgroup.kill (5.14+) kills the whole subtree atomically, including tasks forking meanwhile.
    if (existsSync(join(dir, 'cgroup.kill'))) writeFileSync(join(dir, 'cgroup.kill'), '1');
    else for (const p of pids) try { process.kill(p, 'SIGKILL'); } catch { /* already gone */ }
    if (Date.now() > deadline) throw new Error(`${dir}: processes ${pids.join(',')} survive SIGKILL`);
    await sleep(50);
  }
  const rmTree = async (d: string): Promise<void> => {
    for (const c of children(d)) await rmTree(c);
    for (;;) {
      try {
        rmdirSync(d);
        return;
      } catch (e) {
        // EBUSY while the last killed task is still being reaped
        if ((e as NodeJS.ErrnoException).code !== 'EBUSY' || Date.now() > deadline) throw e;
        await sleep(50);
      }
    }
  };
  await rmTree(dir);
}

/** A bench's own cgroup and scratch directory, both removed by the cleanup (also on errors and Ctrl-C). */
export function benchWorkspace(): { id: string; cgroup: string; workDir: string } {
  const id = `sockmesh-bench-${process.pid}`;
  const cgroup = createCgroup(id);
  onCleanup(`cgroup ${cgroup}`, () => removeCgroup(cgroup));
  const workDir = mkdtempSync(join(tmpdir(), `${id}-`));
  onCleanup(`dir ${workDir}`, () => rmSync(workDir, { recursive: true, force: true }));
  return { id, cgroup, workDir };
}
