/*
 * Guest workloads: steps and invariants.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h"

struct workload {
    workload_config cfg;
    guest_ram *ram;
    unsigned nvcpus;
    /* random: guest pages [0, table_pages) hold a u32 version per data
     * page; data page d is guest page data_first + d. */
    uint64_t table_pages;
    uint64_t data_first;
    uint64_t data_pages;
    uint64_t ws_pages;      /* working set, data pages [0, ws_pages) */
};

int workload_parse_kind(const char *s, workload_kind *out, lm_error *err)
{
    if (strcmp(s, "increment") == 0) {
        *out = WORKLOAD_INCREMENT;
    } else if (strcmp(s, "random") == 0) {
        *out = WORKLOAD_RANDOM;
    } else if (strcmp(s, "idle") == 0) {
        *out = WORKLOAD_IDLE;
    } else {
        return lm_error_set(err, -EINVAL, "--workload '%s': expected increment, random or idle", s);
    }
    return 0;
}

const char *workload_kind_name(workload_kind k)
{
    switch (k) {
    case WORKLOAD_INCREMENT: return "increment";
    case WORKLOAD_RANDOM: return "random";
    case WORKLOAD_IDLE: return "idle";
    }
    return "unknown";
}

int workload_new(const workload_config *cfg, guest_ram *ram, unsigned nvcpus,
                 workload **out, lm_error *err)
{
    uint64_t npages = ram->npages;

    *out = NULL;
    workload *w = calloc(1, sizeof(*w));
    if (!w) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    w->cfg = *cfg;
    w->ram = ram;
    w->nvcpus = nvcpus;
    if (cfg->nvcpu_rates && cfg->nvcpu_rates != nvcpus) {
        free(w);
        return lm_error_set(err, -EINVAL, "--vcpu-dirty-rate gives %u rates for %u vCPUs",
                            cfg->nvcpu_rates, nvcpus);
    }

    switch (cfg->kind) {
    case WORKLOAD_INCREMENT:
        if (npages < nvcpus) {
            free(w);
            return lm_error_set(err, -EINVAL, "increment: %" PRIu64 " guest pages cannot be shared by %u vCPUs",
                                npages, nvcpus);
        }
        break;
    case WORKLOAD_RANDOM: {
        /* The largest D with D data pages + ceil(4D / 4096) table pages
         * fitting in guest RAM. */
        uint64_t d = npages * 1024 / 1025;
        while (d + (d * 4 + VM_PAGE_SIZE - 1) / VM_PAGE_SIZE < npages) {
            d++;
        }
        while (d > 0 && d + (d * 4 + VM_PAGE_SIZE - 1) / VM_PAGE_SIZE > npages) {
            d--;
        }
        w->data_pages = d;
        w->table_pages = (d * 4 + VM_PAGE_SIZE - 1) / VM_PAGE_SIZE;
        w->data_first = w->table_pages;
        if (cfg->ws_bytes) {
            w->ws_pages = cfg->ws_bytes / VM_PAGE_SIZE;
        } else {
            w->ws_pages = d * cfg->ws_percent / 100;
        }
        if (w->ws_pages > d) {
            w->ws_pages = d;
        }
        if (w->ws_pages < nvcpus) {
            uint64_t ws = w->ws_pages;
            free(w);
            return lm_error_set(err, -EINVAL,
                                "random: the working set (%" PRIu64 " of %" PRIu64
                                " data pages) must give every one of the %u vCPUs a page",
                                ws, d, nvcpus);
        }
        break;
    }
    case WORKLOAD_IDLE:
        break;
    default:
        free(w);
        return lm_error_set(err, -EINVAL, "unknown workload");
    }
    *out = w;
    return 0;
}

void workload_free(workload *w)
{
    free(w);
}

workload_kind workload_get_kind(const workload *w)
{
    return w->cfg.kind;
}

