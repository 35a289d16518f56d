/*
 * QMP server: QEMU's machine protocol over a Unix socket.
 *
 * One thread polls the listening socket, a self-pipe and every client.
 * The self-pipe wakes the thread for two reasons: qmp_server_free() asks it
 * to stop, and qmp_server_emit() (any thread) queued an event.  Events are
 * serialized by the emitter, queued under a mutex and copied into each
 * negotiated client's output buffer by the server thread; nothing an
 * emitter does can block on a client.
 *
 * Client sockets are non-blocking.  Each client has an input framer (it
 * splits the byte stream into top-level JSON values by balancing brackets
 * outside strings, so requests may arrive several per write or one across
 * many writes) and an output buffer.  A client that stops reading is not
 * read from while it has more than QMP_OUT_SOFT_LIMIT bytes pending (its
 * requests wait), and is dropped once queued events push it past
 * QMP_OUT_HARD_LIMIT.
 *
 * In-band commands run on a second thread, the command worker, one at a
 * time in arrival order, so a slow one (a scan of guest RAM) never stalls
 * the protocol: the server thread keeps reading, and a request sent with
 * "exec-oob" (QEMU's out-of-band execution, for clients that enabled the
 * "oob" capability) to a command registered as out-of-band capable runs at
 * once on the server thread and is answered ahead of the queue.  The
 * worker posts each reply on the event queue addressed to its client, so a
 * client always sees the events a command raised before its reply.
 *
 * File descriptors a client passes with SCM_RIGHTS travel with the next
 * request it sends; that command's handler takes them with
 * qmp_take_received_fd() (getfd, add-fd), the rest are closed.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "livemig/version.h"
#include "qmp/qmp.h"

#define QMP_READ_CHUNK      (64 * 1024)
#define QMP_OUT_SOFT_LIMIT  (1024 * 1024)        /* stop reading requests */
#define QMP_OUT_HARD_LIMIT  (16 * 1024 * 1024)   /* drop the client */
#define QMP_MAX_CLIENTS     256
#define QMP_MAX_QUEUED_EVENTS 65536
#define QMP_DUMP_FLAGS      (JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15))
#define QMP_CLIENT_QUEUE    8       /* in-band requests before reading stops */
#define QMP_MAX_QUEUED_REQS 4096    /* all clients: past it, refuse */
#define QMP_MAX_CLIENT_FDS  16      /* fds held for a client's next request */

typedef struct qmp_cmd {
    char *name;
    qmp_handler fn;
    void *opaque;
    bool allow_oob;
} qmp_cmd;

/* An event for every negotiated client, or (target != 0) one command's
 * reply for one client. */
typedef struct qmp_event {
    struct qmp_event *next;
    uint64_t target;
    size_t len;
    char text[]; /* serialized, "\r\n"-terminated */
} qmp_event;

/* An in-band request waiting for the command worker: a parsed request, or
 * a reply made already (an error found while parsing) that must keep its
 * place in the client's order. */
typedef struct qmp_request {
    struct qmp_request *next;
    uint64_t client;
    json_t *req;
    json_t *reply;
    int fds[QMP_MAX_CLIENT_FDS];
    size_t nfds;
} qmp_request;

typedef struct qmp_client {
    struct qmp_client *next;
    struct qmp_server *server;
    uint64_t serial;  /* names the client to the worker's replies */
    int fd;
    bool negotiated;
    bool oob;         /* enabled the "oob" capability */
    bool dead;
    size_t queued;    /* its requests waiting for or in the worker */

    /* Descriptors received with SCM_RIGHTS, for the next request. */
    int fds[QMP_MAX_CLIENT_FDS];
    size_t nfds;

    /* Input framer. */
    bool active;      /* inside a top-level value */
    bool scalar;      /* the value is a bare scalar token */
    bool in_str;
    bool esc;
    bool discarding;  /* over QMP_MAX_REQUEST: swallow up to its end */
    size_t depth;
    char *in;
    size_t in_len, in_cap;

    /* Output buffer: bytes [out_off, out_len) are pending. */
    char *out;
    size_t out_off, out_len, out_cap;
} qmp_client;

struct qmp_server {
    char *path;
    int listen_fd;
    int pipe_r, pipe_w;
    pthread_t thread;
    bool started;

    pthread_mutex_t lock; /* cmds, event queue, stop */
    qmp_cmd *cmds;
    size_t ncmds, cmds_cap;
    qmp_event *evq_head, *evq_tail;
    size_t evq_len;
    bool stop;

    /* Command worker: requests queue, guarded by lock, signalled by
     * req_cond; done_serials lists finished requests' clients for the
     * server thread to count down (it owns the clients). */
    pthread_t worker;
    bool worker_started, worker_stop;
    pthread_cond_t req_cond;
    qmp_request *rq_head, *rq_tail;
    size_t rq_len;

    /* Descriptors named by getfd, until a command takes one (fd:NAME) or
     * closefd closes it; guarded by lock. */
    struct named_fd *named_fds;
    /* File descriptor sets (add-fd), ordered by id; guarded by lock. */
    struct fdset *fdsets;

    /* Allocations freed with the server (qmp_server_adopt). */
    void **adopted;
    size_t nadopted;

    /* Server thread only. */
    qmp_client *clients;
    size_t nclients;
    uint64_t next_serial;
};

typedef struct named_fd {
    struct named_fd *next;
    char *name;
    int fd;
} named_fd;

/* A set of descriptors a client passed with add-fd, opened on one file
 * with different access modes; "/dev/fdset/ID" in a file: URI names it
 * (QEMU's monitor/fds.c). */
typedef struct fdset_fd {
    struct fdset_fd *next;
    int fd;
    char *opaque; /* the client's note, or NULL */
} fdset_fd;

typedef struct fdset {
    struct fdset *next;
    int64_t id;
    fdset_fd *fds; /* in the order they were added */
} fdset;

/* The request the calling thread is executing (worker or server thread),
 * for qmp_take_received_fd(). */
static __thread qmp_request *current_request;

/* ------------------------------------------------------------------------ */
/* Output */

static void client_flush(qmp_client *c)
{
    while (!c->dead && c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            c->dead = true;
        }
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
    }
}

static size_t client_pending(const qmp_client *c)
{
    return c->out_len - c->out_off;
}

