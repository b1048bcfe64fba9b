// The control plane's config directory with L7 services: workloads defined by several files merge (one name, one set
// of cgroups), a conflict is reported naming both files, and the merged model is what the snapshot serves.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigDir } from '../../controlplane/watch.js';
import { ConfigError } from '../../agent/model/types.js';

const svc = (name: string, vip: string, workload: string) => `
workloads:
  - {name: ${workload}, cgroups: [/mesh/${workload}]}
services:
  - name: ${name}
    vips: [${vip}]
    ports: [{port: 80}]
    backends: [{address: 127.0.0.1, port: 8080}]
    http:
      authz: {default: deny, rules: [{name: r, action: allow, from: [${workload}]}]}
`;

t.test('workloads merge across files; a conflicting definition names both files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-cp-l7-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'a.yaml'), svc('a', '127.77.9.1', 'frontend'));
  writeFileSync(join(dir, 'b.yaml'), svc('b', '127.77.9.2', 'frontend') + '  - {name: c, vips: [127.77.9.3], ports: [{port: 80}]}\n');
  const { model } = loadConfigDir(dir);
  t.same(model.workloads, [{ name: 'frontend', cgroups: ['/mesh/frontend'] }]);
  t.same(model.services.map((s) => s.name), ['a', 'b', 'c']);

  writeFileSync(join(dir, 'b.yaml'), svc('b', '127.77.9.2', 'frontend').replace('/mesh/frontend', '/mesh/other'));
  const err = t.throws(() => loadConfigDir(dir)) as ConfigError;
  t.match(err.issues, [{ file: join(dir, 'b.yaml'), path: 'workloads[0]', message: `workload 'frontend' is defined with other cgroups in ${join(dir, 'a.yaml')}` }]);
});

t.test('no workloads anywhere: the model has no workloads key (L4-only configs are unchanged)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-cp-l7-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'a.yaml'), 'services:\n  - {name: a, vips: [127.77.9.1], ports: [{port: 80}]}\n');
  t.notOk('workloads' in loadConfigDir(dir).model);
});
