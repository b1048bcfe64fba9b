// What an attempt's outcome says about the backend that gave it, decided in one place for everything that asks:
// the retry's choice of backend (decide.ts: a retry avoids a backend that failed), outlier detection (outlier.ts:
// consecutive 5xx, consecutive gateway errors) and the retry decision (retry.ts: what 5xx and gateway-error cover).
//
// A gRPC call is answered HTTP 200 whatever happened; its real outcome is its grpc-status. As Envoy's router does
// for outlier detection, a response with a grpc-status (a trailers-only answer: the status is in the head) is
// judged by that status mapped to HTTP (Envoy's Grpc::Utility::grpcToHttpStatus): UNAVAILABLE is a 503 (a gateway
// error), DEADLINE_EXCEEDED a 504 (a gateway error), INTERNAL, UNKNOWN and DATA_LOSS a 500, UNIMPLEMENTED a 501
// (all failures of the backend); every other code (OK, CANCELLED, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
// RESOURCE_EXHAUSTED, ...) maps below 500: the backend did its job, the caller's request was refused. An HTTP 5xx
// is a failure whatever grpc-status it carries. (A grpc-status that comes in trailers, after the response began, is
// not an attempt's outcome: the 200 head was, and the answer was already on its way to the client.)
import type { Outcome } from './types.js';

/** says nothing about the backend: the client went away, or no connection could be had (cancelled, overflow) */
export const NOT_BACKEND = 0;
/** the backend answered, and not with a failure (below 500, gRPC status included) */
export const ANSWERED = 1;
/** a 5xx that is not a gateway error (500, 501, 505, ...; gRPC INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED) */
export const FAILED = 2;
/** a gateway error: 502, 503, 504 (gRPC UNAVAILABLE, DEADLINE_EXCEEDED), or no response at all (connect failure,
 *  reset, per-try timeout: what a proxy in front of the backend would have answered 502/503/504) */
export const FAILED_GATEWAY = 3;
export type Verdict = typeof NOT_BACKEND | typeof ANSWERED | typeof FAILED | typeof FAILED_GATEWAY;

/** gRPC status -> HTTP status, as Envoy maps them (grpc/doc/http-grpc-status-mapping.md the other way round). */
export function httpStatusForGrpc(code: number): number {
  switch (code) {
    case 0: return 200; // OK
    case 1: return 499; // CANCELLED
    case 3: case 9: case 11: return 400; // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
    case 4: return 504; // DEADLINE_EXCEEDED
    case 5: return 404; // NOT_FOUND
    case 6: case 10: return 409; // ALREADY_EXISTS, ABORTED
    case 7: return 403; // PERMISSION_DENIED
    case 8: return 429; // RESOURCE_EXHAUSTED
    case 12: return 501; // UNIMPLEMENTED
    case 14: return 503; // UNAVAILABLE
    case 16: return 401; // UNAUTHENTICATED
    default: return 500; // UNKNOWN (2), INTERNAL (13), DATA_LOSS (15), and codes that do not exist
  }
}

/** The status an answer is judged by: the HTTP status, or for a 2xx-4xx answer with a grpc-status, that status mapped. */
export function judgedStatus(status: number, grpcStatus: number | undefined): number {
  return grpcStatus === undefined || status >= 500 ? status : httpStatusForGrpc(grpcStatus);
}

function statusVerdict(status: number): Verdict {
  if (status < 500 || status > 599) return ANSWERED;
  return status === 502 || status === 503 || status === 504 ? FAILED_GATEWAY : FAILED;
}

/** The verdict on an attempt's outcome (no allocation: a small integer). */
export function verdict(o: Outcome): Verdict {
  switch (o.kind) {
    case 'response':
      return statusVerdict(judgedStatus(o.status, o.grpcStatus));
    case 'connect-failure':
    case 'reset':
    case 'timeout':
      return FAILED_GATEWAY;
    default:
      return NOT_BACKEND;
  }
}

/** the backend failed this attempt (a retry goes elsewhere when it can; outlier detection counts it) */
export function isFailure(v: Verdict): boolean {
  return v >= FAILED;
}
