// The CA on Kubernetes: agents authenticate with their pod's projected service-account token, which the control plane
// checks with a TokenReview against the API server (the stand-in, lab/kubeapi.ts, which minted the tokens), and get
// certificates only for the service accounts of the pods on their node. Called over gRPC with the agent's own client
// (xds/ca.ts). The stand-in's TokenReview is checked by independent clients: kubectl create -f and python3-kubernetes.
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t, { type Test } from 'tap';
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { KubeApi, kubeconfigFor } from '../../lab/kubeapi.js';
import { KubeClient } from '../../kube/client.js';
import { CertificateAuthority } from '../../controlplane/ca.js';
import { NodeTokens } from '../../controlplane/ca-service.js';
import { kubeCaAuth, parseServiceAccounts, type CaKubeClient } from '../../controlplane/ca-kube.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { CaCallError, CaClient } from '../../xds/ca.js';

const run = promisify(execFile);
const TD = 'cluster.local';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const AUD = 'sockmesh-ca';
const FILE_TOKEN = 'static-node-c-token-0123456789';

function csr(dir: string, san: string): string {
  return execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-keyout', join(dir, 'k.pem'), '-subj', '/O=x', '-addext', `subjectAltName=URI:${san}`],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

const pod = (ns: string, name: string, sa: string, node: string, phase = 'Running') => ({
  metadata: { name, namespace: ns }, spec: { nodeName: node, serviceAccountName: sa, containers: [{ name: 'c' }] }, status: { phase },
});

async function setup(t: Tap, opts: { stripNode?: boolean } = {}) {
  const api = await KubeApi.start({ token: 'admin-token-0123456789' });
  t.teardown(() => api.close());
  for (const p of [
    pod('sockmesh-system', 'agent-a', 'sockmesh-agent', 'node-a'),
    pod('sockmesh-system', 'agent-b', 'sockmesh-agent', 'node-b'),
    pod('shop', 'web-1', 'web', 'node-a'),
    pod('shop', 'db-1', 'db', 'node-b'),
    pod('shop', 'job-1', 'batch', 'node-a', 'Succeeded'),
  ]) api.put('pods', p);
  const client = new KubeClient({ server: api.url, token: 'admin-token-0123456789', source: 'test' } as never);
  t.teardown(() => client.close());
  // an API server before 1.30 says the pod but not the node: the CA must read the pod's spec.nodeName itself
  const seen: CaKubeClient = opts.stripNode ? {
    get: client.get.bind(client), list: client.list.bind(client),
    create: async (ref, o) => {
      const r = await client.create(ref, o) as { status?: { user?: { extra?: Record<string, unknown> } } };
      delete r.status?.user?.extra?.['authentication.kubernetes.io/node-name'];
      return r as never;
    },
  } : client;
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  const kube = kubeCaAuth({ client: seen, trustDomain: TD, audience: AUD, log, podsCacheMs: 200 });
  const authority = await CertificateAuthority.fromDir({ trustDomain: TD, dir: join(mkdtempSync(join(tmpdir(), 'ca-kube-')), 'ca') });
  const cp = await startControlPlaneFromModel({ services: [] }, {
    listen: '127.0.0.1:0', log,
    ca: { authority, kube, tokens: NodeTokens.parse(`${FILE_TOKEN} node-c\n`, 'tokens') },
  });
  t.teardown(() => cp.close());
  const dir = mkdtempSync(join(tmpdir(), 'ca-kube-csr-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ask = async (token: string, identity: string): Promise<string> => {
    const c = new CaClient({ address: `127.0.0.1:${cp.port}`, token: () => token });
    try {
      const chain = await c.createCertificate(csr(dir, identity));
      return `issued ${new X509Certificate(chain[0]!).subjectAltName}`;
    } catch (e) {
      return e instanceof CaCallError ? e.message : `thrown ${(e as Error).message}`;
    } finally {
      c.close();
    }
  };
  return { api, client, kube, cp, ask, lines };
}
type Tap = Test;

t.test('an agent\'s projected token: TokenReview, the agent service account, the node of its pod, its pods\' identities', async (t) => {
  const { api, kube, cp, ask, lines } = await setup(t);
  const tokenA = api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', pod: 'agent-a', audiences: [AUD] });

  t.equal(await ask(tokenA, id('shop', 'web')), `issued URI:${id('shop', 'web')}`, 'web runs on node-a: issued');
  t.match(lines.find((l) => l.msg === 'certificate issued'), { node: 'node-a', via: 'service account sockmesh-system/sockmesh-agent, pod sockmesh-system/agent-a', identity: id('shop', 'web') });
  t.equal(await ask(tokenA, id('sockmesh-system', 'sockmesh-agent')), `issued URI:${id('sockmesh-system', 'sockmesh-agent')}`, 'the agent pod itself is a pod of node-a');
  t.equal(await ask(tokenA, id('shop', 'db')),
    `/istio.v1.auth.IstioCertificateService/CreateCertificate: PERMISSION_DENIED: node node-a may not have ${id('shop', 'db')}: no workload with that identity on node node-a`, 'db runs on node-b only');
  t.match(await ask(tokenA, id('shop', 'batch')), /PERMISSION_DENIED: node node-a may not have .*sa\/batch/, 'a finished pod (Succeeded) gives no identity');
  t.equal(kube.authenticator.reviews, 1, 'four requests with one token: one TokenReview (cached)');
  t.equal(api.tokens.reviews, 1, 'the API server saw one review');

  // a pod scheduled to node-a later is seen once the short pod cache has passed
  t.match(await ask(tokenA, id('shop', 'cart')), /PERMISSION_DENIED/);
  api.put('pods', pod('shop', 'cart-1', 'cart', 'node-a'));
  await new Promise((r) => setTimeout(r, 250));
  t.equal(await ask(tokenA, id('shop', 'cart')), `issued URI:${id('shop', 'cart')}`, 'the new pod\'s identity, after podsCacheMs');

  const tokenB = api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', pod: 'agent-b', audiences: [AUD] });
  t.equal(await ask(tokenB, id('shop', 'db')), `issued URI:${id('shop', 'db')}`, 'node-b\'s agent gets db');
  t.match(await ask(tokenB, id('shop', 'web')), /PERMISSION_DENIED: node node-b may not have/);

  t.equal(await ask(FILE_TOKEN, id('shop', 'web')), `/istio.v1.auth.IstioCertificateService/CreateCertificate: PERMISSION_DENIED: node node-c may not have ${id('shop', 'web')}: no workload with that identity on node node-c`,
    '--node-tokens still works beside the TokenReview (node-c has no pods)');
  t.same(cp.ca!.stats.refusedBy, { 'PERMISSION_DENIED foreign_identity': 5 });
  t.equal(cp.ca!.stats.issued, 4);
});

t.test('refused tokens: each with its reason, and the API server unreachable', async (t) => {
  const { api, kube, cp, ask } = await setup(t);
  const agentToken = (o: { audiences?: string[]; pod?: string; expirationSeconds?: number } = {}) =>
    api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', audiences: [AUD], pod: 'agent-a', ...o });
  const web = id('shop', 'web');
  const P = '/istio.v1.auth.IstioCertificateService/CreateCertificate: ';

  t.equal(await ask(agentToken({ audiences: undefined, pod: 'agent-a' }).replace(/\.[^.]+$/, '.forged'), web), `${P}UNAUTHENTICATED: the API server refused the service-account token: invalid bearer token`, 'a forged signature');
  t.equal(await ask(api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', pod: 'agent-a' }), web),
    `${P}UNAUTHENTICATED: the API server refused the service-account token: [invalid bearer token, token audiences ["https://kubernetes.default.svc.cluster.local"] is invalid for the target audiences ["sockmesh-ca"]]`,
    'a token for the API server (the default audience), not for the CA');
  t.equal(await ask(agentToken({ audiences: ['other', AUD] }), web), `issued URI:${web}`, 'a token with several audiences, one of them ours');
  t.equal(await ask(agentToken({ expirationSeconds: -5 }), web), `${P}UNAUTHENTICATED: the API server refused the service-account token: [invalid bearer token, service account token has expired]`, 'expired');
  t.equal(await ask(api.tokens.mint({ namespace: 'shop', serviceAccount: 'web', pod: 'web-1', audiences: [AUD] }), web),
    `${P}PERMISSION_DENIED: service account shop/web is not an agent's (--ca-agent-service-account: sockmesh-system/sockmesh-agent)`, 'a workload\'s own token, even with our audience');
  t.equal(await ask(api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', audiences: [AUD] }), web),
    `${P}PERMISSION_DENIED: the token of sockmesh-system/sockmesh-agent is bound to no pod (a Secret token?), so it names no node: use the DaemonSet's projected token (serviceAccountToken, audience sockmesh-ca)`, 'a token bound to no pod');
  t.equal(await ask('not-a-jwt', web), `${P}UNAUTHENTICATED: the API server refused the service-account token: invalid bearer token`, 'garbage');

  // the agent pod deleted: its (not yet reviewed) token dies with it
  const orphan = agentToken({ pod: 'agent-b' });
  api.remove('pods', 'sockmesh-system', 'agent-b');
  t.equal(await ask(orphan, id('shop', 'db')), `${P}UNAUTHENTICATED: the API server refused the service-account token: [invalid bearer token, pod "agent-b" not found]`, 'the bound pod is gone');

  const fresh = agentToken();
  await api.unreachable();
  t.match(await ask(fresh, web), /^\/istio\.v1\.auth\.IstioCertificateService\/CreateCertificate: UNAVAILABLE: TokenReview failed: .*ECONNREFUSED/, 'API server down: UNAVAILABLE (the agent retries)');
  await api.reachable();
  t.equal(await ask(fresh, web), `issued URI:${web}`, 'and once it is back, issued');
  t.same(cp.ca!.stats.refusedBy, {
    'UNAUTHENTICATED token_invalid': 5, 'PERMISSION_DENIED not_agent': 1, 'PERMISSION_DENIED no_pod_binding': 1, 'UNAVAILABLE api_unavailable': 1,
  }, 'refusals counted by code and reason');
  t.ok(kube.authenticator.reviews >= 9);
});

t.test('an API server before 1.30 (no node-name extra): the node from the bound pod, its uid checked', async (t) => {
  const { api, ask } = await setup(t, { stripNode: true });
  const token = api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', pod: 'agent-a', audiences: [AUD] });
  t.equal(await ask(token, id('shop', 'web')), `issued URI:${id('shop', 'web')}`);
  t.match(await ask(token, id('shop', 'db')), /PERMISSION_DENIED: node node-a may not have/);
  // the pod recreated under the same name (a new uid) on another node: the old token names a pod that is gone
  const old = api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', pod: 'agent-b', audiences: [AUD] });
  api.remove('pods', 'sockmesh-system', 'agent-b');
  api.put('pods', pod('sockmesh-system', 'agent-b', 'sockmesh-agent', 'node-a'));
  t.match(await ask(old, id('shop', 'web')), /UNAUTHENTICATED: .*the UID in the bound object reference .* does not match/, 'the stand-in refuses it, as the API server does');
});

t.test('flags: --ca-agent-service-account values', async (t) => {
  t.same(parseServiceAccounts(['a/b', 'c/d,e/f.g']), ['a/b', 'c/d', 'e/f.g']);
  t.throws(() => parseServiceAccounts(['sockmesh-agent']), /--ca-agent-service-account "sockmesh-agent": expected <namespace>\/<service account name>/);
  t.throws(() => parseServiceAccounts(['Ns/x']), /expected <namespace>\/<service account name>/);
});

// Independent clients of the stand-in's TokenReview: what they send and read is what they do against a real API server.
const KUBECTL = ['/usr/bin/kubectl', '/usr/local/bin/kubectl'].find((p) => spawnSync(p, ['version', '--client'], { stdio: 'ignore' }).status === 0);
const PY_OK = spawnSync('/usr/bin/python3', ['-c', 'import kubernetes'], { stdio: 'ignore' }).status === 0;

t.test('the stand-in\'s TokenReview through kubectl create -f and python3-kubernetes', async (t) => {
  const api = await KubeApi.start({ tls: true, token: 'admin-token-0123456789' });
  const dir = mkdtempSync(join(tmpdir(), 'ca-kube-clients-'));
  t.teardown(async () => { await api.close(); rmSync(dir, { recursive: true, force: true }); });
  const kubeconfig = join(dir, 'config');
  writeFileSync(kubeconfig, kubeconfigFor(api));
  api.put('pods', pod('sockmesh-system', 'agent-a', 'sockmesh-agent', 'node-a'));
  const token = api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', pod: 'agent-a', audiences: [AUD] });

  t.test('kubectl create -f', { skip: KUBECTL ? false : 'no kubectl installed' }, async (t) => {
    const review = (tok: string, aud: string) => join(dir, `review-${aud}.yaml`);
    for (const aud of [AUD, 'elsewhere']) {
      writeFileSync(review(token, aud), `apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: ${token}\n  audiences: [${aud}]\n`);
    }
    // the server runs in this process: the client must run asynchronously
    const ok = JSON.parse((await run(KUBECTL!, ['--kubeconfig', kubeconfig, 'create', '-f', review(token, AUD), '-o', 'json'], { timeout: 30_000 })).stdout) as { status: Record<string, unknown> };
    t.match(ok.status, {
      authenticated: true, audiences: [AUD],
      user: { username: 'system:serviceaccount:sockmesh-system:sockmesh-agent', extra: { 'authentication.kubernetes.io/node-name': ['node-a'], 'authentication.kubernetes.io/pod-name': ['agent-a'] } },
    });
    const bad = JSON.parse((await run(KUBECTL!, ['--kubeconfig', kubeconfig, 'create', '-f', review(token, 'elsewhere'), '-o', 'json'], { timeout: 30_000 })).stdout) as { status: Record<string, unknown> };
    t.notOk(bad.status.authenticated);
    t.match(bad.status.error, /token audiences \["sockmesh-ca"\] is invalid for the target audiences \["elsewhere"\]/);
    const r = await run(KUBECTL!, ['--kubeconfig', kubeconfig, 'api-resources', '--api-group', 'authentication.k8s.io', '-o', 'wide'], { timeout: 30_000 });
    t.match(r.stdout, /tokenreviews\s+authentication\.k8s\.io\/v1\s+false\s+TokenReview\s+create/, 'discovery: tokenreviews, create only');
  });

  t.test('python3-kubernetes AuthenticationV1Api', { skip: PY_OK ? false : 'python3-kubernetes not installed' }, async (t) => {
    const py = `
import json, sys, kubernetes
kubernetes.config.load_kube_config(sys.argv[1])
api = kubernetes.client.AuthenticationV1Api()
out = []
for aud in ['${AUD}', 'elsewhere']:
    r = api.create_token_review(kubernetes.client.V1TokenReview(spec=kubernetes.client.V1TokenReviewSpec(token=sys.argv[2], audiences=[aud])))
    out.append({'authenticated': r.status.authenticated, 'user': r.status.user.username, 'extra': r.status.user.extra, 'audiences': r.status.audiences, 'error': r.status.error})
print(json.dumps(out))
`;
    const out = JSON.parse((await run('/usr/bin/python3', ['-c', py, kubeconfig, token], { timeout: 30_000 })).stdout) as Record<string, unknown>[];
    t.match(out[0], { authenticated: true, user: 'system:serviceaccount:sockmesh-system:sockmesh-agent', audiences: [AUD], extra: { 'authentication.kubernetes.io/node-name': ['node-a'] } });
    t.match(out[1], { authenticated: null, user: null, error: /is invalid for the target audiences \["elsewhere"\]/ });
  });
});

t.test('sockmesh-controlplane serve --kubernetes with a CA: the flags, TokenReview on by default, --node-tokens optional', async (t) => {
  const api = await KubeApi.start({ token: 'admin-token-0123456789' });
  const dir = mkdtempSync(join(tmpdir(), 'ca-kube-bin-'));
  t.teardown(async () => { await api.close(); rmSync(dir, { recursive: true, force: true }); });
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  api.put('pods', pod('mesh', 'agent-x', 'agent', 'node-x'));
  api.put('pods', pod('shop', 'web-1', 'web', 'node-x'));
  const main = join(import.meta.dirname, '..', '..', 'dist', 'controlplane', 'main.js');
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => resolve(p)); });
  });
  const usage = spawnSync(process.execPath, [main, 'serve', '--dir', dir, '--ca-dir', join(dir, 'ca'), '--node-tokens', join(dir, 'none'), '--ca-token-audience', 'x'], { encoding: 'utf8' });
  t.equal(usage.status, 1);
  t.match(usage.stderr, /--ca-token-audience and --ca-agent-service-account are for --kubernetes/);
  const bad = spawnSync(process.execPath, [main, 'serve', '--kubernetes', '--kubeconfig', join(dir, 'kubeconfig'), '--ca-dir', join(dir, 'ca'), '--ca-agent-service-account', 'agent'], { encoding: 'utf8' });
  t.match(bad.stderr, /--ca-agent-service-account "agent": expected <namespace>\/<service account name>/);

  const cp = spawn(process.execPath, [main, 'serve', '--kubernetes', '--kubeconfig', join(dir, 'kubeconfig'), '--listen', `127.0.0.1:${port}`, '--status-listen', 'off',
    '--ca-dir', join(dir, 'ca'), '--ca-agent-service-account', 'mesh/agent', '--ca-token-audience', 'mesh-ca'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { cp.kill('SIGKILL'); });
  let out = '';
  cp.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  cp.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const end = Date.now() + 15_000;
  while (!out.includes('control plane listening')) {
    if (Date.now() > end || cp.exitCode !== null) throw new Error(`the control plane did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  t.match(out, /"tokenAudience":"mesh-ca","agentServiceAccounts":\["mesh\/agent"\].*serving the certificate-signing API/);
  const csrDir = mkdtempSync(join(dir, 'csr-'));
  const ask = async (token: string) => {
    const c = new CaClient({ address: `127.0.0.1:${port}`, token: () => token });
    try {
      return `issued ${new X509Certificate((await c.createCertificate(csr(csrDir, id('shop', 'web'))))[0]!).subjectAltName}`;
    } catch (e) {
      return (e as Error).message;
    } finally {
      c.close();
    }
  };
  t.equal(await ask(api.tokens.mint({ namespace: 'mesh', serviceAccount: 'agent', pod: 'agent-x', audiences: ['mesh-ca'] })), `issued URI:${id('shop', 'web')}`, 'the agent\'s token: issued');
  t.match(await ask(api.tokens.mint({ namespace: 'mesh', serviceAccount: 'agent', pod: 'agent-x', audiences: ['sockmesh-ca'] })), /UNAUTHENTICATED: .*is invalid for the target audiences \["mesh-ca"\]/, '--ca-token-audience is the one checked');
  t.match(out, /"node":"node-x","via":"service account mesh\/agent, pod mesh\/agent-x".*"msg":"certificate issued"/);
});
