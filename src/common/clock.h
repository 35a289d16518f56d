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

/* Sleep for ns nanoseconds (restarting after signals). */
void lm_sleep_ns(uint64_t ns);

#endif
