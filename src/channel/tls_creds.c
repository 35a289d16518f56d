/*
 * TLS credentials (tls-creds-x509, tls-creds-psk) and authorization
 * (authz-simple, authz-list): loaded once, immutable, reference counted.
 */
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "channel/tls_internal.h"

#define PSK_DEFAULT_USERNAME "qemu"

static int path_in(char *buf, size_t size, const char *dir, const char *file, lm_error *err)
{
    if ((size_t)snprintf(buf, size, "%s/%s", dir, file) >= size) {
        return lm_error_set(err, -ENAMETOOLONG, "TLS credentials directory '%s' is too long", dir);
    }
    return 0;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* QEMU's sanity check: our own certificates must be valid now. */
static int check_cert_dates(const char *path, lm_error *err)
{
    gnutls_datum_t data = { NULL, 0 };
    int rc = gnutls_load_file(path, &data);
    if (rc < 0) {
        return lm_error_set(err, -ENOENT, "Cannot load certificate %s: %s", path,
                            gnutls_strerror(rc));
    }
    gnutls_x509_crt_t *list = NULL;
    unsigned n = 0;
    rc = gnutls_x509_crt_list_import2(&list, &n, &data, GNUTLS_X509_FMT_PEM, 0);
    gnutls_free(data.data);
    if (rc < 0) {
        return lm_error_set(err, -EINVAL, "Cannot parse certificate %s: %s", path,
                            gnutls_strerror(rc));
    }
    int ret = 0;
    time_t now = time(NULL);
    for (unsigned i = 0; i < n; i++) {
        if (ret == 0 && gnutls_x509_crt_get_expiration_time(list[i]) < now) {
            ret = lm_error_set(err, -EKEYEXPIRED, "The certificate %s has expired", path);
        }
        if (ret == 0 && gnutls_x509_crt_get_activation_time(list[i]) > now) {
            ret = lm_error_set(err, -EKEYEXPIRED, "The certificate %s is not yet active", path);
        }
        gnutls_x509_crt_deinit(list[i]);
    }
    gnutls_free(list);
    if (ret == 0 && n == 0) {
        ret = lm_error_set(err, -EINVAL, "No certificate in %s", path);
    }
    return ret;
}

static lm_tls_creds *creds_alloc(lm_tls_endpoint endpoint, bool verify_peer, const char *priority)
{
    lm_tls_creds *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->refs = 1;
    c->endpoint = endpoint;
    c->verify_peer = verify_peer;
    snprintf(c->priority, sizeof(c->priority), "%s", priority ? priority : "");
    return c;
}

static int load_x509(lm_tls_creds *c, const char *dir, lm_error *err)
{
    char ca[4096], crl[4096], cert[4096], key[4096];
    bool server = c->endpoint == LM_TLS_ENDPOINT_SERVER;
    if (path_in(ca, sizeof(ca), dir, "ca-cert.pem", err) < 0 ||
        path_in(crl, sizeof(crl), dir, "ca-crl.pem", err) < 0 ||
        path_in(cert, sizeof(cert), dir, server ? "server-cert.pem" : "client-cert.pem", err) < 0 ||
        path_in(key, sizeof(key), dir, server ? "server-key.pem" : "client-key.pem", err) < 0) {
        return -ENAMETOOLONG;
    }
    int rc = gnutls_certificate_allocate_credentials(&c->x509);
    if (rc < 0) {
        return lm_error_set(err, -ENOMEM, "Cannot allocate credentials: %s", gnutls_strerror(rc));
    }
    /* A client always checks the server (unless verify-peer is off), a
     * server needs the CA only to check clients. */
    bool need_ca = c->verify_peer || !server;
    if (need_ca || file_exists(ca)) {
        int ret = check_cert_dates(ca, err);
        if (ret < 0) {
            return ret;
        }
        rc = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
        if (rc < 0) {
            return lm_error_set(err, -EINVAL, "Cannot load CA certificate '%s': %s", ca,
                                gnutls_strerror(rc));
        }
    }
    if (file_exists(crl)) {
        rc = gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM);
        if (rc < 0) {
            return lm_error_set(err, -EINVAL, "Cannot load CA revocation list '%s': %s", crl,
                                gnutls_strerror(rc));
        }
    }
    /* A server must have its certificate; a client's is optional (without
     * one, a server that verifies its peers refuses it). */
    if (server || file_exists(cert) || file_exists(key)) {
        int ret = check_cert_dates(cert, err);
        if (ret < 0) {
            return ret;
        }
        rc = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
        if (rc < 0) {
            return lm_error_set(err, -EINVAL, "Cannot load certificate '%s' & key '%s': %s", cert,
                                key, gnutls_strerror(rc));
        }
    }
    return 0;
}

int lm_tls_creds_x509_new(const char *dir, lm_tls_endpoint endpoint, bool verify_peer,
                          const char *priority, lm_tls_creds **out, lm_error *err)
{
    *out = NULL;
    lm_tls_creds *c = creds_alloc(endpoint, verify_peer, priority);
    if (!c) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    int ret = load_x509(c, dir, err);
    if (ret < 0) {
        lm_tls_creds_unref(c);
        return ret;
    }
    *out = c;
    return 0;
}

