/*
 * Engine API: creation, registration, starting and cancelling migrations,
 * and query-migrate's snapshot.  The migration itself runs in
 * migration.c (source) and incoming.c (destination).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "channel/tls.h"
#include "channel/zerocopy.h"
#include "common/abi.h"
#include "common/clock.h"
#include "common/util.h"
#include "core/dirtylimit.h"
#include "core/dirtyrate.h"
#include "core/engine_internal.h"
#include "postcopy/dest.h"
#include "ram/multifd.h"

lm_engine *lm_engine_new(const lm_callbacks *cb, void *opaque, lm_error *err)
{
    lm_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cond, NULL);
    lm_thread_list_init(&e->threads);
    if (cb) {
        /* A caller built against an older layout: what it does not know
         * stays NULL. */
        size_t n = lm_abi_size(cb->struct_size, LM_ABI_END(lm_callbacks, incoming_done),
                               sizeof(lm_callbacks));
        memcpy(&e->cb, cb, n);
        e->cb.struct_size = n;
    }
    e->opaque = opaque;
    e->autostart = true;
    e->status = e->visible_status = LM_STATUS_NONE;
    lm_params_defaults(e);
    lm_ratelimit_init(&e->rl, e->params.max_bandwidth);
    lm_ratelimit_init(&e->pc_rl, e->params.max_postcopy_bandwidth);
    lm_history_init(&e->history);
    return e;
}

static void join_thread(lm_engine *e)
{
    pthread_mutex_lock(&e->lock);
    bool started = e->thread_started;
    e->thread_started = false;
    pthread_mutex_unlock(&e->lock);
    if (started) {
        pthread_join(e->thread, NULL);
    }
}

void lm_engine_join_thread(lm_engine *e)
{
    join_thread(e);
}

