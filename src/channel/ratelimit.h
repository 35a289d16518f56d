/*
 * One bandwidth budget shared by every writer of a migration (main
 * channel, and later multifd and postcopy channels), as QEMU's
 * max-bandwidth: bytes per second, enforced over 100 ms windows.
 */
#ifndef LM_CHANNEL_RATELIMIT_H
#define LM_CHANNEL_RATELIMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct lm_ratelimit {
    pthread_mutex_t lock;
    pthread_cond_t cond;    /* a lift or an abort wakes sleeping writers */
    uint64_t bytes_per_sec; /* 0: unlimited */
    uint64_t next_free_ns;  /* when what was accounted has drained */
    int aborted;            /* atomic: waiting writers return at once */
    bool lifted;            /* stop-copy: the limit does not apply (lock) */
    unsigned waiters;       /* writers sleeping for budget now (lock) */
    uint64_t held_since_ns; /* since when one of them sleeps */
    uint64_t held_ns;       /* wall time during which writers slept */
} lm_ratelimit;

void lm_ratelimit_init(lm_ratelimit *rl, uint64_t bytes_per_sec);
void lm_ratelimit_destroy(lm_ratelimit *rl);
void lm_ratelimit_set(lm_ratelimit *rl, uint64_t bytes_per_sec);
/* Cancel: make writers waiting for budget return at once (until reset). */
void lm_ratelimit_abort(lm_ratelimit *rl, bool aborted);
/* Switchover (QEMU's stop-copy): while lifted the limit does not apply,
 * and writers sleeping for budget wake up at once.  Putting it back starts
 * a fresh budget. */
void lm_ratelimit_lift(lm_ratelimit *rl, bool lifted);
/* Wall time (ns) during which at least one writer slept for budget, so
 * far.  What the writers did in the rest of the time is the rate they
 * reach without the limit (see docs/architecture.md, convergence). */
uint64_t lm_ratelimit_held_ns(lm_ratelimit *rl);
/* Account n bytes without waiting (the caller waited with _delay_ns). */
void lm_ratelimit_charge(lm_ratelimit *rl, uint64_t n);
/* How long a writer should wait before its next write is within budget
 * (0: now).  Lets a writer wait on something else meanwhile. */
uint64_t lm_ratelimit_delay_ns(lm_ratelimit *rl);
/* What one window (100 ms) of the budget allows, at least 64 KiB; 0 when
 * unlimited.  Writers split bigger writes into pieces of this size. */
uint64_t lm_ratelimit_window_bytes(lm_ratelimit *rl);
/* Account n bytes about to be written; sleeps while over budget. */
void lm_ratelimit_consume(lm_ratelimit *rl, uint64_t n);

#endif
