// Review: source workloads (cgroup id -> workload name) for L7 authorization, with real cgroups made by the test in
// its own cgroup (nothing attached, no BPF: the agent's lookup alone, the datapath mocked).
import t from 'tap';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, type AgentOptions } from '../../agent/agent.js';
import { BackendStates } from '../../agent/health/states.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
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
  const runDir = mkdtempSync(join(tmpdir(), 'sockmesh-review-'));
  t.teardown(() => rmSync(runDir, { recursive: true, force: true }));
  const agent = new Agent({ runDir } as unknown as AgentOptions, captureLog('silent').log);
  const states = new BackendStates();
  t.teardown(() => states.close());
  const a = agent as unknown as Record<string, unknown>;
  const reconciler = { apply: () => ({ ms: 0 }), adopt: () => ({}), syncLocalAddresses: () => {} };
  a['reconciler'] = reconciler;
  a['newReconciler'] = () => reconciler;
  a['policy'] = new ProxyPolicy({ states, log: captureLog('silent').log });
  const m = {
    ...model(service('web', '127.100.0.1', 80, [backend(18080)], http())),
    workloads: [{ name: 'untrusted', cgroups: [`${rel}/untrusted`] }, { name: 'batch', cgroups: [`${rel}/batch`] }],
  };
  t.equal(agent.applyModel(m, 'test'), null);
  const workloadOf = a['workloadOf'] as (id: bigint) => string | undefined;
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
  t.ok((a['workloadMisses'] as Set<bigint>).has(stranger), 'remembered as a miss');
});
