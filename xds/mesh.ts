// The mesh settings over xDS (issue 13): the model's `nodes`, `workloads`, `mtls` (mesh, namespaces, services) and
// `authorization` as sockmesh.mesh.v1 resources (meshproto.ts), and those resources back as the config file's objects.
// The contract between the control plane (controlplane/mesh.ts, which serves them) and the agent's xDS client
// (agent/sources/xds/mesh.ts, which validates the file objects with the file's own validators).
import type { AuthorizationPolicy, MeshNode, Model, Workload } from '../agent/model/types.js';
import { DEFAULT_TUNNEL_PORT } from '../agent/model/mesh.js';
import { MESH_TYPE, MTLS_RESOURCE } from './meshproto.js';

export { MESH_TYPE, MESH_TYPE_URLS, MTLS_RESOURCE, type MeshTypeUrl } from './meshproto.js';

type Obj = Record<string, any>;

/** One mesh resource: its name and the message as protobufjs encodes it (field names as in the .proto). */
export interface MeshResourceObj {
  name: string;
  obj: Obj;
}

/** A workload's resource: what every node is served, and what its own node is served when that differs (cgroups). */
export interface WorkloadResourceObj extends MeshResourceObj {
  /** its node ('' = every node's own, served whole to all) */
  node: string;
  /** with its cgroups, for its own node only; undefined when it has none */
  own?: Obj;
}

export interface MeshResourceObjs {
  nodes: MeshResourceObj[];
  workloads: WorkloadResourceObj[];
  /** the one Mtls resource, when the model says anything about modes */
  mtls?: MeshResourceObj;
  authorization: MeshResourceObj[];
}

const list = <T>(v: T[] | undefined): T[] | undefined => (v && v.length > 0 ? v : undefined);

function nodeObj(n: MeshNode): Obj {
  const o: Obj = { name: n.name, addresses: n.addresses };
  if (n.tunnelPort !== undefined && n.tunnelPort !== DEFAULT_TUNNEL_PORT) o['tunnel_port'] = n.tunnelPort;
  return o;
}

function workloadObj(w: Workload, cgroups: boolean): Obj {
  const o: Obj = { name: w.name };
  if (w.identity !== undefined) o['identity'] = w.identity;
  if (w.node !== undefined) o['node'] = w.node;
  if (w.addresses?.length) o['addresses'] = w.addresses;
  if (cgroups && w.cgroups.length > 0) o['cgroups'] = w.cgroups;
  return o;
}

function policyObj(p: AuthorizationPolicy, order: number): Obj {
  const o: Obj = { name: p.name, action: p.action.toUpperCase(), order };
  if (p.services) o['services'] = p.services;
  if (p.from) {
    o['from'] = p.from.map((s) => ({
      principals: list(s.principals), namespaces: list(s.namespaces), not_principals: list(s.notPrincipals), not_namespaces: list(s.notNamespaces),
    }));
  }
  if (p.to) o['to'] = p.to.map((op) => ({ ports: op.ports }));
  return o;
}

