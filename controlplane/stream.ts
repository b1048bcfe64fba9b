// What the state-of-the-world and the delta stream handlers share: the server they belong to, the node they serve,
// and the checks every request goes through before it means anything.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { TYPE, TYPE_URLS } from '../xds/envoy.js';
import { MESH_TYPE, MESH_TYPE_URLS } from '../xds/mesh.js';
import { fromStruct } from '../xds/wellknown.js';
import type { Changes, Snapshot, SnapshotView } from './snapshot.js';

/** The part of the server a stream handler needs. */
export interface StreamHost {
  /** What a node is served: the snapshot, with that node's own resources over it (per-node Kubernetes services). */
  view(nodeId: string): SnapshotView;
  nextNonce(): string;
  readonly log: Logger;
  /** Most resource names one stream may subscribe to per type: a hostile client must not exhaust memory. */
  readonly maxNames: number;
}

export interface XdsStream {
  /** the node id its first request named ('' before that, or when it named none) */
  readonly node: string;
  push(snapshot: Snapshot, changes: Changes): void;
  stats(): StreamStats;
}

/** How far a stream's writes are behind (tests, logs): see StreamBase#write. */
export interface StreamStats {
  id: number;
  variant: 'delta' | 'sotw';
  /** Bytes handed to gRPC and not yet written out to the connection. */
  queuedBytes: number;
  /** The most queuedBytes has been. */
  maxQueuedBytes: number;
  /** Responses written. */
  responses: number;
  /** Changes merged into a response still owed (the client was not reading). */
  coalesced: number;
  /** Types with a response owed right now. */
  owed: number;
}

/**
 * Past this many bytes handed to gRPC and not yet written out to the connection, a stream writes no new response:
 * what changes meanwhile is owed per type and coalesced, and goes out (from the then latest snapshot) once the client
 * reads again. A stalled client so holds at most this plus one response, however many updates pass.
 */
export const HIGH_WATER_BYTES = 1 << 20;

/** What a stream still owes its client for one type. */
export interface Owed {
  /** The names that changed or were asked for (undefined: every name the client has or may want). */
  names: Set<string> | undefined;
  /** Set is one the caller passed (a push's changes, shared by every stream): copied before it is added to. */
  shared: boolean;
  /** Delta: names just subscribed to, to be reported removed if they do not exist. */
  absent: Set<string> | undefined;
  /** Delta: answer even if nothing differs (the first request of a type). */
  always: boolean;
}

/** Listeners, clusters and the mesh types (sockmesh.mesh.v1) have wildcard subscriptions; routes and endpoints are asked for by name. */
export function wildcardType(typeUrl: string): boolean {
  return typeUrl === TYPE.listener || typeUrl === TYPE.cluster || MESH_TYPE_URLS.includes(typeUrl);
}

const SHORT: Record<string, string> = {
  [TYPE.listener]: 'LDS', [TYPE.route]: 'RDS', [TYPE.cluster]: 'CDS', [TYPE.endpoint]: 'EDS',
  [MESH_TYPE.node]: 'mesh.Node', [MESH_TYPE.workload]: 'mesh.Workload', [MESH_TYPE.mtls]: 'mesh.Mtls', [MESH_TYPE.authorization]: 'mesh.Authorization',
};
export const shortType = (typeUrl: string) => SHORT[typeUrl] ?? typeUrl;

/** google.protobuf.Struct (as proto-loader decodes it) -> plain JSON, for logs. */
export function structToPlain(s: unknown): unknown {
  return s && typeof s === 'object' ? fromStruct(s) : undefined;
}

export interface NodeInfo {
  id?: string;
  cluster?: string;
  locality?: unknown;
  metadata?: unknown;
  user_agent_name?: string;
  user_agent_version?: string;
}

/** The node identity as logged: id, cluster, locality, metadata (as plain JSON), user agent. */
export function describeNode(node: unknown): NodeInfo {
  if (!node || typeof node !== 'object') return {};
  const n = node as Record<string, unknown>;
  return {
    id: typeof n['id'] === 'string' ? n['id'] : undefined,
    cluster: typeof n['cluster'] === 'string' ? n['cluster'] : undefined,
    locality: n['locality'],
    metadata: structToPlain(n['metadata']),
    user_agent_name: typeof n['user_agent_name'] === 'string' ? n['user_agent_name'] : undefined,
    user_agent_version: typeof n['user_agent_version'] === 'string' ? n['user_agent_version'] : undefined,
  };
}

/**
 * The type URL of a request if the server can act on it, else undefined after logging why (a missing type URL is a
 * malformed request; an unknown one is logged once per stream and ignored: a newer client may ask for types we do
 * not serve, and that must never take the stream down).
 */
export function acceptedType(typeUrl: unknown, log: Logger, warnedUnknown: Set<string>): string | undefined {
  if (typeof typeUrl !== 'string' || typeUrl === '') {
    log.warn('malformed request without type_url: ignored');
    return undefined;
  }
  if (!TYPE_URLS.includes(typeUrl) && !MESH_TYPE_URLS.includes(typeUrl)) {
    if (warnedUnknown.size < 64 && !warnedUnknown.has(typeUrl)) {
      warnedUnknown.add(typeUrl);
      log.warn({ typeUrl: typeUrl.slice(0, 200) }, 'request for a type URL this control plane does not serve: ignored');
    }
    return undefined;
  }
  return typeUrl;
}

