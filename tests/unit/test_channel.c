/*
 * Migration channels (src/channel/channel.h) and transports
 * (src/channel/transport.h) over socketpairs, pipes, files and commands.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "channel/channel.h"
#include "channel/ratelimit.h"
#include "channel/tls.h"
#include "channel/transport.h"
#include "common/clock.h"

static uint8_t pattern_byte(size_t i)
{
    return (uint8_t)((i * 131) ^ (i >> 8) ^ (i >> 16));
}

static void fill_pattern(uint8_t *p, size_t n, size_t base)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = pattern_byte(base + i);
    }
}

static void make_socketpair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static void make_pipe(int p[2])
{
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
}

/* A writer and a reader channel over a unix socketpair or a pipe: what
 * most cases here run over, the same case often over both. */
typedef enum pair_kind { OVER_SOCKETPAIR, OVER_PIPE } pair_kind;
typedef struct chan_pair {
    lm_channel *w, *r;
    int wfd, rfd;
} chan_pair;

static chan_pair open_pair(pair_kind kind, const char *wname, const char *rname)
{
    int fds[2];
    chan_pair p;
    if (kind == OVER_PIPE) {
        make_pipe(fds);
        p.wfd = fds[1];
        p.rfd = fds[0];
    } else {
        make_socketpair(fds);
        p.wfd = fds[0];
        p.rfd = fds[1];
    }
    p.w = lm_channel_new(p.wfd, wname, NULL);
    p.r = lm_channel_new(p.rfd, rname, NULL);
    assert_non_null(p.w);
    assert_non_null(p.r);
    return p;
}

static void close_pair(chan_pair *p)
{
    lm_channel_close(p->w, NULL);
    lm_channel_close(p->r, NULL);
}

/* ---- reader thread helper: reads `len` bytes with lm_channel_get in
 * chunks of `chunk` (0: one exact read) ---- */
typedef struct reader_arg {
    lm_channel *ch;
    uint8_t *buf;
    size_t len;
    size_t chunk;
    int ret;
} reader_arg;

static void *reader_main(void *opaque)
{
    reader_arg *a = opaque;
    size_t off = 0;
    a->ret = 0;
    while (off < a->len) {
        size_t n = a->chunk ? a->chunk : a->len;
        if (n > a->len - off) {
            n = a->len - off;
        }
        a->ret = lm_channel_get(a->ch, a->buf + off, n);
        if (a->ret < 0) {
            return NULL;
        }
        off += n;
    }
    return NULL;
}

/* Buffered scalars and bytes arrive in order, over a socketpair and a pipe. */
static void buffered_roundtrip(pair_kind kind)
{
    chan_pair p = open_pair(kind, "writer", "reader");
    lm_channel *w = p.w, *r = p.r;
    assert_string_equal(lm_channel_name(w), "writer");
    assert_int_equal(lm_channel_fd(w), p.wfd);
    uint8_t blob[1000];
    fill_pattern(blob, sizeof(blob), 7);
    size_t expect = 0;
    for (int i = 0; i < 50; i++) {
        assert_int_equal(lm_channel_put_u8(w, (uint8_t)i), 0);
        assert_int_equal(lm_channel_put_be16(w, (uint16_t)(0x1000 + i)), 0);
        assert_int_equal(lm_channel_put_be32(w, 0xa0000000u + (uint32_t)i), 0);
        assert_int_equal(lm_channel_put_be64(w, 0x0102030405060708ull * (uint64_t)(i + 1)), 0);
        assert_int_equal(lm_channel_put(w, blob, (size_t)i * 20), 0);
        expect += 1 + 2 + 4 + 8 + (size_t)i * 20;
    }
    /* Nothing is written before the flush (everything fits the buffer). */
    assert_int_equal(lm_channel_bytes_written(w), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    assert_int_equal(lm_channel_bytes_written(w), expect);
    assert_int_equal(lm_channel_flush(w), 0); /* empty flush */

    for (int i = 0; i < 50; i++) {
        uint8_t u8;
        uint16_t u16;
        uint32_t u32;
        uint64_t u64;
        uint8_t got[1000];
        assert_int_equal(lm_channel_get_u8(r, &u8), 0);
        assert_int_equal(u8, (uint8_t)i);
        assert_int_equal(lm_channel_get_be16(r, &u16), 0);
        assert_int_equal(u16, 0x1000 + i);
        assert_int_equal(lm_channel_get_be32(r, &u32), 0);
        assert_int_equal(u32, 0xa0000000u + (uint32_t)i);
        assert_int_equal(lm_channel_get_be64(r, &u64), 0);
        assert_true(u64 == 0x0102030405060708ull * (uint64_t)(i + 1));
        assert_int_equal(lm_channel_get(r, got, (size_t)i * 20), 0);
        assert_memory_equal(got, blob, (size_t)i * 20);
    }
    assert_int_equal(lm_channel_bytes_read(r), expect);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_channel_close(w, &err), 0);
    assert_int_equal(lm_channel_close(r, &err), 0);
    assert_false(lm_error_is_set(&err));
}

static void test_buffered_socketpair(void **state)
{
    (void)state;
    buffered_roundtrip(OVER_SOCKETPAIR);
}

static void test_buffered_pipe(void **state)
{
    (void)state;
    buffered_roundtrip(OVER_PIPE);
}

