// Reading a config file's text, bounded: a file over MAX_CONFIG_BYTES is refused before it is read (and while it is
// read, should it grow), and a file with bytes no text file has is refused before it is decoded. The agent's file
// source and the control plane's config directory both read through here, so neither can be made to hold a 50 MiB
// junk file (one once cost the agent a 130 MB log line and 600 MiB of RSS).
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

/**
 * The largest config file read: 16 MiB. 10,000 services with 10 backends each (two VIPs, maglev, a weight per backend)
 * are 6.6 MB of YAML or 11 MB of indented JSON; a junk file is refused before it costs memory.
 */
export const MAX_CONFIG_BYTES = 16 * 1024 * 1024;
/** What identifies a version of the file without reading it. */
export const signature = (st: { ino: bigint; size: bigint; mtimeNs: bigint }) => `${st.ino}:${st.size}:${st.mtimeNs}`;

export interface FileText {
  text: string;
  /** its signature once read */
  sig: string;
  ino: bigint;
  /** the size or mtime changed while it was read: a writer is at work */
  changedWhileRead: boolean;
}

/** A file refused for what it is (too big, not text): the version refused, so that it is not read again for nothing. */
export class RefusedFile extends Error {
  constructor(message: string, readonly sig: string, readonly ino: bigint) {
    super(message);
  }
}

/** The offset of the first byte no text file has (a C0 control but TAB, LF, CR; DEL), or -1. */
function controlByte(b: Buffer): number {
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if ((c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) || c === 0x7f) return i;
  }
  return -1;
}

/** The file's text, refused over MAX_CONFIG_BYTES (stat first, and again while reading: it may grow). */
export function readConfigText(path: string): FileText {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(`${path}: cannot read config: ${err.code ?? err.message}`);
  }
  try {
    const before = fstatSync(fd, { bigint: true });
    const tooBig = (size: string) => new RefusedFile(
      `${path}: config file is ${size} bytes, over the limit of ${MAX_CONFIG_BYTES} bytes (16 MiB): not read`, signature(before), before.ino);
    if (before.size > BigInt(MAX_CONFIG_BYTES)) throw tooBig(before.size.toString());
    // One buffer of the size stat said (and a little room: a file that grows while read is seen to), grown only if
    // the file does grow; never past MAX_CONFIG_BYTES + 1.
    let buf = Buffer.allocUnsafe(Math.min(Number(before.size) + 4096, MAX_CONFIG_BYTES + 1));
    let total = 0;
    for (;;) {
      if (total === buf.length) {
        if (total > MAX_CONFIG_BYTES) throw tooBig(`more than ${MAX_CONFIG_BYTES}`);
        const bigger = Buffer.allocUnsafe(Math.min(2 * buf.length, MAX_CONFIG_BYTES + 1));
        buf.copy(bigger);
        buf = bigger;
      }
      let n: number;
      try {
        n = readSync(fd, buf, total, buf.length - total, null);
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        throw new Error(`${path}: cannot read config: ${err.code ?? err.message}`);
      }
      if (n === 0) break;
      total += n;
    }
    if (total > MAX_CONFIG_BYTES) throw tooBig(`more than ${MAX_CONFIG_BYTES}`);
    const after = fstatSync(fd, { bigint: true });
    const bytes = buf.subarray(0, total);
    // Binary junk is refused before it is decoded into a string twice its size.
    const ctl = controlByte(bytes);
    if (ctl >= 0) {
      const what = `control byte 0x${bytes[ctl]!.toString(16).padStart(2, '0')} at offset ${ctl}`;
      throw new RefusedFile(`${path}: not a text file: ${what}`, signature(after), after.ino);
    }
    return {
      text: bytes.toString('utf8'),
      sig: signature(after),
      ino: after.ino,
      changedWhileRead: signature(before) !== signature(after) || BigInt(total) !== after.size,
    };
  } finally {
    closeSync(fd);
  }
}

/**
 * A trailing debounce with a longest wait, for the watches of config files. A trailing debounce alone never fires
 * while events keep coming faster than it does: under `npm run soak`'s churn (the config rewritten every 100 ms) the
 * control plane's directory watch (150 ms) served nothing for as long as the writes went on, and the agent's file
 * source (100 ms) only applied what it caught in the pauses. Within a burst, `fire` now runs at least every maxWaitMs.
 */
export class BurstDebounce {
  private timer?: NodeJS.Timeout;
  private since?: number;

  constructor(private readonly fire: () => void, private readonly debounceMs: number, private readonly maxWaitMs: number) {}

  /** An event: fire debounceMs after the last one, and no later than maxWaitMs after the first of the burst. */
  poke(): void {
    const now = Date.now();
    this.since ??= now;
    clearTimeout(this.timer);
    const wait = Math.max(0, Math.min(this.debounceMs, this.since + this.maxWaitMs - now));
    this.timer = setTimeout(() => {
      this.since = undefined;
      this.fire();
    }, wait);
  }

  cancel(): void {
    clearTimeout(this.timer);
    this.since = undefined;
  }
}

/** The longest a burst of changes to a config file or directory waits before it is read (see BurstDebounce). */
export const CONFIG_MAX_WAIT_MS = 500;
