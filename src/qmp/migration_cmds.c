/*
 * QMP migration commands: the engine API under QEMU's names and shapes
 * (qapi/migration.json).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "livemig/engine.h"
#include "livemig/vcpu.h"
#include "qmp/qmp.h"

/* What migrate and migrate-incoming need beyond the engine: the server,
 * for descriptors named with getfd. */
typedef struct migration_cmds {
    qmp_server *server;
    lm_engine *engine;
    bool dirty_rate_in_ms; /* the last calc-dirty-rate's calc-time-unit */
} migration_cmds;

/* ------------------------------------------------------------------------ */
/* Addresses: uri or channels, fd:NAME */

static int uri_from_socket(json_t *addr, char *out, size_t outsz, lm_error *err)
{
    const char *type = NULL, *path = NULL, *host = NULL, *port = NULL, *str = NULL;
    if (qmp_arg_str(addr, "type", true, &type, err) < 0) {
        return -EINVAL;
    }
    int n;
    if (strcmp(type, "unix") == 0) {
        if (qmp_arg_str(addr, "path", true, &path, err) < 0) {
            return -EINVAL;
        }
        n = snprintf(out, outsz, "unix:%s", path);
    } else if (strcmp(type, "inet") == 0) {
        if (qmp_arg_str(addr, "host", true, &host, err) < 0 ||
            qmp_arg_str(addr, "port", true, &port, err) < 0) {
            return -EINVAL;
        }
        bool v6 = strchr(host, ':') != NULL;
        n = snprintf(out, outsz, "tcp:%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
    } else if (strcmp(type, "fd") == 0) {
        if (qmp_arg_str(addr, "str", true, &str, err) < 0) {
            return -EINVAL;
        }
        n = snprintf(out, outsz, "fd:%s", str);
    } else {
        return lm_error_set(err, -EINVAL, "Parameter 'type' does not accept value '%s'", type);
    }
    return n < 0 || (size_t)n >= outsz ? lm_error_set(err, -ENAMETOOLONG, "address too long") : 0;
}

/* exec's argv as one shell command line, each argument single-quoted. */
static int uri_from_exec(json_t *addr, char *out, size_t outsz, lm_error *err)
{
    json_t *argv = json_object_get(addr, "args");
    if (!json_is_array(argv) || json_array_size(argv) == 0) {
        return lm_error_set(err, -EINVAL, "Parameter 'args' expects a non-empty list of strings");
    }
    size_t len = (size_t)snprintf(out, outsz, "exec:");
    size_t i;
    json_t *a;
    json_array_foreach(argv, i, a) {
        if (!json_is_string(a)) {
            return lm_error_set(err, -EINVAL, "Parameter 'args' expects a list of strings");
        }
        for (const char *p = i ? " '" : "'"; *p && len < outsz; p++) {
            out[len++] = *p;
        }
        for (const char *p = json_string_value(a); *p && len + 4 < outsz; p++) {
            if (*p == '\'') {
                memcpy(out + len, "'\\''", 4);
                len += 4;
            } else {
                out[len++] = *p;
            }
        }
        if (len + 2 >= outsz) {
            return lm_error_set(err, -ENAMETOOLONG, "exec command too long");
        }
        out[len++] = '\'';
    }
    out[len] = '\0';
    return 0;
}

static int uri_from_channels(json_t *channels, char *out, size_t outsz, lm_error *err)
{
    if (!json_is_array(channels) || json_array_size(channels) != 1) {
        return lm_error_set(err, -EINVAL, "Parameter 'channels' expects one channel of type main");
    }
    json_t *ch = json_array_get(channels, 0);
    const char *ctype = NULL, *transport = NULL;
    json_t *addr = json_is_object(ch) ? json_object_get(ch, "addr") : NULL;
    if (!json_is_object(ch) || qmp_arg_str(ch, "channel-type", true, &ctype, err) < 0) {
        return lm_error_set(err, -EINVAL, "Parameter 'channel-type' is missing");
    }
    if (strcmp(ctype, "main") != 0) {
        return lm_error_set(err, -EINVAL, "Parameter 'channel-type' does not accept value '%s'",
                            ctype);
    }
    if (!json_is_object(addr)) {
        return lm_error_set(err, -EINVAL, "Parameter 'addr' is missing");
    }
    if (qmp_arg_str(addr, "transport", true, &transport, err) < 0) {
        return -EINVAL;
    }
    if (strcmp(transport, "socket") == 0) {
        return uri_from_socket(addr, out, outsz, err);
    }
    if (strcmp(transport, "exec") == 0) {
        return uri_from_exec(addr, out, outsz, err);
    }
    if (strcmp(transport, "file") == 0) {
        const char *filename = NULL;
        uint64_t offset = 0;
        if (qmp_arg_str(addr, "filename", true, &filename, err) < 0 ||
            qmp_arg_u64(addr, "offset", false, &offset, err) < 0) {
            return -EINVAL;
        }
        int n = offset ? snprintf(out, outsz, "file:%s,offset=%" PRIu64, filename, offset)
                       : snprintf(out, outsz, "file:%s", filename);
        return n < 0 || (size_t)n >= outsz ? lm_error_set(err, -ENAMETOOLONG, "file name too long")
                                           : 0;
    }
    return lm_error_set(err, -EINVAL, "Parameter 'transport' does not accept value '%s'", transport);
}

int qmp_migration_uri(qmp_server *s, json_t *args, char *out, size_t outsz, lm_error *err)
{
    const char *uri = NULL;
    json_t *channels = json_object_get(args, "channels");
    if (qmp_arg_str(args, "uri", false, &uri, err) < 0) {
        return -EINVAL;
    }
    if (uri && channels) {
        return lm_error_set(err, -EINVAL, "'uri' and 'channels' arguments are mutually exclusive; "
                            "exactly one of the two should be present");
    }
    if (!uri && !channels) {
        return lm_error_set(err, -EINVAL, "Need either 'uri' or 'channels' argument");
    }
    if (uri) {
        if ((size_t)snprintf(out, outsz, "%s", uri) >= outsz) {
            return lm_error_set(err, -ENAMETOOLONG, "'uri' is too long");
        }
    } else if (uri_from_channels(channels, out, outsz, err) < 0) {
        return -EINVAL;
    }
    /* fd:NAME: the descriptor a client passed with getfd; the migration
     * takes it (QEMU's monitor hands it over the same way). */
    if (strncmp(out, "fd:", 3) == 0 && out[3] && !isdigit((unsigned char)out[3])) {
        char name[256];
        snprintf(name, sizeof(name), "%s", out + 3);
        int fd = qmp_server_take_fd(s, name, err);
        if (fd < 0) {
            return fd;
        }
        snprintf(out, outsz, "fd:%d", fd);
    }
    return 0;
}

int qmp_migration_uri_fdset(qmp_server *s, char *uri, size_t urisz, bool writing, int *fd,
                            lm_error *err)
{
    static const char prefix[] = "file:/dev/fdset/";
    *fd = -1;
    if (strncmp(uri, prefix, sizeof(prefix) - 1) != 0) {
        return 0;
    }
    const char *num = uri + sizeof(prefix) - 1;
    char *end;
    errno = 0;
    long long id = strtoll(num, &end, 10);
    if (!isdigit((unsigned char)*num) || errno || (*end && *end != ',')) {
        size_t len = strcspn(uri + 5, ",");
        return lm_error_set(err, -EINVAL, "Could not parse fdset %.*s: Invalid argument",
                            (int)len, uri + 5);
    }
    /* The flags QEMU opens a migration file with. */
    int flags = writing ? O_CREAT | O_TRUNC | O_WRONLY : O_RDONLY;
    int dup_fd = qmp_server_fdset_dup(s, id, flags, err);
    if (dup_fd < 0) {
        return dup_fd;
    }
    size_t len = strlen(uri);
    if ((size_t)snprintf(uri + len, urisz - len, ",fd=%d", dup_fd) >= urisz - len) {
        uri[len] = '\0';
        close(dup_fd);
        return lm_error_set(err, -ENAMETOOLONG, "'uri' is too long");
    }
    *fd = dup_fd;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* migrate, migrate-incoming, migrate_cancel, migrate-continue */

static json_t *cmd_migrate(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "uri", "channels", "detach", "resume", "blk", "inc",
                                         NULL };
    migration_cmds *mc = opaque;
    lm_engine *e = mc->engine;
    char uri[4096];
    bool detach = true, resume = false, blk = false, inc = false;

    if (qmp_args_check(args, known, err) < 0 ||
        qmp_arg_bool(args, "detach", false, &detach, err) < 0 ||
        qmp_arg_bool(args, "resume", false, &resume, err) < 0 ||
        qmp_arg_bool(args, "blk", false, &blk, err) < 0 ||
        qmp_arg_bool(args, "inc", false, &inc, err) < 0) {
        return NULL;
    }
    if (blk || inc) {
        lm_error_set(err, -EINVAL, "Block migration is not supported");
        return NULL;
    }
    int fdset_fd = -1;
    if (qmp_migration_uri(mc->server, args, uri, sizeof(uri), err) < 0 ||
        qmp_migration_uri_fdset(mc->server, uri, sizeof(uri), true, &fdset_fd, err) < 0) {
        return NULL;
    }
    if (lm_engine_migrate(e, uri, resume, err) < 0) {
        if (fdset_fd >= 0) {
            close(fdset_fd);
        }
        return NULL;
    }
    return json_object();
}

static json_t *cmd_migrate_incoming(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "uri", "channels", NULL };
    migration_cmds *mc = opaque;
    char uri[4096];

    int fdset_fd = -1;
    if (qmp_args_check(args, known, err) < 0 ||
        qmp_migration_uri(mc->server, args, uri, sizeof(uri), err) < 0 ||
        qmp_migration_uri_fdset(mc->server, uri, sizeof(uri), false, &fdset_fd, err) < 0) {
        return NULL;
    }
    int ret = lm_engine_incoming(mc->engine, uri, err);
    if (fdset_fd >= 0) {
        close(fdset_fd); /* the restore works on a duplicate */
    }
    return ret < 0 ? NULL : json_object();
}

