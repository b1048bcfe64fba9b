// HTTP/2 cleartext (prior knowledge) both ways, on our own sessions (h2/session.ts: framing, flow control;
// h2/hpack.ts): one server-role session per client connection, upstream client-role sessions pooled per
// backend and multiplexed up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS (another session is opened when
// they are full, within the group's max connections). gRPC needs nothing special beyond passing trailers
// intact: messages are DATA frames streamed both ways, grpc-status/grpc-message travel in trailers (or in a
// trailers-only HEADERS frame with END_STREAM, passed on as such).
//
// Flow control is end to end: bytes read from one side's stream are counted back to it (stream.consumed)
// only once the other side's stream took them without asking us to wait (sendData() true, or onWritable
// later), so a slow reader holds its peer at one stream window instead of filling our memory.
//
// Headers are flat lists [name, value, ...] (lower-case names, latin1 values), passed on as the session decoded
// them: it hands over well-formed sections only (RFC 9113 8.2, 8.3) and refuses the stream otherwise, so a
// connection-specific field (connection, keep-alive, proxy-connection, transfer-encoding, upgrade; te other than
// "trailers") never gets through either way. What we decide ourselves, where node:http2 used to: host is folded
// into :authority (a request without :authority takes host's value) and not forwarded; te: trailers is forwarded;
// content-length passes as sent (the sessions check DATA against it); no date is added to passed-on responses
// (the origin's is kept).
import { connect as netConnect } from 'node:net';
import type { Logger } from '../observe/log.js';
import type { Conn } from './conn.js';
import {
  emptyRewrite, failureReply, grpcStatusForHttp, rewriteHeaders, ROUTE_TIMEOUT_REPLY, type ConnInfo, type EngineContext,
} from './engine.js';
import type { HeaderList } from './h2/hpack.js';
import { H2_ERROR, H2Session, type H2SessionOptions, type H2Settings, type H2Stream, type H2StreamHandler } from './h2/session.js';
import type { Attempt, Exchange, Headers, LocalReply, Outcome, RequestHead, Source, Upstream, UpstreamGroup } from './types.js';

/** streams assumed allowed on a new session until the peer's SETTINGS say otherwise */
const DEFAULT_MAX_STREAMS = 100;
/** request body held while no upstream stream is there yet, before the client's stream window is held */
/** our receive window per stream on both legs (see ClientSession) */
const STREAM_WINDOW = 256 * 1024;
const MAX_UNSENT = 256 * 1024;
/** a stream refused unprocessed (REFUSED_STREAM, GOAWAY) is sent again on another session at most this often */
const MAX_REDISPATCH = 5;

/**
 * The policy's Headers record: a fast-mode object that inherits nothing (Object.create(null) makes a slow hash
 * table per request), so that 'constructor' or '__proto__' are names like any other.
 */
const HeadersRecord = function HeadersRecord(): void { /* empty */ } as unknown as { new (): Headers };
HeadersRecord.prototype = Object.create(null) as object;

// ---- upstream sessions ----

/** What the pool tells a request that waited for a stream slot. */
export interface H2PoolWaiter {
  /** a session with a free stream slot for the waiter's upstream (null: the pool closed) */
  sessionReady(e: UpstreamSession | null): void;
}

/** the last SETTINGS_MAX_CONCURRENT_STREAMS each backend sent: a new session assumes it until its own arrive */
const knownMax = new Map<string, number>();

/** One client-role session to a backend, with the pool's accounting. It is the session's options object too. */
export class UpstreamSession implements H2SessionOptions {
  readonly role = 'client' as const;
  readonly settings: Partial<H2Settings>;
  readonly session: H2Session;
  /** streams started on it and not yet ended (the pool's count; the session has its own) */
  active = 0;
  /** the transport connected */
  connected = false;
  /** the peer's SETTINGS arrived */
  settled = false;
  /** retired: takes no new streams; its connection slot was given back */
  retired = false;
  idleSince = performance.now();
  private connectTimer: NodeJS.Timeout | null;

  constructor(private readonly pool: H2Pool, readonly up: Upstream, conn: Conn, connectTimeoutMs: number, settings: Partial<H2Settings>) {
    this.settings = settings;
    this.connectTimer = setTimeout(UpstreamSession.connectTimeout, connectTimeoutMs, this);
    conn.once('connect', () => {
      this.connected = true;
      if (this.connectTimer !== null) { clearTimeout(this.connectTimer); this.connectTimer = null; }
    });
    this.session = new H2Session(conn, this);
  }

  private static connectTimeout(e: UpstreamSession): void {
    e.connectTimer = null;
    if (!e.connected) e.session.destroy(new Error(`connect timeout to ${e.up.key}`));
  }

