// The xDS source against sockmesh's own control plane (controlplane/server.ts) over loopback gRPC, both modes: the
// model served comes back as the same model, and a change reaches apply() with the names of the changed services.
import t from 'tap';
import pino from 'pino';
import { XdsSource } from '../../agent/sources/xds/source.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { parseConfig } from '../../agent/model/config.js';
import type { Model } from '../../agent/model/types.js';

const CONFIG = `
services:
  - name: web
    vips: [127.77.2.1, "::1"]
    ports: [{ port: 80 }]
    algorithm: maglev
    maglev: { tableSize: 1021 }
    backends:
      - { address: 127.0.0.1, port: 8080, weight: 2 }
      - { address: 127.0.0.2, port: 8080, weight: 0 }
      - { address: "::1", port: 8080 }
  - name: multi
    vips: [127.77.2.2]
    ports: [{ port: 80, targetPort: 8080 }, { port: 443, targetPort: 8443 }]
    algorithm: weighted
    backends: [{ address: 127.0.0.1, weight: 3 }]
  - name: dns
    vips: [127.77.2.53]
    ports: [{ port: 53, protocol: udp }]
    backends: [{ address: 127.0.0.1, port: 5353 }]
`;

const byName = (m: Model) => [...m.services].sort((a, b) => a.name.localeCompare(b.name));
const wait = async (cond: () => boolean, ms = 5000) => {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
};

// Affinity is left out above: controlplane/snapshot.ts writes the Struct value as number_value, but protobufjs'
// built-in google.protobuf.Value only knows numberValue, so the value is encoded empty and the client NACKs it.
t.test('affinity metadata round trip', async (t) => {
  const model = parseConfig(CONFIG.replace('algorithm: maglev', 'algorithm: maglev\n    affinity: { timeoutSeconds: 300 }'), 'test.yaml');
  const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0' });
  const applied: Model[] = [];
  const src = new XdsSource({
    address: `127.0.0.1:${cp.port}`, mode: 'delta', log: pino({ level: 'silent' }), node: { id: 'n', cluster: 'c', metadata: {} },
    apply: (m) => { applied.push(m); return null; },
  });
  t.teardown(async () => { await src.stop(); await cp.close(); });
  src.start();
  await wait(() => applied.length === 1 || src.status().lastNack !== null);
  t.same(applied.length ? byName(applied[0]!) : src.status().lastNack?.reason, byName(model));
});

for (const mode of ['sotw', 'delta'] as const) {
  t.test(`${mode}: the served model comes back whole, and a change with its service name`, async (t) => {
    const model = parseConfig(CONFIG, 'test.yaml');
    const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0' });
    const applied: { model: Model; changed?: ReadonlySet<string> }[] = [];
    const src = new XdsSource({
      address: `127.0.0.1:${cp.port}`, mode, log: pino({ level: process.env.XDS_DEBUG ? 'debug' : 'silent' }),
      node: { id: 'n', cluster: 'c', metadata: {} },
      apply: (m, changed) => { applied.push({ model: m, changed }); return null; },
    });
    t.teardown(async () => { await src.stop(); await cp.close(); });
    src.start();
    await wait(() => applied.length === 1);
    t.same(byName(applied[0]!.model), byName(model), 'same model as the file source gives');
    t.same(src.status().unsupported, []);
    t.equal(src.status().lastNack, null);

    const changed = parseConfig(CONFIG.replace('{ address: 127.0.0.1, port: 5353 }', '{ address: 127.0.0.3, port: 5353 }'), 'test.yaml');
    cp.setModel(changed);
    await wait(() => applied.length === 2);
    t.same(byName(applied[1]!.model), byName(changed));
    t.same([...(applied[1]!.changed ?? [])], ['dns']);
  });
}

// An L7 service over the wire: HCM listeners with inline routes and RBAC, a cluster per backend group, workloads in
// listener metadata. The agent gets the model the file gives (workloads: those an authorization names), and a change
// of a workload's cgroups reaches apply() with the service that names it.
const L7_CONFIG = `
workloads:
  - {name: frontend, cgroups: [/sockmesh-test/client]}
services:
  - name: shop
    vips: [127.77.3.1]
    ports: [{port: 80}]
    backends:
      - {address: 127.0.0.1, port: 18081}
      - {address: 127.0.0.1, port: 18082, group: canary}
    healthCheck: {type: http, path: /healthz, interval: 2s}
    http:
      outlierDetection: {}
      authz: {default: deny, rules: [{name: fe, action: allow, from: [frontend], methods: [GET]}]}
      routes:
        - {name: api, match: {path: {prefix: /api}}, split: [{group: default, weight: 80}, {group: canary, weight: 20}],
           retries: {attempts: 2, retryOn: [5xx, reset]}}
        - {name: rest}
  - name: other
    vips: [127.77.3.2]
    ports: [{port: 80}]
    backends: [{address: 127.0.0.1, port: 9000}]
`;

for (const mode of ['sotw', 'delta'] as const) {
  t.test(`${mode}: an L7 service round trips over gRPC; a workload change reaches apply()`, async (t) => {
    const model = parseConfig(L7_CONFIG, 'l7.yaml');
    const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0' });
    const applied: { model: Model; changed?: ReadonlySet<string> }[] = [];
    const src = new XdsSource({
      address: `127.0.0.1:${cp.port}`, mode, log: pino({ level: 'silent' }), node: { id: 'n', cluster: 'c', metadata: {} },
      apply: (m, changed) => { applied.push({ model: m, changed }); return null; },
    });
    t.teardown(async () => { await src.stop(); await cp.close(); });
    src.start();
    await wait(() => applied.length === 1 || src.status().lastNack !== null);
    t.equal(src.status().lastNack, null, String(src.status().lastNack?.reason));
    t.same(byName(applied[0]!.model), byName(model));
    t.same(applied[0]!.model.workloads, model.workloads);
    t.same(src.status().unsupported, []);

    const moved = parseConfig(L7_CONFIG.replace('/sockmesh-test/client', '/sockmesh-test/client2'), 'l7.yaml');
    cp.setModel(moved);
    await wait(() => applied.length === 2);
    t.same(applied[1]!.model.workloads, [{ name: 'frontend', cgroups: ['/sockmesh-test/client2'] }]);
    t.same([...(applied[1]!.changed ?? [])], ['shop']);
    t.same(byName(applied[1]!.model), byName(moved));
  });
}
