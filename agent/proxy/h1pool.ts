// Upstream HTTP/1.1 connections, pooled per backend (Upstream.key): LIFO reuse of idle connections (the
// most recently used one is the most likely to still be open and warm), an idle timeout, and the
// group's circuit-breaker accounting (UpstreamGroup.tryOpenConnection / tryPending). A request that
// cannot get a connection waits in its group's queue (pending) and is handed the next connection freed
// for its backend, or a new one when a connection slot of the group frees.
//
// A connection carries one exchange at a time. Its response bytes go to its user (the downstream
// connection doing the exchange) through the UpstreamUser methods: no closure per request.
import { connect as netConnect } from 'node:net';
import type { Logger } from '../observe/log.js';
import type { Conn } from './conn.js';
import { ChunkedDecoder, Framing, ResponseHeadParse, type ChunkSink } from './h1parse.js';
import { PendingQueues } from './pending.js';
import { isDenial } from './tunnelup.js';
import type { Upstream, UpstreamGroup } from './types.js';

/** What the pool and a connection tell the exchange using them. */
export interface UpstreamUser {
  /** a connection is ready for this user's request (after a wait or a connect) */
  upReady(c: H1Upstream): void;
  /**
   * the connection this user waited for could not be established; denied: that connection was refused by the
   * destination's authorization (H1Upstream.denied), undefined when no connection of its own failed (the pool closed)
   */
  upConnectFailed(denied?: boolean): void;
  /** the response head was parsed (c.res); return false when the user dropped the connection in the call */
  upHead(c: H1Upstream): void;
  /** an interim head other than 100 and 101 (103 Early Hints) was parsed (c.res); the final head follows */
  upInformational?(c: H1Upstream): void;
  upData(c: H1Upstream, data: Buffer): void;
  /** the response is complete; trailers: raw trailer section of a chunked response ('' = none) */
  upEnd(c: H1Upstream, trailers: string): void;
  /** the connection failed (closed, reset, malformed response) before the response was complete */
  upFail(c: H1Upstream, why: string): void;
  /** the upstream socket drained (backpressure of the request body) */
  upDrain(): void;
  /** one read of the upstream was processed: write out anything held back to coalesce */
  upFlush(): void;
  /** a callback above threw (a bug): the user drops everything it holds, never crashing the process */
  fatal(e: unknown): void;
}

export interface PoolOptions {
  log: Logger;
  /** idle connections are closed after this long (default 30 s) */
  idleTimeoutMs?: number;
  /** a connect() that takes longer fails (default 5 s, Envoy's default) */
  connectTimeoutMs?: number;
  /** response head limit (default 64 KiB) */
  maxHeaderBytes?: number;
  /** a new transport connection to up ('connect', or 'error' then 'close'); default node:net (the proxy passes its NetIo's) */
  connect?: (up: Upstream) => Conn;
}

function nodeConnect(up: Upstream): Conn {
  return netConnect({ host: up.address, port: up.port, family: up.family, noDelay: true });
}

const ACQ_PENDING = 1;
const ACQ_OVERFLOW = 2;
export type Acquired = H1Upstream | typeof ACQ_PENDING | typeof ACQ_OVERFLOW;
export { ACQ_PENDING, ACQ_OVERFLOW };

export class H1Upstream implements ChunkSink {
  user: UpstreamUser | null = null;
  readonly res = new ResponseHeadParse();
  private readonly chunked = new ChunkedDecoder();
  private buf: Buffer | null = null;
  /** waiting for a head; else reading a body with res.framing */
  private inHead = true;
  private remaining = 0;
  /** the request was HEAD: the response has no body whatever it says */
  headRequest = false;
  /** requests this connection carried (0 while connecting / the first) */
  uses = 0;
  connected = false;
  closed = false;
  /** upgraded (101): the socket belongs to the splice, not the pool */
  detached = false;
  idleSince = 0;
  /** bytes of any response received for the current request */
  gotBytes = 0;
  /** the user will not need the rest of this response (a retry after a response head, an abort) */
  private connectTimer: NodeJS.Timeout | null = null;

