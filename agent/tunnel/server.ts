// The node's end of HBONE (issue 13), as ztunnel speaks it: HTTP/2 over mTLS (TLS 1.3 only, ALPN h2) on port 15008;
// each tunnelled connection is one CONNECT stream (`:method CONNECT`, `:authority <pod ip>:<port>`, no :scheme or
// :path). The server requires a client certificate chaining to the trust bundle, takes the peer's SPIFFE id from its
// URI SAN, serves only destinations that are workloads on this node (421 otherwise: no open relay to anywhere the
// node can reach), applies L4 authorization by identity (403), connects to the pod (503 when it cannot) and splices
// the stream to that connection (200).
//
// HTTP/2 is the proxy's own session (agent/proxy/h2/session.ts) over netio's TLS (a NetConn), as on the client
// (client.ts says why not node:http2 and node:tls); a stream is spliced to the pod's socket by splice.ts. The
// handshake itself requires a client certificate that chains to the bundle (netio's TLS refuses anything else, with
// OpenSSL's reason); the SPIFFE id is checked here.
//
// Bad input costs little and is told: a handshake must finish within handshakeTimeoutMs, at most maxPendingHandshakes
// are in progress at once (more are closed at accept), and every refusal is counted by reason and logged (one line
// per reason, then a summary per second under a flood, so a flood cannot flood the log).
import { X509Certificate } from 'node:crypto';
import { closeSync } from 'node:fs';
import { isIP } from 'node:net';
import type { Logger } from '../observe/log.js';
import type { IdentityCerts } from '../identity/material.js';
import { parseNodeSpiffeId, parseSpiffeId } from '../model/spiffe.js';
import type { HeaderList } from '../proxy/h2/hpack.js';
import { H2Session, type H2Stream, type H2StreamHandler } from '../proxy/h2/session.js';
import { NetTlsContext, type NetConn, type NetListener } from '../proxy/netio.js';
import type { TunnelMetrics, PeerStats } from './metrics.js';
import { splice, track, TUNNEL_H2, TUNNEL_TLS_HIGH_WATER, tunnelIo, type Early } from './splice.js';
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

/** OpenSSL's X509 verify messages by node:tls's names for them (X509_verify_cert_error_string -> authorizationError) */
const VERIFY_CODES: Record<string, string> = {
  'certificate has expired': 'CERT_HAS_EXPIRED',
  'certificate is not yet valid': 'CERT_NOT_YET_VALID',
  'unable to get local issuer certificate': 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'unable to get issuer certificate': 'UNABLE_TO_GET_ISSUER_CERT',
  'unable to verify the first certificate': 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'self-signed certificate': 'DEPTH_ZERO_SELF_SIGNED_CERT',
  'self signed certificate': 'DEPTH_ZERO_SELF_SIGNED_CERT',
  'self-signed certificate in certificate chain': 'SELF_SIGNED_CERT_IN_CHAIN',
  'self signed certificate in certificate chain': 'SELF_SIGNED_CERT_IN_CHAIN',
  'certificate signature failure': 'CERT_SIGNATURE_FAILURE',
  'certificate revoked': 'CERT_REVOKED',
  'unsupported certificate purpose': 'INVALID_PURPOSE',
};

/** how long stop() waits for sessions to finish their streams after GOAWAY */
const STOP_WAIT_MS = 5000;

/** A stream refused with a status: what the client still sends is read and dropped (its END_STREAM closes it). */
const DISCARD: H2StreamHandler = { onHeaders() {}, onData(d: Buffer) { void d; }, onTrailers() {}, onReset() {}, onWritable() {} };

export class TunnelServer {
  private readonly listeners: NetListener[] = [];
  private readonly live = new Set<H2Session>();
  /** connections whose TLS handshake is in progress, by remote address:port */
  private readonly pending = new Map<string, NetConn>();
  /** stop() was called: a handshake that finishes now gets a session that shuts down at once */
  private stopping = false;
  private readonly refusals: RefusalLog;
  private readonly trustDomain: string;
  /** what new handshakes present and trust (a renewal or a new bundle makes a new one; live connections keep theirs) */
  private ctx: NetTlsContext | null = null;
  private readonly onChange = (identity: string): void => { if (identity === '' || identity === this.opts.identity) this.reloadContext(); };

