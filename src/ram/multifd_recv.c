/*
 * Multifd, destination side: the receiver threads and the sync barrier
 * they share with the load thread.  See multifd.h.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zstd.h>

#include "channel/tls.h"
#include "channel/channel.h"
#include "common/failure.h"
#include "livemig/buffer.h"
#include "ram/filedest.h"
#include "ram/multifd.h"
#include "ram/ram_load.h"
#include "stream/checksum.h"
#include <inttypes.h>

typedef struct receiver {
    lm_multifd_dst *d;
    unsigned index;
    lm_channel *ch;
    pthread_t thread;
    bool started;
    uint64_t synced;    /* last SYNC read (d->lock) */
    bool ended;         /* END read (d->lock) */
    uint8_t table[LM_MULTIFD_MAX_RUNS * LM_MULTIFD_RUN_LEN];
    lm_multifd_run runs[LM_MULTIFD_MAX_RUNS];
    /* Checksums, uncompressed: the packet's page checksums and the one
     * over header, runs and those. */
    uint8_t sums[(LM_MULTIFD_MAX_PAYLOAD / 4096 + 1) * 8];
    ZSTD_DCtx *dctx;
    uint8_t *zbuf;
    size_t zcap;
    /* File-backed blocks: pages pass through here into the file. */
    uint8_t *scratch;
} receiver;

struct lm_multifd_dst {
    lm_ram_block **blocks;
    size_t nblocks;
    uint8_t compression;
    bool checksum;      /* MULTIFD_SETUP said DATA packets carry their xxh3 */
    void (*on_fail)(void *);
    void *opaque;
    pthread_mutex_t lock;
    lm_listener *accepting; /* while lm_multifd_dst_start waits for channels (lock) */
    pthread_cond_t cond;
    uint64_t released;  /* the load thread passed MULTIFD_SYNC this seq */
    bool stopping;
    int err_code;
    lm_error err;
    uint64_t pages, zero; /* atomics */
    unsigned n;
    receiver r[];
};

static void dst_fail(lm_multifd_dst *d, int code, const lm_error *err)
{
    pthread_mutex_lock(&d->lock);
    bool report = lm_failure_set_locked(&d->err_code, &d->err, code, err) && !d->stopping;
    if (d->accepting) {
        /* The load thread still waits for the other channels: a failed
         * one fails the load now, not when (if ever) they connect. */
        lm_listener_abort(d->accepting);
    }
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    if (report && d->on_fail) {
        d->on_fail(d->opaque);
    }
}

/* Decompresses the payload in r->zbuf[0, len) into the data runs, each
 * straight into guest memory, or through r->scratch into the file of a
 * file-backed block; the frame must fill them exactly. */
static int decompress_runs(receiver *r, unsigned nruns, size_t len, lm_error *err)
{
    ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
    ZSTD_inBuffer in = { r->zbuf, len, 0 };
    size_t last = 1;
    for (unsigned i = 0; i < nruns; i++) {
        lm_multifd_run *run = &r->runs[i];
        if (run->kind != LM_RAM_PAGES) {
            continue;
        }
        lm_ram_block *b = run->blk;
        bool file = lm_filedest_on(b);
        uint32_t per = file ? LM_FILEDEST_SCRATCH >> b->page_shift : run->count;
        for (uint32_t done = 0; done < run->count;) {
            uint32_t take = run->count - done < per ? run->count - done : per;
            size_t n = (size_t)take << b->page_shift;
            ZSTD_outBuffer out = { file ? (void *)r->scratch
                                        : lm_ram_load_data_begin(b, run->first + done), n, 0 };
            while (out.pos < out.size) {
                size_t before_in = in.pos, before_out = out.pos;
                last = ZSTD_decompressStream(r->dctx, &out, &in);
                if (ZSTD_isError(last)) {
                    return lm_error_set(err, -EBADMSG, "multifd channel %u: zstd: %s", r->index,
                                        ZSTD_getErrorName(last));
                }
                if (in.pos == before_in && out.pos == before_out) {
                    return lm_error_set(err, -EBADMSG,
                                        "multifd channel %u: compressed payload too short", r->index);
                }
            }
            if (file) {
                __atomic_store_n(&b->dest_used, true, __ATOMIC_RELAXED);
                int ret = lm_filedest_write_pages(b, run->first + done, r->scratch, take);
                if (ret < 0) {
                    return lm_error_set_errno(err, ret, "multifd channel %u: cannot write pages "
                                              "of RAM block '%s' into its backing file",
                                              r->index, b->name);
                }
            }
            lm_ram_load_mark(b, run->first + done, take);
            done += take;
        }
    }
    if (len && (last != 0 || in.pos != in.size)) {
        return lm_error_set(err, -EBADMSG, "multifd channel %u: compressed payload longer than its pages",
                            r->index);
    }
    return 0;
}