static json_t *cmd_migrate_cancel(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    if (qmp_args_check(args, known, err) < 0 || lm_engine_cancel(opaque, err) < 0) {
        return NULL;
    }
    return json_object();
}

static json_t *cmd_migrate_continue(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "state", NULL };
    const char *state = NULL;
    if (qmp_args_check(args, known, err) < 0 ||
        qmp_arg_str(args, "state", true, &state, err) < 0) {
        return NULL;
    }
    bool valid = false;
    for (int i = 0; i < LM_STATUS__COUNT; i++) {
        const char *n = lm_status_name((lm_status)i);
        if (n && strcmp(n, state) == 0) {
            valid = true;
            break;
        }
    }
    if (!valid) {
        lm_error_set(err, -EINVAL, "Parameter 'state' does not accept value '%s'", state);
        return NULL;
    }
    if (lm_engine_continue(opaque, state, err) < 0) {
        return NULL;
    }
    return json_object();
}

static void add_thread_json(void *opaque, const char *name, int thread_id)
{
    json_array_append_new(opaque, json_pack("{s:s,s:i}", "name", name, "thread-id", thread_id));
}

static json_t *cmd_query_migrationthreads(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    if (qmp_args_check(args, known, err) < 0) {
        return NULL;
    }
    json_t *list = json_array();
    lm_engine_migration_threads(opaque, add_thread_json, list);
    return list;
}

/* ------------------------------------------------------------------------ */
/* Postcopy: migrate-start-postcopy, migrate-pause, migrate-recover */

static json_t *cmd_migrate_start_postcopy(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    if (qmp_args_check(args, known, err) < 0 || lm_engine_start_postcopy(opaque, err) < 0) {
        return NULL;
    }
    return json_object();
}

static json_t *cmd_migrate_pause(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    if (qmp_args_check(args, known, err) < 0 || lm_engine_pause(opaque, err) < 0) {
        return NULL;
    }
    return json_object();
}

