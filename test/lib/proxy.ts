// Test helpers for the proxy's protocol engine: a scripted Policy (routes by a function, retries as the
// test says, and a record of every begin/attempt/finish/end so tests can check the contract: finish
// exactly once per attempt, end exactly once per exchange), a group with breaker counters, and clients
// that speak raw bytes (for malformed and pipelined requests).
import { connect, type AddressInfo, type Socket } from 'node:net';
import { connect as h2connect, createServer as h2server, type ClientHttp2Session, type Http2Server, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import pino from 'pino';
import { ProxyServer } from '../../agent/proxy/server.js';
import type {
  Attempt, Exchange, LocalReply, OriginalDst, Outcome, Policy, RequestHead, Source, Upstream, UpstreamGroup,
} from '../../agent/proxy/types.js';
import type { HeaderRewrite, UpstreamProtocol } from '../../agent/model/l7.js';

export const quietLog = pino({ level: process.env.SOCKMESH_TEST_LOG ?? 'silent' });

export class TestGroup implements UpstreamGroup {
  connections = 0;
  pending = 0;
  opened = 0;
  overflows = 0;
  constructor(readonly maxConnections = 1024, readonly maxPending = 1024) {}
  tryOpenConnection(): boolean {
    if (this.connections >= this.maxConnections) return false;
    this.connections++;
    this.opened++;
    return true;
  }
  connectionClosed(): void {
    this.connections--;
    if (this.connections < 0) throw new Error('connectionClosed() more often than tryOpenConnection()');
  }
  tryPending(): boolean {
    if (this.pending >= this.maxPending) { this.overflows++; return false; }
    this.pending++;
    return true;
  }
  pendingDone(): void {
    this.pending--;
    if (this.pending < 0) throw new Error('pendingDone() more often than tryPending()');
  }
}

export function upstream(port: number, group: UpstreamGroup, address = '127.0.0.1'): Upstream {
  const family = address.includes(':') ? 6 : 4;
  return { key: family === 6 ? `[${address}]:${port}` : `${address}:${port}`, address, family, port, group };
}

export interface TestRoute {
  /** attempt n uses upstreams[(n - 1) % length] */
  upstreams: Upstream[];
  timeoutMs?: number;
  perTryTimeoutMs?: number;
  bufferLimitBytes?: number;
  /** retries after the first try */
  retries?: number;
  /** which outcomes are retried (default: none) */
  retryOn?: (o: Outcome) => boolean;
  backoffMs?: number;
  requestHeaders?: HeaderRewrite;
  responseHeaders?: HeaderRewrite;
  /** default 'downstream' */
  upstreamProtocol?: UpstreamProtocol;
}

export interface ExchangeRecord {
  head: RequestHead;
  source: Source;
  dst: OriginalDst;
  attempts: { n: number; upstream: string; outcomes: Outcome[] }[];
  retryAsks: { n: number; outcome: Outcome; replayable: boolean }[];
  ends: { status: number; grpcStatus?: number }[];
}

const NO_REWRITE: HeaderRewrite = { set: {}, remove: [] };

/** A Policy whose answers come from the test: route(head) returns a TestRoute or a LocalReply. */
export class TestPolicy implements Policy {
  readonly exchanges: ExchangeRecord[] = [];
  constructor(public route: (head: RequestHead) => TestRoute | LocalReply) {}

  begin(dst: OriginalDst, source: Source, head: RequestHead): Exchange | LocalReply {
    const r = this.route(head);
    if ('status' in r) return r;
    const rec: ExchangeRecord = { head, source, dst, attempts: [], retryAsks: [], ends: [] };
    this.exchanges.push(rec);
    return {
      route: {
        name: 'test',
        timeoutMs: r.timeoutMs ?? 0,
        perTryTimeoutMs: r.perTryTimeoutMs ?? 0,
        requestHeaders: r.requestHeaders ?? NO_REWRITE,
        responseHeaders: r.responseHeaders ?? NO_REWRITE,
        upstreamProtocol: r.upstreamProtocol ?? 'downstream',
      },
      bufferLimitBytes: r.bufferLimitBytes ?? 64 * 1024,
      attempt(n: number): Attempt {
        const up = r.upstreams[(n - 1) % r.upstreams.length]!;
        const a = { n, upstream: up.key, outcomes: [] as Outcome[] };
        rec.attempts.push(a);
        return { upstream: up, finish: (o: Outcome) => { a.outcomes.push(o); } };
      },
      retryDelay(n: number, outcome: Outcome, replayable: boolean): number | null {
        rec.retryAsks.push({ n, outcome, replayable });
        if (n > (r.retries ?? 0) || !(r.retryOn?.(outcome) ?? false)) return null;
        if (head.hasBody && !replayable) return null;
        return r.backoffMs ?? 0;
      },
      end(status: number, grpcStatus?: number): void {
        rec.ends.push(grpcStatus === undefined ? { status } : { status, grpcStatus });
      },
    };
  }

  /** every attempt finished exactly once, every exchange ended exactly once; '' when fine */
  contractViolations(): string {
    const bad: string[] = [];
    this.exchanges.forEach((x, i) => {
      if (x.ends.length !== 1) bad.push(`exchange ${i} ${x.head.method} ${x.head.path}: end() called ${x.ends.length} times`);
      for (const a of x.attempts) if (a.outcomes.length !== 1) bad.push(`exchange ${i} attempt ${a.n}: finish() called ${a.outcomes.length} times`);
    });
    return bad.join('; ');
  }
}

export const TEST_DST: OriginalDst = { vip: '127.100.0.1', port: 80, cgroupId: 42n };

export interface RunningProxy { proxy: ProxyServer; port: number; close(): Promise<void> }

export async function startProxy(policy: Policy, opts: { maxHeaderBytes?: number; originalDst?: (a: string, p: number) => OriginalDst | null; host?: string; headTimeoutMs?: number; clientIdleTimeoutMs?: number; h2SettingsTimeoutMs?: number } = {}): Promise<RunningProxy> {
  const proxy = new ProxyServer({
    policy,
    headTimeoutMs: opts.headTimeoutMs,
    clientIdleTimeoutMs: opts.clientIdleTimeoutMs,
    h2SettingsTimeoutMs: opts.h2SettingsTimeoutMs,
    originalDst: opts.originalDst ?? (() => TEST_DST),
    maxHeaderBytes: opts.maxHeaderBytes,
    log: quietLog,
  });
  await proxy.listen(0, [opts.host ?? '127.0.0.1']);
  return { proxy, port: proxy.ports()[0]!, close: () => proxy.close() };
}

/** Write raw bytes, collect everything until the server closes (or timeoutMs). */
export function rawExchange(port: number, data: string | Buffer, timeoutMs = 3000, host = '127.0.0.1'): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = connect({ port, host });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: false }); }, timeoutMs);
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(timer); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: true }); });
    s.write(data);
  });
}