  /** stream slots: the peer's limit once known, else what this backend said last time */
  get capacity(): number {
    if (this.settled) return Math.min(this.session.peerMaxConcurrentStreams, 1 << 20);
    return knownMax.get(this.up.key) ?? DEFAULT_MAX_STREAMS;
  }

  /** a new stream may go out on it now */
  get usable(): boolean {
    return !this.retired && this.active < this.capacity && this.session.canRequest;
  }

  onSettings(): void {
    this.settled = true;
    knownMax.set(this.up.key, Math.min(this.session.peerMaxConcurrentStreams, 1 << 20));
    this.pool.serveWaiters(this.up.group);
  }

  onGoaway(lastStreamId: number, code: number): void {
    this.pool.log.debug({ upstream: this.up.key, lastStreamId, code }, 'upstream h2 session going away');
    this.pool.retire(this);
  }

  onClose(err?: Error): void {
    if (this.connectTimer !== null) { clearTimeout(this.connectTimer); this.connectTimer = null; }
    if (err !== undefined) this.pool.log.debug({ upstream: this.up.key, err: err.message }, 'upstream h2 session error');
    this.pool.retire(this);
  }
}

function defaultConnect(up: Upstream): Conn {
  // Nagle off: a small HEADERS frame must not wait for an ACK
  return netConnect({ host: up.address, port: up.port, family: up.family, noDelay: true });
}

interface Waiting { up: Upstream; w: H2PoolWaiter }

export class H2Pool {
  private readonly sessions = new Map<string, UpstreamSession[]>();
  private readonly queues = new Map<UpstreamGroup, Waiting[]>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly settings: Partial<H2Settings>;
  private closing = false;

  /**
   * connect: a new transport to a backend (server.ts passes ctx.connect; default node:net).
   * maxHeaderListSize: the largest response head taken from a backend.
   */
  constructor(
    readonly log: Logger,
    private readonly idleTimeoutMs = 30_000,
    private readonly connectTimeoutMs = 5_000,
    private readonly connect: (up: Upstream) => Conn = defaultConnect,
    maxHeaderListSize = 64 * 1024,
  ) {
    // The upstream may not open streams to us (no push): the stream limit we announce is moot.
    // (the window bounds what a client that does not read makes us hold per upstream stream, as on the client side)
    this.settings = { maxHeaderListSize, initialWindowSize: STREAM_WINDOW };
    this.sweeper = setInterval(() => this.sweep(), Math.min(1000, idleTimeoutMs)).unref();
  }

  /**
   * A session with a free stream slot for up: returned at once, or 'pending' (w.sessionReady follows with a
   * session, or null when the pool closed), or 'overflow' (max connections and max pending reached).
   */
  acquire(up: Upstream, w: H2PoolWaiter): UpstreamSession | 'pending' | 'overflow' {
    const e = this.free(up) ?? this.open(up);
    if (e !== null) return e;
    if (!up.group.tryPending()) return 'overflow';
    let q = this.queues.get(up.group);
    if (q === undefined) this.queues.set(up.group, (q = []));
    q.push({ up, w });
    return 'pending';
  }

  /** a waiter gives up its place (its attempt ended otherwise) */
  cancel(w: H2PoolWaiter, group: UpstreamGroup): void {
    const q = this.queues.get(group);
    if (q === undefined) return;
    for (let i = 0; i < q.length; i++) {
      if (q[i]!.w === w) {
        q.splice(i, 1);
        group.pendingDone();
        if (q.length === 0) this.queues.delete(group);
        return;
      }
    }
  }

  private free(up: Upstream): UpstreamSession | null {
    const list = this.sessions.get(up.key);
    if (list === undefined) return null;
    // the newest first: the older ones drain and idle out when there are more than needed
    for (let i = list.length - 1; i >= 0; i--) {
      const e = list[i]!;
      if (e.usable) return e;
    }
    return null;
  }

  private open(up: Upstream): UpstreamSession | null {
    if (this.closing || !up.group.tryOpenConnection()) return null;
    let e: UpstreamSession;
    try {
      e = new UpstreamSession(this, up, this.connect(up), this.connectTimeoutMs, this.settings);
    } catch (err) {
      this.log.warn({ upstream: up.key, err: (err as Error).message }, 'upstream h2 connect failed');
      up.group.connectionClosed();
      return null;
    }
    if (e.retired) return null; // closed during construction (the transport was dead at once)
    let list = this.sessions.get(up.key);
    if (list === undefined) this.sessions.set(up.key, (list = []));
    list.push(e);
    return e;
  }

  /** a session takes no new streams (going away, closed, idle); its connection slot is given back */
  retire(e: UpstreamSession): void {
    if (e.retired) return;
    e.retired = true;
    const list = this.sessions.get(e.up.key);
    if (list !== undefined) {
      const i = list.indexOf(e);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.sessions.delete(e.up.key);
    }
    // (undefined while its constructor runs: a transport that failed at once)
    const s = e.session as H2Session | undefined;
    if (s !== undefined && !s.closed) s.goaway(); // the streams in flight finish, then the transport closes
    e.up.group.connectionClosed();
    this.serveWaiters(e.up.group);
  }

