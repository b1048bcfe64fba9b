// The Vagrantfile cannot be brought up here (no hypervisor, and it downloads a box, k3s and images): what can be checked
// is checked. `ruby -c` (syntax), `vagrant validate` (Vagrant's own check of every machine's configuration; it must
// also refuse a broken copy, or it proves nothing), and every provisioning script: the Vagrantfile is evaluated under
// a stand-in for Vagrant's configure that records the machines and their inline scripts, and each script must pass
// `bash -n`. Then the layout: the single-node VM as before, and the k3s cluster installing sockmesh from deploy/.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VAGRANTFILE = join(ROOT, 'Vagrantfile');
const have = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

// A stand-in for Vagrant.configure: every call is accepted and recorded; define and provision are what we keep.
const RECORDER = `
require 'json'
LOG = { 'machines' => [], 'provisions' => [] }
class Rec
  def initialize(machine) @machine = machine end
  def respond_to_missing?(*) true end
  def method_missing(name, *args, **kw, &blk)
    case name
    when :define
      LOG['machines'] << { 'name' => args[0] }.merge(kw.transform_keys(&:to_s))
      blk.call(Rec.new(args[0]))
    when :provision
      LOG['provisions'] << { 'machine' => @machine, 'name' => kw[:name], 'inline' => kw[:inline], 'env' => kw[:env] }
    else
      blk&.call(Rec.new(@machine))
    end
    Rec.new(@machine)
  end
end
module Vagrant
  def self.configure(_version) yield Rec.new(nil) end
end
load ARGV[0]
puts JSON.generate(LOG)
`;

interface Recorded {
  machines: { name: string; primary?: boolean; autostart?: boolean }[];
  provisions: { machine: string | null; name: string; inline: string; env?: Record<string, string> }[];
}

t.test('ruby -c', { skip: have('ruby') ? false : 'ruby is not installed' }, async (t) => {
  const r = spawnSync('ruby', ['-c', VAGRANTFILE], { encoding: 'utf8' });
  t.equal(r.status, 0, `ruby -c Vagrantfile: ${r.stdout}${r.stderr}`);
});

t.test('vagrant validate, and it refuses a broken copy', { skip: have('vagrant') ? false : 'vagrant is not installed (apt-get install vagrant; .ci/run does)' }, async (t) => {
  // In a directory of its own: vagrant writes .vagrant/ next to the Vagrantfile it reads.
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-vagrant-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  copyFileSync(VAGRANTFILE, join(dir, 'Vagrantfile'));
  const validate = (): { code: number | null; out: string } => {
    const r = spawnSync('vagrant', ['validate'], { cwd: dir, encoding: 'utf8', timeout: 120000, env: { ...process.env, VAGRANT_CHECKPOINT_DISABLE: '1' } });
    return { code: r.status, out: `${r.stdout}${r.stderr}` };
  };
  const ok = validate();
  t.equal(ok.code, 0, `vagrant validate: ${ok.out}`);
  writeFileSync(join(dir, 'Vagrantfile'), readFileSync(VAGRANTFILE, 'utf8').replace('node.vm.hostname = "k3s-server"', 'node.vm.hostnaem = "k3s-server"'));
  const bad = validate();
  t.not(bad.code, 0, 'a misspelt setting fails validation');
  t.match(bad.out, /hostnaem/, 'and the error names it');
});

t.test('machines and provisioning scripts', { skip: have('ruby') ? false : 'ruby is not installed' }, async (t) => {
  const r = spawnSync('ruby', ['-e', RECORDER, VAGRANTFILE], { encoding: 'utf8' });
  t.equal(r.status, 0, `evaluating the Vagrantfile: ${r.stderr}`);
  const rec = JSON.parse(r.stdout) as Recorded;
  t.same(rec.machines.map((m) => m.name), ['sockmesh', 'k3s-server', 'k3s-agent1', 'k3s-agent2']);
  t.match(rec.machines[0], { name: 'sockmesh', primary: true }, 'the single-node VM is the primary machine');
  t.notOk(rec.machines[0]!.autostart === false, '`vagrant up` still brings it up');
  for (const m of rec.machines.slice(1)) t.equal(m.autostart, false, `${m.name}: only when named (vagrant up ${m.name})`);
  for (const p of rec.provisions) {
    t.type(p.inline, 'string', `${p.machine}: ${p.name} is an inline script`);
    const n = spawnSync('bash', ['-n'], { input: p.inline, encoding: 'utf8' });
    t.equal(n.status, 0, `${p.machine}: "${p.name}" passes bash -n${n.stderr ? `: ${n.stderr}` : ''}`);
  }
  const of = (machine: string): string => rec.provisions.filter((p) => p.machine === machine).map((p) => p.inline).join('\n');
  t.same(rec.provisions.filter((p) => p.machine === 'sockmesh').map((p) => p.name), ['packages and build', 'agent service'], 'the single-node VM provisions as before');
  t.match(of('sockmesh'), 'systemctl enable --now sockmesh-agent');
  const server = of('k3s-server');
  t.match(server, 'bash scripts/image.sh --suite trixie', 'the server builds the image');
  t.match(server, 'kubectl apply -k /vagrant/deploy', 'sockmesh is installed from deploy/');
  t.match(server, 'kubectl apply -f /vagrant/deploy/demo/', 'and the demo app');
  for (const agent of ['k3s-agent1', 'k3s-agent2']) {
    t.match(of(agent), /get\.k3s\.io.*\n?.*K3S_URL="https:\/\/192\.168\.56\.10:6443"/, `${agent} joins the server`);
    t.match(of(agent), '/var/lib/rancher/k3s/agent/images/sockmesh.tar', `${agent} gets the image before k3s starts`);
  }
});
