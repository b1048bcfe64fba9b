// The BPF maps as the datapath's TypeScript sees them (Maps over a Native), in memory, byte for byte: for unit tests
// of what is written where (datapath-authz, datapath-tunnel). Each write is traced as '<map> update|delete|batch N'.
import { Maps, MAP_NAMES, type MapName } from '../../agent/datapath/datapath.js';
import type { Native } from '../../agent/datapath/native.js';

export function fakeMaps(): { maps: Maps; native: Native; data: (m: MapName) => Map<string, Buffer>; trace: string[] } {
  const fds = Object.fromEntries(MAP_NAMES.map((m, i) => [m, 100 + i])) as Record<MapName, number>;
  const data = new Map<number, Map<string, Buffer>>(MAP_NAMES.map((_, i) => [100 + i, new Map()]));
  const trace: string[] = [];
  const name = (fd: number) => MAP_NAMES[fd - 100]!;
  const native = {
    mapUpdate: (fd: number, k: Buffer, v: Buffer) => { trace.push(`${name(fd)} update`); data.get(fd)!.set(k.toString('hex'), Buffer.from(v)); },
    mapUpdateBatch: (fd: number, keys: Buffer, values: Buffer, count: number) => {
      const m = data.get(fd)!;
      const ks = keys.length / count, vs = values.length / count;
      for (let i = 0; i < count; i++) m.set(keys.subarray(i * ks, (i + 1) * ks).toString('hex'), Buffer.from(values.subarray(i * vs, (i + 1) * vs)));
      trace.push(`${name(fd)} batch ${count}`);
      return count;
    },
    mapDelete: (fd: number, k: Buffer) => { trace.push(`${name(fd)} delete`); return data.get(fd)!.delete(k.toString('hex')); },
    mapLookup: (fd: number, k: Buffer) => data.get(fd)!.get(k.toString('hex')) ?? null,
    mapKeys: (fd: number) => [...data.get(fd)!.keys()].map((k) => Buffer.from(k, 'hex')),
    mapDump: (fd: number) => {
      const m = data.get(fd)!;
      return { keys: [...m.keys()].map((k) => Buffer.from(k, 'hex')), values: [...m.values()] };
    },
  } as unknown as Native;
  return { maps: new Maps(fds, native), native, data: (m: MapName) => data.get(fds[m])!, trace };
}
