// Config file validation, as the file source reads a file (model/config.ts: YAML or JSON by the name, then the
// model's checks). Crashes: anything but ConfigError. Invariants: every issue names the file and says what is wrong;
// the same text is read twice to the same model (validation keeps no state between files).
// (Not checked: that accepted JSON reads the same as YAML. The yaml package reads a CR inside a flow collection as
// part of a plain scalar - "8\r" - where JSON sees whitespace; a .json file is never read as YAML, so it is moot.)
import { parseConfig } from '../../../agent/model/config.js';
import { ConfigError } from '../../../agent/model/types.js';
import { invariant } from './common.js';

export const dict = [
  'services:\n', '  - name: ', 'vips: [', 'ports:\n', '- port: ', 'protocol: udp', 'protocol: tcp', 'targetPort: ', 'algorithm: maglev',
  'algorithm: weighted', 'algorithm: random', 'affinity:', 'timeoutSeconds: ', 'maglev:', 'tableSize: ', 'backends:', 'address: ',
  'weight: ', 'group: ', 'healthCheck:', 'http:', 'routes:', 'match:', 'pathPrefix: ', 'workloads:', '127.0.0.1', '::1', '::ffff:1.2.3.4',
  '0.0.0.0', '255.255.255.255', '65535', '65536', '-1', '1e3', '0x10', '~', 'null', 'true', '[]', '{}', '&a ', '*a', '<<: ', '!!str ',
  '!!binary ', '"', "'", '\n', '  ', '- ', ': ', ',', '{"services":[', '{"name":"', '"vips":["', '"port":', '"backends":[{"address":"',
  '__proto__', 'constructor', '"__proto__":', '\\u0000', '\ufeff',
];

function check(text: string, file: string): ReturnType<typeof parseConfig> | undefined {
  try {
    return parseConfig(text, file);
  } catch (e) {
    invariant(e instanceof ConfigError, () => `threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    invariant(e.issues.length > 0, 'a ConfigError with no issues');
    for (const i of e.issues) invariant(i.file === file && typeof i.message === 'string' && i.message !== '', () => `an issue without file or message: ${JSON.stringify(i)}`);
    return undefined;
  }
}

// A library's process warning (the yaml package warns on stderr when it turns a list or mapping key into a string) is a
// finding: an agent must not print to stderr for a config it refuses or reads. Caught where it is raised (the 'warning'
// event comes a tick later, after the input is done): this process runs nothing but the target.
const warned: string[] = [];
process.emitWarning = ((w: string | Error) => { warned.push(typeof w === 'string' ? w : w.message); }) as typeof process.emitWarning;

export function runFormat(json: boolean, data: Buffer): void {
  warned.length = 0;
  try { runOne(json, data); } finally {
    invariant(warned.length === 0, () => `a process warning: ${warned[0]}`);
  }
}

function runOne(json: boolean, data: Buffer): void {
  const text = data.toString('utf8');
  const file = json ? 'config.json' : 'config.yaml';
  const model = check(text, file);
  if (model === undefined) return;
  invariant(JSON.stringify(check(text, file)) === JSON.stringify(model), 'the same text read twice gives two models');
}
