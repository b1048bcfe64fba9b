// Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as Cilium does it.
// The kernel indexes the table with hash(client) % M, so a client keeps its backend while the
// backend set changes elsewhere, and a removed backend's clients spread over the others.
import type { Backend } from './types.js';
import { murmur3 } from './hash.js';

/** Table sizes offered by default: primes roughly doubling, as Cilium offers them. */
export const MAGLEV_PRIMES: readonly number[] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];
export const MAGLEV_MIN_SIZE = 251;
export const MAGLEV_MAX_SIZE = 65521;

// Two fixed, unrelated seeds: offset and skip must come from independent hashes (the paper's h1, h2).
const SEED_OFFSET = 0x9e3779b9;
const SEED_SKIP = 0x85ebca6b;

/**
 * Default M for a service with `backendCount` backends: the smallest offered prime >= 100 * N
 * (the paper's rule of thumb that keeps every share within ~1% of fair), capped at the largest.
 * Counted over all backends, drained ones included, so that draining does not change M (a new
 * M reshuffles the whole table).
 */
export function defaultMaglevTableSize(backendCount: number): number {
  const want = 100 * backendCount;
  for (const p of MAGLEV_PRIMES) if (p >= want) return p;
  return MAGLEV_MAX_SIZE;
}

export function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/** Identity that positions a backend in the table: independent of list order and of weight. */
export function backendIdentity(b: Pick<Backend, 'address' | 'port'>): string {
  return `${b.address}|${b.port}`;
}

/**
 * Maglev lookup table of size m (a prime): entry = index into `backends`.
 * Backends with weight 0 get no entry; an empty array when none has weight > 0.
 *
 * Deterministic: turns are taken in the order of backend identity, not list order, so the same
 * set of backends always gives the same table (removing a backend and adding it back restores it).
 * Weighted: at turn n a backend may claim a slot only while its claims * W < (n+1) * w, so each
 * claims about w/W of the table; with equal weights this is the paper's plain round robin.
 */
export function maglevTable(backends: readonly Backend[], m: number): Uint32Array {
  if (!isPrime(m)) throw new RangeError(`Maglev table size must be a prime, got ${m}`);
  const order: number[] = [];
  for (let i = 0; i < backends.length; i++) if (backends[i]!.weight > 0) order.push(i);
  const n = order.length;
  if (n === 0) return new Uint32Array(0);
  const ids = new Map<number, string>();
  for (const i of order) ids.set(i, backendIdentity(backends[i]!));
  order.sort((a, b) => {
    const x = ids.get(a)!;
    const y = ids.get(b)!;
    return x < y ? -1 : x > y ? 1 : a - b;
  });
  return fill(backends, order, m);
}

function fill(backends: readonly Backend[], order: number[], m: number): Uint32Array {
  const n = order.length;
  const weight = new Float64Array(n);
  // Int32Array, not Uint32Array: V8 keeps int32 loads in registers as integers, uint32 ones may
  // become doubles, which made this loop several times slower.
  const pos = new Int32Array(n); // current slot in each backend permutation
  const skip = new Int32Array(n);
  let total = 0;
  for (let k = 0; k < n; k++) {
    const b = backends[order[k]!]!;
    const id = backendIdentity(b);
    weight[k] = b.weight;
    total += b.weight;
    pos[k] = murmur3(id, SEED_OFFSET) % m;
    skip[k] = (murmur3(id, SEED_SKIP) % (m - 1)) + 1;
  }
  let equal = true;
  for (let k = 1; k < n; k++) if (weight[k] !== weight[0]) equal = false;
  const claimed = new Float64Array(n); // claims * total, compared with (turn + 1) * weight
  const entry = new Int32Array(m).fill(-1);
  let k = 0;
  for (let filled = 0; filled < m; filled++) {
    // Whose turn: the next backend (round robin) still below its weighted share. One always is:
    // the claims so far sum to `filled`, the shares (filled + 1) * w / W sum to filled + 1.
    if (!equal) {
      while (claimed[k]! >= (filled + 1) * weight[k]!) k = k + 1 === n ? 0 : k + 1;
      claimed[k] += total;
    }
    // Walk this backend's permutation (offset + j * skip) % m to its next free slot; m is prime
    // and 1 <= skip < m, so the walk visits every slot and always finds one.
    let c = pos[k]!;
    while (entry[c] !== -1) {
      c += skip[k]!;
      if (c >= m) c -= m;
    }
    entry[c] = order[k]!;
    c += skip[k]!;
    pos[k] = c >= m ? c - m : c;
    k = k + 1 === n ? 0 : k + 1;
  }
  return new Uint32Array(entry.buffer);
}