void workload_init_regs(const workload *w, unsigned cpu, wl_regs *regs)
{
    uint64_t total = 0, n = w->nvcpus;

    memset(regs, 0, sizeof(*regs));
    regs->kind = w->cfg.kind;
    regs->cpu = cpu;
    switch (w->cfg.kind) {
    case WORKLOAD_INCREMENT:
        total = w->ram->npages;
        break;
    case WORKLOAD_RANDOM:
        total = w->ws_pages;
        regs->rng = vm_rng_seed(w->cfg.seed, cpu);
        break;
    case WORKLOAD_IDLE:
        total = 1000 * n; /* a "pass" is 1000 idle steps, about a second */
        break;
    }
    regs->first = total * cpu / n;
    regs->count = total * (cpu + 1) / n - regs->first;
}

unsigned workload_batch(const workload *w, unsigned cpu)
{
    unsigned max = 1;

    switch (w->cfg.kind) {
    case WORKLOAD_INCREMENT:
        max = 4096; /* a step is a few ns: amortise the time checks */
        break;
    case WORKLOAD_RANDOM:
        max = 64;   /* a step fills a page, about a microsecond */
        break;
    case WORKLOAD_IDLE:
        return 1;
    }
    /* Under a rate limit, about a millisecond's worth per batch keeps the
     * writes smooth instead of bursty. */
    uint64_t rate = workload_vcpu_rate(w, cpu);
    if (rate) {
        uint64_t per_ms = rate / VM_PAGE_SIZE / 1000;
        if (per_ms < max) {
            max = per_ms ? (unsigned)per_ms : 1;
        }
    }
    return max;
}

uint64_t workload_step_bytes(const workload *w)
{
    /* increment touches one byte but dirties a whole page: that is what
     * the migration has to move again. */
    return w->cfg.kind == WORKLOAD_IDLE ? 0 : VM_PAGE_SIZE;
}

uint64_t workload_vcpu_rate(const workload *w, unsigned cpu)
{
    if (w->cfg.kind == WORKLOAD_IDLE) {
        return 0;
    }
    if (w->cfg.nvcpu_rates) {
        return cpu < w->cfg.nvcpu_rates ? w->cfg.vcpu_rates[cpu] : 0;
    }
    if (w->cfg.dirty_rate == 0) {
        return 0;
    }
    uint64_t r = w->cfg.dirty_rate / w->nvcpus;
    return r ? r : 1;
}

uint64_t workload_step_sleep_ns(const workload *w)
{
    return w->cfg.kind == WORKLOAD_IDLE ? 1000000 : 0;
}

static inline bool stop_requested(const int *stop)
{
    return __atomic_load_n(stop, __ATOMIC_RELAXED) != 0;
}

static unsigned run_increment(workload *w, wl_regs *r, unsigned max, const int *stop)
{
    guest_ram *ram = w->ram;
    uint64_t pos = r->pos, passes = r->passes;
    unsigned i;

    for (i = 0; i < max && !stop_requested(stop); i++) {
        uint64_t pfn = r->first + pos;
        guest_ram_page(ram, pfn)[0]++;
        guest_ram_wrote(ram, pfn << VM_PAGE_SHIFT, 1);
        if (++pos == r->count) {
            pos = 0;
            passes++;
        }
    }
    r->pos = pos;
    __atomic_store_n(&r->passes, passes, __ATOMIC_RELAXED);
    return i;
}

static unsigned run_random(workload *w, wl_regs *r, unsigned max, const int *stop)
{
    guest_ram *ram = w->ram;
    uint32_t *table = (uint32_t *)ram->base;
    uint64_t rng = r->rng, pos = r->pos, passes = r->passes;
    unsigned i;

    for (i = 0; i < max && !stop_requested(stop); i++) {
        uint64_t d = r->first + vm_rng_below(&rng, r->count);
        uint32_t v = table[d] + 1;
        if (v == 0) {
            v = 1; /* 0 means "never written"; skip it on wrap-around */
        }
        table[d] = v;
        guest_ram_wrote(ram, d * 4, 4);
        uint64_t pfn = w->data_first + d;
        vm_pattern_fill(guest_ram_page(ram, pfn), VM_PAGE_SIZE, d, v);
        guest_ram_wrote(ram, pfn << VM_PAGE_SHIFT, VM_PAGE_SIZE);
        if (++pos == r->count) {
            pos = 0;
            passes++;
        }
    }
    r->rng = rng;
    r->pos = pos;
    __atomic_store_n(&r->passes, passes, __ATOMIC_RELAXED);
    return i;
}

