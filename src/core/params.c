/*
 * Capabilities and parameters, by QEMU's names (qapi/migration.json).
 * Both are per-engine and may only change while no migration runs, except
 * the parameters QEMU also lets change mid-migration (bandwidth, downtime).
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "core/engine_internal.h"

static const char *const cap_names[LM_CAP__COUNT + 1] = {
    [LM_CAP_EVENTS] = "events",
    [LM_CAP_PAUSE_BEFORE_SWITCHOVER] = "pause-before-switchover",
    [LM_CAP_VALIDATE_UUID] = "validate-uuid",
    [LM_CAP_AUTO_CONVERGE] = "auto-converge",
    [LM_CAP_RETURN_PATH] = "return-path",
    [LM_CAP_POSTCOPY_RAM] = "postcopy-ram",
    [LM_CAP_POSTCOPY_PREEMPT] = "postcopy-preempt",
    [LM_CAP_POSTCOPY_BLOCKTIME] = "postcopy-blocktime",
    [LM_CAP_MULTIFD] = "multifd",
    [LM_CAP_ZERO_COPY_SEND] = "zero-copy-send",
    [LM_CAP_MAPPED_RAM] = "mapped-ram",
    [LM_CAP_X_CHECKSUM] = "x-checksum",
    [LM_CAP_DIRTY_LIMIT] = "dirty-limit",
    [LM_CAP_X_AUTO_POSTCOPY] = "x-auto-postcopy",
    [LM_CAP_SWITCHOVER_ACK] = "switchover-ack",
    [LM_CAP__COUNT] = NULL,
};

const char *const *lm_capability_names(void)
{
    return cap_names;
}

static const char *const tracker_choices[] = { "auto", "uffd-wp", "manual", "dirty-log", NULL };
static const char *const compression_choices[] = { "none", "zstd", NULL };
static const char *const zero_choices[] = { "none", "legacy", "multifd", NULL };

enum param_id {
    P_MAX_BANDWIDTH,
    P_DOWNTIME_LIMIT,
    P_AVAIL_SWITCHOVER_BANDWIDTH,
    P_THROTTLE_TRIGGER_THRESHOLD,
    P_CPU_THROTTLE_INITIAL,
    P_CPU_THROTTLE_INCREMENT,
    P_MAX_CPU_THROTTLE,
    P_CPU_THROTTLE_TAILSLOW,
    P_X_VMDESC,
    P_X_DIRTY_TRACKER,
    P_MAX_POSTCOPY_BANDWIDTH,
    P_MULTIFD_CHANNELS,
    P_MULTIFD_COMPRESSION,
    P_MULTIFD_ZSTD_LEVEL,
    P_ZERO_PAGE_DETECTION,
    P_ZERO_COPY_SEND,
    P_TLS_CREDS,
    P_TLS_HOSTNAME,
    P_TLS_AUTHZ,
    P_X_HANDSHAKE_TIMEOUT,
    P_X_VCPU_DIRTY_LIMIT_PERIOD,
    P_VCPU_DIRTY_LIMIT,
    P_X_AUTO_POSTCOPY_PASSES,
    P_X_AUTO_POSTCOPY_TIME,
    P_X_DIRTY_HOT_GROUPS,
    P__COUNT
};

static const lm_param_desc param_descs[P__COUNT + 1] = {
    [P_MAX_BANDWIDTH] = { "max-bandwidth", LM_PARAM_U64, 0, INT64_MAX, NULL },
    [P_DOWNTIME_LIMIT] = { "downtime-limit", LM_PARAM_U64, 0, 2000000, NULL },
    [P_AVAIL_SWITCHOVER_BANDWIDTH] = { "avail-switchover-bandwidth", LM_PARAM_U64, 0, INT64_MAX, NULL },
    [P_THROTTLE_TRIGGER_THRESHOLD] = { "throttle-trigger-threshold", LM_PARAM_U64, 1, 100, NULL },
    [P_CPU_THROTTLE_INITIAL] = { "cpu-throttle-initial", LM_PARAM_U64, 1, 99, NULL },
    [P_CPU_THROTTLE_INCREMENT] = { "cpu-throttle-increment", LM_PARAM_U64, 1, 99, NULL },
    [P_MAX_CPU_THROTTLE] = { "max-cpu-throttle", LM_PARAM_U64, 1, 99, NULL },
    [P_CPU_THROTTLE_TAILSLOW] = { "cpu-throttle-tailslow", LM_PARAM_BOOL, 0, 1, NULL },
    [P_X_VMDESC] = { "x-vmdesc", LM_PARAM_BOOL, 0, 1, NULL },
    [P_X_DIRTY_TRACKER] = { "x-dirty-tracker", LM_PARAM_STR, 0, 0, tracker_choices },
    [P_MAX_POSTCOPY_BANDWIDTH] = { "max-postcopy-bandwidth", LM_PARAM_U64, 0, INT64_MAX, NULL },
    [P_MULTIFD_CHANNELS] = { "multifd-channels", LM_PARAM_U64, 1, 64, NULL },
    [P_MULTIFD_COMPRESSION] = { "multifd-compression", LM_PARAM_STR, 0, 0, compression_choices },
    [P_MULTIFD_ZSTD_LEVEL] = { "multifd-zstd-level", LM_PARAM_U64, 0, 20, NULL },
    [P_ZERO_PAGE_DETECTION] = { "zero-page-detection", LM_PARAM_STR, 0, 0, zero_choices },
    [P_ZERO_COPY_SEND] = { "zero-copy-send", LM_PARAM_BOOL, 0, 1, NULL },
    [P_TLS_CREDS] = { "tls-creds", LM_PARAM_STR, 0, 0, NULL },
    [P_TLS_HOSTNAME] = { "tls-hostname", LM_PARAM_STR, 0, 0, NULL },
    [P_TLS_AUTHZ] = { "tls-authz", LM_PARAM_STR, 0, 0, NULL },
    [P_X_HANDSHAKE_TIMEOUT] = { "x-handshake-timeout", LM_PARAM_U64, 1, 3600000, NULL },
    /* QEMU's bounds: the period 1..1000 ms, the limit at least 1 MB/s. */
    [P_X_VCPU_DIRTY_LIMIT_PERIOD] = { "x-vcpu-dirty-limit-period", LM_PARAM_U64, 1, 1000, NULL },
    [P_VCPU_DIRTY_LIMIT] = { "vcpu-dirty-limit", LM_PARAM_U64, 1, INT64_MAX >> 21, NULL },
    [P_X_AUTO_POSTCOPY_PASSES] = { "x-auto-postcopy-passes", LM_PARAM_U64, 1, 1000, NULL },
    [P_X_AUTO_POSTCOPY_TIME] = { "x-auto-postcopy-time", LM_PARAM_U64, 0, 86400000, NULL },
    [P_X_DIRTY_HOT_GROUPS] = { "x-dirty-hot-groups", LM_PARAM_BOOL, 0, 1, NULL },
    [P__COUNT] = { NULL, 0, 0, 0, NULL },
};