  streamStarted(e: UpstreamSession): void {
    e.active++;
  }

  streamEnded(e: UpstreamSession): void {
    e.active--;
    if (e.active === 0) e.idleSince = performance.now();
    this.serveWaiters(e.up.group);
  }

  /** hand free slots (or new sessions) to the requests waiting in group's queue, in order */
  serveWaiters(group: UpstreamGroup): void {
    const q = this.queues.get(group);
    if (q === undefined || this.closing) return;
    while (q.length > 0) {
      const w = q[0]!;
      const e = this.free(w.up) ?? this.open(w.up);
      if (e === null) break;
      q.shift();
      group.pendingDone();
      w.w.sessionReady(e);
    }
    if (q.length === 0 && this.queues.get(group) === q) this.queues.delete(group);
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
    for (const [group, q] of this.queues) for (const w of q) { group.pendingDone(); w.w.sessionReady(null); }
    this.queues.clear();
  }
}

// ---- downstream ----

/**
 * A client connection that sent the HTTP/2 preface: one server-role session on it from now on. first: the
 * bytes the sniffer already read, from the preface on.
 */
export function acceptH2(ctx: EngineContext, conn: Conn, info: ConnInfo, first: Buffer): void {
  ctx.stats.connectionsH2++;
  info.streams = 0;
  new ClientSession(ctx, conn, info, first);
}

/** The session of one client connection; its options object too (onStream: a new exchange). */
class ClientSession implements H2SessionOptions {
  readonly role = 'server' as const;
  readonly settings: Partial<H2Settings>;
  readonly session: H2Session;
  // Route timeouts: one timer per connection, at the earliest deadline of its exchanges, instead of a setTimeout
  // and clearTimeout per request (a Timeout object and two list operations each; a request rarely times out).
  // Requests of a route share its timeout, so later ones have later deadlines: the timer is rarely moved.
  private deadlineTimer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;

  constructor(private readonly ctx: EngineContext, private readonly conn: Conn, private readonly info: ConnInfo, first: Buffer) {
    // What one client connection can make the proxy hold is bounded by streams x stream window, each way (the session
    // gives the connection window back itself): 100 x 256 KiB = 25 MiB, where the session defaults (1000 x 1 MiB)
    // would let one connection pin about 1 GiB. 100 streams is nghttp2's, haproxy's and node's default.
    this.settings = { maxConcurrentStreams: 100, initialWindowSize: STREAM_WINDOW, maxHeaderListSize: ctx.maxHeaderBytes };
    // idle: no stream open for clientIdleTimeoutMs (a quiet long-lived gRPC stream is not idle). The transport's
    // timer measures quiet time; it is looked at again, not acted on, while a stream is open.
    conn.removeAllListeners('timeout'); // the sniffer's
    conn.on('timeout', () => this.idle());
    conn.setTimeout(ctx.clientIdleTimeoutMs);
    this.session = new H2Session(conn, this, first);
  }

  private idle(): void {
    if (this.session.closed) return;
    if (this.session.activeStreams === 0 && this.info.streams === 0) this.session.goaway(H2_ERROR.NO_ERROR);
    else this.conn.setTimeout(this.ctx.clientIdleTimeoutMs);
  }

  onStream(stream: H2Stream, headers: HeaderList, endStream: boolean, tooLarge: boolean): void {
    this.ctx.stats.requests++;
    const x = new H2Exchange(this.ctx, this.info, this, stream, endStream);
    stream.handler = x;
    try { x.start(headers, tooLarge); } catch (e) { x.fatal(e); }
  }

  /** an exchange's route deadline (performance.now() ms): the timer fires by then */
  deadline(at: number): void {
    // (session is unset while its constructor hands over the streams of the first read)
    if (at >= this.timerAt || (this.session as H2Session | undefined)?.closed === true) return;
    if (this.deadlineTimer !== null) clearTimeout(this.deadlineTimer);
    this.timerAt = at;
    this.deadlineTimer = setTimeout(ClientSession.sweep, Math.max(1, Math.ceil(at - performance.now())), this);
  }

  /** the exchanges past their deadline time out; the timer is set again for the earliest of the others */
  private static sweep(c: ClientSession): void {
    c.deadlineTimer = null;
    c.timerAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (const st of c.session.openStreams()) {
      const x = st.handler;
      if (!(x instanceof H2Exchange)) continue;
      const d = x.routeDeadline;
      if (d <= now) x.routeDue();
      else if (d < next) next = d;
    }
    if (next !== Infinity) c.deadline(next);
  }

