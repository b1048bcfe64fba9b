// The config directory: every *.yaml, *.yml and *.json in it, each validated by the agent's own parseConfig, merged
// into one model. A service name or a frontend defined by two files is an error naming both. The directory is
// watched (editors save by rename as often as by write) and changes are debounced; a change that does not load is
// reported whole and the caller keeps serving the last good model.
import { readdirSync, watch, type FSWatcher } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseConfig } from '../agent/model/config.js';
import { BurstDebounce, CONFIG_MAX_WAIT_MS, readConfigText } from '../agent/sources/configtext.js';
import {
  ConfigError, type AuthorizationPolicy, type ConfigIssue, type MeshNode, type Model, type MtlsPolicy, type Service, type Workload,
} from '../agent/model/types.js';

const CONFIG_FILE = /^[^.].*\.(ya?ml|json)$/i; // hidden files (editor swap and lock files) are not config

export function configFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ConfigError([{ file: dir, path: '', message: `cannot read the config directory: ${err.code ?? err.message}` }]);
  }
  return names.filter((n) => CONFIG_FILE.test(n)).sort().map((n) => join(dir, n));
}

/** Load and merge every config file of `dir`; throws ConfigError listing every issue of every file. */
export function loadConfigDir(dir: string): { model: Model; files: string[] } {
  const files = configFiles(resolve(dir));
  const issues: ConfigIssue[] = [];
  const services: Service[] = [];
  const workloads = new Map<string, { w: Workload; file: string }>();
  const nodes = new Map<string, { w: MeshNode; file: string }>();
  const policies = new Map<string, { w: AuthorizationPolicy; file: string }>();
  let mtls: { m: MtlsPolicy; file: string } | undefined;
  const owners = new Map<string, string>(); // service name -> file
  const frontends = new Map<string, { file: string; service: string }>();
  for (const file of files) {
    let model: Model;
    try {
      // Read as the agent reads its file: over MAX_CONFIG_BYTES or not text, refused unread (and unquoted).
      model = parseConfig(readConfigText(file).text, file);
    } catch (e) {
      if (e instanceof ConfigError) issues.push(...e.issues);
      else {
        const msg = (e as Error).message;
        issues.push({ file, path: '', message: msg.startsWith(`${file}: `) ? msg.slice(file.length + 2) : msg });
      }
      continue;
    }
    // A workload, a node or a policy may be defined by several files (each file is validated alone: its workloads name
    // its own nodes, its policies its own services), identically; `mtls` by one file.
    mergeNamed(model.workloads, 'workloads', 'workload', workloads, file, issues);
    mergeNamed(model.nodes, 'nodes', 'node', nodes, file, issues);
    mergeNamed(model.authorization, 'authorization', 'policy', policies, file, issues);
    if (model.mtls) {
      if (!mtls) mtls = { m: model.mtls, file };
      else if (JSON.stringify(mtls.m) !== JSON.stringify(model.mtls)) issues.push({ file, path: 'mtls', message: `the mesh's mtls is also set, otherwise, in ${mtls.file}` });
    }
    model.services.forEach((svc, i) => {
      // parseConfig keeps services in file order and returns only when all are valid: index i is services[i].
      const other = owners.get(svc.name);
      if (other !== undefined) {
        issues.push({ file, path: `services[${i}].name`, message: `service '${svc.name}' is also defined in ${other}` });
        return;
      }
      owners.set(svc.name, file);
      for (const fe of svc.frontends) {
        const key = `${fe.vip}|${fe.port}|${fe.protocol}`;
        const prev = frontends.get(key);
        const shown = `${fe.vip.includes(':') ? `[${fe.vip}]` : fe.vip}:${fe.port}/${fe.protocol}`;
        if (prev) issues.push({ file, path: `services[${i}]`, message: `frontend ${shown} of service '${svc.name}' is also defined by service '${prev.service}' in ${prev.file}` });
        else frontends.set(key, { file, service: svc.name });
      }
      services.push(svc);
    });
  }
  if (issues.length > 0) throw new ConfigError(issues);
  const model: Model = workloads.size > 0 ? { services, workloads: [...workloads.values()].map((x) => x.w) } : { services };
  if (nodes.size > 0) model.nodes = [...nodes.values()].map((x) => x.w);
  if (mtls) model.mtls = mtls.m;
  if (policies.size > 0) model.authorization = [...policies.values()].map((x) => x.w);
  return { model, files };
}

/** Entries of one list of a file into `into` by name: the same name in two files must be the same entry. */
function mergeNamed<T extends { name: string }>(
  list: readonly T[] | undefined, key: string, what: string, into: Map<string, { w: T; file: string }>, file: string, issues: ConfigIssue[],
): void {
  (list ?? []).forEach((w, i) => {
    const seen = into.get(w.name);
    if (!seen) into.set(w.name, { w, file });
    else if (JSON.stringify(seen.w) !== JSON.stringify(w)) {
      const cgroups = (x: T) => JSON.stringify((x as { cgroups?: unknown }).cgroups);
      const how = cgroups(seen.w) !== cgroups(w) ? 'with other cgroups' : 'otherwise';
      issues.push({ file, path: `${key}[${i}]`, message: `${what} '${w.name}' is defined ${how} in ${seen.file}` });
    }
  });
}

export interface DirWatcherEvents {
  onModel(model: Model, files: string[]): void;
  onError(err: Error): void;
}

export class DirWatcher {
  private watcher?: FSWatcher;
  private debounce?: BurstDebounce;
  readonly dir: string;

  constructor(dir: string, private readonly events: DirWatcherEvents, private readonly debounceMs = 150) {
    this.dir = resolve(dir);
  }

  start(): void {
    // Every event reloads (debounced): a ConfigMap update or an `ln -sfn` deploy swaps a `..data` symlink and touches
    // no config file's name. An unchanged directory gives an unchanged model, which the snapshot treats as no change.
    // Debounced, but a directory rewritten faster than the debounce is still read every CONFIG_MAX_WAIT_MS.
    const debounce = (this.debounce = new BurstDebounce(() => this.reload(), this.debounceMs, CONFIG_MAX_WAIT_MS));
    this.watcher = watch(this.dir, () => debounce.poke());
    this.watcher.on('error', (e) => this.events.onError(new Error(`watching ${this.dir}: ${e.message}`)));
  }

  /** Load now; the outcome goes to the events. */
  reload(): void {
    let loaded: { model: Model; files: string[] };
    try {
      loaded = loadConfigDir(this.dir);
    } catch (e) {
      // A file caught half-written shows up here too; the event of the write that completes it retries.
      this.events.onError(e as Error);
      return;
    }
    this.events.onModel(loaded.model, loaded.files);
  }

  stop(): void {
    this.debounce?.cancel();
    this.watcher?.close();
  }
}
