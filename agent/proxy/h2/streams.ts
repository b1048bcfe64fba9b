// The open streams of a session by id, instead of a Map<number, H2Stream>.
//
// Why not a Map: a session lives long (old space) and its streams come and go by the thousand per second. A JS
// Map that is added to and deleted from in a loop is rebuilt every few dozen additions (its deleted entries are
// only dropped by a rehash into a new backing table), and V8 leaves the obsolete table holding the entries it had
// (for iterators that may still walk it). An obsolete table of an old Map is in old space: dead, but until the
// next mark-compact every scavenge treats what it points to as alive. Each rebuild so pinned the streams open at
// that moment, and with them their handlers, exchanges and header lists: under h2load -c4 -m8 a third of all
// that was allocated survived each scavenge (1.5 MB, pauses of 2-6 ms). Here a deleted slot is overwritten at
// once and the arrays are only replaced when the table grows, so a stream is reachable only while it is open.
//
// Open addressing with linear probing and backward-shift deletion (no tombstones). Stream ids of one session
// are all odd or all even and mostly consecutive, so id >>> 1 spreads them over the slots without a hash.

/** starting slot count; doubled while more than half are used (never shrunk: at most 2 x max concurrent streams) */
const INITIAL_SLOTS = 16;

export class StreamTable<T> {
  /** ids by slot (0: free; stream id 0 is the connection, never a stream) */
  private keys = new Int32Array(INITIAL_SLOTS);
  private vals: (T | undefined)[] = new Array<T | undefined>(INITIAL_SLOTS).fill(undefined);
  private mask = INITIAL_SLOTS - 1;
  private count = 0;

  get size(): number { return this.count; }

  get(id: number): T | undefined {
    const keys = this.keys, mask = this.mask;
    for (let i = (id >>> 1) & mask; ; i = (i + 1) & mask) {
      const k = keys[i]!;
      if (k === id) return this.vals[i];
      if (k === 0) return undefined;
    }
  }

  /** id: 1 to 2^31-1 */
  set(id: number, v: T): void {
    if (!(id > 0 && id <= 0x7fffffff)) throw new RangeError(`stream table: id ${id} is not a stream id`);
    if ((this.count + 1) * 2 > this.keys.length) this.grow();
    const keys = this.keys, mask = this.mask;
    let i = (id >>> 1) & mask;
    for (; ; i = (i + 1) & mask) {
      const k = keys[i]!;
      if (k === id) { this.vals[i] = v; return; }
      if (k === 0) break;
    }
    keys[i] = id;
    this.vals[i] = v;
    this.count++;
  }

  /** true: id was there */
  delete(id: number): boolean {
    const keys = this.keys, vals = this.vals, mask = this.mask;
    let i = (id >>> 1) & mask;
    for (; ; i = (i + 1) & mask) {
      const k = keys[i]!;
      if (k === id) break;
      if (k === 0) return false;
    }
    this.count--;
    // backward shift: later entries of the run that may sit in slot i move up, so a lookup never meets a gap early
    for (let j = (i + 1) & mask; ; j = (j + 1) & mask) {
      const k = keys[j]!;
      if (k === 0) break;
      const home = (k >>> 1) & mask;
      // the entry at j may fill i when its home is not in the cyclic range (i, j]
      if (i <= j ? home <= i || home > j : home <= i && home > j) {
        keys[i] = k;
        vals[i] = vals[j];
        i = j;
      }
    }
    keys[i] = 0;
    vals[i] = undefined;
    return true;
  }

  /** the open streams, by id (for a session: the order they were opened in) */
  values(): T[] {
    const ids: number[] = [];
    const keys = this.keys;
    for (let i = 0; i < keys.length; i++) if (keys[i] !== 0) ids.push(keys[i]!);
    ids.sort((a, b) => a - b);
    const out: T[] = new Array<T>(ids.length);
    for (let i = 0; i < ids.length; i++) out[i] = this.get(ids[i]!)!;
    return out;
  }

  clear(): void {
    this.keys.fill(0);
    this.vals.fill(undefined);
    this.count = 0;
  }

  private grow(): void {
    const oldKeys = this.keys, oldVals = this.vals;
    const n = oldKeys.length * 2;
    this.keys = new Int32Array(n);
    this.vals = new Array<T | undefined>(n).fill(undefined);
    this.mask = n - 1;
    this.count = 0;
    for (let i = 0; i < oldKeys.length; i++) if (oldKeys[i] !== 0) this.set(oldKeys[i]!, oldVals[i]!);
    oldVals.fill(undefined); // (the old array may be in old space: it must not keep them alive)
  }
}