const lm_param_desc *lm_param_descs(void)
{
    return param_descs;
}

void lm_params_defaults(lm_engine *e)
{
    lm_params *p = &e->params;
    memset(p, 0, sizeof(*p));
    p->max_bandwidth = 0; /* unlimited (QEMU's default is 128 MiB/s) */
    p->downtime_limit = 300;
    p->throttle_trigger_threshold = 50;
    p->cpu_throttle_initial = 20;
    p->cpu_throttle_increment = 10;
    p->max_cpu_throttle = 99;
    snprintf(p->x_dirty_tracker, sizeof(p->x_dirty_tracker), "auto");
    p->multifd_channels = 2;
    snprintf(p->multifd_compression, sizeof(p->multifd_compression), "none");
    p->multifd_zstd_level = 1;
    snprintf(p->zero_page_detection, sizeof(p->zero_page_detection), "multifd");
    p->x_handshake_timeout = 30000;
    p->x_vcpu_dirty_limit_period = 1000; /* QEMU's defaults */
    p->vcpu_dirty_limit = 1;
    p->x_auto_postcopy_passes = 3;
    p->x_auto_postcopy_time = 0;
    /* Opt-in.  With pages protected when they are sent, a write to a page
     * not yet sent is free already; hot groups then saved the guest less
     * than their re-sends cost (bench/live-dirty-results.md: 1 GiB guests
     * converged later with them on).  When on, the migration retires them
     * once a throttle works or what remains stops shrinking (dirty.h). */
    p->x_dirty_hot_groups = false;
    memset(e->caps, 0, sizeof(e->caps));
    e->caps[LM_CAP_RETURN_PATH] = true; /* see docs/architecture.md: confirms the load */
}

