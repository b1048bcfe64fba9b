// One active health probe: TCP connect, HTTP/1.1 GET, or gRPC grpc.health.v1.Health/Check. Each opens its own
// connection straight to the backend address (never a VIP: the agent runs outside the meshed cgroup, so nothing
// rewrites it), gives an answer within the timeout, and leaves nothing open behind it.
//
// The result carries a short reason a person can act on: 'connect ECONNREFUSED', 'http 503', 'grpc NOT_SERVING',
// 'timeout 1000 ms'.
import { connect as tcpConnect, type Socket } from 'node:net';
import { request as httpRequest, type ClientRequest } from 'node:http';
import { connect as h2Connect, constants as h2c, type ClientHttp2Session } from 'node:http2';
import type { HealthCheck } from '../model/l7.js';

export interface ProbeTarget {
  address: string;
  port: number;
  family: 4 | 6;
}

export interface ProbeResult {
  healthy: boolean;
  /** why it failed ('' when healthy) */
  reason: string;
}

const OK: ProbeResult = { healthy: true, reason: '' };
const fail = (reason: string): ProbeResult => ({ healthy: false, reason });

/** An error as a probe reason: the errno code when there is one ('connect ECONNREFUSED'), else the message. */
function errorReason(what: string, e: unknown): string {
  let err = e as NodeJS.ErrnoException;
  // An h2 stream cancelled because its session failed carries the session's error (ECONNREFUSED...) as its cause.
  if (err.code === 'ERR_HTTP2_STREAM_CANCEL' && err.cause) err = err.cause as NodeJS.ErrnoException;
  return `${what} ${err.code ?? err.message ?? String(e)}`;
}

/** Statuses an HTTP check accepts when the config names none (model/l7.ts: 200-399, redirects count as alive). */
export const DEFAULT_HTTP_STATUSES: [number, number][] = [[200, 399]];

const hostHeader = (t: ProbeTarget): string => (t.family === 6 ? `[${t.address}]:${t.port}` : `${t.address}:${t.port}`);

/**
 * Run one probe. Never rejects: a failure of any kind is an unhealthy result with its reason. `signal` aborts a probe
 * in flight (the backend left the model) without a verdict.
 */
export function probe(t: ProbeTarget, check: HealthCheck, signal?: AbortSignal): Promise<ProbeResult> {
  switch (check.kind) {
    case 'tcp': return probeTcp(t, check.timeoutMs, signal);
    case 'http': return probeHttp(t, check, signal);
    case 'grpc': return probeGrpc(t, check, signal);
  }
}

/**
 * Settles once: the first of result, timeout or abort wins, and `cleanup` closes whatever the probe opened. The
 * timer is unref'd: a probe in flight never keeps a process alive that wants to exit.
 */
