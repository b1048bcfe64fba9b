// HPACK (RFC 7541): the header compression of HTTP/2.
// Header values are bytes on the wire; they are carried as latin1 strings (one char per byte), as the
// HTTP/1.1 side does, so nothing is re-encoded on the way through.
// The proxy runs 4 blocks through here per request (request in/out, response in/out), mostly the same few
// fields every time, so the repeated case is what is tuned: an indexed field decodes to two string
// references held by the table (no slicing, no concatenation), and a field the encoder has indexed encodes
// to one or two Map lookups and a byte.
import {
  HUFFMAN_BAD_EOS, huffmanDecode, huffmanEncode, huffmanEncodedLength, huffmanMaxDecodedLength,
} from './huffman.js';

/** a header block as a flat list: [name0, value0, name1, value1, ...]; names lower-case */
export type HeaderList = string[];

export class HpackError extends Error {
  /** 'COMPRESSION_ERROR': the block is malformed (a connection error); 'HEADER_LIST_TOO_LARGE': over the limit (answer 431) */
  constructor(message: string, readonly code: 'COMPRESSION_ERROR' | 'HEADER_LIST_TOO_LARGE') { super(message); }
}

// RFC 7541 Appendix A; index 0 is not an entry.
const STATIC: readonly (readonly [string, string])[] = [
  ['', ''],
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'],
  [':scheme', 'http'], [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'],
  [':status', '304'], [':status', '400'], [':status', '404'], [':status', '500'], ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'], ['accept-language', ''], ['accept-ranges', ''], ['accept', ''],
  ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''],
  ['cache-control', ''], ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''],
  ['content-length', ''], ['content-location', ''], ['content-range', ''], ['content-type', ''],
  ['cookie', ''], ['date', ''], ['etag', ''], ['expect', ''], ['expires', ''], ['from', ''], ['host', ''],
  ['if-match', ''], ['if-modified-since', ''], ['if-none-match', ''], ['if-range', ''],
  ['if-unmodified-since', ''], ['last-modified', ''], ['link', ''], ['location', ''], ['max-forwards', ''],
  ['proxy-authenticate', ''], ['proxy-authorization', ''], ['range', ''], ['referer', ''], ['refresh', ''],
  ['retry-after', ''], ['server', ''], ['set-cookie', ''], ['strict-transport-security', ''],
  ['transfer-encoding', ''], ['user-agent', ''], ['vary', ''], ['via', ''], ['www-authenticate', ''],
];
const STATIC_COUNT = 61;
const STATIC_NAMES: string[] = STATIC.map((e) => e[0]);
const STATIC_VALUES: string[] = STATIC.map((e) => e[1]);
/** RFC 7541 4.1: an entry's size counts 32 bytes of overhead besides its name and value */
const ENTRY_OVERHEAD = 32;
/** integers above this are refused (no legitimate length or index comes near it) */
const MAX_INT = 0x7fffffff;

function compressionError(what: string, at: number): HpackError {
  return new HpackError(`hpack: ${what} at byte ${at} of the header block`, 'COMPRESSION_ERROR');
}

/** Buffer's own latin1 codec (what toString('latin1') and write(s, 'latin1') call), minus their argument checks */
interface Latin1Buffer extends Buffer {
  latin1Slice(start: number, end: number): string;
  latin1Write(s: string, offset: number, length: number): number;
}

/** latin1 text of bytes: very short strings in JS (the native call costs ~60 ns, the loop ~7 ns a byte) */
function latin1(buf: Buffer, start: number, end: number): string {
  const n = end - start;
  if (n > 7) return (buf as Latin1Buffer).latin1Slice(start, end);
  if (n === 0) return '';
  let s = '';
  for (let i = start; i < end; i++) s += String.fromCharCode(buf[i]);
  return s;
}

/** the most entries of a decoder's scratch list kept between blocks */
const SCRATCH_KEEP = 256;

/** Huffman output lands here before it becomes a string (decoding is synchronous, so one is enough) */
let huffScratch = Buffer.allocUnsafe(1024);

