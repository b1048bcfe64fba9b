// The control plane with its CA for multi-node kernel tests of the tunnel (issue 13): sockmesh-controlplane serve
// --ca-dir --node-tokens in node n1's network namespace (on n1's node address: the nodes' namespaces reach it, the
// machine's own is never used), serving the same mesh config the agents read (its CA issues a node only the
// identities its model places there), one bootstrap token per node; and the agents started with the flags an operator
// gives (--node-token-file, --ca-address; startNodeAgent adds --node-id and the node's directories). Workload
// certificates for an independent client (python3-h2) are signed by the same CA from its directory, on a CSR openssl
// makes: the client is not an agent and has no token.
import './childenv.js'; // first: what this starts runs without tap's instrumentation
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inCgroupNsenter } from '../../lab/cgroup.js';
import { CertificateAuthority } from '../../controlplane/ca.js';
import { startNodeAgent, type ClusterNode } from './cluster.js';
import { DIES_WITH_TEST, ROOT, type AgentHandle } from './kernel.js';
import { until } from './net.js';

interface Teardown { teardown(fn: () => void | Promise<void>): void }

export interface MeshCa {
  /** the test's directory (config, tokens, the CA's files, client certificates) */
  dir: string;
  /** where the agents reach the CA (n1's node address:15012) */
  address: string;
  /** the control plane's log lines, parsed */
  logs: Record<string, unknown>[];
  /** Start the real agent of `node` with the tunnel on (its token, the CA); `extra` is appended to its config. */
  agent(node: ClusterNode, extra?: string): Promise<AgentHandle>;
  /** The same agent fed by the control plane over xDS (--xds, a DaemonSet's way) instead of a config file. */
  agentXds(node: ClusterNode): Promise<AgentHandle>;
  /** Replace the config the control plane serves (written then renamed: it never reads half a file). */
  serve(config: string): void;
  /** A certificate for `identity` from the CA's directory: [cert chain file, key file] (the trust bundle: `bundle`). */
  issue(name: string, identity: string): Promise<[string, string]>;
  /** the trust bundle's file */
  bundle: string;
}

/** Start the control plane and its CA in `caNode`'s namespace, serving `config` to the agents of `nodes`. */
export async function startMeshCa(t: Teardown, caNode: ClusterNode, nodes: ClusterNode[], config: string, trustDomain = 'cluster.local'): Promise<MeshCa> {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-meshca-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'services'));
  writeFileSync(join(dir, 'services', 'mesh.yaml'), config);
  const token = (n: ClusterNode): string => `${n.name}-bootstrap-token-0123456789abcdef`;
  writeFileSync(join(dir, 'tokens'), nodes.map((n) => `${token(n)} ${n.name}\n`).join(''), { mode: 0o600 });
  chmodSync(join(dir, 'tokens'), 0o600);
  for (const n of nodes) writeFileSync(join(dir, `${n.name}.token`), `${token(n)}\n`, { mode: 0o600 });
  const address = `${caNode.nodeV4}:15012`;
  const logs: Record<string, unknown>[] = [];
  const [cmd, args] = inCgroupNsenter(caNode.agentCgroup, caNode.netns, undefined, [...DIES_WITH_TEST, process.execPath, join(ROOT, 'dist', 'controlplane', 'main.js'), 'serve',
    '--dir', join(dir, 'services'), '--listen', address, '--ca-dir', join(dir, 'ca'), '--node-tokens', join(dir, 'tokens'), '--cert-ttl', '1h']);
  const cp = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { cp.kill('SIGKILL'); });
  let err = '';
  cp.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  cp.stdout!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n').filter(Boolean)) { try { logs.push(JSON.parse(l) as Record<string, unknown>); } catch { logs.push({ msg: l }); } }
  });
  await until('the control plane', () => {
    if (cp.exitCode !== null) throw new Error(`control plane exited ${cp.exitCode}: ${err}`);
    return logs.some((l) => l.msg === 'control plane listening');
  });
  let authority: CertificateAuthority | undefined;
  const bundle = join(dir, 'root.pem');
  return {
    dir, address, logs, bundle,
    agent: (node, extra = '') => startNodeAgent(t, node, { config: config + extra, extraArgs: ['--node-token-file', join(dir, `${node.name}.token`), '--ca-address', address] }),
    // the CA API is on the xDS port: --ca-address defaults to --xds
    agentXds: (node) => startNodeAgent(t, node, { xds: address, extraArgs: ['--node-token-file', join(dir, `${node.name}.token`)] }),
    serve: (text) => {
      writeFileSync(join(dir, 'mesh.yaml.tmp'), text);
      renameSync(join(dir, 'mesh.yaml.tmp'), join(dir, 'services', 'mesh.yaml'));
    },
    issue: async (name, identity) => {
      authority ??= await CertificateAuthority.fromDir({ dir: join(dir, 'ca'), trustDomain });
      writeFileSync(bundle, authority.trustBundle().join(''));
      const csr = execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-keyout', join(dir, `${name}-key.pem`),
        '-subj', '/O=x', '-addext', `subjectAltName=URI:${identity}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const issued = await authority.sign(csr, 3600);
      // the chain without the root (the peer has it in its bundle)
      writeFileSync(join(dir, `${name}.pem`), issued.certChain.slice(0, -1).join(''));
      return [join(dir, `${name}.pem`), join(dir, `${name}-key.pem`)];
    },
  };
}
