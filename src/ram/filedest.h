/*
 * A file-backed destination: guest pages placed through the block's
 * backing file (memfd, a tmpfs or /dev/shm file, a regular file) instead
 * of through the guest's mapping.
 *
 * Writing a page through a shared mapping costs a page fault (and, for a
 * hole of a shared tmpfs mapping, reading it allocates the page); writing
 * it into the file with pwrite puts it in the page cache without mapping
 * it, and the guest's mapping picks it up from there when it runs.  Zero
 * pages are holes: a hole is left alone (SEEK_DATA says it holds no data)
 * and data where the source has zeros is punched out, so nothing is read
 * or cleared through the mapping to learn that a page is zero.
 *
 * Any thread, on pages no other thread places at the same time; only
 * pread/pwrite/lseek/fallocate are used, and none of them depends on the
 * shared file position.  Threads writing one block take turns on its
 * dest_file_lock (filedest.c says why).
 */
#ifndef LM_RAM_FILEDEST_H
#define LM_RAM_FILEDEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ram/ramblock.h"

/* The scratch buffer a thread receives pages through before writing them
 * into the file: big enough for one write per 1 MiB record, small enough
 * to stay in the cache between the read and the write. */
#define LM_FILEDEST_SCRATCH (512u * 1024)

/* At load setup: from now on the block's pages go through its backing
 * file, if it has one that takes pwrite at an offset (not hugetlbfs, not
 * opened read-only or O_APPEND) and its page size fits the scratch buffer. */
void lm_filedest_setup(lm_ram_block *b);

static inline bool lm_filedest_on(const lm_ram_block *b)
{
    return b->dest_file;
}

/* Offset in the backing file of page p. */
static inline uint64_t lm_filedest_offset(const lm_ram_block *b, uint64_t p)
{
    return b->fd_offset + (p << b->page_shift);
}

/* len bytes of data into the file from page first on: 0 or -errno. */
int lm_filedest_write(lm_ram_block *b, uint64_t first, const void *data, size_t len);

/* Pages [first, first+count) become zero: holes stay holes, data is
 * punched out.  0, or -errno when the file cannot say where its holes are
 * or cannot punch one (the caller clears the pages another way). */
int lm_filedest_zero(lm_ram_block *b, uint64_t first, uint64_t count);

/* count whole pages of data into the file from page first on: runs of
 * zero pages become holes (lm_filedest_zero), the others are written, so
 * zeros the source sent as data (a file-backed source sends its pages
 * unread) take no memory here either.  0 or -errno. */
int lm_filedest_write_pages(lm_ram_block *b, uint64_t first, const uint8_t *data, uint32_t count);

/* len bytes (whole pages) of file src_fd from src_off into the file from
 * page first on, through scratch (LM_FILEDEST_SCRATCH bytes) and
 * lm_filedest_write_pages.  0, -ENODATA when src_fd ends first, or -errno. */
int lm_filedest_copy(lm_ram_block *b, uint64_t first, int src_fd, uint64_t src_off, size_t len,
                     uint8_t *scratch);

/* Reads page p back from the file (pread: the page cache, no fault). */
int lm_filedest_read_page(const lm_ram_block *b, uint64_t p, uint8_t *out);

#endif
