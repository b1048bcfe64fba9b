// A UDP client whose every call is reported with its errno, for the kernel test of what a connected UDP socket sees
// when its backend is removed (test/kernel/udp-removed.test.ts). Node's dgram cannot say it: it refuses sendto() on a
// connected socket and folds errors into events.
//
// udp-probe VIP PORT OP...: connect() to VIP:PORT, send "who", print "backend <id>" from the answer, then wait for a
// line on stdin and run the OPs, printing "<op> ok <n>" or "<op> <ERRNO>" for each:
//   send      send("again") on the socket (no address)
//   sendto    sendto("again", VIP:PORT)
//   recv      recv(MSG_DONTWAIT)
//   recvwait  recv() after waiting up to 1 s (poll); prints the answer's backend id
//   connect   connect() to VIP:PORT again
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *name(int e) {
  switch (e) {
    case ECONNABORTED: return "ECONNABORTED";
    case EDESTADDRREQ: return "EDESTADDRREQ";
    case EAGAIN: return "EAGAIN";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOTCONN: return "ENOTCONN";
    case EPERM: return "EPERM";
    case EISCONN: return "EISCONN";
    default: return strerror(e);
  }
}

static void result(const char *op, long n, const char *extra) {
  if (n < 0) printf("%s %s\n", op, name(errno));
  else printf("%s ok%s%s\n", op, extra ? " " : "", extra ? extra : "");
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: udp-probe VIP PORT OP...\n"); return 2; }
  struct sockaddr_in vip = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2])) };
  if (inet_pton(AF_INET, argv[1], &vip.sin_addr) != 1) return 2;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&vip, sizeof vip) < 0) { perror("connect"); return 1; }
  char buf[256];
  struct pollfd p = { .fd = fd, .events = POLLIN };
  if (send(fd, "who", 3, 0) < 0 || poll(&p, 1, 3000) != 1) { perror("first exchange"); return 1; }
  ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
  if (n < 0) { perror("recv"); return 1; }
  buf[n] = 0;
  *strchrnul(buf, ':') = 0;
  printf("backend %s\n", buf);
  fflush(stdout);
  char line[16];
  if (!fgets(line, sizeof line, stdin)) return 1;
  for (int i = 3; i < argc; i++) {
    const char *op = argv[i];
    if (!strcmp(op, "send")) result(op, send(fd, "again", 5, 0), NULL);
    else if (!strcmp(op, "sendto")) result(op, sendto(fd, "again", 5, 0, (struct sockaddr *)&vip, sizeof vip), NULL);
    else if (!strcmp(op, "recv")) result(op, recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT), NULL);
    else if (!strcmp(op, "connect")) result(op, connect(fd, (struct sockaddr *)&vip, sizeof vip), NULL);
    else if (!strcmp(op, "recvwait")) {
      if (poll(&p, 1, 1000) != 1) { printf("%s timeout\n", op); fflush(stdout); continue; }
      n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
      if (n >= 0) { buf[n] = 0; *strchrnul(buf, ':') = 0; }
      result(op, n, n >= 0 ? buf : NULL);
    } else { fprintf(stderr, "unknown op %s\n", op); return 2; }
  }
  return 0;
}
