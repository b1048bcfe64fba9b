// The CA's gRPC API on the control plane's server (xds/ca.ts has the services): who is asking (node credentials)
// and what it may have (identities of workloads on its node). The CA (ca.ts) checks the CSR itself.
//
// Node credentials, sent by the agent (--node-token-file) as `authorization: Bearer <token>`:
//  - lab / static: a tokens file (--node-tokens), one `<token> <node name>` per line ('#' comments);
//  - Kubernetes (serve --kubernetes): the agent's projected service-account token, checked by the API server's
//    TokenReview (ca-kube.ts): the agent's service account, and the node of the pod the token is bound to.
// Both may be on at once: a token of the file is taken first, anything else goes to the TokenReview.
// Authorization: a node may have only identities of workloads on it: the config's workloads[].node and
// workloads[].identity, and with --kubernetes the identities of the pods on it (spec.nodeName + serviceAccountName);
// and its own node identity spiffe://<td>/sockmesh/node/<its name> (what its tunnel server presents), no other node's.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { nodeSpiffeId, parseNodeSpiffeId } from '../agent/model/spiffe.js';
import type { Model } from '../agent/model/types.js';
import { caServices, type CertificateRequest, type CertificateResponse, type TrustBundleResponse } from '../xds/ca.js';
import { CaConfigError, CsrError, type CertificateAuthority } from './ca.js';

/** Shorter tokens are refused when the file is read: a guessable node credential is no credential. */
const MIN_TOKEN_LENGTH = 16;
/** A CSR is a few hundred bytes; anything much larger is refused before it is parsed. */
const MAX_CSR_BYTES = 16 * 1024;

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

/** token -> node name, from a tokens file. Tokens are kept as hashes and compared in constant time. */
export class NodeTokens {
  private constructor(private readonly entries: { hash: Buffer; node: string }[]) {}

