/*
 * The dirty-limit API (include/livemig/vcpu.h) with a fake embedder: two
 * vCPUs whose counters the test drives.  vCPU 0 "dirties" far over any
 * limit, vCPU 1 nothing: the controller must throttle vCPU 0 alone, and
 * lift it when the limit is cancelled.  Bad input is refused with a
 * message.  No timing threshold: the waits are for events, bounded only
 * so that a broken controller fails instead of hanging.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "livemig/engine.h"
#include "livemig/vcpu.h"

typedef struct fake {
    uint64_t pages[2];   /* atomics */
    int throttle[2];     /* atomics: the last percent each vCPU was given */
    int calls[2];        /* atomics */
} fake;

static uint64_t fake_dirty_pages(void *opaque, unsigned index)
{
    fake *f = opaque;
    /* vCPU 0 wrote 100 000 more pages since the last look (GBs per
     * period at any period), vCPU 1 none. */
    if (index == 0) {
        return __atomic_add_fetch(&f->pages[0], 100000, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&f->pages[1], __ATOMIC_RELAXED);
}

static void fake_throttle(void *opaque, unsigned index, int percent)
{
    fake *f = opaque;
    __atomic_store_n(&f->throttle[index], percent, __ATOMIC_RELAXED);
    __atomic_add_fetch(&f->calls[index], 1, __ATOMIC_RELAXED);
}

static const lm_vcpu_ops ops = { fake_dirty_pages, fake_throttle };

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Waits (at most ~60 s) until vCPU index's throttle satisfies the test. */
static int wait_throttle(fake *f, unsigned index, int above)
{
    for (int i = 0; i < 60000; i++) {
        int t = __atomic_load_n(&f->throttle[index], __ATOMIC_RELAXED);
        if (above >= 0 ? t > above : t == 0) {
            return t;
        }
        sleep_ms(1);
    }
    return -1;
}

static void test_refusals(void **state)
{
    (void)state;
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(NULL, NULL, &err);
    assert_non_null(e);
    assert_int_equal(lm_engine_set_vcpu_dirty_limit(e, 0, 1, &err), -ENOTSUP);
    assert_non_null(strstr(err.msg, "lm_engine_set_vcpu_ops"));
    lm_error_clear(&err);
    assert_int_equal(lm_engine_set_vcpu_ops(e, 0, &ops, NULL, &err), -EINVAL);
    lm_error_clear(&err);
    lm_vcpu_ops half = { fake_dirty_pages, NULL };
    assert_int_equal(lm_engine_set_vcpu_ops(e, 2, &half, NULL, &err), -EINVAL);
    lm_error_clear(&err);
    fake f;
    memset(&f, 0, sizeof(f));
    assert_int_equal(lm_engine_set_vcpu_ops(e, 2, &ops, &f, &err), 0);
    assert_int_equal(lm_engine_set_vcpu_ops(e, 2, &ops, &f, &err), -EBUSY);
    lm_error_clear(&err);
    assert_int_equal(lm_engine_set_vcpu_dirty_limit(e, 2, 1, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "out of range"));
    lm_error_clear(&err);
    assert_int_equal(lm_engine_set_vcpu_dirty_limit(e, 0, 0, &err), -EINVAL);
    lm_error_clear(&err);
    lm_vcpu_dirty_limit q[4];
    assert_int_equal(lm_engine_query_vcpu_dirty_limit(e, q, 4), 2);
    assert_int_equal(q[0].limit_rate, 0);
    assert_int_equal(q[1].limit_rate, 0);
    lm_engine_free(e);
}

static void test_throttles_only_the_heavy_vcpu(void **state)
{
    (void)state;
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(NULL, NULL, &err);
    assert_non_null(e);
    fake f;
    memset(&f, 0, sizeof(f));
    assert_int_equal(lm_engine_set_vcpu_ops(e, 2, &ops, &f, &err), 0);
    assert_int_equal(lm_engine_set_param_u64(e, "x-vcpu-dirty-limit-period", 5, &err), 0);
    /* Every vCPU limited (QEMU's set-vcpu-dirty-limit without cpu-index). */
    assert_int_equal(lm_engine_set_vcpu_dirty_limit(e, -1, 1, &err), 0);
    assert_true(wait_throttle(&f, 0, 50) > 50);
    lm_vcpu_dirty_limit q[2];
    assert_int_equal(lm_engine_query_vcpu_dirty_limit(e, q, 2), 2);
    assert_int_equal(q[0].limit_rate, 1);
    assert_true(q[0].current_rate > 1);
    assert_int_equal(q[1].current_rate, 0);
    /* vCPU 1 dirtied nothing: under its limit, never slowed. */
    assert_int_equal(__atomic_load_n(&f.throttle[1], __ATOMIC_RELAXED), 0);
    assert_int_equal(__atomic_load_n(&f.calls[1], __ATOMIC_RELAXED), 0);
    /* Cancelled: vCPU 0 runs freely again. */
    assert_int_equal(lm_engine_cancel_vcpu_dirty_limit(e, -1, &err), 0);
    assert_int_equal(wait_throttle(&f, 0, -1), 0);
    assert_int_equal(lm_engine_query_vcpu_dirty_limit(e, q, 2), 2);
    assert_int_equal(q[0].limit_rate, 0);
    /* And again: a new limit starts a new controller. */
    assert_int_equal(lm_engine_set_vcpu_dirty_limit(e, 0, 1, &err), 0);
    assert_true(wait_throttle(&f, 0, 50) > 50);
    lm_engine_free(e); /* stops it, lifting the throttle */
    assert_int_equal(__atomic_load_n(&f.throttle[0], __ATOMIC_RELAXED), 0);
    assert_int_equal(__atomic_load_n(&f.calls[1], __ATOMIC_RELAXED), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_throttles_only_the_heavy_vcpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
