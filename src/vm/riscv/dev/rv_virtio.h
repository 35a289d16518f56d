/*
 * virtio-mmio (version 2) at 0x10001000: 8 slots, 0x1000 apart, PLIC
 * sources 1..8, as QEMU's virt.  A slot holds a virtio-blk device
 * (--drive file=PATH, in the last slot as QEMU fills them from the top)
 * or nothing: an empty slot answers the magic value, version 2 and device
 * ID 0, so drivers skip it.
 *
 * A virtio-rng device (--device virtio-rng-device, QEMU's name) takes the
 * next free slot from the top; it offers VIRTIO_F_VERSION_1 and one split
 * queue whose buffers it fills from the host's getrandom, synchronously
 * on notify like virtio-blk.
 *
 * virtio-blk offers VIRTIO_F_VERSION_1 and VIRTIO_BLK_F_FLUSH and one split
 * virtqueue.  Requests are served synchronously when the driver notifies
 * the queue (the notifying hart does the I/O), so no request is ever in
 * flight when the machine stops: the transport's registers and the queue's
 * addresses and index are all the state there is to migrate.  Both sides
 * of a migration open the same image (shared storage), as with QEMU.
 */
#ifndef LIVEMIG_VM_RISCV_VIRTIO_H
#define LIVEMIG_VM_RISCV_VIRTIO_H

#include <stdint.h>

#include "livemig/engine.h"

struct rv_machine;
typedef struct rv_virtio rv_virtio;

int rv_virtio_empty_new(struct rv_machine *m, unsigned slot, rv_virtio **out, lm_error *err);
/* spec: "file=PATH" */
int rv_virtio_blk_new(struct rv_machine *m, unsigned slot, const char *spec, rv_virtio **out,
                      lm_error *err);
int rv_virtio_rng_new(struct rv_machine *m, unsigned slot, rv_virtio **out, lm_error *err);
int rv_virtio_register(rv_virtio *v, lm_engine *e, lm_error *err);
void rv_virtio_free(rv_virtio *v);

#endif
