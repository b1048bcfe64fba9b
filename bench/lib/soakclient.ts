// A soak client: `node soakclient.js SPEC_JSON`, run by bench/soak.ts in a pod or in a host cgroup of the mesh. One
// request loop per target, until SIGTERM (then the requests in flight finish) or the spec's deadline. Every 500 ms it
// prints one JSON line: the successes per target since the last line, and every failure with its times (ms since the
// epoch, the clock the soak's timeline uses) and error, which the soak judges against what was in force.
//
// Kinds: tcp (a fresh TCP connection per request, HTTP/1.1 with `Connection: close` written raw: an L4 client),
// udp (a fresh connected UDP socket per request; on ECONNABORTED, EDESTADDRREQ or no answer in 1 s it tries once more
// on a new socket, as the README tells UDP clients and as resolvers do), h1 (node:http with a keep-alive pool of 2),
// h1c (node:http, a new connection per request), h2 (one node:http2 session, made again after it fails).
import { connect as tcpConnect } from 'node:net';
import { createSocket } from 'node:dgram';
import { Agent, request as h1request } from 'node:http';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';

export type ClientKind = 'tcp' | 'udp' | 'h1' | 'h1c' | 'h2';
export interface ClientTarget { key: string; host: string; port: number; kind: ClientKind }
export interface ClientSpec { name: string; targets: ClientTarget[]; pauseMs: number; deadlineMs: number }
export interface ClientFailure { key: string; kind: ClientKind; t0: number; t1: number; err: string }
export interface ClientReport { client: string; ok: Record<string, number>; fails: ClientFailure[]; done?: boolean }

const REQUEST_TIMEOUT_MS = 5000;
const UDP_WAIT_MS = 1000;

function withTimeout<T>(what: string, ms: number, run: (settle: (e: Error | null, v?: T) => void) => (() => void)): Promise<T> {
  return new Promise((resolve, reject) => {
    let done = false;
    let cleanup: () => void = () => {};
    const settle = (e: Error | null, v?: T) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      cleanup();
      if (e) reject(e); else resolve(v as T);
    };
    const timer = setTimeout(() => settle(new Error(`${what}: no answer in ${ms} ms`)), ms);
    cleanup = run(settle);
  });
}

function tcpOnce(t: ClientTarget): Promise<void> {
  return withTimeout('tcp', REQUEST_TIMEOUT_MS, (settle) => {
    const s = tcpConnect({ host: t.host, port: t.port });
    let got = '';
    s.setEncoding('latin1');
    s.on('connect', () => s.write(`GET / HTTP/1.1\r\nHost: ${t.key}\r\nConnection: close\r\n\r\n`));
    s.on('data', (d: string) => { got += d; });
    s.on('error', (e) => settle(e));
    s.on('end', () => {
      if (got.startsWith('HTTP/1.1 200 ')) settle(null);
      else settle(new Error(`tcp: answer ${JSON.stringify(got.split('\r\n')[0] ?? '')}`));
    });
    return () => s.destroy();
  });
}

function udpTry(t: ClientTarget): Promise<void> {
  return withTimeout('udp', UDP_WAIT_MS, (settle) => {
    const s = createSocket(t.host.includes(':') ? 'udp6' : 'udp4');
    s.on('error', (e) => settle(e));
    s.on('message', (m) => (m.toString().endsWith(' ping') ? settle(null) : settle(new Error(`udp: answer ${JSON.stringify(m.toString())}`))));
    s.connect(t.port, t.host, () => s.send('ping', (e) => { if (e) settle(e); }));
    return () => { try { s.close(); } catch { /* closed */ } };
  });
}

async function udpOnce(t: ClientTarget): Promise<void> {
  try {
    await udpTry(t);
  } catch (e) {
    const msg = (e as Error).message;
    if (!/ECONNABORTED|EDESTADDRREQ|no answer/.test(msg)) throw e;
    await udpTry(t).catch((e2: Error) => { throw new Error(`${msg}; again: ${e2.message}`); });
  }
}

