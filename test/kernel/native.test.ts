// The native addon against the real kernel: map operations and their errors, the ABI layout,
// socket cookies, UDP socket destruction, and (with a throwaway BPF object compiled into a temp
// dir) loading, cgroup links, sk_msg attach, the ring buffer and the verifier log in errors.
// Everything it creates lives in its own cgroup (sockmesh-native-test-*) and bpffs dir, removed at teardown.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bpfObjectPath, native, projectRoot, type KernelError, type Native } from '../../agent/datapath/native.js';

const BPF_MAP_TYPE_HASH = 1;
const BPF_MAP_TYPE_ARRAY = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY = 6;
const BPF_MAP_TYPE_HASH_OF_MAPS = 13;
const BPF_MAP_TYPE_SOCKHASH = 18;
const BPF_F_INNER_MAP = 1 << 12;
const BPF_LINK_TYPE_CGROUP = 3;
const BPF_CGROUP_INET4_CONNECT = 10;

function cgroup2Mount(): string | null {
  const line = readFileSync('/proc/mounts', 'utf8').split('\n').find((l) => l.split(' ')[2] === 'cgroup2');
  return line ? line.split(' ')[1]! : null;
}

function skipReason(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'needs root (creates BPF maps and programs)';
  let n: Native;
  try { n = native(); } catch (e) { return (e as Error).message; }
  try { n.close(n.mapCreate(BPF_MAP_TYPE_HASH, 'sm_probe', 4, 4, 1, 0)); } catch (e) { return `BPF unavailable: ${(e as Error).message}`; }
  return null;
}

const skip = skipReason();
if (skip) t.comment(`native kernel tests skipped: ${skip}`);

