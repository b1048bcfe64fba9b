// The file source: a config swapped the way Kubernetes updates a mounted ConfigMap (an atomic `..data` symlink swap,
// the file's own name untouched) is picked up; a config whose apply failed is tried again when saved again.
import t from 'tap';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileSource } from '../../agent/sources/file.js';
import type { Model } from '../../agent/model/types.js';

const svc = (port: number) => `services:\n  - name: web\n    vips: [127.77.9.9]\n    ports: [{ port: 80 }]\n    backends: [{ address: 127.0.0.1, port: ${port} }]\n`;
const portOf = (m: Model) => m.services[0]!.frontends[0]!.backends[0]!.port;
const until = async (cond: () => boolean, ms = 3000) => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return cond();
};

t.test('a ConfigMap-style symlink swap reloads the config', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-filesource-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, '..data_1'));
  writeFileSync(join(dir, '..data_1', 'config.yaml'), svc(8001));
  symlinkSync('..data_1', join(dir, '..data'));
  symlinkSync('..data/config.yaml', join(dir, 'config.yaml'));
  const applied: Model[] = [];
  const src = new FileSource(join(dir, 'config.yaml'), { onModel: (m) => { applied.push(m); return null; }, onError: () => {} }, 20);
  t.teardown(() => src.stop());
  t.equal(portOf(src.start()), 8001);
  // What the kubelet does: write the new version beside, then rename a new symlink over ..data.
  mkdirSync(join(dir, '..data_2'));
  writeFileSync(join(dir, '..data_2', 'config.yaml'), svc(8002));
  symlinkSync('..data_2', join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  t.ok(await until(() => applied.length === 1), 'reloaded after the swap');
  t.equal(applied[0] && portOf(applied[0]), 8002);
});

t.test('a config whose apply failed is applied when saved again', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-filesource-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, svc(8001));
  let fail = true;
  const tries: number[] = [];
  const src = new FileSource(file, { onModel: (m) => { tries.push(portOf(m)); return fail ? 'kernel said no' : null; }, onError: () => {} }, 20);
  t.teardown(() => src.stop());
  src.start();
  writeFileSync(file, svc(8002));
  t.ok(await until(() => tries.length === 1), 'first try');
  fail = false;
  writeFileSync(file, svc(8002)); // the same text again
  t.ok(await until(() => tries.length === 2), 'tried again although the text did not change');
  t.same(tries, [8002, 8002]);
});
