// The session's stream table (h2/streams.ts) against a Map doing the same: seeded random runs in the shapes a
// session sees (a window of consecutive odd ids, long-lived streams while ids run on, ids that collide on one
// slot), growth, clear, values() in id order, and a deleted stream no longer held by the table.
import t, { type Test } from 'tap';
import { seeded } from '../lib/l7model.js';
import { StreamTable } from '../../agent/proxy/h2/streams.js';

interface Box { id: number }

function same(tt: Test, table: StreamTable<Box>, ref: Map<number, Box>, probe: number[], what: string): void {
  tt.equal(table.size, ref.size, `${what}: size`);
  for (const id of probe) {
    if (table.get(id) !== ref.get(id)) {
      tt.fail(`${what}: get(${id}) is ${table.get(id)?.id} instead of ${ref.get(id)?.id}`);
      return;
    }
  }
  const want = [...ref.keys()].sort((a, b) => a - b);
  tt.same(table.values().map((b) => b.id), want, `${what}: values() by id`);
}

t.test('a sliding window of consecutive ids with some long-lived streams, as a session sees them', (tt) => {
  const rnd = seeded(7);
  for (const parity of [1, 2]) {
    const table = new StreamTable<Box>();
    const ref = new Map<number, Box>();
    let next = parity;
    const open: number[] = [];
    for (let step = 0; step < 20_000; step++) {
      if (open.length < 40 && rnd() < 0.55) {
        const b = { id: next };
        table.set(next, b);
        ref.set(next, b);
        open.push(next);
        next += 2;
      } else if (open.length > 0) {
        // mostly the oldest goes first, sometimes any (a slow stream stays while thousands pass it)
        const i = rnd() < 0.7 ? 0 : Math.floor(rnd() * open.length);
        const id = open[i]!;
        if (id % 97 === parity && rnd() < 0.999) continue; // the long-lived ones
        open.splice(i, 1);
        tt.equal(table.delete(id), true);
        ref.delete(id);
        tt.equal(table.delete(id), false, 'deleting twice');
      }
      if (step % 1000 === 0) {
        const probe = [...open, next, next + 2, Math.max(parity, next - 200)];
        same(tt, table, ref, probe, `parity ${parity} step ${step}`);
      }
    }
    same(tt, table, ref, [...ref.keys(), next], `parity ${parity} end`);
  }
  tt.end();
});

t.test('ids that land on the same slots (runs that wrap around the end), random order of deletes', (tt) => {
  const rnd = seeded(11);
  for (let round = 0; round < 50; round++) {
    const table = new StreamTable<Box>();
    const ref = new Map<number, Box>();
    // 16 slots at first: ids 2k+1 with k = slot + 16 m collide; slots 13..15 make runs wrap to 0
    const ids: number[] = [];
    for (let m = 0; m < 3; m++) for (const slot of [13, 14, 15, 0, 1]) ids.push(2 * (slot + 16 * m) + 1);
    for (let i = ids.length - 1; i > 0; i--) { const j = Math.floor(rnd() * (i + 1)); [ids[i], ids[j]] = [ids[j]!, ids[i]!]; }
    const some = ids.slice(0, 7); // under half of 16: no growth
    for (const id of some) { const b = { id }; table.set(id, b); ref.set(id, b); }
    same(tt, table, ref, ids, `round ${round} filled`);
    for (const id of [...some].sort(() => rnd() - 0.5)) {
      table.delete(id);
      ref.delete(id);
      same(tt, table, ref, ids, `round ${round} after delete ${id}`);
    }
  }
  tt.end();
});

t.test('grows past its first size and keeps everything; set on a present id replaces', (tt) => {
  const table = new StreamTable<Box>();
  const ref = new Map<number, Box>();
  for (let id = 1; id < 4000; id += 2) { const b = { id }; table.set(id, b); ref.set(id, b); }
  same(tt, table, ref, [...ref.keys(), 4001, 2], 'after 2000 streams');
  const again = { id: 103 };
  table.set(103, again);
  ref.set(103, again);
  tt.equal(table.get(103), again);
  tt.equal(table.size, 2000);
  for (let id = 1; id < 4000; id += 4) { table.delete(id); ref.delete(id); }
  same(tt, table, ref, [...ref.keys(), 1, 5, 4001], 'after deleting every other one');
  table.clear();
  tt.equal(table.size, 0);
  tt.equal(table.get(3), undefined);
  tt.same(table.values(), []);
  table.set(3, { id: 3 });
  tt.equal(table.get(3)?.id, 3, 'usable after clear');
  tt.end();
});

t.test('a deleted stream is held by no slot (the reason the table exists: see streams.ts)', (tt) => {
  const table = new StreamTable<Box>();
  const boxes: Box[] = [];
  for (let id = 1; id < 200; id += 2) { const b = { id }; boxes.push(b); table.set(id, b); }
  for (const b of boxes) if (b.id % 3 !== 0) table.delete(b.id);
  const vals = (table as unknown as { vals: (Box | undefined)[] }).vals;
  for (const b of boxes) {
    const held = vals.includes(b);
    if (held !== (b.id % 3 === 0)) { tt.fail(`stream ${b.id} ${held ? 'still held' : 'lost'}`); break; }
  }
  tt.equal(vals.filter((v) => v !== undefined).length, table.size);
  tt.end();
});

t.test('ids that are not stream ids are refused', (tt) => {
  const table = new StreamTable<Box>();
  tt.throws(() => table.set(0, { id: 0 }), /id 0 is not a stream id/);
  tt.throws(() => table.set(2 ** 31, { id: 0 }), /not a stream id/);
  tt.throws(() => table.set(-1, { id: 0 }), /not a stream id/);
  table.set(2 ** 31 - 1, { id: 2 ** 31 - 1 });
  tt.equal(table.get(2 ** 31 - 1)?.id, 2 ** 31 - 1, 'the largest id');
  tt.equal(table.get(0), undefined);
  tt.end();
});
