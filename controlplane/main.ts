#!/usr/bin/env node
// (its V8 flags, none measured worth having so far, are agent/runtime.ts CONTROLPLANE_NODE_FLAGS: a shebang cannot import them)
// sockmesh-controlplane: serve a directory of sockmesh configs as xDS (ADS, state of the world and delta) to many
// agents and to proxyless gRPC clients. A binary of its own, apart from meshctl: meshctl speaks only the agent's admin
// protocol, while this needs the model and the Envoy protos.
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { ConfigError } from '../agent/model/types.js';
import { createLogger } from '../agent/observe/log.js';
import { startControlPlane, type RunningControlPlane } from './server.js';
import { startKubeControlPlane } from './kube.js';
import { apiAccess } from '../kube/access.js';
import { caFromFlags, type CaFlags } from './ca-service.js';
import { DEFAULT_AGENT_SERVICE_ACCOUNT, DEFAULT_TOKEN_AUDIENCE, kubeCaAuth, parseServiceAccounts } from './ca-kube.js';
import { caCommand } from './ca-command.js';
import { controlPlaneRegistry, startStatusServer } from './status.js';
import { parseDuration } from '../agent/model/duration.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** --status-listen: HOST:PORT ([ADDR]:PORT for IPv6), or '' / 'off' for none. */
function parseStatusListen(spec: string): { host: string; port: number } | undefined {
  const s = spec.trim();
  if (s === '' || s === 'off') return undefined;
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(s) ?? /^([A-Za-z0-9.-]+):(\d{1,5})$/.exec(s);
  if (!m || Number(m[2]) > 65535) throw new Error(`--status-listen ${spec}: expected HOST:PORT ([ADDR]:PORT for IPv6), or 'off'`);
  return { host: m[1]!, port: Number(m[2]) };
}

const program = new Command();
program
  .name('sockmesh-controlplane')
  .description('xDS control plane: serves sockmesh config files as Envoy v3 resources over ADS')
  .version(VERSION)
  .showHelpAfterError();

