// The upstream leg of one HTTP/2 attempt: the client-role stream the request went out on, relaying what the stream
// says (response head, body, trailers, reset, window) to the exchange that owns it (h2exchange.ts). One per attempt.
import type { HeaderList } from './h2/hpack.js';
import type { H2Stream, H2StreamHandler } from './h2/session.js';
import type { UpstreamSession } from './h2pool.js';

/** What a leg tells its exchange (H2Exchange); each call is the exchange's, a throw is its fatal(). */
export interface LegOwner {
  upHead(leg: UpLeg, headers: HeaderList, endStream: boolean): void;
  upData(leg: UpLeg, data: Buffer, endStream: boolean): void;
  upTrailers(leg: UpLeg, headers: HeaderList): void;
  /** the stream ended abnormally (its RST_STREAM, the session died, GOAWAY) */
  upReset(leg: UpLeg, code: number): void;
  /** the upstream can take more of the request body */
  upWritable(leg: UpLeg): void;
  fatal(e: unknown): void;
}

/** The upstream stream of one attempt: relays what the stream says to its exchange (one object per attempt). */
export class UpLeg implements H2StreamHandler {
  us: H2Stream | null = null;
  /** our side of the stream ended (END_STREAM or trailers sent) */
  sentEnd = false;
  /** the pool was told the stream ended */
  ended = false;
  /** response bytes passed on to the client but not yet counted back to the upstream (the client is slow) */
  owed = 0;
  constructor(readonly x: LegOwner, readonly entry: UpstreamSession) {}
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
