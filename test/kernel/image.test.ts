// The OCI image scripts/image.sh builds, run the way deploy/agent/daemonset.yaml runs it: podman with the DaemonSet's
// command (nsenter into the host's cgroup namespace), capability set, read-only root, seccomp default, host network and
// PID namespace and its mounts (/sys/fs/bpf HostToContainer, the cgroup tree, /run/sockmesh, /tmp in memory). The agent
// in the container must attach, answer the probe (/healthz), serve its admin socket through the /run/sockmesh mount,
// and balance a VIP for a client in a cgroup this test made. The container itself runs in a cgroup this test made
// (podman --cgroup-parent), never the root cgroup.
//
// What differs from a node, on purpose: the config comes from a file (no control plane here), so --xds/--kube-pods are
// replaced by --config; the ports are free ones; the run dir and bpffs dir are this test's own.
import t, { type Test } from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments, parseDocument } from 'yaml';
import { AGENT, MESHCTL, ROOT, freePort, kernelSkipReason, testCgroup } from '../lib/kernel.js';
import { connectId, idServer } from '../lib/net.js';
import { KubeApi, kubeconfigFor } from '../../lab/kubeapi.js';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const ARCHIVE = process.env.SOCKMESH_IMAGE ?? join(ROOT, 'build', 'image', `sockmesh-${VERSION}.oci.tar`);
const VIP = '127.77.12.1';

const have = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const run = (args: string[], timeout = 120000): { code: number; out: string; err: string } => {
  const r = spawnSync('podman', args, { encoding: 'utf8', timeout });
  return { code: r.status ?? -1, out: r.stdout ?? '', err: (r.stderr ?? '').trim() || (r.error?.message ?? '') };
};

/**
 * The digest of what the image packs from this tree, as scripts/image.sh labels it (io.sockmesh.tree): sha256 over
 * `sha256sum` lines of every .js under dist/, the addons and the BPF objects in C order. Another digest = other code.
 */
function treeDigest(): string {
  const files: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(join(ROOT, d), { withFileTypes: true })) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && e.name.endsWith('.js')) files.push(p);
    }
  };
  walk('dist');
  files.push('build/Release/sockmesh.node', 'build/Release/sockmesh_netio.node',
    ...readdirSync(join(ROOT, 'build', 'bpf')).filter((f) => f.endsWith('.bpf.o')).map((f) => `build/bpf/${f}`));
  files.sort((x, y) => (Buffer.compare(Buffer.from(x), Buffer.from(y))));
  const lines = files.map((f) => `${createHash('sha256').update(readFileSync(join(ROOT, f))).digest('hex')}  ${f}\n`).join('');
  return createHash('sha256').update(lines).digest('hex');
}

function skipReason(): string | null {
  const k = kernelSkipReason();
  if (k) return k;
  if (!have('podman')) return 'podman is not installed (apt-get install podman)';
  if (!existsSync(ARCHIVE)) return `no image at ${ARCHIVE}: build it with scripts/image.sh (.ci/run does)`;
  return null;
}

// rlimits: podman asks the runtime for its own defaults (nofile 1048576, nproc 4194304); a machine whose root lacks
// CAP_SYS_RESOURCE (this one: a sandbox) cannot raise them, and even equal values were refused. These fit under any.
const LIMITS = ['--ulimit', 'nofile=16384:16384', '--ulimit', 'nproc=16384:16384'];

/**
 * The OCI runtime podman can use here: its default, else runc. crun 1.8 (Debian 12's) refuses a hybrid cgroup host
 * ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2") where runc works. null + why when none.
 */
function runtime(image: string): { args: string[] } | { why: string } {
  const first = run(['run', '--rm', ...LIMITS, '--network', 'host', '--entrypoint', '/bin/true', image]);
  if (first.code === 0) return { args: [] };
  if (have('runc')) {
    const second = run(['--runtime', 'runc', 'run', '--rm', ...LIMITS, '--network', 'host', '--entrypoint', '/bin/true', image]);
    if (second.code === 0) return { args: ['--runtime', 'runc'] };
    return { why: `podman cannot run a container here: ${first.err}; with --runtime runc: ${second.err}` };
  }
  return { why: `podman cannot run a container here: ${first.err} (runc is not installed to try instead)` };
}

