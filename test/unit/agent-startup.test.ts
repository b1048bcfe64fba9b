// What an agent's start loads and notes (issue 14: a restarted agent serves again within a second of its start).
// The compiled agent is run with a module-load hook: configured from a file, it must not load the xDS client (gRPC,
// protobufjs), the Kubernetes client, the HBONE tunnel or systeminformation before it serves; nor, with its modules,
// prom-client's index (with @opentelemetry/api: 65-71 ms) or yaml (35-37 ms, loaded when a config text is parsed);
// the phases it notes come out in order.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { nodeFactsOnce, type NodeFacts } from '../../agent/observe/node.js';
import { reportStartPhases, startPhase, startPhases } from '../../agent/starttrace.js';
import { AGENT_NODE_FLAGS } from '../../agent/runtime.js';
import { ROOT } from '../lib/kernel.js';

// Every module the agent's process loads (ESM resolve hook: ours, and the packages' entry points; CJS: every require),
// printed on stderr as 'LOADED <url or path>'.
const HOOKS = `export async function resolve(spec, ctx, next) { const r = await next(spec, ctx); process.stderr.write('LOADED ' + r.url + '\\n'); return r; }`;
const PRELOAD = `import { register } from 'node:module'; import Module from 'node:module';
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(HOOKS)}));
const load = Module._load; Module._load = function (req, parent, main) { const r = load.apply(this, arguments); process.stderr.write('LOADED ' + Module._resolveFilename(req, parent, main) + '\\n'); return r; };`;

function loadedBy(t: Test, args: string[]): string[] {
  const r = spawnSync(process.execPath, [...AGENT_NODE_FLAGS, '--import', `data:text/javascript,${encodeURIComponent(PRELOAD)}`, join(ROOT, 'dist', 'agent', 'main.js'), ...args],
    { encoding: 'utf8', timeout: 30_000 });
  t.equal(r.status, 0, `sockmesh-agent ${args.join(' ')} ran: ${r.stderr.split('\n').filter((l) => !l.startsWith('LOADED ')).join(' ').slice(0, 300)}`);
  return r.stderr.split('\n').filter((l) => l.startsWith('LOADED ')).map((l) => l.slice(7));
}

t.test('a file-configured agent\'s start graph leaves out gRPC, protobufjs, the Kubernetes client, the tunnel, systeminformation, prom-client\'s index and yaml', async (t) => {
  // --version evaluates every module main.ts imports statically (the start path's graph) and nothing else
  const loaded = loadedBy(t, ['--version']);
  const has = (part: string): boolean => loaded.some((u) => u.includes(part));
  // the hook sees what is loaded: the wiring and the packages a start needs
  for (const part of ['/dist/agent/agent.js', '/dist/agent/proxy/server.js', '/node_modules/pino/', '/node_modules/commander/', '/node_modules/prom-client/lib/registry.js']) {
    t.ok(has(part), `loaded: ${part}`);
  }
  for (const part of ['/node_modules/@grpc/', '/node_modules/protobufjs/', '/dist/xds/', '/dist/agent/sources/xds/', '/dist/kube/', '/dist/agent/sources/kube.js', '/node_modules/systeminformation/',
    '/dist/agent/tunnelhost.js', '/dist/agent/tunnel/', '/node_modules/prom-client/index.js', '/node_modules/@opentelemetry/', '/node_modules/yaml/']) {
    t.notOk(has(part), `not loaded: ${part}`);
  }
});

t.test('start phases: noted in order with their time and CPU, logged only with SOCKMESH_START_TRACE', async (t) => {
  startPhase('first');
  let x = 0;
  for (let i = 0; i < 2e6; i++) x += i; // some CPU between the two
  startPhase('second');
  const phases = startPhases();
  t.ok(x > 0);
  t.match(phases[0]!.phase, /^node: bootstrap complete/, 'Node\'s bootstrap first');
  // this test file's module is evaluated after the runner's own: the agent's first mark is in the list too
  const mine = phases.filter((p) => p.phase === 'first' || p.phase === 'second');
  t.same(mine.map((p) => p.phase), ['first', 'second']);
  t.ok(Math.abs(mine[1]!.tookMs - (mine[1]!.atMs - mine[0]!.atMs)) <= 0.15, 'took = the time since the previous phase (rounded to 0.1 ms)');
  t.ok(mine[1]!.cpuMs >= mine[0]!.cpuMs && mine[0]!.cpuMs > 0, `CPU so far grows (${mine[0]!.cpuMs} -> ${mine[1]!.cpuMs} ms)`);
  for (let i = 1; i < phases.length; i++) t.ok(phases[i]!.atMs >= phases[i - 1]!.atMs, `${phases[i]!.phase} after ${phases[i - 1]!.phase}`);

  const lines: { o: object; msg: string }[] = [];
  const log = { info: (o: object, msg: string) => { lines.push({ o, msg }); } };
  reportStartPhases(log, {});
  t.same(lines, [], 'nothing without SOCKMESH_START_TRACE');
  reportStartPhases(log, { SOCKMESH_START_TRACE: '1' });
  t.equal(lines.length, 1);
  t.equal(lines[0]!.msg, 'start phases');
  t.match(lines[0]!.o, { timeOrigin: Number, phases: Array });
  t.ok(Math.abs((lines[0]!.o as { timeOrigin: number }).timeOrigin - performance.timeOrigin) < 1, 'with the process\'s origin in epoch ms');
});

t.test('node facts: gathered when first asked, once; a failed gathering is tried again', async (t) => {
  const facts: NodeFacts = { hostname: 'h', kernel: 'k', distro: 'd', arch: 'a', cpus: 2, cpuModel: 'm', memoryTotalBytes: 1 };
  let calls = 0;
  let fail = true;
  const once = nodeFactsOnce(async () => { calls++; if (fail) throw new Error('lsb_release: not found'); return facts; });
  t.equal(calls, 0, 'nothing gathered before the first ask');
  await t.rejects(once(), /lsb_release/, 'the failure reaches the asker');
  fail = false;
  t.same(await once(), facts, 'tried again after a failure');
  t.same(await Promise.all([once(), once()]), [facts, facts]);
  t.equal(calls, 2, 'then kept');
});