  constructor(private readonly opts: TunnelServerOpts) {
    this.refusals = new RefusalLog(opts.log);
    const node = parseNodeSpiffeId(opts.identity);
    if (!node) throw new Error(`tunnel server identity ${opts.identity}: expected a node identity spiffe://<trust domain>/sockmesh/node/<node> (clients check it against the node they dialled)`);
    this.trustDomain = node.trustDomain;
  }

  /** Listen on every address; resolves with the address:port strings once all listen (rejects, closing all, if one cannot). */
  async start(): Promise<string[]> {
    const port = this.opts.port ?? HBONE_PORT;
    /** fds the loop took (it closes them with their listener) */
    const used = new Set<number>();
    try {
      this.ctx = this.context();
      for (const address of this.opts.addresses) {
        const onConn = (c: NetConn): void => this.onConnection(c);
        const onErr = (e: Error): void => this.opts.log.error({ err: e.message, address }, 'tunnel: accept failed');
        const fd = this.opts.fds?.find((f) => f.address === address)?.fd;
        // adopt() leaves the fd to us when it throws (not a listening socket): marked as the loop's only once taken
        this.listeners.push(fd !== undefined ? tunnelIo().adopt(fd, address, onConn, onErr) : tunnelIo().listen(address, port, onConn, onErr));
        if (fd !== undefined) used.add(fd);
      }
    } catch (e) {
      await this.stop();
      // the given sockets no listener took: closed here (they are ours), or they would queue SYNs nobody accepts
      for (const { fd } of this.opts.fds ?? []) if (!used.has(fd)) { try { closeSync(fd); } catch { /* closed already */ } }
      throw new Error(`tunnel: cannot listen on ${this.opts.addresses.join(', ')} port ${port}: ${(e as Error).message}`);
    }
    this.opts.certs.on('change', this.onChange);
    const listening = this.listening();
    this.opts.log.info({ listening, identity: this.opts.identity, takenOver: !!this.opts.fds?.length }, 'tunnel: HBONE server listening');
    return listening;
  }

  /** The listening sockets (address as given, port, fd): what a planned restart hands to the new agent. */
  listenerFds(): { address: string; port: number; fd: number }[] {
    return this.listeners.map((l) => ({ address: l.host, port: l.port, fd: l.fd() }));
  }

  /** TLS handshakes in progress now (bounded by maxPendingHandshakes). */
  get pendingHandshakes(): number { return this.pending.size; }

