// upstreamProtocol: HTTP/2 clients to HTTP/1.1 backends and HTTP/1.1 clients to HTTP/2 backends, through the real
// proxy engine, with independent clients and servers (node:http, node:http2, raw sockets): heads, bodies both ways
// (content-length, chunked, large with flow control), trailers both ways, connection-specific fields, te, Host and
// :authority, keep-alive reuse, failures. The pure translation functions are checked on their own first.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { Agent, createServer as h1server, request as h1request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect as h2connect, constants, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import { h1RequestToH2, h1ResponseToH2, h1TrailersToH2, h2RequestToH1, h2ResponseToH1, h2TrailersToH1, type ResponseHead } from '../../agent/proxy/translate.js';
import { Framing } from '../../agent/proxy/h1parse.js';
import { connectTo, h2Backend, h2request, rawExchange, readResponses, startProxy, TestGroup, TestPolicy, upstream, type RunningProxy } from '../lib/proxy.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

t.test('translation functions', async (t) => {
  const head = {
    method: 'POST', path: '/a?b', authority: 'svc:8080', protocol: 'http1' as const, grpc: false, hasBody: true,
    headers: { 'x-a': '1', 'x-multi': ['p', 'q'], connection: 'x', 'keep-alive': 'timeout=5', 'proxy-connection': 'y', 'transfer-encoding': 'chunked', upgrade: 'ws', host: 'h', te: 'gzip' },
  };
  t.same(h1RequestToH2(head, true, 12, '127.0.0.1:80'), [
    ':method', 'POST', ':scheme', 'http', ':authority', 'svc:8080', ':path', '/a?b',
    'x-a', '1', 'x-multi', 'p', 'x-multi', 'q', 'te', 'trailers', 'content-length', '12',
  ], 'h1 -> h2 request: pseudo-headers first, connection-specific fields dropped, te only trailers');
  t.equal(h1RequestToH2({ ...head, authority: '' }, false, -1, '[::1]:80')[5], '[::1]:80', 'no Host (HTTP/1.0): the address connected to');
  t.same(h1RequestToH2({ ...head, headers: {} }, false, -1, '').filter((_, i, a) => i % 2 === 0 && a[i] === 'content-length'), [], 'chunked: no content-length');
  const r = h2RequestToH1([':method', 'PUT', ':scheme', 'http', ':authority', 'svc', ':path', '/p', 'cookie', 'a=1', 'x-b', '2', 'cookie', 'b=2', 'te', 'trailers'], true);
  t.equal(r.head, 'PUT /p HTTP/1.1\r\nhost: svc\r\nx-b: 2\r\nte: trailers\r\ncookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n\r\n', 'h2 -> h1 request: Host from :authority, cookies joined, chunked body');
  t.equal(r.chunked, true);
  const r2 = h2RequestToH1([':method', 'POST', ':scheme', 'http', ':authority', 'svc', ':path', '/p', 'content-length', '5'], true);
  t.equal(r2.head, 'POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\n');
  t.equal(r2.chunked, false);
  t.equal(h2RequestToH1([':method', 'GET', ':scheme', 'http', ':authority', 'svc', ':path', '/'], false).head, 'GET / HTTP/1.1\r\nhost: svc\r\n\r\n', 'no body: no framing');
  const res: ResponseHead = { status: 200, reason: 'OK', names: ['x-r', 'set-cookie', 'set-cookie'], values: ['1', 'a', 'b'], framing: Framing.Length, hasContentLength: true, contentLength: 3 };
  t.same(h1ResponseToH2(res), [':status', '200', 'x-r', '1', 'set-cookie', 'a', 'set-cookie', 'b', 'content-length', '3']);
  const back: ResponseHead = { status: 0, reason: '', names: [], values: [], framing: Framing.None, hasContentLength: false, contentLength: 0 };
  h2ResponseToH1([':status', '404', 'x-r', '1', 'content-length', '7'], false, false, back);
  t.same(back, { status: 404, reason: 'Not Found', names: ['x-r'], values: ['1'], framing: Framing.Length, hasContentLength: true, contentLength: 7 });
  h2ResponseToH1([':status', '200', 'x-r', '1'], false, false, back);
  t.equal(back.framing, Framing.Chunked, 'no content-length: chunked');
  h2ResponseToH1([':status', '204'], true, false, back);
  t.equal(back.framing, Framing.None, 'ended with the head: no body');
  t.equal(back.hasContentLength, false, '204: no content-length');
  h2ResponseToH1([':status', '200'], true, false, back);
  t.same([back.framing, back.hasContentLength, back.contentLength], [Framing.None, true, 0], 'an empty 200 says content-length: 0');
  h2ResponseToH1([':status', '200'], true, true, back);
  t.equal(back.hasContentLength, false, 'HEAD: no length made up');
  t.same(h1TrailersToH2('Grpc-Status: 0\r\nX-Sum:  abc \r\ncontent-length: 5\r\nTransfer-Encoding: x\r\n'), ['grpc-status', '0', 'x-sum', 'abc'], 'h1 trailers -> h2: lower-case, framing fields dropped');
  t.equal(h2TrailersToH1(['x-sum', 'abc', 'grpc-status', '0']), 'x-sum: abc\r\ngrpc-status: 0\r\n');
});

