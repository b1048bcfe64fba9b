// The multi-node lab for tests (lab/cluster.ts): down at the test's teardown; one real agent per node, in the node's
// network namespace, its own agent cgroup, meshing the node's own pods cgroup, pinning and answering in the node's own
// bpffs and run directories.
import { Cluster, type ClusterNode, type ClusterOpts } from '../../lab/cluster.js';
import { startAgent, type AgentHandle, type AgentOpts, type TestCgroup } from './kernel.js';

export * from '../../lab/cluster.js';

interface Teardown { teardown(fn: () => void | Promise<void>): void }

/** A cluster for one test, its cgroups under the test's own cgroup: down at the test's teardown (also when it fails). */
export async function testCluster(t: Teardown, cg: TestCgroup, opts: Omit<ClusterOpts, 'cgroupRoot'>): Promise<Cluster> {
  const c = await Cluster.up({ ...opts, cgroupRoot: cg.path });
  t.teardown(() => c.down());
  return c;
}

/** Start the real agent of one node (killed and cleaned up at teardown, before the cluster goes down). */
export function startNodeAgent(t: Teardown, node: ClusterNode, opts: AgentOpts = {}): Promise<AgentHandle> {
  const cg = { path: node.meshedCgroup, original: node.agentCgroup } as TestCgroup;
  return startAgent(t, cg, {
    ...opts, netns: node.netns, bpffs: node.bpffs, runDir: node.runDir, inCgroup: node.agentCgroup,
    extraArgs: [...node.nodeFlags(), ...(opts.extraArgs ?? [])],
  });
}
