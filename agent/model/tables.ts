// Selection tables: the kernel picks a backend by indexing a frontend's table (sm_tables inner
// array). Entries here are indexes into frontend.backends; the datapath maps them to kernel
// backend ids. Built into typed arrays: 10,000 services must rebuild in well under a second.
import type { Backend, Frontend, Service } from './types.js';
import { maglevTable } from './maglev.js';

export { maglevTable } from './maglev.js';

/** 'random': one entry per backend that takes new connections (weight > 0). */
export function randomTable(backends: readonly Backend[]): Uint32Array {
  let n = 0;
  for (const b of backends) if (b.weight > 0) n++;
  const out = new Uint32Array(n);
  let j = 0;
  for (let i = 0; i < backends.length; i++) if (backends[i]!.weight > 0) out[j++] = i;
  return out;
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/**
 * Entries per backend for 'weighted': proportional to weight, reduced by the gcd; exact when the
 * reduced sum fits in maxSize, else scaled to maxSize by largest remainder with at least one
 * entry for every backend of weight > 0 (a backend kept in service must stay reachable).
 * The table is longer than maxSize only when there are more such backends than maxSize.
 */
export function weightedCounts(backends: readonly Backend[], maxSize = 4096): Uint32Array {
  const n = backends.length;
  const counts = new Uint32Array(n);
  let g = 0;
  for (const b of backends) if (b.weight > 0) g = gcd(b.weight, g);
  if (g === 0) return counts;
  let sum = 0;
  let live = 0;
  for (let i = 0; i < n; i++) {
    counts[i] = backends[i]!.weight > 0 ? backends[i]!.weight / g : 0;
    sum += counts[i]!;
    if (counts[i]! > 0) live++;
  }
  if (sum <= maxSize) return counts;
  if (live >= maxSize) {
    for (let i = 0; i < n; i++) counts[i] = counts[i]! > 0 ? 1 : 0;
    return counts;
  }
  // Largest remainder (Hamilton): floor of each quota, then the leftover entries go to the largest
  // fractional parts. Weights <= 10000 and maxSize small keep every product exact in a double.
  const remainder = new Float64Array(n);
  const quota = new Float64Array(n);
  let assigned = 0;
  for (let i = 0; i < n; i++) {
    quota[i] = (counts[i]! * maxSize) / sum;
    const floor = Math.floor(quota[i]!);
    remainder[i] = quota[i]! - floor;
    counts[i] = floor;
    assigned += floor;
  }
  const byRemainder = Array.from({ length: n }, (_, i) => i)
    .filter((i) => backends[i]!.weight > 0)
    .sort((a, b) => remainder[b]! - remainder[a]! || a - b);
  for (let r = 0; assigned < maxSize; r++, assigned++) counts[byRemainder[r % byRemainder.length]!]! += 1;
  // Every live backend at least one entry, each paid for by the backend most above its quota
  // (one exists with 2+ entries: fewer live backends than maxSize).
  for (let i = 0; i < n; i++) {
    if (backends[i]!.weight > 0 && counts[i] === 0) {
      let payer = -1;
      for (let j = 0; j < n; j++) {
        if (counts[j]! < 2) continue;
        if (payer < 0 || counts[j]! - quota[j]! > counts[payer]! - quota[payer]!) payer = j;
      }
      counts[payer] -= 1;
      counts[i] = 1;
    }
  }
  return counts;
}

/**
 * 'weighted': entries proportional to weight (see weightedCounts), interleaved in smooth weighted
 * round-robin order (nginx) rather than in blocks, so any window of the table is close to the
 * weights too.
 */
export function weightedTable(backends: readonly Backend[], maxSize = 4096): Uint32Array {
  const counts = weightedCounts(backends, maxSize);
  let total = 0;
  const live: number[] = [];
  for (let i = 0; i < counts.length; i++) {
    total += counts[i]!;
    if (counts[i]! > 0) live.push(i);
  }
  const out = new Uint32Array(total);
  const k = live.length;
  const eff = new Float64Array(k);
  for (let j = 0; j < k; j++) eff[j] = counts[live[j]!]!;
  const current = new Float64Array(k);
  for (let e = 0; e < total; e++) {
    let best = 0;
    for (let j = 0; j < k; j++) {
      current[j] += eff[j]!;
      if (current[j]! > current[best]!) best = j;
    }
    current[best] -= total;
    out[e] = live[best]!;
  }
  return out;
}

/** The selection table of one frontend of a service, by the service's algorithm. */
export function buildTable(service: Service, frontend: Frontend): Uint32Array {
  switch (service.algorithm) {
    case 'random':
      return randomTable(frontend.backends);
    case 'weighted':
      return weightedTable(frontend.backends);
    case 'maglev':
      return maglevTable(frontend.backends, service.maglevTableSize);
  }
}

/** buildTable as a plain array. Empty when no backend has weight > 0. */
export function tableFor(service: Service, frontend: Frontend): number[] {
  return Array.from(buildTable(service, frontend));
}
