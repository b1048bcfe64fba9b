// The proxy's HTTP/1.1 engine against real servers and clients on loopback: keep-alive reuse, pipelining
// order, chunked and length bodies byte-exact both ways, 100-continue, WebSocket passthrough, malformed
// requests, header limits, upstreams that die, retries and timeouts driven by a scripted policy.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { Agent, createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as netServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import {
  connectTo, rawExchange, readResponses, startProxy, TestGroup, TestPolicy, upstream, type RunningProxy,
} from '../lib/proxy.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface Backend { port: number; server: Server; connections: number; requests: number; close(): Promise<void> }

async function httpBackend(handler: Handler): Promise<Backend> {
  const sockets = new Set<Socket>();
  const b: Backend = {
    port: 0, server: createServer((req, res) => { b.requests++; handler(req, res); }), connections: 0, requests: 0,
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); b.server.close(() => r()); }),
  };
  b.server.keepAliveTimeout = 10_000;
  b.server.on('connection', (s: Socket) => { b.connections++; sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  return b;
}

/** A TCP server with a script per accepted connection (misbehaving upstreams). */
async function rawBackend(onConn: (s: Socket, n: number) => void): Promise<{ port: number; server: NetServer; accepted: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const b = {
    port: 0, accepted: 0,
    server: netServer((s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => {}); onConn(s, ++b.accepted); }),
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); b.server.close(() => r()); }),
  };
  await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  return b;
}

function readAll(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => resolve(Buffer.concat(parts)));
    req.on('error', reject);
  });
}

interface Got { status: number; headers: IncomingMessage['headers']; body: Buffer }

function get(port: number, path: string, opts: { agent?: Agent; method?: string; headers?: Record<string, string>; body?: Buffer | Buffer[]; chunked?: boolean } = {}): Promise<Got> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    const body = opts.body;
    if (body !== undefined && !opts.chunked && !Array.isArray(body)) headers['content-length'] = String(body.length);
    const req = request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', agent: opts.agent ?? false, headers }, (res) => {
      readAll(res).then((b) => resolve({ status: res.statusCode!, headers: res.headers, body: b }), reject);
    });
    req.on('error', reject);
    if (Array.isArray(body)) { for (const part of body) req.write(part); req.end(); }
    else req.end(body);
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

let proxy: RunningProxy;
const group = new TestGroup();
const policy = new TestPolicy(() => ({ status: 500, headers: {}, body: 'no route set\n' }));

t.before(async () => { proxy = await startProxy(policy, { maxHeaderBytes: 8192 }); });
t.teardown(async () => { await proxy.close(); });

t.test('GET: headers both ways, hop-by-hop stripped, rewrites applied, keep-alive reused on both legs', async (t) => {
  const seen: IncomingMessage['headers'][] = [];
  const b = await httpBackend((req, res) => {
    seen.push(req.headers);
    res.setHeader('x-remove-me', '1');
    res.setHeader('x-backend', 'b1');
    res.setHeader('set-cookie', ['a=1', 'b=2']);
    res.end(`hello ${req.url}`);
  });
  t.teardown(() => b.close());
  policy.route = () => ({
    upstreams: [upstream(b.port, group)],
    requestHeaders: { set: { 'x-added': 'yes' }, remove: ['x-drop'] },
    responseHeaders: { set: { 'x-proxy': 'sockmesh' }, remove: ['x-remove-me'] },
  });
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  let clientSockets = 0;
  agent.on('free', () => {});
  for (let i = 0; i < 20; i++) {
    const r = await get(proxy.port, `/x/${i}?q=1`, {
      agent,
      headers: { 'x-drop': 'no', 'x-forwarded-for': '10.0.0.1', connection: 'keep-alive, x-hop', 'x-hop': 'secret', 'keep-alive': 'timeout=5', host: 'svc.example' },
    });
    t.equal(r.status, 200);
    t.equal(r.body.toString(), `hello /x/${i}?q=1`);
    t.equal(r.headers['x-proxy'], 'sockmesh');
    t.equal(r.headers['x-backend'], 'b1');
    t.notOk(r.headers['x-remove-me'], 'response header removed');
    t.same(r.headers['set-cookie'], ['a=1', 'b=2'], 'repeated response header kept as separate lines');
  }
  clientSockets = proxy.proxy.stats().clientConnections;
  t.equal(b.connections, 1, 'one upstream connection for 20 sequential requests (keep-alive reuse)');
  t.ok(clientSockets <= 1, 'one client connection');
  const h = seen[0]!;
  t.equal(h.host, 'svc.example', 'host passed on');
  t.equal(h['x-added'], 'yes');
  t.notOk(h['x-drop'], 'request header removed by the rewrite');
  t.equal(h['x-forwarded-for'], '10.0.0.1', "client's x-forwarded-for kept");
  t.notOk(h['x-hop'], 'header named in Connection stripped');
  t.notOk(h['keep-alive'], 'keep-alive stripped');
  const x = policy.exchanges.at(-1)!;
  t.equal(x.head.method, 'GET');
  t.equal(x.head.path, '/x/19?q=1');
  t.equal(x.head.authority, 'svc.example');
  t.equal(x.head.protocol, 'http1');
  t.equal(x.source.cgroupId, 42n);
  t.equal(policy.contractViolations(), '');
});

