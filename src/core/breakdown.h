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
 * part that does not grow with the bytes to move), in five terms:
 *   - stop: pausing the vCPUs (their threads must get a CPU to notice);
 *   - sync: the last dirty sync, with the guest stopped (with multifd,
 *     a sync point with nothing queued);
 *   - round trip: the last byte's way to the destination, its load thread
 *     waking up and the confirmation's way back;
 *   - rest: every other part that does not move bytes: device saves, the
 *     send, the destination's device loads, multifd finish, its restart;
 *   - tail: what a RAM tail of a few runs took beyond its bytes at the
 *     rate the estimate used (claiming and write-protecting a run, the
 *     first write's wake-up of the destination, its last load after the
 *     last byte).
 * The RAM tail itself is priced apart (lm_bd_run_ns): its bytes at a rate
 * plus a cost per run of dirty pages, which a scattered tail pays once per
 * page (a claim, a write-protect, a send each).
 * The round trip is measured before every switchover (the quickest of a
 * few empty DRAIN..BACKLOG, nothing queued at the destination); the other
 * four are learned from the joined breakdowns of this engine's
 * switchovers, each part on its own: a switchover without a part (no
 * confirmation in postcopy, no bytes rate known) gives that part no
 * sample rather than a 0.  Until a part has a sample its probe stands for
 * it, measured anew at every dirty sync: the stop and the rest each the
 * round trip now (each is a few thread wake-ups across processes, as the
 * round trip is), the sync the last pass's dirty sync, the tail what the
 * last pass's cheapest slice took on its CPU beyond its bytes per run it
 * had to send (the tail is one more slice), or the round trip if that is
 * more.
 * A descheduled switchover is only ever slower than the host's own cost,
 * so one slow sample must not set the next prediction: one sample counts
 * up to LM_BD_OUTLIER times its probe, two by the smaller, three or more
 * by their median (the last LM_BD_SAMPLES).  On this host a
 * sub-millisecond part swings 2-10x between consecutive switchovers, so
 * no estimate made before the stop is within 25 % of a downtime those
 * parts dominate.
 */
#define LM_BD_SAMPLES 8
#define LM_BD_OUTLIER 16
typedef struct lm_bd_series {
    uint64_t v[LM_BD_SAMPLES];
    unsigned n; /* samples taken, in all */
} lm_bd_series;

typedef struct lm_bd_learned {
    lm_bd_series stop, sync, rest, tail;
    /* The stop-copy's cost per run of dirty pages (ns): the wall time a
     * calm switchover's tail of LM_BD_RUN_MIN runs or more took (its
     * "ram-tail", "transfer" and "dst:ram-tail"), beyond its bytes at the
     * destination's load rate, per run.  What a scattered tail costs
     * that a pass, beside faulting vCPUs, overstates 5-20x. */
    lm_bd_series run;
    unsigned n; /* switchovers learned from, in all */
} lm_bd_learned;
#define LM_BD_RUN_MIN 8

/* Whether a switchover was calm: its stop and its rest (stop_ns, rest_ns)
 * each at most LM_BD_CALM times what they typically take here (the
 * series so far, or rtt_ns, the round trip before it, while empty; never
 * less than LM_BD_CALM_FLOOR_NS).  A thread that waited for a CPU (on
 * this host 1-90 ms at load 20) shows in one of them; only a calm
 * switchover's wall time teaches the cost per run. */
#define LM_BD_CALM 4
#define LM_BD_CALM_FLOOR_NS 250000
bool lm_bd_calm(const lm_bd_learned *l, uint64_t stop_ns, uint64_t rest_ns, uint64_t rtt_ns);

/* What the last pass measured, standing for what is not learned yet. */
typedef struct lm_bd_probe {
    uint64_t sync_ns; /* the last pass's dirty sync (not its sync point) */
    uint64_t rtt_ns;  /* the quickest empty round trip now (0: none measured) */
    uint64_t tail_ns; /* the last pass's cheapest slice, beyond its bytes (0: none) */
} lm_bd_probe;

/* The estimate and what it is made of. */
typedef struct lm_bd_fixed {
    uint64_t stop_ns;
    uint64_t sync_ns;
    uint64_t rtt_ns;
    uint64_t rest_ns;
    uint64_t tail_ns;
    unsigned learned; /* how many of stop, sync, rest, tail have samples */
} lm_bd_fixed;

/* The parts of a joined breakdown that move the RAM tail: "ram-tail",
 * "transfer" (the destination waiting for bytes after the source wrote
 * its last) and "dst:ram-tail" (its loads after that). */
uint64_t lm_bd_bytes_ns(const lm_bd *joined);
/* What one switchover's RAM tail was: its bytes and runs, the rate
 * (bytes/s) its estimate gave the bytes (0: none known, the tail's own
 * cost is not learned from it), the rate its runs' bytes are priced at
 * (the destination's load rate; 0: not said, the bytes are in the runs'
 * cost), whether its estimate priced it by runs (else by bw alone), and
 * the round trip measured before it (0: none; what a stop and a rest are
 * judged by while none was learned, lm_bd_calm). */
typedef struct lm_bd_tail {
    uint64_t bytes;
    uint64_t runs;
    uint64_t bw;
    uint64_t run_bw;
    bool by_runs;
    uint64_t rtt_ns;
} lm_bd_tail;
/* Learns from one switchover's joined breakdown.  A tail of LM_BD_RUN_MIN
 * runs or more teaches the cost per run (a calm switchover's only); a
 * smaller one the tail's own (fixed) cost. */
void lm_bd_learn(lm_bd_learned *l, const lm_bd *joined, const lm_bd_tail *tail);
/* The stop-copy's learned cost per run (ns; 0: nothing learned), as the
 * other learned parts: one sample up to LM_BD_OUTLIER times rtt_ns (the
 * round trip now, at least 1 us: a run costs a few wake-ups; a first
 * migration's tail lands on fresh destination memory, whose first touches
 * taught 2 ms a run where the next tail took 90 us a run), two by the
 * smaller, then the median. */
uint64_t lm_bd_run_ns(const lm_bd_learned *l, uint64_t rtt_ns);
/* Whether a cost per run was learned at all. */
static inline bool lm_bd_run_learned(const lm_bd_learned *l)
{
    return l->run.n > 0;
}
/* The fixed part for a switchover now; returns the sum. */
uint64_t lm_bd_fixed_estimate(const lm_bd_learned *l, const lm_bd_probe *p, lm_bd_fixed *out);

#endif
