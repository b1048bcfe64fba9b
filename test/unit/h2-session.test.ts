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
import { block, frame, goawayCode, HELLO, isGoaway, PREFACE, raw, u32, type RawFrame } from '../lib/h2raw.js';

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
function sendBody(st: H2Stream, g: Got, body: Buffer, chunk: number, progress = { handed: 0 }, trailers?: HeaderList): Promise<{ falses: number }> {
  return new Promise((resolve) => {
    let off = 0;
    let falses = 0;
    const pump = (): void => {
      while (off < body.length) {
        const n = Math.min(chunk, body.length - off);
        const last = off + n === body.length && trailers === undefined;
        const ok = st.sendData(body.subarray(off, off + n), last);
        off += n;
        progress.handed = off;
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

// ---- our client role, node:http2 as the server

interface NodeServer { port: number; server: Http2Server; sessions: ServerHttp2Session[]; open: number; peak: number; close(): Promise<void> }

async function nodeServer(onStream: (s: ServerHttp2Stream, h: IncomingHttpHeaders) => void, settings: Record<string, number> = {}): Promise<NodeServer> {
  const sockets = new Set<Socket>();
  const b: NodeServer = {
    port: 0, sessions: [], open: 0, peak: 0,
    server: h2server({ settings }),
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); b.server.close(() => r()); }),
  };
  b.server.on('session', (s) => { b.sessions.push(s); s.on('error', () => {}); });
  b.server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  b.server.on('stream', (s, h) => {
    b.open++;
    b.peak = Math.max(b.peak, b.open);
    s.on('close', () => b.open--);
    s.on('error', () => {});
    onStream(s, h);
  });
  await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  return b;
}

interface OurClient { session: H2Session; sock: Socket; closed: Promise<Error | undefined>; goaways: [number, number][] }

async function ourClient(port: number, extra: Partial<H2SessionOptions> = {}): Promise<OurClient> {
  const sock = netConnect(port, '127.0.0.1');
  let closed!: (e: Error | undefined) => void;
  let settings!: () => void;
  const c: OurClient = {
    sock, goaways: [],
    closed: new Promise((r) => { closed = r; }),
    session: null as unknown as H2Session,
  };
  const gotSettings = new Promise<void>((r) => { settings = r; });
  c.session = new H2Session(sock, {
    role: 'client',
    onSettings: () => settings(),
    onClose: (e) => closed(e),
    onGoaway: (last, code) => c.goaways.push([last, code]),
    ...extra,
  });
  await gotSettings;
  return c;
}

function req(path: string, method = 'GET', more: HeaderList = []): HeaderList {
  return [':method', method, ':scheme', 'http', ':authority', 'test', ':path', path, ...more];
}

function open(c: OurClient, h: HeaderList, endStream: boolean, autoConsume = true): Got {
  const g = new Got(autoConsume);
  g.stream = c.session.request(h, endStream, g);
  return g;
}

async function readAll(s: ServerHttp2Stream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const d of s) parts.push(d as Buffer);
  return Buffer.concat(parts);
}

t.test('client role: GET and POST to node:http2', async (t) => {
  const srv = await nodeServer((s, h) => {
    void readAll(s).then((body) => {
      s.respond({ ':status': 200, 'x-method': h[':method'], 'x-path': h[':path'], 'x-authority': h[':authority'] });
      s.end(body.length > 0 ? body : 'hello');
    });
  });
  t.teardown(() => srv.close());
  const c = await ourClient(srv.port);
  t.teardown(() => c.session.destroy());
  const g = open(c, req('/a?b=1'), true);
  await g.done;
  t.equal(field(g.head, ':status'), '200');
  t.equal(field(g.head, 'x-method'), 'GET');
  t.equal(field(g.head, 'x-path'), '/a?b=1');
  t.equal(field(g.head, 'x-authority'), 'test');
  t.equal(g.body.toString(), 'hello');
  const p = open(c, req('/post', 'POST', ['content-type', 'text/plain', 'content-length', '14']), false);
  p.stream.sendData(Buffer.from('a request body'), true);
  await p.done;
  t.equal(p.body.toString(), 'a request body');
  const many = Array.from({ length: 50 }, (_, i) => open(c, req(`/${i}`), true));
  await Promise.all(many.map((m) => m.done));
  t.same(many.map((m) => field(m.head, 'x-path')), Array.from({ length: 50 }, (_, i) => `/${i}`));
  t.equal(srv.sessions.length, 1);
  t.equal(c.session.activeStreams, 0);
});

t.test('client role: MiB bodies both ways under flow control, slow consumers on both sides', async (t) => {
  const WINDOW = 256 * 1024;
  const up = randomBytes(4 * 1024 * 1024);
  const down = randomBytes(4 * 1024 * 1024);
  let upSha = '';
  let serverStream: ServerHttp2Stream | null = null;
  const srv = await nodeServer((s) => {
    serverStream = s;
    s.pause(); // a slow reader: nothing for a while
    void sleep(300).then(async () => {
      upSha = sha(await readAll(s));
      s.respond({ ':status': 200 });
      s.end(down);
    });
  });
  t.teardown(() => srv.close());
  const c = await ourClient(srv.port, { settings: { initialWindowSize: WINDOW } });
  t.teardown(() => c.session.destroy());
  const g = open(c, req('/up', 'POST'), false, false);
  const progress = { handed: 0 };
  const sent = sendBody(g.stream, g, up, 64 * 1024, progress);
  await sleep(200);
  t.ok(serverStream !== null);
  const sentEarly = progress.handed - g.stream.queued;
  t.ok(sentEarly <= 65535, `a paused server held our upload back to its window (${sentEarly} bytes out in 200 ms)`);
  t.ok(progress.handed < 1024 * 1024, `and we were told to stop (${progress.handed} bytes handed over)`);
  const { falses } = await sent;
  t.ok(falses > 0, `sendData said false (${falses} times)`);
  // the slow consumer on our side: 64 KiB every 10 ms
  const timer = setInterval(() => g.consumeHeld(64 * 1024), 10);
  await g.done;
  clearInterval(timer);
  t.equal(upSha, sha(up), 'upload byte-exact');
  t.equal(sha(g.body), sha(down), 'download byte-exact');
  t.ok(g.maxHeld <= WINDOW, `we held at most our stream window (${g.maxHeld} <= ${WINDOW})`);
  t.ok(g.maxHeld >= WINDOW / 2, `the window was used (${g.maxHeld})`);
});

t.test('client role: trailers both ways, trailers-only responses, 1xx', async (t) => {
  let reqTrailers: IncomingHttpHeaders | null = null;
  const srv = await nodeServer((s, h) => {
    if (h[':path'] === '/only') {
      s.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '7' }, { endStream: true });
      return;
    }
    if (h[':path'] === '/continue') {
      s.additionalHeaders({ ':status': 100 });
      void readAll(s).then((b) => { s.respond({ ':status': 201 }); s.end(b); });
      return;
    }
    s.on('trailers', (tr) => { reqTrailers = tr; });
    void readAll(s).then((body) => {
      s.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      s.on('wantTrailers', () => s.sendTrailers({ 'grpc-status': '0', 'grpc-message': 'fine' }));
      s.end(body);
    });
  });
  t.teardown(() => srv.close());
  const c = await ourClient(srv.port);
  t.teardown(() => c.session.destroy());

  const g = open(c, req('/tr', 'POST', ['content-type', 'application/grpc', 'te', 'trailers']), false);
  g.stream.sendData(Buffer.from('payload'), false);
  g.stream.sendTrailers(['x-req-trailer', 'yes']);
  await g.done;
  t.equal(g.body.toString(), 'payload');
  t.same(g.trailers, ['grpc-status', '0', 'grpc-message', 'fine'], 'response trailers');
  t.equal((reqTrailers as IncomingHttpHeaders | null)?.['x-req-trailer'], 'yes', 'request trailers');

  const only = open(c, req('/only', 'POST', ['content-type', 'application/grpc']), true);
  await only.done;
  t.equal(only.heads.length, 1);
  t.ok(only.ended, 'the head ended the stream');
  t.equal(field(only.head, 'grpc-status'), '7');
  t.equal(only.chunks.length, 0);

  const cont = open(c, req('/continue', 'PUT', ['expect', '100-continue']), false);
  for (let i = 0; i < 100 && cont.heads.length === 0; i++) await sleep(10);
  t.equal(field(cont.heads[0], ':status'), '100', 'the 1xx head came through onHeaders');
  cont.stream.sendData(Buffer.from('after continue'), true);
  await cont.done;
  t.equal(field(cont.head, ':status'), '201');
  t.equal(cont.body.toString(), 'after continue');
});

