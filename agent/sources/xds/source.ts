// The xDS source: the agent's desired state from an xDS (v3) control plane over one ADS stream.
//
// Subscriptions: LDS wildcard (every listener for this node); RDS, CDS and EDS by name, for what the listeners use.
// Named CDS rather than wildcard: the agent needs only the clusters its listeners reference, every server supports
// named CDS (proxyless gRPC clients use nothing else), and a fleet plane need not send each node every cluster.
//
// Mode: delta by default. On a reconnect it sends initial_resource_versions, so a server with unchanged state sends
// nothing again (10k services is ~100k endpoints to resend otherwise), and an endpoint change travels alone.
//
// Safety: a response is decoded, checked and translated into a candidate state; only when that state builds a valid
// model (and, before the first apply, is complete) is `apply` called; then the cache moves on and the response is
// ACKed. Anything else is NACKed with the previous version and nothing changes. When the stream fails, the cache
// and the kernel keep the last good state while the source reconnects with backoff.
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import type { Logger } from '../../observe/log.js';
import type { Model } from '../../model/types.js';
import { TYPE } from '../../../xds/envoy.js';
import { adsClientConstructor, unpackAny, type AnyMessage } from '../../../xds/protos.js';
import { Journal } from './journal.js';
import { noRefChanges, References, type Kind, type RefChanges } from './refs.js';
import { ModelBuilder } from './build.js';
import { decodeClusterLoadAssignment } from './cla.js';
import {
  digestCluster, digestEndpoints, digestListener, digestRoute,
  type ClusterDigest, type EndpointsDigest, type ListenerDigest, type RouteDigest,
} from './digest.js';
import { capReason, joinErrors, XdsResourceError } from './errors.js';
import { isMeshType, MeshState, type MeshPart } from './mesh.js';
import { meshChangedServices } from '../../model/meshscope.js';
import { MESH_TYPE_URLS } from '../../../xds/mesh.js';

export interface XdsStatus {
  server: string;
  mode: 'sotw' | 'delta';
  state: 'connecting' | 'connected' | 'backoff';
  connectedSince: string | null;
  lastError: string | null;
  reconnects: number;
  /** By type URL: the last ACKed version (SotW version_info; delta system_version_info, else the nonce). */
  acked: Record<string, { version: string; at: string; resources: number }>;
  lastNack: { typeUrl: string; version: string; at: string; reason: string } | null;
  /** What the applied resources ask for that sockmesh does not do (reported, not applied). */
  unsupported: string[];
  /** Listeners waiting for resources they reference (kept at their last applied version, or not applied yet). */
  warming: string[];
  /** True once a complete state has been applied (before that the kernel is left as it was). */
  synced: boolean;
}

export interface XdsSourceOptions {
  address: string;
  tls?: { caFile: string; serverName?: string };
  mode?: 'sotw' | 'delta';
  node: { id: string; cluster: string; locality?: { region?: string; zone?: string; sub_zone?: string }; metadata: Record<string, string> };
  log: Logger;
  /**
   * Apply a complete, consistent model. `changed` names the services added, changed or removed since the last applied
   * model (absent on the first apply: everything). Return null when applied, or an error message (then NACK, nothing
   * changed).
   */
  apply(model: Model, changed?: ReadonlySet<string>): string | null;
  /** told of every NACK sent (the live monitor) */
  onNack?: (n: { typeUrl: string; version: string; reason: string }) => void;
  /** fastWindowMs: after a healthy stream is lost, redial at initialMs for this long (default 30 s) */
  backoff?: { initialMs: number; maxMs: number; fastWindowMs?: number };
  /** Responses above these are NACKed unread (defaults: 200,000 resources, 64 MiB of resource bytes). */
  limits?: { maxResources: number; maxBytes: number };
  /** Before the first complete state, apply what resolved after this long (Envoy's initial_fetch_timeout; 15 s). */
  initialFetchTimeoutMs?: number;
}

