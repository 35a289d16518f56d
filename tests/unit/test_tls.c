/*
 * The TLS record path of a channel (channel/tls.c) against the ways the
 * bytes can arrive: every channel write shape (pieces of a byte, a piece
 * of exactly one record, one byte more, pieces larger than the send
 * batch) read back in every read shape, through a relay that hands the
 * ciphertext on in small pieces, so that records, and record headers,
 * arrive split across the receiver's reads; and a stream that is
 * tampered with or cut short in the middle of a record.
 *
 * Both ends are lm_channels over socket pairs with a PSK session (no
 * certificates needed); the relay between them is a thread of this test.
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
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "channel/channel.h"
#include "channel/tls.h"
#include "channel/transport.h"
#include "common/util.h"

static char tmpdir[64];

/* ---- the relay: client <-> server, the client's bytes in small pieces ---- */

typedef struct relay {
    int a, b;                 /* client side, server side */
    /* After `armed` is set, the client's bytes are counted; at `flip_at`
     * one is inverted, at `cut_at` both connections are closed. */
    int armed;
    uint64_t seen, flip_at, cut_at;
    pthread_t th;
} relay;

/* Piece sizes that cut records (16 KiB + 22 bytes) and their 5-byte
 * headers at every kind of offset. */
static const size_t PIECES[] = { 1, 3, 5, 2, 700, 4096, 16406, 9, 16405, 65536, 333 };

static int forward(relay *r, int from, int to, bool client, size_t *k)
{
    uint8_t buf[65536];
    size_t want = client ? PIECES[(*k)++ % (sizeof(PIECES) / sizeof(PIECES[0]))] : sizeof(buf);
    ssize_t n = read(from, buf, want);
    if (n <= 0) {
        return -1;
    }
    if (client && __atomic_load_n(&r->armed, __ATOMIC_ACQUIRE)) {
        if (r->cut_at && r->seen + (uint64_t)n >= r->cut_at) {
            n = (ssize_t)(r->cut_at - r->seen);
            if (n > 0 && send(to, buf, (size_t)n, MSG_NOSIGNAL) != n) {
                return -1;
            }
            return -1;
        }
        if (r->flip_at && r->seen <= r->flip_at && r->flip_at < r->seen + (uint64_t)n) {
            buf[r->flip_at - r->seen] ^= 0x40;
        }
        r->seen += (uint64_t)n;
    }
    for (ssize_t done = 0; done < n;) {
        /* No SIGPIPE when the test has shut the other end down. */
        ssize_t w = send(to, buf + done, (size_t)(n - done), MSG_NOSIGNAL);
        if (w <= 0) {
            return -1;
        }
        done += w;
    }
    return 0;
}

static void *relay_main(void *opaque)
{
    relay *r = opaque;
    size_t k = 0;
    for (;;) {
        struct pollfd p[2] = { { r->a, POLLIN, 0 }, { r->b, POLLIN, 0 } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) && forward(r, r->a, r->b, true, &k) < 0) {
            break;
        }
        if ((p[1].revents & (POLLIN | POLLHUP | POLLERR)) && forward(r, r->b, r->a, false, &k) < 0) {
            break;
        }
    }
    shutdown(r->a, SHUT_RDWR);
    shutdown(r->b, SHUT_RDWR);
    return NULL;
}

/* ---- a PSK session over the relay ---- */

typedef struct pair {
    lm_channel *w, *r;        /* the client writes, the server reads */
    relay rl;
    lm_uri cu, lu;
    lm_listener *l;           /* only for its TLS configuration */
} pair;

typedef struct server_arg {
    lm_channel *ch;
    lm_listener *l;
    lm_error err;
    int ret;
} server_arg;

static void *server_main(void *opaque)
{
    server_arg *s = opaque;
    s->ret = lm_tls_server(s->ch, s->l, &s->err);
    return NULL;
}

static lm_tls_config *psk_config(lm_tls_endpoint end)
{
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/psk", tmpdir);
    lm_tls_creds *c = NULL;
    lm_error err = LM_ERROR_INIT;
    if (lm_tls_creds_psk_new(dir, "qemu", end, NULL, &c, &err) < 0) {
        fail_msg("PSK credentials: %s", err.msg);
    }
    lm_tls_config *cfg = lm_tls_config_new(c, NULL, NULL, NULL);
    assert_non_null(cfg);
    return cfg;
}

