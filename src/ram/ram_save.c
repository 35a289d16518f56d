#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>

#include "common/bitmap.h"
#include "common/util.h"
#include "livemig/buffer.h"
#include "ram/ram_save.h"
#include "ram/zero.h"
#include "stream/checksum.h"
#include "stream/format.h"

#define REC_HDR_LEN 15          /* u8 type, be16 block, be64 first, be32 count */
#define CSUM_LEN 8              /* be64 xxh3 of the header (and page table) */
/* File-backed pages read for checksums wait here until their batch is written. */
#define BOUNCE_BYTES (BATCH_BYTES + MAX_RUN_BYTES)
/* Room for the page tables of the records of one batch (checksums). */
#define CSUM_TABLE_ROOM (((BATCH_BYTES + MAX_RUN_BYTES) / 4096 + 1) * 8)
/* The gathered pages are written once this many bytes are queued.  With
 * checksums each was hashed when queued and is read again by the write,
 * so both reads should find it in the cache; without, it keeps one writev
 * (and the rate limit's charge for it) to about a record's size. */
#define BATCH_BYTES (512u << 10)
#define BATCH_IOV 128           /* iovecs gathered before one writev */
#define MAX_RUN_BYTES (1u << 20) /* one PAGES record carries at most 1 MiB */

/* Gathers record headers and page payloads into one writev. */
struct lm_ram_batch {
    struct iovec iov[BATCH_IOV];
    /* Headers (with checksums: and page tables), back to back. */
    uint8_t hdr[BATCH_IOV * (REC_HDR_LEN + CSUM_LEN) + CSUM_TABLE_ROOM];
    size_t hoff;
    int niov;
    int nhdr;
    bool checksum;   /* records carry their xxh3 */
    size_t bytes;    /* page bytes queued */
    uint8_t *bounce; /* checksums: file-backed pages read from the file */
    size_t bounce_used;
};
typedef struct lm_ram_batch batch;