function once(timeoutMs: number, signal: AbortSignal | undefined, start: (settle: (r: ProbeResult) => void) => () => void): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let done = false;
    let cleanup: () => void = () => {};
    const settle = (r: ProbeResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      try { cleanup(); } catch { /* closing a half-open socket may throw; the result stands */ }
      resolve(r);
    };
    const onAbort = (): void => settle(fail('aborted'));
    const timer = setTimeout(() => settle(fail(`timeout ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    if (signal?.aborted) return settle(fail('aborted'));
    signal?.addEventListener('abort', onAbort);
    cleanup = start(settle);
    if (done) { try { cleanup(); } catch { /* as above */ } }
  });
}

function probeTcp(t: ProbeTarget, timeoutMs: number, signal?: AbortSignal): Promise<ProbeResult> {
  return once(timeoutMs, signal, (settle) => {
    const sock: Socket = tcpConnect({ host: t.address, port: t.port, family: t.family });
    sock.once('connect', () => settle(OK));
    sock.on('error', (e) => settle(fail(errorReason('connect', e))));
    return () => sock.destroy();
  });
}

function probeHttp(t: ProbeTarget, check: HealthCheck, signal?: AbortSignal): Promise<ProbeResult> {
  const expected = check.expectedStatuses?.length ? check.expectedStatuses : DEFAULT_HTTP_STATUSES;
  return once(check.timeoutMs, signal, (settle) => {
    let connected = false;
    const req: ClientRequest = httpRequest({
      host: t.address, port: t.port, family: t.family, method: 'GET', path: check.path ?? '/',
      // A connection of its own, closed after the answer: a probe must not ride on (or keep) a pooled connection.
      agent: false,
      headers: { host: hostHeader(t), connection: 'close', 'user-agent': 'sockmesh-health-check', accept: '*/*' },
    }, (res) => {
      const status = res.statusCode ?? 0;
      // The verdict is the status line; the body is not needed (the socket is destroyed by cleanup).
      settle(expected.some(([lo, hi]) => status >= lo && status <= hi) ? OK : fail(`http ${status}`));
    });
    req.once('socket', (s) => s.once('connect', () => { connected = true; }));
    req.on('error', (e) => settle(fail(errorReason(connected ? 'http' : 'connect', e))));
    req.end();
    return () => req.destroy();
  });
}

// ---- gRPC health (grpc.health.v1) without a .proto: both messages have one field ----

/** HealthCheckResponse.ServingStatus names, by number. */
const SERVING_STATUS = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];
/** grpc-status codes worth a name in a reason (the rest print as numbers). */
const GRPC_CODES: Record<number, string> = {
  1: 'CANCELLED', 2: 'UNKNOWN', 4: 'DEADLINE_EXCEEDED', 5: 'NOT_FOUND', 7: 'PERMISSION_DENIED', 8: 'RESOURCE_EXHAUSTED',
  12: 'UNIMPLEMENTED', 13: 'INTERNAL', 14: 'UNAVAILABLE', 16: 'UNAUTHENTICATED',
};

/** HealthCheckRequest { string service = 1; } in a gRPC length-prefixed frame. */
export function encodeHealthRequest(service: string): Buffer {
  const name = Buffer.from(service, 'utf8');
  const len: number[] = [];
  for (let n = name.length; ; n >>>= 7) {
    if (n < 0x80) { len.push(n); break; }
    len.push((n & 0x7f) | 0x80);
  }
  // An empty string is the field's default: proto3 leaves it out, so the message is empty.
  const msg = name.length ? Buffer.concat([Buffer.from([0x0a, ...len]), name]) : Buffer.alloc(0);
  const frame = Buffer.alloc(5 + msg.length);
  frame.writeUInt8(0, 0); // not compressed
  frame.writeUInt32BE(msg.length, 1);
  msg.copy(frame, 5);
  return frame;
}

/**
 * HealthCheckResponse { ServingStatus status = 1; } from the gRPC frame(s): the status number (0 when absent), or
 * null when the bytes are not one well-formed message.
 */
export function decodeHealthResponse(body: Buffer): number | null {
  if (body.length < 5 || body[0] !== 0) return null; // compressed answers are not asked for
  const len = body.readUInt32BE(1);
  if (body.length < 5 + len) return null;
  let status = 0;
  let i = 5;
  const end = 5 + len;
  const varint = (): number | null => {
    let v = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (i >= end) return null;
      const b = body[i++]!;
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return v;
    }
    return null;
  };
  while (i < end) {
    const tag = varint();
    if (tag === null) return null;
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      const v = varint();
      if (v === null) return null;
      if (field === 1) status = v;
    } else if (wire === 2) {
      const n = varint();
      if (n === null || i + n > end) return null;
      i += n; // unknown length-delimited field: skipped
    } else if (wire === 5) i += 4;
    else if (wire === 1) i += 8;
    else return null;
  }
  return status;
}

/**
 * grpc-message is percent-encoded (gRPC over HTTP/2), but what a backend sends is not ours to trust: a bad escape
 * ('50% down') is shown as it came, control characters as '?'. decodeURIComponent's URIError thrown inside an h2 event handler would be an
 * uncaught exception, the end of the agent.
 */
function percentDecoded(s: string): string {
  let out: string;
  try {
    out = decodeURIComponent(s);
  } catch {
    out = s;
  }
  // The reason goes to logs and to meshctl's table on an operator's terminal: no escape sequences, no line breaks.
  return out.replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
}

function probeGrpc(t: ProbeTarget, check: HealthCheck, signal?: AbortSignal): Promise<ProbeResult> {
  return once(check.timeoutMs, signal, (settle) => {
    const authority = `http://${hostHeader(t)}`;
    const session: ClientHttp2Session = h2Connect(authority);
    let connected = false;
    session.once('connect', () => { connected = true; });
    session.on('error', (e) => settle(fail(errorReason(connected ? 'grpc' : 'connect', e))));
    const stream = session.request({
      [h2c.HTTP2_HEADER_METHOD]: 'POST',
      [h2c.HTTP2_HEADER_PATH]: '/grpc.health.v1.Health/Check',
      [h2c.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
      te: 'trailers',
      'grpc-timeout': `${Math.max(1, check.timeoutMs)}m`,
      'user-agent': 'sockmesh-health-check',
    });
    const chunks: Buffer[] = [];
    let httpStatus = 0;
    let grpcStatus: number | undefined;
    let grpcMessage = '';
    const readStatus = (h: Record<string, unknown>): void => {
      if (h['grpc-status'] !== undefined) grpcStatus = Number(h['grpc-status']);
      if (typeof h['grpc-message'] === 'string') grpcMessage = percentDecoded(h['grpc-message']);
    };
    stream.on('response', (h) => { httpStatus = Number(h[':status']); readStatus(h); });
    stream.on('trailers', (h) => readStatus(h));
    stream.on('data', (d: Buffer) => chunks.push(d));
    stream.on('error', (e) => settle(fail(errorReason(connected ? 'grpc' : 'connect', e))));
    stream.on('end', () => {
      if (httpStatus !== 200) return settle(fail(`grpc http ${httpStatus}`));
      if (grpcStatus === undefined) return settle(fail('grpc no grpc-status'));
      if (grpcStatus !== 0) {
        const name = GRPC_CODES[grpcStatus] ?? String(grpcStatus);
        return settle(fail(`grpc ${name}${grpcMessage ? `: ${grpcMessage.slice(0, 120)}` : ''}`));
      }
      const status = decodeHealthResponse(Buffer.concat(chunks));
      if (status === null) return settle(fail('grpc malformed HealthCheckResponse'));
      settle(status === 1 ? OK : fail(`grpc ${SERVING_STATUS[status] ?? `status ${status}`}`));
    });
    stream.end(encodeHealthRequest(check.grpcService ?? ''));
    return () => { stream.destroy(); session.destroy(); };
  });
}