/* More iovecs than one writev takes, with buffered bytes in front. */
static void put_ext_many(pair_kind kind, int niov)
{
    chan_pair p = open_pair(kind, "writer", "reader");
    lm_channel *w = p.w, *r = p.r;
    size_t total = 0;
    struct iovec *iov = calloc((size_t)niov, sizeof(*iov));
    for (int i = 0; i < niov; i++) {
        size_t len = (size_t)(i % 7) * 600 + (size_t)(i % 3) + 1;
        iov[i].iov_base = malloc(len);
        iov[i].iov_len = len;
        total += len;
    }
    const size_t head = 5, tail = 3;
    size_t all = head + total + tail;
    uint8_t *want = malloc(all);
    fill_pattern(want, all, 0);
    size_t off = head;
    for (int i = 0; i < niov; i++) {
        memcpy(iov[i].iov_base, want + off, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    uint8_t *got = calloc(1, all);
    reader_arg ra = { r, got, all, 777, 0 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader_main, &ra), 0);
    assert_int_equal(lm_channel_put(w, want, head), 0);
    assert_int_equal(lm_channel_put_ext(w, iov, niov), 0);
    assert_int_equal(lm_channel_put(w, want + head + total, tail), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    pthread_join(t, NULL);
    assert_int_equal(ra.ret, 0);
    assert_memory_equal(got, want, all);
    assert_int_equal(lm_channel_bytes_written(w), all);
    assert_int_equal(lm_channel_bytes_read(r), all);
    for (int i = 0; i < niov; i++) {
        free(iov[i].iov_base);
    }
    free(iov);
    free(want);
    free(got);
    close_pair(&p);
}

static void test_put_ext_many_iovecs(void **state)
{
    (void)state;
    const int counts[] = { 1, 61, 62, 63, 64, 100, 200, 1000 };
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        put_ext_many(OVER_SOCKETPAIR, counts[i]);
        put_ext_many(OVER_PIPE, counts[i]);
    }
}

/* Large exact reads (bulk path straight into the caller's memory). */
static void large_transfer(pair_kind kind, size_t len, size_t chunk)
{
    chan_pair p = open_pair(kind, "writer", "reader");
    lm_channel *w = p.w, *r = p.r;
    uint8_t *want = malloc(len), *got = malloc(len);
    fill_pattern(want, len, 12345);
    memset(got, 0, len);
    reader_arg ra = { r, got, len, chunk, 0 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader_main, &ra), 0);
    /* Mixed: a small buffered prefix, a large put (goes out directly), the rest. */
    assert_int_equal(lm_channel_put(w, want, 3), 0);
    assert_int_equal(lm_channel_put(w, want + 3, len / 2), 0);
    assert_int_equal(lm_channel_put(w, want + 3 + len / 2, len - 3 - len / 2), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    pthread_join(t, NULL);
    assert_int_equal(ra.ret, 0);
    if (memcmp(got, want, len)) {
        size_t i = 0;
        while (got[i] == want[i]) {
            i++;
        }
        fail_msg("len %zu chunk %zu: first difference at byte %zu", len, chunk, i);
    }
    free(want);
    free(got);
    close_pair(&p);
}

/* ---- put_file: pages sent from a file (sendfile), as a file-backed
 * guest's RAM is ---- */

/* A memfd of len pattern bytes, with a hole of hole_len at hole_off. */
static int pattern_memfd(size_t len, size_t hole_off, size_t hole_len, uint8_t **map)
{
    int fd = memfd_create("test-put-file", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p != MAP_FAILED);
    fill_pattern(p, len, 77);
    memset(p + hole_off, 0, hole_len);
    assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)hole_off,
                               (off_t)hole_len), 0);
    *map = p;
    return fd;
}

/* One put_file (fd >= 0) or put_mem (fd < 0) call, as the tests below
 * make it: a header iovec (or none) and len bytes at mem. */
typedef struct put_call {
    const struct iovec *hdr;
    int fd;
    uint64_t off;
    const uint8_t *mem;
    size_t len;
} put_call;

static int do_put(lm_channel *w, const put_call *c)
{
    int nhdr = c->hdr ? 1 : 0;
    return c->fd >= 0 ? lm_channel_put_file(w, c->hdr, nhdr, c->fd, c->off, c->mem, c->len)
                      : lm_channel_put_mem(w, c->hdr, nhdr, c->mem, c->len);
}

/* "abc" buffered, then the call, over a socketpair; a reader thread
 * takes all of it into got. */
static void put_over_socketpair(const put_call *c, uint8_t *got)
{
    size_t total = 3 + (c->hdr ? c->hdr->iov_len : 0) + c->len;
    chan_pair p = open_pair(OVER_SOCKETPAIR, "writer", "reader");
    lm_channel *w = p.w;
    reader_arg ra = { p.r, got, total, 0, 0 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader_main, &ra), 0);
    assert_int_equal(lm_channel_put(w, "abc", 3), 0);
    assert_int_equal(do_put(w, c), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    pthread_join(t, NULL);
    assert_int_equal(ra.ret, 0);
    assert_int_equal(lm_channel_bytes_written(w), total);
    close_pair(&p);
}

/* A dead peer fails the call with a message; the SIGPIPE that sendfile
 * and splice raise never reaches the process (default disposition: it
 * would die). */
static void put_to_dead_peer(const put_call *c)
{
    signal(SIGPIPE, SIG_DFL);
    chan_pair p = open_pair(OVER_SOCKETPAIR, "writer", "reader");
    lm_channel_close(p.r, NULL);
    lm_channel *w = p.w;
    assert_int_equal(do_put(w, c), -EPIPE);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_channel_error(w, &err), -EPIPE);
    assert_non_null(strstr(err.msg, "closed by peer"));
    sigset_t pending;
    sigpending(&pending);
    assert_false(sigismember(&pending, SIGPIPE));
    lm_channel_close(w, NULL);
}

/* Buffered bytes, a header iovec and the file's range arrive in that
 * order, holes as zeros; out_fd is a socket (sendfile) or an O_APPEND
 * file (sendfile refuses it: the bytes go from the mapping). */
static void put_file_case(bool append_file)
{
    const size_t len = 3u << 20, off = 8192, n = len - 3 * 8192;
    uint8_t *map;
    int fd = pattern_memfd(len, 1u << 20, 64u << 10, &map);
    uint8_t hdr[5] = { 1, 2, 3, 4, 5 };
    struct iovec hv = { hdr, sizeof(hdr) };
    uint8_t *got = malloc(n + 8);
    if (!append_file) {
        put_call c = { &hv, fd, off, map + off, n };
        put_over_socketpair(&c, got);
    } else {
        char path[] = "/tmp/livemig-put-file-XXXXXX";
        int tmp = mkstemp(path);
        assert_true(tmp >= 0);
        unlink(path);
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", tmp);
        int afd = open(proc, O_WRONLY | O_APPEND | O_CLOEXEC);
        assert_true(afd >= 0);
        lm_channel *w = lm_channel_new(afd, "append-file", NULL);
        assert_int_equal(lm_channel_put(w, "abc", 3), 0);
        assert_int_equal(lm_channel_put_file(w, &hv, 1, fd, off, map + off, n), 0);
        /* Again: the channel remembers that sendfile is refused. */
        assert_int_equal(lm_channel_put_file(w, NULL, 0, fd, off, map + off, 16), 0);
        assert_int_equal(lm_channel_flush(w), 0);
        lm_channel_close(w, NULL);
        assert_int_equal(pread(tmp, got, n + 8, 0), (ssize_t)(n + 8));
        uint8_t tail[16];
        assert_int_equal(pread(tmp, tail, 16, (off_t)(n + 8)), 16);
        assert_memory_equal(tail, map + off, 16);
        close(tmp);
    }
    assert_memory_equal(got, "abc", 3);
    assert_memory_equal(got + 3, hdr, sizeof(hdr));
    assert_memory_equal(got + 8, map + off, n);
    munmap(map, len);
    close(fd);
    free(got);
}

static void test_put_file(void **state)
{
    (void)state;
    put_file_case(false);
    put_file_case(true);
}

static void test_put_file_dead_peer(void **state)
{
    (void)state;
    uint8_t *map;
    int fd = pattern_memfd(1u << 20, 0, 4096, &map);
    put_call c = { NULL, fd, 0, map, 1u << 20 };
    put_to_dead_peer(&c);
    munmap(map, 1u << 20);
    close(fd);
}

/* ---- put_mem: anonymous memory sent by reference (vmsplice, splice) ---- */

