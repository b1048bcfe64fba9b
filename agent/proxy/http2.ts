// HTTP/2 cleartext (prior knowledge) both ways, with node:http2 (nghttp2 underneath): one downstream
// session per client connection, upstream sessions pooled per backend and multiplexed up to the peer's
// SETTINGS_MAX_CONCURRENT_STREAMS (another session is opened when they are full, within the group's
// max connections). gRPC needs nothing special beyond passing trailers intact: messages are DATA
// frames streamed both ways, grpc-status/grpc-message travel in trailers (or in a trailers-only
// HEADERS frame with END_STREAM, passed on as such).
import {
  connect as h2connect, constants, createServer, type ClientHttp2Session, type ClientHttp2Stream, type Http2Server,
  type Http2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream,
} from 'node:http2';
import { connect as netConnect } from 'node:net';
import type { Logger } from '../observe/log.js';
import { emptyRewrite, failureReply, grpcStatusForHttp, rewriteHeaders, ROUTE_TIMEOUT_REPLY, type ConnInfo, type EngineContext } from './engine.js';
import type { Attempt, Exchange, Headers, LocalReply, Outcome, RequestHead, Source, Upstream, UpstreamGroup } from './types.js';

const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR, NGHTTP2_FLAG_END_STREAM, NGHTTP2_REFUSED_STREAM } = constants;
/** streams assumed allowed on a new session until the peer's SETTINGS say otherwise */
const DEFAULT_MAX_STREAMS = 100;
const MAX_UNSENT = 256 * 1024;
// request() copies its options; shaped in full once, they skip node's default-filling on every call
const REQ_END = Object.freeze({ endStream: true, weight: 16, parent: 0, exclusive: false, silent: false, waitForTrailers: false });
const REQ_OPEN = Object.freeze({ endStream: false, weight: 16, parent: 0, exclusive: false, silent: false, waitForTrailers: false });

// ---- upstream sessions ----

interface SessionEntry {
  session: ClientHttp2Session;
  up: Upstream;
  active: number;
  connected: boolean;
  /** the peer's SETTINGS arrived */
  settled: boolean;
  closed: boolean;
  idleSince: number;
}

interface H2Waiter { up: Upstream; cb: (e: SessionEntry | null) => void }

export class H2Pool {
  private readonly sessions = new Map<string, SessionEntry[]>();
  private readonly queues = new Map<UpstreamGroup, H2Waiter[]>();
  private readonly sweeper: NodeJS.Timeout;
  private closing = false;

  constructor(private readonly log: Logger, private readonly idleTimeoutMs = 30_000, private readonly connectTimeoutMs = 5_000) {
    this.sweeper = setInterval(() => this.sweep(), Math.min(1000, idleTimeoutMs)).unref();
  }

  /**
   * A session with a free stream slot for up: returned at once, or 'pending' (cb follows with a session,
   * or null when the pool closed), or 'overflow' (max connections and max pending reached).
   */
  acquire(up: Upstream, cb: (e: SessionEntry | null) => void): SessionEntry | 'pending' | 'overflow' {
    const e = this.free(up);
    if (e !== null) return e;
    const opened = this.open(up);
    if (opened !== null) return opened;
    if (!up.group.tryPending()) return 'overflow';
    let q = this.queues.get(up.group);
    if (q === undefined) this.queues.set(up.group, (q = []));
    q.push({ up, cb });
    return 'pending';
  }

  cancel(cb: (e: SessionEntry | null) => void, group: UpstreamGroup): void {
    const q = this.queues.get(group);
    if (q === undefined) return;
    const i = q.findIndex((w) => w.cb === cb);
    if (i >= 0) { q.splice(i, 1); group.pendingDone(); }
  }

  private free(up: Upstream): SessionEntry | null {
    const list = this.sessions.get(up.key);
    if (list === undefined) return null;
    for (let i = list.length - 1; i >= 0; i--) {
      const e = list[i]!;
      if (!e.closed && !e.session.destroyed && e.active < maxStreams(e)) return e;
    }
    return null;
  }

