// The sending end of HBONE (issue 13): a pool of mTLS HTTP/2 connections, one per (source identity, destination
// node), each carrying many CONNECT streams, so that the steady state opens no handshake per connection (counted:
// handshakes). A connection that gets GOAWAY or closes leaves the pool at once; the streams still on it finish there,
// and the next open() dials a new one. The certificate presented is the source workload's (IdentityCerts), read at
// each dial, so a renewal applies to the next connection and drops no stream.
//
// The server is checked the other way round: its chain must lead to the trust bundle and its certificate must carry
// exactly one SPIFFE id, the node identity of the node we dialled (spiffe://<td>/sockmesh/node/<req.node.name>, issued
// by the CA to that node only): another node's agent, or a workload's certificate, cannot answer for it. It is the
// node's and not the destination workload's (which ztunnel checks) because one pooled connection serves every pod of
// the node.
//
// HTTP/2 is the proxy's own session (agent/proxy/h2/session.ts), not node:http2: nghttp2 under node:http2 made a JS
// Buffer, an Http2Stream Duplex and stream callbacks per DATA frame; the session frames straight from the bytes read
// and writes all the frames of one read in one TLS write. TLS is netio's (agent/proxy/netio.ts: OpenSSL in the
// addon's epoll loop, a NetConn), not a node:tls TLSSocket (a stream and a JS callback per 16 KiB record).
import type { X509Certificate } from 'node:crypto';
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { Logger } from '../observe/log.js';
import type { IdentityCerts, TlsMaterial } from '../identity/material.js';
import { nodeSpiffeId, parseSpiffeId } from '../model/spiffe.js';
import type { HeaderList } from '../proxy/h2/hpack.js';
import { H2_ERROR, H2Session, h2ErrorName, type H2Stream, type H2StreamHandler } from '../proxy/h2/session.js';
import { NetTlsContext, type NetConn } from '../proxy/netio.js';
import type { PeerStats, TunnelMetrics } from './metrics.js';
import { splice, track, TUNNEL_H2, TUNNEL_TLS_HIGH_WATER, tunnelIo, type SpliceSocket } from './splice.js';
import { HBONE_PORT, TunnelError, type RefusalReason, type TunnelOpener, type TunnelRequest } from './types.js';

export interface TunnelClientOpts {
  certs: IdentityCerts;
  metrics: TunnelMetrics;
  log: Logger;
  /** how long a dial (TCP + TLS + the peer's SETTINGS) or a CONNECT's answer may take */
  timeoutMs?: number;
}

interface PoolEntry { session: H2Session | null; ready: Promise<H2Session>; stats: PeerStats }

/** The server's answer to a CONNECT, as a refusal reason (server.ts's statuses). */
function statusReason(status: number): RefusalReason {
  return status === 403 ? 'denied' : status === 421 ? 'not-local' : status === 400 ? 'bad-request' : status >= 502 && status <= 504 ? 'upstream-failed' : 'peer-refused';
}

