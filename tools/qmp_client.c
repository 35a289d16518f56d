/* A blocking QMP client: see qmp_client.h. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "qmp_client.h"

#define QMPC_MAX_MESSAGE (64 * 1024 * 1024)

struct qmpc {
    int fd;
    char *path;
    char *buf;
    size_t len, cap;
    json_t *greeting;
    json_t *events; /* array, oldest first */
    json_int_t next_id;
    char last_class[64];
};

static volatile sig_atomic_t *abort_flag;

void qmpc_set_abort_flag(volatile sig_atomic_t *flag)
{
    abort_flag = flag;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(int64_t deadline)
{
    if (deadline < 0) {
        return -1;
    }
    int64_t r = deadline - now_ms();
    return r < 0 ? 0 : (int)(r > 1000000 ? 1000000 : r);
}

/* Read one message (one line of JSON) before deadline (-1: forever).
 * Returns 0 and *msg, -ETIMEDOUT, -EINTR (abort flag), or another -errno. */
static int read_message(qmpc *c, int64_t deadline, json_t **msg, lm_error *err)
{
    for (;;) {
        char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
        if (nl) {
            size_t line = (size_t)(nl - c->buf) + 1;
            json_error_t je;
            json_t *j = json_loadb(c->buf, line, 0, &je);
            memmove(c->buf, c->buf + line, c->len - line);
            c->len -= line;
            if (!j) {
                return lm_error_set(err, -EPROTO, "%s: malformed message from the server: %s",
                                    c->path, je.text);
            }
            *msg = j;
            return 0;
        }
        if (abort_flag && *abort_flag) {
            return lm_error_set(err, -EINTR, "interrupted");
        }
        int wait = remaining_ms(deadline);
        bool last = wait == 0;
        /* Wake up now and then to look at the abort flag. */
        if (wait < 0 || wait > 200) {
            wait = 200;
        }
        struct pollfd p = { .fd = c->fd, .events = POLLIN };
        int r = poll(&p, 1, wait);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return lm_error_set_errno(err, -errno, "%s: poll", c->path);
        }
        if (r == 0) {
            if (last) {
                return lm_error_set(err, -ETIMEDOUT, "%s: timed out waiting for the server",
                                    c->path);
            }
            continue;
        }
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 131072;
            if (cap > QMPC_MAX_MESSAGE) {
                return lm_error_set(err, -EMSGSIZE, "%s: message from the server is too large",
                                    c->path);
            }
            char *b = realloc(c->buf, cap);
            if (!b) {
                return lm_error_set(err, -ENOMEM, "out of memory");
            }
            c->buf = b;
            c->cap = cap;
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            return lm_error_set_errno(err, -errno, "%s: read", c->path);
        }
        if (n == 0) {
            return lm_error_set(err, -ECONNRESET, "%s: the server closed the connection",
                                c->path);
        }
        c->len += (size_t)n;
    }
}

static int send_all(qmpc *c, const char *s, size_t len, lm_error *err)
{
    while (len > 0) {
        ssize_t n = send(c->fd, s, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return lm_error_set_errno(err, -errno, "%s: write", c->path);
        }
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

int qmpc_connect(const char *path, int timeout_ms, qmpc **out, lm_error *err)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(addr.sun_path)) {
        return lm_error_set(err, -ENAMETOOLONG, "%s: socket path too long", path);
    }
    strcpy(addr.sun_path, path);
    qmpc *c = calloc(1, sizeof(*c));
    if (!c) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    c->path = strdup(path);
    c->events = json_array();
    c->next_id = 1;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int r;
    if (c->fd < 0) {
        r = lm_error_set_errno(err, -errno, "socket");
        goto fail;
    }
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        r = lm_error_set_errno(err, -errno, "cannot connect to %s", path);
        goto fail;
    }
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    json_t *g = NULL;
    r = read_message(c, deadline, &g, err);
    if (r < 0) {
        goto fail;
    }
    c->greeting = json_incref(json_object_get(g, "QMP"));
    json_decref(g);
    if (!c->greeting) {
        r = lm_error_set(err, -EPROTO, "%s: not a QMP server (no greeting)", path);
        goto fail;
    }
    r = qmpc_execute(c, "qmp_capabilities", NULL, timeout_ms, NULL, err);
    if (r < 0) {
        goto fail;
    }
    *out = c;
    return 0;

fail:
    qmpc_close(c);
    return r;
}

void qmpc_close(qmpc *c)
{
    if (!c) {
        return;
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    json_decref(c->greeting);
    json_decref(c->events);
    free(c->buf);
    free(c->path);
    free(c);
}

const char *qmpc_path(const qmpc *c)
{
    return c->path;
}

json_t *qmpc_greeting(qmpc *c)
{
    return c->greeting;
}

const char *qmpc_last_error_class(const qmpc *c)
{
    return c->last_class;
}

int qmpc_execute(qmpc *c, const char *cmd, json_t *args, int timeout_ms,
                 json_t **ret, lm_error *err)
{
    json_int_t id = c->next_id++;
    json_t *req = json_object();
    json_object_set_new(req, "execute", json_string(cmd));
    if (args) {
        json_object_set_new(req, "arguments", args);
    }
    json_object_set_new(req, "id", json_integer(id));
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!text) {
        return lm_error_set(err, -ENOMEM, "cannot encode the request");
    }
    int r = send_all(c, text, strlen(text), err);
    free(text);
    if (r == 0) {
        r = send_all(c, "\n", 1, err);
    }
    if (r < 0) {
        return r;
    }

    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        json_t *m = NULL;
        r = read_message(c, deadline, &m, err);
        if (r == -ETIMEDOUT) {
            lm_error_clear(err);
            return lm_error_set(err, -ETIMEDOUT, "%s: no reply to '%s' within %d ms", c->path,
                                cmd, timeout_ms);
        }
        if (r < 0) {
            return r;
        }
        if (json_object_get(m, "event")) {
            json_array_append_new(c->events, m);
            continue;
        }
        json_t *rid = json_object_get(m, "id");
        if (!json_is_integer(rid) || json_integer_value(rid) != id) {
            /* A reply to something else (an earlier request that timed
             * out, or an id-less framing error): skip it. */
            json_decref(m);
            continue;
        }
        json_t *e = json_object_get(m, "error");
        if (e) {
            const char *cls = json_string_value(json_object_get(e, "class"));
            const char *desc = json_string_value(json_object_get(e, "desc"));
            snprintf(c->last_class, sizeof(c->last_class), "%s", cls ? cls : "GenericError");
            lm_error_set(err, -EREMOTEIO, "%s", desc ? desc : "unknown error");
            json_decref(m);
            return -EREMOTEIO;
        }
        if (ret) {
            json_t *v = json_object_get(m, "return");
            *ret = v ? json_incref(v) : json_object();
        }
        json_decref(m);
        return 0;
    }
}

json_t *qmpc_next_event(qmpc *c, int timeout_ms)
{
    int64_t deadline = now_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
    for (;;) {
        if (json_array_size(c->events) > 0) {
            json_t *ev = json_incref(json_array_get(c->events, 0));
            json_array_remove(c->events, 0);
            return ev;
        }
        json_t *m = NULL;
        lm_error e = LM_ERROR_INIT;
        if (read_message(c, deadline, &m, &e) < 0) {
            return NULL;
        }
        if (json_object_get(m, "event")) {
            return m;
        }
        json_decref(m); /* a stray reply */
    }
}