static void client_write(qmp_client *c, const char *buf, size_t len)
{
    if (c->dead) {
        return;
    }
    if (client_pending(c) + len > QMP_OUT_HARD_LIMIT) {
        /* It does not read: drop it rather than grow without bound. */
        c->dead = true;
        return;
    }
    if (c->out_off > 0 && c->out_len + len > c->out_cap) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len) {
            cap *= 2;
        }
        char *p = realloc(c->out, cap);
        if (!p) {
            c->dead = true;
            return;
        }
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, buf, len);
    c->out_len += len;
    client_flush(c);
}

/* Serialize obj + "\r\n" to the client; consumes obj. */
static void client_send_json(qmp_client *c, json_t *obj)
{
    char *text = json_dumps(obj, QMP_DUMP_FLAGS);
    json_decref(obj);
    if (!text) {
        c->dead = true;
        return;
    }
    size_t len = strlen(text);
    client_write(c, text, len);
    client_write(c, "\r\n", 2);
    free(text);
}

/* Length of the valid UTF-8 sequence at s (as jansson checks it: no
 * overlong forms, no surrogates, nothing above U+10FFFF), 0 when invalid. */
static size_t utf8_seq_len(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf) {
            return 0;
        }
    }
    return n;
}

/* An error's desc quotes what the client sent (a bad token, a name cut at
 * 200 bytes): replace each byte that is not valid UTF-8 with '?', or the
 * reply could not carry it (JSON strings are UTF-8). */
static void utf8_scrub(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        size_t n = utf8_seq_len(p);
        if (n == 0) {
            *p++ = '?';
        } else {
            p += n;
        }
    }
}

static json_t *error_reply(json_t *id, const char *cls, const char *desc)
{
    json_t *reply = json_object();
    json_t *e = json_object();
    char *text = strdup(desc);
    if (text) {
        utf8_scrub(text);
    }
    json_object_set_new(e, "class", json_string(cls));
    json_object_set_new(e, "desc", json_string(text ? text : "out of memory"));
    free(text);
    json_object_set_new(reply, "error", e);
    if (id) {
        json_object_set(reply, "id", id);
    }
    return reply;
}

static json_t *return_reply(json_t *id, json_t *ret)
{
    json_t *reply = json_object();
    json_object_set_new(reply, "return", ret ? ret : json_object());
    if (id) {
        json_object_set(reply, "id", id);
    }
    return reply;
}

static void client_send_error(qmp_client *c, json_t *id, const char *cls, const char *desc)
{
    client_send_json(c, error_reply(id, cls, desc));
}

static void client_send_greeting(qmp_client *c)
{
    json_t *g = json_pack("{s:{s:{s:{s:i,s:i,s:i},s:s},s:[s]}}",
                          "QMP", "version", "qemu", "micro", LM_VERSION_MICRO,
                          "minor", LM_VERSION_MINOR, "major", LM_VERSION_MAJOR,
                          "package", "livemig " LM_VERSION_STRING, "capabilities", "oob");
    client_send_json(c, g);
}

/* ------------------------------------------------------------------------ */
/* Commands */

static qmp_cmd *find_cmd_locked(qmp_server *s, const char *name)
{
    for (size_t i = 0; i < s->ncmds; i++) {
        if (strcmp(s->cmds[i].name, name) == 0) {
            return &s->cmds[i];
        }
    }
    return NULL;
}

void qmp_server_register(qmp_server *s, const char *name, qmp_handler fn, void *opaque)
{
    pthread_mutex_lock(&s->lock);
    qmp_cmd *c = find_cmd_locked(s, name);
    if (c) {
        c->fn = fn;
        c->opaque = opaque;
        pthread_mutex_unlock(&s->lock);
        return;
    }
    if (s->ncmds == s->cmds_cap) {
        size_t cap = s->cmds_cap ? s->cmds_cap * 2 : 32;
        qmp_cmd *p = realloc(s->cmds, cap * sizeof(*p));
        if (!p) {
            pthread_mutex_unlock(&s->lock);
            return;
        }
        s->cmds = p;
        s->cmds_cap = cap;
    }
    char *dup = strdup(name);
    if (dup) {
        s->cmds[s->ncmds++] = (qmp_cmd){ dup, fn, opaque, false };
    }
    pthread_mutex_unlock(&s->lock);
}

void qmp_server_allow_oob(qmp_server *s, const char *name)
{
    pthread_mutex_lock(&s->lock);
    qmp_cmd *c = find_cmd_locked(s, name);
    if (c) {
        c->allow_oob = true;
    }
    pthread_mutex_unlock(&s->lock);
}

qmp_handler qmp_server_lookup(qmp_server *s, const char *name, void **opaque)
{
    pthread_mutex_lock(&s->lock);
    qmp_cmd *c = find_cmd_locked(s, name);
    qmp_handler fn = c ? c->fn : NULL;
    *opaque = c ? c->opaque : NULL;
    pthread_mutex_unlock(&s->lock);
    return fn;
}

static json_t *cmd_query_commands(void *opaque, json_t *args, lm_error *err)
{
    qmp_server *s = opaque;
    json_t *list = json_array();
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->ncmds; i++) {
        json_array_append_new(list, json_pack("{s:s}", "name", s->cmds[i].name));
    }
    pthread_mutex_unlock(&s->lock);
    return list;
}

/* Never called: qmp_capabilities is handled in dispatch() because it
 * changes the client's state.  Registered so query-commands lists it. */
static json_t *cmd_qmp_capabilities(void *opaque, json_t *args, lm_error *err)
{
    return json_object();
}

/* ------------------------------------------------------------------------ */
/* Named descriptors: getfd, closefd (QEMU's monitor fds) */

static named_fd **find_named_fd_locked(qmp_server *s, const char *name)
{
    named_fd **pp = &s->named_fds;
    while (*pp && strcmp((*pp)->name, name) != 0) {
        pp = &(*pp)->next;
    }
    return pp;
}

