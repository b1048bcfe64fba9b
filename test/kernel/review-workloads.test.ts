// Review: source workloads (cgroup id -> workload name) for L7 authorization, with real cgroups made by the test in
// its own cgroup (nothing attached, no BPF: the agent's lookup alone, the kernel mocked).
import t from 'tap';
import { statSync } from 'node:fs';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { ApplyTransaction } from '../../agent/state/apply.js';
import { LiveState } from '../../agent/state/live.js';
import { backend, captureLog, http, model, service } from '../lib/l7model.js';
import { kernelSkipReason, testCgroup } from '../lib/kernel.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

t.test('a workload\'s cgroup made after the config is known at its first request, whatever other lookups did', { skip: skip ?? false }, async (t) => {
  // Before the fix: an unknown cgroup id triggered a walk of the workloads' cgroups at most once a second for all ids
  // together. A pod started within a second of another unknown lookup (any meshed client in no workload makes one on
  // each request to a service with 'from' rules) was 'no workload': a deny rule scoped to its workload did not apply.
  const cg = testCgroup(t, 'review-wl');
  const rel = `/${cg.path.split('/').slice(-1)[0]}`;
  const state = new LiveState(cgroup2Root()!);
  t.teardown(() => state.close());
  const kernel = { apply: () => ({ ms: 0, backendsWritten: 0, backendsDeleted: 0, backendsRetiring: 0, frontendsWritten: 0, frontendsDeleted: 0, udpSocketsDestroyed: 0 }), reset: () => {} };
  const policy = new ProxyPolicy({ states: state.states, log: captureLog('silent').log });
  const tx = new ApplyTransaction({ state, kernel, policy, log: captureLog('silent').log });
  t.teardown(() => tx.close());
  const m = {
    ...model(service('web', '127.100.0.1', 80, [backend(18080)], http())),
    workloads: [{ name: 'untrusted', cgroups: [`${rel}/untrusted`] }, { name: 'batch', cgroups: [`${rel}/batch`] }],
  };
  t.equal(tx.apply(m, 'test'), null);
  const workloadOf = state.identities.of;
  const idOf = (p: string): bigint => statSync(p, { bigint: true }).ino;
  // a meshed client in no workload asks: its lookup walks the workloads' cgroups
  const stranger = idOf(cg.child('stranger'));
  t.equal(workloadOf(stranger), undefined, 'a cgroup in no workload');
  // right after, a pod of a workload starts and sends its first request
  const untrusted = idOf(cg.child('untrusted'));
  t.equal(workloadOf(untrusted), 'untrusted', 'known at its first request');
  const batch = idOf(cg.child('batch'));
  t.equal(workloadOf(batch), 'batch', 'and the next one too');
  // the stranger's repeated requests cost no walk each: its miss is remembered until the config changes
  let none = 0;
  for (let i = 0; i < 100; i++) if (workloadOf(stranger) === undefined) none++;
  t.equal(none, 100, 'still no workload');
  t.ok(state.identities.isMiss(stranger), 'remembered as a miss');
});
