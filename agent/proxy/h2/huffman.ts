// The static Huffman code of HPACK (RFC 7541 Appendix B) and its coder.
// The code is canonical (within one length, codes ascend with the symbol; each length continues where the
// shorter one ended), so the code lengths alone define it: the codes are rebuilt from them at module load and
// the tests pin them against codes printed in the RFC and its Appendix C examples.
// Decoding is a byte-at-a-time state machine: a state is an inner node of the code tree (bits consumed since
// the last symbol), and one table lookup per input byte gives the next state and the 0-2 symbols completed.
// No errors are thrown here (hpack.ts owns HpackError): the decoder returns a negative status instead.

/** code length in bits of each symbol 0..255, then EOS (256) */
const LENGTHS = new Uint8Array([
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
  28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //        ' ' .. '/'
  5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //             '0' .. '?'
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //               '@' .. 'O'
  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //            'P' .. '_'
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //               '`' .. 'o'
  6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //           'p' .. 0x7f
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
  24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
  21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
  26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
  30, //                                                               EOS
]);

export const EOS = 256;
/** the code of each symbol 0..256, right-aligned (at most 30 bits) */
export const HUFFMAN_CODES = new Uint32Array(257);
/** the length in bits of each symbol's code */
export const HUFFMAN_LENGTHS: Readonly<Uint8Array> = LENGTHS;

{
  const order = Array.from({ length: 257 }, (_, i) => i).sort((a, b) => LENGTHS[a] - LENGTHS[b] || a - b);
  let code = 0;
  let len = LENGTHS[order[0]];
  for (const sym of order) {
    code = code * 2 ** (LENGTHS[sym] - len);
    len = LENGTHS[sym];
    HUFFMAN_CODES[sym] = code;
    code++;
  }
  if (code !== 2 ** len) throw new Error('hpack huffman: the code lengths do not form a complete prefix code');
}

// --- decoder tables ---------------------------------------------------------------------------------------
// Tree: 256 inner nodes (node 0 = root); child >= 0 is an inner node, child < 0 is the leaf of symbol -child-1.
const CHILD = new Int16Array(256 * 2);
/** a string may end in this state: at a symbol boundary, or inside at most 7 bits of EOS's leading ones */
const ACCEPT = new Uint8Array(256);
{
  let nodes = 1;
  const depth = new Uint8Array(256);
  const ones = new Uint8Array(256); // the path from the root is all 1 bits
  ones[0] = 1;
  for (let sym = 0; sym <= EOS; sym++) {
    const code = HUFFMAN_CODES[sym];
    const len = LENGTHS[sym];
    let node = 0;
    for (let i = len - 1; i > 0; i--) {
      const bit = (code >>> i) & 1;
      let next = CHILD[node * 2 + bit];
      if (next === 0) {
        next = nodes++;
        CHILD[node * 2 + bit] = next;
        depth[next] = depth[node] + 1;
        ones[next] = ones[node] & bit;
      }
      node = next;
    }
    CHILD[node * 2 + (code & 1)] = -sym - 1;
  }
  if (nodes !== 256) throw new Error('hpack huffman: unexpected tree shape');
  for (let n = 0; n < 256; n++) ACCEPT[n] = n === 0 || (ones[n] === 1 && depth[n] <= 7) ? 1 : 0;
}

