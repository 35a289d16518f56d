/*
 * Writes real migration streams of the fuzzers' machine (fuzz_machine.h)
 * into a directory: the seeds of the stream fuzzer.
 *
 *   gen-stream-corpus DIR
 *
 * Each seed is a save to file: by the engine's own source side, so it has
 * what a source really writes: RAM START/PART/END sections with PAGES and
 * ZERO runs over both blocks, the device's FULL section, the iterative
 * device's chunks in every pass, globalstate, the vmdesc when asked,
 * mapped-ram's layout.  The "live" seed comes from a guest that writes
 * while it is saved (manual dirty reports, a bandwidth cap), so pages are
 * sent again in later passes.  scripts/fuzz.sh runs this before fuzzing,
 * so the fuzzer also starts from streams of the current format, next to
 * the seeds committed in tests/fuzz/corpus/stream.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_machine.h"

typedef struct guest {
    fuzz_machine *m;
    lm_engine *e;
    pthread_mutex_t lock;
    bool stopped;     /* vm_stop ran: the writer must not write */
    bool quit;
    uint64_t writes;
} guest;

static void g_stop(void *opaque)
{
    guest *g = opaque;
    pthread_mutex_lock(&g->lock);
    g->stopped = true;
    pthread_mutex_unlock(&g->lock);
}

static void g_start(void *opaque)
{
    guest *g = opaque;
    pthread_mutex_lock(&g->lock);
    g->stopped = false;
    pthread_mutex_unlock(&g->lock);
}

static bool g_is_running(void *opaque)
{
    guest *g = opaque;
    return g->m->running;
}

/* The "live" guest: bumps a byte in a page of either block and reports the
 * write, a page every 5 ms while not stopped, during the first passes
 * only (so that the save ends however fast this machine is). */
static void *writer(void *opaque)
{
    guest *g = opaque;
    for (unsigned i = 0;; i++) {
        lm_info info = LM_INFO_INIT;
        lm_engine_query(g->e, &info);
        pthread_mutex_lock(&g->lock);
        if (g->quit) {
            pthread_mutex_unlock(&g->lock);
            return NULL;
        }
        if (!g->stopped && info.dirty_sync_count < 4) {
            int b = (i % 5 == 4) ? 1 : 0;
            uint32_t pages = (b ? FM_RAM1_SIZE : FM_RAM0_SIZE) / FM_PAGE;
            uint64_t off = (uint64_t)((i * 7u) % pages) * FM_PAGE + (i % 64);
            g->m->ram[b][off]++;
            lm_ram_mark_dirty(g->m->block[b], off, 1);
            g->writes++;
        }
        pthread_mutex_unlock(&g->lock);
        usleep(5000);
    }
}

/* Some pages of data, the rest zero (dense: every page data). */
static void fill_ram(fuzz_machine *m, unsigned seed, bool dense)
{
    static const uint32_t sizes[2] = { FM_RAM0_SIZE, FM_RAM1_SIZE };
    for (int b = 0; b < 2; b++) {
        uint32_t pages = sizes[b] / FM_PAGE;
        for (uint32_t p = 0; p < pages; p++) {
            bool data = dense || p == 0 || p == 1 || p % 11 == 5 || p == pages - 1;
            if (!data) {
                continue;
            }
            uint8_t *page = m->ram[b] + (size_t)p * FM_PAGE;
            for (uint32_t i = 0; i < FM_PAGE; i++) {
                page[i] = (uint8_t)((p * 31 + i * 3 + seed * 17 + (unsigned)b) | ((i & 255) == 0));
            }
        }
    }
}

typedef struct variant {
    const char *name;
    bool running;       /* the source's guest runs (globalstate) */
    bool dense;
    bool live;          /* a writer dirties pages during the save */
    bool vmdesc;
    bool mapped_ram;
    bool multifd;       /* with mapped-ram: 2 threads; UUID ends odd */
    const char *zero_detection; /* NULL: default */
} variant;