static json_t *cmd_migrate_recover(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "uri", NULL };
    const char *uri = NULL;
    if (qmp_args_check(args, known, err) < 0 || qmp_arg_str(args, "uri", true, &uri, err) < 0 ||
        lm_engine_recover(opaque, uri, err) < 0) {
        return NULL;
    }
    return json_object();
}

/* yank {instances: [{type: "migration"}]}: drop the migration's
 * connections now.  In postcopy that pauses it (recoverable, as QEMU);
 * before postcopy livemig cancels it (QEMU fails it): the source runs on
 * either way. */
/* Whether a migration is in progress; -ENOMEM (err set) when the snapshot
 * cannot be taken. */
static int migration_in_progress(lm_engine *e, lm_status *st, lm_error *err)
{
    lm_info *info = calloc(1, sizeof(*info));
    if (!info) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    info->struct_size = sizeof(*info); /* the whole of this build's layout */
    lm_engine_query(e, info);
    *st = info->status;
    free(info);
    return *st != LM_STATUS_NONE && *st != LM_STATUS_COMPLETED && *st != LM_STATUS_FAILED &&
           *st != LM_STATUS_CANCELLED;
}

static json_t *cmd_yank(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "instances", NULL };
    json_t *inst = json_object_get(args, "instances");
    if (qmp_args_check(args, known, err) < 0) {
        return NULL;
    }
    if (!json_is_array(inst)) {
        lm_error_set(err, -EINVAL, "Parameter 'instances' is missing");
        return NULL;
    }
    size_t i;
    json_t *it;
    json_array_foreach(inst, i, it) {
        const char *type = NULL;
        if (!json_is_object(it) || qmp_arg_str(it, "type", true, &type, err) < 0) {
            lm_error_set(err, -EINVAL, "Parameter 'type' is missing");
            return NULL;
        }
        if (strcmp(type, "migration") != 0) {
            lm_error_set(err, -ENOENT, "Instance '%s' not found", type);
            return NULL;
        }
    }
    lm_status st;
    int busy = migration_in_progress(opaque, &st, err);
    if (busy < 0) {
        return NULL;
    }
    if (json_array_size(inst) == 0) {
        return json_object();
    }
    if (!busy) {
        lm_error_set(err, -ENOENT, "Instance 'migration' not found");
        return NULL;
    }
    int r = st == LM_STATUS_POSTCOPY_ACTIVE ? lm_engine_pause(opaque, err)
                                            : lm_engine_cancel(opaque, err);
    return r < 0 ? NULL : json_object();
}

static json_t *cmd_query_yank(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    if (qmp_args_check(args, known, err) < 0) {
        return NULL;
    }
    lm_status st;
    int busy = migration_in_progress(opaque, &st, err);
    if (busy < 0) {
        return NULL;
    }
    json_t *list = json_array();
    if (busy) {
        json_array_append_new(list, json_pack("{s:s}", "type", "migration"));
    }
    return list;
}

/* ------------------------------------------------------------------------ */
/* Capabilities */

static bool capability_known(const char *name)
{
    const char *const *names = lm_capability_names();
    for (size_t i = 0; names && names[i]; i++) {
        if (strcmp(names[i], name) == 0) {
            return true;
        }
    }
    return false;
}

static json_t *cmd_migrate_set_capabilities(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "capabilities", NULL };
    lm_engine *e = opaque;
    if (qmp_args_check(args, known, err) < 0) {
        return NULL;
    }
    json_t *caps = json_object_get(args, "capabilities");
    if (!caps) {
        lm_error_set(err, -EINVAL, "Parameter 'capabilities' is missing");
        return NULL;
    }
    if (!json_is_array(caps)) {
        lm_error_set(err, -EINVAL, "Invalid parameter type for 'capabilities', expected: array");
        return NULL;
    }

    /* Validate every entry before changing anything. */
    static const char *const entry_known[] = { "capability", "state", NULL };
    size_t i;
    json_t *ent;
    json_array_foreach(caps, i, ent) {
        const char *name = NULL;
        bool state = false;
        if (!json_is_object(ent)) {
            lm_error_set(err, -EINVAL,
                         "Invalid parameter type for 'capabilities[%zu]', expected: object", i);
            return NULL;
        }
        if (qmp_args_check(ent, entry_known, err) < 0 ||
            qmp_arg_str(ent, "capability", true, &name, err) < 0 ||
            qmp_arg_bool(ent, "state", true, &state, err) < 0) {
            return NULL;
        }
        if (!capability_known(name)) {
            lm_error_set(err, -EINVAL, "Capability '%s' not found", name);
            return NULL;
        }
    }

    /* Apply.  The engine refuses a change while a migration runs and a
     * combination QEMU refuses; then restore what was already applied. */
    size_t n = json_array_size(caps);
    bool *old = calloc(n ? n : 1, sizeof(*old));
    bool *done = calloc(n ? n : 1, sizeof(*done));
    if (!old || !done) {
        free(old);
        free(done);
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    json_array_foreach(caps, i, ent) {
        const char *name = json_string_value(json_object_get(ent, "capability"));
        lm_engine_get_capability(e, name, &old[i], NULL);
    }
    /* QEMU checks the request as a whole: an entry refused only because a
     * later one (postcopy-ram for postcopy-preempt, say) is not applied
     * yet is tried again while a round makes progress. */
    size_t left = n;
    bool progress = true;
    while (left && progress) {
        progress = false;
        lm_error_clear(err);
        json_array_foreach(caps, i, ent) {
            const char *name = json_string_value(json_object_get(ent, "capability"));
            bool state = json_is_true(json_object_get(ent, "state"));
            if (!done[i] && lm_engine_set_capability(e, name, state, err) == 0) {
                done[i] = true;
                left--;
                progress = true;
            }
        }
    }
    if (left) {
        /* Back to the old set: it was valid, so the same rounds restore it. */
        for (size_t round = 0; round <= n; round++) {
            json_array_foreach(caps, i, ent) {
                const char *name = json_string_value(json_object_get(ent, "capability"));
                lm_engine_set_capability(e, name, old[i], NULL);
            }
        }
    }
    free(old);
    free(done);
    return left ? NULL : json_object();
}

