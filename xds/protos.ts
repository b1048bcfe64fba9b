// Envoy's xDS v3 protocol definitions, as shipped by @grpc/grpc-js-xds (the gRPC team's own xDS client bundles the
// envoy, xds, googleapis and validate .proto trees): nothing is copied into this repository.
//
// Two views of the same files:
//  - @grpc/proto-loader gives the AggregatedDiscoveryService definition that @grpc/grpc-js serves and calls;
//  - protobufjs (proto-loader's own engine) gives the message types, to pack and unpack the google.protobuf.Any
//    resources inside DiscoveryRequest/Response.
// Both use the same conversion options, so a resource looks the same whichever side decoded it.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { MESH_PROTO } from './meshproto.js';

const require = createRequire(import.meta.url);
const DEPS = join(dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');
export const INCLUDE_DIRS = ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => join(DEPS, d));

const PROTO_FILES = [
  'envoy/service/discovery/v3/ads.proto',
  'envoy/service/discovery/v3/discovery.proto',
  'envoy/config/listener/v3/listener.proto',
  'envoy/config/route/v3/route.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'envoy/config/endpoint/v3/endpoint.proto',
  'envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto',
  'envoy/extensions/filters/udp/udp_proxy/v3/udp_proxy.proto',
  'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
  'envoy/extensions/filters/http/router/v3/router.proto',
  'envoy/extensions/filters/network/rbac/v3/rbac.proto',
  'envoy/extensions/filters/http/rbac/v3/rbac.proto',
  'envoy/extensions/load_balancing_policies/random/v3/random.proto',
  'envoy/extensions/load_balancing_policies/round_robin/v3/round_robin.proto',
  'envoy/extensions/load_balancing_policies/least_request/v3/least_request.proto',
  'envoy/extensions/load_balancing_policies/maglev/v3/maglev.proto',
  'envoy/extensions/load_balancing_policies/ring_hash/v3/ring_hash.proto',
  'envoy/extensions/upstreams/http/v3/http_protocol_options.proto',
];

/** Plain-object conversion shared by both views: field names as in the .proto, 64-bit ints and enums as strings. */
export const CONVERSION = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: true } as const;

let rootCache: protobuf.Root | undefined;
let adsCache: grpc.ServiceDefinition | undefined;

function findInclude(target: string): string {
  for (const dir of INCLUDE_DIRS) {
    const p = join(dir, target);
    if (existsSync(p)) return p;
  }
  return target; // google/protobuf/*: protobufjs has them built in
}

/** The protobufjs root with every message type above (loaded once, about 0.5 s). */
/** Enum numbers by name (protobufjs encodes enums as numbers), looked up in the loaded protos on first use. */
export function lazyEnums<K extends string>(spec: Record<K, [enumName: string, value: string]>): () => Record<K, number> {
  let cache: Record<K, number> | undefined;
  return () => {
    if (cache) return cache;
    const root = protoRoot();
    const out = {} as Record<K, number>;
    for (const k of Object.keys(spec) as K[]) {
      const [enumName, value] = spec[k];
      const n = root.lookupEnum(enumName).values[value];
      if (n === undefined) throw new Error(`${enumName} has no value ${value}`);
      out[k] = n;
    }
    return (cache = out);
  };
}

export function protoRoot(): protobuf.Root {
  if (rootCache) return rootCache;
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => findInclude(target);
  root.loadSync(PROTO_FILES, { keepCase: true });
  protobuf.parse(MESH_PROTO, root, { keepCase: true }); // sockmesh's own resource types (meshproto.ts)
  root.resolveAll();
  rootCache = root;
  return root;
}

/** The AggregatedDiscoveryService definition for @grpc/grpc-js (client constructor or server addService). */
export function adsService(): grpc.ServiceDefinition {
  if (adsCache) return adsCache;
  const def = protoLoader.loadSync(PROTO_FILES.slice(0, 2), { ...CONVERSION, includeDirs: INCLUDE_DIRS });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    envoy: { service: { discovery: { v3: { AggregatedDiscoveryService: grpc.ServiceClientConstructor } } } };
  };
  adsCache = pkg.envoy.service.discovery.v3.AggregatedDiscoveryService.service;
  return adsCache;
}

