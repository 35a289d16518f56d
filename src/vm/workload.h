/*
 * Guest workloads: what the vCPUs do to guest RAM, one small step at a
 * time, and the invariant that proves guest RAM intact afterwards.
 *
 * All progress lives in guest RAM or in the vCPU's register block
 * (wl_regs), which migrates as the "cpu" device, so a workload resumes on
 * the destination exactly where it stopped on the source.  vCPUs stop only
 * between steps, so the invariant holds whenever they are parked.
 *
 *  increment  vCPU i owns the i-th contiguous slice of guest pages and
 *             loops over it for ever adding 1 to byte 0 of each page.
 *  random     a version table (u32 per data page) at the start of RAM,
 *             then the data pages; each step picks a page of the vCPU's
 *             part of the working set, bumps its version and fills it with
 *             pattern(page, version).
 *  idle       sleeps in 1 ms steps and writes nothing.
 */
#ifndef LIVEMIG_VM_WORKLOAD_H
#define LIVEMIG_VM_WORKLOAD_H

#include <stdint.h>

#include "guest_ram.h"
#include "vmutil.h"

typedef enum workload_kind {
    WORKLOAD_INCREMENT = 1,
    WORKLOAD_RANDOM = 2,
    WORKLOAD_IDLE = 3,
} workload_kind;

typedef struct workload_config {
    workload_kind kind;
    uint64_t dirty_rate;      /* bytes/s over all vCPUs; 0 = unlimited */
#define WL_MAX_VCPU_RATES 64
    uint64_t vcpu_rates[WL_MAX_VCPU_RATES]; /* --vcpu-dirty-rate: vCPU i's own (0 = unlimited) */
    unsigned nvcpu_rates;     /* how many were given (the first vCPUs); 0: split dirty_rate */
    unsigned ws_percent;      /* working set as % of data pages (random) ... */
    uint64_t ws_bytes;        /* ... or as a size when non-zero */
    uint64_t seed;
} workload_config;

/*
 * A vCPU's register block.  Every field migrates (see vcpu.c's field
 * table); kind/first/count describe the vCPU's share and are compared on
 * load, so a destination started with another --smp, --memory or
 * --workload refuses the state instead of corrupting guest RAM.
 */
typedef struct wl_regs {
    uint32_t kind;
    uint32_t cpu;
    uint64_t first;   /* first page of this vCPU's share (guest / data page) */
    uint64_t count;   /* pages in the share */
    uint64_t pos;     /* increment: next page in the share; random: steps into the pass */
    uint64_t rng;     /* random: xorshift64* state */
    uint64_t steps;   /* read concurrently (x-query-workload): atomic stores */
    uint64_t passes;
} wl_regs;

typedef struct workload workload;

int workload_parse_kind(const char *s, workload_kind *out, lm_error *err);
const char *workload_kind_name(workload_kind k);

int workload_new(const workload_config *cfg, guest_ram *ram, unsigned nvcpus,
                 workload **out, lm_error *err);
void workload_free(workload *w);
workload_kind workload_get_kind(const workload *w);

/* The initial register block of vCPU `cpu`. */
void workload_init_regs(const workload *w, unsigned cpu, wl_regs *regs);

/* Run up to max steps, stopping early when *stop becomes non-zero (checked
 * between steps).  Returns the number of steps made. */
unsigned workload_run(workload *w, wl_regs *regs, unsigned max, const int *stop);

/* Pacing hints for the vCPU loop. */
unsigned workload_batch(const workload *w, unsigned cpu); /* steps between time checks */
uint64_t workload_step_bytes(const workload *w);   /* bytes dirtied per step */
uint64_t workload_vcpu_rate(const workload *w, unsigned cpu); /* bytes/s, 0 = unlimited */
uint64_t workload_step_sleep_ns(const workload *w); /* idle: sleep per step */

/* Check the invariant over all guest RAM, with every vCPU parked; regs[i]
 * is vCPU i's register block. */
void workload_verify(const workload *w, const wl_regs *regs, unsigned n, struct vm_verify *res);

#endif
