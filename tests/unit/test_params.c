/*
 * The parameter table (core/params.c) walked row by row through the API:
 * names unique, defaults within their own bounds or choices, set/get
 * round trips of every type, bad values refused with a message naming the
 * parameter, the cross-parameter checks, and the rule that only QEMU's
 * live parameters change while a migration runs.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/engine_internal.h"
#include "livemig/engine.h"

/* QEMU's parameters that may change while a migration runs
 * (migrate-set-parameters mid-migration), stated here independently of
 * the table so that a row marked wrongly shows. */
static const char *const live_names[] = {
    "max-bandwidth", "downtime-limit", "avail-switchover-bandwidth",
    "throttle-trigger-threshold", "cpu-throttle-increment", "max-cpu-throttle",
    "cpu-throttle-tailslow", "max-postcopy-bandwidth", "x-vcpu-dirty-limit-period",
    "vcpu-dirty-limit", "x-auto-postcopy-passes", "x-auto-postcopy-time", NULL,
};

static bool is_live(const char *name)
{
    for (const char *const *n = live_names; *n; n++) {
        if (!strcmp(*n, name)) {
            return true;
        }
    }
    return false;
}

/* A fresh engine on which every row can take its whole range: the
 * throttle starts at its lowest (max-cpu-throttle may then go to 1) and
 * multifd is on (zero-copy-send needs it). */
static lm_engine *fresh_engine(void)
{
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(NULL, NULL, &err);
    assert_non_null(e);
    assert_int_equal(lm_engine_set_param_u64(e, "cpu-throttle-initial", 1, &err), 0);
    assert_int_equal(lm_engine_set_capability(e, "multifd", true, &err), 0);
    return e;
}

static size_t count_rows(void)
{
    size_t n = 0;
    for (const lm_param_desc *d = lm_param_descs(); d->name; d++) {
        n++;
    }
    return n;
}

static void test_rows_consistent(void **state)
{
    (void)state;
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(NULL, NULL, &err);
    assert_non_null(e);
    const lm_param_desc *descs = lm_param_descs();
    size_t n = count_rows();
    assert_true(n > 0);
    for (size_t i = 0; i < n; i++) {
        const lm_param_desc *d = &descs[i];
        assert_true(d->name[0] != '\0');
        for (size_t j = 0; j < i; j++) {
            if (!strcmp(descs[j].name, d->name)) {
                fail_msg("parameter '%s' listed twice", d->name);
            }
        }
        switch (d->type) {
        case LM_PARAM_U64: {
            uint64_t v;
            assert_int_equal(lm_engine_get_param_u64(e, d->name, &v, &err), 0);
            assert_true(d->min <= d->max);
            if (v < d->min || v > d->max) {
                fail_msg("'%s' defaults to %llu, outside %llu..%llu", d->name,
                         (unsigned long long)v, (unsigned long long)d->min,
                         (unsigned long long)d->max);
            }
            assert_null(d->choices);
            break;
        }
        case LM_PARAM_BOOL: {
            bool v;
            assert_int_equal(lm_engine_get_param_bool(e, d->name, &v, &err), 0);
            break;
        }
        case LM_PARAM_STR: {
            char buf[LM_URI_MAX];
            assert_int_equal(lm_engine_get_param_str(e, d->name, buf, sizeof(buf), &err), 0);
            if (d->choices) {
                bool found = false;
                for (const char *const *c = d->choices; *c; c++) {
                    found |= !strcmp(*c, buf);
                    for (const char *const *o = d->choices; o < c; o++) {
                        assert_string_not_equal(*o, *c);
                    }
                }
                if (!found) {
                    fail_msg("'%s' defaults to '%s', not one of its choices", d->name, buf);
                }
            }
            break;
        }
        default:
            fail_msg("'%s' has an unknown type %d", d->name, (int)d->type);
        }
    }
    for (const char *const *l = live_names; *l; l++) {
        bool listed = false;
        for (size_t i = 0; i < n; i++) {
            listed |= !strcmp(descs[i].name, *l);
        }
        if (!listed) {
            fail_msg("live parameter '%s' is not in the table", *l);
        }
    }
    /* The zero-copy-send parameter and capability are one switch. */
    bool param, cap;
    assert_int_equal(lm_engine_get_param_bool(e, "zero-copy-send", &param, &err), 0);
    assert_int_equal(lm_engine_get_capability(e, "zero-copy-send", &cap, &err), 0);
    assert_true(param == cap);
    lm_engine_free(e);
}

