// Bounds on what a rejected config says about itself. A config error ends up in a log line, in `meshctl status`
// (lastConfigError) and, for xDS, in a NACK on the wire: none of them may grow with the input. A 50 MiB junk file once
// made a 130 MB log line (a YAML syntax error quotes the rest of the file).

/** Most errors a reason (a NACK, lastConfigError, a log line) lists; the rest are counted. */
export const MAX_REASON_ERRORS = 20;
/** Most characters of a reason: a response with 100k bad resources must not make a 10 MB NACK or log line. */
export const MAX_REASON_CHARS = 4096;
/** Most characters of the input one error message quotes. */
export const MAX_QUOTED_CHARS = 100;

/** Errors as one reason: the first MAX_REASON_ERRORS, "and K more", at most MAX_REASON_CHARS. */
export function joinErrors(errors: readonly string[], separator = '; '): string {
  let s = errors.slice(0, MAX_REASON_ERRORS).join(separator);
  if (errors.length > MAX_REASON_ERRORS) s += `${separator}and ${errors.length - MAX_REASON_ERRORS} more`;
  return capReason(s);
}

export function capReason(s: string): string {
  return s.length <= MAX_REASON_CHARS ? s : `${s.slice(0, MAX_REASON_CHARS - 20)}... (${s.length} chars)`;
}

/**
 * A parser's message with the input it quotes cut to MAX_QUOTED_CHARS: the yaml library writes
 * `Unexpected scalar token in YAML stream: "<the token>"`, and a token of junk can be the rest of the file.
 */
export function clipQuoted(message: string): string {
  const q = message.indexOf('"');
  const limit = q < 0 ? 2 * MAX_QUOTED_CHARS : q + 1 + MAX_QUOTED_CHARS;
  if (message.length <= limit + 40) return message;
  return `${message.slice(0, limit)}..." (${message.length} chars)`;
}
