// HTTP/2 (RFC 9113) connections of the proxy, both roles, on any Conn: framing, SETTINGS, stream states,
// flow control both ways, PING, GOAWAY, RST_STREAM.
// No Duplex per stream and no object per header: streams are plain objects with a handler, headers are
// flat lists straight from HPACK, DATA payloads are views of the bytes read, and every frame produced while
// handling one read (or one tick) goes out in one transport write.
import type { Conn } from '../conn.js';
import { HpackDecoder, HpackEncoder, HpackError, type HeaderList } from './hpack.js';
import {
  DEFAULT_WINDOW, FLAG, FRAME, FRAME_HEADER_SIZE, MAX_MAX_FRAME_SIZE, MAX_WINDOW, MIN_MAX_FRAME_SIZE, Output, PREFACE,
  SETTING,
} from './frames.js';
import * as fields from './fields.js';
import { StreamTable } from './streams.js';

export const H2_ERROR = {
  NO_ERROR: 0x0, PROTOCOL_ERROR: 0x1, INTERNAL_ERROR: 0x2, FLOW_CONTROL_ERROR: 0x3, SETTINGS_TIMEOUT: 0x4,
  STREAM_CLOSED: 0x5, FRAME_SIZE_ERROR: 0x6, REFUSED_STREAM: 0x7, CANCEL: 0x8, COMPRESSION_ERROR: 0x9,
  CONNECT_ERROR: 0xa, ENHANCE_YOUR_CALM: 0xb, INADEQUATE_SECURITY: 0xc, HTTP_1_1_REQUIRED: 0xd,
} as const;

const ERROR_NAMES: string[] = [];
for (const [k, v] of Object.entries(H2_ERROR)) ERROR_NAMES[v] = k;
/** the name of an error code (for messages) */
export function h2ErrorName(code: number): string { return ERROR_NAMES[code] ?? `0x${code.toString(16)}`; }

export interface H2Settings {
  headerTableSize: number;
  maxConcurrentStreams: number;
  initialWindowSize: number;
  maxFrameSize: number;
  maxHeaderListSize: number;
}

/** What a stream tells its owner. Set stream.handler before returning from onStream / with request(). */
export interface H2StreamHandler {
  /**
   * A head: the response head in the client role (1xx informational heads too, with endStream false), never
   * the request head (that is onStream). Trailers come through onTrailers, not here.
   */
  onHeaders(headers: HeaderList, endStream: boolean): void;
  /**
   * a DATA payload (may be empty with endStream). Count it back with stream.consumed(n) once passed on.
   * The buffer is the owner's (a view of bytes read from the transport, or a copy): it may be kept.
   */
  onData(data: Buffer, endStream: boolean): void;
  /**
   * true: onData keeps no view of `data` past the current batch of the transport's loop (it writes it to a coalescing
   * NetConn, which copies it by the batch's end, or drops it), so the session may give the read it came in back to
   * the transport (Conn.recycle). Absent: the handler may keep it, and the read is never given back.
   */
  readonly releasesData?: boolean;
  /** a HEADERS frame after the head, with END_STREAM */
  onTrailers(headers: HeaderList): void;
  /**
   * The stream ended abnormally: the peer's RST_STREAM (its code), a stream error we found in what the peer
   * sent (we sent RST_STREAM with that code), the session died (INTERNAL_ERROR, CANCEL or the connection
   * error's code) or a GOAWAY left it unprocessed (code REFUSED_STREAM: safe to retry elsewhere).
   * Called at most once; nothing else is called after it. After a whole response (client role), the peer's
   * RST_STREAM(NO_ERROR) says it needs no more of the request body (RFC 9113 8.1): stop sending, not a failure.
   */
  onReset(code: number): void;
  /** sendData returned false earlier and the peer's windows have opened again */
  onWritable(): void;
}

/** queued DATA beyond this (bytes not yet sent) makes sendData answer false */
const HIGH_WATER = 64 * 1024;
const EMPTY = Buffer.alloc(0);
const NO_SETTINGS: number[] = [];

// H2Stream's flags (its _flags bits)
const S_DONE = 1, S_END_QUEUED = 2, S_LOCAL_ENDED = 4, S_REMOTE_ENDED = 8, S_HEAD_SENT = 16, S_HEAD_RECEIVED = 32;
const S_IS_HEAD = 64, S_WANT_WRITABLE = 128, S_PENDING = 256;

export class H2Stream {
  handler: H2StreamHandler | null = null;

  // Bookkeeping of the session (not for the owner).
  /**
   * The stream's yes/no state as bits of one small integer (S_*), read and written through the accessors below: two
   * streams per proxied request (the client's and the upstream's), and nine boolean fields were 72 of a stream's ~190
   * bytes of the young generation (bench l7, HTTP/2).
   */
  private _flags = 0;
  /** removed from the session: ended both ways or reset */
  get _done(): boolean { return (this._flags & S_DONE) !== 0; }
  set _done(v: boolean) { this._flags = v ? this._flags | S_DONE : this._flags & ~S_DONE; }
  /** the owner ended its side (END_STREAM sent or queued behind data): nothing more may be sent */
  get _endQueued(): boolean { return (this._flags & S_END_QUEUED) !== 0; }
  set _endQueued(v: boolean) { this._flags = v ? this._flags | S_END_QUEUED : this._flags & ~S_END_QUEUED; }
  /** END_STREAM went out */
  get _localEnded(): boolean { return (this._flags & S_LOCAL_ENDED) !== 0; }
  set _localEnded(v: boolean) { this._flags = v ? this._flags | S_LOCAL_ENDED : this._flags & ~S_LOCAL_ENDED; }
  /** the peer's END_STREAM arrived */
  get _remoteEnded(): boolean { return (this._flags & S_REMOTE_ENDED) !== 0; }
  set _remoteEnded(v: boolean) { this._flags = v ? this._flags | S_REMOTE_ENDED : this._flags & ~S_REMOTE_ENDED; }
  /** the request head (client role) or the final (non-1xx) response head (server role) was sent */
  get _headSent(): boolean { return (this._flags & S_HEAD_SENT) !== 0; }
  set _headSent(v: boolean) { this._flags = v ? this._flags | S_HEAD_SENT : this._flags & ~S_HEAD_SENT; }
  /** client role: the final response head arrived (server role: always true) */
  get _headReceived(): boolean { return (this._flags & S_HEAD_RECEIVED) !== 0; }
  set _headReceived(v: boolean) { this._flags = v ? this._flags | S_HEAD_RECEIVED : this._flags & ~S_HEAD_RECEIVED; }
  get _isHead(): boolean { return (this._flags & S_IS_HEAD) !== 0; }
  set _isHead(v: boolean) { this._flags = v ? this._flags | S_IS_HEAD : this._flags & ~S_IS_HEAD; }
  get _wantWritable(): boolean { return (this._flags & S_WANT_WRITABLE) !== 0; }
  set _wantWritable(v: boolean) { this._flags = v ? this._flags | S_WANT_WRITABLE : this._flags & ~S_WANT_WRITABLE; }
  /** in the session's list of streams with something queued */
  get _pending(): boolean { return (this._flags & S_PENDING) !== 0; }
  set _pending(v: boolean) { this._flags = v ? this._flags | S_PENDING : this._flags & ~S_PENDING; }
  _sendWindow: number;
  _recvWindow: number;
  _recvUnacked = 0;
  _contentLength = -1;
  _dataReceived = 0;
  _queue: Buffer[] | null = null;
  /** bytes of _queue[0] already sent */
  _qoff = 0;
  _queued = 0;
  _trailers: HeaderList | null = null;

  constructor(readonly session: H2Session, readonly id: number) {
    this._sendWindow = session._peerInitialWindow;
    this._recvWindow = session._streamRecvWindow;
  }

  /** both directions done (ended or reset): nothing more may be sent */
  get closed(): boolean { return this._done; }
  /** DATA bytes handed to sendData and not yet sent (waiting for the peer's windows or the transport) */
  get queued(): number { return this._queued; }

  /**
   * Server role: the response head (:status first). 1xx heads may come before the final one (endStream false).
   * The head goes out at once (before any DATA of this stream can).
   */
  sendHeaders(headers: HeaderList, endStream: boolean): void {
    if (this._done || this._endQueued) return;
    if (this._headSent) throw new Error(`h2 stream ${this.id}: a second response head (trailers go through sendTrailers)`);
    const informational = headers.length >= 2 && headers[0] === ':status' && headers[1].charCodeAt(0) === 0x31;
    if (informational && endStream) throw new Error(`h2 stream ${this.id}: a 1xx head cannot end the stream`);
    if (!informational) this._headSent = true;
    const s = this.session;
    s._writeHeaders(this.id, headers, endStream);
    if (endStream) {
      this._endQueued = this._localEnded = true;
      s._maybeDone(this);
    }
  }

