// An API-compatible stand-in for kube-apiserver, for tests, the kubernetes bench and people pointing kubectl at it
// (`node dist/lab/kubeapi.js --port N`, `npm run lab -- kubeapi`). No kube-apiserver can be installed on these machines
// (no Debian or npm package ships one), so this is what sockmesh's Kubernetes client is tested against; its fidelity
// is proven in the suite with independent clients (kubectl, python3-kubernetes: test/unit/kubeapi-fidelity.test.ts).
// It lives in lab/ rather than test/lib/ because the bench runs from the compiled tree (dist/lab/), as the pods lab does.
//
// What it implements, as the real server does (the wire shapes are the API server's):
// - discovery: /version, /api, /apis, /api/v1, /apis/<group>/<version> (legacy, unaggregated: clients that ask for
//   aggregated discovery get plain JSON and fall back, as they do against a 1.25 server); OpenAPI v3 as far as kubectl
//   reads it, and an OpenAPI v2 document without definitions (kubectl before 1.27, e.g. Debian 12's 1.20, reads it);
// - core v1 services, pods, namespaces, nodes; discovery.k8s.io/v1 endpointslices; gateway.networking.k8s.io/v1
//   httproutes and security.istio.io/v1 authorizationpolicies (served as a CRD would be: its own group in discovery,
//   merge-patch from kubectl);
// - list with resourceVersion, limit/continue (the API server's continue token; 410 Expired once the history the
//   token's resourceVersion needs is compacted), fieldSelector (metadata.name, metadata.namespace, spec.nodeName for
//   pods) and labelSelector (=, ==, !=, in, notin, exists, !exists);
// - watch (?watch=1): chunked JSON lines, from a resourceVersion (replayed from a bounded event history) or from "now"
//   with synthetic ADDED events (no resourceVersion, "0", sendInitialEvents=true), BOOKMARKs when allowed,
//   timeoutSeconds, and an ERROR event with code 410 when the resourceVersion is older than the history; an object
//   that leaves (enters) a selector on update is DELETED (ADDED) for that watcher, as the watch cache does;
// - create, update (with the resourceVersion precondition: 409 Conflict), patch (merge-patch, strategic-merge-patch
//   enough for `kubectl apply`'s client-side patches, apply-patch for `kubectl apply --server-side`), delete, the status
//   subresource (spec is ignored on /status, status is ignored on the main resource), dryRun=All; uid,
//   resourceVersion, generation (bumped when anything outside metadata and status changes) and creationTimestamp;
//   a namespaced object needs its namespace, and deleting a namespace deletes what is in it;
// - bearer-token auth, and over HTTPS (a CA, server and client certificate generated with openssl) client
//   certificates.
// - authentication.k8s.io/v1 TokenReview of the service-account tokens a test mints (api.tokens, lab/tokenreview.ts):
//   bound to a pod, with audiences, as the kubelet's projected token volume holds them.
// Deliberate differences: continued list pages are served from the current state (the real server serves the
// snapshot at the token's resourceVersion), server-side apply merges the applied configuration without field
// ownership (a field dropped from the manifest is not removed), no admission, no validation beyond names, no
// protobuf, no Table output (kubectl prints NAME and AGE for get without -o).
//
// Test hooks: dropWatches() (connections cut), failNextWatch() (410 on the next watch), unreachable()/reachable()
// (stop listening and come back on the same port), compact() (drop the event history), bookmark() (one now),
// requests (counted per verb: the bench reports the load), load() (bulk, bypassing HTTP, for 10k services / 100k
// endpoints). A list of 10,000 objects is served in well under a second (kubeapi-fidelity.test.ts measures it): objects
// are immutable once stored, so each one's JSON is made once and reused by every list and every watcher.
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { pathToFileURL } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { ServiceAccountTokens } from './tokenreview.js';

/* eslint-disable @typescript-eslint/no-explicit-any */
type Obj = Record<string, any>;

export interface ResourceDef {
  group: string;
  version: string;
  plural: string;
  singular: string;
  kind: string;
  namespaced: boolean;
  shortNames: string[];
  /** a status subresource: status is dropped on create and ignored on the main resource's update */
  status: boolean;
  /** field selectors this resource supports beyond metadata.name / metadata.namespace */
  fields: string[];
  /** a resource that is not stored but answered (tokenreviews): only these verbs */
  verbs?: string[];
}

export const KUBEAPI_RESOURCES: readonly ResourceDef[] = [
  { group: '', version: 'v1', plural: 'namespaces', singular: 'namespace', kind: 'Namespace', namespaced: false, shortNames: ['ns'], status: true, fields: ['status.phase'] },
  { group: '', version: 'v1', plural: 'nodes', singular: 'node', kind: 'Node', namespaced: false, shortNames: ['no'], status: true, fields: ['spec.unschedulable'] },
  { group: '', version: 'v1', plural: 'pods', singular: 'pod', kind: 'Pod', namespaced: true, shortNames: ['po'], status: true, fields: ['spec.nodeName', 'spec.serviceAccountName', 'status.phase', 'status.podIP'] },
  { group: '', version: 'v1', plural: 'services', singular: 'service', kind: 'Service', namespaced: true, shortNames: ['svc'], status: true, fields: ['spec.clusterIP', 'spec.type'] },
  { group: 'discovery.k8s.io', version: 'v1', plural: 'endpointslices', singular: 'endpointslice', kind: 'EndpointSlice', namespaced: true, shortNames: [], status: false, fields: ['addressType'] },
  { group: 'gateway.networking.k8s.io', version: 'v1', plural: 'httproutes', singular: 'httproute', kind: 'HTTPRoute', namespaced: true, shortNames: [], status: true, fields: [] },
  // Istio's CRD (v1 as its preferred version; kubectl's short name ap)
  { group: 'security.istio.io', version: 'v1', plural: 'authorizationpolicies', singular: 'authorizationpolicy', kind: 'AuthorizationPolicy', namespaced: true, shortNames: ['ap'], status: true, fields: [] },
  // answered by lab/tokenreview.ts (service-account tokens minted with api.tokens.mint()), never stored
  { group: 'authentication.k8s.io', version: 'v1', plural: 'tokenreviews', singular: 'tokenreview', kind: 'TokenReview', namespaced: false, shortNames: [], status: false, fields: [], verbs: ['create'] },
];

/** groups served as CustomResourceDefinitions are (no strategic merge patch) */
const CRD_GROUPS = ['gateway.networking.k8s.io', 'security.istio.io'];
const DEFAULT_NAMESPACES = ['default', 'kube-system', 'kube-public', 'kube-node-lease'];
const MAX_BODY = 16 << 20;