/**
 * Names some peer sent never-indexed (6.2.3). RFC 7541 7.1.3: an intermediary must re-encode such a field
 * never-indexed too. The decoding and the re-encoding happen on different connections (and the header list
 * carries no flags), so this is process-wide and by name, which errs on the safe side: once a peer marks a
 * name, no encoder indexes it. Bounded against a peer inventing names; past the bound, new names go unrecorded.
 */
const neverIndexedNames = new Set<string>();
const MAX_NEVER_INDEXED_NAMES = 4096;
function noteNeverIndexed(name: string): void {
  if (neverIndexedNames.size < MAX_NEVER_INDEXED_NAMES && !neverIndexedNames.has(name)) neverIndexedNames.add(name);
}

export class HpackDecoder {
  // The dynamic table: a ring of names and values; slot (next - i) mod cap holds dynamic index i (1 = newest).
  private names: string[];
  private values: string[];
  private cap: number;
  private next = 0;
  private count = 0;
  private size = 0;
  /** the table's current limit: 4096, then the peer's last size update (at most maxTableSize) */
  private limit: number;
  // the block being decoded
  private buf: Buffer = Buffer.alloc(0);
  private p = 0;
  private end = 0;
  /** where the block starts in buf (error offsets are the block's) */
  private base = 0;
  /** the list being decoded (decode() returns a copy) */
  private scratch: string[] = [];

  /**
   * maxTableSize: our SETTINGS_HEADER_TABLE_SIZE (the peer's encoder may use at most this much);
   * maxHeaderListSize: RFC 9113 list size (sum of name + value + 32 per field) above which decode() throws
   * HEADER_LIST_TOO_LARGE, after decoding the whole block so that the dynamic table stays in step.
   */
  constructor(readonly maxTableSize = 4096, readonly maxHeaderListSize = 64 * 1024) {
    if (!Number.isInteger(maxTableSize) || maxTableSize < 0 || maxTableSize > MAX_INT) {
      throw new RangeError(`hpack: maxTableSize must be an integer from 0 to ${MAX_INT}, not ${maxTableSize}`);
    }
    // The table starts at the protocol's 4096 (RFC 9113 6.5.2) whatever our setting: until the peer has our
    // SETTINGS it encodes for 4096, and after it must open a block with a size update within maxTableSize,
    // which is when this table follows. (Starting at a smaller setting would evict differently from a peer
    // that has not seen it yet.)
    this.limit = 4096;
    // the most entries 4096 bytes hold (every entry is at least 32 bytes); larger tables grow the ring on demand
    this.cap = 4096 / ENTRY_OVERHEAD + 1;
    this.names = new Array<string>(this.cap).fill('');
    this.values = new Array<string>(this.cap).fill('');
  }