// TRANS[state << 8 | byte]: bits 0-7 next state, 8-9 symbols emitted (0-2), bit 10 EOS decoded (an error),
// 16-23 first symbol, 24-31 second symbol.
const FAIL = 0x400;
const TRANS = new Uint32Array(256 * 256);
{
  // per state and nibble first (codes are >= 5 bits, so a nibble completes at most one symbol), then each byte
  // is two nibbles: 4096 walks of 4 bits instead of 65536 of 8 at module load
  const NIB = new Int32Array(256 * 16); // bits 0-7 next state, 8 emitted, 9 EOS, 16-23 symbol
  for (let state = 0; state < 256; state++) {
    for (let nib = 0; nib < 16; nib++) {
      let node = state;
      let r = 0;
      for (let i = 3; i >= 0; i--) {
        const next = CHILD[node * 2 + ((nib >>> i) & 1)];
        if (next >= 0) { node = next; continue; }
        const sym = -next - 1;
        node = 0;
        if (sym === EOS) { r = 0x200; break; }
        r = 0x100 | (sym << 16);
      }
      NIB[state * 16 + nib] = r | node;
    }
  }
  for (let state = 0; state < 256; state++) {
    for (let byte = 0; byte < 256; byte++) {
      const a = NIB[state * 16 + (byte >>> 4)];
      let t: number;
      if (a & 0x200) t = FAIL;
      else {
        const b = NIB[(a & 0xff) * 16 + (byte & 15)];
        if (b & 0x200) t = FAIL;
        else if (a & 0x100) t = b & 0x100 ? 0x200 | (a & 0xff0000) | ((b & 0xff0000) << 8) | (b & 0xff) : 0x100 | (a & 0xff0000) | (b & 0xff);
        else t = b;
      }
      TRANS[(state << 8) | byte] = t >>> 0;
    }
  }
}

export const HUFFMAN_BAD_EOS = -1;
export const HUFFMAN_BAD_PADDING = -2;

/**
 * Decodes src[start, end) into dst from 0; returns the number of bytes written, or HUFFMAN_BAD_EOS (the EOS
 * symbol inside the string) or HUFFMAN_BAD_PADDING (padding longer than 7 bits or not EOS's leading ones).
 * dst must hold at least huffmanMaxDecodedLength(end - start) bytes.
 */
export function huffmanDecode(src: Uint8Array, start: number, end: number, dst: Uint8Array): number {
  let state = 0;
  let n = 0;
  for (let i = start; i < end; i++) {
    const t = TRANS[(state << 8) | src[i]];
    if (t & 0x700) {
      if (t & FAIL) return HUFFMAN_BAD_EOS;
      dst[n++] = (t >>> 16) & 0xff;
      if (t & 0x200) dst[n++] = t >>> 24;
    }
    state = t & 0xff;
  }
  return ACCEPT[state] === 1 ? n : HUFFMAN_BAD_PADDING;
}

/** the shortest code is 5 bits */
export function huffmanMaxDecodedLength(encodedLength: number): number {
  return ((encodedLength * 8) / 5) | 0;
}

/** the encoded length in bytes of a latin1 string */
export function huffmanEncodedLength(s: string): number {
  let bits = 0;
  for (let i = 0; i < s.length; i++) bits += LENGTHS[s.charCodeAt(i) & 0xff];
  return (bits + 7) >>> 3;
}

/** writes the code of latin1 string s at dst[off], padded with 1 bits; returns the offset after it */
export function huffmanEncode(s: string, dst: Uint8Array, off: number): number {
  let acc = 0; // fewer than 8 pending bits between symbols, so acc stays below 2^32 for codes up to 24 bits
  let nbits = 0;
  for (let i = 0; i < s.length; i++) {
    const sym = s.charCodeAt(i) & 0xff;
    let len = LENGTHS[sym];
    let code = HUFFMAN_CODES[sym];
    if (len > 24) { // rare long codes: put their top bits in first
      const hi = len - 16;
      acc = (acc << hi) | (code >>> 16);
      nbits += hi;
      while (nbits >= 8) { nbits -= 8; dst[off++] = acc >>> nbits; }
      acc &= (1 << nbits) - 1;
      code &= 0xffff;
      len = 16;
    }
    acc = ((acc << len) | code) >>> 0;
    nbits += len;
    while (nbits >= 8) { nbits -= 8; dst[off++] = acc >>> nbits; }
    acc &= (1 << nbits) - 1;
  }
  if (nbits > 0) dst[off++] = (acc << (8 - nbits)) | (0xff >>> nbits);
  return off;
}
