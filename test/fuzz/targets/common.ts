// What every target shares: how an invariant failure is reported (thrown: the engine counts what a target throws).
export class InvariantBroken extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvariantBroken';
  }
}

export function invariant(ok: unknown, message: string | (() => string)): asserts ok {
  if (!ok) throw new InvariantBroken(typeof message === 'string' ? message : message());
}

/** A split point taken from the input itself, so that the fuzzer controls it (and a finding replays exactly). */
export function cutOf(data: Buffer, len: number): number {
  if (len <= 1 || data.length === 0) return 0;
  return 1 + ((data[data.length - 1]! * 31 + data[0]!) % (len - 1));
}

export const HTTP_DICT = [
  'GET ', 'POST ', 'HEAD ', 'PUT ', 'CONNECT ', 'OPTIONS ', 'DELETE ', ' HTTP/1.1\r\n', ' HTTP/1.0\r\n', 'HTTP/1.1 200 OK\r\n',
  'HTTP/1.1 101 Switching Protocols\r\n', 'HTTP/1.1 100 Continue\r\n', 'HTTP/1.1 204 No Content\r\n', 'HTTP/1.1 304 Not Modified\r\n',
  '\r\n', '\r\n\r\n', '\n', '\r', ': ', ':', ' ', '\t', ',', ';', '/', '*', 'http://a/', 'Host: a\r\n', 'host',
  'Content-Length: ', 'content-length', 'Content-Length: 0\r\n', 'Content-Length: 5\r\n', 'Transfer-Encoding: chunked\r\n',
  'transfer-encoding', 'chunked', 'gzip, chunked', 'identity', 'Connection: close\r\n', 'Connection: keep-alive\r\n',
  'Connection: upgrade\r\n', 'Upgrade: websocket\r\n', 'Upgrade: h2c\r\n', 'connection', 'keep-alive', 'close', 'upgrade',
  'Proxy-Connection: ', 'Expect: 100-continue\r\n', 'TE: trailers\r\n', 'te', 'trailers', '__proto__', 'HTTP2-Settings: ',
  '0\r\n\r\n', '5\r\nhello\r\n', '0\r\nX-T: 1\r\n\r\n', 'ffffffffffff', ';ext=1', '\x00', '\x7f', '\xff', 'HTTP/2.0', 'HTTP/1.9',
];

/** The messages of an input from `from` on: each a 2-byte length, then that many bytes (the last takes what is left). */
export function* messages(data: Buffer, from: number): Generator<[start: number, end: number]> {
  let p = from;
  while (p < data.length) {
    const n = p + 2 <= data.length ? data.readUInt16BE(p) : data.length;
    const start = Math.min(p + 2, data.length);
    const end = Math.min(start + n, data.length);
    p = end;
    yield [start, end];
  }
}
