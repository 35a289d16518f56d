/*
 * The destination fed corrupt, truncated and mismatched streams.
 *
 * Each test sets up a destination engine in this process whose guest RAM
 * (one block "ram0" of 1 MiB, 4 KiB pages) sits between two PROT_NONE guard
 * pages, so a write outside guest RAM kills the test, plus one device whose
 * state struct is fenced by canaries.  A stream built byte by byte (see
 * src/stream/format.h and docs/stream-format.md) is written into a
 * socketpair handed to lm_engine_incoming("fd:N"); the migration must end in
 * `failed` with an error naming the problem, the guest must not be started,
 * rejected records must not have touched guest RAM, and a second, valid
 * migration into the same engine must then succeed.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "livemig/livemig.h"
#include "stream/checksum.h"
#include "stream/format.h"

#define PAGE 4096u
#define RAM_SIZE (1u << 20)
#define NPAGES (RAM_SIZE / PAGE)
#define CANARY 0x5a5aa5a5deadbeefull
#define DEV_ID 1u /* section id the valid stream uses for the device */

typedef struct devstate {
    uint64_t canary_lo;
    uint32_t a;
    uint16_t b;
    uint8_t blob[8];
    uint64_t canary_hi;
} devstate;

static const lm_field dev_fields[] = {
    LM_FIELD_SCALAR(devstate, a, LM_FIELD_U32),
    LM_FIELD_SCALAR(devstate, b, LM_FIELD_U16),
    LM_FIELD_ARRAY(devstate, blob, LM_FIELD_BYTES, 8),
};
#define DEV_WIRE_SIZE 14u

static const lm_vmstate dev_vms = {
    .name = "testdev", .version = 1, .min_version = 1,
    .fields = dev_fields, .nfields = 3,
};

typedef struct fixture {
    lm_engine *e;
    uint8_t *map;  /* guard + RAM + guard */
    size_t map_len;
    uint8_t *ram;
    devstate dev;
    int vm_start_calls, vm_stop_calls, done_ok, done_fail;
    int seed; /* makes every valid stream's content different */
    /* Iterative device "iter0": what its load() received. */
    uint8_t iter_buf[64];
    size_t iter_len;
    int iter_loads;
    uint32_t iter_version;
    /* Two-block machines only: a second block "ram1" (also guarded). */
    uint8_t *map2;
    uint8_t *ram2;
} fixture;

#define ITER_VERSION 2u
#define RAM2_SIZE (64u * 1024u)

/* Appends the chunk; a chunk starting 0xEE fails without a message, one
 * starting 0xEF fails with one. */
static int iter_load(void *opaque, lm_rbuf *in, uint32_t version, lm_error *err)
{
    fixture *f = opaque;
    f->iter_loads++;
    f->iter_version = version;
    size_t n = lm_rbuf_remaining(in);
    if (n && in->data[in->pos] == 0xee) {
        return -EIO;
    }
    if (n && in->data[in->pos] == 0xef) {
        return lm_error_set(err, -EINVAL, "iter0 rejected chunk");
    }
    if (n > sizeof(f->iter_buf) - f->iter_len) {
        return lm_error_set(err, -EMSGSIZE, "iter0: chunk too big");
    }
    int ret = lm_rbuf_get(in, f->iter_buf + f->iter_len, n);
    f->iter_len += n;
    return ret;
}

static int iter_save_complete(void *opaque, lm_wbuf *out, lm_error *err)
{
    (void)opaque;
    (void)out;
    (void)err;
    return 0;
}

static void iter_query_pending(void *opaque, bool exact, lm_pending *out)
{
    (void)opaque;
    (void)exact;
    out->precopy_bytes = out->stopcopy_bytes = 0;
}

static const lm_iter_ops iter_ops = {
    .load = iter_load, .save_complete = iter_save_complete, .query_pending = iter_query_pending,
};

static void cb_vm_stop(void *opaque)
{
    fixture *f = opaque;
    __atomic_fetch_add(&f->vm_stop_calls, 1, __ATOMIC_SEQ_CST);
}

static void cb_vm_start(void *opaque)
{
    fixture *f = opaque;
    __atomic_fetch_add(&f->vm_start_calls, 1, __ATOMIC_SEQ_CST);
}

static bool cb_vm_is_running(void *opaque)
{
    (void)opaque;
    return false;
}

static void cb_incoming_done(void *opaque, bool success)
{
    fixture *f = opaque;
    __atomic_fetch_add(success ? &f->done_ok : &f->done_fail, 1, __ATOMIC_SEQ_CST);
}

static int fx_setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (!f) {
        return -1;
    }
    f->map_len = RAM_SIZE + 2 * PAGE;
    f->map = mmap(NULL, f->map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->map == MAP_FAILED) {
        return -1;
    }
    f->ram = f->map + PAGE;
    if (mprotect(f->ram, RAM_SIZE, PROT_READ | PROT_WRITE) < 0) {
        return -1;
    }
    f->dev.canary_lo = f->dev.canary_hi = CANARY;
    lm_callbacks cb = { .vm_stop = cb_vm_stop, .vm_start = cb_vm_start,
                        .vm_is_running = cb_vm_is_running, .incoming_done = cb_incoming_done };
    lm_error err = LM_ERROR_INIT;
    f->e = lm_engine_new(&cb, f, &err);
    lm_ram_desc d = { .name = "ram0", .host = f->ram, .size = RAM_SIZE, .page_size = PAGE };
    if (!f->e || lm_engine_add_ram(f->e, &d, NULL, &err) < 0 ||
        lm_engine_add_device(f->e, "dev0", 0, &dev_vms, &f->dev, &err) < 0 ||
        lm_engine_add_iterative(f->e, "iter0", 0, ITER_VERSION, &iter_ops, f, &err) < 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    *state = f;
    return 0;
}

