/*
 * TLS sessions under the buffered channel (GnuTLS).
 *
 * A migration's TLS configuration (credentials, the hostname the server's
 * certificate must carry, the authorization of clients) travels with its
 * URI and listener, so every connection the migration opens runs TLS:
 * main channel, return path (it shares the main channel's session),
 * multifd channels, the postcopy preempt channel and the connections of a
 * recovery.
 *
 * After the TLS handshake both sides check the peer themselves and tell
 * the other one the verdict: a TLS alert that names the cause (unknown CA,
 * expired certificate, hostname mismatch, access denied) or a one-byte
 * "admitted" record.  So a refusal is reported with its cause on both
 * sides, and a connection that returns from lm_tls_client/server has been
 * accepted by both.  The whole exchange is bounded by LM_TLS_HANDSHAKE_MS.
 */
#ifndef LM_CHANNEL_TLS_H
#define LM_CHANNEL_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "channel/channel.h"
#include "channel/transport.h"
#include "livemig/error.h"
#include "livemig/tls.h"

#define LM_TLS_HANDSHAKE_MS 10000

/* What a migration's connections use; immutable once made. */
typedef struct lm_tls_config {
    lm_tls_creds *creds;
    lm_authz *authz;        /* destination; NULL: any client the creds let in */
    char authz_id[128];     /* for messages */
    char hostname[256];     /* tls-hostname; empty: the host of a tcp: URI */
} lm_tls_config;

/* Takes the references; returns NULL when out of memory (then drops them). */
lm_tls_config *lm_tls_config_new(lm_tls_creds *creds, lm_authz *authz, const char *authz_id,
                                 const char *hostname);
void lm_tls_config_free(lm_tls_config *cfg);

typedef struct lm_tls_session lm_tls_session;

/* The handshake, the mutual verdict, then the channel's reads and writes go
 * through the session.  No-ops (0) when the URI / listener carries no TLS
 * configuration.  A shutdown of the channel meanwhile makes them fail. */
int lm_tls_client(lm_channel *ch, const lm_uri *uri, lm_error *err);
int lm_tls_server(lm_channel *ch, const lm_listener *l, lm_error *err);

/* Used by the channel. */
lm_tls_session *lm_tls_session_ref(lm_tls_session *t);
void lm_tls_session_unref(lm_tls_session *t);
/* Every byte of iov, in records of at most 16 KiB: 0 or -errno (err set). */
int lm_tls_writev(lm_tls_session *t, const struct iovec *iov, int cnt, lm_error *err);
/* Up to n bytes (at least one): >0, 0 at the peer's end of stream, or -errno. */
ssize_t lm_tls_read(lm_tls_session *t, void *buf, size_t n, lm_error *err);
/* Bytes the session holds for its reader and lm_tls_read has not returned:
 * read off the socket and not yet decrypted (record framing included), plus
 * the rest of a decrypted record.  The reader's thread only. */
uint64_t lm_tls_pending(lm_tls_session *t);

#endif
