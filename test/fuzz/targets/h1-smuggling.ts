// Request smuggling, differentially: the messages our parser frames out of a byte stream (method, target, body) must
// be the ones node:http's llhttp frames out of it, message by message, or we must refuse earlier (stricter). A
// message we accept whole where llhttp frames something else, or refuses, is a finding: a backend or a client
// parsing like llhttp would see the stream split differently from us.
import { createRequire } from 'node:module';
import { ChunkedDecoder, Framing, RequestHeadParse } from '../../../agent/proxy/h1parse.js';
import { HTTP_DICT, invariant } from './common.js';

export const dict = HTTP_DICT;
const require = createRequire(import.meta.url);
// node:http's own parser (llhttp), the one every Node server uses: the oracle
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const { HTTPParser, methods } = require('_http_common') as { HTTPParser: any; methods: string[] };

interface Msg { method: string; target: string; body: string; end: boolean }
const MAX_HEAD = 8192;

/** The request-targets http1.ts serves (origin-form, absolute-form http://authority..., * for OPTIONS). */
function targetServed(method: string, target: string): boolean {
  if (method === 'CONNECT') return false;
  if (target.startsWith('/')) return true;
  if (target === '*') return method === 'OPTIONS';
  const m = /^http:\/\/([^/?]*)/i.exec(target);
  return m !== null && m[1] !== '' && !m[1]!.includes('@');
}

function ours(buf: Buffer): { msgs: Msg[]; error: string } {
  const p = new RequestHeadParse();
  const msgs: Msg[] = [];
  let at = 0;
  while (at < buf.length) {
    const n = p.parse(buf, at, MAX_HEAD);
    if (n < 0) return { msgs, error: p.error };
    if (n === 0) return { msgs, error: '' };
    // http1.ts answers any other request-target (and CONNECT) with 400 / 405 and closes: no message after it
    if (!targetServed(p.method, p.target)) return { msgs, error: 'request-target refused (http1.ts)' };
    let body: Buffer = Buffer.alloc(0);
    at = n;
    if (p.framing === Framing.Length) {
      if (buf.length - at < p.contentLength) return { msgs, error: '' };
      body = buf.subarray(at, at + p.contentLength);
      at += p.contentLength;
    } else if (p.framing === Framing.Chunked) {
      const parts: Buffer[] = [];
      const d = new ChunkedDecoder();
      const e = d.feed(buf, at, { chunkData: (b) => parts.push(b), chunkEnd: () => {} }, MAX_HEAD);
      if (e < 0) return { msgs, error: d.error };
      if (!d.done) return { msgs, error: '' };
      body = Buffer.concat(parts);
      at = e;
    }
    // after an upgrade, CONNECT or close the rest of the stream is not HTTP messages: compare no further
    const end = p.upgrade !== undefined || p.method === 'CONNECT' || p.close;
    msgs.push({ method: p.method, target: p.target, body: body.toString('latin1'), end });
    if (end) break;
  }
  return { msgs, error: '' };
}

function llhttp(buf: Buffer): { msgs: Msg[]; error: string } {
  const parser = new HTTPParser();
  parser.initialize(HTTPParser.REQUEST, {}, MAX_HEAD, 0);
  const msgs: Msg[] = [];
  let cur: { method: string; target: string; body: Buffer[]; end: boolean } | undefined;
  // past 32 fields llhttp hands the head over in pieces: the URL comes with the first piece, not with the last
  let url = '';
  parser[HTTPParser.kOnHeaders] = (_h: string[], u: string) => { if (!cur) url += u; }; // (after the head: trailers)
  parser[HTTPParser.kOnHeadersComplete] = (_maj: number, _min: number, _h: string[], method: number, target: string | undefined, _s: unknown, _m: unknown, upgrade: boolean, keepAlive: boolean) => {
    cur = { method: methods[method] ?? String(method), target: target ?? url, body: [], end: upgrade || !keepAlive };
    url = '';
    return 0;
  };
  parser[HTTPParser.kOnBody] = (b: Buffer) => { cur?.body.push(Buffer.from(b)); };
  parser[HTTPParser.kOnMessageComplete] = () => {
    if (cur) msgs.push({ method: cur.method, target: cur.target, body: Buffer.concat(cur.body).toString('latin1'), end: cur.end });
    cur = undefined;
  };
  const r = parser.execute(buf);
  parser.close?.();
  return { msgs, error: r instanceof Error ? `${(r as Error & { code?: string }).code}` : '' };
}

const ALLOWED_REFUSALS = ['HPE_INVALID_METHOD', 'HPE_INVALID_VERSION', 'HPE_UNEXPECTED_CONTENT_LENGTH', 'HPE_INVALID_CONTENT_LENGTH'];

export function run(buf: Buffer): void {
  const a = ours(buf);
  const b = llhttp(buf);
  for (let i = 0; i < a.msgs.length; i++) {
    const x = a.msgs[i]!;
    const y = b.msgs[i];
    // Refusals of llhttp that frame nothing differently (the stream stops there, no desync): a method not on its
    // fixed list (any token is a method, RFC 9110 9.1), HTTP/1.2-1.9, which RFC 9112 2.3 has us read as 1.1, a
    // Content-Length repeated with the same value (RFC 9110 8.6 allows it; differing values we refuse too) and one
    // with OWS after the digits (not part of the value, RFC 9112 5; the same number for both).
    if (!y && i === b.msgs.length && ALLOWED_REFUSALS.includes(b.error)) break;
    invariant(y !== undefined, () => `message ${i}: we frame ${JSON.stringify(x.method)} ${JSON.stringify(x.target)} with a ${x.body.length}-byte body, llhttp does not (${JSON.stringify(b.error || 'incomplete')})`);
    invariant(x.method === y.method && x.target === y.target, () => `message ${i}: we read ${JSON.stringify(x.method + ' ' + x.target)}, llhttp ${JSON.stringify(y.method + ' ' + y.target)}`);
    invariant(x.body === y.body, () => `message ${i}: a ${x.body.length}-byte body for us, ${y.body.length} for llhttp`);
    if (x.end || y.end) break;
  }
}
