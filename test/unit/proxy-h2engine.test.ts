// The proxy's HTTP/2 engine on our own sessions (agent/proxy/h2server.ts, h2exchange.ts over h2/session.ts): what node:http2 did
// for us before and what it could not do. A request head over the limit answered 431 (the session lives on);
// an upstream that sends GOAWAY with streams in flight (those above its last stream id go again on another
// session); a client that does not read holds the upstream through flow control (bounded, then byte-exact when
// it reads again); connection-specific headers are not passed on; h2load through the proxy.
import t from 'tap';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { connect as h2connect, constants, type ClientHttp2Session, type ServerHttp2Stream } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { H2Session, type H2Stream } from '../../agent/proxy/h2/session.js';
import type { HeaderList } from '../../agent/proxy/h2/hpack.js';
import { h2Backend, h2request, startProxy, TestGroup, TestPolicy, upstream, type H2Backend, type RunningProxy } from '../lib/proxy.js';



let proxy: RunningProxy;
const group = new TestGroup();
const policy = new TestPolicy(() => ({ status: 500, headers: {}, body: 'no route\n' }));

t.before(async () => { proxy = await startProxy(policy, { maxHeaderBytes: 16 * 1024 }); });
t.teardown(async () => { await proxy.close(); });

function client(t: { teardown(fn: () => void): void }, opts: Parameters<typeof h2connect>[1] = {}): ClientHttp2Session {
  const c = h2connect(`http://127.0.0.1:${proxy.port}`, opts);
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  return c;
}

t.test('a request head over the limit is answered 431 on its stream; the session and the policy are untouched', async (t) => {
  const b = await h2Backend((s) => { s.respond({ ':status': 200 }); s.end('ok'); });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const before = policy.exchanges.length;
  // nghttp2 refuses to send a block over 64 KiB unless told otherwise; the proxy's limit here is 16 KiB
  const c = client(t, { maxSendHeaderBlockLength: 1 << 20 });
  const big = await h2request(c, { ':path': '/big', 'x-big': 'a'.repeat(40_000) });
  t.equal(big.headers[':status'], 431, '431 for a 40 KB header value');
  const many: Record<string, string> = { ':path': '/many' };
  for (let i = 0; i < 400; i++) many[`x-h-${i}`] = 'v'.repeat(60);
  const m = await h2request(c, many);
  t.equal(m.headers[':status'], 431, '431 for 400 fields of 60 bytes');
  t.equal(policy.exchanges.length, before, 'the policy never saw them');
  t.equal(b.streams, 0, 'nothing reached the backend');
  // the HPACK table stayed in step: the same session goes on
  const ok = await h2request(c, { ':path': '/ok', 'x-small': 'fine' });
  t.equal(ok.headers[':status'], 200, 'the same session still works');
  t.equal(ok.body.toString(), 'ok');
  t.ok(proxy.proxy.stats().badRequests >= 2, 'counted as bad requests');
  t.equal(policy.contractViolations(), '');
});

