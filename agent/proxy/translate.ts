// HTTP/1.1 <-> HTTP/2 message heads and trailers, for a service whose upstreamProtocol is not the client's
// (h1toh2.ts: an HTTP/1.1 client's attempt on an HTTP/2 backend; h2toh1.ts: an HTTP/2 client's on an HTTP/1.1
// backend). What crosses, as RFC 9113 8.2-8.3 and Envoy's codecs have it:
// - names: lower-case on both sides already (the HTTP/1.1 parser lower-cases them; HTTP/2 requires it);
// - connection-specific fields (connection, keep-alive, proxy-connection, transfer-encoding, upgrade) never cross;
//   the HTTP/1.1 parser has taken them (and the names Connection listed) out, HTTP/2 sessions refuse them;
// - te: only "trailers" (the HTTP/1.1 parser keeps just that flag; HTTP/2 allows nothing else);
// - Host <-> :authority, :scheme http (cleartext legs only), :method, :path; cookie fields split by an HTTP/2
//   client are joined with "; " for HTTP/1.1 (RFC 9113 8.2.3);
// - bodies: chunked <-> DATA frames; a content-length crosses as it is (the sessions and the HTTP/1.1 parser
//   check the body against it); trailers: a chunked body's trailer section <-> a trailing HEADERS frame (names
//   lower-cased, framing and connection-specific fields dropped). A body framed by content-length has no trailers
//   on HTTP/1.1: trailers to it are dropped (as Envoy does).
// - 1xx: Expect: 100-continue is answered by the proxy when the upstream leg is there (not passed on: the HTTP/1.1
//   pool drops a backend's 100); other interim heads (103 Early Hints) are passed on, either way.
// Nothing here runs for a service whose upstreamProtocol is 'downstream' (or the client's own).
import type { HeaderList } from './h2/hpack.js';
import { Framing } from './h1parse.js';
import { statusText } from './engine.js';
import type { Headers, RequestHead } from './types.js';

/** A response head as the HTTP/1.1 writer (http1.ts) reads it: ResponseHeadParse's fields, or one made from HTTP/2. */
export interface ResponseHead {
  status: number;
  reason: string;
  /** lower-case names, parallel to values; no framing or connection-specific field */
  names: string[];
  values: string[];
  framing: Framing;
  hasContentLength: boolean;
  contentLength: number;
}

/** a field that never crosses to the other protocol (connection-specific, framing, or what the leg writes itself) */
function dropped(name: string): boolean {
  switch (name) {
    case 'connection': case 'keep-alive': case 'proxy-connection': case 'transfer-encoding': case 'upgrade':
    case 'http2-settings': case 'host': case 'te': case 'content-length':
      return true;
    default:
      return false;
  }
}

/**
 * An HTTP/1.1 request head as an HTTP/2 request header list. teTrailers: the client asked te: trailers.
 * contentLength: the request's content-length (-1: none; a chunked body goes as DATA frames without one).
 * defaultAuthority: for a request without Host (HTTP/1.0), the address the client connected to.
 */
export function h1RequestToH2(head: RequestHead, teTrailers: boolean, contentLength: number, defaultAuthority: string): HeaderList {
  const out: HeaderList = [':method', head.method, ':scheme', 'http', ':authority', head.authority !== '' ? head.authority : defaultAuthority];
  out.push(':path', head.path);
  const h: Headers = head.headers;
  for (const name in h) {
    if (dropped(name)) continue;
    const v = h[name]!;
    if (typeof v === 'string') out.push(name, v);
    else for (let i = 0; i < v.length; i++) out.push(name, v[i]!);
  }
  if (teTrailers) out.push('te', 'trailers');
  if (contentLength >= 0) out.push('content-length', String(contentLength));
  return out;
}

/** What h2RequestToH1 makes: the request head to write, and how the body that follows is framed. */
export interface H1RequestHead {
  head: string;
  /** the body goes chunked (no content-length was given and the request has a body) */
  chunked: boolean;
  /** the client sent expect: 100-continue: not passed on (the HTTP/1.1 pool drops a backend's 100), answered by the
   *  proxy when the connection is there, as for HTTP/1.1 clients */
  expectContinue: boolean;
}

/**
 * An HTTP/2 request header list (well-formed: the session checked it; host already folded into :authority) as an
 * HTTP/1.1 request head. hasBody: the stream was not ended with its head.
 */
