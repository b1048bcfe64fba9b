// mTLS strict mode without a kernel (issue 13): which local pod address:port entries the model asks for
// (model/strict.ts), and how datapath/strict.ts writes them into sm_strict: only what changed, a port's own entry
// before its address's "every port" entry and deleted after it, counters of gone pods pruned, bad sizes refused. The
// kernel side (drops, IPv4 and IPv6, the tunnel) is test/kernel/strict.test.ts.
import t from 'tap';
import { parseConfig } from '../../agent/model/config.js';
import { strictEntries } from '../../agent/model/strict.js';
import { StrictTables, readStrict } from '../../agent/datapath/strict.js';
import { MAP_NAMES, Maps, type MapName } from '../../agent/datapath/datapath.js';
import { MAX_STRICT, addrToBytes, decode, encode } from '../../agent/datapath/abi.js';
import type { Native } from '../../agent/datapath/native.js';

const config = (mesh: string, services: string, workloads = ''): string => `
${workloads}
mtls:
  mode: ${mesh}
  namespaces: {batch: strict}
services:
${services}
`;
const WORKLOADS = `workloads:
  - {name: web-b, cgroups: [/mesh/web], identity: "spiffe://cluster.local/ns/shop/sa/web", addresses: [198.18.2.2, "2001:DB8:2::2"]}
  - {name: job, cgroups: [/mesh/job], identity: "spiffe://cluster.local/ns/batch/sa/default", addresses: [198.18.2.3]}`;
const WEB = `  - {name: web, vips: [198.19.254.1], ports: [{port: 80, targetPort: 8080}], backends: [{address: 198.18.2.2}, {address: 198.18.1.9}]}`;
const DB = (mode: string): string => `  - {name: db, mtls: ${mode}, vips: [198.19.254.2], ports: [{port: 5432}], backends: [{address: 198.18.2.2}]}`;

t.test('strictEntries: service over namespace over mesh, per local pod address and port', async (t) => {
  const local = ['198.18.2.2', '2001:db8:2::2', '198.18.2.3', '198.18.2.4'];
  t.same(strictEntries(parseConfig(config('permissive', WEB), 'm.yaml'), local), [], 'nothing strict anywhere: no entry (the namespace batch has no pod here)');
  t.same(strictEntries(parseConfig(config('permissive', [WEB, DB('strict')].join('\n'), WORKLOADS), 'm.yaml'), local), [
    { address: '198.18.2.2', port: 5432, mode: 'strict' },
    { address: '198.18.2.3', port: 0, mode: 'strict' },
    { address: '2001:db8:2::2', port: 5432, mode: 'strict' },
  ], "db's port is strict on both addresses of its pod (IPv4 and IPv6); the batch namespace's pod on every port");
  t.same(strictEntries(parseConfig(config('strict', [WEB, DB('permissive')].join('\n'), WORKLOADS), 'm.yaml'), local), [
    { address: '198.18.2.2', port: 0, mode: 'strict' },
    { address: '198.18.2.2', port: 5432, mode: 'permissive' },
    { address: '198.18.2.3', port: 0, mode: 'strict' },
    { address: '198.18.2.4', port: 0, mode: 'strict' },
    { address: '2001:db8:2::2', port: 0, mode: 'strict' },
    { address: '2001:db8:2::2', port: 5432, mode: 'permissive' },
  ], 'a strict mesh: every local pod (one without a workload too), and the port a permissive service opens again');
  t.same(strictEntries(parseConfig(config('strict', DB('off'), WORKLOADS), 'm.yaml'), ['198.18.2.2']),
    [{ address: '198.18.2.2', port: 0, mode: 'strict' }, { address: '198.18.2.2', port: 5432, mode: 'off' }], 'off opens a port as permissive does');
  t.same(strictEntries(parseConfig(config('permissive', DB('strict')), 'm.yaml'), ['198.18.2.2', '198.18.1.9']),
    [{ address: '198.18.2.2', port: 5432, mode: 'strict' }], 'a pod without a workload: its strict service\'s port; another pod of the model is not local');
  t.same(strictEntries(parseConfig(config('permissive', DB('strict')), 'm.yaml'), []), [], 'no local pod: nothing');
});

