#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/util.h"
#include "livemig/log.h"

void lm_sleep_ns(uint64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

int lm_parse_size(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !isdigit((unsigned char)*s)) {
        return -EINVAL;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) {
        return -EINVAL;
    }
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'B': break; /* plain bytes: "512B" */
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    default: return -EINVAL;
    }
    if (*end == 'i' || *end == 'I') {
        end++;
    }
    if (*end == 'B' || *end == 'b') {
        end++;
    }
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift))) {
        return -EINVAL;
    }
    *out = (uint64_t)v << shift;
    return 0;
}

int lm_writev_full(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        ssize_t n = writev(fd, iov, iovcnt > 1024 ? 1024 : iovcnt);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        lm_iov_advance(&iov, &iovcnt, (size_t)n);
    }
    return 0;
}

void lm_iov_advance(struct iovec **iov, int *cnt, size_t n)
{
    while (*cnt > 0 && n >= (*iov)->iov_len) {
        n -= (*iov)->iov_len;
        (*iov)++;
        (*cnt)--;
    }
    if (*cnt > 0) {
        (*iov)->iov_base = (char *)(*iov)->iov_base + n;
        (*iov)->iov_len -= n;
    }
}

static int pio_full(int fd, bool writing, uint8_t *buf, uint64_t len, uint64_t off)
{
    while (len) {
        size_t chunk = (size_t)(len < (1ull << 30) ? len : 1ull << 30);
        ssize_t n = writing ? pwrite(fd, buf, chunk, (off_t)off) : pread(fd, buf, chunk, (off_t)off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -errno;
        }
        if (n == 0) {
            return writing ? -EIO : -ENODATA;
        }
        buf += n;
        len -= (uint64_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int lm_pread_full(int fd, void *buf, uint64_t len, uint64_t off)
{
    return pio_full(fd, false, buf, len, off);
}

int lm_pwrite_full(int fd, const void *buf, uint64_t len, uint64_t off)
{
    /* pio_full only reads through buf when writing. */
    return pio_full(fd, true, (uint8_t *)buf, len, off);
}

int lm_read_full(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            return -EPIPE;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The embedder's log handler (lm_set_log_handler), NULL for stderr. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static lm_log_fn log_fn;
static void *log_opaque;

void lm_set_log_handler(lm_log_fn fn, void *opaque)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_opaque = opaque;
    pthread_mutex_unlock(&log_lock);
}

static void vlog(lm_log_level level, const char *fmt, va_list ap)
{
    char line[1024];
    vsnprintf(line, sizeof(line), fmt, ap);
    pthread_mutex_lock(&log_lock);
    lm_log_fn fn = log_fn;
    void *opaque = log_opaque;
    pthread_mutex_unlock(&log_lock);
    if (fn) {
        fn(opaque, level, line);
    } else {
        fprintf(stderr, "livemig: %s%s\n", level == LM_LOG_DEBUG ? "debug: " : "warning: ", line);
    }
}

void lm_debug(const char *fmt, ...)
{
    static int enabled = -1; /* read once; benign race: every thread computes the same value */
    if (enabled < 0) {
        enabled = getenv("LIVEMIG_DEBUG") != NULL;
    }
    if (!enabled) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vlog(LM_LOG_DEBUG, fmt, ap);
    va_end(ap);
}

void lm_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LM_LOG_WARNING, fmt, ap);
    va_end(ap);
}