t.test('pipelined requests are answered strictly in order (the backend answers them out of order in time)', async (t) => {
  const b = await httpBackend((req, res) => {
    const i = Number(req.url!.slice(1));
    setTimeout(() => res.end(`r${i}`), (10 - i) * 15); // later requests are quicker
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const s = await connectTo(proxy.port);
  t.teardown(() => s.destroy());
  let batch = '';
  for (let i = 0; i < 10; i++) batch += `GET /${i} HTTP/1.1\r\nhost: x\r\n\r\n`;
  batch += 'HEAD /10 HTTP/1.1\r\nhost: x\r\n\r\n';
  s.write(batch);
  const rs = await readResponses(s, 11);
  t.same(rs.slice(0, 10).map((r) => r.body.toString()), Array.from({ length: 10 }, (_, i) => `r${i}`));
  t.equal(rs[10]!.status, 200);
});

t.test('chunked and content-length bodies are byte-exact both ways (random sizes)', async (t) => {
  const b = await httpBackend(async (req, res) => {
    const body = await readAll(req);
    res.setHeader('x-req-te', String(req.headers['transfer-encoding'] ?? ''));
    res.setHeader('x-req-cl', String(req.headers['content-length'] ?? ''));
    res.setHeader('x-sha', sha(body));
    if (req.url === '/chunked') {
      // respond in random pieces, chunked
      let off = 0;
      const write = (): void => {
        if (off >= body.length) { res.end(); return; }
        const n = 1 + Math.floor(Math.random() * 40000);
        res.write(body.subarray(off, off + n));
        off += n;
        setImmediate(write);
      };
      write();
    } else {
      res.setHeader('content-length', body.length);
      res.end(body);
    }
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], bufferLimitBytes: 100_000 });
  const agent = new Agent({ keepAlive: true, maxSockets: 2 });
  t.teardown(() => agent.destroy());
  for (const size of [0, 1, 17, 4096, 65537, 300_001, 1_000_003]) {
    const data = randomBytes(size);
    const parts: Buffer[] = [];
    for (let off = 0; off < size;) { const n = 1 + Math.floor(Math.random() * 70000); parts.push(data.subarray(off, off + n)); off += n; }
    const rc = await get(proxy.port, '/chunked', { agent, method: 'POST', body: parts, chunked: true });
    t.equal(rc.status, 200);
    t.equal(rc.headers['x-sha'], sha(data), `chunked request of ${size} bytes arrived whole`);
    if (size > 0) t.equal(rc.headers['x-req-te'], 'chunked');
    if (size > 0) t.equal(rc.headers['transfer-encoding'], 'chunked', 'chunked response relayed chunked');
    t.equal(sha(rc.body), sha(data), `chunked response of ${size} bytes byte-exact`);
    const rl = await get(proxy.port, '/length', { agent, method: 'PUT', body: data });
    t.equal(rl.headers['x-req-cl'], String(size));
    t.equal(rl.headers['content-length'], String(size));
    t.equal(sha(rl.body), sha(data), `content-length body of ${size} bytes byte-exact`);
  }
});

t.test('Expect: 100-continue: the client gets 100 and its body goes through', async (t) => {
  const b = await httpBackend(async (req, res) => { res.end(sha(await readAll(req))); });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const data = randomBytes(50_000);
  const r = await new Promise<{ status: number; body: string; continued: boolean }>((resolve, reject) => {
    let continued = false;
    const req = request({ host: '127.0.0.1', port: proxy.port, method: 'POST', path: '/up', agent: false, headers: { expect: '100-continue', 'content-length': String(data.length) } }, (res) => {
      readAll(res).then((body) => resolve({ status: res.statusCode!, body: body.toString(), continued }), reject);
    });
    req.on('continue', () => { continued = true; req.end(data); });
    req.on('error', reject);
    req.flushHeaders();
  });
  t.ok(r.continued, '100 Continue received');
  t.equal(r.status, 200);
  t.equal(r.body, sha(data));

  // A policy refusal before forwarding: no 100, a final answer, and the connection is closed
  // (the body the client may still send is not read).
  policy.route = () => ({ status: 403, headers: { 'x-sockmesh-denied': 'rule-1' }, body: 'denied\n' });
  const raw = await rawExchange(proxy.port, 'POST /x HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n');
  t.match(raw.text, /^HTTP\/1\.1 403 Forbidden\r\n/);
  t.notMatch(raw.text, /100 Continue/);
  t.match(raw.text, /x-sockmesh-denied: rule-1/);
  t.ok(raw.closed, 'connection closed after refusing an unread body');
});

function wsFrame(payload: Buffer, mask: boolean): Buffer {
  const head = [0x81, (mask ? 0x80 : 0) | payload.length];
  if (!mask) return Buffer.concat([Buffer.from(head), payload]);
  const key = randomBytes(4);
  const masked = Buffer.from(payload.map((c, i) => c ^ key[i % 4]!));
  return Buffer.concat([Buffer.from(head), key, masked]);
}

t.test('WebSocket: the upgrade is forwarded, on 101 the sockets are spliced both ways', async (t) => {
  const b = await httpBackend((_req, res) => { res.statusCode = 426; res.end(); });
  t.teardown(() => b.close());
  b.server.on('upgrade', (req: IncomingMessage, sock: Socket, head: Buffer) => {
    const key = String(req.headers['sec-websocket-key']);
    const accept = createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`);
    let buf = head;
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      // echo each complete masked frame (payload < 126) unmasked
      while (buf.length >= 6) {
        const len = buf[1]! & 0x7f;
        if (buf.length < 6 + len) break;
        const key2 = buf.subarray(2, 6);
        const payload = Buffer.from(buf.subarray(6, 6 + len).map((c, i) => c ^ key2[i % 4]!));
        sock.write(wsFrame(Buffer.from(`echo:${payload.toString()}`), false));
        buf = buf.subarray(6 + len);
      }
    };
    sock.on('data', onData);
    if (head.length) onData(Buffer.alloc(0));
  });
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const s = await connectTo(proxy.port);
  t.teardown(() => s.destroy());
  const key = randomBytes(16).toString('base64');
  s.write(`GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: ${key}\r\nsec-websocket-version: 13\r\n\r\n`);
  let got = Buffer.alloc(0);
  const want = (pred: (b: Buffer) => boolean): Promise<void> => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout; got ${JSON.stringify(got.toString('latin1'))}`)), 3000);
    const check = (): void => { if (pred(got)) { clearTimeout(timer); s.off('data', on); resolve(); } };
    const on = (d: Buffer): void => { got = Buffer.concat([got, d]); check(); };
    s.on('data', on);
    check();
  });
  await want((b) => b.includes('\r\n\r\n'));
  const head = got.subarray(0, got.indexOf('\r\n\r\n') + 4).toString('latin1');
  got = got.subarray(got.indexOf('\r\n\r\n') + 4);
  t.match(head, /^HTTP\/1\.1 101 /);
  t.match(head, /upgrade: websocket/i);
  t.match(head, new RegExp(`sec-websocket-accept: ${createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64').replace(/[+/]/g, '\\$&')}`));
  for (const msg of ['one', 'two', 'three']) {
    s.write(wsFrame(Buffer.from(msg), true));
    const frame = wsFrame(Buffer.from(`echo:${msg}`), false);
    await want((b) => b.includes(frame));
    got = got.subarray(got.indexOf(frame) + frame.length);
  }
  t.pass('three frames echoed through the splice');
  t.equal(policy.exchanges.at(-1)!.ends[0]!.status, 101);
});

