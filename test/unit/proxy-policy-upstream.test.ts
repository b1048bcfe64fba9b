// The proxy policy's upstream side: balancers, circuit breaker, retry decisions, backoff, budget,
// outlier ejection, metrics.
import t from 'tap';
import { Registry } from 'prom-client';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackendStates } from '../../agent/health/states.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { LeastRequest, RoundRobin, type Slot } from '../../agent/proxy/balancer.js';
import { GroupBreaker } from '../../agent/proxy/breaker.js';
import { RetryRules, backoffMs, budgetAllows, isIdempotent } from '../../agent/proxy/retry.js';
import { countOutcome, ejectionMs, mayEject } from '../../agent/proxy/outlier.js';
import type { Attempt, Exchange, LocalReply, OriginalDst, Outcome, Source, Upstream } from '../../agent/proxy/types.js';
import type { OutlierDetection } from '../../agent/model/l7.js';
import { backend, captureLog, head, http, model, retry, route, seeded, service } from '../lib/l7model.js';

const DST: OriginalDst = { vip: '127.100.0.1', port: 80, cgroupId: 7n };
const SRC: Source = { address: '127.0.0.1', port: 40000, cgroupId: 7n };

function slot(port: number, active = 0): Slot {
  const breaker = new GroupBreaker({ maxConnections: 1, maxPendingRequests: 1, maxRequests: 1, maxRetries: 1 });
  const upstream: Upstream = { key: `127.0.0.1:${port}`, address: '127.0.0.1', family: 4, port, group: breaker };
  return { upstream, active };
}

function isLocal(x: Attempt | LocalReply | Exchange): x is LocalReply {
  return (x as LocalReply).status !== undefined;
}

t.test('least-request P2C prefers the less loaded backend', async (t) => {
  const slots = [slot(1, 0), slot(2, 5), slot(3, 10)];
  const lr = new LeastRequest(seeded(7));
  const n = [0, 0, 0];
  for (let i = 0; i < 30000; i++) n[slots.indexOf(lr.pick(slots, undefined))]!++;
  t.comment(`picks at loads 0/5/10: ${n.join(' / ')}`);
  // With P2C over 3, the least loaded wins whenever it is drawn (2/3 of draws), the middle one when
  // drawn with the most loaded (1/3), the most loaded never.
  t.equal(n[2], 0, 'the most loaded is never picked while two others exist');
  t.ok(Math.abs(n[0]! / 30000 - 2 / 3) < 0.02, `least loaded ~2/3: ${n[0]! / 30000}`);
  t.ok(Math.abs(n[1]! / 30000 - 1 / 3) < 0.02, `middle ~1/3: ${n[1]! / 30000}`);

  // equal loads: even spread (ties broken at random)
  const eq = [slot(1), slot(2), slot(3), slot(4)];
  const m = [0, 0, 0, 0];
  for (let i = 0; i < 40000; i++) m[eq.indexOf(lr.pick(eq, undefined))]!++;
  for (const c of m) t.ok(Math.abs(c / 40000 - 0.25) < 0.02, `equal share ${c / 40000}`);

  // live loop: one backend completes 4x slower than the others; P2C sends it clearly less than 1/4
  const live = [slot(1), slot(2), slot(3), slot(4)];
  const period = [1, 1, 1, 4];
  const picks = [0, 0, 0, 0];
  for (let step = 0; step < 20000; step++) {
    for (let k = 0; k < 3; k++) {
      const s = lr.pick(live, undefined);
      s.active++;
      picks[live.indexOf(s)]!++;
    }
    live.forEach((s, i) => {
      if (step % period[i]! === 0) s.active = Math.max(0, s.active - 1);
    });
  }
  const slowShare = picks[3]! / picks.reduce((x, y) => x + y, 0);
  t.comment(`slow backend share under P2C: ${(slowShare * 100).toFixed(1)}% (random would be 25%)`);
  t.ok(slowShare < 0.15, 'the slow backend gets less work');
});

