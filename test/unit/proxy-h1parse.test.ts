// The HTTP/1.1 parser on its own: heads split at every byte, the chunked decoder fed in every possible
// piece size (byte-exact), framing decisions for requests and responses, and what it refuses.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { ChunkedDecoder, Framing, ParseError, RequestHeadParse, ResponseHeadParse, parseContentLength } from '../../agent/proxy/h1parse.js';

t.test('a request head parses the same whatever way it is split', async (t) => {
  const head = 'POST /a/b?c=d HTTP/1.1\r\nHost: svc\r\nX-Multi: 1\r\nx-multi: 2\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nTE: trailers\r\n\r\nhello';
  const buf = Buffer.from(head, 'latin1');
  const p = new RequestHeadParse();
  const end = head.indexOf('\r\n\r\n') + 4;
  const wrong: number[] = [];
  for (let cut = 1; cut < buf.length; cut++) {
    if (p.parse(buf.subarray(0, cut), 0, 65536) !== (cut < end ? 0 : end)) wrong.push(cut);
  }
  t.same(wrong, [], 'every prefix: need more, until the head is whole');
  const n = p.parse(buf, 0, 65536);
  t.equal(n, head.indexOf('\r\n\r\n') + 4);
  t.equal(p.method, 'POST');
  t.equal(p.target, '/a/b?c=d');
  t.equal(p.host, 'svc');
  t.equal(p.framing, Framing.Length);
  t.equal(p.contentLength, 5);
  t.ok(p.teTrailers);
  t.same(Object.keys(p.headers).sort(), ['x-multi']);
  t.same(p.headers['x-multi'], ['1', '2']);
  // a fast-mode record (headers.ts) that inherits nothing: its prototype is empty and has none itself
  const proto = Object.getPrototypeOf(p.headers) as object;
  t.equal(Object.getPrototypeOf(proto), null, 'headers inherit nothing');
  t.same(Reflect.ownKeys(proto), [], 'their prototype is empty');
  t.notOk('constructor' in p.headers || 'toString' in p.headers, 'no name is inherited');
});

t.test('request framing and refusals', async (t) => {
  const p = new RequestHeadParse();
  const parse = (s: string): number => p.parse(Buffer.from(s, 'latin1'), 0, 1024);
  t.ok(parse('GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n') > 0);
  t.equal(p.framing, Framing.Chunked);
  t.ok(parse('GET / HTTP/1.0\r\n\r\n') > 0);
  t.ok(p.close, 'HTTP/1.0 closes by default');
  t.ok(parse('GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n') > 0);
  t.notOk(p.close);
  t.ok(p.keepAlive10);
  t.ok(parse('GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\nhttp2-settings: AAA\r\n\r\n') > 0);
  t.equal(p.upgrade, undefined, 'Upgrade: h2c is ignored');
  t.notOk('http2-settings' in p.headers);
  t.ok(parse('GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n') > 0);
  t.equal(p.upgrade, 'websocket');
  t.ok(parse('POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 7, 7\r\n\r\n') > 0, 'identical content-length list accepted');
  t.equal(p.contentLength, 7);
  t.ok(parse('\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n') > 0, 'one leading empty line ignored');
  t.equal(parse('GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n'), -ParseError.Bad);
  t.equal(parse('GET / HTTP/1.1\r\nhost: x\r\n__proto__: 1\r\n\r\n'), -ParseError.Bad);
  t.equal(parse('GET / HTTP/1.1\r\nhost: x\r\nx-a: \u00ff\u0080ok\r\n\r\n') > 0, true, 'obs-text in a value is kept');
  t.equal(p.headers['x-a'], '\u00ff\u0080ok');
  t.equal(parse(`GET / HTTP/1.1\r\nhost: x\r\nx: ${'a'.repeat(2000)}\r\n\r\n`), -ParseError.TooLarge);
  t.equal(parse('G@T / HTTP/1.1\r\n'), -ParseError.Bad, 'garbage method refused before the head is complete');
  t.equal(parse('GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n'), -ParseError.NotImplemented);
  t.equal(parseContentLength('0'), 0);
  t.equal(parseContentLength('007'), 7);
  t.equal(parseContentLength(''), -1);
  t.equal(parseContentLength('1 2'), -1);
  t.equal(parseContentLength('-1'), -1);
  t.equal(parseContentLength('9999999999999999'), -1, 'beyond 15 digits');
});

