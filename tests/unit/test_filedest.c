/* File-backed destination (src/ram/filedest.h, through ram_load.h): pages
 * go into the backing file, zero pages are holes, the mapping is never
 * touched. */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "ram/filedest.h"
#include "ram/ram_load.h"

#define PAGES 256u
#define PSIZE 4096u
#define SIZE ((size_t)PAGES * PSIZE)

typedef struct fixture {
    int fd;
    uint8_t *map;
    lm_ram_block *b;
    lm_ram_loader l;
    char path[64];
} fixture;

/* A block over fd (a memfd, or a regular file when path is set). */
static void setup_block(fixture *f, bool regular, bool stale)
{
    memset(f, 0, sizeof(*f));
    if (regular) {
        snprintf(f->path, sizeof(f->path), "/tmp/lm-filedest-XXXXXX");
        f->fd = mkstemp(f->path);
    } else {
        f->fd = memfd_create("lm-filedest-test", MFD_CLOEXEC);
    }
    assert_true(f->fd >= 0);
    assert_int_equal(ftruncate(f->fd, (off_t)SIZE), 0);
    if (stale) {
        uint8_t *junk = malloc(SIZE);
        assert_non_null(junk);
        for (size_t i = 0; i < SIZE; i++) {
            junk[i] = (uint8_t)(i * 131 + 7) | 1;
        }
        assert_int_equal(pwrite(f->fd, junk, SIZE, 0), (ssize_t)SIZE);
        free(junk);
    }
    f->map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, 0);
    assert_true(f->map != MAP_FAILED);
    lm_ram_desc d = { .name = "ram0", .host = f->map, .size = SIZE, .page_size = PSIZE,
                      .flags = LM_RAM_SHARED | LM_RAM_FD, .fd = f->fd, .fd_offset = 0 };
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_ram_block_new(&d, 0, &f->b, &err), 0);
    assert_int_equal(lm_ram_load_setup(&f->l, &f->b, 1, &err), 0);
}

static void teardown_block(fixture *f)
{
    lm_ram_load_cleanup(&f->l);
    lm_ram_block_free(f->b);
    munmap(f->map, SIZE);
    close(f->fd);
    if (f->path[0]) {
        unlink(f->path);
    }
}

/* True when the file holds data (SEEK_DATA) anywhere in page p. */
static bool has_data(int fd, uint64_t p)
{
    off_t d = lseek(fd, (off_t)(p * PSIZE), SEEK_DATA);
    return d >= 0 && d < (off_t)((p + 1) * PSIZE);
}

/* Page faults of this process so far: the loader must take none for the
 * block's pages (a write through the mapping would take one per page). */
static long minor_faults(void)
{
    struct rusage ru;
    assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_minflt;
}

static void test_zero_on_fresh_memfd_allocates_nothing(void **state)
{
    (void)state;
    fixture f;
    setup_block(&f, false, false);
    assert_true(lm_filedest_on(f.b));
    lm_ram_load_zero(f.b, 0, PAGES);
    struct stat st;
    assert_int_equal(fstat(f.fd, &st), 0);
    assert_int_equal(st.st_blocks, 0);
    for (unsigned p = 0; p < PAGES; p++) {
        assert_false(has_data(f.fd, p));
    }
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_ram_load_check_complete(&f.l, &err), 0);
    teardown_block(&f);
}

/* Stale data everywhere; then pages alternately data and zero runs, and
 * a data write that carries zero pages: the file ends up byte for byte,
 * with holes exactly where the pages are zero. */
static void check_stale_overwritten(bool regular)
{
    fixture f;
    setup_block(&f, regular, true);
    assert_true(lm_filedest_on(f.b));
    uint8_t *want = calloc(1, SIZE);
    assert_non_null(want);
    /* Pages 0-63: data with zero pages 8-15 and 40 inside (sent as data). */
    for (unsigned p = 0; p < 64; p++) {
        if ((p >= 8 && p < 16) || p == 40) {
            continue;
        }
        memset(want + (size_t)p * PSIZE, (int)(p + 1), PSIZE);
    }
    long faults = minor_faults();
    assert_int_equal(lm_filedest_write_pages(f.b, 0, want, 64), 0);
    lm_ram_load_mark(f.b, 0, 64);
    /* Pages 64-255: zero records, in uneven runs. */
    lm_ram_load_zero(f.b, 64, 3);
    lm_ram_load_zero(f.b, 67, 100);
    lm_ram_load_zero(f.b, 167, PAGES - 167);
    /* A few for the stack at most, never one per page. */
    assert_in_range(minor_faults() - faults, 0, 8);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_ram_load_check_complete(&f.l, &err), 0);

    uint8_t *got = malloc(SIZE);
    assert_non_null(got);
    assert_int_equal(pread(f.fd, got, SIZE, 0), (ssize_t)SIZE);
    assert_memory_equal(got, want, SIZE);
    for (unsigned p = 0; p < PAGES; p++) {
        bool zero = want[(size_t)p * PSIZE] == 0;
        if (has_data(f.fd, p) == zero) {
            fail_msg("page %u: %s but SEEK_DATA says %s", p, zero ? "zero" : "data",
                     zero ? "data" : "hole");
        }
    }
    /* The mapping sees the same bytes (from the page cache). */
    assert_memory_equal(f.map, want, SIZE);
    free(got);
    free(want);
    teardown_block(&f);
}

