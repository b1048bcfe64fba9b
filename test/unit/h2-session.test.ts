// Our HTTP/2 sessions (agent/proxy/h2/session.ts) against an independent implementation, node:http2, in both
// roles over real loopback sockets: requests with and without bodies, MiB bodies under flow control with slow
// consumers on either side, trailers, trailers-only responses, 1xx, many concurrent streams under the peer's
// limit, RST_STREAM, graceful GOAWAY, PING, header blocks split into CONTINUATION frames and SETTINGS changes
// mid-flight; then malformed input written raw over a socket, answered with the right GOAWAY or RST_STREAM.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import {
  connect as h2connect, constants, createServer as h2server, type ClientHttp2Session, type ClientHttp2Stream,
  type Http2Server, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream,
} from 'node:http2';
import { connect as netConnect, createServer as netServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { H2_ERROR, H2Session, type H2SessionOptions, type H2Stream, type H2StreamHandler } from '../../agent/proxy/h2/session.js';
import { HpackEncoder, type HeaderList } from '../../agent/proxy/h2/hpack.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function field(h: HeaderList, name: string): string | undefined {
  for (let i = 0; i < h.length; i += 2) if (h[i] === name) return h[i + 1];
  return undefined;
}

/** everything a stream told us; `done` settles at its end (END_STREAM or reset) */
class Got implements H2StreamHandler {
  stream!: H2Stream;
  heads: HeaderList[] = [];
  chunks: Buffer[] = [];
  trailers: HeaderList | null = null;
  resetCode = -1;
  ended = false;
  /** bytes received and not yet given back with consumed() (when autoConsume is off) */
  held = 0;
  maxHeld = 0;
  writable: (() => void) | null = null;
  readonly done: Promise<void>;
  private resolve!: () => void;
  constructor(readonly autoConsume = true) {
    this.done = new Promise((r) => { this.resolve = r; });
  }
  get body(): Buffer { return Buffer.concat(this.chunks); }
  get head(): HeaderList { return this.heads[this.heads.length - 1]; }
  onHeaders(h: HeaderList, end: boolean): void { this.heads.push(h); if (end) this.finish(); }
  onData(d: Buffer, end: boolean): void {
    this.chunks.push(d);
    if (this.autoConsume) this.stream.consumed(d.length);
    else { this.held += d.length; if (this.held > this.maxHeld) this.maxHeld = this.held; }
    if (end) this.finish();
  }
  onTrailers(h: HeaderList): void { this.trailers = h; this.finish(); }
  onReset(code: number): void { this.resetCode = code; this.resolve(); }
  onWritable(): void { const w = this.writable; this.writable = null; w?.(); }
  /** give back what is held */
  consumeHeld(max = Infinity): void {
    const n = Math.min(this.held, max);
    this.held -= n;
    this.stream.consumed(n);
  }
  private finish(): void { this.ended = true; this.resolve(); }
}

/** send body in chunks, honouring sendData's false / onWritable; counts the falses */
function sendBody(st: H2Stream, g: Got, body: Buffer, chunk: number, trailers?: HeaderList): Promise<{ falses: number }> {
  return new Promise((resolve) => {
    let off = 0;
    let falses = 0;
    const pump = (): void => {
      while (off < body.length) {
        const n = Math.min(chunk, body.length - off);
        const last = off + n === body.length && trailers === undefined;
        const ok = st.sendData(body.subarray(off, off + n), last);
        off += n;
        if (!ok && off < body.length) { falses++; g.writable = pump; return; }
      }
      if (trailers !== undefined) st.sendTrailers(trailers);
      resolve({ falses });
    };
    pump();
  });
}

// ---- our server role, node:http2 as the client

interface OurServer {
  port: number; server: Server; sessions: H2Session[]; closes: (Error | undefined)[]; goaways: [number, number][];
  close(): Promise<void>;
}

async function ourServer(onStream: H2SessionOptions['onStream'], extra: Partial<H2SessionOptions> = {}): Promise<OurServer> {
  const sockets = new Set<Socket>();
  const o: OurServer = {
    port: 0, sessions: [], closes: [], goaways: [],
    server: netServer((sock) => {
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
      o.sessions.push(new H2Session(sock, {
        role: 'server', onStream,
        onClose: (e) => o.closes.push(e),
        onGoaway: (last, code) => o.goaways.push([last, code]),
        ...extra,
      }));
    }),
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); o.server.close(() => r()); }),
  };
  await new Promise<void>((r) => o.server.listen(0, '127.0.0.1', () => r()));
  o.port = (o.server.address() as AddressInfo).port;
  return o;
}

