/*
 * Guest RAM: backends, block registration, dirty reports, hashing.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "guest_ram.h"

#define HUGE_2M (2u * 1024 * 1024)

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004u
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21u << 26)
#endif

int guest_ram_parse_backend(const char *s, guest_ram_config *cfg, lm_error *err)
{
    cfg->path = NULL;
    if (strcmp(s, "anon") == 0) {
        cfg->backend = GUEST_RAM_ANON;
    } else if (strcmp(s, "memfd") == 0) {
        cfg->backend = GUEST_RAM_MEMFD;
    } else if (strcmp(s, "hugetlbfs") == 0) {
        cfg->backend = GUEST_RAM_HUGETLBFS;
    } else if (strncmp(s, "file:", 5) == 0 && s[5] != '\0') {
        cfg->backend = GUEST_RAM_FILE;
        cfg->path = s + 5;
    } else {
        return lm_error_set(err, -EINVAL,
                            "--memory-backend '%s': expected anon, memfd, hugetlbfs or file:PATH", s);
    }
    return 0;
}

const char *guest_ram_backend_name(guest_ram_backend b)
{
    switch (b) {
    case GUEST_RAM_ANON: return "anon";
    case GUEST_RAM_MEMFD: return "memfd";
    case GUEST_RAM_HUGETLBFS: return "hugetlbfs";
    case GUEST_RAM_FILE: return "file";
    }
    return "?";
}

/* HugePages_Free from /proc/meminfo, for a helpful error; -1 if unknown. */
static long huge_pages_free(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long n = -1;

    if (!f) {
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "HugePages_Free: %ld", &n) == 1) {
            break;
        }
    }
    fclose(f);
    return n;
}

/* Anonymous memory aligned to 2 MiB, so THP can back it from the start
 * and the blocks' host addresses are huge-page aligned whatever the size. */
static int map_anon(guest_ram *r, const guest_ram_config *cfg, lm_error *err)
{
    uint64_t len = r->size + HUGE_2M;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        return lm_error_set_errno(err, -errno, "cannot map %" PRIu64 " bytes of guest RAM", r->size);
    }
    uint8_t *aligned = (uint8_t *)(((uintptr_t)p + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1));
    /* Trim the slack on both sides so only guest RAM stays mapped. */
    if (aligned > p) {
        munmap(p, (size_t)(aligned - p));
    }
    uint8_t *end = aligned + r->size;
    if (p + len > end) {
        munmap(end, (size_t)(p + len - end));
    }
    r->map = r->base = aligned;
    r->map_size = r->size;
    /* Huge pages by default, as QEMU advises for its RAM: far fewer
     * faults and page-table entries, above all on a migration destination
     * that fills fresh memory.  The engine tracks dirty pages at 4 KiB
     * either way; LM_RAM_THP (--thp) also makes postcopy place whole 2 MiB
     * pages. */
    if (cfg->thp || !cfg->no_thp_advice) {
        if (madvise(r->base, r->size, MADV_HUGEPAGE) < 0 && cfg->thp) {
            return lm_error_set_errno(err, -errno, "--thp: madvise(MADV_HUGEPAGE) failed");
        }
    }
    if (cfg->thp) {
        r->flags |= LM_RAM_THP;
    }
    return 0;
}

static int map_shared_fd(guest_ram *r, lm_error *err)
{
    void *p = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (p == MAP_FAILED) {
        return -errno;
    }
    r->map = r->base = p;
    r->map_size = r->size;
    return 0;
}

static int map_memfd(guest_ram *r, lm_error *err)
{
    r->fd = memfd_create("livemig-guest-ram", MFD_CLOEXEC);
    if (r->fd < 0) {
        return lm_error_set_errno(err, -errno, "memfd_create failed");
    }
    if (ftruncate(r->fd, (off_t)r->size) < 0) {
        return lm_error_set_errno(err, -errno, "cannot size the guest RAM memfd to %" PRIu64 " bytes",
                                  r->size);
    }
    int ret = map_shared_fd(r, err);
    if (ret < 0) {
        return lm_error_set_errno(err, ret, "cannot map the guest RAM memfd");
    }
    r->flags |= LM_RAM_SHARED;
    return 0;
}

