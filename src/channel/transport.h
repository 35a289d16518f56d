/*
 * Transports: turn a migration URI into connected file descriptors.
 *
 *   unix:PATH               Unix stream socket
 *   tcp:HOST:PORT           TCP, IPv4 or IPv6 ("tcp:[::1]:4444"); port 0 on
 *                           the listening side picks a free port
 *   fd:N                    an already open descriptor N (a socket, pipe or file)
 *   exec:COMMAND            /bin/sh -c COMMAND; its stdin and stdout are the stream
 *   file:PATH[,offset=N]    save to / restore from a file, at byte offset N
 *   file:PATH,fd=M          the same through descriptor M, already open on
 *                           PATH (QMP resolves file:/dev/fdset/ID into it):
 *                           a successful connect takes M over, listen
 *                           works on a duplicate (the caller closes M)
 *
 * Socket transports can open several connections (multifd, postcopy
 * preempt); the others carry exactly one stream.
 */
#ifndef LM_CHANNEL_TRANSPORT_H
#define LM_CHANNEL_TRANSPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "livemig/error.h"

typedef enum lm_transport_kind {
    LM_TRANSPORT_UNIX,
    LM_TRANSPORT_TCP,
    LM_TRANSPORT_FD,
    LM_TRANSPORT_EXEC,
    LM_TRANSPORT_FILE,
} lm_transport_kind;

typedef struct lm_uri {
    lm_transport_kind kind;
    char path[512];  /* unix path, file path, exec command */
    char host[256];  /* tcp */
    char port[16];   /* tcp */
    int fd;          /* fd:, or file: with fd=M (-1: none) */
    uint64_t offset; /* file: */
    /* Set by the engine, not parsed: every connection made to or accepted
     * on this URI runs TLS with it (channel/tls.h). */
    const struct lm_tls_config *tls;
} lm_uri;

int lm_uri_parse(const char *uri, lm_uri *out, lm_error *err);
/* True when the transport can open more than one connection. */
bool lm_uri_multi_channel(const lm_uri *u);

/* Outgoing: connect.  *pid is the exec: child (or 0).  A socket connect
 * that waits (a busy or unreachable peer) asks should_abort(opaque) every
 * 100 ms and gives up with -ECANCELED when it returns true. */
int lm_transport_connect(const lm_uri *u, int *fd, int *pid, bool (*should_abort)(void *),
                         void *opaque, lm_error *err);

/* Outgoing file: opens the file as a save will (creating it, never
 * through a symbolic link) without changing it, so that `migrate` itself
 * reports a path that cannot be written.  0 for other transports. */
int lm_transport_check_file(const lm_uri *u, lm_error *err);

typedef struct lm_listener lm_listener;

/* Incoming: listen on a socket URI, or open the single stream of the others. */
int lm_transport_listen(const lm_uri *u, lm_listener **out, lm_error *err);
/* Wait for the next connection; -ECANCELED once lm_listener_abort() ran,
 * -EPIPE when a single-stream transport has already been handed out. */
int lm_listener_accept(lm_listener *l, int *fd, int *pid, lm_error *err);
/* Like lm_listener_accept, but hands out only a connection that has sent
 * its first `need` bytes (peeked, left for the reader) within timeout_ms
 * of being accepted (the handshake timeout; 0: no limit).  A socket peer
 * that stays silent, stalls part-way or closes first is dropped with a
 * warning and the next connection is waited for: one bad client cannot
 * hold the migration.  Everything waits on the abort pipe too, so cancel
 * reaches a connection in its handshake.  Single-stream transports are
 * handed out at once.  need: at most 64. */
int lm_listener_accept_ready(lm_listener *l, size_t need, unsigned timeout_ms, int *fd, int *pid,
                             lm_error *err);
/* The address clients connect to ("tcp:127.0.0.1:40123", "unix:/p"), empty
 * for single-stream transports. */
const char *lm_listener_address(const lm_listener *l);
/* The URI it listens on (its tls: the accepted connections'). */
const lm_uri *lm_listener_uri(const lm_listener *l);
/* Make a blocked lm_listener_accept() return -ECANCELED (any thread). */
void lm_listener_abort(lm_listener *l);
void lm_listener_close(lm_listener *l);

#endif