  /**
   * one complete header block (HEADERS + CONTINUATION payloads joined): block[start..end] (the session passes the
   * frame it read and the block's place in it, not a view per block); error offsets count from start
   */
  decode(block: Uint8Array, start = 0, end = block.length): HeaderList {
    const buf = Buffer.isBuffer(block) ? block : Buffer.from(block.buffer, block.byteOffset, block.byteLength);
    if (!(start >= 0 && start <= end && end <= buf.length)) throw new RangeError(`hpack: block ${start}..${end} outside the ${buf.length} bytes given`);
    this.buf = buf;
    this.p = start;
    this.base = start;
    this.end = end;
    // Decoded into one array per decoder and copied out at its size: a list pushed into from empty grows to 17 slots
    // at once (and 41 past that), a copy is as long as the fields; two lists per proxied HTTP/2 request (bench l7).
    // (Its length is never set back to 0: V8 drops the backing store then.) What lies past n is stale.
    const out = this.scratch;
    let n = 0;
    let listSize = 0;
    const maxList = this.maxHeaderListSize;
    let fields = false;
    while (this.p < end) {
      const at = this.p;
      const b = buf[at];
      let name: string;
      let value: string;
      if (b & 0x80) { // 6.1 indexed field
        let idx = b & 0x7f;
        this.p = at + 1;
        if (idx === 0x7f) idx = this.intRest(0x7f);
        if (idx <= STATIC_COUNT) {
          if (idx === 0) throw this.error('index 0', at);
          name = STATIC_NAMES[idx];
          value = STATIC_VALUES[idx];
        } else {
          const i = idx - STATIC_COUNT;
          if (i > this.count) throw this.error(`index ${idx} beyond the ${STATIC_COUNT + this.count} entries of the table`, at);
          const slot = this.slot(i);
          name = this.names[slot];
          value = this.values[slot];
        }
      } else if (b & 0x40) { // 6.2.1 literal with incremental indexing
        let idx = b & 0x3f;
        this.p = at + 1;
        if (idx === 0x3f) idx = this.intRest(0x3f);
        name = idx === 0 ? this.string() : this.nameAt(idx, at);
        value = this.string();
        this.insert(name, value);
      } else if (b & 0x20) { // 6.3 dynamic table size update
        let n = b & 0x1f;
        this.p = at + 1;
        if (n === 0x1f) n = this.intRest(0x1f);
        if (fields) throw this.error('dynamic table size update after the first field', at);
        if (n > this.maxTableSize) throw this.error(`dynamic table size update to ${n}, above our limit of ${this.maxTableSize}`, at);
        this.limit = n;
        this.evictTo(n);
        continue;
      } else { // 6.2.2 without indexing (0000xxxx), 6.2.3 never indexed (0001xxxx)
        let idx = b & 0x0f;
        this.p = at + 1;
        if (idx === 0x0f) idx = this.intRest(0x0f);
        name = idx === 0 ? this.string() : this.nameAt(idx, at);
        value = this.string();
        if (b & 0x10) noteNeverIndexed(name);
      }
      fields = true;
      listSize += name.length + value.length + ENTRY_OVERHEAD;
      // past the limit only the table is kept in step: the list is refused anyway
      if (listSize <= maxList) {
        out[n++] = name;
        out[n++] = value;
      }
    }
    this.buf = EMPTY;
    if (listSize > maxList) {
      throw new HpackError(`hpack: header list of ${listSize} bytes is over the limit of ${maxList}`, 'HEADER_LIST_TOO_LARGE');
    }
    const list = out.slice(0, n);
    if (out.length > SCRATCH_KEEP) this.scratch = []; // an unusually long list: its array is not kept per session
    return list;
  }

  /** the dynamic table's size in bytes (RFC 7541 4.1) */
  get tableSize(): number { return this.size; }
  /** the dynamic table's current limit: 4096, then what the peer's size updates say */
  get tableLimit(): number { return this.limit; }
  /** the dynamic table, newest first, as [name, value] pairs (for tests and debugging) */
  tableEntries(): [string, string][] {
    const r: [string, string][] = [];
    for (let i = 1; i <= this.count; i++) { const s = this.slot(i); r.push([this.names[s], this.values[s]]); }
    return r;
  }

  private error(what: string, at: number): HpackError {
    return compressionError(what, at - this.base);
  }

  private slot(i: number): number {
    const s = this.next - i;
    return s < 0 ? s + this.cap : s;
  }

  private nameAt(idx: number, at: number): string {
    if (idx <= STATIC_COUNT) return STATIC_NAMES[idx];
    const i = idx - STATIC_COUNT;
    if (i > this.count) throw this.error(`name index ${idx} beyond the ${STATIC_COUNT + this.count} entries of the table`, at);
    return this.names[this.slot(i)];
  }

  /** the continuation bytes of an integer (5.1) whose prefix was all ones (value `v`) */
  private intRest(v: number): number {
    const buf = this.buf;
    let m = 1;
    for (;;) {
      if (this.p >= this.end) throw this.error('truncated integer', this.p);
      const b = buf[this.p++];
      v += (b & 0x7f) * m;
      if (v > MAX_INT) throw this.error('integer too large', this.p - 1);
      if ((b & 0x80) === 0) return v;
      m *= 128;
      if (m > 2 ** 28) throw this.error('integer too long', this.p - 1);
    }
  }

