// Config parsing and validation: good configs in YAML and JSON, every error class with file, path
// and a plain-words message, all errors reported together, address normalization, port resolution.
import t, { type Test } from 'tap';
import { canonicalAddress, modelFromObject, parseConfig } from '../../agent/model/config.js';
import { addressBytes } from '../../agent/model/address.js';
import { ConfigError, type Model } from '../../agent/model/types.js';

const GOOD_YAML = `# two services, one of each family mix
services:
  - name: web
    vips: [127.100.0.1, "::1"]
    ports:
      - port: 80
        protocol: TCP
        targetPort: 8080
    algorithm: maglev
    affinity: {}
    backends:
      - address: 127.0.0.1
        weight: 3
      - address: 127.0.0.2
        port: 9999        # overridden by targetPort
      - address: "0:0:0:0:0:0:0:1"
        weight: 0
  - name: dns
    vips: ["::ffff:127.100.0.53"]
    ports:
      - {port: 53, protocol: udp}
      - {port: 53, protocol: tcp}
    algorithm: weighted
    affinity: {timeoutSeconds: 60}
    maglev: {tableSize: 4093}
    backends: []
  - name: multi
    vips: [127.100.0.2]
    ports:
      - {port: 80, targetPort: 8080}
      - {port: 443, targetPort: 8443}
    backends:
      - {address: 127.0.0.10}
`;

const EXPECTED: Model = {
  services: [
    {
      name: 'web',
      algorithm: 'maglev',
      affinityTimeoutSeconds: 10800,
      maglevTableSize: 509,
      frontends: [
        {
          vip: '127.100.0.1',
          family: 4,
          port: 80,
          protocol: 'tcp',
          backends: [
            { address: '127.0.0.1', family: 4, port: 8080, weight: 3 },
            { address: '127.0.0.2', family: 4, port: 8080, weight: 1 },
          ],
        },
        { vip: '::1', family: 6, port: 80, protocol: 'tcp', backends: [{ address: '::1', family: 6, port: 8080, weight: 0 }] },
      ],
    },
    {
      name: 'dns',
      algorithm: 'weighted',
      affinityTimeoutSeconds: 60,
      maglevTableSize: 4093,
      frontends: [
        { vip: '127.100.0.53', family: 4, port: 53, protocol: 'udp', backends: [] },
        { vip: '127.100.0.53', family: 4, port: 53, protocol: 'tcp', backends: [] },
      ],
    },
    {
      name: 'multi',
      algorithm: 'random',
      affinityTimeoutSeconds: 0,
      maglevTableSize: 251,
      frontends: [
        { vip: '127.100.0.2', family: 4, port: 80, protocol: 'tcp', backends: [{ address: '127.0.0.10', family: 4, port: 8080, weight: 1 }] },
        { vip: '127.100.0.2', family: 4, port: 443, protocol: 'tcp', backends: [{ address: '127.0.0.10', family: 4, port: 8443, weight: 1 }] },
      ],
    },
  ],
};

/** The ConfigError thrown by fn (fails the test if none). */
function errorOf(t: Tap, fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    t.ok(e instanceof ConfigError, 'throws ConfigError');
    return e as ConfigError;
  }
  t.fail('expected a ConfigError');
  return new ConfigError([]);
}
type Tap = Test;

/** A one-service YAML config with `extra` lines appended to the service and the given backends. */
function service(extra = '', backends = '    backends: [{address: 127.0.0.1, port: 8080}]'): string {
  return `services:\n  - name: web\n    vips: [127.100.0.1]\n    ports: [{port: 80}]\n${extra}${backends}\n`;
}

