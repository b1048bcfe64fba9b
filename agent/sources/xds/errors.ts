// What goes wrong in a response: a resource that cannot be used (named with its field), and NACK reasons bounded in
// size however many resources failed.

/** A resource that cannot be used: the message names the resource and the field. */
export class XdsResourceError extends Error {
  override name = 'XdsResourceError';
}

export function fail(what: string, field: string, message: string): never {
  throw new XdsResourceError(`${what}: ${field}: ${message}`);
}

// The bounds of a NACK reason (20 errors, 4 KiB) are the model's: the file source bounds a rejected config the same way.
export { capReason, joinErrors, MAX_REASON_CHARS, MAX_REASON_ERRORS } from '../../model/reasons.js';