export interface RawResponse { status: number; headers: Record<string, string>; body: Buffer }

/**
 * A minimal response reader for tests, independent of the proxy's parser: content-length and chunked
 * bodies; reads `count` responses from a socket in order.
 */
export function readResponses(s: Socket, count: number, timeoutMs = 5000, headRequests = 0): Promise<RawResponse[]> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const out: RawResponse[] = [];
    const timer = setTimeout(() => { cleanup(); reject(new Error(`timeout: ${out.length}/${count} responses; buffered ${JSON.stringify(buf.toString('latin1').slice(0, 300))}`)); }, timeoutMs);
    const cleanup = (): void => { clearTimeout(timer); s.off('data', onData); s.off('close', onClose); };
    const onClose = (): void => { cleanup(); reject(new Error(`closed after ${out.length}/${count} responses`)); };
    const tryParse = (): boolean => {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return false;
      const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
      const status = Number(lines[0]!.split(' ')[1]);
      const headers: Record<string, string> = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        const k = l.slice(0, i).toLowerCase();
        headers[k] = headers[k] === undefined ? l.slice(i + 1).trim() : `${headers[k]}, ${l.slice(i + 1).trim()}`;
      }
      let pos = end + 4;
      if (status < 200) { buf = buf.subarray(pos); return true; } // interim
      let body: Buffer;
      const isHead = out.length < headRequests;
      if (isHead || status === 204 || status === 304) body = Buffer.alloc(0);
      else if (headers['transfer-encoding'] === 'chunked') {
        const parts: Buffer[] = [];
        for (;;) {
          const eol = buf.indexOf('\r\n', pos);
          if (eol < 0) return false;
          const size = parseInt(buf.subarray(pos, eol).toString('latin1'), 16);
          if (size === 0) {
            const tend = buf.indexOf('\r\n\r\n', eol);
            if (tend < 0) return false;
            pos = tend + 4;
            break;
          }
          if (buf.length < eol + 2 + size + 2) return false;
          parts.push(buf.subarray(eol + 2, eol + 2 + size));
          pos = eol + 2 + size + 2;
        }
        body = Buffer.concat(parts);
      } else {
        const n = Number(headers['content-length'] ?? 0);
        if (buf.length < pos + n) return false;
        body = Buffer.from(buf.subarray(pos, pos + n));
        pos += n;
      }
      out.push({ status, headers, body });
      buf = buf.subarray(pos);
      return true;
    };
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      while (out.length < count && tryParse()) { /* next */ }
      if (out.length >= count) { cleanup(); resolve(out); }
    };
    s.on('data', onData);
    s.on('close', onClose);
  });
}

