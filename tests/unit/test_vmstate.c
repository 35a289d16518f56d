/* Field tables (src/stream/vmstate.h): save, load, versions, description. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stream/vmstate.h"

typedef struct dev {
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    bool flag;
    uint8_t bytes[13];
    uint16_t arr16[3];
    uint32_t arr32[2];
    uint64_t arr64[2];
    bool flags[3];
    uint8_t arr8[4];
    int64_t neg[2];
} dev;

static const lm_field dev_fields[] = {
    LM_FIELD_SCALAR(dev, u8, LM_FIELD_U8),
    LM_FIELD_SCALAR(dev, u16, LM_FIELD_U16),
    LM_FIELD_SCALAR(dev, u32, LM_FIELD_U32),
    LM_FIELD_SCALAR(dev, u64, LM_FIELD_U64),
    LM_FIELD_SCALAR(dev, i64, LM_FIELD_I64),
    LM_FIELD_SCALAR(dev, flag, LM_FIELD_BOOL),
    LM_FIELD_ARRAY(dev, bytes, LM_FIELD_BYTES, 13),
    LM_FIELD_ARRAY(dev, arr16, LM_FIELD_U16, 3),
    LM_FIELD_ARRAY(dev, arr32, LM_FIELD_U32, 2),
    LM_FIELD_ARRAY(dev, arr64, LM_FIELD_U64, 2),
    LM_FIELD_ARRAY(dev, flags, LM_FIELD_BOOL, 3),
    LM_FIELD_ARRAY(dev, arr8, LM_FIELD_U8, 4),
    LM_FIELD_ARRAY(dev, neg, LM_FIELD_I64, 2),
};

/* Wire size of each field, in table order. */
static const size_t dev_field_sizes[] = { 1, 2, 4, 8, 8, 1, 13, 6, 8, 16, 3, 4, 16 };
#define DEV_WIRE_SIZE (1 + 2 + 4 + 8 + 8 + 1 + 13 + 6 + 8 + 16 + 3 + 4 + 16)

static int pre_save_calls, post_load_calls;
static uint32_t post_load_version;
static int post_load_ret;

static int dev_pre_save(void *opaque, lm_error *err)
{
    (void)opaque;
    (void)err;
    pre_save_calls++;
    return 0;
}

static int dev_post_load(void *opaque, uint32_t version, lm_error *err)
{
    (void)opaque;
    post_load_calls++;
    post_load_version = version;
    if (post_load_ret) {
        return lm_error_set(err, post_load_ret, "post_load refused");
    }
    return 0;
}

static const lm_vmstate dev_vms = {
    .name = "testdev", .version = 3, .min_version = 2,
    .fields = dev_fields, .nfields = sizeof(dev_fields) / sizeof(dev_fields[0]),
    .pre_save = dev_pre_save, .post_load = dev_post_load,
};

static void fill_dev(dev *d)
{
    memset(d, 0, sizeof(*d));
    d->u8 = 0xa1;
    d->u16 = 0xb2c3;
    d->u32 = 0xd4e5f607;
    d->u64 = 0x1122334455667788ull;
    d->i64 = -2;
    d->flag = true;
    for (int i = 0; i < 13; i++) {
        d->bytes[i] = (uint8_t)(0x30 + i);
    }
    d->arr16[0] = 1;
    d->arr16[1] = 0xffff;
    d->arr16[2] = 0x0102;
    d->arr32[0] = 0xcafebabe;
    d->arr32[1] = 7;
    d->arr64[0] = UINT64_MAX;
    d->arr64[1] = 0x8000000000000000ull;
    d->flags[0] = true;
    d->flags[1] = false;
    d->flags[2] = true;
    d->arr8[0] = 9;
    d->arr8[3] = 0xfe;
    d->neg[0] = INT64_MIN;
    d->neg[1] = -123456789;
}

