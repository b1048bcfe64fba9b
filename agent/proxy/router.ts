// Request matching: string matchers, header matchers and the route table of one service, compiled
// once per model update (regexes included) so that matching a request allocates nothing beyond
// what the request itself forces (a query string to cut off, a path that needs normalizing).
import type { HeaderMatch, Route, RouteMatch, StringMatch } from '../model/l7.js';
import { linearRegex } from '../model/regex.js';
import type { Headers, RequestHead } from './types.js';

export type StringMatcher = (value: string) => boolean;

/**
 * A matcher for one StringMatch. Regexes are anchored to the whole value (as Envoy's safe_regex):
 * `a.c` matches 'abc', not 'xabcx'. A bad regex throws naming `where`.
 */
export function compileStringMatch(m: StringMatch, where: string): StringMatcher {
  if ('exact' in m) {
    const want = m.exact;
    return (v) => v === want;
  }
  if ('prefix' in m) {
    const want = m.prefix;
    return (v) => v.startsWith(want);
  }
  let re: RegExp;
  try {
    re = linearRegex(m.regex);
  } catch (e) {
    throw new Error(`${where}: invalid regex ${JSON.stringify(m.regex)}: ${(e as Error).message}`);
  }
  return (v) => re.test(v);
}

export type HeadersMatcher = (head: RequestHead) => boolean;

/**
 * A repeated header's one value, as Envoy reads it for route and RBAC matching (getAllOfHeaderAsString): its field
 * values joined with ',' in the order received; cookie's with '; ' (RFC 9113 8.2.3, the one field whose values an
 * HTTP/2 client may split and whose own separator is not ','). Only requests that repeat a header pay for the join.
 */
export function joinedValue(name: string, v: readonly string[]): string {
  return v.join(name === 'cookie' ? '; ' : ',');
}

/**
 * How a condition reads a repeated header. 'joined' (routes, allow rules): on the joined value only, so that a client
 * cannot meet a condition by adding a copy of the header that the backend never reads (most read the first, or the
 * joined list). 'strict' (deny rules): the condition holds when the joined value OR any single value meets it (for an
 * inverted one: unless the joined value and every single value meet its value), so that repeating a header cannot
 * sidestep a deny either: an exact `x-user: admin` is denied as `x-user: admin` twice ("admin,admin") too.
 */
export type RepeatedHeaders = 'joined' | 'strict';

/**
 * One header condition (see RepeatedHeaders for a repeated header). `host` is the request's authority (h1 Host, h2
 * :authority): the engines keep it out of head.headers, so read from there a match on it never held.
 */
function compileHeaderMatch(h: HeaderMatch, where: string, repeated: RepeatedHeaders): HeadersMatcher {
  const name = h.name.toLowerCase();
  const value = h.value ? compileStringMatch(h.value, `${where}.value`) : undefined;
  const invert = h.invert === true;
  const isHost = name === 'host';
  const strict = repeated === 'strict';
  return (head) => {
    const v: Headers[string] | undefined = isHost ? (head.authority === '' ? undefined : head.authority) : head.headers[name];
    if (v === undefined) return invert;
    if (!value) return !invert;
    if (typeof v === 'string') return value(v) !== invert;
    const joined = value(joinedValue(name, v));
    if (!strict) return joined !== invert;
    // strict: the condition holds whenever one reading of the header makes it hold
    return invert ? !(joined && v.every(value)) : joined || v.some(value);
  };
}

/** All conditions must hold (an empty list holds). repeated: how a repeated header is read ('joined' for routes). */
export function compileHeaderMatches(list: HeaderMatch[] | undefined, where: string, repeated: RepeatedHeaders = 'joined'): HeadersMatcher | undefined {
  if (!list || list.length === 0) return undefined;
  const ms = list.map((h, i) => compileHeaderMatch(h, `${where}[${i}]`, repeated));
  if (ms.length === 1) return ms[0];
  return (head) => {
    for (const m of ms) if (!m(head)) return false;
    return true;
  };
}

