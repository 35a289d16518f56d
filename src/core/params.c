/*
 * Capabilities and parameters, by QEMU's names (qapi/migration.json).
 * Both are per-engine and may only change while no migration runs, except
 * the parameters QEMU also lets change mid-migration (bandwidth, downtime).
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
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

/* The names of an enum parameter's values (QEMU's), indexed by the value. */
static const char *const tracker_choices[] = {
    [LM_DIRTY_TRACKER_AUTO] = "auto",
    [LM_DIRTY_TRACKER_UFFD_WP] = "uffd-wp",
    [LM_DIRTY_TRACKER_MANUAL] = "manual",
    [LM_DIRTY_TRACKER_DIRTY_LOG] = "dirty-log",
    NULL,
};
static const char *const compression_choices[] = {
    [LM_MULTIFD_COMP_NONE] = "none",
    [LM_MULTIFD_COMP_ZSTD] = "zstd",
    NULL,
};
static const char *const zero_choices[] = {
    [LM_ZERO_NONE] = "none",
    [LM_ZERO_LEGACY] = "legacy",
    [LM_ZERO_MULTIFD] = "multifd",
    NULL,
};

/* An enum parameter is stored as its enum, read and written here as an
 * unsigned int: each must have that size. */
_Static_assert(sizeof(enum lm_dirty_tracker_kind) == sizeof(unsigned), "enum size");
_Static_assert(sizeof(enum lm_multifd_compression) == sizeof(unsigned), "enum size");
_Static_assert(sizeof(enum lm_zero_detection) == sizeof(unsigned), "enum size");

const char *lm_multifd_compression_name(enum lm_multifd_compression c)
{
    return (unsigned)c < sizeof(compression_choices) / sizeof(compression_choices[0]) - 1
               ? compression_choices[c] : "?";
}

/* How a row's value is stored in lm_params. */
typedef enum param_kind {
    KIND_U64,  /* uint64_t */
    KIND_BOOL, /* bool */
    KIND_STR,  /* char[size], NUL-terminated */
    KIND_ENUM, /* an enum, the index of its name in `choices` (the API: a string) */
} param_kind;

/* Side effect of a new value, called with e->lock held once it is stored. */
typedef void param_hook(lm_engine *e);

/* One parameter: set, get, validation, the defaults, and QMP and the CLI
 * (through lm_param_descs) all read this row and nothing else. */
typedef struct param_row {
    lm_param_desc pub;    /* what the API shows: name, type, bounds, choices */
    param_kind kind;
    size_t offset;        /* of the value in lm_params */
    size_t size;          /* of the value (KIND_STR: its capacity) */
    uint64_t def;         /* default of a number, a bool or an enum */
    const char *def_str;  /* default of a string */
    bool live;            /* may change while a migration runs (QEMU's list) */
    param_hook *applied;
} param_row;

static void apply_max_bandwidth(lm_engine *e)
{
    lm_ratelimit_set(&e->rl, e->params.max_bandwidth);
}

static void apply_max_postcopy_bandwidth(lm_engine *e)
{
    lm_ratelimit_set(&e->pc_rl, e->params.max_postcopy_bandwidth);
}

/* QEMU made zero-copy-send a capability; it began as a parameter, which
 * livemig keeps: both name one switch. */
static void apply_zero_copy_send(lm_engine *e)
{
    e->caps[LM_CAP_ZERO_COPY_SEND] = e->params.zero_copy_send;
}

#define FIELD(f) offsetof(lm_params, f), sizeof(((lm_params *)0)->f)
#define U64(name, f, lo, hi, dflt, live, hook) \
    { { name, LM_PARAM_U64, lo, hi, NULL }, KIND_U64, FIELD(f), dflt, NULL, live, hook }
#define BOOL(name, f, dflt, live, hook) \
    { { name, LM_PARAM_BOOL, 0, 1, NULL }, KIND_BOOL, FIELD(f), dflt, NULL, live, hook }
#define STR(name, f, dflt) \
    { { name, LM_PARAM_STR, 0, 0, NULL }, KIND_STR, FIELD(f), 0, dflt, false, NULL }
#define ENUM(name, f, choices, dflt) \
    { { name, LM_PARAM_STR, 0, 0, choices }, KIND_ENUM, FIELD(f), dflt, NULL, false, NULL }