/* Buffered bytes, a header iovec and 3 MiB of anonymous memory (more than
 * the channel's pipe holds) arrive in that order over a socket, and as
 * written from memory into a file (not a socket: no vmsplice). */
static void test_put_mem(void **state)
{
    (void)state;
    const size_t n = (3u << 20) + 4096 + 17;
    uint8_t *mem = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(mem != MAP_FAILED);
    fill_pattern(mem, n, 5);
    uint8_t hdr[5] = { 9, 8, 7, 6, 5 };
    struct iovec hv = { hdr, sizeof(hdr) };
    uint8_t *got = malloc(n + 8);
    for (int to_file = 0; to_file < 2; to_file++) {
        memset(got, 0, n + 8);
        if (!to_file) {
            put_call c = { &hv, -1, 0, mem, n };
            put_over_socketpair(&c, got);
        } else {
            char path[] = "/tmp/livemig-put-mem-XXXXXX";
            int tmp = mkstemp(path);
            assert_true(tmp >= 0);
            unlink(path);
            lm_channel *w = lm_channel_new(dup(tmp), "file", NULL);
            assert_int_equal(lm_channel_put(w, "abc", 3), 0);
            assert_int_equal(lm_channel_put_mem(w, &hv, 1, mem, n), 0);
            assert_int_equal(lm_channel_flush(w), 0);
            lm_channel_close(w, NULL);
            assert_int_equal(pread(tmp, got, n + 8, 0), (ssize_t)(n + 8));
            close(tmp);
        }
        assert_memory_equal(got, "abc", 3);
        assert_memory_equal(got + 3, hdr, sizeof(hdr));
        assert_memory_equal(got + 8, mem, n);
    }
    munmap(mem, n);
    free(got);
}

static void test_put_mem_dead_peer(void **state)
{
    (void)state;
    const size_t n = 1u << 20;
    uint8_t *mem = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(mem != MAP_FAILED);
    fill_pattern(mem, n, 1);
    put_call c = { NULL, -1, 0, mem, n };
    put_to_dead_peer(&c);
    munmap(mem, n);
}

/* Which runs a sender should hand over by reference: long ones into a
 * unix socket only; shorter runs, and any run into a pipe, a file or a
 * tcp socket, go in its writev. */
static void test_mem_by_reference(void **state)
{
    (void)state;
    const size_t min = LM_CHANNEL_BY_REFERENCE_MIN;
    chan_pair p = open_pair(OVER_SOCKETPAIR, "unix", "reader");
    lm_channel *w = p.w;
    assert_false(lm_channel_mem_by_reference(w, 0));
    assert_false(lm_channel_mem_by_reference(w, 4096));
    assert_false(lm_channel_mem_by_reference(w, min - 1));
    assert_true(lm_channel_mem_by_reference(w, min));
    assert_true(lm_channel_mem_by_reference(w, 1u << 20));
    close_pair(&p);

    p = open_pair(OVER_PIPE, "pipe", "reader");
    assert_false(lm_channel_mem_by_reference(p.w, 1u << 20));
    close_pair(&p);

    char path[] = "/tmp/livemig-by-ref-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    w = lm_channel_new(fd, "file", NULL);
    assert_false(lm_channel_mem_by_reference(w, 1u << 20));
    lm_channel_close(w, NULL);

    lm_uri u;
    lm_listener *l = NULL;
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_uri_parse("tcp:127.0.0.1:0", &u, &err), 0);
    if (lm_transport_listen(&u, &l, &err) < 0) {
        fail_msg("listen: %s", err.msg);
    }
    lm_uri cu;
    assert_int_equal(lm_uri_parse(lm_listener_address(l), &cu, &err), 0);
    int cfd, pid, sfd, spid;
    assert_int_equal(lm_transport_connect(&cu, &cfd, &pid, NULL, NULL, &err), 0);
    assert_int_equal(lm_listener_accept(l, &sfd, &spid, &err), 0);
    w = lm_channel_new(cfd, "tcp", NULL);
    assert_false(lm_channel_mem_by_reference(w, 1u << 20));
    lm_channel_close(w, NULL);
    close(sfd);
    lm_listener_close(l);
}

static void test_large_reads(void **state)
{
    (void)state;
    const size_t lens[] = { 256 * 1024 + 1, 1u << 20, (3u << 20) + 17 };
    const size_t chunks[] = { 0, 128 * 1024, 128 * 1024 - 1, 300 * 1024, 4096 + 3 };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        for (size_t j = 0; j < sizeof(chunks) / sizeof(chunks[0]); j++) {
            large_transfer(OVER_SOCKETPAIR, lens[i], chunks[j]);
            large_transfer(OVER_PIPE, lens[i], chunks[j]);
        }
    }
}

/* A read past the end of the stream fails with -EPIPE and says so; the
 * failure sticks. */
static void eof_case(pair_kind kind, bool bulk)
{
    chan_pair p = open_pair(kind, "writer", "test reader");
    lm_channel *w = p.w, *r = p.r;
    assert_int_equal(lm_channel_put(w, "abc", 3), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    assert_int_equal(lm_channel_close(w, NULL), 0);

    size_t n = bulk ? 512 * 1024 : 4;
    uint8_t *buf = malloc(n);
    assert_int_equal(lm_channel_get(r, buf, 2), 0);
    assert_memory_equal(buf, "ab", 2);
    assert_int_equal(lm_channel_get(r, buf, n), -EPIPE);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_channel_error(r, &err), -EPIPE);
    assert_int_equal(err.code, -EPIPE);
    if (!strstr(err.msg, "end of stream")) {
        fail_msg("EOF message: '%s'", err.msg);
    }
    assert_non_null(strstr(err.msg, "test reader"));
    /* Sticky. */
    uint8_t u8;
    assert_int_equal(lm_channel_get_u8(r, &u8), -EPIPE);
    assert_int_equal(lm_channel_skip(r, 1), -EPIPE);
    free(buf);
    lm_channel_close(r, NULL);
}

static void test_eof(void **state)
{
    (void)state;
    for (int bulk = 0; bulk < 2; bulk++) {
        eof_case(OVER_SOCKETPAIR, bulk);
        eof_case(OVER_PIPE, bulk);
    }
    /* EOF at a record boundary: nothing at all. */
    chan_pair p = open_pair(OVER_PIPE, "writer", "empty");
    lm_channel_close(p.w, NULL);
    uint8_t u8;
    assert_int_equal(lm_channel_get_u8(p.r, &u8), -EPIPE);
    lm_channel_close(p.r, NULL);
}

