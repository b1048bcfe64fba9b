// The apply transaction without a kernel: the kernel and the proxy policy are fakes that record what they were given
// and fail on demand. What is in force (LiveState) must only ever be a model both accepted.
import t, { type Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApplyTransaction, type KernelApplyResult, type KernelTarget, type PolicyTarget } from '../../agent/state/apply.js';
import { LiveState } from '../../agent/state/live.js';
import type { Model } from '../../agent/model/types.js';
import { backend, captureLog, model, service } from '../lib/l7model.js';

const RESULT: KernelApplyResult = { backendsWritten: 1, backendsDeleted: 0, backendsRetiring: 0, frontendsWritten: 1, frontendsDeleted: 0, udpSocketsDestroyed: 0, ms: 0.25 };

interface KernelCall { model: Model; changed: string[] | undefined }

class FakeKernel implements KernelTarget {
  calls: KernelCall[] = [];
  resets = 0;
  /** the next this many apply() calls throw */
  failures = 0;
  onApply?: () => void;
  apply(m: Model, changed?: ReadonlySet<string>): KernelApplyResult {
    this.calls.push({ model: m, changed: changed && [...changed].sort() });
    this.onApply?.();
    if (this.failures > 0) {
      this.failures--;
      throw new Error('bpf_map_update_elem sm_backends: E2BIG');
    }
    return RESULT;
  }
  reset(): void { this.resets++; }
}

class FakePolicy implements PolicyTarget {
  updates: { model: Model; changed: string[] | undefined }[] = [];
  refuse: string | null = null;
  update(m: Model, _workloadOf: (id: bigint) => string | undefined, changed?: ReadonlySet<string>): void {
    if (this.refuse) throw new Error(this.refuse);
    this.updates.push({ model: m, changed: changed && [...changed].sort() });
  }
}

function setup(t: Test, withPolicy = true) {
  const state = new LiveState('/nonexistent-cgroup-root');
  const kernel = new FakeKernel();
  const policy = withPolicy ? new FakePolicy() : undefined;
  const { log, lines } = captureLog('info');
  const committed: { model: Model; changed: string[] | undefined }[] = [];
  const tx = new ApplyTransaction({
    state, kernel, policy, log, coalesceMs: 5,
    committed: (m, changed) => committed.push({ model: m, changed: changed && [...changed].sort() }),
  });
  t.teardown(() => { tx.close(); state.close(); });
  return { state, kernel, policy: policy!, tx, lines, committed };
}

const web = (port = 18080) => service('web', '127.100.0.1', 80, [backend(port), backend(port + 1)]);
const api = (port = 19080) => service('api', '127.100.0.2', 80, [backend(port)]);
const weights = (m: Model, name: string): number[] => m.services.find((s) => s.name === name)!.frontends[0]!.backends.map((b) => b.weight);

t.test('a good apply commits: policy, kernel, then the state and what follows it', async (t) => {
  const { state, kernel, policy, tx, lines, committed } = setup(t);
  const m = model(web(), api());
  t.equal(tx.apply(m, 'test'), null);
  t.equal(state.model, m, 'in force');
  t.equal(state.configVersion, 1);
  t.equal(state.lastConfigError, null);
  t.equal(state.lastReconcile?.ms, 0.25);
  t.equal(kernel.calls.length, 1);
  t.equal(kernel.calls[0]!.model, m, 'nothing out: the kernel gets the model itself');
  t.equal(kernel.calls[0]!.changed, undefined, 'in full');
  t.same(policy.updates, [{ model: m, changed: undefined }]);
  t.same(committed, [{ model: m, changed: undefined }]);
  t.match(lines.find((l) => l.msg === 'config applied'), { why: 'test', version: 1, services: 2, backendsWritten: 1 });
  const m2 = model(web(28080), api());
  t.equal(tx.apply(m2, 'test'), null);
  t.equal(state.model, m2);
  t.equal(state.configVersion, 2);
});

t.test('the policy refuses: nothing changes, the error is reported', async (t) => {
  const { state, kernel, policy, tx, committed } = setup(t);
  const m = model(web());
  t.equal(tx.apply(m, 'test'), null);
  policy.refuse = 'route r: bad regex';
  t.equal(tx.apply(model(web(28080)), 'test'), 'route r: bad regex');
  t.equal(state.model, m, 'the last good model stays');
  t.equal(state.configVersion, 1);
  t.equal(state.lastConfigError, 'route r: bad regex');
  t.equal(kernel.calls.length, 1, 'the kernel was not asked');
  t.equal(committed.length, 1, 'nothing followed the refused model');
  policy.refuse = null;
  t.equal(tx.apply(model(web(38080)), 'test'), null);
  t.equal(state.lastConfigError, null, 'cleared by the next good one');
});