t.test('client role: 1000 streams under the peer\'s max concurrent streams', async (t) => {
  const srv = await nodeServer((s, h) => {
    setTimeout(() => { s.respond({ ':status': 200 }); s.end(String(h[':path'])); }, 2);
  }, { maxConcurrentStreams: 100 });
  t.teardown(() => srv.close());
  const c = await ourClient(srv.port);
  t.teardown(() => c.session.destroy());
  t.equal(c.session.peerMaxConcurrentStreams, 100);
  const all: Got[] = [];
  await new Promise<void>((resolve) => {
    let next = 0;
    let done = 0;
    const more = (): void => {
      while (next < 1000 && c.session.canRequest) {
        const g = open(c, req(`/s${next++}`), true);
        all.push(g);
        void g.done.then(() => { done++; if (done === 1000) resolve(); else setImmediate(more); });
      }
    };
    more();
  });
  t.equal(all.filter((g, i) => g.body.toString() === `/s${i}` && field(g.head, ':status') === '200').length, 1000);
  t.ok(srv.peak <= 100, `the server saw at most 100 at once (${srv.peak})`);
  t.ok(srv.peak >= 50, `and many at once (${srv.peak})`);
});

t.test('client role: RST_STREAM both ways', async (t) => {
  const serverResets: number[] = [];
  const srv = await nodeServer((s, h) => {
    if (h[':path'] === '/reset-me') { s.close(constants.NGHTTP2_ENHANCE_YOUR_CALM); return; }
    if (h[':path'] === '/cancel') { s.on('close', () => serverResets.push(s.rstCode)); return; }
    s.respond({ ':status': 200 });
    s.end('ok');
  });
  t.teardown(() => srv.close());
  const c = await ourClient(srv.port);
  t.teardown(() => c.session.destroy());
  const r = open(c, req('/reset-me'), true);
  await r.done;
  t.equal(r.resetCode, H2_ERROR.ENHANCE_YOUR_CALM, 'the server\'s RST_STREAM reached the handler');
  const k = open(c, req('/cancel', 'POST'), false);
  k.stream.sendData(Buffer.from('part'), false);
  await sleep(50);
  k.stream.reset(H2_ERROR.CANCEL);
  t.ok(k.stream.closed);
  for (let i = 0; i < 100 && serverResets.length === 0; i++) await sleep(10);
  t.same(serverResets, [constants.NGHTTP2_CANCEL], 'our RST_STREAM reached the server');
  const after = open(c, req('/after'), true);
  await after.done;
  t.equal(after.body.toString(), 'ok', 'the session lives on');
});

