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
import { connect as h2connect, constants, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import type { Logger } from '../observe/log.js';
import { secureContextFor, type IdentityCerts } from '../identity/material.js';
import { nodeSpiffeId, parseSpiffeId } from '../model/spiffe.js';
import type { PeerStats, TunnelMetrics } from './metrics.js';
import { H2_SETTINGS, SESSION_WINDOW } from './server.js';
import { splice, track } from './splice.js';
import { HBONE_PORT, TunnelError, type RefusalReason, type TunnelOpener, type TunnelRequest } from './types.js';

export interface TunnelClientOpts {
  certs: IdentityCerts;
  metrics: TunnelMetrics;
  log: Logger;
  /** how long a dial (TCP + TLS + the HTTP/2 preface) or a CONNECT's answer may take */
  timeoutMs?: number;
}

interface PoolEntry { session: ClientHttp2Session; ready: Promise<ClientHttp2Session>; stats: PeerStats }

/** The server's answer to a CONNECT, as a refusal reason (server.ts's statuses). */
function statusReason(status: number): RefusalReason {
  return status === 403 ? 'denied' : status === 421 ? 'not-local' : status === 400 ? 'bad-request' : status >= 502 && status <= 504 ? 'upstream-failed' : 'peer-refused';
}

const hostPort = (address: string, port: number): string => (address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`);

export class TunnelClient implements TunnelOpener {
  private readonly pool = new Map<string, PoolEntry>();
  private closed = false;

  constructor(private readonly opts: TunnelClientOpts) {}

  /** Pooled connections now (tests and meshctl). */
  get connections(): number { return this.pool.size; }

  async open(req: TunnelRequest, client: Socket): Promise<void> {
    client.pause(); // what the app sends before the tunnel is up waits in the socket
    let stream: ClientHttp2Stream;
    try {
      stream = await this.connect(req);
    } catch (e) {
      if (!client.destroyed) client.resetAndDestroy();
      throw e;
    }
    if (client.destroyed) { stream.close(constants.NGHTTP2_CANCEL); return; }
    splice(stream, client, this.entryStats(req));
    client.resume();
  }

  /**
   * A CONNECT stream to req.dst through the pooled connection, once the destination node answered 200 (a TunnelError
   * with the reason and status otherwise). The caller owns the stream (bench and tests use it as a Duplex).
   */
  async connect(req: TunnelRequest): Promise<ClientHttp2Stream> {
    const session = await this.session(req);
    const authority = hostPort(req.dst.address, req.dst.port);
    const fail = (reason: RefusalReason, msg: string, status?: number): TunnelError => {
      this.opts.metrics.refusal('out', reason);
      this.opts.log.warn({ reason, source: req.source, node: req.node.name, authority, status }, msg);
      return new TunnelError(reason, msg, status);
    };
    let stream: ClientHttp2Stream;
    try {
      stream = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    } catch (e) {
      throw fail('tunnel-failed', `tunnel to ${req.node.name}: CONNECT ${authority} not sent: ${(e as Error).message}`);
    }
    const stats = this.entryStats(req);
    return new Promise<ClientHttp2Stream>((resolve, reject) => {
      // settled once: a refusal's stream also closes, and that close is not a second failure
      let settled = false;
      const settle = (fn: () => void): void => { if (!settled) { settled = true; clearTimeout(timer); fn(); } };
      const timer = setTimeout(() => settle(() => {
        stream.close(constants.NGHTTP2_CANCEL);
        reject(fail('tunnel-failed', `tunnel to ${req.node.name}: no answer to CONNECT ${authority} in ${this.opts.timeoutMs ?? 10_000} ms`));
      }), this.opts.timeoutMs ?? 10_000);
      stream.once('response', (h) => settle(() => {
        const status = Number(h[':status']);
        if (status === 200) { track(stream, stats); return resolve(noResetAfterCleanEnd(stream)); }
        // the server answered with END_STREAM: ours ends the stream both ways. close() would send RST_STREAM
        // (NO_ERROR), and nghttp2 ends a session after ~1,000 received resets (see noResetAfterCleanEnd): a burst of
        // denied connections must not take the pooled connection down with it
        stream.resume();
        stream.end();
        reject(fail(statusReason(status), `tunnel to ${req.node.name}: CONNECT ${authority} refused with ${status}`, status));
      }));
      stream.once('close', () => settle(() => {
        reject(fail('tunnel-failed', `tunnel to ${req.node.name}: CONNECT ${authority} reset (code ${stream.rstCode})`));
      }));
      stream.on('error', () => { /* 'close' follows */ });
    });
  }

  /** Close every pooled connection (GOAWAY; streams on them finish). */
  close(): void {
    this.closed = true;
    for (const e of this.pool.values()) e.session.close();
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

  private session(req: TunnelRequest): Promise<ClientHttp2Session> {
    if (this.closed) return Promise.reject(new TunnelError('tunnel-failed', 'tunnel client closed'));
    const key = this.key(req);
    const have = this.pool.get(key);
    if (have && !have.session.closed && !have.session.destroyed) return have.ready;
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
    const session = h2connect(`https://${hostPort(req.node.address, port)}`, {
      settings: H2_SETTINGS,
      createConnection: () => {
        const sock = tlsConnect({
          host: req.node.address, port, secureContext: secureContextFor(m), ALPNProtocols: ['h2'],
          minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3',
          checkServerIdentity: (_host: string, cert: PeerCertificate) => serverIdentityProblem(cert, expected),
        });
        sock.setNoDelay(true);
        sock.once('secureConnect', () => { stats.handshakes++; });
        return sock;
      },
    });
    const entry: PoolEntry = {
      session, stats,
      ready: new Promise<ClientHttp2Session>((resolve, reject) => {
        const timer = setTimeout(() => session.destroy(new Error(`no connection in ${this.opts.timeoutMs ?? 10_000} ms`)), this.opts.timeoutMs ?? 10_000);
        session.once('connect', () => {
          clearTimeout(timer);
          stats.connections++;
          session.setLocalWindowSize(SESSION_WINDOW);
          log.info({ node: req.node.name, address: hostPort(req.node.address, port), source: req.source }, 'tunnel: connected');
          resolve(session);
        });
        session.once('close', () => {
          clearTimeout(timer);
          // the dial's own error says why (the server's identity, its chain, a refused connection)
          const why = failure ? `: ${failure.message}` : '';
          const reason: RefusalReason = failure instanceof ServerIdentityError || /CERT|UNABLE_TO/.test(failure?.code ?? '') ? 'bad-certificate' : 'tunnel-failed';
          reject(new TunnelError(reason, `tunnel to ${req.node.name} (${hostPort(req.node.address, port)}) closed before it was up${why}`));
        });
      }),
    };
    let failure: NodeJS.ErrnoException | undefined;
    // A failed dial is told once, to every open() waiting on it.
    entry.ready.catch((e: TunnelError) => { this.opts.metrics.refusal('out', e.reason); });
    const leave = (): void => { if (this.pool.get(key) === entry) this.pool.delete(key); };
    session.on('error', (e: NodeJS.ErrnoException) => {
      failure ??= e;
      log.warn({ node: req.node.name, source: req.source, err: e.message, code: e.code }, 'tunnel: connection failed');
      leave();
    });
    session.on('goaway', (code: number) => { log.info({ node: req.node.name, code }, 'tunnel: GOAWAY; the next stream dials a new connection'); leave(); });
    session.once('close', () => { if (stats.connections > 0 && entry.session === session) stats.connections--; leave(); });
    this.pool.set(key, entry);
    return entry.ready;
  }
}

