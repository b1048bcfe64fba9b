// The proxy's HTTP/2 engine: prior-knowledge h2c from clients, multiplexed upstream sessions, request and
// response bodies, gRPC unary / server streaming / bidi with status and trailers intact (trailers-only
// responses too), many concurrent streams, retries, upstream failures and local replies to gRPC clients.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { connect as h2connect, constants, type ClientHttp2Session } from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { h2Backend, h2request, startProxy, TestGroup, TestPolicy, upstream, type H2Backend, type H2Got, type RunningProxy } from '../lib/proxy.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');


function readStream(s: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('error', reject);
  });
}


let proxy: RunningProxy;
const group = new TestGroup();
const policy = new TestPolicy(() => ({ status: 500, headers: {}, body: 'no route\n' }));

t.before(async () => { proxy = await startProxy(policy); });
t.teardown(async () => { await proxy.close(); });

function client(t: { teardown(fn: () => void): void }): ClientHttp2Session {
  const c = h2connect(`http://127.0.0.1:${proxy.port}`);
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  return c;
}

t.test('h2 prior knowledge: GET and POST with bodies, headers and rewrites, one upstream session', async (t) => {
  const b = await h2Backend((s, h) => {
    readStream(s).then((body) => {
      s.respond({ ':status': 200, 'x-path': String(h[':path']), 'x-authority': String(h[':authority']), 'x-added': String(h['x-added'] ?? ''), 'x-sha': sha(body), 'x-remove-me': '1' }, { waitForTrailers: true });
      s.on('wantTrailers', () => s.sendTrailers({ 'x-trailer': 'end' }));
      s.end(body.length ? body : 'hello');
    }, () => {});
  });
  t.teardown(() => b.close());
  policy.route = () => ({
    upstreams: [upstream(b.port, group)],
    requestHeaders: { set: { 'x-added': 'yes' }, remove: [] },
    responseHeaders: { set: { 'x-proxy': 'sockmesh' }, remove: ['x-remove-me'] },
  });
  const c = client(t);
  const g = await h2request(c, { ':path': '/a?b=1', ':authority': 'svc.example', te: 'trailers' });
  t.equal(g.headers[':status'], 200);
  t.equal(g.body.toString(), 'hello');
  t.equal(g.headers['x-path'], '/a?b=1');
  t.equal(g.headers['x-authority'], 'svc.example');
  t.equal(g.headers['x-added'], 'yes');
  t.equal(g.headers['x-proxy'], 'sockmesh');
  t.notOk(g.headers['x-remove-me']);
  t.equal(g.trailers?.['x-trailer'], 'end', 'trailers passed on');
  for (const size of [1, 16384, 100_000, 1_000_001]) {
    const data = randomBytes(size);
    const parts: Buffer[] = [];
    for (let off = 0; off < size;) { const n = 1 + Math.floor(Math.random() * 50000); parts.push(data.subarray(off, off + n)); off += n; }
    const p = await h2request(c, { ':path': '/post' }, parts);
    t.equal(p.headers['x-sha'], sha(data), `request body of ${size} bytes arrived whole`);
    t.equal(sha(p.body), sha(data), `response body of ${size} bytes byte-exact`);
  }
  const x = policy.exchanges.at(-1)!;
  t.equal(x.head.protocol, 'h2');
  t.equal(x.head.method, 'POST');
  t.ok(x.head.hasBody);
  t.equal(b.sessions, 1, 'one upstream session for all of it');
  t.equal(policy.contractViolations(), '');
});