  private open(up: Upstream): SessionEntry | null {
    if (!up.group.tryOpenConnection()) return null;
    const authority = up.family === 6 ? `http://[${up.address}]:${up.port}` : `http://${up.address}:${up.port}`;
    // our own socket: Nagle off (a small HEADERS frame must not wait for an ACK)
    const session = h2connect(authority, {
      peerMaxConcurrentStreams: DEFAULT_MAX_STREAMS,
      createConnection: () => netConnect({ host: up.address, port: up.port, family: up.family, noDelay: true }),
    });
    const e: SessionEntry = { session, up, active: 0, connected: false, settled: false, closed: false, idleSince: performance.now() };
    let list = this.sessions.get(up.key);
    if (list === undefined) this.sessions.set(up.key, (list = []));
    list.push(e);
    const timer = setTimeout(() => { if (!e.connected) session.destroy(new Error('connect timeout')); }, this.connectTimeoutMs);
    session.once('connect', () => { clearTimeout(timer); e.connected = true; });
    session.on('remoteSettings', (st) => {
      e.settled = true;
      if (st.maxConcurrentStreams !== undefined) knownMax.set(up.key, Math.min(st.maxConcurrentStreams, 1 << 20));
      this.serveWaiters(e.up.group);
    });
    session.on('error', (err: Error) => this.log.debug({ upstream: up.key, err: err.message }, 'upstream h2 session error'));
    session.on('goaway', () => this.retire(e));
    session.on('close', () => { clearTimeout(timer); this.retire(e); });
    return e;
  }

  /** a session takes no new streams (goaway, closed); its slot frees when it is closed */
  private retire(e: SessionEntry): void {
    const list = this.sessions.get(e.up.key);
    if (list !== undefined) {
      const i = list.indexOf(e);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.sessions.delete(e.up.key);
    }
    if (!e.closed) {
      e.closed = true;
      if (!e.session.closed && !e.session.destroyed) e.session.close(); // in-flight streams finish
      e.up.group.connectionClosed();
      this.serveWaiters(e.up.group);
    }
  }

  streamStarted(e: SessionEntry): void {
    e.active++;
  }

  streamEnded(e: SessionEntry): void {
    e.active--;
    if (e.active === 0) e.idleSince = performance.now();
    this.serveWaiters(e.up.group);
  }

  private serveWaiters(group: UpstreamGroup): void {
    const q = this.queues.get(group);
    if (q === undefined || this.closing) return;
    while (q.length > 0) {
      const w = q[0]!;
      const e = this.free(w.up) ?? this.open(w.up);
      if (e === null) break;
      q.shift();
      group.pendingDone();
      w.cb(e);
    }
    if (q.length === 0) this.queues.delete(group);
  }

  private sweep(): void {
    const limit = performance.now() - this.idleTimeoutMs;
    for (const list of [...this.sessions.values()]) {
      for (const e of [...list]) if (e.active === 0 && e.idleSince < limit) this.retire(e);
    }
  }

  openCount(): number {
    let n = 0;
    for (const list of this.sessions.values()) n += list.length;
    return n;
  }

  close(): void {
    this.closing = true;
    clearInterval(this.sweeper);
    for (const list of [...this.sessions.values()]) for (const e of [...list]) { this.retire(e); e.session.destroy(); }
    for (const [group, q] of this.queues) for (const w of q) { group.pendingDone(); w.cb(null); }
    this.queues.clear();
  }
}

/** the last SETTINGS_MAX_CONCURRENT_STREAMS each backend sent: a new session assumes it until its own arrive */
const knownMax = new Map<string, number>();

function maxStreams(e: SessionEntry): number {
  if (e.settled) return e.session.remoteSettings.maxConcurrentStreams ?? DEFAULT_MAX_STREAMS;
  return knownMax.get(e.up.key) ?? DEFAULT_MAX_STREAMS;
}

// ---- downstream ----

/** The h2 server the accepted connections are handed to after the preface was sniffed. */
export function createH2Server(ctx: EngineContext, infoOf: (s: Http2Session) => ConnInfo | undefined): Http2Server {
  const server = createServer({
    maxSessionMemory: 64,
    settings: { maxConcurrentStreams: 1000, maxHeaderListSize: ctx.maxHeaderBytes },
    maxHeaderListPairs: 512,
  });
  server.on('session', (session: Http2Session) => {
    ctx.stats.connectionsH2++;
    session.on('error', (e: Error) => ctx.log.debug({ err: e.message }, 'downstream h2 session error'));
  });
  server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number) => {
    const info = infoOf(stream.session!);
    if (info === undefined) { stream.close(NGHTTP2_INTERNAL_ERROR); return; }
    ctx.stats.requests++;
    const x = new H2Exchange(ctx, info, stream, headers, (flags & NGHTTP2_FLAG_END_STREAM) !== 0);
    try { x.start(); } catch (e) { x.fatal(e); }
  });
  server.on('sessionError', (e: Error) => ctx.log.debug({ err: e.message }, 'downstream h2 session error'));
  return server;
}

