// Node facts for `meshctl status`, from systeminformation (one well-kept library instead of parsing /proc by hand).
import { hostname } from 'node:os';

export interface NodeFacts { hostname: string; kernel: string; distro: string; arch: string; cpus: number; cpuModel: string; memoryTotalBytes: number }

export async function nodeFacts(): Promise<NodeFacts> {
  // Imported when asked (once, at start, after the proxy listens): its load is ~100 ms of an agent's start under load.
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