static unsigned run_idle(wl_regs *r, unsigned max, const int *stop)
{
    unsigned i;

    /* The vCPU loop did the sleeping; a step only counts. */
    for (i = 0; i < max && !stop_requested(stop); i++) {
        if (++r->pos == r->count) {
            r->pos = 0;
            __atomic_store_n(&r->passes, r->passes + 1, __ATOMIC_RELAXED);
        }
    }
    return i;
}

unsigned workload_run(workload *w, wl_regs *regs, unsigned max, const int *stop)
{
    unsigned n = 0;

    switch (w->cfg.kind) {
    case WORKLOAD_INCREMENT:
        n = run_increment(w, regs, max, stop);
        break;
    case WORKLOAD_RANDOM:
        n = run_random(w, regs, max, stop);
        break;
    case WORKLOAD_IDLE:
        n = run_idle(regs, max, stop);
        break;
    }
    __atomic_store_n(&regs->steps, regs->steps + n, __ATOMIC_RELAXED);
    return n;
}

/* ------------------------------------------------------------------------ */
/* Invariants */

/* Index of the first non-zero byte of p[from, len), or -1. */
static long first_nonzero(const uint8_t *p, size_t from, size_t len)
{
    size_t i = from;

    for (; i < len && (i & 7); i++) {
        if (p[i]) {
            return (long)i;
        }
    }
    /* Word-at-a-time; only look closer once a word is non-zero. */
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        if (v) {
            break;
        }
    }
    for (; i < len; i++) {
        if (p[i]) {
            return (long)i;
        }
    }
    return -1;
}

static bool regs_match(const workload *w, const wl_regs *r, unsigned cpu, struct vm_verify *res)
{
    wl_regs want;

    workload_init_regs(w, cpu, &want);
    if (r->kind != want.kind || r->first != want.first || r->count != want.count ||
        r->pos >= r->count) {
        vm_verify_fail(res, "cpu %u: register block (workload %u, share %" PRIu64 "+%" PRIu64
                       ", pos %" PRIu64 ") does not fit this machine's %s workload",
                       cpu, r->kind, r->first, r->count, r->pos, workload_kind_name(w->cfg.kind));
        return false;
    }
    return true;
}

static void verify_increment(const workload *w, const wl_regs *regs, unsigned n,
                             struct vm_verify *res)
{
    const guest_ram *ram = w->ram;

    for (unsigned c = 0; c < n; c++) {
        const wl_regs *r = &regs[c];
        if (!regs_match(w, r, c, res)) {
            continue;
        }
        /* Every page equals the slice's last page, except those before the
         * vCPU's position, which are one ahead. */
        uint8_t base = guest_ram_page(ram, r->first + r->count - 1)[0];
        for (uint64_t j = 0; j < r->count; j++) {
            uint64_t pfn = r->first + j;
            const uint8_t *p = guest_ram_page(ram, pfn);
            uint8_t want = (uint8_t)(j < r->pos ? base + 1 : base);
            if (p[0] != want) {
                vm_verify_fail(res, "increment: page %" PRIu64 " (cpu %u, slice index %" PRIu64
                               ", vCPU stopped at %" PRIu64 "): byte 0 expected 0x%02x, found 0x%02x",
                               pfn, c, j, r->pos, want, p[0]);
                continue;
            }
            long nz = first_nonzero(p, 1, VM_PAGE_SIZE);
            if (nz >= 0) {
                vm_verify_fail(res, "increment: page %" PRIu64 ": byte %ld expected 0x00, found 0x%02x",
                               pfn, nz, p[nz]);
            }
        }
    }
}

