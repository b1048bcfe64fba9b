// An HTTP/1.1 client's attempt on an HTTP/2 backend (the service's upstreamProtocol: h2): one stream of the HTTP/2
// pool (h2pool.ts), for the client connection's exchange (http1.ts). The request head is translated once per request
// (translate.ts); the body, chunked or by content-length, goes as DATA frames, a chunked body's trailer section as
// trailing HEADERS; the response head comes back translated (chunked on the client's side unless the backend gave a
// content-length), its DATA as the body, its trailing HEADERS as the chunked body's trailer section.
// Flow control: the client's socket is paused while the stream's window is shut (sendData false, onWritable);
// response bytes the client's socket did not take at once are counted back to the stream only when it drains.
import type { HeaderList } from './h2/hpack.js';
import { H2_ERROR, type H2Stream, type H2StreamHandler } from './h2/session.js';
import type { H2Pool, H2PoolWaiter, UpstreamSession } from './h2pool.js';
import { Framing } from './h1parse.js';
import { h1TrailersToH2, h2ResponseToH1, h2TrailersToH1, type ResponseHead } from './translate.js';
import type { Upstream, UpstreamGroup } from './types.js';

/** What the stream tells the HTTP/1.1 client connection (H1Conn); each call is the connection's, a throw its fatal(). */
export interface H2LinkOwner {
  /** the stream is open (the head went out): the request body may follow */
  h2Ready(link: H2Link): void;
  h2Head(link: H2Link, res: ResponseHead, endStream: boolean): void;
  /** an interim head other than 100 (103 Early Hints) */
  h2Informational(link: H2Link, res: ResponseHead): void;
  h2Data(link: H2Link, data: Buffer, endStream: boolean): void;
  /** the response ended with trailers (an HTTP/1.1 trailer section, '' = none) */
  h2Trailers(link: H2Link, trailers: string): void;
  /** the stream ended abnormally, or could not be had (connected false: a connect failure) */
  h2Reset(link: H2Link, code: number): void;
  /** the stream's window opened again: the client may send more */
  upDrain(): void;
  fatal(e: unknown): void;
}

/** One attempt's HTTP/2 stream for an HTTP/1.1 client: the pool's waiter and the stream's handler. */
export class H2Link implements H2PoolWaiter, H2StreamHandler {
  us: H2Stream | null = null;
  /** the request's end went out (with the head, END_STREAM on DATA, or trailers) */
  sentEnd = false;
  /** response bytes passed to the client's socket that it has not taken yet (counted back on its 'drain') */
  owed = 0;
  readonly res: ResponseHead = { status: 0, reason: '', names: [], values: [], framing: Framing.None, hasContentLength: false, contentLength: 0 };
  private entry: UpstreamSession | null = null;
  private waiting: UpstreamGroup | null = null;
  /** the pool was told the stream ended (or there never was one) */
  private ended = false;
  private gone = false;

  constructor(
    private readonly owner: H2LinkOwner,
    private readonly pool: H2Pool,
    private readonly up: Upstream,
    private readonly headers: HeaderList,
    /** the request has no body: its head ends the stream */
    private readonly noBody: boolean,
    private readonly isHead: boolean,
  ) {}

  get key(): string { return this.up.key; }
  /** a session to the backend was established */
  get connected(): boolean { return this.entry !== null && this.entry.connected; }
  /** the session was refused by the destination's authorization (tunnelup.ts) */
  get denied(): boolean { return this.entry !== null && this.entry.denied; }

  /** ask the pool for a stream slot: false when the group's limits refuse (overflow) */
  start(): boolean {
    const got = this.pool.acquire(this.up, this);
    if (got === 'overflow') return false;
    if (got === 'pending') this.waiting = this.up.group;
    else this.open(got);
    return true;
  }

