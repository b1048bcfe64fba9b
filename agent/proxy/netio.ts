// The proxy's own TCP sockets: NetIo owns one native epoll loop (native/netio.cc) and NetConn is the
// Conn (conn.ts) over one of its sockets. Node's stream machinery (a 64 KiB allocation per read,
// Readable/Writable state, a request object per write, one callback per read) costs several times
// the proxy's own logic per request; here one wake of the loop reads every ready socket into one
// shared arena and delivers the whole batch in one call, and a write is one send(2) at once (or, on a loop made with
// deferWrites, the proxy's, once the batch's JavaScript is over: NetIo's constructor).
//
// The native side does syscalls, buffering and events only; what they mean is decided here:
// Errors as Error objects with node's codes, node's default half-close (allowHalfOpen false: the
// peer's EOF ends our side too), 'close' exactly once and after the call that caused it, and idle
// timeouts with a lazily re-armed timer instead of one refreshed on every read.
//
// TLS (NetTlsContext, NetConn.startTls): TLS 1.3 in the same loop, with the OpenSSL node itself runs (native/netio.cc
// says why that is safe), so that a TLS connection is a NetConn too: no TLSSocket, no stream per record. The native
// side verifies the peer's chain against the context's bundle; what the chain means (the SPIFFE identity) is decided
// by the caller from getPeerX509Certificate(), as with a TLSSocket. Its plaintext is read into a slab, not the arena,
// and handed on without a copy (SLAB_BYTES says how).
import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { constants as osConstants } from 'node:os';
import { loadAddon } from '../addon.js';
import type { Conn } from './conn.js';
import { loopTraceFromEnv, type LoopTrace } from './looptrace.js';

// ---- the face of build/Release/sockmesh_netio.node (native/netio.cc; its own gyp target, no libbpf) ----

/** The addon's NetLoop. Ids come from a counter: never reused. */
export interface NativeNetLoop {
  listen(host: string, port: number, backlog: number): number;
  /** a listening socket received from another process (a planned restart): accepted on from now on; the loop owns it */
  adopt(fd: number): number;
  /** a listener's fd (still the loop's): what a planned restart sends to the new agent */
  fdOf(id: number): number;
  localPort(id: number): number;
  connect(host: string, port: number): number;
  /** bytes queued after the call (0: all sent) or -errno */
  write(id: number, data: Buffer | Uint8Array | string, utf8: boolean): number;
  writev(id: number, chunks: (Buffer | Uint8Array | string)[]): number;
  pause(id: number): void;
  resume(id: number): void;
  /** 1 done now, 0 once the queue is flushed (SHUTDOWN event), or -errno */
  shutdown(id: number): number;
  /** 1 SHUT_WR done now; 0 not done (bytes or the peer's EOF wait to be read, or ours to be written), or -errno */
  shutdownIdle(id: number): number;
  close(id: number): void;
  /** close with SO_LINGER 0: the peer gets a RST (absent in an addon built before it) */
  reset?(id: number): void;
  release(id: number): number;
  setNoDelay(id: number, on: boolean): void;
  /** plain sockets' writes made during a batch go out when it is over (absent in an addon built before it) */
  setDeferWrites?(on: boolean): void;
  count(): number;
  closeAll(): void;
  /** TLS on a socket before any byte moved on it; SECURE or an OP_TLS ERROR follows */
  startTls(id: number, ctx: NativeTlsContext, servername: string): void;
  /** after SECURE: what was negotiated and the peer's chain (DER, leaf first); undefined before */
  tlsInfo(id: number): NativeTlsInfo | undefined;
  /** OpenSSL's reason for an OP_TLS error ('' if none) */
  tlsError(id: number): string;
  /** TLS plaintext goes into `slab` from offset 0 on (TLSDATA events); the loop lets the previous one go */
  setSlab(slab: Buffer): void;
}

/** The addon's TlsContext: one SSL_CTX (TLS 1.3, mutual, verified against the bundle). */
export interface NativeTlsContext {
  /** let go of the SSL_CTX now (connections made with it keep theirs) */
  free(): void;
}

export interface NativeTlsInfo {
  protocol: string;
  cipher: string;
  /** '' when none was negotiated */
  alpn: string;
  peerCertificates: Buffer[];
}

export interface NetioAddon {
  /** one epoll loop: events are written to `events` (EVENT_INTS int32 each) and data to `arena`, then cb(count) */
  NetLoop: new (arena: Buffer, events: Int32Array, cb: (n: number, slabUsed: number) => void) => NativeNetLoop;
  /** (role, chain PEM, key PEM, trust bundle PEM, ALPN protocols); throws naming the part that is wrong */
  TlsContext: new (role: 'server' | 'client', chain: string, key: string, bundle: string, alpn: string[]) => NativeTlsContext;
  /** the event kinds, error operations and event size as native/netio.cc declares them, by their C++ names */
  constants: Readonly<Record<string, number>>;
  // fd passing for the planned restart (native/fdpass.cc; used by agent/handover.ts)
  /** a blocking connect to a unix stream socket: its fd (ECONNREFUSED: nobody listens there) */
  unixConnect(path: string): number;
  /** one message with fds attached (SCM_RIGHTS); waits up to timeoutMs for room */
  sendFds(fd: number, data: Buffer, fds: number[], timeoutMs: number): void;
  /** one read (waiting up to timeoutMs for something) and the fds that came with it; data empty at EOF */
  recvFds(fd: number, maxBytes: number, timeoutMs: number): { data: Buffer; fds: number[] };
  closeFd(fd: number): void;
  socketInfo(fd: number): { family: 0 | 4 | 6; stream: boolean; listening: boolean };
  /** the socket's pending error (SO_ERROR, cleared by asking), 0 when none (agent/tunnel/sockreset.ts) */
  socketError(fd: number): number;
}

// Plain numbers in the hot loop (onEvents); that they are native/netio.cc's is checked once, at load.
/** an event already handled in this batch (onEvents' first pass); never sent by the addon */
const EV_NONE = 0;
const EV_ACCEPT = 1, EV_DATA = 2, EV_EOF = 3, EV_ERROR = 4, EV_DRAIN = 5, EV_CONNECT = 6, EV_SHUTDOWN = 7, EV_SECURE = 8, EV_TLSDATA = 9;
const OP_READ = 1, OP_WRITE = 2, OP_CONNECT = 3, OP_ACCEPT = 4, OP_SHUTDOWN = 5, OP_TLS = 6;
/** int32 values per event: id, kind, a, b */
const EVENT_INTS = 4;

