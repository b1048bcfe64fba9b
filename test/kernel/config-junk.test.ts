// The real agent against junk written over its config (issue 9: a 50 MiB junk file made one 130 MB log line, a 130 MB
// `meshctl status --json` and 695 MiB of RSS): rejected, the maps unchanged, the log line and lastConfigError short,
// the agent's peak RSS under 200 MiB.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { MapReader } from '../../agent/datapath/inspect.js';
import { MAX_CONFIG_BYTES } from '../../agent/sources/configtext.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);
const MiB = 1024 * 1024;

t.test('junk over the watched config: rejected in one short line, maps unchanged, RSS bounded', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'junk');
  const agent = await startAgent(t, cg, { config: 'services:\n  - name: web\n    vips: [127.77.5.1]\n    ports: [{ port: 80 }]\n    backends: [{ address: 127.0.0.1, port: 8080 }]\n' });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  const maps = () => JSON.stringify(reader.frontends().map((f) => [f.vip, f.port, f.tableId, f.backends.map((x) => x.port)]));
  const before = maps();
  const peak = () => Number(/VmHWM:\s*(\d+) kB/.exec(readFileSync(`/proc/${agent.proc.pid}/status`, 'utf8'))![1]) * 1024;
  t.comment(`agent peak RSS before: ${Math.round(peak() / MiB)} MiB`);
  const junks: Array<[string, Buffer]> = [
    ['1 MiB of random bytes', randomBytes(MiB)],
    // the worst that is parsed: text just under the limit, read by YAML as one long string
    ['text just under the limit', Buffer.from(randomBytes(MAX_CONFIG_BYTES * 0.75).toString('base64').replace(/.{75}/g, '$&\n').slice(0, MAX_CONFIG_BYTES - 1024))],
    ['50 MiB of random bytes', randomBytes(50 * MiB)],
  ];
  for (const [name, junk] of junks) {
    const n = agent.logs.length;
    writeFileSync(`${agent.configFile}.junk`, junk); // and renamed over it, as in the report
    renameSync(`${agent.configFile}.junk`, agent.configFile);
    const line = await agent.waitLog((l) => l.msg === 'config rejected; the last good config stays in force' && agent.logs.indexOf(l) >= n, 60_000);
    const size = JSON.stringify(line).length;
    t.ok(size < 8192, `${name}: the log line is ${size} bytes`);
    const status = meshctl(agent, ['status', '--json']);
    t.equal(status.code, 0);
    t.ok(status.stdout.length < 16384, `${name}: status --json is ${status.stdout.length} bytes`);
    const err = (JSON.parse(status.stdout) as { agent?: { lastConfigError?: string } }).agent?.lastConfigError ?? '';
    t.ok(err.length > 0 && err.length <= 4096, `${name}: lastConfigError is ${err.length} chars`);
    t.match(err, junk.length > MAX_CONFIG_BYTES ? /over the limit/ : junk[0]! > 0x7f || junk.includes(0) ? /not a text file/ : /must be a mapping/, `${name}: ${err.slice(0, 200)}`);
    t.equal(maps(), before, `${name}: the maps are unchanged`);
    t.ok(peak() < 200 * MiB, `${name}: agent peak RSS ${Math.round(peak() / MiB)} MiB`);
  }
});