static json_t *cmd_query_migrate_capabilities(void *opaque, json_t *args, lm_error *err)
{
    lm_engine *e = opaque;
    json_t *list = json_array();
    const char *const *names = lm_capability_names();
    for (size_t i = 0; names && names[i]; i++) {
        bool on = false;
        if (lm_engine_get_capability(e, names[i], &on, NULL) < 0) {
            continue;
        }
        json_array_append_new(list, json_pack("{s:s,s:b}", "capability", names[i],
                                               "state", on));
    }
    return list;
}

/* ------------------------------------------------------------------------ */
/* Parameters */

static const lm_param_desc *param_find(const char *name)
{
    for (const lm_param_desc *d = lm_param_descs(); d && d->name; d++) {
        if (strcmp(d->name, name) == 0) {
            return d;
        }
    }
    return NULL;
}

/* The JSON type is QMP's to check; bounds, choices and length are the
 * parameter table's (lm_param_check_*), the same checks a set makes. */
static int param_validate(const lm_param_desc *d, json_t *v, lm_error *err)
{
    switch (d->type) {
    case LM_PARAM_U64: {
        if (!json_is_integer(v)) {
            return lm_error_set(err, -EINVAL,
                                "Invalid parameter type for '%s', expected: integer", d->name);
        }
        json_int_t iv = json_integer_value(v);
        if (iv < 0) {
            return lm_error_set(err, -EINVAL, "Parameter '%s' expects uint64", d->name);
        }
        return lm_param_check_u64(d->name, (uint64_t)iv, err);
    }
    case LM_PARAM_BOOL:
        if (!json_is_boolean(v)) {
            return lm_error_set(err, -EINVAL,
                                "Invalid parameter type for '%s', expected: boolean", d->name);
        }
        return 0;
    case LM_PARAM_STR:
        if (json_is_null(v) && !d->choices) {
            return 0; /* StrOrNull: null resets to "" */
        }
        if (!json_is_string(v)) {
            return lm_error_set(err, -EINVAL,
                                "Invalid parameter type for '%s', expected: string", d->name);
        }
        return lm_param_check_str(d->name, json_string_value(v), err);
    }
    return lm_error_set(err, -EINVAL, "Parameter '%s' has an unknown type", d->name);
}

static int param_apply(lm_engine *e, const lm_param_desc *d, json_t *v, lm_error *err)
{
    switch (d->type) {
    case LM_PARAM_U64:
        return lm_engine_set_param_u64(e, d->name, (uint64_t)json_integer_value(v), err);
    case LM_PARAM_BOOL:
        return lm_engine_set_param_bool(e, d->name, json_is_true(v), err);
    case LM_PARAM_STR:
        return lm_engine_set_param_str(e, d->name,
                                       json_is_string(v) ? json_string_value(v) : "", err);
    }
    return -EINVAL;
}

/* The current value of one parameter as JSON (NULL when unreadable). */
static json_t *param_get(lm_engine *e, const lm_param_desc *d)
{
    switch (d->type) {
    case LM_PARAM_U64: {
        uint64_t v;
        if (lm_engine_get_param_u64(e, d->name, &v, NULL) < 0) {
            return NULL;
        }
        return qmp_u64(v);
    }
    case LM_PARAM_BOOL: {
        bool v;
        if (lm_engine_get_param_bool(e, d->name, &v, NULL) < 0) {
            return NULL;
        }
        return json_boolean(v);
    }
    case LM_PARAM_STR: {
        char buf[LM_URI_MAX];
        if (lm_engine_get_param_str(e, d->name, buf, sizeof(buf), NULL) < 0) {
            return NULL;
        }
        return json_string(buf);
    }
    }
    return NULL;
}

static json_t *cmd_migrate_set_parameters(void *opaque, json_t *args, lm_error *err)
{
    lm_engine *e = opaque;
    const char *key;
    json_t *val;

    json_object_foreach(args, key, val) {
        const lm_param_desc *d = param_find(key);
        if (!d) {
            lm_error_set(err, -EINVAL, "Parameter '%s' is unexpected", key);
            return NULL;
        }
        if (param_validate(d, val, err) < 0) {
            return NULL;
        }
    }

    /* Keep the old values so a refusal by the engine changes nothing. */
    json_t *old = json_object();
    json_object_foreach(args, key, val) {
        const lm_param_desc *d = param_find(key);
        json_t *prev = d ? param_get(e, d) : NULL;
        if (prev) {
            json_object_set_new(old, key, prev);
        }
    }
    /* QEMU checks the merged parameters: cpu-throttle-initial 60 with
     * max-cpu-throttle 70 is fine whichever comes first, so an entry
     * refused in one round is tried again while a round makes progress. */
    json_t *left = json_deep_copy(args);
    bool progress = true;
    while (left && json_object_size(left) && progress) {
        progress = false;
        lm_error_clear(err);
        void *tmp;
        json_object_foreach_safe(left, tmp, key, val) {
            const lm_param_desc *d = param_find(key);
            if (d && param_apply(e, d, val, err) == 0) {
                json_object_del(left, key);
                progress = true;
            }
        }
    }
    bool ok = left && json_object_size(left) == 0;
    if (!left) {
        lm_error_set(err, -ENOMEM, "out of memory");
    }
    if (!ok) {
        /* The old values were valid together: the same rounds restore them. */
        for (size_t round = 0; round <= json_object_size(old); round++) {
            json_object_foreach(old, key, val) {
                const lm_param_desc *d = param_find(key);
                if (d) {
                    param_apply(e, d, val, NULL);
                }
            }
        }
    }
    json_decref(left);
    json_decref(old);
    return ok ? json_object() : NULL;
}

static json_t *cmd_query_migrate_parameters(void *opaque, json_t *args, lm_error *err)
{
    lm_engine *e = opaque;
    json_t *obj = json_object();
    for (const lm_param_desc *d = lm_param_descs(); d && d->name; d++) {
        json_t *v = param_get(e, d);
        if (v) {
            json_object_set_new(obj, d->name, v);
        }
    }
    return obj;
}

