/* Device state buffers (include/livemig/buffer.h). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "livemig/buffer.h"

static void test_wbuf_encoding(void **state)
{
    (void)state;
    lm_wbuf b;
    lm_wbuf_init(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.error, 0);
    lm_wbuf_put_u8(&b, 0xab);
    lm_wbuf_put_be16(&b, 0x1234);
    lm_wbuf_put_be32(&b, 0xdeadbeef);
    lm_wbuf_put_be64(&b, 0x0102030405060708ull);
    lm_wbuf_put_str8(&b, "hi!");
    lm_wbuf_put_str8(&b, "");
    lm_wbuf_put(&b, "xyz", 3);
    lm_wbuf_put(&b, NULL, 0);
    static const uint8_t want[] = {
        0xab, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05,
        0x06, 0x07, 0x08, 0x03, 'h',  'i',  '!',  0x00, 'x',  'y',  'z',
    };
    assert_int_equal(b.error, 0);
    assert_int_equal(b.len, sizeof(want));
    assert_memory_equal(b.data, want, sizeof(want));
    assert_true(b.cap >= b.len);

    /* Reset keeps the allocation, empties the buffer. */
    uint8_t *old = b.data;
    lm_wbuf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.data, old);
    lm_wbuf_put_be16(&b, 0xbeef);
    assert_int_equal(b.len, 2);
    assert_int_equal(b.data[0], 0xbe);
    assert_int_equal(b.data[1], 0xef);
    lm_wbuf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_wbuf_str8_limits(void **state)
{
    (void)state;
    char s255[256], s256[257];
    memset(s255, 'a', 255);
    s255[255] = '\0';
    memset(s256, 'b', 256);
    s256[256] = '\0';

    lm_wbuf b;
    lm_wbuf_init(&b);
    lm_wbuf_put_str8(&b, s255);
    assert_int_equal(b.error, 0);
    assert_int_equal(b.len, 256);
    assert_int_equal(b.data[0], 255);

    /* Too long: error, nothing written, and the error sticks. */
    lm_wbuf_put_str8(&b, s256);
    assert_int_equal(b.error, -EINVAL);
    assert_int_equal(b.len, 256);
    lm_wbuf_put_u8(&b, 1);
    lm_wbuf_put_be32(&b, 1);
    lm_wbuf_put(&b, "abc", 3);
    assert_int_equal(b.len, 256);
    assert_int_equal(b.error, -EINVAL);
    assert_null(lm_wbuf_reserve(&b, 1));

    /* Reset clears the error. */
    lm_wbuf_reset(&b);
    assert_int_equal(b.error, 0);
    lm_wbuf_put_u8(&b, 7);
    assert_int_equal(b.len, 1);
    lm_wbuf_free(&b);

    /* A first too-long string on an empty buffer. */
    lm_wbuf_init(&b);
    lm_wbuf_put_str8(&b, s256);
    assert_int_equal(b.error, -EINVAL);
    assert_int_equal(b.len, 0);
    lm_wbuf_free(&b);
}

static void test_wbuf_growth(void **state)
{
    (void)state;
    lm_wbuf b;
    lm_wbuf_init(&b);
    const size_t total = 3u << 20;
    size_t prev_cap = 0;
    int grew = 0;
    for (size_t i = 0; i < total / 4; i++) {
        lm_wbuf_put_be32(&b, (uint32_t)i * 2654435761u);
        if (b.cap != prev_cap) {
            grew++;
            prev_cap = b.cap;
        }
        assert_true(b.cap >= b.len);
    }
    assert_int_equal(b.error, 0);
    assert_int_equal(b.len, total);
    assert_true(grew > 3);
    for (size_t i = 0; i < total / 4; i++) {
        if (lm_load_be32(b.data + i * 4) != (uint32_t)i * 2654435761u) {
            fail_msg("word %zu corrupted after growth", i);
        }
    }
    /* One big put past the current capacity. */
    uint8_t *big = malloc(5u << 20);
    memset(big, 0x5a, 5u << 20);
    lm_wbuf_put(&b, big, 5u << 20);
    assert_int_equal(b.len, total + (5u << 20));
    assert_memory_equal(b.data + total, big, 5u << 20);
    free(big);

    /* Reserve returns a pointer to exactly the new bytes. */
    size_t before = b.len;
    uint8_t *p = lm_wbuf_reserve(&b, 10);
    assert_non_null(p);
    assert_ptr_equal(p, b.data + before);
    assert_int_equal(b.len, before + 10);

    /* An absurd reservation fails with -ENOMEM and leaves the buffer alone. */
    size_t len = b.len;
    assert_null(lm_wbuf_reserve(&b, SIZE_MAX - 8));
    assert_int_equal(b.error, -ENOMEM);
    assert_int_equal(b.len, len);
    lm_wbuf_free(&b);
}

