/*
 * vCPU threads: park/run, throttle, dirty-rate pacing, register blocks.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vcpu.h"

#define THROTTLE_MIN_SLEEP_NS 1000000ull /* pay throttle debt in >= 1 ms sleeps */

struct vcpu {
    vcpus *owner;
    unsigned index;
    pthread_t thread;
    wl_regs regs;     /* the register block: migrates as "cpu" instance index */
    wl_regs initial;  /* what this machine expects; a loaded block must match */
    int tid;          /* the thread's id (postcopy blocktime), set under vs->lock */
    int throttle;     /* atomic: this vCPU's own throttle (dirty-limit), percent */
    uint64_t throttle_ns; /* atomic: time slept paying throttle debt (either throttle) */
};

struct vcpus {
    workload *wl;
    unsigned n;
    struct vcpu *cpu;
    unsigned nthreads;      /* threads actually created */
    vcpu_tick_fn tick;
    void *tick_opaque;

    pthread_mutex_t lock;
    pthread_cond_t wake;    /* run/stop/quit changed */
    pthread_cond_t parked;  /* a vCPU parked */
    bool run;
    bool quit;
    unsigned nparked;
    int stop;               /* atomic: running vCPUs park at the next step */
    int throttle;           /* atomic: percent */
};

static bool stop_requested(vcpus *vs)
{
    return __atomic_load_n(&vs->stop, __ATOMIC_RELAXED) != 0;
}

/* Sleep ns unless a stop is requested first.  Returns false when stopped. */
static bool vcpu_sleep(vcpus *vs, uint64_t ns)
{
    struct timespec dl;
    bool ok;

    clock_gettime(CLOCK_MONOTONIC, &dl);
    uint64_t t = (uint64_t)dl.tv_nsec + ns;
    dl.tv_sec += (time_t)(t / 1000000000ull);
    dl.tv_nsec = (long)(t % 1000000000ull);

    pthread_mutex_lock(&vs->lock);
    /* stop is set under this lock before `wake` is broadcast, so checking
     * it here cannot miss the wake-up. */
    while (!stop_requested(vs)) {
        if (pthread_cond_timedwait(&vs->wake, &vs->lock, &dl) == ETIMEDOUT) {
            break;
        }
    }
    ok = !stop_requested(vs);
    pthread_mutex_unlock(&vs->lock);
    return ok;
}

/* Run the workload until a stop is requested. */
static void vcpu_run(struct vcpu *cpu)
{
    vcpus *vs = cpu->owner;
    workload *wl = vs->wl;
    unsigned batch = workload_batch(wl, cpu->index);
    uint64_t step_bytes = workload_step_bytes(wl);
    uint64_t rate = workload_vcpu_rate(wl, cpu->index);
    uint64_t step_sleep = workload_step_sleep_ns(wl);
    /* Token bucket: at most ~10 ms (or one batch) of credit, so a vCPU that
     * was held back does not burst afterwards. */
    double burst = (double)rate / 100;
    if (burst < (double)batch * (double)step_bytes) {
        burst = (double)batch * (double)step_bytes;
    }
    double tokens = 0;
    uint64_t last = vm_now_ns();
    uint64_t debt = 0;

    while (!stop_requested(vs)) {
        if (step_sleep && !vcpu_sleep(vs, step_sleep)) {
            break;
        }
        uint64_t t0 = vm_now_ns();
        unsigned n = workload_run(wl, &cpu->regs, batch, &vs->stop);
        uint64_t t1 = vm_now_ns();

        if (cpu->index == 0 && vs->tick) {
            vs->tick(vs->tick_opaque);
        }

        /* The whole guest's throttle (auto-converge) or this vCPU's own
         * (dirty-limit), whichever asks for more sleep. */
        int p = __atomic_load_n(&vs->throttle, __ATOMIC_RELAXED);
        int own = __atomic_load_n(&cpu->throttle, __ATOMIC_RELAXED);
        if (own > p) {
            p = own;
        }
        if (p > 0) {
            debt += (t1 - t0) * (uint64_t)p / (uint64_t)(100 - p);
            if (debt >= THROTTLE_MIN_SLEEP_NS) {
                uint64_t s0 = vm_now_ns();
                vcpu_sleep(vs, debt);
                __atomic_fetch_add(&cpu->throttle_ns, vm_now_ns() - s0, __ATOMIC_RELAXED);
                debt = 0;
            }
        } else {
            debt = 0;
        }

        if (rate) {
            /* The rate is paced in vCPU time: a vCPU throttled to run
             * (100 - p) % of the time dirties that share of its rate, as
             * a guest doing fixed work per unit of CPU would.  Otherwise a
             * rate-limited guest, idle most of the time, would never feel
             * auto-converge. */
            double eff = (double)rate * (double)(100 - p) / 100;
            uint64_t now = vm_now_ns();
            tokens += (double)(now - last) * eff / 1e9;
            last = now;
            if (tokens > burst) {
                tokens = burst;
            }
            tokens -= (double)n * (double)step_bytes;
            if (tokens < 0) {
                vcpu_sleep(vs, (uint64_t)(-tokens * 1e9 / eff));
            }
        }
    }
}

