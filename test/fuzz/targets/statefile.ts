// state.json as meshctl reads it (cli/context.ts) while the agent is down: the file is whatever is on disk (a crash
// mid-write, an older agent, a hand edit). Crashes: anything thrown (state() promises null for an unreadable file).
// Invariants: what it returns has the StateFile shape, and the service names it derives are integer ids -> strings.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Context } from '../../../cli/context.js';
import { invariant } from './common.js';

export const dict = ['{', '}', '[', ']', '"pid":', '"bpffs":', '"cgroup":', '"services":', '"1":', '"web"', 'null', 'true', '1e308', '-0', '"__proto__":', '"constructor":', '"\\u0000"', ':', ','];

// On tmpfs when there is one: rewriting a file in place on ext4 (truncate, write) costs ~2.3 ms (its auto_da_alloc
// flushes the old blocks), 100x what the read under test costs, and held this target to ~750 executions/s. meshctl
// reads it with the same readFileSync either way.
const runDir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'sockmesh-fuzz-state-'));
process.on('exit', () => rmSync(runDir, { recursive: true, force: true }));
const ctx = new Context({ bpffs: '/nonexistent/bpffs', runDir, json: true, timeout: 1 }, { write: () => true }, { write: () => true });

export function run(data: Buffer): void {
  writeFileSync(join(runDir, 'state.json'), data);
  const s = ctx.state();
  if (s !== null) {
    invariant(typeof s.pid === 'number' && typeof s.bpffs === 'string' && typeof s.cgroup === 'string', 'state() fields of the wrong types');
    invariant(typeof s.services === 'object' && s.services !== null && !Array.isArray(s.services), () => `services is ${JSON.stringify(s.services)?.slice(0, 60)}`);
  }
  for (const [id, name] of ctx.serviceNames()) {
    invariant(Number.isInteger(id) && id >= 0, () => `a service id ${JSON.stringify(String(id))}`);
    invariant(typeof name === 'string', () => `the name of service ${id} is a ${typeof name}`);
  }
}
