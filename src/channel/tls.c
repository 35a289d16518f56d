/*
 * TLS sessions under the buffered channel: handshake, mutual verdict,
 * record I/O.  See channel/tls.h.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "channel/tls_internal.h"
#include "common/util.h"

/* QEMU's defaults: the system's priorities, plus the PSK key exchanges for
 * PSK credentials. */
#define DEFAULT_PRIORITY "NORMAL"
#define PSK_KX ":+ECDHE-PSK:+DHE-PSK:+PSK"
#define RECORD_MAX 16384
/* Encrypted records go to the socket in batches of up to this many bytes,
 * and the socket is read in pieces of up to this many: a system call per
 * 16 KiB record (two on the receiving side, which GnuTLS reads header
 * first) cost more than the copy into and out of these buffers. */
#define TX_BATCH (256 * 1024)
#define RX_BATCH (256 * 1024)
/* The verdict record: the peer checked us and lets us in. */
#define ADMITTED 0x41

/* Our own alert for "your certificate does not carry the name I asked
 * for": TLS has none, so certificate_unknown (46) says it, and only that. */
#define ALERT_HOSTNAME_MISMATCH GNUTLS_A_CERTIFICATE_UNKNOWN

struct lm_tls_session {
    int refs;
    int fd;
    gnutls_session_t s;
    bool psk;
    char name[64]; /* the channel's, for messages */
    /* The socket's last errors, for messages: errno itself does not
     * survive GnuTLS.  One writer and one reader thread at most. */
    int send_errno, recv_errno;
    bool recv_eof; /* the reader's: the socket said end of stream */
    /* The writer's: while lm_tls_writev runs (batching, in thread
     * batcher), the records GnuTLS pushes gather in tx and go out when it
     * is full and when lm_tls_writev returns.  Other pushes (handshake,
     * alerts) go out at once. */
    bool batching;
    pthread_t batcher;
    uint8_t *tx;
    size_t txlen;
    /* The reader's: what the last recv() brought and GnuTLS has not
     * taken yet. */
    uint8_t *rx;
    size_t rxpos, rxlen;
};

lm_tls_config *lm_tls_config_new(lm_tls_creds *creds, lm_authz *authz, const char *authz_id,
                                 const char *hostname)
{
    lm_tls_config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg) {
        lm_tls_creds_unref(creds);
        lm_authz_unref(authz);
        return NULL;
    }
    cfg->creds = creds;
    cfg->authz = authz;
    snprintf(cfg->authz_id, sizeof(cfg->authz_id), "%s", authz_id ? authz_id : "");
    snprintf(cfg->hostname, sizeof(cfg->hostname), "%s", hostname ? hostname : "");
    return cfg;
}

void lm_tls_config_free(lm_tls_config *cfg)
{
    if (cfg) {
        lm_tls_creds_unref(cfg->creds);
        lm_authz_unref(cfg->authz);
        free(cfg);
    }
}

/* ---- transport: the socket, with MSG_NOSIGNAL and a bounded wait ---- */

