// Not a parser: the suite's proof that an input that never returns is caught (child.ts's watchdog) and kept.
export const dict: string[] = [];

export function run(d: Buffer): void {
  if (d[0] === 0x68) for (;;) { /* an endless loop, as a parser bug would make one */ }
}
