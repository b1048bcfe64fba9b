// Loading, attaching, adopting and removing the kernel programs of one agent instance.
//
// Everything lives under one bpffs directory: maps pinned by name (libbpf pin_root_path) and one pinned bpf_link per
// cgroup program under links/. A restarted agent reloads the objects, which reuse the pinned maps (state survives),
// and swaps its new programs into the existing links with bpf_link_update: no detach, no window without programs.
import { existsSync, mkdirSync, readdirSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { bpfObjectPath, native, type BpfObject, type Native } from './native.js';
import { CFG_F_SOCKMAP, encode, u32 } from './abi.js';

/** Cgroup programs and where they attach. sm_sk_msg attaches to the SOCKHASH instead. */
export const CGROUP_PROGRAMS: Record<string, string> = {
  sm_connect4: 'cgroup/connect4',
  sm_connect6: 'cgroup/connect6',
  sm_sendmsg4: 'cgroup/sendmsg4',
  sm_sendmsg6: 'cgroup/sendmsg6',
  sm_recvmsg4: 'cgroup/recvmsg4',
  sm_recvmsg6: 'cgroup/recvmsg6',
  sm_getpeername4: 'cgroup/getpeername4',
  sm_getpeername6: 'cgroup/getpeername6',
  sm_sockops: 'sockops',
};

export const OBJECTS = ['sock_lb', 'sockmap'] as const;

export const MAP_NAMES = [
  'sm_services', 'sm_backends', 'sm_tables', 'sm_affinity', 'sm_revnat', 'sm_sockets', 'sm_sock_meta',
  'sm_local_addrs', 'sm_svc_stats', 'sm_backend_stats', 'sm_global', 'sm_config', 'sm_events',
] as const;
export type MapName = (typeof MAP_NAMES)[number];

export interface DatapathOptions {
  bpffs: string;
  cgroup: string;
  sockmap: boolean;
  /** one flow event in N connections (0 = none) */
  eventSample: number;
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

  constructor(readonly opts: DatapathOptions) {}

  get linkDir(): string { return join(this.opts.bpffs, 'links'); }

  /** Load both objects, reusing pinned maps. Programs are not attached yet. */
  load(): void {
    mkdirSync(this.linkDir, { recursive: true, mode: 0o700 });
    // Without the fast path the sockmap object is not even loaded: its helpers (netns cookie in sock_ops/sk_msg) need
    // kernel 5.15, while connect-time balancing alone runs on older kernels.
    for (const name of OBJECTS) {
      if (name === 'sockmap' && !this.opts.sockmap) continue;
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

  /** Write the runtime switches the programs read. */
  configure(): void {
    const cfg = encode('sm_config', { flags: this.opts.sockmap ? CFG_F_SOCKMAP : 0, event_sample: this.opts.eventSample });
    this.n.mapUpdate(this.maps.fd('sm_config'), u32(0), cfg);
  }

  private programFd(name: string): number {
    const owner = this.objects.find((o) => o.programs().includes(name));
    if (!owner) throw new Error(`BPF objects define no program ${name}: build/bpf is out of date (run npm ci)`);
    return owner.progFd(name);
  }

  /** Attach every program, or swap the new programs into the links a previous agent pinned. */
  attach(): AttachReport[] {
    const cgroupId = statSync(this.opts.cgroup).ino; // cgroup id == inode number of its directory (cgroup2)
    for (const [prog, type] of Object.entries(CGROUP_PROGRAMS)) {
      const pin = join(this.linkDir, prog);
      if (prog === 'sm_sockops' && !this.opts.sockmap) {
        // A previous agent ran with the fast path: take it out (sockets already in the map keep working).
        if (this.n.detachLink(pin)) this.attached.push({ program: prog, attachType: type, how: 'detached' });
        continue;
      }
      const fd = this.programFd(prog);
      if (existsSync(pin)) {
        const info = this.n.linkInfo(pin);
        if (info.cgroupId !== 0 && info.cgroupId !== cgroupId) {
          throw new Error(`${pin} is attached to another cgroup (id ${info.cgroupId}, not ${this.opts.cgroup}): ` +
            `run 'sockmesh-agent cleanup --bpffs ${this.opts.bpffs}' first or use another --bpffs`);
        }
        this.n.updateLink(pin, fd);
        this.attached.push({ program: prog, attachType: type, how: 'adopted' });
      } else {
        const linkFd = this.n.attachCgroup(fd, type, this.opts.cgroup, pin);
        this.n.close(linkFd);
        this.attached.push({ program: prog, attachType: type, how: 'attached' });
      }
    }
    if (!this.opts.sockmap) return this.attached;
    // The sk_msg verdict program hangs off the SOCKHASH itself; attaching again replaces the old program.
    this.n.attachSkMsg(this.programFd('sm_sk_msg'), this.maps.fd('sm_sockets'));
    this.attached.push({ program: 'sm_sk_msg', attachType: 'sk_msg', how: 'attached' });
    return this.attached;
  }

  /** Close our fds. Pins and links stay: the datapath keeps running without the agent. */
  close(): void {
    for (const o of this.objects) o.close();
    this.objects = [];
  }
}

/**
 * Remove everything an agent instance made: links (detaching the programs), the sk_msg attachment (it goes with the
 * SOCKHASH), map pins and the directory. Safe to run when nothing is there. Returns what was removed.
 */
export function cleanup(bpffs: string): string[] {
  const n = native();
  const removed: string[] = [];
  if (!existsSync(bpffs)) return removed;
  const links = join(bpffs, 'links');
  if (existsSync(links)) {
    for (const l of readdirSync(links)) {
      if (n.detachLink(join(links, l))) removed.push(`link ${l}`);
    }
    rmdirSync(links);
  }
  for (const entry of readdirSync(bpffs)) {
    const p = join(bpffs, entry);
    rmSync(p, { recursive: true, force: true });
    removed.push(`pin ${entry}`);
  }
  rmdirSync(bpffs);
  return removed;
}
