// Config text -> validated Model. Every problem in a config is collected and reported together,
// each with the file, the path to the field and what is wrong, so one edit-reload cycle fixes all
// of them. Unknown fields are errors: a misspelt 'wieght' must not silently mean weight 1.
import { createRequire } from 'node:module';
import type * as Yaml from 'yaml';
import { canonicalAddress, formatEndpoint, type CanonicalAddress } from './address.js';
import { defaultMaglevTableSize, isPrime, MAGLEV_MAX_SIZE, MAGLEV_MIN_SIZE } from './maglev.js';
import { clipQuoted } from './reasons.js';
import { duplicateJsonKeys, lineColumn } from './jsonkeys.js';
import { checkFields, describe, enumField, intField, isMapping, Issues, join, listField } from './fields.js';
import { validateHealthCheck, validateHttp, validateWorkloads, type ServiceShape } from './l7config.js';
import { checkMeshReferences, mtlsModeValue, validateAuthorization, validateMtls, validateNodes } from './meshconfig.js';
import {
  ConfigError,
  type Algorithm,
  type Family,
  type Frontend,
  type Model,
  type Protocol,
  type Service,
} from './types.js';

// yaml costs 35-37 ms to load: it is loaded when a text is first parsed, not with this module, which an agent fed by
// xDS or Kubernetes needs at its start for validation only (it never parses YAML).
let yamlLib: typeof Yaml | undefined;
const yaml = (): typeof Yaml => (yamlLib ??= createRequire(import.meta.url)('yaml') as typeof Yaml);

export { canonicalAddress } from './address.js';

export const MAX_VIPS = 8;
export const MAX_PORTS = 32;
export const MAX_WEIGHT = 10000;
export const MAX_AFFINITY_SECONDS = 86400;
export const DEFAULT_AFFINITY_SECONDS = 10800;
const ALGORITHMS: readonly Algorithm[] = ['random', 'weighted', 'maglev'];
const PROTOCOLS: readonly Protocol[] = ['tcp', 'udp'];
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

const TOP_FIELDS = ['services', 'workloads', 'nodes', 'mtls', 'authorization'] as const;
const SERVICE_FIELDS = ['name', 'vips', 'ports', 'algorithm', 'affinity', 'maglev', 'backends', 'healthCheck', 'http', 'mtls'] as const;
const PORT_FIELDS = ['port', 'protocol', 'targetPort'] as const;
const AFFINITY_FIELDS = ['timeoutSeconds'] as const;
const MAGLEV_FIELDS = ['tableSize'] as const;
const BACKEND_FIELDS = ['address', 'port', 'weight', 'group'] as const;

/** Parse YAML or JSON (chosen by the file name) and validate it into a Model; throws ConfigError. */
export function parseConfig(text: string, file: string): Model {
  const isJson = file.toLowerCase().endsWith('.json');
  const obj = isJson ? parseJson(text, file) : parseYaml(text, file);
  return modelFromObject(obj, file);
}

function parseJson(text: string, file: string): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const message = (e as Error).message;
    // V8: "Expected ',' or '}' after property value in JSON at position 42" (newer ones add
    // "(line 3 column 5)"); "Unexpected end of JSON input" carries no position: it is the end.
    const m = /^(.*?)(?: in JSON)? at position (\d+)/s.exec(message);
    const what = clipQuoted((m ? m[1]! : message).trim());
    const offset = m ? Number(m[2]) : text.length;
    const { line, col } = lineColumn(text, offset);
    throw new ConfigError([{ file, path: '', message: `JSON syntax error at line ${line}, column ${col}: ${what}` }]);
  }
  // JSON.parse keeps the last of two equal keys without a word: found by a scan of the text (jsonkeys.ts), with
  // their line. (The YAML parser did it before, JSON being YAML 1.2, at ~85% of the whole parse's time.)
  const dups = duplicateJsonKeys(text);
  if (dups.length > 0) {
    throw new ConfigError(
      dups.map((offset) => {
        const { line, col } = lineColumn(text, offset);
        return { file, path: '', message: `JSON error at line ${line}, column ${col}: duplicate key` };
      }),
    );
  }
  return value;
}

/** How many texts went through the YAML parser (tests: a JSON config goes through JSON.parse and jsonkeys.ts only). */
export const yamlParses = { count: 0 };