/* ------------------------------------------------------------------------ */
/* query-migrate */

/* "tcp:HOST:PORT", "tcp:[V6]:PORT", "unix:PATH" -> a SocketAddress list. */
static json_t *socket_address_json(const char *addr)
{
    json_t *list = json_array();
    if (strncmp(addr, "unix:", 5) == 0) {
        json_array_append_new(list, json_pack("{s:s,s:s}", "type", "unix", "path", addr + 5));
    } else if (strncmp(addr, "tcp:", 4) == 0) {
        const char *hp = addr + 4;
        const char *colon = strrchr(hp, ':');
        if (colon) {
            const char *h = hp;
            size_t hl = (size_t)(colon - hp);
            if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
                h++;
                hl -= 2;
            }
            char *host = strndup(h, hl);
            if (host) {
                json_array_append_new(list, json_pack("{s:s,s:s,s:s}", "type", "inet",
                                                       "host", host, "port", colon + 1));
                free(host);
            }
        }
    } else if (strncmp(addr, "vsock:", 6) == 0) {
        const char *cid = addr + 6;
        const char *colon = strchr(cid, ':');
        if (colon) {
            char *c = strndup(cid, (size_t)(colon - cid));
            if (c) {
                json_array_append_new(list, json_pack("{s:s,s:s,s:s}", "type", "vsock",
                                                       "cid", c, "port", colon + 1));
                free(c);
            }
        }
    }
    return list;
}

static json_t *downtime_parts_json(const lm_downtime_part *p, unsigned n)
{
    json_t *a = json_array();
    for (unsigned i = 0; i < n; i++) {
        json_array_append_new(a, json_pack("{s:s, s:I}", "name", p[i].name, "us", (json_int_t)p[i].us));
    }
    return a;
}

/* x-downtime-breakdown (docs/architecture.md, convergence): "parts" tile
 * "downtime-us"; "destination" is the destination's own measure. */
static json_t *downtime_breakdown_json(const lm_downtime_breakdown *b)
{
    json_t *o = json_object();
    json_object_set_new(o, "downtime-us", qmp_u64(b->downtime_us));
    json_object_set_new(o, "expected-downtime-us", qmp_u64(b->expected_us));
    json_object_set_new(o, "fixed-us", qmp_u64(b->fixed_us));
    /* expected-downtime-us term by term (docs/architecture.md, convergence) */
    json_object_set_new(o, "expected-parts", downtime_parts_json(b->expected, b->nexpected));
    json_object_set_new(o, "parts", downtime_parts_json(b->parts, b->nparts));
    json_object_set_new(o, "destination", downtime_parts_json(b->dest, b->ndest));
    return o;
}

/* x-convergence (docs/architecture.md, convergence): the forecast. */
static json_t *convergence_json(const lm_convergence *c)
{
    json_t *o = json_object();
    json_object_set_new(o, "pass", qmp_u64(c->pass));
    json_object_set_new(o, "dirty-rate", qmp_u64(c->dirty_rate));
    json_object_set_new(o, "tracker-dirty-rate", qmp_u64(c->tracker_dirty_rate));
    json_object_set_new(o, "vcpu-dirty-rate", qmp_u64(c->vcpu_dirty_rate));
    json_object_set_new(o, "bandwidth", qmp_u64(c->bandwidth));
    json_object_set_new(o, "ratio", json_real(isfinite(c->ratio) ? c->ratio : 0.0));
    json_object_set_new(o, "trend", json_string(c->trend));
    json_t *p = json_array();
    for (unsigned i = 0; i < c->npending && i < LM_CONVERGENCE_HISTORY; i++) {
        json_array_append_new(p, qmp_u64(c->pending[i]));
    }
    json_object_set_new(o, "remaining-history", p);
    json_object_set_new(o, "stalled-passes", qmp_u64(c->stalled_passes));
    if (c->never) {
        json_object_set_new(o, "estimated-time", json_string("never"));
    } else {
        json_object_set_new(o, "estimated-time", qmp_u64(c->eta_ms));
    }
    json_object_set_new(o, "downtime", qmp_u64(c->downtime_ms));
    if (c->heavy_vcpu >= 0) {
        json_object_set_new(o, "vcpu", json_pack("{s:i, s:I}", "cpu-index", c->heavy_vcpu,
                                                 "percent", (json_int_t)c->heavy_vcpu_percent));
    }
    if (c->heavy_block[0]) {
        json_object_set_new(o, "block", json_pack("{s:s%, s:I}", "name", c->heavy_block,
                                                  strnlen(c->heavy_block, sizeof(c->heavy_block)),
                                                  "percent", (json_int_t)c->heavy_block_percent));
    }
    json_object_set_new(o, "reason", json_stringn(c->reason, strnlen(c->reason, sizeof(c->reason))));
    return o;
}

