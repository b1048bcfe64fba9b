// The admin API as a client reaches it: raw bytes on its unix socket, read by node:http, routed by AdminServer
// (agent/admin/server.ts) to handlers - the monitor stream's real query parser (observe/filter.ts), and handlers that
// answer, refuse (AdminError), fail (500) and return bigints. Crashes: anything thrown out of the server (an
// uncaught exception), a reply that is not HTTP, a JSON reply whose body does not parse. Invariant: an accepted monitor
// query, written back out by meshctl's monitorQueryString, parses to the same query.
import { connect } from 'node:net';
import { mkdtempSync } from 'node:fs';
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
  sock = join(mkdtempSync(join(tmpdir(), 'sockmesh-fuzz-admin-')), 'admin.sock');
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
}

export function run(data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = connect(sock);
    const got: Buffer[] = [];
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      c.destroy();
      try {
        if (problem) { const p = problem; problem = undefined; throw p; }
        check(Buffer.concat(got).toString('latin1'));
        resolve();
      } catch (e) { reject(e); }
    };
    // a stream stays open: what came within this long is the answer
    const timer = setTimeout(finish, 50);
    c.on('data', (d: Buffer) => { got.push(d); if (/x-ndjson[\s\S]*\r\n\r\n[\s\S]*\n/.test(Buffer.concat(got).toString('latin1'))) finish(); });
    c.on('error', () => finish());
    c.on('close', () => finish());
    c.end(data);
  });
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
