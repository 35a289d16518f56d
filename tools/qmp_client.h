/*
 * A blocking QMP client for the livemig command line.
 *
 * qmpc_connect() connects to a Unix socket, reads the greeting and
 * negotiates capabilities.  qmpc_execute() sends one command (with an id)
 * and waits, up to a timeout, for its reply; events that arrive meanwhile
 * are kept and handed out by qmpc_next_event().  Works with QEMU as well as
 * with livemig-vm.
 *
 * Errors follow the livemig idiom: 0 or -errno, and a message in err.  A
 * command that the server answered with an error returns -EREMOTEIO and the
 * server's "class: desc" (the desc alone in err->msg, the class in
 * qmpc_last_error_class()).
 */
#ifndef LIVEMIG_TOOLS_QMP_CLIENT_H
#define LIVEMIG_TOOLS_QMP_CLIENT_H

#include <signal.h>
#include <stdbool.h>

#include <jansson.h>

#include "livemig/error.h"

#define QMPC_DEFAULT_TIMEOUT_MS 10000

typedef struct qmpc qmpc;

/* While waiting, a non-zero *flag makes the wait give up with -EINTR
 * (e.g. a SIGINT handler sets it).  NULL: never. */
void qmpc_set_abort_flag(volatile sig_atomic_t *flag);

int qmpc_connect(const char *path, int timeout_ms, qmpc **out, lm_error *err);
void qmpc_close(qmpc *c);
const char *qmpc_path(const qmpc *c);
/* The greeting's "QMP" object (borrowed). */
json_t *qmpc_greeting(qmpc *c);

/* Execute cmd with args (stolen; NULL for none).  On success *ret (if not
 * NULL) receives the "return" value (a new reference). */
int qmpc_execute(qmpc *c, const char *cmd, json_t *args, int timeout_ms,
                 json_t **ret, lm_error *err);
/* The error class of the last -EREMOTEIO ("GenericError", ...). */
const char *qmpc_last_error_class(const qmpc *c);

/* The next event (a new reference), waiting up to timeout_ms (0: only
 * what has already arrived); NULL when none. */
json_t *qmpc_next_event(qmpc *c, int timeout_ms);

#endif