json_t *qmp_migration_info_json(const lm_info *info)
{
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string(lm_status_name(info->status)));

    if (info->has_stats && info->status != LM_STATUS_NONE) {
        bool done = info->status == LM_STATUS_COMPLETED;
        bool switched = done || info->status == LM_STATUS_POSTCOPY_ACTIVE ||
                        info->status == LM_STATUS_POSTCOPY_PAUSED ||
                        info->status == LM_STATUS_POSTCOPY_RECOVER_SETUP ||
                        info->status == LM_STATUS_POSTCOPY_RECOVER;
        json_object_set_new(o, "total-time", qmp_u64(info->total_time_ms));
        json_object_set_new(o, "setup-time", qmp_u64(info->setup_time_ms));
        if (switched) {
            json_object_set_new(o, "downtime", qmp_u64(info->downtime_ms));
        } else {
            json_object_set_new(o, "expected-downtime", qmp_u64(info->expected_downtime_ms));
        }
        json_object_set_new(o, "remaining", qmp_u64(info->remaining));

        json_t *ram = json_object();
        json_object_set_new(ram, "transferred", qmp_u64(info->ram_transferred));
        json_object_set_new(ram, "remaining", qmp_u64(info->ram_remaining));
        json_object_set_new(ram, "total", qmp_u64(info->ram_total));
        json_object_set_new(ram, "duplicate", qmp_u64(info->ram_duplicate));
        json_object_set_new(ram, "normal", qmp_u64(info->ram_normal));
        json_object_set_new(ram, "normal-bytes", qmp_u64(info->ram_normal_bytes));
        json_object_set_new(ram, "dirty-pages-rate", qmp_u64(info->dirty_pages_rate));
        json_object_set_new(ram, "mbps", json_real(isfinite(info->mbps) && info->mbps > 0 ? info->mbps : 0.0));
        json_object_set_new(ram, "dirty-sync-count", qmp_u64(info->dirty_sync_count));
        json_object_set_new(ram, "postcopy-requests", qmp_u64(info->postcopy_requests));
        json_object_set_new(ram, "page-size", qmp_u64(info->ram_page_size));
        json_object_set_new(ram, "multifd-bytes", qmp_u64(info->multifd_bytes));
        json_object_set_new(ram, "dirty-sync-missed-zero-copy", qmp_u64(info->dirty_sync_missed_zero_copy));
        json_object_set_new(ram, "x-zero-copy-sends", qmp_u64(info->zero_copy_sends));
        json_object_set_new(ram, "x-zero-copy-copied", qmp_u64(info->zero_copy_copied));
        json_object_set_new(ram, "pages-per-second", qmp_u64(info->pages_per_second));
        json_object_set_new(ram, "precopy-bytes", qmp_u64(info->precopy_bytes));
        json_object_set_new(ram, "downtime-bytes", qmp_u64(info->downtime_bytes));
        json_object_set_new(ram, "postcopy-bytes", qmp_u64(info->postcopy_bytes));
        json_object_set_new(o, "ram", ram);

        if (!info->incoming && info->switchover_bandwidth) {
            json_object_set_new(o, "x-switchover-bandwidth", qmp_u64(info->switchover_bandwidth));
            json_object_set_new(o, "x-destination-backlog", qmp_u64(info->destination_backlog));
            json_object_set_new(o, "x-destination-drains", qmp_u64(info->destination_drains));
            json_object_set_new(o, "x-destination-load-rate", qmp_u64(info->destination_load_rate));
        }
        /* switchover-ack: the source holds the switchover for the
         * destination's devices / they acked; the destination's count. */
        if (!info->incoming && (info->switchover_ack_waiting || info->switchover_acked)) {
            json_object_set_new(o, "x-switchover-ack",
                                json_string(info->switchover_acked ? "acked" : "waiting"));
        }
        if (info->incoming && info->switchover_ack_pending) {
            json_object_set_new(o, "x-switchover-ack-pending", qmp_u64(info->switchover_ack_pending));
        }
        if (info->has_downtime_breakdown) {
            json_object_set_new(o, "x-downtime-breakdown",
                                downtime_breakdown_json(&info->downtime_breakdown));
        }
        if (info->cpu_throttle_percentage != 0) {
            json_object_set_new(o, "cpu-throttle-percentage",
                                json_integer(info->cpu_throttle_percentage));
        }
        if (!info->incoming && info->convergence.valid) {
            json_object_set_new(o, "x-convergence", convergence_json(&info->convergence));
        }
        const char *ap = info->convergence.auto_postcopy;
        if (!info->incoming && ap[0]) {
            json_t *a = json_pack("{s:s%}", "state", ap, strnlen(ap, sizeof(info->convergence.auto_postcopy)));
            if (info->convergence.auto_postcopy_pass) {
                json_object_set_new(a, "pass", qmp_u64(info->convergence.auto_postcopy_pass));
            }
            json_object_set_new(o, "x-auto-postcopy", a);
        }
        if (info->dirty_limit_active) {
            json_object_set_new(o, "dirty-limit-throttle-time-per-round",
                                qmp_u64(info->dirty_limit_throttle_time_per_round));
        }
        if (info->dirty_tracker[0]) {
            char tracker[sizeof(info->dirty_tracker) + 1];
            snprintf(tracker, sizeof(tracker), "%.*s", (int)sizeof(info->dirty_tracker),
                     info->dirty_tracker);
            json_object_set_new(o, "dirty-tracker", json_string(tracker));
        }
    }
    if (info->has_blocktime) {
        json_object_set_new(o, "postcopy-blocktime", qmp_u64(info->postcopy_blocktime_ms));
        json_t *v = json_array();
        for (unsigned i = 0; i < info->nvcpus && i < LM_MAX_VCPUS; i++) {
            json_array_append_new(v, qmp_u64(info->vcpu_blocktime_ms[i]));
        }
        json_object_set_new(o, "postcopy-vcpu-blocktime", v);
    }
    if (info->status == LM_STATUS_FAILED && info->error_desc[0]) {
        json_object_set_new(o, "error-desc", json_string(info->error_desc));
    }
    if (info->socket_address[0]) {
        json_t *sa = socket_address_json(info->socket_address);
        if (json_array_size(sa) > 0) {
            json_object_set_new(o, "socket-address", sa);
        } else {
            json_decref(sa);
        }
    }
    return o;
}

