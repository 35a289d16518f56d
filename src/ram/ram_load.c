#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/bitmap.h"
#include "livemig/buffer.h"
#include "ram/filedest.h"
#include "ram/ram_load.h"
#include "ram/zero.h"
#include "stream/checksum.h"
#include "stream/format.h"

int lm_ram_load_setup(lm_ram_loader *l, lm_ram_block **blocks, size_t nblocks, lm_error *err)
{
    memset(l, 0, sizeof(*l));
    l->blocks = blocks;
    l->nblocks = nblocks;
    for (size_t i = 0; i < nblocks; i++) {
        int ret = lm_ram_block_prepare_dest(blocks[i], err);
        if (ret < 0) {
            return ret;
        }
        blocks[i]->dest_fresh = lm_ram_block_is_private(blocks[i]) && !blocks[i]->dest_used;
        lm_filedest_setup(blocks[i]);
    }
    return 0;
}

void lm_ram_load_cleanup(lm_ram_loader *l)
{
    for (size_t i = 0; i < l->nblocks; i++) {
        lm_ram_block_release_bitmaps(l->blocks[i]);
    }
    free(l->scratch);
    l->scratch = NULL;
}

int lm_ram_load_check_complete(const lm_ram_loader *l, lm_error *err)
{
    for (size_t i = 0; i < l->nblocks; i++) {
        const lm_ram_block *b = l->blocks[i];
        uint64_t p = lm_bitmap_next_clear(b->received, b->npages, 0);
        if (p >= b->npages) {
            continue;
        }
        uint64_t q = lm_bitmap_next_set(b->received, b->npages, p);
        uint64_t missing = b->npages - lm_bitmap_count(b->received, b->npages);
        return lm_error_set(err, -EBADMSG,
                            "the stream is incomplete: RAM block '%s' pages %" PRIu64 "-%" PRIu64
                            " never arrived (%" PRIu64 " of %" PRIu64 " pages missing)",
                            b->name, p, q - 1, missing, b->npages);
    }
    for (size_t i = 0; i < l->nblocks; i++) {
        const lm_ram_block *b = l->blocks[i];
        uint64_t p = lm_bitmap_next_set(b->csum_bad, b->npages, 0);
        if (p >= b->npages) {
            continue;
        }
        uint64_t q = lm_bitmap_next_clear(b->csum_bad, b->npages, p);
        return lm_error_set(err, -EBADMSG,
                            "checksum mismatch: RAM block '%s' pages %" PRIu64 "-%" PRIu64
                            " do not match their checksum (%" PRIu64 " pages in all): the stream "
                            "is corrupt", b->name, p, q - 1, lm_bitmap_count(b->csum_bad, b->npages));
    }
    return 0;
}

void lm_ram_load_csum_result(lm_ram_block *b, uint64_t first, uint32_t count, bool ok)
{
    if (ok) {
        lm_bitmap_clear_range_atomic(b->csum_bad, first, count);
    } else {
        lm_bitmap_set_range_atomic(b->csum_bad, first, count);
    }
}

int lm_ram_load_check_range(lm_ram_block **blocks, size_t nblocks, uint16_t bi, uint64_t first,
                            uint32_t count, lm_ram_block **out, lm_error *err)
{
    if (bi >= nblocks) {
        return lm_error_set(err, -EBADMSG, "RAM record names block %u, but only %zu blocks exist",
                            bi, nblocks);
    }
    lm_ram_block *b = blocks[bi];
    if (count == 0 || first >= b->npages || count > b->npages - first) {
        return lm_error_set(err, -EBADMSG,
                            "RAM record for block '%s': pages %" PRIu64 "+%u out of range (block has %" PRIu64
                            " pages)",
                            b->name, first, count, b->npages);
    }
    *out = b;
    return 0;
}

/* A zero run: pages this load never wrote in a private block are still the
 * fresh mapping's zeros, so nothing is touched; a file-backed block gets
 * holes (its mapping is never read: reading a hole of a shared mapping
 * would allocate it); others are cleared where they are not zero. */