  /**
   * Queue data (frames split at the peer's max frame size, sent as its windows allow). The buffer is held, not
   * copied, until it is sent: do not change it afterwards. false when more than a small high-water mark is
   * queued beyond what the windows let out: stop reading the source until onWritable.
   */
  sendData(data: Buffer, endStream: boolean): boolean {
    if (this._done || this._endQueued) return true;
    if (!this._headSent) throw new Error(`h2 stream ${this.id}: DATA before the response head`);
    if (endStream) this._endQueued = true;
    return this.session._sendData(this, data, endStream);
  }

  /** trailers; ends our side of the stream (after anything queued) */
  sendTrailers(headers: HeaderList): void {
    if (this._done || this._endQueued) return;
    if (!this._headSent) throw new Error(`h2 stream ${this.id}: trailers before the response head`);
    this._endQueued = true;
    if (this._queued === 0) {
      this.session._writeHeaders(this.id, headers, true);
      this._localEnded = true;
      this.session._maybeDone(this);
    } else {
      this._trailers = headers;
    }
  }

  /** end our side with an empty DATA frame (after anything queued) */
  end(): void {
    if (this._done || this._endQueued) return;
    if (!this._headSent) throw new Error(`h2 stream ${this.id}: end before the response head`);
    this._endQueued = true;
    this.session._sendData(this, EMPTY, true);
  }

  /** RST_STREAM now (queued data dropped); onReset is NOT called for a reset we send */
  reset(code: number): void {
    if (this._done) return;
    this.session._reset(this, code, false);
  }

  /**
   * Give back n bytes of the receive window (a WINDOW_UPDATE for the stream, batched). The session
   * replenishes the connection window itself; a stream's window is only what its owner consumed, so a
   * slow destination holds at most the initial window per stream.
   */
  consumed(n: number): void {
    if (this._done || this._remoteEnded) return;
    this._recvUnacked += n;
    if (this._recvUnacked >= this.session._updateThreshold) this.session._windowUpdate(this);
  }
}

export interface H2SessionOptions {
  role: 'server' | 'client';
  /** ours, announced in our SETTINGS (defaults: maxConcurrentStreams 1000, initialWindowSize 1 MiB, maxHeaderListSize 64 KiB) */
  settings?: Partial<H2Settings>;
  /**
   * The connection receive window (default 8 MiB). The session gives it back as DATA arrives (when half is
   * used), whatever the streams' owners do with it: what holds a slow reader's peer back is the stream window.
   */
  connectionWindowSize?: number;
  /**
   * server role: a new stream's request head. Set stream.handler before returning. A head over
   * maxHeaderListSize arrives with tooLarge true (and headers []) so the engine can answer 431.
   * May be called from the constructor (for streams in `first`).
   */
  onStream?(stream: H2Stream, headers: HeaderList, endStream: boolean, tooLarge: boolean): void;
  /**
   * A peer that has not acknowledged our SETTINGS this long after we sent them gets GOAWAY SETTINGS_TIMEOUT
   * (RFC 9113 6.5.3): a connection error, its streams reset. Default 10 s (nghttpx's --frontend- and
   * --backend-http2-settings-timeout); 0 = wait for ever.
   */
  settingsTimeoutMs?: number;
  /**
   * server role: announce SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): a client may then send an extended CONNECT
   * (:protocol, e.g. websocket), handed to onStream as any request; without it :protocol is a malformed request
   */
  enableConnectProtocol?: boolean;
  /** client role: the peer's first SETTINGS arrived (peerMaxConcurrentStreams is now real) */
  onSettings?(): void;
  /** the peer sent GOAWAY (streams above lastStreamId got onReset(REFUSED_STREAM)) */
  onGoaway?(lastStreamId: number, code: number): void;
  /** once, when the session is over (transport closed or protocol error); open streams got onReset before */
  onClose?(err?: Error): void;
}

/** streams of ours the peer may open before its first SETTINGS says how many (RFC 9113 leaves it unlimited) */
const PEER_STREAMS_BEFORE_SETTINGS = 100;
/** the longest header block (HEADERS + CONTINUATION) read, as a multiple of maxHeaderListSize */
const BLOCK_CAP_FACTOR = 2;
/** how many of the streams we reset last are remembered (frames on them are then dropped, not errors) */
const RECENT_RESETS = 256;
/** the rapid-reset guard: a client may reset at most half of the streams it opens before they are answered, counted in windows of this many */
const RESET_WINDOW = 1024;
/** what may be handed to a transport that said wait before the session gives up on the peer */
const MAX_WRITTEN_BLOCKED = 4 * 1024 * 1024;
/** frames we send stay under this even when the peer allows more: a 16 MiB frame would hold up every other stream */
const MAX_SEND_FRAME = 64 * 1024;
/** a session that closed its side waits this long (idle) for the peer to close before destroying the transport */
const LINGER_MS = 2000;
/**
 * A graceful shutdown's PING not answered this long: its next step anyway (a peer stalled that long, or one that
 * does not answer PINGs; RFC 9113 says it must). Our output is held during the first step: it bounds that too. Not
 * shorter: a client that did not read our PING for a second (a loaded machine) has answers unread before it, and a
 * GOAWAY behind them is what loses its next requests.
 */
const SHUTDOWN_STEP_MS = 3000;
/** the opaque data of a graceful shutdown's two PINGs (shutdown()): ours, told apart from any other PING's */
const PING_FENCE = Buffer.from('sm:fence', 'latin1');
const PING_NOTICE = Buffer.from('sm:going', 'latin1');
/** our SETTINGS unacknowledged this long: GOAWAY SETTINGS_TIMEOUT (nghttpx's default) */
export const DEFAULT_SETTINGS_TIMEOUT_MS = 10_000;


// The sessions' deferred flushes (a session written to while another one is being read: the proxy's other leg) run
// together in ONE microtask, queued with a resolved promise's then(). node's queueMicrotask makes an AsyncResource and
// a bound function per call and runs the callback through runInAsyncScope (measured on node 20, 2M calls: 74-99 ns a
// call against 33-38 for then(), and a proxied HTTP/2 request defers two flushes: the upstream session's request, the
// client session's response); several sessions deferred in one batch share the one microtask.
// Each flush runs even if one before it throws; the first exception is thrown again afterwards (an uncaught error,
// as from queueMicrotask).
const flushes: (() => void)[] = [];
let flushesQueued = false;
const RESOLVED = Promise.resolve();

function deferFlush(f: () => void): void {
  flushes.push(f);
  if (flushesQueued) return;
  flushesQueued = true;
  void RESOLVED.then(runFlushes);
}

function runFlushes(): void {
  let thrown: unknown = null, failed = false;
  // (a flush may defer another session's: it is run in this same pass)
  for (let i = 0; i < flushes.length; i++) {
    try { flushes[i]!(); } catch (e) { if (!failed) { failed = true; thrown = e; } }
  }
  flushes.length = 0;
  flushesQueued = false;
  if (failed) queueMicrotask(() => { throw thrown; });
}

/** the stream a priority (PRIORITY's payload, HEADERS' priority fields) at b[p..] depends on: 31 bits, the E flag off */
const dependency = (b: Buffer, p: number): number => ((b[p] & 0x7f) << 24 | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]) >>> 0;

export class H2Session {
  // Read by H2Stream (same module): not for the owner.
  readonly _initialWindow: number;
  /** a new stream's receive window: ours, or the protocol's 65535 if larger until the peer acknowledged our SETTINGS */
  _streamRecvWindow: number;
  _peerInitialWindow = DEFAULT_WINDOW;
  readonly _updateThreshold: number;

  private readonly server: boolean;
  /** we announced SETTINGS_ENABLE_CONNECT_PROTOCOL (server role) */
  private readonly connectProtocol: boolean;
  /** (not a Map: see streams.ts) */
  private readonly streams = new StreamTable<H2Stream>();
  private readonly out = new Output();
  private readonly decoder: HpackDecoder;
  private readonly encoder = new HpackEncoder();

  private readonly maxStreams: number;
  private readonly maxFrame: number;
  private readonly maxHeaderList: number;