const hostPort = (address: string, port: number): string => (address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`);

/**
 * A stream whose CONNECT is waiting for its answer. On 200, `accepted` runs in the same call (DATA may follow in the
 * same read) and must set the stream's next handler; otherwise `refused` with the status, or `failed`.
 */
class Connecting implements H2StreamHandler {
  constructor(private readonly accepted: (endStream: boolean) => void, private readonly refused: (status: number) => void,
    private readonly failed: (code: number) => void) {}

  onHeaders(h: HeaderList, endStream: boolean): void {
    let status = 0;
    for (let i = 0; i < h.length; i += 2) if (h[i] === ':status') { status = Number(h[i + 1]); break; }
    if (status < 200) return; // 1xx: the final head follows
    if (status === 200) this.accepted(endStream);
    else this.refused(status);
  }

  onData(): void { /* a refusal's body: nothing reads it */ }
  onTrailers(): void {}
  onReset(code: number): void { this.failed(code); }
  onWritable(): void {}
}

export class TunnelClient implements TunnelOpener {
  private readonly pool = new Map<string, PoolEntry>();
  private closed = false;

  constructor(private readonly opts: TunnelClientOpts) {}

  /** Pooled connections now (tests and meshctl). */
  get connections(): number { return this.pool.size; }

  async open(req: TunnelRequest, client: SpliceSocket): Promise<void> {
    client.pause(); // what the app sends before the tunnel is up waits in the socket
    const stats = this.entryStats(req);
    try {
      await this.request(req, (stream, endStream) => {
        const untrack = track(stats);
        if (client.destroyed) { stream.reset(H2_ERROR.CANCEL); untrack(); return; }
        splice(stream, client, stats, untrack, endStream ? { chunks: [], ended: true } : undefined);
        client.resume();
      });
    } catch (e) {
      if (!client.destroyed) client.resetAndDestroy();
      throw e;
    }
  }

  /**
   * A CONNECT stream to req.dst through the pooled connection, once the destination node answered 200 (a TunnelError
   * with the reason and status otherwise), as a Duplex (bench and tests; the hand-over uses open()).
   */
  async connect(req: TunnelRequest): Promise<Duplex> {
    const stats = this.entryStats(req);
    let duplex: TunnelStream | undefined;
    await this.request(req, (stream, endStream) => { duplex = new TunnelStream(stream, stats, endStream); });
    return duplex!;
  }

  /**
   * Open a CONNECT stream; `accepted` gets it on the 200, in the same call as the answer (DATA may follow at once), and
   * must give it a handler. Resolves after that; rejects with a TunnelError on a refusal, a reset or the timeout.
   */
  private async request(req: TunnelRequest, accepted: (stream: H2Stream, endStream: boolean) => void, retries = 1): Promise<void> {
    const session = await this.session(req);
    const authority = hostPort(req.dst.address, req.dst.port);
    const ms = this.opts.timeoutMs ?? 10_000;
    const fail = (reason: RefusalReason, msg: string, status?: number): TunnelError => {
      this.opts.metrics.refusal('out', reason);
      this.opts.log.warn({ reason, source: req.source, node: req.node.name, authority, status }, msg);
      return new TunnelError(reason, msg, status);
    };
    return new Promise<void>((resolve, reject) => {
      let stream: H2Stream | undefined;
      let settled = false;
      const settle = (fn: () => void): void => { if (!settled) { settled = true; clearTimeout(timer); fn(); } };
      const timer = setTimeout(() => settle(() => {
        stream?.reset(H2_ERROR.CANCEL);
        reject(fail('tunnel-failed', `tunnel to ${req.node.name}: no answer to CONNECT ${authority} in ${ms} ms`));
      }), ms);
      const handler = new Connecting(
        (endStream) => settle(() => { accepted(stream!, endStream); resolve(); }),
        (status) => settle(() => {
          // the server answered with END_STREAM: ours ends the stream both ways with no RST_STREAM (nghttp2 peers
          // end a connection after ~1,000 received resets: a burst of denied connections must not take it down)
          if (stream!.closed) { /* ended both ways already */ } else stream!.end();
          reject(fail(statusReason(status), `tunnel to ${req.node.name}: CONNECT ${authority} refused with ${status}`, status));
        }),
        (code) => settle(() => {
          // REFUSED_STREAM before any answer: the server never processed it (RFC 9113 8.7), so it is safe to send
          // again. A GOAWAY refuses every stream above its last stream id (a restarting node's old agent stops
          // while CONNECTs are on their way); the retry waits a microtask, for the GOAWAY's onGoaway to take that
          // session out of the pool (it runs right after these resets), and then dials anew.
          if (code === H2_ERROR.REFUSED_STREAM && retries > 0) {
            this.opts.log.info({ source: req.source, node: req.node.name, authority }, 'tunnel: CONNECT refused unprocessed (GOAWAY); sent again');
            queueMicrotask(() => { this.request(req, accepted, retries - 1).then(resolve, reject); });
            return;
          }
          reject(fail('tunnel-failed', `tunnel to ${req.node.name}: CONNECT ${authority} reset (${h2ErrorName(code)})`));
        }),
      );
      try {
        stream = session.request([':method', 'CONNECT', ':authority', authority], false, handler);
      } catch (e) {
        settle(() => reject(fail('tunnel-failed', `tunnel to ${req.node.name}: CONNECT ${authority} not sent: ${(e as Error).message}`)));
      }
    });
  }

  /** Close every pooled connection (GOAWAY; streams on them finish). */
  close(): void {
    this.closed = true;
    for (const e of this.pool.values()) e.session?.goaway();
    this.pool.clear();
  }

  private key(req: TunnelRequest): string {
    // the node's name too: the server must present that node's identity, so a connection checked for one name never
    // serves another
    return `${req.source}\0${req.node.name}\0${req.node.address}\0${req.node.port ?? HBONE_PORT}`;
  }

  private entryStats(req: TunnelRequest): PeerStats {
    return this.pool.get(this.key(req))?.stats ?? this.opts.metrics.peer('out', req.node.name, req.source);
  }

  /** Resolves once req.source has a certificate; rejects (no-certificate) after the timeout or when it is dropped. */
  private certificate(req: TunnelRequest): Promise<void> {
    const ms = this.opts.timeoutMs ?? 10_000;
    return new Promise<void>((resolve, reject) => {
      const done = (err?: TunnelError): void => {
        clearTimeout(timer);
        this.opts.certs.off('change', onChange);
        if (!err) return resolve();
        this.opts.metrics.refusal('out', 'no-certificate');
        reject(err);
      };
      const onChange = (id: string): void => {
        if (id !== req.source) return;
        if (this.opts.certs.get(req.source)) done();
        else if (!this.opts.certs.wanted?.(req.source)) done(new TunnelError('no-certificate', `tunnel to ${req.node.name}: ${req.source} is no longer a workload of this node`));
      };
      const timer = setTimeout(() => done(new TunnelError('no-certificate',
        `tunnel to ${req.node.name}: no certificate for ${req.source} after ${ms} ms (the CA has not issued it yet: see meshctl certs)`)), ms);
      this.opts.certs.on('change', onChange);
    });
  }

  private session(req: TunnelRequest): Promise<H2Session> {
    if (this.closed) return Promise.reject(new TunnelError('tunnel-failed', 'tunnel client closed'));
    const key = this.key(req);
    const have = this.pool.get(key);
    // a connection at the peer's concurrent-stream limit is left to its streams: the next stream dials another
    if (have && (have.session === null || have.session.canRequest)) return have.ready;
    if (have) this.pool.delete(key);
    const m = this.opts.certs.get(req.source);
    if (!m) {
      // a local workload's identity whose certificate is on its way (the agent just started, the workload just came):
      // wait for it, up to the dial's timeout; any other identity is no workload of this node's
      if (this.opts.certs.wanted?.(req.source)) return this.certificate(req).then(() => this.session(req));
      this.opts.metrics.refusal('out', 'no-certificate');
      return Promise.reject(new TunnelError('no-certificate', `tunnel to ${req.node.name}: no certificate for ${req.source}: not the identity of a workload on this node`));
    }
    const port = req.node.port ?? HBONE_PORT;
    let expected: string;
    try {
      expected = nodeSpiffeId(parseSpiffeId(req.source).trustDomain, req.node.name);
    } catch (e) {
      this.opts.metrics.refusal('out', 'bad-request');
      return Promise.reject(new TunnelError('bad-request', `tunnel to ${req.node.name}: ${(e as Error).message}`));
    }
    const stats = this.opts.metrics.peer('out', req.node.name, req.source);
    const log = this.opts.log;
    const where = hostPort(req.node.address, port);
    const ms = this.opts.timeoutMs ?? 10_000;
    const entry: PoolEntry = { session: null, stats, ready: null as unknown as Promise<H2Session> };
    const leave = (): void => { if (this.pool.get(key) === entry) this.pool.delete(key); };
    entry.ready = new Promise<H2Session>((resolve, reject) => {
      let up = false;
      let failed = false;
      const dialFailed = (e: NodeJS.ErrnoException): void => {
        if (failed) return;
        failed = true;
        clearTimeout(timer);
        leave();
        if (!conn.destroyed) conn.destroy();
        log.warn({ node: req.node.name, source: req.source, err: e.message, code: e.code }, 'tunnel: connection failed');
        // the dial's own error says why (the server's identity, its chain, a refused connection)
        const reason: RefusalReason = e instanceof ServerIdentityError || /CERT|UNABLE_TO/.test(e.code ?? '') ? 'bad-certificate' : 'tunnel-failed';
        reject(new TunnelError(reason, `tunnel to ${req.node.name} (${where}) closed before it was up: ${e.message}`));
      };
      const conn: NetConn = tunnelIo().connect({ address: req.node.address, port });
      const timer = setTimeout(() => dialFailed(new Error(`no connection in ${ms} ms`)), ms);
      try {
        conn.startTls(clientContext(m), { handshakeTimeoutMs: ms });
      } catch (e) {
        dialFailed(e as Error);
        return;
      }
      conn.once('error', (e: Error) => { if (!up) dialFailed(e); });
      conn.once('close', () => { if (!up) dialFailed(new Error('the connection closed during the handshake')); });
      conn.once('secure', () => {
        stats.handshakes++;
        const problem = serverIdentityProblem(conn.getPeerX509Certificate(), expected);
        if (problem) { dialFailed(problem); return; }
        conn.setNoDelay(true);
        conn.highWaterMark = TUNNEL_TLS_HIGH_WATER;
        // the session gives each read back once its DATA went to splices (Splice.releasesData): slabs filled again
        conn.returnsTlsReads = true;
        const session = new H2Session(conn, {
          role: 'client', ...TUNNEL_H2,
          onSettings: () => {
            if (failed) return;
            clearTimeout(timer);
            up = true;
            stats.connections++;
            log.info({ node: req.node.name, address: where, source: req.source }, 'tunnel: connected');
            resolve(session);
          },
          onGoaway: (_last, code) => {
            log.info({ node: req.node.name, code: h2ErrorName(code) }, 'tunnel: GOAWAY; the next stream dials a new connection');
            leave();
          },
          onClose: (err) => {
            leave();
            if (up) stats.connections--;
            else dialFailed(err ?? new Error('the connection closed before the server\'s SETTINGS'));
            if (err && up) log.warn({ node: req.node.name, source: req.source, err: err.message }, 'tunnel: connection failed');
          },
        });
        entry.session = session;
      });
    });
    // A failed dial is told once, to every open() waiting on it.
    entry.ready.catch((e: TunnelError) => { this.opts.metrics.refusal('out', e.reason); });
    this.pool.set(key, entry);
    return entry.ready;
  }
}

/**
 * A CONNECT stream as a Duplex (connect(): bench/tunnel.ts and tests). Back-pressure as the splice's: DATA is counted
 * back to the peer once read out of the Duplex, a write waits while the peer's windows are full. destroy() without an
 * error after both directions ended sends nothing (the session closes the stream itself); any other destroy() resets it.
 */
class TunnelStream extends Duplex implements H2StreamHandler {
  private remoteEnded = false;
  private localEnded = false;
  private over = false;
  /** DATA pushed while the readable side was full: counted back once read */
  private owed = 0;
  private writeCb: ((err?: Error | null) => void) | null = null;
  private readonly untrack: () => void;

  constructor(private readonly stream: H2Stream, private readonly stats: PeerStats, endStream: boolean) {
    super({ allowHalfOpen: true });
    this.untrack = track(stats);
    stream.handler = this;
    if (endStream) this.onData(EMPTY, true);
  }

  onHeaders(): void {}
  onTrailers(): void { this.onData(EMPTY, true); }

  onData(data: Buffer, endStream: boolean): void {
    if (data.length > 0) {
      this.stats.bytesIn += data.length;
      if (this.push(data)) this.stream.consumed(data.length);
      else this.owed += data.length;
    }
    if (endStream) {
      this.remoteEnded = true;
      this.push(null);
      this.checkOver();
    }
  }

  onReset(code: number): void {
    this.over = true;
    this.untrack();
    const cb = this.writeCb;
    this.writeCb = null;
    const err = code === H2_ERROR.NO_ERROR ? null : new TunnelError('tunnel-failed', `tunnel stream reset (${h2ErrorName(code)})`);
    cb?.(err);
    if (err) this.destroy(err);
    else if (!this.remoteEnded) { this.remoteEnded = true; this.push(null); }
  }

  onWritable(): void {
    const cb = this.writeCb;
    this.writeCb = null;
    cb?.();
  }

  override _read(): void {
    if (this.owed > 0 && !this.over) { const n = this.owed; this.owed = 0; this.stream.consumed(n); }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.over) return cb(new TunnelError('tunnel-failed', 'tunnel stream closed'));
    this.stats.bytesOut += chunk.length;
    if (this.stream.sendData(chunk, false)) cb();
    else this.writeCb = cb;
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.over) { this.localEnded = true; this.stream.end(); this.checkOver(); }
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // ended both ways (our END_STREAM at most queued behind DATA): the session finishes the stream with no frame
    if (!this.over && !(this.localEnded && this.remoteEnded && !err)) this.stream.reset(H2_ERROR.CANCEL);
    this.over = true;
    this.untrack();
    cb(err);
  }

  private checkOver(): void {
    if (this.localEnded && this.remoteEnded) { this.over = true; this.untrack(); }
  }
}

const EMPTY = Buffer.alloc(0);

class ServerIdentityError extends Error {}

/** netio TLS contexts by the material they present (a renewal is new material: the next dial makes a new context) */
const contexts = new WeakMap<TlsMaterial, NetTlsContext>();

function clientContext(m: TlsMaterial): NetTlsContext {
  let c = contexts.get(m);
  if (c === undefined) contexts.set(m, c = new NetTlsContext({ role: 'client', chain: m.chain, key: m.key, bundle: m.bundle, alpn: ['h2'] }));
  return c;
}

/** Why the server's certificate is not acceptable (its chain was verified against the bundle by the handshake), or undefined. */
function serverIdentityProblem(cert: X509Certificate | undefined, expected: string): Error | undefined {
  if (!cert) return new ServerIdentityError('the server presented no certificate');
  const uris = (cert.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:spiffe://')).map((s) => s.slice(4));
  if (uris.length !== 1) return new ServerIdentityError(`the server's certificate ${cert.serialNumber} has ${uris.length} SPIFFE URI SANs (want exactly one, ${expected})`);
  if (uris[0] !== expected) return new ServerIdentityError(`the server presented ${uris[0]}, not the identity of the node dialled (${expected})`);
  return undefined;
}
