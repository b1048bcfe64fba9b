// upstreamProtocol end to end: the kernel redirects connect() to an L7 VIP to the real agent's proxy, which speaks
// HTTP/1.1 to a service's HTTP/1.1 backends whatever the client speaks (http1), or HTTP/2 to h2c backends (h2).
// Independent clients: curl (--http2-prior-knowledge and --http1.1), nghttp (request trailers), h2load (load),
// raw sockets (a chunked request with a trailer section); meshctl shows the protocol.
import t from 'tap';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as h1server, type IncomingHttpHeaders, type Server } from 'node:http';
import { createServer as h2server, type Http2Server } from 'node:http2';
import { connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface Seen { version: string; method: string; path: string; headers: IncomingHttpHeaders; trailers: Record<string, unknown>; sha: string; len: number }

/** Answers: /trailers a streamed body with a trailer x-sum (the request body's sha); /big 4 MiB; else the request's sha. */
function answer(path: string, body: Buffer): { trailers: boolean; out: Buffer } {
  if (path === '/big') return { trailers: false, out: BIG };
  return { trailers: path === '/trailers', out: Buffer.from(`${path} ${sha(body)}`) };
}
const BIG = randomBytes(4 * 1024 * 1024);

/** An HTTP/1.1-only backend (node:http): what it was asked, answers per answer(). */
async function h1Backend(seen: Seen[]): Promise<{ port: number; server: Server }> {
  const server = h1server((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const body = Buffer.concat(parts);
      seen.push({ version: req.httpVersion, method: req.method!, path: req.url!, headers: req.headers, trailers: req.trailers, sha: sha(body), len: body.length });
      const a = answer(req.url!, body);
      if (a.trailers) {
        res.writeHead(200, { trailer: 'x-sum' });
        res.write(a.out);
        res.addTrailers({ 'x-sum': sha(body) });
        res.end();
      } else {
        res.writeHead(200, { 'content-length': String(a.out.length), 'x-backend': 'h1' });
        res.end(a.out);
      }
    });
  });
  server.keepAliveTimeout = 2000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.address() as AddressInfo).port, server };
}

/** An h2c backend (node:http2, prior knowledge only). */
async function h2Backend(seen: Seen[]): Promise<{ port: number; server: Http2Server }> {
  const server = h2server();
  server.on('stream', (s, h) => {
    s.on('error', () => {});
    const parts: Buffer[] = [];
    let trailers: Record<string, unknown> = {};
    s.on('trailers', (tr) => { trailers = tr; });
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('end', () => {
      const body = Buffer.concat(parts);
      const path = String(h[':path']);
      seen.push({ version: '2.0', method: String(h[':method']), path, headers: h, trailers, sha: sha(body), len: body.length });
      const a = answer(path, body);
      if (a.trailers) {
        s.respond({ ':status': 200, 'x-backend': 'h2' }, { waitForTrailers: true });
        s.on('wantTrailers', () => s.sendTrailers({ 'x-sum': sha(body) }));
        s.end(a.out);
      } else {
        s.respond({ ':status': 200, 'x-backend': 'h2', ...(path === '/big' ? {} : { 'content-length': String(a.out.length) }) });
        s.end(a.out);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.address() as AddressInfo).port, server };
}

/** A client tool, asynchronously (the backends live in this process). */
function run(cmd: string, args: string[]): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'buffer', timeout: 30_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr: stderr.toString() });
    });
  });
}

