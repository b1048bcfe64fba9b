// gRPC answers say how they went in grpc-status, on HTTP 200: a retry must still avoid the backend that answered
// UNAVAILABLE, and outlier detection must count it (agent/proxy/outcome.ts: one verdict for both, and for retry_on).
// End to end with a real gRPC client (Python grpcio; @grpc/grpc-js where python3-grpcio is not installed) through the
// proxy engine and the real policy, in front of two h2c backends answering like gRPC servers.
import t, { type Test } from 'tap';
import { execFile, spawnSync } from 'node:child_process';
import { createServer as createH2Server, type Http2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { BackendStates } from '../../agent/health/states.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { ProxyServer } from '../../agent/proxy/server.js';
import { ANSWERED, FAILED, FAILED_GATEWAY, NOT_BACKEND, verdict } from '../../agent/proxy/outcome.js';
import { countOutcome } from '../../agent/proxy/outlier.js';
import { RetryRules } from '../../agent/proxy/retry.js';
import type { OutlierDetection } from '../../agent/model/l7.js';
import { backend, captureLog, http, model, retry, route, seeded, service } from '../lib/l7model.js';

const VIP = '127.100.0.1';
const CALLS = 400;

interface GrpcBackend { server: Http2Server; port: number; hits: number }

/** an h2c server answering every call like a gRPC server: grpcStatus 0 = OK with a message, else trailers-only */
async function grpcBackend(grpcStatus: number): Promise<GrpcBackend> {
  const b: GrpcBackend = { server: createH2Server(), port: 0, hits: 0 };
  b.server.on('stream', (stream) => {
    b.hits++;
    stream.resume();
    stream.on('end', () => {
      if (grpcStatus !== 0) {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(grpcStatus), 'grpc-message': 'down' }, { endStream: true });
        return;
      }
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(Buffer.from([0, 0, 0, 0, 2, 0x08, 0x01]));
    });
  });
  await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  return b;
}

/** the first python3 that has grpcio (pyenv's may not: Debian's python3-grpcio is /usr/bin/python3's) */
function pythonWithGrpc(): string | undefined {
  for (const py of ['python3', '/usr/bin/python3']) {
    if (spawnSync(py, ['-c', 'import grpc'], { stdio: 'ignore' }).status === 0) return py;
  }
  return undefined;
}

const PY_CLIENT = `
import grpc, json, sys
port, calls = sys.argv[1], int(sys.argv[2])
ch = grpc.insecure_channel('127.0.0.1:' + port)
call = ch.unary_unary('/pkg.Svc/Get')
ok, failed = 0, {}
for _ in range(calls):
    try:
        call(b'', timeout=10)
        ok += 1
    except grpc.RpcError as e:
        failed[e.code().name] = failed.get(e.code().name, 0) + 1
print(json.dumps({'ok': ok, 'failed': failed}))
`;

interface Result { ok: number; failed: Record<string, number> }

