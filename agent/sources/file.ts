// The file source: a YAML or JSON config file, watched for changes.
//
// Editors save by rename as often as by write, and Kubernetes ConfigMaps (or `ln -sfn` deploys) swap a `..data` symlink
// without touching the file's own name: so the whole directory is watched, an event for the file's name or a `..`
// name re-reads the file (debounced), and unchanged text is ignored.
// A file put in place whole (a rename or a symlink swap: the path names a new inode) is read at once. A file written in
// place (editors that write through, `cat > file`, a script writing in parts) is read only once it has settled: size and
// mtime unchanged for SETTLE_MS; read before that, a file written in two parts was applied with half its services.
// A change that does not parse or validate is reported and dropped whole: the caller keeps the last good model.
// What is reported is bounded: a file over MAX_CONFIG_BYTES is refused before it is read (./configtext.ts), and an
// error lists at most
// MAX_REASON_ERRORS problems in at most MAX_REASON_CHARS (a 50 MiB junk file once made a 130 MB log line).
import { statSync, watch, type FSWatcher } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { basename, dirname, resolve } from 'node:path';
import { parseConfig } from '../model/config.js';
import { joinErrors } from '../model/reasons.js';
import { ConfigError, type Model } from '../model/types.js';
import { BurstDebounce, CONFIG_MAX_WAIT_MS, RefusedFile, readConfigText, signature } from './configtext.js';

/**
 * How long a file written in place must keep its size and mtime before it is read: 1 s, twice the pause between the
 * two writes of a file that was once applied half-written, and short enough for a save to be in force within ~1 s.
 */
export const SETTLE_MS = 1000;

export interface FileSourceEvents {
  /** Apply; null when applied, else why not (the text is then tried again on the next change or SIGHUP). */
  onModel(model: Model, text: string): string | null;
  /** Why a change was not applied; the message is bounded (MAX_REASON_CHARS). */
  onError(err: Error): void;
}

/** An error as one bounded message: the first MAX_REASON_ERRORS lines (problems), at most MAX_REASON_CHARS. */
export function bounded(e: Error): Error {
  const lines = e instanceof ConfigError ? e.issues.map((i) => `${i.file}: ${i.path || '(root)'}: ${i.message}`) : [e.message];
  const out = new Error(joinErrors(lines, '\n'));
  out.name = e.name;
  return out;
}

/** parseConfig with its errors bounded. */
function parseBounded(text: string, path: string): Model {
  try {
    return parseConfig(text, path);
  } catch (e) {
    throw e instanceof Error ? bounded(e) : e;
  }
}

export function loadConfigFile(path: string): { model: Model; text: string } {
  const { text } = readConfigText(path);
  return { model: parseBounded(text, path), text };
}

/**
 * A config text this large is parsed off the event loop (ParserThread): at ~1.3 ms of CPU per KiB measured on a loaded
 * node, 64 KiB is ~85 ms, under half of the shortest heartbeat interval anyone runs (200 ms). Smaller texts are parsed
 * in place, where a thread's round trip would cost more than it saves.
 */
export const OFF_LOOP_BYTES = 64 * 1024;
/**
 * ...and only up to this size: the thread's copy of the text and its own heap add ~65 MiB at the 16 MiB limit, past
 * the bound unit/file-source-limits holds a junk file to (200 MiB RSS). A text this large blocks the loop as before.
 */
export const OFF_LOOP_MAX_BYTES = 4 * 1024 * 1024;

/**
 * The process's node options a thread takes too: module loaders and hooks (the tests' TypeScript loader), nothing else.
 * Process-wide V8 flags (the agent's --max-semi-space-size, --v8-pool-size: agent/runtime.ts) make the Worker
 * constructor throw ERR_WORKER_INVALID_EXEC_ARGV, and an inline script's (-e, --input-type) are not the thread's.
 */
export function workerExecArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  const withValue = ['--import', '--require', '-r', '--loader', '--experimental-loader', '--conditions', '-C'];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (withValue.includes(a) && i + 1 < argv.length) { out.push(a, argv[++i]!); continue; }
    if (withValue.some((w) => w.startsWith('--') && a.startsWith(`${w}=`)) || a === '--enable-source-maps') out.push(a);
  }
  return out;
}

/** The parser's thread, started at the first large text; it does not keep the process alive. */
export class ParserThread {
  private readonly worker: Worker;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve(m: Model): void; reject(e: Error): void }>();
  /** the thread failed or exited: the next text gets a new one */
  dead = false;

  constructor() {
    // the same extension as this module: .js when run from dist/, .ts under the tests' TypeScript loader
    const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
    this.worker = new Worker(new URL(`./parseworker${ext}`, import.meta.url), { execArgv: workerExecArgv(process.execArgv) });
    this.worker.unref();
    this.worker.on('message', (m: { id: number; model?: Model; error?: string; name?: string }) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.error !== undefined) {
        const e = new Error(m.error);
        e.name = m.name ?? 'Error';
        w.reject(e);
      }
      else w.resolve(m.model!);
    });
    this.worker.on('error', (e) => this.failAll(e));
    this.worker.on('exit', (code) => this.failAll(new Error(`the config parser thread exited (${code})`)));
  }

  parse(text: string, path: string): Promise<Model> {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, text, path });
    });
  }

  close(): void {
    void this.worker.terminate();
  }

  private failAll(e: Error): void {
    this.dead = true;
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
  }
}

