/* Monotonic time helpers. */
#ifndef LM_COMMON_CLOCK_H
#define LM_COMMON_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t lm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t lm_now_ms(void)
{
    return lm_now_ns() / 1000000ull;
}

/* ts moved on by ns nanoseconds, tv_nsec kept below a second (ns may be
 * many seconds; it is cut short only where the sum would overflow). */
static inline struct timespec lm_timespec_add_ns(struct timespec ts, uint64_t ns)
{
    const uint64_t second = 1000000000ull;
    if (ns > UINT64_MAX - second) {
        ns = UINT64_MAX - second;
    }
    uint64_t t = (uint64_t)ts.tv_nsec + ns;
    ts.tv_sec += (time_t)(t / second);
    ts.tv_nsec = (long)(t % second);
    return ts;
}

/* The deadline ns nanoseconds from now on clock, as the timed waits take
 * it: CLOCK_REALTIME for a default pthread_cond_timedwait, the condition
 * variable's own clock where it was set (CLOCK_MONOTONIC). */
static inline struct timespec lm_timespec_after(clockid_t clock, uint64_t ns)
{
    struct timespec now;
    clock_gettime(clock, &now);
    return lm_timespec_add_ns(now, ns);
}

/* Sleep for ns nanoseconds (restarting after signals). */
void lm_sleep_ns(uint64_t ns);

#endif
