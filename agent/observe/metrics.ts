// The agent's Prometheus endpoint: one prom-client Registry owned by the agent (the proxy policy registers its L7
// families in the same one), served as GET /metrics on --metrics-listen.
//
// Everything here is computed when scraped: the kernel's per-CPU counters are read from the maps then (nothing
// polls them in between), and health verdicts come from BackendStates and the checker as they are at that moment.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry, collectDefaultMetrics } from './prom.js';
import { GLOBAL_COUNTERS, decodeBackend, sumCounters, sumU64, u32, type Counters } from '../datapath/abi.js';
import type { Native } from '../datapath/native.js';
import type { Model } from '../model/types.js';
import type { BackendStates } from '../health/states.js';
import type { HealthChecker } from '../health/checker.js';
import { backendKey } from '../health/effective.js';
import type { Panic } from '../health/effective.js';
import type { Logger } from './log.js';

/** --metrics-listen: HOST:PORT or [V6]:PORT; '' or 'off' = no endpoint. Throws naming what is wrong. */
export function parseListen(spec: string): { host: string; port: number } | null {
  const s = spec.trim();
  if (s === '' || s === 'off') return null;
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(s) ?? /^([A-Za-z0-9.-]+):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new Error(`--metrics-listen ${spec}: expected HOST:PORT ([ADDR]:PORT for IPv6, port 0..65535), or 'off'`);
  return { host: m[1]!, port };
}

interface Sample { labels: Record<string, string>; value: number }

/** A family computed at scrape time, in the shape prom-client's Registry formats (it calls get()). */
function family(name: string, help: string, type: 'counter' | 'gauge', collect: () => Sample[]) {
  return {
    name, help, type, aggregator: 'sum',
    get: () => Promise.resolve({ name, help, type, aggregator: 'sum', values: collect() }),
    reset: () => {},
  };
}

/** The kernel counters at one moment: global, per service and per backend (names resolved). */
export interface KernelCounters {
  global: Record<string, number>;
  services: { service: string; c: Counters }[];
  backends: { service: string; backend: string; c: Counters }[];
}

/** Read the counter maps in a few dumps (no per-slot or per-entry lookups: a scrape at 100k backends stays cheap). */
export function readKernelCounters(n: Native, fd: (map: 'sm_global' | 'sm_svc_stats' | 'sm_backends' | 'sm_backend_stats') => number,
  names: ReadonlyMap<number, string>): KernelCounters {
  const name = (id: number): string => names.get(id) ?? `#${id}`;
  const global: Record<string, number> = {};
  GLOBAL_COUNTERS.forEach((g, i) => {
    const v = n.mapLookup(fd('sm_global'), u32(i));
    global[g] = v ? Number(sumU64(v)) : 0;
  });
  const sd = n.mapDump(fd('sm_svc_stats'));
  const services = sd.keys.map((k, i) => ({ service: name(k.readUInt32LE(0)), c: sumCounters(sd.values[i]!) }));
  const bd = n.mapDump(fd('sm_backends'));
  const byId = new Map<number, { service: string; backend: string }>();
  bd.keys.forEach((k, i) => {
    const b = decodeBackend(bd.values[i]!);
    byId.set(k.readUInt32LE(0), { service: name(b.service_id), backend: backendKey(b.addr, b.port) });
  });
  const st = n.mapDump(fd('sm_backend_stats'));
  const backends: KernelCounters['backends'] = [];
  st.keys.forEach((k, i) => {
    const who = byId.get(k.readUInt32LE(0));
    if (who) backends.push({ ...who, c: sumCounters(st.values[i]!) });
  });
  return { global, services, backends };
}

export interface MetricsSources {
  kernel: () => KernelCounters | undefined;
  model: () => Model | undefined;
  states: BackendStates;
  checker: () => HealthChecker | undefined;
  panics: () => Iterable<Panic>;
}

