// A reflector: one resource's objects mirrored from the API server into a local store, kept current by a watch,
// as client-go's reflector + informer do, with the properties a data plane needs:
// - the first list is paginated (limit/continue, 500 a page: the API server's memory, not ours, bounds a page); a
//   continue token that expired (410) restarts the list;
// - then a watch from the list's resourceVersion, with bookmarks (which advance the resourceVersion, so a re-watch
//   after a quiet hour does not start from an expired one) and a server-side timeout that rotates the watch;
// - a watch that expired (410) relists and reports the DIFF against the store: what was added, changed (another
//   resourceVersion) or deleted; objects that did not change are not reported, so the consumers do not re-apply (or
//   flush) 10,000 services because one watch expired;
// - a dropped connection re-watches from the last resourceVersion (no relist) after a capped exponential backoff with
//   jitter (the API server is not stampeded by every node at once);
// - the API server unreachable: the store stays as it is (static stability: the datapath keeps what it has), and
//   status() says since when it is disconnected and why.
import type { Logger } from '../agent/observe/log.js';
import { KubeApiStatusError, type KubeClient, type KubeObject, type ResourceRef } from './client.js';

export interface ReflectorOptions {
  namespace?: string;
  fieldSelector?: string;
  labelSelector?: string;
  /** objects per list page (500) */
  pageSize?: number;
  log?: Logger;
  /** backoff after a failure: initialMs doubled per consecutive failure up to maxMs, each drawn in [half, full] */
  backoff?: { initialMs?: number; maxMs?: number };
  /** each watch asks the server to end it after a random time in [min, 2*min) seconds (300): rotation */
  watchTimeoutSeconds?: number;
}

export interface ReflectorChange {
  added: string[];
  updated: string[];
  deleted: string[];
  /** the change comes from a list (the first one, or a relist after a 410): a diff against the store */
  relist: boolean;
}

export interface ReflectorStatus {
  /** the last request to the API server succeeded (a watch is open or being opened) */
  connected: boolean;
  /** since when `connected` is what it is */
  since: Date;
  lastError?: string;
  /** lists after the first (each one is a 410 or an expired continue token) */
  relists: number;
  resourceVersion?: string;
}

/** The store's key: "namespace/name", or "name" for a cluster-scoped object. */
export function objectKey(o: KubeObject): string {
  return o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name;
}

export class Reflector<T extends KubeObject> {
  private readonly items = new Map<string, T>();
  private readonly changeListeners: ((c: ReflectorChange) => void)[] = [];
  private readonly statusListeners: ((s: ReflectorStatus) => void)[] = [];
  private state: ReflectorStatus = { connected: false, since: new Date(), relists: 0 };
  private listed = false;
  private abort?: AbortController;
  private loop?: Promise<void>;
  private readonly what: string;
  private expiredInARow = 0;

  constructor(private readonly client: KubeClient, readonly ref: ResourceRef, private readonly opts: ReflectorOptions = {}) {
    const sel = [opts.fieldSelector, opts.labelSelector].filter(Boolean).join(' ');
    this.what = `${ref.resource}${opts.namespace ? ` in ${opts.namespace}` : ''}${sel ? ` (${sel})` : ''}`;
  }

  get store(): ReadonlyMap<string, T> {
    return this.items;
  }

  /** the first list is complete: the store is the cluster's state (as of status().resourceVersion) */
  get synced(): boolean {
    return this.listed;
  }

  status(): ReflectorStatus {
    return { ...this.state };
  }

  onChange(cb: (c: ReflectorChange) => void): void {
    this.changeListeners.push(cb);
  }

  onStatus(cb: (s: ReflectorStatus) => void): void {
    this.statusListeners.push(cb);
  }

  start(): void {
    if (this.loop) return;
    this.abort = new AbortController();
    this.loop = this.run(this.abort.signal);
  }

  async stop(): Promise<void> {
    this.abort?.abort();
    await this.loop;
    this.loop = undefined;
  }

  private async run(signal: AbortSignal): Promise<void> {
    let needList = true;
    let failures = 0;
    this.expiredInARow = 0;
    while (!signal.aborted) {
      try {
        if (needList) {
          await this.list(signal);
          needList = false;
        }
        await this.watch(signal);
        failures = 0; // the server ended the watch (its timeout): watch again at once from the last resourceVersion
      } catch (e) {
        if (signal.aborted) break;
        const err = e as Error;
        if (err instanceof KubeApiStatusError && err.code === 410) {
          // The resourceVersion is older than the server's history: what happened since is unknown, list again.
          this.opts.log?.info({ resource: this.what, rv: this.state.resourceVersion }, 'kubernetes: watch expired (410), relisting');
          needList = true;
          this.state.resourceVersion = undefined;
          // A watch from a fresh list's resourceVersion that expires again: do not spin, back off as for a failure.
          if (++this.expiredInARow > 1) await sleep(this.backoff(this.expiredInARow - 1), signal);
          continue;
        }
        failures++;
        this.setStatus(false, err.message);
        const delay = this.backoff(failures);
        this.opts.log?.warn({ resource: this.what, err: err.message, retryMs: Math.round(delay) }, 'kubernetes: API request failed, the store stays as it is');
        await sleep(delay, signal);
      }
    }
  }

