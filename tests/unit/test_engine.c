/*
 * Engine end to end without livemig-vm: a source process with a writer
 * thread dirtying RAM migrates to a forked destination over a real socket;
 * the destination's memory must equal the source's at the stop point.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine_harness.h"

#define RAM_SIZE (64ull << 20)

/* Destination: listen, load, report (status, hash) through a pipe. */
static void run_destination(const char *uri, int report_fd, int ready_fd)
{
    harness h;
    if (harness_init(&h, RAM_SIZE, false) < 0) {
        _exit(2);
    }
    lm_error err = LM_ERROR_INIT;
    if (lm_engine_incoming(h.engine, uri, &err) < 0) {
        fprintf(stderr, "incoming: %s\n", err.msg);
        _exit(3);
    }
    char c = 1;
    if (write(ready_fd, &c, 1) != 1) {
        _exit(4);
    }
    lm_status st = harness_wait_end(&h, 60000);
    uint64_t result[2] = { st, harness_hash(&h) };
    if (write(report_fd, result, sizeof(result)) != sizeof(result)) {
        _exit(5);
    }
    harness_destroy(&h);
    _exit(0);
}

static void migrate_once_mode(const char *uri, const char *tracker, bool populate, bool sequential);

static void migrate_once(const char *uri, const char *tracker, bool populate)
{
    migrate_once_mode(uri, tracker, populate, false);
}

static void migrate_once_mode(const char *uri, const char *tracker, bool populate, bool sequential)
{
    int report[2], ready[2];
    assert_int_equal(pipe(report), 0);
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        run_destination(uri, report[1], ready[1]);
    }
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);

    harness src;
    assert_int_equal(harness_init(&src, RAM_SIZE, populate), 0);
    src.sequential = sequential;
    harness_start_writer(&src);
    /* The guest has written before the migration starts, however slowly a
     * loaded machine schedules its thread (the check below relies on it). */
    for (int ms = 0; __atomic_load_n(&src.writes, __ATOMIC_RELAXED) == 0; ms++) {
        if (ms == 60000) {
            fail_msg("the writer thread never wrote");
        }
        usleep(1000);
    }
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_engine_set_param_str(src.engine, "x-dirty-tracker", tracker, &err), 0);
    int ret = lm_engine_migrate(src.engine, uri, false, &err);
    if (ret < 0) {
        fail_msg("migrate: %s", err.msg);
    }
    lm_status st = harness_wait_end(&src, 60000);
    lm_info info = LM_INFO_INIT;
    lm_engine_query(src.engine, &info);
    if (st != LM_STATUS_COMPLETED) {
        fail_msg("source ended in %s: %s", lm_status_name(st), info.error_desc);
    }
    assert_string_equal(info.dirty_tracker, !strcmp(tracker, "manual") ? "manual" : "uffd-wp-async");
    assert_true(src.writes > 0);
    uint64_t result[2];
    assert_int_equal(read(report[0], result, sizeof(result)), (ssize_t)sizeof(result));
    assert_int_equal(result[0], LM_STATUS_COMPLETED);
    /* The source stays stopped after completion: its memory is the stop point. */
    assert_int_equal(result[1], harness_hash(&src));
    int wst;
    waitpid(pid, &wst, 0);
    assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    printf("# %s tracker=%s: passes=%llu downtime=%llums transferred=%llu zero=%llu\n", uri,
           tracker, (unsigned long long)info.dirty_sync_count, (unsigned long long)info.downtime_ms,
           (unsigned long long)info.ram_transferred, (unsigned long long)info.ram_duplicate);
    harness_destroy(&src);
    close(report[0]);
    close(report[1]);
    close(ready[0]);
    close(ready[1]);
}

static char sock_uri[128];

static void test_unix_uffd(void **state)
{
    (void)state;
    migrate_once(sock_uri, "uffd-wp", true);
}

static void test_unix_manual(void **state)
{
    (void)state;
    migrate_once(sock_uri, "manual", true);
}

static void test_tcp_sparse(void **state)
{
    (void)state;
    /* A fixed port per process avoids a port-0 round trip through the child. */
    char uri[64];
    snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%d", 20000 + getpid() % 20000);
    migrate_once(uri, "auto", false);
}

static void test_unix_first_touch(void **state)
{
    (void)state;
    /* Pages never populated at the start are sent as zero without a read;
     * their first writes during the migration must still arrive. */
    for (int i = 0; i < 5; i++) {
        migrate_once_mode(sock_uri, "uffd-wp", false, true);
        migrate_once_mode(sock_uri, "manual", false, true);
    }
}

/* ---- iterative devices are not serialised (seed 003) ---- */

#define DEV_BYTES (4u << 20)

typedef struct iter_dev {
    bool endless;          /* always has more precopy data */
    uint8_t data[DEV_BYTES];
    uint32_t sent;         /* source: bytes sent so far */
    uint32_t sent_precopy; /* source: bytes sent before switchover */
    uint32_t loaded;       /* destination: bytes loaded */
    bool loaded_ok;
} iter_dev;

