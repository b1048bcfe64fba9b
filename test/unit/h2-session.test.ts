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
