// Node facts for `meshctl status`, from systeminformation (one well-kept library instead of parsing /proc by hand).
import si from 'systeminformation';
import { hostname } from 'node:os';

export interface NodeFacts { hostname: string; kernel: string; distro: string; arch: string; cpus: number; cpuModel: string; memoryTotalBytes: number }

export async function nodeFacts(): Promise<NodeFacts> {
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