interface Mount { name: string; mountPath: string; mountPropagation?: string; readOnly?: boolean }
interface Volume { name: string; hostPath?: { path: string }; emptyDir?: object; projected?: { sources: { serviceAccountToken?: { path: string } }[] } }
interface AgentContainer {
  command: string[]; args: string[]; volumeMounts: Mount[];
  securityContext: { privileged?: boolean; readOnlyRootFilesystem?: boolean; capabilities: { drop: string[]; add: string[] } };
  readinessProbe: { httpGet: { path: string } };
}

/** deploy/agent/daemonset.yaml: the pod spec's host namespaces, the agent container and the volumes. */
function daemonSet(): { hostNetwork: boolean; hostPID: boolean; agent: AgentContainer; volumes: Volume[] } {
  const docs = parseAllDocuments(readFileSync(join(ROOT, 'deploy', 'agent', 'daemonset.yaml'), 'utf8')).map((d) => d.toJS() as { kind: string; spec: { template: { spec: Record<string, unknown> } } });
  const pod = docs.find((d) => d.kind === 'DaemonSet')!.spec.template.spec as { hostNetwork: boolean; hostPID: boolean; containers: (AgentContainer & { name: string })[]; volumes: Volume[] };
  return { hostNetwork: pod.hostNetwork, hostPID: pod.hostPID, agent: pod.containers.find((c) => c.name === 'agent')!, volumes: pod.volumes };
}

/** deploy/controlplane/deployment.yaml: the pod's securityContext and the control plane container. */
function deployment(): {
  pod: { securityContext: { runAsUser: number; runAsGroup: number } };
  container: { command: string[]; args: string[]; securityContext: { readOnlyRootFilesystem?: boolean; allowPrivilegeEscalation?: boolean } };
} {
  const d = parseDocument(readFileSync(join(ROOT, 'deploy', 'controlplane', 'deployment.yaml'), 'utf8')).toJS() as { spec: { template: { spec: Record<string, unknown> } } };
  const pod = d.spec.template.spec as { securityContext: { runAsUser: number; runAsGroup: number }; containers: ReturnType<typeof deployment>['container'][] };
  return { pod, container: pod.containers[0]! };
}

const get = (url: string): Promise<{ status: number; body: string }> => new Promise((res, rej) => {
  const req = request(url, (r) => {
    let body = '';
    r.on('data', (d) => { body += d; });
    r.on('end', () => res({ status: r.statusCode!, body }));
  });
  req.on('error', rej);
  req.setTimeout(5000, () => req.destroy(new Error(`${url}: no answer in 5 s`)));
  req.end();
});

const skip = skipReason();
if (skip) t.comment(`image test skipped: ${skip}`);

let prepared: { image: string; runtime: string[] } | { why: string } | undefined;
/** Load the archive once: the image, and the runtime podman can use; or why the tests cannot run. */
function prepare(t: Tap): { image: string; runtime: string[] } | { why: string } {
  if (prepared) return prepared;
  const loaded = run(['load', '-i', ARCHIVE], 300000);
  t.equal(loaded.code, 0, `podman load -i ${ARCHIVE}: ${loaded.err}`);
  const image = /Loaded image(?:\(s\))?: *(\S+)/.exec(loaded.out + loaded.err)?.[1] ?? `localhost/sockmesh:${VERSION}`;
  const built = run(['image', 'inspect', '--format', '{{index .Labels "io.sockmesh.tree"}}', image]).out.trim();
  if (built !== treeDigest()) {
    prepared = { why: `${ARCHIVE} was built from other code than this tree's dist/ and build/ (io.sockmesh.tree ${built || 'absent'}): rebuild it with scripts/image.sh` };
  } else {
    const rt = runtime(image);
    prepared = 'why' in rt ? rt : { image, runtime: rt.args };
  }
  return prepared;
}

type Tap = Test;