t.test('P2C skips the backend to avoid when it can', async (t) => {
  const lr = new LeastRequest(seeded(1));
  const s = [slot(1, 0), slot(2, 9), slot(3, 9)];
  let hits = 0;
  for (let i = 0; i < 1000; i++) if (lr.pick(s, s[0]) === s[0]) hits++;
  t.equal(hits, 0, 'never the avoided one (1000 picks)');
  const one = [slot(1)];
  t.equal(lr.pick(one, one[0]), one[0], 'the only backend is used even if avoided');
  const two = [slot(1, 5), slot(2, 0)];
  let other = 0;
  for (let i = 0; i < 50; i++) if (lr.pick(two, two[1]) === two[0]) other++;
  t.equal(other, 50, 'of two, the other one even when it is busier');
});

t.test('round robin: exact order, avoid skips ahead', async (t) => {
  const rr = new RoundRobin();
  const s = [slot(1), slot(2), slot(3)];
  const order = Array.from({ length: 7 }, () => rr.pick(s, undefined).upstream.port);
  t.same(order, [1, 2, 3, 1, 2, 3, 1]);
  t.equal(rr.pick(s, s[1]).upstream.port, 3, 'next would be 2, which is avoided');
  t.equal(rr.pick(s, undefined).upstream.port, 1);
  // the list shrinking (a backend ejected) keeps going
  t.equal(rr.pick([s[0]!, s[2]!], undefined).upstream.port, 3);
});

t.test('breaker: each limit counts on its own and gives back', async (t) => {
  const b = new GroupBreaker({ maxConnections: 2, maxPendingRequests: 1, maxRequests: 3, maxRetries: 1 });
  t.ok(b.tryOpenConnection());
  t.ok(b.tryOpenConnection());
  t.notOk(b.tryOpenConnection(), 'third connection over the limit');
  b.connectionClosed();
  t.ok(b.tryOpenConnection());
  t.ok(b.tryPending());
  t.notOk(b.tryPending());
  b.pendingDone();
  t.ok(b.tryPending());
  t.ok(b.tryRequest() && b.tryRequest() && b.tryRequest());
  t.notOk(b.tryRequest());
  t.ok(b.tryRetry());
  t.notOk(b.tryRetry());
  t.same(b.overflows, { 'max-connections': 1, 'max-pending-requests': 1, 'max-requests': 1, 'max-retries': 1 });
  t.equal(b.maxConnections, 2);
});

t.test('retry_on coverage, idempotency', async (t) => {
  const r = (on: string[], codes: number[] = []) => new RetryRules(retry({ retryOn: on as never, retriableStatusCodes: codes }));
  const resp = (status: number, grpcStatus?: number): Outcome => ({ kind: 'response', status, grpcStatus });
  const cf: Outcome = { kind: 'connect-failure' };
  const reset: Outcome = { kind: 'reset' };
  const to: Outcome = { kind: 'timeout' };
  const x5 = r(['5xx']);
  t.ok(x5.covers(resp(500)) && x5.covers(resp(503)) && x5.covers(cf) && x5.covers(reset) && x5.covers(to));
  t.notOk(x5.covers(resp(404)) || x5.covers(resp(200)));
  const gw = r(['gateway-error']);
  t.ok(gw.covers(resp(502)) && gw.covers(resp(503)) && gw.covers(resp(504)) && gw.covers(cf));
  t.notOk(gw.covers(resp(500)), '500 is no gateway error');
  const only = r(['reset']);
  t.ok(only.covers(reset));
  t.notOk(only.covers(cf) || only.covers(to) || only.covers(resp(503)));
  t.ok(r(['connect-failure']).covers(cf));
  t.notOk(r(['connect-failure']).covers(reset));
  t.ok(r(['timeout']).covers(to));
  const codes = r(['retriable-status-codes'], [409, 429]);
  t.ok(codes.covers(resp(409)) && codes.covers(resp(429)));
  t.notOk(codes.covers(resp(500)));
  t.notOk(r(['5xx'], [409]).covers(resp(409)), 'codes only with retriable-status-codes');
  const grpc = r(['unavailable', 'resource-exhausted']);
  t.ok(grpc.covers(resp(200, 14)) && grpc.covers(resp(200, 8)));
  t.notOk(grpc.covers(resp(200, 13)) || grpc.covers(resp(200, 0)) || grpc.covers(resp(200)));
  t.notOk(x5.covers({ kind: 'overflow', limit: 'max-pending-requests' }), 'an overflow is not retried');
  for (const m of ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']) t.ok(isIdempotent(m), m);
  for (const m of ['POST', 'PATCH', 'CONNECT', 'PROPFIND']) t.notOk(isIdempotent(m), m);
  t.notOk(x5.mayRetry('POST'));
  t.ok(new RetryRules(retry({ retryNonIdempotent: true })).mayRetry('POST'));
  t.notOk(new RetryRules(retry({ attempts: 0 })).mayRetry('GET'));
  // gRPC calls are POSTs: without retryNonIdempotent only connect failures and the named gRPC codes
  const g = new RetryRules(retry({ retryOn: ['5xx', 'unavailable'] }));
  t.equal(g.mode('POST', true), 2, 'safe mode');
  t.equal(g.mode('POST', false), 0);
  t.equal(new RetryRules(retry({ retryNonIdempotent: true })).mode('POST', true), 1);
  t.ok(g.coversSafe(resp(200, 14)));
  t.ok(g.coversSafe(cf));
  t.notOk(g.coversSafe(resp(503)), 'a 5xx may have been processed');
  t.notOk(g.coversSafe(reset));
  t.notOk(g.coversSafe(resp(200, 13)));
});

t.test('backoff: full jitter within [0, min(max, base * 2^(n-1)))', async (t) => {
  const rnd = seeded(5);
  for (let n = 1; n <= 8; n++) {
    const cap = Math.min(1000, 25 * 2 ** (n - 1));
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < 2000; i++) {
      const d = backoffMs(n, 25, 1000, rnd);
      lo = Math.min(lo, d);
      hi = Math.max(hi, d);
    }
    t.ok(lo >= 0 && hi < cap, `retry ${n}: [${lo}, ${hi}] within [0, ${cap})`);
    t.ok(hi > cap * 0.9 && lo < cap * 0.1, `retry ${n}: spread over the whole range`);
  }
  t.equal(backoffMs(3, 25, 1000, () => 0.999999), 99);
  t.equal(backoffMs(30, 25, 1000, () => 0.5), 500, 'capped at max');
  t.equal(backoffMs(1, 0, 1000, () => 0.5), 0, 'no base: no wait');
});

