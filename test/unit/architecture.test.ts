// The import direction of ARCHITECTURE.md, kept by a test: every import between the project's own files is mapped to
// the modules of both ends, and an arrow the table below does not allow fails here, naming the file and the line.
// Cycles between files are refused too (a cycle is two modules that cannot be understood one without the other).
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..', '..');

/**
 * Modules by path prefix (the longest prefix wins) and what each may import. A module may always import itself.
 * Leaves first: what is lower in the list may import what is higher, never the other way (bench and the wiring
 * files at the top of agent/ may import anything).
 */
const MODULES: [prefix: string, name: string, mayImport: string[]][] = [
  // leaves: small utilities every layer may use
  ['agent/observe/log.ts', 'log', []],
  ['agent/observe/memory.ts', 'memory', []],
  ['agent/observe/prom.ts', 'prom', []],
  ['agent/runtime.ts', 'runtime', []],
  ['agent/addon.ts', 'addon', []],
  // the model: pure TypeScript, no I/O
  ['agent/model/', 'model', []],
  ['xds/', 'xds', ['model']],
  // what both ends read from Kubernetes: the API client and reflectors, and the translation of its objects to the model
  ['kube/', 'kube', ['model', 'log']],
  // what fills the model, and the two that enforce it
  ['agent/sources/', 'sources', ['model', 'xds', 'kube', 'configtext', 'log']],
  // the bounded reader of config files: the agent's file source and the control plane's config directory
  ['agent/sources/configtext.ts', 'configtext', []],
  ['agent/datapath/', 'datapath', ['model', 'addon', 'log']],
  ['agent/health/', 'health', ['model', 'log']],
  ['agent/identity/', 'identity', ['model', 'log']],
  ['agent/proxy/', 'proxy', ['model', 'health', 'identity', 'protocol', 'addon', 'log', 'prom']],
  // HBONE between node agents: the identities' certificates, the model's L4 authorization, report types, and the
  // proxy's HTTP/2 session and sockets (proxy/h2/, proxy/netio.ts) it runs on
  ['agent/tunnel/', 'tunnel', ['model', 'identity', 'protocol', 'proxy', 'log']],
  // the centre: what is in force, and the transaction that puts a model into the kernel and the proxy
  ['agent/state/', 'state', ['model', 'health', 'identity', 'datapath', 'memory', 'log']],
  // the readers
  ['agent/observe/', 'observe', ['model', 'datapath', 'health', 'state', 'log', 'prom']],
  ['agent/admin/protocol.ts', 'protocol', ['model', 'datapath', 'sources', 'health', 'identity', 'observe', 'state']],
  ['agent/admin/', 'admin', ['protocol', 'model', 'observe', 'datapath', 'health', 'state', 'identity', 'sources', 'proxy', 'log']],
  // composition: agent/agent.ts, main.ts and the small wiring modules beside them
  ['agent/', 'wiring', ['*']],
  ['cli/', 'cli', ['protocol', 'datapath', 'identity', 'observe', 'addon', 'log', 'runtime']],
  ['controlplane/', 'controlplane', ['model', 'xds', 'kube', 'configtext', 'log']],
  // the node lab (pods as a CNI and the kubelet make them): tests, benches and `npm run lab` share it
  ['lab/', 'lab', ['datapath']],
  ['bench/', 'bench', ['*']],
];

function moduleOf(file: string): [string, string[]] | undefined {
  let best: [string, string, string[]] | undefined;
  for (const m of MODULES) if (file.startsWith(m[0]) && (!best || m[0].length > best[0].length)) best = m;
  return best ? [best[1], best[2]] : undefined;
}

/** May `from` import `to`? Files in no module are reported by their own test. */
function allowed(from: string, to: string): boolean {
  const f = moduleOf(from);
  const t = moduleOf(to);
  if (!f || !t) return true;
  return f[0] === t[0] || f[1].includes('*') || f[1].includes(t[0]);
}

