// meshctl against a real agent and a real datapath: the admin API, flow events from the ring buffer, exec into the
// meshed cgroup, and the pinned-map fallback while the agent is down.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { MESHCTL, kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { connectId, distribution, idServer } from '../lib/net.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

t.test('meshctl', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'meshctl');
  cg.enter('client');
  const a = await idServer('a');
  const b = await idServer('b');
  t.teardown(async () => { await a.close(); await b.close(); });
  const agent = await startAgent(t, cg, {
    config: `
services:
  - name: shop
    vips: [127.77.4.1]
    ports: [{ port: 8080 }]
    algorithm: weighted
    backends: [{ address: 127.0.0.1, port: ${a.port}, weight: 1 }, { address: 127.0.0.1, port: ${b.port}, weight: 3 }]
`,
  });
  await distribution('127.77.4.1', 8080, 40);
  const held = await connectId('127.77.4.1', 8080, { keep: true });
  t.teardown(() => held.socket.destroy());

  t.test('status: agent, node, programs and map fill', async (t) => {
    const r = meshctl(agent, ['status', '--json']);
    t.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout);
    t.equal(s.agent.pid, agent.proc.pid);
    t.equal(s.kernel.cgroup, cg.path);
    t.ok(s.node.kernel, 'kernel version from systeminformation');
    t.ok(s.node.cpus >= 1);
    t.equal(s.programs.length, 12, 'eleven cgroup programs (with the L7 hand-over sock_ops and strict mode\'s cgroup_skb/ingress) and sk_msg');
    const services = s.maps.find((m: { map: string }) => m.map === 'sm_services');
    t.equal(services.entries, 1);
    const text = meshctl(agent, ['status']);
    t.equal(text.code, 0);
    t.match(text.stdout, /sm_connect4/);
  });

  t.test('services: VIP to backends with weights, shares and connection counts', async (t) => {
    const r = meshctl(agent, ['services', '--json']);
    t.equal(r.code, 0, r.stderr);
    const [fe] = JSON.parse(r.stdout);
    t.equal(fe.service, 'shop');
    t.equal(fe.vip, '127.77.4.1');
    t.equal(fe.algorithm, 'weighted');
    const shares = fe.backends.map((x: { weight: number; share: number }) => [x.weight, x.share]).sort();
    t.same(shares, [[1, 0.25], [3, 0.75]], 'table shares follow the weights');
    const conns = fe.backends.reduce((n: number, x: { counters: { connections: number } }) => n + x.counters.connections, 0);
    t.equal(conns, 41);
    const text = meshctl(agent, ['services']);
    t.match(text.stdout, /shop/);
    t.match(text.stdout, /127\.77\.4\.1:8080/);
  });

  t.test('sockets: the held connection is on the fast path', async (t) => {
    const r = meshctl(agent, ['sockets', '--json']);
    t.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout);
    const arr = Array.isArray(list) ? list : list.sockets;
    t.ok(arr.some((s: { local: string }) => s.local === `${held.socket.localAddress}:${held.socket.localPort}`), 'client socket listed');
  });

  t.test('events: sampled flow events arrive from the ring buffer', async (t) => {
    const r = meshctl(agent, ['events', '--json']);
    t.equal(r.code, 0, r.stderr);
    const evs = JSON.parse(r.stdout);
    const arr = Array.isArray(evs) ? evs : evs.events;
    t.ok(arr.length >= 41, `${arr.length} events`);
    t.ok(arr.every((e: { service: string; vip: string }) => e.service === 'shop' && e.vip === '127.77.4.1:8080'));
  });

  t.test('exec runs a program inside the meshed cgroup, with its exit code', async (t) => {
    const r = spawnSync(process.execPath, [MESHCTL, '--bpffs', agent.bpffs, '--run-dir', agent.runDir, 'exec', '--',
      'sh', '-c', 'cat /proc/self/cgroup; exit 7'], { encoding: 'utf8', timeout: 20000 });
    t.equal(r.status, 7, 'exit code passed through');
    const cgLine = r.stdout.split('\n').find((l) => l.startsWith('0::'))!;
    t.ok(cg.path.endsWith(cgLine.slice(3)), `ran in ${cgLine.slice(3)}`);
  });

  t.test('with the agent down: services, stats and sockets from the pins; status says so', async (t) => {
    await agent.kill('SIGKILL');
    const s = meshctl(agent, ['services', '--json']);
    t.equal(s.code, 0, s.stderr);
    const [fe] = JSON.parse(s.stdout);
    t.equal(fe.service, 'shop', 'name from state.json');
    t.equal(fe.backends.length, 2);
    const st = meshctl(agent, ['stats', '--json']);
    t.equal(st.code, 0, st.stderr);
    t.ok(JSON.parse(st.stdout).global.lb_connect >= 41);
    const status = meshctl(agent, ['status']);
    t.equal(status.code, 3, 'status exits 3 when the agent is down');
    t.match(status.stdout + status.stderr, /not running|down/i);
    const ev = meshctl(agent, ['events']);
    t.equal(ev.code, 3, 'events need the agent');
    const none = meshctl({ bpffs: '/sys/fs/bpf/sockmesh-test-nothing-here', runDir: '/tmp/sockmesh-test-nothing-here' }, ['services']);
    t.equal(none.code, 4, 'no datapath pinned: exit 4');
  });
});
