// One accepted HTTP/1.1 client connection: the hand-written parser reads requests, the policy decides,
// the exchange loop runs attempts on pooled upstream connections and streams bodies both ways.
//
// Requests on a connection are answered strictly in order: a pipelined request is parsed only after
// the previous response is complete (its bytes wait in the input buffer, the socket is paused when
// they pile up). Everything per request lives in fields of this object, and the timers and callbacks
// are bound once per connection: the hot path allocates the request head, the policy's objects and
// the strings it writes, little else.
import type { Conn } from './conn.js';
import { emptyRewrite, rewriteHeaders, statusText, type ConnInfo, type EngineContext } from './engine.js';
import { ExchangeDriver } from './exchange.js';
import { applyForwarded } from './forwarded.js';
import { ChunkedDecoder, Framing, ParseError, RequestHeadParse, type ChunkSink } from './h1parse.js';
import { ACQ_OVERFLOW, ACQ_PENDING, type H1Upstream, type UpstreamUser } from './h1pool.js';
import type { HeaderList } from './h2/hpack.js';
import { H2_ERROR } from './h2/session.js';
import { H2Link, type H2LinkOwner } from './h1toh2.js';
import { h1RequestToH2, type ResponseHead } from './translate.js';
import { connectFailure } from './tunnelup.js';
import type { Attempt, Exchange, Headers, LocalReply, RequestHead, Source } from './types.js';

const BODY_NONE = 0, BODY_LENGTH = 1, BODY_CHUNKED = 2;
/** unsent request body held while no upstream connection is there yet, before the client is paused */
const MAX_UNSENT = 256 * 1024;
/** a connection that sent a bad request or asked to close gets this long to read our answer */
const LINGER_MS = 5000;
/** draining (a planned restart): a keep-alive connection between requests gets this long for its last one (default) */
export const DRAIN_IDLE_MS = 1000;
/** an idle close that found the client's bytes waiting looks again this much later if they were no request */
const IDLE_CLOSE_RECHECK_MS = 50;
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);
const CONTINUE_100 = 'HTTP/1.1 100 Continue\r\n\r\n';
/** a response head and body bytes up to this size go out in one write */
const COALESCE_MAX = 16 * 1024;

export class H1Conn extends ExchangeDriver implements UpstreamUser, ChunkSink, H2LinkOwner {
  private buf: Buffer | null = null;
  private readonly req = new RequestHeadParse();
  private readonly chunked = new ChunkedDecoder();
  private readonly source: Source;
  private dead = false;
  private paused = false;
  private driving = false;
  private again = false;

  // the request being read
  private bodyState = BODY_NONE;
  private bodyRemaining = 0;

  // the exchange (busy from the request head until the response is complete)
  private busy = false;
  private closeAfter = false;
  private up: H1Upstream | null = null;
  /** upstreamProtocol h2: the attempt's stream (h1toh2.ts), and the request head translated once per request */
  private h2: H2Link | null = null;
  private upH2: HeaderList | null = null;
  private waitingGroup: Attempt['upstream']['group'] | null = null;
  /** the upstream request head: made (requestHeadString), or the client's own bytes when they can go as they came */
  private upReq: string | Buffer = '';
  /** the read the request head was parsed from, and where the head ends in it (RequestHeadParse.verbatim) */
  private reqBuf: Buffer | null = null;
  private reqEnd = 0;
  private isHeadReq = false;
  private upgradeReq: string | undefined;
  private expectContinue = false;
  private sentContinue = false;
  private staleRedispatch = 0;

  // the request body: kept whole while it may be replayed (within bufferLimitBytes), else only what is unsent
  private body: Buffer[] = [];
  private bodySent = 0;
  private bodyBytes = 0;
  private unsentBytes = 0;
  private reqChunked = false;
  private reqTrailers = '';

  // the response
  private resChunked = false;
  private resCloseDelimited = false;
  /**
   * the response head, written with the first body bytes (one write for a small response): made here, or the
   * upstream's own bytes when they can pass as they are (writeResponseHead)
   */
  private pendingHead: string | Buffer | null = null;

  private headTimer: NodeJS.Timeout | null = null;
  private readonly onHeadTimeout = (): void => {
    this.headTimer = null;
    if (this.dead || this.busy) return;
    this.closeAfter = true;
    this.writeLocal(408, null, 'request head not received in time\n');
    this.finishConnection();
  };
  // The per-try and route timeouts are deadlines (performance.now() ms, 0 = none) served by one lazy
  // timer per connection: a request that ends leaves the timer armed, the next request's later
  // deadline keeps it, and when it fires early it re-arms for what is left. A keep-alive connection
  // doing fast requests thus creates a timer every timeoutMs, not one per request.
  private tryDeadline = 0;
  private routeDeadline = 0;
  /** set while no exchange is under way: the keep-alive idle timeout (no socket timer refreshed on every read) */
  private idleDeadline = 0;
  /** while a request body is coming: when its last bytes arrived (0: not watched); silence for clientIdleTimeoutMs is 408 */
  private lastBodyAt = 0;
  private deadlineTimer: NodeJS.Timeout | null = null;
  private timerAt = 0;
  private readonly onDeadline = (): void => {
    this.deadlineTimer = null;
    try {
      const now = performance.now();
      if (this.idleDeadline !== 0 && now >= this.idleDeadline && !this.busy && this.closeIdle()) return;
      if (this.tryDeadline !== 0 && now >= this.tryDeadline) { this.tryDeadline = 0; this.tryTimedOut(); }
      if (this.routeDeadline !== 0 && now >= this.routeDeadline) { this.routeDeadline = 0; this.routeTimedOut(); }
      if (this.lastBodyAt !== 0 && now >= this.lastBodyAt + this.ctx.clientIdleTimeoutMs) { this.lastBodyAt = 0; this.uploadStalled(); }
      this.armDeadline();
    } catch (e) { this.fatal(e); }
  };

