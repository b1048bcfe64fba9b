// HTTP load generators of the l7 bench: wrk (HTTP/1.1 keep-alive) and h2load (HTTP/2 cleartext, prior
// knowledge), their command lines and the parsers of what they print. Latencies are microseconds.

export interface HttpRun {
  /** completed requests per second over the measured interval */
  rps: number;
  /** microseconds */
  p50: number;
  p99: number;
  /** microseconds; undefined when the tool's output did not carry it (wrk without P999_LUA) */
  p999?: number;
  /** requests completed (any status; h2load: done) */
  requests: number;
  /** requests answered with something other than 2xx/3xx, plus transport errors and timeouts */
  errors: number;
  /** what went wrong, when errors > 0 (for the log) */
  errorDetail?: string;
}

/**
 * wrk's `--latency` stops at the 99th percentile; this script (wrk -s) prints the 99.9th from the same
 * histogram (wrk keeps latencies in µs), which parseWrk reads.
 */
export const P999_LUA = `done = function(summary, latency, requests)
  io.write(string.format("Latency p99.9: %dus\\n", latency:percentile(99.9)))
end
`;

/** @param p999Script a file holding P999_LUA (the run then reports p99.9) */
export function wrkArgv(url: string, connections: number, seconds: number, p999Script?: string): string[] {
  // One thread: the client gets one CPU in every scenario (see the pinning in l7.ts).
  return ['wrk', '-t1', `-c${connections}`, `-d${seconds}s`, '--latency', ...(p999Script ? ['-s', p999Script] : []), url];
}

/**
 * h2load with `connections` in-flight requests as wrk has: connections/8 HTTP/2 connections with 8
 * concurrent streams each (so both protocols put the same number of requests in flight).
 * --log-file: h2load prints only min/mean/max/sd of request time, so percentiles come from its
 * per-request log.
 */
export function h2loadArgv(url: string, connections: number, seconds: number, logFile: string): string[] {
  const { clients, streams } = h2Shape(connections);
  return ['h2load', '-t1', '-c', String(clients), '-m', String(streams), '-D', String(seconds), `--log-file=${logFile}`, url];
}

export function h2Shape(connections: number): { clients: number; streams: number } {
  const streams = Math.min(8, connections);
  return { clients: Math.max(1, Math.floor(connections / streams)), streams };
}

const UNIT_US: Record<string, number> = { us: 1, ms: 1000, s: 1_000_000, m: 60_000_000, h: 3_600_000_000 };

/** '70.00us', '1.23ms', '2.01s' -> microseconds. */
export function wrkDuration(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new Error(`wrk: cannot read the duration '${text}'`);
  return Math.round(Number(m[1]) * UNIT_US[m[2]!]! * 100) / 100; // no 1579.9999 from 1.58ms
}

function match(text: string, re: RegExp, what: string, tool: string): RegExpExecArray {
  const m = re.exec(text);
  if (!m) throw new Error(`${tool} output has no ${what}: ${text.trim().split('\n').slice(-3).join(' | ').slice(0, 300)}`);
  return m;
}

/** Parse `wrk --latency` output (stdout). */
export function parseWrk(output: string): HttpRun {
  const rps = Number(match(output, /^Requests\/sec:\s+([\d.]+)/m, 'Requests/sec', 'wrk')[1]);
  const requests = Number(match(output, /^\s*(\d+) requests in /m, 'request count', 'wrk')[1]);
  const p50 = wrkDuration(match(output, /^\s+50%\s+(\S+)/m, '50% latency (run with --latency)', 'wrk')[1]!);
  const p99 = wrkDuration(match(output, /^\s+99%\s+(\S+)/m, '99% latency (run with --latency)', 'wrk')[1]!);
  const p999m = /^Latency p99\.9: (\d+)us$/m.exec(output);
  let errors = 0;
  const details: string[] = [];
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  if (sock) {
    const n = sock.slice(1, 5).reduce((s, x) => s + Number(x), 0);
    if (n > 0) {
      errors += n;
      details.push(`socket errors: connect ${sock[1]}, read ${sock[2]}, write ${sock[3]}, timeout ${sock[4]}`);
    }
  }
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(output);
  if (non2xx && Number(non2xx[1]) > 0) {
    errors += Number(non2xx[1]);
    details.push(`${non2xx[1]} non-2xx/3xx responses`);
  }
  if (requests === 0 && errors === 0) throw new Error('wrk completed no requests');
  return {
    rps, p50, p99, ...(p999m ? { p999: Number(p999m[1]) } : {}), requests, errors, ...(details.length ? { errorDetail: details.join('; ') } : {}),
  };
}

