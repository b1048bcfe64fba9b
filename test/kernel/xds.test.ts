// The agent on an xDS control plane, end to end: sockmesh-controlplane (a real process serving a config directory)
// -> ADS over gRPC on 127.0.0.1 -> the agent -> the kernel maps -> real connections. And a scripted ADS server for what
// our own control plane never sends: an invalid resource, which must be NACKed with the old state left in force.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { connectId, distribution, idServer, sleep, type IdServer } from '../lib/net.js';
import { MapReader } from '../../agent/datapath/inspect.js';
import { ControlPlaneProcess } from '../lib/controlplane.js';
import { FakeAds, cla, edsCluster, sotw, tcpListener, TYPE, FILTER, packAny } from '../lib/ads.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const be = (...ss: IdServer[]): string => ss.map((s) => `{ address: 127.0.0.1, port: ${s.port} }`).join(', ');

t.test('agent on the sockmesh control plane', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'xds');
  cg.enter('client');
  const [a, b, c, x] = [await idServer('a'), await idServer('b'), await idServer('c'), await idServer('x')];
  t.teardown(async () => { for (const s of [a, b, c, x]) await s.close(); });
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-test-cp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, text: string): void => {
    writeFileSync(join(dir, `.${name}.tmp`), text);
    renameSync(join(dir, `.${name}.tmp`), join(dir, name));
  };
  const web = (backends: string): string => `services:
  - name: web
    vips: [127.77.5.1]
    ports: [{ port: 8080 }]
    algorithm: weighted
    backends: [${backends}]
`;
  write('web.yaml', web(be(a, b)));
  write('extra.yaml', `services:
  - name: extra
    vips: [127.77.5.2]
    ports: [{ port: 8080 }]
    backends: [${be(x)}]
`);
  const cp = new ControlPlaneProcess(dir, await freePort());
  await cp.start();
  t.teardown(() => cp.kill());

  const agent = await startAgent(t, cg, { xds: `127.0.0.1:${cp.port}` });
  const applied = (): Record<string, unknown>[] => agent.logs.filter((l) => l.msg === 'config applied' && l.why === 'xds');
  const nextApply = async (): Promise<Record<string, unknown>> => {
    const n = agent.logs.length;
    return agent.waitLog((l) => l.msg === 'config applied' && l.why === 'xds' && agent.logs.indexOf(l) >= n);
  };
  await agent.waitLog((l) => l.msg === 'config applied' && l.why === 'xds');
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  const frontend = (vip: string) => reader.frontends().find((f) => f.vip === vip);

  t.test('full sync: the kernel maps hold the control plane\'s services, and traffic follows them', async (t) => {
    t.same(frontend('127.77.5.1')?.backends.map((x) => x.port).sort(), [a.port, b.port].sort());
    t.same(frontend('127.77.5.2')?.backends.map((x) => x.port), [x.port]);
    const m = await distribution('127.77.5.1', 8080, 100);
    t.same([...m.keys()].sort(), ['a', 'b']);
    const st = JSON.parse(meshctl(agent, ['status', '--json']).stdout);
    t.equal(st.controlPlane.state, 'connected');
    t.equal(st.controlPlane.synced, true);
    t.equal(st.controlPlane.mode, 'delta');
    t.ok(st.controlPlane.acked[TYPE.endpoint], 'endpoints ACKed');
  });

  t.test('an endpoint change reaches the kernel map, touching only its service', async (t) => {
    const extraTable = frontend('127.77.5.2')!.tableId;
    const applying = nextApply();
    write('web.yaml', web(be(a, b, c)));
    const log = await applying;
    t.equal(log.changed, 1, 'one service changed');
    t.equal(log.backendsWritten, 1, 'one backend written');
    t.same(frontend('127.77.5.1')?.backends.map((x) => x.port).sort(), [a.port, b.port, c.port].sort());
    t.equal(frontend('127.77.5.2')!.tableId, extraTable, 'the other service was not touched');
    const m = await distribution('127.77.5.1', 8080, 150);
    t.same([...m.keys()].sort(), ['a', 'b', 'c']);
  });

  t.test('removing a service removes its VIP from the kernel', async (t) => {
    const applying = nextApply();
    rmSync(join(dir, 'extra.yaml'));
    const log = await applying;
    t.equal(log.frontendsDeleted, 1);
    t.notOk(frontend('127.77.5.2'), 'frontend gone');
    const err = await connectId('127.77.5.2', 8080, { timeoutMs: 2000 }).then(() => null, (e: NodeJS.ErrnoException) => e.code);
    t.equal(err, 'ECONNREFUSED', 'the VIP is not balanced any more');
  });

  t.test('control plane killed and restarted under traffic: no failed connection, nothing re-applied', async (t) => {
    let failures = 0, made = 0, stop = false;
    const load = (async () => {
      while (!stop) {
        try { await connectId('127.77.5.1', 8080); made++; } catch { failures++; }
      }
    })();
    await sleep(200);
    const appliedBefore = applied().length;
    await cp.kill('SIGKILL');
    await sleep(800);
    const down = JSON.parse(meshctl(agent, ['status', '--json']).stdout).controlPlane;
    t.not(down.state, 'connected', `agent noticed: ${down.state} (${down.lastError})`);
    await cp.start();
    const deadline = Date.now() + 15000;
    let up = down;
    while (Date.now() < deadline) {
      up = JSON.parse(meshctl(agent, ['status', '--json']).stdout).controlPlane;
      if (up.state === 'connected' && up.reconnects >= 1) break;
      await sleep(200);
    }
    t.equal(up.state, 'connected', 'reconnected');
    t.ok(up.reconnects >= 1, `reconnects ${up.reconnects}`);
    await sleep(500);
    stop = true;
    await load;
    t.equal(failures, 0, `no failed connection (${made} made across the outage)`);
    t.equal(applied().length, appliedBefore, 'delta reconnect with initial_resource_versions: nothing re-applied');
  });

  t.test('static stability: an agent restarted while the control plane is down keeps the datapath', async (t) => {
    await cp.kill('SIGKILL');
    await agent.kill('SIGKILL');
    const tables = reader.frontends().map((f) => `${f.vip}:${f.tableId}`);
    await agent.restart();
    const st = JSON.parse(meshctl(agent, ['status', '--json']).stdout).controlPlane;
    t.equal(st.synced, false, 'not synced yet');
    t.same(reader.frontends().map((f) => `${f.vip}:${f.tableId}`), tables, 'kernel state untouched (no flush)');
    const m = await distribution('127.77.5.1', 8080, 60);
    t.same([...m.keys()].sort(), ['a', 'b', 'c'], 'traffic still balanced');
    const applying = nextApply();
    await cp.start();
    const log = await applying;
    t.equal(log.backendsWritten, 0, 'the first sync after adoption writes nothing that was already there');
    t.equal(log.frontendsWritten, 0);
  });
});