/* The same machine plus a second RAM block "ram1" of 64 KiB. */
static int fx_setup2(void **state)
{
    if (fx_setup(state) < 0) {
        return -1;
    }
    fixture *f = *state;
    /* Registration is still open: no migration ran yet. */
    f->map2 = mmap(NULL, RAM2_SIZE + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->map2 == MAP_FAILED) {
        return -1;
    }
    f->ram2 = f->map2 + PAGE;
    if (mprotect(f->ram2, RAM2_SIZE, PROT_READ | PROT_WRITE) < 0) {
        return -1;
    }
    lm_error err = LM_ERROR_INIT;
    lm_ram_desc d = { .name = "ram1", .host = f->ram2, .size = RAM2_SIZE, .page_size = PAGE };
    if (lm_engine_add_ram(f->e, &d, NULL, &err) < 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int fx_teardown(void **state)
{
    fixture *f = *state;
    lm_engine_free(f->e);
    munmap(f->map, f->map_len);
    if (f->map2) {
        munmap(f->map2, RAM2_SIZE + 2 * PAGE);
    }
    free(f);
    return 0;
}

/* ---- stream building ---- */

static void put_header(lm_wbuf *w)
{
    lm_wbuf_put_be32(w, LM_STREAM_MAGIC);
    lm_wbuf_put_be32(w, LM_STREAM_VERSION);
}

typedef struct blockdesc {
    const char *name;
    uint64_t size;
    uint32_t page_size;
} blockdesc;

/* A configuration record; nblocks_field is what the count says. */
static void put_config_ex(lm_wbuf *w, uint32_t flags, uint32_t nblocks_field,
                          const blockdesc *b, size_t nb)
{
    lm_wbuf body;
    lm_wbuf_init(&body);
    uint8_t uuid[16] = { 0 };
    lm_wbuf_put(&body, uuid, sizeof(uuid));
    lm_wbuf_put_be32(&body, flags);
    lm_wbuf_put_be32(&body, nblocks_field);
    for (size_t i = 0; i < nb; i++) {
        lm_wbuf_put_str8(&body, b[i].name);
        lm_wbuf_put_be64(&body, b[i].size);
        lm_wbuf_put_be32(&body, b[i].page_size);
    }
    assert_int_equal(body.error, 0);
    lm_wbuf_put_u8(w, LM_REC_CONFIG);
    lm_wbuf_put_be32(w, (uint32_t)body.len);
    lm_wbuf_put(w, body.data, body.len);
    lm_wbuf_free(&body);
}

static void put_config(lm_wbuf *w, uint32_t flags)
{
    const blockdesc b = { "ram0", RAM_SIZE, PAGE };
    put_config_ex(w, flags, 1, &b, 1);
}

static void put_section_full(lm_wbuf *w, uint8_t type, uint32_t id, const char *idstr,
                             uint32_t instance, uint32_t version)
{
    lm_wbuf_put_u8(w, type);
    lm_wbuf_put_be32(w, id);
    lm_wbuf_put_str8(w, idstr);
    lm_wbuf_put_be32(w, instance);
    lm_wbuf_put_be32(w, version);
}

static void put_section_short(lm_wbuf *w, uint8_t type, uint32_t id)
{
    lm_wbuf_put_u8(w, type);
    lm_wbuf_put_be32(w, id);
}

static void put_ram_start(lm_wbuf *w)
{
    put_section_full(w, LM_REC_SECTION_START, 0, LM_RAM_SECTION_IDSTR, 0, 1);
}

static void put_ram_hdr(lm_wbuf *w, uint8_t type, uint16_t block, uint64_t first, uint32_t count)
{
    lm_wbuf_put_u8(w, type);
    lm_wbuf_put_be16(w, block);
    lm_wbuf_put_be64(w, first);
    lm_wbuf_put_be32(w, count);
}

/* A PAGES record followed by `data_pages` pages of `fill` bytes. */
static void put_ram_pages_fill(lm_wbuf *w, uint16_t block, uint64_t first, uint32_t count,
                               uint32_t data_pages, uint8_t fill)
{
    put_ram_hdr(w, LM_RAM_PAGES, block, first, count);
    uint8_t *p = lm_wbuf_reserve(w, (size_t)data_pages * PAGE);
    assert_non_null(p);
    memset(p, fill, (size_t)data_pages * PAGE);
}

static uint8_t pattern(int seed, uint64_t page, size_t i)
{
    return (uint8_t)(((page * 7 + i * 13 + (size_t)seed * 101) & 0xff) | 1);
}

static void put_dev_payload(lm_wbuf *w, int seed)
{
    lm_wbuf_put_be32(w, 0x11223344u + (uint32_t)seed);
    lm_wbuf_put_be16(w, (uint16_t)(0x5566 + seed));
    for (int i = 0; i < 8; i++) {
        lm_wbuf_put_u8(w, (uint8_t)('A' + i + seed));
    }
}

static void put_device_full(lm_wbuf *w, uint32_t id, int seed)
{
    put_section_full(w, LM_REC_SECTION_FULL, id, "dev0", 0, 1);
    lm_wbuf_put_be32(w, DEV_WIRE_SIZE);
    put_dev_payload(w, seed);
    lm_wbuf_put_be32(w, id);
}

#define ITER_ID 2u   /* section id the valid stream uses for iter0 */
#define GLOBAL_ID 9u /* ... and for globalstate */

/* What completes a stream besides RAM and dev0: iter0's (empty) START and
 * END sections and the source's run state (running). */
static void put_iter_and_globalstate(lm_wbuf *w)
{
    put_section_full(w, LM_REC_SECTION_START, ITER_ID, "iter0", 0, ITER_VERSION);
    lm_wbuf_put_be32(w, 0);
    lm_wbuf_put_be32(w, ITER_ID);
    put_section_short(w, LM_REC_SECTION_END, ITER_ID);
    lm_wbuf_put_be32(w, 0);
    lm_wbuf_put_be32(w, ITER_ID);
    put_section_full(w, LM_REC_SECTION_FULL, GLOBAL_ID, LM_GLOBALSTATE_IDSTR, 0, 1);
    lm_wbuf_put_be32(w, 1);
    lm_wbuf_put_u8(w, 1);
    lm_wbuf_put_be32(w, GLOBAL_ID);
}

/* The valid stream: RAM START (empty) / PART (data pages 0..3) / END (zero
 * run over the rest), the device's FULL section, iter0's START and END,
 * globalstate, EOF. */
enum {
    OMIT_PAGES = 1,       /* RAM PART's PAGES record (pages 0..3) */
    OMIT_DEV = 2,         /* dev0's FULL section */
    OMIT_ITER_END = 4,    /* iter0's END section */
    OMIT_GLOBALSTATE = 8, /* the globalstate section */
    OMIT_ITER = 16,       /* both of iter0's sections */
};

/* The valid stream, less the records named by `omit`. */
static void put_stream_omit(lm_wbuf *w, uint32_t flags, int seed, unsigned omit)
{
    put_header(w);
    put_config(w, flags);
    put_ram_start(w);
    lm_wbuf_put_u8(w, LM_RAM_EOS);
    lm_wbuf_put_be32(w, 0);
    put_section_short(w, LM_REC_SECTION_PART, 0);
    if (!(omit & OMIT_PAGES)) {
        put_ram_hdr(w, LM_RAM_PAGES, 0, 0, 4);
        for (uint64_t p = 0; p < 4; p++) {
            for (size_t i = 0; i < PAGE; i++) {
                lm_wbuf_put_u8(w, pattern(seed, p, i));
            }
        }
    }
    lm_wbuf_put_u8(w, LM_RAM_EOS);
    lm_wbuf_put_be32(w, 0);
    put_section_short(w, LM_REC_SECTION_END, 0);
    put_ram_hdr(w, LM_RAM_ZERO, 0, 4, NPAGES - 4);
    lm_wbuf_put_u8(w, LM_RAM_EOS);
    lm_wbuf_put_be32(w, 0);
    if (!(omit & OMIT_DEV)) {
        put_device_full(w, DEV_ID, seed);
    }
    size_t mark = w->len;
    put_iter_and_globalstate(w);
    if (omit & (OMIT_ITER_END | OMIT_GLOBALSTATE | OMIT_ITER)) {
        /* Rebuild the tail without what is omitted. */
        w->len = mark;
        if (!(omit & OMIT_ITER)) {
            put_section_full(w, LM_REC_SECTION_START, ITER_ID, "iter0", 0, ITER_VERSION);
            lm_wbuf_put_be32(w, 0);
            lm_wbuf_put_be32(w, ITER_ID);
        }
        if (!(omit & (OMIT_ITER | OMIT_ITER_END))) {
            put_section_short(w, LM_REC_SECTION_END, ITER_ID);
            lm_wbuf_put_be32(w, 0);
            lm_wbuf_put_be32(w, ITER_ID);
        }
        if (!(omit & OMIT_GLOBALSTATE)) {
            put_section_full(w, LM_REC_SECTION_FULL, GLOBAL_ID, LM_GLOBALSTATE_IDSTR, 0, 1);
            lm_wbuf_put_be32(w, 1);
            lm_wbuf_put_u8(w, 1);
            lm_wbuf_put_be32(w, GLOBAL_ID);
        }
    }
    lm_wbuf_put_u8(w, LM_REC_EOF);
    assert_int_equal(w->error, 0);
}

static void put_valid_stream(lm_wbuf *w, uint32_t flags, int seed)
{
    put_stream_omit(w, flags, seed, 0);
}

/* ---- running a stream ---- */

static bool is_end(lm_status s)
{
    return s == LM_STATUS_COMPLETED || s == LM_STATUS_FAILED || s == LM_STATUS_CANCELLED;
}

/* Feeds `len` bytes to a new incoming migration and waits (10 s at most)
 * for its end.  The bytes the destination sent back (return path) land in
 * rp / *rp_len. */
static void run_stream(fixture *f, const void *data, size_t len, lm_info *info, uint8_t *rp,
                       size_t *rp_len)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    char uri[32];
    snprintf(uri, sizeof(uri), "fd:%d", sv[0]);
    lm_error err = LM_ERROR_INIT;
    if (lm_engine_incoming(f->e, uri, &err) < 0) {
        fail_msg("lm_engine_incoming: %s", err.msg);
    }
    /* sv[0] belongs to the engine now. */
    const uint8_t *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(sv[1], p + off, len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            /* The destination gave up and closed its end: fine. */
            assert_true(errno == EPIPE || errno == ECONNRESET);
            break;
        }
        off += (size_t)n;
    }
    shutdown(sv[1], SHUT_WR);
    lm_status st = LM_STATUS_NONE;
    for (int t = 0; t < 5000; t++) {
        lm_engine_query(f->e, info);
        st = info->status;
        if (is_end(st)) {
            break;
        }
        usleep(2000);
    }
    if (!is_end(st)) {
        fail_msg("incoming migration still '%s' after 10 s", lm_status_name(st));
    }
    /* Collect the return path until the destination's close. */
    size_t got = 0;
    for (;;) {
        struct pollfd pfd = { sv[1], POLLIN, 0 };
        if (poll(&pfd, 1, 2000) <= 0) {
            break;
        }
        uint8_t tmp[64];
        ssize_t n = recv(sv[1], tmp, sizeof(tmp), 0);
        if (n <= 0) {
            break;
        }
        if (rp) {
            size_t take = (size_t)n;
            if (got + take > 64) {
                take = 64 - got;
            }
            memcpy(rp + got, tmp, take);
        }
        got += (size_t)n;
    }
    if (rp_len) {
        *rp_len = got;
    }
    close(sv[1]);
}

static bool ram_all_zero(const fixture *f)
{
    for (size_t i = 0; i < RAM_SIZE; i++) {
        if (f->ram[i]) {
            return false;
        }
    }
    return true;
}

static void check_canaries(const fixture *f)
{
    assert_true(f->dev.canary_lo == CANARY);
    assert_true(f->dev.canary_hi == CANARY);
}

/* Runs a valid stream and checks that RAM and the device hold exactly what
 * it carried. */
static void expect_valid(fixture *f, uint32_t flags)
{
    int seed = ++f->seed;
    lm_wbuf w;
    lm_wbuf_init(&w);
    put_valid_stream(&w, flags, seed);
    int starts = f->vm_start_calls, ok = f->done_ok;
    lm_info info = LM_INFO_INIT;
    uint8_t rp[64];
    size_t rp_len = 0;
    run_stream(f, w.data, w.len, &info, rp, &rp_len);
    lm_wbuf_free(&w);
    if (info.status != LM_STATUS_COMPLETED) {
        fail_msg("valid stream ended in '%s': %s", lm_status_name(info.status), info.error_desc);
    }
    assert_true(info.incoming);
    assert_int_equal(info.error_desc[0], '\0');
    assert_int_equal(f->vm_start_calls, starts + 1); /* autostart */
    assert_int_equal(f->done_ok, ok + 1);
    assert_int_equal(f->vm_stop_calls, 0);
    assert_int_equal(info.ram_normal, 4);
    assert_int_equal(info.ram_duplicate, NPAGES - 4);
    for (uint64_t p = 0; p < NPAGES; p++) {
        const uint8_t *pg = f->ram + p * PAGE;
        for (size_t i = 0; i < PAGE; i++) {
            uint8_t want = p < 4 ? pattern(seed, p, i) : 0;
            if (pg[i] != want) {
                fail_msg("after a valid migration, page %llu byte %zu is 0x%02x, expected 0x%02x",
                         (unsigned long long)p, i, pg[i], want);
            }
        }
    }
    assert_int_equal(f->dev.a, 0x11223344u + (uint32_t)seed);
    assert_int_equal(f->dev.b, (uint16_t)(0x5566 + seed));
    for (int i = 0; i < 8; i++) {
        assert_int_equal(f->dev.blob[i], (uint8_t)('A' + i + seed));
    }
    check_canaries(f);
    if (flags & 1u) {
        /* Return path: SHUT with status 0. */
        static const uint8_t shut_ok[8] = { 0, LM_RP_SHUT, 0, 4, 0, 0, 0, 0 };
        assert_int_equal(rp_len, 8);
        assert_memory_equal(rp, shut_ok, 8);
    } else {
        assert_int_equal(rp_len, 0);
    }
}