  onClose(err?: Error): void {
    if (this.deadlineTimer !== null) { clearTimeout(this.deadlineTimer); this.deadlineTimer = null; }
    // (the transport's timer is the session's from now on: it lingers for the peer's close)
    if (err !== undefined) this.ctx.log.debug({ err: err.message, peer: `${this.info.address}:${this.info.port}` }, 'downstream h2 session error');
  }
}

const HEAD_TOO_LARGE: LocalReply = Object.freeze({
  status: 431, headers: Object.freeze({}) as Headers, body: 'request header section too large\n',
});

/** The upstream stream of one attempt: relays what the stream says to its exchange (one object per attempt). */
class UpLeg implements H2StreamHandler {
  us: H2Stream | null = null;
  /** our side of the stream ended (END_STREAM or trailers sent) */
  sentEnd = false;
  /** the pool was told the stream ended */
  ended = false;
  /** response bytes passed on to the client but not yet counted back to the upstream (the client is slow) */
  owed = 0;
  constructor(readonly x: H2Exchange, readonly entry: UpstreamSession) {}
  onHeaders(headers: HeaderList, endStream: boolean): void {
    try { this.x.upHead(this, headers, endStream); } catch (e) { this.x.fatal(e); }
  }
  onData(data: Buffer, endStream: boolean): void {
    try { this.x.upData(this, data, endStream); } catch (e) { this.x.fatal(e); }
  }
  onTrailers(headers: HeaderList): void {
    try { this.x.upTrailers(this, headers); } catch (e) { this.x.fatal(e); }
  }
  onReset(code: number): void {
    try { this.x.upReset(this, code); } catch (e) { this.x.fatal(e); }
  }
  onWritable(): void {
    try { this.x.upWritable(this); } catch (e) { this.x.fatal(e); }
  }
}

/**
 * One request stream: the same exchange loop as HTTP/1.1 (see http1.ts), on h2 streams. It is the handler of
 * the client's stream (request body, trailers, reset, writable) and the pool waiter of its attempts.
 */
class H2Exchange implements H2StreamHandler, H2PoolWaiter {
  private ex: Exchange | null = null;
  private head: RequestHead | null = null;
  private n = 0;
  private attempt: Attempt | null = null;
  private leg: UpLeg | null = null;
  private waitingGroup: UpstreamGroup | null = null;
  private upHeaders: HeaderList = [];
  private isGrpc = false;
  private isHead = false;
  private plainResponse = true;
  // the request body: kept whole while it may be replayed (within bufferLimitBytes), else only what is unsent
  private body: Buffer[] = [];
  private bodyBytes = 0;
  private unsent = 0;
  private bodyDone: boolean;
  private reqTrailers: HeaderList | null = null;
  private replayable = true;
  /** client bytes read and not yet counted back to its stream (held while the upstream cannot take more) */
  private dsOwed = 0;
  /** the upstream stream asked us to wait (sendData false) */
  private usBlocked = false;
  /** the client's stream asked us to wait */
  private dsBlocked = false;
  // the response
  private resStarted = false;
  private headSent = false;
  private resStatus = 0;
  private grpcStatus: number | undefined;
  private done = false;
  /** counted in info.streams */
  private counted = false;
  private tryTimer: NodeJS.Timeout | null = null;
  /** when the route's timeout ends (performance.now() ms; Infinity: none, or over); the client session's timer watches it */
  routeDeadline = Infinity;
  private retryTimer: NodeJS.Timeout | null = null;
  private redispatched = 0;

  constructor(
    private readonly ctx: EngineContext,
    private readonly info: ConnInfo,
    private readonly client: ClientSession,
    private readonly ds: H2Stream,
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
    this.uncount();
    try {
      this.dropLeg(H2_ERROR.CANCEL);
      if (this.waitingGroup !== null) { this.ctx.h2pool.cancel(this, this.waitingGroup); this.waitingGroup = null; }
      if (!this.ds.closed) this.ds.reset(H2_ERROR.INTERNAL_ERROR);
    } catch { /* already broken */ }
    const ex = this.ex, a = this.attempt;
    this.ex = null;
    this.attempt = null;
    if (!wasDone) {
      try { a?.finish({ kind: 'cancelled' }); ex?.end(0); } catch { /* already broken */ }
    }
  }