t.test('budget: max(min, percent of active requests)', async (t) => {
  t.ok(budgetAllows(0, 1, 20, 3));
  t.ok(budgetAllows(2, 1, 20, 3));
  t.notOk(budgetAllows(3, 1, 20, 3), 'min 3 reached');
  t.ok(budgetAllows(19, 100, 20, 3), '20% of 100 = 20');
  t.notOk(budgetAllows(20, 100, 20, 3));
  t.notOk(budgetAllows(0, 100, 0, 0), 'no budget: no retries');
});

t.test('policy retries: attempts, other backend, idempotency, bodies, budget and retry breaker', async (t) => {
  const states = new BackendStates();
  const { log } = captureLog();
  const p = new ProxyPolicy({ states, log, random: seeded(9) });
  const build = (over: Parameters<typeof retry>[0], cb = {}) =>
    p.update(model(service('web', '127.100.0.1', 80, [backend(8080), backend(8081), backend(8082)], http({ routes: [route('r', { retry: retry(over) })], circuitBreaker: { maxConnections: 100, maxPendingRequests: 100, maxRequests: 100, maxRetries: 100, ...cb } }))), () => undefined);
  build({ attempts: 2 });
  let x = p.begin(DST, SRC, head()) as Exchange;
  t.equal(x.bufferLimitBytes, 65536);
  let a = x.attempt(1) as Attempt;
  const first = a.upstream.key;
  a.finish({ kind: 'response', status: 503 });
  t.equal(x.retryDelay(1, { kind: 'response', status: 503 }, true), 0);
  a = x.attempt(2) as Attempt;
  t.not(a.upstream.key, first, 'the retry goes to another backend');
  const second = a.upstream.key;
  a.finish({ kind: 'reset' });
  t.equal(x.retryDelay(2, { kind: 'reset' }, true), 0);
  a = x.attempt(3) as Attempt;
  t.not(a.upstream.key, second);
  a.finish({ kind: 'response', status: 503 });
  t.equal(x.retryDelay(3, { kind: 'response', status: 503 }, true), null, 'attempts spent');
  x.end(503);

  x = p.begin(DST, SRC, head('POST', '/')) as Exchange;
  t.equal(x.bufferLimitBytes, 0, 'a POST is never retried: nothing to buffer');
  (x.attempt(1) as Attempt).finish({ kind: 'response', status: 503 });
  t.equal(x.retryDelay(1, { kind: 'response', status: 503 }, true), null, 'POST not retried');
  x.end(503);

  x = p.begin(DST, SRC, head('PUT', '/', {}, { hasBody: true })) as Exchange;
  (x.attempt(1) as Attempt).finish({ kind: 'response', status: 503 });
  t.equal(x.retryDelay(1, { kind: 'response', status: 503 }, false), null, 'body not buffered whole: no retry');
  t.equal(x.retryDelay(1, { kind: 'response', status: 503 }, true), 0, 'buffered: retry');
  x.end(503);

  // budget: min 1, 0%: with one retry in backoff, a second exchange's retry is refused
  build({ attempts: 3, budgetPercent: 0, minRetryConcurrency: 1, backoffBaseMs: 100, backoffMaxMs: 100 });
  const x1 = p.begin(DST, SRC, head()) as Exchange;
  const x2 = p.begin(DST, SRC, head()) as Exchange;
  (x1.attempt(1) as Attempt).finish({ kind: 'response', status: 500 });
  (x2.attempt(1) as Attempt).finish({ kind: 'response', status: 500 });
  const d = x1.retryDelay(1, { kind: 'response', status: 500 }, true);
  t.ok(d !== null && d >= 0 && d < 100, `first retry allowed with backoff ${d}`);
  t.equal(x2.retryDelay(1, { kind: 'response', status: 500 }, true), null, 'budget exhausted');
  x1.end(0); // client gone during backoff: the reserved retry is given back
  const x3 = p.begin(DST, SRC, head()) as Exchange;
  (x3.attempt(1) as Attempt).finish({ kind: 'response', status: 500 });
  t.not(x3.retryDelay(1, { kind: 'response', status: 500 }, true), null, 'budget free again');
  x2.end(500);
  x3.end(500);
  const rep = p.routesReport()[0]!;
  t.equal(rep.budgetExhausted, 1);
  t.equal(rep.groups[0]!.activeRetries, 0, 'no retry left counted');
  t.equal(rep.groups[0]!.activeRequests, 0);

  // the max-retries breaker: maxRetries 1, budget large
  build({ attempts: 3, budgetPercent: 100, minRetryConcurrency: 10 }, { maxRetries: 1 });
  const y1 = p.begin(DST, SRC, head()) as Exchange;
  const y2 = p.begin(DST, SRC, head()) as Exchange;
  (y1.attempt(1) as Attempt).finish({ kind: 'timeout' });
  (y2.attempt(1) as Attempt).finish({ kind: 'timeout' });
  t.equal(y1.retryDelay(1, { kind: 'timeout' }, true), 0);
  t.equal(y2.retryDelay(1, { kind: 'timeout' }, true), null, 'max-retries: no retry, the failed answer is passed on');
  const r2 = y1.attempt(2) as Attempt;
  // a retry attempt not reserved by retryDelay (engine calling on its own) meets the breaker
  const y3 = p.begin(DST, SRC, head()) as Exchange;
  (y3.attempt(1) as Attempt).finish({ kind: 'timeout' });
  const lr = y3.attempt(2);
  t.ok(isLocal(lr));
  t.equal((lr as LocalReply).status, 503);
  t.equal((lr as LocalReply).headers['x-sockmesh-overflow'], 'max-retries');
  r2.finish({ kind: 'response', status: 200 });
  y1.end(200);
  y2.end(504);
  y3.end(503);
  const g = p.routesReport()[0]!.groups[0]!;
  t.equal(g.overflows['max-retries'], 2);
  t.equal(g.activeRetries, 0);
  t.equal(g.activeRequests, 0);
  t.ok(p.backendsReport().every((b) => b.activeRequests === 0), 'no backend left counted');
});