  /** a string literal (5.2) */
  private string(): string {
    const buf = this.buf;
    let p = this.p;
    if (p >= this.end) throw this.error('truncated string literal', p);
    const b = buf[p];
    let len = b & 0x7f;
    this.p = ++p;
    if (len === 0x7f) { len = this.intRest(0x7f); p = this.p; }
    if (len > this.end - p) throw this.error(`string literal of ${len} bytes with only ${this.end - p} left`, p);
    this.p = p + len;
    if ((b & 0x80) === 0) return latin1(buf, p, p + len);
    const max = huffmanMaxDecodedLength(len);
    if (huffScratch.length < max) huffScratch = Buffer.allocUnsafe(Math.max(max, huffScratch.length * 2));
    const n = huffmanDecode(buf, p, p + len, huffScratch);
    if (n < 0) {
      throw this.error(n === HUFFMAN_BAD_EOS ? 'EOS symbol inside a Huffman string' : 'bad Huffman padding (longer than 7 bits or not all ones)', p);
    }
    return latin1(huffScratch, 0, n);
  }

  private insert(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    if (size > this.limit) { this.evictTo(0); return; } // 4.4: an entry larger than the table empties it
    this.evictTo(this.limit - size);
    if (this.count === this.cap) this.grow();
    this.names[this.next] = name;
    this.values[this.next] = value;
    this.next = this.next + 1 === this.cap ? 0 : this.next + 1;
    this.count++;
    this.size += size;
  }

  /** a larger ring for a large table limit (entries are at least 32 bytes, so this stops at limit / 32 + 1) */
  private grow(): void {
    const cap = this.cap * 2;
    const names = new Array<string>(cap).fill('');
    const values = new Array<string>(cap).fill('');
    for (let i = this.count; i >= 1; i--) {
      const s = this.slot(i);
      names[this.count - i] = this.names[s];
      values[this.count - i] = this.values[s];
    }
    this.names = names;
    this.values = values;
    this.cap = cap;
    this.next = this.count;
  }

  /** evicts the oldest entries until the table holds at most `target` bytes */
  private evictTo(target: number): void {
    while (this.size > target) {
      const s = this.slot(this.count);
      this.size -= this.names[s].length + this.values[s].length + ENTRY_OVERHEAD;
      this.names[s] = '';
      this.values[s] = '';
      this.count--;
    }
  }
}

const EMPTY = Buffer.alloc(0);

// --- encoder ------------------------------------------------------------------------------------------------

/** how the encoder sends a literal of some name */
const enum Literal { Indexed = 0, NotIndexed = 1, NeverIndexed = 2, NeverIfShort = 3 }

/** values that change with every message: indexing them would only churn the table */
const NOT_INDEXED = new Set([':path', 'content-length', 'age', 'etag', 'if-modified-since', 'if-none-match', 'content-range', 'x-request-id']);
/** credentials: never indexed, here or by any intermediary (RFC 7541 7.1.3) */
const SENSITIVE = new Set(['authorization', 'proxy-authorization']);
/** cookies: never indexed when short (guessable), indexed when long (they repeat on every request) */
const SENSITIVE_IF_SHORT = new Set(['cookie', 'set-cookie']);
const SHORT_COOKIE = 20;
/** longer values are not indexed: they would evict many small useful entries */
const MAX_INDEXED_VALUE = 512;

function literalMode(name: string): Literal {
  return SENSITIVE.has(name) ? Literal.NeverIndexed : SENSITIVE_IF_SHORT.has(name) ? Literal.NeverIfShort
    : NOT_INDEXED.has(name) ? Literal.NotIndexed : Literal.Indexed;
}

/** what the encoder knows about one name (one per static name, and per name with live dynamic entries) */
interface NameEntry {
  /** the first static index with this name, or 0 */
  staticIndex: number;
  /** value -> where it is: -(static index) for static entries, insertion number (>= 0) for dynamic ones */
  values: Map<string, number>;
  /** the insertion number of the newest live dynamic entry with this name, or -1 */
  newest: number;
  mode: Literal;
}

