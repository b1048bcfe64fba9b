#!/usr/bin/env -S node --max-semi-space-size=8 --min-semi-space-size=8 --v8-pool-size=1
// (the flags are agent/runtime.ts AGENT_NODE_FLAGS: a shebang cannot import them)
// sockmesh-agent: run the node agent, or remove what it installed.
import { reportStartPhases, startPhase } from './starttrace.js';
import { Command, Option } from 'commander';
import { join, resolve } from 'node:path';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { Agent, VERSION, type KubeWiring, type XdsConfig } from './agent.js';
import type { Logger } from './observe/log.js';
import { createLogger } from './observe/log.js';
import { parseListen } from './observe/metrics.js';
import { cleanup } from './datapath/datapath.js';
import { requireCgroup2Root, resolveCgroup } from './datapath/cgroup.js';
import { MESH_SOCKET_CGROUP, removeMeshSocketCgroup } from './datapath/meshsocket.js';
import { DEFAULT_BPFFS, runDirFor } from './admin/protocol.js';
import { DEMO_HTTP_VIP, DEMO_PORT, DEMO_VIP, demoModel, serveDemoBackends, spawnDemoBackends } from './demo.js';
import { identityWiring } from './certwiring.js';
import { rmSync, existsSync, rmdirSync } from 'node:fs';

startPhase('modules imported');

/** --xds and friends into the agent's control-plane settings, with clear errors for bad values. */
function xdsConfig(opts: { xds?: string; xdsCa?: string; xdsServerName?: string; xdsMode: 'delta' | 'sotw'; nodeId?: string; nodeCluster: string; nodeLocality?: string }): XdsConfig {
  const address = opts.xds!;
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(address)) throw new Error(`--xds ${address}: expected host:port (IPv6 as [addr]:port)`);
  if (opts.xdsCa && !existsSync(opts.xdsCa)) throw new Error(`--xds-ca ${opts.xdsCa}: no such file`);
  const [region, zone, sub_zone] = (opts.nodeLocality ?? '').split('/');
  return {
    address, caFile: opts.xdsCa ? resolve(opts.xdsCa) : undefined, serverName: opts.xdsServerName, mode: opts.xdsMode,
    nodeId: opts.nodeId ?? hostname(), cluster: opts.nodeCluster,
    locality: opts.nodeLocality ? { region: region || undefined, zone: zone || undefined, sub_zone: sub_zone || undefined } : undefined,
  };
}

/** A port flag's parser: 1..65535, else an error naming the flag and the value. */
function portArg(flag: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 65535 || v.trim() === '') throw new Error(`${flag}: expected a port 1..65535, got '${v}'`);
    return n;
  };
}

/** Trust domain of the SPIFFE identities (spiffe://<td>/ns/<ns>/sa/<sa>): a DNS-like name, as SPIFFE defines it. */
function parseTrustDomain(v: string): string {
  if (!/^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$/.test(v)) throw new Error(`--trust-domain: '${v}' is not a trust domain (lower-case letters, digits, '.', '-', '_')`);
  return v;
}

/**
 * --kubernetes / --kube-pods: the API client from --kubeconfig (else in-cluster, else $KUBECONFIG, else ~/.kube/config),
 * imported only then (a file-configured agent's start does not pay for it).
 */
async function kubeWiring(opts: { kubeconfig?: string; trustDomain: string; nodeId?: string; kubeCgroupDriver: KubeWiring['cgroupDriver'] }, log: Logger): Promise<KubeWiring> {
  const { apiAccess } = await import('../kube/access.js');
  const access = apiAccess({ kubeconfig: opts.kubeconfig ? resolve(opts.kubeconfig) : undefined, log: log.child({ component: 'kubernetes' }) });
  return { access, server: access.server, nodeName: opts.nodeId ?? hostname(), trustDomain: opts.trustDomain, cgroupDriver: opts.kubeCgroupDriver };
}

/** How long a SIGTERM/SIGINT stop may take before the agent exits anyway (kubelet's grace period is 30 s). */
const STOP_BOUND_MS = 10_000;

