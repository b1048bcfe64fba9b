// The CA on Kubernetes (serve --kubernetes): who an agent is, from its service-account token, and which identities
// its node may have, from the pods on it.
//
// Authentication. The agent sends the token its DaemonSet projects (a serviceAccountToken volume with the audience
// --ca-token-audience, default sockmesh-ca; the kubelet rotates it, the agent reads the file at each call). The
// control plane never reads the token itself: it asks the API server (TokenReview, authentication.k8s.io/v1) with
// that audience, as Istio's istiod does, and then requires
//  - authenticated, and the audience confirmed in status.audiences (an API server that ignored spec.audiences would
//    accept a token minted for anything else: a pod's token for its own app, sent to us);
//  - the user system:serviceaccount:<ns>:<sa> of an agent (--ca-agent-service-account, default
//    sockmesh-system/sockmesh-agent): any pod may hold a token of its own service account;
//  - a token bound to a pod (a projected one; a legacy Secret token names no pod, hence no node). The node is the
//    extra authentication.kubernetes.io/node-name (API servers 1.30+), else the bound pod's spec.nodeName (its uid
//    checked against the extra pod-uid, so a pod recreated under the same name is not taken for it).
// Reviews that succeeded are kept for cacheMs (30 s) by the token's hash: an agent asking for ten identities at its
// start costs one review. A deleted agent pod's token therefore works for up to that long.
//
// Authorization. The identities of a node are spiffe://<td>/ns/<ns>/sa/<serviceAccountName> of its pods that are not
// finished (kube/pods.ts, as the agent computes them), from a pod list with fieldSelector spec.nodeName (served from
// the API server's watch cache), kept for podsCacheMs (2 s): one list per burst of requests, and a pod scheduled a
// moment ago is seen on the agent's next retry.
import { createHash } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { RESOURCES, type KubeClient, type KubeObject, type ResourceRef } from '../kube/client.js';
import { translatePods } from '../kube/pods.js';
import type { KPod } from '../kube/types.js';
import { CaConfigError } from './ca.js';
import { Refusal, type KubeCaAuth, type NodeAuthenticator, type NodeCredential } from './ca-service.js';

export const DEFAULT_TOKEN_AUDIENCE = 'sockmesh-ca';
export const DEFAULT_AGENT_SERVICE_ACCOUNT = 'sockmesh-system/sockmesh-agent';
const TOKENREVIEWS: ResourceRef = { group: 'authentication.k8s.io', version: 'v1', resource: 'tokenreviews', kind: 'TokenReview', namespaced: false };
const EXTRA_NODE = 'authentication.kubernetes.io/node-name';
const EXTRA_POD = 'authentication.kubernetes.io/pod-name';
const EXTRA_POD_UID = 'authentication.kubernetes.io/pod-uid';
const SA_USER = /^system:serviceaccount:([a-z0-9]([-a-z0-9]*[a-z0-9])?):([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/;
/** reviews kept at most (the oldest go first): one per agent pod in practice */
const MAX_CACHED = 4096;
const PODS_PAGE = 500;

/** What the CA needs of the API client (a test may hand a stand-in's). */
export type CaKubeClient = Pick<KubeClient, 'create' | 'get' | 'list'>;

export interface KubeCaOptions {
  client: CaKubeClient;
  trustDomain: string;
  /** the audience agents' tokens are projected with */
  audience?: string;
  /** "<namespace>/<name>" of the service accounts agents run as */
  agentServiceAccounts?: string[];
  log: Logger;
  cacheMs?: number;
  podsCacheMs?: number;
  now?: () => number;
}

interface TokenReviewStatus {
  authenticated?: boolean;
  user?: { username?: string; extra?: Record<string, string[] | undefined> };
  audiences?: string[];
  error?: string;
}

/** --ca-agent-service-account values: "<namespace>/<name>", checked. */
export function parseServiceAccounts(values: string[]): string[] {
  return values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '').map((v) => {
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(v)) {
      throw new CaConfigError(`--ca-agent-service-account ${JSON.stringify(v)}: expected <namespace>/<service account name>, e.g. ${DEFAULT_AGENT_SERVICE_ACCOUNT}`);
    }
    return v;
  });
}

const apiError = (what: string, e: unknown) =>
  new Refusal(grpc.status.UNAVAILABLE, 'api_unavailable', `${what}: ${(e as Error).message}`);

export class TokenReviewAuthenticator implements NodeAuthenticator {
  readonly audience: string;
  readonly agents: ReadonlySet<string>;
  private readonly cache = new Map<string, { cred: NodeCredential; until: number }>();
  private readonly inFlight = new Map<string, Promise<NodeCredential>>();
  private readonly now: () => number;
  /** TokenReviews posted (tests: the cache spares the API server) */
  reviews = 0;

  constructor(private readonly o: KubeCaOptions) {
    this.audience = o.audience ?? DEFAULT_TOKEN_AUDIENCE;
    this.agents = new Set(o.agentServiceAccounts?.length ? o.agentServiceAccounts : [DEFAULT_AGENT_SERVICE_ACCOUNT]);
    this.now = o.now ?? Date.now;
  }

  async authenticate(token: string): Promise<NodeCredential> {
    const key = createHash('sha256').update(token).digest('hex');
    const hit = this.cache.get(key);
    if (hit && hit.until > this.now()) return hit.cred;
    this.cache.delete(key);
    let p = this.inFlight.get(key);
    if (!p) {
      p = this.review(token).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, p);
    }
    const cred = await p;
    if (this.cache.size >= MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(key, { cred, until: this.now() + (this.o.cacheMs ?? 30_000) });
    return cred;
  }

