// The executor of a kernel plan (plan.ts): each operation as the map syscalls it stands for, in the plan's order.
// The write operations are one batch each; deletions are one syscall per entry.
import { STRUCTS, encode, serviceKey, tableKey, u32, type Decoded } from './abi.js';
import type { Maps } from './datapath.js';
import type { Native } from './native.js';
import { B, backendAt, type Op } from './plan.js';

export interface ExecHooks {
  /** Destroy the connected UDP sockets of a removed backend; returns how many. */
  destroyUdp?: (addr: string, port: number) => number;
}

/** Perform `ops` against the maps. Throws on the first kernel error (later operations are not done). */
export function execute(ops: readonly Op[], maps: Maps, n: Native, hooks: ExecHooks): { udpSocketsDestroyed: number } {
  let udpSocketsDestroyed = 0;
  for (const o of ops) {
    switch (o.op) {
      case 'writeBackends': {
        const size = STRUCTS.sm_backend.size;
        const keys = Buffer.alloc(4 * o.count);
        const values = Buffer.alloc(size * o.count);
        const v = { addr: '', port: 0, family: 0, flags: 0, service_id: 0, weight: 0 };
        let i = 0;
        for (const g of o.groups) {
          for (const k of g.at) {
            backendAt(g.serviceId, g.addrs, g.nums, k, v);
            keys.writeUInt32LE(g.nums[B * k]!, 4 * i);
            encode('sm_backend', v as unknown as Decoded, values, size * i);
            i++;
          }
        }
        n.mapUpdateBatch(maps.fd('sm_backends'), keys, values, o.count);
        break;
      }
      case 'writeTables': {
        const keys = Buffer.alloc(8 * o.count);
        const values = Buffer.alloc(4 * o.count);
        let i = 0;
        for (const { tableId, table } of o.tables) {
          for (let j = 0; j < table.length; j++, i++) {
            tableKey(tableId, j, keys, 8 * i);
            values.writeUInt32LE(table[j]!, 4 * i);
          }
        }
        n.mapUpdateBatch(maps.fd('sm_tables'), keys, values, o.count);
        break;
      }
      case 'writeFrontends': {
        const ks = STRUCTS.sm_service_key.size, vs = STRUCTS.sm_service.size;
        const keys = Buffer.alloc(ks * o.entries.length);
        const values = Buffer.alloc(vs * o.entries.length);
        o.entries.forEach((e, i) => {
          encode('sm_service_key', e.key as unknown as Decoded, keys, ks * i);
          encode('sm_service', e.value as unknown as Decoded, values, vs * i);
        });
        n.mapUpdateBatch(maps.fd('sm_services'), keys, values, o.entries.length);
        break;
      }
      case 'retireTables':
        // Nothing to do in the kernel now: the tables are in the shadow's graves, deleted by a later reap.
        break;
      case 'deleteTables': {
        const fd = maps.fd('sm_tables');
        for (const t of o.tables) for (let i = 0; i < t.size; i++) n.mapDelete(fd, tableKey(t.tableId, i));
        break;
      }
      case 'deleteFrontends': {
        const fd = maps.fd('sm_services');
        for (const k of o.keys) n.mapDelete(fd, serviceKey(k));
        break;
      }
      case 'deleteServiceStats': {
        const fd = maps.fd('sm_svc_stats');
        for (const id of o.serviceIds) n.mapDelete(fd, u32(id));
        break;
      }
      case 'deleteBackends': {
        const fd = maps.fd('sm_backends'), stats = maps.fd('sm_backend_stats');
        for (const id of o.ids) {
          const key = u32(id);
          n.mapDelete(fd, key);
          n.mapDelete(stats, key);
        }
        break;
      }
      case 'destroyUdp':
        if (hooks.destroyUdp) for (const e of o.endpoints) udpSocketsDestroyed += hooks.destroyUdp(e.addr, e.port);
        break;
    }
  }
  return { udpSocketsDestroyed };
}