export interface KubeApiOptions {
  host?: string;
  port?: number;
  /** require `Authorization: Bearer <token>` (or, over TLS, the generated client certificate) */
  token?: string;
  /** serve HTTPS with a generated CA, server and client certificate (needs openssl) */
  tls?: boolean;
  /** watch events kept per resource for watches from a resourceVersion (older ones get 410) */
  historyLimit?: number;
  /** how often a watch that allows bookmarks gets one (the real server: about a minute) */
  bookmarkIntervalMs?: number;
  /** a watch without timeoutSeconds ends after this (the real server: 30-60 min) */
  watchTimeoutSeconds?: number;
}

export type Verb = 'discovery' | 'get' | 'list' | 'watch' | 'create' | 'update' | 'patch' | 'delete';

export class KubeApiError extends Error {
  constructor(readonly code: number, readonly reason: string, message: string, readonly details?: Obj) {
    super(message);
  }
  status(): Obj {
    return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: this.message, reason: this.reason, ...(this.details ? { details: this.details } : {}), code: this.code };
  }
}

const notFound = (def: ResourceDef, name: string) =>
  new KubeApiError(404, 'NotFound', `${qualified(def)} "${name}" not found`, { name, group: def.group || undefined, kind: def.plural });
const badRequest = (message: string) => new KubeApiError(400, 'BadRequest', message);
const qualified = (def: ResourceDef) => (def.group ? `${def.plural}.${def.group}` : def.plural);

// ---------------------------------------------------------------------------------------------- selectors

type LabelReq = { key: string; op: 'in' | 'notin' | 'exists' | '!exists'; values: string[] };
type FieldReq = { field: string; value: string; negate: boolean };
interface Selector { labels: LabelReq[]; fields: FieldReq[] }