type Obj = Record<string, any>;
const KIND_OF: Record<string, Kind> = { [TYPE.listener]: 'listener', [TYPE.route]: 'route', [TYPE.cluster]: 'cluster', [TYPE.endpoint]: 'endpoint' };
const STATE_KEY = { listener: 'listeners', route: 'routes', cluster: 'clusters', endpoint: 'endpoints' } as const;
/**
 * Request order on a new stream: the mesh settings (mesh.ts; a server answers in the order asked, so they are in before
 * the first complete state is applied: no moment without strict mode or policies), then listeners, then what they
 * reference. A server that does not serve the mesh types ignores those requests.
 */
const ORDER = [...MESH_TYPE_URLS, TYPE.listener, TYPE.route, TYPE.cluster, TYPE.endpoint] as const;
const INVALID_ARGUMENT = 3;
/** A stream up this long resets the backoff even if nothing on it was accepted. */
const STABLE_MS = 30_000;
/**
 * After a healthy stream is lost, redial at the initial delay (not growing) for this long: a control plane's restart
 * is reconnected within the initial delay of its listening again, instead of after a backoff that grew while it was
 * down (6-24 s in the soak). A longer outage then backs off exponentially, so a dead plane is not redialled at that
 * rate by every node for ever.
 */
const FAST_RECONNECT_WINDOW_MS = 30_000;

/** The name a resource carries inside itself (SotW responses name resources only there). */
function nameOf(kind: Kind, r: Obj): string {
  return (kind === 'endpoint' ? r.cluster_name : r.name) ?? '';
}

type Digest = ListenerDigest | RouteDigest | ClusterDigest | EndpointsDigest;

function digest(kind: Kind, name: string, r: Obj): Digest {
  switch (kind) {
    case 'listener': return digestListener(name, r);
    case 'route': return digestRoute(name, r);
    case 'cluster': return digestCluster(name, r);
    case 'endpoint': return digestEndpoints(name, r);
  }
}

const now = () => new Date().toISOString();

/** Digests as JSON, computed once each: a resource sent again unchanged (every SotW response) changes nothing. */
const digestJson = new WeakMap<Digest, string>();
function sameDigest(before: Digest | undefined, after: Digest): boolean {
  if (!before) return false;
  let a = digestJson.get(before);
  if (a === undefined) digestJson.set(before, (a = JSON.stringify(before)));
  const b = JSON.stringify(after);
  digestJson.set(after, b);
  return a === b;
}

interface Incoming {
  typeUrl: string;
  nonce: string;
  /** SotW version_info / delta system_version_info. */
  version: string;
  resources: { name?: string; version?: string; any: AnyMessage }[];
  removed: string[];
  /** SotW LDS/CDS: the response is the whole set of that type. */
  complete: boolean;
}

export class XdsSource {
  private readonly mode: 'sotw' | 'delta';
  private readonly backoff: { initialMs: number; maxMs: number; fastWindowMs?: number };
  private readonly limits: { maxResources: number; maxBytes: number };
  private readonly initialFetchMs: number;
  private initialTimer?: NodeJS.Timeout;
  private pendingFirst?: { model: Model; unsupported: string[] };
  private client?: grpc.Client;
  private call?: grpc.ClientDuplexStream<Obj, Obj>;
  private gen = 0;
  private stopped = true;
  private timer?: NodeJS.Timeout;
  private attempt = 0;
  /** Until when (performance.now()) a lost stream is redialled at the initial delay: set when a healthy one ends. */
  private fastUntil = 0;
  /** The current stream had a response accepted. */
  private healthy = false;
  /** Makes a channel: one per connection attempt (see connect()). */
  private newClient?: () => grpc.Client;
  /** When the current stream got its first message (performance.now()). */
  private connectedAt?: number;
  /** Responses received and not yet handled, in order, with their stream's generation (see drain()). */
  private inbox: { gen: number; msg: Obj }[] = [];
  private draining = false;

  /** Accepted resources (digests) and, for delta, their versions. Changed in place, through a Journal. */
  private readonly state = {
    listeners: new Map<string, ListenerDigest>(),
    routes: new Map<string, RouteDigest>(),
    clusters: new Map<string, ClusterDigest>(),
    endpoints: new Map<string, EndpointsDigest>(),
  };
  /** What the listeners reference (subscriptions; which listeners a resource change affects). */
  private readonly refs = new References();
  /** The model of the accepted state, kept up to date listener by listener. */
  private readonly builder = new ModelBuilder();
  /** Types whose wanted names changed with the last accepted response (to resubscribe). */
  private refsChanged: RefChanges = noRefChanges();
  private readonly resourceVersions = new Map<string, Map<string, string>>();
  /** SotW: the last ACKed version_info per type. */
  private readonly versions = new Map<string, string>();
  private readonly lastNonce = new Map<string, string>();
  /** Names subscribed on the current stream, per type (LDS: wildcard, kept empty). */
  private readonly sent = new Map<string, Set<string>>();

