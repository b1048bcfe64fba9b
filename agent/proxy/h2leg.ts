// The upstream leg of one HTTP/2 attempt: the client-role stream the request went out on, relaying what the stream
// says (response head, body, trailers, reset, window) to the exchange that owns it (h2exchange.ts). One per attempt.
import type { HeaderList } from './h2/hpack.js';
import type { H2Stream, H2StreamHandler } from './h2/session.js';
import type { UpstreamSession } from './h2pool.js';

/** What a leg tells its exchange (H2Exchange); each call is the exchange's, a throw is its fatal(). */
export interface LegOwner {
  upHead(leg: Leg, headers: HeaderList, endStream: boolean): void;
  upData(leg: Leg, data: Buffer, endStream: boolean): void;
  upTrailers(leg: Leg, headers: HeaderList): void;
  /** the stream ended abnormally (its RST_STREAM, the session died, GOAWAY) */
  upReset(leg: Leg, code: number): void;
  /** the upstream can take more of the request body */
  upWritable(leg: Leg): void;
  /** an HTTP/1.1 leg (h2toh1.ts) has its connection and wrote the request head: the body may follow */
  upReady(leg: Leg): void;
  fatal(e: unknown): void;
}

/** Where the request of an attempt goes: an HTTP/2 stream, or an HTTP/1.1 connection speaking as one (h2toh1.ts). */
export interface LegStream {
  readonly closed: boolean;
  sendData(data: Buffer, endStream: boolean): boolean;
  sendTrailers(headers: HeaderList): void;
  end(): void;
  /** abandon: RST_STREAM, or the HTTP/1.1 connection closed */
  reset(code: number): void;
  /** response bytes were passed on: the upstream may send more */
  consumed(n: number): void;
}

/** The upstream side of one attempt of an HTTP/2 exchange (UpLeg, or h2toh1.ts's H1Leg). */
export interface Leg {
  /** set once the request can be sent */
  us: LegStream | null;
  /** our side of the request ended (END_STREAM or trailers sent) */
  sentEnd: boolean;
  /** the pool was told the attempt let go of it */
  ended: boolean;
  /** response bytes passed on to the client but not yet counted back to the upstream (the client is slow) */
  owed: number;
  /** the backend's key (logs) */
  readonly key: string;
  /** the transport to the backend was established (else a failure is a connect failure) */
  readonly connected: boolean;
  /** the connect failed as refused by the destination's authorization (tunnelup.ts): a denied connect failure */
  readonly denied: boolean;
  /** tell the pool the attempt let go of it (a stream slot; an HTTP/1.1 connection, reused if it can be) */
  release(): void;
}

/** The upstream stream of one attempt: relays what the stream says to its exchange (one object per attempt). */
export class UpLeg implements H2StreamHandler, Leg {
  us: H2Stream | null = null;
  /** our side of the stream ended (END_STREAM or trailers sent) */
  sentEnd = false;
  /** the pool was told the stream ended */
  ended = false;
  /** response bytes passed on to the client but not yet counted back to the upstream (the client is slow) */
  owed = 0;
  constructor(readonly x: LegOwner, readonly entry: UpstreamSession) {}
  get key(): string { return this.entry.up.key; }
  get connected(): boolean { return this.entry.connected; }
  get denied(): boolean { return this.entry.denied; }
  release(): void { this.entry.pool.streamEnded(this.entry); }
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