// ---- the engine ----

let proxy: RunningProxy;
const group = new TestGroup();
const policy = new TestPolicy(() => ({ status: 500, headers: {}, body: 'no route\n' }));
t.before(async () => { proxy = await startProxy(policy); });
t.teardown(async () => { await proxy.close(); });

function h2client(t: { teardown(fn: () => void): void }): ClientHttp2Session {
  const c = h2connect(`http://127.0.0.1:${proxy.port}`);
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  return c;
}

interface H1Backend { port: number; server: Server; connections: number; close(): Promise<void> }

/** a node:http backend (HTTP/1.1 only) */
async function h1Backend(handler: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void): Promise<H1Backend> {
  const sockets = new Set<Socket>();
  const b: H1Backend = {
    port: 0, connections: 0, server: h1server(),
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); b.server.close(() => r()); }),
  };
  b.server.on('connection', (s: Socket) => { b.connections++; sockets.add(s); s.on('close', () => sockets.delete(s)); });
  b.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => handler(req, res, Buffer.concat(parts)));
  });
  await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  return b;
}

t.test('h2 client -> HTTP/1.1 backend: heads, bodies, trailers both ways, keep-alive reuse', async (t) => {
  const seen: { method: string; url: string; headers: IncomingMessage['headers']; raw: string[]; trailers: Record<string, string>; len: number }[] = [];
  const b = await h1Backend((req, res, body) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, raw: req.rawHeaders, trailers: req.trailers as Record<string, string>, len: body.length });
    if (req.url === '/trailers') {
      res.writeHead(200, { 'x-kind': 'chunked', trailer: 'x-sum' });
      res.write('part1-');
      res.write('part2');
      res.addTrailers({ 'X-Sum': sha(body) });
      res.end();
      return;
    }
    if (req.url === '/empty') { res.writeHead(204, { 'x-empty': '1' }); res.end(); return; }
    const out = body.length > 0 ? body : Buffer.from(`hello ${req.method}`);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(out.length), 'x-sha': sha(body), 'x-host': String(req.headers.host), connection: 'keep-alive', 'keep-alive': 'timeout=5' });
    res.end(req.method === 'HEAD' ? undefined : out);
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], upstreamProtocol: 'http1' });
  const c = h2client(t);

  const g = await h2request(c, { ':path': '/get?x=1', ':authority': 'svc.example:80', 'x-custom': 'v', cookie: 'a=1', te: 'trailers' });
  t.equal(g.headers[':status'], 200);
  t.equal(g.body.toString(), 'hello GET');
  t.equal(g.headers['x-host'], 'svc.example:80', ':authority became Host');
  t.notOk(g.headers['connection'] ?? g.headers['keep-alive'], 'connection-specific response fields dropped');
  const s0 = seen.at(-1)!;
  t.equal(s0.url, '/get?x=1');
  t.equal(s0.headers['x-custom'], 'v');
  t.equal(s0.headers['te'], 'trailers', 'te: trailers passed on');
  t.equal(s0.headers['cookie'], 'a=1');
  t.equal(policy.exchanges.at(-1)!.head.protocol, 'h2');

  // bodies: the client's content-length is passed on; without one the body goes chunked
  for (const size of [1, 16384, 100_000, 3_000_001]) {
    const data = randomBytes(size);
    const parts: Buffer[] = [];
    for (let off = 0; off < size;) { const n = 1 + Math.floor(Math.random() * 70000); parts.push(data.subarray(off, off + n)); off += n; }
    const p = await h2request(c, { ':path': '/post', ...(size === 16384 ? { 'content-length': String(size) } : {}) }, parts);
    t.equal(p.headers[':status'], 200);
    t.equal(p.headers['x-sha'], sha(data), `request body of ${size} bytes arrived whole`);
    t.equal(sha(p.body), sha(data), `response body of ${size} bytes byte-exact`);
    t.equal(p.headers['content-length'], String(size), 'the backend\'s content-length passed on');
    const s = seen.at(-1)!;
    t.equal(s.headers['transfer-encoding'], size === 16384 ? undefined : 'chunked', size === 16384 ? 'content-length kept' : 'chunked to the backend');
  }

  // trailers both ways: the client's trailing HEADERS as the chunked body's trailer section, and back
  const tr = await new Promise<{ status: unknown; body: string; trailers: Record<string, unknown> }>((resolve, reject) => {
    const req = c.request({ ':method': 'POST', ':path': '/trailers', te: 'trailers' }, { waitForTrailers: true });
    const parts: Buffer[] = [];
    let status: unknown;
    let trailers: Record<string, unknown> = {};
    req.on('response', (h) => { status = h[':status']; });
    req.on('trailers', (h) => { trailers = h; });
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('error', reject);
    req.on('wantTrailers', () => req.sendTrailers({ 'x-client-trailer': 'ct' }));
    req.on('close', () => resolve({ status, body: Buffer.concat(parts).toString(), trailers }));
    req.end('trailer body');
  });
  t.equal(tr.status, 200);
  t.equal(tr.body, 'part1-part2');
  t.equal(tr.trailers['x-sum'], sha(Buffer.from('trailer body')), 'the chunked response\'s trailer came as trailing HEADERS');
  t.equal(seen.at(-1)!.trailers['x-client-trailer'], 'ct', 'the client\'s trailers reached the HTTP/1.1 backend');

  const e = await h2request(c, { ':path': '/empty' });
  t.equal(e.headers[':status'], 204);
  t.equal(e.headers['x-empty'], '1');
  const hd = await h2request(c, { ':path': '/head', ':method': 'HEAD' });
  t.equal(hd.headers[':status'], 200);
  t.equal(hd.body.length, 0, 'HEAD: no body');
  t.equal(hd.headers['content-length'], String('hello HEAD'.length), 'HEAD: the length the GET would have had');
  t.equal(b.connections, 1, 'one keep-alive connection carried all of it');
  t.equal(policy.contractViolations(), '');
});

