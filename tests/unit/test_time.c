/*
 * Time helpers: timed waits' deadlines carried across seconds
 * (src/common/clock.h), and a thread's time on and off CPU
 * (src/common/threadtime.h) read through a per-thread fd that its
 * thread's exit closes.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "common/threadtime.h"

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

/* The runqueue wait straight from the kernel, or 0 where it does not say. */
static uint64_t schedstat_wait_ns(void)
{
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    unsigned long long run = 0, wait = 0;
    if (f) {
        if (fscanf(f, "%llu %llu", &run, &wait) != 2) {
            wait = 0;
        }
        fclose(f);
    }
    return wait;
}

static void spin(void)
{
    volatile uint64_t x = 0;
    for (int i = 0; i < 200000; i++) {
        x += (uint64_t)i;
    }
}

/* Every reading lies between the kernel's own just before and just after
 * it, and readings never go back; the thread's CPU time grows with work. */
static void check_readings(void)
{
    uint64_t last = 0, cpu0 = lm_thread_cpu_ns();
    for (int i = 0; i < 200; i++) {
        uint64_t lo = schedstat_wait_ns();
        uint64_t got = lm_thread_runq_wait_ns();
        uint64_t hi = schedstat_wait_ns();
        if (got < lo || got > hi || got < last) {
            fail_msg("reading %d: %llu, kernel %llu..%llu, last %llu", i, (unsigned long long)got,
                     (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)last);
        }
        last = got;
        spin();
    }
    assert_true(lm_thread_cpu_ns() > cpu0);
}

static void *reader_thread(void *arg)
{
    (void)arg;
    check_readings();
    return NULL;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d)) {
        n++;
    }
    closedir(d);
    return n;
}

/* Readings in this thread and in threads that exit: each keeps one fd
 * while it lives, and its exit closes it. */
static void test_thread_times(void **state)
{
    (void)state;
    if (access("/proc/thread-self/schedstat", R_OK) != 0) {
        printf("# no /proc/thread-self/schedstat (kernel without schedstats): readings are 0\n");
        assert_int_equal(lm_thread_runq_wait_ns(), 0);
        return;
    }
    check_readings();
    int before = count_fds();
    for (int round = 0; round < 3; round++) {
        pthread_t t[8];
        for (int i = 0; i < 8; i++) {
            assert_int_equal(pthread_create(&t[i], NULL, reader_thread, NULL), 0);
        }
        for (int i = 0; i < 8; i++) {
            assert_int_equal(pthread_join(t[i], NULL), 0);
        }
    }
    assert_int_equal(count_fds(), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_ns),
        cmocka_unit_test(test_after),
        cmocka_unit_test(test_thread_times),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
