/*
 * QMP server: protocol, framing and robustness.
 *
 * Each test starts a qmp_server on a socket in a fresh temp dir with a few
 * toy commands and talks to it over raw sockets.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "livemig/engine.h"
#include "livemig/version.h"
#include "qmp/qmp.h"

#define TIMEOUT_MS 5000

typedef struct fixture {
    char dir[64];
    char path[128];
    qmp_server *srv;
} fixture;

/* ------------------------------------------------------------------------ */
/* Toy commands */

static json_t *cmd_echo(void *opaque, json_t *args, lm_error *err)
{
    const char *msg = NULL;
    bool flag = false;
    uint64_t n = 0;
    if (qmp_arg_str(args, "msg", true, &msg, err) < 0 ||
        qmp_arg_bool(args, "flag", false, &flag, err) < 0 ||
        qmp_arg_u64(args, "n", false, &n, err) < 0) {
        return NULL;
    }
    return json_pack("{s:s,s:b,s:I}", "msg", msg, "flag", flag, "n", (json_int_t)n);
}

static json_t *cmd_fail(void *opaque, json_t *args, lm_error *err)
{
    lm_error_set(err, -EIO, "toy failure");
    return NULL;
}

static json_t *cmd_null(void *opaque, json_t *args, lm_error *err)
{
    return NULL; /* no error: an empty return */
}

static json_t *cmd_emit(void *opaque, json_t *args, lm_error *err)
{
    qmp_server_emit(opaque, "TOY_EVENT", json_pack("{s:i}", "x", 7));
    return json_object();
}

/* Holds the command worker until the test releases it (or 20 s pass). */
static int slow_released;

static json_t *cmd_slow(void *opaque, json_t *args, lm_error *err)
{
    for (int i = 0; i < 20000 && !__atomic_load_n(&slow_released, __ATOMIC_ACQUIRE); i++) {
        usleep(1000);
    }
    return json_pack("{s:b}", "released", __atomic_load_n(&slow_released, __ATOMIC_ACQUIRE));
}

/* Writes "x" into the descriptor the client passed, then closes it. */
static json_t *cmd_takefd(void *opaque, json_t *args, lm_error *err)
{
    int fd = qmp_take_received_fd(err);
    if (fd < 0) {
        return NULL;
    }
    ssize_t n = write(fd, "x", 1);
    close(fd);
    return json_pack("{s:b}", "written", n == 1);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/lmqmp-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/qmp.sock", f->dir);
    lm_error err = LM_ERROR_INIT;
    f->srv = qmp_server_new(f->path, &err);
    assert_non_null(f->srv);
    qmp_server_register(f->srv, "echo", cmd_echo, NULL);
    qmp_server_register(f->srv, "fail", cmd_fail, NULL);
    qmp_server_register(f->srv, "null", cmd_null, NULL);
    qmp_server_register(f->srv, "emit", cmd_emit, f->srv);
    qmp_server_register(f->srv, "slow", cmd_slow, NULL);
    qmp_server_register(f->srv, "takefd", cmd_takefd, NULL);
    qmp_server_register(f->srv, "ping", cmd_null, NULL);
    qmp_server_allow_oob(f->srv, "ping");
    qmp_server_allow_oob(f->srv, "takefd");
    assert_int_equal(qmp_server_start(f->srv, &err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    qmp_server_free(f->srv);
    assert_int_equal(access(f->path, F_OK), -1); /* socket unlinked */
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* A raw client */

typedef struct client {
    int fd;
    char buf[65536];
    size_t len;
} client;

static client *cl_connect(fixture *f)
{
    client *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, f->path);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return c;
}

static void cl_close(client *c)
{
    close(c->fd);
    free(c);
}

static void cl_send(client *c, const char *s)
{
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, s + off, len - off, MSG_NOSIGNAL);
        assert_true(n > 0);
        off += (size_t)n;
    }
}

