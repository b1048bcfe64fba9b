// The L7 path end to end: the kernel redirects connect() to an L7 service's VIP to the agent's proxy, which routes,
// rewrites headers, authorizes by the client's cgroup (workload) and forwards to a backend; with the proxy gone the
// kernel fails open or closed per service. Real agent, real programs in a test cgroup, real HTTP and gRPC.
import t from 'tap';
import { connect as netConnect } from 'node:net';
import { request, createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { MapReader } from '../../agent/datapath/inspect.js';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { sleep } from '../lib/net.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

interface HttpBackend { id: string; port: number; server: Server; seen: { path: string; headers: IncomingHttpHeaders }[] }

/** An HTTP backend that answers with its id and remembers what it was asked. */
async function httpBackend(id: string): Promise<HttpBackend> {
  const b: HttpBackend = { id, port: 0, server: undefined as unknown as Server, seen: [] };
  b.server = createServer((req, res) => {
    b.seen.push({ path: req.url ?? '', headers: req.headers });
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain', server: 'test-backend', 'x-backend': id });
      res.end(id);
    });
  });
  b.server.keepAliveTimeout = 500;
  await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  return b;
}

interface Reply { status: number; headers: IncomingHttpHeaders; body: string }

function get(host: string, port: number, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path, method, headers, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout ${method} ${host}:${port}${path}`)));
    req.on('error', reject);
    req.end();
  });
}

/** connect() only: resolves with the time it took, rejects with the socket error (EPERM when refused). */
function tcpConnect(host: string, port: number): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const s = netConnect({ host, port });
    s.on('connect', () => { s.destroy(); resolve(performance.now() - t0); });
    s.on('error', (e) => reject(e));
  });
}

t.test('L7 path through the kernel redirect', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'l7');
  // The agent runs in a child of the meshed cgroup (as a DaemonSet pod under kubepods): its own upstream connections
  // are exempt from the redirect by cgroup id, and both legs are sockmap candidates.
  const agentCgroup = cg.child('agent');
  cg.enter('client');
  const v1 = await httpBackend('v1');
  const v2 = await httpBackend('v2');
  const open = await httpBackend('open');
  t.teardown(async () => {
    for (const b of [v1, v2, open]) { b.server.closeAllConnections(); await new Promise((r) => b.server.close(r)); }
  });
  const clientCgroup = `/${cg.path.split('/').slice(-1)[0]}/client`;
  const config = `
workloads:
  - name: frontend
    cgroups: [${clientCgroup}]
services:
  - name: web
    vips: [127.88.0.1]
    ports: [{ port: 80 }]
    backends:
      - { address: 127.0.0.1, port: ${v1.port} }
      - { address: 127.0.0.1, port: ${v2.port}, group: canary }
    http:
      failMode: closed
      routes:
        - name: canary
          match: { path: { prefix: /canary } }
          split: [{ group: canary, weight: 1 }]
          requestHeaders: { set: { x-from-mesh: "1" }, remove: [x-debug] }
          responseHeaders: { set: { x-mesh-route: canary }, remove: [server] }
        - name: rest
          responseHeaders: { set: { x-mesh-route: rest } }
  - name: secure
    vips: [127.88.0.2]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${v1.port} }]
    http:
      failMode: closed
      authz:
        default: deny
        rules:
          - { name: no-admin, action: deny, paths: [{ prefix: /admin }] }
          - { name: frontend-get, action: allow, from: [frontend], methods: [GET] }
  - name: lenient
    vips: [127.88.0.3]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${open.port} }]
    http:
      failMode: open
      routes:
        - name: all
          responseHeaders: { set: { x-mesh-route: all } }