static json_t *cmd_getfd(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "fdname", NULL };
    qmp_server *s = opaque;
    const char *name = NULL;
    if (qmp_args_check(args, known, err) < 0 ||
        qmp_arg_str(args, "fdname", true, &name, err) < 0) {
        return NULL;
    }
    if (isdigit((unsigned char)name[0])) {
        /* fd:NAME must not read as fd:N. */
        lm_error_set(err, -EINVAL, "Parameter 'fdname' expects a name not starting with a digit");
        return NULL;
    }
    int fd = qmp_take_received_fd(err);
    if (fd < 0) {
        return NULL;
    }
    char *dup = strdup(name);
    named_fd *n = dup ? malloc(sizeof(*n)) : NULL;
    if (!n) {
        free(dup);
        close(fd);
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_lock(&s->lock);
    named_fd **pp = find_named_fd_locked(s, name);
    if (*pp) {
        /* As QEMU: a name given again replaces (and closes) the old fd. */
        close((*pp)->fd);
        (*pp)->fd = fd;
        free(dup);
        free(n);
    } else {
        *n = (named_fd){ NULL, dup, fd };
        *pp = n;
    }
    pthread_mutex_unlock(&s->lock);
    return json_object();
}

int qmp_server_adopt(qmp_server *s, void *ptr)
{
    pthread_mutex_lock(&s->lock);
    void **p = realloc(s->adopted, (s->nadopted + 1) * sizeof(*p));
    if (p) {
        p[s->nadopted++] = ptr;
        s->adopted = p;
    }
    pthread_mutex_unlock(&s->lock);
    return p ? 0 : -ENOMEM;
}

int qmp_server_take_fd(qmp_server *s, const char *name, lm_error *err)
{
    pthread_mutex_lock(&s->lock);
    named_fd **pp = find_named_fd_locked(s, name);
    named_fd *n = *pp;
    if (n) {
        *pp = n->next;
    }
    pthread_mutex_unlock(&s->lock);
    if (!n) {
        return lm_error_set(err, -ENOENT, "File descriptor named '%s' has not been found", name);
    }
    int fd = n->fd;
    free(n->name);
    free(n);
    return fd;
}

static json_t *cmd_closefd(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "fdname", NULL };
    const char *name = NULL;
    if (qmp_args_check(args, known, err) < 0 ||
        qmp_arg_str(args, "fdname", true, &name, err) < 0) {
        return NULL;
    }
    int fd = qmp_server_take_fd(opaque, name, err);
    if (fd < 0) {
        return NULL;
    }
    close(fd);
    return json_object();
}

/* ------------------------------------------------------------------------ */
/* File descriptor sets: add-fd, remove-fd, query-fdsets */

static void fdset_fd_free(fdset_fd *f)
{
    close(f->fd);
    free(f->opaque);
    free(f);
}

/* The set with this id, or where it would be inserted (the list is
 * ordered by id). */
static fdset **find_fdset_locked(qmp_server *s, int64_t id)
{
    fdset **pp = &s->fdsets;
    while (*pp && (*pp)->id < id) {
        pp = &(*pp)->next;
    }
    return pp;
}

/* fdset-id: optional, a non-negative integer. */
static int arg_fdset_id(json_t *args, bool required, bool *has, int64_t *id, lm_error *err)
{
    json_t *v = json_object_get(args, "fdset-id");
    *has = v != NULL;
    if (!v) {
        return required ? lm_error_set(err, -EINVAL, "Parameter 'fdset-id' is missing") : 0;
    }
    if (!json_is_integer(v)) {
        return lm_error_set(err, -EINVAL, "Invalid parameter type for 'fdset-id', expected: integer");
    }
    *id = json_integer_value(v);
    return 0;
}

static json_t *cmd_add_fd(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "fdset-id", "opaque", NULL };
    qmp_server *s = opaque;
    const char *note = NULL;
    bool has_id;
    int64_t id = 0;
    if (qmp_args_check(args, known, err) < 0 ||
        arg_fdset_id(args, false, &has_id, &id, err) < 0 ||
        qmp_arg_str(args, "opaque", false, &note, err) < 0) {
        return NULL;
    }
    if (has_id && id < 0) {
        lm_error_set(err, -EINVAL, "Parameter 'fdset-id' expects a non-negative value");
        return NULL;
    }
    int fd = qmp_take_received_fd(err);
    if (fd < 0) {
        return NULL;
    }
    fdset_fd *f = calloc(1, sizeof(*f));
    fdset *fresh = calloc(1, sizeof(*fresh));
    if (!f || !fresh || (note && !(f->opaque = strdup(note)))) {
        free(fresh);
        free(f ? f->opaque : NULL);
        free(f);
        close(fd);
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    f->fd = fd;
    pthread_mutex_lock(&s->lock);
    if (!has_id) {
        /* As QEMU: the lowest id no set uses. */
        id = 0;
        for (fdset *it = s->fdsets; it && it->id == id; it = it->next) {
            id++;
        }
    }
    fdset **pp = find_fdset_locked(s, id);
    fdset *set = *pp;
    if (!set || set->id != id) {
        set = fresh;
        fresh = NULL;
        set->id = id;
        set->next = *pp;
        *pp = set;
    }
    fdset_fd **tail = &set->fds;
    while (*tail) {
        tail = &(*tail)->next;
    }
    *tail = f;
    pthread_mutex_unlock(&s->lock);
    free(fresh);
    return json_pack("{s:I,s:i}", "fdset-id", (json_int_t)id, "fd", fd);
}

static json_t *cmd_remove_fd(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "fdset-id", "fd", NULL };
    qmp_server *s = opaque;
    bool has_id;
    int64_t id = 0;
    json_t *jfd = json_object_get(args, "fd");
    if (qmp_args_check(args, known, err) < 0 ||
        arg_fdset_id(args, true, &has_id, &id, err) < 0) {
        return NULL;
    }
    if (jfd && !json_is_integer(jfd)) {
        lm_error_set(err, -EINVAL, "Invalid parameter type for 'fd', expected: integer");
        return NULL;
    }
    fdset_fd *gone = NULL;
    bool found = false;
    pthread_mutex_lock(&s->lock);
    fdset **pp = find_fdset_locked(s, id);
    fdset *set = *pp && (*pp)->id == id ? *pp : NULL;
    if (set && !jfd) {
        gone = set->fds;
        set->fds = NULL;
        found = true;
    } else if (set) {
        for (fdset_fd **fp = &set->fds; *fp; fp = &(*fp)->next) {
            if ((*fp)->fd == json_integer_value(jfd)) {
                gone = *fp;
                *fp = gone->next;
                gone->next = NULL;
                found = true;
                break;
            }
        }
    }
    if (set && !set->fds) {
        /* An empty set is gone: the migrations that use one of its
         * descriptors hold duplicates of their own. */
        *pp = set->next;
        free(set);
    }
    pthread_mutex_unlock(&s->lock);
    while (gone) {
        fdset_fd *next = gone->next;
        fdset_fd_free(gone);
        gone = next;
    }
    if (!found) {
        if (jfd) {
            lm_error_set(err, -ENOENT, "File descriptor named 'fdset-id:%" PRId64 ", fd:%" PRId64
                         "' not found", id, (int64_t)json_integer_value(jfd));
        } else {
            lm_error_set(err, -ENOENT, "File descriptor named 'fdset-id:%" PRId64 "' not found",
                         id);
        }
        return NULL;
    }
    return json_object();
}

