// TypeScript codecs for the structs of bpf/include/sockmesh_abi.h.
// This file is the only TypeScript description of the kernel ABI; test/kernel/abi.test.ts compares every size and
// offset here with what the compiler computed from the header (native abiLayout()), so the two cannot drift.
import { isIPv6 } from 'node:net';
import { ipv4Value } from '../model/address.js';

export const ABI_VERSION = 9;

export const PROTO = { tcp: 6, udp: 17 } as const;
export const ALGO = { random: 0, weighted: 1, maglev: 2 } as const;
export const SVC_F_AFFINITY = 1 << 0;
export const SVC_F_L7 = 1 << 1;
export const SVC_F_FAIL_OPEN = 1 << 2;
export const SVC_F_AUTHZ = 1 << 3;
export const SVC_F_AUTHZ_DENY = 1 << 4;
export const AUTHZ_DENY = 0;
export const AUTHZ_ALLOW = 1;
export const MAX_AUTHZ_POLICIES = 1024;
export const BE_F_LOCAL = 1 << 0;
export const BE_F_TUNNEL = 1 << 1;
export const BE_F_STRICT = 1 << 2;
export const SOCK_F_ACTIVE = 1 << 0;
export const SOCK_F_TCP_ONLY = 1 << 1;
export const SOCK_F_SENT = 1 << 2;
export const SOCK_F_BULK = 1 << 3;
export const SOCK_F_NOT_BULK = 1 << 4;
export const CFG_F_SOCKMAP = 1 << 0;
export const PROXY_F_IN_MESH = 1 << 0;
/** SM_PROXY_F_HANDOVER_IN_MESH: the tunnel hand-over's listeners were made below the meshed cgroup (meshsocket.ts) */
export const PROXY_F_HANDOVER_IN_MESH = 1 << 1;
/** struct sm_strict.mode (SM_MTLS_*): only strict drops (bpf/strict.bpf.c) */
export const MTLS_MODE = { off: 0, permissive: 1, strict: 2 } as const;
/** SM_MAX_STRICT: entries of sm_strict (and destinations counted in sm_strict_stats) */
export const MAX_STRICT = 16384;

export const EVENT_KIND: Record<number, string> = {
  1: 'connect', 2: 'no-backend', 3: 'udp-send', 4: 'l7-redirect', 5: 'l7-refused', 6: 'sock-insert', 7: 'redirect-miss',
  8: 'authz-deny', 9: 'strict-drop', 10: 'tunnel', 11: 'tunnel-refused',
};
/** sm_flow_event.flags */
export const EV_F_AFFINITY_HIT = 1 << 0;
export const EV_F_ACTIVE = 1 << 1;

/** enum sm_global_counter, in order. */
export const GLOBAL_COUNTERS = [
  'lb_connect', 'lb_udp_send', 'lb_no_backend', 'affinity_hit', 'revnat_miss', 'sock_insert', 'sock_insert_fail',
  'redirect', 'redirect_miss', 'tcp_only', 'event_drop',
  'l7_redirect', 'l7_fail_open', 'l7_fail_closed', 'l7_from_proxy', 'l7_handoff', 'bulk_leave', 'bulk_kept',
  'stale_peer', 'l7_proxy_gone', 'authz_allow', 'authz_deny', 'tunnel_handover', 'tunnel_direct', 'tunnel_refused',
  'strict_drop', 'strict_local',
] as const;
export type GlobalCounter = (typeof GLOBAL_COUNTERS)[number];

type FieldType = 'u8' | 'u16' | 'u16be' | 'u32' | 'u64' | 'addr';
interface Field { name: string; type: FieldType; offset: number }
export interface StructDef { name: string; size: number; fields: Field[] }

function def(name: string, size: number, fields: [string, FieldType, number][]): StructDef {
  return { name, size, fields: fields.map(([n, type, offset]) => ({ name: n, type, offset })) };
}

