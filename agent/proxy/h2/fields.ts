// The checks RFC 9113 section 8.2 and 8.3 ask of a header section before an intermediary passes it on: pseudo-
// header fields first and only the defined ones, lower-case names of token characters, no connection-specific
// fields, te only "trailers", values without NUL, CR or LF (which would split a line on an HTTP/1.1 leg) or
// surrounding white space, and content-length as one decimal number. A malformed section is a stream error
// of type PROTOCOL_ERROR.
import type { HeaderList } from './hpack.js';

/** what the last failing check found (for logs and tests) */
export let fieldError = '';

/** content-length of the last section checked: -1 when absent */
export let contentLength = -1;
/** :status of the last response head checked */
export let status = 0;
/** the last request head was a HEAD request (its response has no body whatever content-length says) */
export let isHead = false;
/** :protocol of the last request head (extended CONNECT, RFC 8441); '' when absent */
export let protocol = '';

// Compiled once; a precompiled regular expression scans a short string faster than a charCodeAt loop does.
/** token characters (RFC 9110 5.6.2): a method */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** a token without upper case: what a field name may be in HTTP/2 */
const NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
/** what :path, :authority and :scheme may not hold (they end up in an HTTP/1.1 request line or Host) */
const BAD_URI_PART = /[\x00-\x20\x7f]/;
/** what a value may not hold: NUL, CR, LF (nor white space at either end: checked apart) */
const BAD_VALUE = /[\0\r\n]/;

function fail(msg: string): false {
  fieldError = msg;
  return false;
}

function nameOk(name: string): boolean {
  if (NAME.test(name)) return true;
  if (name.length === 0) return fail('empty field name');
  return fail(/[A-Z]/.test(name) ? `upper-case field name ${JSON.stringify(name)}` : `invalid character in field name ${JSON.stringify(name)}`);
}

function valueOk(name: string, v: string): boolean {
  const n = v.length;
  if (n === 0) return true;
  const a = v.charCodeAt(0), z = v.charCodeAt(n - 1);
  if (a === 0x20 || a === 0x09 || z === 0x20 || z === 0x09) return fail(`white space around the value of ${name}`);
  if (BAD_VALUE.test(v)) return fail(`NUL, CR or LF in the value of ${name}`);
  return true;
}

/** a connection-specific field (RFC 9113 8.2.2): never valid in HTTP/2 */
function connectionSpecific(name: string): boolean {
  switch (name) {
    case 'connection': case 'keep-alive': case 'proxy-connection': case 'transfer-encoding': case 'upgrade': return true;
    default: return false;
  }
}

function setContentLength(v: string): boolean {
  if (v.length === 0 || v.length > 15) return fail(`invalid content-length ${JSON.stringify(v)}`);
  let n = 0;
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return fail(`invalid content-length ${JSON.stringify(v)}`);
    n = n * 10 + c;
  }
  if (contentLength >= 0 && contentLength !== n) return fail('conflicting content-length values');
  contentLength = n;
  return true;
}

/** regular fields from index i on (after the pseudo-header fields): true when they are fine */
function regularOk(h: HeaderList, i: number, trailers: boolean): boolean {
  for (; i < h.length; i += 2) {
    const name = h[i];
    if (name.charCodeAt(0) === 0x3a) return fail(trailers ? `pseudo-header field ${name} in trailers` : `pseudo-header field ${name} after a regular field`);
    if (!nameOk(name) || !valueOk(name, h[i + 1])) return false;
    if (connectionSpecific(name)) return fail(`connection-specific field ${name}`);
    if (name === 'te') { if (h[i + 1] !== 'trailers') return fail(`te other than "trailers"`); }
    else if (name === 'content-length' && !trailers && !setContentLength(h[i + 1])) return false;
  }
  return true;
}

/**
 * a request head (RFC 9113 8.3.1); sets contentLength, isHead and protocol. connectProtocol: we announced
 * SETTINGS_ENABLE_CONNECT_PROTOCOL, so :protocol is allowed on a CONNECT (RFC 8441 4), which then has :scheme and :path.
 */
export function requestOk(h: HeaderList, connectProtocol = false): boolean {
  contentLength = -1;
  isHead = false;
  protocol = '';
  let method = '', scheme = false, path = false, authority = false;
  let i = 0;
  for (; i < h.length && h[i].charCodeAt(0) === 0x3a; i += 2) {
    const name = h[i], v = h[i + 1];
    switch (name) {
      case ':method': if (method !== '') return fail('duplicate :method'); if (!TOKEN.test(v)) return fail(`invalid :method ${JSON.stringify(v)}`); method = v; break;
      case ':scheme': if (scheme) return fail('duplicate :scheme'); if (v.length === 0) return fail('empty :scheme'); scheme = true; break;
      case ':path':
        if (path) return fail('duplicate :path');
        if (v.charCodeAt(0) !== 0x2f && v !== '*') return fail(`:path ${JSON.stringify(v)} is neither absolute nor *`);
        path = true;
        break;
      case ':authority': if (authority) return fail('duplicate :authority'); authority = true; break;
      case ':protocol':
        if (!connectProtocol) return fail('unknown pseudo-header field :protocol (SETTINGS_ENABLE_CONNECT_PROTOCOL not announced)');
        if (protocol !== '') return fail('duplicate :protocol');
        if (v.length === 0) return fail('empty :protocol');
        protocol = v;
        break;
      default: return fail(`unknown pseudo-header field ${name}`);
    }
    if (BAD_URI_PART.test(v)) return fail(`white space or a control character in ${name}`);
  }
  if (method === '') return fail('no :method');
  if (protocol !== '') {
    if (method !== 'CONNECT') return fail(':protocol on a method other than CONNECT');
    if (!authority || !scheme || !path) return fail('an extended CONNECT needs :authority, :scheme and :path');
  } else if (method === 'CONNECT') {
    if (!authority || scheme || path) return fail('CONNECT needs :authority and no :scheme or :path');
  } else if (!scheme || !path) {
    return fail('no :scheme or :path');
  }
  isHead = method === 'HEAD';
  return regularOk(h, i, false);
}

/** a response head (RFC 9113 8.3.2); sets status and contentLength */
export function responseOk(h: HeaderList): boolean {
  contentLength = -1;
  status = 0;
  let i = 0;
  for (; i < h.length && h[i].charCodeAt(0) === 0x3a; i += 2) {
    if (h[i] !== ':status') return fail(`pseudo-header field ${h[i]} in a response`);
    if (status !== 0) return fail('duplicate :status');
    const v = h[i + 1];
    const d0 = v.charCodeAt(0) - 48, d1 = v.charCodeAt(1) - 48, d2 = v.charCodeAt(2) - 48;
    if (v.length !== 3 || !(d0 >= 1 && d0 <= 9) || !(d1 >= 0 && d1 <= 9) || !(d2 >= 0 && d2 <= 9)) return fail(`invalid :status ${JSON.stringify(v)}`);
    status = d0 * 100 + d1 * 10 + d2;
  }
  if (status === 0) return fail('no :status');
  if (status === 101) return fail(':status 101 is not allowed in HTTP/2');
  return regularOk(h, i, false);
}

/** a trailer section: no pseudo-header fields */
export function trailersOk(h: HeaderList): boolean {
  contentLength = -1;
  return regularOk(h, 0, true);
}