  start(h: HeaderList, tooLarge: boolean): void {
    this.info.streams = (this.info.streams ?? 0) + 1;
    this.counted = true;
    if (tooLarge) { this.ctx.stats.badRequests++; this.localReply(HEAD_TOO_LARGE); return; }
    // The session passed a well-formed head only (RFC 9113 8.2, 8.3: the known pseudo-header fields first, no
    // connection-specific field, te only "trailers"; anything else it refused on the stream), and the list is
    // ours: it goes upstream as it came, host aside. One pass makes the policy's record.
    let method = '', path = '', authority = '', ct = '';
    let hostAt = -1, teTrailers = false;
    const headers = new HeadersRecord();
    for (let i = 0; i < h.length; i += 2) {
      const name = h[i]!;
      if (name.charCodeAt(0) === 58 /* : */) {
        switch (name) {
          case ':method': method = h[i + 1]!; break;
          case ':path': path = h[i + 1]!; break;
          case ':authority': authority = h[i + 1]!; break;
        }
        continue;
      }
      switch (name) {
        case 'host': hostAt = i; continue;
        case 'te': teTrailers = true; continue; // between the two ends (gRPC servers ask for it), not the policy's
        case 'content-type': ct = h[i + 1]!; break;
      }
      const value = h[i + 1]!;
      const prev = headers[name];
      if (prev === undefined) headers[name] = value;
      else if (typeof prev === 'string') headers[name] = [prev, value];
      else prev.push(value);
    }
    this.isGrpc = ct.startsWith('application/grpc');
    this.isHead = method === 'HEAD';
    if (this.info.dst === null) { this.localReply({ status: 421, headers: {}, body: 'connection was not redirected by sockmesh\n' }); return; }
    if (method === 'CONNECT') { this.localReply({ status: 405, headers: {}, body: 'CONNECT is not supported\n' }); return; }
    if (method === '' || path === '') {
      this.ctx.stats.badRequests++;
      this.localReply({ status: 400, headers: {}, body: 'bad request: no :method or :path\n' });
      return;
    }
    if (hostAt >= 0) {
      // rare in h2: host goes into :authority when there is none (RFC 9113 8.3.1), and is not forwarded
      const host = h[hostAt + 1]!;
      h.splice(hostAt, 2);
      if (authority === '') { authority = host; h.unshift(':authority', host); }
    }
    const head: RequestHead = { method, path, authority, headers, protocol: 'h2', grpc: this.isGrpc, hasBody: !this.bodyDone };
    this.head = head;
    let r: Exchange | LocalReply;
    try {
      const src: Source = (this.info.source ??= { address: this.info.address, port: this.info.port, cgroupId: this.info.dst.cgroupId });
      r = this.ctx.policy.begin(this.info.dst, src, head);
    } catch (e) {
      this.ctx.log.error({ err: e }, 'policy.begin failed');
      r = { status: 500, headers: {}, body: 'internal error\n' };
    }
    if ('status' in r) { this.localReply(r); return; }
    this.ex = r;
    this.plainResponse = emptyRewrite(r.responseHeaders);
    let up = h;
    if (!emptyRewrite(r.requestHeaders)) {
      // rare: the list is made again from the rewritten record
      rewriteHeaders(headers, r.requestHeaders);
      up = [];
      for (let i = 0; i < h.length && h[i]!.charCodeAt(0) === 58; i += 2) up.push(h[i]!, h[i + 1]!);
      if (teTrailers) up.push('te', 'trailers');
      for (const name in headers) {
        const v = headers[name]!;
        if (typeof v === 'string') up.push(name, v);
        else for (let i = 0; i < v.length; i++) up.push(name, v[i]!);
      }
    }
    this.upHeaders = up;
    if (r.timeoutMs > 0) {
      this.routeDeadline = performance.now() + r.timeoutMs;
      this.client.deadline(this.routeDeadline);
    }
    this.nextAttempt();
  }

  // ---- the client's stream (H2StreamHandler) ----

  onHeaders(): void { /* server role: the request head came with onStream */ }

  onData(d: Buffer, endStream: boolean): void {
    try {
      if (d.length > 0) this.onBody(d);
      if (endStream) this.onBodyEnd();
    } catch (e) { this.fatal(e); }
  }

  onTrailers(headers: HeaderList): void {
    try {
      this.reqTrailers = headers;
      this.onBodyEnd();
    } catch (e) { this.fatal(e); }
  }

  onReset(): void {
    try { this.clientClosed(); } catch (e) { this.fatal(e); }
  }

  /** the client reads again: what the upstream sent meanwhile is counted back to it */
  onWritable(): void {
    this.dsBlocked = false;
    const leg = this.leg;
    if (leg !== null && leg.owed > 0 && leg.us !== null && !leg.us.closed) {
      const n = leg.owed;
      leg.owed = 0;
      leg.us.consumed(n);
    }
  }

  // ---- the request body ----

  private onBody(d: Buffer): void {
    const ex = this.ex;
    if (ex === null || this.done) { if (!this.ds.closed) this.ds.consumed(d.length); return; } // not wanted
    this.bodyBytes += d.length;
    if (this.replayable && this.bodyBytes > ex.bufferLimitBytes) {
      this.replayable = false;
      if (this.leg !== null) this.body.length = 0; // all of it was sent
    }
    const leg = this.leg;
    if (leg !== null && leg.us !== null) {
      if (this.replayable) this.body.push(d);
      if (!leg.us.sendData(d, false)) this.usBlocked = true;
      if (this.usBlocked) this.dsOwed += d.length;
      else this.ds.consumed(d.length);
    } else {
      this.body.push(d);
      this.unsent += d.length;
      if (this.unsent <= MAX_UNSENT) this.ds.consumed(d.length);
      else this.dsOwed += d.length;
    }
  }