/** Every code above by its C++ name: what the addon must export as `constants`. */
export const NETIO_CONSTANTS: Readonly<Record<string, number>> = Object.freeze({
  EV_ACCEPT, EV_DATA, EV_EOF, EV_ERROR, EV_DRAIN, EV_CONNECT, EV_SHUTDOWN, EV_SECURE, EV_TLSDATA,
  OP_READ, OP_WRITE, OP_CONNECT, OP_ACCEPT, OP_SHUTDOWN, OP_TLS,
  EVENT_INTS,
});

/** The syscall named in an error, by OP_* */
const OPS: string[] = [];
OPS[OP_READ] = 'read';
OPS[OP_WRITE] = 'write';
OPS[OP_CONNECT] = 'connect';
OPS[OP_ACCEPT] = 'accept';
OPS[OP_SHUTDOWN] = 'shutdown';
OPS[OP_TLS] = 'tls';

/** Throws unless `native` (the addon's constants) has exactly NETIO_CONSTANTS' names and values. */
export function checkNetioConstants(native: Readonly<Record<string, number>>): void {
  const wrong: string[] = [];
  for (const name of new Set([...Object.keys(NETIO_CONSTANTS), ...Object.keys(native)])) {
    if (NETIO_CONSTANTS[name] !== native[name]) wrong.push(`${name}: native ${native[name]}, agent/proxy/netio.ts ${NETIO_CONSTANTS[name]}`);
  }
  if (wrong.length > 0) throw new Error(`sockmesh: native/netio.cc and agent/proxy/netio.ts disagree (rebuild with npm ci?): ${wrong.join('; ')}`);
}

let addon: NetioAddon | undefined;

/** Load the netio addon once and check its constants. */
export function netioAddon(): NetioAddon {
  if (addon !== undefined) return addon;
  const a = loadAddon<NetioAddon>('sockmesh_netio', 'g++ and Node\'s headers');
  checkNetioConstants(a.constants);
  addon = a;
  return a;
}

// ---- NetIo and NetConn ----

const ARENA_BYTES = 1024 * 1024;
/**
 * TLS plaintext is read into a slab (native setSlab) the loop never writes again, so a TLSDATA event is handed on as
 * a view of it, not copied like the arena's DATA (bench/nettls.ts measures the difference). A new slab once less than
 * SLAB_LOW is left: one read of a socket is cut at the slab's end and goes on in the next wake.
 */
const SLAB_BYTES = 1024 * 1024;
const SLAB_LOW = 64 * 1024;
/**
 * TLSDATA this short is copied all the same (into node's pooled small buffers): a view keeps its whole slab alive, and
 * a listener that keeps a few bytes (a partial header) must not hold a MiB. Bulk reads are far larger.
 */
const SLAB_COPY_MAX = 4096;
/**
 * Slabs whose every view was given back (NetConn.returnsTlsReads + recycle) are filled again instead of a fresh MiB:
 * a fresh slab per MiB read was the destination agent's largest cost under a bulk stream (perf during bench mesh's
 * iperf3: V8's major GC ~25% of its CPU, driven by the external memory, and page faults on the new memory ~7%).
 * At most this many wait to be used again.
 */
const SLAB_FREE_MAX = 4;
/** a slab: views lent and not given back, whether one went where it may be kept, whether the loop is done with it */
interface SlabRec { buf: Buffer; lent: number; kept: boolean; retired: boolean }
const MAX_EVENTS = 4096;
/**
 * Pooled reads (NetConn.pooledReads): one wake's reads of one socket (the addon's kReadPerWake, 256 KiB) are copied
 * into one of these buffers instead of a fresh one, and the buffer is used again once the consumer gives it back
 * (NetConn.recycle). A fresh 256 KiB ArrayBuffer per read was the tunnel's largest allocation: a bulk stream made
 * ~4,000 a second, GC was a quarter of the agent's CPU and the source agent's RSS reached 925 MiB (malloc keeps what
 * the collector frees late). At most POOL_FREE_MAX wait to be used again; a buffer never given back is garbage as before.
 */
const POOL_BUF_BYTES = 256 * 1024;
const POOL_FREE_MAX = 32;
/** write() returns false once this much is queued natively (node's default highWaterMark; NetConn.highWaterMark) */
const HIGH_WATER = 16 * 1024;
const BACKLOG = 511;
/** a listener whose accept failed (EMFILE...) rests this long: level-triggered, it would spin meanwhile */
const ACCEPT_RETRY_MS = 100;

const ERRNO_NAMES: string[] = [];
for (const [name, n] of Object.entries(osConstants.errno)) if (ERRNO_NAMES[n] === undefined) ERRNO_NAMES[n] = name;

export interface NetErrnoError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

function errnoError(errno: number, syscall: string, where = ''): NetErrnoError {
  const code = ERRNO_NAMES[errno] ?? `E${errno}`;
  const e = new Error(`${syscall} ${code}${where === '' ? '' : ' ' + where}`) as NetErrnoError;
  e.code = code;
  e.errno = -errno; // as node reports it
  e.syscall = syscall;
  return e;
}

/** what a native TLS failure carries (the addon reports it as EPROTO and keeps OpenSSL's reason as text) */
const EPROTO = osConstants.errno.EPROTO;
/** a TLS handshake that takes longer is abandoned (a slow-handshake flood must not hold fds): startTls' default */
const HANDSHAKE_TIMEOUT_MS = 10_000;

export interface NetTlsError extends Error {
  /** as node names OpenSSL's reasons: ERR_SSL_CERTIFICATE_VERIFY_FAILED, ERR_SSL_TLSV1_ALERT_UNKNOWN_CA, ... and
   * ERR_TLS_HANDSHAKE_TIMEOUT, ERR_TLS_NO_APPLICATION_PROTOCOL */
  code: string;
  /** OpenSSL's reason as it said it ('certificate verify failed (unable to get local issuer certificate)') */
  reason: string;
}