static void test_skip(void **state)
{
    (void)state;
    chan_pair p = open_pair(OVER_SOCKETPAIR, "w", "r");
    lm_channel *w = p.w, *r = p.r;
    uint8_t *data = malloc(20000);
    fill_pattern(data, 20000, 0);
    assert_int_equal(lm_channel_put(w, data, 20000), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    assert_int_equal(lm_channel_skip(r, 12345), 0);
    uint8_t b[10];
    assert_int_equal(lm_channel_get(r, b, 10), 0);
    assert_memory_equal(b, data + 12345, 10);
    assert_int_equal(lm_channel_skip(r, 20000 - 12355), 0);
    assert_int_equal(lm_channel_put_u8(w, 7), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    uint8_t last;
    assert_int_equal(lm_channel_get_u8(r, &last), 0);
    assert_int_equal(last, 7);
    free(data);
    close_pair(&p);
}


/* The first error sticks: every later call fails with its code, and the
 * first message stays. */
static void test_sticky_error(void **state)
{
    (void)state;
    chan_pair p = open_pair(OVER_SOCKETPAIR, "sticky", "peer");
    lm_channel *w = p.w, *peer = p.r;
    assert_int_equal(lm_channel_error(w, NULL), 0);
    assert_int_equal(lm_channel_put(w, "xy", 2), 0);
    assert_int_equal(lm_channel_set_error(w, -EIO, "first failure %d", 1), -EIO);
    assert_int_equal(lm_channel_set_error(w, -EINVAL, "second failure"), -EIO);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_channel_error(w, &err), -EIO);
    assert_string_equal(err.msg, "first failure 1");

    uint8_t buf[600 * 1024];
    memset(buf, 1, sizeof(buf));
    struct iovec iov = { buf, 10 };
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    assert_int_equal(lm_channel_put(w, buf, 1), -EIO);
    assert_int_equal(lm_channel_put(w, buf, sizeof(buf)), -EIO);
    assert_int_equal(lm_channel_put_u8(w, 1), -EIO);
    assert_int_equal(lm_channel_put_be16(w, 1), -EIO);
    assert_int_equal(lm_channel_put_be32(w, 1), -EIO);
    assert_int_equal(lm_channel_put_be64(w, 1), -EIO);
    assert_int_equal(lm_channel_put_ext(w, &iov, 1), -EIO);
    assert_int_equal(lm_channel_flush(w), -EIO);
    assert_int_equal(lm_channel_get(w, buf, 1), -EIO);
    assert_int_equal(lm_channel_get(w, buf, sizeof(buf)), -EIO);
    assert_int_equal(lm_channel_get_u8(w, &u8), -EIO);
    assert_int_equal(lm_channel_get_be16(w, &u16), -EIO);
    assert_int_equal(lm_channel_get_be32(w, &u32), -EIO);
    assert_int_equal(lm_channel_get_be64(w, &u64), -EIO);
    assert_int_equal(lm_channel_skip(w, 5), -EIO);
    lm_channel_shutdown(w, -ECANCELED, "cancelled later");
    lm_error err2 = LM_ERROR_INIT;
    assert_int_equal(lm_channel_error(w, &err2), -EIO);
    assert_string_equal(err2.msg, "first failure 1");
    /* Nothing buffered before the error went out. */
    assert_int_equal(lm_channel_bytes_written(w), 0);
    lm_channel_close(w, NULL);
    assert_int_equal(lm_channel_get_u8(peer, &u8), -EPIPE);
    lm_channel_close(peer, NULL);

    /* A write error on a closed peer: -EPIPE with a message, then sticky. */
    p = open_pair(OVER_SOCKETPAIR, "dead peer", "reader");
    w = p.w;
    lm_channel_close(p.r, NULL);
    int ret = lm_channel_put(w, buf, sizeof(buf));
    assert_true(ret == -EPIPE || ret == -ECONNRESET);
    lm_error err3 = LM_ERROR_INIT;
    assert_int_equal(lm_channel_error(w, &err3), ret);
    assert_non_null(strstr(err3.msg, "dead peer"));
    assert_int_equal(lm_channel_put_u8(w, 1), ret);
    lm_channel_close(w, NULL);
}

typedef struct blocked_arg {
    lm_channel *ch;
    int ret;
    volatile int done;
} blocked_arg;

static void *blocked_reader(void *opaque)
{
    blocked_arg *a = opaque;
    uint8_t buf[16];
    a->ret = lm_channel_get(a->ch, buf, sizeof(buf));
    a->done = 1;
    return NULL;
}

static void *blocked_bulk_reader(void *opaque)
{
    blocked_arg *a = opaque;
    uint8_t *buf = malloc(1u << 20);
    a->ret = lm_channel_get(a->ch, buf, 1u << 20);
    free(buf);
    a->done = 1;
    return NULL;
}

/* lm_channel_shutdown wakes a reader blocked in another thread. */
static void test_shutdown_wakes_reader(void **state)
{
    (void)state;
    void *(*fns[])(void *) = { blocked_reader, blocked_bulk_reader };
    for (int k = 0; k < 2; k++) {
        chan_pair p = open_pair(OVER_SOCKETPAIR, "peer", "blocked");
        lm_channel *r = p.r;
        /* A few bytes arrive first, so the reader blocks mid-read. */
        assert_int_equal(lm_channel_put(p.w, "abc", 3), 0);
        assert_int_equal(lm_channel_flush(p.w), 0);
        blocked_arg a = { r, 0, 0 };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, fns[k], &a), 0);
        usleep(100000);
        assert_false(a.done);
        lm_channel_shutdown(r, -ECANCELED, "test cancel");
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 5;
        if (pthread_timedjoin_np(t, NULL, &ts) != 0) {
            fail_msg("reader still blocked 5 s after lm_channel_shutdown");
        }
        assert_int_equal(a.ret, -ECANCELED);
        lm_error err = LM_ERROR_INIT;
        assert_int_equal(lm_channel_error(r, &err), -ECANCELED);
        assert_non_null(strstr(err.msg, "test cancel"));
        close_pair(&p);
    }
}

static double elapsed_s(uint64_t t0)
{
    return (double)(lm_now_ns() - t0) / 1e9;
}

