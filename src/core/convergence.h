/*
 * Convergence: after every dirty sync, the source's forecast and
 * explanation (x-convergence in query-migrate) and the x-auto-postcopy
 * decision.  Pure bookkeeping over what the migration thread measured; it
 * acts on nothing itself: lm_convergence_update() says what x-auto-postcopy
 * wants and migration.c does it.
 *
 * Each pass's numbers are also kept as an lm_conv_pass (the last one in
 * e->stats.last_pass), the form a pass history can copy.
 */
#ifndef LM_CORE_CONVERGENCE_H
#define LM_CORE_CONVERGENCE_H

#include <stdbool.h>
#include <stdint.h>

#include "livemig/engine.h"

struct lm_engine;

/* One precopy pass, as measured at the dirty sync that ended it. */
typedef struct lm_conv_pass {
    uint64_t pass;
    uint64_t start_ns;         /* CLOCK_MONOTONIC */
    uint64_t duration_ns;
    uint64_t dirty_bytes;      /* newly dirty pages found at its sync */
    uint64_t sent_bytes;
    uint64_t bandwidth;        /* bytes/s */
    uint64_t remaining;        /* bytes still to send after its sync */
    uint64_t guest_dirty_rate; /* bytes/s, x-convergence's dirty-rate */
    int throttle_percent;      /* auto-converge */
    bool dirty_limit;          /* a dirty-limit migration's limits in force */
    uint64_t dirty_limit_throttle_us; /* dirty-limit-throttle-time-per-round */
} lm_conv_pass;

typedef enum lm_conv_action {
    LM_CONV_NONE,
    LM_CONV_POSTCOPY,      /* switch to postcopy now */
    LM_CONV_DIRTY_LIMIT,   /* postcopy off: engage the dirty limits */
    LM_CONV_AUTO_CONVERGE, /* postcopy off: throttle the guest harder */
    LM_CONV_GIVE_UP,       /* nothing to fall back to: recorded only */
} lm_conv_action;

/* The migration thread's own state between syncs. */
typedef struct lm_conv_state {
    uint64_t precopy_start_ns;
    uint64_t last_sync_ns;
    unsigned nvcpus;
    uint64_t vcpu_pages[LM_MAX_VCPUS]; /* counters at the last sync */
    bool acted;                         /* x-auto-postcopy acted already */
} lm_conv_state;

/* What one sync measured. */
typedef struct lm_conv_input {
    lm_conv_pass rec;
    uint64_t pending;         /* RAM + devices still to send */
    uint64_t switchover_bw;   /* bytes/s the stop-copy is expected to get */
    uint64_t expected_ns;     /* expected downtime */
    uint64_t limit_ns;        /* downtime-limit */
    bool fits;                /* expected <= limit */
    bool postcopy_possible;   /* postcopy-ram on and set up for this migration */
} lm_conv_input;

void lm_convergence_begin(struct lm_engine *e, lm_conv_state *cs);
/* Called by the migration thread after each sync (not under e->lock):
 * updates e->stats.convergence and e->stats.last_pass; returns what
 * x-auto-postcopy asks for (LM_CONV_NONE unless it is on). */
lm_conv_action lm_convergence_update(struct lm_engine *e, lm_conv_state *cs, lm_conv_input *in);
const char *lm_conv_action_name(lm_conv_action a);

#endif