  private readonly st: XdsStatus;
  /** The mesh resources (nodes, workloads, modes, L4 policies) accepted, validated. */
  private readonly mesh = new MeshState();
  /** What the last applied mesh settings apply to nothing (reported in unsupported). */
  private meshNotes: string[] = [];

  constructor(private readonly opts: XdsSourceOptions) {
    this.mode = opts.mode ?? 'delta';
    this.backoff = opts.backoff ?? { initialMs: 500, maxMs: 30_000 };
    this.limits = opts.limits ?? { maxResources: 200_000, maxBytes: 64 * 1024 * 1024 };
    this.initialFetchMs = opts.initialFetchTimeoutMs ?? 15_000;
    this.st = {
      server: opts.address, mode: this.mode, state: 'connecting', connectedSince: null, lastError: null, reconnects: 0,
      acked: {}, lastNack: null, unsupported: [], warming: [], synced: false,
    };
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    const creds = this.opts.tls ? grpc.credentials.createSsl(readFileSync(this.opts.tls.caFile)) : grpc.credentials.createInsecure();
    const options: grpc.ChannelOptions = {
      'grpc.max_receive_message_length': 256 * 1024 * 1024, // a full state of 10k services
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      // Keepalive finds a dead control plane on an idle stream. 5.5 min: servers built on grpc-go or grpc core
      // answer pings more often than every 5 min (their default) with GOAWAY too_many_pings.
      'grpc.keepalive_time_ms': 330_000,
      'grpc.keepalive_timeout_ms': 20_000,
      'grpc.keepalive_permit_without_calls': 1,
    };
    if (this.opts.tls?.serverName) options['grpc.ssl_target_name_override'] = this.opts.tls.serverName;
    // Beyond 4x the resource limit a response is refused before it is decoded (a memory bomb: ~100 MiB of objects
    // at most); between 1x and 4x it is decoded and NACKed with its size, which tells the operator what happened.
    const Ctor = adsClientConstructor(4 * this.limits.maxResources);
    this.newClient = () => new Ctor(this.opts.address, creds, options);
    this.connect();
  }

  /** The first complete state did not arrive in time: apply what resolved, keep waiting for the rest. */
  private initialFetchTimeout(): void {
    const pending = this.pendingFirst;
    if (this.st.synced || !pending || this.stopped) return;
    let err: string | null;
    try {
      err = this.opts.apply(this.withMesh(pending.model));
    } catch (e) {
      err = (e as Error).message;
    }
    if (err !== null) {
      this.opts.log.error({ error: err }, 'xds: initial fetch timeout: applying what resolved failed');
      return;
    }
    this.st.synced = true;
    this.st.unsupported = [...pending.unsupported, ...this.meshNotes];
    this.pendingFirst = undefined;
    this.opts.log.warn({ services: pending.model.services.length, warming: this.st.warming },
      `xds: nothing complete after ${this.initialFetchMs} ms: applied what resolved; the rest follows when it arrives`);
  }

  async stop(): Promise<void> {
    clearTimeout(this.initialTimer);
    this.stopped = true;
    this.gen++;
    clearTimeout(this.timer);
    this.call?.cancel();
    this.call = undefined;
    this.client?.close();
    this.client = undefined;
  }

  status(): XdsStatus {
    return structuredClone(this.st);
  }

  // ---- the stream ----