static void assert_dev_equal(const dev *a, const dev *b)
{
    assert_int_equal(a->u8, b->u8);
    assert_int_equal(a->u16, b->u16);
    assert_int_equal(a->u32, b->u32);
    assert_true(a->u64 == b->u64);
    assert_true(a->i64 == b->i64);
    assert_int_equal(a->flag, b->flag);
    assert_memory_equal(a->bytes, b->bytes, sizeof(a->bytes));
    assert_memory_equal(a->arr16, b->arr16, sizeof(a->arr16));
    assert_memory_equal(a->arr32, b->arr32, sizeof(a->arr32));
    assert_memory_equal(a->arr64, b->arr64, sizeof(a->arr64));
    assert_memory_equal(a->flags, b->flags, sizeof(a->flags));
    assert_memory_equal(a->arr8, b->arr8, sizeof(a->arr8));
    assert_true(a->neg[0] == b->neg[0] && a->neg[1] == b->neg[1]);
}

static void save_dev(const dev *d, lm_wbuf *w)
{
    lm_error err = LM_ERROR_INIT;
    lm_wbuf_init(w);
    assert_int_equal(lm_vmstate_save(&dev_vms, (void *)d, w, &err), 0);
    assert_false(lm_error_is_set(&err));
}

static int setup(void **state)
{
    (void)state;
    pre_save_calls = post_load_calls = 0;
    post_load_version = 0;
    post_load_ret = 0;
    return 0;
}

static void test_roundtrip(void **state)
{
    (void)state;
    dev src, dst;
    fill_dev(&src);
    lm_wbuf w;
    save_dev(&src, &w);
    assert_int_equal(pre_save_calls, 1);
    assert_int_equal(w.len, DEV_WIRE_SIZE);

    /* Wire layout: big-endian, table order, arrays element by element. */
    static const uint8_t head[] = {
        0xa1,                                           /* u8 */
        0xb2, 0xc3,                                     /* u16 */
        0xd4, 0xe5, 0xf6, 0x07,                         /* u32 */
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, /* u64 */
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, /* i64 = -2 */
        0x01,                                           /* bool */
        0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c,
        0x00, 0x01, 0xff, 0xff, 0x01, 0x02,             /* arr16 */
        0xca, 0xfe, 0xba, 0xbe, 0x00, 0x00, 0x00, 0x07, /* arr32 */
    };
    assert_memory_equal(w.data, head, sizeof(head));

    memset(&dst, 0, sizeof(dst));
    lm_rbuf r;
    lm_rbuf_init(&r, w.data, w.len);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_vmstate_load(&dev_vms, &dst, 3, &r, &err), 0);
    assert_false(lm_error_is_set(&err));
    assert_int_equal(lm_rbuf_remaining(&r), 0);
    assert_dev_equal(&src, &dst);
    assert_int_equal(post_load_calls, 1);
    assert_int_equal(post_load_version, 3);

    /* min_version is accepted as well. */
    memset(&dst, 0, sizeof(dst));
    lm_rbuf_init(&r, w.data, w.len);
    assert_int_equal(lm_vmstate_load(&dev_vms, &dst, 2, &r, &err), 0);
    assert_dev_equal(&src, &dst);
    assert_int_equal(post_load_version, 2);
    lm_wbuf_free(&w);
}

/* Every truncation point fails with -EBADMSG and names the field cut short. */
static void test_truncated(void **state)
{
    (void)state;
    dev src;
    fill_dev(&src);
    lm_wbuf w;
    save_dev(&src, &w);
    for (size_t len = 0; len < w.len; len++) {
        /* Which field does byte `len` belong to? */
        size_t off = 0, fi = 0;
        while (off + dev_field_sizes[fi] <= len) {
            off += dev_field_sizes[fi++];
        }
        dev dst;
        memset(&dst, 0, sizeof(dst));
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, w.data, len);
        lm_rbuf r;
        lm_rbuf_init(&r, copy, len);
        lm_error err = LM_ERROR_INIT;
        int ret = lm_vmstate_load(&dev_vms, &dst, 3, &r, &err);
        assert_int_equal(ret, -EBADMSG);
        assert_int_equal(err.code, -EBADMSG);
        char want[64];
        snprintf(want, sizeof(want), "'%s'", dev_fields[fi].name);
        if (!strstr(err.msg, want) || !strstr(err.msg, "testdev") || !strstr(err.msg, "truncated")) {
            fail_msg("truncated at %zu (field %s): message '%s'", len, dev_fields[fi].name, err.msg);
        }
        free(copy);
    }
    assert_int_equal(post_load_calls, 0);
    lm_wbuf_free(&w);
}

