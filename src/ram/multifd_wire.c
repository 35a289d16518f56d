#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <zstd.h>

#include "livemig/buffer.h"
#include "ram/multifd_wire.h"
#include "ram/ram_load.h"

void lm_multifd_hello_encode(const lm_multifd_hello *h, uint8_t out[LM_MULTIFD_HELLO_LEN])
{
    lm_store_be32(out, LM_MULTIFD_MAGIC);
    lm_store_be32(out + 4, LM_MULTIFD_VERSION);
    lm_store_be16(out + 8, h->index);
    lm_store_be16(out + 10, h->channels);
    memcpy(out + 12, h->id, LM_MULTIFD_ID_LEN);
}

int lm_multifd_hello_parse(const uint8_t in[LM_MULTIFD_HELLO_LEN], uint16_t channels,
                           const uint8_t id[LM_MULTIFD_ID_LEN], lm_multifd_hello *out,
                           lm_error *err)
{
    uint32_t magic = lm_load_be32(in), version = lm_load_be32(in + 4);
    if (magic != LM_MULTIFD_MAGIC) {
        return lm_error_set(err, -EBADMSG, "not a multifd connection (magic 0x%08x)%s", magic,
                            magic == LM_PREEMPT_MAGIC ? ": a postcopy preempt connection came first" : "");
    }
    if (version != LM_MULTIFD_VERSION) {
        return lm_error_set(err, -EBADMSG, "unsupported multifd version %u", version);
    }
    out->index = lm_load_be16(in + 8);
    out->channels = lm_load_be16(in + 10);
    memcpy(out->id, in + 12, LM_MULTIFD_ID_LEN);
    if (out->channels != channels || out->index >= channels) {
        return lm_error_set(err, -EBADMSG, "multifd connection %u of %u, but %u were announced",
                            out->index, out->channels, channels);
    }
    if (memcmp(out->id, id, LM_MULTIFD_ID_LEN)) {
        return lm_error_set(err, -EBADMSG, "multifd connection %u belongs to another migration",
                            out->index);
    }
    return 0;
}

void lm_multifd_setup_encode(const lm_multifd_setup *s, uint8_t out[LM_MULTIFD_SETUP_LEN])
{
    lm_store_be16(out, s->channels);
    out[2] = s->compression;
    out[3] = s->flags;
    memcpy(out + 4, s->id, LM_MULTIFD_ID_LEN);
}

int lm_multifd_setup_parse(const uint8_t *in, size_t len, lm_multifd_setup *out, lm_error *err)
{
    if (len != LM_MULTIFD_SETUP_LEN) {
        return lm_error_set(err, -EBADMSG, "malformed MULTIFD_SETUP (%zu bytes)", len);
    }
    out->channels = lm_load_be16(in);
    out->compression = in[2];
    out->flags = in[3];
    memcpy(out->id, in + 4, LM_MULTIFD_ID_LEN);
    if (out->channels == 0 || out->channels > LM_MULTIFD_MAX_CHANNELS) {
        return lm_error_set(err, -EBADMSG, "MULTIFD_SETUP: %u channels (1..%u)", out->channels,
                            LM_MULTIFD_MAX_CHANNELS);
    }
    if (out->compression > LM_MULTIFD_COMP_ZSTD) {
        return lm_error_set(err, -EBADMSG, "MULTIFD_SETUP: unknown compression %u", out->compression);
    }
    if (out->flags & ~LM_MULTIFD_SETUP_CHECKSUM) {
        return lm_error_set(err, -EBADMSG, "MULTIFD_SETUP: unknown flags 0x%02x", out->flags);
    }
    return 0;
}

void lm_multifd_data_hdr_encode(const lm_multifd_data_hdr *h, uint8_t out[LM_MULTIFD_DATA_HDR_LEN])
{
    lm_store_be32(out, h->flags);
    lm_store_be16(out + 4, h->nruns);
    lm_store_be32(out + 6, h->payload_len);
    out[10] = 0;
}

int lm_multifd_data_hdr_parse(const uint8_t in[LM_MULTIFD_DATA_HDR_LEN], uint8_t compression,
                              lm_multifd_data_hdr *out, lm_error *err)
{
    out->flags = lm_load_be32(in);
    out->nruns = lm_load_be16(in + 4);
    out->payload_len = lm_load_be32(in + 6);
    uint32_t want = compression == LM_MULTIFD_COMP_ZSTD ? LM_MULTIFD_FLAG_ZSTD : 0;
    if ((out->flags & ~LM_MULTIFD_FLAG_CSUM) != want || in[10]) {
        return lm_error_set(err, -EBADMSG, "multifd packet flags 0x%x (expected 0x%x)", out->flags,
                            want);
    }
    if (out->nruns == 0 || out->nruns > LM_MULTIFD_MAX_RUNS) {
        return lm_error_set(err, -EBADMSG, "multifd packet with %u runs (1..%u)", out->nruns,
                            LM_MULTIFD_MAX_RUNS);
    }
    return 0;
}

void lm_multifd_run_encode(uint8_t out[LM_MULTIFD_RUN_LEN], uint8_t kind, uint16_t block,
                           uint64_t first, uint32_t count)
{
    out[0] = kind;
    lm_store_be16(out + 1, block);
    lm_store_be64(out + 3, first);
    lm_store_be32(out + 11, count);
}

int lm_multifd_runs_parse(const uint8_t *table, const lm_multifd_data_hdr *h,
                          lm_ram_block **blocks, size_t nblocks, lm_multifd_run *runs,
                          uint64_t *data_len, lm_error *err)
{
    uint64_t data = 0;
    for (uint16_t i = 0; i < h->nruns; i++) {
        const uint8_t *r = table + (size_t)i * LM_MULTIFD_RUN_LEN;
        lm_multifd_run *run = &runs[i];
        run->kind = r[0];
        if (run->kind != LM_RAM_PAGES && run->kind != LM_RAM_ZERO) {
            return lm_error_set(err, -EBADMSG, "multifd run %u: unknown kind 0x%02x", i, run->kind);
        }
        run->first = lm_load_be64(r + 3);
        run->count = lm_load_be32(r + 11);
        int ret = lm_ram_load_check_range(blocks, nblocks, lm_load_be16(r + 1), run->first,
                                          run->count, &run->blk, err);
        if (ret < 0) {
            return ret;
        }
        if (run->kind == LM_RAM_PAGES) {
            /* count <= pages in the block, so this cannot overflow before the check. */
            data += (uint64_t)run->count << run->blk->page_shift;
            if (data > LM_MULTIFD_MAX_PAYLOAD) {
                return lm_error_set(err, -EBADMSG, "multifd packet carries more than %u bytes",
                                    LM_MULTIFD_MAX_PAYLOAD);
            }
        }
    }
    if (h->flags & LM_MULTIFD_FLAG_ZSTD) {
        if (h->payload_len == 0 ? data != 0 : h->payload_len > ZSTD_compressBound((size_t)data)) {
            return lm_error_set(err, -EBADMSG, "multifd packet: %u compressed bytes for %" PRIu64
                                " bytes of pages", h->payload_len, data);
        }
    } else if (h->payload_len != data) {
        return lm_error_set(err, -EBADMSG, "multifd packet: payload of %u bytes for %" PRIu64
                            " bytes of pages", h->payload_len, data);
    }
    *data_len = data;
    return 0;
}
