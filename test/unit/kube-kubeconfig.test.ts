// Finding and reading the Kubernetes connection: kubeconfig files (kubectl's format) and the in-cluster service
// account; every malformed kubeconfig is refused with an error naming the file and the field.
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadKubeConfig, parseKubeconfig } from '../../kube/kubeconfig.js';
import { KubeClient, RESOURCES } from '../../kube/client.js';
import { KubeApi } from '../../lab/kubeapi.js';

const dir = mkdtempSync(join(tmpdir(), 'kube-kubeconfig-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
const b64 = (s: string) => Buffer.from(s).toString('base64');

const config = (cluster: object, user: object = { token: 'x' }, extra: object = {}) =>
  JSON.stringify({
    apiVersion: 'v1', kind: 'Config', 'current-context': 'c',
    contexts: [{ name: 'c', context: { cluster: 'k', user: 'u', namespace: 'team' } }],
    clusters: [{ name: 'k', cluster }], users: [{ name: 'u', user }], ...extra,
  });

t.test('a good kubeconfig: server, CA from data, client cert from files relative to it, namespace', async (t) => {
  writeFileSync(join(dir, 'client.crt'), PEM);
  writeFileSync(join(dir, 'client.key'), 'KEY');
  const c = parseKubeconfig(config({ server: 'https://api.example:6443/', 'certificate-authority-data': b64(PEM) }, { 'client-certificate': 'client.crt', 'client-key': 'client.key' }), join(dir, 'config'));
  t.equal(c.server, 'https://api.example:6443');
  t.equal(c.ca, PEM);
  t.equal(c.cert, PEM);
  t.equal(c.key, 'KEY');
  t.equal(c.token, undefined);
  t.equal(c.namespace, 'team');
  t.equal(c.insecureSkipTLSVerify, false);
  t.match(c.source, /kubeconfig .*config, context "c"/);
  const y = parseKubeconfig('current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\nclusters:\n- name: k\n  cluster: {server: "http://127.0.0.1:8080", insecure-skip-tls-verify: true}\n', '/x/y');
  t.equal(y.server, 'http://127.0.0.1:8080');
  t.equal(y.insecureSkipTLSVerify, true, 'YAML, no user');
});

t.test('malformed kubeconfigs: the error names the file and the field', async (t) => {
  const file = join(dir, 'bad');
  const cases: [string, string, RegExp][] = [
    ['not YAML', '{', /bad: not YAML/],
    ['a list', '- a', /bad: not a kubeconfig/],
    ['no current-context', JSON.stringify({ contexts: [] }), /bad: current-context is not set/],
    ['unknown context', config({ server: 'https://a' }, {}, { 'current-context': 'zz' }), /bad: contexts: no entry named "zz" \(the current-context\)/],
    ['unknown cluster', config({ server: 'https://a' }, {}, { clusters: [] }), /bad: clusters: no entry named "k" \(context "c"'s cluster\)/],
    ['unknown user', config({ server: 'https://a' }, {}, { users: [{ name: 'other', user: {} }] }), /bad: users: no entry named "u"/],
    ['no server', config({}), /bad: clusters "k": server is not set/],
    ['server not a URL', config({ server: '10.0.0.1:6443' }), /bad: clusters "k": server "10.0.0.1:6443" is not a URL/],
    ['server not http', config({ server: 'ftp://a' }), /http or https expected/],
    ['CA data not base64 PEM', config({ server: 'https://a', 'certificate-authority-data': 'not base64!' }), /bad: clusters "k": certificate-authority-data is not a base64 PEM/],
    ['CA file missing', config({ server: 'https://a', 'certificate-authority': 'nope.crt' }), /bad: clusters "k": certificate-authority .*nope\.crt: ENOENT/],
    ['cert without key', config({ server: 'https://a' }, { 'client-certificate-data': b64(PEM) }), /bad: users "u": client-certificate and client-key go together/],
    ['exec plugin', config({ server: 'https://a' }, { exec: { command: 'aws' } }), /bad: users "u": exec credential plugins are not supported/],
    ['token not a string', config({ server: 'https://a' }, { token: 5 }), /bad: users "u": token must be a string/],
    ['skip-tls not a boolean', config({ server: 'https://a', 'insecure-skip-tls-verify': 'yes' }), /insecure-skip-tls-verify must be true or false/],
    ['tokenFile missing', config({ server: 'https://a' }, { tokenFile: 'tok' }), /bad: users "u": tokenFile .*tok does not exist/],
    ['clusters not a list', config({ server: 'https://a' }, {}, { clusters: { k: 1 } }), /bad: clusters: a list expected/],
  ];
  for (const [what, text, re] of cases) {
    writeFileSync(file, text);
    t.throws(() => loadKubeConfig({ kubeconfig: file }), re, what);
  }
  t.throws(() => loadKubeConfig({ kubeconfig: join(dir, 'absent') }), /kubeconfig .*absent: cannot read it: ENOENT/);
});

t.test('where the connection comes from: --kubeconfig, in-cluster, $KUBECONFIG, ~/.kube/config', async (t) => {
  const sa = join(dir, 'sa');
  mkdirSync(sa);
  writeFileSync(join(sa, 'token'), 'sa-token\n');
  writeFileSync(join(sa, 'ca.crt'), PEM);
  writeFileSync(join(sa, 'namespace'), 'sockmesh\n');
  const file = join(dir, 'explicit');
  writeFileSync(file, config({ server: 'https://explicit' }));
  const env = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
  const inc = loadKubeConfig({ env, serviceAccountDir: sa, home: dir });
  t.same({ server: inc.server, ca: inc.ca, tokenFile: inc.tokenFile, namespace: inc.namespace }, { server: 'https://10.96.0.1:443', ca: PEM, tokenFile: join(sa, 'token'), namespace: 'sockmesh' });
  t.equal(loadKubeConfig({ env: { KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '6443' }, serviceAccountDir: sa }).server, 'https://[fd00::1]:6443');
  t.equal(loadKubeConfig({ kubeconfig: file, env, serviceAccountDir: sa }).server, 'https://explicit', '--kubeconfig wins over in-cluster');
  t.equal(loadKubeConfig({ env: { KUBECONFIG: `${join(dir, 'none')}:${file}` }, serviceAccountDir: join(dir, 'nosa'), home: dir }).server, 'https://explicit', '$KUBECONFIG: the first that exists');
  t.throws(() => loadKubeConfig({ env: { KUBECONFIG: join(dir, 'none') }, serviceAccountDir: join(dir, 'nosa') }), /\$KUBECONFIG: none of its files exists/);
  mkdirSync(join(dir, '.kube'));
  writeFileSync(join(dir, '.kube', 'config'), config({ server: 'https://home' }));
  t.equal(loadKubeConfig({ env: {}, serviceAccountDir: join(dir, 'nosa'), home: dir }).server, 'https://home');
  t.throws(() => loadKubeConfig({ env: {}, serviceAccountDir: join(dir, 'nosa'), home: join(dir, 'nohome') }), /no Kubernetes configuration: not in a pod/);
  t.throws(() => loadKubeConfig({ env: { KUBERNETES_SERVICE_HOST: 'h', KUBERNETES_SERVICE_PORT: 'x' }, serviceAccountDir: sa }), /KUBERNETES_SERVICE_PORT is not a port/);
});

t.test('a token file (in-cluster) authenticates the client', async (t) => {
  const api = await KubeApi.start({ token: 'sa-token' });
  t.teardown(() => api.close());
  const tokenFile = join(dir, 'tokfile');
  writeFileSync(tokenFile, 'sa-token\n');
  const c = new KubeClient({ server: api.url, tokenFile, source: 'test' });
  t.teardown(() => c.close());
  t.ok((await c.list(RESOURCES.namespaces)).items.length >= 1);
  t.equal(api.requests.list, 1);
});