/** one request stream: the same exchange loop as HTTP/1.1 (see http1.ts), on h2 streams */
class H2Exchange {
  private ex: Exchange | null = null;
  private head: RequestHead | null = null;
  private n = 0;
  private attempt: Attempt | null = null;
  private us: ClientHttp2Stream | null = null;
  private entry: SessionEntry | null = null;
  private waitingGroup: UpstreamGroup | null = null;
  private upHeaders: OutgoingHttpHeaders = {};
  private body: Buffer[] = [];
  private bodyBytes = 0;
  private unsent = 0;
  private bodyDone: boolean;
  private replayable = true;
  private resStarted = false;
  private resStatus = 0;
  private grpcStatus: number | undefined;
  private trailers: IncomingHttpHeaders | null = null;
  private done = false;
  private tryTimer: NodeJS.Timeout | null = null;
  private routeTimer: NodeJS.Timeout | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private staleRedispatch = 0;
  private readonly onSession = (e: SessionEntry | null): void => {
    this.waitingGroup = null;
    try {
      if (e === null) this.attemptFailed({ kind: 'connect-failure' });
      else this.send(e);
    } catch (err) { this.fatal(err); }
  };

  constructor(
    private readonly ctx: EngineContext,
    private readonly info: ConnInfo,
    private readonly ds: ServerHttp2Stream,
    private readonly reqHeaders: IncomingHttpHeaders,
    endStream: boolean,
  ) {
    this.bodyDone = endStream;
  }

  /** a bug below (the policy included) threw: this stream is reset, the process lives on */
  fatal(e: unknown): void {
    this.ctx.log.error({ err: e, peer: `${this.info.address}:${this.info.port}` }, 'proxy h2 stream failed; reset');
    const wasDone = this.done;
    this.done = true;
    this.clearTimers();
    if (this.us !== null) { const us = this.us; this.us = null; if (!us.closed) us.close(NGHTTP2_CANCEL); }
    if (!this.ds.destroyed && !this.ds.closed) this.ds.close(NGHTTP2_INTERNAL_ERROR);
    const ex = this.ex;
    this.ex = null;
    this.attempt = null;
    if (ex !== null && !wasDone) { try { ex.end(0); } catch { /* already broken */ } }
  }

  start(): void {
    const ds = this.ds;
    const h = this.reqHeaders;
    ds.on('error', () => { /* 'close' follows */ });
    this.info.streams = (this.info.streams ?? 0) + 1;
    ds.on('close', () => {
      this.info.streams!--;
      try { this.clientClosed(); } catch (e) { this.fatal(e); }
    });
    if (this.info.dst === null) { this.localReply({ status: 421, headers: {}, body: 'connection was not redirected by sockmesh\n' }, false); return; }
    const method = String(h[':method'] ?? 'GET');
    if (method === 'CONNECT') { this.localReply({ status: 405, headers: {}, body: 'CONNECT is not supported\n' }, false); return; }
    const headers = Object.create(null) as Headers;
    for (const name in h) {
      if (name.charCodeAt(0) === 58 /* : */ || name === 'host' || name === 'connection' || name === 'keep-alive') continue;
      const v = h[name];
      if (v !== undefined) headers[name] = v;
    }
    const ct = headers['content-type'];
    const head: RequestHead = {
      method,
      path: String(h[':path'] ?? '/'),
      authority: String(h[':authority'] ?? h.host ?? ''),
      headers,
      protocol: 'h2',
      grpc: typeof ct === 'string' && ct.startsWith('application/grpc'),
      hasBody: !this.bodyDone,
    };
    this.head = head;
    let r: Exchange | LocalReply;
    try {
      const src: Source = (this.info.source ??= { address: this.info.address, port: this.info.port, cgroupId: this.info.dst.cgroupId });
      r = this.ctx.policy.begin(this.info.dst, src, head);
    } catch (e) {
      this.ctx.log.error({ err: e }, 'policy.begin failed');
      r = { status: 500, headers: {}, body: 'internal error\n' };
    }
    if ('status' in r) { this.localReply(r, false); return; }
    this.ex = r;
    if (!emptyRewrite(r.requestHeaders)) rewriteHeaders(headers, r.requestHeaders);
    const up: OutgoingHttpHeaders = { ':method': method, ':path': head.path, ':authority': head.authority, ':scheme': String(h[':scheme'] ?? 'http') };
    for (const name in headers) up[name] = headers[name];
    this.upHeaders = up;
    if (!this.bodyDone) {
      ds.on('data', (d: Buffer) => { try { this.onBody(d); } catch (e) { this.fatal(e); } });
      ds.on('end', () => { try { this.onBodyEnd(); } catch (e) { this.fatal(e); } });
    }
    if (r.timeoutMs > 0) this.routeTimer = setTimeout(() => { this.routeTimer = null; try { this.routeTimedOut(); } catch (e) { this.fatal(e); } }, r.timeoutMs);
    this.nextAttempt();
  }

