/*
 * QMP server: QEMU's machine protocol on a Unix socket.
 *
 * One server thread accepts any number of clients and speaks the protocol
 * (greeting, qmp_capabilities negotiation, execute/arguments/id, return or
 * error {class, desc}, asynchronous events with timestamps).  Commands are
 * registered by name; a handler runs on the command worker, may take its
 * time (the protocol goes on meanwhile), and returns the reply's "return"
 * value (a new reference; NULL together with a set lm_error means failure).
 *
 * In-band commands run one at a time, in order, on the server's command
 * worker thread; handlers registered with qmp_server_allow_oob() may also
 * run on the server thread (exec-oob), concurrently with an in-band one.
 *
 * Requests larger than QMP_MAX_REQUEST bytes, malformed JSON, wrong types
 * and unknown commands get an error reply and the connection lives on.
 */
#ifndef LIVEMIG_QMP_H
#define LIVEMIG_QMP_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "livemig/error.h"

#define QMP_MAX_REQUEST (1024 * 1024)

typedef struct qmp_server qmp_server;

/* args is the request's "arguments" object (an empty object when absent).
 * The handler reports bad arguments through err (use -EINVAL). */
typedef json_t *(*qmp_handler)(void *opaque, json_t *args, lm_error *err);

/* The socket gets mode 0600 whatever the umask. */
qmp_server *qmp_server_new(const char *socket_path, lm_error *err);
/* The same with the socket's permission bits set to mode (e.g. 0660 to let
 * a management group in). */
qmp_server *qmp_server_new_mode(const char *socket_path, unsigned mode, lm_error *err);
void qmp_server_register(qmp_server *s, const char *name, qmp_handler fn, void *opaque);
/* The handler registered under name and its opaque (NULL when none), so a
 * caller can wrap a command (the QMP fuzzer keeps migrate from opening
 * anything). */
qmp_handler qmp_server_lookup(qmp_server *s, const char *name, void **opaque);
/* Marks a registered command as out-of-band capable: a client that enabled
 * the "oob" capability may send it with "exec-oob", and it then runs at
 * once on the server thread, ahead of in-band commands still queued or
 * running (QEMU's allow-oob).  Such a handler must never block. */
void qmp_server_allow_oob(qmp_server *s, const char *name);
/* For a handler: takes the next file descriptor the client passed with
 * SCM_RIGHTS together with (or before) this request; the caller owns it.
 * -EINVAL with QEMU's message when there is none.  Descriptors a command
 * does not take are closed after it. */
int qmp_take_received_fd(lm_error *err);
/* Takes the descriptor a client named with getfd out of the server's table
 * (the caller owns it); -ENOENT with a message when there is none.  The
 * server also offers closefd and query-version. */
int qmp_server_take_fd(qmp_server *s, const char *name, lm_error *err);
/* A duplicate of the first descriptor of fd set id (add-fd) whose access
 * mode (O_ACCMODE) is that of flags, with flags' other status flags, as
 * QEMU's qemu_open() of "/dev/fdset/ID"; the caller owns it.  -ENOENT: no
 * such set, -EACCES: none with that access mode.  The server also offers
 * add-fd, remove-fd and query-fdsets. */
int qmp_server_fdset_dup(qmp_server *s, int64_t id, int flags, lm_error *err);
/* Frees ptr (malloc'd) when the server is freed: for the state that a set
 * of commands shares and that lives as long as they are registered. */
int qmp_server_adopt(qmp_server *s, void *ptr);
int qmp_server_start(qmp_server *s, lm_error *err); /* spawns the server thread */
/* Broadcast an event to every negotiated client.  Takes ownership of data
 * (may be NULL).  Safe from any thread. */
void qmp_server_emit(qmp_server *s, const char *event, json_t *data);
/* Stops the thread, closes clients, unlinks the socket. */
void qmp_server_free(qmp_server *s);

/* Argument helpers: each sets err (-EINVAL, QEMU-style message naming the
 * parameter) on a missing required argument or wrong type. */
int qmp_arg_str(json_t *args, const char *name, bool required, const char **out, lm_error *err);
int qmp_arg_bool(json_t *args, const char *name, bool required, bool *out, lm_error *err);
int qmp_arg_u64(json_t *args, const char *name, bool required, uint64_t *out, lm_error *err);
/* A uint64 as a JSON integer (jansson's are signed): values above
 * INT64_MAX read as INT64_MAX, never as negative numbers. */
json_t *qmp_u64(uint64_t v);
/* Refuses any member of args not named in `known` (NULL-terminated):
 * "Parameter 'x' is unexpected". */
int qmp_args_check(json_t *args, const char *const *known, lm_error *err);

/* Registers the migration commands of an lm_engine: migrate,
 * migrate-incoming, query-migrate, migrate-set-capabilities,
 * query-migrate-capabilities, migrate-set-parameters,
 * query-migrate-parameters, migrate_cancel, migrate-continue. */
struct lm_engine;
void qmp_register_migration_commands(qmp_server *s, struct lm_engine *e);
/* x-query-migration-history (history_cmds.c; registered by the above). */
void qmp_register_history_commands(qmp_server *s, struct lm_engine *e);
/* The migration address of a migrate / migrate-incoming request, as a URI
 * the engine takes: from "uri", or from QEMU's "channels" (one channel of
 * type main: socket unix/inet/fd, exec, file); fd:NAME (a getfd name) is
 * resolved into fd:N, the descriptor now owned by the migration.  The
 * caller checks which other arguments it accepts. */
int qmp_migration_uri(qmp_server *s, json_t *args, char *out, size_t outsz, lm_error *err);
/* A file: URI naming an fd set ("file:/dev/fdset/ID[,offset=N]") gets a
 * duplicate of the set's descriptor for writing (the source) or reading
 * (the destination) appended as ",fd=M", as QEMU opens the path at the
 * command; *fd is M (-1 for any other URI).  M is the caller's: it closes
 * it after migrate-incoming, and after migrate only when that failed (the
 * migration took it over). */
int qmp_migration_uri_fdset(qmp_server *s, char *uri, size_t urisz, bool writing, int *fd,
                            lm_error *err);
/* query-migrate's reply for a snapshot (a new reference). */
struct lm_info;
json_t *qmp_migration_info_json(const struct lm_info *info);
/* The engine event -> QMP event bridge ("MIGRATION", "MIGRATION_PASS"). */
struct lm_event;
void qmp_emit_migration_event(qmp_server *s, const struct lm_event *ev);

#endif
