// How a service's balancing is said to xDS clients: in a Cluster, both `lb_policy` (Envoy's enum: what sockmesh's
// agent and older Envoy-style clients read) and `load_balancing_policy` (a list of policies: a client takes the first
// it supports and then ignores lb_policy; gRPC's xDS clients refuse a cluster whose lb_policy they do not support
// unless this list offers one they do).
//
// Each list starts with a policy that balances as lb_policy says (for Envoy-style clients reading either field); what
// follows is for clients without it, gRPC's above all (grpc-js 1.14 registers round_robin, ring_hash and wrr_locality,
// and pick_first / client_side_weighted_round_robin only behind environment flags; Java, Go and C++ add least_request):
//   random    -> Random, RoundRobin       gRPC: round_robin. No gRPC client has random; round_robin spreads calls
//                                         evenly over the backends, as random does on average, and ignores weights
//                                         as random does.
//   weighted  -> RingHash, RoundRobin     gRPC and Envoy: ring_hash with no hash policy on the route, i.e. a random
//                                         hash per call: a random pick in proportion to the weights, the kernel's
//                                         weighted per call (gRPC's round_robin would ignore the weights).
//   maglev    -> Maglev, RingHash, RoundRobin
//                                         gRPC: ring_hash, the consistent hash it has; the gRPC route hashes the
//                                         channel (grpcRouteHashPolicy), so a channel keeps its backend as a
//                                         connection through the kernel's maglev does.
//   L7 least-request -> LeastRequest, RoundRobin   (grpc-js: round_robin; Java/Go/C++ and Envoy: least_request, two
//                                         random choices, as sockmesh's proxy)
//   L7 round-robin   -> RoundRobin
import type { Algorithm, Service } from '../agent/model/types.js';
import { ENUM, LB_POLICY, type LbPolicyName } from '../xds/envoy.js';
import { encodeAny } from '../xds/protos.js';

type Obj = Record<string, unknown>;

const extensionName = (policy: LbPolicyName) => `envoy.load_balancing_policies.${policy.toLowerCase()}`;

/** One typed_extension_config entry of a LoadBalancingPolicy (its typed_config encoded once per distinct config). */
const entries = new Map<string, Obj>();
function entry(policy: LbPolicyName, config: Obj = {}): Obj {
  const key = `${policy} ${JSON.stringify(config)}`;
  let e = entries.get(key);
  if (!e) {
    e = { typed_extension_config: { name: extensionName(policy), typed_config: encodeAny(LB_POLICY[policy], config) } };
    entries.set(key, e);
  }
  return e;
}

/** The policies of an algorithm (L4) or of an L7 service's balancer, most preferred first. */
function policies(svc: Service): Array<[LbPolicyName, Obj?]> {
  const ringHash: Obj = { hash_function: ENUM()['XX_HASH'] }; // grpc-js refuses DEFAULT_HASH (Envoy: the same XX_HASH)
  if (svc.http) return svc.http.balancer === 'round-robin' ? [['ROUND_ROBIN']] : [['LEAST_REQUEST', { choice_count: { value: 2 } }], ['ROUND_ROBIN']];
  switch (svc.algorithm) {
    case 'random': return [['RANDOM'], ['ROUND_ROBIN']];
    // lb_policy stays ROUND_ROBIN for weighted: Envoy's round robin follows weights (gRPC's does not).
    case 'weighted': return [['RING_HASH', ringHash], ['ROUND_ROBIN']];
    case 'maglev': return [['MAGLEV', { table_size: { value: svc.maglevTableSize } }], ['RING_HASH', ringHash], ['ROUND_ROBIN']];
  }
}

/** lb_policy for the kernel's algorithm (Envoy's round robin follows weights: weighted). */
const LB_ENUM: Record<Algorithm, LbPolicyName> = { random: 'RANDOM', weighted: 'ROUND_ROBIN', maglev: 'MAGLEV' };

/** The balancing fields of a service's Cluster: lb_policy, load_balancing_policy and, for maglev, maglev_lb_config. */
export function clusterBalancing(svc: Service): Obj {
  const lb: LbPolicyName = svc.http ? (svc.http.balancer === 'round-robin' ? 'ROUND_ROBIN' : 'LEAST_REQUEST') : LB_ENUM[svc.algorithm];
  const out: Obj = {
    lb_policy: ENUM()[lb as 'RANDOM' | 'ROUND_ROBIN' | 'LEAST_REQUEST' | 'MAGLEV'],
    load_balancing_policy: { policies: policies(svc).map(([p, cfg]) => entry(p, cfg)) },
  };
  if (svc.algorithm === 'maglev') out['maglev_lb_config'] = { table_size: { value: svc.maglevTableSize } };
  return out;
}

/**
 * The hash policy of the route proxyless gRPC clients use: for maglev, the channel (gRPC's filter_state key
 * io.grpc.channel_id), so that ring_hash keeps one client channel on one backend while the backends stay the same.
 * Otherwise none: ring_hash then hashes each call at random (weighted).
 */
export function grpcRouteHashPolicy(svc: Service): Obj[] | undefined {
  return !svc.http && svc.algorithm === 'maglev' ? [{ filter_state: { key: 'io.grpc.channel_id' } }] : undefined;
}