  constructor(private readonly ctx: EngineContext, private readonly socket: Conn, private readonly info: ConnInfo, first: Buffer) {
    super();
    this.source = { address: info.address, port: info.port, cgroupId: info.dst?.cgroupId ?? 0n };
    socket.on('data', (d: Buffer) => { try { this.onData(d); } catch (e) { this.fatal(e); } });
    socket.on('close', () => { try { this.onClientClose(); } catch (e) { this.fatal(e); } });
    // idle keep-alive connections are closed; a connection with an exchange under way is the exchange's business
    this.idleDeadline = performance.now() + ctx.clientIdleTimeoutMs;
    this.armDeadline();
    socket.on('error', () => { /* 'close' follows */ });
    socket.on('drain', () => {
      if (this.up !== null) this.up.socket.resume();
      else if (this.h2 !== null) this.h2.clientDrained();
    });
    ctx.stats.connectionsH1++;
    try { this.onData(first); } catch (e) { this.fatal(e); }
  }

  /**
   * A bug somewhere below (the policy included) threw: this connection and its upstream are dropped,
   * the process lives on. The policy hears end(0) once if it had not heard end yet.
   */
  fatal(e: unknown): void {
    this.ctx.log.error({ err: e, peer: `${this.info.address}:${this.info.port}` }, 'proxy connection failed; closed');
    this.dead = true;
    this.clearTimers();
    if (this.headTimer !== null) { clearTimeout(this.headTimer); this.headTimer = null; }
    if (this.waitingGroup !== null) { const g = this.waitingGroup; this.waitingGroup = null; try { this.ctx.pool.cancel(this, g); } catch { /* already broken */ } }
    if (this.up !== null) { const c = this.up; this.up = null; c.destroy(); }
    if (this.h2 !== null) { const l = this.h2; this.h2 = null; try { l.drop(); } catch { /* already broken */ } }
    this.socket.destroy();
    const ex = this.ex;
    this.ex = null;
    this.attempt = null;
    if (ex !== null) { try { ex.end(0); } catch { /* already broken */ } }
  }

  // ---- reading requests ----

  private onData(d: Buffer): void {
    if (this.dead) return;
    this.buf = this.buf === null ? d : Buffer.concat([this.buf, d]);
    this.drive();
  }

  /** parse and dispatch what the input buffer holds, re-entrancy safe (a local reply ends an exchange synchronously) */
  private drive(): void {
    if (this.driving) { this.again = true; return; }
    this.driving = true;
    try {
      do {
        this.again = false;
        this.step();
      } while (this.again && !this.dead);
    } finally {
      this.driving = false;
    }
  }

  private step(): void {
    while (!this.dead && this.buf !== null) {
      if (this.bodyState !== BODY_NONE) {
        if (!this.readBody()) return;
        continue;
      }
      if (this.busy) {
        // A pipelined request waits for the response before it; stop reading when too much piles up.
        if (this.buf.length > this.ctx.maxHeaderBytes && !this.paused) { this.paused = true; this.socket.pause(); }
        return;
      }
      const n = this.req.parse(this.buf, 0, this.ctx.maxHeaderBytes);
      if (n === 0) {
        // only a head that arrives in pieces pays for a timer
        if (this.headTimer === null) this.headTimer = setTimeout(this.onHeadTimeout, this.ctx.headTimeoutMs);
        return;
      }
      if (this.headTimer !== null) { clearTimeout(this.headTimer); this.headTimer = null; }
      if (n < 0) { this.badRequest(-n as ParseError); return; }
      this.reqBuf = this.buf;
      this.reqEnd = n;
      this.buf = n < this.buf.length ? this.buf.subarray(n) : null;
      this.startRequest();
    }
    if (this.paused && !this.busy && !this.dead) { this.paused = false; this.socket.resume(); }
  }

  /** feed request body bytes from the buffer; false when more are needed */
  private readBody(): boolean {
    const buf = this.buf!;
    if (this.bodyState === BODY_LENGTH) {
      const take = Math.min(this.bodyRemaining, buf.length);
      this.buf = take < buf.length ? buf.subarray(take) : null;
      this.bodyRemaining -= take;
      this.chunkData(take === buf.length ? buf : buf.subarray(0, take));
      if (this.bodyRemaining === 0) { this.bodyState = BODY_NONE; this.bodyEnd(); }
    } else {
      const n = this.chunked.feed(buf, 0, this, this.ctx.maxHeaderBytes);
      if (n < 0) { this.bodyError(this.chunked.error); return false; }
      this.buf = n < buf.length ? buf.subarray(n) : null;
      if (this.chunked.done) { this.bodyState = BODY_NONE; this.bodyEnd(); }
    }
    return this.bodyState === BODY_NONE || this.buf !== null;
  }