export interface H2Summary {
  rps: number;
  requests: number;
  succeeded: number;
  failed: number;
  errored: number;
  timeout: number;
  status2xx: number;
}

/** Parse the summary h2load prints (stdout). */
export function parseH2loadSummary(output: string): H2Summary {
  const rps = Number(match(output, /^finished in [\d.]+\w*, ([\d.]+) req\/s/m, 'req/s', 'h2load')[1]);
  const r = match(
    output,
    /^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/m,
    'request counts', 'h2load',
  );
  const st = match(output, /^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/m, 'status codes', 'h2load');
  return {
    rps,
    requests: Number(r[3]),
    succeeded: Number(r[4]),
    failed: Number(r[5]),
    errored: Number(r[6]),
    timeout: Number(r[7]),
    status2xx: Number(st[1]) + Number(st[2]),
  };
}

/**
 * Percentiles of request time from an h2load --log-file: one line per request,
 * `<start µs since epoch>\t<status>\t<duration µs>`. Only answered requests count (status > 0).
 * A histogram by microsecond, not a sort: a 5 s run logs over a million lines. No answered request: 0, count 0.
 */
export function h2loadLogPercentiles(log: string): { p50: number; p99: number; p999: number; count: number } {
  const counts = new Map<number, number>();
  let n = 0;
  let start = 0;
  for (;;) {
    let end = log.indexOf('\n', start);
    if (end < 0) end = log.length;
    if (end > start) {
      const t1 = log.indexOf('\t', start);
      const t2 = t1 < 0 ? -1 : log.indexOf('\t', t1 + 1);
      if (t2 < 0 || t2 > end) throw new Error(`h2load log: cannot read line '${log.slice(start, Math.min(end, start + 80))}'`);
      const status = Number(log.slice(t1 + 1, t2));
      const us = Number(log.slice(t2 + 1, end));
      if (!Number.isFinite(us) || !Number.isFinite(status)) {
        throw new Error(`h2load log: cannot read line '${log.slice(start, Math.min(end, start + 80))}'`);
      }
      if (status > 0) {
        counts.set(us, (counts.get(us) ?? 0) + 1);
        n++;
      }
    }
    if (end >= log.length) break;
    start = end + 1;
  }
  if (n === 0) return { p50: 0, p99: 0, p999: 0, count: 0 };
  const keys = [...counts.keys()].sort((a, b) => a - b);
  const at = (p: number): number => {
    // nearest rank; the epsilon keeps float error from moving it (99.9 / 100 * 1000 = 999.0000000000001)
    const rank = Math.max(1, Math.ceil((p / 100) * n - 1e-9));
    let seen = 0;
    for (const k of keys) {
      seen += counts.get(k)!;
      if (seen >= rank) return k;
    }
    return keys[keys.length - 1]!;
  };
  return { p50: at(50), p99: at(99), p999: at(99.9), count: n };
}

/** h2load's summary and its request log together. */
export function parseH2load(output: string, log: string): HttpRun {
  const s = parseH2loadSummary(output);
  // A refused connection is not an error to h2load: it reports 0 requests and exits 0.
  if (s.requests === 0) throw new Error('h2load completed no requests (could it connect?)');
  const pct = h2loadLogPercentiles(log);
  if (pct.count === 0 && s.failed === 0) throw new Error('h2load log: no answered requests');
  // h2load's 'failed' already includes non-2xx answers, 'errored' and timeouts; the status count is the cross-check.
  const notOk = s.requests - s.status2xx;
  const details: string[] = [];
  if (notOk > 0) details.push(`${notOk} of ${s.requests} not 2xx/3xx`);
  if (s.errored > 0) details.push(`${s.errored} errored`);
  if (s.timeout > 0) details.push(`${s.timeout} timed out`);
  if (s.failed > 0 && details.length === 0) details.push(`${s.failed} failed`);
  return {
    rps: s.rps, p50: pct.p50, p99: pct.p99, p999: pct.p999, requests: s.requests, errors: Math.max(s.failed, notOk),
    ...(details.length ? { errorDetail: details.join('; ') } : {}),
  };
}
