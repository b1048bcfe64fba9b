// The agent's Kubernetes model file (kube/modelfile.ts) is exactly the text JSON.stringify makes, written in pieces
// and with each unchanged service's text kept; and changedServices (agent/sources/kube.ts) compares only the stretch
// where two service lists differ, with the same answer as comparing them whole.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ModelFileWriter } from '../../kube/modelfile.js';
import { changedServices } from '../../agent/sources/kube.js';
import type { Model, Service } from '../../agent/model/types.js';
import { prng } from '../../bench/lib/fleet.js';

const service = (i: number, backends = 10): Service => ({
  name: `ns-${i % 7}--svc-${i}`, algorithm: 'random', affinityTimeoutSeconds: 0, maglevTableSize: 251,
  frontends: [{
    vip: `10.96.${i >> 8}.${i & 255}`, family: 4, port: 80, protocol: 'tcp',
    backends: Array.from({ length: backends }, (_, j) => ({ address: `10.1.${i & 255}.${j}`, family: 4 as const, port: 8080, weight: 1 })),
  }],
});

t.test('the file is JSON.stringify\'s text, in pieces, and a changed service is written anew', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'modelfile-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'sub', 'kubernetes-model.json');
  const w = new ModelFileWriter();
  const head = { version: 1, node: 'node-"a"' };
  const services = Array.from({ length: 400 }, (_, i) => service(i)); // ~400 KB: several pieces
  const model: Model = { services, workloads: [{ name: 'w', cgroups: ['/a'] }] };
  w.write(file, head, model);
  t.equal(readFileSync(file, 'utf8'), JSON.stringify({ ...head, model }), 'byte for byte (services, workloads, escapes)');
  const changed = { ...services[7]!, maglevTableSize: 509 };
  const next: Model = { services: services.map((s, i) => (i === 7 ? changed : s)) };
  w.write(file, head, next);
  t.equal(readFileSync(file, 'utf8'), JSON.stringify({ ...head, model: next }), 'the changed service, and no workloads key any more');
  t.match(readFileSync(file, 'utf8'), /"maglevTableSize":509/);
  w.write(file, head, { services: [] });
  t.same(JSON.parse(readFileSync(file, 'utf8')), { ...head, model: { services: [] } });
  t.throws(() => w.write(join(dir, 'sub', 'kubernetes-model.json', 'x'), head, model), /ENOTDIR|EEXIST/, 'a file system error is thrown, naming it');
});

t.test('changedServices: the stretch between the common head and tail, the same answer as the whole lists', async (t) => {
  const r = prng(7);
  let checked = 0;
  for (let round = 0; round < 200; round++) {
    const prev = Array.from({ length: 30 }, (_, i) => service(i, 1));
    const next = prev.slice();
    for (let k = 0, n = 1 + Math.floor(r() * 3); k < n; k++) {
      const at = Math.floor(r() * next.length);
      const op = Math.floor(r() * 3);
      if (op === 0) next[at] = { ...next[at]! }; // changed (a new object)
      else if (op === 1) next.splice(at, 0, service(100 + round * 10 + k, 1)); // added
      else next.splice(at, 1); // removed
    }
    // the reference: every name whose object differs, or that is on one side only
    const want = new Set<string>();
    const a = new Map(prev.map((s) => [s.name, s]));
    const b = new Map(next.map((s) => [s.name, s]));
    for (const [n, s] of b) if (a.get(n) !== s) want.add(n);
    for (const n of a.keys()) if (!b.has(n)) want.add(n);
    t.same([...changedServices(prev, next)].sort(), [...want].sort(), `round ${round}`);
    checked++;
  }
  t.equal(checked, 200);
  const same = Array.from({ length: 5 }, (_, i) => service(i, 1));
  t.same([...changedServices(same, same.slice())], [], 'nothing changed');
});