enum { RAM_UNTOUCHED = 1, RAM_MAY_CHANGE = 0 };

/* Feeds a bad stream; the migration must fail with every word of the
 * NULL-terminated list in its error, start nothing, and (ram_untouched)
 * leave guest RAM exactly as it was before. */
static void check_failure_v(fixture *f, const lm_wbuf *w, int ram_untouched, va_list ap)
{
    assert_int_equal(w->error, 0);
    int starts = f->vm_start_calls, fails = f->done_fail, ok = f->done_ok;
    static uint8_t before[RAM_SIZE];
    memcpy(before, f->ram, RAM_SIZE);
    lm_info info = LM_INFO_INIT;
    run_stream(f, w->data, w->len, &info, NULL, NULL);
    if (info.status != LM_STATUS_FAILED) {
        fail_msg("bad stream ended in '%s' (error '%s')", lm_status_name(info.status),
                 info.error_desc);
    }
    printf("#   error: %s\n", info.error_desc);
    for (const char *word = va_arg(ap, const char *); word; word = va_arg(ap, const char *)) {
        if (!strstr(info.error_desc, word)) {
            fail_msg("error '%s' does not mention '%s'", info.error_desc, word);
        }
    }
    assert_int_equal(f->vm_start_calls, starts);
    assert_int_equal(f->done_fail, fails + 1);
    assert_int_equal(f->done_ok, ok);
    check_canaries(f);
    if (ram_untouched && memcmp(before, f->ram, RAM_SIZE)) {
        size_t i = 0;
        while (before[i] == f->ram[i]) {
            i++;
        }
        fail_msg("a rejected stream wrote into guest RAM (first change at offset %zu)", i);
    }
}

/* check_failure_v alone (for machines the valid stream does not fit). */
static void check_failure(fixture *f, const lm_wbuf *w, int ram_untouched, ...)
{
    va_list ap;
    va_start(ap, ram_untouched);
    check_failure_v(f, w, ram_untouched, ap);
    va_end(ap);
}

/* check_failure_v, then a valid migration into the same engine must
 * succeed (retry works).  Empties w for the next stream. */
static void expect_failure(fixture *f, lm_wbuf *w, int ram_untouched, ...)
{
    va_list ap;
    va_start(ap, ram_untouched);
    check_failure_v(f, w, ram_untouched, ap);
    va_end(ap);
    lm_wbuf_free(w);
    lm_wbuf_init(w);
    expect_valid(f, 0);
}

/* Header + config + RAM START, ready for RAM records. */
static void put_ram_prefix(lm_wbuf *w)
{
    put_header(w);
    put_config(w, 0);
    put_ram_start(w);
}

#define FIXTURE fixture *f = *state; lm_wbuf w; lm_wbuf_init(&w)

/* ======================= positive ======================= */

static void test_valid_stream(void **state)
{
    fixture *f = *state;
    expect_valid(f, 0);
    /* And again into the same engine (RAM now holds the first one). */
    expect_valid(f, 0);
}

static void test_valid_stream_return_path(void **state)
{
    fixture *f = *state;
    expect_valid(f, 1u /* LM_CONFIG_RETURN_PATH */);
}

/* Records exactly at the block's edges, one PAGES record covering the whole
 * block (bulk read straight into guest memory), a VMDESC record, and a
 * device section before RAM. */
static void test_valid_stream_edges(void **state)
{
    FIXTURE;
    put_header(&w);
    put_config(&w, 0);
    put_device_full(&w, 7, 3);
    put_ram_start(&w);
    put_ram_pages_fill(&w, 0, 0, NPAGES, NPAGES, 0x11);
    put_ram_pages_fill(&w, 0, NPAGES - 1, 1, 1, 0x22);
    put_ram_pages_fill(&w, 0, 0, 1, 1, 0x33);
    put_ram_hdr(&w, LM_RAM_ZERO, 0, 1, 1);
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, 0);
    const char *desc = "{\"devices\": []}";
    lm_wbuf_put_u8(&w, LM_REC_VMDESC);
    lm_wbuf_put_be32(&w, (uint32_t)strlen(desc));
    lm_wbuf_put(&w, desc, strlen(desc));
    put_iter_and_globalstate(&w);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    lm_info info = LM_INFO_INIT;
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    if (info.status != LM_STATUS_COMPLETED) {
        fail_msg("ended in '%s': %s", lm_status_name(info.status), info.error_desc);
    }
    for (uint64_t p = 0; p < NPAGES; p++) {
        uint8_t want = p == 0 ? 0x33 : p == 1 ? 0 : p == NPAGES - 1 ? 0x22 : 0x11;
        for (size_t i = 0; i < PAGE; i += 511) {
            if (f->ram[p * PAGE + i] != want) {
                fail_msg("page %llu byte %zu: 0x%02x, expected 0x%02x", (unsigned long long)p,
                         i, f->ram[p * PAGE + i], want);
            }
        }
    }
    assert_int_equal(f->dev.a, 0x11223344u + 3);
    check_canaries(f);
    assert_int_equal(f->vm_start_calls, 1);
    expect_valid(f, 0);
}

/* ======================= header ======================= */

static void test_bad_magic(void **state)
{
    FIXTURE;
    lm_wbuf_put_be32(&w, 0x514d4556); /* "QEVM": a QEMU stream */
    lm_wbuf_put_be32(&w, 3);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "bad magic", "0x514d4556", NULL);
}

static void test_bad_version(void **state)
{
    FIXTURE;
    lm_wbuf_put_be32(&w, LM_STREAM_MAGIC);
    lm_wbuf_put_be32(&w, 3);
    put_config(&w, 0);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "unsupported stream version 3", NULL);
    lm_wbuf_put_be32(&w, LM_STREAM_MAGIC);
    lm_wbuf_put_be32(&w, 0);
    expect_failure(f, &w, RAM_UNTOUCHED, "unsupported stream version 0", NULL);
}

static void test_empty_stream(void **state)
{
    FIXTURE;
    expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
}

static void test_truncated_header(void **state)
{
    FIXTURE;
    for (size_t n = 1; n < 8; n++) {
        put_header(&w);
        w.len = n;
        expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
    }
}

/* Header and nothing after it / header and EOF before any config. */
static void test_stream_ends_early(void **state)
{
    FIXTURE;
    put_header(&w);
    expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
    put_header(&w);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "before its configuration", NULL);
    /* A full stream without its EOF marker. */
    put_valid_stream(&w, 0, 9);
    w.len--;
    expect_failure(f, &w, RAM_MAY_CHANGE, "end of stream", NULL);
}

/* ======================= configuration ======================= */

static void test_config_unknown_block(void **state)
{
    FIXTURE;
    const blockdesc b = { "ram1", RAM_SIZE, PAGE };
    put_header(&w);
    put_config_ex(&w, 0, 1, &b, 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "unknown RAM block", "'ram1'", NULL);
    /* A name of the maximum length. */
    char longname[256];
    memset(longname, 'n', 255);
    longname[255] = '\0';
    const blockdesc lb = { longname, RAM_SIZE, PAGE };
    put_header(&w);
    put_config_ex(&w, 0, 1, &lb, 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "unknown RAM block", NULL);
    /* Empty name. */
    const blockdesc eb = { "", RAM_SIZE, PAGE };
    put_header(&w);
    put_config_ex(&w, 0, 1, &eb, 1);
    expect_failure(f, &w, RAM_UNTOUCHED, "unknown RAM block", NULL);
}

static void test_config_block_size_mismatch(void **state)
{
    FIXTURE;
    const uint64_t sizes[] = { RAM_SIZE * 2, RAM_SIZE - PAGE, 0, UINT64_MAX };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        const blockdesc b = { "ram0", sizes[i], PAGE };
        put_header(&w);
        put_config_ex(&w, 0, 1, &b, 1);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "'ram0'", "size mismatch", NULL);
    }
}

static void test_config_page_size_mismatch(void **state)
{
    FIXTURE;
    const uint32_t sizes[] = { 8192, 2u << 20, 0, 4095 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        const blockdesc b = { "ram0", RAM_SIZE, sizes[i] };
        put_header(&w);
        put_config_ex(&w, 0, 1, &b, 1);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "'ram0'", "page size mismatch", NULL);
    }
}

static void test_config_wrong_block_count(void **state)
{
    FIXTURE;
    const blockdesc b[2] = { { "ram0", RAM_SIZE, PAGE }, { "ram1", RAM_SIZE, PAGE } };
    put_header(&w);
    put_config_ex(&w, 0, 2, b, 2);
    expect_failure(f, &w, RAM_UNTOUCHED, "RAM layout mismatch", "2 RAM blocks", NULL);
    put_header(&w);
    put_config_ex(&w, 0, 0, b, 0);
    expect_failure(f, &w, RAM_UNTOUCHED, "RAM layout mismatch", NULL);
    /* A count far beyond what the body holds. */
    put_header(&w);
    put_config_ex(&w, 0, 0xffffffffu, b, 1);
    expect_failure(f, &w, RAM_UNTOUCHED, "RAM layout mismatch", NULL);
}

static void test_config_huge_length(void **state)
{
    FIXTURE;
    put_header(&w);
    lm_wbuf_put_u8(&w, LM_REC_CONFIG);
    lm_wbuf_put_be32(&w, 0xffffffffu);
    lm_wbuf_put(&w, "xxxxxxxx", 8);
    expect_failure(f, &w, RAM_UNTOUCHED, "configuration record too long", NULL);
    put_header(&w);
    lm_wbuf_put_u8(&w, LM_REC_CONFIG);
    lm_wbuf_put_be32(&w, LM_CONFIG_MAX_LEN + 1);
    expect_failure(f, &w, RAM_UNTOUCHED, "configuration record too long", NULL);
}

