/* Migration orchestration: see orchestrate.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "orchestrate.h"
#include "progress.h"
#include "qmp_client.h"

#define POLL_MS 100
#define DEST_WAIT_MS 30000
#define CANCEL_WAIT_MS 15000

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "on", "true", "yes", "1", NULL };
    static const char *const no[] = { "off", "false", "no", "0", NULL };
    for (int i = 0; yes[i]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* [{capability, state}] from "NAME" / "NAME=on|off". */
static int build_caps(const mig_opts *o, json_t **out, lm_error *err)
{
    json_t *list = json_array();
    for (size_t i = 0; i < o->ncaps; i++) {
        const char *c = o->caps[i];
        const char *eq = strchr(c, '=');
        bool on = true;
        char name[128];
        size_t nl = eq ? (size_t)(eq - c) : strlen(c);
        if (nl == 0 || nl >= sizeof(name) || (eq && parse_bool(eq + 1, &on) < 0)) {
            json_decref(list);
            return lm_error_set(err, -EINVAL, "bad --cap '%s' (NAME or NAME=on|off)", c);
        }
        memcpy(name, c, nl);
        name[nl] = '\0';
        json_array_append_new(list, json_pack("{s:s,s:b}", "capability", name, "state", on));
    }
    *out = list;
    return 0;
}

/* {"name": value} typed after the parameter's current value on the source. */
static int build_params(qmpc *src, const mig_opts *o, json_t **out, lm_error *err)
{
    json_t *cur = NULL;
    int r = qmpc_execute(src, "query-migrate-parameters", NULL, QMPC_DEFAULT_TIMEOUT_MS, &cur, err);
    if (r < 0) {
        return r;
    }
    json_t *set = json_object();
    for (size_t i = 0; i < o->nparams; i++) {
        const char *p = o->params[i];
        const char *eq = strchr(p, '=');
        if (!eq || eq == p) {
            r = lm_error_set(err, -EINVAL, "bad --param '%s' (NAME=VALUE)", p);
            goto out;
        }
        char *name = strndup(p, (size_t)(eq - p));
        const char *val = eq + 1;
        json_t *now = json_object_get(cur, name);
        json_t *v = NULL;
        if (!now) {
            r = lm_error_set(err, -EINVAL, "unknown migration parameter '%s' "
                             "(query-migrate-parameters lists them)", name);
        } else if (json_is_integer(now) || json_is_real(now)) {
            uint64_t u;
            if (cli_parse_size(val, &u) < 0 || u > (uint64_t)INT64_MAX) {
                r = lm_error_set(err, -EINVAL, "parameter '%s' wants a number (K/M/G allowed), "
                                 "not '%s'", name, val);
            } else {
                v = json_integer((json_int_t)u);
            }
        } else if (json_is_boolean(now)) {
            bool b;
            if (parse_bool(val, &b) < 0) {
                r = lm_error_set(err, -EINVAL, "parameter '%s' wants on/off, not '%s'", name, val);
            } else {
                v = json_boolean(b);
            }
        } else {
            v = json_string(val);
        }
        if (v) {
            json_object_set_new(set, name, v);
        }
        free(name);
        if (r < 0) {
            goto out;
        }
    }
    *out = set;
    set = NULL;
out:
    json_decref(set);
    json_decref(cur);
    return r;
}

static int side_error(lm_error *err, const char *side, const lm_error *e)
{
    return lm_error_set(err, e->code, "%s: %s", side, e->msg);
}

static bool is_terminal(const char *status)
{
    return strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
           strcmp(status, "cancelled") == 0;
}

static void drain_events(qmpc *c)
{
    json_t *ev;
    while ((ev = qmpc_next_event(c, 0))) {
        json_decref(ev);
    }
}

static void record(mig_result *res, json_t *info)
{
    json_t *ram = json_object_get(info, "ram");
    snprintf(res->status, sizeof(res->status), "%s", cli_migration_status(info));
    res->total_ms = cli_json_u64(info, "total-time");
    res->setup_ms = cli_json_u64(info, "setup-time");
    res->downtime_ms = cli_json_u64(info, "downtime");
    res->transferred = cli_json_u64(ram, "transferred");
    res->passes = cli_json_u64(ram, "dirty-sync-count");
    res->mbps = cli_json_num(ram, "mbps");
}

