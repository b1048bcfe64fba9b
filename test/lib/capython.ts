// An independent client of the CA's gRPC API: python3 grpcio (Debian's, /usr/bin/python3) with the requests encoded
// by hand, so the tests do not check our encoder against itself. IstioCertificateRequest: csr = 1 (string),
// validity_duration = 3 (int64); the answers' repeated string field 1 (cert chain, trust bundle) comes back decoded.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

const PY_CLIENT = String.raw`
import grpc, json, sys
addr, method, token, csr = sys.argv[1], sys.argv[2], sys.argv[3], sys.stdin.read()
def varint(n):
    out = b''
    while True:
        b = n & 0x7f; n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
def field_str(num, s):
    b = s.encode(); return varint((num << 3) | 2) + varint(len(b)) + b
def strings(buf, want):
    i, out = 0, []
    while i < len(buf):
        key = 0; shift = 0
        while True:
            c = buf[i]; i += 1; key |= (c & 0x7f) << shift; shift += 7
            if not c & 0x80: break
        n = 0; shift = 0
        while True:
            c = buf[i]; i += 1; n |= (c & 0x7f) << shift; shift += 7
            if not c & 0x80: break
        if key >> 3 == want: out.append(buf[i:i + n].decode())
        i += n
    return out
# IstioCertificateRequest: csr = 1 (string), validity_duration = 3 (int64): 3600
req = field_str(1, csr) + varint(3 << 3) + varint(3600) if method.endswith('CreateCertificate') else b''
md = [('authorization', 'Bearer ' + token)] if token else []
try:
    res = grpc.insecure_channel(addr).unary_unary(method)(req, metadata=md, timeout=10)
    print(json.dumps({'ok': True, 'strings': strings(res, 1)}))
except grpc.RpcError as e:
    print(json.dumps({'ok': False, 'code': e.code().name, 'details': e.details()}))
`;

export async function pythonCa(port: number, method: string, token: string, input = ''): Promise<{ ok: boolean; strings?: string[]; code?: string; details?: string }> {
  const p = run('/usr/bin/python3', ['-c', PY_CLIENT, `127.0.0.1:${port}`, method, token], { timeout: 20_000 });
  p.child.stdin!.end(input);
  return JSON.parse((await p).stdout) as never;
}