  private nextAttempt(): void {
    const ex = this.ex;
    if (ex === null || this.done) return;
    const a = ex.attempt(++this.n);
    if ('status' in a) { this.localReply(a, true); return; }
    this.attempt = a;
    if (ex.perTryTimeoutMs > 0) this.tryTimer = setTimeout(() => { this.tryTimer = null; try { this.attemptFailed({ kind: 'timeout' }); } catch (e) { this.fatal(e); } }, ex.perTryTimeoutMs);
    this.acquire();
  }

  private acquire(): void {
    const up = this.attempt!.upstream;
    const got = this.ctx.h2pool.acquire(up, this.onSession);
    if (got === 'pending') this.waitingGroup = up.group;
    else if (got === 'overflow') this.attemptFailed({ kind: 'overflow', limit: 'max-pending-requests' });
    else this.send(got);
  }

  /** the request goes out on session e */
  private send(e: SessionEntry): void {
    if (this.attempt === null || this.done) return;
    let us: ClientHttp2Stream;
    try {
      us = e.session.request(this.upHeaders, this.bodyDone && this.body.length === 0 ? REQ_END : REQ_OPEN);
    } catch (err) {
      this.ctx.log.debug({ upstream: e.up.key, err: (err as Error).message }, 'h2 request failed');
      this.attemptFailed({ kind: e.connected ? 'reset' : 'connect-failure' });
      return;
    }
    this.us = us;
    this.entry = e;
    const pool = this.ctx.h2pool;
    pool.streamStarted(e);
    let ended = false;
    const streamEnded = (): void => { if (!ended) { ended = true; pool.streamEnded(e); } };
    us.on('response', (headers: IncomingHttpHeaders, flags: number) => { try { this.onResponse(us, headers, (flags & NGHTTP2_FLAG_END_STREAM) !== 0); } catch (err) { this.fatal(err); } });
    us.on('trailers', (t: IncomingHttpHeaders) => { if (us === this.us) this.trailers = t; });
    us.on('data', (d: Buffer) => { if (us === this.us && this.resStarted && !this.ds.write(d)) this.pauseUpstream(us); });
    us.on('error', () => { /* 'close' follows */ });
    // (completion is decided on 'close': a stream that ended without RST_STREAM)
    us.on('close', () => { streamEnded(); try { if (us === this.us) this.upClosed(us, e); } catch (err) { this.fatal(err); } });
    for (const chunk of this.body) us.write(chunk);
    this.unsent = 0;
    if (!this.replayable) this.body.length = 0;
    if (this.bodyDone && !us.writableEnded) us.end();
    if (this.ds.isPaused()) this.ds.resume();
  }

  // Backpressure listeners are attached only when a write first says "full" (most exchanges never do).
  private drainDs = false;
  private drainUs: ClientHttp2Stream | null = null;

  private pauseUpstream(us: ClientHttp2Stream): void {
    us.pause();
    if (!this.drainDs) {
      this.drainDs = true;
      this.ds.on('drain', () => { if (this.us !== null) this.us.resume(); });
    }
  }

  private pauseClient(us: ClientHttp2Stream): void {
    this.ds.pause();
    if (this.drainUs !== us) {
      this.drainUs = us;
      us.on('drain', () => { if (us === this.us && !this.ds.destroyed) this.ds.resume(); });
    }
  }