const program = new Command();
program
  .name('sockmesh-agent')
  .enablePositionalOptions()
  .description('eBPF service mesh node agent: balances service VIPs at connect() and hands same-node traffic over without the TCP/IP stack')
  .version(VERSION)
  .option('--config <file>', 'YAML or JSON config, watched for changes (default: an embedded demo config)')
  .option('--xds <host:port>', 'take the config from an xDS control plane (ADS) instead of a file')
  .option('--xds-ca <file>', 'CA bundle: connect to the control plane over TLS (plaintext without it)')
  .option('--xds-server-name <name>', 'TLS server name to verify (default: the host in --xds)')
  .addOption(new Option('--xds-mode <mode>', 'ADS variant').choices(['delta', 'sotw']).default('delta'))
  .option('--kubernetes', 'take the config from the Kubernetes API: Services, EndpointSlices, HTTPRoutes cluster-wide, this node and its pods (small clusters; else a control plane with serve --kubernetes, and --xds --kube-pods)')
  .option('--kube-pods', 'with --xds: watch this node\'s pods in the Kubernetes API (spec.nodeName = --node-id): the fast path\'s local pods, and the workloads (service account identities) authz rules name')
  .option('--kubeconfig <file>', 'kubeconfig for --kubernetes/--kube-pods (default: the in-cluster service account, else $KUBECONFIG, else ~/.kube/config)')
  .addOption(new Option('--trust-domain <domain>', 'SPIFFE trust domain of the pods\' identities (spiffe://<domain>/ns/<ns>/sa/<sa>)').default('cluster.local').argParser(parseTrustDomain))
  .addOption(new Option('--kube-cgroup-driver <driver>', 'the kubelet\'s cgroup driver, for pods\' cgroups (identities), when --cgroup is not named kubepods.slice (systemd) or kubepods (cgroupfs)').choices(['systemd', 'cgroupfs']).default('systemd'))
  .option('--node-id <id>', 'xDS node id, and with Kubernetes this node\'s name (default: the hostname)')
  .option('--node-cluster <name>', 'xDS node cluster', 'sockmesh')
  .option('--node-token-file <file>', 'this node\'s credential for the control plane\'s CA: certificates are kept for this node\'s own identity (spiffe://<--trust-domain>/sockmesh/node/<--node-id>) and those of the workloads on it (workloads[].node = --node-id); the HBONE tunnel then serves on 15008 where the model\'s nodes[] names this node')
  .option('--ca-address <host:port>', 'the CA API (default: the --xds control plane); TLS as for --xds (--xds-ca)')
  .option('--cert-ttl <duration>', 'lifetime to ask for workload certificates (default: the CA\'s, 24h)')
  .option('--node-locality <region/zone/subzone>', 'xDS node locality')
  .option('--cgroup <path>', 'cgroup v2 directory whose processes are meshed (absolute, or relative to the cgroup2 mount)', 'sockmesh')
  .option('--bpffs <dir>', 'bpffs directory for this instance\'s pins', DEFAULT_BPFFS)
  .option('--run-dir <dir>', 'directory for the admin socket and state (default: /run/sockmesh/<bpffs name>)')
  .option('--allow-root-cgroup', 'allow --cgroup to name the root cgroup (meshes every process on the machine)', false)
  .option('--no-sockmap', 'disable the sockmap fast path (connect-time balancing only)')
  .option('--metrics-listen <host:port>', "Prometheus endpoint (GET /metrics); '' or 'off' = none", '127.0.0.1:9464')
  .addOption(new Option('--event-sample <n>', 'emit one flow event per N balanced connections (0 = off)').default(1).argParser((v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--event-sample: expected a non-negative integer, got '${v}'`);
    return n;
  }))
  .addOption(new Option('--proxy-port <port>', 'port of the L7 proxy listener (127.0.0.1 and ::1)').default(15001).argParser(portArg('--proxy-port')))
  .addOption(new Option('--tunnel-handover-port <port>', 'port of the tunnel hand-over\'s listeners, on the L7 proxy\'s addresses: ' +
    'the kernel sends meshed connections to other nodes\' workloads there, for the HBONE tunnel').default(15007).argParser(portArg('--tunnel-handover-port')))
  .addOption(new Option('--proxy-node-address <addr[,addr6]>', 'node address(es) the L7 proxy also listens on, for clients in ' +
    'other network namespaces (pods); default: the node address the pods\' routes go to, found and followed (none found: such ' +
    'clients get their service\'s fail mode)').argParser(parseNodeAddresses))
  .addOption(new Option('--proxy-heartbeat-ms <ms>', 'proxy heartbeat interval; the kernel counts the proxy as down after 3 missed beats')
    .default(1000).argParser((v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 10) throw new Error(`--proxy-heartbeat-ms: expected an integer >= 10, got '${v}'`);
      return n;
    }))
  .addOption(new Option('--drain-timeout <seconds>', 'after a planned restart handed over to a new agent (started with the ' +
    'same --run-dir): how long the connections still open may take to finish before they are cut').default(30).argParser((v) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0 || v.trim() === '') throw new Error(`--drain-timeout: expected seconds >= 0, got '${v}'`);
    return n;
  }))
  .action(async (opts: {
    config?: string; cgroup: string; bpffs: string; runDir?: string; allowRootCgroup: boolean; sockmap: boolean; eventSample: number;
    metricsListen: string;
    proxyPort: number; tunnelHandoverPort: number; proxyHeartbeatMs: number; drainTimeout: number; proxyNodeAddress?: ReturnType<typeof parseNodeAddresses>;
    xds?: string; xdsCa?: string; xdsServerName?: string; xdsMode: 'delta' | 'sotw'; nodeId?: string; nodeCluster: string; nodeLocality?: string;
    kubernetes?: boolean; kubePods?: boolean; kubeconfig?: string; trustDomain: string; kubeCgroupDriver: KubeWiring['cgroupDriver'];
    nodeTokenFile?: string; caAddress?: string; certTtl?: string;
  }) => {
    const log = createLogger();
    const bpffs = resolve(opts.bpffs);
    let demo: ReturnType<typeof spawnDemoBackends> | undefined;
    try {
      const cgroup = resolveCgroup(opts.cgroup);
      if (opts.tunnelHandoverPort === opts.proxyPort) throw new Error(`--tunnel-handover-port ${opts.tunnelHandoverPort}: the same port as --proxy-port (the two listen on the same addresses)`);
      const sources = [opts.config && '--config', opts.xds && '--xds', opts.kubernetes && '--kubernetes'].filter(Boolean);
      if (sources.length > 1) throw new Error(`${sources.join(' and ')} are exclusive: the config comes from one source`);
      if (opts.kubePods && !opts.xds) throw new Error('--kube-pods goes with --xds (with --kubernetes the agent watches its pods anyway)');
      if (opts.kubeconfig && !opts.kubernetes && !opts.kubePods) throw new Error('--kubeconfig is for --kubernetes or --kube-pods');
      if (opts.kubeconfig && !existsSync(opts.kubeconfig)) throw new Error(`--kubeconfig ${opts.kubeconfig}: no such file`);
      const config = opts.xds ? { xds: xdsConfig(opts) } : opts.kubernetes ? { kubernetes: await kubeWiring(opts, log) }
        : opts.config ? { file: resolve(opts.config) } : { embedded: demoModel(), name: 'demo' };
      const agent = new Agent({
        cgroup, bpffs,
        runDir: opts.runDir ? resolve(opts.runDir) : runDirFor(bpffs),
        config,
        kubePods: opts.kubePods ? await kubeWiring(opts, log) : undefined,
        allowRootCgroup: opts.allowRootCgroup, sockmap: opts.sockmap, eventSample: opts.eventSample,
        metricsListen: parseListen(opts.metricsListen),
        proxyPort: opts.proxyPort, tunnelHandoverPort: opts.tunnelHandoverPort, proxyHeartbeatMs: opts.proxyHeartbeatMs, drainTimeoutMs: opts.drainTimeout * 1000,
        ...opts.proxyNodeAddress,
        identity: identityWiring(opts),
      }, log);
      await agent.start();
      reportStartPhases(log);
      if ('embedded' in config) {
        demo = spawnDemoBackends(cgroup);
        const bin = 'node dist/cli/meshctl.js';
        process.stderr.write(
          `\nsockmesh is running on the embedded demo config: ${DEMO_VIP}:${DEMO_PORT} (L4) and ${DEMO_HTTP_VIP}:${DEMO_PORT} (L7) -> three demo backends.\n` +
          `Try, in another terminal (as root, from this directory):\n` +
          `  ${bin} exec -- curl -s http://${DEMO_VIP}/     # a program inside the mesh reaches the VIP\n` +
          `  ${bin} exec -- curl -si http://${DEMO_HTTP_VIP}/canary   # through the L7 proxy: routes, retries, splits\n` +
          `  ${bin} routes                                    # per route: requests, retries, latency\n` +
          `  ${bin} backends                                  # in or out of service, and why\n` +
          `  ${bin} services                                  # VIP -> backends, shares, connections\n` +
          `  ${bin} sockets                                   # sockets on the sockmap fast path\n` +
          `  ${bin} stats\n` +
          `Stop with Ctrl-C; the datapath stays in the kernel until 'node dist/agent/main.js cleanup'.\n\n`);
      }
      const stop = async (sig: string): Promise<void> => {
        log.info({ signal: sig }, 'stopping; the datapath keeps running from its pins');
        demo?.kill('SIGTERM');
        // bounded: a connection that never finishes (a tunnel stream whose pod or peer stays silent) must not keep the
        // agent from exiting (a stuck tunnel server held kernel/tunnel-handover's teardown for 10 minutes); the exit
        // cuts what is left, and the datapath runs on from its pins as after any stop
        const bound = setTimeout(() => { log.warn({ signal: sig, ms: STOP_BOUND_MS }, 'stop did not finish in time: exiting, open connections cut'); process.exit(0); }, STOP_BOUND_MS);
        bound.unref();
        await agent.stop();
        process.exit(0);
      };
      // A new agent took over (agent/handover.ts) and this one drained: done, successfully.
      void agent.drained.then((d) => {
        log.info(d, 'handed over to a new agent and drained; exiting');
        demo?.kill('SIGTERM');
        process.exit(0);
      });
      process.on('SIGINT', () => void stop('SIGINT'));
      process.on('SIGTERM', () => void stop('SIGTERM'));
      process.on('SIGHUP', () => { log.info('SIGHUP: re-reading the config'); agent.reload(); });
    } catch (e) {
      demo?.kill('SIGTERM');
      log.fatal((e as Error).message);
      process.stderr.write(`sockmesh-agent: ${(e as Error).message}\n`);
      process.exit(1);
    }
  });