t.test('h2 client -> HTTP/1.1 backend: concurrent streams use several connections; a slow client holds the backend back', async (t) => {
  const big = randomBytes(8 * 1024 * 1024);
  const b = await h1Backend((req, res) => {
    if (req.url === '/big') { res.writeHead(200, { 'content-length': String(big.length) }); res.end(big); return; }
    setTimeout(() => { res.writeHead(200); res.end(req.url); }, 10 + Math.random() * 20);
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], upstreamProtocol: 'http1' });
  const c = h2client(t);
  const n = 50;
  const rs = await Promise.all(Array.from({ length: n }, (_, i) => h2request(c, { ':path': `/s/${i}` })));
  t.equal(rs.filter((r, i) => Number(r.headers[':status']) === 200 && r.body.toString() === `/s/${i}`).length, n, `${n} concurrent streams answered correctly`);
  t.ok(b.connections > 1 && b.connections <= n, `backend connections: ${b.connections}`);
  // a stream whose reader pauses: the proxy holds about one stream window, not 8 MiB
  const req = c.request({ ':method': 'GET', ':path': '/big' });
  req.pause();
  await new Promise((r) => setTimeout(r, 300));
  const parts: Buffer[] = [];
  req.on('data', (d: Buffer) => parts.push(d));
  await new Promise<void>((resolve) => { req.on('end', () => resolve()); req.resume(); });
  t.equal(sha(Buffer.concat(parts)), sha(big), '8 MiB through a paused reader, byte-exact');
  t.equal(policy.contractViolations(), '');
});

