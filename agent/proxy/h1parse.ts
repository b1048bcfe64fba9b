// A strict HTTP/1.1 message-head parser and chunked-body decoder working on Buffers (RFC 9112).
// Strict because the proxy sits between a client and servers that may each parse leniently: any
// ambiguity in framing (both Content-Length and Transfer-Encoding, differing lengths, obs-fold, bare
// LF, whitespace before the colon...) is an error here, never a guess, so that no request can be
// read one way by us and another way by the backend (request smuggling).
//
// Bytes are decoded as latin1 everywhere: one byte = one UTF-16 unit, so obs-text in a value survives
// the round trip to the upstream byte for byte.
import { HeadersRecord } from './headers.js';
import type { Headers } from './types.js';

// Character classes, one table lookup per byte.
const TOKEN = new Uint8Array(256); // tchar
const VALUE = new Uint8Array(256); // field-vchar / obs-text / SP / HTAB
const TARGET = new Uint8Array(256); // request-target: visible ASCII
const HEX = new Int8Array(256).fill(-1);
for (const c of "!#$%&'*+-.^_`|~") TOKEN[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TOKEN[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TOKEN[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) TOKEN[c] = 1;
for (let c = 0x21; c <= 0x7e; c++) { VALUE[c] = 1; TARGET[c] = 1; }
for (let c = 0x80; c <= 0xff; c++) VALUE[c] = 1;
VALUE[0x20] = 1;
VALUE[0x09] = 1;
for (let c = 0; c < 10; c++) HEX[0x30 + c] = c;
for (let c = 0; c < 6; c++) { HEX[0x41 + c] = 10 + c; HEX[0x61 + c] = 10 + c; }

const CR = 13, LF = 10, SP = 32, HTAB = 9, COLON = 58;

// Plain numeric constants (not const enums): the test loader transpiles file by file.
/** parse errors, returned negated: 400, 431, 505, 501 (a transfer coding we do not implement) */
export const ParseError = { Bad: 1, TooLarge: 2, Version: 3, NotImplemented: 4 } as const;
export type ParseError = (typeof ParseError)[keyof typeof ParseError];

/** Framing of a body; Close (responses only): read until the upstream closes. */
export const Framing = { None: 0, Length: 1, Chunked: 2, Close: 3 } as const;

/**
 * One field line as read by fieldSpan(): where its name and value are in the buffer. A parser keeps one and reuses it
 * (no allocation per line). tabAfter: the OWS after the value held an HTAB (see FramingFields.take).
 */
interface Field { error: string; tabAfter: boolean; n0: number; n1: number; v0: number; v1: number }

const newField = (): Field => ({ error: '', tabAfter: false, n0: 0, n1: 0, v0: 0, v1: 0 });

/**
 * field-line = field-name ":" OWS field-value OWS CRLF, starting at i: the name is buf[f.n0..f.n1], the value
 * buf[f.v0..f.v1] (without its OWS). Returns the index after its CRLF, or -1 with f.error set. Both parsers read field
 * lines here, so requests and responses follow the same rules.
 */
function fieldSpan(buf: Buffer, i: number, f: Field): number {
  const n0 = i;
  while (TOKEN[buf[i]!]) i++;
  if (buf[i] !== COLON) {
    f.error = i !== n0 ? 'bad header name (whitespace before colon?)'
      : buf[i] === SP || buf[i] === HTAB ? 'obsolete line folding' : 'bad header line';
    return -1;
  }
  if (i === n0) { f.error = 'empty header name'; return -1; }
  const n1 = i;
  i++;
  while (buf[i] === SP || buf[i] === HTAB) i++;
  const v0 = i;
  while (VALUE[buf[i]!]) i++;
  if (buf[i] !== CR || buf[i + 1] !== LF) { f.error = `bad character in header ${buf.toString('latin1', n0, n1).toLowerCase()}`; return -1; }
  let v1 = i;
  let tab = false;
  for (; v1 > v0; v1--) {
    const c = buf[v1 - 1];
    if (c === HTAB) tab = true;
    else if (c !== SP) break;
  }
  f.tabAfter = tab;
  f.n0 = n0;
  f.n1 = n1;
  f.v0 = v0;
  f.v1 = v1;
  return i + 2;
}

/**
 * Field names most requests and responses carry, lower case: a name read is one of these strings (fieldName), not two
 * new ones per field line (the bytes as a string, then lower-cased), ~60 B of the young generation each.
 */
const COMMON_NAMES: string[][] = [];
for (const n of [
  'host', 'accept', 'accept-encoding', 'accept-language', 'user-agent', 'content-type', 'cookie', 'authorization', 'cache-control',
  'referer', 'origin', 'pragma', 'date', 'server', 'etag', 'vary', 'location', 'set-cookie', 'last-modified', 'expires',
  'if-none-match', 'if-modified-since', 'x-request-id', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host',
  'x-real-ip', 'forwarded', 'traceparent', 'tracestate', 'te', 'expect', 'content-encoding', 'accept-ranges', 'age',
  'content-length', 'transfer-encoding', 'connection', 'proxy-connection', 'keep-alive', 'upgrade',
]) (COMMON_NAMES[n.length] ??= []).push(n);

/** the lower-case name of buf[n0..n1] (token bytes): a common one as it is interned, else made */
function fieldName(buf: Buffer, n0: number, n1: number): string {
  const list = COMMON_NAMES[n1 - n0];
  if (list !== undefined) {
    // (a token byte OR 0x20 is a given lower-case letter only when it is that letter in either case, and is '-' only
    // when it is '-': the names are letters and '-')
    next: for (let k = 0; k < list.length; k++) {
      const n = list[k]!;
      for (let j = 0; j < n.length; j++) if ((buf[n0 + j]! | 0x20) !== n.charCodeAt(j)) continue next;
      return n;
    }
  }
  return buf.toString('latin1', n0, n1).toLowerCase();
}

/** buf[a..b] is s (latin1): a string the parser made before can be used again */
function sameLatin1(buf: Buffer, a: number, b: number, s: string): boolean {
  if (b - a !== s.length) return false;
  for (let i = 0; i < s.length; i++) if (buf[a + i] !== s.charCodeAt(i)) return false;
  return true;
}

/** request methods by length, as they are written (methods are case-sensitive) */
const METHODS: string[][] = [];
for (const m of ['GET', 'PUT', 'POST', 'HEAD', 'PATCH', 'TRACE', 'DELETE', 'OPTIONS', 'CONNECT']) (METHODS[m.length] ??= []).push(m);

function methodName(buf: Buffer, a: number, b: number): string {
  const list = METHODS[b - a];
  if (list !== undefined) for (let k = 0; k < list.length; k++) if (sameLatin1(buf, a, b, list[k]!)) return list[k]!;
  return buf.toString('latin1', a, b);
}

/** the names FramingFields takes, by length (all lower case) */
const FRAMING_NAMES: string[][] = [];
for (const n of ['content-length', 'transfer-encoding', 'connection', 'proxy-connection', 'keep-alive', 'upgrade']) (FRAMING_NAMES[n.length] ??= []).push(n);

/**
 * The framing or hop-by-hop name (FramingFields.take's) that buf[n0..n1] is, in any case, or undefined: without making
 * a string of the name. (A token byte OR 0x20 is a given lower-case letter only when it is that letter in either case,
 * and is '-' only when it is '-': no other token byte maps onto them.)
 */
function framingName(buf: Buffer, n0: number, n1: number): string | undefined {
  const list = FRAMING_NAMES[n1 - n0];
  if (list === undefined) return undefined;
  next: for (let k = 0; k < list.length; k++) {
    const n = list[k]!;
    for (let j = 0; j < n.length; j++) if ((buf[n0 + j]! | 0x20) !== n.charCodeAt(j)) continue next;
    return n;
  }
  return undefined;
}

/**
 * A list element without its OWS (SP / HTAB). Not String.trim(): that also strips NBSP (0xA0, obs-text in latin1), so
 * "Transfer-Encoding: \xa0chunked" read as chunked here and as an unknown coding by the backend (found by fuzzing).
 */
function trimOws(s: string): string {
  let a = 0, b = s.length;
  while (a < b && (s.charCodeAt(a) === SP || s.charCodeAt(a) === HTAB)) a++;
  while (b > a && (s.charCodeAt(b - 1) === SP || s.charCodeAt(b - 1) === HTAB)) b--;
  return a === 0 && b === s.length ? s : s.slice(a, b);
}

/** What a Connection (or Proxy-Connection) header says: its tokens, and the other names it lists (hop-by-hop too). */
interface ConnTokens { close: boolean; keepAlive: boolean; upgrade: boolean; names: string[] | undefined }

function connectionTokens(value: string, c: ConnTokens): void {
  for (const raw of value.split(',')) {
    const tok = trimOws(raw).toLowerCase();
    if (tok === '') continue;
    if (tok === 'close') c.close = true;
    else if (tok === 'keep-alive') c.keepAlive = true;
    else if (tok === 'upgrade') c.upgrade = true;
    else (c.names ??= []).push(tok);
  }
}

const FIELD_OTHER = 0, FIELD_TAKEN = 1, FIELD_BAD = 2;

/**
 * The framing and hop-by-hop fields of a head, either way (content-length, transfer-encoding, connection,
 * proxy-connection, keep-alive, upgrade): read while the fields are, never passed on as they came. One per parser,
 * reset() per head.
 */
class FramingFields {
  /** -1: no content-length */
  contentLength = -1;
  /** transfer-encoding, repeated fields joined */
  te: string | undefined = undefined;
  upgrade: string | undefined = undefined;
  readonly conn: ConnTokens = { close: false, keepAlive: false, upgrade: false, names: undefined };
  error = '';

  reset(): void {
    this.contentLength = -1;
    this.te = this.upgrade = undefined;
    const conn = this.conn;
    conn.close = conn.keepAlive = conn.upgrade = false;
    conn.names = undefined;
  }

  /**
   * FIELD_TAKEN: one of them; FIELD_OTHER: not; FIELD_BAD: a bad one (error says why). tabAfter: an HTAB followed the
   * value. RFC 9110's OWS allows it, but Node's llhttp (and so the backends built on it) refuses a Content-Length or
   * Transfer-Encoding value followed by one ("chunked\t": 400), while it trims it after any other field: the proxy
   * refuses them too, so that it never frames a message its peer would reject or read otherwise (fuzz finding,
   * h1-smuggling).
   */
  take(name: string, value: string, tabAfter: boolean): number {
    switch (name) {
      case 'content-length': {
        if (tabAfter) { this.error = 'tab after the content-length value'; return FIELD_BAD; }
        const n = parseContentLength(value);
        if (n < 0) { this.error = 'bad content-length'; return FIELD_BAD; }
        if (this.contentLength >= 0 && n !== this.contentLength) { this.error = 'differing content-lengths'; return FIELD_BAD; }
        this.contentLength = n;
        return FIELD_TAKEN;
      }
      case 'transfer-encoding':
        if (tabAfter) { this.error = 'tab after the transfer-encoding value'; return FIELD_BAD; }
        this.te = this.te === undefined ? value : `${this.te}, ${value}`;
        return FIELD_TAKEN;
      case 'connection':
      case 'proxy-connection':
        connectionTokens(value, this.conn);
        return FIELD_TAKEN;
      case 'keep-alive':
        return FIELD_TAKEN;
      case 'upgrade':
        this.upgrade = value;
        return FIELD_TAKEN;
    }
    return FIELD_OTHER;
  }
}
export type Framing = (typeof Framing)[keyof typeof Framing];

/** The head of a request from a client (reused per connection: reset() between messages). */
export class RequestHeadParse {
  method = '';
  target = '';
  /** 0 = HTTP/1.0, 1 = HTTP/1.1 */
  minor = 1;
  host: string | undefined;
  headers: Headers = new HeadersRecord();
  framing: Framing = Framing.None;
  contentLength = 0;
  /** a content-length header was there (0 included: passed on, some servers want a length on POST) */
  hasContentLength = false;
  /** Connection: close (or HTTP/1.0 without keep-alive) */
  close = false;
  /** HTTP/1.0 with Connection: keep-alive */
  keepAlive10 = false;
  expectContinue = false;
  /** Upgrade header value when Connection lists upgrade (h2c excluded: see http1.ts) */
  upgrade: string | undefined;
  /** te: trailers was asked */
  teTrailers = false;
  /** why the last parse failed (for the log) */
  error = '';
  /**
   * The head may go upstream byte for byte (http1.ts): HTTP/1.1, an origin-form target, no field the proxy takes out or
   * writes itself (framing but one plain content-length, connection-specific, te, expect, http2-settings). Then
   * buf[headStart..end] as parsed is the head the proxy would write but for the case and whitespace of its fields.
   */
  verbatim = false;
  /** where the request line started (after an empty line skipped) */
  headStart = 0;
  /** the host value of an earlier request */
  private lastHost = '';
  private readonly field: Field = newField();
  private readonly fr = new FramingFields();

  reset(): void {
    this.verbatim = false;
    this.host = undefined;
    this.headers = new HeadersRecord();
    this.framing = Framing.None;
    this.contentLength = 0;
    this.hasContentLength = false;
    this.close = false;
    this.keepAlive10 = false;
    this.expectContinue = false;
    this.upgrade = undefined;
    this.teTrailers = false;
    this.error = '';
  }

  /**
   * Parse one request head from buf[start..]. Returns the offset just past the head, 0 when more bytes
   * are needed, or -ParseError. maxBytes bounds the head (431 beyond).
   */
  parse(buf: Buffer, start: number, maxBytes: number): number {
    const len = buf.length;
    // RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line.
    if (len - start >= 2 && buf[start] === CR && buf[start + 1] === LF) start += 2;
    const endIdx = buf.indexOf('\r\n\r\n', start, 'latin1');
    if (endIdx < 0) {
      if (len - start > maxBytes) return this.fail(ParseError.TooLarge, 'header section too large');
      // the CR of an empty line before the request line, its LF still to come (fuzzing found this refused)
      if (len - start === 1 && buf[start] === CR) return 0;
      // An early look at the method: garbage is refused at once, not after the whole head (or a timeout).
      let i = start;
      while (i < len && TOKEN[buf[i]!]) i++;
      if (i < len && (i === start || buf[i] !== SP)) return this.fail(ParseError.Bad, 'bad method');
      return 0;
    }
    const headEnd = endIdx + 4;
    if (headEnd - start > maxBytes) return this.fail(ParseError.TooLarge, 'header section too large');
    this.reset();
    this.headStart = start;
    // request-line = method SP request-target SP HTTP-version CRLF
    let i = start;
    while (TOKEN[buf[i]!]) i++;
    if (i === start || buf[i] !== SP) return this.fail(ParseError.Bad, 'bad method');
    this.method = methodName(buf, start, i);
    const t0 = ++i;
    while (TARGET[buf[i]!]) i++;
    if (i === t0 || buf[i] !== SP) return this.fail(ParseError.Bad, 'bad request-target');
    // a keep-alive client asking the same again (a poll, a health check) gets the same string
    if (!sameLatin1(buf, t0, i, this.target)) this.target = buf.toString('latin1', t0, i);
    let clean = buf[t0] === 0x2f; // origin-form
    i++;
    // HTTP-version = "HTTP/" DIGIT "." DIGIT
    if (buf[i] !== 0x48 || buf[i + 1] !== 0x54 || buf[i + 2] !== 0x54 || buf[i + 3] !== 0x50 || buf[i + 4] !== 0x2f
      || buf[i + 6] !== 0x2e || buf[i + 8] !== CR || buf[i + 9] !== LF) return this.fail(ParseError.Bad, 'bad HTTP version');
    const major = buf[i + 5]! - 0x30, minor = buf[i + 7]! - 0x30;
    if (major < 0 || major > 9 || minor < 0 || minor > 9) return this.fail(ParseError.Bad, 'bad HTTP version');
    if (major !== 1) return this.fail(ParseError.Version, `HTTP/${major}.${minor} not supported`);
    this.minor = minor === 0 ? 0 : 1;
    i += 10;
    const fr = this.fr;
    fr.reset();
    const headers = this.headers;
    const f = this.field;
    let clSeen = false;
    while (i < endIdx + 2) {
      i = fieldSpan(buf, i, f);
      if (i < 0) return this.fail(ParseError.Bad, f.error);
      const name = fieldName(buf, f.n0, f.n1);
      // host is the same on every request of a connection, as a rule: the last one's string is used again
      const value = name === 'host' && sameLatin1(buf, f.v0, f.v1, this.lastHost) ? this.lastHost : buf.toString('latin1', f.v0, f.v1);
      // Hop-by-hop and framing headers are consumed here, never forwarded as they came.
      const k = fr.take(name, value, f.tabAfter);
      if (k === FIELD_TAKEN) {
        // one content-length of digits only is written back as it came; any other taken field is not
        if (clean && (name !== 'content-length' || clSeen || !digitsOnly(value))) clean = false;
        clSeen = true;
        continue;
      }
      if (k === FIELD_BAD) return this.fail(ParseError.Bad, fr.error);
      switch (name) {
        case 'host':
          if (this.host !== undefined) return this.fail(ParseError.Bad, 'more than one host header');
          this.host = this.lastHost = value;
          continue;
        case 'http2-settings':
          clean = false;
          continue;
        case 'te':
          // Only "trailers" means anything end to end (gRPC); codings are between us and the client.
          if (/(^|,)\s*trailers\s*(;|,|$)/i.test(value)) this.teTrailers = true;
          clean = false;
          continue;
        case 'expect':
          if (value.toLowerCase() === '100-continue') { this.expectContinue = true; clean = false; continue; }
          break;
        case '__proto__':
          // Headers objects have no prototype, but a policy may copy them into one that has.
          return this.fail(ParseError.Bad, 'bad header name');
      }
      const prev = headers[name];
      if (prev === undefined) headers[name] = value;
      else if (typeof prev === 'string') headers[name] = [prev, value];
      else prev.push(value);
    }
    const te = fr.te, sawCl = fr.contentLength >= 0, conn = fr.conn, upgrade = fr.upgrade;
    if (sawCl) this.contentLength = fr.contentLength;
    if (te !== undefined) {
      // RFC 9112 6.1: chunked must be the final coding; with Content-Length too the message is ambiguous.
      if (sawCl) return this.fail(ParseError.Bad, 'both content-length and transfer-encoding');
      if (this.minor === 0) return this.fail(ParseError.Bad, 'transfer-encoding in an HTTP/1.0 request');
      const codings = te.toLowerCase().split(',');
      const last = trimOws(codings[codings.length - 1]!);
      if (last !== 'chunked') return this.fail(ParseError.Bad, 'transfer-encoding without final chunked');
      if (codings.length > 1) return this.fail(ParseError.NotImplemented, `transfer-coding ${te} not implemented`);
      this.framing = Framing.Chunked;
    } else if (sawCl && this.contentLength > 0) {
      this.framing = Framing.Length;
    }
    this.hasContentLength = sawCl;
    if (this.minor === 1 && this.host === undefined) return this.fail(ParseError.Bad, 'HTTP/1.1 request without host');
    // (read back through a widened type: connectionTokens() filled it, which TypeScript's narrowing cannot see)
    const connNames = conn.names as string[] | undefined;
    if (connNames) for (const n of connNames) delete headers[n];
    this.close = this.minor === 0 ? !conn.keepAlive : conn.close;
    this.keepAlive10 = this.minor === 0 && conn.keepAlive && !conn.close;
    // Upgrade: h2c is ignored (RFC 9113 3.1 deprecated it; prior knowledge is the cleartext HTTP/2 path):
    // the request is answered in HTTP/1.1 as if no Upgrade had been asked.
    if (conn.upgrade && upgrade !== undefined && this.minor === 1 && !/^\s*h2c\s*$/i.test(upgrade)) this.upgrade = upgrade;
    this.verbatim = clean && this.minor === 1;
    return headEnd;
  }

  private fail(code: ParseError, why: string): number {
    this.error = why;
    return -code;
  }
}

function digitsOnly(v: string): boolean {
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return v.length > 0;
}

/** Content-Length: 1*DIGIT, or a list of identical values ("5, 5"); -1 when invalid. */
export function parseContentLength(v: string): number {
  let n = -1;
  let cur = -1;
  let digits = 0;
  for (let i = 0; i <= v.length; i++) {
    const c = i < v.length ? v.charCodeAt(i) : 44;
    if (c >= 48 && c <= 57) {
      if (++digits > 15) return -1; // beyond any real body, and keeps the arithmetic exact
      cur = (cur < 0 ? 0 : cur * 10) + (c - 48);
    } else if (c === 44) {
      if (cur < 0) return -1;
      if (n >= 0 && n !== cur) return -1;
      n = cur;
      cur = -1;
      digits = 0;
      while (i + 1 < v.length && (v.charCodeAt(i + 1) === SP || v.charCodeAt(i + 1) === HTAB)) i++;
    } else return -1;
  }
  return n;
}

/**
 * The head of a response from an upstream, as flat name/value arrays (reused per connection). The names, values and
 * reason are made as strings only when asked for: a head passed on as it came (verbatim, http1.ts) needs none of
 * them, and the two arrays and their strings were the largest allocation of a proxied HTTP/1.1 response (~550 B of
 * ~2.2 kB per request, bench l7). parse() keeps where they are in the buffer it was given (which nothing writes again:
 * reads are copied out of the loop's arena) until the next parse().
 */
/** the most memory a parsed response head keeps alive through its buffer (ResponseHeadParse.src); node's pool is 8 KiB */
const RETAIN_MAX = 16 * 1024;

export class ResponseHeadParse {
  status = 0;
  minor = 1;
  framing: Framing = Framing.None;
  contentLength = 0;
  /** a content-length header was there (a HEAD or 304 response passes it on) */
  hasContentLength = false;
  close = false;
  /** Connection: upgrade + Upgrade value (for a 101) */
  upgrade: string | undefined;
  /**
   * The head may be passed on byte for byte (http1.ts): HTTP/1.1, a final status with a body delimited by one
   * content-length field line, and no other framing or connection-specific field (nothing the proxy drops or rewrites).
   */
  verbatim = false;
  error = '';
  private readonly field: Field = newField();
  private readonly fr = new FramingFields();
  /** the buffer parse() read, and in it: the reason phrase, and name start/end, value start/end of each field kept */
  private src: Buffer | null = null;
  private reason0 = 0;
  private reason1 = 0;
  private spans = new Int32Array(64);
  private kept = 0;
  /** made from src on first use (null: not yet) */
  private madeNames: string[] | null = [];
  private madeValues: string[] = [];
  private madeReason: string | null = '';

  /** lower-case names, parallel to values; hop-by-hop and framing headers excluded */
  get names(): string[] {
    if (this.madeNames === null) this.make();
    return this.madeNames!;
  }

  set names(v: string[]) {
    if (this.madeNames === null) this.make();
    this.madeNames = v;
  }

  get values(): string[] {
    if (this.madeNames === null) this.make();
    return this.madeValues;
  }

  set values(v: string[]) {
    if (this.madeNames === null) this.make();
    this.madeValues = v;
  }

  get reason(): string {
    if (this.madeReason === null) this.madeReason = this.src === null ? '' : this.src.toString('latin1', this.reason0, this.reason1);
    return this.madeReason;
  }

  set reason(v: string) {
    this.madeReason = v;
  }

  private make(): void {
    const names: string[] = [], values: string[] = [];
    const buf = this.src, sp = this.spans;
    if (buf !== null) {
      for (let k = 0, p = 0; k < this.kept; k++, p += 4) {
        names.push(fieldName(buf, sp[p]!, sp[p + 1]!));
        values.push(buf.toString('latin1', sp[p + 2]!, sp[p + 3]!));
      }
    }
    this.madeNames = names;
    this.madeValues = values;
  }

  /**
   * Parse one response head from buf[start..]; noBody: the request was HEAD (or the status forbids a
   * body). Returns the offset just past the head, 0 for more, or -ParseError.
   */
  parse(buf: Buffer, start: number, maxBytes: number, headRequest: boolean): number {
    const r = this.parseHead(buf, start, maxBytes, headRequest);
    // A large read (a body came with the head) is not kept until the next response (an idle pooled connection would
    // hold it): its strings are made now.
    const src = this.src;
    if (src !== null && src.buffer.byteLength > RETAIN_MAX) {
      if (this.madeNames === null) this.make();
      void this.reason;
      this.src = null;
    }
    return r;
  }

  private parseHead(buf: Buffer, start: number, maxBytes: number, headRequest: boolean): number {
    const endIdx = buf.indexOf('\r\n\r\n', start, 'latin1');
    if (endIdx < 0) return buf.length - start > maxBytes ? this.fail(ParseError.TooLarge, 'response head too large') : 0;
    const headEnd = endIdx + 4;
    if (headEnd - start > maxBytes) return this.fail(ParseError.TooLarge, 'response head too large');
    this.src = buf;
    this.kept = 0;
    this.madeNames = null;
    this.madeReason = null;
    this.reason0 = this.reason1 = 0;
    this.framing = Framing.None;
    this.contentLength = 0;
    this.upgrade = undefined;
    this.error = '';
    let i = start;
    // status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF
    if (buf[i] !== 0x48 || buf[i + 1] !== 0x54 || buf[i + 2] !== 0x54 || buf[i + 3] !== 0x50 || buf[i + 4] !== 0x2f
      || buf[i + 5] !== 0x31 || buf[i + 6] !== 0x2e || buf[i + 8] !== SP) return this.fail(ParseError.Bad, 'bad status line');
    this.minor = buf[i + 7] === 0x30 ? 0 : 1;
    const d0 = buf[i + 9]! - 48, d1 = buf[i + 10]! - 48, d2 = buf[i + 11]! - 48;
    if (d0 < 1 || d0 > 5 || d1 < 0 || d1 > 9 || d2 < 0 || d2 > 9) return this.fail(ParseError.Bad, 'bad status code');
    this.status = d0 * 100 + d1 * 10 + d2;
    i += 12;
    if (buf[i] === SP) {
      const r0 = ++i;
      while (VALUE[buf[i]!]) i++;
      this.reason0 = r0;
      this.reason1 = i;
    }
    if (buf[i] !== CR || buf[i + 1] !== LF) return this.fail(ParseError.Bad, 'bad status line');
    i += 2;
    const fr = this.fr;
    fr.reset();
    const f = this.field;
    /** field lines taken by FramingFields other than content-length ones, and content-length ones */
    let takenOther = 0, clLines = 0;
    while (i < endIdx + 2) {
      i = fieldSpan(buf, i, f);
      if (i < 0) return this.fail(ParseError.Bad, f.error);
      const framing = framingName(buf, f.n0, f.n1);
      if (framing === undefined) {
        // kept: where it is (made a string only if asked for: names, values)
        let sp = this.spans;
        const p = this.kept * 4;
        if (p + 4 > sp.length) {
          const grown = new Int32Array(sp.length * 2);
          grown.set(sp);
          this.spans = sp = grown;
        }
        sp[p] = f.n0;
        sp[p + 1] = f.n1;
        sp[p + 2] = f.v0;
        sp[p + 3] = f.v1;
        this.kept++;
        continue;
      }
      const k = fr.take(framing, buf.toString('latin1', f.v0, f.v1), f.tabAfter);
      if (k === FIELD_BAD) return this.fail(ParseError.Bad, fr.error);
      if (framing === 'content-length') clLines++;
      else takenOther++;
    }
    const te = fr.te, sawCl = fr.contentLength >= 0, conn = fr.conn, upgrade = fr.upgrade;
    if (sawCl) this.contentLength = fr.contentLength;
    const connNames = conn.names as string[] | undefined;
    if (connNames) {
      const names = this.names, values = this.values;
      for (let k = names.length - 1; k >= 0; k--) {
        if (connNames.includes(names[k]!)) { names.splice(k, 1); values.splice(k, 1); }
      }
    }
    this.close = this.minor === 0 ? !conn.keepAlive : conn.close;
    if (conn.upgrade) this.upgrade = upgrade;
    this.hasContentLength = sawCl;
    const st = this.status;
    if (headRequest || st < 200 || st === 204 || st === 304) {
      this.framing = Framing.None;
    } else if (te !== undefined) {
      // A response with both is a smuggling attempt or a broken server: the connection cannot be trusted.
      if (sawCl) return this.fail(ParseError.Bad, 'both content-length and transfer-encoding');
      const codings = te.toLowerCase().split(',');
      if (trimOws(codings[codings.length - 1]!) !== 'chunked') {
        this.framing = Framing.Close; // RFC 9112 6.3 (7): read until close
        this.close = true;
      } else if (codings.length > 1) {
        return this.fail(ParseError.NotImplemented, `transfer-coding ${te}`);
      } else this.framing = Framing.Chunked;
    } else if (sawCl) {
      this.framing = this.contentLength > 0 ? Framing.Length : Framing.None;
    } else {
      this.framing = Framing.Close;
      this.close = true;
    }
    this.verbatim = this.minor === 1 && this.framing === Framing.Length && clLines === 1 && takenOther === 0 && st >= 200;
    return headEnd;
  }

  private fail(code: ParseError, why: string): number {
    this.error = why;
    return -code;
  }
}

/** What a chunked decoder reports to whoever consumes the body. */
export interface ChunkSink {
  chunkData(buf: Buffer): void;
  /** the last chunk and trailer section were read; trailers is the raw, validated trailer section ('' = none) */
  chunkEnd(trailers: string): void;
}

/**
 * chunk-ext = *( ";" ext-name [ "=" ( token / quoted-string ) ] ), as a table: EXT_NEXT[state * 256 + byte] is the next
 * state, EXT_END (the CR ending the line) or EXT_BAD. RFC 9112 7.1.1 allows BWS around ";" and "="; llhttp refuses it,
 * and so do we: the stricter of the two (no client sends it; a size line read two ways is a smuggled body).
 */
const EXT = { BeforeSemi: 0, BeforeName: 1, Name: 2, BeforeValue: 4, Token: 5, Quoted: 6, Escape: 7, AfterValue: 8 } as const;
const EXT_END = 100, EXT_BAD = 101;
const EXT_NEXT = new Uint8Array(9 * 256).fill(EXT_BAD);
{
  const set = (from: number, to: number, ok: (c: number) => boolean) => { for (let c = 0; c < 256; c++) if (ok(c)) EXT_NEXT[from * 256 + c] = to; };
  const tok = (c: number) => TOKEN[c] === 1;
  const is = (x: number) => (c: number) => c === x;
  set(EXT.BeforeSemi, EXT.BeforeName, is(0x3b));
  set(EXT.BeforeName, EXT.Name, tok);
  for (const after of [EXT.Name, EXT.Token, EXT.AfterValue]) { set(after, EXT.BeforeName, is(0x3b)); set(after, EXT_END, is(CR)); }
  set(EXT.Name, EXT.Name, tok); set(EXT.Name, EXT.BeforeValue, is(0x3d));
  set(EXT.BeforeValue, EXT.Token, tok); set(EXT.BeforeValue, EXT.Quoted, is(0x22));
  set(EXT.Token, EXT.Token, tok);
  // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text; quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
  set(EXT.Quoted, EXT.Quoted, (c) => VALUE[c] === 1 && c !== 0x22 && c !== 0x5c);
  set(EXT.Quoted, EXT.AfterValue, is(0x22)); set(EXT.Quoted, EXT.Escape, is(0x5c));
  set(EXT.Escape, EXT.Quoted, (c) => VALUE[c] === 1);
}

const CS = { Size: 0, Ext: 1, SizeLf: 2, Data: 3, DataCr: 4, DataLf: 5, Trailer: 6, Done: 7 } as const;

/**
 * Streaming decoder of the chunked transfer coding (RFC 9112 7.1). feed() takes any slice of the
 * stream and returns how many bytes it used (it stops right after the last chunk's trailer section,
 * leaving a pipelined next message to the caller), or -1 on a framing error.
 */
export class ChunkedDecoder {
  private state: number = CS.Size;
  private size = 0;
  private digits = 0;
  private lineBytes = 0;
  /** where in the chunk extensions of this size line (EXT) */
  private ext: number = EXT.BeforeSemi;
  private trailer = '';
  private trailerLineStart = true;
  error = '';

  reset(): void {
    this.state = CS.Size;
    this.size = 0;
    this.digits = 0;
    this.lineBytes = 0;
    this.trailer = '';
    this.trailerLineStart = true;
    this.error = '';
  }

  get done(): boolean {
    return this.state === CS.Done;
  }

  feed(buf: Buffer, start: number, sink: ChunkSink, maxTrailerBytes: number): number {
    let i = start;
    const len = buf.length;
    while (i < len) {
      switch (this.state) {
        case CS.Size: {
          const c = buf[i]!;
          const h = HEX[c]!;
          if (h >= 0) {
            if (++this.digits > 12) return this.fail('chunk size too large');
            this.size = this.size * 16 + h;
            i++;
          } else if (this.digits === 0) {
            return this.fail('bad chunk size');
          } else if (c === CR) {
            this.state = CS.SizeLf;
            i++;
          } else if (c === 0x3b /* ; */) {
            this.state = CS.Ext;
            this.lineBytes = 0;
            this.ext = EXT.BeforeSemi;
          } else return this.fail('bad chunk size');
          break;
        }
        case CS.Ext: {
          // chunk extensions are ignored, but they must be plain visible text and bounded
          // Chunk extensions are ignored, but read by their grammar (EXT): a size line two parsers read two ways is how
          // bodies get smuggled ("5 \r\n", "0;\r\n": llhttp refuses both, we took them; found by fuzzing).
          const c = buf[i]!;
          if (++this.lineBytes > 4096) return this.fail('bad chunk extension');
          const x = EXT_NEXT[this.ext * 256 + c]!;
          if (x === EXT_BAD) return this.fail(this.ext === EXT.BeforeSemi ? 'bad chunk size' : 'bad chunk extension');
          if (x === EXT_END) { this.state = CS.SizeLf; i++; break; }
          this.ext = x;
          i++;
          break;
        }
        case CS.SizeLf:
          if (buf[i] !== LF) return this.fail('bad chunk size line');
          i++;
          if (this.size === 0) {
            this.state = CS.Trailer;
            this.trailerLineStart = true;
            this.trailer = '';
            this.lineBytes = 0;
          } else this.state = CS.Data;
          break;
        case CS.Data: {
          const n = Math.min(this.size, len - i);
          sink.chunkData(buf.subarray(i, i + n));
          i += n;
          this.size -= n;
          if (this.size === 0) this.state = CS.DataCr;
          break;
        }
        case CS.DataCr:
          if (buf[i] !== CR) return this.fail('chunk data longer than its size');
          this.state = CS.DataLf;
          i++;
          break;
        case CS.DataLf:
          if (buf[i] !== LF) return this.fail('bad chunk terminator');
          this.state = CS.Size;
          this.size = 0;
          this.digits = 0;
          i++;
          break;
        case CS.Trailer: {
          // trailer-section = *( field-line CRLF ) CRLF; kept raw (validated) for a chunked receiver.
          const eol = buf.indexOf(LF, i);
          const stop = eol < 0 ? len : eol + 1;
          if ((this.lineBytes += stop - i) > maxTrailerBytes) return this.fail('trailer section too large');
          const piece = buf.toString('latin1', i, stop);
          i = stop;
          this.trailer += piece;
          if (eol < 0) break;
          // a complete line sits at the end of this.trailer
          const lineStart = this.trailer.lastIndexOf('\n', this.trailer.length - 2) + 1;
          const line = this.trailer.slice(lineStart);
          if (line === '\r\n') {
            this.trailer = this.trailer.slice(0, lineStart);
            this.state = CS.Done;
            sink.chunkEnd(this.trailer);
            return i;
          }
          if (!validFieldLine(line)) return this.fail('bad trailer field');
          // framing, routing and hop-by-hop fields never belong in trailers (RFC 9110 6.5.1): a receiver that merges
          // trailers into the head reframes by them (llhttp refuses Transfer-Encoding here, and closes after a
          // Connection: close; fuzzing found both passed on as they came)
          if (FRAMING_TRAILER.test(line)) return this.fail('framing or hop-by-hop field in trailers');
          break;
        }
        case CS.Done:
          return i;
      }
    }
    return i;
  }

  private fail(why: string): number {
    this.error = why;
    return -1;
  }
}

const FRAMING_TRAILER = /^(transfer-encoding|content-length|connection|proxy-connection|keep-alive|upgrade|host):/i;

/** 'name: value\r\n' with a token name, no whitespace before the colon and a valid value. */
function validFieldLine(line: string): boolean {
  const n = line.length;
  if (n < 3 || line.charCodeAt(n - 2) !== CR || line.charCodeAt(n - 1) !== LF) return false;
  let i = 0;
  while (i < n && TOKEN[line.charCodeAt(i)]) i++;
  if (i === 0 || line.charCodeAt(i) !== COLON) return false;
  for (i++; i < n - 2; i++) if (!VALUE[line.charCodeAt(i)]) return false;
  return true;
}

/** A header value safe to write into an HTTP/1.1 head (no CR/LF/NUL: no response splitting). */
export function validHeaderValue(v: string): boolean {
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (c > 0xff || !VALUE[c]) return false;
  }
  return true;
}

export function validToken(v: string): boolean {
  if (v.length === 0) return false;
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (c > 0xff || !TOKEN[c]) return false;
  }
  return true;
}
