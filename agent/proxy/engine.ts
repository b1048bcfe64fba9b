// What the HTTP/1.1 and HTTP/2 halves of the protocol engine share: their context, the answers the
// proxy makes itself when an exchange fails, and header rewrites.
import { STATUS_CODES } from 'node:http';
import type { HeaderRewrite } from '../model/l7.js';
import type { Logger } from '../observe/log.js';
import type { H1Pool } from './h1pool.js';
import type { H2Pool } from './h2pool.js';
import type { Conn } from './conn.js';
import type { Headers, LocalReply, OriginalDst, Outcome, Policy, Source, Upstream } from './types.js';

export interface EngineContext {
  policy: Policy;
  log: Logger;
  pool: H1Pool;
  h2pool: H2Pool;
  maxHeaderBytes: number;
  /** an HTTP/1.1 client connection with no exchange under way is closed after this long */
  clientIdleTimeoutMs: number;
  /** a request head must be whole this long after its first bytes arrived (a slow drip is not activity) */
  headTimeoutMs: number;
  /** an HTTP/2 peer (client or backend) that does not acknowledge our SETTINGS this long gets GOAWAY SETTINGS_TIMEOUT (0: never) */
  h2SettingsTimeoutMs: number;
  stats: EngineStats;
  /**
   * A planned restart: a new agent accepts on our listeners now. HTTP/1.1 responses say `connection: close` and the
   * connections close after them; HTTP/2 sessions got GOAWAY (ProxyServer.drain).
   */
  draining?: boolean;
  /** a new upstream transport connection to up (emits 'connect', or 'error' then 'close') */
  connect: (up: Upstream) => Conn;
}

export interface EngineStats {
  connectionsH1: number;
  connectionsH2: number;
  requests: number;
  badRequests: number;
  upgrades: number;
}

/** Per accepted connection: where it was going (null: not redirected by the kernel) and who it is. */
export interface ConnInfo {
  dst: OriginalDst | null;
  address: string;
  port: number;
  /** made once per connection, on its first request */
  source?: Source;
  /** h2: streams open on the connection (an idle session is one without any) */
  streams?: number;
}

export function statusText(status: number): string {
  return STATUS_CODES[status] ?? 'Unknown';
}

const NO_HEADERS: Headers = Object.freeze({}) as Headers;

/** The answer when the policy gives up after a failed attempt (nothing was sent to the client yet). */
export function failureReply(o: Outcome): LocalReply {
  switch (o.kind) {
    case 'connect-failure':
      return { status: 503, headers: { 'x-sockmesh-error': 'connect-failure' }, body: 'upstream connect error\n' };
    case 'reset':
      return { status: 502, headers: { 'x-sockmesh-error': 'reset' }, body: 'upstream reset before response\n' };
    case 'timeout':
      return { status: 504, headers: { 'x-sockmesh-error': 'timeout' }, body: 'upstream request timeout\n' };
    case 'overflow':
      return { status: 503, headers: { 'x-sockmesh-overflow': o.limit }, body: `overflow: ${o.limit}\n` };
    case 'cancelled':
    case 'response':
      return { status: 502, headers: NO_HEADERS, body: 'bad gateway\n' };
  }
}

export const ROUTE_TIMEOUT_REPLY: LocalReply = Object.freeze({
  status: 504, headers: Object.freeze({ 'x-sockmesh-error': 'route-timeout' }) as Headers, body: 'upstream request timeout\n',
});

/** true when a rewrite changes nothing (the common case: skip the work) */
export function emptyRewrite(rw: HeaderRewrite): boolean {
  if (rw.remove.length > 0) return false;
  for (const _ in rw.set) return false;
  return true;
}

/** Apply a request-header rewrite in place (names are lower-case on both sides). */
export function rewriteHeaders(h: Headers, rw: HeaderRewrite): void {
  for (const name of rw.remove) delete h[name];
  for (const name in rw.set) h[name] = rw.set[name]!;
}

/** HTTP status -> gRPC status for answers made without the upstream (as Envoy maps them). */
export function grpcStatusForHttp(status: number): number {
  switch (status) {
    case 400: return 13; // INTERNAL
    case 401: return 16; // UNAUTHENTICATED
    case 403: return 7; // PERMISSION_DENIED
    case 404: return 12; // UNIMPLEMENTED
    case 429: case 502: case 503: return 14; // UNAVAILABLE
    case 504: return 4; // DEADLINE_EXCEEDED
    default: return 2; // UNKNOWN
  }
}
