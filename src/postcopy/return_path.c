#include <errno.h>
#include <string.h>

#include "common/bitmap.h"
#include "common/util.h"
#include "postcopy/return_path.h"

static void put_hdr(lm_channel *ch, uint16_t type, uint16_t len)
{
    lm_channel_put_be16(ch, type);
    lm_channel_put_be16(ch, len);
}

int lm_rp_send_req_pages(lm_channel *ch, uint16_t block, uint64_t first, uint32_t count)
{
    put_hdr(ch, LM_RP_REQ_PAGES, 14);
    lm_channel_put_be16(ch, block);
    lm_channel_put_be64(ch, first);
    lm_channel_put_be32(ch, count);
    return lm_channel_flush(ch);
}

int lm_rp_send_recv_bitmap(lm_channel *ch, uint16_t block, const uint64_t *map, uint64_t npages)
{
    uint64_t nwords = LM_BITMAP_WORDS(npages);
    for (uint64_t w = 0; w < nwords; w += LM_RP_BITMAP_MAX_WORDS) {
        uint64_t n = nwords - w < LM_RP_BITMAP_MAX_WORDS ? nwords - w : LM_RP_BITMAP_MAX_WORDS;
        put_hdr(ch, LM_RP_RECV_BITMAP, (uint16_t)(12 + n * 8));
        lm_channel_put_be16(ch, block);
        lm_channel_put_be64(ch, w);
        lm_channel_put_be16(ch, (uint16_t)n);
        for (uint64_t i = 0; i < n; i++) {
            lm_channel_put_be64(ch, __atomic_load_n(&map[w + i], __ATOMIC_RELAXED));
        }
    }
    return lm_channel_flush(ch);
}

int lm_rp_send_resume_ack(lm_channel *ch)
{
    put_hdr(ch, LM_RP_RESUME_ACK, 0);
    return lm_channel_flush(ch);
}

int lm_rp_send_switchover_ack(lm_channel *ch)
{
    put_hdr(ch, LM_RP_SWITCHOVER_ACK, 0);
    return lm_channel_flush(ch);
}

int lm_rp_send_backlog(lm_channel *ch, uint32_t seq, uint64_t backlog, uint64_t load_bw)
{
    put_hdr(ch, LM_RP_BACKLOG, 20);
    lm_channel_put_be32(ch, seq);
    lm_channel_put_be64(ch, backlog);
    lm_channel_put_be64(ch, load_bw);
    return lm_channel_flush(ch);
}

int lm_rp_send_downtime(lm_channel *ch, const uint8_t *body, size_t len)
{
    if (len > LM_RP_DOWNTIME_MAX) {
        return -EMSGSIZE;
    }
    put_hdr(ch, LM_RP_DOWNTIME, (uint16_t)len);
    lm_channel_put(ch, body, len);
    return lm_channel_flush(ch);
}

int lm_rp_read_msg(lm_channel *ch, lm_rp_msg *m, lm_error *err)
{
    uint16_t len;
    if (lm_channel_get_be16(ch, &m->type) < 0 || lm_channel_get_be16(ch, &len) < 0) {
        return lm_channel_error(ch, err);
    }
    int ret = 0;
    switch (m->type) {
    case LM_RP_SHUT:
    case LM_RP_PONG:
        if (len != 4) {
            return lm_error_set(err, -EBADMSG, "return path: message 0x%x of %u bytes", m->type, len);
        }
        ret = lm_channel_get_be32(ch, &m->status);
        break;
    case LM_RP_REQ_PAGES:
        if (len != 14) {
            return lm_error_set(err, -EBADMSG, "return path: REQ_PAGES of %u bytes", len);
        }
        if ((ret = lm_channel_get_be16(ch, &m->block)) == 0 &&
            (ret = lm_channel_get_be64(ch, &m->first)) == 0) {
            ret = lm_channel_get_be32(ch, &m->count);
        }
        break;
    case LM_RP_RECV_BITMAP: {
        uint16_t n;
        if (len < 12) {
            return lm_error_set(err, -EBADMSG, "return path: RECV_BITMAP of %u bytes", len);
        }
        if ((ret = lm_channel_get_be16(ch, &m->block)) < 0 ||
            (ret = lm_channel_get_be64(ch, &m->first)) < 0 ||
            (ret = lm_channel_get_be16(ch, &n)) < 0) {
            break;
        }
        if (n > LM_RP_BITMAP_MAX_WORDS || len != 12u + 8u * n) {
            return lm_error_set(err, -EBADMSG, "return path: RECV_BITMAP with %u words in %u bytes",
                                n, len);
        }
        m->count = n;
        for (uint16_t i = 0; i < n && ret == 0; i++) {
            ret = lm_channel_get_be64(ch, &m->words[i]);
        }
        break;
    }
    case LM_RP_RESUME_ACK:
    case LM_RP_SWITCHOVER_ACK:
        if (len != 0) {
            return lm_error_set(err, -EBADMSG, "return path: %s of %u bytes",
                                m->type == LM_RP_RESUME_ACK ? "RESUME_ACK" : "SWITCHOVER_ACK", len);
        }
        break;
    case LM_RP_BACKLOG:
        /* 12 bytes from a destination that does not say its load rate. */
        if (len != 12 && len != 20) {
            return lm_error_set(err, -EBADMSG, "return path: BACKLOG of %u bytes", len);
        }
        m->load_bw = 0;
        if ((ret = lm_channel_get_be32(ch, &m->status)) == 0) {
            ret = lm_channel_get_be64(ch, &m->backlog);
        }
        if (ret == 0 && len == 20) {
            ret = lm_channel_get_be64(ch, &m->load_bw);
        }
        break;
    case LM_RP_DOWNTIME:
        if (len > sizeof(m->downtime)) {
            return lm_error_set(err, -EBADMSG, "return path: DOWNTIME of %u bytes", len);
        }
        if (lm_channel_get(ch, m->downtime, len) < 0) {
            return lm_channel_error(ch, err);
        }
        m->downtime_len = len;
        return 0;
    default:
        return lm_error_set(err, -EBADMSG, "return path: unknown message type 0x%x", m->type);
    }
    return ret < 0 ? lm_channel_error(ch, err) : 0;
}
