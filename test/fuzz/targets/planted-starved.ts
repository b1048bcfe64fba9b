// Not a parser: the suite's proof that an input starved of a CPU is no hang (child.ts's watchdog counts the time the
// thread waits for a CPU as neither work nor sleep). setup() starts three busy processes on one CPU for 6 s (that CPU
// only: three so that the idle class' share is well under 1/30), then moves this process onto that CPU at the idle
// scheduling class: each input needs 60 ms of CPU and gets almost none while they run. The slowest input's wall and CPU ms are written to SOCKMESH_FUZZ_STARVED_OUT (the suite checks
// that the starvation happened, or the check would prove nothing).
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';

export const dict: string[] = [];
const BUSY_MS = 6000;
const INPUT_CPU_MS = 60;

export async function setup(): Promise<void> {
  const pid = String(process.pid);
  // the first CPU this process may use ("pid N's current affinity list: 0,1" or "0-1")
  const cpu = /(\d+)/.exec(execFileSync('taskset', ['-pc', pid], { encoding: 'utf8' }).split(':').pop()!)![1]!;
  execFileSync('taskset', ['-apc', cpu, pid]);
  // (before chrt: a child inherits the idle class, and could not leave it)
  // (each says when it is busy: on a loaded machine a node process takes a second or more to start, and an input run
  // before then gets its 60 ms without being starved)
  const busy = Array.from({ length: 3 }, () => new Promise<void>((resolve, reject) => {
    const p = spawn(process.execPath, ['-e', `process.stdout.write('b'); const end = Date.now() + ${BUSY_MS}; while (Date.now() < end);`],
      { stdio: ['ignore', 'pipe', 'ignore'] });
    p.on('error', reject);
    p.stdout.once('data', () => { p.stdout.destroy(); p.unref(); resolve(); });
  }));
  await Promise.all(busy);
  execFileSync('chrt', ['--idle', '-ap', '0', pid]);
}

let slowest = 0;
export function run(): void {
  const t0 = Date.now();
  const c0 = process.cpuUsage();
  let c = c0;
  while ((c.user + c.system - c0.user - c0.system) / 1000 < INPUT_CPU_MS) c = process.cpuUsage();
  const wall = Date.now() - t0;
  if (wall > slowest && process.env.SOCKMESH_FUZZ_STARVED_OUT) {
    slowest = wall;
    writeFileSync(process.env.SOCKMESH_FUZZ_STARVED_OUT, JSON.stringify({ wallMs: wall, cpuMs: (c.user + c.system - c0.user - c0.system) / 1000 }));
  }
}
