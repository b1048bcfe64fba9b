// WebSocket over HTTP/2 (RFC 8441): an extended CONNECT from an HTTP/2 client (:method CONNECT, :protocol websocket,
// :scheme, :path, :authority; the session accepts :protocol because the client sessions announce
// SETTINGS_ENABLE_CONNECT_PROTOCOL), proxied to an HTTP/1.1 backend as the Upgrade request of RFC 6455
// (GET, connection: upgrade, upgrade: websocket, a fresh sec-websocket-key). The backend's 101 becomes the client's
// 200 (sec-websocket-accept, which only the HTTP/1.1 handshake checks, is not passed on); from then on the stream's
// DATA and the backend socket's bytes are the same byte stream, both ways, with flow control end to end (DATA counted
// back to the client only once the backend socket took it; the backend socket paused while the client's stream is
// full). A backend that answers anything but 101 has its answer passed on as the stream's response.
//
// The policy routes it as the GET it becomes (authorization, route, breaker, one attempt: a tunnel is never retried,
// nor timed out once open: an idle WebSocket is not a late response).
import { randomBytes } from 'node:crypto';
import type { Conn } from './conn.js';
import type { ConnInfo, EngineContext } from './engine.js';
import type { HeaderList } from './h2/hpack.js';
import { H2_ERROR, type H2Stream, type H2StreamHandler } from './h2/session.js';
import { ACQ_OVERFLOW, ACQ_PENDING, type H1Upstream, type UpstreamUser } from './h1pool.js';
import type { Attempt, Exchange, Headers, LocalReply, Outcome, Source, UpstreamGroup } from './types.js';
import { connectFailure } from './tunnelup.js';

/** response fields of the HTTP/1.1 handshake that mean nothing on HTTP/2 (RFC 8441 5: the 200 carries no accept) */
const NOT_PASSED = new Set(['sec-websocket-accept']);

/**
 * An extended CONNECT stream: h is the session's well-formed head (pseudo-header fields first). Answers the stream
 * (a local reply, the backend's refusal, or 200 and the tunnel). Returns once the stream has its handler.
 */
export function startTunnel(ctx: EngineContext, info: ConnInfo, ds: H2Stream, h: HeaderList, endStream: boolean): void {
  const t = new WsTunnel(ctx, info, ds);
  ds.handler = t;
  try { t.start(h, endStream); } catch (e) { t.fatal(e); }
}

