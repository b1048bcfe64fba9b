// CPU time of a process (all its threads) from /proc/<pid>/stat, for "agent CPU" and its peers, and what the scheduler
// did to it (run-queue waits, preemptions) from /proc/<pid>/task/*/schedstat and status.
import { readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

/** utime + stime in clock ticks from the text of /proc/<pid>/stat. */
export function statCpuTicks(stat: string): number {
  // The command name (field 2) is in parentheses and may itself contain spaces and ')': read after the last one.
  const close = stat.lastIndexOf(')');
  if (close < 0) throw new Error('/proc/<pid>/stat: no command name');
  const f = stat.slice(close + 2).trim().split(/\s+/);
  // f[0] is field 3 (state); utime and stime are fields 14 and 15.
  const utime = Number(f[11]), stime = Number(f[12]);
  if (!Number.isInteger(utime) || !Number.isInteger(stime)) throw new Error('/proc/<pid>/stat: cannot read utime/stime');
  return utime + stime;
}

let hz: number | undefined;
/** Clock ticks per second (USER_HZ; 100 on Linux everywhere in practice, asked once). */
export function clockTicks(): number {
  if (hz === undefined) {
    try {
      hz = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      hz = 100;
    }
  }
  return hz;
}

/** CPU seconds the process has used so far; undefined when it is gone. */
export function cpuSeconds(pid: number): number | undefined {
  try {
    return statCpuTicks(readFileSync(`/proc/${pid}/stat`, 'utf8')) / clockTicks();
  } catch {
    return undefined;
  }
}

/** What the scheduler did to a process, summed over its threads (/proc/<pid>/task/<tid>/schedstat and status). */
export interface SchedStats {
  /** ns spent runnable but waiting for a CPU (a run queue's delay) */
  waitNs: number;
  /** times a thread was switched out while it still wanted to run (preempted) */
  involuntary: number;
  /** times a thread gave the CPU up itself (waiting for I/O, a futex) */
  voluntary: number;
}

/** The scheduler's figures for every thread of pid; undefined when it is gone. */
export function schedStats(pid: number): SchedStats | undefined {
  const s: SchedStats = { waitNs: 0, involuntary: 0, voluntary: 0 };
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        // schedstat: ns on the CPU, ns waiting on a run queue, timeslices
        s.waitNs += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
        const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
        s.voluntary += Number(/^voluntary_ctxt_switches:\s*(\d+)/m.exec(status)?.[1] ?? 0);
        s.involuntary += Number(/^nonvoluntary_ctxt_switches:\s*(\d+)/m.exec(status)?.[1] ?? 0);
      } catch {
        // a thread that ended between the listing and the read: its figures went with it
      }
    }
  } catch {
    return undefined;
  }
  return s;
}