static json_t *cmd_query_fdsets(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    qmp_server *s = opaque;
    if (qmp_args_check(args, known, err) < 0) {
        return NULL;
    }
    json_t *list = json_array();
    pthread_mutex_lock(&s->lock);
    for (fdset *set = s->fdsets; set; set = set->next) {
        json_t *fds = json_array();
        for (fdset_fd *f = set->fds; f; f = f->next) {
            json_t *o = json_pack("{s:i}", "fd", f->fd);
            if (f->opaque) {
                json_object_set_new(o, "opaque", json_string(f->opaque));
            }
            json_array_append_new(fds, o);
        }
        json_array_append_new(list, json_pack("{s:I,s:o}", "fdset-id", (json_int_t)set->id,
                                              "fds", fds));
    }
    pthread_mutex_unlock(&s->lock);
    return list;
}

int qmp_server_fdset_dup(qmp_server *s, int64_t id, int flags, lm_error *err)
{
    int found = -ENOENT, dup_fd = -1;
    pthread_mutex_lock(&s->lock);
    fdset *set = *find_fdset_locked(s, id);
    if (set && set->id == id) {
        found = -EACCES;
        for (fdset_fd *f = set->fds; f; f = f->next) {
            int fl = fcntl(f->fd, F_GETFL);
            if (fl >= 0 && (fl & O_ACCMODE) == (flags & O_ACCMODE)) {
                /* QEMU's rule: the first descriptor whose access mode is
                 * the one asked for; its duplicate gets the status flags
                 * asked for (what F_SETFL can change). */
                dup_fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 3);
                found = dup_fd < 0 ? -errno : 0;
                if (dup_fd >= 0) {
                    fcntl(dup_fd, F_SETFL, flags & ~O_ACCMODE);
                }
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (found < 0) {
        return lm_error_set_errno(err, found, "Could not dup FD for /dev/fdset/%" PRId64
                                  " flags %x", id, (unsigned)flags);
    }
    return dup_fd;
}

static json_t *cmd_query_version(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    if (qmp_args_check(args, known, err) < 0) {
        return NULL;
    }
    return json_pack("{s:{s:i,s:i,s:i},s:s}", "qemu", "major", LM_VERSION_MAJOR,
                     "minor", LM_VERSION_MINOR, "micro", LM_VERSION_MICRO,
                     "package", "livemig " LM_VERSION_STRING);
}

/* qmp_capabilities: leaves negotiation mode, enabling "oob" if asked.
 * Returns the reply. */
static json_t *handle_qmp_capabilities(qmp_client *c, json_t *id, json_t *args)
{
    char desc[256];
    if (c->negotiated) {
        return error_reply(id, "CommandNotFound",
                           "Capabilities negotiation is already complete, command ignored");
    }
    bool oob = false;
    const char *key;
    json_t *val;
    json_object_foreach(args, key, val) {
        if (strcmp(key, "enable") != 0) {
            snprintf(desc, sizeof(desc), "Parameter '%.200s' is unexpected", key);
            return error_reply(id, "GenericError", desc);
        }
        if (!json_is_array(val)) {
            return error_reply(id, "GenericError",
                               "Invalid parameter type for 'enable', expected: array");
        }
        size_t i;
        json_t *cap;
        json_array_foreach(val, i, cap) {
            if (!json_is_string(cap)) {
                return error_reply(id, "GenericError",
                                   "Invalid parameter type for 'enable', expected: string");
            }
            if (strcmp(json_string_value(cap), "oob") != 0) {
                snprintf(desc, sizeof(desc), "Capability '%.200s' not available",
                         json_string_value(cap));
                return error_reply(id, "GenericError", desc);
            }
            oob = true;
        }
    }
    c->negotiated = true;
    c->oob = oob;
    return return_reply(id, NULL);
}

static qmp_client *find_client(qmp_server *s, uint64_t serial)
{
    for (qmp_client *c = s->clients; c; c = c->next) {
        if (c->serial == serial) {
            return c;
        }
    }
    return NULL;
}

static void deliver_events(qmp_server *s, qmp_event *list)
{
    while (list) {
        qmp_event *next = list->next;
        if (list->target) {
            /* A reply: to its client, if still there, whose queue it ends. */
            qmp_client *c = find_client(s, list->target);
            if (c) {
                c->queued--;
                client_write(c, list->text, list->len);
            }
        } else {
            for (qmp_client *c = s->clients; c; c = c->next) {
                if (c->negotiated) {
                    client_write(c, list->text, list->len);
                }
            }
        }
        free(list);
        list = next;
    }
}

/* Takes every queued event and writes it to the clients; returns whether
 * the server was asked to stop. */
static bool flush_events(qmp_server *s)
{
    pthread_mutex_lock(&s->lock);
    bool stop = s->stop;
    qmp_event *list = s->evq_head;
    s->evq_head = s->evq_tail = NULL;
    s->evq_len = 0;
    pthread_mutex_unlock(&s->lock);
    deliver_events(s, list);
    return stop;
}

static void wake_server(qmp_server *s)
{
    /* Non-blocking: a full pipe already holds a pending wake-up. */
    char b = 'e';
    ssize_t r = write(s->pipe_w, &b, 1);
    (void)r;
}

/* Queue serialized text (consumed) for the server thread to deliver.
 * Events beyond QMP_MAX_QUEUED_EVENTS are dropped; replies never are. */
static void queue_text(qmp_server *s, uint64_t target, char *text)
{
    size_t len = strlen(text);
    qmp_event *q = malloc(sizeof(*q) + len + 3);
    if (!q) {
        free(text);
        return;
    }
    memcpy(q->text, text, len);
    memcpy(q->text + len, "\r\n", 3);
    q->len = len + 2;
    q->target = target;
    q->next = NULL;
    free(text);

    pthread_mutex_lock(&s->lock);
    if (!target && s->evq_len >= QMP_MAX_QUEUED_EVENTS) {
        pthread_mutex_unlock(&s->lock);
        free(q);
        return;
    }
    if (s->evq_tail) {
        s->evq_tail->next = q;
    } else {
        s->evq_head = q;
    }
    s->evq_tail = q;
    s->evq_len++;
    pthread_mutex_unlock(&s->lock);
    wake_server(s);
}

/* Post a command's reply (consumed) to its client through the queue. */
static void post_reply(qmp_server *s, uint64_t client, json_t *reply)
{
    char *text = json_dumps(reply, QMP_DUMP_FLAGS);
    json_decref(reply);
    if (!text) {
        text = strdup("{\"error\": {\"class\": \"GenericError\", \"desc\": \"out of memory\"}}");
        if (!text) {
            return;
        }
    }
    queue_text(s, client, text);
}

/* ------------------------------------------------------------------------ */
/* File descriptors passed with SCM_RIGHTS */

static void close_fds(int *fds, size_t *nfds)
{
    for (size_t i = 0; i < *nfds; i++) {
        close(fds[i]);
    }
    *nfds = 0;
}

int qmp_take_received_fd(lm_error *err)
{
    qmp_request *r = current_request;
    if (!r || r->nfds == 0) {
        return lm_error_set(err, -EINVAL, "No file descriptor supplied via SCM_RIGHTS");
    }
    int fd = r->fds[0];
    memmove(r->fds, r->fds + 1, (r->nfds - 1) * sizeof(r->fds[0]));
    r->nfds--;
    return fd;
}

/* ------------------------------------------------------------------------ */
/* Running commands */

/* Runs one validated request's command in the calling thread; returns the
 * reply.  oob: it came as exec-oob. */
static json_t *run_command(qmp_server *s, const char *name, json_t *args, json_t *id, bool oob)
{
    char desc[LM_ERROR_MSG_MAX + 64];

    pthread_mutex_lock(&s->lock);
    qmp_cmd *cmd = find_cmd_locked(s, name);
    qmp_handler fn = cmd ? cmd->fn : NULL;
    void *opaque = cmd ? cmd->opaque : NULL;
    bool allow_oob = cmd && cmd->allow_oob;
    pthread_mutex_unlock(&s->lock);

    if (!fn) {
        snprintf(desc, sizeof(desc), "The command %.200s has not been found", name);
        return error_reply(id, "CommandNotFound", desc);
    }
    if (oob && !allow_oob) {
        snprintf(desc, sizeof(desc), "The command %.200s does not support OOB", name);
        return error_reply(id, "GenericError", desc);
    }
    lm_error err = LM_ERROR_INIT;
    json_t *ret = fn(opaque, args, &err);
    if (lm_error_is_set(&err)) {
        json_decref(ret);
        return error_reply(id, "GenericError", err.msg[0] ? err.msg : "Unknown error");
    }
    return return_reply(id, ret);
}

/* The command worker: runs in-band requests one at a time, in order. */
static void *worker_thread(void *opaque)
{
    qmp_server *s = opaque;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!s->rq_head && !s->worker_stop) {
            pthread_cond_wait(&s->req_cond, &s->lock);
        }
        if (s->worker_stop) {
            pthread_mutex_unlock(&s->lock);
            return NULL;
        }
        qmp_request *r = s->rq_head;
        s->rq_head = r->next;
        if (!s->rq_head) {
            s->rq_tail = NULL;
        }
        s->rq_len--;
        pthread_mutex_unlock(&s->lock);

        json_t *reply = r->reply;
        if (!reply) {
            json_t *args = json_object_get(r->req, "arguments");
            json_t *empty = args ? NULL : json_object();
            current_request = r;
            reply = run_command(s, json_string_value(json_object_get(r->req, "execute")),
                                args ? args : empty, json_object_get(r->req, "id"), false);
            current_request = NULL;
            json_decref(empty);
        }
        /* The reply joins the event queue after every event the command
         * raised: a client that sees `completed` in a reply has already
         * been sent the MIGRATION event that announced it. */
        post_reply(s, r->client, reply);
        close_fds(r->fds, &r->nfds);
        json_decref(r->req);
        free(r);
    }
}

