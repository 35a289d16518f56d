/*
 * The migration state machine (QEMU's MigrationStatus, qapi/migration.json):
 *
 *   none -> setup -> active -> [pre-switchover] -> device -> completed
 *   device -> postcopy-device -> postcopy-active -> ... -> completed (source)
 *   active -> postcopy-device (LISTEN) -> postcopy-active (RUN) (destination)
 *   any running state -> failed | cancelling -> cancelled
 *
 * Every transition is checked against the table below and emits a QMP
 * MIGRATION event.  The `device` state is entered on every switchover.
 */
#include <assert.h>
#include <pthread.h>

#include "core/engine_internal.h"

static const char *const status_names[LM_STATUS__COUNT] = {
    [LM_STATUS_NONE] = "none",
    [LM_STATUS_SETUP] = "setup",
    [LM_STATUS_CANCELLING] = "cancelling",
    [LM_STATUS_CANCELLED] = "cancelled",
    [LM_STATUS_ACTIVE] = "active",
    [LM_STATUS_POSTCOPY_ACTIVE] = "postcopy-active",
    [LM_STATUS_POSTCOPY_PAUSED] = "postcopy-paused",
    [LM_STATUS_POSTCOPY_RECOVER_SETUP] = "postcopy-recover-setup",
    [LM_STATUS_POSTCOPY_RECOVER] = "postcopy-recover",
    [LM_STATUS_COMPLETED] = "completed",
    [LM_STATUS_FAILED] = "failed",
    [LM_STATUS_PRE_SWITCHOVER] = "pre-switchover",
    [LM_STATUS_DEVICE] = "device",
    [LM_STATUS_POSTCOPY_DEVICE] = "postcopy-device",
};

const char *lm_status_name(lm_status s)
{
    return (unsigned)s < LM_STATUS__COUNT ? status_names[s] : "unknown";
}

#define BIT(s) (1u << (s))
_Static_assert(LM_STATUS__COUNT <= 32, "allowed[] holds a set of states in an unsigned");
#define ENDS (BIT(LM_STATUS_FAILED) | BIT(LM_STATUS_CANCELLING))

/* allowed[from] = set of states reachable from `from`. */
static const unsigned allowed[LM_STATUS__COUNT] = {
    [LM_STATUS_NONE] = BIT(LM_STATUS_SETUP),
    [LM_STATUS_SETUP] = BIT(LM_STATUS_ACTIVE) | ENDS,
    [LM_STATUS_ACTIVE] = BIT(LM_STATUS_PRE_SWITCHOVER) | BIT(LM_STATUS_DEVICE) |
                         BIT(LM_STATUS_POSTCOPY_DEVICE) | BIT(LM_STATUS_COMPLETED) | ENDS,
    [LM_STATUS_PRE_SWITCHOVER] = BIT(LM_STATUS_DEVICE) | ENDS,
    [LM_STATUS_DEVICE] = BIT(LM_STATUS_COMPLETED) | BIT(LM_STATUS_POSTCOPY_DEVICE) | ENDS,
    /* Not committed yet: it may still fail or be cancelled (the source
     * guest runs on); the destination pauses once it acknowledged. */
    [LM_STATUS_POSTCOPY_DEVICE] = BIT(LM_STATUS_POSTCOPY_ACTIVE) | BIT(LM_STATUS_POSTCOPY_PAUSED) |
                                  ENDS,
    [LM_STATUS_POSTCOPY_ACTIVE] = BIT(LM_STATUS_POSTCOPY_PAUSED) | BIT(LM_STATUS_COMPLETED) |
                                  BIT(LM_STATUS_FAILED),
    [LM_STATUS_POSTCOPY_PAUSED] = BIT(LM_STATUS_POSTCOPY_RECOVER_SETUP) |
                                  BIT(LM_STATUS_POSTCOPY_RECOVER) | BIT(LM_STATUS_FAILED),
    [LM_STATUS_POSTCOPY_RECOVER_SETUP] = BIT(LM_STATUS_POSTCOPY_RECOVER) |
                                         BIT(LM_STATUS_POSTCOPY_PAUSED) | BIT(LM_STATUS_FAILED),
    [LM_STATUS_POSTCOPY_RECOVER] = BIT(LM_STATUS_POSTCOPY_ACTIVE) |
                                   BIT(LM_STATUS_POSTCOPY_PAUSED) | BIT(LM_STATUS_FAILED),
    [LM_STATUS_CANCELLING] = BIT(LM_STATUS_CANCELLED) | BIT(LM_STATUS_FAILED),
    /* A new migration may start after the previous one ended. */
    [LM_STATUS_COMPLETED] = BIT(LM_STATUS_SETUP),
    [LM_STATUS_FAILED] = BIT(LM_STATUS_SETUP),
    [LM_STATUS_CANCELLED] = BIT(LM_STATUS_SETUP),
};

