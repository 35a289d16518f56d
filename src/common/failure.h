/*
 * Sticky failure: a group of threads (multifd senders or receivers, a
 * channel's writers, mapped-ram's loaders) shares one failure slot; the
 * first failure recorded sticks, later ones are dropped, and everyone who
 * waits on the group is woken so that no thread sleeps on behalf of a
 * migration that has already failed.
 *
 * The owner keeps the slot (an int code and an lm_error message) next to
 * the mutex that guards it.  The code is published with a release store:
 * a reader that does not take the mutex loads it with lm_failure_peek()
 * (acquire) and, seeing it non-zero, may then read the message.
 */
#ifndef LM_COMMON_FAILURE_H
#define LM_COMMON_FAILURE_H

#include <pthread.h>
#include <stdbool.h>

#include "livemig/error.h"

/* The owner's mutex held: records code (0 becomes -EIO) and err's message
 * (err may be NULL) unless a failure is recorded already.  True when this
 * call recorded it: the caller then tells whoever must hear of it once. */
bool lm_failure_set_locked(int *code_slot, lm_error *msg_slot, int code, const lm_error *err);

/* The same without the mutex held: takes it, records, wakes every waiter
 * on cond, lets it go. */
bool lm_failure_record(pthread_mutex_t *lock, pthread_cond_t *cond, int *code_slot,
                       lm_error *msg_slot, int code, const lm_error *err);

/* Any thread, no lock: the recorded code, 0 while none. */
static inline int lm_failure_peek(const int *code_slot)
{
    return __atomic_load_n(code_slot, __ATOMIC_ACQUIRE);
}

#endif