/** Expect exactly one issue at `path` whose message matches `message`. */
function expectIssue(t: Tap, text: string, path: string, message: RegExp | string, file = 'mesh.yaml') {
  const err = errorOf(t, () => parseConfig(text, file));
  t.equal(err.issues.length, 1, `one issue (${err.message})`);
  const issue = err.issues[0]!;
  t.equal(issue.file, file);
  t.equal(issue.path, path);
  if (typeof message === 'string') t.equal(issue.message, message);
  else t.match(issue.message, message);
  t.match(err.message, `${file}: ${path || '(root)'}: `, 'the error text names file and path');
}

t.test('a good YAML config gives the expected model', async (t) => {
  t.same(parseConfig(GOOD_YAML, 'mesh.yaml'), EXPECTED);
});

t.test('the same config in JSON gives the same model', async (t) => {
  const obj = {
    services: [
      {
        name: 'web',
        vips: ['127.100.0.1', '::1'],
        ports: [{ port: 80, protocol: 'TCP', targetPort: 8080 }],
        algorithm: 'maglev',
        affinity: {},
        backends: [
          { address: '127.0.0.1', weight: 3 },
          { address: '127.0.0.2', port: 9999 },
          { address: '0:0:0:0:0:0:0:1', weight: 0 },
        ],
      },
      {
        name: 'dns',
        vips: ['::ffff:127.100.0.53'],
        ports: [{ port: 53, protocol: 'udp' }, { port: 53, protocol: 'tcp' }],
        algorithm: 'weighted',
        affinity: { timeoutSeconds: 60 },
        maglev: { tableSize: 4093 },
        backends: [],
      },
      {
        name: 'multi',
        vips: ['127.100.0.2'],
        ports: [{ port: 80, targetPort: 8080 }, { port: 443, targetPort: 8443 }],
        backends: [{ address: '127.0.0.10' }],
      },
    ],
  };
  t.same(parseConfig(JSON.stringify(obj, null, 2), 'mesh.JSON'), EXPECTED);
  t.same(modelFromObject(obj, 'xds'), EXPECTED, 'modelFromObject validates parsed objects the same way');
  t.same(parseConfig('services: []\n', 'empty.yaml'), { services: [] });
});

t.test('syntax errors name line and column', async (t) => {
  expectIssue(t, 'services:\n  - name: web\n    vips: [127.100.0.1\n  - name: x\n', '', /^YAML syntax error at line \d+, column \d+: /);
  expectIssue(t, '{\n  "services": [\n    {"name": "web",}\n  ]\n}\n', '', 'JSON syntax error at line 3, column 20: Expected double-quoted property name', 'mesh.json');
  expectIssue(t, '{"services": [', '', /^JSON syntax error at line 1, column 15: /, 'mesh.json');
  expectIssue(t, '{"services": [],\n "services": []}', '', 'JSON error at line 2, column 2: duplicate key', 'mesh.json');
  expectIssue(t, 'services: []\nservices: []\n', '', /^YAML syntax error at line 2, column 1: Map keys must be unique/);
  expectIssue(t, '', '', "the configuration is empty: expected a mapping with a 'services' list");
  expectIssue(t, '- a\n', '', "must be a mapping with a 'services' list, got a list");
  const typo = errorOf(t, () => parseConfig('servics: []\n', 'mesh.yaml'));
  t.same(typo.issues.map((i) => `${i.path}: ${i.message}`), ["servics: unknown field 'servics' (did you mean 'services'?)", 'services: is required (a list)']);
});

