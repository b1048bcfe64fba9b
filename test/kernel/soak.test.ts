// The soak's 2-minute version (bench/soak.ts; `npm run soak -- --minutes N` for the long one): the real agent on the
// node lab under config churn every 100 ms, sick backends and xDS control-plane kills, traffic from a pod and the host
// (L4 TCP and UDP, HTTP/1.1 and HTTP/2 through the L7 proxy). It must end with every criterion PASS: 0 failed requests
// where a healthy backend existed, the agent's memory (after forced full collections) and fds flat, xDS reconnections
// within 2 s of the control plane listening again, the kernel maps back to the start's counts, bpftool
// showing nothing left. The soak prints the figures; this test checks its verdict and that it really ran: requests
// served in both phases, failures it excluded (the churn did remove services under the clients), xDS restarts.
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { kernelSkipReason, ROOT } from '../lib/kernel.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

interface PhaseJson {
  phase: string; requests: number; ok: number; failed: number; counted: number; cpRestarts: number; gc: { points: number };
  excluded: Record<string, number>; checks: { name: string; pass: boolean; value: string; limit: string }[];
}

t.test('soak, 2 minutes: file source then xDS with control-plane kills', { skip: skip ?? false, timeout: 9 * 60_000 }, async (t) => {
  const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    // its own hard timeout is the run plus 5 minutes; this one is the last resort
    const p = spawn(process.execPath, [join(ROOT, 'dist', 'bench', 'soak.js'), '--minutes', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGTERM'), 8 * 60_000);
    p.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
  const lines = out.stdout.trim().split('\n');
  t.comment(lines.filter((l) => !l.startsWith('{')).join('\n'));
  const last = JSON.parse(lines[lines.length - 1] ?? '{}') as { bench?: string; pass?: boolean; phases?: PhaseJson[] };
  t.equal(last.bench, 'soak', `the last line is the soak's result (stderr: ${out.stderr.slice(-2000)})`);
  const phases = last.phases ?? [];
  t.same(phases.map((p) => p.phase), ['file', 'xds'], 'both phases ran');
  for (const p of phases) {
    for (const c of p.checks) t.ok(c.pass, `${c.name}: ${c.value} (limit ${c.limit})`);
    t.equal(p.counted, 0, `${p.phase}: no failed request where a healthy backend existed`);
    t.ok(p.ok > 5000, `${p.phase}: ${p.ok} requests served`);
    t.ok(p.gc.points >= 4, `${p.phase}: the agent's memory judged at ${p.gc.points} points after full collections`);
    t.ok((p.excluded['no service at this VIP'] ?? 0) > 0, `${p.phase}: the churn removed services under the clients (excluded failures: ${JSON.stringify(p.excluded)})`);
  }
  t.ok((phases.find((p) => p.phase === 'xds')?.cpRestarts ?? 0) >= 2, 'the control plane was killed and restarted at least twice');
  t.equal(out.code, 0, 'the soak exits 0 (every criterion PASS)');
  t.equal(last.pass, true, 'its verdict is PASS');
});