t.test('malformed requests get 400 (or 431/501/505) and the connection is closed', async (t) => {
  policy.route = () => ({ status: 200, headers: {}, body: 'ok\n' });
  const cases: [string, string, number][] = [
    ['both content-length and transfer-encoding', 'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n', 400],
    ['differing duplicate content-lengths', 'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd', 400],
    ['content-length list with differing values', 'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 4\r\n\r\nabcd', 400],
    ['non-numeric content-length', 'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +3\r\n\r\nabc', 400],
    ['non-chunked final transfer-encoding', 'POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n\r\n', 400],
    ['transfer-encoding identity', 'POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: identity\r\n\r\n', 400],
    ['obs-fold', 'GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n', 400],
    ['whitespace before colon', 'GET / HTTP/1.1\r\nhost : x\r\n\r\n', 400],
    ['bad header name character', 'GET / HTTP/1.1\r\nhost: x\r\nx(a): 1\r\n\r\n', 400],
    ['NUL in a value', 'GET / HTTP/1.1\r\nhost: x\r\nx-a: a\u0000b\r\n\r\n', 400],
    ['bare LF in a header line', 'GET / HTTP/1.1\r\nhost: x\nx-a: 1\r\n\r\n', 400],
    ['request line garbage', '\u0016\u0003\u0001\u0002\u0000\u0001\u0000\u0001\u00fc\u0003\u0003', 400],
    ['missing version', 'GET /\r\nhost: x\r\n\r\n', 400],
    ['space in target', 'GET /a b HTTP/1.1\r\nhost: x\r\n\r\n', 400],
    ['HTTP/1.1 without host', 'GET / HTTP/1.1\r\nx-a: 1\r\n\r\n', 400],
    ['two hosts', 'GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n', 400],
    ['bad chunk size', 'POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n', 400],
    ['chunk longer than its size', 'POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n', 400],
    ['HTTP/2.0 request line', 'GET / HTTP/2.0\r\nhost: x\r\n\r\n', 505],
    ['gzip, chunked', 'POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n', 501],
  ];
  // bodies are read when the request is forwarded: a backend that reads them
  const echo = await httpBackend((req, res) => { readAll(req).then((b) => res.end(b), () => res.destroy()); });
  t.teardown(() => echo.close());
  policy.route = (h) => (h.hasBody ? { upstreams: [upstream(echo.port, group)] } : { status: 200, headers: {}, body: 'ok\n' });
  for (const [name, req, status] of cases) {
    const r = await rawExchange(proxy.port, req);
    t.match(r.text, new RegExp(`^HTTP/1\\.1 ${status} `), `${name}: ${status}`);
    t.match(r.text, /connection: close/, `${name}: says close`);
    t.ok(r.closed, `${name}: connection closed`);
  }
  // HTTP/1.0 without host is fine; absolute-form takes its authority from the target
  policy.route = (h) => ({ status: 200, headers: { 'x-authority': h.authority, 'x-path': h.path }, body: 'ok\n' });
  const r10 = await rawExchange(proxy.port, 'GET /ten HTTP/1.0\r\n\r\n');
  t.match(r10.text, /^HTTP\/1\.1 200 /, 'HTTP/1.0 without host accepted');
  t.ok(r10.closed, 'HTTP/1.0 without keep-alive is closed after the answer');
  const rabs = await rawExchange(proxy.port, 'GET http://svc.example:8080/p?q HTTP/1.1\r\nhost: other\r\nconnection: close\r\n\r\n');
  t.match(rabs.text, /x-authority: svc\.example:8080/);
  t.match(rabs.text, /x-path: \/p\?q/);
});