bool lm_cap(lm_engine *e, enum lm_capability c)
{
    pthread_mutex_lock(&e->lock);
    bool on = e->caps[c];
    pthread_mutex_unlock(&e->lock);
    return on;
}

/* Capabilities and most parameters are fixed while a migration runs.  A
 * destination still waiting for its first connection has not begun (QEMU
 * lets `-incoming URI` be followed by migrate-set-capabilities; its own
 * tests rely on it).  Called with e->lock held. */
static bool migration_locks_settings(const lm_engine *e)
{
    if (e->incoming && e->status == LM_STATUS_SETUP && !e->ch) {
        return false;
    }
    return lm_state_is_active(e->status);
}

static int find_cap(const char *name, lm_error *err)
{
    for (int i = 0; i < LM_CAP__COUNT; i++) {
        if (!strcmp(cap_names[i], name)) {
            return i;
        }
    }
    return lm_error_set(err, -ENOENT, "Capability '%s' not found", name);
}

/* Combinations QEMU refuses when they are set (migrate_caps_check), not
 * only at `migrate`. */
static int check_caps(const bool *caps, lm_error *err)
{
    if (caps[LM_CAP_POSTCOPY_PREEMPT] && !caps[LM_CAP_POSTCOPY_RAM]) {
        return lm_error_set(err, -EINVAL, "Postcopy preempt requires postcopy-ram");
    }
    if (caps[LM_CAP_ZERO_COPY_SEND] && !caps[LM_CAP_MULTIFD]) {
        return lm_error_set(err, -EINVAL, "zero-copy-send requires the multifd capability");
    }
    if (caps[LM_CAP_SWITCHOVER_ACK] && !caps[LM_CAP_RETURN_PATH]) {
        return lm_error_set(err, -EINVAL, "Capability 'switchover-ack' requires capability "
                            "'return-path'");
    }
    if (caps[LM_CAP_MAPPED_RAM] && caps[LM_CAP_POSTCOPY_RAM]) {
        return lm_error_set(err, -EINVAL, "mapped-ram is incompatible with postcopy-ram");
    }
    if (caps[LM_CAP_DIRTY_LIMIT] && caps[LM_CAP_AUTO_CONVERGE]) {
        return lm_error_set(err, -EINVAL, "dirty-limit conflicts with auto-converge, "
                                          "either of them available currently");
    }
    return 0;
}

