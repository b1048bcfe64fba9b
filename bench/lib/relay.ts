// A plain Node.js TCP relay, one thread: the l7 bench's calibration point (e). It knows nothing of HTTP,
// so it shows what Node.js moving bytes between two sockets costs on this machine, against which the
// proxy's own work can be judged. Usage: node relay.js <listen port> <upstream host> <upstream port>
import { createServer, connect, type Socket } from 'node:net';

function relay(client: Socket, host: string, port: number): void {
  const upstream = connect({ host, port, noDelay: true });
  client.setNoDelay(true);
  client.pipe(upstream);
  upstream.pipe(client);
  const close = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', close).on('close', close);
  upstream.on('error', close).on('close', close);
}

const [listenPort, host, port] = process.argv.slice(2);
if (!listenPort || !host || !port) {
  process.stderr.write('usage: relay.js <listen port> <upstream host> <upstream port>\n');
  process.exit(2);
}
createServer((c) => relay(c, host, Number(port)))
  .on('error', (e) => {
    process.stderr.write(`relay: ${e.message}\n`);
    process.exit(1);
  })
  .listen(Number(listenPort), '127.0.0.1');
