// Where the Kubernetes API is and how to authenticate to it: a kubeconfig file (kubectl's format) or, inside a pod,
// the service account the kubelet mounts. Only what a service-mesh component needs: a server, a CA (or
// insecure-skip-tls-verify), and a bearer token or a client certificate. exec and auth-provider plugins (cloud
// logins) are refused with a clear error: the agent and control plane run in-cluster, and a kubeconfig for them is a
// service account's or a certificate's.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface KubeConnection {
  /** https://host:port[/prefix] */
  server: string;
  /** PEM: the CA to verify the server with (else the system's) */
  ca?: string;
  /** PEM: a client certificate and its key */
  cert?: string;
  key?: string;
  token?: string;
  /** a token file re-read as it rotates (in-cluster: bound service account tokens expire within the hour) */
  tokenFile?: string;
  username?: string;
  password?: string;
  insecureSkipTLSVerify?: boolean;
  /** TLS server name to verify when it differs from the server's host */
  tlsServerName?: string;
  /** the context's namespace (in-cluster: the pod's) */
  namespace?: string;
  /** for messages: where this came from ("in-cluster service account", "kubeconfig /x, context y") */
  source: string;
}

export interface LoadKubeConfigOptions {
  kubeconfig?: string;
  /** for tests: the environment, the home directory and the service account directory to look in */
  env?: NodeJS.ProcessEnv;
  home?: string;
  serviceAccountDir?: string;
}

/** The connection: `opts.kubeconfig` if given; else in-cluster (KUBERNETES_SERVICE_HOST/PORT and the service
 *  account's token) when present; else $KUBECONFIG (the first of its files that exists); else ~/.kube/config. */
export function loadKubeConfig(opts: LoadKubeConfigOptions = {}): KubeConnection {
  const env = opts.env ?? process.env;
  if (opts.kubeconfig) return fromKubeconfigFile(opts.kubeconfig);
  const sa = opts.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  if (env.KUBERNETES_SERVICE_HOST && existsSync(join(sa, 'token'))) return inCluster(env, sa);
  if (env.KUBECONFIG) {
    const files = env.KUBECONFIG.split(':').filter(Boolean);
    const found = files.find((f) => existsSync(f));
    if (!found) throw new Error(`$KUBECONFIG: none of its files exists (${files.join(', ')})`);
    return fromKubeconfigFile(found);
  }
  const home = join(opts.home ?? homedir(), '.kube', 'config');
  if (existsSync(home)) return fromKubeconfigFile(home);
  throw new Error(`no Kubernetes configuration: not in a pod (KUBERNETES_SERVICE_HOST unset or no ${join(sa, 'token')}), no --kubeconfig, $KUBECONFIG unset and ${home} absent`);
}

function inCluster(env: NodeJS.ProcessEnv, dir: string): KubeConnection {
  const host = env.KUBERNETES_SERVICE_HOST!;
  const port = env.KUBERNETES_SERVICE_PORT ?? '443';
  if (!/^\d+$/.test(port)) throw new Error(`in-cluster config: KUBERNETES_SERVICE_PORT is not a port: "${port}"`);
  const caFile = join(dir, 'ca.crt');
  const nsFile = join(dir, 'namespace');
  return {
    server: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
    ca: existsSync(caFile) ? readFileSync(caFile, 'utf8') : undefined,
    tokenFile: join(dir, 'token'),
    namespace: existsSync(nsFile) ? readFileSync(nsFile, 'utf8').trim() : undefined,
    source: `in-cluster service account (${dir})`,
  };
}

export function fromKubeconfigFile(file: string): KubeConnection {
  const path = resolve(file);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`kubeconfig ${path}: cannot read it: ${(e as Error).message}`);
  }
  return parseKubeconfig(text, path);
}