static const variant variants[] = {
    { "plain", .running = true },
    { "stopped-guest", .running = false },
    { "vmdesc", .running = true, .vmdesc = true },
    { "dense", .running = true, .dense = true },
    { "no-zero-detection", .running = true, .zero_detection = "none" },
    { "live-passes", .running = true, .live = true },
    { "mapped-ram", .running = true, .mapped_ram = true },
    { "mapped-ram-multifd", .running = true, .mapped_ram = true, .multifd = true },
};

static int save(const variant *v, const char *dir, unsigned seed)
{
    guest g = { .stopped = false };
    pthread_mutex_init(&g.lock, NULL);
    g.m = fm_new();
    if (!g.m) {
        fprintf(stderr, "gen-stream-corpus: out of memory\n");
        return -1;
    }
    g.m->running = v->running;
    fm_fill_devices(g.m, seed);
    fill_ram(g.m, seed, v->dense);

    lm_callbacks cb = { .vm_stop = g_stop, .vm_start = g_start, .vm_is_running = g_is_running };
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(&cb, &g, &err);
    g.e = e;
    uint8_t uuid[16];
    for (int i = 0; i < 16; i++) {
        uuid[i] = (uint8_t)(0x10 * i + seed);
    }
    uuid[15] = v->multifd ? 1 : 0;
    int ret = e ? fm_register(g.m, e, &err) : -ENOMEM;
    if (ret == 0) {
        lm_engine_set_uuid(e, uuid);
        ret = lm_engine_set_param_bool(e, "x-vmdesc", v->vmdesc, &err);
    }
    if (ret == 0 && v->mapped_ram) {
        ret = lm_engine_set_capability(e, "mapped-ram", true, &err);
    }
    if (ret == 0 && v->multifd) {
        ret = lm_engine_set_capability(e, "multifd", true, &err);
        if (ret == 0) {
            ret = lm_engine_set_param_u64(e, "multifd-channels", 2, &err);
        }
    }
    if (ret == 0 && v->zero_detection) {
        ret = lm_engine_set_param_str(e, "zero-page-detection", v->zero_detection, &err);
    }
    if (ret == 0 && v->live) {
        /* Manual reports from the writer; 256 KiB/s makes passes long
         * enough to catch some of its writes. */
        ret = lm_engine_set_param_str(e, "x-dirty-tracker", "manual", &err);
        if (ret == 0) {
            ret = lm_engine_set_param_u64(e, "max-bandwidth", 256 * 1024, &err);
        }
        /* No switchover while the writer writes: only once it stopped. */
        if (ret == 0) {
            ret = lm_engine_set_param_u64(e, "downtime-limit", 1, &err);
        }
    }
    pthread_t wt;
    bool writing = false;
    char uri[4096];
    snprintf(uri, sizeof(uri), "file:%s/%s", dir, v->name);
    if (ret == 0) {
        unlink(uri + 5);
        if (v->live) {
            writing = pthread_create(&wt, NULL, writer, &g) == 0;
        }
        ret = lm_engine_migrate(e, uri, false, &err);
    }
    lm_info info = { .struct_size = sizeof(lm_info), .status = LM_STATUS_NONE };
    while (ret == 0) {
        lm_engine_query(e, &info);
        if (info.status == LM_STATUS_COMPLETED || info.status == LM_STATUS_FAILED ||
            info.status == LM_STATUS_CANCELLED) {
            break;
        }
        usleep(10000);
    }
    if (ret == 0 && info.status != LM_STATUS_COMPLETED) {
        ret = -EIO;
        snprintf(err.msg, sizeof(err.msg), "%s: %s", lm_status_name(info.status), info.error_desc);
    }
    if (writing) {
        pthread_mutex_lock(&g.lock);
        g.quit = true;
        pthread_mutex_unlock(&g.lock);
        pthread_join(wt, NULL);
    }
    if (ret < 0) {
        fprintf(stderr, "gen-stream-corpus: %s: %s\n", v->name, err.msg);
    } else {
        printf("%s: %llu passes%s\n", uri + 5, (unsigned long long)info.dirty_sync_count,
               v->live ? " (live)" : "");
    }
    lm_engine_free(e);
    fm_free(g.m);
    pthread_mutex_destroy(&g.lock);
    return ret;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    int status = 0;
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        if (save(&variants[i], argv[1], (unsigned)i) < 0) {
            status = 1;
        }
    }
    return status;
}
