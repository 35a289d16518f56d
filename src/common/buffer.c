/* Growable write buffer and bounds-checked reader: see livemig/buffer.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "livemig/buffer.h"

void lm_wbuf_init(lm_wbuf *b)
{
    memset(b, 0, sizeof(*b));
}

void lm_wbuf_free(lm_wbuf *b)
{
    free(b->data);
    lm_wbuf_init(b);
}

void lm_wbuf_reset(lm_wbuf *b)
{
    b->len = 0;
    b->error = 0;
}

uint8_t *lm_wbuf_reserve(lm_wbuf *b, size_t n)
{
    if (b->error) {
        return NULL;
    }
    if (n > SIZE_MAX / 2 - b->len) {
        b->error = -ENOMEM;
        return NULL;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) {
            cap *= 2;
        }
        uint8_t *p = realloc(b->data, cap);
        if (!p) {
            b->error = -ENOMEM;
            return NULL;
        }
        b->data = p;
        b->cap = cap;
    }
    uint8_t *p = b->data + b->len;
    b->len += n;
    return p;
}

void lm_wbuf_put(lm_wbuf *b, const void *p, size_t n)
{
    uint8_t *d = lm_wbuf_reserve(b, n);
    if (d && n) {
        memcpy(d, p, n);
    }
}

void lm_wbuf_put_u8(lm_wbuf *b, uint8_t v)
{
    lm_wbuf_put(b, &v, 1);
}

void lm_wbuf_put_be16(lm_wbuf *b, uint16_t v)
{
    uint8_t *d = lm_wbuf_reserve(b, 2);
    if (d) {
        lm_store_be16(d, v);
    }
}

void lm_wbuf_put_be32(lm_wbuf *b, uint32_t v)
{
    uint8_t *d = lm_wbuf_reserve(b, 4);
    if (d) {
        lm_store_be32(d, v);
    }
}

void lm_wbuf_put_be64(lm_wbuf *b, uint64_t v)
{
    uint8_t *d = lm_wbuf_reserve(b, 8);
    if (d) {
        lm_store_be64(d, v);
    }
}

void lm_wbuf_put_str8(lm_wbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (n > 255) {
        if (!b->error) {
            b->error = -EINVAL;
        }
        return;
    }
    lm_wbuf_put_u8(b, (uint8_t)n);
    lm_wbuf_put(b, s, n);
}

int lm_rbuf_get(lm_rbuf *r, void *p, size_t n)
{
    if (lm_rbuf_remaining(r) < n) {
        return -EBADMSG;
    }
    if (n) {
        memcpy(p, r->data + r->pos, n);
    }
    r->pos += n;
    return 0;
}

int lm_rbuf_get_u8(lm_rbuf *r, uint8_t *v)
{
    return lm_rbuf_get(r, v, 1);
}

int lm_rbuf_get_be16(lm_rbuf *r, uint16_t *v)
{
    uint8_t b[2];
    int ret = lm_rbuf_get(r, b, 2);
    if (ret == 0) {
        *v = lm_load_be16(b);
    }
    return ret;
}

int lm_rbuf_get_be32(lm_rbuf *r, uint32_t *v)
{
    uint8_t b[4];
    int ret = lm_rbuf_get(r, b, 4);
    if (ret == 0) {
        *v = lm_load_be32(b);
    }
    return ret;
}

int lm_rbuf_get_be64(lm_rbuf *r, uint64_t *v)
{
    uint8_t b[8];
    int ret = lm_rbuf_get(r, b, 8);
    if (ret == 0) {
        *v = lm_load_be64(b);
    }
    return ret;
}

int lm_rbuf_get_str8(lm_rbuf *r, char *out, size_t outsz)
{
    uint8_t n;
    size_t save = r->pos;
    if (lm_rbuf_get_u8(r, &n) < 0 || (size_t)n + 1 > outsz || lm_rbuf_get(r, out, n) < 0) {
        r->pos = save;
        return -EBADMSG;
    }
    out[n] = '\0';
    return 0;
}