/** The model's mesh settings as resources (the control plane's side). Service modes come from the services' `mtls`. */
export function meshResourceObjs(model: Model): MeshResourceObjs {
  const out: MeshResourceObjs = { nodes: [], workloads: [], authorization: [] };
  for (const n of model.nodes ?? []) out.nodes.push({ name: n.name, obj: nodeObj(n) });
  for (const w of model.workloads ?? []) {
    // A workload that is only a name for cgroups (what an L7 authz rule names) has nothing for the mesh: its HTTP
    // listeners carry it (http.ts), and serving it twice would apply a change of its cgroups twice.
    if (w.identity === undefined && w.node === undefined && !w.addresses?.length) continue;
    // A workload of a named node: its cgroups mean something on that node only. One without node is every node's own
    // (a config file's local workload): served whole to all, as each agent would read it from its file.
    if (w.node === undefined) out.workloads.push({ name: w.name, node: '', obj: workloadObj(w, true) });
    else {
      const r: WorkloadResourceObj = { name: w.name, node: w.node, obj: workloadObj(w, false) };
      if (w.cgroups.length > 0) r.own = workloadObj(w, true);
      out.workloads.push(r);
    }
  }
  const services: Record<string, string> = {};
  for (const s of model.services) if (s.mtls) services[s.name] = s.mtls;
  if (model.mtls || Object.keys(services).length > 0) {
    const o: Obj = { name: MTLS_RESOURCE };
    if (model.mtls) {
      o['mode'] = model.mtls.mode;
      if (Object.keys(model.mtls.namespaces).length > 0) o['namespaces'] = { ...model.mtls.namespaces };
    }
    if (Object.keys(services).length > 0) o['services'] = services;
    out.mtls = { name: MTLS_RESOURCE, obj: o };
  }
  (model.authorization ?? []).forEach((p, i) => out.authorization.push({ name: p.name, obj: policyObj(p, i) }));
  return out;
}

// ---- the agent's side: decoded resources -> the config file's objects ----

/** A decoded Node -> a `nodes[]` entry of the config file. */
export function nodeFileObj(r: Obj): Obj {
  const o: Obj = { name: r['name'], addresses: r['addresses'] ?? [] };
  if (r['tunnel_port'] !== undefined && r['tunnel_port'] !== 0) o['tunnelPort'] = r['tunnel_port'];
  return o;
}

/** A decoded Workload -> a `workloads[]` entry (cgroups [] for another node's: it needs none there). */
export function workloadFileObj(r: Obj): Obj {
  const o: Obj = { name: r['name'], cgroups: r['cgroups'] ?? [] };
  for (const k of ['identity', 'node'] as const) if (r[k] !== undefined && r[k] !== '') o[k] = r[k];
  if (r['addresses']?.length) o['addresses'] = r['addresses'];
  return o;
}

/** A decoded Mtls -> the top-level `mtls` ({mode, namespaces}) and the services' modes. */
export function mtlsFileObj(r: Obj): { mtls: Obj; services: Record<string, unknown> } {
  const mtls: Obj = {};
  if (r['mode'] !== undefined && r['mode'] !== '') mtls['mode'] = r['mode'];
  if (r['namespaces'] && Object.keys(r['namespaces']).length > 0) mtls['namespaces'] = r['namespaces'];
  return { mtls, services: r['services'] ?? {} };
}

/** A decoded Authorization -> an `authorization[]` entry, and its place in the list. */
export function policyFileObj(r: Obj): { obj: Obj; order: number } {
  const o: Obj = { name: r['name'] };
  if (r['action'] !== undefined) o['action'] = r['action'];
  if (r['services']?.length) o['services'] = r['services'];
  if (r['from']?.length) {
    o['from'] = (r['from'] as Obj[]).map((s) => {
      const src: Obj = {};
      if (s['principals']?.length) src['principals'] = s['principals'];
      if (s['namespaces']?.length) src['namespaces'] = s['namespaces'];
      if (s['not_principals']?.length) src['notPrincipals'] = s['not_principals'];
      if (s['not_namespaces']?.length) src['notNamespaces'] = s['not_namespaces'];
      return src;
    });
  }
  if (r['to']?.length) o['to'] = (r['to'] as Obj[]).map((op) => ({ ports: op['ports'] ?? [] }));
  return { obj: o, order: Number(r['order'] ?? 0) };
}

/** A file field of a mesh object -> its field in the resource (for NACK messages). */
export const MESH_FIELD: Record<string, string> = { tunnelPort: 'tunnel_port' };

/** The kind of resource a type URL names, as a person reads it in a NACK ("Workload 'web'"). */
export const MESH_KIND: Record<string, string> = {
  [MESH_TYPE.node]: 'Node', [MESH_TYPE.workload]: 'Workload', [MESH_TYPE.mtls]: 'Mtls', [MESH_TYPE.authorization]: 'Authorization',
};