  static fromFile(file: string): NodeTokens {
    let text: string;
    try {
      if (statSync(file).mode & 0o004) throw new CaConfigError(`--node-tokens ${file}: readable by everyone; chmod 600 or 640 it`);
      text = readFileSync(file, 'utf8');
    } catch (e) {
      if (e instanceof CaConfigError) throw e;
      throw new CaConfigError(`--node-tokens ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    return NodeTokens.parse(text, file);
  }

  static parse(text: string, file: string): NodeTokens {
    const entries: { hash: Buffer; node: string }[] = [];
    const seen = new Set<string>();
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/#.*/, '').trim();
      if (line === '') return;
      const where = `--node-tokens ${file}:${i + 1}`;
      const parts = line.split(/\s+/);
      if (parts.length !== 2) throw new CaConfigError(`${where}: expected '<token> <node name>'`);
      const [token, node] = parts as [string, string];
      if (token.length < MIN_TOKEN_LENGTH) throw new CaConfigError(`${where}: the token is ${token.length} characters; at least ${MIN_TOKEN_LENGTH} (e.g. openssl rand -hex 16)`);
      if (!/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/.test(node)) throw new CaConfigError(`${where}: node name ${JSON.stringify(node)} is not a Kubernetes node name`);
      const h = sha256(token).toString('hex');
      if (seen.has(h)) throw new CaConfigError(`${where}: the same token is listed twice`);
      seen.add(h);
      entries.push({ hash: sha256(token), node });
    });
    if (entries.length === 0) throw new CaConfigError(`--node-tokens ${file}: no tokens in it`);
    return new NodeTokens(entries);
  }

  /** The node a token belongs to, or undefined. Every entry is compared, so the time taken says nothing. */
  nodeOf(token: string): string | undefined {
    const h = sha256(token);
    let found: string | undefined;
    for (const e of this.entries) if (timingSafeEqual(e.hash, h)) found = e.node;
    return found;
  }
}

/**
 * node -> identities of its workloads, from a model's workloads[].node and .identity. A workload without a node
 * (which an agent's own config reads as "this node") is no node's here: the control plane serves many nodes.
 */
export function identitiesByNode(model: Model | undefined): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const { node, identity } of model?.workloads ?? []) {
    if (node === undefined || identity === undefined) continue;
    let set = out.get(node);
    if (!set) out.set(node, (set = new Set()));
    set.add(identity);
  }
  return out;
}

export interface CaServiceStats {
  issued: number;
  /** refusals by gRPC status name */
  refused: Record<string, number>;
  /** refusals by "<gRPC status name> <reason>" (RefusalReason): the metrics' labels */
  refusedBy: Record<string, number>;
}

/** Why a request was refused, as a closed set (a metrics label; the message says the rest). */
export type RefusalReason =
  | 'no_credential' | 'unknown_token' | 'token_invalid' | 'token_audience' | 'not_agent' | 'no_pod_binding'
  | 'foreign_identity' | 'bad_csr' | 'api_unavailable' | 'internal';

/** A refusal with its gRPC status and reason (authenticators throw it too). */
export class Refusal extends Error {
  constructor(readonly code: grpc.status, readonly reason: RefusalReason, message: string) {
    super(message);
  }
}

/** Who a credential belongs to: the node, and how it was proven (logs). */
export interface NodeCredential {
  node: string;
  /** e.g. 'node token', 'service account sockmesh-system/sockmesh-agent, pod sockmesh-system/agent-x' */
  via: string;
}

/** A way to authenticate a node: undefined = not this authenticator's kind of credential; throws a Refusal to refuse. */
export interface NodeAuthenticator {
  authenticate(credential: string): Promise<NodeCredential | undefined> | NodeCredential | undefined;
}

/** The CA's Kubernetes side (ca-kube.ts): service-account tokens, and the identities of the pods on a node. */
export interface KubeCaAuth {
  authenticator: NodeAuthenticator;
  podIdentities(node: string): Promise<ReadonlySet<string>>;
}

export interface CaServiceOptions {
  ca: CertificateAuthority;
  /** node tokens (--node-tokens); at least one of tokens and kube */
  tokens?: NodeTokens;
  kube?: KubeCaAuth;
  /** the identities the model places on a node now (read at each request: workloads move) */
  identitiesOf: (node: string) => ReadonlySet<string>;
  log: Logger;
}

export class CaService {
  readonly stats: CaServiceStats = { issued: 0, refused: {}, refusedBy: {} };

  constructor(private readonly opts: CaServiceOptions) {}

  /** The calling node, from its `authorization: Bearer` metadata; throws a Refusal (UNAUTHENTICATED and others). */
  private async authenticate(md: grpc.Metadata): Promise<NodeCredential> {
    const v = md.get('authorization')[0];
    if (typeof v !== 'string' || !/^Bearer \S+$/.test(v)) throw new Refusal(grpc.status.UNAUTHENTICATED, 'no_credential', 'no node credential: send metadata authorization: Bearer <node token>');
    const token = v.slice(7);
    const node = this.opts.tokens?.nodeOf(token);
    if (node) return { node, via: 'node token' };
    const kube = await this.opts.kube?.authenticator.authenticate(token);
    if (kube) return kube;
    throw new Refusal(grpc.status.UNAUTHENTICATED, 'unknown_token', 'the node token is not known to this control plane');
  }

  /** The identities `node` may have: the model's workloads on it, and with Kubernetes its pods' service accounts. */
  private async identitiesOf(node: string): Promise<ReadonlySet<string>> {
    const model = this.opts.identitiesOf(node);
    if (!this.opts.kube) return model;
    return new Set([...model, ...await this.opts.kube.podIdentities(node)]);
  }

  private refuse(method: string, peer: string, who: NodeCredential | undefined, e: unknown, cb: (err: grpc.ServiceError) => void): void {
    const r = e instanceof Refusal ? e
      : e instanceof CsrError ? new Refusal(grpc.status.INVALID_ARGUMENT, 'bad_csr', e.message)
        : new Refusal(grpc.status.INTERNAL, 'internal', `signing failed: ${(e as Error).message}`);
    const name = grpc.status[r.code];
    this.stats.refused[name] = (this.stats.refused[name] ?? 0) + 1;
    const by = `${name} ${r.reason}`;
    this.stats.refusedBy[by] = (this.stats.refusedBy[by] ?? 0) + 1;
    this.opts.log[r.code === grpc.status.INTERNAL ? 'error' : 'warn']({ method, peer, node: who?.node, via: who?.via, code: name, reason: r.message }, 'certificate request refused');
    cb(Object.assign(new Error(r.message), { code: r.code, details: r.message, metadata: new grpc.Metadata() }) as grpc.ServiceError);
  }

  /** Handlers of IstioCertificateService. */
  certificateHandlers(): grpc.UntypedServiceImplementation {
    return {
      CreateCertificate: (call: grpc.ServerUnaryCall<CertificateRequest, CertificateResponse>, cb: grpc.sendUnaryData<CertificateResponse>) => {
        let who: NodeCredential | undefined;
        void (async () => {
          who = await this.authenticate(call.metadata);
          const csr = call.request.csr ?? '';
          if (csr.length > MAX_CSR_BYTES) throw new CsrError(`csr: ${csr.length} bytes; at most ${MAX_CSR_BYTES}`);
          const node = who.node;
          const ttl = Number(call.request.validity_duration ?? 0);
          const mine = await this.identitiesOf(node);
          const issued = await this.opts.ca.sign(csr, ttl, (identity) => {
            // a node's own identity (its tunnel server's) only to that node: a client checks it reached the node it
            // dialled by this name, so a node holding another's could answer for it
            const asNode = parseNodeSpiffeId(identity);
            if (asNode) {
              if (asNode.node !== node) throw new Refusal(grpc.status.PERMISSION_DENIED, 'foreign_identity', `node ${node} may not have ${identity}: the identity of node ${asNode.node} (its own is ${nodeSpiffeId(asNode.trustDomain, node)})`);
              return;
            }
            if (!mine.has(identity)) throw new Refusal(grpc.status.PERMISSION_DENIED, 'foreign_identity', `node ${node} may not have ${identity}: no workload with that identity on node ${node}`);
          });
          this.stats.issued++;
          this.opts.log.info({ node, via: who.via, identity: issued.identity, serial: issued.serial, notAfter: issued.notAfter.toISOString() }, 'certificate issued');
          cb(null, { cert_chain: issued.certChain });
        })().catch((e: unknown) => this.refuse('CreateCertificate', call.getPeer(), who, e, cb));
      },
    } as unknown as grpc.UntypedServiceImplementation;
  }

  /** Handlers of TrustBundleService (any known node may read the bundle). */
  bundleHandlers(): grpc.UntypedServiceImplementation {
    return {
      GetTrustBundle: (call: grpc.ServerUnaryCall<object, TrustBundleResponse>, cb: grpc.sendUnaryData<TrustBundleResponse>) => {
        this.authenticate(call.metadata).then(() => cb(null, { roots: this.opts.ca.trustBundle() }), (e: unknown) => this.refuse('GetTrustBundle', call.getPeer(), undefined, e, cb));
      },
    } as unknown as grpc.UntypedServiceImplementation;
  }

  /** Add both services to `server`. */
  addTo(server: grpc.Server): void {
    const { certificate, bundle } = caServices();
    server.addService(certificate, this.certificateHandlers());
    server.addService(bundle, this.bundleHandlers());
  }
}

export interface CaFlags {
  caDir?: string;
  caCert?: string;
  caKey?: string;
  caChain?: string;
  certTtl?: string;
  nodeTokens?: string;
  trustDomain: string;
}

/** What the control plane's server needs to serve the CA (ServeOptions.ca): the authority and how nodes authenticate. */
export interface CaSetup {
  authority: CertificateAuthority;
  tokens?: NodeTokens;
  kube?: KubeCaAuth;
}

/**
 * The CA and node credentials the flags ask for, or undefined when no CA flag is given (the control plane then serves
 * xDS only). `kube` (serve --kubernetes) lets agents authenticate with service-account tokens, so that --node-tokens
 * is optional there. Throws CaConfigError naming the flag at fault.
 */
export async function caFromFlags(f: CaFlags, parseDurationMs: (v: string) => number | string, kube?: KubeCaAuth): Promise<CaSetup | undefined> {
  const any = f.caDir || f.caCert || f.caKey || f.caChain || f.nodeTokens || f.certTtl;
  if (!any) return undefined;
  if (f.caDir && (f.caCert || f.caKey || f.caChain)) throw new CaConfigError('--ca-dir or --ca-cert/--ca-key (--ca-chain): one of them');
  if (!f.caDir && !(f.caCert && f.caKey)) throw new CaConfigError('the CA needs --ca-dir <dir>, or --ca-cert <file> with --ca-key <file>');
  if (!f.nodeTokens && !kube) throw new CaConfigError('the CA needs --node-tokens <file> (or serve --kubernetes, where agents authenticate with their service-account token): nodes must authenticate to obtain certificates');
  let certTtlS: number | undefined;
  if (f.certTtl !== undefined) {
    const ms = parseDurationMs(f.certTtl);
    if (typeof ms === 'string') throw new CaConfigError(`--cert-ttl: ${ms}`);
    if (ms < 60_000 || ms % 1000 !== 0) throw new CaConfigError(`--cert-ttl ${f.certTtl}: expected whole seconds, at least 1m`);
    certTtlS = ms / 1000;
  }
  const tokens = f.nodeTokens ? NodeTokens.fromFile(f.nodeTokens) : undefined;
  const { CertificateAuthority } = await import('./ca.js');
  const common = { trustDomain: f.trustDomain, certTtlS };
  const authority = f.caDir
    ? await CertificateAuthority.fromDir({ ...common, dir: f.caDir })
    : await CertificateAuthority.fromFiles({ ...common, certFile: f.caCert!, keyFile: f.caKey!, chainFile: f.caChain });
  return { authority, tokens, kube };
}
