// Socket-level load balancing at connect(): real programs, real sockets, the real agent, in a cgroup of our own.
import t from 'tap';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { MapReader } from '../../agent/datapath/inspect.js';
import { connectId, sleep, distribution, idServer, udpAsk, udpServer, type IdServer } from '../lib/net.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const share = (m: Map<string, number>, id: string, n: number): number => (m.get(id) ?? 0) / n;

t.test('load balancing at connect()', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'lb');
  const servers: IdServer[] = [];
  for (const id of ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']) servers.push(await idServer(id));
  const v6 = [await idServer('v6a', '::1'), await idServer('v6b', '::1')];
  const udp = [await udpServer('u1'), await udpServer('u2')];
  const udp6 = [await udpServer('u6', '::1')];
  t.teardown(async () => { for (const s of [...servers, ...v6]) await s.close(); for (const u of [...udp, ...udp6]) u.close(); });
  const [a, b, c, d, e, f, g, h] = servers as [IdServer, IdServer, IdServer, IdServer, IdServer, IdServer, IdServer, IdServer];
  const be = (s: IdServer, weight = 1, address = '127.0.0.1'): string => `{ address: "${address}", port: ${s.port}, weight: ${weight} }`;

  const agent = await startAgent(t, cg, {
    config: `
services:
  - name: weighted
    vips: [127.77.1.1]
    ports: [{ port: 8080 }]
    algorithm: weighted
    backends: [${be(a, 1)}, ${be(b, 2)}, ${be(c, 3)}]
  - name: random
    vips: [127.77.1.2]
    ports: [{ port: 8080 }]
    backends: [${be(d)}, ${be(e)}]
  - name: maglev
    vips: [127.77.1.3]
    ports: [{ port: 8080 }]
    algorithm: maglev
    backends: [${be(f)}, ${be(g)}, ${be(h)}]
  - name: sticky
    vips: [127.77.1.4]
    ports: [{ port: 8080 }]
    algorithm: random
    affinity: { timeoutSeconds: 60 }
    backends: [${be(d)}, ${be(e)}, ${be(f)}]
  - name: empty
    vips: [127.77.1.5]
    ports: [{ port: 8080 }]
    backends: []
  - name: dual
    vips: [127.77.1.6, "::1"]
    ports: [{ port: 8086 }]
    backends: [${be(v6[0]!, 1, '::1')}, ${be(v6[1]!, 1, '::1')}, ${be(a)}]
  - name: dns
    vips: [127.77.1.53]
    ports: [{ port: 53, protocol: udp }]
    backends: [{ address: 127.0.0.1, port: ${udp[0]!.port} }, { address: 127.0.0.1, port: ${udp[1]!.port} }]
  - name: dns6
    vips: ["::1"]
    ports: [{ port: 5353, protocol: udp }]
    backends: [{ address: "::1", port: ${udp6[0]!.port} }]
  - name: shortaffinity
    vips: [127.77.1.7]
    ports: [{ port: 8080 }]
    affinity: { timeoutSeconds: 1 }
    backends: [${be(a)}, ${be(b)}, ${be(c)}]
`,
  });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  cg.enter('client');

  t.test('weighted: shares follow weights 1:2:3 within 5 points (n=1200)', async (t) => {
    const n = 1200;
    const m = await distribution('127.77.1.1', 8080, n);
    t.comment(`shares a=${share(m, 'a', n).toFixed(3)} b=${share(m, 'b', n).toFixed(3)} c=${share(m, 'c', n).toFixed(3)} (want .167 .333 .500)`);
    t.ok(Math.abs(share(m, 'a', n) - 1 / 6) < 0.05, 'a ~ 1/6');
    t.ok(Math.abs(share(m, 'b', n) - 2 / 6) < 0.05, 'b ~ 2/6');
    t.ok(Math.abs(share(m, 'c', n) - 3 / 6) < 0.05, 'c ~ 3/6');
    t.equal([...m.keys()].sort().join(), 'a,b,c', 'only the service\'s backends answer');
  });

  t.test('random: even split within 6 points (n=800)', async (t) => {
    const n = 800;
    const m = await distribution('127.77.1.2', 8080, n);
    t.comment(`shares d=${share(m, 'd', n).toFixed(3)} e=${share(m, 'e', n).toFixed(3)}`);
    t.ok(Math.abs(share(m, 'd', n) - 0.5) < 0.06);
    t.ok(Math.abs(share(m, 'e', n) - 0.5) < 0.06);
  });

  t.test('maglev: each of 3 backends gets 1/3 within 6 points (n=900)', async (t) => {
    const n = 900;
    const m = await distribution('127.77.1.3', 8080, n);
    t.comment(`shares f=${share(m, 'f', n).toFixed(3)} g=${share(m, 'g', n).toFixed(3)} h=${share(m, 'h', n).toFixed(3)}`);
    for (const id of ['f', 'g', 'h']) t.ok(Math.abs(share(m, id, n) - 1 / 3) < 0.06, `${id} ~ 1/3`);
  });

  t.test('session affinity: every connection of this client goes to one backend', async (t) => {
    const m = await distribution('127.77.1.4', 8080, 100, 5);
    t.equal(m.size, 1, `one backend answered (${[...m.entries()].map(([k, v]) => `${k}=${v}`).join(' ')})`);
  });

  t.test('getpeername shows the VIP, not the backend', async (t) => {
    const conn = await connectId('127.77.1.2', 8080, { keep: true });
    t.equal(conn.remoteAddress, '127.77.1.2');
    t.equal(conn.remotePort, 8080);
    // The connection is really to a backend: it echoes.
    conn.socket.write('ping\n');
    const echoed = await new Promise<string>((r) => conn.socket.once('data', (d) => r(d.toString())));
    t.equal(echoed, 'ping\n');
    conn.socket.destroy();
  });

  t.test('a service without backends fails connect() at once with EPERM', async (t) => {
    const t0 = performance.now();
    const err = await connectId('127.77.1.5', 8080).then(() => null, (e: NodeJS.ErrnoException) => e);
    const ms = performance.now() - t0;
    t.equal(err?.code, 'EPERM', `errno ${err?.code}`);
    t.ok(ms < 500, `failed in ${ms.toFixed(1)} ms (not a hang or timeout)`);
  });

  t.test('IPv6 VIP: balanced to IPv6 backends only, getpeername shows the VIP', async (t) => {
    const m = await distribution('::1', 8086, 200, 10);
    t.same([...m.keys()].sort(), ['v6a', 'v6b'], 'both v6 backends, never the v4 one');
    const conn = await connectId('::1', 8086, { keep: true });
    t.equal(conn.remoteAddress, '::1');
    t.equal(conn.remotePort, 8086);
    conn.socket.destroy();
  });

  t.test('IPv4 VIP reached from a dual-stack (AF_INET6) socket via its v4-mapped address', async (t) => {
    const conn = await connectId('::ffff:127.77.1.6', 8086, { keep: true });
    t.equal(conn.id, 'a', 'the v4 backend answered');
    t.equal(conn.remoteAddress, '::ffff:127.77.1.6', 'getpeername shows the mapped VIP');
    t.equal(conn.remotePort, 8086);
    conn.socket.destroy();
    const direct = await connectId('127.77.1.6', 8086);
    t.equal(direct.id, 'a', 'the same service through an AF_INET socket');
  });

  t.test('UDP: a DNS-style request to the VIP gets its answer, from the VIP', async (t) => {
    const seen = new Set<string>();
    for (let i = 0; i < 40; i++) {
      const r = await udpAsk('127.77.1.53', 53, `q${i}`);
      t.match(r.text, new RegExp(`^u[12]:q${i}$`));
      t.equal(`${r.from}:${r.fromPort}`, '127.77.1.53:53', 'recvfrom() reports the VIP');
      seen.add(r.text.split(':')[0]!);
    }
    t.same([...seen].sort(), ['u1', 'u2'], 'both UDP backends answered over 40 requests');
  });

  t.test('UDP over IPv6: the answer comes from the VIP', async (t) => {
    const r = await udpAsk('::1', 5353, 'q6');
    t.equal(r.text, 'u6:q6');
    t.equal(`[${r.from}]:${r.fromPort}`, '[::1]:5353');
  });

  t.test('affinity expires after its timeout, and holds within it', async (t) => {
    const rounds: string[][] = [];
    for (let i = 0; i < 8; i++) {
      const ids: string[] = [];
      for (let j = 0; j < 4; j++) ids.push((await connectId('127.77.1.7', 8080)).id);
      rounds.push(ids);
      await sleep(1150);
    }
    t.ok(rounds.every((r) => new Set(r).size === 1), `within the timeout one backend: ${rounds.map((r) => r.join('')).join(' ')}`);
    t.ok(new Set(rounds.map((r) => r[0])).size > 1, 'after the timeout a new backend may be chosen (8 rounds, 3 backends)');
  });

  t.test('per-service and per-backend counters count what happened', async (t) => {
    const fe = reader.frontends();
    const weighted = fe.find((f) => f.vip === '127.77.1.1')!;
    const total = weighted.backends.reduce((n, b) => n + b.counters.connections, 0);
    t.equal(total, 1200, 'weighted: 1200 connections over its backends');
    const stats = reader.stats();
    const byId = new Map(stats.services.map((s) => [s.serviceId, s.counters]));
    t.equal(byId.get(weighted.serviceId)?.connections, 1200, 'and on the service');
    const empty = fe.find((f) => f.vip === '127.77.1.5')!;
    t.equal(byId.get(empty.serviceId)?.noBackend, 1, 'the refused connect() is counted as no-backend');
    const dns = fe.find((f) => f.vip === '127.77.1.53')!;
    t.equal(byId.get(dns.serviceId)?.udpMessages, 40, '40 unconnected UDP requests');
    const sticky = fe.find((f) => f.vip === '127.77.1.4')!;
    t.ok((byId.get(sticky.serviceId)?.affinityHits ?? 0) >= 99, `affinity hits ${byId.get(sticky.serviceId)?.affinityHits}`);
    t.ok(stats.global.lb_connect! >= 1200 + 800 + 900 + 100, `global connects ${stats.global.lb_connect}`);
    t.equal(stats.global.lb_no_backend, 1);
  });
});
