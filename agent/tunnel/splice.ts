// One CONNECT stream spliced to one TCP socket, both ends of the tunnel the same way, on the proxy's own HTTP/2
// session (agent/proxy/h2/session.ts: no Duplex per stream, DATA handed over as views of the bytes read, all frames of
// one read in one write). What the tests pin:
//  - back-pressure both ways: DATA is counted back to the peer (stream.consumed, a WINDOW_UPDATE once half the
//    stream window is used) only once the socket took it, so a full socket holds the peer back by its stream window;
//    a stream whose peer's windows are full (sendData false) pauses the socket until onWritable;
//  - half-close: a FIN becomes END_STREAM and END_STREAM becomes a FIN, so a client that shuts its write side still
//    reads the whole answer;
//  - a reset stays a reset: a TCP RST (the socket closed with an error, or an end behind which the kernel holds a
//    reset: sockreset.ts) becomes RST_STREAM CONNECT_ERROR (RFC 9113 8.5), and a reset stream resets the socket;
//  - a stream that ended normally both ways sends no RST_STREAM (nghttp2 peers count received resets and end the
//    connection after ~1,000: unit/tunnel-many). The session closes such a stream itself, with no frame.
import type { Socket } from 'node:net';
import type { H2SessionOptions, H2Stream, H2StreamHandler } from '../proxy/h2/session.js';
import { H2_ERROR } from '../proxy/h2/session.js';
import { NetConn, NetIo } from '../proxy/netio.js';
import type { PeerStats } from './metrics.js';
import { hiddenReset } from './sockreset.js';

/**
 * HTTP/2 settings both ends announce, sized for bulk: a 4 MiB stream window (one stream is not held to 64 KiB in
 * flight: ztunnel uses 256 KiB+ buffers; 4 MiB covers a loopback or LAN bandwidth-delay product at 10+ Gbit/s) and a
 * 16 MiB connection window, given back as it is used (the stream windows are what hold a slow reader's peer back).
 * WINDOW_UPDATEs are batched by the session (at half a window). Frames we send are the session's largest (64 KiB,
 * whatever the peer allows beyond it); we accept 64 KiB too (a frame split across reads is reassembled in a buffer of
 * that size per connection).
 */
export const TUNNEL_H2: Pick<H2SessionOptions, 'settings' | 'connectionWindowSize'> = {
  settings: { initialWindowSize: 4 * 1024 * 1024, maxFrameSize: 64 * 1024, maxConcurrentStreams: 1000 },
  connectionWindowSize: 16 * 1024 * 1024,
};

let io: NetIo | undefined;

/**
 * The epoll loop (agent/proxy/netio.ts) of the tunnel's TLS connections, both ends, one per process, made at first
 * use. It keeps the process alive only while a socket of it is open.
 */
export function tunnelIo(): NetIo {
  return (io ??= new NetIo());
}

/**
 * The native queue a tunnel TLS connection may hold before write() says wait (NetConn.highWaterMark): a read's 256 KiB
 * of frames is encrypted and queued whole, as ztunnel's 256 KiB buffers, rather than held in the session's stream queue.
 */
export const TUNNEL_TLS_HIGH_WATER = 256 * 1024;

/** Count an accepted stream (200) as open (until its splice calls the returned function), and in the total. */
export function track(stats: PeerStats): () => void {
  stats.streamsOpen++;
  stats.streamsTotal++;
  stats.lastActive = Date.now();
  let open = true;
  return () => {
    if (!open) return;
    open = false;
    stats.streamsOpen--;
    stats.lastActive = Date.now();
  };
}

/**
 * The pod-side socket of a splice: a netio NetConn (the agents' own: the hand-over's accepted connections, the
 * destination's connections to pods; in the tunnel's loop, no libuv stream) or a node:net Socket (tests, callers of
 * TunnelClient.open() with one). A NetConn must have allowHalfOpen set (the splice passes half-closes on).
 */
export type SpliceSocket = Socket | NetConn;

/** DATA that arrived before the socket was there (the server's pod connect): handed to the splice when it starts. */
export interface Early { chunks: Buffer[]; ended: boolean }

/**
 * The handler of a stream spliced to `sock` (set as stream.handler by start()). `done` runs once, when both the
 * stream and the socket are over.
 */
export class Splice implements H2StreamHandler {
  /** DATA bytes written to the socket that it has not taken yet (counted back at 'drain') */
  private owed = 0;
  /** the peer's END_STREAM arrived (the socket was ended) */
  private remoteEnded = false;
  /** our END_STREAM is sent or queued (the socket's FIN arrived) */
  private localEnded = false;
  private streamOver = false;
  private sockClosed = false;
  private finished = false;
  /** the socket failed ('error'): a NetConn's 'close' does not say so itself */
  private sockFailed = false;

  /**
   * DATA goes to a NetConn's write(), which copies it before it returns or, coalescing, at the end of the loop's batch
   * (a node:net Socket may hold a written buffer until libuv sent it): the session may give the TLS read back.
   */
  readonly releasesData: boolean;

