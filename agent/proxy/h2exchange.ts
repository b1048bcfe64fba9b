// One HTTP/2 request stream, client side to upstream side: the exchange (exchange.ts's driver: attempts, retries,
// deadlines) over our own sessions (h2/session.ts: framing, flow control; h2/hpack.ts), the client's stream from
// h2server.ts, an upstream stream per attempt (h2leg.ts) from the pool (h2pool.ts). gRPC needs nothing special beyond passing trailers
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
import { emptyRewrite, grpcStatusForHttp, rewriteHeaders, type ConnInfo, type EngineContext } from './engine.js';
import { D_FREE, ExchangeDriver } from './exchange.js';
import { applyForwarded } from './forwarded.js';
import { HeadersRecord } from './headers.js';
import type { HeaderList } from './h2/hpack.js';
import { H2_ERROR, type H2Stream, type H2StreamHandler } from './h2/session.js';
import { UpLeg, type Leg, type LegOwner, type LegStream } from './h2leg.js';
import type { H2PoolWaiter, UpstreamSession } from './h2pool.js';
import { H1Leg } from './h2toh1.js';
import { h2RequestToH1, type H1RequestHead } from './translate.js';
import { connectFailure } from './tunnelup.js';
import type { Exchange, Headers, LocalReply, RequestHead, Source, Upstream, UpstreamGroup } from './types.js';

/** request body held while no upstream stream is there yet, before the client's stream window is held */
const MAX_UNSENT = 256 * 1024;
/** a stream refused unprocessed (REFUSED_STREAM, GOAWAY) is sent again on another session at most this often */
const MAX_REDISPATCH = 5;
/** methods an HTTP/1.1 leg may send again when a reused connection turns out closed (as http1.ts) */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** Who watches the route deadlines of a connection's exchanges (the client session: one timer for all). */
export interface DeadlineWatch {
  /** an exchange's route deadline (performance.now() ms): the timer fires by then */
  deadline(at: number): void;
}

/** the upstream list before start() made it (never written to) */
const NO_HEADERS: HeaderList = [];
// H2Exchange's bits of ExchangeDriver.bits
const F_GRPC = D_FREE;
const F_HEAD = D_FREE << 1;
/** no response header rewrite: the upstream's head goes on as it came */
const F_PLAIN_RESPONSE = D_FREE << 2;
/** the upstream stream asked us to wait (sendData false) */
const F_US_BLOCKED = D_FREE << 3;
/** the client's stream asked us to wait */
const F_DS_BLOCKED = D_FREE << 4;
const F_HEAD_SENT = D_FREE << 5;
const F_DONE = D_FREE << 6;
/** counted in info.streams */
const F_COUNTED = D_FREE << 7;

/**
 * An exchange's state that most proxied requests (a GET answered at the first try) never use, in an object of its
 * own made at the first use: the exchange is one object per request, and each field costs 8 bytes of it.
 */
class Rare {
  /** upstreamProtocol http1: the request head translated (h2toh1.ts), made once per request */
  h1: H1RequestHead | null = null;
  // the request body: kept whole while it may be replayed (within bufferLimitBytes), else only what is unsent
  body: Buffer[] = [];
  bodyBytes = 0;
  unsent = 0;
  reqTrailers: HeaderList | null = null;
  /** client bytes read and not yet counted back to its stream (held while the upstream cannot take more) */
  dsOwed = 0;
  tryTimer: NodeJS.Timeout | null = null;
  /** while the request body is coming: when its last bytes arrived (0: not watched) */
  lastBodyAt = 0;
  redispatched = 0;
  /** the pool's queue this exchange waits in for a session */
  waitingGroup: UpstreamGroup | null = null;
}

const HEAD_TOO_LARGE: LocalReply = Object.freeze({
  status: 431, headers: Object.freeze({}) as Headers, body: 'request header section too large\n',
});

/**
 * One request stream: the same exchange driver as HTTP/1.1 (exchange.ts), on h2 streams. It is the handler of
 * the client's stream (request body, trailers, reset, writable), the pool waiter of its attempts and the owner of
 * their upstream legs.
 */
