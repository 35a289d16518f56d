/*
 * The destination's fault thread: reads userfaultfd events for guest RAM
 * and gets each missing host page asked for exactly once.
 *
 *  - a page already received but never populated (a zero page that was
 *    never touched) is filled with zeros on the spot;
 *  - otherwise the host page is marked requested and REQ_PAGES goes to the
 *    source on the return path (while paused, it is only marked: the
 *    request is sent on resume).
 * Whoever places the page (load thread, preempt receiver) wakes every
 * vCPU waiting on it; UFFDIO_COPY does so by itself.
 *
 * API in dest_internal.h: lm_pc_fault_start / lm_pc_fault_stop.
 */
#ifndef LM_POSTCOPY_FAULT_H
#define LM_POSTCOPY_FAULT_H

#include "postcopy/dest_internal.h"

#endif