t.test('response framing', async (t) => {
  const r = new ResponseHeadParse();
  const parse = (s: string, head = false): number => r.parse(Buffer.from(s, 'latin1'), 0, 4096, head);
  t.ok(parse('HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc') > 0);
  t.equal(r.framing, Framing.Length);
  t.ok(parse('HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n', true) > 0);
  t.equal(r.framing, Framing.None, 'HEAD: no body whatever the length says');
  t.ok(r.hasContentLength);
  t.ok(parse('HTTP/1.1 204 No Content\r\n\r\n') > 0);
  t.equal(r.framing, Framing.None);
  t.ok(parse('HTTP/1.0 200 OK\r\n\r\n') > 0);
  t.equal(r.framing, Framing.Close);
  t.ok(r.close);
  t.ok(parse('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: x-foo\r\nx-foo: 1\r\nx-keep: 2\r\n\r\n') > 0);
  t.equal(r.framing, Framing.Chunked);
  t.same(r.names, ['x-keep'], 'names listed in Connection removed');
  t.ok(parse('HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n') > 0, 'empty reason phrase');
  t.equal(r.reason, '');
  t.equal(parse('HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n'), -ParseError.Bad);
  t.equal(parse('HTTP/1.1 2x0 OK\r\n\r\n'), -ParseError.Bad);
});

t.test('chunked decoder: byte-exact for every piece size, trailers kept, the next message left alone', async (t) => {
  const data = randomBytes(3000);
  let wire = '';
  const sizes = [1, 15, 16, 255, 1000, 1713];
  let off = 0;
  for (const s of sizes) { wire += `${s.toString(16)}${s === 255 ? ';ext=1' : ''}\r\n${data.subarray(off, off + s).toString('latin1')}\r\n`; off += s; }
  wire += '0\r\nx-checksum: abc\r\n\r\nNEXT';
  const bytes = Buffer.from(wire, 'latin1');
  for (const piece of [1, 2, 3, 7, 64, 1000, bytes.length]) {
    const d = new ChunkedDecoder();
    const got: Buffer[] = [];
    let trailers = '';
    let used = 0;
    for (let i = 0; i < bytes.length && !d.done; i += piece) {
      const part = bytes.subarray(i, Math.min(i + piece, bytes.length));
      const n = d.feed(part, 0, { chunkData: (b) => got.push(Buffer.from(b)), chunkEnd: (tr) => { trailers = tr; } }, 4096);
      if (n < 0) { t.fail(`piece ${piece}: error ${d.error}`); break; }
      used = i + n;
    }
    t.ok(d.done, `piece ${piece}: done`);
    t.equal(Buffer.concat(got).equals(data.subarray(0, off)), true, `piece ${piece}: data byte-exact`);
    t.equal(trailers, 'x-checksum: abc\r\n');
    t.equal(bytes.subarray(used).toString(), 'NEXT', `piece ${piece}: stops after the message`);
  }
  const bad = (s: string): number => new ChunkedDecoder().feed(Buffer.from(s, 'latin1'), 0, { chunkData: () => {}, chunkEnd: () => {} }, 4096);
  t.equal(bad('g\r\n'), -1, 'non-hex size');
  t.equal(bad('1\r\nab\r\n'), -1, 'data longer than the size');
  t.equal(bad('1\nab'), -1, 'bare LF after the size');
  t.equal(bad('1000000000000\r\n'), -1, 'size beyond 12 hex digits');
  t.equal(bad('0\r\nbad trailer\r\n\r\n'), -1, 'malformed trailer');
});

// Findings of the fuzz targets (test/fuzz/: h1-request, h1-smuggling), each once wrong.
t.test('fuzz findings: the CR of an empty line before a request, alone in a read, waits for its LF', async (t) => {
  const p = new RequestHeadParse();
  const stream = Buffer.from('\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n', 'latin1');
  t.equal(p.parse(stream.subarray(0, 1), 0, 1024), 0, 'a lone CR: more bytes needed (was: 400 bad method)');
  t.equal(p.parse(stream, 0, 1024), stream.length);
  t.equal(p.parse(Buffer.from('\rGET', 'latin1'), 0, 1024), -ParseError.Bad, 'a CR followed by anything but LF is still refused');
});

