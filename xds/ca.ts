// The certificate-signing API between node agents and the control plane's CA: both ends share it, as they share the
// xDS protos. The .proto text is kept here rather than in a .proto file because dist/ (what the image ships) holds
// only compiled JavaScript.
//
// istio.v1.auth.IstioCertificateService has the message shapes of Istio's public security/proto/pb/ca.proto (field
// numbers kept, so an Istio-speaking client can call it). sockmesh.ca.v1.TrustBundleService is sockmesh's own: the
// roots an agent trusts, fetched on their own so that a rotation's new root reaches agents before anything is issued
// under it.
//
// Authentication: the caller sends its node credential as gRPC metadata `authorization: Bearer <token>` (a bootstrap
// token per node in the lab; the projected service-account token with Kubernetes), as Istio's agents do.
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { CONVERSION } from './protos.js';

export const CA_PROTO = `
syntax = "proto3";
package istio.v1.auth;
import "google/protobuf/struct.proto";

message IstioCertificateRequest {
  // PEM certificate request; its only subjectAltName is the identity's spiffe URI
  string csr = 1;
  // requested lifetime in seconds; 0 = the CA's default, capped at its maximum
  int64 validity_duration = 3;
  // not used by sockmesh
  google.protobuf.Struct metadata = 4;
}

message IstioCertificateResponse {
  // PEM certificates: the leaf first, the root last
  repeated string cert_chain = 1;
}

service IstioCertificateService {
  rpc CreateCertificate(IstioCertificateRequest) returns (IstioCertificateResponse) {}
}
`;

export const TRUST_BUNDLE_PROTO = `
syntax = "proto3";
package sockmesh.ca.v1;

message TrustBundleRequest {}

message TrustBundleResponse {
  // PEM roots: during a rotation the old and the new
  repeated string roots = 1;
}

service TrustBundleService {
  rpc GetTrustBundle(TrustBundleRequest) returns (TrustBundleResponse) {}
}
`;

export const CERTIFICATE_METHOD = '/istio.v1.auth.IstioCertificateService/CreateCertificate';
export const TRUST_BUNDLE_METHOD = '/sockmesh.ca.v1.TrustBundleService/GetTrustBundle';

export interface CertificateRequest { csr: string; validity_duration?: string | number; metadata?: unknown }
export interface CertificateResponse { cert_chain: string[] }
export interface TrustBundleResponse { roots: string[] }

let cache: { certificate: grpc.ServiceDefinition; bundle: grpc.ServiceDefinition } | undefined;

/** The two service definitions (for grpc.Server#addService and for clients). */
export function caServices(): { certificate: grpc.ServiceDefinition; bundle: grpc.ServiceDefinition } {
  if (cache) return cache;
  const root = new protobuf.Root();
  // google/protobuf/struct.proto is one of protobufjs's built-in common files
  root.addJSON(protobuf.common.get('google/protobuf/struct.proto')!.nested!);
  protobuf.parse(CA_PROTO, root, { keepCase: true });
  protobuf.parse(TRUST_BUNDLE_PROTO, root, { keepCase: true });
  const def = protoLoader.fromJSON(root.toJSON(), CONVERSION);
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    istio: { v1: { auth: { IstioCertificateService: grpc.ServiceClientConstructor } } };
    sockmesh: { ca: { v1: { TrustBundleService: grpc.ServiceClientConstructor } } };
  };
  cache = { certificate: pkg.istio.v1.auth.IstioCertificateService.service, bundle: pkg.sockmesh.ca.v1.TrustBundleService.service };
  return cache;
}

export interface CaClientOptions {
  /** host:port of the control plane */
  address: string;
  /** the node credential, read at each call (a rotated token file applies to the next call) */
  token: () => string;
  /** TLS to the control plane (plaintext without it: the token then travels in the clear; lab only) */
  tls?: { caFile: string; serverName?: string };
  /** per-call deadline, ms (default 10 s) */
  timeoutMs?: number;
}

/** A refused or failed call, with the gRPC status the CA answered (or UNAVAILABLE etc. from the channel). */
export class CaCallError extends Error {
  override readonly name = 'CaCallError';
  constructor(readonly code: grpc.status, readonly details: string, method: string) {
    super(`${method}: ${grpc.status[code] ?? code}: ${details}`);
  }
}

/** The agent's side of the API. */
export class CaClient {
  private readonly cert: grpc.Client;
  private readonly bundleClient: grpc.Client;
  private readonly timeoutMs: number;

  constructor(private readonly opts: CaClientOptions) {
    const creds = opts.tls ? grpc.credentials.createSsl(readFileSync(opts.tls.caFile)) : grpc.credentials.createInsecure();
    const options: grpc.ChannelOptions = opts.tls?.serverName ? { 'grpc.ssl_target_name_override': opts.tls.serverName } : {};
    const { certificate, bundle } = caServices();
    const Cert = grpc.makeGenericClientConstructor(certificate, 'IstioCertificateService');
    const Bundle = grpc.makeGenericClientConstructor(bundle, 'TrustBundleService');
    this.cert = new Cert(opts.address, creds, options);
    // one channel for both services
    this.bundleClient = new Bundle(opts.address, creds, { ...options, channelOverride: this.cert.getChannel() });
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  private call<Req, Res>(client: grpc.Client, method: string, name: string, req: Req): Promise<Res> {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${this.opts.token()}`);
    return new Promise((resolve, reject) => {
      const fn = (client as unknown as Record<string, (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: grpc.requestCallback<Res>) => void>)[name]!;
      fn.call(client, req, md, { deadline: Date.now() + this.timeoutMs }, (err, res) => {
        if (err) reject(new CaCallError(err.code ?? grpc.status.UNKNOWN, err.details ?? err.message, method));
        else resolve(res!);
      });
    });
  }

  /** Sign `csr`; returns the chain, leaf first and root last. */
  async createCertificate(csr: string, validitySeconds = 0): Promise<string[]> {
    const res = await this.call<CertificateRequest, CertificateResponse>(this.cert, CERTIFICATE_METHOD, 'CreateCertificate', { csr, validity_duration: String(validitySeconds) });
    return res.cert_chain ?? [];
  }

  async trustBundle(): Promise<string[]> {
    const res = await this.call<object, TrustBundleResponse>(this.bundleClient, TRUST_BUNDLE_METHOD, 'GetTrustBundle', {});
    return res.roots ?? [];
  }

  close(): void {
    this.cert.close();
  }
}
