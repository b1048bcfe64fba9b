// The L7 part of the config schema: a full config validated into exactly the model the proxy and the kernel code
// against, the defaults (Envoy's), every class of error with its path, and services without http left unchanged.
import t, { type Test } from 'tap';
import { modelFromObject, parseConfig } from '../../agent/model/config.js';
import { formatDuration, parseDuration, parseSize } from '../../agent/model/duration.js';
import { ConfigError, type Model, type Service } from '../../agent/model/types.js';

const FULL_YAML = `
workloads:
  - name: frontend
    cgroups: [/sockmesh-test-abc/client, /sockmesh-test-abc/client2/]
  - name: batch
    cgroups: [/batch]
services:
  - name: web
    vips: [127.100.0.1]
    ports: [{port: 80}]
    backends:
      - {address: 127.0.0.1, port: 18081}
      - {address: 127.0.0.1, port: 18082, group: canary}
      - {address: 127.0.0.1, port: 18083, group: default, weight: 2}
    healthCheck: {type: http, path: /healthz, interval: 5s, timeout: 1s, healthyThreshold: 2, unhealthyThreshold: 3}
    http:
      failMode: closed
      balancer: least-request
      accessLogSample: 0.01
      circuitBreaker: {maxConnections: 100, maxPendingRequests: 50, maxRequests: 200, maxRetries: 5}
      outlierDetection: {consecutive5xx: 7, consecutiveGatewayErrors: 4, baseEjectionTime: 10s, maxEjectionTime: 2m, maxEjectionPercent: 50}
      authz:
        default: deny
        rules:
          - {name: no-admin, action: deny, paths: [{prefix: /admin}]}
          - {name: fe-get, action: allow, from: [frontend], methods: [GET], headers: [{name: X-Env, exact: prod}]}
          - {name: probe, action: allow, paths: [{exact: /healthz}, {regex: '/status/[0-9]+'}], headers: [{name: x-probe}, {name: x-bad, prefix: evil, invert: true}]}
      routes:
        - name: api
          match: {path: {prefix: /api}, methods: [GET, POST], headers: [{name: x-canary, exact: 1}]}
          split: [{group: default, weight: 90}, {group: canary, weight: 10}]
          timeout: 1m30s
          retries: {attempts: 2, perTryTimeout: 1s, retryOn: [5xx, reset, connect-failure], retriableStatusCodes: [409],
                    backoff: {base: 10ms, max: 100ms}, budget: {percent: 25, minRetryConcurrency: 5},
                    bufferLimit: 64KiB, nonIdempotent: true}
          requestHeaders: {set: {x-from-mesh: "1", X-Num: 2}, remove: [x-debug]}
          responseHeaders: {set: {}, remove: [Server]}
        - name: grpc
          match: {path: {regex: '/pkg\\.Svc/.*'}}
          split: [{group: canary}]
          timeout: 0s
          retries: {retryOn: [unavailable, deadline-exceeded]}
        - match: {path: {exact: /}}
  - name: grpc-svc
    vips: [127.100.0.2, "::1"]
    ports: [{port: 50051, targetPort: 9000}]
    backends:
      - {address: 127.0.0.1}
      - {address: "::1"}
    healthCheck: {type: grpc, grpcService: pkg.Svc}
    http: {}
  - name: plain
    vips: [127.100.0.3]
    ports: [{port: 53, protocol: udp}, {port: 53, protocol: tcp}]
    healthCheck: {type: tcp, interval: 2s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 1}
    backends: [{address: 127.0.0.1, port: 5353}]
`;

const none = () => ({ set: {}, remove: [] });

