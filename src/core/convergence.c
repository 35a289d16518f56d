#include <stdio.h>
#include <string.h>

#include "common/bitmap.h"
#include "common/clock.h"
#include "common/util.h"
#include "core/convergence.h"
#include "core/dirtylimit.h"
#include "core/engine_internal.h"
#include "ram/ramblock.h"

/* A pass "did not shrink" what remains when it is still this share of
 * the previous pass's (percent: a guest's pace wobbles by a few percent
 * from pass to pass)... */
#define STALL_PERCENT 90
/* ...while the guest dirtied at least this share of what the link carried
 * (percent): at that rate every pass only re-sends what the last one did. */
#define LINK_SPEED_PERCENT 90
/* The trend's bands around the previous pass's remaining (percent). */
#define TREND_BAND 10

const char *lm_conv_action_name(lm_conv_action a)
{
    switch (a) {
    case LM_CONV_POSTCOPY: return "postcopy";
    case LM_CONV_DIRTY_LIMIT: return "dirty-limit";
    case LM_CONV_AUTO_CONVERGE: return "auto-converge";
    case LM_CONV_GIVE_UP: return "none";
    case LM_CONV_NONE: break;
    }
    return "";
}

void lm_convergence_begin(struct lm_engine *e, lm_conv_state *cs)
{
    memset(cs, 0, sizeof(*cs));
    cs->precopy_start_ns = cs->last_sync_ns = lm_now_ns();
    cs->nvcpus = lm_dirtylimit_counters(e, cs->vcpu_pages, LM_MAX_VCPUS);
    pthread_mutex_lock(&e->lock);
    memset(&e->stats.convergence, 0, sizeof(e->stats.convergence));
    memset(&e->stats.last_pass, 0, sizeof(e->stats.last_pass));
    e->stats.convergence.heavy_vcpu = -1;
    pthread_mutex_unlock(&e->lock);
}

static void format_rate(char *buf, size_t size, uint64_t bps)
{
    snprintf(buf, size, "%.1f MB/s", (double)bps / 1e6);
}

/* Which vCPU dirtied most since the last sync, and the guest's rate by
 * the vCPUs' own count. */
static void vcpu_shares(lm_engine *e, lm_conv_state *cs, uint64_t now, lm_convergence *cv)
{
    uint64_t pages[LM_MAX_VCPUS];
    unsigned n = lm_dirtylimit_counters(e, pages, LM_MAX_VCPUS);
    uint64_t total = 0, top = 0;
    cv->heavy_vcpu = -1;
    for (unsigned i = 0; i < n && i < cs->nvcpus; i++) {
        uint64_t d = lm_sat_sub(pages[i], cs->vcpu_pages[i]);
        total += d;
        if (d > top) {
            top = d;
            cv->heavy_vcpu = (int)i;
        }
    }
    uint32_t page = e->nblocks ? e->blocks[0]->page_size : 4096;
    uint64_t dt = now - cs->last_sync_ns;
    cv->vcpu_dirty_rate = dt ? (uint64_t)((double)total * page * 1e9 / (double)dt) : 0;
    cv->heavy_vcpu_percent = total ? (unsigned)(top * 100 / total) : 0;
    if (!total) {
        cv->heavy_vcpu = -1;
    }
    memcpy(cs->vcpu_pages, pages, n * sizeof(pages[0]));
    cs->nvcpus = n;
}

/* The block holding most of what remains (the migration thread owns the
 * dirty bitmaps between syncs). */
static void block_share(lm_engine *e, lm_convergence *cv)
{
    uint64_t total = 0, top = 0;
    cv->heavy_block[0] = '\0';
    for (size_t i = 0; i < e->nblocks; i++) {
        lm_ram_block *b = e->blocks[i];
        uint64_t bytes = b->dirty ? lm_bitmap_count(b->dirty, b->npages) * b->page_size : 0;
        total += bytes;
        if (bytes > top) {
            top = bytes;
            snprintf(cv->heavy_block, sizeof(cv->heavy_block), "%s", b->name);
        }
    }
    cv->heavy_block_percent = total ? (unsigned)(top * 100 / total) : 0;
}

static void explain(lm_convergence *cv, const lm_conv_input *in)
{
    char dirty[32], link[32];
    format_rate(dirty, sizeof(dirty), cv->dirty_rate);
    format_rate(link, sizeof(link), cv->bandwidth);
    size_t len = 0;
    if (in->fits) {
        len = (size_t)snprintf(cv->reason, sizeof(cv->reason),
                               "what remains fits the downtime limit: switching over");
    } else if (cv->never) {
        len = (size_t)snprintf(cv->reason, sizeof(cv->reason),
                               "the guest dirties %s, the link carries %s", dirty, link);
    } else {
        len = (size_t)snprintf(cv->reason, sizeof(cv->reason),
                               "converging: the guest dirties %s, the link carries %s", dirty,
                               link);
    }
    if (!in->fits && cv->heavy_vcpu >= 0 && len < sizeof(cv->reason)) {
        len += (size_t)snprintf(cv->reason + len, sizeof(cv->reason) - len,
                                "; vCPU %d dirties %u %% of it", cv->heavy_vcpu,
                                cv->heavy_vcpu_percent);
    }
    if (!in->fits && cv->heavy_block[0] && len < sizeof(cv->reason)) {
        snprintf(cv->reason + len, sizeof(cv->reason) - len, "; block %s holds %u %% of what remains",
                 cv->heavy_block, cv->heavy_block_percent);
    }
}

