// The API-server stand-in's service-account tokens (lab/kubeapi.ts): tokens minted for a test, as the kubelet's
// projected serviceAccountToken volume gets them (TokenRequest bound to a pod), and TokenReview
// (authentication.k8s.io/v1), which the control plane's CA calls to learn who an agent is (controlplane/ca-kube.ts).
//
// As the real API server does it:
// - a token is a JWT (header.claims.signature) with the projected token's claims: iss, sub
//   system:serviceaccount:<ns>:<sa>, aud, exp/iat/nbf, jti, and kubernetes.io {namespace, serviceaccount, pod, node};
// - a review checks the signature, the expiry, that the token's audiences meet spec.audiences (none given: the
//   server's own, its issuer), and that the pod it is bound to still exists with the same uid (a token outlives
//   nothing it was bound to);
// - the answer is 201 with status.authenticated, status.user (username, uid, groups, and extra: the pod's and the
//   node's name and uid, the credential id: what 1.30+ servers put there) and status.audiences, the intersection; a
//   refused token is authenticated false (omitted) with status.error, never an HTTP error.
// Deliberate differences: HS256 with a per-server secret rather than the server's RS256/ES256 key (no client here
// verifies signatures offline; the CA must not, it asks), and no RBAC on who may create TokenReviews (the stand-in has
// one bearer token, whose holder may do anything).
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';

/* eslint-disable @typescript-eslint/no-explicit-any */
type Obj = Record<string, any>;

export const TOKEN_ISSUER = 'https://kubernetes.default.svc.cluster.local';
/** The group/version of the review and its path, which kubeapi.ts routes here. */
export const TOKENREVIEW_API = 'authentication.k8s.io/v1';
/** TokenRequest's default lifetime (the kubelet asks for an hour and refreshes at 80%). */
const DEFAULT_EXPIRATION_S = 3600;

export interface MintOptions {
  namespace: string;
  serviceAccount: string;
  /** `aud`: the projected volume's audience (default: the API server's own, its issuer) */
  audiences?: string[];
  /** the pod the token is bound to (in `namespace`); its uid and spec.nodeName go into the claims */
  pod?: string;
  expirationSeconds?: number;
}

/** What the tokens need of the stand-in's store: a pod by namespace/name. */
export type PodLookup = (namespace: string, name: string) => Obj | undefined;

const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url');

export class ServiceAccountTokens {
  private readonly secret = randomBytes(32);
  /** stable uid per service account, as the ServiceAccount object's */
  private readonly saUids = new Map<string, string>();
  /** reviews answered (tests: the CA's cache spares the API server) */
  reviews = 0;

  constructor(private readonly pods: PodLookup, private readonly now: () => number = Date.now) {}

  private sign(data: string): string {
    return createHmac('sha256', this.secret).update(data).digest('base64url');
  }

  private saUid(ns: string, sa: string): string {
    const k = `${ns}/${sa}`;
    let uid = this.saUids.get(k);
    if (!uid) this.saUids.set(k, (uid = randomUUID()));
    return uid;
  }

  /** A token as TokenRequest issues it. Throws naming what is wrong (no such pod, a pod of another namespace). */
  mint(o: MintOptions): string {
    const iat = Math.floor(this.now() / 1000);
    const exp = iat + (o.expirationSeconds ?? DEFAULT_EXPIRATION_S);
    const k8s: Obj = { namespace: o.namespace, serviceaccount: { name: o.serviceAccount, uid: this.saUid(o.namespace, o.serviceAccount) } };
    if (o.pod !== undefined) {
      const pod = this.pods(o.namespace, o.pod);
      if (!pod) throw new Error(`mint a token bound to pod ${o.namespace}/${o.pod}: no such pod`);
      k8s.pod = { name: o.pod, uid: pod.metadata.uid };
      const node = pod.spec?.nodeName;
      if (typeof node === 'string' && node !== '') k8s.node = { name: node, uid: randomUUID() };
    }
    const claims = {
      aud: o.audiences ?? [TOKEN_ISSUER], exp, iat, nbf: iat, iss: TOKEN_ISSUER, jti: randomUUID(),
      'kubernetes.io': k8s, sub: `system:serviceaccount:${o.namespace}:${o.serviceAccount}`,
    };
    const unsigned = `${b64({ alg: 'HS256', kid: 'sockmesh-kubeapi' })}.${b64(claims)}`;
    return `${unsigned}.${this.sign(unsigned)}`;
  }

  /** The claims of a token this server signed, or the reason it is not one. */
  private claims(token: string): Obj | string {
    const parts = token.split('.');
    if (parts.length !== 3) return 'invalid bearer token';
    const want = Buffer.from(this.sign(`${parts[0]}.${parts[1]}`));
    const got = Buffer.from(parts[2]!);
    if (want.length !== got.length || !timingSafeEqual(want, got)) return 'invalid bearer token';
    try {
      return JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as Obj;
    } catch {
      return 'invalid bearer token';
    }
  }

  /** POST /apis/authentication.k8s.io/v1/tokenreviews: the review (status filled in). */
  review(body: Obj): Obj {
    this.reviews++;
    const spec: Obj = typeof body.spec === 'object' && body.spec !== null ? body.spec : {};
    const out = { kind: 'TokenReview', apiVersion: TOKENREVIEW_API, metadata: { creationTimestamp: null, ...(body.metadata ?? {}) }, spec };
    const fail = (why: string) => ({ ...out, status: { user: {}, error: `[invalid bearer token, ${why}]` } });
    if (typeof spec.token !== 'string' || spec.token === '') return { ...out, status: { user: {}, error: 'token is required' } };
    const c = this.claims(spec.token);
    if (typeof c === 'string') return { ...out, status: { user: {}, error: c } };
    if (c.exp * 1000 <= this.now()) return fail('service account token has expired');
    const wanted: string[] = Array.isArray(spec.audiences) && spec.audiences.length > 0 ? spec.audiences : [TOKEN_ISSUER];
    const aud: string[] = c.aud;
    const audiences = wanted.filter((a) => aud.includes(a));
    if (audiences.length === 0) return fail(`token audiences ${JSON.stringify(aud)} is invalid for the target audiences ${JSON.stringify(wanted)}`);
    const k8s: Obj = c['kubernetes.io'];
    const extra: Record<string, string[]> = { 'authentication.kubernetes.io/credential-id': [`JTI=${c.jti}`] };
    if (k8s.pod) {
      const pod = this.pods(k8s.namespace, k8s.pod.name);
      if (!pod) return fail(`pod "${k8s.pod.name}" not found`);
      if (pod.metadata.uid !== k8s.pod.uid) {
        return fail(`the UID in the bound object reference (${k8s.pod.uid}) does not match the UID in record. The object might have been deleted and then recreated`);
      }
      extra['authentication.kubernetes.io/pod-name'] = [k8s.pod.name];
      extra['authentication.kubernetes.io/pod-uid'] = [k8s.pod.uid];
    }
    if (k8s.node) {
      extra['authentication.kubernetes.io/node-name'] = [k8s.node.name];
      extra['authentication.kubernetes.io/node-uid'] = [k8s.node.uid];
    }
    return {
      ...out,
      status: {
        authenticated: true,
        user: {
          username: c.sub, uid: k8s.serviceaccount.uid,
          groups: ['system:serviceaccounts', `system:serviceaccounts:${k8s.namespace}`, 'system:authenticated'],
          extra,
        },
        audiences,
      },
    };
  }
}