/* Reads a be64 checksum and compares: the bytes it covers were the
 * sender's own (header, runs, page checksums, a compressed payload), never
 * guest memory that may change under a live send, so a mismatch fails the
 * load at once. */
static int check_packet_csum(receiver *r, const lm_multifd_data_hdr *h, uint64_t sum, lm_error *err)
{
    uint64_t want;
    if (lm_channel_get_be64(r->ch, &want) < 0) {
        return lm_channel_error(r->ch, err);
    }
    if (sum != want) {
        const lm_multifd_run *run = &r->runs[0];
        return lm_error_set(err, -EBADMSG, "checksum mismatch: multifd channel %u, a packet of "
                            "%u runs from RAM block '%s' pages %" PRIu64 "-%" PRIu64 ": the stream "
                            "is corrupt", r->index, h->nruns, run->blk->name, run->first,
                            run->first + run->count - 1);
    }
    return 0;
}

/* Uncompressed with checksums: one be64 per data page (in run order),
 * then the checksum over header, runs and that table.  A page's own
 * checksum is judged as it lands: a live source may have changed it while
 * sending (then it sends it again), so a mismatch is held against the page
 * until a later record settles it, and fails the load at EOF. */
static int read_page_sums(receiver *r, const lm_multifd_data_hdr *h, lm_csum_state *st,
                          lm_error *err)
{
    size_t n = 0;
    for (unsigned i = 0; i < h->nruns; i++) {
        n += r->runs[i].kind == LM_RAM_PAGES ? r->runs[i].count : 0;
    }
    /* The runs carry at most LM_MULTIFD_MAX_PAYLOAD bytes of 4 KiB pages or more. */
    if (lm_channel_get(r->ch, r->sums, n * 8) < 0) {
        return lm_channel_error(r->ch, err);
    }
    lm_csum_update(st, r->sums, n * 8);
    return check_packet_csum(r, h, lm_csum_end(st), err);
}

