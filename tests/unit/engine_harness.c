#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "engine_harness.h"

static void vm_stop(void *opaque)
{
    harness *h = opaque;
    pthread_mutex_lock(&h->lock);
    h->run = false;
    while (h->writer_started && !h->parked) {
        pthread_cond_wait(&h->cond, &h->lock);
    }
    pthread_mutex_unlock(&h->lock);
}

static void vm_start(void *opaque)
{
    harness *h = opaque;
    pthread_mutex_lock(&h->lock);
    h->run = true;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

static bool vm_is_running(void *opaque)
{
    harness *h = opaque;
    pthread_mutex_lock(&h->lock);
    bool r = h->run;
    pthread_mutex_unlock(&h->lock);
    return r;
}

/* The writer's pace: WRITER_BATCH page writes every WRITER_PERIOD_US,
 * about 2048 a second (8 MiB/s of pages, as lmtest.LIVE_RATE): a rate
 * every migration here outruns, however loaded the machine, so pages are
 * still written between and during passes, but a migration converges in a
 * few of them.  Unpaced, the writer dirtied all of RAM in every pass and a
 * migration converged only once all of RAM fitted in the downtime limit
 * (5x RAM sent; far more passes on a slow or loaded machine). */
#define WRITER_BATCH 8
#define WRITER_PERIOD_US 3900

/* Writes a counter into random pages: every write changes the page. */
static void *writer_main(void *opaque)
{
    harness *h = opaque;
    uint64_t npages = h->size / 4096;
    for (;;) {
        pthread_mutex_lock(&h->lock);
        while (!h->run && !h->quit) {
            h->parked = true;
            pthread_cond_broadcast(&h->cond);
            pthread_cond_wait(&h->cond, &h->lock);
        }
        h->parked = false;
        bool quit = h->quit;
        pthread_mutex_unlock(&h->lock);
        if (quit) {
            return NULL;
        }
        if (h->sequential) {
            /* First touches in order, as QEMU's migration-test guest. */
            for (int i = 0; i < WRITER_BATCH; i++) {
                uint64_t page = h->regs.counter++ % npages;
                h->ram[page * 4096] += 1;
                if (lm_ram_wants_dirty_reports(h->block)) {
                    lm_ram_mark_dirty(h->block, page * 4096, 1);
                }
            }
            __atomic_fetch_add(&h->writes, WRITER_BATCH, __ATOMIC_RELAXED);
            usleep(WRITER_PERIOD_US);
            continue;
        }
        for (int i = 0; i < WRITER_BATCH; i++) {
            h->seed ^= h->seed << 13;
            h->seed ^= h->seed >> 7;
            h->seed ^= h->seed << 17;
            uint64_t page = h->seed % npages;
            uint64_t *p = (uint64_t *)(h->ram + page * 4096 + (h->seed >> 40) % 512 * 8);
            *p = ++h->regs.counter;
            if (lm_ram_wants_dirty_reports(h->block)) {
                lm_ram_mark_dirty(h->block, page * 4096, 8);
            }
        }
        __atomic_fetch_add(&h->writes, WRITER_BATCH, __ATOMIC_RELAXED);
        usleep(WRITER_PERIOD_US);
    }
}

static const lm_field regs_fields[] = {
    LM_FIELD_SCALAR(harness, regs.counter, LM_FIELD_U64),
};
static const lm_vmstate regs_vmstate = {
    .name = "test-regs", .version = 1, .min_version = 1,
    .fields = regs_fields, .nfields = 1,
};

int harness_init(harness *h, uint64_t size, bool populate)
{
    memset(h, 0, sizeof(*h));
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    h->size = size;
    h->seed = 88172645463325252ull;
    h->ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (h->ram == MAP_FAILED) {
        return -1;
    }
    if (populate) {
        for (uint64_t off = 0; off < size; off += 4096) {
            memset(h->ram + off, (int)(off / 4096 % 251) + 1, 64);
        }
    }
    lm_callbacks cb = { .vm_stop = vm_stop, .vm_start = vm_start, .vm_is_running = vm_is_running };
    lm_error err = LM_ERROR_INIT;
    h->engine = lm_engine_new(&cb, h, &err);
    lm_ram_desc d = { .name = "ram0", .host = h->ram, .size = size, .page_size = 4096 };
    if (!h->engine || lm_engine_add_ram(h->engine, &d, &h->block, &err) < 0 ||
        lm_engine_add_device(h->engine, "regs", 0, &regs_vmstate, h, &err) < 0) {
        return -1;
    }
    return 0;
}

void harness_start_writer(harness *h)
{
    h->run = true;
    h->writer_started = true;
    pthread_create(&h->writer, NULL, writer_main, h);
}

void harness_destroy(harness *h)
{
    if (h->writer_started) {
        pthread_mutex_lock(&h->lock);
        h->quit = true;
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->writer, NULL);
    }
    lm_engine_free(h->engine);
    munmap(h->ram, h->size);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
}

/* Pages of RAM read at a time from /proc/self/pagemap. */
#define PAGEMAP_BATCH 512
#define PAGEMAP_PRESENT (1ull << 63)
#define PAGEMAP_SWAPPED (1ull << 62)

/* FNV-1a over every 64-bit word of RAM.  A page neither present nor
 * swapped (/proc/self/pagemap) was never written, or was dropped: it reads
 * as zeros, so it is hashed as zeros without being read.  Reading it would
 * fault it in, and on a loaded host a fault costs up to ~100 us: hashing an
 * untouched 64 MiB took seconds, most of this test's time. */
uint64_t harness_hash(const harness *h)
{
    const uint64_t prime = 1099511628211ull;
    uint64_t zero_page = 1; /* a page of zero words: x * prime^512 */
    for (int i = 0; i < 4096 / 8; i++) {
        zero_page *= prime;
    }
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    uint64_t x = 1469598103934665603ull ^ h->regs.counter;
    uint64_t npages = h->size / 4096;
    uint64_t ent[PAGEMAP_BATCH];
    for (uint64_t pg = 0; pg < npages; pg++) {
        uint64_t i = pg % PAGEMAP_BATCH;
        if (i == 0) {
            uint64_t left = npages - pg;
            size_t n = (left < PAGEMAP_BATCH ? left : PAGEMAP_BATCH) * sizeof(ent[0]);
            off_t at = (off_t)(((uintptr_t)h->ram / 4096 + pg) * sizeof(ent[0]));
            /* Unknown (no pagemap): every page is read. */
            if (fd < 0 || pread(fd, ent, n, at) != (ssize_t)n) {
                for (size_t k = 0; k < PAGEMAP_BATCH; k++) {
                    ent[k] = PAGEMAP_PRESENT;
                }
            }
        }
        if (!(ent[i] & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED))) {
            x *= zero_page;
            continue;
        }
        const uint64_t *w = (const uint64_t *)(h->ram + pg * 4096);
        for (int k = 0; k < 4096 / 8; k++) {
            x = (x ^ w[k]) * prime;
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    return x;
}

lm_status harness_wait_end(harness *h, unsigned timeout_ms)
{
    for (unsigned t = 0; t < timeout_ms; t += 5) {
        lm_info info = LM_INFO_INIT;
        lm_engine_query(h->engine, &info);
        if (info.status == LM_STATUS_COMPLETED || info.status == LM_STATUS_FAILED ||
            info.status == LM_STATUS_CANCELLED) {
            return info.status;
        }
        usleep(5000);
    }
    return LM_STATUS__COUNT;
}