async function nodeClient(port: number, opts: Parameters<typeof h2connect>[1] = {}): Promise<ClientHttp2Session> {
  const c = h2connect(`http://127.0.0.1:${port}`, opts);
  c.on('error', () => {});
  await new Promise<void>((resolve, reject) => { c.once('remoteSettings', () => resolve()); c.once('error', reject); });
  return c;
}

interface NodeGot { headers: IncomingHttpHeaders; informational: IncomingHttpHeaders[]; body: Buffer; trailers: IncomingHttpHeaders | null; rstCode?: number; error?: Error }

function collect(req: ClientHttp2Stream): Promise<NodeGot> {
  return new Promise((resolve) => {
    const got: NodeGot = { headers: {}, informational: [], body: Buffer.alloc(0), trailers: null };
    const parts: Buffer[] = [];
    req.on('headers', (h) => got.informational.push(h));
    req.on('response', (h) => { got.headers = h; });
    req.on('trailers', (h) => { got.trailers = h; });
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('error', (e) => { got.error = e; });
    req.on('close', () => { got.body = Buffer.concat(parts); got.rstCode = req.rstCode; resolve(got); });
  });
}

/** a server stream that echoes: the request body back, x-method/x-path/x-len as headers */
function echo(st: H2Stream, h: HeaderList, endStream: boolean): void {
  const g = new Got();
  g.stream = st;
  st.handler = g;
  const reply = (): void => {
    const body = g.body;
    st.sendHeaders([':status', '200', 'x-method', field(h, ':method') ?? '', 'x-path', field(h, ':path') ?? '', 'x-len', String(body.length)], false);
    st.sendData(body.length > 0 ? body : Buffer.from('hello'), true);
  };
  if (endStream) reply(); else void g.done.then(() => { if (g.resetCode < 0) reply(); });
}

t.test('server role: GET and POST from node:http2', async (t) => {
  const srv = await ourServer(echo);
  t.teardown(() => srv.close());
  const c = await nodeClient(srv.port);
  t.teardown(() => c.close());
  const get = await collect(c.request({ ':path': '/a?b=1', ':method': 'GET' }));
  t.equal(get.headers[':status'], 200);
  t.equal(get.headers['x-method'], 'GET');
  t.equal(get.headers['x-path'], '/a?b=1');
  t.equal(get.body.toString(), 'hello');
  const req = c.request({ ':path': '/post', ':method': 'POST', 'content-type': 'text/plain' });
  req.end('a request body');
  const post = await collect(req);
  t.equal(post.headers['x-method'], 'POST');
  t.equal(post.body.toString(), 'a request body');
  // many in a row on the same session
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) => collect(c.request({ ':path': `/${i}` }))));
  t.same(many.map((g) => g.headers['x-path']), Array.from({ length: 50 }, (_, i) => `/${i}`));
  t.equal(srv.sessions.length, 1);
});

