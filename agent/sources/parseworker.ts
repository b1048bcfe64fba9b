// The config file's parser on a thread of its own (FileSource, for a large file): the yaml library takes ~1.3 ms of
// CPU per KiB on a loaded node (a 590 KB file: 700-900 ms, and the garbage it leaves), and on the agent's event loop
// that time holds the L7 proxy and its heartbeat (3 intervals without one and the kernel applies the fail modes).
// Here it holds nothing: the model comes back as a structured clone (plain objects, ~1-3 % of the parse).
import { parentPort } from 'node:worker_threads';
import { parseConfig } from '../model/config.js';
import { bounded } from './file.js';

parentPort?.on('message', (m: { id: number; text: string; path: string }) => {
  try {
    parentPort!.postMessage({ id: m.id, model: parseConfig(m.text, m.path) });
  } catch (e) {
    // bounded here, where the ConfigError's issues still are (a structured clone keeps only the message)
    const b = bounded(e instanceof Error ? e : new Error(String(e)));
    parentPort!.postMessage({ id: m.id, error: b.message, name: b.name });
  }
});
