/*
 * Zero-copy sends (src/channel/zerocopy.h, lm_channel_*zerocopy*) over a
 * TCP loopback connection: every MSG_ZEROCOPY send is counted, every
 * completion read back from the error queue, a flush leaves nothing
 * outstanding, and the bytes arrive intact.  On loopback the kernel copies
 * (completions carry SO_EE_CODE_ZEROCOPY_COPIED), which the accounting
 * must report as a missed zero copy.  Then the refusals: unix sockets, a
 * locked-memory limit, and a flush that a shutdown must wake.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/capability.h>

#include <cmocka.h>

#include "channel/channel.h"
#include "channel/zerocopy.h"

#define CHUNK (256u * 1024)
#define CHUNKS 24

/* A connected TCP pair on 127.0.0.1: fds[0] writes, fds[1] reads. */
static void tcp_pair(int fds[2])
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof(a);
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(l, 1), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
    fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(fds[0], (struct sockaddr *)&a, sizeof(a)), 0);
    fds[1] = accept(l, NULL, NULL);
    assert_true(fds[1] >= 0);
    close(l);
}

typedef struct reader {
    int fd;
    uint8_t *buf;
    size_t want;
    size_t got;
} reader;

static void *read_all(void *arg)
{
    reader *r = arg;
    while (r->got < r->want) {
        ssize_t n = read(r->fd, r->buf + r->got, r->want - r->got);
        if (n <= 0) {
            break;
        }
        r->got += (size_t)n;
    }
    return NULL;
}

static void test_accounting(void **state)
{
    (void)state;
    int fds[2];
    tcp_pair(fds);
    lm_channel *ch = lm_channel_new(fds[0], "zc test", NULL);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_channel_enable_zerocopy(ch, &err), 0);

    /* Each record: an 8-byte header (buffered, copied) and two halves of
     * a chunk sent zero-copy, like a multifd packet. */
    uint8_t *src = malloc((size_t)CHUNKS * CHUNK);
    for (size_t i = 0; i < (size_t)CHUNKS * CHUNK; i++) {
        src[i] = (uint8_t)(i * 7 + (i >> 12));
    }
    size_t total = (size_t)CHUNKS * (8 + CHUNK);
    reader r = { fds[1], malloc(total), total, 0 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, read_all, &r), 0);
    for (unsigned i = 0; i < CHUNKS; i++) {
        uint8_t hdr[8];
        memset(hdr, (int)i, sizeof(hdr));
        assert_int_equal(lm_channel_put(ch, hdr, sizeof(hdr)), 0);
        uint8_t *p = src + (size_t)i * CHUNK;
        struct iovec iov[2] = { { p, CHUNK / 2 }, { p + CHUNK / 2, CHUNK / 2 } };
        assert_int_equal(lm_channel_put_ext_zerocopy(ch, iov, 2), 0);
    }
    bool missed = false;
    assert_int_equal(lm_channel_zerocopy_flush(ch, &missed), 0);
    uint64_t sends, copied;
    lm_channel_zerocopy_stats(ch, &sends, &copied);
    assert_true(sends >= CHUNKS);
    /* Loopback: the kernel copied every one, and said so. */
    assert_int_equal(copied, sends);
    assert_true(missed);
    /* Nothing sent since: a flush has nothing to wait for, misses nothing. */
    assert_int_equal(lm_channel_zerocopy_flush(ch, &missed), 0);
    assert_false(missed);

    pthread_join(t, NULL);
    assert_int_equal(r.got, total);
    for (unsigned i = 0; i < CHUNKS; i++) {
        const uint8_t *rec = r.buf + (size_t)i * (8 + CHUNK);
        for (int k = 0; k < 8; k++) {
            assert_int_equal(rec[k], (uint8_t)i);
        }
        assert_memory_equal(rec + 8, src + (size_t)i * CHUNK, CHUNK);
    }
    assert_int_equal(lm_channel_bytes_written(ch), total);
    free(r.buf);
    free(src);
    lm_channel_close(ch, NULL);
    close(fds[1]);
}