t.test('server role: MiB bodies both ways under flow control, slow consumers on both sides', async (t) => {
  const WINDOW = 256 * 1024;
  const up = randomBytes(4 * 1024 * 1024);
  const down = randomBytes(4 * 1024 * 1024);
  let serverGot: Got | null = null;
  let handedWhilePaused = -1;
  let handed = 0;
  let falses = 0;
  let resumeClient: () => void = () => {};
  const srv = await ourServer((st, h, endStream) => {
    const g = new Got(false);
    g.stream = st;
    st.handler = g;
    serverGot = g;
    t.notOk(endStream);
    // the slow consumer: gives back 64 KiB every 10 ms
    const timer = setInterval(() => g.consumeHeld(64 * 1024), 10);
    void g.done.then(async () => {
      clearInterval(timer);
      t.equal(g.resetCode, -1, 'upload not reset');
      st.sendHeaders([':status', '200', 'x-up', sha(g.body)], false);
      // the client does not read for a while: what we can hand over is bounded by its window + our high-water mark
      let off = 0;
      const pump = (): void => {
        while (off < down.length) {
          const n = Math.min(32 * 1024, down.length - off);
          const ok = st.sendData(down.subarray(off, off + n), off + n === down.length);
          off += n;
          handed = off;
          if (!ok && off < down.length) { falses++; g.writable = pump; return; }
        }
      };
      pump();
      await sleep(300);
      handedWhilePaused = handed;
      resumeClient();
    });
  }, { settings: { initialWindowSize: WINDOW } });
  t.teardown(() => srv.close());
  const c = await nodeClient(srv.port);
  t.teardown(() => c.close());
  const req = c.request({ ':path': '/up', ':method': 'POST' });
  const parts: Buffer[] = [];
  let status = 0;
  let upSha = '';
  req.on('response', (h) => {
    status = Number(h[':status']);
    upSha = String(h['x-up']);
    req.pause();
    resumeClient = () => { req.on('data', (d: Buffer) => parts.push(d)); req.resume(); };
  });
  const closed = new Promise<void>((r) => req.on('close', () => r()));
  req.end(up);
  await closed;
  t.equal(status, 200);
  t.equal(upSha, sha(up), 'upload byte-exact');
  const g = serverGot as unknown as Got;
  t.ok(g.maxHeld <= WINDOW, `the server held at most its stream window (${g.maxHeld} <= ${WINDOW})`);
  t.ok(g.maxHeld >= WINDOW / 2, `the window was used (${g.maxHeld})`);
  t.equal(sha(Buffer.concat(parts)), sha(down), 'download byte-exact');
  t.ok(falses > 0, `sendData said false (${falses} times)`);
  t.ok(handedWhilePaused < 1024 * 1024, `a paused client held us back (${handedWhilePaused} bytes handed over in 300 ms)`);
});

t.test('server role: trailers both ways, trailers-only responses', async (t) => {
  const srv = await ourServer((st, h, endStream) => {
    const g = new Got();
    g.stream = st;
    st.handler = g;
    if (field(h, ':path') === '/only') {
      t.ok(endStream);
      st.sendHeaders([':status', '200', 'content-type', 'application/grpc', 'grpc-status', '7', 'grpc-message', 'denied'], true);
      return;
    }
    void g.done.then(() => {
      st.sendHeaders([':status', '200', 'content-type', 'application/grpc'], false);
      st.sendData(g.body, false);
      st.sendTrailers(['grpc-status', '0', 'x-got-trailer', field(g.trailers ?? [], 'x-req-trailer') ?? 'none']);
    });
  });
  t.teardown(() => srv.close());
  const c = await nodeClient(srv.port);
  t.teardown(() => c.close());
  const req = c.request({ ':path': '/tr', ':method': 'POST', 'content-type': 'application/grpc', te: 'trailers' }, { waitForTrailers: true });
  req.on('wantTrailers', () => req.sendTrailers({ 'x-req-trailer': 'yes' }));
  req.end(Buffer.from('payload'));
  const got = await collect(req);
  t.equal(got.body.toString(), 'payload');
  t.equal(got.trailers?.['grpc-status'], '0');
  t.equal(got.trailers?.['x-got-trailer'], 'yes', 'the request trailers arrived');
  const only = await collect(c.request({ ':path': '/only', ':method': 'POST', 'content-type': 'application/grpc' }, { endStream: true }));
  t.equal(only.headers[':status'], 200);
  t.equal(only.headers['grpc-status'], '7', 'trailers-only: the status in the one head');
  t.equal(only.body.length, 0);
  t.equal(only.rstCode, constants.NGHTTP2_NO_ERROR);
});

t.test('server role: 100-continue', async (t) => {
  const srv = await ourServer((st, h) => {
    const g = new Got();
    g.stream = st;
    st.handler = g;
    t.equal(field(h, 'expect'), '100-continue');
    st.sendHeaders([':status', '100'], false);
    void g.done.then(() => {
      st.sendHeaders([':status', '201'], false);
      st.sendData(g.body, true);
    });
  });
  t.teardown(() => srv.close());
  const c = await nodeClient(srv.port);
  t.teardown(() => c.close());
  const req = c.request({ ':path': '/c', ':method': 'PUT', expect: '100-continue' }, { endStream: false });
  let continued = false;
  req.on('continue', () => { continued = true; req.end('after continue'); });
  const got = await collect(req);
  t.ok(continued, 'the client saw 100 Continue');
  t.equal(got.headers[':status'], 201);
  t.equal(got.body.toString(), 'after continue');
});

