// Child processes for benchmarks: every child is bounded in time and remembered, so that an
// error, a timeout or Ctrl-C never leaves a sockperf/iperf3/agent running behind us.
import { AsyncLocalStorage } from 'node:async_hooks';
import { spawn, type ChildProcess } from 'node:child_process';

/** A bench's progress line, on stderr (stdout is the report). */
export const log = (s: string): void => { process.stderr.write(`bench: ${s}\n`); };

/** Beyond its own duration (-t, -d), a load client gets this long before it is killed (warm-up, connect, report). */
export const CLIENT_SLACK_MS = 20_000;

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

const live = new Set<ChildProcess>();

/** Grace between SIGTERM and SIGKILL when a child overstays. */
const KILL_GRACE_MS = 2000;

function killLater(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const t = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }, KILL_GRACE_MS);
  t.unref();
}

/** A child that runs while we do other things (a server, the agent). */
export class Background {
  readonly child: ChildProcess;
  readonly exited: Promise<RunResult>;
  private out = '';
  private err = '';
  private lineListeners: Array<(line: string) => void> = [];
  private partial = '';
  private timedOut = false;

  /** @param maxMs hard lifetime: the child is killed after it even if nobody stops it */
  constructor(readonly name: string, cmd: string, args: string[], maxMs: number) {
    if (abortedBy && !inCleanup.getStore()) throw new Error(`not starting ${name}: interrupted by ${abortedBy}`);
    this.child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(this.child);
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => this.onStdout(s));
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      this.err = (this.err + s).slice(-64 * 1024);
    });
    const timer = setTimeout(() => {
      this.timedOut = true;
      killLater(this.child, 'SIGTERM');
    }, maxMs);
    timer.unref();
    this.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null) => {
        clearTimeout(timer);
        live.delete(this.child);
        resolve({ code, signal, stdout: this.out, stderr: this.err, timedOut: this.timedOut });
      };
      this.child.on('close', done);
      this.child.on('error', (e) => {
        this.err += `\nspawn ${cmd}: ${e.message}`;
        done(null, null);
      });
    });
  }

  private onStdout(s: string): void {
    this.out = (this.out + s).slice(-256 * 1024);
    const lines = (this.partial + s).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) for (const l of this.lineListeners) l(line);
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && live.has(this.child);
  }

  /** Last lines of output, for error messages. */
  tail(lines = 10): string {
    return (this.out + '\n' + this.err).trim().split('\n').slice(-lines).join('\n');
  }

  /** Call `listener` with every later stdout line (without its newline); returns the unsubscribe function. */
  onLine(listener: (line: string) => void): () => void {
    this.lineListeners.push(listener);
    return () => {
      this.lineListeners = this.lineListeners.filter((l) => l !== listener);
    };
  }

  /** Resolves with the first stdout line accepted by `match`; rejects on exit or timeout. */
  waitForLine(match: (line: string) => boolean, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const finish = (fn: () => void) => {
        clearTimeout(timer);
        this.lineListeners = this.lineListeners.filter((l) => l !== listener);
        fn();
      };
      const listener = (line: string) => {
        if (match(line)) finish(() => resolve(line));
      };
      const timer = setTimeout(
        () => finish(() => reject(new Error(`${this.name}: not ready after ${timeoutMs} ms\n${this.tail()}`))),
        timeoutMs,
      );
      this.lineListeners.push(listener);
      void this.exited.then((r) =>
        finish(() => reject(new Error(`${this.name} exited (code ${r.code}, signal ${r.signal})\n${this.tail()}`))),
      );
    });
  }

  /** Ask the child to stop, and wait (bounded) until it has. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<RunResult> {
    killLater(this.child, signal);
    return this.exited;
  }
}

/** Run a command to completion, killed after timeoutMs. */
export function run(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Background(cmd, cmd, args, timeoutMs).exited;
}

/** Run a command that must succeed; throws with its stderr otherwise. */
export async function runChecked(cmd: string, args: string[], timeoutMs: number): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) {
    const why = r.timedOut ? `timed out after ${timeoutMs} ms` : `exit ${r.code ?? r.signal}`;
    throw new Error(`${cmd} ${args.join(' ')}: ${why}: ${(r.stderr || r.stdout).trim().slice(-2000)}`);
  }
  return r.stdout;
}

/** SIGKILL every child still running (used by the exit path). */
export function killAll(): void {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

// ---- cleanup on every way out (normal end, error, SIGINT/SIGTERM) ----

let abortedBy: NodeJS.Signals | undefined;
/** Set while cleanup steps run: they may still start children (ip netns del, agent cleanup). */
const inCleanup = new AsyncLocalStorage<boolean>();

/** The signal that interrupted the run, if any: no new child starts after it, no report is printed. */
export function interrupted(): NodeJS.Signals | undefined {
  return abortedBy;
}

const cleanups: Array<{ what: string; fn: () => Promise<void> | void }> = [];
let cleaning: Promise<void> | undefined;

/** Register an undo step; steps run last-registered first, each at most once. */
export function onCleanup(what: string, fn: () => Promise<void> | void): void {
  cleanups.push({ what, fn });
}

export function runCleanups(): Promise<void> {
  cleaning ??= inCleanup.run(true, async () => {
    killAll();
    while (cleanups.length > 0) {
      const step = cleanups.pop()!;
      try {
        await step.fn();
      } catch (e) {
        process.stderr.write(`cleanup: ${step.what}: ${(e as Error).message}\n`);
      }
    }
  });
  return cleaning;
}

/** On SIGINT/SIGTERM: undo everything, then exit with the conventional status. */
export function installSignalCleanup(): void {
  for (const [sig, status] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(sig, () => {
      abortedBy = sig;
      process.stderr.write(`\n${sig}: cleaning up\n`);
      void runCleanups().finally(() => process.exit(status));
    });
  }
}

/** A bench needs root and these tools: say which is missing before anything is set up. */
export async function requireRootAndTools(bench: string, needs: string, tools: readonly string[]): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error(`the ${bench} bench needs root (${needs})`);
  for (const tool of tools) {
    const r = await run('sh', ['-c', `command -v ${tool}`], 5000);
    if (r.code !== 0) throw new Error(`${tool} is not installed`);
  }
}
