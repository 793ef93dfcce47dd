/*
 * The network helpers of the launcher. A sandbox with an egress policy has no network but its
 * loopback; these helpers carry TCP between that loopback and the host, where the library's
 * proxy decides (src/net/). Nothing here decides anything: a helper only moves bytes, and
 * every byte that leaves goes to the host's proxy over a socket the host made.
 *
 * 'l' (listen: the egress forwarder, one per sandbox). Listens on 127.0.0.1:<port>, replies
 *     "S 0" on its channel (or "E <errno>" and exits). The host sends "C" records, each
 *     carrying one fd (SCM_RIGHTS): a stream socket whose other end is the proxy; it sends a
 *     few ahead (kept as spares, at most MAX_SPARES), so that a new connection does not wait
 *     for a round trip to the host. Per accepted connection the helper takes a spare (or
 *     queues the connection until a "C" comes: at most MAX_PENDING wait, beyond that they are
 *     closed at once), sends "A" on the channel (the host answers each "A" with one "C"), and
 *     a relay worker thread (kept for later connections) copies both ways between the two. The helper exits when the channel
 *     closes.
 * 'x' (expose: the connections to one exposed port, while any is open). Replies "S 0", then
 *     takes "C" records from the host, each carrying one stream socket (a host client's
 *     connection); a relay worker thread connects to 127.0.0.1:<port> and copies both ways
 *     between the two, or closes the socket when nothing listens there. The helper exits
 *     when the channel closes (the host closes it once no connection is open). One helper
 *     and a thread per connection, not a process per connection: under gVisor a process
 *     is an address space with a host stub of its own (2.4 MB and six host pids each,
 *     measured), and 128 idle connections killed the sandbox.
 *
 * The helpers run as the sandbox's user, with no capability, like the file helpers: what the
 * sandbox's own processes may do to them (kill them, take the port first) costs the sandbox
 * its own network, nothing more.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "net.h"

#define MAX_PENDING 256
#define MAX_SPARES 8
#define RELAY_BUF (256 * 1024)

static void say(int channel, const char *text) {
    while (send(channel, text, strlen(text), MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
}

__attribute__((noreturn)) static void fail(int channel, int err) {
    char text[32];
    snprintf(text, sizeof text, "E %d", err);
    say(channel, text);
    _exit(1);
}

/* Every fd here is a socket: MSG_NOSIGNAL, so that a peer that has gone is an error to handle
   (EPIPE), not a SIGPIPE that would end the forwarder. */
static int write_all(int fd, const char *buf, ssize_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= n;
    }
    return 0;
}

/* Copies both ways between `a` and `b` until both directions have ended; an end of one
   direction is passed on as a shutdown of writing. */
static void relay(int a, int b, char *buf) {
    int fds[2] = {a, b};
    int open_dir[2] = {1, 1}; /* [0]: a -> b, [1]: b -> a */
    while (open_dir[0] || open_dir[1]) {
        struct pollfd p[2];
        int np = 0, dir_of[2];
        for (int d = 0; d < 2; d++) {
            if (!open_dir[d]) continue;
            p[np] = (struct pollfd){.fd = fds[d], .events = POLLIN};
            dir_of[np++] = d;
        }
        if (poll(p, np, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        for (int k = 0; k < np; k++) {
            if (!p[k].revents) continue;
            int d = dir_of[k];
            ssize_t n = read(fds[d], buf, RELAY_BUF);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n <= 0 || write_all(fds[1 - d], buf, n) < 0) {
                open_dir[d] = 0;
                shutdown(fds[1 - d], SHUT_WR);
                if (n < 0) return; /* a reset: nothing more will come either way */
            }
        }
    }
}

static int loopback_socket(unsigned port, struct sockaddr_in *addr) {
    *addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

/* Receives one record from the channel; its fd (if any) in *fd. Returns the record's length,
   0 when the channel ended, -1 on error. */
static ssize_t receive(int channel, char *buf, size_t size, int *fd) {
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = buf, .iov_len = size};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control,
                         .msg_controllen = sizeof control};
    *fd = -1;
    ssize_t n;
    do {
        n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); n >= 0 && c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len == CMSG_LEN(sizeof(int)) && *fd < 0)
            memcpy(fd, CMSG_DATA(c), sizeof(int));
    }
    return n;
}

/* A relay: between `a` and `b`; with `port`, `b` is first connected to 127.0.0.1:<port>. */
struct pair {
    int a, b;
    unsigned port;
};

