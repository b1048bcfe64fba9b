// The L7 proxy's upstreams through the tunnel (proxy/tunnelup.ts), without a kernel: the policy gives an attempt to a
// tunnelled backend an upstream per (backend, client identity), and the pools key connections by it, so one client's
// upstream connection (HTTP/1.1) or session (HTTP/2) is never reused for another identity and is reused for the same
// one; a denial at the destination is not retried and not held against the backend; TunnelConn carries real bytes,
// half-close and errors over a real socket standing in for the tunnel stream.
import t from 'tap';
import { createServer as h1Server } from 'node:http';
import { createServer as h2Server } from 'node:http2';
import { connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { BackendStates } from '../../agent/health/states.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { H1Pool, ACQ_PENDING, type H1Upstream, type UpstreamUser } from '../../agent/proxy/h1pool.js';
import { H2Pool, type UpstreamSession } from '../../agent/proxy/h2pool.js';
import { GroupBreaker } from '../../agent/proxy/breaker.js';
import { TunnelConn, UpstreamDenied, retarget, tunnelledUpstream, type TunnelSlot } from '../../agent/proxy/tunnelup.js';
import type { Attempt, Exchange, OriginalDst, Upstream } from '../../agent/proxy/types.js';
import { ProxyServer } from '../../agent/proxy/server.js';
import { ProxyTunnel } from '../../agent/proxytunnel.js';
import type { TunnelClient } from '../../agent/tunnel/client.js';
import { TunnelError, type TunnelRequest } from '../../agent/tunnel/types.js';
import { request as httpRequest } from 'node:http';
import type { Duplex } from 'node:stream';
import { backend, captureLog, head, http, model, retry, route, seeded, service } from '../lib/l7model.js';

const A = 'spiffe://cluster.local/ns/shop/sa/web', B = 'spiffe://cluster.local/ns/shop/sa/ops';

function plainSlot(port: number): TunnelSlot {
  const group = new GroupBreaker({ maxConnections: 100, maxPendingRequests: 100, maxRequests: 100, maxRetries: 3 });
  return { upstream: { key: `127.0.0.1:${port}`, address: '127.0.0.1', family: 4, port, group }, tunnel: undefined, viaTunnel: undefined };
}

t.test('an upstream per (backend, identity)', async (t) => {
  const s = plainSlot(80);
  t.equal(tunnelledUpstream(s, A), s.upstream, 'not tunnelled: the backend\'s own upstream');
  retarget(s, { node: 'n2', strict: true });
  const a1 = tunnelledUpstream(s, A), a2 = tunnelledUpstream(s, A), b = tunnelledUpstream(s, B);
  t.equal(a1, a2, 'the same identity: the same upstream (the pools reuse its connections)');
  t.not(a1.key, b.key, 'another identity: another key');
  t.same([a1.key, a1.tunnel?.source, a1.tunnel?.node], [`127.0.0.1:80 as ${A}`, A, 'n2']);
  t.equal(a1.group, s.upstream.group, 'the backend group\'s breaker counts them all');
  const anon = tunnelledUpstream(s, undefined);
  t.same([anon.tunnel?.source, anon === s.upstream], [undefined, false], 'strict, no identity: an upstream that fails as denied');
  retarget(s, { node: 'n2', strict: true });
  t.equal(tunnelledUpstream(s, A), a1, 'the same target again: kept');
  retarget(s, { node: 'n2', strict: false });
  t.not(tunnelledUpstream(s, A), a1, 'the target changed: made anew');
  t.equal(tunnelledUpstream(s, undefined), s.upstream, 'permissive, no identity: the backend directly (plaintext)');
  retarget(s, undefined);
  t.equal(tunnelledUpstream(s, A), s.upstream, 'no longer tunnelled');
});

t.test('the policy: attempts to a tunnelled backend as the client\'s identity; a denial neither retried nor held against it', async (t) => {
  const states = new BackendStates();
  t.teardown(() => states.close());
  const p = new ProxyPolicy({
    states, log: captureLog().log, random: seeded(3),
    tunnel: () => (_svc, _address, port) => (port === 8081 ? { node: 'n2', strict: true } : undefined),
  });
  const od = { consecutive5xx: 0, consecutiveGatewayErrors: 1, baseEjectionMs: 10_000, maxEjectionMs: 10_000, maxEjectionPercent: 100 };
  const m = model(service('web', '127.100.0.1', 80, [backend(8081)], http({
    outlierDetection: od, routes: [route('all', { retry: retry({ retryOn: ['connect-failure'], attempts: 2 }) })],
  })));
  m.workloads = [{ name: 'a', identity: A }, { name: 'b', identity: B }, { name: 'x' }] as typeof m.workloads;
  p.update(m, (cg) => (cg === 1n ? 'a' : cg === 2n ? 'b' : cg === 3n ? 'x' : undefined));
  const dst: OriginalDst = { vip: '127.100.0.1', port: 80, cgroupId: 0n };
  const attempt = (cgroupId: bigint): [Exchange, Attempt] => {
    const x = p.begin(dst, { address: '127.0.0.1', port: 1, cgroupId }, head()) as Exchange;
    return [x, x.attempt(1) as Attempt];
  };
  const [x1, a1] = attempt(1n), [x2, a2] = attempt(1n), [x3, b1] = attempt(2n), [x4, n1] = attempt(3n);
  t.equal(a1.upstream, a2.upstream, 'two requests of one identity: one upstream');
  t.same([a1.upstream.tunnel?.source, b1.upstream.tunnel?.source], [A, B], 'each opened as its client\'s identity');
  t.not(a1.upstream.key, b1.upstream.key, 'keyed apart in the pools');
  t.same([n1.upstream.tunnel?.source, n1.upstream.tunnel?.strict], [undefined, true], 'a client with no identity to a strict backend');
  for (const [x, a] of [[x1, a1], [x2, a2], [x4, n1]] as const) { a.finish({ kind: 'response', status: 200 }); x.end(200); }

  // the destination denied B: the engine says so in the attempt's outcome; the exchange gives up at once, nothing ejected
  b1.finish({ kind: 'connect-failure', denied: true });
  t.equal(x3.retryDelay(1, { kind: 'connect-failure', denied: true }, true), null, 'a denial is not retried');
  x3.end(503);
  t.notOk(states.isOut('web', '127.0.0.1:8081'), 'and not held against the backend (one gateway error would eject it)');
  // an ordinary connect failure still is
  const [x5, a5] = attempt(1n);
  a5.finish({ kind: 'connect-failure' });
  t.not(x5.retryDelay(1, { kind: 'connect-failure' }, true), null, 'an ordinary connect failure is retried');
  x5.end(503);
  t.ok(states.isOut('web', '127.0.0.1:8081'), 'and counted by outlier detection');
});

/** a real socket standing in for the tunnel's stream */
const viaSocket = (port: number): Promise<Socket> => new Promise((res, rej) => { const s = connect(port, '127.0.0.1'); s.once('connect', () => res(s)); s.once('error', rej); });

async function listening(s: Server): Promise<number> {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  return (s.address() as AddressInfo).port;
}

t.test('H1Pool: connections per identity, reused for the same one only', async (t) => {
  const server = h1Server((req, res) => res.end(`${req.url}`));
  server.keepAliveTimeout = 30_000;
  const port = await listening(server);
  t.teardown(() => { server.closeAllConnections(); server.close(); });
  const s = plainSlot(port);
  retarget(s, { node: 'n2', strict: true });
  const dials: string[] = [];
  const pool = new H1Pool({ log: captureLog().log, connect: (up) => { dials.push(up.key); return new TunnelConn(up.address, up.port, viaSocket(port)); } });
  t.teardown(() => pool.close());
  const get = (up: Upstream, path: string): Promise<{ body: string; conn: H1Upstream }> => new Promise((resolve, reject) => {
    let body = '';
    const user: UpstreamUser = {
      upReady: (c) => { c.begin(user, false); c.socket.write(`GET ${path} HTTP/1.1\r\nhost: x\r\n\r\n`); },
      upConnectFailed: () => reject(new Error('connect failed')),
      upHead: () => {},
      upData: (_c, d) => { body += d.toString(); },
      upEnd: (c) => { c.release(true); resolve({ body, conn: c }); },
      upFail: (_c, why) => reject(new Error(why)),
      upDrain: () => {}, upFlush: () => {}, fatal: reject,
    };
    const got = pool.acquire(up, user);
    if (got !== ACQ_PENDING && typeof got !== 'number') user.upReady(got);
  });
  const ua = tunnelledUpstream(s, A), ub = tunnelledUpstream(s, B);
  const r1 = await get(ua, '/a1');
  const r2 = await get(ua, '/a2');
  const r3 = await get(ub, '/b1');
  const r4 = await get(ub, '/b2');
  t.same([r1.body, r2.body, r3.body, r4.body], ['/a1', '/a2', '/b1', '/b2'], 'the answers, through TunnelConn over a real socket');
  t.equal(r1.conn, r2.conn, 'A\'s second request reused A\'s connection');
  t.not(r3.conn, r1.conn, 'B never got A\'s idle connection');
  t.equal(r3.conn, r4.conn, 'B reused its own');
  t.same(dials, [ua.key, ub.key], 'one dial per identity');
});

t.test('H2Pool: sessions per identity', async (t) => {
  const server = h2Server((_req, res) => res.end('ok'));
  const port = await listening(server);
  t.teardown(() => server.close());
  const s = plainSlot(port);
  retarget(s, { node: 'n2', strict: true });
  const dials: string[] = [];
  const pool = new H2Pool(captureLog().log, 30_000, 5_000, (up) => { dials.push(up.key); return new TunnelConn(up.address, up.port, viaSocket(port)); });
  t.teardown(() => pool.close());
  const w = { sessionReady: () => {} };
  const ua = tunnelledUpstream(s, A), ub = tunnelledUpstream(s, B);
  const a1 = pool.acquire(ua, w) as UpstreamSession, a2 = pool.acquire(ua, w) as UpstreamSession, b1 = pool.acquire(ub, w) as UpstreamSession;
  t.equal(a1, a2, 'the same identity: the same session (its streams multiplexed)');
  t.not(b1, a1, 'another identity: its own session');
  t.same(dials, [ua.key, ub.key], 'one dial per identity');
  await new Promise<void>((res) => { const check = (): void => { if (a1.settled && b1.settled) res(); else setTimeout(check, 10); }; check(); });
  t.ok(a1.connected && b1.connected, 'both sessions up over TunnelConn (connect emitted, SETTINGS exchanged)');
});

t.test('TunnelConn: queued writes, half-close, errors', async (t) => {
  // an echo server that ends after the client's FIN
  const echo = (await import('node:net')).createServer({ allowHalfOpen: true }, (c) => { c.pipe(c); });
  const port = await listening(echo);
  t.teardown(() => echo.close());
  const conn = new TunnelConn('127.0.0.1', port, viaSocket(port));
  conn.write('before connect; ');
  const events: string[] = [];
  let got = '';
  conn.on('connect', () => { events.push('connect'); conn.write('after'); conn.end(); });
  conn.on('data', (d) => { got += d.toString(); });
  conn.on('end', () => events.push('end'));
  await new Promise<void>((r) => conn.on('close', () => { events.push('close'); r(); }));
  t.equal(got, 'before connect; after', 'what was written before the stream was up went first, byte-exact');
  t.same(events, ['connect', 'end', 'close'], 'half-close passed on, the peer\'s end, then close');
  t.ok(conn.destroyed);

  const denied = new TunnelConn('127.0.0.1', 1, Promise.reject(new UpstreamDenied('denied by no-legacy')));
  const seen: string[] = [];
  denied.on('connect', () => seen.push('connect'));
  denied.on('error', (e: NodeJS.ErrnoException) => seen.push(`error ${e.code}`));
  await new Promise<void>((r) => denied.on('close', () => { seen.push('close'); r(); }));
  t.same(seen, ['error EACCES', 'close'], 'a refusal: error (EACCES for a denial) then close, never connect');
  t.equal(denied.write('x'), false, 'nothing written after');

  // destroyed before the stream is up: the stream is destroyed when it comes
  let sock: Socket | undefined;
  const early = new TunnelConn('127.0.0.1', port, viaSocket(port).then((s) => (sock = s)));
  early.destroy();
  await new Promise((r) => setTimeout(r, 100));
  t.ok(sock?.destroyed, 'destroyed before connect: the stream is closed once it arrives');
});

t.test('an L4-only change that moves an L7 backend\'s pod to another node: its next attempt goes through the tunnel, without an L7 compile', async (t) => {
  const { proxyTunnelDecider } = await import('../../agent/proxytunnel.js');
  const states = new BackendStates();
  t.teardown(() => states.close());
  let decided = 0;
  const decider = proxyTunnelDecider('n1', () => new Set());
  const p = new ProxyPolicy({ states, log: captureLog().log, random: seeded(5), tunnel: (m) => { decided++; return decider(m); } });
  const pod = '198.18.7.5';
  const web = service('web', '127.100.0.2', 80, [backend(8080, undefined, pod)], http({ routes: [route('all')] }));
  const db = service('db', '127.100.0.3', 5432, [backend(5432, undefined, '198.18.7.9')]);
  const at = (node: string, extra: Partial<typeof web> = {}) => {
    const m = model(web, { ...db, ...extra });
    m.workloads = [{ name: 'a', identity: A, cgroups: [], addresses: [] }, { name: 'api', identity: B, node, cgroups: [], addresses: [pod] }] as typeof m.workloads;
    return m;
  };
  const firstAttempt = () => {
    const x = p.begin({ vip: '127.100.0.2', port: 80, cgroupId: 0n }, { address: '127.0.0.1', port: 1, cgroupId: 1n }, head()) as Exchange;
    const a = x.attempt(1) as Attempt;
    a.finish({ kind: 'response', status: 200 });
    x.end(200);
    return a.upstream;
  };
  p.update(at('n1'), () => 'a');
  t.equal(firstAttempt().tunnel, undefined, 'the pod on this node: reached directly');
  const compiles = decided;
  // the pod moved to n2 in a batch that changed only db (an L4 service): the L7 state is not compiled again
  p.update(at('n2', { algorithm: 'maglev' }), () => 'a', new Set(['db']));
  const up = firstAttempt();
  t.same([up.tunnel?.node, up.tunnel?.source], ['n2', A], 'on n2 now: through the tunnel as the client\'s identity');
  t.equal(decided, compiles + 1, 'decided once for the new workloads');
  // an L4 change that moves no workload decides nothing again (the workloads array is the same)
  const same = at('n2');
  p.update(same, () => 'a', new Set(['db']));
  const n = decided;
  p.update({ ...same, services: [web, { ...db, algorithm: 'random' }] }, () => 'a', new Set(['db']));
  t.equal(decided, n, 'same workloads and modes: nothing re-decided');
  // and back on this node
  p.update(at('n1'), () => 'a', new Set(['db']));
  t.equal(firstAttempt().tunnel, undefined, 'back on n1: directly again');
});

t.test('two concurrent requests of one identity, one denied by the destination and one failing otherwise: judged each by its own connection (issue 13)', async (t) => {
  // a real backend (what the retry reaches), the real proxy (HTTP/1.1 engine, pool) and ProxyTunnel over a tunnel
  // client that answers each CONNECT when the test says: the denial of the first request comes while the second's
  // connect is still under way, and the second then fails for another reason
  const server = h1Server((req, res) => res.end(`ok ${req.url}`));
  const port = await listening(server);
  t.teardown(() => { server.closeAllConnections(); server.close(); });
  const states = new BackendStates();
  const { log } = captureLog('warn');
  const policy = new ProxyPolicy({ states, log, random: seeded(9), tunnel: () => (_svc, _address, p) => (p === port ? { node: 'n2', strict: true } : undefined) });
  const od = { consecutive5xx: 0, consecutiveGatewayErrors: 5, baseEjectionMs: 10_000, maxEjectionMs: 10_000, maxEjectionPercent: 100 };
  const m = model(service('web', '127.100.0.1', 80, [backend(port)], http({
    outlierDetection: od, routes: [route('all', { retry: retry({ retryOn: ['connect-failure'], attempts: 2 }) })],
  })));
  m.workloads = [{ name: 'a', identity: A }] as typeof m.workloads;
  policy.update(m, () => 'a');
  const connects: { req: TunnelRequest; resolve: (d: Duplex) => void; reject: (e: Error) => void }[] = [];
  const arrived: (() => void)[] = [];
  const client = {
    connect: (req: TunnelRequest) => new Promise<Duplex>((resolve, reject) => {
      connects.push({ req, resolve, reject });
      arrived.shift()?.();
    }),
  } as unknown as TunnelClient;
  const tunnel = new ProxyTunnel({ client: () => client, peer: (name) => ({ name, address: '127.0.0.1' }), log });
  const proxy = new ProxyServer({ policy, log, originalDst: () => ({ vip: '127.100.0.1', port: 80, cgroupId: 1n }), connectTimeoutMs: 2000, tunnel: tunnel.connect });
  await proxy.listen(0, ['127.0.0.1']);
  t.teardown(async () => { await proxy.close(); states.close(); });
  const proxyPort = proxy.ports()[0]!;
  const connectNumber = (n: number) => new Promise<void>((r) => (connects.length >= n ? r() : arrived.push(r)));
  const get = (path: string) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: proxyPort, path, agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d) => (body += d)).on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`${path} timed out`)));
    req.on('error', reject).end();
  });

  const first = get('/denied');
  await connectNumber(1);
  const second = get('/unlucky');
  await connectNumber(2);
  t.same(connects.map((c) => c.req.source), [A, A], 'both opened as the same identity (one upstream, two connections)');
  connects[0]!.reject(new TunnelError('denied', 'the destination\'s authorization denied it', 403));
  await new Promise((r) => setTimeout(r, 20));
  connects[1]!.reject(new TunnelError('upstream-failed', 'the pod did not answer', 503));
  // the second request's retry, if it is made: a real connection to the backend (judged denied, it is never made)
  void connectNumber(3).then(async () => connects[2]!.resolve(await viaSocket(port)));
  const [r1, r2] = await Promise.all([first, second]);
  t.equal(r1.status, 503, 'the denied request: 503, not retried');
  t.same([r2.status, r2.body], [200, 'ok /unlucky'], 'the other one: retried (a plain connect failure), and answered');
  t.equal(connects.length, 3, 'three CONNECTs: the denial was not retried, the other failure was');
  t.same(tunnel.report().refused, { denied: 1, 'upstream-failed': 1 });
});