static void stat_add(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

int lm_ram_save_setup(lm_ram_saver *s, lm_ram_block **blocks, size_t nblocks,
                      enum lm_dirty_tracker_kind tracker_kind, lm_error *err)
{
    memset(s, 0, sizeof(*s));
    s->batch = calloc(1, sizeof(*s->batch));
    if (!s->batch) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    s->blocks = blocks;
    s->nblocks = nblocks;
    for (size_t i = 0; i < nblocks; i++) {
        int ret = lm_ram_block_prepare_source(blocks[i], err);
        if (ret < 0) {
            return ret;
        }
        lm_bitmap_set_range(blocks[i]->dirty, 0, blocks[i]->npages);
        s->total_bytes += blocks[i]->size;
    }
    s->dirty_bytes = s->total_bytes;

    /* Never-populated pages are sent as zero without a read; every sync
     * requeues those that turned up populated since (a write between this
     * scan and the tracker's start included).  A page in swap would look
     * unpopulated to that check, so with swap configured the hint is off. */
    struct sysinfo si;
    if (sysinfo(&si) == 0 && si.totalswap == 0) {
        s->hint_on = true;
        lm_ram_find_unpopulated(blocks, nblocks);
    }
    /* Every sender claims a page (lm_ram_save_claim) before reading it. */
    return lm_dirty_tracker_start_flags(tracker_kind, blocks, nblocks, LM_DIRTY_PROTECT_ON_SEND,
                                        &s->tracker, err);
}

int lm_ram_save_sync(lm_ram_saver *s, uint64_t *new_bytes, lm_error *err)
{
    uint64_t after = 0, newly;
    int ret = lm_dirty_tracker_sync(s->tracker, &newly, err);
    if (ret == 0) {
        ret = lm_ram_requeue_populated(s->blocks, s->nblocks, &newly, err);
    }
    if (ret < 0) {
        return ret;
    }
    for (size_t i = 0; i < s->nblocks; i++) {
        after += lm_bitmap_count(s->blocks[i]->dirty, s->blocks[i]->npages) *
                 s->blocks[i]->page_size;
    }
    if (new_bytes) {
        *new_bytes = after > s->dirty_bytes ? after - s->dirty_bytes : 0;
    }
    __atomic_store_n(&s->dirty_bytes, after, __ATOMIC_RELAXED);
    return 0;
}


static int batch_flush(batch *b, lm_channel *ch)
{
    int ret = b->niov ? lm_channel_put_ext(ch, b->iov, b->niov) : 0;
    b->niov = b->nhdr = 0;
    b->hoff = b->bytes = b->bounce_used = 0;
    return ret;
}

static int batch_record(batch *b, lm_channel *ch, uint8_t type, const lm_ram_block *blk,
                        uint64_t first, uint32_t count, void *data, size_t len)
{
    uint64_t tpages = b->checksum ? len >> blk->page_shift : 0;
    size_t hlen = REC_HDR_LEN + (b->checksum ? CSUM_LEN + tpages * CSUM_LEN : 0);
    if (b->niov + 2 > BATCH_IOV || b->nhdr + 1 > BATCH_IOV || b->hoff + hlen > sizeof(b->hdr)) {
        int ret = batch_flush(b, ch);
        if (ret < 0) {
            return ret;
        }
    }
    uint8_t *h = b->hdr + b->hoff;
    b->hoff += hlen;
    b->nhdr++;
    h[0] = type;
    lm_store_be16(h + 1, (uint16_t)blk->idx);
    lm_store_be64(h + 3, first);
    lm_store_be32(h + 11, count);
    if (b->checksum) {
        /* Each page's own checksum (a page the guest changes while it is
         * read is sent again later and settles alone), then one over the
         * header and that table: both come from here, never from guest
         * memory, so a mismatch there is corruption for sure. */
        uint8_t *t = h + REC_HDR_LEN;
        for (uint64_t i = 0; i < tpages; i++) {
            lm_store_be64(t + i * CSUM_LEN, lm_csum_page((uint8_t *)data + (i << blk->page_shift),
                                                         blk->page_size, first + i));
        }
        lm_store_be64(t + tpages * CSUM_LEN, lm_csum(h, REC_HDR_LEN + tpages * CSUM_LEN, 0));
    }
    /* Zero records are headers only: merge consecutive headers into one iovec. */
    if (b->niov && (uint8_t *)b->iov[b->niov - 1].iov_base + b->iov[b->niov - 1].iov_len == h) {
        b->iov[b->niov - 1].iov_len += hlen;
    } else {
        b->iov[b->niov++] = (struct iovec){ h, hlen };
    }
    if (len) {
        b->iov[b->niov++] = (struct iovec){ data, len };
    }
    if ((b->bytes += len) >= BATCH_BYTES) {
        return batch_flush(b, ch);
    }
    return 0;
}

/* Zero detection of anonymous RAM through process_vm_readv: the kernel
 * reads each page through its direct mapping, not this process's.  On
 * this host the first touch of a page through the process's mapping after
 * a while (THP-backed or not) costs ~2 µs, four times the cost of sending
 * it, and the page's data go out by reference (lm_channel_put_mem), so
 * nothing else here touches them: reading them for zeros was 45-70 % of
 * the source's CPU at 4 GiB (perf).  The probe reads the first
 * PROBE_BYTES of up to PROBE_PAGES pages in one call; only a page that
 * starts with zeros is read whole. */
#define PROBE_PAGES 256
#define PROBE_BYTES 64

typedef struct zero_probe {
    uint64_t first, n;  /* the pages probed */
    uint8_t zero[PROBE_PAGES];
} zero_probe;

/* process_vm_readv refused (a seccomp filter, an old kernel): read
 * through the mapping from then on.  Owned here; a stale read only costs
 * one more refused call. */
static bool probe_off;

static bool probe_read(void *dst, const void *src, size_t len)
{
    struct iovec l = { dst, len }, r = { (void *)src, len };
    return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)len;
}

/* Whether the page at src is all zero, read in PROBE_CHUNK pieces. */
#define PROBE_CHUNK 4096
static int probe_page_zero(const void *src, size_t len)
{
    uint8_t chunk[PROBE_CHUNK];
    for (size_t off = 0; off < len; off += PROBE_CHUNK) {
        size_t n = LM_MIN(len - off, (size_t)PROBE_CHUNK);
        if (!probe_read(chunk, (const uint8_t *)src + off, n)) {
            return -1;
        }
        if (!lm_buffer_is_zero(chunk, n)) {
            return 0;
        }
    }
    return 1;
}

