// The one way a model comes into force: compile the proxy policy, apply the effective model to the kernel, commit;
// or, when the kernel fails half way, read it back and put the last good model back in full. Backend state changes
// (probe verdicts, ejections) go the same way, coalesced. The kernel and the policy are small interfaces here, so
// unit tests drive the whole transaction without either (test/unit/state-apply.test.ts).
import type { Model } from '../model/types.js';
import type { ReconcileResult } from '../datapath/reconcile.js';
import { effectiveModel, type Panic } from '../health/effective.js';
import type { Logger } from '../observe/log.js';
import { collectGarbage } from '../observe/memory.js';
import type { LiveState } from './live.js';

/** Backend state changes (probe verdicts, ejections) within this window are applied to the kernel together. */
const STATES_COALESCE_MS = 20;
/** Kernel entries written or removed by one change above which the heap is compacted afterwards. */
const LARGE_CHANGE = 10_000;
/** Applies since the last compaction after which, once they stop for CHURN_QUIET_MS, the heap is compacted too. */
const CHURN_APPLIES = 100;
const CHURN_QUIET_MS = 1000;
/** 'config applied' names the changed services when there are at most this many */
const LOGGED_NAMES = 8;

/** What one kernel apply did (the Reconciler's result; a type only: nothing here loads the datapath). */
export type KernelApplyResult = ReconcileResult;

/** The kernel as the transaction sees it (agent/kernel.ts over the Reconciler). */
export interface KernelTarget {
  /** apply `model` (only the services in `changed`, when given); throws what the kernel refused */
  apply(model: Model, changed?: ReadonlySet<string>): KernelApplyResult;
  /**
   * After a failed apply a batch may have failed half way, so what was believed and what the kernel holds differ:
   * read the kernel back (which also drops tables nothing points at). The next apply starts from there.
   */
  reset(): void;
}

/** The proxy's policy: compiles every L7 service before replacing anything, and throws what it refuses. */
export interface PolicyTarget {
  update(model: Model, workloadOf: (cgroupId: bigint) => string | undefined, changed?: ReadonlySet<string>): void;
}

export interface ApplyOptions {
  state: LiveState;
  kernel: KernelTarget;
  /** absent when the kernel has no L7 redirect (no proxy runs) */
  policy?: PolicyTarget;
  log: Logger;
  /** after a model is committed: what follows it (probes, metrics, state.json); nothing there may fail the apply */
  committed?: (model: Model, changed: ReadonlySet<string> | undefined) => void;
  coalesceMs?: number;
  /** compacts the heap (observe/memory.ts collectGarbage; tests count the calls) */
  collectGarbage?: () => void;
  /** quiet time after a burst of CHURN_APPLIES applies before the heap is compacted (default 1 s) */
  churnQuietMs?: number;
}

export class ApplyTransaction {
  private readonly state: LiveState;
  private readonly kernel: KernelTarget;
  private readonly policy?: PolicyTarget;
  private readonly log: Logger;
  /** the kernel may hold part of a rejected update: the next apply is in full */
  private needFull = false;
  /** services whose backend states changed, re-applied together after coalesceMs */
  private statesPending = new Set<string>();
  private statesTimer?: NodeJS.Timeout;
  /** applies since the heap was last compacted, and the timer that waits for them to stop */
  private churn = 0;
  private churnTimer?: NodeJS.Timeout;

  constructor(private readonly o: ApplyOptions) {
    this.state = o.state;
    this.kernel = o.kernel;
    this.policy = o.policy;
    this.log = o.log;
    this.state.states.onChange((service) => this.statesChanged(service));
  }

  /** whether the next apply goes in full whatever it names (after a failed one) */
  get needFullApply(): boolean {
    return this.needFull;
  }

  /** The first model, at start: a refusal throws (the agent does not start on a config it cannot apply). */
  first(model: Model): void {
    this.run(model, 'start', undefined, true);
  }