  sessionReady(e: UpstreamSession | null): void {
    this.waiting = null;
    try {
      if (this.gone) return;
      if (e === null) { this.gone = true; this.owner.h2Reset(this, H2_ERROR.CONNECT_ERROR); }
      else this.open(e);
    } catch (err) { this.owner.fatal(err); }
  }

  private open(e: UpstreamSession): void {
    this.entry = e;
    this.pool.streamStarted(e);
    let us: H2Stream;
    try {
      us = e.session.request(this.headers, this.noBody, this);
    } catch {
      if (!this.gone) { this.gone = true; this.endSlot(); this.owner.h2Reset(this, e.connected ? H2_ERROR.INTERNAL_ERROR : H2_ERROR.CONNECT_ERROR); }
      return;
    }
    if (this.gone) return; // reset at once (and handled)
    this.us = us;
    this.sentEnd = this.noBody;
    this.owner.h2Ready(this);
  }

  // ---- the request ----

  /** request body bytes; false: the stream's window is shut, wait for upDrain */
  sendData(data: Buffer): boolean {
    const us = this.us;
    if (us === null || us.closed) return true;
    return us.sendData(data, false);
  }

  /** the request body ended; trailers: a chunked body's raw trailer section ('' = none) */
  endRequest(trailers: string): void {
    const us = this.us;
    if (us === null || this.sentEnd) return;
    this.sentEnd = true;
    if (trailers !== '') {
      const h = h1TrailersToH2(trailers);
      if (h.length > 0) { us.sendTrailers(h); return; }
    }
    us.end();
  }

  /** the client's socket drained: what it took is counted back to the stream */
  clientDrained(): void {
    const n = this.owed;
    if (n === 0) return;
    this.owed = 0;
    if (this.us !== null && !this.us.closed) this.us.consumed(n);
  }

  // ---- the response (H2StreamHandler) ----

  onHeaders(h: HeaderList, endStream: boolean): void {
    try {
      const st = h[1]!;
      if (!endStream && st.length === 3 && st.charCodeAt(0) === 0x31) {
        // 1xx: 100 is the proxy's to say (it answered the client's Expect itself); 103 and the like are passed on
        if (st !== '100') { h2ResponseToH1(h, false, false, this.res); this.owner.h2Informational(this, this.res); }
        return;
      }
      h2ResponseToH1(h, endStream, this.isHead, this.res);
      this.owner.h2Head(this, this.res, endStream);
    } catch (e) { this.owner.fatal(e); }
  }

  onData(data: Buffer, endStream: boolean): void {
    try { this.owner.h2Data(this, data, endStream); } catch (e) { this.owner.fatal(e); }
  }

  onTrailers(h: HeaderList): void {
    try { this.owner.h2Trailers(this, h2TrailersToH1(h)); } catch (e) { this.owner.fatal(e); }
  }

  onReset(code: number): void {
    try {
      if (this.gone) return;
      this.gone = true;
      this.endSlot();
      this.owner.h2Reset(this, code);
    } catch (e) { this.owner.fatal(e); }
  }

  onWritable(): void {
    try { if (!this.gone) this.owner.upDrain(); } catch (e) { this.owner.fatal(e); }
  }

  // ---- letting go ----

  /** the response is complete: the rest of the request is not wanted, the slot goes back */
  done(): void {
    this.gone = true;
    const us = this.us;
    if (us !== null && !this.sentEnd && !us.closed) us.reset(H2_ERROR.CANCEL);
    this.endSlot();
  }

  /** the attempt is abandoned (retry, timeout, client gone): its place in the queue, or its stream */
  drop(): void {
    this.gone = true;
    if (this.waiting !== null) { const g = this.waiting; this.waiting = null; this.pool.cancel(this, g); }
    const us = this.us;
    if (us !== null && !us.closed) us.reset(H2_ERROR.CANCEL);
    this.endSlot();
  }

  private endSlot(): void {
    if (this.ended || this.entry === null) return;
    this.ended = true;
    this.pool.streamEnded(this.entry);
  }
}