/* Fills pr->zero[] for the pages [p, p + n); false when the kernel
 * refused the reads. */
static bool probe_fill(zero_probe *pr, const lm_ram_block *blk, uint64_t p, uint64_t n)
{
    uint8_t heads[PROBE_PAGES * PROBE_BYTES];
    struct iovec remote[PROBE_PAGES];
    n = LM_MIN(n, (uint64_t)PROBE_PAGES);
    for (uint64_t i = 0; i < n; i++) {
        remote[i] = (struct iovec){ lm_ram_block_page(blk, p + i), PROBE_BYTES };
    }
    struct iovec local = { heads, n * PROBE_BYTES };
    if (process_vm_readv(getpid(), &local, 1, remote, (unsigned long)n, 0) != (ssize_t)(n * PROBE_BYTES)) {
        return false;
    }
    for (uint64_t i = 0; i < n; i++) {
        pr->zero[i] = lm_buffer_is_zero(heads + i * PROBE_BYTES, PROBE_BYTES);
        if (pr->zero[i]) {
            int z = probe_page_zero(lm_ram_block_page(blk, p + i), blk->page_size);
            if (z < 0) {
                return false;
            }
            pr->zero[i] = z == 1;
        }
    }
    pr->first = p;
    pr->n = n;
    return true;
}

static bool page_is_zero(const lm_ram_block *blk, uint64_t page, bool read, zero_probe *pr,
                         uint64_t end)
{
    if ((!read || __atomic_load_n(&blk->hint_frozen, __ATOMIC_ACQUIRE)) &&
        lm_bitmap_test(blk->unpopulated, page)) {
        return true;
    }
    if (pr && !lm_ram_block_has_fd(blk) && !__atomic_load_n(&probe_off, __ATOMIC_RELAXED) &&
        blk->page_size >= PROBE_BYTES) {
        if (page >= pr->first && page < pr->first + pr->n) {
            return pr->zero[page - pr->first];
        }
        if (probe_fill(pr, blk, page, end - page)) {
            return pr->zero[0];
        }
        __atomic_store_n(&probe_off, true, __ATOMIC_RELAXED);
        pr->n = 0;
    }
    return lm_buffer_is_zero(lm_ram_block_page(blk, page), blk->page_size);
}

void lm_ram_save_count(lm_ram_saver *s, uint8_t type, const lm_ram_block *blk, uint64_t count)
{
    if (type == LM_RAM_ZERO) {
        stat_add(&s->stats.zero_pages, count);
    } else {
        stat_add(&s->stats.normal_pages, count);
        stat_add(&s->stats.normal_bytes, count << blk->page_shift);
    }
}

/* How the single-channel and postcopy senders split blk's dirty pages:
 * read them for zeros, or (file-backed blocks) trust the hint.  shared:
 * other threads send too (postcopy), so the hint is only read, and only
 * once it is frozen. */
static enum lm_zero_split split_mode(const lm_ram_block *blk, bool shared)
{
    if (shared) {
        return lm_ram_block_has_fd(blk) && __atomic_load_n(&blk->hint_frozen, __ATOMIC_ACQUIRE)
                   ? LM_SPLIT_HINT_SHARED
                   : LM_SPLIT_READ_SHARED;
    }
    /* A file-backed block's zero pages are its holes, known without a
     * read (the hint); reading the others only to look for zeros would
     * cost more than sending them from the page cache. */
    return lm_ram_block_has_fd(blk) ? LM_SPLIT_HINT : LM_SPLIT_READ;
}

/* probe: read anonymous pages for zeros through the kernel (zero_probe),
 * for senders that then send them by reference. */
