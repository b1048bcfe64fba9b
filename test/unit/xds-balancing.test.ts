// A service's balancing in a Cluster (issue 9): the control plane serves lb_policy (Envoy's enum, what Envoy-style
// clients and sockmesh's agent read) and load_balancing_policy (a list: gRPC's xDS clients take the first policy they
// support); the agent reads the algorithm from either, preferring lb_policy. The calls themselves are in
// xds-interop.test.ts (a real @grpc/grpc-js-xds client, every algorithm).
import t from 'tap';
import { parseConfig } from '../../agent/model/config.js';
import { digestCluster } from '../../agent/sources/xds/digest.js';
import { serviceResources } from '../../controlplane/snapshot.js';
import { LB_POLICY, TYPE } from '../../xds/envoy.js';
import { packAny, unpackAny } from '../../xds/protos.js';

type Obj = Record<string, any>;
const short = (url: string) => url.replace(/^.*load_balancing_policies\.([a-z_]+)\.v3\..*$/, '$1');

const model = parseConfig(`
services:
  - {name: s-random, vips: [10.0.0.1], ports: [{port: 80}], algorithm: random, backends: [{address: 10.1.0.1, port: 80}]}
  - {name: s-weighted, vips: [10.0.0.2], ports: [{port: 80}], algorithm: weighted, backends: [{address: 10.1.0.1, port: 80, weight: 3}]}
  - {name: s-maglev, vips: [10.0.0.3], ports: [{port: 80}], algorithm: maglev, maglev: {tableSize: 1021}, backends: [{address: 10.1.0.1, port: 80}]}
  - {name: s-lr, vips: [10.0.0.4], ports: [{port: 80}], algorithm: maglev, backends: [{address: 10.1.0.1, port: 80}], http: {balancer: least-request}}
  - {name: s-rr, vips: [10.0.0.5], ports: [{port: 80}], backends: [{address: 10.1.0.1, port: 80}], http: {balancer: round-robin}}
`, 'test.yaml');

/** The decoded Cluster and gRPC RouteConfiguration a service is served as. */
function served(name: string): { cluster: Obj; route?: Obj } {
  const svc = model.services.find((s) => s.name === name)!;
  const rs = serviceResources(svc);
  const one = (url: string) => rs.filter(([u]) => u === url).map(([, r]) => unpackAny<Obj>(r.any))[0];
  return { cluster: one(TYPE.cluster)!, route: one(TYPE.route) };
}

t.test('served: lb_policy as before, load_balancing_policy led by the same policy, gRPC fallbacks after it', async (t) => {
  const expect: Record<string, { lb: string; list: string[]; algorithm: string }> = {
    's-random': { lb: 'RANDOM', list: ['random', 'round_robin'], algorithm: 'random' },
    's-weighted': { lb: 'ROUND_ROBIN', list: ['ring_hash', 'round_robin'], algorithm: 'weighted' },
    's-maglev': { lb: 'MAGLEV', list: ['maglev', 'ring_hash', 'round_robin'], algorithm: 'maglev' },
    's-lr': { lb: 'LEAST_REQUEST', list: ['least_request', 'round_robin'], algorithm: 'maglev' },
    's-rr': { lb: 'ROUND_ROBIN', list: ['round_robin'], algorithm: 'random' },
  };
  for (const [name, e] of Object.entries(expect)) {
    const { cluster, route } = served(name);
    t.equal(cluster['lb_policy'], e.lb, `${name}: lb_policy ${e.lb}`);
    const list: Obj[] = cluster['load_balancing_policy'].policies.map((p: Obj) => p.typed_extension_config);
    t.same(list.map((p) => short(p.typed_config.type_url)), e.list, `${name}: load_balancing_policy ${e.list.join(', ')}`);
    for (const p of list) t.equal(p.name, `envoy.load_balancing_policies.${short(p.typed_config.type_url)}`, `${name}: ${p.name}`);
    const ring = list.find((p) => p.typed_config.type_url === LB_POLICY.RING_HASH);
    if (ring) t.equal(unpackAny<Obj>(ring.typed_config)['hash_function'], 'XX_HASH', `${name}: ring_hash with XX_HASH (gRPC refuses DEFAULT_HASH)`);
    const maglev = list.find((p) => p.typed_config.type_url === LB_POLICY.MAGLEV);
    if (maglev) t.equal(Number(unpackAny<Obj>(maglev.typed_config)['table_size'].value), 1021, `${name}: Maglev table size`);
    // The agent reads the same algorithm back, with nothing reported unsupported.
    const d = digestCluster(name, cluster);
    t.equal(d.algorithm, e.algorithm, `${name}: the agent reads algorithm ${e.algorithm}`);
    t.same(d.notes, [], `${name}: no notes`);
    // gRPC's route: the channel is hashed for maglev (ring_hash then keeps a channel on one backend), nothing else.
    const hash = route!['virtual_hosts'][0].routes[0].route.hash_policy;
    if (name === 's-maglev') t.match(hash, [{ filter_state: { key: 'io.grpc.channel_id' } }], `${name}: gRPC route hashes the channel`);
    else t.notOk(hash?.length, `${name}: no hash policy on the gRPC route`);
  }
  t.equal(digestCluster('s-lr', served('s-lr').cluster).http.balancer, 'least-request', 'an L7 cluster keeps its balancer');
  t.equal(digestCluster('s-rr', served('s-rr').cluster).http.balancer, 'round-robin');
});