const EXPECTED: Model = {
  services: [
    {
      name: 'web',
      algorithm: 'random',
      affinityTimeoutSeconds: 0,
      maglevTableSize: 509,
      frontends: [
        {
          vip: '127.100.0.1', family: 4, port: 80, protocol: 'tcp',
          backends: [
            { address: '127.0.0.1', family: 4, port: 18081, weight: 1 },
            { address: '127.0.0.1', family: 4, port: 18082, weight: 1, group: 'canary' },
            { address: '127.0.0.1', family: 4, port: 18083, weight: 2 },
          ],
        },
      ],
      healthCheck: {
        kind: 'http', intervalMs: 5000, timeoutMs: 1000, healthyThreshold: 2, unhealthyThreshold: 3,
        path: '/healthz', expectedStatuses: [[200, 399]],
      },
      http: {
        failMode: 'closed',
        balancer: 'least-request',
        accessLogSample: 0.01,
        circuitBreaker: { maxConnections: 100, maxPendingRequests: 50, maxRequests: 200, maxRetries: 5 },
        outlierDetection: { consecutive5xx: 7, consecutiveGatewayErrors: 4, baseEjectionMs: 10_000, maxEjectionMs: 120_000, maxEjectionPercent: 50, intervalMs: 10_000 },
        authz: {
          defaultAction: 'deny',
          rules: [
            { name: 'no-admin', action: 'deny', paths: [{ prefix: '/admin' }] },
            { name: 'fe-get', action: 'allow', from: ['frontend'], methods: ['GET'], headers: [{ name: 'x-env', value: { exact: 'prod' } }] },
            {
              name: 'probe', action: 'allow', paths: [{ exact: '/healthz' }, { regex: '/status/[0-9]+' }],
              headers: [{ name: 'x-probe' }, { name: 'x-bad', value: { prefix: 'evil' }, invert: true }],
            },
          ],
        },
        routes: [
          {
            name: 'api',
            match: { path: { prefix: '/api' }, methods: ['GET', 'POST'], headers: [{ name: 'x-canary', value: { exact: '1' } }] },
            split: [{ group: 'default', weight: 90 }, { group: 'canary', weight: 10 }],
            timeoutMs: 90_000,
            retry: {
              attempts: 2, perTryTimeoutMs: 1000, retryOn: ['5xx', 'reset', 'connect-failure', 'retriable-status-codes'],
              retriableStatusCodes: [409], backoffBaseMs: 10, backoffMaxMs: 100, budgetPercent: 25, minRetryConcurrency: 5,
              bufferLimitBytes: 65536, retryNonIdempotent: true, budgetSet: true,
            },
            requestHeaders: { set: { 'x-from-mesh': '1', 'x-num': '2' }, remove: ['x-debug'] },
            responseHeaders: { set: {}, remove: ['server'] },
          },
          {
            name: 'grpc',
            match: { path: { regex: '/pkg\\.Svc/.*' } },
            split: [{ group: 'canary', weight: 1 }],
            timeoutMs: 0,
            retry: {
              attempts: 1, perTryTimeoutMs: 0, retryOn: ['unavailable', 'deadline-exceeded'], retriableStatusCodes: [],
              backoffBaseMs: 25, backoffMaxMs: 250, budgetPercent: 20, minRetryConcurrency: 3, bufferLimitBytes: 1048576,
              retryNonIdempotent: false,
            },
            requestHeaders: none(),
            responseHeaders: none(),
          },
          { name: 'route-2', match: { path: { exact: '/' } }, split: [{ group: 'default', weight: 1 }], timeoutMs: 15_000, requestHeaders: none(), responseHeaders: none() },
        ],
      },
    },
    {
      name: 'grpc-svc',
      algorithm: 'random',
      affinityTimeoutSeconds: 0,
      maglevTableSize: 251,
      frontends: [
        { vip: '127.100.0.2', family: 4, port: 50051, protocol: 'tcp', backends: [{ address: '127.0.0.1', family: 4, port: 9000, weight: 1 }] },
        { vip: '::1', family: 6, port: 50051, protocol: 'tcp', backends: [{ address: '::1', family: 6, port: 9000, weight: 1 }] },
      ],
      healthCheck: { kind: 'grpc', intervalMs: 5000, timeoutMs: 1000, healthyThreshold: 2, unhealthyThreshold: 3, grpcService: 'pkg.Svc' },
      http: {
        // every default: Envoy's
        failMode: 'closed',
        balancer: 'least-request',
        accessLogSample: 0,
        circuitBreaker: { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 3 },
        routes: [{ name: 'default', match: {}, split: [{ group: 'default', weight: 1 }], timeoutMs: 15_000, requestHeaders: none(), responseHeaders: none() }],
      },
    },
    {
      name: 'plain',
      algorithm: 'random',
      affinityTimeoutSeconds: 0,
      maglevTableSize: 251,
      frontends: [
        { vip: '127.100.0.3', family: 4, port: 53, protocol: 'udp', backends: [{ address: '127.0.0.1', family: 4, port: 5353, weight: 1 }] },
        { vip: '127.100.0.3', family: 4, port: 53, protocol: 'tcp', backends: [{ address: '127.0.0.1', family: 4, port: 5353, weight: 1 }] },
      ],
      healthCheck: { kind: 'tcp', intervalMs: 2000, timeoutMs: 500, healthyThreshold: 1, unhealthyThreshold: 1 },
    },
  ],
  workloads: [
    { name: 'frontend', cgroups: ['/sockmesh-test-abc/client', '/sockmesh-test-abc/client2'] },
    { name: 'batch', cgroups: ['/batch'] },
  ],
};

