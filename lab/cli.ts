// `npm run lab -- [--prefix demo] up [--cgroup sockmesh] [--pods 3] | down | status | exec POD -- CMD...`: a demo node
// lab to try sockmesh with pods (--prefix: another lab beside it; tests use it).
// `npm run lab -- [--prefix demo] cluster up [--nodes 2] [--pods 2] | down | status`: a multi-node lab (lab/cluster.ts),
// each node's cgroup subtree under <cgroup2>/sockmesh-cluster-<prefix>, with the command line of each node's agent.
// The pods' cgroups are made under the meshed cgroup (default `sockmesh`, the one `npm start` meshes); `down` removes
// everything `up` made, from the state file in /run/sockmesh-lab.
import { resolveCgroup } from '../agent/datapath/cgroup.js';
import { kubeapiMain } from './kubeapi.js';
import { Lab } from './lab.js';
import { Cluster } from './cluster.js';
import { existsSync, mkdirSync, rmdirSync } from 'node:fs';

const POD_NAMES = ['pod-a', 'pod-b', 'pod-c', 'pod-d', 'pod-e', 'pod-f'];

function usage(): never {
  process.stderr.write('usage: npm run lab -- [--prefix NAME] up [--cgroup PATH] [--pods N] | down | status | exec POD [--] CMD [ARGS...]\n');
  process.stderr.write('       npm run lab -- [--prefix NAME] cluster up [--nodes 2|3] [--pods N] | cluster down | cluster status\n');
  process.stderr.write('       npm run lab -- kubeapi [--port N] [--tls] [--token T] [--kubeconfig FILE]   (the API-server stand-in, no root)\n');
  process.exit(2);
}

function option(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const v = args[i + 1];
  if (v === undefined) usage();
  return v;
}

function describe(lab: Lab): string {
  const lines = [`lab ${lab.prefix}: node address ${lab.nodeV4} ${lab.nodeV6}, pods' cgroups under ${lab.state.podsCgroup}`];
  for (const p of lab.pods) lines.push(`  ${p.name.padEnd(8)} ${(p.v4 ?? '-').padEnd(14)} ${(p.v6 ?? '-').padEnd(22)} netns ${p.ns}`);
  const p = lab.pods[0];
  if (p) {
    lines.push('run a command in a pod (its cgroup first, then its network namespace):');
    lines.push(`  npm run lab -- exec ${p.name} -- python3 -m http.server 8080`);
    lines.push(`  sh -c 'echo $$ > ${p.cgroup}/cgroup.procs && exec nsenter --net=/run/netns/${p.ns} "$@"' sh python3 -m http.server 8080`);
  }
  return lines.join('\n');
}

async function main(argv: string[]): Promise<void> {
  const [PREFIX, args] = argv[0] === '--prefix' ? [argv[1] ?? usage(), argv.slice(2)] : ['demo', argv];
  const cmd = args[0];
  if (cmd === 'kubeapi') return kubeapiMain(args.slice(1));
  if (process.getuid?.() !== 0 && cmd !== 'status' && !(cmd === 'cluster' && args[1] === 'status')) throw new Error('the lab needs root (network namespaces, veths, cgroups)');
  if (cmd === 'cluster') return clusterMain(PREFIX, args.slice(1));
  if (cmd === 'up') {
    const existing = Lab.attach(PREFIX);
    if (existing) { process.stdout.write(`already up (npm run lab -- down first)\n${describe(existing)}\n`); return; }
    const meshed = resolveCgroup(option(args, '--cgroup', 'sockmesh'));
    const n = Number(option(args, '--pods', '3'));
    if (!Number.isInteger(n) || n < 1 || n > POD_NAMES.length) throw new Error(`--pods: 1..${POD_NAMES.length}`);
    const pods = POD_NAMES.slice(0, n).map((name) => ({ name }));
    const lab = await Lab.up({ meshedCgroup: meshed, prefix: PREFIX, pods, createMeshedCgroup: true });
    process.stdout.write(`${describe(lab)}\nstart the agent on ${meshed} (npm start) to mesh them; npm run lab -- down removes it all\n`);
  } else if (cmd === 'down') {
    const lab = Lab.attach(PREFIX);
    if (!lab) { process.stdout.write('no lab up\n'); return; }
    await lab.down();
    const left = lab.leftovers();
    if (left.length) throw new Error(`left behind: ${left.join(', ')}`);
    process.stdout.write(`lab ${PREFIX} removed\n`);
  } else if (cmd === 'exec') {
    const lab = Lab.attach(PREFIX);
    const [pod, command, ...rest] = args.slice(1).filter((a, i) => !(i === 1 && a === '--'));
    if (!lab || !pod || !command) usage();
    const p = lab.pod(pod).spawn(command, rest, 'inherit');
    p.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
  } else if (cmd === 'status') {
    const lab = Lab.attach(PREFIX);
    process.stdout.write(lab ? `${describe(lab)}\n` : 'no lab up\n');
  } else {
    usage();
  }
}

