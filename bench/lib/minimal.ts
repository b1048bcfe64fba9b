// The minimal sockmap program (bench/minimal/sockmap_min.bpf.c) as a benchmark subject: the
// kernel's sockmap path with nothing of sockmesh around it, as a ceiling to judge sockmesh by.
// Compiled at run time (it is a lab reference, not part of the build), loaded with sockmesh's
// own addon, attached only to the scenario's own cgroup, and removed again afterwards.
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { native, type BpfObject } from '../../agent/datapath/native.js';
import { cgroup2Mount } from './cgroup.js';
import { run, runChecked } from './proc.js';

const COMPILE_TIMEOUT_MS = 60_000;

export function minimalSource(root: string): string {
  return join(root, 'bench', 'minimal', 'sockmap_min.bpf.c');
}

/** Why the minimal program cannot run here (no addon to load it, no clang to compile it), or undefined. */
export async function minimalUnavailable(root: string): Promise<string | undefined> {
  if (!existsSync(join(root, 'build', 'Release', 'sockmesh.node'))) return 'native addon not built (build/Release/sockmesh.node missing)';
  if ((await run('sh', ['-c', 'command -v clang'], 5000)).code !== 0) return `clang is not installed (needed to compile ${minimalSource(root)})`;
  return undefined;
}

/** clang -target bpf, with the multiarch include dir that <linux/bpf.h> needs for <asm/types.h>. */
export async function compileMinimal(root: string, workDir: string): Promise<string> {
  const triple = (await runChecked('gcc', ['-dumpmachine'], 10_000)).trim();
  const out = join(workDir, 'sockmap_min.bpf.o');
  await runChecked(
    'clang',
    ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${triple}`, '-c', minimalSource(root), '-o', out],
    COMPILE_TIMEOUT_MS,
  );
  return out;
}

/** Sum of a per-CPU u64 value as the kernel returns it from a lookup (8 bytes per possible CPU). */
export function sumPerCpuU64(value: Buffer): number {
  let sum = 0n;
  for (let off = 0; off + 8 <= value.length; off += 8) sum += value.readBigUInt64LE(off);
  return Number(sum);
}

export interface MinimalCounters {
  /** sends handed straight to the peer socket */
  redirects: number;
  /** sends whose peer was not in the map (they took TCP) */
  misses: number;
}

export class MinimalSockmap {
  private obj?: BpfObject;
  private madePinRoot = false;

  /**
   * @param pinRoot a bpffs dir of our own (created here, must not exist): it holds the sock_ops link
   * @param cgroupDir the scenario's leaf cgroup under the bench's own cgroup
   */
  constructor(readonly pinRoot: string, readonly cgroupDir: string) {
    // The same rule as everywhere in the bench: never the root cgroup, only below our own.
    if (dirname(dirname(cgroupDir)) !== cgroup2Mount() || !/\/sockmesh-bench-[\w-]+\/[\w-]+$/.test(cgroupDir)) {
      throw new Error(`refusing to attach to ${cgroupDir}: not a bench cgroup`);
    }
    if (!/^\/sys\/fs\/bpf\/sockmesh-bench-[\w-]+$/.test(pinRoot)) throw new Error(`refusing pin dir ${pinRoot}`);
  }

  get linkPin(): string {
    return join(this.pinRoot, 'min_sockops');
  }

  /** Load, then attach sk_msg to the SOCKHASH before sock_ops can put a socket into it. */
  attach(objectPath: string): void {
    const n = native();
    mkdirSync(this.pinRoot, { mode: 0o700 }); // throws if it exists: never adopt someone else's pins
    this.madePinRoot = true;
    this.obj = n.loadObject(objectPath, this.pinRoot);
    n.attachSkMsg(this.obj.progFd('min_sk_msg'), this.obj.mapFd('socks'));
    n.close(n.attachCgroup(this.obj.progFd('min_sockops'), 'sockops', this.cgroupDir, this.linkPin));
  }

  counters(): MinimalCounters {
    if (!this.obj) throw new Error('minimal sockmap program is not loaded');
    const n = native();
    const fd = this.obj.mapFd('redirects');
    const slot = (i: number) => {
      const key = Buffer.alloc(4);
      key.writeUInt32LE(i);
      const v = n.mapLookup(fd, key);
      return v ? sumPerCpuU64(v) : 0;
    };
    return { redirects: slot(0), misses: slot(1) };
  }

  /**
   * Detach the sock_ops link, unload (the SOCKHASH, and the sk_msg program hanging off it, go with
   * the last fd) and remove the pin dir. Safe to call more than once and after a failed attach.
   */
  detach(): void {
    if (!this.madePinRoot) return;
    const n = native();
    try {
      n.detachLink(this.linkPin);
    } finally {
      this.obj?.close();
      this.obj = undefined;
      if (existsSync(this.pinRoot)) rmSync(this.pinRoot, { recursive: true, force: true });
      this.madePinRoot = false;
    }
  }
}