#define LIVE true
#define FIXED false

static const param_row rows[] = {
    /* max-bandwidth 0: unlimited (QEMU's default is 128 MiB/s). */
    U64("max-bandwidth", max_bandwidth, 0, INT64_MAX, 0, LIVE, apply_max_bandwidth),
    U64("downtime-limit", downtime_limit, 0, 2000000, 300, LIVE, NULL),
    U64("avail-switchover-bandwidth", avail_switchover_bandwidth, 0, INT64_MAX, 0, LIVE, NULL),
    U64("throttle-trigger-threshold", throttle_trigger_threshold, 1, 100, 50, LIVE, NULL),
    U64("cpu-throttle-initial", cpu_throttle_initial, 1, 99, 20, FIXED, NULL),
    U64("cpu-throttle-increment", cpu_throttle_increment, 1, 99, 10, LIVE, NULL),
    U64("max-cpu-throttle", max_cpu_throttle, 1, 99, 99, LIVE, NULL),
    BOOL("cpu-throttle-tailslow", cpu_throttle_tailslow, false, LIVE, NULL),
    BOOL("x-vmdesc", x_vmdesc, false, FIXED, NULL),
    ENUM("x-dirty-tracker", x_dirty_tracker, tracker_choices, LM_DIRTY_TRACKER_AUTO),
    U64("max-postcopy-bandwidth", max_postcopy_bandwidth, 0, INT64_MAX, 0, LIVE,
        apply_max_postcopy_bandwidth),
    U64("multifd-channels", multifd_channels, 1, 64, 2, FIXED, NULL),
    ENUM("multifd-compression", multifd_compression, compression_choices, LM_MULTIFD_COMP_NONE),
    U64("multifd-zstd-level", multifd_zstd_level, 0, 20, 1, FIXED, NULL),
    ENUM("zero-page-detection", zero_page_detection, zero_choices, LM_ZERO_MULTIFD),
    BOOL("zero-copy-send", zero_copy_send, false, FIXED, apply_zero_copy_send),
    STR("tls-creds", tls_creds, ""),
    STR("tls-hostname", tls_hostname, ""),
    STR("tls-authz", tls_authz, ""),
    U64("x-handshake-timeout", x_handshake_timeout, 1, 3600000, 30000, FIXED, NULL),
    /* QEMU's bounds and defaults: the period 1..1000 ms, the limit at
     * least 1 MB/s. */
    U64("x-vcpu-dirty-limit-period", x_vcpu_dirty_limit_period, 1, 1000, 1000, LIVE, NULL),
    U64("vcpu-dirty-limit", vcpu_dirty_limit, 1, INT64_MAX >> 21, 1, LIVE, NULL),
    U64("x-auto-postcopy-passes", x_auto_postcopy_passes, 1, 1000, 3, LIVE, NULL),
    U64("x-auto-postcopy-time", x_auto_postcopy_time, 0, 86400000, 0, LIVE, NULL),
    /* Opt-in.  With pages protected when they are sent, a write to a page
     * not yet sent is free already; hot groups then saved the guest less
     * than their re-sends cost (bench/live-dirty-results.md: 1 GiB guests
     * converged later with them on).  When on, the migration retires them
     * once a throttle works or what remains stops shrinking (dirty.h). */
    BOOL("x-dirty-hot-groups", x_dirty_hot_groups, false, FIXED, NULL),
};

#undef FIELD
#undef U64
#undef BOOL
#undef STR
#undef ENUM
#undef LIVE
#undef FIXED

#define NROWS (sizeof(rows) / sizeof(rows[0]))

/* The API's view of the rows (terminated by name == NULL), filled once. */
static lm_param_desc pub_descs[NROWS + 1];
static pthread_once_t pub_descs_once = PTHREAD_ONCE_INIT;

static void fill_pub_descs(void)
{
    for (size_t i = 0; i < NROWS; i++) {
        pub_descs[i] = rows[i].pub;
    }
}

const lm_param_desc *lm_param_descs(void)
{
    pthread_once(&pub_descs_once, fill_pub_descs);
    return pub_descs;
}

static void *slot(lm_params *p, const param_row *r)
{
    return (char *)p + r->offset;
}