export class H2Exchange extends ExchangeDriver implements H2StreamHandler, H2PoolWaiter, LegOwner {
  private leg: Leg | null = null;
  /** the request head as it goes upstream (set by start(); the shared empty list before) */
  private upHeaders: HeaderList = NO_HEADERS;
  /** what only some requests need (a body, trailers, a per-try timer, an HTTP/1.1 leg, a redispatch): made then */
  private rare: Rare | null = null;
  /**
   * The exchange's next deadline for the client session's timer (performance.now() ms; Infinity: none, or over): the
   * route's timeout once the request was received whole, before that the watch on a silent upload (lastBodyAt).
   */
  routeDeadline = Infinity;

  constructor(
    private readonly ctx: EngineContext,
    private readonly info: ConnInfo,
    private readonly client: DeadlineWatch,
    private readonly ds: H2Stream,
    endStream: boolean,
  ) {
    super();
    this.bits |= F_PLAIN_RESPONSE;
    this.bodyDone = endStream;
  }

  // ---- the state's accessors: bits of ExchangeDriver.bits, fields of rare (setting a rare field to its initial value makes none) ----

  private flag(bit: number, on: boolean): void { this.bits = on ? this.bits | bit : this.bits & ~bit; }
  private get isGrpc(): boolean { return (this.bits & F_GRPC) !== 0; }
  private set isGrpc(v: boolean) { this.flag(F_GRPC, v); }
  private get isHead(): boolean { return (this.bits & F_HEAD) !== 0; }
  private set isHead(v: boolean) { this.flag(F_HEAD, v); }
  private get plainResponse(): boolean { return (this.bits & F_PLAIN_RESPONSE) !== 0; }
  private set plainResponse(v: boolean) { this.flag(F_PLAIN_RESPONSE, v); }
  private get usBlocked(): boolean { return (this.bits & F_US_BLOCKED) !== 0; }
  private set usBlocked(v: boolean) { this.flag(F_US_BLOCKED, v); }
  private get dsBlocked(): boolean { return (this.bits & F_DS_BLOCKED) !== 0; }
  private set dsBlocked(v: boolean) { this.flag(F_DS_BLOCKED, v); }
  private get headSent(): boolean { return (this.bits & F_HEAD_SENT) !== 0; }
  private set headSent(v: boolean) { this.flag(F_HEAD_SENT, v); }
  private get done(): boolean { return (this.bits & F_DONE) !== 0; }
  private set done(v: boolean) { this.flag(F_DONE, v); }
  private get counted(): boolean { return (this.bits & F_COUNTED) !== 0; }
  private set counted(v: boolean) { this.flag(F_COUNTED, v); }

