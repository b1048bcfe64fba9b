// The admin API as a client reaches it: raw bytes on its unix socket, read by node:http, routed by AdminServer
// (agent/admin/server.ts) to handlers - the monitor stream's real query parser (observe/filter.ts), and handlers that
// answer, refuse (AdminError), fail (500) and return bigints. Crashes: anything thrown out of the server (an
// uncaught exception), a reply that is not HTTP, a JSON reply whose body does not parse. Invariant: an accepted monitor
// query, written back out by meshctl's monitorQueryString, parses to the same query.
//
// Two transports into the one server: every input goes in over an in-memory socket pair handed to the server's
// node:http as a connection (the same parser and routing; a unix-socket connect and close per input were four
// fifths of this target's time: 3,600 -> 14,000 executions per CPU second), and every input that reaches new coverage
// is sent again over the real unix socket (confirm(), run by the engine), with the same checks.
import { connect } from 'node:net';
import { Duplex } from 'node:stream';
import type { Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { AdminError, AdminServer } from '../../../agent/admin/server.js';
import { monitorQueryString, parseMonitorQuery } from '../../../agent/observe/filter.js';
import { InvariantBroken, invariant } from './common.js';

export const dict = [
  'GET ', 'POST ', ' HTTP/1.1\r\n', 'Host: admin\r\n', '\r\n', '/v1/monitor?', '/v1/status', '/v1/backends?service=', '/v1/routes?service=',
  '/v1/boom', 'service=', 'pod=', 'cgroup=', 'type=', 'verdict=', 'rate=', 'summaryMs=', '&', '%', '%00', '%zz', '+', ',', 'flow', 'l7',
  'allow', 'deny', 'Connection: close\r\n', 'Content-Length: 3\r\n', 'Transfer-Encoding: chunked\r\n', '1e400', '-0', 'NaN', 'Infinity',
];

let sock = '';
let problem: Error | undefined;

export async function setup(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-fuzz-admin-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  sock = join(dir, 'admin.sock');
  process.on('uncaughtException', (e) => { problem ??= e; });
  const server = new AdminServer(sock, {
    '/v1/status': () => ({ ok: true, big: 1n << 70n }),
    '/v1/backends': (q) => { const s = q.get('service'); if (s !== null && s !== 'web') throw new AdminError(404, `no service ${s}`); return { service: s }; },
    '/v1/routes': async (q) => ({ routes: q.getAll('service') }),
    '/v1/boom': () => { throw new Error('a handler failed'); },
  }, pino({ level: 'silent' }), {
    '/v1/monitor': (q, out) => {
      const query = parseMonitorQuery(q); // throws on what it refuses: a 400
      const again = parseMonitorQuery(new URLSearchParams(monitorQueryString(query)));
      if (JSON.stringify(again) !== JSON.stringify(query)) problem ??= new InvariantBroken(`monitor query does not survive meshctl's writing it out\n${JSON.stringify(query)}\n${JSON.stringify(again)}`);
      out.write(`${JSON.stringify({ query })}\n`);
      return () => {};
    },
  });
  await server.start();
  http = (server as unknown as { server: Server }).server;
}

let http: Server;

/**
 * One end of an in-memory connection. What one end writes the other reads; ending or destroying one ends the
 * other's reading, as a peer's FIN or close does (node's duplexPair does not pass a destroy on: a connection the
 * server destroyed never closed for the client).
 */
class MemSocket extends Duplex {
  peer!: MemSocket;
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void { this.peer.push(chunk); cb(); }
  override _final(cb: (e?: Error | null) => void): void { this.peer.push(null); cb(); }
  override _destroy(e: Error | null, cb: (e?: Error | null) => void): void {
    if (!this.peer.readableEnded) this.peer.push(null);
    if (!this.peer.writableFinished) this.peer.destroy();
    cb(e);
  }
}

function memPair(): [MemSocket, MemSocket] {
  const a = new MemSocket(), b = new MemSocket();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/**
 * Send one request's bytes, half-close, and collect the reply (what came within 50 ms, for a stream left open).
 * The end comes a turn after the bytes, as a socket's does (its EOF is a later read than its data): at once, node:http
 * ended the connection before a handler that answers a microtask later had written.
 */
function exchange(c: Duplex, data: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      c.destroy();
      try {
        if (problem) { const p = problem; problem = undefined; throw p; }
        const reply = Buffer.concat(got).toString('latin1');
        check(reply);
        resolve(reply);
      } catch (e) { reject(e); }
    };
    const timer = setTimeout(finish, 50);
    // a stream's answer is whole with its first line (a JSON object: not the chunk size's line before it)
    c.on('data', (d: Buffer) => { got.push(d); if (/x-ndjson[\s\S]*\r\n\r\n[\s\S]*\}\n/.test(Buffer.concat(got).toString('latin1'))) finish(); });
    c.on('error', () => finish());
    c.on('close', () => finish());
    c.write(data);
    setImmediate(() => c.end());
  });
}

export function run(data: Buffer): Promise<string> {
  const [client, server] = memPair();
  http.emit('connection', server);
  return exchange(client, data);
}

/**
 * The same input over the real unix socket, with the same checks. (Not compared byte for byte with the in-memory
 * reply: node:http parses a net.Socket from its handle in C++ and any other stream from 'data' events, and where a
 * pipelined stream's replies stop at the EOF differs between the two - node's timing, not our code.)
 */
export async function confirm(data: Buffer): Promise<void> {
  await exchange(connect(sock), data);
}

function check(reply: string): void {
  if (reply === '') return; // node:http closed without answering
  for (const res of reply.split(/(?=HTTP\/1\.1 \d{3} )/)) {
    invariant(/^HTTP\/1\.1 \d{3} /.test(res), () => `not an HTTP reply: ${JSON.stringify(reply.slice(0, 80))}`);
    const [head, body = ''] = res.split('\r\n\r\n', 2) as [string, string?];
    if (/content-type: application\/json/i.test(head)) {
      let text = body;
      if (/transfer-encoding: chunked/i.test(head)) {
        // node:http chunks a body whose length it was not told
        text = '';
        let rest = body;
        for (;;) {
          const m = /^([0-9a-f]+)\r\n/i.exec(rest);
          if (!m) break;
          const n = parseInt(m[1]!, 16);
          if (n === 0) break;
          text += rest.substr(m[0].length, n);
          rest = rest.slice(m[0].length + n + 2);
        }
      }
      try { JSON.parse(Buffer.from(text, 'latin1').toString()); } catch { throw new InvariantBroken(`a JSON reply that does not parse: ${JSON.stringify(text.slice(0, 80))}`); }
    }
  }
}
