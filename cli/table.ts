// A small column-aligned table: a header row, two spaces between columns, numbers right-aligned, no column wider
// than its widest cell, and no trailing blanks. Cells may carry ANSI styling; widths ignore it.
import { visibleWidth, type Style, PLAIN } from './style.js';

export interface Column {
  header: string;
  /** 'right' for numbers; default left */
  align?: 'left' | 'right';
}

export type Row = string[];

export interface TableOptions {
  /** prefix for every line (e.g. two spaces for a nested table) */
  indent?: string;
  /** column widths to use instead of measuring these rows (see measure: to align several tables with each other) */
  widths?: number[];
  style?: Style;
}

/** Widest cell (or header) per column over all the given row sets. */
export function measure(columns: Column[], ...rowSets: Row[][]): number[] {
  const w = columns.map((c) => visibleWidth(c.header));
  for (const rows of rowSets) {
    for (const r of rows) columns.forEach((_, i) => { w[i] = Math.max(w[i]!, visibleWidth(r[i] ?? '')); });
  }
  return w;
}

function pad(s: string, width: number, align: 'left' | 'right'): string {
  const fill = ' '.repeat(Math.max(0, width - visibleWidth(s)));
  return align === 'right' ? fill + s : s + fill;
}

/** The table as lines (no trailing newline). */
export function renderTable(columns: Column[], rows: Row[], opts: TableOptions = {}): string[] {
  const widths = opts.widths ?? measure(columns, rows);
  const style = opts.style ?? PLAIN;
  const line = (cells: string[]): string =>
    (opts.indent ?? '') + cells.map((c, i) => pad(c, widths[i]!, columns[i]!.align ?? 'left')).join('  ').trimEnd();
  // The header is bolded after padding, so the escape codes cannot disturb the alignment.
  const header = line(columns.map((c) => c.header));
  return [style === PLAIN ? header : style.bold(header), ...rows.map(line)];
}

/** Label/value lines, the labels padded to one width: for the key facts of `status`. */
export function renderFacts(facts: [string, string][], opts: { indent?: string; style?: Style } = {}): string[] {
  const w = Math.max(0, ...facts.map(([k]) => visibleWidth(k)));
  const style = opts.style ?? PLAIN;
  return facts.map(([k, v]) => `${opts.indent ?? ''}${style.dim(pad(k, w, 'left'))}  ${v}`.trimEnd());
}