  private r(): Rare { return (this.rare ??= new Rare()); }
  private get h1(): H1RequestHead | null { return this.rare === null ? null : this.rare.h1; }
  private set h1(v: H1RequestHead | null) { if (this.rare !== null || v !== null) this.r().h1 = v; }
  private get bodyBytes(): number { return this.rare === null ? 0 : this.rare.bodyBytes; }
  private set bodyBytes(v: number) { if (this.rare !== null || v !== 0) this.r().bodyBytes = v; }
  private get unsent(): number { return this.rare === null ? 0 : this.rare.unsent; }
  private set unsent(v: number) { if (this.rare !== null || v !== 0) this.r().unsent = v; }
  private get reqTrailers(): HeaderList | null { return this.rare === null ? null : this.rare.reqTrailers; }
  private set reqTrailers(v: HeaderList | null) { if (this.rare !== null || v !== null) this.r().reqTrailers = v; }
  private get dsOwed(): number { return this.rare === null ? 0 : this.rare.dsOwed; }
  private set dsOwed(v: number) { if (this.rare !== null || v !== 0) this.r().dsOwed = v; }
  private get tryTimer(): NodeJS.Timeout | null { return this.rare === null ? null : this.rare.tryTimer; }
  private set tryTimer(v: NodeJS.Timeout | null) { if (this.rare !== null || v !== null) this.r().tryTimer = v; }
  private get lastBodyAt(): number { return this.rare === null ? 0 : this.rare.lastBodyAt; }
  private set lastBodyAt(v: number) { if (this.rare !== null || v !== 0) this.r().lastBodyAt = v; }
  private get waitingGroup(): UpstreamGroup | null { return this.rare === null ? null : this.rare.waitingGroup; }
  private set waitingGroup(v: UpstreamGroup | null) { if (this.rare !== null || v !== null) this.r().waitingGroup = v; }
  private get redispatched(): number { return this.rare === null ? 0 : this.rare.redispatched; }
  private set redispatched(v: number) { if (this.rare !== null || v !== 0) this.r().redispatched = v; }

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
    if (tooLarge) { this.ctx.stats.badRequests++; this.reply(HEAD_TOO_LARGE); return; }
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
    if (this.info.dst === null) { this.reply({ status: 421, headers: {}, body: 'connection was not redirected by sockmesh\n' }); return; }
    if (method === 'CONNECT') { this.reply({ status: 405, headers: {}, body: 'CONNECT is not supported\n' }); return; }
    if (method === '' || path === '') {
      this.ctx.stats.badRequests++;
      this.reply({ status: 400, headers: {}, body: 'bad request: no :method or :path\n' });
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
    if ('status' in r) { this.reply(r); return; }
    this.ex = r;
    const route = r.route;
    this.plainResponse = emptyRewrite(route.responseHeaders);
    let up = h;
    if (!emptyRewrite(route.requestHeaders) || route.forwarded !== undefined) {
      // rare: the list is made again from the rewritten record (the service's x-forwarded-*, then the route's rewrite)
      if (route.forwarded !== undefined) applyForwarded(headers, route.forwarded, this.info.address);
      rewriteHeaders(headers, route.requestHeaders);
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
    if (route.upstreamProtocol === 'http1') this.h1 = h2RequestToH1(up, head.hasBody);
    if (!this.bodyDone) {
      this.lastBodyAt = performance.now();
      this.routeDeadline = this.lastBodyAt + this.ctx.clientIdleTimeoutMs;
      this.client.deadline(this.routeDeadline);
    }
    this.firstAttempt();
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
    const r = this.r();
    r.lastBodyAt = performance.now();
    r.bodyBytes += d.length;
    if (this.replayable && r.bodyBytes > ex.bufferLimitBytes) {
      this.replayable = false;
      if (this.leg !== null) r.body.length = 0; // all of it was sent
    }
    const leg = this.leg;
    if (leg !== null && leg.us !== null) {
      if (this.replayable) r.body.push(d);
      if (!leg.us.sendData(d, false)) this.usBlocked = true;
      if (this.usBlocked) r.dsOwed += d.length;
      else this.ds.consumed(d.length);
    } else {
      r.body.push(d);
      r.unsent += d.length;
      if (r.unsent <= MAX_UNSENT) this.ds.consumed(d.length);
      else r.dsOwed += d.length;
    }
  }

  private onBodyEnd(): void {
    if (this.lastBodyAt !== 0) { this.lastBodyAt = 0; this.routeDeadline = Infinity; }
    this.bodyReceived();
    const leg = this.leg;
    if (leg !== null && leg.us !== null && !leg.sentEnd) this.endRequest(leg, leg.us);
  }

  private endRequest(leg: Leg, us: LegStream): void {
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

  // ---- the exchange loop (ExchangeDriver's hooks) ----

  protected get stopped(): boolean {
    return this.done;
  }

  protected startTry(perTryTimeoutMs: number): void {
    this.redispatched = 0;
    if (perTryTimeoutMs > 0) this.armTry(perTryTimeoutMs);
  }

  protected armTry(perTryTimeoutMs: number): void {
    if (this.tryTimer !== null) clearTimeout(this.tryTimer);
    this.tryTimer = setTimeout(H2Exchange.tryTimeout, perTryTimeoutMs, this);
  }

  protected armRoute(timeoutMs: number): void {
    this.routeDeadline = performance.now() + timeoutMs;
    this.client.deadline(this.routeDeadline);
  }

  protected acquire(): void {
    const up = this.attempt!.upstream;
    if (this.h1 !== null) { this.acquireH1(up); return; }
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
    const rare = this.rare;
    const endNow = this.bodyDone && (rare === null || (rare.body.length === 0 && rare.reqTrailers === null));
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
        this.attemptFailed(e.connected ? { kind: 'reset' } : connectFailure(e.denied));
      }
      return;
    }
    if (this.leg !== leg) return; // reset at once (and handled)
    leg.us = us;
    leg.sentEnd = endNow;
    this.flushBody(leg, us);
  }