t.test('a full L7 config validates into exactly the model', async (t) => {
  const model = parseConfig(FULL_YAML, 'mesh.yaml');
  t.strictSame(model, EXPECTED);
  // the same through JSON and through modelFromObject (what the xDS translation uses)
  const obj = JSON.parse(JSON.stringify((await import('yaml')).parse(FULL_YAML)));
  t.strictSame(parseConfig(JSON.stringify(obj), 'mesh.json'), EXPECTED, 'JSON');
  t.strictSame(modelFromObject(obj, 'x'), EXPECTED, 'modelFromObject');
  // no key is set to undefined: the model is plain data that compares and serialises as written
  t.equal(JSON.stringify(JSON.parse(JSON.stringify(model))), JSON.stringify(model));
});

t.test('services without http or healthCheck are unchanged; no workloads key without workloads', async (t) => {
  const m = parseConfig('services:\n  - {name: a, vips: [127.100.0.9], ports: [{port: 80}], backends: [{address: 127.0.0.1, port: 8080}]}\n', 'a.yaml');
  t.strictSame(m, {
    services: [{
      name: 'a', algorithm: 'random', affinityTimeoutSeconds: 0, maglevTableSize: 251,
      frontends: [{ vip: '127.100.0.9', family: 4, port: 80, protocol: 'tcp', backends: [{ address: '127.0.0.1', family: 4, port: 8080, weight: 1 }] }],
    }],
  });
  const s = m.services[0] as Service;
  t.notOk('http' in s);
  t.notOk('healthCheck' in s);
  t.notOk('workloads' in m);
});

/** The issues of a config that must fail, as 'path: message'. */
function issuesOf(t: Test, yaml: string): string[] {
  try {
    parseConfig(yaml, 'bad.yaml');
  } catch (e) {
    if (e instanceof ConfigError) {
      for (const i of e.issues) t.equal(i.file, 'bad.yaml');
      return e.issues.map((i) => `${i.path}: ${i.message}`);
    }
    throw e;
  }
  t.fail('config accepted');
  return [];
}

const svc = (extra: string, backends = '[{address: 127.0.0.1, port: 8080}, {address: 127.0.0.1, port: 8081, group: canary}]', head = '') =>
  `${head}services:\n  - name: web\n    vips: [127.100.0.1]\n    ports: [{port: 80}]\n    backends: ${backends}\n${extra}`;

