// The L7 proxy as the agent runs it: what the kernel is told of it (Datapath.setProxy), its listeners with their
// fallbacks (IPv4 only without IPv6 on loopback; a node address that cannot be listened on is withdrawn), the
// listening sockets themselves (Datapath.proxyListener: the kernel drops them when this process dies, so a crash
// applies the fail modes at the next connect()), and the heartbeat for a proxy that is there but not serving.
import type { Datapath, ProxySettings } from './datapath/datapath.js';
import type { ProxyPolicy } from './proxy/policy.js';
import { ProxyServer, type ProxyOptions } from './proxy/server.js';
import type { Logger } from './observe/log.js';
import { PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';

/** The GC pauses of the last few seconds (start, duration): what a late heartbeat is compared with. */
function watchGc(): { since(t: number): number; longest(t: number): number } {
  const pauses: { at: number; ms: number }[] = [];
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries() as PerformanceEntry[]) pauses.push({ at: e.startTime, ms: e.duration });
    const old = performance.now() - 10_000;
    while (pauses.length > 0 && pauses[0]!.at < old) pauses.shift();
  });
  obs.observe({ entryTypes: ['gc'] });
  const within = (t: number) => pauses.filter((p) => p.at >= t);
  return {
    since: (t) => within(t).reduce((a, p) => a + p.ms, 0),
    longest: (t) => within(t).reduce((a, p) => Math.max(a, p.ms), 0),
  };
}

export interface ProxyHostOptions {
  /** the listener port (default 15001) */
  port?: number;
  /** default '127.0.0.1'; '' = no IPv4 listener */
  v4?: string;
  /** default '::1'; '' = none (IPv6 VIPs then go to the IPv4 listener, v4-mapped) */
  v6?: string;
  /** node addresses for clients in other network namespaces; '' or absent = none */
  nodeV4?: string;
  nodeV6?: string;
  /** heartbeat interval (default 1000 ms); the kernel counts the proxy as down after 3 intervals without one */
  heartbeatMs?: number;
  /** the proxy's own cgroup id (never redirected to itself) */
  cgroupId: bigint;
  /** the proxy runs inside the meshed cgroup: its accepted sockets join the fast path too */
  inMesh: boolean;
  /**
   * A planned restart (agent/handover.ts): the running agent's listening sockets, accepted on instead of listening
   * (port and addresses then are the ones they are bound to), and the kernel's record is written alive.
   */
  takeover?: { host: string; fd: number }[];
  /** the proxy's upstream connections through the HBONE tunnel (proxytunnel.ts), for backends on other nodes */
  tunnel?: ProxyOptions['tunnel'];
}

/** What a planned restart hands the new agent of the proxy: where it listens, and the listening sockets. */
export interface ProxyHandover {
  port: number;
  v4: string;
  v6: string;
  nodeV4: string;
  nodeV6: string;
  listeners: { host: string; port: number; fd: number }[];
}

/** What the host needs of the datapath: announce the proxy, beat, mark it down, and where a connection was going. */
export type ProxyKernel = Pick<Datapath, 'setProxy' | 'setProxyNode' | 'heartbeat' | 'proxyDown' | 'originalDst' | 'proxyListener'>;

export class ProxyHost {
  /** what the kernel was told of the proxy */
  private settings: ProxySettings;
  private server?: ProxyServer;
  private heartbeatTimer?: NodeJS.Timeout;

  constructor(private readonly dp: ProxyKernel, private readonly policy: ProxyPolicy, private readonly o: ProxyHostOptions, private readonly log: Logger) {
    this.settings = {
      v4: o.v4 ?? '127.0.0.1', v6: o.v6 ?? '::1', port: o.port ?? 15001,
      cgroupId: o.cgroupId, timeoutMs: 3 * (o.heartbeatMs ?? 1000), inMesh: o.inMesh,
      nodeV4: o.nodeV4 ?? '', nodeV6: o.nodeV6 ?? '',
    };
  }