function tlsError(code: string, reason: string, message: string): NetTlsError {
  const e = new Error(message) as NetTlsError;
  e.code = code;
  e.reason = reason;
  return e;
}

/** node's code for an OpenSSL reason: 'tlsv13 alert certificate required' -> ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED */
function sslCode(reason: string): string {
  const head = reason.replace(/\s*\(.*$/, '').trim();
  return 'ERR_SSL_' + (head.toUpperCase().replace(/[^A-Z0-9]+/g, '_').replace(/^_|_$/g, '') || 'UNKNOWN');
}

export interface NetTlsOptions {
  role: 'server' | 'client';
  /** PEM: the leaf first, then intermediates */
  chain: string;
  /** PEM private key of the leaf */
  key: string;
  /** PEM roots the peer's chain must lead to (several during a rotation) */
  bundle: string;
  /** offered (client) / accepted (server) in this order; a connection that negotiates none fails. Default ['h2']. */
  alpn?: string[];
}

/**
 * TLS settings for NetConn.startTls: TLS 1.3 only, AES-128-GCM first, the peer's certificate required and verified
 * against `bundle` on both sides, no session tickets, 16 KiB records. Immutable: a certificate rotation makes a new
 * one, which new connections use; live ones keep the one they started with. Throws naming what is wrong
 * ("netio TLS context (server): the key does not match the chain's first certificate: ...").
 */
export class NetTlsContext {
  readonly role: 'server' | 'client';
  readonly alpn: readonly string[];
  /** @internal */
  readonly native: NativeTlsContext;

  constructor(opts: NetTlsOptions) {
    if (opts.role !== 'server' && opts.role !== 'client') throw new TypeError(`netio TLS context: role must be 'server' or 'client', not ${JSON.stringify(opts.role)}`);
    for (const k of ['chain', 'key', 'bundle'] as const) {
      if (typeof opts[k] !== 'string' || opts[k] === '') throw new TypeError(`netio TLS context (${opts.role}): ${k} must be a non-empty PEM string`);
    }
    this.role = opts.role;
    this.alpn = Object.freeze([...(opts.alpn ?? ['h2'])]);
    this.native = new (netioAddon().TlsContext)(opts.role, opts.chain, opts.key, opts.bundle, [...this.alpn]);
  }
}

export interface StartTlsOptions {
  /** SNI the client sends (the server does not check it); default none */
  servername?: string;
  /** the handshake must be done within this many ms, else ERR_TLS_HANDSHAKE_TIMEOUT; 0: no bound. Default 10 s. */
  handshakeTimeoutMs?: number;
}

export interface NetListener {
  readonly host: string;
  readonly port: number;
  /** the listening socket's fd (still the loop's: a planned restart sends a copy of it) */
  fd(): number;
  close(): void;
}

export interface Upstreamish { address: string; port: number; family?: 4 | 6 }

export class NetIo {
  private readonly loop: NativeNetLoop;
  private readonly arena = Buffer.allocUnsafeSlow(ARENA_BYTES);
  private slab: Buffer = Buffer.allocUnsafeSlow(SLAB_BYTES);
  /**
   * The slab being filled and the retired ones with views still lent (returnsTlsReads), by their memory; a slab one of
   * whose views went to a connection that does not give them back is `kept` and left to the GC. Weakly: a view lent
   * and never given back (the session keeps a read whose DATA went to a handler that may keep it: TunnelClient.connect()'s
   * streams, the L7 proxy's tunnelled upstreams) leaves its slab's count above 0 for good, and a strong map would hold
   * that slab (1 MiB) for the loop's lifetime after its views are gone.
   */
  private slabRec: SlabRec = { buf: this.slab, lent: 0, kept: false, retired: false };
  private readonly slabs = new WeakMap<ArrayBuffer, SlabRec>([[this.slab.buffer as ArrayBuffer, this.slabRec]]);
  /** views of slabs lent to returnsTlsReads connections and not given back yet (each is taken back once) */
  private readonly slabLent = new WeakSet<Buffer>();
  private readonly slabFree: Buffer[] = [];
  private readonly ev = new Int32Array(MAX_EVENTS * EVENT_INTS);
  /** pooled read buffers free to be filled again, and those lent to consumers (only these are taken back) */
  private readonly poolFree: ArrayBuffer[] = [];
  private readonly poolLent = new WeakSet<ArrayBuffer>();
  /** every open connection by id (listeners in `listeners`) */
  readonly conns = new Map<number, NetConn>();
  private readonly listeners = new Map<number, { onConnection: (c: NetConn) => void; onError: ((e: Error) => void) | undefined }>();
  private closed = false;
  /** onEvents is delivering a batch: writes of coalescing connections wait for its end (corkForBatch) */
  private batching = false;
  private readonly batchCorked: NetConn[] = [];
  /** open connections made by connect() (their plain reads are handled first in a batch: onEvents) */
  private outbound = 0;
  /** @internal SOCKMESH_NETIO_TRACE (looptrace.ts): batch sizes and write delays; null unless asked for */
  readonly trace: LoopTrace | null = sharedTrace();

  /**
   * deferWrites: the plain sockets' writes made while a batch is delivered are sent once it is over (native/netio.cc
   * LoopState::deferWrites), back to back in the order the sockets were first written to, each socket's in one send.
   */
  constructor(opts: { deferWrites?: boolean } = {}) {
    this.loop = new (netioAddon().NetLoop)(this.arena, this.ev, (n, slabUsed) => this.onEvents(n, slabUsed));
    this.loop.setSlab(this.slab);
    if (opts.deferWrites === true) this.loop.setDeferWrites?.(true);
  }

  /**
   * listen on host ('127.0.0.1', '::1', any numeric address) and port (0: any); throws "listen 127.0.0.1:15001:
   * EADDRINUSE". onError hears a failed accept (EMFILE...); the listener then rests ACCEPT_RETRY_MS.
   */
  listen(host: string, port: number, onConnection: (c: NetConn) => void, onError?: (e: Error) => void): NetListener {
    if (this.closed) throw new Error('netio: listen on a closed loop');
    return this.listener(this.loop.listen(host, port, BACKLOG), host, onConnection, onError);
  }

  /**
   * Accept on a listening socket received from the agent being replaced (agent/handover.ts): the same kernel socket,
   * so connections waiting in its backlog are accepted here. The loop owns fd from here on; throws (and leaves fd to
   * the caller) when it is not a listening socket.
   */
  adopt(fd: number, host: string, onConnection: (c: NetConn) => void, onError?: (e: Error) => void): NetListener {
    if (this.closed) throw new Error('netio: adopt on a closed loop');
    return this.listener(this.loop.adopt(fd), host, onConnection, onError);
  }

  private listener(id: number, host: string, onConnection: (c: NetConn) => void, onError: ((e: Error) => void) | undefined): NetListener {
    this.listeners.set(id, { onConnection, onError });
    const bound = this.loop.localPort(id);
    return {
      host, port: bound,
      fd: () => this.loop.fdOf(id),
      close: () => {
        if (!this.listeners.delete(id) || this.closed) return;
        this.loop.close(id);
      },
    };
  }

  /** a new connection to up: 'connect', or 'error' and 'close' */
  connect(up: Upstreamish): NetConn {
    if (this.closed) throw new Error('netio: connect on a closed loop');
    let id: number;
    try {
      id = this.loop.connect(up.address, up.port);
    } catch (e) {
      // not a numeric address, no socket to be had (EMFILE): an 'error' after the call, as node reports a failed lookup
      const c = new NetConn(this, this.loop, 0, up.address, up.port);
      c.failSoon(e as Error);
      return c;
    }
    const c = new NetConn(this, this.loop, id, up.address, up.port);
    c.connecting = true;
    c.outbound = true;
    this.outbound++;
    this.conns.set(id, c);
    return c;
  }

  /** sockets and listeners open in the native loop */
  openCount(): number {
    return this.closed ? 0 : this.loop.count();
  }

  /** close every listener and connection at once (no events follow); the loop is unusable afterwards */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.listeners.clear();
    const conns = [...this.conns.values()];
    this.conns.clear();
    this.outbound = 0;
    this.loop.closeAll();
    for (const c of conns) c.loopClosed();
  }

  private onEvents(n: number, slabUsed: number): void {
    const ev = this.ev, arena = this.arena, slab = this.slab, conns = this.conns;
    const trace = this.trace;
    if (trace !== null) trace.begin(n, dataEvents(ev, n));
    let thrown: unknown = null;
    this.batching = true;
    // Responses first: what our own connections (connect(): the proxy's upstreams) read in this wake is handled before
    // the rest, so that an answer already here is written before the new requests of the batch are parsed, routed and
    // forwarded (the costlier events: shortest first is what keeps a request's two waits in the batch short). Per
    // connection the order stays the loop's (its DATA comes before its EOF, ERROR, DRAIN); such an event is handled
    // here and marked done (EV_NONE) in the shared array, which the loop writes anew each wake.
    if (this.outbound > 0 && n > 1) {
      for (let i = 0, p = 0; i < n; i++, p += EVENT_INTS) {
        const kind = ev[p + 1]!;
        if (kind !== EV_DATA && kind !== EV_TLSDATA) continue;
        const c = conns.get(ev[p]!);
        // (not a TLS one: its SECURE comes in the same wake as the first records, and must be handled before them)
        if (c === undefined || !c.outbound || c.encrypted) continue;
        ev[p + 1] = EV_NONE;
        try {
          this.dataEvent(c, kind, ev[p + 2]!, ev[p + 3]!, arena, slab);
        } catch (e) {
          if (thrown === null) thrown = e;
        }
      }
    }
    for (let i = 0, p = 0; i < n; i++, p += EVENT_INTS) {
      const id = ev[p]!, kind = ev[p + 1]!;
      if (kind === EV_NONE) continue;
      try {
        if (kind === EV_ACCEPT) {
          this.accepted(id, ev[p + 2]!, ev[p + 3]!);
          continue;
        }
        const c = conns.get(id);
        if (c === undefined) {
          if (kind === EV_ERROR) this.acceptFailed(id, ev[p + 2]!);
          continue; // else: a connection closed earlier in this batch
        }
        switch (kind) {
          case EV_DATA:
          case EV_TLSDATA:
            this.dataEvent(c, kind, ev[p + 2]!, ev[p + 3]!, arena, slab);
            break;
          case EV_EOF: c.onEof(); break;
          case EV_ERROR: c.onError(ev[p + 2]!, ev[p + 3]!); break;
          case EV_DRAIN: c.onDrain(); break;
          case EV_CONNECT: c.onConnect(); break;
          case EV_SHUTDOWN: c.onShutdown(); break;
          case EV_SECURE: c.onSecure(); break;
        }
      } catch (e) {
        // one listener's exception must not cost the other connections their events
        if (thrown === null) thrown = e;
      }
    }
    this.batching = false;
    // the writes of coalescing connections made while this batch was delivered: one send each, now (same tick)
    const corked = this.batchCorked;
    for (let i = 0; i < corked.length; i++) {
      try { corked[i]!.batchUncork(); } catch (e) { if (thrown === null) thrown = e; }
    }
    // (only when something was corked: V8 shrinks an array's length through a runtime call, every batch otherwise)
    if (corked.length !== 0) corked.length = 0;
    if (trace !== null) trace.end();
    if (slabUsed > SLAB_BYTES - SLAB_LOW && !this.closed) {
      // before the next wake: the loop reads nothing into a full slab (its sockets wait, marked, for this one). After
      // the batch's end: the coalesced writes above copied what they held of it.
      const old = this.slabRec;
      old.retired = true;
      if (old.lent === 0) this.slabDone(old);
      const next = this.slabFree.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.slab = next;
      this.slabRec = { buf: next, lent: 0, kept: false, retired: false };
      this.slabs.set(next.buffer as ArrayBuffer, this.slabRec);
      this.loop.setSlab(next);
    }
    if (thrown !== null) throw thrown;
  }

  /** a DATA (arena) or TLSDATA (slab) event of c: its bytes at off, len */
  private dataEvent(c: NetConn, kind: number, off: number, len: number, arena: Buffer, slab: Buffer): void {
    if (kind === EV_DATA) {
      // the listener may keep what it gets: copied out of the arena, which the next wake reuses
      if (c.pooledReads && len <= POOL_BUF_BYTES) {
        const ab = this.poolFree.pop() ?? Buffer.allocUnsafeSlow(POOL_BUF_BYTES).buffer as ArrayBuffer;
        this.poolLent.add(ab);
        const b = Buffer.from(ab, 0, len);
        copySmall(arena, off, len, b);
        c.onData(b);
        return;
      }
      const b = Buffer.allocUnsafe(len);
      copySmall(arena, off, len, b);
      c.onData(b);
    } else if (len > SLAB_COPY_MAX) {
      const view = slab.subarray(off, off + len);
      if (c.returnsTlsReads) {
        this.slabRec.lent++;
        this.slabLent.add(view);
      } else {
        this.slabRec.kept = true;
      }
      c.onData(view);
    } else {
      const b = Buffer.allocUnsafe(len);
      copySmall(slab, off, len, b);
      c.onData(b);
    }
  }

  private accepted(listenerId: number, id: number, off: number): void {
    const arena = this.arena;
    const port = arena[off]! | (arena[off + 1]! << 8);
    const len = arena[off + 2]!;
    const address = arena.toString('latin1', off + 3, off + 3 + len);
    const l = this.listeners.get(listenerId);
    // no listener: closed, or the whole loop was closed by a listener earlier in this batch (its sockets with it)
    if (l === undefined) { if (!this.closed) this.loop.close(id); return; }
    const c = new NetConn(this, this.loop, id, address, port);
    this.conns.set(id, c);
    l.onConnection(c);
  }

  private acceptFailed(listenerId: number, errno: number): void {
    const l = this.listeners.get(listenerId);
    if (l === undefined) return;
    this.loop.pause(listenerId);
    setTimeout(() => { if (this.listeners.has(listenerId) && !this.closed) this.loop.resume(listenerId); }, ACCEPT_RETRY_MS).unref();
    l.onError?.(errnoError(errno, 'accept'));
  }

  /**
   * @internal a pooled read (NetConn.pooledReads) is no longer needed by anyone: its buffer is filled again by a later
   * read. Anything else (a view of another buffer, a pooled one given back already) is ignored.
   */
  recycle(b: Uint8Array): void {
    const ab = b.buffer as ArrayBuffer;
    if (this.slabLent.delete(b as Buffer)) {
      const rec = this.slabs.get(ab);
      if (rec !== undefined && --rec.lent === 0 && rec.retired) this.slabDone(rec);
      return;
    }
    if (b.byteOffset !== 0 || !this.poolLent.delete(ab)) return;
    if (this.poolFree.length < POOL_FREE_MAX) this.poolFree.push(ab);
  }

  /** a retired slab none of whose views is lent any more: filled again, unless a view went where it may be kept */
  private slabDone(rec: SlabRec): void {
    this.slabs.delete(rec.buf.buffer as ArrayBuffer);
    if (!rec.kept && !this.closed && this.slabFree.length < SLAB_FREE_MAX) this.slabFree.push(rec.buf);
  }

  /** @internal pooled read buffers waiting to be used again (tests) */
  get poolFreeCount(): number {
    return this.poolFree.length;
  }

  /** @internal a batch is being delivered (NetConn.coalesceWrites) */
  get inBatch(): boolean {
    return this.batching;
  }

  /** @internal `c` holds its writes until the batch's end */
  corkForBatch(c: NetConn): void {
    this.batchCorked.push(c);
  }

  /** @internal the connection is gone from the native loop */
  forget(id: number): void {
    const c = this.conns.get(id);
    if (c === undefined) return;
    this.conns.delete(id);
    if (c.outbound) this.outbound--;
  }

  get isClosed(): boolean {
    return this.closed;
  }
}