static void round_trip_u64(lm_engine *e, const lm_param_desc *d, uint64_t v)
{
    lm_error err = LM_ERROR_INIT;
    uint64_t got = ~v;
    if (lm_engine_set_param_u64(e, d->name, v, &err) != 0) {
        fail_msg("'%s' = %llu refused: %s", d->name, (unsigned long long)v, err.msg);
    }
    assert_int_equal(lm_engine_get_param_u64(e, d->name, &got, &err), 0);
    assert_true(got == v);
}

static void round_trip_bool(lm_engine *e, const lm_param_desc *d, bool v)
{
    lm_error err = LM_ERROR_INIT;
    bool got = !v;
    if (lm_engine_set_param_bool(e, d->name, v, &err) != 0) {
        fail_msg("'%s' = %d refused: %s", d->name, v, err.msg);
    }
    assert_int_equal(lm_engine_get_param_bool(e, d->name, &got, &err), 0);
    assert_true(got == v);
}

static void round_trip_str(lm_engine *e, const lm_param_desc *d, const char *v)
{
    lm_error err = LM_ERROR_INIT;
    char buf[LM_URI_MAX];
    if (lm_engine_set_param_str(e, d->name, v, &err) != 0) {
        fail_msg("'%s' = '%s' refused: %s", d->name, v, err.msg);
    }
    assert_int_equal(lm_engine_get_param_str(e, d->name, buf, sizeof(buf), &err), 0);
    assert_string_equal(buf, v);
}

static void test_round_trip(void **state)
{
    (void)state;
    for (const lm_param_desc *d = lm_param_descs(); d->name; d++) {
        lm_engine *e = fresh_engine();
        switch (d->type) {
        case LM_PARAM_U64:
            round_trip_u64(e, d, d->max);
            round_trip_u64(e, d, d->min);
            round_trip_u64(e, d, d->min + (d->max - d->min) / 2);
            break;
        case LM_PARAM_BOOL:
            round_trip_bool(e, d, true);
            round_trip_bool(e, d, false);
            break;
        case LM_PARAM_STR:
            if (d->choices) {
                for (const char *const *c = d->choices; *c; c++) {
                    round_trip_str(e, d, *c);
                }
            } else {
                round_trip_str(e, d, "obj0");
                round_trip_str(e, d, "");
            }
            break;
        }
        lm_engine_free(e);
    }
}

/* The enum parameters reach lm_params as the enums the code compares. */
static void test_enum_values(void **state)
{
    (void)state;
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = fresh_engine();
    assert_int_equal(e->params.x_dirty_tracker, LM_DIRTY_TRACKER_AUTO);
    assert_int_equal(e->params.multifd_compression, LM_MULTIFD_COMP_NONE);
    assert_int_equal(e->params.zero_page_detection, LM_ZERO_MULTIFD);
    assert_int_equal(lm_engine_set_param_str(e, "x-dirty-tracker", "dirty-log", &err), 0);
    assert_int_equal(e->params.x_dirty_tracker, LM_DIRTY_TRACKER_DIRTY_LOG);
    assert_int_equal(lm_engine_set_param_str(e, "x-dirty-tracker", "uffd-wp", &err), 0);
    assert_int_equal(e->params.x_dirty_tracker, LM_DIRTY_TRACKER_UFFD_WP);
    assert_int_equal(lm_engine_set_param_str(e, "x-dirty-tracker", "manual", &err), 0);
    assert_int_equal(e->params.x_dirty_tracker, LM_DIRTY_TRACKER_MANUAL);
    assert_int_equal(lm_engine_set_param_str(e, "multifd-compression", "zstd", &err), 0);
    assert_int_equal(e->params.multifd_compression, LM_MULTIFD_COMP_ZSTD);
    assert_string_equal(lm_multifd_compression_name(LM_MULTIFD_COMP_ZSTD), "zstd");
    assert_string_equal(lm_multifd_compression_name(LM_MULTIFD_COMP_NONE), "none");
    assert_int_equal(lm_engine_set_param_str(e, "zero-page-detection", "legacy", &err), 0);
    assert_int_equal(e->params.zero_page_detection, LM_ZERO_LEGACY);
    assert_int_equal(lm_engine_set_param_str(e, "zero-page-detection", "none", &err), 0);
    assert_int_equal(e->params.zero_page_detection, LM_ZERO_NONE);
    lm_engine_free(e);
}