/** Characters YAML 1.2 does not allow in a stream (C0 and C1 controls but TAB, LF, CR, NEL; DEL; U+FFFE, U+FFFF). */
const NOT_YAML = /[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x84\x86-\x9F\uFFFE\uFFFF]/;

function parseYaml(text: string, file: string): unknown {
  // Binary junk stops here, before the parser spends ~20 bytes of memory per byte of it on hundreds of errors.
  const bad = NOT_YAML.exec(text);
  if (bad) {
    const { line, col } = lineColumn(text, bad.index);
    const code = bad[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0');
    throw new ConfigError([{ file, path: '', message: `YAML syntax error at line ${line}, column ${col}: control character U+${code} is not allowed (not a text file?)` }]);
  }
  const lc = new (yaml().LineCounter)();
  yamlParses.count++;
  const doc = yaml().parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((err) => {
        const { line, col } = lc.linePos(err.pos[0]);
        return { file, path: '', message: `YAML syntax error at line ${line}, column ${col}: ${clipQuoted(err.message)}` };
      }),
    );
  }
  // A list or mapping as a key (`? [a, b]`, `{[a]: 1}`, an alias of one; a `!!binary` or `!!timestamp` key, which is an
  // object too) has no JavaScript form: toJS would make it a
  // string with a process warning on stderr for each (found by the config-yaml fuzz target). No config field is named
  // like that: say so with the place, before the model's checks see a key nobody wrote.
  const key = collectionKey(doc);
  if (key !== undefined) {
    const { line, col } = lc.linePos(key);
    throw new ConfigError([{ file, path: '', message: `YAML error at line ${line}, column ${col}: a key must be a plain value (a name), not a list, a mapping, !!binary or !!timestamp` }]);
  }
  try {
    return doc.toJS({ maxAliasCount: 1000 });
  } catch (e) {
    // e.g. too many alias expansions (a "billion laughs" file)
    throw new ConfigError([{ file, path: '', message: `YAML error: ${clipQuoted((e as Error).message)}` }]);
  }
}

/** Where the first mapping key that is a collection or an object-valued scalar (or an alias of one) starts, if any. */
function collectionKey(doc: Yaml.Document): number | undefined {
  const y = yaml();
  let at: number | undefined;
  y.visit(doc, {
    Pair(_, pair) {
      const k = pair.key;
      if (!y.isNode(k)) return undefined;
      const node = y.isAlias(k) ? k.resolve(doc) : k;
      // a scalar can be an object too: `!!binary` is a Uint8Array, `!!timestamp` a Date (the yaml package warns alike)
      const object = y.isCollection(node) || (y.isScalar(node) && node.value !== null && typeof node.value === 'object');
      if (!object) return undefined;
      at = k.range?.[0] ?? 0;
      return y.visit.BREAK;
    },
  });
  return at;
}

// ---- validation ----

function addressValue(v: unknown, path: string, issues: Issues): CanonicalAddress | undefined {
  const a = typeof v === 'string' ? canonicalAddress(v.trim()) : null;
  if (a === null) {
    issues.add(path, `must be an IPv4 or IPv6 address literal (like 10.0.0.1 or fd00::1), got ${describe(v)}`);
    return undefined;
  }
  if (a.address === '0.0.0.0' || a.address === '::') {
    issues.add(path, `must not be the unspecified address ${a.address}`);
    return undefined;
  }
  return a;
}

/** A port entry as written; fields undefined where absent or invalid. */
interface PortEntry {
  index: number;
  port?: number;
  protocol: Protocol;
  targetPort?: number;
  valid: boolean;
}

interface BackendEntry {
  index: number;
  address?: CanonicalAddress;
  port?: number;
  weight: number;
  /** L7 backend group; undefined = 'default' */
  group?: string;
  valid: boolean;
}

interface Where {
  service: string;
  path: string;
}

/**
 * What a subset of services is validated against (see validateServices): the names and frontends of every other
 * service of the model. Frontends are keyed 'vip|port|protocol' (canonical VIP) and name their service.
 */
export interface OtherServices {
  names: { has(name: string): boolean };
  frontends: { get(key: string): string | undefined };
  /** The model's workload names (what L7 authorization rules may name); absent = none. */
  workloads?: { has(name: string): boolean };
}

