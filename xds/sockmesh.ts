// What sockmesh says in Envoy resources beyond Envoy's own meaning: the contract between the control plane
// (controlplane/, which writes it) and the agent's xDS client (agent/sources/xds, which reads it back into the same
// model). Resource names, the `sockmesh` filter metadata, and the RBAC policy name that stands for "default: allow".
import { RESERVED_RULE_NAME } from '../agent/model/l7config.js';
import { fromStruct, toStruct } from './wellknown.js';

type Obj = Record<string, any>;

/** The RBAC policy name that stands for "everything else is allowed" (a name the model reserves for no rule). */
export const DEFAULT_ALLOW_POLICY = RESERVED_RULE_NAME;

/** `metadata` of a resource carrying `o` as filter_metadata.sockmesh (a Struct). */
export const sockmeshMetadata = (o: Obj): Obj => ({ filter_metadata: { sockmesh: toStruct(o) } });

/** The `sockmesh` filter metadata of a resource, as plain data; {} when absent. */
export function sockmeshMeta(resource: Obj): Obj {
  const s = resource.metadata?.filter_metadata?.sockmesh;
  return s ? fromStruct(s) : {};
}

/** The Listener of one VIP of a port entry: `vip:port/protocol` (an IPv6 VIP in brackets). */
export function listenerName(vip: string, port: number, protocol: 'tcp' | 'udp'): string {
  return `${vip.includes(':') ? `[${vip}]` : vip}:${port}/${protocol}`;
}

/** A name listenerName() makes: such a listener with one cluster is one port entry of the service of its cluster. */
export const OWN_LISTENER_NAME = /^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):\d+\/(tcp|udp)$/;

/**
 * Cluster of a port entry: the service name with one entry, `<service>:<port>` with several, and
 * `<service>:<port>/<protocol>` when two entries share a port number. serviceOfCluster() undoes it.
 */
export function entryClusterName(service: string, port: number, protocol: 'tcp' | 'udp', entries: number, samePort: number): string {
  if (entries === 1) return service;
  return samePort > 1 ? `${service}:${port}/${protocol}` : `${service}:${port}`;
}
export const serviceOfCluster = (cluster: string): string => cluster.replace(/:\d+(\/(tcp|udp))?$/, '');

/**
 * The cluster of a backend group of an HTTP port entry: `<entry cluster>~<group>`, then `~<upstream protocol>` when the
 * service sets one (a service name never holds '~', a group name is a DNS label). Never the entry cluster's own name,
 * which an L4 service's port entry has: a service that switches between L4 and L7, or between upstream protocols, gets
 * clusters of other names. Its new listener then waits (warms) for them and their endpoints while its old version stays
 * in force, and the switch is applied at once. With the same names the types arrive one by one (listeners, clusters,
 * then endpoints) and each is applied as it comes: an L4 frontend pointed for a moment at the h2c port of the L7
 * service it was (HTTP/2 frames to HTTP/1.1 clients), or the proxy spoke h2 to an HTTP/1.1 backend.
 */
export const groupCluster = (entryCluster: string, group: string, upstreamProtocol?: string): string =>
  `${entryCluster}~${group}${upstreamProtocol ? `~${upstreamProtocol}` : ''}`;
