/*
 * libFuzzer target: the QMP server's request framing, parsing and dispatch.
 *
 * Each input is the byte stream one client sends (the seeds in
 * tests/fuzz/corpus/qmp are real sessions: qmp_capabilities, then
 * migration commands).  A real server (src/qmp/server.c) listens on a Unix
 * socket in a private directory with the migration commands of an engine
 * registered; the target connects, reads the greeting, sends the input,
 * shuts its side down and reads every reply until the server closes.
 *
 * Every line the server writes must be a JSON object that is a greeting,
 * an event, a return or an error whose class and desc are strings: a
 * reply that is not is a bug, reported by abort().
 *
 * No migration starts: the commands that would open a connection or a
 * file (migrate, migrate-incoming, migrate-recover) first have their URI
 * parsed by the transport's parser (fuzzed too), then run with the URI
 * replaced by one of an unknown scheme, so their argument checks and the
 * engine's state checks run and nothing is connected, executed or
 * written.  Each input gets a fresh engine: capabilities and parameters
 * set by one input do not leak into the next.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "channel/transport.h"
#include "livemig/livemig.h"
#include "qmp/qmp.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static qmp_server *server;
static char sock_path[108];
static char sock_dir[64];
static lm_engine *engine;
static int real_stderr = -1;
static int devnull = -1;

static void cleanup(void);

static void die(const char *what, const char *detail)
{
    dprintf(real_stderr, "fuzz_qmp: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

/* ---- the commands that would open something ---- */

/* Parses args' "uri" as the engine would, then runs the real handler with
 * the URI renamed to an unknown scheme. */
typedef struct wrapped {
    qmp_handler fn;
    void *opaque;
} wrapped;

static json_t *inert_uri(json_t *args, const wrapped *real, lm_error *err)
{
    json_t *uri = json_object_get(args, "uri");
    if (!json_is_string(uri)) {
        return real->fn(real->opaque, args, err); /* the handler's own type errors */
    }
    lm_uri parsed;
    lm_error perr = LM_ERROR_INIT;
    if (lm_uri_parse(json_string_value(uri), &parsed, &perr) < 0 && !lm_error_is_set(&perr)) {
        die("lm_uri_parse failed without a message", json_string_value(uri));
    }
    json_t *copy = json_deep_copy(args);
    if (!copy) {
        return real->fn(real->opaque, args, err);
    }
    json_object_set_new(copy, "uri", json_string("fuzz-inert:nowhere"));
    json_t *ret = real->fn(real->opaque, copy, err);
    json_decref(copy);
    return ret;
}

static wrapped real_migrate, real_incoming, real_recover;

static json_t *cmd_migrate(void *opaque, json_t *args, lm_error *err)
{
    return inert_uri(args, &real_migrate, err);
}

static json_t *cmd_incoming(void *opaque, json_t *args, lm_error *err)
{
    return inert_uri(args, &real_incoming, err);
}

static json_t *cmd_recover(void *opaque, json_t *args, lm_error *err)
{
    return inert_uri(args, &real_recover, err);
}

/* A fresh engine behind the migration commands (between two clients: the
 * server thread dispatches nothing then). */
static void fresh_engine(void)
{
    lm_callbacks cb = { 0 };
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(&cb, NULL, &err);
    if (!e) {
        die("lm_engine_new", err.msg);
    }
    qmp_register_migration_commands(server, e);
    real_migrate.fn = qmp_server_lookup(server, "migrate", &real_migrate.opaque);
    real_incoming.fn = qmp_server_lookup(server, "migrate-incoming", &real_incoming.opaque);
    real_recover.fn = qmp_server_lookup(server, "migrate-recover", &real_recover.opaque);
    if (!real_migrate.fn || !real_incoming.fn || !real_recover.fn) {
        die("a migration command is not registered", NULL);
    }
    lm_engine *old = engine;
    engine = e;
    qmp_server_register(server, "migrate", cmd_migrate, NULL);
    qmp_server_register(server, "migrate-incoming", cmd_incoming, NULL);
    qmp_server_register(server, "migrate-recover", cmd_recover, NULL);
    lm_engine_free(old);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    real_stderr = dup(2);
    devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    snprintf(sock_dir, sizeof(sock_dir), "/tmp/fuzz-qmp-XXXXXX");
    if (real_stderr < 0 || devnull < 0 || !mkdtemp(sock_dir)) {
        perror("fuzz_qmp: setup");
        abort();
    }
    snprintf(sock_path, sizeof(sock_path), "%s/qmp.sock", sock_dir);
    lm_error err = LM_ERROR_INIT;
    server = qmp_server_new(sock_path, &err);
    if (!server) {
        die("qmp_server_new", err.msg);
    }
    fresh_engine();
    if (qmp_server_start(server, &err) < 0) {
        die("qmp_server_start", err.msg);
    }
    /* The socket's directory goes when the fuzzer exits (the server
     * unlinks the socket only when freed). */
    atexit(cleanup);
    return 0;
}

