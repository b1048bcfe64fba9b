// The HPACK decoder fed header blocks from a peer (a sequence of blocks through one decoder, as a connection does).
// Crashes: anything but HpackError. Invariants: the dynamic table never holds more than its limit, the limit never
// exceeds our SETTINGS_HEADER_TABLE_SIZE, and every decoded list encodes and decodes back to itself (our encoder,
// both with and without Huffman, through a decoder of its own).
import { HpackDecoder, HpackEncoder, HpackError } from '../../../agent/proxy/h2/hpack.js';
import { invariant, messages } from './common.js';

export const dict = [
  '\x82', '\x84', '\x86', '\x87', '\x41\x0fwww.example.com', '\x3f\xe1\x1f', '\x20', '\x3f\xe1\x1f', '\x7f\x00', '\x0f\x2f', '\x10',
  '\x40\x0acustom-key\x0dcustom-header', '\xbe', '\xff\xff\xff\xff\x0f', '\x88', '\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff',
  '\x00\x03abc\x03def', '\x80', '\x7f\x80\x80\x80\x80\x80\x80\x01',
];

const SIZES = [4096, 0, 256, 65536];

export function run(data: Buffer): void {
  if (data.length === 0) return;
  const maxTable = SIZES[data[0]! & 3]!;
  const maxList = (data[0]! & 4) !== 0 ? 512 : 64 * 1024;
  const d = new HpackDecoder(maxTable, maxList);
  const enc = [new HpackEncoder(), new HpackEncoder({ huffman: true, maxTableSize: 256 })];
  const dec = [new HpackDecoder(), new HpackDecoder(4096)];
  for (const [start, end] of messages(data, 1)) {
    let list: string[];
    try {
      list = d.decode(data, start, end);
    } catch (e) {
      invariant(e instanceof HpackError, () => `decode threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
      checkTable(d, maxTable);
      if (e.code === 'COMPRESSION_ERROR') return; // a connection error: nothing more is decoded
      continue;
    }
    checkTable(d, maxTable);
    invariant(list.length % 2 === 0, 'an odd-length header list');
    for (let k = 0; k < 2; k++) {
      const back = dec[k]!.decode(enc[k]!.encode(list));
      invariant(back.length === list.length && back.every((x, i) => x === list[i]),
        () => `round trip ${k === 0 ? 'plain' : 'huffman'}: the list came back different\n${JSON.stringify(list).slice(0, 300)}\n${JSON.stringify(back).slice(0, 300)}`);
    }
  }
}

function checkTable(d: HpackDecoder, maxTable: number): void {
  let size = 0;
  for (const [n, v] of d.tableEntries()) size += n.length + v.length + 32;
  invariant(size === d.tableSize, `table entries add up to ${size}, tableSize says ${d.tableSize}`);
  invariant(d.tableSize <= d.tableLimit, `table ${d.tableSize} bytes over its limit ${d.tableLimit}`);
  invariant(d.tableLimit <= Math.max(maxTable, 4096), `limit ${d.tableLimit} over our setting ${maxTable}`);
}
