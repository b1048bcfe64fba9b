// The mesh settings from xDS (issue 13): sockmesh.mesh.v1 Node, Workload, Mtls and Authorization resources
// (xds/meshproto.ts) -> the model's `nodes`, `workloads`, `mtls` (and services' modes) and `authorization`, validated by
// the config file's own validators (model/meshconfig.ts, l7config.ts validateWorkloads): a bad resource is NACKed with
// the resource and field named ("Workload 'web': identity: must be a SPIFFE id ..."), and the last good state stays.
//
// What may arrive in any order is not an error: a workload of a node not served yet is left out until its Node
// arrives (no tunnel to it meanwhile), a policy or mode naming a service the listeners do not make (yet), or an L7 one,
// applies to nothing. Both are reported (XdsStatus.unsupported). Pure: no I/O, no gRPC.
import { Issues } from '../../model/fields.js';
import { validateWorkloads } from '../../model/l7config.js';
import { mtlsModeValue, validateAuthorization, validateMtls, validateNodes } from '../../model/meshconfig.js';
import type { AuthorizationPolicy, MeshNode, Model, MtlsMode, MtlsPolicy, Service, Workload } from '../../model/types.js';
import {
  MESH_FIELD, MESH_KIND, MESH_TYPE, MESH_TYPE_URLS, mtlsFileObj, nodeFileObj, policyFileObj, workloadFileObj,
} from '../../../xds/mesh.js';
import { unpackAny, type AnyMessage } from '../../../xds/protos.js';
import { joinErrors } from './errors.js';

type Obj = Record<string, any>;

export const isMeshType = (url: string): boolean => MESH_TYPE_URLS.includes(url);

/** The validated mesh settings. */
export interface MeshPart {
  nodes: MeshNode[];
  workloads: Workload[];
  mtls?: MtlsPolicy;
  serviceModes: ReadonlyMap<string, MtlsMode>;
  authorization: AuthorizationPolicy[];
}

const EMPTY: MeshPart = { nodes: [], workloads: [], serviceModes: new Map(), authorization: [] };

/** One response of a mesh type, checked: what commit() makes the state. */
export interface MeshCandidate {
  typeUrl: string;
  /** the type's decoded resources after the response, by name */
  resources: Map<string, Obj>;
  part: MeshPart;
}

/** A validation issue's path (`nodes[2].tunnelPort`) -> the resource and its field (`Node 'n3': tunnel_port`). */
function issueLine(kind: string, names: readonly string[], listKey: string, path: string, message: string): string {
  const m = new RegExp(`^${listKey}\\[(\\d+)\\]\\.?(.*)$`).exec(path);
  if (!m) return `${kind}: ${path ? `${path}: ` : ''}${message}`;
  const field = m[2]!.replace(/^[A-Za-z]+/, (f) => MESH_FIELD[f] ?? f);
  return `${kind} '${names[Number(m[1])] ?? m[1]}': ${field ? `${field}: ` : ''}${message}`;
}

const byName = <T>(m: Map<string, T>): [string, T][] => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));

export class MeshState {
  private readonly resources = new Map<string, Map<string, Obj>>(MESH_TYPE_URLS.map((u) => [u, new Map()]));
  private cur: MeshPart = EMPTY;

  /** Whether a control plane has sent any mesh resource (an Envoy-only one never does: the model is left as it is). */
  get empty(): boolean {
    return [...this.resources.values()].every((m) => m.size === 0);
  }