`;
  const agent = await startAgent(t, cg, { config, inCgroup: agentCgroup, extraArgs: ['--proxy-heartbeat-ms', '200'] });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());

  t.test('routes by path, rewrites headers both ways, and the app still sees the VIP', async (t) => {
    const r1 = await get('127.88.0.1', 80, '/canary/x', { 'x-debug': 'secret' });
    t.equal(r1.status, 200);
    t.equal(r1.body, 'v2', '/canary goes to the canary group');
    t.equal(r1.headers['x-mesh-route'], 'canary', 'response header set by the route');
    t.equal(r1.headers.server, undefined, 'response header removed by the route');
    const seen = v2.seen.at(-1)!;
    t.equal(seen.headers['x-from-mesh'], '1', 'request header set');
    t.equal(seen.headers['x-debug'], undefined, 'request header removed');
    const r2 = await get('127.88.0.1', 80, '/other');
    t.equal(r2.body, 'v1', 'the rest goes to the default group');
    t.equal(r2.headers['x-mesh-route'], 'rest');
    t.equal(r2.headers.server, 'test-backend', 'untouched where the route says nothing');

    // getpeername() on the application's socket shows the VIP, not the proxy
    const peer = await new Promise<string>((resolve, reject) => {
      const s = netConnect({ host: '127.88.0.1', port: 80 }, () => { resolve(`${s.remoteAddress}:${s.remotePort}`); s.destroy(); });
      s.on('error', reject);
    });
    t.equal(peer, '127.88.0.1:80');
  });

  t.test('the app-to-proxy leg is on the sockmap fast path', async (t) => {
    const before = reader.stats(new Map()).global;
    for (let i = 0; i < 20; i++) t.equal((await get('127.88.0.1', 80, '/other')).status, 200);
    const after = reader.stats(new Map()).global;
    const redirects = after.redirect! - before.redirect!;
    t.comment(`sk_msg redirects for 20 requests: ${redirects}; l7 hand-overs: ${after.l7_handoff! - before.l7_handoff!}`);
    t.equal(after.redirect_miss, before.redirect_miss, 'no send missed its peer');
    t.ok(redirects >= 20, 'requests and responses were handed over socket to socket');
  });

  t.test('authorization by workload: deny rules first, then allow, then the default', async (t) => {
    const ok = await get('127.88.0.2', 80, '/data');
    t.equal(ok.status, 200, 'frontend may GET');
    const admin = await get('127.88.0.2', 80, '/admin/x');
    t.equal(admin.status, 403, 'a deny rule wins over an allow rule that also matches');
    t.equal(admin.headers['x-sockmesh-denied'], 'no-admin');
    const post = await get('127.88.0.2', 80, '/data', {}, 'POST');
    t.equal(post.status, 403, 'no allow rule for POST: default deny');
    t.equal(post.headers['x-sockmesh-denied'], 'default-deny');
    cg.enter('other');
    try {
      const other = await get('127.88.0.2', 80, '/data');
      t.equal(other.status, 403, 'another cgroup is not the frontend workload');
    } finally {
      cg.enter('client');
    }
  });

  t.test('gRPC through the redirect: unary and server streaming with status and trailers intact', async (t) => {
    const ser = (b: Buffer): Buffer => b;
    const def = {
      Echo: { path: '/test.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: ser, requestDeserialize: ser, responseSerialize: ser, responseDeserialize: ser },
      Count: { path: '/test.Echo/Count', requestStream: false, responseStream: true, requestSerialize: ser, requestDeserialize: ser, responseSerialize: ser, responseDeserialize: ser },
    } as const;
    const server = new grpc.Server();
    server.addService(def as unknown as grpc.ServiceDefinition, {
      Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
        if (call.request.toString() === 'fail') {
          const md = new grpc.Metadata();
          md.set('x-why', 'asked to');
          return cb({ code: grpc.status.FAILED_PRECONDITION, details: 'you asked for it', metadata: md });
        }
        cb(null, call.request);
      },
      Count: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
        const n = Number(call.request.toString());
        for (let i = 0; i < n; i++) call.write(Buffer.from(String(i)));
        const md = new grpc.Metadata();
        md.set('x-total', String(n));
        call.end(md);
      },
    });
    const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    t.teardown(() => server.forceShutdown());
    const n = agent.logs.length;
    agent.writeConfig(`${config}
  - name: grpc
    vips: [127.88.0.4]
    ports: [{ port: 50051 }]
    backends: [{ address: 127.0.0.1, port: ${port} }]
    http: { failMode: closed }