/* Next message (one line), parsed; NULL on timeout or EOF. */
static json_t *cl_recv_timeout(client *c, int timeout_ms)
{
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl) {
            size_t line = (size_t)(nl - c->buf) + 1;
            json_error_t je;
            json_t *j = json_loadb(c->buf, line, 0, &je);
            if (!j) {
                fail_msg("bad JSON from server: %s: %.*s", je.text, (int)line, c->buf);
            }
            memmove(c->buf, c->buf + line, c->len - line);
            c->len -= line;
            return j;
        }
        struct pollfd p = { .fd = c->fd, .events = POLLIN };
        if (poll(&p, 1, timeout_ms) <= 0) {
            return NULL;
        }
        if (c->len == sizeof(c->buf)) {
            fail_msg("server line too long");
        }
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
        if (n <= 0) {
            return NULL;
        }
        c->len += (size_t)n;
    }
}

static json_t *cl_recv(client *c)
{
    json_t *j = cl_recv_timeout(c, TIMEOUT_MS);
    assert_non_null(j);
    return j;
}

/* The next reply that is not an event. */
static json_t *cl_reply(client *c)
{
    for (;;) {
        json_t *j = cl_recv(c);
        if (!json_object_get(j, "event")) {
            return j;
        }
        json_decref(j);
    }
}

static void assert_error(json_t *reply, const char *cls, const char *desc_prefix)
{
    json_t *e = json_object_get(reply, "error");
    if (!e) {
        char *s = json_dumps(reply, 0);
        fail_msg("expected an error, got %s", s);
    }
    assert_string_equal(json_string_value(json_object_get(e, "class")), cls);
    const char *desc = json_string_value(json_object_get(e, "desc"));
    assert_non_null(desc);
    if (strncmp(desc, desc_prefix, strlen(desc_prefix)) != 0) {
        fail_msg("desc '%s' does not start with '%s'", desc, desc_prefix);
    }
}

static void assert_return(json_t *reply)
{
    if (!json_object_get(reply, "return")) {
        char *s = json_dumps(reply, 0);
        fail_msg("expected a return, got %s", s);
    }
}

/* Connect, eat the greeting, negotiate. */
static client *cl_ready(fixture *f)
{
    client *c = cl_connect(f);
    json_decref(cl_recv(c));
    cl_send(c, "{\"execute\": \"qmp_capabilities\"}");
    json_t *r = cl_reply(c);
    assert_return(r);
    json_decref(r);
    return c;
}

static json_t *cl_cmd(client *c, const char *req)
{
    cl_send(c, req);
    return cl_reply(c);
}

/* ------------------------------------------------------------------------ */
/* Tests */

static void test_greeting(void **state)
{
    client *c = cl_connect(*state);
    json_t *g = cl_recv(c);
    json_t *ver = json_object_get(json_object_get(json_object_get(g, "QMP"), "version"), "qemu");
    assert_non_null(ver);
    assert_int_equal(json_integer_value(json_object_get(ver, "major")), LM_VERSION_MAJOR);
    assert_int_equal(json_integer_value(json_object_get(ver, "minor")), LM_VERSION_MINOR);
    assert_int_equal(json_integer_value(json_object_get(ver, "micro")), LM_VERSION_MICRO);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(g, "QMP"), "version"), "package")),
                        "livemig " LM_VERSION_STRING);
    json_t *caps = json_object_get(json_object_get(g, "QMP"), "capabilities");
    assert_int_equal(json_array_size(caps), 1);
    assert_string_equal(json_string_value(json_array_get(caps, 0)), "oob");
    json_decref(g);
    cl_close(c);
}

static void test_negotiation(void **state)
{
    client *c = cl_connect(*state);
    json_decref(cl_recv(c));

    json_t *r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"hi\"}}");
    assert_error(r, "CommandNotFound",
                 "Expecting capabilities negotiation with 'qmp_capabilities'");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"nope\"]}}");
    assert_error(r, "GenericError", "Capability 'nope' not available");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"qmp_capabilities\"}");
    assert_return(r);
    assert_int_equal(json_object_size(json_object_get(r, "return")), 0);
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"qmp_capabilities\"}");
    assert_error(r, "CommandNotFound", "Capabilities negotiation is already complete");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"hi\"}}");
    assert_return(r);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "return"), "msg")), "hi");
    json_decref(r);
    cl_close(c);
}