static void test_config_truncated(void **state)
{
    FIXTURE;
    /* Length larger than the bytes that follow. */
    put_header(&w);
    lm_wbuf_put_u8(&w, LM_REC_CONFIG);
    lm_wbuf_put_be32(&w, 100);
    lm_wbuf_put(&w, "short", 5);
    expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
    /* A body too short for its own fields. */
    for (uint32_t len = 0; len < 24; len += 5) {
        put_header(&w);
        lm_wbuf_put_u8(&w, LM_REC_CONFIG);
        lm_wbuf_put_be32(&w, len);
        uint8_t *p = lm_wbuf_reserve(&w, len);
        memset(p, 0, len);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "truncated configuration record", NULL);
    }
    /* Count 1 and a block entry cut short. */
    put_header(&w);
    lm_wbuf_put_u8(&w, LM_REC_CONFIG);
    lm_wbuf_put_be32(&w, 16 + 4 + 4 + 1 + 4 + 3);
    uint8_t uuid[16] = { 0 };
    lm_wbuf_put(&w, uuid, 16);
    lm_wbuf_put_be32(&w, 0);
    lm_wbuf_put_be32(&w, 1);
    lm_wbuf_put_str8(&w, "ram0");
    lm_wbuf_put(&w, "\0\0\0", 3);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "truncated configuration record", NULL);
    /* str8 name length pointing past the body. */
    put_header(&w);
    lm_wbuf_put_u8(&w, LM_REC_CONFIG);
    lm_wbuf_put_be32(&w, 16 + 4 + 4 + 1 + 2);
    lm_wbuf_put(&w, uuid, 16);
    lm_wbuf_put_be32(&w, 0);
    lm_wbuf_put_be32(&w, 1);
    lm_wbuf_put_u8(&w, 200);
    lm_wbuf_put(&w, "ra", 2);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "truncated configuration record", NULL);
}

static void test_config_trailing_bytes(void **state)
{
    FIXTURE;
    lm_wbuf cfg;
    lm_wbuf_init(&cfg);
    put_config(&cfg, 0);
    /* Patch the length to cover 3 extra bytes. */
    uint32_t len = lm_load_be32(cfg.data + 1) + 3;
    lm_store_be32(cfg.data + 1, len);
    lm_wbuf_put(&cfg, "abc", 3);
    put_header(&w);
    lm_wbuf_put(&w, cfg.data, cfg.len);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    lm_wbuf_free(&cfg);
    expect_failure(f, &w, RAM_UNTOUCHED, "trailing bytes", "configuration", NULL);
}

static void test_config_duplicate(void **state)
{
    FIXTURE;
    put_header(&w);
    put_config(&w, 0);
    put_config(&w, 0);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "duplicate configuration record", NULL);
}

/* validate-uuid is the source's (QEMU): its flag in the configuration
 * record decides, whatever the destination's capability says. */
static void test_config_uuid_mismatch(void **state)
{
    FIXTURE;
    lm_error err = LM_ERROR_INIT;
    const uint8_t mine[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
    lm_engine_set_uuid(f->e, mine);
    put_header(&w);
    put_config(&w, 1u << 3 /* LM_CONFIG_VALIDATE_UUID */); /* all-zero UUID, to be checked */
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    assert_int_equal(w.error, 0);
    lm_info info = LM_INFO_INIT;
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    assert_int_equal(info.status, LM_STATUS_FAILED);
    assert_non_null(strstr(info.error_desc, "UUID"));
    assert_int_equal(f->vm_start_calls, 0);
    lm_wbuf_free(&w);
    /* The destination's own capability does not make it check. */
    assert_int_equal(lm_engine_set_capability(f->e, "validate-uuid", true, &err), 0);
    expect_valid(f, 0);
    assert_int_equal(lm_engine_set_capability(f->e, "validate-uuid", false, &err), 0);
}

/* ======================= sections ======================= */

static void test_section_before_config(void **state)
{
    FIXTURE;
    const uint8_t types[] = { LM_REC_SECTION_START, LM_REC_SECTION_PART, LM_REC_SECTION_END,
                              LM_REC_SECTION_FULL };
    for (size_t i = 0; i < sizeof(types); i++) {
        put_header(&w);
        put_section_full(&w, types[i], 0, LM_RAM_SECTION_IDSTR, 0, 1);
        put_ram_pages_fill(&w, 0, 0, 1, 1, 0xee);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        put_config(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "section before the configuration record", NULL);
    }
}

static void test_section_footer_mismatch(void **state)
{
    FIXTURE;
    put_ram_prefix(&w);
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, 7);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "section footer mismatch", "expected section 0",
                   "found 7", NULL);
    /* On a device section. */
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_FULL, 3, "dev0", 0, 1);
    lm_wbuf_put_be32(&w, DEV_WIRE_SIZE);
    put_dev_payload(&w, 0);
    lm_wbuf_put_be32(&w, 4);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "section footer mismatch", "expected section 3", NULL);
    /* Footer missing altogether. */
    put_ram_prefix(&w);
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_u8(&w, 0);
    expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
}

static void test_unknown_record_type(void **state)
{
    FIXTURE;
    const uint8_t types[] = { 0x00, 0x09, 0x7f, 0xff };
    for (size_t i = 0; i < sizeof(types); i++) {
        put_header(&w);
        put_config(&w, 0);
        lm_wbuf_put_u8(&w, types[i]);
        lm_wbuf_put(&w, "\0\0\0\0\0\0\0\0", 8);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        char want[40];
        snprintf(want, sizeof(want), "unknown record type 0x%02x", types[i]);
        expect_failure(f, &w, RAM_UNTOUCHED, want, NULL);
    }
    /* COMMAND records exist (postcopy); an unknown command is refused, and
     * postcopy commands out of order too. */
    const uint16_t cmds[] = { 0x0000, 0x7fff, LM_CMD_POSTCOPY_RESUME };
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        put_header(&w);
        put_config(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_COMMAND);
        lm_wbuf_put_be16(&w, cmds[i]);
        lm_wbuf_put_be16(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        char want[40];
        snprintf(want, sizeof(want), "unexpected command 0x%04x", cmds[i]);
        expect_failure(f, &w, RAM_UNTOUCHED, want, NULL);
    }
    const uint16_t early[] = { LM_CMD_POSTCOPY_DISCARD, LM_CMD_POSTCOPY_LISTEN, LM_CMD_POSTCOPY_RUN };
    for (size_t i = 0; i < sizeof(early) / sizeof(early[0]); i++) {
        put_header(&w);
        put_config(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_COMMAND);
        lm_wbuf_put_be16(&w, early[i]);
        lm_wbuf_put_be16(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "POSTCOPY_", NULL);
    }
}

static void test_section_id_out_of_range(void **state)
{
    FIXTURE;
    const uint32_t ids[] = { LM_MAX_SECTIONS, LM_MAX_SECTIONS + 1, 0x7fffffffu, 0xffffffffu };
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        put_header(&w);
        put_config(&w, 0);
        put_section_full(&w, LM_REC_SECTION_START, ids[i], LM_RAM_SECTION_IDSTR, 0, 1);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, ids[i]);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        char want[48];
        snprintf(want, sizeof(want), "section id %u out of range", ids[i]);
        expect_failure(f, &w, RAM_UNTOUCHED, want, NULL);

        /* Short headers too. */
        put_header(&w);
        put_config(&w, 0);
        put_section_short(&w, i % 2 ? LM_REC_SECTION_END : LM_REC_SECTION_PART, ids[i]);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, ids[i]);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, want, NULL);
    }
    /* The last valid id works. */
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_START, LM_MAX_SECTIONS - 1, LM_RAM_SECTION_IDSTR, 0, 1);
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, LM_MAX_SECTIONS - 1);
    lm_wbuf_put_u8(&w, 0x42);
    expect_failure(f, &w, RAM_UNTOUCHED, "unknown record type 0x42", NULL);
}

static void test_part_before_start(void **state)
{
    FIXTURE;
    const uint8_t types[] = { LM_REC_SECTION_PART, LM_REC_SECTION_END };
    for (size_t i = 0; i < sizeof(types); i++) {
        put_header(&w);
        put_config(&w, 0);
        put_section_short(&w, types[i], 5);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 5);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "section 5 continued before it started", NULL);
        /* Section 0 (RAM's usual id) is not implicitly started either. */
        put_header(&w);
        put_config(&w, 0);
        put_section_short(&w, types[i], 0);
        put_ram_pages_fill(&w, 0, 0, 1, 1, 0xee);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "section 0 continued before it started", NULL);
    }
}

static void test_ram_section_bad_version(void **state)
{
    FIXTURE;
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_START, 0, LM_RAM_SECTION_IDSTR, 0, 2);
    put_ram_pages_fill(&w, 0, 0, 1, 1, 0xee);
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, 0);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "RAM section version 2", NULL);
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_START, 0, LM_RAM_SECTION_IDSTR, 1, 1);
    put_ram_pages_fill(&w, 0, 0, 1, 1, 0xee);
    expect_failure(f, &w, RAM_UNTOUCHED, "RAM section", NULL);
}

static void test_section_header_truncated(void **state)
{
    FIXTURE;
    lm_wbuf full;
    lm_wbuf_init(&full);
    put_header(&full);
    put_config(&full, 0);
    size_t base = full.len;
    put_section_full(&full, LM_REC_SECTION_FULL, 1, "dev0", 0, 1);
    size_t hdr_end = full.len;
    for (size_t cut = base + 1; cut < hdr_end; cut++) {
        lm_wbuf_put(&w, full.data, cut);
        expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
    }
    lm_wbuf_free(&full);
}

/* ======================= RAM records ======================= */

