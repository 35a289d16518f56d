/* Private to dest.c and fault.c. */
#ifndef LM_POSTCOPY_DEST_INTERNAL_H
#define LM_POSTCOPY_DEST_INTERNAL_H

#include "postcopy/dest.h"
#include "postcopy/place_queue.h"
#include "postcopy/postcopy.h"
#include "postcopy/trace.h"

/* The most target pages of one THP host page (2 MiB of 4 KiB pages). */
#define LM_PC_HP_MAX 512u

/* The receive buffer of one channel: a run of 4 KiB-host-page records, or
 * one THP host page assembled from its records (in any order: a requested
 * page comes first, then the rest), or (the main channel, a block of 4 KiB
 * host pages) one 2 MiB-aligned frame of background pages held until it is
 * whole (`frame`, dest.c's frame_*).  2 MiB-aligned, so a whole host page
 * or frame can be moved into guest RAM as one huge page. */
typedef struct lm_pc_placer {
    uint8_t *map;     /* the mapping; buf is its 2 MiB-aligned start */
    size_t map_len;
    uint8_t *buf;
    size_t cap;
    bool thp;         /* buf is advised MADV_HUGEPAGE */
    lm_ram_block *blk;
    uint64_t hp_first;
    bool frame;                         /* blk/hp_first: a held frame, not a THP host page */
    uint64_t filled;                    /* pages of the host page (frame) in buf */
    uint64_t have[LM_PC_HP_MAX / 64];   /* which ones */
    uint8_t *lone;                      /* a LONE record's page, or a lone one of a 4 KiB block */
    size_t lone_len;
} lm_pc_placer;

typedef struct lm_pc_wait {
    bool active;
    uint32_t block;
    uint64_t page; /* the page the vCPU faulted on */
    uint64_t start_ns;
} lm_pc_wait;

struct lm_pc_dst {
    lm_pc_dst_ctx ctx;
    lm_ram_block *blocks[LM_MAX_RAM_BLOCKS]; /* wire order */
    uint32_t wire_of[LM_MAX_RAM_BLOCKS];     /* local index -> wire index */
    size_t nblocks;
    bool preempt;
    int uffd;
    bool listening;
    bool zeropage_ok[LM_MAX_RAM_BLOCKS];
    /* UFFDIO_MOVE may place this block's pages (private anonymous memory,
     * the kernel has it, not turned off); cleared when the kernel refuses
     * a move, and COPY takes over. */
    bool move_ok[LM_MAX_RAM_BLOCKS];
    /* LIVEMIG_POSTCOPY_PLACE: "copy" never moves; "frames" also holds
     * whole 2 MiB frames of 4 KiB blocks and moves each in as a huge page
     * (dest.c, frames); "move" does that and moves any other run of 4 KiB
     * pages too.  By default only THP host pages move, and 4 KiB runs are
     * copied: on this host a move (of a run, or of a frame) cost more
     * destination CPU than a copy, since the buffer must be filled with
     * fresh pages (a fresh huge page for a frame) again, see
     * bench/postcopy-results.md. */
    enum { LM_PC_PLACE_AUTO, LM_PC_PLACE_COPY, LM_PC_PLACE_FRAMES, LM_PC_PLACE_MOVE } place_mode;
    bool frames;                              /* frames are held (FRAMES, MOVE) */
    /* LIVEMIG_POSTCOPY_PLACERS: placer threads of the main channel's
     * background runs of 4 KiB blocks (place_queue.h; 0: placed inline by
     * the load thread, as before).  Not with frames nor moves, which
     * keep their buffer on the load thread.  pq: from LISTEN on. */
    unsigned nplacers;
    lm_pc_pq *pq;
    bool move_wanted;                         /* place_mode is not COPY, and the kernel has moves */
    /* Bytes placed by each means (atomic), logged at the end; frames:
     * whole 2 MiB frames of a 4 KiB block moved as one huge page. */
    uint64_t moved_bytes, copied_bytes, zero_bytes, frames_moved;
    /* Zero pages of shared memory left as holes (leave_zero_run). */
    uint64_t zero_left_bytes;
    /* Held frames copied because a page of theirs went in early (a vCPU
     * asked for it), and held frames dropped by a broken connection. */
    uint64_t frames_early, frames_dropped;
    /* Pages a move found placed meanwhile (atomic): the move split its
     * source's huge page. */
    uint64_t move_skips;
    uint64_t *requested[LM_MAX_RAM_BLOCKS];
    /* Per target page: a vCPU faulted on it and waits.  Such a page is
     * placed as soon as its record arrives, even before the rest of its
     * THP host page. */
    uint64_t *waiting[LM_MAX_RAM_BLOCKS];
    /* Pages set in waiting[] of blocks of 2 MiB pages (hugetlbfs; atomic,
     * lm_pc_pause_for). While some are and the preempt channel brings
     * them, the background stream pauses (place_cb). */
    uint64_t nwaiting;
    uint64_t total_pages;
    uint64_t received_pages;                  /* atomic */