function h1Once(t: ClientTarget, agent: Agent | false): Promise<void> {
  return withTimeout('h1', REQUEST_TIMEOUT_MS, (settle) => {
    const req = h1request({ host: t.host, port: t.port, path: '/', agent, headers: { host: t.key } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? settle(null) : settle(new Error(`h1: status ${res.statusCode} ${why(res.headers)}`.trim()))));
      res.on('error', (e) => settle(e));
    });
    req.on('error', (e) => settle(e));
    req.end();
    return () => req.destroy();
  });
}

/** What a failed answer says about itself: the proxy's reason, or the backend that answered. */
function why(h: Record<string, string | string[] | number | undefined>): string {
  const proxy = h['x-sockmesh-error'] ?? h['x-sockmesh-reason'] ?? h['x-sockmesh-overflow'];
  if (proxy !== undefined) return `(proxy: ${String(proxy)})`;
  return h['x-soak-backend'] !== undefined ? `(backend ${String(h['x-soak-backend'])})` : '';
}

class H2Target {
  private session: ClientHttp2Session | null = null;
  constructor(private readonly t: ClientTarget) {}

  private get(): ClientHttp2Session {
    if (this.session && !this.session.closed && !this.session.destroyed) return this.session;
    const s = h2connect(`http://${this.t.host.includes(':') ? `[${this.t.host}]` : this.t.host}:${this.t.port}`);
    s.on('error', () => { if (this.session === s) this.session = null; });
    s.on('close', () => { if (this.session === s) this.session = null; });
    s.on('goaway', () => { if (this.session === s) this.session = null; });
    this.session = s;
    return s;
  }

  once(): Promise<void> {
    return withTimeout('h2', REQUEST_TIMEOUT_MS, (settle) => {
      const s = this.get();
      const st = s.request({ ':path': '/', ':authority': this.t.key });
      let status = 0;
      let reason = '';
      st.on('response', (h) => { status = Number(h[':status']); reason = why(h); });
      st.resume();
      st.on('end', () => (status === 200 ? settle(null) : settle(new Error(`h2: status ${status} ${reason}`.trim()))));
      st.on('error', (e) => settle(e));
      st.on('close', () => { if (status === 0) settle(new Error(`h2: stream closed (code ${st.rstCode})`)); });
      st.end();
      return () => { if (!st.closed) st.close(); };
    });
  }

  close(): void { this.session?.close(); }
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '') as ClientSpec;
  let stopping = false;
  const ok: Record<string, number> = {};
  let fails: ClientFailure[] = [];
  const flush = (done = false) => {
    const r: ClientReport = { client: spec.name, ok: { ...ok }, fails, ...(done ? { done } : {}) };
    for (const k of Object.keys(ok)) ok[k] = 0;
    fails = [];
    process.stdout.write(JSON.stringify(r) + '\n');
  };
  const ticker = setInterval(() => flush(), 500);
  const stop = () => { stopping = true; };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  const deadline = setTimeout(stop, spec.deadlineMs);
  const h1agents = new Map<string, Agent>();
  const loops = spec.targets.map(async (t) => {
    ok[t.key] ??= 0;
    const h2 = t.kind === 'h2' ? new H2Target(t) : null;
    let agent: Agent | false = false;
    if (t.kind === 'h1') {
      agent = new Agent({ keepAlive: true, maxSockets: 2 });
      h1agents.set(t.key, agent);
    }
    while (!stopping) {
      const t0 = Date.now();
      try {
        if (t.kind === 'tcp') await tcpOnce(t);
        else if (t.kind === 'udp') await udpOnce(t);
        else if (t.kind === 'h2') await h2!.once();
        else await h1Once(t, agent);
        ok[t.key] = (ok[t.key] ?? 0) + 1;
      } catch (e) {
        fails.push({ key: t.key, kind: t.kind, t0, t1: Date.now(), err: (e as Error).message.slice(0, 200) });
      }
      await new Promise((r) => setTimeout(r, spec.pauseMs));
    }
    h2?.close();
  });
  await Promise.all(loops);
  for (const a of h1agents.values()) a.destroy();
  clearInterval(ticker);
  clearTimeout(deadline);
  flush(true);
  process.exit(0);
}

void main();
