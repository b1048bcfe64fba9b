// EndpointSlices -> the backends of one Service port, with kube-proxy's semantics (pkg/proxy/endpointslicecache.go
// and pkg/proxy/topology.go, Kubernetes 1.31-1.33). Pure, no I/O.
//
// - A service port's endpoints come from every slice labelled kubernetes.io/service-name=<service> in its namespace,
//   from the slice port with the same name (and protocol) as the service port: the slice controller resolved
//   targetPort (a number or a container port's name) per pod, so two slices may give the same service port two
//   different numbers, and we use each slice's own.
// - An endpoint is its first address (as kube-proxy: the API says the others are "fungible"); the same address:port
//   in two slices (a pod moving between slices) is one backend, the ready copy winning.
// - Conditions: ready absent = ready; serving absent = ready; terminating absent = false. publishNotReadyAddresses:
//   every endpoint counts as ready (the slice controller marks them so; hand-made slices may not).
// - Which endpoints receive traffic (CategorizeEndpoints): the ready ones (filtered by zone hints when topology
//   applies); when none is ready, the serving-and-terminating ones. internalTrafficPolicy Local: the ready ones on
//   this node, else this node's serving-and-terminating ones, else none (kube-proxy drops the traffic; we give the
//   frontend no backends, so connect() is refused).
// - Topology (trafficDistribution PreferClose, or the service.kubernetes.io/topology-mode: Auto annotation): only
//   when this node's zone is known, every ready endpoint carries zone hints and at least one is hinted for this
//   zone; otherwise every ready endpoint (kube-proxy's canUseTopology).
import { canonicalAddress } from '../agent/model/address.js';
import type { Family, Protocol } from '../agent/model/types.js';
import type { KEndpointSlice, KService, KServicePort } from './types.js';

export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
export const ZONE_LABEL = 'topology.kubernetes.io/zone';
const TOPOLOGY_MODE = 'service.kubernetes.io/topology-mode';
/** the annotation topology-mode replaced (Kubernetes 1.27); kube-proxy still honours it */
const TOPOLOGY_HINTS = 'service.kubernetes.io/topology-aware-hints';

/** The node a result is computed for: where Local and PreferClose are decided. */
export interface NodeCtx {
  nodeName?: string;
  zone?: string;
}

export interface Endpoint {
  address: string;
  family: Family;
  port: number;
}

interface Candidate extends Endpoint {
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  nodeName?: string;
  zones?: string[];
}

/** A problem found in a slice: reported once per slice and field, whatever the number of ports that read it. */
export interface SliceProblem {
  slice: string;
  path: string;
  message: string;
}

const protocolOf = (p: string | null | undefined): string => (p ?? 'TCP').toUpperCase();

/** The model's protocol of a service port, or undefined for one the model has not (SCTP, or a misspelling). */
export function modelProtocol(p: string | undefined): Protocol | undefined {
  const k = protocolOf(p);
  return k === 'TCP' ? 'tcp' : k === 'UDP' ? 'udp' : undefined;
}

/**
 * Every candidate endpoint of one service port across its slices, deduplicated (ready copy wins), in a stable
 * order: slices by name, endpoints as listed.
 */
function candidates(svc: KService, sp: KServicePort, slices: readonly KEndpointSlice[], problems: SliceProblem[]): Candidate[] {
  const name = sp.name ?? '';
  const proto = protocolOf(sp.protocol);
  const allReady = svc.spec?.publishNotReadyAddresses === true;
  const out = new Map<string, Candidate>();
  for (const slice of slices) {
    const type = slice.addressType;
    if (type !== 'IPv4' && type !== 'IPv6') continue; // FQDN slices: kube-proxy ignores them too
    const family: Family = type === 'IPv4' ? 4 : 6;
    const sp2 = (slice.ports ?? []).find((p) => (p.name ?? '') === name && protocolOf(p.protocol) === proto);
    if (!sp2) continue;
    const port = sp2.port;
    const sname = slice.metadata.name ?? '?';
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
      problems.push({ slice: sname, path: `ports[${slice.ports!.indexOf(sp2)}].port`, message: `must be a port number 1-65535, got ${JSON.stringify(port ?? null)} (this port is left out)` });
      continue;
    }
    (slice.endpoints ?? []).forEach((ep, i) => {
      const text = ep?.addresses?.[0];
      const a = typeof text === 'string' ? canonicalAddress(text) : null;
      if (!a || a.family !== family) {
        problems.push({
          slice: sname,
          path: `endpoints[${i}].addresses[0]`,
          message: `must be an ${type} address (the slice's addressType), got ${JSON.stringify(text ?? null)} (this endpoint is left out)`,
        });
        return;
      }
      const c = ep.conditions ?? {};
      const ready = allReady || c.ready !== false;
      const cand: Candidate = {
        address: a.address,
        family,
        port,
        ready,
        serving: allReady || (c.serving ?? c.ready) !== false,
        terminating: c.terminating === true,
      };
      if (ep.nodeName) cand.nodeName = ep.nodeName;
      if (ep.hints?.forZones) cand.zones = ep.hints.forZones.map((z) => z.name);
      const key = `${a.address}|${port}`;
      const seen = out.get(key);
      if (!seen || (!seen.ready && cand.ready)) out.set(key, cand);
    });
  }
  return [...out.values()];
}

function topologyWanted(svc: KService): boolean {
  if (svc.spec?.trafficDistribution === 'PreferClose') return true;
  const a = svc.metadata.annotations ?? {};
  const mode = a[TOPOLOGY_MODE] ?? a[TOPOLOGY_HINTS];
  return mode !== undefined && mode.toLowerCase() === 'auto';
}

/** kube-proxy's canUseTopology. */
function canUseTopology(svc: KService, cands: readonly Candidate[], zone: string | undefined): boolean {
  if (!topologyWanted(svc) || !zone) return false;
  let forZone = false;
  for (const c of cands) {
    if (!c.ready) continue;
    if (!c.zones || c.zones.length === 0) return false;
    if (c.zones.includes(zone)) forZone = true;
  }
  return forZone;
}

/** kube-proxy's CategorizeEndpoints for one family: the endpoints that receive new connections. */
function categorize(svc: KService, cands: readonly Candidate[], node: NodeCtx): Candidate[] {
  const local = svc.spec?.internalTrafficPolicy === 'Local' && node.nodeName !== undefined;
  if (local) {
    const mine = cands.filter((c) => c.nodeName === node.nodeName);
    const ready = mine.filter((c) => c.ready);
    return ready.length > 0 ? ready : mine.filter((c) => c.serving && c.terminating);
  }
  const topo = canUseTopology(svc, cands, node.zone);
  const ready = cands.filter((c) => c.ready && (!topo || c.zones!.includes(node.zone!)));
  return ready.length > 0 ? ready : cands.filter((c) => c.serving && c.terminating);
}

/**
 * The backends of service port `sp` for `node`: per family, the endpoints kube-proxy would send new connections to.
 * Slices must be the service's own (see slicesByService).
 */
export function portEndpoints(svc: KService, sp: KServicePort, slices: readonly KEndpointSlice[], node: NodeCtx, problems: SliceProblem[]): Endpoint[] {
  const all = candidates(svc, sp, slices, problems);
  const out: Endpoint[] = [];
  for (const family of [4, 6] as const) {
    const mine = all.filter((c) => c.family === family);
    if (mine.length === 0) continue;
    for (const c of categorize(svc, mine, node)) out.push({ address: c.address, family: c.family, port: c.port });
  }
  return out;
}