static int recv_data(receiver *r, lm_error *err)
{
    lm_multifd_dst *d = r->d;
    uint8_t hb[LM_MULTIFD_DATA_HDR_LEN];
    lm_multifd_data_hdr h;
    if (lm_channel_get(r->ch, hb, sizeof(hb)) < 0) {
        return lm_channel_error(r->ch, err);
    }
    int ret = lm_multifd_data_hdr_parse(hb, d->compression, &h, err);
    if (ret < 0) {
        return ret;
    }
    if (lm_channel_get(r->ch, r->table, (size_t)h.nruns * LM_MULTIFD_RUN_LEN) < 0) {
        return lm_channel_error(r->ch, err);
    }
    uint64_t data;
    ret = lm_multifd_runs_parse(r->table, &h, d->blocks, d->nblocks, r->runs, &data, err);
    if (ret < 0) {
        return ret;
    }
    if (!(h.flags & LM_MULTIFD_FLAG_CSUM) != !d->checksum) {
        return lm_error_set(err, -EBADMSG, "multifd channel %u: a packet %s a checksum, but "
                            "MULTIFD_SETUP said %s", r->index, d->checksum ? "without" : "with",
                            d->checksum ? "every packet has one" : "none has");
    }
    lm_csum_state st;
    if (d->checksum) {
        lm_csum_begin(&st, 0);
        lm_csum_update(&st, hb, sizeof(hb));
        lm_csum_update(&st, r->table, (size_t)h.nruns * LM_MULTIFD_RUN_LEN);
    }
    if (d->checksum && d->compression != LM_MULTIFD_COMP_ZSTD) {
        ret = read_page_sums(r, &h, &st, err);
        if (ret < 0) {
            return ret;
        }
    } else if (d->checksum) {
        /* zstd: the header and runs seed the payload's checksum. */
        lm_csum_begin(&st, lm_csum_end(&st));
    }
    if (d->compression == LM_MULTIFD_COMP_ZSTD) {
        /* payload_len <= compressBound(LM_MULTIFD_MAX_PAYLOAD) = zcap, checked above. */
        if (lm_channel_get(r->ch, r->zbuf, h.payload_len) < 0) {
            return lm_channel_error(r->ch, err);
        }
        if (d->checksum) {
            /* The compressed bytes came from the sender's own buffer, never
             * from guest memory that changed under it: a mismatch is
             * corruption, and nothing is decompressed. */
            lm_csum_update(&st, r->zbuf, h.payload_len);
            ret = check_packet_csum(r, &h, lm_csum_end(&st), err);
            if (ret < 0) {
                return ret;
            }
        }
    }
    uint64_t pages = 0, zero = 0;
    const uint8_t *sum = r->sums;
    for (unsigned i = 0; i < h.nruns; i++) {
        lm_multifd_run *run = &r->runs[i];
        if (run->kind == LM_RAM_ZERO) {
            lm_ram_load_zero(run->blk, run->first, run->count);
            if (d->checksum) {
                lm_ram_load_csum_result(run->blk, run->first, run->count, true);
            }
            zero += run->count;
            continue;
        }
        pages += run->count;
        if (d->compression == LM_MULTIFD_COMP_ZSTD) {
            continue;
        }
        ret = lm_ram_load_data(run->blk, run->first, run->count, r->ch, r->scratch,
                               d->checksum ? sum : NULL, err);
        if (ret < 0) {
            return ret;
        }
        sum += d->checksum ? (size_t)run->count * 8 : 0;
    }
    if (d->compression == LM_MULTIFD_COMP_ZSTD) {
        ret = decompress_runs(r, h.nruns, h.payload_len, err);
        if (ret < 0) {
            return ret;
        }
    }
    __atomic_fetch_add(&d->pages, pages, __ATOMIC_RELAXED);
    __atomic_fetch_add(&d->zero, zero, __ATOMIC_RELAXED);
    return 0;
}

/* SYNC seq: wait until the load thread let every channel pass it. */
static int recv_sync(receiver *r, lm_error *err)
{
    lm_multifd_dst *d = r->d;
    uint64_t seq;
    if (lm_channel_get_be64(r->ch, &seq) < 0) {
        return lm_channel_error(r->ch, err);
    }
    pthread_mutex_lock(&d->lock);
    int ret = 0;
    if (seq != r->synced + 1) {
        ret = lm_error_set(err, -EBADMSG, "multifd channel %u: SYNC %llu after %llu", r->index,
                           (unsigned long long)seq, (unsigned long long)r->synced);
    } else {
        r->synced = seq;
        pthread_cond_broadcast(&d->cond);
        while (d->released < seq && !d->stopping && !d->err_code) {
            pthread_cond_wait(&d->cond, &d->lock);
        }
        if (d->released < seq) {
            ret = d->err_code ? d->err_code : -ECANCELED;
        }
    }
    pthread_mutex_unlock(&d->lock);
    return ret;
}

