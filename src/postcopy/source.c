#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "channel/tls.h"
#include "common/bitmap.h"
#include "common/clock.h"
#include "common/failure.h"
#include "common/util.h"
#include "livemig/buffer.h"
#include "postcopy/postcopy.h"
#include "postcopy/return_path.h"
#include "postcopy/source.h"
#include "postcopy/trace.h"
#include "stream/stream.h"

/* Background data per RAM section: small while requested pages are
 * served on the main channel (no preempt yet), so they never wait behind
 * much; larger once the preempt channel carries them.  Each slice is one
 * send, and each send wakes the destination's reader: at 256 KiB that
 * was 4096 wake-ups (and preemptions of this thread) per GiB on a busy
 * host; requested pages go out ahead of the slice's bulk, flushed on
 * their own (lm_pc_src_run), so they do not wait for it. */
#define PC_SLICE_BYTES (1u << 20)
#define PC_SLICE_PREEMPT_BYTES (4u << 20)
/* One background run (one record, as precopy's) covers at most this much
 * guest RAM, and at least one host page. */
#define PC_RUN_BYTES (1u << 20)
/* Requests waiting; more are dropped (the page still comes as background). */
#define QUEUE_MAX 65536u
/* THP host pages waiting for the main channel after their requested
 * page went alone; more are sent whole on the preempt connection. */
#define PRIO_MAX 256u
/* One request covers at most this many host pages. */
#define REQ_MAX_HOSTPAGES 64u

typedef struct pc_req {
    uint32_t block;
    uint64_t first; /* first page of a host page */
    uint64_t page;  /* the page the destination faulted on: sent first */
} pc_req;

struct lm_pc_src {
    lm_pc_src_ctx ctx;
    lm_ram_saver *s;      /* ctx.saver */
    lm_uri uri;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    pc_req *q;
    size_t qhead, qlen;
    bool stopping;
    bool rp_done;
    bool shut_seen;
    uint32_t shut_status;
    bool pong_seen;       /* the last PONG's value, for lm_pc_src_wait_pong */
    uint32_t pong_value;
    /* A helper thread lost its connection (common/failure.h): the first
     * failure sticks, unless it came while stopping. */
    int fail_code;
    lm_error fail_err;
    bool pre_up;          /* the preempt channel is connected */
    bool eof_sent;        /* every page is out: only the return path matters now */
    /* THP host pages whose requested page went out alone on the preempt
     * connection: the main channel sends them whole before its next
     * background slice. */
    pc_req prio[PRIO_MAX];
    size_t prio_len;
    lm_channel *pre;

    lm_channel *rp;
    pthread_t rp_thread;
    bool rp_running;
    pthread_t pre_thread;
    bool pre_running;
    struct lm_ram_batch *main_batch, *pre_batch;
    size_t cur_block;
    uint64_t cur_page;
    lm_pc_trace *trace;   /* LIVEMIG_POSTCOPY_TRACE, else NULL */
};

lm_pc_src *lm_pc_src_new(const lm_pc_src_ctx *ctx)
{
    lm_pc_src *p = calloc(1, sizeof(*p));
    if (!p) {
        return NULL;
    }
    p->q = calloc(QUEUE_MAX, sizeof(*p->q));
    p->main_batch = lm_ram_batch_new();
    p->pre_batch = lm_ram_batch_new();
    if (!p->q || !p->main_batch || !p->pre_batch) {
        free(p->q);
        lm_ram_batch_free(p->main_batch);
        lm_ram_batch_free(p->pre_batch);
        free(p);
        return NULL;
    }
    p->ctx = *ctx;
    p->s = ctx->saver;
    p->trace = lm_pc_trace_open("src");
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    return p;
}