lm_conv_action lm_convergence_update(struct lm_engine *e, lm_conv_state *cs, lm_conv_input *in)
{
    uint64_t now = lm_now_ns();
    pthread_mutex_lock(&e->lock);
    lm_convergence cv = e->stats.convergence;
    bool auto_pc = e->caps[LM_CAP_X_AUTO_POSTCOPY];
    bool dirty_limit = e->caps[LM_CAP_DIRTY_LIMIT];
    bool auto_converge = e->caps[LM_CAP_AUTO_CONVERGE];
    uint64_t max_stalls = e->params.x_auto_postcopy_passes;
    uint64_t time_bound_ns = lm_sat_mul(e->params.x_auto_postcopy_time, 1000000);
    pthread_mutex_unlock(&e->lock);

    vcpu_shares(e, cs, now, &cv);
    block_share(e, &cv);
    cs->last_sync_ns = now;

    lm_conv_pass *rec = &in->rec;
    uint64_t secs_ns = rec->duration_ns;
    cv.pass = rec->pass;
    cv.bandwidth = rec->bandwidth;
    cv.tracker_dirty_rate = secs_ns ? (uint64_t)((double)rec->dirty_bytes * 1e9 / (double)secs_ns) : 0;
    cv.dirty_rate = LM_MAX(cv.tracker_dirty_rate, cv.vcpu_dirty_rate);
    cv.ratio = cv.bandwidth ? (double)cv.dirty_rate / (double)cv.bandwidth : 0.0;
    rec->guest_dirty_rate = cv.dirty_rate;

    uint64_t prev = cv.npending ? cv.pending[cv.npending - 1] : 0;
    if (cv.npending == LM_CONVERGENCE_HISTORY) {
        memmove(cv.pending, cv.pending + 1, (LM_CONVERGENCE_HISTORY - 1) * sizeof(cv.pending[0]));
        cv.npending--;
    }
    cv.pending[cv.npending++] = in->pending;

    bool measured = rec->pass > 1 && cv.bandwidth > 0;
    const char *trend = "flat";
    if (prev && lm_sat_mul(in->pending, 100) < lm_sat_mul(prev, 100 - TREND_BAND)) {
        trend = "shrinking";
    } else if (prev && lm_sat_mul(in->pending, 100) > lm_sat_mul(prev, 100 + TREND_BAND)) {
        trend = "growing";
    }
    snprintf(cv.trend, sizeof(cv.trend), "%s", trend);
    bool stalled = measured && !in->fits && prev &&
                   lm_sat_mul(in->pending, 100) >= lm_sat_mul(prev, STALL_PERCENT) &&
                   lm_sat_mul(cv.dirty_rate, 100) >= lm_sat_mul(cv.bandwidth, LINK_SPEED_PERCENT);
    cv.stalled_passes = stalled ? cv.stalled_passes + 1 : 0;

    cv.valid = measured;
    cv.downtime_ms = in->expected_ns / 1000000;
    bool shrinking = !strcmp(trend, "shrinking");
    cv.never = measured && !in->fits &&
               (cv.stalled_passes >= 2 || (cv.dirty_rate >= cv.bandwidth && !shrinking) ||
                cv.tracker_dirty_rate >= cv.bandwidth);
    cv.eta_ms = 0;
    if (measured && in->fits) {
        cv.eta_ms = cv.downtime_ms;
    } else if (measured && !cv.never) {
        uint64_t fit_bytes = (uint64_t)((double)in->switchover_bw * (double)in->limit_ns / 1e9);
        uint64_t net = cv.bandwidth - cv.tracker_dirty_rate;
        cv.eta_ms = (uint64_t)((double)lm_sat_sub(in->pending, fit_bytes) * 1e3 / (double)net) +
                    cv.downtime_ms;
    }
    if (measured) {
        explain(&cv, in);
    }

    lm_conv_action act = LM_CONV_NONE;
    if (auto_pc && !cs->acted) {
        bool over_time = time_bound_ns && now - cs->precopy_start_ns >= time_bound_ns && !shrinking;
        if (measured && !in->fits && (cv.stalled_passes >= max_stalls || over_time)) {
            act = in->postcopy_possible ? LM_CONV_POSTCOPY
                  : dirty_limit         ? LM_CONV_DIRTY_LIMIT
                  : auto_converge       ? LM_CONV_AUTO_CONVERGE
                                        : LM_CONV_GIVE_UP;
            /* A throttle step may not be enough: step again after another
             * N stalled passes.  The others act once. */
            cs->acted = act != LM_CONV_AUTO_CONVERGE;
            cv.stalled_passes = 0;
            if (act == LM_CONV_AUTO_CONVERGE) {
                cs->precopy_start_ns = now;
            }
            snprintf(cv.auto_postcopy, sizeof(cv.auto_postcopy), "%s", lm_conv_action_name(act));
            cv.auto_postcopy_pass = rec->pass;
        } else if (!cv.auto_postcopy[0]) {
            snprintf(cv.auto_postcopy, sizeof(cv.auto_postcopy), "watching");
        }
    }

    pthread_mutex_lock(&e->lock);
    e->stats.convergence = cv;
    e->stats.last_pass = *rec;
    pthread_mutex_unlock(&e->lock);
    return act;
}