t.test('h2 client -> HTTP/1.1 backend: failures', async (t) => {
  const b = await h1Backend((req, res) => {
    if (req.url === '/die') { req.socket.destroy(); return; }
    if (req.url === '/mid') { res.writeHead(200, { 'content-length': '100' }); res.write('only part'); setTimeout(() => req.socket.destroy(), 20); return; }
    res.end('ok');
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], upstreamProtocol: 'http1' });
  const c = h2client(t);
  const die = await h2request(c, { ':path': '/die' });
  t.equal(die.headers[':status'], 502, 'closed before the head: 502');
  const mid = await h2request(c, { ':path': '/mid' }).catch((e: Error) => ({ headers: {}, body: Buffer.alloc(0), trailers: null, rstCode: -1, err: e.message }));
  t.ok(mid.rstCode !== 0, `cut mid-body: the client stream was reset (${mid.rstCode})`);
  const ok = await h2request(c, { ':path': '/ok' });
  t.equal(ok.body.toString(), 'ok', 'the session lives on');
  await b.close();
  const gone = await h2request(c, { ':path': '/ok' });
  t.equal(gone.headers[':status'], 503, 'backend gone: connect failure');
  t.equal(gone.headers['x-sockmesh-error'], 'connect-failure');
  t.equal(policy.contractViolations(), '');
});

// ---- HTTP/1.1 clients to HTTP/2 backends ----

function h2Body(s: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('error', reject);
  });
}

