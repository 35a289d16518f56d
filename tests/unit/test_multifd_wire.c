/*
 * Multifd wire parsing (src/ram/multifd_wire.c) fed hostile input: every
 * length, count, index and range is refused with a message before use.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <zstd.h>

#include "livemig/buffer.h"
#include "ram/multifd_wire.h"

#define PAGE 4096u
#define NPAGES 256u

static lm_ram_block blk0 = { .name = "ram0", .page_size = PAGE, .page_shift = 12, .npages = NPAGES };
static lm_ram_block blk1 = { .name = "ram1", .page_size = 2u << 20, .page_shift = 21, .npages = 8, .idx = 1 };
static lm_ram_block *blocks[] = { &blk0, &blk1 };

static const uint8_t ID[LM_MULTIFD_ID_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };

static void expect_err(int ret, const lm_error *err, const char *want)
{
    assert_true(ret < 0);
    if (!strstr(err->msg, want)) {
        fail_msg("error '%s' does not contain '%s'", err->msg, want);
    }
}

static void test_hello(void **state)
{
    (void)state;
    uint8_t b[LM_MULTIFD_HELLO_LEN];
    lm_multifd_hello h = { .index = 3, .channels = 4 }, out;
    memcpy(h.id, ID, sizeof(ID));
    lm_multifd_hello_encode(&h, b);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_multifd_hello_parse(b, 4, ID, &out, &err), 0);
    assert_int_equal(out.index, 3);

    /* Announced count differs; index out of range; another migration. */
    expect_err(lm_multifd_hello_parse(b, 2, ID, &out, &err), &err, "were announced");
    lm_error_clear(&err);
    h.index = 4;
    lm_multifd_hello_encode(&h, b);
    expect_err(lm_multifd_hello_parse(b, 4, ID, &out, &err), &err, "were announced");
    lm_error_clear(&err);
    h.index = 0;
    h.id[0] ^= 1;
    lm_multifd_hello_encode(&h, b);
    expect_err(lm_multifd_hello_parse(b, 4, ID, &out, &err), &err, "another migration");
    lm_error_clear(&err);
    /* A preempt connection, or anything else. */
    lm_store_be32(b, LM_PREEMPT_MAGIC);
    expect_err(lm_multifd_hello_parse(b, 4, ID, &out, &err), &err, "preempt");
    lm_error_clear(&err);
    lm_store_be32(b, LM_MULTIFD_MAGIC);
    lm_store_be32(b + 4, 2);
    expect_err(lm_multifd_hello_parse(b, 4, ID, &out, &err), &err, "unsupported multifd version");
}

static void test_data_header(void **state)
{
    (void)state;
    uint8_t b[LM_MULTIFD_DATA_HDR_LEN];
    lm_multifd_data_hdr h = { .flags = 0, .nruns = 1, .payload_len = PAGE }, out;
    lm_error err = LM_ERROR_INIT;
    lm_multifd_data_hdr_encode(&h, b);
    assert_int_equal(lm_multifd_data_hdr_parse(b, LM_MULTIFD_COMP_NONE, &out, &err), 0);
    /* Compression flag disagrees with MULTIFD_SETUP. */
    expect_err(lm_multifd_data_hdr_parse(b, LM_MULTIFD_COMP_ZSTD, &out, &err), &err, "flags");
    lm_error_clear(&err);
    const uint16_t nruns[] = { 0, LM_MULTIFD_MAX_RUNS + 1, 0xffff };
    for (size_t i = 0; i < 3; i++) {
        h.nruns = nruns[i];
        lm_multifd_data_hdr_encode(&h, b);
        expect_err(lm_multifd_data_hdr_parse(b, LM_MULTIFD_COMP_NONE, &out, &err), &err, "runs");
        lm_error_clear(&err);
    }
}

static int parse_runs(const uint8_t *table, uint16_t n, uint32_t flags, uint32_t payload,
                      uint64_t *data, lm_error *err)
{
    lm_multifd_data_hdr h = { .flags = flags, .nruns = n, .payload_len = payload };
    lm_multifd_run runs[LM_MULTIFD_MAX_RUNS];
    return lm_multifd_runs_parse(table, &h, blocks, 2, runs, data, err);
}