  private badRequest(code: ParseError): void {
    this.ctx.stats.badRequests++;
    const why = this.req.error;
    this.ctx.log.debug({ peer: `${this.info.address}:${this.info.port}`, why }, 'bad HTTP/1.1 request');
    const status = code === ParseError.TooLarge ? 431 : code === ParseError.Version ? 505 : code === ParseError.NotImplemented ? 501 : 400;
    this.closeAfter = true;
    this.writeLocal(status, null, `${statusText(status).toLowerCase()}: ${why}\n`);
    this.finishConnection();
  }

  private startRequest(): void {
    const req = this.req;
    const ctx = this.ctx;
    ctx.stats.requests++;
    this.busy = true;
    this.idleDeadline = 0;
    // draining (a planned restart): this is the connection's last request; the next connection goes to the new agent
    this.closeAfter = req.close || ctx.draining === true;
    this.isHeadReq = req.method === 'HEAD';
    this.expectContinue = req.expectContinue && req.minor === 1;
    this.sentContinue = false;
    this.upgradeReq = req.upgrade;
    // request body framing: the upstream gets the same framing (length or chunked)
    this.bodyState = req.framing === Framing.Length ? BODY_LENGTH : req.framing === Framing.Chunked ? BODY_CHUNKED : BODY_NONE;
    this.bodyRemaining = req.contentLength;
    this.reqChunked = req.framing === Framing.Chunked;
    if (this.reqChunked) this.chunked.reset();
    this.bodyDone = this.bodyState === BODY_NONE;
    if (this.body.length !== 0) this.body = [];
    this.bodySent = 0;
    this.bodyBytes = 0;
    this.unsentBytes = 0;
    this.replayable = true;
    this.reqTrailers = '';
    this.resStarted = false;
    this.resStatus = 0;
    this.grpcStatus = undefined;
    this.n = 0;
    this.staleRedispatch = 0;

    // request-target: origin-form; absolute-form (a client that thinks we are a proxy); * for OPTIONS
    let path = req.target;
    let authority = req.host ?? '';
    if (path.charCodeAt(0) !== 47 /* / */) {
      const abs = absoluteForm(path);
      if (abs !== null) { authority = abs[0]; path = abs[1]; }
      else if (!(path === '*' && req.method === 'OPTIONS')) {
        this.closeAfter = true;
        const status = req.method === 'CONNECT' ? 405 : 400;
        this.reply({ status, headers: {}, body: status === 405 ? 'CONNECT is not supported\n' : 'bad request-target\n' });
        return;
      }
    }
    if (this.info.dst === null) {
      // Not redirected by the kernel: nobody should connect to the proxy port directly.
      this.closeAfter = true;
      this.reply({ status: 421, headers: {}, body: 'connection was not redirected by sockmesh\n' });
      return;
    }
    const headers = req.headers;
    const ct = headers['content-type'];
    const head: RequestHead = {
      method: req.method,
      path,
      authority,
      headers,
      protocol: 'http1',
      grpc: typeof ct === 'string' && ct.startsWith('application/grpc'),
      hasBody: this.bodyState !== BODY_NONE,
    };
    this.head = head;
    let r: Exchange | LocalReply;
    try {
      r = ctx.policy.begin(this.info.dst, this.source, head);
    } catch (e) {
      ctx.log.error({ err: e }, 'policy.begin failed');
      this.closeAfter = true;
      this.reply({ status: 500, headers: {}, body: 'internal error\n' });
      return;
    }
    if ('status' in r) { this.reply(r); return; }
    const ex = r;
    this.ex = ex;
    // the service's x-forwarded-* first, then the route's rewrite (which may set or remove them), as Envoy orders them
    if (ex.route.forwarded !== undefined) applyForwarded(headers, ex.route.forwarded, this.info.address);
    if (!emptyRewrite(ex.route.requestHeaders)) rewriteHeaders(headers, ex.route.requestHeaders);
    if (ex.route.upstreamProtocol === 'h2') {
      // (an Upgrade cannot cross to HTTP/2: the request goes as a plain one)
      const dst = this.info.dst;
      const where = dst.vip.includes(':') ? `[${dst.vip}]:${dst.port}` : `${dst.vip}:${dst.port}`;
      this.upH2 = h1RequestToH2(head, req.teTrailers, req.hasContentLength ? req.contentLength : -1, where);
      this.upgradeReq = undefined;
    } else {
      this.upH2 = null;
      const rb = this.reqBuf!;
      // The client's head goes as it came when it says what the one made here would (RequestHeadParse.verbatim) and
      // nothing rewrites it: no string of ~60-400 bytes built and flattened per request; the whole read itself when
      // it held just the head (a keep-alive client's GET), no view of it.
      if (req.verbatim && authority === req.host && ex.route.forwarded === undefined && emptyRewrite(ex.route.requestHeaders)) {
        this.upReq = req.headStart === 0 && this.reqEnd === rb.length ? rb : rb.subarray(req.headStart, this.reqEnd);
      } else this.upReq = this.requestHeadString(head);
    }
    this.reqBuf = null;
    if (!this.bodyDone) { this.lastBodyAt = performance.now(); this.armDeadline(); }
    this.firstAttempt();
  }

  /** the upstream request head, once per request (a retry writes the same) */
  private requestHeadString(head: RequestHead): string {
    let s = `${head.method} ${head.path} HTTP/1.1\r\nhost: ${head.authority}\r\n`;
    const h = head.headers;
    for (const name in h) {
      const v = h[name]!;
      if (typeof v === 'string') s += `${name}: ${v}\r\n`;
      else for (let i = 0; i < v.length; i++) s += `${name}: ${v[i]}\r\n`;
    }
    if (this.req.teTrailers) s += 'te: trailers\r\n';
    if (this.req.hasContentLength) s += `content-length: ${this.req.contentLength}\r\n`;
    else if (this.reqChunked) s += 'transfer-encoding: chunked\r\n';
    if (this.upgradeReq !== undefined) s += `connection: upgrade\r\nupgrade: ${this.upgradeReq}\r\n`;
    return s + '\r\n';
  }

