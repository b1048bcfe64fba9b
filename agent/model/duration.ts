// Durations and sizes as a person writes them in a config: '250ms', '5s', '1m30s'; '64KiB', 1048576.
// A bare number for a duration is refused: 5 could be seconds or milliseconds, and guessing wrong by
// a factor of 1000 is the kind of mistake a config must not make silently.

const DURATION = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$/;
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds, or a message saying what is wrong. A fraction of a millisecond is refused. */
export function parseDuration(v: unknown): number | string {
  if (typeof v === 'number') return `must be a duration with a unit like '250ms', '5s' or '1m', got the bare number ${v} (milliseconds or seconds?)`;
  if (typeof v !== 'string' || !DURATION.test(v.trim())) {
    return `must be a duration with a unit like '250ms', '5s', '1m' or '1m30s', got ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`;
  }
  let ms = 0;
  for (const m of v.trim().matchAll(DURATION_PART)) ms += Number(m[1]) * UNIT_MS[m[2]!]!;
  // 0.1s is 100.00000000000001 in floating point: round what is within a rounding error of a whole millisecond
  const rounded = Math.round(ms);
  if (Math.abs(ms - rounded) > 1e-6) return `must be a whole number of milliseconds, got ${JSON.stringify(v)}`;
  return rounded;
}

/** Milliseconds as the shortest duration string that parses back to the same value ('1m30s', '250ms'). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  let out = '';
  let rest = ms;
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (rest >= size) {
      out += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  if (rest > 0) out += `${rest}ms`;
  return out;
}

const SIZE = /^(\d+)\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)?$/;
const SIZE_UNIT: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, kB: 1000, KB: 1000, MB: 1000 ** 2, GB: 1000 ** 3 };

/** Bytes, or a message saying what is wrong. A number is a number of bytes. */
export function parseSize(v: unknown): number | string {
  if (typeof v === 'number') {
    if (Number.isInteger(v) && v >= 0) return v;
    return `must be a whole number of bytes or a size like '64KiB', got ${v}`;
  }
  const m = typeof v === 'string' ? SIZE.exec(v.trim()) : null;
  if (!m) return `must be a size like '64KiB', '1MiB' or a number of bytes, got ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`;
  return Number(m[1]) * SIZE_UNIT[m[2] ?? 'B']!;
}