/** Parses a kubeconfig's text; `path` names it in errors and is where relative file references are resolved from. */
export function parseKubeconfig(text: string, path: string): KubeConnection {
  const fail = (what: string): never => {
    throw new Error(`kubeconfig ${path}: ${what}`);
  };
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    fail(`not YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return fail('not a kubeconfig (a YAML mapping with clusters, users and contexts expected)');
  const cfg = doc as Record<string, unknown>;
  const current = cfg['current-context'];
  if (typeof current !== 'string' || current === '') return fail('current-context is not set');
  const isMap = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const pick = (list: 'contexts' | 'clusters' | 'users', inner: 'context' | 'cluster' | 'user', name: unknown, why: string): Record<string, unknown> => {
    const entries = cfg[list] ?? [];
    if (!Array.isArray(entries)) return fail(`${list}: a list expected`);
    const i = entries.findIndex((e) => isMap(e) && e.name === name);
    if (i < 0) return fail(`${list}: no entry named "${String(name)}" (${why})`);
    const v = (entries[i] as Record<string, unknown>)[inner] ?? {};
    if (!isMap(v)) return fail(`${list}[${i}] "${String(name)}": ${inner} must be a mapping`);
    return v;
  };
  const ctx = pick('contexts', 'context', current, 'the current-context');
  const cluster = pick('clusters', 'cluster', ctx.cluster, `context "${current}"'s cluster`);
  const user = ctx.user === undefined ? {} : pick('users', 'user', ctx.user, `context "${current}"'s user`);
  const where = (list: string, name: unknown) => `${list} "${String(name)}"`;
  const cw = where('clusters', ctx.cluster);
  const uw = where('users', ctx.user);
  const str = (o: Record<string, unknown>, w: string, k: string): string | undefined => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') fail(`${w}: ${k} must be a string`);
    return v as string;
  };
  const server = str(cluster, cw, 'server') ?? fail(`${cw}: server is not set`);
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    return fail(`${cw}: server "${server}" is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') fail(`${cw}: server "${server}": http or https expected`);
  const base = dirname(path);
  // A PEM from `<field>-data` (base64) or from `<field>` (a file, relative to the kubeconfig's directory).
  const pem = (o: Record<string, unknown>, w: string, field: string): string | undefined => {
    const data = str(o, w, `${field}-data`);
    if (data !== undefined) {
      const decoded = Buffer.from(data, 'base64').toString('utf8');
      if (!/^[A-Za-z0-9+/=\s]+$/.test(data) || !decoded.includes('-----BEGIN')) fail(`${w}: ${field}-data is not a base64 PEM`);
      return decoded;
    }
    const file = str(o, w, field);
    if (file === undefined) return undefined;
    const p = isAbsolute(file) ? file : join(base, file);
    try {
      return readFileSync(p, 'utf8');
    } catch (e) {
      return fail(`${w}: ${field} ${p}: ${(e as Error).message}`);
    }
  };
  if (user.exec !== undefined || user['auth-provider'] !== undefined) {
    fail(`${uw}: ${user.exec !== undefined ? 'exec' : 'auth-provider'} credential plugins are not supported (use a token, a client certificate or the in-cluster service account)`);
  }
  const conn: KubeConnection = {
    server: server.replace(/\/+$/, ''),
    ca: pem(cluster, cw, 'certificate-authority'),
    cert: pem(user, uw, 'client-certificate'),
    key: pem(user, uw, 'client-key'),
    token: str(user, uw, 'token'),
    username: str(user, uw, 'username'),
    password: str(user, uw, 'password'),
    tlsServerName: str(cluster, cw, 'tls-server-name'),
    namespace: str(ctx, where('contexts', current), 'namespace'),
    source: `kubeconfig ${path}, context "${current}"`,
  };
  const tokenFile = str(user, uw, 'tokenFile');
  if (tokenFile !== undefined) {
    conn.tokenFile = isAbsolute(tokenFile) ? tokenFile : join(base, tokenFile);
    if (!existsSync(conn.tokenFile)) fail(`${uw}: tokenFile ${conn.tokenFile} does not exist`);
  }
  const skip = cluster['insecure-skip-tls-verify'];
  if (skip !== undefined && typeof skip !== 'boolean') fail(`${cw}: insecure-skip-tls-verify must be true or false`);
  conn.insecureSkipTLSVerify = skip === true;
  if ((conn.cert === undefined) !== (conn.key === undefined)) fail(`${uw}: client-certificate and client-key go together (one is missing)`);
  if (url.protocol === 'http:' && (conn.ca || conn.cert)) fail(`${cw}: server "${server}" is http but TLS settings are given`);
  return conn;
}