  /** the attempt on an HTTP/1.1 backend (upstreamProtocol http1): a connection from the HTTP/1.1 pool */
  private acquireH1(up: Upstream): void {
    const leg = new H1Leg(this, this.ctx.pool, up, this.h1!, this.isHead, IDEMPOTENT.has(this.head!.method));
    this.leg = leg;
    this.usBlocked = false;
    if (!leg.start()) { this.leg = null; this.attemptFailed({ kind: 'overflow', limit: 'max-pending-requests' }); }
  }

  /** an HTTP/1.1 leg wrote the request head: the body follows */
  upReady(leg: Leg): void {
    if (leg !== this.leg || this.attempt === null || this.done) return;
    if (this.h1!.expectContinue && !this.resStarted && !this.ds.closed) this.ds.sendHeaders([':status', '100'], false);
    this.flushBody(leg, leg.us!);
  }

  /** what the client sent so far goes out on the attempt's leg (ended when the client's side is) */
  private flushBody(leg: Leg, us: LegStream): void {
    const rare = this.rare;
    if (rare !== null) {
      const body = rare.body;
      for (let i = 0, last = body.length - 1; i <= last; i++) {
        const fin = i === last && this.bodyDone && rare.reqTrailers === null;
        if (!us.sendData(body[i]!, fin)) this.usBlocked = true;
        if (fin) leg.sentEnd = true;
      }
    }
    if (this.bodyDone && !leg.sentEnd) this.endRequest(leg, us);
    if (rare !== null) {
      rare.unsent = 0;
      if (!this.replayable) rare.body.length = 0;
    }
    if (!this.usBlocked) this.releaseDs();
  }

  /** the upstream can take more of the request body */
  upWritable(leg: Leg): void {
    if (leg !== this.leg) return;
    this.usBlocked = false;
    this.releaseDs();
  }

