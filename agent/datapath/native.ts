// The face of the BPF addon (native/ except netio.cc, built by node-gyp into build/Release/sockmesh.node, linked to
// libbpf). The C++ layer is deliberately thin: every decision is made in TypeScript above it.
// Every function throws a KernelError on failure, with the errno name and the operation in the
// message, e.g. "attach cgroup/connect4 to /sys/fs/cgroup/x: EPERM".
// The proxy's socket loop is another addon (sockmesh_netio.node, no libbpf), with its face in agent/proxy/netio.ts.
import { resolve } from 'node:path';
import { loadAddon, projectRoot } from '../addon.js';

export { projectRoot };

/** Compiled BPF objects, built by binding.gyp from bpf/*.bpf.c. */
export function bpfObjectPath(name: string): string {
  return resolve(projectRoot(), 'build', 'bpf', `${name}.bpf.o`);
}

export interface KernelError extends Error {
  /** errno name, e.g. 'EPERM' */
  code: string;
  /** positive errno number */
  errno: number;
  /** what was being done, e.g. 'attach cgroup/connect4 to /sys/fs/cgroup/x' */
  op: string;
}

export interface MapInfo {
  id: number;
  name: string;
  type: number; // BPF_MAP_TYPE_*
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

export interface ProgInfo {
  id: number;
  name: string;
  type: number;
}

export interface LinkInfo {
  id: number;
  progId: number;
  type: number; // BPF_LINK_TYPE_*
  attachType: number; // BPF_CGROUP_* for cgroup links
  cgroupId: number; // for cgroup links, else 0
}

export interface BpfObject {
  /** Program names (the C function names) in this object. */
  programs(): string[];
  /** Map names in this object. */
  maps(): string[];
  /** fd of a loaded program (owned by the object; do not close). */
  progFd(name: string): number;
  /** fd of a loaded map (owned by the object; do not close). */
  mapFd(name: string): number;
  /** Section name of a program, e.g. 'cgroup/connect4'. */
  progSection(name: string): string;
  /** Unload: closes program and map fds (pins and links stay). */
  close(): void;
}

export interface RingBufferSubscription {
  close(): void;
}

/** A map opened for one hot operation (see native/maps.cc): its own fd, sizes checked without a syscall. */
export interface MapHandle {
  /** BPF_MAP_LOOKUP_AND_DELETE_ELEM into `value` (exactly the map's value size): true, or false when absent. */
  lookupAndDelete(key: Buffer, value: Buffer): boolean;
  close(): void;
  /** true once the kernel refused lookup-and-delete and the handle uses lookup + delete */
  readonly fallback: boolean;
}

export interface Probes {
  /** BPF_PROG_TYPE_* name (e.g. 'cgroup_sock_addr') -> supported */
  progTypes: Record<string, boolean>;
  /** BPF_MAP_TYPE_* name (e.g. 'sockhash', 'ringbuf', 'hash_of_maps', 'lru_hash') -> supported */
  mapTypes: Record<string, boolean>;
  /** helper name -> supported for the program type it is probed with */
  helpers: Record<string, boolean>;
}

export interface StructLayout {
  size: number;
  /** field name -> byte offset */
  offsets: Record<string, number>;
}

export interface Native {
  /**
   * Open and load an ELF object. Maps declared with LIBBPF_PIN_BY_NAME are pinned under
   * pinRoot, and existing pins there are reused (so a restarted agent keeps its state).
   */
  loadObject(path: string, pinRoot: string): BpfObject;

  /** Attach a cgroup program (by its fd) to the cgroup dir with BPF_LINK_CREATE; pin the link at linkPin. Returns the link fd. */
  attachCgroup(progFd: number, attachType: string, cgroupPath: string, linkPin: string): number;
  /** Replace the program behind a pinned link atomically (bpf_link_update). */
  updateLink(linkPin: string, progFd: number): void;
  /** Detach a pinned link (bpf_link_detach) and remove its pin. No-op (returns false) if absent. */
  detachLink(linkPin: string): boolean;
  /** Info about a pinned link. */
  linkInfo(linkPin: string): LinkInfo;

  /** Attach an sk_msg program to a SOCKHASH (BPF_SK_MSG_VERDICT); replaces a previous one. */
  attachSkMsg(progFd: number, mapFd: number): void;
  /** Detach an sk_msg program from a SOCKHASH. */
  detachSkMsg(progFd: number, mapFd: number): void;