  // ---- the exchange loop (ExchangeDriver's hooks) ----

  protected get stopped(): boolean {
    return this.dead;
  }

  protected startTry(perTryTimeoutMs: number): void {
    if (perTryTimeoutMs > 0) this.armTry(perTryTimeoutMs);
  }

  protected armTry(perTryTimeoutMs: number): void {
    this.tryDeadline = performance.now() + perTryTimeoutMs;
    this.armDeadline();
  }

  protected armRoute(timeoutMs: number): void {
    this.routeDeadline = performance.now() + timeoutMs;
    this.armDeadline();
  }

  protected acquire(): void {
    const up = this.attempt!.upstream;
    if (this.upH2 !== null) { this.acquireH2(up); return; }
    const got = this.ctx.pool.acquire(up, this);
    if (got === ACQ_PENDING) this.waitingGroup = up.group;
    else if (got === ACQ_OVERFLOW) this.attemptFailed({ kind: 'overflow', limit: 'max-pending-requests' });
    else this.upReady(got);
  }

  upReady(c: H1Upstream): void {
    this.waitingGroup = null;
    if (this.attempt === null || this.dead) { c.release(true); return; }
    this.up = c;
    c.begin(this, this.isHeadReq);
    this.continue100();
    const us = c.socket;
    const body = this.body;
    const uh = this.upReq;
    if (body.length === 0 && this.bodyDone && !this.reqChunked) {
      if (typeof uh === 'string') us.write(uh, 'latin1');
      else us.write(uh);
    } else {
      us.cork();
      if (typeof uh === 'string') us.write(uh, 'latin1');
      else us.write(uh);
      for (let i = 0; i < body.length; i++) this.writeBody(us, body[i]!);
      if (this.bodyDone) this.writeBodyEnd(us);
      us.uncork();
      if (this.replayable) this.bodySent = body.length;
      else { body.length = 0; this.bodySent = 0; }
      this.unsentBytes = 0;
      if (this.paused && this.busy) { this.paused = false; this.socket.resume(); }
    }
  }

  /** the attempt on an HTTP/2 backend (upstreamProtocol h2): a stream from the HTTP/2 pool */
  private acquireH2(up: Attempt['upstream']): void {
    const link = new H2Link(this, this.ctx.h2pool, up, this.upH2!, !this.head!.hasBody, this.isHeadReq);
    this.h2 = link;
    if (!link.start()) { this.h2 = null; this.attemptFailed({ kind: 'overflow', limit: 'max-pending-requests' }); }
  }

  h2Ready(link: H2Link): void {
    if (link !== this.h2 || this.attempt === null || this.dead) return;
    this.continue100();
    const body = this.body;
    let ok = true;
    for (let i = 0; i < body.length; i++) if (!link.sendData(body[i]!)) ok = false;
    if (this.bodyDone) link.endRequest(this.reqTrailers);
    if (this.replayable) this.bodySent = body.length;
    else { body.length = 0; this.bodySent = 0; }
    this.unsentBytes = 0;
    if (!ok && !this.paused) { this.paused = true; this.socket.pause(); }
    else if (ok && this.paused && this.busy) { this.paused = false; this.socket.resume(); }
  }

  h2Head(link: H2Link, res: ResponseHead, endStream: boolean): void {
    if (link !== this.h2 || this.attempt === null) return;
    this.tryDeadline = 0;
    let grpcStatus: number | undefined;
    if (this.head!.grpc) {
      const i = res.names.indexOf('grpc-status');
      if (i >= 0) grpcStatus = Number(res.values[i]);
    }
    if (this.responseHead(res.status, grpcStatus)) return;
    this.writeResponseHead(res);
    if (endStream) this.h2Trailers(link, '');
    else this.upFlush();
  }

  h2Data(link: H2Link, data: Buffer, endStream: boolean): void {
    if (link !== this.h2 || !this.resStarted) {
      if (link.us !== null && !link.us.closed) link.us.consumed(data.length);
      return;
    }
    if (data.length > 0) {
      if (this.writeResBody(data)) link.us!.consumed(data.length);
      else link.owed += data.length;
    }
    if (endStream) this.h2Trailers(link, '');
  }

  /** the response is complete (with a trailer section, or '') */
  h2Trailers(link: H2Link, trailers: string): void {
    if (link !== this.h2) return;
    this.h2 = null;
    this.writeResEnd(trailers);
    link.done();
    this.responseEnded();
  }

  h2Reset(link: H2Link, code: number): void {
    if (link !== this.h2) return;
    this.h2 = null;
    if (this.upstreamGone(link.key, code)) return;
    if (!link.connected) { this.attemptFailed(connectFailure(link.denied)); return; }
    // REFUSED_STREAM (or above a GOAWAY's last stream id): the backend never saw it; it goes again elsewhere
    if (code === H2_ERROR.REFUSED_STREAM && this.replayable && this.staleRedispatch++ < 5) { this.acquire(); return; }
    this.attemptFailed({ kind: 'reset' });
  }

