// google.protobuf well-known types as both sides of xDS meet them in plain objects (protobufjs / proto-loader with
// keepCase, longs as strings, defaults: false): wrappers, Duration, Struct. One definition for the agent's xDS client
// (agent/sources/xds) and the control plane (controlplane/).

type Obj = Record<string, any>; // decoded protobuf plain objects

/**
 * A number field, plain (uint32 port_value) or wrapped (google.protobuf.UInt32Value and friends), -> a number;
 * undefined when the field is absent (or not a number).
 *
 * Wrapper rule (proto3): a wrapper exists to tell "absent" from "the default". A present wrapper message whose
 * `value` is missing holds the default 0: proto3 does not write a scalar equal to its default, so `{value: 0}`
 * travels as an empty message and decodes as `{}`. Reading `{}` as "absent" would turn an explicit 0 (a zero weight,
 * an enforcing percentage of 0 that switches a check off) into whatever the reader defaults to when unset.
 */
export function num(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'object') return num((v as Obj)['value'] ?? 0);
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/** google.protobuf.Duration -> milliseconds (undefined when absent). */
export function durationMs(d: Obj | undefined): number | undefined {
  if (!d || typeof d !== 'object') return undefined;
  return Number(d.seconds ?? 0) * 1000 + Math.round(Number(d.nanos ?? 0) / 1e6);
}

/** Milliseconds -> google.protobuf.Duration (as protobufjs encodes it). */
export function duration(ms: number): Obj {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

// ---- google.protobuf.Struct ----
// protobufjs' built-in google.protobuf.Value has camelCase field names (numberValue) whatever keepCase says; both
// spellings are read.

export function fromValue(v: Obj | undefined): unknown {
  if (!v || typeof v !== 'object') return undefined;
  const pick = (camel: string, snake: string) => (v[camel] !== undefined ? v[camel] : v[snake]);
  const s = pick('stringValue', 'string_value');
  if (s !== undefined) return s;
  const n = pick('numberValue', 'number_value');
  if (n !== undefined) return Number(n);
  const b = pick('boolValue', 'bool_value');
  if (b !== undefined) return b;
  const st = pick('structValue', 'struct_value');
  if (st !== undefined) return fromStruct(st);
  const l = pick('listValue', 'list_value');
  if (l !== undefined) return ((l.values ?? []) as Obj[]).map(fromValue);
  return null;
}

export function fromStruct(s: Obj | undefined): Obj {
  const out: Obj = {};
  for (const [k, v] of Object.entries((s?.fields ?? {}) as Obj)) out[k] = fromValue(v);
  return out;
}

export function toValue(v: unknown): Obj {
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (v && typeof v === 'object') return { structValue: toStruct(v as Obj) };
  return { nullValue: 0 };
}

export function toStruct(o: Obj): Obj {
  const fields: Obj = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) fields[k] = toValue(v);
  return { fields };
}
