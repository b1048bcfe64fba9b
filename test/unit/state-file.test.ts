// state.json: written by the agent (agent/state/statefile.ts), read by meshctl (cli/context.ts), one StateFile type.
import t from 'tap';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateFileWriter } from '../../agent/state/statefile.js';
import { Context } from '../../cli/context.js';
import { captureLog } from '../lib/l7model.js';

t.test('what the agent writes is what meshctl reads; unchanged names are not rewritten', async (t) => {
  const runDir = join(mkdtempSync(join(tmpdir(), 'sockmesh-state-')), 'instance');
  t.teardown(() => rmSync(join(runDir, '..'), { recursive: true, force: true }));
  const { log, lines } = captureLog('info');
  const w = new StateFileWriter({ runDir, bpffs: '/sys/fs/bpf/x', cgroup: '/sys/fs/cgroup/x', log });
  const source = {};
  let names = new Map([[1, 'web'], [2, 'api']]);
  w.write({ source, version: 1, names: () => names });
  const ctx = new Context({ bpffs: '/sys/fs/bpf/x', runDir, json: true, timeout: 100 });
  t.same(ctx.state(), { pid: process.pid, bpffs: '/sys/fs/bpf/x', cgroup: '/sys/fs/cgroup/x', services: { 1: 'web', 2: 'api' } });
  t.same([...ctx.serviceNames()], [[1, 'web'], [2, 'api']]);
  t.equal(statSync(runDir).mode & 0o777, 0o700, 'the run dir is the agent\'s own');
  // same names version from the same source: not written again
  writeFileSync(w.path, '{"pid":1}');
  w.write({ source, version: 1, names: () => names });
  t.equal(ctx.state()?.pid, 1, 'not rewritten');
  names = new Map([[1, 'web']]);
  w.write({ source, version: 2, names: () => names });
  t.same(ctx.state()?.services, { 1: 'web' }, 'a new names version is written');
  // a new source (the kernel was read back after a failed apply): written even at the same version
  writeFileSync(w.path, '{"pid":1}');
  w.write({ source: {}, version: 2, names: () => names });
  t.equal(ctx.state()?.pid, process.pid);
  t.equal(lines.length, 0, 'no warnings');
});

t.test('a state.json that cannot be written is a warning, not an error', async (t) => {
  const base = mkdtempSync(join(tmpdir(), 'sockmesh-state-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  writeFileSync(join(base, 'file'), '');
  const { log, lines } = captureLog('info');
  const w = new StateFileWriter({ runDir: join(base, 'file', 'sub'), bpffs: '/b', cgroup: '/c', log });
  w.write({ source: {}, version: 1, names: () => new Map() });
  t.match(lines, [{ level: 40, msg: /could not write state\.json/ }]);
});

// A finding of the fuzz target test/fuzz/targets/statefile.ts, once wrong.
t.test('fuzz finding: a damaged state.json gives meshctl integer ids and string names, or nothing', async (t) => {
  const runDir = mkdtempSync(join(tmpdir(), 'sockmesh-state-'));
  t.teardown(() => rmSync(runDir, { recursive: true, force: true }));
  const ctx = new Context({ bpffs: '/nonexistent', runDir, json: true, timeout: 1 }, { write: () => true }, { write: () => true });
  const read = (text: string) => { writeFileSync(join(runDir, 'state.json'), text); return [...ctx.serviceNames()]; };
  t.same(read('{"services":"web"}'), [], 'a string is not read as the list of its characters (was: 0 -> "w", 1 -> "e", ...)');
  t.same(read('{"services":{"-":"a","1.5":"b","x":"c","2":7,"3":"ok","007":"d"}}'), [[3, 'ok']], 'only integer ids with string names (was: NaN, 1.5, 2 -> 7)');
  t.same(read('{"services":["a","b"]}'), [], 'an array is not a map');
  t.same(ctx.state()?.services, {}, 'state() says the same');
});
