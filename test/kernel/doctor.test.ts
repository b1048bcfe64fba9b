// meshctl doctor against a real agent and datapath: all ok, then each check broken on purpose and seen with its verdict
// and the exit code: another cgroup with no programs, a wrong bpffs dir, the agent stopped (agent-side checks fail, the
// kernel-side ones still pass from the pins), a pin removed. (A full map is not tested here: filling one takes long
// and would crowd the shared kernel; the fill verdicts are in test/unit/meshctl-doctor.test.ts.)
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import { freePort, kernelSkipReason, meshctl, startAgent, testCgroup, type AgentHandle } from '../lib/kernel.js';
import { idServer } from '../lib/net.js';
import type { Check, Verdict } from '../../cli/commands/doctor.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

/** Checks whose verdict depends on this host (kernel config, clock), not on sockmesh. */
const HOST = (c: Check): boolean => c.check.startsWith('bpf ') || c.check === 'clock source' || c.check === 'CONFIG_INET_DIAG_DESTROY';

function doctor(agent: Pick<AgentHandle, 'bpffs' | 'runDir'>, ...args: string[]): { code: number; checks: Check[]; verdict: (name: string) => Verdict | undefined; stderr: string } {
  const r = meshctl(agent, ['doctor', '--json', ...args]);
  const doc = JSON.parse(r.stdout) as { checks: Check[]; exitCode: number };
  if (doc.exitCode !== r.code) throw new Error(`--json says exit ${doc.exitCode}, meshctl exited ${r.code}`);
  return { code: r.code, checks: doc.checks, verdict: (name) => doc.checks.find((c) => c.check === name)?.verdict, stderr: r.stderr };
}

const failing = (checks: Check[]): string[] => checks.filter((c) => c.verdict === 'fail').map((c) => c.check).sort();

t.test('meshctl doctor', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'doctor');
  const a = await idServer('a');
  t.teardown(() => a.close());
  const agent = await startAgent(t, cg, {
    config: `
services:
  - name: shop
    vips: [127.77.16.1]
    ports: [{ port: 8080 }]
    backends: [{ address: 127.0.0.1, port: ${a.port} }]
`,
    extraArgs: ['--metrics-listen', `127.0.0.1:${await freePort()}`],
  });

  t.test('a healthy agent: every sockmesh check ok', async (t) => {
    const d = doctor(agent);
    const notOk = d.checks.filter((c) => !HOST(c) && c.verdict !== 'ok' && c.check !== 'control plane');
    t.same(notOk, [], 'nothing but host facts and the control plane is other than ok');
    t.equal(d.verdict('control plane'), 'skip', 'config from a file: no control plane to check');
    for (const name of ['agent', 'pins', 'pins ABI version', 'links vs pins', 'programs on the meshed cgroup', 'root cgroup untouched',
      'proxy heartbeat', 'map fill', 'admin socket', 'metrics endpoint', 'cgroup v2 mount', 'bpffs mount']) {
      t.equal(d.verdict(name), 'ok', name);
    }
    t.ok(d.checks.filter((c) => c.check.startsWith('bpf ')).length >= 5, 'one check per probed BPF feature');
    t.match(d.checks.find((c) => c.check === 'programs on the meshed cgroup')!.detail,
      /^\d+ on .*(bpftool sees \d+ programs there|bpftool not installed)/, 'the kernel\'s own list cross-checked when bpftool is there');
    const hostWarn = d.checks.some((c) => c.verdict === 'warn');
    t.equal(d.code, hostWarn ? 2 : 0, 'exit 0 (2 when this host only warns)');
    const text = meshctl(agent, ['doctor']);
    t.equal(text.code, d.code);
    t.match(text.stdout, /VERDICT\s+CHECK\s+DETAIL/);
    t.match(text.stdout, /ok\s+proxy heartbeat/);
    t.match(text.stdout, /\d+ ok, \d+ warn, 0 fail, \d+ skipped/);
  });

  t.test('a cgroup with no programs attached', async (t) => {
    const d = doctor(agent, '--cgroup', cg.child('unmeshed'));
    t.equal(d.code, 1, 'exit 1: a check failed');
    t.same(failing(d.checks), ['programs on the meshed cgroup']);
    t.match(d.checks.find((c) => c.check === 'programs on the meshed cgroup')!.hint!, /another cgroup/);
  });

  t.test('the root cgroup named as the meshed one (nothing is attached there: only the verdict is tested)', async (t) => {
    const root = cgroup2Root()!;
    const d = doctor(agent, '--cgroup', root);
    t.equal(d.code, 1);
    t.same(failing(d.checks), ['programs on the meshed cgroup', 'root cgroup untouched']);
    t.match(d.checks.find((c) => c.check === 'root cgroup untouched')!.hint!, /every process on this machine/);
  });

  t.test('a wrong bpffs dir', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'sockmesh-doctor-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const d = doctor({ bpffs: dir, runDir: agent.runDir });
    t.equal(d.code, 1);
    t.same(failing(d.checks), ['bpffs mount', 'pins']);
    t.equal(d.verdict('agent'), 'ok', 'the agent still answers on its run dir');
    t.equal(d.verdict('links vs pins'), 'skip', 'nothing pinned there to compare');
  });

  t.test('the agent stopped: agent-side checks fail, kernel-side ones pass from the pins', async (t) => {
    await agent.kill('SIGTERM');
    const d = doctor(agent);
    t.equal(d.code, 1);
    t.same(failing(d.checks), ['admin socket', 'agent', 'proxy heartbeat'].sort());
    t.match(d.checks.find((c) => c.check === 'admin socket')!.detail, /missing/);
    for (const name of ['pins', 'pins ABI version', 'links vs pins', 'programs on the meshed cgroup', 'root cgroup untouched', 'map fill']) {
      t.equal(d.verdict(name), 'ok', `${name}, from the pins`);
    }
    for (const name of ['config', 'metrics endpoint', 'control plane']) t.equal(d.verdict(name), 'skip', name);
  });

  t.test('a pin removed', async (t) => {
    rmSync(join(agent.bpffs, 'sm_affinity'));
    const d = doctor(agent);
    t.equal(d.code, 1);
    t.equal(d.verdict('pins'), 'fail');
    t.match(d.checks.find((c) => c.check === 'pins')!.detail, /missing at .*: sm_affinity$/);
  });
});