void lm_ram_load_zero(lm_ram_block *b, uint64_t first, uint32_t count)
{
    if (lm_filedest_on(b) && lm_filedest_zero(b, first, count) == 0) {
        lm_ram_load_mark(b, first, count);
        return;
    }
    bool fresh = b->dest_fresh;
    for (uint64_t p = first; p < first + count; p++) {
        if (fresh && !lm_bitmap_test(b->received, p)) {
            continue;
        }
        void *host = lm_ram_block_page(b, p);
        if (!lm_buffer_is_zero(host, b->page_size)) {
            memset(host, 0, b->page_size);
        }
    }
    lm_ram_load_mark(b, first, count);
}

uint8_t *lm_ram_load_scratch_new(void)
{
    return malloc(LM_FILEDEST_SCRATCH);
}

/* Judges each page of data[] (pages first..) against its be64 checksum. */
static void judge_pages(lm_ram_block *b, uint64_t first, uint32_t count, const uint8_t *data,
                        const uint8_t *sums)
{
    for (uint32_t i = 0; i < count; i++) {
        uint64_t sum = lm_csum_page(data + ((size_t)i << b->page_shift), b->page_size, first + i);
        lm_ram_load_csum_result(b, first + i, 1, sum == lm_load_be64(sums + (size_t)i * 8));
    }
}

int lm_ram_load_data(lm_ram_block *b, uint64_t first, uint32_t count, lm_channel *ch,
                     uint8_t *scratch, const uint8_t *sums, lm_error *err)
{
    if (!lm_filedest_on(b)) {
        /* Bulk read straight into guest memory. */
        void *host = lm_ram_load_data_begin(b, first);
        if (lm_channel_get(ch, host, (size_t)count << b->page_shift) < 0) {
            return lm_channel_error(ch, err);
        }
        lm_ram_load_mark(b, first, count);
        if (sums) {
            /* Each page read back at once, while it is still in the cache. */
            judge_pages(b, first, count, host, sums);
        }
        return 0;
    }
    /* Through the scratch buffer into the file: the page cache takes the
     * bytes, the mapping is never faulted. */
    __atomic_store_n(&b->dest_used, true, __ATOMIC_RELAXED);
    uint32_t per = LM_FILEDEST_SCRATCH >> b->page_shift;
    for (uint32_t done = 0; done < count;) {
        uint32_t n = count - done < per ? count - done : per;
        size_t len = (size_t)n << b->page_shift;
        if (lm_channel_get(ch, scratch, len) < 0) {
            return lm_channel_error(ch, err);
        }
        int ret = lm_filedest_write_pages(b, first + done, scratch, n);
        if (ret < 0) {
            return lm_error_set_errno(err, ret, "cannot write pages %" PRIu64 "-%" PRIu64
                                      " of RAM block '%s' into its backing file",
                                      first + done, first + done + n - 1, b->name);
        }
        lm_ram_load_mark(b, first + done, n);
        if (sums) {
            judge_pages(b, first + done, n, scratch, sums + (size_t)done * 8);
        }
        done += n;
    }
    return 0;
}

void *lm_ram_load_data_begin(lm_ram_block *b, uint64_t first)
{
    /* From here the block holds bytes of this load, even if the read stops
     * half way: a retry must not take its pages for zero. */
    __atomic_store_n(&b->dest_used, true, __ATOMIC_RELAXED);
    return lm_ram_block_page(b, first);
}

void lm_ram_load_mark(lm_ram_block *b, uint64_t first, uint32_t count)
{
    /* Atomic: multifd receivers place pages of the same bitmap word. */
    lm_bitmap_set_range_atomic(b->received, first, count);
    __atomic_store_n(&b->dest_used, true, __ATOMIC_RELAXED);
}

/* Checksums: after a record's 15 header bytes in hdr, its page table
 * (PAGES) and the checksum over header and table.  Both were made by the
 * source, not read from guest memory: a mismatch fails at once. */