  constructor(readonly pool: H1Pool, readonly up: Upstream, readonly socket: Conn) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      const user = this.user;
      try {
        this.onData(d);
        if (user !== null) user.upFlush();
      } catch (e) { this.crashed(e); }
    });
    socket.on('error', (e: Error) => { this.lastError = e.message; if (isDenial(e)) this.denied = true; });
    socket.on('close', () => { try { this.onClose(); } catch (e) { this.crashed(e); } });
    socket.on('drain', () => { try { this.user?.upDrain(); } catch (e) { this.crashed(e); } });
  }

  lastError = '';
  /** the connect failed as refused by the destination's authorization (tunnelup.ts isDenial): this connection's own */
  denied = false;

  get key(): string {
    return this.up.key;
  }

  startConnectTimer(ms: number): void {
    this.connectTimer = setTimeout(() => {
      this.lastError = `connect timeout after ${ms} ms`;
      this.socket.destroy();
    }, ms);
  }

  onConnected(): void {
    if (this.connectTimer) { clearTimeout(this.connectTimer); this.connectTimer = null; }
    this.connected = true;
  }

  /** before writing a request on this connection */
  begin(user: UpstreamUser, headRequest: boolean): void {
    this.user = user;
    this.headRequest = headRequest;
    this.inHead = true;
    this.gotBytes = 0;
    this.uses++;
  }

  private crashed(e: unknown): void {
    const user = this.user;
    this.destroy();
    if (user !== null) user.fatal(e);
    else this.pool.log.error({ err: e, upstream: this.key }, 'proxy upstream handler failed');
  }

  private onData(d: Buffer): void {
    if (this.detached) return;
    const user = this.user;
    if (user === null) {
      // Bytes with no request outstanding: the framing is broken (or the server is talking nonsense).
      this.pool.log.debug({ upstream: this.key }, 'upstream sent bytes on an idle connection; closed');
      this.destroy();
      return;
    }
    this.gotBytes += d.length;
    let buf = d;
    let pos = 0;
    if (this.buf !== null) {
      buf = Buffer.concat([this.buf, d]);
      this.buf = null;
    }
    const len = buf.length;
    while (pos < len) {
      if (this.inHead) {
        const headStart = pos;
        const n = this.res.parse(buf, pos, this.pool.maxHeaderBytes, this.headRequest);
        if (n === 0) { this.buf = pos === 0 ? buf : buf.subarray(pos); return; }
        if (n < 0) { this.fail(`bad response: ${this.res.error}`); return; }
        pos = n;
        const st = this.res.status;
        if (st >= 100 && st < 200 && st !== 101) {
          // interim: 100 Continue is dropped (the client's Expect is answered by the proxy, never sent upstream);
          // others (103 Early Hints) go to a user that passes them on
          if (st !== 100) user.upInformational?.(this);
          if (this.user !== user || this.detached) return;
          continue;
        }
        this.inHead = false;
        const fr = this.res.framing;
        if (fr === Framing.Length) this.remaining = this.res.contentLength;
        else if (fr === Framing.Chunked) this.chunked.reset();
        // bytes after a 101's head (in the same read) are the new protocol's: the user takes them when it detaches
        if (st === 101) this.leftover = pos < len ? buf.subarray(pos) : null;
        // The whole response in this one read, its head as it came: the user may pass buf itself on (rawWhole), one
        // write and no views of it (each Buffer object is ~100 B of the young generation, three per response).
        const whole = this.res.verbatim && headStart === 0 && fr === Framing.Length && len - pos === this.res.contentLength;
        this.rawHead = !this.res.verbatim ? null : whole ? buf : buf.subarray(headStart, pos);
        this.rawWhole = whole;
        this.rawTaken = false;
        user.upHead(this);
        this.rawHead = null;
        this.rawWhole = false;
        if (this.user !== user || this.detached) {
          // the user let go (a retry, an abort: the connection is gone) or upgraded (the rest is the new protocol's)
          if (this.detached && pos < len) this.leftover = buf.subarray(pos);
          return;
        }
        if (this.rawTaken) {
          // the body went with the head
          this.rawTaken = false;
          this.remaining = 0;
          this.complete(buf, len, '');
          return;
        }
        if (fr === Framing.None) { this.complete(buf, pos, ''); return; }
      } else {
        const fr = this.res.framing;
        if (fr === Framing.Length) {
          const n = Math.min(this.remaining, len - pos);
          const slice = pos === 0 && n === len ? buf : buf.subarray(pos, pos + n);
          pos += n;
          this.remaining -= n;
          user.upData(this, slice);
          if (this.user !== user) return;
          if (this.remaining === 0) { this.complete(buf, pos, ''); return; }
        } else if (fr === Framing.Chunked) {
          const n = this.chunked.feed(buf, pos, this, this.pool.maxHeaderBytes);
          if (n < 0) { this.fail(`bad chunked response: ${this.chunked.error}`); return; }
          pos = n;
          if (this.user !== user) return;
          if (this.chunked.done) { this.complete(buf, pos, this.trailers); return; }
        } else {
          // Framing.Close: everything until the upstream closes
          user.upData(this, pos === 0 ? buf : buf.subarray(pos));
          return;
        }
      }
    }
  }

  /** bytes read past a 101 head: they belong to the upgraded stream */
  leftover: Buffer | null = null;
  /**
   * during upHead(): the response head's bytes as read, when res.verbatim (a view of the read: the user may keep it);
   * when rawWhole, the read is the head and the whole body: a user that passes it all on sets rawTaken, and gets no
   * upData() for the body, only upEnd()
   */
  rawHead: Buffer | null = null;
  rawWhole = false;
  rawTaken = false;
  private trailers = '';

  chunkData(data: Buffer): void {
    this.user?.upData(this, data);
  }

  chunkEnd(trailers: string): void {
    this.trailers = trailers;
  }

  /** the response is complete; bytes after it (there should be none) make the connection unusable */
  private complete(buf: Buffer, pos: number, trailers: string): void {
    const user = this.user!;
    this.inHead = true;
    this.trailers = '';
    this.buf = pos < buf.length ? buf.subarray(pos) : null;
    user.upEnd(this, trailers);
  }

  private fail(why: string): void {
    const user = this.user;
    this.user = null;
    this.destroy();
    user?.upFail(this, why);
  }

  private onClose(): void {
    if (this.connectTimer) { clearTimeout(this.connectTimer); this.connectTimer = null; }
    const wasConnected = this.connected;
    const user = this.user;
    this.user = null;
    this.pool.disposed(this);
    if (this.detached) return;
    if (!wasConnected) {
      // the connect failed: whoever this connection was opened for is told
      if (user) user.upConnectFailed(this.denied);
      return;
    }
    if (user === null) return;
    if (!this.inHead && this.res.framing === Framing.Close) {
      user.upEnd(this, '');
      return;
    }
    user.upFail(this, this.lastError || 'upstream closed the connection');
  }

  /** close now, never reuse */
  destroy(): void {
    this.user = null;
    this.pool.disposed(this);
    this.socket.destroy();
  }

  /** the response (and the request) completed cleanly: back to the pool if the framing allows */
  release(reusable: boolean): void {
    this.user = null;
    if (!reusable || this.res.close || this.buf !== null || this.closed) this.destroy();
    else {
      this.socket.resume(); // it may have been paused for the client's backpressure: an idle one must see a close
      this.pool.released(this);
    }
  }

  /** 101: the socket leaves the pool for a raw splice */
  detach(): Conn {
    this.detached = true;
    this.user = null;
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('drain');
    return this.socket;
  }
}