static void socket_pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static void pair_open(pair *p, uint64_t flip_at, uint64_t cut_at)
{
    memset(p, 0, sizeof(*p));
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_uri_parse("tcp:127.0.0.1:0", &p->lu, &err), 0);
    p->lu.tls = psk_config(LM_TLS_ENDPOINT_SERVER);
    if (lm_transport_listen(&p->lu, &p->l, &err) < 0) {
        fail_msg("listen: %s", err.msg);
    }
    assert_int_equal(lm_uri_parse("unix:/nonexistent", &p->cu, &err), 0);
    p->cu.tls = psk_config(LM_TLS_ENDPOINT_CLIENT);

    int c[2], s[2];
    socket_pair(c);
    socket_pair(s);
    p->rl.a = c[1];
    p->rl.b = s[0];
    p->rl.flip_at = flip_at;
    p->rl.cut_at = cut_at;
    assert_int_equal(pthread_create(&p->rl.th, NULL, relay_main, &p->rl), 0);

    p->w = lm_channel_new(c[0], "tls writer", NULL);
    p->r = lm_channel_new(s[1], "tls reader", NULL);
    server_arg sa = { .ch = p->r, .l = p->l, .err = LM_ERROR_INIT };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, server_main, &sa), 0);
    int ret = lm_tls_client(p->w, &p->cu, &err);
    pthread_join(th, NULL);
    if (ret < 0 || sa.ret < 0) {
        fail_msg("handshake: client %s / server %s", err.msg, sa.err.msg);
    }
    assert_true(lm_channel_is_tls(p->w) && lm_channel_is_tls(p->r));
    __atomic_store_n(&p->rl.armed, 1, __ATOMIC_RELEASE);
}

/* Lets go of every thread blocked on the pair (the relay ends). */
static void pair_shutdown(pair *p)
{
    lm_channel_shutdown(p->w, -ECANCELED, "test over");
    lm_channel_shutdown(p->r, -ECANCELED, "test over");
    pthread_join(p->rl.th, NULL);
}

/* After pair_shutdown and the end of the threads that use the channels. */
static void pair_free(pair *p)
{
    lm_channel_close(p->w, NULL);
    lm_channel_close(p->r, NULL);
    close(p->rl.a);
    close(p->rl.b);
    lm_listener_close(p->l);
    lm_tls_config_free((lm_tls_config *)p->lu.tls);
    lm_tls_config_free((lm_tls_config *)p->cu.tls);
}

/* ---- the bytes ---- */

static uint8_t pattern_at(uint64_t i)
{
    return (uint8_t)(i * 2654435761u >> 13);
}

static void fill(uint8_t *p, size_t n, uint64_t base)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = pattern_at(base + i);
    }
}

/* The writes, in order: iovec arrays of these piece sizes.  16384 is one
 * full record, 262144 the send batch; the largest piece spans several
 * batches and starts at an odd offset within a record. */
static const size_t W1[] = { 1, 5, 4096 };
static const size_t W2[] = { 16384 };
static const size_t W3[] = { 16385, 7, 16383 };
static const size_t W4[] = { 3, (1u << 20) + 3, 262144 };
static const size_t W5[] = { 262143, 1, 2, 262144 };
static const struct { const size_t *sizes; int n; } WRITES[] = {
    { W1, 3 }, { W2, 1 }, { W3, 3 }, { W4, 3 }, { W5, 4 },
};

static uint64_t total_bytes(void)
{
    uint64_t t = 0;
    for (size_t w = 0; w < sizeof(WRITES) / sizeof(WRITES[0]); w++) {
        for (int i = 0; i < WRITES[w].n; i++) {
            t += WRITES[w].sizes[i];
        }
    }
    return t;
}

typedef struct writer_arg {
    lm_channel *ch;
    int ret;
} writer_arg;

static void *writer_main(void *opaque)
{
    writer_arg *a = opaque;
    uint64_t off = 0;
    a->ret = 0;
    for (size_t w = 0; w < sizeof(WRITES) / sizeof(WRITES[0]) && a->ret == 0; w++) {
        struct iovec iov[4];
        for (int i = 0; i < WRITES[w].n; i++) {
            iov[i].iov_len = WRITES[w].sizes[i];
            iov[i].iov_base = malloc(iov[i].iov_len);
            assert_non_null(iov[i].iov_base);
            fill(iov[i].iov_base, iov[i].iov_len, off);
            off += iov[i].iov_len;
        }
        /* The small first write goes through the channel's buffer, the
         * others as they are (the shapes precopy's pages take). */
        if (w == 0) {
            for (int i = 0; i < WRITES[w].n && a->ret == 0; i++) {
                a->ret = lm_channel_put(a->ch, iov[i].iov_base, iov[i].iov_len);
            }
        } else {
            a->ret = lm_channel_put_ext(a->ch, iov, WRITES[w].n);
        }
        if (a->ret == 0) {
            a->ret = lm_channel_flush(a->ch);
        }
        for (int i = 0; i < WRITES[w].n; i++) {
            free(iov[i].iov_base);
        }
    }
    return NULL;
}