/* Poll the source until the migration ends; returns its last info. */
static int follow_source(qmpc *src, const mig_opts *o, mig_result *res, lm_error *err)
{
    progress bar;
    progress_init(&bar, stderr);
    int64_t start = cli_now_ms();
    int64_t deadline = o->timeout_s > 0 ? start + (int64_t)(o->timeout_s * 1000.0) : -1;
    int64_t cancel_deadline = -1;
    char why[128] = "";
    int r = 0;

    for (;;) {
        json_t *info = NULL;
        lm_error e = LM_ERROR_INIT;
        /* Answer the user's ^C even while waiting for the reply. */
        r = qmpc_execute(src, "query-migrate", NULL, QMPC_DEFAULT_TIMEOUT_MS, &info, &e);
        if (r == -EINTR) {
            cli_interrupted = 1;
        } else if (r < 0) {
            progress_finish(&bar);
            return side_error(err, "source", &e);
        } else {
            drain_events(src);
            progress_update(&bar, info);
            record(res, info);
            const char *status = cli_migration_status(info);
            if (is_terminal(status)) {
                progress_finish(&bar);
                if (strcmp(status, "completed") == 0 && !why[0]) {
                    json_decref(info);
                    return 0;
                }
                const char *desc = cli_json_str(info, "error-desc");
                if (why[0]) {
                    r = lm_error_set(err, -ECANCELED, "%s", why);
                } else if (strcmp(status, "cancelled") == 0) {
                    r = lm_error_set(err, -ECANCELED, "migration cancelled");
                } else {
                    r = lm_error_set(err, -EIO, "migration failed: %s",
                                     desc[0] ? desc : "(no error description)");
                }
                json_decref(info);
                return r;
            }
            json_decref(info);
        }

        int64_t now = cli_now_ms();
        if (!why[0] && (cli_interrupted || (deadline >= 0 && now >= deadline))) {
            if (cli_interrupted) {
                snprintf(why, sizeof(why), "interrupted: migration cancelled");
            } else {
                snprintf(why, sizeof(why), "timed out after %.1f s: migration cancelled",
                         o->timeout_s);
            }
            progress_finish(&bar);
            fprintf(stderr, "livemig: %s, cancelling the migration...\n",
                    cli_interrupted ? "interrupted" : "timeout");
            /* Let the waits below run despite the flag. */
            cli_interrupted = 0;
            lm_error ce = LM_ERROR_INIT;
            if (qmpc_execute(src, "migrate_cancel", NULL, QMPC_DEFAULT_TIMEOUT_MS, NULL, &ce) < 0) {
                fprintf(stderr, "livemig: migrate_cancel: %s\n", ce.msg);
            }
            cancel_deadline = now + CANCEL_WAIT_MS;
        }
        if (cancel_deadline >= 0 && now >= cancel_deadline) {
            return lm_error_set(err, -ETIMEDOUT, "%s (the source did not confirm)", why);
        }
        if (cli_interrupted && why[0]) {
            /* A second ^C: stop waiting for the cancellation. */
            return lm_error_set(err, -EINTR, "%s", why);
        }
        cli_sleep_ms(POLL_MS);
    }
}

/* The source often knows only that its peer went away; the destination
 * usually knows why (a size mismatch, a UUID check).  Say it. */
static void explain_from_destination(qmpc *dst)
{
    json_t *info = NULL;
    lm_error e = LM_ERROR_INIT;
    if (qmpc_execute(dst, "query-migrate", NULL, QMPC_DEFAULT_TIMEOUT_MS, &info, &e) < 0) {
        return;
    }
    const char *desc = cli_json_str(info, "error-desc");
    if (desc[0]) {
        fprintf(stderr, "livemig: destination: %s\n", desc);
    }
    json_decref(info);
}