/** static name -> [first index, value, index, value, index ...] */
const STATIC_BY_NAME = new Map<string, (string | number)[]>();
for (let i = 1; i <= STATIC_COUNT; i++) {
  const [n, v] = STATIC[i];
  let e = STATIC_BY_NAME.get(n);
  if (!e) STATIC_BY_NAME.set(n, e = [i]);
  e.push(v, i);
}

function staticEntry(name: string): NameEntry | undefined {
  const st = STATIC_BY_NAME.get(name);
  if (st === undefined) return undefined;
  const values = new Map<string, number>();
  for (let i = 1; i < st.length; i += 2) if (!values.has(st[i] as string)) values.set(st[i] as string, -(st[i + 1] as number));
  return { staticIndex: st[0] as number, values, newest: -1, mode: literalMode(name) };
}

/** field positions remembered by the encoder */
const MEMO = 16;

/** Where encodeInto() writes: the shape of the session's frame output (h2/frames.ts Output) */
export interface HpackSink {
  /** the bytes; reserve() may replace it, and may move what it holds down to the start of the new one (end moves too) */
  buf: Buffer;
  /** where the next byte goes */
  end: number;
  /** makes room for n more bytes after end */
  reserve(n: number): void;
}

/** encode() writes here first, then copies out a Buffer of the exact size */
const scratchSink: HpackSink = {
  buf: Buffer.allocUnsafe(4096),
  end: 0,
  reserve(n: number): void {
    if (this.end + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.end + n, this.buf.length * 2));
    this.buf.copy(next, 0, 0, this.end);
    this.buf = next;
  },
};

export interface HpackEncoderOptions {
  /** Huffman-code string literals when that makes them shorter (default false: loopback bytes are cheap, CPU is not) */
  huffman?: boolean;
  /** the most dynamic table this encoder uses, whatever the peer allows (default 4096, at most 1 MiB) */
  maxTableSize?: number;
}

export class HpackEncoder {
  private readonly huffman: boolean;
  private readonly ownLimit: number;
  /** the table size in use (min of the peer's and ours); the decoder's starts at 4096 (RFC 7541 4.2) */
  private limit = 4096;
  /** a size update is due at the start of the next block: the smallest limit since the last block, then limit */
  private pending = false;
  private pendingMin = -1;
  private readonly byName = new Map<string, NameEntry>();
  // per field position of the block: the last fully indexed field there (requests repeat in the same order)
  private readonly memoName: string[] = new Array<string>(MEMO).fill('');
  private readonly memoValue: string[] = new Array<string>(MEMO).fill('');
  /** -(static index), or the insertion number (valid while >= inserted - count) */
  // NaN until a field is remembered there: it compares false both ways, so an empty name and value (what the memo
  // arrays start with) is looked up like any field, not sent as index 61 (fuzzing found ['', ''] encoded so)
  private readonly memoAt = new Array<number>(MEMO).fill(Number.NaN);
  // the dynamic table in insertion order: a ring with `count` live entries, the newest being insertion
  // number `inserted - 1` (insertion numbers only grow, so a Map entry stays valid until its entry is evicted)
  private names: string[] = [];
  private values: string[] = [];
  private cap = 0;
  private inserted = 0;
  private count = 0;
  private size = 0;

  constructor(options: HpackEncoderOptions = {}) {
    this.huffman = options.huffman ?? false;
    const own = options.maxTableSize ?? 4096;
    if (!Number.isInteger(own) || own < 0 || own > 1 << 20) throw new RangeError(`hpack: maxTableSize must be an integer from 0 to ${1 << 20}, not ${own}`);
    this.ownLimit = own;
    if (own < 4096) this.setLimit(own);
    this.resizeRing();
  }

