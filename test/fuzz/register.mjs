// `node --import ./test/fuzz/register.mjs child.ts`: the tree's TypeScript loads from source, and the files named
// in SOCKMESH_FUZZ_INSTRUMENT (comma-separated repo-relative prefixes) get coverage probes (hooks.mjs says how).
import { register } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
const instrument = (process.env.SOCKMESH_FUZZ_INSTRUMENT ?? '').split(',').filter((s) => s !== '');
register('./hooks.mjs', import.meta.url, { data: { root, instrument } });