/* The width each kind reads and writes: a row naming a field of another
 * type would write past it. */
static size_t kind_size(param_kind k)
{
    switch (k) {
    case KIND_U64: return sizeof(uint64_t);
    case KIND_BOOL: return sizeof(bool);
    case KIND_ENUM: return sizeof(unsigned);
    case KIND_STR: break;
    }
    return 0;
}

static void store_default(lm_params *p, const param_row *r)
{
    assert(r->kind == KIND_STR ? r->size > 0 : r->size == kind_size(r->kind));
    assert(r->kind != KIND_U64 || (r->def >= r->pub.min && r->def <= r->pub.max));
    switch (r->kind) {
    case KIND_U64: *(uint64_t *)slot(p, r) = r->def; break;
    case KIND_BOOL: *(bool *)slot(p, r) = r->def != 0; break;
    case KIND_STR: snprintf(slot(p, r), r->size, "%s", r->def_str); break;
    case KIND_ENUM: *(unsigned *)slot(p, r) = (unsigned)r->def; break;
    }
}

void lm_params_defaults(lm_engine *e)
{
    memset(&e->params, 0, sizeof(e->params));
    for (size_t i = 0; i < NROWS; i++) {
        store_default(&e->params, &rows[i]);
    }
    memset(e->caps, 0, sizeof(e->caps));
    e->caps[LM_CAP_RETURN_PATH] = true; /* see docs/architecture.md: confirms the load */
    /* zero-copy-send is both: apply_zero_copy_send keeps them equal. */
    e->caps[LM_CAP_ZERO_COPY_SEND] = e->params.zero_copy_send;
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

static int find_param(const char *name, lm_param_type type, const param_row **out,
                      lm_error *err)
{
    for (size_t i = 0; i < NROWS; i++) {
        if (!strcmp(rows[i].pub.name, name)) {
            if (rows[i].pub.type != type) {
                return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s'", name);
            }
            *out = &rows[i];
            return 0;
        }
    }
    return lm_error_set(err, -ENOENT, "Parameter '%s' not found", name);
}

/* The value of an enum row named s, or -1. */
static int choice_index(const param_row *r, const char *s)
{
    for (int i = 0; r->pub.choices[i]; i++) {
        if (!strcmp(r->pub.choices[i], s)) {
            return i;
        }
    }
    return -1;
}

/* The value a row would take, checked against the row alone: bounds,
 * choices, room. */
static int check_value(const param_row *r, uint64_t u, const char *s, lm_error *err)
{
    const lm_param_desc *d = &r->pub;
    switch (r->kind) {
    case KIND_U64:
        if (u < d->min || u > d->max) {
            return lm_error_set(err, -ERANGE,
                                "Parameter '%s' expects a value between %llu and %llu", d->name,
                                (unsigned long long)d->min, (unsigned long long)d->max);
        }
        return 0;
    case KIND_BOOL:
        return 0;
    case KIND_ENUM:
        if (choice_index(r, s) < 0) {
            return lm_error_set(err, -EINVAL, "Parameter '%s' does not accept value '%s'",
                                d->name, s);
        }
        return 0;
    case KIND_STR:
        if (strlen(s) >= r->size) {
            return lm_error_set(err, -ENAMETOOLONG,
                                "Parameter '%s' is longer than %zu characters", d->name,
                                r->size - 1);
        }
        return 0;
    }
    return lm_error_set(err, -EINVAL, "Parameter '%s' has an unknown type", d->name);
}

static void store_value(lm_params *p, const param_row *r, uint64_t u, const char *s)
{
    switch (r->kind) {
    case KIND_U64: *(uint64_t *)slot(p, r) = u; break;
    case KIND_BOOL: *(bool *)slot(p, r) = u != 0; break;
    case KIND_STR: snprintf(slot(p, r), r->size, "%s", s); break;
    case KIND_ENUM: {
        int v = choice_index(r, s);
        assert(v >= 0); /* check_value refused any other */
        *(unsigned *)slot(p, r) = (unsigned)v;
        break;
    }
    }
}

/* Checks across parameters, on the values they would have together.
 * QEMU's migrate_params_check: the throttle may not start above its cap;
 * and zero-copy-send, being also a capability, obeys check_caps. */
static int check_combination(const lm_engine *e, const lm_params *p, lm_error *err)
{
    if (p->max_cpu_throttle < p->cpu_throttle_initial) {
        return lm_error_set(err, -ERANGE, "Parameter 'max-cpu-throttle' expects an integer in the "
                            "range of cpu-throttle-initial (%llu) to 99",
                            (unsigned long long)p->cpu_throttle_initial);
    }
    if (p->zero_copy_send != e->caps[LM_CAP_ZERO_COPY_SEND]) {
        bool next[LM_CAP__COUNT];
        memcpy(next, e->caps, sizeof(next));
        next[LM_CAP_ZERO_COPY_SEND] = p->zero_copy_send;
        return check_caps(next, err);
    }
    return 0;
}

/* Sets one row to u (numbers, bools) or s (strings). */
static int set_param(lm_engine *e, const param_row *r, uint64_t u, const char *s, lm_error *err)
{
    int ret = check_value(r, u, s, err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&e->lock);
    /* check_combination relies on it: apply_zero_copy_send and
     * lm_engine_set_capability keep both sides of the switch equal. */
    assert(e->caps[LM_CAP_ZERO_COPY_SEND] == e->params.zero_copy_send);
    if (!r->live && migration_locks_settings(e)) {
        ret = lm_error_set(err, -EBUSY, "Parameter '%s' cannot change while a migration runs",
                           r->pub.name);
    }
    if (!ret) {
        lm_params next = e->params;
        store_value(&next, r, u, s);
        ret = check_combination(e, &next, err);
    }
    if (!ret) {
        store_value(&e->params, r, u, s);
        if (r->applied) {
            r->applied(e);
        }
    }
    pthread_mutex_unlock(&e->lock);
    return ret;
}

int lm_param_check_u64(const char *name, uint64_t v, lm_error *err)
{
    const param_row *r;
    int ret = find_param(name, LM_PARAM_U64, &r, err);
    return ret < 0 ? ret : check_value(r, v, NULL, err);
}

int lm_param_check_str(const char *name, const char *v, lm_error *err)
{
    const param_row *r;
    int ret = find_param(name, LM_PARAM_STR, &r, err);
    return ret < 0 ? ret : check_value(r, 0, v, err);
}

int lm_engine_set_param_u64(lm_engine *e, const char *name, uint64_t v, lm_error *err)
{
    const param_row *r;
    int ret = find_param(name, LM_PARAM_U64, &r, err);
    return ret < 0 ? ret : set_param(e, r, v, NULL, err);
}

int lm_engine_set_param_bool(lm_engine *e, const char *name, bool v, lm_error *err)
{
    const param_row *r;
    int ret = find_param(name, LM_PARAM_BOOL, &r, err);
    return ret < 0 ? ret : set_param(e, r, v, NULL, err);
}

int lm_engine_set_param_str(lm_engine *e, const char *name, const char *v, lm_error *err)
{
    const param_row *r;
    int ret = find_param(name, LM_PARAM_STR, &r, err);
    return ret < 0 ? ret : set_param(e, r, 0, v, err);
}

int lm_engine_get_param_u64(lm_engine *e, const char *name, uint64_t *v, lm_error *err)
{
    const param_row *r;
    int ret = find_param(name, LM_PARAM_U64, &r, err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&e->lock);
    *v = *(const uint64_t *)slot(&e->params, r);
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int lm_engine_get_param_bool(lm_engine *e, const char *name, bool *v, lm_error *err)
{
    const param_row *r;
    int ret = find_param(name, LM_PARAM_BOOL, &r, err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&e->lock);
    *v = *(const bool *)slot(&e->params, r);
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int lm_engine_get_param_str(lm_engine *e, const char *name, char *buf, size_t bufsz, lm_error *err)
{
    const param_row *r;
    int ret = find_param(name, LM_PARAM_STR, &r, err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&e->lock);
    if (r->kind == KIND_ENUM) {
        unsigned v = *(const unsigned *)slot(&e->params, r);
        snprintf(buf, bufsz, "%s", r->pub.choices[v]);
    } else {
        snprintf(buf, bufsz, "%s", (const char *)slot(&e->params, r));
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
}