/* Every byte arrives, in order, whatever the shapes of the writes, of the
 * reads, and of the pieces the ciphertext arrives in. */
static void test_record_shapes(void **state)
{
    (void)state;
    pair p;
    pair_open(&p, 0, 0);
    writer_arg wa = { .ch = p.w };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_main, &wa), 0);

    uint64_t total = total_bytes();
    uint8_t *got = malloc(total);
    uint8_t *want = malloc(total);
    assert_non_null(got);
    assert_non_null(want);
    fill(want, total, 0);
    /* Reads below a record (through the channel's read buffer), of one,
     * and above it (straight into place). */
    static const size_t READS[] = { 1, 13, 4096, 16384, 16385, 65537, 2, 300000 };
    uint64_t off = 0;
    for (size_t k = 0; off < total; k++) {
        size_t n = (size_t)LM_MIN((uint64_t)READS[k % (sizeof(READS) / sizeof(READS[0]))],
                                  total - off);
        if (lm_channel_get(p.r, got + off, n) < 0) {
            lm_error err = LM_ERROR_INIT;
            lm_channel_error(p.r, &err);
            fail_msg("read at %llu: %s", (unsigned long long)off, err.msg);
        }
        off += n;
    }
    pthread_join(th, NULL);
    assert_int_equal(wa.ret, 0);
    assert_memory_equal(got, want, total);
    free(got);
    free(want);
    pair_shutdown(&p);
    pair_free(&p);
}

/* Reads total bytes or stops at the first error; returns it (0: none). */
static int read_until_error(lm_channel *r, uint64_t total, lm_error *err)
{
    uint8_t *buf = malloc(65536);
    assert_non_null(buf);
    int ret = 0;
    for (uint64_t off = 0; off < total && ret == 0;) {
        size_t n = (size_t)LM_MIN((uint64_t)65536, total - off);
        ret = lm_channel_get(r, buf, n);
        off += n;
    }
    if (ret < 0) {
        lm_channel_error(r, err);
    }
    free(buf);
    return ret;
}

/* One bit flipped inside a record's ciphertext: the reader refuses the
 * record with a message that says so, and stops; nothing hangs. */
static void test_tampered_record(void **state)
{
    (void)state;
    pair p;
    /* Well inside the third write's records. */
    pair_open(&p, 30000, 0);
    writer_arg wa = { .ch = p.w };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_main, &wa), 0);
    lm_error err = LM_ERROR_INIT;
    int ret = read_until_error(p.r, total_bytes(), &err);
    if (ret != -EBADMSG || !strstr(err.msg, "failed authentication")) {
        fail_msg("tampered record: %d, '%s'", ret, err.msg);
    }
    /* The writer, blocked on a full socket or done, is let go. */
    pair_shutdown(&p);
    pthread_join(th, NULL);
    pair_free(&p);
}

/* The connection cut in the middle of a record: an end-of-stream error,
 * not a hang and not a short record passed on. */
static void test_cut_mid_record(void **state)
{
    (void)state;
    pair p;
    pair_open(&p, 0, 16406 + 700);
    writer_arg wa = { .ch = p.w };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_main, &wa), 0);
    lm_error err = LM_ERROR_INIT;
    int ret = read_until_error(p.r, total_bytes(), &err);
    if ((ret != -EPIPE && ret != -ECONNRESET) ||
        (!strstr(err.msg, "end of stream") && !strstr(err.msg, "closed"))) {
        fail_msg("cut stream: %d, '%s'", ret, err.msg);
    }
    pthread_join(th, NULL);
    assert_true(wa.ret < 0);
    pair_shutdown(&p);
    pair_free(&p);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/lm-test-tls-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        return -1;
    }
    char dir[128], path[160];
    snprintf(dir, sizeof(dir), "%s/psk", tmpdir);
    snprintf(path, sizeof(path), "%s/keys.psk", dir);
    if (mkdir(dir, 0700) < 0) {
        return -1;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        return -1;
    }
    fprintf(f, "qemu:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n");
    fclose(f);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char path[160];
    snprintf(path, sizeof(path), "%s/psk/keys.psk", tmpdir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/psk", tmpdir);
    rmdir(path);
    rmdir(tmpdir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_shapes),
        cmocka_unit_test(test_tampered_record),
        cmocka_unit_test(test_cut_mid_record),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