t.test('an upstream GOAWAY with streams in flight: those above its last stream id go again on a new session', async (t) => {
  const held: ServerHttp2Stream[] = [];
  const seen: string[] = [];
  let goneAway = false;
  const b = await h2Backend((s, h) => {
    const path = String(h[':path']);
    seen.push(path);
    if (goneAway || !path.startsWith('/g/')) { s.respond({ ':status': 200 }); s.end(`answer ${path}`); return; }
    held.push(s);
    if (held.length < 6) return;
    // six streams in flight on this session: it goes away after the first; the first is answered, the rest are not
    goneAway = true;
    const first = held[0]!;
    first.session!.goaway(constants.NGHTTP2_NO_ERROR, first.id!);
    first.respond({ ':status': 200 });
    first.end('answer first');
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const c = client(t);
  const paths = Array.from({ length: 6 }, (_, i) => `/g/${i}`);
  const rs = await Promise.all(paths.map((p) => h2request(c, { ':path': p })));
  t.same(rs.map((r) => r.headers[':status']), [200, 200, 200, 200, 200, 200], 'every request answered 200');
  t.equal(b.sessions, 2, 'a second upstream session for the refused streams');
  const refused = paths.filter((p) => seen.filter((x) => x === p).length === 2);
  t.equal(refused.length, 5, `5 streams above the last stream id were sent again (${JSON.stringify(seen)})`);
  for (const r of rs) t.match(r.body.toString(), /^answer /);
  // the policy saw one attempt each: a stream refused unprocessed is the same attempt, sent again
  for (const x of policy.exchanges.slice(-6)) t.equal(x.attempts.length, 1);
  t.equal(policy.contractViolations(), '');
});

t.test('a client that does not read: flow control holds the upstream (bounded), then the body arrives byte-exact', async (t) => {
  const CHUNK = 64 * 1024, TOTAL = 32 * 1024 * 1024;
  let written = 0;
  const chunk = (i: number): Buffer => Buffer.alloc(CHUNK, i & 0xff);
  const sent = createHash('sha256');
  const b = await h2Backend((s) => {
    s.respond({ ':status': 200, 'content-length': String(TOTAL) });
    let i = 0;
    const pump = (): void => {
      while (written < TOTAL) {
        const c = chunk(i++);
        sent.update(c);
        written += c.length;
        if (written === TOTAL) { s.end(c); return; }
        if (!s.write(c)) { s.once('drain', pump); return; }
      }
    };
    pump();
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });

  // our own client session: it counts bytes back (stream.consumed) only when the test says so
  const sock = netConnect({ host: '127.0.0.1', port: proxy.port });
  t.teardown(() => sock.destroy());
  const settled = new Promise<void>((r) => sock.once('connect', () => r()));
  const session = new H2Session(sock, { role: 'client', settings: { initialWindowSize: 65_535 } });
  t.teardown(() => session.destroy());
  await settled;
  let got = 0, status = '', reading = false, ended = false, resetCode = -1;
  const recv = createHash('sha256');
  let stream: H2Stream | null = null;
  const done = new Promise<void>((resolve) => {
    stream = session.request([':method', 'GET', ':scheme', 'http', ':authority', 'svc', ':path', '/big'], true, {
      onHeaders(h: HeaderList) { status = h[h.indexOf(':status') + 1]!; },
      onData(d: Buffer, end: boolean) {
        got += d.length;
        recv.update(d);
        if (reading && d.length > 0) stream!.consumed(d.length);
        if (end) { ended = true; resolve(); }
      },
      onTrailers() { ended = true; resolve(); },
      onReset(code: number) { resetCode = code; resolve(); },
      onWritable() {},
    });
  });
  await new Promise((r) => setTimeout(r, 1500));
  t.equal(status, '200', 'the head arrived');
  t.ok(got <= 65_535, `the client got at most its stream window while not reading (${got})`);
  t.ok(written < 8 * 1024 * 1024, `the backend could write only ${(written / 1048576).toFixed(2)} MiB of 32 while the client did not read`);
  const heldAt = written;
  await new Promise((r) => setTimeout(r, 500));
  t.ok(written - heldAt <= CHUNK, `and no more later (${written - heldAt} bytes)`);
  reading = true;
  stream!.consumed(got);
  const timer = setTimeout(() => session.destroy(), 60_000);
  await done;
  clearTimeout(timer);
  t.equal(resetCode, -1, 'not reset');
  t.ok(ended, 'ended');
  t.equal(got, TOTAL, 'all of it');
  t.equal(recv.digest('hex'), sent.digest('hex'), 'byte-exact');
  t.equal(policy.contractViolations(), '');
});

t.test('a slow upstream reader holds the client upload (flow control the other way), body byte-exact', async (t) => {
  const TOTAL = 8 * 1024 * 1024;
  let received = 0;
  const recv = createHash('sha256');
  let resume: (() => void) | null = null;
  const b = await h2Backend((s) => {
    s.pause();
    resume = () => s.resume();
    s.on('data', (d: Buffer) => { received += d.length; recv.update(d); });
    s.on('end', () => { s.respond({ ':status': 200 }); s.end(String(received)); });
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], bufferLimitBytes: 0 });
  const c = client(t);
  const req = c.request({ ':method': 'POST', ':path': '/upload' });
  const sent = createHash('sha256');
  let written = 0;
  const res = new Promise<{ status: number; body: string }>((resolve, reject) => {
    let status = 0;
    const parts: Buffer[] = [];
    req.on('response', (h) => { status = Number(h[':status']); });
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => resolve({ status, body: Buffer.concat(parts).toString() }));
    req.on('error', reject);
  });
  const pump = (): void => {
    while (written < TOTAL) {
      const c = Buffer.alloc(16 * 1024, written >> 14);
      sent.update(c);
      written += c.length;
      if (written === TOTAL) { req.end(c); return; }
      if (!req.write(c)) { req.once('drain', pump); return; }
    }
  };
  pump();
  await new Promise((r) => setTimeout(r, 1500));
  t.ok(written < TOTAL / 2, `the client could send only ${(written / 1048576).toFixed(2)} MiB of 8 while the backend did not read`);
  resume!();
  const r = await res;
  t.equal(r.status, 200);
  t.equal(r.body, String(TOTAL), 'the backend got all of it');
  t.equal(recv.digest('hex'), sent.digest('hex'), 'byte-exact');
  t.equal(policy.contractViolations(), '');
});