static void cleanup(void)
{
    unlink(sock_path);
    rmdir(sock_dir);
}

/* ---- one client session ---- */

typedef struct out_buf {
    char *data;
    size_t len, cap;
} out_buf;

static void out_append(out_buf *o, const char *p, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 65536;
        while (cap < o->len + n + 1) {
            cap *= 2;
        }
        o->data = realloc(o->data, cap);
        if (!o->data) {
            die("out of memory", NULL);
        }
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
    o->data[o->len] = '\0';
}

/* Sends the input and reads until the server closes, both at once: a
 * server that stops reading until its replies are read must not
 * deadlock the client. */
static void session(const uint8_t *data, size_t size, out_buf *out)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        die("connect", strerror(errno));
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    size_t sent = 0;
    bool shut = false;
    for (;;) {
        if (sent == size && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        struct pollfd p = { fd, POLLIN | (shut ? 0 : POLLOUT), 0 };
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("poll", strerror(errno));
        }
        if (p.revents & POLLOUT) {
            ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                sent = size; /* the server dropped us: read what it said */
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[65536];
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n > 0) {
                out_append(out, buf, (size_t)n);
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                break;
            }
        }
    }
    close(fd);
}

/* Every line the server wrote is a well-formed QMP message. */
static void check_replies(out_buf *out)
{
    if (!out->data) {
        die("the server closed without a greeting", NULL);
    }
    bool first = true;
    char *save = NULL;
    for (char *line = strtok_r(out->data, "\r\n", &save); line;
         line = strtok_r(NULL, "\r\n", &save)) {
        json_error_t jerr;
        json_t *msg = json_loads(line, 0, &jerr);
        if (!json_is_object(msg)) {
            die("the server wrote a line that is not a JSON object", line);
        }
        json_t *err = json_object_get(msg, "error");
        bool ok;
        if (first) {
            ok = json_object_get(msg, "QMP") != NULL;
        } else if (err) {
            ok = json_is_object(err) && json_is_string(json_object_get(err, "class")) &&
                 json_is_string(json_object_get(err, "desc"));
        } else {
            ok = json_object_get(msg, "return") != NULL || json_is_string(json_object_get(msg, "event"));
        }
        json_decref(msg);
        if (!ok) {
            die(first ? "the first message is not the greeting" :
                        "a reply is neither a return, nor an error with class and desc, nor an event",
                line);
        }
        first = false;
    }
}

/* In-band commands run one at a time, in order, on the server's command
 * worker: once a later client's command has been answered, every command
 * of the input has finished and the engine may be swapped.  (The reply is
 * read before this client hangs up: a hung-up client's replies are
 * dropped, its commands may still be running.) */
static void barrier(void)
{
    static const char req[] = "{\"execute\": \"qmp_capabilities\"}\n"
                              "{\"execute\": \"query-migrate\"}\n";
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        die("barrier: connect", strerror(errno));
    }
    /* libFuzzer's -timeout alarm interrupts blocking calls (no
     * SA_RESTART): EINTR is a retry, not an answer. */
    for (size_t sent = 0; sent < sizeof(req) - 1;) {
        ssize_t n = send(fd, req + sent, sizeof(req) - 1 - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("barrier: send", strerror(errno));
        }
        sent += (size_t)n;
    }
    out_buf out = { NULL, 0, 0 };
    unsigned returns = 0;
    while (returns < 2) {
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die(n == 0 ? "the server closed the barrier before query-migrate's answer" :
                         "barrier: recv", n == 0 ? out.data : strerror(errno));
        }
        out_append(&out, buf, (size_t)n);
        returns = 0;
        for (const char *p = out.data; (p = strstr(p, "\"return\"")); p++) {
            returns++;
        }
    }
    free(out.data);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2 * QMP_MAX_REQUEST) {
        return -1; /* beyond the framer's limit there is nothing new */
    }
    out_buf out = { NULL, 0, 0 };
    dup2(devnull, 2);
    session(data, size, &out);
    dup2(real_stderr, 2);
    check_replies(&out);
    free(out.data);
    barrier();
    fresh_engine();
    return 0;
}
