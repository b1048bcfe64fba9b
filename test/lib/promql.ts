// Just enough PromQL and Prometheus text format to check a Grafana dashboard against a real scrape: which metric
// names an expression selects, which labels its selectors match on (per metric), which labels its aggregations and
// vector matches group by; and which metric names and label names a /metrics scrape has (and the scrape itself).
import { request } from 'node:http';

/** GET a metrics endpoint's text. */
export function scrape(url: string): Promise<string> {
  return new Promise((res, rej) => {
    const req = request(url, (r) => { let b = ''; r.on('data', (d) => { b += d; }); r.on('end', () => res(b)); });
    req.on('error', rej);
    req.setTimeout(5000, () => req.destroy(new Error('scrape timeout')));
    req.end();
  });
}

/** What one expression uses. */
export interface PromUses {
  /** metric names, in order of first appearance */
  metrics: string[];
  /** label matchers, with the metric they select on ('' for a selector without a name) */
  matchers: { metric: string; label: string }[];
  /** labels named in by (...), without (...), on (...), ignoring (...), group_left/right (...) */
  grouping: string[];
}

const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan', 'atan2']);
const IDENT = /[a-zA-Z_:][a-zA-Z0-9_:]*/y;

/** Grafana's template variables, replaced by something PromQL-shaped: `$__rate_interval` -> 5m, `$service` -> 'x'. */
export function expandGrafanaVariables(expr: string): string {
  return expr
    .replace(/\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}/g, '5m')
    .replace(/\$\{[a-zA-Z0-9_]+(:[a-z]+)?\}|\$[a-zA-Z_][a-zA-Z0-9_]*/g, 'x');
}

/** The metric names and labels an expression uses. Throws on what it cannot read (so a typo is not passed over). */
export function promUses(expr0: string): PromUses {
  const expr = expandGrafanaVariables(expr0);
  const uses: PromUses = { metrics: [], matchers: [], grouping: [] };
  const metric = (m: string) => { if (!uses.metrics.includes(m)) uses.metrics.push(m); };
  let i = 0;
  const skipSpace = () => { while (i < expr.length && /\s/.test(expr[i]!)) i++; };
  /** `{a="x", b=~"y"}` at i: its label names */
  const matcherList = (): string[] => {
    const labels: string[] = [];
    i++; // {
    for (;;) {
      skipSpace();
      if (expr[i] === '}') { i++; return labels; }
      IDENT.lastIndex = i;
      const m = IDENT.exec(expr);
      if (!m) throw new Error(`${expr0}: a label name expected at ${i}`);
      labels.push(m[0]);
      i += m[0].length;
      skipSpace();
      const op = /^(=~|!~|!=|=)/.exec(expr.slice(i));
      if (!op) throw new Error(`${expr0}: a matcher operator expected after ${m[0]}`);
      i += op[0].length;
      skipSpace();
      const str = /^"(?:[^"\\]|\\.)*"|^'(?:[^'\\]|\\.)*'|^`[^`]*`/.exec(expr.slice(i));
      if (!str) throw new Error(`${expr0}: a quoted value expected after ${m[0]}${op[0]}`);
      i += str[0].length;
      skipSpace();
      if (expr[i] === ',') i++;
    }
  };
  /** `(a, b)` at i: the names */
  const nameList = (): string[] => {
    skipSpace();
    if (expr[i] !== '(') return [];
    const end = expr.indexOf(')', i);
    if (end < 0) throw new Error(`${expr0}: unclosed label list`);
    const names = expr.slice(i + 1, end).split(',').map((s) => s.trim()).filter(Boolean);
    for (const n of names) if (!/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(n)) throw new Error(`${expr0}: '${n}' is not a label name`);
    i = end + 1;
    return names;
  };
  while (i < expr.length) {
    const c = expr[i]!;
    if (/\s/.test(c)) { i++; continue; }
    if (c === '"' || c === "'" || c === '`') {
      const str = /^"(?:[^"\\]|\\.)*"|^'(?:[^'\\]|\\.)*'|^`[^`]*`/.exec(expr.slice(i));
      if (!str) throw new Error(`${expr0}: unclosed string`);
      i += str[0].length;
      continue;
    }
    if (c === '[') { // a range or subquery: [5m], [1h:1m]
      const end = expr.indexOf(']', i);
      if (end < 0) throw new Error(`${expr0}: unclosed range`);
      i = end + 1;
      continue;
    }
    if (c === '{') { // a selector without a name
      for (const label of matcherList()) uses.matchers.push({ metric: '', label });
      continue;
    }
    if (/[0-9.]/.test(c)) { const n = /^[0-9.]+(e[+-]?[0-9]+)?[smhdwy]?/i.exec(expr.slice(i)); i += n ? n[0].length : 1; continue; }
    IDENT.lastIndex = i;
    const m = IDENT.exec(expr);
    if (!m) { i++; continue; } // operators, parentheses, commas
    const word = m[0];
    i += word.length;
    const after = i;
    skipSpace();
    if (['by', 'without', 'on', 'ignoring', 'group_left', 'group_right'].includes(word)) {
      uses.grouping.push(...nameList());
      continue;
    }
    if (KEYWORDS.has(word.toLowerCase())) continue;
    if (expr[i] === '(') continue; // a function or an aggregation (its by (...) may follow its argument)
    if (/^(by|without)\s*\(/.test(expr.slice(i))) continue; // an aggregation with its grouping first: sum by (a) (...)
    // A metric name; the keyword 'offset' may follow with a duration, handled above as a number.
    metric(word);
    if (expr[i] === '{') {
      for (const label of matcherList()) uses.matchers.push({ metric: word, label });
    } else i = after;
  }
  return uses;
}

/** One scrape: for each sample name (histograms' _bucket/_sum/_count apart), its label names and sample count. */
export interface Scrape {
  samples: Map<string, { labels: Set<string>; count: number }>;
  /** # TYPE lines: family name -> type */
  types: Map<string, string>;
}

export function parseScrape(text: string): Scrape {
  const samples: Scrape['samples'] = new Map();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name!, type!);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    let s = samples.get(m[1]!);
    if (!s) samples.set(m[1]!, (s = { labels: new Set(), count: 0 }));
    s.count++;
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"/g)) s.labels.add(l[1]!);
  }
  return { samples, types };
}