/* An out-of-band command is answered while an in-band one still runs;
 * the in-band reply follows, and in-band replies keep their order. */
static void test_oob(void **state)
{
    __atomic_store_n(&slow_released, 0, __ATOMIC_RELEASE);
    client *c = cl_connect(*state);
    json_decref(cl_recv(c));

    /* The client enables oob; a slow in-band command holds the worker. */
    json_t *r = cl_cmd(c, "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}}");
    assert_return(r);
    json_decref(r);

    cl_send(c, "{\"execute\": \"slow\", \"id\": \"s\"}"
               "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"after\"}, \"id\": \"e\"}"
               "{\"exec-oob\": \"ping\", \"id\": \"p\"}");
    r = cl_reply(c);
    assert_return(r);
    assert_string_equal(json_string_value(json_object_get(r, "id")), "p");
    json_decref(r);

    r = cl_cmd(c, "{\"exec-oob\": \"echo\", \"arguments\": {\"msg\": \"x\"}, \"id\": \"o\"}");
    assert_error(r, "GenericError", "The command echo does not support OOB");
    assert_string_equal(json_string_value(json_object_get(r, "id")), "o");
    json_decref(r);

    __atomic_store_n(&slow_released, 1, __ATOMIC_RELEASE);
    r = cl_reply(c);
    assert_string_equal(json_string_value(json_object_get(r, "id")), "s");
    assert_true(json_is_true(json_object_get(json_object_get(r, "return"), "released")));
    json_decref(r);
    r = cl_reply(c);
    assert_string_equal(json_string_value(json_object_get(r, "id")), "e");
    json_decref(r);
    cl_close(c);

    /* A client that did not enable oob cannot use exec-oob. */
    c = cl_ready(*state);
    r = cl_cmd(c, "{\"exec-oob\": \"ping\"}");
    assert_error(r, "GenericError", "QMP input member 'exec-oob' is unexpected");
    json_decref(r);
    cl_close(c);
}

/* A descriptor passed with SCM_RIGHTS reaches the command sent with it. */
static void test_fd_passing(void **state)
{
    client *c = cl_ready(*state);
    json_t *r = cl_cmd(c, "{\"execute\": \"takefd\"}");
    assert_error(r, "GenericError", "No file descriptor supplied via SCM_RIGHTS");
    json_decref(r);

    int p[2];
    assert_int_equal(pipe(p), 0);
    const char *req = "{\"execute\": \"takefd\"}";
    struct iovec iov = { .iov_base = (void *)req, .iov_len = strlen(req) };
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &p[1], sizeof(int));
    assert_int_equal(sendmsg(c->fd, &msg, 0), (ssize_t)strlen(req));
    close(p[1]);
    r = cl_reply(c);
    assert_true(json_is_true(json_object_get(json_object_get(r, "return"), "written")));
    json_decref(r);
    char b = 0;
    assert_int_equal(read(p[0], &b, 1), 1);
    assert_int_equal(b, 'x');
    /* The server holds no copy: the pipe reports EOF once ours is gone. */
    assert_int_equal(read(p[0], &b, 1), 0);
    close(p[0]);
    cl_close(c);
}

static void test_id_echo(void **state)
{
    client *c = cl_ready(*state);
    json_t *r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"a\"}, \"id\": \"abc\"}");
    assert_return(r);
    assert_string_equal(json_string_value(json_object_get(r, "id")), "abc");
    json_decref(r);

    r = cl_cmd(c, "{\"id\": {\"n\": [1, 2]}, \"execute\": \"nope\"}");
    assert_error(r, "CommandNotFound", "The command nope has not been found");
    json_t *id = json_object_get(r, "id");
    assert_true(json_is_object(id));
    assert_int_equal(json_array_size(json_object_get(id, "n")), 2);
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"fail\", \"id\": 42}");
    assert_error(r, "GenericError", "toy failure");
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 42);
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"null\"}");
    assert_return(r);
    assert_null(json_object_get(r, "id"));
    assert_true(json_is_object(json_object_get(r, "return")));
    json_decref(r);
    cl_close(c);
}