const COUNTER_FIELDS: [keyof Counters, string, string][] = [
  ['connections', 'connections_total', 'TCP connections balanced at connect()'],
  ['udp_messages', 'udp_messages_total', 'UDP messages balanced at sendmsg()'],
  ['no_backend', 'no_backend_total', 'connect()/sendmsg() refused because no backend was usable'],
  ['redirects', 'sockmap_redirects_total', 'sends handed to the peer socket by the sockmap fast path'],
  ['redirect_bytes', 'sockmap_redirect_bytes_total', 'bytes handed to the peer socket by the sockmap fast path'],
  ['affinity_hits', 'affinity_hits_total', 'connections that went to the backend of their session affinity'],
];

export class AgentMetrics {
  readonly registry: Registry;
  private readonly probes = new Map<string, { success: number; failure: number }>();
  private server?: Server;
  private defaultsOn = false;

  constructor(private readonly src: MetricsSources, registry = new Registry()) {
    this.registry = registry;
    const reg = (f: ReturnType<typeof family>): void => registry.registerMetric(f as never);
    // One kernel read per scrape, shared by every kernel family (each family's get() runs in the same scrape).
    let cached: { at: number; k: KernelCounters | undefined } | undefined;
    const kernel = (): KernelCounters | undefined => {
      const now = performance.now();
      if (!cached || now - cached.at > 100) cached = { at: now, k: src.kernel() };
      return cached.k;
    };
    for (const g of GLOBAL_COUNTERS) {
      reg(family(`sockmesh_datapath_${g}_total`, `datapath counter ${g} (all services, all CPUs)`, 'counter',
        () => { const k = kernel(); return k ? [{ labels: {}, value: k.global[g] ?? 0 }] : []; }));
    }
    for (const [field, suffix, help] of COUNTER_FIELDS) {
      reg(family(`sockmesh_service_${suffix}`, `${help}, per service`, 'counter',
        () => (kernel()?.services ?? []).map((s) => ({ labels: { service: s.service }, value: Number(s.c[field]) }))));
      if (field === 'no_backend') continue; // counted per service only: there is no backend to blame
      reg(family(`sockmesh_backend_${suffix}`, `${help}, per backend`, 'counter',
        () => (kernel()?.backends ?? []).map((b) => ({ labels: { service: b.service, backend: b.backend }, value: Number(b.c[field]) }))));
    }
    reg(family('sockmesh_backend_up', 'health check verdict per backend of a health-checked service (1 healthy, 0 failing)', 'gauge',
      () => this.verdicts()));
    reg(family('sockmesh_backend_in_service', 'whether a backend takes new connections (0: failed health check or ejected, unless panic keeps it; drained backends are left out)', 'gauge',
      () => this.inService()));
    reg(family('sockmesh_frontend_panic', 'frontends whose every backend is out, all kept in service (panic)', 'gauge',
      () => [...src.panics()].map((p) => ({ labels: { service: p.service, frontend: `${p.vip.includes(':') ? `[${p.vip}]` : p.vip}:${p.port}/${p.protocol}` }, value: 1 }))));
    reg(family('sockmesh_health_checks_total', 'health check probes completed, per service and result', 'counter',
      () => {
        const out: Sample[] = [];
        for (const [service, p] of this.probes) {
          out.push({ labels: { service, result: 'success' }, value: p.success }, { labels: { service, result: 'failure' }, value: p.failure });
        }
        return out;
      }));
  }

  /** Count a completed probe (the checker's onProbe). */
  probed(service: string, healthy: boolean): void {
    let p = this.probes.get(service);
    if (!p) this.probes.set(service, (p = { success: 0, failure: 0 }));
    if (healthy) p.success++; else p.failure++;
  }

  /** Forget per-service probe counts of services no longer in the model. */
  retain(services: ReadonlySet<string>): void {
    for (const s of this.probes.keys()) if (!services.has(s)) this.probes.delete(s);
  }