static int dev_iterate(void *opaque, lm_wbuf *out, uint64_t budget, lm_error *err)
{
    iter_dev *d = opaque;
    (void)err;
    if (d->endless) {
        /* A fast-changing device: it always has something new. */
        lm_wbuf_put_be32(out, 0);
        lm_wbuf_put(out, d->data, 4096);
        return 0;
    }
    uint32_t n = DEV_BYTES - d->sent;
    if (n > budget) {
        n = (uint32_t)budget;
    }
    lm_wbuf_put_be32(out, d->sent);
    lm_wbuf_put(out, d->data + d->sent, n);
    d->sent += n;
    d->sent_precopy = d->sent;
    return d->sent == DEV_BYTES;
}

static int dev_complete(void *opaque, lm_wbuf *out, lm_error *err)
{
    iter_dev *d = opaque;
    (void)err;
    uint32_t n = d->endless ? 4096 : DEV_BYTES - d->sent;
    lm_wbuf_put_be32(out, d->endless ? 0 : d->sent);
    lm_wbuf_put(out, d->data + (d->endless ? 0 : d->sent), n);
    d->sent += n;
    return 0;
}

static void dev_pending(void *opaque, bool exact, lm_pending *p)
{
    iter_dev *d = opaque;
    (void)exact;
    p->precopy_bytes = d->endless ? (64u << 20) : DEV_BYTES - d->sent;
    p->stopcopy_bytes = d->endless ? 4096 : DEV_BYTES - d->sent;
}

static int dev_load(void *opaque, lm_rbuf *in, uint32_t version, lm_error *err)
{
    iter_dev *d = opaque;
    uint32_t off;
    (void)version;
    if (lm_rbuf_get_be32(in, &off) < 0 || off > DEV_BYTES ||
        lm_rbuf_remaining(in) > DEV_BYTES - off) {
        return lm_error_set(err, -EBADMSG, "bad test device chunk");
    }
    size_t n = lm_rbuf_remaining(in);
    lm_rbuf_get(in, d->data + off, n);
    d->loaded = off + (uint32_t)n > d->loaded ? off + (uint32_t)n : d->loaded;
    return 0;
}

static const lm_iter_ops dev_ops = {
    .save_iterate = dev_iterate,
    .save_complete = dev_complete,
    .query_pending = dev_pending,
    .load = dev_load,
};

static void fill_dev(iter_dev *d, bool endless)
{
    memset(d, 0, sizeof(*d));
    d->endless = endless;
    for (uint32_t i = 0; i < DEV_BYTES; i++) {
        d->data[i] = (uint8_t)(i * 7 + (i >> 12));
    }
}

static void test_iterative_devices_not_serialised(void **state)
{
    (void)state;
    static iter_dev src_fast, src_slow, dst_fast, dst_slow;
    int report[2], ready[2];
    assert_int_equal(pipe(report), 0);
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        harness h;
        lm_error err = LM_ERROR_INIT;
        memset(&dst_fast, 0, sizeof(dst_fast));
        memset(&dst_slow, 0, sizeof(dst_slow));
        if (harness_init(&h, RAM_SIZE, false) < 0 ||
            lm_engine_add_iterative(h.engine, "fast", 0, 1, &dev_ops, &dst_fast, &err) < 0 ||
            lm_engine_add_iterative(h.engine, "slow", 0, 1, &dev_ops, &dst_slow, &err) < 0 ||
            lm_engine_incoming(h.engine, sock_uri, &err) < 0) {
            _exit(2);
        }
        char c = 1;
        if (write(ready[1], &c, 1) != 1) {
            _exit(3);
        }
        uint64_t st = harness_wait_end(&h, 60000);
        iter_dev expect;
        fill_dev(&expect, false);
        uint64_t result[2] = { st, dst_slow.loaded == DEV_BYTES &&
                                       !memcmp(dst_slow.data, expect.data, DEV_BYTES) };
        if (write(report[1], result, sizeof(result)) != sizeof(result)) {
            _exit(4);
        }
        _exit(0);
    }
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);
    harness src;
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(harness_init(&src, RAM_SIZE, true), 0);
    fill_dev(&src_fast, true);
    fill_dev(&src_slow, false);
    /* The fast device registers first: serialised iteration would starve
     * the slow one until the switchover. */
    assert_int_equal(lm_engine_add_iterative(src.engine, "fast", 0, 1, &dev_ops, &src_fast, &err), 0);
    assert_int_equal(lm_engine_add_iterative(src.engine, "slow", 0, 1, &dev_ops, &src_slow, &err), 0);
    assert_int_equal(lm_engine_migrate(src.engine, sock_uri, false, &err), 0);
    assert_int_equal(harness_wait_end(&src, 60000), LM_STATUS_COMPLETED);
    /* Every byte of the slow device moved while the guest ran. */
    assert_int_equal(src_slow.sent_precopy, DEV_BYTES);
    uint64_t result[2];
    assert_int_equal(read(report[0], result, sizeof(result)), (ssize_t)sizeof(result));
    assert_int_equal(result[0], LM_STATUS_COMPLETED);
    assert_int_equal(result[1], 1);
    int wst;
    waitpid(pid, &wst, 0);
    harness_destroy(&src);
    close(report[0]);
    close(report[1]);
    close(ready[0]);
    close(ready[1]);
}

int main(void)
{
    snprintf(sock_uri, sizeof(sock_uri), "unix:/tmp/lm-test-engine-%d.sock", getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unix_uffd),
        cmocka_unit_test(test_unix_manual),
        cmocka_unit_test(test_tcp_sparse),
        cmocka_unit_test(test_unix_first_touch),
        cmocka_unit_test(test_iterative_devices_not_serialised),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