static void test_malformed_json(void **state)
{
    client *c = cl_ready(*state);
    json_t *r = cl_cmd(c, "{\"execute\": }");
    assert_error(r, "GenericError", "JSON parse error, ");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\" \"echo\"}");
    assert_error(r, "GenericError", "JSON parse error, ");
    json_decref(r);

    r = cl_cmd(c, "}");
    assert_error(r, "GenericError", "JSON parse error, ");
    json_decref(r);

    r = cl_cmd(c, "garbage\n");
    assert_error(r, "GenericError", "JSON parse error, ");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"execute\": \"echo\"}");
    assert_error(r, "GenericError", "JSON parse error, ");
    json_decref(r);

    /* Brackets inside strings do not confuse the framer. */
    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"}{\\\"]\"}}");
    assert_return(r);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "return"), "msg")),
                        "}{\"]");
    json_decref(r);

    /* Not an object. */
    r = cl_cmd(c, "[1, 2]");
    assert_error(r, "GenericError", "QMP input must be a JSON object");
    json_decref(r);
    r = cl_cmd(c, "123 ");
    assert_error(r, "GenericError", "QMP input must be a JSON object");
    json_decref(r);

    /* Still alive. */
    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"alive\"}}");
    assert_return(r);
    json_decref(r);
    cl_close(c);
}

/* An error's desc that quotes bytes which are not UTF-8 (jansson's "near"
 * token, a name cut at 200 bytes inside a character) still arrives, with
 * those bytes as '?' (found by fuzz-qmp: the reply had no desc). */
static void test_error_desc_not_utf8(void **state)
{
    client *c = cl_ready(*state);
    json_t *r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"\xc3\xa3\xcf\xcf\"}}");
    assert_error(r, "GenericError", "JSON parse error, ");
    json_decref(r);

    char req[512] = "{\"execute\": \"a";
    for (int i = 0; i < 150; i++) {
        strcat(req, "\xc3\xa9");
    }
    strcat(req, "\"}");
    r = cl_cmd(c, req);
    assert_error(r, "CommandNotFound", "The command a\xc3\xa9");
    const char *desc = json_string_value(json_object_get(json_object_get(r, "error"), "desc"));
    assert_non_null(strstr(desc, "?"));
    json_decref(r);
    cl_close(c);
}

static void test_wrong_types(void **state)
{
    client *c = cl_ready(*state);
    json_t *r = cl_cmd(c, "{\"execute\": 1}");
    assert_error(r, "GenericError", "QMP input member 'execute' must be a string");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": [1]}");
    assert_error(r, "GenericError", "QMP input member 'arguments' must be an object");
    json_decref(r);

    r = cl_cmd(c, "{\"arguments\": {}}");
    assert_error(r, "GenericError", "QMP input lacks member 'execute'");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"bogus\": 1}");
    assert_error(r, "GenericError", "QMP input member 'bogus' is unexpected");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": 5}}");
    assert_error(r, "GenericError", "Invalid parameter type for 'msg', expected: string");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"x\", \"flag\": \"yes\"}}");
    assert_error(r, "GenericError", "Invalid parameter type for 'flag', expected: boolean");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"x\", \"n\": 1.5}}");
    assert_error(r, "GenericError", "Invalid parameter type for 'n', expected: integer");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"x\", \"n\": -1}}");
    assert_error(r, "GenericError", "Parameter 'n' expects uint64");
    json_decref(r);

    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"x\", \"flag\": true, \"n\": 9007199254740993}}");
    assert_return(r);
    json_t *ret = json_object_get(r, "return");
    assert_true(json_is_true(json_object_get(ret, "flag")));
    assert_int_equal(json_integer_value(json_object_get(ret, "n")), 9007199254740993LL);
    json_decref(r);
    cl_close(c);
}

static void test_unknown_command(void **state)
{
    client *c = cl_ready(*state);
    json_t *r = cl_cmd(c, "{\"execute\": \"no-such-thing\"}");
    assert_error(r, "CommandNotFound", "The command no-such-thing has not been found");
    json_decref(r);
    cl_close(c);
}

