// meshctl against a fake agent: a real HTTP server on a real unix socket, and meshctl as a child process so that
// what is checked is what a script sees (stdout, stderr, exit code).
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { execFile, spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FlowEvent, FrontendReport, SocketReport, StatsReport, StatusReport } from '../../agent/admin/protocol.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MESHCTL = join(ROOT, 'dist', 'cli', 'meshctl.js');

/** Newest modification time under a source dir. */
function newest(dir: string): number {
  return Math.max(0, ...readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => statSync(join(e.parentPath, e.name)).mtimeMs));
}

// The CLI runs compiled; compile when dist is missing or older than cli/ (tsc emits even if another module has
// type errors, so a half-finished file elsewhere does not stop this test).
if (!existsSync(MESHCTL) || statSync(MESHCTL).mtimeMs < newest(join(ROOT, 'cli'))) {
  spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')],
    { cwd: ROOT, stdio: 'inherit', timeout: 180_000 });
}
if (!existsSync(MESHCTL)) throw new Error(`${MESHCTL} missing after tsc`);

const tmp = mkdtempSync(join(tmpdir(), 'meshctl-test-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const runDir = join(tmp, 'run');
const noPins = join(tmp, 'bpffs-empty');
const fakeCgroup = join(tmp, 'cgroup');
mkdirSync(runDir);
mkdirSync(noPins);
mkdirSync(fakeCgroup);
writeFileSync(join(fakeCgroup, 'cgroup.procs'), '');

const counters = (connections: number, redirects = 0) =>
  ({ connections, udpMessages: 0, noBackend: 0, redirects, redirectBytes: redirects * 64, affinityHits: 0 });

const SERVICES: FrontendReport[] = [{
  serviceId: 1, service: 'demo', frontendId: 1, vip: '127.100.0.1', port: 80, protocol: 'tcp', algorithm: 'maglev',
  affinityTimeoutSeconds: 0, tableId: 1, tableSize: 509,
  backends: [
    { id: 1, address: '127.0.0.1', port: 18081, weight: 1, local: true, share: 170 / 509, state: 'active', counters: counters(1234, 2468) },
    { id: 2, address: '127.0.0.1', port: 18082, weight: 1, local: true, share: 339 / 509, state: 'active', counters: counters(7, 14) },
    { id: 3, address: '127.0.0.1', port: 18083, weight: 0, local: true, share: 0, state: 'drained', counters: counters(0) },
  ],
}];

const STATS: StatsReport = {
  global: { lb_connect: 1241, lb_udp_send: 0, lb_no_backend: 2, affinity_hit: 0, revnat_miss: 0, sock_insert: 2482, sock_insert_fail: 0,
    redirect: 2482, redirect_miss: 3, tcp_only: 1, event_drop: 0 },
  services: [{ serviceId: 1, service: 'demo', counters: counters(1241, 2482) }],
};

const SOCKETS: SocketReport[] = [
  { netnsCookie: '4097', local: '127.0.0.1:41000', remote: '127.0.0.1:18081', serviceId: 1, backendId: 1, tcpOnly: false, active: true },
  { netnsCookie: '4097', local: '127.0.0.1:18081', remote: '127.0.0.1:41000', serviceId: 1, backendId: 1, tcpOnly: false, active: false },
];

const STATUS: StatusReport = {
  agent: { pid: 4242, version: '0.1.0', startedAt: '2026-01-01T00:00:00.000Z', uptimeSeconds: 3725, configSource: 'file:/etc/sockmesh.yaml',
    configVersion: 3, lastConfigError: 'services[0].ports[0].port: must be 1..65535', lastReconcile: { at: '2026-01-01T01:00:00.000Z', ms: 1.5 } },
  node: { hostname: 'node-a', kernel: '6.18.0', distro: 'Debian GNU/Linux 12', arch: 'x64', cpus: 2, cpuModel: 'Test CPU',
    memoryTotalBytes: 8 * 1024 ** 3 },
  kernel: { cgroup2Root: '/sys/fs/cgroup', cgroup: fakeCgroup, bpffs: '/sys/fs/bpf/sockmesh', sockmap: true,
    features: { 'progTypes.sk_msg': true, 'mapTypes.sockhash': true } },
  programs: [{ program: 'sm_connect4', attachType: 'cgroup/connect4', how: 'attached' }, { program: 'sm_sockops', attachType: 'sockops', how: 'adopted' }],
  maps: [{ map: 'sm_services', entries: 1, maxEntries: 65536 }, { map: 'sm_sockets', entries: 120000, maxEntries: 131072 }],
  controlPlane: {
    server: '127.0.0.1:18000', mode: 'delta', state: 'connected', connectedSince: '2026-01-01T00:00:01.000Z', lastError: null,
    reconnects: 2, synced: true, warming: [], unsupported: ['listener web-http: HTTP routes not applied (L7 path not implemented)'],
    acked: { 'type.googleapis.com/envoy.config.cluster.v3.Cluster': { version: '7', at: '2026-01-01T00:00:02.000Z', resources: 3 } },
    lastNack: { typeUrl: 'type.googleapis.com/envoy.config.listener.v3.Listener', version: '6', at: '2026-01-01T00:00:03.000Z',
      reason: "listener 'x': unsupported filter" },
  },
};

const EVENTS: FlowEvent[] = [
  { time: '2026-01-01T00:00:01.250Z', kind: 'connect', protocol: 'tcp', service: 'demo', vip: '127.100.0.1:80', backend: '127.0.0.1:18081',
    cookie: '77', netnsCookie: '4097' },
];

/** A fake agent at <dir>/admin.sock answering with the real protocol's shapes. */
async function fakeAgent(dir: string): Promise<{ server: Server; hits: string[] }> {
  const hits: string[] = [];
  const routes: Record<string, unknown> = { '/v1/status': STATUS, '/v1/services': SERVICES, '/v1/stats': STATS, '/v1/sockets': SOCKETS, '/v1/events': EVENTS };
  const server = createServer((req, res) => {
    hits.push(req.url ?? '');
    const body = routes[req.url ?? ''];
    res.writeHead(body ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body ?? { error: `no such endpoint: GET ${req.url}` }));
  });
  await new Promise<void>((ok) => server.listen(join(dir, 'admin.sock'), ok));
  return { server, hits };
}

interface Result { code: number; stdout: string; stderr: string }

/** Run meshctl (asynchronously: the fake agent lives in this process and must keep answering). */
function meshctl(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Result> {
  return new Promise((ok) => {
    execFile(process.execPath, [MESHCTL, ...args], { env: { ...process.env, NO_COLOR: '1', ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      ok({ code, stdout, stderr });
    });
  });
}

const withAgent = ['--run-dir', runDir, '--bpffs', noPins];

t.test('with an agent', async (t) => {
  const { server, hits } = await fakeAgent(runDir);
  t.teardown(() => new Promise<void>((ok) => server.close(() => ok())));
  writeFileSync(join(runDir, 'state.json'), JSON.stringify({ pid: 4242, bpffs: noPins, cgroup: fakeCgroup, services: { 1: 'demo' } }));

  t.test('services', async (t) => {
    const r = await meshctl([...withAgent, 'services']);
    t.equal(r.code, 0);
    t.equal(r.stderr, '', 'no note: the agent answered');
    const lines = r.stdout.trimEnd().split('\n');
    t.equal(lines[0], 'demo  127.100.0.1:80/tcp  maglev  no affinity  509 slots');
    t.match(lines[1]!, /^ {2}BACKEND\s+WEIGHT\s+SHARE\s+STATE\s+LOCAL\s+CONNS\s+REDIRECTS\s+REDIRECTED$/);
    t.match(lines[2]!, /^ {2}127\.0\.0\.1:18081\s+1\s+33\.4%\s+active\s+yes\s+1\.2k\s+2\.5k\s+154 KiB$/);
    t.match(lines[3]!, /18082\s+1\s+66\.6%\s+active\s+yes\s+7\s+14\s+896 B$/);
    t.match(lines[4]!, /18083\s+0\s+0%\s+drained/);
    t.notMatch(r.stdout, /\x1b\[/, 'no colour when stdout is not a terminal');
  });

  t.test('stats', async (t) => {
    const r = await meshctl([...withAgent, 'stats']);
    t.equal(r.code, 0);
    t.match(r.stdout, /connections balanced\s+1\.2k\n/);
    t.match(r.stdout, /no-backend refusals\s+2\n/);
    t.match(r.stdout, /sockmap inserts\s+2\.5k\n/);
    t.match(r.stdout, /redirect misses\s+3\n/);
    t.match(r.stdout, /tcp-only fallbacks\s+1\n/);
    t.match(r.stdout, /event drops\s+0\n/);
    t.match(r.stdout, /\ndemo\s+1\.2k\s+0\s+0\s+0\s+2\.5k\s+155 KiB\n/);
  });

  t.test('status', async (t) => {
    const r = await meshctl([...withAgent, 'status']);
    t.equal(r.code, 0);
    t.match(r.stdout, /^agent\s+running {2}pid 4242 {2}version 0\.1\.0 {2}up 1h 2m$/m);
    t.match(r.stdout, /^config\s+file:\/etc\/sockmesh\.yaml {2}version 3, last reconcile 1\.5 ms/m);
    t.match(r.stdout, /^config error\s+services\[0\]\.ports\[0\]\.port: must be 1\.\.65535$/m);
    t.match(r.stdout, /^node\s+node-a {2}Debian GNU\/Linux 12 {2}kernel 6\.18\.0 {2}x64 {2}2 CPUs {2}8\.0 GiB memory$/m);
    t.match(r.stdout, /^sm_sockops\s+sockops\s+adopted$/m);
    t.match(r.stdout, /^sm_sockets\s+120000\s+131072\s+91\.6%$/m);
    t.match(r.stdout, /^sm_services\s+1\s+65536\s+<0\.1%$/m);
    t.match(r.stdout, /^control plane\s+127\.0\.0\.1:18000 {2}delta ADS {2}connected since 2026-01-01T00:00:01\.000Z$/m);
    t.match(r.stdout, /^last NACK\s+Listener version 6 at 2026-01-01T00:00:03\.000Z: listener 'x': unsupported filter$/m);
    t.match(r.stdout, /^Cluster\s+7\s+3\s+2026-01-01T00:00:02\.000Z$/m);
    t.match(r.stdout, /^not supported: listener web-http: HTTP routes not applied/m);
  });

  t.test('sockets and events', async (t) => {
    const s = await meshctl([...withAgent, 'sockets']);
    t.equal(s.code, 0);
    t.match(s.stdout, /127\.0\.0\.1:41000\s+127\.0\.0\.1:18081\s+4097\s+connect\s+demo\s+1\s+sockmap/, 'service named from state.json');
    const e = await meshctl([...withAgent, 'events']);
    t.equal(e.code, 0);
    t.ok(['/v1/sockets', '/v1/events'].every((p) => hits.includes(p)), 'asked the agent');
    t.match(e.stdout, /^TIME\s+KIND\s+PROTO\s+SERVICE\s+VIP\s+BACKEND\n\d\d:\d\d:\d\d\.250\s+connect\s+tcp\s+demo\s+127\.100\.0\.1:80\s+127\.0\.0\.1:18081\n$/);
  });

  t.test('--json: exactly one JSON document, the protocol\'s own shape, before or after the command', async (t) => {
    const cases: [string, unknown][] = [['services', SERVICES], ['stats', STATS], ['sockets', SOCKETS], ['events', EVENTS],
      ['status', { running: true, ...STATUS }]];
    for (const [cmd, expected] of cases) {
      for (const args of [['--json', ...withAgent, cmd], [...withAgent, cmd, '--json']]) {
        const r = await meshctl(args);
        t.equal(r.code, 0, `${args.join(' ')}: exit 0`);
        t.same(JSON.parse(r.stdout), expected, `${args.join(' ')}: one parseable document`);
        t.equal(r.stderr, '');
      }
    }
  });

  t.test('exec runs the program in the agent\'s cgroup, arguments intact, with its exit code', async (t) => {
    const r = await meshctl([...withAgent, 'exec', '--', 'printf', '%s|', 'a b', '$HOME', '--json']);
    t.equal(r.code, 0);
    t.equal(r.stdout, 'a b|$HOME|--json|', 'arguments (and options after the program) reach it verbatim');
    const pid = Number(readFileSync(join(fakeCgroup, 'cgroup.procs'), 'utf8').trim());
    t.ok(pid > 0, 'the shell wrote its pid into the cgroup before exec');
    t.equal((await meshctl([...withAgent, 'exec', 'sh', '-c', 'exit 7'])).code, 7, 'without --, the program\'s options are its own');
    t.equal((await meshctl([...withAgent, 'exec', '--', 'sh', '-c', 'kill -TERM $$'])).code, 143, 'killed by SIGTERM: 128+15');
    t.equal((await meshctl([...withAgent, 'exec', '--', 'no-such-program-here'])).code, 127);
  });

});

t.test('an agent that does not answer: timeout, then the pins', async (t) => {
  const dir = join(tmp, 'silent');
  mkdirSync(dir);
  const server = createServer(() => { /* never answers */ });
  await new Promise<void>((ok) => server.listen(join(dir, 'admin.sock'), ok));
  t.teardown(() => { server.closeAllConnections(); return new Promise<void>((ok) => server.close(() => ok())); });
  const started = Date.now();
  const r = await meshctl(['--run-dir', dir, '--bpffs', noPins, '--timeout', '0.3', 'services']);
  t.equal(r.code, 4, 'no pins either');
  t.equal(r.stderr, `meshctl: no agent at ${join(dir, 'admin.sock')} (no answer within 0.3s), and no sockmesh datapath pinned at ${noPins} ` +
    '(wrong --bpffs, or the agent never ran?)\n');
  t.ok(Date.now() - started < 10_000, 'bounded by the timeout');
});

t.test('an agent that answers with an error', async (t) => {
  const dir = join(tmp, 'broken');
  mkdirSync(dir);
  const server = createServer((_req, res) => { res.writeHead(500, { 'content-type': 'application/json' }); res.end('{"error":"map sm_tables is not pinned"}'); });
  await new Promise<void>((ok) => server.listen(join(dir, 'admin.sock'), ok));
  t.teardown(() => new Promise<void>((ok) => server.close(() => ok())));
  const r = await meshctl(['--run-dir', dir, '--bpffs', noPins, 'stats']);
  t.equal(r.code, 1);
  t.equal(r.stderr, 'meshctl: the agent answered GET /v1/stats with HTTP 500: map sm_tables is not pinned\n');
  t.equal(r.stdout, '');
});

t.test('no agent and no pins: exit 4 with one line naming both', async (t) => {
  const dir = join(tmp, 'nobody');
  mkdirSync(dir);
  for (const cmd of ['services', 'stats', 'sockets', 'events']) {
    for (const json of [[], ['--json']]) {
      const r = await meshctl(['--run-dir', dir, '--bpffs', noPins, cmd, ...json]);
      t.equal(r.code, 4, `${cmd} ${json.join('')}: exit 4`);
      t.equal(r.stdout, '', 'nothing on stdout');
      t.match(r.stderr, new RegExp(`^meshctl: no agent at ${join(dir, 'admin.sock')} \\(connect ENOENT\\), and no sockmesh datapath pinned at ${noPins}.*\\n$`));
      t.equal(r.stderr.split('\n').length, 2, 'one line');
    }
  }
  const s = await meshctl(['--run-dir', dir, '--bpffs', noPins, 'status', '--json']);
  t.equal(s.code, 4);
  const doc = JSON.parse(s.stdout) as { running: boolean; pinned: boolean; error: string };
  t.equal(doc.running, false);
  t.equal(doc.pinned, false);
  t.match(doc.error, /connect ENOENT/);
  const x = await meshctl(['--run-dir', dir, '--bpffs', noPins, 'exec', '--', 'true']);
  t.equal(x.code, 3, 'exec without an agent or its state cannot know the cgroup');
  t.match(x.stderr, /the agent must have been started/);
});

t.test('no agent, but something pinned: events need the agent (3); unreadable pins (3)', async (t) => {
  const dir = join(tmp, 'down');
  const pins = join(tmp, 'bpffs-fake');
  mkdirSync(dir);
  mkdirSync(pins);
  // A plain file where the services map pin would be: "something is pinned", but not a map any kernel would open.
  writeFileSync(join(pins, 'sm_services'), '');
  const e = await meshctl(['--run-dir', dir, '--bpffs', pins, 'events']);
  t.equal(e.code, 3);
  t.match(e.stderr, /flow events are kept by the agent only/);
  const s = await meshctl(['--run-dir', dir, '--bpffs', pins, 'services']);
  t.equal(s.code, 3);
  t.match(s.stderr, /^meshctl: no agent at .*, and the pins at .* cannot be read: /);
  const st = await meshctl(['--run-dir', dir, '--bpffs', pins, 'status']);
  t.equal(st.code, 3, 'status with the agent down exits 3 after printing');
  t.match(st.stdout, /^agent\s+not running: no agent at/m);
});

t.test('usage errors exit 1; --help documents the exit codes', async (t) => {
  const bad = await meshctl(['no-such-command']);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /^meshctl: unknown command 'no-such-command'/);
  const help = await meshctl(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /Exit codes:\n\s+0\s+ok\n\s+1\s+usage error/);
  t.match(help.stdout, /\n\s+3\s+the agent is not running/);
  t.match(help.stdout, /\n\s+4\s+no sockmesh datapath is pinned at --bpffs/);
});
