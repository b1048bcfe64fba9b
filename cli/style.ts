// ANSI styling, only when the stream is a terminal and NO_COLOR (https://no-color.org) is unset or empty.
// No colour library: four escape codes do not justify a dependency.

export interface Style {
  bold(s: string): string;
  dim(s: string): string;
  red(s: string): string;
  green(s: string): string;
  yellow(s: string): string;
}

const wrap = (open: number, close: number) => (s: string): string => `\x1b[${open}m${s}\x1b[${close}m`;

export const ANSI: Style = { bold: wrap(1, 22), dim: wrap(2, 22), red: wrap(31, 39), green: wrap(32, 39), yellow: wrap(33, 39) };
const id = (s: string): string => s;
export const PLAIN: Style = { bold: id, dim: id, red: id, green: id, yellow: id };

export function styleFor(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): Style {
  return stream.isTTY && !env.NO_COLOR ? ANSI : PLAIN;
}

// eslint-disable-next-line no-control-regex
const ESCAPES = /\x1b\[[0-9;]*m/g;

/** Printed width of a string: escape codes take no columns. */
export function visibleWidth(s: string): number {
  return s.replace(ESCAPES, '').length;
}