/** A list of strings from a decoded request (absent = empty); undefined if it is not one. */
export function stringList(v: unknown): string[] | undefined {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) return undefined;
  return v as string[];
}

/**
 * What every stream does before its variant's logic: log the node once when the stream opens, and keep only
 * requests of a known type (an unknown type URL is logged once per stream and ignored).
 */
export abstract class StreamBase<Sub> implements XdsStream {
  /** Per type URL, what the client subscribed to, in the order it did (responses owed go out in this order). */
  protected readonly subs = new Map<string, Sub>();
  protected log: Logger;
  private nodeId?: string;
  private readonly warnedUnknown = new Set<string>();

  constructor(
    protected readonly call: grpc.ServerDuplexStream<unknown, Buffer>,
    protected readonly host: StreamHost,
    readonly id: number,
    private readonly variant: 'delta' | 'sotw',
  ) {
    this.log = host.log.child({ stream: id, variant });
  }

  /** One request off the stream: its type accepted (accept()), then the variant's handling. */
  onRequest(req: Record<string, unknown>): void {
    const typeUrl = this.accept(req);
    if (typeUrl) this.request(typeUrl, req);
  }

  /** A request of a type we serve. */
  protected abstract request(typeUrl: string, req: Record<string, unknown>): void;

  abstract push(snapshot: Snapshot, changes: Changes): void;

  get node(): string {
    return this.nodeId ?? '';
  }

  /** What this stream's node is served now. */
  protected view(): SnapshotView {
    return this.host.view(this.node);
  }

  private queuedBytes = 0;
  private readonly counters = { maxQueuedBytes: 0, responses: 0, coalesced: 0 };
  private readonly owed = new Map<string, Owed>();

  /** Send what is owed for one type, from the current snapshot (through write()). */
  protected abstract emit(typeUrl: string, owed: Owed): void;

  stats(): StreamStats {
    return { id: this.id, variant: this.variant, queuedBytes: this.queuedBytes, ...this.counters, owed: this.owed.size };
  }

  /**
   * Owe the client a response for `typeUrl`: for these names (undefined: all), merged with what is owed already.
   * It goes out at once unless the connection is backed up.
   */
  protected owe(typeUrl: string, names: Set<string> | undefined, absent?: Set<string>, always = false): void {
    const o = this.owed.get(typeUrl);
    if (!o) this.owed.set(typeUrl, { names, shared: true, absent: absent?.size ? absent : undefined, always });
    else {
      this.counters.coalesced++;
      if (names === undefined || o.names === undefined) o.names = undefined;
      else {
        if (o.shared) {
          o.names = new Set(o.names);
          o.shared = false;
        }
        for (const n of names) o.names.add(n);
        if (o.names.size > this.host.maxNames) o.names = undefined; // all: bounded whatever the churn
      }
      // Bounded too: past maxNames, a name subscribed meanwhile that does not exist is not reported absent (the
      // client's initial fetch timeout covers it); only a client churning names without reading gets there.
      if (absent?.size && (o.absent?.size ?? 0) < this.host.maxNames) o.absent = new Set([...(o.absent ?? []), ...absent]);
      o.always ||= always;
    }
    if (this.queuedBytes < HIGH_WATER_BYTES) this.flush();
  }

  private flush(): void {
    for (const typeUrl of this.subs.keys()) {
      if (this.owed.size === 0 || this.queuedBytes >= HIGH_WATER_BYTES) return;
      const o = this.owed.get(typeUrl);
      if (!o) continue;
      this.owed.delete(typeUrl);
      this.emit(typeUrl, o);
    }
  }

  /** Write one response; its bytes count as queued until gRPC has written them out to the connection. */
  protected write(response: Buffer): void {
    const n = response.length;
    this.queuedBytes += n;
    if (this.queuedBytes > this.counters.maxQueuedBytes) this.counters.maxQueuedBytes = this.queuedBytes;
    this.counters.responses++;
    // The callback runs once the HTTP/2 stream took the frame, which flow control holds back while the client does
    // not read (it never runs for a cancelled call, whose stream is dropped anyway).
    this.call.write(response, () => {
      this.queuedBytes -= n;
      if (this.owed.size > 0 && this.queuedBytes < HIGH_WATER_BYTES) {
        try {
          this.flush();
        } catch (e) {
          this.log.error({ err: e }, 'sending an owed response failed');
        }
      }
    });
  }

  /** The request's type URL when it is one we serve, else undefined (after logging). */
  private accept(req: Record<string, unknown>): string | undefined {
    if (this.nodeId === undefined) {
      const node = describeNode(req['node']);
      this.nodeId = node.id ?? '';
      this.log = this.log.child({ node: node.id });
      const what = this.variant === 'delta' ? 'delta' : 'state of the world';
      this.log.info({ peer: this.call.getPeer(), nodeInfo: node }, `ADS stream (${what}) opened`);
    }
    return acceptedType(req['type_url'], this.log, this.warnedUnknown);
  }

  /** True (after logging) when a request would make the stream know more than maxNames names of a type. */
  protected tooManyNames(typeUrl: string, count: number): boolean {
    if (count <= this.host.maxNames) return false;
    this.log.warn({ type: shortType(typeUrl), count, max: this.host.maxNames }, 'request subscribes to too many names: ignored');
    return true;
  }
}
