/*
 * Small helpers shared by the livemig-vm modules: the monotonic clock, the
 * guest's PRNG, the page patterns that the random workload and the vram
 * device write (and x-verify-memory checks), and the verification result
 * every checker fills.
 *
 * Everything here is static inline: these sit on the vCPUs' hot paths.
 */
#ifndef LIVEMIG_VM_VMUTIL_H
#define LIVEMIG_VM_VMUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define VM_PAGE_SIZE 4096u
#define VM_PAGE_SHIFT 12

static inline uint64_t vm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* splitmix64's finaliser: a cheap, well-mixing 64-bit bijection. */
static inline uint64_t vm_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* A non-zero PRNG state derived from a seed and a stream number. */
static inline uint64_t vm_rng_seed(uint64_t seed, uint64_t stream)
{
    uint64_t s = vm_mix64(seed * 0x9e3779b97f4a7c15ull + stream + 1);
    return s ? s : 0x2545f4914f6cdd1dull;
}

/* xorshift64*: the state is one u64, so it fits in a register block. */
static inline uint64_t vm_rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* Uniform in [0, n) without a division (Lemire's multiply-shift). */
static inline uint64_t vm_rng_below(uint64_t *state, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)vm_rng_next(state) * n) >> 64);
}

/*
 * The content of a page (or vram chunk) `index` at `version`: version 0 is
 * the never-written, all-zero page; any other version is a sequence of
 * 64-bit words that depends on (index, version) in every word, so a page
 * that missed its newest write (stale) or landed at the wrong index never
 * matches.  One mix per page keeps the fill close to memset speed.
 */
static inline uint64_t vm_pattern_key(uint64_t index, uint32_t version)
{
    return vm_mix64(index * 0x9e3779b97f4a7c15ull ^ ((uint64_t)version << 32 | 0x5bd1e995u));
}

static inline void vm_pattern_fill(void *buf, size_t len, uint64_t index, uint32_t version)
{
    uint64_t *w = (uint64_t *)buf;
    uint64_t key = vm_pattern_key(index, version);
    for (size_t i = 0; i < len / 8; i++) {
        w[i] = key ^ (i * 0xd6e8feb86659fd93ull);
    }
}

/* Returns the index of the first mismatching 64-bit word, or -1. */
static inline long vm_pattern_check(const void *buf, size_t len, uint64_t index,
                                    uint32_t version, uint64_t *expected, uint64_t *found)
{
    const uint64_t *w = (const uint64_t *)buf;
    uint64_t key = version ? vm_pattern_key(index, version) : 0;
    for (size_t i = 0; i < len / 8; i++) {
        uint64_t want = version ? key ^ (i * 0xd6e8feb86659fd93ull) : 0;
        if (w[i] != want) {
            *expected = want;
            *found = w[i];
            return (long)i;
        }
    }
    return -1;
}

/* The result of an invariant check (x-verify-memory). */
struct vm_verify {
    uint64_t pages;      /* guest pages checked */
    uint64_t chunks;     /* vram chunks checked */
    uint64_t mismatches; /* pages/chunks (or table entries) that are wrong */
    char message[512];   /* what mismatched first */
};

/* Count one mismatch; the first one's description is kept. */
__attribute__((format(printf, 2, 3)))
static inline void vm_verify_fail(struct vm_verify *v, const char *fmt, ...)
{
    if (v->mismatches++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->message, sizeof(v->message), fmt, ap);
        va_end(ap);
    }
}

#endif
