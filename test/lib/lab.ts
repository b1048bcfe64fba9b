// The node lab for tests: the lab itself is lab/lab.ts (shared with the benches and `npm run lab`); a test's lab is
// taken down at the test's teardown.
import { Lab, type LabOpts } from '../../lab/lab.js';

export * from '../../lab/lab.js';

interface Teardown { teardown(fn: () => void | Promise<void>): void }

/** A lab for one test: down at the test's teardown (also when it fails). */
export async function testLab(t: Teardown, opts: LabOpts): Promise<Lab> {
  const lab = await Lab.up(opts);
  t.teardown(() => lab.down());
  return lab;
}
