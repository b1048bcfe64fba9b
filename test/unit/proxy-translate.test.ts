// upstreamProtocol: HTTP/2 clients to HTTP/1.1 backends and HTTP/1.1 clients to HTTP/2 backends, through the real
// proxy engine, with independent clients and servers (node:http, node:http2, raw sockets): heads, bodies both ways
// (content-length, chunked, large with flow control), trailers both ways, connection-specific fields, te, Host and
// :authority, keep-alive reuse, failures. The pure translation functions are checked on their own first.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { createServer as h1server, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import { h1RequestToH2, h1ResponseToH2, h1TrailersToH2, h2RequestToH1, h2ResponseToH1, h2TrailersToH1, type ResponseHead } from '../../agent/proxy/translate.js';
import { Framing } from '../../agent/proxy/h1parse.js';
import { connectTo, h2request, readResponses, startProxy, TestGroup, TestPolicy, upstream, type RunningProxy } from '../lib/proxy.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

t.test('translation functions', async (t) => {
  const head = {
    method: 'POST', path: '/a?b', authority: 'svc:8080', protocol: 'http1' as const, grpc: false, hasBody: true,
    headers: { 'x-a': '1', 'x-multi': ['p', 'q'], connection: 'x', 'keep-alive': 'timeout=5', 'proxy-connection': 'y', 'transfer-encoding': 'chunked', upgrade: 'ws', host: 'h', te: 'gzip' },
  };
  t.same(h1RequestToH2(head, true, 12), [
    ':method', 'POST', ':scheme', 'http', ':authority', 'svc:8080', ':path', '/a?b',
    'x-a', '1', 'x-multi', 'p', 'x-multi', 'q', 'te', 'trailers', 'content-length', '12',
  ], 'h1 -> h2 request: pseudo-headers first, connection-specific fields dropped, te only trailers');
  t.same(h1RequestToH2({ ...head, headers: {} }, false, -1).filter((_, i, a) => i % 2 === 0 && a[i] === 'content-length'), [], 'chunked: no content-length');
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
  h2ResponseToH1([':status', '404', 'x-r', '1', 'content-length', '7'], false, back);
  t.same(back, { status: 404, reason: 'Not Found', names: ['x-r'], values: ['1'], framing: Framing.Length, hasContentLength: true, contentLength: 7 });
  h2ResponseToH1([':status', '200', 'x-r', '1'], false, back);
  t.equal(back.framing, Framing.Chunked, 'no content-length: chunked');
  h2ResponseToH1([':status', '204'], true, back);
  t.equal(back.framing, Framing.None, 'ended with the head: no body');
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
