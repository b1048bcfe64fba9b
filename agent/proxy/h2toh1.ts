// An HTTP/2 client's attempt on an HTTP/1.1 backend (the service's upstreamProtocol: http1): one connection of the
// HTTP/1.1 pool (h1pool.ts) spoken to as if it were the attempt's HTTP/2 stream, so the exchange (h2exchange.ts)
// drives it as it drives an UpLeg (h2leg.ts). The request head is translated once per request (translate.ts); the
// body goes chunked (or as the content-length the client gave), trailers as the chunked body's trailer section; the
// response head is translated back, its body passed on as DATA, a chunked response's trailers as trailing HEADERS.
// Flow control: a client that does not read pauses the backend's socket (the bytes it owes are counted back by
// consumed()); a backend that does not read makes sendData answer false, and its 'drain' is onWritable.
import type { HeaderList } from './h2/hpack.js';
import { H2_ERROR } from './h2/session.js';
import { Framing } from './h1parse.js';
import type { Leg, LegOwner, LegStream } from './h2leg.js';
import { ACQ_OVERFLOW, ACQ_PENDING, type H1Pool, type H1Upstream, type UpstreamUser } from './h1pool.js';
import { h1ResponseToH2, h1TrailersToH2, h2TrailersToH1, type H1RequestHead } from './translate.js';
import type { Upstream, UpstreamGroup } from './types.js';

const EMPTY = Buffer.alloc(0);

/** One attempt's HTTP/1.1 connection, as a leg (what the exchange sees) and as the pool's user (what the pool sees). */
export class H1Leg implements Leg, LegStream, UpstreamUser {
  us: LegStream | null = null;
  sentEnd = false;
  ended = false;
  owed = 0;
  /** nothing more can be sent (reset, released, failed) */
  closed = false;
  private c: H1Upstream | null = null;
  private waiting: UpstreamGroup | null = null;
  private hadConnection = false;
  /** the request went out whole: the connection may be reused */
  private reqDone = false;
  /** the response came whole */
  private resDone = false;
  /** the backend's socket is paused for the client */
  private paused = false;
  /** a response without a body: its head goes with the end (one HEADERS frame with END_STREAM) */
  private bodyless: HeaderList | null = null;

  constructor(
    private readonly x: LegOwner,
    private readonly pool: H1Pool,
    private readonly up: Upstream,
    private readonly req: H1RequestHead,
    private readonly isHead: boolean,
    private readonly idempotent: boolean,
  ) {}

  get key(): string { return this.up.key; }
  get connected(): boolean { return this.hadConnection; }
  /** the connection the pool opened for it was refused by the destination's authorization */
  denied = false;

  /** ask the pool for a connection: false when the group's limits refuse (overflow) */
  start(): boolean {
    const got = this.pool.acquire(this.up, this);
    if (got === ACQ_OVERFLOW) return false;
    if (got === ACQ_PENDING) this.waiting = this.up.group;
    else this.upReady(got);
    return true;
  }

  // ---- the pool's user ----

  upReady(c: H1Upstream): void {
    this.waiting = null;
    if (this.closed) { c.release(true); return; }
    this.c = c;
    this.hadConnection = true;
    c.begin(this, this.isHead);
    c.socket.write(this.req.head, 'latin1');
    this.us = this;
    this.x.upReady(this);
  }

  upConnectFailed(denied?: boolean): void {
    this.waiting = null;
    if (this.closed) return;
    this.closed = true;
    this.denied = denied === true;
    this.x.upReset(this, H2_ERROR.CONNECT_ERROR);
  }

  upHead(c: H1Upstream): void {
    if (c !== this.c) return;
    const res = c.res;
    if (res.status === 101) {
      // (no Upgrade was asked: an HTTP/2 request cannot carry one)
      this.failed(c, H2_ERROR.PROTOCOL_ERROR);
      return;
    }
    const h = h1ResponseToH2(res);
    if (res.framing === Framing.None) { this.bodyless = h; return; } // upEnd follows at once
    this.x.upHead(this, h, false);
  }

  /** a 103 (or other interim head but 100): passed on, the exchange forwards it to the client */
  upInformational(c: H1Upstream): void {
    if (c === this.c) this.x.upHead(this, h1ResponseToH2(c.res), false);
  }

  upData(c: H1Upstream, data: Buffer): void {
    if (c !== this.c) return;
    this.x.upData(this, data, false);
    // the client did not take it all: the backend waits until consumed()
    if (this.owed > 0 && !this.paused && this.c === c) { this.paused = true; c.socket.pause(); }
  }

  upEnd(c: H1Upstream, trailers: string): void {
    if (c !== this.c) return;
    this.resDone = true;
    const head = this.bodyless;
    if (head !== null) { this.bodyless = null; this.x.upHead(this, head, true); }
    else if (trailers !== '') this.x.upTrailers(this, h1TrailersToH2(trailers));
    else this.x.upData(this, EMPTY, true);
  }

  upFail(c: H1Upstream, _why: string): void {
    if (c !== this.c) return;
    // A reused keep-alive connection the backend had closed: nothing reached it, the request may go again
    // elsewhere (as http1.ts does, for idempotent requests): REFUSED_STREAM is what says so to the exchange.
    const stale = c.uses > 1 && c.gotBytes === 0 && this.idempotent;
    this.failed(c, stale ? H2_ERROR.REFUSED_STREAM : H2_ERROR.INTERNAL_ERROR);
  }

  upDrain(): void {
    if (!this.closed) this.x.upWritable(this);
  }

  upFlush(): void { /* the client's session writes once per read itself */ }

  fatal(e: unknown): void {
    this.x.fatal(e);
  }

  private failed(c: H1Upstream, code: number): void {
    this.c = null;
    this.closed = true;
    c.destroy();
    this.x.upReset(this, code);
  }

  // ---- the request, as if on a stream (LegStream) ----

  sendData(data: Buffer, endStream: boolean): boolean {
    const c = this.c;
    if (c === null || this.closed) return true;
    const s = c.socket;
    let ok = true;
    if (!this.req.chunked) {
      if (data.length > 0) ok = s.write(data);
    } else if (data.length > 0) {
      s.cork();
      s.write(`${data.length.toString(16)}\r\n`, 'latin1');
      s.write(data);
      ok = s.write(endStream ? '\r\n0\r\n\r\n' : '\r\n', 'latin1');
      s.uncork();
    } else if (endStream) ok = s.write('0\r\n\r\n', 'latin1');
    if (endStream) this.reqDone = true;
    return ok;
  }

  sendTrailers(h: HeaderList): void {
    const c = this.c;
    if (c === null || this.closed) return;
    // a body framed by content-length has no trailer section on HTTP/1.1: they are dropped
    if (this.req.chunked) c.socket.write(`0\r\n${h2TrailersToH1(h)}\r\n`, 'latin1');
    this.reqDone = true;
  }

  end(): void {
    this.sendData(EMPTY, true);
  }

  reset(): void {
    this.closed = true;
    const c = this.c;
    if (c !== null) { this.c = null; c.destroy(); }
  }

  consumed(): void {
    if (this.paused && this.owed === 0) {
      this.paused = false;
      this.c?.socket.resume();
    }
  }

  // ---- the pool's accounting ----

  release(): void {
    this.closed = true;
    if (this.waiting !== null) { const g = this.waiting; this.waiting = null; this.pool.cancel(this, g); }
    const c = this.c;
    if (c === null) return;
    this.c = null;
    if (this.paused) { this.paused = false; c.socket.resume(); }
    // reused only when both messages went whole
    if (this.resDone && this.reqDone) c.release(true);
    else c.destroy();
  }
}
