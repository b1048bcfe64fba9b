// A steady stream of new connections for kernel tests of outages: a separate Node process, placed in a cgroup the
// test names (a child of the meshed one, so its connect() calls meet the programs), runs one loop per target; each
// iteration is a new TCP connection with one HTTP/1.1 request (Connection: close). Every attempt comes back as a
// record with its times in epoch ms (performance.timeOrigin + now(): comparable with the test process's `now()`).
import './childenv.js'; // first: what this starts runs without tap's instrumentation
import { spawn } from 'node:child_process';

export const now = (): number => performance.timeOrigin + performance.now();

/** One attempt: started t0, connected tc (null: never), finished t1; out = HTTP status or the error code. */
export interface Attempt {
  target: string; t0: number; tc: number | null; t1: number; out: string;
  /** the response carried x-mesh-route (a route of the L7 proxy set it): it went through the proxy */
  mesh?: boolean;
  body?: string;
}

export interface Target { name: string; host: string; port: number }

const CLIENT = `
const net = require('net');
const now = () => performance.timeOrigin + performance.now();
const [targets, timeoutMs] = [JSON.parse(process.argv[1]), Number(process.argv[2])];
let stop = false;
process.on('SIGTERM', () => { stop = true; });
function one(tg) {
  return new Promise((res) => {
    const t0 = now();
    let tc = null, buf = '', done = false;
    const s = net.connect(tg.port, tg.host);
    const fin = (r) => { if (done) return; done = true; clearTimeout(timer); s.destroy(); res({ target: tg.name, t0, tc, t1: now(), ...r }); };
    // a connection accepted by nobody shows as this timeout (or a reset), never as a success
    const timer = setTimeout(() => fin({ out: 'timeout' }), timeoutMs);
    s.on('connect', () => { tc = now(); s.write('GET / HTTP/1.1\\r\\nhost: load\\r\\nconnection: close\\r\\n\\r\\n'); });
    s.on('data', (d) => { buf += d; });
    s.on('end', () => {
      const m = /^HTTP\\/1\\.1 (\\d+)/.exec(buf);
      fin({ out: m ? m[1] : 'bad:' + buf.slice(0, 40), mesh: /\\r\\nx-mesh-route: /i.test(buf), body: buf.split('\\r\\n\\r\\n')[1] });
    });
    s.on('error', (e) => fin({ out: e.code || e.message }));
  });
}
async function loop(tg) {
  while (!stop) {
    process.stdout.write(JSON.stringify(await one(tg)) + '\\n');
    await new Promise((r) => setTimeout(r, 2));
  }
}
Promise.all(targets.map(loop)).then(() => process.exit(0));
`;

export interface ConnLoad {
  /** every attempt so far, in the order they finished */
  readonly attempts: Attempt[];
  /** the attempts of one target that started in [from, to) */
  of(target: string, from?: number, to?: number): Attempt[];
  /** resolves with the ms from `from` to the end of the first attempt on target started then that pred accepts */
  first(target: string, from: number, pred: (a: Attempt) => boolean, timeoutMs?: number): Promise<number>;
  /** let the loops finish their current attempt and exit */
  stop(): Promise<void>;
}

interface Teardown { teardown(fn: () => void | Promise<void>): void }

/** Start the load in the cgroup whose cgroup.procs is given; killed at teardown. */
export function connLoad(t: Teardown, cgroupProcs: string, targets: Target[], timeoutMs = 2000): ConnLoad {
  const proc = spawn('/bin/sh', ['-c', `echo $$ > '${cgroupProcs}' && exec "$0" -e "$1" "$2" "$3"`,
    process.execPath, CLIENT, JSON.stringify(targets), String(timeoutMs)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  t.teardown(async () => { proc.kill('SIGKILL'); await exited; });
  const attempts: Attempt[] = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    const lines = buf.split('\n');
    buf = lines.pop()!;
    for (const l of lines) attempts.push(JSON.parse(l) as Attempt);
  });
  const of = (target: string, from = 0, to = Infinity): Attempt[] => attempts.filter((a) => a.target === target && a.t0 >= from && a.t0 < to);
  return {
    attempts,
    of,
    first: (target, from, pred, ms = 10_000) => new Promise((resolve, reject) => {
      const deadline = setTimeout(() => { clearInterval(iv); reject(new Error(`no matching attempt on ${target} within ${ms} ms`)); }, ms);
      const iv = setInterval(() => {
        const a = of(target, from).find(pred);
        if (a) { clearInterval(iv); clearTimeout(deadline); resolve(a.t1 - from); }
      }, 5);
    }),
    stop: async () => { proc.kill('SIGTERM'); await exited; },
  };
}