export function connectTo(port: number, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host }, () => resolve(s));
    s.on('error', reject);
  });
}

/** an HTTP/2 backend (node:http2) counting its sessions and streams; close() drops its connections too */
export interface H2Backend { port: number; server: Http2Server; sessions: number; streams: number; close(): Promise<void> }

export async function h2Backend(onStream: (s: ServerHttp2Stream, h: IncomingHttpHeaders) => void): Promise<H2Backend> {
  const sockets = new Set<Socket>();
  const b: H2Backend = {
    port: 0, sessions: 0, streams: 0,
    server: h2server(),
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); b.server.close(() => r()); }),
  };
  b.server.on('session', () => { b.sessions++; });
  b.server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  b.server.on('stream', (s, h) => { b.streams++; s.on('error', () => {}); onStream(s, h); });
  await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  return b;
}

/** one request on a node:http2 client session: the response head, body, trailers and reset code */
export interface H2Got { headers: IncomingHttpHeaders; body: Buffer; trailers: IncomingHttpHeaders | null; rstCode?: number }

export function h2request(session: ClientHttp2Session, headers: Record<string, string>, body?: Buffer | Buffer[]): Promise<H2Got> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': body ? 'POST' : 'GET', ...headers }, { endStream: body === undefined });
    let resHeaders: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders | null = null;
    const parts: Buffer[] = [];
    req.on('response', (h) => { resHeaders = h; });
    req.on('trailers', (tr) => { trailers = tr; });
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('error', (e) => reject(e));
    req.on('close', () => resolve({ headers: resHeaders, body: Buffer.concat(parts), trailers, rstCode: req.rstCode }));
    if (Array.isArray(body)) { for (const p of body) req.write(p); req.end(); }
    else if (body) req.end(body);
  });
}

/** a node:http2 client session to a local port, errors swallowed, destroyed at the test's end */
export function h2Client(t: { teardown(fn: () => void): void }, port: number): ClientHttp2Session {
  const c = h2connect(`http://127.0.0.1:${port}`);
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  return c;
}