static int split_runs(lm_ram_block *blk, uint64_t p, uint64_t q, enum lm_zero_split how,
                      bool probe_ok, lm_ram_run_fn fn, void *opaque)
{
    uint64_t max_run = MAX_RUN_BYTES >> blk->page_shift;
    if (!max_run) {
        max_run = 1;
    }
    /* Only the migration thread owns the hint's bitmaps. */
    bool owner = how != LM_SPLIT_READ_SHARED && how != LM_SPLIT_HINT_SHARED;
    zero_probe probe = { 0, 0, { 0 } };
    zero_probe *pr = probe_ok ? &probe : NULL;
    while (p < q) {
        bool zero;
        uint64_t e;
        /* Runs from the hint are found whole words at a time: an empty
         * guest is millions of pages. */
        bool by_hint = how == LM_SPLIT_HINT || how == LM_SPLIT_HINT_SHARED;
        bool from_hint = (by_hint || how == LM_SPLIT_READ) && lm_bitmap_test(blk->unpopulated, p);
        if (from_hint) {
            zero = true;
            e = lm_bitmap_next_clear(blk->unpopulated, q, p);
            e = LM_MIN(e, p + UINT32_MAX);
        } else if (by_hint) {
            zero = false;
            e = LM_MIN(lm_bitmap_next_set(blk->unpopulated, q, p), p + max_run);
        } else {
            bool read = how == LM_SPLIT_READ_SHARED, detect = how != LM_SPLIT_NONE;
            zero = detect && page_is_zero(blk, p, read, pr, q);
            e = p + 1;
            while (e < q && e - p < (zero ? UINT32_MAX : max_run) &&
                   (detect && page_is_zero(blk, e, read, pr, q)) == zero) {
                e++;
            }
        }
        uint32_t count = (uint32_t)(e - p);
        int ret = fn(opaque, zero ? LM_RAM_ZERO : LM_RAM_PAGES, blk, p, count);
        if (ret < 0) {
            return ret;
        }
        if (owner) {
            if (from_hint) {
                /* The whole run came from the hint. */
                lm_bitmap_set_range(blk->zero_unread, p, count);
            } else if (zero) {
                /* Zero pages known from the hint were not read: watch them. */
                for (uint64_t i = p; i < e; i++) {
                    if (lm_bitmap_test(blk->unpopulated, i)) {
                        lm_bitmap_set(blk->zero_unread, i);
                    }
                }
            }
            /* The hint holds once: if the guest writes the page, it is read. */
            lm_bitmap_clear_range(blk->unpopulated, p, count);
        }
        p = e;
    }
    return 0;
}

int lm_ram_save_split(lm_ram_saver *s, lm_ram_block *blk, uint64_t p, uint64_t q,
                      enum lm_zero_split how, lm_ram_run_fn fn, void *opaque)
{
    (void)s;
    return split_runs(blk, p, q, how, false, fn, opaque);
}

int lm_ram_save_split_probed(lm_ram_saver *s, lm_ram_block *blk, uint64_t p, uint64_t q,
                             enum lm_zero_split how, lm_ram_run_fn fn, void *opaque)
{
    (void)s;
    return split_runs(blk, p, q, how, true, fn, opaque);
}

/* Checksums, a file-backed block: reading its pages through the mapping
 * would map them, which the dirty tracker takes for writes (every page
 * would go twice), so they are read from the file into the batch's bounce
 * buffer, hashed and sent from there while still in the cache. */
static int bounce_read(batch *b, lm_channel *ch, const lm_ram_block *blk, uint64_t p, size_t len,
                       uint8_t **out)
{
    if (!b->bounce && !(b->bounce = malloc(BOUNCE_BYTES))) {
        return lm_channel_set_error(ch, -ENOMEM, "out of memory");
    }
    /* Flush first if batch_record would: the bytes read must stay put. */
    size_t hlen = REC_HDR_LEN + CSUM_LEN * (1 + (len >> blk->page_shift));
    if (b->bounce_used + len > BOUNCE_BYTES || b->niov + 2 > BATCH_IOV ||
        b->nhdr + 1 > BATCH_IOV || b->hoff + hlen > sizeof(b->hdr)) {
        int ret = batch_flush(b, ch);
        if (ret < 0) {
            return ret;
        }
    }
    uint8_t *dst = b->bounce + b->bounce_used;
    uint64_t off = blk->fd_offset + (p << blk->page_shift);
    for (size_t done = 0; done < len;) {
        ssize_t n = pread(blk->fd, dst + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return lm_channel_set_error(ch, n < 0 ? -errno : -EIO, "cannot read RAM block '%s' "
                                        "from its file", blk->name);
        }
        done += (size_t)n;
    }
    b->bounce_used += len;
    *out = dst;
    return 0;
}

