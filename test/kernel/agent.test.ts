// The agent's life: config changes by diff, bad configs rejected whole, backend removal, SIGKILL and adoption, cleanup.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { native } from '../../agent/datapath/native.js';
import { ABI_VERSION } from '../../agent/datapath/abi.js';
import { AGENT, kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { connectId, distribution, idServer, sleep, udpServer, type Conn } from '../lib/net.js';
import { MapReader } from '../../agent/datapath/inspect.js';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const svc = (name: string, vip: string, port: number, backends: string, extra = ''): string => `
  - name: ${name}
    vips: [${vip}]
    ports: [{ port: ${port}${extra} }]
    backends: [${backends}]`;

/** Echo one line over an established connection. */
async function echoes(c: Conn, text: string): Promise<boolean> {
  c.socket.write(`${text}\n`);
  const got = await new Promise<string>((r, j) => {
    const timer = setTimeout(() => j(new Error('no echo')), 3000);
    c.socket.once('data', (d) => { clearTimeout(timer); r(d.toString()); });
  });
  return got === `${text}\n`;
}

t.test('agent lifecycle', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'agent');
  cg.enter('client');
  const a = await idServer('a');
  const b = await idServer('b');
  const c = await idServer('c');
  const u1 = await udpServer('u1');
  const u2 = await udpServer('u2');
  t.teardown(async () => { await a.close(); await b.close(); await c.close(); u1.close(); u2.close(); });
  const be = (...ss: { port: number }[]): string => ss.map((s) => `{ address: 127.0.0.1, port: ${s.port} }`).join(', ');
  const config = (backends: string, udpBackends = be(u1, u2)): string =>
    `services:${svc('web', '127.77.3.1', 8080, backends)}${svc('dns', '127.77.3.53', 53, udpBackends, ', protocol: udp')}\n`;

  const agent = await startAgent(t, cg, { config: config(be(a, b)) });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  const applied = (): number => agent.logs.filter((l) => l.msg === 'config applied').length;
  /** Write a config and wait for the agent to apply it (the next 'config applied' line). */
  const change = async (text: string): Promise<Record<string, unknown>> => {
    const n = agent.logs.length;
    agent.writeConfig(text);
    return agent.waitLog((l) => l.msg === 'config applied' && agent.logs.indexOf(l) >= n);
  };

  t.test('a bad config is rejected whole, with file, field and reason, and the old one stays in force', async (t) => {
    const before = JSON.stringify(reader.frontends().map((f) => [f.vip, f.tableId, f.backends.map((x) => x.port)]));
    const n = applied();
    // Two errors in one file, and a valid-looking change next to them that must NOT be applied either.
    agent.writeConfig(`services:${svc('web', '127.77.3.1', 8080, `${be(a, b, c)}, { address: 127.0.0.1, port: 70000 }`)}
    wieght: 3
`);
    const rejected = await agent.waitLog((l) => l.msg === 'config rejected; the last good config stays in force');
    const msg = String(rejected.error);
    t.match(msg, agent.configFile, 'names the file');
    t.match(msg, 'services[0].backends[3].port', 'names the field path');
    t.match(msg, '70000', 'says what is wrong');
    t.match(msg, 'wieght', 'reports the second problem too');
    await sleep(200);
    t.equal(applied(), n, 'nothing applied');
    t.equal(JSON.stringify(reader.frontends().map((f) => [f.vip, f.tableId, f.backends.map((x) => x.port)])), before, 'kernel maps unchanged');
    const m = await distribution('127.77.3.1', 8080, 100);
    t.same([...m.keys()].sort(), ['a', 'b'], 'traffic still follows the old config (c never answers)');
  });

  t.test('a good change is applied by diff: a new backend gets traffic, untouched services keep their tables', async (t) => {
    const dnsBefore = reader.frontends().find((f) => f.vip === '127.77.3.53')!;
    const log = await change(config(be(a, b, c)));
    t.equal(log.frontendsWritten, 1, 'one frontend rewritten');
    t.equal(log.backendsWritten, 1, 'one backend written');
    const dnsAfter = reader.frontends().find((f) => f.vip === '127.77.3.53')!;
    t.equal(dnsAfter.tableId, dnsBefore.tableId, 'the other service\'s table was not touched (no flush)');
    const m = await distribution('127.77.3.1', 8080, 300);
    t.same([...m.keys()].sort(), ['a', 'b', 'c']);
    // The replaced table stays for a grace second (a connect() may still be reading it), then goes.
    await sleep(1600);
    const tables = native().mapKeys(native().objGet(`${agent.bpffs}/sm_tables`)).length;
    const sizes = reader.frontends().reduce((n, f) => n + f.tableSize, 0);
    t.equal(tables, sizes, `sm_tables holds exactly the live tables (${tables} entries)`);
  });

  t.test('removing a backend: no new connection goes to it, established ones finish, connected UDP sockets are destroyed', async (t) => {
    // Established TCP connections to every backend.
    const live: Conn[] = [];
    for (let i = 0; live.filter((x) => x.id === 'a').length < 3 && i < 200; i++) live.push(await connectId('127.77.3.1', 8080, { keep: true }));
    t.ok(live.some((x) => x.id === 'a'), 'have live connections to a');
    // Connected UDP sockets to both UDP backends (each connect() is balanced once).
    const udp: { sock: ReturnType<typeof createSocket>; backend: string; errors: string[] }[] = [];
    for (let i = 0; i < 30 && new Set(udp.map((x) => x.backend)).size < 2; i++) {
      const sock = createSocket('udp4');
      const entry = { sock, backend: '', errors: [] as string[] };
      sock.on('error', (e: NodeJS.ErrnoException) => entry.errors.push(e.code ?? e.message));
      await new Promise<void>((r) => sock.connect(53, '127.77.3.53', () => r()));
      sock.send('who');
      entry.backend = await new Promise<string>((r) => sock.once('message', (m) => r(m.toString().split(':')[0]!)));
      udp.push(entry);
    }
    t.same(new Set(udp.map((x) => x.backend)), new Set(['u1', 'u2']), 'connected UDP sockets to both backends');

    const log = await change(config(be(b, c), be(u2)));
    // Their retired tables still name them: deleted (and their UDP sockets destroyed) when those are, a second later.
    t.equal(log.backendsRetiring, 2, 'two backends removed, kept while the retired tables name them');
    const reaped = await agent.waitLog((l) => l.msg === 'retired tables reaped' && agent.logs.indexOf(l) > agent.logs.indexOf(log));
    t.equal(reaped.backendsDeleted, 2, 'two backends deleted with the retired tables');
    t.ok(Number(reaped.udpSocketsDestroyed) >= 1, `UDP sockets destroyed: ${reaped.udpSocketsDestroyed}`);
    const m = await distribution('127.77.3.1', 8080, 200);
    t.same([...m.keys()].sort(), ['b', 'c'], 'a gets no new connection');
    for (const x of live.filter((y) => y.id === 'a')) t.ok(await echoes(x, 'still here'), 'established connection to a still works');
    // The UDP sockets that were connected to u1 were destroyed (their owners see an error and reconnect); the ones
    // connected to u2 still work.
    await sleep(100);
    for (const x of udp) {
      if (x.backend === 'u1') {
        try { x.sock.send('again'); } catch (e) { x.errors.push((e as NodeJS.ErrnoException).code ?? 'thrown'); }
        await sleep(50);
        t.ok(x.errors.length > 0, `socket to removed u1 errored (${x.errors.join(',')})`);
      } else {
        x.sock.send('again');
        const answer = await new Promise<string>((r) => x.sock.once('message', (mm) => r(mm.toString())));
        t.equal(answer, 'u2:again', 'socket to the remaining u2 still works');
      }
      x.sock.close();
    }
    for (const x of live) x.socket.destroy();
    await change(config(be(a, b)));
  });

  t.test('SIGKILL under load: connections live on, new ones are still balanced, a new agent adopts without flushing', async (t) => {
    const live: Conn[] = [];
    for (let i = 0; i < 20; i++) live.push(await connectId('127.77.3.1', 8080, { keep: true }));
    const tablesBefore = reader.frontends().map((f) => `${f.vip}:${f.tableId}`).sort();
    // Load: a client loop making new connections all the time, across the kill and the restart.
    let failures = 0, made = 0, stop = false;
    const seen = new Set<string>();
    const load = (async () => {
      while (!stop) {
        try { const x = await connectId('127.77.3.1', 8080); seen.add(x.id); made++; } catch { failures++; }
      }
    })();
    await sleep(200);
    await agent.kill('SIGKILL');
    const madeAtKill = made;
    await sleep(500);
    t.ok(made > madeAtKill, `new connections while the agent is dead: ${made - madeAtKill}`);
    for (const x of live) t.ok(await echoes(x, 'alive'), 'established connection survives the kill');
    await agent.restart();
    const adopted = agent.logs.filter((l) => l.msg === 'datapath ready').pop()!;
    t.match(String(adopted.programs), /sm_connect4:adopted/, 'programs swapped into the pinned links');
    const applyLog = agent.logs.filter((l) => l.msg === 'config applied').pop()!;
    t.equal(applyLog.frontendsWritten, 0, 'no frontend rewritten on adoption');
    t.equal(applyLog.backendsWritten, 0, 'no backend rewritten on adoption');
    t.same(reader.frontends().map((f) => `${f.vip}:${f.tableId}`).sort(), tablesBefore, 'same tables: nothing flushed');
    await sleep(300);
    stop = true;
    await load;
    t.equal(failures, 0, `no failed connection across kill and restart (${made} made)`);
    t.same([...seen].sort(), ['a', 'b'], 'balanced throughout');
    for (const x of live) { t.ok(await echoes(x, 'after restart'), 'established connection survives the restart'); x.socket.destroy(); }
  });

  t.test('cleanup removes every program, link and pin', async (t) => {
    await agent.kill('SIGTERM');
    const r = spawnSync(process.execPath, [AGENT, 'cleanup', '--bpffs', agent.bpffs, '--run-dir', agent.runDir], { encoding: 'utf8' });
    t.equal(r.status, 0, r.stderr);
    t.match(r.stdout, /link sm_connect4/);
    t.notOk(existsSync(agent.bpffs), 'bpffs dir removed');
    const tree = spawnSync('bpftool', ['cgroup', 'show', cg.path], { encoding: 'utf8' });
    t.equal(tree.stdout.trim(), '', `no program attached to ${cg.path}`);
    const err = await connectId('127.77.3.1', 8080, { timeoutMs: 2000 }).then(() => null, (e: NodeJS.ErrnoException) => e.code);
    t.equal(err, 'ECONNREFUSED', 'the VIP is no longer balanced (nothing listens on it)');
  });
});