/* Connects `fd` to the sandbox's 127.0.0.1:<port> (blocking: only its worker waits). */
static int connect_loopback(int *fd, unsigned port) {
    struct sockaddr_in addr;
    *fd = loopback_socket(port, &addr);
    if (*fd < 0) return -1;
    int rc;
    do {
        rc = connect(*fd, (struct sockaddr *)&addr, sizeof addr);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -1;
    int one = 1;
    setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

/* Relays run on worker threads that stay for the next connection (a clone per connection cost
   a millisecond on gVisor, a fork two): connections wait in a queue, and a new worker starts
   only when none is idle. */
static pthread_mutex_t queue_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cv = PTHREAD_COND_INITIALIZER;
static struct pair queue[MAX_PENDING];
static int queue_head, queue_count, idle_workers;

static void *worker(void *unused) {
    (void)unused;
    char *buf = malloc(RELAY_BUF);
    for (;;) {
        pthread_mutex_lock(&queue_mu);
        idle_workers++;
        while (queue_count == 0) pthread_cond_wait(&queue_cv, &queue_mu);
        idle_workers--;
        struct pair p = queue[queue_head];
        queue_head = (queue_head + 1) % MAX_PENDING;
        queue_count--;
        pthread_mutex_unlock(&queue_mu);
        if (p.port && connect_loopback(&p.b, p.port) < 0) {
            /* Nothing listens there: the host's client sees its connection closed. */
        } else if (buf) {
            relay(p.a, p.b, buf);
        }
        close(p.a);
        if (p.b >= 0) close(p.b);
    }
    return NULL;
}

static int start_worker(void) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    int rc = pthread_create(&t, &attr, worker, NULL);
    pthread_attr_destroy(&attr);
    return rc;
}

/* Hands a connection to a worker (`port`: `b` is to be connected there first). */
static void relay_apart(int a, int b, unsigned port) {
    pthread_mutex_lock(&queue_mu);
    if (queue_count == MAX_PENDING) {
        pthread_mutex_unlock(&queue_mu);
        close(a);
        if (b >= 0) close(b);
        return;
    }
    queue[(queue_head + queue_count) % MAX_PENDING] = (struct pair){.a = a, .b = b, .port = port};
    queue_count++;
    int need_worker = idle_workers < queue_count;
    pthread_cond_signal(&queue_cv);
    pthread_mutex_unlock(&queue_mu);
    /* Without a new worker (no room for a thread), it waits for one that ends its relay. */
    if (need_worker) start_worker();
}

static void forward(int channel, unsigned port) {
    struct sockaddr_in addr;
    int listener = loopback_socket(port, &addr);
    int one = 1;
    if (listener < 0) fail(channel, errno);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 128) < 0)
        fail(channel, errno);
    /* Two workers ready before the first connection. */
    start_worker();
    start_worker();
    say(channel, "S 0");
    static int pending[MAX_PENDING];
    int head = 0, count = 0;
    int spares[MAX_SPARES], nspares = 0;
    for (;;) {
        struct pollfd p[2] = {{.fd = channel, .events = POLLIN},
                              {.fd = listener, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            _exit(1);
        }
        if (p[0].revents) {
            char buf[16];
            int fd;
            ssize_t n = receive(channel, buf, sizeof buf, &fd);
            if (n == 0 || (n < 0 && errno != EAGAIN)) _exit(0);
            if (n > 0 && buf[0] == 'C' && fd >= 0 && count > 0) {
                int conn = pending[head];
                head = (head + 1) % MAX_PENDING;
                count--;
                relay_apart(conn, fd, 0);
            } else if (n > 0 && buf[0] == 'C' && fd >= 0 && nspares < MAX_SPARES) {
                spares[nspares++] = fd;
            } else if (fd >= 0) {
                close(fd);
            }
        }
        if (p[1].revents) {
            int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (conn < 0) continue;
            if (count == MAX_PENDING) {
                close(conn);
                continue;
            }
            setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            /* The relay first: the request for a replacement is not on the connection's path. */
            if (nspares > 0) {
                relay_apart(conn, spares[--nspares], 0);
            } else {
                pending[(head + count) % MAX_PENDING] = conn;
                count++;
            }
            say(channel, "A");
        }
    }
}

static void expose(int channel, unsigned port) {
    start_worker();
    say(channel, "S 0");
    for (;;) {
        char buf[16];
        int fd;
        ssize_t n = receive(channel, buf, sizeof buf, &fd);
        if (n == 0 || (n < 0 && errno != EAGAIN)) _exit(0);
        if (n > 0 && buf[0] == 'C' && fd >= 0)
            relay_apart(fd, -1, port);
        else if (fd >= 0)
            close(fd);
    }
}

void serve_net(int channel, char op, unsigned port, uid_t uid, gid_t gid) {
    signal(SIGPIPE, SIG_IGN);
    if (setgroups(0, NULL) < 0 && errno != EPERM) fail(channel, errno);
    if (setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0) fail(channel, errno);
    if (port == 0 || port > 65535) fail(channel, EINVAL);
    switch (op) {
    case 'l': forward(channel, port); break;
    case 'x': expose(channel, port); break;
    }
    fail(channel, EINVAL);
}
