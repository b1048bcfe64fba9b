// A large config file is parsed on the parser's thread (FileSource, agent/sources/parseworker.ts), not on the agent's
// event loop: the yaml library took 700-900 ms for a 590 KB file on a loaded node, and on the loop that held the L7
// proxy and its heartbeat (test/kernel/heartbeat.test.ts). The model must be the one an in-place parse gives, a bad
// large file must be refused with the same error, and only the last of several quick saves needs to be applied.
import t from 'tap';
import type * as Tap from 'tap';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { FileSource, OFF_LOOP_BYTES, workerExecArgv } from '../../agent/sources/file.js';
import { AGENT_NODE_FLAGS } from '../../agent/runtime.js';
import { parseConfig } from '../../agent/model/config.js';
import type { Model } from '../../agent/model/types.js';

/** a config of n services with 15 backends each, the first one's backends at port */
function big(n: number, port: number): string {
  let s = 'services:\n';
  for (let i = 0; i < n; i++) {
    s += `  - name: s${i}\n    vips: [127.78.${Math.floor(i / 250)}.${(i % 250) + 1}]\n    ports: [{ port: 80 }]\n    backends:\n`;
    for (let b = 0; b < 15; b++) s += `      - { address: 127.0.0.1, port: ${(i === 0 ? port : 30000) + b} }\n`;
    if (i % 50 === 0) s += '    http:\n      failMode: closed\n      routes: [{ name: all }]\n';
  }
  return s;
}
const until = async (cond: () => boolean, ms = 30_000): Promise<boolean> => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return cond();
};

/** A config file in a fresh directory (removed at the end), written with `text`, and a FileSource on it (20 ms debounce). */
function watched(t: Tap.Test, text: string): { file: string; put: (text: string) => void; applied: Model[]; errors: string[]; src: FileSource } {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-offloop-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'config.yaml');
  const put = (x: string): void => { writeFileSync(`${file}.tmp`, x); renameSync(`${file}.tmp`, file); };
  put(text);
  const applied: Model[] = [];
  const errors: string[] = [];
  const src = new FileSource(file, { onModel: (m) => { applied.push(m); return null; }, onError: (e) => { errors.push(e.message); } }, 20);
  t.teardown(() => src.stop());
  return { file, put, applied, errors, src };
}

t.test('a large config change is parsed off the event loop, into the same model', async (t) => {
  const { file, put, applied, errors, src } = watched(t, big(800, 20000));
  src.start();
  const text = big(800, 21000);
  t.ok(text.length >= OFF_LOOP_BYTES, `the file (${text.length} bytes) is above ${OFF_LOOP_BYTES}`);
  // How long the loop is held meanwhile: a 5 ms timer's lateness, from the save to the model
  let last = performance.now(), held = 0;
  const tick = setInterval(() => { const now = performance.now(); held = Math.max(held, now - last - 5); last = now; }, 5);
  put(text);
  t.ok(await until(() => applied.length === 1), 'the change applied');
  clearInterval(tick);
  const t0 = performance.now();
  const inPlace = parseConfig(text, file);
  const parseMs = performance.now() - t0;
  t.comment(`the loop was held at most ${held.toFixed(0)} ms while the parser's thread worked; the same parse in place: ${parseMs.toFixed(0)} ms`);
  t.same(applied[0], inPlace, 'the model is the one an in-place parse gives');
  // The in-place parse is the bound: whatever the machine's load, the loop must be held far less than that.
  t.ok(held < parseMs / 2, `the loop held ${held.toFixed(0)} ms, under half the in-place parse (${parseMs.toFixed(0)} ms)`);

  // a bad large file: refused, with the error an in-place parse gives, and the last good model stays
  const bad = text.replace('  - name: s7\n', '  - name: s7\n    nonsense: 1\n');
  let expected = '';
  try { parseConfig(bad, file); } catch (e) { expected = (e as Error).message; }
  t.ok(expected !== '', 'the bad file is bad');
  put(bad);
  t.ok(await until(() => errors.length === 1), 'the bad file refused');
  t.equal(errors[0], expected, 'with the in-place error');
  t.equal(applied.length, 1, 'nothing applied');

  // quick saves while the thread parses: the last one is applied, at most one in between
  for (let p = 22000; p <= 22400; p += 100) { put(big(800, p)); await new Promise((r) => setTimeout(r, 40)); }
  t.ok(await until(() => applied.at(-1)?.services[0]?.frontends[0]?.backends[0]?.port === 22400), 'the last save applied');
  t.ok(applied.length <= 6, `${applied.length - 1} applies for 5 saves`);
});

t.test('the parser thread starts under the agent\'s own node flags (process-wide V8 flags are not passed to it)', async (t) => {
  const argv = [...AGENT_NODE_FLAGS, '--import=file:///x/hook.mjs', '--require', '/x/r.cjs', '--enable-source-maps', '--input-type=module', '-e', 'code'];
  t.same(workerExecArgv(argv), ['--import=file:///x/hook.mjs', '--require', '/x/r.cjs', '--enable-source-maps'], 'loaders kept, V8 and inline-script flags left out');
  t.throws(() => new Worker('0', { eval: true, execArgv: [...AGENT_NODE_FLAGS] }), /ERR_WORKER_INVALID_EXEC_ARGV|invalid execArgv/i, 'the agent\'s V8 flags are refused by a Worker (why they are left out)');
  const w = new Worker('0', { eval: true, execArgv: workerExecArgv([...AGENT_NODE_FLAGS]) });
  const code = await new Promise<number>((r) => w.on('exit', r));
  t.equal(code, 0, 'a thread with the filtered flags runs');
});

t.test('a small save read while a large one is on the parser\'s thread is applied after it, never before', async (t) => {
  const { put, applied, src } = watched(t, big(2, 20000));
  src.start();
  const large = big(800, 21000), small = big(3, 22000);
  t.ok(large.length >= OFF_LOOP_BYTES && small.length < OFF_LOOP_BYTES, 'one text above the off-loop size, one below');
  put(large);
  // the large one is read after the debounce and goes to the parser's thread, which takes hundreds of ms for it
  await new Promise((r) => setTimeout(r, 80));
  t.equal(applied.length, 0, 'the large one is still being parsed when the small one is saved');
  put(small);
  // both are applied in the end (the large one too: it was a save), in the order they were saved
  t.ok(await until(() => applied.length >= 2, 20_000), `both applied (${applied.length})`);
  await new Promise((r) => setTimeout(r, 200));
  t.same(applied.map((m) => m.services.length), [800, 3], 'the large save, then the small one: the last save is in force');
});
