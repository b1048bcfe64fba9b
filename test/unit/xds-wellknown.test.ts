// The well-known-type helpers both sides of xDS share (xds/wellknown.ts), read through real protobuf encoding: what a
// wrapper, a Duration and a Struct look like after the wire, and what the digests make of an explicit zero.
import t from 'tap';
import { digestCluster, digestEndpoints } from '../../agent/sources/xds/digest.js';
import { TYPE } from '../../xds/envoy.js';
import { packAny, unpackAny } from '../../xds/protos.js';
import { sockmeshMeta, sockmeshMetadata } from '../../xds/sockmesh.js';
import { duration, durationMs, fromStruct, num, toStruct } from '../../xds/wellknown.js';

type Obj = Record<string, any>;
const wire = (typeUrl: string, obj: Obj): Obj => unpackAny(packAny(typeUrl, obj));
const cla = (weight: Obj | undefined): Obj => ({
  cluster_name: 'c',
  endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '10.0.0.1', port_value: 80 } } }, ...(weight ? { load_balancing_weight: weight } : {}) }] }],
});

t.test('num(): wrappers by the proto3 rules (an empty wrapper is the default 0, an absent one undefined)', async (t) => {
  t.equal(num(undefined), undefined, 'absent field');
  t.equal(num(null), undefined);
  t.equal(num({}), 0, 'present wrapper without value: 0 (proto3 does not write a zero)');
  t.equal(num({ value: 0 }), 0);
  t.equal(num({ value: 7 }), 7);
  t.equal(num({ value: '18446744073709551' }), 18446744073709551, 'UInt64Value: longs as strings');
  t.equal(num(443), 443, 'plain scalar');
  t.equal(num('12'), 12);
  t.equal(num('x'), undefined, 'not a number');
  // Through the wire: a proto3 encoder that omits zero scalars (Go's, C++'s: Envoy, Istio) sends {value: 0} as an
  // empty message, which decodes as {}; protobufjs writes the 0. Both are 0.
  const omitted = wire(TYPE.endpoint, cla({}))['endpoints'][0].lb_endpoints[0].load_balancing_weight;
  t.same(omitted, {}, 'a zero without its scalar arrives as an empty wrapper');
  t.equal(num(omitted), 0, '... and reads back as 0, not as unset');
  t.equal(num(wire(TYPE.endpoint, cla({ value: 0 }))['endpoints'][0].lb_endpoints[0].load_balancing_weight), 0, 'a zero written out: 0');
  const unset = wire(TYPE.endpoint, cla(undefined))['endpoints'][0].lb_endpoints[0].load_balancing_weight;
  t.equal(num(unset), undefined, 'an unset wrapper stays undefined');
});

t.test('digests: an explicit zero in a wrapper is a zero', async (t) => {
  // load_balancing_weight 0 drains a backend, whether the 0 is written out or omitted (an empty wrapper, which was
  // read as unset, weight 1, before: a drained backend kept getting connections from a Go or C++ control plane).
  for (const zero of [{}, { value: 0 }]) t.same(digestEndpoints('c', wire(TYPE.endpoint, cla(zero))).nums.slice(0, 2), [80, 0], `weight ${JSON.stringify(zero)}: 0`);
  t.same(digestEndpoints('c', wire(TYPE.endpoint, cla(undefined))).nums.slice(0, 2), [80, 1], 'unset weight: 1');
  t.same(digestEndpoints('c', wire(TYPE.endpoint, cla({ value: 3 }))).nums.slice(0, 2), [80, 3]);
  // enforcing_consecutive_5xx 0 switches the 5xx check off; unset means Envoy's default 100 (on).
  const od = (o: Obj) => digestCluster('c', wire(TYPE.cluster, { name: 'c', type: 'EDS', outlier_detection: o })).http.outlierDetection!;
  t.equal(od({ consecutive_5xx: { value: 3 }, enforcing_consecutive_5xx: {} })['consecutive5xx'], 0, 'enforcing 0 (empty wrapper): off');
  t.equal(od({ consecutive_5xx: { value: 3 } })['consecutive5xx'], 3, 'enforcing unset: on');
  // maglev table_size 0 is a table size of 0 (refused by the model's validation), not "no size given".
  const c = digestCluster('c', wire(TYPE.cluster, { name: 'c', type: 'EDS', lb_policy: 'MAGLEV', maglev_lb_config: { table_size: {} } }));
  t.equal(c.tableSize, 0);
});

t.test('Duration and Struct helpers round-trip through the wire', async (t) => {
  const c = wire(TYPE.cluster, { name: 'c', connect_timeout: duration(1500), metadata: sockmeshMetadata({ a: 1, b: 'x', c: [true, { d: null }] }) });
  t.equal(durationMs(c['connect_timeout']), 1500);
  t.equal(durationMs(undefined), undefined);
  t.same(sockmeshMeta(c), { a: 1, b: 'x', c: [true, { d: null }] });
  t.same(fromStruct(toStruct({ n: 2 })), { n: 2 });
  t.same(sockmeshMeta({}), {});
});
