// Not a parser: the suite's proof that an input that waits forever (a promise nothing settles, using no CPU) is
// caught by the watchdog's wall-clock bound, as planted-hang's endless loop is by its CPU bound.
export const dict: string[] = [];

export function run(d: Buffer): Promise<void> | void {
  // (the interval keeps the process alive, as a socket or timer a stuck parser waited on would)
  if (d[0] === 0x77) return new Promise(() => { setInterval(() => {}, 1000); });
}