const u32 = (v: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
const u64 = (v: number): Buffer => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
const sorted = (bufs: Buffer[]): string[] => bufs.map((b) => b.toString('hex')).sort();

type Asserts = Pick<typeof t, 'equal' | 'ok' | 'match' | 'fail'>;

function expectKernelError(t: Asserts, fn: () => unknown, op: string | RegExp, code: string): void {
  try {
    fn();
    t.fail(`expected ${code}`);
  } catch (e) {
    const err = e as KernelError;
    t.equal(err.code, code, `code ${code}`);
    t.ok(err.errno > 0, 'positive errno');
    t.match(err.message, op, 'message names the operation');
    t.match(err.message, new RegExp(`: ${code}$`, 'm'), 'message ends in the errno name');
    t.match(err.op, op, 'op property');
  }
}

t.test('native addon', { skip: skip ?? false }, async (t) => {
  const n = native();
  const fds: number[] = [];
  t.teardown(() => { for (const fd of fds) { try { n.close(fd); } catch { /* already closed */ } } });
  const own = (fd: number): number => { fds.push(fd); return fd; };

  t.test('HASH map: update, lookup, delete, batch, dump, keys', async (t) => {
    const fd = own(n.mapCreate(BPF_MAP_TYPE_HASH, 'sm_t_hash', 4, 8, 64, 0));
    const info = n.mapInfo(fd);
    t.match(info, { name: 'sm_t_hash', type: BPF_MAP_TYPE_HASH, keySize: 4, valueSize: 8, maxEntries: 64, flags: 0 });
    t.ok(info.id > 0);

    n.mapUpdate(fd, u32(1), u64(11));
    t.same(n.mapLookup(fd, u32(1)), u64(11));
    t.equal(n.mapLookup(fd, u32(2)), null, 'missing key -> null');
    expectKernelError(t, () => n.mapUpdate(fd, u32(2), u64(2), 2 /* BPF_EXIST */), /^map update \(fd \d+\)/, 'ENOENT');
    expectKernelError(t, () => n.mapUpdate(fd, u32(1), u64(2), 1 /* BPF_NOEXIST */), /^map update \(fd \d+\)/, 'EEXIST');
    expectKernelError(t, () => n.mapUpdate(fd, Buffer.alloc(3), u64(1)), /^map update \(fd \d+\).*key is 3 bytes/, 'EINVAL');
    expectKernelError(t, () => n.mapUpdate(fd, u32(1), Buffer.alloc(4)), /^map update \(fd \d+\).*value is 4 bytes/, 'EINVAL');
    expectKernelError(t, () => n.mapLookup(fd, Buffer.alloc(5)), /^map lookup \(fd \d+\)/, 'EINVAL');

    const keys = Buffer.concat([2, 3, 4, 5].map(u32));
    const values = Buffer.concat([20, 30, 40, 50].map(u64));
    n.mapUpdateBatch(fd, keys, values, 4);
    t.same(n.mapLookup(fd, u32(4)), u64(40));

    const dump = n.mapDump(fd);
    t.equal(dump.keys.length, 5);
    const byKey = new Map(dump.keys.map((k, i) => [k.readUInt32LE(), dump.values[i]!.readBigUInt64LE()]));
    t.same([...byKey.entries()].sort((a, b) => a[0] - b[0]), [[1, 11n], [2, 20n], [3, 30n], [4, 40n], [5, 50n]]);
    t.same(sorted(n.mapKeys(fd)), sorted([1, 2, 3, 4, 5].map(u32)));

    t.equal(n.mapDelete(fd, u32(3)), true);
    t.equal(n.mapDelete(fd, u32(3)), false, 'second delete: absent');
    t.equal(n.mapLookup(fd, u32(3)), null);
    t.equal(n.mapKeys(fd).length, 4);

    // 70 entries into a 64-entry map: the batch fails naming the entry that did not fit.
    const many = Array.from({ length: 70 }, (_, i) => 100 + i);
    expectKernelError(t, () => n.mapUpdateBatch(fd, Buffer.concat(many.map(u32)), Buffer.concat(many.map(u64)), 70),
      /^map update batch \(fd \d+\) at index 60 of 70/, 'E2BIG');
    expectKernelError(t, () => n.mapUpdateBatch(fd, Buffer.alloc(8), Buffer.alloc(8), 2), /keys is 8 bytes, map expects 8|values is 8 bytes/, 'EINVAL');
  });

  t.test('batch update falls back to single updates where batching is unsupported', async (t) => {
    // Map-of-maps values are fds on update; batch support there depends on the kernel, the result may not.
    const inner = own(n.mapCreate(BPF_MAP_TYPE_ARRAY, 'sm_t_in0', 4, 4, 4, BPF_F_INNER_MAP));
    const outer = own(n.mapCreate(BPF_MAP_TYPE_HASH_OF_MAPS, 'sm_t_outer', 4, 4, 8, 0, inner));
    const a = own(n.mapCreate(BPF_MAP_TYPE_ARRAY, 'sm_t_in1', 4, 4, 3, BPF_F_INNER_MAP));
    const b = own(n.mapCreate(BPF_MAP_TYPE_ARRAY, 'sm_t_in2', 4, 4, 100, BPF_F_INNER_MAP));
    n.mapUpdateBatch(outer, Buffer.concat([u32(1), u32(2)]), Buffer.concat([u32(a), u32(b)]), 2);
    t.equal(n.mapLookup(outer, u32(1))!.readUInt32LE(), n.mapInfo(a).id, 'lookup of a map-of-maps gives the inner map id');
    t.equal(n.mapLookup(outer, u32(2))!.readUInt32LE(), n.mapInfo(b).id);
    const byId = own(n.mapFdById(n.mapInfo(b).id));
    t.equal(n.mapInfo(byId).maxEntries, 100, 'inner maps of any size (BPF_F_INNER_MAP)');
    t.equal(n.mapInfo(b).flags & BPF_F_INNER_MAP, BPF_F_INNER_MAP);
  });

  t.test('per-CPU values are one 8-byte aligned slot per possible CPU', async (t) => {
    const ncpu = n.numPossibleCpus();
    t.ok(ncpu >= 1);
    const fd = own(n.mapCreate(BPF_MAP_TYPE_PERCPU_ARRAY, 'sm_t_pcpu', 4, 12, 2, 0));
    t.equal(n.mapLookup(fd, u32(0))!.length, 16 * ncpu);
    const v = Buffer.alloc(16 * ncpu);
    for (let c = 0; c < ncpu; c++) v.writeUInt32LE(c + 7, c * 16);
    n.mapUpdate(fd, u32(1), v);
    t.same(n.mapDump(fd).values[1], v);
  });

  t.test('errors of fd and pin operations', async (t) => {
    expectKernelError(t, () => n.objGet('/sys/fs/bpf/sockmesh-native-test-does-not-exist'), /^open pin \/sys\/fs\/bpf\//, 'ENOENT');
    t.equal(n.detachLink('/sys/fs/bpf/sockmesh-native-test-does-not-exist'), false, 'detaching an absent link is a no-op');
    // BPF_OBJ_GET_INFO_BY_FD says EBADFD (not EBADF) for a closed fd: the code is the kernel's own.
    expectKernelError(t, () => n.mapInfo(1_000_000), /^map info \(fd 1000000\)/, 'EBADFD');
    expectKernelError(t, () => n.mapCreate(BPF_MAP_TYPE_HASH, 'sm_t_bad', 0, 4, 1, 0), /^create map 'sm_t_bad'/, 'EINVAL');
  });

  t.test('MapHandle: lookup-and-delete in one call, into a caller\'s buffer, on its own fd', async (t) => {
    const BPF_MAP_TYPE_LRU_HASH = 9;
    for (const type of [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH]) {
      const fd = own(n.mapCreate(type, 'sm_t_lad', 4, 8, 16, 0));
      const v = Buffer.alloc(8);
      v.writeBigUInt64LE(0x1122334455667788n);
      n.mapUpdate(fd, u32(7), v);
      const h = new n.MapHandle(fd);
      n.close(fd); // the handle holds its own fd
      fds.splice(fds.indexOf(fd), 1);
      const out = Buffer.alloc(8);
      t.equal(h.lookupAndDelete(u32(7), out), true, `type ${type}: present`);
      t.equal(out.readBigUInt64LE(0), 0x1122334455667788n, 'value written into the buffer');
      t.equal(h.lookupAndDelete(u32(7), out), false, 'taken: absent the second time');
      t.equal(h.fallback, false, 'this kernel has BPF_MAP_LOOKUP_AND_DELETE_ELEM for the type');
      expectKernelError(t, () => h.lookupAndDelete(Buffer.alloc(2), out), /key is 2 bytes, map expects 4/, 'EINVAL');
      expectKernelError(t, () => h.lookupAndDelete(u32(7), Buffer.alloc(4)), /value is 4 bytes, map expects 8/, 'EINVAL');
      h.close();
      expectKernelError(t, () => h.lookupAndDelete(u32(7), out), /handle closed/, 'EBADF');
    }
    const pcpu = own(n.mapCreate(BPF_MAP_TYPE_PERCPU_ARRAY, 'sm_t_lad_pcpu', 4, 8, 1, 0));
    expectKernelError(t, () => new n.MapHandle(pcpu), /per-CPU maps are not supported/, 'EINVAL');
  });

  t.test('probe', async (t) => {
    const p = n.probe();
    for (const k of ['cgroup_sock_addr', 'sock_ops', 'sk_msg']) t.equal(p.progTypes[k], true, `prog type ${k}`);
    for (const k of ['hash', 'lru_hash', 'percpu_hash', 'percpu_array', 'sockhash', 'hash_of_maps', 'ringbuf']) t.equal(p.mapTypes[k], true, `map type ${k}`);
    for (const k of ['cgroup_sock_addr', 'sock_ops', 'sk_msg']) t.equal(p.helpers[`${k}:get_netns_cookie`], true, `${k}:get_netns_cookie`);
    t.equal(p.helpers['sk_msg:msg_redirect_hash'], true);
    t.equal(p.helpers['sock_ops:sock_hash_update'], true);
    t.equal(p.helpers['cgroup_sock_addr:get_socket_cookie'], true);
    t.equal(p.helpers['cgroup_sock_addr:get_current_cgroup_id'], true, 'the L7 redirect\'s proxy-cgroup rule');
    // The probe must be able to say no (libbpf 1.1's own helper probe says yes to everything on 6.14+).
    t.equal(p.helpers['cgroup_sock_addr:msg_redirect_hash'], false, 'msg_redirect_hash is not for cgroup programs');
  });

  t.test('ABI layout and constants from the C compiler', async (t) => {
    const layout = n.abiLayout();
    const header = readFileSync(join(projectRoot(), 'bpf', 'include', 'sockmesh_abi.h'), 'utf8').replace(/\/\*[\s\S]*?\*\//g, '');
    const structs = [...header.matchAll(/struct\s+(\w+)\s*\{/g)].map((m) => m[1]!);
    t.same(Object.keys(layout).sort(), structs.sort(), 'every struct of the header');
    t.equal(layout.sm_sock_key!.size, 48);
    t.equal(layout.sm_flow_event!.size, 88);
    t.equal(layout.sm_orig_dst!.size, 56, 'v9: the tunnel hand-over\'s pod, port and backend id after the L7 fields');
    t.equal(layout.sm_service_key!.size, 20);
    t.same(layout.sm_service_key!.offsets, { addr: 0, port: 16, proto: 18, pad: 19 });
    for (const [name, l] of Object.entries(layout)) {
      const offs = Object.values(l.offsets);
      t.ok(offs.length > 0 && offs.every((o) => o >= 0 && o < l.size), `${name}: offsets inside the struct`);
      t.equal(l.size % 4, 0, `${name}: size multiple of 4`);
    }
    const c = n.abiConstants();
    t.equal(c.SM_ABI_VERSION, 9);
    t.equal(c.SM_MAX_TABLE_ENTRIES, 1 << 22);
    t.equal(c.SM_EVENTS_BYTES, 256 * 1024);
    t.equal(c.SM_PROTO_UDP, 17);
    t.equal(c.SM_SOCK_F_TCP_ONLY, 2);
    t.equal(c.SM_G__MAX, Object.keys(c).filter((k) => k.startsWith('SM_G_') && k !== 'SM_G__MAX').length);
  });

  t.test('socket and netns cookies', async (t) => {
    const server: Server = createServer((s) => s.on('error', () => {}));
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
    t.teardown(() => new Promise<void>((res) => server.close(() => res())));
    const port = (server.address() as { port: number }).port;
    const open = (): Promise<Socket> => new Promise((res, rej) => { const s = connect(port, '127.0.0.1', () => res(s)); s.on('error', rej); });
    const [a, b] = [await open(), await open()];
    t.teardown(() => { a.destroy(); b.destroy(); });
    const fd = (s: Socket): number => (s as unknown as { _handle: { fd: number } })._handle.fd;
    const ca = n.socketCookie(fd(a));
    const cb = n.socketCookie(fd(b));
    t.type(ca, 'bigint');
    t.ok(ca > 0n && cb > 0n, 'socket cookies are non-zero');
    t.not(ca, cb, 'socket cookies differ');
    t.equal(n.socketCookie(fd(a)), ca, 'stable');
    const na = n.netnsCookie(fd(a));
    t.ok(na > 0n, 'netns cookie non-zero');
    t.equal(n.netnsCookie(fd(b)), na, 'same namespace, same netns cookie');
    t.equal(n.netnsCookie(-1), na, 'fd -1: the current namespace');
    expectKernelError(t, () => n.socketCookie(1_000_000), /^socket cookie \(fd 1000000\)/, 'EBADF');
  });

  t.test('destroyUdpSockets destroys connected UDP sockets to addr:port', async (t) => {
    const server = createSocket('udp4');
    await new Promise<void>((res) => server.bind(0, '127.0.0.1', res));
    t.teardown(() => server.close());
    const port = server.address().port;
    const client = createSocket('udp4');
    const other = createSocket('udp4');
    t.teardown(() => { for (const s of [client, other]) { try { s.close(); } catch { /* closed */ } } });
    await new Promise<void>((res) => client.connect(port, '127.0.0.1', res));
    await new Promise<void>((res) => other.bind(0, '127.0.0.1', res)); // unconnected: never matches
    const send = (): Promise<Error | null> => new Promise((res) => client.send('x', (e) => res(e ?? null)));
    t.equal(await send(), null, 'send works before');

    const errors: Error[] = [];
    client.on('error', (e) => errors.push(e));
    t.equal(n.destroyUdpSockets('127.0.0.1', port), 1, 'one socket destroyed');
    // The kernel disconnects the socket and sets its error to ECONNABORTED; Node's receive side
    // reports it as an 'error' event (a send would now fail with EDESTADDRREQ: no longer connected).
    for (let i = 0; i < 100 && errors.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    t.equal((errors[0] as NodeJS.ErrnoException | undefined)?.code, 'ECONNABORTED', 'the destroyed socket fails with ECONNABORTED');
    t.equal(((await send()) as NodeJS.ErrnoException | null)?.code, 'EDESTADDRREQ', 'and is no longer connected');
    t.equal(n.destroyUdpSockets('127.0.0.1', port), 0, 'nothing left to destroy');
    t.equal(n.destroyUdpSockets('::ffff:127.0.0.1', port + 1 > 65535 ? 1 : port + 1), 0, 'other port: none');
    expectKernelError(t, () => n.destroyUdpSockets('not-an-address', 53), /^destroy UDP sockets to not-an-address:53/, 'EINVAL');
  });

  const cgRoot = cgroup2Mount();
  const attachSkip = spawnSync('clang', ['--version']).status !== 0 ? 'clang not found (compiles a throwaway BPF object)'
    : !cgRoot ? 'no cgroup v2 mounted' : false;
  if (attachSkip) t.comment(`attach tests skipped: ${attachSkip}`);
  t.test('loadObject, cgroup links, sk_msg and the ring buffer (throwaway object)', { skip: attachSkip }, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'sockmesh-native-test-'));
    const pinRoot = `/sys/fs/bpf/sockmesh-native-test-${process.pid}`;
    const cgroup = join(cgRoot!, `sockmesh-native-test-${process.pid}`);
    mkdirSync(pinRoot);
    mkdirSync(cgroup);
    t.teardown(() => {
      for (const f of existsSync(pinRoot) ? readdirSync(pinRoot) : []) if (f.startsWith('link_')) n.detachLink(join(pinRoot, f));
      rmSync(pinRoot, { recursive: true, force: true });
      for (let i = 0; i < 50 && existsSync(cgroup); i++) { try { rmdirSync(cgroup); } catch { spawnSync('sleep', ['0.05']); } }
      rmSync(dir, { recursive: true, force: true });
    });

    const src = join(dir, 'probe.bpf.c');
    writeFileSync(src, `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } t_events SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4); __type(key, __u32); __type(value, __u32);
         __uint(pinning, LIBBPF_PIN_BY_NAME); } t_pinned SEC(".maps");
SEC("cgroup/connect4") int t_connect4(struct bpf_sock_addr *ctx) {
  __u32 port = ctx->user_port;
  bpf_ringbuf_output(&t_events, &port, sizeof(port), 0);
  return 1;
}
SEC("cgroup/connect4") int t_connect4_quiet(struct bpf_sock_addr *ctx) { return 1; }
SEC("sk_msg") int t_msg(struct sk_msg_md *msg) { return SK_PASS; }
char LICENSE[] SEC("license") = "GPL";
`);
    const bad = join(dir, 'bad.bpf.c');
    writeFileSync(bad, `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("cgroup/connect4") int t_bad(struct bpf_sock_addr *ctx) { return *(volatile int *)(long)ctx->user_ip4 ? 1 : 1; }
char LICENSE[] SEC("license") = "GPL";
`);
    const triplet = spawnSync('gcc', ['-dumpmachine'], { encoding: 'utf8' }).stdout.trim() || 'x86_64-linux-gnu';
    for (const f of [src, bad]) {
      const r = spawnSync('clang', ['-O2', '-g', '-target', 'bpf', '-I', `/usr/include/${triplet}`, '-c', f, '-o', f.replace(/\.c$/, '.o')],
        { encoding: 'utf8', timeout: 60000 });
      t.equal(r.status, 0, `compile ${f}: ${r.stderr}`);
    }

    // A verifier rejection carries the verifier's log in the message.
    try {
      n.loadObject(bad.replace(/\.c$/, '.o'), pinRoot).close();
      t.fail('bad program loaded');
    } catch (e) {
      const err = e as KernelError;
      t.match(err.message, /^load BPF object .*bad\.bpf\.o/);
      t.equal(err.code, 'EACCES');
      t.match(err.message, /invalid mem access|R\d .*invalid/, 'verifier log in the message');
    }

    const obj = n.loadObject(src.replace(/\.c$/, '.o'), pinRoot);
    t.teardown(() => obj.close());
    t.same(obj.programs().sort(), ['t_connect4', 't_connect4_quiet', 't_msg']);
    t.ok(obj.maps().includes('t_events') && obj.maps().includes('t_pinned'));
    t.equal(obj.progSection('t_connect4'), 'cgroup/connect4');
    t.equal(obj.progSection('t_msg'), 'sk_msg');
    expectKernelError(t, () => obj.progFd('nope'), /progFd: no program 'nope'/, 'ENOENT');

    // Pinned maps survive the object and are reused by the next load (an agent restart).
    t.ok(existsSync(join(pinRoot, 't_pinned')), 'map pinned by name under pinRoot');
    n.mapUpdate(obj.mapFd('t_pinned'), u32(1), u32(42));
    const again = n.loadObject(src.replace(/\.c$/, '.o'), pinRoot);
    t.same(n.mapLookup(again.mapFd('t_pinned'), u32(1)), u32(42), 'reloaded object reuses the pinned map');
    again.close();
    const pinnedFd = own(n.objGet(join(pinRoot, 't_pinned')));
    t.equal(n.mapInfo(pinnedFd).id, n.mapInfo(obj.mapFd('t_pinned')).id);

    const prog = obj.progFd('t_connect4');
    t.equal(n.progInfo(prog).name, 't_connect4');

    // sk_msg on a SOCKHASH.
    const sockhash = own(n.mapCreate(BPF_MAP_TYPE_SOCKHASH, 'sm_t_sockhash', 4, 8, 16, 0));
    n.attachSkMsg(obj.progFd('t_msg'), sockhash);
    n.detachSkMsg(obj.progFd('t_msg'), sockhash);
    expectKernelError(t, () => n.detachSkMsg(obj.progFd('t_msg'), sockhash), /^detach sk_msg/, 'ENOENT');

    // A pinned cgroup link on our own cgroup; connect() from a process inside it reports to the ring buffer.
    const linkPin = join(pinRoot, 'link_connect4');
    expectKernelError(t, () => n.attachCgroup(prog, 'cgroup/bogus', cgroup, linkPin), /^attach cgroup\/bogus to /, 'EINVAL');
    const linkFd = n.attachCgroup(prog, 'cgroup/connect4', cgroup, linkPin);
    n.close(linkFd); // the pin keeps it attached
    const li = n.linkInfo(linkPin);
    t.match(li, { type: BPF_LINK_TYPE_CGROUP, attachType: BPF_CGROUP_INET4_CONNECT, progId: n.progInfo(prog).id, cgroupId: statSync(cgroup).ino });
    expectKernelError(t, () => n.attachCgroup(prog, 'cgroup/connect4', cgroup, linkPin), /\(pin link at /, 'EEXIST');

    const server: Server = createServer((s) => s.on('error', () => {}).end());
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
    t.teardown(() => new Promise<void>((res) => server.close(() => res())));
    const port = (server.address() as { port: number }).port;
    const records: Buffer[] = [];
    const sub = n.ringbufSubscribe(obj.mapFd('t_events'), (r) => records.push(r));
    t.teardown(() => sub.close());
    const connectFromCgroup = (): Promise<number | null> => new Promise((res) => {
      // the child joins the cgroup, then connects with bash's /dev/tcp; bounded by a timeout
      const p = spawn('bash', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec 3<>/dev/tcp/127.0.0.1/${port}`], { stdio: 'ignore', timeout: 10000 });
      p.on('exit', (code) => res(code));
    });
    t.equal(await connectFromCgroup(), 0, 'connect from inside the cgroup');
    for (let i = 0; i < 200 && records.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    t.equal(records.length, 1, 'one ring buffer record, delivered on the event loop');
    t.equal(records[0]?.readUInt32LE() & 0xffff, ((port & 0xff) << 8) | (port >> 8), 'user_port in network order');

    // Replace the program behind the link: no more records.
    n.updateLink(linkPin, obj.progFd('t_connect4_quiet'));
    t.equal(n.linkInfo(linkPin).progId, n.progInfo(obj.progFd('t_connect4_quiet')).id);
    t.equal(await connectFromCgroup(), 0);
    await new Promise((r) => setTimeout(r, 100));
    t.equal(records.length, 1, 'updated link runs the new program');

    n.updateLink(linkPin, prog);
    sub.close();
    sub.close(); // idempotent
    t.equal(await connectFromCgroup(), 0);
    await new Promise((r) => setTimeout(r, 100));
    t.equal(records.length, 1, 'closed subscription delivers nothing');

    t.equal(n.detachLink(linkPin), true);
    t.notOk(existsSync(linkPin), 'pin removed');
    t.equal(n.detachLink(linkPin), false);
  });

  const objects = ['sock_lb', 'sockmap'].filter((o) => existsSync(bpfObjectPath(o)));
  const objectsSkip = objects.length === 0 ? 'build/bpf has no objects yet' : false;
  if (objectsSkip) t.comment(`project object tests skipped: ${objectsSkip}`);
  t.test("loadObject on the project's BPF objects", { skip: objectsSkip }, async (t) => {
    const pinRoot = `/sys/fs/bpf/sockmesh-native-test-${process.pid}-objs`;
    mkdirSync(pinRoot);
    t.teardown(() => rmSync(pinRoot, { recursive: true, force: true }));
    for (const name of objects) {
      const obj = n.loadObject(bpfObjectPath(name), pinRoot);
      t.ok(obj.programs().length > 0, `${name}: programs ${obj.programs().join(', ')}`);
      for (const p of obj.programs()) t.ok(obj.progFd(p) > 0 && obj.progSection(p).length > 0);
      for (const m of obj.maps()) t.ok(obj.mapFd(m) > 0);
      obj.close();
      expectKernelError(t, () => obj.programs(), /closed BPF object/, 'EBADF');
    }
    t.ok(readdirSync(pinRoot).length > 0, 'maps pinned by name');
  });
});