t.test('a header section over the limit gets 431', async (t) => {
  policy.route = () => ({ status: 200, headers: {}, body: 'ok\n' });
  const big = `GET / HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(9000)}\r\n\r\n`;
  const r = await rawExchange(proxy.port, big);
  t.match(r.text, /^HTTP\/1\.1 431 /);
  t.ok(r.closed);
  // ... also when the head never ends
  const r2 = await rawExchange(proxy.port, `GET / HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20000)}`);
  t.match(r2.text, /^HTTP\/1\.1 431 /);
  t.ok(r2.closed);
});

t.test('an upstream dying mid-response aborts that client only; before the head it is a 502', async (t) => {
  const dying = await rawBackend((s) => {
    s.once('data', (d) => {
      if (d.toString().startsWith('GET /mid')) {
        s.write('HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n' + 'x'.repeat(1000));
        setTimeout(() => s.destroy(), 30);
      } else s.destroy(); // before any response byte
    });
  });
  t.teardown(() => dying.close());
  const good = await httpBackend((_req, res) => { setTimeout(() => res.end('fine'), 100); });
  t.teardown(() => good.close());
  policy.route = (h) => ({ upstreams: [upstream(h.path === '/good' ? good.port : dying.port, group)] });
  const exchanges0 = policy.exchanges.length;
  const goodReq = get(proxy.port, '/good');
  const mid = await new Promise<{ aborted: boolean; bytes: number; status: number }>((resolve) => {
    const req = request({ host: '127.0.0.1', port: proxy.port, path: '/mid', agent: false }, (res) => {
      let bytes = 0;
      res.on('data', (d: Buffer) => { bytes += d.length; });
      res.on('error', () => {});
      res.on('close', () => resolve({ aborted: !res.complete, bytes, status: res.statusCode! }));
    });
    req.on('error', () => resolve({ aborted: true, bytes: 0, status: 0 }));
    req.end();
  });
  t.equal(mid.status, 200, 'the head had gone out');
  t.ok(mid.aborted, 'the client connection was cut (the response could not complete)');
  t.ok(mid.bytes >= 1000 && mid.bytes < 100000, `partial body (${mid.bytes} bytes)`);
  const before = await get(proxy.port, '/before');
  t.equal(before.status, 502, 'closed before the head: 502');
  t.equal(before.headers['x-sockmesh-error'], 'reset');
  const g = await goodReq;
  t.equal(g.status, 200);
  t.equal(g.body.toString(), 'fine', 'a concurrent exchange on another connection is unaffected');
  const recs = policy.exchanges.slice(exchanges0);
  t.ok(recs.some((x) => x.attempts[0]?.outcomes[0]?.kind === 'reset'), 'the policy was told reset');
  t.equal(policy.contractViolations(), '');
});

t.test('retries: status, reset and per-try timeout outcomes, with the body replayed', async (t) => {
  let n = 0;
  const flaky = await httpBackend(async (req, res) => {
    const body = await readAll(req);
    n++;
    if (n <= 2) { res.statusCode = 503; res.end('busy'); return; }
    res.end(`ok after ${n}: ${sha(body)}`);
  });
  t.teardown(() => flaky.close());
  const g = new TestGroup();
  policy.route = () => ({ upstreams: [upstream(flaky.port, g)], retries: 3, backoffMs: 5, retryOn: (o) => o.kind === 'response' && o.status === 503 });
  const data = randomBytes(20_000);
  const r = await get(proxy.port, '/p', { method: 'PUT', body: data });
  t.equal(r.status, 200);
  t.equal(r.body.toString(), `ok after 3: ${sha(data)}`, 'third try succeeded with the whole body replayed');
  const x = policy.exchanges.at(-1)!;
  t.equal(x.attempts.length, 3);
  t.same(x.retryAsks.map((a) => a.replayable), [true, true, true]);

  // a body over bufferLimitBytes is not replayed: the 503 goes to the client
  n = 0;
  policy.route = () => ({ upstreams: [upstream(flaky.port, g)], retries: 3, bufferLimitBytes: 1000, retryOn: (o) => o.kind === 'response' && o.status === 503 });
  const r2 = await get(proxy.port, '/p', { method: 'PUT', body: data });
  t.equal(r2.status, 503, 'not retried: the body was too big to keep');
  t.equal(policy.exchanges.at(-1)!.attempts.length, 1);

  // resets: the first two connections are closed without an answer
  const resetting = await rawBackend((s, k) => {
    s.once('data', () => {
      if (k <= 2) s.destroy();
      else s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok');
    });
  });
  t.teardown(() => resetting.close());
  policy.route = () => ({ upstreams: [upstream(resetting.port, g)], retries: 3, retryOn: (o) => o.kind === 'reset' });
  const r3 = await get(proxy.port, '/r');
  t.equal(r3.status, 200);
  t.same(policy.exchanges.at(-1)!.attempts.map((a) => a.outcomes[0]!.kind), ['reset', 'reset', 'response']);

  // a stalled backend: per-try timeout, then another backend answers
  const stall = await rawBackend(() => { /* never answers */ });
  t.teardown(() => stall.close());
  const ok = await httpBackend((_req, res) => res.end('ok'));
  t.teardown(() => ok.close());
  policy.route = () => ({ upstreams: [upstream(stall.port, g), upstream(ok.port, g)], perTryTimeoutMs: 200, retries: 1, retryOn: (o) => o.kind === 'timeout' });
  const t0 = Date.now();
  const r4 = await get(proxy.port, '/s');
  t.equal(r4.status, 200);
  t.ok(Date.now() - t0 >= 190, 'waited for the per-try timeout');
  t.same(policy.exchanges.at(-1)!.attempts.map((a) => a.outcomes[0]!.kind), ['timeout', 'response']);

  // connect failure: nothing listens
  const closedPort = stall.port;
  await stall.close();
  policy.route = () => ({ upstreams: [upstream(closedPort, g), upstream(ok.port, g)], retries: 1, retryOn: (o) => o.kind === 'connect-failure' });
  const r5 = await get(proxy.port, '/c');
  t.equal(r5.status, 200);
  t.same(policy.exchanges.at(-1)!.attempts.map((a) => a.outcomes[0]!.kind), ['connect-failure', 'response']);
  policy.route = () => ({ upstreams: [upstream(closedPort, g)] });
  const r6 = await get(proxy.port, '/c');
  t.equal(r6.status, 503, 'connect failure without retry: 503');
  t.equal(r6.headers['x-sockmesh-error'], 'connect-failure');
  t.equal(policy.contractViolations(), '');
});

