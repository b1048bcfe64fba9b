// Envoy's names that sockmesh reads (agent/sources/xds) and serves (controlplane/): the type URLs of the resources,
// of the filters inside listeners and of the load-balancing policies inside clusters, and the enum values both write.
import { lazyEnums } from './protos.js';

/** Every resource type sockmesh reads or serves, by type URL. */
export const TYPE = {
  listener: 'type.googleapis.com/envoy.config.listener.v3.Listener',
  route: 'type.googleapis.com/envoy.config.route.v3.RouteConfiguration',
  cluster: 'type.googleapis.com/envoy.config.cluster.v3.Cluster',
  endpoint: 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment',
} as const;
export type TypeUrl = (typeof TYPE)[keyof typeof TYPE];
export const TYPE_URLS: readonly string[] = Object.values(TYPE);

/** Filter configs we understand inside listeners (typed_config type URLs). */
export const FILTER = {
  tcpProxy: 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
  udpProxy: 'type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig',
  httpConnectionManager: 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
  router: 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
  networkRbac: 'type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC',
  httpRbac: 'type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC',
} as const;

/**
 * A Cluster's upstream HTTP protocol options: typed_extension_protocol_options holds one, keyed by this name (Envoy's
 * extension name, which is also the message's full name).
 */
export const HTTP_PROTOCOL_OPTIONS = 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions';
export const HTTP_PROTOCOL_OPTIONS_TYPE = `type.googleapis.com/${HTTP_PROTOCOL_OPTIONS}`;

/**
 * Load-balancing policies of a Cluster's load_balancing_policy (typed_extension_config type URLs), by the name of the
 * lb_policy value that means the same. A client takes the first policy of the list that it supports, and then
 * ignores lb_policy.
 */
export const LB_POLICY = {
  RANDOM: 'type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random',
  ROUND_ROBIN: 'type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin',
  LEAST_REQUEST: 'type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest',
  MAGLEV: 'type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev',
  RING_HASH: 'type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash',
} as const;
export type LbPolicyName = keyof typeof LB_POLICY;

/** Enum numbers the control plane writes (protobufjs encodes enums as numbers), looked up once in the protos. */
export const ENUM = lazyEnums({
  EDS: ['envoy.config.cluster.v3.Cluster.DiscoveryType', 'EDS'],
  RANDOM: ['envoy.config.cluster.v3.Cluster.LbPolicy', 'RANDOM'],
  ROUND_ROBIN: ['envoy.config.cluster.v3.Cluster.LbPolicy', 'ROUND_ROBIN'],
  LEAST_REQUEST: ['envoy.config.cluster.v3.Cluster.LbPolicy', 'LEAST_REQUEST'],
  MAGLEV: ['envoy.config.cluster.v3.Cluster.LbPolicy', 'MAGLEV'],
  HEALTHY: ['envoy.config.core.v3.HealthStatus', 'HEALTHY'],
  DRAINING: ['envoy.config.core.v3.HealthStatus', 'DRAINING'],
  TCP: ['envoy.config.core.v3.SocketAddress.Protocol', 'TCP'],
  UDP: ['envoy.config.core.v3.SocketAddress.Protocol', 'UDP'],
  V3: ['envoy.config.core.v3.ApiVersion', 'V3'],
  XX_HASH: ['envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash.HashFunction', 'XX_HASH'],
  OVERWRITE: ['envoy.config.core.v3.HeaderValueOption.HeaderAppendAction', 'OVERWRITE_IF_EXISTS_OR_ADD'],
  ALLOW: ['envoy.config.rbac.v3.RBAC.Action', 'ALLOW'],
  DENY: ['envoy.config.rbac.v3.RBAC.Action', 'DENY'],
});
