// A soak backend (one per backend pod): `node soakserver.js NAME ADDRESS`, run by bench/soak.ts inside its pod.
// HTTP/1.1 on SOAK_PORTS.l7h1 (the L7 services' upstream) and l4http (the L4 TCP services'), h2c on l7h2, a UDP echo
// on udp; GET /healthz is the health probe. Commands on stdin, one per line, switch its modes:
//   unready on|off   /healthz answers 503 and gRPC's health check NOT_SERVING (the server keeps serving: a readiness probe failing, as Kubernetes has it)
//   errors on|off    every other request on the L7 ports answers 503 (what outlier detection must eject; the L4 port
//                    is left alone, since an L4 client has nobody to retry for it)
// It exits when stdin closes (the soak is gone), and prints `ready` once every socket listens.
import { createServer as createH1 } from 'node:http';
import { createServer as createH2, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import { createSocket } from 'node:dgram';
import { createInterface } from 'node:readline';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SOAK_PORTS } from './soakmodel.js';

const [name, address] = process.argv.slice(2);
if (!name || !address) {
  process.stderr.write('usage: soakserver NAME ADDRESS\n');
  process.exit(1);
}

let unready = false;
let errors = false;

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

const GRPC_HEALTH = '/grpc.health.v1.Health/Check';

/** grpc.health.v1.HealthCheckResponse {status: SERVING (1) | NOT_SERVING (2)} as one length-prefixed gRPC message. */
function grpcHealth(res: Http2ServerResponse): void {
  res.writeHead(200, { 'content-type': 'application/grpc' });
  res.addTrailers({ 'grpc-status': '0' });
  res.end(Buffer.from([0, 0, 0, 0, 2, 0x08, unready ? 2 : 1]));
}

function handler(l7: boolean) {
  return (req: Req, res: Res): void => {
    // Read the request to its end before answering (a request body is never left half-read on a kept-alive connection).
    req.resume();
    req.on('end', () => {
      if (req.url === GRPC_HEALTH && 'stream' in res) return grpcHealth(res);
      if (req.url === '/healthz') {
        res.writeHead(unready ? 503 : 200, { 'content-type': 'text/plain' });
        res.end(unready ? 'unready\n' : 'ok\n');
        return;
      }
      const status = l7 && errors ? 503 : 200;
      res.writeHead(status, { 'content-type': 'text/plain', 'x-soak-backend': name! });
      res.end(`${name}\n`);
    });
  };
}

const listening: Promise<void>[] = [];
const listen = (what: string, start: (done: () => void) => { once(ev: 'error', fn: (e: Error) => void): unknown }): void => {
  listening.push(new Promise((resolve, reject) => {
    start(resolve).once('error', (e: Error) => reject(new Error(`${what} on ${address}: ${e.message}`)));
  }));
};

const h1 = createH1(handler(true));
listen(`http ${SOAK_PORTS.l7h1}`, (done) => h1.listen(SOAK_PORTS.l7h1, address, done));
const l4 = createH1(handler(false));
listen(`http ${SOAK_PORTS.l4http}`, (done) => l4.listen(SOAK_PORTS.l4http, address, done));
// The h2c port is HTTP/2 only (prior knowledge): its services are probed over gRPC's health protocol.
const h2 = createH2(handler(true));
listen(`h2c ${SOAK_PORTS.l7h2}`, (done) => h2.listen(SOAK_PORTS.l7h2, address, done));
const udp = createSocket(address.includes(':') ? 'udp6' : 'udp4');
udp.on('message', (msg, from) => udp.send(Buffer.concat([Buffer.from(`${name} `), msg]), from.port, from.address));
listen(`udp ${SOAK_PORTS.udp}`, (done) => { udp.bind(SOAK_PORTS.udp, address, done); return udp; });

createInterface({ input: process.stdin }).on('line', (line) => {
  const [what, how] = line.trim().split(/\s+/);
  const on = how === 'on';
  if ((how !== 'on' && how !== 'off') || (what !== 'unready' && what !== 'errors')) {
    process.stderr.write(`soakserver ${name}: unknown command ${JSON.stringify(line)}\n`);
    return;
  }
  if (what === 'unready') unready = on;
  else errors = on;
}).on('close', () => process.exit(0));

Promise.all(listening).then(
  () => process.stdout.write('ready\n'),
  (e: Error) => { process.stderr.write(`soakserver ${name}: ${e.message}\n`); process.exit(1); },
);