static ssize_t send_some(lm_tls_session *t, const void *data, size_t len)
{
    ssize_t n;
    do {
        n = send(t->fd, data, len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        t->send_errno = errno;
    }
    return n;
}

/* Sends the batched records: 0, or -1 with send_errno set. */
static int tx_flush(lm_tls_session *t)
{
    size_t done = 0;
    while (done < t->txlen) {
        ssize_t n = send_some(t, t->tx + done, t->txlen - done);
        if (n < 0) {
            return -1;
        }
        done += (size_t)n;
    }
    t->txlen = 0;
    return 0;
}

static ssize_t push_fn(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    lm_tls_session *t = ptr;
    if (!__atomic_load_n(&t->batching, __ATOMIC_ACQUIRE) ||
        !pthread_equal(t->batcher, pthread_self())) {
        return send_some(t, data, len);
    }
    if (t->txlen + len > TX_BATCH && tx_flush(t) < 0) {
        errno = t->send_errno;
        return -1;
    }
    if (len > TX_BATCH) {
        return send_some(t, data, len);
    }
    memcpy(t->tx + t->txlen, data, len);
    t->txlen += len;
    return (ssize_t)len;
}

static ssize_t pull_fn(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
    lm_tls_session *t = ptr;
    if (t->rxpos == t->rxlen) {
        ssize_t n;
        do {
            n = recv(t->fd, t->rx, RX_BATCH, 0);
        } while (n < 0 && errno == EINTR);
        if (n <= 0) {
            if (n < 0) {
                t->recv_errno = errno;
            } else {
                t->recv_eof = true;
            }
            return n;
        }
        t->rxpos = 0;
        t->rxlen = (size_t)n;
    }
    size_t take = LM_MIN(len, t->rxlen - t->rxpos);
    memcpy(data, t->rx + t->rxpos, take);
    t->rxpos += take;
    return (ssize_t)take;
}

static int pull_timeout_fn(gnutls_transport_ptr_t ptr, unsigned int ms)
{
    lm_tls_session *t = ptr;
    if (t->rxpos < t->rxlen) {
        return 1; /* already read */
    }
    struct pollfd p = { t->fd, POLLIN, 0 };
    int timeout = ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)ms;
    int r;
    do {
        r = poll(&p, 1, timeout);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* ---- messages ---- */

/* What an alert from the peer says about us. */
static const char *alert_cause(gnutls_alert_description_t a, bool psk)
{
    switch (a) {
    case GNUTLS_A_ACCESS_DENIED:
        return "authorization denied (the destination's tls-authz refuses this client's identity)";
    case GNUTLS_A_UNKNOWN_CA:
        return "unknown CA: the peer does not trust the CA that signed this side's certificate";
    case GNUTLS_A_CERTIFICATE_EXPIRED:
        return "expired certificate: the peer says this side's certificate has expired";
    case ALERT_HOSTNAME_MISMATCH:
        return "hostname mismatch: this side's certificate does not carry the name the peer "
               "expects (tls-hostname)";
    case GNUTLS_A_CERTIFICATE_REQUIRED:
        return "no client certificate: the destination verifies its peers and this side sent "
               "no certificate";
    case GNUTLS_A_DECRYPT_ERROR:
    case GNUTLS_A_BAD_RECORD_MAC:
    case GNUTLS_A_ILLEGAL_PARAMETER:
    case GNUTLS_A_UNKNOWN_PSK_IDENTITY:
        if (psk) {
            return "PSK mismatch: the peer has another key for this username, or none";
        }
        return NULL;
    default:
        return NULL;
    }
}

static int alert_error(lm_tls_session *t, lm_error *err)
{
    gnutls_alert_description_t a = gnutls_alert_get(t->s);
    const char *cause = alert_cause(a, t->psk);
    if (cause) {
        return lm_error_set(err, -ECONNREFUSED, "%s: TLS refused by the peer: %s", t->name, cause);
    }
    const char *an = gnutls_alert_get_name(a);
    return lm_error_set(err, -ECONNREFUSED, "%s: TLS refused by the peer (alert: %s)", t->name,
                        an ? an : "unknown");
}

/* A GnuTLS failure of the handshake or of record I/O as -errno + message. */
static int gnutls_failure(lm_tls_session *t, int rc, const char *what, lm_error *err)
{
    int saved = rc == GNUTLS_E_PUSH_ERROR ? t->send_errno
                : rc == GNUTLS_E_PULL_ERROR ? t->recv_errno : errno;
    switch (rc) {
    case GNUTLS_E_FATAL_ALERT_RECEIVED:
        return alert_error(t, err);
    case GNUTLS_E_TIMEDOUT:
        return lm_error_set(err, -ETIMEDOUT, "%s: TLS %s timed out after %d ms", t->name, what,
                            LM_TLS_HANDSHAKE_MS);
    case GNUTLS_E_PREMATURE_TERMINATION:
        return lm_error_set(err, -EPIPE, "%s: connection closed by peer during TLS %s", t->name,
                            what);
    case GNUTLS_E_PUSH_ERROR:
    case GNUTLS_E_PULL_ERROR:
        if (saved == EPIPE || saved == ECONNRESET || saved == 0) {
            return lm_error_set(err, saved ? -saved : -EPIPE,
                                "%s: connection closed by peer during TLS %s", t->name, what);
        }
        return lm_error_set(err, -saved, "%s: TLS %s failed: %s", t->name, what, strerror(saved));
    case GNUTLS_E_CERTIFICATE_REQUIRED:
    case GNUTLS_E_NO_CERTIFICATE_FOUND:
        return lm_error_set(err, -EACCES,
                            "%s: TLS %s failed: no client certificate: verify-peer requires the "
                            "client to present one", t->name, what);
    case GNUTLS_E_DECRYPTION_FAILED:
    case GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER:
    case GNUTLS_E_KEYFILE_ERROR:
    case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
        /* A wrong key shows in the handshake; a record that fails
         * afterwards was damaged on the way (below). */
        if (t->psk && strcmp(what, "handshake") == 0) {
            return lm_error_set(err, -EACCES,
                                "%s: TLS %s failed: PSK mismatch: the client's key or username "
                                "is not in this side's keys.psk (%s)", t->name, what,
                                gnutls_strerror(rc));
        }
        break;
    default:
        break;
    }
    if (rc == GNUTLS_E_UNEXPECTED_PACKET_LENGTH && strcmp(what, "read") == 0 && t->recv_eof) {
        /* GnuTLS's word for a stream that ends inside a record. */
        return lm_error_set(err, -EPIPE, "%s: connection closed by peer in the middle of a TLS "
                            "record", t->name);
    }
    if (rc == GNUTLS_E_DECRYPTION_FAILED) {
        return lm_error_set(err, -EBADMSG, "%s: a TLS record failed authentication (corrupted or "
                            "tampered with)", t->name);
    }
    return lm_error_set(err, -EPROTO, "%s: TLS %s failed: %s", t->name, what, gnutls_strerror(rc));
}

/* ---- session setup ---- */

static void session_free(lm_tls_session *t)
{
    if (t->s) {
        gnutls_deinit(t->s);
    }
    free(t->tx);
    free(t->rx);
    free(t);
}

lm_tls_session *lm_tls_session_ref(lm_tls_session *t)
{
    __atomic_fetch_add(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

void lm_tls_session_unref(lm_tls_session *t)
{
    if (t && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        session_free(t);
    }
}

static int session_new(lm_channel *ch, const lm_tls_creds *c, bool server, lm_tls_session **out,
                       lm_error *err)
{
    lm_tls_session *t = calloc(1, sizeof(*t));
    *out = NULL;
    if (t) {
        t->tx = malloc(TX_BATCH);
        t->rx = malloc(RX_BATCH);
    }
    if (!t || !t->tx || !t->rx) {
        if (t) {
            free(t->tx);
            free(t->rx);
            free(t);
        }
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    t->refs = 1;
    t->fd = lm_channel_fd(ch);
    t->psk = c->psk;
    snprintf(t->name, sizeof(t->name), "%s", lm_channel_name(ch));
    /* No session tickets: nothing to resume, and no post-handshake
     * messages that a reader would have to answer while another thread
     * writes. */
    int rc = gnutls_init(&t->s, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_TICKETS);
    if (rc < 0) {
        t->s = NULL;
        session_free(t);
        return lm_error_set(err, -ENOMEM, "%s: cannot start a TLS session: %s", lm_channel_name(ch),
                            gnutls_strerror(rc));
    }
    char prio[sizeof(c->priority) + sizeof(PSK_KX)];
    snprintf(prio, sizeof(prio), "%s%s", c->priority[0] ? c->priority : DEFAULT_PRIORITY,
             c->psk ? PSK_KX : "");
    const char *bad = NULL;
    rc = gnutls_priority_set_direct(t->s, prio, &bad);
    if (rc < 0) {
        session_free(t);
        return lm_error_set(err, -EINVAL, "%s: TLS priority '%s' is invalid near '%s': %s",
                            lm_channel_name(ch), prio, bad ? bad : "", gnutls_strerror(rc));
    }
    if (c->psk) {
        rc = server ? gnutls_credentials_set(t->s, GNUTLS_CRD_PSK, c->psk_server)
                    : gnutls_credentials_set(t->s, GNUTLS_CRD_PSK, c->psk_client);
    } else {
        rc = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, c->x509);
        if (server) {
            gnutls_certificate_server_set_request(
                t->s, c->verify_peer ? GNUTLS_CERT_REQUIRE : GNUTLS_CERT_IGNORE);
            /* No list of acceptable CAs in the request: a client then
             * sends the certificate it has, and a foreign one is refused
             * as "unknown CA" rather than looking like none at all. */
            gnutls_certificate_send_x509_rdn_sequence(t->s, 1);
        }
    }
    if (rc < 0) {
        session_free(t);
        return lm_error_set(err, -EINVAL, "%s: cannot use the TLS credentials: %s",
                            lm_channel_name(ch), gnutls_strerror(rc));
    }
    gnutls_transport_set_ptr(t->s, t);
    gnutls_transport_set_push_function(t->s, push_fn);
    gnutls_transport_set_pull_function(t->s, pull_fn);
    gnutls_transport_set_pull_timeout_function(t->s, pull_timeout_fn);
    gnutls_handshake_set_timeout(t->s, LM_TLS_HANDSHAKE_MS);
    *out = t;
    return 0;
}

static int handshake(lm_tls_session *t, lm_error *err)
{
    int rc;
    do {
        rc = gnutls_handshake(t->s);
    } while (rc < 0 && !gnutls_error_is_fatal(rc));
    if (rc < 0) {
        /* Tell the peer why (GnuTLS leaves that to us), so that it can
         * name the cause too. */
        gnutls_alert_send_appropriate(t->s, rc);
        return gnutls_failure(t, rc, "handshake", err);
    }
    return 0;
}

/* The peer's certificate, checked by hand so that the cause can be told to
 * the peer in an alert.  Returns the alert to send (0: fine). */
static int verify_peer_cert(lm_tls_session *t, const char *hostname, lm_error *err)
{
    unsigned status = 0;
    int rc = gnutls_certificate_verify_peers3(t->s, hostname && *hostname ? hostname : NULL,
                                              &status);
    if (rc == GNUTLS_E_NO_CERTIFICATE_FOUND) {
        lm_error_set(err, -EACCES, "%s: TLS: the peer sent no certificate", t->name);
        return GNUTLS_A_CERTIFICATE_REQUIRED;
    }
    if (rc < 0) {
        lm_error_set(err, -EACCES, "%s: TLS: cannot verify the peer's certificate: %s", t->name,
                     gnutls_strerror(rc));
        return GNUTLS_A_BAD_CERTIFICATE;
    }
    if (status == 0) {
        return 0;
    }
    if (status & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA)) {
        lm_error_set(err, -EACCES, "%s: TLS: unknown CA: the peer's certificate is not signed by "
                     "a CA in this side's ca-cert.pem", t->name);
        return GNUTLS_A_UNKNOWN_CA;
    }
    if (status & GNUTLS_CERT_EXPIRED) {
        lm_error_set(err, -EKEYEXPIRED, "%s: TLS: expired certificate: the peer's certificate has "
                     "expired", t->name);
        return GNUTLS_A_CERTIFICATE_EXPIRED;
    }
    if (status & GNUTLS_CERT_NOT_ACTIVATED) {
        lm_error_set(err, -EKEYEXPIRED, "%s: TLS: the peer's certificate is not yet active",
                     t->name);
        return GNUTLS_A_BAD_CERTIFICATE;
    }
    if (status & GNUTLS_CERT_UNEXPECTED_OWNER) {
        lm_error_set(err, -EACCES, "%s: TLS: hostname mismatch: the destination's certificate "
                     "is not valid for '%s' (set tls-hostname to the name it carries)", t->name,
                     hostname);
        return ALERT_HOSTNAME_MISMATCH;
    }
    gnutls_datum_t out = { NULL, 0 };
    gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0);
    lm_error_set(err, -EACCES, "%s: TLS: the peer's certificate is not valid: %s", t->name,
                 out.data ? (const char *)out.data : "unknown reason");
    gnutls_free(out.data);
    return GNUTLS_A_BAD_CERTIFICATE;
}

/* The client's identity for tls-authz: its certificate's DN, or its PSK
 * username. */
static int peer_identity(lm_tls_session *t, char *buf, size_t size)
{
    if (t->psk) {
        const char *u = gnutls_psk_server_get_username(t->s);
        snprintf(buf, size, "%s", u ? u : "");
        return u ? 0 : -ENOENT;
    }
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(t->s, &n);
    if (!certs || n == 0) {
        return -ENOENT;
    }
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) < 0) {
        return -ENOMEM;
    }
    int ret = -EINVAL;
    gnutls_datum_t dn = { NULL, 0 };
    if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0 &&
        gnutls_x509_crt_get_dn3(crt, &dn, 0) == 0) {
        snprintf(buf, size, "%s", (const char *)dn.data);
        gnutls_free(dn.data);
        ret = 0;
    }
    gnutls_x509_crt_deinit(crt);
    return ret;
}