/* Queue an in-band request (req and/or a ready reply, both consumed) with
 * the fds the client passed before it. */
static void queue_request(qmp_server *s, qmp_client *c, json_t *req, json_t *reply)
{
    qmp_request *r = calloc(1, sizeof(*r));
    pthread_mutex_lock(&s->lock);
    bool full = s->rq_len >= QMP_MAX_QUEUED_REQS;
    pthread_mutex_unlock(&s->lock);
    if (!r || full) {
        free(r);
        json_decref(reply);
        client_send_error(c, json_object_get(req, "id"), "GenericError",
                          full ? "Too many queued requests" : "out of memory");
        json_decref(req);
        return;
    }
    r->client = c->serial;
    r->req = req;
    r->reply = reply;
    memcpy(r->fds, c->fds, c->nfds * sizeof(c->fds[0]));
    r->nfds = c->nfds;
    c->nfds = 0;
    c->queued++;

    pthread_mutex_lock(&s->lock);
    if (s->rq_tail) {
        s->rq_tail->next = r;
    } else {
        s->rq_head = r;
    }
    s->rq_tail = r;
    s->rq_len++;
    pthread_cond_signal(&s->req_cond);
    pthread_mutex_unlock(&s->lock);
}

/* An error found while reading a client's input: in its place among the
 * replies once the client negotiated, at once before. */
static void client_reply_error(qmp_client *c, json_t *id, const char *desc)
{
    if (c->negotiated) {
        queue_request(c->server, c, NULL, error_reply(id, "GenericError", desc));
    } else {
        client_send_error(c, id, "GenericError", desc);
    }
}

