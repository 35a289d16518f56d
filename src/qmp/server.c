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
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
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

#include "qmp/qmp.h"

#define QMP_READ_CHUNK      (64 * 1024)
#define QMP_OUT_SOFT_LIMIT  (1024 * 1024)        /* stop reading requests */
#define QMP_OUT_HARD_LIMIT  (16 * 1024 * 1024)   /* drop the client */
#define QMP_MAX_CLIENTS     256
#define QMP_MAX_QUEUED_EVENTS 65536
#define QMP_DUMP_FLAGS      (JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15))

typedef struct qmp_cmd {
    char *name;
    qmp_handler fn;
    void *opaque;
} qmp_cmd;

typedef struct qmp_event {
    struct qmp_event *next;
    size_t len;
    char text[]; /* serialized, "\r\n"-terminated */
} qmp_event;

typedef struct qmp_client {
    struct qmp_client *next;
    int fd;
    bool negotiated;
    bool dead;

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

    /* Server thread only. */
    qmp_client *clients;
    size_t nclients;
};

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

static void client_send_error(qmp_client *c, json_t *id, const char *cls, const char *desc)
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
    client_send_json(c, reply);
}

static void client_send_return(qmp_client *c, json_t *id, json_t *ret)
{
    json_t *reply = json_object();
    json_object_set_new(reply, "return", ret ? ret : json_object());
    if (id) {
        json_object_set(reply, "id", id);
    }
    client_send_json(c, reply);
}