export class NetConn extends EventEmitter implements Conn {
  destroyed = false;
  connecting = false;
  /**
   * As node's option of that name: false (the default), the peer's EOF ends our side too; true, 'end' only tells it
   * and our side stays open until end() (the tunnel's splice passes a half-close on and still writes the answer).
   */
  allowHalfOpen = false;
  /**
   * Writes made while the loop delivers a batch of events (from a listener of 'data' of this or another connection)
   * are held and sent together at the batch's end, in the same tick: one send(2) for what one wake produced (the
   * tunnel's splice writes one DATA frame's payload at a time; a read of 256 KiB is 4+ frames). write() still says
   * false once the bytes held and queued reach the high-water mark, and 'drain' follows.
   */
  coalesceWrites = false;
  /** made by NetIo.connect() (an upstream of the proxy), not accepted */
  outbound = false;
  /**
   * Opt-in (the tunnel's splice): plain 'data' chunks come in buffers of the loop's read pool, and the listener gives
   * each back with recycle(chunk) once no one holds any of its bytes (a consumer that keeps a chunk, or a slice of
   * it, must not: the next read is copied over it). A chunk not given back is left to the GC. TLS reads: returnsTlsReads.
   */
  pooledReads = false;
  /**
   * Opt-in (the tunnel's HTTP/2 sessions): TLS 'data' chunks over 4 KiB are views of the loop's slab, and the listener
   * gives each back with recycle(chunk) once nothing holds any of its bytes past the current batch (a write to a
   * coalescing NetConn of the same loop is copied at the batch's end: it counts as given back). A slab all of whose
   * views came back is filled again; one view not given back (or handed to a connection without this flag) leaves
   * its slab to the GC, as without it.
   */
  returnsTlsReads = false;
  /**
   * write() says false once this much is queued natively (16 KiB, node's default). The tunnel's TLS connections take
   * 256 KiB (ztunnel's buffers): a bulk stream's frames of one read are encrypted and queued, not held back in the
   * HTTP/2 session's stream queue (which keeps the read's buffer from going back to the pool).
   */
  highWaterMark = HIGH_WATER;
  /** the peer's EOF was seen */
  private readEnded = false;
  /** end() was called */
  private writeEnding = false;
  /** our side is shut (SHUT_WR done) */
  private writeDone = false;
  private needDrain = false;
  /** destroySoon(): closed once our FIN is out, whatever the peer still sends */
  private closeWhenWritten = false;
  private paused = false;
  /** data (and the EOF after it) that arrived in the batch in which we were paused */
  private held: Buffer[] | null = null;
  private heldEof = false;
  private corked = 0;
  private corkChunks: (Buffer | Uint8Array | string)[] = [];
  /** corked by write() for the batch being delivered (coalesceWrites), and the bytes held so */
  private batchCork = false;
  private batchBytes = 0;
  /** bytes the native queue held after the last write (0 after a DRAIN) */
  private nativeQueued = 0;
  private closeEmitted = false;
  private timeoutMs = 0;
  private lastActive = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly onTimer = (): void => this.checkTimeout();
  /** startTls() was called: its context, and what the handshake gave once 'secure' came */
  private tls: { ctx: NetTlsContext; timer: NodeJS.Timeout | null; info: NativeTlsInfo | null; x509?: X509Certificate } | null = null;

