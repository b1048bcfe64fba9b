// A planned restart's drain of HTTP/1.1 keep-alive connections (H1Conn.closeIdle, NetConn.endIfIdle): an idle
// connection is closed with a FIN only when nothing of the client's waits in its socket, so a request that reached
// the proxy is answered (with `connection: close`) and never reset. What a client may see, by RFC 9112:
//   - an answer on the old connection;
//   - a clean close (FIN) before it sent: the connection is not reused (9.3.1: "anticipate ... asynchronous close
//     events"), the request goes on a new connection;
//   - a request crossing our FIN on the wire: a clean close with no byte of a response. The proxy never forwarded
//     it, and a client may retry an idempotent request then (9.3.1);
// and never RST (9.6: "the TCP reset problem"), a cut response or silence: those are lost requests.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { createServer as netServer, type AddressInfo, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { connectTo, readResponses, startProxy, TestGroup, TestPolicy, upstream, type RunningProxy } from '../lib/proxy.js';

const group = new TestGroup();
const RACE = fileURLToPath(new URL('../lib/h1race.py', import.meta.url));
const CLIENTS = 1000;
const ROUNDS = 3;
const DELAY_MS = [0, 1, 3];

/** an HTTP/1.1 backend that counts the requests it saw by path */
async function backend(t: { teardown(fn: () => void): void }): Promise<{ port: number; seen: Map<string, number> }> {
  const seen = new Map<string, number>();
  const s: Server = createServer((req, res) => {
    seen.set(req.url!, (seen.get(req.url!) ?? 0) + 1);
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`ok ${req.url}`);
  });
  s.keepAliveTimeout = 60_000;
  s.maxConnections = 10_000;
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', 4096, r));
  t.teardown(() => { s.closeAllConnections(); s.close(); });
  return { port: (s.address() as AddressInfo).port, seen };
}

async function proxyTo(t: { teardown(fn: () => Promise<void> | void): void }, port: number, g = group): Promise<RunningProxy> {
  const policy = new TestPolicy(() => ({ upstreams: [upstream(port, g)], upstreamProtocol: 'http1' }));
  const p = await startProxy(policy);
  t.teardown(() => p.close());
  return p;
}

/** the proxy's event loop held for ms (a busy agent): what clients send meanwhile waits, unread, in its sockets */
function hold(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) { /* spin */ }
}

t.test('a request unread in the socket when the drain closes idle connections is answered with connection: close, not reset', async (t) => {
  const b = await backend(t);
  const p = await proxyTo(t, b.port);
  const c: Socket = await connectTo(p.port);
  t.teardown(() => c.destroy());
  c.write('GET /first HTTP/1.1\r\nhost: svc\r\n\r\n');
  t.equal((await readResponses(c, 1))[0]?.status, 200, 'the first request answered: the connection is idle');
  let reset = false;
  c.on('error', (e: NodeJS.ErrnoException) => { reset = e.code === 'ECONNRESET'; });
  const closed = new Promise<void>((r) => c.on('close', () => r()));
  // The second request is in the proxy's socket (loopback delivers during write()) but not read: the loop is held.
  // The drain's idle close comes in the same turn, as a timer would after a long tick.
  c.write('GET /second HTTP/1.1\r\nhost: svc\r\n\r\n');
  hold(20);
  const drained = p.proxy.drain(5000, 0);
  const [res] = await readResponses(c, 1);
  t.equal(res?.status, 200, 'the request that was waiting is answered');
  t.equal(res?.headers['connection'], 'close', 'with connection: close');
  await closed;
  t.notOk(reset, 'no RST');
  t.equal(b.seen.get('/second'), 1, 'the backend saw it once');
  t.equal((await drained).left, 0, 'the connection closed, the drain is over');
});

t.test('a request head half received when the drain starts is completed and answered with connection: close', async (t) => {
  const b = await backend(t);
  const p = await proxyTo(t, b.port);
  const c: Socket = await connectTo(p.port);
  t.teardown(() => c.destroy());
  c.write('GET /first HTTP/1.1\r\nhost: svc\r\n\r\n');
  await readResponses(c, 1);
  c.write('GET /half HTTP/1.1\r\nho');
  await new Promise((r) => setTimeout(r, 50));
  const drained = p.proxy.drain(5000, 0);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(c.readableEnded, false, 'not closed under a request that has started');
  c.write('st: svc\r\n\r\n');
  const [res] = await readResponses(c, 1);
  t.equal(res?.status, 200, 'answered');
  t.equal(res?.headers['connection'], 'close', 'with connection: close');
  t.equal((await drained).left, 0, 'the drain is over');
});

t.test('the keep-alive idle timeout closes with FIN and still answers a request that arrived unread', async (t) => {
  const b = await backend(t);
  const policy = new TestPolicy(() => ({ upstreams: [upstream(b.port, group)], upstreamProtocol: 'http1' }));
  const p = await startProxy(policy, { clientIdleTimeoutMs: 300 });
  t.teardown(() => p.close());
  // idle: closed with FIN at the timeout (end, no error)
  const idle = await connectTo(p.port);
  idle.write('GET /a HTTP/1.1\r\nhost: svc\r\n\r\n');
  await readResponses(idle, 1);
  let idleError: string | null = null;
  idle.on('error', (e: NodeJS.ErrnoException) => { idleError = e.code ?? e.message; });
  const at = performance.now();
  await new Promise<void>((r) => idle.on('end', () => r()));
  const after = performance.now() - at;
  t.ok(after > 200 && after < 2000, `closed after the idle timeout (${after.toFixed(0)} ms)`);
  t.equal(idleError, null, 'a FIN, no RST');
  // a request that reaches the socket while the loop is held past the timeout: answered (then closed), not reset
  const late = await connectTo(p.port);
  late.write('GET /b HTTP/1.1\r\nhost: svc\r\n\r\n');
  await readResponses(late, 1);
  let lateError: string | null = null;
  late.on('error', (e: NodeJS.ErrnoException) => { lateError = e.code ?? e.message; });
  await new Promise((r) => setTimeout(r, 250));
  late.write('GET /c HTTP/1.1\r\nhost: svc\r\n\r\n');
  hold(100); // the idle timer is due in this turn; the request is unread
  const [res] = await readResponses(late, 1);
  t.equal(res?.status, 200, 'the request that arrived as the timeout fired is answered');
  t.equal(lateError, null, 'no RST');
  t.equal(b.seen.get('/c'), 1, 'the backend saw it once');
  late.destroy();
});

