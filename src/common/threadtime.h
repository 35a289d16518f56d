/*
 * How the calling thread spent its time: on a CPU, or runnable but waiting
 * for one.  The switchover's estimate (core/migration.c) times a pass's
 * sends without the time its thread only waited for a CPU (the vCPUs and
 * the destination share the host's CPUs with it while the guest runs; the
 * stop-copy, with the guest stopped, does not wait for them), and the
 * destination's load rate by the CPU time its loads took.
 */
#ifndef LM_COMMON_THREADTIME_H
#define LM_COMMON_THREADTIME_H

#include <stdint.h>

/* CPU time of the calling thread (ns). */
uint64_t lm_thread_cpu_ns(void);
/* Time the calling thread spent runnable but not running, since it began
 * (ns; the kernel's schedstat).  0 where the kernel does not say (then a
 * difference of two readings is 0 too: nothing is subtracted). */
uint64_t lm_thread_runq_wait_ns(void);

#endif