static void *receiver_thread(void *arg)
{
    receiver *r = arg;
    lm_multifd_dst *d = r->d;
    lm_error err = LM_ERROR_INIT;
    int ret = 0;
    for (;;) {
        uint8_t type;
        if (lm_channel_get_u8(r->ch, &type) < 0) {
            ret = lm_channel_error(r->ch, &err);
            break;
        }
        if (type == LM_MULTIFD_DATA) {
            ret = recv_data(r, &err);
        } else if (type == LM_MULTIFD_SYNC) {
            ret = recv_sync(r, &err);
        } else if (type == LM_MULTIFD_END) {
            break;
        } else {
            ret = lm_error_set(&err, -EBADMSG, "multifd channel %u: unknown packet type 0x%02x",
                               r->index, type);
        }
        if (ret < 0) {
            break;
        }
    }
    if (ret < 0) {
        dst_fail(d, ret, &err);
    }
    pthread_mutex_lock(&d->lock);
    r->ended = ret == 0;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

int lm_multifd_dst_sync(lm_multifd_dst *d, uint64_t seq, lm_error *err)
{
    pthread_mutex_lock(&d->lock);
    int ret = 0;
    if (seq != d->released + 1) {
        ret = lm_error_set(err, -EBADMSG, "MULTIFD_SYNC %llu after %llu", (unsigned long long)seq,
                           (unsigned long long)d->released);
        goto out;
    }
    for (;;) {
        if (d->err_code) {
            lm_error_propagate(err, &d->err);
            ret = d->err_code;
            goto out;
        }
        unsigned waiting = 0;
        for (unsigned i = 0; i < d->n; i++) {
            if (d->r[i].synced < seq) {
                if (d->r[i].ended) {
                    ret = lm_error_set(err, -EBADMSG, "multifd channel %u ended before SYNC %llu",
                                       i, (unsigned long long)seq);
                    goto out;
                }
                waiting++;
            }
        }
        if (!waiting) {
            break;
        }
        pthread_cond_wait(&d->cond, &d->lock);
    }
    d->released = seq;
    pthread_cond_broadcast(&d->cond);
out:
    pthread_mutex_unlock(&d->lock);
    return ret;
}

int lm_multifd_dst_finish(lm_multifd_dst *d, lm_error *err)
{
    pthread_mutex_lock(&d->lock);
    int ret = 0;
    for (;;) {
        if (d->err_code) {
            lm_error_propagate(err, &d->err);
            ret = d->err_code;
            break;
        }
        bool all = true;
        for (unsigned i = 0; i < d->n; i++) {
            all &= d->r[i].ended;
        }
        if (all) {
            break;
        }
        pthread_cond_wait(&d->cond, &d->lock);
    }
    pthread_mutex_unlock(&d->lock);
    return ret;
}

int lm_multifd_dst_error(lm_multifd_dst *d, lm_error *err)
{
    pthread_mutex_lock(&d->lock);
    int code = d->err_code;
    if (code) {
        lm_error_propagate(err, &d->err);
    }
    pthread_mutex_unlock(&d->lock);
    return code;
}

void lm_multifd_dst_stop(lm_multifd_dst *d)
{
    if (!d) {
        return;
    }
    pthread_mutex_lock(&d->lock);
    d->stopping = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    for (unsigned i = 0; i < d->n; i++) {
        if (d->r[i].started) {
            lm_channel_shutdown(d->r[i].ch, -ECANCELED, "multifd stopped");
            pthread_join(d->r[i].thread, NULL);
            d->r[i].started = false;
        }
    }
}

void lm_multifd_dst_cancel(lm_multifd_dst *d, int code, const char *why)
{
    /* Not dst_fail: the caller (cancel) holds the engine lock that
     * on_fail takes, and wakes the main channel itself. */
    lm_error e = LM_ERROR_INIT;
    lm_error_set(&e, code, "%s", why);
    pthread_mutex_lock(&d->lock);
    lm_failure_set_locked(&d->err_code, &d->err, code, &e);
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    for (unsigned i = 0; i < d->n; i++) {
        /* A channel is set before its thread starts and stays until free. */
        if (__atomic_load_n(&d->r[i].started, __ATOMIC_ACQUIRE)) {
            lm_channel_shutdown(d->r[i].ch, code, why);
        }
    }
}

void lm_multifd_dst_free(lm_multifd_dst *d)
{
    if (!d) {
        return;
    }
    lm_multifd_dst_stop(d);
    for (unsigned i = 0; i < d->n; i++) {
        lm_channel_close(d->r[i].ch, NULL);
        ZSTD_freeDCtx(d->r[i].dctx);
        free(d->r[i].zbuf);
        free(d->r[i].scratch);
    }
    pthread_mutex_destroy(&d->lock);
    pthread_cond_destroy(&d->cond);
    free(d);
}

void lm_multifd_dst_stats(const lm_multifd_dst *d, uint64_t *pages, uint64_t *zero, uint64_t *bytes)
{
    *pages = __atomic_load_n(&d->pages, __ATOMIC_RELAXED);
    *zero = __atomic_load_n(&d->zero, __ATOMIC_RELAXED);
    *bytes = 0;
    for (unsigned i = 0; i < d->n; i++) {
        /* Channels live until lm_multifd_dst_free. */
        if (d->r[i].ch) {
            *bytes += lm_channel_bytes_read(d->r[i].ch);
        }
    }
}

/* Accepts and starts the receivers; a failure leaves d->err_code unset
 * unless a receiver failed (see lm_multifd_dst_start). */
static int accept_channels(lm_multifd_dst *d, lm_listener *l, const lm_multifd_setup *setup,
                           unsigned handshake_ms, lm_error *err);

int lm_multifd_dst_start(lm_listener *l, const lm_multifd_setup *setup, lm_ram_block **blocks,
                         size_t nblocks, unsigned handshake_ms, void (*on_fail)(void *),
                         void *opaque, lm_multifd_dst **out, lm_error *err)
{
    unsigned n = setup->channels;
    lm_multifd_dst *d = calloc(1, sizeof(*d) + n * sizeof(receiver));
    *out = d;
    if (!d) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    d->blocks = blocks;
    d->nblocks = nblocks;
    d->compression = setup->compression;
    d->checksum = setup->flags & LM_MULTIFD_SETUP_CHECKSUM;
    d->on_fail = on_fail;
    d->opaque = opaque;
    d->n = n;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, NULL);
    pthread_mutex_lock(&d->lock);
    d->accepting = l;
    pthread_mutex_unlock(&d->lock);
    lm_error aerr = LM_ERROR_INIT;
    int ret = accept_channels(d, l, setup, handshake_ms, &aerr);
    pthread_mutex_lock(&d->lock);
    d->accepting = NULL;
    if (ret < 0 && d->err_code) {
        /* A receiver failed and aborted the accept: its error is the cause. */
        ret = d->err_code;
        lm_error_propagate(err, &d->err);
    } else if (ret < 0) {
        lm_error_propagate(err, &aerr);
    }
    pthread_mutex_unlock(&d->lock);
    return ret;
}