static void test_rbuf_roundtrip(void **state)
{
    (void)state;
    lm_wbuf w;
    lm_wbuf_init(&w);
    lm_wbuf_put_u8(&w, 0);
    lm_wbuf_put_u8(&w, 0xff);
    lm_wbuf_put_be16(&w, 0);
    lm_wbuf_put_be16(&w, 0xfedc);
    lm_wbuf_put_be32(&w, 0x80000001u);
    lm_wbuf_put_be64(&w, UINT64_MAX);
    lm_wbuf_put_be64(&w, 0x8877665544332211ull);
    lm_wbuf_put_str8(&w, "device-name");
    lm_wbuf_put_str8(&w, "");
    lm_wbuf_put(&w, "\x00\x01\x02", 3);
    assert_int_equal(w.error, 0);

    lm_rbuf r;
    lm_rbuf_init(&r, w.data, w.len);
    assert_int_equal(lm_rbuf_remaining(&r), w.len);
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    char s[256];
    uint8_t raw[3];
    assert_int_equal(lm_rbuf_get_u8(&r, &u8), 0);
    assert_int_equal(u8, 0);
    assert_int_equal(lm_rbuf_get_u8(&r, &u8), 0);
    assert_int_equal(u8, 0xff);
    assert_int_equal(lm_rbuf_get_be16(&r, &u16), 0);
    assert_int_equal(u16, 0);
    assert_int_equal(lm_rbuf_get_be16(&r, &u16), 0);
    assert_int_equal(u16, 0xfedc);
    assert_int_equal(lm_rbuf_get_be32(&r, &u32), 0);
    assert_int_equal(u32, 0x80000001u);
    assert_int_equal(lm_rbuf_get_be64(&r, &u64), 0);
    assert_true(u64 == UINT64_MAX);
    assert_int_equal(lm_rbuf_get_be64(&r, &u64), 0);
    assert_true(u64 == 0x8877665544332211ull);
    assert_int_equal(lm_rbuf_get_str8(&r, s, sizeof(s)), 0);
    assert_string_equal(s, "device-name");
    memset(s, 'x', sizeof(s));
    assert_int_equal(lm_rbuf_get_str8(&r, s, sizeof(s)), 0);
    assert_string_equal(s, "");
    assert_int_equal(lm_rbuf_get(&r, raw, 3), 0);
    assert_memory_equal(raw, "\x00\x01\x02", 3);
    assert_int_equal(lm_rbuf_remaining(&r), 0);
    /* Zero-length reads at the end are fine. */
    assert_int_equal(lm_rbuf_get(&r, raw, 0), 0);
    /* Everything else fails. */
    assert_int_equal(lm_rbuf_get_u8(&r, &u8), -EBADMSG);
    lm_wbuf_free(&w);

    /* The big-endian helpers agree with the buffer encoding. */
    uint8_t b8[8];
    lm_store_be64(b8, 0x0102030405060708ull);
    assert_memory_equal(b8, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    assert_true(lm_load_be64(b8) == 0x0102030405060708ull);
    lm_store_be32(b8, 0xa1b2c3d4u);
    assert_int_equal(lm_load_be32(b8), 0xa1b2c3d4u);
    lm_store_be16(b8, 0xa1b2);
    assert_int_equal(lm_load_be16(b8), 0xa1b2);
}

/* A read that does not fit returns -EBADMSG, consumes nothing and leaves
 * the output untouched. */
static void test_rbuf_past_end(void **state)
{
    (void)state;
    static const uint8_t data[7] = { 1, 2, 3, 4, 5, 6, 7 };
    lm_rbuf r;
    uint8_t u8 = 0x11;
    uint16_t u16 = 0x2222;
    uint32_t u32 = 0x33333333;
    uint64_t u64 = 0x4444444444444444ull;
    uint8_t out[16];

    lm_rbuf_init(&r, data, sizeof(data));
    assert_int_equal(lm_rbuf_get_be64(&r, &u64), -EBADMSG);
    assert_int_equal(r.pos, 0);
    assert_true(u64 == 0x4444444444444444ull);
    memset(out, 0xee, sizeof(out));
    assert_int_equal(lm_rbuf_get(&r, out, 8), -EBADMSG);
    assert_int_equal(r.pos, 0);
    assert_int_equal(out[0], 0xee);
    assert_int_equal(lm_rbuf_get(&r, out, SIZE_MAX), -EBADMSG);
    assert_int_equal(r.pos, 0);

    assert_int_equal(lm_rbuf_get_be32(&r, &u32), 0); /* 4 left: 3 */
    assert_int_equal(lm_rbuf_get_be32(&r, &u32), -EBADMSG);
    assert_int_equal(r.pos, 4);
    assert_int_equal(u32, 0x01020304);
    assert_int_equal(lm_rbuf_get_be16(&r, &u16), 0); /* 1 left */
    assert_int_equal(u16, 0x0506);
    assert_int_equal(lm_rbuf_get_be16(&r, &u16), -EBADMSG);
    assert_int_equal(r.pos, 6);
    assert_int_equal(u16, 0x0506);
    assert_int_equal(lm_rbuf_get_u8(&r, &u8), 0);
    assert_int_equal(u8, 7);
    assert_int_equal(lm_rbuf_get_u8(&r, &u8), -EBADMSG);
    assert_int_equal(r.pos, 7);
    assert_int_equal(lm_rbuf_remaining(&r), 0);

    /* Empty buffer. */
    lm_rbuf_init(&r, NULL, 0);
    assert_int_equal(lm_rbuf_get_u8(&r, &u8), -EBADMSG);
    assert_int_equal(lm_rbuf_get_be64(&r, &u64), -EBADMSG);
    char s[256];
    assert_int_equal(lm_rbuf_get_str8(&r, s, sizeof(s)), -EBADMSG);
    assert_int_equal(r.pos, 0);
}

static void test_rbuf_str8(void **state)
{
    (void)state;
    static const uint8_t data[] = { 5, 'h', 'e', 'l', 'l', 'o', 0xaa };
    lm_rbuf r;
    char out[256];

    /* Output buffer one byte too small for the terminator. */
    lm_rbuf_init(&r, data, sizeof(data));
    memset(out, 'z', sizeof(out));
    assert_int_equal(lm_rbuf_get_str8(&r, out, 5), -EBADMSG);
    assert_int_equal(r.pos, 0);
    assert_int_equal(lm_rbuf_get_str8(&r, out, 1), -EBADMSG);
    assert_int_equal(r.pos, 0);
    assert_int_equal(lm_rbuf_get_str8(&r, out, 0), -EBADMSG);
    assert_int_equal(r.pos, 0);
    /* Exactly big enough. */
    assert_int_equal(lm_rbuf_get_str8(&r, out, 6), 0);
    assert_string_equal(out, "hello");
    assert_int_equal(r.pos, 6);

    /* Length byte larger than what remains: nothing consumed. */
    static const uint8_t trunc[] = { 10, 'a', 'b', 'c' };
    lm_rbuf_init(&r, trunc, sizeof(trunc));
    assert_int_equal(lm_rbuf_get_str8(&r, out, sizeof(out)), -EBADMSG);
    assert_int_equal(r.pos, 0);

    /* Maximum length 255 into a 256-byte buffer. */
    uint8_t maxs[256];
    maxs[0] = 255;
    memset(maxs + 1, 'm', 255);
    lm_rbuf_init(&r, maxs, sizeof(maxs));
    assert_int_equal(lm_rbuf_get_str8(&r, out, 255), -EBADMSG);
    assert_int_equal(r.pos, 0);
    assert_int_equal(lm_rbuf_get_str8(&r, out, sizeof(out)), 0);
    assert_int_equal(strlen(out), 255);
    assert_int_equal(lm_rbuf_remaining(&r), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wbuf_encoding),
        cmocka_unit_test(test_wbuf_str8_limits),
        cmocka_unit_test(test_wbuf_growth),
        cmocka_unit_test(test_rbuf_roundtrip),
        cmocka_unit_test(test_rbuf_past_end),
        cmocka_unit_test(test_rbuf_str8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