`);
    await agent.waitLog((l) => l.msg === 'config applied' && agent.logs.indexOf(l) >= n);
    const Client = grpc.makeGenericClientConstructor(def as unknown as grpc.ServiceDefinition, 'Echo');
    const client = new Client('127.88.0.4:50051', grpc.credentials.createInsecure()) as unknown as {
      Echo(req: Buffer, cb: (e: grpc.ServiceError | null, r?: Buffer) => void): void;
      Count(req: Buffer): grpc.ClientReadableStream<Buffer>;
      close(): void;
    };
    t.teardown(() => client.close());
    const echoed = await new Promise<string>((res, rej) => client.Echo(Buffer.from('hello'), (e, r) => (e ? rej(e) : res(r!.toString()))));
    t.equal(echoed, 'hello', 'unary call');
    const err = await new Promise<grpc.ServiceError>((res) => client.Echo(Buffer.from('fail'), (e) => res(e!)));
    t.equal(err.code, grpc.status.FAILED_PRECONDITION, 'grpc-status passed through');
    t.equal(err.details, 'you asked for it', 'grpc-message passed through');
    t.same(err.metadata.get('x-why'), ['asked to'], 'trailer metadata passed through');
    const got: string[] = [];
    const trailers = await new Promise<grpc.Metadata>((res, rej) => {
      const call = client.Count(Buffer.from('5'));
      call.on('data', (d: Buffer) => got.push(d.toString()));
      call.on('status', (s: grpc.StatusObject) => res(s.metadata));
      call.on('error', rej);
    });
    t.same(got, ['0', '1', '2', '3', '4'], 'server streaming');
    t.same(trailers.get('x-total'), ['5'], 'trailers at the end of a stream');
  });

  t.test('with the proxy gone the kernel fails closed or open per service', async (t) => {
    await agent.kill('SIGKILL');
    // heartbeat every 200 ms, dead after 3 missed beats
    await sleep(1000);
    const refused = await tcpConnect('127.88.0.1', 80).then(() => null, (e: NodeJS.ErrnoException) => e);
    t.ok(refused, 'fail closed: connect() to the L7 service is refused');
    t.equal(refused?.code, 'EPERM', 'refused by the kernel at once');
    const t0 = performance.now();
    await tcpConnect('127.88.0.1', 80).catch(() => {});
    t.ok(performance.now() - t0 < 100, `refused within 100 ms (${(performance.now() - t0).toFixed(1)} ms)`);
    const direct = await get('127.88.0.3', 80, '/x');
    t.equal(direct.status, 200, 'fail open: the kernel balances straight to a backend');
    t.equal(direct.body, 'open');
    t.equal(direct.headers['x-mesh-route'], undefined, 'no proxy in the path: no L7 rule applied');

    await agent.restart();
    let back: Reply | undefined;
    for (let i = 0; i < 50 && back?.headers['x-mesh-route'] !== 'all'; i++) {
      back = await get('127.88.0.3', 80, '/x').catch(() => undefined);
      if (back?.headers['x-mesh-route'] !== 'all') await sleep(100);
    }
    t.equal(back?.headers['x-mesh-route'], 'all', 'proxy back: L7 rules apply again');
    const again = await get('127.88.0.1', 80, '/other');
    t.equal(again.body, 'v1', 'the fail-closed service works again');
  });
});

t.test('an agent in the meshed cgroup itself is refused (its cgroup is exempt from the redirect)', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'l7self');
  const err = await startAgent(t, cg, { config: 'services: []\n', inCgroup: cg.path }).then(() => null, (e: Error) => e);
  t.ok(err, 'the agent did not start');
  t.match(err?.message ?? '', /runs in the meshed cgroup .* itself/, 'and says why');
});
