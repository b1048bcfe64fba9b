// meshctl exec: run a program inside the meshed cgroup, so its connections to service VIPs are balanced and its
// same-node traffic takes the sockmap fast path. The shell joins the cgroup itself and then execs the program:
// the program is inside from its first instruction, and its pid, stdio, and exit status are the child's own.
// With --pod NAME, in a pod instead: its cgroup first, then its network namespace (nsenter --net, never
// `ip netns exec`, which remounts /sys, where the cgroup tree would look empty).
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { join, relative } from 'node:path';
import type { StatusReport } from '../../agent/admin/protocol.js';
import { cgroupOf, requireCgroup2Root } from '../../agent/datapath/cgroup.js';
import { discoverPods, findPod } from '../../agent/identity/podns.js';
import { AgentUnreachable } from '../client.js';
import type { Context } from '../context.js';
import { CliError, EXIT } from '../errors.js';

/** The meshed cgroup: from the running agent, else from the state a previous agent left. */
export async function meshedCgroup(ctx: Context): Promise<string> {
  try {
    return (await ctx.client.get<StatusReport>('/v1/status')).kernel.cgroup;
  } catch (e) {
    if (!(e instanceof AgentUnreachable)) throw e;
    const cg = ctx.state()?.cgroup;
    if (cg) return cg;
    throw new CliError(`${e.message}, and no ${join(ctx.runDir, 'state.json')}: the agent must have been started ` +
      `(with this --run-dir/--bpffs) for meshctl to know the meshed cgroup`, EXIT.agentDown);
  }
}

// $1 is the cgroup.procs file, the rest is the command; "$@" keeps every argument intact, whatever it contains.
const JOIN_AND_EXEC = 'procs=$1; shift; echo $$ > "$procs" && exec "$@"';

/** Where a pod's programs run: the cgroup to join and the network namespace to enter ('' = the node's). */
export interface PodPlace { name: string; cgroup: string; netns: string }

/** Where the node lab (test/lib/lab.ts) keeps its state: a pod without a process yet is found there. */
const LAB_STATE_DIR = '/run/sockmesh-lab';

/** Lab pods under the meshed cgroup, from the lab's state files (no process needed). */
function labPods(meshed: string, dir: string): PodPlace[] {
  const out: PodPlace[] = [];
  let files: string[] = [];
  try { files = readdirSync(dir).filter((f) => f.endsWith('.json')); } catch { return out; }
  for (const f of files) {
    try {
      const lab = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { pods?: { name: string; cgroup: string; ns: string }[] };
      for (const p of lab.pods ?? []) {
        if (!p.cgroup.startsWith(`${meshed}/`)) continue;
        out.push({ name: relative(meshed, p.cgroup), cgroup: p.cgroup, netns: p.ns ? `/run/netns/${p.ns}` : '' });
      }
    } catch { /* a state file being written: skipped */ }
  }
  return out;
}

/**
 * A pod of the meshed cgroup tree by name ('kubepods-lab/pod-a', or 'pod-a' when only one pod is called so): from its
 * processes (agent/identity/podns.ts; its programs join the cgroup of the process found, a leaf), else from the node
 * lab's state. Unknown: an error naming the pods there are.
 */
export function resolvePod(meshed: string, name: string, labDir = LAB_STATE_DIR): PodPlace {
  const pods = discoverPods(meshed);
  const found = findPod(pods, name);
  if (found) {
    return { name: found.name, cgroup: cgroupOf(found.pid, requireCgroup2Root()), netns: found.hostNetwork ? '' : found.netnsPath };
  }
  const lab = labPods(meshed, labDir);
  const fromLab = lab.find((p) => p.name === name) ?? (() => {
    const tail = lab.filter((p) => p.name.split('/').pop() === name);
    return tail.length === 1 ? tail[0] : undefined;
  })();
  if (fromLab) return fromLab;
  const known = [...new Set([...pods.map((p) => p.name), ...lab.map((p) => p.name)])].sort();
  throw new CliError(`no pod '${name}' in the meshed cgroup ${meshed}` +
    (known.length ? ` (pods: ${known.join(', ')})` : ' (no pods there: no process below it, and no lab pod)'), EXIT.error);
}

export async function execInMesh(ctx: Context, command: string, args: string[], podName?: string): Promise<number> {
  const meshed = await meshedCgroup(ctx);
  const pod = podName === undefined ? undefined : resolvePod(meshed, podName);
  const cgroup = pod ? pod.cgroup : meshed;
  const procs = join(cgroup, 'cgroup.procs');
  if (!existsSync(procs)) throw new CliError(`the ${pod ? `cgroup of pod ${pod.name}` : 'meshed cgroup'} ${cgroup} does not exist (any more)`, EXIT.error);
  const argv = pod?.netns ? ['nsenter', `--net=${pod.netns}`, '--', command, ...args] : [command, ...args];
  const child = spawn('/bin/sh', ['-c', JOIN_AND_EXEC, 'sh', procs, ...argv], { stdio: 'inherit' });
  // A terminal's Ctrl-C reaches the whole foreground group anyway; a kill aimed at meshctl alone must reach the child.
  const forward = (sig: NodeJS.Signals) => (): void => { child.kill(sig); };
  const onInt = forward('SIGINT'), onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  return new Promise<number>((resolve, reject) => {
    child.on('error', (e) => reject(new CliError(`cannot start /bin/sh: ${e.message}`)));
    child.on('exit', (code, signal) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      // The shell's convention: killed by signal N exits 128+N.
      resolve(signal ? 128 + (constants.signals[signal] ?? 0) : code ?? 1);
    });
  });
}
