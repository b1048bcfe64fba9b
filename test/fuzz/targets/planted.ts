// Not a parser: the suite's proof that the engine is coverage-guided. A six-byte magic value, compared a byte at a
// time (as parsers do), that random inputs do not find in the budget (2^-48 per input) and the guided run does,
// one byte per new probe.
export const dict: string[] = [];

export function run(d: Buffer): void {
  if (d.length >= 6 && d[0] === 0x73) {
    if (d[1] === 0x6d) {
      if (d[2] === 0x21) {
        if (d[3] === 0x7a) {
          if (d[4] === 0x5a) {
            if (d[5] === 0x0f) throw new Error('planted magic value found');
          }
        }
      }
    }
  }
}
