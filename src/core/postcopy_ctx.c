#include <string.h>

#include "common/util.h"
#include "core/postcopy_ctx.h"

_Static_assert(LM_RP_DOWNTIME_MAX == LM_BD_WIRE_MAX,
               "the return path's DOWNTIME carries a whole breakdown");

static bool pc_cancelled(void *opaque)
{
    lm_engine *e = opaque;
    pthread_mutex_lock(&e->lock);
    bool c = e->cancel_requested;
    pthread_mutex_unlock(&e->lock);
    return c;
}

static void pc_wake_main(void *opaque, int code, const char *why)
{
    lm_engine_wake_main(opaque, code, why);
}

static void pc_preempt_channel(void *opaque, lm_channel *ch)
{
    lm_engine *e = opaque;
    pthread_mutex_lock(&e->lock);
    e->ch_preempt = ch;
    pthread_mutex_unlock(&e->lock);
}

static lm_pc_hooks hooks(lm_engine *e)
{
    return (lm_pc_hooks){
        .cancelled = pc_cancelled,
        .wake_main = pc_wake_main,
        .preempt_channel = pc_preempt_channel,
        .opaque = e,
    };
}

void lm_engine_pc_src_ctx(lm_engine *e, lm_pc_src_ctx *out)
{
    *out = (lm_pc_src_ctx){
        .blocks = e->blocks,
        .nblocks = e->nblocks,
        .saver = &e->saver,
        .ram_section = LM_RAM_SECTION_ID,
        .rl = &e->pc_rl,
        .preempt = lm_cap(e, LM_CAP_POSTCOPY_PREEMPT),
        .requests = &e->pc_requests,
        .bytes = &e->pc_bytes,
        .hooks = hooks(e),
    };
}

void lm_engine_pc_dst_ctx(lm_engine *e, lm_pc_dst_ctx *out)
{
    *out = (lm_pc_dst_ctx){
        .blocktime = lm_cap(e, LM_CAP_POSTCOPY_BLOCKTIME),
        .requests = &e->pc_requests,
        .bytes = &e->pc_bytes,
        .hooks = hooks(e),
    };
    pthread_mutex_lock(&e->lock);
    out->nvcpus = e->nvcpus;
    memcpy(out->vcpu_tids, e->vcpu_tids, sizeof(out->vcpu_tids));
    pthread_mutex_unlock(&e->lock);
}

int lm_engine_send_downtime(lm_channel *ch, const lm_bd *bd)
{
    uint8_t buf[LM_BD_WIRE_MAX];
    size_t len = lm_bd_encode(bd, buf, sizeof(buf));
    return lm_rp_send_downtime(ch, buf, len);
}

void lm_engine_read_downtime(const lm_rp_msg *m, lm_bd *out)
{
    lm_error bad = LM_ERROR_INIT;
    if (lm_bd_decode(m->downtime, m->downtime_len, out, &bad) < 0) {
        lm_warn("%s", bad.msg);
        out->n = 0;
    }
}