/** Remove podman's cgroups below a parent this test named, in every hierarchy (cgroup v1 controllers too on a hybrid host). */
function removeParent(t: Tap, parent: string): void {
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [, target, fstype] = line.split(' ');
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    const p = join(target!, parent);
    if (!existsSync(p)) continue;
    for (const sub of readdirSync(p, { withFileTypes: true })) if (sub.isDirectory()) try { rmdirSync(join(p, sub.name)); } catch { /* reported below */ }
    try { rmdirSync(p); } catch (e) { t.comment(`could not remove ${p}: ${(e as Error).message}`); }
  }
}

interface Running { logs: string[]; exited: Promise<number | null>; waitFor(text: string, ms?: number): Promise<boolean>; stop(): void }

/** `podman <runtime> run --rm --name <name> --cgroup-parent /<parent> ...args`, stopped and removed at teardown. */
function launch(t: Tap, runtimeArgs: string[], name: string, parent: string, args: string[]): Running {
  const argv = [...runtimeArgs, 'run', '--rm', '--name', name, '--cgroup-parent', `/${parent}`, ...LIMITS, ...args];
  t.comment(`podman ${argv.join(' ')}`);
  const proc: ChildProcess = spawn('podman', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: string[] = [];
  for (const s of [proc.stdout!, proc.stderr!]) s.on('data', (d: Buffer) => logs.push(...d.toString().split('\n').filter(Boolean)));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const stop = (): void => { spawnSync('podman', ['stop', '-t', '10', name], { stdio: 'ignore', timeout: 30000 }); };
  t.teardown(() => {
    stop();
    spawnSync('podman', ['rm', '-f', name], { stdio: 'ignore', timeout: 30000 });
    proc.kill('SIGKILL');
    removeParent(t, parent);
  });
  const waitFor = (text: string, ms = 30000): Promise<boolean> => Promise.race([
    (async () => { for (const end = Date.now() + ms; Date.now() < end;) { if (logs.some((l) => l.includes(text))) return true; await new Promise((r) => setTimeout(r, 100)); } return false; })(),
    exited.then(() => logs.some((l) => l.includes(text))),
  ]);
  return { logs, exited, waitFor, stop };
}

/**
 * podman arguments for the DaemonSet's agent container: host network and PID namespace, its capability set, read-only
 * root, its mounts (hostPath volumes at their mountPath, bind mounts recursive as the kubelet's are; HostToContainer =
 * rslave; emptyDir as tmpfs; /run/sockmesh is `runDir` of this test instead of the host's), and its command. On a node
 * the cgroup namespace nsenter joins is pid 1's; here pid 1 is a sandbox supervisor that no container may inspect
 * (EACCES even with --privileged, measured), so it is this test process's, which is in the host's cgroup namespace as
 * a node's pid 1 is.
 */
function agentContainer(t: Tap, ds: ReturnType<typeof daemonSet>, runDir: string, extra: string[]): { podman: string[]; command: string[] } {
  const a = ds.agent;
  t.ok(ds.hostNetwork && ds.hostPID, 'the DaemonSet uses the host network and PID namespaces (so does this container)');
  t.notOk(a.securityContext.privileged, 'the agent container is not privileged (neither is this one)');
  t.same(a.securityContext.capabilities.drop, ['ALL'], 'the manifest drops every capability first');
  const out = ['--network', 'host', '--pid', 'host', ...(a.securityContext.readOnlyRootFilesystem ? ['--read-only'] : []),
    '--cap-drop', 'all', ...a.securityContext.capabilities.add.flatMap((c) => ['--cap-add', c])];
  for (const m of a.volumeMounts) {
    const v = ds.volumes.find((x) => x.name === m.name)!;
    if (v.emptyDir) { out.push('--tmpfs', m.mountPath); continue; }
    let host: string;
    if (v.projected) {
      // What the kubelet would project (the CA's service-account token): a file per source in a directory of the test's
      // own, so the mount is as the manifest has it; the agent here runs without the CA and never reads it.
      host = join(runDir, '..', `projected-${v.name}`);
      mkdirSync(host, { recursive: true });
      for (const src of v.projected.sources) if (src.serviceAccountToken) writeFileSync(join(host, src.serviceAccountToken.path), 'not-a-token\n');
    } else host = m.mountPath === '/run/sockmesh' ? runDir : v.hostPath!.path;
    const opts = ['rbind', m.mountPropagation === 'HostToContainer' ? 'rslave' : m.mountPropagation === 'Bidirectional' ? 'rshared' : 'rprivate'];
    if (m.readOnly) opts.push('ro');
    out.push('-v', `${host}:${m.mountPath}:${opts.join(',')}`);
  }
  const command = a.command.map((c) => c.replace('/proc/1/', `/proc/${process.pid}/`));
  t.equal(command.at(-1), 'sockmesh-agent');
  return { podman: [...out, ...extra, '--entrypoint', command[0]!], command: command.slice(1) };
}

/** Connections to VIP:8080 from a client cgroup of the test: which backend ids answered. */
async function drive(cg: ReturnType<typeof testCgroup>, n: number): Promise<Map<string, number>> {
  cg.enter('client');
  const seen = new Map<string, number>();
  try {
    for (let i = 0; i < n; i++) {
      const c = await connectId(VIP, 8080, { timeoutMs: 3000 });
      seen.set(c.id, (seen.get(c.id) ?? 0) + 1);
    }
  } finally {
    cg.leave();
  }
  return seen;
}

t.test('the agent from the OCI image, with the DaemonSet\'s command, capabilities and mounts', { skip: skip ?? false }, async (t) => {
  const p = prepare(t);
  if ('why' in p) { t.comment(p.why); t.test(p.why, { skip: p.why }, () => {}); return; }
  const ds = daemonSet();
  const cg = testCgroup(t, 'image');
  const servers = [await idServer('a'), await idServer('b')];
  t.teardown(async () => { for (const s of servers) await s.close(); });
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-test-image-'));
  const bpffs = join('/sys/fs/bpf', `sockmesh-test-image-${process.pid}-1`);
  const runDir = join(dir, 'run');
  mkdirSync(runDir);
  t.teardown(() => {
    spawnSync(process.execPath, [AGENT, 'cleanup', '--bpffs', bpffs, '--run-dir', join(runDir, 'sockmesh')], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  });
  writeFileSync(join(dir, 'config.yaml'), `
services:
  - name: web
    vips: [${VIP}]
    ports: [{ port: 8080 }]
    backends: [${servers.map((s) => `{ address: 127.0.0.1, port: ${s.port} }`).join(', ')}]
`);
  const metricsPort = await freePort();
  const c = agentContainer(t, ds, runDir, ['-v', `${join(dir, 'config.yaml')}:/etc/sockmesh/config.yaml:ro`]);
  // The config from a file here (the next test takes the manifest's own --xds/--kube-pods); free ports; test pins.
  const args = ['--config', '/etc/sockmesh/config.yaml', '--node-id', 'image-test', '--cgroup', cg.path, '--bpffs', bpffs,
    '--run-dir', '/run/sockmesh/sockmesh', '--metrics-listen', `127.0.0.1:${metricsPort}`, '--proxy-port', String(await freePort()), '--event-sample', '1'];
  const parent = `sockmesh-test-imagepod-${process.pid}-1`;
  const agent = launch(t, p.runtime, `sockmesh-test-image-${process.pid}-1`, parent, [...c.podman, p.image, ...c.command, ...args]);
  const ready = await agent.waitFor('"datapath ready"');
  t.ok(ready, `the agent in the container is ready${ready ? '' : `; its output:\n${agent.logs.slice(-15).join('\n')}`}`);
  if (!ready) return;

  // The kubelet's probe, on the path the manifest names.
  const path = ds.agent.readinessProbe.httpGet.path;
  const probe = await get(`http://127.0.0.1:${metricsPort}${path}`);
  t.same([probe.status, probe.body], [200, 'ok\n'], `readiness probe ${path}`);
  const status = spawnSync(process.execPath, [MESHCTL, '--bpffs', bpffs, '--run-dir', join(runDir, 'sockmesh'), 'status', '--json'], { encoding: 'utf8', timeout: 20000 });
  t.equal(status.status, 0, `meshctl on the host reaches the agent in the container through the /run/sockmesh mount: ${status.stderr}`);
  t.match(JSON.parse(status.stdout || '{}'), { running: true }, 'meshctl status: running');
  // The programs run in the host's cgroup namespace: the agent's own cgroup is podman's libpod cgroup under the
  // test's parent, not the root (what it would take for its own without nsenter on a private-namespace runtime).
  const agentPid = Number(/"pid":(\d+)/.exec(agent.logs.find((l) => l.includes('"datapath ready"'))!)![1]);
  const own = readFileSync(`/proc/${agentPid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3);
  t.match(own, new RegExp(`^/${parent}/`), `the agent runs in the test's container cgroup (${own})`);

  // A client in a cgroup of this test reaches the VIP: balanced over both backends by the programs the image loaded.
  const seen = await drive(cg, 40);
  t.same([...seen.keys()].sort(), ['a', 'b'], `40 connections to ${VIP}:8080 reached both backends (${JSON.stringify(Object.fromEntries(seen))})`);

  // SIGTERM (what the kubelet sends): the agent stops and the datapath stays pinned for the next one.
  agent.stop();
  t.equal(await agent.exited, 0, 'the agent exits 0 on SIGTERM');
  t.ok(existsSync(join(bpffs, 'links')), 'its pins stay for the next agent');
});

t.test('the Deployment\'s control plane and the DaemonSet\'s agent, their own args, against the API-server stand-in', { skip: skip ?? false }, async (t) => {
  const p = prepare(t);
  if ('why' in p) { t.comment(p.why); t.test(p.why, { skip: p.why }, () => {}); return; }
  const help = spawnSync(process.execPath, [AGENT, '--help'], { encoding: 'utf8' }).stdout;
  if (!help.includes('--kube-pods')) {
    const why = 'the agent has no --kube-pods yet (the Kubernetes wiring adds it)';
    t.comment(why);
    t.test(why, { skip: why }, () => {});
    return;
  }
  const ds = daemonSet();
  const cpSpec = deployment();
  const cg = testCgroup(t, 'image-kube');
  const servers = [await idServer('a'), await idServer('b')];
  t.teardown(async () => { for (const s of servers) await s.close(); });
  const api = await KubeApi.start({ host: '127.0.0.1' });
  t.teardown(() => api.close());
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-test-image-'));
  chmodSync(dir, 0o755);
  const bpffs = join('/sys/fs/bpf', `sockmesh-test-image-${process.pid}-2`);
  const runDir = join(dir, 'run');
  mkdirSync(runDir);
  t.teardown(() => {
    spawnSync(process.execPath, [AGENT, 'cleanup', '--bpffs', bpffs, '--run-dir', join(runDir, 'sockmesh')], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  });
  // What a cluster would hold: a Service with a ClusterIP (127/8 here, so that nothing can leave the machine) and an
  // EndpointSlice per backend (each with its own port: targetPort is resolved per slice).
  const node = 'image-node';
  api.put('services', { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'default' },
    spec: { clusterIP: VIP, clusterIPs: [VIP], ipFamilies: ['IPv4'], type: 'ClusterIP', selector: { app: 'web' },
      ports: [{ name: 'http', port: 8080, protocol: 'TCP', targetPort: 'http' }] } });
  servers.forEach((s, i) => api.put('endpointslices', { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
    metadata: { name: `web-${i}`, namespace: 'default', labels: { 'kubernetes.io/service-name': 'web' } }, addressType: 'IPv4',
    ports: [{ name: 'http', port: s.port, protocol: 'TCP' }],
    endpoints: [{ addresses: ['127.0.0.1'], conditions: { ready: true }, nodeName: node }] }));
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  chmodSync(join(dir, 'kubeconfig'), 0o644);
  const kubeMount = ['-v', `${join(dir, 'kubeconfig')}:/etc/kube/config:ro`];

  // The control plane as the Deployment runs it: its command and args (the listen address on a free loopback port
  // instead of 0.0.0.0:18000, and a kubeconfig for the stand-in, as there is no in-cluster service account), its
  // securityContext (a non-root user, read-only root, no capabilities, no privilege escalation).
  const cpPort = await freePort();
  const cpc = cpSpec.container;
  const cpArgs = cpc.args.map((a) => (a === '0.0.0.0:18000' ? `127.0.0.1:${cpPort}` : a));
  t.ok(cpArgs.includes(`127.0.0.1:${cpPort}`), 'the Deployment listens on 0.0.0.0:18000 (replaced by a free loopback port)');
  const user = `${cpSpec.pod.securityContext.runAsUser}:${cpSpec.pod.securityContext.runAsGroup}`;
  const cp = launch(t, p.runtime, `sockmesh-test-image-cp-${process.pid}`, `sockmesh-test-imagepod-${process.pid}-3`, [
    '--network', 'host', '--user', user, ...(cpc.securityContext.readOnlyRootFilesystem ? ['--read-only'] : []),
    '--cap-drop', 'all', ...(cpc.securityContext.allowPrivilegeEscalation === false ? ['--security-opt', 'no-new-privileges'] : []),
    ...kubeMount, '--entrypoint', cpc.command[0]!, p.image, ...cpc.command.slice(1), ...cpArgs, '--kubeconfig', '/etc/kube/config', '--status-listen', 'off']);
  const cpUp = await cp.waitFor(`${cpPort}`);
  t.ok(cpUp, `the control plane listens${cpUp ? '' : `; its output:\n${cp.logs.slice(-15).join('\n')}`}`);
  if (!cpUp) return;

  // The agent as the DaemonSet runs it: its args with the variables the kubelet expands ($(NODE_NAME) from the
  // downward API, the ConfigMap's values; the cgroup is this test's, not the node's kubepods tree), --xds pointed at
  // the control plane above, the metrics on a free loopback port, and pins and the proxy port of the test's own.
  const env: Record<string, string> = { NODE_NAME: node, SOCKMESH_CGROUP: cg.path, SOCKMESH_EVENT_SAMPLE: '1' };
  const metricsPort = await freePort();
  const args = ds.agent.args.map((a) => a.replace(/\$\(([A-Z_]+)\)/g, (_, v: string) => env[v] ?? `$(${v})`))
    .map((a) => (a === 'sockmesh-controlplane.sockmesh-system:18000' ? `127.0.0.1:${cpPort}` : a === '0.0.0.0:9464' ? `127.0.0.1:${metricsPort}` : a));
  t.notMatch(args.join(' '), /\$\(|sockmesh-system|0\.0\.0\.0/, `the manifest's args, expanded and pointed here: ${args.join(' ')}`);
  const c = agentContainer(t, ds, runDir, [...kubeMount, '-e', 'SOCKMESH_LOG_LEVEL=info']);
  const agent = launch(t, p.runtime, `sockmesh-test-image-${process.pid}-2`, `sockmesh-test-imagepod-${process.pid}-2`, [
    ...c.podman, p.image, ...c.command, ...args, '--kubeconfig', '/etc/kube/config', '--bpffs', bpffs, '--proxy-port', String(await freePort())]);
  const ready = await agent.waitFor('"datapath ready"');
  t.ok(ready, `the agent in the container is ready${ready ? '' : `; its output:\n${agent.logs.slice(-15).join('\n')}`}`);
  if (!ready) return;

  // The Service from the stand-in, through the control plane's xDS, into the kernel: the VIP answers from both slices.
  let seen = new Map<string, number>();
  for (const end = Date.now() + 20000; Date.now() < end;) {
    try { seen = await drive(cg, 40); break; } catch { await new Promise((r) => setTimeout(r, 250)); }
  }
  t.same([...seen.keys()].sort(), ['a', 'b'], `the Service's VIP reached both EndpointSlices' backends (${JSON.stringify(Object.fromEntries(seen))})${seen.size ? '' : `; agent:\n${agent.logs.slice(-10).join('\n')}\ncontrol plane:\n${cp.logs.slice(-10).join('\n')}`}`);
  t.ok(api.requests.watch >= 2, `the control plane and the agent watch the stand-in (${api.requests.watch} watches)`);
});
