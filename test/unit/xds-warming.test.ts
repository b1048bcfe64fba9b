// Warming keeps the old references flowing: a listener that changes to a cluster not yet sent stays applied on its
// old cluster, whose endpoint updates are still subscribed, received and applied; only when the new cluster and its
// endpoints have arrived is the listener moved over and the old cluster unsubscribed. Delta and SotW, against a
// scripted ADS server over real gRPC on 127.0.0.1.
import t from 'tap';
import pino from 'pino';
import { XdsSource } from '../../agent/sources/xds/source.js';
import type { Model } from '../../agent/model/types.js';
import { FakeAds, tcpListener, edsCluster, cla, sotw, delta, TYPE, type Obj } from '../lib/ads.js';

const log = pino({ level: 'silent' });
const LISTENER = '127.77.9.1:80/tcp';

const wait = async (cond: () => boolean, what: string, ms = 5000) => {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`not in time: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

/** The backends of the one service, as "address:port". */
const backends = (m: Model | undefined): string[] =>
  (m?.services[0]?.frontends[0]?.backends ?? []).map((b) => `${b.address}:${b.port}`).sort();

for (const mode of ['delta', 'sotw'] as const) {
  t.test(`${mode}: a warming listener keeps its old cluster's endpoint updates; old unsubscribed once the new one is applied`, async (t) => {
    const ads = new FakeAds();
    await ads.start();
    const applied: Model[] = [];
    const src = new XdsSource({
      address: `127.0.0.1:${ads.port}`, mode, log,
      node: { id: 'node-w', cluster: 'sockmesh', metadata: {} },
      apply: (m) => { applied.push(m); return null; },
      backoff: { initialMs: 50, maxMs: 200 },
    });
    t.teardown(async () => { await src.stop(); ads.kill(); });
    src.start();
    const s = await ads.stream(0);
    let n = 0;
    const nonce = () => `n${++n}`;
    const version = () => `v${n}`;
    // Senders that look the same in both modes. SotW CDS is the whole set of subscribed clusters.
    const sendListener = (cluster: string) => s.send(mode === 'delta'
      ? delta(TYPE.listener, nonce(), [[LISTENER, version(), tcpListener('127.77.9.1', 80, cluster)]])
      : sotw(TYPE.listener, `l${n}`, nonce(), [tcpListener('127.77.9.1', 80, cluster)]));
    const sendClusters = (names: string[]) => s.send(mode === 'delta'
      ? delta(TYPE.cluster, nonce(), names.map((c) => [c, version(), edsCluster(c)] as [string, string, Obj]))
      : sotw(TYPE.cluster, `c${n}`, nonce(), names.map((c) => edsCluster(c))));
    const sendEndpoints = (name: string, eps: [string, number][]) => s.send(mode === 'delta'
      ? delta(TYPE.endpoint, nonce(), [[name, version(), cla(name, eps)]])
      : sotw(TYPE.endpoint, `e${n}`, nonce(), [cla(name, eps)]));
    /** The names a request subscribes (delta: added; SotW: the whole list). */
    const subs = (r: Obj): string[] => [...(mode === 'delta' ? r.resource_names_subscribe ?? [] : r.resource_names ?? [])].sort();
    const unsubs = (r: Obj): string[] => [...(r.resource_names_unsubscribe ?? [])].sort();

    await s.next(TYPE.listener);
    // 1. L -> A, applied, endpoints flowing.
    sendListener('a');
    await s.next(TYPE.listener); // ACK
    t.same(subs(await s.next(TYPE.cluster)), ['a']);
    sendClusters(['a']);
    await s.next(TYPE.cluster); // ACK
    t.same(subs(await s.next(TYPE.endpoint)), ['a']);
    sendEndpoints('a', [['127.0.0.1', 1001]]);
    await s.next(TYPE.endpoint); // ACK
    await wait(() => applied.length === 1, 'first apply');
    t.same(backends(applied[0]), ['127.0.0.1:1001'], 'L applied on cluster a');

    // 2. L changes to B, not sent yet: B is subscribed, A is not unsubscribed; nothing applied.
    sendListener('b');
    const lack = await s.next(TYPE.listener);
    t.notOk(lack.error_detail, 'the changed listener is ACKed');
    const cds = await s.next(TYPE.cluster);
    if (mode === 'delta') {
      t.same(subs(cds), ['b'], 'delta: b subscribed');
      t.same(unsubs(cds), [], 'delta: a not unsubscribed while L warms');
    } else t.same(subs(cds), ['a', 'b'], 'SotW: a stays in the CDS subscription beside b');
    t.match(src.status().warming, [/waits for cluster 'b'/]);
    t.equal(applied.length, 1, 'nothing applied while L warms');

    // 3. An endpoint update to A is still received and applied (L is applied on A until B is warm).
    sendEndpoints('a', [['127.0.0.1', 1001], ['127.0.0.2', 1002]]);
    const eack = await s.next(TYPE.endpoint);
    t.notOk(eack.error_detail, 'the update to a is ACKed');
    if (mode === 'sotw') t.same(subs(eack), ['a'], 'SotW: the EDS ACK still names a');
    await wait(() => applied.length === 2, 'the update to a applied');
    t.same(backends(applied[1]), ['127.0.0.1:1001', '127.0.0.2:1002'], 'the warming listener follows a\'s endpoints');

    // 4. Cluster B arrives: its endpoints are subscribed; A's stay (L still warms).
    sendClusters(mode === 'delta' ? ['b'] : ['a', 'b']);
    await s.next(TYPE.cluster); // ACK
    const eds = await s.next(TYPE.endpoint);
    if (mode === 'delta') {
      t.same(subs(eds), ['b']);
      t.same(unsubs(eds), [], 'delta: a\'s endpoints not unsubscribed while L warms');
    } else t.same(subs(eds), ['a', 'b']);
    t.equal(applied.length, 2, 'still on a');
    // No unsubscription has been sent so far.
    t.notOk(s.requests.some((r) => (r.resource_names_unsubscribe ?? []).length > 0), 'nothing unsubscribed yet');

    // 5. B's endpoints: L is applied on B, and only now A is unsubscribed (CDS and EDS).
    sendEndpoints('b', [['127.0.0.3', 1003]]);
    await s.next(TYPE.endpoint); // ACK
    await wait(() => applied.length === 3, 'L applied on b');
    t.same(backends(applied[2]), ['127.0.0.3:1003'], 'L applied on cluster b');
    t.same(src.status().warming, []);
    const cdsAfter = await s.next(TYPE.cluster);
    const edsAfter = await s.next(TYPE.endpoint);
    if (mode === 'delta') {
      t.same(unsubs(cdsAfter), ['a'], 'delta: cluster a unsubscribed once L is applied on b');
      t.same(unsubs(edsAfter), ['a'], 'delta: endpoints a unsubscribed');
    } else {
      t.same(subs(cdsAfter), ['b'], 'SotW: CDS shrinks to b once L is applied on b');
      t.same(subs(edsAfter), ['b'], 'SotW: EDS shrinks to b');
    }

    // A late update to A changes nothing any more.
    sendEndpoints('a', [['127.0.0.9', 1009]]);
    await s.next(TYPE.endpoint);
    await new Promise((r) => setTimeout(r, 200));
    t.equal(applied.length, 3, 'a is no longer applied anywhere');
  });
}
