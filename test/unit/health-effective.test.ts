// The effective model (what the kernel gets): out backends at weight 0, panic when a frontend would have none left,
// scoping, and copy on write (untouched services are the same objects).
import t from 'tap';
import { backendKey, effectiveModel } from '../../agent/health/effective.js';
import { BackendStates } from '../../agent/health/states.js';
import type { Backend, Model, Service } from '../../agent/model/types.js';
import { tableFor } from '../../agent/model/tables.js';

const be = (address: string, port: number, weight = 1): Backend => ({ address, port, weight, family: address.includes(':') ? 6 : 4 });
function service(name: string, v4: Backend[], v6: Backend[] = [], algorithm: Service['algorithm'] = 'random'): Service {
  return {
    name, algorithm, affinityTimeoutSeconds: 0, maglevTableSize: 251,
    frontends: [
      { vip: '127.77.9.1', family: 4, port: 80, protocol: 'tcp', backends: v4 },
      ...(v6.length ? [{ vip: '::1', family: 6 as const, port: 80, protocol: 'tcp' as const, backends: v6 }] : []),
    ],
  };
}

t.test('backend keys', async (t) => {
  t.equal(backendKey('127.0.0.1', 80), '127.0.0.1:80');
  t.equal(backendKey('::1', 80), '[::1]:80');
});

t.test('out backends get weight 0 and leave the selection table; others untouched', async (t) => {
  const web = service('web', [be('127.0.0.1', 1), be('127.0.0.2', 1), be('127.0.0.3', 1, 0)], [be('::1', 1)], 'maglev');
  const other = service('other', [be('127.0.0.1', 2)]);
  const model: Model = { services: [web, other] };
  const states = new BackendStates();
  t.equal(effectiveModel(model, states).model, model, 'nothing out: the same model object');
  states.setProbe('web', '127.0.0.2:1', false, 'connect ECONNREFUSED');
  const eff = effectiveModel(model, states);
  t.not(eff.model, model);
  t.equal(eff.model.services[1], other, 'an untouched service is the same object');
  t.equal(model.services[0]!.frontends[0]!.backends[1]!.weight, 1, 'the desired model is not modified');
  const fe = eff.model.services[0]!.frontends[0]!;
  t.same(fe.backends.map((b) => b.weight), [1, 0, 0]);
  t.equal(eff.model.services[0]!.frontends[1], web.frontends[1], 'the IPv6 frontend (nothing out) is the same object');
  const table = tableFor(eff.model.services[0]!, fe);
  t.ok(table.length > 0 && table.every((i) => i === 0), 'the maglev table holds only the live backend');
  t.same([...eff.drained.get('web')!], ['127.0.0.2:1']);
  t.same(eff.panics, []);
  // An ejection counts the same as a failed probe.
  states.eject('other', '127.0.0.1:2', 10_000, 'consecutive 5xx');
  t.teardown(() => states.close());
  const eff2 = effectiveModel(model, states);
  t.same(eff2.panics.map((p) => p.service), ['other'], 'its only backend is out: panic');
});

t.test('panic: every usable backend of a frontend out -> all kept, reported', async (t) => {
  const web = service('web', [be('127.0.0.1', 1), be('127.0.0.2', 1), be('127.0.0.3', 1, 0)], [be('::1', 1), be('::2', 1)]);
  const states = new BackendStates();
  states.setProbe('web', '127.0.0.1:1', false, 'x');
  states.setProbe('web', '127.0.0.2:1', false, 'y');
  states.setProbe('web', '[::1]:1', false, 'z');
  const eff = effectiveModel({ services: [web] }, states);
  const svc = eff.model.services[0]!;
  t.same(svc.frontends[0]!.backends.map((b) => b.weight), [1, 1, 0], 'v4: all out -> kept (the drained one stays drained)');
  t.same(svc.frontends[1]!.backends.map((b) => b.weight), [0, 1], 'v6: one of two out -> drained');
  t.same(eff.panics, [{ service: 'web', vip: '127.77.9.1', port: 80, protocol: 'tcp', backends: ['127.0.0.1:1', '127.0.0.2:1'] }]);
});

t.test('scope: only the named services are looked at', async (t) => {
  const a = service('a', [be('127.0.0.1', 1), be('127.0.0.2', 1)]);
  const b = service('b', [be('127.0.0.1', 1), be('127.0.0.2', 1)]);
  const states = new BackendStates();
  states.setProbe('a', '127.0.0.1:1', false, 'x');
  states.setProbe('b', '127.0.0.1:1', false, 'x');
  const eff = effectiveModel({ services: [a, b] }, states, new Set(['b']));
  t.equal(eff.model.services[0], a, 'a is outside the scope');
  t.same(eff.model.services[1]!.frontends[0]!.backends.map((x) => x.weight), [0, 1]);
});