/** Upper-case method set, or undefined for "every method". */
export function methodSet(methods: string[] | undefined): ReadonlySet<string> | undefined {
  return methods && methods.length > 0 ? new Set(methods.map((m) => m.toUpperCase())) : undefined;
}

/**
 * Whether a request's method is in a methodSet, whatever its case: methods are case-sensitive tokens, but many
 * backends upper-case what they read (Werkzeug, Rack...), so 'delete' must not slip past a rule on DELETE. The
 * upper-casing is paid only by a method not found as sent.
 */
export function methodIn(set: ReadonlySet<string>, method: string): boolean {
  if (set.has(method)) return true;
  const upper = method.toUpperCase();
  return upper !== method && set.has(upper);
}

// Characters that make a path need normalizing before matching. Most paths have none and are
// matched as they are.
const NEEDS_NORMALIZING = /%|\/\.|\/\/|\\/;
const UNRESERVED = /[A-Za-z0-9\-._~]/;

/**
 * The path used for matching routes and authorization rules: the request target without its query,
 * normalized so that a rule on `/admin` cannot be sidestepped with `/./admin`, `//admin`,
 * `/%61dmin` or `/x/../admin` (the spellings a backend would very likely resolve to `/admin`):
 * percent-encoded unreserved characters are decoded (an encoded '/' stays encoded, as Envoy), '\'
 * counts as '/', runs of '/' merge, and '.' and '..' segments are resolved (RFC 3986 5.2.4). The
 * request is forwarded unchanged; only matching sees this form.
 */
export function matchPath(target: string): string {
  const q = target.indexOf('?');
  const path = q < 0 ? target : target.slice(0, q);
  return NEEDS_NORMALIZING.test(path) ? normalizePath(path) : path;
}

export function normalizePath(path: string): string {
  let p = path.replace(/%([0-9A-Fa-f]{2})/g, (all, hex: string) => {
    const c = String.fromCharCode(parseInt(hex, 16));
    return UNRESERVED.test(c) ? c : all.toUpperCase();
  });
  p = p.replace(/\\/g, '/').replace(/\/{2,}/g, '/');
  const out: string[] = [];
  const segs = p.split('/');
  // segs[0] is '' for an absolute path
  for (let i = 1; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === '.') {
      if (i === segs.length - 1) out.push('');
    } else if (s === '..') {
      out.pop();
      if (i === segs.length - 1) out.push('');
    } else out.push(s);
  }
  return '/' + out.join('/');
}

export interface CompiledMatch {
  path?: StringMatcher;
  methods?: ReadonlySet<string>;
  headers?: HeadersMatcher;
}

export function compileRouteMatch(m: RouteMatch, where: string): CompiledMatch {
  return {
    path: m.path ? compileStringMatch(m.path, `${where}.path`) : undefined,
    methods: methodSet(m.methods),
    headers: compileHeaderMatches(m.headers, `${where}.headers`),
  };
}

/** path: the matching form from matchPath() */
export function matches(c: CompiledMatch, path: string, head: RequestHead): boolean {
  if (c.methods && !methodIn(c.methods, head.method)) return false;
  if (c.path && !c.path(path)) return false;
  if (c.headers && !c.headers(head)) return false;
  return true;
}

/** The routes of one service in order; the first whose match holds wins. */
export class Router<R extends { match: CompiledMatch }> {
  constructor(readonly routes: readonly R[]) {}

  route(path: string, head: RequestHead): R | undefined {
    const rs = this.routes;
    for (let i = 0; i < rs.length; i++) if (matches(rs[i]!.match, path, head)) return rs[i];
    return undefined;
  }
}

/** Compile a service's routes (throws naming service, route and field on a bad regex). */
export function compileRoutes<T extends { match: CompiledMatch }>(service: string, routes: Route[], make: (r: Route, match: CompiledMatch, index: number) => T): Router<T> {
  return new Router(routes.map((r, i) => make(r, compileRouteMatch(r.match, `service ${service}: routes[${i}] (${r.name}).match`), i)));
}
