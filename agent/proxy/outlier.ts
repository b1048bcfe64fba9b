// Outlier detection (passive health checking): each backend's consecutive 5xx and consecutive
// gateway errors, counted from the outcomes of real requests; at the threshold the backend is ejected
// through BackendStates for base * (times ejected) ms, capped at max, which takes it out of this
// proxy's balancing and (through the agent's listener) out of the kernel's L4 slots. It comes back
// by itself when the time is up (BackendStates' timer); a further failure run ejects it for longer.
import type { OutlierDetection } from '../model/l7.js';
import type { BackendStates } from '../health/states.js';
import type { Outcome } from './types.js';
import { ANSWERED, FAILED_GATEWAY, NOT_BACKEND, verdict, type Verdict } from './outcome.js';

/** The per-backend counters (kept on the balancer's slot). */
export interface OutlierCounters {
  consecutive5xx: number;
  consecutiveGatewayErrors: number;
}

export type Ejection = 'consecutive-5xx' | 'consecutive-gateway-errors';

/**
 * Counts one outcome; returns the rule that tripped, if any (counters of the tripped rule restart).
 * The verdict is outcome.ts's: a failure counts as 5xx, a gateway error (502/503/504, gRPC UNAVAILABLE and
 * DEADLINE_EXCEEDED, and no response at all: connect failure, reset, per-try timeout) also as a gateway error
 * (Envoy without split local-origin errors). An answer that is no failure resets both counts. What says nothing
 * about the backend (a pending overflow, the client gone) is not counted.
 */
export function countOutcome(c: OutlierCounters, o: Outcome, cfg: OutlierDetection): Ejection | undefined {
  return countVerdict(c, verdict(o), cfg);
}

/** countOutcome() for an outcome already judged */
export function countVerdict(c: OutlierCounters, v: Verdict, cfg: OutlierDetection): Ejection | undefined {
  if (v === NOT_BACKEND) return undefined;
  if (v === ANSWERED) {
    c.consecutive5xx = 0;
    c.consecutiveGatewayErrors = 0;
    return undefined;
  }
  c.consecutive5xx++;
  if (v === FAILED_GATEWAY) c.consecutiveGatewayErrors++;
  else c.consecutiveGatewayErrors = 0;
  if (cfg.consecutiveGatewayErrors > 0 && c.consecutiveGatewayErrors >= cfg.consecutiveGatewayErrors) {
    c.consecutiveGatewayErrors = 0;
    c.consecutive5xx = 0;
    return 'consecutive-gateway-errors';
  }
  if (cfg.consecutive5xx > 0 && c.consecutive5xx >= cfg.consecutive5xx) {
    c.consecutive5xx = 0;
    c.consecutiveGatewayErrors = 0;
    return 'consecutive-5xx';
  }
  return undefined;
}

/**
 * The maximum ejected share, decided as Envoy does it: an ejection may happen when the group's
 * ejected backends, this one included, stay within maxEjectionPercent of the group. In addition one
 * backend may always be ejected when the percent is above 0 and the group has more than one backend
 * (Envoy's always_eject_one_host): otherwise a 10% cap would never eject anything in groups of fewer
 * than ten, and those are the common case. A group of one backend is never ejected under a cap below
 * 100%: the balancer would fall back to it anyway (panic), and the kernel would lose its only slot.
 */
export function mayEject(ejectedNow: number, groupSize: number, maxEjectionPercent: number): boolean {
  if (maxEjectionPercent <= 0 || groupSize === 0) return false;
  if ((ejectedNow + 1) * 100 <= maxEjectionPercent * groupSize) return true;
  return ejectedNow === 0 && groupSize > 1;
}

/** Ejection time: base * (times ejected, this one included), at most max. */
export function ejectionMs(cfg: OutlierDetection, previousEjections: number): number {
  return Math.min(cfg.baseEjectionMs * (previousEjections + 1), cfg.maxEjectionMs > 0 ? cfg.maxEjectionMs : Infinity);
}

/** How many of these backends are ejected right now (outlier ejections only, not failed probes). */
export function ejectedAmong(states: BackendStates, service: string, keys: readonly string[]): number {
  let n = 0;
  const set = new Set(keys);
  for (const s of states.list()) if (s.service === service && s.ejection && set.has(s.backend)) n++;
  return n;
}

/**
 * Eject a backend if the cap allows it; returns the ejection time, or 0 when the cap refused. The
 * caller has counted the outcome with countOutcome() and got `rule`.
 */
export function tryEject(states: BackendStates, cfg: OutlierDetection, service: string, backend: string, groupKeys: readonly string[], rule: Ejection): number {
  if (states.isOut(service, backend)) return 0; // already out (probe or ejection): nothing to add
  if (!mayEject(ejectedAmong(states, service, groupKeys), groupKeys.length, cfg.maxEjectionPercent)) return 0;
  const ms = ejectionMs(cfg, states.ejections(service, backend, cfg.intervalMs));
  const threshold = rule === 'consecutive-5xx' ? cfg.consecutive5xx : cfg.consecutiveGatewayErrors;
  states.eject(service, backend, ms, `${threshold} ${rule === 'consecutive-5xx' ? 'consecutive 5xx' : 'consecutive gateway errors'}`, cfg.intervalMs);
  return ms;
}