/* 6 MB at 20 MB/s: the limiter must hold the writer back. */
static void test_ratelimit(void **state)
{
    (void)state;
    const size_t total = 6u << 20, chunk = 64 * 1024;
    uint8_t *buf = calloc(1, chunk);
    lm_ratelimit rl;

    /* Many small writes. */
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    lm_ratelimit_init(&rl, 20u << 20);
    lm_channel *w = lm_channel_new(fd, "limited", &rl);
    uint64_t t0 = lm_now_ns();
    for (size_t off = 0; off < total; off += chunk) {
        assert_int_equal(lm_channel_put(w, buf, chunk), 0);
    }
    assert_int_equal(lm_channel_flush(w), 0);
    double s = elapsed_s(t0);
    printf("# ratelimit: 6 MB in small writes at 20 MB/s took %.3f s\n", s);
    assert_true(s >= 0.15);
    assert_int_equal(lm_channel_bytes_written(w), total);
    lm_channel_close(w, NULL);

    /* One huge write overshoots a window; the next write waits it off. */
    fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    lm_ratelimit_set(&rl, 20u << 20);
    w = lm_channel_new(fd, "limited", &rl);
    uint8_t *big = calloc(1, total);
    usleep(120000); /* a fresh window */
    t0 = lm_now_ns();
    struct iovec iov = { big, total };
    assert_int_equal(lm_channel_put_ext(w, &iov, 1), 0);
    assert_int_equal(lm_channel_put_u8(w, 1), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    s = elapsed_s(t0);
    printf("# ratelimit: one 6 MB write + 1 byte at 20 MB/s took %.3f s\n", s);
    assert_true(s >= 0.15);
    lm_channel_close(w, NULL);

    /* Unlimited: no waiting. */
    fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    lm_ratelimit_set(&rl, 0);
    w = lm_channel_new(fd, "unlimited", &rl);
    t0 = lm_now_ns();
    for (int i = 0; i < 4; i++) {
        assert_int_equal(lm_channel_put_ext(w, &iov, 1), 0);
    }
    assert_true(elapsed_s(t0) < 2.0);
    lm_channel_close(w, NULL);
    lm_ratelimit_destroy(&rl);
    free(big);
    free(buf);
}

typedef struct rl_writer_arg {
    lm_ratelimit *rl;
    size_t total;
} rl_writer_arg;

static void *rl_writer(void *opaque)
{
    rl_writer_arg *a = opaque;
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    lm_channel *w = lm_channel_new(fd, "shared", a->rl);
    uint8_t *buf = calloc(1, 64 * 1024);
    for (size_t off = 0; off < a->total; off += 64 * 1024) {
        lm_channel_put(w, buf, 64 * 1024);
    }
    lm_channel_flush(w);
    free(buf);
    lm_channel_close(w, NULL);
    return NULL;
}

/* The budget is shared by every writer (ratelimit.h: "one bandwidth budget
 * shared by every writer of a migration"): two threads writing 6 MB each at
 * 20 MB/s must take about as long as one writer of 12 MB (>= 0.5 s with the
 * first 100 ms window free).  Asserts a lower bound only, with slack. */
static void test_ratelimit_shared(void **state)
{
    (void)state;
    lm_ratelimit rl;
    lm_ratelimit_init(&rl, 20u << 20);
    rl_writer_arg a = { &rl, 6u << 20 };
    pthread_t t1, t2;
    uint64_t t0 = lm_now_ns();
    pthread_create(&t1, NULL, rl_writer, &a);
    pthread_create(&t2, NULL, rl_writer, &a);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    double s = elapsed_s(t0);
    printf("# ratelimit: 2 x 6 MB from two threads at 20 MB/s took %.3f s (one writer: ~0.5 s)\n", s);
    if (s < 0.35) {
        fail_msg("12 MB through one 20 MB/s budget took %.3f s: the writers are not sharing it", s);
    }
    lm_ratelimit_destroy(&rl);
}

/* ---- URIs ---- */

static void parse_ok(const char *uri, lm_uri *u)
{
    lm_error err = LM_ERROR_INIT;
    int ret = lm_uri_parse(uri, u, &err);
    if (ret != 0) {
        fail_msg("'%s' rejected: %s", uri, err.msg);
    }
    assert_false(lm_error_is_set(&err));
}

static void parse_bad(const char *uri, int code, const char *words)
{
    lm_uri u;
    lm_error err = LM_ERROR_INIT;
    int ret = lm_uri_parse(uri, &u, &err);
    if (ret >= 0) {
        fail_msg("'%s' accepted", uri ? uri : "(null)");
    }
    assert_int_equal(ret, code);
    assert_int_equal(err.code, code);
    if (!err.msg[0] || (words && !strstr(err.msg, words))) {
        fail_msg("'%s': message '%s' lacks '%s'", uri ? uri : "(null)", err.msg, words);
    }
}

static void test_uri_parse(void **state)
{
    (void)state;
    lm_uri u;
    parse_ok("unix:/tmp/sock", &u);
    assert_int_equal(u.kind, LM_TRANSPORT_UNIX);
    assert_string_equal(u.path, "/tmp/sock");
    assert_true(lm_uri_multi_channel(&u));
    parse_bad("unix:", -EINVAL, "unix");
    char longpath[300] = "unix:/";
    memset(longpath + 6, 'p', 200);
    longpath[206] = '\0';
    parse_bad(longpath, -EINVAL, "unix socket path");

    parse_ok("tcp:127.0.0.1:4444", &u);
    assert_int_equal(u.kind, LM_TRANSPORT_TCP);
    assert_string_equal(u.host, "127.0.0.1");
    assert_string_equal(u.port, "4444");
    assert_true(lm_uri_multi_channel(&u));
    parse_ok("tcp:[::1]:5555", &u);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.port, "5555");
    parse_ok("tcp:[fe80::1%lo]:1", &u);
    assert_string_equal(u.host, "fe80::1%lo");
    parse_ok("tcp:localhost:0", &u);
    assert_string_equal(u.host, "localhost");
    assert_string_equal(u.port, "0");
    parse_ok("tcp::65535", &u);
    assert_string_equal(u.host, "0.0.0.0");
    assert_string_equal(u.port, "65535");
    parse_bad("tcp:127.0.0.1:65536", -EINVAL, "port");
    parse_bad("tcp:127.0.0.1:-1", -EINVAL, "port");
    parse_bad("tcp:127.0.0.1:http", -EINVAL, "port");
    parse_bad("tcp:127.0.0.1:12ab", -EINVAL, "port");
    parse_bad("tcp:127.0.0.1:", -EINVAL, "port");
    parse_bad("tcp:127.0.0.1", -EINVAL, "tcp:HOST:PORT");
    parse_bad("tcp:", -EINVAL, NULL);
    parse_bad("tcp:[::1]", -EINVAL, "IPv6");
    parse_bad("tcp:[::1:4444", -EINVAL, "IPv6");
    parse_bad("tcp:[::1]4444", -EINVAL, "IPv6");

    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    char buf[64];
    snprintf(buf, sizeof(buf), "fd:%d", fd);
    parse_ok(buf, &u);
    assert_int_equal(u.kind, LM_TRANSPORT_FD);
    assert_int_equal(u.fd, fd);
    assert_false(lm_uri_multi_channel(&u));
    close(fd);
    parse_bad(buf, -EBADF, "not an open file descriptor"); /* closed now */
    parse_bad("fd:", -EBADF, "fd:");
    parse_bad("fd:abc", -EBADF, "fd:abc");
    parse_bad("fd:3x", -EBADF, NULL);
    parse_bad("fd:-1", -EBADF, NULL);
    parse_bad("fd:99999999", -EBADF, NULL);

    parse_ok("exec:cat > /dev/null", &u);
    assert_int_equal(u.kind, LM_TRANSPORT_EXEC);
    assert_string_equal(u.path, "cat > /dev/null");
    assert_false(lm_uri_multi_channel(&u));
    parse_bad("exec:", -EINVAL, "command");

    parse_ok("file:/tmp/state.bin", &u);
    assert_int_equal(u.kind, LM_TRANSPORT_FILE);
    assert_string_equal(u.path, "/tmp/state.bin");
    assert_true(u.offset == 0);
    parse_ok("file:/tmp/state.bin,offset=4096", &u);
    assert_string_equal(u.path, "/tmp/state.bin");
    assert_true(u.offset == 4096);
    parse_ok("file:/tmp/x,offset=0x1000", &u);
    assert_true(u.offset == 0x1000);
    parse_bad("file:", -EINVAL, "file path");
    parse_bad("file:,offset=5", -EINVAL, "file path");
    parse_bad("file:/tmp/x,offset=", -EINVAL, "offset");
    parse_bad("file:/tmp/x,offset=-1", -EINVAL, "offset");
    parse_bad("file:/tmp/x,offset=12k", -EINVAL, "offset");
    parse_bad("file:/tmp/x,offset=99999999999999999999999", -EINVAL, "offset");

    parse_bad("rdma:1.2.3.4:5", -EINVAL, "unknown migration protocol");
    parse_bad("", -EINVAL, "unknown migration protocol");
    parse_bad("/tmp/sock", -EINVAL, "unknown migration protocol");
    parse_bad(NULL, -EINVAL, "URI");
}