t.test('client role: graceful GOAWAY both ways, PING', async (t) => {
  const held: ServerHttp2Stream[] = [];
  const srv = await nodeServer((s, h) => {
    if (String(h[':path']).startsWith('/hold')) { held.push(s); return; }
    s.respond({ ':status': 200 });
    s.end('ok');
  });
  t.teardown(() => srv.close());

  // PING from the server
  const c1 = await ourClient(srv.port);
  const pong = await new Promise<Buffer>((resolve, reject) => srv.sessions[0].ping(Buffer.from('abcdefgh'), (err, _ms, p) => (err ? reject(err) : resolve(p))));
  t.equal(pong.toString(), 'abcdefgh', 'PING answered with its payload');

  // the server's GOAWAY with last stream 1: stream 3 is refused, stream 1 finishes, then the session closes
  const a = open(c1, req('/hold-a'), true);
  const b = open(c1, req('/hold-b'), true);
  for (let i = 0; i < 100 && held.length < 2; i++) await sleep(10);
  srv.sessions[0].goaway(constants.NGHTTP2_NO_ERROR, 1);
  await b.done;
  t.equal(b.resetCode, H2_ERROR.REFUSED_STREAM, 'the stream above the last id: REFUSED_STREAM (safe to retry)');
  t.same(c1.goaways, [[1, 0]], 'onGoaway(1, NO_ERROR)');
  t.equal(c1.session.canRequest, false, 'no new streams');
  t.throws(() => c1.session.request(req('/x'), true, new Got()), /going away/);
  held[0].respond({ ':status': 200 });
  held[0].end('finished');
  await a.done;
  t.equal(a.body.toString(), 'finished', 'the stream below the last id completed');
  t.equal(await c1.closed, undefined, 'then the session closed, without an error');

  // our GOAWAY: the stream in flight finishes, then the connection closes
  const c2 = await ourClient(srv.port);
  const sess2 = srv.sessions[1];
  const goaway = new Promise<number>((r) => sess2.once('goaway', (code) => r(code)));
  const d = open(c2, req('/hold-d'), true);
  for (let i = 0; i < 100 && held.length < 3; i++) await sleep(10);
  c2.session.goaway();
  t.equal(await goaway, constants.NGHTTP2_NO_ERROR, 'the server got our GOAWAY');
  t.equal(c2.session.closed, false);
  held[2].respond({ ':status': 200 });
  held[2].end('done too');
  await d.done;
  t.equal(d.body.toString(), 'done too');
  t.equal(await c2.closed, undefined);
});

t.test('client role: header blocks over 16 KiB (CONTINUATION) both ways', async (t) => {
  const big = 'w'.repeat(40 * 1024);
  const srv = await nodeServer((s, h) => {
    s.respond({ ':status': 200, 'x-len': String(String(h['x-big']).length), 'x-big-back': String(h['x-big']) }, { endStream: true });
  }, { maxHeaderListSize: 256 * 1024 });
  t.teardown(() => srv.close());
  const c = await ourClient(srv.port);
  t.teardown(() => c.session.destroy());
  const g = open(c, req('/big', 'GET', ['x-big', big]), true);
  await g.done;
  t.equal(g.resetCode, -1);
  t.equal(field(g.head, 'x-len'), String(big.length), 'the request header arrived whole');
  t.equal(field(g.head, 'x-big-back'), big, 'the response header arrived whole');
});

t.test('client role: the peer changes its initial window mid-flight', async (t) => {
  const body = randomBytes(1024 * 1024);
  let serverStream: ServerHttp2Stream | null = null;
  const srv = await nodeServer((s) => {
    s.pause();
    serverStream = s;
  }, { initialWindowSize: 16384 });
  t.teardown(() => srv.close());
  srv.server.on('session', (s) => s.setLocalWindowSize(16 * 1024 * 1024));
  const c = await ourClient(srv.port);
  t.teardown(() => c.session.destroy());
  const g = open(c, req('/w', 'POST'), false);
  g.stream.sendData(body, true);
  await sleep(150);
  const sentBefore = body.length - g.stream.queued;
  t.ok(sentBefore <= 16384, `at most the 16 KiB window went out (${sentBefore})`);
  srv.sessions[0].settings({ initialWindowSize: 256 * 1024 });
  for (let i = 0; i < 100 && body.length - g.stream.queued <= 16384; i++) await sleep(10);
  const sentAfter = body.length - g.stream.queued;
  t.ok(sentAfter > 16384 && sentAfter <= 256 * 1024, `the larger window applied to the open stream (${sentAfter})`);
  const received = await readAll(serverStream as unknown as ServerHttp2Stream);
  t.equal(sha(received), sha(body));
});

