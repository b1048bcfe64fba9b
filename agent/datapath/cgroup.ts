// Where the kernel's cgroup2 and bpf filesystems are, and the rules for using them.
import { existsSync, mkdirSync, readFileSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { isAbsolute, join, resolve } from 'node:path';

export interface Mount { source: string; target: string; fstype: string }

/** /proc/self/mounts, mount points unescaped. */
export function mounts(): Mount[] {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [source = '', target = '', fstype = ''] = l.split(' ');
      // /proc/mounts escapes spaces and friends as octal.
      return { source, target: target.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), fstype };
    });
}

/** The cgroup2 mount point (/sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones), or null. */
export function cgroup2Root(): string | null {
  const m = mounts().filter((x) => x.fstype === 'cgroup2');
  // Prefer the conventional locations when several exist.
  const pick = m.find((x) => x.target === '/sys/fs/cgroup') ?? m.find((x) => x.target === '/sys/fs/cgroup/unified') ?? m[0];
  return pick ? pick.target : null;
}

export function requireCgroup2Root(): string {
  const root = cgroup2Root();
  if (!root) throw new Error('sockmesh needs cgroup v2: no cgroup2 filesystem is mounted (mount -t cgroup2 none /sys/fs/cgroup)');
  return root;
}

/** Resolve a --cgroup argument: absolute paths must lie under the cgroup2 mount; relative ones are taken from it. */
export function resolveCgroup(arg: string, root = requireCgroup2Root()): string {
  const p = isAbsolute(arg) ? resolve(arg) : resolve(root, arg);
  if (p !== root && !p.startsWith(root + '/')) {
    throw new Error(`--cgroup ${arg}: not under the cgroup2 mount ${root}`);
  }
  return p;
}

export function isRootCgroup(path: string, root = requireCgroup2Root()): boolean {
  const real = existsSync(path) ? realpathSync(path) : resolve(path);
  return real === realpathSync(root);
}

/** Create the cgroup directory if needed. */
export function ensureCgroup(path: string): void {
  if (!existsSync(path)) mkdirSync(path, { recursive: true });
  if (!existsSync(join(path, 'cgroup.procs'))) throw new Error(`${path}: not a cgroup v2 directory (no cgroup.procs)`);
}

/** Move a process into a cgroup. */
export function joinCgroup(path: string, pid: number | 'self' = process.pid): void {
  writeFileSync(join(path, 'cgroup.procs'), String(pid === 'self' ? process.pid : pid));
}

/** The cgroup2 path of a process (from /proc/PID/cgroup, the "0::" line). */
export function cgroupOf(pid: number = process.pid, root = requireCgroup2Root()): string {
  const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  return join(root, line ? line.slice(3) : '/');
}

/**
 * The cgroup v2 id of this process (what bpf_get_current_cgroup_id() returns for it): the inode number of its cgroup
 * directory. The L7 proxy's own connect() calls are recognised by it.
 */
export function ownCgroupId(root = requireCgroup2Root()): bigint {
  return statSync(cgroupOf(process.pid, root), { bigint: true }).ino;
}

export const DEFAULT_BPFFS = '/sys/fs/bpf';

function isBpffs(path: string): boolean {
  return mounts().some((m) => m.fstype === 'bpf' && m.target === path);
}

/** Is path itself a mount point (e.g. the root of a bpf filesystem)? */
export function isMountPoint(path: string): boolean {
  return mounts().some((m) => m.target === path.replace(/\/+$/, ''));
}

/** The mount point of the bpf filesystem dir lies in (the deepest one), or null when it is not inside one. */
export function bpffsMountOf(dir: string): string | null {
  const inside = mounts().filter((m) => m.fstype === 'bpf' && (dir === m.target || dir.startsWith(m.target + '/')));
  return inside.sort((a, b) => b.target.length - a.target.length)[0]?.target ?? null;
}

/** Make sure the bpf filesystem is mounted at the parent of dir (mounting /sys/fs/bpf when nobody has). */
export function ensureBpffs(dir: string): void {
  // The agent pins by name and its cleanup removes those names: it needs a directory of its own.
  if (isMountPoint(dir)) throw new Error(`--bpffs ${dir} is a mount point: give the agent a directory of its own under it, e.g. ${dir.replace(/\/+$/, '')}/sockmesh`);
  if (!bpffsMountOf(dir)) {
    if (!dir.startsWith(DEFAULT_BPFFS + '/')) {
      throw new Error(`--bpffs ${dir}: not inside a mounted bpf filesystem`);
    }
    if (!isBpffs(DEFAULT_BPFFS)) {
      try {
        execFileSync('mount', ['-t', 'bpf', 'bpf', DEFAULT_BPFFS], { stdio: 'pipe' });
      } catch (e) {
        throw new Error(`cannot mount the bpf filesystem at ${DEFAULT_BPFFS}: ${(e as Error).message.trim()}`);
      }
    }
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (!statSync(dir).isDirectory()) throw new Error(`${dir}: not a directory`);
}
