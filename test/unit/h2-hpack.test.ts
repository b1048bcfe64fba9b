// HPACK (RFC 7541) on its own: the examples of Appendix C byte for byte (decoder and encoder, with the
// dynamic table after every block), the Huffman code against Appendix B, every malformed input the decoder
// must refuse, table size updates and eviction, the header list limit, and seeded random round trips.
import t, { type Test } from 'tap';
import http2 from 'node:http2';
import net from 'node:net';
import { seeded } from '../lib/l7model.js';
import { HpackDecoder, HpackEncoder, HpackError, type HeaderList } from '../../agent/proxy/h2/hpack.js';
import {
  HUFFMAN_BAD_EOS, HUFFMAN_BAD_PADDING, HUFFMAN_CODES, HUFFMAN_LENGTHS, huffmanDecode, huffmanEncode,
  huffmanEncodedLength, huffmanMaxDecodedLength,
} from '../../agent/proxy/h2/huffman.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const pairs = (l: HeaderList): [string, string][] => {
  const r: [string, string][] = [];
  for (let i = 0; i < l.length; i += 2) r.push([l[i], l[i + 1]]);
  return r;
};
const flat = (p: [string, string][]): HeaderList => p.flat();

function huff(s: string): Buffer {
  const b = Buffer.alloc(huffmanEncodedLength(s) + 8);
  return b.subarray(0, huffmanEncode(s, b, 0));
}
function unhuff(b: Uint8Array): string | number {
  const out = Buffer.alloc(huffmanMaxDecodedLength(b.length) + 1);
  const n = huffmanDecode(b, 0, b.length, out);
  return n < 0 ? n : out.toString('latin1', 0, n);
}

/** a seeded generator, so a failure can be replayed */
const rng = seeded;

function hpackError(t: Test, fn: () => unknown, code: HpackError['code'], what: RegExp, msg: string): void {
  try {
    fn();
    t.fail(`${msg}: no error`);
  } catch (e) {
    if (e instanceof HpackError && e.code === code && what.test(e.message)) t.pass(msg);
    else t.fail(`${msg}: ${e instanceof HpackError ? e.code : 'not an HpackError'}: ${(e as Error).message}`);
  }
}
function compressionError(t: Test, fn: () => unknown, what: RegExp, msg: string): void {
  hpackError(t, fn, 'COMPRESSION_ERROR', what, msg);
}

// --- Appendix B ----------------------------------------------------------------------------------------------

t.test('the Huffman code is the one of Appendix B', async (t) => {
  // [symbol, code, length] as printed in the RFC, across every code length
  const printed: [number, number, number][] = [
    [0, 0x1ff8, 13], [1, 0x7fffd8, 23], [2, 0xfffffe2, 28], [9, 0xffffea, 24], [10, 0x3ffffffc, 30],
    [13, 0x3ffffffd, 30], [22, 0x3ffffffe, 30], [31, 0xffffffb, 28], [32, 0x14, 6], [33, 0x3f8, 10],
    [35, 0xffa, 12], [36, 0x1ff9, 13], [38, 0xf8, 8], [39, 0x7fa, 11], [48, 0x0, 5], [58, 0x5c, 7],
    [60, 0x7ffc, 15], [92, 0x7fff0, 19], [94, 0x3ffc, 14], [97, 0x3, 5], [116, 0x9, 5], [122, 0x7b, 7],
    [123, 0x7ffe, 15], [124, 0x7fc, 11], [126, 0x1ffd, 13], [127, 0xffffffc, 28], [128, 0xfffe6, 20],
    [129, 0x3fffd2, 22], [135, 0x7fffd9, 23], [142, 0xffffeb, 24], [153, 0x1fffdc, 21], [176, 0x1fffe0, 21],
    [192, 0x3ffffe0, 26], [195, 0x7fff1, 19], [199, 0x1ffffec, 25], [203, 0x7ffffde, 27], [220, 0xffffffd, 28],
    [228, 0x3fffe9, 22], [230, 0x1fffe8, 21], [239, 0x7ffff4, 23], [249, 0xffffffe, 28], [254, 0x7fffff0, 27],
    [255, 0x3ffffee, 26], [256, 0x3fffffff, 30],
  ];
  const wrong = printed.filter(([s, c, l]) => HUFFMAN_CODES[s] !== c || HUFFMAN_LENGTHS[s] !== l);
  t.same(wrong, [], 'codes and lengths as printed');
  // the strings of Appendix C, both ways
  const strings: [string, string][] = [
    ['www.example.com', 'f1e3 c2e5 f23a 6ba0 ab90 f4ff'], ['no-cache', 'a8eb 1064 9cbf'],
    ['custom-key', '25a8 49e9 5ba9 7d7f'], ['custom-value', '25a8 49e9 5bb8 e8b4 bf'], ['302', '6402'],
    ['307', '640e ff'], ['private', 'aec3 771a 4b'], ['gzip', '9bd9 ab'],
    ['Mon, 21 Oct 2013 20:13:21 GMT', 'd07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff'],
    ['https://www.example.com', '9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3'],
    ['foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1',
      '94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07'],
  ];
  for (const [s, h] of strings) {
    t.equal(huff(s).toString('hex'), hex(h).toString('hex'), `encode ${s}`);
    t.equal(huffmanEncodedLength(s), hex(h).length, `encoded length of ${s}`);
    t.equal(unhuff(hex(h)), s, `decode ${s}`);
  }
});

