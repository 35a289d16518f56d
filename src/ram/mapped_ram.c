#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/bitmap.h"
#include "common/failure.h"
#include "common/util.h"
#include "livemig/buffer.h"
#include "ram/filedest.h"
#include "ram/mapped_ram.h"
#include "ram/ram_load.h"
#include "stream/checksum.h"
#include "stream/format.h"

/* Jobs waiting for a writer thread: enough to keep every thread busy while
 * the migration thread claims the next runs, few enough that claims do not
 * run far ahead of the writes. */
#define QUEUE_LEN 256u
/* The destination hands out the block in chunks of this size (at least 64
 * pages, one bitmap word), so threads share a sparse block evenly. */
#define LOAD_CHUNK_BYTES (8ull << 20)

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* ---- helpers shared by both sides ---- */

static uint64_t bitmap_bytes(const lm_ram_block *b)
{
    return LM_BITMAP_WORDS(b->npages) * sizeof(uint64_t);
}

static uint64_t align_up(uint64_t v, uint64_t align)
{
    return LM_DIV_ROUND_UP(v, align) * align;
}

/* Checksum table: pages per chunk, and the table's size. */
static uint64_t csum_chunk_pages(const lm_ram_block *b)
{
    return b->page_size >= LM_MAPPED_RAM_CSUM_CHUNK ? 1 : LM_MAPPED_RAM_CSUM_CHUNK >> b->page_shift;
}

static uint64_t csum_table_bytes(const lm_ram_block *b)
{
    return LM_DIV_ROUND_UP(b->npages, csum_chunk_pages(b)) * sizeof(uint64_t);
}

/* A page's own checksum, seeded with its index: a page read from the
 * wrong slot fails too. */
static uint64_t page_csum(const lm_ram_block *b, uint64_t p)
{
    return lm_csum(lm_ram_block_page(b, p), b->page_size, p);
}

/* A chunk's checksum: xxh3 of its pages' checksums (be64, 0 for a page the
 * bitmap says absent), so the bitmap is covered too.  page_sum(p) gives a
 * present page's checksum. */
static uint64_t chunk_csum(const lm_ram_block *b, const uint64_t *present, uint64_t chunk,
                           uint64_t (*page_sum)(const void *, const lm_ram_block *, uint64_t),
                           const void *opaque)
{
    uint8_t buf[(LM_MAPPED_RAM_CSUM_CHUNK >> 12) * sizeof(uint64_t)];
    uint64_t n = csum_chunk_pages(b), first = chunk * n;
    n = LM_MIN(n, b->npages - first);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t p = first + i;
        lm_store_be64(buf + i * 8, lm_bitmap_test(present, p) ? page_sum(opaque, b, p) : 0);
    }
    return lm_csum(buf, n * 8, 0);
}

/* Where a block's pages start: after its bitmap, on a 1 MiB boundary, and
 * on a page boundary for pages larger than that. */
static uint64_t region_align(const lm_ram_block *b)
{
    return b->page_size > LM_MAPPED_RAM_ALIGN ? b->page_size : LM_MAPPED_RAM_ALIGN;
}

/* ---- source ---- */

typedef struct job {
    lm_ram_block *blk;
    uint64_t first;
    uint32_t count;
} job;

struct lm_mapped_ram_src {
    lm_mapped_ram_src_cfg cfg;
    lm_ram_saver *saver;
    size_t nblocks;
    uint64_t *bitmap_off;  /* per block index */
    uint64_t *pages_off;
    uint64_t **present;    /* per block: pages whose slot holds their latest data */
    uint64_t **page_sum;   /* checksum: per block, each written page's checksum */
    uint64_t bytes;        /* atomic */

    pthread_mutex_t lock;
    pthread_cond_t work;   /* a job was queued, or stop */
    pthread_cond_t idle;   /* a job was taken or finished, or an error */
    job queue[QUEUE_LEN];
    unsigned head, count, busy;
    bool stop;
    int err_code;          /* first failure; read under lock */
    lm_error err;
    pthread_t *tids;
    unsigned nthreads;
    bool no_copy_range;    /* atomic: copy_file_range refused once */
};

static int src_fail(lm_mapped_ram_src *mr, const lm_error *e)
{
    pthread_mutex_lock(&mr->lock);
    lm_failure_set_locked(&mr->err_code, &mr->err, e->code, e);
    int code = mr->err_code;
    pthread_cond_broadcast(&mr->idle);
    pthread_mutex_unlock(&mr->lock);
    return code;
}