  /**
   * After a scoped update (changed = the services it may have touched, removed ones included): forget the probe
   * counts of those that are gone. The model is scanned only when one of them has counts, so the common scoped
   * change (an endpoint moved) costs a few lookups, not a pass over 10,000 services.
   */
  forgetRemoved(changed: ReadonlySet<string>, services: readonly { name: string }[]): void {
    const mine: string[] = [];
    for (const s of changed) if (this.probes.has(s)) mine.push(s);
    if (mine.length === 0) return;
    const present = new Set<string>();
    for (const svc of services) present.add(svc.name);
    for (const s of mine) if (!present.has(s)) this.probes.delete(s);
  }

  private verdicts(): Sample[] {
    const checker = this.src.checker();
    const out: Sample[] = [];
    if (!checker) return out;
    for (const svc of this.src.model()?.services ?? []) {
      if (!svc.healthCheck) continue;
      const seen = new Set<string>();
      for (const fe of svc.frontends) for (const b of fe.backends) {
        const key = backendKey(b.address, b.port);
        if (seen.has(key)) continue;
        seen.add(key);
        const r = checker.report(svc.name, key);
        if (r) out.push({ labels: { service: svc.name, backend: key }, value: r.healthy ? 1 : 0 });
      }
    }
    return out;
  }

  private inService(): Sample[] {
    const kept = new Set<string>();
    for (const p of this.src.panics()) for (const b of p.backends) kept.add(`${p.service}\0${b}`);
    const out: Sample[] = [];
    for (const svc of this.src.model()?.services ?? []) {
      const outOf = this.src.states.outOf(svc.name);
      const seen = new Set<string>();
      for (const fe of svc.frontends) for (const b of fe.backends) {
        const key = backendKey(b.address, b.port);
        if (b.weight === 0 || seen.has(key)) continue;
        seen.add(key);
        const up = !outOf.has(key) || kept.has(`${svc.name}\0${key}`);
        out.push({ labels: { service: svc.name, backend: key }, value: up ? 1 : 0 });
      }
    }
    return out;
  }

  /**
   * Serve GET /metrics; resolves with the address it listens on. fd: the listening socket received from the agent
   * this one replaces (a planned restart: the port is never closed), host and port then are only what was asked.
   */
  async listen(host: string, port: number, log?: Logger, fd?: number): Promise<string> {
    // Node's process metrics join when they can first be scraped: their code (with @opentelemetry/api) is no longer
    // loaded before the proxy serves (./prom.ts), and nothing reads the registry but this endpoint.
    if (!this.defaultsOn) {
      collectDefaultMetrics({ register: this.registry });
      this.defaultsOn = true;
    }
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      const read = req.method === 'GET' || req.method === 'HEAD';
      // The kubelet's readiness and liveness probe (deploy/agent/daemonset.yaml): cheap (no kernel read, unlike a
      // scrape), and true by construction: the agent starts this server last, after the programs are attached and the
      // admin socket serves, and stops it first.
      if (path === '/healthz' && read) {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(req.method === 'HEAD' ? undefined : 'ok\n');
        return;
      }
      if (path !== '/metrics' || !read) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found: the metrics are at GET /metrics (health at GET /healthz)\n');
        return;
      }
      this.registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': this.registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      }, (e: Error) => {
        log?.warn({ error: e.message }, 'collecting metrics failed');
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`collecting metrics failed: ${e.message}\n`);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = (): void => { server.off('error', reject); resolve(); };
      if (fd === undefined) server.listen(port, host, done);
      else server.listen({ fd }, done);
    });
    this.server = server;
    const a = server.address() as AddressInfo;
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics`;
  }

  /** the listening socket's fd (what a planned restart hands to the new agent), or undefined when not listening */
  fd(): number | undefined {
    // libuv's handle: Node has no public accessor (its cluster module uses the same field)
    const fd = (this.server as unknown as { _handle?: { fd?: unknown } } | undefined)?._handle?.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : undefined;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    const closed = new Promise<void>((r) => s.close(() => r()));
    s.closeAllConnections();
    await closed;
  }
}