t.test('the kernel fails: the last good model is restored in full, the policy with it', async (t) => {
  const { state, kernel, policy, tx, lines, committed } = setup(t);
  const good = model(web(), api());
  t.equal(tx.apply(good, 'test'), null);
  kernel.failures = 1;
  const bad = model(web(28080), api());
  t.match(tx.apply(bad, 'xds', new Set(['web'])), /^applying to the kernel failed: .*E2BIG/);
  t.equal(state.model, good, 'the last good model is in force');
  t.equal(state.configVersion, 1);
  t.match(state.lastConfigError, /E2BIG/);
  t.equal(kernel.resets, 1, 'the kernel was read back');
  t.same(kernel.calls.slice(1).map((c) => [c.model, c.changed]), [[bad, ['web']], [good, undefined]], 'then the last good model applied in full');
  t.same(policy.updates.slice(1), [{ model: bad, changed: ['web'] }, { model: good, changed: undefined }], 'the policy back on the last good model, in full');
  t.equal(committed.length, 1);
  t.ok(lines.some((l) => l.msg === 'applying the config to the kernel failed'));
  t.notOk(tx.needFullApply, 'restored: the next apply may be scoped again');
  t.equal(tx.apply(model(web(38080), api()), 'xds', new Set(['web'])), null);
  t.same(kernel.calls.at(-1)!.changed, ['web']);
});

t.test('the kernel fails and restoring fails too: the next apply is in full, whatever it names', async (t) => {
  const { state, kernel, policy, tx, lines } = setup(t);
  const good = model(web(), api());
  t.equal(tx.apply(good, 'test'), null);
  kernel.failures = 2;
  t.match(tx.apply(model(web(28080), api()), 'xds', new Set(['web'])), /E2BIG/);
  t.ok(lines.some((l) => l.msg === 'restoring the last good config failed too'));
  t.ok(tx.needFullApply);
  t.equal(state.model, good);
  const next = model(web(38080), api());
  t.equal(tx.apply(next, 'xds', new Set(['web'])), null);
  t.same(kernel.calls.at(-1)!.changed, undefined, 'applied in full');
  t.same(policy.updates.at(-1)!.changed, undefined, 'the policy in full too');
  t.notOk(tx.needFullApply);
  t.equal(state.model, next);
});

t.test('at start a refusal throws and nothing is restored', async (t) => {
  const k = setup(t);
  k.kernel.failures = 1;
  t.throws(() => k.tx.first(model(web())), /E2BIG/);
  t.equal(k.kernel.resets, 0);
  t.equal(k.state.model, undefined);
  t.match(k.state.lastConfigError, /E2BIG/);
  const p = setup(t);
  p.policy.refuse = 'no';
  t.throws(() => p.tx.first(model(web())), /no/);
  t.equal(p.kernel.calls.length, 0);
  const ok = setup(t);
  ok.tx.first(model(web()));
  t.match(ok.lines.find((l) => l.msg === 'config applied'), { why: 'start' });
});

t.test('scoped applies: the scope goes to the policy, the kernel and what follows', async (t) => {
  const { state, kernel, policy, tx, committed } = setup(t);
  t.equal(tx.apply(model(web(), api()), 'test'), null);
  const m = model(web(28080), api());
  t.equal(tx.apply(m, 'xds', new Set(['web'])), null);
  t.same(kernel.calls.at(-1)!.changed, ['web']);
  t.same(policy.updates.at(-1)!.changed, ['web']);
  t.same(committed.at(-1), { model: m, changed: ['web'] });
  t.equal(state.model, m);
});

t.test('without a proxy policy the kernel alone decides', async (t) => {
  const { state, kernel, tx } = setup(t, false);
  t.equal(tx.apply(model(web()), 'test'), null);
  kernel.failures = 1;
  t.match(tx.apply(model(web(28080)), 'test'), /E2BIG/);
  t.equal(state.configVersion, 1);
});

t.test('backend state changes are coalesced and applied to the services they touch', async (t) => {
  const { state, kernel, tx, lines } = setup(t);
  const m = model(web(), api(), service('db', '127.100.0.3', 80, [backend(20080), backend(20081)]));
  t.equal(tx.apply(m, 'test'), null);
  state.states.setProbe('web', '127.0.0.1:18080', false, 'connect ECONNREFUSED');
  state.states.setProbe('db', '127.0.0.1:20081', false, 'timeout');
  state.states.setProbe('gone', '127.0.0.1:1', false, 'not in the model');
  t.equal(kernel.calls.length, 1, 'nothing applied yet: coalescing');
  await sleep(30);
  t.equal(kernel.calls.length, 2, 'one apply for the burst');
  const call = kernel.calls[1]!;
  t.same(call.changed, ['db', 'web'], 'scoped to the live services that changed');
  t.same(weights(call.model, 'web'), [0, 1], 'the out backend at weight 0');
  t.same(weights(call.model, 'db'), [1, 0]);
  t.equal(state.model, m, 'the model in force is the desired one, not the effective one');
  t.equal(state.configVersion, 1, 'a state change is no new config');
  t.match(lines.find((l) => l.msg === 'backend states applied'), { services: [{ service: 'web', out: ['127.0.0.1:18080'] }, { service: 'db', out: ['127.0.0.1:20081'] }] });
  // a config reload keeps the out backend out
  t.equal(tx.apply(model(web(), api()), 'test'), null);
  t.same(weights(kernel.calls.at(-1)!.model, 'web'), [0, 1]);
  // only changes of services not in the model: nothing to apply
  state.states.setProbe('gone', '127.0.0.1:1', true);
  await sleep(30);
  t.equal(kernel.calls.length, 3);
});

