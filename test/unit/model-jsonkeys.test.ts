// Duplicate keys of a JSON config (agent/model/jsonkeys.ts): found by one scan of the text, as the YAML parser found
// them before (the reference here: its DUPLICATE_KEY errors, at the same places), and a JSON config does not go
// through the YAML parser any more (it was ~85% of parseConfig's time; counted, not timed).
import t from 'tap';
import { createRequire } from 'node:module';
import type * as Yaml from 'yaml';
import { parseConfig, yamlParses } from '../../agent/model/config.js';
import { duplicateJsonKeys, lineColumn } from '../../agent/model/jsonkeys.js';
import { ConfigError } from '../../agent/model/types.js';

const yaml = createRequire(import.meta.url)('yaml') as typeof Yaml;

/** The YAML parser's duplicate keys of a JSON text, as offsets of the repeated keys. */
function yamlDuplicates(text: string): number[] {
  const doc = yaml.parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  return doc.errors.filter((e) => e.code === 'DUPLICATE_KEY').map((e) => e.pos[0]);
}

t.test('the same repeated keys as the YAML parser, at the same places', async (t) => {
  const texts = [
    '{"a": 1, "a": 2}',
    '{"services": [],\n "services": []}',
    '{"a": {"b": 1, "c": 2}, "b": {"b": 1, "b": 2}}', // equal keys in different objects are no repeat
    '[{"x": 1}, {"x": 2}, {"x": 3, "y": [{"x": 1, "x": 2}]}]',
    '{"a\\u0062": 1, "ab": 2}', // an escaped key is its value
    '{"q\\"": 1, "q\\\\": 2, "q\\"": 3}', // escaped quotes and backslashes inside keys
    '{"v": "a \\" {\\"k\\": 1, \\"k\\": 2}", "w": "\\\\"}', // braces and keys inside a string value are text
    '{"": 1, "": 2, "a": [], "a": {}, "a": null}', // the empty key, one key three times
    '{\n  "services": [\n    {"name": "a", "vips": ["127.0.0.1"], "name": "b"}\n  ]\n}\n',
    '"just a string"',
    '[1, 2, {"k": [3, {"k": 4}], "k": 5}]',
  ];
  for (const text of texts) {
    JSON.parse(text); // valid JSON, as duplicateJsonKeys requires
    t.same(duplicateJsonKeys(text), yamlDuplicates(text), text);
  }
  t.same(duplicateJsonKeys('{"a": 1, "a": 2}'), [9]);
  t.same(duplicateJsonKeys('{"a": 1, "b": 2}'), []);
});

t.test('line and column of an offset, 1-based', async (t) => {
  const lc = new yaml.LineCounter();
  const text = 'ab\ncd\n\nef';
  for (let i = 0; i <= text.length; i++) {
    if (text[i - 1] === '\n' || i === 0) lc.addNewLine(i);
  }
  for (let i = 0; i <= text.length; i++) t.same(lineColumn(text, i), lc.linePos(i), `offset ${i}`);
  t.same(lineColumn(text, 99), lineColumn(text, text.length), 'past the end: the end');
});

t.test('a JSON config is not parsed as YAML: 2,000 services and 4,000 workloads', async (t) => {
  const workloads = Array.from({ length: 4000 }, (_, i) => ({ name: `w${i}`, cgroups: [`/kubepods/pod${i}`] }));
  const services = Array.from({ length: 2000 }, (_, i) => ({
    name: `s${i}`, vips: [`127.16.${i >> 8}.${i & 255}`], ports: [{ port: 80 }], backends: [{ address: `127.1.${i >> 8}.${i & 255}`, port: 8080 }],
  }));
  const before = yamlParses.count;
  const model = parseConfig(JSON.stringify({ workloads, services }, null, 2), 'mesh.json');
  t.equal(model.services.length, 2000);
  t.equal(model.workloads?.length, 4000);
  t.equal(yamlParses.count, before, 'no YAML parse for a .json file');
  parseConfig('services: []\n', 'mesh.yaml');
  t.equal(yamlParses.count, before + 1, 'a YAML file is (the counter counts)');

  // the repeated key is still found, with its line, in the big text too
  const text = JSON.stringify({ workloads, services }, null, 2).replace('"name": "s1999"', '"name": "s1999", "name": "again"');
  const line = text.slice(0, text.indexOf('"name": "again"')).split('\n').length;
  try {
    parseConfig(text, 'mesh.json');
    t.fail('accepted a repeated key');
  } catch (e) {
    t.ok(e instanceof ConfigError);
    t.match((e as ConfigError).issues.map((i) => i.message), [new RegExp(`^JSON error at line ${line}, column \\d+: duplicate key$`)]);
  }
  t.equal(yamlParses.count, before + 1, 'still no YAML parse for JSON');
});
