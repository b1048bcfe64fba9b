// The control plane: a gRPC server with the Aggregated Discovery Service (state of the world and delta), serving
// one snapshot of the model to every stream and pushing each change to all of them.
//
// Responses are pre-encoded Buffers (see snapshot.ts); the ADS method definitions are used as they are except that
// their response serializer passes a Buffer through untouched.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import pino, { type Logger } from 'pino';
import { adsService, protoRoot } from '../xds/protos.js';
import { ConfigError, type Model, type Service } from '../agent/model/types.js';
import { DeltaStream } from './delta.js';
import { Snapshot, type Changes, type SnapshotView } from './snapshot.js';
import { LayeredView } from './nodeview.js';
import { isMeshType, MeshSnapshot } from './mesh.js';
import { SotwStream } from './sotw.js';
import { shortType, type StreamHost, type StreamStats, type XdsStream } from './stream.js';
import { DirWatcher, loadConfigDir } from './watch.js';
import { CaService, identitiesByNode, type CaSetup } from './ca-service.js';

export const DEFAULT_MAX_NAMES = 100_000;

/** The ADS service with a response serializer that sends pre-encoded responses as they are. */
function adsServiceBufferResponses(): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(adsService())) {
    const m = method as grpc.MethodDefinition<unknown, unknown>;
    out[name] = { ...m, responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : m.responseSerialize(v)) };
  }
  return out as grpc.ServiceDefinition;
}

export interface ControlPlaneOptions {
  log?: Logger;
  maxNames?: number;
}

export class ControlPlane implements StreamHost {
  readonly log: Logger;
  readonly maxNames: number;
  private current = Snapshot.empty();
  private readonly streams = new Set<XdsStream>();
  private readonly calls = new Set<grpc.ServerDuplexStream<unknown, Buffer>>();
  private nonces = 0;
  private streamIds = 0;
  /**
   * Per node with an open stream, the resources only it is served (Kubernetes services translated for that node),
   * over the shared snapshot; made on the node's first request from nodeModel, dropped with its last stream.
   */
  private readonly overlays = new Map<string, { snapshot: Snapshot; view: LayeredView }>();
  /** The model of a node's own services (undefined: no per-node services, every node gets the shared snapshot). */
  private nodeModel?: (nodeId: string) => Model;
  /** Nonces of an earlier server process can never match ours. */
  private readonly noncePrefix = randomBytes(3).toString('hex');
  /** node -> identities of its workloads, from the last model (the CA's authorization reads it) */
  private nodeIdentities = new Map<string, Set<string>>();
  /** the model's nodes, workloads, modes and L4 policies (mesh.ts), served beside the Envoy resources */
  private readonly mesh = new MeshSnapshot();

  constructor(opts: ControlPlaneOptions = {}) {
    this.log = opts.log ?? pino({ level: 'silent' });
    this.maxNames = opts.maxNames ?? DEFAULT_MAX_NAMES;
  }

  snapshot(): Snapshot {
    return this.current;
  }

  /**
   * What `nodeId` is served: the shared snapshot, with its own services over it when there are per-node services, and
   * the mesh resources as that node sees them (its own workloads' cgroups).
   */
  view(nodeId: string): SnapshotView {
    const inner = this.envoyView(nodeId);
    const mesh = this.mesh;
    return {
      type: (url) => (isMeshType(url) ? mesh.type(url, nodeId) : inner.type(url)),
      sotwBody: (url) => (isMeshType(url) ? mesh.sotwBody(url, nodeId) : inner.sotwBody(url)),
    };
  }

  private envoyView(nodeId: string): SnapshotView {
    if (!this.nodeModel) return this.current;
    let o = this.overlays.get(nodeId);
    if (!o) {
      const snapshot = Snapshot.empty();
      snapshot.apply(this.nodeModel(nodeId));
      o = { snapshot, view: new LayeredView(this.current, snapshot) };
      this.overlays.set(nodeId, o);
    }
    return o.view;
  }

  /** The nodes that have their own overlay now (tests, metrics). */
  overlayNodes(): string[] {
    return [...this.overlays.keys()];
  }

  /**
   * Serve `base` to every node and `perNode(node)` over it to each node (its services must be disjoint from the
   * base's), pushing to each stream what changed for its node. Everything is updated before anything is pushed: a
   * service moving between the base and a node's overlay is never seen missing.
   */
  setLayered(base: Model, perNode: (nodeId: string) => Model): Changes {
    const started = performance.now();
    this.nodeIdentities = identitiesByNode(base);
    this.nodeModel = perNode;
    const baseChanges = withMesh(this.current.apply(base), this.mesh.apply(base));
    const nodeChanges = new Map<string, Changes>();
    for (const [node, o] of this.overlays) {
      const c = o.snapshot.apply(perNode(node));
      if (c.size > 0) nodeChanges.set(node, c);
    }
    if (baseChanges.size === 0 && nodeChanges.size === 0) return baseChanges;
    for (const s of this.streams) {
      const mine = nodeChanges.get(s.node);
      const changes = mine ? mergeChanges(baseChanges, mine) : baseChanges;
      if (changes.size === 0) continue;
      try {
        s.push(this.current, changes);
      } catch (e) {
        this.log.error({ err: e }, 'push to a stream failed');
      }
    }
    this.log.info({
      snapshot: this.current.serial, changed: Object.fromEntries([...baseChanges].map(([url, names]) => [shortType(url), names.size])),
      nodes: nodeChanges.size, overlays: this.overlays.size, streams: this.streams.size, ms: Math.round(performance.now() - started),
    }, 'snapshot updated');
    return baseChanges;
  }