/* Execute one parsed request (consumed). */
static void dispatch(qmp_server *s, qmp_client *c, json_t *req)
{
    char desc[LM_ERROR_MSG_MAX + 64];

    if (!json_is_object(req)) {
        client_reply_error(c, NULL, "QMP input must be a JSON object");
        json_decref(req);
        return;
    }
    json_t *id = json_object_get(req, "id");
    json_t *exec = NULL, *args = NULL;
    bool oob = false;
    const char *key;
    json_t *val;
    json_object_foreach(req, key, val) {
        if (strcmp(key, "execute") == 0 && !exec) {
            exec = val;
        } else if (strcmp(key, "exec-oob") == 0 && !exec && c->oob) {
            exec = val;
            oob = true;
        } else if (strcmp(key, "arguments") == 0) {
            args = val;
        } else if (strcmp(key, "id") != 0) {
            snprintf(desc, sizeof(desc), "QMP input member '%.200s' is unexpected", key);
            client_reply_error(c, id, desc);
            json_decref(req);
            return;
        }
    }
    const char *why = !exec ? "QMP input lacks member 'execute'"
                    : !json_is_string(exec) ? "QMP input member 'execute' must be a string"
                    : args && !json_is_object(args)
                        ? "QMP input member 'arguments' must be an object" : NULL;
    if (why) {
        if (oob) {
            client_send_error(c, id, "GenericError", why);
        } else {
            client_reply_error(c, id, why);
        }
        json_decref(req);
        return;
    }
    const char *name = json_string_value(exec);

    if (!oob && strcmp(name, "qmp_capabilities") == 0) {
        json_t *empty = args ? NULL : json_object();
        json_t *reply = handle_qmp_capabilities(c, id, args ? args : empty);
        json_decref(empty);
        if (c->queued) {
            queue_request(s, c, NULL, reply);
        } else {
            client_send_json(c, reply);
        }
        json_decref(req);
        return;
    }
    if (!c->negotiated) {
        client_send_error(c, id, "CommandNotFound",
                          "Expecting capabilities negotiation with 'qmp_capabilities'");
        json_decref(req);
        return;
    }
    if (!oob) {
        queue_request(s, c, req, NULL);
        return;
    }

    /* Out of band: now, on this thread, ahead of the queue. */
    qmp_request here = { .client = c->serial };
    memcpy(here.fds, c->fds, c->nfds * sizeof(c->fds[0]));
    here.nfds = c->nfds;
    c->nfds = 0;
    json_t *empty = args ? NULL : json_object();
    current_request = &here;
    json_t *reply = run_command(s, name, args ? args : empty, id, true);
    current_request = NULL;
    json_decref(empty);
    close_fds(here.fds, &here.nfds);
    flush_events(s);
    client_send_json(c, reply);
    json_decref(req);
}

/* ------------------------------------------------------------------------ */
/* Input framing */