function sources(dir: string): string[] {
  const out: string[] = [];
  let names: string[];
  try { names = readdirSync(join(root, dir)); } catch { return out; }
  for (const n of names) {
    const rel = `${dir}/${n}`;
    if (statSync(join(root, rel)).isDirectory()) out.push(...sources(rel));
    else if (n.endsWith('.ts') && !n.endsWith('.d.ts')) out.push(rel);
  }
  return out;
}

interface Arrow { from: string; to: string; line: number }

function arrows(): Arrow[] {
  const out: Arrow[] = [];
  for (const file of ['agent', 'cli', 'controlplane', 'bench', 'xds', 'kube', 'lab'].flatMap(sources)) {
    const text = readFileSync(join(root, file), 'utf8');
    for (const ref of ts.preProcessFile(text, true, true).importedFiles) {
      if (!ref.fileName.startsWith('.')) continue;
      const target = relative(root, resolve(root, dirname(file), ref.fileName)).replace(/\.js$/, '.ts');
      const line = text.slice(0, ref.pos).split('\n').length;
      out.push({ from: file, to: target, line });
    }
  }
  return out;
}

const all = arrows();

t.test('the graph was read: the wiring imports the datapath, the proxy and the model', async (t) => {
  t.ok(all.length > 200, `${all.length} imports read`);
  for (const want of ['agent/datapath/', 'agent/proxy/', 'agent/model/']) {
    t.ok(all.some((a) => a.to.startsWith(want)), `someone imports ${want}`);
  }
});

t.test('every import goes the intended direction (ARCHITECTURE.md)', async (t) => {
  const wrong: string[] = [];
  for (const a of all) {
    if (allowed(a.from, a.to)) continue;
    wrong.push(`${a.from}:${a.line} (${moduleOf(a.from)![0]}) imports ${a.to} (${moduleOf(a.to)![0]})`);
  }
  t.same(wrong, [], 'arrows against the direction');
});

t.test('a module outside the table is noticed, not silently allowed', async (t) => {
  const unknown = [...new Set(all.flatMap((a) => [a.from, a.to]).filter((f) => !moduleOf(f)))];
  t.same(unknown, [], 'files in no module of the table');
});

t.test('no import cycles between files', async (t) => {
  const graph = new Map<string, string[]>();
  for (const a of all) {
    const list = graph.get(a.from);
    if (list) list.push(a.to); else graph.set(a.from, [a.to]);
  }
  // Tarjan's strongly connected components: any component of more than one file is a cycle.
  let index = 0;
  const idx = new Map<string, number>(), low = new Map<string, number>(), onStack = new Set<string>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index); low.set(v, index); index++;
    stack.push(v); onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) { visit(w); low.set(v, Math.min(low.get(v)!, low.get(w)!)); }
      else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do { w = stack.pop()!; onStack.delete(w); comp.push(w); } while (w !== v);
      if (comp.length > 1) cycles.push(comp.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  t.same(cycles, [], 'files that import each other, directly or around a loop');
});

t.test('the checker itself: arrows against the direction are caught', async (t) => {
  t.notOk(allowed('agent/model/types.ts', 'agent/datapath/abi.ts'), 'model -> datapath');
  t.notOk(allowed('agent/datapath/datapath.ts', 'agent/proxy/types.ts'), 'datapath -> proxy');
  t.notOk(allowed('agent/proxy/netio.ts', 'agent/datapath/native.ts'), 'proxy -> datapath');
  t.notOk(allowed('agent/observe/events.ts', 'agent/admin/server.ts'), 'observe -> admin');
  t.notOk(allowed('controlplane/http.ts', 'agent/sources/xds/digest.ts'), 'controlplane -> the agent\'s xDS client');
  t.notOk(allowed('cli/meshctl.ts', 'agent/proxy/policy.ts'), 'cli -> proxy');
  t.ok(allowed('agent/proxy/policy.ts', 'agent/observe/log.ts'), 'anyone -> log (the longest prefix wins)');
  t.ok(allowed('agent/agent.ts', 'agent/proxy/server.ts'), 'the wiring -> anything');
});
