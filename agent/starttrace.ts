// Where an agent's start goes, phase by phase (issue 14: a restarted agent must serve again within a second of its
// start). Each phase end is noted with its time and the CPU used so far (a dozen cheap entries: always on);
// SOCKMESH_START_TRACE=1 logs them once the agent started, in ms since the process began (performance.timeOrigin),
// Node's own bootstrap first: what a launcher's stopwatch sees, minus the exec itself.
import { performance } from 'node:perf_hooks';

export interface StartPhase { phase: string; atMs: number; tookMs: number; cpuMs: number }

const marks: { phase: string; at: number; cpu: number }[] = [];

/** CPU time (user + system) this process used so far, in ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Note the end of a start phase (named for what was just done). */
export function startPhase(phase: string): void {
  marks.push({ phase, at: performance.now(), cpu: cpuMs() });
}

/** The phases so far: Node's bootstrap, then each noted one, with the time since the previous one. */
export function startPhases(): StartPhase[] {
  const t = performance.nodeTiming;
  const all = [
    { phase: 'node: bootstrap complete, main module next', at: t.bootstrapComplete, cpu: NaN },
    ...marks,
  ];
  const r1 = (x: number): number => Math.round(x * 10) / 10;
  let prev = 0;
  return all.map(({ phase, at, cpu }) => {
    const row = { phase, atMs: r1(at), tookMs: r1(at - prev), cpuMs: r1(cpu) };
    prev = at;
    return row;
  });
}

/**
 * With SOCKMESH_START_TRACE set: the phases as one log line ('start phases'; with the process's start in epoch ms, so
 * that a test lines them up with what its clients saw).
 */
export function reportStartPhases(log: { info(o: object, msg: string): void }, env: NodeJS.ProcessEnv = process.env): void {
  if (!env.SOCKMESH_START_TRACE) return;
  log.info({ timeOrigin: Math.round(performance.timeOrigin), phases: startPhases() }, 'start phases');
}

// Evaluated first (agent/main.ts imports this module first): every module of the agent is resolved, read and linked
// by now, and none but this one has run.
startPhase('modules read and linked');