static int map_hugetlbfs(guest_ram *r, lm_error *err)
{
    uint64_t need = r->size / HUGE_2M;

    r->fd = memfd_create("livemig-guest-ram", MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB);
    if (r->fd < 0) {
        return lm_error_set_errno(err, -errno, "memfd_create(MFD_HUGETLB) failed (no hugetlbfs support?)");
    }
    if (ftruncate(r->fd, (off_t)r->size) < 0) {
        return lm_error_set_errno(err, -errno, "cannot size the hugetlbfs memfd to %" PRIu64 " bytes",
                                  r->size);
    }
    /* A shared hugetlb mapping reserves its huge pages at mmap time, so a
     * shortage shows up here and not as a SIGBUS in a vCPU later. */
    int ret = map_shared_fd(r, err);
    if (ret < 0) {
        long avail = huge_pages_free();
        return lm_error_set(err, ret,
                            "cannot reserve %" PRIu64 " huge pages of 2 MiB for %" PRIu64
                            " MiB of guest RAM: %s (HugePages_Free is %ld; raise "
                            "/proc/sys/vm/nr_hugepages)",
                            need, r->size >> 20, strerror(-ret), avail);
    }
    r->page_size = HUGE_2M;
    r->flags |= LM_RAM_HUGETLB | LM_RAM_SHARED;
    return 0;
}

static int map_file(guest_ram *r, const char *path, lm_error *err)
{
    struct stat st;

    r->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (r->fd < 0) {
        return lm_error_set_errno(err, -errno, "cannot open guest RAM file '%s'", path);
    }
    if (fstat(r->fd, &st) < 0) {
        return lm_error_set_errno(err, -errno, "cannot stat '%s'", path);
    }
    /* Extending keeps what is there: the file's contents are guest RAM. */
    if ((uint64_t)st.st_size < r->size && ftruncate(r->fd, (off_t)r->size) < 0) {
        return lm_error_set_errno(err, -errno, "cannot extend '%s' to %" PRIu64 " bytes", path,
                                  r->size);
    }
    int ret = map_shared_fd(r, err);
    if (ret < 0) {
        return lm_error_set_errno(err, ret, "cannot map guest RAM file '%s'", path);
    }
    r->flags |= LM_RAM_SHARED;
    return 0;
}