t.test('route timeout: 504 before the head, a cut connection after it', async (t) => {
  const slow = await httpBackend((req, res) => {
    if (req.url === '/late-body') { res.writeHead(200, { 'content-length': '10' }); res.write('12345'); return; }
    /* never answers /slow */
  });
  t.teardown(() => slow.close());
  policy.route = () => ({ upstreams: [upstream(slow.port, group)], timeoutMs: 300 });
  const t0 = Date.now();
  const r = await get(proxy.port, '/slow');
  const took = Date.now() - t0;
  t.equal(r.status, 504);
  t.ok(took >= 290 && took < 3000, `answered after the route timeout (${took} ms)`);
  t.equal(policy.exchanges.at(-1)!.attempts[0]!.outcomes[0]!.kind, 'timeout');
  t.equal(policy.exchanges.at(-1)!.ends[0]!.status, 504);
  const cut = await new Promise<boolean>((resolve) => {
    const req = request({ host: '127.0.0.1', port: proxy.port, path: '/late-body', agent: false }, (res) => {
      res.on('data', () => {});
      res.on('error', () => {});
      res.on('close', () => resolve(!res.complete));
    });
    req.on('error', () => resolve(true));
    req.end();
  });
  t.ok(cut, 'response started then the route timeout cut the connection');
  t.equal(policy.contractViolations(), '');
});

t.test('a client going away aborts its upstream request; the policy hears cancelled / 0', async (t) => {
  let upstreamClosed = false;
  const slow = await rawBackend((s) => { s.resume(); s.on('close', () => { upstreamClosed = true; }); });
  t.teardown(() => slow.close());
  policy.route = () => ({ upstreams: [upstream(slow.port, group)] });
  const s = await connectTo(proxy.port);
  s.write('GET /wait HTTP/1.1\r\nhost: x\r\n\r\n');
  await new Promise((r) => setTimeout(r, 150));
  s.destroy();
  await new Promise((r) => setTimeout(r, 150));
  t.ok(upstreamClosed, 'the upstream connection was closed');
  const x = policy.exchanges.at(-1)!;
  t.same(x.attempts[0]!.outcomes, [{ kind: 'cancelled' }]);
  t.same(x.ends, [{ status: 0 }]);
});

t.test('pending: with max connections 1 a second request waits for the connection, over max pending it overflows', async (t) => {
  const b = await httpBackend((_req, res) => { setTimeout(() => res.end('done'), 150); });
  t.teardown(() => b.close());
  const g1 = new TestGroup(1, 1);
  policy.route = () => ({ upstreams: [upstream(b.port, g1)] });
  const rs = await Promise.all([get(proxy.port, '/1'), get(proxy.port, '/2'), get(proxy.port, '/3')]);
  const statuses = rs.map((r) => r.status).sort();
  t.same(statuses, [200, 200, 503], 'two served on one connection, the third overflowed');
  t.equal(rs.find((r) => r.status === 503)!.headers['x-sockmesh-overflow'], 'max-pending-requests');
  t.equal(b.connections, 1, 'one upstream connection');
  t.equal(g1.pending, 0, 'pending all released');
  t.equal(g1.opened, 1);
});

t.test('no original destination: 421 and close', async (t) => {
  const p2 = await startProxy(policy, { originalDst: () => null });
  t.teardown(() => p2.close());
  const r = await rawExchange(p2.port, 'GET / HTTP/1.1\r\nhost: x\r\n\r\n');
  t.match(r.text, /^HTTP\/1\.1 421 /);
  t.ok(r.closed);
});

t.test('a policy that throws costs that connection only, never the process', async (t) => {
  const b = await httpBackend((_req, res) => res.end('ok'));
  t.teardown(() => b.close());
  let calls = 0;
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const orig = policy.begin.bind(policy);
  policy.begin = (dst, src, head) => {
    const ex = orig(dst, src, head);
    if ('status' in ex || head.path !== '/boom') return ex;
    return { ...ex, attempt: () => { calls++; throw new Error('policy bug'); } };
  };
  t.teardown(() => { policy.begin = orig; });
  const r = await rawExchange(proxy.port, 'GET /boom HTTP/1.1\r\nhost: x\r\n\r\n');
  t.ok(r.closed, 'the connection was closed');
  t.equal(calls, 1);
  const ok = await get(proxy.port, '/fine');
  t.equal(ok.status, 200, 'the proxy still serves');
});