  /** the peer's SETTINGS_HEADER_TABLE_SIZE: a size update is emitted at the start of the next block */
  setMaxTableSize(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`hpack: header table size must be a 32-bit unsigned integer, not ${n}`);
    this.setLimit(Math.min(n, this.ownLimit));
  }

  private setLimit(n: number): void {
    if (n === this.limit && !this.pending) return;
    // RFC 7541 4.2: the smallest size since the last block is announced first, if below the final one
    this.pendingMin = this.pending ? Math.min(this.pendingMin, n) : n;
    this.pending = true;
    this.limit = n;
    this.evictTo(n);
    this.resizeRing();
  }

  /** one header block, in a Buffer of its own */
  encode(headers: HeaderList): Buffer {
    const sink = scratchSink;
    sink.end = 0;
    this.encodeInto(headers, sink);
    const n = sink.end;
    const out = Buffer.allocUnsafe(n);
    const buf = sink.buf;
    if (n <= 64) for (let i = 0; i < n; i++) out[i] = buf[i];
    else buf.copy(out, 0, 0, n);
    return out;
  }

  /**
   * one header block written at sink.end (sink.end moves past it): saves encode()'s Buffer and copy when the
   * caller has an output buffer anyway. The block is what lies between where it began and sink.end, its start
   * moved down with everything else when reserve() moved the bytes (as Output does).
   */
  encodeInto(headers: HeaderList, sink: HpackSink): void {
    sink.reserve(12);
    let buf = sink.buf;
    let p = sink.end;
    if (this.pending) {
      this.pending = false;
      if (this.pendingMin < this.limit) p = writeInt(buf, p, 0x20, 5, this.pendingMin);
      p = writeInt(buf, p, 0x20, 5, this.limit);
    }
    const n = headers.length;
    for (let i = 0; i + 1 < n; i += 2) {
      const name = headers[i];
      const value = headers[i + 1];
      // the most one field takes: two integers of up to 6 bytes and the strings (Huffman is never longer)
      const need = name.length + value.length + 12;
      if (p + need > buf.length) {
        sink.end = p;
        sink.reserve(need);
        buf = sink.buf;
        p = sink.end; // (a sink may move what it holds to the start of a new buffer: frames.ts Output does)
      }
      // the same field at the same place as in the last block, still in the table: its index, no lookups
      const k = i >>> 1;
      if (k < MEMO && this.memoName[k] === name && this.memoValue[k] === value) {
        const at = this.memoAt[k];
        if (at < 0) { buf[p++] = 0x80 | -at; continue; }
        if (at >= this.inserted - this.count) {
          const idx = STATIC_COUNT + this.inserted - at;
          if (idx < 0x7f) buf[p++] = 0x80 | idx;
          else p = writeInt(buf, p, 0x80, 7, idx);
          continue;
        }
      }
      let e = this.byName.get(name);
      if (e === undefined) {
        e = staticEntry(name);
        if (e !== undefined) this.byName.set(name, e);
      }
      let nameIndex = 0;
      let mode: Literal;
      if (e !== undefined) {
        const at = e.values.get(value);
        if (at !== undefined) {
          if (k < MEMO) { this.memoName[k] = name; this.memoValue[k] = value; this.memoAt[k] = at; }
          const idx = at < 0 ? -at : STATIC_COUNT + this.inserted - at;
          if (idx < 0x7f) buf[p++] = 0x80 | idx;
          else p = writeInt(buf, p, 0x80, 7, idx);
          continue;
        }
        nameIndex = e.staticIndex !== 0 ? e.staticIndex : e.newest >= 0 ? STATIC_COUNT + this.inserted - e.newest : 0;
        mode = e.mode;
      } else {
        mode = literalMode(name);
      }
      const entrySize = name.length + value.length + ENTRY_OVERHEAD;
      if (neverIndexedNames.size !== 0 && mode !== Literal.NeverIndexed && neverIndexedNames.has(name)) mode = Literal.NeverIndexed;
      else if (mode === Literal.NeverIfShort) mode = value.length < SHORT_COOKIE ? Literal.NeverIndexed : Literal.Indexed;
      if (mode === Literal.Indexed && (value.length > MAX_INDEXED_VALUE || entrySize > this.limit >>> 1)) mode = Literal.NotIndexed;
      if (mode === Literal.Indexed) {
        p = nameIndex < 0x3f ? (buf[p] = 0x40 | nameIndex, p + 1) : writeInt(buf, p, 0x40, 6, nameIndex);
        this.insert(name, value, entrySize, e);
      } else {
        const flags = mode === Literal.NeverIndexed ? 0x10 : 0x00;
        p = nameIndex < 0x0f ? (buf[p] = flags | nameIndex, p + 1) : writeInt(buf, p, flags, 4, nameIndex);
      }
      if (nameIndex === 0) p = this.writeString(buf, p, name);
      p = this.writeString(buf, p, value);
    }
    sink.end = p;
  }

  /** the dynamic table's size in bytes (RFC 7541 4.1) */
  get tableSize(): number { return this.size; }
  /** the dynamic table's limit in use (the smaller of the peer's and ours) */
  get tableLimit(): number { return this.limit; }
  /** the dynamic table, newest first, as [name, value] pairs (for tests and debugging) */
  tableEntries(): [string, string][] {
    const r: [string, string][] = [];
    for (let i = 1; i <= this.count; i++) {
      const s = (this.inserted - i) % this.cap;
      r.push([this.names[s], this.values[s]]);
    }
    return r;
  }

  private writeString(buf: Buffer, p: number, s: string): number {
    const len = s.length;
    if (this.huffman && len > 0) {
      const hlen = huffmanEncodedLength(s);
      if (hlen < len) {
        p = hlen < 0x7f ? (buf[p] = 0x80 | hlen, p + 1) : writeInt(buf, p, 0x80, 7, hlen);
        return huffmanEncode(s, buf, p);
      }
    }
    if (len < 0x7f) buf[p++] = len;
    else p = writeInt(buf, p, 0, 7, len);
    if (len > 32) return p + (buf as Latin1Buffer).latin1Write(s, p, len);
    for (let i = 0; i < len; i++) buf[p++] = s.charCodeAt(i);
    return p;
  }

  private insert(name: string, value: string, size: number, e: NameEntry | undefined): void {
    this.evictTo(this.limit - size);
    const at = this.inserted++;
    const s = at % this.cap;
    this.names[s] = name;
    this.values[s] = value;
    this.count++;
    this.size += size;
    if (e === undefined) e = { staticIndex: 0, values: new Map(), newest: -1, mode: Literal.Indexed };
    // the eviction above may have dropped this very name's record (its last entry went)
    if (e.newest === -1 && e.staticIndex === 0) this.byName.set(name, e);
    e.values.set(value, at);
    e.newest = at;
  }

  private evictTo(target: number): void {
    while (this.size > target) {
      const at = this.inserted - this.count;
      const s = at % this.cap;
      const name = this.names[s];
      const value = this.values[s];
      this.names[s] = '';
      this.values[s] = '';
      this.count--;
      this.size -= name.length + value.length + ENTRY_OVERHEAD;
      const e = this.byName.get(name)!;
      if (e.values.get(value) === at) e.values.delete(value);
      if (e.newest === at) {
        e.newest = -1;
        if (e.staticIndex === 0) this.byName.delete(name);
      }
    }
  }

  /** the ring holds as many entries as fit in the limit (each is at least 32 bytes) */
  private resizeRing(): void {
    const cap = Math.floor(this.limit / ENTRY_OVERHEAD) + 1;
    if (cap === this.cap) return;
    const names = new Array<string>(cap).fill('');
    const values = new Array<string>(cap).fill('');
    for (let i = this.count; i >= 1; i--) {
      const at = this.inserted - i;
      names[at % cap] = this.names[at % this.cap];
      values[at % cap] = this.values[at % this.cap];
    }
    this.names = names;
    this.values = values;
    this.cap = cap;
  }
}

/** an integer with an n-bit prefix (5.1) after the flag bits `flags`; returns the offset after it */
function writeInt(buf: Buffer, p: number, flags: number, n: number, v: number): number {
  const max = (1 << n) - 1;
  if (v < max) { buf[p++] = flags | v; return p; }
  buf[p++] = flags | max;
  v -= max;
  while (v >= 128) { buf[p++] = (v & 0x7f) | 0x80; v = Math.floor(v / 128); }
  buf[p++] = v;
  return p;
}