  /** Open a pinned object (map, prog or link) and return a new fd (caller closes). */
  objGet(path: string): number;
  /** Pin an fd at path. */
  objPin(fd: number, path: string): void;
  close(fd: number): void;

  mapInfo(fd: number): MapInfo;
  progInfo(fd: number): ProgInfo;
  /** Open a map by id (e.g. an inner map id read from a map-of-maps); caller closes. */
  mapFdById(id: number): number;
  /** Create a map; innerMapFd only for map-of-maps. Returns an fd (caller closes). */
  mapCreate(type: number, name: string, keySize: number, valueSize: number, maxEntries: number, flags: number, innerMapFd?: number): number;

  /** Value buffer, or null when the key is absent (ENOENT). For per-CPU maps the value is valueSize*nCPU (8-byte aligned per CPU). */
  mapLookup(fd: number, key: Buffer): Buffer | null;
  /** flags: 0 BPF_ANY, 1 BPF_NOEXIST, 2 BPF_EXIST */
  mapUpdate(fd: number, key: Buffer, value: Buffer, flags?: number): void;
  /** false when the key was absent */
  mapDelete(fd: number, key: Buffer): boolean;
  /** Update many entries: keys and values are concatenated buffers of count entries each. Uses BPF_MAP_UPDATE_BATCH where the map supports it, else a loop. */
  mapUpdateBatch(fd: number, keys: Buffer, values: Buffer, count: number): void;
  /** A handle on the map behind fd (dup()ed: the handle owns its own fd; close it). Not for per-CPU maps. */
  MapHandle: new (fd: number) => MapHandle;
  /** Every key and value (values per-CPU sized for per-CPU maps), read with get_next_key + lookup in C++. */
  mapDump(fd: number): { keys: Buffer[]; values: Buffer[] };
  /** Only the keys. */
  mapKeys(fd: number): Buffer[];

  /** Subscribe to a BPF_MAP_TYPE_RINGBUF map; callback runs on the event loop thread, never blocking it. */
  ringbufSubscribe(mapFd: number, callback: (record: Buffer) => void): RingBufferSubscription;

  /** Kernel feature probes (libbpf_probe_*). */
  probe(): Probes;
  /** Number of possible CPUs (libbpf_num_possible_cpus), the per-CPU value multiplier. */
  numPossibleCpus(): number;

  /** Sizes and offsets of every struct in bpf/include/sockmesh_abi.h, computed by the compiler. */
  abiLayout(): Record<string, StructLayout>;
  /** Constants from the ABI header (SM_ABI_VERSION, map limits, enum values). */
  abiConstants(): Record<string, number>;

  /** SO_COOKIE of a socket fd. */
  socketCookie(fd: number): bigint;
  /**
   * SO_NETNS_COOKIE of a socket fd (kernel 5.14+); without one, the netns cookie of the current thread's netns; with a
   * namespace path (/proc/<pid>/ns/net, /run/netns/<name>), that namespace's (read on a short-lived thread in it).
   */
  netnsCookie(fdOrNetns?: number | string): bigint;
  /**
   * A listening TCP socket on host:port made in the cgroup at cgroupDir (a task cloned into it makes the socket), for
   * net.Server.listen({ fd }): its fd. Throws "listen host:port (bind): EADDRINUSE" and the like.
   */
  listenInCgroup(cgroupDir: string, host: string, port: number, backlog: number): number;

  /**
   * Destroy UDP sockets (sock_diag SOCK_DESTROY) whose destination is addr:port (addr as text, v4 or v6), in the
   * caller's network namespace or in `netns` (a /proc/<pid>/ns/net path: the netlink socket is made there by a
   * short-lived thread); with `keep`, only those whose socket cookie it returns true for. Returns how many were destroyed.
   */
  destroyUdpSockets(addr: string, port: number, netns?: string, keep?: (cookie: bigint) => boolean): number;
}

let cached: Native | undefined;

/** Load the addon once. Throws a clear error when it was not built. */
export function native(): Native {
  cached ??= loadAddon<Native>('sockmesh', 'clang, libbpf-dev, libelf-dev');
  return cached;
}
