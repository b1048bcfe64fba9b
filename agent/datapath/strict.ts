// mTLS strict mode in the kernel (issue 13): model/strict.ts says which local pod addresses and ports are strict, this
// writes them into sm_strict (read by bpf/strict.bpf.c on every segment to a pods' listener) and reads back what the
// program counted (sm_strict_stats) for meshctl.
//
// Writes are ordered so that no moment is stricter than both the old and the new state: a port's own entry (which
// opens a strict address again, or closes one port of an open address) is written before the address's "every port"
// entry and deleted after it. A segment dropped during a change is a SYN the client sends again a second later.
import type { StrictEntry } from '../model/strict.js';
import type { MtlsMode } from '../model/mesh.js';
import { MAX_STRICT, MTLS_MODE, STRUCTS, decode, encode } from './abi.js';
import type { Maps } from './datapath.js';
import type { Native } from './native.js';

export interface StrictSyncResult {
  entries: number;
  written: number;
  deleted: number;
  /** counters of destinations whose address is no longer a local pod's, removed */
  statsDeleted: number;
}

/** One destination as meshctl shows it: its mode entry (if any) and what the program counted for it. */
export interface StrictDestination {
  address: string;
  /** 0 = every port of the address without its own entry */
  port: number;
  /** the entry's mode; absent = only counters (the entry is gone since, or the port is covered by port 0) */
  mode?: MtlsMode;
  /** segments from other nodes dropped, segments from this node let through */
  dropped: number;
  local: number;
}

const MODE_NAME: Record<number, MtlsMode> = { [MTLS_MODE.off]: 'off', [MTLS_MODE.permissive]: 'permissive', [MTLS_MODE.strict]: 'strict' };

const keyOf = (address: string, port: number): Buffer => encode('sm_strict_key', { addr: address, port });

export class StrictTables {
  /** hex key -> mode, as last written (undefined: read the map first, a previous agent's entries) */
  private have?: Map<string, number>;

  constructor(private readonly maps: Maps, private readonly n: Native) {}

  /**
   * Make sm_strict hold exactly `entries`; drop the counters of addresses not in `local` (pods gone from this node).
   * Entries must name local addresses: the program only ever sees segments to this node's pods.
   */
  sync(entries: readonly StrictEntry[], local: ReadonlySet<string>): StrictSyncResult {
    const fd = this.maps.fd('sm_strict');
    const have = this.have ?? this.read(fd);
    const want = new Map<string, { key: Buffer; mode: number; port: number }>();
    for (const e of entries) {
      const key = keyOf(e.address, e.port);
      want.set(key.toString('hex'), { key, mode: MTLS_MODE[e.mode], port: e.port });
    }
    if (want.size > MAX_STRICT) {
      throw new Error(`strict mode: ${want.size} local pod address:port entries, the kernel holds at most ${MAX_STRICT} (sm_strict)`);
    }
    const res: StrictSyncResult = { entries: want.size, written: 0, deleted: 0, statsDeleted: 0 };
    // ports first, then addresses (port 0): see the top of the file
    const writes = [...want].filter(([k, v]) => have.get(k) !== v.mode).sort(([, a], [, b]) => (a.port === 0 ? 1 : 0) - (b.port === 0 ? 1 : 0));
    for (const [k, v] of writes) {
      try {
        this.n.mapUpdate(fd, v.key, encode('sm_strict', { mode: v.mode }));
      } catch (e) {
        const d = decode('sm_strict_key', v.key);
        throw new Error(`strict mode: writing ${String(d.addr)} port ${v.port || 'any'} into sm_strict: ${(e as Error).message}`, { cause: e });
      }
      have.set(k, v.mode);
      res.written++;
    }
    const gone = [...have.keys()].filter((k) => !want.has(k)).sort((a, b) => portOfHex(a) === 0 ? -1 : portOfHex(b) === 0 ? 1 : 0);
    for (const k of gone) {
      this.n.mapDelete(fd, Buffer.from(k, 'hex'));
      have.delete(k);
      res.deleted++;
    }
    this.have = have;
    const stats = this.maps.fd('sm_strict_stats');
    for (const k of this.n.mapKeys(stats)) {
      if (!local.has(String(decode('sm_strict_key', k).addr))) {
        this.n.mapDelete(stats, k);
        res.statsDeleted++;
      }
    }
    return res;
  }

  private read(fd: number): Map<string, number> {
    const { keys, values } = this.n.mapDump(fd);
    return new Map(keys.map((k, i) => [k.toString('hex'), values[i]!.readUInt8(0)]));
  }
}

/** struct sm_strict_key's port (network order at byte 16) from its hex. */
function portOfHex(hex: string): number {
  return parseInt(hex.slice(32, 36), 16);
}

/**
 * What the kernel holds and counted, per destination (from a running datapath or the pins): every sm_strict entry,
 * and every destination sm_strict_stats counted for, summed over CPUs. Missing maps (pins older than ABI v9) read as
 * empty.
 */
export function readStrict(n: Native, strictFd: number | undefined, statsFd: number | undefined): StrictDestination[] {
  const out = new Map<string, StrictDestination>();
  const at = (address: string, port: number): StrictDestination => {
    const id = `${address}|${port}`;
    let d = out.get(id);
    if (!d) out.set(id, (d = { address, port, dropped: 0, local: 0 }));
    return d;
  };
  if (strictFd !== undefined) {
    const { keys, values } = n.mapDump(strictFd);
    keys.forEach((k, i) => {
      const key = decode('sm_strict_key', k);
      at(String(key.addr), Number(key.port)).mode = MODE_NAME[values[i]!.readUInt8(0)] ?? 'strict';
    });
  }
  if (statsFd !== undefined) {
    const size = STRUCTS.sm_strict_counters.size;
    const { keys, values } = n.mapDump(statsFd);
    keys.forEach((k, i) => {
      const key = decode('sm_strict_key', k);
      const d = at(String(key.addr), Number(key.port));
      const v = values[i]!;
      for (let o = 0; o + size <= v.length; o += size) {
        d.dropped += Number(v.readBigUInt64LE(o));
        d.local += Number(v.readBigUInt64LE(o + 8));
      }
    });
  }
  return [...out.values()].sort((a, b) => a.address.localeCompare(b.address) || a.port - b.port);
}