  upConnectFailed(denied?: boolean): void {
    this.waitingGroup = null;
    if (this.attempt === null) return;
    this.attemptFailed(connectFailure(denied));
  }

  private continue100(): void {
    if (this.expectContinue && !this.sentContinue && !this.resStarted) {
      // We answer 100-continue ourselves when forwarding starts (the upstream never sees Expect):
      // no deadlock whatever the upstream does with it.
      this.sentContinue = true;
      this.socket.write(CONTINUE_100, 'latin1');
    }
  }

  private writeBody(us: Conn, data: Buffer): boolean {
    if (!this.reqChunked) return us.write(data);
    us.write(`${data.length.toString(16)}\r\n`, 'latin1');
    us.write(data);
    return us.write('\r\n', 'latin1');
  }

  private writeBodyEnd(us: Conn): void {
    if (this.reqChunked) us.write(`0\r\n${this.reqTrailers}\r\n`, 'latin1');
  }

  /** request body bytes (ChunkSink for chunked bodies, called directly for content-length) */
  chunkData(data: Buffer): void {
    if (data.length === 0) return;
    if (this.ex === null) return; // answered already: the rest of the body is read and dropped
    this.lastBodyAt = performance.now();
    const limit = this.ex.bufferLimitBytes;
    this.bodyBytes += data.length;
    if (this.replayable && this.bodyBytes > limit) {
      // From here the body is streamed only: keep just what the upstream has not had yet.
      this.replayable = false;
      this.body.splice(0, this.bodySent);
      this.bodySent = 0;
    }
    const up = this.up;
    if (up !== null) {
      if (this.replayable) { this.body.push(data); this.bodySent++; }
      if (!this.writeBody(up.socket, data) && !this.paused) {
        this.paused = true;
        this.socket.pause();
      }
    } else if (this.h2 !== null && this.h2.us !== null) {
      if (this.replayable) { this.body.push(data); this.bodySent++; }
      if (!this.h2.sendData(data) && !this.paused) { this.paused = true; this.socket.pause(); }
    } else {
      this.body.push(data);
      this.unsentBytes += data.length;
      if (this.unsentBytes > MAX_UNSENT && !this.paused) { this.paused = true; this.socket.pause(); }
    }
  }

  chunkEnd(trailers: string): void {
    this.reqTrailers = trailers;
  }

  private bodyEnd(): void {
    this.lastBodyAt = 0;
    this.bodyReceived();
    if (this.up !== null && this.ex !== null) this.writeBodyEnd(this.up.socket);
    else if (this.h2 !== null && this.h2.us !== null && this.ex !== null) this.h2.endRequest(this.reqTrailers);
  }

  /** the request body's chunked framing is broken */
  private bodyError(why: string): void {
    this.ctx.stats.badRequests++;
    this.ctx.log.debug({ peer: `${this.info.address}:${this.info.port}`, why }, 'bad request body');
    this.bodyState = BODY_NONE;
    this.buf = null;
    this.closeAfter = true;
    if (this.ex !== null && !this.resStarted) {
      this.abortAttempt({ kind: 'cancelled' });
      this.reply({ status: 400, headers: {}, body: `bad request: ${why}\n` });
    } else if (this.ex !== null) {
      this.abortClient();
    } else this.finishConnection();
  }

  upDrain(): void {
    if (this.paused && !this.dead) { this.paused = false; this.socket.resume(); }
  }

  upHead(c: H1Upstream): void {
    if (c !== this.up || this.attempt === null) return;
    const res = c.res;
    const status = res.status;
    this.tryDeadline = 0;
    if (status === 101) {
      if (this.upgradeReq === undefined || res.upgrade === undefined) {
        // The socket is still open (upFail normally follows its close): destroy it, or it stays counted against the
        // group's max connections for as long as the backend keeps it.
        c.destroy();
        this.upFail(c, 'unexpected 101 response');
        return;
      }
      this.upgraded(c);
      return;
    }
    let grpcStatus: number | undefined;
    if (this.head!.grpc) {
      const i = res.names.indexOf('grpc-status');
      if (i >= 0) grpcStatus = Number(res.values[i]);
    }
    // Retried: the rest of this response is not wanted, and the connection cannot be reused mid-body (released).
    if (this.responseHead(status, grpcStatus)) return;
    if (this.writeResponseHead(c.res, c.rawHead) && c.rawWhole) c.rawTaken = true;
  }

  /** a 103 (or other interim head) from the upstream: passed on to an HTTP/1.1 client before the final answer (RFC 9110 15.2) */
  upInformational(c: H1Upstream): void {
    if (c === this.up) this.writeInformational(c.res);
  }

  h2Informational(link: H2Link, res: ResponseHead): void {
    if (link === this.h2) this.writeInformational(res);
  }

  private writeInformational(res: ResponseHead): void {
    if (this.resStarted || this.req.minor !== 1) return; // (never to an HTTP/1.0 client)
    let s = `HTTP/1.1 ${res.status} ${res.reason}\r\n`;
    for (let i = 0; i < res.names.length; i++) s += `${res.names[i]}: ${res.values[i]}\r\n`;
    this.socket.write(s + '\r\n', 'latin1');
  }

