/*
 * Guest RAM of livemig-vm.
 *
 * One host mapping holds all of guest RAM; it is split into N equal RAM
 * blocks ("ram0".."ramN-1") that are registered with the engine.  The
 * workloads see one flat space of 4 KiB guest pages across the blocks, so
 * a guest page number maps to host memory as base + pfn * 4096 whatever
 * the backend's page size.
 *
 * Backends: anonymous private memory (optionally THP), a memfd, a hugetlbfs
 * memfd of 2 MiB pages, or a shared mapping of a file whose existing
 * contents are the guest's RAM.
 *
 * Every guest write must be followed by guest_ram_wrote(): with manual
 * dirty tracking the engine learns about writes only from these reports.
 */
#ifndef LIVEMIG_VM_GUEST_RAM_H
#define LIVEMIG_VM_GUEST_RAM_H

#include <stdbool.h>
#include <stdint.h>

#include "livemig/engine.h"
#include "vmutil.h"

typedef enum guest_ram_backend {
    GUEST_RAM_ANON,
    GUEST_RAM_MEMFD,
    GUEST_RAM_HUGETLBFS,
    GUEST_RAM_FILE,
} guest_ram_backend;

typedef struct guest_ram_config {
    uint64_t size;           /* bytes, all blocks together */
    unsigned nblocks;
    guest_ram_backend backend;
    const char *path;        /* GUEST_RAM_FILE */
    bool thp;                /* GUEST_RAM_ANON: postcopy places 2M pages (LM_RAM_THP) */
    bool no_thp_advice;      /* GUEST_RAM_ANON: no MADV_HUGEPAGE (given by default) */
    bool dirty_log;          /* keep a dirty log and hand it to the engine
                              * (lm_ram_set_dirty_log), as a KVM VMM does */
} guest_ram_config;

/* The fields are public so the vCPUs' hot path can inline page access;
 * only guest_ram.c writes them. */
typedef struct guest_ram {
    uint8_t *base;           /* all of guest RAM, contiguous */
    uint64_t size;
    uint64_t npages;         /* 4 KiB guest pages */
    uint64_t block_size;
    unsigned nblocks;
    uint32_t page_size;      /* the page size given to the engine */
    unsigned flags;          /* lm_ram_flags */
    lm_ram_block **blocks;   /* engine handles, NULL until registered */
    /* The machine's own dirty log (--dirty-log): one bit per 4 KiB page of
     * all of RAM, set by every write while the engine logs (atomic). */
    uint64_t *log;
    int logging;             /* atomic: blocks whose log the engine reads */
    /* private */
    uint64_t map_size;
    uint8_t *map;
    int fd;
} guest_ram;

/* Parses "anon", "memfd", "hugetlbfs" or "file:PATH" into cfg. */
int guest_ram_parse_backend(const char *s, guest_ram_config *cfg, lm_error *err);
const char *guest_ram_backend_name(guest_ram_backend b);

int guest_ram_new(const guest_ram_config *cfg, guest_ram **out, lm_error *err);
int guest_ram_register(guest_ram *r, lm_engine *e, lm_error *err);
void guest_ram_free(guest_ram *r);

static inline uint8_t *guest_ram_page(const guest_ram *r, uint64_t pfn)
{
    return r->base + (pfn << VM_PAGE_SHIFT);
}

/* Report a guest write of len bytes at flat offset off (after the write).
 * Cheap when the engine does not want manual reports. */
void guest_ram_wrote_slow(guest_ram *r, uint64_t off, uint64_t len);

/* Sets the dirty log's bits for a write (guest_ram_wrote does the check). */
void guest_ram_log_write(guest_ram *r, uint64_t off, uint64_t len);

static inline void guest_ram_wrote(guest_ram *r, uint64_t off, uint64_t len)
{
    if (__atomic_load_n(&r->logging, __ATOMIC_RELAXED)) {
        guest_ram_log_write(r, off, len);
    }
    if (r->nblocks == 1) {
        /* The common case: no division, no loop. */
        lm_ram_block *b = r->blocks[0];
        if (b && lm_ram_wants_dirty_reports(b)) {
            lm_ram_mark_dirty(b, off, len);
        }
        return;
    }
    guest_ram_wrote_slow(r, off, len);
}

/* A fast 64-bit hash over all blocks in order (x-query-memory-hash). */
uint64_t guest_ram_hash(const guest_ram *r);

#endif