static void test_trailing_bytes(void **state)
{
    (void)state;
    dev src, dst;
    fill_dev(&src);
    lm_wbuf w;
    save_dev(&src, &w);
    lm_wbuf_put_u8(&w, 0);
    lm_wbuf_put_u8(&w, 0);
    lm_rbuf r;
    lm_rbuf_init(&r, w.data, w.len);
    lm_error err = LM_ERROR_INIT;
    memset(&dst, 0, sizeof(dst));
    assert_int_equal(lm_vmstate_load(&dev_vms, &dst, 3, &r, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "trailing"));
    assert_non_null(strstr(err.msg, "2"));
    assert_int_equal(post_load_calls, 0);
    lm_wbuf_free(&w);
}

static void test_version_range(void **state)
{
    (void)state;
    dev src, dst;
    fill_dev(&src);
    lm_wbuf w;
    save_dev(&src, &w);
    const uint32_t bad[] = { 0, 1, 4, 100, UINT32_MAX };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        lm_rbuf r;
        lm_rbuf_init(&r, w.data, w.len);
        lm_error err = LM_ERROR_INIT;
        memset(&dst, 0x77, sizeof(dst));
        assert_int_equal(lm_vmstate_load(&dev_vms, &dst, bad[i], &r, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "testdev"));
        assert_non_null(strstr(err.msg, "version"));
        char v[32];
        snprintf(v, sizeof(v), "%u", bad[i]);
        assert_non_null(strstr(err.msg, v));
        /* Nothing was loaded. */
        assert_int_equal(dst.u8, 0x77);
        assert_int_equal(r.pos, 0);
    }
    assert_int_equal(post_load_calls, 0);
    lm_wbuf_free(&w);
}

static void test_bad_bool(void **state)
{
    (void)state;
    dev src, dst;
    fill_dev(&src);
    lm_wbuf w;
    save_dev(&src, &w);
    w.data[1 + 2 + 4 + 8 + 8] = 2; /* the "flag" byte */
    lm_rbuf r;
    lm_rbuf_init(&r, w.data, w.len);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_vmstate_load(&dev_vms, &dst, 3, &r, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "'flag'"));
    assert_non_null(strstr(err.msg, "bool"));
    lm_wbuf_free(&w);
}

static void test_post_load_error(void **state)
{
    (void)state;
    dev src, dst;
    fill_dev(&src);
    lm_wbuf w;
    save_dev(&src, &w);
    post_load_ret = -ERANGE;
    lm_rbuf r;
    lm_rbuf_init(&r, w.data, w.len);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_vmstate_load(&dev_vms, &dst, 3, &r, &err), -ERANGE);
    assert_string_equal(err.msg, "post_load refused");
    assert_int_equal(post_load_calls, 1);
    lm_wbuf_free(&w);
}

/* Versioned fields: `since` fields are absent from older streams. */
typedef struct vdev {
    uint32_t a;     /* always */
    uint16_t b;     /* since 2 */
    uint64_t c;     /* since 3 */
    uint8_t d;      /* always */
} vdev;

static const lm_field vdev_fields_v3[] = {
    { "a", offsetof(vdev, a), LM_FIELD_U32, 1, 0 },
    { "b", offsetof(vdev, b), LM_FIELD_U16, 1, 2 },
    { "c", offsetof(vdev, c), LM_FIELD_U64, 1, 3 },
    { "d", offsetof(vdev, d), LM_FIELD_U8, 1, 0 },
};
static const lm_vmstate vdev_v3 = {
    .name = "vdev", .version = 3, .min_version = 1, .fields = vdev_fields_v3, .nfields = 4,
};
/* The same device as an older build (version 1) describes it. */
static const lm_vmstate vdev_v1 = {
    .name = "vdev", .version = 1, .min_version = 1, .fields = vdev_fields_v3, .nfields = 4,
};
static const lm_vmstate vdev_v2 = {
    .name = "vdev", .version = 2, .min_version = 1, .fields = vdev_fields_v3, .nfields = 4,
};

