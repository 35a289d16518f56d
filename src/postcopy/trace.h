/*
 * Postcopy, both sides: per-request timing of the urgent path (a fault,
 * its request, the source serving it, the destination receiving and
 * placing the page), for finding where a slow fault's time goes
 * (bench/postcopy_latency.c joins it with the vCPU's own timings).
 *
 * Off unless the environment variable LIVEMIG_POSTCOPY_TRACE names a
 * file.  Each lm_pc_dst / lm_pc_src owns one trace: marks go into a fixed
 * array (one clock read and one atomic add each, no lock; marks beyond
 * its size are dropped), and when it is closed the lines
 *
 *     <role> <event> <channel> <block> <page> <ns>
 *
 * are appended to the file (role src or dst; channel p: preempt, m: main,
 * -: none; block: the wire index; page: the block's target page; ns:
 * CLOCK_MONOTONIC, comparable between the two processes of one host).
 */
#ifndef LM_POSTCOPY_TRACE_H
#define LM_POSTCOPY_TRACE_H

#include <stdint.h>

typedef enum lm_pc_trace_event {
    LM_PCT_FAULT,    /* dst: the fault thread read the fault */
    LM_PCT_REQ,      /* dst: the request is written to the return path */
    LM_PCT_QUEUED,   /* src: the return-path thread queued the request */
    LM_PCT_TAKEN,    /* src: a sender took it from the queue */
    LM_PCT_SENT,     /* src: its page is flushed to the socket */
    LM_PCT_HDR,      /* dst: a record of a requested page starts to be read */
    LM_PCT_DATA,     /* dst: its bytes are in the receive buffer */
    LM_PCT_PLACED,   /* dst: placed in guest RAM (waiters woken) */
    LM_PCT_NEVENTS
} lm_pc_trace_event;

typedef struct lm_pc_trace lm_pc_trace;

/* NULL when tracing is off (or out of memory): every call takes NULL. */
lm_pc_trace *lm_pc_trace_open(const char *role);
/* chan: 'p', 'm' or '-'. */
void lm_pc_trace_mark(lm_pc_trace *t, lm_pc_trace_event ev, char chan, uint32_t block, uint64_t page);
/* Appends the marks to the file and frees. */
void lm_pc_trace_close(lm_pc_trace *t);

#endif
