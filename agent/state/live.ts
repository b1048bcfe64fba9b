// What is in force on this node, in one place (as ztunnel's ProxyState): the model the kernel and the proxy were last
// given successfully, its version, the last error, the backends out of service, the frontends in panic and who the
// clients are. The ApplyTransaction (./apply.ts) is its only writer; the admin API, the metrics and the proxy read it.
import type { Model } from '../model/types.js';
import { BackendStates } from '../health/states.js';
import type { Panic } from '../health/effective.js';
import { WorkloadIdentities } from '../identity/workloads.js';

export interface ReconcileStamp { at: string; ms: number }

/** A config put in force (its version, what caused it) or rejected (why): for whoever watches (the live monitor). */
export type ConfigChange = { verdict: 'applied'; version: number; why?: string } | { verdict: 'rejected'; error: string };

export class LiveState {
  /** probe verdicts and outlier ejections: backends out of service (the kernel gets the effective model) */
  readonly states: BackendStates;
  /** who the clients are, for the workloads of the model in force */
  readonly identities: WorkloadIdentities;
  /** frontends in panic (every usable backend out, all kept), by service */
  readonly panics = new Map<string, Panic[]>();
  private inForce?: Model;
  private version = 0;
  private error: string | null = null;
  private reconciled: ReconcileStamp | null = null;
  private readonly watchers: ((c: ConfigChange) => void)[] = [];

  constructor(cgroup2Root: string, states = new BackendStates()) {
    this.states = states;
    this.identities = new WorkloadIdentities(cgroup2Root);
  }

  /** the model in force (undefined until the first one is applied) */
  get model(): Model | undefined { return this.inForce; }
  /** how many models were committed */
  get configVersion(): number { return this.version; }
  /** why the last config was rejected; null once one is applied */
  get lastConfigError(): string | null { return this.error; }
  get lastReconcile(): ReconcileStamp | null { return this.reconciled; }

  /** every frontend in panic */
  panicList(): Panic[] {
    return [...this.panics.values()].flat();
  }

  /** `model` is in force now, applied in `ms` (because of `why`): returns its version */
  committed(model: Model, ms: number, why?: string): number {
    this.inForce = model;
    this.error = null;
    this.reconciled = { at: new Date().toISOString(), ms: Math.round(ms * 1000) / 1000 };
    ++this.version;
    for (const fn of this.watchers) fn({ verdict: 'applied', version: this.version, why });
    return this.version;
  }

  /** a config was rejected (by its source, the proxy or the kernel): the model in force stays */
  rejected(error: string): void {
    this.error = error;
    for (const fn of this.watchers) fn({ verdict: 'rejected', error });
  }

  /** be told of every config applied or rejected */
  watch(fn: (c: ConfigChange) => void): void {
    this.watchers.push(fn);
  }

  close(): void {
    this.states.close();
  }
}