t.test('a list or a mapping as a key is refused with its place, with no warning on stderr (fuzz finding, config-yaml)', async (t) => {
  const warnings: string[] = [];
  const onWarning = (w: Error): void => { warnings.push(w.message); };
  process.on('warning', onWarning);
  t.teardown(() => { process.off('warning', onWarning); });
  const msg = (line: number, col: number): string => `YAML error at line ${line}, column ${col}: a key must be a plain value (a name), not a list, a mapping, !!binary or !!timestamp`;
  expectIssue(t, '? [a, b]\n: 1\n', '', msg(1, 3));
  expectIssue(t, 'services: []\n{[a]: 1}: 2\n', '', msg(2, 1));
  expectIssue(t, 'services: []\nx: &k {c: 1}\n*k : 3\n', '', msg(3, 1), 'alias.yaml');
  expectIssue(t, 'services:\n  - name: web\n    {a: 1}: x\n', '', /^YAML/, 'nested.yaml');
  // found by the fuzzer once collection keys were refused: a tagged scalar whose value is an object (the place is the
  // scalar's, after its tag)
  expectIssue(t, '#\n: {t,!!binary}\nk:', '', msg(2, 14), 'binary.yaml');
  expectIssue(t, 'services: []\n!!timestamp 2001-12-14: x\n', '', msg(2, 13), 'date.yaml');
  t.match(errorOf(t, () => parseConfig('services: []\n2001-12-14: x\n', 'datekey.yaml')).issues[0]!.message, /^unknown field '2001-12-14'/, 'an untagged date-like key is a plain string (then an unknown field)');
  t.same(parseConfig('services: []\n', 'plain.yaml'), { services: [] }, 'scalar keys, anchors and aliases of scalars are unaffected');
  await new Promise((r) => setImmediate(r));
  t.same(warnings, [], 'no process warning (the yaml package warns when it stringifies a collection key)');
});

t.test('each error class names the file, the path and the problem', async (t) => {
  expectIssue(t, service('    wieght: 1\n'), 'services[0].wieght', /^unknown field 'wieght'/);
  expectIssue(
    t,
    service('', '    backends: [{address: 127.0.0.1, port: 8080, wieght: 2}]'),
    'services[0].backends[0].wieght',
    "unknown field 'wieght' (did you mean 'weight'?)",
  );
  expectIssue(t, service('', '    backends: [{address: 127.0.0.1, port: 70000}]'), 'services[0].backends[0].port', 'must be an integer between 1 and 65535, got 70000');
  expectIssue(t, service('', '    backends: [{address: 127.0.0.1, port: "80"}]'), 'services[0].backends[0].port', 'must be an integer between 1 and 65535, got "80" (a string)');
  expectIssue(t, service('', '    backends: [{address: 127.0.0.1, port: 80.5}]'), 'services[0].backends[0].port', 'must be an integer between 1 and 65535, got 80.5');
  expectIssue(t, service('', '    backends: [{address: 127.0.0.1, weight: 10001}]'), 'services[0].backends[0].weight', 'must be an integer between 0 and 10000, got 10001');
  expectIssue(t, service('', '    backends: [{address: 127.0.0.256}]'), 'services[0].backends[0].address', /^must be an IPv4 or IPv6 address literal .*got "127\.0\.0\.256"/);
  expectIssue(t, service('', '    backends: [{port: 80}]'), 'services[0].backends[0].address', /^is required/);
  expectIssue(t, service('', '    backends: [{address: 0.0.0.0}]'), 'services[0].backends[0].address', 'must not be the unspecified address 0.0.0.0');
  expectIssue(t, service('', '    backends: {address: 127.0.0.1}'), 'services[0].backends', 'must be a list, got a mapping');

  const svc = (lines: string) => `services:\n  - ${lines.trim().split('\n').join('\n    ')}\n`;
  expectIssue(t, svc('name: Web_1\nvips: [127.100.0.1]\nports: [{port: 80}]'), 'services[0].name', /^must be a DNS label.*got "Web_1" \(a string\)$/);
  expectIssue(t, svc(`name: ${'a'.repeat(64)}\nvips: [127.100.0.1]\nports: [{port: 80}]`), 'services[0].name', /^must be a DNS label/);
  expectIssue(t, svc('vips: [127.100.0.1]\nports: [{port: 80}]'), 'services[0].name', 'is required');
  expectIssue(t, svc('name: web\nports: [{port: 80}]'), 'services[0].vips', 'is required (a list)');
  expectIssue(t, svc('name: web\nvips: []\nports: [{port: 80}]'), 'services[0].vips', 'must list 1 to 8 addresses, got 0');
  expectIssue(t, svc(`name: web\nvips: [${Array.from({ length: 9 }, (_, i) => `127.100.0.${i + 1}`).join(', ')}]\nports: [{port: 80}]`), 'services[0].vips', 'must list 1 to 8 addresses, got 9');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1, "::ffff:127.100.0.1"]\nports: [{port: 80}]'), 'services[0].vips[1]', 'duplicate VIP 127.100.0.1, same as vips[0]');
  expectIssue(t, svc('name: web\nvips: [fe80::1%eth0]\nports: [{port: 80}]'), 'services[0].vips[0]', /^must be an IPv4 or IPv6 address literal/);
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]'), 'services[0].ports', 'is required (a list)');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: []'), 'services[0].ports', 'must list 1 to 32 port entries, got 0');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 0}]'), 'services[0].ports[0].port', 'must be an integer between 1 and 65535, got 0');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{protocol: tcp}]'), 'services[0].ports[0].port', 'is required (an integer between 1 and 65535)');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80, protocol: sctp}]'), 'services[0].ports[0].protocol', 'must be one of tcp, udp, got "sctp" (a string)');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80, targetPort: 65536}]'), 'services[0].ports[0].targetPort', 'must be an integer between 1 and 65535, got 65536');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80}, {port: 80, protocol: TCP}]'), 'services[0].ports[1]', /^duplicate port 80\/tcp, same as ports\[0\]$/);
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80}]\nalgorithm: maglv'), 'services[0].algorithm', `must be one of random, weighted, maglev, got "maglv" (a string) (did you mean 'maglev'?)`);
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80}]\naffinity: {timeoutSeconds: 0}'), 'services[0].affinity.timeoutSeconds', 'must be an integer between 1 and 86400, got 0');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80}]\naffinity:'), 'services[0].affinity', /^must be a mapping \(write 'affinity: \{\}' for the default timeout of 10800 s\), got null/);
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80}]\naffinity: {timeout: 5}'), 'services[0].affinity.timeout', "unknown field 'timeout' (known fields: timeoutSeconds)");
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80}]\nmaglev: {tableSize: 1000}'), 'services[0].maglev.tableSize', 'must be a prime, got 1000 (nearest primes: 997 or 1009)');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80}]\nmaglev: {tableSize: 65537}'), 'services[0].maglev.tableSize', 'must be an integer between 251 and 65521, got 65537');
  expectIssue(t, svc('name: web\nvips: [127.100.0.1]\nports: [{port: 80}]\nmaglev: {tablesize: 251}'), 'services[0].maglev.tablesize', "unknown field 'tablesize' (did you mean 'tableSize'?)");
});

