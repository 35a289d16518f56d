/*
 * Byte buffers for device state.
 *
 * lm_wbuf is a growable output buffer a device writes its state into;
 * lm_rbuf is a bounded reader over bytes received from the wire.  All
 * multi-byte integers are big-endian on the wire.  Every lm_rbuf getter
 * checks the remaining length first and fails with -EBADMSG instead of
 * reading past the end, so a device's load function cannot overrun a
 * truncated or hostile record.
 */
#ifndef LIVEMIG_BUFFER_H
#define LIVEMIG_BUFFER_H

#include "livemig/api.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_wbuf {
    uint8_t *data;
    size_t len;
    size_t cap;
    int error; /* -ENOMEM once an allocation failed; sticky */
} lm_wbuf;

LM_API void lm_wbuf_init(lm_wbuf *b);
LM_API void lm_wbuf_free(lm_wbuf *b);
LM_API void lm_wbuf_reset(lm_wbuf *b);
/* Make room for n more bytes; returns a pointer to them or NULL (error set). */
LM_API uint8_t *lm_wbuf_reserve(lm_wbuf *b, size_t n);
LM_API void lm_wbuf_put(lm_wbuf *b, const void *p, size_t n);
LM_API void lm_wbuf_put_u8(lm_wbuf *b, uint8_t v);
LM_API void lm_wbuf_put_be16(lm_wbuf *b, uint16_t v);
LM_API void lm_wbuf_put_be32(lm_wbuf *b, uint32_t v);
LM_API void lm_wbuf_put_be64(lm_wbuf *b, uint64_t v);
/* u8 length + bytes; fails (error -EINVAL) when s is longer than 255. */
LM_API void lm_wbuf_put_str8(lm_wbuf *b, const char *s);

typedef struct lm_rbuf {
    const uint8_t *data;
    size_t len;
    size_t pos;
} lm_rbuf;

static inline void lm_rbuf_init(lm_rbuf *r, const void *data, size_t len)
{
    r->data = (const uint8_t *)data;
    r->len = len;
    r->pos = 0;
}

static inline size_t lm_rbuf_remaining(const lm_rbuf *r)
{
    return r->len - r->pos;
}

/* Each returns 0 or -EBADMSG (nothing consumed) when too few bytes remain. */
LM_API int lm_rbuf_get(lm_rbuf *r, void *p, size_t n);
LM_API int lm_rbuf_get_u8(lm_rbuf *r, uint8_t *v);
LM_API int lm_rbuf_get_be16(lm_rbuf *r, uint16_t *v);
LM_API int lm_rbuf_get_be32(lm_rbuf *r, uint32_t *v);
LM_API int lm_rbuf_get_be64(lm_rbuf *r, uint64_t *v);
/* Reads a u8-length string into out (size >= 256), NUL-terminated. */
LM_API int lm_rbuf_get_str8(lm_rbuf *r, char *out, size_t outsz);

/* Plain big-endian helpers for fixed-layout headers. */
static inline void lm_store_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void lm_store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void lm_store_be64(uint8_t *p, uint64_t v)
{
    lm_store_be32(p, (uint32_t)(v >> 32));
    lm_store_be32(p + 4, (uint32_t)v);
}
static inline uint16_t lm_load_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t lm_load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t lm_load_be64(const uint8_t *p)
{
    return ((uint64_t)lm_load_be32(p) << 32) | lm_load_be32(p + 4);
}

#ifdef __cplusplus
}
#endif

#endif
