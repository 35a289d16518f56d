/* /init of the Linux test guest (scripts/build-linux-guest.sh): a memory
 * workload that checks itself, so that a migrated guest proves its RAM
 * arrived intact while it kept running.
 *
 * It fills a buffer of lmwork.mb MiB (kernel command line; default 64) in
 * chunks of lmwork.chunk_kb KiB, keeping a checksum of what it wrote into
 * each chunk.  Then, forever (or lmwork.secs seconds), it rewrites one
 * chunk with new contents (next generation), updates its checksum, and
 * re-verifies another chunk against its checksum, pacing the rewrites to
 * lmwork.rate_mb MiB/s so a migration can outrun the dirty rate.  Once a
 * second it prints
 *     lmwork: t=<seconds> iter=<rewrites> chunks=<verifications> ok
 * ("FAIL mismatches=<n>" instead of "ok" once a check failed) and every
 * mismatch as
 *     lmwork: MISMATCH chunk=<i> gen=<g> want=<hex> got=<hex>
 * With lmwork.secs=N it prints "lmwork: done ..." after N seconds and
 * powers the machine off.
 *
 * It reads /dev/hwrng (virtio-rng) once at start and prints
 *     lmwork: hwrng <32 hex digits>      (or "lmwork: hwrng: <error>")
 * and it reads commands typed on the console (checked once a second), so a
 * test can ask a migrated guest to prove itself on the destination:
 *     rng      another hwrng line
 *     check    a full pass over every chunk: "lmwork: check t=.. chunks=<n> ok|FAIL"
 *     done     that full pass, "lmwork: done ...", and power off (as lmwork.secs)
 *
 * Parameters with a dot are not passed to init by the kernel, hence
 * /proc/cmdline.  Static, no dependencies beyond libc. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct params {
    unsigned long mb;        /* buffer size, MiB */
    unsigned long chunk_kb;  /* checksum granularity, KiB */
    unsigned long rate_mb;   /* rewrite rate, MiB/s (0: unpaced) */
    unsigned long secs;      /* run time, 0: forever */
};

static void say(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    /* One write per line keeps lines whole next to kernel messages. */
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(1, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += w;
    }
}

static void halt(void)
{
    sync();
    reboot(RB_POWER_OFF);
    for (;;)
        pause();   /* init must not exit */
}

static double now(void)
{
    struct timespec ts;
    /* The system call, not the vDSO: with two harts, init died (on QEMU as
     * on livemig-vm, 1 boot in ~10) with a load fault at address 4 inside
     * the 6.1 kernel's vDSO clock_gettime, right after a clock_nanosleep
     * (SIGSEGV, epc in the vDSO text beside its data pages).  The guest's
     * own program should not depend on that path. */
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned long param(const char *cmdline, const char *key, unsigned long dflt)
{
    const char *p = cmdline;
    size_t klen = strlen(key);
    while ((p = strstr(p, key)) != NULL) {
        if ((p == cmdline || p[-1] == ' ') && p[klen] == '=') {
            char *end;
            unsigned long v = strtoul(p + klen + 1, &end, 0);
            if (end != p + klen + 1)
                return v;
        }
        p += klen;
    }
    return dflt;
}

static void read_params(struct params *pp)
{
    char cmdline[4096] = "";
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
        cmdline[n > 0 ? n : 0] = '\0';
        close(fd);
    }
    pp->mb = param(cmdline, "lmwork.mb", 64);
    pp->chunk_kb = param(cmdline, "lmwork.chunk_kb", 64);
    pp->rate_mb = param(cmdline, "lmwork.rate_mb", 8);
    pp->secs = param(cmdline, "lmwork.secs", 0);
    if (pp->mb == 0)
        pp->mb = 1;
    if (pp->chunk_kb == 0 || pp->chunk_kb > pp->mb * 1024)
        pp->chunk_kb = 64;
}

/* Contents of chunk c at generation g: an xorshift stream seeded by both,
 * so every rewrite changes every word. */
static uint64_t fill_chunk(uint64_t *w, size_t words, uint64_t c, uint64_t g)
{
    uint64_t x = (c + 1) * 0x9e3779b97f4a7c15ULL ^ (g + 1) * 0xc2b2ae3d27d4eb4fULL;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w[i] = x;
        h = (h ^ x) * 0x100000001b3ULL;
    }
    return h;
}

static uint64_t sum_chunk(const volatile uint64_t *w, size_t words)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < words; i++)
        h = (h ^ w[i]) * 0x100000001b3ULL;
    return h;
}

static void mounts(void)
{
    mkdir("/proc", 0555);
    mkdir("/dev", 0755);
    mkdir("/sys", 0555);
    if (mount("proc", "/proc", "proc", 0, NULL) != 0)
        say("lmwork: mount /proc: %s\n", strerror(errno));
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != EBUSY)
        say("lmwork: mount /dev: %s\n", strerror(errno));
    if (mount("sysfs", "/sys", "sysfs", 0, NULL) != 0)
        say("lmwork: mount /sys: %s\n", strerror(errno));
}

/* 16 bytes of /dev/hwrng in hex, or why not.  The read blocks until the
 * device answers: a virtio-rng whose queue does not work hangs here, and
 * the test sees no line. */
static void hwrng_line(void)
{
    unsigned char b[16];
    int fd = open("/dev/hwrng", O_RDONLY);
    if (fd < 0) {
        say("lmwork: hwrng: %s\n", strerror(errno));
        return;
    }
    size_t got = 0;
    while (got < sizeof(b)) {
        ssize_t n = read(fd, b + got, sizeof(b) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            say("lmwork: hwrng: read: %s\n", n < 0 ? strerror(errno) : "end of file");
            close(fd);
            return;
        }
        got += (size_t)n;
    }
    close(fd);
    char hex[2 * sizeof(b) + 1];
    for (size_t i = 0; i < sizeof(b); i++)
        snprintf(hex + 2 * i, 3, "%02x", b[i]);
    say("lmwork: hwrng %s\n", hex);
}