t.test('IPv6 on both legs; an upstream that closes idle keep-alive connections is not a failure', async (t) => {
  const p6 = await startProxy(policy, { host: '::1' });
  t.teardown(() => p6.close());
  const sockets = new Set<Socket>();
  const b = createServer((req, res) => res.end(`v6 ${req.socket.remoteAddress}`));
  b.keepAliveTimeout = 100; // closes idle connections quickly, as many servers do
  b.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => b.listen(0, '::1', () => r()));
  t.teardown(() => new Promise<void>((r) => { for (const s of sockets) s.destroy(); b.close(() => r()); }));
  const port = (b.address() as AddressInfo).port;
  policy.route = () => ({ upstreams: [upstream(port, group, '::1')] });
  const ask = (): Promise<Got> => new Promise((resolve, reject) => {
    const req = request({ host: '::1', port: p6.port, path: '/', agent: false }, (res) => {
      readAll(res).then((body) => resolve({ status: res.statusCode!, headers: res.headers, body }), reject);
    });
    req.on('error', reject);
    req.end();
  });
  for (let i = 0; i < 4; i++) {
    const r = await ask();
    t.equal(r.status, 200);
    t.equal(r.body.toString(), 'v6 ::1');
    await new Promise((r2) => setTimeout(r2, i % 2 === 0 ? 150 : 5)); // let the backend drop the idle connection, or not
  }
  t.equal(p6.proxy.stats().upstreamIdleH1 <= 1, true, 'idle connections closed by the backend left the pool');
});

t.test('a request head dripping in too slowly gets 408 and the connection closed', async (t) => {
  const p2 = await startProxy(policy, { headTimeoutMs: 300 });
  t.teardown(() => p2.close());
  const s = await connectTo(p2.port);
  t.teardown(() => s.destroy());
  let text = '';
  s.on('data', (d: Buffer) => { text += d.toString('latin1'); });
  const closed = new Promise<void>((r) => s.on('close', () => r()));
  const t0 = Date.now();
  s.write('GET / HTTP/1.1\r\n');
  const drip = setInterval(() => { if (!s.destroyed) s.write('x-a: 1\r\n'); }, 50); // activity, but never a whole head
  await closed;
  clearInterval(drip);
  t.match(text, /^HTTP\/1\.1 408 /);
  t.ok(Date.now() - t0 >= 280, 'after the head timeout');
});

t.test('timeouts on a keep-alive connection count from each request, not from the first', async (t) => {
  const b = await httpBackend((req, res) => { if (req.url === '/fast') res.end('fast'); /* /stall never answers */ });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)], timeoutMs: 300 });
  const s = await connectTo(proxy.port);
  t.teardown(() => s.destroy());
  s.write('GET /fast HTTP/1.1\r\nhost: x\r\n\r\n');
  const [r1] = await readResponses(s, 1);
  t.equal(r1!.status, 200);
  await new Promise((r) => setTimeout(r, 200)); // the first request's deadline passes while the second runs
  const t0 = Date.now();
  s.write('GET /stall HTTP/1.1\r\nhost: x\r\n\r\n');
  const [r2] = await readResponses(s, 1);
  const took = Date.now() - t0;
  t.equal(r2!.status, 504);
  t.ok(took >= 280 && took < 2000, `504 after the second request's own 300 ms (${took} ms)`);
  // and a per-try timeout shorter than the route timeout still fires first
  policy.route = () => ({ upstreams: [upstream(b.port, group)], timeoutMs: 5000, perTryTimeoutMs: 150 });
  const t1 = Date.now();
  s.write('GET /stall HTTP/1.1\r\nhost: x\r\n\r\n');
  const [r3] = await readResponses(s, 1);
  const took3 = Date.now() - t1;
  t.equal(r3!.status, 504);
  t.ok(took3 >= 140 && took3 < 2000, `per-try timeout (${took3} ms)`);
  t.equal(policy.exchanges.at(-1)!.attempts[0]!.outcomes[0]!.kind, 'timeout');
});

t.test('an idle keep-alive connection is closed after the idle timeout, a slow exchange is not', async (t) => {
  const b = await httpBackend((_req, res) => { setTimeout(() => res.end('slow'), 400); });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const p2 = await startProxy(policy, { clientIdleTimeoutMs: 200 });
  t.teardown(() => p2.close());
  const s = await connectTo(p2.port);
  t.teardown(() => s.destroy());
  s.write('GET /slow HTTP/1.1\r\nhost: x\r\n\r\n');
  const [r] = await readResponses(s, 1);
  t.equal(r!.body.toString(), 'slow', 'an exchange longer than the idle timeout completes');
  const t0 = Date.now();
  await new Promise<void>((resolve) => s.on('close', () => resolve()));
  const idle = Date.now() - t0;
  t.ok(idle >= 150 && idle < 3000, `closed once idle (${idle} ms)`);
});

