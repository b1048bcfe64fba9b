// The control plane's config directory reads its files as the agent reads its own (agent/sources/configtext.ts): a
// file over MAX_CONFIG_BYTES or with bytes no text file has is refused unread, its error short, and the other files'
// problems still reported; a good directory still loads.
import t from 'tap';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigDir } from '../../controlplane/watch.js';
import { MAX_CONFIG_BYTES } from '../../agent/sources/configtext.js';
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
