// The fuzz targets: which parser each drives (targets/<name>.ts), which files get coverage probes, how long an input
// may be. Seeds are in test/fuzz/<name>/ (small, real-world shaped). Nothing here imports the code under test: a
// target process must register its probes before the first import (child.ts).
export interface TargetSpec {
  name: string;
  /** repo-relative path prefixes that get probes */
  instrument: string[];
  maxLen: number;
  what: string;
  /** the engine's own check, not a parser: left out of --all */
  selftest?: boolean;
}

export const TARGETS: readonly TargetSpec[] = [
  { name: 'h1-request', instrument: ['agent/proxy/h1parse.ts'], maxLen: 4096, what: 'HTTP/1.1 request heads, chunked bodies, pipelining (h1parse.ts)' },
  { name: 'h1-response', instrument: ['agent/proxy/h1parse.ts'], maxLen: 4096, what: 'HTTP/1.1 response heads and chunked bodies (h1parse.ts)' },
  { name: 'h1-smuggling', instrument: ['agent/proxy/h1parse.ts'], maxLen: 2048, what: 'request framing vs node:http\'s llhttp (differential)' },
  { name: 'planted', instrument: ['test/fuzz/targets/planted.ts'], maxLen: 64, what: 'a planted magic value (proves the guidance)', selftest: true },
];

export function targetSpec(name: string): TargetSpec {
  const t = TARGETS.find((x) => x.name === name);
  if (!t) throw new Error(`no fuzz target '${name}': one of ${TARGETS.map((x) => x.name).join(', ')}`);
  return t;
}
