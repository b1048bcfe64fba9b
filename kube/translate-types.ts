// The types the translation's files share (translate.ts, translate-http.ts): its input, its output, and what one
// service's translation may read. Types only.
import type { NodeCtx } from './translate-endpoints.js';
import type { KCondition, KEndpointSlice, KHTTPRoute, KNode, KRouteParentStatus, KService } from './types.js';

export interface ClusterView {
  /** keyed by "<namespace>/<name>" (the key is not read: objects carry their own names) */
  services: ReadonlyMap<string, KService>;
  endpointSlices: ReadonlyMap<string, KEndpointSlice>;
  httpRoutes?: ReadonlyMap<string, KHTTPRoute>;
  nodes?: ReadonlyMap<string, KNode>;
}

/** The node the result is for (internalTrafficPolicy Local and PreferClose need it); {} = a cluster-wide result. */
export interface NodeScope {
  nodeName?: string;
  /** this node's topology.kubernetes.io/zone; absent = read from the node's labels in ClusterView.nodes */
  zone?: string;
}

export type UnservedKind =
  | 'headless'
  | 'external-name'
  | 'node-port'
  | 'load-balancer'
  | 'external-ips'
  | 'sctp'
  | 'other-proxy'
  | 'no-cluster-ip'
  | 'invalid';

/** A Service (or a part of one) that puts nothing in the kernel, and why. */
export interface Unserved {
  namespace: string;
  name: string;
  kind: UnservedKind;
  reason: string;
}

/** A problem in an object: which object, where in it, what is wrong. */
export interface TranslateIssue {
  /** e.g. "Service default/web", "EndpointSlice default/web-abc12", "HTTPRoute default/r" */
  object: string;
  /** the field, as in the object ('spec.ports[1].protocol'); '' = the object as a whole */
  path: string;
  message: string;
}

/** The status an HTTPRoute should have (its parents that are Services; the wiring writes it with the status API). */
export interface RouteStatusUpdate {
  namespace: string;
  name: string;
  /** metadata.generation the conditions were computed from (also in each condition's observedGeneration) */
  generation?: number;
  parents: KRouteParentStatus[];
}

export interface AttachedRoute {
  route: KHTTPRoute;
  key: string;
  /** indexes of the route's parentRefs that name this service (all of them a Service of this namespace) */
  parents: number[];
  /** "<ns>/<name>" of every Service its backendRefs name (they are inputs of the parent's translation) */
  backends: string[];
}

export interface RouteIndex {
  /** parent service key -> its routes, oldest first, then by namespace/name (the Gateway API's tie-break) */
  byParent: Map<string, AttachedRoute[]>;
  /** every route with a Service parentRef, and the parentRefs that did not attach (with their Accepted condition) */
  routes: Map<string, { route: KHTTPRoute; detached: Map<number, KCondition> }>;
  issues: TranslateIssue[];
}

/** What the translation of one service may read. */
export interface Ctx {
  node: NodeCtx;
  slices: ReadonlyMap<string, KEndpointSlice[]>;
  routes: RouteIndex;
  services: ReadonlyMap<string, KService>;
}