/** Each case: the config's service extra, and substrings every expected issue must contain (in order). */
const CASES: Array<[string, string, string[]]> = [
  ['unknown fields with did-you-mean', `    http:\n      balancr: round-robin\n      routes: [{name: a, timout: 1s, retries: {attemps: 2}}]\n    healthCheck: {type: tcp, intervall: 1s}`, [
    "services[0].http.balancr: unknown field 'balancr' (did you mean 'balancer'?)",
    "services[0].http.routes[0].timout: service 'web', route 'a': unknown field 'timout' (did you mean 'timeout'?)",
    "services[0].http.routes[0].retries.attemps: service 'web', route 'a': unknown field 'attemps' (did you mean 'attempts'?)",
    "services[0].healthCheck.intervall: unknown field 'intervall' (did you mean 'interval'?)",
  ]],
  ['upstream protocol', `    http:\n      upstreamProtocol: http2`, [
    "services[0].http.upstreamProtocol: must be one of downstream, http1, h2, got \"http2\" (a string) (did you mean 'h2'?)",
  ]],
  ['bad regexes report the engine error', `    http:\n      routes: [{name: a, match: {path: {regex: '/a(['}, headers: [{name: x, regex: '*'}]}}]`, [
    "services[0].http.routes[0].match.path.regex: service 'web', route 'a': invalid regular expression \"/a([\": Invalid regular expression",
    "services[0].http.routes[0].match.headers[0].regex: service 'web', route 'a': invalid regular expression \"*\": Invalid regular expression",
  ]],
  ['regexes that need backtracking are refused (linear-time engine, as RE2)', `    http:\n      routes: [{name: a, match: {path: {regex: '/(a+)\\1'}, headers: [{name: x, regex: 'a(?=b)'}]}}]`, [
    "services[0].http.routes[0].match.path.regex: service 'web', route 'a': invalid regular expression \"/(a+)\\\\1\": needs backtracking (a backreference or lookaround), which sockmesh does not run",
    "services[0].http.routes[0].match.headers[0].regex: service 'web', route 'a': invalid regular expression \"a(?=b)\": needs backtracking",
  ]],
  ['duplicate route names', `    http:\n      routes: [{name: a}, {name: b}, {name: a}]`, [
    "services[0].http.routes[2].name: duplicate route name 'a' in service 'web', also used by routes[0]",
  ]],
  ['split groups that do not exist', `    http:\n      routes: [{name: api, split: [{group: default, weight: 1}, {group: canery, weight: 1}]}]`, [
    "services[0].http.routes[0].split[1].group: service 'web', route 'api': group 'canery' has no backends (did you mean 'canary'?)",
  ]],
  ['a group without a backend of a frontend family', `    http:\n      routes: [{name: api, split: [{group: canary}]}]`.replace('127.100.0.1', 'x'), [
    "services[0].http.routes[0].split[0].group: service 'web', route 'api': group 'canary' has no IPv6 backend, but the service has IPv6 VIPs",
  ]],
  ['weights', `    http:\n      routes: [{name: api, split: [{group: default, weight: 0}, {group: canary}]}]`, [
    "services[0].http.routes[0].split[0].weight: service 'web', route 'api': must be an integer between 1 and 10000, got 0",
    "services[0].http.routes[0].split[1].weight: service 'web', route 'api': is required (an integer between 1 and 10000)",
  ]],
  ['workloads referenced by authz must exist', `    http:\n      authz: {rules: [{name: r, action: allow, from: [frontend]}]}`, [
    "services[0].http.authz.rules[0].from[0]: workload 'frontend' is not defined (in the top-level workloads list)",
  ]],
  ['identities in authz from: need no workload, but must be spiffe://<td>/ns/<ns>/sa/<sa>', `    http:\n      authz: {rules: [{name: r, action: allow, from: [spiffe://cluster.local/ns/shop/sa/cart, spiffe://cluster.local/shop, 'spiffe://Cluster/ns/a/sa/b']}]}`, [
    'services[0].http.authz.rules[0].from[1]: identity "spiffe://cluster.local/shop": expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>',
    'services[0].http.authz.rules[0].from[2]: identity "spiffe://Cluster/ns/a/sa/b": trust domain "Cluster": expected lower-case letters, digits, \'.\', \'-\' or \'_\' (1-255)',
  ]],
  ['header names and methods', `    http:\n      routes: [{name: a, match: {methods: [get, 'G T'], headers: [{name: 'bad name'}, {name: ':method', exact: GET}]}}]`, [
    "services[0].http.routes[0].match.methods[0]: service 'web', route 'a': must be upper-case (methods are case-sensitive), got 'get' (did you mean 'GET'?)",
    "services[0].http.routes[0].match.methods[1]: service 'web', route 'a': must be an HTTP method like GET, got \"G T\" (a string)",
    "services[0].http.routes[0].match.headers[0].name: service 'web', route 'a': must be an HTTP header name",
    "services[0].http.routes[0].match.headers[1].name: service 'web', route 'a': pseudo-header :method cannot be matched or rewritten here (use methods)",
  ]],
  ['header rewrites', `    http:\n      routes: [{name: a, requestHeaders: {set: {X-A: "1", x-a: "2", content-length: "3", x-b: "a\\nb"}, remove: [x-a, transfer-encoding]}}]`, [
    "services[0].http.routes[0].requestHeaders.set.x-a: service 'web', route 'a': header x-a is set twice (header names are case-insensitive)",
    "services[0].http.routes[0].requestHeaders.set.content-length: service 'web', route 'a': header content-length is managed by the proxy and cannot be set",
    "services[0].http.routes[0].requestHeaders.set.x-b: service 'web', route 'a': must be a header value (a string without control characters)",
    "services[0].http.routes[0].requestHeaders.remove[0]: service 'web', route 'a': header x-a is both set and removed",
    "services[0].http.routes[0].requestHeaders.remove[1]: service 'web', route 'a': header transfer-encoding is managed by the proxy and cannot be removed",
  ]],
  ['status codes', `    http:\n      routes: [{name: a, retries: {retriableStatusCodes: [99, 600, '503']}}]\n    healthCheck: {type: http, path: /h, expectedStatuses: [200, '300-200', 700]}`, [
    "services[0].http.routes[0].retries.retriableStatusCodes[0]: service 'web', route 'a': must be an HTTP status code 100-599, got 99",
    "services[0].http.routes[0].retries.retriableStatusCodes[1]: service 'web', route 'a': must be an HTTP status code 100-599, got 600",
    "services[0].http.routes[0].retries.retriableStatusCodes[2]: service 'web', route 'a': must be an HTTP status code 100-599, got \"503\" (a string)",
    "services[0].healthCheck.expectedStatuses[1]: must be a status code 100-599 or an inclusive range like '200-299', got \"300-200\" (a string)",
    'services[0].healthCheck.expectedStatuses[2]: must be a status code 100-599',
  ]],
  ['http only on tcp ports', `    http: {}`.replace('', ''), [
    "services[0].http: service 'web' has udp ports (ports[1]): http needs every port to be tcp",
  ]],
  ['durations, sizes and ranges', `    http:\n      accessLogSample: 2\n      circuitBreaker: {maxConnections: 0}\n      outlierDetection: {baseEjectionTime: 1m, maxEjectionTime: 10s, maxEjectionPercent: 101}\n      routes: [{name: a, timeout: 5, retries: {perTryTimeout: 0s, backoff: {base: 1s, max: 10ms}, budget: {percent: -1}, bufferLimit: 12XB, attempts: -1}}]\n    healthCheck: {type: tcp, interval: 1s, timeout: 2s, healthyThreshold: 0}`, [
    'services[0].http.circuitBreaker.maxConnections: must be an integer between 1 and 2147483647, got 0',
    'services[0].http.accessLogSample: must be a number between 0 and 1, got 2',
    'services[0].http.outlierDetection.maxEjectionTime: must not be shorter than baseEjectionTime (60000 ms), got 10000 ms',
    'services[0].http.outlierDetection.maxEjectionPercent: must be an integer between 0 and 100, got 101',
    "services[0].http.routes[0].timeout: service 'web', route 'a': must be a duration with a unit like '250ms', '5s' or '1m', got the bare number 5",
    "services[0].http.routes[0].retries.attempts: service 'web', route 'a': must be an integer between 0 and 100, got -1",
    "services[0].http.routes[0].retries.perTryTimeout: service 'web', route 'a': must be more than 0",
    "services[0].http.routes[0].retries.backoff.max: service 'web', route 'a': must not be shorter than base (1000 ms), got 10 ms",
    "services[0].http.routes[0].retries.budget.percent: service 'web', route 'a': must be a number between 0 and 100, got -1",
    "services[0].http.routes[0].retries.bufferLimit: service 'web', route 'a': must be a size like '64KiB'",
    'services[0].healthCheck.timeout: must not be longer than the interval (1000 ms), got 2000 ms',
    'services[0].healthCheck.healthyThreshold: must be an integer between 1 and 1000, got 0',
  ]],
  ['health check fields by type', `    healthCheck: {type: tcp, path: /x, grpcService: a}\n    http: {routes: [{name: a}]}\n  - {name: h2, vips: [127.100.0.2], ports: [{port: 80}], backends: [{address: 127.0.0.1}], healthCheck: {type: http}}\n  - {name: h3, vips: [127.100.0.3], ports: [{port: 80}], healthCheck: {type: icmp}}`, [
    'services[0].healthCheck.path: applies only to type http, not tcp',
    'services[0].healthCheck.grpcService: applies only to type grpc, not tcp',
    'services[1].healthCheck.path: is required (a string)',
    'services[2].healthCheck.type: must be one of tcp, http, grpc, got "icmp" (a string)',
  ]],
  ['authz rules', `    http:\n      authz: {default: maybe, rules: [{action: allow}, {name: r, action: permit, paths: [{prefix: admin}, {exact: /a, prefix: /b}]}, {name: r, action: deny}, {name: sockmesh-default-allow, action: allow}]}`, [
    'services[0].http.authz.default: must be one of allow, deny, got "maybe" (a string)',
    'services[0].http.authz.rules[0].name: is required',
    'services[0].http.authz.rules[1].action: must be one of allow, deny, got "permit" (a string)',
    "services[0].http.authz.rules[1].paths[0].prefix: a path must start with '/', got \"admin\"",
    'services[0].http.authz.rules[1].paths[1]: has exact and prefix: give only one of exact, prefix or regex',
    "services[0].http.authz.rules[2].name: duplicate rule name 'r', also used by rules[1]",
    "services[0].http.authz.rules[3].name: 'sockmesh-default-allow' is reserved",
  ]],
  ['retryOn words', `    http:\n      routes: [{name: a, retries: {retryOn: [5xx, conect-failure, retriable-status-codes]}}]`, [
    "services[0].http.routes[0].retries.retryOn[1]: service 'web', route 'a': must be one of 5xx, gateway-error, reset, connect-failure, retriable-status-codes, timeout, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, got \"conect-failure\" (a string) (did you mean 'connect-failure'?)",
    "services[0].http.routes[0].retries.retryOn: service 'web', route 'a': retriable-status-codes needs retriableStatusCodes",
  ]],
  ['a default route needs backends in the default group', `    http: {}`, [
    "services[0].http.routes: service 'web', route 'default': group 'default' has no backends (groups with backends: canary)",
  ]],
  ['backend groups and workloads', `    http: {}`, [
    "workloads[0].cgroups[0]: must be a cgroup path under the cgroup2 mount, starting with '/' (like /kubepods/pod1), got \"relative\" (a string)",
    "workloads[1].name: duplicate workload name 'a', also used by workloads[0]",
    "workloads[1].cgroups[0]: cgroup /x is already a cgroup of workload 'a': a client must map to one workload",
    "workloads[1].cgroups[1]: must not contain '.' or '..' segments",
    "services[0].backends[1].group: must be a group name (a DNS label: lowercase letters, digits or '-'), got \"Canary\" (a string)",
  ]],
];