t.test('fuzz findings: a chunk size line is read by its grammar, as llhttp reads it (no two readings of one body)', async (t) => {
  const decode = (s: string): { n: number; body: string; error: string } => {
    const d = new ChunkedDecoder();
    const parts: Buffer[] = [];
    const n = d.feed(Buffer.from(s, 'latin1'), 0, { chunkData: (b) => parts.push(b), chunkEnd: () => {} }, 1024);
    return { n, body: Buffer.concat(parts).toString('latin1'), error: d.error };
  };
  for (const ok of ['5;a\r\nhello\r\n0\r\n\r\n', '5;a=b\r\nhello\r\n0\r\n\r\n', '5;a="q\\"x";b\r\nhello\r\n0\r\n\r\n', '5;a=b;c\r\nhello\r\n0;x=1\r\n\r\n']) {
    t.equal(decode(ok).body, 'hello', `accepted: ${JSON.stringify(ok.split('\r')[0])}`);
  }
  for (const bad of ['5 \r\nhello\r\n0\r\n\r\n', '0\t\r\n\r\n', '0;\r\n\r\n', '0; \r\n\r\n', '5;a=\r\nhello\r\n0\r\n\r\n', '5;a="x\r\nhello\r\n0\r\n\r\n', '5 x\r\nhello\r\n0\r\n\r\n', '5;a b\r\nhello\r\n0\r\n\r\n', '5 ;a\r\nhello\r\n0\r\n\r\n', '5;a =b\r\nhello\r\n0\r\n\r\n', '5;a=b \r\nhello\r\n0\r\n\r\n']) {
    t.equal(decode(bad).n, -1, `refused: ${JSON.stringify(bad.split('\r')[0])} (${decode(bad).error})`);
  }
  for (const trailer of ['Transfer-Encoding: chunked', 'content-length: 5', 'Connection: close', 'upgrade: x', 'Host: h']) {
    const r = decode(`0\r\nx-ok: 1\r\n${trailer}\r\n\r\n`);
    t.equal(r.n, -1, `a framing or hop-by-hop field in the trailers is refused: ${trailer}`);
    t.equal(r.error, 'framing or hop-by-hop field in trailers');
  }
  t.ok(decode('0\r\nx-transfer-encoding: 1\r\n\r\n').n > 0, 'other trailers pass');
});

t.test('fuzz findings: list elements lose OWS only, not NBSP (0xA0 is obs-text, not whitespace)', async (t) => {
  const p = new RequestHeadParse();
  const parse = (s: string): number => p.parse(Buffer.from(s, 'latin1'), 0, 1024);
  t.equal(parse('POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: \u00a0chunked\r\n\r\n'), -ParseError.Bad, 'not chunked: refused (was: read as chunked)');
  t.ok(parse('POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: \tchunked \r\n\r\n') > 0);
  t.equal(p.framing, Framing.Chunked, 'OWS around it is fine');
  t.ok(parse('GET / HTTP/1.1\r\nhost: x\r\nconnection: close\u00a0\r\n\r\n') > 0);
  t.notOk(p.close, '"close\\xa0" is not close');
  const r = new ResponseHeadParse();
  t.ok(r.parse(Buffer.from('HTTP/1.1 200 OK\r\ntransfer-encoding: \u00a0chunked\r\n\r\n', 'latin1'), 0, 1024, false) > 0);
  t.equal(r.framing, Framing.Close, 'a response whose last coding is not chunked is read until close');
});