  /** Tell the kernel where the proxy will listen; it counts as down until start() (L7 services follow their fail mode). */
  announce(): void {
    this.dp.setProxy(this.settings, this.o.takeover !== undefined);
  }

  /** Listen for the connections the kernel redirects to the proxy, then start the heartbeat that lets it redirect. */
  async start(): Promise<void> {
    const { dp, log } = this;
    const proxy = new ProxyServer({
      policy: this.policy,
      originalDst: (address, port) => dp.originalDst(address, port),
      ...(this.o.tunnel ? { tunnel: this.o.tunnel } : {}),
      log: log.child({ component: 'proxy' }),
    });
    const port = this.settings.port;
    const [v4, v6] = [this.o.v4 ?? '127.0.0.1', this.o.v6 ?? '::1'];
    if (this.o.takeover) {
      // The same kernel sockets the previous agent accepted on: connections that arrived meanwhile wait in their
      // backlogs, and both agents accept until it lets go (ProxyHost.drain there).
      proxy.adopt(this.o.takeover);
      this.server = proxy;
      log.info({ port, listeners: this.o.takeover.map((l) => l.host) }, 'L7 proxy accepting on the listeners taken over');
      // The same sockets are in the kernel's record already (the old agent's); recorded again so that the record never
      // depends on what the old agent did.
      this.recordListeners();
      this.startHeartbeat();
      return;
    }
    // '' = no such listener (Node would take an empty host for every address of the machine)
    const hosts = [v4, v6].filter((h) => h !== '');
    for (const [i, host] of hosts.entries()) {
      try {
        await proxy.listen(port, [host]);
      } catch (e) {
        if (i === 0) {
          await proxy.close();
          log.error({ port, host, error: (e as Error).message }, 'the L7 proxy cannot listen: L7 services follow their fail mode');
          return;
        }
        // Without IPv6 on loopback (or with [v6]:port held by another process), v4 serves every client: the kernel is
        // told so, and IPv6 sockets reach the v4 listener v4-mapped. Left announced, the kernel would redirect them to
        // [v6]:port, to whoever listens there.
        log.warn({ port, host, error: (e as Error).message }, 'the L7 proxy listens on IPv4 only');
        this.withdraw('v6');
      }
    }
    // The node addresses (pods' way in) after loopback: one that cannot be listened on is withdrawn from the kernel, so
    // pod clients get their fail mode rather than a connection to whatever holds that address:port.
    for (const key of ['nodeV4', 'nodeV6'] as const) {
      const host = this.settings[key];
      if (!host) continue;
      try {
        await proxy.listen(port, [host]);
      } catch (e) {
        log.error({ port, host, error: (e as Error).message }, 'the L7 proxy cannot listen on its node address: clients in other network namespaces follow their fail mode');
        this.withdraw(key);
      }
    }
    this.server = proxy;
    // Before the first beat: the kernel redirects only to a listener it holds.
    this.recordListeners();
    log.info({ port, hosts: [v4, v6], nodeHosts: [this.settings.nodeV4 ?? '', this.settings.nodeV6 ?? ''] }, 'L7 proxy listening');
    this.startHeartbeat();
  }

  /**
   * Follow the node address pods route to (found from their routes, not configured): a new address is listened on
   * first and then given to the kernel (heartbeat and hand-overs kept); the old one's listener goes (its accepted
   * connections stay). An empty address changes nothing: the last one found stays (pods come back on it).
   */
  async followNode(node: { v4: string; v6: string }): Promise<void> {
    const server = this.server;
    if (!server) return; // not listening (yet, or it could not)
    for (const [key, want] of [['nodeV4', node.v4], ['nodeV6', node.v6]] as const) {
      const have = this.settings[key] ?? '';
      if (!want || want === have) continue;
      try {
        await server.listen(this.settings.port, [want]);
      } catch (e) {
        this.log.error({ port: this.settings.port, host: want, error: (e as Error).message }, 'the L7 proxy cannot listen on the node address pods route to');
        continue;
      }
      // in the kernel's record before the kernel is sent there (the old listener leaves it when it closes)
      this.recordListeners();
      if (have) server.unlisten(have);
      this.settings = { ...this.settings, [key]: want };
      this.dp.setProxyNode(this.settings.nodeV4 ?? '', this.settings.nodeV6 ?? '');
      this.log.info({ [key]: want, was: have || null }, 'L7 proxy: clients in pods are sent to the node address their routes use');
    }
  }

