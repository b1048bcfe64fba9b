// haproxy configs of the l7 bench: the backend every scenario reaches, and the proxies it is compared with.
// All bind 127.0.0.1 inside the bench's private network namespace.

const GLOBAL = (threads: number) => [
  'global',
  `  nbthread ${threads}`,
  // The default maxconn asks for a file limit above what this VM allows; 4000 is plenty for the bench.
  '  maxconn 4000',
  'defaults',
  '  mode http',
  '  timeout connect 5s',
  '  timeout client 60s',
  '  timeout server 60s',
];

/**
 * The backend: haproxy answering every request itself with a fixed 2-byte 200. Chosen because it is
 * C, single-threaded here and fast (about 170k req/s on one core of the bench VM), so the backend is not
 * the bottleneck of any scenario and costs the same in each; and one cleartext bind speaks HTTP/1.1 and
 * HTTP/2 with prior knowledge alike (haproxy recognises the h2 preface), so both protocols hit the very
 * same process.
 */
export function backendConfig(port: number): string {
  return [
    ...GLOBAL(1),
    'frontend backend',
    `  bind 127.0.0.1:${port}`,
    '  http-request return status 200 content-type text/plain string ok',
    '',
  ].join('\n');
}

/**
 * A proxy in HTTP mode (one hop of (c), or one sidecar of (d)): it parses every request and keeps
 * keep-alive connections to its upstream. The protocol is kept per hop: an HTTP/2 request goes upstream
 * as HTTP/2, an HTTP/1.1 request as HTTP/1.1, as a mesh proxy usually does.
 */
export function proxyConfig(port: number, upstreamHost: string, upstreamPort: number, threads: number): string {
  const up = `${upstreamHost}:${upstreamPort}`;
  return [
    ...GLOBAL(threads),
    'frontend proxy',
    `  bind 127.0.0.1:${port}`,
    '  use_backend upstream_h2 if { req.ver 2.0 }',
    '  default_backend upstream_h1',
    'backend upstream_h1',
    `  server up ${up}`,
    'backend upstream_h2',
    `  server up ${up} proto h2`,
    '',
  ].join('\n');
}

export function haproxyArgv(configFile: string): string[] {
  // -db: foreground, no daemon, so the pid we hold is haproxy's and it dies with our cleanup.
  return ['haproxy', '-db', '-f', configFile];
}
