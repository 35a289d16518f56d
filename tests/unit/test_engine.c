/*
 * Engine end to end without livemig-vm: a source process with a writer
 * thread dirtying RAM migrates to a forked destination over a real socket;
 * the destination's memory must equal the source's at the stop point.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
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
    usleep(20000);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_engine_set_param_str(src.engine, "x-dirty-tracker", tracker, &err), 0);
    int ret = lm_engine_migrate(src.engine, uri, false, &err);
    if (ret < 0) {
        fail_msg("migrate: %s", err.msg);
    }
    lm_status st = harness_wait_end(&src, 60000);
    lm_info info;
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

int main(void)
{
    snprintf(sock_uri, sizeof(sock_uri), "unix:/tmp/lm-test-engine-%d.sock", getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unix_uffd),
        cmocka_unit_test(test_unix_manual),
        cmocka_unit_test(test_tcp_sparse),
        cmocka_unit_test(test_unix_first_touch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