/** Parses a labelSelector the way the API server's labels.Parse does (the subset clients send). */
export function parseLabelSelector(text: string): LabelReq[] {
  const out: LabelReq[] = [];
  let i = 0;
  const s = text;
  const skip = () => { while (s[i] === ' ') i++; };
  const key = () => {
    skip();
    const m = /^[A-Za-z0-9][-A-Za-z0-9_./]*/.exec(s.slice(i));
    if (!m) throw badRequest(`unable to parse requirement: labelSelector "${text}": a label key expected at position ${i}`);
    i += m[0].length;
    return m[0];
  };
  const value = () => {
    skip();
    const m = /^[A-Za-z0-9_.-]*/.exec(s.slice(i))!;
    i += m[0].length;
    return m[0];
  };
  while (true) {
    skip();
    if (i >= s.length) break;
    if (s[i] === '!') {
      i++;
      out.push({ key: key(), op: '!exists', values: [] });
    } else {
      const k = key();
      skip();
      if (s.startsWith('!=', i)) { i += 2; out.push({ key: k, op: 'notin', values: [value()] }); }
      else if (s.startsWith('==', i)) { i += 2; out.push({ key: k, op: 'in', values: [value()] }); }
      else if (s[i] === '=') { i += 1; out.push({ key: k, op: 'in', values: [value()] }); }
      else if (/^(in|notin)\s*\(/.test(s.slice(i))) {
        const op = s.startsWith('in', i) ? 'in' : 'notin';
        i = s.indexOf('(', i) + 1;
        const close = s.indexOf(')', i);
        if (close < 0) throw badRequest(`unable to parse requirement: labelSelector "${text}": ")" missing`);
        out.push({ key: k, op, values: s.slice(i, close).split(',').map((v) => v.trim()) });
        i = close + 1;
      } else out.push({ key: k, op: 'exists', values: [] });
    }
    skip();
    if (i < s.length) {
      if (s[i] !== ',') throw badRequest(`unable to parse requirement: labelSelector "${text}": unexpected "${s[i]}" at position ${i}`);
      i++;
    }
  }
  return out;
}

function parseFieldSelector(text: string, def: ResourceDef): FieldReq[] {
  const out: FieldReq[] = [];
  for (const part of text.split(',')) {
    if (part.trim() === '') continue;
    const m = /^\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*$/.exec(part);
    if (!m) throw badRequest(`invalid selector: '${text}'; can't understand '${part}'`);
    const [, field, op, value] = m as unknown as [string, string, string, string];
    if (field !== 'metadata.name' && field !== 'metadata.namespace' && !def.fields.includes(field)) {
      throw badRequest(`field label not supported: ${field}`);
    }
    out.push({ field, value, negate: op === '!=' });
  }
  return out;
}

function fieldValue(o: Obj, path: string): string {
  let v: any = o;
  for (const p of path.split('.')) v = v?.[p];
  return v === undefined || v === null ? '' : String(v);
}

function matches(o: Obj, sel: Selector): boolean {
  for (const f of sel.fields) if ((fieldValue(o, f.field) === f.value) === f.negate) return false;
  const labels: Obj = o.metadata?.labels ?? {};
  for (const r of sel.labels) {
    const has = Object.prototype.hasOwnProperty.call(labels, r.key);
    if (r.op === 'exists' && !has) return false;
    if (r.op === '!exists' && has) return false;
    if (r.op === 'in' && !(has && r.values.includes(labels[r.key]))) return false;
    if (r.op === 'notin' && has && r.values.includes(labels[r.key])) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------- patches

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Equality of JSON values whatever their keys' order (undefined members count as absent). */
function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  if (!isObj(a) || !isObj(b)) return false;
  const ka = Object.keys(a).filter((k) => a[k] !== undefined);
  const kb = Object.keys(b).filter((k) => b[k] !== undefined);
  return ka.length === kb.length && ka.every((k) => deepEqual(a[k], b[k]));
}

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return patch;
  const out: Obj = isObj(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

// The merge keys of the built-in types' lists that kubectl patches element-wise (patchMergeKey in the Go types);
// every other list is atomic (replaced). `ports` is keyed by `port` in a Service and `containerPort` in a container.
const MERGE_KEYS: Record<string, string> = {
  containers: 'name', initContainers: 'name', ephemeralContainers: 'name', volumes: 'name', env: 'name',
  volumeMounts: 'mountPath', volumeDevices: 'devicePath', conditions: 'type', imagePullSecrets: 'name',
  hostAliases: 'ip', topologySpreadConstraints: 'topologyKey', addresses: 'type', ownerReferences: 'uid',
};
function mergeKeyOf(field: string, items: unknown[]): string | undefined {
  if (field === 'ports') return items.some((p) => isObj(p) && 'containerPort' in p) ? 'containerPort' : 'port';
  return MERGE_KEYS[field];
}

/** Strategic merge patch, enough for kubectl's client-side apply and edit: merge keys, $patch, $setElementOrder,
 *  $retainKeys, $deleteFromPrimitiveList. `apply` (server-side apply) never deletes: nulls are values there. */
export function strategicMerge(target: unknown, patch: unknown, apply = false): unknown {
  if (!isObj(patch)) return patch;
  if (patch.$patch === 'replace') { const { $patch: _, ...rest } = patch; return rest; }
  const out: Obj = isObj(target) ? { ...target } : {};
  const orders: [string, unknown[]][] = [];
  let retain: string[] | undefined;
  for (const [k, v] of Object.entries(patch)) {
    if (k === '$patch') continue;
    if (k === '$retainKeys') { retain = v as string[]; continue; }
    if (k.startsWith('$setElementOrder/')) { orders.push([k.slice('$setElementOrder/'.length), v as unknown[]]); continue; }
    if (k.startsWith('$deleteFromPrimitiveList/')) {
      const f = k.slice('$deleteFromPrimitiveList/'.length);
      if (Array.isArray(out[f])) out[f] = out[f].filter((x: unknown) => !(v as unknown[]).includes(x));
      continue;
    }
    if (v === null && !apply) { delete out[k]; continue; }
    if (isObj(v) && v.$patch === 'delete') { delete out[k]; continue; }
    const key = Array.isArray(v) ? mergeKeyOf(k, [...v, ...(Array.isArray(out[k]) ? out[k] : [])]) : undefined;
    if (Array.isArray(v) && key && Array.isArray(out[k])) {
      const list: Obj[] = [...out[k]];
      for (const item of v) {
        const at = isObj(item) ? list.findIndex((e) => isObj(e) && e[key] === item[key]) : -1;
        if (isObj(item) && item.$patch === 'delete') { if (at >= 0) list.splice(at, 1); }
        else if (at >= 0) list[at] = strategicMerge(list[at], item, apply) as Obj;
        else list.push(strategicMerge(undefined, item, apply) as Obj);
      }
      out[k] = list;
    } else if (Array.isArray(v) && !apply) out[k] = v.map((e) => strategicMerge(undefined, e));
    else if (isObj(v)) out[k] = strategicMerge(out[k], v, apply);
    else out[k] = v;
  }
  if (retain) for (const k of Object.keys(out)) if (!retain.includes(k) && !(k in patch)) delete out[k];
  for (const [field, order] of orders) {
    const list = out[field];
    if (!Array.isArray(list)) continue;
    const key = mergeKeyOf(field, list);
    const pos = (e: unknown) => order.findIndex((o) => (key && isObj(o) && isObj(e) ? o[key] === e[key] : o === e));
    out[field] = [...list].sort((a, b) => (pos(a) < 0 ? 1e9 : pos(a)) - (pos(b) < 0 ? 1e9 : pos(b)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- storage

interface HistoryEvent { rv: number; type: 'ADDED' | 'MODIFIED' | 'DELETED'; obj: Obj; prev?: Obj }

interface Watcher {
  res: ServerResponse;
  ns?: string;
  sel: Selector;
  bookmarks: boolean;
  timers: NodeJS.Timeout[];
}

class Collection {
  readonly objects = new Map<string, Obj>();
  private sorted?: string[];
  history: HistoryEvent[] = [];
  /** watches and continue tokens from a resourceVersion below this are too old (410) */
  compactedRv = 0;
  readonly watchers = new Set<Watcher>();
  /** the start of every item's JSON: "apiVersion" and "kind", which list items do not carry */
  readonly head: string;
  constructor(readonly def: ResourceDef) {
    this.head = `{"apiVersion":${JSON.stringify(apiVersionOf(def))},"kind":${JSON.stringify(def.kind)},`;
  }
  keys(): string[] {
    if (!this.sorted) this.sorted = [...this.objects.keys()].sort();
    return this.sorted;
  }
  set(key: string, o: Obj): void {
    if (!this.objects.has(key)) this.sorted = undefined;
    this.objects.set(key, o);
  }
  delete(key: string): void {
    this.objects.delete(key);
    this.sorted = undefined;
  }
  record(ev: HistoryEvent, limit: number): void {
    this.history.push(ev);
    // Trimmed in halves, so that a bulk load of 100k objects costs one splice per `limit` events, not one each.
    if (this.history.length > 2 * limit) {
      const drop = this.history.length - limit;
      this.compactedRv = this.history[drop - 1]!.rv;
      this.history = this.history.slice(drop);
    }
  }
}

const apiVersionOf = (def: ResourceDef) => (def.group ? `${def.group}/${def.version}` : def.version);
const keyOf = (ns: string | undefined, name: string) => (ns ? `${ns}/${name}` : name);
const itemJson = new WeakMap<Obj, string>();
function json(o: Obj): string {
  let s = itemJson.get(o);
  if (s === undefined) {
    s = JSON.stringify(o);
    itemJson.set(o, s);
  }
  return s;
}
/** An object as get/watch return it: with apiVersion and kind (stored objects carry neither). */
const withKind = (c: Collection, o: Obj) => c.head + json(o).slice(1);
const now = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z');

interface ContinueToken { v: string; rv: number; start: string }
function encodeContinue(rv: number, lastKey: string): string {
  return Buffer.from(JSON.stringify({ v: 'meta.k8s.io/v1', rv, start: `${lastKey}\u0000` })).toString('base64url');
}
function decodeContinue(token: string): ContinueToken {
  try {
    const t = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as ContinueToken;
    if (t.v !== 'meta.k8s.io/v1' || typeof t.rv !== 'number' || typeof t.start !== 'string') throw new Error();
    return t;
  } catch {
    throw badRequest('continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)');
  }
}

// ---------------------------------------------------------------------------------------------- the server

export interface KubeApiTls { ca: string; cert: string; key: string; clientCert: string; clientKey: string }

export class KubeApi {
  private readonly server: Server;
  private readonly collections = new Map<string, Collection>(); // "group/plural"
  private readonly sockets = new Set<Socket>();
  private rv = 1;
  private failWatches: { mode: 'event' | 'http'; count: number } = { mode: 'event', count: 0 };
  readonly requests: Record<Verb, number> & { total: number } = { total: 0, discovery: 0, get: 0, list: 0, watch: 0, create: 0, update: 0, patch: 0, delete: 0 };
  /** service-account tokens: mint() one bound to a pod, as the kubelet's projected volume holds; TokenReview checks them */
  readonly tokens = new ServiceAccountTokens((ns, name) => this.get('pods', ns, name));
  /** test hook: called before each list page is served (e.g. to compact the history between pages) */
  beforeList?: (query: URLSearchParams) => void;
  port = 0;
  readonly host: string;
  private readonly historyLimit: number;
  private readonly bookmarkMs: number;
  private readonly watchTimeout: number;

  private constructor(private readonly opts: KubeApiOptions, readonly tls?: KubeApiTls) {
    this.host = opts.host ?? '127.0.0.1';
    this.historyLimit = opts.historyLimit ?? 10_000;
    this.bookmarkMs = opts.bookmarkIntervalMs ?? 5_000;
    this.watchTimeout = opts.watchTimeoutSeconds ?? 1800;
    for (const def of KUBEAPI_RESOURCES) this.collections.set(`${def.group}/${def.plural}`, new Collection(def));
    const handler = (req: IncomingMessage, res: ServerResponse) => this.handle(req, res);
    this.server = tls
      ? createHttpsServer({ key: tls.key, cert: tls.cert, ca: tls.ca, requestCert: true, rejectUnauthorized: false }, handler)
      : createHttpServer(handler);
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    for (const ns of DEFAULT_NAMESPACES) this.store('namespaces', { metadata: { name: ns }, spec: { finalizers: ['kubernetes'] }, status: { phase: 'Active' } }, false);
  }

  static async start(opts: KubeApiOptions = {}): Promise<KubeApi> {
    const api = new KubeApi(opts, opts.tls ? generateTls() : undefined);
    await api.listen(opts.port ?? 0);
    return api;
  }

  get url(): string {
    return `${this.tls ? 'https' : 'http'}://${this.host}:${this.port}`;
  }
  get resourceVersion(): string {
    return String(this.rv);
  }

  private listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, this.host, () => {
        this.server.off('error', reject);
        this.port = (this.server.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    await this.unreachable();
  }

  /** Stops listening and cuts every connection: clients see ECONNREFUSED until reachable(). */
  unreachable(): Promise<void> {
    for (const c of this.collections.values()) for (const w of c.watchers) this.endWatch(c, w, false);
    const closed = new Promise<void>((resolve) => (this.server.listening ? this.server.close(() => resolve()) : resolve()));
    for (const s of this.sockets) s.destroy();
    return closed;
  }

  /** Listens again on the same port. */
  reachable(): Promise<void> {
    return this.listen(this.port);
  }

  /** Cuts every watch connection (as a load balancer or an API server restart does). */
  dropWatches(): void {
    for (const c of this.collections.values()) for (const w of c.watchers) this.endWatch(c, w, false);
  }

  /** The next `count` watches fail at once with 410: an ERROR event in a 200 stream (what the real server does for
   *  a too-old resourceVersion) or, with 'http', a 410 response. */
  failNextWatch(mode: 'event' | 'http' = 'event', count = 1): void {
    this.failWatches = { mode, count };
  }

  /** Drops the event history (of one resource, or all): watches and continue tokens from before now get 410. */
  compact(resource?: string): void {
    for (const c of this.collections.values()) {
      if (resource && c.def.plural !== resource) continue;
      c.history = [];
      c.compactedRv = this.rv;
    }
  }

  /** Sends a BOOKMARK now to every watch that allows them. */
  bookmark(): void {
    for (const c of this.collections.values()) for (const w of c.watchers) this.sendBookmark(c, w);
  }

  /** Open watches (of one resource, or all). */
  watchCount(resource?: string): number {
    let n = 0;
    for (const c of this.collections.values()) if (!resource || c.def.plural === resource) n += c.watchers.size;
    return n;
  }

  private collection(resource: string): Collection {
    for (const c of this.collections.values()) if (c.def.plural === resource) return c;
    throw new Error(`kubeapi: no resource "${resource}" (have ${KUBEAPI_RESOURCES.map((d) => d.plural).join(', ')})`);
  }

  // ----- programmatic access (tests and the bench; the same bookkeeping and watch events as over HTTP)

  /** Bulk load without HTTP: each object is created, or replaced if it exists, as one event each. Namespaces the
   *  objects are in are created. Objects are taken over (not copied): do not change them afterwards. */
  load(resource: string, objects: Obj[]): void {
    const c = this.collection(resource);
    for (const o of objects) {
      const ns = c.def.namespaced ? (o.metadata.namespace ??= 'default') : undefined;
      if (ns && !this.collection('namespaces').objects.has(ns)) this.store('namespaces', { metadata: { name: ns }, status: { phase: 'Active' } }, false);
      this.store(resource, o, false);
    }
  }

  /** Creates or updates one object (status included), as load() does. Returns the stored object. */
  put(resource: string, object: Obj): Obj {
    this.load(resource, [object]);
    const c = this.collection(resource);
    return c.objects.get(keyOf(object.metadata.namespace, object.metadata.name))!;
  }

  get(resource: string, namespace: string | undefined, name: string): Obj | undefined {
    return this.collection(resource).objects.get(keyOf(namespace, name));
  }

  list(resource: string): Obj[] {
    const c = this.collection(resource);
    return c.keys().map((k) => c.objects.get(k)!);
  }

  remove(resource: string, namespace: string | undefined, name: string): boolean {
    const c = this.collection(resource);
    const key = keyOf(c.def.namespaced ? namespace ?? 'default' : undefined, name);
    if (!c.objects.has(key)) return false;
    this.deleteKey(c, key);
    return true;
  }

  /** Stores an object: bookkeeping (uid, resourceVersion, generation, creationTimestamp), history, watchers.
   *  `keepStatus` false: the status subresource's rule (status is not taken from a create or a main update). */
  private store(resource: string, input: Obj, fromClient: boolean, subresource?: string, dryRun = false): { obj: Obj; created: boolean } {
    const c = this.collection(resource);
    const md = input.metadata;
    const key = keyOf(c.def.namespaced ? md.namespace : undefined, md.name);
    const prev = c.objects.get(key);
    const { apiVersion: _a, kind: _k, ...body } = input;
    let next: Obj = { ...body, metadata: { ...md } };
    if (!c.def.namespaced) delete next.metadata.namespace;
    if (prev) {
      if (fromClient && subresource === 'status') next = { ...prev, status: body.status, metadata: { ...prev.metadata } };
      else if (fromClient && c.def.status) {
        if (prev.status === undefined) delete next.status;
        else next.status = prev.status;
      }
      for (const f of ['uid', 'creationTimestamp', 'generation']) next.metadata[f] = prev.metadata[f];
      delete next.metadata.resourceVersion;
      const { resourceVersion: _r, ...pmeta } = prev.metadata;
      // A no-op update changes nothing, not even the resourceVersion, and sends no event (as the real server does).
      if (deepEqual({ ...next, metadata: next.metadata }, { ...prev, metadata: pmeta })) return { obj: prev, created: false };
      const spec = (o: Obj) => ({ ...o, metadata: undefined, status: undefined });
      if (!deepEqual(spec(next), spec(prev))) next.metadata.generation = (prev.metadata.generation ?? 1) + 1;
    } else {
      if (fromClient && c.def.status) delete next.status;
      next.metadata.uid ??= randomUUID();
      next.metadata.creationTimestamp ??= now();
      next.metadata.generation = 1;
      delete next.metadata.resourceVersion;
    }
    if (c.def.plural === 'services') this.allocateClusterIP(next, prev);
    if (dryRun) return { obj: { ...next, metadata: { ...next.metadata, resourceVersion: String(this.rv) } }, created: !prev };
    const rv = ++this.rv;
    next.metadata.resourceVersion = String(rv);
    c.set(key, next);
    this.emit(c, { rv, type: prev ? 'MODIFIED' : 'ADDED', obj: next, prev });
    return { obj: next, created: !prev };
  }

  private nextClusterIP = 1;
  /** A Service gets a ClusterIP from 10.96.0.0/12 on create, as the real allocator does (not a headless or an
   *  ExternalName one), and keeps it when an update leaves it out. */
  private allocateClusterIP(next: Obj, prev: Obj | undefined): void {
    const spec: Obj = (next.spec = { ...(next.spec ?? {}) });
    if (prev?.spec?.clusterIP && spec.clusterIP === undefined) {
      spec.clusterIP = prev.spec.clusterIP;
      spec.clusterIPs ??= prev.spec.clusterIPs;
    }
    if (spec.type === 'ExternalName' || spec.clusterIP !== undefined) {
      if (spec.clusterIP !== undefined) spec.clusterIPs ??= [spec.clusterIP];
      return;
    }
    const n = this.nextClusterIP++;
    spec.clusterIP = `10.96.${(n >> 8) & 255}.${n & 255}`;
    spec.clusterIPs = [spec.clusterIP];
    spec.type ??= 'ClusterIP';
  }

  private deleteKey(c: Collection, key: string): Obj {
    const prev = c.objects.get(key)!;
    const rv = ++this.rv;
    const gone = { ...prev, metadata: { ...prev.metadata, resourceVersion: String(rv) } };
    c.delete(key);
    this.emit(c, { rv, type: 'DELETED', obj: gone, prev });
    if (c.def.plural === 'namespaces') {
      for (const other of this.collections.values()) {
        if (!other.def.namespaced) continue;
        for (const k of other.keys()) if (k.startsWith(`${prev.metadata.name}/`)) this.deleteKey(other, k);
      }
    }
    return gone;
  }

  private emit(c: Collection, ev: HistoryEvent): void {
    c.record(ev, this.historyLimit);
    for (const w of c.watchers) this.deliver(c, w, ev);
  }

  private deliver(c: Collection, w: Watcher, ev: HistoryEvent): void {
    const ns = ev.obj.metadata.namespace;
    if (w.ns && ns !== w.ns) return;
    const now = matches(ev.obj, w.sel);
    const before = ev.prev !== undefined && ev.type !== 'ADDED' && matches(ev.prev, w.sel);
    let type: string | undefined;
    if (ev.type === 'DELETED') type = before ? 'DELETED' : undefined;
    else if (now && before) type = 'MODIFIED';
    else if (now) type = 'ADDED';
    else if (before) type = 'DELETED';
    if (type) w.res.write(`{"type":"${type}","object":${withKind(c, ev.obj)}}\n`);
  }

  private sendBookmark(c: Collection, w: Watcher, annotations?: Obj): void {
    if (!w.bookmarks) return;
    const md: Obj = { resourceVersion: String(this.rv), ...(annotations ? { annotations } : {}) };
    w.res.write(`{"type":"BOOKMARK","object":${c.head}"metadata":${JSON.stringify(md)}}}\n`);
  }

  private endWatch(c: Collection, w: Watcher, clean: boolean): void {
    if (!c.watchers.delete(w)) return;
    for (const t of w.timers) clearTimeout(t);
    if (clean) w.res.end();
    else w.res.destroy();
  }

  // ----- HTTP

  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.requests.total++;
    this.route(req, res).catch((e: unknown) => {
      const err = e instanceof KubeApiError ? e : new KubeApiError(500, 'InternalError', `Internal error occurred: ${(e as Error).message}`);
      if (res.headersSent) { res.destroy(); return; }
      send(res, err.code, err.status());
    });
  }

  private authorized(req: IncomingMessage): boolean {
    if (this.opts.token === undefined) return true;
    if (req.headers.authorization === `Bearer ${this.opts.token}`) return true;
    return this.tls !== undefined && (req.socket as TLSSocket).authorized === true;
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.authorized(req)) throw new KubeApiError(401, 'Unauthorized', 'Unauthorized');
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const q = url.searchParams;
    if (path === '/openapi/v2' && req.method === 'GET') {
      this.requests.discovery++;
      this.openapiV2(req, res);
      return;
    }
    const discovery = this.discovery(path);
    if (discovery !== undefined) {
      if (req.method !== 'GET') throw new KubeApiError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`);
      this.requests.discovery++;
      if (typeof discovery === 'string') { res.writeHead(200, { 'Content-Type': 'text/plain' }).end(discovery); return; }
      send(res, 200, discovery);
      return;
    }
    const r = this.resolve(path);
    if (!r) throw new KubeApiError(404, 'NotFound', 'the server could not find the requested resource');
    const { c, ns, name, sub } = r;
    const method = req.method ?? 'GET';
    if (c.def.plural === 'tokenreviews') {
      if (method !== 'POST' || name !== undefined) throw new KubeApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
      this.requests.create++;
      send(res, 201, this.tokens.review(await readObject(req)));
      return;
    }
    const dryRun = q.getAll('dryRun').includes('All');
    if (method === 'GET' && name === undefined) {
      if (queryBool(q, 'watch')) { this.requests.watch++; this.watch(c, ns, q, req, res); return; }
      this.requests.list++;
      this.beforeList?.(q);
      sendRaw(res, 200, this.listJson(c, ns, q));
      return;
    }
    if (method === 'POST' && name === undefined && sub === undefined) {
      this.requests.create++;
      const body = await readObject(req);
      const md = (body.metadata ??= {});
      if (!md.name && md.generateName) md.name = `${md.generateName}${randomBytes(3).toString('hex').slice(0, 5)}`;
      this.checkBody(c, body, ns, undefined);
      if (c.objects.has(keyOf(ns, md.name))) {
        throw new KubeApiError(409, 'AlreadyExists', `${qualified(c.def)} "${md.name}" already exists`, { name: md.name, group: c.def.group || undefined, kind: c.def.plural });
      }
      const { obj } = this.store(c.def.plural, body, true, undefined, dryRun);
      sendRaw(res, 201, withKind(c, obj));
      return;
    }
    if (name === undefined) throw new KubeApiError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`);
    const key = keyOf(ns, name);
    const current = c.objects.get(key);
    if (method === 'GET') {
      this.requests.get++;
      if (!current) throw notFound(c.def, name);
      sendRaw(res, 200, withKind(c, current));
      return;
    }
    if (method === 'DELETE') {
      this.requests.delete++;
      if (!current) throw notFound(c.def, name);
      sendRaw(res, 200, withKind(c, dryRun ? current : this.deleteKey(c, key)));
      return;
    }
    if (method === 'PUT') {
      this.requests.update++;
      const body = await readObject(req);
      this.checkBody(c, body, ns, name);
      if (!current) throw notFound(c.def, name);
      this.precondition(c, current, body);
      const { obj } = this.store(c.def.plural, body, true, sub, dryRun);
      sendRaw(res, 200, withKind(c, obj));
      return;
    }
    if (method === 'PATCH') {
      this.requests.patch++;
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
      const PATCHES = ['application/merge-patch+json', 'application/json', 'application/strategic-merge-patch+json', 'application/apply-patch+yaml'];
      if (!PATCHES.includes(type)) throw new KubeApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${PATCHES.join(', ')} (not json-patch in the stand-in)`);
      const text = await readBody(req);
      let patch: unknown;
      try {
        patch = type === 'application/apply-patch+yaml' ? parseYaml(text) : JSON.parse(text);
      } catch (e) {
        throw badRequest(`error decoding patch: ${(e as Error).message}`);
      }
      if (!isObj(patch)) throw badRequest('the patch is not a JSON object');
      let merged: Obj;
      if (type === 'application/merge-patch+json' || type === 'application/json') merged = mergePatch(current ?? {}, patch) as Obj;
      else if (type === 'application/strategic-merge-patch+json') {
        if (CRD_GROUPS.includes(c.def.group)) throw new KubeApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml`);
        merged = strategicMerge(current ?? {}, patch) as Obj;
      } else if (type === 'application/apply-patch+yaml') {
        if (!current) {
          this.checkBody(c, patch, ns, name);
          const { obj } = this.store(c.def.plural, patch, true, undefined, dryRun);
          sendRaw(res, 201, withKind(c, obj));
          return;
        }
        merged = strategicMerge(current, patch, true) as Obj;
      } else throw new Error(`patch type ${type}`); // unreachable: PATCHES is checked above
      if (!current) throw notFound(c.def, name);
      this.checkBody(c, merged, ns, name);
      this.precondition(c, current, patch);
      const { obj } = this.store(c.def.plural, merged, true, sub, dryRun);
      sendRaw(res, 200, withKind(c, obj));
      return;
    }
    throw new KubeApiError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`);
  }

  private precondition(c: Collection, current: Obj, body: Obj): void {
    const want = body.metadata?.resourceVersion;
    if (want !== undefined && want !== '' && want !== current.metadata.resourceVersion) {
      throw new KubeApiError(409, 'Conflict', `Operation cannot be fulfilled on ${qualified(c.def)} "${current.metadata.name}": the object has been modified; please apply your changes to the latest version and try again`, { name: current.metadata.name, group: c.def.group || undefined, kind: c.def.plural });
    }
  }

  private checkBody(c: Collection, body: Obj, ns: string | undefined, name: string | undefined): void {
    const md = body.metadata;
    if (!isObj(md)) throw new KubeApiError(422, 'Invalid', `${c.def.kind} is invalid: metadata: Required value`);
    if (typeof md.name !== 'string' || !/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(md.name)) {
      throw new KubeApiError(422, 'Invalid', `${c.def.kind} "${md.name ?? ''}" is invalid: metadata.name: Invalid value: ${JSON.stringify(md.name ?? '')}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'`);
    }
    if (name !== undefined && md.name !== name) throw badRequest(`the name of the object (${md.name}) does not match the name on the URL (${name})`);
    if (c.def.namespaced) {
      if (!ns) throw new KubeApiError(404, 'NotFound', 'the server could not find the requested resource');
      if (md.namespace !== undefined && md.namespace !== ns) throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
      md.namespace = ns;
      if (!this.collection('namespaces').objects.has(ns)) throw notFound(this.collection('namespaces').def, ns);
    }
  }

  /**
   * OpenAPI v2, which kubectl before 1.27 reads (in protobuf) to validate manifests and to build apply's patches: a
   * document with no definitions. kubectl then finds no schema for any kind, validates nothing client-side and
   * computes patches from its compiled-in types (as for a CRD without a schema); the stand-in validates nothing either.
   * An empty OpenAPI Document message is zero bytes in protobuf, so the protobuf answer is an empty body.
   */
  private openapiV2(req: IncomingMessage, res: ServerResponse): void {
    if ((req.headers.accept ?? '').includes('protobuf')) {
      res.writeHead(200, { 'Content-Type': 'application/com.github.proto-openapi.spec.v2.v1.0+protobuf', 'Content-Length': 0 }).end();
      return;
    }
    send(res, 200, { swagger: '2.0', info: { title: 'Kubernetes', version: 'v1.32.0' }, paths: {}, definitions: {} });
  }

  /** discovery documents, or undefined when the path is not one */
  private discovery(path: string): Obj | string | undefined {
    if (path === '/healthz' || path === '/livez' || path === '/readyz') return 'ok';
    if (path === '/version') {
      return { major: '1', minor: '32', gitVersion: 'v1.32.0-sockmesh-kubeapi', gitCommit: '0000000000000000000000000000000000000000', gitTreeState: 'clean', buildDate: '2026-01-01T00:00:00Z', goVersion: 'go1.23', compiler: 'gc', platform: 'linux/amd64' };
    }
    // OpenAPI v3, only as much as kubectl reads to learn that the server validates fields itself (fieldValidation on
    // each kind's operations): it then sends fieldValidation=Strict instead of validating against schemas client-side.
    // The stand-in accepts the parameter and validates nothing.
    if (path === '/openapi/v3') {
      const paths: Obj = {};
      for (const d of KUBEAPI_RESOURCES) paths[`${d.group ? 'apis' : 'api'}/${apiVersionOf(d)}`] = { serverRelativeURL: `/openapi/v3/${d.group ? 'apis' : 'api'}/${apiVersionOf(d)}?hash=0` };
      return { paths };
    }
    const om = /^\/openapi\/v3\/(?:api\/(v1)|apis\/([^/]+)\/([^/]+))$/.exec(path);
    if (om) {
      const defs = KUBEAPI_RESOURCES.filter((d) => d.group === (om[2] ?? '') && d.version === (om[1] ?? om[3]));
      if (defs.length === 0) return undefined;
      const paths: Obj = {};
      for (const d of defs) {
        const gvk = { group: d.group, version: d.version, kind: d.kind };
        const op = (action: string) => ({ 'x-kubernetes-action': action, 'x-kubernetes-group-version-kind': gvk, parameters: [{ name: 'fieldValidation', in: 'query', schema: { type: 'string' } }, { name: 'dryRun', in: 'query', schema: { type: 'string' } }, { name: 'fieldManager', in: 'query', schema: { type: 'string' } }], responses: {} });
        const base = `/${d.group ? 'apis' : 'api'}/${apiVersionOf(d)}${d.namespaced ? '/namespaces/{namespace}' : ''}/${d.plural}`;
        paths[base] = { post: op('post') };
        paths[`${base}/{name}`] = { put: op('put'), patch: op('patch') };
      }
      return { openapi: '3.0.0', info: { title: 'Kubernetes', version: 'v1.32.0' }, paths, components: { schemas: {} } };
    }
    if (path === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: `${this.host}:${this.port}` }] };
    const groups = [...new Set(KUBEAPI_RESOURCES.filter((d) => d.group).map((d) => `${d.group}/${d.version}`))];
    if (path === '/apis') {
      return {
        kind: 'APIGroupList', apiVersion: 'v1',
        groups: groups.map((gv) => {
          const [name, version] = gv.split('/') as [string, string];
          return { name, versions: [{ groupVersion: gv, version }], preferredVersion: { groupVersion: gv, version } };
        }),
      };
    }
    const gm = /^\/apis\/([^/]+)$/.exec(path);
    if (gm) {
      const gv = groups.find((g) => g.startsWith(`${gm[1]}/`));
      if (!gv) return undefined;
      const version = gv.split('/')[1]!;
      return { kind: 'APIGroup', apiVersion: 'v1', name: gm[1], versions: [{ groupVersion: gv, version }], preferredVersion: { groupVersion: gv, version } };
    }
    const m = /^\/(?:api\/(v1)|apis\/([^/]+)\/([^/]+))$/.exec(path);
    if (!m) return undefined;
    const group = m[2] ?? '';
    const version = m[1] ?? m[3]!;
    const defs = KUBEAPI_RESOURCES.filter((d) => d.group === group && d.version === version);
    if (defs.length === 0) return undefined;
    const verbs = ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'];
    const resources: Obj[] = [];
    for (const d of defs) {
      resources.push({
        name: d.plural, singularName: d.singular, namespaced: d.namespaced, kind: d.kind, verbs: d.verbs ?? verbs,
        ...(d.shortNames.length ? { shortNames: d.shortNames } : {}),
        ...(d.group === 'gateway.networking.k8s.io' ? { categories: ['gateway-api'] } : d.group === 'security.istio.io' ? { categories: ['istio-io', 'security-istio-io'] } : {}),
      });
      if (d.status) resources.push({ name: `${d.plural}/status`, singularName: '', namespaced: d.namespaced, kind: d.kind, verbs: ['get', 'patch', 'update'] });
    }
    return { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: group ? `${group}/${version}` : version, resources };
  }

  private resolve(path: string): { c: Collection; ns?: string; name?: string; sub?: string } | undefined {
    const segs = path.split('/').filter(Boolean).map(decodeURIComponent);
    let group: string;
    let rest: string[];
    if (segs[0] === 'api' && segs[1] === 'v1') { group = ''; rest = segs.slice(2); }
    else if (segs[0] === 'apis' && segs.length >= 3) {
      group = segs[1]!;
      const def = KUBEAPI_RESOURCES.find((d) => d.group === group);
      if (!def || def.version !== segs[2]) return undefined;
      rest = segs.slice(3);
    } else return undefined;
    const find = (plural: string | undefined) => (plural === undefined ? undefined : this.collections.get(`${group}/${plural}`));
    let ns: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3 && find(rest[2])?.def.namespaced) {
      ns = rest[1];
      rest = rest.slice(2);
    }
    const c = find(rest[0]);
    if (!c || rest.length > 3) return undefined;
    if (rest[2] !== undefined && !(rest[2] === 'status' && c.def.status)) return undefined;
    if (c.def.namespaced && rest[1] !== undefined && ns === undefined) return undefined;
    return { c, ns, name: rest[1], sub: rest[2] };
  }

  private selector(c: Collection, q: URLSearchParams): Selector {
    return { labels: parseLabelSelector(q.get('labelSelector') ?? ''), fields: parseFieldSelector(q.get('fieldSelector') ?? '', c.def) };
  }

  private listJson(c: Collection, ns: string | undefined, q: URLSearchParams): string {
    const sel = this.selector(c, q);
    const limit = Number(q.get('limit') ?? 0);
    if (!Number.isInteger(limit) || limit < 0) throw badRequest(`limit: invalid value ${q.get('limit')}`);
    const token = q.get('continue');
    let listRv = this.rv;
    const keys = c.keys();
    let i = 0;
    if (token) {
      const t = decodeContinue(token);
      if (t.rv < c.compactedRv) {
        throw new KubeApiError(410, 'Expired', 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.');
      }
      listRv = t.rv;
      const start = t.start.replace(/\u0000$/, '');
      i = upperBound(keys, start);
    }
    const plain = sel.labels.length === 0 && sel.fields.length === 0;
    const items: string[] = [];
    let last: string | undefined;
    for (; i < keys.length; i++) {
      const k = keys[i]!;
      if (ns && !k.startsWith(`${ns}/`)) continue;
      const o = c.objects.get(k)!;
      if (!plain && !matches(o, sel)) continue;
      items.push(json(o));
      last = k;
      if (limit > 0 && items.length >= limit) { i++; break; }
    }
    // More to come only if a later key could still be in the list (the real server also says so at the end of a
    // namespace's range sometimes; clients just ask once more).
    const more = limit > 0 && last !== undefined && i < keys.length && (!ns || keys[i]!.startsWith(`${ns}/`));
    const meta: Obj = { resourceVersion: String(listRv) };
    if (more) {
      meta.continue = encodeContinue(listRv, last!);
      if (plain && !ns) meta.remainingItemCount = keys.length - i;
    }
    return `{"kind":"${c.def.kind}List","apiVersion":${JSON.stringify(apiVersionOf(c.def))},"metadata":${JSON.stringify(meta)},"items":[${items.join(',')}]}`;
  }

  private watch(c: Collection, ns: string | undefined, q: URLSearchParams, req: IncomingMessage, res: ServerResponse): void {
    const sel = this.selector(c, q);
    const rvParam = q.get('resourceVersion') ?? '';
    const sendInitial = queryBool(q, 'sendInitialEvents');
    const timeoutS = q.has('timeoutSeconds') ? Number(q.get('timeoutSeconds')) : this.watchTimeout;
    if (!Number.isFinite(timeoutS) || timeoutS < 0) throw badRequest(`timeoutSeconds: invalid value ${q.get('timeoutSeconds')}`);
    const from = rvParam === '' || rvParam === '0' || sendInitial ? undefined : Number(rvParam);
    if (from !== undefined && !Number.isInteger(from)) throw badRequest(`resourceVersion: Invalid value: "${rvParam}": must be an integer`);
    const tooOld = from !== undefined && from < c.compactedRv;
    const gone = new KubeApiError(410, 'Expired', `too old resource version: ${from ?? rvParam} (${c.compactedRv})`);
    if (this.failWatches.count > 0) {
      this.failWatches.count--;
      if (this.failWatches.mode === 'http') throw gone;
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(`{"type":"ERROR","object":${JSON.stringify(gone.status())}}\n`);
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    req.socket.setNoDelay(true);
    if (tooOld) {
      res.end(`{"type":"ERROR","object":${JSON.stringify(gone.status())}}\n`);
      return;
    }
    const w: Watcher = { res, ns, sel, bookmarks: queryBool(q, 'allowWatchBookmarks'), timers: [] };
    if (from === undefined) {
      for (const k of c.keys()) {
        if (ns && !k.startsWith(`${ns}/`)) continue;
        const o = c.objects.get(k)!;
        if (matches(o, sel)) res.write(`{"type":"ADDED","object":${withKind(c, o)}}\n`);
      }
      if (sendInitial) this.sendBookmark(c, w, { 'k8s.io/initial-events-end': 'true' });
    } else {
      for (const ev of c.history) if (ev.rv > from) this.deliver(c, w, ev);
    }
    c.watchers.add(w);
    const tick = () => {
      this.sendBookmark(c, w);
      w.timers[1] = setTimeout(tick, this.bookmarkMs);
    };
    w.timers.push(setTimeout(() => { this.sendBookmark(c, w); this.endWatch(c, w, true); }, timeoutS * 1000));
    if (w.bookmarks) w.timers.push(setTimeout(tick, this.bookmarkMs));
    res.on('close', () => this.endWatch(c, w, false));
  }
}

/** A boolean query parameter as the API server reads it (Go's strconv.ParseBool: python-kubernetes sends "True"). */
function queryBool(q: URLSearchParams, name: string): boolean {
  return ['1', 't', 'T', 'true', 'TRUE', 'True'].includes(q.get(name) ?? '');
}

function upperBound(keys: string[], key: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (keys[mid]! <= key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function send(res: ServerResponse, code: number, body: Obj): void {
  sendRaw(res, code, JSON.stringify(body));
}
function sendRaw(res: ServerResponse, code: number, body: string): void {
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }).end(body);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (b: Buffer) => {
      size += b.length;
      if (size > MAX_BODY) { reject(new KubeApiError(413, 'RequestEntityTooLarge', `request entity too large: limit is ${MAX_BODY}`)); req.destroy(); return; }
      chunks.push(b);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function readObject(req: IncomingMessage): Promise<Obj> {
  // client-go's typed clients (kubectl create <kind>) send protobuf; the stand-in speaks JSON (and YAML) only.
  if ((req.headers['content-type'] ?? '').includes('protobuf')) {
    throw new KubeApiError(415, 'UnsupportedMediaType', 'the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (the stand-in does not speak protobuf)');
  }
  const text = await readBody(req);
  let body: unknown;
  try {
    body = (req.headers['content-type'] ?? '').includes('yaml') ? parseYaml(text) : JSON.parse(text);
  } catch (e) {
    throw badRequest(`the body of the request could not be decoded: ${(e as Error).message}`);
  }
  if (!isObj(body)) throw badRequest('the body of the request is not an object');
  return body;
}

/** A CA, a server certificate for 127.0.0.1/localhost and a client certificate (CN=sockmesh-test, O=system:masters),
 *  made with openssl in a temporary directory that is removed again. */
function generateTls(): KubeApiTls {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-kubeapi-'));
  const f = (n: string) => join(dir, n);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2', '-subj', '/CN=sockmesh-kubeapi-ca');
    writeFileSync(f('server.ext'), 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
    writeFileSync(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
    for (const [who, subj] of [['server', '/CN=127.0.0.1'], ['client', '/O=system:masters/CN=sockmesh-test']] as const) {
      ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f(`${who}.key`), '-out', f(`${who}.csr`), '-subj', subj);
      ssl('x509', '-req', '-in', f(`${who}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f(`${who}.crt`), '-days', '2', '-extfile', f(`${who}.ext`));
    }
    const r = (n: string) => readFileSync(f(n), 'utf8');
    return { ca: r('ca.crt'), cert: r('server.crt'), key: r('server.key'), clientCert: r('client.crt'), clientKey: r('client.key') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A kubeconfig (JSON, which is YAML) for this server: the token if it has one, else (over TLS) the client
 *  certificate; the CA inline. */
export function kubeconfigFor(api: KubeApi, opts: { token?: string; clientCert?: boolean; namespace?: string } = {}): string {
  const user: Obj = {};
  const token = opts.token ?? api['opts'].token;
  if (token !== undefined && !opts.clientCert) user.token = token;
  if (api.tls && (opts.clientCert || token === undefined)) {
    user['client-certificate-data'] = Buffer.from(api.tls.clientCert).toString('base64');
    user['client-key-data'] = Buffer.from(api.tls.clientKey).toString('base64');
  }
  const cluster: Obj = { server: api.url };
  if (api.tls) cluster['certificate-authority-data'] = Buffer.from(api.tls.ca).toString('base64');
  return `${JSON.stringify({
    apiVersion: 'v1', kind: 'Config', 'current-context': 'kubeapi',
    clusters: [{ name: 'kubeapi', cluster }],
    users: [{ name: 'kubeapi', user }],
    contexts: [{ name: 'kubeapi', context: { cluster: 'kubeapi', user: 'kubeapi', namespace: opts.namespace ?? 'default' } }],
  }, null, 2)}\n`;
}

/** `node dist/lab/kubeapi.js [--port N] [--tls] [--token T] [--kubeconfig FILE]`, also `npm run lab -- kubeapi ...` */
export async function kubeapiMain(argv: string[]): Promise<void> {
  const opt = (name: string) => {
    const i = argv.indexOf(name);
    if (i < 0) return undefined;
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`${name} needs a value`);
    return v;
  };
  for (const a of argv) if (a.startsWith('--') && !['--port', '--tls', '--token', '--kubeconfig', '--host'].includes(a)) throw new Error(`unknown option ${a} (--port N, --host A, --tls, --token T, --kubeconfig FILE)`);
  const port = Number(opt('--port') ?? 0);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port: ${opt('--port')} is not a port`);
  const api = await KubeApi.start({ port, host: opt('--host'), tls: argv.includes('--tls'), token: opt('--token') });
  const file = opt('--kubeconfig') ?? join(tmpdir(), `sockmesh-kubeapi-${api.port}.kubeconfig`);
  writeFileSync(file, kubeconfigFor(api), { mode: 0o600 });
  process.stdout.write(`kubeapi stand-in listening on ${api.url}\n  export KUBECONFIG=${file}\n  kubectl get namespaces\n`);
  const stop = () => { api.close().then(() => { rmSync(file, { force: true }); process.exit(0); }); };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  kubeapiMain(process.argv.slice(2)).catch((e: Error) => { process.stderr.write(`kubeapi: ${e.message}\n`); process.exit(2); });
}