  constructor(
    private readonly io: NetIo, private readonly loop: NativeNetLoop, readonly id: number,
    readonly remoteAddress: string | undefined, readonly remotePort: number | undefined,
  ) {
    super();
  }

  // ---- from the loop ----

  onData(b: Buffer): void {
    if (this.timeoutMs !== 0) this.active();
    // read in this wake before a listener earlier in the batch paused us: held until resume()
    if (this.paused) { (this.held ??= []).push(b); return; }
    this.emit('data', b);
  }

  onEof(): void {
    if (this.paused || this.held !== null) { this.heldEof = true; return; }
    this.readEnded = true;
    this.emit('end');
    if (this.destroyed) return;
    // node's allowHalfOpen=false: the peer's end ends ours (after what is queued)
    if (!this.writeEnding) { if (!this.allowHalfOpen) this.end(); }
    else this.maybeClose();
  }

  onError(errno: number, op: number): void {
    const syscall = OPS[op] ?? 'socket';
    if (op === OP_TLS) { this.fail(this.errorOf(errno, syscall)); return; }
    const where = syscall === 'connect' ? `${this.remoteAddress}:${this.remotePort}` : '';
    this.fail(errnoError(errno, syscall, where));
  }

  onSecure(): void {
    const tls = this.tls;
    if (tls === null || this.destroyed) return;
    if (tls.timer !== null) { clearTimeout(tls.timer); tls.timer = null; }
    const info = this.loop.tlsInfo(this.id);
    if (info === undefined) return; // cannot be: SECURE comes after the handshake
    if (tls.ctx.alpn.length > 0 && info.alpn === '') {
      // a server's OpenSSL refuses a client that offers other protocols (no_application_protocol); one that offers
      // none at all gets through the handshake and is refused here
      this.fail(tlsError('ERR_TLS_NO_APPLICATION_PROTOCOL', 'no ALPN protocol',
        `TLS ${this.peerText()}: the peer negotiated no ALPN protocol (${tls.ctx.alpn.join(', ')} required)`));
      return;
    }
    tls.info = info;
    this.emit('secure');
  }

