/*
 * The virt machine: the physical address space, the hart threads and
 * their run control, the test (poweroff/reset) device.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../vmutil.h"
#include "dev/rv_chardev.h"
#include "dev/rv_clint.h"
#include "dev/rv_plic.h"
#include "dev/rv_uart.h"
#include "dev/rv_virtio.h"
#include "rv_boot.h"
#include "rv_machine.h"

#define BATCH 4096 /* instructions between looks at interrupts and stop requests */

/* ------------------------------------------------------------------------ */
/* Physical address space */

void rv_machine_map(rv_machine *m, uint64_t base, uint64_t size,
                    uint64_t (*read)(void *, uint64_t, unsigned),
                    void (*write)(void *, uint64_t, unsigned, uint64_t), void *opaque)
{
    if (m->nregions < sizeof(m->regions) / sizeof(m->regions[0])) {
        m->regions[m->nregions++] = (rv_region){ base, size, read, write, opaque };
    }
}

uint8_t *rv_phys_ptr(rv_machine *m, uint64_t pa, uint64_t len, bool write)
{
    if (pa >= RV_RAM_BASE && pa - RV_RAM_BASE < m->ram_size && len <= m->ram_size - (pa - RV_RAM_BASE)) {
        return m->ram + (pa - RV_RAM_BASE);
    }
    if (!write && pa >= RV_MROM_BASE && pa - RV_MROM_BASE < RV_MROM_SIZE &&
        len <= RV_MROM_SIZE - (pa - RV_MROM_BASE)) {
        return m->mrom + (pa - RV_MROM_BASE);
    }
    return NULL;
}

static rv_region *find_region(rv_machine *m, uint64_t pa, unsigned size)
{
    for (unsigned i = 0; i < m->nregions; i++) {
        rv_region *r = &m->regions[i];
        if (pa >= r->base && pa - r->base < r->size && size <= r->size - (pa - r->base)) {
            return r;
        }
    }
    return NULL;
}

bool rv_mmio_read(rv_machine *m, uint64_t pa, unsigned size, uint64_t *val)
{
    rv_region *r = find_region(m, pa, size);
    if (!r) {
        return false;
    }
    *val = r->read(r->opaque, pa - r->base, size);
    if (size < 8) {
        *val &= (1ull << (8 * size)) - 1;
    }
    return true;
}

bool rv_mmio_write(rv_machine *m, uint64_t pa, unsigned size, uint64_t val)
{
    rv_region *r = find_region(m, pa, size);
    if (!r) {
        return false;
    }
    if (size < 8) {
        val &= (1ull << (8 * size)) - 1;
    }
    r->write(r->opaque, pa - r->base, size, val);
    return true;
}

uint64_t rv_machine_mtime(rv_machine *m)
{
    return rv_clint_mtime(m->clint);
}

/* SiFive test device: FINISHER_PASS 0x5555, FINISHER_FAIL 0x3333 (exit
 * code in the upper half), FINISHER_RESET 0x7777. */
static uint64_t test_read(void *opaque, uint64_t off, unsigned size)
{
    return 0;
}