static int accept_channels(lm_multifd_dst *d, lm_listener *l, const lm_multifd_setup *setup,
                           unsigned handshake_ms, lm_error *err)
{
    unsigned n = d->n;
    /* The source connects them right after MULTIFD_SETUP, before any other
     * connection (a postcopy preempt one comes after ADVISE); their hellos
     * say which is which.  A connection is taken once its whole hello has
     * arrived, so the read below never blocks: cancel and a failing
     * receiver reach every wait here through the listener. */
    for (unsigned k = 0; k < n; k++) {
        int fd, pid;
        int ret = lm_listener_accept_ready(l, LM_MULTIFD_HELLO_LEN, handshake_ms, &fd, &pid, err);
        if (ret < 0) {
            return ret;
        }
        lm_channel *ch = lm_channel_new(fd, "incoming multifd channel", NULL);
        if (!ch) {
            close(fd);
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        uint8_t hb[LM_MULTIFD_HELLO_LEN];
        lm_multifd_hello h;
        ret = lm_tls_server(ch, l, err);
        if (ret == 0) {
            ret = lm_channel_get(ch, hb, sizeof(hb)) < 0 ? lm_channel_error(ch, err) : 0;
        }
        if (ret == 0) {
            ret = lm_multifd_hello_parse(hb, (uint16_t)n, setup->id, &h, err);
        }
        if (ret == 0 && d->r[h.index].ch) {
            ret = lm_error_set(err, -EBADMSG, "multifd channel %u connected twice", h.index);
        }
        if (ret < 0) {
            lm_channel_close(ch, NULL);
            return ret;
        }
        receiver *r = &d->r[h.index];
        r->d = d;
        r->index = h.index;
        r->ch = ch;
        if (d->compression == LM_MULTIFD_COMP_ZSTD) {
            r->dctx = ZSTD_createDCtx();
            r->zcap = ZSTD_compressBound(LM_MULTIFD_MAX_PAYLOAD);
            r->zbuf = malloc(r->zcap);
            if (!r->dctx || !r->zbuf) {
                return lm_error_set(err, -ENOMEM, "out of memory");
            }
        }
        for (size_t b = 0; b < d->nblocks && !r->scratch; b++) {
            if (lm_filedest_on(d->blocks[b]) && !(r->scratch = lm_ram_load_scratch_new())) {
                return lm_error_set(err, -ENOMEM, "out of memory");
            }
        }
        int rc = pthread_create(&r->thread, NULL, receiver_thread, r);
        if (rc) {
            return lm_error_set(err, -rc, "cannot create a multifd receiver thread");
        }
        __atomic_store_n(&r->started, true, __ATOMIC_RELEASE);
    }
    return 0;
}