  /**
   * Apply a validated model (only the services named in `changed`, when given). On a kernel error the previous model
   * is put back and the error returned: the source rejects the update (an xDS NACK) and the last good config stays.
   */
  apply(model: Model, why: string, changed?: ReadonlySet<string>, logFields?: Record<string, unknown>): string | null {
    return this.run(model, why, changed, false, logFields);
  }

  private run(model: Model, why: string, changed: ReadonlySet<string> | undefined, strict: boolean, logFields?: Record<string, unknown>): string | null {
    const { state, log } = this;
    // After a failed apply the kernel may hold part of a rejected update: the next one is applied in full.
    const scope = this.needFull ? undefined : changed;
    // The proxy's policy first: it compiles every L7 service before replacing anything, so what it refuses (the
    // validators should have caught it) leaves the kernel and the proxy as they were.
    if (this.policy) {
      try {
        this.policy.update(model, state.identities.of, scope);
      } catch (e) {
        const msg = (e as Error).message;
        state.rejected(msg);
        log.error({ why, error: msg }, 'the proxy refused the config');
        if (strict) throw e;
        return msg;
      }
    }
    let res: KernelApplyResult;
    try {
      res = this.applyEffective(model, scope);
    } catch (e) {
      const msg = (e as Error).message;
      state.rejected(msg);
      log.error({ why, error: msg }, 'applying the config to the kernel failed');
      if (strict) throw e;
      this.restoreLastGood();
      if (this.policy && state.model) this.policy.update(state.model, state.identities.of);
      return `applying to the kernel failed: ${msg}`;
    }
    // Only now is the model the one in force: nothing below may turn an applied update into a rejected one.
    this.needFull = false;
    // Who the clients are follows the model in force: resolved before the kernel said yes, a rejected config's workloads
    // would have stayed after the last good model was put back.
    if (this.policy) state.identities.follow(model.workloads);
    const version = state.committed(model, res.ms, why);
    // The names of a small change (what an operator, or the soak beside a failed request, asks first: which services).
    const names = scope && scope.size <= LOGGED_NAMES ? [...scope] : undefined;
    log.info({ why, version, ...logFields, services: model.services.length, changed: scope?.size, ...(names ? { names } : {}), ...res }, 'config applied');
    this.o.committed?.(model, scope);
    // After a large change, give the garbage of the sync back now rather than at the next allocation pressure.
    // Two collections a second apart: the memory V8 grew for the change comes back at the second (measured).
    const collect = this.o.collectGarbage ?? collectGarbage;
    const compact = () => { collect(); setTimeout(() => collect(), 1000).unref(); };
    if (res.backendsWritten + res.backendsDeleted + res.frontendsWritten + res.frontendsDeleted >= LARGE_CHANGE) {
      // Not at once: a sync comes as several large applies back to back, and the incremental marking
      // (observe/memory.ts) started under one ran alongside the next ones, slowing them as they allocated: a full
      // Kubernetes sync of 10,000 services went from 1.3 s (1.6 s agent CPU) to 1.8-2.6 s (2.5-3.4 s). Once the
      // applies stop for the quiet time, as after a burst of small ones.
      this.churn = 0;
      clearTimeout(this.churnTimer);
      this.churnTimer = setTimeout(() => { this.churn = 0; compact(); }, this.o.churnQuietMs ?? CHURN_QUIET_MS);
      this.churnTimer.unref?.();
    } else if (++this.churn >= CHURN_APPLIES) {
      // Many small changes (EndpointSlice churn) leave garbage V8 collects only when it next needs room, and the heap
      // it grew for them stays. Measured with the Kubernetes source alone at 10k services / 100k endpoints: live heap
      // flat at ~70 MiB, RSS 153 -> 205 MiB after 300 slice changes, 134 MiB after two collections a second apart.
      // Once the changes stop, that is given back as after a large change; while they go on, V8 decides.
      clearTimeout(this.churnTimer);
      this.churnTimer = setTimeout(() => { this.churn = 0; compact(); }, this.o.churnQuietMs ?? CHURN_QUIET_MS);
      this.churnTimer.unref?.();
    }
    return null;
  }

