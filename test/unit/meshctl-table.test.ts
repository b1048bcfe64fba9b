// meshctl's output helpers: the table renderer, human units, and the text renderings of the admin reports.
import t from 'tap';
import { measure, renderFacts, renderTable } from '../../cli/table.js';
import { duration, hostport, humanBytes, humanCount, percent } from '../../cli/format.js';
import { ANSI, PLAIN, styleFor, visibleWidth } from '../../cli/style.js';
import { renderServices } from '../../cli/commands/services.js';
import { renderStats } from '../../cli/commands/stats.js';
import { renderSockets } from '../../cli/commands/sockets.js';
import type { FrontendReport } from '../../agent/admin/protocol.js';

t.test('table: aligned columns, numbers right-aligned, nothing wider than needed, no trailing blanks', async (t) => {
  const lines = renderTable(
    [{ header: 'NAME' }, { header: 'COUNT', align: 'right' }, { header: 'NOTE' }],
    [['a', '1', 'x'], ['longer-name', '12345', ''], ['b', '7', 'last']],
  );
  t.same(lines, [
    'NAME         COUNT  NOTE',
    'a                1  x',
    'longer-name  12345',
    'b                7  last',
  ]);
  for (const l of lines) t.equal(l, l.trimEnd(), 'no trailing blanks');
});

