// The agent's last applied Kubernetes model as a file (<run dir>/kubernetes-model.json, agent/sources/kube.ts): the
// same text JSON.stringify makes, written without making it in one piece. At 10,000 services / 100,000 endpoints that
// text is ~7 MB: stringified once a second while EndpointSlices change, it was a 7 MB string in V8's large-object
// space plus the serializer's garbage per write and 30-60 ms of a blocked event loop (measured with the Kubernetes
// source alone, no kernel: old space grew ~2.5x faster with the file than without, the slice change p99 doubled).
// Here each service's text is kept while the translation hands back the same Service object (it does for every
// service a change did not touch: kube/translate-live.ts), and the file is written in small pieces: a write costs
// the changed services' serialization and the copy to the page cache.
import { closeSync, mkdirSync, openSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Model, Service } from '../agent/model/types.js';

/** Pieces of the file are put together up to this size, then written (a regular V8 string, not a large object). */
const PIECE = 60 * 1024;

export class ModelFileWriter {
  private memo = new WeakMap<Service, string>();

  /**
   * Write `{...head, model}` as JSON to `file` (through `<file>.tmp` and a rename: a reader never sees half of it).
   * The text is what JSON.stringify({...head, model}) gives. Throws what the file system says.
   */
  write(file: string, head: Record<string, unknown>, model: Model): void {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      let piece = '';
      const put = (s: string) => {
        piece += s;
        if (piece.length >= PIECE) {
          writeSync(fd, piece);
          piece = '';
        }
      };
      put(JSON.stringify({ ...head, model: null }).slice(0, -'null}'.length));
      put('{');
      let first = true;
      for (const [k, v] of Object.entries(model)) {
        if (k !== 'services') {
          const text = JSON.stringify(v);
          if (text === undefined) continue; // as JSON.stringify leaves out undefined and functions
          put(`${first ? '' : ','}${JSON.stringify(k)}:${text}`);
        } else {
          put(`${first ? '' : ','}"services":[`);
          model.services.forEach((s, i) => put(i === 0 ? this.text(s) : `,${this.text(s)}`));
          put(']');
        }
        first = false;
      }
      put('}}');
      if (piece.length > 0) writeSync(fd, piece);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  }

  private text(s: Service): string {
    let t = this.memo.get(s);
    if (t === undefined) {
      t = JSON.stringify(s);
      this.memo.set(s, t);
    }
    return t;
  }
}
