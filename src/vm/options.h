/*
 * livemig-vm's command line.
 */
#ifndef LIVEMIG_VM_OPTIONS_H
#define LIVEMIG_VM_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "devices.h"
#include "guest_ram.h"
#include "workload.h"

typedef enum vm_machine_kind {
    VM_MACHINE_SYNTHETIC,    /* the workload threads (default) */
    VM_MACHINE_RISCV_VIRT,   /* RV64GC harts on QEMU's virt platform (src/vm/riscv) */
} vm_machine_kind;

#define VM_DEFAULT_BIOS "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"

typedef struct vm_options {
    vm_machine_kind machine;
    /* riscv-virt only */
    const char *bios;
    const char *kernel;
    const char *initrd;
    const char *append;
    const char *drive;        /* virtio-blk: file=PATH */
    bool rng;                 /* --device virtio-rng-device */
    const char *serial_spec;  /* --serial as given (riscv-virt also takes unix:PATH) */
    guest_ram_config ram;
    unsigned smp;
    workload_config workload;
    uint64_t vram_size;       /* 0: no vram device */
    uint64_t vram_rate;       /* bytes/s the vram device rewrites */
    const char *incoming;     /* URI or "defer"; NULL: not a destination */
    const char *qmp_path;     /* NULL: no QMP socket */
    unsigned qmp_mode;        /* its permission bits (default 0600) */
    bool paused;
    const char *name;
    bool has_uuid;
    uint8_t uuid[16];
    serial_target serial;
    const char *serial_path;
    /* --object: TLS credentials and authz objects, as object-add makes them. */
#define VM_MAX_OBJECTS 16
    const char *objects[VM_MAX_OBJECTS];
    unsigned nobjects;
} vm_options;

/* Returns 0, 1 when --help was printed (exit 0), or -errno with err set. */
int vm_options_parse(vm_options *o, int argc, char **argv, lm_error *err);

/* Canonical 8-4-4-4-12 hex text. */
int vm_parse_uuid(const char *s, uint8_t uuid[16]);

#endif