static void test_missing_argument(void **state)
{
    client *c = cl_ready(*state);
    json_t *r = cl_cmd(c, "{\"execute\": \"echo\"}");
    assert_error(r, "GenericError", "Parameter 'msg' is missing");
    json_decref(r);
    r = cl_cmd(c, "{\"execute\": \"echo\", \"arguments\": {}}");
    assert_error(r, "GenericError", "Parameter 'msg' is missing");
    json_decref(r);
    cl_close(c);
}

static void test_two_in_one_write(void **state)
{
    client *c = cl_ready(*state);
    cl_send(c, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"one\"}, \"id\": 1}"
               "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"two\"}, \"id\": 2}\n"
               "  {\"execute\": \"nope\", \"id\": 3}");
    for (int i = 1; i <= 3; i++) {
        json_t *r = cl_reply(c);
        assert_int_equal(json_integer_value(json_object_get(r, "id")), i);
        if (i < 3) {
            assert_return(r);
        } else {
            assert_error(r, "CommandNotFound", "The command nope");
        }
        json_decref(r);
    }
    cl_close(c);
}

static void test_split_request(void **state)
{
    client *c = cl_ready(*state);
    const char *req = "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"sp{lit\\\"\"}, \"id\": \"s\"}";
    for (const char *p = req; *p; p++) {
        char one[2] = { *p, 0 };
        cl_send(c, one);
        if ((p - req) % 7 == 0) {
            usleep(1000);
        }
        /* Nothing may come back before the request is complete. */
        if (p[1]) {
            struct pollfd pf = { .fd = c->fd, .events = POLLIN };
            assert_int_equal(poll(&pf, 1, 0), 0);
        }
    }
    json_t *r = cl_reply(c);
    assert_return(r);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "return"), "msg")),
                        "sp{lit\"");
    assert_string_equal(json_string_value(json_object_get(r, "id")), "s");
    json_decref(r);
    cl_close(c);
}

static void test_oversized_request(void **state)
{
    client *c = cl_ready(*state);
    size_t big = 2 * 1024 * 1024;
    char *req = malloc(big + 128);
    if (!req) {
        abort(); /* tells the compiler too: the memsets below have a buffer */
    }
    static const char head[] = "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"";
    size_t n = sizeof(head) - 1;
    memcpy(req, head, n);
    memset(req + n, 'x', big);
    /* Brackets in the string must not end the discarded object early. */
    memcpy(req + n + 1000, "}}}]]", 5);
    strcpy(req + n + big, "\"}, \"id\": 99}{\"execute\": \"echo\", \"arguments\": {\"msg\": \"after\"}, \"id\": 100}");

    /* Send from a writer thread-free loop: the server reads as we write. */
    cl_send(c, req);
    free(req);

    json_t *r = cl_reply(c);
    assert_error(r, "GenericError", "JSON parse error, request exceeds");
    json_decref(r);
    r = cl_reply(c);
    assert_return(r);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 100);
    json_decref(r);

    /* Just under the limit still works. */
    size_t ok = QMP_MAX_REQUEST - 200;
    req = malloc(ok + 128);
    if (!req) {
        abort();
    }
    static const char head2[] = "{\"execute\": \"null\", \"arguments\": {\"pad\": \"";
    n = sizeof(head2) - 1;
    memcpy(req, head2, n);
    memset(req + n, 'y', ok);
    strcpy(req + n + ok, "\"}, \"id\": 7}");
    cl_send(c, req);
    free(req);
    r = cl_reply(c);
    assert_return(r);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 7);
    json_decref(r);
    cl_close(c);
}

static void test_two_clients(void **state)
{
    fixture *f = *state;
    client *a = cl_ready(f);
    client *b = cl_connect(f);
    json_decref(cl_recv(b));
    /* a half-sent request on b does not block a. */
    cl_send(b, "{\"execute\": \"qmp_capabilities\"");
    json_t *r = cl_cmd(a, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"A\"}}");
    assert_return(r);
    json_decref(r);
    cl_send(b, "}");
    r = cl_reply(b);
    assert_return(r);
    json_decref(r);
    r = cl_cmd(b, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"B\"}}");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "return"), "msg")), "B");
    json_decref(r);
    /* Closing one leaves the other alone. */
    cl_close(a);
    r = cl_cmd(b, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"B2\"}}");
    assert_return(r);
    json_decref(r);
    cl_close(b);
}

