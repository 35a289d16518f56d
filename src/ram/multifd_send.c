/*
 * Multifd, source side: the sender threads and the migration thread's
 * half (claiming dirty runs into jobs, syncs).  See multifd.h.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zstd.h>

#include "channel/tls.h"
#include "channel/channel.h"
#include "common/failure.h"
#include "common/util.h"
#include "livemig/buffer.h"
#include "ram/multifd.h"
#include "stream/checksum.h"

/* One job: what the migration thread hands a sender at once. */
#define JOB_RUNS 128
#define JOB_BYTES (2u << 20)

typedef struct job_run {
    uint8_t kind;
    lm_ram_block *blk;
    uint64_t first;
    uint32_t count;
} job_run;

typedef struct job {
    job_run runs[JOB_RUNS];
    unsigned nruns;
    uint64_t bytes;
} job;

typedef struct sender {
    lm_multifd_src *mf;
    unsigned index;
    lm_channel *ch;
    pthread_t thread;
    bool started;
    bool busy;          /* a job is handed over and not yet written (mf->lock) */
    job job;
    /* The packet being built: its header and run table, then the data. */
    uint8_t table[1 + LM_MULTIFD_DATA_HDR_LEN + LM_MULTIFD_MAX_RUNS * LM_MULTIFD_RUN_LEN];
    /* header and runs, [page checksums], data, [zstd: checksum] */
    struct iovec iov[1 + 1 + LM_MULTIFD_MAX_RUNS + 1];
    uint8_t csum[LM_MULTIFD_CSUM_LEN];
    lm_csum_state st;
    uint8_t sums[(LM_MULTIFD_MAX_PAYLOAD / 4096 + 1) * 8]; /* uncompressed */
    lm_ram_block *data_blk[LM_MULTIFD_MAX_RUNS]; /* the block of iov[1 + i] */
    uint64_t data_first[LM_MULTIFD_MAX_RUNS];     /* ... and its first page */
    uint8_t *bounce;    /* checksums: file-backed pages read from their file */
    unsigned nruns;
    unsigned ndata;
    uint64_t data_bytes;
    ZSTD_CCtx *cctx;
    uint8_t *zbuf;
    size_t zcap;
} sender;

struct lm_multifd_src {
    lm_multifd_src_cfg cfg;
    lm_ram_saver *saver;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool quit;
    int err_code;       /* first sender error (mf->lock) */
    lm_error err;
    job cur;            /* being filled by the migration thread */
    bool sent_since_sync;
    uint64_t sync_seq;
    unsigned next;      /* round robin start */
    uint64_t bytes;     /* atomic */
    uint64_t zc_missed; /* atomic */
    unsigned n;
    sender s[];
};

/* The first failure sticks; notify: tell the embedder's on_fail (not when
 * the caller is the one stopping everything, e.g. cancel under its lock). */
static void fail(lm_multifd_src *mf, int code, const lm_error *err, bool notify)
{
    bool first = lm_failure_record(&mf->lock, &mf->cond, &mf->err_code, &mf->err, code, err);
    if (first && notify && mf->cfg.on_fail) {
        mf->cfg.on_fail(mf->cfg.opaque);
    }
}

/* mf->lock held */
static int failed(lm_multifd_src *mf, lm_error *err)
{
    if (mf->err_code && err) {
        lm_error_propagate(err, &mf->err);
    }
    return mf->err_code;
}

/* Unmapped sends are for the plain path only: checksums hash the pages
 * from the mapping (and send them from there while they are still in the
 * cache), compression and MSG_ZEROCOPY need them mapped. */
static bool unmapped_send(const lm_multifd_src *mf)
{
    return !mf->cfg.checksum && !mf->cfg.zero_copy && mf->cfg.compression == LM_MULTIFD_COMP_NONE;
}

/* A file-backed block's pages go from the page cache (sendfile), unread. */
static bool from_file(const lm_multifd_src *mf, const lm_ram_block *blk)
{
    return unmapped_send(mf) && lm_ram_block_has_fd(blk);
}