t.test('HTTP/1.1 client -> h2 backend: heads, bodies (length, chunked), trailers both ways, one session', async (t) => {
  const seen: { headers: IncomingHttpHeaders; trailers: IncomingHttpHeaders | null; len: number }[] = [];
  const b = await h2Backend((s, h) => {
    const rec = { headers: h, trailers: null as IncomingHttpHeaders | null, len: 0 };
    seen.push(rec);
    s.on('trailers', (tr: IncomingHttpHeaders) => { rec.trailers = tr; });
    h2Body(s).then((body) => {
      rec.len = body.length;
      const path = String(h[':path']);
      if (path === '/trailers') {
        s.respond({ ':status': 200, 'x-kind': 'trailers' }, { waitForTrailers: true });
        s.on('wantTrailers', () => s.sendTrailers({ 'x-sum': sha(body), 'grpc-status': '0' }));
        s.end('streamed');
        return;
      }
      if (path === '/empty') { s.respond({ ':status': 204, 'x-empty': '1' }, { endStream: true }); return; }
      if (path === '/nolength') { s.respond({ ':status': 200 }); s.write('a'); s.end('b'); return; }
      if (path === '/emptyok') { s.respond({ ':status': 200 }, { endStream: true }); return; }
      const out = body.length > 0 ? body : Buffer.from(`hello ${h[':method']}`);
      s.respond({ ':status': 200, 'content-length': String(out.length), 'x-sha': sha(body) });
      s.end(h[':method'] === 'HEAD' ? undefined : out);
    }, () => {});
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], upstreamProtocol: 'h2' });
  const sock = await connectTo(proxy.port);
  t.teardown(() => sock.destroy());

  sock.write('GET /get?x=1 HTTP/1.1\r\nHost: svc.example:80\r\nX-Mixed-Case: v\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nTE: trailers, gzip\r\nProxy-Connection: keep-alive\r\nCookie: a=1\r\n\r\n');
  const [g] = await readResponses(sock, 1);
  t.equal(g!.status, 200);
  t.equal(g!.body.toString(), 'hello GET');
  t.equal(g!.headers['content-length'], '9', 'the backend\'s content-length');
  t.notOk(g!.headers['transfer-encoding']);
  const h0 = seen.at(-1)!.headers;
  t.equal(h0[':authority'], 'svc.example:80', 'Host became :authority');
  t.equal(h0[':scheme'], 'http');
  t.equal(h0[':path'], '/get?x=1');
  t.equal(h0['x-mixed-case'], 'v', 'names lower-case');
  t.equal(h0['te'], 'trailers', 'te: only trailers');
  t.equal(h0['cookie'], 'a=1');
  for (const name of ['host', 'connection', 'keep-alive', 'proxy-connection', 'x-hop', 'transfer-encoding', 'upgrade']) t.notOk(name in h0, `${name} not sent to the h2 backend`);
  t.equal(policy.exchanges.at(-1)!.head.protocol, 'http1');

  // content-length body, and a chunked body of many sizes (DATA frames; no content-length made up)
  for (const size of [1, 100_000, 3_000_001]) {
    const data = randomBytes(size);
    sock.write(`POST /len HTTP/1.1\r\nHost: svc\r\nContent-Length: ${size}\r\n\r\n`);
    sock.write(data);
    const [p] = await readResponses(sock, 1, 10_000);
    t.equal(p!.headers['x-sha'], sha(data), `content-length body of ${size} bytes arrived whole`);
    t.equal(sha(p!.body), sha(data), `response body of ${size} bytes byte-exact`);
    t.equal(seen.at(-1)!.headers['content-length'], String(size), 'content-length passed on');
    sock.write('POST /chunked HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n');
    for (let off = 0; off < size;) {
      const n = Math.min(size - off, 1 + Math.floor(Math.random() * 70000));
      sock.write(`${n.toString(16)}\r\n`);
      sock.write(data.subarray(off, off + n));
      sock.write('\r\n');
      off += n;
    }
    sock.write('0\r\n\r\n');
    const [c] = await readResponses(sock, 1, 10_000);
    t.equal(c!.headers['x-sha'], sha(data), `chunked body of ${size} bytes arrived whole as DATA`);
    t.notOk(seen.at(-1)!.headers['content-length'], 'no content-length for a chunked body');
  }

  // trailers both ways: the chunked request's trailer section as trailing HEADERS; the response's as a trailer section
  sock.write('POST /trailers HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Client-Sum: abc\r\n\r\n');
  const raw = await new Promise<string>((resolve) => {
    let got = '';
    const on = (d: Buffer): void => { got += d.toString('latin1'); if (got.endsWith('\r\n\r\n') && got.includes('\r\n0\r\n')) { sock.off('data', on); resolve(got); } };
    sock.on('data', on);
  });
  t.match(raw, /^HTTP\/1\.1 200 OK\r\n/);
  t.match(raw, /\r\ntransfer-encoding: chunked\r\n/, 'no length from the backend: chunked to the client');
  t.match(raw, new RegExp(`\\r\\n0\\r\\nx-sum: ${sha(Buffer.from('hello'))}\\r\\ngrpc-status: 0\\r\\n\\r\\n$`), 'the trailing HEADERS as the chunked trailer section');
  t.same(seen.at(-1)!.trailers?.['x-client-sum'], 'abc', 'the client\'s trailer section came as trailing HEADERS');
  // (a framing field in a trailer section is refused by the parser: proxy-h1parse's trailer tests)

  sock.write('HEAD /head HTTP/1.1\r\nHost: svc\r\n\r\nGET /empty HTTP/1.1\r\nHost: svc\r\n\r\nGET /emptyok HTTP/1.1\r\nHost: svc\r\n\r\nGET /nolength HTTP/1.1\r\nHost: svc\r\n\r\n');
  const [hd, e, eok, nl] = await readResponses(sock, 4, 5000, 1);
  t.equal(e!.status, 204);
  t.equal(e!.headers['x-empty'], '1');
  t.notOk(e!.headers['content-length']);
  t.equal(eok!.headers['content-length'], '0', 'an empty 200 (END_STREAM on the head) says content-length: 0');
  t.equal(nl!.headers['transfer-encoding'], 'chunked');
  t.equal(nl!.body.toString(), 'ab');
  t.equal(hd!.status, 200);
  t.equal(hd!.headers['content-length'], String('hello HEAD'.length), 'HEAD: the length passed on');
  t.equal(b.sessions, 1, 'one upstream session for all of it');
  t.equal(policy.contractViolations(), '');
});