const policy = (url: string, cfg: Obj = {}) => ({ typed_extension_config: { name: 'p', typed_config: packAny(url, cfg) } });
const cluster = (extra: Obj) => unpackAny<Obj>(packAny(TYPE.cluster, { name: 'c', type: 'EDS', ...extra }));
const foreign = { typed_extension_config: { name: 'x', typed_config: { type_url: 'type.googleapis.com/example.Custom', value: Buffer.alloc(0) } } };

t.test('read: lb_policy when set, else the first policy of load_balancing_policy sockmesh knows', async (t) => {
  const only = (c: Obj) => { const d = digestCluster('c', cluster(c)); return { algorithm: d.algorithm, tableSize: d.tableSize, notes: d.notes, balancer: d.http.balancer }; };
  // lb_policy alone (older control planes, Envoy's own configs)
  t.match(only({ lb_policy: 'RANDOM' }), { algorithm: 'random', notes: [] });
  t.match(only({ lb_policy: 'MAGLEV', maglev_lb_config: { table_size: { value: 509 } } }), { algorithm: 'maglev', tableSize: 509 });
  // load_balancing_policy alone (lb_policy unset: a Go or C++ server omits ROUND_ROBIN, the enum's default)
  t.match(only({ load_balancing_policy: { policies: [foreign, policy(LB_POLICY.RANDOM), policy(LB_POLICY.ROUND_ROBIN)] } }), { algorithm: 'random', notes: [] }, 'skips what it does not know');
  t.match(only({ load_balancing_policy: { policies: [policy(LB_POLICY.MAGLEV, { table_size: { value: 2039 } })] } }), { algorithm: 'maglev', tableSize: 2039, notes: [] });
  t.match(only({ load_balancing_policy: { policies: [policy(LB_POLICY.RING_HASH)] } }), { algorithm: 'maglev', notes: [/RING_HASH approximated by maglev/] });
  t.match(only({ load_balancing_policy: { policies: [policy(LB_POLICY.LEAST_REQUEST)] } }), { algorithm: 'weighted', balancer: 'least-request', notes: [] });
  t.match(only({ load_balancing_policy: { policies: [foreign] } }), { algorithm: 'weighted', notes: [/load_balancing_policy \(no policy sockmesh knows\) not supported \(weighted used\)/] });
  // both: lb_policy wins (it is what sockmesh's own control plane means; the list may lead with a gRPC choice)
  t.match(only({ lb_policy: 'ROUND_ROBIN', load_balancing_policy: { policies: [policy(LB_POLICY.RING_HASH), policy(LB_POLICY.ROUND_ROBIN)] } }), { algorithm: 'weighted', notes: [] });
  t.match(only({ lb_policy: 'RANDOM', load_balancing_policy: { policies: [policy(LB_POLICY.MAGLEV)] } }), { algorithm: 'random', notes: [] });
  t.match(only({ lb_policy: 'LOAD_BALANCING_POLICY_CONFIG', load_balancing_policy: { policies: [policy(LB_POLICY.RANDOM)] } }), { algorithm: 'random', notes: [] }, 'LOAD_BALANCING_POLICY_CONFIG: the list');
  t.throws(() => digestCluster('c', cluster({ load_balancing_policy: { policies: [{ typed_extension_config: { name: 'm', typed_config: { type_url: LB_POLICY.MAGLEV, value: Buffer.from([0xff]) } } }] } })),
    { name: 'XdsResourceError', message: /load_balancing_policy\.policies\[0\]\.typed_extension_config\.typed_config: cannot decode/ });
});