  private connect(): void {
    if (this.stopped || !this.newClient) return;
    // A fresh channel for every attempt, closed when its stream ends (streamEnded): gRPC's own reconnect backoff
    // (1 s growing 1.6x to 2 min) would otherwise run beside ours, and a stream started while that channel waits out
    // its backoff fails at once without dialling, which grew our backoff too: each attempt here dials now.
    this.client ??= this.newClient();
    const gen = ++this.gen;
    this.healthy = false;
    this.st.state = 'connecting';
    this.sent.clear();
    this.lastNonce.clear();
    const method = this.mode === 'delta' ? 'DeltaAggregatedResources' : 'StreamAggregatedResources';
    const call = (this.client as unknown as Record<string, () => grpc.ClientDuplexStream<Obj, Obj>>)[method]!.call(this.client);
    this.call = call;
    call.on('data', (msg: Obj) => {
      if (gen !== this.gen) return;
      if (this.st.state !== 'connected') {
        this.st.state = 'connected';
        this.st.connectedSince = now();
        this.connectedAt = performance.now();
        this.opts.log.info({ server: this.opts.address, mode: this.mode }, 'xds: connected');
      }
      this.inbox.push({ gen, msg });
      if (!this.draining) {
        this.draining = true;
        setImmediate(() => this.drain());
      }
    });
    call.on('error', (e: grpc.ServiceError) => this.streamEnded(gen, e.details || e.message));
    call.on('status', (s: grpc.StatusObject) => this.streamEnded(gen, s.code === grpc.status.OK ? 'stream closed by the server' : s.details));
    call.on('end', () => this.streamEnded(gen, 'stream closed by the server'));
    // Resubscribe: what we have cached is announced so the server need not resend it.
    for (const typeUrl of ORDER) this.subscribe(typeUrl, true);
  }

  /**
   * Handle the oldest response received, then yield to the loop before the next one. gRPC hands over every message of
   * a read at once: a swap of hundreds of services came as four responses (listeners, routes, clusters, endpoints)
   * decoded, translated and applied back to back, the proxy and its heartbeat waiting for all of them. A response of
   * a stream that has ended since is dropped unanswered: the next stream sends it again.
   */
  private drain(): void {
    const next = this.inbox.shift();
    if (next && next.gen === this.gen && !this.stopped) {
      try {
        this.onResponse(next.msg);
      } catch (e) {
        // A bug of ours must not take the agent down with it; the stream is restarted cleanly.
        this.opts.log.error({ err: e }, 'xds: response handling failed');
        this.streamEnded(next.gen, `internal error: ${(e as Error).message}`);
      }
    }
    if (this.inbox.length > 0) setImmediate(() => this.drain());
    else this.draining = false;
  }

