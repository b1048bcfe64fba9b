// One CONNECT stream spliced to one TCP socket, both ends of the tunnel the same way: bytes both ways with
// back-pressure (a full socket pauses the stream, whose unread DATA then holds back the peer's flow-control window;
// a full stream pauses the socket), half-close passed on (a FIN becomes END_STREAM and END_STREAM becomes a FIN, so
// a client that shuts its write side still reads the whole answer), and a reset passed on as a reset (a TCP RST
// becomes RST_STREAM CONNECT_ERROR, RFC 9113 8.5, and a reset stream resets the socket).
import { constants, type Http2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import type { PeerStats } from './metrics.js';

const { NGHTTP2_NO_ERROR, NGHTTP2_CONNECT_ERROR } = constants;

/** Count an accepted stream (200) as open until it closes, and in the total. */
export function track(stream: Http2Stream, stats: PeerStats): void {
  stats.streamsOpen++;
  stats.streamsTotal++;
  stats.lastActive = Date.now();
  stream.once('close', () => { stats.streamsOpen--; stats.lastActive = Date.now(); });
}

/** Splice `stream` and `sock` until both directions ended or either side reset; `done` runs once, at the end. */
export function splice(stream: Http2Stream, sock: Socket, stats: PeerStats, done?: () => void): void {
  let finished = false;
  const finish = (): void => {
    if (finished) return;
    finished = true;
    stats.lastActive = Date.now();
    done?.();
  };
  stream.on('data', (chunk: Buffer) => {
    stats.bytesIn += chunk.length;
    if (!sock.write(chunk)) stream.pause();
  });
  sock.on('drain', () => stream.resume());
  sock.on('data', (chunk: Buffer) => {
    stats.bytesOut += chunk.length;
    if (!stream.write(chunk)) sock.pause();
  });
  stream.on('drain', () => sock.resume());
  // half-close, each way
  stream.on('end', () => { if (!sock.destroyed) sock.end(); });
  sock.on('end', () => { if (!stream.destroyed) stream.end(); });
  sock.on('error', () => { /* 'close' follows; the stream is reset there */ });
  stream.on('error', () => { /* 'close' follows */ });
  sock.on('close', (hadError) => {
    // a socket that closed with an error (reset, unreachable) resets the stream; a clean close already ended it
    if (hadError && !stream.closed) stream.close(NGHTTP2_CONNECT_ERROR);
    if (stream.closed || stream.destroyed) finish();
  });
  stream.on('close', () => {
    if (stream.rstCode !== undefined && stream.rstCode !== NGHTTP2_NO_ERROR) {
      if (!sock.destroyed) sock.resetAndDestroy();
    } else if (!sock.destroyed) {
      // the stream is over both ways: what the socket still has to write goes out, then it closes
      sock.destroySoon();
    }
    if (sock.destroyed) finish();
    else sock.once('close', finish);
  });
}