static int send_alert(lm_tls_session *t, int alert)
{
    gnutls_alert_send(t->s, GNUTLS_AL_FATAL, (gnutls_alert_description_t)alert);
    return 0;
}

static int send_admitted(lm_tls_session *t, lm_error *err)
{
    uint8_t b = ADMITTED;
    ssize_t rc;
    do {
        rc = gnutls_record_send(t->s, &b, 1);
    } while (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED);
    return rc < 0 ? gnutls_failure(t, (int)rc, "handshake", err) : 0;
}

static int await_admitted(lm_tls_session *t, lm_error *err)
{
    uint8_t b = 0;
    ssize_t rc;
    gnutls_record_set_timeout(t->s, LM_TLS_HANDSHAKE_MS);
    do {
        rc = gnutls_record_recv(t->s, &b, 1);
    } while (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED ||
             rc == GNUTLS_E_WARNING_ALERT_RECEIVED);
    gnutls_record_set_timeout(t->s, 0);
    if (rc == 0) {
        return lm_error_set(err, -EPIPE, "%s: connection closed by peer during TLS handshake",
                            t->name);
    }
    if (rc < 0) {
        return gnutls_failure(t, (int)rc, "handshake", err);
    }
    if (b != ADMITTED) {
        return lm_error_set(err, -EPROTO, "%s: TLS: the peer sent 0x%02x, not its verdict",
                            t->name, b);
    }
    return 0;
}

