/*
 * virtio-mmio slots at 0x10001000 (8 of them, 0x1000 apart, PLIC sources
 * 1..8).  A slot without a device answers as QEMU's empty slots do: the
 * magic value, version 2 and device ID 0, so drivers skip it.
 */
#ifndef LIVEMIG_VM_RISCV_VIRTIO_H
#define LIVEMIG_VM_RISCV_VIRTIO_H

#include <stdint.h>

#include "livemig/error.h"

struct rv_machine;
typedef struct rv_virtio rv_virtio;

int rv_virtio_empty_new(struct rv_machine *m, unsigned slot, rv_virtio **out, lm_error *err);
void rv_virtio_free(rv_virtio *v);

#endif
