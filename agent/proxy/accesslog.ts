// The access log: one pino line per request, sampled per service (http.accessLogSample, 0..1), so
// that a busy service can be logged at 1% and a quiet one in full. The sampling decision is one
// random() per request; nothing is built for requests that are not logged.
// The live monitor taps the same entries (every request while a reader is attached, whatever the sample): sample()
// says yes for either, write() logs only what the log's own sample chose and hands every entry to the tap.
import type { Logger } from '../observe/log.js';
import type { RequestTap } from '../admin/protocol.js';
import { requestEvent, type RequestOutcome } from './reports.js';

/** one access log line */
export type AccessEntry = RequestOutcome;

export class AccessLog {
  private readonly log: Logger;
  /** the decision of the last sample(): write() follows it (the two are called back to back) */
  private logNext = false;
  constructor(log: Logger, private readonly random: () => number, private readonly tap?: RequestTap) {
    this.log = log.child({ component: 'access' });
  }

  /** whether this request is one of the sampled ones, or a monitor is reading: then build the entry for write() */
  sample(rate: number): boolean {
    this.logNext = rate >= 1 || (rate > 0 && this.random() < rate);
    return this.logNext || (this.tap?.active ?? false);
  }

  write(e: AccessEntry): void {
    if (this.logNext) this.log.info(e, 'request');
    if (this.tap?.active) this.tap.request(requestEvent(e));
  }
}