  /**
   * Put every listening socket into the kernel's record (sm_proxy_socks). Also for listeners taken over from another
   * agent: the same socket under the same key replaces itself. One that cannot be recorded is never redirected to:
   * its clients get their service's fail mode, said here rather than found out from refused connections.
   */
  recordListeners(): void {
    for (const l of this.server?.listeners() ?? []) {
      try {
        this.dp.proxyListener(l.host, l.port, l.fd);
      } catch (e) {
        this.log.error({ host: l.host, port: l.port, error: (e as Error).message }, 'the kernel cannot hold the L7 proxy\'s listener: its clients follow their fail mode');
      }
    }
  }

  /**
   * The proxy listens: tell the kernel now and every heartbeatMs. The beat runs on the proxy's event loop, so a
   * loop stalled for 3 intervals makes the kernel apply the fail modes until it recovers.
   */
  private startHeartbeat(): void {
    const dp = this.dp;
    if (this.heartbeatTimer) return;
    const interval = this.o.heartbeatMs ?? 1000;
    const gc = watchGc();
    let last = performance.now();
    const beat = (): void => {
      const now = performance.now();
      // A beat a whole interval late: the loop was held (an apply, a collection). Said with what the GC took meanwhile,
      // so a stall can be told from the collector; the kernel applies the fail modes at 3 intervals.
      const gap = now - last;
      if (gap > 2 * interval) this.log.warn({ gapMs: Math.round(gap), intervalMs: interval, gcMs: Math.round(gc.since(last)), longestGcMs: Math.round(gc.longest(last)) }, 'proxy heartbeat late: the event loop was held');
      last = now;
      try { dp.heartbeat(); } catch (e) { this.log.error({ error: (e as Error).message }, 'proxy heartbeat failed'); }
    };
    beat();
    this.heartbeatTimer = setInterval(beat, interval);
    this.heartbeatTimer.unref();
  }

  /** What a new agent takes over (agent/handover.ts); undefined while not listening (it then listens itself). */
  handover(): ProxyHandover | undefined {
    if (!this.server) return undefined;
    const s = this.settings;
    return { port: s.port, v4: s.v4, v6: s.v6, nodeV4: s.nodeV4 ?? '', nodeV6: s.nodeV6 ?? '', listeners: this.server.listeners() };
  }

  /**
   * A planned restart, once the new agent accepts on our listeners and beats for the proxy: stop beating (the record
   * is the new agent's: never marked down), stop accepting, finish what is under way (ProxyServer.drain), then close
   * what is left after timeoutMs.
   */
  async drain(timeoutMs: number): Promise<{ left: number }> {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    const server = this.server;
    if (!server) return { left: 0 };
    const r = await server.drain(timeoutMs);
    await server.close();
    this.server = undefined;
    return r;
  }

  /** Stop the heartbeat (the fail modes apply from the next connect(), not after the timeout), then the listeners. */
  async stop(): Promise<void> {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    try { this.dp.proxyDown(); } catch (e) { this.log.error({ error: (e as Error).message }, 'marking the proxy down failed'); }
    await this.server?.close();
  }

  /** A listener that could not be had is taken back from the kernel. */
  private withdraw(key: 'v6' | 'nodeV4' | 'nodeV6'): void {
    this.settings = { ...this.settings, [key]: '' };
    this.dp.setProxy(this.settings);
  }
}