t.test('every error class, with the path to the field', async (t) => {
  for (const [name, extra, expected] of CASES) {
    let yaml = svc(extra);
    if (name === 'a group without a backend of a frontend family') yaml = svc(extra).replace('vips: [127.100.0.1]', 'vips: [127.100.0.1, "::1"]').replace('{address: 127.0.0.1, port: 8080}', '{address: 127.0.0.1, port: 8080}, {address: "::1", port: 8080}');
    if (name === 'http only on tcp ports') yaml = svc(extra).replace('ports: [{port: 80}]', 'ports: [{port: 80}, {port: 80, protocol: udp}]');
    if (name === 'a default route needs backends in the default group') yaml = svc(extra, '[{address: 127.0.0.1, port: 8081, group: canary}]');
    if (name === 'backend groups and workloads') {
      yaml = svc(extra, '[{address: 127.0.0.1, port: 8080}, {address: 127.0.0.1, port: 8081, group: Canary}]',
        'workloads:\n  - {name: a, cgroups: [relative, /x/]}\n  - {name: a, cgroups: [/x, /y/../z]}\n');
    }
    const got = issuesOf(t, yaml);
    t.equal(got.length, expected.length, `${name}: ${got.length} issues:\n${got.join('\n')}`);
    expected.forEach((want, i) => t.ok(got[i]?.startsWith(want), `${name}: issue ${i}\n  want ${want}\n  got  ${got[i]}`));
  }
});