  private onBodyEnd(): void {
    this.bodyDone = true;
    const leg = this.leg;
    if (leg !== null && leg.us !== null && !leg.sentEnd) this.endRequest(leg, leg.us);
  }

  private endRequest(leg: UpLeg, us: H2Stream): void {
    leg.sentEnd = true;
    if (this.reqTrailers !== null) us.sendTrailers(this.reqTrailers);
    else us.end();
  }

  /** count back what the client sent and we held */
  private releaseDs(): void {
    if (this.dsOwed === 0) return;
    const n = this.dsOwed;
    this.dsOwed = 0;
    if (!this.ds.closed) this.ds.consumed(n);
  }

  // ---- the exchange loop ----

  private nextAttempt(): void {
    const ex = this.ex;
    if (ex === null || this.done) return;
    const a = ex.attempt(++this.n);
    if ('status' in a) { this.localReply(a); return; }
    this.attempt = a;
    this.redispatched = 0;
    if (ex.perTryTimeoutMs > 0) this.tryTimer = setTimeout(H2Exchange.tryTimeout, ex.perTryTimeoutMs, this);
    this.acquire();
  }

  private acquire(): void {
    const up = this.attempt!.upstream;
    const got = this.ctx.h2pool.acquire(up, this);
    if (got === 'pending') this.waitingGroup = up.group;
    else if (got === 'overflow') this.attemptFailed({ kind: 'overflow', limit: 'max-pending-requests' });
    else this.send(got);
  }

  sessionReady(e: UpstreamSession | null): void {
    this.waitingGroup = null;
    try {
      if (e === null) this.attemptFailed({ kind: 'connect-failure' });
      else this.send(e);
    } catch (err) { this.fatal(err); }
  }

  /** the request goes out on session e */
  private send(e: UpstreamSession): void {
    if (this.attempt === null || this.done) return;
    const body = this.body;
    const endNow = this.bodyDone && body.length === 0 && this.reqTrailers === null;
    const leg = new UpLeg(this, e);
    // current before the stream exists: whatever the session says from inside request() is heard
    this.leg = leg;
    this.usBlocked = false;
    this.ctx.h2pool.streamStarted(e);
    let us: H2Stream;
    try {
      us = e.session.request(this.upHeaders, endNow, leg);
    } catch (err) {
      this.ctx.log.debug({ upstream: e.up.key, err: (err as Error).message }, 'h2 request failed');
      if (this.leg === leg) {
        this.leg = null;
        leg.ended = true;
        this.ctx.h2pool.streamEnded(e);
        this.attemptFailed({ kind: e.connected ? 'reset' : 'connect-failure' });
      }
      return;
    }
    if (this.leg !== leg) return; // reset at once (and handled)
    leg.us = us;
    leg.sentEnd = endNow;
    for (let i = 0, last = body.length - 1; i <= last; i++) {
      const fin = i === last && this.bodyDone && this.reqTrailers === null;
      if (!us.sendData(body[i]!, fin)) this.usBlocked = true;
      if (fin) leg.sentEnd = true;
    }
    if (this.bodyDone && !leg.sentEnd) this.endRequest(leg, us);
    this.unsent = 0;
    if (!this.replayable) body.length = 0;
    if (!this.usBlocked) this.releaseDs();
  }

  /** the upstream can take more of the request body */
  upWritable(leg: UpLeg): void {
    if (leg !== this.leg) return;
    this.usBlocked = false;
    this.releaseDs();
  }

