// The node's end of HBONE (issue 13), as ztunnel speaks it: HTTP/2 over mTLS (TLS 1.3 only, ALPN h2) on port 15008;
// each tunnelled connection is one CONNECT stream (`:method CONNECT`, `:authority <pod ip>:<port>`, no :scheme or
// :path). The server requires a client certificate chaining to the trust bundle, takes the peer's SPIFFE id from its
// URI SAN, serves only destinations that are workloads on this node (421 otherwise: no open relay to anywhere the
// node can reach), applies L4 authorization by identity (403), connects to the pod (503 when it cannot) and splices
// the stream to that connection (200).
//
// HTTP/2 is the proxy's own session (agent/proxy/h2/session.ts) over the TLS socket, as on the client (client.ts
// says why not node:http2); a stream is spliced to the pod's socket by splice.ts.
//
// Bad input costs little and is told: a handshake must finish within handshakeTimeoutMs, at most maxPendingHandshakes
// are in progress at once (more are closed at accept), and every refusal is counted by reason and logged (one line
// per reason, then a summary per second under a flood, so a flood cannot flood the log).
import { X509Certificate } from 'node:crypto';
import { closeSync } from 'node:fs';
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { createServer as tlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { Logger } from '../observe/log.js';
import type { IdentityCerts } from '../identity/material.js';
import { parseNodeSpiffeId, parseSpiffeId } from '../model/spiffe.js';
import type { HeaderList } from '../proxy/h2/hpack.js';
import { H2_ERROR, H2Session, type H2Stream, type H2StreamHandler } from '../proxy/h2/session.js';
import type { TunnelMetrics, PeerStats } from './metrics.js';
import { splice, track, TUNNEL_H2, type Early } from './splice.js';
import { HBONE_PORT, type RefusalReason } from './types.js';

/** A decision on one tunnelled connection (kernel13's authz4 decision fills it once it lands). */
export interface L4Decision { allow: boolean; /** the policy or rule that decided, for the log */ policy?: string }
export type L4Authorizer = (q: { source: string; dst: { address: string; port: number } }) => L4Decision;

export interface TunnelServerOpts {
  certs: IdentityCerts;
  /** the identity whose certificate the server presents: the node's (spiffe://<td>/sockmesh/node/<name>), which clients check */
  identity: string;
  /** the node address(es) to listen on */
  addresses: string[];
  /**
   * Listening sockets to accept on instead of listening anew, by address (a planned restart: the running agent's,
   * received over SCM_RIGHTS; agent/tunnelhost.ts). The server owns each fd it is given.
   */
  fds?: { address: string; fd: number }[];
  port?: number;
  /** is `address` a workload on this node: the only destinations the server connects to */
  isLocal(address: string): boolean;
  /** L4 authorization by the peer's identity; absent: allowed (no policy, as in Istio) */
  authorize?: L4Authorizer;
  metrics: TunnelMetrics;
  log: Logger;
  handshakeTimeoutMs?: number;
  maxPendingHandshakes?: number;
  /** how long the connection to the pod may take (then 504) */
  connectTimeoutMs?: number;
}

/**
 * The SPIFFE id in a peer certificate's URI SAN: exactly one, well formed, in `trustDomain`. Throws a message naming
 * what is wrong (it goes to the log line of the refusal).
 */
export function peerIdentity(cert: X509Certificate | undefined, trustDomain: string): string {
  if (!cert) throw new Error('no certificate');
  const uris = (cert.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
  const spiffe = uris.filter((u) => u.startsWith('spiffe://'));
  if (spiffe.length !== 1) throw new Error(`certificate ${cert.serialNumber}: ${spiffe.length} SPIFFE URI SANs (want exactly one)`);
  if (parseNodeSpiffeId(spiffe[0]!)) throw new Error(`certificate ${cert.serialNumber}: ${spiffe[0]} is a node agent's identity; a tunnel client presents its source workload's`);
  const id = parseSpiffeId(spiffe[0]!);
  if (id.trustDomain !== trustDomain) throw new Error(`certificate ${cert.serialNumber}: ${spiffe[0]} is not of trust domain ${trustDomain}`);
  return spiffe[0]!;
}

/** `<ipv4>:<port>` or `[<ipv6>]:<port>`, the CONNECT authority HBONE uses (an address, never a name). */
export function parseAuthority(authority: string | undefined): { address: string; port: number } | undefined {
  if (!authority) return undefined;
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(authority) ?? /^([0-9.]+):(\d{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (!isIP(m[1]!) || port < 1 || port > 65535) return undefined;
  return { address: m[1]!, port };
}

/** TLS handshake failures by what they mean for the refusal count (OpenSSL's codes, as Node names them). */
function handshakeReason(e: NodeJS.ErrnoException): RefusalReason {
  if (e.code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'handshake-timeout';
  if (e.code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') return 'no-certificate';
  if (/CERTIFICATE|CERT_/.test(e.code ?? '')) return 'bad-certificate';
  return 'bad-handshake';
}

/**
 * Log refusals without letting a flood flood the log: the first of each reason at once, then one summary line per
 * second with the count of the rest.
 */
class RefusalLog {
  private readonly suppressed = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  constructor(private readonly log: Logger) {}

  /** `kind`: what else tells refusals of one reason apart (a TLS error code): the first of each kind is logged whole. */
  refuse(reason: RefusalReason, fields: Record<string, unknown>, msg: string, kind = ''): void {
    const key = kind ? `${reason} ${kind}` : reason;
    const n = this.suppressed.get(key);
    if (n === undefined) {
      this.suppressed.set(key, 0);
      this.log.warn({ reason, ...fields }, msg);
      this.timer ??= setInterval(() => this.flush(), 1000).unref();
    } else {
      this.suppressed.set(key, n + 1);
    }
  }

  private flush(): void {
    for (const [reason, n] of this.suppressed) if (n > 0) this.log.warn({ reason, count: n }, `tunnel: ${n} more refused (${reason}) in the last second`);
    this.suppressed.clear();
    if (this.timer) { clearInterval(this.timer); this.timer = null; }
  }

  close(): void { this.flush(); }
}

interface SessionInfo { identity: string; stats: PeerStats; peer: string }

/**
 * A CONNECT stream whose pod connection is under way: DATA the client sent meanwhile is kept (not counted back, so
 * its window holds it to 4 MiB) and handed to the splice; a reset cancels the connect.
 */
class Dialling implements H2StreamHandler {
  readonly early: Early = { chunks: [], ended: false };
  reset = false;
  constructor(private readonly onCancel: () => void) {}
  onHeaders(): void {}
  onData(data: Buffer, endStream: boolean): void {
    if (data.length > 0) this.early.chunks.push(data);
    if (endStream) this.early.ended = true;
  }
  onTrailers(): void { this.early.ended = true; }
  onReset(): void { this.reset = true; this.onCancel(); }
  onWritable(): void {}
}

/** A stream refused with a status: what the client still sends is read and dropped (its END_STREAM closes it). */
const DISCARD: H2StreamHandler = { onHeaders() {}, onData(d: Buffer) { void d; }, onTrailers() {}, onReset() {}, onWritable() {} };

export class TunnelServer {
  private readonly servers: TlsServer[] = [];
  private readonly live = new Set<H2Session>();
  /** raw sockets whose TLS handshake is in progress, by remote address:port */
  private readonly pending = new Map<string, Socket>();
  private readonly refusals: RefusalLog;
  private readonly trustDomain: string;
  private readonly onChange = (identity: string): void => { if (identity === '' || identity === this.opts.identity) this.reloadContext(); };

  constructor(private readonly opts: TunnelServerOpts) {
    this.refusals = new RefusalLog(opts.log);
    const node = parseNodeSpiffeId(opts.identity);
    if (!node) throw new Error(`tunnel server identity ${opts.identity}: expected a node identity spiffe://<trust domain>/sockmesh/node/<node> (clients check it against the node they dialled)`);
    this.trustDomain = node.trustDomain;
  }

  /** Listen on every address; resolves with the address:port strings once all listen (rejects, closing all, if one cannot). */
  async start(): Promise<string[]> {
    const tls = this.tlsOptions();
    /** fds handed to a listener (closed with it, whatever came of it) */
    const used = new Set<number>();
    try {
      for (const address of this.opts.addresses) {
        const server = tlsServer({
          ...tls, ALPNProtocols: ['h2'], handshakeTimeout: this.opts.handshakeTimeoutMs ?? 5000,
          // requested, verified by OpenSSL against the bundle, and checked at 'secureConnection' (so that the log says why)
          requestCert: true, rejectUnauthorized: false,
        });
        server.on('connection', (sock: Socket) => this.onConnection(sock));
        server.on('secureConnection', (s: TLSSocket) => this.onSecure(s));
        server.on('tlsClientError', (e: NodeJS.ErrnoException, s: TLSSocket) => this.onTlsError(e, s));
        this.servers.push(server);
        const fd = this.opts.fds?.find((f) => f.address === address)?.fd;
        if (fd !== undefined) used.add(fd);
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(fd !== undefined ? { fd } : { host: address, port: this.opts.port ?? HBONE_PORT }, () => { server.off('error', reject); resolve(); });
        });
        server.on('error', (e) => this.opts.log.error({ err: e, address }, 'tunnel: listener error'));
      }
    } catch (e) {
      await this.stop();
      // the given sockets no listener took: closed here (they are ours), or they would queue SYNs nobody accepts
      for (const { fd } of this.opts.fds ?? []) if (!used.has(fd)) { try { closeSync(fd); } catch { /* closed already */ } }
      throw new Error(`tunnel: cannot listen on ${this.opts.addresses.join(', ')} port ${this.opts.port ?? HBONE_PORT}: ${(e as Error).message}`);
    }
    this.opts.certs.on('change', this.onChange);
    const listening = this.listening();
    this.opts.log.info({ listening, identity: this.opts.identity, takenOver: !!this.opts.fds?.length }, 'tunnel: HBONE server listening');
    return listening;
  }

  /** The listening sockets (address as given, port, fd): what a planned restart hands to the new agent. */
  listenerFds(): { address: string; port: number; fd: number }[] {
    return this.servers.flatMap((s, i) => {
      const fd = (s as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
      const a = s.address();
      return typeof fd === 'number' && fd >= 0 && a && typeof a === 'object' ? [{ address: this.opts.addresses[i]!, port: a.port, fd }] : [];
    });
  }

  /** TLS handshakes in progress now (bounded by maxPendingHandshakes). */
  get pendingHandshakes(): number { return this.pending.size; }

  listening(): string[] {
    return this.servers.flatMap((s) => {
      const a = s.address();
      return a && typeof a === 'object' ? [a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`] : [];
    });
  }

  /** Stop listening; open sessions get GOAWAY and their streams finish. */
  async stop(): Promise<void> {
    this.opts.certs.off('change', this.onChange);
    // the three-step shutdown (proxy/h2/session.ts), not a bare GOAWAY: a CONNECT already on its way is served, not
    // refused (a planned restart stops this server while clients keep opening streams)
    for (const session of this.live) session.shutdown();
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    this.servers.length = 0;
    this.refusals.close();
  }

  private tlsOptions(): { key: string; cert: string; ca: string; minVersion: 'TLSv1.3'; maxVersion: 'TLSv1.3' } {
    const m = this.opts.certs.get(this.opts.identity);
    if (!m) throw new Error(`tunnel: no certificate for ${this.opts.identity} yet`);
    return { key: m.key, cert: m.chain, ca: m.bundle, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' };
  }

  /** A renewal or a new bundle: new handshakes use it; established sessions keep theirs (no stream dropped). */
  private reloadContext(): void {
    try {
      const tls = this.tlsOptions();
      for (const s of this.servers) s.setSecureContext(tls);
      this.opts.log.info({ identity: this.opts.identity }, 'tunnel: certificate or trust bundle changed; new handshakes use it');
    } catch (e) {
      this.opts.log.error({ err: e }, 'tunnel: the new certificate could not be used; keeping the old one');
    }
  }

  private refuse(reason: RefusalReason, fields: Record<string, unknown>, msg: string, kind?: string): void {
    this.opts.metrics.refusal('in', reason);
    this.refusals.refuse(reason, fields, msg, kind);
  }

  private onConnection(sock: Socket): void {
    const key = `${sock.remoteAddress}|${sock.remotePort}`;
    const max = this.opts.maxPendingHandshakes ?? 64;
    if (this.pending.size >= max) {
      this.refuse('too-many-handshakes', { peer: sock.remoteAddress, pending: this.pending.size },
        `tunnel: ${this.pending.size} handshakes in progress (max ${max}): connection closed at accept`);
      sock.destroy();
      return;
    }
    this.pending.set(key, sock);
    sock.once('close', () => { if (this.pending.get(key) === sock) this.pending.delete(key); });
  }

  private onTlsError(e: NodeJS.ErrnoException, s: TLSSocket): void {
    this.pending.delete(`${s.remoteAddress}|${s.remotePort}`);
    const reason = handshakeReason(e);
    const hint = reason === 'bad-handshake' ? ' (HBONE is TLS 1.3 only, ALPN h2)' : '';
    // OpenSSL's message is '<hex>:error:<hex>:SSL routines:<function>:<what>:<file>:<line>:': keep the what
    const what = /routines:[^:]*:([^:]+)/.exec(e.message)?.[1] ?? e.message.trim();
    this.refuse(reason, { peer: s.remoteAddress, code: e.code }, `tunnel: TLS handshake refused: ${what}${hint}`, e.code);
    // (a handshake timeout leaves the socket open: node:http2's server closed it, tls.Server does not)
    s.destroy();
  }

  /** A finished handshake: ALPN h2, a verified certificate with one SPIFFE id of our trust domain, then the session. */
  private onSecure(sock: TLSSocket): void {
    this.pending.delete(`${sock.remoteAddress}|${sock.remotePort}`);
    const peer = sock.remoteAddress ?? '?';
    sock.on('error', () => { /* the session hears of it at 'close' */ });
    const refuse = (reason: RefusalReason, fields: Record<string, unknown>, msg: string, kind?: string): void => {
      this.refuse(reason, { peer, ...fields }, msg, kind);
      sock.destroy();
    };
    if (sock.alpnProtocol !== 'h2') {
      return refuse('bad-handshake', { alpn: sock.alpnProtocol || null }, 'tunnel: refused a client that did not negotiate ALPN h2');
    }
    if (!sock.authorized) {
      if (!sock.getPeerX509Certificate()) return refuse('no-certificate', {}, 'tunnel: refused a client without a certificate (HBONE is mutual TLS)');
      // Node's verify codes (CERT_HAS_EXPIRED, UNABLE_TO_GET_ISSUER_CERT_LOCALLY, ...) say what is wrong with it
      const why = String(sock.authorizationError ?? 'not verified');
      return refuse('bad-certificate', { error: why }, `tunnel: client certificate refused: ${why}`, why);
    }
    let identity: string;
    try {
      identity = peerIdentity(sock.getPeerX509Certificate(), this.trustDomain);
    } catch (e) {
      return refuse('no-identity', {}, `tunnel: client certificate refused: ${(e as Error).message}`);
    }
    sock.setNoDelay(true);
    const stats = this.opts.metrics.peer('in', peer, identity);
    stats.handshakes++;
    stats.connections++;
    const info: SessionInfo = { identity, stats, peer };
    const session: H2Session = new H2Session(sock, {
      role: 'server', ...TUNNEL_H2,
      onStream: (stream, headers, endStream, tooLarge) => this.onStream(info, stream, headers, endStream, tooLarge),
      onClose: (err) => {
        stats.connections--;
        this.live.delete(session);
        // what ended it is told (a protocol error of the peer's, a transport error)
        if (err) this.opts.log.warn({ peer, identity, err: err.message }, 'tunnel: session failed');
      },
    });
    this.live.add(session);
  }

  private onStream(info: SessionInfo, stream: H2Stream, h: HeaderList, endStream: boolean, tooLarge: boolean): void {
    const get = (name: string): string | undefined => { for (let i = 0; i < h.length; i += 2) if (h[i] === name) return h[i + 1]; return undefined; };
    const method = get(':method'), authority = get(':authority');
    const fields = { peer: info.peer, identity: info.identity, authority };
    const answer = (status: number, reason: RefusalReason, msg: string, extra: Record<string, unknown> = {}): void => {
      this.refuse(reason, { ...fields, status, ...extra }, msg);
      stream.handler = DISCARD;
      stream.sendHeaders([':status', String(status)], true);
    };
    // (the session refused malformed heads already: a CONNECT with :scheme or :path, :protocol not announced)
    if (tooLarge) return answer(431, 'bad-request', 'tunnel: refused a request head over the size limit');
    if (method !== 'CONNECT') return answer(400, 'bad-request', `tunnel: refused a request that is not an HBONE CONNECT (${method} ${get(':path') ?? ''})`.trim());
    const dst = parseAuthority(authority);
    if (!dst) return answer(400, 'bad-request', `tunnel: refused CONNECT to ${JSON.stringify(authority)}: not <ip>:<port>`);
    if (!this.opts.isLocal(dst.address)) return answer(421, 'not-local', `tunnel: refused CONNECT to ${authority}: not a workload on this node`);
    const decision = this.opts.authorize?.({ source: info.identity, dst }) ?? { allow: true };
    if (!decision.allow) {
      return answer(403, 'denied', `tunnel: ${info.identity} denied to ${authority}`, decision.policy ? { policy: decision.policy } : {});
    }
    const sock = netConnect({ host: dst.address, port: dst.port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => sock.destroy(new Error('connect timed out')), this.opts.connectTimeoutMs ?? 10_000);
    // the client gave up (RST_STREAM) before the pod answered
    const dialling = new Dialling(() => { clearTimeout(timer); sock.destroy(); });
    if (endStream) dialling.early.ended = true;
    stream.handler = dialling;
    let connected = false;
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (connected || dialling.reset) return; // after the 200: the splice handles it
      answer(e.message === 'connect timed out' ? 504 : 503, 'upstream-failed', `tunnel: ${authority} did not accept: ${e.code ?? e.message}`);
    });
    sock.once('connect', () => {
      connected = true;
      clearTimeout(timer);
      if (dialling.reset || stream.closed) { sock.destroy(); return; }
      stream.sendHeaders([':status', '200'], false);
      splice(stream, sock, info.stats, track(info.stats), dialling.early);
    });
  }
}
