// Driving test/lib/udp-probe.c (a UDP client that reports each call's errno) from kernel tests: compile it once per
// test, start it connected to host:port (its first answer names the backend), run its ops when told.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

interface Teardown { teardown(fn: () => void): void }

/** Compile udp-probe into a directory removed at teardown: its path, or the compiler's complaint. */
export function compileUdpProbe(t: Teardown): { bin: string; error: string | null } {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-udp-probe-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'udp-probe');
  const cc = spawnSync('gcc', ['-O1', '-D_GNU_SOURCE', '-o', bin, new URL('udp-probe.c', import.meta.url).pathname], { encoding: 'utf8' });
  return { bin, error: cc.status === 0 ? null : `${cc.stderr ?? ''}${cc.error?.message ?? ''}` };
}

export interface Probe { backend: string; go(): Promise<string[]>; kill(): void }

/** A started udp-probe (start: spawns it with [host, port, ...ops], stdout piped), once it named its backend. */
export async function udpProbe(start: (args: string[]) => ChildProcess, host: string, port: number, ops: string[]): Promise<Probe> {
  const proc = start([host, String(port), ...ops]);
  const lines: string[] = [];
  let wake = () => {};
  let exited = false; // its output read to the end
  createInterface({ input: proc.stdout! }).on('line', (l) => { lines.push(l); wake(); }).on('close', () => { exited = true; wake(); });
  const until = async (n: number): Promise<void> => {
    const end = Date.now() + 10_000;
    while (lines.length < n && !exited && Date.now() < end) await new Promise<void>((r) => { wake = r; setTimeout(r, 100); });
  };
  await until(1);
  return {
    backend: /^backend (\S+)$/.exec(lines[0] ?? '')?.[1] ?? '',
    go: async () => { proc.stdin!.end('go\n'); await until(1 + ops.length); return lines.slice(1); },
    kill: () => proc.kill('SIGKILL'),
  };
}