  /**
   * raw: the upstream's head as read, when it is HTTP/1.1 with one content-length and no framing or connection field
   * (ResponseHeadParse.verbatim). If nothing is to be added or rewritten either, it goes out as it came: the same
   * status line, fields and length the head below would say, without building it (a string of ~380 bytes per
   * request and its flattening, the largest allocations of a proxied HTTP/1.1 request), field names in the upstream's
   * case and order. true: raw was taken so (with the body when it holds it: H1Upstream.rawWhole).
   */
  private writeResponseHead(res: ResponseHead, raw: Buffer | null = null): boolean {
    const status = res.status;
    this.resStarted = true;
    this.resStatus = status;
    const minor = this.req.minor;
    const rw = this.ex!.route.responseHeaders;
    if (raw !== null && minor === 1 && !this.closeAfter && this.ctx.draining !== true && res.framing === Framing.Length && emptyRewrite(rw)) {
      this.resChunked = false;
      this.resCloseDelimited = false;
      this.pendingHead = raw;
      return true;
    }
    let s = `HTTP/1.1 ${status} ${res.reason}\r\n`;
    const names = res.names, values = res.values;
    if (emptyRewrite(rw)) {
      for (let i = 0; i < names.length; i++) s += `${names[i]}: ${values[i]}\r\n`;
    } else {
      for (let i = 0; i < names.length; i++) {
        const name = names[i]!;
        if (rw.remove.includes(name) || rw.set[name] !== undefined) continue;
        s += `${name}: ${values[i]}\r\n`;
      }
      for (const name in rw.set) s += `${name}: ${rw.set[name]}\r\n`;
    }
    this.resChunked = false;
    this.resCloseDelimited = false;
    switch (res.framing) {
      case Framing.None:
        if (res.hasContentLength && status !== 204 && status >= 200) s += `content-length: ${res.contentLength}\r\n`;
        break;
      case Framing.Length:
        s += `content-length: ${res.contentLength}\r\n`;
        break;
      default: // chunked or until close
        if (minor === 1) { s += 'transfer-encoding: chunked\r\n'; this.resChunked = true; }
        else { this.resCloseDelimited = true; this.closeAfter = true; }
    }
    if (this.ctx.draining === true) this.closeAfter = true;
    if (this.closeAfter) s += 'connection: close\r\n';
    else if (minor === 0) s += 'connection: keep-alive\r\n';
    s += '\r\n';
    // Not written yet: the body bytes that came with it (upData, upEnd) go out in the same write, and
    // what is still held when the upstream's read is processed is flushed then (upFlush).
    this.pendingHead = s;
    return false;
  }

  upFlush(): void {
    const head = this.pendingHead;
    if (head !== null) { this.pendingHead = null; this.socket.write(head, 'latin1'); }
  }

  upData(c: H1Upstream, data: Buffer): void {
    if (c !== this.up || !this.resStarted) return;
    if (!this.writeResBody(data)) c.socket.pause(); // resumed on the client's 'drain'
  }

  /** response body bytes to the client (with the head if it is still held); false: the client's socket is full */
  private writeResBody(data: Buffer): boolean {
    const sock = this.socket;
    let ok: boolean;
    const head = this.pendingHead;
    if (head !== null && typeof head !== 'string') {
      // the upstream's head as read: the body that came in the same read follows it in memory, one view holds both
      this.pendingHead = null;
      if (head.buffer === data.buffer && head.byteOffset + head.length === data.byteOffset) {
        ok = sock.write(Buffer.from(head.buffer, head.byteOffset, head.length + data.length));
      } else {
        sock.write(head);
        ok = sock.write(data);
      }
    } else if (head !== null && data.length <= COALESCE_MAX) {
      this.pendingHead = null;
      const hl = head.length;
      if (this.resChunked) {
        const hex = data.length.toString(16);
        const out = Buffer.allocUnsafe(hl + hex.length + 4 + data.length);
        out.write(head, 0, 'latin1');
        out.write(`${hex}\r\n`, hl, 'latin1');
        data.copy(out, hl + hex.length + 2);
        out[out.length - 2] = 13;
        out[out.length - 1] = 10;
        ok = sock.write(out);
      } else {
        const out = Buffer.allocUnsafe(hl + data.length);
        out.write(head, 0, 'latin1');
        data.copy(out, hl);
        ok = sock.write(out);
      }
    } else {
      if (head !== null) { this.pendingHead = null; sock.write(head, 'latin1'); }
      if (this.resChunked) {
        sock.cork();
        sock.write(`${data.length.toString(16)}\r\n`, 'latin1');
        sock.write(data);
        ok = sock.write('\r\n', 'latin1');
        sock.uncork();
      } else ok = sock.write(data);
    }
    return ok;
  }

  /** the end of the response to the client: the held head, the last chunk and trailers */
  private writeResEnd(trailers: string): void {
    const head = this.pendingHead;
    this.pendingHead = null;
    if (this.resChunked) this.socket.write(`${head ?? ''}0\r\n${trailers}\r\n`, 'latin1');
    else if (head !== null) this.socket.write(head, 'latin1');
  }

  upEnd(c: H1Upstream, trailers: string): void {
    if (c !== this.up) return;
    this.up = null;
    this.writeResEnd(trailers);
    // The connection is reusable only when our request went out whole too.
    c.release(this.bodyDone);
    this.responseEnded();
  }

  private responseEnded(): void {
    if (this.resCloseDelimited) this.closeAfter = true;
    this.endExchange(this.resStatus);
  }