// Padding fields are listed so the layout test checks them too; codecs write them as zero.
export const STRUCTS = {
  sm_addr: def('sm_addr', 16, [['a', 'addr', 0]]),
  sm_service_key: def('sm_service_key', 20, [['addr', 'addr', 0], ['port', 'u16be', 16], ['proto', 'u8', 18], ['pad', 'u8', 19]]),
  sm_service: def('sm_service', 24, [
    ['service_id', 'u32', 0], ['frontend_id', 'u32', 4], ['table_id', 'u32', 8], ['table_size', 'u32', 12],
    ['affinity_timeout_s', 'u32', 16], ['algo', 'u8', 20], ['flags', 'u8', 21], ['pad', 'u16', 22],
  ]),
  sm_backend: def('sm_backend', 28, [
    ['addr', 'addr', 0], ['port', 'u16be', 16], ['family', 'u8', 18], ['flags', 'u8', 19], ['service_id', 'u32', 20],
    ['weight', 'u32', 24],
  ]),
  sm_table_key: def('sm_table_key', 8, [['table_id', 'u32', 0], ['index', 'u32', 4]]),
  sm_affinity_key: def('sm_affinity_key', 16, [['netns_cookie', 'u64', 0], ['frontend_id', 'u32', 8], ['pad', 'u32', 12]]),
  sm_affinity: def('sm_affinity', 16, [['last_used_ns', 'u64', 0], ['backend_id', 'u32', 8], ['pad', 'u32', 12]]),
  sm_revnat_key: def('sm_revnat_key', 32, [
    ['cookie', 'u64', 0], ['addr', 'addr', 8], ['port', 'u16be', 24], ['pad', 'u16', 26], ['pad2', 'u32', 28],
  ]),
  sm_revnat: def('sm_revnat', 28, [
    ['vip', 'addr', 0], ['vport', 'u16be', 16], ['pad', 'u16', 18], ['service_id', 'u32', 20], ['backend_id', 'u32', 24],
  ]),
  sm_sock_key: def('sm_sock_key', 48, [
    ['netns_cookie', 'u64', 0], ['local_ip', 'addr', 8], ['remote_ip', 'addr', 24], ['local_port', 'u32', 40],
    ['remote_port', 'u32', 44],
  ]),
  sm_sock_meta: def('sm_sock_meta', 16, [['service_id', 'u32', 0], ['backend_id', 'u32', 4], ['flags', 'u32', 8], ['bulk_kib', 'u32', 12]]),
  sm_counters: def('sm_counters', 48, [
    ['connections', 'u64', 0], ['udp_messages', 'u64', 8], ['no_backend', 'u64', 16], ['redirects', 'u64', 24],
    ['redirect_bytes', 'u64', 32], ['affinity_hits', 'u64', 40],
  ]),
  sm_config: def('sm_config', 32, [
    ['flags', 'u32', 0], ['event_sample', 'u32', 4], ['abi_version', 'u64', 8], ['mesh_level', 'u32', 16], ['pad', 'u32', 20],
    ['reserved', 'u64', 24],
  ]),
  sm_flow_event: def('sm_flow_event', 88, [
    ['ts_ns', 'u64', 0], ['cookie', 'u64', 8], ['netns_cookie', 'u64', 16], ['vip', 'addr', 24],
    ['backend_addr', 'addr', 40], ['vport', 'u16be', 56], ['backend_port', 'u16be', 58], ['service_id', 'u32', 60],
    ['backend_id', 'u32', 64], ['kind', 'u8', 68], ['proto', 'u8', 69], ['algo', 'u8', 70], ['flags', 'u8', 71],
    ['cgroup_id', 'u64', 72], ['identity_id', 'u32', 80], ['policy_id', 'u32', 84],
  ]),
  sm_proxy: def('sm_proxy', 104, [
    ['v4', 'addr', 0], ['v6', 'addr', 16], ['port', 'u16be', 32], ['tunnel_port', 'u16be', 34], ['flags', 'u32', 36],
    ['netns_cookie', 'u64', 40], ['cgroup_id', 'u64', 48], ['heartbeat_ns', 'u64', 56], ['timeout_ns', 'u64', 64],
    ['node_v4', 'addr', 72], ['node_v6', 'addr', 88],
  ]),
  sm_orig_dst: def('sm_orig_dst', 56, [
    ['vip', 'addr', 0], ['vport', 'u16be', 16], ['pad', 'u16', 18], ['service_id', 'u32', 20], ['cgroup_id', 'u64', 24],
    ['backend', 'addr', 32], ['backend_port', 'u16be', 48], ['pad2', 'u16', 50], ['backend_id', 'u32', 52],
  ]),
  sm_proxy_sock_key: def('sm_proxy_sock_key', 20, [['addr', 'addr', 0], ['port', 'u16be', 16], ['pad', 'u16', 18]]),
  sm_identity: def('sm_identity', 8, [['identity_id', 'u32', 0], ['pad', 'u32', 4]]),
  sm_authz_key: def('sm_authz_key', 12, [['service_id', 'u32', 0], ['identity_id', 'u32', 4], ['port', 'u16be', 8], ['pad', 'u16', 10]]),
  sm_authz_verdict: def('sm_authz_verdict', 8, [['policy_id', 'u32', 0], ['verdict', 'u8', 4], ['pad', 'u8', 5]]),
  sm_authz_counters: def('sm_authz_counters', 16, [['allowed', 'u64', 0], ['denied', 'u64', 8]]),
  sm_strict_key: def('sm_strict_key', 20, [['addr', 'addr', 0], ['port', 'u16be', 16], ['pad', 'u16', 18]]),
  sm_strict: def('sm_strict', 4, [['mode', 'u8', 0], ['pad', 'u8', 1]]),
  sm_strict_counters: def('sm_strict_counters', 24, [['dropped', 'u64', 0], ['local', 'u64', 8], ['last_event_ns', 'u64', 16]]),
  sm_l7_key: def('sm_l7_key', 32, [['netns_cookie', 'u64', 0], ['addr', 'addr', 8], ['port', 'u32', 24], ['pad', 'u32', 28]]),
} as const;

