// A Kubernetes API client: list, watch, get, create, patch and delete over JSON, which is all the control plane and
// the agent do with the API server.
//
// Why node:http/https and not @kubernetes/client-node: that package is tens of megabytes of generated models and
// brings its own HTTP stack and dependencies (and their CVE stream) into a node agent that runs privileged on every
// node, while we use five verbs on six resources; its informer also relists by replacing the cache, which is not the
// diff this mesh needs (kube/reflector.ts). A watch here is one chunked HTTP response read line by line, a list is one
// GET; the API server's wire format is stable and its fidelity is tested with kubectl and python3-kubernetes against
// the same stand-in (lab/kubeapi.ts).
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { KubeConnection } from './kubeconfig.js';
import type { ObjectMeta } from './types.js';

export type { KubeConnection } from './kubeconfig.js';
export type { ObjectMeta } from './types.js';
export { loadKubeConfig } from './kubeconfig.js';

/** An object as the API server returns it (metadata declared once, in kube/types.ts): every stored object has a name. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta & { name: string };
}

export interface ResourceRef {
  /** '' = core */
  group: string;
  version: string;
  /** plural, as in the URL */
  resource: string;
  kind: string;
  namespaced: boolean;
}

export const RESOURCES: Readonly<Record<'services' | 'endpointslices' | 'pods' | 'namespaces' | 'nodes' | 'httproutes' | 'authorizationpolicies', ResourceRef>> = {
  services: { group: '', version: 'v1', resource: 'services', kind: 'Service', namespaced: true },
  endpointslices: { group: 'discovery.k8s.io', version: 'v1', resource: 'endpointslices', kind: 'EndpointSlice', namespaced: true },
  pods: { group: '', version: 'v1', resource: 'pods', kind: 'Pod', namespaced: true },
  namespaces: { group: '', version: 'v1', resource: 'namespaces', kind: 'Namespace', namespaced: false },
  nodes: { group: '', version: 'v1', resource: 'nodes', kind: 'Node', namespaced: false },
  httproutes: { group: 'gateway.networking.k8s.io', version: 'v1', resource: 'httproutes', kind: 'HTTPRoute', namespaced: true },
  // Istio's CRD serves v1 (since Istio 1.22) and v1beta1 from one storage: an object written as v1beta1 is read here
  // as v1 (the same fields)
  authorizationpolicies: { group: 'security.istio.io', version: 'v1', resource: 'authorizationpolicies', kind: 'AuthorizationPolicy', namespaced: true },
};

/** The API server's Status object (errors, watch ERROR events). */
export interface KubeStatus {
  kind?: 'Status';
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: unknown;
}

/** The API server answered with an error (an HTTP status >= 400, or a watch ERROR event): `code` is its HTTP code
 *  (410: the resourceVersion or continue token is too old), `reason` its reason (NotFound, Conflict, Expired...). */
export class KubeApiStatusError extends Error {
  constructor(readonly code: number, readonly reason: string, message: string, readonly status?: KubeStatus) {
    super(message);
  }
}

export interface SelectorOptions {
  /** a namespace, or all namespaces when absent (namespaced resources) */
  namespace?: string;
  fieldSelector?: string;
  labelSelector?: string;
}

export interface ListOptions extends SelectorOptions {
  limit?: number;
  continue?: string;
  resourceVersion?: string;
  /** abandons the request (it rejects) */
  signal?: AbortSignal;
}

export interface ListResult<T> {
  items: T[];
  resourceVersion: string;
  continue?: string;
  remainingItemCount?: number;
}

export interface WatchOptions extends SelectorOptions {
  resourceVersion?: string;
  allowWatchBookmarks?: boolean;
  /** the server ends the watch after this (the client then watches again: rotation) */
  timeoutSeconds?: number;
  /** called once the server accepted the watch (HTTP 200) */
  onOpen?: () => void;
}

