// Workload identity: who a client is. Today a workload named by the config (for L7 authorization): the config names
// each workload's cgroups by path under the cgroup2 mount; the kernel reports the client's cgroup by id, which is the
// inode number of the cgroup's directory. This maps ids to workload names once per model update, and looks an id not
// seen yet up at its first request. Pods, service accounts and certificates will hang off here.
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

/** cgroup ids found in no workload are remembered at most this long (and this many) before they are walked for again */
const MISS_TTL_MS = 10_000;
const MAX_MISSES = 65_536;

/**
 * Who a client is: the workload of its cgroup id, for the workloads of the model in force. follow() is told the
 * workloads when a model is committed (resolved then, not before the kernel said yes: a rejected config's workloads
 * must not outlive it); of() answers the proxy per request.
 */
export class WorkloadIdentities {
  private workloads: Workload[] | undefined;
  private ids = new Map<bigint, string>();
  private resolvedAt = 0;
  private walked = 0;
  /** cgroup ids found in no workload since the last resolution: not walked for again (see of) */
  private readonly misses = new Set<bigint>();

  constructor(private readonly cgroup2Root: string, private readonly now: () => number = Date.now) {}

  /** The workloads of the model now in force: every cgroup of theirs resolved again, the misses forgotten. */
  follow(workloads: Workload[] | undefined): void {
    this.workloads = workloads;
    this.resolve();
    this.misses.clear();
  }

  /**
   * The workload of a client's cgroup id. Pods start after the config names them: an id not seen yet is looked up
   * (a walk of the workloads' cgroup directories) at its first request, whatever other ids did meanwhile: a global
   * rate limit left a pod started within a second of another lookup in no workload, out of reach of deny rules scoped
   * to its workload. An id found in none is remembered (a cgroup cannot move under a workload's path), so a client in
   * no workload costs one walk per config, not one per request; the misses are forgotten after 10 s all the same.
   */
  readonly of = (cgroupId: bigint): string | undefined => {
    const w = this.ids.get(cgroupId);
    if (w !== undefined || !this.workloads?.length) return w;
    if (this.now() - this.resolvedAt > MISS_TTL_MS) this.misses.clear();
    else if (this.misses.has(cgroupId)) return undefined;
    this.resolve();
    const found = this.ids.get(cgroupId);
    if (found === undefined) {
      if (this.misses.size >= MAX_MISSES) this.misses.clear();
      this.misses.add(cgroupId);
    }
    return found;
  };

  /** how many times the workloads' cgroups were walked (each follow() and each lookup of an id not known) */
  get walks(): number {
    return this.walked;
  }

  /** whether a cgroup id is remembered as in no workload (for tests and reports) */
  isMiss(cgroupId: bigint): boolean {
    return this.misses.has(cgroupId);
  }

  private resolve(): void {
    this.ids = resolveWorkloads(this.workloads, this.cgroup2Root);
    this.resolvedAt = this.now();
    this.walked++;
  }
}
