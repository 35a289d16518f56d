/*
 * vram: an iterative device with its own dirty bitmap.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "vram.h"

#define CHUNK VM_PAGE_SIZE
#define REC_CHUNK_LEN (1 + 4 + 4 + CHUNK)
#define LOCK_BATCH 64 /* chunks copied per lock hold, so the mutator never waits long */

struct vram {
    uint64_t size;
    uint64_t nchunks;
    uint8_t *data;
    uint32_t *gen;

    pthread_mutex_t lock;   /* data, gen, dirty, cursor, rng */
    uint64_t *dirty;        /* one bit per chunk */
    uint64_t ndirty;        /* written under lock, read atomically */
    uint64_t cursor;        /* where save_iterate resumes its scan */
    uint64_t rng;

    /* switchover-ack, under lock.  Source: the first scan since
     * save_setup reached the last chunk / 'I' is written.  Destination:
     * the engine asked for an approval, 'I' loaded, the test hook holds
     * it back, it was given. */
    lm_engine *engine;
    bool init_swept;
    bool init_sent;
    bool ack_needed;
    bool init_loaded;
    bool ack_withheld;
    bool acked;

    /* Mutation pacing; only vCPU 0's tick touches these. */
    uint64_t rate;
    uint64_t last_ns;
    double tokens;
};

static void set_dirty_locked(vram *v, uint64_t i)
{
    uint64_t m = 1ull << (i % 64);
    if (!(v->dirty[i / 64] & m)) {
        v->dirty[i / 64] |= m;
        __atomic_store_n(&v->ndirty, v->ndirty + 1, __ATOMIC_RELAXED);
    }
}

static void clear_dirty_locked(vram *v, uint64_t i)
{
    v->dirty[i / 64] &= ~(1ull << (i % 64));
    __atomic_store_n(&v->ndirty, v->ndirty - 1, __ATOMIC_RELAXED);
}

/* The next dirty chunk at or after `from`, wrapping; call with ndirty > 0. */
static uint64_t next_dirty_locked(const vram *v, uint64_t from)
{
    uint64_t nwords = (v->nchunks + 63) / 64;
    uint64_t w = from / 64;
    uint64_t bits = v->dirty[w] & (~0ull << (from % 64));

    for (uint64_t k = 0; k <= nwords; k++) {
        if (bits) {
            return w * 64 + (uint64_t)__builtin_ctzll(bits);
        }
        w = (w + 1) % nwords;
        bits = v->dirty[w];
    }
    return 0; /* not reached while ndirty > 0 */
}

int vram_new(uint64_t size, uint64_t rate, uint64_t seed, vram **out, lm_error *err)
{
    *out = NULL;
    if (size == 0 || size % CHUNK != 0) {
        return lm_error_set(err, -EINVAL, "--vram %" PRIu64 " must be a non-zero multiple of 4 KiB", size);
    }
    if (size / CHUNK > UINT32_MAX) {
        return lm_error_set(err, -EINVAL, "--vram %" PRIu64 " is too large (at most 16 TiB)", size);
    }
    vram *v = calloc(1, sizeof(*v));
    if (!v) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    v->size = size;
    v->nchunks = size / CHUNK;
    v->rate = rate;
    v->rng = vm_rng_seed(seed, 0x7672616d /* "vram" */);
    pthread_mutex_init(&v->lock, NULL);
    v->data = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    v->gen = calloc(v->nchunks, sizeof(*v->gen));
    v->dirty = calloc((v->nchunks + 63) / 64, sizeof(*v->dirty));
    if (v->data == MAP_FAILED || !v->gen || !v->dirty) {
        if (v->data == MAP_FAILED) {
            v->data = NULL;
        }
        vram_free(v);
        return lm_error_set(err, -ENOMEM, "cannot allocate %" PRIu64 " bytes of vram", size);
    }
    *out = v;
    return 0;
}

void vram_free(vram *v)
{
    if (!v) {
        return;
    }
    if (v->data) {
        munmap(v->data, v->size);
    }
    free(v->gen);
    free(v->dirty);
    pthread_mutex_destroy(&v->lock);
    free(v);
}

void vram_tick(vram *v, uint64_t now_ns)
{
    if (v->rate == 0) {
        return;
    }
    if (v->last_ns == 0) {
        v->last_ns = now_ns;
        return;
    }
    v->tokens += (double)(now_ns - v->last_ns) * (double)v->rate / 1e9;
    v->last_ns = now_ns;
    /* At most ~10 ms of credit: after the guest was stopped the device
     * picks up its pace, it does not catch up. */
    double cap = (double)v->rate / 100 > CHUNK ? (double)v->rate / 100 : CHUNK;
    if (v->tokens > cap) {
        v->tokens = cap;
    }
    if (v->tokens < CHUNK) {
        return;
    }
    pthread_mutex_lock(&v->lock);
    while (v->tokens >= CHUNK) {
        uint64_t c = vm_rng_below(&v->rng, v->nchunks);
        uint32_t g = v->gen[c] + 1;
        v->gen[c] = g ? g : 1;
        vm_pattern_fill(v->data + c * CHUNK, CHUNK, c, v->gen[c]);
        set_dirty_locked(v, c);
        v->tokens -= CHUNK;
    }
    pthread_mutex_unlock(&v->lock);
}

