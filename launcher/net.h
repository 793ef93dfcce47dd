/* The launcher's network helpers (net.c): the egress forwarder and an exposed port's
   connections, each a forked process with relay threads. */
#ifndef OSB_NET_H
#define OSB_NET_H
#include <sys/types.h>

/* Becomes uid/gid and serves `op` on `port` over `channel`: 'l' forwards every connection to
   127.0.0.1:<port> to the host, 'x' connects each socket the host sends to 127.0.0.1:<port>
   and relays it. Never returns. */
void serve_net(int channel, char op, unsigned port, uid_t uid, gid_t gid) __attribute__((noreturn));

#endif