static void emit(lm_engine *e, lm_status s)
{
    if (e->cb.on_event) {
        lm_event ev = { .kind = LM_EVENT_MIGRATION, .status = s };
        e->cb.on_event(e->opaque, &ev);
    }
}

static bool transition_locked(lm_engine *e, lm_status from, lm_status to, uint64_t *gen)
{
    assert((unsigned)from < LM_STATUS__COUNT && (unsigned)to < LM_STATUS__COUNT);
    if (e->status != from || !(allowed[from] & BIT(to))) {
        return false;
    }
    e->status = to;
    *gen = ++e->status_gen;
    pthread_cond_broadcast(&e->cond);
    return true;
}

/* Emits the event, then lets queries see the status, unless another
 * transition came in between (its own publish will show the newer one). */
static void emit_and_publish(lm_engine *e, lm_status to, uint64_t gen)
{
    emit(e, to);
    pthread_mutex_lock(&e->lock);
    if (e->status_gen == gen) {
        e->visible_status = to;
    }
    pthread_mutex_unlock(&e->lock);
}

/* any: from whatever the status is when the lock is taken. */
static bool set_state(lm_engine *e, bool any, lm_status from, lm_status to)
{
    uint64_t gen = 0;
    pthread_mutex_lock(&e->lock);
    bool moved = transition_locked(e, any ? e->status : from, to, &gen);
    pthread_mutex_unlock(&e->lock);
    if (moved) {
        emit_and_publish(e, to, gen);
    }
    return moved;
}

bool lm_set_state(lm_engine *e, lm_status from, lm_status to)
{
    return set_state(e, false, from, to);
}

bool lm_set_state_any(lm_engine *e, lm_status to)
{
    return set_state(e, true, LM_STATUS_NONE, to);
}

bool lm_state_is_active(lm_status s)
{
    switch (s) {
    case LM_STATUS_SETUP:
    case LM_STATUS_ACTIVE:
    case LM_STATUS_PRE_SWITCHOVER:
    case LM_STATUS_DEVICE:
    case LM_STATUS_CANCELLING:
    case LM_STATUS_POSTCOPY_DEVICE:
    case LM_STATUS_POSTCOPY_ACTIVE:
    case LM_STATUS_POSTCOPY_PAUSED:
    case LM_STATUS_POSTCOPY_RECOVER_SETUP:
    case LM_STATUS_POSTCOPY_RECOVER:
        return true;
    default:
        return false;
    }
}

void lm_emit_pass(lm_engine *e, uint64_t pass)
{
    if (e->cb.on_event) {
        lm_event ev = { .kind = LM_EVENT_MIGRATION_PASS, .status = LM_STATUS_ACTIVE, .pass = pass };
        e->cb.on_event(e->opaque, &ev);
    }
}

void lm_engine_fail(lm_engine *e, const lm_error *err)
{
    pthread_mutex_lock(&e->lock);
    lm_error_propagate(&e->error, err);
    pthread_mutex_unlock(&e->lock);
}