/* Expects ret to be code, with a message that names the parameter. */
static void expect_refused(int ret, int code, const lm_error *err, const char *name)
{
    if (ret != code) {
        fail_msg("'%s': got %d, expected %d (%s)", name, ret, code, err->msg);
    }
    if (!strstr(err->msg, name)) {
        fail_msg("'%s' refused with a message that does not name it: %s", name, err->msg);
    }
}

static void test_bad_values(void **state)
{
    (void)state;
    lm_engine *e = fresh_engine();
    for (const lm_param_desc *d = lm_param_descs(); d->name; d++) {
        lm_error err = LM_ERROR_INIT;
        switch (d->type) {
        case LM_PARAM_U64: {
            uint64_t before, after;
            assert_int_equal(lm_engine_get_param_u64(e, d->name, &before, &err), 0);
            if (d->max < UINT64_MAX) {
                expect_refused(lm_engine_set_param_u64(e, d->name, d->max + 1, &err), -ERANGE,
                               &err, d->name);
                assert_non_null(strstr(err.msg, "expects a value between"));
                lm_error_clear(&err);
            }
            if (d->min > 0) {
                expect_refused(lm_engine_set_param_u64(e, d->name, d->min - 1, &err), -ERANGE,
                               &err, d->name);
                lm_error_clear(&err);
            }
            assert_int_equal(lm_engine_get_param_u64(e, d->name, &after, &err), 0);
            assert_true(before == after);
            /* The wrong type for the row. */
            expect_refused(lm_engine_set_param_bool(e, d->name, true, &err), -EINVAL, &err,
                           d->name);
            break;
        }
        case LM_PARAM_BOOL:
            expect_refused(lm_engine_set_param_str(e, d->name, "on", &err), -EINVAL, &err,
                           d->name);
            break;
        case LM_PARAM_STR: {
            char before[LM_URI_MAX], after[LM_URI_MAX];
            assert_int_equal(lm_engine_get_param_str(e, d->name, before, sizeof(before), &err), 0);
            if (d->choices) {
                expect_refused(lm_engine_set_param_str(e, d->name, "warp-drive", &err), -EINVAL,
                               &err, d->name);
                assert_non_null(strstr(err.msg, "does not accept value 'warp-drive'"));
            } else {
                char big[4096];
                memset(big, 'x', sizeof(big) - 1);
                big[sizeof(big) - 1] = '\0';
                expect_refused(lm_engine_set_param_str(e, d->name, big, &err), -ENAMETOOLONG,
                               &err, d->name);
            }
            lm_error_clear(&err);
            assert_int_equal(lm_engine_get_param_str(e, d->name, after, sizeof(after), &err), 0);
            assert_string_equal(before, after);
            expect_refused(lm_engine_get_param_u64(e, d->name, &(uint64_t){ 0 }, &err), -EINVAL,
                           &err, d->name);
            break;
        }
        }
    }
    lm_error err = LM_ERROR_INIT;
    expect_refused(lm_engine_set_param_u64(e, "warp-factor", 9, &err), -ENOENT, &err,
                   "warp-factor");
    lm_engine_free(e);
}