t.test('many concurrent streams on one client session, multiplexed upstream within its max concurrent streams', async (t) => {
  const b = await h2Backend((s, h) => {
    setTimeout(() => { s.respond({ ':status': 200 }); s.end(String(h[':path'])); }, 20 + Math.random() * 30);
  });
  t.teardown(() => b.close());
  // the backend allows 50 concurrent streams per session: 300 at once need more than one session
  b.server.updateSettings({ maxConcurrentStreams: 50 });
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const c = client(t);
  const n = 300;
  const rs = await Promise.all(Array.from({ length: n }, (_, i) => h2request(c, { ':path': `/s/${i}` })));
  const bad = rs.map((r, i) => [i, r.headers[':status'], r.headers['x-sockmesh-error'], r.rstCode]).filter(([i, st]) => st !== 200 || rs[i as number]!.body.toString() !== `/s/${i}`);
  t.same(bad.slice(0, 5), [], 'failures');
  t.equal(rs.filter((r, i) => Number(r.headers[':status']) === 200 && r.body.toString() === `/s/${i}`).length, n, `${n} streams answered correctly`);
  t.ok(b.sessions >= 2 && b.sessions <= 10, `upstream sessions opened: ${b.sessions}`);
  t.equal(b.streams, n);
});

t.test('upstream failures: reset before the head -> 502, after it -> the client stream is reset', async (t) => {
  const b = await h2Backend((s, h) => {
    if (h[':path'] === '/before') s.close(constants.NGHTTP2_INTERNAL_ERROR);
    else { s.respond({ ':status': 200 }); s.write('partial'); setTimeout(() => s.session?.destroy(), 30); } // the backend dies
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const c = client(t);
  const before = await h2request(c, { ':path': '/before' });
  t.equal(before.headers[':status'], 502);
  const mid = await h2request(c, { ':path': '/mid' }).catch((e: Error) => ({ error: e.message }));
  t.ok('error' in mid || (mid as H2Got).rstCode !== 0, `the client stream was reset: ${JSON.stringify('error' in mid ? mid.error : (mid as H2Got).rstCode)}`);
  // the session survives: another request works
  const ok = await h2request(c, { ':path': '/before' });
  t.equal(ok.headers[':status'], 502);
  t.equal(policy.contractViolations(), '');
});

t.test('h2 retries replay the body; the per-try timeout fires', async (t) => {
  let k = 0;
  const b = await h2Backend((s, h) => {
    readStream(s).then((body) => {
      k++;
      if (h[':path'] === '/stall' && k % 2 === 1) return; // never answers
      if (h[':path'] === '/flaky' && k <= 2) { s.respond({ ':status': 503 }); s.end(); return; }
      s.respond({ ':status': 200 });
      s.end(sha(body));
    }, () => {});
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], retries: 2, perTryTimeoutMs: 200, retryOn: (o) => o.kind === 'timeout' || (o.kind === 'response' && o.status === 503) });
  const c = client(t);
  const data = randomBytes(30_000);
  const r = await h2request(c, { ':path': '/flaky' }, data);
  t.equal(r.headers[':status'], 200);
  t.equal(r.body.toString(), sha(data));
  t.equal(policy.exchanges.at(-1)!.attempts.length, 3);
  k = 0;
  const r2 = await h2request(c, { ':path': '/stall' });
  t.equal(r2.headers[':status'], 200);
  t.same(policy.exchanges.at(-1)!.attempts.map((a) => a.outcomes[0]!.kind), ['timeout', 'response']);
  t.equal(policy.contractViolations(), '');
});

// ---- gRPC with @grpc/grpc-js, raw Buffer messages (no .proto needed) ----

const raw = { serialize: (b: Buffer): Buffer => b, deserialize: (b: Buffer): Buffer => b };
const SERVICE = {
  unary: { path: '/test.Echo/Unary', requestStream: false, responseStream: false, requestSerialize: raw.serialize, requestDeserialize: raw.deserialize, responseSerialize: raw.serialize, responseDeserialize: raw.deserialize },
  serverStream: { path: '/test.Echo/ServerStream', requestStream: false, responseStream: true, requestSerialize: raw.serialize, requestDeserialize: raw.deserialize, responseSerialize: raw.serialize, responseDeserialize: raw.deserialize },
  bidi: { path: '/test.Echo/Bidi', requestStream: true, responseStream: true, requestSerialize: raw.serialize, requestDeserialize: raw.deserialize, responseSerialize: raw.serialize, responseDeserialize: raw.deserialize },
} as unknown as grpc.ServiceDefinition;

async function grpcBackend(): Promise<{ port: number; server: grpc.Server }> {
  const server = new grpc.Server();
  server.addService(SERVICE, {
    unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      const msg = call.request.toString();
      if (msg === 'fail') {
        const md = new grpc.Metadata();
        md.set('x-detail', 'custom trailer');
        cb({ code: grpc.status.FAILED_PRECONDITION, details: 'told to fail', metadata: md });
        return;
      }
      const md = new grpc.Metadata();
      md.set('x-trailer', 'unary-done');
      cb(null, Buffer.from(`echo:${msg}`), md);
    },
    serverStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      const n = Number(call.request.toString());
      for (let i = 0; i < n; i++) call.write(Buffer.from(`item-${i}-${'x'.repeat(i * 100)}`));
      const md = new grpc.Metadata();
      md.set('x-count', String(n));
      call.end(md);
    },
    bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      let count = 0;
      call.on('data', (m: Buffer) => { count++; call.write(Buffer.from(`re:${m.toString()}`)); });
      call.on('end', () => {
        call.emit('error', { code: grpc.status.OUT_OF_RANGE, details: `got ${count}`, metadata: new grpc.Metadata() });
      });
    },
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  return { port, server };
}