static int src_error(lm_mapped_ram_src *mr, lm_error *err)
{
    pthread_mutex_lock(&mr->lock);
    int code = mr->err_code;
    if (code) {
        lm_error_propagate(err, &mr->err);
    }
    pthread_mutex_unlock(&mr->lock);
    return code;
}

/* A file-backed block's pages go page cache to page cache
 * (copy_file_range), never touched through the mapping.  -EOPNOTSUPP
 * when the kernel cannot do it for these two files (different file
 * systems, say), before anything was copied. */
static int copy_from_ram_file(int out, const lm_ram_block *blk, uint64_t first, uint64_t len,
                              uint64_t off)
{
    loff_t in_off = (loff_t)(blk->fd_offset + (first << blk->page_shift)), out_off = (loff_t)off;
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = copy_file_range(blk->fd, &in_off, out, &out_off, (size_t)(len - done), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && done == 0 &&
            (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS ||
             errno == EBADF)) {
            return -EOPNOTSUPP;
        }
        if (n < 0) {
            return -errno;
        }
        if (n == 0) {
            return -EIO;
        }
        done += (uint64_t)n;
    }
    return 0;
}

/* The checksums of pages [first, first+count) of blk.  A file-backed
 * block's pages are read from its file: through the mapping they would be
 * mapped, which the dirty tracker takes for writes. */
static int sum_pages(lm_mapped_ram_src *mr, const lm_ram_block *blk, uint64_t first, uint32_t count)
{
    uint64_t *sums = mr->page_sum[blk->idx];
    if (!lm_ram_block_has_fd(blk)) {
        for (uint64_t p = first; p < first + count; p++) {
            sums[p] = page_csum(blk, p);
        }
        return 0;
    }
    uint8_t *buf = malloc(blk->page_size);
    if (!buf) {
        return -ENOMEM;
    }
    int ret = 0;
    for (uint64_t p = first; p < first + count && ret == 0; p++) {
        ret = lm_pread_full(blk->fd, buf, blk->page_size, blk->fd_offset + (p << blk->page_shift));
        sums[p] = lm_csum(buf, blk->page_size, p);
    }
    free(buf);
    return ret;
}

/* Data pages [first, first+count) of blk to their slots in the file. */
static int write_data(lm_mapped_ram_src *mr, lm_ram_block *blk, uint64_t first, uint32_t count)
{
    uint64_t len = (uint64_t)count << blk->page_shift;
    uint64_t off = mr->pages_off[blk->idx] + (first << blk->page_shift);
    if (mr->cfg.rl) {
        lm_ratelimit_consume(mr->cfg.rl, len);
    }
    int ret = -EOPNOTSUPP;
    if (lm_ram_block_has_fd(blk) && !__atomic_load_n(&mr->no_copy_range, __ATOMIC_RELAXED)) {
        ret = copy_from_ram_file(mr->cfg.fd, blk, first, len, off);
        if (ret == -EOPNOTSUPP) {
            __atomic_store_n(&mr->no_copy_range, true, __ATOMIC_RELAXED);
        }
    }
    if (ret == -EOPNOTSUPP) {
        ret = lm_pwrite_full(mr->cfg.fd, lm_ram_block_page(blk, first), len, off);
    }
    if (ret < 0) {
        lm_error e = LM_ERROR_INIT;
        lm_error_set_errno(&e, ret, "mapped-ram: cannot write pages of block '%s' at offset %" PRIu64,
                           blk->name, off);
        return src_fail(mr, &e);
    }
    if (mr->cfg.checksum) {
        /* Hashed after the write: if the guest changed a page since it was
         * claimed, it is dirty again and this slot and sum are rewritten by
         * a later pass, so the last write's sum is the slot's. */
        ret = sum_pages(mr, blk, first, count);
        if (ret < 0) {
            lm_error e = LM_ERROR_INIT;
            lm_error_set_errno(&e, ret, "mapped-ram: cannot read RAM block '%s' from its file",
                               blk->name);
            return src_fail(mr, &e);
        }
    }
    lm_bitmap_set_range_atomic(mr->present[blk->idx], first, count);
    lm_ram_save_count(mr->saver, LM_RAM_PAGES, blk, count);
    __atomic_fetch_add(&mr->bytes, len, __ATOMIC_RELAXED);
    return 0;
}

/* A zero run is not written: its slots stay holes (or keep stale bytes
 * the destination never reads), because its bits are cleared. */