void lm_pc_src_free(lm_pc_src *p)
{
    if (!p) {
        return;
    }
    lm_pc_src_stop(p);
    free(p->q);
    lm_ram_batch_free(p->main_batch);
    lm_ram_batch_free(p->pre_batch);
    lm_pc_trace_close(p->trace);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static bool cancelled(lm_pc_src *p)
{
    return p->ctx.hooks.cancelled(p->ctx.hooks.opaque);
}

/* A helper thread failed: remember why and wake the migration thread,
 * which may be blocked writing the main channel.  Once stopping, a
 * broken connection is what stopping does, no failure. */
static void fail(lm_pc_src *p, const lm_error *err)
{
    pthread_mutex_lock(&p->lock);
    bool first = !p->stopping && lm_failure_set_locked(&p->fail_code, &p->fail_err, err->code, err);
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    if (first) {
        p->ctx.hooks.wake_main(p->ctx.hooks.opaque, -EIO, "postcopy connection lost");
    }
}

static void push_request(lm_pc_src *p, uint32_t block, uint64_t first, uint64_t page)
{
    pthread_mutex_lock(&p->lock);
    if (p->qlen < QUEUE_MAX) {
        p->q[(p->qhead + p->qlen) % QUEUE_MAX] = (pc_req){ block, first, page };
        p->qlen++;
        pthread_cond_broadcast(&p->cond);
    }
    pthread_mutex_unlock(&p->lock);
}

/* Queues the host pages of a REQ_PAGES message after checking it. */
static int queue_request(lm_pc_src *p, const lm_rp_msg *m, lm_error *err)
{
    const lm_pc_src_ctx *cx = &p->ctx;
    if (m->block >= cx->nblocks) {
        return lm_error_set(err, -EBADMSG, "page request for block %u of %zu", m->block, cx->nblocks);
    }
    lm_ram_block *b = cx->blocks[m->block];
    uint64_t hp = lm_pc_hp_pages(b);
    if (m->count == 0 || m->first >= b->npages || m->count > b->npages - m->first ||
        LM_DIV_ROUND_UP(m->count, hp) > REQ_MAX_HOSTPAGES) {
        return lm_error_set(err, -EBADMSG, "page request for block '%s' pages %llu+%u out of range",
                            b->name, (unsigned long long)m->first, m->count);
    }
    /* The destination names the page it faulted on first (a THP host
     * page is requested by that 4 KiB page): it goes out ahead of the
     * rest of its host page. */
    uint64_t end = m->first + m->count;
    for (uint64_t pg = m->first & ~(hp - 1); pg < end; pg += hp) {
        push_request(p, m->block, pg, LM_MAX(pg, m->first));
    }
    __atomic_fetch_add(cx->requests, 1, __ATOMIC_RELAXED);
    return 0;
}

static void uncount_dirty(lm_pc_src *p, const lm_ram_block *blk, uint64_t cleared)
{
    uint64_t dec = cleared << blk->page_shift;
    uint64_t cur = __atomic_load_n(&p->s->dirty_bytes, __ATOMIC_RELAXED);
    __atomic_fetch_sub(&p->s->dirty_bytes, LM_MIN(dec, cur), __ATOMIC_RELAXED);
}

/* Serves a request: claims the host page (clears its dirty bits) and
 * queues it on batch b; *bytes grows by what that puts on the wire.  It
 * goes out even when already claimed: the destination asked, so its copy
 * may be far behind on the main channel.  In a host page of several pages
 * (THP) the faulting page goes first, alone and flushed, so the vCPU
 * waits for one small page, then the rest (seed 001's break-huge, applied
 * to the request itself). */
static int send_requested(lm_pc_src *p, struct lm_ram_batch *b, lm_channel *ch, lm_ram_block *blk,
                          uint64_t first, uint64_t page, uint64_t *bytes)
{
    uint64_t hp = lm_pc_hp_pages(blk);
    uint64_t cleared = lm_pc_clear_range(blk->dirty, first, hp);
    if (cleared) {
        uncount_dirty(p, blk, cleared);
    }
    if (hp == 1 || page < first || page >= first + hp) {
        return lm_ram_save_send_range(p->s, b, ch, blk, first, first + hp, bytes);
    }
    int ret = lm_ram_save_send_range(p->s, b, ch, blk, page, page + 1, bytes);
    if (ret == 0) {
        ret = lm_ram_batch_flush(b, ch);
    }
    if (ret == 0) {
        ret = lm_channel_flush(ch);
    }
    if (ret == 0 && page > first) {
        ret = lm_ram_save_send_range(p->s, b, ch, blk, first, page, bytes);
    }
    if (ret == 0 && page + 1 < first + hp) {
        ret = lm_ram_save_send_range(p->s, b, ch, blk, page + 1, first + hp, bytes);
    }
    return ret;
}

/* The preempt sender's step for a new request, claimed: a host page of
 * one page goes whole; in a THP host page the requested page goes alone
 * as a LONE record (placed at once, whatever the destination is doing
 * with other host pages), and *rest becomes true: the whole host page is
 * still to go, on the main channel ahead of the background (so the
 * preempt connection only ever carries small urgent pages). */
static int send_first(lm_pc_src *p, struct lm_ram_batch *b, lm_channel *ch, lm_ram_block *blk,
                      uint64_t first, uint64_t page, uint64_t *bytes, bool *rest)
{
    uint64_t hp = lm_pc_hp_pages(blk);
    uint64_t cleared = lm_pc_clear_range(blk->dirty, first, hp);
    if (cleared) {
        uncount_dirty(p, blk, cleared);
    }
    *rest = hp > 1 && page >= first && page < first + hp;
    if (!*rest) {
        return lm_ram_save_send_range(p->s, b, ch, blk, first, first + hp, bytes);
    }
    uint8_t h[15];
    h[0] = LM_RAM_LONE;
    lm_store_be16(h + 1, (uint16_t)blk->idx);
    lm_store_be64(h + 3, page);
    lm_store_be32(h + 11, 1);
    lm_channel_put(ch, h, sizeof(h));
    *bytes += sizeof(h) + blk->page_size;
    lm_ram_save_count(p->s, LM_RAM_PAGES, blk, 1);
    return lm_channel_put(ch, lm_ram_block_page(blk, page), blk->page_size);
}

/* Background: claims the dirty run that starts at host page `first`,
 * whole host pages, at most max_pages (at least one host page), and
 * returns its end.  A host page is ours when we cleared any of its bits;
 * the run stops at the first host page that is clean or that the preempt
 * sender took meanwhile.  Returns first when nothing was claimed. */
static uint64_t claim_run(lm_pc_src *p, lm_ram_block *blk, uint64_t first, uint64_t max_pages)
{
    uint64_t hp = lm_pc_hp_pages(blk);
    uint64_t end = first, limit = LM_MIN(blk->npages, first + LM_MAX(max_pages, hp));
    uint64_t claimed = 0;
    while (end < limit) {
        uint64_t c = lm_pc_clear_range(blk->dirty, end, hp);
        if (!c) {
            break;
        }
        claimed += c;
        end += hp;
    }
    if (claimed) {
        uncount_dirty(p, blk, claimed);
    }
    return end;
}

/* ---- the return-path thread ---- */

static void *rp_thread_fn(void *arg)
{
    lm_pc_src *p = arg;
    lm_pc_urgent_thread("return-path");
    lm_rp_msg *m = malloc(sizeof(*m));
    lm_error err = LM_ERROR_INIT;
    if (!m) {
        lm_error_set(&err, -ENOMEM, "out of memory");
        fail(p, &err);
        goto out;
    }
    for (;;) {
        lm_error_clear(&err);
        /* Polled first: a read() blocked here would wake every time the
         * destination drains the main channel's send buffer (same socket,
         * same wait queue), thousands of times per GiB, each one taking a
         * CPU from the sender on a busy host. */
        (void)lm_channel_wait_input(p->rp);
        if (lm_rp_read_msg(p->rp, m, &err) < 0) {
            fail(p, &err);
            break;
        }
        if (m->type == LM_RP_REQ_PAGES) {
            if (queue_request(p, m, &err) < 0) {
                fail(p, &err);
                break;
            }
            lm_pc_trace_mark(p->trace, LM_PCT_QUEUED, '-', m->block, m->first);
        } else if (m->type == LM_RP_SHUT) {
            pthread_mutex_lock(&p->lock);
            p->shut_seen = true;
            p->shut_status = m->status;
            pthread_cond_broadcast(&p->cond);
            pthread_mutex_unlock(&p->lock);
            break;
        } else if (m->type == LM_RP_PONG) {
            pthread_mutex_lock(&p->lock);
            p->pong_seen = true;
            p->pong_value = m->status;
            pthread_cond_broadcast(&p->cond);
            pthread_mutex_unlock(&p->lock);
        } else {
            lm_error_set(&err, -EBADMSG, "unexpected return-path message 0x%x during postcopy",
                         m->type);
            fail(p, &err);
            break;
        }
    }
out:
    free(m);
    pthread_mutex_lock(&p->lock);
    p->rp_done = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static int open_rp(lm_pc_src *p, lm_channel *main_ch, lm_error *err)
{
    return lm_channel_dup(main_ch, "return path", &p->rp, err);
}

static int start_rp_thread(lm_pc_src *p, lm_error *err)
{
    p->rp_done = false;
    int rc = pthread_create(&p->rp_thread, NULL, rp_thread_fn, p);
    if (rc) {
        return lm_error_set(err, -rc, "cannot create the return-path thread");
    }
    p->rp_running = true;
    return 0;
}

int lm_pc_src_start_rp(lm_pc_src *p, lm_channel *main_ch, lm_error *err)
{
    int ret = p->rp ? 0 : open_rp(p, main_ch, err);
    return ret < 0 ? ret : start_rp_thread(p, err);
}

/* ---- the preempt sender ---- */

static bool pre_should_abort(void *opaque)
{
    lm_pc_src *p = opaque;
    pthread_mutex_lock(&p->lock);
    bool stop = p->stopping;
    pthread_mutex_unlock(&p->lock);
    return stop || cancelled(p);
}

static void *pre_thread_fn(void *arg)
{
    lm_pc_src *p = arg;
    const lm_pc_src_ctx *cx = &p->ctx;
    lm_error err = LM_ERROR_INIT;
    int fd, pid;
    lm_pc_urgent_thread("preempt sender");
    if (lm_transport_connect(&p->uri, &fd, &pid, pre_should_abort, p, &err) < 0) {
        if (!pre_should_abort(p)) {
            lm_warn("postcopy preempt: %s; urgent pages use the main channel", err.msg);
        }
        return NULL;
    }
    lm_channel *ch = lm_channel_new(fd, "postcopy preempt channel", NULL);
    if (!ch) {
        close(fd);
        return NULL;
    }
    if (lm_tls_client(ch, &p->uri, &err) < 0) {
        if (!pre_should_abort(p)) {
            lm_warn("postcopy preempt: %s; urgent pages use the main channel", err.msg);
        }
        lm_channel_close(ch, NULL);
        return NULL;
    }
    lm_channel_put_be32(ch, LM_PREEMPT_MAGIC);
    lm_channel_put_be32(ch, 1);
    int ret = lm_channel_flush(ch);
    p->ctx.hooks.preempt_channel(p->ctx.hooks.opaque, ch);
    pthread_mutex_lock(&p->lock);
    p->pre = ch;
    p->pre_up = ret == 0 && !p->stopping;
    pthread_cond_broadcast(&p->cond);
    while (ret == 0) {
        while (p->qlen == 0 && !p->stopping) {
            pthread_cond_wait(&p->cond, &p->lock);
        }
        if (p->stopping) {
            break;
        }
        pc_req r = p->q[p->qhead];
        p->qhead = (p->qhead + 1) % QUEUE_MAX;
        p->qlen--;
        pthread_mutex_unlock(&p->lock);
        lm_pc_trace_mark(p->trace, LM_PCT_TAKEN, 'p', r.block, r.page);
        uint64_t bytes = 0;
        lm_ram_block *blk = cx->blocks[r.block];
        bool rest = false;
        ret = send_first(p, p->pre_batch, ch, blk, r.first, r.page, &bytes, &rest);
        if (rest) {
            pthread_mutex_lock(&p->lock);
            /* After EOF, or with the list full, the rest goes here. */
            bool here = p->eof_sent || p->prio_len == PRIO_MAX;
            if (!here) {
                p->prio[p->prio_len++] = r;
            }
            pthread_mutex_unlock(&p->lock);
            if (here && ret == 0) {
                ret = lm_ram_save_send_range(p->s, p->pre_batch, ch, blk, r.first,
                                             r.first + lm_pc_hp_pages(blk), &bytes);
            }
        }
        if (ret == 0) {
            ret = lm_ram_batch_flush(p->pre_batch, ch);
        }
        if (ret == 0) {
            ret = lm_channel_flush(ch);
        }
        lm_pc_trace_mark(p->trace, LM_PCT_SENT, 'p', r.block, r.page);
        __atomic_fetch_add(cx->bytes, bytes, __ATOMIC_RELAXED);
        pthread_mutex_lock(&p->lock);
    }
    p->pre_up = false;
    p->pre = NULL;
    /* After EOF the destination may finish and drop this connection at
     * any time; were a page really missing there, its own preempt
     * receiver fails and the destination pauses, which the return path
     * sees. */
    bool report = !p->eof_sent;
    pthread_mutex_unlock(&p->lock);
    if (ret < 0 && report) {
        lm_channel_error(ch, &err);
        fail(p, &err);
    }
    p->ctx.hooks.preempt_channel(p->ctx.hooks.opaque, NULL);
    lm_channel_close(ch, NULL);
    return NULL;
}

static void start_preempt(lm_pc_src *p, const lm_uri *uri)
{
    if (!p->ctx.preempt) {
        return;
    }
    p->uri = *uri;
    if (pthread_create(&p->pre_thread, NULL, pre_thread_fn, p) == 0) {
        p->pre_running = true;
    } else {
        lm_warn("postcopy preempt: cannot create its thread; urgent pages use the main channel");
    }
}

/* ---- setup and switchover ---- */

int lm_pc_write_ping(lm_channel *ch, uint32_t value)
{
    uint8_t body[4];
    lm_store_be32(body, value);
    return lm_pc_write_command(ch, LM_CMD_PING, body, sizeof(body));
}

int lm_pc_src_advise(lm_pc_src *p, lm_channel *ch, const lm_uri *uri, lm_error *err)
{
    uint8_t body[4];
    lm_store_be32(body, p->ctx.preempt ? LM_ADVISE_PREEMPT : 0);
    lm_pc_write_command(ch, LM_CMD_POSTCOPY_ADVISE, body, sizeof(body));
    lm_pc_write_ping(ch, LM_PING_POSTCOPY_ADVISED);
    if (lm_channel_flush(ch) < 0) {
        return lm_channel_error(ch, err);
    }
    /* Nothing else comes back before LISTEN: the main channel's reader
     * holds no byte meant for the return-path thread. */
    uint16_t type;
    uint32_t value;
    lm_error rerr = LM_ERROR_INIT;
    int ret = lm_rp_read(ch, &type, &value, &rerr);
    if (ret < 0 || type != LM_RP_PONG || value != LM_PING_POSTCOPY_ADVISED) {
        return lm_error_set(err, ret < 0 ? ret : -EPROTO,
                            "the destination refused postcopy (is its capability postcopy-ram "
                            "on, and userfaultfd available?): it did not accept "
                            "POSTCOPY_ADVISE%s%s",
                            ret < 0 ? "; " : "", ret < 0 ? rerr.msg : "");
    }
    start_preempt(p, uri);
    return 0;
}

/* Host pages are discarded, requested and sent whole: a host page with one
 * dirty target page is dirty all through. */
static void canonicalize(lm_ram_block *b)
{
    uint64_t hp = lm_pc_hp_pages(b);
    if (hp == 1) {
        return;
    }
    for (uint64_t first = 0; first < b->npages; first += hp) {
        if (lm_bitmap_next_set(b->dirty, first + hp, first) < first + hp) {
            lm_bitmap_set_range(b->dirty, first, hp);
        }
    }
}

static void recount_dirty(lm_pc_src *p)
{
    const lm_pc_src_ctx *cx = &p->ctx;
    uint64_t bytes = 0;
    for (size_t i = 0; i < cx->nblocks; i++) {
        bytes += lm_bitmap_count(cx->blocks[i]->dirty, cx->blocks[i]->npages) * cx->blocks[i]->page_size;
    }
    __atomic_store_n(&p->s->dirty_bytes, bytes, __ATOMIC_RELAXED);
    p->cur_block = 0;
    p->cur_page = 0;
}

int lm_pc_src_send_discards(lm_pc_src *p, lm_channel *ch, lm_error *err)
{
    const lm_pc_src_ctx *cx = &p->ctx;
    uint8_t *body = malloc(4 + 16 * LM_DISCARD_MAX_RANGES);
    if (!body) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    int ret = 0;
    for (size_t i = 0; i < cx->nblocks && ret == 0; i++) {
        lm_ram_block *b = cx->blocks[i];
        canonicalize(b);
        uint64_t pg = 0;
        unsigned n = 0;
        for (;;) {
            uint64_t s = lm_bitmap_next_set(b->dirty, b->npages, pg);
            bool last = s >= b->npages;
            if (!last) {
                uint64_t q = lm_bitmap_next_clear(b->dirty, b->npages, s);
                lm_store_be64(body + 4 + 16 * n, s);
                lm_store_be64(body + 12 + 16 * n, q - s);
                n++;
                pg = q;
            }
            if (n && (last || n == LM_DISCARD_MAX_RANGES)) {
                lm_store_be16(body, (uint16_t)i);
                lm_store_be16(body + 2, (uint16_t)n);
                ret = lm_pc_write_command(ch, LM_CMD_POSTCOPY_DISCARD, body, (uint16_t)(4 + 16 * n));
                n = 0;
            }
            if (last || ret < 0) {
                break;
            }
        }
    }
    free(body);
    recount_dirty(p);
    return ret < 0 ? lm_channel_error(ch, err) : 0;
}

/* ---- the background stream ---- */

/* Next dirty page at or after the cursor (atomic reads: the preempt
 * sender clears bits meanwhile). */
static bool next_dirty(lm_pc_src *p, lm_ram_block **out, uint64_t *page)
{
    const lm_pc_src_ctx *cx = &p->ctx;
    while (p->cur_block < cx->nblocks) {
        lm_ram_block *b = cx->blocks[p->cur_block];
        uint64_t nwords = LM_BITMAP_WORDS(b->npages);
        for (uint64_t w = p->cur_page / 64; w < nwords; w++) {
            uint64_t v = __atomic_load_n(&b->dirty[w], __ATOMIC_ACQUIRE);
            if (w == p->cur_page / 64) {
                v &= ~0ull << (p->cur_page % 64);
            }
            if (v) {
                uint64_t bit = w * 64 + (uint64_t)__builtin_ctzll(v);
                if (bit >= b->npages) {
                    break;
                }
                *out = b;
                *page = bit;
                return true;
            }
        }
        p->cur_block++;
        p->cur_page = 0;
    }
    return false;
}

static bool take_request(lm_pc_src *p, pc_req *r)
{
    bool got = false;
    pthread_mutex_lock(&p->lock);
    if (!p->pre_up && p->qlen) {
        *r = p->q[p->qhead];
        p->qhead = (p->qhead + 1) % QUEUE_MAX;
        p->qlen--;
        got = true;
    }
    pthread_mutex_unlock(&p->lock);
    return got;
}

static int helper_failed(lm_pc_src *p, lm_error *err)
{
    pthread_mutex_lock(&p->lock);
    int ret = 0;
    if (p->fail_code) {
        lm_error_propagate(err, &p->fail_err);
        ret = p->fail_code;
    }
    pthread_mutex_unlock(&p->lock);
    return ret;
}

/* While max-postcopy-bandwidth holds the background back, wait for a
 * request to serve instead of sleeping blindly. */
static void wait_budget(lm_pc_src *p)
{
    uint64_t delay = lm_ratelimit_delay_ns(p->ctx.rl);
    if (!delay) {
        return;
    }
    if (delay > 10000000ull) {
        delay = 10000000ull;
    }
    struct timespec ts = lm_timespec_after(CLOCK_REALTIME, delay);
    pthread_mutex_lock(&p->lock);
    if ((p->pre_up || p->qlen == 0) && !p->fail_code) {
        pthread_cond_timedwait(&p->cond, &p->lock, &ts);
    }
    pthread_mutex_unlock(&p->lock);
}

int lm_pc_src_run(lm_pc_src *p, lm_channel *ch, lm_error *err)
{
    const lm_pc_src_ctx *cx = &p->ctx;
    /* Background bytes are charged to max-postcopy-bandwidth below;
     * urgent pages are never held back. */
    lm_channel_set_ratelimit(ch, NULL);
    for (;;) {
        int ret = helper_failed(p, err);
        if (ret < 0) {
            return ret;
        }
        if (cancelled(p)) {
            return -ECANCELED;
        }
        wait_budget(p);
        bool budget_ok = lm_ratelimit_delay_ns(cx->rl) == 0;
        uint64_t urgent = 0, bulk = 0; /* bytes on the wire */
        uint64_t covered = 0;          /* guest RAM the bulk pages span */
        bool done = false;
        lm_stream_write_section_short(ch, LM_REC_SECTION_PART, cx->ram_section);
        pc_req r;
        while (ret == 0 && take_request(p, &r)) {
            lm_pc_trace_mark(p->trace, LM_PCT_TAKEN, 'm', r.block, r.page);
            ret = send_requested(p, p->main_batch, ch, cx->blocks[r.block], r.first, r.page, &urgent);
        }
        /* The rest of host pages whose requested page went alone on the
         * preempt connection (claimed already). */
        for (;;) {
            pthread_mutex_lock(&p->lock);
            bool got = ret == 0 && p->prio_len > 0;
            if (got) {
                r = p->prio[0];
                memmove(p->prio, p->prio + 1, --p->prio_len * sizeof(p->prio[0]));
            }
            pthread_mutex_unlock(&p->lock);
            if (!got) {
                break;
            }
            lm_ram_block *pb = cx->blocks[r.block];
            ret = lm_ram_save_send_range(p->s, p->main_batch, ch, pb, r.first, r.first + lm_pc_hp_pages(pb),
                                         &urgent);
        }
        if (ret == 0 && urgent) {
            /* Requested pages out now, not after this slice's bulk. */
            ret = lm_ram_batch_flush(p->main_batch, ch);
            if (ret == 0) {
                ret = lm_channel_flush(ch);
            }
            lm_pc_trace_mark(p->trace, LM_PCT_SENT, 'm', 0, 0);
        }
        pthread_mutex_lock(&p->lock);
        uint64_t slice = p->pre_up ? PC_SLICE_PREEMPT_BYTES : PC_SLICE_BYTES;
        pthread_mutex_unlock(&p->lock);
        /* Dirty runs of up to 1 MiB per record, as precopy sends them: one
         * record (and, file-backed, one sendfile) per run, which the
         * destination places with one ioctl. */
        while (ret == 0 && budget_ok && covered < slice) {
            lm_ram_block *b;
            uint64_t pg;
            if (!next_dirty(p, &b, &pg)) {
                done = true;
                break;
            }
            uint64_t first = pg & ~(lm_pc_hp_pages(b) - 1);
            uint64_t want = LM_MIN((uint64_t)PC_RUN_BYTES, slice - covered) >> b->page_shift;
            uint64_t end = claim_run(p, b, first, want);
            if (end == first) {
                /* The preempt sender took it meanwhile. */
                p->cur_page = first + lm_pc_hp_pages(b);
                continue;
            }
            p->cur_page = end;
            ret = lm_ram_save_send_range(p->s, p->main_batch, ch, b, first, end, &bulk);
            covered += (end - first) << b->page_shift;
        }
        if (ret == 0) {
            ret = lm_ram_batch_flush(p->main_batch, ch);
        }
        lm_ratelimit_charge(cx->rl, bulk);
        if (ret == 0) {
            lm_channel_put_u8(ch, LM_RAM_EOS);
            lm_stream_write_footer(ch, cx->ram_section);
            /* The section's last bytes ride with the next slice's pages
             * (the records before them are out already): a send of its
             * own would wake the destination once more per slice.  Out
             * now if nothing follows at once. */
            if (done || lm_ratelimit_delay_ns(cx->rl) != 0) {
                ret = lm_channel_flush(ch);
            }
        }
        __atomic_fetch_add(cx->bytes, urgent + bulk, __ATOMIC_RELAXED);
        if (ret < 0) {
            /* A helper's failure (it shut this channel down) says more. */
            int h = helper_failed(p, err);
            return h < 0 ? h : lm_channel_error(ch, err);
        }
        if (done) {
            /* Nothing dirty: done, unless the preempt sender queued a
             * host page's rest meanwhile (from now on it sends it). */
            pthread_mutex_lock(&p->lock);
            bool more = p->prio_len > 0;
            p->eof_sent = !more;
            pthread_mutex_unlock(&p->lock);
            if (!more) {
                break;
            }
        }
    }
    pthread_mutex_lock(&p->lock);
    p->eof_sent = true;
    pthread_mutex_unlock(&p->lock);
    lm_channel_put_u8(ch, LM_REC_EOF);
    int ret = lm_channel_flush(ch);
    return ret < 0 ? lm_channel_error(ch, err) : 0;
}

int lm_pc_src_wait_pong(lm_pc_src *p, uint32_t value, lm_error *err)
{
    pthread_mutex_lock(&p->lock);
    while (!(p->pong_seen && p->pong_value == value) && !p->shut_seen && !p->fail_code &&
           !p->rp_done) {
        pthread_cond_wait(&p->cond, &p->lock);
    }
    int ret = 0;
    if (p->pong_seen && p->pong_value == value) {
        ret = 0;
    } else if (p->shut_seen) {
        ret = lm_error_set(err, -EIO, "postcopy: the destination failed to load the device state "
                           "(it reported status %u); the guest runs on here", p->shut_status);
    } else {
        lm_error cause = LM_ERROR_INIT;
        lm_error_propagate(&cause, &p->fail_err);
        ret = lm_error_set(err, -EPIPE, "postcopy: lost the destination before it loaded the "
                           "device state%s%s", cause.msg[0] ? ": " : "", cause.msg);
    }
    pthread_mutex_unlock(&p->lock);
    return ret;
}

int lm_pc_src_wait_shut(lm_pc_src *p, bool *dest_failed, lm_error *err)
{
    *dest_failed = false;
    pthread_mutex_lock(&p->lock);
    while (!p->shut_seen && !p->fail_code && !p->rp_done) {
        pthread_cond_wait(&p->cond, &p->lock);
    }
    int ret = 0;
    if (p->shut_seen) {
        if (p->shut_status != 0) {
            *dest_failed = true;
            ret = lm_error_set(err, -EIO, "the destination failed to complete the postcopy migration");
        }
    } else {
        if (p->fail_code) {
            lm_error_propagate(err, &p->fail_err);
        }
        ret = lm_error_set(err, -EPIPE, "lost the destination before it confirmed the migration");
    }
    pthread_mutex_unlock(&p->lock);
    return ret;
}

void lm_pc_src_stop(lm_pc_src *p)
{
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->cond);
    if (p->pre) {
        lm_channel_shutdown(p->pre, -ECANCELED, "postcopy stopped");
    }
    bool rp_blocked = p->rp_running && !p->rp_done;
    pthread_mutex_unlock(&p->lock);
    if (rp_blocked && p->rp) {
        lm_channel_shutdown(p->rp, -ECANCELED, "postcopy stopped");
    }
    if (p->rp_running) {
        pthread_join(p->rp_thread, NULL);
        p->rp_running = false;
    }
    if (p->pre_running) {
        pthread_join(p->pre_thread, NULL);
        p->pre_running = false;
    }
    if (p->rp) {
        lm_channel_close(p->rp, NULL);
        p->rp = NULL;
    }
}

static void reset(lm_pc_src *p)
{
    pthread_mutex_lock(&p->lock);
    p->stopping = false;
    p->fail_code = 0;
    lm_error_clear(&p->fail_err);
    p->shut_seen = false;
    p->pong_seen = false;
    p->rp_done = false;
    p->eof_sent = false;
    p->qhead = p->qlen = 0;
    p->prio_len = 0;
    pthread_mutex_unlock(&p->lock);
}

int lm_pc_src_recover(lm_pc_src *p, lm_channel *ch, const lm_uri *uri, lm_error *err)
{
    const lm_pc_src_ctx *cx = &p->ctx;
    reset(p);
    lm_stream_write_header(ch);
    lm_pc_write_command(ch, LM_CMD_POSTCOPY_RESUME, NULL, 0);
    if (lm_channel_flush(ch) < 0) {
        return lm_channel_error(ch, err);
    }
    int ret = open_rp(p, ch, err);
    if (ret < 0) {
        return ret;
    }
    uint64_t **recv = calloc(cx->nblocks, sizeof(*recv));
    lm_rp_msg *m = malloc(sizeof(*m));
    if (!recv || !m) {
        ret = lm_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < cx->nblocks; i++) {
        if (!(recv[i] = lm_bitmap_new(cx->blocks[i]->npages))) {
            ret = lm_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    for (;;) {
        ret = lm_rp_read_msg(p->rp, m, err);
        if (ret < 0) {
            goto out;
        }
        if (m->type == LM_RP_RESUME_ACK) {
            break;
        }
        if (m->type == LM_RP_REQ_PAGES) {
            ret = queue_request(p, m, err);
        } else if (m->type == LM_RP_RECV_BITMAP) {
            uint64_t nwords = m->block < cx->nblocks ? LM_BITMAP_WORDS(cx->blocks[m->block]->npages) : 0;
            if (m->block >= cx->nblocks || m->first > nwords || m->count > nwords - m->first) {
                ret = lm_error_set(err, -EBADMSG, "received bitmap for block %u words %llu+%u out of range",
                                   m->block, (unsigned long long)m->first, m->count);
            } else {
                memcpy(recv[m->block] + m->first, m->words, m->count * sizeof(uint64_t));
            }
        } else if (m->type != LM_RP_PONG) {
            ret = lm_error_set(err, -EBADMSG, "unexpected return-path message 0x%x during recovery",
                               m->type);
        }
        if (ret < 0) {
            goto out;
        }
    }
    /* Everything the destination has not placed is sent again. */
    for (size_t i = 0; i < cx->nblocks; i++) {
        lm_ram_block *b = cx->blocks[i];
        uint64_t nwords = LM_BITMAP_WORDS(b->npages);
        for (uint64_t w = 0; w < nwords; w++) {
            uint64_t v = ~recv[i][w];
            if (w == nwords - 1 && b->npages % 64) {
                v &= (1ull << (b->npages % 64)) - 1;
            }
            __atomic_store_n(&b->dirty[w], v, __ATOMIC_RELEASE);
        }
        canonicalize(b);
    }
    recount_dirty(p);
    ret = start_rp_thread(p, err);
    if (ret == 0) {
        start_preempt(p, uri);
    }
out:
    if (recv) {
        for (size_t i = 0; i < cx->nblocks; i++) {
            lm_bitmap_free(recv[i]);
        }
    }
    free(recv);
    free(m);
    if (ret < 0 && p->rp) {
        lm_channel_close(p->rp, NULL);
        p->rp = NULL;
    }
    return ret;
}