static void test_unix_refused(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    lm_channel *ch = lm_channel_new(sv[0], "unix test", NULL);
    lm_error err = LM_ERROR_INIT;
    int ret = lm_channel_enable_zerocopy(ch, &err);
    assert_true(ret < 0);
    assert_non_null(strstr(err.msg, "SO_ZEROCOPY"));
    assert_true(lm_zerocopy_probe(AF_UNIX) < 0);
    assert_int_equal(lm_zerocopy_probe(AF_INET), 0);
    /* Not enabled: the zero-copy write is an ordinary one. */
    uint8_t b[16] = { 1, 2, 3 }, got[16];
    struct iovec iov = { b, sizeof(b) };
    assert_int_equal(lm_channel_put_ext_zerocopy(ch, &iov, 1), 0);
    assert_int_equal(read(sv[1], got, sizeof(got)), (ssize_t)sizeof(got));
    assert_memory_equal(got, b, sizeof(b));
    bool missed = true;
    assert_int_equal(lm_channel_zerocopy_flush(ch, &missed), 0);
    assert_false(missed);
    lm_channel_close(ch, NULL);
    close(sv[1]);
}

typedef struct later {
    int fd;
} later;

static void *shutdown_later(void *arg)
{
    later *l = arg;
    usleep(100 * 1000);
    shutdown(l->fd, SHUT_RDWR);
    return NULL;
}

/* A flush waiting for completions that never come (a peer that stopped
 * reading, a lost link) must wake when the channel is shut down, as
 * cancel does.  The accounting is told of a send the kernel never saw. */
static void test_flush_woken_by_shutdown(void **state)
{
    (void)state;
    int fds[2];
    tcp_pair(fds);
    lm_zerocopy zc = { 0 };
    assert_int_equal(lm_zerocopy_enable(fds[0], "test", NULL), 0);
    lm_zerocopy_sent(&zc);
    later l = { fds[0] };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, shutdown_later, &l), 0);
    bool missed;
    assert_int_equal(lm_zerocopy_flush(&zc, fds[0], &missed), -EPIPE);
    pthread_join(t, NULL);
    assert_int_equal(lm_zerocopy_outstanding(&zc), 1);
    close(fds[0]);
    close(fds[1]);
}

/* Drops CAP_IPC_LOCK from this (child) process. */
static int drop_ipc_lock(void)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) < 0) {
        return -1;
    }
    d[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
    d[CAP_IPC_LOCK / 32].permitted &= ~(1u << (CAP_IPC_LOCK % 32));
    return (int)syscall(SYS_capset, &h, d);
}

/* Child: with 64 KiB of locked memory and no CAP_IPC_LOCK, a 1 MiB
 * zero-copy send cannot pin its pages.  Exit 0 when the send fails with
 * ENOBUFS and a message that says what to change. */
static int memlock_child(void)
{
    struct rlimit rl = { 64 * 1024, 64 * 1024 };
    if (drop_ipc_lock() < 0 || setrlimit(RLIMIT_MEMLOCK, &rl) < 0) {
        return 77;
    }
    int fds[2];
    tcp_pair(fds);
    lm_channel *ch = lm_channel_new(fds[0], "memlock test", NULL);
    if (lm_channel_enable_zerocopy(ch, NULL) < 0) {
        return 2;
    }
    size_t n = 1u << 20;
    uint8_t *p = calloc(1, n);
    struct iovec iov = { p, n };
    int ret = lm_channel_put_ext_zerocopy(ch, &iov, 1);
    lm_error err = LM_ERROR_INIT;
    lm_channel_error(ch, &err);
    if (ret != -ENOBUFS || !strstr(err.msg, "RLIMIT_MEMLOCK")) {
        fprintf(stderr, "ret %d: %s\n", ret, err.msg);
        return 3;
    }
    return 0;
}

static void test_memlock_refused(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        skip(); /* without root, the limit already applies; nothing to drop */
    }
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        _exit(memlock_child());
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) {
        skip();
    }
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accounting),
        cmocka_unit_test(test_unix_refused),
        cmocka_unit_test(test_flush_woken_by_shutdown),
        cmocka_unit_test(test_memlock_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
