/*
 * The fuzzers' machine: guarded RAM blocks, a vmstate device and an
 * iterative device (see fuzz_machine.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fuzz_machine.h"

static const lm_field dev_fields[] = {
    LM_FIELD_SCALAR(fm_dev, u8, LM_FIELD_U8),
    LM_FIELD_SCALAR(fm_dev, u16, LM_FIELD_U16),
    LM_FIELD_SCALAR(fm_dev, u32, LM_FIELD_U32),
    LM_FIELD_SCALAR(fm_dev, u64, LM_FIELD_U64),
    LM_FIELD_SCALAR(fm_dev, i64, LM_FIELD_I64),
    LM_FIELD_SCALAR(fm_dev, flag, LM_FIELD_BOOL),
    LM_FIELD_ARRAY(fm_dev, bytes, LM_FIELD_BYTES, 16),
    LM_FIELD_ARRAY(fm_dev, regs, LM_FIELD_U32, 4),
    { "v2_only", offsetof(fm_dev, v2_only), LM_FIELD_U64, 1, 2 },
};

/* Reads every loaded field, so a value the loader should not have let
 * through (a bool that is neither 0 nor 1) shows under UBSan. */
static int dev_post_load(void *opaque, uint32_t version, lm_error *err)
{
    const fm_dev *d = opaque;
    volatile uint64_t sum = d->u8 + d->u16 + d->u32 + d->u64 + (uint64_t)d->i64 + d->v2_only;
    sum += d->flag ? 1 : 0;
    (void)sum;
    if (version < 1 || version > 2) {
        return lm_error_set(err, -EINVAL, "dev0: post_load got version %u", version);
    }
    return 0;
}

static const lm_vmstate dev_vms = {
    .name = "fuzzdev", .version = 2, .min_version = 1,
    .fields = dev_fields, .nfields = sizeof(dev_fields) / sizeof(dev_fields[0]),
    .post_load = dev_post_load,
};

/* ---- iter0: chunks of (be16 offset, be16 length, bytes) ---- */

static void iter_put_chunk(fm_iter *it, lm_wbuf *out, uint32_t len)
{
    lm_wbuf_put_be16(out, (uint16_t)it->sent);
    lm_wbuf_put_be16(out, (uint16_t)len);
    lm_wbuf_put(out, it->data + it->sent, len);
    it->sent += len;
}

static int iter_save_setup(void *opaque, lm_wbuf *out, lm_error *err)
{
    fuzz_machine *m = opaque;
    m->iter.sent = 0;
    iter_put_chunk(&m->iter, out, 16);
    return 0;
}

static int iter_save_iterate(void *opaque, lm_wbuf *out, uint64_t budget, lm_error *err)
{
    fm_iter *it = &((fuzz_machine *)opaque)->iter;
    if (it->sent < FM_ITER_SIZE - FM_ITER_CHUNK) {
        iter_put_chunk(it, out, FM_ITER_CHUNK);
    }
    return it->sent >= FM_ITER_SIZE - FM_ITER_CHUNK ? 1 : 0;
}

static int iter_save_complete(void *opaque, lm_wbuf *out, lm_error *err)
{
    fm_iter *it = &((fuzz_machine *)opaque)->iter;
    if (it->sent < FM_ITER_SIZE) {
        iter_put_chunk(it, out, FM_ITER_SIZE - it->sent);
    }
    return 0;
}

static void iter_query_pending(void *opaque, bool exact, lm_pending *out)
{
    const fm_iter *it = &((const fuzz_machine *)opaque)->iter;
    uint64_t left = FM_ITER_SIZE - it->sent;
    out->precopy_bytes = left > FM_ITER_CHUNK ? left - FM_ITER_CHUNK : 0;
    out->stopcopy_bytes = left < FM_ITER_CHUNK ? left : FM_ITER_CHUNK;
}

static int iter_load(void *opaque, lm_rbuf *in, uint32_t version, lm_error *err)
{
    fm_iter *it = &((fuzz_machine *)opaque)->iter;
    uint16_t off, len;
    if (lm_rbuf_get_be16(in, &off) < 0 || lm_rbuf_get_be16(in, &len) < 0) {
        return lm_error_set(err, -EBADMSG, "iter0: short chunk header");
    }
    if ((uint32_t)off + len > FM_ITER_SIZE || lm_rbuf_remaining(in) != len) {
        return lm_error_set(err, -EBADMSG, "iter0: chunk %u+%u does not fit", off, len);
    }
    it->loads++;
    return lm_rbuf_get(in, it->data + off, len);
}

