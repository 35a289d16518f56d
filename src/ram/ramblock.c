#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bitmap.h"
#include "ram/ramblock.h"

int lm_ram_block_new(const lm_ram_desc *d, uint32_t idx, lm_ram_block **out, lm_error *err)
{
    if (!d->name || !d->name[0] || strlen(d->name) >= LM_RAM_NAME_MAX) {
        return lm_error_set(err, -EINVAL, "RAM block name must be 1..%d bytes", LM_RAM_NAME_MAX - 1);
    }
    if (d->page_size < 4096 || (d->page_size & (d->page_size - 1))) {
        return lm_error_set(err, -EINVAL, "RAM block '%s': page size %u is not a power of two >= 4096",
                            d->name, d->page_size);
    }
    if (!d->host || ((uintptr_t)d->host & (d->page_size - 1)) || d->size == 0 ||
        (d->size & (d->page_size - 1))) {
        return lm_error_set(err, -EINVAL,
                            "RAM block '%s': address and size must be non-zero multiples of the page size",
                            d->name);
    }
    if ((d->flags & LM_RAM_FD) && (d->fd < 0 || !(d->flags & LM_RAM_SHARED) ||
                                   (d->fd_offset & (d->page_size - 1)))) {
        return lm_error_set(err, -EINVAL,
                            "RAM block '%s': a backing fd needs a shared mapping and a page-aligned offset",
                            d->name);
    }
    lm_ram_block *b = calloc(1, sizeof(*b));
    if (!b) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    snprintf(b->name, sizeof(b->name), "%s", d->name);
    b->host = d->host;
    b->size = d->size;
    b->page_size = d->page_size;
    b->page_shift = (unsigned)__builtin_ctz(d->page_size);
    b->flags = d->flags;
    b->idx = idx;
    b->npages = d->size >> b->page_shift;
    b->fd = (d->flags & LM_RAM_FD) ? d->fd : -1;
    b->fd_offset = (d->flags & LM_RAM_FD) ? d->fd_offset : 0;
    b->manual = lm_bitmap_new(b->npages);
    if (!b->manual) {
        free(b);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    pthread_mutex_init(&b->dest_file_lock, NULL);
    *out = b;
    return 0;
}

void lm_ram_block_release_bitmaps(lm_ram_block *b)
{
    lm_bitmap_free(b->dirty);
    lm_bitmap_free(b->unpopulated);
    lm_bitmap_free(b->zero_unread);
    lm_bitmap_free(b->received);
    lm_bitmap_free(b->csum_bad);
    b->dirty = b->unpopulated = b->zero_unread = b->received = b->csum_bad = NULL;
}

void lm_ram_block_free(lm_ram_block *b)
{
    if (b) {
        lm_ram_block_release_bitmaps(b);
        lm_bitmap_free(b->manual);
        pthread_mutex_destroy(&b->dest_file_lock);
        free(b);
    }
}

static int fresh_bitmap(uint64_t **map, uint64_t nbits, lm_error *err)
{
    lm_bitmap_free(*map);
    *map = lm_bitmap_new(nbits);
    return *map ? 0 : lm_error_set(err, -ENOMEM, "out of memory for a dirty bitmap");
}

int lm_ram_block_prepare_source(lm_ram_block *b, lm_error *err)
{
    b->hint_frozen = false;
    int ret = fresh_bitmap(&b->dirty, b->npages, err);
    if (!ret) {
        ret = fresh_bitmap(&b->unpopulated, b->npages, err);
    }
    if (!ret) {
        ret = fresh_bitmap(&b->zero_unread, b->npages, err);
    }
    return ret;
}

int lm_ram_block_prepare_dest(lm_ram_block *b, lm_error *err)
{
    int ret = fresh_bitmap(&b->received, b->npages, err);
    return ret < 0 ? ret : fresh_bitmap(&b->csum_bad, b->npages, err);
}

void lm_ram_mark_dirty(lm_ram_block *b, uint64_t offset, uint64_t len)
{
    if (!b || !len || offset >= b->size) {
        return;
    }
    if (len > b->size - offset) {
        len = b->size - offset;
    }
    uint64_t first = offset >> b->page_shift;
    uint64_t last = (offset + len - 1) >> b->page_shift;
    if (first == last) {
        lm_bitmap_set_atomic(b->manual, first);
    } else {
        lm_bitmap_set_range_atomic(b->manual, first, last - first + 1);
    }
}

int lm_ram_set_dirty_log(lm_ram_block *b, const lm_dirty_log_ops *ops, void *opaque,
                         lm_error *err)
{
    if (!b) {
        return lm_error_set(err, -EINVAL, "no RAM block");
    }
    if (ops && !ops->sync) {
        return lm_error_set(err, -EINVAL, "RAM block '%s': a dirty log needs a sync function",
                            b->name);
    }
    if (b->dlog_active) {
        return lm_error_set(err, -EBUSY, "RAM block '%s': a migration is tracking it", b->name);
    }
    b->dlog_ops = ops;
    b->dlog_opaque = opaque;
    return 0;
}

bool lm_ram_wants_dirty_reports(const lm_ram_block *b)
{
    return b && __atomic_load_n(&b->reporting, __ATOMIC_ACQUIRE);
}