void lm_engine_free(lm_engine *e)
{
    if (!e) {
        return;
    }
    lm_engine_cancel(e, NULL);
    lm_dirtyrate_free(e);
    join_thread(e);
    lm_dirtylimit_free(e);
    for (size_t i = 0; i < e->nblocks; i++) {
        lm_ram_block_free(e->blocks[i]);
    }
    free(e->devs);
    lm_tls_config_free(e->tls);
    lm_ratelimit_destroy(&e->rl);
    lm_ratelimit_destroy(&e->pc_rl);
    lm_thread_list_destroy(&e->threads);
    lm_history_destroy(&e->history);
    pthread_cond_destroy(&e->cond);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

static int check_registration_open(lm_engine *e, lm_error *err)
{
    if (e->status != LM_STATUS_NONE || e->thread_started) {
        return lm_error_set(err, -EBUSY, "registration is closed once a migration has started");
    }
    return 0;
}

int lm_engine_add_ram(lm_engine *e, const lm_ram_desc *given, lm_ram_block **block_out,
                      lm_error *err)
{
    lm_ram_desc full = { 0 }, *desc = &full;
    memcpy(&full, given, lm_abi_size(given->struct_size, LM_ABI_END(lm_ram_desc, fd_offset),
                                     sizeof(full)));
    pthread_mutex_lock(&e->lock);
    int ret = check_registration_open(e, err);
    if (!ret && e->nblocks >= LM_MAX_RAM_BLOCKS) {
        ret = lm_error_set(err, -ENOSPC, "too many RAM blocks (at most %u)", LM_MAX_RAM_BLOCKS);
    }
    for (size_t i = 0; !ret && i < e->nblocks; i++) {
        if (desc->name && !strcmp(e->blocks[i]->name, desc->name)) {
            ret = lm_error_set(err, -EEXIST, "RAM block '%s' already registered", desc->name);
        }
    }
    lm_ram_block *b = NULL;
    if (!ret) {
        ret = lm_ram_block_new(desc, (uint32_t)e->nblocks, &b, err);
    }
    if (!ret) {
        e->blocks[e->nblocks++] = b;
        if (block_out) {
            *block_out = b;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

static int add_device(lm_engine *e, const lm_device_entry *d, lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    int ret = check_registration_open(e, err);
    if (!ret && (strlen(d->idstr) == 0 || !strcmp(d->idstr, LM_RAM_SECTION_IDSTR) ||
                 !strcmp(d->idstr, LM_GLOBALSTATE_IDSTR))) {
        ret = lm_error_set(err, -EINVAL, "invalid device id '%s'", d->idstr);
    }
    if (!ret && e->ndevs + 2 >= LM_MAX_SECTIONS) {
        ret = lm_error_set(err, -ENOSPC, "too many devices");
    }
    for (size_t i = 0; !ret && i < e->ndevs; i++) {
        if (!strcmp(e->devs[i].idstr, d->idstr) && e->devs[i].instance == d->instance) {
            ret = lm_error_set(err, -EEXIST, "device '%s' instance %u already registered", d->idstr,
                               d->instance);
        }
    }
    if (!ret) {
        lm_device_entry *n = realloc(e->devs, (e->ndevs + 1) * sizeof(*n));
        if (!n) {
            ret = lm_error_set(err, -ENOMEM, "out of memory");
        } else {
            e->devs = n;
            e->devs[e->ndevs] = *d;
            e->devs[e->ndevs].section_id = (uint32_t)e->ndevs + 1;
            e->ndevs++;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_engine_add_device(lm_engine *e, const char *idstr, uint32_t instance,
                         const lm_vmstate *vms, void *opaque, lm_error *err)
{
    lm_device_entry d = { .instance = instance, .vms = vms, .opaque = opaque };
    if (!idstr || strlen(idstr) >= sizeof(d.idstr) || !vms) {
        return lm_error_set(err, -EINVAL, "invalid device registration");
    }
    snprintf(d.idstr, sizeof(d.idstr), "%s", idstr);
    d.version = vms->version;
    return add_device(e, &d, err);
}

int lm_engine_add_iterative(lm_engine *e, const char *idstr, uint32_t instance, uint32_t version,
                            const lm_iter_ops *ops, void *opaque, lm_error *err)
{
    lm_device_entry d = { .instance = instance, .ops = ops, .version = version, .opaque = opaque };
    if (!idstr || strlen(idstr) >= sizeof(d.idstr) || !ops || !ops->load || !ops->save_complete ||
        !ops->query_pending) {
        return lm_error_set(err, -EINVAL,
                            "invalid iterative device registration (load, save_complete and "
                            "query_pending are required)");
    }
    snprintf(d.idstr, sizeof(d.idstr), "%s", idstr);
    return add_device(e, &d, err);
}

void lm_engine_set_uuid(lm_engine *e, const uint8_t uuid[16])
{
    pthread_mutex_lock(&e->lock);
    memcpy(e->uuid, uuid, LM_UUID_LEN);
    pthread_mutex_unlock(&e->lock);
}

void lm_engine_set_autostart(lm_engine *e, bool autostart)
{
    pthread_mutex_lock(&e->lock);
    e->autostart = autostart;
    pthread_mutex_unlock(&e->lock);
}

void lm_engine_set_tls_resolver(lm_engine *e, const lm_tls_resolver *r)
{
    pthread_mutex_lock(&e->lock);
    if (r) {
        e->tls_resolver = *r;
    } else {
        memset(&e->tls_resolver, 0, sizeof(e->tls_resolver));
    }
    pthread_mutex_unlock(&e->lock);
}

/* tls-creds / tls-authz / tls-hostname into the configuration every
 * connection of the migration about to start uses (*out NULL: no TLS). */
static int resolve_tls(lm_engine *e, bool incoming, lm_tls_config **out, lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    lm_params p = e->params;
    lm_tls_resolver r = e->tls_resolver;
    pthread_mutex_unlock(&e->lock);
    *out = NULL;
    if (!p.tls_creds[0]) {
        return 0;
    }
    lm_tls_creds *creds = r.creds ? r.creds(r.opaque, p.tls_creds) : NULL;
    if (!creds) {
        return lm_error_set(err, -ENOENT, "No TLS credentials with id '%s'", p.tls_creds);
    }
    lm_tls_endpoint want = incoming ? LM_TLS_ENDPOINT_SERVER : LM_TLS_ENDPOINT_CLIENT;
    if (lm_tls_creds_endpoint(creds) != want) {
        lm_tls_creds_unref(creds);
        return lm_error_set(err, -EINVAL, "Expecting TLS credentials with a %s endpoint",
                            incoming ? "server" : "client");
    }
    lm_authz *authz = NULL;
    if (incoming && p.tls_authz[0]) {
        authz = r.authz ? r.authz(r.opaque, p.tls_authz) : NULL;
        if (!authz) {
            lm_tls_creds_unref(creds);
            return lm_error_set(err, -ENOENT, "No authorization object with id '%s'", p.tls_authz);
        }
    }
    *out = lm_tls_config_new(creds, authz, p.tls_authz, p.tls_hostname);
    return *out ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}

/* Where QEMU refuses TLS, or where there is no peer to talk TLS with. */
static int check_tls(lm_engine *e, const char *uri, lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    bool tls = e->params.tls_creds[0] != '\0';
    bool mapped_ram = e->caps[LM_CAP_MAPPED_RAM], zero_copy = e->params.zero_copy_send;
    pthread_mutex_unlock(&e->lock);
    if (!tls) {
        return 0;
    }
    if (mapped_ram) {
        return lm_error_set(err, -EINVAL, "Cannot use TLS with mapped-ram");
    }
    if (zero_copy) {
        return lm_error_set(err, -EINVAL,
                            "Zero copy only available for non-compressed non-TLS multifd migration");
    }
    lm_uri u;
    int ret = lm_uri_parse(uri, &u, err);
    if (ret == 0 && (u.kind == LM_TRANSPORT_FILE || u.kind == LM_TRANSPORT_EXEC)) {
        ret = lm_error_set(err, -EINVAL,
                           "TLS (tls-creds) needs a socket transport (tcp:, unix:, or fd: of a "
                           "socket), not '%s': a file has no peer to authenticate", uri);
    }
    return ret;
}

/* Common start: checks no migration runs, joins the previous thread, resets
 * the per-migration state and moves to setup. */
static int begin(lm_engine *e, const char *uri, bool incoming, lm_error *err)
{
    lm_uri u;
    int ret = lm_uri_parse(uri, &u, err);
    if (ret == 0) {
        ret = check_tls(e, uri, err);
    }
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&e->lock);
    if (lm_state_is_active(e->status)) {
        pthread_mutex_unlock(&e->lock);
        return lm_error_set(err, -EBUSY, "There's a migration process in progress");
    }
    if (lm_dirtyrate_busy(e)) {
        pthread_mutex_unlock(&e->lock);
        return lm_error_set(err, -EBUSY, "the dirty rate is being measured (calc-dirty-rate); "
                                         "retry once query-dirty-rate says measured");
    }
    if (e->nblocks == 0) {
        pthread_mutex_unlock(&e->lock);
        return lm_error_set(err, -EINVAL, "no guest RAM registered");
    }
    pthread_mutex_unlock(&e->lock);
    lm_tls_config *tls;
    ret = resolve_tls(e, incoming, &tls, err);
    if (ret < 0) {
        return ret;
    }
    join_thread(e);

    pthread_mutex_lock(&e->lock);
    /* The previous migration's threads are gone: nobody uses its TLS. */
    lm_tls_config_free(e->tls);
    e->tls = tls;
    u.tls = tls;
    e->uri = u;
    e->incoming = incoming;
    e->cancel_requested = false;
    e->continue_requested = false;
    lm_ratelimit_abort(&e->rl, false);
    lm_ratelimit_abort(&e->pc_rl, false);
    e->guest_stopped_by_us = false;
    lm_error_clear(&e->error);
    memset(&e->stats, 0, sizeof(e->stats));
    e->stats.start_ns = lm_now_ns();
    e->socket_address[0] = '\0';
    e->dest_pages = e->dest_zero = e->dest_bytes = e->dest_multifd_bytes = 0;
    memset(&e->saver.stats, 0, sizeof(e->saver.stats));
    e->saver.dirty_bytes = 0;
    e->saver.total_bytes = 0;
    e->postcopy_started = false;
    e->postcopy_requested = false; /* a request belongs to one migration */
    e->resume_requested = false;
    e->pc_requests = e->pc_bytes = 0;
    e->bt_valid = false;
    e->sw_ack_pending = 0;
    e->sw_ack_armed = e->sw_ack_due = false;
    uint64_t start_ns = e->stats.start_ns;
    pthread_mutex_unlock(&e->lock);
    if (!incoming && lm_history_reset(&e->history, start_ns) < 0) {
        lm_warn("no memory for the migration's timeline: x-query-migration-history stays empty");
    }

    if (!lm_set_state_any(e, LM_STATUS_SETUP)) {
        return lm_error_set(err, -EBUSY, "cannot start a migration in state %s",
                            lm_status_name(e->status));
    }
    return 0;
}

static int spawn(lm_engine *e, void *(*fn)(void *), lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    int rc = pthread_create(&e->thread, NULL, fn, e);
    e->thread_started = rc == 0;
    pthread_mutex_unlock(&e->lock);
    if (rc) {
        lm_error failure = LM_ERROR_INIT;
        lm_error_set(&failure, -rc, "cannot create the migration thread");
        lm_engine_fail(e, &failure);
        lm_set_state_any(e, LM_STATUS_FAILED);
        return lm_error_set(err, -rc, "cannot create the migration thread");
    }
    return 0;
}

/* Features that open more than one connection need a socket transport.
 * Fills *u with the parsed URI. */
static int require_socket_uri(const char *uri, lm_uri *u, const char *feature, const char *why,
                              lm_error *err)
{
    int ret = lm_uri_parse(uri, u, err);
    if (ret == 0 && !lm_uri_multi_channel(u)) {
        ret = lm_error_set(err, -EINVAL, "%s needs a socket transport (unix: or tcp:)%s", feature, why);
    }
    return ret;
}

/* zero-copy-send: MSG_ZEROCOPY works on TCP sockets only, and only where
 * the kernel takes SO_ZEROCOPY.  Ask it now, on a throwaway socket of the
 * URI's family, so that `migrate` itself fails with the reason instead of
 * the migration thread a moment later. */
static int check_zero_copy_transport(const lm_uri *u, lm_error *err)
{
    if (u->kind == LM_TRANSPORT_UNIX) {
        int ret = lm_zerocopy_probe(AF_UNIX);
        if (ret < 0) {
            return lm_error_set(err, ret,
                                "zero-copy-send needs a tcp transport: the kernel does not "
                                "support SO_ZEROCOPY (MSG_ZEROCOPY) on unix sockets (%s)",
                                strerror(-ret));
        }
        return 0;
    }
    if (u->kind != LM_TRANSPORT_TCP) {
        return lm_error_set(err, -EINVAL, "zero-copy-send needs a tcp transport");
    }
    int ret = lm_zerocopy_probe(strchr(u->host, ':') ? AF_INET6 : AF_INET);
    if (ret == -EAFNOSUPPORT) {
        ret = lm_zerocopy_probe(AF_INET6);
    }
    if (ret < 0) {
        return lm_error_set(err, ret,
                            "zero-copy-send: the kernel refuses SO_ZEROCOPY on tcp sockets (%s)",
                            strerror(-ret));
    }
    return 0;
}

/* mapped-ram (QEMU's rules): pages at fixed offsets need a seekable file,
 * and every feature that changes how a page is sent, or sends it after the
 * guest ran elsewhere, is refused.  Fills *u with the parsed URI. */
static int check_mapped_ram(lm_engine *e, const char *uri, lm_uri *u, lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    bool postcopy = e->caps[LM_CAP_POSTCOPY_RAM], multifd = e->caps[LM_CAP_MULTIFD];
    bool compress = e->params.multifd_compression != LM_MULTIFD_COMP_NONE;
    bool zero_copy = e->params.zero_copy_send;
    pthread_mutex_unlock(&e->lock);
    int ret = lm_uri_parse(uri, u, err);
    if (ret < 0) {
        return ret;
    }
    if (u->kind != LM_TRANSPORT_FILE) {
        return lm_error_set(err, -EINVAL, "mapped-ram needs the file: transport (a seekable file), "
                            "not '%s'", uri);
    }
    if (postcopy) {
        return lm_error_set(err, -EINVAL, "mapped-ram is incompatible with postcopy-ram");
    }
    if (multifd && compress) {
        return lm_error_set(err, -EINVAL, "mapped-ram only works with multifd-compression none");
    }
    if (zero_copy) {
        return lm_error_set(err, -EINVAL, "mapped-ram is incompatible with zero-copy-send");
    }
    return 0;
}

/* migrate resume=true: hand the new address to the paused migration thread. */
static int resume_postcopy(lm_engine *e, const char *uri, lm_error *err)
{
    lm_uri u;
    int ret = require_socket_uri(uri, &u, "postcopy recovery", "", err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&e->lock);
    if (e->incoming || e->status != LM_STATUS_POSTCOPY_PAUSED) {
        ret = lm_error_set(err, -EINVAL, "Cannot resume if there is no paused migration (state %s)",
                           lm_status_name(e->status));
    } else {
        e->resume_uri = u;
        e->resume_uri.tls = e->tls; /* the recovery's connections run TLS too */
        e->resume_requested = true;
        pthread_cond_broadcast(&e->cond);
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_engine_migrate(lm_engine *e, const char *uri, bool resume, lm_error *err)
{
    if (resume) {
        return resume_postcopy(e, uri, err);
    }
    pthread_mutex_lock(&e->lock);
    bool inc = e->incoming && lm_state_is_active(e->status);
    bool postcopy = e->caps[LM_CAP_POSTCOPY_RAM], preempt = e->caps[LM_CAP_POSTCOPY_PREEMPT];
    bool multifd = e->caps[LM_CAP_MULTIFD], zero_copy = e->params.zero_copy_send;
    bool compress = e->params.multifd_compression != LM_MULTIFD_COMP_NONE;
    bool mapped_ram = e->caps[LM_CAP_MAPPED_RAM], checksum = e->caps[LM_CAP_X_CHECKSUM];
    pthread_mutex_unlock(&e->lock);
    if (inc) {
        return lm_error_set(err, -EBUSY, "Guest is waiting for an incoming migration");
    }
    lm_uri u;
    if (mapped_ram) {
        /* Multifd writes into the file itself: no extra connections. */
        int mr = check_mapped_ram(e, uri, &u, err);
        if (mr < 0) {
            return mr;
        }
        multifd = false;
    }
    if (preempt && !postcopy) {
        return lm_error_set(err, -EINVAL, "Postcopy preempt requires postcopy-ram");
    }
    if (zero_copy && !multifd) {
        return lm_error_set(err, -EINVAL, "zero-copy-send requires the multifd capability");
    }
    if (zero_copy && compress) {
        return lm_error_set(err, -EINVAL, "zero-copy-send does not work with multifd-compression");
    }
    /* Checksums hash what is written; the kernel reads zero-copy pages
     * later, and postcopy places pages without them. */
    if (checksum && (zero_copy || postcopy)) {
        return lm_error_set(err, -EINVAL, "x-checksum is incompatible with %s",
                            zero_copy ? "zero-copy-send" : "postcopy-ram");
    }
    int r = 0;
    if (multifd) {
        r = require_socket_uri(uri, &u, "multifd", " for its extra connections", err);
    }
    if (r == 0 && zero_copy) {
        r = check_zero_copy_transport(&u, err);
    }
    if (r == 0 && postcopy) {
        r = require_socket_uri(uri, &u, "postcopy-ram", " for its return path", err);
    }
    if (r == 0) {
        /* Refusals first: a refused migration must not leave a file behind. */
        r = check_tls(e, uri, err);
    }
    if (r == 0) {
        /* A file that cannot be written is the command's error (QEMU). */
        r = lm_uri_parse(uri, &u, err);
    }
    if (r == 0) {
        r = lm_transport_check_file(&u, err);
    }
    if (r < 0) {
        return r;
    }
    int ret = begin(e, uri, false, err);
    return ret < 0 ? ret : spawn(e, lm_migration_thread, err);
}

int lm_engine_incoming(lm_engine *e, const char *uri, lm_error *err)
{
    lm_uri u;
    if (lm_cap(e, LM_CAP_MAPPED_RAM)) {
        int mr = check_mapped_ram(e, uri, &u, err);
        if (mr < 0) {
            return mr;
        }
    }
    int ret = begin(e, uri, true, err);
    if (ret < 0) {
        return ret;
    }
    /* Listen now, so the caller can connect as soon as this returns and a
     * bad address fails the command itself. */
    lm_listener *l;
    lm_error lerr = LM_ERROR_INIT;
    ret = lm_transport_listen(&e->uri, &l, &lerr);
    if (ret < 0) {
        lm_engine_fail(e, &lerr);
        lm_set_state_any(e, LM_STATUS_FAILED);
        lm_error_propagate(err, &lerr);
        return ret;
    }
    pthread_mutex_lock(&e->lock);
    e->listener = l;
    snprintf(e->socket_address, sizeof(e->socket_address), "%s", lm_listener_address(l));
    pthread_mutex_unlock(&e->lock);
    return spawn(e, lm_incoming_thread, err);
}

size_t lm_engine_migration_threads(lm_engine *e,
                                   void (*fn)(void *opaque, const char *name, int thread_id),
                                   void *opaque)
{
    return lm_thread_list_foreach(&e->threads, fn, opaque);
}

int lm_engine_cancel(lm_engine *e, lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    lm_status s = e->status;
    bool running = lm_state_is_active(s) && s != LM_STATUS_CANCELLING;
    if (running) {
        e->cancel_requested = true;
        if (e->ch) {
            lm_channel_shutdown(e->ch, -ECANCELED, "migration cancelled");
        }
        if (e->listener) {
            lm_listener_abort(e->listener);
        }
        if (e->ch_preempt) {
            lm_channel_shutdown(e->ch_preempt, -ECANCELED, "migration cancelled");
        }
        if (e->mf_src) {
            lm_multifd_src_shutdown(e->mf_src, -ECANCELED, "migration cancelled");
        }
        if (e->mf_dst) {
            lm_multifd_dst_cancel(e->mf_dst, -ECANCELED, "incoming migration cancelled");
        }
        lm_ratelimit_abort(&e->rl, true);
        lm_ratelimit_abort(&e->pc_rl, true);
        pthread_cond_broadcast(&e->cond);
    }
    pthread_mutex_unlock(&e->lock);
    if (running && !e->incoming && !lm_status_is_postcopy(s)) {
        lm_set_state(e, s, LM_STATUS_CANCELLING);
    }
    (void)err;
    return 0; /* like QEMU: cancelling nothing is not an error */
}

int lm_engine_start_postcopy(lm_engine *e, lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    int ret = 0;
    if (!e->caps[LM_CAP_POSTCOPY_RAM]) {
        ret = lm_error_set(err, -EINVAL, "Enable postcopy with migrate_set_capability before "
                           "the start of migration");
    } else if (e->incoming && lm_state_is_active(e->status)) {
        ret = lm_error_set(err, -EINVAL, "migrate-start-postcopy is for the source");
    } else if (e->status == LM_STATUS_NONE) {
        /* QEMU's rule: a request belongs to a migration, never to the next. */
        ret = lm_error_set(err, -EINVAL, "Postcopy must be started after migration has been "
                           "started");
    } else if (!lm_state_is_active(e->status) || e->status == LM_STATUS_CANCELLING) {
        ret = lm_error_set(err, -EINVAL, "migrate-start-postcopy: no migration is in progress "
                           "(state %s)", lm_status_name(e->status));
    } else if (lm_status_is_postcopy(e->status) || e->status == LM_STATUS_DEVICE ||
               e->status == LM_STATUS_POSTCOPY_DEVICE) {
        ret = lm_error_set(err, -EINVAL, "Postcopy already started or switching over (state %s)",
                           lm_status_name(e->status));
    } else {
        e->postcopy_requested = true;
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_engine_pause(lm_engine *e, lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    int ret = 0;
    /* The destination may also be kicked out of postcopy-recover-setup
     * (listening, maybe for a peer that never comes): migrate-recover can
     * then be issued again. */
    bool listening = e->incoming && e->status == LM_STATUS_POSTCOPY_RECOVER_SETUP;
    if (e->status != LM_STATUS_POSTCOPY_ACTIVE && e->status != LM_STATUS_POSTCOPY_RECOVER &&
        !listening) {
        ret = lm_error_set(err, -EINVAL, "migrate-pause is currently only supported during "
                           "postcopy-active, postcopy-recover-setup (destination) or "
                           "postcopy-recover state");
    } else {
        lm_listener *l = e->recover_listener ? e->recover_listener : e->listener;
        if (listening && l) {
            lm_listener_abort(l);
        }
        /* Both connections share the fate of their sockets: shutting them
         * down pauses both sides, as a network failure would. */
        if (e->ch) {
            lm_channel_shutdown(e->ch, -EIO, "paused by migrate-pause");
        }
        if (e->ch_preempt) {
            lm_channel_shutdown(e->ch_preempt, -EIO, "paused by migrate-pause");
        }
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_engine_recover(lm_engine *e, const char *uri, lm_error *err)
{
    lm_uri u;
    int ret = require_socket_uri(uri, &u, "postcopy recovery", "", err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&e->lock);
    bool ok = e->incoming && e->status == LM_STATUS_POSTCOPY_PAUSED && !e->recover_listener;
    lm_status st = e->status;
    pthread_mutex_unlock(&e->lock);
    if (!ok) {
        return lm_error_set(err, -EINVAL, "Migrate recover can only be run when postcopy is paused "
                            "(state %s)", lm_status_name(st));
    }
    pthread_mutex_lock(&e->lock);
    u.tls = e->tls; /* the recovery's connections run TLS too */
    pthread_mutex_unlock(&e->lock);
    lm_listener *l;
    ret = lm_transport_listen(&u, &l, err);
    if (ret < 0) {
        return ret;
    }
    if (!lm_set_state(e, LM_STATUS_POSTCOPY_PAUSED, LM_STATUS_POSTCOPY_RECOVER_SETUP)) {
        lm_listener_close(l);
        return lm_error_set(err, -EBUSY, "the migration left postcopy-paused meanwhile");
    }
    pthread_mutex_lock(&e->lock);
    e->recover_listener = l;
    snprintf(e->socket_address, sizeof(e->socket_address), "%s", lm_listener_address(l));
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int lm_engine_set_vcpu_thread(lm_engine *e, unsigned index, int tid, lm_error *err)
{
    if (index >= LM_MAX_VCPUS) {
        return lm_error_set(err, -EINVAL, "vCPU index %u out of range (at most %d vCPUs)", index,
                            LM_MAX_VCPUS);
    }
    pthread_mutex_lock(&e->lock);
    e->vcpu_tids[index] = tid;
    if (index >= e->nvcpus) {
        e->nvcpus = index + 1;
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int lm_engine_continue(lm_engine *e, const char *state, lm_error *err)
{
    lm_status want = LM_STATUS_PRE_SWITCHOVER;
    if (!state || strcmp(state, lm_status_name(want))) {
        return lm_error_set(err, -EINVAL, "Migration can only be continued from '%s', not '%s'",
                            lm_status_name(want), state ? state : "(null)");
    }
    pthread_mutex_lock(&e->lock);
    int ret = 0;
    if (e->status != want) {
        ret = lm_error_set(err, -EINVAL, "Migration not in expected state: %s",
                           lm_status_name(e->status));
    } else {
        e->continue_requested = true;
        pthread_cond_broadcast(&e->cond);
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

void lm_engine_wake_main(lm_engine *e, int code, const char *why)
{
    pthread_mutex_lock(&e->lock);
    if (e->ch) {
        lm_channel_shutdown(e->ch, code, why);
    }
    pthread_mutex_unlock(&e->lock);
}

bool lm_engine_is_incoming(lm_engine *e)
{
    pthread_mutex_lock(&e->lock);
    bool inc = e->incoming && lm_state_is_active(e->status);
    pthread_mutex_unlock(&e->lock);
    return inc;
}

/* ---- query-migrate ---- */

static uint64_t ms_since(uint64_t from_ns, uint64_t to_ns)
{
    return to_ns > from_ns ? (to_ns - from_ns) / 1000000ull : 0;
}

static void export_parts(const lm_bd *b, lm_downtime_part *out, unsigned *n)
{
    *n = b->n < LM_DOWNTIME_PARTS_MAX ? b->n : LM_DOWNTIME_PARTS_MAX;
    for (unsigned i = 0; i < *n; i++) {
        snprintf(out[i].name, sizeof(out[i].name), "%s", b->part[i].name);
        /* Rounded to the nearest µs: the parts still add up to the total
         * within one µs each. */
        out[i].us = (b->part[i].ns + 500) / 1000;
    }
}

static void breakdown_export(const lm_stats *st, lm_downtime_breakdown *out)
{
    out->downtime_us = (st->downtime_ns + 500) / 1000;
    out->expected_us = (st->bd_expected_ns + 500) / 1000;
    out->fixed_us = (st->bd_fixed_ns + 500) / 1000;
    export_parts(&st->bd, out->parts, &out->nparts);
    export_parts(&st->bd_dst, out->dest, &out->ndest);
    /* The prediction's terms, to set beside the parts they predicted. */
    const lm_bd_fixed *f = &st->bd_expected_parts;
    const struct {
        const char *name;
        uint64_t ns;
    } terms[] = { { "stop", f->stop_ns }, { "sync", f->sync_ns }, { "round-trip", f->rtt_ns },
                  { "rest", f->rest_ns }, { "tail", f->tail_ns },
                  { "bytes", st->bd_expected_bytes_ns } };
    out->nexpected = 0;
    for (size_t i = 0; st->bd_expected_ns && i < sizeof(terms) / sizeof(terms[0]); i++) {
        lm_downtime_part *p = &out->expected[out->nexpected++];
        snprintf(p->name, sizeof(p->name), "%s", terms[i].name);
        p->us = (terms[i].ns + 500) / 1000;
    }
}

static void query_all(lm_engine *e, lm_info *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&e->lock);
    const lm_stats *st = &e->stats;
    uint64_t now = lm_now_ns();
    uint64_t end = st->end_ns ? st->end_ns : now;
    out->status = e->visible_status;
    out->incoming = e->incoming;
    out->has_stats = st->start_ns != 0;
    out->total_time_ms = out->has_stats ? ms_since(st->start_ns, end) : 0;
    out->setup_time_ms = st->setup_ns / 1000000ull;
    out->downtime_ms = st->downtime_ns / 1000000ull;
    out->dirty_sync_count = st->passes;
    out->dirty_pages_rate = st->dirty_pages_rate;
    out->cpu_throttle_percentage = st->throttle_percent;
    out->precopy_bytes = st->precopy_bytes;
    out->downtime_bytes = st->downtime_bytes;
    out->device_bytes = st->device_bytes;
    out->pages_per_second = st->pages_per_second;
    snprintf(out->dirty_tracker, sizeof(out->dirty_tracker), "%s", st->dirty_tracker);
    snprintf(out->error_desc, sizeof(out->error_desc), "%s", e->error.msg);
    snprintf(out->socket_address, sizeof(out->socket_address), "%s", e->socket_address);
    out->ram_page_size = e->nblocks ? e->blocks[0]->page_size : 4096;
    for (size_t i = 0; i < e->nblocks; i++) {
        out->ram_total += e->blocks[i]->size;
    }
    uint64_t elapsed_ms = out->total_time_ms ? out->total_time_ms : 1;
    out->postcopy_requests = __atomic_load_n(&e->pc_requests, __ATOMIC_RELAXED);
    out->postcopy_bytes = __atomic_load_n(&e->pc_bytes, __ATOMIC_RELAXED);
    if (e->incoming && e->pc_dst) {
        lm_pc_dst_blocktime(e->pc_dst, out);
    } else if (e->incoming && e->bt_valid) {
        out->has_blocktime = true;
        out->postcopy_blocktime_ms = e->bt_total_ms;
        out->nvcpus = e->bt_nvcpus;
        memcpy(out->vcpu_blocktime_ms, e->bt_vcpu_ms, sizeof(out->vcpu_blocktime_ms));
    }
    if (e->incoming) {
        out->switchover_ack_pending = e->sw_ack_pending;
        out->ram_normal = e->dest_pages;
        out->ram_duplicate = e->dest_zero;
        out->ram_normal_bytes = e->dest_pages * out->ram_page_size;
        out->ram_transferred = e->dest_bytes;
        out->multifd_bytes = e->dest_multifd_bytes;
        if (e->mf_dst) {
            uint64_t pages, zero, bytes;
            lm_multifd_dst_stats(e->mf_dst, &pages, &zero, &bytes);
            out->ram_normal += pages;
            out->ram_duplicate += zero;
            out->ram_normal_bytes += pages * out->ram_page_size;
            out->multifd_bytes += bytes;
        }
    } else {
        const lm_ram_stats *rs = &e->saver.stats;
        out->ram_normal = __atomic_load_n(&rs->normal_pages, __ATOMIC_RELAXED);
        out->ram_duplicate = __atomic_load_n(&rs->zero_pages, __ATOMIC_RELAXED);
        out->ram_normal_bytes = __atomic_load_n(&rs->normal_bytes, __ATOMIC_RELAXED);
        out->multifd_bytes = st->multifd_bytes;
        out->dirty_sync_missed_zero_copy = st->zc_missed;
        out->zero_copy_sends = st->zc_sends;
        out->zero_copy_copied = st->zc_copied;
        if (e->mf_src) {
            out->multifd_bytes = lm_multifd_src_bytes(e->mf_src);
            out->dirty_sync_missed_zero_copy = lm_multifd_src_zc_missed(e->mf_src);
            lm_multifd_src_zc_stats(e->mf_src, &out->zero_copy_sends, &out->zero_copy_copied);
        }
        /* Before the switch the main and multifd channels carry everything;
         * from the switch on, what postcopy sent (main and preempt channels)
         * counts on top of what precopy and the blackout moved. */
        bool switched = st->downtime_ns != 0 || out->postcopy_bytes != 0;
        if (e->ch && lm_state_is_active(e->status) && !switched) {
            out->ram_transferred = lm_channel_bytes_written(e->ch) + out->multifd_bytes;
        } else {
            out->ram_transferred = lm_sat_add(lm_sat_add(st->precopy_bytes, st->downtime_bytes),
                                              out->postcopy_bytes);
        }
        /* In setup the migration thread is still initialising the saver
         * (TSan saw that race): nothing is pending until it is active. */
        bool running = lm_state_is_active(e->status) && e->status != LM_STATUS_SETUP;
        out->ram_remaining = running ? lm_ram_save_pending(&e->saver) : 0;
        /* Expected downtime and system-wide remaining, on demand, from the
         * same numbers the switchover decision uses (seed 004). */
        uint64_t remaining = running ? lm_sat_add(out->ram_remaining, st->pending_devices) : 0;
        out->remaining = remaining;
        /* expected-downtime is computed once per dirty sync (QEMU), by the
         * migration thread: see docs/architecture.md, convergence. */
        if (running && st->expected_downtime_ns) {
            out->expected_downtime_ms = (st->expected_downtime_ns + 500000) / 1000000;
        } else if (running) {
            out->expected_downtime_ms = e->params.downtime_limit;
        }
        out->switchover_bandwidth = st->switchover_bw;
        out->destination_backlog = st->dest_backlog;
        out->destination_drains = st->drains;
        out->destination_load_rate = st->dest_load_bw;
        out->switchover_ack_waiting = st->sw_ack_waiting;
        out->switchover_acked = st->sw_acked;
        if (st->has_breakdown) {
            breakdown_export(st, &out->downtime_breakdown);
            out->has_downtime_breakdown = true;
        }
        out->convergence = st->convergence;
    }
    out->mbps = (double)out->ram_transferred * 8.0 / 1e6 / ((double)elapsed_ms / 1000.0);
    bool outgoing = !e->incoming;
    pthread_mutex_unlock(&e->lock);
    if (outgoing) {
        /* Their own lock, not the engine's (dirtylimit.c). */
        out->dirty_limit_active = lm_dirtylimit_migration_owned(e);
        out->dirty_limit_throttle_time_per_round = lm_dirtylimit_throttle_us_per_round(e);
    }
}

void lm_engine_query(lm_engine *e, lm_info *out)
{
    /* Filled whole, then copied as far as the caller's layout goes. */
    size_t n = lm_abi_size(out->struct_size, LM_ABI_END(lm_info, destination_drains), sizeof(lm_info));
    lm_info *all = malloc(sizeof(*all));
    if (!all) {
        memset(out, 0, n);
        out->struct_size = 0;
        return;
    }
    query_all(e, all);
    memcpy(out, all, n);
    out->struct_size = n;
    free(all);
}

/* ---- x-query-migration-history, switchover-ack ---- */

size_t lm_engine_query_history(lm_engine *e, lm_pass_record *out, size_t max, lm_history_info *info)
{
    return lm_history_read(&e->history, out, max, info);
}

int lm_engine_approve_switchover(lm_engine *e, lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    int ret = 0;
    if (!e->sw_ack_armed || e->sw_ack_pending == 0) {
        ret = lm_error_set(err, -EINVAL, "no switchover approval is outstanding");
    } else if (--e->sw_ack_pending == 0) {
        /* The load thread sends it between records: it owns the writes. */
        e->sw_ack_due = true;
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

bool lm_engine_switchover_ack(lm_engine *e)
{
    return lm_cap(e, LM_CAP_SWITCHOVER_ACK);
}