t.test('policy breaker: max-requests overflow answered with 503 and the header', async (t) => {
  const p = new ProxyPolicy({ states: new BackendStates(), log: captureLog().log, random: seeded(2) });
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ circuitBreaker: { maxConnections: 10, maxPendingRequests: 10, maxRequests: 2, maxRetries: 3 } }))), () => undefined);
  const xs = [0, 1, 2].map(() => p.begin(DST, SRC, head()) as Exchange);
  t.notOk(isLocal(xs[0]!.attempt(1)));
  t.notOk(isLocal(xs[1]!.attempt(1)));
  const over = xs[2]!.attempt(1);
  t.ok(isLocal(over));
  t.equal((over as LocalReply).status, 503);
  t.equal((over as LocalReply).headers['x-sockmesh-overflow'], 'max-requests');
  xs[2]!.end(503);
  xs[0]!.end(200);
  const again = p.begin(DST, SRC, head()) as Exchange;
  t.notOk(isLocal(again.attempt(1)), 'a finished request frees its place');
  again.end(200);
  xs[1]!.end(200);
  const rep = p.routesReport()[0]!;
  t.same(rep.localReplies, { 'max-requests': 1 });
  t.equal(rep.overflows['max-requests'], 1);
});

t.test('outlier counting rules and ejection cap', async (t) => {
  const cfg: OutlierDetection = { consecutive5xx: 3, consecutiveGatewayErrors: 2, baseEjectionMs: 100, maxEjectionMs: 250, maxEjectionPercent: 50 };
  const c = { consecutive5xx: 0, consecutiveGatewayErrors: 0 };
  t.equal(countOutcome(c, { kind: 'response', status: 500 }, cfg), undefined);
  t.equal(countOutcome(c, { kind: 'response', status: 500 }, cfg), undefined);
  t.equal(countOutcome(c, { kind: 'response', status: 200 }, cfg), undefined, 'success resets');
  t.same(c, { consecutive5xx: 0, consecutiveGatewayErrors: 0 });
  t.equal(countOutcome(c, { kind: 'response', status: 500 }, cfg), undefined);
  t.equal(countOutcome(c, { kind: 'response', status: 503 }, cfg), undefined);
  t.equal(countOutcome(c, { kind: 'response', status: 500 }, cfg), 'consecutive-5xx');
  t.same(c, { consecutive5xx: 0, consecutiveGatewayErrors: 0 }, 'restart after tripping');
  t.equal(countOutcome(c, { kind: 'connect-failure' }, cfg), undefined);
  t.equal(countOutcome(c, { kind: 'reset' }, cfg), 'consecutive-gateway-errors');
  t.equal(countOutcome(c, { kind: 'response', status: 404 }, cfg), undefined);
  t.equal(countOutcome(c, { kind: 'overflow', limit: 'max-pending-requests' }, cfg), undefined);
  t.same(c, { consecutive5xx: 0, consecutiveGatewayErrors: 0 }, 'overflow not counted');
  countOutcome(c, { kind: 'response', status: 500 }, cfg);
  t.equal(countOutcome(c, { kind: 'cancelled' }, cfg), undefined);
  t.same(c, { consecutive5xx: 1, consecutiveGatewayErrors: 0 }, 'a client gone neither counts nor resets');
  c.consecutive5xx = 0;
  t.same([1, 2, 3, 4].map((n) => ejectionMs(cfg, n - 1)), [100, 200, 250, 250], 'base * n, capped at max');
  // cap: 50% of 4 = 2; always one when > 1 backend
  t.ok(mayEject(0, 4, 50) && mayEject(1, 4, 50));
  t.notOk(mayEject(2, 4, 50));
  t.ok(mayEject(0, 3, 10), 'one may always be ejected');
  t.notOk(mayEject(1, 3, 10));
  t.notOk(mayEject(0, 1, 50), 'a lone backend under a 50% cap');
  t.ok(mayEject(0, 1, 100));
  t.notOk(mayEject(0, 4, 0), 'percent 0: never');
});

