/*
 * The migration's timeline: a bounded ring of pass records.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/history.h"

void lm_history_init(lm_history *h)
{
    memset(h, 0, sizeof(*h));
    pthread_mutex_init(&h->lock, NULL);
}

void lm_history_destroy(lm_history *h)
{
    free(h->ring);
    h->ring = NULL;
    pthread_mutex_destroy(&h->lock);
}

int lm_history_reset(lm_history *h, uint64_t start_ns)
{
    pthread_mutex_lock(&h->lock);
    int ret = 0;
    if (!h->ring) {
        h->ring = calloc(LM_HISTORY_MAX, sizeof(*h->ring));
        ret = h->ring ? 0 : -ENOMEM;
    }
    h->total = 0;
    memset(&h->info, 0, sizeof(h->info));
    h->info.start_ns = start_ns;
    h->info.capacity = LM_HISTORY_MAX;
    pthread_mutex_unlock(&h->lock);
    return ret;
}

static uint64_t us_since(const lm_history *h, uint64_t t_ns)
{
    return t_ns > h->info.start_ns ? (t_ns - h->info.start_ns) / 1000 : 0;
}

void lm_history_add(lm_history *h, const lm_pass_record *rec)
{
    pthread_mutex_lock(&h->lock);
    if (h->ring) {
        h->ring[h->total % LM_HISTORY_MAX] = *rec;
        h->total++;
        h->info.dropped = h->total > LM_HISTORY_MAX ? h->total - LM_HISTORY_MAX : 0;
    }
    pthread_mutex_unlock(&h->lock);
}

void lm_history_switchover(lm_history *h, uint64_t stop_ns)
{
    pthread_mutex_lock(&h->lock);
    h->info.switchover_us = us_since(h, stop_ns);
    h->info.has_switchover = true;
    pthread_mutex_unlock(&h->lock);
}

void lm_history_end(lm_history *h, uint64_t end_ns)
{
    pthread_mutex_lock(&h->lock);
    h->info.end_us = us_since(h, end_ns);
    h->info.has_end = true;
    pthread_mutex_unlock(&h->lock);
}

size_t lm_history_read(lm_history *h, lm_pass_record *out, size_t max, lm_history_info *info)
{
    pthread_mutex_lock(&h->lock);
    uint64_t kept = h->total < LM_HISTORY_MAX ? h->total : LM_HISTORY_MAX;
    size_t n = kept < max ? (size_t)kept : max;
    /* The newest n, oldest first. */
    for (size_t i = 0; i < n; i++) {
        out[i] = h->ring[(h->total - n + i) % LM_HISTORY_MAX];
    }
    if (info) {
        *info = h->info;
    }
    pthread_mutex_unlock(&h->lock);
    return n;
}
