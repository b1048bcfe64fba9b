// A scripted ADS server over real gRPC on 127.0.0.1, and xDS resources written as sockmesh's control plane writes
// them: for tests that must send exactly what they choose (NACK cases, hostile input, foreign resources).
import * as grpc from '@grpc/grpc-js';
import { FILTER, TYPE } from '../../xds/envoy.js';
import { adsService, packAny, protoRoot } from '../../xds/protos.js';

export type Obj = Record<string, any>;
export { TYPE, FILTER, packAny };

// ---- a scripted ADS server ----

export class Stream {
  readonly requests: Obj[] = [];
  private waiters: (() => void)[] = [];
  ended = false;
  constructor(readonly call: grpc.ServerDuplexStream<Obj, Obj>) {
    call.on('data', (m: Obj) => {
      this.requests.push(m);
      for (const w of this.waiters.splice(0)) w();
    });
    call.on('error', () => {});
    call.on('end', () => { this.ended = true; call.end(); });
  }
  private seen = 0;
  /** The next request not yet returned (optionally of one type), waiting up to 3 s. */
  async next(typeUrl?: string, ms = 3000): Promise<Obj> {
    const deadline = Date.now() + ms;
    for (;;) {
      while (this.seen < this.requests.length) {
        const r = this.requests[this.seen++]!;
        if (!typeUrl || r.type_url === typeUrl) return r;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${typeUrl ?? ''} request within ${ms} ms`);
      await new Promise<void>((res) => {
        const timer = setTimeout(res, left);
        this.waiters.push(() => { clearTimeout(timer); res(); });
      });
    }
  }
  /** True when no further request arrives within `ms`. */
  async quiet(ms = 300): Promise<Obj[]> {
    await new Promise((r) => setTimeout(r, ms));
    const rest = this.requests.slice(this.seen);
    this.seen = this.requests.length;
    return rest;
  }
  send(msg: Obj): void { this.call.write(msg); }
}

export class FakeAds {
  server = new grpc.Server();
  streams: Stream[] = [];
  private waiters: (() => void)[] = [];
  port = 0;
  async start(port = 0): Promise<void> {
    const handler = (call: grpc.ServerDuplexStream<Obj, Obj>) => {
      this.streams.push(new Stream(call));
      for (const w of this.waiters.splice(0)) w();
    };
    this.server.addService(adsService(), { StreamAggregatedResources: handler, DeltaAggregatedResources: handler });
    this.port = await new Promise<number>((res, rej) =>
      this.server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  }
  async stream(index: number, ms = 5000): Promise<Stream> {
    const deadline = Date.now() + ms;
    while (this.streams.length <= index) {
      if (Date.now() > deadline) throw new Error(`no stream #${index}`);
      await new Promise<void>((res) => { const tm = setTimeout(res, 50); this.waiters.push(() => { clearTimeout(tm); res(); }); });
    }
    return this.streams[index]!;
  }
  kill(): void { this.server.forceShutdown(); }
}

// ---- resources as our own control plane writes them ----
// packAny() verifies before converting, and protobufjs' verify wants enum numbers: look them up by name.
export const E = (enumName: string, value: string): number => protoRoot().lookupEnum(enumName).values[value]!;
export const TCP = E('envoy.config.core.v3.SocketAddress.Protocol', 'TCP');
export const lbPolicy = (name: string) => E('envoy.config.cluster.v3.Cluster.LbPolicy', name);
export const EDS = E('envoy.config.cluster.v3.Cluster.DiscoveryType', 'EDS');
export const V3 = E('envoy.config.core.v3.ApiVersion', 'V3');
export const HEALTHY = E('envoy.config.core.v3.HealthStatus', 'HEALTHY');

export const tcpListener = (vip: string, port: number, cluster: string): Obj => ({
  name: `${vip}:${port}/tcp`,
  address: { socket_address: { address: vip, port_value: port, protocol: TCP } },
  filter_chains: [{ filters: [{ name: 'envoy.filters.network.tcp_proxy', typed_config: packAny(FILTER.tcpProxy, { stat_prefix: cluster, cluster }) }] }],
});
export const edsCluster = (name: string, lb = 'ROUND_ROBIN', extra: Obj = {}): Obj => ({
  name, type: EDS, eds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3 } }, lb_policy: lbPolicy(lb), ...extra,
});
export const cla = (name: string, eps: [string, number, number?][]): Obj => ({
  cluster_name: name,
  endpoints: [{ lb_endpoints: eps.map(([address, port, weight]) => ({
    endpoint: { address: { socket_address: { address, port_value: port } } },
    load_balancing_weight: { value: weight ?? 1 }, health_status: HEALTHY,
  })) }],
});
/** Serve one service 'web' (127.77.1.1:80 -> 127.0.0.1:8080) on a new SotW stream, answering each request in order. */
export async function serveWeb(s: Stream): Promise<void> {
  await s.next(TYPE.listener);
  s.send(sotw(TYPE.listener, '1', 'l1', [tcpListener('127.77.1.1', 80, 'web')]));
  await s.next(TYPE.cluster);
  s.send(sotw(TYPE.cluster, '1', 'c1', [edsCluster('web')]));
  await s.next(TYPE.endpoint);
  s.send(sotw(TYPE.endpoint, '1', 'e1', [cla('web', [['127.0.0.1', 8080, 1]])]));
}
export const any = (typeUrl: string, objs: Obj[]) => objs.map((o) => packAny(typeUrl, o));
export const sotw = (typeUrl: string, version: string, nonce: string, objs: Obj[]) => ({ version_info: version, type_url: typeUrl, nonce, resources: any(typeUrl, objs) });
export const delta = (typeUrl: string, nonce: string, objs: [string, string, Obj][], removed: string[] = []) => ({
  type_url: typeUrl, nonce, system_version_info: nonce, removed_resources: removed,
  resources: objs.map(([name, version, o]) => ({ name, version, resource: packAny(typeUrl, o) })),
});