void vram_verify(vram *v, struct vm_verify *res)
{
    uint64_t expected, found;

    pthread_mutex_lock(&v->lock);
    for (uint64_t c = 0; c < v->nchunks; c++) {
        long bad = vm_pattern_check(v->data + c * CHUNK, CHUNK, c, v->gen[c], &expected, &found);
        if (bad >= 0) {
            vm_verify_fail(res, "vram: chunk %" PRIu64 " (generation %u): word %ld expected 0x%016"
                           PRIx64 ", found 0x%016" PRIx64, c, v->gen[c], bad, expected, found);
        }
    }
    res->chunks += v->nchunks;
    pthread_mutex_unlock(&v->lock);
}

/* ------------------------------------------------------------------------ */
/* lm_iter_ops */

static void put_chunk_locked(vram *v, lm_wbuf *out, uint64_t c)
{
    uint8_t *p = lm_wbuf_reserve(out, REC_CHUNK_LEN);
    if (!p) {
        return; /* out->error is set; the caller reports it */
    }
    p[0] = 'C';
    lm_store_be32(p + 1, (uint32_t)c);
    lm_store_be32(p + 5, v->gen[c]);
    memcpy(p + 9, v->data + c * CHUNK, CHUNK);
    clear_dirty_locked(v, c);
    /* Every chunk is dirty at save_setup and the scan goes up from 0:
     * once the last one went, so did every chunk's initial data. */
    if (c == v->nchunks - 1) {
        v->init_swept = true;
    }
}

static int wbuf_status(lm_wbuf *out, lm_error *err)
{
    if (out->error) {
        return lm_error_set_errno(err, out->error, "vram: cannot build the device state");
    }
    return 0;
}

static int vram_save_setup(void *opaque, lm_wbuf *out, lm_error *err)
{
    vram *v = opaque;

    pthread_mutex_lock(&v->lock);
    memset(v->dirty, 0xff, (v->nchunks + 63) / 64 * sizeof(*v->dirty));
    if (v->nchunks % 64) {
        v->dirty[v->nchunks / 64] = (1ull << (v->nchunks % 64)) - 1;
    }
    __atomic_store_n(&v->ndirty, v->nchunks, __ATOMIC_RELAXED);
    v->cursor = 0;
    v->init_swept = v->init_sent = false;
    pthread_mutex_unlock(&v->lock);

    lm_wbuf_put_u8(out, 'S');
    lm_wbuf_put_be64(out, v->nchunks);
    lm_wbuf_put_be32(out, CHUNK);
    return wbuf_status(out, err);
}

/* Send dirty chunks until about `budget` bytes are out (at least one chunk,
 * so every pass makes progress) or none is left.  Returns the count left. */
static uint64_t send_dirty(vram *v, lm_wbuf *out, uint64_t budget)
{
    uint64_t sent = 0, left;

    for (;;) {
        pthread_mutex_lock(&v->lock);
        for (unsigned k = 0; k < LOCK_BATCH && v->ndirty > 0 && !out->error; k++) {
            uint64_t c = next_dirty_locked(v, v->cursor);
            put_chunk_locked(v, out, c);
            v->cursor = c + 1 < v->nchunks ? c + 1 : 0;
            sent += REC_CHUNK_LEN;
            if (sent >= budget) {
                break;
            }
        }
        left = v->ndirty;
        pthread_mutex_unlock(&v->lock);
        if (left == 0 || sent >= budget || out->error) {
            return left;
        }
    }
}

static int vram_save_iterate(void *opaque, lm_wbuf *out, uint64_t budget, lm_error *err)
{
    vram *v = opaque;
    uint64_t left = send_dirty(v, out, budget);
    /* switchover-ack: tell the destination its initial data is all there
     * (VFIO's DEV_INIT_DATA_SENT); only then is the flag worth a byte. */
    pthread_mutex_lock(&v->lock);
    bool say_init = v->init_swept && !v->init_sent && lm_engine_switchover_ack(v->engine);
    v->init_sent = v->init_sent || say_init;
    pthread_mutex_unlock(&v->lock);
    if (say_init) {
        lm_wbuf_put_u8(out, 'I');
    }
    int ret = wbuf_status(out, err);

    return ret < 0 ? ret : left == 0;
}

static int vram_save_complete(void *opaque, lm_wbuf *out, lm_error *err)
{
    vram *v = opaque;

    send_dirty(v, out, UINT64_MAX);
    pthread_mutex_lock(&v->lock);
    lm_wbuf_put_u8(out, 'R');
    lm_wbuf_put_be64(out, v->rng);
    pthread_mutex_unlock(&v->lock);
    return wbuf_status(out, err);
}

