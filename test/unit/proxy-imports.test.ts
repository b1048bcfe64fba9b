// The proxy's modules import one another without a cycle (the engine once imported http2.ts, which imported the
// engine back): the engine's files reach the policy only through types.ts, the pools never the exchanges.
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../agent/proxy');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : f.endsWith('.ts') ? [p] : [];
  });
}

/** module -> the proxy modules it imports (type-only imports included: a cycle of types is a cycle of design) */
const graph = new Map<string, string[]>();
for (const f of files(root)) {
  const deps: string[] = [];
  for (const m of readFileSync(f, 'utf8').matchAll(/^(?:import|export)\s[^'";]*?from\s+'(\.[^']+)'/gms)) {
    const target = resolve(dirname(f), m[1]!.replace(/\.js$/, '.ts'));
    if (target.startsWith(root + '/')) deps.push(relative(root, target));
  }
  graph.set(relative(root, f), deps);
}

t.test('agent/proxy has no import cycle', async (t) => {
  t.ok(graph.size > 20 && (graph.get('server.ts') ?? []).includes('http1.ts'), 'the graph was read');
  const cycles: string[] = [];
  const state = new Map<string, 1 | 2>();
  const walk = (m: string, path: string[]): void => {
    if (state.get(m) === 2) return;
    if (state.get(m) === 1) { cycles.push([...path.slice(path.indexOf(m)), m].join(' -> ')); return; }
    state.set(m, 1);
    for (const d of graph.get(m) ?? []) walk(d, [...path, m]);
    state.set(m, 2);
  };
  for (const m of graph.keys()) walk(m, []);
  t.same(cycles, [], 'no cycle');
});
