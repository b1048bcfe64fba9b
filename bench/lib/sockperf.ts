// sockperf ping-pong: command lines and the parser for its latency report.
// sockperf reports one-way latency, i.e. half the measured round trip, in microseconds.

export interface Latency {
  /** microseconds, one way (RTT/2) */
  p50: number;
  p99: number;
  avg: number;
  min: number;
  max: number;
  observations: number;
  /**
   * replies received over the whole run (its warm-up included: sockperf's "[Total Run]" line), what the processes' CPU
   * over the run is divided by; the observations are the "valid duration" part of them only
   */
  roundTrips?: number;
}

export function sockperfServerArgv(bind: string, port: number): string[] {
  return ['sockperf', 'sr', '--tcp', '-i', bind, '-p', String(port)];
}

export function sockperfClientArgv(host: string, port: number, seconds: number, msgBytes: number): string[] {
  return ['sockperf', 'pp', '--tcp', '-i', host, '-p', String(port), '-t', String(seconds), '-m', String(msgBytes)];
}

// sockperf colours some lines even when not writing to a terminal.
const ANSI = /\x1b\[[0-9;]*m/g;

function num(text: string, re: RegExp, what: string): number {
  const m = re.exec(text);
  if (!m) throw new Error(`sockperf output has no ${what}`);
  return Number(m[1]);
}

/**
 * Parse the summary `sockperf pp` prints at the end. Throws when the run lost, duplicated or
 * reordered messages: on a sockmap path that would mean broken stream ordering, not a slow run.
 */
export function parseSockperf(output: string): Latency {
  const text = output.replace(ANSI, '');
  const dropped = num(text, /# dropped messages = (\d+)/, 'dropped-message count');
  const dup = num(text, /# duplicated messages = (\d+)/, 'duplicated-message count');
  const ooo = num(text, /# out-of-order messages = (\d+)/, 'out-of-order count');
  if (dropped + dup + ooo > 0) {
    throw new Error(`sockperf: ${dropped} dropped, ${dup} duplicated, ${ooo} out-of-order messages`);
  }
  const total = /\[Total Run\][^\n]*ReceivedMessages=(\d+)/.exec(text);
  return {
    p50: num(text, /percentile 50\.000 =\s*([\d.]+)/, 'p50'),
    p99: num(text, /percentile 99\.000 =\s*([\d.]+)/, 'p99'),
    avg: num(text, /avg-latency=([\d.]+)/, 'avg-latency'),
    min: num(text, /<MIN> observation =\s*([\d.]+)/, 'min'),
    max: num(text, /<MAX> observation =\s*([\d.]+)/, 'max'),
    observations: num(text, /Total (\d+) observations/, 'observation count'),
    ...(total ? { roundTrips: Number(total[1]) } : {}),
  };
}