t.test('trailers of chunked bodies pass both ways', async (t) => {
  let seenTrailers: Record<string, string> = {};
  const b = await httpBackend((req, res) => {
    req.resume();
    req.on('end', () => {
      seenTrailers = req.trailers as Record<string, string>;
      res.writeHead(200, { 'transfer-encoding': 'chunked', trailer: 'x-sum' });
      res.write('part');
      res.addTrailers({ 'x-sum': 'abc123' });
      res.end();
    });
  });
  t.teardown(() => b.close());
  policy.route = () => ({ upstreams: [upstream(b.port, group)] });
  const r = await rawExchange(proxy.port, 'POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\nx-req-trailer: yes\r\n\r\n');
  t.equal(seenTrailers['x-req-trailer'], 'yes', 'request trailer reached the backend');
  t.match(r.text, /\r\n4\r\npart\r\n0\r\nx-sum: abc123\r\n\r\n$/, 'response trailer reached the client');
});

t.test('close() ends with a keep-alive client still connected (the agent stops, it does not hang)', async (t) => {
  const p = await startProxy(new TestPolicy(() => ({ status: 204, headers: {}, body: '' })));
  const idle = await connectTo(p.port);
  idle.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n');
  await readResponses(idle, 1);
  const closedBy = await Promise.race([p.proxy.close().then(() => 'close'), new Promise((r) => setTimeout(() => r('timeout'), 3000))]);
  t.equal(closedBy, 'close', 'close() resolved');
  t.ok(idle.destroyed || idle.readableEnded || await new Promise((r) => { idle.once('close', () => r(true)); setTimeout(() => r(false), 1000); }), 'the client connection was closed');
});

t.test('an unexpected 101 from the upstream is a 502 and its connection is closed, not kept against max connections', async (t) => {
  const weird = await rawBackend((s) => {
    s.on('data', () => s.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: nonsense\r\nconnection: upgrade\r\n\r\n'));
  });
  t.teardown(() => weird.close());
  const g = new TestGroup(1);
  policy.route = () => ({ upstreams: [upstream(weird.port, g)] });
  t.equal((await get(proxy.port, '/')).status, 502, 'a plain GET answered 101 is a bad gateway');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(g.connections, 0, 'the connection was given back to the group');
  const next = await Promise.race([get(proxy.port, '/').then((r) => r.status), new Promise<string>((r) => setTimeout(() => r('pending after 3 s'), 3000))]);
  t.equal(next, 502, 'the next request gets a connection (no pending for ever)');
});

/** Write one request on a raw client socket and collect exactly one content-length response (its raw text). */
function rawRoundTrip(s: Socket, req: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => { s.off('data', onData); reject(new Error(`timeout; got ${JSON.stringify(buf)}`)); }, 3000);
    const onData = (d: Buffer): void => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const cl = /\r\ncontent-length: *(\d+)/i.exec(buf.slice(0, end + 2));
      if (cl === null || buf.length < end + 4 + Number(cl[1])) return;
      clearTimeout(timer);
      s.off('data', onData);
      resolve(buf);
    };
    s.on('data', onData);
    s.write(req);
  });
}