static json_t *cmd_query_migrate(void *opaque, json_t *args, lm_error *err)
{
    lm_info *info = calloc(1, sizeof(*info));
    if (!info) {
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    info->struct_size = sizeof(*info); /* the whole of this build's layout */
    lm_engine_query(opaque, info);
    if (info->status == LM_STATUS_NONE) {
        /* As QEMU: nothing to report before the first migration. */
        free(info);
        return json_object();
    }
    /* Strings from the engine are NUL-terminated by contract; make sure. */
    info->error_desc[sizeof(info->error_desc) - 1] = '\0';
    info->socket_address[sizeof(info->socket_address) - 1] = '\0';
    json_t *o = qmp_migration_info_json(info);
    free(info);
    return o;
}

/* ------------------------------------------------------------------------ */
/* calc-dirty-rate / query-dirty-rate (QEMU 5.2+; calc-time-unit 8.2). */

static json_t *cmd_calc_dirty_rate(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "calc-time", "calc-time-unit", "sample-pages", "mode",
                                         NULL };
    migration_cmds *mc = opaque;
    uint64_t calc_time = 0, sample_pages = 0;
    const char *unit = NULL, *mode = NULL;
    if (qmp_args_check(args, known, err) < 0 ||
        qmp_arg_u64(args, "calc-time", true, &calc_time, err) < 0 ||
        qmp_arg_str(args, "calc-time-unit", false, &unit, err) < 0 ||
        qmp_arg_u64(args, "sample-pages", false, &sample_pages, err) < 0 ||
        qmp_arg_str(args, "mode", false, &mode, err) < 0) {
        return NULL;
    }
    bool in_ms = unit && strcmp(unit, "millisecond") == 0;
    if (unit && !in_ms && strcmp(unit, "second") != 0) {
        lm_error_set(err, -EINVAL, "calc-time-unit '%s': expected second or millisecond", unit);
        return NULL;
    }
    if (json_object_get(args, "sample-pages") && mode && strcmp(mode, "dirty-ring") == 0) {
        lm_error_set(err, -EINVAL, "sample-pages is used only in page-sampling mode");
        return NULL;
    }
    uint64_t ms = in_ms ? calc_time : (calc_time > UINT64_MAX / 1000 ? UINT64_MAX : calc_time * 1000);
    if (json_object_get(args, "sample-pages") && sample_pages == 0) {
        lm_error_set(err, -EINVAL, "sample-pages is out of range [128, 4096]");
        return NULL;
    }
    if (lm_engine_calc_dirty_rate(mc->engine, ms, mode, sample_pages, err) < 0) {
        return NULL;
    }
    mc->dirty_rate_in_ms = in_ms;
    return json_object();
}

static const char *const dirtyrate_status_names[] = { "unstarted", "measuring", "measured" };

static json_t *cmd_query_dirty_rate(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "calc-time-unit", NULL };
    migration_cmds *mc = opaque;
    const char *unit = NULL;
    if (qmp_args_check(args, known, err) < 0 ||
        qmp_arg_str(args, "calc-time-unit", false, &unit, err) < 0) {
        return NULL;
    }
    bool in_ms = unit ? strcmp(unit, "millisecond") == 0 : mc->dirty_rate_in_ms;
    if (unit && !in_ms && strcmp(unit, "second") != 0) {
        lm_error_set(err, -EINVAL, "calc-time-unit '%s': expected second or millisecond", unit);
        return NULL;
    }
    lm_dirtyrate_info *info = calloc(1, sizeof(*info));
    if (!info) {
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    info->struct_size = sizeof(*info); /* the whole of this build's layout */
    lm_engine_query_dirty_rate(mc->engine, info);
    info->mode[sizeof(info->mode) - 1] = '\0';
    info->tracker[sizeof(info->tracker) - 1] = '\0';
    info->error[sizeof(info->error) - 1] = '\0';
    unsigned st = info->status <= LM_DIRTYRATE_MEASURED ? info->status : 0;
    json_t *o = json_pack("{s:s, s:I, s:I, s:s, s:I, s:s}", "status", dirtyrate_status_names[st],
                          "start-time", (json_int_t)info->start_time, "calc-time",
                          (json_int_t)(in_ms ? info->calc_time_ms : info->calc_time_ms / 1000),
                          "calc-time-unit", in_ms ? "millisecond" : "second", "sample-pages",
                          (json_int_t)info->sample_pages, "mode", info->mode);
    if (o && info->status == LM_DIRTYRATE_MEASURED && info->has_rate) {
        /* livemig's extensions: the pages behind the rate, per RAM block. */
        json_t *blocks = json_array();
        for (size_t i = 0; i < info->nblocks && i < LM_DIRTYRATE_MAX_BLOCKS; i++) {
            const lm_dirtyrate_block *b = &info->blocks[i];
            json_array_append_new(blocks, json_pack("{s:s%, s:I, s:I}", "name", b->name,
                                                    strnlen(b->name, sizeof(b->name)),
                                                    "dirty-pages", (json_int_t)b->dirty_pages,
                                                    "dirty-rate", (json_int_t)b->dirty_rate));
        }
        json_object_set_new(o, "dirty-rate", json_integer((json_int_t)info->dirty_rate));
        json_object_set_new(o, "x-dirty-pages", json_integer((json_int_t)info->dirty_pages));
        json_object_set_new(o, "x-dirty-tracker", json_string(info->tracker));
        json_object_set_new(o, "x-window-start-ns", json_integer((json_int_t)info->window_start_ns));
        json_object_set_new(o, "x-window-end-ns", json_integer((json_int_t)info->window_end_ns));
        json_object_set_new(o, "x-blocks", blocks);
        if (info->nvcpus) {
            /* QEMU's shape (its dirty-ring mode); here from the vCPUs' own
             * counts, which the embedder reports. */
            json_t *v = json_array();
            for (unsigned i = 0; i < info->nvcpus && i < LM_MAX_VCPUS; i++) {
                json_array_append_new(v, json_pack("{s:i, s:I, s:I}", "id", (int)i, "dirty-rate",
                                                   (json_int_t)info->vcpus[i].dirty_rate,
                                                   "x-dirty-pages",
                                                   (json_int_t)info->vcpus[i].dirty_pages));
            }
            json_object_set_new(o, "vcpu-dirty-rate", v);
        }
    } else if (o && info->status == LM_DIRTYRATE_MEASURED) {
        json_object_set_new(o, "x-error", json_string(info->error));
    }
    free(info);
    if (!o) {
        lm_error_set(err, -ENOMEM, "out of memory");
    }
    return o;
}

/* ------------------------------------------------------------------------ */
/* set-vcpu-dirty-limit / cancel-vcpu-dirty-limit / query-vcpu-dirty-limit
 * (QEMU 7.1+): per-vCPU limits in MB/s. */