t.test('duplicates and loops', async (t) => {
  expectIssue(
    t,
    service('', '    backends: [{address: 127.0.0.1, port: 8080}, {address: "::ffff:127.0.0.1", port: 8080}]'),
    'services[0].backends[1]',
    'duplicate backend 127.0.0.1:8080, same as backends[0]',
  );
  // A backend without a port resolves to the VIP port: the same endpoint as one that names it.
  expectIssue(t, service('', '    backends: [{address: 127.0.0.1, port: 80}, {address: 127.0.0.1}]'), 'services[0].backends[1]', 'duplicate backend 127.0.0.1:80, same as backends[0]');
  expectIssue(t, service('', '    backends: [{address: "::1", port: 80}, {address: "0::01", port: 80}]'), 'services[0].backends[1]', 'duplicate backend [::1]:80, same as backends[0]');
  // Same address, different ports: two backends, no error.
  t.equal(parseConfig(service('', '    backends: [{address: 127.0.0.1, port: 80}, {address: 127.0.0.1, port: 81}]'), 'mesh.yaml').services[0]!.frontends[0]!.backends.length, 2);

  expectIssue(
    t,
    service('', '    backends: [{address: 127.100.0.1}]'),
    'services[0].backends[0]',
    "backend 127.100.0.1:80 is the service's own frontend 127.100.0.1:80/tcp: connections would loop",
  );
  // The VIP address with another port is not a loop.
  t.ok(parseConfig(service('', '    backends: [{address: 127.100.0.1, port: 8080}]'), 'mesh.yaml'));

  const two = `services:
  - name: web
    vips: [127.100.0.1, "::1"]
    ports: [{port: 80}]
  - name: api
    vips: ["0::1"]
    ports: [{port: 80, protocol: udp}, {port: 80, protocol: tcp, targetPort: 8080}, {port: 81}]
  - name: web
    vips: [127.100.0.3]
    ports: [{port: 80}]
`;
  const err = errorOf(t, () => parseConfig(two, 'mesh.yaml'));
  t.same(
    err.issues.map((i) => `${i.path}: ${i.message}`),
    [
      'services[1].ports[0].targetPort: is required when a service has several port numbers (otherwise the backend port is ambiguous)',
      'services[1].ports[2].targetPort: is required when a service has several port numbers (otherwise the backend port is ambiguous)',
      "services[2].name: duplicate service name 'web', also used by services[0]",
    ],
  );
  // Frontend duplicates are found once the services are otherwise valid enough to have frontends.
  const clash = two.replace('{port: 81}', '{port: 81, targetPort: 81}').replace('{port: 80, protocol: udp}', '{port: 80, protocol: udp, targetPort: 53}');
  const err2 = errorOf(t, () => parseConfig(clash, 'mesh.yaml'));
  t.same(
    err2.issues.map((i) => `${i.path}: ${i.message}`),
    [
      "services[1].ports[1]: duplicate frontend [::1]:80/tcp, also defined by service 'web' at services[0]",
      "services[2].name: duplicate service name 'web', also used by services[0]",
    ],
  );
});