/** sm_strict and sm_strict_stats in memory, every change traced. */
class FakeMaps {
  readonly fds = Object.fromEntries(MAP_NAMES.map((m, i) => [m, 100 + i])) as Record<MapName, number>;
  readonly data = new Map<number, Map<string, Buffer>>(MAP_NAMES.map((_, i) => [100 + i, new Map()]));
  readonly trace: string[] = [];
  private map(fd: number): Map<string, Buffer> { return this.data.get(fd)!; }
  private show(key: Buffer): string {
    const k = decode('sm_strict_key', key);
    return `${String(k.addr)}:${Number(k.port)}`;
  }
  readonly native = {
    mapUpdate: (fd: number, key: Buffer, value: Buffer): void => {
      this.trace.push(`update ${this.show(key)} ${value[0]}`);
      this.map(fd).set(key.toString('hex'), Buffer.from(value));
    },
    mapDelete: (fd: number, key: Buffer): boolean => {
      this.trace.push(`delete ${this.show(key)}`);
      return this.map(fd).delete(key.toString('hex'));
    },
    mapKeys: (fd: number): Buffer[] => [...this.map(fd).keys()].map((k) => Buffer.from(k, 'hex')),
    mapDump: (fd: number) => {
      const m = this.map(fd);
      return { keys: [...m.keys()].map((k) => Buffer.from(k, 'hex')), values: [...m.values()] };
    },
  } as unknown as Native;
  get maps(): Maps { return new Maps(this.fds, this.native); }
}

t.test('StrictTables: only changes, ports before their address on the way in and after it on the way out', async (t) => {
  const f = new FakeMaps();
  const tables = new StrictTables(f.maps, f.native);
  const local = new Set(['198.18.2.2', '198.18.2.3']);
  const strictMesh = [{ address: '198.18.2.2', port: 0, mode: 'strict' as const }, { address: '198.18.2.2', port: 5432, mode: 'permissive' as const }];
  t.same(tables.sync(strictMesh, local), { entries: 2, written: 2, deleted: 0, statsDeleted: 0 });
  t.same(f.trace, ['update 198.18.2.2:5432 1', 'update 198.18.2.2:0 2'],
    'the port a permissive service opens is written before its address closes: no moment closes it');
  f.trace.length = 0;
  t.same(tables.sync(strictMesh, local), { entries: 2, written: 0, deleted: 0, statsDeleted: 0 }, 'the same again: no syscall');
  t.same(f.trace, []);
  t.same(tables.sync([], local).deleted, 2);
  t.same(f.trace, ['delete 198.18.2.2:0', 'delete 198.18.2.2:5432'], 'the address opens before its port entry goes');
  f.trace.length = 0;

  // a restarted agent reads the entries a previous one left, and removes only what the model no longer asks for
  tables.sync(strictMesh, local);
  const again = new StrictTables(f.maps, f.native);
  f.trace.length = 0;
  t.same(again.sync([strictMesh[0]!], local), { entries: 1, written: 0, deleted: 1, statsDeleted: 0 });
  t.same(f.trace, ['delete 198.18.2.2:5432']);

  // counters: kept while the pod is local, dropped when it is gone; readStrict sums the CPUs
  const stats = f.data.get(f.fds.sm_strict_stats)!;
  const counters = (cpus: [number, number][]): Buffer => Buffer.concat(cpus.map(([d, l]) => encode('sm_strict_counters', { dropped: BigInt(d), local: BigInt(l), last_event_ns: 0n })));
  stats.set(encode('sm_strict_key', { addr: '198.18.2.2', port: 9090 }).toString('hex'), counters([[3, 1], [2, 0]]));
  stats.set(encode('sm_strict_key', { addr: '198.18.7.7', port: 9090 }).toString('hex'), counters([[1, 0]]));
  t.same(readStrict(f.native, f.fds.sm_strict, f.fds.sm_strict_stats), [
    { address: '198.18.2.2', port: 0, dropped: 0, local: 0, mode: 'strict' },
    { address: '198.18.2.2', port: 9090, dropped: 5, local: 1 },
    { address: '198.18.7.7', port: 9090, dropped: 1, local: 0 },
  ], 'entries with their mode, counted destinations summed over CPUs');
  t.equal(again.sync([strictMesh[0]!], local).statsDeleted, 1, 'the counters of a pod no longer on this node are removed');
  t.same([...stats.keys()], [encode('sm_strict_key', { addr: '198.18.2.2', port: 9090 }).toString('hex')]);
  t.same(readStrict(f.native, undefined, undefined), [], 'pins without the strict maps (older ABI): nothing');
});

t.test('StrictTables: too many entries and kernel errors are refused with what and where', async (t) => {
  const f = new FakeMaps();
  const tables = new StrictTables(f.maps, f.native);
  const many = Array.from({ length: MAX_STRICT + 1 }, (_, i) => ({ address: `198.18.${i >> 8}.${i & 255}`, port: 0, mode: 'strict' as const }));
  t.throws(() => tables.sync(many, new Set()), /16385 local pod address:port entries, the kernel holds at most 16384 \(sm_strict\)/);
  t.same(f.trace, [], 'nothing written');
  (f.native as unknown as { mapUpdate: () => void }).mapUpdate = () => { throw new Error('update sm_strict: E2BIG'); };
  t.throws(() => tables.sync([{ address: '2001:db8:2::2', port: 8080, mode: 'strict' }], new Set()),
    /strict mode: writing 2001:db8:2::2 port 8080 into sm_strict: update sm_strict: E2BIG/);
  t.equal(addrToBytes('198.18.2.2').length, 16);
});