t.test('fuzz finding (h1-smuggling): a tab after a Content-Length or Transfer-Encoding value is refused, as llhttp refuses it', async (t) => {
  // node:http's parser, the oracle the smuggling target uses: what a Node backend or client does with the same bytes
  const { HTTPParser } = createRequire(import.meta.url)('_http_common') as { HTTPParser: any }; // eslint-disable-line @typescript-eslint/no-explicit-any
  const llhttpTakes = (kind: 'REQUEST' | 'RESPONSE', text: string): boolean => {
    const p = new HTTPParser();
    p.initialize(HTTPParser[kind], {}, 8192, 0);
    let done = false;
    p[HTTPParser.kOnHeadersComplete] = () => 0;
    p[HTTPParser.kOnMessageComplete] = () => { done = true; };
    const r = p.execute(Buffer.from(text, 'latin1'));
    return !(r instanceof Error) && done;
  };
  const req = new RequestHeadParse();
  const res = new ResponseHeadParse();
  const cases: [field: string, value: string, body: string][] = [
    ['transfer-encoding', 'chunked\t', '3\r\nabc\r\n0\r\n\r\n'],
    ['transfer-encoding', 'chunked \t', '3\r\nabc\r\n0\r\n\r\n'],
    ['transfer-encoding', 'chunked\t ', '3\r\nabc\r\n0\r\n\r\n'],
    ['transfer-encoding', '\tchunked', '3\r\nabc\r\n0\r\n\r\n'],
    ['transfer-encoding', 'chunked  ', '3\r\nabc\r\n0\r\n\r\n'],
    ['content-length', '3\t', 'abc'],
    ['content-length', '3 \t', 'abc'],
    ['content-length', '\t3', 'abc'],
    ['content-length', '3 ', 'abc'],
  ];
  for (const [field, value, body] of cases) {
    const head = `POST / HTTP/1.1\r\nhost: x\r\n${field}: ${value}\r\n\r\n`;
    const ours = req.parse(Buffer.from(head, 'latin1'), 0, 1024) > 0;
    const theirs = llhttpTakes('REQUEST', head + body);
    const tab = /[ \t]*\t[ \t]*$/.test(value);
    t.equal(ours, !tab, `request ${JSON.stringify(`${field}: ${value}`)}: ${tab ? 'refused' : 'taken'}${tab ? ` (${req.error})` : ''}`);
    t.ok(!ours || theirs, `  and llhttp takes it too when we do (llhttp: ${theirs ? 'taken' : 'refused'})`);
    if (tab) t.equal(req.error, `tab after the ${field} value`);
    const rhead = `HTTP/1.1 200 OK\r\n${field}: ${value}\r\n\r\n`;
    const rours = res.parse(Buffer.from(rhead, 'latin1'), 0, 1024, false) > 0;
    t.equal(rours, !tab, `response ${JSON.stringify(`${field}: ${value}`)}: the same`);
    t.ok(!rours || llhttpTakes('RESPONSE', rhead + body), '  and llhttp takes it too when we do');
  }
  // any other field keeps its trailing OWS trimmed, tab or not (RFC 9110 5.5), as llhttp does
  t.ok(req.parse(Buffer.from('GET / HTTP/1.1\r\nhost: x\r\nx-a: b\t\r\nconnection: close\t\r\n\r\n', 'latin1'), 0, 1024) > 0);
  t.equal(req.headers['x-a'], 'b');
  t.ok(req.close, '"close\\t" is close');
});

t.test('a response head\'s names, values and reason are made from its buffer when asked, right after any number of heads', async (t) => {
  const r = new ResponseHeadParse();
  const parse = (s: string): number => r.parse(Buffer.from(s, 'latin1'), 0, 64 * 1024, false);
  // names in any case lower-cased, values without their OWS, framing and the fields Connection lists taken out
  t.ok(parse('HTTP/1.1 203 Not Quite\r\nContent-Type: text/plain\r\nX-Drop: 1\r\nConnection: X-Drop\r\nX-B:  two \r\nContent-Length: 2\r\n\r\nok') > 0);
  t.equal(r.reason, 'Not Quite');
  t.same(r.names, ['content-type', 'x-b']);
  t.same(r.values, ['text/plain', 'two']);
  t.notOk(r.verbatim, 'a connection field: not passed as it came');
  // the same parser, a head with fewer fields and none of the framing ones in lower case: nothing of the last one left
  t.ok(parse('HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 2\r\nx-only: 1\r\n\r\nok') > 0);
  t.same([r.reason, r.names, r.values, r.contentLength, r.verbatim], ['OK', ['x-only'], ['1'], 2, true]);
  t.ok(parse('HTTP/1.1 204\r\n\r\n') > 0);
  t.same([r.reason, r.names, r.values], ['', [], []], 'no reason, no fields');
  // more fields than the first span table holds (16)
  const many = Array.from({ length: 40 }, (_, i) => `X-F${i}: v${i}\r\n`).join('');
  t.ok(parse(`HTTP/1.1 200 OK\r\n${many}content-length: 0\r\n\r\n`) > 0);
  t.same(r.names, Array.from({ length: 40 }, (_, i) => `x-f${i}`));
  t.same(r.values, Array.from({ length: 40 }, (_, i) => `v${i}`));
  // names and values are what the writer may change (the HTTP/2 translation builds lists from them): kept as set
  r.names = ['a'];
  r.values = ['b'];
  t.same([r.names, r.values], [['a'], ['b']]);
  // a read larger than what a pooled connection may keep alive: its strings are made at once, the buffer let go
  // (written over here to show it: the names and reason are still the ones parsed)
  const big = Buffer.from(`HTTP/1.1 200 Fine\r\nx-a: b\r\ncontent-length: 20000\r\n\r\n${'z'.repeat(20000)}`, 'latin1');
  t.ok(r.parse(big, 0, 64 * 1024, false) > 0);
  big.fill(0x41);
  t.same([r.reason, r.names, r.values], ['Fine', ['x-a'], ['b']]);
  // a refused head: the error, and the fields before the bad line as before
  t.equal(parse('HTTP/1.1 200 OK\r\nx-a: 1\r\nbad line\r\n\r\n'), -ParseError.Bad);
  t.same(r.names, ['x-a']);
});

