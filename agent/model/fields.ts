// Field helpers shared by the config validators (config.ts for services, l7config.ts for their L7 part):
// every problem is collected with the path to the field, never thrown one at a time.
import { MAX_QUOTED_CHARS } from './reasons.js';
import { closest } from './suggest.js';
import type { ConfigIssue } from './types.js';

export type Obj = Record<string, unknown>;

export function isMapping(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A value as a person would recognise it in their file. */
export function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null (an empty value)';
  if (typeof v === 'string') {
    // quoted in full only when short: a 10 MB string in a config must not make a 10 MB message
    return v.length <= MAX_QUOTED_CHARS ? `${JSON.stringify(v)} (a string)` : `${JSON.stringify(v.slice(0, MAX_QUOTED_CHARS))}... (a string of ${v.length} chars)`;
  }
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return String(v);
}

export class Issues {
  readonly list: ConfigIssue[] = [];
  constructor(readonly file: string) {}
  add(path: string, message: string): void {
    this.list.push({ file: this.file, path, message });
  }
}

export const join = (path: string, key: string) => (path ? `${path}.${key}` : key);

/** Report every key that is not a known field, naming the likely intended one. */
export function checkFields(obj: Obj, path: string, known: readonly string[], issues: Issues): void {
  for (const key of Object.keys(obj)) {
    if (known.includes(key)) continue;
    const guess = closest(key, known);
    const hint = guess ? ` (did you mean '${guess}'?)` : ` (known fields: ${known.join(', ')})`;
    issues.add(join(path, key), `unknown field '${key}'${hint}`);
  }
}

/** An integer field; undefined when absent (and not required) or invalid (reported). */
export function intField(obj: Obj, key: string, path: string, min: number, max: number, required: boolean, issues: Issues): number | undefined {
  const v = obj[key];
  if (v === undefined || (v === null && !required)) {
    if (required) issues.add(join(path, key), `is required (an integer between ${min} and ${max})`);
    return undefined;
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    issues.add(join(path, key), `must be an integer between ${min} and ${max}, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

/** A number field (fractions allowed); undefined when absent or invalid (reported). */
export function numberField(obj: Obj, key: string, path: string, min: number, max: number, issues: Issues): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    issues.add(join(path, key), `must be a number between ${min} and ${max}, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

export function boolField(obj: Obj, key: string, path: string, issues: Issues): boolean | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') {
    issues.add(join(path, key), `must be true or false, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

/** A non-empty string field; undefined when absent (reported if required) or invalid (reported). */
export function stringField(obj: Obj, key: string, path: string, required: boolean, issues: Issues): string | undefined {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (required) issues.add(join(path, key), 'is required (a string)');
    return undefined;
  }
  if (typeof v !== 'string' || v === '') {
    issues.add(join(path, key), `must be a non-empty string, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

/** One of a few words, case-insensitive; undefined when absent or invalid (reported). */
export function enumField<T extends string>(obj: Obj, key: string, path: string, allowed: readonly T[], issues: Issues): T | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  return enumValue(v, join(path, key), allowed, issues);
}

/** A value that must be one of a few words, case-insensitive; undefined when invalid (reported). */
export function enumValue<T extends string>(v: unknown, path: string, allowed: readonly T[], issues: Issues): T | undefined {
  const word = typeof v === 'string' ? v.toLowerCase() : undefined;
  if (word !== undefined && (allowed as readonly string[]).includes(word)) return word as T;
  const guess = typeof v === 'string' ? closest(v, allowed) : undefined;
  issues.add(path, `must be one of ${allowed.join(', ')}, got ${describe(v)}${guess ? ` (did you mean '${guess}'?)` : ''}`);
  return undefined;
}

/** A list field; undefined when absent (reported if required) or not a list (reported). */
export function listField(obj: Obj, key: string, path: string, required: boolean, issues: Issues): unknown[] | undefined {
  const v = obj[key];
  if (v === undefined || (v === null && !required)) {
    if (required) issues.add(join(path, key), 'is required (a list)');
    return undefined;
  }
  if (!Array.isArray(v)) {
    issues.add(join(path, key), `must be a list, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

/** A mapping field; undefined when absent or not a mapping (reported, with an example of the expected shape). */
export function mappingField(obj: Obj, key: string, path: string, example: string, issues: Issues): Obj | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (!isMapping(v)) {
    issues.add(join(path, key), `must be a mapping like ${example}, got ${describe(v)}`);
    return undefined;
  }
  return v;
}