static void test_ram_page_index_out_of_range(void **state)
{
    FIXTURE;
    const uint64_t firsts[] = { NPAGES, NPAGES + 1, 1ull << 32, 1ull << 52 };
    for (size_t i = 0; i < sizeof(firsts) / sizeof(firsts[0]); i++) {
        put_ram_prefix(&w);
        put_ram_pages_fill(&w, 0, firsts[i], 1, 1, 0xee);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "out of range", "'ram0'", NULL);
        put_ram_prefix(&w);
        put_ram_hdr(&w, LM_RAM_ZERO, 0, firsts[i], 1);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "out of range", NULL);
    }
}

static void test_ram_count_overflow(void **state)
{
    FIXTURE;
    struct { uint64_t first; uint32_t count; uint32_t data_pages; } cases[] = {
        { 0, NPAGES + 1, 4 },                    /* one page too many */
        { NPAGES - 1, 2, 2 },                    /* crosses the end by one */
        { 250, 10, 10 },
        { 1, 0xffffffffu, 4 },                   /* count near UINT32_MAX */
        { UINT64_MAX, 1, 1 },                    /* first near UINT64_MAX */
        { UINT64_MAX, 2, 2 },                    /* first + count wraps to 1 */
        { UINT64_MAX - 1, 0xffffffffu, 4 },      /* wraps well past zero */
        { UINT64_MAX - NPAGES + 1, NPAGES, 4 },  /* first + count wraps to exactly 0 */
        { 0, 0, 0 },                             /* empty record */
        { 5, 0, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        put_ram_prefix(&w);
        put_ram_pages_fill(&w, 0, cases[i].first, cases[i].count, cases[i].data_pages, 0xee);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "out of range", NULL);

        put_ram_prefix(&w);
        put_ram_hdr(&w, LM_RAM_ZERO, 0, cases[i].first, cases[i].count);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, "out of range", NULL);
    }
}

static void test_ram_block_index_out_of_range(void **state)
{
    FIXTURE;
    const uint16_t blocks[] = { 1, 2, 255, 256, 0xffff };
    for (size_t i = 0; i < sizeof(blocks) / sizeof(blocks[0]); i++) {
        put_ram_prefix(&w);
        put_ram_pages_fill(&w, blocks[i], 0, 1, 1, 0xee);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        char want[48];
        snprintf(want, sizeof(want), "names block %u", blocks[i]);
        expect_failure(f, &w, RAM_UNTOUCHED, want, NULL);
        put_ram_prefix(&w);
        put_ram_hdr(&w, LM_RAM_ZERO, blocks[i], 0, 1);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, want, NULL);
    }
}

static void test_ram_unknown_record_type(void **state)
{
    FIXTURE;
    const uint8_t types[] = { 0x00, 0x06, 0x07, 0x80, 0xff };
    for (size_t i = 0; i < sizeof(types); i++) {
        put_ram_prefix(&w);
        put_ram_hdr(&w, types[i], 0, 0, 1);
        uint8_t *p = lm_wbuf_reserve(&w, PAGE);
        memset(p, 0xee, PAGE);
        lm_wbuf_put_u8(&w, LM_RAM_EOS);
        lm_wbuf_put_be32(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        char want[48];
        snprintf(want, sizeof(want), "unknown RAM record type 0x%02x", types[i]);
        expect_failure(f, &w, RAM_UNTOUCHED, want, NULL);
    }
}

/* Mapped-ram: its record in a stream that did not announce it, and a
 * stream that announces it to a destination without the capability (the
 * fixture's transport is fd:).  Full coverage of the record's fields,
 * truncated files and the file: transport is in
 * tests/integration/test_mapped_ram.py. */
static void test_mapped_ram_records(void **state)
{
    FIXTURE;
    put_ram_prefix(&w);
    lm_wbuf_put_u8(&w, LM_RAM_MAPPED_BLOCK);
    for (int i = 0; i < 26; i++) {
        lm_wbuf_put_u8(&w, 0);
    }
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, 0);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "MAPPED_BLOCK record without mapped-ram", NULL);

    put_header(&w);
    put_config(&w, 1u << 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "capability mapped-ram is off on the destination", NULL);
}

/* Multifd's records on the main channel: a sync without multifd, and
 * MULTIFD_SETUP with hostile fields or on a destination without it (the
 * fixture's transport is fd:, and its capability is off). */
static void test_multifd_records(void **state)
{
    FIXTURE;
    put_ram_prefix(&w);
    lm_wbuf_put_u8(&w, LM_RAM_MULTIFD_SYNC);
    lm_wbuf_put_be64(&w, 1);
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, 0);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "MULTIFD_SYNC record without multifd", NULL);

    struct {
        uint16_t len;
        uint16_t channels;
        uint8_t compression;
        const char *want;
    } bad[] = {
        { 0, 2, 0, "malformed MULTIFD_SETUP" },
        { 19, 2, 0, "malformed MULTIFD_SETUP" },
        { 21, 2, 0, "malformed MULTIFD_SETUP" },
        { 20, 0, 0, "MULTIFD_SETUP: 0 channels" },
        { 20, 65, 0, "MULTIFD_SETUP: 65 channels" },
        { 20, 0xffff, 0, "MULTIFD_SETUP: 65535 channels" },
        { 20, 2, 2, "unknown compression 2" },
        { 20, 2, 0xff, "unknown compression 255" },
        { 20, 2, 0, "capability multifd is off" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put_header(&w);
        put_config(&w, 0);
        lm_wbuf_put_u8(&w, LM_REC_COMMAND);
        lm_wbuf_put_be16(&w, LM_CMD_MULTIFD_SETUP);
        lm_wbuf_put_be16(&w, bad[i].len);
        uint8_t body[32] = { 0 };
        body[0] = (uint8_t)(bad[i].channels >> 8);
        body[1] = (uint8_t)bad[i].channels;
        body[2] = bad[i].compression;
        lm_wbuf_put(&w, body, bad[i].len);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        expect_failure(f, &w, RAM_UNTOUCHED, bad[i].want, NULL);
    }
}

/* Data cut short: the error says the stream ended; pages that the retry
 * rewrites (pages 0..3) may hold partial data in between. */
static void test_ram_truncated_page_data(void **state)
{
    FIXTURE;
    const size_t cuts[] = { 0, 1, 4095, 4096, 5000, 2 * PAGE - 1 };
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        put_ram_prefix(&w);
        put_ram_hdr(&w, LM_RAM_PAGES, 0, 0, 2);
        uint8_t *p = lm_wbuf_reserve(&w, cuts[i]);
        if (cuts[i]) {
            memset(p, 0xee, cuts[i]);
        }
        expect_failure(f, &w, RAM_MAY_CHANGE, "end of stream", NULL);
    }
    /* A record header cut short. */
    for (size_t cut = 1; cut < 15; cut += 3) {
        put_ram_prefix(&w);
        put_ram_hdr(&w, LM_RAM_PAGES, 0, 0, 1);
        w.len -= 15 - cut;
        expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
    }
    /* A whole-block bulk record cut short (direct read into guest RAM). */
    put_ram_prefix(&w);
    put_ram_pages_fill(&w, 0, 0, NPAGES, NPAGES / 2, 0xee);
    expect_failure(f, &w, RAM_MAY_CHANGE, "end of stream", NULL);
    /* RAM section without its EOS (the ZERO record names a page that is
     * zero already). */
    put_ram_prefix(&w);
    put_ram_hdr(&w, LM_RAM_ZERO, 0, 100, 1);
    expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
}

/*
 * A failed load that wrote part of a page leaves that page dirty; the next
 * migration must not treat it as a fresh zero page.  The source sends
 * zero pages as ZERO records, so after the retry the page must read zero.
 */
static void test_retry_after_partial_page_write(void **state)
{
    FIXTURE;
    put_ram_prefix(&w);
    put_ram_hdr(&w, LM_RAM_PAGES, 0, 10, 2);
    uint8_t *p = lm_wbuf_reserve(&w, 5000);
    memset(p, 0xee, 5000);
    /* The retry (expect_valid) sends pages 4.. as one ZERO run. */
    expect_failure(f, &w, RAM_MAY_CHANGE, "end of stream", NULL);
}

/* ======================= devices ======================= */

static void test_unknown_device(void **state)
{
    FIXTURE;
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_FULL, 1, "nosuchdev", 0, 1);
    lm_wbuf_put_be32(&w, 4);
    lm_wbuf_put_be32(&w, 0);
    lm_wbuf_put_be32(&w, 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "unknown device 'nosuchdev'", NULL);
    /* Known idstr, unknown instance. */
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_FULL, 1, "dev0", 1, 1);
    lm_wbuf_put_be32(&w, DEV_WIRE_SIZE);
    put_dev_payload(&w, 0);
    lm_wbuf_put_be32(&w, 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "unknown device 'dev0' instance 1", NULL);
    /* Empty and maximal idstr. */
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_FULL, 1, "", 0, 1);
    expect_failure(f, &w, RAM_UNTOUCHED, "unknown device", NULL);
    char longid[256];
    memset(longid, 'd', 255);
    longid[255] = '\0';
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_FULL, 1, longid, 0, 1);
    expect_failure(f, &w, RAM_UNTOUCHED, "unknown device", NULL);
    /* A non-iterative device in an iterative (START) section. */
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_START, 1, "dev0", 0, 1);
    lm_wbuf_put_be32(&w, DEV_WIRE_SIZE);
    put_dev_payload(&w, 0);
    lm_wbuf_put_be32(&w, 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "'dev0'", "wrong kind of section", NULL);
}

static void test_device_payload_over_limit(void **state)
{
    FIXTURE;
    const uint32_t lens[] = { LM_DEVICE_CHUNK_MAX + 1, 0x80000000u, 0xffffffffu };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        put_header(&w);
        put_config(&w, 0);
        put_section_full(&w, LM_REC_SECTION_FULL, 1, "dev0", 0, 1);
        lm_wbuf_put_be32(&w, lens[i]);
        put_dev_payload(&w, 0);
        expect_failure(f, &w, RAM_UNTOUCHED, "'dev0'", "exceeds", NULL);
    }
}

