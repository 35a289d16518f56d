/*
 * Guest RAM as the engine sees it: named host ranges with a page size.
 */
#ifndef LIVEMIG_RAM_H
#define LIVEMIG_RAM_H

#include "livemig/api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LM_RAM_NAME_MAX 64

enum lm_ram_flags {
    /* The mapping is shared (memfd, file): a page missing from this
     * process's page tables is not necessarily zero. */
    LM_RAM_SHARED = 1u << 0,
    /* hugetlbfs backing: page_size is the huge page size. */
    LM_RAM_HUGETLB = 1u << 1,
    /* Anonymous memory that may be backed by transparent huge pages. */
    LM_RAM_THP = 1u << 2,
    /* fd/fd_offset name the file that holds the pages (a memfd, a tmpfs
     * or disk file; with LM_RAM_SHARED).  The source then sends pages
     * from the page cache (sendfile) without touching them through the
     * mapping, and takes the file's holes (SEEK_HOLE) as zero pages. */
    LM_RAM_FD = 1u << 3,
};

/* Growable: struct_size as lm_callbacks' (engine.h). */
typedef struct lm_ram_desc {
    size_t struct_size; /* sizeof(lm_ram_desc), or 0 for the first layout */
    const char *name;   /* unique, at most LM_RAM_NAME_MAX-1 bytes */
    void *host;         /* page-aligned host address */
    uint64_t size;      /* multiple of page_size */
    uint32_t page_size; /* 4096, or 2 MiB for hugetlbfs */
    unsigned flags;     /* lm_ram_flags */
    int fd;             /* with LM_RAM_FD: the backing file (not owned) */
    uint64_t fd_offset; /* with LM_RAM_FD: the file offset of host[0] */
} lm_ram_desc;

#define LM_RAM_DESC_INIT { .struct_size = sizeof(lm_ram_desc) }

typedef struct lm_ram_block lm_ram_block;

/* Manual dirty tracking: the embedder reports a guest write of len bytes
 * at offset (as a KVM VMM feeds its dirty log or ring).  Safe to call from
 * any thread at any time; cheap enough for every write.  Call it after the
 * write has been made visible. */
LM_API void lm_ram_mark_dirty(lm_ram_block *block, uint64_t offset, uint64_t len);

/* True when the engine wants manual dirty reports right now. */
LM_API bool lm_ram_wants_dirty_reports(const lm_ram_block *block);

/*
 * Pull-style dirty log (the shape of KVM_GET_DIRTY_LOG and of a vhost
 * log): the embedder keeps its own record of guest writes to a block and
 * the engine asks for it at every dirty sync, including the last one with
 * the guest stopped.  Used beside the engine's own tracker (the union is
 * sent), or alone with x-dirty-tracker "dirty-log".
 *
 * All three run on the migration thread, never under an engine lock; they
 * must not call back into the engine.
 */
typedef struct lm_dirty_log_ops {
    /* Tracking begins: record every write from now on (KVM: set
     * KVM_MEM_LOG_DIRTY_PAGES).  Writes made before need not be reported.
     * May be NULL. */
    int (*start)(void *opaque, lm_ram_block *block);
    /* Set in bitmap (npages bits, bit i of word i / 64 = page i, zeroed by
     * the engine) every page written since the previous sync (or start),
     * and forget them.  Returns 0 or a negative errno, which fails the
     * migration. */
    int (*sync)(void *opaque, lm_ram_block *block, uint64_t *bitmap, uint64_t npages);
    /* Tracking ends (the migration completed, failed or was cancelled).
     * May be NULL. */
    void (*stop)(void *opaque, lm_ram_block *block);
} lm_dirty_log_ops;

/* Hands the engine a block's dirty log.  ops (not copied) and opaque must
 * stay valid while the block is registered; call it before a migration
 * starts.  NULL ops removes the hook.  -EBUSY while a migration tracks
 * the block. */
LM_API int lm_ram_set_dirty_log(lm_ram_block *block, const lm_dirty_log_ops *ops, void *opaque,
                                lm_error *err);

#ifdef __cplusplus
}
#endif

#endif