/** Byte offsets used on hot paths without the generic codec. */
export const PROXY_HEARTBEAT_OFFSET = 56;
export const PROXY_NODE_V4_OFFSET = 72;
export const PROXY_NODE_V6_OFFSET = 88;
/** sm_proxy.tunnel_port (network order): the tunnel hand-over's port, set once it listens */
export const PROXY_TUNNEL_PORT_OFFSET = 34;
/** sm_proxy.flags (u32, host order): SM_PROXY_F_* */
export const PROXY_FLAGS_OFFSET = 36;

export type StructName = keyof typeof STRUCTS;
/** Decoded values: numbers, bigints for u64, textual addresses for 'addr'. */
export type Decoded = Record<string, number | bigint | string>;

// ---- addresses: 16 bytes, network order, IPv4 as IPv4-mapped ----

export function addrToBytes(address: string, out: Buffer = Buffer.alloc(16), at = 0): Buffer {
  const v4 = ipv4Value(address);
  if (v4 >= 0) {
    out.fill(0, at, at + 10);
    out[at + 10] = 0xff;
    out[at + 11] = 0xff;
    out.writeUInt32BE(v4, at + 12);
    return out;
  }
  if (at !== 0 || out.length !== 16) {
    addrToBytes(address).copy(out, at);
    return out;
  }
  if (!isIPv6(address)) throw new Error(`not an IP address: ${address}`);
  let text = address;
  // An embedded dotted quad (::ffff:1.2.3.4) becomes two hex groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const o = dotted[1]!.split('.').map(Number);
    text = text.slice(0, dotted.index) + `${((o[0]! << 8) | o[1]!).toString(16)}:${((o[2]! << 8) | o[3]!).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const tl = tail === undefined ? [] : tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - tl.length).fill('0'), ...tl];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** Inverse of addrToBytes: IPv4-mapped addresses come back as dotted IPv4. */
export function bytesToAddr(b: Buffer, offset = 0): string {
  const v = b.subarray(offset, offset + 16);
  const mapped = v.subarray(0, 10).every((x) => x === 0) && v[10] === 0xff && v[11] === 0xff;
  if (mapped) return `${v[12]}.${v[13]}.${v[14]}.${v[15]}`;
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(v.readUInt16BE(i * 2).toString(16));
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

// ---- generic codec ----

export function encode(name: StructName, values: Decoded, out?: Buffer, at = 0): Buffer {
  const s: StructDef = STRUCTS[name];
  const buf = out ?? Buffer.alloc(s.size);
  if (!out) buf.fill(0);
  for (const f of s.fields) {
    const v = values[f.name];
    const o = at + f.offset;
    if (v === undefined) continue; // zero (buffer is zero-filled)
    switch (f.type) {
      case 'u8': buf.writeUInt8(Number(v), o); break;
      case 'u16': buf.writeUInt16LE(Number(v), o); break;
      case 'u16be': buf.writeUInt16BE(Number(v), o); break;
      case 'u32': buf.writeUInt32LE(Number(v) >>> 0, o); break;
      case 'u64': buf.writeBigUInt64LE(BigInt(v), o); break;
      case 'addr': addrToBytes(String(v), buf, o); break;
    }
  }
  return buf;
}

export function decode(name: StructName, buf: Buffer, at = 0): Decoded {
  const s: StructDef = STRUCTS[name];
  const out: Decoded = {};
  for (const f of s.fields) {
    if (f.name.startsWith('pad')) continue;
    const o = at + f.offset;
    switch (f.type) {
      case 'u8': out[f.name] = buf.readUInt8(o); break;
      case 'u16': out[f.name] = buf.readUInt16LE(o); break;
      case 'u16be': out[f.name] = buf.readUInt16BE(o); break;
      case 'u32': out[f.name] = buf.readUInt32LE(o); break;
      case 'u64': out[f.name] = buf.readBigUInt64LE(o); break;
      case 'addr': out[f.name] = bytesToAddr(buf, o); break;
    }
  }
  return out;
}

// ---- typed helpers for the structs the agent writes ----

export interface ServiceKey { addr: string; port: number; proto: number }
export interface ServiceValue {
  service_id: number; frontend_id: number; table_id: number; table_size: number;
  affinity_timeout_s: number; algo: number; flags: number;
}
export interface BackendValue { addr: string; port: number; family: number; flags: number; service_id: number; weight: number }

/** struct sm_table_key */
export function tableKey(tableId: number, index: number, out = Buffer.alloc(8), at = 0): Buffer {
  out.writeUInt32LE(tableId >>> 0, at);
  out.writeUInt32LE(index >>> 0, at + 4);
  return out;
}

export const u32 = (n: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32LE(n >>> 0); return b; };

export function serviceKey(k: ServiceKey): Buffer { return encode('sm_service_key', { ...k }); }
export function decodeServiceKey(b: Buffer): ServiceKey { return decode('sm_service_key', b) as unknown as ServiceKey; }
export function decodeService(b: Buffer): ServiceValue { return decode('sm_service', b) as unknown as ServiceValue; }
export function decodeBackend(b: Buffer): BackendValue { return decode('sm_backend', b) as unknown as BackendValue; }

export type Counters = {
  connections: bigint; udp_messages: bigint; no_backend: bigint; redirects: bigint; redirect_bytes: bigint; affinity_hits: bigint;
};

/** Sum a per-CPU value (each CPU's copy is 8-byte aligned) of struct sm_counters. */
export function sumCounters(buf: Buffer): Counters {
  const size = STRUCTS.sm_counters.size; // already a multiple of 8
  const total: Counters = { connections: 0n, udp_messages: 0n, no_backend: 0n, redirects: 0n, redirect_bytes: 0n, affinity_hits: 0n };
  for (let o = 0; o + size <= buf.length; o += size) {
    const d = decode('sm_counters', buf, o) as unknown as Counters;
    for (const k of Object.keys(total) as (keyof Counters)[]) total[k] += d[k];
  }
  return total;
}

/** Sum a per-CPU __u64. */
export function sumU64(buf: Buffer): bigint {
  let t = 0n;
  for (let o = 0; o + 8 <= buf.length; o += 8) t += buf.readBigUInt64LE(o);
  return t;
}
