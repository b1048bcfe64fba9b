// An undo log for changes made in place. The xDS source applies a response to its caches and indexes directly (copying
// maps of 100,000 entries per response would cost more than the change), and a NACK must change nothing: every write
// goes through a Journal, and rollback() undoes them in reverse order.
export class Journal {
  private undo: (() => void)[] = [];

  set<K, V>(map: Map<K, V>, key: K, value: V): void {
    const had = map.has(key);
    const old = map.get(key);
    map.set(key, value);
    this.undo.push(had ? () => void map.set(key, old as V) : () => void map.delete(key));
  }

  delete<K, V>(map: Map<K, V>, key: K): void {
    if (!map.has(key)) return;
    const old = map.get(key) as V;
    map.delete(key);
    this.undo.push(() => void map.set(key, old));
  }

  add<T>(set: Set<T>, value: T): void {
    if (set.has(value)) return;
    set.add(value);
    this.undo.push(() => void set.delete(value));
  }

  remove<T>(set: Set<T>, value: T): void {
    if (!set.delete(value)) return;
    this.undo.push(() => void set.add(value));
  }

  /** Replace a field of an object. */
  assign<O extends object, K extends keyof O>(obj: O, key: K, value: O[K]): void {
    const old = obj[key];
    obj[key] = value;
    this.undo.push(() => void (obj[key] = old));
  }

  rollback(): void {
    for (let i = this.undo.length - 1; i >= 0; i--) this.undo[i]!();
    this.undo = [];
  }

  /** Keep the changes (forget how to undo them). */
  commit(): void {
    this.undo = [];
  }
}