/** curl, -D - (the head and, after the body, a chunked response's trailers, on stdout); status and output text */
async function curl(args: string[]): Promise<{ status: number; text: string; body: Buffer }> {
  const r = await run('curl', ['-sS', '--max-time', '20', ...args]);
  if (r.code !== 0) throw new Error(`curl ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
  const text = r.stdout.toString('latin1');
  return { status: Number(/^HTTP\/\S+ (\d{3})/.exec(text)?.[1] ?? 0), text, body: r.stdout };
}

function rawExchange(host: string, port: number, data: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s: Socket = netConnect({ host, port });
    let got = '';
    const timer = setTimeout(() => { s.destroy(); resolve(got); }, 5000);
    s.on('data', (d) => { got += d.toString('latin1'); if (/\r\n0\r\n(.*\r\n)*\r\n$/.test(got) || /content-length: (\d+)\r\n[\s\S]*\r\n\r\n/.test(got)) { clearTimeout(timer); s.destroy(); resolve(got); } });
    s.on('error', reject);
    s.write(data);
  });
}

t.test('upstreamProtocol through the kernel redirect, with curl, nghttp and h2load', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'l7up');
  const agentCgroup = cg.child('agent');
  cg.enter('client'); // this process and the tools it runs are the meshed clients
  const seen1: Seen[] = [], seen2: Seen[] = [];
  const b1 = await h1Backend(seen1);
  const b2 = await h2Backend(seen2);
  t.teardown(async () => {
    b1.server.closeAllConnections();
    await new Promise((r) => b1.server.close(r));
    await new Promise((r) => b2.server.close(r));
  });
  const tmp = mkdtempSync(join(tmpdir(), 'sockmesh-l7up-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  const upload = randomBytes(1024 * 1024 + 7);
  const file = join(tmp, 'upload.bin');
  writeFileSync(file, upload);
  const config = `
services:
  - name: legacy
    vips: [127.88.1.1]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${b1.port} }]
    http: { upstreamProtocol: http1 }
  - name: modern
    vips: [127.88.1.2]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${b2.port} }]
    http: { upstreamProtocol: h2 }
  - name: asclient
    vips: [127.88.1.3]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${b1.port} }]
    http: {}
