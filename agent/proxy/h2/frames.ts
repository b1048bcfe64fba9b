// HTTP/2 framing (RFC 9113 section 4 and 6): frame types, flags, setting ids and the output buffer that frames
// are written into in place. Frames produced while handling one read (or within one tick) gather in one
// Output and leave in a single transport write.

export const FRAME = {
  DATA: 0x0, HEADERS: 0x1, PRIORITY: 0x2, RST_STREAM: 0x3, SETTINGS: 0x4, PUSH_PROMISE: 0x5, PING: 0x6,
  GOAWAY: 0x7, WINDOW_UPDATE: 0x8, CONTINUATION: 0x9,
} as const;

export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const;

export const SETTING = {
  HEADER_TABLE_SIZE: 0x1, ENABLE_PUSH: 0x2, MAX_CONCURRENT_STREAMS: 0x3, INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5, MAX_HEADER_LIST_SIZE: 0x6, ENABLE_CONNECT_PROTOCOL: 0x8,
} as const;

export const FRAME_HEADER_SIZE = 9;
export const MAX_WINDOW = 0x7fffffff;
export const DEFAULT_WINDOW = 65535;
export const MIN_MAX_FRAME_SIZE = 16384;
export const MAX_MAX_FRAME_SIZE = 0xffffff;

/** "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": what a client sends before its first frame */
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

const CHUNK = 64 * 1024;
/** Output.rewind keeps a buffer up to this size (a 256 KiB read framed: 4 frames, 256 KiB + 36 bytes) */
const REUSE_MAX = 1024 * 1024;

/**
 * A growing output buffer. Bytes handed to the transport are never overwritten (the transport may hold them
 * until the kernel takes them): a flush hands over a view and the next frames go after it; when the chunk is
 * full a new one is started and the old one is left to the transport and the GC.
 */
export class Output {
  buf: Buffer = Buffer.allocUnsafeSlow(CHUNK);
  start = 0;
  end = 0;

  get pending(): number { return this.end - this.start; }

  /** room for n more bytes at this.end */
  reserve(n: number): void {
    if (this.end + n <= this.buf.length) return;
    const unsent = this.end - this.start;
    // grown geometrically while unsent bytes gather (many DATA frames in one tick: a bulk stream's window opening):
    // growing by the frame copied everything gathered again at each frame, quadratic in the batch (2 MiB of 64 KiB
    // frames copied 31 MiB; 43% of the tunnel's CPU in bench/tunnel.ts)
    const next = Buffer.allocUnsafeSlow(Math.max(CHUNK, unsent + n, unsent > 0 ? 2 * this.buf.length : 0));
    if (unsent > 0) this.buf.copy(next, 0, this.start, this.end);
    this.buf = next;
    this.start = 0;
    this.end = unsent;
  }

  /**
   * The transport copied out everything handed over so far (Conn.holdsWrites() false): the buffer is written from
   * its start again instead of being left to the GC when full (a bulk stream's DATA frames were a fresh 64 KiB+ buffer
   * per frame). A buffer grown past REUSE_MAX for one large batch is let go.
   */
  rewind(): void {
    if (this.start !== this.end) return;
    if (this.buf.length > REUSE_MAX) this.buf = Buffer.allocUnsafeSlow(CHUNK);
    this.start = this.end = 0;
  }

  /** the gathered bytes, handed over (null when there are none) */
  take(): Buffer | null {
    if (this.end === this.start) return null;
    const b = this.buf.subarray(this.start, this.end);
    this.start = this.end;
    return b;
  }

  /** a frame header; the caller has reserved 9 + length bytes */
  header(length: number, type: number, flags: number, streamId: number): void {
    const b = this.buf;
    let p = this.end;
    b[p++] = length >>> 16; b[p++] = (length >>> 8) & 0xff; b[p++] = length & 0xff;
    b[p++] = type; b[p++] = flags;
    b[p++] = (streamId >>> 24) & 0x7f; b[p++] = (streamId >>> 16) & 0xff; b[p++] = (streamId >>> 8) & 0xff; b[p++] = streamId & 0xff;
    this.end = p;
  }

  u32(v: number): void {
    const b = this.buf;
    const p = this.end;
    b[p] = v >>> 24; b[p + 1] = (v >>> 16) & 0xff; b[p + 2] = (v >>> 8) & 0xff; b[p + 3] = v & 0xff;
    this.end = p + 4;
  }

  bytes(src: Uint8Array, from: number, to: number): void {
    if (to - from < 64) {
      const b = this.buf;
      let p = this.end;
      for (let i = from; i < to; i++) b[p++] = src[i];
      this.end = p;
    } else {
      this.buf.set(src.subarray(from, to), this.end);
      this.end += to - from;
    }
  }

  /** a 4-byte-payload frame: RST_STREAM and WINDOW_UPDATE */
  frameU32(type: number, streamId: number, v: number): void {
    this.reserve(13);
    this.header(4, type, 0, streamId);
    this.u32(v);
  }

  settings(pairs: number[], ack: boolean): void {
    const len = ack ? 0 : (pairs.length / 2) * 6;
    this.reserve(9 + len);
    this.header(len, FRAME.SETTINGS, ack ? FLAG.ACK : 0, 0);
    if (ack) return;
    for (let i = 0; i < pairs.length; i += 2) {
      const b = this.buf;
      const p = this.end;
      b[p] = pairs[i] >>> 8; b[p + 1] = pairs[i] & 0xff;
      this.end = p + 2;
      this.u32(pairs[i + 1]);
    }
  }

  /** debug: ASCII text for the peer's logs (what was wrong) */
  goaway(lastStreamId: number, code: number, debug = ''): void {
    const n = Math.min(debug.length, 256);
    this.reserve(17 + n);
    this.header(8 + n, FRAME.GOAWAY, 0, 0);
    this.u32(lastStreamId & MAX_WINDOW);
    this.u32(code);
    this.end += this.buf.write(debug.slice(0, n), this.end, 'latin1');
  }

  /** a PING of ours: 8 bytes of opaque data */
  ping(data: Uint8Array): void {
    this.reserve(17);
    this.header(8, FRAME.PING, 0, 0);
    this.bytes(data, 0, 8);
  }

  /** the answer to a PING: its 8 bytes back with ACK */
  pingAck(src: Uint8Array, from: number): void {
    this.reserve(17);
    this.header(8, FRAME.PING, FLAG.ACK, 0);
    this.bytes(src, from, from + 8);
  }

  /** a header block as HEADERS (+ CONTINUATION frames past maxFrame) */
  headerBlock(streamId: number, block: Uint8Array, endStream: boolean, maxFrame: number): void {
    const total = block.length;
    const frames = total === 0 ? 1 : Math.ceil(total / maxFrame);
    this.reserve(total + 9 * frames);
    let off = 0;
    let type: number = FRAME.HEADERS;
    let flags = endStream ? FLAG.END_STREAM : 0;
    for (;;) {
      const n = Math.min(maxFrame, total - off);
      const last = off + n === total;
      this.header(n, type, last ? flags | FLAG.END_HEADERS : flags, streamId);
      this.bytes(block, off, off + n);
      off += n;
      if (last) return;
      type = FRAME.CONTINUATION;
      flags = 0;
    }
  }
}
