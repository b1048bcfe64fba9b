// HTTP/1.1 responses as an upstream sends them: the head (whole and split), for a HEAD request or not (the last input
// byte says), then a chunked body. Invariants: split agrees with whole; the framing is one RFC 9112 6.3 allows; no
// framing or hop-by-hop header is passed on; what is passed on is safe to write out.
import { ChunkedDecoder, Framing, ResponseHeadParse, validHeaderValue, validToken } from '../../../agent/proxy/h1parse.js';
import { cutOf, HTTP_DICT, invariant } from './common.js';

export const dict = HTTP_DICT;
const whole = new ResponseHeadParse();
const split = new ResponseHeadParse();
const HOP = ['content-length', 'transfer-encoding', 'connection', 'proxy-connection', 'keep-alive', 'upgrade'];

const snap = (p: ResponseHeadParse) => JSON.stringify([p.status, p.reason, p.minor, p.names, p.values, p.framing, p.contentLength, p.hasContentLength, p.close, p.upgrade]);

export function run(buf: Buffer): void {
  const head = buf.length > 0 && (buf[buf.length - 1]! & 1) === 1;
  const n = whole.parse(buf, 0, 2048, head);
  const cut = cutOf(buf, buf.length);
  const first = split.parse(buf.subarray(0, cut), 0, 2048, head);
  invariant(first <= 0 || first === n, `a prefix of ${cut} bytes parsed to ${first}, the whole to ${n}`);
  if (first < 0) invariant(n < 0, `a prefix of ${cut} bytes is refused (${split.error}), the whole gives ${n}`);
  if (first === 0 && n !== 0) {
    invariant(split.parse(buf, 0, 2048, head) === n, 'split and whole end differently');
    if (n > 0) invariant(snap(split) === snap(whole), 'split and whole parses differ');
  }
  if (n <= 0) return;
  const p = whole;
  invariant(p.status >= 100 && p.status <= 599, `status ${p.status}`);
  invariant(p.names.length === p.values.length, 'names and values differ in length');
  p.names.forEach((name, i) => {
    invariant(validToken(name) && name === name.toLowerCase(), () => `header name ${JSON.stringify(name)}`);
    invariant(!HOP.includes(name), () => `framing or hop-by-hop header ${JSON.stringify(name)} passed on`);
    invariant(validHeaderValue(p.values[i]!), () => `value of ${JSON.stringify(name)}: ${JSON.stringify(p.values[i])}`);
  });
  invariant(validHeaderValue(p.reason), () => `reason ${JSON.stringify(p.reason)}`);
  if (head || p.status < 200 || p.status === 204 || p.status === 304) invariant(p.framing === Framing.None, `a body on a ${p.status}${head ? ' to HEAD' : ''}`);
  if (p.framing === Framing.Close) invariant(p.close, 'read-until-close framing on a connection kept open');
  if (p.framing === Framing.Length) invariant(p.contentLength > 0, 'Length framing with no length');
  if (p.framing !== Framing.Chunked) return;
  const out: Buffer[] = [];
  const d = new ChunkedDecoder();
  const r = d.feed(buf, n, { chunkData: (b) => out.push(b), chunkEnd: () => {} }, 1024);
  invariant(r < 0 || r <= buf.length, `chunked: consumed ${r} of ${buf.length}`);
}
