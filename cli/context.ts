// What every command needs: where the agent instance lives, how to ask it, how to read its pins when it is down,
// and how to print (text for people, exactly one JSON document with --json).
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { runDirFor, type StateFile } from '../agent/admin/protocol.js';
import { MapReader } from '../agent/datapath/inspect.js';
import { AdminClient, AgentUnreachable } from './client.js';
import { CliError, EXIT } from './errors.js';
import { styleFor, type Style } from './style.js';

export interface GlobalOptions { bpffs: string; runDir?: string; json: boolean; timeout: number }

export interface Output { write(s: string): unknown; isTTY?: boolean }

/**
 * state.json's services as written (integer id -> name), whatever the file holds: a string there read as a list of
 * its characters, and ids like "-" became NaN keys (found by fuzzing); anything else is dropped.
 */
function serviceNamesOf(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return out;
  for (const [id, name] of Object.entries(v)) if (/^(0|[1-9]\d{0,9})$/.test(id) && typeof name === 'string') out[id] = name;
  return out;
}

export class Context {
  readonly bpffs: string;
  readonly runDir: string;
  readonly json: boolean;
  readonly client: AdminClient;
  readonly style: Style;

  constructor(opts: GlobalOptions, readonly stdout: Output = process.stdout, readonly stderr: Output = process.stderr) {
    this.bpffs = resolve(opts.bpffs);
    this.runDir = opts.runDir ? resolve(opts.runDir) : runDirFor(this.bpffs);
    this.json = opts.json;
    this.client = new AdminClient(join(this.runDir, 'admin.sock'), opts.timeout);
    this.style = opts.json ? styleFor({}) : styleFor(stdout);
  }

  /** state.json (what the agent left for meshctl), or null when the agent never ran with this run dir (or it is unreadable). */
  state(): StateFile | null {
    try {
      const s = JSON.parse(readFileSync(join(this.runDir, 'state.json'), 'utf8')) as Partial<StateFile>;
      return { pid: Number(s.pid ?? 0), bpffs: String(s.bpffs ?? ''), cgroup: String(s.cgroup ?? ''), services: serviceNamesOf(s.services) };
    } catch {
      return null;
    }
  }

  /** Service id -> name, from state.json (the kernel maps hold only ids). */
  serviceNames(): Map<number, string> {
    return new Map(Object.entries(this.state()?.services ?? {}).map(([id, name]) => [Number(id), name]));
  }

  /** Whether a datapath is pinned at --bpffs (checked without the native addon, so exit 4 never depends on it). */
  hasPins(): boolean {
    return existsSync(join(this.bpffs, 'sm_services'));
  }

  /**
   * Read the pinned maps. `why` is the reason the agent could not answer; it goes into the error when the pins
   * cannot help either, so the one line says both what was tried and what failed.
   */
  readPins<T>(why: AgentUnreachable | null, fn: (r: MapReader) => T): T {
    const agentPart = why ? `${why.message}, and ` : '';
    if (!this.hasPins()) {
      throw new CliError(`${agentPart}no sockmesh datapath pinned at ${this.bpffs} (wrong --bpffs, or the agent never ran?)`, EXIT.noDatapath);
    }
    let reader: MapReader;
    try {
      reader = MapReader.fromPins(this.bpffs);
    } catch (e) {
      throw new CliError(`${agentPart}the pins at ${this.bpffs} cannot be read: ${(e as Error).message}`, why ? EXIT.agentDown : EXIT.error);
    }
    try {
      return fn(reader);
    } catch (e) {
      throw new CliError(`${agentPart}reading the pins at ${this.bpffs} failed: ${(e as Error).message}`, why ? EXIT.agentDown : EXIT.error);
    } finally {
      reader.close();
    }
  }

  /**
   * Ask the agent; when nobody answers, compute the same report from the pins and say so on stderr.
   * Agent errors (it answered, but with an error) are not papered over with the pins: they are reported.
   */
  async fromAgentOrPins<T>(path: string, fromPins: (r: MapReader, names: Map<number, string>) => T): Promise<{ value: T; source: 'agent' | 'pins' }> {
    try {
      return { value: await this.client.get<T>(path), source: 'agent' };
    } catch (e) {
      if (!(e instanceof AgentUnreachable)) throw e;
      const value = this.readPins(e, (r) => fromPins(r, this.serviceNames()));
      this.note(`${e.message}; reading the pinned maps at ${this.bpffs}`);
      return { value, source: 'pins' };
    }
  }

  /** One line on stderr, prefixed with the program name. */
  note(message: string): void {
    this.stderr.write(`meshctl: ${message}\n`);
  }

  /** Print the JSON document, or the text lines. */
  print(value: unknown, text: () => string[]): void {
    if (this.json) {
      this.stdout.write(JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n');
    } else {
      const lines = text();
      if (lines.length) this.stdout.write(lines.join('\n') + '\n');
    }
  }
}