t.test('HTTP/1.1 client -> h2 backend: HTTP/1.0, Expect, node:http clients in parallel, a slow reader', async (t) => {
  const big = randomBytes(8 * 1024 * 1024);
  const b = await h2Backend((s, h) => {
    h2Body(s).then((body) => {
      if (h[':path'] === '/big') { s.respond({ ':status': 200 }); s.end(big); return; }
      s.respond({ ':status': 200, 'x-len': String(body.length) });
      s.end(String(h[':path']));
    }, () => {});
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], upstreamProtocol: 'h2' });
  // HTTP/1.0 without a length from the backend: the body runs to the close
  const r10 = await rawExchange(proxy.port, 'GET /ten HTTP/1.0\r\n\r\n');
  t.match(r10.text, /^HTTP\/1\.1 200 OK\r\n/);
  t.notMatch(r10.text, /transfer-encoding/i);
  t.ok(r10.text.endsWith('\r\n\r\n/ten'), 'HTTP/1.0: close-delimited');
  t.ok(r10.closed);
  // Expect: 100-continue: answered when the stream opens
  const sock = await connectTo(proxy.port);
  t.teardown(() => sock.destroy());
  sock.write('POST /expect HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n');
  const cont = await new Promise<string>((resolve) => sock.once('data', (d: Buffer) => resolve(d.toString('latin1'))));
  t.match(cont, /^HTTP\/1\.1 100 Continue\r\n\r\n/);
  sock.write('abc');
  const [x] = await readResponses(sock, 1);
  t.equal(x!.headers['x-len'], '3');
  // node:http clients, many in parallel over keep-alive connections: multiplexed on few upstream sessions
  const agent = new Agent({ keepAlive: true, maxSockets: 20 });
  t.teardown(() => agent.destroy());
  const get = (path: string): Promise<{ status: number; body: Buffer }> => new Promise((resolve, reject) => {
    const req = h1request({ port: proxy.port, host: '127.0.0.1', path, agent, headers: { host: 'svc' } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(parts) }));
    });
    req.on('error', reject);
    req.end();
  });
  const n = 200;
  const rs = await Promise.all(Array.from({ length: n }, (_, i) => get(`/p/${i}`)));
  t.equal(rs.filter((r, i) => r.status === 200 && r.body.toString() === `/p/${i}`).length, n, `${n} requests from 20 connections answered correctly`);
  t.ok(b.sessions <= 3, `upstream sessions: ${b.sessions}`);
  // a client that does not read: the proxy holds about one stream window, and the 8 MiB arrive whole later
  const slow = await connectTo(proxy.port);
  t.teardown(() => slow.destroy());
  slow.pause();
  slow.write('GET /big HTTP/1.1\r\nHost: svc\r\n\r\n');
  await new Promise((r) => setTimeout(r, 300));
  slow.resume();
  const [bigRes] = await readResponses(slow, 1, 10_000);
  t.equal(sha(bigRes!.body), sha(big), '8 MiB through a paused reader, byte-exact');
  t.equal(policy.contractViolations(), '');
});

