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

const H2 = ['agent/proxy/h2/'];
export const TARGETS: readonly TargetSpec[] = [
  { name: 'h1-request', instrument: ['agent/proxy/h1parse.ts'], maxLen: 4096, what: 'HTTP/1.1 request heads, chunked bodies, pipelining (h1parse.ts)' },
  { name: 'h1-response', instrument: ['agent/proxy/h1parse.ts'], maxLen: 4096, what: 'HTTP/1.1 response heads and chunked bodies (h1parse.ts)' },
  { name: 'http1', instrument: ['agent/proxy/http1.ts', 'agent/proxy/h1pool.ts', 'agent/proxy/exchange.ts'], maxLen: 4096, what: 'HTTP/1.1 engine fed a client\'s and an upstream\'s bytes in turn (http1.ts, h1pool.ts; the policy\'s contract)' },
  { name: 'h1-smuggling', instrument: ['agent/proxy/h1parse.ts'], maxLen: 2048, what: 'request framing vs node:http\'s llhttp (differential)' },
  { name: 'hpack', instrument: ['agent/proxy/h2/hpack.ts', 'agent/proxy/h2/huffman.ts'], maxLen: 4096, what: 'HPACK decoder, table size, encode/decode round trip' },
  { name: 'h2-server', instrument: H2, maxLen: 8192, what: 'HTTP/2 session, server role, fed a client\'s frames' },
  { name: 'h2-client', instrument: H2, maxLen: 8192, what: 'HTTP/2 session, client role, fed a server\'s frames' },
  { name: 'config-yaml', instrument: ['agent/model/'], maxLen: 4096, what: 'config file validation, YAML (model/config.ts, as sources/file.ts reads it)' },
  { name: 'config-json', instrument: ['agent/model/'], maxLen: 4096, what: 'config file validation, JSON (and the same text as YAML: one model)' },
  { name: 'xds-delta', instrument: ['agent/sources/xds/', 'xds/'], maxLen: 8192, what: 'xDS delta responses (protobuf) through the client: digest, references, build' },
  { name: 'xds-sotw', instrument: ['agent/sources/xds/', 'xds/'], maxLen: 8192, what: 'xDS state-of-the-world responses (protobuf) through the client' },
  { name: 'admin', instrument: ['agent/admin/', 'agent/observe/filter.ts'], maxLen: 1024, what: 'admin API requests on its unix socket (server.ts routing, the monitor query)' },
  { name: 'planted-hang', instrument: ['test/fuzz/targets/planted-hang.ts'], maxLen: 64, what: 'a planted endless loop (proves the hang watchdog)', selftest: true },
  { name: 'planted-wait', instrument: ['test/fuzz/targets/planted-wait.ts'], maxLen: 64, what: 'a planted wait for nothing (proves the watchdog\'s wall-clock bound)', selftest: true },
  { name: 'planted-starved', instrument: ['test/fuzz/targets/planted-starved.ts'], maxLen: 64, what: 'a planted input starved of its CPU (proves the watchdog does not call that a hang)', selftest: true },
  { name: 'statefile', instrument: ['cli/context.ts'], maxLen: 2048, what: 'state.json as meshctl reads it (cli/context.ts)' },
  { name: 'planted', instrument: ['test/fuzz/targets/planted.ts'], maxLen: 64, what: 'a planted magic value (proves the guidance)', selftest: true },
];

export function targetSpec(name: string): TargetSpec {
  const t = TARGETS.find((x) => x.name === name);
  if (!t) throw new Error(`no fuzz target '${name}': one of ${TARGETS.map((x) => x.name).join(', ')}`);
  return t;
}
