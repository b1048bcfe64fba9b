// IP address literals: one canonical text per address, so that equal addresses compare equal as
// strings everywhere (duplicate checks, map keys, logs). Pure code, no I/O.
import { isIP } from 'node:net';
import type { Family } from './types.js';

export interface CanonicalAddress {
  address: string;
  family: Family;
}

/**
 * Canonical form of an IPv4 or IPv6 literal, or null if `text` is not one.
 * IPv6 is written as RFC 5952 says (lowercase, no leading zeros, the longest run of two or more
 * zero groups compressed); an IPv4-mapped IPv6 address (::ffff:a.b.c.d) becomes plain IPv4,
 * because the kernel hands a v4 socket's destination to connect4, never to connect6 with a mapped
 * address. Zone ids (fe80::1%eth0) are refused: the datapath keys addresses by their 16 bytes only.
 */
export function canonicalAddress(text: string): CanonicalAddress | null {
  if (typeof text !== 'string') return null;
  const kind = isIP(text);
  // isIP accepts IPv4 only without leading zeros: the text is canonical already. Returning it (not a copy) lets the
  // model share the string its source decoded: 100,000 backends kept ~7 MiB of second copies (many as cons strings).
  if (kind === 4) return { address: text, family: 4 };
  if (kind !== 6 || text.includes('%')) return null;
  const bytes = parseIPv6(text);
  if (bytes === null) return null;
  if (isV4Mapped(bytes)) return { address: formatIPv4(bytes.subarray(12)), family: 4 };
  const address = formatIPv6(bytes);
  return { address: address === text ? text : address, family: 6 };
}

/** Network-order bytes of a canonical (or any valid) address: 4 for IPv4, 16 for IPv6. */
export function addressBytes(address: string): Uint8Array {
  const kind = isIP(address);
  if (kind === 4) return parseIPv4(address);
  const bytes = kind === 6 ? parseIPv6(address) : null;
  if (bytes === null) throw new Error(`not an IP address: ${JSON.stringify(address)}`);
  return bytes;
}

/**
 * The one IPv4 parser: dotted text from `from` to the end as its 32-bit value (a.b.c.d = a * 2^24 + ...), or -1 when
 * the text is not exactly a.b.c.d (the grammar of node:net isIPv4: four decimal octets 0..255, no leading zeros).
 * Parsed by hand, allocating nothing: split('.') allocated four strings per call and showed up in full-sync profiles,
 * and the proxy runs it once per accepted connection.
 */
export function ipv4Value(text: string, from = 0): number {
  let v = 0, octet = 0, digits = 0, dots = 0;
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      v = v * 256 + octet;
      dots++; octet = 0; digits = 0;
    } else if (c >= 48 && c <= 57 && digits < 3 && !(digits === 1 && octet === 0)) {
      octet = octet * 10 + (c - 48);
      if (octet > 255) return -1;
      digits++;
    } else {
      return -1;
    }
  }
  return dots === 3 && digits > 0 ? v * 256 + octet : -1;
}

function parseIPv4(text: string): Uint8Array {
  const v = ipv4Value(text);
  return Uint8Array.of(v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
}

function formatIPv4(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** 16 bytes of an IPv6 literal already accepted by isIP (so the grammar is known to be right). */
function parseIPv6(text: string): Uint8Array | null {
  const groups: number[] = [];
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const parseHalf = (half: string): number[] | null => {
    if (half === '') return [];
    const out: number[] = [];
    const parts = half.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (p.includes('.')) {
        // Embedded dotted quad: only allowed as the last part.
        if (i !== parts.length - 1 || isIP(p) !== 4) return null;
        const v4 = parseIPv4(p);
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return null;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = parseHalf(halves[0]!);
  const tail = halves.length === 2 ? parseHalf(halves[1]!) : [];
  if (head === null || tail === null) return null;
  if (halves.length === 2) {
    const zeros = 8 - head.length - tail.length;
    if (zeros < 1) return null;
    groups.push(...head, ...new Array<number>(zeros).fill(0), ...tail);
  } else {
    groups.push(...head);
  }
  if (groups.length !== 8) return null;
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[2 * i] = groups[i]! >> 8;
    bytes[2 * i + 1] = groups[i]! & 0xff;
  }
  return bytes;
}

function isV4Mapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/** RFC 5952 text. */
function formatIPv6(b: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[2 * i]! << 8) | b[2 * i + 1]!);
  // Longest run of zero groups (first one on a tie); a single zero group is not compressed.
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(':');
  if (bestLen < 2) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

/** 'a.b.c.d:port' or '[v6]:port', the usual way to write an endpoint. */
export function formatEndpoint(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}