export class H1Pool {
  readonly log: Logger;
  readonly maxHeaderBytes: number;
  private readonly idleTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly connect: (up: Upstream) => Conn;
  /** per backend key: idle connections, most recently used last */
  private readonly idle = new Map<string, H1Upstream[]>();
  private readonly queues = new PendingQueues<UpstreamUser>();
  /** connections opened and not yet closed, for close() */
  private readonly all = new Set<H1Upstream>();
  private readonly sweeper: NodeJS.Timeout;
  private closing = false;

  constructor(o: PoolOptions) {
    this.log = o.log;
    this.idleTimeoutMs = o.idleTimeoutMs ?? 30_000;
    this.connectTimeoutMs = o.connectTimeoutMs ?? 5_000;
    this.maxHeaderBytes = o.maxHeaderBytes ?? 64 * 1024;
    this.connect = o.connect ?? nodeConnect;
    this.sweeper = setInterval(() => this.sweep(), Math.min(1000, this.idleTimeoutMs)).unref();
  }

  /**
   * A connection for up, for user: an idle one at once (returned), or PENDING (user.upReady or
   * user.upConnectFailed follows: a connect is under way, or the request waits in the group's queue as
   * pending), or OVERFLOW (max connections reached and max pending too).
   */
  acquire(up: Upstream, user: UpstreamUser): Acquired {
    const list = this.idle.get(up.key);
    while (list !== undefined && list.length > 0) {
      const c = list.pop()!;
      if (!c.closed) return c;
    }
    if (this.open(up, user)) return ACQ_PENDING;
    return this.queues.add(up, user) ? ACQ_PENDING : ACQ_OVERFLOW;
  }

