/* Private to dest.c and fault.c. */
#ifndef LM_POSTCOPY_DEST_INTERNAL_H
#define LM_POSTCOPY_DEST_INTERNAL_H

#include "postcopy/dest.h"
#include "postcopy/postcopy.h"

/* Assembles one host page from the records of one channel. */
typedef struct lm_pc_placer {
    uint8_t *buf;
    size_t cap;
    lm_ram_block *blk;
    uint64_t hp_first;
    uint64_t filled;
} lm_pc_placer;

typedef struct lm_pc_wait {
    bool active;
    uint32_t block;
    uint64_t hp_first;
    uint64_t start_ns;
} lm_pc_wait;

struct lm_pc_dst {
    lm_engine *e;
    lm_ram_block *blocks[LM_MAX_RAM_BLOCKS]; /* wire order */
    uint32_t wire_of[LM_MAX_RAM_BLOCKS];     /* local index -> wire index */
    size_t nblocks;
    bool preempt;
    int uffd;
    bool listening;
    bool zeropage_ok[LM_MAX_RAM_BLOCKS];
    uint64_t *requested[LM_MAX_RAM_BLOCKS];
    uint64_t total_pages;
    uint64_t received_pages;                  /* atomic */

    pthread_mutex_t lock;                     /* below, and progress waits */
    pthread_cond_t cond;
    bool pre_failed;
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

    bool blocktime;
    pthread_mutex_t bt_lock;
    unsigned nvcpus;
    int tids[LM_MAX_VCPUS];
    lm_pc_wait waits[LM_MAX_VCPUS];
    uint64_t vcpu_ns[LM_MAX_VCPUS];
    unsigned nblocked;                        /* also read without the lock */
    uint64_t all_since_ns;
    uint64_t total_ns;
};

/* dest.c */
int lm_pc_place_range(lm_pc_dst *d, uint32_t wi, lm_ram_block *b, uint64_t first, uint64_t n,
                      const uint8_t *src, lm_error *err);
int lm_pc_uffd_place(lm_pc_dst *d, uint32_t wi, void *addr, const uint8_t *src, size_t len,
                     lm_error *err);
void lm_pc_blocktime_begin(lm_pc_dst *d, int tid, uint32_t wi, uint64_t hp_first);
void lm_pc_blocktime_end(lm_pc_dst *d, uint32_t wi, uint64_t first, uint64_t n);
void lm_pc_send_request(lm_pc_dst *d, uint32_t wi, uint64_t hp_first, uint64_t hp);

/* fault.c */
int lm_pc_fault_start(lm_pc_dst *d, lm_error *err);
void lm_pc_fault_stop(lm_pc_dst *d);

#endif