export type WatchEvent<T> = { type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK'; object: T };

const REQUEST_TIMEOUT_MS = 30_000;
/** a watch with no byte for this long past its timeoutSeconds is dead (a half-open connection) */
const WATCH_SLACK_MS = 30_000;
const MAX_RESPONSE = 512 << 20;
const TOKEN_REREAD_MS = 60_000;

export class KubeClient {
  /** requests made (the bench reports the API load) */
  requests = 0;
  private readonly base: URL;
  private readonly agent: HttpAgent;
  private token?: { value: string; read: number };

  constructor(readonly connection: KubeConnection) {
    this.base = new URL(connection.server);
    const https = this.base.protocol === 'https:';
    this.agent = https
      ? new HttpsAgent({
          keepAlive: true,
          ca: connection.ca,
          cert: connection.cert,
          key: connection.key,
          rejectUnauthorized: !connection.insecureSkipTLSVerify,
          servername: connection.tlsServerName,
        })
      : new HttpAgent({ keepAlive: true });
  }

  /** Closes idle keep-alive connections (open watches end through their signals). */
  close(): void {
    this.agent.destroy();
  }

  path(ref: ResourceRef, namespace?: string, name?: string, subresource?: string): string {
    const prefix = ref.group ? `/apis/${ref.group}/${ref.version}` : `/api/${ref.version}`;
    const ns = ref.namespaced && namespace ? `/namespaces/${encodeURIComponent(namespace)}` : '';
    if (ref.namespaced && name !== undefined && !namespace) throw new Error(`${ref.resource} "${name}": a namespace is needed`);
    return `${prefix}${ns}/${ref.resource}${name !== undefined ? `/${encodeURIComponent(name)}` : ''}${subresource ? `/${subresource}` : ''}`;
  }

  async list<T extends KubeObject>(ref: ResourceRef, opts: ListOptions = {}): Promise<ListResult<T>> {
    const q = query({ ...selectors(opts), limit: opts.limit, continue: opts.continue, resourceVersion: opts.resourceVersion });
    const body = (await this.json('GET', this.path(ref, opts.namespace) + q, undefined, undefined, opts.signal)) as { metadata?: Record<string, unknown>; items?: T[] };
    if (!Array.isArray(body.items)) throw new Error(`list ${ref.resource}: the answer has no items`);
    const md = body.metadata ?? {};
    return {
      items: body.items,
      resourceVersion: String(md.resourceVersion ?? ''),
      continue: typeof md.continue === 'string' && md.continue !== '' ? md.continue : undefined,
      remainingItemCount: typeof md.remainingItemCount === 'number' ? md.remainingItemCount : undefined,
    };
  }

  /** The object, or undefined if there is none. */
  async get<T extends KubeObject>(ref: ResourceRef, namespace: string | undefined, name: string): Promise<T | undefined> {
    try {
      return (await this.json('GET', this.path(ref, namespace, name))) as T;
    } catch (e) {
      if (e instanceof KubeApiStatusError && e.code === 404) return undefined;
      throw e;
    }
  }

  async create<T extends KubeObject>(ref: ResourceRef, object: T): Promise<T> {
    return (await this.json('POST', this.path(ref, object.metadata.namespace), object)) as T;
  }

  async update<T extends KubeObject>(ref: ResourceRef, object: T, subresource?: 'status'): Promise<T> {
    return (await this.json('PUT', this.path(ref, object.metadata.namespace, object.metadata.name, subresource), object)) as T;
  }

  /** A JSON merge patch (RFC 7386) of the object, or of its status subresource. */
  async patch<T extends KubeObject>(ref: ResourceRef, namespace: string | undefined, name: string, patch: unknown, subresource?: 'status'): Promise<T> {
    return (await this.json('PATCH', this.path(ref, namespace, name, subresource), patch, 'application/merge-patch+json')) as T;
  }

  /** Merge-patches `{ status }` on the status subresource (route conditions and the like). */
  patchStatus<T extends KubeObject>(ref: ResourceRef, namespace: string | undefined, name: string, status: unknown): Promise<T> {
    return this.patch<T>(ref, namespace, name, { status }, 'status');
  }

  async delete(ref: ResourceRef, namespace: string | undefined, name: string): Promise<void> {
    await this.json('DELETE', this.path(ref, namespace, name));
  }

  /** Watches until the server ends the stream (resolves), the signal aborts (resolves), or an error: the connection
   *  failed or dropped mid-stream (Error), the server refused the watch or sent an ERROR event (KubeApiStatusError;
   *  code 410: the resourceVersion is too old, list again). Events arrive in order through `onEvent`. */
  watch<T extends KubeObject>(ref: ResourceRef, opts: WatchOptions, onEvent: (e: WatchEvent<T>) => void, signal?: AbortSignal): Promise<void> {
    const q = query({
      ...selectors(opts), watch: 'true', resourceVersion: opts.resourceVersion,
      allowWatchBookmarks: opts.allowWatchBookmarks ? 'true' : undefined, timeoutSeconds: opts.timeoutSeconds,
    });
    const what = `watch ${ref.resource}`;
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return resolve();
      let settled = false;
      const done = (err?: Error) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', abort);
        if (err) reject(err);
        else resolve();
      };
      const req = this.send('GET', this.path(ref, opts.namespace) + q);
      const abort = () => {
        done();
        req.destroy();
      };
      signal?.addEventListener('abort', abort);
      // No byte for timeoutSeconds + slack: the connection is dead without having said so (a NAT or node gone).
      req.setTimeout((opts.timeoutSeconds ?? 1800) * 1000 + WATCH_SLACK_MS, () => req.destroy(new Error(`${what}: no data past timeoutSeconds, the connection is dead`)));
      req.on('error', (e) => done(new Error(`${what}: ${e.message}`)));
      req.on('response', (res) => {
        if (res.statusCode !== 200) {
          readAll(res).then((text) => done(statusError(`GET ${what}`, res.statusCode ?? 0, text)), (e: Error) => done(e));
          return;
        }
        opts.onOpen?.();
        res.setEncoding('utf8');
        let buf = '';
        res.on('data', (chunk: string) => {
          buf += chunk;
          let nl: number;
          while (!settled && (nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (line === '') continue;
            let ev: { type?: string; object?: unknown };
            try {
              ev = JSON.parse(line);
            } catch {
              done(new Error(`${what}: an event that is not JSON: ${line.slice(0, 200)}`));
              req.destroy();
              return;
            }
            if (ev.type === 'ERROR') {
              const st = (ev.object ?? {}) as KubeStatus;
              done(new KubeApiStatusError(st.code ?? 500, st.reason ?? 'Unknown', `${what}: ${st.code ?? '?'} ${st.reason ?? ''}: ${st.message ?? ''}`, st));
              req.destroy();
              return;
            }
            if (ev.type !== 'ADDED' && ev.type !== 'MODIFIED' && ev.type !== 'DELETED' && ev.type !== 'BOOKMARK') continue;
            try {
              onEvent(ev as WatchEvent<T>);
            } catch (e) {
              done(e as Error);
              req.destroy();
              return;
            }
          }
        });
        res.on('end', () => done());
        // 'close' without 'end': the connection was cut mid-stream.
        res.on('close', () => done(new Error(`${what}: the connection was cut mid-stream`)));
        res.on('error', (e) => done(new Error(`${what}: the connection was cut mid-stream (${e.message})`)));
      });
      req.end();
    });
  }

  private authorization(): string | undefined {
    const c = this.connection;
    if (c.tokenFile) {
      const t = this.token;
      if (!t || Date.now() - t.read > TOKEN_REREAD_MS) this.token = { value: readFileSync(c.tokenFile, 'utf8').trim(), read: Date.now() };
      return `Bearer ${this.token!.value}`;
    }
    if (c.token) return `Bearer ${c.token}`;
    if (c.username !== undefined) return `Basic ${Buffer.from(`${c.username}:${c.password ?? ''}`).toString('base64')}`;
    return undefined;
  }

  private send(method: string, path: string, contentType?: string) {
    this.requests++;
    const auth = this.authorization();
    const headers: Record<string, string> = { Accept: 'application/json', 'User-Agent': 'sockmesh' };
    if (auth) headers.Authorization = auth;
    if (contentType) headers['Content-Type'] = contentType;
    const prefix = this.base.pathname.replace(/\/+$/, '');
    const opts = { method, host: this.base.hostname.replace(/^\[|\]$/g, ''), port: this.base.port || undefined, path: prefix + path, headers, agent: this.agent };
    return this.base.protocol === 'https:' ? httpsRequest(opts) : httpRequest(opts);
  }

  private json(method: string, path: string, body?: unknown, contentType = 'application/json', signal?: AbortSignal): Promise<unknown> {
    const what = `${method} ${path}`;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new Error(`${what}: aborted`));
      const req = this.send(method, path, body === undefined ? undefined : contentType);
      const abort = () => req.destroy(new Error('aborted'));
      signal?.addEventListener('abort', abort, { once: true });
      req.on('close', () => signal?.removeEventListener('abort', abort));
      req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`)));
      req.on('error', (e) => reject(new Error(`${what}: ${e.message}`)));
      req.on('response', (res) => {
        readAll(res).then((text) => {
          const code = res.statusCode ?? 0;
          if (code >= 400 || code < 200) return reject(statusError(what, code, text));
          try {
            resolve(JSON.parse(text));
          } catch {
            reject(new Error(`${what}: the answer is not JSON: ${text.slice(0, 200)}`));
          }
        }, (e: Error) => reject(new Error(`${what}: ${e.message}`)));
      });
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }
}

function statusError(what: string, code: number, text: string): KubeApiStatusError {
  let st: KubeStatus | undefined;
  try {
    const j = JSON.parse(text) as KubeStatus;
    if (j && typeof j === 'object' && j.kind === 'Status') st = j;
  } catch {
    // not a Status: the text itself is the message
  }
  const reason = st?.reason ?? (code === 401 ? 'Unauthorized' : code === 403 ? 'Forbidden' : code === 404 ? 'NotFound' : 'Unknown');
  return new KubeApiStatusError(code, reason, `${what}: ${code} ${reason}: ${st?.message ?? text.slice(0, 200)}`, st);
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (b: Buffer) => {
      size += b.length;
      if (size > MAX_RESPONSE) {
        res.destroy();
        reject(new Error(`the answer is larger than ${MAX_RESPONSE >> 20} MiB`));
        return;
      }
      chunks.push(b);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
    res.on('aborted', () => reject(new Error('the connection closed mid-answer')));
  });
}

function selectors(o: SelectorOptions): Record<string, string | undefined> {
  return { fieldSelector: o.fieldSelector || undefined, labelSelector: o.labelSelector || undefined };
}

function query(params: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}