program
  .command('serve')
  .description('serve every *.yaml, *.yml and *.json file of a directory, or the Kubernetes cluster; changes are pushed to every client')
  .option('--dir <dir>', 'config directory (same schema as the agent\'s --config file)')
  .option('--kubernetes', 'serve the cluster: Services, EndpointSlices, HTTPRoutes (and Nodes, for zones) watched once; Local and PreferClose services per node (the xDS node id is the node name)')
  .option('--kubeconfig <file>', 'kubeconfig for --kubernetes (default: the in-cluster service account, else $KUBECONFIG, else ~/.kube/config)')
  .option('--trust-domain <domain>', 'SPIFFE trust domain of the cluster\'s identities', 'cluster.local')
  .option('--root-namespace <namespace>', 'with --kubernetes: Istio\'s root namespace, where an AuthorizationPolicy is mesh-wide', 'istio-system')
  .option('--status-listen <host:port>', "GET /metrics (xDS streams, the CA; with --kubernetes the watch health) and with --kubernetes GET /v1/kubernetes (what is not served); '' or 'off' = none; with --dir only when given", '127.0.0.1:18001')
  .option('--listen <host:port>', 'address to listen on', '127.0.0.1:18000')
  .option('--tls-cert <file>', 'serve TLS with this certificate chain (PEM); needs --tls-key')
  .option('--tls-key <file>', 'private key (PEM) for --tls-cert')
  .option('--ca-dir <dir>', 'run the workload CA from this directory: generated on the first start (keys 0600), reused afterwards')
  .option('--ca-cert <file>', 'run the workload CA with this signing certificate (PEM); needs --ca-key')
  .option('--ca-key <file>', 'private key of --ca-cert (PEM, not readable by others)')
  .option('--ca-chain <file>', 'certificates above --ca-cert up to the root (PEM); the root is the trust bundle')
  .option('--cert-ttl <duration>', 'lifetime of workload certificates (default 24h)')
  .option('--node-tokens <file>', 'node credentials for the CA: one \'<token> <node name>\' per line')
  .option('--ca-token-audience <audience>', `with --kubernetes: the audience of the agents' projected service-account tokens, checked by TokenReview (default ${DEFAULT_TOKEN_AUDIENCE})`)
  .option('--ca-agent-service-account <namespace/name>', `with --kubernetes: the service account agents run as; only its tokens get certificates (repeatable; default ${DEFAULT_AGENT_SERVICE_ACCOUNT})`, (v: string, prev: string[] = []) => [...prev, v])
  .addHelpText('after', '\nExit codes: 0 stopped by a signal; 1 bad arguments, a config directory that does not load, or cannot listen.')
  .action(async (opts: CaFlags & { dir?: string; kubernetes?: boolean; kubeconfig?: string; trustDomain: string; rootNamespace: string; statusListen: string; listen: string; tlsCert?: string; tlsKey?: string; caTokenAudience?: string; caAgentServiceAccount?: string[] }) => {
    const usage = !!opts.tlsCert !== !!opts.tlsKey ? '--tls-cert and --tls-key go together'
      : !opts.dir === !opts.kubernetes ? 'serve what: --dir <dir> or --kubernetes (one of them)'
        : opts.kubeconfig && !opts.kubernetes ? '--kubeconfig is for --kubernetes'
          : (opts.caTokenAudience || opts.caAgentServiceAccount) && !opts.kubernetes ? '--ca-token-audience and --ca-agent-service-account are for --kubernetes (agents\' service-account tokens)' : null;
    if (usage) {
      process.stderr.write(`sockmesh-controlplane: ${usage}\n`);
      process.exit(1);
    }
    const log = createLogger();
    let running: RunningControlPlane;
    const tls = opts.tlsCert ? { cert: opts.tlsCert, key: opts.tlsKey! } : undefined;
    try {
      // The trust domain names identities (spiffe://<td>/ns/<ns>/sa/<sa>); the services served do not depend on it.
      const access = opts.kubernetes ? apiAccess({ kubeconfig: opts.kubeconfig, log: log.child({ component: 'kubernetes' }) }) : undefined;
      const kubeAuth = access && kubeCaAuth({
        client: access.client, trustDomain: opts.trustDomain, audience: opts.caTokenAudience,
        agentServiceAccounts: parseServiceAccounts(opts.caAgentServiceAccount ?? []), log: log.child({ component: 'ca' }),
      });
      const ca = await caFromFlags(opts, (v) => parseDuration(v), kubeAuth);
      if (ca) {
        log.info({
          trustDomain: opts.trustDomain, certTtlS: ca.authority.certTtlS, bundle: ca.authority.trustBundle().length, nodeTokens: !!ca.tokens,
          ...(kubeAuth ? { tokenAudience: kubeAuth.authenticator.audience, agentServiceAccounts: [...kubeAuth.authenticator.agents] } : {}),
        }, 'serving the certificate-signing API');
      }
      if (access) {
        const statusListen = parseStatusListen(opts.statusListen);
        running = await startKubeControlPlane({ access, server: access.server, listen: opts.listen, tls, log, statusListen, ca, trustDomain: opts.trustDomain, rootNamespace: opts.rootNamespace });
        log.info({ server: access.server, trustDomain: opts.trustDomain }, 'serving the Kubernetes cluster');
      } else {
        running = await startControlPlane({ dir: opts.dir!, listen: opts.listen, tls, log, ca });
        // a config directory's control plane had no status endpoint before the CA's metrics: only when asked for, so
        // that several on one machine do not collide on the default port
        const statusListen = program.commands.find((c) => c.name() === 'serve')!.getOptionValueSource('statusListen') === 'default' ? undefined : parseStatusListen(opts.statusListen);
        if (statusListen) {
          const served = running;
          const status = await startStatusServer(statusListen, controlPlaneRegistry(served.controlPlane, ca && { setup: ca, stats: () => served.ca?.stats }));
          log.info({ address: status.address }, 'status endpoint listening (GET /metrics)');
        }
      }
      // `sockmesh-controlplane ca rotate` writes the directory from another process: its new generation applies here
      // within a second (its root joins the bundle at once; issuing switches at its issueFrom)
      ca?.authority.watchDir((err) => {
        if (err) log.error({ error: err.message }, 'the CA directory changed but does not load: keeping the generations in force');
        else log.info({ ...ca.authority.status() }, 'CA generations reloaded');
      });
    } catch (e) {
      if (e instanceof ConfigError) {
        process.stderr.write(`sockmesh-controlplane: the config directory ${opts.dir ?? ''} does not load:\n`);
        for (const i of e.issues) process.stderr.write(`  ${i.file}: ${i.path || '(root)'}: ${i.message}\n`);
      } else process.stderr.write(`sockmesh-controlplane: ${(e as Error).message}\n`);
      process.exit(1);
    }
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping');
      void running.close().then(() => process.exit(0));
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGHUP', () => running.reload());
  });

program.addCommand(caCommand((v) => parseDuration(v)));

await program.parseAsync(process.argv);
