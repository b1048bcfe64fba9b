// The soak's judgement (bench/lib/soakmodel.ts): which failed requests count against sockmesh, and the fit of its
// flatness checks. The judgement must count what it should: a failure while a backend stayed good all along.
import t from 'tap';
import { parseConfig } from '../../agent/model/config.js';
import { kernelEntry, KernelTrace, slope, soakConfig, Timeline, type FrontendSnap, type SoakService } from '../../bench/lib/soakmodel.js';

const K = '127.77.0.1:80';
const snap = (good: [string, number][], listed = good.length, service = 's'): Map<string, FrontendSnap> =>
  new Map([[K, { service, good: new Map(good), listed }]]);

t.test('a failure counts when one backend stayed good for the whole request', async (t) => {
  const tl = new Timeline();
  tl.record(1000, snap([['b1', 0], ['b2', 0]]));
  tl.record(2000, snap([['b1', 0]])); // b2 drained or sick
  t.same(tl.judge(K, 1500, 2500), { counts: true, backend: 'b1' });
  t.same(tl.judge(K, 2100, 2200), { counts: true, backend: 'b1' });
});

t.test('excluded failures, each with its reason', async (t) => {
  const tl = new Timeline();
  t.same(tl.judge(K, 10, 20), { counts: false, reason: 'before the first config' });
  tl.record(1000, snap([['b1', 0]]));
  tl.record(2000, snap([], 2)); // listed, none good
  tl.record(3000, new Map()); // removed
  tl.record(4000, snap([['b2', 5000]])); // added back: in force from 5000
  tl.record(6000, snap([['b2', 5000]], 1));
  tl.record(7000, snap([], 0));
  t.same(tl.judge(K, 1500, 2500), { counts: false, reason: 'every good backend turned bad during the request' });
  t.same(tl.judge(K, 2500, 2600), { counts: false, reason: 'no healthy backend (drained, unready or answering 5xx)' });
  t.same(tl.judge(K, 3500, 3600), { counts: false, reason: 'no service at this VIP' });
  t.same(tl.judge('other:1', 1500, 1600), { counts: false, reason: 'no service at this VIP' });
  t.same(tl.judge(K, 4500, 4600), { counts: false, reason: 'its backends just added, undrained or recovering (within the allowance)' });
  t.same(tl.judge(K, 5500, 6500), { counts: true, backend: 'b2' }, 'in force from 5000 on, and still good at 6000');
  t.same(tl.judge(K, 7500, 7600), { counts: false, reason: 'no backend in the config' });
});

t.test('a backend that went bad and came back during the request is not good throughout', async (t) => {
  const tl = new Timeline();
  tl.record(1000, snap([['b1', 0]]));
  tl.record(2000, snap([], 1));
  tl.record(3000, snap([['b1', 3500]]));
  t.same(tl.judge(K, 1500, 3800), { counts: false, reason: 'every good backend turned bad during the request' });
  t.throws(() => tl.record(2999, snap([])), /before the last one/);
});

t.test('slope: least squares per unit of x', async (t) => {
  t.equal(slope([]), 0);
  t.equal(slope([[1, 5]]), 0);
  t.equal(slope([[0, 1], [1, 3], [2, 5]]), 2);
  t.ok(Math.abs(slope([[0, 10], [1, 9], [2, 10], [3, 9]]) + 0.2) < 1e-9);
});

t.test('the soak config is one the agent accepts, for every kind of service', async (t) => {
  const svc = (name: string, kind: SoakService['kind'], n: number): SoakService =>
    ({ name, kind, vip: `127.77.0.${n}`, port: kind === 'l4udp' ? 53 : 80, backends: new Map([['b1', 1], ['b2', 0]]) });
  const text = soakConfig([svc('a', 'l4tcp', 1), svc('b', 'l4udp', 2), svc('c', 'l7h1', 3), svc('d', 'l7h2', 4)], (p) => `198.18.1.${p.slice(1)}`);
  const m = parseConfig(text, 'soak.yaml');
  t.same(m.services.map((s) => s.name), ['a', 'b', 'c', 'd']);
  t.equal(m.services[3]!.healthCheck?.kind, 'grpc', 'the h2c service is probed over gRPC');
  t.equal(m.services[1]!.healthCheck, undefined, 'the UDP service has no probe');
});

t.test('kernel trace: a listing is in force from the first sample at or after a time that holds it', async (t) => {
  const k = new KernelTrace();
  const l4 = kernelEntry('l4tcp', '198.18.0.2');
  const l7 = kernelEntry('l7h2', '198.18.0.2');
  t.equal(l4, 'l4 198.18.0.2:8081');
  t.equal(l7, 'l7 198.18.0.2:8082');
  k.record(100, new Map([['127.77.1.1:80', new Set([l4])]]));
  k.record(125, new Map([['127.77.1.1:80', new Set([l4])]]));
  k.record(150, new Map()); // removed
  k.record(175, new Map([['127.77.1.1:80', new Set([l7])]])); // back as L7 h2
  k.record(200, new Map([['127.77.1.1:80', new Set([l7])]]));
  t.equal(k.firstHolding('127.77.1.1:80', l4, 90), 100, 'held at the first sample after');
  t.equal(k.firstHolding('127.77.1.1:80', l4, 110), 125, 'a sample at or after the time, not the one before');
  t.equal(k.firstHolding('127.77.1.1:80', l4, 130), Infinity, 'removed and never back as L4');
  t.equal(k.firstHolding('127.77.1.1:80', l7, 100), 175, 'the L7 listing from when the kernel held it');
  t.equal(k.firstHolding('127.77.1.1:80', l7, 201), Infinity, 'no sample after the last');
  t.equal(k.firstHolding('127.77.1.2:80', l4, 0), Infinity, 'a frontend never held');
  t.equal(k.at('127.77.1.1:80', 160), 'nothing');
  t.equal(k.at('127.77.1.1:80', 180), l7);
  t.throws(() => k.record(150, new Map()), /before the last one/);
});
