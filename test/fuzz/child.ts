// One fuzz target in one process (started by cli.ts or the suite, with register.mjs so that the target's files are
// probed). A watchdog thread keeps a copy of the input being run: one that runs longer than --timeout-ms is written
// out as a hang and the process is killed (a synchronous loop cannot be interrupted any other way).
//
//   node --import ./test/fuzz/register.mjs test/fuzz/child.ts --target NAME [--seconds S] [--execs N] [--seed N]
//     [--timeout-ms T] [--corpus DIR] [--findings DIR] [--blind] [--stop-on-finding]
// The last line on stdout is `FUZZ-RESULT {json}`; a hang prints `FUZZ-HANG {json}` and the process dies (SIGKILL).
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { Coverage, fuzz, inputName, type Finding, type RunOne } from './engine.js';
import { targetSpec } from './targets.js';

const { values: a } = parseArgs({
  options: {
    target: { type: 'string' }, seconds: { type: 'string', default: '10' }, execs: { type: 'string' }, seed: { type: 'string' },
    'timeout-ms': { type: 'string', default: '1000' }, corpus: { type: 'string' }, findings: { type: 'string' },
    blind: { type: 'boolean', default: false }, 'stop-on-finding': { type: 'boolean', default: false },
  },
});
if (!a.target) throw new Error('child.ts: --target is required');
const spec = targetSpec(a.target);
if ((process.env.SOCKMESH_FUZZ_INSTRUMENT ?? '') !== spec.instrument.join(',')) {
  // the probes are placed at load time by register.mjs, from this variable: without it the run would be blind
  throw new Error(`child.ts: run through cli.ts (npm run fuzz), or set SOCKMESH_FUZZ_INSTRUMENT=${spec.instrument.join(',')}`);
}
const here = new URL('.', import.meta.url).pathname;
const timeoutMs = Number(a['timeout-ms']);
const findingsDir = a.findings;

function readDir(dir: string): Buffer[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).sort().filter((f) => !f.startsWith('.') && !f.endsWith('.md')).map((f) => readFileSync(join(dir, f)));
}

function save(kind: string, data: Buffer, note: string): string | undefined {
  if (!findingsDir) return undefined;
  mkdirSync(findingsDir, { recursive: true });
  const file = join(findingsDir, `${kind}-${inputName(data)}`);
  writeFileSync(file, data);
  writeFileSync(`${file}.txt`, `${note}\n`);
  return file;
}

// the input in flight: [0] its length, [1] its sequence number; the start time at byte 8 (a Float64); the bytes from 16
const sab = new SharedArrayBuffer(16 + spec.maxLen + 16);
const meta = new Int32Array(sab, 0, 2);
const started = new Float64Array(sab, 8, 1);
const bytes = new Uint8Array(sab, 16);
// A hang is an input that has used more than timeoutMs of the main thread's CPU, or that has slept 30 times that long
// (one that waits for something that never comes uses no CPU). Sleeping is the wall time neither on a CPU nor waiting
// for one (/proc/<pid>/task/<pid>/schedstat: both in ns; the kernel adds a wait when it ends, so a thread that is
// runnable now - state R - is not asleep whatever the sums say): at nice 19 on a loaded machine an input can wait for a
// CPU far longer than it runs, which is no hang. Wall time alone made false hangs (a config-yaml input that runs in 1.6 ms
// was starved past the 1 s bound, as earlier xds-delta "hangs" were); wall time minus CPU would still count starvation
// as sleep (unit/fuzz runs a target starved of its CPU to prove it does not).
// A hang's report carries the inputs run and the CPU used so far: the run's figures die with the process.
const watchdog = new Worker(`
  const { workerData: w } = require('node:worker_threads');
  const fs = require('node:fs'), path = require('node:path'), crypto = require('node:crypto');
  const meta = new Int32Array(w.sab, 0, 2), started = new Float64Array(w.sab, 8, 1), bytes = new Uint8Array(w.sab, 16);
  const task = '/proc/' + process.pid + '/task/' + process.pid;
  // the main thread's ms on a CPU and waiting in the run queue, and whether it is runnable now; without schedstat, the
  // CPU from stat (10 ms ticks)
  const times = () => {
    let v;
    try {
      const f = fs.readFileSync(task + '/stat', 'latin1');
      v = f.slice(f.lastIndexOf(')') + 2).split(' ');
    } catch { return undefined; }
    try {
      const q = fs.readFileSync(task + '/schedstat', 'latin1').split(' ');
      return { cpu: Number(q[0]) / 1e6, queued: Number(q[1]) / 1e6, runnable: v[0] === 'R' };
    } catch {
      return { cpu: (Number(v[11]) + Number(v[12])) * 10, queued: 0, runnable: v[0] === 'R' };
    }
  };
  let seq = -1, seen, at;
  setInterval(() => {
    const t = started[0];
    if (t === 0) return;
    // (the input's CPU and sleep are counted from when this thread first saw it: at most one interval late)
    if (meta[1] !== seq) { seq = meta[1]; seen = times(); at = Date.now(); return; }
    const wall = Date.now() - t;
    if (wall <= w.timeoutMs) return;
    const now = seen === undefined ? undefined : times();
    const cpu = now === undefined ? undefined : now.cpu - seen.cpu;
    const asleep = now === undefined ? wall : Date.now() - at - cpu - (now.queued - seen.queued);
    if (cpu !== undefined && cpu <= w.timeoutMs && (asleep <= 30 * w.timeoutMs || now.runnable)) return;
    const what = cpu === undefined || cpu > w.timeoutMs ? 'ran over ' + w.timeoutMs + ' ms' : 'waited over ' + (30 * w.timeoutMs) + ' ms';
    const input = Buffer.from(bytes.subarray(0, meta[0]));
    let file = null;
    if (w.dir) {
      fs.mkdirSync(w.dir, { recursive: true });
      file = path.join(w.dir, 'hang-' + crypto.createHash('sha1').update(input).digest('hex').slice(0, 16));
      fs.writeFileSync(file, input);
      fs.writeFileSync(file + '.txt', what + ' (CPU ' + Math.round(cpu) + ' ms, asleep ' + Math.round(asleep) + ' ms, wall ' + wall + ' ms)\\n');
    }
    const u = process.cpuUsage(); // (the whole process's, as process.uptime() is its wall time: from its start)
    fs.writeSync(1, '\\nFUZZ-HANG ' + JSON.stringify({ target: w.target, timeoutMs: w.timeoutMs, what, file, input: input.toString('base64'),
      execs: meta[1], seconds: process.uptime(), cpuSeconds: (u.user + u.system) / 1e6 }) + '\\n');
    process.kill(process.pid, 'SIGKILL');
  }, Math.min(100, w.timeoutMs / 4)); // (not unref'd: it is all this thread runs; the main thread unrefs the worker)
`, { eval: true, workerData: { sab, timeoutMs, dir: findingsDir, target: spec.name } });
watchdog.unref();

