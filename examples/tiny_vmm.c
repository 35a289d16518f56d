/*
 * tiny_vmm: the smallest VMM that embeds liblivemig, and migrates itself.
 *
 *   tiny_vmm dest unix:/tmp/m.sock     # waits for the guest, checks it, runs it
 *   tiny_vmm source unix:/tmp/m.sock   # runs the guest and migrates it live
 *
 * The "guest" is one vCPU thread that writes guest RAM round robin: write
 * number s goes to page s % NPAGES and stores there how many times that
 * page has been written.  Its register, the step counter s, is a device
 * with a field table.  Together they obey an invariant that only a
 * faithful migration of RAM *and* device state keeps: page p holds
 * s / NPAGES + (p < s % NPAGES).  The vCPU keeps its own dirty log, which
 * the engine pulls at every sync (lm_ram_set_dirty_log), as a KVM VMM
 * hands over KVM_GET_DIRTY_LOG.  docs/embedding.md walks through it.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <livemig/livemig.h>

#define PAGE 4096u
#define NPAGES 16384u /* 64 MiB of guest RAM */

struct cpu {
    uint64_t step; /* writes done so far: the vCPU's only register */
};

struct vmm {
    uint8_t *ram;
    struct cpu cpu;
    uint64_t log[NPAGES / 64]; /* our dirty log, one bit per page */
    int logging;               /* atomic: the engine reads the log */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool run, running, quit;   /* what we asked, what the vCPU does */
    bool done, ok;             /* destination: the migration ended */
};

/* ---- the guest: one vCPU ---- */