/* ---- transports ---- */

static void test_tcp_port0(void **state)
{
    (void)state;
    lm_uri u;
    parse_ok("tcp:127.0.0.1:0", &u);
    lm_listener *l = NULL;
    lm_error err = LM_ERROR_INIT;
    if (lm_transport_listen(&u, &l, &err) < 0) {
        fail_msg("listen: %s", err.msg);
    }
    const char *addr = lm_listener_address(l);
    printf("# listening on %s\n", addr);
    assert_true(!strncmp(addr, "tcp:127.0.0.1:", 14));
    long port = strtol(addr + 14, NULL, 10);
    assert_true(port > 0 && port <= 65535);

    /* The resolved address is connectable. */
    lm_uri cu;
    parse_ok(addr, &cu);
    int cfd, pid, sfd, spid;
    assert_int_equal(lm_transport_connect(&cu, &cfd, &pid, NULL, NULL, &err), 0);
    assert_int_equal(pid, 0);
    assert_int_equal(lm_listener_accept(l, &sfd, &spid, &err), 0);
    lm_channel *c = lm_channel_new(cfd, "client", NULL);
    lm_channel *s = lm_channel_new(sfd, "server", NULL);
    assert_int_equal(lm_channel_put_be32(c, 0x12345678), 0);
    assert_int_equal(lm_channel_flush(c), 0);
    uint32_t v;
    assert_int_equal(lm_channel_get_be32(s, &v), 0);
    assert_int_equal(v, 0x12345678);
    lm_channel_close(c, NULL);
    lm_channel_close(s, NULL);

    /* An aborted accept returns -ECANCELED. */
    lm_listener_abort(l);
    lm_error aerr = LM_ERROR_INIT;
    assert_int_equal(lm_listener_accept(l, &sfd, &spid, &aerr), -ECANCELED);
    assert_true(aerr.msg[0] != '\0');
    lm_listener_close(l);

    /* IPv6 loopback, when the machine has it. */
    parse_ok("tcp:[::1]:0", &u);
    lm_error e6 = LM_ERROR_INIT;
    if (lm_transport_listen(&u, &l, &e6) == 0) {
        addr = lm_listener_address(l);
        printf("# listening on %s\n", addr);
        assert_true(!strncmp(addr, "tcp:[::1]:", 10));
        assert_true(strtol(addr + 10, NULL, 10) > 0);
        lm_listener_close(l);
    } else {
        printf("# no IPv6 loopback: %s\n", e6.msg);
    }
}

static void test_unix_transport(void **state)
{
    (void)state;
    char uri[128];
    snprintf(uri, sizeof(uri), "unix:/tmp/lm-test-channel-%d.sock", getpid());
    lm_uri u;
    parse_ok(uri, &u);
    lm_listener *l;
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_transport_listen(&u, &l, &err), 0);
    assert_string_equal(lm_listener_address(l), uri);
    int cfd, pid, sfd, spid;
    assert_int_equal(lm_transport_connect(&u, &cfd, &pid, NULL, NULL, &err), 0);
    assert_int_equal(lm_listener_accept(l, &sfd, &spid, &err), 0);
    assert_int_equal(write(cfd, "ping", 4), 4);
    char b[4];
    assert_int_equal(read(sfd, b, 4), 4);
    assert_memory_equal(b, "ping", 4);
    close(cfd);
    close(sfd);
    lm_listener_close(l);
    struct stat st;
    assert_int_equal(stat(u.path, &st), -1); /* socket removed */
    /* Nobody listening: a clear error. */
    lm_error cerr = LM_ERROR_INIT;
    assert_true(lm_transport_connect(&u, &cfd, &pid, NULL, NULL, &cerr) < 0);
    assert_non_null(strstr(cerr.msg, u.path));
}

static char tmpdir[64];

static void read_file(const char *path, uint8_t *buf, size_t cap, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, cap);
    assert_true(n >= 0);
    *len = (size_t)n;
    close(fd);
}

static void test_exec_transport(void **state)
{
    (void)state;
    char path[128], uri[256];
    snprintf(path, sizeof(path), "%s/exec-out.bin", tmpdir);
    snprintf(uri, sizeof(uri), "exec:cat > %s", path);
    lm_uri u;
    parse_ok(uri, &u);
    int fd, pid;
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_transport_connect(&u, &fd, &pid, NULL, NULL, &err), 0);
    assert_true(pid > 0);
    lm_channel *ch = lm_channel_new(fd, "exec", NULL);
    lm_channel_set_child(ch, pid);
    const size_t len = 300000;
    uint8_t *want = malloc(len), *got = malloc(len + 16);
    fill_pattern(want, len, 99);
    assert_int_equal(lm_channel_put(ch, want, len), 0);
    assert_int_equal(lm_channel_flush(ch), 0);
    assert_int_equal(lm_channel_close(ch, &err), 0);
    assert_false(lm_error_is_set(&err));
    size_t n;
    read_file(path, got, len + 16, &n);
    assert_int_equal(n, len);
    assert_memory_equal(got, want, len);

    /* Incoming over exec: the command's stdout is the stream. */
    snprintf(uri, sizeof(uri), "exec:cat %s", path);
    parse_ok(uri, &u);
    lm_listener *l;
    assert_int_equal(lm_transport_listen(&u, &l, &err), 0);
    assert_string_equal(lm_listener_address(l), "");
    int rfd, rpid;
    assert_int_equal(lm_listener_accept(l, &rfd, &rpid, &err), 0);
    assert_true(rpid > 0);
    /* Single stream: a second accept fails. */
    int fd2, pid2;
    lm_error e2 = LM_ERROR_INIT;
    assert_int_equal(lm_listener_accept(l, &fd2, &pid2, &e2), -EPIPE);
    ch = lm_channel_new(rfd, "exec in", NULL);
    lm_channel_set_child(ch, rpid);
    memset(got, 0, len);
    assert_int_equal(lm_channel_get(ch, got, len), 0);
    assert_memory_equal(got, want, len);
    uint8_t extra;
    assert_int_equal(lm_channel_get_u8(ch, &extra), -EPIPE);
    assert_int_equal(lm_channel_close(ch, &err), 0);
    lm_listener_close(l);

    /* A failing command is reported at close. */
    parse_ok("exec:exit 3", &u);
    assert_int_equal(lm_transport_connect(&u, &fd, &pid, NULL, NULL, &err), 0);
    ch = lm_channel_new(fd, "exec exit", NULL);
    lm_channel_set_child(ch, pid);
    lm_error cerr = LM_ERROR_INIT;
    int ret = lm_channel_close(ch, &cerr);
    assert_true(ret < 0);
    assert_int_equal(cerr.code, ret);
    if (!strstr(cerr.msg, "3")) {
        fail_msg("exit status missing from '%s'", cerr.msg);
    }
    assert_non_null(strstr(cerr.msg, "exit"));
    free(want);
    free(got);
}

