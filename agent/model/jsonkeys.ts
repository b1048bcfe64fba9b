// Duplicate keys of a JSON text, found in one pass over it. JSON.parse keeps the last of two equal keys without a
// word, and a config must not silently mean something else than it says; the YAML parser found them before (JSON is
// YAML 1.2), at about 85% of parseConfig's time for a JSON config: 2,000 services took 550 ms, 4,000 640 ms. Pure code.

/**
 * Where each repeated key of `text` starts (the offset of its opening quote), in text order: every occurrence of a key
 * after the first in the same object. `text` must be valid JSON (JSON.parse accepted it): the scan tracks only the
 * structure (objects, arrays, strings), not the grammar. Keys compare by value, escapes decoded ("a" and "\u0061"
 * are the same key), as YAML compared them.
 */
export function duplicateJsonKeys(text: string): number[] {
  const dups: number[] = [];
  // one entry per open container: the keys seen so far of an object, null for an array
  const stack: Array<Set<string> | null> = [];
  let top: Set<string> | null = null;
  let expectKey = false;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      // the closing quote: the next one not escaped (preceded by an even number of backslashes)
      let j = i;
      let escaped = false;
      for (;;) {
        j = text.indexOf('"', j + 1);
        if (j < 0) return dups; // not valid JSON after all: nothing more to say
        let k = j - 1;
        while (text.charCodeAt(k) === 0x5c /* \ */) k--;
        if ((j - 1 - k) % 2 === 0) break;
        escaped = true;
      }
      if (expectKey && top) {
        for (let k = i + 1; k < j && !escaped; k++) escaped = text.charCodeAt(k) === 0x5c; // a key is short
        const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
        if (top.has(key)) dups.push(i);
        else top.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */) {
      stack.push(top);
      top = new Set();
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      stack.push(top);
      top = null;
      expectKey = false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      top = stack.pop() ?? null;
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = top !== null;
    }
  }
  return dups;
}

/** 1-based line and column of `offset` in `text` (lines end at \n). */
export function lineColumn(text: string, offset: number): { line: number; col: number } {
  const at = Math.max(0, Math.min(offset, text.length));
  let line = 1;
  let start = 0;
  for (let nl = text.indexOf('\n'); nl >= 0 && nl < at; nl = text.indexOf('\n', nl + 1)) {
    line++;
    start = nl + 1;
  }
  return { line, col: at - start + 1 };
}