static void client_send_greeting(qmp_client *c)
{
    json_t *g = json_pack("{s:{s:{s:{s:i,s:i,s:i},s:s},s:[]}}",
                          "QMP", "version", "qemu", "micro", 0, "minor", 1, "major", 0,
                          "package", "livemig", "capabilities");
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
        s->cmds[s->ncmds++] = (qmp_cmd){ dup, fn, opaque };
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

static void handle_qmp_capabilities(qmp_client *c, json_t *id, json_t *args)
{
    if (c->negotiated) {
        client_send_error(c, id, "CommandNotFound",
                          "Capabilities negotiation is already complete, command ignored");
        return;
    }
    const char *key;
    json_t *val;
    json_object_foreach(args, key, val) {
        if (strcmp(key, "enable") != 0) {
            char desc[256];
            snprintf(desc, sizeof(desc), "Parameter '%.200s' is unexpected", key);
            client_send_error(c, id, "GenericError", desc);
            return;
        }
        if (!json_is_array(val)) {
            client_send_error(c, id, "GenericError",
                              "Invalid parameter type for 'enable', expected: array");
            return;
        }
        size_t i;
        json_t *cap;
        json_array_foreach(val, i, cap) {
            char desc[256];
            if (!json_is_string(cap)) {
                client_send_error(c, id, "GenericError",
                                  "Invalid parameter type for 'enable', expected: string");
                return;
            }
            snprintf(desc, sizeof(desc), "Capability '%.200s' not available",
                     json_string_value(cap));
            client_send_error(c, id, "GenericError", desc);
            return;
        }
    }
    c->negotiated = true;
    client_send_return(c, id, NULL);
}

static void deliver_events(qmp_server *s, qmp_event *list)
{
    while (list) {
        qmp_event *next = list->next;
        for (qmp_client *c = s->clients; c; c = c->next) {
            if (c->negotiated) {
                client_write(c, list->text, list->len);
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

/* Execute one parsed request. */
static void dispatch(qmp_server *s, qmp_client *c, json_t *req)
{
    char desc[LM_ERROR_MSG_MAX + 64];

    if (!json_is_object(req)) {
        client_send_error(c, NULL, "GenericError", "QMP input must be a JSON object");
        return;
    }
    json_t *id = json_object_get(req, "id");
    json_t *exec = NULL, *args = NULL;
    const char *key;
    json_t *val;
    json_object_foreach(req, key, val) {
        if (strcmp(key, "execute") == 0) {
            exec = val;
        } else if (strcmp(key, "arguments") == 0) {
            args = val;
        } else if (strcmp(key, "id") != 0) {
            snprintf(desc, sizeof(desc), "QMP input member '%.200s' is unexpected", key);
            client_send_error(c, id, "GenericError", desc);
            return;
        }
    }
    if (!exec) {
        client_send_error(c, id, "GenericError", "QMP input lacks member 'execute'");
        return;
    }
    if (!json_is_string(exec)) {
        client_send_error(c, id, "GenericError", "QMP input member 'execute' must be a string");
        return;
    }
    if (args && !json_is_object(args)) {
        client_send_error(c, id, "GenericError", "QMP input member 'arguments' must be an object");
        return;
    }
    const char *name = json_string_value(exec);
    json_t *empty = NULL;
    if (!args) {
        args = empty = json_object();
    }

    if (strcmp(name, "qmp_capabilities") == 0) {
        handle_qmp_capabilities(c, id, args);
        json_decref(empty);
        return;
    }
    if (!c->negotiated) {
        client_send_error(c, id, "CommandNotFound",
                          "Expecting capabilities negotiation with 'qmp_capabilities'");
        json_decref(empty);
        return;
    }

    pthread_mutex_lock(&s->lock);
    qmp_cmd *cmd = find_cmd_locked(s, name);
    qmp_handler fn = cmd ? cmd->fn : NULL;
    void *opaque = cmd ? cmd->opaque : NULL;
    pthread_mutex_unlock(&s->lock);

    if (!fn) {
        snprintf(desc, sizeof(desc), "The command %.200s has not been found", name);
        client_send_error(c, id, "CommandNotFound", desc);
        json_decref(empty);
        return;
    }

    lm_error err = LM_ERROR_INIT;
    json_t *ret = fn(opaque, args, &err);
    json_decref(empty);
    /* Events raised before or while the command ran go out ahead of its
     * reply, as in QEMU: a client that sees `completed` in a reply has
     * already been sent the MIGRATION event that announced it. */
    flush_events(s);
    if (lm_error_is_set(&err)) {
        json_decref(ret);
        client_send_error(c, id, "GenericError", err.msg[0] ? err.msg : "Unknown error");
        return;
    }
    client_send_return(c, id, ret);
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
        client_send_error(c, NULL, "GenericError", desc);
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
        client_send_error(c, NULL, "GenericError", desc);
        return;
    }
    dispatch(s, c, req);
    json_decref(req);
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
                client_send_error(c, NULL, "GenericError", desc);
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
        c->next = s->clients;
        s->clients = c;
        s->nclients++;
        client_send_greeting(c);
    }
}

static void client_read(qmp_server *s, qmp_client *c)
{
    char buf[QMP_READ_CHUNK];
    ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
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
    if (!text) {
        return;
    }
    size_t len = strlen(text);
    qmp_event *q = malloc(sizeof(*q) + len + 3);
    if (!q) {
        free(text);
        return;
    }
    memcpy(q->text, text, len);
    memcpy(q->text + len, "\r\n", 3);
    q->len = len + 2;
    q->next = NULL;
    free(text);

    pthread_mutex_lock(&s->lock);
    if (s->evq_len >= QMP_MAX_QUEUED_EVENTS) {
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

    /* Non-blocking: a full pipe already holds a pending wake-up. */
    char b = 'e';
    ssize_t r = write(s->pipe_w, &b, 1);
    (void)r;
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
            if (client_pending(c) < QMP_OUT_SOFT_LIMIT) {
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
    if (bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        lm_error_set_errno(err, -errno, "QMP socket: bind to '%s'", socket_path);
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
    return s;

fail:
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
    }
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
    int r = pthread_create(&s->thread, NULL, server_thread, s);
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
    while (s->clients) {
        qmp_client *c = s->clients;
        s->clients = c->next;
        client_flush(c);
        client_free(c);
    }
    while (s->evq_head) {
        qmp_event *q = s->evq_head;
        s->evq_head = q->next;
        free(q);
    }
    for (size_t i = 0; i < s->ncmds; i++) {
        free(s->cmds[i].name);
    }
    free(s->cmds);
    close(s->listen_fd);
    close(s->pipe_r);
    close(s->pipe_w);
    unlink(s->path);
    free(s->path);
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
