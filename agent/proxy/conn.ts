// The byte-stream connection the protocol engine works with: the part of node:net's Socket it uses.
// net.Socket satisfies it (tests and the h2 handover use real ones); so does NetConn (netio.ts), the
// proxy's own sockets over the addon's epoll loop, which skip Node's stream machinery on the hot path.

export interface Conn {
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly destroyed: boolean;
  /** false when the bytes were queued beyond what the kernel took at once ('drain' follows) */
  write(data: Buffer | Uint8Array | string, encoding?: BufferEncoding): boolean;
  /**
   * true while a buffer given to write() may still be read later (corked); false: every write so far was copied out
   * (the caller may write over its buffers). Optional: without it (net.Socket) a written buffer is never reused.
   */
  holdsWrites?(): boolean;
  /**
   * Give a chunk of 'data' back once nothing holds any of its bytes (NetConn: returnsTlsReads, pooledReads: its memory
   * is filled again). Optional: without it (net.Socket) chunks are the GC's.
   */
  recycle?(chunk: Buffer): void;
  /** writes until uncork() are sent together */
  cork(): void;
  uncork(): void;
  /** stop / start delivering 'data' */
  pause(): this;
  resume(): this;
  /** half-close after what is queued is sent; with the peer's end too, 'close' follows */
  end(): this;
  /**
   * A server closing a connection it believes idle: half-close now unless bytes of the peer's wait to be read (then
   * false, nothing done: they come as 'data'). Optional: without it (net.Socket) the caller ends at once.
   */
  endIfIdle?(): boolean;
  /** close now, dropping what is queued; 'close' follows (once) */
  destroy(): this;
  setNoDelay(noDelay?: boolean): this;
  /** idle timeout: 'timeout' (and cb) after ms without reads or writes; 0 turns it off */
  setTimeout(ms: number, cb?: () => void): this;

  on(event: 'data', fn: (d: Buffer) => void): this;
  on(event: 'end' | 'close' | 'drain' | 'timeout' | 'connect', fn: () => void): this;
  on(event: 'error', fn: (e: Error) => void): this;
  once(event: 'data', fn: (d: Buffer) => void): this;
  once(event: 'end' | 'close' | 'drain' | 'timeout' | 'connect', fn: () => void): this;
  once(event: 'error', fn: (e: Error) => void): this;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  off(event: string, fn: (...args: any[]) => void): this;
  removeAllListeners(event?: string): this;
}
