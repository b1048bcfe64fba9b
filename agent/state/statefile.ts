// <runDir>/state.json: the names and fixed facts meshctl needs while the agent is down (the kernel maps hold only
// ids). Its shape, StateFile, is defined here by its writer; the admin protocol re-exports it for meshctl, which
// reads it (cli/context.ts).
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../observe/log.js';

/** What the agent leaves in <runDir>/state.json so that meshctl can name things while it is down. */
export interface StateFile {
  pid: number;
  bpffs: string;
  cgroup: string;
  /** service id (as a string) -> name */
  services: Record<string, string>;
}

/** Where the names come from: `source` is replaced when the kernel is read back, `version` moves when a name does. */
export interface NamesSnapshot {
  source: object;
  version: number;
  names: () => ReadonlyMap<number, string>;
}

export class StateFileWriter {
  /**
   * The names version state.json was last written with: it holds the names and fixed facts only, so an endpoint
   * change does not rewrite it (10,000 names as JSON were ~1 MB of garbage per change).
   */
  private written?: { source: object; version: number };

  constructor(private readonly o: { runDir: string; bpffs: string; cgroup: string; log: Logger }) {}

  get path(): string {
    return join(this.o.runDir, 'state.json');
  }

  /** Write state.json if the names changed since the last write; a failure is logged, never thrown. */
  write(names: NamesSnapshot | undefined): void {
    try {
      this.writeNow(names);
    } catch (e) {
      this.o.log.warn({ error: (e as Error).message, runDir: this.o.runDir },
        'could not write state.json (meshctl will show ids, not names, while the agent is down)');
    }
  }

  private writeNow(names: NamesSnapshot | undefined): void {
    if (names && this.written?.source === names.source && this.written.version === names.version) return;
    mkdirSync(this.o.runDir, { recursive: true, mode: 0o700 });
    const state: StateFile = {
      pid: process.pid, bpffs: this.o.bpffs, cgroup: this.o.cgroup,
      services: Object.fromEntries(names?.names() ?? new Map<number, string>()),
    };
    const file = this.path;
    writeFileSync(`${file}.tmp`, JSON.stringify(state, null, 2));
    renameSync(`${file}.tmp`, file);
    this.written = names ? { source: names.source, version: names.version } : undefined;
  }
}