/* Wait for the destination to finish loading. */
static int wait_destination(qmpc *dst, lm_error *err)
{
    int64_t deadline = cli_now_ms() + DEST_WAIT_MS;
    for (;;) {
        json_t *info = NULL;
        lm_error e = LM_ERROR_INIT;
        if (qmpc_execute(dst, "query-migrate", NULL, QMPC_DEFAULT_TIMEOUT_MS, &info, &e) < 0) {
            return side_error(err, "destination", &e);
        }
        drain_events(dst);
        const char *status = cli_migration_status(info);
        if (strcmp(status, "completed") == 0) {
            json_decref(info);
            return 0;
        }
        if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0) {
            int r = lm_error_set(err, -EIO, "destination: migration %s: %s", status,
                                 cli_json_str(info, "error-desc"));
            json_decref(info);
            return r;
        }
        json_decref(info);
        if (cli_now_ms() > deadline) {
            return lm_error_set(err, -ETIMEDOUT,
                                "destination: still '%s' %d s after the source completed",
                                status, DEST_WAIT_MS / 1000);
        }
        if (cli_interrupted) {
            return lm_error_set(err, -EINTR, "interrupted");
        }
        cli_sleep_ms(50);
    }
}

static void verify_destination(qmpc *dst, mig_result *res)
{
    json_t *v = NULL;
    lm_error e = LM_ERROR_INIT;
    /* Checking a large guest takes a while. */
    if (qmpc_execute(dst, "x-verify-memory", NULL, 120000, &v, &e) < 0) {
        if (e.code == -EREMOTEIO && strcmp(qmpc_last_error_class(dst), "CommandNotFound") == 0) {
            snprintf(res->verify_msg, sizeof(res->verify_msg),
                     "not available (the destination has no x-verify-memory)");
            return;
        }
        res->verify_ran = true;
        res->verify_ok = false;
        snprintf(res->verify_msg, sizeof(res->verify_msg), "%s", e.msg);
        return;
    }
    res->verify_ran = true;
    json_t *mm = json_object_get(v, "mismatches");
    json_t *ok = json_object_get(v, "ok");
    if (json_is_boolean(ok)) {
        res->verify_ok = json_is_true(ok);
    } else {
        res->verify_ok = json_is_integer(mm) && json_integer_value(mm) == 0;
    }
    const char *msg = cli_json_str(v, "message");
    uint64_t mism = cli_json_u64(v, "mismatches");
    if (res->verify_ok && msg[0]) {
        snprintf(res->verify_msg, sizeof(res->verify_msg), "%s", msg);
    } else if (res->verify_ok) {
        snprintf(res->verify_msg, sizeof(res->verify_msg), "%llu pages consistent",
                 (unsigned long long)cli_json_u64(v, "pages"));
    } else {
        snprintf(res->verify_msg, sizeof(res->verify_msg), "%llu mismatches%s%s",
                 (unsigned long long)mism, msg[0] ? ", first: " : "", msg);
    }
    json_decref(v);
}