static int need_socket(lm_channel *ch, lm_error *err)
{
    int type = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(lm_channel_fd(ch), SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM) {
        return lm_error_set(err, -EINVAL, "%s: TLS needs a stream socket (tcp:, unix:, or fd: "
                            "of a socket)", lm_channel_name(ch));
    }
    return 0;
}

int lm_tls_client(lm_channel *ch, const lm_uri *uri, lm_error *err)
{
    const lm_tls_config *cfg = uri->tls;
    if (!cfg) {
        return 0;
    }
    int ret = need_socket(ch, err);
    lm_tls_session *t = NULL;
    if (ret == 0) {
        ret = session_new(ch, cfg->creds, false, &t, err);
    }
    if (ret < 0) {
        return lm_channel_set_error(ch, ret, "%s", err && err->msg[0] ? err->msg : "TLS failed");
    }
    /* tls-hostname, else the host of a tcp: URI (QEMU's rule). */
    const char *host = cfg->hostname[0] ? cfg->hostname
                       : uri->kind == LM_TRANSPORT_TCP ? uri->host : "";
    if (*host && !cfg->creds->psk) {
        gnutls_server_name_set(t->s, GNUTLS_NAME_DNS, host, strlen(host));
    }
    ret = handshake(t, err);
    if (ret == 0 && !cfg->creds->psk && cfg->creds->verify_peer) {
        int alert = verify_peer_cert(t, host, err);
        if (alert) {
            send_alert(t, alert);
            ret = err && err->code ? err->code : -EACCES;
        }
    }
    if (ret == 0) {
        ret = await_admitted(t, err);
    }
    if (ret == 0) {
        ret = send_admitted(t, err);
    }
    if (ret < 0) {
        lm_tls_session_unref(t);
        return lm_channel_set_error(ch, ret, "%s", err && err->msg[0] ? err->msg : "TLS failed");
    }
    lm_channel_attach_tls(ch, t);
    lm_tls_session_unref(t);
    return 0;
}