  constructor(private readonly stream: H2Stream, private readonly sock: SpliceSocket, private readonly stats: PeerStats, private readonly done: () => void) {
    this.releasesData = sock instanceof NetConn;
  }

  /** Take over the stream and the socket (resume a paused socket after this). */
  start(early?: Early): void {
    const { sock } = this;
    this.stream.handler = this;
    // the DATA frames of one read of the tunnel's connection (4+ of a 256 KiB read) go to the socket in one send
    if (sock instanceof NetConn) {
      sock.coalesceWrites = true;
      // its reads come in pooled buffers, given back once framed (onSockData)
      sock.pooledReads = true;
    }
    sock.on('data', this.onSockData);
    sock.on('drain', this.onSockDrain);
    sock.on('end', this.onSockEnd);
    sock.on('error', this.onSockError);
    sock.on('close', this.onSockClose);
    if (early) {
      for (const c of early.chunks) this.onData(c, false);
      if (early.ended) this.onData(EMPTY, true);
    }
  }

  // ---- the stream (H2StreamHandler)

  onHeaders(): void { /* a second head: the session checks its shape; nothing to do for a tunnel */ }
  onTrailers(): void { this.onData(EMPTY, true); }

  onData(data: Buffer, endStream: boolean): void {
    const n = data.length;
    if (n > 0) {
      this.stats.bytesIn += n;
      if (this.sock.destroyed) return; // a reset is on its way (onSockClose)
      if (this.sock.write(data)) this.stream.consumed(n);
      else this.owed += n;
    }
    if (endStream) {
      this.remoteEnded = true;
      if (!this.sock.destroyed) this.sock.end();
      this.checkStreamOver();
    }
  }

  onReset(code: number): void {
    this.streamOver = true;
    const { sock } = this;
    if (!sock.destroyed) {
      // RST_STREAM NO_ERROR: the peer needs no more of our bytes (RFC 9113 8.1); what it sent is written, then close.
      // Any other code is an abort: the socket is reset too, so the app sees what the far end saw.
      if (code === H2_ERROR.NO_ERROR) sock.destroySoon(); else sock.resetAndDestroy();
    }
    this.maybeFinish();
  }

  onWritable(): void { if (!this.sock.destroyed) this.sock.resume(); }

  // ---- the socket

  private readonly onSockData = (chunk: Buffer): void => {
    this.stats.bytesOut += chunk.length;
    const { sock, stream } = this;
    if (this.streamOver || this.localEnded) { if (sock instanceof NetConn) sock.recycle(chunk); return; }
    // The session copies what the windows let out into its frames at once and holds the rest (stream.queued grows):
    // a chunk it framed whole goes back to the socket's read pool; one it holds is left to the GC.
    const queued = stream.queued;
    if (!stream.sendData(chunk, false)) sock.pause();
    if (sock instanceof NetConn && stream.queued === queued) sock.recycle(chunk);
  };

  private readonly onSockDrain = (): void => {
    if (this.owed > 0 && !this.streamOver) { const n = this.owed; this.owed = 0; this.stream.consumed(n); }
  };

  private readonly onSockEnd = (): void => {
    // a reset Node reported as an end (sockreset.ts): the socket fails instead, and onSockClose resets the stream.
    // (A NetConn reads until EAGAIN or the error: its reset comes as 'error', never as 'end'.)
    if (!(this.sock instanceof NetConn)) {
      const reset = hiddenReset(this.sock);
      if (reset) { this.sock.destroy(reset); return; }
    }
    if (this.streamOver || this.localEnded) return;
    this.localEnded = true;
    this.stream.end();
    this.checkStreamOver();
  };

  private readonly onSockError = (): void => { this.sockFailed = true; /* 'close' follows */ };

  private readonly onSockClose = (hadErrorArg?: boolean): void => {
    const hadError = hadErrorArg === true || this.sockFailed;
    this.sockClosed = true;
    if (!this.streamOver && !this.stream.closed) {
      // a reset or failed socket aborts the stream; a clean close after both FINs leaves it to end normally (our
      // END_STREAM may still be queued behind DATA: the session sends it and closes the stream with no frame)
      if (hadError || !(this.localEnded && this.remoteEnded)) this.stream.reset(H2_ERROR.CONNECT_ERROR);
      this.streamOver = true;
    }
    this.maybeFinish();
  };

  private checkStreamOver(): void {
    if (this.localEnded && this.remoteEnded) this.streamOver = true;
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (this.finished || !this.streamOver || !this.sockClosed) return;
    this.finished = true;
    this.stats.lastActive = Date.now();
    this.done();
  }
}

const EMPTY = Buffer.alloc(0);

/** Splice `stream` and `sock` until both directions ended or either side reset; `done` runs once, at the end. */
export function splice(stream: H2Stream, sock: SpliceSocket, stats: PeerStats, done: () => void, early?: Early): Splice {
  const s = new Splice(stream, sock, stats, done);
  s.start(early);
  return s;
}