  /** The identities of the workloads the model places on `node` (the CA issues only those to that node). */
  identitiesOf(node: string): ReadonlySet<string> {
    return this.nodeIdentities.get(node) ?? new Set();
  }

  nextNonce(): string {
    return `${this.noncePrefix}-${++this.nonces}`;
  }

  get streamCount(): number {
    return this.streams.size;
  }

  /** Per open stream, how far its writes are behind (a stalled client's stays bounded: see HIGH_WATER_BYTES). */
  streamStats(): StreamStats[] {
    return [...this.streams].map((s) => s.stats());
  }

  /** Serve `model` from now on and push what changed to every stream. Returns the changes (empty: nothing did). */
  setModel(model: Model): Changes {
    const started = performance.now();
    this.nodeIdentities = identitiesByNode(model);
    const changes = this.current.apply(model);
    return this.pushed(withMesh(changes, this.mesh.apply(model)), started);
  }

  /**
   * Replace or add `changed` services and drop the services named in `removed`, keeping every other service as it
   * is: for a source that knows what it changed (the same result as setModel with the model so edited).
   */
  updateServices(changed: Service[], removed: string[]): Changes {
    const started = performance.now();
    const changes = this.current.applyServices(changed, removed);
    return this.pushed(withMesh(changes, this.mesh.applyServices(changed, removed)), started);
  }

  private pushed(changes: Changes, started: number): Changes {
    if (changes.size === 0) return changes;
    const snapshot = this.current;
    const built = performance.now() - started;
    for (const s of this.streams) {
      try {
        s.push(snapshot, changes);
      } catch (e) {
        this.log.error({ err: e }, 'push to a stream failed');
      }
    }
    if (this.log.isLevelEnabled('info')) {
      this.log.info(
        {
          snapshot: snapshot.serial,
          versions: Object.fromEntries([...snapshot.types].map(([url, t]) => [shortType(url), t.version])),
          changed: Object.fromEntries([...changes].map(([url, names]) => [shortType(url), names.size])),
          streams: this.streams.size,
          buildMs: Math.round(built),
          pushMs: Math.round(performance.now() - started - built),
        },
        'snapshot updated',
      );
    }
    return changes;
  }

  /** The handlers for grpc.Server#addService. */
  handlers(): grpc.UntypedServiceImplementation {
    const attach = (call: grpc.ServerDuplexStream<unknown, Buffer>, stream: XdsStream & { onRequest(r: Record<string, unknown>): void }) => {
      this.streams.add(stream);
      this.calls.add(call);
      const done = () => {
        this.streams.delete(stream);
        this.calls.delete(call);
        // a node's overlay lives while it has a stream (a reconnect rebuilds it from nodeModel)
        const node = stream.node;
        if (this.overlays.has(node) && ![...this.streams].some((s) => s.node === node)) this.overlays.delete(node);
      };
      call.on('data', (req: unknown) => {
        if (!req || typeof req !== 'object') return void this.log.warn('malformed request: not a message');
        try {
          stream.onRequest(req as Record<string, unknown>);
        } catch (e) {
          // A bug in handling one request must not take down the stream, let alone the server.
          this.log.error({ err: e }, 'request handling failed');
        }
      });
      call.on('end', () => {
        done();
        call.end();
      });
      call.on('error', (e) => {
        done();
        this.log.debug({ err: e.message }, 'stream error');
      });
      call.on('cancelled', done);
      call.on('close', done);
    };
    return {
      StreamAggregatedResources: (call: grpc.ServerDuplexStream<unknown, Buffer>) => attach(call, new SotwStream(call, this, ++this.streamIds)),
      DeltaAggregatedResources: (call: grpc.ServerDuplexStream<unknown, Buffer>) => attach(call, new DeltaStream(call, this, ++this.streamIds)),
    } as unknown as grpc.UntypedServiceImplementation;
  }

  /** End every open stream (clients see UNAVAILABLE and reconnect elsewhere or later). */
  endStreams(): void {
    for (const call of this.calls) call.end();
    this.calls.clear();
    this.streams.clear();
  }
}

export interface ServeOptions extends ControlPlaneOptions {
  /** host:port; port 0 picks a free one. Default 127.0.0.1:18000. */
  listen?: string;
  tls?: { cert: string; key: string };
  /** serve the CA's certificate-signing API too (ca-service.ts) */
  ca?: CaSetup;
}