// ---- malformed input, written raw

const GET = [':method', 'GET', ':scheme', 'http', ':path', '/', ':authority', 'x'];
const END_STREAM = 0x1, END_HEADERS = 0x4;
const headers = (id: number, pairs: string[], flags = END_STREAM | END_HEADERS): Buffer => frame(1, flags, id, block(pairs));
const isRst = (id: number) => (f: RawFrame): boolean => (f.type === 3 && f.id === id) || f.type === 7;
const rstCode = (r: { frames: RawFrame[] }, id: number): number => { const f = r.frames.find((x) => x.type === 3 && x.id === id); return f === undefined ? -1 : f.payload.readUInt32BE(0); };
/** the response HEADERS on a stream, or a GOAWAY */
const isAnswer = (id: number) => (f: RawFrame): boolean => (f.type === 1 && f.id === id) || f.type === 7;

t.test('server role: malformed input gets the right GOAWAY or RST_STREAM, never a crash', async (t) => {
  const tooLarge: boolean[] = [];
  const served1: string[] = []; // heads handed on for stream 1
  const srv = await ourServer((st, h, end, large) => {
    if (st.id === 1) served1.push(field(h, ':path') ?? '');
    tooLarge.push(large);
    if (large) { const g = new Got(); g.stream = st; st.handler = g; st.sendHeaders([':status', '431'], true); return; }
    if (field(h, ':path') === '/hold') { const g = new Got(false); g.stream = st; st.handler = g; return; } // never consumes
    echo(st, h, end);
  }, { settings: { maxHeaderListSize: 4096 } });
  t.teardown(() => srv.close());
  const conn = async (name: string, bytes: Buffer, code: number): Promise<void> => {
    const r = await raw(srv.port, bytes, isGoaway);
    t.equal(goawayCode(r), code, `${name}: GOAWAY ${code}`);
    t.ok(r.closed, `${name}: connection closed`);
  };
  const stream = async (name: string, bytes: Buffer, id: number, code: number, alive = true): Promise<void> => {
    // a valid request on a later stream after it: the session lives on
    const next = id + 2;
    const r = await raw(srv.port, Buffer.concat([HELLO, bytes, headers(next, GET)]), isAnswer(next));
    t.equal(rstCode(r, id), code, `${name}: RST_STREAM ${code} on stream ${id}`);
    t.equal(goawayCode(r), -1, `${name}: no GOAWAY`);
    if (alive) t.ok(r.frames.some((f) => f.type === 1 && f.id === next), `${name}: the next stream was answered`);
  };

  // the connection preface and framing
  await conn('HTTP/1.1 instead of the preface', Buffer.from('GET / HTTP/1.1\r\nhost: x\r\n\r\n'), H2_ERROR.PROTOCOL_ERROR);
  await conn('a first frame other than SETTINGS', Buffer.concat([PREFACE, frame(6, 0, 0, Buffer.alloc(8))]), H2_ERROR.PROTOCOL_ERROR);
  await conn('a frame over our max frame size', Buffer.concat([HELLO, frame(0, 0, 1, Buffer.alloc(20000))]), H2_ERROR.FRAME_SIZE_ERROR);
  await conn('DATA on stream 0', Buffer.concat([HELLO, frame(0, 0, 0, 'x')]), H2_ERROR.PROTOCOL_ERROR);
  await conn('DATA on an idle stream', Buffer.concat([HELLO, frame(0, 0, 5, 'x')]), H2_ERROR.PROTOCOL_ERROR);
  await conn('WINDOW_UPDATE of 0 on the connection', Buffer.concat([HELLO, frame(8, 0, 0, u32(0))]), H2_ERROR.PROTOCOL_ERROR);
  await conn('connection window over 2^31-1', Buffer.concat([HELLO, frame(8, 0, 0, u32(0x7fffffff))]), H2_ERROR.FLOW_CONTROL_ERROR);
  await conn('WINDOW_UPDATE of 3 bytes', Buffer.concat([HELLO, frame(8, 0, 0, Buffer.alloc(3))]), H2_ERROR.FRAME_SIZE_ERROR);
  await conn('an even stream id from a client', Buffer.concat([HELLO, headers(2, GET)]), H2_ERROR.PROTOCOL_ERROR);
  await conn('a stream id lower than the last', Buffer.concat([HELLO, headers(5, GET), headers(3, GET)]), H2_ERROR.PROTOCOL_ERROR);
  await conn('PUSH_PROMISE from a client', Buffer.concat([HELLO, frame(5, END_HEADERS, 1, Buffer.concat([u32(2), block(GET)]))]), H2_ERROR.PROTOCOL_ERROR);
  await conn('CONTINUATION without HEADERS', Buffer.concat([HELLO, frame(9, END_HEADERS, 1, block(GET))]), H2_ERROR.PROTOCOL_ERROR);
  await conn('another frame inside a header block', Buffer.concat([HELLO, frame(1, END_STREAM, 1, block(GET)), frame(6, 0, 0, Buffer.alloc(8))]), H2_ERROR.PROTOCOL_ERROR);
  await conn('SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1', Buffer.concat([PREFACE, frame(4, 0, 0, Buffer.from([0, 4, 0x80, 0, 0, 0]))]), H2_ERROR.FLOW_CONTROL_ERROR);
  await conn('SETTINGS_MAX_FRAME_SIZE under 16384', Buffer.concat([PREFACE, frame(4, 0, 0, Buffer.from([0, 5, 0, 0, 0x10, 0]))]), H2_ERROR.PROTOCOL_ERROR);
  await conn('SETTINGS of 5 bytes', Buffer.concat([PREFACE, frame(4, 0, 0, Buffer.alloc(5))]), H2_ERROR.FRAME_SIZE_ERROR);
  await conn('PING of 7 bytes', Buffer.concat([HELLO, frame(6, 0, 0, Buffer.alloc(7))]), H2_ERROR.FRAME_SIZE_ERROR);
  await conn('an HPACK index past the tables', Buffer.concat([HELLO, frame(1, END_STREAM | END_HEADERS, 1, Buffer.from([0xff, 0x80, 0x01]))]), H2_ERROR.COMPRESSION_ERROR);
  await conn('a header block that never ends', Buffer.concat([
    HELLO, frame(1, 0, 1, block(GET)), ...Array.from({ length: 20 }, () => frame(9, 0, 1, Buffer.alloc(16384, 0x40))),
  ]), H2_ERROR.ENHANCE_YOUR_CALM);
  await conn('padding longer than the frame', Buffer.concat([HELLO, frame(1, END_STREAM | END_HEADERS | 0x8, 1, Buffer.concat([Buffer.from([200]), block(GET)]))]), H2_ERROR.PROTOCOL_ERROR);

  // stream errors: the session lives on
  await stream('an upper-case header name', headers(1, [...GET, 'X-Upper', 'v']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('a connection-specific header', headers(1, [...GET, 'connection', 'keep-alive']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('transfer-encoding', headers(1, [...GET, 'transfer-encoding', 'chunked']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('te other than trailers', headers(1, [...GET, 'te', 'gzip']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('a pseudo-header after a regular one', headers(1, [':method', 'GET', ':scheme', 'http', 'x-a', 'b', ':path', '/']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('an unknown pseudo-header', headers(1, [...GET, ':protocol', 'websocket']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('no :path', headers(1, [':method', 'GET', ':scheme', 'http']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('a space in :path', headers(1, [':method', 'GET', ':scheme', 'http', ':path', '/a b', ':authority', 'x']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('a relative :path', headers(1, [':method', 'GET', ':scheme', 'http', ':path', 'a', ':authority', 'x']), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('CR LF in a value', headers(1, [...GET, 'x-a', 'b\r\nx-b: c']), 1, H2_ERROR.PROTOCOL_ERROR);
  const post = [':method', 'POST', ':scheme', 'http', ':path', '/p', ':authority', 'x'];
  await stream('content-length over the DATA', Buffer.concat([headers(1, [...post, 'content-length', '10'], END_HEADERS), frame(0, END_STREAM, 1, 'short')]), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('DATA over the content-length', Buffer.concat([headers(1, [...post, 'content-length', '2'], END_HEADERS), frame(0, END_STREAM, 1, 'longer')]), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('HEADERS after the head without END_STREAM', Buffer.concat([headers(1, post, END_HEADERS), headers(1, ['x-t', '1'], END_HEADERS)]), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('a pseudo-header in trailers', Buffer.concat([headers(1, post, END_HEADERS), headers(1, [':path', '/x'])]), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('WINDOW_UPDATE of 0 on a stream', Buffer.concat([headers(1, post, END_HEADERS), frame(8, 0, 1, u32(0))]), 1, H2_ERROR.PROTOCOL_ERROR);
  await stream('DATA after END_STREAM', Buffer.concat([headers(1, post, END_HEADERS), frame(0, END_STREAM, 1, 'a'), frame(0, 0, 1, 'b')]), 1, H2_ERROR.STREAM_CLOSED);
  await stream('DATA beyond the stream window (1 MiB)', Buffer.concat([
    headers(1, [':method', 'POST', ':scheme', 'http', ':path', '/hold', ':authority', 'x'], END_HEADERS), ...Array.from({ length: 70 }, () => frame(0, 0, 1, Buffer.alloc(16384))),
  ]), 1, H2_ERROR.FLOW_CONTROL_ERROR);

  // a stream depending on itself (RFC 9113 5.3.1, a MUST): a stream error, the request not served; the E flag changes nothing
  const prio = (dep: number) => Buffer.concat([u32(dep), Buffer.from([15])]);
  const hold = [':method', 'POST', ':scheme', 'http', ':path', '/hold', ':authority', 'x'];
  const PRIORITY_FLAG = 0x20;
  const selfDependent: Array<[string, Buffer]> = [
    ['HEADERS with PRIORITY depending on itself', frame(1, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1, Buffer.concat([prio(1), block(GET)]))],
    ['HEADERS with PRIORITY depending on itself, exclusive', frame(1, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1, Buffer.concat([prio(0x80000001), block(GET)]))],
    ['HEADERS with PRIORITY depending on itself, padded', frame(1, END_STREAM | END_HEADERS | PRIORITY_FLAG | 0x8, 1, Buffer.concat([Buffer.from([3]), prio(1), block(GET), Buffer.alloc(3)]))],
    ['HEADERS with PRIORITY depending on itself, then CONTINUATION', Buffer.concat([
      frame(1, END_STREAM | PRIORITY_FLAG, 1, Buffer.concat([prio(1), block(GET.slice(0, 4))])), frame(9, END_HEADERS, 1, block(GET.slice(4))),
    ])],
    ['PRIORITY depending on itself on an open stream', Buffer.concat([headers(1, hold, END_HEADERS), frame(2, 0, 1, prio(1))])],
    ['PRIORITY depending on itself on an idle stream', frame(2, 0, 1, prio(0x80000001))],
  ];
  for (const [name, bytes] of selfDependent) {
    const served = served1.length;
    await stream(name, bytes, 1, H2_ERROR.PROTOCOL_ERROR);
    if (!name.includes('open stream')) t.equal(served1.length, served, `${name}: not handed on`);
  }
  // depending on another stream is fine (and ignored)
  const r2 = await raw(srv.port, Buffer.concat([HELLO, frame(2, 0, 3, prio(1)), frame(1, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1, Buffer.concat([prio(3), block(GET)]))]), isAnswer(1));
  t.ok(r2.frames.some((f) => f.type === 1 && f.id === 1), 'HEADERS depending on another stream: answered');
  t.equal(rstCode(r2, 1), -1);
  t.equal(rstCode(r2, 3), -1, 'PRIORITY depending on another stream: no reaction');

  // a head over maxHeaderListSize reaches onStream as tooLarge (answered 431 here)
  const big = Array.from({ length: 60 }, (_, i) => [`x-h${i}`, 'v'.repeat(100)]).flat();
  const r = await raw(srv.port, Buffer.concat([HELLO, headers(1, [...GET, ...big])]), isAnswer(1));
  t.ok(r.frames.some((f) => f.type === 1 && f.id === 1), 'a response to the head over the limit');
  t.same(tooLarge.filter((x) => x), [true], 'onStream saw tooLarge once');
  t.equal(goawayCode(r), -1);

  // and the server still serves a proper client
  const c = await nodeClient(srv.port);
  const got = await collect(c.request({ ':path': '/still' }));
  t.equal(got.headers['x-path'], '/still');
  c.close();
});

t.test('client role: malformed responses from a raw server', async (t) => {
  /** a server that answers stream 1 with `reply` once the request arrived, and records the client's frames */
  const rawServer = async (reply: Buffer): Promise<{ c: OurClient; frames: RawFrame[]; close(): void }> => {
    const frames: RawFrame[] = [];
    const socks: Socket[] = [];
    const srv = netServer((sock) => {
      socks.push(sock);
      sock.on('error', () => {});
      let buf = Buffer.alloc(0);
      let replied = false;
      sock.write(frame(4, 0, 0));
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.subarray(0, 24).equals(PREFACE)) buf = buf.subarray(24);
        while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
          const len = buf.readUIntBE(0, 3);
          const f = { type: buf[3], flags: buf[4], id: buf.readUInt32BE(5) & 0x7fffffff, payload: buf.subarray(9, 9 + len) };
          frames.push(f);
          buf = buf.subarray(9 + len);
          if (f.type === 1 && !replied) { replied = true; sock.write(reply); }
        }
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const c = await ourClient((srv.address() as AddressInfo).port);
    return { c, frames, close: () => { for (const s of socks) s.destroy(); srv.close(); c.session.destroy(); } };
  };
  const resp = (pairs: string[], flags = END_HEADERS): Buffer => frame(1, flags, 1, block(pairs));

  const cases: [string, Buffer, number, boolean][] = [
    ['an upper-case name in a response', resp([':status', '200', 'X-Up', 'v'], END_HEADERS | END_STREAM), H2_ERROR.PROTOCOL_ERROR, false],
    ['no :status', resp(['x-a', 'b'], END_HEADERS | END_STREAM), H2_ERROR.PROTOCOL_ERROR, false],
    ['a request pseudo-header in a response', resp([':status', '200', ':path', '/'], END_HEADERS | END_STREAM), H2_ERROR.PROTOCOL_ERROR, false],
    ['DATA before the response head', frame(0, END_STREAM, 1, 'x'), H2_ERROR.PROTOCOL_ERROR, false],
    ['content-length over the DATA', Buffer.concat([resp([':status', '200', 'content-length', '5']), frame(0, END_STREAM, 1, 'abc')]), H2_ERROR.PROTOCOL_ERROR, false],
    ['a 1xx head with END_STREAM', resp([':status', '100'], END_HEADERS | END_STREAM), H2_ERROR.PROTOCOL_ERROR, false],
    ['PUSH_PROMISE', frame(5, END_HEADERS, 1, Buffer.concat([u32(2), block(GET)])), H2_ERROR.PROTOCOL_ERROR, true],
    ['HEADERS on a stream the server opened', frame(1, END_HEADERS | END_STREAM, 2, block([':status', '200'])), H2_ERROR.PROTOCOL_ERROR, true],
  ];
  for (const [name, reply, code, connection] of cases) {
    const r = await rawServer(reply);
    const g = open(r.c, req('/'), true);
    await g.done;
    t.equal(g.resetCode, code, `${name}: the stream got onReset(${code})`);
    for (let i = 0; i < 100 && !r.frames.some((f) => f.type === (connection ? 7 : 3)); i++) await sleep(10);
    const sent = r.frames.find((f) => f.type === (connection ? 7 : 3));
    t.equal(sent === undefined ? -1 : sent.payload.readUInt32BE(connection ? 4 : 0), code, `${name}: ${connection ? 'GOAWAY' : 'RST_STREAM'} ${code}`);
    if (connection) t.match(String(await r.c.closed), /PROTOCOL_ERROR/, `${name}: onClose with the error`);
    else t.equal(r.c.session.closed, false, `${name}: the session lives on`);
    r.close();
  }
});

t.test('the transport closing under open streams: onReset for each, onClose once', async (t) => {
  // server role: the client's socket dies
  const resets: number[] = [];
  const srv = await ourServer((st) => {
    const g = new Got();
    g.stream = st;
    st.handler = g;
    void g.done.then(() => resets.push(g.resetCode));
  });
  t.teardown(() => srv.close());
  const sock = netConnect(srv.port, '127.0.0.1');
  sock.on('error', () => {});
  const post = [':method', 'POST', ':scheme', 'http', ':path', '/open', ':authority', 'x'];
  sock.write(Buffer.concat([HELLO, headers(1, post, END_HEADERS), headers(3, post, END_HEADERS), headers(5, post, END_HEADERS)]));
  for (let i = 0; i < 100 && srv.sessions[0]?.activeStreams !== 3; i++) await sleep(10);
  t.equal(srv.sessions[0].activeStreams, 3);
  sock.destroy();
  for (let i = 0; i < 100 && srv.closes.length === 0; i++) await sleep(10);
  t.same(resets, [H2_ERROR.INTERNAL_ERROR, H2_ERROR.INTERNAL_ERROR, H2_ERROR.INTERNAL_ERROR], 'every open stream heard of it');
  t.equal(srv.closes.length, 1, 'onClose once');
  t.equal(srv.sessions[0].closed, true);
  t.equal(srv.sessions[0].activeStreams, 0);

  // client role: the server's socket dies; then destroy() on another session: CANCEL
  const back = await nodeServer(() => {});
  t.teardown(() => back.close());
  const ours = await ourClient(back.port);
  const streams = [open(ours, req('/a'), true), open(ours, req('/b'), true)];
  for (let i = 0; i < 100 && back.open < 2; i++) await sleep(10);
  await back.close();
  await Promise.all(streams.map((g) => g.done));
  t.same(streams.map((g) => g.resetCode), [H2_ERROR.INTERNAL_ERROR, H2_ERROR.INTERNAL_ERROR]);
  await ours.closed;
  t.equal(ours.session.canRequest, false);
  t.throws(() => ours.session.request(req('/c'), true, new Got()), /closed/);

  const back2 = await nodeServer(() => {});
  t.teardown(() => back2.close());
  const ours2 = await ourClient(back2.port);
  const g = open(ours2, req('/d'), true);
  ours2.session.destroy(new Error('shutting down'));
  await g.done;
  t.equal(g.resetCode, H2_ERROR.CANCEL);
  t.match(String(await ours2.closed), /shutting down/);
});

t.test('server role: rapid reset (streams opened and reset before an answer) ends the session', async (t) => {
  let opened = 0;
  const srv = await ourServer((st) => { opened++; const g = new Got(); g.stream = st; st.handler = g; });
  t.teardown(() => srv.close());
  const post = [':method', 'POST', ':scheme', 'http', ':path', '/r', ':authority', 'x'];
  const bytes: Buffer[] = [HELLO];
  for (let id = 1; id < 2 * 1000; id += 2) bytes.push(headers(id, post, END_HEADERS), frame(3, 0, id, u32(H2_ERROR.CANCEL)));
  const r = await raw(srv.port, Buffer.concat(bytes), isGoaway);
  t.equal(goawayCode(r), H2_ERROR.ENHANCE_YOUR_CALM, 'GOAWAY ENHANCE_YOUR_CALM');
  t.ok(r.closed);
  t.ok(opened > 512 && opened < 600, `about half a window of streams reached the owner (${opened})`);

  // streams cancelled after their response head are fine (watches, long polls)
  const srv2 = await ourServer((st) => { const g = new Got(); g.stream = st; st.handler = g; st.sendHeaders([':status', '200'], false); });
  t.teardown(() => srv2.close());
  const c = await nodeClient(srv2.port);
  t.teardown(() => c.close());
  for (let round = 0; round < 4; round++) {
    await Promise.all(Array.from({ length: 200 }, async () => {
      const q = c.request({ ':path': '/watch' });
      q.on('error', () => {});
      await new Promise<void>((res) => q.once('response', () => res()));
      q.close(constants.NGHTTP2_CANCEL);
      await new Promise<void>((res) => q.once('close', () => res()));
    }));
  }
  t.equal(srv2.sessions[0].closed, false, '800 watches cancelled after their heads: the session lives on');
});

t.test('server role: a peer that floods PINGs and never reads is cut off, not buffered without end', async (t) => {
  const srv = await ourServer(echo);
  t.teardown(() => srv.close());
  const sock = netConnect(srv.port, '127.0.0.1');
  sock.on('error', () => {});
  sock.pause(); // never reads
  const pings = Buffer.concat(Array.from({ length: 10000 }, () => frame(6, 0, 0, Buffer.alloc(8))));
  let sent = 0;
  const closed = new Promise<void>((resolve) => {
    sock.on('close', () => resolve());
    sock.write(HELLO);
    const more = (): void => {
      if (sock.destroyed || sent > 3_000_000) return;
      sent += 10000;
      if (sock.write(pings)) setImmediate(more); else sock.once('drain', more);
    };
    more();
  });
  for (let i = 0; i < 300 && srv.closes.length === 0; i++) await sleep(50);
  sock.destroy();
  await closed;
  t.equal(srv.closes.length, 1, `the session gave up after ${sent} PINGs`);
  t.match(String(srv.closes[0]), /does not read/);
});

t.test('SETTINGS ACK timeout: a peer that never acknowledges our SETTINGS gets GOAWAY SETTINGS_TIMEOUT, both roles', async (t) => {
  // server role: a raw client sends its preface and SETTINGS, then a request, and never ACKs ours
  const srv = await ourServer(echo, { settingsTimeoutMs: 300 });
  t.teardown(() => srv.close());
  const started = performance.now();
  const r = await raw(srv.port, Buffer.concat([HELLO, frame(1, END_HEADERS, 1, block(GET))]), isGoaway);
  const took = performance.now() - started;
  t.equal(goawayCode(r), H2_ERROR.SETTINGS_TIMEOUT, 'server role: GOAWAY SETTINGS_TIMEOUT');
  t.ok(r.closed, 'server role: the connection is closed');
  t.ok(took >= 280 && took < 3000, `after about the timeout (${took.toFixed(0)} ms)`);
  t.match(String(srv.closes.at(-1)), /SETTINGS not acknowledged within 300 ms.*SETTINGS_TIMEOUT/, 'onClose with the error');
  // the same raw client that ACKs our SETTINGS is not cut off: its stream is answered after the timeout
  const ack = frame(4, 1, 0);
  const alive = await raw(srv.port, Buffer.concat([HELLO, ack]), () => false);
  t.equal(goawayCode(alive), -1, 'server role: a peer that ACKed gets no GOAWAY (5 s watched)');
  t.equal(alive.closed, false, 'and stays connected');

  // client role: a raw server sends SETTINGS, never ACKs ours, holds the request
  const socks: Socket[] = [];
  const seen: RawFrame[] = [];
  const rawSrv = netServer((sock) => {
    socks.push(sock);
    sock.on('error', () => {});
    sock.write(frame(4, 0, 0));
    let buf = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.subarray(0, 24).equals(PREFACE)) buf = buf.subarray(24);
      while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
        const len = buf.readUIntBE(0, 3);
        seen.push({ type: buf[3]!, flags: buf[4]!, id: buf.readUInt32BE(5) & 0x7fffffff, payload: buf.subarray(9, 9 + len) });
        buf = buf.subarray(9 + len);
      }
    });
  });
  await new Promise<void>((res) => rawSrv.listen(0, '127.0.0.1', () => res()));
  t.teardown(() => { for (const s of socks) s.destroy(); rawSrv.close(); });
  const c = await ourClient((rawSrv.address() as AddressInfo).port, { settingsTimeoutMs: 300 });
  const g = open(c, req('/held'), true);
  await g.done;
  t.equal(g.resetCode, H2_ERROR.SETTINGS_TIMEOUT, 'client role: the open stream gets onReset(SETTINGS_TIMEOUT)');
  t.match(String(await c.closed), /SETTINGS_TIMEOUT/, 'client role: onClose with the error');
  for (let i = 0; i < 100 && !seen.some(isGoaway); i++) await sleep(10);
  const ga = seen.find(isGoaway);
  t.equal(ga === undefined ? -1 : ga.payload.readUInt32BE(4), H2_ERROR.SETTINGS_TIMEOUT, 'client role: GOAWAY SETTINGS_TIMEOUT sent');

  // node:http2 ACKs: a session with a short timeout serves on past it
  const srv2 = await ourServer(echo, { settingsTimeoutMs: 100 });
  t.teardown(() => srv2.close());
  const nc = await nodeClient(srv2.port);
  t.teardown(() => nc.destroy());
  await sleep(300);
  const got = await collect(nc.request({ ':path': '/late' }));
  t.equal(got.headers[':status'], 200, 'an ACKing peer is served after the timeout has passed');
  t.equal(srv2.closes.length, 0, 'its session is not closed');
});