  /**
   * Apply the model as the kernel gets it: backends that are out (failed probe, ejection) at weight 0, except where a
   * frontend would have none left (panic: all kept, reported). Every apply goes through here, so a config reload
   * never brings an out backend back. Panics entered or left are logged once the kernel was told (whoever waits for
   * the line finds the kernel as it says).
   */
  private applyEffective(model: Model, scope?: ReadonlySet<string>): KernelApplyResult {
    const eff = this.effective(model, scope);
    try {
      return this.kernel.apply(eff.model, scope);
    } finally {
      eff.announce();
    }
  }

  /** The effective model, the panics updated in the state, and the log lines of what changed for later. */
  private effective(model: Model, scope?: ReadonlySet<string>): { model: Model; announce: () => void } {
    const { panics } = this.state;
    const eff = effectiveModel(model, this.state.states, scope);
    const now = new Map<string, Panic[]>();
    for (const p of eff.panics) {
      const list = now.get(p.service);
      if (list) list.push(p); else now.set(p.service, [p]);
    }
    const lines: (() => void)[] = [];
    for (const name of scope ?? new Set([...panics.keys(), ...now.keys()])) {
      const was = panics.get(name)?.length ?? 0;
      const is = now.get(name);
      if (is && is.length > was) {
        lines.push(() => this.log.warn({ service: name, frontends: is.map((p) => `${p.vip}:${p.port}/${p.protocol}`), backends: is[0]!.backends },
          'every backend of a frontend is out (health checks or ejections): panic, all are kept in the kernel slots'));
      } else if (!is && was) {
        lines.push(() => this.log.info({ service: name }, 'out of panic: some backends are healthy again'));
      }
      if (is) panics.set(name, is); else panics.delete(name);
    }
    return { model: eff.model, announce: () => { for (const l of lines) l(); } };
  }

  /** After a failed apply: read the kernel back and put the last good model back in full. */
  private restoreLastGood(): void {
    this.needFull = true;
    try {
      this.kernel.reset();
      const model = this.state.model;
      if (model) {
        this.applyEffective(model);
        this.needFull = false;
      }
    } catch (again) {
      this.log.error({ error: (again as Error).message }, 'restoring the last good config failed too');
    }
  }

  /** A backend of `service` went out or came back: re-apply that service (bursts coalesced). */
  private statesChanged(service: string): void {
    this.statesPending.add(service);
    if (this.statesTimer) return;
    this.statesTimer = setTimeout(() => {
      this.statesTimer = undefined;
      const changed = this.statesPending;
      this.statesPending = new Set();
      this.applyStates(changed);
    }, this.o.coalesceMs ?? STATES_COALESCE_MS);
  }

  private applyStates(changed: Set<string>): void {
    const model = this.state.model;
    if (!model) return;
    const live = new Set(model.services.map((s) => s.name));
    const scope = new Set([...changed].filter((n) => live.has(n)));
    if (scope.size === 0) return;
    const full = this.needFull;
    try {
      const res = this.applyEffective(model, full ? undefined : scope);
      this.needFull = false;
      const out = [...scope].map((s) => ({ service: s, out: [...this.state.states.outOf(s)] }));
      this.log.info({ services: out, ...res }, 'backend states applied');
    } catch (e) {
      // The last good model is put back in full, with the current states (so this change is applied by it too).
      this.log.error({ error: (e as Error).message, services: [...scope] }, 'applying backend states to the kernel failed');
      this.restoreLastGood();
    }
  }

  /** Stop coalescing (pending backend state changes are dropped: the agent is stopping). */
  close(): void {
    clearTimeout(this.statesTimer);
    this.statesTimer = undefined;
    clearTimeout(this.churnTimer);
  }
}