program
  .command('cleanup')
  .description('remove every program, link and pin this agent instance made (and its admin socket and state)')
  .option('--bpffs <dir>', 'bpffs directory of the instance', DEFAULT_BPFFS)
  .option('--run-dir <dir>', 'run directory of the instance (default: /run/sockmesh/<bpffs name>)')
  .option('--cgroup <path>', 'also remove this cgroup directory if it is empty')
  .action((opts: { bpffs: string; runDir?: string; cgroup?: string }) => {
    const bpffs = resolve(opts.bpffs);
    try {
      const removed = cleanup(bpffs);
      const runDir = opts.runDir ? resolve(opts.runDir) : runDirFor(bpffs);
      if (existsSync(runDir)) rmSync(runDir, { recursive: true, force: true });
      if (opts.cgroup) {
        requireCgroup2Root();
        const cg = resolveCgroup(opts.cgroup);
        if (existsSync(cg)) {
          if (removeMeshSocketCgroup(cg)) removed.push(`cgroup ${join(cg, MESH_SOCKET_CGROUP)}`);
          try { rmdirSync(cg); removed.push(`cgroup ${cg}`); } catch (e) {
            process.stderr.write(`sockmesh-agent: cgroup ${cg} not removed: ${(e as NodeJS.ErrnoException).code} (processes still in it?)\n`);
          }
        }
      }
      process.stdout.write(removed.length ? `removed: ${removed.join(', ')}\n` : `nothing to remove at ${bpffs}\n`);
    } catch (e) {
      process.stderr.write(`sockmesh-agent cleanup: ${(e as Error).message}\n`);
      process.exit(1);
    }
  });