static const lm_iter_ops iter_ops = {
    .save_setup = iter_save_setup, .save_iterate = iter_save_iterate,
    .save_complete = iter_save_complete, .query_pending = iter_query_pending,
    .load = iter_load,
};

/* ---- the machine ---- */

static void cb_nop(void *opaque)
{
}

static bool cb_is_running(void *opaque)
{
    return ((fuzz_machine *)opaque)->running;
}

const lm_callbacks fm_callbacks = {
    .vm_stop = cb_nop, .vm_start = cb_nop, .vm_is_running = cb_is_running,
};

static const uint32_t ram_size[2] = { FM_RAM0_SIZE, FM_RAM1_SIZE };

fuzz_machine *fm_new(void)
{
    fuzz_machine *m = calloc(1, sizeof(*m));
    if (!m) {
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        m->map_len[i] = ram_size[i] + 2 * FM_PAGE;
        m->map[i] = mmap(NULL, m->map_len[i], PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m->map[i] == MAP_FAILED) {
            m->map[i] = NULL;
            fm_free(m);
            return NULL;
        }
        m->ram[i] = m->map[i] + FM_PAGE;
        if (mprotect(m->ram[i], ram_size[i], PROT_READ | PROT_WRITE) < 0) {
            fm_free(m);
            return NULL;
        }
    }
    fm_reset(m);
    return m;
}

void fm_free(fuzz_machine *m)
{
    if (!m) {
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (m->map[i]) {
            munmap(m->map[i], m->map_len[i]);
        }
    }
    free(m);
}

void fm_reset(fuzz_machine *m)
{
    for (int i = 0; i < 2; i++) {
        memset(m->ram[i], 0, ram_size[i]);
        m->block[i] = NULL;
    }
    memset(&m->dev, 0, sizeof(m->dev));
    memset(&m->iter, 0, sizeof(m->iter));
    m->dev.canary_lo = m->dev.canary_hi = FM_CANARY;
    m->iter.canary_lo = m->iter.canary_hi = FM_CANARY;
    m->running = false;
}

void fm_fill_devices(fuzz_machine *m, unsigned seed)
{
    fm_dev *d = &m->dev;
    d->u8 = (uint8_t)(0x11 + seed);
    d->u16 = (uint16_t)(0x2233 + seed);
    d->u32 = 0x44556677u + seed;
    d->u64 = 0x8899aabbccddeeffull + seed;
    d->i64 = -(int64_t)seed - 12345;
    d->flag = seed & 1;
    for (unsigned i = 0; i < sizeof(d->bytes); i++) {
        d->bytes[i] = (uint8_t)('a' + i + seed);
    }
    for (unsigned i = 0; i < 4; i++) {
        d->regs[i] = 0x1000u * (i + 1) + seed;
    }
    d->v2_only = 0xfeedull + seed;
    for (unsigned i = 0; i < FM_ITER_SIZE; i++) {
        m->iter.data[i] = (uint8_t)(i * 7 + seed);
    }
}

int fm_register(fuzz_machine *m, lm_engine *e, lm_error *err)
{
    static const char *const names[2] = { "ram0", "ram1" };
    for (int i = 0; i < 2; i++) {
        lm_ram_desc d = { .name = names[i], .host = m->ram[i], .size = ram_size[i],
                          .page_size = FM_PAGE };
        int ret = lm_engine_add_ram(e, &d, &m->block[i], err);
        if (ret < 0) {
            return ret;
        }
    }
    int ret = lm_engine_add_device(e, "dev0", 0, &dev_vms, &m->dev, err);
    if (ret < 0) {
        return ret;
    }
    return lm_engine_add_iterative(e, "iter0", 0, 1, &iter_ops, m, err);
}

void fm_check(const fuzz_machine *m)
{
    const char *what = NULL;
    if (m->dev.canary_lo != FM_CANARY || m->dev.canary_hi != FM_CANARY) {
        what = "dev0's state struct canaries";
    } else if (m->iter.canary_lo != FM_CANARY || m->iter.canary_hi != FM_CANARY) {
        what = "iter0's buffer canaries";
    } else if (m->iter.sent != 0) {
        what = "iter0's bookkeeping";
    }
    if (what) {
        fprintf(stderr, "fuzz: the load damaged %s\n", what);
        abort();
    }
}
