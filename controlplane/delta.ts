// Incremental ADS (DeltaAggregatedResources): one handler per stream.
//
// Per type the stream tracks what the client subscribed to (names, or the wildcard for listeners and clusters) and
// which version of each resource the client has: first from initial_resource_versions (a reconnecting client says
// what it kept, so nothing unchanged is sent again, also after a control-plane restart, since versions are content
// hashes), then from what was sent. A response carries only resources whose version differs from the client's, plus
// removed_resources for those the client has that are gone (or that it asked for and do not exist).
//
// Nonces: a request naming the last nonce sent is an ACK or a NACK (error_detail). Unlike state of the world, a
// request with a stale nonce still carries subscription changes that no later request repeats, so those are
// applied; only its ACK/NACK meaning is ignored.
//
// A client that does not read gets nothing new meanwhile (StreamBase#owe): the names that changed are collected per
// type and, when it reads again, compared with what it has, so it gets the latest version of each once.
import type * as grpc from '@grpc/grpc-js';
import { encodeDeltaResponse, type Changes, type Resource, type Snapshot } from './snapshot.js';
import { StreamBase, shortType, stringList, wildcardType, type Owed, type StreamHost } from './stream.js';

const NONE: ReadonlySet<string> = new Set();

interface Subscription {
  wildcard: boolean;
  names: Set<string>;
  /** Resource versions the client has (name -> version). */
  has: Map<string, string>;
  lastNonce: string;
}

export class DeltaStream extends StreamBase<Subscription> {
  constructor(call: grpc.ServerDuplexStream<unknown, Buffer>, host: StreamHost, id: number) {
    super(call, host, id, 'delta');
  }

  protected request(typeUrl: string, req: Record<string, unknown>): void {
    const subscribe = stringList(req['resource_names_subscribe']);
    const unsubscribe = stringList(req['resource_names_unsubscribe']);
    const initial = req['initial_resource_versions'];
    if (subscribe === undefined || unsubscribe === undefined || (initial !== undefined && (typeof initial !== 'object' || initial === null))) {
      return void this.log.warn({ type: shortType(typeUrl) }, 'malformed delta request: ignored');
    }
    const nonce = typeof req['response_nonce'] === 'string' ? req['response_nonce'] : '';
    let sub = this.subs.get(typeUrl);
    const first = !sub;
    const known = (sub?.names.size ?? 0) + subscribe.length + (first ? Object.keys(initial ?? {}).length : 0);
    if (this.tooManyNames(typeUrl, known)) return;

    if (sub && nonce !== '') {
      if (nonce !== sub.lastNonce) {
        this.log.debug({ type: shortType(typeUrl), nonce, expected: sub.lastNonce }, 'stale nonce: ACK/NACK ignored');
      } else {
        const error = req['error_detail'] as { code?: number; message?: string } | undefined;
        if (error) this.log.warn({ type: shortType(typeUrl), nonce, code: error.code, reason: error.message }, 'NACK: client rejected the update');
        else this.log.debug({ type: shortType(typeUrl), nonce }, 'ACK');
      }
    }

    const state = this.view().type(typeUrl)!;
    const candidates = new Set<string>();
    const toldAbsent = new Set<string>();
    if (!sub) {
      const has = new Map<string, string>();
      for (const [name, v] of Object.entries(initial ?? {})) if (typeof v === 'string') has.set(name, v);
      sub = { wildcard: wildcardType(typeUrl) && subscribe.length === 0, names: new Set(), has, lastNonce: '' };
      this.subs.set(typeUrl, sub);
      // What the client says it has is checked too: changed or gone since.
      for (const name of has.keys()) candidates.add(name);
    }
    for (const name of unsubscribe) {
      if (name === '*') sub.wildcard = false;
      else {
        sub.names.delete(name);
        sub.has.delete(name);
      }
    }
    for (const name of subscribe) {
      if (name === '*') {
        if (!sub.wildcard && wildcardType(typeUrl)) for (const n of state.resources.keys()) candidates.add(n);
        sub.wildcard = wildcardType(typeUrl);
      } else if (!sub.names.has(name)) {
        sub.names.add(name);
        candidates.add(name);
        toldAbsent.add(name);
      }
    }
    if (first && sub.wildcard) for (const n of state.resources.keys()) candidates.add(n);
    this.owe(typeUrl, candidates, toldAbsent, first);
  }

  push(_snapshot: Snapshot, changes: Changes): void {
    for (const typeUrl of this.subs.keys()) {
      const changed = changes.get(typeUrl);
      if (changed) this.owe(typeUrl, changed);
    }
  }

  /** What is owed, compared with what the client has: so changes coalesced while it did not read go out once. */
  protected emit(typeUrl: string, owed: Owed): void {
    const sub = this.subs.get(typeUrl);
    if (!sub) return;
    const state = this.view().type(typeUrl)!;
    let candidates: Iterable<string> | undefined = owed.names;
    if (candidates === undefined) {
      const all = new Set<string>(sub.names);
      for (const n of sub.has.keys()) all.add(n);
      if (sub.wildcard) for (const n of state.resources.keys()) all.add(n);
      candidates = all;
    }
    this.send(typeUrl, sub, state, candidates, owed.absent ?? NONE, owed.always);
  }

  /**
   * Compare the candidate names the client is interested in with what it has; send the differences. `absentToo`:
   * names just subscribed to, reported removed if they do not exist so the client need not wait for a timeout.
   */
  private send(
    typeUrl: string,
    sub: Subscription,
    state: { version: string; resources: ReadonlyMap<string, Resource> },
    candidates: Iterable<string>,
    absentToo: ReadonlySet<string>,
    always: boolean,
  ): void {
    const resources: Resource[] = [];
    const removed: string[] = [];
    for (const name of candidates) {
      if (!sub.wildcard && !sub.names.has(name)) continue;
      const r = state.resources.get(name);
      if (r) {
        if (sub.has.get(name) !== r.version) resources.push(r);
      } else if (sub.has.has(name) || absentToo.has(name)) removed.push(name);
    }
    if (!always && resources.length === 0 && removed.length === 0) return;
    for (const r of resources) sub.has.set(r.name, r.version);
    for (const name of removed) sub.has.delete(name);
    const nonce = this.host.nextNonce();
    sub.lastNonce = nonce;
    this.write(encodeDeltaResponse(state.version, typeUrl, nonce, resources, removed));
    this.log.debug({ type: shortType(typeUrl), version: state.version, nonce, resources: resources.length, removed: removed.length }, 'sent');
  }
}