t.test('cleanup touches only what sockmesh pinned, and never a bpffs root', { skip: skip ?? false }, async (t) => {
  const dir = `/sys/fs/bpf/sockmesh-test-foreign-${process.pid}-1`;
  mkdirSync(dir);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const n = native();
  const fd = n.mapCreate(1 /* HASH */, 'other_tool', 4, 4, 4, 0);
  n.objPin(fd, `${dir}/other_tool`);
  n.close(fd);
  const r = spawnSync(process.execPath, [AGENT, 'cleanup', '--bpffs', dir, '--run-dir', `/tmp/sockmesh-test-foreign-${process.pid}`], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.ok(existsSync(`${dir}/other_tool`), 'a pin sockmesh did not make is left alone');
  t.match(r.stdout, /kept/);
  const root = spawnSync(process.execPath, [AGENT, 'cleanup', '--bpffs', '/sys/fs/bpf'], { encoding: 'utf8' });
  t.equal(root.status, 1, 'refused');
  t.match(root.stderr, /bpf filesystem's root/);
});

t.test('a datapath pinned by another ABI version is refused with a clear message', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'abi');
  const agent = await startAgent(t, cg, { config: 'services: []\n' });
  await agent.kill('SIGKILL');
  const n = native();
  const fd = n.objGet(`${agent.bpffs}/sm_config`);
  const cfg = n.mapLookup(fd, Buffer.alloc(4))!;
  t.equal(cfg.readBigUInt64LE(8), BigInt(ABI_VERSION), `the running agent recorded ABI v${ABI_VERSION}`);
  cfg.writeBigUInt64LE(1n, 8);
  n.mapUpdate(fd, Buffer.alloc(4), cfg);
  n.close(fd);
  const err = await agent.restart().then(() => null, (e: Error) => e.message);
  t.match(err, new RegExp(`uses kernel ABI v1, this agent v${ABI_VERSION}`));
  t.match(err, /cleanup/);
});

t.test('the agent refuses the root cgroup unless told explicitly', { skip: skip ?? false }, async (t) => {
  const r = spawnSync(process.execPath, [AGENT, '--cgroup', cgroup2Root()!, '--bpffs', `/sys/fs/bpf/sockmesh-test-root-${process.pid}`,
    '--run-dir', `/tmp/sockmesh-test-root-${process.pid}`], { encoding: 'utf8', timeout: 20000 });
  t.equal(r.status, 1, 'exit code 1');
  t.match(r.stderr, /refusing to attach to the root cgroup/);
  t.notOk(existsSync(`/sys/fs/bpf/sockmesh-test-root-${process.pid}`), 'nothing pinned');
});

t.test('a bad config at start: clear error, exit 1, nothing loaded', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'badstart');
  const err = await startAgent(t, cg, { config: 'services:\n  - name: Bad_Name\n    vips: [300.1.1.1]\n' }).then(() => null, (e: Error) => e.message);
  t.match(err, /exited with 1/);
  t.match(err, /services\[0\]\.name/);
  t.match(err, /services\[0\]\.vips\[0\]/);
});
