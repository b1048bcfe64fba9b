// Reading the datapath's pinned maps into reports. Used by the agent's admin API and by meshctl directly when the
// agent is down (read-only: it only looks things up).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  AUTHZ_ALLOW, GLOBAL_COUNTERS, MAX_AUTHZ_POLICIES, PROTO, bytesToAddr, PROXY_F_HANDOVER_IN_MESH, PROXY_F_IN_MESH, STRUCTS, SVC_F_FAIL_OPEN, SVC_F_L7, decode, tableKey, decodeBackend, decodeService, decodeServiceKey, sumCounters, sumU64, u32,
  type Counters,
} from './abi.js';
import { native, type Native } from './native.js';
import type { MapName } from './datapath.js';
import { readStrict, type StrictDestination } from './strict.js';

const ALGO_NAMES = ['random', 'weighted', 'maglev'];
const PROTO_NAMES: Record<number, string> = { [PROTO.tcp]: 'tcp', [PROTO.udp]: 'udp' };

export interface CountersJson {
  connections: number; udpMessages: number; noBackend: number; redirects: number; redirectBytes: number; affinityHits: number;
}

export interface KernelBackendReport {
  id: number; address: string; port: number; weight: number; local: boolean;
  /** share of the frontend's selection table (what fraction of new connections it gets) */
  share: number;
  state: 'active' | 'drained';
  counters: CountersJson;
  /** the local pod with this address ('node' for the node's own), when known (agent/identity/podns.ts labelBackends) */
  pod?: string;
  /** connections to it on the fast path now (connecting sockets in the SOCKHASH, not pinned to TCP) */
  fastPath?: number;
}

export interface FrontendReport {
  serviceId: number; service: string; frontendId: number; vip: string; port: number; protocol: string;
  algorithm: string; affinityTimeoutSeconds: number; tableId: number; tableSize: number;
  /** an L7 service: connect() goes to the proxy; when it is down, to a backend (fail-open) or refused (fail-closed) */
  l7?: 'fail-open' | 'fail-closed';
  /** an L7 service's upstream protocol (http1, h2, downstream): the agent's model says it, not the kernel */
  upstreamProtocol?: string;
  backends: KernelBackendReport[];
}

export interface ServiceStats { serviceId: number; service: string; counters: CountersJson }

export interface StatsReport {
  global: Record<string, number>;
  services: ServiceStats[];
}

/** The L7 proxy as the kernel knows it (sm_proxy). */
export interface KernelProxyReport {
  v4: string | null; v6: string | null; port: number;
  /** the node addresses clients in other network namespaces (pods) are sent to; null = none (they get the fail mode) */
  nodeV4: string | null; nodeV6: string | null;
  /** cgroup v2 id of the proxy (decimal): its own connect() calls are never redirected */
  cgroupId: string;
  /** what the kernel redirects on: heartbeat younger than the timeout, and the loopback listener in sm_proxy_socks */
  alive: boolean;
  /**
   * The proxy's listening sockets the kernel holds (sm_proxy_socks), as host:port. One leaves when its socket closes,
   * so an announced address missing here means the agent died (or could not record it): its clients get the fail mode.
   */
  listeners: string[];
  /** ms since the last heartbeat; null = marked down (or never beating) */
  heartbeatAgeMs: number | null;
  timeoutMs: number;
  /** the proxy listens inside the meshed cgroup: the app-to-proxy leg can take the fast path */
  inMesh: boolean;
  /** the same for the tunnel hand-over's listeners (made below the meshed cgroup: datapath/meshsocket.ts) */
  handoverInMesh?: boolean;
}

export interface SocketReport {
  netnsCookie: string; local: string; remote: string; serviceId: number; backendId: number; tcpOnly: boolean; active: boolean;
  /** the pod the socket is in and its peer's ('node' for the node's namespace), when known (identity/podns.ts labelSockets) */
  pod?: string; peerPod?: string;
}

function countersJson(c: Counters): CountersJson {
  return {
    connections: Number(c.connections), udpMessages: Number(c.udp_messages), noBackend: Number(c.no_backend),
    redirects: Number(c.redirects), redirectBytes: Number(c.redirect_bytes), affinityHits: Number(c.affinity_hits),
  };
}

