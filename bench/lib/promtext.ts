// Reading the agent's Prometheus text exposition, as much as the benches need: the sum of one family's samples
// whose labels include the given ones.

/** `name{a="x",b="y"} 12` lines of family `name` whose labels contain `want`, summed. */
export function sumSamples(text: string, name: string, want: Record<string, string>): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || (line[name.length] !== '{' && line[name.length] !== ' ')) continue;
    const close = line.lastIndexOf('}');
    const labels = close > 0 ? parseLabels(line.slice(name.length + 1, close)) : {};
    const value = Number(line.slice((close > 0 ? close : name.length) + 1).trim().split(/\s+/)[0]);
    if (!Number.isFinite(value)) throw new Error(`metrics: cannot read the value of '${line.slice(0, 120)}'`);
    if (Object.entries(want).every(([k, v]) => labels[k] === v)) sum += value;
  }
  return sum;
}

function parseLabels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (let m = re.exec(s); m; m = re.exec(s)) out[m[1]!] = m[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
  return out;
}