export interface ValidateOptions {
  /**
   * A route may split to a backend group with no backends (answered 503 by the proxy). For xDS, where a cluster's
   * endpoints may all be unhealthy for a while: its clusters exist, refusing the service would NACK a valid update.
   */
  emptyGroupsAllowed?: boolean;
}

const NO_OTHERS: OtherServices = { names: new Set<string>(), frontends: new Map<string, string>() };

/** The uniqueness checks across services: within the list being validated, and against the others. */
class Registry {
  readonly names = new Map<string, number>();
  readonly frontends = new Map<string, Where>();
  constructor(readonly others: OtherServices, readonly options: ValidateOptions) {}
}

/** The key of a frontend in OtherServices.frontends. */
export const frontendKey = (vip: string, port: number, protocol: Protocol) => `${vip}|${port}|${protocol}`;

/**
 * Validate an already-parsed object (from YAML, JSON, or a control plane's translation) into a
 * Model; throws ConfigError listing every problem found.
 */
export function modelFromObject(obj: unknown, file: string): Model {
  const issues = new Issues(file);
  let services: Service[] = [];
  let workloads: Model['workloads'];
  const mesh: Pick<Model, 'nodes' | 'mtls' | 'authorization'> = {};
  if (obj === null || obj === undefined) {
    issues.add('', "the configuration is empty: expected a mapping with a 'services' list");
  } else if (!isMapping(obj)) {
    issues.add('', `must be a mapping with a 'services' list, got ${describe(obj)}`);
  } else {
    checkFields(obj, '', TOP_FIELDS, issues);
    const wl = listField(obj, 'workloads', '', false, issues);
    if (wl) workloads = validateWorkloads(wl, 'workloads', issues);
    const names = new Set((workloads ?? []).map((w) => w.name));
    const list = listField(obj, 'services', '', true, issues);
    if (list) services = validateList(list, issues, { ...NO_OTHERS, workloads: names }, {});
    const nl = listField(obj, 'nodes', '', false, issues);
    if (nl) mesh.nodes = validateNodes(nl, 'nodes', issues);
    if (obj['mtls'] !== undefined && obj['mtls'] !== null) mesh.mtls = validateMtls(obj['mtls'], 'mtls', issues);
    const al = listField(obj, 'authorization', '', false, issues);
    if (al) mesh.authorization = validateAuthorization(al, 'authorization', issues);
    // The references between lists are checked once each list is valid: paths index the lists as written.
    if (issues.list.length === 0) {
      const byName = new Map(services.map((s) => [s.name, { l7: s.http !== undefined }]));
      checkMeshReferences({ workloads, ...mesh }, byName, issues);
    }
  }
  if (issues.list.length > 0) throw new ConfigError(issues.list);
  const model: Model = workloads ? { services, workloads } : { services };
  if (mesh.nodes) model.nodes = mesh.nodes;
  if (mesh.mtls) model.mtls = mesh.mtls;
  if (mesh.authorization) model.authorization = mesh.authorization;
  return model;
}

/**
 * Validate some services of a model against the rest of it, which is already valid: the same checks as
 * modelFromObject, with service names and frontends also unique against `others`. For a source that changes a few
 * services of a large model at a time (xDS): the cost follows the change, not the model. Issue paths are
 * `services[i]` with i the index in `objs`. Returns one Service per object, in order; throws ConfigError.
 */
export function validateServices(objs: readonly unknown[], file: string, others: OtherServices, options: ValidateOptions = {}): Service[] {
  const issues = new Issues(file);
  const services = validateList(objs, issues, others, options);
  if (issues.list.length > 0) throw new ConfigError(issues.list);
  return services;
}

function validateList(list: readonly unknown[], issues: Issues, others: OtherServices, options: ValidateOptions): Service[] {
  const registry = new Registry(others, options);
  const services: Service[] = [];
  list.forEach((raw, i) => {
    const svc = validateService(raw, i, issues, registry);
    if (svc) services.push(svc);
  });
  return services;
}