  upHead(leg: UpLeg, h: HeaderList, endStream: boolean): void {
    if (leg !== this.leg || this.attempt === null) return;
    let statusText = '', gs: string | undefined;
    for (let i = 0; i < h.length; i += 2) {
      const name = h[i]!;
      if (name === ':status') statusText = h[i + 1]!;
      else if (name === 'grpc-status') gs = h[i + 1]!;
    }
    const status = Number(statusText);
    if (status >= 100 && status < 200 && !endStream) return; // informational: not passed on
    if (!(status >= 200 && status <= 999)) {
      this.ctx.log.debug({ upstream: leg.entry.up.key, status: statusText }, 'upstream h2 response without a valid :status');
      this.dropLeg(H2_ERROR.PROTOCOL_ERROR);
      this.attemptFailed({ kind: 'reset' });
      return;
    }
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null; }
    const grpcStatus = gs === undefined ? undefined : Number(gs);
    const outcome: Outcome = grpcStatus === undefined ? { kind: 'response', status } : { kind: 'response', status, grpcStatus };
    const a = this.attempt;
    this.attempt = null;
    a.finish(outcome);
    const delay = this.ex!.retryDelay(this.n, outcome, this.replayable);
    if (delay !== null && (this.replayable || !this.head!.hasBody)) {
      this.dropLeg(H2_ERROR.CANCEL);
      this.scheduleRetry(delay);
      return;
    }
    this.grpcStatus = grpcStatus;
    this.resStarted = true;
    this.resStatus = status;
    const ds = this.ds;
    if (ds.closed) { this.clientClosed(); return; }
    // (the session passed a well-formed head only: :status first and alone, no connection-specific field)
    let out = h;
    if (!this.plainResponse) {
      const rw = this.ex!.responseHeaders;
      out = [':status', statusText];
      for (let i = 2; i < h.length; i += 2) {
        const name = h[i]!;
        if (rw.remove.includes(name) || rw.set[name] !== undefined) continue;
        out.push(name, h[i + 1]!);
      }
      for (const name in rw.set) out.push(name, rw.set[name]!);
    }
    this.headSent = true;
    // endStream: trailers-only (gRPC errors) or an empty response, passed on as one HEADERS frame with END_STREAM
    ds.sendHeaders(out, endStream);
    if (endStream) {
      this.legDone(leg);
      this.finishExchange();
    }
  }

  upData(leg: UpLeg, d: Buffer, endStream: boolean): void {
    if (leg !== this.leg || !this.headSent || this.done) {
      if (leg.us !== null && !leg.us.closed) leg.us.consumed(d.length);
      return;
    }
    const ok = this.ds.sendData(d, endStream);
    if (endStream) {
      this.legDone(leg);
      this.finishExchange();
      return;
    }
    if (!ok) this.dsBlocked = true;
    if (this.dsBlocked) leg.owed += d.length;
    else leg.us!.consumed(d.length);
  }

  upTrailers(leg: UpLeg, h: HeaderList): void {
    if (leg !== this.leg || !this.headSent || this.done) return;
    // (well-formed: no pseudo-header or connection-specific field)
    for (let i = 0; i < h.length; i += 2) if (h[i] === 'grpc-status') this.grpcStatus = Number(h[i + 1]);
    if (h.length > 0) this.ds.sendTrailers(h);
    else this.ds.end();
    this.legDone(leg);
    this.finishExchange();
  }

  /** the upstream stream ended abnormally (its RST_STREAM, the session died, GOAWAY) */
  upReset(leg: UpLeg, code: number): void {
    if (leg !== this.leg) return;
    this.leg = null;
    if (!leg.ended) { leg.ended = true; this.ctx.h2pool.streamEnded(leg.entry); }
    if (this.resStarted) {
      if (!this.done) {
        this.ctx.log.debug({ upstream: leg.entry.up.key, code }, 'upstream h2 stream failed mid-response; client stream reset');
        this.abortClient();
      }
      return;
    }
    if (this.attempt === null) return;
    const e = leg.entry;
    this.ctx.log.debug({ upstream: e.up.key, code, active: e.active, max: e.capacity }, 'upstream h2 stream closed before the response head');
    if (!e.connected) { this.attemptFailed({ kind: 'connect-failure' }); return; }
    // REFUSED_STREAM (also: above a GOAWAY's last stream id) guarantees the application never saw the request:
    // it goes again on another session, as the same attempt. (A burst on a new session, before the peer's
    // SETTINGS told its limit, can be refused in part.)
    if (code === H2_ERROR.REFUSED_STREAM && this.replayable && this.redispatched++ < MAX_REDISPATCH) { this.acquire(); return; }
    this.attemptFailed({ kind: 'reset' });
  }

  /** the upstream's response is complete: its stream is given back */
  private legDone(leg: UpLeg): void {
    if (this.leg === leg) this.leg = null;
    if (leg.ended) return;
    leg.ended = true;
    // the rest of the request is not wanted any more
    if (!leg.sentEnd && leg.us !== null && !leg.us.closed) leg.us.reset(H2_ERROR.CANCEL);
    this.ctx.h2pool.streamEnded(leg.entry);
  }

  /** the attempt's stream is abandoned (retry, timeout, client gone) */
  private dropLeg(code: number): void {
    const leg = this.leg;
    if (leg === null) return;
    this.leg = null;
    if (leg.ended) return;
    leg.ended = true;
    if (leg.us !== null && !leg.us.closed) leg.us.reset(code);
    this.ctx.h2pool.streamEnded(leg.entry);
  }

  private static tryTimeout(x: H2Exchange): void {
    x.tryTimer = null;
    try { x.attemptFailed({ kind: 'timeout', requestComplete: x.bodyDone }); } catch (e) { x.fatal(e); }
  }

  /** the route's timeout is over (the client session's sweep) */
  routeDue(): void {
    this.routeDeadline = Infinity;
    try { this.routeTimedOut(); } catch (e) { this.fatal(e); }
  }

  private static retryNow(x: H2Exchange): void {
    x.retryTimer = null;
    try { x.nextAttempt(); } catch (e) { x.fatal(e); }
  }

  private scheduleRetry(delay: number): void {
    if (delay > 0) this.retryTimer = setTimeout(H2Exchange.retryNow, delay, this);
    else this.nextAttempt();
  }

  private attemptFailed(o: Outcome): void {
    if (this.attempt === null || this.ex === null) return;
    this.abortAttempt(o);
    const delay = this.ex.retryDelay(this.n, o, this.replayable);
    if (delay === null || (!this.replayable && this.head!.hasBody)) this.localReply(failureReply(o));
    else this.scheduleRetry(delay);
  }

  private abortAttempt(o: Outcome): void {
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null; }
    if (this.retryTimer !== null) { clearTimeout(this.retryTimer); this.retryTimer = null; }
    if (this.waitingGroup !== null) { this.ctx.h2pool.cancel(this, this.waitingGroup); this.waitingGroup = null; }
    this.dropLeg(H2_ERROR.CANCEL);
    const a = this.attempt;
    if (a !== null) { this.attempt = null; a.finish(o); }
  }

  private routeTimedOut(): void {
    if (this.ex === null || this.done) return;
    if (this.resStarted) { this.dropLeg(H2_ERROR.CANCEL); this.abortClient(); return; }
    this.abortAttempt({ kind: 'timeout', requestComplete: this.bodyDone });
    this.localReply(ROUTE_TIMEOUT_REPLY);
  }

  /** an answer made here; gRPC clients get a trailers-only response with a grpc-status they understand */
  private localReply(r: LocalReply): void {
    const ds = this.ds;
    this.resStarted = true;
    this.resStatus = r.status;
    if (!ds.closed && !this.headSent) {
      this.headSent = true;
      if (this.isGrpc) {
        this.grpcStatus = grpcStatusForHttp(r.status);
        const out: HeaderList = [':status', '200', 'content-type', 'application/grpc', 'grpc-status', String(this.grpcStatus), 'grpc-message', encodeURIComponent(r.body.trim())];
        appendFields(out, r.headers, true);
        ds.sendHeaders(out, true);
      } else {
        const body = this.isHead ? null : Buffer.from(r.body);
        const out: HeaderList = [':status', String(r.status)];
        if (r.headers['content-type'] === undefined) out.push('content-type', 'text/plain');
        appendFields(out, r.headers, false);
        if (body !== null) out.push('content-length', String(body.length));
        ds.sendHeaders(out, body === null || body.length === 0);
        if (body !== null && body.length > 0) ds.sendData(body, true);
      }
    }
    this.finishExchange();
  }

  private clearTimers(): void {
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null; }
    this.routeDeadline = Infinity;
    if (this.retryTimer !== null) { clearTimeout(this.retryTimer); this.retryTimer = null; }
  }

  private uncount(): void {
    if (this.counted) { this.counted = false; this.info.streams!--; }
  }

  private finishExchange(): void {
    if (this.done) return;
    this.done = true;
    this.clearTimers();
    this.uncount();
    const ex = this.ex;
    this.ex = null;
    this.body.length = 0;
    // the rest of a request body is read and dropped (the client may still be sending it)
    this.releaseDs();
    if (ex !== null) ex.end(this.resStatus, this.grpcStatus);
  }

  /** a response under way cannot be finished: the client's stream is reset, so a cut body is never taken for whole */
  private abortClient(): void {
    if (!this.ds.closed) this.ds.reset(H2_ERROR.INTERNAL_ERROR);
    this.clientClosed();
  }

  /** the client's stream is gone (its RST_STREAM, its session closed, or ours) */
  private clientClosed(): void {
    this.dropLeg(H2_ERROR.CANCEL);
    if (this.done) return;
    this.done = true;
    this.clearTimers();
    this.uncount();
    if (this.waitingGroup !== null) { this.ctx.h2pool.cancel(this, this.waitingGroup); this.waitingGroup = null; }
    const a = this.attempt;
    if (a !== null) { this.attempt = null; a.finish({ kind: 'cancelled' }); }
    const ex = this.ex;
    this.ex = null;
    this.body.length = 0;
    if (ex !== null) ex.end(this.resStarted ? this.resStatus : 0, this.grpcStatus);
  }
}

/** a local reply's headers onto a list (for gRPC, without the fields the reply sets itself) */
function appendFields(out: HeaderList, h: Headers, grpc: boolean): void {
  for (const name in h) {
    if (grpc && (name === 'content-type' || name === 'grpc-status' || name === 'grpc-message')) continue;
    const v = h[name]!;
    if (typeof v === 'string') out.push(name, v);
    else for (let i = 0; i < v.length; i++) out.push(name, v[i]!);
  }
}