static void test_device_payload_truncated(void **state)
{
    FIXTURE;
    /* The stream ends inside the payload. */
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_FULL, 1, "dev0", 0, 1);
    lm_wbuf_put_be32(&w, DEV_WIRE_SIZE);
    lm_wbuf_put(&w, "\1\2\3\4\5", 5);
    expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
    /* A payload length that ends the payload too soon for the field table:
     * the loader names the field. */
    for (uint32_t len = 0; len < DEV_WIRE_SIZE; len += 3) {
        put_header(&w);
        put_config(&w, 0);
        put_section_full(&w, LM_REC_SECTION_FULL, 1, "dev0", 0, 1);
        lm_wbuf_put_be32(&w, len);
        lm_wbuf put;
        lm_wbuf_init(&put);
        put_dev_payload(&put, 0);
        lm_wbuf_put(&w, put.data, len);
        lm_wbuf_free(&put);
        lm_wbuf_put_be32(&w, 1);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        const char *field = len < 4 ? "'a'" : len < 6 ? "'b'" : "'blob'";
        expect_failure(f, &w, RAM_UNTOUCHED, "truncated at field", field, NULL);
    }
    /* Longer than the table: trailing bytes. */
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_FULL, 1, "dev0", 0, 1);
    lm_wbuf_put_be32(&w, DEV_WIRE_SIZE + 2);
    put_dev_payload(&w, 0);
    lm_wbuf_put_be16(&w, 0);
    lm_wbuf_put_be32(&w, 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "trailing bytes", NULL);
}

static void test_device_version_too_new(void **state)
{
    FIXTURE;
    const uint32_t versions[] = { 2, 0xffffffffu, 0 };
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        put_header(&w);
        put_config(&w, 0);
        put_section_full(&w, LM_REC_SECTION_FULL, 1, "dev0", 0, versions[i]);
        lm_wbuf_put_be32(&w, DEV_WIRE_SIZE);
        put_dev_payload(&w, 0);
        lm_wbuf_put_be32(&w, 1);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        char want[48];
        snprintf(want, sizeof(want), "stream has version %u", versions[i]);
        expect_failure(f, &w, RAM_UNTOUCHED, "'testdev'", want, NULL);
    }
}

static void test_vmdesc_too_long(void **state)
{
    FIXTURE;
    put_header(&w);
    put_config(&w, 0);
    lm_wbuf_put_u8(&w, LM_REC_VMDESC);
    lm_wbuf_put_be32(&w, LM_VMDESC_MAX + 1);
    lm_wbuf_put(&w, "{}", 2);
    expect_failure(f, &w, RAM_UNTOUCHED, "device description too long", NULL);
    /* Within the limit but cut short. */
    put_header(&w);
    put_config(&w, 0);
    lm_wbuf_put_u8(&w, LM_REC_VMDESC);
    lm_wbuf_put_be32(&w, 10000);
    lm_wbuf_put(&w, "{}", 2);
    expect_failure(f, &w, RAM_UNTOUCHED, "end of stream", NULL);
}

/* On failure with the return path on, the destination answers SHUT != 0. */
static void test_failure_reports_on_return_path(void **state)
{
    FIXTURE;
    put_header(&w);
    put_config(&w, 1u /* LM_CONFIG_RETURN_PATH */);
    put_ram_start(&w);
    put_ram_hdr(&w, LM_RAM_ZERO, 0, NPAGES, 1);
    lm_info info = LM_INFO_INIT;
    uint8_t rp[64];
    size_t rp_len = 0;
    run_stream(f, w.data, w.len, &info, rp, &rp_len);
    lm_wbuf_free(&w);
    assert_int_equal(info.status, LM_STATUS_FAILED);
    assert_int_equal(rp_len, 8);
    assert_int_equal(lm_load_be16(rp), LM_RP_SHUT);
    assert_int_equal(lm_load_be16(rp + 2), 4);
    assert_int_not_equal(lm_load_be32(rp + 4), 0);
    expect_valid(f, 1u);
}

/* Several failures in a row, then success. */
static void test_many_failures_then_success(void **state)
{
    FIXTURE;
    for (int i = 0; i < 5; i++) {
        put_ram_prefix(&w);
        put_ram_hdr(&w, LM_RAM_PAGES, 0, (uint64_t)NPAGES + (uint64_t)i, 1);
        lm_info info = LM_INFO_INIT;
        run_stream(f, w.data, w.len, &info, NULL, NULL);
        assert_int_equal(info.status, LM_STATUS_FAILED);
        assert_non_null(strstr(info.error_desc, "out of range"));
        lm_wbuf_free(&w);
        lm_wbuf_init(&w);
    }
    assert_int_equal(f->done_fail, 5);
    assert_true(ram_all_zero(f));
    expect_valid(f, 0);
}

/* ======================= iterative devices ======================= */

static void put_iter_chunk(lm_wbuf *w, uint8_t type, uint32_t id, uint32_t version,
                           const char *data, size_t len)
{
    if (type == LM_REC_SECTION_START || type == LM_REC_SECTION_FULL) {
        put_section_full(w, type, id, "iter0", 0, version);
    } else {
        put_section_short(w, type, id);
    }
    lm_wbuf_put_be32(w, (uint32_t)len);
    lm_wbuf_put(w, data, len);
    lm_wbuf_put_be32(w, id);
}

static void test_iterative_device_valid(void **state)
{
    FIXTURE;
    put_header(&w);
    put_config(&w, 0);
    put_iter_chunk(&w, LM_REC_SECTION_START, 2, ITER_VERSION, "abc", 3);
    put_ram_start(&w);
    put_ram_hdr(&w, LM_RAM_ZERO, 0, 0, NPAGES);
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, 0);
    put_iter_chunk(&w, LM_REC_SECTION_PART, 2, 0, "de", 2);
    put_iter_chunk(&w, LM_REC_SECTION_PART, 2, 0, "", 0);
    put_iter_chunk(&w, LM_REC_SECTION_END, 2, 0, "f", 1);
    put_device_full(&w, DEV_ID, 1);
    put_section_full(&w, LM_REC_SECTION_FULL, GLOBAL_ID, LM_GLOBALSTATE_IDSTR, 0, 1);
    lm_wbuf_put_be32(&w, 1);
    lm_wbuf_put_u8(&w, 1);
    lm_wbuf_put_be32(&w, GLOBAL_ID);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    lm_info info = LM_INFO_INIT;
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    if (info.status != LM_STATUS_COMPLETED) {
        fail_msg("ended in '%s': %s", lm_status_name(info.status), info.error_desc);
    }
    assert_int_equal(f->iter_loads, 3); /* the empty chunk is not handed over */
    assert_int_equal(f->iter_version, ITER_VERSION);
    assert_int_equal(f->iter_len, 6);
    assert_memory_equal(f->iter_buf, "abcdef", 6);
    assert_int_equal(f->vm_start_calls, 1);
}

static void test_iterative_device_errors(void **state)
{
    FIXTURE;
    /* An iterative device in a FULL section. */
    put_header(&w);
    put_config(&w, 0);
    put_iter_chunk(&w, LM_REC_SECTION_FULL, 2, ITER_VERSION, "abc", 3);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "'iter0'", "wrong kind of section", NULL);
    /* Another version than the one registered. */
    put_header(&w);
    put_config(&w, 0);
    put_iter_chunk(&w, LM_REC_SECTION_START, 2, ITER_VERSION + 1, "abc", 3);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "'iter0'", "stream version 3", NULL);
    /* load() fails without a message: the engine supplies one. */
    put_header(&w);
    put_config(&w, 0);
    put_iter_chunk(&w, LM_REC_SECTION_START, 2, ITER_VERSION, "ok", 2);
    put_iter_chunk(&w, LM_REC_SECTION_PART, 2, 0, "\xee", 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "'iter0'", "load failed", NULL);
    /* load() fails with its own message: that one is reported. */
    put_header(&w);
    put_config(&w, 0);
    put_iter_chunk(&w, LM_REC_SECTION_START, 2, ITER_VERSION, "\xef", 1);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    expect_failure(f, &w, RAM_UNTOUCHED, "iter0 rejected chunk", NULL);
    /* A payload over the limit never reaches load(). */
    int loads = f->iter_loads;
    put_header(&w);
    put_config(&w, 0);
    put_section_full(&w, LM_REC_SECTION_START, 2, "iter0", 0, ITER_VERSION);
    lm_wbuf_put_be32(&w, LM_DEVICE_CHUNK_MAX + 1);
    expect_failure(f, &w, RAM_UNTOUCHED, "'iter0'", "exceeds", NULL);
    assert_int_equal(f->iter_loads, loads);
}

/* ======================= globalstate ======================= */

#ifdef LM_GLOBALSTATE_IDSTR
/* The valid stream with a globalstate FULL section (payload: be32 len,
 * bytes) in front of its EOF. */
static void put_stream_with_globalstate(lm_wbuf *w, uint8_t type, uint32_t version,
                                        const uint8_t *payload, uint32_t len)
{
    put_valid_stream(w, 0, 5);
    w->len--; /* drop the EOF */
    put_section_full(w, type, 9, LM_GLOBALSTATE_IDSTR, 0, version);
    lm_wbuf_put_be32(w, len);
    lm_wbuf_put(w, payload, len);
    lm_wbuf_put_be32(w, 9);
    lm_wbuf_put_u8(w, LM_REC_EOF);
}