/* An anonymous block's pages go by reference (lm_channel_put_mem: into a
 * unix socket they are never read through this process's mapping, whose
 * first touch of a page costs this host more than sending it). */
static bool by_reference(const lm_multifd_src *mf, const lm_ram_block *blk)
{
    return unmapped_send(mf) && !lm_ram_block_has_fd(blk);
}

/* The packet's header and table in iov[0], then its data: runs of mapped
 * memory in one writev, file-backed runs with sendfile, long anonymous
 * runs by reference. */
static int send_plain(sender *s, int niov)
{
    int pending = 0;
    for (int i = 1; i < niov; i++) {
        lm_ram_block *b = s->data_blk[i - 1];
        int ret;
        if (from_file(s->mf, b)) {
            uint64_t off = b->fd_offset + (uint64_t)((uint8_t *)s->iov[i].iov_base - b->host);
            ret = lm_channel_put_file(s->ch, s->iov + pending, i - pending, b->fd, off,
                                      s->iov[i].iov_base, s->iov[i].iov_len);
        } else if (by_reference(s->mf, b) && lm_channel_mem_by_reference(s->ch, s->iov[i].iov_len)) {
            ret = lm_channel_put_mem(s->ch, s->iov + pending, i - pending, s->iov[i].iov_base,
                                     s->iov[i].iov_len);
        } else {
            continue;
        }
        if (ret < 0) {
            return ret;
        }
        pending = i + 1;
    }
    return pending < niov ? lm_channel_put_ext(s->ch, s->iov + pending, niov - pending) : 0;
}