static void *vcpu_thread(void *arg)
{
    struct vcpu *cpu = arg;
    vcpus *vs = cpu->owner;
    char name[16];

    snprintf(name, sizeof(name), "vcpu%u", cpu->index);
    pthread_setname_np(pthread_self(), name);

    pthread_mutex_lock(&vs->lock);
    cpu->tid = (int)gettid();
    for (;;) {
        while (!vs->run && !vs->quit) {
            vs->nparked++;
            pthread_cond_broadcast(&vs->parked);
            pthread_cond_wait(&vs->wake, &vs->lock);
            vs->nparked--;
        }
        if (vs->quit) {
            break;
        }
        pthread_mutex_unlock(&vs->lock);
        vcpu_run(cpu);
        pthread_mutex_lock(&vs->lock);
    }
    pthread_mutex_unlock(&vs->lock);
    return NULL;
}

int vcpus_new(unsigned n, workload *wl, vcpu_tick_fn tick, void *tick_opaque,
              vcpus **out, lm_error *err)
{
    pthread_condattr_t ca;

    *out = NULL;
    if (n == 0) {
        return lm_error_set(err, -EINVAL, "--smp must be at least 1");
    }
    vcpus *vs = calloc(1, sizeof(*vs));
    struct vcpu *cpu = calloc(n, sizeof(*cpu));
    if (!vs || !cpu) {
        free(vs);
        free(cpu);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    vs->wl = wl;
    vs->n = n;
    vs->cpu = cpu;
    vs->tick = tick;
    vs->tick_opaque = tick_opaque;
    vs->stop = 1;
    pthread_mutex_init(&vs->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&vs->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&vs->parked, NULL);

    for (unsigned i = 0; i < n; i++) {
        cpu[i].owner = vs;
        cpu[i].index = i;
        workload_init_regs(wl, i, &cpu[i].regs);
        cpu[i].initial = cpu[i].regs;
    }
    for (unsigned i = 0; i < n; i++) {
        int ret = pthread_create(&cpu[i].thread, NULL, vcpu_thread, &cpu[i]);
        if (ret != 0) {
            vcpus_free(vs);
            return lm_error_set_errno(err, -ret, "cannot create vCPU thread %u", i);
        }
        vs->nthreads++;
    }
    *out = vs;
    return 0;
}

void vcpus_free(vcpus *vs)
{
    if (!vs) {
        return;
    }
    pthread_mutex_lock(&vs->lock);
    vs->quit = true;
    vs->run = false;
    __atomic_store_n(&vs->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&vs->wake);
    pthread_mutex_unlock(&vs->lock);
    for (unsigned i = 0; i < vs->nthreads; i++) {
        pthread_join(vs->cpu[i].thread, NULL);
    }
    pthread_cond_destroy(&vs->wake);
    pthread_cond_destroy(&vs->parked);
    pthread_mutex_destroy(&vs->lock);
    free(vs->cpu);
    free(vs);
}

/*
 * Pause and resume are serialised by the caller (the machine's run-state
 * lock): a resume while a pause still waits would keep it waiting.
 */
void vcpus_resume(vcpus *vs)
{
    pthread_mutex_lock(&vs->lock);
    vs->run = true;
    __atomic_store_n(&vs->stop, 0, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&vs->wake);
    pthread_mutex_unlock(&vs->lock);
}

void vcpus_pause(vcpus *vs)
{
    pthread_mutex_lock(&vs->lock);
    vs->run = false;
    __atomic_store_n(&vs->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&vs->wake); /* ends sleeps early */
    while (vs->nparked < vs->nthreads) {
        pthread_cond_wait(&vs->parked, &vs->lock);
    }
    pthread_mutex_unlock(&vs->lock);
}

bool vcpus_running(vcpus *vs)
{
    pthread_mutex_lock(&vs->lock);
    bool r = vs->run;
    pthread_mutex_unlock(&vs->lock);
    return r;
}

void vcpus_set_throttle(vcpus *vs, int percent)
{
    if (percent < 0) {
        percent = 0;
    }
    if (percent > 99) {
        percent = 99;
    }
    __atomic_store_n(&vs->throttle, percent, __ATOMIC_RELAXED);
}

void vcpus_set_vcpu_throttle(vcpus *vs, unsigned index, int percent)
{
    if (index >= vs->n) {
        return;
    }
    percent = percent < 0 ? 0 : percent > 99 ? 99 : percent;
    __atomic_store_n(&vs->cpu[index].throttle, percent, __ATOMIC_RELAXED);
}

void vcpus_vcpu_stats(vcpus *vs, unsigned index, vcpu_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (index >= vs->n) {
        return;
    }
    struct vcpu *cpu = &vs->cpu[index];
    out->steps = __atomic_load_n(&cpu->regs.steps, __ATOMIC_RELAXED);
    out->dirty_pages = workload_step_bytes(vs->wl) ? out->steps : 0;
    out->throttle = __atomic_load_n(&cpu->throttle, __ATOMIC_RELAXED);
    out->throttle_ns = __atomic_load_n(&cpu->throttle_ns, __ATOMIC_RELAXED);
}

/* lm_vcpu_ops: each step of a writing workload dirties one page (random:
 * its data page; its version-table entry shares pages with others). */
static uint64_t ops_dirty_pages(void *opaque, unsigned index)
{
    vcpu_stats st;
    vcpus_vcpu_stats(opaque, index, &st);
    return st.dirty_pages;
}

static void ops_throttle(void *opaque, unsigned index, int percent)
{
    vcpus_set_vcpu_throttle(opaque, index, percent);
}

static const lm_vcpu_ops vcpu_ops = {
    .dirty_pages = ops_dirty_pages,
    .throttle = ops_throttle,
};

unsigned vcpus_count(const vcpus *vs)
{
    return vs->n;
}

void vcpus_progress(vcpus *vs, uint64_t *steps, uint64_t *passes)
{
    uint64_t s = 0, p = 0;

    for (unsigned i = 0; i < vs->n; i++) {
        s += __atomic_load_n(&vs->cpu[i].regs.steps, __ATOMIC_RELAXED);
        p += __atomic_load_n(&vs->cpu[i].regs.passes, __ATOMIC_RELAXED);
    }
    *steps = s;
    *passes = p;
}

void vcpus_copy_regs(vcpus *vs, wl_regs *regs)
{
    for (unsigned i = 0; i < vs->n; i++) {
        regs[i] = vs->cpu[i].regs;
    }
}

/* ------------------------------------------------------------------------ */
/* The "cpu" device: one register block per vCPU. */

#define CPU_FIELD(member, type) \
    { #member, offsetof(struct vcpu, regs.member), (type), 1, 0 }

static const lm_field cpu_fields[] = {
    CPU_FIELD(kind, LM_FIELD_U32),
    CPU_FIELD(cpu, LM_FIELD_U32),
    CPU_FIELD(first, LM_FIELD_U64),
    CPU_FIELD(count, LM_FIELD_U64),
    CPU_FIELD(pos, LM_FIELD_U64),
    CPU_FIELD(rng, LM_FIELD_U64),
    CPU_FIELD(steps, LM_FIELD_U64),
    CPU_FIELD(passes, LM_FIELD_U64),
};

/* A block from a machine with another --smp, --memory, --working-set or
 * --workload would make the workload run over the wrong pages: refuse it. */
static int cpu_post_load(void *opaque, uint32_t version, lm_error *err)
{
    struct vcpu *cpu = opaque;
    wl_regs got = cpu->regs;
    const wl_regs *want = &cpu->initial;

    if (got.kind != want->kind || got.cpu != want->cpu || got.first != want->first ||
        got.count != want->count || (got.count && got.pos >= got.count)) {
        cpu->regs = cpu->initial;
        return lm_error_set(err, -EINVAL,
                            "cpu %u: the source ran workload %s over pages %" PRIu64 "+%" PRIu64
                            " (pos %" PRIu64 "), this machine runs %s over %" PRIu64 "+%" PRIu64
                            " (start both with the same --workload, --smp, --memory, --working-set)",
                            cpu->index, workload_kind_name((workload_kind)got.kind), got.first,
                            got.count, got.pos, workload_kind_name((workload_kind)want->kind),
                            want->first, want->count);
    }
    return 0;
}

static const lm_vmstate cpu_vmstate = {
    .name = "cpu",
    .version = 1,
    .min_version = 1,
    .fields = cpu_fields,
    .nfields = sizeof(cpu_fields) / sizeof(cpu_fields[0]),
    .pre_save = NULL,
    .post_load = cpu_post_load,
};

int vcpus_register(vcpus *vs, lm_engine *e, lm_error *err)
{
    if (vs->n <= LM_MAX_VCPUS) {
        int ret = lm_engine_set_vcpu_ops(e, vs->n, &vcpu_ops, vs, err);
        if (ret < 0) {
            return ret;
        }
    }
    for (unsigned i = 0; i < vs->n; i++) {
        /* Every thread sets its id before it first parks. */
        pthread_mutex_lock(&vs->lock);
        while (i < vs->nthreads && vs->cpu[i].tid == 0) {
            pthread_cond_wait(&vs->parked, &vs->lock);
        }
        int tid = vs->cpu[i].tid;
        pthread_mutex_unlock(&vs->lock);
        if (tid && i < LM_MAX_VCPUS) {
            lm_engine_set_vcpu_thread(e, i, tid, NULL);
        }
        int ret = lm_engine_add_device(e, "cpu", i, &cpu_vmstate, &vs->cpu[i], err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}
