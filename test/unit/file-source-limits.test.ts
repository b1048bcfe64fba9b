// The file source against junk: a file of junk written over the watched config is rejected with a bounded error (one
// short log line, a short lastConfigError), costs the process little memory, and the last good model stays. Junk over
// MAX_CONFIG_BYTES is refused before it is read. Once, a 50 MiB junk file made a 130 MB error and an RSS of 695 MiB.
//
// The source runs in a child process (plain node on the compiled dist/, which scripts/test.mjs builds first) so that
// its RSS is the source's own, not the test runner's.
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { MAX_CONFIG_BYTES } from '../../agent/sources/configtext.js';
import { MAX_REASON_CHARS } from '../../agent/model/reasons.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const DIST = join(ROOT, 'dist', 'agent', 'sources', 'file.js');
const MiB = 1024 * 1024;
const RSS_LIMIT = 200 * MiB;

const svc = (port: number) => `services:\n  - name: web\n    vips: [127.77.9.9]\n    ports: [{ port: 80 }]\n    backends: [{ address: 127.0.0.1, port: ${port} }]\n`;

// The child: a FileSource on argv[1]; one JSON line per event, with the peak RSS so far.
const CHILD = `
  const { FileSource } = await import(${JSON.stringify(DIST)});
  const { readFileSync } = await import('node:fs');
  // VmHWM: this process's peak RSS (getrusage's maxRSS would include the parent's at fork)
  const peak = () => Number(/VmHWM:\\s*(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
  const say = (o) => console.log(JSON.stringify({ ...o, maxRss: peak(), rss: process.memoryUsage().rss }));
  const src = new FileSource(process.argv[1], {
    onModel: (m) => { say({ event: 'model', port: m.services[0].frontends[0].backends[0].port }); return null; },
    onError: (e) => { say({ event: 'error', length: e.message.length, head: e.message.slice(0, 300) }); },
  }, 20);
  const m = src.start();
  say({ event: 'start', port: m.services[0].frontends[0].backends[0].port });
  process.stdin.on('end', () => { src.stop(); process.exit(0); });
  process.stdin.resume();
`;

interface Report { event: string; port?: number; length?: number; head?: string; maxRss: number; rss: number }

/** A child with a FileSource on a fresh config file: put() replaces the file by rename, next() is its next report. */
async function child(t: Test) {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-junk-'));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, svc(8001));
  const proc = spawn(process.execPath, ['--input-type=module', '-e', CHILD, file], { stdio: ['pipe', 'pipe', 'inherit'] });
  const reports: Report[] = [];
  let wake = () => {};
  createInterface({ input: proc.stdout }).on('line', (l) => { reports.push(JSON.parse(l) as Report); wake(); });
  let exited = false;
  proc.on('exit', () => { exited = true; wake(); });
  const next = async (ms = 60_000): Promise<Report | undefined> => {
    const end = Date.now() + ms;
    while (reports.length === 0 && !exited && Date.now() < end) await new Promise<void>((r) => { wake = r; setTimeout(r, 100); });
    return reports.shift();
  };
  let n = 0;
  // replaced by rename, as in the report: the watcher sees it at once
  const put = (data: Buffer | string) => {
    const tmp = join(dir, `.tmp-${n++}`);
    writeFileSync(tmp, data);
    renameSync(tmp, file);
  };
  const close = () => { proc.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); };
  const start = await next();
  t.equal(start?.port, 8001, 'started with the good config');
  return { put, next, close, pending: () => reports.length };
}

t.test('junk of every size is rejected with a bounded error, in bounded memory, and the last good model stays', async (t) => {
  const st = statSync(DIST, { throwIfNoEntry: false });
  t.ok(st && st.mtimeMs >= statSync(join(ROOT, 'agent', 'sources', 'file.ts')).mtimeMs, 'dist/ is compiled from the current source (run through scripts/test.mjs)');
  const sizes: Array<[string, number]> = [
    ['1 KiB', 1024], ['1 MiB', MiB], ['just under the limit', MAX_CONFIG_BYTES - 1024], ['at the limit', MAX_CONFIG_BYTES],
    ['just over the limit', MAX_CONFIG_BYTES + 1], ['50 MiB', 50 * MiB],
  ];
  for (const [name, size] of sizes) {
    for (const kind of ['binary', 'text'] as const) {
      const what = `${kind} junk, ${name}`;
      const c = await child(t);
      // binary: random bytes (as in the report); text: base64 in lines of 76, which YAML reads as one long string
      const junk = kind === 'binary' ? randomBytes(size) : Buffer.from(randomBytes(Math.ceil(size * 0.75)).toString('base64').replace(/.{75}/g, '$&\n').slice(0, size));
      c.put(junk);
      const r = await c.next();
      t.equal(r?.event, 'error', `${what}: rejected`);
      t.ok(r && r.length! <= MAX_REASON_CHARS, `${what}: the error is ${r?.length} chars`);
      t.ok(r && r.maxRss < RSS_LIMIT, `${what}: peak RSS ${r && Math.round(r.maxRss / MiB)} MiB`);
      if (size > MAX_CONFIG_BYTES) t.match(r?.head, /over the limit of 16777216 bytes/, `${what}: refused unread`);
      else if (kind === 'binary') t.match(r?.head, /not a text file: control byte/, `${what}: refused as binary`);
      else t.match(r?.head, /\(root\): must be a mapping.*\(a string of \d+ chars\)/, `${what}: refused by validation, the value quoted in part`);
      t.comment(`${what}: error ${r?.length} chars, peak RSS ${r && Math.round(r.maxRss / MiB)} MiB`);
      // the last good model stayed (no model reported), and the source still works
      c.put(svc(8002));
      const applied = await c.next();
      t.equal(applied?.event, 'model', `${what}: a good file after the junk is applied (nothing else reported)`);
      t.equal(applied?.port, 8002);
      c.close();
    }
  }
});