/* Verifies every chunk; returns the number of mismatches (each printed). */
static uint64_t full_pass(const uint64_t *buf, size_t words, size_t nchunks, const uint64_t *sums)
{
    uint64_t bad = 0;
    for (size_t c = 0; c < nchunks; c++) {
        if (sum_chunk(buf + c * words, words) != sums[c]) {
            bad++;
            say("lmwork: MISMATCH chunk=%zu (full pass)\n", c);
        }
    }
    return bad;
}

enum command { CMD_NONE, CMD_RNG, CMD_CHECK, CMD_DONE };

/* A command typed on the console, if a whole line has arrived (the tty is
 * canonical: a read returns one line).  Never blocks. */
static enum command console_command(void)
{
    struct pollfd pfd = { .fd = 0, .events = POLLIN };
    if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLIN))
        return CMD_NONE;
    char line[64];
    ssize_t n = read(0, line, sizeof(line) - 1);
    if (n <= 0)
        return CMD_NONE;
    line[n] = '\0';
    if (strncmp(line, "rng", 3) == 0)
        return CMD_RNG;
    if (strncmp(line, "check", 5) == 0)
        return CMD_CHECK;
    if (strncmp(line, "done", 4) == 0)
        return CMD_DONE;
    return CMD_NONE;
}

int main(void)
{
    struct params pp;
    mounts();
    read_params(&pp);

    size_t chunk_bytes = pp.chunk_kb * 1024;
    size_t words = chunk_bytes / sizeof(uint64_t);
    size_t nchunks = pp.mb * 1024 / pp.chunk_kb;
    uint64_t *buf = mmap(NULL, nchunks * chunk_bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *sums = calloc(nchunks, sizeof(*sums));
    uint64_t *gens = calloc(nchunks, sizeof(*gens));
    if (buf == MAP_FAILED || !sums || !gens) {
        say("lmwork: cannot allocate %lu MiB: %s\n", pp.mb, strerror(errno));
        halt();
    }
    say("lmwork: start mb=%lu chunk_kb=%lu chunks=%zu rate_mb=%lu secs=%lu\n", pp.mb,
        pp.chunk_kb, nchunks, pp.rate_mb, pp.secs);
    double t0 = now();
    for (size_t c = 0; c < nchunks; c++)
        sums[c] = fill_chunk(buf + c * words, words, c, 0);
    say("lmwork: filled %lu MiB in %.1fs\n", pp.mb, now() - t0);
    hwrng_line();

    uint64_t iter = 0, verified = 0, mismatches = 0;
    size_t next_write = 0, next_check = nchunks / 2;
    t0 = now();
    double next_report = t0 + 1.0;
    /* Pacing: a budget of bytes per 10 ms slice. */
    double slice_start = t0;
    uint64_t slice_budget = pp.rate_mb ? pp.rate_mb * 1024 * 1024 / 100 : 0, slice_used = 0;
    for (;;) {
        uint64_t *w = buf + next_write * words;
        gens[next_write]++;
        sums[next_write] = fill_chunk(w, words, next_write, gens[next_write]);
        next_write = (next_write + 1) % nchunks;
        iter++;

        uint64_t got = sum_chunk(buf + next_check * words, words);
        if (got != sums[next_check]) {
            mismatches++;
            say("lmwork: MISMATCH chunk=%zu gen=%" PRIu64 " want=%016" PRIx64 " got=%016" PRIx64
                "\n", next_check, gens[next_check], sums[next_check], got);
        } else {
            verified++;
        }
        next_check = (next_check + 1) % nchunks;

        double t = now();
        if (slice_budget) {
            slice_used += chunk_bytes;
            if (slice_used >= slice_budget) {
                double wait = slice_start + 0.01 - t;
                if (wait > 0) {
                    struct timespec ts = { 0, (long)(wait * 1e9) };
                    nanosleep(&ts, NULL);
                    t = now();
                }
                slice_start = t;
                slice_used = 0;
            }
        }
        if (t >= next_report) {
            unsigned long secs = (unsigned long)(t - t0 + 0.5);
            if (mismatches)
                say("lmwork: t=%lu iter=%" PRIu64 " chunks=%" PRIu64 " FAIL mismatches=%" PRIu64
                    "\n", secs, iter, verified, mismatches);
            else
                say("lmwork: t=%lu iter=%" PRIu64 " chunks=%" PRIu64 " ok\n", secs, iter,
                    verified);
            next_report += 1.0;
            if (next_report < t)   /* stalled (e.g. stopped for migration) */
                next_report = t + 1.0;
            enum command cmd = console_command();
            if (cmd == CMD_RNG)
                hwrng_line();
            if (cmd == CMD_CHECK) {
                uint64_t bad = full_pass(buf, words, nchunks, sums);
                mismatches += bad;
                say("lmwork: check t=%lu chunks=%zu %s\n", secs, nchunks, bad ? "FAIL" : "ok");
            }
            if (cmd == CMD_DONE || (pp.secs && t - t0 >= (double)pp.secs)) {
                /* A last full pass over every chunk before saying done. */
                mismatches += full_pass(buf, words, nchunks, sums);
                say("lmwork: done t=%lu iter=%" PRIu64 " chunks=%" PRIu64 " %s\n", secs, iter,
                    verified, mismatches ? "FAIL" : "ok");
                halt();
            }
        }
    }
}
