import type { LabPod } from '../../lab/lab.js';

// An echo server for a pod (dual-stack on ::, port argv[1]; `python3 -c POD_ECHO <port>`): each connection gets back
// what it sent, until it half-closes; prints 'ready' once it listens. Shared by kernel/pods and kernel/tunnel-handover.
export const POD_ECHO = `
import socket, sys, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', int(sys.argv[1]))); s.listen(128)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
print('ready', flush=True)
while True:
    c, a = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

// A pod's greeting server (dual-stack on ::, `python3 -c POD_GREETER <name> <port>`): greets each connection with
// "<name> <peer address>\n" (the peer as the pod saw it: which node or pod it came from), then echoes every byte until
// the client's FIN, then closes; prints 'ready' once it listens. Shared by kernel/hbone and kernel/hbone-xds.
export const POD_GREETER = `import socket, sys, threading
def serve(c, a):
    p = a[0][7:] if a[0].startswith('::ffff:') else a[0]
    try:
        c.sendall(f'{sys.argv[1]} {p}\\n'.encode())
        while True:
            d = c.recv(65536)
            if not d: break
            c.sendall(d)
    except OSError: pass
    c.close()
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', int(sys.argv[2]))); s.listen(256)
print('ready', flush=True)
while True:
    c, a = s.accept(); threading.Thread(target=serve, args=(c, a), daemon=True).start()`;

/** Start POD_GREETER in `pod` on `port`; resolves once it listens. */
export async function startGreeter(pod: LabPod, port: number): Promise<void> {
  const p = pod.spawn('python3', ['-c', POD_GREETER, pod.name, String(port)]);
  await new Promise((res, rej) => { p.stdout!.once('data', res); p.once('exit', (c) => rej(new Error(`server in ${pod.name} exited ${c}`))); });
}