const mod = (await import(`./targets/${spec.name}.ts`)) as { run: RunOne; confirm?: RunOne; dict?: string[]; setup?: () => Promise<void> };
await mod.setup?.();
// what setup() ran (a warm-up) is not the first seed's coverage
new Coverage().clear();
const seeds = [...readDir(join(here, spec.name)), ...(a.corpus ? readDir(a.corpus) : [])];
if (a.corpus) mkdirSync(a.corpus, { recursive: true });

// CPU time as well as wall time: on a shared machine at nice 19 the wall clock measures the neighbours
const cpu0 = process.cpuUsage();
const stats = await fuzz(mod.run, {
  seeds, confirm: mod.confirm, dict: mod.dict ?? [], maxLen: spec.maxLen, seconds: Number(a.seconds), maxExecs: a.execs ? Number(a.execs) : undefined,
  seed: a.seed ? Number(a.seed) : (Date.now() & 0x7fffffff), guided: !a.blind, stopOnFinding: a['stop-on-finding'], stacks: process.env.FZ_STACKS === '1',
  beforeExec: (d) => { bytes.set(d.subarray(0, bytes.length)); meta[0] = Math.min(d.length, bytes.length); meta[1]++; started[0] = Date.now(); },
  onNewInput: a.corpus ? (d) => writeFileSync(join(a.corpus!, inputName(d)), d) : undefined,
  onFinding: (f: Finding) => {
    const file = save(f.kind, f.input, `${f.signature}\n\n${f.message}`);
    process.stdout.write(`FUZZ-FINDING ${JSON.stringify({ target: spec.name, signature: f.signature, file, input: f.input.toString('base64') })}\n`);
  },
});
started[0] = 0;
const cpu = process.cpuUsage(cpu0);
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
const result = {
  target: spec.name, execs: stats.execs, seconds: Math.round(stats.seconds * 10) / 10, execsPerSecond: stats.execsPerSecond,
  cpuSeconds: Math.round(cpuSeconds * 10) / 10, execsPerCpuSecond: Math.round(stats.execs / Math.max(cpuSeconds, 1e-3)),
  corpus: stats.corpus, seeds: seeds.length, probesHit: stats.probesHit, probesTotal: stats.probesTotal,
  findings: stats.findings.map((f) => ({ kind: f.kind, signature: f.signature, input: f.input.toString('base64') })),
};
process.stdout.write(`FUZZ-RESULT ${JSON.stringify(result)}\n`);
// targets may leave timers behind (sessions linger): the run is over
process.exit(stats.findings.length > 0 ? 1 : 0);