const Client = grpc.makeGenericClientConstructor(SERVICE, 'Echo');
type GenericClient = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

t.test('gRPC unary, server streaming and bidi through the proxy: messages, status and trailers intact', async (t) => {
  const be = await grpcBackend();
  t.teardown(() => be.server.forceShutdown());
  policy.route = () => ({ upstreams: [upstream(be.port, group)] });
  const c = new Client(`127.0.0.1:${proxy.port}`, grpc.credentials.createInsecure()) as unknown as GenericClient;
  t.teardown(() => c.close());

  // unary OK with trailing metadata
  const unary = await new Promise<{ msg: string; trailer: unknown }>((resolve, reject) => {
    let trailer: unknown;
    const call = c.unary(Buffer.from('hi'), (e: grpc.ServiceError | null, r: Buffer) => (e ? reject(e) : setImmediate(() => resolve({ msg: r.toString(), trailer }))));
    (call as grpc.ClientUnaryCall).on('status', (s: grpc.StatusObject) => { trailer = s.metadata.get('x-trailer')[0]; });
  });
  t.equal(unary.msg, 'echo:hi');
  t.equal(unary.trailer, 'unary-done', 'trailing metadata passed on');
  const x = policy.exchanges.at(-1)!;
  t.ok(x.head.grpc, 'the head says grpc');
  t.same(x.ends, [{ status: 200, grpcStatus: 0 }], 'end() got grpc-status 0 from the trailers');

  // unary error: a trailers-only response (grpc-js sends status without messages in the headers frame)
  const err = await new Promise<grpc.ServiceError>((resolve) => c.unary(Buffer.from('fail'), (e: grpc.ServiceError) => resolve(e)));
  t.equal(err.code, grpc.status.FAILED_PRECONDITION);
  t.equal(err.details, 'told to fail');
  t.equal(err.metadata.get('x-detail')[0], 'custom trailer');
  const xe = policy.exchanges.at(-1)!;
  t.equal(xe.attempts[0]!.outcomes[0]!.kind, 'response');
  t.equal((xe.attempts[0]!.outcomes[0] as { grpcStatus?: number }).grpcStatus, grpc.status.FAILED_PRECONDITION, 'the policy sees grpc-status of a trailers-only response');

  // server streaming
  const items: string[] = [];
  const ss = await new Promise<grpc.StatusObject>((resolve, reject) => {
    const call = c.serverStream(Buffer.from('50')) as grpc.ClientReadableStream<Buffer>;
    call.on('data', (m: Buffer) => items.push(m.toString()));
    call.on('status', resolve);
    call.on('error', reject);
  });
  t.equal(items.length, 50);
  t.equal(items[49], `item-49-${'x'.repeat(4900)}`);
  t.equal(ss.code, grpc.status.OK);
  t.equal(ss.metadata.get('x-count')[0], '50');

  // bidi: interleaved messages, then a non-OK status after the client half-closes
  const replies: string[] = [];
  const bs = await new Promise<grpc.StatusObject>((resolve) => {
    const call = c.bidi() as grpc.ClientDuplexStream<Buffer, Buffer>;
    let i = 0;
    call.on('data', (m: Buffer) => {
      replies.push(m.toString());
      if (++i < 20) call.write(Buffer.from(`m${i}`));
      else call.end();
    });
    call.on('error', () => {});
    call.on('status', resolve);
    call.write(Buffer.from('m0'));
  });
  t.same(replies, Array.from({ length: 20 }, (_, i) => `re:m${i}`), 'bidi: each message answered in turn');
  t.equal(bs.code, grpc.status.OUT_OF_RANGE);
  t.equal(bs.details, 'got 20');
  t.equal(policy.exchanges.at(-1)!.ends[0]!.grpcStatus, grpc.status.OUT_OF_RANGE);

  // many concurrent unary calls
  const many = await Promise.all(Array.from({ length: 200 }, (_, i) => new Promise<string>((resolve, reject) => {
    c.unary(Buffer.from(`n${i}`), (e: grpc.ServiceError | null, r: Buffer) => (e ? reject(e) : resolve(r.toString())));
  })));
  t.ok(many.every((m, i) => m === `echo:n${i}`), '200 concurrent unary calls');
  t.equal(policy.contractViolations(), '');
});

