#include "postcopy/place_queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/failure.h"

#define PQ_MAX_PLACERS 8u
#define PQ_MAX_BUFS 32u

struct lm_pc_pq {
    lm_pc_pq_place_fn place;
    lm_pc_pq_failed_fn failed;
    void *opaque;

    uint8_t *map; /* every buffer, one mapping */
    size_t map_len;
    lm_pc_pq_run runs[PQ_MAX_BUFS];
    unsigned nbufs;

    pthread_mutex_t lock; /* below */
    pthread_cond_t work;  /* a run was queued, or stop */
    pthread_cond_t space; /* a run went free, or failure */
    pthread_cond_t idle;  /* nothing queued nor being placed, or failure */
    lm_pc_pq_run *free_runs[PQ_MAX_BUFS];
    unsigned nfree;
    /* Queued runs, oldest first (a ring): placed in stream order. */
    lm_pc_pq_run *ready[PQ_MAX_BUFS];
    unsigned head, nready;
    unsigned busy; /* runs a placer holds */
    bool stop;
    uint64_t nruns;
    int code; /* the first failure (common/failure.h) */
    lm_error err;

    pthread_t threads[PQ_MAX_PLACERS];
    unsigned nthreads;
};

/* The lock held: every queued run goes back free, unplaced. */
static void drop_ready(lm_pc_pq *q)
{
    while (q->nready) {
        q->free_runs[q->nfree++] = q->ready[q->head];
        q->head = (q->head + 1) % q->nbufs;
        q->nready--;
    }
}

static void *placer_fn(void *arg)
{
    lm_pc_pq *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (!q->stop && q->nready == 0) {
            pthread_cond_wait(&q->work, &q->lock);
        }
        if (q->stop) {
            break;
        }
        lm_pc_pq_run *run = q->ready[q->head];
        q->head = (q->head + 1) % q->nbufs;
        q->nready--;
        q->busy++;
        pthread_mutex_unlock(&q->lock);

        lm_error err = LM_ERROR_INIT;
        int ret = q->place(q->opaque, run, &err);

        pthread_mutex_lock(&q->lock);
        q->busy--;
        q->free_runs[q->nfree++] = run;
        bool first = false;
        if (ret < 0) {
            first = lm_failure_set_locked(&q->code, &q->err, ret, &err);
            /* Nothing more is placed: the migration fails. */
            drop_ready(q);
        }
        pthread_cond_signal(&q->space);
        if ((q->nready == 0 && q->busy == 0) || ret < 0) {
            pthread_cond_broadcast(&q->idle);
        }
        if (ret < 0) {
            pthread_cond_broadcast(&q->space);
        }
        if (first && q->failed) {
            lm_error msg = q->err;
            pthread_mutex_unlock(&q->lock);
            q->failed(q->opaque, &msg);
            pthread_mutex_lock(&q->lock);
        }
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

int lm_pc_pq_new(unsigned nplacers, unsigned nbufs, size_t cap, lm_pc_pq_place_fn place,
                 lm_pc_pq_failed_fn failed, void *opaque, lm_pc_pq **out, lm_error *err)
{
    if (nplacers == 0 || nplacers > PQ_MAX_PLACERS || nbufs < nplacers || nbufs > PQ_MAX_BUFS ||
        cap == 0) {
        return lm_error_set(err, -EINVAL, "postcopy placement queue: %u placers, %u buffers",
                            nplacers, nbufs);
    }
    lm_pc_pq *q = calloc(1, sizeof(*q));
    if (!q) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    q->place = place;
    q->failed = failed;
    q->opaque = opaque;
    q->nbufs = nbufs;
    q->map_len = cap * nbufs;
    q->map = mmap(NULL, q->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q->map == MAP_FAILED) {
        free(q);
        return lm_error_set(err, -ENOMEM, "out of memory for postcopy receive buffers");
    }
    /* 4 KiB pages, as the inline path's buffer: UFFDIO_COPY reads them,
     * and a huge page here would only cost its clearing. */
    (void)madvise(q->map, q->map_len, MADV_NOHUGEPAGE);
    for (unsigned i = 0; i < nbufs; i++) {
        q->runs[i].buf = q->map + (size_t)i * cap;
        q->free_runs[q->nfree++] = &q->runs[i];
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->work, NULL);
    pthread_cond_init(&q->space, NULL);
    pthread_cond_init(&q->idle, NULL);
    for (unsigned i = 0; i < nplacers; i++) {
        int rc = pthread_create(&q->threads[i], NULL, placer_fn, q);
        if (rc) {
            lm_pc_pq_free(q);
            return lm_error_set(err, -rc, "cannot create a postcopy placer thread");
        }
        q->nthreads++;
    }
    *out = q;
    return 0;
}

void lm_pc_pq_free(lm_pc_pq *q)
{
    if (!q) {
        return;
    }
    pthread_mutex_lock(&q->lock);
    q->stop = true;
    pthread_cond_broadcast(&q->work);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->nthreads; i++) {
        pthread_join(q->threads[i], NULL);
    }
    pthread_cond_destroy(&q->idle);
    pthread_cond_destroy(&q->space);
    pthread_cond_destroy(&q->work);
    pthread_mutex_destroy(&q->lock);
    munmap(q->map, q->map_len);
    free(q);
}

int lm_pc_pq_get(lm_pc_pq *q, lm_pc_pq_run **out, lm_error *err)
{
    pthread_mutex_lock(&q->lock);
    while (q->nfree == 0 && !q->code) {
        pthread_cond_wait(&q->space, &q->lock);
    }
    int ret = q->code;
    if (ret) {
        lm_error_propagate(err, &q->err);
    } else {
        *out = q->free_runs[--q->nfree];
    }
    pthread_mutex_unlock(&q->lock);
    return ret;
}

void lm_pc_pq_put(lm_pc_pq *q, lm_pc_pq_run *run)
{
    pthread_mutex_lock(&q->lock);
    if (q->code) {
        /* Placement failed meanwhile: the caller learns it at its next
         * get or drain (and at once from the failed callback). */
        q->free_runs[q->nfree++] = run;
    } else {
        q->ready[(q->head + q->nready) % q->nbufs] = run;
        q->nready++;
        q->nruns++;
        pthread_cond_signal(&q->work);
    }
    pthread_mutex_unlock(&q->lock);
}

void lm_pc_pq_unget(lm_pc_pq *q, lm_pc_pq_run *run)
{
    pthread_mutex_lock(&q->lock);
    q->free_runs[q->nfree++] = run;
    pthread_mutex_unlock(&q->lock);
}

int lm_pc_pq_drain(lm_pc_pq *q, unsigned *pending, lm_error *err)
{
    pthread_mutex_lock(&q->lock);
    if (pending) {
        *pending = q->nready + q->busy;
    }
    while ((q->nready || q->busy) && !q->code) {
        pthread_cond_wait(&q->idle, &q->lock);
    }
    int ret = q->code;
    if (ret) {
        lm_error_propagate(err, &q->err);
    }
    pthread_mutex_unlock(&q->lock);
    return ret;
}

uint64_t lm_pc_pq_runs(lm_pc_pq *q)
{
    pthread_mutex_lock(&q->lock);
    uint64_t n = q->nruns;
    pthread_mutex_unlock(&q->lock);
    return n;
}
