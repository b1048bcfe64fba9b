// The control plane's config directory reads its files as the agent reads its own (agent/sources/configtext.ts): a
// file over MAX_CONFIG_BYTES or with bytes no text file has is refused unread, its error short, and the other files'
// problems still reported; a good directory still loads.
import t from 'tap';
import { mkdtempSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirWatcher, loadConfigDir } from '../../controlplane/watch.js';
import { CONFIG_MAX_WAIT_MS, MAX_CONFIG_BYTES } from '../../agent/sources/configtext.js';
import { ConfigError } from '../../agent/model/types.js';

const good = 'services:\n  - {name: a, vips: [127.77.9.1], ports: [{port: 80}]}\n';

t.test('an oversized file and a binary file are refused unread, with short messages naming them', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-cp-dir-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'a.yaml'), good);
  t.same(loadConfigDir(dir).model.services.map((s) => s.name), ['a']);

  // 50 MiB, sparse: the reader must refuse it by its size, not read it.
  writeFileSync(join(dir, 'huge.yaml'), '');
  truncateSync(join(dir, 'huge.yaml'), 50 * 1024 * 1024);
  writeFileSync(join(dir, 'junk.json'), Buffer.from([0x7b, 0x00, 0x01, 0x02]));
  const before = process.memoryUsage().rss;
  const err = t.throws(() => loadConfigDir(dir)) as ConfigError;
  t.ok(err instanceof ConfigError, 'a ConfigError');
  const byFile = new Map(err.issues.map((i) => [i.file, i.message]));
  t.match(byFile.get(join(dir, 'huge.yaml')), new RegExp(`over the limit of ${MAX_CONFIG_BYTES} bytes .*not read`));
  t.match(byFile.get(join(dir, 'junk.json')), /not a text file: control byte 0x00 at offset 1/);
  t.notOk(byFile.has(join(dir, 'a.yaml')), 'the good file has no problem');
  for (const i of err.issues) t.ok(i.message.length < 200, `${i.file}: a short message (${i.message.length} chars)`);
  t.notMatch(byFile.get(join(dir, 'huge.yaml')), new RegExp(dir.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')), 'the path is in the issue\'s file, not repeated in its message');
  t.ok(process.memoryUsage().rss - before < 32 * 1024 * 1024, 'the 50 MiB file was not read into memory');

  rmSync(join(dir, 'huge.yaml'));
  rmSync(join(dir, 'junk.json'));
  t.same(loadConfigDir(dir).model.services.map((s) => s.name), ['a'], 'the directory loads again once they are gone');
});

t.test('a directory rewritten faster than the debounce is still served while the writes go on', async (t) => {
  // Under `npm run soak` (a file renamed over every 100 ms) the 150 ms trailing debounce never fired: the control plane
  // served nothing new until the writes stopped. A burst is now read at least every CONFIG_MAX_WAIT_MS.
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-cpdir-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const text = (port: number) => `services:\n  - name: web\n    vips: [127.77.9.9]\n    ports: [{ port: 80 }]\n    backends: [{ address: 127.0.0.1, port: ${port} }]\n`;
  writeFileSync(join(dir, 'a.yaml'), text(9000));
  const loads: number[] = [];
  const w = new DirWatcher(dir, { onModel: (m) => { loads.push(m.services[0]!.frontends[0]!.backends[0]!.port); }, onError: () => {} });
  t.teardown(() => w.stop());
  w.start();
  const end = Date.now() + 2000;
  for (let port = 9001; Date.now() < end; port++) {
    writeFileSync(join(dir, '.a.tmp'), text(port));
    renameSync(join(dir, '.a.tmp'), join(dir, 'a.yaml'));
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(loads.length >= 2, `loaded ${loads.length} times during 2 s of writes every 100 ms (at least every ${CONFIG_MAX_WAIT_MS} ms)`);
});
