// meshctl doctor against a real agent and datapath: all ok, then each check broken on purpose and seen with its verdict
// and the exit code: another cgroup with no programs, the root cgroup named, a wrong bpffs dir, the agent killed (its
// socket left over) and stopped (agent-side checks fail, the kernel-side ones still pass from the pins), a pin removed,
// the meshed cgroup removed (defunct links); an xDS agent whose control plane is silent (fail), never syncs (warn,
// exit 2), then goes away (fail). A full map is not tested here: filling one takes long and would crowd the shared
// kernel; the fill verdicts are in test/unit/meshctl-doctor.test.ts.
import t from 'tap';
import { mkdtempSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import { freePort, kernelSkipReason, meshctl, startAgent, testCgroup, type AgentHandle } from '../lib/kernel.js';
import { idServer, sleep } from '../lib/net.js';
import { FakeAds, TYPE, sotw, tcpListener } from '../lib/ads.js';
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
      'proxy heartbeat', 'proxy listeners', 'map fill', 'admin socket', 'metrics endpoint', 'cgroup v2 mount', 'bpffs mount']) {
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

  t.test('the agent killed: its admin socket is left over, nobody answers on it', async (t) => {
    await agent.kill('SIGKILL');
    const d = doctor(agent);
    t.equal(d.code, 1);
    t.equal(d.verdict('agent'), 'fail');
    t.match(d.checks.find((c) => c.check === 'agent')!.detail, /last agent: pid \d+, gone/);
    t.equal(d.verdict('admin socket'), 'fail');
    t.match(d.checks.find((c) => c.check === 'admin socket')!.detail, /left over: nobody answers on it/);
    t.equal(d.verdict('links vs pins'), 'ok', 'the datapath is still there');
    // The kernel dropped the dead proxy's listeners with its sockets, whatever the heartbeat's age.
    t.equal(d.verdict('proxy listeners'), 'fail', 'the proxy\'s listeners are gone from the kernel at once');
    t.match(d.checks.find((c) => c.check === 'proxy listeners')!.detail, /not in sm_proxy_socks: 127\.0\.0\.1:\d+/);
    await agent.restart();
    const again = doctor(agent);
    t.equal(again.verdict('admin socket'), 'ok', 'a restarted agent replaces the socket');
    t.equal(again.verdict('proxy listeners'), 'ok', 'and records its own listeners');
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

  t.test('the meshed cgroup removed: its links are defunct', async (t) => {
    rmdirSync(cg.child('unmeshed'));
    rmdirSync(cg.path);
    const d = doctor(agent);
    t.equal(d.code, 1);
    t.equal(d.verdict('links vs pins'), 'fail');
    t.match(d.checks.find((c) => c.check === 'links vs pins')!.detail, /defunct \(cgroup gone or unreadable\): sm_connect4/);
    t.match(d.checks.find((c) => c.check === 'programs on the meshed cgroup')!.detail, /does not exist/);
  });
});

t.test('meshctl doctor on an xDS agent: the control-plane connection', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'doctor-xds');
  const ads = new FakeAds();
  await ads.start();
  t.teardown(() => ads.kill());
  const agent = await startAgent(t, cg, { xds: `127.0.0.1:${ads.port}`, extraArgs: ['--xds-mode', 'sotw'] });
  const waitFor = async (verdict: Verdict): Promise<ReturnType<typeof doctor>> => {
    for (let i = 0; ; i++) {
      const d = doctor(agent);
      if (d.verdict('control plane') === verdict || i === 50) return d;
      await sleep(100);
    }
  };
  // The stream is open but nothing came back yet: not connected, a failure.
  const s = await ads.stream(0);
  await s.next(TYPE.listener);
  const silent = doctor(agent);
  t.equal(silent.verdict('control plane'), 'fail');
  t.match(silent.checks.find((c) => c.check === 'control plane')!.detail, /: connecting/);
  t.equal(silent.code, 1);
  // A listener whose cluster never comes: connected, not synced: a warning, and exit 2.
  s.send(sotw(TYPE.listener, '1', 'l1', [tcpListener('127.77.16.2', 8080, 'never')]));
  const warned = await waitFor('warn');
  t.equal(warned.verdict('control plane'), 'warn');
  t.match(warned.checks.find((c) => c.check === 'control plane')!.detail, /connected, not synced/);
  t.same(failing(warned.checks), []);
  t.equal(warned.code, 2, 'warnings only: exit 2');
  ads.kill();
  const down = await waitFor('fail');
  t.equal(down.verdict('control plane'), 'fail', 'the control plane gone');
  t.match(down.checks.find((c) => c.check === 'control plane')!.detail, /: (connecting|backoff)/);
  t.equal(down.code, 1);
});