t.test('several errors are all reported, across services', async (t) => {
  const text = `services:
  - name: Web
    vips: [127.100.0.1, 300.1.1.1]
    ports:
      - port: 70000
        protocol: sctp
    algorithm: roundrobin
    backends:
      - address: 127.0.0.1
        wieght: 2
  - name: ok
    vips: [127.100.0.2]
    ports: [{port: 80}]
    backends: [{address: 127.0.0.1, weight: -1}]
`;
  const err = errorOf(t, () => parseConfig(text, '/etc/sockmesh/mesh.yaml'));
  t.same(
    err.issues.map((i) => i.path),
    [
      'services[0].name',
      'services[0].vips[1]',
      'services[0].ports[0].port',
      'services[0].ports[0].protocol',
      'services[0].algorithm',
      'services[0].backends[0].wieght',
      'services[1].backends[0].weight',
    ],
  );
  t.ok(err.issues.every((i) => i.file === '/etc/sockmesh/mesh.yaml'));
  t.equal(err.message.split('\n').length, 7, 'one line per issue in the message');
  t.match(err.message, "/etc/sockmesh/mesh.yaml: services[0].ports[0].port: must be an integer between 1 and 65535, got 70000");
  t.match(err.message, '/etc/sockmesh/mesh.yaml: services[1].backends[0].weight: must be an integer between 0 and 10000, got -1');
});