t.test('policy outlier detection: ejection, return, growing time, percent cap, balancer skips it', async (t) => {
  const states = new BackendStates();
  t.teardown(() => states.close());
  const { log, lines } = captureLog();
  const p = new ProxyPolicy({ states, log, random: seeded(4) });
  const od: OutlierDetection = { consecutive5xx: 2, consecutiveGatewayErrors: 0, baseEjectionMs: 150, maxEjectionMs: 1000, maxEjectionPercent: 34 };
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080), backend(8081), backend(8082)], http({ outlierDetection: od, balancer: 'round-robin' }))), () => undefined);
  // answer 500 from 8080 only, 200 elsewhere, for a number of requests
  const run = (n: number, bad: Set<number>): Record<number, number> => {
    const seen: Record<number, number> = {};
    for (let i = 0; i < n; i++) {
      const x = p.begin(DST, SRC, head()) as Exchange;
      const a = x.attempt(1) as Attempt;
      seen[a.upstream.port] = (seen[a.upstream.port] ?? 0) + 1;
      const status = bad.has(a.upstream.port) ? 500 : 200;
      a.finish({ kind: 'response', status });
      x.end(status);
    }
    return seen;
  };
  run(6, new Set([8080]));
  t.ok(states.isOut('web', '127.0.0.1:8080'), 'ejected after 2 consecutive 5xx');
  const e1 = states.list().find((s) => s.backend === '127.0.0.1:8080')!.ejection!;
  t.equal(e1.until - e1.since, 150, 'first ejection: base');
  t.equal(e1.reason, '2 consecutive 5xx');
  const during = run(20, new Set([8080]));
  t.equal(during[8080], undefined, 'the ejected backend gets no requests');
  // another backend failing too: the cap (34% of 3 = 1) refuses a second ejection
  run(10, new Set([8081]));
  t.notOk(states.isOut('web', '127.0.0.1:8081'), 'max ejection percent holds');
  t.ok(lines.some((l) => l.msg === 'ejection refused (already out or max ejection percent)'));
  const rep = p.backendsReport().find((b) => b.backend === '127.0.0.1:8080')!;
  t.match(rep, { ejected: true, out: true, reason: '2 consecutive 5xx', ejections: 1 });
  await sleep(300);
  t.notOk(states.isOut('web', '127.0.0.1:8080'), 'back after the ejection time');
  const after = run(6, new Set());
  t.ok((after[8080] ?? 0) > 0, 'the returned backend takes requests again');
  run(6, new Set([8080]));
  const e2 = states.list().find((s) => s.backend === '127.0.0.1:8080')!.ejection!;
  t.equal(e2.until - e2.since, 300, 'second ejection: 2 * base');
  t.equal(states.ejections('web', '127.0.0.1:8080'), 2);
  const text = await p.metrics.registry.metrics();
  t.match(text, /sockmesh_http_ejections_total\{service="web",backend="127.0.0.1:8080",reason="consecutive-5xx"\} 2/);
});