/* The checks across parameters (QEMU's migrate_params_check and the
 * capability rules zero-copy-send obeys). */
static void test_cross_checks(void **state)
{
    (void)state;
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(NULL, NULL, &err);
    assert_non_null(e);
    assert_int_equal(lm_engine_set_param_u64(e, "max-cpu-throttle", 50, &err), 0);
    expect_refused(lm_engine_set_param_u64(e, "cpu-throttle-initial", 60, &err), -ERANGE, &err,
                   "max-cpu-throttle");
    lm_error_clear(&err);
    uint64_t v;
    assert_int_equal(lm_engine_get_param_u64(e, "cpu-throttle-initial", &v, &err), 0);
    assert_int_equal(v, 20);
    expect_refused(lm_engine_set_param_u64(e, "max-cpu-throttle", 10, &err), -ERANGE, &err,
                   "max-cpu-throttle");
    lm_error_clear(&err);

    /* zero-copy-send without multifd: refused as a parameter as it is as
     * a capability; with it, the parameter turns the capability on. */
    expect_refused(lm_engine_set_param_bool(e, "zero-copy-send", true, &err), -EINVAL, &err,
                   "zero-copy-send");
    lm_error_clear(&err);
    assert_int_equal(lm_engine_set_capability(e, "multifd", true, &err), 0);
    assert_int_equal(lm_engine_set_param_bool(e, "zero-copy-send", true, &err), 0);
    bool on = false;
    assert_int_equal(lm_engine_get_capability(e, "zero-copy-send", &on, &err), 0);
    assert_true(on);
    assert_int_equal(lm_engine_set_capability(e, "zero-copy-send", false, &err), 0);
    assert_int_equal(lm_engine_get_param_bool(e, "zero-copy-send", &on, &err), 0);
    assert_false(on);
    lm_engine_free(e);
}

/* A migration that runs: the engine's status says so (no thread needed
 * for the check, which reads only the status). */
static void set_status(lm_engine *e, lm_status s)
{
    pthread_mutex_lock(&e->lock);
    e->status = s;
    pthread_mutex_unlock(&e->lock);
}

static void test_live_only_while_running(void **state)
{
    (void)state;
    lm_engine *e = fresh_engine();
    set_status(e, LM_STATUS_ACTIVE);
    for (const lm_param_desc *d = lm_param_descs(); d->name; d++) {
        lm_error err = LM_ERROR_INIT;
        int ret = 0;
        /* Each parameter set to its current value: only the rule can refuse. */
        switch (d->type) {
        case LM_PARAM_U64: {
            uint64_t v;
            assert_int_equal(lm_engine_get_param_u64(e, d->name, &v, &err), 0);
            ret = lm_engine_set_param_u64(e, d->name, v, &err);
            break;
        }
        case LM_PARAM_BOOL: {
            bool v;
            assert_int_equal(lm_engine_get_param_bool(e, d->name, &v, &err), 0);
            ret = lm_engine_set_param_bool(e, d->name, v, &err);
            break;
        }
        case LM_PARAM_STR: {
            char v[LM_URI_MAX];
            assert_int_equal(lm_engine_get_param_str(e, d->name, v, sizeof(v), &err), 0);
            ret = lm_engine_set_param_str(e, d->name, v, &err);
            break;
        }
        }
        if (is_live(d->name)) {
            if (ret != 0) {
                fail_msg("live parameter '%s' refused mid-migration: %s", d->name, err.msg);
            }
        } else {
            expect_refused(ret, -EBUSY, &err, d->name);
        }
    }
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_engine_set_capability(e, "events", true, &err), -EBUSY);
    set_status(e, LM_STATUS_NONE);
    lm_error_clear(&err);
    assert_int_equal(lm_engine_set_param_u64(e, "multifd-channels", 4, &err), 0);
    lm_engine_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_consistent),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_enum_values),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_cross_checks),
        cmocka_unit_test(test_live_only_while_running),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