static int read_csum_header(lm_channel *ch, uint8_t *hdr, const lm_ram_block *b, lm_error *err)
{
    uint32_t count = lm_load_be32(hdr + 11);
    uint64_t first = lm_load_be64(hdr + 3);
    size_t n = hdr[0] == LM_RAM_PAGES ? count : 0;
    if (n > LM_CSUM_MAX_PAGES) {
        return lm_error_set(err, -EBADMSG, "a PAGES record of %u pages with checksums (at most %u)",
                            count, LM_CSUM_MAX_PAGES);
    }
    if (lm_channel_get(ch, hdr + 15, n * 8 + 8) < 0) {
        return lm_channel_error(ch, err);
    }
    if (lm_csum(hdr, 15 + n * 8, 0) != lm_load_be64(hdr + 15 + n * 8)) {
        return lm_error_set(err, -EBADMSG, "checksum mismatch: the header of a RAM record for "
                            "block '%s' pages %" PRIu64 "-%" PRIu64 ": the stream is corrupt",
                            b->name, first, first + count - 1);
    }
    return 0;
}

int lm_ram_load_section(lm_ram_loader *l, lm_channel *ch, lm_error *err)
{
    for (;;) {
        uint8_t type;
        int ret = lm_channel_get_u8(ch, &type);
        if (ret < 0) {
            return lm_channel_error(ch, err);
        }
        if (type == LM_RAM_EOS) {
            return 0;
        }
        if (type == LM_RAM_MULTIFD_SYNC) {
            uint64_t seq;
            if (lm_channel_get_be64(ch, &seq) < 0) {
                return lm_channel_error(ch, err);
            }
            if (!l->multifd_sync) {
                return lm_error_set(err, -EBADMSG, "MULTIFD_SYNC record without multifd");
            }
            ret = l->multifd_sync(l->multifd_opaque, seq, err);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        if (type == LM_RAM_MAPPED_BLOCK) {
            if (!l->mapped_block) {
                return lm_error_set(err, -EBADMSG, "MAPPED_BLOCK record without mapped-ram");
            }
            ret = l->mapped_block(l->mapped_opaque, ch, err);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        if (type != LM_RAM_PAGES && type != LM_RAM_ZERO) {
            return lm_error_set(err, -EBADMSG, "unknown RAM record type 0x%02x", type);
        }
        /* The record's type and header, then (checksums) its pages'
         * checksums and one over all of that. */
        uint8_t hdr[15 + LM_CSUM_MAX_PAGES * 8 + 8];
        hdr[0] = type;
        if (lm_channel_get(ch, hdr + 1, 14) < 0) {
            return lm_channel_error(ch, err);
        }
        uint16_t bi = lm_load_be16(hdr + 1);
        uint64_t first = lm_load_be64(hdr + 3);
        uint32_t count = lm_load_be32(hdr + 11);
        lm_ram_block *b = NULL;
        ret = lm_ram_load_check_range(l->blocks, l->nblocks, bi, first, count, &b, err);
        if (ret < 0) {
            return ret;
        }
        if (l->place && l->checksum) {
            return lm_error_set(err, -EBADMSG, "postcopy with checksums is not supported");
        }
        if (l->checksum) {
            ret = read_csum_header(ch, hdr, b, err);
            if (ret < 0) {
                return ret;
            }
        }
        if (l->place) {
            ret = l->place(l->place_opaque, type, b, first, count, ch, err);
            if (ret < 0) {
                return ret;
            }
        } else if (type == LM_RAM_ZERO) {
            lm_ram_load_zero(b, first, count);
        } else {
            if (!l->scratch && lm_filedest_on(b) && !(l->scratch = lm_ram_load_scratch_new())) {
                return lm_error_set(err, -ENOMEM, "out of memory");
            }
            ret = lm_ram_load_data(b, first, count, ch, l->scratch,
                                   l->checksum ? hdr + 15 : NULL, err);
            if (ret < 0) {
                return ret;
            }
        }
        if (l->checksum && type == LM_RAM_ZERO) {
            lm_ram_load_csum_result(b, first, count, true);
        }
        if (type == LM_RAM_ZERO) {
            l->zero_pages += count;
        } else {
            l->pages_loaded += count;
        }
    }
}