t.test('panic: every backend out -> all are used; none at all -> 503', async (t) => {
  const states = new BackendStates();
  t.teardown(() => states.close());
  const p = new ProxyPolicy({ states, log: captureLog().log, random: seeded(4) });
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080), backend(8081)], http())), () => undefined);
  states.setProbe('web', '127.0.0.1:8080', false, 'refused');
  for (let i = 0; i < 20; i++) {
    const x = p.begin(DST, SRC, head()) as Exchange;
    t.equal((x.attempt(1) as Attempt).upstream.port, 8081);
    x.end(200);
  }
  states.setProbe('web', '127.0.0.1:8081', false, 'refused');
  const seen = new Set<number>();
  for (let i = 0; i < 40; i++) {
    const x = p.begin(DST, SRC, head()) as Exchange;
    seen.add((x.attempt(1) as Attempt).upstream.port);
    x.end(200);
  }
  t.same([...seen].sort(), [8080, 8081], 'panic: both used');
  const zero = backend(8080);
  zero.weight = 0;
  p.update(model(service('web', '127.100.0.1', 80, [zero], http())), () => undefined);
  const x = p.begin(DST, SRC, head()) as Exchange;
  const r = x.attempt(1);
  t.equal((r as LocalReply).status, 503, 'only a drained backend: no healthy upstream');
  x.end(503);
});

t.test('update keeps group state (breaker counts, backend active counts) of unchanged groups', async (t) => {
  const p = new ProxyPolicy({ states: new BackendStates(), log: captureLog().log, random: seeded(4) });
  const m = () => model(service('web', '127.100.0.1', 80, [backend(8080)], http()));
  p.update(m(), () => undefined);
  const x = p.begin(DST, SRC, head()) as Exchange;
  const a = x.attempt(1) as Attempt;
  const group = a.upstream.group;
  t.ok(group.tryOpenConnection());
  p.update(m(), () => undefined);
  const y = p.begin(DST, SRC, head()) as Exchange;
  const b = y.attempt(1) as Attempt;
  t.equal(b.upstream, a.upstream, 'same upstream object');
  t.equal(b.upstream.group, group, 'same group accounting');
  t.equal(p.backendsReport()[0]!.activeRequests, 2);
  t.equal(p.routesReport()[0]!.groups[0]!.connections, 1);
  x.end(200);
  y.end(200);
  t.equal(p.backendsReport()[0]!.activeRequests, 0);
});

