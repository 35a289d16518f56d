/* The lm_error idiom: see include/livemig/error.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "livemig/error.h"

static int error_vset(lm_error *err, int code, bool with_errno, const char *fmt, va_list ap)
{
    if (!err || err->code != 0) {
        return code;
    }
    err->code = code;
    int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    if (with_errno && n >= 0 && (size_t)n < sizeof(err->msg)) {
        snprintf(err->msg + n, sizeof(err->msg) - (size_t)n, ": %s", strerror(-code));
    }
    return code;
}

int lm_error_set(lm_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(err, code, false, fmt, ap);
    va_end(ap);
    return code;
}

int lm_error_set_errno(lm_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(err, code, true, fmt, ap);
    va_end(ap);
    return code;
}

void lm_error_propagate(lm_error *dst, const lm_error *src)
{
    if (dst && src && src->code != 0 && dst->code == 0) {
        *dst = *src;
    }
}
