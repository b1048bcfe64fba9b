// The programs' V8 flags are written in three places that cannot import agent/runtime.ts: the shebangs of the two
// daemons and the image's wrappers. What the benchmarks measure (they pass the constants) must be what users run.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AGENT_NODE_FLAGS, CONTROLPLANE_NODE_FLAGS } from '../../agent/runtime.js';

const ROOT = join(import.meta.dirname, '..', '..');
const read = (f: string) => readFileSync(join(ROOT, f), 'utf8');

t.test('shebangs and image wrappers carry the flags of agent/runtime.ts', async (t) => {
  for (const [file, flags] of [['agent/main.ts', AGENT_NODE_FLAGS], ['controlplane/main.ts', CONTROLPLANE_NODE_FLAGS]] as const) {
    t.equal(read(file).split('\n')[0], flags.length ? `#!/usr/bin/env -S node ${flags.join(' ')}` : '#!/usr/bin/env node', `${file}: shebang`);
  }
  const image = read('scripts/image.sh');
  for (const [program, flags, js] of [['sockmesh-agent', AGENT_NODE_FLAGS, 'agent/main.js'], ['sockmesh-controlplane', CONTROLPLANE_NODE_FLAGS, 'controlplane/main.js']] as const) {
    t.ok(image.includes(`\nwrapper ${program} '${flags.join(' ')}' ${js}\n`), `scripts/image.sh: the ${program} wrapper passes ${flags.join(' ')}`);
  }
  t.ok(read('package.json').includes(`"start": "node ${AGENT_NODE_FLAGS.join(' ')} dist/agent/main.js"`), 'npm start: the agent flags');
});
