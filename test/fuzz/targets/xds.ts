// xDS responses as the agent's client receives them: protobuf bytes (each message: a 2-byte length, then a
// DeltaDiscoveryResponse or DiscoveryResponse), decoded by the same guarded grpc deserializer the client uses, then
// handed to XdsSource's response handling (check, digest, references, build, apply) - one source for the whole
// sequence, as one stream. Bytes that do not decode are a stream error (grpc's, expected). Crashes: anything thrown
// out of the response handling (the stream's own catch would restart the stream: a bug of ours), and the client's
// safety net NACKing "internal error translating the response" (its catch of our own bugs).
import { readdirSync, readFileSync } from 'node:fs';
import { pino } from 'pino';
import { adsClientConstructor, protoRoot } from '../../../xds/protos.js';
import { XdsSource } from '../../../agent/sources/xds/source.js';
import { InvariantBroken, invariant, messages } from './common.js';

export const dict = [
  'type.googleapis.com/envoy.config.listener.v3.Listener', 'type.googleapis.com/envoy.config.route.v3.RouteConfiguration',
  'type.googleapis.com/envoy.config.cluster.v3.Cluster', 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment',
  'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
  'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router', 'type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC',
  'type.googleapis.com/sockmesh.mesh.v1.Node', 'type.googleapis.com/sockmesh.mesh.v1.Workload',
  'type.googleapis.com/sockmesh.mesh.v1.Mtls', 'type.googleapis.com/sockmesh.mesh.v1.Authorization', 'spiffe://cluster.local/ns/',
  'envoy.filters.network.tcp_proxy', 'envoy.filters.network.http_connection_manager', 'sockmesh', '127.0.0.1', '::1',
  '\x0a\x00', '\x12\x00', '\x1a\x00', '\x22\x00', '\x32\x00', '\x08\x01', '\x10\x01', '\xff\xff\xff\xff\x0f', '\x80\x80\x80\x80\x10',
];

const SIZE_GUARD = 4 * 200_000; // what XdsSource passes: 4x its resource limit
const ctor = adsClientConstructor(SIZE_GUARD) as unknown as { service: Record<string, { responseDeserialize(b: Buffer): unknown }> };
const silent = pino({ level: 'silent' });

type Obj = Record<string, unknown>;

/**
 * Before the first input (the watchdog times each one): load the Envoy protos (about a second), then run the mode's
 * seeds once, untimed. The first decode of each message type has protobufjs generate its decoder, and the first
 * response V8 compiles the client's whole path: the first seed took 120-310 ms after the protos, and over the 1 s
 * watchdog on a loaded machine (a hang that was no bug).
 */
export async function warmUp(mode: 'delta' | 'sotw'): Promise<void> {
  protoRoot();
  const dir = new URL(`../xds-${mode}/`, import.meta.url);
  for (const f of readdirSync(dir).sort()) {
    try { runMode(mode, readFileSync(new URL(f, dir))); } catch { /* a seed that fails is the fuzz loop's finding */ }
  }
}

/** `ended`: told the source as the input ends, before its timer is disarmed (the suite's check that none stays behind) */
export function runMode(mode: 'delta' | 'sotw', data: Buffer, ended?: (source: XdsSource) => void): void {
  const deserialize = ctor.service[mode === 'delta' ? 'DeltaAggregatedResources' : 'StreamAggregatedResources']!.responseDeserialize;
  let internal: string | undefined;
  const log = Object.assign(Object.create(silent) as typeof silent, {
    error: (o: Obj, msg?: string) => { internal ??= `${msg}: ${(o?.['err'] as Error)?.stack ?? JSON.stringify(o)}`; },
    warn: () => {}, info: () => {}, debug: () => {},
  });
  const src = new XdsSource({
    address: 'fuzz', mode, node: { id: 'node-1', cluster: 'c', metadata: {} }, log: log as unknown as typeof silent,
    apply: (model) => { invariant(Array.isArray(model.services), 'applied a model without services'); return null; },
    initialFetchTimeoutMs: 0x7fffffff,
  });
  const internals = src as unknown as { call: unknown; onResponse(msg: Obj): void; stopped: boolean };
  internals.call = { write: () => true, cancel: () => {} };
  internals.stopped = false;
  try {
    for (const [start, end] of messages(data, 0)) {
      let msg: Obj;
      try {
        msg = deserialize(data.subarray(start, end)) as Obj;
      } catch {
        return; // grpc ends the stream on a message it cannot decode
      }
      internals.onResponse(msg);
      if (internal !== undefined) throw new InvariantBroken(`the client's safety net caught a bug of ours\n${internal}`);
    }
  } finally {
    // However the input ends: a source whose initial-fetch timer stays armed stays in memory with its models (the
    // timer was cleared only after the last message, not on an early return: the heap of a 25-minute xds-delta run
    // grew ~5 MB a second and one major GC took over a second, reported as a hang)
    ended?.(src);
    clearTimeout((src as unknown as { initialTimer?: NodeJS.Timeout }).initialTimer);
  }
}
