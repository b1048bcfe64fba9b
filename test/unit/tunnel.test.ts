// The HBONE tunnel (agent/tunnel/) end to end on loopback, real sockets and real TLS: an app connects to a hand-over
// listener (what the kernel hands connections to), the client pool carries each connection in a CONNECT stream over
// one mTLS connection to the server, which connects to an echo "pod". Checked: bytes exact both ways (8 MiB), half-close
// passed on, one handshake for many connections, reconnect after the server went away, refusals by reason (not a local
// workload, denied, pod not listening, not a CONNECT), and bad input on the server's port (garbage, TLS 1.2, no client
// certificate, another CA's, an expired one, a slow-handshake flood) refused with a log line while it keeps serving.
import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { connect as h2connect } from 'node:http2';
import { connect as netConnect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import pino from 'pino';
import { TunnelClient } from '../../agent/tunnel/client.js';
import { TunnelMetrics } from '../../agent/tunnel/metrics.js';
import { parseAuthority, TunnelServer } from '../../agent/tunnel/server.js';
import { TunnelError, type TunnelRequest } from '../../agent/tunnel/types.js';
import { StaticCerts, TestCa } from '../lib/certs.js';
import { Registry } from 'prom-client';
import { LocalPods } from '../../agent/identity/pods.js';
import { TunnelHost } from '../../agent/tunnelhost.js';
import { renderTunnels } from '../../cli/commands/tunnels.js';
import { modelFromObject } from '../../agent/model/config.js';

const TD = 'cluster.local';
const NODE_ID = `spiffe://${TD}/sockmesh/node/node-b`;
const CLIENT_ID = `spiffe://${TD}/ns/shop/sa/web`;
const DENIED_ID = `spiffe://${TD}/ns/shop/sa/intruder`;

function memLog(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  return { lines, log: pino({ level: 'info' }, { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, unknown>); } }) };
}

/** An echo pod: everything back; on the client's FIN it sends "<n> bytes" and then its own FIN (half-close). */
async function echoPod(t: Test): Promise<number> {
  const s = createServer({ allowHalfOpen: true }, (c) => {
    let n = 0;
    c.on('data', (d: Buffer) => { n += d.length; c.write(d); });
    c.on('end', () => c.end(`[${n} bytes]`));
    c.on('error', () => {});
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => s.close(() => r())));
  return (s.address() as AddressInfo).port;
}

const freePort = async (): Promise<number> => {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
};

/** Send `data`, half-close, read to the end. */
function roundTrip(port: number, data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const c = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => c.end(data));
    const got: Buffer[] = [];
    c.on('data', (d: Buffer) => got.push(d));
    c.on('end', () => { c.destroy(); resolve(Buffer.concat(got)); });
    c.on('error', reject);
  });
}

interface Setup {
  server: TunnelServer; serverPort: number; client: TunnelClient; pod: number; handover: number;
  sm: TunnelMetrics; cm: TunnelMetrics; slog: ReturnType<typeof memLog>; certs: StaticCerts; ca: TestCa;
  req(dst?: { address: string; port: number }, source?: string): TunnelRequest;
}

async function setup(t: Test, serverOpts: { handshakeTimeoutMs?: number; maxPendingHandshakes?: number; port?: number } = {}): Promise<Setup> {
  const ca = await TestCa.create();
  const certs = new StaticCerts([await ca.issue(NODE_ID), await ca.issue(CLIENT_ID), await ca.issue(DENIED_ID)]);
  const pod = await echoPod(t);
  const sm = new TunnelMetrics(), cm = new TunnelMetrics();
  const slog = memLog();
  const serverPort = serverOpts.port ?? await freePort();
  const server = new TunnelServer({
    certs, identity: NODE_ID, addresses: ['127.0.0.1'], port: serverPort, metrics: sm, log: slog.log,
    isLocal: (a) => a === '127.0.0.1',
    authorize: (q) => (q.source === DENIED_ID ? { allow: false, policy: 'deny-intruder' } : { allow: true }),
    ...serverOpts,
  });
  await server.start();
  t.teardown(() => server.stop());
  const client = new TunnelClient({ certs, metrics: cm, log: memLog().log, timeoutMs: 5000 });
  t.teardown(() => client.close());
  const req = (dst = { address: '127.0.0.1', port: pod }, source = CLIENT_ID): TunnelRequest =>
    ({ source, dst, node: { name: 'node-b', address: '127.0.0.1', port: serverPort } });
  // the hand-over listener: every accepted connection is carried through the tunnel to the pod
  const ho: Server = createServer({ allowHalfOpen: true }, (sock: Socket) => { client.open(req(), sock).catch(() => {}); });
  await new Promise<void>((r) => ho.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => ho.close(() => r())));
  return { server, serverPort, client, pod, handover: (ho.address() as AddressInfo).port, sm, cm, slog, certs, ca, req };
}