int lm_tls_server(lm_channel *ch, const lm_listener *l, lm_error *err)
{
    const lm_tls_config *cfg = lm_listener_uri(l)->tls;
    if (!cfg) {
        return 0;
    }
    int ret = need_socket(ch, err);
    lm_tls_session *t = NULL;
    if (ret == 0) {
        ret = session_new(ch, cfg->creds, true, &t, err);
    }
    if (ret < 0) {
        return lm_channel_set_error(ch, ret, "%s", err && err->msg[0] ? err->msg : "TLS failed");
    }
    ret = handshake(t, err);
    int alert = 0;
    if (ret == 0 && !cfg->creds->psk && cfg->creds->verify_peer) {
        alert = verify_peer_cert(t, NULL, err);
    }
    if (ret == 0 && !alert && cfg->authz) {
        char id[1024];
        if (peer_identity(t, id, sizeof(id)) < 0) {
            lm_error_set(err, -EACCES, "%s: TLS: authorization denied: tls-authz '%s' needs the "
                         "client's identity, and it has none (no client certificate: turn "
                         "verify-peer on)", t->name, cfg->authz_id);
            alert = GNUTLS_A_ACCESS_DENIED;
        } else if (!lm_authz_is_allowed(cfg->authz, id)) {
            lm_error_set(err, -EACCES, "%s: TLS: authorization denied for '%s' by tls-authz '%s'",
                         t->name, id, cfg->authz_id);
            alert = GNUTLS_A_ACCESS_DENIED;
        }
    }
    if (alert) {
        send_alert(t, alert);
        ret = err && err->code ? err->code : -EACCES;
    }
    if (ret == 0) {
        ret = send_admitted(t, err);
    }
    if (ret == 0) {
        ret = await_admitted(t, err);
    }
    if (ret < 0) {
        lm_tls_session_unref(t);
        return lm_channel_set_error(ch, ret, "%s", err && err->msg[0] ? err->msg : "TLS failed");
    }
    lm_channel_attach_tls(ch, t);
    lm_tls_session_unref(t);
    return 0;
}