/**
 * The ADS client constructor. With maxResources, every response is checked on the wire before it is decoded: a few
 * MiB of empty resource entries decode into gigabytes of objects, so the count must be refused before proto-loader
 * builds them (the stream then fails and the client backs off; the last good state stays).
 */
export function adsClientConstructor(maxResources?: number): grpc.ServiceClientConstructor {
  const def = adsService();
  if (maxResources === undefined) return grpc.makeGenericClientConstructor(def, 'AggregatedDiscoveryService');
  const guarded: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(def)) {
    guarded[name] = {
      ...m,
      responseDeserialize: (buf: Buffer) => {
        const n = countRepeated(buf, RESPONSE_LIST_FIELDS);
        if (n > maxResources) throw new Error(`response with ${n} resource entries (limit ${maxResources}): refused before decoding`);
        return m.responseDeserialize(buf);
      },
    };
  }
  return grpc.makeGenericClientConstructor(guarded as grpc.ServiceDefinition, 'AggregatedDiscoveryService');
}

/** DiscoveryResponse.resources (2), DeltaDiscoveryResponse.resources (2) and .removed_resources (6). */
const RESPONSE_LIST_FIELDS = new Set([2, 6]);

/** Count the top-level length-delimited entries of the given field numbers, without decoding anything. */
export function countRepeated(buf: Uint8Array, fields: ReadonlySet<number>): number {
  let i = 0, count = 0;
  const varint = (): number => {
    let v = 0, shift = 0;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint in response');
      const b = buf[i++]!;
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return v;
      shift += 7;
      if (shift > 63) throw new Error('bad varint in response');
    }
  };
  while (i < buf.length) {
    const tag = varint();
    const field = Math.floor(tag / 8), wire = tag & 7;
    if (wire === 0) varint();
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const len = varint();
      i += len;
      if (fields.has(field)) count++;
    } else throw new Error(`unexpected wire type ${wire} in response`);
  }
  return count;
}

/** A google.protobuf.Any as it travels inside a DiscoveryRequest/Response (plain object). */
export interface AnyMessage { type_url: string; value: Buffer | Uint8Array }

const typesByUrl = new Map<string, protobuf.Type>();

/** The message type of a type URL (looked up once). Throws on a type the loaded protos do not have. */
export function typeOf(typeUrl: string): protobuf.Type {
  let type = typesByUrl.get(typeUrl);
  if (type) return type;
  const name = typeUrl.slice(typeUrl.lastIndexOf('/') + 1);
  try {
    type = protoRoot().lookupType(name);
  } catch {
    throw new Error(`unknown type URL ${typeUrl}`);
  }
  typesByUrl.set(typeUrl, type);
  return type;
}

/** Decode an Any into a plain object (same conversion as the ADS messages). Throws naming the type on bad bytes. */
export function unpackAny<T = Record<string, unknown>>(any: AnyMessage): T {
  const type = typeOf(any.type_url);
  try {
    return type.toObject(type.decode(any.value), CONVERSION as protobuf.IConversionOptions) as T;
  } catch (e) {
    throw new Error(`cannot decode ${any.type_url}: ${(e as Error).message}`);
  }
}

/** Encode a plain object (field names as in the .proto) into an Any of the given type. Throws naming the field. */
export function packAny(typeUrl: string, obj: Record<string, unknown>): AnyMessage {
  const type = typeOf(typeUrl);
  // fromObject first: it turns enum names ('TCP', 'EDS') into numbers, which verify() alone would reject.
  let msg: protobuf.Message;
  try {
    msg = type.fromObject(obj);
  } catch (e) {
    throw new Error(`${typeUrl}: ${(e as Error).message}`);
  }
  const err = type.verify(msg);
  if (err) throw new Error(`${typeUrl}: ${err}`);
  return { type_url: typeUrl, value: Buffer.from(type.encode(msg).finish()) };
}

/**
 * Encode a plain object already shaped as protobufjs encodes it (field names as in the .proto, enums as numbers,
 * wrappers as {value}) into an Any, skipping packAny's fromObject/verify passes: the control plane builds such
 * objects itself, and at 100,000 endpoints those passes cost more than the encoding. Its tests decode every type back.
 */
export function encodeAny(typeUrl: string, obj: Record<string, unknown>): AnyMessage {
  // In Node, protobufjs writes into a Buffer already: no copy.
  return { type_url: typeUrl, value: typeOf(typeUrl).encode(obj).finish() as Buffer };
}
