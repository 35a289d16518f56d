/*
 * The return path's messages (destination -> source), encoded and decoded.
 *
 * The destination writes them on its main connection; the source reads
 * them on the same socket through its own lm_channel on a dup'ed fd, so
 * reading never shares buffers with the migration thread's writes.  Every
 * field read is checked against the message's length, and block and page
 * numbers are checked by the caller against its own blocks.
 */
#ifndef LM_POSTCOPY_RETURN_PATH_H
#define LM_POSTCOPY_RETURN_PATH_H

#include <stdint.h>

#include <stddef.h>

#include "channel/channel.h"
#include "livemig/error.h"
#include "stream/format.h"

/* The longest DOWNTIME body: a breakdown's wire form (core/breakdown.h,
 * LM_BD_WIRE_MAX: 64 parts of a 48-byte name; core checks they agree).
 * The body is the engine's to encode and decode: the return path only
 * carries it. */
#define LM_RP_DOWNTIME_MAX (2 + 64 * (1 + 48 + 8))

typedef struct lm_rp_msg {
    uint16_t type;
    uint32_t status;  /* SHUT, PONG */
    uint16_t block;   /* REQ_PAGES, RECV_BITMAP */
    uint64_t first;   /* REQ_PAGES: first page; RECV_BITMAP: first word */
    uint32_t count;   /* REQ_PAGES: pages; RECV_BITMAP: words */
    uint64_t words[LM_RP_BITMAP_MAX_WORDS]; /* RECV_BITMAP */
    uint64_t backlog; /* BACKLOG: bytes received, not yet loaded (seq in status) */
    uint64_t load_bw; /* BACKLOG: bytes/s its RAM loads reach on its CPU (0: unknown) */
    uint16_t downtime_len;                   /* DOWNTIME: its body, */
    uint8_t downtime[LM_RP_DOWNTIME_MAX];    /* a breakdown's wire form */
} lm_rp_msg;

/* Writers flush: a message is useful only once it is on the wire. */
int lm_rp_send_req_pages(lm_channel *ch, uint16_t block, uint64_t first, uint32_t count);
/* The whole bitmap of one block, in chunks of LM_RP_BITMAP_MAX_WORDS. */
int lm_rp_send_recv_bitmap(lm_channel *ch, uint16_t block, const uint64_t *map, uint64_t npages);
int lm_rp_send_resume_ack(lm_channel *ch);
/* Precopy's accounting of the switchover (source: migration.c). */
int lm_rp_send_backlog(lm_channel *ch, uint32_t seq, uint64_t backlog, uint64_t load_bw);
/* body: a breakdown's wire form (lm_bd_encode), len <= LM_RP_DOWNTIME_MAX. */
int lm_rp_send_downtime(lm_channel *ch, const uint8_t *body, size_t len);
/* switchover-ack: the destination's devices are ready (sent just before
 * the BACKLOG of a DRAIN, so it is only ever read in a drain's loop). */
int lm_rp_send_switchover_ack(lm_channel *ch);

/* Reads one message of any type; unknown types are an error. */
int lm_rp_read_msg(lm_channel *ch, lm_rp_msg *m, lm_error *err);

#endif