/* ---- record I/O ---- */

static int send_all(lm_tls_session *t, const uint8_t *p, size_t n, lm_error *err)
{
    while (n > 0) {
        ssize_t rc = gnutls_record_send(t->s, p, n);
        if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
            continue;
        }
        if (rc < 0) {
            return gnutls_failure(t, (int)rc, "write", err);
        }
        p += rc;
        n -= (size_t)rc;
    }
    return 0;
}

static int writev_records(lm_tls_session *t, const struct iovec *iov, int cnt, lm_error *err)
{
    /* Small pieces (record headers, 4 KiB pages) are gathered into full
     * records: a record costs a header, a tag and an encryption call
     * whatever its size.  A piece of a record or more goes as it is. */
    uint8_t stage[RECORD_MAX];
    size_t staged = 0;
    for (int i = 0; i < cnt; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t n = iov[i].iov_len;
        while (n > 0) {
            if (staged == 0 && n >= RECORD_MAX) {
                size_t whole = n - n % RECORD_MAX;
                int ret = send_all(t, p, whole, err);
                if (ret < 0) {
                    return ret;
                }
                p += whole;
                n -= whole;
                continue;
            }
            size_t take = LM_MIN(n, RECORD_MAX - staged);
            memcpy(stage + staged, p, take);
            staged += take;
            p += take;
            n -= take;
            if (staged == RECORD_MAX) {
                int ret = send_all(t, stage, staged, err);
                if (ret < 0) {
                    return ret;
                }
                staged = 0;
            }
        }
    }
    return staged ? send_all(t, stage, staged, err) : 0;
}

int lm_tls_writev(lm_tls_session *t, const struct iovec *iov, int cnt, lm_error *err)
{
    /* A reader thread may push too (an alert): it sees batching only
     * with batcher set, and then sends its record directly. */
    t->batcher = pthread_self();
    __atomic_store_n(&t->batching, true, __ATOMIC_RELEASE);
    int ret = writev_records(t, iov, cnt, err);
    __atomic_store_n(&t->batching, false, __ATOMIC_RELEASE);
    if (tx_flush(t) < 0 && ret == 0) {
        ret = gnutls_failure(t, GNUTLS_E_PUSH_ERROR, "write", err);
    }
    t->txlen = 0;
    return ret;
}

ssize_t lm_tls_read(lm_tls_session *t, void *buf, size_t n, lm_error *err)
{
    for (;;) {
        ssize_t rc = gnutls_record_recv(t->s, buf, n);
        if (rc >= 0) {
            return rc;
        }
        if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED ||
            rc == GNUTLS_E_WARNING_ALERT_RECEIVED) {
            continue;
        }
        if (rc == GNUTLS_E_PREMATURE_TERMINATION) {
            return 0; /* the peer closed the connection: end of stream */
        }
        return gnutls_failure(t, (int)rc, "read", err);
    }
}

uint64_t lm_tls_pending(lm_tls_session *t)
{
    return (uint64_t)(t->rxlen - t->rxpos) + (uint64_t)gnutls_record_check_pending(t->s);
}