t.test('metrics after a scripted sequence', async (t) => {
  const registry = new Registry();
  let clock = 0;
  const p = new ProxyPolicy({ states: new BackendStates(), log: captureLog().log, registry, random: seeded(11), now: () => clock });
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ routes: [route('api', { match: { path: { prefix: '/api' } }, retry: retry({ attempts: 1 }) })] }))), () => undefined);
  // 1: 200 in 3 ms
  let x = p.begin(DST, SRC, head('GET', '/api/a')) as Exchange;
  (x.attempt(1) as Attempt).finish({ kind: 'response', status: 200 });
  clock += 3;
  x.end(200);
  // 2: 503 then retried to 200, 40 ms
  x = p.begin(DST, SRC, head('GET', '/api/b')) as Exchange;
  (x.attempt(1) as Attempt).finish({ kind: 'response', status: 503 });
  t.equal(x.retryDelay(1, { kind: 'response', status: 503 }, true), 0);
  (x.attempt(2) as Attempt).finish({ kind: 'response', status: 200 });
  clock += 40;
  x.end(200);
  // 3: 404 from upstream, 0.2 ms
  x = p.begin(DST, SRC, head('GET', '/api/c')) as Exchange;
  (x.attempt(1) as Attempt).finish({ kind: 'response', status: 404 });
  clock += 0.2;
  x.end(404);
  // 4: no route
  p.begin(DST, SRC, head('GET', '/other'));
  // 5: client gone
  x = p.begin(DST, SRC, head('GET', '/api/d')) as Exchange;
  x.attempt(1);
  x.end(0);
  const text = await registry.metrics();
  const line = (re: RegExp): string | undefined => text.split('\n').find((l) => re.test(l));
  t.match(line(/^sockmesh_http_requests_total\{.*route="api".*class="2xx"/), / 2$/);
  t.match(line(/^sockmesh_http_requests_total\{.*route="api".*class="4xx"/), / 1$/);
  t.match(line(/^sockmesh_http_requests_total\{.*route="api".*class="aborted"/), / 1$/);
  t.match(line(/^sockmesh_http_requests_total\{service="web",route="",backend="",class="local"\}/), / 1$/);
  t.match(line(/^sockmesh_http_local_replies_total\{service="web",route="",reason="no-route"\}/), / 1$/);
  t.match(line(/^sockmesh_http_retries_total\{service="web",route="api"\}/), / 1$/);
  t.match(line(/^sockmesh_http_retry_budget_exhausted_total\{service="web",route="api"\}/), / 0$/);
  t.match(line(/^sockmesh_http_request_duration_milliseconds_bucket\{.*le="0.25"\}/), / 2$/, '0.2 ms and the 0 ms abort');
  t.match(line(/^sockmesh_http_request_duration_milliseconds_bucket\{.*le="5"\}/), / 3$/);
  t.match(line(/^sockmesh_http_request_duration_milliseconds_bucket\{.*le="50"\}/), / 4$/);
  t.match(line(/^sockmesh_http_request_duration_milliseconds_bucket\{.*le="\+Inf"\}/), / 4$/);
  t.match(line(/^sockmesh_http_request_duration_milliseconds_count\{/), / 4$/);
  t.match(line(/^sockmesh_http_request_duration_milliseconds_sum\{/), / 43.2$/);
  t.match(line(/^sockmesh_http_active_requests\{service="web",frontend="127.100.0.1:80",group="default"\}/), / 0$/);
  t.match(text, /# TYPE sockmesh_http_request_duration_milliseconds histogram/);
  const json = await registry.getMetricsAsJSON();
  t.ok(json.some((m) => m.name === 'sockmesh_http_requests_total'), 'JSON export works too');
  const rep = p.routesReport()[0]!;
  t.same(rep.requests, { '2xx': 2, '4xx': 1, aborted: 1 });
  t.equal(rep.retries, 1);
});
