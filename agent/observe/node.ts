// Node facts for `meshctl status`, from systeminformation (one well-kept library instead of parsing /proc by hand).
import { hostname } from 'node:os';

export interface NodeFacts { hostname: string; kernel: string; distro: string; arch: string; cpus: number; cpuModel: string; memoryTotalBytes: number }

export async function nodeFacts(): Promise<NodeFacts> {
  // Imported when asked: its load is ~100 ms of an agent's start under load.
  const { default: si } = await import('systeminformation');
  const [os, cpu, mem] = await Promise.all([si.osInfo(), si.cpu(), si.mem()]);
  return {
    hostname: os.hostname || hostname(),
    kernel: os.kernel,
    distro: `${os.distro} ${os.release}`.trim(),
    arch: os.arch,
    cpus: cpu.cores,
    cpuModel: `${cpu.manufacturer} ${cpu.brand}`.trim(),
    memoryTotalBytes: mem.total,
  };
}

/**
 * The facts gathered on the first call and kept (a failed gathering is tried again on the next). The agent asks when
 * the first status is asked for, not while it starts: importing systeminformation and the tools it spawns took the
 * ~400 ms after a restarted agent's proxy listened, before it served its first request, on a loaded machine.
 */
export function nodeFactsOnce(gather: () => Promise<NodeFacts> = nodeFacts): () => Promise<NodeFacts> {
  let facts: Promise<NodeFacts> | undefined;
  return () => (facts ??= gather().catch((e: unknown) => { facts = undefined; throw e; }));
}
