/*
 * Time helpers: timed waits' deadlines carried across seconds
 * (src/common/clock.h).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "common/clock.h"

static struct timespec ts(time_t sec, long nsec)
{
    return (struct timespec){ .tv_sec = sec, .tv_nsec = nsec };
}

static void assert_ts(struct timespec got, time_t sec, long nsec)
{
    if (got.tv_sec != sec || got.tv_nsec != nsec) {
        fail_msg("got %lld.%09ld, want %lld.%09ld", (long long)got.tv_sec, got.tv_nsec,
                 (long long)sec, nsec);
    }
}

/* The nanoseconds carry into seconds, once or many times over. */
static void test_add_ns(void **state)
{
    (void)state;
    assert_ts(lm_timespec_add_ns(ts(5, 0), 0), 5, 0);
    assert_ts(lm_timespec_add_ns(ts(5, 100), 50 * 1000 * 1000), 5, 50000100);
    assert_ts(lm_timespec_add_ns(ts(5, 999999999), 1), 6, 0);
    assert_ts(lm_timespec_add_ns(ts(5, 999999999), 2), 6, 1);
    assert_ts(lm_timespec_add_ns(ts(5, 600000000), 600000000), 6, 200000000);
    assert_ts(lm_timespec_add_ns(ts(5, 999999999), 999999999), 6, 999999998);
    /* Many seconds at once (a long rate-limit or dirty-rate wait). */
    assert_ts(lm_timespec_add_ns(ts(5, 900000000), 12500000000ull), 18, 400000000);
    assert_ts(lm_timespec_add_ns(ts(0, 0), 86400ull * 1000000000ull + 7), 86400, 7);
    /* The largest ns does not wrap around into the past. */
    struct timespec far = lm_timespec_add_ns(ts(5, 999999999), UINT64_MAX);
    assert_true(far.tv_sec > 5 + (time_t)(UINT64_MAX / 1000000000ull) - 2);
    assert_true(far.tv_nsec >= 0 && far.tv_nsec < 1000000000L);
}

/* lm_timespec_after is that clock's now plus ns: at or after a reading
 * taken before it, and a timed wait on it returns after it passed. */
static void test_after(void **state)
{
    (void)state;
    const clockid_t clocks[] = { CLOCK_REALTIME, CLOCK_MONOTONIC };
    for (size_t i = 0; i < sizeof(clocks) / sizeof(clocks[0]); i++) {
        struct timespec before;
        clock_gettime(clocks[i], &before);
        struct timespec want = lm_timespec_add_ns(before, 3000000000ull);
        struct timespec got = lm_timespec_after(clocks[i], 3000000000ull);
        assert_true(got.tv_nsec >= 0 && got.tv_nsec < 1000000000L);
        assert_true(got.tv_sec > want.tv_sec ||
                    (got.tv_sec == want.tv_sec && got.tv_nsec >= want.tv_nsec));
    }
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    struct timespec deadline = lm_timespec_after(CLOCK_REALTIME, 20 * 1000 * 1000);
    pthread_mutex_lock(&m);
    int ret;
    while ((ret = pthread_cond_timedwait(&c, &m, &deadline)) == 0) {
    }
    pthread_mutex_unlock(&m);
    assert_int_equal(ret, ETIMEDOUT);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    assert_true(now.tv_sec > deadline.tv_sec ||
                (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_ns),
        cmocka_unit_test(test_after),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
