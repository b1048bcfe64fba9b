// The file source: a YAML or JSON config file, watched for changes.
//
// Editors save by rename as often as by write, and Kubernetes ConfigMaps (or `ln -sfn` deploys) swap a `..data` symlink
// without touching the file's own name: so the whole directory is watched, any event there re-reads the file
// (debounced), and unchanged text is ignored.
// A change that does not parse or validate is reported and dropped whole: the caller keeps the last good model.
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseConfig } from '../model/config.js';
import type { Model } from '../model/types.js';

export interface FileSourceEvents {
  /** Apply; null when applied, else why not (the text is then tried again on the next change or SIGHUP). */
  onModel(model: Model, text: string): string | null;
  onError(err: Error): void;
}

export function loadConfigFile(path: string): { model: Model; text: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(`${path}: cannot read config: ${err.code ?? err.message}`);
  }
  return { model: parseConfig(text, path), text };
}

export class FileSource {
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;
  private lastText?: string;
  readonly path: string;

  constructor(path: string, private readonly events: FileSourceEvents, private readonly debounceMs = 100) {
    this.path = resolve(path);
  }

  /** Load once (throws on a bad file: at start there is no last good config to keep) and start watching. */
  start(): Model {
    const { model, text } = loadConfigFile(this.path);
    this.lastText = text;
    this.watcher = watch(dirname(this.path), () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.reload(), this.debounceMs);
    });
    return model;
  }

  /** Re-read now (also used for SIGHUP). */
  reload(): void {
    let loaded: { model: Model; text: string };
    try {
      loaded = loadConfigFile(this.path);
    } catch (e) {
      // A file caught half-written, or removed for a moment by an editor, shows up here too; the next event retries.
      this.events.onError(e as Error);
      return;
    }
    if (loaded.text === this.lastText) return;
    // Remembered only once applied: a text whose apply failed must be tried again when it is saved again.
    if (this.events.onModel(loaded.model, loaded.text) === null) this.lastText = loaded.text;
  }

  stop(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
  }
}