  /** the largest frame we send: the peer's max frame size, capped */
  private peerMaxFrame = MIN_MAX_FRAME_SIZE;
  private peerMaxStreams = PEER_STREAMS_BEFORE_SETTINGS;
  private connSendWindow = DEFAULT_WINDOW;
  private connRecvWindow = DEFAULT_WINDOW;
  private connRecvUnacked = 0;
  private readonly connWindowSize: number;

  /** highest stream id the peer opened */
  private lastPeerStreamId = 0;
  private nextStreamId: number;
  private peerStreams = 0;
  private ownStreams = 0;

  private prefaceLeft: number;
  private gotSettings = false;
  /** runs from our SETTINGS to the peer's ACK of them (one timer per session, none per request) */
  private settingsTimer: NodeJS.Timeout | null = null;

  /** a frame split across reads: its bytes so far */
  private inBuf: Buffer | null = null;
  private inLen = 0;
  /**
   * An unpadded DATA frame whose payload is split across reads is handed on in parts as they come, each a view of
   * the bytes read (reassembling it copied every byte twice: into inBuf, then out of it). Payload bytes of it still
   * to come; the stream they go to (null: dropped, the frame's stream is gone or got a stream error); its END_STREAM.
   */
  private dataLeft = 0;
  private dataSt: H2Stream | null = null;
  private dataEnd = false;
  /** a header block being assembled from CONTINUATION frames */
  private contId = 0;
  private contEnd = false;
  private contSelfDependent = false;
  private contBuf: Buffer | null = null;
  private contLen = 0;

  private reading = false;
  /** the read being consumed handed a view of itself to a handler without releasesData */
  private kept = false;
  private flushQueued = false;
  /** the transport's write() said false: no DATA until 'drain' */
  private blocked = false;
  private pending: H2Stream[] = [];
  private pendingSpare: H2Stream[] = [];
  private pumping = false;
  private pumpAgain = false;
  /** we ended (or destroyed) the transport: nothing more is written */
  private ended = false;
  /** bytes handed to the transport since its write() said false (control frames a peer that does not read makes us write) */
  private writtenBlocked = 0;
  /** streams the peer opened, and of those the ones it reset itself, in the current window of RESET_WINDOW streams */
  private windowOpened = 0;
  private windowResets = 0;

  private goawaySent = false;
  private goawayReceived = false;
  /**
   * shutdown() under way: 'fence' (our PING is out, everything after it held back until it comes back), 'notice'
   * (GOAWAY with the largest stream id and a second PING are out) or null
   */
  private shutdownStep: 'fence' | 'notice' | null = null;
  private shutdownTimer: NodeJS.Timeout | null = null;
  /** the first step of shutdown(): frames gather in out but are not written (DATA is not produced either) */
  private holding = false;
  private dead = false;
  private closeNotified = false;
  private transportError: Error | undefined;
  /** ids of streams we reset lately: frames the peer sent before it saw the reset are dropped quietly */
  private readonly recentResets = new Int32Array(RECENT_RESETS);
  private recentPos = 0;

  private readonly onRead = (chunk: Buffer): void => this.read(chunk);
  private readonly onDrain = (): void => this.drained();
  private readonly onEnd = (): void => this.transportGone();
  private readonly onTClose = (): void => this.transportGone();
  private readonly onTError = (e: Error): void => { this.transportError ??= e; };
  private readonly flushTask = (): void => { this.flushQueued = false; this.flush(); };
  private readonly lingerDone = (): void => { this.transport.destroy(); };

  /**
   * first: bytes already read from the transport (server role: from the connection preface on). The session
   * owns the transport from now on (its 'data', 'drain', 'close', 'error'). Server role: streams in `first`
   * reach onStream before the constructor returns.
   */
  constructor(readonly transport: Conn, readonly opts: H2SessionOptions, first?: Buffer) {
    this.server = opts.role === 'server';
    this.connectProtocol = this.server && opts.enableConnectProtocol === true;
    const set = opts.settings ?? {};
    this.maxStreams = set.maxConcurrentStreams ?? 1000;
    this._initialWindow = set.initialWindowSize ?? 1024 * 1024;
    this.maxFrame = set.maxFrameSize ?? MIN_MAX_FRAME_SIZE;
    this.maxHeaderList = set.maxHeaderListSize ?? 64 * 1024;
    const tableSize = set.headerTableSize ?? 4096;
    if (!(this._initialWindow >= 0 && this._initialWindow <= MAX_WINDOW)) throw new RangeError(`h2 settings: initialWindowSize ${this._initialWindow} out of range`);
    if (!(this.maxFrame >= MIN_MAX_FRAME_SIZE && this.maxFrame <= MAX_MAX_FRAME_SIZE)) throw new RangeError(`h2 settings: maxFrameSize ${this.maxFrame} out of range`);
    this._updateThreshold = Math.max(1, this._initialWindow >>> 1);
    this._streamRecvWindow = Math.max(this._initialWindow, DEFAULT_WINDOW);
    this.connWindowSize = Math.max(DEFAULT_WINDOW, Math.min(MAX_WINDOW, opts.connectionWindowSize ?? 8 * 1024 * 1024));
    this.decoder = new HpackDecoder(tableSize, this.maxHeaderList);
    this.nextStreamId = this.server ? 2 : 1;
    this.prefaceLeft = this.server ? PREFACE.length : 0;

    transport.on('data', this.onRead);
    transport.on('drain', this.onDrain);
    transport.on('end', this.onEnd);
    transport.on('close', this.onTClose);
    transport.on('error', this.onTError);

    const out = this.out;
    if (!this.server) { out.reserve(PREFACE.length); out.bytes(PREFACE, 0, PREFACE.length); }
    out.settings([
      SETTING.HEADER_TABLE_SIZE, tableSize,
      SETTING.ENABLE_PUSH, 0,
      SETTING.MAX_CONCURRENT_STREAMS, this.maxStreams,
      SETTING.INITIAL_WINDOW_SIZE, this._initialWindow,
      SETTING.MAX_FRAME_SIZE, this.maxFrame,
      SETTING.MAX_HEADER_LIST_SIZE, this.maxHeaderList,
      ...(this.connectProtocol ? [SETTING.ENABLE_CONNECT_PROTOCOL, 1] : []),
    ], false);
    if (this.connWindowSize > DEFAULT_WINDOW) {
      out.frameU32(FRAME.WINDOW_UPDATE, 0, this.connWindowSize - DEFAULT_WINDOW);
      this.connRecvWindow = this.connWindowSize;
    }
    const ackMs = opts.settingsTimeoutMs ?? DEFAULT_SETTINGS_TIMEOUT_MS;
    if (ackMs > 0) this.settingsTimer = setTimeout(H2Session.settingsTimeout, ackMs, this, ackMs);
    if (first !== undefined && first.length > 0) this.read(first);
    else this.scheduleFlush();
  }

  /** client role: open a stream (throws when closed or going away; check canRequest first) */
  request(headers: HeaderList, endStream: boolean, handler: H2StreamHandler): H2Stream {
    if (this.server) throw new Error('h2 session: request() in the server role');
    if (!this.canRequest) throw new Error(`h2 session: cannot open a stream (${this.dead ? 'closed' : this.goawaySent || this.goawayReceived ? 'going away' : 'at the peer\'s max concurrent streams'})`);
    const st = new H2Stream(this, this.nextStreamId);
    this.nextStreamId += 2;
    st.handler = handler;
    st._headSent = true;
    for (let i = 0; i < headers.length && headers[i].charCodeAt(0) === 0x3a; i += 2) {
      if (headers[i] === ':method') { st._isHead = headers[i + 1] === 'HEAD'; break; }
    }
    this.streams.set(st.id, st);
    this.ownStreams++;
    this._writeHeaders(st.id, headers, endStream);
    if (endStream) st._endQueued = st._localEnded = true;
    return st;
  }

  /** client role: a new stream may be opened now (not closed, not going away, under the peer's max streams) */
  get canRequest(): boolean {
    return !this.dead && !this.goawaySent && !this.goawayReceived && this.ownStreams < this.peerMaxStreams && this.nextStreamId <= MAX_WINDOW;
  }

  get peerMaxConcurrentStreams(): number { return this.peerMaxStreams; }
  /** streams open now (either side) */
  get activeStreams(): number { return this.streams.size; }
  get closed(): boolean { return this.dead; }
  /** the streams open now, in the order they were opened (a new array each call: for sweeps over them) */
  openStreams(): H2Stream[] { return this.streams.values(); }