int guest_ram_new(const guest_ram_config *cfg, guest_ram **out, lm_error *err)
{
    uint32_t psize = cfg->backend == GUEST_RAM_HUGETLBFS ? HUGE_2M : VM_PAGE_SIZE;
    int ret;

    *out = NULL;
    if (cfg->nblocks == 0) {
        return lm_error_set(err, -EINVAL, "--blocks must be at least 1");
    }
    if (cfg->size == 0 || cfg->size % ((uint64_t)cfg->nblocks * psize) != 0) {
        return lm_error_set(err, -EINVAL,
                            "--memory %" PRIu64 " must be a non-zero multiple of --blocks (%u) x "
                            "the page size (%u)", cfg->size, cfg->nblocks, psize);
    }
    if (cfg->thp && cfg->backend != GUEST_RAM_ANON) {
        return lm_error_set(err, -EINVAL, "--thp applies to --memory-backend anon only");
    }

    guest_ram *r = calloc(1, sizeof(*r));
    if (!r) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    r->fd = -1;
    r->size = cfg->size;
    if (cfg->dirty_log) {
        r->log = calloc((cfg->size / VM_PAGE_SIZE + 63) / 64, sizeof(uint64_t));
        if (!r->log) {
            free(r);
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
    }
    r->npages = cfg->size >> VM_PAGE_SHIFT;
    r->nblocks = cfg->nblocks;
    r->block_size = cfg->size / cfg->nblocks;
    r->page_size = VM_PAGE_SIZE;
    r->blocks = calloc(cfg->nblocks, sizeof(*r->blocks));
    if (!r->blocks) {
        free(r);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }

    switch (cfg->backend) {
    case GUEST_RAM_ANON:
        ret = map_anon(r, cfg, err);
        break;
    case GUEST_RAM_MEMFD:
        ret = map_memfd(r, err);
        break;
    case GUEST_RAM_HUGETLBFS:
        ret = map_hugetlbfs(r, err);
        break;
    case GUEST_RAM_FILE:
        ret = map_file(r, cfg->path, err);
        break;
    default:
        ret = lm_error_set(err, -EINVAL, "unknown memory backend");
        break;
    }
    if (ret < 0) {
        guest_ram_free(r);
        return ret;
    }
    *out = r;
    return 0;
}

/* ---- the dirty log handed to the engine (--dirty-log) ---- */

void guest_ram_log_write(guest_ram *r, uint64_t off, uint64_t len)
{
    if (!len || off >= r->size) {
        return;
    }
    uint64_t first = off >> VM_PAGE_SHIFT;
    uint64_t last = (off + len - 1) >> VM_PAGE_SHIFT;
    for (uint64_t p = first; p <= last && p < r->npages; p++) {
        __atomic_fetch_or(&r->log[p / 64], 1ull << (p % 64), __ATOMIC_RELAXED);
    }
}

static unsigned log_block_index(const guest_ram *r, const lm_ram_block *b)
{
    unsigned i = 0;
    while (i < r->nblocks && r->blocks[i] != b) {
        i++;
    }
    return i;
}

static int log_start(void *opaque, lm_ram_block *b)
{
    guest_ram *r = opaque;
    /* Writes before this point are not asked for: the engine sends the
     * whole block in its first pass. */
    __atomic_fetch_add(&r->logging, 1, __ATOMIC_SEQ_CST);
    return log_block_index(r, b) < r->nblocks ? 0 : -ENOENT;
}

/* Hands over (and clears) the block's part of the log, converted to the
 * block's page size. */
static int log_sync(void *opaque, lm_ram_block *b, uint64_t *bitmap, uint64_t npages)
{
    guest_ram *r = opaque;
    unsigned i = log_block_index(r, b);
    if (i >= r->nblocks) {
        return -ENOENT;
    }
    uint64_t base = (uint64_t)i * (r->block_size >> VM_PAGE_SHIFT);
    uint64_t per = r->page_size >> VM_PAGE_SHIFT; /* 4 KiB pages per block page */
    uint64_t n4k = r->block_size >> VM_PAGE_SHIFT;
    for (uint64_t p = 0; p < n4k;) {
        uint64_t g = base + p;
        if (per == 1 && p % 64 == 0 && g % 64 == 0 && p + 64 <= n4k) {
            uint64_t w = __atomic_exchange_n(&r->log[g / 64], 0, __ATOMIC_ACQ_REL);
            bitmap[p / 64] |= w;
            p += 64;
            continue;
        }
        uint64_t bit = 1ull << (g % 64);
        if (__atomic_fetch_and(&r->log[g / 64], ~bit, __ATOMIC_ACQ_REL) & bit) {
            uint64_t bp = p / per;
            if (bp < npages) {
                bitmap[bp / 64] |= 1ull << (bp % 64);
            }
        }
        p++;
    }
    return 0;
}

static void log_stop(void *opaque, lm_ram_block *b)
{
    guest_ram *r = opaque;
    __atomic_fetch_sub(&r->logging, 1, __ATOMIC_SEQ_CST);
}

static const lm_dirty_log_ops guest_ram_log_ops = {
    .start = log_start,
    .sync = log_sync,
    .stop = log_stop,
};

int guest_ram_register(guest_ram *r, lm_engine *e, lm_error *err)
{
    for (unsigned i = 0; i < r->nblocks; i++) {
        char name[LM_RAM_NAME_MAX];
        snprintf(name, sizeof(name), "ram%u", i);
        lm_ram_desc d = {
            .name = name,
            .host = r->base + (uint64_t)i * r->block_size,
            .size = r->block_size,
            .page_size = r->page_size,
            .flags = r->flags,
        };
        /* memfd and file backends: pages go out of the page cache with
         * sendfile.  hugetlbfs files cannot be spliced. */
        if ((r->flags & LM_RAM_SHARED) && !(r->flags & LM_RAM_HUGETLB) && r->fd >= 0) {
            d.flags |= LM_RAM_FD;
            d.fd = r->fd;
            d.fd_offset = (uint64_t)i * r->block_size;
        }
        int ret = lm_engine_add_ram(e, &d, &r->blocks[i], err);
        if (ret < 0) {
            return ret;
        }
        if (r->log) {
            ret = lm_ram_set_dirty_log(r->blocks[i], &guest_ram_log_ops, r, err);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

void guest_ram_free(guest_ram *r)
{
    if (!r) {
        return;
    }
    if (r->map) {
        munmap(r->map, r->map_size);
    }
    if (r->fd >= 0) {
        close(r->fd);
    }
    free(r->blocks);
    free(r->log);
    free(r);
}

void guest_ram_wrote_slow(guest_ram *r, uint64_t off, uint64_t len)
{
    /* A write may straddle a block boundary (the random workload's version
     * table does); report each block's part. */
    while (len > 0) {
        unsigned i = (unsigned)(off / r->block_size);
        uint64_t boff = off - (uint64_t)i * r->block_size;
        uint64_t n = r->block_size - boff;
        if (n > len) {
            n = len;
        }
        lm_ram_block *b = r->blocks[i];
        if (b && lm_ram_wants_dirty_reports(b)) {
            lm_ram_mark_dirty(b, boff, n);
        }
        off += n;
        len -= n;
    }
}

/*
 * XXH64 (seed 0) over all of guest RAM.  Guest RAM is a multiple of 4 KiB,
 * so only whole 32-byte stripes occur and the tail steps are not needed.
 * The result equals xxhsum -H64 of the RAM's bytes, which makes a dump easy
 * to cross-check.
 */
#define XXP1 11400714785074694791ull
#define XXP2 14029467366897019727ull
#define XXP3 1609587929392839161ull
#define XXP4 9650029242287828579ull

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t xx_round(uint64_t acc, uint64_t in)
{
    acc += in * XXP2;
    acc = rotl64(acc, 31);
    return acc * XXP1;
}

static inline uint64_t xx_merge(uint64_t h, uint64_t v)
{
    h ^= xx_round(0, v);
    return h * XXP1 + XXP4;
}

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

uint64_t guest_ram_hash(const guest_ram *r)
{
    const uint8_t *p = r->base;
    const uint8_t *end = p + r->size;
    uint64_t v1 = XXP1 + XXP2, v2 = XXP2, v3 = 0, v4 = 0 - XXP1;

    for (; p + 32 <= end; p += 32) {
        v1 = xx_round(v1, load_le64(p));
        v2 = xx_round(v2, load_le64(p + 8));
        v3 = xx_round(v3, load_le64(p + 16));
        v4 = xx_round(v4, load_le64(p + 24));
    }
    uint64_t h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
    h = xx_merge(h, v1);
    h = xx_merge(h, v2);
    h = xx_merge(h, v3);
    h = xx_merge(h, v4);
    h += r->size;
    h ^= h >> 33;
    h *= XXP2;
    h ^= h >> 29;
    h *= XXP3;
    h ^= h >> 32;
    return h;
}