  private backoff(failures: number): number {
    const initial = this.opts.backoff?.initialMs ?? 250;
    const max = this.opts.backoff?.maxMs ?? 30_000;
    const full = Math.min(max, initial * 2 ** Math.min(failures - 1, 30));
    return full / 2 + (Math.random() * full) / 2;
  }

  private async list(signal: AbortSignal): Promise<void> {
    const fresh = new Map<string, T>();
    let cont: string | undefined;
    let rv = '';
    for (;;) {
      let page;
      try {
        page = await this.client.list<T>(this.ref, { ...this.selectors(), limit: this.opts.pageSize ?? 500, continue: cont, signal });
      } catch (e) {
        if (cont !== undefined && e instanceof KubeApiStatusError && e.code === 410) {
          // The continue token expired between pages: the pages so far may be from another time; start over.
          this.opts.log?.info({ resource: this.what }, 'kubernetes: list continue token expired (410), listing again');
          fresh.clear();
          cont = undefined;
          continue;
        }
        throw e;
      }
      if (signal.aborted) return;
      this.setStatus(true);
      for (const o of page.items) fresh.set(objectKey(o), o);
      rv = page.resourceVersion;
      cont = page.continue;
      if (cont === undefined) break;
    }
    if (this.listed) this.state.relists++;
    this.state.resourceVersion = rv;
    this.replace(fresh);
  }

  /** Makes the store `fresh` and reports only what differs (a relist is a diff, never a flush). */
  private replace(fresh: Map<string, T>): void {
    const change: ReflectorChange = { added: [], updated: [], deleted: [], relist: true };
    for (const [k, o] of fresh) {
      const old = this.items.get(k);
      if (!old) change.added.push(k);
      else if (old.metadata.resourceVersion !== o.metadata.resourceVersion || old.metadata.uid !== o.metadata.uid) change.updated.push(k);
      else continue; // unchanged: keep the object the consumers already have
      this.items.set(k, o);
    }
    for (const k of this.items.keys()) {
      if (!fresh.has(k)) {
        change.deleted.push(k);
        this.items.delete(k);
      }
    }
    const first = !this.listed;
    this.listed = true;
    if (first || change.added.length || change.updated.length || change.deleted.length) this.emit(change);
  }

  private watch(signal: AbortSignal): Promise<void> {
    const min = this.opts.watchTimeoutSeconds ?? 300;
    return this.client.watch<T>(
      this.ref,
      {
        ...this.selectors(),
        resourceVersion: this.state.resourceVersion,
        allowWatchBookmarks: true,
        timeoutSeconds: Math.floor(min + Math.random() * min),
        onOpen: () => this.setStatus(true),
      },
      (ev) => {
        this.expiredInARow = 0;
        const rv = ev.object.metadata?.resourceVersion;
        if (ev.type === 'BOOKMARK') {
          if (rv) this.state.resourceVersion = rv;
          return;
        }
        const key = objectKey(ev.object);
        const change: ReflectorChange = { added: [], updated: [], deleted: [], relist: false };
        if (ev.type === 'DELETED') {
          if (this.items.delete(key)) change.deleted.push(key);
        } else {
          const old = this.items.get(key);
          // The same version again (a watch replaying what a paginated list already returned): nothing changed.
          if (old && rv !== undefined && old.metadata.resourceVersion === rv) return;
          (old ? change.updated : change.added).push(key);
          this.items.set(key, ev.object);
        }
        if (rv) this.state.resourceVersion = rv;
        if (change.added.length || change.updated.length || change.deleted.length) this.emit(change);
      },
      signal,
    );
  }

  private selectors() {
    return { namespace: this.opts.namespace, fieldSelector: this.opts.fieldSelector, labelSelector: this.opts.labelSelector };
  }

  private emit(c: ReflectorChange): void {
    for (const cb of this.changeListeners) {
      try {
        cb(c);
      } catch (e) {
        this.opts.log?.error({ resource: this.what, err: (e as Error).message }, 'kubernetes: a change listener failed');
      }
    }
  }

  private setStatus(connected: boolean, error?: string): void {
    const was = this.state.connected;
    if (error !== undefined) this.state.lastError = error;
    if (was === connected) return;
    this.state.connected = connected;
    this.state.since = new Date();
    if (connected) this.opts.log?.info({ resource: this.what }, 'kubernetes: connected to the API server');
    const s = this.status();
    for (const cb of this.statusListeners) cb(s);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}
