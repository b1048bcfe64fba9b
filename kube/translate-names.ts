// Names in the model for things Kubernetes names. The model's service, group and route names are DNS labels (at most
// 63 characters of [a-z0-9-]): they travel as xDS cluster names, Prometheus labels and meshctl columns, so '/' is not
// allowed there, and "<namespace>/<name>" (up to 127 characters) does not fit. The mapping, injective by
// construction (so two Kubernetes services can never meet under one model name):
//
//   <namespace>--<name>                    when neither part holds '--' and it fits in 63 characters (the usual case;
//                                          a namespace or name cannot start or end with '-', so the first '--' is
//                                          the separator)
//   <namespace>--<name>--<port>-<proto>    one port entry of a service whose ports cannot share one model service
//                                          (see translate.ts); the part after the second '--' starts with a digit,
//                                          which a Service name (a DNS-1035 label) never does
//   <clipped-namespace-name>-<10 hex>      otherwise: readable prefix, no '--' anywhere (so never one of the forms
//                                          above), and 40 bits of hash of the full name; a collision between two of
//                                          these is reported by the translation (duplicate service name)
import { murmur3 } from '../agent/model/hash.js';

const MAX_LABEL = 63;
const LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export function isDnsLabel(s: unknown): s is string {
  return typeof s === 'string' && s.length <= MAX_LABEL && LABEL.test(s);
}

/** 40 bits of a stable hash of `text`, as 10 hex digits (two murmur3 seeds: the same on every node and run). */
export function hash10(text: string): string {
  const a = murmur3(text, 0x736f636b).toString(16).padStart(8, '0');
  const b = murmur3(text, 0x6d657368).toString(16).padStart(8, '0');
  return (a + b).slice(0, 10);
}

/** `parts` joined with '-' and clipped so that '-<hash>' fits, with no '--' run and no '-' at either end. */
export function hashed(parts: string[], key: string): string {
  const h = hash10(key);
  const head = parts
    .join('-')
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/-{2,}/g, '-')
    .slice(0, MAX_LABEL - h.length - 1)
    .replace(/^-+|-+$/g, '');
  return head ? `${head}-${h}` : `h${h}`;
}

/**
 * The model's name for a Service (and, with `entry`, for one port entry of it when its ports are split into one
 * model service each). See the header for why this is injective.
 */
export function modelServiceName(namespace: string, name: string, entry?: { port: number; protocol: string }): string {
  const suffix = entry ? `--${entry.port}-${entry.protocol}` : '';
  const plain = `${namespace}--${name}${suffix}`;
  if (!namespace.includes('--') && !name.includes('--') && plain.length <= MAX_LABEL && isDnsLabel(plain)) return plain;
  return hashed([namespace, name], `${namespace}/${name}${entry ? `/${entry.port}/${entry.protocol}` : ''}`);
}

/**
 * A label made of readable `parts` ('-'-joined), or a clipped one with a hash of them when they do not make a DNS
 * label of at most 63 characters. Route and backend-group names within one service.
 */
export function labelOf(...parts: (string | number)[]): string {
  const plain = parts.join('-');
  if (isDnsLabel(plain)) return plain;
  return hashed(parts.map(String), parts.join('/'));
}
