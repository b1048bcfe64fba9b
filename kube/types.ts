// The shapes of the Kubernetes resources sockmesh reads, as the API server sends them (JSON): only the fields the
// translation looks at, every one optional where the API lets it be absent. ObjectMeta is declared here only;
// kube/client.ts's `KubeObject { apiVersion?, kind?, metadata: ObjectMeta & { name } }` is structurally compatible:
// TypeScript's structural typing lets a reflector's objects be passed here without a cast. Pure types, no code.

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  /** RFC 3339; HTTPRoute precedence breaks ties by the oldest */
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

interface Obj {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
}

// ---- core/v1 Service ----

export type KProtocol = 'TCP' | 'UDP' | 'SCTP';

export interface KServicePort {
  name?: string;
  protocol?: KProtocol | string;
  port: number;
  /** a number, or the name of a container port (resolved per EndpointSlice by the slice controller) */
  targetPort?: number | string;
  nodePort?: number;
  appProtocol?: string;
}

export interface KServiceSpec {
  type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName' | string;
  /** 'None' = headless */
  clusterIP?: string;
  clusterIPs?: string[];
  ipFamilies?: ('IPv4' | 'IPv6' | string)[];
  ports?: KServicePort[];
  selector?: Record<string, string>;
  externalName?: string;
  externalIPs?: string[];
  sessionAffinity?: 'None' | 'ClientIP' | string;
  sessionAffinityConfig?: { clientIP?: { timeoutSeconds?: number } };
  publishNotReadyAddresses?: boolean;
  internalTrafficPolicy?: 'Cluster' | 'Local' | string;
  externalTrafficPolicy?: string;
  trafficDistribution?: 'PreferClose' | string;
  loadBalancerIP?: string;
}

export interface KService extends Obj {
  spec?: KServiceSpec;
  status?: { loadBalancer?: { ingress?: { ip?: string; hostname?: string }[] } };
}

// ---- discovery.k8s.io/v1 EndpointSlice ----

export interface KEndpointConditions {
  /** absent = true (the API's "unknown" means ready) */
  ready?: boolean | null;
  /** absent = the value of ready */
  serving?: boolean | null;
  /** absent = false */
  terminating?: boolean | null;
}

export interface KEndpoint {
  addresses: string[];
  conditions?: KEndpointConditions;
  hostname?: string;
  nodeName?: string;
  zone?: string;
  targetRef?: { kind?: string; namespace?: string; name?: string; uid?: string };
  hints?: { forZones?: { name: string }[]; forNodes?: { name: string }[] };
}

export interface KEndpointPort {
  /** the service port's name ('' or absent for a service's single unnamed port) */
  name?: string | null;
  protocol?: KProtocol | string | null;
  /** absent = all ports (the API allows it; no service port can use it) */
  port?: number | null;
  appProtocol?: string;
}

export interface KEndpointSlice extends Obj {
  addressType: 'IPv4' | 'IPv6' | 'FQDN' | string;
  endpoints?: KEndpoint[] | null;
  ports?: KEndpointPort[] | null;
}

// ---- core/v1 Pod, Namespace, Node ----

export interface KPod extends Obj {
  spec?: {
    nodeName?: string;
    serviceAccountName?: string;
    hostNetwork?: boolean;
    containers?: { name: string; resources?: KResources }[];
    initContainers?: { name: string; resources?: KResources; restartPolicy?: string }[];
  };
  status?: {
    phase?: 'Pending' | 'Running' | 'Succeeded' | 'Failed' | 'Unknown' | string;
    podIP?: string;
    podIPs?: { ip: string }[];
    /** set by the kubelet; when absent it is computed from the containers' resources as the kubelet does */
    qosClass?: 'Guaranteed' | 'Burstable' | 'BestEffort' | string;
  };
}

export interface KResources {
  requests?: Record<string, string | number>;
  limits?: Record<string, string | number>;
}

export type KNamespace = Obj;

export interface KNode extends Obj {
  spec?: { podCIDRs?: string[] };
  status?: { addresses?: { type: string; address: string }[] };
}

// ---- gateway.networking.k8s.io/v1 HTTPRoute ----

export interface KParentRef {
  group?: string;
  kind?: string;
  namespace?: string;
  name: string;
  sectionName?: string;
  port?: number;
}

export interface KBackendRef {
  group?: string;
  kind?: string;
  namespace?: string;
  name: string;
  port?: number;
  /** absent = 1 */
  weight?: number;
  filters?: KHTTPRouteFilter[];
}

export interface KHTTPPathMatch {
  /** absent = PathPrefix */
  type?: 'Exact' | 'PathPrefix' | 'RegularExpression' | string;
  /** absent = '/' */
  value?: string;
}

export interface KHTTPHeaderMatch {
  /** absent = Exact */
  type?: 'Exact' | 'RegularExpression' | string;
  name: string;
  value: string;
}

export interface KHTTPRouteMatch {
  path?: KHTTPPathMatch;
  headers?: KHTTPHeaderMatch[];
  queryParams?: KHTTPHeaderMatch[];
  method?: string;
}

export interface KHTTPHeaderFilter {
  set?: { name: string; value: string }[];
  add?: { name: string; value: string }[];
  remove?: string[];
}

export interface KHTTPRouteFilter {
  type: 'RequestHeaderModifier' | 'ResponseHeaderModifier' | 'RequestMirror' | 'RequestRedirect' | 'URLRewrite' | 'ExtensionRef' | string;
  requestHeaderModifier?: KHTTPHeaderFilter;
  responseHeaderModifier?: KHTTPHeaderFilter;
  requestRedirect?: {
    scheme?: string;
    hostname?: string;
    path?: { type: string; replaceFullPath?: string; replacePrefixMatch?: string };
    port?: number;
    statusCode?: number;
  };
  urlRewrite?: { hostname?: string; path?: { type: string; replaceFullPath?: string; replacePrefixMatch?: string } };
  requestMirror?: { backendRef: KBackendRef };
  extensionRef?: { group: string; kind: string; name: string };
}

export interface KHTTPRouteRule {
  name?: string;
  matches?: KHTTPRouteMatch[];
  filters?: KHTTPRouteFilter[];
  backendRefs?: KBackendRef[];
  /** Gateway API v1: durations like '10s', '500ms' (GEP-1742) */
  timeouts?: { request?: string; backendRequest?: string };
  /** experimental channel (GEP-1731) */
  retry?: { codes?: number[]; attempts?: number; backoff?: string };
  sessionPersistence?: unknown;
}

export interface KHTTPRoute extends Obj {
  spec?: { parentRefs?: KParentRef[]; hostnames?: string[]; rules?: KHTTPRouteRule[] };
  status?: { parents?: KRouteParentStatus[] };
}

export interface KCondition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  observedGeneration?: number;
  lastTransitionTime?: string;
}

export interface KRouteParentStatus {
  parentRef: KParentRef;
  controllerName: string;
  conditions: KCondition[];
}