t.test('a clean HTTP/1.1 response head passes byte for byte; one the proxy must change is made again', async (t) => {
  // Each response by the request's path; several requests on one connection (keep-alive, the head's bytes are views of
  // the proxy's reads, which later reads must not disturb).
  const RESPONSES: Record<string, string[]> = {
    '/clean': ['HTTP/1.1 200 OK\r\nX-Mixed-Case: a\r\nContent-Length: 5\r\nServer:  b \r\nset-cookie: z=1\r\n\r\nhello'],
    '/split': ['HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\n', 'world'],
    '/part': ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwo', 'rld'],
    '/conn': ['HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello'],
    '/twice': ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello'],
    '/old': ['HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello'],
  };
  const b = await rawBackend((s) => {
    let pending = '';
    s.on('data', (d: Buffer) => {
      pending += d.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
        const path = pending.slice(pending.indexOf(' ') + 1, pending.indexOf(' HTTP/'));
        pending = pending.slice(end + 4);
        const parts = RESPONSES[path.replace(/\?.*/, '')] ?? ['HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n'];
        s.write(parts[0]!);
        if (parts[1] !== undefined) setTimeout(() => s.write(parts[1]!), 30);
      }
    });
  });
  t.teardown(() => b.close());
  let rewrite = false;
  policy.route = () => ({ upstreams: [upstream(b.port, group)], ...(rewrite ? { responseHeaders: { set: { 'x-proxy': 'sockmesh' }, remove: [] } } : {}) });
  const c = await connectTo(proxy.port);
  t.teardown(() => c.destroy());
  const req = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nhost: svc\r\n${extra}\r\n`;

  t.equal(await rawRoundTrip(c, req('/clean')), RESPONSES['/clean']![0], 'as the backend said it: names\' case, order, spaces');
  t.equal(await rawRoundTrip(c, req('/split')), RESPONSES['/split']!.join(''), 'the body in a later read: the head went out first, as it was');
  t.equal(await rawRoundTrip(c, req('/part')), RESPONSES['/part']!.join(''), 'part of the body with the head, the rest later');
  t.equal(await rawRoundTrip(c, req('/clean?again')), RESPONSES['/clean']![0], 'again on the same connections (the whole response in one read: passed on as read)');
  t.equal(await rawRoundTrip(c, req('/conn')), 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello', 'connection fields dropped: made again');
  t.equal(await rawRoundTrip(c, req('/twice')), 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello', 'two content-length lines: one');
  t.equal(await rawRoundTrip(c, req('/old')), 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello', 'an HTTP/1.0 upstream: the status line is ours');
  rewrite = true;
  t.equal(await rawRoundTrip(c, req('/clean')),
    'HTTP/1.1 200 OK\r\nx-mixed-case: a\r\nserver: b\r\nset-cookie: z=1\r\nx-proxy: sockmesh\r\ncontent-length: 5\r\n\r\nhello',
    'a route that sets a response header: made again');
  rewrite = false;
  t.equal(b.accepted, 1, 'one upstream connection for all of them');

  // what the client asked changes the head too
  const c10 = await connectTo(proxy.port);
  t.teardown(() => c10.destroy());
  t.equal(await rawRoundTrip(c10, 'GET /clean HTTP/1.0\r\nhost: svc\r\nconnection: keep-alive\r\n\r\n'),
    'HTTP/1.1 200 OK\r\nx-mixed-case: a\r\nserver: b\r\nset-cookie: z=1\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhello', 'an HTTP/1.0 client: keep-alive said');
  const cc = await connectTo(proxy.port);
  t.teardown(() => cc.destroy());
  const closed = new Promise<void>((r) => cc.once('close', () => r()));
  t.equal(await rawRoundTrip(cc, req('/clean', 'connection: close\r\n')),
    'HTTP/1.1 200 OK\r\nx-mixed-case: a\r\nserver: b\r\nset-cookie: z=1\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello', 'a client that closes: connection: close said');
  await closed;
});

t.test('a clean HTTP/1.1 request head goes upstream byte for byte; one the proxy must change is made again', async (t) => {
  // The backend records each request head (and body) as its bytes came, and answers each with a fixed response.
  const heads: string[] = [];
  const b = await rawBackend((s) => {
    let pending = '';
    s.on('data', (d: Buffer) => {
      pending += d.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
        const cl = /\r\ncontent-length: *(\d+)/i.exec(pending.slice(0, end + 2));
        const len = end + 4 + (cl === null ? 0 : Number(cl[1]));
        if (pending.length < len) return;
        heads.push(pending.slice(0, len));
        pending = pending.slice(len);
        s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
      }
    });
  });
  t.teardown(() => b.close());
  let rewrite = false;
  policy.route = () => ({ upstreams: [upstream(b.port, group)], ...(rewrite ? { requestHeaders: { set: { 'x-added': 'yes' }, remove: [] } } : {}) });
  const c = await connectTo(proxy.port);
  t.teardown(() => c.destroy());
  const OK = 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok';
  const through = async (req: string): Promise<string> => {
    t.equal(await rawRoundTrip(c, req), OK);
    return heads.at(-1)!;
  };

  const clean = 'GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-Mixed-Case: 1\r\nAccept:  */* \r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n';
  t.equal(await through(clean), clean, 'as the client said it: names\' case, order, spaces, repeated fields');
  const post = 'POST /p HTTP/1.1\r\nhost: svc\r\nContent-Length: 5\r\n\r\nhello';
  t.equal(await through(post), post, 'with one plain content-length and the body in the same read');
  t.equal(await through('\r\nGET /crlf HTTP/1.1\r\nhost: svc\r\n\r\n'), 'GET /crlf HTTP/1.1\r\nhost: svc\r\n\r\n', 'an empty line before it is not passed on');
  t.equal(await through('GET /c HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: 5\r\n\r\n'),
    'GET /c HTTP/1.1\r\nhost: svc\r\n\r\n', 'connection-specific fields: made again without them');
  t.equal(await through('GET /te HTTP/1.1\r\nHost: svc\r\nTE: trailers, deflate\r\n\r\n'), 'GET /te HTTP/1.1\r\nhost: svc\r\nte: trailers\r\n\r\n', 'te: made again');
  t.equal(await through('POST /two HTTP/1.1\r\nHost: svc\r\nContent-Length: 2, 2\r\n\r\nhi'),
    'POST /two HTTP/1.1\r\nhost: svc\r\ncontent-length: 2\r\n\r\nhi', 'a content-length list: one value');
  t.equal(await through('GET http://svc/abs HTTP/1.1\r\nHost: svc\r\n\r\n'), 'GET /abs HTTP/1.1\r\nhost: svc\r\n\r\n', 'absolute-form: origin-form upstream');
  rewrite = true;
  t.equal(await through('GET /rw HTTP/1.1\r\nHost: svc\r\nX-Mixed-Case: 1\r\n\r\n'),
    'GET /rw HTTP/1.1\r\nhost: svc\r\nx-mixed-case: 1\r\nx-added: yes\r\n\r\n', 'a route that sets a request header: made again');
  rewrite = false;

  // pipelined in one write: each head is a part of the read, passed on as it came, in order
  const n0 = heads.length;
  const pipelined = 'GET /p1 HTTP/1.1\r\nHost: svc\r\n\r\nGET /p2 HTTP/1.1\r\nHost: svc\r\nX-N: 2\r\n\r\n';
  const both = await new Promise<string>((resolve, reject) => {
    let got = '';
    const timer = setTimeout(() => reject(new Error(`timeout; got ${JSON.stringify(got)}`)), 3000);
    const onData = (d: Buffer): void => {
      got += d.toString('latin1');
      if (got.length >= OK.length * 2) { clearTimeout(timer); c.off('data', onData); resolve(got); }
    };
    c.on('data', onData);
    c.write(pipelined);
  });
  t.equal(both, OK + OK);
  t.same(heads.slice(n0), ['GET /p1 HTTP/1.1\r\nHost: svc\r\n\r\n', 'GET /p2 HTTP/1.1\r\nHost: svc\r\nX-N: 2\r\n\r\n'], 'each pipelined head as it came');
  t.equal(b.accepted, 1, 'one upstream connection for all of them');
});