static void test_events(void **state)
{
    fixture *f = *state;
    client *a = cl_ready(f);
    client *b = cl_ready(f);
    client *raw = cl_connect(f); /* never negotiates */
    json_decref(cl_recv(raw));

    qmp_server_emit(f->srv, "SOMETHING", json_pack("{s:s}", "status", "active"));
    qmp_server_emit(f->srv, "NODATA", NULL);
    for (int k = 0; k < 2; k++) {
        client *c = k ? b : a;
        json_t *ev = cl_recv(c);
        assert_string_equal(json_string_value(json_object_get(ev, "event")), "SOMETHING");
        assert_string_equal(json_string_value(json_object_get(json_object_get(ev, "data"), "status")),
                            "active");
        json_t *ts = json_object_get(ev, "timestamp");
        assert_true(json_integer_value(json_object_get(ts, "seconds")) > 1600000000);
        json_int_t us = json_integer_value(json_object_get(ts, "microseconds"));
        assert_true(us >= 0 && us < 1000000);
        json_decref(ev);
        ev = cl_recv(c);
        assert_string_equal(json_string_value(json_object_get(ev, "event")), "NODATA");
        assert_null(json_object_get(ev, "data"));
        json_decref(ev);
    }
    /* An event emitted by a handler (server thread) also arrives. */
    cl_send(a, "{\"execute\": \"emit\"}");
    bool got_ret = false, got_ev = false;
    for (int i = 0; i < 2; i++) {
        json_t *m = cl_recv(a);
        if (json_object_get(m, "event")) {
            assert_string_equal(json_string_value(json_object_get(m, "event")), "TOY_EVENT");
            got_ev = true;
        } else {
            assert_return(m);
            got_ret = true;
        }
        json_decref(m);
    }
    assert_true(got_ret && got_ev);
    json_decref(cl_recv(b)); /* b gets it too */

    /* The unnegotiated client got nothing. */
    assert_null(cl_recv_timeout(raw, 200));

    cl_close(b);
    cl_close(raw);
    cl_close(a);
}

typedef struct emitter_arg {
    qmp_server *srv;
    int count;
} emitter_arg;

static void *emitter(void *opaque)
{
    emitter_arg *ea = opaque;
    for (int i = 0; i < ea->count; i++) {
        qmp_server_emit(ea->srv, "MT", json_pack("{s:i}", "i", i));
    }
    return NULL;
}

static void test_events_threads(void **state)
{
    fixture *f = *state;
    client *a = cl_ready(f);
    pthread_t th[4];
    emitter_arg ea = { f->srv, 500 };
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, emitter, &ea), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    /* Every event arrives, exactly once. */
    long sum = 0;
    for (int i = 0; i < 2000; i++) {
        json_t *ev = cl_recv(a);
        assert_string_equal(json_string_value(json_object_get(ev, "event")), "MT");
        sum += (long)json_integer_value(json_object_get(json_object_get(ev, "data"), "i"));
        json_decref(ev);
    }
    assert_int_equal(sum, 4L * (499L * 500L / 2));
    assert_null(cl_recv_timeout(a, 100));
    cl_close(a);
}

