#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "livemig/buffer.h"
#include "stream/stream.h"

int lm_stream_write_header(lm_channel *ch)
{
    return lm_stream_write_header_version(ch, LM_STREAM_VERSION);
}

int lm_stream_write_header_version(lm_channel *ch, uint32_t version)
{
    lm_channel_put_be32(ch, LM_STREAM_MAGIC);
    return lm_channel_put_be32(ch, version);
}

int lm_stream_read_header(lm_channel *ch, lm_error *err)
{
    uint32_t version;
    return lm_stream_read_header_version(ch, &version, err);
}

int lm_stream_read_header_version(lm_channel *ch, uint32_t *out, lm_error *err)
{
    uint32_t magic, version;
    if (lm_channel_get_be32(ch, &magic) < 0 || lm_channel_get_be32(ch, &version) < 0) {
        return lm_channel_error(ch, err);
    }
    if (magic != LM_STREAM_MAGIC) {
        return lm_error_set(err, -EBADMSG, "not a livemig stream (bad magic 0x%08x)", magic);
    }
    if (version != LM_STREAM_VERSION && version != LM_STREAM_VERSION_CHECKSUM) {
        return lm_error_set(err, -EPROTONOSUPPORT,
                            "unsupported stream version %u (this build reads versions %u and %u)",
                            version, LM_STREAM_VERSION, LM_STREAM_VERSION_CHECKSUM);
    }
    *out = version;
    return 0;
}

int lm_stream_write_command(lm_channel *ch, uint16_t cmd, const void *body, uint16_t len)
{
    lm_channel_put_u8(ch, LM_REC_COMMAND);
    lm_channel_put_be16(ch, cmd);
    lm_channel_put_be16(ch, len);
    return len ? lm_channel_put(ch, body, len) : lm_channel_error(ch, NULL);
}

int lm_stream_write_section_full(lm_channel *ch, uint8_t type, uint32_t id, const char *idstr,
                                 uint32_t instance, uint32_t version)
{
    size_t n = strlen(idstr);
    lm_channel_put_u8(ch, type);
    lm_channel_put_be32(ch, id);
    lm_channel_put_u8(ch, (uint8_t)n);
    lm_channel_put(ch, idstr, n);
    lm_channel_put_be32(ch, instance);
    return lm_channel_put_be32(ch, version);
}

int lm_stream_write_section_short(lm_channel *ch, uint8_t type, uint32_t id)
{
    lm_channel_put_u8(ch, type);
    return lm_channel_put_be32(ch, id);
}

int lm_stream_write_footer(lm_channel *ch, uint32_t id)
{
    return lm_channel_put_be32(ch, id);
}

int lm_stream_read_footer(lm_channel *ch, uint32_t id, lm_error *err)
{
    uint32_t got;
    if (lm_channel_get_be32(ch, &got) < 0) {
        return lm_channel_error(ch, err);
    }
    if (got != id) {
        return lm_error_set(err, -EBADMSG, "section footer mismatch: expected section %u, found %u",
                            id, got);
    }
    return 0;
}

int lm_stream_write_payload(lm_channel *ch, const void *data, size_t len)
{
    lm_channel_put_be32(ch, (uint32_t)len);
    return lm_channel_put(ch, data, len);
}

int lm_rp_write_shut(lm_channel *ch, uint32_t status)
{
    lm_channel_put_be16(ch, LM_RP_SHUT);
    lm_channel_put_be16(ch, 4);
    lm_channel_put_be32(ch, status);
    return lm_channel_flush(ch);
}

int lm_rp_write_pong(lm_channel *ch, uint32_t value)
{
    lm_channel_put_be16(ch, LM_RP_PONG);
    lm_channel_put_be16(ch, 4);
    lm_channel_put_be32(ch, value);
    return lm_channel_flush(ch);
}

int lm_rp_read(lm_channel *ch, uint16_t *type, uint32_t *status, lm_error *err)
{
    uint16_t len;
    if (lm_channel_get_be16(ch, type) < 0 || lm_channel_get_be16(ch, &len) < 0) {
        return lm_channel_error(ch, err);
    }
    *status = 0;
    if (*type == LM_RP_SHUT || *type == LM_RP_PONG) {
        if (len != 4 || lm_channel_get_be32(ch, status) < 0) {
            return len != 4 ? lm_error_set(err, -EBADMSG, "malformed return-path message 0x%x", *type)
                            : lm_channel_error(ch, err);
        }
        return 0;
    }
    return lm_channel_skip(ch, len) < 0 ? lm_channel_error(ch, err) : 0;
}