static void test_stale_memfd(void **state)
{
    (void)state;
    check_stale_overwritten(false);
}

static void test_stale_regular_file(void **state)
{
    (void)state;
    check_stale_overwritten(true);
}

/* An fd that cannot take pwrite at an offset keeps the mapping path. */
static void test_read_only_or_append_fd_not_used(void **state)
{
    (void)state;
    fixture f;
    setup_block(&f, true, false);
    int flags[] = { O_RDONLY, O_RDWR | O_APPEND };
    for (int i = 0; i < 2; i++) {
        int fd = open(f.path, flags[i]);
        assert_true(fd >= 0);
        f.b->fd = fd;
        lm_filedest_setup(f.b);
        assert_false(lm_filedest_on(f.b));
        close(fd);
    }
    f.b->fd = f.fd;
    lm_filedest_setup(f.b);
    assert_true(lm_filedest_on(f.b));
    teardown_block(&f);
}

/* Four writers on one file, as multifd receivers are: each takes every
 * fourth run of 8 pages, writes it once with other bytes (a page sent
 * early), then again with its final bytes (sent again), zero pages among
 * them.  The file ends up byte for byte, holes where pages are zero. */
#define WRITERS 4u
#define RUN 8u

typedef struct writer {
    lm_ram_block *b;
    const uint8_t *want;
    unsigned index;
    int ret;
} writer;

static void *write_runs(void *arg)
{
    writer *w = arg;
    uint8_t early[RUN * PSIZE];
    memset(early, 0x5a, sizeof(early));
    for (unsigned first = w->index * RUN; first < PAGES && !w->ret; first += WRITERS * RUN) {
        w->ret = lm_filedest_write_pages(w->b, first, early, RUN);
        if (!w->ret) {
            w->ret = lm_filedest_write_pages(w->b, first, w->want + (size_t)first * PSIZE, RUN);
        }
    }
    return NULL;
}

static void test_concurrent_writers(void **state)
{
    (void)state;
    fixture f;
    setup_block(&f, false, true);
    uint8_t *want = calloc(1, SIZE);
    assert_non_null(want);
    for (unsigned p = 0; p < PAGES; p++) {
        if (p % 3 != 0) {
            memset(want + (size_t)p * PSIZE, (int)(p % 251) + 1, PSIZE);
        }
    }
    writer w[WRITERS];
    pthread_t t[WRITERS];
    for (unsigned i = 0; i < WRITERS; i++) {
        w[i] = (writer){ .b = f.b, .want = want, .index = i };
        assert_int_equal(pthread_create(&t[i], NULL, write_runs, &w[i]), 0);
    }
    for (unsigned i = 0; i < WRITERS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].ret, 0);
    }
    uint8_t *got = malloc(SIZE);
    assert_non_null(got);
    assert_int_equal(pread(f.fd, got, SIZE, 0), (ssize_t)SIZE);
    assert_memory_equal(got, want, SIZE);
    for (unsigned p = 0; p < PAGES; p++) {
        if (has_data(f.fd, p) != (p % 3 != 0)) {
            fail_msg("page %u: %s but SEEK_DATA says otherwise", p, p % 3 ? "data" : "zero");
        }
    }
    free(got);
    free(want);
    teardown_block(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_on_fresh_memfd_allocates_nothing),
        cmocka_unit_test(test_stale_memfd),
        cmocka_unit_test(test_stale_regular_file),
        cmocka_unit_test(test_read_only_or_append_fd_not_used),
        cmocka_unit_test(test_concurrent_writers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
