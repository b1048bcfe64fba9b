// The regexes of routes and authorization rules run on every request, with patterns from a config or a control
// plane and subjects (paths, header values) from clients. On a backtracking engine one request can stall the
// proxy's only thread: `(a+)+b` against a 30-character path took 10.6 s. V8's linear-time engine (the `l` flag,
// behind --enable-experimental-regexp-engine) matches in time linear in the subject, and refuses at compile time
// what cannot run so (backreferences, lookaround), as RE2, Envoy's safe_regex engine, does. About 1 µs per
// match of a typical path pattern, against 0.25 µs with backtracking: paid only by routes that use a regex.
import { setFlagsFromString } from 'node:v8';

let enabled = false;

/** source anchored to the whole value (as Envoy's safe_regex), on the linear-time engine; throws SyntaxError */
export function linearRegex(source: string): RegExp {
  if (!enabled) {
    // The flag is read when a RegExp is created, so setting it here (once, before the first) is enough.
    setFlagsFromString('--enable-experimental-regexp-engine');
    enabled = true;
  }
  try {
    return new RegExp(`^(?:${source})$`, 'l');
  } catch (e) {
    const msg = (e as Error).message;
    if (msg.includes('linear time')) {
      throw new SyntaxError('needs backtracking (a backreference or lookaround), which sockmesh does not run: ' +
        'its regexes match in linear time, as RE2 (Envoy) does');
    }
    throw e;
  }
}