t.test('a bad L7 part rejects the whole config, and names service, route and field', async (t) => {
  const yaml = svc('    http:\n      routes: [{name: api, timeout: soon}]\n') + '  - {name: ok, vips: [127.100.0.5], ports: [{port: 80}]}\n';
  const err = t.throws(() => parseConfig(yaml, 'mesh.yaml')) as ConfigError;
  t.match(err.message, /mesh\.yaml: services\[0\]\.http\.routes\[0\]\.timeout: service 'web', route 'api': must be a duration/);
  const e2 = t.throws(() => parseConfig(svc('    http:\n      routes: [{name: api, split: [{group: nope}]}]'), 'm.yaml')) as ConfigError;
  t.match(e2.message, /services\[0\]\.http\.routes\[0\]\.split\[0\]\.group: service 'web', route 'api': group 'nope'/);
});

t.test('one endpoint in two backend groups is allowed (a canary of a subset of the same pods); twice in one group is not', async (t) => {
  const split = '    http:\n      routes: [{name: a, split: [{group: default, weight: 9}, {group: canary, weight: 1}]}]\n';
  const m = parseConfig(svc(split, '[{address: 127.0.0.1, port: 8080}, {address: 127.0.0.2, port: 8080}, {address: 127.0.0.1, port: 8080, group: canary}]'), 'mesh.yaml');
  t.same(m.services[0]!.frontends[0]!.backends.map((b) => `${b.address}:${b.port}@${b.group ?? 'default'}`), ['127.0.0.1:8080@default', '127.0.0.2:8080@default', '127.0.0.1:8080@canary']);
  t.same(issuesOf(t, svc(split, '[{address: 127.0.0.1, port: 8080}, {address: 127.0.0.1, port: 8081, group: canary}, {address: 127.0.0.1, port: 8081, group: canary}]')),
    ['services[0].backends[2]: duplicate backend 127.0.0.1:8081, same as backends[1]']);
  t.same(issuesOf(t, svc(split, '[{address: 127.0.0.1, port: 8080}, {address: 127.0.0.1, port: 8080, group: default}, {address: 127.0.0.1, port: 8081, group: canary}]')),
    ['services[0].backends[1]: duplicate backend 127.0.0.1:8080, same as backends[0]'], "'default' spelled out is the group of backends without one");
});

