// Loading, attaching, adopting and removing the kernel programs of one agent instance.
//
// Everything lives under one bpffs directory: maps pinned by name (libbpf pin_root_path) and one pinned bpf_link per
// cgroup program under links/. A restarted agent reloads the objects, which reuse the pinned maps (state survives),
// and swaps its new programs into the existing links with bpf_link_update: no detach, no window without programs.
import { existsSync, mkdirSync, readdirSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { isIPv4, isIPv6 } from 'node:net';
import { bpfObjectPath, native, type BpfObject, type MapHandle, type Native } from './native.js';
import { ABI_VERSION, CFG_F_SOCKMAP, PROXY_F_HANDOVER_IN_MESH, PROXY_F_IN_MESH, PROXY_FLAGS_OFFSET, PROXY_HEARTBEAT_OFFSET, PROXY_NODE_V4_OFFSET, PROXY_NODE_V6_OFFSET, PROXY_TUNNEL_PORT_OFFSET, STRUCTS, addrToBytes, bytesToAddr, encode, u32 } from './abi.js';
import type { OriginalDst } from '../model/redirect.js';
import { cgroup2Root, isMountPoint } from './cgroup.js';
import { ipv4Value } from '../model/address.js';

/** Cgroup programs and where they attach. sm_sk_msg attaches to the SOCKHASH instead. */
export const CGROUP_PROGRAMS: Record<string, string> = {
  // First: connect4/6 may redirect to the proxy only once the program that hands the original destination over is in.
  sm_sockops_l7: 'sockops',
  sm_connect4: 'cgroup/connect4',
  sm_connect6: 'cgroup/connect6',
  sm_sendmsg4: 'cgroup/sendmsg4',
  sm_sendmsg6: 'cgroup/sendmsg6',
  sm_recvmsg4: 'cgroup/recvmsg4',
  sm_recvmsg6: 'cgroup/recvmsg6',
  sm_getpeername4: 'cgroup/getpeername4',
  sm_getpeername6: 'cgroup/getpeername6',
  sm_sockops: 'sockops',
  // mTLS strict mode (bpf/strict.bpf.c): segments to the pods' listeners; without a strict entry it passes everything
  sm_strict_ingress: 'cgroup_skb/ingress',
};

export const OBJECTS = ['sock_lb', 'sockmap', 'l7', 'strict'] as const;

export const MAP_NAMES = [
  'sm_services', 'sm_backends', 'sm_tables', 'sm_affinity', 'sm_revnat', 'sm_sockets', 'sm_sock_meta',
  'sm_local_addrs', 'sm_svc_stats', 'sm_backend_stats', 'sm_global', 'sm_config', 'sm_events',
  'sm_proxy', 'sm_l7_pending', 'sm_l7_peers', 'sm_proxy_socks', 'sm_identities', 'sm_authz', 'sm_authz_stats',
  'sm_remote_pods', 'sm_strict', 'sm_strict_stats',
] as const;
export type MapName = (typeof MAP_NAMES)[number];

export interface DatapathOptions {
  bpffs: string;
  cgroup: string;
  sockmap: boolean;
  /** one flow event in N connections (0 = none) */
  eventSample: number;
  /**
   * Load the L7 hand-over program (sock_ops, needs bpf_get_netns_cookie there: 5.15). Default true. Without it the
   * proxy is never announced to the kernel, and L7 services behave as their fail mode says.
   */
  l7?: boolean;
}

/** The agent's L7 proxy as the kernel needs to know it (Datapath.setProxy). */
export interface ProxySettings {
  /** IPv4 listener address ('127.0.0.1'), or '' for none */
  v4: string;
  /** IPv6 listener address ('::1'), or '' (IPv6 VIPs then go to the v4 listener, v4-mapped) */
  v6: string;
  port: number;
  /** cgroup v2 id of the proxy (see ownCgroupId()): connect() from there is never redirected to the proxy */
  cgroupId: bigint;
  /** the kernel treats the proxy as down when the last heartbeat is older than this */
  timeoutMs: number;
  /**
   * The proxy's listener lives in the meshed cgroup (or below it), so its accepted sockets get sock_ops and the
   * app-to-proxy leg can use the sockmap fast path. Default false: client sockets to the proxy stay off the SOCKHASH.
   */
  inMesh?: boolean;
  /**
   * A node address the proxy also listens on (IPv4; '' or absent = none), for clients in another network namespace
   * (pods): the kernel sends those there instead of to the loopback listener they cannot reach. Without one they get
   * their service's fail mode.
   */
  nodeV4?: string;
  /** the same for IPv6 VIPs ('' or absent: nodeV4, v4-mapped) */
  nodeV6?: string;
  /**
   * The tunnel hand-over's port (agent/tunnelhandover.ts), on the same addresses; absent or 0 = none: connections to
   * other nodes' workloads go direct (permissive) or are refused (strict) until setTunnelPort() names one.
   */
  tunnelPort?: number;
}

const PROXY_KEY = u32(0);
/**
 * Dotted IPv4 text from `from` to the end, written v4-mapped into out[at..at+16). Returns the first octet, or -1 when
 * the text is not exactly a.b.c.d (out is then untouched). No allocation: it runs once per accepted connection.
 */
export function parseV4Into(text: string, from: number, out: Buffer, at: number): number {
  const v = ipv4Value(text, from);
  if (v < 0) return -1;
  out.writeUInt32LE(0, at);
  out.writeUInt32LE(0, at + 4);
  out.writeUInt32LE(0xffff0000, at + 8);
  out.writeUInt32BE(v, at + 12);
  return v >>> 24;
}

/** Where the ABI version of the maps sits in sm_config's value (abi_version, reserved[0] before v8); 0 = not written yet. */
const CFG_ABI_VERSION_OFFSET = 8;
/** The ABI version recorded in an sm_config value (configure() writes it; meshctl doctor reads it from the pins). */
export function abiVersionOf(cfg: Buffer): bigint {
  return cfg.readBigUInt64LE(CFG_ABI_VERSION_OFFSET);
}

/**
 * The level of a cgroup (the cgroup2 root is 0): where the kernel starts looking for a caller's workload cgroup among
 * its ancestors (bpf/lib/authz.h). 0 when the path is not under the cgroup2 mount (the search then starts at the top).
 */
export function cgroupLevel(path: string): number {
  const root = cgroup2Root();
  if (!root) return 0;
  const norm = (p: string) => p.replace(/\/+$/, '');
  const rel = norm(path).startsWith(`${norm(root)}/`) ? norm(path).slice(norm(root).length + 1) : '';
  return rel === '' ? 0 : rel.split('/').filter((x) => x !== '').length;
}

export interface AttachReport {
  program: string;
  attachType: string;
  /** 'attached' on a fresh start, 'adopted' when an existing pinned link got the new program */
  how: 'attached' | 'adopted' | 'detached';
}

/** The maps of a running datapath, opened by fd. */
export class Maps {
  constructor(readonly fds: Record<MapName, number>, readonly n: Native) {}
  fd(name: MapName): number { return this.fds[name]; }
}

export class Datapath {
  private objects: BpfObject[] = [];
  maps!: Maps;
  readonly attached: AttachReport[] = [];
  private readonly n = native();
  /** sm_proxy's value as last written; a heartbeat rewrites one field of it */
  private proxyValue?: Buffer;
  private peers?: MapHandle;
  private netnsCookie?: bigint;
  /** reused by every originalDst(): the lookup allocates nothing but its result */
  private readonly peerKey = Buffer.alloc(STRUCTS.sm_l7_key.size);
  private readonly peerValue = Buffer.alloc(STRUCTS.sm_orig_dst.size);
  private readonly scratch16 = Buffer.alloc(16);
  private netnsLo = 0;
  private netnsHi = 0;

  constructor(readonly opts: DatapathOptions) {}

  /** Whether the L7 hand-over is loaded (opts.l7, default true). */
  get l7(): boolean { return this.opts.l7 !== false; }

  get linkDir(): string { return join(this.opts.bpffs, 'links'); }

  /** Load the objects (sock_lb; sockmap and l7 unless turned off), reusing pinned maps. Programs are not attached yet. */
  load(): void {
    mkdirSync(this.linkDir, { recursive: true, mode: 0o700 });
    // Without the fast path the sockmap object is not even loaded: its helpers (netns cookie in sock_ops/sk_msg) need
    // kernel 5.15, while connect-time balancing alone runs on older kernels.
    for (const name of OBJECTS) {
      if (name === 'sockmap' && !this.opts.sockmap) continue;
      if (name === 'l7' && !this.l7) continue;
      this.objects.push(this.n.loadObject(bpfObjectPath(name), this.opts.bpffs));
    }
    const fds = {} as Record<MapName, number>;
    for (const m of MAP_NAMES) {
      const owner = this.objects.find((o) => o.maps().includes(m));
      if (!owner) throw new Error(`BPF objects define no map ${m}: build/bpf is out of date (run npm ci)`);
      fds[m] = owner.mapFd(m);
    }
    this.maps = new Maps(fds, this.n);
  }

  /**
   * Write the runtime switches the programs read, and the ABI version of the maps (sm_config.reserved[0]): libbpf
   * reuses a pinned map whenever type and sizes match, so a layout change of the same size must be caught here.
   */
  configure(): void {
    const fd = this.maps.fd('sm_config');
    const cur = this.n.mapLookup(fd, u32(0));
    const pinned = cur ? abiVersionOf(cur) : 0n;
    if (pinned !== 0n && pinned !== BigInt(ABI_VERSION)) {
      throw new Error(`the datapath pinned at ${this.opts.bpffs} uses kernel ABI v${pinned}, this agent v${ABI_VERSION}: ` +
        `run 'sockmesh-agent cleanup --bpffs ${this.opts.bpffs}' first (connections are balanced again once the new agent starts)`);
    }
    const cfg = encode('sm_config', {
      flags: this.opts.sockmap ? CFG_F_SOCKMAP : 0, event_sample: this.opts.eventSample, mesh_level: cgroupLevel(this.opts.cgroup),
    });
    cfg.writeBigUInt64LE(BigInt(ABI_VERSION), CFG_ABI_VERSION_OFFSET);
    this.n.mapUpdate(fd, u32(0), cfg);
  }

  private programFd(name: string): number {
    const owner = this.objects.find((o) => o.programs().includes(name));
    if (!owner) throw new Error(`BPF objects define no program ${name}: build/bpf is out of date (run npm ci)`);
    return owner.progFd(name);
  }

  /**
   * Attach every program, or swap the new programs into the links a previous agent pinned. If attaching fails part
   * way, the links this call created are taken out again: half a datapath (connect rewritten, getpeername not) is
   * worse than none.
   */
  attach(): AttachReport[] {
    const created: string[] = [];
    try {
      return this.attachAll(created);
    } catch (e) {
      for (const pin of created) {
        try { this.n.detachLink(pin); } catch { /* reported by the original error */ }
      }
      throw e;
    }
  }

  private attachAll(created: string[]): AttachReport[] {
    const cgroupId = statSync(this.opts.cgroup).ino; // cgroup id == inode number of its directory (cgroup2)
    // sk_msg first: a socket keeps the programs the SOCKHASH had when it was inserted, so sockops must not insert
    // sockets before the verdict program is there. Attaching again replaces a previous agent's program.
    if (this.opts.sockmap) {
      this.n.attachSkMsg(this.programFd('sm_sk_msg'), this.maps.fd('sm_sockets'));
      this.attached.push({ program: 'sm_sk_msg', attachType: 'sk_msg', how: 'attached' });
    }
    for (const [prog, type] of Object.entries(CGROUP_PROGRAMS)) {
      const pin = join(this.linkDir, prog);
      if ((prog === 'sm_sockops' && !this.opts.sockmap) || (prog === 'sm_sockops_l7' && !this.l7)) {
        // A previous agent ran with it (the fast path, the L7 hand-over): take it out (sockets in the map keep working).
        if (this.n.detachLink(pin)) this.attached.push({ program: prog, attachType: type, how: 'detached' });
        continue;
      }
      const fd = this.programFd(prog);
      if (existsSync(pin) && this.n.linkInfo(pin).cgroupId === 0) {
        // The cgroup this link was attached to is gone (removed, maybe recreated since): the link is dead.
        this.n.detachLink(pin);
      }
      if (existsSync(pin)) {
        const info = this.n.linkInfo(pin);
        if (info.cgroupId !== cgroupId) {
          throw new Error(`${pin} is attached to another cgroup (id ${info.cgroupId}, not ${this.opts.cgroup}): ` +
            `run 'sockmesh-agent cleanup --bpffs ${this.opts.bpffs}' first or use another --bpffs`);
        }
        this.n.updateLink(pin, fd);
        this.attached.push({ program: prog, attachType: type, how: 'adopted' });
      } else {
        const linkFd = this.n.attachCgroup(fd, type, this.opts.cgroup, pin);
        created.push(pin);
        this.n.close(linkFd);
        this.attached.push({ program: prog, attachType: type, how: 'attached' });
      }
    }
    return this.attached;
  }

  /**
   * Tell the kernel where the proxy listens and who it is. The proxy counts as down (fail modes apply) until the first
   * heartbeat(): call this at start, then heartbeat() once the proxy listens.
   * `takeover` (a planned restart: this agent took the running proxy's listening sockets over) writes the record
   * alive, with a heartbeat of now, and keeps the pending hand-overs: the connections behind them are being accepted
   * on those same sockets. The record is thus never down across the restart.
   */
  setProxy(p: ProxySettings, takeover = false): void {
    if (!this.l7) throw new Error('setProxy: the L7 redirect is not loaded (this kernel lacks bpf_get_netns_cookie in sock_ops, 5.15)');
    if (p.v4 !== '' && !isIPv4(p.v4)) throw new Error(`setProxy: v4 '${p.v4}' is not an IPv4 address`);
    if (p.v6 !== '' && !isIPv6(p.v6)) throw new Error(`setProxy: v6 '${p.v6}' is not an IPv6 address`);
    if (p.v4 === '' && p.v6 === '') throw new Error('setProxy: neither a v4 nor a v6 listener address');
    if (p.nodeV4 && !isIPv4(p.nodeV4)) throw new Error(`setProxy: nodeV4 '${p.nodeV4}' is not an IPv4 address`);
    if (p.nodeV6 && !isIPv6(p.nodeV6)) throw new Error(`setProxy: nodeV6 '${p.nodeV6}' is not an IPv6 address`);
    if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) throw new Error(`setProxy: port ${p.port} is not 1..65535`);
    if (!(p.timeoutMs > 0)) throw new Error(`setProxy: timeoutMs ${p.timeoutMs} must be > 0`);
    if (typeof p.cgroupId !== 'bigint' || p.cgroupId <= 0n) throw new Error(`setProxy: cgroupId ${String(p.cgroupId)} must be a positive bigint`);
    // Unset addresses stay all-zero (what the programs test for), not ::ffff:0.0.0.0.
    const v = encode('sm_proxy', {
      port: p.port, tunnel_port: p.tunnelPort ?? 0, flags: p.inMesh ? PROXY_F_IN_MESH : 0, netns_cookie: this.ownNetnsCookie(), cgroup_id: p.cgroupId, heartbeat_ns: takeover ? process.hrtime.bigint() : 0n,
      timeout_ns: BigInt(Math.round(p.timeoutMs * 1e6)),
    });
    if (p.v4) addrToBytes(p.v4, v, 0);
    if (p.v6) addrToBytes(p.v6, v, 16);
    if (p.nodeV4) addrToBytes(p.nodeV4, v, PROXY_NODE_V4_OFFSET);
    if (p.nodeV6) addrToBytes(p.nodeV6, v, PROXY_NODE_V6_OFFSET);
    if (takeover && p.tunnelPort === undefined) {
      // the running agent's tunnel hand-over listeners are being taken over too: its port stays in force meanwhile
      const cur = this.n.mapLookup(this.maps.fd('sm_proxy'), PROXY_KEY);
      if (cur && cur.length === v.length) {
        v.writeUInt16BE(cur.readUInt16BE(PROXY_TUNNEL_PORT_OFFSET), PROXY_TUNNEL_PORT_OFFSET);
        // and so does where its listeners' sockets live (the same sockets, passed on)
        v.writeUInt32LE(v.readUInt32LE(PROXY_FLAGS_OFFSET) | (cur.readUInt32LE(PROXY_FLAGS_OFFSET) & PROXY_F_HANDOVER_IN_MESH), PROXY_FLAGS_OFFSET);
      }
    }
    this.proxyValue = v;
    this.n.mapUpdate(this.maps.fd('sm_proxy'), PROXY_KEY, v);
    if (takeover) return;
    // Hand-overs a previous agent never accepted would stay in the LRU: a process outside the mesh that later binds
    // the same source port and dials the proxy would be taken for that client (its cgroup, its workload). The
    // heartbeat is 0 until this agent listens, so nothing new is redirected while they are dropped.
    for (const name of ['sm_l7_peers', 'sm_l7_pending'] as const) {
      const fd = this.maps.fd(name);
      for (const key of this.n.mapKeys(fd)) this.n.mapDelete(fd, key);
    }
  }

  /**
   * Change only the node addresses (where clients in other network namespaces are sent) of what setProxy announced,
   * e.g. when the address pods route to is found or changes: the heartbeat and the pending hand-overs are kept.
   */
  setProxyNode(nodeV4: string, nodeV6: string): void {
    const v = this.proxyValue;
    if (!v) throw new Error('setProxyNode: setProxy was not called');
    if (nodeV4 && !isIPv4(nodeV4)) throw new Error(`setProxyNode: nodeV4 '${nodeV4}' is not an IPv4 address`);
    if (nodeV6 && !isIPv6(nodeV6)) throw new Error(`setProxyNode: nodeV6 '${nodeV6}' is not an IPv6 address`);
    v.fill(0, PROXY_NODE_V4_OFFSET, PROXY_NODE_V6_OFFSET + 16);
    if (nodeV4) addrToBytes(nodeV4, v, PROXY_NODE_V4_OFFSET);
    if (nodeV6) addrToBytes(nodeV6, v, PROXY_NODE_V6_OFFSET);
    this.n.mapUpdate(this.maps.fd('sm_proxy'), PROXY_KEY, v);
  }

  /**
   * The tunnel hand-over listens on `port` (0: no longer): connections to other nodes' workloads go there from the next
   * connect(), once its listeners are in sm_proxy_socks (proxyListener) and the proxy's heartbeat is fresh.
   * `inMesh`: every one of its listening sockets was made below the meshed cgroup (meshsocket.ts), so the sockets it
   * accepts get sock_ops and both ends of an app's connection to it take the sockmap fast path; false: neither end goes
   * into the SOCKHASH (an app socket whose peer never does would pay for sk_msg on every send and then take TCP);
   * undefined: as it was (listeners taken over from a running agent are the same sockets).
   */
  setTunnelPort(port: number, inMesh?: boolean): void {
    const v = this.proxyValue;
    if (!v) throw new Error('setTunnelPort: setProxy was not called (the hand-over lives on the L7 proxy\'s addresses and heartbeat)');
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`setTunnelPort: port ${port} is not 0..65535`);
    v.writeUInt16BE(port, PROXY_TUNNEL_PORT_OFFSET);
    if (inMesh !== undefined) {
      const flags = v.readUInt32LE(PROXY_FLAGS_OFFSET) & ~PROXY_F_HANDOVER_IN_MESH;
      v.writeUInt32LE((flags | (inMesh ? PROXY_F_HANDOVER_IN_MESH : 0)) >>> 0, PROXY_FLAGS_OFFSET);
    }
    this.n.mapUpdate(this.maps.fd('sm_proxy'), PROXY_KEY, v);
  }

  /** The proxy is alive now (bpf_ktime_get_ns and process.hrtime.bigint() are both CLOCK_MONOTONIC). */
  heartbeat(): void {
    const v = this.proxyValue;
    if (!v) throw new Error('heartbeat: setProxy was not called');
    v.writeBigUInt64LE(process.hrtime.bigint(), PROXY_HEARTBEAT_OFFSET);
    this.n.mapUpdate(this.maps.fd('sm_proxy'), PROXY_KEY, v);
  }

  /** The proxy stopped: the fail mode of every L7 service applies from the next connect(), not after the timeout. */
  proxyDown(): void {
    const v = this.proxyValue;
    if (!v) return; // never announced: the kernel has no live proxy anyway
    v.writeBigUInt64LE(0n, PROXY_HEARTBEAT_OFFSET);
    this.n.mapUpdate(this.maps.fd('sm_proxy'), PROXY_KEY, v);
  }

  /**
   * Record one of the proxy's listening sockets (by fd) under the address:port the kernel redirects to. While it is in
   * sm_proxy_socks (and the heartbeat is fresh) the kernel redirects there; the kernel takes it out by itself when the
   * socket closes, which is what makes a killed agent's proxy count as down from the next connect(). Call it for
   * every listener once it listens, and again for a listener taken over from another agent (the same socket under
   * the same key: it replaces itself).
   */
  proxyListener(host: string, port: number, fd: number): void {
    if (!this.l7) throw new Error('proxyListener: the L7 redirect is not loaded');
    if (!isIPv4(host) && !isIPv6(host)) throw new Error(`proxyListener: host '${host}' is not an IP address`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`proxyListener ${host}: port ${port} is not 1..65535`);
    if (!Number.isInteger(fd) || fd < 0) throw new Error(`proxyListener ${host}:${port}: fd ${fd} is not a file descriptor`);
    const key = encode('sm_proxy_sock_key', { addr: host, port });
    try {
      this.n.mapUpdate(this.maps.fd('sm_proxy_socks'), key, u32(fd));
    } catch (e) {
      throw new Error(`recording the proxy's listener ${host}:${port} (fd ${fd}) in sm_proxy_socks: ${(e as Error).message}`, { cause: e });
    }
  }

  private ownNetnsCookie(): bigint {
    this.netnsCookie ??= this.n.netnsCookie(-1);
    return this.netnsCookie;
  }

  /**
   * Where the connection the proxy accepted from peerAddress:peerPort was going, and who made it; null when the kernel
   * has nothing for that peer (not redirected by us, or already taken). Takes the entry out (one syscall): a second
   * call for the same peer returns null. peerAddress as node:net gives it ('127.0.0.1', '::ffff:127.0.0.1', '::1').
   */
  originalDst(peerAddress: string, peerPort: number): OriginalDst | null {
    const key = this.peerKey;
    if (!this.peers) {
      if (!this.l7) return null;
      this.peers = new this.n.MapHandle(this.maps.fd('sm_l7_peers'));
      const c = this.ownNetnsCookie();
      this.netnsLo = Number(c & 0xffffffffn);
      this.netnsHi = Number(c >> 32n);
    }
    // IPv4 (also as node:net shows it on a dual-stack listener, ::ffff:a.b.c.d) parsed straight into the key; the
    // netns cookie is part of the key only for loopback peers (struct sm_l7_key).
    const mapped = peerAddress.startsWith('::ffff:') ? 7 : 0;
    let first = parseV4Into(peerAddress, mapped, key, 8);
    if (first < 0) {
      if (!isIPv6(peerAddress)) return null;
      addrToBytes(peerAddress, this.scratch16).copy(key, 8);
      first = peerAddress === '::1' ? 127 : 0;
    }
    const lo = first === 127;
    key.writeUInt32LE(lo ? this.netnsLo : 0, 0);
    key.writeUInt32LE(lo ? this.netnsHi : 0, 4);
    key.writeUInt32LE(peerPort, 24);
    const v = this.peerValue;
    if (!this.peers.lookupAndDelete(key, v)) return null;
    // The VIP as the model writes it: IPv4 dotted (never v4-mapped), IPv6 compressed.
    const vip = v[10] === 0xff && v[11] === 0xff && v.readUInt32LE(0) === 0 && v.readUInt32LE(4) === 0 && v.readUInt16LE(8) === 0
      ? `${v[12]}.${v[13]}.${v[14]}.${v[15]}` : bytesToAddr(v, 0);
    const dst: OriginalDst = { vip, port: v.readUInt16BE(16), cgroupId: v.readBigUInt64LE(24) };
    // the tunnel hand-over's: the pod chosen (the L7 redirect leaves it zero)
    const bport = v.readUInt16BE(48);
    if (bport !== 0) {
      const b = v[42] === 0xff && v[43] === 0xff && v.readUInt32LE(32) === 0 && v.readUInt32LE(36) === 0 && v.readUInt16LE(40) === 0
        ? `${v[44]}.${v[45]}.${v[46]}.${v[47]}` : bytesToAddr(v, 32);
      dst.backend = { address: b, port: bport };
      dst.serviceId = v.readUInt32LE(20);
    }
    return dst;
  }

  /** Close our fds. Pins and links stay: the datapath keeps running without the agent. */
  close(): void {
    this.peers?.close();
    this.peers = undefined;
    for (const o of this.objects) o.close();
    this.objects = [];
  }
}

/**
 * Remove everything an agent instance made: its links (detaching the programs), the sk_msg attachment (it goes with
 * the SOCKHASH), its map pins and the directory. Only names this agent pins are touched, never a whole bpffs: other
 * tools keep their pins there. Safe to run when nothing is there. Returns what was removed.
 */
export function cleanup(bpffs: string): string[] {
  const n = native();
  const removed: string[] = [];
  if (!existsSync(bpffs)) return removed;
  if (isMountPoint(bpffs)) throw new Error(`--bpffs ${bpffs} is a bpf filesystem's root: give the agent's own directory under it`);
  const links = join(bpffs, 'links');
  for (const prog of Object.keys(CGROUP_PROGRAMS)) {
    if (n.detachLink(join(links, prog))) removed.push(`link ${prog}`);
  }
  if (existsSync(links) && readdirSync(links).length === 0) rmdirSync(links);
  for (const name of MAP_NAMES) {
    const p = join(bpffs, name);
    if (!existsSync(p)) continue;
    rmSync(p);
    removed.push(`pin ${name}`);
  }
  if (readdirSync(bpffs).length === 0) rmdirSync(bpffs);
  else removed.push(`(kept ${bpffs}: it holds pins sockmesh did not make)`);
  return removed;
}
