// The downstream side of HTTP/2 cleartext (prior knowledge): one server-role session (h2/session.ts) per client
// connection, an exchange (h2exchange.ts) per request stream, the connection's idle rule and one timer for the route
// deadlines of all its exchanges.
import type { Conn } from './conn.js';
import type { ConnInfo, EngineContext } from './engine.js';
import type { HeaderList } from './h2/hpack.js';
import { H2_ERROR, H2Session, type H2SessionOptions, type H2Settings, type H2Stream } from './h2/session.js';
import { H2Exchange, type DeadlineWatch } from './h2exchange.js';
import { startTunnel } from './h2tunnel.js';
import { STREAM_WINDOW } from './h2pool.js';

/**
 * A client connection that sent the HTTP/2 preface: one server-role session on it from now on. first: the
 * bytes the sniffer already read, from the preface on.
 */
export function acceptH2(ctx: EngineContext, conn: Conn, info: ConnInfo, first: Buffer): { drain(): void } {
  ctx.stats.connectionsH2++;
  info.streams = 0;
  return new ClientSession(ctx, conn, info, first);
}

/** The session of one client connection; its options object too (onStream: a new exchange). */
class ClientSession implements H2SessionOptions, DeadlineWatch {
  readonly role = 'server' as const;
  readonly settings: Partial<H2Settings>;
  readonly settingsTimeoutMs: number;
  /** RFC 8441: clients may send an extended CONNECT (WebSocket over HTTP/2, h2tunnel.ts) */
  readonly enableConnectProtocol = true;
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
    this.settingsTimeoutMs = ctx.h2SettingsTimeoutMs;
    // idle: no stream open for clientIdleTimeoutMs (a quiet long-lived gRPC stream is not idle). The transport's
    // timer measures quiet time; it is looked at again, not acted on, while a stream is open.
    conn.removeAllListeners('timeout'); // the sniffer's
    conn.on('timeout', () => this.idle());
    conn.setTimeout(ctx.clientIdleTimeoutMs);
    this.session = new H2Session(conn, this, first);
  }

  /**
   * A planned restart: the session's graceful shutdown (a PING fence, the GOAWAY notice, the last stream id after a
   * round trip: H2Session.shutdown), the open streams finish, then the session closes the connection (tunnels too
   * end their streams when they end).
   */
  drain(): void {
    this.session.shutdown();
  }

  private idle(): void {
    if (this.session.closed) return;
    if (this.session.activeStreams === 0 && this.info.streams === 0) this.session.goaway(H2_ERROR.NO_ERROR);
    else this.conn.setTimeout(this.ctx.clientIdleTimeoutMs);
  }

  onStream(stream: H2Stream, headers: HeaderList, endStream: boolean, tooLarge: boolean): void {
    this.ctx.stats.requests++;
    if (!tooLarge && extendedConnect(headers)) { startTunnel(this.ctx, this.info, stream, headers, endStream); return; }
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

/** the head has :protocol (the session let it through on a CONNECT only: an extended CONNECT); no allocation */
function extendedConnect(h: HeaderList): boolean {
  for (let i = 0; i < h.length && h[i]!.charCodeAt(0) === 58; i += 2) if (h[i] === ':protocol') return true;
  return false;
}
