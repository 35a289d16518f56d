/*
 * Where liblivemig's messages go.  The engine reports failures through
 * lm_error and events; besides those it logs a few warnings (a fallback
 * taken, a peer that misbehaved) and, with LIVEMIG_DEBUG set in the
 * environment, debug lines.  By default they go to stderr prefixed
 * "livemig: "; an embedder routes them into its own log instead.
 */
#ifndef LIVEMIG_LOG_H
#define LIVEMIG_LOG_H

#include "livemig/api.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lm_log_level {
    LM_LOG_DEBUG,
    LM_LOG_WARNING,
} lm_log_level;

/* Called from whichever engine thread logs, possibly from several at once,
 * with a NUL-terminated message without a trailing newline.  It must not
 * call back into the engine. */
typedef void (*lm_log_fn)(void *opaque, lm_log_level level, const char *msg);

/* Installs the process-wide log handler (fn NULL: back to stderr).  opaque
 * must stay valid until the handler is replaced.  Thread-safe; a message
 * being delivered while the handler changes goes to the old one. */
LM_API void lm_set_log_handler(lm_log_fn fn, void *opaque);

#ifdef __cplusplus
}
#endif

#endif