t.test('an invalid resource is NACKed and changes nothing in the kernel', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'xdsnack');
  cg.enter('client');
  const a = await idServer('a');
  t.teardown(() => a.close());
  const ads = new FakeAds();
  await ads.start();
  t.teardown(() => ads.kill());
  const agent = await startAgent(t, cg, { xds: `127.0.0.1:${ads.port}`, extraArgs: ['--xds-mode', 'sotw'] });
  const s = await ads.stream(0);
  const lds = await s.next(TYPE.listener);
  t.equal(lds.node?.id !== undefined && lds.node.metadata.fields.agent_version.stringValue, '0.1.0', 'node identity with the agent version');
  s.send(sotw(TYPE.listener, '1', 'l1', [tcpListener('127.77.6.1', 8080, 'web')]));
  await s.next(TYPE.cluster);
  s.send(sotw(TYPE.cluster, '1', 'c1', [edsCluster('web')]));
  await s.next(TYPE.endpoint);
  s.send(sotw(TYPE.endpoint, '1', 'e1', [cla('web', [['127.0.0.1', a.port, 1]])]));
  await agent.waitLog((l) => l.msg === 'config applied' && l.why === 'xds');
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  const before = reader.frontends().map((f) => `${f.vip}:${f.tableId}:${f.backends.map((x) => x.port)}`);
  t.equal((await connectId('127.77.6.1', 8080)).id, 'a', 'traffic on the first version');

  // Version 2 of the listener carries a filter nobody supports (a Router where a network filter should be).
  const bad = tcpListener('127.77.6.1', 8080, 'web');
  bad.filter_chains[0].filters[0] = { name: 'envoy.filters.http.router', typed_config: packAny(FILTER.router, {}) };
  s.send(sotw(TYPE.listener, '2', 'l2', [bad, tcpListener('127.77.6.2', 8080, 'web')]));
  let nack = await s.next(TYPE.listener);
  while (nack.response_nonce !== 'l2') nack = await s.next(TYPE.listener);
  t.equal(nack.version_info, '1', 'NACK carries the previous version');
  t.ok(nack.error_detail, 'error_detail set');
  t.match(nack.error_detail.message, "127.77.6.1:8080/tcp", 'names the resource');
  t.match(nack.error_detail.message, 'filter_chains[0].filters[0]', 'names the field');
  await sleep(300);
  t.same(reader.frontends().map((f) => `${f.vip}:${f.tableId}:${f.backends.map((x) => x.port)}`), before, 'kernel maps unchanged (127.77.6.2 not added)');
  t.equal((await connectId('127.77.6.1', 8080)).id, 'a', 'traffic still on the old state');
  const st = JSON.parse(meshctl(agent, ['status', '--json']).stdout).controlPlane;
  t.equal(st.lastNack?.version, '2', 'status names the rejected version');
  t.match(st.lastNack?.reason, 'filter_chains[0].filters[0]');
  const text = meshctl(agent, ['status']).stdout;
  t.match(text, /last NACK\s+Listener version 2 at \S+: .*filter_chains\[0\]\.filters\[0\]/, 'meshctl status shows the NACK and its reason');
});
