// The mesh settings as sockmesh's own xDS resource types (issue 13): the .proto text both ends load into the same
// protobufjs root as Envoy's (protos.ts), and their type URLs. Istio's ztunnel gets its workloads and policies the same
// way, as its own types (istio.workload.Address, istio.security.Authorization) on the same ADS stream as Envoy's; these
// are sockmesh's, shaped after the config file's top-level `nodes`, `workloads`, `mtls` and `authorization`, so that the
// agent validates them with the file's validators. A leaf: protos.ts imports it, mesh.ts builds on both.

/** The mesh resource types, by type URL. Subscribed as wildcards (every resource of the type for this node). */
export const MESH_TYPE = {
  node: 'type.googleapis.com/sockmesh.mesh.v1.Node',
  workload: 'type.googleapis.com/sockmesh.mesh.v1.Workload',
  mtls: 'type.googleapis.com/sockmesh.mesh.v1.Mtls',
  authorization: 'type.googleapis.com/sockmesh.mesh.v1.Authorization',
} as const;
export type MeshTypeUrl = (typeof MESH_TYPE)[keyof typeof MESH_TYPE];
export const MESH_TYPE_URLS: readonly string[] = Object.values(MESH_TYPE);

/** The name of the one Mtls resource (the mesh-wide settings). */
export const MTLS_RESOURCE = 'mesh';

/**
 * Modes and actions are strings, as in the config file: the agent's validators say what a bad one is, naming the
 * resource and field, where an enum would have decoded an unknown number silently.
 */
export const MESH_PROTO = `
syntax = "proto3";
package sockmesh.mesh.v1;

// A node of the mesh: where its agent's HBONE tunnel end listens. Resource name: the node name (--node-id).
message Node {
  string name = 1;
  repeated string addresses = 2;
  uint32 tunnel_port = 3;        // 0 = 15008
}

// A workload: the pods of one identity on one node. Resource name: the workload name. A node is served the cgroups of
// its own workloads only (who a local client is); other nodes' workloads come with their identity, node and addresses.
message Workload {
  string name = 1;
  string identity = 2;           // spiffe://<trust domain>/ns/<ns>/sa/<sa>
  string node = 3;               // '' = every node's own (a config file's workload without node)
  repeated string addresses = 4;
  repeated string cgroups = 5;
}

// The mTLS modes (strict, permissive, off). One resource, named "mesh"; none = permissive everywhere.
message Mtls {
  string name = 1;
  string mode = 2;                     // the mesh-wide mode; '' = permissive
  map<string, string> namespaces = 3;  // namespace -> mode
  map<string, string> services = 4;    // service -> mode (its backends' ports), over the namespace's
}

// One L4 authorization policy (Istio's AuthorizationPolicy, L4 subset). Resource name: the policy name.
message Authorization {
  message Source {
    repeated string principals = 1;
    repeated string namespaces = 2;
    repeated string not_principals = 3;   // Istio's notPrincipals: none of them (a caller without identity matches)
    repeated string not_namespaces = 4;   // Istio's notNamespaces
  }
  message Operation {
    repeated uint32 ports = 1;
  }
  string name = 1;
  string action = 2;               // ALLOW or DENY
  repeated string services = 3;    // none = every L4 service
  repeated Source from = 4;        // none = any source
  repeated Operation to = 5;       // none = any port
  uint32 order = 6;                // its place in the policy list (the kernel counts per policy by place)
}
`;