  private async review(token: string): Promise<NodeCredential> {
    this.reviews++;
    let res: { status?: TokenReviewStatus };
    try {
      const body = { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', metadata: {}, spec: { token, audiences: [this.audience] } };
      res = await this.o.client.create(TOKENREVIEWS, body as unknown as KubeObject) as { status?: TokenReviewStatus };
    } catch (e) {
      // 403 here is the control plane's own RBAC (tokenreviews create), not the agent's fault: logged loudly
      this.o.log.error({ error: (e as Error).message }, 'TokenReview failed: the CA cannot authenticate agents (does the control plane\'s ClusterRole allow tokenreviews create?)');
      throw apiError('TokenReview failed', e);
    }
    const st = res.status ?? {};
    if (st.authenticated !== true) throw new Refusal(grpc.status.UNAUTHENTICATED, 'token_invalid', `the API server refused the service-account token: ${st.error ?? 'not authenticated'}`);
    if (!st.audiences?.includes(this.audience)) {
      throw new Refusal(grpc.status.UNAUTHENTICATED, 'token_audience', `the API server did not confirm the token's audience ${this.audience} (status.audiences ${JSON.stringify(st.audiences ?? [])}): project the token with audience ${this.audience}`);
    }
    const user = st.user?.username ?? '';
    const m = SA_USER.exec(user);
    if (!m) throw new Refusal(grpc.status.PERMISSION_DENIED, 'not_agent', `${JSON.stringify(user)} is not a service account; certificates go to agents (${[...this.agents].join(', ')})`);
    const [ns, sa] = [m[1]!, m[3]!];
    if (!this.agents.has(`${ns}/${sa}`)) {
      throw new Refusal(grpc.status.PERMISSION_DENIED, 'not_agent', `service account ${ns}/${sa} is not an agent's (--ca-agent-service-account: ${[...this.agents].join(', ')})`);
    }
    const extra = st.user?.extra ?? {};
    const podName = extra[EXTRA_POD]?.[0];
    if (!podName) {
      throw new Refusal(grpc.status.PERMISSION_DENIED, 'no_pod_binding', `the token of ${ns}/${sa} is bound to no pod (a Secret token?), so it names no node: use the DaemonSet's projected token (serviceAccountToken, audience ${this.audience})`);
    }
    let node = extra[EXTRA_NODE]?.[0];
    if (!node) {
      // API servers before 1.30 do not say the node: the bound pod does
      let pod: KPod | undefined;
      try {
        pod = await this.o.client.get<KPod & KubeObject>(RESOURCES.pods, ns, podName);
      } catch (e) {
        throw apiError(`reading the token's pod ${ns}/${podName}`, e);
      }
      const uid = extra[EXTRA_POD_UID]?.[0];
      if (!pod || (uid && pod.metadata.uid !== uid)) throw new Refusal(grpc.status.UNAUTHENTICATED, 'token_invalid', `the token's pod ${ns}/${podName}${uid ? ` (uid ${uid})` : ''} does not exist any more`);
      node = pod.spec?.nodeName;
      if (!node) throw new Refusal(grpc.status.PERMISSION_DENIED, 'no_pod_binding', `the token's pod ${ns}/${podName} is not scheduled to a node`);
    }
    return { node, via: `service account ${ns}/${sa}, pod ${ns}/${podName}` };
  }
}

/** node -> identities of the pods on it, from a pod list per node (cached briefly). */
export class NodePodIdentities {
  private readonly cache = new Map<string, { ids: ReadonlySet<string>; at: number }>();
  private readonly inFlight = new Map<string, Promise<ReadonlySet<string>>>();
  private readonly now: () => number;
  /** pod lists made (tests) */
  lists = 0;

  constructor(private readonly o: Pick<KubeCaOptions, 'client' | 'trustDomain' | 'podsCacheMs' | 'now'>) {
    this.now = o.now ?? Date.now;
  }

  async of(node: string): Promise<ReadonlySet<string>> {
    const hit = this.cache.get(node);
    if (hit && this.now() - hit.at < (this.o.podsCacheMs ?? 2000)) return hit.ids;
    let p = this.inFlight.get(node);
    if (!p) {
      p = this.list(node).finally(() => this.inFlight.delete(node));
      this.inFlight.set(node, p);
    }
    return p;
  }

  private async list(node: string): Promise<ReadonlySet<string>> {
    this.lists++;
    const at = this.now();
    const pods: KPod[] = [];
    try {
      let cont: string | undefined;
      do {
        const page = await this.o.client.list<KPod & KubeObject>(RESOURCES.pods, { fieldSelector: `spec.nodeName=${node}`, limit: PODS_PAGE, continue: cont });
        pods.push(...page.items);
        cont = page.continue;
      } while (cont);
    } catch (e) {
      throw apiError(`listing the pods of node ${node}`, e);
    }
    // the driver names cgroups only, which the CA does not use
    const ids = new Set(translatePods(pods, { trustDomain: this.o.trustDomain, driver: 'cgroupfs' }).pods.map((p) => p.identity));
    this.cache.set(node, { ids, at });
    return ids;
  }
}

/** The CA's Kubernetes side for serve --kubernetes. */
export function kubeCaAuth(o: KubeCaOptions): KubeCaAuth & { authenticator: TokenReviewAuthenticator; pods: NodePodIdentities } {
  const authenticator = new TokenReviewAuthenticator(o);
  const pods = new NodePodIdentities(o);
  return { authenticator, pods, podIdentities: (node) => pods.of(node) };
}