t.test('a local reply to a gRPC client is a trailers-only response with a mapped grpc-status', async (t) => {
  policy.route = () => ({ status: 403, headers: { 'x-sockmesh-denied': 'no-way' }, body: 'denied by rule no-way\n' });
  const c = new Client(`127.0.0.1:${proxy.port}`, grpc.credentials.createInsecure()) as unknown as GenericClient;
  t.teardown(() => c.close());
  const err = await new Promise<grpc.ServiceError>((resolve) => c.unary(Buffer.from('x'), (e: grpc.ServiceError) => resolve(e)));
  t.equal(err.code, grpc.status.PERMISSION_DENIED);
  t.match(err.details, /denied by rule no-way/);
  t.equal(err.metadata.get('x-sockmesh-denied')[0], 'no-way');
});

t.test('a client that resets its stream cancels the upstream stream; the session lives on', async (t) => {
  let upstreamCancelled = false;
  const b = await h2Backend((s, h) => {
    if (h[':path'] === '/hang') { s.on('close', () => { upstreamCancelled = s.rstCode === constants.NGHTTP2_CANCEL; }); return; }
    s.respond({ ':status': 200 });
    s.end('ok');
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const c = client(t);
  const req = c.request({ ':path': '/hang' });
  req.on('error', () => {});
  await new Promise((r) => setTimeout(r, 100));
  req.close(constants.NGHTTP2_CANCEL);
  await new Promise((r) => setTimeout(r, 150));
  t.ok(upstreamCancelled, 'the upstream stream was reset with CANCEL');
  const x = policy.exchanges.at(-1)!;
  t.same(x.attempts[0]!.outcomes, [{ kind: 'cancelled' }]);
  t.same(x.ends, [{ status: 0 }]);
  const ok = await h2request(c, { ':path': '/ok' });
  t.equal(ok.headers[':status'], 200, 'the same client session still works');
  t.equal(policy.contractViolations(), '');
});

t.test('an idle client session is closed after the idle timeout, not while a stream is open', async (t) => {
  const b = await h2Backend((s, h) => {
    if (h[':path'] === '/slow') { setTimeout(() => { s.respond({ ':status': 200 }); s.end('late'); }, 600); return; }
    s.respond({ ':status': 200 });
    s.end('ok');
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const p2 = await startProxy(policy, { clientIdleTimeoutMs: 250 });
  t.teardown(() => p2.close());
  const c = h2connect(`http://127.0.0.1:${p2.port}`);
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  const slow = await h2request(c, { ':path': '/slow' });
  t.equal(slow.body.toString(), 'late', 'a stream open longer than the idle timeout completes');
  const closed = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 3000);
    c.on('close', () => { clearTimeout(timer); resolve(true); });
    c.on('goaway', () => { clearTimeout(timer); resolve(true); });
  });
  t.ok(closed, 'the idle session was closed by the proxy');
});

t.test('h2 route timeout: 504 before the head, RST_STREAM after it; gRPC clients get DEADLINE_EXCEEDED', async (t) => {
  const b = await h2Backend((s, h) => {
    if (h[':path'] === '/late-body') { s.respond({ ':status': 200 }); s.write('part'); return; } // never ends
    /* /stall: never answers */
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], timeoutMs: 250 });
  const c = client(t);
  const t0 = Date.now();
  const r = await h2request(c, { ':path': '/stall' });
  const took = Date.now() - t0;
  t.equal(r.headers[':status'], 504);
  t.ok(took >= 230 && took < 3000, `after the route timeout (${took} ms)`);
  const late = await h2request(c, { ':path': '/late-body' }).catch((e: Error) => ({ error: e.message }));
  t.ok('error' in late && /NGHTTP2_INTERNAL_ERROR/.test(late.error), `the started response was reset: ${JSON.stringify(late)}`);
  const g = await h2request(c, { ':path': '/stall', 'content-type': 'application/grpc' }, Buffer.alloc(5));
  t.equal(g.headers[':status'], 200);
  t.equal(g.headers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), 'trailers-only DEADLINE_EXCEEDED');
  t.equal(policy.contractViolations(), '');
});