  upHead(leg: Leg, h: HeaderList, endStream: boolean): void {
    if (leg !== this.leg || this.attempt === null) return;
    let statusText = '', gs: string | undefined;
    for (let i = 0; i < h.length; i += 2) {
      const name = h[i]!;
      if (name === ':status') statusText = h[i + 1]!;
      else if (name === 'grpc-status') gs = h[i + 1]!;
    }
    const status = Number(statusText);
    if (status >= 100 && status < 200 && !endStream) {
      // informational (100 Continue to the client's Expect, which went upstream with the request; 103 Early Hints):
      // passed on as it came while no final answer was begun (RFC 9110 15.2: a proxy forwards 1xx responses)
      if (!this.resStarted && !this.ds.closed) this.ds.sendHeaders(h, false);
      return;
    }
    if (!(status >= 200 && status <= 999)) {
      this.ctx.log.debug({ upstream: leg.key, status: statusText }, 'upstream h2 response without a valid :status');
      this.dropLeg(H2_ERROR.PROTOCOL_ERROR);
      this.attemptFailed({ kind: 'reset' });
      return;
    }
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null; }
    // retried: the leg is let go (its stream cancelled)
    if (this.responseHead(status, gs === undefined ? undefined : Number(gs))) return;
    this.resStarted = true;
    this.resStatus = status;
    const ds = this.ds;
    if (ds.closed) { this.clientClosed(); return; }
    // (the session passed a well-formed head only: :status first and alone, no connection-specific field)
    let out = h;
    if (!this.plainResponse) {
      const rw = this.ex!.route.responseHeaders;
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

  upData(leg: Leg, d: Buffer, endStream: boolean): void {
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

  upTrailers(leg: Leg, h: HeaderList): void {
    if (leg !== this.leg || !this.headSent || this.done) return;
    // (well-formed: no pseudo-header or connection-specific field)
    for (let i = 0; i < h.length; i += 2) if (h[i] === 'grpc-status') this.grpcStatus = Number(h[i + 1]);
    if (h.length > 0) this.ds.sendTrailers(h);
    else this.ds.end();
    this.legDone(leg);
    this.finishExchange();
  }

  /** the upstream stream ended abnormally (its RST_STREAM, the session died, GOAWAY) */
  upReset(leg: Leg, code: number): void {
    if (leg !== this.leg) return;
    this.leg = null;
    if (!leg.ended) { leg.ended = true; leg.release(); }
    if (this.resStarted) {
      if (!this.done) {
        this.ctx.log.debug({ upstream: leg.key, code }, 'upstream stream failed mid-response; client stream reset');
        this.abortClient();
      }
      return;
    }
    if (this.attempt === null) return;
    this.ctx.log.debug({ upstream: leg.key, code }, 'upstream stream closed before the response head');
    if (!leg.connected) { this.attemptFailed(connectFailure(leg.denied)); return; }
    // REFUSED_STREAM (also: above a GOAWAY's last stream id) guarantees the application never saw the request:
    // it goes again on another session, as the same attempt. (A burst on a new session, before the peer's
    // SETTINGS told its limit, can be refused in part.)
    if (code === H2_ERROR.REFUSED_STREAM && this.replayable && this.redispatched++ < MAX_REDISPATCH) { this.acquire(); return; }
    this.attemptFailed({ kind: 'reset' });
  }

  /** the upstream's response is complete: its stream is given back */
  private legDone(leg: Leg): void {
    if (this.leg === leg) this.leg = null;
    if (leg.ended) return;
    leg.ended = true;
    // the rest of the request is not wanted any more
    if (!leg.sentEnd && leg.us !== null && !leg.us.closed) leg.us.reset(H2_ERROR.CANCEL);
    leg.release();
  }

  /** the attempt's stream is abandoned (retry, timeout, client gone) */
  private dropLeg(code: number): void {
    const leg = this.leg;
    if (leg === null) return;
    this.leg = null;
    if (leg.ended) return;
    leg.ended = true;
    if (leg.us !== null && !leg.us.closed) leg.us.reset(code);
    leg.release();
  }

  private static tryTimeout(x: H2Exchange): void {
    x.tryTimer = null;
    try { x.tryTimedOut(); } catch (e) { x.fatal(e); }
  }

  /** routeDeadline is here (the client session's sweep): the route's timeout is over, or the upload is watched */
  routeDue(): void {
    this.routeDeadline = Infinity;
    try {
      if (this.lastBodyAt === 0) { this.routeTimedOut(); return; }
      const at = this.lastBodyAt + this.ctx.clientIdleTimeoutMs;
      if (at <= performance.now()) { this.lastBodyAt = 0; this.uploadStalled(); return; }
      this.routeDeadline = at; // bytes came meanwhile: watched on
      this.client.deadline(at);
    } catch (e) { this.fatal(e); }
  }

  /** the attempt's per-try timer, its place in the pool's queue and its stream are let go */
  protected releaseAttempt(): void {
    if (this.tryTimer !== null) { clearTimeout(this.tryTimer); this.tryTimer = null; }
    if (this.waitingGroup !== null) { this.ctx.h2pool.cancel(this, this.waitingGroup); this.waitingGroup = null; }
    this.dropLeg(H2_ERROR.CANCEL);
  }

  /** an answer made here; gRPC clients get a trailers-only response with a grpc-status they understand */
  protected reply(r: LocalReply): void {
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
    this.lastBodyAt = 0;
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
    if (this.rare !== null) this.rare.body.length = 0;
    // the rest of a request body is read and dropped (the client may still be sending it)
    this.releaseDs();
    if (ex !== null) ex.end(this.resStatus, this.grpcStatus);
  }

  /** a response under way cannot be finished: the client's stream is reset, so a cut body is never taken for whole */
  protected abortClient(): void {
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
    this.cancelAttempt();
    const ex = this.ex;
    this.ex = null;
    if (this.rare !== null) this.rare.body.length = 0;
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