int lm_engine_set_capability(lm_engine *e, const char *name, bool on, lm_error *err)
{
    int c = find_cap(name, err);
    if (c < 0) {
        return c;
    }
    pthread_mutex_lock(&e->lock);
    int ret = 0;
    if (migration_locks_settings(e)) {
        ret = lm_error_set(err, -EBUSY, "There's a migration process in progress");
    } else {
        bool next[LM_CAP__COUNT];
        memcpy(next, e->caps, sizeof(next));
        next[c] = on;
        ret = check_caps(next, err);
    }
    if (ret == 0) {
        e->caps[c] = on;
        if (c == LM_CAP_ZERO_COPY_SEND) {
            /* QEMU made zero-copy-send a capability; it began as a
             * parameter, which livemig keeps: both name one switch. */
            e->params.zero_copy_send = on;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_engine_get_capability(lm_engine *e, const char *name, bool *on, lm_error *err)
{
    int c = find_cap(name, err);
    if (c < 0) {
        return c;
    }
    *on = lm_cap(e, (enum lm_capability)c);
    return 0;
}

static int find_param(const char *name, lm_param_type type, lm_error *err)
{
    for (int i = 0; i < P__COUNT; i++) {
        if (!strcmp(param_descs[i].name, name)) {
            if (param_descs[i].type != type) {
                return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s'", name);
            }
            return i;
        }
    }
    return lm_error_set(err, -ENOENT, "Parameter '%s' not found", name);
}

/* Parameters that take effect while a migration runs. */
static bool live_param(int id)
{
    return id == P_MAX_BANDWIDTH || id == P_DOWNTIME_LIMIT || id == P_AVAIL_SWITCHOVER_BANDWIDTH ||
           id == P_THROTTLE_TRIGGER_THRESHOLD || id == P_CPU_THROTTLE_INCREMENT ||
           id == P_MAX_CPU_THROTTLE || id == P_CPU_THROTTLE_TAILSLOW ||
           id == P_MAX_POSTCOPY_BANDWIDTH || id == P_X_VCPU_DIRTY_LIMIT_PERIOD ||
           id == P_VCPU_DIRTY_LIMIT || id == P_X_AUTO_POSTCOPY_PASSES ||
           id == P_X_AUTO_POSTCOPY_TIME;
}

static uint64_t *u64_slot(lm_params *p, int id)
{
    switch (id) {
    case P_MAX_BANDWIDTH: return &p->max_bandwidth;
    case P_DOWNTIME_LIMIT: return &p->downtime_limit;
    case P_AVAIL_SWITCHOVER_BANDWIDTH: return &p->avail_switchover_bandwidth;
    case P_THROTTLE_TRIGGER_THRESHOLD: return &p->throttle_trigger_threshold;
    case P_CPU_THROTTLE_INITIAL: return &p->cpu_throttle_initial;
    case P_CPU_THROTTLE_INCREMENT: return &p->cpu_throttle_increment;
    case P_MAX_CPU_THROTTLE: return &p->max_cpu_throttle;
    case P_MAX_POSTCOPY_BANDWIDTH: return &p->max_postcopy_bandwidth;
    case P_MULTIFD_CHANNELS: return &p->multifd_channels;
    case P_MULTIFD_ZSTD_LEVEL: return &p->multifd_zstd_level;
    case P_X_HANDSHAKE_TIMEOUT: return &p->x_handshake_timeout;
    case P_X_VCPU_DIRTY_LIMIT_PERIOD: return &p->x_vcpu_dirty_limit_period;
    case P_VCPU_DIRTY_LIMIT: return &p->vcpu_dirty_limit;
    case P_X_AUTO_POSTCOPY_PASSES: return &p->x_auto_postcopy_passes;
    case P_X_AUTO_POSTCOPY_TIME: return &p->x_auto_postcopy_time;
    default: return NULL;
    }
}

static bool *bool_slot(lm_params *p, int id)
{
    switch (id) {
    case P_CPU_THROTTLE_TAILSLOW: return &p->cpu_throttle_tailslow;
    case P_X_VMDESC: return &p->x_vmdesc;
    case P_X_DIRTY_HOT_GROUPS: return &p->x_dirty_hot_groups;
    case P_ZERO_COPY_SEND: return &p->zero_copy_send;
    default: return NULL;
    }
}

/* String parameters: each a fixed-size field of lm_params. */
static char *str_slot(lm_params *p, int id, size_t *size)
{
    switch (id) {
    case P_X_DIRTY_TRACKER: *size = sizeof(p->x_dirty_tracker); return p->x_dirty_tracker;
    case P_MULTIFD_COMPRESSION: *size = sizeof(p->multifd_compression); return p->multifd_compression;
    case P_ZERO_PAGE_DETECTION: *size = sizeof(p->zero_page_detection); return p->zero_page_detection;
    case P_TLS_CREDS: *size = sizeof(p->tls_creds); return p->tls_creds;
    case P_TLS_HOSTNAME: *size = sizeof(p->tls_hostname); return p->tls_hostname;
    case P_TLS_AUTHZ: *size = sizeof(p->tls_authz); return p->tls_authz;
    default: *size = 0; return NULL;
    }
}

static int check_settable(lm_engine *e, int id, lm_error *err)
{
    if (!live_param(id) && migration_locks_settings(e)) {
        return lm_error_set(err, -EBUSY, "Parameter '%s' cannot change while a migration runs",
                            param_descs[id].name);
    }
    return 0;
}

/* QEMU's migrate_params_check: the throttle may not start above its cap. */
static int check_params(const lm_params *p, lm_error *err)
{
    if (p->max_cpu_throttle < p->cpu_throttle_initial) {
        return lm_error_set(err, -ERANGE, "Parameter 'max-cpu-throttle' expects an integer in the "
                            "range of cpu-throttle-initial (%llu) to 99",
                            (unsigned long long)p->cpu_throttle_initial);
    }
    return 0;
}

int lm_engine_set_param_u64(lm_engine *e, const char *name, uint64_t v, lm_error *err)
{
    int id = find_param(name, LM_PARAM_U64, err);
    if (id < 0) {
        return id;
    }
    const lm_param_desc *d = &param_descs[id];
    if (v < d->min || v > d->max) {
        return lm_error_set(err, -ERANGE,
                            "Parameter '%s' expects a value between %llu and %llu", name,
                            (unsigned long long)d->min, (unsigned long long)d->max);
    }
    pthread_mutex_lock(&e->lock);
    int ret = check_settable(e, id, err);
    if (!ret) {
        lm_params next = e->params;
        *u64_slot(&next, id) = v;
        ret = check_params(&next, err);
    }
    if (!ret) {
        *u64_slot(&e->params, id) = v;
        if (id == P_MAX_BANDWIDTH) {
            lm_ratelimit_set(&e->rl, v);
        }
        if (id == P_MAX_POSTCOPY_BANDWIDTH) {
            lm_ratelimit_set(&e->pc_rl, v);
        }
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_engine_set_param_bool(lm_engine *e, const char *name, bool v, lm_error *err)
{
    int id = find_param(name, LM_PARAM_BOOL, err);
    if (id < 0) {
        return id;
    }
    pthread_mutex_lock(&e->lock);
    int ret = check_settable(e, id, err);
    if (!ret && id == P_ZERO_COPY_SEND) {
        bool next[LM_CAP__COUNT];
        memcpy(next, e->caps, sizeof(next));
        next[LM_CAP_ZERO_COPY_SEND] = v;
        ret = check_caps(next, err);
    }
    if (!ret) {
        *bool_slot(&e->params, id) = v;
        if (id == P_ZERO_COPY_SEND) {
            e->caps[LM_CAP_ZERO_COPY_SEND] = v;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_engine_set_param_str(lm_engine *e, const char *name, const char *v, lm_error *err)
{
    int id = find_param(name, LM_PARAM_STR, err);
    if (id < 0) {
        return id;
    }
    const lm_param_desc *d = &param_descs[id];
    bool ok = !d->choices;
    for (const char *const *c = d->choices; c && *c; c++) {
        ok |= !strcmp(*c, v);
    }
    if (!ok) {
        return lm_error_set(err, -EINVAL, "Parameter '%s' does not accept '%s'", name, v);
    }
    size_t size;
    char *slot = str_slot(&e->params, id, &size);
    if (strlen(v) >= size) {
        return lm_error_set(err, -ENAMETOOLONG, "Parameter '%s' is longer than %zu characters",
                            name, size - 1);
    }
    pthread_mutex_lock(&e->lock);
    int ret = check_settable(e, id, err);
    if (!ret) {
        snprintf(slot, size, "%s", v);
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_engine_get_param_u64(lm_engine *e, const char *name, uint64_t *v, lm_error *err)
{
    int id = find_param(name, LM_PARAM_U64, err);
    if (id < 0) {
        return id;
    }
    pthread_mutex_lock(&e->lock);
    *v = *u64_slot(&e->params, id);
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int lm_engine_get_param_bool(lm_engine *e, const char *name, bool *v, lm_error *err)
{
    int id = find_param(name, LM_PARAM_BOOL, err);
    if (id < 0) {
        return id;
    }
    pthread_mutex_lock(&e->lock);
    *v = *bool_slot(&e->params, id);
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int lm_engine_get_param_str(lm_engine *e, const char *name, char *buf, size_t bufsz, lm_error *err)
{
    int id = find_param(name, LM_PARAM_STR, err);
    if (id < 0) {
        return id;
    }
    size_t size;
    pthread_mutex_lock(&e->lock);
    snprintf(buf, bufsz, "%s", str_slot(&e->params, id, &size));
    pthread_mutex_unlock(&e->lock);
    return 0;
}