  /** graceful: GOAWAY, no new streams; the transport closes when the open ones are done */
  goaway(code: number = H2_ERROR.NO_ERROR): void {
    if (this.dead || this.goawaySent) return;
    if (this.shutdownStep !== null) this.release();
    this.goawaySent = true;
    this.out.goaway(this.lastPeerStreamId, code);
    this.scheduleFlush();
    if (this.streams.size === 0) this.finish();
  }

  /**
   * Graceful shutdown (RFC 9113 6.8) without losing a request the peer made, even one its HTTP/2 library made but
   * had not sent yet. Sent alone, goaway() refuses the streams whose HEADERS are on their way; a GOAWAY with the
   * largest stream id first, then the real last one after a PING's round trip (what the RFC says) still loses
   * requests with nghttp2 clients (h2load): a response completed in the same read as the GOAWAY makes the
   * client open its next stream, which nghttp2 then refuses to send, after the GOAWAY, and fails itself
   * (REFUSED_STREAM: h2load counts it errored and never retries). So, three steps:
   *  1. fence: a PING, and nothing after it until it comes back: once it does, the peer has read all we sent and
   *     acted on it (its new streams came before the ACK), and nothing of ours is waiting unread;
   *  2. notice: GOAWAY with the largest stream id (and a second PING) ahead of what was held: the peer reads the
   *     GOAWAY before any response that would make it open a stream, so it opens none;
   *  3. when that PING comes back, every stream the peer opened before it read the notice has reached us:
   *     goaway() names the last one, the open streams finish, then the connection closes (FIN after the last byte).
   * A PING not answered within SHUTDOWN_STEP_MS: the next step anyway.
   */
  shutdown(): void {
    if (this.dead || this.goawaySent || this.shutdownStep !== null) return;
    this.shutdownStep = 'fence';
    this.out.ping(PING_FENCE);
    this.flush(); // everything up to the PING leaves now (also from inside a read); what follows is held until step 2
    this.holding = true;
    this.shutdownTimer = setTimeout(H2Session.shutdownStepDue, SHUTDOWN_STEP_MS, this);
  }

  private static shutdownStepDue(s: H2Session): void {
    s.shutdownTimer = null;
    s.shutdownNext();
  }

  /** the PING of the step under way came back (or its time is up): the next step */
  private shutdownNext(): void {
    if (this.shutdownTimer !== null) { clearTimeout(this.shutdownTimer); this.shutdownTimer = null; }
    if (this.dead || this.goawaySent) { this.release(); return; }
    if (this.shutdownStep === 'fence') {
      this.shutdownStep = 'notice';
      // GOAWAY + PING go out ahead of the held frames (a GOAWAY carries no header block: the HPACK order is kept)
      const held = this.out.take();
      this.out.goaway(MAX_WINDOW, H2_ERROR.NO_ERROR);
      this.out.ping(PING_NOTICE);
      this.holding = false;
      this.write(this.out.take()!);
      if (held !== null) this.write(held);
      this.shutdownTimer = setTimeout(H2Session.shutdownStepDue, SHUTDOWN_STEP_MS, this);
      this.pumpAll(); // the DATA held back
    } else if (this.shutdownStep === 'notice') {
      this.shutdownStep = null;
      this.goaway(H2_ERROR.NO_ERROR);
    }
  }

  /** the hold of shutdown()'s first step ends: what gathered leaves (before anything else is written) */
  private release(): void {
    if (this.shutdownTimer !== null) { clearTimeout(this.shutdownTimer); this.shutdownTimer = null; }
    this.shutdownStep = null;
    if (!this.holding) return;
    this.holding = false;
    const held = this.out.take();
    if (held !== null) this.write(held);
    if (!this.dead) this.pumpAll();
  }

  /** close now: open streams get onReset(CANCEL), the transport is destroyed */
  destroy(err?: Error): void {
    if (this.closeNotified) {
      // over already (a GOAWAY finished, or a connection error): just stop waiting for the peer to close
      this.ended = true;
      if (!this.transport.destroyed) this.transport.destroy();
      return;
    }
    this.dead = true;
    this.resetAll(H2_ERROR.CANCEL);
    this.ended = true;
    this.transport.destroy();
    this.notifyClose(err);
  }

  private static settingsTimeout(s: H2Session, ms: number): void {
    s.settingsTimer = null;
    s.connError(H2_ERROR.SETTINGS_TIMEOUT, `our SETTINGS not acknowledged within ${ms} ms`);
  }

  private clearSettingsTimer(): void {
    if (this.settingsTimer !== null) { clearTimeout(this.settingsTimer); this.settingsTimer = null; }
  }

  // ---- output

  /** @internal */
  _writeHeaders(id: number, headers: HeaderList, endStream: boolean): void {
    // encoded straight after a HEADERS frame header whose length is filled in afterwards: no Buffer per block
    const out = this.out;
    out.reserve(FRAME_HEADER_SIZE);
    // (reserve() may move the unsent bytes to a new chunk: the header's place is kept relative to out.start)
    const rel = out.end - out.start;
    out.end += FRAME_HEADER_SIZE;
    try {
      this.encoder.encodeInto(headers, out);
    } catch (e) {
      out.end = out.start + rel; // (a list that is not one: no half frame is left behind)
      throw e;
    }
    const at = out.start + rel;
    const end = out.end;
    const n = end - at - FRAME_HEADER_SIZE;
    if (n <= this.peerMaxFrame) {
      out.end = at;
      out.header(n, FRAME.HEADERS, endStream ? FLAG.END_STREAM | FLAG.END_HEADERS : FLAG.END_HEADERS, id);
      out.end = end;
    } else {
      // rare: a block over the peer's frame size goes out again as HEADERS + CONTINUATION
      const block = Buffer.from(out.buf.subarray(at + FRAME_HEADER_SIZE, end));
      out.end = at;
      out.headerBlock(id, block, endStream, this.peerMaxFrame);
    }
    this.scheduleFlush();
  }

  /** @internal stream.sendData and stream.end: send what the windows allow now, queue the rest */
  _sendData(st: H2Stream, data: Buffer, end: boolean): boolean {
    let off = 0;
    const len = data.length;
    if (st._queued === 0 && st._trailers === null && !this.blocked && !this.holding) {
      const out = this.out;
      const maxF = this.peerMaxFrame;
      const id = st.id;
      while (off < len) {
        let n = len - off;
        const w = this.connSendWindow < st._sendWindow ? this.connSendWindow : st._sendWindow;
        if (w <= 0) break;
        if (n > w) n = w;
        if (n > maxF) n = maxF;
        const last = end && off + n === len;
        out.reserve(FRAME_HEADER_SIZE + n);
        out.header(n, FRAME.DATA, last ? FLAG.END_STREAM : 0, id);
        out.bytes(data, off, off + n);
        off += n;
        this.connSendWindow -= n;
        st._sendWindow -= n;
        if (last) st._localEnded = true;
      }
      if (len === 0 && end) {
        out.reserve(FRAME_HEADER_SIZE);
        out.header(0, FRAME.DATA, FLAG.END_STREAM, id);
        st._localEnded = true;
      }
      this.scheduleFlush();
    }
    if (off < len) {
      (st._queue ??= []).push(off === 0 ? data : data.subarray(off));
      st._queued += len - off;
      this.addPending(st);
    } else if (end && !st._localEnded) {
      this.addPending(st);
    }
    if (st._localEnded) this._maybeDone(st);
    if (st._queued <= HIGH_WATER) return true;
    st._wantWritable = true;
    return false;
  }

  private addPending(st: H2Stream): void {
    if (st._pending) return;
    st._pending = true;
    this.pending.push(st);
  }

  /** send a stream's queued DATA (and then its END_STREAM or trailers) as far as the windows allow */
  private pump(st: H2Stream): void {
    const out = this.out;
    const maxF = this.peerMaxFrame;
    const q = st._queue;
    if (q !== null) {
      while (st._queued > 0 && !this.blocked && !this.holding) {
        const w = this.connSendWindow < st._sendWindow ? this.connSendWindow : st._sendWindow;
        if (w <= 0) break;
        const b = q[0];
        let n = b.length - st._qoff;
        if (n > w) n = w;
        if (n > maxF) n = maxF;
        const last = st._endQueued && st._trailers === null && st._queued === n;
        out.reserve(FRAME_HEADER_SIZE + n);
        out.header(n, FRAME.DATA, last ? FLAG.END_STREAM : 0, st.id);
        out.bytes(b, st._qoff, st._qoff + n);
        st._qoff += n;
        st._queued -= n;
        this.connSendWindow -= n;
        st._sendWindow -= n;
        if (st._qoff === b.length) { q.shift(); st._qoff = 0; }
        if (last) st._localEnded = true;
      }
    }
    if (st._queued === 0 && st._endQueued && !st._localEnded) {
      if (st._trailers !== null) {
        const tr = st._trailers;
        st._trailers = null;
        this._writeHeaders(st.id, tr, true);
      } else {
        out.reserve(FRAME_HEADER_SIZE);
        out.header(0, FRAME.DATA, FLAG.END_STREAM, st.id);
      }
      st._localEnded = true;
    }
    this.scheduleFlush();
    if (st._localEnded) this._maybeDone(st);
  }

