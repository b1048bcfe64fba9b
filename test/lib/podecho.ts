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
