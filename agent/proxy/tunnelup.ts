// The L7 proxy's upstream legs to backends on other nodes, through the HBONE tunnel (issue 13).
//
// Which backends: exactly those the kernel hands to the tunnel for a pod's own connect() (a workload of another node
// whose mTLS mode is not off: datapath/plan.ts tunnelTargets, the same function, passed in as a TunnelDecider when the
// policy compiles a model), so that a service's traffic is encrypted between nodes whether it is L4 or L7. The kernel
// never hands the proxy's own connections over (bpf/lib/tunnel.h: they carry no workload identity), so the proxy
// opens the stream itself.
//
// As whom: the node proxy acts for the local workloads as ztunnel does, so the CONNECT stream is opened as the
// downstream client's workload identity (the client's cgroup -> workload -> SPIFFE id, what L7 authz reads), and the
// destination agent applies its L4 authorization to that identity, as for the pod's own L4 connections. (Istio's
// waypoint opens its upstreams as the waypoint's own identity; here the proxy is no separate workload, and a policy
// that allows a client at L4 must allow it through its L7 service too.) The pools key connections by Upstream.key, so
// each (backend, identity) pair is its own Upstream with its own key: one client's upstream connection or HTTP/2
// session is never reused for another identity.
//
// A client without an identity (a process of the meshed cgroup that is no workload): a permissive destination is
// reached directly, in plaintext (what permissive accepts, and what the kernel does for it when the tunnel is down);
// a strict one would drop the raw connection, so the attempt fails at once as denied (no 5 s connect timeout).
//
// A denial at the destination (the CONNECT answered 403) is a connect failure the policy does not hold against the
// backend and does not retry (decide.ts). The connector fails that connection with UpstreamDenied (code EACCES); the
// pool's connection or session that saw it says so in its attempt's outcome (connectFailure(true)), so concurrent
// requests of one identity are judged each by its own connection: another backend would deny the same identity, and a denied client must not
// get healthy backends ejected for everyone. The client gets 503 (x-sockmesh-error: connect-failure), as a client of
// an Istio waypoint does when the destination's ztunnel refuses the waypoint's connection.
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import type { Service } from '../model/types.js';
import type { Conn } from './conn.js';
import type { Outcome, Upstream } from './types.js';

/** A backend on another node the proxy reaches through the tunnel. */
export interface TunnelTarget {
  node: string;
  strict: boolean;
}

/** Whether a backend (address:port of svc) is reached through the tunnel, decided once per model. */
export type TunnelDecider = (svc: Service, address: string, port: number) => TunnelTarget | undefined;

/** The part of a backend slot this module keeps: its tunnel target and the per-identity upstreams made for it. */
export interface TunnelSlot {
  readonly upstream: Upstream;
  tunnel: TunnelTarget | undefined;
  viaTunnel: Map<string, Upstream> | undefined;
}

const NO_IDENTITY = '';

/**
 * The upstream an attempt from `source` (a SPIFFE id; undefined: no workload) uses for a tunnelled slot: one per
 * (backend, identity), made once and kept on the slot while its target stays. A permissive backend and a client with
 * no identity: the backend's plain upstream.
 */
export function tunnelledUpstream(slot: TunnelSlot, source: string | undefined): Upstream {
  const t = slot.tunnel;
  if (t === undefined || (source === undefined && !t.strict)) return slot.upstream;
  const k = source ?? NO_IDENTITY;
  let m = slot.viaTunnel;
  if (m === undefined) slot.viaTunnel = m = new Map();
  let up = m.get(k);
  if (up === undefined) {
    const b = slot.upstream;
    up = { key: `${b.key} as ${source ?? '(no identity)'}`, address: b.address, family: b.family, port: b.port, group: b.group, tunnel: { source, node: t.node, strict: t.strict } };
    m.set(k, up);
  }
  return up;
}

/** A slot's target after a model update: the per-identity upstreams are dropped when it changed. */
export function retarget(slot: TunnelSlot, t: TunnelTarget | undefined): void {
  const was = slot.tunnel;
  if (was === t || (was !== undefined && t !== undefined && was.node === t.node && was.strict === t.strict)) return;
  slot.tunnel = t;
  slot.viaTunnel = undefined;
}