static void test_file_transport(void **state)
{
    (void)state;
    char path[128], uri[256];
    snprintf(path, sizeof(path), "%s/file-out.bin", tmpdir);
    /* Pre-existing content: the part before the offset stays. */
    int pfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    uint8_t junk[8192];
    memset(junk, 0xcc, sizeof(junk));
    assert_int_equal(write(pfd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(pfd);

    snprintf(uri, sizeof(uri), "file:%s,offset=4096", path);
    lm_uri u;
    parse_ok(uri, &u);
    int fd, pid;
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_transport_connect(&u, &fd, &pid, NULL, NULL, &err), 0);
    assert_int_equal(pid, 0);
    lm_channel *ch = lm_channel_new(fd, "file", NULL);
    assert_int_equal(lm_channel_put(ch, "hello, file", 11), 0);
    assert_int_equal(lm_channel_flush(ch), 0);
    assert_int_equal(lm_channel_close(ch, &err), 0);

    uint8_t buf[16384];
    size_t n;
    read_file(path, buf, sizeof(buf), &n);
    assert_int_equal(n, 4096 + 11);
    for (size_t i = 0; i < 4096; i++) {
        assert_int_equal(buf[i], 0xcc);
    }
    assert_memory_equal(buf + 4096, "hello, file", 11);

    /* Reading back from the same offset. */
    lm_listener *l;
    assert_int_equal(lm_transport_listen(&u, &l, &err), 0);
    int rfd, rpid;
    assert_int_equal(lm_listener_accept(l, &rfd, &rpid, &err), 0);
    ch = lm_channel_new(rfd, "file in", NULL);
    char got[12] = { 0 };
    assert_int_equal(lm_channel_get(ch, got, 11), 0);
    assert_string_equal(got, "hello, file");
    uint8_t more;
    assert_int_equal(lm_channel_get_u8(ch, &more), -EPIPE); /* nothing after it */
    lm_channel_close(ch, NULL);
    lm_listener_close(l);

    /* Offset 0 truncates. */
    snprintf(uri, sizeof(uri), "file:%s", path);
    parse_ok(uri, &u);
    assert_int_equal(lm_transport_connect(&u, &fd, &pid, NULL, NULL, &err), 0);
    ch = lm_channel_new(fd, "file", NULL);
    lm_channel_put(ch, "x", 1);
    assert_int_equal(lm_channel_close(ch, &err), 0); /* close without flush: buffer is dropped */
    read_file(path, buf, sizeof(buf), &n);
    assert_int_equal(n, 0);

    /* Missing file on the incoming side: a clear error. */
    snprintf(uri, sizeof(uri), "file:%s/does-not-exist", tmpdir);
    parse_ok(uri, &u);
    lm_error merr = LM_ERROR_INIT;
    assert_true(lm_transport_listen(&u, &l, &merr) < 0);
    assert_non_null(strstr(merr.msg, "does-not-exist"));
    unlink(path);
}

/* Mapped-ram moves the stream around regions of the file: tell counts
 * buffered bytes on both sides, seek flushes writes and drops reads. */
static void test_file_tell_seek(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/seek.bin", tmpdir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    lm_channel *ch = lm_channel_new(fd, "seek out", NULL);
    uint64_t off = 1;
    assert_int_equal(lm_channel_put(ch, "abc", 3), 0);
    assert_int_equal(lm_channel_tell(ch, &off), 0);
    assert_int_equal(off, 3); /* still buffered */
    assert_int_equal(lm_channel_seek(ch, 1 << 20), 0);
    assert_int_equal(lm_channel_put(ch, "tail", 4), 0);
    assert_int_equal(lm_channel_tell(ch, &off), 0);
    assert_int_equal(off, (1 << 20) + 4);
    assert_int_equal(lm_channel_flush(ch), 0);
    assert_int_equal(lm_channel_close(ch, NULL), 0);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, (1 << 20) + 4);
    ch = lm_channel_new(fd, "seek in", NULL);
    char got[5] = { 0 };
    assert_int_equal(lm_channel_get(ch, got, 3), 0); /* the whole file is buffered now */
    assert_string_equal(got, "abc");
    assert_int_equal(lm_channel_tell(ch, &off), 0);
    assert_int_equal(off, 3);
    assert_int_equal(lm_channel_seek(ch, 1 << 20), 0);
    assert_int_equal(lm_channel_get(ch, got, 4), 0);
    assert_string_equal(got, "tail");
    assert_int_equal(lm_channel_seek(ch, 1), 0);
    assert_int_equal(lm_channel_get(ch, got, 2), 0);
    assert_memory_equal(got, "bc", 2);
    lm_channel_close(ch, NULL);

    /* Not seekable: a clear, sticky error. */
    int p[2];
    assert_int_equal(pipe(p), 0);
    ch = lm_channel_new(p[0], "pipe", NULL);
    assert_int_equal(lm_channel_seek(ch, 0), -ESPIPE);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_channel_error(ch, &err), -ESPIPE);
    assert_non_null(strstr(err.msg, "seeking"));
    lm_channel_close(ch, NULL);
    close(p[1]);
    unlink(path);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/lm-test-channel-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

/* ---- what a reader has received and not yet taken (the destination's
 * backlog report): the socket's queue, the channel's read buffer, and a
 * TLS session's records ---- */

#define PHASE (20 * 1024) /* all three fit a pipe (64 KiB), unread */

static void put_phase(lm_channel *w, size_t base)
{
    uint8_t *p = malloc(PHASE);
    fill_pattern(p, PHASE, base);
    struct iovec v = { p, PHASE };
    assert_int_equal(lm_channel_put_ext(w, &v, 1), 0);
    assert_int_equal(lm_channel_flush(w), 0);
    free(p);
}