interface RaceResult { counts: Record<string, number>; ids: Record<string, number[]>; retries: Record<string, number>; sentMs: number; error?: string }

/**
 * one round: CLIENTS idle keep-alive connections, a request on each sent while the proxy drains (h1race.py), which
 * signals the drain's start delayMs before its first request
 */
async function race(t: Test, round: number, delayMs: number): Promise<RaceResult | null> {
  const b = await backend(t);
  // their own limits: up to CLIENTS upstream connections at once, per proxy
  const old = await proxyTo(t, b.port, new TestGroup(CLIENTS * 2, CLIENTS * 2));
  const next = await proxyTo(t, b.port, new TestGroup(CLIENTS * 2, CLIENTS * 2)); // the new agent, where a client retries
  let drained: Promise<{ left: number }> | null = null;
  const trigger = netServer((s) => {
    s.resume();
    // the race client's signal: the drain starts now, its requests are being sent
    drained ??= old.proxy.drain(10_000, 0);
  });
  await new Promise<void>((r) => trigger.listen(0, '127.0.0.1', r));
  t.teardown(() => { trigger.close(); });
  const child = spawn('/usr/bin/python3', [RACE, '127.0.0.1', String(old.port), String(next.port), String(CLIENTS), String((trigger.address() as AddressInfo).port), String(delayMs)], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => { child.kill('SIGKILL'); });
  let out = '', err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<void>((r) => child.on('close', () => r()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`h1race.py not ready in 60 s: ${out} ${err}`)), 60_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.startsWith('ready\n')) { clearTimeout(timer); resolve(); }
    });
  });
  child.stdin!.write('go\n');
  await exited;
  const line = out.split('\n').find((l) => l.startsWith('{'));
  if (!t.ok(line, `round ${round}: h1race.py reported (${err.trim()})`)) return null;
  const r = JSON.parse(line!) as RaceResult;
  if (!t.notOk(r.error, `round ${round}: warm-up ${r.error ?? 'ok'}`)) return null;
  t.ok(drained, `round ${round}: the drain started during the race`);
  const left = drained === null ? -1 : (await drained as { left: number }).left;
  t.equal(left, 0, `round ${round}: every connection of the old proxy closed`);
  const c = r.counts;
  t.comment(`round ${round} (drain signalled ${delayMs} ms before the first request): ${JSON.stringify(c)} retries ${JSON.stringify(r.retries)}, the requests sent in ${r.sentMs} ms`);
  const lost = CLIENTS - (c['answered'] ?? 0) - (c['closed-before'] ?? 0) - (c['crossed'] ?? 0);
  t.equal(lost, 0, `round ${round}: 0 lost (reset, cut, unanswered or not 200): ${JSON.stringify(c)}`);
  // A request crossing our FIN: sent after the proxy looked at the socket and before the FIN reached the client. The
  // look and the FIN are one native call, so this window is the client's own, between its look and its send (4 in
  // 3,000 measured); a FIN sent without that look (end()) crossed 221-782 per round, every request unread in the
  // socket at the time.
  t.ok((c['crossed'] ?? 0) <= CLIENTS / 100, `round ${round}: at most 1 % crossed our FIN (${c['crossed'] ?? 0})`);
  t.equal(r.retries['200'] ?? 0, (c['closed-before'] ?? 0) + (c['crossed'] ?? 0), `round ${round}: every retry answered 200`);
  // Exactly once at the backend: an answered request once, through the old proxy; a closed or crossed one only by its
  // retry, so the old proxy never forwarded a request it did not answer (which is what makes the retry safe).
  let wrong = 0;
  for (let i = 0; i < CLIENTS; i++) if (b.seen.get(`/race/${i}`) !== 1) wrong++;
  t.equal(wrong, 0, `round ${round}: the backend saw each of the ${CLIENTS} requests exactly once`);
  return r;
}

t.test(`${CLIENTS} idle keep-alive clients each send a request as the drain closes idle connections: 0 lost, 0 reset`, async (t) => {
  const total: Record<string, number> = {};
  for (let round = 1; round <= ROUNDS; round++) {
    // the proxy closes its idle connections while the requests arrive, from their first or a little later
    const r = await race(t, round, DELAY_MS[(round - 1) % DELAY_MS.length]!);
    if (r === null) return;
    for (const [k, v] of Object.entries(r.counts)) total[k] = (total[k] ?? 0) + v;
  }
  t.comment(`over ${ROUNDS} x ${CLIENTS}: ${JSON.stringify(total)}`);
  // The race must have been run: some requests reached the proxy before the FIN (answered), some found it closed.
  t.ok((total['answered'] ?? 0) > 0, 'some requests were answered on their old connection');
  t.ok((total['closed-before'] ?? 0) + (total['crossed'] ?? 0) > 0, 'some found their connection closed by the drain');
  t.equal(total['reset'] ?? 0, 0, 'no request was reset');
});
