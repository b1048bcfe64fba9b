#!/usr/bin/env node
// sockmesh-controlplane: serve a directory of sockmesh configs as xDS (ADS, state of the world and delta) to many
// agents and to proxyless gRPC clients. A binary of its own, apart from meshctl: meshctl speaks only the agent's admin
// protocol, while this needs the model and the Envoy protos.
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { ConfigError } from '../agent/model/types.js';
import { createLogger } from '../agent/observe/log.js';
import { startControlPlane, type RunningControlPlane } from './server.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const program = new Command();
program
  .name('sockmesh-controlplane')
  .description('xDS control plane: serves sockmesh config files as Envoy v3 resources over ADS')
  .version(VERSION)
  .showHelpAfterError();

program
  .command('serve')
  .description('serve every *.yaml, *.yml and *.json file of a directory; changes are pushed to every client')
  .requiredOption('--dir <dir>', 'config directory (same schema as the agent\'s --config file)')
  .option('--listen <host:port>', 'address to listen on', '127.0.0.1:18000')
  .option('--tls-cert <file>', 'serve TLS with this certificate chain (PEM); needs --tls-key')
  .option('--tls-key <file>', 'private key (PEM) for --tls-cert')
  .addHelpText('after', '\nExit codes: 0 stopped by a signal; 1 bad arguments, a config directory that does not load, or cannot listen.')
  .action(async (opts: { dir: string; listen: string; tlsCert?: string; tlsKey?: string }) => {
    if (!!opts.tlsCert !== !!opts.tlsKey) {
      process.stderr.write('sockmesh-controlplane: --tls-cert and --tls-key go together\n');
      process.exit(1);
    }
    const log = createLogger();
    let running: RunningControlPlane;
    try {
      running = await startControlPlane({
        dir: opts.dir,
        listen: opts.listen,
        tls: opts.tlsCert ? { cert: opts.tlsCert, key: opts.tlsKey! } : undefined,
        log,
      });
    } catch (e) {
      if (e instanceof ConfigError) {
        process.stderr.write(`sockmesh-controlplane: the config directory ${opts.dir} does not load:\n`);
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

await program.parseAsync(process.argv);
