// iperf3 stream throughput: command lines and the parser for its JSON (-J) report.

export interface Stream {
  /** received payload rate, Gbit/s (10^9 bit/s) */
  gbps: number;
  /** bytes received */
  bytes: number;
  seconds: number;
  /** TCP retransmits seen by the sender (0 on loopback unless something is wrong) */
  retransmits: number;
}

export function iperf3ServerArgv(bind: string, port: number): string[] {
  // -1: serve exactly one test, so a forgotten server cannot linger.
  return ['iperf3', '-s', '-1', '-B', bind, '-p', String(port)];
}

export function iperf3ClientArgv(host: string, port: number, seconds: number): string[] {
  return ['iperf3', '-c', host, '-p', String(port), '-t', String(seconds), '-J'];
}

interface Iperf3Json {
  error?: string;
  end?: {
    sum_sent?: { bytes: number; seconds: number; bits_per_second: number; retransmits?: number };
    sum_received?: { bytes: number; seconds: number; bits_per_second: number };
  };
}

/** Parse the client's `-J` report; the receiver's figure is the one that counts. */
export function parseIperf3(json: string): Stream {
  let doc: Iperf3Json;
  try {
    doc = JSON.parse(json) as Iperf3Json;
  } catch (e) {
    throw new Error(`iperf3 output is not JSON: ${(e as Error).message}: ${json.slice(0, 200)}`);
  }
  if (doc.error) throw new Error(`iperf3: ${doc.error}`);
  const rx = doc.end?.sum_received;
  if (!rx || !(rx.bits_per_second > 0)) throw new Error('iperf3 report has no end.sum_received');
  return {
    gbps: rx.bits_per_second / 1e9,
    bytes: rx.bytes,
    seconds: rx.seconds,
    retransmits: doc.end?.sum_sent?.retransmits ?? 0,
  };
}