/** How long a stream that ended both ways may wait for nghttp2's close before destroy() resets it after all. */
const CLEAN_END_GRACE_MS = 5000;

/**
 * A caller's destroy() of a stream that ended normally both ways must not reset it. Node's Http2Stream._destroy()
 * sends RST_STREAM for any stream nghttp2 has not yet reported closed, and 'end' (the peer's END_STREAM) is emitted
 * before nghttp2 closes the stream, so the natural `s.on('end', () => s.destroy())` (bench/tunnel.ts) reset every
 * stream with NO_ERROR. nghttp2 >= 1.57 (the CVE-2023-44487 "rapid reset" fix) counts the resets a server receives
 * (burst 1000, then 33/s) and then ends the session with GOAWAY INTERNAL_ERROR: the pooled connection and the
 * streams in flight on it died every ~1,000 streams (test/unit/tunnel-many). So when the peer's END_STREAM was read
 * and ours is written, destroy() without an error leaves the stream to nghttp2, which closes it (our END_STREAM goes
 * out first if it was still queued) and Node then destroys it itself (onStreamClose), with no frame sent. destroy()
 * with an error, or of a stream not ended both ways, resets as before: that is a real abort.
 */
function noResetAfterCleanEnd(stream: ClientHttp2Stream): ClientHttp2Stream {
  const destroy = stream.destroy.bind(stream);
  stream.destroy = (err?: Error): ClientHttp2Stream => {
    if (err !== undefined || stream.closed || stream.destroyed || stream.session?.destroyed !== false
      || !stream.readableEnded || !stream.writableFinished) return destroy(err);
    // nghttp2's close normally follows within the same read; a stream that stays open that long is reset after all
    const timer = setTimeout(() => { if (!stream.closed) destroy(); }, CLEAN_END_GRACE_MS).unref();
    stream.once('close', () => clearTimeout(timer));
    return stream;
  };
  return stream;
}

class ServerIdentityError extends Error {}

/** Why the server's certificate is not acceptable (checkServerIdentity: an Error refuses the handshake), or undefined. */
function serverIdentityProblem(cert: PeerCertificate, expected: string): Error | undefined {
  const uris = (cert.subjectaltname ?? '').split(', ').filter((s) => s.startsWith('URI:spiffe://')).map((s) => s.slice(4));
  if (uris.length !== 1) return new ServerIdentityError(`the server's certificate ${cert.serialNumber} has ${uris.length} SPIFFE URI SANs (want exactly one, ${expected})`);
  if (uris[0] !== expected) return new ServerIdentityError(`the server presented ${uris[0]}, not the identity of the node dialled (${expected})`);
  return undefined;
}