static int cpu_index_arg(json_t *args, int *index, lm_error *err)
{
    uint64_t idx = 0;
    *index = -1;
    if (qmp_arg_u64(args, "cpu-index", false, &idx, err) < 0) {
        return -EINVAL;
    }
    if (json_object_get(args, "cpu-index")) {
        if (idx >= LM_MAX_VCPUS) {
            return lm_error_set(err, -EINVAL, "cpu-index %" PRIu64 " out of range", idx);
        }
        *index = (int)idx;
    }
    return 0;
}

/* set-vcpu-dirty-limit (set: with its dirty-rate) and
 * cancel-vcpu-dirty-limit take the same cpu-index, optional: every vCPU. */
static json_t *vcpu_dirty_limit_cmd(lm_engine *e, json_t *args, bool set, lm_error *err)
{
    static const char *const set_known[] = { "cpu-index", "dirty-rate", NULL };
    static const char *const cancel_known[] = { "cpu-index", NULL };
    uint64_t rate = 0;
    int index;
    if (qmp_args_check(args, set ? set_known : cancel_known, err) < 0 ||
        cpu_index_arg(args, &index, err) < 0 ||
        (set && qmp_arg_u64(args, "dirty-rate", true, &rate, err) < 0)) {
        return NULL;
    }
    int ret = set ? lm_engine_set_vcpu_dirty_limit(e, index, rate, err)
                  : lm_engine_cancel_vcpu_dirty_limit(e, index, err);
    return ret < 0 ? NULL : json_object();
}

static json_t *cmd_set_vcpu_dirty_limit(void *opaque, json_t *args, lm_error *err)
{
    return vcpu_dirty_limit_cmd(opaque, args, true, err);
}

static json_t *cmd_cancel_vcpu_dirty_limit(void *opaque, json_t *args, lm_error *err)
{
    return vcpu_dirty_limit_cmd(opaque, args, false, err);
}

/* QEMU lists the limited vCPUs; x-throttle-percent is livemig's. */
static json_t *cmd_query_vcpu_dirty_limit(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    if (qmp_args_check(args, known, err) < 0) {
        return NULL;
    }
    lm_vcpu_dirty_limit v[LM_MAX_VCPUS];
    unsigned n = lm_engine_query_vcpu_dirty_limit(opaque, v, LM_MAX_VCPUS);
    json_t *a = json_array();
    for (unsigned i = 0; i < n; i++) {
        if (v[i].limit_rate) {
            json_array_append_new(a, json_pack("{s:i, s:I, s:I, s:i}", "cpu-index", (int)v[i].cpu_index,
                                               "limit-rate", (json_int_t)v[i].limit_rate,
                                               "current-rate", (json_int_t)v[i].current_rate,
                                               "x-throttle-percent", v[i].throttle_percent));
        }
    }
    return a;
}

/* ------------------------------------------------------------------------ */

void qmp_register_migration_commands(qmp_server *s, struct lm_engine *e)
{
    migration_cmds *mc = malloc(sizeof(*mc));
    if (!mc || qmp_server_adopt(s, mc) < 0) {
        free(mc);
        return; /* out of memory at start-up: the commands stay unknown */
    }
    *mc = (migration_cmds){ s, e, false };
    qmp_server_register(s, "migrate", cmd_migrate, mc);
    qmp_server_register(s, "migrate-incoming", cmd_migrate_incoming, mc);
    qmp_server_register(s, "migrate_cancel", cmd_migrate_cancel, e);
    qmp_server_register(s, "query-migrationthreads", cmd_query_migrationthreads, e);
    qmp_server_register(s, "migrate-continue", cmd_migrate_continue, e);
    qmp_server_register(s, "migrate-start-postcopy", cmd_migrate_start_postcopy, e);
    qmp_server_register(s, "migrate-pause", cmd_migrate_pause, e);
    qmp_server_register(s, "migrate-recover", cmd_migrate_recover, e);
    qmp_server_register(s, "yank", cmd_yank, e);
    qmp_server_register(s, "query-yank", cmd_query_yank, e);
    /* What an operator needs when the in-band queue is stuck behind a
     * command waiting on a dead network (QEMU marks the same allow-oob). */
    qmp_server_allow_oob(s, "migrate-pause");
    qmp_server_allow_oob(s, "migrate-recover");
    qmp_server_allow_oob(s, "yank");
    qmp_server_register(s, "migrate-set-capabilities", cmd_migrate_set_capabilities, e);
    qmp_server_register(s, "query-migrate-capabilities", cmd_query_migrate_capabilities, e);
    qmp_server_register(s, "migrate-set-parameters", cmd_migrate_set_parameters, e);
    qmp_server_register(s, "query-migrate-parameters", cmd_query_migrate_parameters, e);
    qmp_server_register(s, "query-migrate", cmd_query_migrate, e);
    qmp_server_register(s, "calc-dirty-rate", cmd_calc_dirty_rate, mc);
    qmp_server_register(s, "query-dirty-rate", cmd_query_dirty_rate, mc);
    qmp_server_register(s, "set-vcpu-dirty-limit", cmd_set_vcpu_dirty_limit, e);
    qmp_server_register(s, "cancel-vcpu-dirty-limit", cmd_cancel_vcpu_dirty_limit, e);
    qmp_server_register(s, "query-vcpu-dirty-limit", cmd_query_vcpu_dirty_limit, e);
    qmp_register_history_commands(s, e);
}

void qmp_emit_migration_event(qmp_server *s, const struct lm_event *ev)
{
    if (!s || !ev) {
        return;
    }
    switch (ev->kind) {
    case LM_EVENT_MIGRATION:
        qmp_server_emit(s, "MIGRATION",
                        json_pack("{s:s}", "status", lm_status_name(ev->status)));
        break;
    case LM_EVENT_MIGRATION_PASS:
        qmp_server_emit(s, "MIGRATION_PASS", json_pack("{s:I}", "pass", (json_int_t)ev->pass));
        break;
    case LM_EVENT_AUTO_POSTCOPY:
        qmp_server_emit(s, "X_AUTO_POSTCOPY", json_pack("{s:I, s:s}", "pass", (json_int_t)ev->pass,
                                                        "action", ev->detail ? ev->detail : ""));
        break;
    }
}
