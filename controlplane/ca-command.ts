// `sockmesh-controlplane ca rotate|status --ca-dir <dir>`: the operator's side of a --ca-dir CA. Run where the
// directory is (the control plane's host, or `kubectl exec` into it); the serving control plane watches the directory
// and applies a new generation within a second (ca.ts watchDir), so nothing is restarted.
//
// rotate is step 1 of the three-step rotation (ca.ts): a new root and intermediate, the root in the trust bundle at
// once, issuing under it after --propagation (agents re-read the bundle every 60 s, so the default 5m leaves them
// five chances), the old root out of the bundle once the longest certificate lifetime has passed after that.
import { Command } from 'commander';
import { join } from 'node:path';
import { CaConfigError, CertificateAuthority, DEFAULT_CERT_TTL_S, generateCaFiles } from './ca.js';

const DEFAULT_PROPAGATION = '5m';

function seconds(v: string, flag: string, parse: (v: string) => number | string): number {
  const ms = parse(v);
  if (typeof ms === 'string') throw new CaConfigError(`${flag}: ${ms}`);
  if (ms < 1000 || ms % 1000 !== 0) throw new CaConfigError(`${flag} ${v}: expected whole seconds, at least 1s`);
  return ms / 1000;
}

async function open(o: { caDir: string; trustDomain: string; certTtl?: string }, parse: (v: string) => number | string): Promise<CertificateAuthority> {
  const certTtlS = o.certTtl === undefined ? DEFAULT_CERT_TTL_S : seconds(o.certTtl, '--cert-ttl', parse);
  return CertificateAuthority.fromDir({ dir: o.caDir, trustDomain: o.trustDomain, certTtlS, create: false });
}

/** Runs `f`, printing a CaConfigError (or any error) as `sockmesh-controlplane ca: <message>` with exit code 1. */
function guarded<A extends unknown[]>(f: (...a: A) => Promise<void>): (...a: A) => Promise<void> {
  return async (...a) => {
    try {
      await f(...a);
    } catch (e) {
      process.stderr.write(`sockmesh-controlplane ca: ${(e as Error).message}\n`);
      process.exitCode = 1;
    }
  };
}

export function caCommand(parseDuration: (v: string) => number | string): Command {
  const ca = new Command('ca').description('operate the workload CA of a --ca-dir directory (rotation, status)');
  ca.command('rotate')
    .description('start a trust-bundle rotation: a new root + intermediate; its root is trusted at once, it issues after --propagation, the old root leaves the bundle --cert-ttl after that')
    .requiredOption('--ca-dir <dir>', 'the CA directory the control plane serves (serve --ca-dir)')
    .option('--propagation <duration>', 'how long the new root is in the bundle before it issues (agents re-read the bundle every 60 s)', DEFAULT_PROPAGATION)
    .option('--trust-domain <domain>', 'the CA\'s trust domain (checked against its roots)', 'cluster.local')
    .addHelpText('after', '\nExit codes: 0 rotation started; 1 no CA in the directory, a rotation still propagating, bad arguments.')
    .action(guarded(async (o: { caDir: string; propagation: string; trustDomain: string }) => {
      const propagationS = seconds(o.propagation, '--propagation', parseDuration);
      const authority = await open(o, parseDuration);
      await authority.rotate(propagationS * 1000);
      const st = authority.status();
      const next = st.generations[st.generations.length - 1]!;
      process.stdout.write(`${next.generation}: root ${next.root.subject} (SHA-256 ${next.root.fingerprint256}) is in the trust bundle now;\n`
        + `it issues from ${next.issueFrom}; the previous root leaves the bundle the control plane's --cert-ttl after that.\n`
        + `A running control plane on this directory applies it within a second; \`sockmesh-controlplane ca status\` follows it.\n`);
    }));
  ca.command('init')
    .description('make a new root and intermediate as files (--ca-cert/--ca-key/--ca-chain), e.g. for the Kubernetes Secret deploy/ca/ mounts')
    .requiredOption('--out <dir>', 'a new or empty directory (made 0700, keys 0600)')
    .option('--trust-domain <domain>', 'the trust domain the CA signs for', 'cluster.local')
    .option('--namespace <ns>', 'the namespace of the kubectl command printed', 'sockmesh-system')
    .addHelpText('after', '\nExit codes: 0 written; 1 the directory is not empty, bad arguments.')
    .action(guarded(async (o: { out: string; trustDomain: string; namespace: string }) => {
      const files = await generateCaFiles(o.out, o.trustDomain);
      // the Secret holds what issuing needs: the intermediate, its key and the root; the root's key stays here
      const secret = ['ca-cert.pem', 'ca-key.pem', 'cert-chain.pem'].map((f) => `--from-file=${join(o.out, f)}`).join(' ');
      process.stdout.write(`wrote ${files.join(', ')} to ${o.out}\n`
        + `the Secret the control plane mounts (deploy/ca/): kubectl -n ${o.namespace} create secret generic sockmesh-ca ${secret}\n`
        + `keep ${join(o.out, 'root-key.pem')} out of the cluster (it is not needed to issue)\n`);
    }));
  ca.command('status')
    .description('the CA\'s generations: which issues, which is next or retiring, root and intermediate expiry')
    .requiredOption('--ca-dir <dir>', 'the CA directory')
    .option('--trust-domain <domain>', 'the CA\'s trust domain', 'cluster.local')
    .option('--cert-ttl <duration>', 'the control plane\'s --cert-ttl (when an old root leaves the bundle)', '24h')
    .option('--json', 'print the status as JSON')
    .action(guarded(async (o: { caDir: string; trustDomain: string; certTtl: string; json?: boolean }) => {
      const st = (await open(o, parseDuration)).status();
      if (o.json) {
        process.stdout.write(`${JSON.stringify(st, null, 2)}\n`);
        return;
      }
      process.stdout.write(`issuing: ${st.active}   rotation step: ${st.rotationStep}   roots in the bundle: ${st.bundleRoots}\n`);
      for (const g of st.generations) {
        const when = g.state === 'next' ? ` from ${g.issueFrom}` : g.leavesBundle ? ` (leaves the bundle ${g.leavesBundle})` : '';
        process.stdout.write(`${g.generation.padEnd(8)} ${g.state.padEnd(9)}${when}\n  root         ${g.root.subject}  not after ${g.root.notAfter}\n`);
        if (g.intermediate) process.stdout.write(`  intermediate ${g.intermediate.subject}  not after ${g.intermediate.notAfter}\n`);
      }
    }));
  return ca;
}