t.test('HTTP/1.1 client -> h2 backend: failures', async (t) => {
  const b = await h2Backend((s, h) => {
    if (h[':path'] === '/reset') { s.close(constants.NGHTTP2_INTERNAL_ERROR); return; }
    // (node's stream.close() ends the stream cleanly before its RST_STREAM: the session dies instead)
    if (h[':path'] === '/mid') { s.respond({ ':status': 200 }); s.write('partial'); setTimeout(() => s.session?.destroy(), 20); return; }
    s.respond({ ':status': 200 });
    s.end('ok');
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], upstreamProtocol: 'h2' });
  const sock = await connectTo(proxy.port);
  t.teardown(() => sock.destroy());
  sock.write('GET /reset HTTP/1.1\r\nHost: svc\r\n\r\n');
  const [r] = await readResponses(sock, 1);
  t.equal(r!.status, 502, 'reset before the head: 502');
  const mid = await rawExchange(proxy.port, 'GET /mid HTTP/1.1\r\nHost: svc\r\n\r\n');
  t.ok(mid.closed && !mid.text.includes('\r\n0\r\n\r\n'), 'reset mid-body: the client connection is cut, never a clean end');
  sock.write('GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n');
  const [ok] = await readResponses(sock, 1);
  t.equal(ok!.body.toString(), 'ok');
  await b.close();
  sock.write('GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n');
  const [gone] = await readResponses(sock, 1);
  t.equal(gone!.status, 503, 'backend gone: connect failure');
  t.equal(policy.contractViolations(), '');
});

t.test('interim responses across: Expect: 100-continue from an h2 client to HTTP/1.1, 103 Early Hints both ways', async (t) => {
  const b1 = await h1Backend((req, res, body) => {
    if (req.url === '/hints') res.writeEarlyHints({ link: '</a.css>; rel=preload' });
    res.writeHead(200, { 'content-length': String(body.length), 'x-expect': String(req.headers.expect ?? '') });
    res.end(body);
  });
  t.teardown(() => b1.close());
  policy.route = () => ({ upstreams: [upstream(b1.port, group)], upstreamProtocol: 'http1' });
  const c = h2client(t);
  const got = await new Promise<{ cont: boolean; status: unknown; expect: unknown; body: string }>((resolve, reject) => {
    const req = c.request({ ':method': 'POST', ':path': '/expect', expect: '100-continue' }, { endStream: false });
    let cont = false, status: unknown, expect: unknown;
    const parts: Buffer[] = [];
    req.on('continue', () => { cont = true; req.end('after 100'); });
    req.on('response', (h) => { status = h[':status']; expect = h['x-expect']; });
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('error', reject);
    req.on('close', () => resolve({ cont, status, expect, body: Buffer.concat(parts).toString() }));
  });
  t.same(got, { cont: true, status: 200, expect: '', body: 'after 100' }, '100 Continue from the proxy, the body followed; Expect not sent to the HTTP/1.1 backend');
  const hints = await new Promise<{ early: unknown[]; status: unknown }>((resolve, reject) => {
    const req = c.request({ ':method': 'GET', ':path': '/hints' });
    const early: unknown[] = [];
    let status: unknown;
    req.on('headers', (h) => early.push([h[':status'], h['link']]));
    req.on('response', (h) => { status = h[':status']; });
    req.on('error', reject);
    req.resume();
    req.on('close', () => resolve({ early, status }));
  });
  t.same(hints, { early: [[103, '</a.css>; rel=preload']], status: 200 }, 'an HTTP/1.1 backend\'s 103 reached the h2 client');

  const b2 = await h2Backend((s) => {
    s.additionalHeaders({ ':status': 103, link: '</b.js>; rel=preload' });
    s.respond({ ':status': 200, 'content-length': '2' });
    s.end('ok');
  });
  t.teardown(() => b2.close());
  policy.route = () => ({ upstreams: [upstream(b2.port, group)], upstreamProtocol: 'h2' });
  const raw = await rawExchange(proxy.port, 'GET /hints HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n');
  t.match(raw.text, /^HTTP\/1\.1 103 Early Hints\r\nlink: <\/b\.js>; rel=preload\r\n\r\nHTTP\/1\.1 200 OK\r\n/, 'an h2 backend\'s 103 reached the HTTP/1.1 client before the answer');
  t.equal(policy.contractViolations(), '');
});