t.test('durations and sizes', async (t) => {
  t.equal(parseDuration('250ms'), 250);
  t.equal(parseDuration('5s'), 5000);
  t.equal(parseDuration('1m30s'), 90_000);
  t.equal(parseDuration('0.1s'), 100);
  t.equal(parseDuration('1h'), 3_600_000);
  t.match(parseDuration('1.5ms'), /whole number of milliseconds/);
  t.match(parseDuration(5), /bare number/);
  t.match(parseDuration('5 s'), /must be a duration/);
  t.match(parseDuration(''), /must be a duration/);
  for (const ms of [0, 1, 250, 1000, 1500, 60_000, 90_000, 3_600_000, 3_723_004]) t.equal(parseDuration(formatDuration(ms)), ms, formatDuration(ms));
  t.equal(parseSize('64KiB'), 65536);
  t.equal(parseSize('1MiB'), 1048576);
  t.equal(parseSize('10kB'), 10_000);
  t.equal(parseSize(4096), 4096);
  t.match(parseSize(-1), /whole number of bytes/);
  t.match(parseSize('1.5KiB'), /must be a size/);
});

t.test('upstreamProtocol: absent = the client\'s (downstream); http1 or h2, case-insensitive', async (t) => {
  const http = (v: string): unknown => parseConfig(svc(v === '' ? '    http: {}' : `    http: {upstreamProtocol: ${v}}`), 'x.yaml').services[0]!.http!.upstreamProtocol;
  t.equal(http(''), undefined);
  t.equal(http('downstream'), 'downstream');
  t.equal(http('http1'), 'http1');
  t.equal(http('H2'), 'h2');
});