static int write_packet(sender *s)
{
    if (!s->nruns) {
        return 0;
    }
    lm_multifd_src *mf = s->mf;
    lm_multifd_data_hdr h = { .nruns = (uint16_t)s->nruns };
    size_t tlen = 1 + LM_MULTIFD_DATA_HDR_LEN + (size_t)s->nruns * LM_MULTIFD_RUN_LEN;
    int niov = 1 + (int)s->ndata;
    if (mf->cfg.compression == LM_MULTIFD_COMP_ZSTD) {
        h.flags = LM_MULTIFD_FLAG_ZSTD;
        ZSTD_outBuffer out = { s->zbuf, s->zcap, 0 };
        ZSTD_CCtx_reset(s->cctx, ZSTD_reset_session_only);
        for (unsigned i = 0; i < s->ndata; i++) {
            ZSTD_inBuffer in = { s->iov[1 + i].iov_base, s->iov[1 + i].iov_len, 0 };
            ZSTD_EndDirective mode = i + 1 == s->ndata ? ZSTD_e_end : ZSTD_e_continue;
            for (;;) {
                size_t r = ZSTD_compressStream2(s->cctx, &out, &in, mode);
                if (ZSTD_isError(r)) {
                    return lm_channel_set_error(s->ch, -EIO, "multifd channel %u: zstd: %s",
                                                s->index, ZSTD_getErrorName(r));
                }
                if (mode == ZSTD_e_end ? r == 0 : in.pos == in.size) {
                    break;
                }
            }
        }
        h.payload_len = (uint32_t)out.pos;
        s->iov[1] = (struct iovec){ s->zbuf, out.pos };
        niov = out.pos ? 2 : 1;
    } else {
        h.payload_len = (uint32_t)s->data_bytes;
    }
    if (mf->cfg.checksum) {
        h.flags |= LM_MULTIFD_FLAG_CSUM;
    }
    s->table[0] = LM_MULTIFD_DATA;
    lm_multifd_data_hdr_encode(&h, s->table + 1);
    s->iov[0] = (struct iovec){ s->table, tlen };
    if (mf->cfg.checksum && mf->cfg.compression == LM_MULTIFD_COMP_ZSTD) {
        /* The compressed payload (the sender's own buffer), seeded with
         * the header and run table, after the payload. */
        lm_csum_begin(&s->st, lm_csum_seed(s->table + 1, tlen - 1));
        lm_csum_update(&s->st, s->zbuf, s->iov[1].iov_len * (niov > 1));
        lm_store_be64(s->csum, lm_csum_end(&s->st));
        s->iov[niov++] = (struct iovec){ s->csum, sizeof(s->csum) };
    } else if (mf->cfg.checksum) {
        /* Each data page's own checksum (a page the guest changes while it
         * is read is sent again later and settles alone), then one over
         * header, runs and that table, before the data. */
        size_t n = 0;
        for (int i = 1; i < niov; i++) {
            const lm_ram_block *b = s->data_blk[i - 1];
            const uint8_t *base = s->iov[i].iov_base;
            uint64_t first = s->data_first[i - 1];
            for (size_t off = 0; off < s->iov[i].iov_len; off += b->page_size, n++) {
                lm_store_be64(s->sums + n * 8, lm_csum_page(base + off, b->page_size,
                                                            first + (off >> b->page_shift)));
            }
        }
        lm_csum_begin(&s->st, 0);
        lm_csum_update(&s->st, s->table + 1, tlen - 1);
        lm_csum_update(&s->st, s->sums, n * 8);
        lm_store_be64(s->sums + n * 8, lm_csum_end(&s->st));
        memmove(s->iov + 2, s->iov + 1, (size_t)(niov - 1) * sizeof(s->iov[0]));
        s->iov[1] = (struct iovec){ s->sums, n * 8 + 8 };
        niov++;
    }
    uint64_t total = 0;
    for (int i = 0; i < niov; i++) {
        total += s->iov[i].iov_len;
    }
    s->nruns = s->ndata = 0;
    s->data_bytes = 0;
    int ret;
    if (mf->cfg.zero_copy) {
        /* The header is rebuilt for the next packet at once: it goes
         * copied; the pages go straight from guest RAM, and the kernel
         * holds on to them until the next sync's flush. */
        lm_channel_put(s->ch, s->table, tlen);
        ret = lm_channel_put_ext_zerocopy(s->ch, s->iov + 1, niov - 1);
        if (ret == 0 && niov == 1) {
            ret = lm_channel_flush(s->ch);
        }
    } else if (mf->cfg.compression == LM_MULTIFD_COMP_ZSTD) {
        ret = lm_channel_put_ext(s->ch, s->iov, niov);
    } else {
        ret = send_plain(s, niov);
    }
    if (ret == 0) {
        __atomic_fetch_add(&mf->bytes, total, __ATOMIC_RELAXED);
    }
    return ret;
}