  /** windows opened or the transport drained: send what is queued, then tell owners waiting for room */
  private pumpAll(): void {
    if (this.pumping) { this.pumpAgain = true; return; }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        if (this.pending.length === 0) break;
        const list = this.pending;
        this.pending = this.pendingSpare;
        for (let i = 0; i < list.length; i++) {
          const st = list[i];
          st._pending = false;
          if (st._done) continue;
          this.pump(st);
          if (!st._done && (st._queued > 0 || (st._endQueued && !st._localEnded))) this.addPending(st);
        }
        for (let i = 0; i < list.length; i++) {
          const st = list[i];
          if (st._wantWritable && !st._done && st._queued <= HIGH_WATER && !this.dead) {
            st._wantWritable = false;
            st.handler?.onWritable();
          }
        }
        list.length = 0;
        this.pendingSpare = list;
      } while (this.pumpAgain && !this.dead);
    } finally {
      this.pumping = false;
    }
  }

  private pumpOne(st: H2Stream): void {
    if (st._queued === 0 && !(st._endQueued && !st._localEnded)) return;
    this.pump(st);
    if (st._wantWritable && !st._done && st._queued <= HIGH_WATER) {
      st._wantWritable = false;
      st.handler?.onWritable();
    }
  }

  /** @internal */
  _windowUpdate(st: H2Stream): void {
    const n = st._recvUnacked;
    st._recvUnacked = 0;
    st._recvWindow += n;
    this.out.frameU32(FRAME.WINDOW_UPDATE, st.id, n);
    this.scheduleFlush();
  }

  /** @internal our side of a stream: reset (by the owner, or a stream error we found; then the owner hears of it) */
  _reset(st: H2Stream, code: number, notify: boolean): void {
    this.out.frameU32(FRAME.RST_STREAM, st.id, code);
    this.rememberReset(st.id);
    this.remove(st);
    this.scheduleFlush();
    if (notify) st.handler?.onReset(code);
  }

  /** @internal */
  _maybeDone(st: H2Stream): void {
    if (st._localEnded && st._remoteEnded && !st._done) this.remove(st);
  }

  private remove(st: H2Stream): void {
    st._done = true;
    st._queue = null;
    st._queued = 0;
    st._trailers = null;
    if (!this.streams.delete(st.id)) return;
    if ((st.id & 1) === (this.server ? 1 : 0)) this.peerStreams--;
    else this.ownStreams--;
    if ((this.goawaySent || this.goawayReceived) && this.streams.size === 0) this.finish();
  }

  private scheduleFlush(): void {
    if (this.reading || this.flushQueued) return;
    this.flushQueued = true;
    deferFlush(this.flushTask);
  }

  private flush(): void {
    if (this.holding) {
      // (a peer flooding us with PINGs or SETTINGS meanwhile: bounded as below)
      if (this.out.pending > MAX_WRITTEN_BLOCKED) this.destroy(new Error(`h2 ${this.server ? 'server' : 'client'} session: ${this.out.pending} bytes held for a graceful shutdown whose PING did not come back`));
      return;
    }
    const b = this.out.take();
    if (b !== null) this.write(b);
  }

  private write(b: Buffer): void {
    if (this.ended || this.transport.destroyed) return;
    if (this.blocked) {
      // a peer that sends PINGs, SETTINGS or requests and never reads the answers would grow the queue forever
      this.writtenBlocked += b.length;
      if (this.writtenBlocked > MAX_WRITTEN_BLOCKED) {
        this.destroy(new Error(`h2 ${this.server ? 'server' : 'client'} session: the peer does not read (${this.writtenBlocked} bytes queued after the transport said wait)`));
        return;
      }
    }
    if (!this.transport.write(b)) this.blocked = true;
    // a transport that copied (or encrypted) the bytes already (a NetConn not corked): the output buffer is reused
    if (this.transport.holdsWrites?.() === false) this.out.rewind();
  }

  private drained(): void {
    this.blocked = false;
    this.writtenBlocked = 0;
    if (this.dead) return;
    this.reading = true;
    try {
      this.pumpAll();
    } catch (e) {
      this.connError(H2_ERROR.INTERNAL_ERROR, `a stream handler threw: ${(e as Error).message}`, e as Error);
    }
    this.reading = false;
    this.flush();
  }

  // ---- input

  private read(chunk: Buffer): void {
    if (this.dead) return;
    this.reading = true;
    this.kept = false;
    try {
      this.consume(chunk);
    } catch (e) {
      this.kept = true;
      this.connError(H2_ERROR.INTERNAL_ERROR, `a stream handler threw: ${(e as Error).message}`, e as Error);
    }
    this.reading = false;
    // no view of it went to a handler that may keep one (partial frames are copied into inBuf): the transport may
    // fill its memory again (the tunnel's TLS reads: NetConn.returnsTlsReads)
    if (!this.kept) this.transport.recycle?.(chunk);
    this.flush();
  }

  private consume(chunk: Buffer): void {
    let pos = 0;
    const end = chunk.length;
    if (this.prefaceLeft > 0) {
      const at = PREFACE.length - this.prefaceLeft;
      const n = Math.min(this.prefaceLeft, end);
      for (let i = 0; i < n; i++) {
        if (chunk[i] !== PREFACE[at + i]) { this.connError(H2_ERROR.PROTOCOL_ERROR, 'not the HTTP/2 connection preface'); return; }
      }
      this.prefaceLeft -= n;
      pos = n;
    }
    if (this.dataLeft > 0) {
      // the rest (or more) of a DATA frame handed on in parts
      const n = Math.min(this.dataLeft, end - pos);
      this.dataLeft -= n;
      this.dataPart(chunk.subarray(pos, pos + n));
      pos += n;
      if (this.dead || this.dataLeft > 0) return;
    }
    if (this.inLen > 0) {
      // complete the frame that began in an earlier read
      const inb = this.inBuf!;
      if (this.inLen < FRAME_HEADER_SIZE) {
        const n = Math.min(FRAME_HEADER_SIZE - this.inLen, end - pos);
        chunk.copy(inb, this.inLen, pos, pos + n);
        this.inLen += n;
        pos += n;
        if (this.inLen < FRAME_HEADER_SIZE) return;
        if (!this.lengthOk(inb, 0)) return;
      }
      const total = FRAME_HEADER_SIZE + ((inb[0] << 16) | (inb[1] << 8) | inb[2]);
      const n = Math.min(total - this.inLen, end - pos);
      chunk.copy(inb, this.inLen, pos, pos + n);
      this.inLen += n;
      pos += n;
      if (this.inLen < total) return;
      this.inLen = 0;
      this.frame(inb, 0, true);
      if (this.dead) return;
    }
    while (end - pos >= FRAME_HEADER_SIZE) {
      if (!this.lengthOk(chunk, pos)) return;
      const len = (chunk[pos] << 16) | (chunk[pos + 1] << 8) | chunk[pos + 2];
      if (end - pos - FRAME_HEADER_SIZE < len) {
        // a DATA frame that goes on in the next reads: its part here now, the rest as it comes
        if (chunk[pos + 3] !== FRAME.DATA || (chunk[pos + 4] & FLAG.PADDED) !== 0) break;
        this.dataStart(chunk, pos, len);
        return;
      }
      this.frame(chunk, pos, false);
      if (this.dead) return;
      pos += FRAME_HEADER_SIZE + len;
    }
    if (pos < end) {
      if (end - pos >= FRAME_HEADER_SIZE && !this.lengthOk(chunk, pos)) return;
      this.inBuf ??= Buffer.allocUnsafeSlow(FRAME_HEADER_SIZE + this.maxFrame);
      chunk.copy(this.inBuf, 0, pos, end);
      this.inLen = end - pos;
    }
  }

  private lengthOk(b: Buffer, p: number): boolean {
    const len = (b[p] << 16) | (b[p + 1] << 8) | b[p + 2];
    if (len <= this.maxFrame) return true;
    this.connError(H2_ERROR.FRAME_SIZE_ERROR, `a frame of ${len} bytes (type ${b[p + 3]}) over our max frame size ${this.maxFrame}`);
    return false;
  }

  /** one whole frame at b[p..]; copied: b is our reassembly buffer (payloads handed on must be copies) */
  private frame(b: Buffer, p: number, copied: boolean): void {
    const len = (b[p] << 16) | (b[p + 1] << 8) | b[p + 2];
    const type = b[p + 3];
    const flags = b[p + 4];
    const id = ((b[p + 5] & 0x7f) << 24 | (b[p + 6] << 16) | (b[p + 7] << 8) | b[p + 8]) >>> 0;
    const s = p + FRAME_HEADER_SIZE;
    if (this.contId !== 0 && type !== FRAME.CONTINUATION) {
      return this.connError(H2_ERROR.PROTOCOL_ERROR, `a frame of type ${type} inside the header block of stream ${this.contId}`);
    }
    if (!this.gotSettings && type !== FRAME.SETTINGS) {
      return this.connError(H2_ERROR.PROTOCOL_ERROR, `the first frame is of type ${type}, not SETTINGS`);
    }
    switch (type) {
      case FRAME.DATA: return this.onDataFrame(b, s, len, flags, id, copied);
      case FRAME.HEADERS: return this.onHeadersFrame(b, s, len, flags, id);
      case FRAME.PRIORITY:
        if (id === 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, 'PRIORITY on stream 0');
        if (len !== 5) return this.streamErrorId(id, H2_ERROR.FRAME_SIZE_ERROR);
        // priorities are not acted on, but a stream depending on itself is a stream error (RFC 9113 5.3.1, a MUST)
        if (dependency(b, s) === id) return this.streamErrorId(id, H2_ERROR.PROTOCOL_ERROR);
        return;
      case FRAME.RST_STREAM: return this.onRstStream(b, s, len, id);
      case FRAME.SETTINGS: return this.onSettingsFrame(b, s, len, flags, id);
      case FRAME.PUSH_PROMISE: return this.connError(H2_ERROR.PROTOCOL_ERROR, 'PUSH_PROMISE (we announced ENABLE_PUSH 0)');
      case FRAME.PING:
        if (len !== 8) return this.connError(H2_ERROR.FRAME_SIZE_ERROR, `PING of ${len} bytes`);
        if (id !== 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, `PING on stream ${id}`);
        if ((flags & FLAG.ACK) === 0) this.out.pingAck(b, s);
        else if (this.shutdownStep !== null && b.compare(this.shutdownStep === 'fence' ? PING_FENCE : PING_NOTICE, 0, 8, s, s + 8) === 0) this.shutdownNext();
        return;
      case FRAME.GOAWAY: return this.onGoawayFrame(b, s, len, id);
      case FRAME.WINDOW_UPDATE: return this.onWindowUpdate(b, s, len, id);
      case FRAME.CONTINUATION: return this.onContinuation(b, s, len, flags, id);
      default: return; // unknown frame types are ignored (RFC 9113 section 4.1)
    }
  }

  /** a stream id of the peer's parity that it has not opened yet, or one of ours we have not */
  private idle(id: number): boolean {
    const peers = (id & 1) === (this.server ? 1 : 0);
    return peers ? id > this.lastPeerStreamId : id >= this.nextStreamId;
  }

  private rememberReset(id: number): void {
    this.recentResets[this.recentPos] = id;
    this.recentPos = (this.recentPos + 1) % RECENT_RESETS;
  }

  private recentlyReset(id: number): boolean {
    const r = this.recentResets;
    for (let i = 0; i < RECENT_RESETS; i++) if (r[i] === id) return true;
    return false;
  }

  /** an unpadded DATA frame at b[p..] whose payload ends beyond b: checked and counted whole now, its payload handed on in parts */
  private dataStart(b: Buffer, p: number, len: number): void {
    const flags = b[p + 4];
    const id = ((b[p + 5] & 0x7f) << 24 | (b[p + 6] << 16) | (b[p + 7] << 8) | b[p + 8]) >>> 0;
    // (what frame() checks first, for any frame)
    if (this.contId !== 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, `a frame of type 0 inside the header block of stream ${this.contId}`);
    if (!this.gotSettings) return this.connError(H2_ERROR.PROTOCOL_ERROR, 'the first frame is of type 0, not SETTINGS');
    const st = this.dataHead(len, flags, id);
    if (st === undefined) return;
    this.dataSt = st;
    this.dataEnd = (flags & FLAG.END_STREAM) !== 0;
    const s = p + FRAME_HEADER_SIZE;
    this.dataLeft = len - (b.length - s);
    this.dataPart(b.subarray(s));
  }

  /** a part of the DATA frame under way (the last one when dataLeft is 0) */
  private dataPart(part: Buffer): void {
    const st = this.dataSt;
    const last = this.dataLeft === 0;
    if (last) this.dataSt = null;
    if (st === null || st._done) return;
    const endStream = last && this.dataEnd;
    if (endStream) st._remoteEnded = true;
    const h = st.handler;
    if (h !== null && part.length > 0 && h.releasesData !== true) this.kept = true;
    if (part.length > 0 || endStream) h?.onData(part, endStream);
    if (endStream) this._maybeDone(st);
  }

  /**
   * The checks and the window accounting of a DATA frame of `len` bytes (padding included) whose payload is n bytes:
   * the stream to hand it to; null when it is to be dropped (a stream error was sent, or the stream was reset lately);
   * undefined after a connection error.
   */
  private dataHead(len: number, flags: number, id: number, n = len): H2Stream | null | undefined {
    if (id === 0) { this.connError(H2_ERROR.PROTOCOL_ERROR, 'DATA on stream 0'); return undefined; }
    // the whole frame (padding too) counts against the connection window; the session gives it back itself
    if (len > this.connRecvWindow) { this.connError(H2_ERROR.FLOW_CONTROL_ERROR, `DATA of ${len} bytes beyond the connection window (${this.connRecvWindow})`); return undefined; }
    this.connRecvWindow -= len;
    this.connRecvUnacked += len;
    if (this.connRecvUnacked >= this.connWindowSize >>> 1) {
      this.out.frameU32(FRAME.WINDOW_UPDATE, 0, this.connRecvUnacked);
      this.connRecvWindow += this.connRecvUnacked;
      this.connRecvUnacked = 0;
    }
    const st = this.streams.get(id);
    if (st === undefined) {
      if (this.idle(id)) { this.connError(H2_ERROR.PROTOCOL_ERROR, `DATA on idle stream ${id}`); return undefined; }
      if (!this.recentlyReset(id)) this.streamErrorId(id, H2_ERROR.STREAM_CLOSED);
      return null;
    }
    if (st._remoteEnded) { this.streamError(st, H2_ERROR.STREAM_CLOSED); return null; }
    if (!st._headReceived) { this.streamError(st, H2_ERROR.PROTOCOL_ERROR); return null; }
    if (len > st._recvWindow) { this.streamError(st, H2_ERROR.FLOW_CONTROL_ERROR); return null; }
    st._recvWindow -= len;
    if (n < len) {
      // padding is never the owner's to consume: give it back at once
      st._recvUnacked += len - n;
      if (st._recvUnacked >= this._updateThreshold) this._windowUpdate(st);
    }
    st._dataReceived += n;
    const endStream = (flags & FLAG.END_STREAM) !== 0;
    const cl = st._contentLength;
    if (cl >= 0 && (st._dataReceived > cl || (endStream && st._dataReceived !== cl))) { this.streamError(st, H2_ERROR.PROTOCOL_ERROR); return null; }
    return this.dead ? undefined : st;
  }

  private onDataFrame(b: Buffer, s: number, len: number, flags: number, id: number, copied: boolean): void {
    let ds = s;
    let de = s + len;
    if ((flags & FLAG.PADDED) !== 0) {
      if (len < 1) return this.connError(H2_ERROR.FRAME_SIZE_ERROR, 'padded DATA without a pad length');
      const pad = b[s];
      ds++;
      if (pad > de - ds) return this.connError(H2_ERROR.PROTOCOL_ERROR, `DATA padding of ${pad} bytes in a ${len}-byte frame`);
      de -= pad;
    }
    const n = de - ds;
    const st = this.dataHead(len, flags, id, n);
    if (st === null || st === undefined) return;
    const endStream = (flags & FLAG.END_STREAM) !== 0;
    let data: Buffer;
    if (n === 0) data = EMPTY;
    else if (copied) { data = Buffer.allocUnsafe(n); b.copy(data, 0, ds, de); }
    else data = b.subarray(ds, de);
    if (endStream) st._remoteEnded = true;
    const h = st.handler;
    if (h !== null && !copied && n > 0 && h.releasesData !== true) this.kept = true;
    h?.onData(data, endStream);
    if (endStream) this._maybeDone(st);
  }

  private onHeadersFrame(b: Buffer, s: number, len: number, flags: number, id: number): void {
    if (id === 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, 'HEADERS on stream 0');
    let hs = s;
    let he = s + len;
    let pad = 0;
    if ((flags & FLAG.PADDED) !== 0) {
      if (len < 1) return this.connError(H2_ERROR.FRAME_SIZE_ERROR, 'padded HEADERS without a pad length');
      pad = b[hs++];
    }
    const priority = (flags & FLAG.PRIORITY) !== 0;
    if (priority) hs += 5;
    if (hs > he || pad > he - hs) return this.connError(H2_ERROR.PROTOCOL_ERROR, `HEADERS padding or priority beyond its ${len}-byte payload`);
    he -= pad;
    const endStream = (flags & FLAG.END_STREAM) !== 0;
    // a stream depending on itself (RFC 9113 5.3.1): a stream error once the block is decoded (HPACK stays in step)
    const selfDependent = priority && dependency(b, hs - 5) === id;
    if ((flags & FLAG.END_HEADERS) !== 0) return this.headerBlock(id, b, hs, he, endStream, selfDependent);
    this.contId = id;
    this.contEnd = endStream;
    this.contSelfDependent = selfDependent;
    this.contLen = 0;
    this.appendBlock(b, hs, he);
  }

  private onContinuation(b: Buffer, s: number, len: number, flags: number, id: number): void {
    if (this.contId === 0 || id !== this.contId) return this.connError(H2_ERROR.PROTOCOL_ERROR, `CONTINUATION on stream ${id} without a header block under way`);
    if (!this.appendBlock(b, s, s + len)) return;
    if ((flags & FLAG.END_HEADERS) === 0) return;
    this.contId = 0;
    this.headerBlock(id, this.contBuf!, 0, this.contLen, this.contEnd, this.contSelfDependent);
  }

  private appendBlock(b: Buffer, from: number, to: number): boolean {
    const n = to - from;
    const need = this.contLen + n;
    if (need > BLOCK_CAP_FACTOR * this.maxHeaderList + this.maxFrame) {
      this.connError(H2_ERROR.ENHANCE_YOUR_CALM, `a header block over ${BLOCK_CAP_FACTOR * this.maxHeaderList + this.maxFrame} bytes`);
      return false;
    }
    if (this.contBuf === null || this.contBuf.length < need) {
      const next = Buffer.allocUnsafeSlow(Math.max(need, 2 * (this.contBuf?.length ?? 8192)));
      if (this.contBuf !== null) this.contBuf.copy(next, 0, 0, this.contLen);
      this.contBuf = next;
    }
    b.copy(this.contBuf, this.contLen, from, to);
    this.contLen = need;
    return true;
  }

  /** a whole header block for stream id, b[start..end]: decoded always (the HPACK context must stay in step), then used */
  private headerBlock(id: number, b: Buffer, start: number, end: number, endStream: boolean, selfDependent: boolean): void {
    let list: HeaderList;
    let tooLarge = false;
    try {
      list = this.decoder.decode(b, start, end);
    } catch (e) {
      if (e instanceof HpackError && e.code === 'HEADER_LIST_TOO_LARGE') {
        tooLarge = true;
        list = [];
      } else {
        return this.connError(H2_ERROR.COMPRESSION_ERROR, `header block of stream ${id}: ${(e as Error).message}`);
      }
    }
    const st = this.streams.get(id);
    if (st !== undefined && selfDependent) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
    if (st !== undefined) return this.laterHeaders(st, list, endStream, tooLarge);
    if (!this.server) {
      if ((id & 1) === 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, `HEADERS on stream ${id} (the server cannot open streams)`);
      if (id >= this.nextStreamId) return this.connError(H2_ERROR.PROTOCOL_ERROR, `HEADERS on idle stream ${id}`);
      if (!this.recentlyReset(id)) this.streamErrorId(id, H2_ERROR.STREAM_CLOSED);
      return;
    }
    if ((id & 1) === 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, `even stream id ${id} from a client`);
    if (id <= this.lastPeerStreamId) {
      if (this.recentlyReset(id)) return;
      return this.connError(H2_ERROR.PROTOCOL_ERROR, `HEADERS on stream ${id}, not above the last one opened (${this.lastPeerStreamId})`);
    }
    this.lastPeerStreamId = id;
    if (++this.windowOpened > RESET_WINDOW) { this.windowOpened = 1; this.windowResets = 0; }
    if (this.goawaySent || this.peerStreams >= this.maxStreams) return this.streamErrorId(id, H2_ERROR.REFUSED_STREAM);
    if (selfDependent) return this.streamErrorId(id, H2_ERROR.PROTOCOL_ERROR);
    let cl = -1;
    if (!tooLarge) {
      if (!fields.requestOk(list, this.connectProtocol)) return this.streamErrorId(id, H2_ERROR.PROTOCOL_ERROR);
      cl = fields.contentLength;
      if (endStream && cl > 0) return this.streamErrorId(id, H2_ERROR.PROTOCOL_ERROR);
    }
    const ns = new H2Stream(this, id);
    ns._headReceived = true;
    ns._remoteEnded = endStream;
    ns._contentLength = cl;
    this.streams.set(id, ns);
    this.peerStreams++;
    this.opts.onStream?.(ns, list, endStream, tooLarge);
  }

  /** a header block on an open stream: the response head (client role) or trailers */
  private laterHeaders(st: H2Stream, list: HeaderList, endStream: boolean, tooLarge: boolean): void {
    if (st._remoteEnded) return this.streamError(st, H2_ERROR.STREAM_CLOSED);
    if (tooLarge) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
    if (!st._headReceived) {
      if (!fields.responseOk(list)) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
      const status = fields.status;
      if (status < 200) {
        if (endStream) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
        st.handler?.onHeaders(list, false);
        return;
      }
      st._headReceived = true;
      st._contentLength = st._isHead || status === 304 ? -1 : fields.contentLength;
      if (endStream) {
        if (st._contentLength > 0) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
        st._remoteEnded = true;
      }
      st.handler?.onHeaders(list, endStream);
      if (endStream) this._maybeDone(st);
      return;
    }
    if (!endStream) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
    if (!fields.trailersOk(list)) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
    if (st._contentLength >= 0 && st._dataReceived !== st._contentLength) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
    st._remoteEnded = true;
    st.handler?.onTrailers(list);
    this._maybeDone(st);
  }

  private onRstStream(b: Buffer, s: number, len: number, id: number): void {
    if (len !== 4) return this.connError(H2_ERROR.FRAME_SIZE_ERROR, `RST_STREAM of ${len} bytes`);
    if (id === 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, 'RST_STREAM on stream 0');
    const st = this.streams.get(id);
    if (st === undefined) {
      if (this.idle(id)) return this.connError(H2_ERROR.PROTOCOL_ERROR, `RST_STREAM on idle stream ${id}`);
      return;
    }
    const code = b.readUInt32BE(s);
    this.remove(st);
    st.handler?.onReset(code);
    // "rapid reset" (CVE-2023-44487): streams opened and cancelled before they were answered cost us (and the
    // upstream) a request each; a stream cancelled after its response head (a watch, a long poll) does not count
    if (this.server && !st._headSent && ++this.windowResets > RESET_WINDOW / 2) {
      this.connError(H2_ERROR.ENHANCE_YOUR_CALM, `the client reset ${this.windowResets} of its last ${this.windowOpened} streams`);
    }
  }

  private onSettingsFrame(b: Buffer, s: number, len: number, flags: number, id: number): void {
    if (id !== 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, `SETTINGS on stream ${id}`);
    if ((flags & FLAG.ACK) !== 0) {
      if (len !== 0) return this.connError(H2_ERROR.FRAME_SIZE_ERROR, 'SETTINGS ACK with a payload');
      this.clearSettingsTimer();
      this._streamRecvWindow = this._initialWindow;
      return;
    }
    if (len % 6 !== 0) return this.connError(H2_ERROR.FRAME_SIZE_ERROR, `SETTINGS of ${len} bytes (not a multiple of 6)`);
    const first = !this.gotSettings;
    this.gotSettings = true;
    let streamsSet = false;
    // INITIAL_WINDOW_SIZE is applied to the streams once per frame, after its entries: per entry, a 16 KiB frame of
    // 2730 of them cost 2730 passes over up to 1000 streams (11.6 ms of CPU per frame: 1.4 MB/s pinned the loop).
    // The largest value in the frame decides whether some window went over 2^31-1 on the way (RFC 9113 6.9.2).
    let newInitial = -1;
    let maxInitial = -1;
    let minTable = Infinity;
    let lastTable = -1;
    for (let p = s; p < s + len; p += 6) {
      const key = (b[p] << 8) | b[p + 1];
      const v = b.readUInt32BE(p + 2);
      switch (key) {
        case SETTING.HEADER_TABLE_SIZE:
          // once per frame too (below): each change costs the encoder an eviction and a new ring
          if (v < minTable) minTable = v;
          lastTable = v;
          break;
        case SETTING.ENABLE_PUSH:
          if (v > 1) return this.connError(H2_ERROR.PROTOCOL_ERROR, `SETTINGS_ENABLE_PUSH ${v}`);
          break;
        case SETTING.MAX_CONCURRENT_STREAMS: this.peerMaxStreams = v; streamsSet = true; break;
        case SETTING.INITIAL_WINDOW_SIZE: {
          if (v > MAX_WINDOW) return this.connError(H2_ERROR.FLOW_CONTROL_ERROR, `SETTINGS_INITIAL_WINDOW_SIZE ${v}`);
          newInitial = v;
          if (v > maxInitial) maxInitial = v;
          break;
        }
        case SETTING.MAX_FRAME_SIZE:
          if (v < MIN_MAX_FRAME_SIZE || v > MAX_MAX_FRAME_SIZE) return this.connError(H2_ERROR.PROTOCOL_ERROR, `SETTINGS_MAX_FRAME_SIZE ${v}`);
          this.peerMaxFrame = Math.min(v, MAX_SEND_FRAME);
          break;
        default: break; // MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored
      }
    }
    if (lastTable >= 0) {
      // the smallest size of the frame first: the next block announces it before the final one (RFC 7541 4.2)
      if (minTable < lastTable) this.encoder.setMaxTableSize(minTable);
      this.encoder.setMaxTableSize(lastTable);
    }
    let grew = false;
    if (newInitial >= 0 && (newInitial !== this._peerInitialWindow || maxInitial > newInitial)) {
      const delta = newInitial - this._peerInitialWindow;
      const peak = maxInitial - this._peerInitialWindow;
      this._peerInitialWindow = newInitial;
      for (const st of this.streams.values()) {
        if (st._sendWindow + peak > MAX_WINDOW) return this.connError(H2_ERROR.FLOW_CONTROL_ERROR, `stream ${st.id} send window over 2^31-1 after SETTINGS_INITIAL_WINDOW_SIZE`);
        st._sendWindow += delta;
      }
      grew = delta > 0;
    }
    if (first && !streamsSet) this.peerMaxStreams = MAX_WINDOW;
    this.out.settings(NO_SETTINGS, true);
    if (grew) this.pumpAll();
    if (first) this.opts.onSettings?.();
  }

  private onGoawayFrame(b: Buffer, s: number, len: number, id: number): void {
    if (len < 8) return this.connError(H2_ERROR.FRAME_SIZE_ERROR, `GOAWAY of ${len} bytes`);
    if (id !== 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, `GOAWAY on stream ${id}`);
    const last = b.readUInt32BE(s) & MAX_WINDOW;
    const code = b.readUInt32BE(s + 4);
    this.goawayReceived = true;
    const ownParity = this.server ? 0 : 1;
    const refused: H2Stream[] = [];
    for (const st of this.streams.values()) if ((st.id & 1) === ownParity && st.id > last) refused.push(st);
    for (const st of refused) this.remove(st);
    for (const st of refused) st.handler?.onReset(H2_ERROR.REFUSED_STREAM);
    this.opts.onGoaway?.(last, code);
    if (this.streams.size === 0) this.finish();
  }

  private onWindowUpdate(b: Buffer, s: number, len: number, id: number): void {
    if (len !== 4) return this.connError(H2_ERROR.FRAME_SIZE_ERROR, `WINDOW_UPDATE of ${len} bytes`);
    const inc = b.readUInt32BE(s) & MAX_WINDOW;
    if (id === 0) {
      if (inc === 0) return this.connError(H2_ERROR.PROTOCOL_ERROR, 'WINDOW_UPDATE of 0 on the connection');
      this.connSendWindow += inc;
      if (this.connSendWindow > MAX_WINDOW) return this.connError(H2_ERROR.FLOW_CONTROL_ERROR, 'connection send window over 2^31-1');
      this.pumpAll();
      return;
    }
    const st = this.streams.get(id);
    if (st === undefined) {
      if (this.idle(id)) return this.connError(H2_ERROR.PROTOCOL_ERROR, `WINDOW_UPDATE on idle stream ${id}`);
      return;
    }
    if (inc === 0) return this.streamError(st, H2_ERROR.PROTOCOL_ERROR);
    st._sendWindow += inc;
    if (st._sendWindow > MAX_WINDOW) return this.streamError(st, H2_ERROR.FLOW_CONTROL_ERROR);
    this.pumpOne(st);
  }

  // ---- errors and the end

  /** a stream error on a stream we know: RST_STREAM, and its owner hears onReset(code) */
  private streamError(st: H2Stream, code: number): void {
    this._reset(st, code, true);
    // "MadeYouReset" (CVE-2025-8671): a client's stream error before its answer is a reset the client chose (the
    // stream leaves the table at once, its upstream request is cancelled): counted like its own RST_STREAM
    if (this.server && (st.id & 1) === 1 && !st._headSent && !this.dead && ++this.windowResets > RESET_WINDOW / 2) {
      this.connError(H2_ERROR.ENHANCE_YOUR_CALM, `the client made us reset ${this.windowResets} of its last ${this.windowOpened} streams`);
    }
  }

  /** a stream error on a stream without an object (refused, malformed head, closed) */
  private streamErrorId(id: number, code: number): void {
    const st = this.streams.get(id);
    if (st !== undefined) return this.streamError(st, code);
    this.out.frameU32(FRAME.RST_STREAM, id, code);
    this.rememberReset(id);
  }

  /** a connection error (RFC 9113 section 5.4.1): GOAWAY with the code, then close once it is written */
  private connError(code: number, msg: string, cause?: Error): void {
    if (this.dead) return;
    this.out.goaway(this.lastPeerStreamId, code, msg);
    const err = new Error(`h2 ${this.server ? 'server' : 'client'} session: ${msg} (${h2ErrorName(code)})`, cause ? { cause } : undefined);
    this.dead = true;
    this.resetAll(code === H2_ERROR.NO_ERROR ? H2_ERROR.INTERNAL_ERROR : code);
    this.closeTransport();
    this.notifyClose(err);
  }

  /** graceful end: everything is done after a GOAWAY */
  private finish(): void {
    if (this.dead) return;
    this.dead = true;
    this.closeTransport();
    this.notifyClose();
  }

  private closeTransport(): void {
    this.release();
    this.flush();
    this.ended = true;
    this.transport.end();
    this.transport.setTimeout(LINGER_MS, this.lingerDone);
  }

  private transportGone(): void {
    if (this.closeNotified) return;
    this.dead = true;
    this.resetAll(H2_ERROR.INTERNAL_ERROR);
    this.ended = true;
    if (!this.transport.destroyed) this.transport.end();
    this.notifyClose(this.transportError);
  }

  private resetAll(code: number): void {
    if (this.streams.size === 0) return;
    const list = [...this.streams.values()];
    this.streams.clear();
    this.peerStreams = this.ownStreams = 0;
    let thrown: unknown;
    for (const st of list) {
      st._done = true;
      st._queue = null;
      st._queued = 0;
      try { st.handler?.onReset(code); } catch (e) { thrown ??= e; }
    }
    if (thrown !== undefined) this.transportError ??= thrown as Error;
  }

  private notifyClose(err?: Error): void {
    this.clearSettingsTimer();
    if (this.shutdownTimer !== null) { clearTimeout(this.shutdownTimer); this.shutdownTimer = null; }
    if (this.closeNotified) return;
    this.closeNotified = true;
    this.opts.onClose?.(err ?? this.transportError);
  }
}