const hostport = (addr: string, port: number): string => (addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`);

/** Map fds for inspection: either handed over by a running datapath or opened from the pins. */
export class MapReader {
  private readonly owned: number[] = [];
  private constructor(private readonly fds: Partial<Record<MapName, number>>, readonly n: Native) {}

  static fromFds(fds: Record<MapName, number>, n = native()): MapReader { return new MapReader(fds, n); }

  /** Open the pins of an agent instance; throws naming the directory when there is nothing pinned there. */
  static fromPins(bpffs: string, n = native()): MapReader {
    if (!existsSync(join(bpffs, 'sm_services'))) {
      throw new Error(`no sockmesh datapath pinned at ${bpffs} (is the agent installed there? see --bpffs)`);
    }
    const r = new MapReader({}, n);
    for (const name of ['sm_services', 'sm_backends', 'sm_tables', 'sm_affinity', 'sm_revnat', 'sm_local_addrs', 'sm_svc_stats', 'sm_backend_stats', 'sm_global', 'sm_sockets', 'sm_sock_meta', 'sm_proxy', 'sm_proxy_socks', 'sm_identities', 'sm_authz', 'sm_authz_stats', 'sm_remote_pods', 'sm_strict', 'sm_strict_stats'] as MapName[]) {
      const p = join(bpffs, name);
      if (!existsSync(p)) continue;
      const fd = n.objGet(p);
      r.fds[name] = fd;
      r.owned.push(fd);
    }
    return r;
  }

  close(): void { for (const fd of this.owned) this.n.close(fd); }

  private fd(name: MapName): number {
    const fd = this.fds[name];
    if (fd === undefined) throw new Error(`map ${name} is not pinned`);
    return fd;
  }

  private tableCounts(tableId: number, size: number): Map<number, number> {
    const counts = new Map<number, number>();
    for (let i = 0; i < size; i++) {
      const v = this.n.mapLookup(this.fd('sm_tables'), tableKey(tableId, i));
      if (!v) continue;
      const id = v.readUInt32LE(0);
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    return counts;
  }

  private counters(map: MapName, id: number): CountersJson {
    const v = this.n.mapLookup(this.fd(map), u32(id));
    return countersJson(v ? sumCounters(v) : { connections: 0n, udp_messages: 0n, no_backend: 0n, redirects: 0n, redirect_bytes: 0n, affinity_hits: 0n });
  }

  frontends(names: ReadonlyMap<number, string> = new Map()): FrontendReport[] {
    // Backends grouped by service once: filtering all of them per frontend is 10^9 steps at 10k x 100k.
    const bySvc = new Map<number, [number, ReturnType<typeof decodeBackend>][]>();
    const bd = this.n.mapDump(this.fd('sm_backends'));
    bd.keys.forEach((k, i) => {
      const b = decodeBackend(bd.values[i]!);
      let list = bySvc.get(b.service_id);
      if (!list) bySvc.set(b.service_id, (list = []));
      list.push([k.readUInt32LE(0), b]);
    });
    const sd = this.n.mapDump(this.fd('sm_services'));
    const out: FrontendReport[] = sd.keys.map((k, i) => {
      const key = decodeServiceKey(k);
      const v = decodeService(sd.values[i]!);
      const counts = v.table_size ? this.tableCounts(v.table_id, v.table_size) : new Map<number, number>();
      const family = key.addr.includes(':') ? 10 : 2;
      const mine = (bySvc.get(v.service_id) ?? []).filter(([, b]) => b.family === family);
      return {
        serviceId: v.service_id, service: names.get(v.service_id) ?? `#${v.service_id}`, frontendId: v.frontend_id,
        vip: key.addr, port: key.port, protocol: PROTO_NAMES[key.proto] ?? String(key.proto),
        algorithm: ALGO_NAMES[v.algo] ?? String(v.algo), affinityTimeoutSeconds: v.affinity_timeout_s,
        tableId: v.table_id, tableSize: v.table_size,
        ...(v.flags & SVC_F_L7 ? { l7: v.flags & SVC_F_FAIL_OPEN ? 'fail-open' as const : 'fail-closed' as const } : {}),
        backends: mine.map(([id, b]) => ({
          id, address: b.addr, port: b.port, weight: b.weight, local: (b.flags & 1) !== 0,
          share: v.table_size ? (counts.get(id) ?? 0) / v.table_size : 0,
          state: b.weight === 0 || !counts.has(id) ? 'drained' as const : 'active' as const,
          counters: this.counters('sm_backend_stats', id),
        })).sort((a, b) => a.address.localeCompare(b.address) || a.port - b.port),
      };
    });
    return out.sort((a, b) => a.service.localeCompare(b.service) || a.vip.localeCompare(b.vip) || a.port - b.port);
  }

  /** The global counters (sm_global, summed over CPUs), by name. */
  globals(): Record<string, number> {
    const global: Record<string, number> = {};
    GLOBAL_COUNTERS.forEach((name, i) => {
      const v = this.n.mapLookup(this.fd('sm_global'), u32(i));
      global[name] = v ? Number(sumU64(v)) : 0;
    });
    return global;
  }

  stats(names: ReadonlyMap<number, string> = new Map()): StatsReport {
    const global = this.globals();
    const sd = this.n.mapDump(this.fd('sm_svc_stats'));
    const services = sd.keys.map((k, i) => {
      const id = k.readUInt32LE(0);
      return { serviceId: id, service: names.get(id) ?? `#${id}`, counters: countersJson(sumCounters(sd.values[i]!)) };
    }).sort((a, b) => a.service.localeCompare(b.service));
    return { global, services };
  }

  /** The proxy entry, or null when no agent announced one (or the pins predate the L7 redirect). */
  proxy(): KernelProxyReport | null {
    const fd = this.fds.sm_proxy;
    const found = fd !== undefined ? this.n.mapLookup(fd, u32(0)) : null;
    if (!found) return null;
    // Pins of an agent before ABI v4 hold a shorter value (no node addresses): read as all-zero there.
    const size = STRUCTS.sm_proxy.size;
    const v = found.length >= size ? found : Buffer.concat([found, Buffer.alloc(size - found.length)]);
    const d = decode('sm_proxy', v);
    const zero = (at: number): boolean => v.subarray(at, at + 16).every((b) => b === 0);
    const hb = d.heartbeat_ns as bigint;
    const timeout = d.timeout_ns as bigint;
    // Same clock as bpf_ktime_get_ns (CLOCK_MONOTONIC).
    const age = hb === 0n ? null : process.hrtime.bigint() - hb;
    const socks = this.fds.sm_proxy_socks;
    const listeners = socks === undefined ? [] : this.n.mapKeys(socks).map((k) => {
      const key = decode('sm_proxy_sock_key', k);
      return hostport(String(key.addr), Number(key.port));
    }).sort();
    // The first address a client in the proxy's netns is sent to (lib/l7.h sm_proxy_pick): v4, else v6.
    const first = zero(0) ? (zero(16) ? null : hostport(String(d.v6), Number(d.port))) : hostport(String(d.v4), Number(d.port));
    const listening = first !== null && listeners.includes(first);
    return {
      v4: zero(0) ? null : String(d.v4), v6: zero(16) ? null : String(d.v6), port: Number(d.port),
      nodeV4: zero(72) ? null : String(d.node_v4), nodeV6: zero(88) ? null : String(d.node_v6),
      cgroupId: String(d.cgroup_id), alive: age !== null && age >= 0n && age <= timeout && listening, listeners,
      heartbeatAgeMs: age === null ? null : Number(age / 1_000_000n), timeoutMs: Number(timeout / 1_000_000n),
      inMesh: (Number(d.flags) & PROXY_F_IN_MESH) !== 0, handoverInMesh: (Number(d.flags) & PROXY_F_HANDOVER_IN_MESH) !== 0,
    };
  }

  /** SOCKHASH entries, with their metadata. Keys of a SOCKHASH can be iterated but not its values (sockets). */
  sockets(): SocketReport[] {
    const metaFd = this.fds.sm_sock_meta;
    return this.n.mapKeys(this.fd('sm_sockets')).map((k) => {
      const key = decode('sm_sock_key', k);
      const meta = metaFd !== undefined ? this.n.mapLookup(metaFd, k) : null;
      const m = meta ? decode('sm_sock_meta', meta) : undefined;
      const flags = Number(m?.flags ?? 0);
      return {
        netnsCookie: String(key.netns_cookie),
        local: hostport(String(key.local_ip), Number(key.local_port)),
        remote: hostport(String(key.remote_ip), Number(key.remote_port)),
        serviceId: Number(m?.service_id ?? 0), backendId: Number(m?.backend_id ?? 0),
        tcpOnly: (flags & 2) !== 0, active: (flags & 1) !== 0,
      };
    });
  }

  /** The addresses in sm_local_addrs: the node's and its pods' (a socket whose peer is one of them may pair). */
  /** sm_identities: the workload cgroups (by id) whose callers have an identity, and its kernel id. */
  identities(): { cgroupId: bigint; identityId: number }[] {
    if (this.fds.sm_identities === undefined) return [];
    const { keys, values } = this.n.mapDump(this.fd('sm_identities'));
    return keys.map((k, i) => ({ cgroupId: k.readBigUInt64LE(0), identityId: values[i]!.readUInt32LE(0) }))
      .sort((a, b) => (a.cgroupId < b.cgroupId ? -1 : a.cgroupId > b.cgroupId ? 1 : 0));
  }

  /** sm_authz: the per-identity verdicts (service id, identity id 0 = none, pod port) -> verdict and deciding policy id. */
  authzVerdicts(): { serviceId: number; identityId: number; port: number; verdict: 'allow' | 'deny'; policyId: number }[] {
    if (this.fds.sm_authz === undefined) return [];
    const { keys, values } = this.n.mapDump(this.fd('sm_authz'));
    return keys.map((k, i) => {
      const key = decode('sm_authz_key', k), v = decode('sm_authz_verdict', values[i]!);
      return {
        serviceId: Number(key['service_id']), identityId: Number(key['identity_id']), port: Number(key['port']),
        verdict: v['verdict'] === AUTHZ_ALLOW ? 'allow' as const : 'deny' as const, policyId: Number(v['policy_id']),
      };
    }).sort((a, b) => a.serviceId - b.serviceId || a.identityId - b.identityId || a.port - b.port);
  }

  /** sm_authz_stats summed over CPUs: decisions per policy id (0 = the default), only slots that counted any. */
  authzStats(): { policyId: number; allowed: number; denied: number }[] {
    if (this.fds.sm_authz_stats === undefined) return [];
    const out: { policyId: number; allowed: number; denied: number }[] = [];
    const size = STRUCTS.sm_authz_counters.size;
    for (let id = 0; id < MAX_AUTHZ_POLICIES; id++) {
      const v = this.n.mapLookup(this.fd('sm_authz_stats'), u32(id));
      if (!v) continue;
      let allowed = 0, denied = 0;
      for (let o = 0; o + size <= v.length; o += size) {
        allowed += Number(v.readBigUInt64LE(o));
        denied += Number(v.readBigUInt64LE(o + 8));
      }
      if (allowed || denied) out.push({ policyId: id, allowed, denied });
    }
    return out;
  }

  /** mTLS strict mode: the destinations in sm_strict and what the ingress program counted per destination. */
  strict(): StrictDestination[] {
    return readStrict(this.n, this.fds.sm_strict, this.fds.sm_strict_stats);
  }

  localAddresses(): string[] {
    return this.n.mapKeys(this.fd('sm_local_addrs')).map((k) => bytesToAddr(k));
  }

  /** Entry counts and capacities of every map we can see. */
  fill(): { map: string; entries: number; maxEntries: number }[] {
    return (Object.entries(this.fds) as [MapName, number][])
      .filter(([name]) => !['sm_global', 'sm_events', 'sm_config', 'sm_proxy', 'sm_authz_stats'].includes(name))
      .map(([name, fd]) => ({ map: name, entries: this.n.mapKeys(fd).length, maxEntries: this.n.mapInfo(fd).maxEntries }));
  }
}
