// npm run fuzz -- TARGET [--minutes N | --seconds N] [--seed N] [--timeout-ms T]
// npm run fuzz -- --all --minutes N          (each target in turn, N minutes each)
// npm run fuzz -- --list
// Each target runs in a process of its own (child.ts). Inputs with new coverage are kept in .fuzz/corpus/<target>/
// (a later run starts from them), findings are written to .fuzz/findings/<target>/ (minimised, with the error next
// to them), and every run appends its figures to .fuzz/runs.jsonl. Exit status 1 when anything was found.
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runTarget } from './spawn.js';
import { TARGETS, targetSpec } from './targets.js';

const { values: a, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    all: { type: 'boolean', default: false }, list: { type: 'boolean', default: false }, minutes: { type: 'string' },
    seconds: { type: 'string' }, seed: { type: 'string' }, 'timeout-ms': { type: 'string', default: '1000' },
  },
});
if (a.list) {
  for (const t of TARGETS) process.stdout.write(`${t.name.padEnd(14)} ${t.what}\n`);
  process.exit(0);
}
const names = a.all ? TARGETS.filter((t) => !t.selftest).map((t) => t.name) : positionals;
if (names.length === 0) {
  process.stderr.write(`usage: npm run fuzz -- TARGET|--all [--minutes N] (targets: ${TARGETS.map((t) => t.name).join(', ')})\n`);
  process.exit(2);
}
for (const n of names) targetSpec(n); // an unknown name fails before anything runs
const seconds = a.seconds !== undefined ? Number(a.seconds) : Number(a.minutes ?? '1') * 60;
if (!(seconds > 0)) throw new Error(`--minutes/--seconds: expected a positive number, got ${a.seconds ?? a.minutes}`);

const root = new URL('../..', import.meta.url).pathname;
const work = join(root, '.fuzz');
mkdirSync(work, { recursive: true });
let found = 0;
for (const name of names) {
  const r = await runTarget(name, {
    seconds, seed: a.seed, timeoutMs: Number(a['timeout-ms']),
    corpus: join(work, 'corpus', name), findings: join(work, 'findings', name), echo: true,
  });
  appendFileSync(join(work, 'runs.jsonl'), `${JSON.stringify({ at: new Date().toISOString(), ...r, findings: r.findings.map((f) => f.signature) })}\n`);
  found += r.findings.length;
  process.stdout.write(`${name}: ${r.execs} execs in ${r.seconds} s (${r.execsPerSecond}/s; ${r.cpuSeconds} CPU s, ${r.execsPerCpuSecond}/CPU s), corpus ${r.corpus}, probes ${r.probesHit}/${r.probesTotal}, `
    + `findings ${r.findings.length}${r.findings.map((f) => `\n  ${f.kind}: ${f.signature}${f.file ? ` (${f.file})` : ''}`).join('')}\n`);
}
process.exit(found > 0 ? 1 : 0);