  private onBody(d: Buffer): void {
    if (this.ex === null) return;
    this.bodyBytes += d.length;
    if (this.replayable && this.bodyBytes > this.ex.bufferLimitBytes) {
      this.replayable = false;
      if (this.us !== null) this.body.length = 0; // all of it was sent
    }
    const us = this.us;
    if (us !== null) {
      if (this.replayable) this.body.push(d);
      if (!us.write(d)) this.pauseClient(us);
    } else {
      this.body.push(d);
      this.unsent += d.length;
      if (this.unsent > MAX_UNSENT) this.ds.pause();
    }
  }

  private onBodyEnd(): void {
    this.bodyDone = true;
    if (this.us !== null && !this.us.writableEnded) this.us.end();
  }

  private onResponse(us: ClientHttp2Stream, headers: IncomingHttpHeaders, endStream: boolean): void {
    if (us !== this.us || this.attempt === null) return;
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null; }
    const status = Number(headers[':status']);
    const gs = headers['grpc-status'];
    const grpcStatus = gs === undefined ? undefined : Number(gs);
    const outcome: Outcome = grpcStatus === undefined ? { kind: 'response', status } : { kind: 'response', status, grpcStatus };
    const a = this.attempt;
    this.attempt = null;
    a.finish(outcome);
    const delay = this.ex!.retryDelay(this.n, outcome, this.replayable);
    if (delay !== null && (this.replayable || !this.head!.hasBody)) {
      this.us = null;
      us.close(NGHTTP2_CANCEL);
      this.scheduleRetry(delay);
      return;
    }
    this.grpcStatus = grpcStatus;
    this.resStarted = true;
    this.resStatus = status;
    const out: OutgoingHttpHeaders = { ':status': status };
    const rw = this.ex!.responseHeaders;
    const plain = emptyRewrite(rw);
    for (const name in headers) {
      if (name.charCodeAt(0) === 58) continue;
      if (!plain && (rw.remove.includes(name) || rw.set[name] !== undefined)) continue;
      out[name] = headers[name];
    }
    if (!plain) for (const name in rw.set) out[name] = rw.set[name];
    const ds = this.ds;
    if (ds.destroyed || ds.closed) return;
    try {
      if (endStream) {
        // trailers-only (gRPC errors) or an empty response: one HEADERS frame with END_STREAM
        ds.respond(out, { endStream: true });
        this.us = null;
        this.finishExchange();
      } else {
        // Always waitForTrailers, even for clients that will get none (sendTrailers({}) is an empty DATA
        // frame with END_STREAM): without it, node's stream.close(code) ends the stream cleanly before its
        // RST_STREAM, and a client whose upstream died mid-response would take a cut body for a whole one.
        ds.respond(out, { waitForTrailers: true });
        ds.once('wantTrailers', () => this.sendTrailers());
      }
    } catch (err) {
      this.ctx.log.debug({ err: (err as Error).message }, 'h2 respond failed');
      this.abortClient();
    }
  }

  private sendTrailers(): void {
    const t = this.trailers;
    const out: OutgoingHttpHeaders = {};
    if (t !== null) {
      for (const name in t) if (name.charCodeAt(0) !== 58) out[name] = t[name];
      const gs = t['grpc-status'];
      if (gs !== undefined) this.grpcStatus = Number(gs);
    }
    try {
      this.ds.sendTrailers(out);
    } catch { /* stream gone */ }
  }

  private onResponseEnd(): void {
    if (!this.resStarted) return;
    const ds = this.ds;
    const gs = this.trailers?.['grpc-status'];
    if (gs !== undefined) this.grpcStatus = Number(gs);
    if (!ds.destroyed && !ds.writableEnded) ds.end(); // -> wantTrailers -> the upstream's trailers
    this.us = null;
    this.finishExchange();
  }

  /** the upstream stream closed: the response is complete, or it failed */
  private upClosed(us: ClientHttp2Stream, e: SessionEntry): void {
    if (this.resStarted) {
      if (us.rstCode === constants.NGHTTP2_NO_ERROR && us.readableEnded) this.onResponseEnd();
      else {
        this.ctx.log.debug({ upstream: e.up.key, rstCode: us.rstCode }, 'upstream h2 stream failed mid-response; client stream reset');
        this.us = null;
        this.abortClient();
      }
      return;
    }
    this.us = null;
    if (this.attempt === null) return;
    this.ctx.log.debug({ upstream: e.up.key, rstCode: us.rstCode, active: e.active, max: maxStreams(e) }, 'upstream h2 stream closed before the response head');
    if (!e.connected) { this.attemptFailed({ kind: 'connect-failure' }); return; }
    // REFUSED_STREAM (a session going away) guarantees the application never saw the request: send it again.
    // (A burst on a new session, before the peer's SETTINGS told its limit, can be refused in part.)
    if (us.rstCode === NGHTTP2_REFUSED_STREAM && this.replayable && this.staleRedispatch++ < 5) { this.acquire(); return; }
    this.attemptFailed({ kind: 'reset' });
  }

  private scheduleRetry(delay: number): void {
    if (delay > 0) this.retryTimer = setTimeout(() => { this.retryTimer = null; try { this.nextAttempt(); } catch (e) { this.fatal(e); } }, delay);
    else this.nextAttempt();
  }

  private attemptFailed(o: Outcome): void {
    if (this.attempt === null || this.ex === null) return;
    this.abortAttempt(o);
    const delay = this.ex.retryDelay(this.n, o, this.replayable);
    if (delay === null || (!this.replayable && this.head!.hasBody)) this.localReply(failureReply(o), true);
    else this.scheduleRetry(delay);
  }

  private abortAttempt(o: Outcome): void {
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null; }
    if (this.retryTimer !== null) { clearTimeout(this.retryTimer); this.retryTimer = null; }
    if (this.waitingGroup !== null) { this.ctx.h2pool.cancel(this.onSession, this.waitingGroup); this.waitingGroup = null; }
    if (this.us !== null) { const us = this.us; this.us = null; if (!us.closed) us.close(NGHTTP2_CANCEL); }
    const a = this.attempt;
    if (a !== null) { this.attempt = null; a.finish(o); }
  }

  private routeTimedOut(): void {
    if (this.ex === null || this.done) return;
    if (this.resStarted) { this.abortClient(); return; }
    this.abortAttempt({ kind: 'timeout' });
    this.localReply(ROUTE_TIMEOUT_REPLY, true);
  }

  /** an answer made here; gRPC clients get a trailers-only response with a grpc-status they understand */
  private localReply(r: LocalReply, _fromExchange: boolean): void {
    const ds = this.ds;
    this.resStarted = true;
    this.resStatus = r.status;
    if (!ds.destroyed && !ds.closed && !ds.headersSent) {
      try {
        const ct = this.reqHeaders['content-type'];
        if (typeof ct === 'string' && ct.startsWith('application/grpc')) {
          this.grpcStatus = grpcStatusForHttp(r.status);
          ds.respond({ ...r.headers, ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(this.grpcStatus), 'grpc-message': encodeURIComponent(r.body.trim()) }, { endStream: true });
        } else {
          ds.respond({ 'content-type': 'text/plain', ...r.headers, ':status': r.status });
          ds.end(this.reqHeaders[':method'] === 'HEAD' ? undefined : r.body);
        }
      } catch (err) {
        this.ctx.log.debug({ err: (err as Error).message }, 'h2 local reply failed');
      }
    }
    // the rest of a request body is not wanted
    if (!this.bodyDone && !ds.destroyed) ds.resume();
    this.finishExchange();
  }

  private clearTimers(): void {
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null; }
    if (this.routeTimer !== null) { clearTimeout(this.routeTimer); this.routeTimer = null; }
    if (this.retryTimer !== null) { clearTimeout(this.retryTimer); this.retryTimer = null; }
  }

  private finishExchange(): void {
    if (this.done) return;
    this.done = true;
    this.clearTimers();
    const ex = this.ex;
    this.ex = null;
    this.body.length = 0;
    if (ex !== null) ex.end(this.resStatus, this.grpcStatus);
  }

  private abortClient(): void {
    const ds = this.ds;
    if (!ds.destroyed && !ds.closed) ds.close(NGHTTP2_INTERNAL_ERROR);
    this.clientClosed();
  }

  private clientClosed(): void {
    if (this.us !== null) { const us = this.us; this.us = null; if (!us.closed) us.close(NGHTTP2_CANCEL); }
    if (this.done) return;
    this.done = true;
    this.clearTimers();
    if (this.waitingGroup !== null) { this.ctx.h2pool.cancel(this.onSession, this.waitingGroup); this.waitingGroup = null; }
    const a = this.attempt;
    if (a !== null) { this.attempt = null; a.finish({ kind: 'cancelled' }); }
    const ex = this.ex;
    this.ex = null;
    if (ex !== null) ex.end(this.resStarted ? this.resStatus : 0, this.grpcStatus);
  }
}
