// A synthetic fleet for the xDS bench: N services with K backends each, built as the config object the file source
// reads and validated into a Model by the model's own code (modelFromObject), so the bench exercises the same
// Model shapes a real config produces. Every VIP and backend lives in 127.0.0.0/8: no traffic is sent, but an
// address that somehow got used must never leave the machine.
import { modelFromObject } from '../../agent/model/config.js';
import type { Model, Service } from '../../agent/model/types.js';

export const SERVICE_PORT = 80;
export const BACKEND_PORT = 8080;

export interface ServiceConfig {
  name: string;
  vips: string[];
  ports: Array<{ port: number; protocol: 'tcp' }>;
  algorithm: 'random';
  backends: Array<{ address: string; port: number }>;
}

/** 127.<base + hi>.<mid>.<lo> for index i (< 2^24 - base*2^16): unique per i inside one base. */
export function loopbackAddress(base: number, i: number): string {
  const hi = base + Math.floor(i / 65536);
  if (!Number.isInteger(i) || i < 0 || hi > 255) throw new Error(`loopback address index ${i} out of range for base ${base}`);
  return `127.${hi}.${(i >> 8) & 255}.${i & 255}`;
}

/** VIPs from 127.200.0.0 (room for 2^16 * 56 services), backends from 127.1.0.0 (room for 2^16 * 199). */
const VIP_BASE = 200;
const BACKEND_BASE = 1;

export function serviceConfig(i: number, backendsPerService: number): ServiceConfig {
  const backends = [];
  for (let j = 0; j < backendsPerService; j++) {
    backends.push({ address: loopbackAddress(BACKEND_BASE, i * backendsPerService + j), port: BACKEND_PORT });
  }
  return {
    name: `svc-${i}`,
    vips: [loopbackAddress(VIP_BASE, i)],
    ports: [{ port: SERVICE_PORT, protocol: 'tcp' }],
    algorithm: 'random',
    backends,
  };
}

/** The fleet: the config objects (kept to derive changes from) and the validated Model. */
export class Fleet {
  readonly configs: ServiceConfig[];
  model: Model;

  constructor(readonly services: number, readonly backendsPerService: number) {
    if (services * backendsPerService > 199 * 65536) throw new Error('too many backends for 127.1.0.0-127.199.255.255');
    this.configs = Array.from({ length: services }, (_, i) => serviceConfig(i, backendsPerService));
    this.model = modelFromObject({ services: this.configs }, 'bench');
  }

  get endpoints(): number {
    return this.services * this.backendsPerService;
  }

  /**
   * Give backend `backend` of service `index` the port `port`. The changed service is a NEW object (validated on
   * its own) in a NEW services array; every other Service object is reused, because the control plane caches
   * encoded resources by service object identity and must see exactly one service change.
   */
  changeBackendPort(index: number, backend: number, port: number): { model: Model; service: Service; config: ServiceConfig } {
    const old = this.configs[index];
    if (!old || !old.backends[backend]) throw new Error(`no backend ${backend} in service ${index}`);
    const config: ServiceConfig = {
      ...old,
      backends: old.backends.map((b, j) => (j === backend ? { ...b, port } : b)),
    };
    const service = modelFromObject({ services: [config] }, 'bench').services[0]!;
    const services = this.model.services.slice();
    services[index] = service;
    this.configs[index] = config;
    this.model = { services };
    return { model: this.model, service, config };
  }
}

/** mulberry32: a small seeded PRNG, so that a run's sequence of changes can be repeated. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The port a change gives a backend: different from BACKEND_PORT and from every earlier change. */
export function changedPort(n: number): number {
  return 10_000 + (n % 50_000);
}