typedef struct run_to_batch {
    lm_ram_saver *s;
    batch *b;
    lm_channel *ch;
    uint64_t wire; /* record bytes queued or sent */
} run_to_batch;

static int batch_run(void *opaque, uint8_t type, lm_ram_block *blk, uint64_t p, uint32_t count)
{
    run_to_batch *r = opaque;
    lm_ram_save_count(r->s, type, blk, count);
    size_t hlen = REC_HDR_LEN + (r->b->checksum ? CSUM_LEN : 0);
    if (type == LM_RAM_ZERO) {
        r->wire += hlen;
        return batch_record(r->b, r->ch, LM_RAM_ZERO, blk, p, count, NULL, 0);
    }
    size_t len = (size_t)count << blk->page_shift;
    r->wire += hlen + len + (r->b->checksum ? (size_t)count * CSUM_LEN : 0);
    if (lm_ram_block_has_fd(blk) && r->b->checksum) {
        uint8_t *data = NULL;
        int ret = bounce_read(r->b, r->ch, blk, p, len, &data);
        return ret < 0 ? ret : batch_record(r->b, r->ch, LM_RAM_PAGES, blk, p, count, data, len);
    }
    if (lm_ram_block_has_fd(blk)) {
        /* The gathered headers, this one last, then the pages out of the
         * page cache. */
        int ret = batch_record(r->b, r->ch, LM_RAM_PAGES, blk, p, count, NULL, 0);
        if (ret == 0) {
            ret = lm_channel_put_file(r->ch, r->b->iov, r->b->niov, blk->fd,
                                      blk->fd_offset + ((uint64_t)p << blk->page_shift),
                                      lm_ram_block_page(blk, p), len);
        }
        r->b->niov = r->b->nhdr = 0;
        r->b->hoff = 0;
        return ret;
    }
    if (r->b->checksum || !lm_channel_mem_by_reference(r->ch, len)) {
        /* Gathered into the batch's writev: checksums read the pages
         * anyway, and a short run (or any run on a channel that sends
         * none by reference) costs more in calls than it saves. */
        return batch_record(r->b, r->ch, LM_RAM_PAGES, blk, p, count, lm_ram_block_page(blk, p), len);
    }
    /* A long run of anonymous RAM: the gathered headers, this one last,
     * then the pages by reference (lm_channel_put_mem), as the page cache
     * above. */
    int ret = batch_record(r->b, r->ch, LM_RAM_PAGES, blk, p, count, NULL, 0);
    if (ret == 0) {
        ret = lm_channel_put_mem(r->ch, r->b->iov, r->b->niov, lm_ram_block_page(blk, p), len);
    }
    r->b->niov = r->b->nhdr = 0;
    r->b->hoff = 0;
    return ret;
}

/* Sends the dirty pages [p, q) of blk, split into zero and data runs.
 * shared: other threads send too (postcopy).  The never-populated hint is
 * not used then: it dates from setup, and only precopy's requeue (on
 * every sync) corrects it for pages written since. */
static int send_run(lm_ram_saver *s, batch *b, lm_channel *ch, lm_ram_block *blk, uint64_t p,
                    uint64_t q, bool shared, uint64_t *wire)
{
    run_to_batch r = { s, b, ch, 0 };
    /* Without checksums, on a channel that takes pages by reference, they
     * go unread here: read them for zeros through the kernel too.  Where
     * the send reads them through the mapping anyway (tcp), the zero
     * check reads them there first: one cold read of each page, not two
     * (the probe cost a tcp source 0.15-0.19 CPU-s/GiB, bench/results.md
     * "tcp against its floor"). */
    bool probe = !b->checksum && lm_channel_mem_by_reference(ch, LM_CHANNEL_BY_REFERENCE_MIN);
    int ret = split_runs(blk, p, q, split_mode(blk, shared), probe, batch_run, &r);
    *wire += r.wire;
    return ret;
}