t.test('a backend state change the kernel refuses restores the last good model with the current states', async (t) => {
  const { state, kernel, tx } = setup(t);
  const m = model(web());
  t.equal(tx.apply(m, 'test'), null);
  kernel.failures = 1;
  state.states.setProbe('web', '127.0.0.1:18081', false);
  await sleep(30);
  t.equal(kernel.resets, 1);
  const restore = kernel.calls.at(-1)!;
  t.equal(restore.changed, undefined, 'in full');
  t.same(weights(restore.model, 'web'), [1, 0], 'with the change in it');
  t.notOk(tx.needFullApply);
});

t.test('panics are entered and left, logged once each, and kept in the state', async (t) => {
  const { state, kernel, tx, lines } = setup(t);
  t.equal(tx.apply(model(web(), api()), 'test'), null);
  const entered = () => lines.filter((l) => String(l.msg).startsWith('every backend of a frontend is out')).length;
  let enteredAtApply = -1;
  kernel.onApply = () => { enteredAtApply = entered(); };
  state.states.setProbe('api', '127.0.0.1:19080', false, 'down');
  await sleep(30);
  t.equal(enteredAtApply, 0, 'the panic is logged after the kernel was told, not before');
  kernel.onApply = undefined;
  t.same(weights(kernel.calls.at(-1)!.model, 'api'), [1], 'panic: the only backend is kept');
  t.same(state.panicList().map((p) => [p.service, p.vip, p.backends]), [['api', '127.100.0.2', ['127.0.0.1:19080']]]);
  t.equal(entered(), 1);
  t.match(lines.find((l) => String(l.msg).startsWith('every backend')), { level: 40, service: 'api', frontends: ['127.100.0.2:80/tcp'] });
  // another apply while in panic: no second warning
  t.equal(tx.apply(model(web(28080), api()), 'test'), null);
  t.equal(entered(), 1, 'reported once');
  t.equal(state.panicList().length, 1);
  state.states.setProbe('api', '127.0.0.1:19080', true);
  await sleep(30);
  t.same(state.panicList(), [], 'out of panic');
  t.match(lines.find((l) => l.msg === 'out of panic: some backends are healthy again'), { service: 'api' });
  // a service in panic that leaves the model leaves the panics with it
  state.states.setProbe('api', '127.0.0.1:19080', false);
  await sleep(30);
  t.equal(state.panicList().length, 1);
  t.equal(tx.apply(model(web()), 'test'), null);
  t.same(state.panicList(), [], 'gone with its service');
});

t.test('workload identities follow the model in force only', async (t) => {
  const { state, kernel, tx } = setup(t);
  const withWorkloads = (name: string): Model => ({ ...model(web()), workloads: [{ name, cgroups: ['/'] }] });
  const seen: (string | undefined)[] = [];
  const spy = state.identities.follow.bind(state.identities);
  state.identities.follow = (w) => { seen.push(w?.[0]?.name); spy(w); };
  t.equal(tx.apply(withWorkloads('reader'), 'test'), null);
  kernel.failures = 1;
  t.match(tx.apply(withWorkloads('admin'), 'test'), /E2BIG/);
  t.same(seen, ['reader'], 'the rejected model\'s workloads were never followed');
});

t.test('after a burst of 100 small applies, once they stop, the heap is compacted once; not while they go on', async (t) => {
  const state = new LiveState('/nonexistent-cgroup-root');
  let collected = 0;
  const tx = new ApplyTransaction({ state, kernel: new FakeKernel(), log: captureLog('silent').log, collectGarbage: () => collected++, churnQuietMs: 400 });
  t.teardown(() => { tx.close(); state.close(); });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const tick = () => new Promise((r) => setImmediate(r)); // timers due run, none is due for 400 ms
  for (let i = 0; i < 99; i++) t.equal(tx.apply(model(web(20000 + 2 * i)), 'test', new Set(['web'])), null);
  await sleep(900);
  t.equal(collected, 0, '99 applies: no compaction');
  for (let i = 0; i < 30; i++) {
    tx.apply(model(web(30000 + 2 * i)), 'test', new Set(['web']));
    await tick();
  }
  t.equal(collected, 0, 'still changing: V8 decides');
  await sleep(900);
  t.equal(collected, 1, 'quiet after the burst: compacted');
  await sleep(1500);
  t.equal(collected, 2, 'with a second collection a second later (when V8 gives the memory back)');
  await sleep(1500);
  t.equal(collected, 2, 'and not again without another burst');
});