  onDrain(): void {
    this.nativeQueued = 0;
    if (this.needDrain) {
      this.needDrain = false;
      this.emit('drain');
    }
  }

  onConnect(): void {
    this.connecting = false;
    this.emit('connect');
  }

  onShutdown(): void {
    this.writeDone = true;
    if (this.closeWhenWritten) this.destroy();
    else this.maybeClose();
  }

  /** the whole loop was closed under us */
  loopClosed(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.clearTimer();
    if (this.tls?.timer) { clearTimeout(this.tls.timer); this.tls.timer = null; }
    this.scheduleClose(null);
  }

  // ---- TLS ----

  /**
   * TLS on this connection, before any byte was read or written on it: right after NetIo.connect() (the handshake
   * starts once connected), or in the listener's onConnection callback for an accepted one (before it returns: the
   * next wake would read the ClientHello as plain data). 'secure' follows when the handshake is done (then
   * alpnProtocol, getPeerCertificates(), getPeerX509Certificate()), or 'error' (OpenSSL's reason, node's code:
   * ERR_SSL_CERTIFICATE_VERIFY_FAILED, ...) and 'close'. Writes and end() before 'secure' wait for it; 'data' is
   * decrypted application data only. Throws for a context that is not one, or a connection not fit for it.
   */
  startTls(ctx: NetTlsContext, opts: StartTlsOptions = {}): this {
    if (!(ctx instanceof NetTlsContext)) throw new TypeError('netio startTls: ctx must be a NetTlsContext');
    if (this.destroyed) throw new Error(`netio startTls: connection ${this.id} is closed`);
    if (this.tls !== null) throw new Error(`netio startTls: connection ${this.id} is TLS already`);
    if (this.writeEnding || this.readEnded || this.corked > 0) throw new Error(`netio startTls: connection ${this.id} is ending or corked`);
    const ms = opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    if (!Number.isInteger(ms) || ms < 0) throw new TypeError(`netio startTls: handshakeTimeoutMs must be a whole number >= 0, not ${ms}`);
    this.loop.startTls(this.id, ctx.native, opts.servername ?? '');
    this.tls = { ctx, timer: null, info: null };
    if (ms > 0) {
      this.tls.timer = setTimeout(() => {
        if (this.tls !== null) this.tls.timer = null;
        this.fail(tlsError('ERR_TLS_HANDSHAKE_TIMEOUT', 'handshake timeout', `TLS handshake ${this.peerText()} not done in ${ms} ms`));
      }, ms).unref();
    }
    return this;
  }

  /** startTls() was called (the handshake may still be under way) */
  get encrypted(): boolean {
    return this.tls !== null;
  }

  /** the handshake is done: 'secure' was emitted */
  get secure(): boolean {
    return this.tls?.info != null;
  }

  /** the peer's certificate verified against the context's bundle: always so once secure (else the handshake failed) */
  get authorized(): boolean {
    return this.secure;
  }

  /** the ALPN protocol negotiated ('h2'); false before 'secure' or on a plain connection, as TLSSocket says */
  get alpnProtocol(): string | false {
    return this.tls?.info?.alpn || false;
  }

  /** 'TLSv1.3' once secure, else null */
  getProtocol(): string | null {
    return this.tls?.info?.protocol ?? null;
  }

  /** the cipher suite, e.g. { name: 'TLS_AES_128_GCM_SHA256', version: 'TLSv1.3' }, once secure */
  getCipher(): { name: string; version: string } | undefined {
    const i = this.tls?.info;
    return i ? { name: i.cipher, version: i.protocol } : undefined;
  }