static void test_runs(void **state)
{
    (void)state;
    uint8_t t[4 * LM_MULTIFD_RUN_LEN];
    uint64_t data;
    lm_error err = LM_ERROR_INIT;
    lm_multifd_run_encode(t, LM_RAM_PAGES, 0, 0, 2);
    lm_multifd_run_encode(t + LM_MULTIFD_RUN_LEN, LM_RAM_ZERO, 0, 2, NPAGES - 2);
    lm_multifd_run_encode(t + 2 * LM_MULTIFD_RUN_LEN, LM_RAM_PAGES, 1, 7, 1);
    assert_int_equal(parse_runs(t, 3, 0, 2 * PAGE + (2u << 20), &data, &err), 0);
    assert_int_equal(data, 2 * PAGE + (2u << 20));

    /* Payload length must match the pages exactly (uncompressed). */
    expect_err(parse_runs(t, 3, 0, 2 * PAGE, &data, &err), &err, "payload of");
    lm_error_clear(&err);
    expect_err(parse_runs(t, 3, 0, 0xffffffffu, &data, &err), &err, "payload of");
    lm_error_clear(&err);
    /* Compressed: at most zstd's bound; zero only without pages. */
    assert_int_equal(parse_runs(t, 3, LM_MULTIFD_FLAG_ZSTD, 100, &data, &err), 0);
    expect_err(parse_runs(t, 3, LM_MULTIFD_FLAG_ZSTD, 0, &data, &err), &err, "compressed bytes");
    lm_error_clear(&err);
    expect_err(parse_runs(t, 3, LM_MULTIFD_FLAG_ZSTD,
                          (uint32_t)ZSTD_compressBound(2 * PAGE + (2u << 20)) + 1, &data, &err),
               &err, "compressed bytes");
    lm_error_clear(&err);

    /* Hostile runs: kind, block, first, count (overflow included). */
    struct {
        uint8_t kind;
        uint16_t block;
        uint64_t first;
        uint32_t count;
        const char *want;
    } bad[] = {
        { 0x00, 0, 0, 1, "unknown kind" },
        { LM_RAM_EOS, 0, 0, 1, "unknown kind" },
        { LM_RAM_PAGES, 2, 0, 1, "names block 2" },
        { LM_RAM_PAGES, 0xffff, 0, 1, "names block 65535" },
        { LM_RAM_PAGES, 0, 0, 0, "out of range" },
        { LM_RAM_PAGES, 0, NPAGES, 1, "out of range" },
        { LM_RAM_PAGES, 0, NPAGES - 1, 2, "out of range" },
        { LM_RAM_ZERO, 0, UINT64_MAX, 2, "out of range" },
        { LM_RAM_PAGES, 0, 1, 0xffffffffu, "out of range" },
        { LM_RAM_PAGES, 1, 0, 8, "more than" }, /* 16 MiB > the packet limit */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        lm_multifd_run_encode(t, bad[i].kind, bad[i].block, bad[i].first, bad[i].count);
        expect_err(parse_runs(t, 1, 0, PAGE, &data, &err), &err, bad[i].want);
        lm_error_clear(&err);
    }
}

static void test_setup(void **state)
{
    (void)state;
    lm_multifd_setup s = { .channels = 16, .compression = LM_MULTIFD_COMP_ZSTD }, out;
    memcpy(s.id, ID, sizeof(ID));
    uint8_t b[LM_MULTIFD_SETUP_LEN + 1];
    lm_error err = LM_ERROR_INIT;
    lm_multifd_setup_encode(&s, b);
    assert_int_equal(lm_multifd_setup_parse(b, LM_MULTIFD_SETUP_LEN, &out, &err), 0);
    assert_int_equal(out.channels, 16);
    assert_memory_equal(out.id, ID, sizeof(ID));
    expect_err(lm_multifd_setup_parse(b, LM_MULTIFD_SETUP_LEN + 1, &out, &err), &err, "malformed");
    lm_error_clear(&err);
    b[3] = 1; /* flags: checksums */
    assert_int_equal(lm_multifd_setup_parse(b, LM_MULTIFD_SETUP_LEN, &out, &err), 0);
    assert_int_equal(out.flags, LM_MULTIFD_SETUP_CHECKSUM);
    b[3] = 2; /* an unknown flag */
    expect_err(lm_multifd_setup_parse(b, LM_MULTIFD_SETUP_LEN, &out, &err), &err, "flags");
    lm_error_clear(&err);
    b[3] = 0;
    b[2] = 2; /* an unknown compression */
    expect_err(lm_multifd_setup_parse(b, LM_MULTIFD_SETUP_LEN, &out, &err), &err, "compression");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello),
        cmocka_unit_test(test_data_header),
        cmocka_unit_test(test_runs),
        cmocka_unit_test(test_setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
