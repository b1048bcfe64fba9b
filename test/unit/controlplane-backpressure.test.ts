// Write backpressure in the control plane: a client that stops reading (a stalled agent) must not make the server
// buffer every update for it. Real gRPC on 127.0.0.1 with raw grpc-js clients: one stops reading after its first
// response while the server applies many large updates; the bytes queued for it stay bounded, a healthy client gets
// every update promptly, and the stalled one, when it reads again, converges to the latest state.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { TYPE } from '../../xds/envoy.js';
import { adsClientConstructor, unpackAny, type AnyMessage } from '../../xds/protos.js';
import type { Model, Service } from '../../agent/model/types.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { HIGH_WATER_BYTES } from '../../controlplane/stream.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const SERVICES = 1000;
const BACKENDS = 30;
const ROUNDS = 40;

/** Every service's backends on port 1000 + round: each round changes every ClusterLoadAssignment (~1.5 MiB of EDS). */
function model(round: number): Model {
  const services: Service[] = [];
  for (let i = 0; i < SERVICES; i++) {
    services.push({
      name: `svc-${i}`, algorithm: 'weighted', affinityTimeoutSeconds: 0, maglevTableSize: 251,
      frontends: [{
        vip: `10.${(i >> 8) & 255}.${i & 255}.1`, family: 4, port: 80, protocol: 'tcp',
        backends: Array.from({ length: BACKENDS }, (_, k) => ({ address: `10.200.${i & 255}.${k + 1}`, family: 4 as const, port: 1000 + round, weight: 1 })),
      }],
    });
  }
  return { services };
}
const names = Array.from({ length: SERVICES }, (_, i) => `svc-${i}`);

/** The port of each cluster's endpoints in one EDS response. */
function ports(resp: Msg, into: Map<string, number>): void {
  for (const r of resp['resources'] ?? []) {
    const any = (r['resource'] ?? r) as AnyMessage; // delta wraps each resource
    const cla = unpackAny<Msg>(any);
    into.set(cla['cluster_name'], cla['endpoints'][0]['lb_endpoints'][0]['endpoint']['address']['socket_address']['port_value']);
  }
}

const Ads = adsClientConstructor();

for (const variant of ['sotw', 'delta'] as const) {
  t.test(`${variant}: a client that stops reading holds bounded server memory and converges when it reads again`, async (t) => {
    const cp = await startControlPlaneFromModel(model(0), { listen: '127.0.0.1:0' });
    t.teardown(() => cp.close());
    const method = variant === 'sotw' ? 'StreamAggregatedResources' : 'DeltaAggregatedResources';
    const open = () => {
      const c = new Ads(`127.0.0.1:${cp.port}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
      t.teardown(() => c.close());
      const call = (c as unknown as Record<string, () => grpc.ClientDuplexStream<Msg, Msg>>)[method]!.call(c);
      call.on('error', () => {});
      t.teardown(() => call.cancel());
      call.write(variant === 'sotw'
        ? { node: { id: 'n' }, type_url: TYPE.endpoint, resource_names: names }
        : { node: { id: 'n' }, type_url: TYPE.endpoint, resource_names_subscribe: names });
      return call;
    };

    // The stalled client: reads its first response, then stops reading.
    const stalled = open();
    const stalledPorts = new Map<string, number>();
    let stalledResponses = 0;
    await new Promise<void>((res) => {
      stalled.on('data', (m: Msg) => {
        ports(m, stalledPorts);
        stalledResponses++;
        if (stalledResponses === 1) {
          stalled.pause();
          res();
        }
      });
    });
    t.equal(stalledPorts.size, SERVICES, 'the stalled client got the full state first');

    // The healthy client reads everything.
    const healthy = open();
    const healthyPorts = new Map<string, number>();
    const inbox: Msg[] = [];
    let wake: (() => void) | undefined;
    healthy.on('data', (m: Msg) => {
      inbox.push(m);
      wake?.();
    });
    const nextHealthy = async (ms = 10_000): Promise<Msg> => {
      const deadline = Date.now() + ms;
      while (inbox.length === 0) {
        if (Date.now() > deadline) throw new Error(`healthy client: no response within ${ms} ms`);
        await new Promise<void>((r) => { wake = r; setTimeout(r, 50); });
      }
      return inbox.shift()!;
    };
    ports(await nextHealthy(), healthyPorts);
    t.equal(healthyPorts.size, SERVICES);

    const stats = () => cp.controlPlane.streamStats();
    const stalledId = Math.min(...stats().map((s) => s.id)); // opened first
    let fullResponseBytes = 0;
    let writtenLate = 0;
    const latencies: number[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const t0 = performance.now();
      cp.setModel(model(round));
      // Every update reaches the healthy client, in order, whole.
      const got = new Map<string, number>();
      while (got.size < SERVICES) ports(await nextHealthy(), got);
      latencies.push(performance.now() - t0);
      t.ok([...got.values()].every((p) => p === 1000 + round), `round ${round}: the healthy client has every cluster at port ${1000 + round}`, { diagnostic: false });
      if (round === 1) fullResponseBytes = Math.max(...stats().map((s) => s.maxQueuedBytes));
      // By now the client's own buffers (grpc-js reads up to 16 messages ahead) and the HTTP/2 window are full.
      if (round === ROUNDS - 10) writtenLate = stats().find((x) => x.id === stalledId)!.responses;
    }
    latencies.sort((a, b) => a - b);
    const p50 = latencies[latencies.length >> 1]!, max = latencies[latencies.length - 1]!;
    t.comment(`healthy client, setModel to whole update received: p50 ${p50.toFixed(0)} ms, max ${max.toFixed(0)} ms`);
    t.ok(max < 5000, `the healthy client got every update promptly (max ${max.toFixed(0)} ms)`);

    const s = stats().find((x) => x.id === stalledId)!;
    t.comment(`stalled stream: ${s.responses} responses written for ${ROUNDS} updates, ${s.coalesced} changes coalesced, ` +
      `queued now ${(s.queuedBytes / 1048576).toFixed(2)} MiB, at most ${(s.maxQueuedBytes / 1048576).toFixed(2)} MiB ` +
      `(one full response ${(fullResponseBytes / 1048576).toFixed(2)} MiB)`);
    t.ok(s.maxQueuedBytes <= HIGH_WATER_BYTES + 2 * fullResponseBytes, 'bytes queued for the stalled client stay bounded');
    t.ok(s.responses < ROUNDS - 10, `the stalled client was not written every update (${s.responses} responses)`);
    t.equal(s.responses, writtenLate, 'once its buffers are full, nothing more is written to the stalled client');
    t.ok(s.coalesced > 0 && s.owed > 0, 'updates meanwhile are owed and coalesced');

    // It reads again: it gets the latest state, and converges.
    stalled.removeAllListeners('data');
    stalled.on('data', (m: Msg) => {
      ports(m, stalledPorts);
      stalledResponses++;
    });
    stalled.resume();
    const deadline = Date.now() + 15_000;
    while (![...stalledPorts.values()].every((p) => p === 1000 + ROUNDS)) {
      if (Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    t.ok([...stalledPorts.values()].every((p) => p === 1000 + ROUNDS), `the resumed client converged to the latest state (port ${1000 + ROUNDS})`);
    const after = stats().find((x) => x.id === stalledId)!;
    t.ok(after.responses - s.responses <= 2, `... in ${after.responses - s.responses} more response(s), not one per update missed`);
    t.equal(after.owed, 0, 'nothing owed any more');
  });
}
