// The L4 authorization tables (datapath/authz.ts) against in-memory maps: which cgroups get an identity (this node's
// workloads only: under the meshed cgroup), which verdicts are written (only where a policy decided or the verdict
// differs from the service's default), the order of writes (verdicts before the identities that lead to them), and
// that a second sync with nothing changed writes nothing. The service flags that carry the default come from plan.ts.
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthzTables, identityId } from '../../agent/datapath/authz.js';
import { AUTHZ_ALLOW, AUTHZ_DENY, SVC_F_AUTHZ, SVC_F_AUTHZ_DENY, decode } from '../../agent/datapath/abi.js';
import { fakeMaps } from '../lib/fakemaps.js';
import { planApply, Shadow } from '../../agent/datapath/plan.js';
import { parseConfig } from '../../agent/model/config.js';

const fake = fakeMaps;

t.test('AuthzTables: identities of this node\'s workloads, verdicts where they differ from the default', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'sockmesh-authz-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const d of ['mesh/web', 'mesh/batch', 'other/far']) mkdirSync(join(root, d), { recursive: true });
  const yaml = (policies: string) => `
nodes: [{name: b, addresses: [198.19.255.2]}]
workloads:
  - {name: web, cgroups: [/mesh/web, /mesh/gone], identity: "spiffe://td/ns/shop/sa/web"}
  - {name: batch, cgroups: [/mesh/batch], identity: "spiffe://td/ns/batch/sa/x"}
  - {name: far, cgroups: [/other/far], identity: "spiffe://td/ns/shop/sa/far", node: b}
services:
  - {name: api, vips: [10.0.0.1], ports: [{port: 80, targetPort: 8080}, {port: 53, protocol: udp, targetPort: 53}], backends: [{address: 10.1.0.1}]}
  - {name: free, vips: [10.0.0.2], ports: [{port: 80}], backends: [{address: 10.1.0.1, port: 9090}]}
authorization:
${policies}`;
  const model = parseConfig(yaml(`  - {name: shop-only, action: ALLOW, services: [api], from: [{namespaces: [shop]}]}`), 'c.yaml');
  const k = fake();
  const tables = new AuthzTables(k.maps, k.maps.n, join(root, 'mesh'), root);
  const ids = new Map([['api', 1], ['free', 2]]);
  const r = tables.sync(model, ids);
  t.same({ cgroups: r.cgroups, missing: r.missing }, { cgroups: 2, missing: 1 }, 'two cgroups of this node; /mesh/gone is not there (yet); far is not under the meshed cgroup');
  const idOf = (dir: string) => statSync(join(root, dir), { bigint: true }).ino;
  const identities = new Map([...k.data('sm_identities')].map(([key, v]) => [Buffer.from(key, 'hex').readBigUInt64LE(0), v.readUInt32LE(0)]));
  t.same(identities, new Map([[idOf('mesh/web'), identityId('spiffe://td/ns/shop/sa/web')], [idOf('mesh/batch'), identityId('spiffe://td/ns/batch/sa/x')]]));
  const verdicts = [...k.data('sm_authz')].map(([key, v]) => ({ ...decode('sm_authz_key', Buffer.from(key, 'hex')), ...decode('sm_authz_verdict', v) }));
  // api's default is deny (an ALLOW applies): only web (allowed by policy 1) needs an entry; batch and "no identity"
  // are the default. 'free' has no policy: nothing.
  t.same(verdicts, [{ service_id: 1, identity_id: identityId('spiffe://td/ns/shop/sa/web'), port: 8080, policy_id: 1, verdict: AUTHZ_ALLOW }]);
  t.same(k.trace, ['sm_authz update', 'sm_identities update', 'sm_identities update'], 'verdicts before the identities that lead to them');

  k.trace.length = 0;
  t.same(tables.sync(model, ids).written, 0, 'nothing changed: nothing written');
  t.same(k.trace, []);

  // a DENY policy: default allow; entries for what it denies
  const deny = parseConfig(yaml(`  - {name: no-batch, action: DENY, from: [{namespaces: [batch]}], to: [{ports: [9090]}]}`), 'c.yaml');
  tables.sync(deny, ids);
  const after = [...k.data('sm_authz')].map(([key, v]) => ({ ...decode('sm_authz_key', Buffer.from(key, 'hex')), ...decode('sm_authz_verdict', v) }));
  t.same(after, [{ service_id: 2, identity_id: identityId('spiffe://td/ns/batch/sa/x'), port: 9090, policy_id: 1, verdict: AUTHZ_DENY }], 'the old entry went, the new one came');

  // the service entries: the default verdict travels with them (plan.ts)
  const flags = (m: typeof model) => planApply(new Shadow(), m).ops.flatMap((o) => (o.op === 'writeFrontends' ? o.entries : []))
    .map((e) => `${e.key.port}/${e.key.proto}:${e.value.flags & (SVC_F_AUTHZ | SVC_F_AUTHZ_DENY)}`).sort();
  t.same(flags(model), ['53/17:0', '80/6:0', `80/6:${SVC_F_AUTHZ | SVC_F_AUTHZ_DENY}`], 'api TCP: checked, default deny; UDP and free: no check');
  t.same(flags(deny), [`53/17:0`, `80/6:${SVC_F_AUTHZ}`, `80/6:${SVC_F_AUTHZ}`], 'a policy without services: every TCP frontend, default allow');

  // no policies: both maps emptied
  tables.sync(parseConfig(yaml('  []').replace('authorization:\n  []', ''), 'c.yaml'), ids);
  t.equal(k.data('sm_authz').size + k.data('sm_identities').size, 0);
});
