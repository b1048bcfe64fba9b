// The file source: a config swapped the way Kubernetes updates a mounted ConfigMap (an atomic `..data` symlink swap,
// the file's own name untouched) is picked up; a config whose apply failed is tried again when saved again; a file
// written in place is applied once it settled, never half-written; a rename is applied at once.
import t from 'tap';
import { closeSync, mkdirSync, mkdtempSync, openSync, renameSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileSource, SETTLE_MS } from '../../agent/sources/file.js';
import { CONFIG_MAX_WAIT_MS } from '../../agent/sources/configtext.js';
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

t.test('a neighbour written all the time does not hold a config change back', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-filesource-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, svc(8001));
  const applied: number[] = [];
  // the default 100 ms debounce; the neighbour writes every 30 ms, as a load generator's log beside the config did
  const src = new FileSource(file, { onModel: (m) => { applied.push(portOf(m)); return null; }, onError: () => {} });
  t.teardown(() => src.stop());
  src.start();
  const log = join(dir, 'h2load.log');
  const writer = setInterval(() => writeFileSync(log, `${Date.now()}\n`, { flag: 'a' }), 30);
  t.teardown(() => clearInterval(writer));
  await new Promise((r) => setTimeout(r, 200));
  writeFileSync(join(dir, 'config.yaml.new'), svc(8002));
  renameSync(join(dir, 'config.yaml.new'), file);
  // before: every neighbour write restarted the debounce, and the change waited for the neighbour to fall silent
  t.ok(await until(() => applied.length === 1, 2000), 'applied while the neighbour keeps writing');
  t.same(applied, [8002]);
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

// Written in place (editors that write through, `cat > file`, scripts): a file caught between two writes must not be
// applied. Once, a 100-service file written in two parts 0.5 s apart was applied with 50 services.
const services = (n: number) => 'services:\n' + Array.from({ length: n }, (_, i) =>
  `  - name: svc-${i}\n    vips: [127.77.${i >> 8}.${i & 255}]\n    ports: [{ port: 80 }]\n    backends: [{ address: 127.0.0.1, port: ${9000 + i} }]\n`).join('');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function writeInParts(file: string, parts: string[], gapMs: number): Promise<void> {
  const fd = openSync(file, 'w'); // truncates in place: same inode
  try {
    for (let i = 0; i < parts.length; i++) {
      if (i > 0) await sleep(gapMs);
      writeSync(fd, parts[i]!);
    }
  } finally {
    closeSync(fd);
  }
}

for (const [name, parts, gapMs] of [['two parts 0.5 s apart', 2, 500], ['a writer trickling for 2 s', 21, 100]] as const) {
  t.test(`a file written in place in ${name} is applied once, complete`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'sockmesh-filesource-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'config.yaml');
    writeFileSync(file, svc(8001));
    const applied: number[] = [];
    const errors: string[] = [];
    const src = new FileSource(file, { onModel: (m) => { applied.push(m.services.length); return null; }, onError: (e) => { errors.push(e.message); } }, 20);
    t.teardown(() => src.stop());
    src.start();
    const text = services(100);
    // two parts split after service 50: the first half is a valid config (as in the report); the trickle is cut anywhere
    const cuts = parts === 2 ? [0, text.indexOf('  - name: svc-50\n'), text.length] : Array.from({ length: parts + 1 }, (_, i) => Math.floor((text.length * i) / parts));
    const written = Date.now();
    await writeInParts(file, cuts.slice(1).map((end, i) => text.slice(cuts[i], end)), gapMs);
    const wrote = Date.now() - written;
    t.ok(await until(() => applied.length > 0, 5000), 'applied');
    await sleep(1500); // and nothing more
    t.same(applied, [100], `applied once, with all 100 services (writing took ${wrote} ms)`);
    t.same(errors, [], 'no error reported for the file caught mid-write');
  });
}

t.test('a file renamed into place is applied at once; SIGHUP (reload) reads at once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-filesource-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, svc(8001));
  const applied: Array<{ port: number; at: number }> = [];
  const src = new FileSource(file, { onModel: (m) => { applied.push({ port: portOf(m), at: Date.now() }); return null; }, onError: () => {} }, 20);
  t.teardown(() => src.stop());
  src.start();
  let at = Date.now();
  writeFileSync(join(dir, 'new.yaml'), svc(8002));
  renameSync(join(dir, 'new.yaml'), file);
  t.ok(await until(() => applied.length === 1), 'applied');
  t.equal(applied[0]?.port, 8002);
  t.ok(applied[0]!.at - at < SETTLE_MS / 2, `promptly: ${applied[0]!.at - at} ms, no settle wait`);
  // in place, then SIGHUP before the settle interval is over
  writeFileSync(file, svc(8003));
  at = Date.now();
  src.reload();
  t.equal(applied[1]?.port, 8003, 'reload reads at once');
  t.ok(applied[1]!.at - at < 100);
});

t.test('a file rewritten faster than the debounce is still read while the writes go on (not only in a pause)', async (t) => {
  // `npm run soak` rewrote its config every 100 ms: the trailing debounce (reset by every event) read it only in the
  // pauses between writes. A burst is now read at least every CONFIG_MAX_WAIT_MS.
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-filesource-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, svc(9000));
  const applied: number[] = [];
  // a debounce longer than the writes' period: before the fix nothing was read until they stopped
  const src = new FileSource(file, { onModel: (m) => { applied.push(portOf(m)); return null; }, onError: () => {} }, 300);
  t.teardown(() => src.stop());
  src.start();
  const end = Date.now() + 2000;
  for (let port = 9001; Date.now() < end; port++) {
    writeFileSync(`${file}.tmp`, svc(port));
    renameSync(`${file}.tmp`, file);
    await new Promise((r) => setTimeout(r, 100));
  }
  const during = applied.length;
  t.ok(during >= 2, `read ${during} times during 2 s of writes every 100 ms (at least every ${CONFIG_MAX_WAIT_MS} ms)`);
});