  private streamEnded(gen: number, reason: string): void {
    if (gen !== this.gen || this.stopped) return;
    this.gen++;
    this.call?.cancel();
    this.call = undefined;
    this.client?.close();
    this.client = undefined;
    this.st.lastError = reason;
    // A stream that had a response accepted, or stayed up long enough, was a working one: start the backoff over and
    // redial fast for a while (a restart). A first message alone proves nothing (a server that answers once and resets
    // would otherwise be redialled at the initial delay forever).
    const t = performance.now();
    const connected = this.connectedAt !== undefined;
    if (this.healthy || (this.connectedAt !== undefined && t - this.connectedAt >= STABLE_MS)) {
      this.attempt = 0;
      this.fastUntil = t + (this.backoff.fastWindowMs ?? FAST_RECONNECT_WINDOW_MS);
    }
    this.healthy = false;
    this.connectedAt = undefined;
    this.st.state = 'backoff';
    this.st.connectedSince = null;
    const base = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** this.attempt);
    const delay = Math.round(base / 2 + (Math.random() * base) / 2); // "equal jitter": never a thundering herd
    const fast = t < this.fastUntil;
    if (!fast) this.attempt = Math.min(this.attempt + 1, 30);
    // A lost stream is worth a warning; each failed redial of the fast window is not (two a second for its 30 s)
    if (connected || !fast) this.opts.log.warn({ server: this.opts.address, reason, retryInMs: delay }, 'xds: stream lost, keeping the last good state');
    else this.opts.log.debug({ server: this.opts.address, reason, retryInMs: delay }, 'xds: redial failed');
    this.timer = setTimeout(() => {
      this.st.reconnects++;
      this.connect();
    }, delay);
    this.timer.unref?.();
  }

  /** Every request carries the node identity (as Envoy does by default), ACKs and NACKs included. */
  private send(req: Obj): void {
    this.call?.write({ ...req, node: this.node() });
  }

  private nodeCache?: Obj;
  private node(): Obj {
    if (this.nodeCache) return this.nodeCache;
    const { id, cluster, locality, metadata } = this.opts.node;
    const fields: Obj = {};
    // google.protobuf.* comes from protobufjs' built-in descriptors, whose field names are camelCase whatever keepCase says.
    for (const [k, v] of Object.entries(metadata)) fields[k] = { stringValue: v };
    this.nodeCache = { id, cluster, locality: locality ?? {}, metadata: { fields }, user_agent_name: 'sockmesh-agent' };
    return this.nodeCache;
  }

  /** The names we want per type: LDS is wildcard; the others follow the accepted listeners. */
  private wanted(typeUrl: string): Set<string> | 'wildcard' {
    if (typeUrl === TYPE.listener || isMeshType(typeUrl)) return 'wildcard';
    const index = typeUrl === TYPE.route ? this.refs.routes : typeUrl === TYPE.cluster ? this.refs.clusters : this.refs.endpoints;
    return new Set(index.keys());
  }

  /** Send a (re)subscription for one type when what we want differs from what the stream has. */
  private subscribe(typeUrl: string, initial: boolean): void {
    const want = this.wanted(typeUrl);
    const had = this.sent.get(typeUrl);
    const names = want === 'wildcard' ? new Set<string>() : want;
    if (had) {
      if (had.size === names.size && [...names].every((n) => had.has(n))) return;
    } else if (want !== 'wildcard' && names.size === 0) {
      return; // a first request without names would mean "everything" (legacy wildcard)
    }
    this.sent.set(typeUrl, new Set(names));
    if (this.mode === 'delta') {
      const req: Obj = { type_url: typeUrl };
      if (!had) {
        req.resource_names_subscribe = [...names];
        const versions: Record<string, string> = {};
        for (const [n, v] of this.resourceVersions.get(typeUrl) ?? []) if (want === 'wildcard' || names.has(n)) versions[n] = v;
        req.initial_resource_versions = versions;
      } else {
        req.resource_names_subscribe = [...names].filter((n) => !had.has(n));
        req.resource_names_unsubscribe = [...had].filter((n) => !names.has(n));
      }
      this.send(req);
    } else {
      this.send({
        type_url: typeUrl,
        resource_names: [...names],
        version_info: this.versions.get(typeUrl) ?? '',
        response_nonce: this.lastNonce.get(typeUrl) ?? '',
      });
    }
  }

  private ack(typeUrl: string, nonce: string, version: string): void {
    if (this.mode === 'delta') this.send({ type_url: typeUrl, response_nonce: nonce });
    else this.send({ type_url: typeUrl, version_info: version, resource_names: [...(this.sent.get(typeUrl) ?? [])], response_nonce: nonce });
  }

  private nack(typeUrl: string, nonce: string, version: string, long: string): void {
    const reason = capReason(long); // whatever made it (apply's message, an exception): bounded on the wire and in status()
    const previous = this.mode === 'delta' ? (this.st.acked[typeUrl]?.version ?? '') : (this.versions.get(typeUrl) ?? '');
    const error_detail = { code: INVALID_ARGUMENT, message: reason };
    if (this.mode === 'delta') this.send({ type_url: typeUrl, response_nonce: nonce, error_detail });
    else this.send({ type_url: typeUrl, version_info: previous, resource_names: [...(this.sent.get(typeUrl) ?? [])], response_nonce: nonce, error_detail });
    this.st.lastNack = { typeUrl, version, at: now(), reason };
    this.opts.onNack?.({ typeUrl, version, reason });
    this.opts.log.warn({ typeUrl, version, previous, reason }, 'xds: update rejected (NACK), previous state kept');
  }

  // ---- responses ----

  private onResponse(msg: Obj): void {
    const typeUrl: string = msg.type_url ?? '';
    const nonce: string = msg.nonce ?? '';
    if (isMeshType(typeUrl)) return this.onMeshResponse(typeUrl, nonce, msg);
    const kind = KIND_OF[typeUrl];
    if (!kind) {
      // Never subscribed to: answering would read as a subscription. Logged and dropped.
      this.opts.log.warn({ typeUrl, nonce }, 'xds: response of an unknown type ignored');
      return;
    }
    // A response repeating the last nonce is handled like any other (and answered): dropping it unanswered leaves a
    // server that waits for an ACK waiting, and resent resources cost only a digest comparison.
    this.lastNonce.set(typeUrl, nonce);
    const inc: Incoming =
      this.mode === 'delta'
        ? {
            typeUrl, nonce, version: msg.system_version_info || nonce,
            resources: (msg.resources ?? []).map((r: Obj) => ({ name: r.name, version: r.version, any: r.resource })),
            removed: msg.removed_resources ?? [], complete: false,
          }
        : {
            typeUrl, nonce, version: msg.version_info ?? '',
            resources: (msg.resources ?? []).map((any: AnyMessage) => ({ any })),
            removed: [], complete: typeUrl === TYPE.listener || typeUrl === TYPE.cluster,
          };
    const error = this.consider(kind, inc);
    if (error !== null) return this.nack(typeUrl, nonce, inc.version, error);
    if (this.mode === 'sotw') this.versions.set(typeUrl, inc.version);
    this.ack(typeUrl, nonce, inc.version);
    this.healthy = true; // an accepted response: this server works, the next failure starts the backoff over
    this.st.acked[typeUrl] = { version: inc.version, at: now(), resources: this.state[STATE_KEY[kind]].size };
    // New listeners or clusters may reference more; removed ones less.
    const moved = this.refsChanged;
    if (moved.routes.size > 0) this.subscribe(TYPE.route, false);
    if (moved.clusters.size > 0) this.subscribe(TYPE.cluster, false);
    if (moved.endpoints.size > 0) this.subscribe(TYPE.endpoint, false);
  }

  /** The listeners' model with the mesh settings (the committed ones, or a candidate's `part`); notes kept for status. */
  private withMesh(model: Model, part?: MeshPart): Model {
    const r = this.mesh.compose(model, part);
    this.meshNotes = r.notes;
    return r.model;
  }

  /**
   * A response of a mesh type (mesh.ts): validated whole, applied with the listeners' model when a complete state is in
   * force (before that, the first apply takes it), then ACKed; or NACKed with the resource and field, nothing changed.
   */
  private onMeshResponse(typeUrl: string, nonce: string, msg: Obj): void {
    this.lastNonce.set(typeUrl, nonce);
    const delta = this.mode === 'delta';
    const version: string = delta ? msg.system_version_info || nonce : (msg.version_info ?? '');
    const resources: { name?: string; version?: string; any?: AnyMessage }[] = delta
      ? (msg.resources ?? []).map((r: Obj) => ({ name: r.name, version: r.version, any: r.resource }))
      : (msg.resources ?? []).map((any: AnyMessage) => ({ any }));
    const removed: string[] = delta ? (msg.removed_resources ?? []) : [];
    if (resources.length > this.limits.maxResources) {
      return this.nack(typeUrl, nonce, version, `response too large: ${resources.length} resources (limit ${this.limits.maxResources})`);
    }
    let c: ReturnType<MeshState['prepare']>;
    try {
      c = this.mesh.prepare(typeUrl, resources, removed, !delta);
    } catch (e) {
      this.opts.log.error({ err: e, typeUrl }, 'xds: translating a mesh response failed');
      c = `internal error translating the response: ${(e as Error)?.message ?? String(e)}`;
    }
    if (typeof c === 'string') return this.nack(typeUrl, nonce, version, c);
    // Nothing changed (a reconnect's answers): no full apply, which would rewrite every service's kernel state
    if (this.st.synced && !this.mesh.unchanged(c)) {
      const before = this.meshNotes;
      let scope: Set<string> | undefined;
      let err: string | null;
      try {
        // only the services the change reaches (model/meshscope.ts): a pod on another node re-plans the services it
        // backs; a change of the modes themselves, every service
        const prev = this.mesh.compose(this.builder.model).model;
        const next = this.withMesh(this.builder.model, c.part);
        scope = meshChangedServices(prev, next);
        err = scope === undefined ? this.opts.apply(next) : this.opts.apply(next, scope);
      } catch (e) {
        err = (e as Error).message;
      }
      if (err !== null) {
        this.meshNotes = before;
        return this.nack(typeUrl, nonce, version, `not applied: ${err}`);
      }
      const old = new Set(before);
      this.st.unsupported = [...this.st.unsupported.filter((n) => !old.has(n)), ...this.meshNotes];
      this.opts.log.info({ type: typeUrl.slice(typeUrl.lastIndexOf('.') + 1), version, resources: c.resources.size, services: scope ? scope.size : 'all' }, 'xds: mesh settings applied');
    }
    this.mesh.commit(c);
    if (delta) {
      let v = this.resourceVersions.get(typeUrl);
      if (!v) this.resourceVersions.set(typeUrl, (v = new Map()));
      for (const r of resources) if (r.name && r.version !== undefined) v.set(r.name, r.version);
      for (const n of [...v.keys()]) if (!c.resources.has(n)) v.delete(n);
    } else this.versions.set(typeUrl, version);
    this.ack(typeUrl, nonce, version);
    this.healthy = true;
    this.st.acked[typeUrl] = { version, at: now(), resources: c.resources.size };
  }

  /** Check, translate and apply one response. Null when accepted (state moved on), else the NACK reason. */
  private consider(kind: Kind, inc: Incoming): string | null {
    const started = performance.now();
    if (inc.resources.length > this.limits.maxResources) {
      return `response too large: ${inc.resources.length} resources (limit ${this.limits.maxResources})`;
    }
    let bytes = 0;
    for (const r of inc.resources) bytes += r.any?.value?.length ?? 0;
    if (bytes > this.limits.maxBytes) return `response too large: ${bytes} bytes of resources (limit ${this.limits.maxBytes})`;

    const key = STATE_KEY[kind];
    const map = this.state[key] as Map<string, Digest>;
    let versions = this.resourceVersions.get(inc.typeUrl);
    if (!versions) this.resourceVersions.set(inc.typeUrl, (versions = new Map()));
    const incoming = new Map<string, Digest>();
    const newVersions = new Map<string, string>();
    const errors: string[] = [];
    inc.resources.forEach((r, i) => {
      if (!r.any) {
        if (r.name) newVersions.set(r.name, r.version ?? ''); // delta: a version bump with no body
        return;
      }
      if (r.any.type_url !== inc.typeUrl) {
        errors.push(`resources[${i}]${r.name ? ` '${r.name}'` : ''}: type ${r.any.type_url} in a ${inc.typeUrl} response`);
        return;
      }
      try {
        // Assignments (most of a full state) are read from their bytes by hand (cla.ts), the rest by protobufjs.
        const cla = kind === 'endpoint' ? decodeClusterLoadAssignment(r.any.value) : undefined;
        const obj = cla ? undefined : unpackAny<Obj>(r.any);
        const name = (cla ? cla.clusterName : nameOf(kind, obj!)) || r.name || '';
        if (!name) throw new XdsResourceError(`resources[${i}]: the ${kind} has no name`);
        if (r.name && name !== r.name) throw new XdsResourceError(`resources[${i}] '${r.name}': names itself '${name}'`);
        incoming.set(name, cla ? cla.digest(name) : digest(kind, name, obj!));
        if (r.version !== undefined) newVersions.set(name, r.version);
      } catch (e) {
        errors.push(e instanceof XdsResourceError ? e.message : `resources[${i}]${r.name ? ` '${r.name}'` : ''}: ${(e as Error).message}`);
      }
    });
    if (errors.length > 0) return joinErrors(errors);

    // From here on every change is journaled: a rejected response is rolled back and changes nothing.
    const j = new Journal();
    try {
      const error = this.accept(kind, inc, map, versions, incoming, newVersions, j, started);
      if (error !== null) j.rollback();
      else j.commit();
      return error;
    } catch (e) {
      // Whatever failed (a bug of ours on input we did not foresee, a stack overflow), the response is undone and
      // NACKed: rethrowing would restart the stream, the server would resend the same response, and so forever.
      j.rollback();
      this.opts.log.error({ err: e, typeUrl: inc.typeUrl }, 'xds: translating a response failed');
      return `internal error translating the response: ${(e as Error)?.message ?? String(e)}`;
    }
  }

  private accept(
    kind: Kind, inc: Incoming, map: Map<string, Digest>, versions: Map<string, string>,
    incoming: Map<string, Digest>, newVersions: Map<string, string>, j: Journal, started: number,
  ): string | null {
    // The resources that really changed (a resource sent again as it was changes nothing).
    const touched = new Set<string>();
    for (const [name, d] of incoming) {
      if (sameDigest(map.get(name), d)) continue;
      touched.add(name);
      j.set(map, name, d);
    }
    const removed = inc.complete ? [...map.keys()].filter((n) => !incoming.has(n)) : inc.removed;
    for (const name of removed) {
      if (map.has(name)) touched.add(name);
      j.delete(map, name);
      j.delete(versions, name);
    }
    for (const [name, v] of newVersions) j.set(versions, name, v);
    // A version is announced on reconnect (initial_resource_versions) only for what we hold: the server would not
    // send a resource whose version we claim.
    if (kind !== 'listener') for (const name of newVersions.keys()) if (!map.has(name)) j.delete(versions, name);

    // The listeners this affects (found from the links before the change), relinked and rebuilt; then drop what no
    // listener references any more, wanted or held (named subscriptions shrink with it), and what arrived unasked.
    const moved = noRefChanges();
    const dirty = this.refs.affected(kind, touched);
    if (kind === 'listener' || kind === 'route') for (const l of dirty) this.refs.relink(this.state, l, j, moved);
    if (kind === 'cluster') for (const c of touched) this.refs.reindexCluster(this.state, c, j, moved);
    const result = this.builder.update(this.state, dirty, j);
    if (result.error !== undefined) return result.error;
    // A warming listener holds what its applied version references (subscribed, kept, its updates applied); once
    // it is warm (or gone) those are released, and pruned below if nothing else uses them.
    for (const l of dirty) this.refs.hold(this.state, l, this.builder.held(l), j, moved);
    const prune = <T>(type: string, m: Map<string, T>, index: Map<string, unknown>, names: Iterable<string>) => {
      const v = this.resourceVersions.get(type);
      for (const n of names) {
        if (index.has(n)) continue;
        j.delete(m, n);
        if (v) j.delete(v, n);
      }
    };
    const own = kind === 'listener' ? [] : [...incoming.keys(), ...newVersions.keys()];
    prune(TYPE.route, this.state.routes, this.refs.routes, kind === 'route' ? [...moved.routes, ...own] : moved.routes);
    prune(TYPE.cluster, this.state.clusters, this.refs.clusters, kind === 'cluster' ? [...moved.clusters, ...own] : moved.clusters);
    prune(TYPE.endpoint, this.state.endpoints, this.refs.endpoints, kind === 'endpoint' ? [...moved.endpoints, ...own] : moved.endpoints);

    const ms = Math.round((performance.now() - started) * 100) / 100;
    const ready = this.st.synced || result.warming.length === 0;
    if (ready) {
      const first = !this.st.synced;
      if (first || result.changed.size > 0) {
        let err: string | null;
        try {
          const model = this.withMesh(result.model!);
          err = first ? this.opts.apply(model) : this.opts.apply(model, result.changed);
        } catch (e) {
          err = (e as Error).message;
        }
        if (err !== null) return `not applied: ${err}`;
        const services = result.model!.services.length;
        // which response (type, version) made the change, and the first services it changed: what a soak or an
        // operator needs to tell when a given config change came into force
        const names = first ? undefined : [...result.changed].slice(0, 8);
        this.opts.log.info({ services, changed: first ? undefined : result.changed.size, names, type: kind, version: inc.version, warming: result.warming.length, ms },
          'xds: model applied');
      }
      this.st.synced = true;
      this.st.unsupported = [...result.unsupported, ...this.meshNotes];
    } else {
      this.opts.log.info({ warming: result.warming.length, ms }, 'xds: waiting for a complete state before the first apply');
      // Like Envoy's initial_fetch_timeout: a reference that never resolves must not keep a new node empty forever.
      this.pendingFirst = { model: result.model!, unsupported: result.unsupported };
      if (!this.initialTimer) {
        this.initialTimer = setTimeout(() => this.initialFetchTimeout(), this.initialFetchMs);
        this.initialTimer.unref?.();
      }
    }
    this.st.warming = result.warming;
    this.refsChanged = moved;
    return null;
  }
}