t.test('h2 route timeouts of several requests on one connection (one timer per connection): each at its own deadline', async (t) => {
  const b = await h2Backend((s, h) => {
    if (h[':path'] === '/fast') s.respond({ ':status': 200 }, { endStream: true });
    /* /stall-*: never answers */
  });
  t.teardown(() => b.close());
  const timeouts: Record<string, number> = { '/stall-long': 1500, '/stall-short': 300, '/fast': 1000 };
  policy.route = (head) => ({ upstreams: [upstream(b.port, group)], timeoutMs: timeouts[head.path] ?? 0 });
  const c = client(t);
  const t0 = Date.now();
  const took = (p: Promise<H2Got>): Promise<{ status: unknown; ms: number }> => p.then((r) => ({ status: r.headers[':status'], ms: Date.now() - t0 }));
  // the long one first: the connection's timer must be moved earlier for the short one
  const long = took(h2request(c, { ':path': '/stall-long' }));
  await new Promise((r) => setTimeout(r, 20));
  const short = took(h2request(c, { ':path': '/stall-short' }));
  const fast = await Promise.all([1, 2, 3].map(() => took(h2request(c, { ':path': '/fast' }))));
  for (const f of fast) t.equal(f.status, 200, 'the quick ones are answered meanwhile');
  const s1 = await short;
  t.equal(s1.status, 504);
  t.ok(s1.ms >= 290 && s1.ms < 1300, `the short one at its own deadline (${s1.ms} ms), not the long one's`);
  const l1 = await long;
  t.equal(l1.status, 504);
  t.ok(l1.ms >= 1450 && l1.ms < 5000, `the long one at its deadline (${l1.ms} ms)`);
  t.equal((await h2request(c, { ':path': '/fast' })).headers[':status'], 200, 'the connection serves on');
  t.equal(policy.contractViolations(), '');
});
