#!/usr/bin/env node
// The test command: unit tests (in parallel), then kernel tests (serially: they share the kernel), through tap.
// It ends with one plain line CI reads, `tests: N passed, N failed, N skipped`, and exits non-zero on any failure.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const tap = join(root, 'node_modules', '.bin', 'tap');
const only = process.argv.slice(2); // optional: run just these files

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
    child.stdout.on('data', (chunk) => {
      process.stdout.write(chunk);
      const text = last + chunk.toString();
      const lines = text.split('\n');
      last = lines.pop() ?? '';
      for (const l of lines) {
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
process.stdout.write(`\ntests: ${pass} passed, ${fail} failed, ${skip} skipped\n`);
process.exit(code);
