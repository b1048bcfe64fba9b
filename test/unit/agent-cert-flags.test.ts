// The agent's certificate flags (--node-token-file, --ca-address, --cert-ttl, --node-id, --trust-domain): refused with the flag named, before
// the agent touches the kernel (the real agent binary, as an operator starts it).
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runAgentRefusing } from '../lib/kernel.js';

t.test('the agent refuses bad certificate flags before touching the kernel', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-certflags-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const run = (args: string[]) => runAgentRefusing(dir, args);
  const noFile = await run(['--node-token-file', join(dir, 'missing'), '--ca-address', '127.0.0.1:1']);
  t.equal(noFile.code, 1);
  t.match(noFile.stderr, /--node-token-file .*missing: ENOENT/);
  writeFileSync(join(dir, 'tok'), 'x'.repeat(20));
  t.match((await run(['--node-token-file', join(dir, 'tok')])).stderr, /--node-token-file: which CA\? give --ca-address/);
  t.match((await run(['--ca-address', '127.0.0.1:1'])).stderr, /--ca-address and --cert-ttl need --node-token-file/);
  t.match((await run(['--node-token-file', join(dir, 'tok'), '--ca-address', 'nope'])).stderr, /--ca-address nope: expected HOST:PORT/);
  t.match((await run(['--node-token-file', join(dir, 'tok'), '--ca-address', '127.0.0.1:1', '--cert-ttl', '10'])).stderr, /--cert-ttl: must be a duration/);
  // the node's own identity (its tunnel server's) is made from --node-id: a name that cannot be one is refused
  t.match((await run(['--node-token-file', join(dir, 'tok'), '--ca-address', '127.0.0.1:1', '--node-id', 'Node_1'])).stderr,
    /--node-id: node name "Node_1": expected a Kubernetes node name .*; the node's identity spiffe:\/\/cluster\.local\/sockmesh\/node\/<node> is made from it/);
  t.match((await run(['--node-token-file', join(dir, 'tok'), '--ca-address', '127.0.0.1:1', '--node-id', 'n1', '--trust-domain', 'Bad'])).stderr, /--trust-domain: 'Bad' is not a trust domain/);
});
