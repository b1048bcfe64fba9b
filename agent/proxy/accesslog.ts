// The access log: one pino line per request, sampled per service (http.accessLogSample, 0..1), so
// that a busy service can be logged at 1% and a quiet one in full. The sampling decision is one
// random() per request; nothing is built for requests that are not logged.
import type { Logger } from '../observe/log.js';

export interface AccessEntry {
  service: string;
  route: string;
  method: string;
  path: string;
  /** status sent to the client; 0 = the client went away first */
  status: number;
  grpcStatus?: number;
  /** the backend of the last attempt ('' = none reached) */
  backend: string;
  attempts: number;
  durationMs: number;
  /** why the proxy answered by itself (local replies only) */
  reason?: string;
}

export class AccessLog {
  private readonly log: Logger;
  constructor(log: Logger, private readonly random: () => number) {
    this.log = log.child({ component: 'access' });
  }

  /** whether this request is one of the sampled ones */
  sample(rate: number): boolean {
    return rate >= 1 || (rate > 0 && this.random() < rate);
  }

  write(e: AccessEntry): void {
    this.log.info(e, 'request');
  }
}