    pthread_mutex_t lock;                     /* below, and progress waits */
    pthread_cond_t cond;
    /* The preempt receiver's failure (common/failure.h): the first one
     * sticks, while listening and not stopping. */
    int pre_code;
    lm_error pre_err;
    bool pre_stopping;
    lm_channel *pre;
    lm_listener *pre_listener;
    pthread_t pre_thread;
    bool pre_running;

    pthread_mutex_t rp_lock;                  /* the fault thread and the load thread write */
    lm_channel *rp;

    pthread_t fault_thread;
    bool fault_running;
    int wake_fd;

    lm_pc_placer main_pl, pre_pl;
    uint8_t *zero_buf;
    size_t zero_len;

    pthread_mutex_t bt_lock;                  /* ctx.blocktime: below */
    lm_pc_wait waits[LM_MAX_VCPUS];
    uint64_t vcpu_ns[LM_MAX_VCPUS];
    unsigned nblocked;                        /* also read without the lock */
    uint64_t all_since_ns;
    uint64_t total_ns;

    lm_pc_trace *trace;                       /* LIVEMIG_POSTCOPY_TRACE, else NULL */
};

/* dest.c */
/* Places [first, first+n) from src (NULL: zeros), skipping pages already
 * placed.  movable: src is a receive buffer whose pages may be moved
 * into guest RAM (UFFDIO_MOVE), leaving holes there. */
int lm_pc_place_range(lm_pc_dst *d, uint32_t wi, lm_ram_block *b, uint64_t first, uint64_t n,
                      uint8_t *src, bool movable, lm_error *err);
int lm_pc_uffd_place(lm_pc_dst *d, uint32_t wi, void *addr, const uint8_t *src, size_t len,
                     lm_error *err);
/* Whether a vCPU waiting in block b pauses the background stream: where a
 * requested page is a whole 2 MiB page (hugetlbfs), the preempt receiver
 * reads and copies 2 MiB and competes for the CPUs with the background
 * threads.  A 4 KiB page (a 4 KiB block, or THP's LONE page) is placed in
 * microseconds: pausing there only slowed the background and, measured,
 * made 4 KiB faults' tail worse. */
static inline bool lm_pc_pause_for(const lm_ram_block *b)
{
    return b->page_size >= LM_HUGE_2M;
}

/* n pages left waiting[]: wakes a background stream paused for them. */
void lm_pc_waiting_done(lm_pc_dst *d, uint64_t n);
void lm_pc_blocktime_begin(lm_pc_dst *d, int tid, uint32_t wi, uint64_t page);
void lm_pc_blocktime_end(lm_pc_dst *d, uint32_t wi, uint64_t first, uint64_t n);
/* REQ_PAGES for [first, first+n): the faulting page first (the source
 * sends the host page around it, that page ahead of the rest). */
void lm_pc_send_request(lm_pc_dst *d, uint32_t wi, uint64_t first, uint64_t n);

/* fault.c */
int lm_pc_fault_start(lm_pc_dst *d, lm_error *err);
void lm_pc_fault_stop(lm_pc_dst *d);

#endif