async function refusedWith(t: Test, p: Promise<unknown>, reason: string, status: number, msg: string): Promise<void> {
  const e = await p.then(() => null, (err: unknown) => err);
  t.ok(e instanceof TunnelError, `${msg}: a TunnelError`);
  t.same([(e as TunnelError).reason, (e as TunnelError).status], [reason, status], msg);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

t.test('authority parsing', async (t) => {
  t.same(parseAuthority('10.0.0.1:80'), { address: '10.0.0.1', port: 80 });
  t.same(parseAuthority('[2001:db8::1]:8080'), { address: '2001:db8::1', port: 8080 });
  for (const bad of [undefined, '', 'example.com:80', '10.0.0.1', '10.0.0.1:0', '10.0.0.1:70000', '2001:db8::1:80', '[nope]:80']) {
    t.equal(parseAuthority(bad), undefined, `refused: ${JSON.stringify(bad)}`);
  }
});

t.test('many connections over one pooled mTLS connection, bytes exact, half-close both ways', async (t) => {
  const s = await setup(t);
  const big = randomBytes(8 * 1024 * 1024);
  const got = await roundTrip(s.handover, big);
  t.equal(got.length, big.length + `[${big.length} bytes]`.length, 'all bytes back, then the pod\'s answer to the FIN');
  t.equal(sha(got.subarray(0, big.length)), sha(big), '8 MiB byte-exact through the tunnel');
  t.equal(got.subarray(big.length).toString(), `[${big.length} bytes]`, 'the app\'s FIN reached the pod, which still answered (half-close)');
  const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => roundTrip(s.handover, Buffer.from(`hello ${i}`))));
  t.ok(answers.every((a, i) => a.toString() === `hello ${i}[${`hello ${i}`.length} bytes]`), '40 concurrent connections, each its own answer');
  const out = s.cm.totals('out'), inn = s.sm.totals('in');
  t.equal(out.handshakes, 1, 'one handshake for 41 connections (the pool)');
  t.equal(inn.handshakes, 1, 'the server saw one handshake');
  t.equal(out.streamsTotal, 41, '41 streams');
  t.equal(inn.streamsTotal, 41);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(s.sm.totals('in').streamsOpen, 0, 'no stream left open');
  t.ok(out.bytesOut >= big.length && inn.bytesIn >= big.length, 'bytes counted on both ends');
  const peers = s.sm.report().peers;
  t.same(peers.map((p) => [p.direction, p.identity]), [['in', CLIENT_ID]], 'the server knows the peer by its SPIFFE id');
});