t.test('te: trailers reaches the upstream; the origin\'s date is passed as it came, none is made up', async (t) => {
  let te: unknown;
  const b = await h2Backend((s, h) => {
    te = h.te;
    s.respond({ ':status': 200, 'x-kept': '1', date: h[':path'] === '/te' ? 'Mon, 01 Jan 2001 00:00:00 GMT' : undefined });
    s.end('ok');
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const c = client(t);
  const r = await h2request(c, { ':path': '/te', te: 'trailers' });
  t.equal(r.headers[':status'], 200);
  t.equal(r.headers['x-kept'], '1');
  t.equal(te, 'trailers', 'te: trailers reached the upstream');
  t.equal(r.headers.date, 'Mon, 01 Jan 2001 00:00:00 GMT', 'the origin\'s date as it came');
});

t.test('h2load through the proxy: every request answered 2xx', async (t) => {
  const b = await h2Backend((s) => { s.respond({ ':status': 200, 'content-type': 'text/plain' }); s.end('hello from h2\n'); });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const N = 6000;
  const out = await new Promise<string>((resolve, reject) => {
    const p = spawn('h2load', ['-n', String(N), '-c', '4', '-m', '8', `http://127.0.0.1:${proxy.port}/load`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    p.stdout.on('data', (d: Buffer) => { text += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { text += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.on('error', reject);
    p.on('close', () => { clearTimeout(timer); resolve(text); });
  });
  const requests = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out);
  if (!requests || !codes) t.comment(out);
  t.ok(requests && codes, 'h2load output parsed');
  t.equal(Number(requests![4]), N, `${N} succeeded`);
  t.equal(Number(codes![1]), N, `${N} answered 2xx`);
  const finished = /finished in ([\d.]+)(m?s), ([\d.]+) req\/s/.exec(out);
  if (finished) t.comment(`h2load -c4 -m8: ${finished[3]} req/s (loaded machine; not asserted)`);
  t.equal(policy.contractViolations(), '');
});

t.test('upstream session limits: streams within the peer\'s max, one connection, the rest pending, then overflow', async (t) => {
  let inFlight = 0, maxInFlight = 0;
  const b = await h2Backend((s) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    setTimeout(() => { inFlight--; s.respond({ ':status': 200 }); s.end('ok'); }, 80);
  });
  t.teardown(() => b.close());
  b.server.updateSettings({ maxConcurrentStreams: 2 });
  const g = new TestGroup(1, 4); // one connection, four pending
  policy.route = () => ({ upstreams: [upstream(b.port, g)] });
  const c = client(t);
  t.equal((await h2request(c, { ':path': '/warm' })).headers[':status'], 200, 'warm-up: the backend\'s SETTINGS are known');
  const rs = await Promise.all(Array.from({ length: 8 }, (_, i) => h2request(c, { ':path': `/p/${i}` })));
  const statuses = rs.map((r) => Number(r.headers[':status'])).sort();
  t.same(statuses, [200, 200, 200, 200, 200, 200, 503, 503], '2 at once + 4 pending answered, 2 over the pending limit refused');
  t.same(rs.filter((r) => Number(r.headers[':status']) === 503).map((r) => r.headers['x-sockmesh-overflow']), ['max-pending-requests', 'max-pending-requests']);
  t.ok(maxInFlight <= 2, `never more than the peer's 2 streams at once (${maxInFlight})`);
  t.equal(b.sessions, 1, 'one upstream connection (the group\'s max)');
  t.equal(g.pending, 0, 'no pending request left');
  t.ok(g.connections <= 1, 'within max connections');
  t.equal(policy.contractViolations(), '');
});

t.test('an upstream that refuses the connection: 503 connect-failure, its connection slot given back', async (t) => {
  const closed = await h2Backend(() => {});
  const port = closed.port;
  await closed.close(); // nothing listens there now
  const g = new TestGroup();
  policy.route = () => ({ upstreams: [upstream(port, g)] });
  const c = client(t);
  const r = await h2request(c, { ':path': '/nowhere' });
  t.equal(r.headers[':status'], 503);
  t.equal(r.headers['x-sockmesh-error'], 'connect-failure');
  await new Promise((res) => setTimeout(res, 50));
  t.equal(g.connections, 0, 'the connection slot was given back');
  t.same(policy.exchanges.at(-1)!.attempts[0]!.outcomes, [{ kind: 'connect-failure' }]);
  t.equal(policy.contractViolations(), '');
});