  /** the chain the peer presented, DER, its leaf first (empty before 'secure') */
  getPeerCertificates(): Buffer[] {
    return this.tls?.info?.peerCertificates ?? [];
  }

  /** the peer's leaf as node:crypto's X509Certificate (as TLSSocket.getPeerX509Certificate), undefined before 'secure' */
  getPeerX509Certificate(): X509Certificate | undefined {
    const tls = this.tls;
    const der = tls?.info?.peerCertificates[0];
    if (tls === null || der === undefined) return undefined;
    return (tls.x509 ??= new X509Certificate(der));
  }

  // ---- Conn ----

  write(data: Buffer | Uint8Array | string, encoding?: BufferEncoding): boolean {
    if (this.destroyed || this.writeEnding) return false;
    if (this.coalesceWrites && this.corked === 0 && this.io.inBatch) {
      this.corked = 1;
      this.batchCork = true;
      this.batchBytes = 0;
      this.io.corkForBatch(this);
    }
    if (this.corked > 0) {
      const b = typeof data === 'string' && !isLatin1(encoding) ? Buffer.from(data, encoding ?? 'utf8') : data;
      this.corkChunks.push(b);
      if (!this.batchCork) return true;
      this.batchBytes += b.length;
      if (this.batchBytes + this.nativeQueued < this.highWaterMark) return true;
      this.needDrain = true;
      return false;
    }
    // the addon copies strings as latin1 or utf8 only: other encodings (hex, base64, utf16le) are converted here
    if (typeof data === 'string' && encoding !== undefined && encoding !== 'utf8' && encoding !== 'utf-8' && !isLatin1(encoding)) data = Buffer.from(data, encoding);
    const r = this.loop.write(this.id, data, typeof data === 'string' && !isLatin1(encoding));
    return this.written(r);
  }

  private written(r: number): boolean {
    if (this.io.trace !== null) this.io.trace.write();
    if (this.timeoutMs !== 0) this.active();
    if (r >= 0) this.nativeQueued = r;
    if (r === 0) return true;
    if (r < 0) { this.failLater(this.errorOf(-r, 'write')); return false; }
    if (r < this.highWaterMark) return true;
    this.needDrain = true;
    return false;
  }

  cork(): void {
    this.corked++;
  }

  /**
   * Conn.holdsWrites: a buffer given to write() is still referenced here (corked: cork(), or coalesceWrites during a
   * batch) rather than already copied or encrypted by the addon (which a write() not corked always is before it returns).
   */
  holdsWrites(): boolean {
    return this.corkChunks.length > 0;
  }

  /** give a pooled read (pooledReads) or a TLS read (returnsTlsReads) back; anything else is ignored */
  recycle(chunk: Buffer): void {
    this.io.recycle(chunk);
  }

  uncork(): void {
    if (this.corked === 0 || --this.corked > 0) return;
    this.flushCork();
  }

  /** @internal the batch is over: what write() held goes out (coalesceWrites); a 'drain' owed with nothing queued now */
  batchUncork(): void {
    if (!this.batchCork) return;
    this.batchCork = false;
    this.batchBytes = 0;
    if (this.corked > 1) { this.corked--; return; } // cork() of the user's on top: uncork() sends
    this.corked = 0;
    this.flushCork();
    if (this.needDrain && this.nativeQueued === 0 && !this.destroyed) {
      this.needDrain = false;
      this.emit('drain');
    }
  }

  private flushCork(): boolean {
    const chunks = this.corkChunks;
    if (chunks.length === 0) return true;
    this.corkChunks = [];
    if (this.destroyed) return false;
    const r = chunks.length === 1 ? this.loop.write(this.id, chunks[0]!, false) : this.loop.writev(this.id, chunks);
    return this.written(r);
  }

  pause(): this {
    if (!this.paused && !this.destroyed) { this.paused = true; this.loop.pause(this.id); }
    return this;
  }

  resume(): this {
    if (this.paused && !this.destroyed) {
      this.paused = false;
      this.loop.resume(this.id);
      if (this.held !== null || this.heldEof) process.nextTick(flushHeld, this);
    }
    return this;
  }

  /** @internal what was held while paused, in order, unless paused again meanwhile */
  flushHeld(): void {
    while (this.held !== null && !this.paused && !this.destroyed) {
      const b = this.held.shift()!;
      if (this.held.length === 0) this.held = null;
      this.emit('data', b);
    }
    if (this.held === null && this.heldEof && !this.paused && !this.destroyed) { this.heldEof = false; this.onEof(); }
  }

  end(): this {
    if (this.destroyed || this.writeEnding) return this;
    this.corked = 0;
    this.flushCork();
    if (this.destroyed) return this;
    this.writeEnding = true;
    const r = this.loop.shutdown(this.id);
    if (r < 0) { this.failLater(this.errorOf(-r, 'shutdown')); return this; }
    if (r === 1) { this.writeDone = true; this.maybeClose(); }
    return this;
  }

  /**
   * The server closing an idle connection (Conn.endIfIdle): FIN now, unless something of the peer's waits to be read
   * (held here, or in the kernel: the addon checks and shuts in one call). false: not ended, what waits comes as
   * 'data' (or 'end').
   */
  endIfIdle(): boolean {
    if (this.destroyed || this.writeEnding) return true;
    if (this.paused || this.held !== null || this.heldEof || this.corked > 0) return false;
    // An addon built before shutdownIdle (a worktree's stale build/): a plain FIN, without the look at the socket.
    if (typeof this.loop.shutdownIdle !== 'function') { this.end(); return true; }
    const r = this.loop.shutdownIdle(this.id);
    if (r === 0) return false;
    this.writeEnding = true;
    if (r < 0) { this.failLater(this.errorOf(-r, 'shutdown')); return true; }
    this.writeDone = true;
    this.maybeClose();
    return true;
  }

  destroy(): this {
    if (this.destroyed) return this;
    this.closeNative();
    this.scheduleClose(null);
    return this;
  }