static int read_file(const lm_ram_block *blk, uint64_t first, uint8_t *dst, size_t len)
{
    uint64_t off = blk->fd_offset + (first << blk->page_shift);
    for (size_t done = 0; done < len;) {
        ssize_t n = pread(blk->fd, dst + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return n < 0 ? -errno : -EIO;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Adds one run of a kind to the packet, writing the packet first when the
 * run does not fit. */
static int add_run(void *opaque, uint8_t kind, lm_ram_block *blk, uint64_t first, uint32_t count)
{
    sender *s = opaque;
    uint64_t len = kind == LM_RAM_PAGES ? (uint64_t)count << blk->page_shift : 0;
    if (s->nruns == LM_MULTIFD_MAX_RUNS || s->data_bytes + len > LM_MULTIFD_MAX_PAYLOAD) {
        int ret = write_packet(s);
        if (ret < 0) {
            return ret;
        }
    }
    lm_ram_save_count(s->mf->saver, kind, blk, count);
    uint8_t *r = s->table + 1 + LM_MULTIFD_DATA_HDR_LEN + (size_t)s->nruns * LM_MULTIFD_RUN_LEN;
    lm_multifd_run_encode(r, kind, (uint16_t)blk->idx, first, count);
    s->nruns++;
    if (len) {
        void *data = lm_ram_block_page(blk, first);
        if (s->mf->cfg.checksum && lm_ram_block_has_fd(blk)) {
            /* Read through the mapping, the pages would be mapped, which
             * the dirty tracker takes for writes: read the file instead
             * (the packet's data fits the bounce buffer: at most
             * LM_MULTIFD_MAX_PAYLOAD). */
            data = s->bounce + s->data_bytes;
            int ret = read_file(blk, first, data, (size_t)len);
            if (ret < 0) {
                return lm_channel_set_error(s->ch, ret, "cannot read RAM block '%s' from its "
                                            "file", blk->name);
            }
        }
        s->data_blk[s->ndata] = blk;
        s->data_first[s->ndata] = first;
        s->iov[1 + s->ndata++] = (struct iovec){ data, (size_t)len };
        s->data_bytes += len;
    }
    return 0;
}

static int send_job(sender *s)
{
    lm_multifd_src *mf = s->mf;
    int ret = 0;
    for (unsigned i = 0; i < s->job.nruns && ret == 0; i++) {
        job_run *r = &s->job.runs[i];
        if (r->kind == LM_RAM_PAGES && mf->cfg.zero == LM_ZERO_MULTIFD && !from_file(mf, r->blk)) {
            /* Probed through the kernel only where the pages then go
             * unread (by reference); over tcp the send reads them anyway. */
            bool probe = by_reference(mf, r->blk) &&
                         lm_channel_mem_by_reference(s->ch, LM_CHANNEL_BY_REFERENCE_MIN);
            ret = (probe ? lm_ram_save_split_probed : lm_ram_save_split)(
                mf->saver, r->blk, r->first, r->first + r->count, LM_SPLIT_READ_SHARED, add_run, s);
        } else {
            ret = add_run(s, r->kind, r->blk, r->first, r->count);
        }
    }
    if (ret == 0) {
        ret = write_packet(s);
    }
    return ret;
}

static void *sender_thread(void *arg)
{
    sender *s = arg;
    lm_multifd_src *mf = s->mf;
    if (mf->cfg.threads) {
        lm_thread_list_add(mf->cfg.threads, "mig/src/send_%u", s->index); /* QEMU's name */
    }
    for (;;) {
        pthread_mutex_lock(&mf->lock);
        while (!s->busy && !mf->quit) {
            pthread_cond_wait(&mf->cond, &mf->lock);
        }
        bool quit = mf->quit;
        pthread_mutex_unlock(&mf->lock);
        if (quit) {
            if (mf->cfg.threads) {
                lm_thread_list_remove(mf->cfg.threads);
            }
            return NULL;
        }
        int ret = send_job(s);
        if (ret < 0) {
            lm_error err = LM_ERROR_INIT;
            lm_channel_error(s->ch, &err);
            fail(mf, ret, &err, true);
        }
        pthread_mutex_lock(&mf->lock);
        s->busy = false;
        s->job.nruns = 0;
        s->job.bytes = 0;
        pthread_cond_broadcast(&mf->cond);
        pthread_mutex_unlock(&mf->lock);
        if (ret < 0) {
            if (mf->cfg.threads) {
                lm_thread_list_remove(mf->cfg.threads);
            }
            return NULL;
        }
    }
}

/* Hands mf->cur to an idle sender (waits for one). */
static int dispatch(lm_multifd_src *mf, lm_error *err)
{
    if (!mf->cur.nruns) {
        return 0;
    }
    pthread_mutex_lock(&mf->lock);
    sender *idle = NULL;
    while (!mf->err_code) {
        for (unsigned i = 0; i < mf->n && !idle; i++) {
            sender *s = &mf->s[(mf->next + i) % mf->n];
            if (!s->busy) {
                idle = s;
            }
        }
        if (idle) {
            break;
        }
        pthread_cond_wait(&mf->cond, &mf->lock);
    }
    int ret = failed(mf, err);
    if (ret == 0) {
        idle->job = mf->cur;
        idle->busy = true;
        mf->next = (idle->index + 1) % mf->n;
        mf->sent_since_sync = true;
        pthread_cond_broadcast(&mf->cond);
    }
    pthread_mutex_unlock(&mf->lock);
    mf->cur.nruns = 0;
    mf->cur.bytes = 0;
    return ret;
}

typedef struct job_fill {
    lm_multifd_src *mf;
    lm_error *err;
} job_fill;

static int add_to_job(void *opaque, uint8_t kind, lm_ram_block *blk, uint64_t first, uint32_t count)
{
    job_fill *f = opaque;
    lm_multifd_src *mf = f->mf;
    mf->cur.runs[mf->cur.nruns++] = (job_run){ kind, blk, first, count };
    if (kind == LM_RAM_PAGES) {
        mf->cur.bytes += (uint64_t)count << blk->page_shift;
    }
    if (mf->cur.nruns == JOB_RUNS || mf->cur.bytes >= JOB_BYTES) {
        return dispatch(mf, f->err);
    }
    return 0;
}

int lm_multifd_src_send(lm_multifd_src *mf, uint64_t budget, bool *pass_done, lm_error *err)
{
    static const enum lm_zero_split how[] = {
        [LM_ZERO_NONE] = LM_SPLIT_NONE,
        [LM_ZERO_LEGACY] = LM_SPLIT_READ,
        [LM_ZERO_MULTIFD] = LM_SPLIT_HINT,
    };
    job_fill f = { mf, err };
    uint64_t done = 0;
    int ret = 0;
    *pass_done = false;
    while (done < budget && ret == 0) {
        lm_ram_block *blk;
        uint64_t p, q;
        uint64_t room = JOB_BYTES - LM_MIN(mf->cur.bytes, (uint64_t)JOB_BYTES);
        if (!lm_ram_save_claim(mf->saver, LM_MIN(budget - done, room), &blk, &p, &q)) {
            *pass_done = true;
            break;
        }
        done += (q - p) << blk->page_shift;
        /* File-backed blocks: zeros are the file's holes (the hint). */
        enum lm_zero_split mode = how[mf->cfg.zero];
        if (mode != LM_SPLIT_NONE && from_file(mf, blk)) {
            mode = LM_SPLIT_HINT;
        }
        ret = lm_ram_save_split(mf->saver, blk, p, q, mode, add_to_job, &f);
    }
    if (ret == 0) {
        ret = dispatch(mf, err);
    }
    return ret;
}

static int wait_idle(lm_multifd_src *mf, lm_error *err)
{
    pthread_mutex_lock(&mf->lock);
    for (;;) {
        bool busy = false;
        for (unsigned i = 0; i < mf->n; i++) {
            busy |= mf->s[i].busy;
        }
        if (!busy || mf->err_code) {
            break;
        }
        pthread_cond_wait(&mf->cond, &mf->lock);
    }
    int ret = failed(mf, err);
    pthread_mutex_unlock(&mf->lock);
    return ret;
}

/* Every sender idle: waits until the kernel let go of every page sent
 * with MSG_ZEROCOPY, so none of this pass is still referenced when it
 * ends.  Like QEMU, each channel whose completions all said "copied" adds
 * one to dirty-sync-missed-zero-copy. */
static int flush_zero_copy(lm_multifd_src *mf, lm_error *err)
{
    if (!mf->cfg.zero_copy) {
        return 0;
    }
    for (unsigned i = 0; i < mf->n; i++) {
        lm_channel *ch = mf->s[i].ch;
        bool missed;
        if (lm_channel_zerocopy_flush(ch, &missed) < 0) {
            return lm_channel_error(ch, err);
        }
        if (missed) {
            __atomic_fetch_add(&mf->zc_missed, 1, __ATOMIC_RELAXED);
        }
    }
    return 0;
}

/* Every sender idle: the migration thread may write on their channels. */
static int put_all(lm_multifd_src *mf, uint8_t type, const uint64_t *seq, lm_error *err)
{
    for (unsigned i = 0; i < mf->n; i++) {
        lm_channel *ch = mf->s[i].ch;
        lm_channel_put_u8(ch, type);
        if (seq) {
            lm_channel_put_be64(ch, *seq);
        }
        if (lm_channel_flush(ch) < 0) {
            return lm_channel_error(ch, err);
        }
        __atomic_fetch_add(&mf->bytes, seq ? 9 : 1, __ATOMIC_RELAXED);
    }
    return 0;
}

int lm_multifd_src_sync(lm_multifd_src *mf, uint64_t *seq, lm_error *err)
{
    *seq = 0;
    int ret = dispatch(mf, err);
    if (ret == 0) {
        ret = wait_idle(mf, err);
    }
    if (ret == 0) {
        ret = flush_zero_copy(mf, err);
    }
    if (ret < 0 || !mf->sent_since_sync) {
        return ret;
    }
    mf->sent_since_sync = false;
    *seq = ++mf->sync_seq;
    return put_all(mf, LM_MULTIFD_SYNC, seq, err);
}

static void stop_threads(lm_multifd_src *mf)
{
    pthread_mutex_lock(&mf->lock);
    mf->quit = true;
    pthread_cond_broadcast(&mf->cond);
    pthread_mutex_unlock(&mf->lock);
    for (unsigned i = 0; i < mf->n; i++) {
        if (mf->s[i].started) {
            pthread_join(mf->s[i].thread, NULL);
            mf->s[i].started = false;
        }
    }
}

int lm_multifd_src_finish(lm_multifd_src *mf, lm_error *err)
{
    int ret = wait_idle(mf, err);
    if (ret == 0) {
        ret = flush_zero_copy(mf, err);
    }
    if (ret == 0) {
        ret = put_all(mf, LM_MULTIFD_END, NULL, err);
    }
    stop_threads(mf);
    return ret;
}

void lm_multifd_src_shutdown(lm_multifd_src *mf, int code, const char *why)
{
    for (unsigned i = 0; i < mf->n; i++) {
        if (mf->s[i].ch) {
            lm_channel_shutdown(mf->s[i].ch, code, why);
        }
    }
    fail(mf, code, NULL, false);
}

int lm_multifd_src_error(lm_multifd_src *mf, lm_error *err)
{
    pthread_mutex_lock(&mf->lock);
    int code = lm_error_is_set(&mf->err) ? failed(mf, err) : 0;
    pthread_mutex_unlock(&mf->lock);
    return code;
}

void lm_multifd_src_free(lm_multifd_src *mf)
{
    if (!mf) {
        return;
    }
    for (unsigned i = 0; i < mf->n; i++) {
        if (mf->s[i].ch && mf->s[i].started) {
            lm_channel_shutdown(mf->s[i].ch, -ECANCELED, "multifd stopped");
        }
    }
    stop_threads(mf);
    for (unsigned i = 0; i < mf->n; i++) {
        lm_channel_close(mf->s[i].ch, NULL);
        ZSTD_freeCCtx(mf->s[i].cctx);
        free(mf->s[i].zbuf);
        free(mf->s[i].bounce);
    }
    pthread_mutex_destroy(&mf->lock);
    pthread_cond_destroy(&mf->cond);
    free(mf);
}

uint64_t lm_multifd_src_bytes(const lm_multifd_src *mf)
{
    return __atomic_load_n(&mf->bytes, __ATOMIC_RELAXED);
}

uint64_t lm_multifd_src_zc_missed(const lm_multifd_src *mf)
{
    return __atomic_load_n(&mf->zc_missed, __ATOMIC_RELAXED);
}

void lm_multifd_src_zc_stats(const lm_multifd_src *mf, uint64_t *sends, uint64_t *copied)
{
    *sends = *copied = 0;
    for (unsigned i = 0; i < mf->n; i++) {
        uint64_t a, b;
        /* The engine publishes mf once every channel is open. */
        if (mf->s[i].ch) {
            lm_channel_zerocopy_stats(mf->s[i].ch, &a, &b);
            *sends += a;
            *copied += b;
        }
    }
}

static int open_channel(lm_multifd_src *mf, sender *s, const uint8_t *id, lm_error *err)
{
    int fd, pid;
    int ret = lm_transport_connect(mf->cfg.uri, &fd, &pid, mf->cfg.should_abort, mf->cfg.opaque, err);
    if (ret < 0) {
        return ret;
    }
    char name[32];
    snprintf(name, sizeof(name), "multifd channel %u", s->index);
    s->ch = lm_channel_new(fd, name, mf->cfg.rl);
    if (!s->ch) {
        close(fd);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    ret = lm_tls_client(s->ch, mf->cfg.uri, err);
    if (ret < 0) {
        return ret;
    }
    if (mf->cfg.zero_copy) {
        ret = lm_channel_enable_zerocopy(s->ch, err);
        if (ret < 0) {
            return ret;
        }
    }
    if (mf->cfg.checksum && !(s->bounce = malloc(LM_MULTIFD_MAX_PAYLOAD))) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    if (mf->cfg.compression == LM_MULTIFD_COMP_ZSTD) {
        s->cctx = ZSTD_createCCtx();
        s->zcap = ZSTD_compressBound(LM_MULTIFD_MAX_PAYLOAD);
        s->zbuf = malloc(s->zcap);
        if (!s->cctx || !s->zbuf) {
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        ZSTD_CCtx_setParameter(s->cctx, ZSTD_c_compressionLevel, mf->cfg.zstd_level);
    }
    uint8_t hello[LM_MULTIFD_HELLO_LEN];
    lm_multifd_hello h = { .index = (uint16_t)s->index, .channels = (uint16_t)mf->n };
    memcpy(h.id, id, LM_MULTIFD_ID_LEN);
    lm_multifd_hello_encode(&h, hello);
    lm_channel_put(s->ch, hello, sizeof(hello));
    if (lm_channel_flush(s->ch) < 0) {
        return lm_channel_error(s->ch, err);
    }
    return 0;
}

int lm_multifd_src_start(const lm_multifd_src_cfg *cfg, lm_ram_saver *saver,
                         const uint8_t id[LM_MULTIFD_ID_LEN], lm_multifd_src **out, lm_error *err)
{
    *out = NULL;
    if (cfg->channels == 0 || cfg->channels > LM_MULTIFD_MAX_CHANNELS) {
        return lm_error_set(err, -EINVAL, "multifd-channels must be 1..%u", LM_MULTIFD_MAX_CHANNELS);
    }
    for (size_t i = 0; i < saver->nblocks; i++) {
        if (saver->blocks[i]->page_size > LM_MULTIFD_MAX_PAYLOAD / 2) {
            return lm_error_set(err, -EINVAL, "multifd: block '%s' has pages too large (%zu bytes)",
                                saver->blocks[i]->name, (size_t)saver->blocks[i]->page_size);
        }
    }
    lm_multifd_src *mf = calloc(1, sizeof(*mf) + cfg->channels * sizeof(sender));
    if (!mf) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    mf->cfg = *cfg;
    mf->saver = saver;
    mf->n = cfg->channels;
    pthread_mutex_init(&mf->lock, NULL);
    pthread_cond_init(&mf->cond, NULL);
    *out = mf; /* the caller frees it, whatever happens */
    for (unsigned i = 0; i < mf->n; i++) {
        mf->s[i].mf = mf;
        mf->s[i].index = i;
    }
    for (unsigned i = 0; i < mf->n; i++) {
        int ret = open_channel(mf, &mf->s[i], id, err);
        if (ret < 0) {
            return ret;
        }
        int rc = pthread_create(&mf->s[i].thread, NULL, sender_thread, &mf->s[i]);
        if (rc) {
            return lm_error_set(err, -rc, "cannot create a multifd sender thread");
        }
        mf->s[i].started = true;
    }
    return 0;
}
