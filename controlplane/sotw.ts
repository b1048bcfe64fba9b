// State-of-the-world ADS (StreamAggregatedResources): one handler per stream.
//
// Per type the client subscribes to, the stream remembers what it asked for and the nonce of the last response.
// A request carrying that nonce is an ACK (or a NACK, when error_detail is set); one carrying an older nonce is
// stale (a response crossed it) and ignored; one without a nonce is the client's first request for the type.
// A response goes out when the subscription changes or when the content of a subscribed resource changes; an ACK
// alone sends nothing. Listeners and clusters always go out complete (a missing one means deleted); routes and
// endpoints on a push carry only what changed, as the protocol allows, so one endpoint change costs one
// ClusterLoadAssignment per stream instead of ten thousand. A client that does not read gets nothing new meanwhile
// (StreamBase#owe): when it reads again it gets the latest state once, not every version in between.
import type * as grpc from '@grpc/grpc-js';
import { encodeSotwResponse, encodeSotwResponseBody, type Changes, type Resource, type Snapshot, type SnapshotView } from './snapshot.js';
import { StreamBase, shortType, stringList, wildcardType, type Owed, type StreamHost } from './stream.js';

interface Subscription {
  wildcard: boolean;
  /** The first request had no names: legacy wildcard, which a later empty list keeps. */
  legacyWildcard: boolean;
  names: Set<string>;
  lastNonce: string;
  lastVersion: string;
  ackedVersion?: string;
}

export class SotwStream extends StreamBase<Subscription> {
  constructor(call: grpc.ServerDuplexStream<unknown, Buffer>, host: StreamHost, id: number) {
    super(call, host, id, 'sotw');
  }

  protected request(typeUrl: string, req: Record<string, unknown>): void {
    const names = stringList(req['resource_names']);
    if (names === undefined) return void this.log.warn({ type: shortType(typeUrl) }, 'malformed request: resource_names is not a list of strings');
    if (this.tooManyNames(typeUrl, names.length)) return;
    const nonce = typeof req['response_nonce'] === 'string' ? req['response_nonce'] : '';
    const version = typeof req['version_info'] === 'string' ? req['version_info'] : '';
    let sub = this.subs.get(typeUrl);

    if (sub && nonce !== '') {
      if (nonce !== sub.lastNonce) {
        this.log.debug({ type: shortType(typeUrl), nonce, expected: sub.lastNonce }, 'stale nonce: request ignored');
        return;
      }
      const error = req['error_detail'] as { code?: number; message?: string } | undefined;
      if (error) {
        this.log.warn(
          { type: shortType(typeUrl), rejectedVersion: sub.lastVersion, keptVersion: version, code: error.code, reason: error.message },
          'NACK: client rejected the update',
        );
      } else {
        sub.ackedVersion = version;
        this.log.debug({ type: shortType(typeUrl), version }, 'ACK');
      }
    }

    const first = !sub;
    if (!sub) {
      sub = { wildcard: false, legacyWildcard: wildcardType(typeUrl) && names.length === 0, names: new Set(), lastNonce: '', lastVersion: '' };
      this.subs.set(typeUrl, sub);
    }
    const wildcard = wildcardType(typeUrl) && (names.includes('*') || (sub.legacyWildcard && names.length === 0));
    const nameSet = new Set(names.filter((n) => n !== '*'));
    const changed = first || nonce === '' || wildcard !== sub.wildcard || !sameSet(nameSet, sub.names);
    sub.wildcard = wildcard;
    sub.names = nameSet;
    if (changed) this.owe(typeUrl, undefined);
  }

  push(snapshot: Snapshot, changes: Changes): void {
    for (const [typeUrl, sub] of this.subs) {
      const changed = changes.get(typeUrl);
      if (!changed) continue;
      let relevant = sub.wildcard;
      if (!relevant) for (const n of changed) if (sub.names.has(n)) { relevant = true; break; }
      if (!relevant) continue;
      this.owe(typeUrl, wildcardType(typeUrl) ? undefined : changed);
    }
  }

  protected emit(typeUrl: string, owed: Owed): void {
    const sub = this.subs.get(typeUrl);
    if (sub) this.send(typeUrl, sub, this.view(), owed.names);
  }

  /** Send the subscribed resources of one type (`only`: just these names, for routes and endpoints on a push). */
  private send(typeUrl: string, sub: Subscription, snapshot: SnapshotView, only: Set<string> | undefined): void {
    const state = snapshot.type(typeUrl)!;
    let nonce: string;
    let response: Buffer;
    let count: number;
    if (sub.wildcard) {
      nonce = this.host.nextNonce();
      // The whole type: one body per version, shared by every stream (not re-framed per stream).
      response = encodeSotwResponseBody(state.version, typeUrl, nonce, snapshot.sotwBody(typeUrl));
      count = state.resources.size;
    } else {
      const chosen: Resource[] = [];
      for (const name of only ?? sub.names) {
        if (only && !sub.names.has(name)) continue;
        const r = state.resources.get(name);
        if (r) chosen.push(r);
      }
      // A push whose changes were all removals of named routes/endpoints: nothing to send (SotW cannot say removed
      // for these types; the listener or cluster that named them changes too).
      if (only && chosen.length === 0) return;
      nonce = this.host.nextNonce();
      response = encodeSotwResponse(state.version, typeUrl, nonce, chosen);
      count = chosen.length;
    }
    sub.lastNonce = nonce;
    sub.lastVersion = state.version;
    this.write(response);
    this.log.debug({ type: shortType(typeUrl), version: state.version, nonce, resources: count }, 'sent');
  }
}

function sameSet(a: Set<string>, b: Set<string>): boolean {
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}