static void verify_random(const workload *w, const wl_regs *regs, unsigned n,
                          struct vm_verify *res)
{
    const guest_ram *ram = w->ram;
    const uint32_t *table = (const uint32_t *)ram->base;
    uint64_t expected, found;

    /* Each vCPU's part: every step bumped one version in it by one, so the
     * versions sum to the vCPU's step count (a lost table write shows). */
    for (unsigned c = 0; c < n; c++) {
        const wl_regs *r = &regs[c];
        if (!regs_match(w, r, c, res)) {
            continue;
        }
        uint64_t sum = 0;
        for (uint64_t d = r->first; d < r->first + r->count; d++) {
            sum += table[d];
        }
        if (sum != r->steps) {
            vm_verify_fail(res, "random: cpu %u made %" PRIu64 " steps but the versions of its "
                           "pages %" PRIu64 "..%" PRIu64 " sum to %" PRIu64,
                           c, r->steps, r->first, r->first + r->count - 1, sum);
        }
    }

    for (uint64_t d = 0; d < w->data_pages; d++) {
        uint32_t v = table[d];
        uint64_t pfn = w->data_first + d;
        if (v != 0 && d >= w->ws_pages) {
            vm_verify_fail(res, "random: version table entry %" PRIu64 " is %u but page %" PRIu64
                           " lies outside the working set", d, v, pfn);
        }
        long bad = vm_pattern_check(guest_ram_page(ram, pfn), VM_PAGE_SIZE, d, v, &expected, &found);
        if (bad >= 0) {
            vm_verify_fail(res, "random: page %" PRIu64 " (data page %" PRIu64 ", version %u): word %ld "
                           "expected 0x%016" PRIx64 ", found 0x%016" PRIx64,
                           pfn, d, v, bad, expected, found);
        }
    }

    /* The table's tail and the pages after the data are never written. */
    uint64_t tail = w->data_pages * 4;
    long nz = first_nonzero(ram->base, tail, w->table_pages * VM_PAGE_SIZE);
    if (nz >= 0) {
        vm_verify_fail(res, "random: version table padding byte %ld is 0x%02x, expected 0",
                       nz, ram->base[nz]);
    }
    for (uint64_t pfn = w->data_first + w->data_pages; pfn < ram->npages; pfn++) {
        nz = first_nonzero(guest_ram_page(ram, pfn), 0, VM_PAGE_SIZE);
        if (nz >= 0) {
            vm_verify_fail(res, "random: unused page %" PRIu64 " byte %ld is 0x%02x, expected 0",
                           pfn, nz, guest_ram_page(ram, pfn)[nz]);
        }
    }
}

static void verify_idle(const workload *w, struct vm_verify *res)
{
    /* The idle guest never writes: its RAM stays as it started, which is
     * all-zero for every backend but an existing file. */
    const guest_ram *ram = w->ram;
    for (uint64_t pfn = 0; pfn < ram->npages; pfn++) {
        long nz = first_nonzero(guest_ram_page(ram, pfn), 0, VM_PAGE_SIZE);
        if (nz >= 0) {
            vm_verify_fail(res, "idle: page %" PRIu64 " byte %ld is 0x%02x, expected 0",
                           pfn, nz, guest_ram_page(ram, pfn)[nz]);
        }
    }
}

void workload_verify(const workload *w, const wl_regs *regs, unsigned n, struct vm_verify *res)
{
    res->pages += w->ram->npages;
    switch (w->cfg.kind) {
    case WORKLOAD_INCREMENT:
        verify_increment(w, regs, n, res);
        break;
    case WORKLOAD_RANDOM:
        verify_random(w, regs, n, res);
        break;
    case WORKLOAD_IDLE:
        verify_idle(w, res);
        break;
    }
}
