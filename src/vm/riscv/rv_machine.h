/*
 * livemig-vm's RISC-V machine: QEMU's `virt` platform (--machine riscv-virt).
 *
 *   0x00001000  MROM: the reset vector and fw_dynamic_info (as QEMU's)
 *   0x00100000  SiFive test device: poweroff / reset / fail
 *   0x02000000  CLINT (ACLINT MSWI + MTIMER), mtime at 10 MHz
 *   0x0c000000  PLIC, 96 sources, an M and an S context per hart
 *   0x10000000  ns16550a UART, PLIC source 10
 *   0x10001000  8 virtio-mmio slots (0x1000 apart), PLIC sources 1..8
 *   0x80000000  RAM: the engine's RAM block
 *
 * Each hart is a host thread running the interpreter.  The machine pauses
 * and resumes them for the run state (machine.c) and registers the harts
 * and every device with the engine.
 */
#ifndef LIVEMIG_VM_RISCV_RV_MACHINE_H
#define LIVEMIG_VM_RISCV_RV_MACHINE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "livemig/engine.h"
#include "../guest_ram.h"
#include "rv_hart.h"

#define RV_MAX_HARTS 8
#define RV_RAM_BASE 0x80000000ull
#define RV_MROM_BASE 0x1000ull
#define RV_MROM_SIZE 0xf000ull
#define RV_TEST_BASE 0x100000ull
#define RV_CLINT_BASE 0x2000000ull
#define RV_PLIC_BASE 0xc000000ull
#define RV_PLIC_SIZE 0x600000ull
#define RV_UART_BASE 0x10000000ull
#define RV_UART_IRQ 10
#define RV_VIRTIO_BASE 0x10001000ull
#define RV_VIRTIO_COUNT 8
#define RV_VIRTIO_IRQ 1
#define RV_KERNEL_BASE 0x80200000ull
#define RV_TIMEBASE_HZ 10000000ull

struct rv_clint;
struct rv_plic;
struct rv_uart;
struct rv_chardev;
struct rv_virtio;

typedef struct rv_region {
    uint64_t base, size;
    uint64_t (*read)(void *opaque, uint64_t off, unsigned size);
    void (*write)(void *opaque, uint64_t off, unsigned size, uint64_t val);
    void *opaque;
} rv_region;

typedef struct rv_machine_config {
    unsigned smp;
    const char *bios;        /* M-mode firmware at 0x80000000 */
    const char *kernel;      /* next stage at 0x80200000, or NULL */
    const char *initrd;
    const char *append;
    const char *drive;       /* virtio-blk image, or NULL */
    bool rng;                /* a virtio-rng device */
    const char *serial;      /* stdout, none, file:PATH, unix:PATH */
    bool incoming;           /* state will come from a migration */
} rv_machine_config;

typedef struct rv_machine {
    /* Hot-path fields, read by the harts */
    uint8_t *ram;            /* host address of guest physical RV_RAM_BASE */
    uint64_t ram_size;
    guest_ram *gram;         /* dirty reports */
    uint8_t mrom[RV_MROM_SIZE];
    rv_region regions[8 + RV_VIRTIO_COUNT];
    unsigned nregions;
    struct rv_clint *clint;
    struct rv_plic *plic;
    struct rv_uart *uart;
    struct rv_chardev *chr;
    struct rv_virtio *virtio[RV_VIRTIO_COUNT];

    unsigned nharts;
    rv_hart *harts[RV_MAX_HARTS];

    /* Run control */
    pthread_t threads[RV_MAX_HARTS];
    unsigned nthreads;
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* run/stop/quit changed, or an interrupt for a WFI */
    pthread_cond_t parked;
    bool run, quit;
    unsigned nparked;
    int stop;                /* atomic: harts leave their run loop */

    /* What the guest asked for via the test device: shutdown callback */
    void (*shutdown)(void *opaque, int code, bool reset);
    void *shutdown_opaque;
} rv_machine;

int rv_machine_new(const rv_machine_config *cfg, guest_ram *ram, rv_machine **out, lm_error *err);
int rv_machine_register(rv_machine *m, lm_engine *e, lm_error *err);
void rv_machine_free(rv_machine *m);

void rv_machine_resume(rv_machine *m);
/* Returns once every hart is parked; idempotent. */
void rv_machine_pause(rv_machine *m);
bool rv_machine_running(rv_machine *m);

/* Wake harts sleeping in WFI (an interrupt line changed). */
void rv_machine_kick(rv_machine *m);

/* Physical memory: a host pointer for RAM/ROM (len bytes inside it), or
 * NULL for a device or a hole.  ROM is returned only when !write. */
uint8_t *rv_phys_ptr(rv_machine *m, uint64_t pa, uint64_t len, bool write);
/* Device access; false when nothing is mapped there. */
bool rv_mmio_read(rv_machine *m, uint64_t pa, unsigned size, uint64_t *val);
bool rv_mmio_write(rv_machine *m, uint64_t pa, unsigned size, uint64_t val);
void rv_machine_map(rv_machine *m, uint64_t base, uint64_t size,
                    uint64_t (*read)(void *, uint64_t, unsigned),
                    void (*write)(void *, uint64_t, unsigned, uint64_t), void *opaque);

/* The guest's mtime (10 MHz); frozen while the machine is paused. */
uint64_t rv_machine_mtime(rv_machine *m);

/* Report a guest write to RAM at host address p. */
static inline void rv_ram_wrote(rv_machine *m, const void *p, uint64_t len)
{
    guest_ram_wrote(m->gram, (uint64_t)((const uint8_t *)p - m->ram), len);
}

#endif