  /** the attempt's upstream failed: true when there is nothing more to do (the response was cut, or no attempt) */
  private upstreamGone(key: string, why: string | number): boolean {
    if (this.resStarted) {
      // The response was under way: the client cannot be told but by cutting its connection.
      this.ctx.log.debug({ upstream: key, why }, 'upstream failed mid-response; client connection aborted');
      this.abortClient();
      return true;
    }
    return this.attempt === null;
  }

  upFail(c: H1Upstream, why: string): void {
    if (c !== this.up) return;
    this.up = null;
    if (this.upstreamGone(c.key, why)) return;
    // A reused keep-alive connection that the server had closed: the request never reached it, so it is
    // sent again on another connection (as Go's transport does: idempotent, replayable, nothing received).
    if (c.uses > 1 && c.gotBytes === 0 && this.replayable && IDEMPOTENT.has(this.head!.method) && this.staleRedispatch++ < 2) {
      this.acquire();
      return;
    }
    this.attemptFailed({ kind: 'reset' });
  }

  /** the attempt's per-try deadline, its place in the pool's queue and its connection are let go */
  protected releaseAttempt(): void {
    this.tryDeadline = 0;
    if (this.waitingGroup !== null) { this.ctx.pool.cancel(this, this.waitingGroup); this.waitingGroup = null; }
    if (this.up !== null) { const c = this.up; this.up = null; c.destroy(); }
    if (this.h2 !== null) { const l = this.h2; this.h2 = null; l.drop(); }
  }

  /** 101 from the upstream: from now on the two sockets are spliced, raw, both ways */
  private upgraded(c: H1Upstream): void {
    const res = c.res;
    const a = this.attempt!;
    this.attempt = null;
    a.finish({ kind: 'response', status: 101 });
    this.ctx.stats.upgrades++;
    let s = `HTTP/1.1 101 ${res.reason}\r\n`;
    for (let i = 0; i < res.names.length; i++) s += `${res.names[i]}: ${res.values[i]}\r\n`;
    s += `connection: upgrade\r\nupgrade: ${res.upgrade}\r\n\r\n`;
    const client = this.socket;
    client.write(s, 'latin1');
    const us = c.detach();
    const leftover = c.leftover;
    this.up = null;
    this.resStatus = 101;
    this.clearTimers();
    const ex = this.ex!;
    this.ex = null;
    this.dead = true; // no more HTTP on this connection
    client.removeAllListeners('data');
    client.removeAllListeners('drain');
    client.setTimeout(0); // an idle WebSocket is not an idle HTTP connection
    if (leftover !== null) client.write(leftover);
    if (this.buf !== null) { us.write(this.buf); this.buf = null; }
    splice(us, client);
    splice(client, us);
    us.on('close', () => client.destroy());
    client.on('close', () => us.destroy());
    if (this.paused) { this.paused = false; client.resume(); }
    us.resume();
    ex.end(101);
  }

  // ---- answers and the end of an exchange ----

  /** a local reply that ends the exchange (the policy said no, a failure, a request refused before the policy) */
  protected reply(r: LocalReply): void {
    this.writeLocal(r.status, r.headers, r.body);
    this.endExchange(r.status);
  }

  private writeLocal(status: number, headers: Headers | null, body: string): void {
    this.resStarted = true;
    this.resStatus = status;
    const len = Buffer.byteLength(body);
    let s = `HTTP/1.1 ${status} ${statusText(status)}\r\ncontent-length: ${len}\r\n`;
    if (headers === null || headers['content-type'] === undefined) s += 'content-type: text/plain\r\n';
    if (headers !== null) {
      for (const name in headers) {
        const v = headers[name]!;
        if (typeof v === 'string') s += `${name}: ${v}\r\n`;
        else for (const x of v) s += `${name}: ${x}\r\n`;
      }
    }
    // A request whose body we will not read to the end cannot be followed by another on this connection.
    if (!this.bodyDone && this.bodyState !== BODY_NONE) this.closeAfter = true;
    if (this.ctx.draining === true) this.closeAfter = true;
    if (this.closeAfter) s += 'connection: close\r\n';
    else if (this.req.minor === 0) s += 'connection: keep-alive\r\n';
    s += '\r\n';
    if (this.isHeadReq || len === 0) this.socket.write(s, 'latin1');
    else this.socket.write(s + body, 'utf8');
  }

  /** the exchange's timeouts are over (the lazy timer stays armed while the connection lives) */
  private clearTimers(): void {
    this.tryDeadline = 0;
    this.routeDeadline = 0;
    this.lastBodyAt = 0;
    if (this.retryTimer !== null) { clearTimeout(this.retryTimer); this.retryTimer = null; }
    if (this.dead && this.deadlineTimer !== null) { clearTimeout(this.deadlineTimer); this.deadlineTimer = null; }
  }

  /** the timer fires at, or before, the earliest deadline */
  private armDeadline(): void {
    if (this.dead) return;
    let at = this.routeDeadline;
    if (this.tryDeadline !== 0 && (at === 0 || this.tryDeadline < at)) at = this.tryDeadline;
    if (this.idleDeadline !== 0 && (at === 0 || this.idleDeadline < at)) at = this.idleDeadline;
    if (this.lastBodyAt !== 0) {
      const u = this.lastBodyAt + this.ctx.clientIdleTimeoutMs;
      if (at === 0 || u < at) at = u;
    }
    if (at === 0) return;
    if (this.deadlineTimer !== null) {
      if (this.timerAt <= at) return;
      clearTimeout(this.deadlineTimer);
    }
    this.timerAt = at;
    this.deadlineTimer = setTimeout(this.onDeadline, Math.max(1, Math.ceil(at - performance.now())));
  }