static void test_since_fields(void **state)
{
    (void)state;
    vdev src = { 0x01020304, 0x0506, 0x0708090a0b0c0d0eull, 0x0f };
    lm_error err = LM_ERROR_INIT;
    const lm_vmstate *builds[] = { &vdev_v1, &vdev_v2, &vdev_v3 };
    const size_t sizes[] = { 5, 7, 15 };
    for (uint32_t v = 1; v <= 3; v++) {
        lm_wbuf w;
        lm_wbuf_init(&w);
        assert_int_equal(lm_vmstate_save(builds[v - 1], &src, &w, &err), 0);
        assert_int_equal(w.len, sizes[v - 1]);
        vdev dst;
        memset(&dst, 0xee, sizeof(dst));
        lm_rbuf r;
        lm_rbuf_init(&r, w.data, w.len);
        assert_int_equal(lm_vmstate_load(&vdev_v3, &dst, v, &r, &err), 0);
        assert_int_equal(dst.a, src.a);
        assert_int_equal(dst.d, src.d);
        if (v >= 2) {
            assert_int_equal(dst.b, src.b);
        } else {
            assert_int_equal(dst.b, 0xeeee); /* skipped, left alone */
        }
        if (v >= 3) {
            assert_true(dst.c == src.c);
        } else {
            assert_true(dst.c == 0xeeeeeeeeeeeeeeeeull);
        }
        /* A v3 stream read as v1 has trailing bytes. */
        if (v == 3) {
            lm_rbuf_init(&r, w.data, w.len);
            lm_error e2 = LM_ERROR_INIT;
            assert_int_equal(lm_vmstate_load(&vdev_v3, &dst, 1, &r, &e2), -EBADMSG);
            assert_non_null(strstr(e2.msg, "trailing"));
        }
        lm_wbuf_free(&w);
    }
    assert_false(lm_error_is_set(&err));
}

static json_t *find_field(json_t *fields, const char *name)
{
    size_t i;
    json_t *f;
    json_array_foreach(fields, i, f) {
        if (!strcmp(json_string_value(json_object_get(f, "name")), name)) {
            return f;
        }
    }
    return NULL;
}

static void test_describe(void **state)
{
    (void)state;
    json_t *d = lm_vmstate_describe(&dev_vms);
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "vmsd_name")), "testdev");
    assert_int_equal(json_integer_value(json_object_get(d, "version")), 3);
    json_t *fields = json_object_get(d, "fields");
    assert_true(json_is_array(fields));
    assert_int_equal(json_array_size(fields), dev_vms.nfields);
    static const char *const types[] = { "uint8", "uint16", "uint32", "uint64", "int64",
                                         "bool", "buffer", "uint16", "uint32", "uint64",
                                         "bool", "uint8", "int64" };
    for (size_t i = 0; i < dev_vms.nfields; i++) {
        json_t *f = find_field(fields, dev_fields[i].name);
        if (!f) {
            fail_msg("field '%s' missing from the description", dev_fields[i].name);
        }
        assert_string_equal(json_string_value(json_object_get(f, "type")), types[i]);
        assert_int_equal(json_integer_value(json_object_get(f, "size")), dev_field_sizes[i]);
    }
    char *text = json_dumps(d, JSON_COMPACT);
    assert_non_null(strstr(text, "\"arr64\""));
    assert_non_null(strstr(text, "\"bytes\""));
    free(text);
    json_decref(d);

    /* Fields newer than the build's version are not described. */
    json_t *v1 = lm_vmstate_describe(&vdev_v1);
    json_t *f1 = json_object_get(v1, "fields");
    assert_int_equal(json_array_size(f1), 2);
    assert_non_null(find_field(f1, "a"));
    assert_non_null(find_field(f1, "d"));
    assert_null(find_field(f1, "b"));
    json_decref(v1);
    json_t *v3 = lm_vmstate_describe(&vdev_v3);
    assert_int_equal(json_array_size(json_object_get(v3, "fields")), 4);
    json_decref(v3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_roundtrip, setup),
        cmocka_unit_test_setup(test_truncated, setup),
        cmocka_unit_test_setup(test_trailing_bytes, setup),
        cmocka_unit_test_setup(test_version_range, setup),
        cmocka_unit_test_setup(test_bad_bool, setup),
        cmocka_unit_test_setup(test_post_load_error, setup),
        cmocka_unit_test_setup(test_since_fields, setup),
        cmocka_unit_test_setup(test_describe, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