int mig_run(const mig_opts *o, mig_result *res, lm_error *err)
{
    qmpc *src = NULL, *dst = NULL;
    json_t *caps = NULL, *params = NULL;
    char tmpdir[64] = "";
    char uri_buf[160];
    const char *uri = o->uri;
    lm_error e = LM_ERROR_INIT;
    int r;

    memset(res, 0, sizeof(*res));
    qmpc_set_abort_flag(&cli_interrupted);

    if (o->no_incoming && !uri) {
        return lm_error_set(err, -EINVAL, "--no-incoming needs --uri (where the destination listens)");
    }
    if ((r = qmpc_connect(o->src, 5000, &src, &e)) < 0) {
        r = side_error(err, "source", &e);
        goto out;
    }
    if ((r = qmpc_connect(o->dst, 5000, &dst, &e)) < 0) {
        r = side_error(err, "destination", &e);
        goto out;
    }

    /* Refuse early when the source is busy. */
    json_t *info = NULL;
    if ((r = qmpc_execute(src, "query-migrate", NULL, QMPC_DEFAULT_TIMEOUT_MS, &info, &e)) < 0) {
        r = side_error(err, "source", &e);
        goto out;
    }
    const char *st = cli_migration_status(info);
    if (strcmp(st, "none") != 0 && !is_terminal(st)) {
        r = lm_error_set(err, -EBUSY, "source: a migration is already in progress (status %s)", st);
        json_decref(info);
        goto out;
    }
    json_decref(info);

    if ((r = build_caps(o, &caps, err)) < 0) {
        goto out;
    }
    if (json_array_size(caps) > 0) {
        if ((r = qmpc_execute(dst, "migrate-set-capabilities", json_pack("{s:O}", "capabilities", caps),
                              QMPC_DEFAULT_TIMEOUT_MS, NULL, &e)) < 0) {
            r = side_error(err, "destination", &e);
            goto out;
        }
        if ((r = qmpc_execute(src, "migrate-set-capabilities", json_pack("{s:O}", "capabilities", caps),
                              QMPC_DEFAULT_TIMEOUT_MS, NULL, &e)) < 0) {
            r = side_error(err, "source", &e);
            goto out;
        }
    }
    if (o->nparams > 0) {
        if ((r = build_params(src, o, &params, &e)) < 0) {
            r = side_error(err, "source", &e);
            goto out;
        }
        /* Channel layout must match on both sides. */
        json_t *dparams = json_object();
        const char *k;
        json_t *v;
        json_object_foreach(params, k, v) {
            if (strncmp(k, "multifd-", 8) == 0) {
                json_object_set(dparams, k, v);
            }
        }
        if (json_object_size(dparams) > 0) {
            if ((r = qmpc_execute(dst, "migrate-set-parameters", dparams, QMPC_DEFAULT_TIMEOUT_MS,
                                  NULL, &e)) < 0) {
                r = side_error(err, "destination", &e);
                goto out;
            }
        } else {
            json_decref(dparams);
        }
        if ((r = qmpc_execute(src, "migrate-set-parameters", json_incref(params),
                              QMPC_DEFAULT_TIMEOUT_MS, NULL, &e)) < 0) {
            r = side_error(err, "source", &e);
            goto out;
        }
    }

    if (!uri) {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/livemig-mig-XXXXXX");
        if (!mkdtemp(tmpdir)) {
            r = lm_error_set_errno(err, -errno, "mkdtemp");
            tmpdir[0] = '\0';
            goto out;
        }
        snprintf(uri_buf, sizeof(uri_buf), "unix:%s/migrate.sock", tmpdir);
        uri = uri_buf;
    }
    if (!o->no_incoming) {
        /* exit-on-error off: the destination stays up after a failure, so
         * its error can be read and reported. */
        if ((r = qmpc_execute(dst, "migrate-incoming",
                              json_pack("{s:s,s:b}", "uri", uri, "exit-on-error", 0),
                              QMPC_DEFAULT_TIMEOUT_MS, NULL, &e)) < 0) {
            r = side_error(err, "destination: migrate-incoming", &e);
            goto out;
        }
    }
    if ((r = qmpc_execute(src, "migrate", json_pack("{s:s}", "uri", uri),
                          QMPC_DEFAULT_TIMEOUT_MS, NULL, &e)) < 0) {
        r = side_error(err, "source: migrate", &e);
        goto out;
    }

    if ((r = follow_source(src, o, res, err)) < 0) {
        explain_from_destination(dst);
        goto out;
    }
    if ((r = wait_destination(dst, err)) < 0) {
        goto out;
    }
    res->completed = true;
    if (o->verify) {
        verify_destination(dst, res);
    }
    r = 0;

out:
    json_decref(caps);
    json_decref(params);
    qmpc_close(src);
    qmpc_close(dst);
    if (tmpdir[0]) {
        cli_rmtree(tmpdir);
    }
    return r;
}

void mig_print_summary(const mig_result *r, FILE *out)
{
    char sz[32], rate[32];
    fprintf(out, "Migration %s\n", r->completed ? "completed" : r->status[0] ? r->status : "failed");
    fprintf(out, "  total time:    %llu ms (setup %llu ms)\n", (unsigned long long)r->total_ms,
            (unsigned long long)r->setup_ms);
    if (r->completed) {
        fprintf(out, "  downtime:      %llu ms\n", (unsigned long long)r->downtime_ms);
    }
    fprintf(out, "  transferred:   %s\n", cli_fmt_size(r->transferred, sz, sizeof(sz)));
    fprintf(out, "  throughput:    %s\n", cli_fmt_mbps(r->mbps, rate, sizeof(rate)));
    fprintf(out, "  passes:        %llu\n", (unsigned long long)r->passes);
    if (r->completed) {
        fprintf(out, "  verification:  %s%s%s\n",
                !r->verify_ran ? "skipped" : r->verify_ok ? "passed" : "FAILED",
                r->verify_msg[0] ? ": " : "", r->verify_msg);
    }
}