static void test_globalstate(void **state)
{
    FIXTURE;
    /* The source guest was stopped: loaded, but not started here. */
    put_stream_with_globalstate(&w, LM_REC_SECTION_FULL, 1, (const uint8_t *)"\0", 1);
    lm_info info = LM_INFO_INIT;
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    lm_wbuf_init(&w);
    if (info.status != LM_STATUS_COMPLETED) {
        fail_msg("ended in '%s': %s", lm_status_name(info.status), info.error_desc);
    }
    assert_int_equal(f->vm_start_calls, 0);
    assert_int_equal(f->done_ok, 1);
    /* Running: started. */
    put_stream_with_globalstate(&w, LM_REC_SECTION_FULL, 1, (const uint8_t *)"\1", 1);
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    lm_wbuf_init(&w);
    assert_int_equal(info.status, LM_STATUS_COMPLETED);
    assert_int_equal(f->vm_start_calls, 1);

    put_stream_with_globalstate(&w, LM_REC_SECTION_FULL, 1, (const uint8_t *)"\2", 1);
    expect_failure(f, &w, RAM_MAY_CHANGE, "globalstate", "bad run state 2", NULL);
    put_stream_with_globalstate(&w, LM_REC_SECTION_FULL, 1, (const uint8_t *)"\1\1", 2);
    expect_failure(f, &w, RAM_MAY_CHANGE, "globalstate payload of 2 bytes", NULL);
    put_stream_with_globalstate(&w, LM_REC_SECTION_FULL, 1, (const uint8_t *)"", 0);
    expect_failure(f, &w, RAM_MAY_CHANGE, "globalstate payload of 0 bytes", NULL);
    put_stream_with_globalstate(&w, LM_REC_SECTION_FULL, 2, (const uint8_t *)"\1", 1);
    expect_failure(f, &w, RAM_MAY_CHANGE, "malformed globalstate section", NULL);
    put_stream_with_globalstate(&w, LM_REC_SECTION_START, 1, (const uint8_t *)"\1", 1);
    expect_failure(f, &w, RAM_MAY_CHANGE, "malformed globalstate section", NULL);
    /* Length over anything sane: rejected without reading it. */
    put_valid_stream(&w, 0, 5);
    w.len--;
    put_section_full(&w, LM_REC_SECTION_FULL, 9, LM_GLOBALSTATE_IDSTR, 0, 1);
    lm_wbuf_put_be32(&w, 0xffffffffu);
    expect_failure(f, &w, RAM_MAY_CHANGE, "globalstate payload", NULL);
}
#endif

/* ======================= two RAM blocks ======================= */

static const blockdesc two_blocks[2] = { { "ram0", RAM_SIZE, PAGE }, { "ram1", RAM2_SIZE, PAGE } };

/* The source's block order defines the index used by RAM records, whatever
 * the destination's registration order. */
static void test_two_blocks_source_order(void **state)
{
    FIXTURE;
    const blockdesc swapped[2] = { two_blocks[1], two_blocks[0] };
    put_header(&w);
    put_config_ex(&w, 0, 2, swapped, 2);
    put_ram_start(&w);
    put_ram_pages_fill(&w, 0, RAM2_SIZE / PAGE - 1, 1, 1, 0x61); /* ram1's last page */
    put_ram_pages_fill(&w, 1, NPAGES - 1, 1, 1, 0x62);           /* ram0's last page */
    put_ram_hdr(&w, LM_RAM_ZERO, 0, 0, RAM2_SIZE / PAGE - 1);
    put_ram_hdr(&w, LM_RAM_ZERO, 1, 0, NPAGES - 1);
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, 0);
    put_device_full(&w, DEV_ID, 1);
    put_iter_and_globalstate(&w);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    lm_info info = LM_INFO_INIT;
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    if (info.status != LM_STATUS_COMPLETED) {
        fail_msg("ended in '%s': %s", lm_status_name(info.status), info.error_desc);
    }
    for (size_t i = 0; i < PAGE; i++) {
        assert_int_equal(f->ram2[RAM2_SIZE - PAGE + i], 0x61);
        assert_int_equal(f->ram[RAM_SIZE - PAGE + i], 0x62);
    }
    assert_int_equal(f->ram2[0], 0);
    assert_int_equal(f->ram[0], 0);
}

static void test_two_blocks_errors(void **state)
{
    fixture *f = *state;
    const char *const names[] = { "ram0", "ram1" };
    for (int k = 0; k < 2; k++) {
        lm_wbuf w;
        lm_wbuf_init(&w);
        /* The same block listed twice. */
        const blockdesc twice[2] = { two_blocks[k], two_blocks[k] };
        put_header(&w);
        put_config_ex(&w, 0, 2, twice, 2);
        lm_wbuf_put_u8(&w, LM_REC_EOF);
        lm_info info = LM_INFO_INIT;
        run_stream(f, w.data, w.len, &info, NULL, NULL);
        assert_int_equal(info.status, LM_STATUS_FAILED);
        printf("#   error: %s\n", info.error_desc);
        assert_non_null(strstr(info.error_desc, "listed twice"));
        assert_non_null(strstr(info.error_desc, names[k]));
        lm_wbuf_free(&w);
    }
    /* The smaller block's page range is its own, not the larger one's. */
    lm_wbuf w;
    lm_wbuf_init(&w);
    put_header(&w);
    put_config_ex(&w, 0, 2, two_blocks, 2);
    put_ram_start(&w);
    put_ram_pages_fill(&w, 1, RAM2_SIZE / PAGE, 1, 1, 0xee);
    lm_info info = LM_INFO_INIT;
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    assert_int_equal(info.status, LM_STATUS_FAILED);
    assert_non_null(strstr(info.error_desc, "'ram1'"));
    assert_non_null(strstr(info.error_desc, "out of range"));
    lm_wbuf_init(&w);
    put_header(&w);
    put_config_ex(&w, 0, 2, two_blocks, 2);
    put_ram_start(&w);
    put_ram_pages_fill(&w, 1, 8, 16, 16, 0xee); /* 8 + 16 > 16 pages */
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    assert_int_equal(info.status, LM_STATUS_FAILED);
    assert_non_null(strstr(info.error_desc, "out of range"));
    /* Block 2 does not exist. */
    lm_wbuf_init(&w);
    put_header(&w);
    put_config_ex(&w, 0, 2, two_blocks, 2);
    put_ram_start(&w);
    put_ram_hdr(&w, LM_RAM_ZERO, 2, 0, 1);
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    assert_int_equal(info.status, LM_STATUS_FAILED);
    assert_non_null(strstr(info.error_desc, "names block 2, but only 2 blocks exist"));
    for (size_t i = 0; i < RAM2_SIZE; i++) {
        assert_int_equal(f->ram2[i], 0);
    }
    assert_true(ram_all_zero(f));
    assert_int_equal(f->vm_start_calls, 0);
    /* A one-block stream into a two-block machine. */
    lm_wbuf_init(&w);
    put_header(&w);
    put_config(&w, 0);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    run_stream(f, w.data, w.len, &info, NULL, NULL);
    lm_wbuf_free(&w);
    assert_int_equal(info.status, LM_STATUS_FAILED);
    assert_non_null(strstr(info.error_desc, "the source has 1 RAM blocks, this side has 2"));
}

/* ======================= incomplete streams ======================= */

/* A stream that lost a record is refused at EOF, naming what is missing;
 * nothing is started, and the same engine then loads a whole stream. */
static void test_incomplete_missing_pages(void **state)
{
    FIXTURE;
    put_stream_omit(&w, 0, 1, OMIT_PAGES);
    expect_failure(f, &w, RAM_MAY_CHANGE, "incomplete", "RAM block 'ram0' pages 0-3",
                   "4 of 256 pages missing", NULL);
}

static void test_incomplete_missing_device(void **state)
{
    FIXTURE;
    put_stream_omit(&w, 1u, 1, OMIT_DEV);
    expect_failure(f, &w, RAM_MAY_CHANGE, "incomplete", "device 'dev0' instance 0 has no section",
                   NULL);
    put_stream_omit(&w, 0, 1, OMIT_ITER);
    expect_failure(f, &w, RAM_MAY_CHANGE, "device 'iter0' instance 0 has no section", NULL);
}

static void test_incomplete_missing_end(void **state)
{
    FIXTURE;
    put_stream_omit(&w, 0, 1, OMIT_ITER_END);
    expect_failure(f, &w, RAM_MAY_CHANGE, "incomplete", "device 'iter0' instance 0 has no END",
                   NULL);
}

static void test_incomplete_missing_globalstate(void **state)
{
    FIXTURE;
    put_stream_omit(&w, 0, 1, OMIT_GLOBALSTATE);
    expect_failure(f, &w, RAM_MAY_CHANGE, "incomplete", "no globalstate section", NULL);
}

/* A page of one block missing while the other block is whole: the error
 * names the block, the first missing range and the count. */
static void test_incomplete_two_blocks(void **state)
{
    FIXTURE;
    put_header(&w);
    put_config_ex(&w, 0, 2, two_blocks, 2);
    put_ram_start(&w);
    put_ram_hdr(&w, LM_RAM_ZERO, 0, 0, NPAGES);
    put_ram_hdr(&w, LM_RAM_ZERO, 1, 0, 5);
    put_ram_hdr(&w, LM_RAM_ZERO, 1, 7, RAM2_SIZE / PAGE - 8); /* 5, 6 and the last one lost */
    lm_wbuf_put_u8(&w, LM_RAM_EOS);
    lm_wbuf_put_be32(&w, 0);
    put_device_full(&w, DEV_ID, 1);
    put_iter_and_globalstate(&w);
    lm_wbuf_put_u8(&w, LM_REC_EOF);
    check_failure(f, &w, RAM_MAY_CHANGE, "RAM block 'ram1' pages 5-6", "3 of 16 pages missing",
                  NULL);
    lm_wbuf_free(&w);
}

/* ======================= checksums ======================= */

#define CONFIG_CHECKSUM 4u /* CONFIG flag bit 2 (§4d) */

/* A PAGES (data != NULL, count pages of it) or ZERO record with
 * checksums: the header, each page's xxh3 (seeded with its index), one
 * over header and table; `flip` (>= 0) changes that byte of the data
 * after the checksums were taken. */