export function h2RequestToH1(h: HeaderList, hasBody: boolean): H1RequestHead {
  let method = '', path = '', authority = '', fields = '', cookie = '';
  let contentLength = -1, expectContinue = false;
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i]!, v = h[i + 1]!;
    if (name.charCodeAt(0) === 58 /* : */) {
      if (name === ':method') method = v;
      else if (name === ':path') path = v;
      else if (name === ':authority') authority = v;
      continue;
    }
    switch (name) {
      case 'content-length': contentLength = Number(v); continue;
      case 'cookie': cookie = cookie === '' ? v : `${cookie}; ${v}`; continue;
      case 'te': fields += 'te: trailers\r\n'; continue; // (the session let only "trailers" through)
      case 'expect': if (v.toLowerCase() === '100-continue') { expectContinue = true; continue; } break;
    }
    if (dropped(name)) continue;
    fields += `${name}: ${v}\r\n`;
  }
  let s = `${method} ${path} HTTP/1.1\r\nhost: ${authority}\r\n${fields}`;
  if (cookie !== '') s += `cookie: ${cookie}\r\n`;
  let chunked = false;
  if (contentLength >= 0) s += `content-length: ${contentLength}\r\n`;
  else if (hasBody) { s += 'transfer-encoding: chunked\r\n'; chunked = true; }
  return { head: s + '\r\n', chunked, expectContinue };
}

/** An HTTP/1.1 response head (ResponseHeadParse) as an HTTP/2 response header list. */
export function h1ResponseToH2(res: ResponseHead): HeaderList {
  const out: HeaderList = [':status', String(res.status)];
  const names = res.names, values = res.values;
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    if (dropped(name)) continue;
    out.push(name, values[i]!);
  }
  // (a 204 or 304 says nothing of a body; a HEAD response's length is the one the GET would have had)
  if (res.hasContentLength && res.status !== 204) out.push('content-length', String(res.contentLength));
  return out;
}

/**
 * An HTTP/2 response header list (well-formed, :status first and final) into res, for the HTTP/1.1 writer.
 * endStream: the head ended the stream (no body follows); isHead: the request was HEAD.
 */
export function h2ResponseToH1(h: HeaderList, endStream: boolean, isHead: boolean, res: ResponseHead): void {
  res.names = [];
  res.values = [];
  res.hasContentLength = false;
  res.contentLength = 0;
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i]!, v = h[i + 1]!;
    if (name === ':status') { res.status = Number(v); continue; }
    if (name === 'content-length') { res.hasContentLength = true; res.contentLength = Number(v); continue; }
    if (name.charCodeAt(0) === 58 || dropped(name)) continue;
    res.names.push(name);
    res.values.push(v);
  }
  // An empty body said by END_STREAM alone is said by content-length: 0 on HTTP/1.1 (without it, a response that
  // may have a body is read until the connection closes)
  if (endStream && !res.hasContentLength && !isHead && res.status !== 204 && res.status !== 304) res.hasContentLength = true;
  res.reason = statusText(res.status);
  res.framing = endStream ? Framing.None : res.hasContentLength ? Framing.Length : Framing.Chunked;
}

/** a trailer field that may not cross (framing, routing, or what only a head may carry) */
function droppedTrailer(name: string): boolean {
  return dropped(name) || name === 'trailer' || name === 'expect';
}

/** A chunked body's raw trailer section ('Name: value\r\n'..., validated by the decoder) as an HTTP/2 trailer list. */
export function h1TrailersToH2(raw: string): HeaderList {
  const out: HeaderList = [];
  let pos = 0;
  while (pos < raw.length) {
    const eol = raw.indexOf('\r\n', pos);
    const end = eol < 0 ? raw.length : eol;
    const colon = raw.indexOf(':', pos);
    if (colon > pos && colon < end) {
      const name = raw.slice(pos, colon).toLowerCase();
      if (!droppedTrailer(name)) out.push(name, raw.slice(colon + 1, end).trim());
    }
    pos = end + 2;
  }
  return out;
}

/** An HTTP/2 trailer list (well-formed) as an HTTP/1.1 trailer section ('name: value\r\n'..., '' for none). */
export function h2TrailersToH1(h: HeaderList): string {
  let s = '';
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i]!;
    if (name.charCodeAt(0) === 58 || droppedTrailer(name)) continue;
    s += `${name}: ${h[i + 1]!}\r\n`;
  }
  return s;
}