program
  .command('demo-backends', { hidden: true })
  .description('serve the demo backends (started by the agent inside the meshed cgroup)')
  .action(() => serveDemoBackends());

await program.parseAsync(process.argv);

/**
 * --proxy-node-address: 'ADDR', 'ADDR6' or 'ADDR,ADDR6' (one of each family at most). A loopback or unspecified address
 * is refused: pods cannot reach the first, and the second would listen on every address of the node.
 */
function parseNodeAddresses(value: string): { proxyNodeV4?: string; proxyNodeV6?: string } {
  const out: { proxyNodeV4?: string; proxyNodeV6?: string } = {};
  if (value === '') return out;
  for (const part of value.split(',')) {
    const a = part.trim();
    const family = isIP(a);
    if (family === 0) throw new Error(`--proxy-node-address: '${a}' is not an IP address`);
    if (/^(127\.|0\.0\.0\.0$)/.test(a) || a === '::' || a === '::1' || /^::ffff:/i.test(a)) {
      throw new Error(`--proxy-node-address: '${a}' is not an address pods can reach (loopback, unspecified or v4-mapped)`);
    }
    const key = family === 4 ? 'proxyNodeV4' : 'proxyNodeV6';
    if (out[key] !== undefined) throw new Error(`--proxy-node-address: two IPv${family} addresses ('${out[key]}', '${a}')`);
    out[key] = a;
  }
  return out;
}
