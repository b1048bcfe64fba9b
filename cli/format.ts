// Human units for terminal output. --json output never goes through these: scripts get exact numbers.

/** Counts: exact below 1000, then 1.2k, 12.3k, 123k, 1.2M ... (one decimal while it still says something). */
export function humanCount(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const sign = n < 0 ? '-' : '';
  let v = Math.abs(n);
  if (v < 1000) return sign + String(Math.round(v));
  const units = ['k', 'M', 'G', 'T', 'P'];
  let i = -1;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  // 999.95k would print as "1000.0k": move up a unit instead.
  if (v >= 999.95 && i < units.length - 1) { v /= 1000; i++; }
  return sign + (v < 100 ? v.toFixed(1) : v.toFixed(0)) + units[i];
}

/** Bytes in IEC units: 512 B, 1.5 KiB, 3.4 MiB. */
export function humanBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Math.abs(n);
  if (v < 1024) return `${n < 0 ? '-' : ''}${Math.round(v)} B`;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  if (v >= 1023.95 && i < units.length - 1) { v /= 1024; i++; }
  return `${n < 0 ? '-' : ''}${v < 100 ? v.toFixed(1) : v.toFixed(0)} ${units[i]}`;
}

/** A fraction (0..1) as a percentage: 33.3%, 100%, 0%. */
export function percent(fraction: number): string {
  if (!Number.isFinite(fraction)) return '-';
  const p = fraction * 100;
  if (p === 0) return '0%';
  if (p === 100) return '100%';
  if (p < 0.1) return '<0.1%';
  return `${p.toFixed(1)}%`;
}

/** Seconds as the two largest units: 45s, 3m 12s, 2h 5m, 4d 3h. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const parts: [number, string][] = [[Math.floor(s / 86400), 'd'], [Math.floor(s / 3600) % 24, 'h'], [Math.floor(s / 60) % 60, 'm'], [s % 60, 's']];
  const first = parts.findIndex(([v]) => v > 0);
  if (first < 0) return '0s';
  return parts.slice(first, first + 2).filter(([v], i) => i === 0 || v > 0).map(([v, u]) => `${v}${u}`).join(' ');
}

/** addr:port, with brackets around IPv6 addresses. */
export function hostport(addr: string, port: number): string {
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}