static void zero_run(lm_mapped_ram_src *mr, lm_ram_block *blk, uint64_t first, uint32_t count)
{
    /* Writer threads clear bits of the same word for different pages. */
    lm_bitmap_clear_range_atomic(mr->present[blk->idx], first, count);
    lm_ram_save_count(mr->saver, LM_RAM_ZERO, blk, count);
}

static int shared_run(void *opaque, uint8_t type, lm_ram_block *blk, uint64_t first, uint32_t count)
{
    lm_mapped_ram_src *mr = opaque;
    if (type == LM_RAM_ZERO) {
        zero_run(mr, blk, first, count);
        return 0;
    }
    return write_data(mr, blk, first, count);
}

/* A data run claimed by the migration thread: any thread reads it for
 * zero pages (unless detection is off) and writes the rest. */
static int write_job(lm_mapped_ram_src *mr, const job *j)
{
    /* A file-backed block's zero pages were its holes (the hint): the
     * others are written unread. */
    if (!mr->cfg.zero_detect || lm_ram_block_has_fd(j->blk)) {
        return write_data(mr, j->blk, j->first, j->count);
    }
    return lm_ram_save_split(mr->saver, j->blk, j->first, j->first + j->count,
                             LM_SPLIT_READ_SHARED, shared_run, mr);
}

static void *writer_thread(void *arg)
{
    lm_mapped_ram_src *mr = arg;
    pthread_mutex_lock(&mr->lock);
    for (;;) {
        while (!mr->count && !mr->stop) {
            pthread_cond_wait(&mr->work, &mr->lock);
        }
        if (mr->stop) {
            break;
        }
        job j = mr->queue[mr->head];
        mr->head = (mr->head + 1) % QUEUE_LEN;
        mr->count--;
        mr->busy++;
        bool failed = mr->err_code != 0;
        pthread_cond_broadcast(&mr->idle);
        pthread_mutex_unlock(&mr->lock);
        if (!failed) {
            write_job(mr, &j); /* a failure is recorded in mr */
        }
        pthread_mutex_lock(&mr->lock);
        mr->busy--;
        pthread_cond_broadcast(&mr->idle);
    }
    pthread_mutex_unlock(&mr->lock);
    return NULL;
}

static int enqueue(lm_mapped_ram_src *mr, const job *j)
{
    pthread_mutex_lock(&mr->lock);
    while (mr->count == QUEUE_LEN && !mr->err_code) {
        pthread_cond_wait(&mr->idle, &mr->lock);
    }
    int code = mr->err_code;
    if (!code) {
        mr->queue[(mr->head + mr->count) % QUEUE_LEN] = *j;
        mr->count++;
        pthread_cond_signal(&mr->work);
    }
    pthread_mutex_unlock(&mr->lock);
    return code;
}

/* The migration thread's split of a claimed run: zero pages known from
 * the never-populated hint are settled here without a read; data runs
 * (at most 1 MiB each) are written here or by a writer thread. */
static int dispatch_run(void *opaque, uint8_t type, lm_ram_block *blk, uint64_t first,
                        uint32_t count)
{
    lm_mapped_ram_src *mr = opaque;
    if (type == LM_RAM_ZERO) {
        zero_run(mr, blk, first, count);
        return 0;
    }
    job j = { blk, first, count };
    return mr->nthreads ? enqueue(mr, &j) : write_job(mr, &j);
}

void lm_mapped_ram_src_free(lm_mapped_ram_src *mr)
{
    if (!mr) {
        return;
    }
    pthread_mutex_lock(&mr->lock);
    mr->stop = true;
    pthread_cond_broadcast(&mr->work);
    pthread_mutex_unlock(&mr->lock);
    for (unsigned i = 0; i < mr->nthreads; i++) {
        pthread_join(mr->tids[i], NULL);
    }
    for (size_t i = 0; mr->present && i < mr->nblocks; i++) {
        lm_bitmap_free(mr->present[i]);
    }
    for (size_t i = 0; mr->page_sum && i < mr->nblocks; i++) {
        free(mr->page_sum[i]);
    }
    free(mr->page_sum);
    free(mr->present);
    free(mr->bitmap_off);
    free(mr->pages_off);
    free(mr->tids);
    pthread_cond_destroy(&mr->work);
    pthread_cond_destroy(&mr->idle);
    pthread_mutex_destroy(&mr->lock);
    free(mr);
}

