// test/lib/childenv.ts: the processes tests start run without tap's module-loader instrumentation (it tripled an
// agent's start CPU in kernel/crash), and keep any other NODE_OPTIONS.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { withoutTapInstrumentation } from '../lib/childenv.js';

t.test('tap\'s own NODE_OPTIONS, as tap 21 sets it, is matched: a child of this test sees no @tapjs import', async (t) => {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(JSON.stringify({ o: process.env.NODE_OPTIONS ?? null, a: process.execArgv }))'], { encoding: 'utf8' });
  const seen = JSON.parse(r.stdout) as { o: string | null; a: string[] };
  t.notMatch(seen.o ?? '', /@tapjs/, `the child's NODE_OPTIONS: ${seen.o}`);
  t.notMatch(seen.a.join(' '), /@tapjs/, 'nor on its command line');
});

t.test('what is removed, what is kept', async (t) => {
  const tap = '--import=file:///w/node_modules/@tapjs/processinfo/dist/esm/import.mjs';
  t.equal(withoutTapInstrumentation(`"${tap}"`), undefined, 'quoted, alone: nothing left');
  t.equal(withoutTapInstrumentation(`--max-old-space-size=512 "${tap}" --trace-gc`), '--max-old-space-size=512 --trace-gc', 'others kept');
  t.equal(withoutTapInstrumentation('--loader=/x/node_modules/@tapjs/processinfo/dist/esm/loader.mjs --inspect'), '--inspect', 'the --loader form of older Nodes');
  t.equal(withoutTapInstrumentation('--import=./mine.mjs'), '--import=./mine.mjs', 'an import of ours stays');
  t.equal(withoutTapInstrumentation(undefined), undefined);
});
