// The xDS code's import direction (issue 10): xds/ is the shared module (protos, Envoy names, well-known types, the
// sockmesh conventions), the agent's client (agent/sources/xds) and the control plane (controlplane/) both build on
// it and on the model, and neither reaches into the other. A new arrow against that fails here.
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

function tsFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? tsFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []);
}

/** The repository files a file imports (relative specifiers, .js -> .ts), as paths from the root. */
function importsOf(file: string): string[] {
  const src = readFileSync(join(ROOT, file), 'utf8');
  const out: string[] = [];
  for (const m of src.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+'(\.[^']+)'/gm)) {
    out.push(relative(ROOT, resolve(ROOT, dirname(file), m[1]!)).replace(/\.js$/, '.ts'));
  }
  return out;
}

/** Per area, the areas it may import (prefixes of paths from the root). */
const ALLOWED: Record<string, string[]> = {
  'xds/': ['xds/', 'agent/model/'],
  'agent/sources/xds/': ['agent/sources/xds/', 'xds/', 'agent/model/', 'agent/observe/'],
  'controlplane/': ['controlplane/', 'xds/', 'agent/model/', 'agent/observe/'],
};

t.test('xds/, agent/sources/xds and controlplane/ import only in the intended direction', async (t) => {
  let checked = 0;
  for (const [area, allowed] of Object.entries(ALLOWED)) {
    const files = tsFiles(area);
    t.ok(files.length > 0, `${area} has files`);
    for (const f of files) {
      for (const dep of importsOf(f)) {
        checked++;
        if (!allowed.some((a) => dep.startsWith(a))) t.fail(`${f} imports ${dep}: ${area} may import only ${allowed.join(', ')}`);
      }
    }
  }
  t.ok(checked > 20, `${checked} imports checked`);
  // The checker itself: the arrow this issue removed would be caught.
  t.notOk(ALLOWED['controlplane/']!.some((a) => 'agent/sources/xds/digest-http.ts'.startsWith(a)), 'controlplane -> agent/sources is refused');
});
