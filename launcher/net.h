/* The launcher's network helpers (net.c): the egress forwarder and exposed-port connections,
   each a forked process. */
#ifndef OSB_NET_H
#define OSB_NET_H
#include <sys/types.h>

/* Becomes uid/gid and serves `op` on `port` over `channel` (and `data`, -1 when the op has
   none): 'l' forwards every connection to 127.0.0.1:<port> to the host, 'c' connects to
   127.0.0.1:<port> and relays it over `data`. Never returns. */
void serve_net(int channel, int data, char op, unsigned port, uid_t uid, gid_t gid)
    __attribute__((noreturn));

#endif
