/* TLS module internals shared by tls_creds.c (objects) and tls.c (sessions). */
#ifndef LM_CHANNEL_TLS_INTERNAL_H
#define LM_CHANNEL_TLS_INTERNAL_H

#include <stdbool.h>

#include <gnutls/gnutls.h>

#include "channel/tls.h"

struct lm_tls_creds {
    int refs;
    lm_tls_endpoint endpoint;
    bool verify_peer; /* x509 */
    bool psk;
    char priority[256];
    char username[256]; /* psk client */
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_psk_client_credentials_t psk_client;
};

#endif
