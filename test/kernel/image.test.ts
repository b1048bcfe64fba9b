// The OCI image scripts/image.sh builds, run the way deploy/agent/daemonset.yaml runs it: podman with the DaemonSet's
// command (nsenter into the host's cgroup namespace), capability set, read-only root, seccomp default, host network and
// PID namespace and its mounts (/sys/fs/bpf HostToContainer, the cgroup tree, /run/sockmesh, /tmp in memory). The agent
// in the container must attach, answer the probe (/healthz), serve its admin socket through the /run/sockmesh mount,
// and balance a VIP for a client in a cgroup this test made. The container itself runs in a cgroup this test made
// (podman --cgroup-parent), never the root cgroup.
//
// What differs from a node, on purpose: the config comes from a file (no control plane here), so --xds/--kube-pods are
// replaced by --config; the ports are free ones; the run dir and bpffs dir are this test's own.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { AGENT, MESHCTL, ROOT, freePort, kernelSkipReason, testCgroup } from '../lib/kernel.js';
import { connectId, idServer } from '../lib/net.js';

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
interface Volume { name: string; hostPath?: { path: string }; emptyDir?: object }
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

t.test('the agent from the OCI image, with the DaemonSet\'s command, capabilities and mounts', { skip: skip ?? false }, async (t) => {
  const loaded = run(['load', '-i', ARCHIVE], 300000);
  t.equal(loaded.code, 0, `podman load -i ${ARCHIVE}: ${loaded.err}`);
  const image = /Loaded image(?:\(s\))?: *(\S+)/.exec(loaded.out + loaded.err)?.[1] ?? `localhost/sockmesh:${VERSION}`;
  const built = run(['image', 'inspect', '--format', '{{index .Labels "io.sockmesh.tree"}}', image]).out.trim();
  if (built !== treeDigest()) {
    const why = `${ARCHIVE} was built from other code than this tree's dist/ and build/ (io.sockmesh.tree ${built || 'absent'}): rebuild it with scripts/image.sh`;
    t.comment(why);
    t.test(why, { skip: why }, () => {});
    return;
  }
  const rt = runtime(image);
  if ('why' in rt) {
    t.comment(rt.why);
    t.test(rt.why, { skip: rt.why }, () => {});
    return;
  }

  const ds = daemonSet();
  const a = ds.agent;
  t.ok(ds.hostNetwork && ds.hostPID, 'the DaemonSet uses the host network and PID namespaces (so does this container)');
  t.notOk(a.securityContext.privileged, 'the agent container is not privileged (neither is this one)');

  const cg = testCgroup(t, 'image');
  const servers = [await idServer('a'), await idServer('b')];
  t.teardown(async () => { for (const s of servers) await s.close(); });
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-test-image-'));
  const bpffs = join('/sys/fs/bpf', `sockmesh-test-image-${process.pid}`);
  const runDir = join(dir, 'run');
  writeFileSync(join(dir, 'config.yaml'), `
services:
  - name: web
    vips: [${VIP}]
    ports: [{ port: 8080 }]
    backends: [${servers.map((s) => `{ address: 127.0.0.1, port: ${s.port} }`).join(', ')}]
`);
  const metricsPort = await freePort();
  const proxyPort = await freePort();
  const name = `sockmesh-test-image-${process.pid}`;
  // The container's cgroup: podman makes <parent>/libpod-<id> in every hierarchy; the parent is this test's.
  const parent = `sockmesh-test-imagepod-${process.pid}-1`;

  // Mounts, from the manifest: hostPath volumes at their mountPath (bind mounts recursive as the kubelet's are;
  // HostToContainer = rslave), emptyDir as tmpfs. /run/sockmesh is this test's own directory instead of the host's.
  const mountArgs: string[] = [];
  for (const m of a.volumeMounts) {
    const v = ds.volumes.find((x) => x.name === m.name)!;
    if (v.emptyDir) { mountArgs.push('--tmpfs', m.mountPath); continue; }
    const host = m.mountPath === '/run/sockmesh' ? runDir : v.hostPath!.path;
    const opts = ['rbind', m.mountPropagation === 'HostToContainer' ? 'rslave' : m.mountPropagation === 'Bidirectional' ? 'rshared' : 'rprivate'];
    if (m.readOnly) opts.push('ro');
    mountArgs.push('-v', `${host}:${m.mountPath}:${opts.join(',')}`);
  }
  rmSync(runDir, { recursive: true, force: true });
  spawnSync('mkdir', ['-p', runDir]);
  mountArgs.push('-v', `${join(dir, 'config.yaml')}:/etc/sockmesh/config.yaml:ro`);
  const caps = ['--cap-drop', 'all', ...a.securityContext.capabilities.add.flatMap((c) => ['--cap-add', c])];
  t.same(a.securityContext.capabilities.drop, ['ALL'], 'the manifest drops every capability first');
  // The command: nsenter into the host's cgroup namespace, then the agent. On a node the namespace is pid 1's; here
  // pid 1 is a sandbox supervisor that no container may inspect (EACCES even with --privileged, measured), so the
  // namespace is taken from this test process, which is in the host's cgroup namespace as a node's pid 1 is.
  const command = a.command.map((c) => c.replace('/proc/1/', `/proc/${process.pid}/`));
  t.equal(command.at(-1), 'sockmesh-agent');
  const args = ['--config', '/etc/sockmesh/config.yaml', '--node-id', 'image-test', '--cgroup', cg.path, '--bpffs', bpffs,
    '--run-dir', '/run/sockmesh/sockmesh', '--metrics-listen', `127.0.0.1:${metricsPort}`, '--proxy-port', String(proxyPort), '--event-sample', '1'];

  const podman = ['podman', ...rt.args, 'run', '--rm', '--name', name, '--cgroup-parent', `/${parent}`, ...LIMITS,
    '--network', 'host', '--pid', 'host', ...(a.securityContext.readOnlyRootFilesystem ? ['--read-only'] : []), ...caps, ...mountArgs,
    '--entrypoint', command[0]!, image, ...command.slice(1), ...args];
  t.comment(podman.join(' '));
  const logs: string[] = [];
  let proc: ChildProcess | undefined;
  t.teardown(() => {
    spawnSync('podman', ['stop', '-t', '10', name], { stdio: 'ignore', timeout: 30000 });
    spawnSync('podman', ['rm', '-f', name], { stdio: 'ignore', timeout: 30000 });
    proc?.kill('SIGKILL');
    spawnSync(process.execPath, [AGENT, 'cleanup', '--bpffs', bpffs, '--run-dir', join(runDir, 'sockmesh')], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
    // podman's cgroups below the test's parent, in every hierarchy (cgroup v1 controllers too on a hybrid host)
    for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const [, target, fstype] = line.split(' ');
      if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
      const p = join(target!, parent);
      if (!existsSync(p)) continue;
      for (const sub of readdirSync(p, { withFileTypes: true })) if (sub.isDirectory()) try { rmdirSync(join(p, sub.name)); } catch { /* reported below */ }
      try { rmdirSync(p); } catch (e) { t.comment(`could not remove ${p}: ${(e as Error).message}`); }
    }
  });
  proc = spawn(podman[0]!, podman.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  for (const s of [proc.stdout!, proc.stderr!]) s.on('data', (d: Buffer) => logs.push(...d.toString().split('\n').filter(Boolean)));
  const exited = new Promise<number | null>((r) => proc!.once('exit', (code) => r(code)));
  const ready = await Promise.race([
    (async () => { for (let i = 0; i < 300; i++) { if (logs.some((l) => l.includes('"datapath ready"'))) return true; await new Promise((r) => setTimeout(r, 100)); } return false; })(),
    exited.then(() => false),
  ]);
  t.ok(ready, `the agent in the container is ready${ready ? '' : `; its output:\n${logs.slice(-15).join('\n')}`}`);
  if (!ready) return;

  // The kubelet's probe, on the path the manifest names.
  const probe = await get(`http://127.0.0.1:${metricsPort}${a.readinessProbe.httpGet.path}`);
  t.same([probe.status, probe.body], [200, 'ok\n'], `readiness probe ${a.readinessProbe.httpGet.path}`);
  // The programs run in the host's cgroup namespace: the agent's own cgroup is podman's libpod cgroup under the
  // test's parent, not the root (what it would take for its own without nsenter on a private-namespace runtime).
  const status = spawnSync(process.execPath, [MESHCTL, '--bpffs', bpffs, '--run-dir', join(runDir, 'sockmesh'), 'status', '--json'], { encoding: 'utf8', timeout: 20000 });
  t.equal(status.status, 0, `meshctl on the host reaches the agent in the container through the /run/sockmesh mount: ${status.stderr}`);
  t.match(JSON.parse(status.stdout || '{}'), { running: true }, 'meshctl status: running');
  const agentPid = Number(/"pid":(\d+)/.exec(logs.find((l) => l.includes('"datapath ready"'))!)![1]);
  const own = readFileSync(`/proc/${agentPid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3);
  t.match(own, new RegExp(`^/${parent}/`), `the agent runs in the test's container cgroup (${own})`);

  // A client in a cgroup of this test reaches the VIP: balanced over both backends by the programs the image loaded.
  cg.enter('client');
  const seen = new Map<string, number>();
  try {
    for (let i = 0; i < 40; i++) {
      const c = await connectId(VIP, 8080, { timeoutMs: 3000 });
      seen.set(c.id, (seen.get(c.id) ?? 0) + 1);
    }
  } finally {
    cg.leave();
  }
  t.same([...seen.keys()].sort(), ['a', 'b'], `40 connections to ${VIP}:8080 reached both backends (${JSON.stringify(Object.fromEntries(seen))})`);
  t.ok(servers.every((s) => s.accepted >= 1), 'each backend accepted connections');

  // SIGTERM (what the kubelet sends): the agent stops and the datapath stays pinned for the next one.
  spawnSync('podman', ['stop', '-t', '10', name], { timeout: 30000 });
  t.equal(await exited, 0, 'the agent exits 0 on SIGTERM');
  t.ok(existsSync(join(bpffs, 'links')), 'its pins stay for the next agent');
});