  /** the user no longer wants what it asked acquire() for (timeout, client gone) */
  cancel(user: UpstreamUser, group: UpstreamGroup): void {
    if (this.queues.cancel(user, group)) return;
    // Not queued: a connect may be under way for it; the connection goes to the next waiter or idle.
    for (const c of this.all) if (c.user === user && !c.connected) c.user = null;
  }

  private open(up: Upstream, user: UpstreamUser | null, evict = true): boolean {
    if (!up.group.tryOpenConnection()) {
      // Room may be made by closing an idle connection of the same group to another backend.
      if (!evict || !this.evictIdle(up.group) || !up.group.tryOpenConnection()) return false;
    }
    const socket = this.connect(up);
    const c = new H1Upstream(this, up, socket);
    c.user = user;
    this.all.add(c);
    c.startConnectTimer(this.connectTimeoutMs);
    socket.once('connect', () => {
      c.onConnected();
      const u = c.user;
      if (u === null) { this.released(c); return; }
      c.user = null;
      try { u.upReady(c); } catch (e) { c.destroy(); u.fatal(e); }
    });
    return true;
  }

  private evictIdle(group: UpstreamGroup): boolean {
    for (const list of this.idle.values()) {
      for (let i = 0; i < list.length; i++) {
        const c = list[i]!;
        if (c.up.group === group) {
          c.destroy();
          return true;
        }
      }
    }
    return false;
  }

  /** a connection is free: a waiter for its backend gets it, else it idles */
  released(c: H1Upstream): void {
    if (this.closing) { c.destroy(); return; }
    const q = this.queues.of(c.up.group);
    if (q !== undefined) {
      for (let i = 0; i < q.length; i++) {
        if (q[i]!.up.key === c.key) {
          this.queues.take(c.up.group, i).user.upReady(c);
          return;
        }
      }
      // Waiters for other backends of the group: this slot serves them better closed and reopened.
      c.destroy();
      return;
    }
    c.idleSince = performance.now();
    let list = this.idle.get(c.key);
    if (list === undefined) this.idle.set(c.key, (list = []));
    list.push(c);
  }

  /** bookkeeping when a connection is gone (idempotent) */
  disposed(c: H1Upstream): void {
    if (c.closed) return;
    c.closed = true;
    this.all.delete(c);
    const list = this.idle.get(c.key);
    if (list !== undefined) {
      const i = list.lastIndexOf(c);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.idle.delete(c.key);
    }
    c.up.group.connectionClosed();
    // A slot of the group freed: the first waiter may open a connection now.
    const q = this.queues.of(c.up.group);
    if (q !== undefined && !this.closing) {
      const w = q[0]!;
      if (this.open(w.up, w.user, false)) this.queues.take(c.up.group, 0);
    }
  }

  private sweep(): void {
    const limit = performance.now() - this.idleTimeoutMs;
    for (const list of [...this.idle.values()]) {
      // oldest first (LIFO reuse leaves the cold ones at the bottom)
      while (list.length > 0 && list[0]!.idleSince < limit) list[0]!.destroy();
    }
  }

  /** idle connections per backend key (for stats) */
  idleCount(): number {
    let n = 0;
    for (const list of this.idle.values()) n += list.length;
    return n;
  }

  openCount(): number {
    return this.all.size;
  }

  close(): void {
    this.closing = true;
    clearInterval(this.sweeper);
    for (const c of [...this.all]) c.destroy();
    for (const w of this.queues.drain()) w.user.upConnectFailed();
  }
}