t.test('table: styled cells and headers keep the alignment', async (t) => {
  const cols = [{ header: 'K' }, { header: 'V', align: 'right' as const }];
  const lines = renderTable(cols, [[ANSI.green('ok'), '1'], ['failed', ANSI.red('22')]], { style: ANSI });
  t.equal(visibleWidth(lines[0]!), 'K        V'.length, 'bold header is as wide as the plain one');
  t.same(lines.slice(1).map((l) => l.replace(/\x1b\[[0-9;]*m/g, '')), ['ok       1', 'failed  22']);
});

t.test('table: shared widths line up separate tables; indent prefixes every line', async (t) => {
  const cols = [{ header: 'A' }, { header: 'B', align: 'right' as const }];
  const one = [['x', '1']], two = [['yyyy', '100']];
  const widths = measure(cols, one, two);
  t.same(widths, [4, 3]);
  t.same(renderTable(cols, one, { widths, indent: '  ' }), ['  A       B', '  x       1']);
  t.same(renderTable(cols, two, { widths, indent: '  ' }), ['  A       B', '  yyyy  100']);
});

t.test('facts: labels padded to one width', async (t) => {
  t.same(renderFacts([['agent', 'running'], ['config error', 'none']]), ['agent         running', 'config error  none']);
});

t.test('human counts', async (t) => {
  t.equal(humanCount(0), '0');
  t.equal(humanCount(999), '999');
  t.equal(humanCount(1000), '1.0k');
  t.equal(humanCount(1234), '1.2k');
  t.equal(humanCount(12345), '12.3k');
  t.equal(humanCount(123456), '123k');
  t.equal(humanCount(999_999), '1.0M', 'no "1000k"');
  t.equal(humanCount(3_400_000), '3.4M');
  t.equal(humanCount(7e9), '7.0G');
  t.equal(humanCount(-1500), '-1.5k');
});

t.test('human bytes (IEC)', async (t) => {
  t.equal(humanBytes(0), '0 B');
  t.equal(humanBytes(1023), '1023 B');
  t.equal(humanBytes(1024), '1.0 KiB');
  t.equal(humanBytes(1536), '1.5 KiB');
  t.equal(humanBytes(3.4 * 1024 * 1024), '3.4 MiB');
  t.equal(humanBytes(1024 * 1024 - 1), '1.0 MiB', 'no "1024.0 KiB"');
  t.equal(humanBytes(512 * 1024 ** 3), '512 GiB');
});

t.test('percent, duration, hostport', async (t) => {
  t.equal(percent(0), '0%');
  t.equal(percent(1), '100%');
  t.equal(percent(1 / 3), '33.3%');
  t.equal(percent(0.0001), '<0.1%');
  t.equal(percent(NaN), '-');
  t.equal(duration(0), '0s');
  t.equal(duration(45), '45s');
  t.equal(duration(192), '3m 12s');
  t.equal(duration(7200), '2h');
  t.equal(duration(7500), '2h 5m');
  t.equal(duration(4 * 86400 + 3 * 3600 + 59), '4d 3h');
  t.equal(hostport('127.0.0.1', 80), '127.0.0.1:80');
  t.equal(hostport('fd00::1', 443), '[fd00::1]:443');
});

t.test('colour only on a terminal, and never with NO_COLOR', async (t) => {
  t.equal(styleFor({ isTTY: true }, {}), ANSI);
  t.equal(styleFor({ isTTY: true }, { NO_COLOR: '1' }), PLAIN);
  t.equal(styleFor({ isTTY: true }, { NO_COLOR: '' }), ANSI, 'an empty NO_COLOR does not count (no-color.org)');
  t.equal(styleFor({ isTTY: false }, {}), PLAIN);
  t.equal(styleFor({}, {}), PLAIN);
});

const counters = (connections: number, redirects = 0) =>
  ({ connections, udpMessages: 0, noBackend: 0, redirects, redirectBytes: redirects * 100, affinityHits: 0 });

const FRONTENDS: FrontendReport[] = [
  {
    serviceId: 1, service: 'web', frontendId: 1, vip: '127.100.0.1', port: 80, protocol: 'tcp', algorithm: 'maglev',
    affinityTimeoutSeconds: 0, tableId: 1, tableSize: 509,
    backends: [
      { id: 1, address: '127.0.0.1', port: 8081, weight: 2, local: true, share: 0.666, state: 'active', counters: counters(2500, 5000) },
      { id: 2, address: '127.0.0.1', port: 8082, weight: 1, local: true, share: 0.334, state: 'active', counters: counters(3) },
      { id: 3, address: '10.0.0.9', port: 8083, weight: 0, local: false, share: 0, state: 'drained', counters: counters(0) },
    ],
  },
  {
    serviceId: 2, service: 'dns', frontendId: 2, vip: 'fd00::53', port: 53, protocol: 'udp', algorithm: 'random',
    affinityTimeoutSeconds: 300, tableId: 2, tableSize: 0, backends: [],
  },
];

t.test('services: one heading per frontend, its backends in an indented table aligned across frontends', async (t) => {
  const lines = renderServices(FRONTENDS, PLAIN);
  t.equal(lines[0], 'web  127.100.0.1:80/tcp  maglev  no affinity  509 slots');
  t.match(lines[1]!, /^ {2}BACKEND\s+WEIGHT\s+SHARE\s+STATE\s+LOCAL\s+CONNS\s+UDP MSGS\s+REDIRECTS\s+REDIRECTED$/);
  t.match(lines[2]!, /^ {2}127\.0\.0\.1:8081\s+2\s+66\.6%\s+active\s+yes\s+2\.5k\s+0\s+5\.0k\s+488 KiB$/);
  t.match(lines[4]!, /10\.0\.0\.9:8083\s+0\s+0%\s+drained\s+no/);
  // right-aligned numbers end in the same column on every row
  const end = (l: string, s: string): number => l.indexOf(s) + s.length;
  t.equal(end(lines[2]!, '2.5k'), end(lines[1]!, 'CONNS'));
  t.equal(end(lines[3]!, ' 3 '), end(lines[1]!, 'CONNS') + 1);
  t.equal(lines[5], '');
  t.equal(lines[6], 'dns  [fd00::53]:53/udp  random  affinity 5m  no table');
  t.match(lines[7]!, /no backends/);
  t.same(renderServices([], PLAIN), ['no services configured']);
  t.notOk(renderServices(FRONTENDS.slice(0, 1), PLAIN).join('\n').includes('UDP MSGS'), 'no UDP column without a UDP frontend');
  const l7 = (extra: Partial<FrontendReport>): string => renderServices([{ ...FRONTENDS[0]!, l7: 'fail-closed', ...extra }], PLAIN)[0]!;
  t.equal(l7({ upstreamProtocol: 'h2' }), 'web  127.100.0.1:80/tcp  L7 fail-closed upstream h2  maglev  no affinity  509 slots', 'the upstream protocol of an L7 service');
  t.equal(l7({ upstreamProtocol: 'downstream' }), 'web  127.100.0.1:80/tcp  L7 fail-closed upstream as client  maglev  no affinity  509 slots');
  t.equal(l7({}), 'web  127.100.0.1:80/tcp  L7 fail-closed  maglev  no affinity  509 slots', 'from the pins (agent down): not known, not shown');
});

t.test('stats: global counters by their readable names, unknown ones by their own; per-service table', async (t) => {
  const lines = renderStats({
    global: { lb_connect: 1234, redirect: 2_000_000, new_counter: 5 },
    services: [{ serviceId: 1, service: 'web', counters: counters(1234, 10) }],
  }, PLAIN);
  t.same(lines.slice(0, 5), [
    'COUNTER               VALUE',
    'connections balanced   1.2k',
    'redirects              2.0M',
    'new_counter               5',
    '',
  ]);
  t.match(lines[5]!, /^SERVICE\s+CONNS\s+UDP MSGS\s+NO BACKEND\s+AFFINITY HITS\s+REDIRECTS\s+REDIRECTED$/);
  t.match(lines[6]!, /^web\s+1\.2k\s+0\s+0\s+0\s+10\s+1000 B$/);
});

t.test('sockets: names from the state, sides, tcp-only marked', async (t) => {
  const lines = renderSockets([
    { netnsCookie: '3', local: '127.0.0.1:18081', remote: '127.0.0.1:40000', serviceId: 1, backendId: 1, tcpOnly: false, active: false },
    { netnsCookie: '3', local: '127.0.0.1:40000', remote: '127.0.0.1:18081', serviceId: 1, backendId: 1, tcpOnly: true, active: true },
    { netnsCookie: '12', local: '127.0.0.1:5000', remote: '127.0.0.1:5001', serviceId: 0, backendId: 0, tcpOnly: false, active: true },
  ], new Map([[1, 'web']]), PLAIN);
  t.match(lines[0]!, /^LOCAL\s+REMOTE\s+NETNS\s+SIDE\s+SERVICE\s+BACKEND\s+PATH$/);
  t.match(lines[1]!, /127\.0\.0\.1:18081\s+127\.0\.0\.1:40000\s+3\s+accept\s+web\s+1\s+sockmap/);
  t.match(lines[2]!, /connect\s+web\s+1\s+tcp-only/);
  t.match(lines[3]!, /\s12\s+connect\s+-\s+-\s+sockmap/, 'netns cookies sort numerically; no VIP means no service');
  t.match(lines[5]!, /^3 sockets, 1 tcp-only/);
  t.same(renderSockets([], new Map(), PLAIN), ['no sockets on the sockmap fast path']);
});

t.test('sockets and services: POD/PEER and FAST PATH columns when the answer has them', async (t) => {
  const lines = renderSockets([
    { netnsCookie: '0', local: '198.18.3.1:41000', remote: '198.18.3.2:8080', serviceId: 1, backendId: 1, tcpOnly: false, active: true, pod: 'kubepods-lab/a', peerPod: 'kubepods-lab/b' },
    { netnsCookie: '5', local: '127.0.0.1:5000', remote: '127.0.0.1:5001', serviceId: 0, backendId: 0, tcpOnly: false, active: true },
  ], new Map([[1, 'web']]), PLAIN);
  t.match(lines[0]!, /^LOCAL\s+REMOTE\s+POD\s+PEER\s+NETNS\s+SIDE\s+SERVICE\s+BACKEND\s+PATH$/);
  t.match(lines[1]!, /198\.18\.3\.1:41000\s+198\.18\.3\.2:8080\s+kubepods-lab\/a\s+kubepods-lab\/b\s+0\s+connect\s+web/);
  t.match(lines[2]!, /127\.0\.0\.1:5001\s+-\s+-\s+5\s/, 'a socket in no known pod');
  const fe = FRONTENDS[0]!;
  const svc = renderServices([{ ...fe, backends: fe.backends.map((b, i) => ({ ...b, fastPath: i, ...(i === 0 ? { pod: 'kubepods-lab/a' } : {}) })) }], PLAIN);
  t.match(svc[1]!, /^ {2}BACKEND\s+POD\s+WEIGHT\s+SHARE\s+STATE\s+LOCAL\s+CONNS\s+FAST PATH\s+REDIRECTS\s+REDIRECTED$/);
  t.match(svc[2]!, /^ {2}127\.0\.0\.1:8081\s+kubepods-lab\/a\s+2\s+66\.6%\s+active\s+yes\s+2\.5k\s+0\s+5\.0k/);
  t.match(svc[3]!, /:8082\s+-\s+1\s+33\.4%.*yes\s+3\s+1\s+0\s+0 B$/, 'no pod: a dash; its fast-path count after CONNS');
});