function validateService(raw: unknown, index: number, issues: Issues, registry: Registry): Service | undefined {
  const path = `services[${index}]`;
  if (!isMapping(raw)) {
    issues.add(path, `must be a mapping (a service), got ${describe(raw)}`);
    return undefined;
  }
  const before = issues.list.length;
  checkFields(raw, path, SERVICE_FIELDS, issues);

  // name
  let name: string | undefined;
  const n = raw['name'];
  if (n === undefined || n === null) {
    issues.add(join(path, 'name'), 'is required');
  } else if (typeof n !== 'string' || n.length > 63 || !DNS_LABEL.test(n)) {
    issues.add(
      join(path, 'name'),
      `must be a DNS label: 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit, got ${describe(n)}`,
    );
  } else {
    const seen = registry.names.get(n);
    if (seen !== undefined) issues.add(join(path, 'name'), `duplicate service name '${n}', also used by services[${seen}]`);
    else if (registry.others.names.has(n)) issues.add(join(path, 'name'), `duplicate service name '${n}', also used by another service`);
    else registry.names.set(n, index);
    name = n;
  }
  const label = name ?? path;

  // vips
  const vips: CanonicalAddress[] = [];
  let vipsValid = true;
  const vipList = listField(raw, 'vips', path, true, issues);
  if (vipList === undefined) vipsValid = false;
  else if (vipList.length < 1 || vipList.length > MAX_VIPS) {
    issues.add(join(path, 'vips'), `must list 1 to ${MAX_VIPS} addresses, got ${vipList.length}`);
    vipsValid = false;
  } else {
    const seen = new Map<string, number>();
    vipList.forEach((v, k) => {
      const a = addressValue(v, `${path}.vips[${k}]`, issues);
      if (!a) return void (vipsValid = false);
      const first = seen.get(a.address);
      if (first !== undefined) {
        issues.add(`${path}.vips[${k}]`, `duplicate VIP ${a.address}, same as vips[${first}]`);
        vipsValid = false;
        return;
      }
      seen.set(a.address, k);
      vips.push(a);
    });
  }

  // ports
  const ports: PortEntry[] = [];
  let portsValid = true;
  const portList = listField(raw, 'ports', path, true, issues);
  // "Several ports" means several port numbers: 53/udp + 53/tcp leave no doubt about which
  // backend port a backend without targetPort means, 80 + 443 do.
  const portNumbers = new Set((portList ?? []).map((p) => (isMapping(p) ? p['port'] : undefined)));
  const multiPort = portNumbers.size > 1;
  if (portList === undefined) portsValid = false;
  else if (portList.length < 1 || portList.length > MAX_PORTS) {
    issues.add(join(path, 'ports'), `must list 1 to ${MAX_PORTS} port entries, got ${portList.length}`);
    portsValid = false;
  } else {
    const seen = new Map<string, number>();
    portList.forEach((p, k) => {
      const pp = `${path}.ports[${k}]`;
      if (!isMapping(p)) {
        issues.add(pp, `must be a mapping like {port: 80, protocol: tcp}, got ${describe(p)}`);
        portsValid = false;
        return;
      }
      const mark = issues.list.length;
      checkFields(p, pp, PORT_FIELDS, issues);
      const port = intField(p, 'port', pp, 1, 65535, true, issues);
      const protocol = enumField(p, 'protocol', pp, PROTOCOLS, issues) ?? 'tcp';
      const targetPort = intField(p, 'targetPort', pp, 1, 65535, false, issues);
      if (multiPort && targetPort === undefined && (p['targetPort'] === undefined || p['targetPort'] === null)) {
        issues.add(join(pp, 'targetPort'), 'is required when a service has several port numbers (otherwise the backend port is ambiguous)');
      }
      const valid = issues.list.length === mark;
      if (!valid) portsValid = false;
      if (port !== undefined) {
        const key = `${port}/${protocol}`;
        const first = seen.get(key);
        if (first !== undefined) {
          issues.add(pp, `duplicate port ${key}, same as ports[${first}]`);
          portsValid = false;
        } else seen.set(key, k);
      }
      ports.push({ index: k, port, protocol, targetPort, valid });
    });
  }

  // algorithm
  const algorithm = enumField(raw, 'algorithm', path, ALGORITHMS, issues) ?? 'random';

  // affinity: absent = off; `affinity: {}` = on with the default timeout.
  let affinityTimeoutSeconds = 0;
  if (raw['affinity'] !== undefined) {
    const a = raw['affinity'];
    const ap = join(path, 'affinity');
    if (!isMapping(a)) {
      issues.add(ap, `must be a mapping (write 'affinity: {}' for the default timeout of ${DEFAULT_AFFINITY_SECONDS} s), got ${describe(a)}`);
    } else {
      checkFields(a, ap, AFFINITY_FIELDS, issues);
      affinityTimeoutSeconds =
        intField(a, 'timeoutSeconds', ap, 1, MAX_AFFINITY_SECONDS, false, issues) ?? DEFAULT_AFFINITY_SECONDS;
    }
  }

  // maglev
  let tableSize: number | undefined;
  const mg = raw['maglev'];
  if (mg !== undefined && mg !== null) {
    const mp = join(path, 'maglev');
    if (!isMapping(mg)) issues.add(mp, `must be a mapping like {tableSize: 1021}, got ${describe(mg)}`);
    else {
      checkFields(mg, mp, MAGLEV_FIELDS, issues);
      const size = intField(mg, 'tableSize', mp, MAGLEV_MIN_SIZE, MAGLEV_MAX_SIZE, false, issues);
      if (size !== undefined && !isPrime(size)) {
        let below = size - 1;
        while (!isPrime(below)) below--;
        let above = size + 1;
        while (!isPrime(above)) above++;
        const near = [below, above].filter((x) => x >= MAGLEV_MIN_SIZE && x <= MAGLEV_MAX_SIZE).join(' or ');
        issues.add(join(mp, 'tableSize'), `must be a prime, got ${size} (nearest primes: ${near})`);
      } else tableSize = size;
    }
  }

  // backends
  const backends: BackendEntry[] = [];
  const backendList = listField(raw, 'backends', path, false, issues) ?? [];
  backendList.forEach((b, j) => {
    const bp = `${path}.backends[${j}]`;
    if (!isMapping(b)) {
      issues.add(bp, `must be a mapping like {address: 10.0.0.1, port: 8080}, got ${describe(b)}`);
      return;
    }
    const mark = issues.list.length;
    checkFields(b, bp, BACKEND_FIELDS, issues);
    let address: CanonicalAddress | undefined;
    if (b['address'] === undefined || b['address'] === null) issues.add(join(bp, 'address'), 'is required (an IPv4 or IPv6 address)');
    else address = addressValue(b['address'], join(bp, 'address'), issues);
    const port = intField(b, 'port', bp, 1, 65535, false, issues);
    if (multiPort && port !== undefined) {
      issues.add(
        join(bp, 'port'),
        "must not be set when the service has several port numbers (ambiguous: each port entry's targetPort is the backend port)",
      );
    }
    const weight = intField(b, 'weight', bp, 0, MAX_WEIGHT, false, issues) ?? 1;
    let group: string | undefined;
    const g = b['group'];
    if (g !== undefined && g !== null) {
      if (typeof g !== 'string' || g.length > 63 || !DNS_LABEL.test(g)) {
        issues.add(join(bp, 'group'), `must be a group name (a DNS label: lowercase letters, digits or '-'), got ${describe(g)}`);
      } else if (g !== 'default') group = g; // 'default' is the group of backends without one: one spelling in the model
    }
    backends.push({ index: j, address, port, weight, group, valid: issues.list.length === mark });
  });

  // Duplicate backends: the same address and the same resolved port for some port entry within one backend group
  // (with several port numbers backends carry no port, so equal addresses are duplicates). Two groups may hold the
  // same endpoint: a canary split between a Service and a subset of its own pods (an HTTPRoute's backendRefs, or two
  // xDS clusters sharing endpoints) is the usual case; the kernel gives such an endpoint one backend id per service.
  // Only backends whose address another backend of the service also has can be duplicates: those are found first by
  // the address alone (a string the backend already holds, no key built), and only they go through the full check,
  // in their order. The full check for every backend was most of a 10,000-service xDS validation (a key string, an
  // array and a Set per backend).
  const resolveFor = (entry: PortEntry, b: BackendEntry): number | undefined => entry.targetPort ?? b.port ?? entry.port;
  const entries = ports.filter((e) => e.port !== undefined);
  const seenBackends = new Map<string, number>();
  const byAddress = new Map<string, number>();
  let shared: Set<string> | undefined;
  for (const b of backends) {
    if (!b.address) continue;
    const n = byAddress.get(b.address.address);
    if (n === undefined) byAddress.set(b.address.address, 1);
    else (shared ??= new Set()).add(b.address.address);
  }
  for (const b of shared ? backends : []) {
    if (!b.address || !shared!.has(b.address.address)) continue;
    const endpoints = entries.length > 0 ? entries.map((e) => resolveFor(e, b)) : [b.port];
    for (const port of new Set(endpoints)) {
      const key = `${b.group ?? ''}|${b.address.address}|${port ?? ''}`;
      const first = seenBackends.get(key);
      if (first === undefined) {
        seenBackends.set(key, b.index);
      } else if (first !== b.index) {
        const what = port !== undefined ? formatEndpoint(b.address.address, port) : b.address.address;
        issues.add(`${path}.backends[${b.index}]`, `duplicate backend ${what}, same as backends[${first}]`);
        break;
      }
    }
  }

  // Frontends: every VIP x every port entry; each gets the backends of its family, port resolved.
  const frontends: Frontend[] = [];
  if (vipsValid && portsValid) {
    const looped = new Set<number>();
    for (const vip of vips) {
      for (const entry of ports) {
        const fe: Frontend = { vip: vip.address, family: vip.family, port: entry.port!, protocol: entry.protocol, backends: [] };
        const fkey = frontendKey(fe.vip, fe.port, fe.protocol);
        const owner = registry.frontends.get(fkey);
        const other = owner ? undefined : registry.others.frontends.get(fkey);
        const shown = `${formatEndpoint(fe.vip, fe.port)}/${fe.protocol}`;
        if (owner) {
          issues.add(`${path}.ports[${entry.index}]`, `duplicate frontend ${shown}, also defined by service '${owner.service}' at ${owner.path}`);
        } else if (other !== undefined) {
          issues.add(`${path}.ports[${entry.index}]`, `duplicate frontend ${shown}, also defined by service '${other}'`);
        } else registry.frontends.set(fkey, { service: label, path });
        for (const b of backends) {
          if (!b.address || b.address.family !== vip.family) continue;
          const port = resolveFor(entry, b)!;
          if (b.address.address === fe.vip && port === fe.port && !looped.has(b.index)) {
            looped.add(b.index);
            issues.add(
              `${path}.backends[${b.index}]`,
              `backend ${formatEndpoint(b.address.address, port)} is the service's own frontend ${shown}: connections would loop`,
            );
          }
          fe.backends.push(
            b.group === undefined
              ? { address: b.address.address, family: b.address.family, port, weight: b.weight }
              : { address: b.address.address, family: b.address.family, port, weight: b.weight, group: b.group },
          );
        }
        frontends.push(fe);
      }
    }
  }

  // The L7 part (l7config.ts): what it needs to know of the rest of the service.
  let http: Service['http'];
  let healthCheck: Service['healthCheck'];
  if (raw['http'] !== undefined || raw['healthCheck'] !== undefined) {
    const groups = new Map<string, Set<Family>>();
    for (const b of backends) {
      if (!b.address) continue;
      const key = b.group ?? 'default';
      let fams = groups.get(key);
      if (!fams) groups.set(key, (fams = new Set()));
      fams.add(b.address.family);
    }
    const shape: ServiceShape = {
      label,
      ports: ports.map((e) => ({ index: e.index, protocol: e.protocol })),
      families: new Set(vips.map((v) => v.family)),
      groups,
      workloads: registry.others.workloads,
      emptyGroupsAllowed: registry.options.emptyGroupsAllowed === true,
    };
    if (raw['http'] !== undefined) http = validateHttp(raw['http'], join(path, 'http'), shape, issues);
    if (raw['healthCheck'] !== undefined) healthCheck = validateHealthCheck(raw['healthCheck'], join(path, 'healthCheck'), shape, issues);
  }

  let mtls: Service['mtls'];
  if (raw['mtls'] !== undefined && raw['mtls'] !== null) mtls = mtlsModeValue(raw['mtls'], join(path, 'mtls'), issues);

  if (issues.list.length > before || name === undefined) return undefined;
  const svc: Service = {
    name,
    algorithm,
    affinityTimeoutSeconds,
    maglevTableSize: tableSize ?? defaultMaglevTableSize(backends.length),
    frontends,
  };
  if (http) svc.http = http;
  if (healthCheck) svc.healthCheck = healthCheck;
  if (mtls) svc.mtls = mtls;
  return svc;
}