  /**
   * Abort: closed with SO_LINGER 0, so the peer reads ECONNRESET, not an end (as node's socket.resetAndDestroy());
   * what is queued is dropped. 'close' follows. An addon built before reset() closes plainly.
   */
  resetAndDestroy(): this {
    if (this.destroyed) return this;
    if (typeof this.loop.reset === 'function' && !this.io.isClosed) {
      const id = this.id;
      this.destroyed = true;
      this.clearTimer();
      if (this.tls?.timer) { clearTimeout(this.tls.timer); this.tls.timer = null; }
      this.io.forget(id);
      this.loop.reset(id);
      this.scheduleClose(null);
      return this;
    }
    return this.destroy();
  }

  /** end(), then close once what is queued and our FIN are out (node's destroySoon): the peer's bytes are not awaited */
  destroySoon(): this {
    if (this.destroyed) return this;
    this.end();
    if (this.destroyed) return this;
    if (this.writeDone) this.destroy();
    else this.closeWhenWritten = true;
    return this;
  }

  setNoDelay(noDelay = true): this {
    if (!this.destroyed) this.loop.setNoDelay(this.id, noDelay);
    return this;
  }

  setTimeout(ms: number, cb?: () => void): this {
    if (cb !== undefined) {
      if (ms === 0) this.off('timeout', cb);
      else this.once('timeout', cb);
    }
    this.timeoutMs = ms;
    if (ms === 0) { this.clearTimer(); return this; }
    this.active();
    return this;
  }

  /**
   * Give the socket up: out of the loop, not closed, no 'close' here. For `new net.Socket({ fd, readable: true,
   * writable: true })` (the h2 hand-over). Throws when written bytes are still queued.
   */
  release(): number {
    if (this.destroyed) throw new Error(`netio release: connection ${this.id} is closed`);
    const fd = this.loop.release(this.id);
    this.destroyed = true;
    this.closeEmitted = true;
    this.clearTimer();
    this.io.forget(this.id);
    return fd;
  }

  // ---- internals ----

  /** 'with 10.0.0.1:15008' (we dialled) or 'from 10.0.0.2:40000' (accepted) */
  private peerText(): string {
    const who = `${this.remoteAddress}:${this.remotePort}`;
    return this.tls?.ctx.role === 'client' ? `with ${who}` : `from ${who}`;
  }

  /** the Error for a native failure: a TLS one (EPROTO on a TLS connection) with OpenSSL's reason, read while the
   * connection still exists natively; else errno's */
  private errorOf(errno: number, syscall: string): Error {
    if (errno !== EPROTO || this.tls === null) return errnoError(errno, syscall);
    const reason = this.loop.tlsError(this.id) || 'TLS failure';
    const what = this.tls.info === null ? 'handshake' : 'connection';
    return tlsError(sslCode(reason), reason, `TLS ${what} ${this.peerText()} failed: ${reason}`);
  }

  private checkTimeout(): void {
    this.timer = null;
    if (this.destroyed || this.timeoutMs === 0) return;
    const left = this.lastActive + this.timeoutMs - performance.now();
    if (left > 1) { this.timer = setTimeout(this.onTimer, Math.ceil(left)).unref(); return; }
    // as node: 'timeout' is only a notice, the listener decides; it comes again after the next activity (or
    // setTimeout) and a whole idle period after that
    this.emit('timeout');
  }

  /** a read or a write: the idle period starts again (the timer is re-armed only if it had fired) */
  private active(): void {
    this.lastActive = performance.now();
    if (this.timer === null && !this.destroyed) this.timer = setTimeout(this.onTimer, this.timeoutMs).unref();
  }

  private clearTimer(): void {
    if (this.timer !== null) { clearTimeout(this.timer); this.timer = null; }
  }

  /** destroyed from here on: no timer, out of the loop and closed there (unless the whole loop was) */
  private closeNative(): void {
    this.destroyed = true;
    this.clearTimer();
    if (this.tls?.timer) { clearTimeout(this.tls.timer); this.tls.timer = null; }
    this.io.forget(this.id);
    if (!this.io.isClosed) this.loop.close(this.id);
  }

  private maybeClose(): void {
    if (this.readEnded && this.writeDone && !this.destroyed) this.destroy();
  }

  private fail(e: Error): void {
    if (this.destroyed) return;
    this.closeNative();
    this.emit('error', e);
    this.scheduleClose(null);
  }

  /** @internal an error before the connection existed (id 0: nothing in the loop) */
  failSoon(e: Error): void {
    this.failLater(e);
  }

  /** an error found in a call from the user: reported after the call returns, as node does */
  private failLater(e: Error): void {
    if (this.destroyed) return;
    this.closeNative();
    this.scheduleClose(e);
  }

  private scheduleClose(e: Error | null): void {
    if (this.closeEmitted) return;
    this.closeEmitted = true;
    process.nextTick(emitClose, this, e);
  }
}

let trace: LoopTrace | null | undefined;
/** one trace per process (every NetIo appends to the same file), read from the environment once */
function sharedTrace(): LoopTrace | null {
  if (trace === undefined) trace = loopTraceFromEnv();
  return trace;
}

/** the DATA and TLSDATA events of a batch: the sockets read in one wake */
function dataEvents(ev: Int32Array, n: number): number {
  let k = 0;
  for (let i = 0; i < n; i++) {
    const kind = ev[i * EVENT_INTS + 1];
    if (kind === EV_DATA || kind === EV_TLSDATA) k++;
  }
  return k;
}

/**
 * src[off, off + len) to the start of dst. A short read (a 64 B ping-pong message, a small request) byte by byte:
 * Buffer#copy makes a Uint8Array view of the source and calls TypedArray#set for every copy, which for a few dozen
 * bytes costs more than the copy (perf of the tunnel's client end in a 64 B ping-pong: Buffer#copy and the view ~2%
 * of its CPU); longer ones with it (memcpy).
 */
const COPY_LOOP_MAX = 256;
function copySmall(src: Buffer, off: number, len: number, dst: Buffer): void {
  if (len > COPY_LOOP_MAX) { src.copy(dst, 0, off, off + len); return; }
  for (let i = 0; i < len; i++) dst[i] = src[off + i]!;
}

function flushHeld(c: NetConn): void {
  c.flushHeld();
}

function emitClose(c: NetConn, e: Error | null): void {
  if (e !== null) c.emit('error', e);
  c.emit('close');
}

function isLatin1(enc: BufferEncoding | undefined): boolean {
  return enc === 'latin1' || enc === 'binary' || enc === 'ascii';
}