static void vram_query_pending(void *opaque, bool exact, lm_pending *p)
{
    vram *v = opaque;
    uint64_t n = __atomic_load_n(&v->ndirty, __ATOMIC_RELAXED);
    uint64_t bytes = n * REC_CHUNK_LEN + 16; /* + the 'R' record */

    p->precopy_bytes = bytes;
    p->stopcopy_bytes = bytes;
}

/* Called with v->lock: the approval is due now (given once). */
static bool take_ack_locked(vram *v)
{
    if (v->ack_needed && v->init_loaded && !v->ack_withheld && !v->acked) {
        v->acked = true;
        return true;
    }
    return false;
}

static void approve(vram *v)
{
    lm_error err = LM_ERROR_INIT;
    if (lm_engine_approve_switchover(v->engine, &err) < 0) {
        fprintf(stderr, "livemig-vm: vram: %s\n", err.msg);
    }
}

void vram_withhold_ack(vram *v, bool withhold)
{
    pthread_mutex_lock(&v->lock);
    v->ack_withheld = withhold;
    bool ack = take_ack_locked(v);
    pthread_mutex_unlock(&v->lock);
    if (ack) {
        approve(v);
    }
}

/* Destination, as the load starts: this device approves the switchover
 * once its precopy data is loaded. */
static bool vram_switchover_ack_needed(void *opaque)
{
    vram *v = opaque;
    pthread_mutex_lock(&v->lock);
    v->ack_needed = true;
    v->init_loaded = v->acked = false;
    pthread_mutex_unlock(&v->lock);
    return true;
}

static int vram_load(void *opaque, lm_rbuf *in, uint32_t version, lm_error *err)
{
    vram *v = opaque;
    int ret = 0;
    bool ack = false;

    pthread_mutex_lock(&v->lock);
    while (lm_rbuf_remaining(in) > 0) {
        uint8_t tag;
        if (lm_rbuf_get_u8(in, &tag) < 0) {
            break;
        }
        if (tag == 'S') {
            uint64_t n;
            uint32_t csize;
            if (lm_rbuf_get_be64(in, &n) < 0 || lm_rbuf_get_be32(in, &csize) < 0) {
                ret = lm_error_set(err, -EBADMSG, "vram: truncated geometry record");
                break;
            }
            if (n != v->nchunks || csize != CHUNK) {
                ret = lm_error_set(err, -EINVAL,
                                   "vram: the source has %" PRIu64 " chunks of %u bytes, this machine %"
                                   PRIu64 " of %u (start both with the same --vram)",
                                   n, csize, v->nchunks, CHUNK);
                break;
            }
        } else if (tag == 'C') {
            uint32_t idx, gen;
            if (lm_rbuf_get_be32(in, &idx) < 0 || lm_rbuf_get_be32(in, &gen) < 0 ||
                lm_rbuf_remaining(in) < CHUNK) {
                ret = lm_error_set(err, -EBADMSG, "vram: truncated chunk record");
                break;
            }
            if (idx >= v->nchunks) {
                ret = lm_error_set(err, -EBADMSG, "vram: chunk index %u out of range (%" PRIu64 " chunks)",
                                   idx, v->nchunks);
                break;
            }
            lm_rbuf_get(in, v->data + (uint64_t)idx * CHUNK, CHUNK);
            v->gen[idx] = gen;
        } else if (tag == 'I') {
            v->init_loaded = true;
            ack = take_ack_locked(v);
        } else if (tag == 'R') {
            if (lm_rbuf_get_be64(in, &v->rng) < 0) {
                ret = lm_error_set(err, -EBADMSG, "vram: truncated PRNG record");
                break;
            }
            if (v->rng == 0) {
                v->rng = vm_rng_seed(0, 0); /* xorshift must not be all-zero */
            }
        } else {
            ret = lm_error_set(err, -EBADMSG, "vram: unknown record type 0x%02x", tag);
            break;
        }
    }
    pthread_mutex_unlock(&v->lock);
    if (ack) {
        approve(v);
    }
    return ret;
}

static void vram_save_cleanup(void *opaque)
{
    /* Nothing to release: the dirty bitmap keeps tracking, and the next
     * save_setup marks every chunk dirty anyway. */
}

static const lm_iter_ops vram_ops = {
    .save_setup = vram_save_setup,
    .save_iterate = vram_save_iterate,
    .save_complete = vram_save_complete,
    .query_pending = vram_query_pending,
    .load = vram_load,
    .save_cleanup = vram_save_cleanup,
    .switchover_ack_needed = vram_switchover_ack_needed,
};

int vram_register(vram *v, lm_engine *e, lm_error *err)
{
    v->engine = e;
    return lm_engine_add_iterative(e, "vram", 0, 1, &vram_ops, v, err);
}
