/*
 * Where the downtime went (x-downtime-breakdown).
 *
 * A breakdown is a list of named parts that tile one interval: each mark
 * gives the time since the previous mark to a name, so the parts add up
 * to the interval exactly, whatever the clock does.  The source tiles its
 * own share of the blackout (stop, sync, RAM tail, each device's save,
 * the flush); the destination tiles its share (waiting for bytes, the
 * RAM tail, each device's load, the restart) and sends it on the return
 * path; lm_bd_join() lays the destination's parts onto the source's wait
 * for the confirmation, so the joined parts tile the measured downtime.
 */
#ifndef LM_CORE_BREAKDOWN_H
#define LM_CORE_BREAKDOWN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "livemig/error.h"

#define LM_BD_MAX_PARTS 64
#define LM_BD_NAME_MAX 48

typedef struct lm_bd_part {
    char name[LM_BD_NAME_MAX];
    uint64_t ns;
} lm_bd_part;

typedef struct lm_bd {
    unsigned n;
    lm_bd_part part[LM_BD_MAX_PARTS];
    uint64_t start_ns; /* the interval began */
    uint64_t last_ns;  /* the last mark */
    bool on;
} lm_bd;

/* Starts a fresh interval at now_ns. */
void lm_bd_start(lm_bd *b, uint64_t now_ns);
/* The time since the last mark goes to `name` (appended, or added to the
 * last part when it has the same name: the order is kept for the join).
 * Nothing happens while the breakdown is not started. */
void lm_bd_mark(lm_bd *b, const char *name);
void lm_bd_mark_at(lm_bd *b, const char *name, uint64_t now_ns);
/* Adds ns to the part called name wherever it is (or appends it). */
void lm_bd_add(lm_bd *b, const char *name, uint64_t ns);
uint64_t lm_bd_total(const lm_bd *b);

/* Wire form (return path DOWNTIME, docs/stream-format.md §5): be16 n, then
 * n x (u8 len, len bytes of name, be64 ns).  encode returns the length
 * written (at most cap); decode checks every length against len. */
size_t lm_bd_encode(const lm_bd *b, uint8_t *buf, size_t cap);
int lm_bd_decode(const uint8_t *buf, size_t len, lm_bd *b, lm_error *err);
/* Longest encoding. */
#define LM_BD_WIRE_MAX (2 + LM_BD_MAX_PARTS * (1 + LM_BD_NAME_MAX + 8))

/* The joined breakdown of a precopy switchover.  src tiles [t0, t4] (the
 * guest stopped .. the last byte handed to the kernel); the source then
 * waited until t5 for the destination's confirmation.  dst tiles the
 * destination's switchover on its own clock, ending when it sent the
 * confirmation; latency_ns is the one-way delay of the return path (half
 * the lowest round trip seen, 0 if unknown).  The destination's parts are
 * laid back from t5 - latency and cut at t4 (what they did before t4 ran
 * beside the source's own parts); its waiting for bytes after t4, and any
 * gap before its first part, count as "transfer", and the last stretch as
 * "confirmation".  out tiles [t0, t5] exactly. */
void lm_bd_join(const lm_bd *src, uint64_t t4_ns, uint64_t t5_ns, const lm_bd *dst,
                uint64_t latency_ns, lm_bd *out);
/* The parts of a joined breakdown that do not grow with the bytes to
 * move (everything but the RAM tail and the transfer): what a switchover
 * costs on this host however little is dirty. */
uint64_t lm_bd_fixed_ns(const lm_bd *joined);

/*
 * The fixed part of the next switchover's downtime (expected-downtime's
 * part that does not grow with the bytes to move).
 *
 * What can be measured before the switchover, without touching the guest,
 * is measured anew at every dirty sync, so it follows the host's load now:
 *   - sync: the last pass's dirty sync (and multifd sync point) stands for
 *     the switchover's last one (the caller adds multifd's END at the
 *     tail's end, a sync point again);
 *   - round trip: an empty DRAIN..BACKLOG on the return path (nothing
 *     queued at the destination) stands for the last byte's way there, the
 *     destination's load thread waking up, and the confirmation's way back.
 * What cannot be measured before it is learned from the joined breakdowns
 * of the switchovers so far:
 *   - stop: pausing the vCPUs (their threads must get a CPU to notice);
 *   - sync, too: a pass's sync runs beside faulting vCPUs (write-protect
 *     tracking contends with them) and took up to 60 ms where the
 *     switchover's, with the vCPUs stopped, took 1-2 ms;
 *   - rest: every other fixed part: device saves, the send, the
 *     destination's device loads, multifd finish and restart.
 * A descheduled switchover can only be slower than the host's own cost,
 * never faster, so one slow sample must not move the estimate: each is
 * the median of the last LM_BD_SAMPLES, and the smallest while there are
 * fewer than three.  What is known before any switchover counts as one
 * more sample: for the stop, the round trip now (a stop is two thread
 * wake-ups across a condition, the vCPU's then the migration thread's, as
 * the round trip is); for the sync, the last pass's; for the rest, 0 (the
 * devices' bytes are counted with the RAM's).  That is the whole estimate before the first switchover, and
 * after one it outvotes a slow sample: the rest is learned once two
 * switchovers agree.
 */
#define LM_BD_SAMPLES 8
typedef struct lm_bd_learned {
    uint64_t stop[LM_BD_SAMPLES];
    uint64_t sync[LM_BD_SAMPLES];
    uint64_t rest[LM_BD_SAMPLES];
    unsigned n; /* switchovers learned from, in all */
} lm_bd_learned;

/* The estimate and what it is made of. */
typedef struct lm_bd_fixed {
    uint64_t stop_ns;
    uint64_t sync_ns;
    uint64_t rtt_ns;
    uint64_t rest_ns;
    bool learned; /* stop and rest come from earlier switchovers */
} lm_bd_fixed;

/* Learns from one switchover's joined breakdown. */
void lm_bd_learn(lm_bd_learned *l, const lm_bd *joined);
/* The fixed part for a switchover now: sync_ns and rtt_ns as measured by
 * the last pass (rtt_ns 0: no round trip measured); returns the sum. */
uint64_t lm_bd_fixed_estimate(const lm_bd_learned *l, uint64_t sync_ns, uint64_t rtt_ns,
                              lm_bd_fixed *out);

#endif