t.test('server role: 1000 concurrent streams, our max concurrent streams respected', async (t) => {
  let peak = 0;
  let refused = 0;
  const srv = await ourServer((st, h) => {
    const g = new Got();
    g.stream = st;
    st.handler = g;
    peak = Math.max(peak, st.session.activeStreams);
    setTimeout(() => { st.sendHeaders([':status', '200'], false); st.sendData(Buffer.from(field(h, ':path') ?? ''), true); }, 2);
  }, { settings: { maxConcurrentStreams: 100 } });
  t.teardown(() => srv.close());
  const c = await nodeClient(srv.port, { peerMaxConcurrentStreams: 2000 });
  t.teardown(() => c.close());
  const all = await Promise.all(Array.from({ length: 1000 }, (_, i) => collect(c.request({ ':path': `/s${i}` }))));
  for (const g of all) if (g.rstCode === constants.NGHTTP2_REFUSED_STREAM) refused++;
  const ok = all.filter((g, i) => Number(g.headers[':status']) === 200 && g.body.toString() === `/s${i}`).length;
  t.equal(ok + refused, 1000);
  t.equal(ok, 1000, 'node:http2 held its streams back to our limit');
  t.ok(peak <= 100, `at most 100 open at once (${peak})`);
  t.ok(peak >= 50, `and many at once (${peak})`);
  t.equal(srv.sessions.length, 1);
});

t.test('server role: RST_STREAM both ways', async (t) => {
  const resets: number[] = [];
  const srv = await ourServer((st, h) => {
    const g = new Got();
    g.stream = st;
    st.handler = g;
    if (field(h, ':path') === '/reset-me') { st.reset(H2_ERROR.ENHANCE_YOUR_CALM); return; }
    if (field(h, ':path') === '/after') { echo(st, h, false); return; }
    // /cancel: never answered; the client ends its side, then resets the stream
    const onReset = g.onReset.bind(g);
    g.onReset = (code) => { resets.push(code); onReset(code); };
  });
  t.teardown(() => srv.close());
  const c = await nodeClient(srv.port);
  t.teardown(() => c.close());
  const ours = await collect(c.request({ ':path': '/reset-me' }));
  t.equal(ours.rstCode, constants.NGHTTP2_ENHANCE_YOUR_CALM, 'our RST_STREAM reached the client');
  const req = c.request({ ':path': '/cancel', ':method': 'POST' });
  req.write('part');
  await sleep(50);
  req.close(constants.NGHTTP2_CANCEL);
  await collect(req);
  for (let i = 0; i < 100 && resets.length === 0; i++) await sleep(10);
  t.same(resets, [H2_ERROR.CANCEL], 'the client\'s RST_STREAM reached the handler');
  // the session lives on
  const afterReq = c.request({ ':path': '/after', ':method': 'POST' });
  afterReq.end('x');
  const after = await collect(afterReq);
  t.equal(after.rstCode, constants.NGHTTP2_NO_ERROR);
  t.equal(after.body.toString(), 'x');
  t.equal(srv.sessions[0].closed, false);
});

