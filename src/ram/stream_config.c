#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "livemig/buffer.h"
#include "ram/stream_config.h"

int lm_stream_write_config(lm_channel *ch, const lm_stream_config *cfg, lm_ram_block **blocks,
                           size_t nblocks)
{
    lm_wbuf b;
    lm_wbuf_init(&b);
    lm_wbuf_put(&b, cfg->uuid, LM_UUID_LEN);
    lm_wbuf_put_be32(&b, cfg->flags);
    lm_wbuf_put_be32(&b, (uint32_t)nblocks);
    for (size_t i = 0; i < nblocks; i++) {
        lm_wbuf_put_str8(&b, blocks[i]->name);
        lm_wbuf_put_be64(&b, blocks[i]->size);
        lm_wbuf_put_be32(&b, blocks[i]->page_size);
    }
    int ret = b.error;
    if (!ret) {
        lm_channel_put_u8(ch, LM_REC_CONFIG);
        lm_channel_put_be32(ch, (uint32_t)b.len);
        ret = lm_channel_put(ch, b.data, b.len);
    }
    lm_wbuf_free(&b);
    return ret;
}

int lm_stream_read_config(lm_channel *ch, lm_stream_config *cfg, lm_ram_block **blocks,
                          size_t nblocks, lm_ram_block **map, lm_error *err)
{
    uint32_t len;
    if (lm_channel_get_be32(ch, &len) < 0) {
        return lm_channel_error(ch, err);
    }
    if (len > LM_CONFIG_MAX_LEN) {
        return lm_error_set(err, -EBADMSG, "configuration record too long (%u bytes)", len);
    }
    uint8_t *body = malloc(len ? len : 1);
    if (!body) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    int ret = lm_channel_get(ch, body, len);
    if (ret < 0) {
        free(body);
        return lm_channel_error(ch, err);
    }
    lm_rbuf r;
    uint32_t n;
    lm_rbuf_init(&r, body, len);
    if (lm_rbuf_get(&r, cfg->uuid, LM_UUID_LEN) < 0 || lm_rbuf_get_be32(&r, &cfg->flags) < 0 ||
        lm_rbuf_get_be32(&r, &n) < 0) {
        ret = lm_error_set(err, -EBADMSG, "truncated configuration record");
        goto out;
    }
    if (n != nblocks) {
        ret = lm_error_set(err, -EINVAL,
                           "RAM layout mismatch: the source has %u RAM blocks, this side has %zu", n,
                           nblocks);
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        char name[256];
        uint64_t size;
        uint32_t psize;
        if (lm_rbuf_get_str8(&r, name, sizeof(name)) < 0 || lm_rbuf_get_be64(&r, &size) < 0 ||
            lm_rbuf_get_be32(&r, &psize) < 0) {
            ret = lm_error_set(err, -EBADMSG, "truncated configuration record");
            goto out;
        }
        lm_ram_block *found = NULL;
        for (size_t j = 0; j < nblocks; j++) {
            if (!strcmp(blocks[j]->name, name)) {
                found = blocks[j];
            }
        }
        if (!found) {
            ret = lm_error_set(err, -ENOENT, "unknown RAM block '%s' in the stream", name);
            goto out;
        }
        if (found->size != size) {
            ret = lm_error_set(err, -EINVAL,
                               "RAM block '%s' size mismatch: stream has %" PRIu64
                               " bytes, this side has %" PRIu64,
                               name, size, found->size);
            goto out;
        }
        if (found->page_size != psize) {
            ret = lm_error_set(err, -EINVAL,
                               "RAM block '%s' page size mismatch: stream has %u, this side has %u",
                               name, psize, found->page_size);
            goto out;
        }
        for (uint32_t k = 0; k < i; k++) {
            if (map[k] == found) {
                ret = lm_error_set(err, -EBADMSG, "RAM block '%s' listed twice", name);
                goto out;
            }
        }
        map[i] = found;
    }
    if (lm_rbuf_remaining(&r)) {
        ret = lm_error_set(err, -EBADMSG, "%zu trailing bytes in the configuration record",
                           lm_rbuf_remaining(&r));
    }
out:
    free(body);
    return ret;
}