bool lm_ram_save_claim(lm_ram_saver *s, uint64_t max_bytes, lm_ram_block **blk_out,
                       uint64_t *p_out, uint64_t *q_out)
{
    while (s->cur_block < s->nblocks) {
        lm_ram_block *blk = s->blocks[s->cur_block];
        uint64_t p = lm_bitmap_next_set(blk->dirty, blk->npages, s->cur_page);
        if (p >= blk->npages) {
            s->cur_block++;
            s->cur_page = 0;
            continue;
        }
        uint64_t q = lm_bitmap_next_clear(blk->dirty, blk->npages, p);
        uint64_t max_pages = (max_bytes >> blk->page_shift) + ((max_bytes & (blk->page_size - 1)) != 0);
        if (max_pages == 0) {
            max_pages = 1;
        }
        if (q - p > max_pages) {
            q = p + max_pages;
        }
        /* Clear, then protect, before reading: a write after this point
         * dirties the page again. */
        lm_bitmap_clear_range(blk->dirty, p, q - p);
        lm_dirty_tracker_protect(s->tracker, blk, p, q);
        uint64_t bytes = (q - p) << blk->page_shift;
        __atomic_fetch_sub(&s->dirty_bytes, LM_MIN(bytes, s->dirty_bytes), __ATOMIC_RELAXED);
        s->cur_page = q;
        *blk_out = blk;
        *p_out = p;
        *q_out = q;
        return true;
    }
    /* End of guest RAM: the next pass starts over. */
    s->cur_block = 0;
    s->cur_page = 0;
    return false;
}

int lm_ram_save_send(lm_ram_saver *s, lm_channel *ch, uint64_t budget, uint64_t *sent,
                     bool *pass_done, lm_error *err)
{
    batch *b = s->batch;
    uint64_t done = 0;
    int ret = 0;
    *pass_done = false;
    b->niov = b->nhdr = 0;
    b->hoff = b->bytes = 0;
    b->checksum = s->checksum;
    while (done < budget) {
        lm_ram_block *blk;
        uint64_t p, q;
        if (!lm_ram_save_claim(s, budget - done, &blk, &p, &q)) {
            *pass_done = true;
            break;
        }
        uint64_t wire = 0;
        ret = send_run(s, b, ch, blk, p, q, false, &wire);
        if (ret < 0) {
            break;
        }
        done += (q - p) << blk->page_shift;
    }
    if (ret == 0) {
        ret = batch_flush(b, ch);
    }
    if (ret < 0) {
        lm_channel_error(ch, err);
        return ret;
    }
    if (sent) {
        *sent = done;
    }
    return 0;
}

struct lm_ram_batch *lm_ram_batch_new(void)
{
    return calloc(1, sizeof(struct lm_ram_batch));
}

void lm_ram_batch_free(struct lm_ram_batch *b)
{
    if (b) {
        free(b->bounce);
    }
    free(b);
}

int lm_ram_save_send_range(lm_ram_saver *s, struct lm_ram_batch *b, lm_channel *ch,
                           lm_ram_block *blk, uint64_t p, uint64_t q, uint64_t *wire_bytes)
{
    int ret = send_run(s, b, ch, blk, p, q, true, wire_bytes);
    return ret < 0 ? ret : 0;
}

int lm_ram_batch_flush(struct lm_ram_batch *b, lm_channel *ch)
{
    return batch_flush(b, ch);
}

void lm_ram_save_freeze_hint(lm_ram_saver *s)
{
    if (!s->hint_on) {
        return;
    }
    lm_ram_find_unpopulated(s->blocks, s->nblocks);
    for (size_t i = 0; i < s->nblocks; i++) {
        __atomic_store_n(&s->blocks[i]->hint_frozen, true, __ATOMIC_RELEASE);
    }
}

void lm_ram_save_cleanup(lm_ram_saver *s)
{
    lm_ram_batch_free(s->batch);
    s->batch = NULL;
    if (s->tracker) {
        lm_dirty_tracker_stop(s->tracker);
        s->tracker = NULL;
    }
    for (size_t i = 0; i < s->nblocks; i++) {
        lm_ram_block_release_bitmaps(s->blocks[i]);
    }
}
