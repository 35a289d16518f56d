/*
 * MSG_ZEROCOPY on one socket: enabling it, and the completion accounting
 * the kernel asks of every user (Linux Documentation/networking/
 * msg_zerocopy.rst).
 *
 * A send with MSG_ZEROCOPY returns before the kernel is done with the
 * caller's memory: the pages stay pinned until the data has left (a NIC
 * DMA, or a copy when the route cannot do zero-copy, e.g. loopback).  Each
 * such send gets the next 32-bit id of the socket; the kernel then queues
 * completions, ranges of ids [ee_info, ee_data], on the socket's error
 * queue, with SO_EE_CODE_ZEROCOPY_COPIED when it fell back to copying.
 * The owner counts sends and completions and waits ("flushes") until they
 * match before it may reuse or give up the memory.
 *
 * One thread at a time drives an lm_zerocopy (sends, reaps, flushes); the
 * counters may be read by any thread.
 */
#ifndef LM_CHANNEL_ZEROCOPY_H
#define LM_CHANNEL_ZEROCOPY_H

#include <stdbool.h>
#include <stdint.h>

#include "livemig/error.h"

typedef struct lm_zerocopy {
    uint64_t sends;      /* sendmsg(MSG_ZEROCOPY) calls that took bytes (atomic) */
    uint64_t completed;  /* of those, released by the kernel (atomic) */
    uint64_t copied;     /* completed, but the kernel copied them (atomic) */
    uint64_t flush_completed; /* completions since the last flush */
    bool flush_real;          /* one of them was really zero-copy */
} lm_zerocopy;

/* setsockopt(SO_ZEROCOPY, 1).  The kernel accepts it for TCP only (not
 * for unix sockets): -EOPNOTSUPP then.  err says why, prefixed by what. */
int lm_zerocopy_enable(int fd, const char *what, lm_error *err);
/* Whether stream sockets of this family (AF_UNIX, AF_INET, AF_INET6) take
 * SO_ZEROCOPY: a throwaway socket asks the kernel.  0 or its -errno; the
 * caller words the message, it knows the transport. */
int lm_zerocopy_probe(int family);

/* One MSG_ZEROCOPY send took bytes. */
void lm_zerocopy_sent(lm_zerocopy *zc);
/* Reads every completion queued on fd's error queue.  wait: first block
 * until one arrives (or the socket is shut down or fails).  Returns the
 * number of sends completed by this call, or -errno: -EPIPE when the
 * socket was shut down or its peer went away with sends outstanding, the
 * socket's error when it failed. */
int lm_zerocopy_reap(lm_zerocopy *zc, int fd, bool wait);
/* Waits until every send so far has completed.  *missed: completions
 * arrived since the last flush and the kernel had copied all of them (the
 * zero copy did not happen: QEMU's dirty-sync-missed-zero-copy). */
int lm_zerocopy_flush(lm_zerocopy *zc, int fd, bool *missed);
/* Sends not yet completed. */
uint64_t lm_zerocopy_outstanding(const lm_zerocopy *zc);

#endif
