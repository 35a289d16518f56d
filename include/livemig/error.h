/*
 * livemig error idiom.
 *
 * Every fallible function in livemig returns an int: 0 on success, a
 * negative errno on failure.  When the caller passes a non-NULL lm_error,
 * the function also fills it with a human-readable message.  The first
 * error recorded in an lm_error sticks: later calls to lm_error_set() on
 * the same object keep the original message, because the first failure is
 * the one that explains the others.
 */
#ifndef LIVEMIG_ERROR_H
#define LIVEMIG_ERROR_H

#include "livemig/api.h"

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LM_ERROR_MSG_MAX 512

typedef struct lm_error {
    int code;                   /* negative errno, 0 when no error */
    char msg[LM_ERROR_MSG_MAX]; /* NUL-terminated message */
} lm_error;

#define LM_ERROR_INIT { 0, { 0 } }

/* Record an error (code is a negative errno) unless one is already set.
 * Returns code, so callers can write `return lm_error_set(err, -EINVAL, ...)`.
 * err may be NULL. */
LM_API int lm_error_set(lm_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like lm_error_set, appending ": strerror(-code)". */
LM_API int lm_error_set_errno(lm_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copy src into dst (if dst has no error yet). */
LM_API void lm_error_propagate(lm_error *dst, const lm_error *src);

static inline bool lm_error_is_set(const lm_error *err)
{
    return err && err->code != 0;
}

static inline void lm_error_clear(lm_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

#ifdef __cplusplus
}
#endif

#endif