static void frame_reset(qmp_client *c)
{
    c->active = c->scalar = c->in_str = c->esc = c->discarding = false;
    c->depth = 0;
    c->in_len = 0;
    if (c->in_cap > 2 * QMP_READ_CHUNK) {
        /* Do not keep a huge buffer around after one big request. */
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

static void frame_append(qmp_client *c, char ch)
{
    if (c->discarding) {
        return;
    }
    if (c->in_len >= QMP_MAX_REQUEST) {
        char desc[128];
        snprintf(desc, sizeof(desc),
                 "JSON parse error, request exceeds the limit of %d bytes", QMP_MAX_REQUEST);
        client_reply_error(c, NULL, desc);
        c->discarding = true;
        return;
    }
    if (c->in_len == c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap * 2 : 1024;
        char *p = realloc(c->in, cap);
        if (!p) {
            c->dead = true;
            c->discarding = true;
            return;
        }
        c->in = p;
        c->in_cap = cap;
    }
    c->in[c->in_len++] = ch;
}

/* A complete top-level value is in c->in: parse and run it. */
static void frame_complete(qmp_server *s, qmp_client *c)
{
    if (c->discarding) {
        frame_reset(c);
        return;
    }
    json_error_t jerr;
    json_t *req = json_loadb(c->in, c->in_len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    frame_reset(c);
    if (!req) {
        char desc[256];
        snprintf(desc, sizeof(desc), "JSON parse error, %s", jerr.text);
        client_reply_error(c, NULL, desc);
        return;
    }
    dispatch(s, c, req);
}

static bool is_delim(char ch)
{
    return isspace((unsigned char)ch) || ch == '{' || ch == '}' || ch == '[' ||
           ch == ']' || ch == '"' || ch == ',' || ch == ':';
}

static void client_feed(qmp_server *s, qmp_client *c, const char *buf, size_t len)
{
    for (size_t i = 0; i < len && !c->dead; i++) {
        char ch = buf[i];
        if (!c->active) {
            if (isspace((unsigned char)ch)) {
                continue;
            }
            if (ch == '}' || ch == ']' || ch == ',' || ch == ':') {
                char desc[64];
                snprintf(desc, sizeof(desc), "JSON parse error, stray '%c'", ch);
                client_reply_error(c, NULL, desc);
                continue;
            }
            c->active = true;
            if (ch == '{' || ch == '[') {
                c->depth = 1;
            } else if (ch == '"') {
                c->in_str = true;
            } else {
                c->scalar = true;
            }
            frame_append(c, ch);
            continue;
        }
        if (c->scalar) {
            if (is_delim(ch)) {
                frame_complete(s, c);
                i--; /* look at the delimiter again, outside a value */
                continue;
            }
            frame_append(c, ch);
            continue;
        }
        frame_append(c, ch);
        if (c->in_str) {
            if (c->esc) {
                c->esc = false;
            } else if (ch == '\\') {
                c->esc = true;
            } else if (ch == '"') {
                c->in_str = false;
                if (c->depth == 0) {
                    frame_complete(s, c);
                }
            }
            continue;
        }
        if (ch == '"') {
            c->in_str = true;
        } else if (ch == '{' || ch == '[') {
            c->depth++;
        } else if (ch == '}' || ch == ']') {
            if (--c->depth == 0) {
                frame_complete(s, c);
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Clients */

static void client_free(qmp_client *c)
{
    close_fds(c->fds, &c->nfds);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static void accept_clients(qmp_server *s)
{
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return; /* EAGAIN, or a transient error: poll again */
        }
        if (s->nclients >= QMP_MAX_CLIENTS) {
            close(fd);
            continue;
        }
        qmp_client *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->server = s;
        c->serial = ++s->next_serial;
        c->next = s->clients;
        s->clients = c;
        s->nclients++;
        client_send_greeting(c);
    }
}

/* Keep the descriptors a message carried for the client's next request;
 * beyond QMP_MAX_CLIENT_FDS they are closed. */
static void client_take_fds(qmp_client *c, struct msghdr *msg)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
            if (c->nfds < QMP_MAX_CLIENT_FDS) {
                c->fds[c->nfds++] = fd;
            } else {
                close(fd);
            }
        }
    }
}

static void client_read(qmp_server *s, qmp_client *c)
{
    char buf[QMP_READ_CHUNK];
    union {
        char buf[CMSG_SPACE(QMP_MAX_CLIENT_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
    ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n >= 0) {
        client_take_fds(c, &msg);
    }
    if (n > 0) {
        client_feed(s, c, buf, (size_t)n);
    } else if (n == 0) {
        c->dead = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        c->dead = true;
    }
}

static void reap_clients(qmp_server *s)
{
    qmp_client **pp = &s->clients;
    while (*pp) {
        qmp_client *c = *pp;
        if (c->dead) {
            *pp = c->next;
            s->nclients--;
            client_free(c);
        } else {
            pp = &c->next;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Events */

void qmp_server_emit(qmp_server *s, const char *event, json_t *data)
{
    if (!s || !event) {
        json_decref(data);
        return;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    json_t *ev = json_object();
    json_object_set_new(ev, "timestamp",
                        json_pack("{s:I,s:I}", "seconds", (json_int_t)tv.tv_sec,
                                  "microseconds", (json_int_t)tv.tv_usec));
    json_object_set_new(ev, "event", json_string(event));
    if (data) {
        json_object_set_new(ev, "data", data);
    }
    char *text = json_dumps(ev, QMP_DUMP_FLAGS);
    json_decref(ev);
    if (text) {
        queue_text(s, 0, text);
    }
}

/* ------------------------------------------------------------------------ */
/* Server thread */

static void *server_thread(void *opaque)
{
    qmp_server *s = opaque;
    struct pollfd *pfds = NULL;
    size_t pfds_cap = 0;

    for (;;) {
        size_t n = 2 + s->nclients;
        if (n > pfds_cap) {
            struct pollfd *p = realloc(pfds, n * sizeof(*p));
            if (!p) {
                /* Out of memory: serve what we can next round. */
                poll(NULL, 0, 10);
                continue;
            }
            pfds = p;
            pfds_cap = n;
        }
        pfds[0] = (struct pollfd){ .fd = s->pipe_r, .events = POLLIN };
        pfds[1] = (struct pollfd){ .fd = s->listen_fd, .events = POLLIN };
        size_t i = 2;
        for (qmp_client *c = s->clients; c; c = c->next, i++) {
            short ev = 0;
            if (client_pending(c) < QMP_OUT_SOFT_LIMIT && c->queued < QMP_CLIENT_QUEUE) {
                ev |= POLLIN;
            }
            if (client_pending(c) > 0) {
                ev |= POLLOUT;
            }
            pfds[i] = (struct pollfd){ .fd = c->fd, .events = ev };
        }

        int r = poll(pfds, (nfds_t)n, -1);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }

        if (pfds[0].revents) {
            char buf[256];
            while (read(s->pipe_r, buf, sizeof(buf)) > 0) {
            }
            if (flush_events(s)) {
                break;
            }
        }

        /* The list is in pfds order: clients are reaped and accepted only
         * after this walk. */
        i = 2;
        for (qmp_client *c = s->clients; c && i < n; c = c->next, i++) {
            short re = pfds[i].revents;
            if (c->dead || !re) {
                continue;
            }
            if (re & POLLOUT) {
                client_flush(c);
            }
            if (re & (POLLIN | POLLHUP | POLLERR)) {
                client_read(s, c);
            }
            if ((re & POLLNVAL) != 0) {
                c->dead = true;
            }
        }
        reap_clients(s);

        if (pfds[1].revents & POLLIN) {
            accept_clients(s);
        }
    }
    free(pfds);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Life cycle */

qmp_server *qmp_server_new(const char *socket_path, lm_error *err)
{
    return qmp_server_new_mode(socket_path, 0600, err);
}

qmp_server *qmp_server_new_mode(const char *socket_path, unsigned mode, lm_error *err)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (!socket_path || !*socket_path) {
        lm_error_set(err, -EINVAL, "QMP socket path is empty");
        return NULL;
    }
    if (strlen(socket_path) >= sizeof(addr.sun_path)) {
        lm_error_set(err, -ENAMETOOLONG, "QMP socket path '%s' is too long (max %zu bytes)",
                     socket_path, sizeof(addr.sun_path) - 1);
        return NULL;
    }
    strcpy(addr.sun_path, socket_path);

    qmp_server *s = calloc(1, sizeof(*s));
    if (!s) {
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    s->listen_fd = s->pipe_r = s->pipe_w = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->req_cond, NULL);
    s->path = strdup(socket_path);
    if (!s->path) {
        lm_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }

    /* A stale socket from a previous run: remove it, unless something
     * still listens there. */
    struct stat st;
    if (lstat(socket_path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            lm_error_set(err, -EEXIST, "QMP socket path '%s' exists and is not a socket",
                         socket_path);
            goto fail;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0) {
            int live = connect(probe, (struct sockaddr *)&addr, sizeof(addr)) == 0;
            close(probe);
            if (live) {
                lm_error_set(err, -EADDRINUSE, "QMP socket '%s' is in use by another process",
                             socket_path);
                goto fail;
            }
        }
        unlink(socket_path);
    }

    s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->listen_fd < 0) {
        lm_error_set_errno(err, -errno, "QMP socket");
        goto fail;
    }
    /* Whoever can connect controls the machine: the socket is created
     * owner-only whatever the umask (Linux takes the socket's own mode at
     * bind, so there is no window), then set to exactly `mode`. */
    if (fchmod(s->listen_fd, 0600) < 0) {
        lm_error_set_errno(err, -errno, "QMP socket: fchmod");
        goto fail;
    }
    if (bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        lm_error_set_errno(err, -errno, "QMP socket: bind to '%s'", socket_path);
        goto fail;
    }
    if (chmod(socket_path, (mode_t)(mode & 0777)) < 0) {
        lm_error_set_errno(err, -errno, "QMP socket: chmod '%s' to %04o", socket_path, mode & 0777);
        unlink(socket_path);
        goto fail;
    }
    if (listen(s->listen_fd, 16) < 0) {
        lm_error_set_errno(err, -errno, "QMP socket: listen on '%s'", socket_path);
        unlink(socket_path);
        goto fail;
    }
    int pfd[2];
    if (pipe2(pfd, O_NONBLOCK | O_CLOEXEC) < 0) {
        lm_error_set_errno(err, -errno, "QMP server: pipe");
        unlink(socket_path);
        goto fail;
    }
    s->pipe_r = pfd[0];
    s->pipe_w = pfd[1];

    qmp_server_register(s, "qmp_capabilities", cmd_qmp_capabilities, s);
    qmp_server_register(s, "query-commands", cmd_query_commands, s);
    qmp_server_register(s, "query-version", cmd_query_version, s);
    qmp_server_register(s, "getfd", cmd_getfd, s);
    qmp_server_register(s, "closefd", cmd_closefd, s);
    qmp_server_register(s, "add-fd", cmd_add_fd, s);
    qmp_server_register(s, "remove-fd", cmd_remove_fd, s);
    qmp_server_register(s, "query-fdsets", cmd_query_fdsets, s);
    return s;

fail:
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
    }
    pthread_cond_destroy(&s->req_cond);
    pthread_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
    return NULL;
}

int qmp_server_start(qmp_server *s, lm_error *err)
{
    if (s->started) {
        return lm_error_set(err, -EBUSY, "QMP server already started");
    }
    int r = pthread_create(&s->worker, NULL, worker_thread, s);
    if (r != 0) {
        return lm_error_set_errno(err, -r, "QMP server: cannot start its command worker");
    }
    s->worker_started = true;
    r = pthread_create(&s->thread, NULL, server_thread, s);
    if (r != 0) {
        return lm_error_set_errno(err, -r, "QMP server: cannot start its thread");
    }
    s->started = true;
    return 0;
}

void qmp_server_free(qmp_server *s)
{
    if (!s) {
        return;
    }
    if (s->worker_started) {
        /* The command in progress finishes (its reply still goes out);
         * requests behind it are dropped. */
        pthread_mutex_lock(&s->lock);
        s->worker_stop = true;
        pthread_cond_signal(&s->req_cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->worker, NULL);
    }
    if (s->started) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_mutex_unlock(&s->lock);
        char b = 's';
        /* The pipe may be full of event wake-ups; retry until the byte is in
         * (the server thread drains it). */
        while (write(s->pipe_w, &b, 1) < 0 && (errno == EAGAIN || errno == EINTR)) {
            poll(NULL, 0, 1);
        }
        pthread_join(s->thread, NULL);
    }
    /* Replies and events still queued go out before the clients close. */
    flush_events(s);
    while (s->clients) {
        qmp_client *c = s->clients;
        s->clients = c->next;
        client_flush(c);
        client_free(c);
    }
    while (s->rq_head) {
        qmp_request *r = s->rq_head;
        s->rq_head = r->next;
        close_fds(r->fds, &r->nfds);
        json_decref(r->req);
        json_decref(r->reply);
        free(r);
    }
    for (size_t i = 0; i < s->ncmds; i++) {
        free(s->cmds[i].name);
    }
    for (size_t i = 0; i < s->nadopted; i++) {
        free(s->adopted[i]);
    }
    free(s->adopted);
    while (s->named_fds) {
        named_fd *n = s->named_fds;
        s->named_fds = n->next;
        close(n->fd);
        free(n->name);
        free(n);
    }
    while (s->fdsets) {
        fdset *set = s->fdsets;
        s->fdsets = set->next;
        while (set->fds) {
            fdset_fd *f = set->fds;
            set->fds = f->next;
            fdset_fd_free(f);
        }
        free(set);
    }
    free(s->cmds);
    close(s->listen_fd);
    close(s->pipe_r);
    close(s->pipe_w);
    unlink(s->path);
    free(s->path);
    pthread_cond_destroy(&s->req_cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* Argument helpers */

static json_t *arg_get(json_t *args, const char *name)
{
    json_t *v = args ? json_object_get(args, name) : NULL;
    return json_is_null(v) ? NULL : v;
}

int qmp_arg_str(json_t *args, const char *name, bool required, const char **out, lm_error *err)
{
    json_t *v = arg_get(args, name);
    if (!v) {
        return required ? lm_error_set(err, -EINVAL, "Parameter '%s' is missing", name) : 0;
    }
    if (!json_is_string(v)) {
        return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s', expected: string", name);
    }
    *out = json_string_value(v);
    return 0;
}

int qmp_arg_bool(json_t *args, const char *name, bool required, bool *out, lm_error *err)
{
    json_t *v = arg_get(args, name);
    if (!v) {
        return required ? lm_error_set(err, -EINVAL, "Parameter '%s' is missing", name) : 0;
    }
    if (!json_is_boolean(v)) {
        return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s', expected: boolean", name);
    }
    *out = json_is_true(v);
    return 0;
}

int qmp_arg_u64(json_t *args, const char *name, bool required, uint64_t *out, lm_error *err)
{
    json_t *v = arg_get(args, name);
    if (!v) {
        return required ? lm_error_set(err, -EINVAL, "Parameter '%s' is missing", name) : 0;
    }
    if (!json_is_integer(v)) {
        return lm_error_set(err, -EINVAL, "Invalid parameter type for '%s', expected: integer", name);
    }
    json_int_t i = json_integer_value(v);
    if (i < 0) {
        return lm_error_set(err, -EINVAL, "Parameter '%s' expects uint64", name);
    }
    *out = (uint64_t)i;
    return 0;
}

json_t *qmp_u64(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

int qmp_args_check(json_t *args, const char *const *known, lm_error *err)
{
    const char *key;
    json_t *val;
    json_object_foreach(args, key, val) {
        bool ok = false;
        for (size_t i = 0; known && known[i]; i++) {
            if (strcmp(known[i], key) == 0) {
                ok = true;
                break;
            }
        }
        if (!ok) {
            return lm_error_set(err, -EINVAL, "Parameter '%s' is unexpected", key);
        }
    }
    return 0;
}
