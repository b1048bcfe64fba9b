// meshctl identities / certs against the admin API's /v1/certs route served from a real certificate manager, which
// holds certificates from the real CA over the real gRPC API; meshctl runs as a child process (stdout, exit code).
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import type { Model } from '../../agent/model/types.js';
import type { CertsReport } from '../../agent/admin/protocol.js';
import { AdminServer } from '../../agent/admin/server.js';
import { adminRoutes, type AdminSources } from '../../agent/admin/routes.js';
import { CertManager } from '../../agent/identity/certs.js';
import { localIdentities } from '../../agent/certwiring.js';
import { CertificateAuthority } from '../../controlplane/ca.js';
import { NodeTokens } from '../../controlplane/ca-service.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { CaClient } from '../../xds/ca.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MESHCTL = join(ROOT, 'dist', 'cli', 'meshctl.js');
const newest = (dir: string): number => Math.max(0, ...readdirSync(dir, { withFileTypes: true, recursive: true })
  .filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => statSync(join(e.parentPath, e.name)).mtimeMs));
if (!existsSync(MESHCTL) || statSync(MESHCTL).mtimeMs < Math.max(newest(join(ROOT, 'cli')), newest(join(ROOT, 'agent', 'admin')))) {
  spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')], { cwd: ROOT, stdio: 'inherit', timeout: 300_000 });
}

const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const TOKEN = 'node-a-token-0123456789abcdef';
const log = pino({ level: 'silent' });

function meshctl(runDir: string, bpffs: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [MESHCTL, '--run-dir', runDir, '--bpffs', bpffs, ...args], { env: { ...process.env, NO_COLOR: '1' }, timeout: 30_000 },
      (err, stdout, stderr) => done({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
  });
}

t.test('meshctl identities and certs', async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'meshctl-certs-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  const runDir = join(tmp, 'run'), noPins = join(tmp, 'bpffs'), other = join(tmp, 'run2');
  for (const d of [runDir, noPins, other]) mkdirSync(d);

  // the control plane places web and db on node-a, but db's identity is malformed in one entry and foreign in the CA's view
  const cpModel = { services: [], workloads: [{ name: 'web', cgroups: [], identity: WEB, node: 'node-a' }] } as unknown as Model;
  const authority = await CertificateAuthority.fromDir({ dir: join(tmp, 'ca'), trustDomain: TD });
  const cp = await startControlPlaneFromModel(cpModel, { listen: '127.0.0.1:0', log, ca: { authority, tokens: NodeTokens.parse(`${TOKEN} node-a\n`, 't') } });
  t.teardown(() => cp.close());
  const client = new CaClient({ address: `127.0.0.1:${cp.port}`, token: () => TOKEN });
  t.teardown(() => client.close());
  const certs = new CertManager({ ca: client, log, backoff: { initialMs: 60_000, maxMs: 60_000 } });
  t.teardown(() => certs.stop());
  // the agent's model: what it is told is on its node (db too: the CA will disagree), plus workloads elsewhere
  const agentModel = { services: [], workloads: [
    { name: 'web', cgroups: [], identity: WEB, node: 'node-a' },
    { name: 'db', cgroups: [], identity: DB, node: 'node-a' },
    { name: 'bad', cgroups: [], identity: 'spiffe://cluster.local/db', node: 'node-a' },
    { name: 'far', cgroups: [], identity: `spiffe://${TD}/ns/x/sa/far`, node: 'node-b' },
  ] } as unknown as Model;
  const ids = localIdentities(agentModel, 'node-a');
  t.same(ids.sort(), [DB, WEB], 'local identities: this node\'s, well-formed');
  t.same(localIdentities({ services: [], workloads: [{ name: 'x', cgroups: ['/x'], identity: WEB }, { name: 'y', cgroups: ['/y'] }] }, 'node-a'), [WEB],
    'a workload without a node is this node\'s; one without an identity needs no certificate');
  certs.setIdentities(ids);
  await certs.settled();

  const routes = adminRoutes({ status: { certs: () => certs.report() } } as unknown as AdminSources);
  const admin = new AdminServer(join(runDir, 'admin.sock'), { '/v1/certs': routes['/v1/certs']! }, log);
  await admin.start();
  t.teardown(() => admin.stop());

  const ident = await meshctl(runDir, noPins, ['identities']);
  t.equal(ident.code, 0, ident.stderr);
  t.match(ident.stdout, /IDENTITY\s+STATE\s+RENEWALS\s+FAILURES\s+LAST ERROR/);
  t.match(ident.stdout, new RegExp(`${DB}\\s+failed\\s+0\\s+1\\s+.*PERMISSION_DENIED: node node-a may not have`));
  t.match(ident.stdout, new RegExp(`${WEB}\\s+issued\\s+0\\s+0`));

  const c = await meshctl(runDir, noPins, ['certs']);
  t.equal(c.code, 0, c.stderr);
  const serial = certs.get(WEB)!.serial;
  t.match(c.stdout, new RegExp(`${WEB}\\s+${serial}\\s+\\S+\\s+(23h 59m|1d)\\s+in (9|10|11)h`), 'serial, not after, time left ~24 h, renewal at 40-50% of its life (jitter)');
  t.match(c.stdout, /CN=sockmesh intermediate 1/, 'the issuer');
  t.match(c.stdout, /trust bundle: 1 root\n  CN=sockmesh root 1, O=cluster.local/);
  t.match(c.stdout, /issued 1, renewed 0, failed requests 1/);

  const json = await meshctl(runDir, noPins, ['certs', '--json']);
  const parsed = JSON.parse(json.stdout) as CertsReport;
  t.equal(parsed.identities.find((i) => i.identity === WEB)!.serial, serial);
  t.notMatch(json.stdout, /PRIVATE KEY/, 'no key leaves the agent');

  // an agent without certificates: 404 -> a clear message
  const none = adminRoutes({ status: { certs: () => null } } as unknown as AdminSources);
  const admin2 = new AdminServer(join(other, 'admin.sock'), { '/v1/certs': none['/v1/certs']! }, log);
  await admin2.start();
  t.teardown(() => admin2.stop());
  const no = await meshctl(other, noPins, ['certs']);
  t.not(no.code, 0);
  t.match(no.stderr, /this agent has no workload certificates \(start it with --node-token-file\)/);
  const down = await meshctl(join(tmp, 'nowhere'), noPins, ['identities']);
  t.not(down.code, 0);
  t.match(down.stderr, /certificates are held by the agent only/);
});
