// Source workloads for L7 authorization: the config names each workload's cgroups by path under the
// cgroup2 mount; the kernel reports the client's cgroup by id, which is the inode number of the
// cgroup's directory. This maps ids to workload names once per model update.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Workload } from '../model/l7.js';

/** descendants visited under one workload cgroup at most (a pod has a handful: one per container) */
const MAX_DESCENDANTS = 10_000;

/**
 * cgroup id -> workload name, for every cgroup of every workload and every cgroup below it (a
 * client runs in a container's cgroup under the pod's). Where two workloads claim the same cgroup,
 * the one naming the deeper path wins (a workload for one container inside a pod-level one), and
 * among equally deep ones the first in the config. Cgroups that do not exist (yet) are skipped: a
 * pod not started has no cgroup; the agent calls this again on its next model update. Cgroups made
 * later under a known one are not seen until then either.
 */
export function resolveWorkloads(workloads: Workload[] | undefined, cgroup2Root: string): Map<bigint, string> {
  const out = new Map<bigint, string>();
  const depthOf = new Map<bigint, number>();
  for (const w of workloads ?? []) {
    for (const path of w.cgroups) {
      const rel = path.replace(/^\/+/, '');
      const dir = join(cgroup2Root, rel);
      const base = rel === '' ? 0 : rel.split('/').length;
      let seen = 0;
      const visit = (d: string, depth: number): void => {
        let ino: bigint;
        try {
          ino = statSync(d, { bigint: true }).ino;
        } catch {
          return;
        }
        const prev = depthOf.get(ino);
        // the cgroup itself (depth 0 below the named one) is claimed at the named path's depth
        const claim = base * 1000 - depth;
        if (prev === undefined || claim > prev) {
          depthOf.set(ino, claim);
          out.set(ino, w.name);
        }
        if (++seen >= MAX_DESCENDANTS) return;
        let entries;
        try {
          entries = readdirSync(d, { withFileTypes: true });
        } catch {
          return;
        }
        for (const e of entries) if (e.isDirectory() && seen < MAX_DESCENDANTS) visit(join(d, e.name), depth + 1);
      };
      visit(dir, 0);
    }
  }
  return out;
}
