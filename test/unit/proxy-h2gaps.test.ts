// Issue 15's HTTP/2 gaps, through the real proxy (agent/proxy/server.ts and the engine under it) with independent
// clients and backends: node:http2, raw frames, nghttp/curl where they exist. The SETTINGS ACK timeout both ways.
import t from 'tap';
import { spawn } from 'node:child_process';
import { createServer as httpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { createServer as netServer, type AddressInfo, type Socket } from 'node:net';
import { BackendStates } from '../../agent/health/states.js';
import { H2_ERROR } from '../../agent/proxy/h2/session.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { ProxyServer } from '../../agent/proxy/server.js';
import { backend, captureLog, http, model, route, service } from '../lib/l7model.js';
import { block, frame, goawayCode, HELLO, isGoaway, raw } from '../lib/h2raw.js';
import { connectTo, h2Backend, h2Client, h2request, readResponses, startProxy, TestGroup, TestPolicy, upstream, type RunningProxy } from '../lib/proxy.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** an HTTP/1.1 backend (node:http); close() drops its connections too */
async function h1Backend(t: { teardown(fn: () => void): void }, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<number> {
  const srv = httpServer(handler);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { srv.closeAllConnections(); srv.close(); });
  return (srv.address() as AddressInfo).port;
}

/** run a command, its stdout and exit code (bounded) */
function run(cmd: string, args: string[], timeoutMs = 10_000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

let proxy: RunningProxy;
const group = new TestGroup();
const policy = new TestPolicy(() => ({ status: 500, headers: {}, body: 'no route\n' }));

t.before(async () => { proxy = await startProxy(policy); });
t.teardown(async () => { await proxy.close(); });

const client = (t: { teardown(fn: () => void): void }): ClientHttp2Session => h2Client(t, proxy.port);

t.test('SETTINGS ACK timeout through the proxy: a client, then a backend, that never ACK get GOAWAY SETTINGS_TIMEOUT', async (t) => {
  // (its own proxy: a 300 ms timeout would cut curl --limit-rate, which reads the ACK late)
  const sp = await startProxy(policy, { h2SettingsTimeoutMs: 300 });
  t.teardown(() => sp.close());
  const GET = [':method', 'GET', ':scheme', 'http', ':path', '/', ':authority', 'x'];
  const r = await raw(sp.port, Buffer.concat([HELLO, frame(1, 0x4 | 0x1, 1, block(GET))]), isGoaway);
  t.equal(goawayCode(r), H2_ERROR.SETTINGS_TIMEOUT, 'a client that never ACKs: GOAWAY SETTINGS_TIMEOUT');
  t.ok(r.closed, 'its connection closed');

  // a backend that sends its SETTINGS and never ACKs ours: the request fails as a reset (502), not held for ever
  const frames: Buffer[] = [];
  const socks: Socket[] = [];
  const b = netServer((s) => { socks.push(s); s.on('error', () => {}); s.write(frame(4, 0, 0)); s.on('data', (d: Buffer) => frames.push(d)); });
  await new Promise<void>((res) => b.listen(0, '127.0.0.1', () => res()));
  t.teardown(() => { for (const s of socks) s.destroy(); b.close(); });
  policy.route = () => ({ upstreams: [upstream((b.address() as AddressInfo).port, group)] });
  const c = h2connect(`http://127.0.0.1:${sp.port}`);
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  const started = performance.now();
  const got = await h2request(c, { ':path': '/held' });
  const took = performance.now() - started;
  t.equal(got.headers[':status'], 502, 'the client gets 502');
  t.equal(got.headers['x-sockmesh-error'], 'reset');
  t.ok(took >= 250 && took < 3000, `after about the timeout (${took.toFixed(0)} ms)`);
  const all = Buffer.concat(frames);
  // the proxy's GOAWAY to the backend: type 7, code SETTINGS_TIMEOUT in its payload's second word
  let code = -1;
  for (let p = 24; p + 9 <= all.length; p += 9 + all.readUIntBE(p, 3)) if (all[p + 3] === 7) code = all.readUInt32BE(p + 9 + 4);
  t.equal(code, H2_ERROR.SETTINGS_TIMEOUT, 'the backend got GOAWAY SETTINGS_TIMEOUT');
  t.equal(policy.contractViolations(), '');
});

t.test('route and per-try timeouts start once the request body was received (a slow upload is not the backend late)', async (t) => {
  // the backend answers 'ok <bytes>' at the body's end, except /stall (never answers); it records when the body ended
  // (an HTTP/1.1 one for HTTP/1.1 clients, an HTTP/2 one for HTTP/2 clients: each protocol is proxied as itself)
  let bodyEndAt = 0;
  const port = await h1Backend(t, (req, res) => {
    let n = 0;
    req.on('data', (d: Buffer) => { n += d.length; });
    req.on('end', () => { bodyEndAt = performance.now(); if (req.url !== '/stall') res.end(`ok ${n}`); });
  });
  const b2 = await h2Backend((st, h) => {
    let n = 0;
    st.on('data', (d: Buffer) => { n += d.length; });
    st.on('end', () => { bodyEndAt = performance.now(); if (h[':path'] !== '/stall' && !st.destroyed) { st.respond({ ':status': 200 }); st.end(`ok ${n}`); } });
  });
  t.teardown(() => b2.close());
  policy.route = (head) => ({ upstreams: [upstream(head.protocol === 'h2' ? b2.port : port, group)], timeoutMs: 300, perTryTimeoutMs: 250, retries: 0 });
  const chunks = Array.from({ length: 5 }, (_, i) => Buffer.from(`chunk${i};`));

  // HTTP/1.1: 5 chunks 150 ms apart (750 ms in all, over both timeouts): answered, not 504
  const s = await connectTo(proxy.port);
  t.teardown(() => s.destroy());
  const total = chunks.reduce((a, c) => a + c.length, 0);
  s.write(`POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: ${total}\r\n\r\n`);
  const answer = readResponses(s, 1, 5000);
  for (const c of chunks) { await sleep(150); s.write(c); }
  const [r1] = await answer;
  t.equal(r1!.status, 200, 'HTTP/1.1: a 750 ms upload under a 300 ms route timeout is answered');
  t.equal(r1!.body.toString(), `ok ${total}`);

  // HTTP/2: the same upload on a stream
  const c = client(t);
  const req = c.request({ ':method': 'POST', ':path': '/up' });
  const got = new Promise<{ status: number; body: string }>((resolve) => {
    let status = 0, body = '';
    req.on('response', (h) => { status = Number(h[':status']); });
    req.on('data', (d: Buffer) => { body += d.toString(); });
    req.on('close', () => resolve({ status, body }));
  });
  for (const ch of chunks) { await sleep(150); req.write(ch); }
  req.end();
  const r2 = await got;
  t.equal(r2.status, 200, 'HTTP/2: a 750 ms upload under a 300 ms route timeout is answered');
  t.equal(r2.body, `ok ${total}`);

  // the timeouts still hold once the body is in: a backend that stalls after a slow upload gets 504, timed from the body's end
  for (const proto of ['http1', 'h2'] as const) {
    let end504 = 0;
    if (proto === 'http1') {
      const s2 = await connectTo(proxy.port);
      t.teardown(() => s2.destroy());
      s2.write(`POST /stall HTTP/1.1\r\nhost: x\r\ncontent-length: ${total}\r\n\r\n`);
      const a = readResponses(s2, 1, 5000);
      for (const ch of chunks) { await sleep(100); s2.write(ch); }
      const [r] = await a;
      end504 = performance.now();
      t.equal(r!.status, 504, `${proto}: a backend that stalls after the upload: 504`);
    } else {
      const rq = c.request({ ':method': 'POST', ':path': '/stall' });
      rq.on('error', () => {});
      const st = new Promise<number>((resolve) => { rq.on('response', (h) => resolve(Number(h[':status']))); });
      for (const ch of chunks) { await sleep(100); rq.write(ch); }
      rq.end();
      t.equal(await st, 504, `${proto}: a backend that stalls after the upload: 504`);
      end504 = performance.now();
    }
    const after = end504 - bodyEndAt;
    t.ok(after >= 200 && after < 1500, `${proto}: the 504 came ${after.toFixed(0)} ms after the body's end (per-try 250 ms from there)`);
  }

  // curl, an independent client, uploading at 4 KB/s (about 1.5 s for 6 KB) under the same 300 ms route timeout
  const big = 'x'.repeat(6000);
  const cr = await run('curl', ['-sS', '--limit-rate', '4K', '-H', 'expect:', '--data-binary', big, `http://127.0.0.1:${proxy.port}/up`, '-w', ' %{http_code}']);
  t.equal(cr.out, 'ok 6000 200', `curl's slow upload answered (${cr.err.trim()})`);
  const cr2 = await run('curl', ['-sS', '--http2-prior-knowledge', '--limit-rate', '4K', '--data-binary', big, `http://127.0.0.1:${proxy.port}/up`, '-w', ' %{http_code}']);
  t.equal(cr2.out, 'ok 6000 200', `curl --http2-prior-knowledge's slow upload answered (${cr2.err.trim()})`);
  t.equal(policy.contractViolations(), '');
});

t.test('a silent upload: 408 after the client idle timeout (the timeouts above no longer bound it)', async (t) => {
  const p2 = await startProxy(policy, { clientIdleTimeoutMs: 400 });
  t.teardown(() => p2.close());
  const seen: string[] = [];
  const port = await h1Backend(t, (req, res) => { seen.push(req.url!); req.resume(); req.on('end', () => res.end('ok')); });
  const b2 = await h2Backend((st) => { st.resume(); st.on('end', () => { if (!st.destroyed) st.respond({ ':status': 200 }); if (!st.destroyed) st.end('ok'); }); });
  t.teardown(() => b2.close());
  policy.route = (head) => ({ upstreams: [upstream(head.protocol === 'h2' ? b2.port : port, group)], timeoutMs: 100 });
  const s = await connectTo(p2.port);
  t.teardown(() => s.destroy());
  const started = performance.now();
  s.write('POST /silent HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc');
  const [r] = await readResponses(s, 1, 3000);
  t.equal(r!.status, 408, 'HTTP/1.1: 408');
  t.equal(r!.headers['x-sockmesh-error'], 'request-body-timeout');
  t.ok(performance.now() - started >= 380, 'after the idle timeout, not the 100 ms route timeout');
  const c = h2connect(`http://127.0.0.1:${p2.port}`);
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  const rq = c.request({ ':method': 'POST', ':path': '/silent' });
  rq.on('error', () => {});
  rq.write('abc');
  const h = await new Promise<Record<string, unknown>>((resolve) => { rq.on('response', (hh) => resolve(hh)); });
  t.equal(h[':status'], 408, 'HTTP/2: 408');
  // a client that keeps sending (every 150 ms, 1 s in all) is not cut by the 400 ms idle timeout
  const rq2 = c.request({ ':method': 'POST', ':path': '/steady' });
  const st = new Promise<number>((resolve) => { rq2.on('response', (hh) => resolve(Number(hh[':status']))); });
  for (let i = 0; i < 7; i++) { await sleep(150); rq2.write('x'); }
  rq2.end();
  t.equal(await st, 200, 'HTTP/2: a steady slow upload is answered');
  t.equal(policy.contractViolations(), '');
});

t.test('repeated request headers through the real policy and proxy, from curl (HTTP/1.1 and HTTP/2)', async (t) => {
  const port = await h1Backend(t, (req, res) => { req.resume(); res.end(`backend ${req.url}`); });
  const b2 = await h2Backend((st, h) => { st.respond({ ':status': 200 }); st.end(`backend ${String(h[':path'])}`); });
  t.teardown(() => b2.close());
  const states = new BackendStates();
  t.teardown(() => states.close());
  const { log } = captureLog('warn');
  const pol = new ProxyPolicy({ states, log });
  const routes = [route('ab', { match: { headers: [{ name: 'x-tags', value: { exact: 'a,b' } }] } }), route('b', { match: { headers: [{ name: 'x-tags', value: { exact: 'b' } }] } })];
  const authz = { defaultAction: 'allow' as const, rules: [{ name: 'no-admin', action: 'deny' as const, headers: [{ name: 'x-user', value: { exact: 'admin' } }] }] };
  const update = (bport: number): void => pol.update(model(service('web', '127.100.0.1', 80, [backend(bport)], http({ routes, authz }))), () => undefined);
  const px = new ProxyServer({ policy: pol, log, originalDst: () => ({ vip: '127.100.0.1', port: 80, cgroupId: 5n }) });
  await px.listen(0, ['127.0.0.1']);
  t.teardown(() => px.close());
  const url = `http://127.0.0.1:${px.ports()[0]!}/r`;
  for (const [proto, flags, bport] of [['HTTP/1.1', [], port], ['HTTP/2', ['--http2-prior-knowledge'], b2.port]] as const) {
    update(bport);
    const curl = async (...h: string[]): Promise<string> => (await run('curl', ['-sS', ...flags, ...h.flatMap((x) => ['-H', x]), url, '-w', ' %{http_code}'])).out;
    t.equal(await curl('x-tags: a', 'x-tags: b'), 'backend /r 200', `${proto}: two x-tags fields match "a,b" (route ab)`);
    t.match(await curl('x-tags: a, b'), / 404$/, `${proto}: one field "a, b" is not "a,b" (no normalizing of the value)`);
    t.match(await curl('x-tags: c', 'x-tags: b'), / 404$/, `${proto}: a matching second copy is not a match`);
    t.match(await curl('x-tags: b', 'x-user: bob', 'x-user: admin'), / 403$/, `${proto}: a deny rule sees through a repeated x-user`);
    t.equal(await curl('x-tags: b'), 'backend /r 200', `${proto}: the single value still matches route b`);
  }
});

t.test('Expect: 100-continue and 1xx heads: passed on to HTTP/2 clients (and 103 to HTTP/1.1 ones); curl does not wait', async (t) => {
  // the HTTP/2 backend answers an Expect with 100 (node's HTTP/1.1 server does by itself); /refuse answers 417 at
  // once, before any body
  const b2 = await h2Backend((st, h) => {
    if (h[':path'] === '/refuse') { st.respond({ ':status': 417 }); st.end('no'); return; }
    if (h['expect'] === '100-continue') st.additionalHeaders({ ':status': 100 });
    if (h[':path'] === '/hints') st.additionalHeaders({ ':status': 103, link: '</a.css>; rel=preload' });
    let n = 0;
    st.on('data', (d: Buffer) => { n += d.length; });
    st.on('end', () => { if (!st.destroyed) { st.respond({ ':status': 200 }); st.end(`got ${n} expect=${String(h['expect'])}`); } });
  });
  t.teardown(() => b2.close());
  const port = await h1Backend(t, (req, res) => {
    if (req.url === '/hints') res.writeEarlyHints({ link: '</a.css>; rel=preload' });
    let n = 0;
    req.on('data', (d: Buffer) => { n += d.length; });
    req.on('end', () => res.end(`got ${n}`));
  });
  policy.route = (head) => ({ upstreams: [upstream(head.protocol === 'h2' ? b2.port : port, group)] });
  const body = 'b'.repeat(20_000);
  const url = `http://127.0.0.1:${proxy.port}`;

  // curl waits up to --expect100-timeout for the 100 before it sends the body: through the proxy it comes at once
  for (const flags of [['--http2-prior-knowledge'], []]) {
    const name = flags.length > 0 ? 'HTTP/2' : 'HTTP/1.1';
    const r = await run('curl', ['-sS', ...flags, '-H', 'expect: 100-continue', '--expect100-timeout', '5', '--data-binary', body, `${url}/up`, '-w', ' %{http_code} %{time_total}']);
    const [text, code, took] = [r.out.split(' ').slice(0, -2).join(' '), r.out.split(' ').at(-2), Number(r.out.split(' ').at(-1))];
    t.equal(code, '200', `${name}: curl with Expect answered (${r.err.trim()})`);
    t.match(text, /^got 20000/, `${name}: the whole body arrived`);
    t.ok(took < 2.5, `${name}: the 100 came at once: ${took} s, not curl's 5 s wait`);
    if (flags.length > 0) t.equal(text, 'got 20000 expect=100-continue', 'HTTP/2: the Expect went to the backend, whose 100 came back');
  }

  // node:http2 as the client: 'continue' arrives, then the body is sent; a backend's early final answer, without the body
  const c = client(t);
  const req = c.request({ ':method': 'POST', ':path': '/up', expect: '100-continue' });
  req.on('error', () => {});
  await new Promise<void>((resolve) => req.once('continue', () => resolve()));
  t.pass('HTTP/2: the client got 100 Continue');
  const got = new Promise<string>((resolve) => { let s = ''; req.on('data', (d: Buffer) => { s += d.toString(); }); req.on('close', () => resolve(s)); });
  req.end('after-continue');
  t.equal(await got, 'got 14 expect=100-continue');
  const refuse = await h2request(c, { ':method': 'POST', ':path': '/refuse', expect: '100-continue' }, []);
  t.equal(refuse.headers[':status'], 417, 'HTTP/2: the backend\'s 417 to the Expect reaches the client');

  // 103 Early Hints: on HTTP/2 as an informational HEADERS frame, on HTTP/1.1 as an interim head, then the answer
  const hr = c.request({ ':path': '/hints' });
  const info: Record<string, unknown>[] = [];
  hr.on('headers', (h) => info.push(h));
  const final = await new Promise<Record<string, unknown>>((resolve) => { hr.on('response', (h) => resolve(h)); hr.resume(); });
  t.same(info.map((h) => [h[':status'], h['link']]), [[103, '</a.css>; rel=preload']], 'HTTP/2: the 103 was passed on');
  t.equal(final[':status'], 200);
  const s = await connectTo(proxy.port);
  t.teardown(() => s.destroy());
  const raw1 = await new Promise<string>((resolve) => {
    let txt = '';
    s.on('data', (d: Buffer) => { txt += d.toString('latin1'); if (/\r\n\r\ngot 0$/.test(txt)) resolve(txt); });
    setTimeout(() => resolve(txt), 3000);
    s.write('GET /hints HTTP/1.1\r\nhost: x\r\n\r\n');
  });
  t.match(raw1, /^HTTP\/1\.1 103 Early Hints\r\nlink: <\/a\.css>; rel=preload\r\n\r\nHTTP\/1\.1 200 /, 'HTTP/1.1: the 103 came before the 200');
  const raw0 = await rawExchangeText(proxy.port, 'GET /hints HTTP/1.0\r\nhost: x\r\n\r\n');
  t.match(raw0, /^HTTP\/1\.1 200 /, 'HTTP/1.0: no 1xx (RFC 9110 15.2)');
  t.equal(policy.contractViolations(), '');
});

async function rawExchangeText(port: number, data: string): Promise<string> {
  const s = await connectTo(port);
  return new Promise((resolve) => {
    let txt = '';
    s.on('data', (d: Buffer) => { txt += d.toString('latin1'); });
    s.on('close', () => resolve(txt));
    setTimeout(() => { s.destroy(); resolve(txt); }, 3000);
    s.write(data);
  });
}

t.test('extended CONNECT (RFC 8441): WebSocket over HTTP/2 from node:http2, to an HTTP/1.1 backend as an Upgrade', async (t) => {
  // an RFC 6455 handshake by hand on node:http's 'upgrade', then an echo of raw bytes (the tunnel carries bytes)
  const { createHash } = await import('node:crypto');
  const upgrades: IncomingMessage[] = [];
  const srv = httpServer((req, res) => { res.statusCode = 426; res.end('upgrade required'); });
  srv.on('upgrade', (req: IncomingMessage, sock: Socket, head: Buffer) => {
    upgrades.push(req);
    if (req.url === '/deny') { sock.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\nno way'); return; }
    const accept = createHash('sha1').update(`${String(req.headers['sec-websocket-key'])}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: ${accept}\r\nsec-websocket-protocol: chat\r\n\r\nhello`);
    if (head.length > 0) sock.write(head);
    sock.on('data', (d: Buffer) => sock.write(Buffer.concat([Buffer.from('echo:'), d])));
    sock.on('end', () => sock.end());
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { srv.closeAllConnections(); srv.close(); });
  const bport = (srv.address() as AddressInfo).port;
  policy.route = () => ({ upstreams: [upstream(bport, group)], timeoutMs: 2000 });
  const c = client(t);
  await new Promise<void>((r) => { if (c.remoteSettings.enableConnectProtocol === true) r(); else c.once('remoteSettings', () => r()); });
  t.equal(c.remoteSettings.enableConnectProtocol, true, 'the proxy announces SETTINGS_ENABLE_CONNECT_PROTOCOL');
  const before = policy.exchanges.length;
  const st = c.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/chat', ':authority': 'ws.example', 'sec-websocket-version': '13', 'sec-websocket-protocol': 'chat' }, { endStream: false });
  st.on('error', () => {});
  const head = await new Promise<Record<string, unknown>>((resolve) => st.once('response', (h) => resolve(h)));
  t.equal(head[':status'], 200, 'the 101 became 200');
  t.equal(head['sec-websocket-protocol'], 'chat', 'the chosen subprotocol passed on');
  t.equal(head['sec-websocket-accept'], undefined, 'sec-websocket-accept not passed on (RFC 8441 5)');
  let got = '';
  st.on('data', (d: Buffer) => { got += d.toString(); });
  const until = async (s: string): Promise<void> => { for (let i = 0; i < 200 && !got.includes(s); i++) await sleep(10); };
  await until('hello');
  st.write('ping-1');
  await until('echo:ping-1');
  const big = 'z'.repeat(300_000); // over the stream window both ways: flow control end to end
  st.write(big);
  await until('z'.repeat(1000));
  for (let i = 0; i < 300 && got.length < 'hello'.length + 'echo:ping-1'.length + 300_000; i++) await sleep(10);
  t.equal(got.replace(/echo:/g, ''), `helloping-1${big}`, 'bytes both ways, in order, 300 KB included');
  const closed = new Promise<void>((r) => st.on('close', () => r()));
  st.end();
  await closed;
  t.pass('the client ending the stream ended the backend socket, whose end ended the stream');
  const up = upgrades.at(-1)!;
  t.same([up.method, up.url, up.headers['host'], up.headers['upgrade'], up.headers['sec-websocket-version'], typeof up.headers['sec-websocket-key']], ['GET', '/chat', 'ws.example', 'websocket', '13', 'string'], 'the backend got an RFC 6455 Upgrade request');
  const rec = policy.exchanges[before]!;
  t.same([rec.head.method, rec.head.path], ['GET', '/chat'], 'the policy routed it as the GET it became');
  t.same(rec.ends, [{ status: 200 }], 'one end, 200');

  // HTTP/1.1 WebSocket through the proxy (the same backend): the bytes that came with the 101 reach the client too
  const ws1 = await connectTo(proxy.port);
  t.teardown(() => ws1.destroy());
  let got1 = '';
  ws1.on('data', (d: Buffer) => { got1 += d.toString('latin1'); });
  ws1.write('GET /chat HTTP/1.1\r\nhost: ws.example\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
  for (let i = 0; i < 200 && !got1.endsWith('hello'); i++) await sleep(10);
  t.match(got1, /^HTTP\/1\.1 101 [^]*\r\n\r\nhello$/, 'HTTP/1.1: the backend\'s first bytes, sent with its 101, are not lost');
  ws1.write('x');
  for (let i = 0; i < 200 && !got1.endsWith('echo:x'); i++) await sleep(10);
  t.ok(got1.endsWith('helloecho:x'), 'HTTP/1.1: and the tunnel echoes');

  // a backend that refuses the upgrade: its answer is the stream's
  const st2 = c.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': '/deny', ':authority': 'ws.example', 'sec-websocket-version': '13' }, { endStream: false });
  st2.on('error', () => {});
  const h2 = await new Promise<Record<string, unknown>>((resolve) => st2.once('response', (h) => resolve(h)));
  let body2 = '';
  st2.on('data', (d: Buffer) => { body2 += d.toString(); });
  await new Promise<void>((r) => st2.on('close', () => r()));
  t.same([h2[':status'], body2], [403, 'no way'], 'the backend\'s 403 passed on');
  // another :protocol: 501; a plain CONNECT: 405 as before
  const st3 = c.request({ ':method': 'CONNECT', ':protocol': 'something', ':scheme': 'http', ':path': '/', ':authority': 'x' }, { endStream: false });
  st3.on('error', () => {});
  t.equal((await new Promise<Record<string, unknown>>((resolve) => st3.once('response', (h) => resolve(h))))[':status'], 501);
  st3.close();
  t.equal(policy.contractViolations(), '');
});
