#!/usr/bin/env node
// The test command: unit tests (in parallel), then kernel tests (serially: they share the kernel), through tap.
// It ends with the failed tests, each under its file (CI shows only the tail of the output, so a failure must be named
// there), then one plain line CI reads, `tests: N passed, N failed, N skipped`, and exits non-zero on any failure.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const tap = join(root, 'node_modules', '.bin', 'tap');
const only = process.argv.slice(2); // optional: run just these files
const failed = []; // 'file: outer > inner > assertion' for every `not ok` line tap printed

function files(dir) {
  const d = join(root, dir);
  if (!existsSync(d)) return [];
  return readdirSync(d).filter((f) => f.endsWith('.test.ts')).sort().map((f) => join(dir, f));
}

function run(label, list, jobs) {
  return new Promise((resolve) => {
    if (list.length === 0) return resolve({ pass: 0, fail: 0, skip: 0, code: 0 });
    process.stdout.write(`\n## ${label}: ${list.length} files\n`);
    const child = spawn(tap, ['run', '--reporter=tap', '--disable-coverage', `--jobs=${jobs}`, '--timeout=600', ...list], {
      cwd: root, stdio: ['ignore', 'pipe', 'inherit'],
    });
    let last = '';
    let counts = null;
    let file = '';
    const names = []; // the open subtests' names by depth (4 spaces per level)
    child.stdout.on('data', (chunk) => {
      process.stdout.write(chunk);
      const text = last + chunk.toString();
      const lines = text.split('\n');
      last = lines.pop() ?? '';
      for (const l of lines) {
        const sub = /^((?:    )*)# Subtest: (.*)$/.exec(l);
        if (sub) {
          const depth = sub[1].length / 4;
          if (depth === 0) file = sub[2];
          names.length = depth;
          names[depth] = sub[2];
        }
        const no = /^((?:    )*)not ok \d+ - (.*?)(?: # time=.*)?$/.exec(l);
        if (no) {
          const depth = no[1].length / 4;
          const path = names.slice(1, depth).filter(Boolean);
          failed.push(`${depth === 0 ? no[2] : file}: ${[...path, depth === 0 ? '(file)' : no[2]].join(' > ')}`);
        }
        const m = /^# \{ total: (\d+)(.*)\}/.exec(l);
        if (m) {
          const get = (k) => Number((new RegExp(`${k}: (\\d+)`).exec(m[2]) ?? [0, 0])[1]);
          counts = { pass: get('pass'), fail: get('fail'), skip: get('skip') + get('todo') };
        }
      }
    });
    child.on('close', (code) => {
      // No summary means tap itself failed: count that as a failure, never as a pass.
      const c = counts ?? { pass: 0, fail: 1, skip: 0 };
      resolve({ ...c, code: code ?? 1 });
    });
  });
}

// Kernel tests run the compiled agent and meshctl: compile first so they never test stale JavaScript.
// The tests themselves are type-checked too: tap runs them through ts-node without checking types.
const tscRun = (config) => new Promise((r) => spawn(join(root, 'node_modules', '.bin', 'tsc'), ['-p', config], { cwd: root, stdio: 'inherit' }).on('close', r));
const tscCode = (await tscRun('tsconfig.json')) || (await tscRun('tsconfig.test.json'));
if (tscCode !== 0) {
  process.stdout.write(`\ntests: 0 passed, 1 failed, 0 skipped\n`);
  process.exit(1);
}

const unit = only.length ? only.filter((f) => !f.includes('/kernel/')) : files('test/unit');
const kernel = only.length ? only.filter((f) => f.includes('/kernel/')) : files('test/kernel');
const a = await run('unit tests', unit, 2);
const b = await run('kernel tests (serial)', kernel, 1);
const pass = a.pass + b.pass, fail = a.fail + b.fail, skip = a.skip + b.skip;
const code = a.code || b.code || (fail > 0 ? 1 : 0);
if (failed.length) {
  process.stdout.write(`\nfailed (${failed.length} lines, each assertion before the subtests that hold it):\n`);
  for (const f of failed.slice(0, 60)) process.stdout.write(`  ${f}\n`);
  if (failed.length > 60) process.stdout.write(`  ... ${failed.length - 60} more\n`);
}
process.stdout.write(`\ntests: ${pass} passed, ${fail} failed, ${skip} skipped\n`);
process.exit(code);