/* The key of `username` in a keys.psk file ("username:hexkey" lines). */
static int psk_lookup(const char *path, const char *username, char *hex, size_t hexsize,
                      lm_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        return lm_error_set_errno(err, -errno, "Cannot read PSK file '%s'", path);
    }
    char line[1024];
    size_t ulen = strlen(username);
    bool found = false;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strncmp(line, username, ulen) == 0 && line[ulen] == ':') {
            snprintf(hex, hexsize, "%s", line + ulen + 1);
            found = true;
            break;
        }
    }
    fclose(f);
    if (!found) {
        return lm_error_set(err, -ENOKEY, "Username %s not found in PSK file %s", username, path);
    }
    return 0;
}

int lm_tls_creds_psk_new(const char *dir, const char *username, lm_tls_endpoint endpoint,
                         const char *priority, lm_tls_creds **out, lm_error *err)
{
    *out = NULL;
    lm_tls_creds *c = creds_alloc(endpoint, false, priority);
    if (!c) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    c->psk = true;
    snprintf(c->username, sizeof(c->username), "%s",
             username && *username ? username : PSK_DEFAULT_USERNAME);
    char path[4096];
    int ret = path_in(path, sizeof(path), dir, "keys.psk", err);
    if (ret == 0 && !file_exists(path)) {
        ret = lm_error_set(err, -ENOENT, "Cannot access PSK file '%s'", path);
    }
    if (ret == 0 && endpoint == LM_TLS_ENDPOINT_SERVER) {
        int rc = gnutls_psk_allocate_server_credentials(&c->psk_server);
        if (rc == 0) {
            rc = gnutls_psk_set_server_credentials_file(c->psk_server, path);
        }
        if (rc < 0) {
            ret = lm_error_set(err, -EINVAL, "Cannot load PSK file '%s': %s", path,
                               gnutls_strerror(rc));
        }
    } else if (ret == 0) {
        char hex[1024];
        ret = psk_lookup(path, c->username, hex, sizeof(hex), err);
        int rc = ret < 0 ? 0 : gnutls_psk_allocate_client_credentials(&c->psk_client);
        if (ret == 0 && rc == 0) {
            gnutls_datum_t key = { (unsigned char *)hex, (unsigned)strlen(hex) };
            rc = gnutls_psk_set_client_credentials(c->psk_client, c->username, &key,
                                                   GNUTLS_PSK_KEY_HEX);
        }
        if (ret == 0 && rc < 0) {
            ret = lm_error_set(err, -EINVAL, "Cannot use the PSK of %s in '%s': %s", c->username,
                               path, gnutls_strerror(rc));
        }
        explicit_bzero(hex, sizeof(hex));
    }
    if (ret < 0) {
        lm_tls_creds_unref(c);
        return ret;
    }
    *out = c;
    return 0;
}

lm_tls_creds *lm_tls_creds_ref(lm_tls_creds *c)
{
    if (c) {
        __atomic_fetch_add(&c->refs, 1, __ATOMIC_RELAXED);
    }
    return c;
}

void lm_tls_creds_unref(lm_tls_creds *c)
{
    if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    if (c->x509) {
        gnutls_certificate_free_credentials(c->x509);
    }
    if (c->psk_server) {
        gnutls_psk_free_server_credentials(c->psk_server);
    }
    if (c->psk_client) {
        gnutls_psk_free_client_credentials(c->psk_client);
    }
    free(c);
}

lm_tls_endpoint lm_tls_creds_endpoint(const lm_tls_creds *c)
{
    return c->endpoint;
}

/* ---- authorization ---- */

struct lm_authz {
    int refs;
    lm_authz_policy def;
    size_t n;
    struct {
        char *match;
        lm_authz_policy policy;
        lm_authz_format format;
    } rules[];
};

int lm_authz_list_new(const lm_authz_rule *rules, size_t nrules, lm_authz_policy def,
                      lm_authz **out, lm_error *err)
{
    *out = NULL;
    lm_authz *a = calloc(1, sizeof(*a) + nrules * sizeof(a->rules[0]));
    if (!a) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    a->refs = 1;
    a->def = def;
    for (size_t i = 0; i < nrules; i++) {
        a->rules[i].match = strdup(rules[i].match ? rules[i].match : "");
        a->rules[i].policy = rules[i].policy;
        a->rules[i].format = rules[i].format;
        a->n = i + 1;
        if (!a->rules[i].match) {
            lm_authz_unref(a);
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
    }
    *out = a;
    return 0;
}

int lm_authz_simple_new(const char *identity, lm_authz **out, lm_error *err)
{
    lm_authz_rule r = { identity, LM_AUTHZ_ALLOW, LM_AUTHZ_EXACT };
    return lm_authz_list_new(&r, 1, LM_AUTHZ_DENY, out, err);
}

bool lm_authz_is_allowed(const lm_authz *a, const char *identity)
{
    for (size_t i = 0; i < a->n; i++) {
        bool hit = a->rules[i].format == LM_AUTHZ_GLOB ? fnmatch(a->rules[i].match, identity, 0) == 0
                                                       : strcmp(a->rules[i].match, identity) == 0;
        if (hit) {
            return a->rules[i].policy == LM_AUTHZ_ALLOW;
        }
    }
    return a->def == LM_AUTHZ_ALLOW;
}

lm_authz *lm_authz_ref(lm_authz *a)
{
    if (a) {
        __atomic_fetch_add(&a->refs, 1, __ATOMIC_RELAXED);
    }
    return a;
}

void lm_authz_unref(lm_authz *a)
{
    if (!a || __atomic_sub_fetch(&a->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    for (size_t i = 0; i < a->n; i++) {
        free(a->rules[i].match);
    }
    free(a);
}
