#!/usr/bin/env node
// meshctl: inspect a sockmesh agent instance through its admin socket, or through its pinned maps when it is down.
import { Command, CommanderError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { AgentError } from './client.js';
import { Context, type GlobalOptions } from './context.js';
import { DEFAULT_BPFFS } from '../agent/admin/protocol.js';
import { CliError, EXIT } from './errors.js';
import { authz } from './commands/authz.js';
import { backends } from './commands/backends.js';
import { certs, identities } from './commands/certs.js';
import { doctor } from './commands/doctor.js';
import { events } from './commands/events.js';
import { execInMesh } from './commands/exec.js';
import { monitor } from './commands/monitor.js';
import { services } from './commands/services.js';
import { routes } from './commands/routes.js';
import { sockets } from './commands/sockets.js';
import { stats } from './commands/stats.js';
import { status } from './commands/status.js';
import { tunnels } from './commands/tunnels.js';

// The version of the package this file ships in (dist/cli/meshctl.js or cli/meshctl.ts: two levels below it).
// Read here rather than imported from the agent, which would load the whole agent just to print a number.
const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const EXIT_HELP = `
Exit codes:
  0  ok
  1  usage error, or an unexpected error (including an error answer from the agent)
  3  the agent is not running and the answer could not be given from the pinned maps
     (events, monitor, backends and routes always need the agent; status exits 3 when the agent is down, after printing
     what the pins say)
  4  no sockmesh datapath is pinned at --bpffs
  exec exits with the program's own exit code (128+N when it was killed by signal N).
  doctor exits by its worst verdict: 0 all ok (or skipped), 2 warnings only, 1 any check failed.

With the agent down, services, stats and sockets are read from the pinned maps (a note on stderr says so):
the datapath keeps running without the agent. --json prints exactly one JSON document on stdout.`;

function timeoutSeconds(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new CliError(`--timeout: expected a positive number of seconds, got '${v}'`);
  return n;
}

/** The global options, declared on the program and again on each command so they work on either side of it. */
function globalOptions(cmd: Command, withDefaults: boolean): Command {
  const bpffs = new Option('--bpffs <dir>', 'bpffs directory of the agent instance');
  const timeout = new Option('--timeout <seconds>', 'how long to wait for the agent').argParser(timeoutSeconds);
  if (withDefaults) {
    bpffs.default(DEFAULT_BPFFS);
    timeout.default(5);
  }
  return cmd
    .addOption(bpffs)
    .option('--run-dir <dir>', 'run directory with the admin socket and state.json (default: /run/sockmesh/<bpffs name>)')
    .option('--json', 'machine-readable output: exactly one JSON document on stdout')
    .addOption(timeout);
}

/** Options given after the command win over those given before it; defaults come from the program. */
function optionsOf(cmd: Command): GlobalOptions {
  const local = cmd.opts<Partial<GlobalOptions>>();
  const global = cmd.parent!.opts<GlobalOptions>();
  return {
    bpffs: local.bpffs ?? global.bpffs,
    runDir: local.runDir ?? global.runDir,
    json: Boolean(local.json ?? global.json),
    timeout: (local.timeout ?? global.timeout) * 1000,
  };
}

// `meshctl status | head` closes the pipe early: that is the reader's choice, not an error worth a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => { if (e.code !== 'EPIPE') throw e; });
}

const program = new Command()
  .name('meshctl')
  .description('Inspect sockmesh, the eBPF service mesh agent on this node (run as root)')
  .version(VERSION)
  .enablePositionalOptions()
  .showHelpAfterError('(run meshctl --help for usage)')
  .exitOverride()
  // Commander's own usage errors in meshctl's one-line form: "meshctl: unknown option '--x'".
  .configureOutput({ outputError: (s, write) => write(`meshctl: ${s.replace(/^error: /, '')}`) })
  .addHelpText('after', EXIT_HELP);
globalOptions(program, true);

let exitCode: number = EXIT.ok;

function command(name: string, description: string, run: (ctx: Context, cmd: Command) => Promise<number | void>): Command {
  const cmd = program.command(name).description(description);
  globalOptions(cmd, false);
  return cmd.action(async (...args: unknown[]) => {
    const self = args[args.length - 1] as Command;
    const code = await run(new Context(optionsOf(self)), self);
    if (typeof code === 'number') exitCode = code;
  });
}

command('status', 'agent up or down, node facts, attached programs, map fill', (ctx) => status(ctx));
command('services', 'frontends (service, VIP:port/proto, algorithm) and their backends: weight, share, state, traffic',
  (ctx) => services(ctx));
command('stats', 'global datapath counters and per-service counters', (ctx) => stats(ctx));
command('sockets', 'sockets on the sockmap fast path (the SOCKHASH entries)', (ctx) => sockets(ctx));
command('authz', 'L4 authorization in the kernel: decisions per policy, workload cgroup -> identity, per-identity verdicts (from the pins)',
  (ctx, cmd) => authz(ctx, cmd.opts<{ identity?: string }>())).option('--identity <spiffe-id>', 'only this identity\'s cgroups and verdicts');
