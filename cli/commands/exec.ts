// meshctl exec: run a program inside the meshed cgroup, so its connections to service VIPs are balanced and its
// same-node traffic takes the sockmap fast path. The shell joins the cgroup itself and then execs the program:
// the program is inside from its first instruction, and its pid, stdio, and exit status are the child's own.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import type { StatusReport } from '../../agent/admin/protocol.js';
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

export async function execInMesh(ctx: Context, command: string, args: string[]): Promise<number> {
  const cgroup = await meshedCgroup(ctx);
  const procs = join(cgroup, 'cgroup.procs');
  if (!existsSync(procs)) throw new CliError(`the meshed cgroup ${cgroup} does not exist (any more)`, EXIT.error);
  const child = spawn('/bin/sh', ['-c', JOIN_AND_EXEC, 'sh', procs, command, ...args], { stdio: 'inherit' });
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
