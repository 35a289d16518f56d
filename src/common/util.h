/* Small helpers shared by every module: saturating arithmetic, sizes, logging. */
#ifndef LM_COMMON_UTIL_H
#define LM_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define LM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define LM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LM_MAX(a, b) ((a) > (b) ? (a) : (b))
#define LM_DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

static inline uint64_t lm_sat_add(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

static inline uint64_t lm_sat_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

static inline uint64_t lm_sat_sub(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

/* A non-negative double as uint64_t, saturated (casting one out of range
 * is undefined). */
static inline uint64_t lm_sat_u64(double v)
{
    return v >= 18446744073709549568.0 ? UINT64_MAX : (uint64_t)v;
}

/* a * 1e9 / b, saturated: bytes and ns to bytes/s, or bytes and bytes/s
 * to ns.  b must not be 0. */
static inline uint64_t lm_per_second(uint64_t a, uint64_t b)
{
    return lm_sat_u64((double)a * 1e9 / (double)b);
}

/* Parse "123", "4K", "512M", "4G", "1T" (binary units); returns 0 or -EINVAL. */
int lm_parse_size(const char *s, uint64_t *out);

/* Drop the first n bytes of an iovec array after a short write. */
void lm_iov_advance(struct iovec **iov, int *cnt, size_t n);
/* Write all of iov to fd (handles short writes and EINTR); 0 or -errno. */
int lm_writev_full(int fd, struct iovec *iov, int iovcnt);
/* Read exactly n bytes; -EPIPE on EOF before n bytes; 0 or -errno. */
int lm_read_full(int fd, void *buf, size_t n);
/* pread/pwrite all of len bytes at off (short transfers and EINTR
 * handled); 0, -errno, -ENODATA when a read meets the end of the file, -EIO
 * when a write makes no progress. */
int lm_pread_full(int fd, void *buf, uint64_t len, uint64_t off);
int lm_pwrite_full(int fd, const void *buf, uint64_t len, uint64_t off);

/* Debug log to stderr when LIVEMIG_DEBUG is set in the environment. */
void lm_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Warning to stderr, always. */
void lm_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