  listening(): string[] {
    return this.listeners.map((l) => (l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`));
  }

  /**
   * Stop listening; open sessions get GOAWAY and their streams finish. Resolves once they have closed (those still
   * open after STOP_WAIT_MS are cut).
   */
  async stop(): Promise<void> {
    this.opts.certs.off('change', this.onChange);
    this.stopping = true;
    for (const l of this.listeners) l.close();
    this.listeners.length = 0;
    // the three-step shutdown (proxy/h2/session.ts), not a bare GOAWAY: a CONNECT already on its way is served, not
    // refused (a planned restart stops this server while clients keep opening streams). Handshakes under way finish
    // and their sessions are shut down the same way (onSecure): their clients connected while we listened.
    for (const session of this.live) session.shutdown();
    const end = Date.now() + STOP_WAIT_MS;
    while ((this.live.size > 0 || this.pending.size > 0) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    for (const c of this.pending.values()) c.destroy();
    for (const session of this.live) session.destroy();
    this.refusals.close();
  }

  private context(): NetTlsContext {
    const m = this.opts.certs.get(this.opts.identity);
    if (!m) throw new Error(`tunnel: no certificate for ${this.opts.identity} yet`);
    return new NetTlsContext({ role: 'server', chain: m.chain, key: m.key, bundle: m.bundle, alpn: ['h2'] });
  }

  /** A renewal or a new bundle: new handshakes use it; established sessions keep theirs (no stream dropped). */
  private reloadContext(): void {
    try {
      this.ctx = this.context();
      this.opts.log.info({ identity: this.opts.identity }, 'tunnel: certificate or trust bundle changed; new handshakes use it');
    } catch (e) {
      this.opts.log.error({ err: e }, 'tunnel: the new certificate could not be used; keeping the old one');
    }
  }

  private refuse(reason: RefusalReason, fields: Record<string, unknown>, msg: string, kind?: string): void {
    this.opts.metrics.refusal('in', reason);
    this.refusals.refuse(reason, fields, msg, kind);
  }

  private onConnection(c: NetConn): void {
    const key = `${c.remoteAddress}|${c.remotePort}`;
    const max = this.opts.maxPendingHandshakes ?? 64;
    if (this.pending.size >= max || this.ctx === null) {
      this.refuse('too-many-handshakes', { peer: c.remoteAddress, pending: this.pending.size },
        `tunnel: ${this.pending.size} handshakes in progress (max ${max}): connection closed at accept`);
      c.destroy();
      return;
    }
    this.pending.set(key, c);
    c.once('close', () => { if (this.pending.get(key) === c) this.pending.delete(key); });
    // before this returns: the next wake of the loop would read the ClientHello as plain data
    c.startTls(this.ctx, { handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 5000 });
    c.once('error', (e: NodeJS.ErrnoException) => { if (!c.secure) this.onTlsError(e, c); });
    c.once('secure', () => this.onSecure(c));
  }

  private onTlsError(e: NodeJS.ErrnoException & { reason?: string }, c: NetConn): void {
    this.pending.delete(`${c.remoteAddress}|${c.remotePort}`);
    const reason = handshakeReason(e);
    const peer = c.remoteAddress;
    const what = e.reason ?? e.message;
    if (reason === 'no-certificate') return this.refuse(reason, { peer, code: e.code }, 'tunnel: refused a client without a certificate (HBONE is mutual TLS)');
    const verify = /certificate verify failed \((.+)\)/.exec(what)?.[1];
    if (verify !== undefined) {
      // named as node:tls names verify errors (CERT_HAS_EXPIRED, ...): what operators and the tests look for; one
      // line per kind (an expired certificate and an unknown CA are both CERTIFICATE_VERIFY_FAILED to OpenSSL)
      const code = VERIFY_CODES[verify] ?? verify;
      return this.refuse('bad-certificate', { peer, error: code }, `tunnel: client certificate refused: ${code} (${verify})`, code);
    }
    const hint = reason === 'bad-handshake' ? ' (HBONE is TLS 1.3 only, ALPN h2)' : '';
    this.refuse(reason, { peer, code: e.code }, `tunnel: TLS handshake refused: ${what}${hint}`, e.reason ?? e.code);
  }

  /** A finished handshake (ALPN h2, a client certificate verified against the bundle): one SPIFFE id of our trust domain, then the session. */
  private onSecure(c: NetConn): void {
    this.pending.delete(`${c.remoteAddress}|${c.remotePort}`);
    const peer = c.remoteAddress ?? '?';
    let identity: string;
    try {
      identity = peerIdentity(c.getPeerX509Certificate(), this.trustDomain);
    } catch (e) {
      this.refuse('no-identity', { peer }, `tunnel: client certificate refused: ${(e as Error).message}`);
      c.destroy();
      return;
    }
    c.setNoDelay(true);
    c.highWaterMark = TUNNEL_TLS_HIGH_WATER;
    // the session gives each read back once its DATA went to splices (Splice.releasesData): slabs filled again
    c.returnsTlsReads = true;
    const stats = this.opts.metrics.peer('in', peer, identity);
    stats.handshakes++;
    stats.connections++;
    const info: SessionInfo = { identity, stats, peer };
    const session: H2Session = new H2Session(c, {
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
    if (this.stopping) session.shutdown();
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
    // the pod's connection is a NetConn in the tunnel's own loop (TCP_NODELAY set there), as the TLS side is: a
    // tunnelled byte never crosses a libuv stream
    const sock = tunnelIo().connect({ address: dst.address, port: dst.port });
    sock.allowHalfOpen = true;
    let connected = false;
    const timer = setTimeout(() => {
      if (connected || dialling.reset) return;
      sock.destroy();
      answer(504, 'upstream-failed', `tunnel: ${authority} did not accept: connect timed out`);
    }, this.opts.connectTimeoutMs ?? 10_000);
    // the client gave up (RST_STREAM) before the pod answered
    const dialling = new Dialling(() => { clearTimeout(timer); sock.destroy(); });
    if (endStream) dialling.early.ended = true;
    stream.handler = dialling;
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (connected || dialling.reset) return; // after the 200: the splice handles it
      answer(503, 'upstream-failed', `tunnel: ${authority} did not accept: ${e.code ?? e.message}`);
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