int lm_mapped_ram_src_new(const lm_mapped_ram_src_cfg *cfg, lm_ram_saver *saver,
                          lm_mapped_ram_src **out, lm_error *err)
{
    *out = NULL;
    if (cfg->threads > LM_MAPPED_RAM_MAX_THREADS) {
        return lm_error_set(err, -EINVAL, "mapped-ram: at most %u threads",
                            LM_MAPPED_RAM_MAX_THREADS);
    }
    lm_mapped_ram_src *mr = calloc(1, sizeof(*mr));
    if (!mr) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    mr->cfg = *cfg;
    mr->saver = saver;
    mr->nblocks = saver->nblocks;
    pthread_mutex_init(&mr->lock, NULL);
    pthread_cond_init(&mr->work, NULL);
    pthread_cond_init(&mr->idle, NULL);
    mr->bitmap_off = calloc(mr->nblocks + 1, sizeof(uint64_t));
    mr->pages_off = calloc(mr->nblocks + 1, sizeof(uint64_t));
    mr->present = calloc(mr->nblocks + 1, sizeof(uint64_t *));
    mr->tids = calloc(cfg->threads + 1, sizeof(pthread_t));
    bool ok = mr->bitmap_off && mr->pages_off && mr->present && mr->tids;
    for (size_t i = 0; ok && i < mr->nblocks; i++) {
        mr->present[i] = lm_bitmap_new(saver->blocks[i]->npages);
        ok = mr->present[i] != NULL;
    }
    if (ok && cfg->checksum) {
        mr->page_sum = calloc(mr->nblocks + 1, sizeof(uint64_t *));
        ok = mr->page_sum != NULL;
        for (size_t i = 0; ok && i < mr->nblocks; i++) {
            mr->page_sum[i] = calloc(saver->blocks[i]->npages, sizeof(uint64_t));
            ok = mr->page_sum[i] != NULL;
        }
    }
    if (!ok) {
        lm_mapped_ram_src_free(mr);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    for (unsigned i = 0; i < cfg->threads; i++) {
        int rc = pthread_create(&mr->tids[i], NULL, writer_thread, mr);
        if (rc) {
            lm_mapped_ram_src_free(mr);
            return lm_error_set(err, -rc, "mapped-ram: cannot start a writer thread");
        }
        mr->nthreads++;
    }
    *out = mr;
    return 0;
}

int lm_mapped_ram_src_layout(lm_mapped_ram_src *mr, lm_channel *ch, lm_error *err)
{
    for (size_t i = 0; i < mr->nblocks; i++) {
        lm_ram_block *b = mr->saver->blocks[i];
        uint64_t pos;
        if (lm_channel_tell(ch, &pos) < 0) {
            return lm_channel_error(ch, err);
        }
        /* The bitmap follows the record, [the checksum table the bitmap,]
         * the pages follow. */
        uint64_t boff = pos + 1 + LM_MAPPED_RAM_RECORD_LEN;
        uint64_t tlen = mr->cfg.checksum ? csum_table_bytes(b) : 0;
        uint64_t poff = align_up(boff + bitmap_bytes(b) + tlen, region_align(b));
        mr->bitmap_off[b->idx] = boff;
        mr->pages_off[b->idx] = poff;
        uint8_t rec[1 + LM_MAPPED_RAM_RECORD_LEN];
        rec[0] = LM_RAM_MAPPED_BLOCK;
        lm_store_be16(rec + 1, (uint16_t)b->idx);
        lm_store_be32(rec + 3, mr->cfg.checksum ? LM_MAPPED_RAM_VERSION_CHECKSUM
                                                : LM_MAPPED_RAM_VERSION);
        lm_store_be32(rec + 7, b->page_size);
        lm_store_be64(rec + 11, boff);
        lm_store_be64(rec + 19, poff);
        lm_channel_put(ch, rec, sizeof(rec));
        /* The stream goes on after the region; the region stays a hole
         * until pages are written into it. */
        if (lm_channel_seek(ch, poff + b->size) < 0) {
            return lm_channel_error(ch, err);
        }
    }
    return 0;
}

int lm_mapped_ram_src_send(lm_mapped_ram_src *mr, uint64_t budget, bool *pass_done,
                           lm_error *err)
{
    uint64_t done = 0;
    *pass_done = false;
    while (done < budget) {
        if (src_error(mr, err)) {
            return src_error(mr, NULL);
        }
        lm_ram_block *blk;
        uint64_t p, q;
        if (!lm_ram_save_claim(mr->saver, budget - done, &blk, &p, &q)) {
            *pass_done = true;
            break;
        }
        int ret = lm_ram_save_split(mr->saver, blk, p, q,
                                    mr->cfg.zero_detect ? LM_SPLIT_HINT : LM_SPLIT_NONE,
                                    dispatch_run, mr);
        if (ret < 0) {
            break;
        }
        done += (q - p) << blk->page_shift;
    }
    int code = src_error(mr, err);
    return code;
}

int lm_mapped_ram_src_flush(lm_mapped_ram_src *mr, lm_error *err)
{
    pthread_mutex_lock(&mr->lock);
    while ((mr->count || mr->busy) && !mr->err_code) {
        pthread_cond_wait(&mr->idle, &mr->lock);
    }
    pthread_mutex_unlock(&mr->lock);
    return src_error(mr, err);
}

static uint64_t stored_sum(const void *opaque, const lm_ram_block *b, uint64_t p)
{
    const lm_mapped_ram_src *mr = opaque;
    return mr->page_sum[b->idx][p];
}

/* After the final pass: each chunk's checksum from the pages' own, right
 * after the block's bitmap. */
static int write_csum_table(lm_mapped_ram_src *mr, lm_ram_block *b, lm_error *err)
{
    uint64_t n = csum_table_bytes(b) / 8;
    uint8_t *buf = malloc(n * 8);
    if (!buf) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    for (uint64_t k = 0; k < n; k++) {
        lm_store_be64(buf + k * 8, chunk_csum(b, mr->present[b->idx], k, stored_sum, mr));
    }
    uint64_t off = mr->bitmap_off[b->idx] + bitmap_bytes(b);
    int ret = lm_pwrite_full(mr->cfg.fd, buf, n * 8, off);
    free(buf);
    if (ret < 0) {
        return lm_error_set_errno(err, ret, "mapped-ram: cannot write the checksums of block '%s'",
                                  b->name);
    }
    return 0;
}

int lm_mapped_ram_src_finish(lm_mapped_ram_src *mr, lm_error *err)
{
    int ret = lm_mapped_ram_src_flush(mr, err);
    for (size_t i = 0; ret == 0 && i < mr->nblocks; i++) {
        lm_ram_block *b = mr->saver->blocks[i];
        uint64_t words = LM_BITMAP_WORDS(b->npages);
        uint8_t *buf = malloc(words * 8);
        if (!buf) {
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        for (uint64_t w = 0; w < words; w++) {
            lm_store_be64(buf + w * 8, mr->present[b->idx][w]);
        }
        ret = lm_pwrite_full(mr->cfg.fd, buf, words * 8, mr->bitmap_off[b->idx]);
        free(buf);
        if (ret < 0) {
            return lm_error_set_errno(err, ret, "mapped-ram: cannot write the bitmap of block '%s'",
                                      b->name);
        }
        if (mr->cfg.checksum) {
            ret = write_csum_table(mr, b, err);
        }
    }
    return ret;
}

uint64_t lm_mapped_ram_src_bytes(const lm_mapped_ram_src *mr)
{
    return __atomic_load_n(&mr->bytes, __ATOMIC_RELAXED);
}

/* ---- destination ---- */

struct lm_mapped_ram_dst {
    lm_ram_block **blocks;
    size_t nblocks;
    unsigned threads;
    bool checksum;
    bool *loaded;
    uint64_t pages, zero, bytes;
};

int lm_mapped_ram_dst_new(lm_ram_block **blocks, size_t nblocks, unsigned threads, bool checksum,
                          lm_mapped_ram_dst **out, lm_error *err)
{
    lm_mapped_ram_dst *mr = calloc(1, sizeof(*mr));
    if (mr) {
        mr->loaded = calloc(nblocks + 1, sizeof(bool));
    }
    if (!mr || !mr->loaded) {
        free(mr);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    mr->blocks = blocks;
    mr->nblocks = nblocks;
    mr->threads = threads < 1 ? 1 : LM_MIN(threads, LM_MAPPED_RAM_MAX_THREADS);
    mr->checksum = checksum;
    *out = mr;
    return 0;
}

void lm_mapped_ram_dst_free(lm_mapped_ram_dst *mr)
{
    if (mr) {
        free(mr->loaded);
        free(mr);
    }
}

void lm_mapped_ram_dst_stats(const lm_mapped_ram_dst *mr, uint64_t *pages, uint64_t *zero,
                             uint64_t *bytes)
{
    *pages = mr->pages;
    *zero = mr->zero;
    *bytes = mr->bytes;
}

int lm_mapped_ram_dst_check_complete(const lm_mapped_ram_dst *mr, lm_error *err)
{
    for (size_t i = 0; i < mr->nblocks; i++) {
        if (!mr->loaded[i]) {
            return lm_error_set(err, -EBADMSG, "mapped-ram: the stream has no pages region for "
                                "RAM block '%s'", mr->blocks[i]->name);
        }
    }
    return 0;
}

/* One block being loaded by one or more threads. */
typedef struct load_ctx {
    lm_ram_block *b;
    const uint64_t *map; /* present pages (host order) */
    const uint64_t *sums; /* checksum table (host order), or NULL */
    int fd;
    uint64_t pages_off;
    uint64_t chunk_pages;
    uint64_t nchunks;
    uint64_t next_chunk; /* atomic */
    uint64_t pages, zero, bytes; /* atomic */
    pthread_mutex_t lock;
    int err_code;        /* atomic read; set under lock */
    lm_error err;
} load_ctx;

static void load_fail(load_ctx *l, int code, uint64_t page)
{
    lm_error e = LM_ERROR_INIT;
    if (code == -ENODATA) {
        lm_error_set(&e, -EBADMSG, "mapped-ram: the file ends inside the pages of RAM "
                     "block '%s' (page %" PRIu64 ")", l->b->name, page);
    } else {
        lm_error_set_errno(&e, code, "mapped-ram: cannot read pages of RAM block '%s'",
                           l->b->name);
    }
    pthread_mutex_lock(&l->lock);
    lm_failure_set_locked(&l->err_code, &l->err, e.code, &e);
    pthread_mutex_unlock(&l->lock);
}

/* Present pages [p, q) straight from the file into guest RAM; a
 * file-backed block gets them written into its own file through scratch
 * (zero pages as holes), its mapping never faulted. */
static int load_present(load_ctx *l, uint64_t p, uint64_t q, uint8_t *scratch)
{
    lm_ram_block *b = l->b;
    uint64_t len = (q - p) << b->page_shift;
    int ret;
    if (lm_filedest_on(b)) {
        __atomic_store_n(&b->dest_used, true, __ATOMIC_RELAXED);
        ret = lm_filedest_copy(b, p, l->fd, l->pages_off + (p << b->page_shift), len, scratch);
    } else {
        void *host = lm_ram_load_data_begin(b, p);
        /* Every page of the run is about to be written: mapping them in one
         * call costs far less than a fault per page inside the read (2-3x on
         * a virtualised host).  An old kernel without it just faults. */
        (void)madvise(host, len, MADV_POPULATE_WRITE);
        ret = lm_pread_full(l->fd, host, len, l->pages_off + (p << b->page_shift));
    }
    if (ret < 0) {
        load_fail(l, ret, p);
        return ret;
    }
    lm_ram_load_mark(b, p, (uint32_t)(q - p));
    __atomic_fetch_add(&l->pages, q - p, __ATOMIC_RELAXED);
    __atomic_fetch_add(&l->bytes, len, __ATOMIC_RELAXED);
    return 0;
}

static uint64_t loaded_sum(const void *opaque, const lm_ram_block *b, uint64_t p)
{
    uint8_t *scratch = (uint8_t *)opaque;
    if (!lm_filedest_on(b)) {
        return page_csum(b, p);
    }
    /* Read back from the page cache, not through the mapping.  A page
     * that cannot be read is taken as zeros: its chunk fails unless that
     * is what the page should hold. */
    if (lm_filedest_read_page(b, p, scratch) < 0) {
        memset(scratch, 0, b->page_size);
    }
    return lm_csum(scratch, b->page_size, p);
}

/* The checksum chunks inside [p, end) against the table (loader chunks
 * are whole checksum chunks). */
static int verify_chunks(load_ctx *l, uint64_t p, uint64_t end, uint8_t *scratch)
{
    lm_ram_block *b = l->b;
    uint64_t n = csum_chunk_pages(b);
    for (uint64_t k = p / n; k * n < end; k++) {
        if (chunk_csum(b, l->map, k, loaded_sum, scratch) == l->sums[k]) {
            continue;
        }
        uint64_t last = LM_MIN((k + 1) * n, b->npages) - 1;
        lm_error e = LM_ERROR_INIT;
        lm_error_set(&e, -EBADMSG, "checksum mismatch: mapped-ram RAM block '%s' pages "
                     "%" PRIu64 "-%" PRIu64 " (file offset %" PRIu64 "): the file is corrupt",
                     b->name, k * n, last, l->pages_off + ((k * n) << b->page_shift));
        pthread_mutex_lock(&l->lock);
        lm_failure_set_locked(&l->err_code, &l->err, e.code, &e);
        pthread_mutex_unlock(&l->lock);
        return -EBADMSG;
    }
    return 0;
}

static void *load_worker(void *arg)
{
    load_ctx *l = arg;
    lm_ram_block *b = l->b;
    uint8_t *scratch = NULL;
    if (lm_filedest_on(b) && !(scratch = lm_ram_load_scratch_new())) {
        load_fail(l, -ENOMEM, 0);
        return NULL;
    }
    for (;;) {
        uint64_t k = __atomic_fetch_add(&l->next_chunk, 1, __ATOMIC_RELAXED);
        if (k >= l->nchunks || __atomic_load_n(&l->err_code, __ATOMIC_ACQUIRE)) {
            break;
        }
        uint64_t p = k * l->chunk_pages, end = LM_MIN(p + l->chunk_pages, b->npages);
        while (p < end) {
            uint64_t q;
            if (lm_bitmap_test(l->map, p)) {
                q = lm_bitmap_next_clear(l->map, end, p);
                if (load_present(l, p, q, scratch) < 0) {
                    free(scratch);
                    return NULL;
                }
            } else {
                /* Absent: a zero page.  Fresh RAM is left untouched. */
                q = lm_bitmap_next_set(l->map, end, p);
                lm_ram_load_zero(b, p, (uint32_t)(q - p));
                __atomic_fetch_add(&l->zero, q - p, __ATOMIC_RELAXED);
            }
            p = q;
        }
        if (l->sums && verify_chunks(l, k * l->chunk_pages, end, scratch) < 0) {
            break;
        }
    }
    free(scratch);
    return NULL;
}

/* Loads every page of the block, in parallel when asked to. */
static int load_pages(lm_mapped_ram_dst *mr, load_ctx *l, lm_error *err)
{
    lm_ram_block *b = l->b;
    l->chunk_pages = align_up(LM_MAX(LOAD_CHUNK_BYTES >> b->page_shift, 64), 64);
    l->nchunks = (b->npages + l->chunk_pages - 1) / l->chunk_pages;
    pthread_t tids[LM_MAPPED_RAM_MAX_THREADS];
    unsigned want = (unsigned)LM_MIN((uint64_t)mr->threads, l->nchunks), started = 0;
    /* The load thread takes a share too: n threads in all. */
    for (unsigned i = 1; i < want; i++) {
        if (pthread_create(&tids[started], NULL, load_worker, l) != 0) {
            break; /* fewer threads still load everything */
        }
        started++;
    }
    load_worker(l);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(tids[i], NULL);
    }
    if (l->err_code) {
        lm_error_propagate(err, &l->err);
        return l->err_code;
    }
    mr->pages += l->pages;
    mr->zero += l->zero;
    mr->bytes += l->bytes;
    return 0;
}

/* Reads the block's bitmap (big-endian words) into host order. */
static int read_bitmap(int fd, lm_ram_block *b, uint64_t off, uint64_t **out, lm_error *err)
{
    uint64_t words = LM_BITMAP_WORDS(b->npages);
    uint64_t *map = lm_bitmap_new(b->npages);
    if (!map) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    int ret = lm_pread_full(fd, map, words * 8, off);
    if (ret < 0) {
        lm_bitmap_free(map);
        if (ret == -ENODATA) {
            return lm_error_set(err, -EBADMSG, "mapped-ram: the file ends inside the bitmap of "
                                "RAM block '%s'", b->name);
        }
        return lm_error_set_errno(err, ret, "mapped-ram: cannot read the bitmap of RAM block '%s'",
                                  b->name);
    }
    for (uint64_t w = 0; w < words; w++) {
        map[w] = lm_load_be64((const uint8_t *)&map[w]);
    }
    *out = map;
    return 0;
}

/* Reads the block's checksum table (big-endian words) into host order. */
static int read_csum_table(int fd, lm_ram_block *b, uint64_t off, uint64_t **out, lm_error *err)
{
    uint64_t n = csum_table_bytes(b) / 8;
    uint64_t *t = malloc(n * 8);
    if (!t) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    int ret = lm_pread_full(fd, t, n * 8, off);
    if (ret < 0) {
        free(t);
        return ret == -ENODATA ? lm_error_set(err, -EBADMSG, "mapped-ram: the file ends inside the "
                                              "checksums of RAM block '%s'", b->name)
                               : lm_error_set_errno(err, ret, "mapped-ram: cannot read the "
                                                    "checksums of RAM block '%s'", b->name);
    }
    for (uint64_t k = 0; k < n; k++) {
        t[k] = lm_load_be64((const uint8_t *)&t[k]);
    }
    *out = t;
    return 0;
}

/* Every offset in the record is checked against the block and the file
 * before anything is read: a corrupt file fails here, never reads into
 * the wrong place. */
static int check_record(const lm_mapped_ram_dst *mr, const uint8_t *rec, uint64_t pos, uint64_t fsize,
                        uint16_t *bi_out, uint64_t *boff, uint64_t *poff, lm_error *err)
{
    uint16_t bi = lm_load_be16(rec);
    uint32_t version = lm_load_be32(rec + 2), psize = lm_load_be32(rec + 6);
    *boff = lm_load_be64(rec + 10);
    *poff = lm_load_be64(rec + 18);
    if (bi >= mr->nblocks) {
        return lm_error_set(err, -EBADMSG, "mapped-ram: record names block %u, but only %zu "
                            "blocks exist", bi, mr->nblocks);
    }
    lm_ram_block *b = mr->blocks[bi];
    if (mr->loaded[bi]) {
        return lm_error_set(err, -EBADMSG, "mapped-ram: RAM block '%s' described twice", b->name);
    }
    uint32_t want = mr->checksum ? LM_MAPPED_RAM_VERSION_CHECKSUM : LM_MAPPED_RAM_VERSION;
    if (version != want) {
        return lm_error_set(err, -EINVAL, "mapped-ram: unsupported version %u for RAM block '%s' "
                            "(the stream %s checksums)", version, b->name,
                            mr->checksum ? "has" : "has no");
    }
    if (psize != b->page_size) {
        return lm_error_set(err, -EINVAL, "mapped-ram: RAM block '%s' saved with %u-byte pages, "
                            "this side has %u", b->name, psize, b->page_size);
    }
    if (*boff != pos) {
        return lm_error_set(err, -EBADMSG, "mapped-ram: bitmap of RAM block '%s' at offset %" PRIu64
                            ", expected %" PRIu64, b->name, *boff, pos);
    }
    uint64_t bmlen = bitmap_bytes(b) + (mr->checksum ? csum_table_bytes(b) : 0);
    if (*poff < *boff || *poff - *boff < bmlen || *poff % b->page_size) {
        return lm_error_set(err, -EBADMSG, "mapped-ram: pages of RAM block '%s' at offset %" PRIu64
                            " overlap its bitmap or are misaligned", b->name, *poff);
    }
    if (*poff > fsize || b->size > fsize - *poff) {
        return lm_error_set(err, -EBADMSG, "mapped-ram: the file is truncated: the pages of RAM "
                            "block '%s' end at offset %" PRIu64 ", the file has %" PRIu64 " bytes",
                            b->name, *poff + b->size, fsize);
    }
    *bi_out = bi;
    return 0;
}

int lm_mapped_ram_dst_load_block(lm_mapped_ram_dst *mr, lm_channel *ch, lm_error *err)
{
    uint8_t rec[LM_MAPPED_RAM_RECORD_LEN];
    uint64_t pos;
    if (lm_channel_get(ch, rec, sizeof(rec)) < 0 || lm_channel_tell(ch, &pos) < 0) {
        return lm_channel_error(ch, err);
    }
    int fd = lm_channel_fd(ch);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        return lm_error_set_errno(err, -errno, "mapped-ram: fstat");
    }
    uint16_t bi = 0;
    uint64_t boff, poff;
    int ret = check_record(mr, rec, pos, (uint64_t)st.st_size, &bi, &boff, &poff, err);
    if (ret < 0) {
        return ret;
    }
    lm_ram_block *b = mr->blocks[bi];
    uint64_t *map = NULL;
    ret = read_bitmap(fd, b, boff, &map, err);
    if (ret < 0) {
        return ret;
    }
    uint64_t *sums = NULL;
    if (mr->checksum) {
        ret = read_csum_table(fd, b, boff + bitmap_bytes(b), &sums, err);
        if (ret < 0) {
            lm_bitmap_free(map);
            return ret;
        }
    }
    load_ctx l = { .b = b, .map = map, .sums = sums, .fd = fd, .pages_off = poff };
    pthread_mutex_init(&l.lock, NULL);
    ret = load_pages(mr, &l, err);
    pthread_mutex_destroy(&l.lock);
    lm_bitmap_free(map);
    free(sums);
    if (ret < 0) {
        return ret;
    }
    mr->loaded[bi] = true;
    if (lm_channel_seek(ch, poff + b->size) < 0) {
        return lm_channel_error(ch, err);
    }
    return 0;
}