static void test_slow_client_dropped(void **state)
{
    fixture *f = *state;
    client *slow = cl_ready(f);
    int rcv = 4096;
    setsockopt(slow->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    client *good = cl_ready(f);

    /* ~40 MB of events: the slow client never reads. */
    char pad[4000];
    memset(pad, 'p', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = 0;
    /* emit never blocks on the slow client: were it to, this loop would
     * stall with the slow client's buffers full (and the test time out),
     * since nobody ever reads them. */
    for (int i = 0; i < 10000; i++) {
        qmp_server_emit(f->srv, "BIG", json_pack("{s:s}", "pad", pad));
        if (i % 100 == 99) {
            /* The good client keeps up: it reads every event. */
            for (int k = 0; k < 100; k++) {
                json_t *ev = cl_recv(good);
                assert_string_equal(json_string_value(json_object_get(ev, "event")), "BIG");
                json_decref(ev);
            }
        }
    }

    /* The good client still gets answers. */
    cl_send(good, "{\"execute\": \"echo\", \"arguments\": {\"msg\": \"ok\"}, \"id\": \"g\"}");
    for (;;) {
        json_t *m = cl_recv(good);
        if (json_object_get(m, "id")) {
            assert_return(m);
            json_decref(m);
            break;
        }
        json_decref(m);
    }

    /* The slow one was dropped: after draining what it had, EOF. */
    bool eof = false;
    for (int i = 0; i < 100000 && !eof; i++) {
        char buf[65536];
        struct pollfd p = { .fd = slow->fd, .events = POLLIN };
        if (poll(&p, 1, TIMEOUT_MS) <= 0) {
            break;
        }
        ssize_t n = recv(slow->fd, buf, sizeof(buf), 0);
        eof = n <= 0;
    }
    assert_true(eof);
    cl_close(slow);
    cl_close(good);
}

static void test_query_commands(void **state)
{
    client *c = cl_ready(*state);
    json_t *r = cl_cmd(c, "{\"execute\": \"query-commands\"}");
    json_t *list = json_object_get(r, "return");
    assert_true(json_is_array(list));
    bool has_caps = false, has_echo = false, has_qc = false;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        const char *n = json_string_value(json_object_get(v, "name"));
        has_caps |= strcmp(n, "qmp_capabilities") == 0;
        has_echo |= strcmp(n, "echo") == 0;
        has_qc |= strcmp(n, "query-commands") == 0;
    }
    assert_true(has_caps && has_echo && has_qc);
    json_decref(r);
    cl_close(c);
}

static void test_stale_socket(void **state)
{
    fixture *f = *state;
    lm_error err = LM_ERROR_INIT;
    /* The socket is live: a second server refuses to steal it. */
    qmp_server *s2 = qmp_server_new(f->path, &err);
    assert_null(s2);
    assert_int_equal(err.code, -EADDRINUSE);

    /* A stale one (bound, nobody listening) is replaced. */
    char path[160];
    snprintf(path, sizeof(path), "%s/stale.sock", f->dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    close(fd);
    lm_error_clear(&err);
    s2 = qmp_server_new(path, &err);
    assert_non_null(s2);
    assert_int_equal(qmp_server_start(s2, &err), 0);
    qmp_server_free(s2);
    assert_int_equal(access(path, F_OK), -1);
}

static void test_arg_helpers(void **state)
{
    json_t *args = json_pack("{s:s,s:b,s:I,s:I,s:n}", "s", "str", "b", 1, "u", (json_int_t)5,
                             "neg", (json_int_t)-3, "nul");
    lm_error err = LM_ERROR_INIT;
    const char *s = NULL;
    bool b = false;
    uint64_t u = 0;
    assert_int_equal(qmp_arg_str(args, "s", true, &s, &err), 0);
    assert_string_equal(s, "str");
    assert_int_equal(qmp_arg_bool(args, "b", true, &b, &err), 0);
    assert_true(b);
    assert_int_equal(qmp_arg_u64(args, "u", true, &u, &err), 0);
    assert_int_equal(u, 5);
    u = 77;
    assert_int_equal(qmp_arg_u64(args, "absent", false, &u, &err), 0);
    assert_int_equal(u, 77); /* untouched */
    assert_int_equal(qmp_arg_u64(args, "nul", false, &u, &err), 0);
    assert_false(lm_error_is_set(&err));

    assert_int_equal(qmp_arg_u64(args, "neg", true, &u, &err), -EINVAL);
    assert_string_equal(err.msg, "Parameter 'neg' expects uint64");
    lm_error_clear(&err);
    assert_int_equal(qmp_arg_bool(args, "s", true, &b, &err), -EINVAL);
    assert_string_equal(err.msg, "Invalid parameter type for 's', expected: boolean");
    lm_error_clear(&err);
    assert_int_equal(qmp_arg_str(args, "uri", true, &s, &err), -EINVAL);
    assert_string_equal(err.msg, "Parameter 'uri' is missing");
    lm_error_clear(&err);
    static const char *const known[] = { "s", "b", "u", "neg", NULL };
    assert_int_equal(qmp_args_check(args, known, &err), -EINVAL);
    assert_string_equal(err.msg, "Parameter 'nul' is unexpected");
    json_decref(args);
}

static void test_migration_info_json(void **state)
{
    lm_info *info = calloc(1, sizeof(*info));
    assert_non_null(info);

    info->status = LM_STATUS_NONE;
    json_t *o = qmp_migration_info_json(info);
    assert_string_equal(json_string_value(json_object_get(o, "status")), lm_status_name(LM_STATUS_NONE));
    assert_null(json_object_get(o, "ram"));
    json_decref(o);

    info->status = LM_STATUS_ACTIVE;
    info->has_stats = true;
    info->total_time_ms = 1234;
    info->expected_downtime_ms = 55;
    info->remaining = 4096;
    info->ram_transferred = 1 << 20;
    info->mbps = 812.5;
    info->dirty_sync_count = 3;
    info->ram_page_size = 4096;
    strcpy(info->dirty_tracker, "uffd-wp-async");
    strcpy(info->socket_address, "tcp:[::1]:4444");
    o = qmp_migration_info_json(info);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "active");
    assert_int_equal(json_integer_value(json_object_get(o, "total-time")), 1234);
    assert_int_equal(json_integer_value(json_object_get(o, "expected-downtime")), 55);
    assert_null(json_object_get(o, "downtime"));
    assert_null(json_object_get(o, "cpu-throttle-percentage"));
    assert_int_equal(json_integer_value(json_object_get(o, "remaining")), 4096);
    json_t *ram = json_object_get(o, "ram");
    assert_int_equal(json_integer_value(json_object_get(ram, "transferred")), 1 << 20);
    assert_int_equal(json_integer_value(json_object_get(ram, "dirty-sync-count")), 3);
    assert_true(json_real_value(json_object_get(ram, "mbps")) == 812.5);
    assert_string_equal(json_string_value(json_object_get(o, "dirty-tracker")), "uffd-wp-async");
    json_t *sa = json_array_get(json_object_get(o, "socket-address"), 0);
    assert_string_equal(json_string_value(json_object_get(sa, "type")), "inet");
    assert_string_equal(json_string_value(json_object_get(sa, "host")), "::1");
    assert_string_equal(json_string_value(json_object_get(sa, "port")), "4444");
    json_decref(o);

    info->status = LM_STATUS_COMPLETED;
    info->downtime_ms = 12;
    info->cpu_throttle_percentage = 20;
    strcpy(info->socket_address, "unix:/tmp/x.sock");
    o = qmp_migration_info_json(info);
    assert_int_equal(json_integer_value(json_object_get(o, "downtime")), 12);
    assert_null(json_object_get(o, "expected-downtime"));
    assert_int_equal(json_integer_value(json_object_get(o, "cpu-throttle-percentage")), 20);
    sa = json_array_get(json_object_get(o, "socket-address"), 0);
    assert_string_equal(json_string_value(json_object_get(sa, "type")), "unix");
    assert_string_equal(json_string_value(json_object_get(sa, "path")), "/tmp/x.sock");
    json_decref(o);

    info->status = LM_STATUS_FAILED;
    strcpy(info->error_desc, "connection reset");
    o = qmp_migration_info_json(info);
    assert_string_equal(json_string_value(json_object_get(o, "error-desc")), "connection reset");
    json_decref(o);
    free(info);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_greeting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_negotiation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_id_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_desc_not_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_argument, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_in_one_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_client_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oob, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fd_passing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_socket, setup, teardown),
        cmocka_unit_test(test_arg_helpers),
        cmocka_unit_test(test_migration_info_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