static void *vcpu(void *opaque)
{
    struct vmm *m = opaque;
    pthread_mutex_lock(&m->lock);
    while (!m->quit) {
        m->running = m->run;
        pthread_cond_broadcast(&m->cond);
        if (!m->run) {
            pthread_cond_wait(&m->cond, &m->lock);
            continue;
        }
        pthread_mutex_unlock(&m->lock);
        for (int i = 0; i < 256; i++) { /* a burst of writes between checks */
            uint64_t s = m->cpu.step, p = s % NPAGES;
            uint64_t *page = (uint64_t *)(m->ram + p * PAGE);
            page[0] = s / NPAGES + 1;
            if (__atomic_load_n(&m->logging, __ATOMIC_RELAXED)) {
                __atomic_fetch_or(&m->log[p / 64], 1ull << (p % 64), __ATOMIC_RELAXED);
            }
            m->cpu.step = s + 1;
        }
        usleep(50); /* a guest that dirties slower than the link */
        pthread_mutex_lock(&m->lock);
    }
    m->running = false;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static void set_run(struct vmm *m, bool run) /* returns once the vCPU obeys */
{
    pthread_mutex_lock(&m->lock);
    m->run = run;
    pthread_cond_broadcast(&m->cond);
    while (m->running != run) {
        pthread_cond_wait(&m->cond, &m->lock);
    }
    pthread_mutex_unlock(&m->lock);
}

static bool invariant_holds(const struct vmm *m)
{
    for (uint64_t p = 0; p < NPAGES; p++) {
        uint64_t want = m->cpu.step / NPAGES + (p < m->cpu.step % NPAGES);
        if (*(const uint64_t *)(m->ram + p * PAGE) != want) {
            fprintf(stderr, "page %" PRIu64 ": %" PRIu64 ", expected %" PRIu64 "\n", p,
                    *(const uint64_t *)(m->ram + p * PAGE), want);
            return false;
        }
    }
    return true;
}

/* ---- what the engine calls ---- */

static void vm_stop(void *opaque) { set_run(opaque, false); }
static void vm_start(void *opaque) { set_run(opaque, true); }

static bool vm_is_running(void *opaque)
{
    struct vmm *m = opaque;
    pthread_mutex_lock(&m->lock);
    bool r = m->run;
    pthread_mutex_unlock(&m->lock);
    return r;
}

static void incoming_done(void *opaque, bool success)
{
    struct vmm *m = opaque;
    pthread_mutex_lock(&m->lock);
    m->done = true;
    m->ok = success;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

static int log_start(void *opaque, lm_ram_block *b)
{
    struct vmm *m = opaque;
    __atomic_store_n(&m->logging, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static int log_sync(void *opaque, lm_ram_block *b, uint64_t *bitmap, uint64_t npages)
{
    struct vmm *m = opaque;
    for (uint64_t w = 0; w < NPAGES / 64 && w * 64 < npages; w++) {
        bitmap[w] = __atomic_exchange_n(&m->log[w], 0, __ATOMIC_ACQ_REL);
    }
    return 0;
}

static void log_stop(void *opaque, lm_ram_block *b)
{
    struct vmm *m = opaque;
    __atomic_store_n(&m->logging, 0, __ATOMIC_SEQ_CST);
}

static const lm_dirty_log_ops log_ops = { log_start, log_sync, log_stop };

static const lm_field cpu_fields[] = { LM_FIELD_SCALAR(struct cpu, step, LM_FIELD_U64) };
static const lm_vmstate cpu_state = { "cpu", 1, 1, cpu_fields, 1, NULL, NULL };

/* ---- main ---- */

static int fail(const char *what, const lm_error *err)
{
    fprintf(stderr, "tiny_vmm: %s: %s\n", what, err->msg);
    return 1;
}

static void wait_ms(int ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "source") && strcmp(argv[1], "dest"))) {
        fprintf(stderr, "usage: %s source|dest URI\n", argv[0]);
        return 2;
    }
    bool source = strcmp(argv[1], "source") == 0;
    static struct vmm m = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
    m.ram = mmap(NULL, (size_t)NPAGES * PAGE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m.ram == MAP_FAILED) {
        perror("mmap");
        return 1;
    }

    /* struct_size: the layout this program was built with (engine.h). */
    lm_callbacks cb = { .struct_size = sizeof(cb), .vm_stop = vm_stop, .vm_start = vm_start,
                        .vm_is_running = vm_is_running, .incoming_done = incoming_done };
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(&cb, &m, &err);
    lm_ram_desc ram = { .struct_size = sizeof(ram), .name = "ram0", .host = m.ram,
                        .size = (uint64_t)NPAGES * PAGE, .page_size = PAGE };
    lm_ram_block *blk;
    if (!e || lm_engine_add_ram(e, &ram, &blk, &err) < 0 ||
        lm_ram_set_dirty_log(blk, &log_ops, &m, &err) < 0 ||
        lm_engine_add_device(e, "cpu", 0, &cpu_state, &m.cpu, &err) < 0 ||
        lm_engine_set_param_str(e, "x-dirty-tracker", "dirty-log", &err) < 0) {
        return fail("set-up", &err);
    }
    pthread_t t;
    pthread_create(&t, NULL, vcpu, &m);

    int rc = 0;
    if (source) {
        set_run(&m, true);
        wait_ms(200); /* let the guest get going */
        if (lm_engine_migrate(e, argv[2], false, &err) < 0) {
            return fail("migrate", &err);
        }
        lm_info *info = calloc(1, sizeof(*info));
        info->struct_size = sizeof(*info);
        do {
            wait_ms(20);
            lm_engine_query(e, info);
        } while (info->status != LM_STATUS_COMPLETED && info->status != LM_STATUS_FAILED &&
                 info->status != LM_STATUS_CANCELLED);
        printf("source: %s after %" PRIu64 " passes, downtime %" PRIu64 " ms, step %" PRIu64
               "%s%s\n", lm_status_name(info->status), info->dirty_sync_count, info->downtime_ms,
               m.cpu.step, info->error_desc[0] ? ": " : "", info->error_desc);
        rc = info->status == LM_STATUS_COMPLETED ? 0 : 1;
        free(info);
    } else {
        lm_engine_set_autostart(e, false); /* check what arrived before it runs */
        if (lm_engine_incoming(e, argv[2], &err) < 0) {
            return fail("incoming", &err);
        }
        pthread_mutex_lock(&m.lock);
        while (!m.done) {
            pthread_cond_wait(&m.cond, &m.lock);
        }
        pthread_mutex_unlock(&m.lock);
        uint64_t arrived = m.cpu.step;
        bool ok = m.ok && invariant_holds(&m);
        set_run(&m, true);  /* the guest runs on here */
        wait_ms(200);
        set_run(&m, false);
        ok = ok && m.cpu.step > arrived && invariant_holds(&m);
        printf("destination: %s; step %" PRIu64 " arrived, ran on to %" PRIu64 "\n",
               ok ? "verified" : "BROKEN", arrived, m.cpu.step);
        rc = ok ? 0 : 1;
    }
    pthread_mutex_lock(&m.lock);
    m.quit = true;
    pthread_cond_broadcast(&m.cond);
    pthread_mutex_unlock(&m.lock);
    pthread_join(t, NULL);
    lm_engine_free(e);
    return rc;
}