t.test('port resolution', async (t) => {
  // targetPort ?? backend.port ?? port
  const one = (port: string, backend: string) =>
    parseConfig(`services:\n  - name: s\n    vips: [127.100.0.1]\n    ports: [${port}]\n    backends: [${backend}]\n`, 'p.yaml').services[0]!.frontends[0]!.backends[0]!.port;
  t.equal(one('{port: 80, targetPort: 8080}', '{address: 127.0.0.1, port: 9090}'), 8080, 'targetPort first');
  t.equal(one('{port: 80}', '{address: 127.0.0.1, port: 9090}'), 9090, 'then the backend port');
  t.equal(one('{port: 80}', '{address: 127.0.0.1}'), 80, 'then the VIP port');

  // Several port entries: every entry needs targetPort, and backends must not set port.
  const multi = `services:
  - name: s
    vips: [127.100.0.1]
    ports: [{port: 80, targetPort: 8080}, {port: 443}]
    backends: [{address: 127.0.0.1, port: 8080}]
`;
  const err = errorOf(t, () => parseConfig(multi, 'p.yaml'));
  t.same(
    err.issues.map((i) => `${i.path}: ${i.message}`),
    [
      'services[0].ports[1].targetPort: is required when a service has several port numbers (otherwise the backend port is ambiguous)',
      "services[0].backends[0].port: must not be set when the service has several port numbers (ambiguous: each port entry's targetPort is the backend port)",
    ],
  );

  // One port number over two protocols (DNS) is not ambiguous: no targetPort needed.
  const dns = parseConfig(
    `services:\n  - name: dns\n    vips: [127.100.0.53]\n    ports: [{port: 53, protocol: udp}, {port: 53, protocol: tcp, targetPort: 5353}]\n    backends: [{address: 127.0.0.1, port: 5300}]\n`,
    'p.yaml',
  ).services[0]!;
  t.same(dns.frontends.map((f) => `${f.protocol} ${f.backends[0]!.port}`), ['udp 5300', 'tcp 5353']);

  // Each frontend gets only the backends of its own family.
  const mixed = parseConfig(
    `services:\n  - name: s\n    vips: ["::1", 127.100.0.1]\n    ports: [{port: 80}]\n    backends: [{address: 127.0.0.1}, {address: "::1", port: 81}, {address: 127.0.0.2}]\n`,
    'p.yaml',
  ).services[0]!;
  t.same(mixed.frontends.map((f) => [f.vip, f.backends.map((b) => `${b.address}:${b.port}`)]), [
    ['::1', ['::1:81']],
    ['127.100.0.1', ['127.0.0.1:80', '127.0.0.2:80']],
  ]);
  t.equal(mixed.maglevTableSize, 509, 'default M counts all backends: smallest offered prime >= 300');
});

t.test('canonicalAddress', async (t) => {
  t.same(canonicalAddress('::ffff:127.100.0.1'), { address: '127.100.0.1', family: 4 }, 'v4-mapped becomes IPv4');
  t.same(canonicalAddress('::FFFF:7F64:0001'), { address: '127.100.0.1', family: 4 }, 'v4-mapped in hex too');
  t.same(canonicalAddress('2001:DB8:0:0:0:0:0:1'), { address: '2001:db8::1', family: 6 });
  t.same(canonicalAddress('2001:db8:0:0:1:0:0:1'), { address: '2001:db8::1:0:0:1', family: 6 }, 'the first of equal zero runs');
  t.same(canonicalAddress('2001:db8:0:1:1:1:1:1'), { address: '2001:db8:0:1:1:1:1:1', family: 6 }, 'one zero group is not compressed');
  t.same(canonicalAddress('fd00:0:0:0:0:0:0:0'), { address: 'fd00::', family: 6 });
  t.same(canonicalAddress('::'), { address: '::', family: 6 });
  t.same(canonicalAddress('::0.0.0.1'), { address: '::1', family: 6 }, 'IPv4-compatible is not mapped');
  t.same(canonicalAddress('10.0.0.1'), { address: '10.0.0.1', family: 4 });
  t.equal(canonicalAddress('010.0.0.1'), null, 'no octal-looking octets');
  t.equal(canonicalAddress('fe80::1%eth0'), null, 'no zone ids');
  t.equal(canonicalAddress('example.com'), null);
  t.equal(canonicalAddress(' 10.0.0.1'), null);
  t.same(Array.from(addressBytes('::ffff:1.2.3.4')), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 1, 2, 3, 4]);
  t.same(Array.from(addressBytes('1.2.3.4')), [1, 2, 3, 4]);
});