t.test('a request head is verbatim only when the proxy would write the same fields', async (t) => {
  const p = new RequestHeadParse();
  const verbatim = (head: string): boolean => {
    const n = p.parse(Buffer.from(head, 'latin1'), 0, 8192);
    t.ok(n > 0, `parsed: ${JSON.stringify(head)}`);
    return p.verbatim;
  };
  t.ok(verbatim('GET / HTTP/1.1\r\nHost: a\r\n\r\n'));
  t.ok(verbatim('POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-A:  b \r\n\r\n'), 'one content-length of digits');
  t.ok(verbatim('GET / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n'), 'an expectation the proxy does not answer passes');
  t.ok(verbatim('\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n') && p.headStart === 2, 'after an empty line: from the request line');
  for (const [why, head] of [
    ['HTTP/1.0', 'GET / HTTP/1.0\r\nHost: a\r\n\r\n'],
    ['absolute-form', 'GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n'],
    ['asterisk-form', 'OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n'],
    ['connection', 'GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n'],
    ['keep-alive', 'GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\n\r\n'],
    ['proxy-connection', 'GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: x\r\n\r\n'],
    ['upgrade', 'GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n'],
    ['transfer-encoding', 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['te', 'GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n'],
    ['expect 100-continue', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n'],
    ['http2-settings', 'GET / HTTP/1.1\r\nHost: a\r\nHTTP2-Settings: x\r\n\r\n'],
    ['a content-length list', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n'],
    ['two content-lengths', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n'],
  ] as const) t.notOk(verbatim(head), why);
  t.ok(verbatim('GET / HTTP/1.1\r\nHost: a\r\n\r\n'), 'reset for the next head');
});

t.test('names, methods, targets and hosts: the same strings as before whatever the case, made again when they differ', async (t) => {
  const p = new RequestHeadParse();
  const parse = (head: string): void => { t.ok(p.parse(Buffer.from(head, 'latin1'), 0, 8192) > 0, head); };
  parse('GET /a HTTP/1.1\r\nHOST: one\r\nUser-Agent: x\r\nX-Custom-Name: 1\r\nAccept-ENCODING: gzip\r\n\r\n');
  t.equal(p.method, 'GET');
  t.equal(p.target, '/a');
  t.equal(p.host, 'one');
  t.same(Object.keys(p.headers), ['user-agent', 'x-custom-name', 'accept-encoding'], 'names lower case, common and not');
  parse('GET /a HTTP/1.1\r\nhost: one\r\n\r\n');
  t.equal(p.target, '/a');
  t.equal(p.host, 'one');
  parse('get /b HTTP/1.1\r\nHost: onE\r\nhostx: 1\r\nhos: 2\r\n\r\n');
  t.equal(p.method, 'get', 'methods are case-sensitive: not the interned GET');
  t.equal(p.target, '/b', 'another target: made again');
  t.equal(p.host, 'onE', 'another host: made again');
  t.same(Object.keys(p.headers), ['hostx', 'hos'], 'names that only start like a common one');
  parse('PURGE /b HTTP/1.1\r\nHost: onE\r\n\r\n');
  t.equal(p.method, 'PURGE');
  parse('OPTIONS /b HTTP/1.1\r\nHost: onE\r\nContent-Length: 0\r\n\r\n');
  t.equal(p.method, 'OPTIONS');
  t.equal(p.hasContentLength, true, 'framing names still taken by the framing rules');
  const r = new ResponseHeadParse();
  const res = Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Thing: 1\r\nSET-COOKIE: a\r\nContent-Length: 0\r\n\r\n', 'latin1');
  t.ok(r.parse(res, 0, 8192, false) > 0);
  t.same(r.names, ['content-type', 'x-thing', 'set-cookie']);
});
