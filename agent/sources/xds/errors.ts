// What goes wrong in a response: a resource that cannot be used (named with its field), and NACK reasons bounded in
// size however many resources failed.

/** A resource that cannot be used: the message names the resource and the field. */
export class XdsResourceError extends Error {
  override name = 'XdsResourceError';
}

export function fail(what: string, field: string, message: string): never {
  throw new XdsResourceError(`${what}: ${field}: ${message}`);
}

/** Most errors a NACK (and status()) lists; the rest are counted. */
export const MAX_REASON_ERRORS = 20;
/** Most characters of a NACK reason: a response with 100k bad resources must not make a 10 MB NACK. */
export const MAX_REASON_CHARS = 4096;

/** Errors as one NACK reason: the first MAX_REASON_ERRORS, "and K more", at most MAX_REASON_CHARS. */
export function joinErrors(errors: readonly string[]): string {
  let s = errors.slice(0, MAX_REASON_ERRORS).join('; ');
  if (errors.length > MAX_REASON_ERRORS) s += `; and ${errors.length - MAX_REASON_ERRORS} more`;
  return capReason(s);
}

export function capReason(s: string): string {
  return s.length <= MAX_REASON_CHARS ? s : `${s.slice(0, MAX_REASON_CHARS - 20)}... (${s.length} chars)`;
}
