// Upstream HTTP/2 sessions, pooled per backend (Upstream.key): client-role sessions (h2/session.ts) multiplexed up to
// the peer's SETTINGS_MAX_CONCURRENT_STREAMS; another session is opened when they are full, within the group's max
// connections (UpstreamGroup.tryOpenConnection). A request that finds no free stream slot waits in its group's queue
// (pending.ts, counted against max pending) and is handed the next slot or new session of its backend.
import { connect as netConnect } from 'node:net';
import type { Logger } from '../observe/log.js';
import type { Conn } from './conn.js';
import { H2Session, type H2SessionOptions, type H2Settings } from './h2/session.js';
import { PendingQueues } from './pending.js';
import { isDenial } from './tunnelup.js';
import type { Upstream, UpstreamGroup } from './types.js';

/** streams assumed allowed on a new session until the peer's SETTINGS say otherwise */
const DEFAULT_MAX_STREAMS = 100;
/** our receive window per stream on both legs (the client side's too: h2server.ts) */
export const STREAM_WINDOW = 256 * 1024;

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
  readonly settingsTimeoutMs: number | undefined;
  readonly session: H2Session;
  /** streams started on it and not yet ended (the pool's count; the session has its own) */
  active = 0;
  /** the transport connected */
  connected = false;
  /** the peer's SETTINGS arrived */
  settled = false;
  /** the connect failed as refused by the destination's authorization (tunnelup.ts isDenial): its streams' attempts say so */
  denied = false;
  /** retired: takes no new streams; its connection slot was given back */
  retired = false;
  idleSince = performance.now();
  private connectTimer: NodeJS.Timeout | null;

  constructor(readonly pool: H2Pool, readonly up: Upstream, conn: Conn, connectTimeoutMs: number, settings: Partial<H2Settings>) {
    this.settings = settings;
    this.settingsTimeoutMs = pool.settingsTimeoutMs;
    this.connectTimer = setTimeout(UpstreamSession.connectTimeout, connectTimeoutMs, this);
    conn.once('connect', () => {
      this.connected = true;
      if (this.connectTimer !== null) { clearTimeout(this.connectTimer); this.connectTimer = null; }
    });
    // before the session's own listener: the streams it resets on that error are told after this is set
    conn.on('error', (e: Error) => { if (!this.connected && isDenial(e)) this.denied = true; });
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

export class H2Pool {
  private readonly sessions = new Map<string, UpstreamSession[]>();
  private readonly queues = new PendingQueues<H2PoolWaiter>();
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
    /** a backend that does not acknowledge our SETTINGS this long gets GOAWAY SETTINGS_TIMEOUT (undefined: the session's default) */
    readonly settingsTimeoutMs?: number,
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
    return this.queues.add(up, w) ? 'pending' : 'overflow';
  }

  /** a waiter gives up its place (its attempt ended otherwise) */
  cancel(w: H2PoolWaiter, group: UpstreamGroup): void {
    this.queues.cancel(w, group);
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
    if (this.closing) return;
    for (let q = this.queues.of(group); q !== undefined; q = this.queues.of(group)) {
      const up = q[0]!.up;
      const e = this.free(up) ?? this.open(up);
      if (e === null) break;
      this.queues.take(group, 0).user.sessionReady(e);
    }
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
    for (const w of this.queues.drain()) w.user.sessionReady(null);
  }
}
