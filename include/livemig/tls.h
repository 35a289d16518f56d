/*
 * TLS for migration connections: credentials and authorization objects
 * (QEMU's tls-creds-x509, tls-creds-psk, authz-simple, authz-list), and
 * how an engine finds the ones its tls-creds / tls-authz parameters name.
 *
 * The objects are reference counted and immutable once made, so a
 * migration keeps using the ones it started with even if the embedder
 * deletes them (QMP object-del) meanwhile.  Who owns the names is the
 * embedder's business (livemig-vm keeps a registry of QMP objects); the
 * engine only asks, through an lm_tls_resolver, when a migration starts.
 */
#ifndef LIVEMIG_TLS_H
#define LIVEMIG_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "livemig/engine.h"
#include "livemig/error.h"

typedef enum lm_tls_endpoint {
    LM_TLS_ENDPOINT_CLIENT, /* the source: it connects */
    LM_TLS_ENDPOINT_SERVER, /* the destination: it listens */
} lm_tls_endpoint;

typedef struct lm_tls_creds lm_tls_creds;

/* tls-creds-x509: dir holds ca-cert.pem, and server-cert.pem +
 * server-key.pem (server) or, optionally, client-cert.pem + client-key.pem
 * (client); ca-crl.pem when present.  verify_peer: check the peer's
 * certificate (a server then requires one from the client).  priority:
 * a GnuTLS priority string, NULL for the default.  Like QEMU, refuses
 * certificates that are expired or not yet active when it loads them. */
int lm_tls_creds_x509_new(const char *dir, lm_tls_endpoint endpoint, bool verify_peer,
                          const char *priority, lm_tls_creds **out, lm_error *err);
/* tls-creds-psk: dir holds keys.psk, lines of "username:hexkey".  A
 * client uses the key of `username` (NULL: "qemu", QEMU's default). */
int lm_tls_creds_psk_new(const char *dir, const char *username, lm_tls_endpoint endpoint,
                         const char *priority, lm_tls_creds **out, lm_error *err);
lm_tls_creds *lm_tls_creds_ref(lm_tls_creds *c);
void lm_tls_creds_unref(lm_tls_creds *c);
lm_tls_endpoint lm_tls_creds_endpoint(const lm_tls_creds *c);

/* Authorization of the client's identity: its certificate's distinguished
 * name (RFC 4514, as `certtool -i` prints "Subject:"), or its PSK username. */
typedef struct lm_authz lm_authz;

typedef enum lm_authz_policy { LM_AUTHZ_DENY, LM_AUTHZ_ALLOW } lm_authz_policy;
typedef enum lm_authz_format { LM_AUTHZ_EXACT, LM_AUTHZ_GLOB } lm_authz_format;

typedef struct lm_authz_rule {
    const char *match;
    lm_authz_policy policy;
    lm_authz_format format;
} lm_authz_rule;

/* authz-simple: exactly one identity is allowed. */
int lm_authz_simple_new(const char *identity, lm_authz **out, lm_error *err);
/* authz-list: the first rule that matches decides; none: `def`. */
int lm_authz_list_new(const lm_authz_rule *rules, size_t nrules, lm_authz_policy def,
                      lm_authz **out, lm_error *err);
bool lm_authz_is_allowed(const lm_authz *a, const char *identity);
lm_authz *lm_authz_ref(lm_authz *a);
void lm_authz_unref(lm_authz *a);

/* How an engine turns the ids in tls-creds / tls-authz into objects: each
 * returns a new reference, or NULL when no object of that kind has the id. */
typedef struct lm_tls_resolver {
    lm_tls_creds *(*creds)(void *opaque, const char *id);
    lm_authz *(*authz)(void *opaque, const char *id);
    void *opaque;
} lm_tls_resolver;

/* Without a resolver, a non-empty tls-creds fails the migration. */
void lm_engine_set_tls_resolver(lm_engine *e, const lm_tls_resolver *r);

#endif
