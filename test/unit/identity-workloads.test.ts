// Workload identity: cgroup directories (inode = the kernel's cgroup id) -> workload names, and the lookup the proxy
// makes per request (an id not seen yet is looked up at once; misses are remembered until the config changes).
import t from 'tap';
import { mkdtempSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveWorkloads, WorkloadIdentities } from '../../agent/identity/workloads.js';

t.test('resolveWorkloads: cgroup directory inode -> workload, descendants included, deeper wins', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'sockmesh-wl-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, 'pods/a/c1'), { recursive: true });
  mkdirSync(join(root, 'pods/a/c2'), { recursive: true });
  mkdirSync(join(root, 'pods/b'), { recursive: true });
  const ino = (p: string): bigint => statSync(join(root, p), { bigint: true }).ino;
  const m = resolveWorkloads(
    [
      { name: 'pod-a', cgroups: ['/pods/a'] },
      { name: 'sidecar-ish', cgroups: ['pods/a/c2'] },
      { name: 'pod-b', cgroups: ['/pods/b', '/pods/missing'] },
    ],
    root,
  );
  t.equal(m.get(ino('pods/a')), 'pod-a');
  t.equal(m.get(ino('pods/a/c1')), 'pod-a', 'a container cgroup under the pod');
  t.equal(m.get(ino('pods/a/c2')), 'sidecar-ish', 'the deeper named workload wins');
  t.equal(m.get(ino('pods/b')), 'pod-b');
  t.equal(m.get(ino('pods')), undefined);
  t.equal(resolveWorkloads(undefined, root).size, 0);
});

t.test('WorkloadIdentities: follows the workloads it is told, looks new cgroups up at once, remembers misses', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'sockmesh-wl-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, 'pods/a'), { recursive: true });
  mkdirSync(join(root, 'other'), { recursive: true });
  const ino = (p: string): bigint => statSync(join(root, p), { bigint: true }).ino;
  let now = 1_000_000;
  const ids = new WorkloadIdentities(root, () => now);
  t.equal(ids.of(ino('pods/a')), undefined, 'no workloads followed yet: nobody');
  ids.follow([{ name: 'pod-a', cgroups: ['/pods/a'] }]);
  t.equal(ids.of(ino('pods/a')), 'pod-a');
  // a container started after the config: known at its first lookup
  mkdirSync(join(root, 'pods/a/c1'));
  t.equal(ids.of(ino('pods/a/c1')), 'pod-a', 'a cgroup made after follow() is found at its first lookup');
  // a client in no workload: one walk, then remembered
  t.equal(ids.of(ino('other')), undefined);
  t.ok(ids.isMiss(ino('other')), 'remembered as a miss');
  // a miss is not walked for again within 10 s (a client in no workload costs one walk per config, not one per
  // request); a cgroup made meanwhile under a workload is still found at its first lookup
  let walks = ids.walks;
  for (let i = 0; i < 10; i++) t.equal(ids.of(ino('other')), undefined);
  t.equal(ids.walks, walks, 'no walk for a remembered miss');
  mkdirSync(join(root, 'pods/a/c2'));
  t.equal(ids.of(ino('pods/a/c2')), 'pod-a');
  t.equal(ids.walks, walks + 1, 'one walk for an id not seen yet');
  t.equal(ids.of(ino('pods/a/c2')), 'pod-a');
  t.equal(ids.walks, walks + 1, 'a known id costs none');
  // after 10 s the misses are forgotten and walked for again
  now += 10_001;
  walks = ids.walks;
  t.equal(ids.of(ino('other')), undefined);
  t.equal(ids.walks, walks + 1, 'walked for again');
  t.ok(ids.isMiss(ino('other')), 'a miss again');
  // a new model: resolved at once, misses forgotten
  ids.follow([{ name: 'pod-a', cgroups: ['/pods/a'] }, { name: 'other', cgroups: ['/other'] }]);
  t.notOk(ids.isMiss(ino('other')), 'misses forgotten with the new model');
  t.equal(ids.of(ino('other')), 'other');
  ids.follow(undefined);
  t.equal(ids.of(ino('other')), undefined, 'no workloads: nobody');
});
