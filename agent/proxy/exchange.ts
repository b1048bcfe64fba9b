// The exchange driver: the attempt / retry / backoff / deadline step of one request, shared by both protocols.
// HTTP/1.1 (http1.ts: H1Conn, one per client connection, one exchange at a time) and HTTP/2 (h2exchange.ts:
// H2Exchange, one per client stream) extend it and supply the protocol's part through a few hooks: get an upstream
// for the current attempt and send the request (acquire), let go of what an attempt holds (releaseAttempt: the
// pool's queue, the upstream connection or stream, the per-try timer), and answer the client locally (reply).
//
// The policy (types.ts Exchange) decides; the driver only asks it, in the same order for both protocols:
//   attempt(n) -> an upstream (or a local reply) -> the attempt's outcome (a response head, or a failure before
//   one) -> finish(outcome) -> retryDelay(n, outcome) -> another attempt after the backoff, or the answer.
// Everything is fields of the subclass's object and static functions: nothing is allocated per attempt but the
// policy's own objects and the outcome (no closure, no timer for a request that does not back off).
//
// The route and per-try timeouts start once the request was received whole (Envoy's semantics: a client that uploads
// slowly is not the backend's lateness): at the request head when it has no body, else at its end (bodyReceived()); an
// attempt that starts later (a retry) arms its per-try timeout at its start. While the body is still coming, the
// client's silence is what is watched: no body bytes for the connection's idle timeout (clientIdleTimeoutMs) and
// the request is answered 408 (or its response cut), as Envoy's stream_idle_timeout.
import { failureReply, ROUTE_TIMEOUT_REPLY } from './engine.js';
import type { Attempt, Exchange, Headers, LocalReply, Outcome, RequestHead } from './types.js';

const UPLOAD_TIMEOUT_REPLY: LocalReply = Object.freeze({
  status: 408, headers: Object.freeze({ 'x-sockmesh-error': 'request-body-timeout' }) as Headers, body: 'request body not received in time\n',
});

// ExchangeDriver.bits
const D_REPLAYABLE = 1;
const D_BODY_DONE = 2;
const D_RES_STARTED = 4;
/** the first bit a subclass may use */
export const D_FREE = 8;

export abstract class ExchangeDriver {
  /** the policy's exchange (null: none under way) */
  protected ex: Exchange | null = null;
  protected head: RequestHead | null = null;
  /** the current attempt's number (1 = the first try) */
  protected n = 0;
  /** the attempt waiting for its outcome (null between attempts and after the response head) */
  protected attempt: Attempt | null = null;
  /**
   * The yes/no state as bits of one field (D_* here; a subclass may use the bits from D_FREE up for its own): an
   * HTTP/2 exchange is one object per request, and each field is 8 bytes of it.
   */
  protected bits = D_REPLAYABLE | D_BODY_DONE;
  /** the request body is kept whole (within the exchange's bufferLimitBytes) and may be sent again */
  protected get replayable(): boolean { return (this.bits & D_REPLAYABLE) !== 0; }
  protected set replayable(v: boolean) { this.bits = v ? this.bits | D_REPLAYABLE : this.bits & ~D_REPLAYABLE; }
  /** the request body was received whole */
  protected get bodyDone(): boolean { return (this.bits & D_BODY_DONE) !== 0; }
  protected set bodyDone(v: boolean) { this.bits = v ? this.bits | D_BODY_DONE : this.bits & ~D_BODY_DONE; }
  /** a response (passed on or local) was begun: the client can no longer be given another answer */
  protected get resStarted(): boolean { return (this.bits & D_RES_STARTED) !== 0; }
  protected set resStarted(v: boolean) { this.bits = v ? this.bits | D_RES_STARTED : this.bits & ~D_RES_STARTED; }
  /** status given to the client */
  protected resStatus = 0;
  protected grpcStatus: number | undefined = undefined;
  /** the backoff before the next attempt */
  protected retryTimer: NodeJS.Timeout | null = null;

  /** the exchange can go no further (connection dead, stream done) */
  protected abstract get stopped(): boolean;
  /** an attempt starts: arm its per-try timeout when ms > 0 (0 while the request body is still coming) */
  protected abstract startTry(perTryTimeoutMs: number): void;
  /** the request was received whole while an attempt waits for its response head: arm its per-try timeout */
  protected abstract armTry(perTryTimeoutMs: number): void;
  /** arm the route's timeout (from now) */
  protected abstract armRoute(timeoutMs: number): void;
  /** get an upstream for this.attempt and send the request (or fail the attempt) */
  protected abstract acquire(): void;
  /** let go of what the current attempt holds: its per-try timer, its place in a pool's queue, its upstream */
  protected abstract releaseAttempt(): void;
  /** answer the client with a reply made here, and end the exchange */
  protected abstract reply(r: LocalReply): void;
  /** a response under way cannot be finished: cut the client (connection or stream) */
  protected abstract abortClient(): void;
  /** a bug below threw: drop everything, the process lives on */
  abstract fatal(e: unknown): void;