t.test('every byte value round-trips through the Huffman coder', async (t) => {
  let all = '';
  for (let b = 0; b < 256; b++) all += String.fromCharCode(b);
  t.equal(unhuff(huff(all)), all, 'all 256 in one string');
  const bad: number[] = [];
  for (let b = 0; b < 256; b++) {
    const s = String.fromCharCode(b);
    for (const str of [s, s + s + s, 'a' + s, s + '0123', s + s + s + s + s + s + s]) if (unhuff(huff(str)) !== str) bad.push(b);
  }
  t.same(bad, [], 'alone and next to short and long codes (every bit alignment)');
  const r = rng(7);
  let mismatches = 0;
  for (let i = 0; i < 2000; i++) {
    let s = '';
    const n = Math.floor(r() * 40);
    for (let j = 0; j < n; j++) s += String.fromCharCode(r() < 0.7 ? 32 + Math.floor(r() * 95) : Math.floor(r() * 256));
    if (unhuff(huff(s)) !== s) mismatches++;
  }
  t.equal(mismatches, 0, '2000 random strings');
  t.equal(huff('').length, 0, 'the empty string is no bytes');
  t.equal(unhuff(Buffer.alloc(0)), '', 'and decodes back');
});

t.test('Huffman padding and EOS (5.2)', async (t) => {
  // EOS is 30 one bits: in a string it is an error, however it is padded
  t.equal(unhuff(Buffer.from([0xff, 0xff, 0xff, 0xff])), HUFFMAN_BAD_EOS, 'EOS then 2 bits of padding');
  t.equal(unhuff(Buffer.from([0x07, 0xff, 0xff, 0xff, 0xfc])), HUFFMAN_BAD_EOS, "'0' then EOS");
  // '0' is 00000: 3 one bits of padding is right, anything else is not
  t.equal(unhuff(Buffer.from([0x07])), '0', "'0' + 111");
  t.equal(unhuff(Buffer.from([0x00])), HUFFMAN_BAD_PADDING, "'0' + 000: padding not EOS's leading ones");
  t.equal(unhuff(Buffer.from([0x06])), HUFFMAN_BAD_PADDING, "'0' + 110");
  t.equal(unhuff(Buffer.from([0x07, 0xff])), HUFFMAN_BAD_PADDING, "'0' + 11 one bits: padding longer than 7 bits");
  t.equal(unhuff(Buffer.from([0xff])), HUFFMAN_BAD_PADDING, '8 one bits alone');
  // 'a' (00011) then 'e' (00101) then 6 one bits: 2 bytes, a valid 6-bit pad
  t.equal(unhuff(Buffer.from([0b00011001, 0b01111111])), 'ae', '6 bits of padding');
  // 'z' (1111011) then '0' (00000) then 4 one bits
  t.equal(unhuff(Buffer.from([0b11110110, 0b00001111])), 'z0', 'a string ending in 4 bits of padding');
  // 'a' 'a' 'z' (00011 00011 1111011) then 7 one bits: the longest padding allowed
  t.equal(unhuff(Buffer.from([0b00011000, 0b11111101, 0b11111111])), 'aaz', '7 bits of padding');
  t.equal(unhuff(Buffer.from([0b00011101])), HUFFMAN_BAD_PADDING, "'a' + 101: padding not all ones");
  // 16 bits 11111111 11111110 are the start of '\\' (19 bits): a string cannot end inside a code that is not EOS
  t.equal(unhuff(Buffer.from([0xff, 0xfe])), HUFFMAN_BAD_PADDING, 'ends inside a long code');
});

// --- Appendix C ----------------------------------------------------------------------------------------------

t.test('C.1 integers, through the decoder', async (t) => {
  // C.1.2: 1337 with a 5-bit prefix is 1f 9a 0a; as a dynamic table size update with room for it
  const d = new HpackDecoder(2000);
  t.same(d.decode(hex('3f 9a 0a')), [], 'a size update alone');
  t.equal(d.tableLimit, 1337, 'C.1.2: 1337');
  t.same(d.decode(hex('3e')), [], '30 fits the prefix');
  t.equal(d.tableLimit, 30);
  t.same(d.decode(hex('3f 00')), [], '31: the prefix all ones and a zero continuation');
  t.equal(d.tableLimit, 31);
});