`;
  const agent = await startAgent(t, cg, { config, inCgroup: agentCgroup, extraArgs: ['--proxy-heartbeat-ms', '200'] });

  t.test('HTTP/2 clients to an HTTP/1.1 backend (http1)', async (t) => {
    const g = await curl(['--http2-prior-knowledge', '-D', '-', 'http://127.88.1.1/hello?x=1']);
    t.equal(g.status, 200, 'curl --http2-prior-knowledge: 200');
    t.match(g.text, /^HTTP\/2 200/);
    t.match(g.text, /x-backend: h1/);
    const s = seen1.at(-1)!;
    t.same([s.version, s.method, s.path, s.headers.host], ['1.1', 'GET', '/hello?x=1', '127.88.1.1'], 'the backend was asked in HTTP/1.1, Host from :authority');
    const p = await curl(['--http2-prior-knowledge', '--data-binary', `@${file}`, 'http://127.88.1.1/upload']);
    t.equal(p.body.toString(), `/upload ${sha(upload)}`, '1 MiB upload arrived whole');
    t.equal(seen1.at(-1)!.headers['content-length'], String(upload.length), 'curl\'s content-length passed on');
    const tr = await curl(['--http2-prior-knowledge', '-D', '-', '--data-binary', 'abc', 'http://127.88.1.1/trailers']);
    t.match(tr.text, new RegExp(`x-sum: ${sha(Buffer.from('abc'))}`), 'the chunked response\'s trailer reached curl as HTTP/2 trailers');
    const big = await curl(['--http2-prior-knowledge', '--limit-rate', '8M', 'http://127.88.1.1/big']);
    t.equal(sha(big.body), sha(BIG), '4 MiB download through a rate-limited reader, byte-exact');
    // nghttp: a request body without a length, with a trailer (chunked to the HTTP/1.1 backend, trailer section and all)
    const ng = await run('nghttp', ['-d', file, '--no-content-length', '--trailer', 'x-client-sum: 42', '-H', 'te: trailers', 'http://127.88.1.1/nghttp']);
    t.equal(ng.code, 0, ng.stderr);
    t.equal(ng.stdout.toString(), `/nghttp ${sha(upload)}`);
    const sn = seen1.at(-1)!;
    t.equal(sn.trailers['x-client-sum'], '42', 'nghttp\'s trailer reached the HTTP/1.1 backend');
    t.equal(sn.headers['transfer-encoding'], 'chunked', 'a body without a length goes chunked');
    // with a content-length the body is framed by it, and HTTP/1.1 has no trailers for such a body: dropped (as Envoy)
    const ngl = await run('nghttp', ['-d', file, '--trailer', 'x-client-sum: 43', 'http://127.88.1.1/nghttp-length']);
    t.equal(ngl.stdout.toString(), `/nghttp-length ${sha(upload)}`, ngl.stderr);
    t.same([seen1.at(-1)!.headers['content-length'], seen1.at(-1)!.trailers['x-client-sum']], [String(upload.length), undefined]);
    const h2l = await run('h2load', ['-n', '400', '-c', '4', '-m', '10', 'http://127.88.1.1/load']);
    t.match(h2l.stdout.toString(), /requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed, 0 errored/, 'h2load: 400 of 400');
    t.match(h2l.stdout.toString(), /status codes: 400 2xx/);
  });

  t.test('HTTP/1.1 clients to an h2c backend (h2)', async (t) => {
    const g = await curl(['--http1.1', '-D', '-', 'http://127.88.1.2/hello']);
    t.equal(g.status, 200, 'curl --http1.1: 200');
    t.match(g.text, /x-backend: h2/);
    const s = seen2.at(-1)!;
    t.same([s.version, s.headers[':authority'], s.headers[':scheme'], s.path], ['2.0', '127.88.1.2', 'http', '/hello'], 'the backend was asked in HTTP/2, :authority from Host');
    const ch = await curl(['--http1.1', '-H', 'Transfer-Encoding: chunked', '--data-binary', `@${file}`, 'http://127.88.1.2/chunked']);
    t.equal(ch.body.toString(), `/chunked ${sha(upload)}`, 'a chunked 1 MiB upload arrived whole as DATA frames');
    t.notOk(seen2.at(-1)!.headers['content-length'], 'no content-length made up for a chunked body');
    t.notOk(seen2.at(-1)!.headers['transfer-encoding'], 'no transfer-encoding on HTTP/2');
    const tr = await curl(['--http1.1', '-D', '-', '--data-binary', 'abc', 'http://127.88.1.2/trailers']);
    t.match(tr.text, /transfer-encoding: chunked/i);
    t.match(tr.text, new RegExp(`x-sum: ${sha(Buffer.from('abc'))}`), 'the trailing HEADERS reached curl as a chunked trailer section');
    const big = await curl(['--http1.1', '--limit-rate', '8M', 'http://127.88.1.2/big']);
    t.equal(sha(big.body), sha(BIG), '4 MiB (no content-length: chunked) through a rate-limited reader, byte-exact');
    const raw = await rawExchange('127.88.1.2', 80, 'POST /raw HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n3\r\nabc\r\n0\r\nX-Client-Sum: 7\r\n\r\n');
    t.match(raw, /^HTTP\/1\.1 200 OK\r\n/);
    t.equal(seen2.at(-1)!.trailers['x-client-sum'], '7', 'the chunked trailer section reached the h2 backend as trailing HEADERS');
    t.equal(seen2.at(-1)!.headers['te'], 'trailers');
  });

  t.test('the default is the client\'s protocol: an HTTP/2 client to an HTTP/1.1-only backend fails, as before', async (t) => {
    const d = await curl(['--http2-prior-knowledge', '-D', '-', 'http://127.88.1.3/']);
    t.ok(d.status >= 502 && d.status <= 503, `downstream to an HTTP/1.1 backend: ${d.status}`);
    const ok = await curl(['--http1.1', '-D', '-', 'http://127.88.1.3/']);
    t.equal(ok.status, 200, 'HTTP/1.1 clients are unaffected');
  });

  t.test('meshctl routes and services show the upstream protocol', async (t) => {
    const r = meshctl(agent, ['routes']);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^SERVICE\s+ROUTE\s+MATCH\s+SPLIT\s+UPSTREAM\s/m);
    t.match(r.stdout, /^legacy\s+default\s+\*\s+default\s+http1\s/m);
    t.match(r.stdout, /^modern\s+default\s+\*\s+default\s+h2\s/m);
    t.match(r.stdout, /^asclient\s+default\s+\*\s+default\s+as client\s/m);
    const s = meshctl(agent, ['services']);
    t.equal(s.code, 0, s.stderr);
    t.match(s.stdout, /modern {2}127\.88\.1\.2:80\/tcp {2}L7 fail-closed upstream h2 /);
  });
});