/** An error a connector gives when the destination refused the identity: a Conn error with code EACCES. */
export class UpstreamDenied extends Error {
  readonly code = 'EACCES';
}

/** A connection's error says the destination refused the identity (UpstreamDenied, or any Conn error coded EACCES). */
export function isDenial(e: unknown): boolean {
  return (e as { code?: unknown } | null)?.code === 'EACCES';
}

const CONNECT_FAILED: Outcome = Object.freeze({ kind: 'connect-failure' });
const CONNECT_DENIED: Outcome = Object.freeze({ kind: 'connect-failure', denied: true });

/**
 * The outcome of an attempt whose connection failed, denied or not: what the engines report (the denial read from that
 * attempt's own connection, H1Upstream.denied / UpstreamSession.denied, never from state shared by the identity's
 * other requests, which a concurrent denial would make a plain failure look like).
 */
export function connectFailure(denied: boolean | undefined): Outcome {
  return denied === true ? CONNECT_DENIED : CONNECT_FAILED;
}

/**
 * A Conn over a tunnel stream that is still being opened (TunnelClient.connect: the CONNECT's 200 resolves it). What
 * the engine writes before then is queued (the HTTP/2 pool writes its preface at once); 'connect' is emitted once the
 * destination accepted, or 'error' (UpstreamDenied for a refusal by authorization) then 'close'. Half-close, destroy
 * and back-pressure go to the stream.
 */
export class TunnelConn extends EventEmitter implements Conn {
  destroyed = false;
  private d: Duplex | null = null;
  private queued: { data: Buffer | Uint8Array | string; enc?: BufferEncoding }[] = [];
  private ending = false;
  private paused = false;
  private closed = false;
  private idleMs = 0;
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(readonly remoteAddress: string, readonly remotePort: number, open: Promise<Duplex>) {
    super();
    open.then((d) => this.attach(d), (e: Error) => this.fail(e));
  }

  private attach(d: Duplex): void {
    if (this.destroyed) { d.destroy(); return; }
    this.d = d;
    d.on('data', (b: Buffer) => { this.touch(); this.emit('data', b); });
    d.on('end', () => this.emit('end'));
    d.on('drain', () => this.emit('drain'));
    d.on('error', (e: Error) => { if (!this.destroyed) this.emit('error', e); });
    d.on('close', () => this.finish());
    if (this.paused) d.pause();
    d.cork();
    for (const q of this.queued) d.write(q.data, q.enc as BufferEncoding);
    this.queued = [];
    if (this.ending) d.end();
    process.nextTick(() => d.uncork());
    this.touch();
    this.emit('connect');
  }

  private fail(e: Error): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.emit('error', e);
    this.finish();
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.destroyed = true;
    if (this.idleTimer !== null) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    process.nextTick(() => this.emit('close'));
  }

  private touch(): void {
    if (this.idleMs === 0) return;
    if (this.idleTimer !== null) this.idleTimer.refresh();
    else this.idleTimer = setTimeout(() => { this.idleTimer = null; this.emit('timeout'); }, this.idleMs);
  }

  write(data: Buffer | Uint8Array | string, encoding?: BufferEncoding): boolean {
    if (this.destroyed || this.ending) return false;
    this.touch();
    if (this.d === null) { this.queued.push({ data, enc: encoding }); return true; }
    return encoding === undefined ? this.d.write(data) : this.d.write(data, encoding);
  }

  cork(): void { this.d?.cork(); }
  uncork(): void { this.d?.uncork(); }

  pause(): this { this.paused = true; this.d?.pause(); return this; }
  resume(): this { this.paused = false; this.d?.resume(); return this; }

  end(): this {
    if (this.destroyed || this.ending) return this;
    this.ending = true;
    this.d?.end();
    return this;
  }

  destroy(): this {
    if (this.closed) return this;
    this.destroyed = true;
    this.d?.destroy();
    this.finish();
    return this;
  }

  setNoDelay(): this { return this; }

  setTimeout(ms: number, cb?: () => void): this {
    this.idleMs = ms;
    if (cb) this.once('timeout', cb);
    if (ms === 0) { if (this.idleTimer !== null) { clearTimeout(this.idleTimer); this.idleTimer = null; } } else this.touch();
    return this;
  }
}