function describeCluster(c: Cluster): string {
  const lines = [`cluster ${c.prefix}: ${c.nodes.length} nodes`];
  for (const n of c.nodes) {
    lines.push(`node ${n.name}: address ${n.nodeV4} ${n.nodeV6}, netns ${n.netns}, meshed cgroup ${n.meshedCgroup}`);
    for (const p of n.lab.pods) lines.push(`  ${p.name.padEnd(8)} ${(p.v4 ?? '-').padEnd(14)} ${(p.v6 ?? '-').padEnd(22)} netns ${p.ns}`);
    const [cmd, argv] = n.agentArgv(['node', 'dist/agent/main.js', ...n.agentFlags(), '--metrics-listen', 'off']);
    lines.push(`  its agent: ${cmd} ${argv.map((a) => (/[\s$"'>]/.test(a) ? `'${a}'` : a)).join(' ')}`);
  }
  return lines.join('\n');
}

async function clusterMain(prefix: string, args: string[]): Promise<void> {
  const root = resolveCgroup(`sockmesh-cluster-${prefix}`);
  const sub = args[0];
  if (sub === 'up') {
    const existing = Cluster.attach(prefix);
    if (existing) { process.stdout.write(`already up (npm run lab -- cluster down first)\n${describeCluster(existing)}\n`); return; }
    const nodes = Number(option(args, '--nodes', '2'));
    const pods = Number(option(args, '--pods', '2'));
    if (nodes !== 2 && nodes !== 3) throw new Error('--nodes: 2 or 3');
    if (!Number.isInteger(pods) || pods < 1 || pods > POD_NAMES.length) throw new Error(`--pods: 1..${POD_NAMES.length}`);
    if (!existsSync(root)) mkdirSync(root);
    const c = await Cluster.up({
      prefix, cgroupRoot: root,
      nodes: ['n1', 'n2', 'n3'].slice(0, nodes).map((name) => ({ name, pods: POD_NAMES.slice(0, pods).map((p) => ({ name: p })) })),
    });
    process.stdout.write(`${describeCluster(c)}\nnpm run lab -- cluster down removes it all (agents included)\n`);
  } else if (sub === 'down') {
    const c = Cluster.attach(prefix);
    if (!c) { process.stdout.write('no cluster up\n'); return; }
    await c.down();
    const left = c.leftovers();
    if (existsSync(root)) rmdirSync(root);
    if (left.length) throw new Error(`left behind: ${left.join(', ')}`);
    process.stdout.write(`cluster ${prefix} removed\n`);
  } else if (sub === 'status') {
    const c = Cluster.attach(prefix);
    process.stdout.write(c ? `${describeCluster(c)}\n` : 'no cluster up\n');
  } else {
    usage();
  }
}

main(process.argv.slice(2)).catch((e: Error) => { process.stderr.write(`lab: ${e.message}\n`); process.exit(1); });