command('events', 'recent sampled flow events (needs the agent)', (ctx) => events(ctx));
const list = (v: string, prev: string[] = []): string[] => [...prev, ...v.split(',').map((x) => x.trim()).filter(Boolean)];
function nonNegative(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new CliError(`${name}: expected a number >= 0, got '${v}'`);
    return n;
  };
}
command('monitor', 'live stream until Ctrl-C: balancing decisions, refusals, fast-path inserts and misses, L7 requests, health and config changes (needs the agent)',
  (ctx, cmd) => {
    const o = cmd.opts<{ service?: string[]; pod?: string[]; cgroup?: string[]; type?: string[]; verdict?: string[]; rate: number; summary: number; duration?: number }>();
    return monitor(ctx, {
      service: o.service, pod: o.pod, cgroup: o.cgroup, type: o.type, verdict: o.verdict, rate: o.rate,
      summaryMs: Math.max(100, Math.round(o.summary * 1000)), durationMs: o.duration ? o.duration * 1000 : undefined,
    });
  })
  .option('--service <name>', 'only this service (repeat or comma-separate for several)', list)
  .option('--pod <name>', 'only clients in this pod or workload', list)
  .option('--cgroup <path>', 'only clients in this cgroup (path under the cgroup2 mount, or a parent of it; or an id)', list)
  .option('--type <type>', 'only these: l4, fastpath, l7, health, config, or a kind (connect, no-backend, sock-insert, redirect-miss, request, ...)', list)
  .option('--verdict <verdict>', 'only these: forwarded, redirected, refused, inserted, missed, error, local, out, in, applied, rejected, nack', list)
  .option('--rate <n>', 'at most N events a second (the rest are counted, not shown; 0 = no limit)', nonNegative('--rate'), 1000)
  .option('--summary <seconds>', 'how often the agent says what was hidden (sampling, rate limit, slow reader)', nonNegative('--summary'), 5)
  .option('--duration <seconds>', 'stop after this long (default: until Ctrl-C)', nonNegative('--duration'))
  .addHelpText('after', '\nEvery filter is applied by the agent. --json prints one object per line (events, and {"type":"summary"} lines:\n' +
    'the kernel\'s sampling rate, its own counts against the events seen, what the rate limit and a slow reader dropped).');
command('identities', 'the workload identities on this node and their certificates\' state (needs the agent)', (ctx) => identities(ctx));
command('certs', 'workload certificates: identity, serial, expiry, time left, issuer; the trust bundle (needs the agent)', (ctx) => certs(ctx));
command('backends', 'backends in or out of service: why (failed health check, ejection) and since when (needs the agent)',
  (ctx, cmd) => backends(ctx, cmd.processedArgs[0] as string | undefined))
  .argument('[service]', 'only this service');
command('routes', 'L7 routes with the proxy\'s live numbers (needs the agent)',
  (ctx, cmd) => routes(ctx, cmd.processedArgs[0] as string | undefined))
  .argument('[service]', 'only this service');
command('tunnels', 'HBONE tunnels to and from other nodes: peer node, identity, connections, handshakes, streams, bytes; refusals (needs the agent)',
  (ctx) => tunnels(ctx));
command('doctor', 'check the node, the kernel, the pins and the agent; a verdict and a fix hint each (exit 0 ok, 2 warnings, 1 failures)',
  (ctx, cmd) => doctor(ctx, { cgroup: cmd.opts<{ cgroup?: string }>().cgroup }))
  .option('--cgroup <dir>', 'the meshed cgroup to check (default: what the agent or its state.json says)')
  .addHelpText('after', '\nExit codes: 0 every check ok (or skipped), 2 the worst verdict is a warning, 1 any check failed.\n' +
    'Works with the agent down: the kernel-side checks read the pins, the agent-side ones say it is not answering.');
command('exec', 'run a program inside the meshed cgroup (meshctl exec -- curl -s http://127.100.0.1/), or in a pod (--pod NAME)',
  (ctx, cmd) => execInMesh(ctx, cmd.processedArgs[0] as string, (cmd.processedArgs[1] as string[] | undefined) ?? [],
    cmd.opts<{ pod?: string }>().pod))
  .option('--pod <name>', 'run it in this pod: its cgroup, then its network namespace (a name as meshctl sockets shows it, ' +
    'e.g. kubepods-lab/pod-a, or its last part when unique)')
  .argument('<command>', 'program to run')
  .argument('[args...]', 'its arguments')
  .passThroughOptions()
  .addHelpText('after', '\nmeshctl options go before the program; everything from the program on is its own.\n' +
    'The exit code is the program\'s (128+N when it was killed by signal N).');

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    // --help and --version "fail" with code 0; commander already printed the usage error otherwise.
    exitCode = e.exitCode === 0 ? EXIT.ok : EXIT.error;
  } else if (e instanceof CliError) {
    process.stderr.write(`meshctl: ${e.message}\n`);
    exitCode = e.exitCode;
  } else if (e instanceof AgentError) {
    process.stderr.write(`meshctl: ${e.message}\n`);
    exitCode = EXIT.error;
  } else {
    process.stderr.write(`meshctl: ${(e as Error).message ?? String(e)}\n`);
    if (process.env.MESHCTL_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
    exitCode = EXIT.error;
  }
}
// Let stdout drain (a pipe may still hold the JSON) instead of exiting at once.
process.exitCode = exitCode;