t.test('refusals: not local, denied, pod not listening, not a CONNECT', async (t) => {
  const s = await setup(t);
  await refusedWith(t, s.client.connect(s.req({ address: '127.0.0.3', port: s.pod })), 'not-local', 421, 'a destination that is not a workload of the node: 421');
  await refusedWith(t, s.client.connect(s.req(undefined, DENIED_ID)), 'denied', 403, 'an identity the policy denies: 403');
  const closed = await freePort();
  await refusedWith(t, s.client.connect(s.req({ address: '127.0.0.1', port: closed })), 'upstream-failed', 503, 'a pod port nobody listens on: 503');
  t.match(s.sm.refusals('in'), { 'not-local': 1, denied: 1, 'upstream-failed': 1 }, 'counted by reason');
  t.ok(s.slog.lines.some((l) => l.reason === 'denied' && l.policy === 'deny-intruder' && l.identity === DENIED_ID), 'the denial is logged with the identity and the policy');
  t.ok(s.slog.lines.some((l) => l.reason === 'not-local' && /not a workload on this node/.test(String(l.msg))), 'the non-local CONNECT is logged');
  // a GET on the same mTLS session (an h2 client that is not HBONE)
  const m = s.certs.get(CLIENT_ID)!;
  const session = h2connect(`https://127.0.0.1:${s.serverPort}`, { key: m.key, cert: m.chain, ca: m.bundle, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
  const status = await new Promise<number>((res, rej) => {
    const r = session.request({ ':path': '/' });
    r.on('response', (h) => res(Number(h[':status'])));
    r.on('error', rej);
    r.end();
  });
  session.close();
  t.equal(status, 400, 'a GET is answered 400');
  // the app on the hand-over side sees a reset, not a hang, when the tunnel refuses
  const app = s.client.open(s.req({ address: '127.0.0.3', port: 1 }), await new Promise<Socket>((res) => {
    const srv = createServer((sock) => { res(sock); srv.close(); });
    srv.listen(0, '127.0.0.1', () => { const c = netConnect((srv.address() as AddressInfo).port, '127.0.0.1'); c.on('error', () => {}); });
  }));
  await t.rejects(app, { name: 'TunnelError', message: /refused with 421/ }, 'open() rejects with a TunnelError');
  t.same(await roundTrip(s.handover, Buffer.from('still serving')).then((b) => b.toString()), 'still serving[13 bytes]', 'and the tunnel keeps serving');
});

t.test('reconnect after the server went away (GOAWAY)', async (t) => {
  const s = await setup(t);
  t.equal((await roundTrip(s.handover, Buffer.from('one'))).toString(), 'one[3 bytes]');
  await s.server.stop();
  const again = new TunnelServer({
    certs: s.certs, identity: NODE_ID, addresses: ['127.0.0.1'], port: s.serverPort, metrics: s.sm, log: s.slog.log, isLocal: () => true,
  });
  await again.start();
  t.teardown(() => again.stop());
  t.equal((await roundTrip(s.handover, Buffer.from('two'))).toString(), 'two[3 bytes]', 'the next connection dials a new tunnel');
  t.equal(s.cm.totals('out').handshakes, 2, 'one new handshake');
  t.equal(s.client.connections, 1, 'one pooled connection');
});

t.test('stop() lets a handshake under way finish and serves its CONNECT: a planned restart cuts no client that connected', async (t) => {
  const s = await setup(t);
  const m = s.certs.get(CLIENT_ID)!;
  // accepted by the server (its handshake is under way there) but no ClientHello yet when stop() is called
  const raw = netConnect({ host: '127.0.0.1', port: s.serverPort });
  await new Promise<void>((r) => raw.once('connect', () => r()));
  await new Promise((r) => setTimeout(r, 100));
  let stoppedAt = 0;
  const stopped = s.server.stop().then(() => { stoppedAt = performance.now(); });
  const session = h2connect(`https://127.0.0.1:${s.serverPort}`, {
    createConnection: () => tlsConnect({ socket: raw, key: m.key, cert: m.chain, ca: m.bundle, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined }),
  });
  session.on('error', () => {});
  const got = await new Promise<{ status: unknown; body: string }>((resolve, reject) => {
    const st = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${s.pod}` });
    let status: unknown;
    let body = '';
    st.on('response', (h) => { status = h[':status']; st.end('late'); });
    st.on('data', (d: Buffer) => { body += d.toString(); });
    st.on('end', () => resolve({ status, body }));
    st.on('error', reject);
    setTimeout(() => reject(new Error('no answer in 5 s')), 5000);
  }).catch((e: Error) => ({ status: e.message, body: '' }));
  const endedAt = performance.now();
  t.same(got, { status: 200, body: 'late[4 bytes]' }, 'the CONNECT of a handshake that began before stop() was served, bytes exact');
  await stopped;
  t.ok(stoppedAt >= endedAt, 'stop() resolved only after that session was done');
  session.destroy();
});

t.test('the client checks it reached the node it dialled: another node\'s identity, a workload\'s, are refused', async (t) => {
  const s = await setup(t);
  const other = `spiffe://${TD}/sockmesh/node/node-c`;
  // node-c's agent (a real node identity from the same CA) answers on the address the client dials for node-b
  const port = await freePort();
  const certs = new StaticCerts([await s.ca.issue(other), s.certs.get(CLIENT_ID)!]);
  const impostor = new TunnelServer({ certs, identity: other, addresses: ['127.0.0.1'], port, metrics: new TunnelMetrics(), log: memLog().log, isLocal: () => true });
  await impostor.start();
  t.teardown(() => impostor.stop());
  const clog = memLog();
  const client = new TunnelClient({ certs: s.certs, metrics: new TunnelMetrics(), log: clog.log, timeoutMs: 5000 });
  t.teardown(() => client.close());
  const req: TunnelRequest = { source: CLIENT_ID, dst: { address: '127.0.0.1', port: s.pod }, node: { name: 'node-b', address: '127.0.0.1', port } };
  const e = await client.connect(req).then(() => null, (err: unknown) => err as TunnelError);
  t.equal(e?.reason, 'bad-certificate', 'refused as a bad certificate');
  t.match(e?.message, /presented spiffe:\/\/cluster\.local\/sockmesh\/node\/node-c, not the identity of the node dialled \(spiffe:\/\/cluster\.local\/sockmesh\/node\/node-b\)/, 'the error names both identities');
  t.equal(impostor.listening().length, 1);
  t.equal(client.connections, 0, 'nothing pooled');
  // the same server is accepted when it is the node dialled
  const st = await client.connect({ ...req, node: { ...req.node, name: 'node-c' } });
  t.equal(await new Promise<string>((res) => { let b = ''; st.on('data', (d: Buffer) => { b += d.toString(); }); st.on('end', () => res(b)); st.end('ok'); }), 'ok[2 bytes]', 'dialled as node-c, it is accepted');
  // a server presenting a workload's identity is no node's
  t.throws(() => new TunnelServer({ certs, identity: CLIENT_ID, addresses: ['127.0.0.1'], port, metrics: new TunnelMetrics(), log: memLog().log, isLocal: () => true }),
    /expected a node identity spiffe:\/\/<trust domain>\/sockmesh\/node\/<node>/, 'a server cannot be built on a workload identity');
  // a node name that cannot be a node identity: refused before dialling
  const bad = await client.connect({ ...req, node: { ...req.node, name: 'Node_B' } }).then(() => null, (err: unknown) => err as TunnelError);
  t.same([bad?.reason, /node name "Node_B"/.test(bad?.message ?? '')], ['bad-request', true], 'a bad node name: bad-request, named');
  // a client presenting a node identity is refused by the server: clients present their source workload's
  const nm = await s.ca.issue(`spiffe://${TD}/sockmesh/node/node-a`);
  const sess = h2connect(`https://127.0.0.1:${s.serverPort}`, { key: nm.key, cert: nm.chain, ca: nm.bundle, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
  sess.on('error', () => {});
  await new Promise((res) => sess.once('close', res));
  t.ok(s.slog.lines.some((l) => l.reason === 'no-identity' && /node-a is a node agent's identity; a tunnel client presents its source workload's/.test(String(l.msg))),
    'the server refuses a node identity as a client, and says why');
});

/** A TLS client of the server with the given options; resolves with how it ended. */
function tlsTry(port: number, opts: Record<string, unknown>): Promise<string> {
  return new Promise((resolve) => {
    const c = tlsConnect({ host: '127.0.0.1', port, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined, rejectUnauthorized: false, ...opts });
    c.on('secureConnect', () => { c.write(Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')); });
    c.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code ?? e.message}`));
    c.on('close', () => resolve('closed'));
    setTimeout(() => { c.destroy(); resolve('timeout'); }, 3000);
  });
}

t.test('bad input on the tunnel port: refused with a log line, and the server keeps serving', async (t) => {
  const s = await setup(t, { handshakeTimeoutMs: 400, maxPendingHandshakes: 8 });
  const other = await TestCa.create('another root');
  const foreign = await other.issue(CLIENT_ID);
  const expired = await s.ca.issue(CLIENT_ID, { notBefore: new Date(Date.now() - 48 * 3600_000), notAfter: new Date(Date.now() - 3600_000) });
  const noSpiffe = await s.ca.issue(CLIENT_ID, { uris: ['https://example.com/'] });
  const good = s.certs.get(CLIENT_ID)!;
  // garbage
  await new Promise<void>((res) => {
    const c = netConnect(s.serverPort, '127.0.0.1', () => c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    c.on('close', () => res()); c.on('error', () => {});
  });
  t.not(await tlsTry(s.serverPort, { maxVersion: 'TLSv1.2', key: good.key, cert: good.chain }), 'timeout', 'a TLS 1.2 client is refused');
  t.not(await tlsTry(s.serverPort, {}), 'timeout', 'no client certificate: refused');
  for (const [what, m] of [['another CA', foreign], ['expired', expired], ['no SPIFFE id', noSpiffe]] as const) {
    t.not(await tlsTry(s.serverPort, { key: m.key, cert: m.chain }), 'timeout', `${what}: refused`);
  }
  await new Promise((r) => setTimeout(r, 100));
  const refused = s.sm.refusals('in');
  t.ok(refused['bad-handshake']! >= 2, 'garbage and TLS 1.2 counted as bad handshakes');
  t.equal(refused['no-certificate'], 1, 'no certificate counted');
  t.equal(refused['bad-certificate'], 2, 'another CA\'s and the expired one counted');
  t.equal(refused['no-identity'], 1, 'a certificate without a SPIFFE id counted');
  const msgs = s.slog.lines.map((l) => `${String(l.msg)} ${String(l.error ?? '')}`).join('\n');
  t.match(msgs, /TLS 1\.3 only/, 'the TLS 1.2 refusal says why');
  t.match(msgs, /certificate has expired|CERT_HAS_EXPIRED/i, 'the expired certificate is named as such');
  t.match(msgs, /unable to (get|verify)|self[- ]signed|UNABLE_TO/i, 'another CA\'s certificate is named as such');

  // a slow-handshake flood: 30 connections that never speak; 8 wait for the timeout, the rest are closed at accept
  const flood = await Promise.all(Array.from({ length: 30 }, () => new Promise<Socket>((res) => {
    const c = netConnect(s.serverPort, '127.0.0.1', () => res(c)); c.on('error', () => {});
  })));
  await new Promise((r) => setTimeout(r, 900));
  t.ok(flood.every((c) => c.destroyed || c.readableEnded), 'every flooding connection was closed (at accept or by the handshake timeout)');
  t.ok((s.sm.refusals('in')['too-many-handshakes'] ?? 0) >= 20, 'the ones over the bound were closed at accept');
  t.ok((s.sm.refusals('in')['handshake-timeout'] ?? 0) >= 1, 'the pending ones timed out');
  t.ok(s.slog.lines.filter((l) => l.reason === 'too-many-handshakes').length < 5, 'the flood does not flood the log');
  for (const c of flood) c.destroy();
  t.equal((await roundTrip(s.handover, Buffer.from('after'))).toString(), 'after[5 bytes]', 'the tunnel still serves');
  t.equal(s.server.pendingHandshakes, 0, 'no handshake is counted as pending any more');
  // new handshakes too, many times over the bound: no refused or timed-out handshake is left counted as pending
  for (let i = 0; i < 12; i++) {
    const fresh = new TunnelClient({ certs: s.certs, metrics: new TunnelMetrics(), log: memLog().log, timeoutMs: 5000 });
    const st = await fresh.connect(s.req());
    const echoed = await new Promise<string>((res) => { let b = ''; st.on('data', (d: Buffer) => { b += d.toString(); }); st.on('end', () => res(b)); st.end('x'); });
    t.equal(echoed, 'x[1 bytes]', `a new client ${i + 1}: handshake and CONNECT`);
    fresh.close();
  }
});

t.test('the agent\'s wiring (TunnelHost): local pods served, Prometheus families, meshctl tunnels', async (t) => {
  const ca = await TestCa.create();
  const certs = new StaticCerts([await ca.issue(NODE_ID), await ca.issue(CLIENT_ID)]);
  const pod = await echoPod(t);
  const pods = new LocalPods();
  const registry = new Registry();
  const port = await freePort();
  const host = new TunnelHost({ certs, identity: NODE_ID, addresses: ['127.0.0.1'], port, pods, registry, log: memLog().log });
  await host.start();
  t.teardown(() => host.stop());
  const req: TunnelRequest = { source: CLIENT_ID, dst: { address: '127.0.0.1', port: pod }, node: { name: 'node-b', address: '127.0.0.1', port } };
  await refusedWith(t, host.client.connect(req), 'not-local', 421, 'before the pod is known as local: 421');
  pods.set('test', [{ addresses: ['127.0.0.1'] } as unknown as Parameters<LocalPods['set']>[1][number]]);
  const st = await host.client.connect(req);
  t.equal(await new Promise<string>((res) => { let b = ''; st.on('data', (d: Buffer) => { b += d.toString(); }); st.on('end', () => res(b)); st.end('hi'); }), 'hi[2 bytes]',
    'once LocalPods has the address, the server connects to it');
  await new Promise((r) => setTimeout(r, 50));
  const rep = host.report();
  t.same(rep.listening, [`127.0.0.1:${port}`], 'the report says where the server listens');
  t.same(rep.peers.map((p) => [p.direction, p.peer, p.identity]).sort(), [['in', '127.0.0.1', CLIENT_ID], ['out', 'node-b', CLIENT_ID]]);
  const text = renderTunnels(rep).join('\n');
  t.match(text, /^listening on 127\.0\.0\.1:\d+/m);
  t.match(text, /out\s+node-b\s+spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web\s+1\s+1\s+0\s+1\s/m, 'meshctl tunnels: out row (1 conn, 1 handshake, 0 open, 1 stream: the refused one is not one)');
  t.match(text, /refused by this node's server: not-local 1/);
  const prom = await registry.metrics();
  t.match(prom, /sockmesh_tunnel_handshakes_total\{direction="out",peer="node-b",identity="spiffe:\/\/cluster.local\/ns\/shop\/sa\/web"\} 1/);
  t.match(prom, /sockmesh_tunnel_refusals_total\{direction="in",reason="not-local"\} 1/);
});

t.test('TunnelHost from the model: listens where nodes[] names this node once the node certificate comes, moves, authorizes by policy', async (t) => {
  const ca = await TestCa.create();
  const certs = new StaticCerts([await ca.issue(CLIENT_ID), await ca.issue(DENIED_ID)]);
  const pod = await echoPod(t);
  const pods = new LocalPods();
  pods.set('test', [{ addresses: ['127.0.0.1'] } as unknown as Parameters<LocalPods['set']>[1][number]]);
  const { log, lines } = memLog();
  const host = new TunnelHost({ certs, identity: NODE_ID, nodeName: 'node-b', pods, registry: new Registry(), log });
  t.teardown(() => host.stop());
  const [p1, p2] = [await freePort(), await freePort()];
  // the config as an operator writes it (modelFromObject validates it into the model)
  const model = (port: number, name = 'node-b') => modelFromObject({
    services: [{ name: 'echo', vips: ['10.96.0.1'], ports: [{ port: 80, targetPort: pod }], backends: [{ address: '127.0.0.1', port: pod }] }],
    nodes: [{ name, addresses: ['127.0.0.1', '::1'], tunnelPort: port }],
    authorization: [{ name: 'no-intruder', action: 'DENY', services: ['echo'], from: [{ principals: ['cluster.local/ns/shop/sa/intruder'] }] }],
  }, 'test.yaml');
  host.update(model(p1, 'node-a'));
  await host.start();
  t.match(host.state, /off: the model's nodes\[\] has no node named node-b \(this agent's --node-id\)/, 'nodes[] without this node: off, said why');
  t.ok(lines.some((l) => l.level === 50 && /has no node named node-b/.test(String(l.msg))), 'and logged as an error');
  host.update(model(p1));
  await new Promise((r) => setTimeout(r, 50));
  t.match(host.state, /waiting for the node certificate \(spiffe:\/\/cluster\.local\/sockmesh\/node\/node-b\)/, 'named but no certificate yet: waiting');
  t.same(host.report().listening, []);
  t.match(renderTunnels(host.report()).join('\n'), /not listening \(waiting for the node certificate.*\)\nnode identity spiffe:\/\/cluster\.local\/sockmesh\/node\/node-b: no certificate yet/, 'meshctl tunnels says so');
  const nodeCert = await ca.issue(NODE_ID);
  certs.set(nodeCert);
  const until = async (ok: () => boolean): Promise<void> => { const end = Date.now() + 5000; while (!ok() && Date.now() < end) await new Promise((r) => setTimeout(r, 20)); };
  await until(() => host.state === 'listening');
  t.same(host.report().listening, [`127.0.0.1:${p1}`, `[::1]:${p1}`], 'the certificate came: listening on the node\'s addresses (one per family) and tunnelPort');
  t.match(renderTunnels(host.report()).join('\n'), new RegExp(`node identity spiffe://cluster\\.local/sockmesh/node/node-b, certificate ${nodeCert.serial}, expires`), 'meshctl tunnels shows the node certificate');
  t.same(host.peer('node-b', 6), { name: 'node-b', address: '::1', port: p1 }, 'peer(): a node\'s tunnel end by family, for TunnelRequest.node');
  t.equal(host.peer('node-x', 4), undefined);

  const req = (port: number, source = CLIENT_ID): TunnelRequest => ({ source, dst: { address: '127.0.0.1', port: pod }, node: { name: 'node-b', address: '127.0.0.1', port } });
  const st = await host.client.connect(req(p1));
  t.equal(await new Promise<string>((res) => { let b = ''; st.on('data', (d: Buffer) => { b += d.toString(); }); st.on('end', () => res(b)); st.end('a'); }), 'a[1 bytes]', 'through the tunnel to the pod');
  await refusedWith(t, host.client.connect(req(p1, DENIED_ID)), 'denied', 403, 'the model\'s DENY policy applies to tunnelled connections');

  host.update(model(p2));
  await until(() => host.report().listening?.[0] === `127.0.0.1:${p2}`);
  t.same(host.report().listening, [`127.0.0.1:${p2}`, `[::1]:${p2}`], 'tunnelPort changed: the server moved');
  const st2 = await host.client.connect(req(p2));
  t.equal(await new Promise<string>((res) => { let b = ''; st2.on('data', (d: Buffer) => { b += d.toString(); }); st2.on('end', () => res(b)); st2.end('b'); }), 'b[1 bytes]', 'and serves there');
  host.update(modelFromObject({ services: [] }, 'test.yaml'));
  await until(() => host.report().listening?.length === 0);
  t.match(host.state, /off: the model names no nodes/, 'nodes[] gone: the server stops');
});

t.test('open() waits for a local workload\'s certificate that is on its way, refuses any other identity at once', async (t) => {
  const s = await setup(t);
  const LATE = `spiffe://${TD}/ns/shop/sa/late`;
  class Pending extends StaticCerts { readonly want = new Set<string>(); wanted(id: string): boolean { return this.want.has(id); } }
  const certs = new Pending([s.certs.get(CLIENT_ID)!]);
  certs.want.add(LATE);
  const client = new TunnelClient({ certs, metrics: new TunnelMetrics(), log: memLog().log, timeoutMs: 3000 });
  t.teardown(() => client.close());
  const t0 = Date.now();
  const waiting = client.connect(s.req(undefined, LATE));
  setTimeout(() => void s.ca.issue(LATE).then((m) => certs.set(m)), 300);
  const st = await waiting;
  t.ok(Date.now() - t0 >= 250, `waited for the certificate (${Date.now() - t0} ms), then connected`);
  t.equal(await new Promise<string>((res) => { let b = ''; st.on('data', (d: Buffer) => { b += d.toString(); }); st.on('end', () => res(b)); st.end('late'); }), 'late[4 bytes]', 'and its stream reached the pod');
  const other = await client.connect(s.req(undefined, `spiffe://${TD}/ns/shop/sa/stranger`)).then(() => null, (e: unknown) => e as TunnelError);
  t.same([other?.reason, /not the identity of a workload on this node/.test(other?.message ?? '')], ['no-certificate', true], 'an identity that is no local workload\'s: refused at once, said why');
  certs.want.add(`spiffe://${TD}/ns/shop/sa/never`);
  const never = await client.connect(s.req(undefined, `spiffe://${TD}/ns/shop/sa/never`)).then(() => null, (e: unknown) => e as TunnelError);
  t.match(never?.message, /no certificate for spiffe:\/\/cluster\.local\/ns\/shop\/sa\/never after 3000 ms \(the CA has not issued it yet: see meshctl certs\)/, 'one that never comes: refused after the timeout');
});
