// Hand-built L7 models and a scripted randomness for the proxy policy tests (the config validation
// that produces these in the agent is tested on its own).
import pino from 'pino';
import { Writable } from 'node:stream';
import type { Backend, Model, Service } from '../../agent/model/types.js';
import type { HttpPolicy, Route, RetryPolicy } from '../../agent/model/l7.js';
import { DEFAULT_CIRCUIT_BREAKER } from '../../agent/model/l7.js';
import type { RequestHead } from '../../agent/proxy/types.js';

/** mulberry32 (the benches' seeded PRNG), so that split and P2C tests are repeatable */
export { prng as seeded } from '../../bench/lib/fleet.js';

export const NO_REWRITE = { set: {}, remove: [] };

export function route(name: string, over: Partial<Route> = {}): Route {
  return { name, match: {}, split: [{ group: 'default', weight: 1 }], timeoutMs: 0, requestHeaders: NO_REWRITE, responseHeaders: NO_REWRITE, ...over };
}

export function retry(over: Partial<RetryPolicy> = {}): RetryPolicy {
  return {
    attempts: 2,
    perTryTimeoutMs: 0,
    retryOn: ['5xx'],
    retriableStatusCodes: [],
    backoffBaseMs: 0,
    backoffMaxMs: 0,
    budgetPercent: 20,
    minRetryConcurrency: 3,
    bufferLimitBytes: 65536,
    retryNonIdempotent: false,
    ...over,
  };
}

export function http(over: Partial<HttpPolicy> = {}): HttpPolicy {
  return { failMode: 'closed', balancer: 'least-request', routes: [route('all')], circuitBreaker: { ...DEFAULT_CIRCUIT_BREAKER }, accessLogSample: 0, ...over };
}

export function backend(port: number, group?: string, address = '127.0.0.1'): Backend {
  return { address, family: address.includes(':') ? 6 : 4, port, weight: 1, group };
}

export function service(name: string, vip: string, port: number, backends: Backend[], h?: HttpPolicy): Service {
  return {
    name,
    algorithm: 'random',
    affinityTimeoutSeconds: 0,
    maglevTableSize: 251,
    frontends: [{ vip, family: vip.includes(':') ? 6 : 4, port, protocol: 'tcp', backends }],
    http: h,
  };
}

export function model(...services: Service[]): Model {
  return { services };
}

export function head(method = 'GET', path = '/', headers: Record<string, string | string[]> = {}, over: Partial<RequestHead> = {}): RequestHead {
  return { method, path, authority: 'svc', headers, protocol: 'http1', grpc: false, hasBody: false, ...over };
}

/** a pino logger whose lines are collected as parsed objects */
export function captureLog(level = 'debug'): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level }, stream), lines };
}
