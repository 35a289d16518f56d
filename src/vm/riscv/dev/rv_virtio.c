/*
 * virtio-mmio transport registers for an empty slot.
 */
#include <errno.h>
#include <stdlib.h>

#include "../rv_machine.h"
#include "rv_virtio.h"

#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */
#define VIRTIO_VENDOR_QEMU 0x554d4551u

struct rv_virtio {
    unsigned slot;
};

static uint64_t empty_read(void *opaque, uint64_t off, unsigned size)
{
    switch (off) {
    case 0x000: return VIRTIO_MMIO_MAGIC;
    case 0x004: return 2;      /* version */
    case 0x008: return 0;      /* device ID: none */
    case 0x00c: return VIRTIO_VENDOR_QEMU;
    default: return 0;
    }
}

static void empty_write(void *opaque, uint64_t off, unsigned size, uint64_t val)
{
}

int rv_virtio_empty_new(struct rv_machine *m, unsigned slot, rv_virtio **out, lm_error *err)
{
    rv_virtio *v = calloc(1, sizeof(*v));
    if (!v) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    v->slot = slot;
    rv_machine_map(m, RV_VIRTIO_BASE + 0x1000ull * slot, 0x1000, empty_read, empty_write, v);
    *out = v;
    return 0;
}

void rv_virtio_free(rv_virtio *v)
{
    free(v);
}