export interface RunningControlPlane {
  readonly port: number;
  readonly controlPlane: ControlPlane;
  /** the CA's API, when served */
  readonly ca?: CaService;
  /** Serial number of the snapshot being served (moves with every change). */
  readonly snapshotVersion: number;
  setModel(model: Model): Changes;
  /** Replace or add these services and drop those named, keeping the rest (see ControlPlane#updateServices). */
  updateServices(changed: Service[], removed: string[]): Changes;
  /** Re-read the config directory now (only for startControlPlane). */
  reload(): void;
  close(): Promise<void>;
}

/** Serve `cp` over gRPC; `onClose` runs first when it is closed, `reload` is RunningControlPlane#reload. */
export async function serve(cp: ControlPlane, opts: ServeOptions, onClose: () => void | Promise<void>, reload: () => void): Promise<RunningControlPlane> {
  protoRoot(); // load the protos before the first client connects
  const server = new grpc.Server({
    // Full states of large fleets are several MiB; requests are small (the receive limit stays the default 4 MiB).
    'grpc.max_send_message_length': -1,
    // Dead or half-open agents are found and their streams (and what is buffered for them) dropped.
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
  });
  server.addService(adsServiceBufferResponses(), cp.handlers());
  const ca = opts.ca && new CaService({ ca: opts.ca.authority, tokens: opts.ca.tokens, kube: opts.ca.kube, identitiesOf: (n) => cp.identitiesOf(n), log: cp.log.child({ component: 'ca' }) });
  ca?.addTo(server);
  const creds = opts.tls
    ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: readFileSync(opts.tls.cert), private_key: readFileSync(opts.tls.key) }], false)
    : grpc.ServerCredentials.createInsecure();
  const listen = opts.listen ?? '127.0.0.1:18000';
  const port = await new Promise<number>((resolvePort, reject) =>
    server.bindAsync(listen, creds, (err, p) => (err ? reject(new Error(`cannot listen on ${listen}: ${err.message}`)) : resolvePort(p))),
  );
  cp.log.info({ listen, port, tls: !!opts.tls }, 'control plane listening');
  return {
    port,
    controlPlane: cp,
    ca,
    get snapshotVersion() {
      return cp.snapshot().serial;
    },
    setModel: (m) => cp.setModel(m),
    updateServices: (changed, removed) => cp.updateServices(changed, removed),
    reload,
    close: async () => {
      await onClose();
      cp.endStreams();
      // Streams are ended above; forceShutdown after a grace period covers clients that never half-close.
      await new Promise<void>((done) => {
        const timer = setTimeout(() => server.forceShutdown(), 2000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          done();
        });
      });
    },
  };
}

/** A control plane serving a model held in memory (benches, tests). */
export async function startControlPlaneFromModel(model: Model, opts: ServeOptions = {}): Promise<RunningControlPlane> {
  const cp = new ControlPlane(opts);
  cp.setModel(model);
  return serve(cp, opts, () => {}, () => {});
}

/**
 * A control plane serving a config directory, watched for changes. Throws ConfigError (every issue of every file)
 * when the directory does not load at start: there is no last good state to fall back on.
 */
export async function startControlPlane(opts: ServeOptions & { dir: string; debounceMs?: number }): Promise<RunningControlPlane> {
  const cp = new ControlPlane(opts);
  const { model, files } = loadConfigDir(opts.dir);
  if (files.length === 0) cp.log.warn({ dir: opts.dir }, 'no *.yaml, *.yml or *.json file in the config directory: serving nothing');
  cp.setModel(model);
  const watcher = new DirWatcher(
    opts.dir,
    {
      onModel: (m) => cp.setModel(m),
      onError: (err) => {
        if (err instanceof ConfigError) {
          for (const i of err.issues) cp.log.error({ file: i.file, field: i.path || '(root)', reason: i.message }, 'config change rejected; still serving the last good state');
        } else cp.log.error({ err: err.message }, 'config change rejected; still serving the last good state');
      },
    },
    opts.debounceMs,
  );
  watcher.start();
  try {
    return await serve(cp, opts, () => watcher.stop(), () => watcher.reload());
  } catch (e) {
    watcher.stop();
    throw e;
  }
}

/** The Envoy resources' changes with the mesh resources' (other type URLs: no copy when the mesh did not change). */
function withMesh(envoy: Changes, mesh: Changes): Changes {
  if (mesh.size === 0) return envoy;
  for (const [url, names] of mesh) envoy.set(url, names);
  return envoy;
}

/** The union of two change sets. */
function mergeChanges(a: Changes, b: Changes): Changes {
  if (a.size === 0) return b;
  const out: Changes = new Map([...a].map(([url, names]) => [url, new Set(names)]));
  for (const [url, names] of b) {
    const set = out.get(url);
    if (set) for (const n of names) set.add(n);
    else out.set(url, names);
  }
  return out;
}