static void test_write(void *opaque, uint64_t off, unsigned size, uint64_t val)
{
    rv_machine *m = opaque;
    if (off != 0 || !m->shutdown) {
        return;
    }
    switch (val & 0xffff) {
    case 0x5555:
        m->shutdown(m->shutdown_opaque, 0, false);
        break;
    case 0x3333:
        m->shutdown(m->shutdown_opaque, (int)((val >> 16) & 0xffff), false);
        break;
    case 0x7777:
        m->shutdown(m->shutdown_opaque, 0, true);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* Hart threads */

void rv_machine_kick(rv_machine *m)
{
    pthread_mutex_lock(&m->lock);
    pthread_cond_broadcast(&m->wake);
    pthread_mutex_unlock(&m->lock);
}

static bool stop_requested(rv_machine *m)
{
    return __atomic_load_n(&m->stop, __ATOMIC_ACQUIRE) != 0;
}

/* WFI: sleep until an interrupt is pending, the next timer deadline, or a
 * stop request. */
static void wait_for_interrupt(rv_machine *m, rv_hart *h)
{
    uint64_t deadline = rv_clint_mtimecmp(m->clint, h->hartid);
    if ((h->menvcfg & RV_MENVCFG_STCE) && h->stimecmp < deadline) {
        deadline = h->stimecmp;
    }
    uint64_t now = rv_machine_mtime(m);
    uint64_t wait_ns = deadline > now ? (deadline - now) * 100 : 0;
    if (wait_ns > 100000000ull) {
        wait_ns = 100000000ull; /* look again at least every 100 ms */
    }
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    uint64_t t = (uint64_t)dl.tv_nsec + wait_ns;
    dl.tv_sec += (time_t)(t / 1000000000ull);
    dl.tv_nsec = (long)(t % 1000000000ull);

    pthread_mutex_lock(&m->lock);
    if (!stop_requested(m) && !rv_hart_wfi_wakeup(h) && wait_ns > 0) {
        pthread_cond_timedwait(&m->wake, &m->lock, &dl);
    }
    pthread_mutex_unlock(&m->lock);
}

static void hart_run(rv_machine *m, rv_hart *h)
{
    while (!stop_requested(m)) {
        if (h->wfi) {
            if (!rv_hart_wfi_wakeup(h)) {
                wait_for_interrupt(m, h);
                continue;
            }
            h->wfi = false;
        }
        rv_hart_check_interrupts(h);
        rv_hart_run(h, BATCH);
    }
}

static void *hart_thread(void *arg)
{
    rv_hart *h = arg;
    rv_machine *m = h->m;

    pthread_mutex_lock(&m->lock);
    for (;;) {
        m->nparked++;
        pthread_cond_broadcast(&m->parked);
        while (!m->quit && !m->run) {
            pthread_cond_wait(&m->wake, &m->lock);
        }
        m->nparked--;
        if (m->quit) {
            break;
        }
        pthread_mutex_unlock(&m->lock);
        hart_run(m, h);
        pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

void rv_machine_resume(rv_machine *m)
{
    rv_clint_start(m->clint);
    pthread_mutex_lock(&m->lock);
    __atomic_store_n(&m->stop, 0, __ATOMIC_RELEASE);
    m->run = true;
    pthread_cond_broadcast(&m->wake);
    pthread_mutex_unlock(&m->lock);
}

void rv_machine_pause(rv_machine *m)
{
    pthread_mutex_lock(&m->lock);
    m->run = false;
    __atomic_store_n(&m->stop, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < m->nharts; i++) {
        __atomic_store_n(&m->harts[i]->budget, 0, __ATOMIC_RELAXED);
    }
    pthread_cond_broadcast(&m->wake);
    while (m->nparked < m->nthreads) {
        pthread_cond_wait(&m->parked, &m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    rv_clint_stop(m->clint);
}

bool rv_machine_running(rv_machine *m)
{
    pthread_mutex_lock(&m->lock);
    bool r = m->run;
    pthread_mutex_unlock(&m->lock);
    return r;
}

/* ------------------------------------------------------------------------ */

int rv_machine_new(const rv_machine_config *cfg, guest_ram *ram, rv_machine **out, lm_error *err)
{
    int ret;

    *out = NULL;
    if (cfg->smp < 1 || cfg->smp > RV_MAX_HARTS) {
        return lm_error_set(err, -EINVAL, "riscv-virt: --smp %u: 1 to %d harts", cfg->smp, RV_MAX_HARTS);
    }
    if (ram->nblocks != 1) {
        return lm_error_set(err, -EINVAL, "riscv-virt: guest RAM must be one block (--blocks 1)");
    }
    if (ram->size < 16ull << 20 || ram->size > (1ull << 40)) {
        return lm_error_set(err, -EINVAL, "riscv-virt: RAM must be 16M to 1T");
    }
    rv_machine *m = calloc(1, sizeof(*m));
    if (!m) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    m->ram = ram->base;
    m->ram_size = ram->size;
    m->gram = ram;
    m->nharts = cfg->smp;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->wake, NULL);
    pthread_cond_init(&m->parked, NULL);

    for (unsigned i = 0; i < m->nharts; i++) {
        m->harts[i] = aligned_alloc(64, (sizeof(rv_hart) + 63) & ~(size_t)63);
        if (!m->harts[i]) {
            ret = lm_error_set(err, -ENOMEM, "out of memory");
            goto fail;
        }
        rv_hart_init(m->harts[i], m, i);
        rv_hart_reset(m->harts[i], RV_MROM_BASE);
    }
    rv_machine_map(m, RV_TEST_BASE, 0x1000, test_read, test_write, m);
    if ((ret = rv_chardev_open(cfg->serial ? cfg->serial : "stdout", &m->chr, err)) < 0 ||
        (ret = rv_clint_new(m, m->nharts, &m->clint, err)) < 0 ||
        (ret = rv_plic_new(m, m->nharts, &m->plic, err)) < 0 ||
        (ret = rv_uart_new(m, m->chr, &m->uart, err)) < 0) {
        goto fail;
    }
    /* QEMU gives the first device the last slot (0x10008000), the next
     * one the slot below. */
    unsigned rng_slot = RV_VIRTIO_COUNT - (cfg->drive ? 2 : 1);
    for (unsigned i = 0; i < RV_VIRTIO_COUNT; i++) {
        if (cfg->drive && i == RV_VIRTIO_COUNT - 1) {
            ret = rv_virtio_blk_new(m, i, cfg->drive, &m->virtio[i], err);
        } else if (cfg->rng && i == rng_slot) {
            ret = rv_virtio_rng_new(m, i, &m->virtio[i], err);
        } else {
            ret = rv_virtio_empty_new(m, i, &m->virtio[i], err);
        }
        if (ret < 0) {
            goto fail;
        }
    }
    if ((ret = rv_boot_prepare(m, cfg, !cfg->incoming, err)) < 0 ||
        (ret = rv_chardev_start(m->chr, rv_uart_input, m->uart, err)) < 0) {
        goto fail;
    }
    for (unsigned i = 0; i < m->nharts; i++) {
        ret = pthread_create(&m->threads[i], NULL, hart_thread, m->harts[i]);
        if (ret) {
            ret = lm_error_set(err, -ret, "cannot start hart %u", i);
            goto fail;
        }
        m->nthreads++;
    }
    *out = m;
    return 0;
fail:
    rv_machine_free(m);
    return ret;
}

int rv_machine_register(rv_machine *m, lm_engine *e, lm_error *err)
{
    int ret;
    for (unsigned i = 0; i < m->nharts; i++) {
        if ((ret = lm_engine_add_device(e, "riscv-hart", i, &rv_hart_vmstate, m->harts[i], err)) < 0) {
            return ret;
        }
    }
    if ((ret = rv_clint_register(m->clint, e, err)) < 0 ||
        (ret = rv_plic_register(m->plic, e, err)) < 0 ||
        (ret = rv_uart_register(m->uart, e, err)) < 0) {
        return ret;
    }
    for (unsigned i = 0; i < RV_VIRTIO_COUNT; i++) {
        if ((ret = rv_virtio_register(m->virtio[i], e, err)) < 0) {
            return ret;
        }
    }
    return 0;
}

void rv_machine_free(rv_machine *m)
{
    if (!m) {
        return;
    }
    if (m->nthreads) {
        rv_machine_pause(m);
        pthread_mutex_lock(&m->lock);
        m->quit = true;
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->lock);
        for (unsigned i = 0; i < m->nthreads; i++) {
            pthread_join(m->threads[i], NULL);
        }
    }
    /* The console thread calls into the UART: stop it first. */
    rv_chardev_close(m->chr);
    for (unsigned i = 0; i < RV_VIRTIO_COUNT; i++) {
        rv_virtio_free(m->virtio[i]);
    }
    rv_uart_free(m->uart);
    rv_plic_free(m->plic);
    rv_clint_free(m->clint);
    for (unsigned i = 0; i < m->nharts; i++) {
        free(m->harts[i]);
    }
    pthread_cond_destroy(&m->parked);
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
