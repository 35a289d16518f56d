#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <sys/statfs.h>
#include <stdio.h>
#include <unistd.h>

#include "common/util.h"
#include "ram/filedest.h"
#include "ram/zero.h"

void lm_filedest_setup(lm_ram_block *b)
{
    b->dest_file = false;
    if (b->fd < 0 || b->page_size > LM_FILEDEST_SCRATCH) {
        return;
    }
    /* O_APPEND: pwrite would append, whatever the offset. */
    int fl = fcntl(b->fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY || (fl & O_APPEND)) {
        return;
    }
    /* hugetlbfs takes no write(): its pages go through the mapping. */
    struct statfs sfs;
    if (fstatfs(b->fd, &sfs) < 0 || sfs.f_type == HUGETLBFS_MAGIC) {
        return;
    }
    b->dest_file = true;
}

/*
 * Writers of one file take turns on the block's lock, not in the kernel.
 * A buffered write holds the inode's lock (i_rwsem) for its whole copy,
 * and a thread waiting for it spins while the holder copies (the rwsem's
 * optimistic spinning): four multifd receivers writing into one tmpfs file
 * spent a third of the destination's CPU spinning there for the same
 * bytes.  A thread waiting on this mutex sleeps instead, while the other
 * receivers go on reading their sockets.  Hole punching and SEEK_DATA take
 * the same inode lock, so they take turns here too.
 */
int lm_filedest_write(lm_ram_block *b, uint64_t first, const void *data, size_t len)
{
    pthread_mutex_lock(&b->dest_file_lock);
    int ret = lm_pwrite_full(b->fd, data, len, lm_filedest_offset(b, first));
    pthread_mutex_unlock(&b->dest_file_lock);
    return ret;
}

static int zero_locked(lm_ram_block *b, uint64_t first, uint64_t count)
{
    off_t off = (off_t)lm_filedest_offset(b, first);
    off_t end = off + (off_t)(count << b->page_shift);
    while (off < end) {
        /* The next data at or after off; ENXIO: none up to the file's end. */
        off_t data = lseek(b->fd, off, SEEK_DATA);
        if (data < 0) {
            return errno == ENXIO ? 0 : -errno;
        }
        if (data >= end) {
            return 0;
        }
        off_t hole = lseek(b->fd, data, SEEK_HOLE);
        if (hole < 0) {
            return -errno;
        }
        if (hole > end) {
            hole = end;
        }
        /* A file system without real holes reports everything as data:
         * punching then still leaves the right bytes, just with more work. */
        if (fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, data, hole - data) < 0) {
            return -errno;
        }
        off = hole;
    }
    return 0;
}

int lm_filedest_zero(lm_ram_block *b, uint64_t first, uint64_t count)
{
    pthread_mutex_lock(&b->dest_file_lock);
    int ret = zero_locked(b, first, count);
    pthread_mutex_unlock(&b->dest_file_lock);
    return ret;
}

int lm_filedest_write_pages(lm_ram_block *b, uint64_t first, const uint8_t *data, uint32_t count)
{
    for (uint32_t i = 0; i < count;) {
        /* The next run of pages that are all zero or all not. */
        bool zero = lm_buffer_is_zero(data + ((size_t)i << b->page_shift), b->page_size);
        uint32_t j = i + 1;
        while (j < count &&
               lm_buffer_is_zero(data + ((size_t)j << b->page_shift), b->page_size) == zero) {
            j++;
        }
        const uint8_t *p = data + ((size_t)i << b->page_shift);
        size_t len = (size_t)(j - i) << b->page_shift;
        /* A file that cannot punch gets the zeros written. */
        int ret = zero ? lm_filedest_zero(b, first + i, j - i) : -1;
        if (ret != 0) {
            ret = lm_filedest_write(b, first + i, p, len);
        }
        if (ret < 0) {
            return ret;
        }
        i = j;
    }
    return 0;
}

int lm_filedest_copy(lm_ram_block *b, uint64_t first, int src_fd, uint64_t src_off, size_t len,
                     uint8_t *scratch)
{
    /* Through scratch rather than copy_file_range: the copy would carry
     * the source's zero pages as data, where they belong in holes. */
    while (len > 0) {
        size_t take = len < LM_FILEDEST_SCRATCH ? len : LM_FILEDEST_SCRATCH;
        int ret = lm_pread_full(src_fd, scratch, take, src_off);
        if (ret < 0) {
            return ret;
        }
        ret = lm_filedest_write_pages(b, first, scratch, (uint32_t)(take >> b->page_shift));
        if (ret < 0) {
            return ret;
        }
        first += take >> b->page_shift;
        src_off += take;
        len -= take;
    }
    return 0;
}

int lm_filedest_read_page(const lm_ram_block *b, uint64_t p, uint8_t *out)
{
    return lm_pread_full(b->fd, out, b->page_size, lm_filedest_offset(b, p));
}