class WsTunnel implements H2StreamHandler, UpstreamUser {
  private ex: Exchange | null = null;
  private attempt: Attempt | null = null;
  private waitingGroup: UpstreamGroup | null = null;
  private up: H1Upstream | null = null;
  /** the spliced backend socket, once the backend said 101 */
  private sock: Conn | null = null;
  private reqHead = '';
  /** client bytes that arrived before the backend socket was there */
  private early: Buffer[] = [];
  private clientEnded = false;
  /** client bytes written to the backend socket and not yet counted back (it said wait) */
  private owed = 0;
  private status = 0;
  private done = false;
  /** the backend's non-101 answer is under way */
  private relaying = false;
  /** our END_STREAM is queued (the backend ended its side) */
  private endSent = false;
  /** the handshake's deadline (the route's timeout, until the backend's answer) */
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly ctx: EngineContext, private readonly info: ConnInfo, private readonly ds: H2Stream) {}

  start(h: HeaderList, endStream: boolean): void {
    this.clientEnded = endStream;
    let path = '', authority = '', protocol = '';
    const headers: Headers = {};
    let fields = '';
    for (let i = 0; i < h.length; i += 2) {
      const name = h[i]!, v = h[i + 1]!;
      switch (name) {
        case ':path': path = v; continue;
        case ':authority': authority = v; continue;
        case ':protocol': protocol = v; continue;
        case 'host': case 'sec-websocket-key': continue; // the authority is the host; the key is made below
      }
      if (name.charCodeAt(0) === 58) continue;
      const prev = headers[name];
      headers[name] = prev === undefined ? v : typeof prev === 'string' ? [prev, v] : [...prev, v];
      fields += `${name}: ${v}\r\n`;
    }
    if (protocol.toLowerCase() !== 'websocket') {
      this.local({ status: 501, headers: {}, body: `extended CONNECT with :protocol ${protocol} is not supported (websocket is)\n` });
      return;
    }
    if (this.info.dst === null) { this.local({ status: 421, headers: {}, body: 'connection was not redirected by sockmesh\n' }); return; }
    const src: Source = (this.info.source ??= { address: this.info.address, port: this.info.port, cgroupId: this.info.dst.cgroupId });
    let r: Exchange | LocalReply;
    try {
      r = this.ctx.policy.begin(this.info.dst, src, { method: 'GET', path, authority, headers, protocol: 'h2', grpc: false, hasBody: false });
    } catch (e) {
      this.ctx.log.error({ err: e }, 'policy.begin failed');
      r = { status: 500, headers: {}, body: 'internal error\n' };
    }
    if ('status' in r) { this.local(r); return; }
    this.ex = r;
    const a = r.attempt(1);
    if ('status' in a) { this.local(a); return; }
    this.attempt = a;
    this.ctx.stats.upgrades++;
    if (r.route.timeoutMs > 0) this.timer = setTimeout(WsTunnel.handshakeTimeout, r.route.timeoutMs, this);
    const key = randomBytes(16).toString('base64');
    this.reqHead = `GET ${path} HTTP/1.1\r\nhost: ${authority}\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: ${key}\r\n${fields}\r\n`;
    const got = this.ctx.pool.acquire(a.upstream, this);
    if (got === ACQ_PENDING) this.waitingGroup = a.upstream.group;
    else if (got === ACQ_OVERFLOW) this.failed({ kind: 'overflow', limit: 'max-pending-requests' });
    else this.upReady(got);
  }

  // ---- the backend connection (UpstreamUser)

  upReady(c: H1Upstream): void {
    this.waitingGroup = null;
    if (this.done || this.attempt === null) { c.release(true); return; }
    this.up = c;
    c.begin(this, false);
    c.socket.write(this.reqHead, 'latin1');
  }

  upConnectFailed(denied?: boolean): void {
    this.waitingGroup = null;
    this.failed(connectFailure(denied));
  }

  private static handshakeTimeout(t: WsTunnel): void {
    t.timer = null;
    try {
      if (t.attempt === null || t.done) return;
      if (t.up !== null) { const c = t.up; t.up = null; c.destroy(); }
      if (t.waitingGroup !== null) { t.ctx.pool.cancel(t, t.waitingGroup); t.waitingGroup = null; }
      t.failed({ kind: 'timeout' });
    } catch (e) { t.fatal(e); }
  }

  upHead(c: H1Upstream): void {
    if (c !== this.up || this.done) return;
    if (this.timer !== null) { clearTimeout(this.timer); this.timer = null; }
    const res = c.res;
    const a = this.attempt!;
    this.attempt = null;
    a.finish({ kind: 'response', status: res.status });
    if (res.status === 101 && res.upgrade !== undefined && res.upgrade.toLowerCase() === 'websocket') { this.open(c); return; }
    if (res.status === 101) { c.destroy(); this.up = null; this.failedAfterHead(502); return; }
    // a refusal (401, 403, 404, 426...): passed on as the stream's answer
    this.status = res.status;
    this.relaying = true;
    const out: HeaderList = [':status', String(res.status)];
    for (let i = 0; i < res.names.length; i++) if (!NOT_PASSED.has(res.names[i]!)) out.push(res.names[i]!, res.values[i]!);
    if (res.hasContentLength) out.push('content-length', String(res.contentLength));
    this.ds.sendHeaders(out, false);
  }

  upData(c: H1Upstream, data: Buffer): void {
    if (c !== this.up || !this.relaying || this.ds.closed) return;
    this.ds.sendData(data, false);
  }

  upEnd(c: H1Upstream): void {
    if (c !== this.up) return;
    this.up = null;
    c.release(false); // it was asked to upgrade: not for another request
    if (!this.ds.closed) { this.ds.end(); this.stopClient(); }
    this.finish(this.status);
  }

  upFail(c: H1Upstream, why: string): void {
    if (c !== this.up) return;
    this.up = null;
    this.ctx.log.debug({ upstream: c.key, why }, 'websocket upstream failed before the tunnel');
    if (this.relaying) { if (!this.ds.closed) this.ds.reset(H2_ERROR.INTERNAL_ERROR); this.finish(this.status); return; }
    this.failed({ kind: 'reset' });
  }

  upDrain(): void { /* the handshake is one small write */ }
  upFlush(): void { /* nothing held back */ }

  /** the backend said 101: the stream is answered 200 and becomes the tunnel */
  private open(c: H1Upstream): void {
    const res = c.res;
    this.status = 200;
    const out: HeaderList = [':status', '200'];
    for (let i = 0; i < res.names.length; i++) if (!NOT_PASSED.has(res.names[i]!)) out.push(res.names[i]!, res.values[i]!);
    const leftover = c.leftover;
    const us = c.detach();
    this.up = null;
    this.sock = us;
    this.ds.sendHeaders(out, false);
    if (leftover !== null && leftover.length > 0 && !this.ds.sendData(leftover, false)) us.pause();
    us.on('data', (d: Buffer) => { try { if (!this.ds.closed && !this.ds.sendData(d, false)) us.pause(); } catch (e) { this.fatal(e); } });
    us.on('drain', () => { try { this.countBack(); } catch (e) { this.fatal(e); } });
    us.on('end', () => { try { this.endSent = true; if (!this.ds.closed) this.ds.end(); this.maybeDone(); } catch (e) { this.fatal(e); } });
    us.on('close', () => { try { this.sockClosed(); } catch (e) { this.fatal(e); } });
    // what the client sent meanwhile (a client may send right after its CONNECT: RFC 8441 allows it once 200 is in,
    // and bytes in flight are bytes of the stream)
    for (const d of this.early) this.toBackend(d);
    this.early = [];
    if (this.clientEnded) us.end();
    us.resume();
  }

  // ---- the client's stream (H2StreamHandler)

  onHeaders(): void { /* server role: the head came with onStream */ }

  onData(d: Buffer, endStream: boolean): void {
    try {
      if (d.length > 0) {
        if (this.sock !== null) this.toBackend(d);
        else if (this.done || this.relaying) this.ds.consumed(d.length);
        else this.early.push(d); // held: bounded by the stream window
      }
      if (endStream) {
        this.clientEnded = true;
        if (this.sock !== null) { this.sock.end(); this.maybeDone(); }
      }
    } catch (e) { this.fatal(e); }
  }

  onTrailers(): void {
    try { this.onData(Buffer.alloc(0), true); } catch (e) { this.fatal(e); }
  }

  onReset(): void {
    try { this.clientGone(); } catch (e) { this.fatal(e); }
  }

  /** the client reads again: the backend socket may go on */
  onWritable(): void {
    this.sock?.resume();
  }

  private toBackend(d: Buffer): void {
    const us = this.sock!;
    if (us.write(d) && this.owed === 0) this.ds.consumed(d.length);
    else this.owed += d.length;
  }

  private countBack(): void {
    if (this.owed === 0 || this.ds.closed) return;
    const n = this.owed;
    this.owed = 0;
    this.ds.consumed(n);
  }

  // ---- the end

  /** both directions ended: the exchange is over (the stream left the session by itself) */
  private maybeDone(): void {
    if (this.ds.closed) this.finish(this.status);
  }

  private sockClosed(): void {
    this.sock = null;
    // (closed after both sides ended: our END_STREAM may still wait for the window; else the tunnel broke)
    if (!this.ds.closed && !this.endSent) this.ds.reset(H2_ERROR.CONNECT_ERROR);
    this.finish(this.status);
  }

  private clientGone(): void {
    if (this.sock !== null) { const s = this.sock; this.sock = null; s.destroy(); }
    if (this.up !== null) { const c = this.up; this.up = null; c.destroy(); }
    if (this.waitingGroup !== null) { this.ctx.pool.cancel(this, this.waitingGroup); this.waitingGroup = null; }
    const a = this.attempt;
    if (a !== null) { this.attempt = null; a.finish({ kind: 'cancelled' }); }
    this.finish(this.status === 0 ? 0 : this.status);
  }

  /** the attempt failed before a head: the client is answered as any request would be */
  private failed(o: Outcome): void {
    const a = this.attempt;
    if (a === null || this.done) return;
    this.attempt = null;
    a.finish(o);
    const status = o.kind === 'connect-failure' || o.kind === 'overflow' ? 503 : o.kind === 'timeout' ? 504 : 502;
    this.local({ status, headers: { 'x-sockmesh-error': o.kind }, body: `websocket upstream ${o.kind}\n` });
  }

  private failedAfterHead(status: number): void {
    this.local({ status, headers: { 'x-sockmesh-error': 'bad-upgrade' }, body: 'the backend switched to another protocol\n' });
  }

  private local(r: LocalReply): void {
    if (!this.ds.closed) {
      const body = Buffer.from(r.body);
      const out: HeaderList = [':status', String(r.status), 'content-type', 'text/plain', 'content-length', String(body.length)];
      for (const name in r.headers) { const v = r.headers[name]!; out.push(name, typeof v === 'string' ? v : v.join(', ')); }
      this.ds.sendHeaders(out, false);
      this.ds.sendData(body, true);
      this.stopClient();
    }
    this.finish(r.status);
  }

  /**
   * an answer that is not a tunnel is complete: a client that has not ended its side is told it need send no more
   * (RST_STREAM NO_ERROR after the whole response, RFC 9113 8.1), once what we sent has left
   */
  private stopClient(): void {
    if (!this.clientEnded && !this.ds.closed && this.ds.queued === 0) this.ds.reset(H2_ERROR.NO_ERROR);
  }

  private finish(status: number): void {
    if (this.done) return;
    this.done = true;
    this.early = [];
    if (this.timer !== null) { clearTimeout(this.timer); this.timer = null; }
    const ex = this.ex;
    this.ex = null;
    if (ex !== null) ex.end(status);
  }

  fatal(e: unknown): void {
    this.ctx.log.error({ err: e, peer: `${this.info.address}:${this.info.port}` }, 'proxy websocket tunnel failed; reset');
    try {
      if (this.sock !== null) this.sock.destroy();
      if (this.up !== null) this.up.destroy();
      if (this.waitingGroup !== null) this.ctx.pool.cancel(this, this.waitingGroup);
      if (!this.ds.closed) this.ds.reset(H2_ERROR.INTERNAL_ERROR);
      this.attempt?.finish({ kind: 'cancelled' });
    } catch { /* already broken */ }
    this.attempt = null;
    this.finish(0);
  }
}
