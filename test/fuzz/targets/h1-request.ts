// HTTP/1.1 requests as a client sends them: heads (whole and split at a point the input picks), chunked bodies (whole
// and split), pipelined messages. Crashes: anything thrown. Invariants: a split parse agrees with a whole one; what is
// accepted is self-consistent (framing, no hop-by-hop or framing header passed on, values safe to write out) and
// parses back the same once written out again.
import { ChunkedDecoder, Framing, RequestHeadParse, validHeaderValue, validToken } from '../../../agent/proxy/h1parse.js';
import { cutOf, HTTP_DICT, invariant } from './common.js';

export const dict = HTTP_DICT;

const MAX_HEAD = 2048;
const whole = new RequestHeadParse();
const split = new RequestHeadParse();
const again = new RequestHeadParse();
const FRAMING_NAMES = ['content-length', 'transfer-encoding', 'connection', 'proxy-connection', 'keep-alive', 'upgrade', 'host', 'te', 'http2-settings'];

function snapshot(p: RequestHeadParse): string {
  return JSON.stringify([p.method, p.target, p.minor, p.host, p.headers, p.framing, p.contentLength, p.hasContentLength, p.close,
    p.keepAlive10, p.expectContinue, p.upgrade, p.teTrailers]);
}

/** The chunked body at buf[at..], decoded whole and in two pieces: the same bytes, trailers and end, or the same error. */
function body(buf: Buffer, at: number): number {
  const out: Buffer[] = [];
  let trailers: string | undefined;
  const d = new ChunkedDecoder();
  const n = d.feed(buf, at, { chunkData: (b) => out.push(Buffer.from(b)), chunkEnd: (t) => { trailers = t; } }, 1024);
  const out2: Buffer[] = [];
  let trailers2: string | undefined;
  const d2 = new ChunkedDecoder();
  const sink2 = { chunkData: (b: Buffer) => out2.push(Buffer.from(b)), chunkEnd: (t: string) => { trailers2 = t; } };
  const cut = at + cutOf(buf, buf.length - at);
  let n2 = d2.feed(buf.subarray(0, cut), at, sink2, 1024);
  if (n2 >= 0 && !d2.done) {
    invariant(n2 === cut, `chunked: stopped at ${n2} of a ${cut}-byte piece without an error or the end`);
    const m = d2.feed(buf, cut, sink2, 1024);
    n2 = m < 0 ? m : m;
  }
  invariant((n < 0) === (n2 < 0), `chunked: whole ${n < 0 ? `fails (${d.error})` : 'passes'}, split at ${cut} ${n2 < 0 ? `fails (${d2.error})` : 'passes'}`);
  if (n < 0) return -1;
  invariant(n === n2 && d.done === d2.done, `chunked: whole ends at ${n} (done ${d.done}), split at ${n2} (done ${d2.done})`);
  invariant(Buffer.concat(out).equals(Buffer.concat(out2)) && trailers === trailers2, 'chunked: the body differs when split');
  if (trailers !== undefined) invariant(/^([!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*$/.test(trailers), `chunked: accepted trailers ${JSON.stringify(trailers)}`);
  return d.done ? n : -1;
}

export function run(buf: Buffer): void {
  let at = 0;
  for (let msg = 0; msg < 4 && at < buf.length; msg++) {
    const n = whole.parse(buf, at, MAX_HEAD);
    const cut = at + cutOf(buf, buf.length - at);
    const first = split.parse(buf.subarray(0, cut), at, MAX_HEAD);
    invariant(first <= 0 || first === n, `head: a prefix of ${cut} bytes parsed to ${first}, the whole to ${n}`);
    if (first === 0) {
      const m = split.parse(buf, at, MAX_HEAD);
      invariant(m === n, `head: split at ${cut}: ${m}, whole: ${n}`);
      if (n > 0) invariant(snapshot(split) === snapshot(whole), 'head: split and whole parses differ');
    }
    // an early refusal (a bad method before the head is whole) must never refuse what whole would pass
    if (first < 0) invariant(n < 0, `head: a prefix of ${cut} bytes is refused (${split.error}), the whole gives ${n}`);
    if (n <= 0) return;
    const p = whole;
    invariant(validToken(p.method), `method ${JSON.stringify(p.method)}`);
    invariant(p.target.length > 0 && !/[\x00-\x20\x7f-\xff]/.test(p.target), `target ${JSON.stringify(p.target)}`);
    invariant(!(p.framing === Framing.Chunked && p.hasContentLength), 'chunked with a content-length');
    invariant(p.framing !== Framing.Length || p.contentLength > 0, 'Length framing with no length');
    invariant(p.framing !== Framing.Close, 'a request framed by close');
    invariant(p.minor === 0 || p.host !== undefined, 'HTTP/1.1 without host accepted');
    for (const [name, v] of Object.entries(p.headers)) {
      invariant(validToken(name) && name === name.toLowerCase(), () => `header name ${JSON.stringify(name)}`);
      invariant(!FRAMING_NAMES.includes(name), () => `framing or hop-by-hop header ${JSON.stringify(name)} passed on`);
      for (const x of typeof v === 'string' ? [v] : v) invariant(validHeaderValue(x) && !/^[ \t]|[ \t]$/.test(x), () => `value of ${JSON.stringify(name)}: ${JSON.stringify(x)}`);
    }
    // written out again (as the proxy does upstream) it reads back the same
    let head = `${p.method} ${p.target} HTTP/1.${p.minor}\r\n`;
    if (p.host !== undefined) head += `host: ${p.host}\r\n`;
    for (const [name, v] of Object.entries(p.headers)) for (const x of typeof v === 'string' ? [v] : v) head += `${name}: ${x}\r\n`;
    if (p.framing === Framing.Chunked) head += 'transfer-encoding: chunked\r\n';
    else if (p.hasContentLength) head += `content-length: ${p.contentLength}\r\n`;
    if (p.close && p.minor === 1) head += 'connection: close\r\n';
    if (p.keepAlive10) head += 'connection: keep-alive\r\n';
    if (p.upgrade !== undefined) head += `connection: upgrade\r\nupgrade: ${p.upgrade}\r\n`;
    if (p.teTrailers) head += 'te: trailers\r\n';
    const re = Buffer.from(`${head}\r\n`, 'latin1');
    const r = again.parse(re, 0, 1 << 20);
    invariant(r === re.length, () => `written out again, the head does not parse (${r}: ${again.error}): ${JSON.stringify(head)}`);
    invariant(again.method === p.method && again.target === p.target && again.host === p.host && again.framing === p.framing
      && again.contentLength === p.contentLength && JSON.stringify(again.headers) === JSON.stringify(p.headers),
      () => `written out again, the head reads differently: ${JSON.stringify(head)}`);
    at = n;
    if (p.upgrade !== undefined || p.method === 'CONNECT' || p.close) return;
    if (p.framing === Framing.Length) at += p.contentLength;
    else if (p.framing === Framing.Chunked) {
      const e = body(buf, at);
      if (e < 0) return;
      at = e;
    }
  }
}