t.test('C.2 single fields', async (t) => {
  const d = new HpackDecoder();
  t.same(d.decode(hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572')), ['custom-key', 'custom-header'], 'C.2.1 literal with indexing');
  t.same(d.tableEntries(), [['custom-key', 'custom-header']]);
  t.equal(d.tableSize, 55);
  const d2 = new HpackDecoder();
  t.same(d2.decode(hex('040c 2f73 616d 706c 652f 7061 7468')), [':path', '/sample/path'], 'C.2.2 literal without indexing');
  t.same(d2.tableEntries(), []);
  t.same(d2.decode(hex('1008 7061 7373 776f 7264 0673 6563 7265 74')), ['password', 'secret'], 'C.2.3 never indexed');
  t.same(d2.tableEntries(), []);
  t.same(d2.decode(hex('82')), [':method', 'GET'], 'C.2.4 indexed');
  t.equal(d2.tableSize, 0);
});

const C3_LISTS: [string, string][][] = [
  [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com']],
  [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com'], ['cache-control', 'no-cache']],
  [[':method', 'GET'], [':scheme', 'https'], [':path', '/index.html'], [':authority', 'www.example.com'], ['custom-key', 'custom-value']],
];
const C3_TABLES: [[string, string][], number][] = [
  [[[':authority', 'www.example.com']], 57],
  [[['cache-control', 'no-cache'], [':authority', 'www.example.com']], 110],
  [[['custom-key', 'custom-value'], ['cache-control', 'no-cache'], [':authority', 'www.example.com']], 164],
];
const C3 = ['8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d', '8286 84be 5808 6e6f 2d63 6163 6865',
  '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65'];
const C4 = ['8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff', '8286 84be 5886 a8eb 1064 9cbf',
  '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf'];

const C5_LISTS: [string, string][][] = [
  [[':status', '302'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['location', 'https://www.example.com']],
  [[':status', '307'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['location', 'https://www.example.com']],
  [[':status', '200'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'], ['location', 'https://www.example.com'],
    ['content-encoding', 'gzip'], ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1']],
];
const C5_TABLES: [[string, string][], number][] = [
  [[['location', 'https://www.example.com'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['cache-control', 'private'], [':status', '302']], 222],
  [[[':status', '307'], ['location', 'https://www.example.com'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['cache-control', 'private']], 222],
  [[['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'], ['content-encoding', 'gzip'], ['date', 'Mon, 21 Oct 2013 20:13:22 GMT']], 215],
];
const C5 = [
  `4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d
   546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d`,
  '4803 3330 37c1 c0bf',
  `88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f
   6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b
   2076 6572 7369 6f6e 3d31`,
];
const C6 = [
  `4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7
   8f0b 97c8 e9ae 82ae 43d3`,
  '4883 640e ffc1 c0bf',
  `88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335
   dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07`,
];

function decodeSeries(t: Test, d: HpackDecoder, blocks: string[], lists: [string, string][][], tables: [[string, string][], number][]): void {
  blocks.forEach((b, i) => {
    t.same(pairs(d.decode(hex(b))), lists[i], `block ${i + 1}: the header list`);
    t.same(d.tableEntries(), tables[i][0], `block ${i + 1}: the dynamic table`);
    t.equal(d.tableSize, tables[i][1], `block ${i + 1}: the table size`);
  });
}

t.test('C.3 and C.4: requests, decoded', async (t) => {
  decodeSeries(t, new HpackDecoder(), C3, C3_LISTS, C3_TABLES);
  decodeSeries(t, new HpackDecoder(), C4, C3_LISTS, C3_TABLES);
});

t.test('C.5 and C.6: responses with a 256-byte table (evictions), decoded', async (t) => {
  // our SETTINGS_HEADER_TABLE_SIZE is 256: the peer's first block after it opens with the update to 256 (3fe101)
  const withUpdate = (blocks: string[]) => blocks.map((b, i) => (i === 0 ? '3fe101' : '') + b);
  decodeSeries(t, new HpackDecoder(256), withUpdate(C5), C5_LISTS, C5_TABLES);
  decodeSeries(t, new HpackDecoder(256), withUpdate(C6), C5_LISTS, C5_TABLES);
  const d = new HpackDecoder(256);
  t.equal(d.tableLimit, 4096, 'until then the table is the protocol default: a peer that has not seen our SETTINGS uses 4096');
  d.decode(hex(C5[0]));
  d.decode(hex(C5[1]));
  t.equal(d.tableSize, 222 + 42, 'nothing evicted at 4096');
  compressionError(t, () => d.decode(hex('3f e2 01')), /size update to 257, above our limit of 256/, 'but updates stay within our setting');
  t.same(d.decode(hex('3f e1 01 be')), [':status', '307'], 'the update to 256 evicts down to it');
  t.equal(d.tableSize, 222);
});

t.test('the encoder writes C.3 and C.4 byte for byte', async (t) => {
  for (const [huffman, blocks] of [[false, C3], [true, C4]] as const) {
    const e = new HpackEncoder({ huffman });
    blocks.forEach((b, i) => {
      t.equal(e.encode(flat(C3_LISTS[i])).toString('hex'), hex(b).toString('hex'), `${huffman ? 'C.4' : 'C.3'}.${i + 1}`);
      t.same(e.tableEntries(), C3_TABLES[i][0], 'its dynamic table');
      t.equal(e.tableSize, C3_TABLES[i][1], 'its table size');
    });
  }
});

t.test('the encoder writes C.5 byte for byte, after announcing its 256-byte table', async (t) => {
  const e = new HpackEncoder({ maxTableSize: 256 });
  const d = new HpackDecoder(4096);
  C5.forEach((b, i) => {
    const out = e.encode(flat(C5_LISTS[i]));
    // the first block opens with the size update 256 (3f e1 01): the peer's decoder starts at 4096
    t.equal(out.toString('hex'), (i === 0 ? '3fe101' : '') + hex(b).toString('hex'), `C.5.${i + 1}`);
    t.same(e.tableEntries(), C5_TABLES[i][0], 'its dynamic table');
    t.equal(e.tableSize, C5_TABLES[i][1], 'its table size');
    t.same(pairs(d.decode(out)), C5_LISTS[i], 'and it decodes back');
    t.same(d.tableEntries(), e.tableEntries(), 'the two tables agree');
  });
  t.equal(d.tableLimit, 256, 'the decoder took the update');
  // with Huffman the first and last of C.6 come out too ('307' is 3 bytes either way: sent raw here)
  const h = new HpackEncoder({ maxTableSize: 256, huffman: true });
  t.equal(h.encode(flat(C5_LISTS[0])).toString('hex'), '3fe101' + hex(C6[0]).toString('hex'), 'C.6.1');
  t.equal(h.encode(flat(C5_LISTS[1])).toString('hex'), '4803333037c1c0bf', 'C.6.2, with 307 raw');
  t.equal(h.encode(flat(C5_LISTS[2])).toString('hex'), hex(C6[2]).toString('hex'), 'C.6.3');
});

// --- what the decoder refuses ----------------------------------------------------------------------------------

t.test('malformed blocks are COMPRESSION_ERROR', async (t) => {
  const d = () => new HpackDecoder();
  compressionError(t, () => d().decode(hex('80')), /index 0 at byte 0/, 'indexed field 0');
  compressionError(t, () => d().decode(hex('8286 be')), /index 62 beyond the 61 entries.*at byte 2/, 'an index past the (empty) dynamic table');
  compressionError(t, () => d().decode(hex('ff 00')), /index 127 beyond/, 'an index past the static table, multi-byte');
  compressionError(t, () => d().decode(hex('7e 01 61')), /name index 62 beyond/, 'a name index past the table');
  compressionError(t, () => d().decode(hex('ff')), /truncated integer/, 'an integer cut after its prefix');
  compressionError(t, () => d().decode(hex('ff 80 80')), /truncated integer/, 'an integer cut in its continuation');
  compressionError(t, () => d().decode(hex('ff ff ff ff ff 0f')), /integer too large/, 'an integer past 2^31');
  compressionError(t, () => d().decode(hex('ff 80 80 80 80 80 80 00')), /integer too long/, 'an integer padded with zero continuations');
  compressionError(t, () => d().decode(hex('40')), /truncated string literal at byte 1/, 'a literal without its name');
  compressionError(t, () => d().decode(hex('40 01 61')), /truncated string literal at byte 3/, 'a literal without its value');
  compressionError(t, () => d().decode(hex('04 05 61 62')), /string literal of 5 bytes with only 2 left/, 'a value longer than the block');
  compressionError(t, () => d().decode(hex('04 7f')), /truncated integer/, 'a string length cut in its prefix');
  compressionError(t, () => d().decode(hex('04 7f ff ff ff ff 0f')), /integer too large/, 'a huge string length');
  compressionError(t, () => d().decode(hex('04 84 ff ff ff ff')), /EOS symbol inside a Huffman string/, 'EOS in a Huffman value');
  compressionError(t, () => d().decode(hex('04 81 00')), /bad Huffman padding/, 'Huffman padding of zeros');
  compressionError(t, () => d().decode(hex('04 82 07 ff')), /bad Huffman padding/, 'Huffman padding longer than 7 bits');
  compressionError(t, () => d().decode(hex('00 82 07 ff 00')), /bad Huffman padding/, 'the same in a literal name');
  compressionError(t, () => d().decode(hex('82 20')), /size update after the first field at byte 1/, 'a size update after a field');
  compressionError(t, () => d().decode(hex('3f e2 1f')), /size update to 4097, above our limit of 4096/, 'a size update above our limit');
  compressionError(t, () => new HpackDecoder(0).decode(hex('21')), /size update to 1, above our limit of 0/, 'any update above 0');
  t.same(new HpackDecoder(0).decode(hex('20 40 01 61 01 62 ')), ['a', 'b'], 'an update to 0 with a setting of 0');
  t.same(d().decode(Buffer.alloc(0)), [], 'an empty block is an empty list');
  t.same(d().decode(hex('20 3f e1 1f 82')), [':method', 'GET'], 'several size updates at the start are fine');
});

t.test('a table size update evicts, and a block may only use what is left', async (t) => {
  const d = new HpackDecoder();
  d.decode(hex(C3[0]));
  d.decode(hex(C3[1]));
  d.decode(hex(C3[2]));
  t.equal(d.tableSize, 164);
  t.same(d.decode(hex('3f 51 be')), ['custom-key', 'custom-value'], 'limit 112: the oldest goes, index 62 is still there');
  t.same(d.tableEntries(), [['custom-key', 'custom-value'], ['cache-control', 'no-cache']]);
  t.equal(d.tableSize, 107);
  compressionError(t, () => d.decode(hex('c0')), /index 64 beyond the 63 entries/, 'the evicted entry is gone');
  t.same(d.decode(hex('20')), [], 'limit 0 empties the table');
  t.same(d.tableEntries(), []);
  t.same(d.decode(hex('40 01 61 01 62')), ['a', 'b'], 'with limit 0 a new entry is not kept');
  t.equal(d.tableSize, 0);
  t.same(d.decode(hex('3f e1 1f 40 01 61 01 62 be')), ['a', 'b', 'a', 'b'], 'back up to 4096: entries stay again');
  t.equal(d.tableSize, 34);
});

t.test('an entry larger than the table empties it; eviction keeps the newest', async (t) => {
  const d = new HpackDecoder(100);
  const lit = (n: string, v: string) => Buffer.concat([Buffer.from([0x40, n.length]), Buffer.from(n), Buffer.from([v.length]), Buffer.from(v)]);
  d.decode(Buffer.concat([hex('3f 45'), lit('a', 'x'.repeat(10)), lit('b', 'y'.repeat(10))])); // to 100; 43 + 43
  t.same(d.tableEntries().map((e) => e[0]), ['b', 'a']);
  d.decode(lit('c', 'z'.repeat(20))); // 53: 'a' goes
  t.same(d.tableEntries().map((e) => e[0]), ['c', 'b']);
  t.equal(d.tableSize, 96);
  // a new entry may take its name from the entry it evicts (RFC 7541 4.4)
  t.same(d.decode(Buffer.concat([Buffer.from([0x40 | 63, 0x00]), Buffer.from([5]), Buffer.from('value')])), ['b', 'value'], 'name from index 63, the oldest');
  t.same(d.tableEntries(), [['b', 'value'], ['c', 'z'.repeat(20)]]);
  d.decode(lit('big', 'q'.repeat(70))); // 105 > 100
  t.same(d.tableEntries(), [], 'a too-large entry empties the table and is not kept');
  t.equal(d.tableSize, 0);
});

t.test('a ring grown past its first size keeps every entry in place', async (t) => {
  const d = new HpackDecoder(65536);
  const e = new HpackEncoder({ maxTableSize: 65536 });
  e.setMaxTableSize(65536);
  const list: HeaderList = [];
  for (let i = 0; i < 1500; i++) list.push(`x-h${i}`, `v${i}`);
  t.same(d.decode(e.encode(list)), list, '1500 fields, all inserted');
  t.same(d.tableEntries(), e.tableEntries(), 'the tables agree');
  t.equal(d.tableEntries().length, 1500);
  const again = e.encode(list);
  t.ok(again.length < 1500 * 3, `the second time every field is an index (${again.length} bytes)`);
  t.same(d.decode(again), list);
});

t.test('the header list limit counts name + value + 32 and is enforced after the whole block', async (t) => {
  const d = new HpackDecoder(4096, 100);
  // 'custom-key: custom-value' is 10 + 12 + 32 = 54; two of them are 108 > 100
  const block = hex('400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65 be');
  hpackError(t, () => d.decode(block), 'HEADER_LIST_TOO_LARGE', /108 bytes.*limit of 100/, 'two fields of 54 are over 100');
  t.same(d.tableEntries(), [['custom-key', 'custom-value']], 'the entry was still inserted');
  t.same(d.decode(hex('be')), ['custom-key', 'custom-value'], 'the next block refers to it fine');
  t.same(new HpackDecoder(4096, 54).decode(hex('400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65')).length, 2, 'exactly at the limit is fine');
  // a malformed block over the limit is a compression error (the connection is broken either way)
  compressionError(t, () => d.decode(hex('be be be 80')), /index 0/, 'compression errors win');
});

t.test('names and values come out byte-exact (latin1), upper case and all', async (t) => {
  const d = new HpackDecoder();
  const bytes = Buffer.from([0x00, 0x03, 0x58, 0x2d, 0x41, 0x04, 0x00, 0x7f, 0xe9, 0xff]);
  t.same(d.decode(bytes), ['X-A', '\u0000\u007f\u00e9\u00ff'], 'raw');
  const e = new HpackEncoder({ huffman: true });
  const list = ['X-Upper', 'caf\u00e9 \u0000\u00ff', 'x-long', '\u00e9'.repeat(300)];
  t.same(new HpackDecoder().decode(e.encode(list)), list, 'Huffman, through the encoder');
});

// --- the encoder ---------------------------------------------------------------------------------------------

t.test('what the encoder indexes, and how', async (t) => {
  const e = new HpackEncoder();
  const d = new HpackDecoder();
  const list = [':method', 'GET', ':path', '/api/items?id=7', ':authority', 'svc.local', 'user-agent', 'h2load',
    'authorization', 'Bearer abc', 'cookie', 'a=1', 'cookie', 'session=0123456789abcdef0123', 'x-custom', 'one'];
  const first = e.encode(list);
  t.same(d.decode(first), list, 'decodes back');
  t.same(e.tableEntries(), [['x-custom', 'one'], ['cookie', 'session=0123456789abcdef0123'], ['user-agent', 'h2load'], [':authority', 'svc.local']],
    'indexed: authority, user-agent, long cookie, custom; not :path, authorization, short cookie');
  t.same(d.tableEntries(), e.tableEntries(), 'the decoder agrees');
  t.ok(first.includes(Buffer.from([0x10 | 0x0f, 23 - 15])), 'authorization is never indexed (0001 + name index 23)');
  t.ok(first.includes(Buffer.from([0x1f, 32 - 15, 3])), 'the short cookie is never indexed');
  t.ok(first.includes(Buffer.from([0x04, 15])), ':path is a literal without indexing (name index 4)');
  const second = e.encode(list);
  t.same(d.decode(second), list);
  t.equal(second.toString('hex'), '82' + '04' + '0f' + Buffer.from('/api/items?id=7').toString('hex') + 'c1' + 'c0' +
    '1f08' + '0a' + Buffer.from('Bearer abc').toString('hex') + '1f1103' + Buffer.from('a=1').toString('hex') + 'bf' + 'be',
  'the repeat: indexes, and the literals that are never stored');
  const big = 'v'.repeat(600);
  e.encode(['x-big', big]);
  t.same(e.tableEntries()[0], ['x-custom', 'one'], 'a 600-byte value is not indexed');
});

t.test('a repeated block is all indexes, and stays right when its entries are evicted between repeats', async (t) => {
  const e = new HpackEncoder();
  const d = new HpackDecoder();
  const list = [':method', 'GET', ':authority', 'svc.local', 'user-agent', 'ua/1', 'x-k', 'v1'];
  t.same(d.decode(e.encode(list)), list);
  const again = e.encode(list);
  t.equal(again.toString('hex'), '82c0bfbe', 'the repeat: four indexes');
  t.same(d.decode(again), list);
  t.equal(e.encode(list).toString('hex'), '82c0bfbe', 'and again (remembered by position)');
  // push them all out with 4 KiB of other entries
  const filler: HeaderList = [];
  for (let i = 0; i < 40; i++) filler.push(`x-fill-${i}`, 'f'.repeat(80));
  t.same(d.decode(e.encode(filler)), filler);
  t.notOk(e.tableEntries().some(([n]) => n === ':authority'), 'the first entries are gone');
  const third = e.encode(list);
  t.same(d.decode(third), list, 'the list still decodes right: nothing stale was referenced');
  t.equal(third[0], 0x82, 'the static one is still an index');
  // the same position with another value, then the first value again
  const other = [':method', 'POST', ':authority', 'svc.local', 'user-agent', 'ua/2', 'x-k', 'v1'];
  t.same(d.decode(e.encode(other)), other);
  t.same(d.decode(e.encode(list)), list);
  t.same(d.decode(e.encode(other)), other);
  t.same(d.tableEntries(), e.tableEntries());
});

t.test('a name a peer sent never-indexed is never indexed by any encoder after (RFC 7541 7.1.3)', async (t) => {
  const e = new HpackEncoder();
  const d = new HpackDecoder();
  const before = e.encode(['x-token-a', 'secret1']);
  t.equal(before[0], 0x40, 'an unknown name is indexed at first');
  // 0001 0000, name 'x-token-b', value 'secret2'
  const block = Buffer.concat([Buffer.from([0x10, 9]), Buffer.from('x-token-b'), Buffer.from([7]), Buffer.from('secret2')]);
  t.same(d.decode(block), ['x-token-b', 'secret2']);
  t.same(d.tableEntries(), [], 'the decoder does not store it');
  const after = e.encode(['x-token-b', 'secret2', 'x-token-b', 'other']);
  t.equal(after.toString('hex'), block.toString('hex') + '1009' + Buffer.from('x-token-b').toString('hex') + '05' + Buffer.from('other').toString('hex'),
    'the encoder (another connection) sends it never-indexed, whatever the value');
  t.same(e.tableEntries(), [['x-token-a', 'secret1']], 'and stores nothing of it');
  t.same(new HpackDecoder().decode(after), ['x-token-b', 'secret2', 'x-token-b', 'other']);
});

t.test('setMaxTableSize: the next block starts with the update (the smallest first), the tables follow', async (t) => {
  const e = new HpackEncoder();
  const d = new HpackDecoder();
  const list = ['x-a', 'aaaaaaaaaa', 'x-b', 'bbbbbbbbbb'];
  d.decode(e.encode(list));
  t.equal(e.tableSize, 90);
  e.setMaxTableSize(50);
  e.setMaxTableSize(0);
  e.setMaxTableSize(1000);
  t.equal(e.tableSize, 0, 'the encoder evicted at once');
  const b = e.encode(list);
  t.equal(b.subarray(0, 4).toString('hex'), '20' + '3fc907', 'update to 0, then to 1000');
  t.same(d.decode(b), list);
  t.equal(d.tableLimit, 1000);
  t.same(d.tableEntries(), e.tableEntries());
  t.equal(e.tableEntries().length, 2, 're-indexed after the update');
  e.setMaxTableSize(1000);
  t.equal(e.encode([]).length, 0, 'the same size again: no update');
  e.setMaxTableSize(100000);
  t.equal(e.encode([]).toString('hex'), '3fe11f', 'a larger peer table: we stay at our own 4096');
  e.setMaxTableSize(0);
  const none = e.encode(list);
  t.equal(none[0], 0x20, 'size 0');
  t.same(d.decode(none), list);
  t.same(d.tableEntries(), [], 'with size 0 nothing is indexed');
  t.same(e.tableEntries(), []);
  t.throws(() => e.setMaxTableSize(-1), RangeError);
  t.throws(() => e.setMaxTableSize(1.5), RangeError);
});

function randomList(r: () => number, names: string[], values: string[]): HeaderList {
  const out: HeaderList = [];
  const n = Math.floor(r() * 12);
  for (let i = 0; i < n; i++) {
    let name: string;
    let value: string;
    const x = r();
    if (x < 0.6) name = names[Math.floor(r() * names.length)];
    else {
      name = '';
      const len = 1 + Math.floor(r() * 20);
      for (let j = 0; j < len; j++) name += String.fromCharCode(r() < 0.8 ? 97 + Math.floor(r() * 26) : Math.floor(r() * 256));
    }
    if (r() < 0.6) value = values[Math.floor(r() * values.length)];
    else {
      value = '';
      const len = r() < 0.05 ? 200 + Math.floor(r() * 800) : Math.floor(r() * 40);
      for (let j = 0; j < len; j++) value += String.fromCharCode(r() < 0.7 ? 32 + Math.floor(r() * 95) : Math.floor(r() * 256));
    }
    out.push(name, value);
  }
  return out;
}

t.test('random header lists round-trip, with the tables in step and size changes along the way', async (t) => {
  const names = [':method', ':path', ':authority', ':scheme', ':status', 'content-type', 'content-length', 'cookie',
    'authorization', 'user-agent', 'accept', 'x-request-id', 'x-trace', 'set-cookie', 'date', 'server', 'via', 'x-a'];
  const values = ['GET', 'POST', '/', '/index.html', '200', '404', 'http', 'https', 'text/plain', '', 'gzip, deflate',
    'a=1', 'x'.repeat(100), '0', '12345', 'h2load nghttp2/1.0', 'Mon, 21 Oct 2013 20:13:21 GMT'];
  for (const huffman of [false, true]) {
    const r = rng(huffman ? 42 : 41);
    const e = new HpackEncoder({ huffman, maxTableSize: 8192 });
    const d = new HpackDecoder(8192);
    let bad = 0;
    let tableBad = 0;
    let updates = 0;
    for (let i = 0; i < 3000; i++) {
      if (r() < 0.02) { e.setMaxTableSize([0, 64, 256, 1000, 4096, 8192, 100000][Math.floor(r() * 7)]); updates++; }
      const list = randomList(r, names, values);
      const got = d.decode(e.encode(list));
      if (got.length !== list.length || got.some((s, j) => s !== list[j])) bad++;
      if (i % 10 === 0 && JSON.stringify(d.tableEntries()) !== JSON.stringify(e.tableEntries())) tableBad++;
    }
    t.equal(bad, 0, `3000 lists decode to what was encoded (huffman ${huffman}, ${updates} size changes)`);
    t.equal(tableBad, 0, 'the decoder table always equals the encoder table');
    t.equal(d.tableSize, e.tableSize);
  }
});

// --- another implementation: node's HTTP/2 (nghttp2) -------------------------------------------------------------

/** the frames a peer sends on a raw socket, after the 24-byte client preface if `preface` */
function frameReader(sock: net.Socket, preface: boolean, onFrame: (type: number, flags: number, id: number, payload: Buffer) => void): void {
  let buf = Buffer.alloc(0);
  let skip = preface ? 24 : 0;
  sock.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    if (skip > 0) {
      const n = Math.min(skip, buf.length);
      buf = buf.subarray(n);
      skip -= n;
    }
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      onFrame(buf[3], buf[4], buf.readUInt32BE(5) & 0x7fffffff, buf.subarray(9, 9 + len));
      buf = buf.subarray(9 + len);
    }
  });
}
const frame = (type: number, flags: number, id: number, payload: Buffer): Buffer => {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(id, 5);
  return Buffer.concat([h, payload]);
};
const EMPTY_SETTINGS = frame(4, 0, 0, Buffer.alloc(0));

t.test("node's HTTP/2 client: its header blocks decode (Huffman, indexing, never-indexed)", async (t) => {
  const blocks: Buffer[] = [];
  const server = net.createServer((sock) => {
    sock.write(EMPTY_SETTINGS);
    frameReader(sock, true, (type, flags, _id, payload) => {
      if (type === 1) {
        t.equal(flags & 0x04, 0x04, 'one HEADERS frame with END_HEADERS');
        let from = 0;
        let to = payload.length;
        if (flags & 0x08) { to -= payload[0]; from = 1; } // PADDED
        if (flags & 0x20) from += 5; // PRIORITY
        blocks.push(Buffer.from(payload.subarray(from, to)));
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const client = http2.connect(`http://127.0.0.1:${port}`);
  client.on('error', () => {});
  const headers = { ':path': '/a/b?c=d', 'x-bytes': 'caf\u00e9 \u00ff\u0080\t~', 'user-agent': 'hpack-test/1', cookie: 'a=1', 'x-long': 'L'.repeat(300) };
  for (let i = 0; i < 3; i++) client.request({ ...headers, 'x-n': String(i) }).on('error', () => {});
  const deadline = Date.now() + 10000;
  while (blocks.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  client.destroy();
  server.close();
  t.equal(blocks.length, 3, 'three requests seen');
  const d = new HpackDecoder();
  blocks.forEach((b, i) => {
    const got = Object.fromEntries(pairs(d.decode(b)));
    t.same(got, { ...headers, 'x-n': String(i), ':method': 'GET', ':scheme': 'http', ':authority': `127.0.0.1:${port}` }, `request ${i + 1}`);
  });
  t.ok(blocks[2].length < blocks[0].length / 4, `the repeats are mostly indexes (${blocks[0].length} then ${blocks[2].length} bytes)`);
});

t.test("node's HTTP/2 server decodes what the encoder writes", async (t) => {
  const seen: Record<string, string | string[] | undefined>[] = [];
  const server = http2.createServer();
  server.on('stream', (stream, h) => {
    seen.push(h);
    stream.respond({ ':status': 204 });
    stream.end();
  });
  const sessionErrors: string[] = [];
  // (a reset is the previous round's socket going away)
  server.on('sessionError', (e: NodeJS.ErrnoException) => { if (e.code !== 'ECONNRESET') sessionErrors.push(e.message); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const r = rng(99);
  const lists: HeaderList[] = [];
  for (let i = 0; i < 40; i++) {
    const l = [':method', 'GET', ':scheme', 'http', ':path', `/p/${i % 3}`, ':authority', 'svc.local', 'user-agent', 'hpack-test/1',
      'cookie', i % 2 ? 'a=1' : 'session=' + 'c'.repeat(40), 'x-bytes', 'caf\u00e9 \u00ff\u0080', 'authorization', 'Basic eA=='];
    const extra = new Set<number>(); // distinct names: node joins repeated ones
    while (extra.size < 4) extra.add(Math.floor(r() * 30));
    for (const x of extra) l.push(`x-r${x}`, 'v'.repeat(Math.floor(r() * 60)) + Math.floor(r() * 5));
    lists.push(l);
  }
  for (const huffman of [false, true]) {
    seen.length = 0;
    const e = new HpackEncoder({ huffman, maxTableSize: 1024 }); // the first block opens with a size update
    const sock = net.connect(port, '127.0.0.1');
    sock.on('error', () => {});
    const out: Buffer[] = [Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), EMPTY_SETTINGS];
    lists.forEach((l, i) => out.push(frame(1, 0x05, 1 + 2 * i, e.encode(l))));
    frameReader(sock, false, (type, flags) => { if (type === 4 && (flags & 1) === 0) sock.write(frame(4, 1, 0, Buffer.alloc(0))); });
    sock.write(Buffer.concat(out));
    const deadline = Date.now() + 10000;
    while (seen.length < lists.length && Date.now() < deadline && sessionErrors.length === 0) await new Promise((res) => setTimeout(res, 10));
    sock.destroy();
    t.same(sessionErrors, [], `no session error (huffman ${huffman})`);
    t.equal(seen.length, lists.length, 'every request arrived');
    let bad = 0;
    seen.forEach((h, i) => {
      const want = Object.fromEntries(pairs(lists[i]));
      for (const k of Object.keys(want)) if (h[k] !== want[k]) { bad++; if (bad < 5) t.comment(JSON.stringify([i, k, h[k], want[k]])); }
    });
    t.equal(bad, 0, 'every field as sent');
  }
  server.close();
});

// --- fuzz ----------------------------------------------------------------------------------------------------

// (last: random blocks may mark random names never-indexed, process-wide)
t.test('random and mutated bytes: only HpackError, never a hang', async (t) => {
  const r = rng(1234);
  const other: unknown[] = [];
  let errors = 0;
  let ok = 0;
  const valid = [...C3, ...C4, ...C5, ...C6].map(hex);
  const start = Date.now();
  for (let i = 0; i < 20000; i++) {
    let block: Buffer;
    if (i % 2 === 0) {
      block = Buffer.alloc(Math.floor(r() * 64));
      for (let j = 0; j < block.length; j++) block[j] = Math.floor(r() * 256);
    } else {
      block = Buffer.from(valid[Math.floor(r() * valid.length)]);
      const flips = 1 + Math.floor(r() * 3);
      for (let j = 0; j < flips; j++) block[Math.floor(r() * block.length)] = Math.floor(r() * 256);
      if (r() < 0.3) block = block.subarray(0, Math.floor(r() * block.length));
    }
    const d = new HpackDecoder(r() < 0.5 ? 256 : 4096, r() < 0.5 ? 200 : 65536);
    try {
      d.decode(block);
      d.decode(block); // again, against the table the first left
      ok++;
    } catch (e) {
      if (e instanceof HpackError) errors++;
      else other.push(e);
    }
  }
  // large random blocks: mostly refused early, but never slow
  for (let i = 0; i < 20; i++) {
    const block = Buffer.alloc(64 * 1024);
    for (let j = 0; j < block.length; j++) block[j] = Math.floor(r() * 256);
    if (i % 2) block[0] = 0x80 | 0x02; // start with a valid field
    try { new HpackDecoder().decode(block); ok++; } catch (e) { if (e instanceof HpackError) errors++; else other.push(e); }
  }
  // a long valid block of literals: decoded whole, then refused by the list limit
  const many: HeaderList = [];
  for (let i = 0; i < 5000; i++) many.push(`x-${i}`, 'v'.repeat(i % 50));
  const e = new HpackEncoder({ huffman: true });
  hpackError(t, () => new HpackDecoder().decode(e.encode(many)), 'HEADER_LIST_TOO_LARGE', /over the limit of 65536/, '5000 fields');
  t.same(other, [], 'nothing but HpackError');
  t.ok(errors > 1000 && ok > 100, `both outcomes happen (${errors} errors, ${ok} decoded)`);
  t.ok(Date.now() - start < 60000, 'in bounded time');
});

// A finding of the fuzz target test/fuzz/targets/hpack.ts (encode/decode round trip), once wrong.
t.test('fuzz finding: an empty name and value is encoded as itself, not as what the encoder\'s memo started with', async (t) => {
  const enc = new HpackEncoder();
  const dec = new HpackDecoder();
  const list = ['', '', 'x', '1', '', ''];
  t.same(dec.decode(enc.encode(list)), list, 'first block (was: www-authenticate, index 61)');
  t.same(dec.decode(enc.encode(list)), list, 'second block: the memo and the table are in step');
});
