/*
 * vCPUs: one thread per vCPU running the workload step by step.
 *
 * A vCPU runs while the set is "running" and parks between two steps as
 * soon as vcpus_pause() asks; vcpus_pause() returns once every vCPU is
 * parked, so guest memory and the register blocks are then frozen.  The
 * stop request is one atomic flag read between steps.
 *
 * vcpus_register also hands the engine each vCPU's dirty-page count and
 * its own throttle (lm_vcpu_ops, for dirty-limit and per-vCPU rates).
 *
 * Throttling (auto-converge) makes each vCPU sleep `percent` % of its time:
 * after working for t it owes t * p / (100 - p) of sleep, paid once the
 * debt reaches a millisecond.  A --dirty-rate is enforced per vCPU with a
 * token bucket.  All sleeps end early when a stop is requested.
 *
 * vCPU 0 calls the tick hook after every batch of steps: that is where the
 * guest's serial console and the vram device do their periodic work, so
 * they run exactly while the guest runs.
 *
 * Each vCPU's register block is registered as device "cpu", instance i.
 */
#ifndef LIVEMIG_VM_VCPU_H
#define LIVEMIG_VM_VCPU_H

#include <stdbool.h>
#include <stdint.h>

#include "livemig/engine.h"
#include "livemig/vcpu.h"
#include "workload.h"

typedef struct vcpus vcpus;
typedef void (*vcpu_tick_fn)(void *opaque);

/* Creates n vCPU threads, parked. */
int vcpus_new(unsigned n, workload *wl, vcpu_tick_fn tick, void *tick_opaque,
              vcpus **out, lm_error *err);
/* Parks and joins every thread. */
void vcpus_free(vcpus *vs);

int vcpus_register(vcpus *vs, lm_engine *e, lm_error *err);

void vcpus_resume(vcpus *vs);
/* Returns once every vCPU is parked.  Idempotent. */
void vcpus_pause(vcpus *vs);
bool vcpus_running(vcpus *vs);
void vcpus_set_throttle(vcpus *vs, int percent);
/* dirty-limit: vCPU `index` alone sleeps `percent` % of its time (the
 * larger of this and the whole guest's throttle applies). */
void vcpus_set_vcpu_throttle(vcpus *vs, unsigned index, int percent);

/* One vCPU's counters; safe while it runs. */
typedef struct vcpu_stats {
    uint64_t steps;
    uint64_t dirty_pages;   /* pages written (lm_vcpu_ops.dirty_pages) */
    int throttle;           /* its own throttle, percent */
    uint64_t throttle_ns;   /* time it slept paying either throttle */
} vcpu_stats;
void vcpus_vcpu_stats(vcpus *vs, unsigned index, vcpu_stats *out);

unsigned vcpus_count(const vcpus *vs);
/* Sums over every vCPU; safe while they run. */
void vcpus_progress(vcpus *vs, uint64_t *steps, uint64_t *passes);
/* Copies the register blocks into regs[count]; call with the vCPUs parked. */
void vcpus_copy_regs(vcpus *vs, wl_regs *regs);

#endif