  /**
   * Check one response: decode every resource, replace the type's set (SotW: `complete`) or change it (delta), and
   * validate the whole type. A candidate, or the NACK reason.
   */
  prepare(typeUrl: string, incoming: { name?: string; any?: AnyMessage }[], removed: readonly string[], complete: boolean): MeshCandidate | string {
    const kind = MESH_KIND[typeUrl]!;
    const next = complete ? new Map<string, Obj>() : new Map(this.resources.get(typeUrl)!);
    for (const name of removed) next.delete(name);
    const errors: string[] = [];
    incoming.forEach((r, i) => {
      if (!r.any) return; // delta: a version with no body changes nothing here
      if (r.any.type_url !== typeUrl) return void errors.push(`resources[${i}]${r.name ? ` '${r.name}'` : ''}: type ${r.any.type_url} in a ${typeUrl} response`);
      let obj: Obj;
      try {
        obj = unpackAny<Obj>(r.any);
      } catch (e) {
        return void errors.push(`resources[${i}]${r.name ? ` '${r.name}'` : ''}: ${(e as Error).message}`);
      }
      const name = (obj['name'] as string | undefined) || r.name || '';
      if (!name) return void errors.push(`resources[${i}]: the ${kind} has no name`);
      if (r.name && r.name !== name) return void errors.push(`resources[${i}] '${r.name}': names itself '${name}'`);
      next.set(name, obj);
    });
    if (errors.length > 0) return joinErrors(errors);
    const part = { ...this.cur };
    const issues = new Issues('xds');
    const lines: string[] = [];
    const sorted = byName(next);
    const names = sorted.map(([n]) => n);
    const report = (listKey: string) => lines.push(...issues.list.map((i) => issueLine(kind, names, listKey, i.path, i.message)));
    switch (typeUrl) {
      case MESH_TYPE.node:
        part.nodes = validateNodes(sorted.map(([, o]) => nodeFileObj(o)), 'nodes', issues);
        report('nodes');
        break;
      case MESH_TYPE.workload: {
        part.workloads = validateWorkloads(sorted.map(([, o]) => workloadFileObj(o)), 'workloads', issues);
        report('workloads');
        // an address is one workload's (the file's checkMeshReferences): a second owner would make the tunnel's target
        // depend on the order
        const owners = new Map<string, string>();
        for (const w of part.workloads) {
          for (const a of w.addresses ?? []) {
            const o = owners.get(a);
            if (o !== undefined) lines.push(`${kind} '${w.name}': addresses: address ${a} is already an address of workload '${o}'`);
            else owners.set(a, w.name);
          }
        }
        break;
      }
      case MESH_TYPE.mtls: {
        const one = [...next.values()];
        if (one.length > 1) lines.push(`${kind}: ${one.length} resources (${names.join(', ')}): there is one, the mesh's`);
        const { mtls, services } = mtlsFileObj(one[0] ?? {});
        part.mtls = one.length === 0 ? undefined : validateMtls(mtls, 'mtls', issues);
        const modes = new Map<string, MtlsMode>();
        for (const [svc, mode] of Object.entries(services)) {
          const m = mtlsModeValue(mode, `services.${svc}`, issues);
          if (m) modes.set(svc, m);
        }
        part.serviceModes = modes;
        lines.push(...issues.list.map((i) => `${kind} '${names[0] ?? ''}': ${i.path.replace(/^mtls\.?/, '')}: ${i.message}`));
        break;
      }
      case MESH_TYPE.authorization: {
        // the control plane's order (the kernel counts per policy by place), then the name
        const ordered = sorted.map(([n, o]) => ({ n, ...policyFileObj(o) })).sort((a, b) => a.order - b.order || (a.n < b.n ? -1 : 1));
        part.authorization = validateAuthorization(ordered.map((p) => p.obj), 'authorization', issues);
        lines.push(...issues.list.map((i) => issueLine(kind, ordered.map((p) => p.n), 'authorization', i.path, i.message)));
        break;
      }
    }
    if (lines.length > 0) return joinErrors([...new Set(lines)]);
    return { typeUrl, resources: next, part };
  }

  /**
   * Whether the candidate leaves its type as it was: a delta reconnect's first answer for a type with nothing new (the
   * server answers every type asked for once, empty when the versions announced are current), a SotW resend.
   */
  unchanged(c: MeshCandidate): boolean {
    const cur = this.resources.get(c.typeUrl)!;
    if (cur.size !== c.resources.size) return false;
    for (const [name, obj] of c.resources) {
      const was = cur.get(name);
      if (was === undefined || (was !== obj && JSON.stringify(was) !== JSON.stringify(obj))) return false;
    }
    return true;
  }

  commit(c: MeshCandidate): void {
    this.resources.set(c.typeUrl, c.resources);
    this.cur = c.part;
  }

  /**
   * The listeners' model with the mesh settings (`part`: a candidate's, to apply before its commit), and what of them
   * applies to nothing (notes).
   */
  compose(model: Model, part: MeshPart = this.cur): { model: Model; notes: string[] } {
    if (part === EMPTY) return { model, notes: [] };
    const notes: string[] = [];
    const out: Model = { ...model };
    const nodes = new Set(part.nodes.map((n) => n.name));
    if (part.nodes.length > 0) out.nodes = part.nodes;
    else delete out.nodes;
    if (part.mtls) out.mtls = part.mtls;
    else delete out.mtls;
    if (part.authorization.length > 0) out.authorization = part.authorization;
    else delete out.authorization;
    // Workloads: the mesh's (complete: identity, node, addresses; cgroups for this node's), then those only an HTTP
    // listener's metadata defines (cgroups for its authz); a workload of a node not served is left out for now.
    const meshWl = part.workloads.filter((w) => {
      if (w.node === undefined || nodes.has(w.node)) return true;
      notes.push(`workload '${w.name}': its node '${w.node}' is not served (no Node resource): left out, no tunnel to it`);
      return false;
    });
    const named = new Set(part.workloads.map((w) => w.name));
    const workloads = [...meshWl, ...(model.workloads ?? []).filter((w) => !named.has(w.name))];
    if (workloads.length > 0) out.workloads = workloads;
    else delete out.workloads;
    const services = new Map(model.services.map((s) => [s.name, s]));
    for (const p of part.authorization) {
      for (const s of p.services ?? []) {
        const svc = services.get(s);
        if (!svc) notes.push(`authorization '${p.name}': service '${s}' is not served: the policy applies to it when it is`);
        else if (svc.http) notes.push(`authorization '${p.name}': service '${s}' has http rules: its http.authz decides, not this policy`);
      }
    }
    if (part.serviceModes.size > 0) {
      for (const s of part.serviceModes.keys()) if (!services.has(s)) notes.push(`mtls: service '${s}' is not served: its mode applies when it is`);
      out.services = model.services.map((s) => withMode(s, part.serviceModes.get(s.name)));
    }
    return { model: out, notes };
  }
}

/** A service with its mode from the Mtls resource: the same object for the same service and mode (no change seen). */
const moded = new WeakMap<Service, Service>();
function withMode(s: Service, mode: MtlsMode | undefined): Service {
  if (mode === undefined || s.mtls === mode) return s;
  let m = moded.get(s);
  if (!m || m.mtls !== mode) moded.set(s, (m = { ...s, mtls: mode }));
  return m;
}