t.test('server role: graceful GOAWAY both ways, PING', async (t) => {
  const held: H2Stream[] = [];
  const srv = await ourServer((st, h) => {
    const g = new Got();
    g.stream = st;
    st.handler = g;
    if (field(h, ':path') === '/hold') { held.push(st); return; }
    echo(st, h, true);
  });
  t.teardown(() => srv.close());

  // PING from the client
  const c1 = await nodeClient(srv.port);
  const payload = Buffer.from('8 bytes!');
  const pong = await new Promise<Buffer>((resolve, reject) => c1.ping(payload, (err, _ms, p) => (err ? reject(err) : resolve(p))));
  t.equal(pong.toString(), '8 bytes!', 'PING answered with its payload');

  // our GOAWAY: the stream in flight finishes, no new streams, then the connection closes
  const holding = collect(c1.request({ ':path': '/hold' }));
  for (let i = 0; i < 100 && held.length === 0; i++) await sleep(10);
  const goaway = new Promise<[number, number]>((r) => c1.once('goaway', (code, last) => r([code, last])));
  const c1closed = new Promise<void>((r) => c1.once('close', () => r()));
  srv.sessions[0].goaway();
  t.same(await goaway, [constants.NGHTTP2_NO_ERROR, 1], 'GOAWAY(NO_ERROR, last 1)');
  t.throws(() => c1.request({ ':path': '/new' }), 'no new streams on a session going away');
  t.equal(srv.sessions[0].closed, false, 'still open for the stream in flight');
  held[0].sendHeaders([':status', '200'], false);
  held[0].sendData(Buffer.from('finished'), true);
  const got = await holding;
  t.equal(got.body.toString(), 'finished', 'the stream in flight completed');
  await c1closed;
  t.equal(srv.sessions[0].closed, true);
  t.same(srv.closes, [undefined], 'onClose once, without an error');

  // the client's GOAWAY: in flight finishes, then the session closes
  const c2 = await nodeClient(srv.port);
  const holding2 = collect(c2.request({ ':path': '/hold' }));
  for (let i = 0; i < 100 && held.length < 2; i++) await sleep(10);
  c2.goaway(constants.NGHTTP2_NO_ERROR, 0);
  for (let i = 0; i < 100 && srv.goaways.length === 0; i++) await sleep(10);
  t.same(srv.goaways, [[0, 0]], 'onGoaway(last 0, NO_ERROR)');
  t.equal(srv.sessions[1].closed, false);
  held[1].sendHeaders([':status', '200'], false);
  held[1].sendData(Buffer.from('done too'), true);
  t.equal((await holding2).body.toString(), 'done too');
  for (let i = 0; i < 100 && !srv.sessions[1].closed; i++) await sleep(10);
  t.equal(srv.sessions[1].closed, true, 'closed once the last stream was done');
  c2.destroy();
});

t.test('server role: header blocks over 16 KiB (CONTINUATION) both ways', async (t) => {
  const big = 'v'.repeat(40 * 1024);
  const srv = await ourServer((st, h) => {
    const g = new Got();
    g.stream = st;
    st.handler = g;
    st.sendHeaders([':status', '200', 'x-len', String(field(h, 'x-big')?.length ?? 0), 'x-big-back', field(h, 'x-big') ?? ''], true);
  });
  t.teardown(() => srv.close());
  const c = await nodeClient(srv.port);
  t.teardown(() => c.close());
  const got = await collect(c.request({ ':path': '/big', 'x-big': big }));
  t.equal(got.headers['x-len'], String(big.length), 'the request header arrived whole');
  t.equal(got.headers['x-big-back'], big, 'the response header arrived whole');
});

t.test('server role: the peer changes its initial window mid-flight', async (t) => {
  const body = randomBytes(1024 * 1024);
  let stream: H2Stream | null = null;
  const srv = await ourServer((st) => {
    const g = new Got();
    g.stream = st;
    st.handler = g;
    stream = st;
    st.sendHeaders([':status', '200'], false);
    st.sendData(body, true);
  });
  t.teardown(() => srv.close());
  const c = await nodeClient(srv.port, { settings: { initialWindowSize: 16384 } });
  t.teardown(() => c.close());
  c.setLocalWindowSize(16 * 1024 * 1024);
  const req = c.request({ ':path': '/w' });
  req.pause();
  const parts: Buffer[] = [];
  const closed = new Promise<void>((r) => req.on('close', () => r()));
  for (let i = 0; i < 100 && stream === null; i++) await sleep(10);
  await sleep(100);
  const st = stream as unknown as H2Stream;
  const sentBefore = body.length - st.queued;
  t.ok(sentBefore <= 16384, `at most the 16 KiB window went out (${sentBefore})`);
  c.settings({ initialWindowSize: 256 * 1024 });
  for (let i = 0; i < 100 && body.length - st.queued <= 16384; i++) await sleep(10);
  const sentAfter = body.length - st.queued;
  t.ok(sentAfter > 16384 && sentAfter <= 256 * 1024, `the larger window applied to the open stream (${sentAfter})`);
  req.on('data', (d: Buffer) => parts.push(d));
  req.resume();
  await closed;
  t.equal(sha(Buffer.concat(parts)), sha(body));
});