/** CALLS sequential unary calls through the proxy on one channel */
async function callMany(port: number): Promise<Result> {
  const py = pythonWithGrpc();
  if (py !== undefined) {
    // (asynchronously: the proxy runs in this process)
    const out = await new Promise<string>((resolve, reject) => {
      execFile(py, ['-c', PY_CLIENT, String(port), String(CALLS)], { timeout: 120_000 }, (err, stdout, stderr) =>
        (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
    });
    return JSON.parse(out) as Result;
  }
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const out: Result = { ok: 0, failed: {} };
  try {
    for (let i = 0; i < CALLS; i++) {
      await new Promise<void>((resolve) => {
        client.makeUnaryRequest('/pkg.Svc/Get', (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), { deadline: Date.now() + 10_000 }, (err) => {
          if (err) { const name = grpc.status[err.code]; out.failed[name] = (out.failed[name] ?? 0) + 1; } else out.ok++;
          resolve();
        });
      });
    }
  } finally { client.close(); }
  return out;
}

async function setup(t: Test, outlierDetection?: OutlierDetection): Promise<{ port: number; bad: GrpcBackend; good: GrpcBackend; states: BackendStates; policy: ProxyPolicy }> {
  const bad = await grpcBackend(14);
  const good = await grpcBackend(0);
  const states = new BackendStates();
  const { log } = captureLog('error');
  const policy = new ProxyPolicy({ states, log, random: seeded(11) });
  policy.update(model(service('rpc', VIP, 80, [backend(bad.port), backend(good.port)], http({
    routes: [route('all', { retry: retry({ attempts: 2, retryOn: ['unavailable'] }) })],
    outlierDetection,
  }))), () => undefined);
  const proxy = new ProxyServer({ policy, log, originalDst: () => ({ vip: VIP, port: 80, cgroupId: 1n }) });
  await proxy.listen(0, ['127.0.0.1']);
  t.teardown(async () => {
    await proxy.close();
    states.close();
    for (const b of [bad, good]) { b.server.close(); }
  });
  return { port: proxy.ports()[0]!, bad, good, states, policy };
}

t.test(`a retried UNAVAILABLE goes to the other backend: ${CALLS} calls, none fails (${pythonWithGrpc() ? 'Python grpcio' : '@grpc/grpc-js'})`, async (t) => {
  const { port, bad, good } = await setup(t);
  const r = await callMany(port);
  t.same(r.failed, {}, 'no call failed');
  t.equal(r.ok, CALLS);
  // Each call ends on the good backend exactly once; the bad one is tried only as a first pick (about half of them),
  // never again for the same call. Choosing at random on each try would give it about 7/4 of that and fail 1 in 8.
  t.equal(good.hits, CALLS, 'every call answered by the good backend, once');
  t.ok(bad.hits > CALLS * 0.3 && bad.hits < CALLS * 0.7, `the failing backend only as first pick (${bad.hits})`);
  t.equal(bad.hits + good.hits, CALLS + bad.hits, 'at most one retry per call');
});

t.test('outlier detection counts a trailers-only UNAVAILABLE as a gateway error: the backend is ejected', async (t) => {
  const od: OutlierDetection = { consecutive5xx: 0, consecutiveGatewayErrors: 3, baseEjectionMs: 60_000, maxEjectionMs: 60_000, maxEjectionPercent: 50 };
  const { port, bad, good, states, policy } = await setup(t, od);
  const r = await callMany(port);
  t.same(r.failed, {}, 'no call failed');
  const key = `127.0.0.1:${bad.port}`;
  t.ok(states.isOut('rpc', key), 'the UNAVAILABLE backend is ejected');
  t.match(policy.backendsReport().find((b) => b.backend === key)?.reason ?? '', /3 consecutive gateway errors/);
  t.equal(bad.hits, 3, 'ejected after its third UNAVAILABLE: no traffic since');
  t.equal(good.hits, CALLS);
});

t.test('one verdict: gRPC statuses mapped to HTTP as Envoy maps them, for outlier detection and retry_on alike', async (t) => {
  const g = (grpcStatus: number, status = 200) => ({ kind: 'response' as const, status, grpcStatus });
  t.equal(verdict(g(14)), FAILED_GATEWAY, 'UNAVAILABLE = 503');
  t.equal(verdict(g(4)), FAILED_GATEWAY, 'DEADLINE_EXCEEDED = 504');
  for (const c of [2, 12, 13, 15]) t.equal(verdict(g(c)), FAILED, `code ${c} = 5xx`);
  for (const c of [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 16]) t.equal(verdict(g(c)), ANSWERED, `code ${c}: the backend answered`);
  t.equal(verdict(g(0, 503)), FAILED_GATEWAY, 'an HTTP 5xx is a failure whatever grpc-status it carries');
  t.equal(verdict({ kind: 'response', status: 503 }), FAILED_GATEWAY);
  t.equal(verdict({ kind: 'response', status: 500 }), FAILED);
  t.equal(verdict({ kind: 'response', status: 404 }), ANSWERED);
  t.equal(verdict({ kind: 'reset' }), FAILED_GATEWAY);
  t.equal(verdict({ kind: 'cancelled' }), NOT_BACKEND);
  t.equal(verdict({ kind: 'overflow', limit: 'max-pending-requests' }), NOT_BACKEND);
  const od: OutlierDetection = { consecutive5xx: 2, consecutiveGatewayErrors: 0, baseEjectionMs: 1, maxEjectionMs: 1, maxEjectionPercent: 100 };
  const c = { consecutive5xx: 0, consecutiveGatewayErrors: 0 };
  t.equal(countOutcome(c, g(13), od), undefined);
  t.equal(countOutcome(c, g(3), od), undefined, 'INVALID_ARGUMENT resets the count');
  t.equal(countOutcome(c, g(13), od), undefined);
  t.equal(countOutcome(c, g(2), od), 'consecutive-5xx');
  const x5 = new RetryRules(retry({ retryOn: ['5xx'], retryNonIdempotent: true }));
  t.ok(x5.covers(g(13)) && x5.covers(g(14)), '5xx covers what the verdict calls a failure');
  t.notOk(x5.covers(g(3)) || x5.covers(g(0)));
  const gw = new RetryRules(retry({ retryOn: ['gateway-error'], retryNonIdempotent: true }));
  t.ok(gw.covers(g(14)) && gw.covers(g(4)));
  t.notOk(gw.covers(g(13)));
  // without retryNonIdempotent a gRPC call is retried only on the codes named in retryOn (and connect failures)
  t.notOk(x5.coversSafe(g(14)), 'safe mode: 5xx does not cover a gRPC status');
  t.ok(new RetryRules(retry({ retryOn: ['unavailable'] })).coversSafe(g(14)));
});