  /** the first attempt of a new exchange (this.ex set): the route's timeout starts now if the request is whole */
  protected firstAttempt(): void {
    const ms = this.ex!.route.timeoutMs;
    if (this.bodyDone && ms > 0) this.armRoute(ms);
    this.nextAttempt();
  }

  /** the next attempt: the policy picks an upstream (or answers), the protocol gets it and sends the request */
  protected nextAttempt(): void {
    const ex = this.ex;
    if (ex === null || this.stopped) return;
    const a = ex.attempt(++this.n);
    if ('status' in a) { this.reply(a); return; }
    this.attempt = a;
    this.startTry(this.bodyDone ? ex.route.perTryTimeoutMs : 0);
    this.acquire();
  }

  /** the request body was received whole: the route's timeout, and the waiting attempt's per-try one, start now */
  protected bodyReceived(): void {
    this.bodyDone = true;
    const ex = this.ex;
    if (ex === null || this.stopped) return;
    const r = ex.route;
    if (r.timeoutMs > 0) this.armRoute(r.timeoutMs);
    if (this.attempt !== null && r.perTryTimeoutMs > 0) this.armTry(r.perTryTimeoutMs);
  }

  /** the client sent no request body bytes for its idle timeout: 408 before the response head, the client cut after it */
  protected uploadStalled(): void {
    if (this.ex === null || this.stopped || this.bodyDone) return;
    if (this.resStarted) { this.abortClient(); return; }
    this.abortAttempt({ kind: 'cancelled' });
    this.reply(UPLOAD_TIMEOUT_REPLY);
  }

  /**
   * A response head arrived for the current attempt: its outcome goes to the policy, which may retry it. true: it
   * is retried (the attempt's upstream is let go, the caller drops the response); false: it is the answer.
   */
  protected responseHead(status: number, grpcStatus: number | undefined): boolean {
    const outcome: Outcome = grpcStatus === undefined ? { kind: 'response', status } : { kind: 'response', status, grpcStatus };
    const a = this.attempt!;
    this.attempt = null;
    a.finish(outcome);
    const delay = this.ex!.retryDelay(this.n, outcome, this.replayable);
    // (a body that was not kept whole is never replayed, whatever the policy says)
    if (delay !== null && (this.replayable || !this.head!.hasBody)) {
      this.releaseAttempt();
      this.scheduleRetry(delay);
      return true;
    }
    this.grpcStatus = grpcStatus;
    return false;
  }

  /** the current attempt failed before a response head: retried, or answered with what the failure was */
  protected attemptFailed(o: Outcome): void {
    const ex = this.ex;
    if (this.attempt === null || ex === null) return;
    this.abortAttempt(o);
    const delay = ex.retryDelay(this.n, o, this.replayable);
    if (delay === null || (!this.replayable && this.head!.hasBody)) this.reply(failureReply(o));
    else this.scheduleRetry(delay);
  }

  /** the per-try timeout fired before the response head */
  protected tryTimedOut(): void {
    this.attemptFailed({ kind: 'timeout', requestComplete: this.bodyDone });
  }

  /** the route's timeout is over: 504 before the response head, the client cut after it */
  protected routeTimedOut(): void {
    if (this.ex === null || this.stopped) return;
    if (this.resStarted) { this.abortClient(); return; }
    this.abortAttempt({ kind: 'timeout', requestComplete: this.bodyDone });
    this.reply(ROUTE_TIMEOUT_REPLY);
  }

  /** stop the current attempt (backoff, pool queue, upstream) and finish it with o */
  protected abortAttempt(o: Outcome): void {
    if (this.retryTimer !== null) { clearTimeout(this.retryTimer); this.retryTimer = null; }
    this.releaseAttempt();
    const a = this.attempt;
    if (a !== null) { this.attempt = null; a.finish(o); }
  }

  /** the client went away: the attempt under way, if any, is finished as not the upstream's doing */
  protected cancelAttempt(): void {
    const a = this.attempt;
    if (a !== null) { this.attempt = null; a.finish({ kind: 'cancelled' }); }
  }

  private scheduleRetry(delay: number): void {
    if (delay > 0) this.retryTimer = setTimeout(ExchangeDriver.retryNow, delay, this);
    else this.nextAttempt();
  }

  private static retryNow(d: ExchangeDriver): void {
    d.retryTimer = null;
    try { d.nextAttempt(); } catch (e) { d.fatal(e); }
  }
}