  private endExchange(status: number): void {
    this.clearTimers();
    const ex = this.ex;
    this.ex = null;
    this.head = null;
    this.busy = false;
    this.upReq = '';
    if (this.body.length !== 0) this.body = [];
    if (ex !== null) ex.end(status, this.grpcStatus);
    if (this.dead) return;
    // The request body not read to its end (an early answer): the connection cannot carry another request.
    if (this.closeAfter || !this.bodyDone) { this.finishConnection(); return; }
    this.idleDeadline = performance.now() + (this.ctx.draining === true ? DRAIN_IDLE_MS : this.ctx.clientIdleTimeoutMs);
    this.armDeadline();
    if (this.buf !== null || this.paused) this.drive();
  }

  /** write what is queued, then close; a client that never closes its side is cut after LINGER_MS */
  private finishConnection(): void {
    this.dead = true;
    this.buf = null;
    this.upFlush();
    const sock = this.socket;
    sock.end();
    setTimeout(() => sock.destroy(), LINGER_MS).unref();
  }

  /**
   * A planned restart (ctx.draining is set): a request under way is answered with `connection: close`; a connection
   * between requests gets idleMs (DRAIN_IDLE_MS) for its next one (a busy keep-alive client sends it at once, and it
   * is answered with `connection: close`), then is closed as idle (closeIdle). A WebSocket/upgraded connection is
   * not an H1Conn's any more: it lasts until it ends or the drain timeout.
   */
  drain(idleMs = DRAIN_IDLE_MS): void {
    if (this.dead || this.busy) return;
    if (idleMs <= 0 && this.closeIdle()) return;
    this.idleDeadline = Math.min(this.idleDeadline === 0 ? Infinity : this.idleDeadline, performance.now() + Math.max(0, idleMs));
    this.armDeadline();
  }

  /**
   * Close a keep-alive connection between requests (its idle timeout, or a drain) so that no request is lost to the
   * race with a client that sends one at that moment (RFC 9112 9.6): never destroy() (close(2) with a request unread
   * in the socket answers it with RST, and the request is gone); a request that has started arriving is not idle
   * (it is answered, draining: with `connection: close`); the FIN goes only if nothing of the client's waits in the
   * socket, checked in the same native call (NetConn.endIfIdle), and whatever comes after our FIN is read and
   * ignored until the client closes, so it never sees RST. A request that crosses our FIN on the wire was sent
   * before the client could know; it gets no answer, was never forwarded, and sees a clean close with nothing
   * received: the case RFC 9112 9.3.1 lets a client retry. false: not closed (the client's bytes come as 'data').
   */
  private closeIdle(): boolean {
    if (this.buf !== null) { this.idleDeadline = 0; return false; } // a head in pieces: the head timeout's business
    const sock = this.socket;
    if (sock.endIfIdle !== undefined ? !sock.endIfIdle() : (sock.end(), false)) {
      this.idleDeadline = performance.now() + IDLE_CLOSE_RECHECK_MS;
      return false;
    }
    this.dead = true;
    this.clearTimers();
    if (this.deadlineTimer !== null) { clearTimeout(this.deadlineTimer); this.deadlineTimer = null; }
    setTimeout(() => sock.destroy(), LINGER_MS).unref();
    return true;
  }

  /** cut the client's connection (a response could not be completed) */
  protected abortClient(): void {
    this.dead = true;
    this.socket.destroy();
    this.onClientClose();
  }

  private onClientClose(): void {
    this.dead = true;
    this.buf = null;
    if (this.headTimer !== null) { clearTimeout(this.headTimer); this.headTimer = null; }
    if (this.deadlineTimer !== null) { clearTimeout(this.deadlineTimer); this.deadlineTimer = null; }
    const ex = this.ex;
    if (ex === null) return;
    this.ex = null;
    this.clearTimers();
    if (this.waitingGroup !== null) { this.ctx.pool.cancel(this, this.waitingGroup); this.waitingGroup = null; }
    if (this.up !== null) { const c = this.up; this.up = null; c.destroy(); }
    if (this.h2 !== null) { const l = this.h2; this.h2 = null; l.drop(); }
    this.cancelAttempt();
    // status sent when the response had started (and was cut), 0 when the client left before it
    ex.end(this.resStarted ? this.resStatus : 0, this.grpcStatus);
  }
}

/** from's bytes to to, with backpressure; from's end ends to (what pipe() does, for any Conn) */
function splice(from: Conn, to: Conn): void {
  from.on('data', (d: Buffer) => { if (!to.write(d)) from.pause(); });
  to.on('drain', () => { from.resume(); });
  from.on('end', () => { to.end(); });
}

/** 'http://host[:port]/path?q' -> [authority, path]; null when not an absolute http URI */
function absoluteForm(target: string): [string, string] | null {
  let rest: string;
  if (target.length > 7 && target.slice(0, 7).toLowerCase() === 'http://') rest = target.slice(7);
  else return null;
  let end = rest.length;
  for (let i = 0; i < rest.length; i++) {
    const c = rest.charCodeAt(i);
    if (c === 47 || c === 63) { end = i; break; }
  }
  const authority = rest.slice(0, end);
  if (authority === '' || authority.includes('@')) return null;
  let path = rest.slice(end);
  if (path === '') path = '/';
  else if (path.charCodeAt(0) === 63) path = '/' + path;
  return [authority, path];
}