/* The writer's bytes are all sent (and fit the kernel's buffers) whenever
 * the count is taken, so it is exact for a plain channel: written minus
 * read, wherever the bytes wait.  For TLS, lo..lo + slack: records carry
 * a header and a tag. */
static void check_pending(lm_channel *r, uint64_t want, uint64_t slack)
{
    /* tcp loopback: a loaded machine may leave the delivery of a segment
     * to ksoftirqd after the send returned.  Nothing is read meanwhile,
     * so the count only grows; wait for it (a minute at most). */
    uint64_t got = lm_channel_input_pending(r);
    for (int i = 0; i < 60000 && got < want; i++) {
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
        got = lm_channel_input_pending(r);
    }
    if (got < want || got > want + slack) {
        fail_msg("pending %llu, expected %llu (+%llu)", (unsigned long long)got,
                 (unsigned long long)want, (unsigned long long)slack);
    }
}

static void pending_case(lm_channel *w, lm_channel *r, uint64_t slack)
{
    uint8_t *buf = malloc(3 * PHASE);
    uint8_t *want = malloc(3 * PHASE);
    fill_pattern(want, 3 * PHASE, 0);
    put_phase(w, 0);
    check_pending(r, PHASE, slack);
    /* The first read takes what the kernel had into the channel's buffer
     * (or the session's): still pending, less the 10 bytes. */
    assert_int_equal(lm_channel_get(r, buf, 10), 0);
    check_pending(r, PHASE - 10, slack);
    put_phase(w, PHASE);
    put_phase(w, 2 * PHASE);
    check_pending(r, 3 * PHASE - 10, slack);
    assert_int_equal(lm_channel_get(r, buf + 10, PHASE + PHASE / 2), 0);
    check_pending(r, PHASE + PHASE / 2 - 10, slack);
    assert_int_equal(lm_channel_get(r, buf + 10 + PHASE + PHASE / 2, PHASE + PHASE / 2 - 10), 0);
    check_pending(r, 0, 0);
    assert_memory_equal(buf, want, 3 * PHASE);
    free(buf);
    free(want);
}

static void test_input_pending(void **state)
{
    (void)state;
    const pair_kind kinds[] = { OVER_SOCKETPAIR, OVER_PIPE };
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        chan_pair p = open_pair(kinds[i], "writer", "reader");
        pending_case(p.w, p.r, 0);
        close_pair(&p);
    }
}

typedef struct tls_accept_arg {
    lm_listener *l;
    lm_channel *ch;
    lm_error err;
} tls_accept_arg;

static void *tls_accept_main(void *opaque)
{
    tls_accept_arg *a = opaque;
    int fd, pid;
    if (lm_listener_accept(a->l, &fd, &pid, &a->err) == 0) {
        a->ch = lm_channel_new(fd, "tls reader", NULL);
        if (lm_tls_server(a->ch, a->l, &a->err) < 0) {
            lm_channel_close(a->ch, NULL);
            a->ch = NULL;
        }
    }
    return NULL;
}

static lm_tls_config *psk_config(const char *dir, lm_tls_endpoint end)
{
    lm_tls_creds *c = NULL;
    lm_error err = LM_ERROR_INIT;
    if (lm_tls_creds_psk_new(dir, "qemu", end, NULL, &c, &err) < 0) {
        fail_msg("PSK credentials: %s", err.msg);
    }
    lm_tls_config *cfg = lm_tls_config_new(c, NULL, NULL, NULL);
    assert_non_null(cfg);
    return cfg;
}

/* Through TLS (PSK over tcp loopback): records the session read off the
 * socket, decrypted or not, count too. */
static void test_input_pending_tls(void **state)
{
    (void)state;
    char dir[128], path[160];
    snprintf(dir, sizeof(dir), "%s/psk", tmpdir);
    snprintf(path, sizeof(path), "%s/keys.psk", dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "qemu:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n");
    fclose(f);

    lm_uri lu, cu;
    parse_ok("tcp:127.0.0.1:0", &lu);
    lu.tls = psk_config(dir, LM_TLS_ENDPOINT_SERVER);
    lm_listener *l = NULL;
    lm_error err = LM_ERROR_INIT;
    if (lm_transport_listen(&lu, &l, &err) < 0) {
        fail_msg("listen: %s", err.msg);
    }
    parse_ok(lm_listener_address(l), &cu);
    cu.tls = psk_config(dir, LM_TLS_ENDPOINT_CLIENT);
    tls_accept_arg a = { .l = l, .err = LM_ERROR_INIT };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, tls_accept_main, &a), 0);
    int fd, pid;
    assert_int_equal(lm_transport_connect(&cu, &fd, &pid, NULL, NULL, &err), 0);
    lm_channel *w = lm_channel_new(fd, "tls writer", NULL);
    if (lm_tls_client(w, &cu, &err) < 0) {
        fail_msg("client: %s", err.msg);
    }
    pthread_join(th, NULL);
    if (!a.ch) {
        fail_msg("server: %s", a.err.msg);
    }
    assert_true(lm_channel_is_tls(a.ch));
    /* A record is at most 16 KiB, each with 22 bytes of TLS 1.3 framing
     * (GnuTLS's default); 64 leaves room for TLS 1.2's. */
    uint64_t slack = (3 * PHASE / 16384 + 3) * 64;
    pending_case(w, a.ch, slack);
    lm_channel_close(w, NULL);
    lm_channel_close(a.ch, NULL);
    lm_listener_close(l);
    lm_tls_config_free((lm_tls_config *)lu.tls);
    lm_tls_config_free((lm_tls_config *)cu.tls);
    unlink(path);
    rmdir(dir);
}

static int group_teardown(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/exec-out.bin", tmpdir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/file-out.bin", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buffered_socketpair),
        cmocka_unit_test(test_buffered_pipe),
        cmocka_unit_test(test_put_ext_many_iovecs),
        cmocka_unit_test(test_large_reads),
        cmocka_unit_test(test_eof),
        cmocka_unit_test(test_skip),
        cmocka_unit_test(test_sticky_error),
        cmocka_unit_test(test_shutdown_wakes_reader),
        cmocka_unit_test(test_ratelimit),
        cmocka_unit_test(test_ratelimit_shared),
        cmocka_unit_test(test_uri_parse),
        cmocka_unit_test(test_tcp_port0),
        cmocka_unit_test(test_unix_transport),
        cmocka_unit_test(test_exec_transport),
        cmocka_unit_test(test_file_transport),
        cmocka_unit_test(test_put_file),
        cmocka_unit_test(test_put_file_dead_peer),
        cmocka_unit_test(test_put_mem),
        cmocka_unit_test(test_put_mem_dead_peer),
        cmocka_unit_test(test_mem_by_reference),
        cmocka_unit_test(test_file_tell_seek),
        cmocka_unit_test(test_input_pending),
        cmocka_unit_test(test_input_pending_tls),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