export class FileSource {
  private parser?: ParserThread;
  private parsing = false;
  private nextText?: string;
  private stopped = false;
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;
  /** the watch's events, debounced with a longest wait */
  private watchEvents?: BurstDebounce;
  private lastText?: string;
  /** the version last read (whatever came of it): seen again, there is nothing to do */
  private lastSig?: string;
  /** the inode last read: a path naming another one was put in place whole */
  private lastIno?: bigint;
  /** a file written in place, seen with this signature since this time */
  private settling?: { sig: string; since: number };
  readonly path: string;

  constructor(
    path: string,
    private readonly events: FileSourceEvents,
    private readonly debounceMs = 100,
    private readonly settleMs = SETTLE_MS,
  ) {
    this.path = resolve(path);
  }

  /** Load once (throws on a bad file: at start there is no last good config to keep) and start watching. */
  start(): Model {
    const { text, sig, ino } = readConfigText(this.path);
    const model = parseBounded(text, this.path);
    this.lastText = text;
    this.lastSig = sig;
    this.lastIno = ino;
    const name = basename(this.path);
    // Only events that can concern the file: its own name, the kubelet's `..data` swap (names starting with '..'), or
    // none given. Any other file in the directory is not ours: a neighbour written continuously (a log beside the
    // config; the l7 bench's h2load log once) restarted the debounce on every write, so a change of the config itself
    // waited until the neighbour fell silent, and each write cost a timer.
    // Those events are debounced, but a file rewritten faster than the debounce is still read every CONFIG_MAX_WAIT_MS.
    this.watchEvents = new BurstDebounce(() => this.changed(), this.debounceMs, CONFIG_MAX_WAIT_MS);
    this.watcher = watch(dirname(this.path), (_event, filename) => {
      if (filename === null || filename === name || filename.startsWith('..')) this.watchEvents!.poke();
    });
    return model;
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.changed(), ms);
  }

  /** Something changed in the directory: read the file now if it was put in place whole, else once it settled. */
  private changed(): void {
    let sig: string;
    let ino: bigint;
    try {
      const st = statSync(this.path, { bigint: true });
      sig = signature(st);
      ino = st.ino;
    } catch {
      this.settling = undefined;
      this.reload(); // reports why it cannot be read
      return;
    }
    if (sig === this.lastSig) {
      this.settling = undefined; // another file in the directory, or a write that put back what was read
      return;
    }
    const now = Date.now();
    if (ino !== this.lastIno || (this.settling?.sig === sig && now - this.settling.since >= this.settleMs)) {
      this.settling = undefined;
      this.reload();
      return;
    }
    if (this.settling?.sig !== sig) this.settling = { sig, since: now };
    this.schedule(this.settling.since + this.settleMs - now);
  }

  /** Re-read now (also used for SIGHUP). */
  reload(): void {
    let loaded: { model: Model; text: string };
    try {
      const file = readConfigText(this.path);
      this.lastIno = file.ino;
      this.lastSig = file.changedWhileRead ? undefined : file.sig;
      if (file.changedWhileRead) {
        // caught mid-write: read again once it has settled
        this.settling = undefined;
        this.schedule(this.debounceMs);
        return;
      }
      if (file.text === this.lastText) return;
      // A text read while an older one is on the parser's thread waits behind it, whatever its size: parsed here at
      // once, a small one would be applied first and the older large one after it, putting a stale config in force.
      if (this.parsing) { this.nextText = file.text; return; }
      if (file.text.length >= OFF_LOOP_BYTES && file.text.length <= OFF_LOOP_MAX_BYTES) { this.parseOffLoop(file.text); return; }
      loaded = { model: parseBounded(file.text, this.path), text: file.text };
    } catch (e) {
      // A file removed for a moment by an editor shows up here too; the next event retries.
      if (e instanceof RefusedFile) [this.lastSig, this.lastIno] = [e.sig, e.ino];
      this.events.onError(bounded(e as Error));
      return;
    }
    // Remembered only once applied: a text whose apply failed must be tried again when it is saved again.
    if (this.events.onModel(loaded.model, loaded.text) === null) this.lastText = loaded.text;
  }

  /**
   * A large file is parsed on the parser's thread (parseworker.ts), one text at a time: a newer one read meanwhile
   * waits, and only the last one is parsed next. The model (or the error) is handed on as reload() would have.
   */
  private parseOffLoop(text: string): void {
    if (this.parsing) { this.nextText = text; return; }
    this.parsing = true;
    if (this.parser?.dead) this.parser = undefined;
    this.parser ??= new ParserThread();
    this.parser.parse(text, this.path).then((model) => {
      if (!this.stopped && this.events.onModel(model, text) === null) this.lastText = text;
    }, (e: Error) => {
      if (!this.stopped) this.events.onError(bounded(e));
    }).finally(() => {
      this.parsing = false;
      const next = this.nextText;
      this.nextText = undefined;
      if (next !== undefined && !this.stopped && next !== this.lastText) this.parseOffLoop(next);
    });
  }

  stop(): void {
    this.stopped = true;
    this.parser?.close();
    clearTimeout(this.timer);
    this.watchEvents?.cancel();
    this.watcher?.close();
  }
}
