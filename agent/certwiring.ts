// Wiring for certificates: the flags (--node-token-file, --ca-address, --cert-ttl, --node-id, --trust-domain) -> the
// certificate manager (identity/certs.ts) over the control plane's CA API (xds/ca.ts), fed with this node's own
// identity (spiffe://<td>/sockmesh/node/<--node-id>, the tunnel server's) and the identities of the workloads the model
// places on this node. With them the agent runs the HBONE tunnel (tunnelhost.ts). gRPC and the X.509 code are loaded
// only when it is configured.
import { readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { CertManager } from './identity/certs.js';
import { parseDuration } from './model/duration.js';
import { nodeNameProblem, nodeSpiffeId, parseSpiffeId } from './model/spiffe.js';
import type { Model } from './model/types.js';

export interface IdentityWiring {
  /** host:port of the control plane's CA API */
  address: string;
  tokenFile: string;
  tls?: { caFile: string; serverName?: string };
  /** this node's name, as the control plane's workloads[].node and nodes[].name name it */
  nodeId: string;
  /** --trust-domain: the node identity's */
  trustDomain: string;
  /** spiffe://<trustDomain>/sockmesh/node/<nodeId>: what this node's tunnel server presents */
  nodeIdentity: string;
  /** lifetime to ask for, seconds (0 = the CA's default) */
  ttlS: number;
}

/** The wiring the flags ask for, or undefined (no --node-token-file: no certificates). Throws naming the flag. */
export function identityWiring(o: { caAddress?: string; xds?: string; nodeTokenFile?: string; certTtl?: string; xdsCa?: string; xdsServerName?: string; nodeId?: string; trustDomain?: string }): IdentityWiring | undefined {
  if (!o.nodeTokenFile) {
    if (o.caAddress || o.certTtl) throw new Error('--ca-address and --cert-ttl need --node-token-file (the node\'s credential for the CA)');
    return undefined;
  }
  const address = o.caAddress ?? o.xds;
  if (!address) throw new Error('--node-token-file: which CA? give --ca-address <host:port> (or --xds, whose control plane then signs)');
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(address)) throw new Error(`--ca-address ${address}: expected HOST:PORT ([ADDR]:PORT for IPv6)`);
  readToken(o.nodeTokenFile); // a missing or empty file is a start-up error, not a retry loop
  let ttlS = 0;
  if (o.certTtl !== undefined) {
    const ms = parseDuration(o.certTtl);
    if (typeof ms === 'string') throw new Error(`--cert-ttl: ${ms}`);
    if (ms < 1000 || ms % 1000 !== 0) throw new Error(`--cert-ttl ${o.certTtl}: expected whole seconds, at least 1s`);
    ttlS = ms / 1000;
  }
  const nodeId = o.nodeId ?? hostname();
  const trustDomain = o.trustDomain ?? 'cluster.local';
  const bad = nodeNameProblem(nodeId);
  if (bad) throw new Error(`${o.nodeId === undefined ? `the hostname (the default --node-id)` : '--node-id'}: ${bad}; the node's identity spiffe://${trustDomain}/sockmesh/node/<node> is made from it (give --node-id)`);
  return {
    address, tokenFile: o.nodeTokenFile, nodeId, trustDomain, nodeIdentity: nodeSpiffeId(trustDomain, nodeId), ttlS,
    // the control plane's TLS, as for xDS (the token must not travel in the clear beyond a lab)
    tls: o.xdsCa ? { caFile: o.xdsCa, serverName: o.xdsServerName } : undefined,
  };
}

/** The token, read at each call so that a rotated file applies to the next request. */
function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new Error(`--node-token-file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (text === '' || /\s/.test(text)) throw new Error(`--node-token-file ${file}: expected one token (no spaces), got ${text === '' ? 'an empty file' : 'several words'}`);
  return text;
}

/** The identities of workloads on `nodeId`: workloads[].identity where .node is this node or absent (= this node). */
export function localIdentities(model: Model | undefined, nodeId: string, log?: Logger): string[] {
  const out = new Set<string>();
  for (const w of model?.workloads ?? []) {
    const { node, identity } = w;
    if ((node !== undefined && node !== nodeId) || identity === undefined) continue;
    try {
      parseSpiffeId(identity);
      out.add(identity);
    } catch (e) {
      log?.warn({ workload: w.name, error: (e as Error).message }, 'workload identity skipped: no certificate for it');
    }
  }
  return [...out];
}

/**
 * Every identity this node's agent holds a certificate for: its own node identity (the tunnel server's, wanted even
 * with no workload on the node) and its workloads'. A workload of another trust domain than --trust-domain is told:
 * a tunnel from it would be refused by every peer (the node identities it checks are of --trust-domain).
 */
const toldTrustDomain = new Set<string>();

export function wantedIdentities(model: Model | undefined, w: IdentityWiring, log?: Logger): string[] {
  const workloads = localIdentities(model, w.nodeId, log);
  for (const id of workloads) {
    const td = parseSpiffeId(id).trustDomain;
    if (td !== w.trustDomain && !toldTrustDomain.has(id)) toldTrustDomain.add(id) && log?.error({ identity: id, trustDomain: w.trustDomain }, `workload identity ${id} is of trust domain ${td}, not --trust-domain ${w.trustDomain}: its tunnels cannot work (node identities are of --trust-domain)`);
  }
  return [w.nodeIdentity, ...workloads];
}

export async function startCertManager(w: IdentityWiring, registry: Registry, log: Logger): Promise<CertManager> {
  const [{ CaClient }, { CertManager }] = await Promise.all([import('../xds/ca.js'), import('./identity/certs.js')]);
  if (!w.tls) log.warn({ address: w.address }, 'certificates: the CA API is called without TLS (--xds-ca): the node token travels in the clear');
  try {
    if (statSync(w.tokenFile).mode & 0o004) log.warn({ file: w.tokenFile }, 'the node token file is readable by everyone');
  } catch { /* checked by identityWiring */ }
  const client = new CaClient({ address: w.address, token: () => readToken(w.tokenFile), tls: w.tls });
  const certs = new CertManager({ ca: client, log: log.child({ component: 'certs' }), ttlS: w.ttlS, registry });
  const stop = certs.stop.bind(certs);
  certs.stop = () => {
    stop();
    client.close();
  };
  return certs;
}
