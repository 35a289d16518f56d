#include <errno.h>

#include "common/failure.h"

bool lm_failure_set_locked(int *code_slot, lm_error *msg_slot, int code, const lm_error *err)
{
    if (*code_slot) {
        return false;
    }
    if (err) {
        lm_error_propagate(msg_slot, err);
    }
    /* Release: the message is written before the code can be seen. */
    __atomic_store_n(code_slot, code ? code : -EIO, __ATOMIC_RELEASE);
    return true;
}

bool lm_failure_record(pthread_mutex_t *lock, pthread_cond_t *cond, int *code_slot,
                       lm_error *msg_slot, int code, const lm_error *err)
{
    pthread_mutex_lock(lock);
    bool first = lm_failure_set_locked(code_slot, msg_slot, code, err);
    pthread_cond_broadcast(cond);
    pthread_mutex_unlock(lock);
    return first;
}