static void put_ram_csum(lm_wbuf *w, uint8_t type, uint16_t block, uint64_t first, uint32_t count,
                         const uint8_t *data, long flip)
{
    uint8_t hdr[15 + 8 * 8];
    hdr[0] = type;
    lm_store_be16(hdr + 1, block);
    lm_store_be64(hdr + 3, first);
    lm_store_be32(hdr + 11, count);
    size_t len = data ? (size_t)count * PAGE : 0;
    size_t n = data ? count : 0;
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        lm_store_be64(hdr + 15 + i * 8, lm_csum_page(data + i * PAGE, PAGE, first + i));
    }
    lm_wbuf_put(w, hdr, 15 + n * 8);
    lm_wbuf_put_be64(w, lm_csum(hdr, 15 + n * 8, 0));
    if (len) {
        uint8_t *p = lm_wbuf_reserve(w, len);
        assert_non_null(p);
        memcpy(p, data, len);
        if (flip >= 0) {
            p[flip] ^= 0x01;
        }
    }
}

enum { CS_CLEAN, CS_FLIP_DATA, CS_FLIP_THEN_RESEND, CS_BAD_ZERO, CS_VERSION1 };

/* The valid stream with checksums (version 2, CONFIG bit 2); `how` breaks
 * it (or not) as named. */
static void put_csum_stream(lm_wbuf *w, int seed, int how)
{
    static uint8_t data[4 * PAGE];
    for (uint64_t p = 0; p < 4; p++) {
        for (size_t i = 0; i < PAGE; i++) {
            data[p * PAGE + i] = pattern(seed, p, i);
        }
    }
    lm_wbuf_put_be32(w, LM_STREAM_MAGIC);
    lm_wbuf_put_be32(w, how == CS_VERSION1 ? 1 : 2);
    put_config(w, CONFIG_CHECKSUM);
    put_ram_start(w);
    lm_wbuf_put_u8(w, LM_RAM_EOS);
    lm_wbuf_put_be32(w, 0);
    put_section_short(w, LM_REC_SECTION_PART, 0);
    /* Page 2, byte 100 of the data flipped: "bit rot". */
    bool flip = how == CS_FLIP_DATA || how == CS_FLIP_THEN_RESEND;
    put_ram_csum(w, LM_RAM_PAGES, 0, 0, 4, data, flip ? (long)(2 * PAGE + 100) : -1L);
    lm_wbuf_put_u8(w, LM_RAM_EOS);
    lm_wbuf_put_be32(w, 0);
    put_section_short(w, LM_REC_SECTION_END, 0);
    if (how == CS_FLIP_THEN_RESEND) {
        /* A live source sends a page again when it changed while it was
         * read: the later, matching record settles it. */
        put_ram_csum(w, LM_RAM_PAGES, 0, 2, 1, data + 2 * PAGE, -1);
    }
    size_t zero_at = w->len;
    put_ram_csum(w, LM_RAM_ZERO, 0, 4, NPAGES - 4, NULL, -1);
    if (how == CS_BAD_ZERO) {
        w->data[zero_at + 15] ^= 0x80; /* the header's checksum */
    }
    lm_wbuf_put_u8(w, LM_RAM_EOS);
    lm_wbuf_put_be32(w, 0);
    put_device_full(w, DEV_ID, seed);
    put_iter_and_globalstate(w);
    lm_wbuf_put_u8(w, LM_REC_EOF);
    assert_int_equal(w->error, 0);
}

static void test_checksum_clean_and_resent(void **state)
{
    FIXTURE;
    for (int how = CS_CLEAN; how <= CS_FLIP_THEN_RESEND; how += CS_FLIP_THEN_RESEND) {
        put_csum_stream(&w, 7, how);
        lm_info info = LM_INFO_INIT;
        run_stream(f, w.data, w.len, &info, NULL, NULL);
        lm_wbuf_free(&w);
        lm_wbuf_init(&w);
        if (info.status != LM_STATUS_COMPLETED) {
            fail_msg("checksummed stream (%d) ended in '%s': %s", how, lm_status_name(info.status),
                     info.error_desc);
        }
        for (uint64_t p = 0; p < 4; p++) {
            for (size_t i = 0; i < PAGE; i++) {
                assert_int_equal(f->ram[p * PAGE + i], pattern(7, p, i));
            }
        }
    }
}

static void test_checksum_mismatch(void **state)
{
    FIXTURE;
    put_csum_stream(&w, 1, CS_FLIP_DATA);
    expect_failure(f, &w, RAM_MAY_CHANGE, "checksum mismatch", "RAM block 'ram0' pages 2-2",
                   "(1 pages in all)", "corrupt", NULL);
    /* A header's checksum fails at once: it never came from guest memory. */
    put_csum_stream(&w, 1, CS_BAD_ZERO);
    char range[64];
    snprintf(range, sizeof(range), "block 'ram0' pages 4-%u", NPAGES - 1);
    expect_failure(f, &w, RAM_MAY_CHANGE, "checksum mismatch: the header", range, NULL);
    /* The flag in a version 1 stream: refused (an old reader would have
     * misread the longer records). */
    put_csum_stream(&w, 1, CS_VERSION1);
    expect_failure(f, &w, RAM_UNTOUCHED, "version 1 stream cannot carry checksums", NULL);
}

/* ======================= stalled streams ======================= */

/* Waits up to ms for the migration to end; returns its status. */
static lm_status wait_end(fixture *f, int ms, lm_info *info)
{
    for (int t = 0; t < ms; t += 2) {
        lm_engine_query(f->e, info);
        if (is_end(info->status)) {
            return info->status;
        }
        usleep(2000);
    }
    return info->status;
}

/* A source that stops sending mid-stream: lm_engine_cancel must end the
 * incoming migration, which then can be retried.  wfd is the writing end
 * of the stream handed to the engine as "fd:<rfd>". */
static void cancel_stalled(fixture *f, int rfd, int wfd)
{
    char uri[32];
    snprintf(uri, sizeof(uri), "fd:%d", rfd);
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_engine_incoming(f->e, uri, &err), 0);
    lm_wbuf w;
    lm_wbuf_init(&w);
    put_ram_prefix(&w);
    put_ram_hdr(&w, LM_RAM_ZERO, 0, 0, 1);
    assert_int_equal(write(wfd, w.data, w.len), (ssize_t)w.len);
    lm_wbuf_free(&w);
    lm_info info = LM_INFO_INIT;
    usleep(100000);
    lm_engine_query(f->e, &info);
    assert_int_equal(info.status, LM_STATUS_ACTIVE);
    assert_true(lm_engine_is_incoming(f->e));
    assert_int_equal(lm_engine_cancel(f->e, &err), 0);
    lm_status st = wait_end(f, 5000, &info);
    if (!is_end(st)) {
        /* Unblock the load thread so the test can end, then fail. */
        close(wfd);
        wait_end(f, 5000, &info);
        fail_msg("lm_engine_cancel did not stop an incoming migration blocked reading "
                 "'%s' (still '%s' 5 s later)", uri, lm_status_name(st));
    }
    close(wfd);
    printf("#   cancelled: %s: %s\n", lm_status_name(st), info.error_desc);
    assert_true(st == LM_STATUS_FAILED || st == LM_STATUS_CANCELLED);
    assert_non_null(strstr(info.error_desc, "cancel"));
    assert_int_equal(f->vm_start_calls, 0);
    assert_false(lm_engine_is_incoming(f->e));
    expect_valid(f, 0);
}

static void test_cancel_stalled_incoming_socket(void **state)
{
    fixture *f = *state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cancel_stalled(f, sv[0], sv[1]);
}

/* fd: may be a pipe (transport.h: "fd:N  an already open descriptor N (a
 * socket, pipe or file)"); cancel must work there too. */
static void test_cancel_stalled_incoming_pipe(void **state)
{
    fixture *f = *state;
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    cancel_stalled(f, p[0], p[1]);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
#define T2(fn) cmocka_unit_test_setup_teardown(fn, fx_setup2, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_valid_stream),
        T(test_valid_stream_return_path),
        T(test_valid_stream_edges),
        T(test_bad_magic),
        T(test_bad_version),
        T(test_empty_stream),
        T(test_truncated_header),
        T(test_stream_ends_early),
        T(test_config_unknown_block),
        T(test_config_block_size_mismatch),
        T(test_config_page_size_mismatch),
        T(test_config_wrong_block_count),
        T(test_config_huge_length),
        T(test_config_truncated),
        T(test_config_trailing_bytes),
        T(test_config_duplicate),
        T(test_config_uuid_mismatch),
        T(test_section_before_config),
        T(test_section_footer_mismatch),
        T(test_unknown_record_type),
        T(test_section_id_out_of_range),
        T(test_part_before_start),
        T(test_ram_section_bad_version),
        T(test_section_header_truncated),
        T(test_ram_page_index_out_of_range),
        T(test_ram_count_overflow),
        T(test_ram_block_index_out_of_range),
        T(test_ram_unknown_record_type),
        T(test_multifd_records),
        T(test_mapped_ram_records),
        T(test_ram_truncated_page_data),
        T(test_retry_after_partial_page_write),
        T(test_unknown_device),
        T(test_device_payload_over_limit),
        T(test_device_payload_truncated),
        T(test_device_version_too_new),
        T(test_vmdesc_too_long),
        T(test_failure_reports_on_return_path),
        T(test_many_failures_then_success),
#ifdef LM_GLOBALSTATE_IDSTR
        T(test_globalstate),
#endif
        T(test_iterative_device_valid),
        T(test_iterative_device_errors),
        T2(test_two_blocks_source_order),
        T2(test_two_blocks_errors),
        T(test_incomplete_missing_pages),
        T(test_incomplete_missing_device),
        T(test_incomplete_missing_end),
        T(test_incomplete_missing_globalstate),
        T2(test_incomplete_two_blocks),
        T(test_checksum_clean_and_resent),
        T(test_checksum_mismatch),
        T(test_cancel_stalled_incoming_socket),
        T(test_cancel_stalled_incoming_pipe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
