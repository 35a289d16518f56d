/*
 * The source's migration thread: setup, the iterate loop, switchover.
 *
 * It never holds the engine lock (nor any lock of the embedder's) while it
 * writes to the channel; the lock only guards the state and statistics
 * that query-migrate reads.  Only switchover stops the guest.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "channel/tls.h"
#include "common/bitmap.h"
#include "common/clock.h"
#include "common/threadtime.h"
#include "common/util.h"
#include "core/dirtylimit.h"
#include "core/engine_internal.h"
#include "livemig/buffer.h"
#include "core/postcopy_ctx.h"
#include "postcopy/postcopy.h"
#include "ram/mapped_ram.h"
#include "ram/multifd.h"
#include "ram/stream_config.h"
#include "stream/stream.h"

/* RAM is sent in slices of this size, so cancel and the devices' share are
 * looked at often... */
#define SLICE_BYTES (32ull << 20)
/* ...and under max-bandwidth, of what the cap lets through in 100 ms (one
 * rate-limit window), but not less than this. */
#define MIN_SLICE_BYTES (256ull << 10)
/* Once everything fits in the downtime limit, keep iterating while passes
 * shrink what remains by at least this fraction (percent)... */
#define SHRINK_PERCENT 10
/* ...but for at most this many passes. */
#define MAX_FITTING_PASSES 10
/* Below this, switching over costs nothing worth another pass. */
#define NEGLIGIBLE_BYTES (64ull << 10)
/* switchover-ack: while the destination has not acked, the source looks
 * again after waiting this long (ms) at most, so that an idle guest does
 * not turn the wait into a busy loop of empty passes. */
#define ACK_POLL_MS 50
/* A pass this small says little about the rate: pooled with the next. */
#define RATE_SAMPLE_BYTES (64ull << 10)
/* A slice that sent less carried no page: no probe of the tail's cost. */
#define TAIL_PROBE_BYTES 4096
/* Empty DRAIN round trips after the drain: the quickest is the return
 * path's own (core/breakdown.h). */
#define EMPTY_ROUND_TRIPS 3

typedef struct src_ctx {
    lm_engine *e;
    lm_channel *ch;
    lm_error err;
    uint64_t prev_pending;
    unsigned fitting_passes;
    uint64_t pass_start_ns;
    uint64_t pass_start_bytes;
    uint64_t dirty_in_period;   /* auto-converge bookkeeping */
    unsigned throttle_triggers;
    bool return_path;
    lm_pc_src *pc;      /* postcopy-ram: set up at setup, used once switched */
    lm_multifd_src *mf; /* multifd: pages go on its channels while it is open */
    bool mf_open;       /* not yet finished (END sent) */
    lm_mapped_ram_src *mr; /* mapped-ram: pages go to fixed offsets in the file */
    bool checksum;      /* page data carries xxh3 checksums (file:, or x-checksum) */
    /* The switchover's accounting (docs/architecture.md, convergence). */
    uint64_t pass_start_held;  /* lm_ratelimit_held_ns() when the pass began */
    uint64_t pool_bytes;       /* passes too small to measure the rate alone, pooled */
    uint64_t pool_busy_ns;
    unsigned syncs;
    uint64_t unlimited_bw;     /* bytes/s of the last pass, not counting the time
                                * max-bandwidth held the writers back nor the time
                                * the thread waited for a CPU */
    uint64_t first_pass_bw;    /* the same of the first pass (zero scan included) */
    uint64_t pass_run_bytes;   /* this pass: bytes its slices moved, */
    uint64_t pass_run_ns;      /* in this much time sending (core/threadtime.h) */
    uint64_t pass_small_ns;    /* this pass's slice that sent something on the least
                                * CPU time (ns), */
    uint64_t pass_small_bytes; /* and what it sent */
    uint64_t pass_runs;        /* runs of dirty pages this pass set out to send */
    uint64_t tail_runs;        /* the stop-copy's: runs dirty at its sync */
    uint32_t ping_seq;
    lm_bd bd;                  /* this switchover's source parts */
    lm_bd bd_dst;              /* the destination's, from the return path */
    bool have_bd_dst;
    char *vmdesc;              /* the device description, built before the stop */
    lm_conv_state conv;        /* x-convergence and x-auto-postcopy (convergence.c) */
    bool sw_acked;             /* switchover-ack: the destination's SWITCHOVER_ACK came */
    uint64_t pass_start_pages; /* pages sent (normal + zero) when the pass began */
} src_ctx;

static bool cancelled(lm_engine *e)
{
    pthread_mutex_lock(&e->lock);
    bool c = e->cancel_requested;
    pthread_mutex_unlock(&e->lock);
    return c;
}

static bool connect_should_abort(void *opaque)
{
    return cancelled(opaque);
}

static void set_channel(lm_engine *e, lm_channel *ch)
{
    pthread_mutex_lock(&e->lock);
    e->ch = ch;
    /* A cancel that raced with the connection still wakes it up. */
    if (ch && e->cancel_requested) {
        lm_channel_shutdown(ch, -ECANCELED, "migration cancelled");
    }
    pthread_mutex_unlock(&e->lock);
}

/* Bytes sent so far on every connection that carries precopy data. */
static uint64_t sent_bytes(src_ctx *c)
{
    return lm_channel_bytes_written(c->ch) + (c->mf ? lm_multifd_src_bytes(c->mf) : 0) +
           (c->mr ? lm_mapped_ram_src_bytes(c->mr) : 0);
}

/* Multifd: everything handed to the senders is written and followed by a
 * SYNC on every channel; the matching MULTIFD_SYNC record goes into the
 * RAM payload being written on the main channel. */
static int put_multifd_sync(src_ctx *c)
{
    uint64_t seq;
    int ret = lm_multifd_src_sync(c->mf, &seq, &c->err);
    if (ret == 0 && seq) {
        lm_channel_put_u8(c->ch, LM_RAM_MULTIFD_SYNC);
        ret = lm_channel_put_be64(c->ch, seq);
    }
    return ret;
}

/* Writes one RAM section record: header, slice of pages, end marker, footer.
 * sync (multifd): end the slice with a sync point, and flush, because the
 * destination's receivers wait for the MULTIFD_SYNC record. */
static int send_ram_slice_sync(src_ctx *c, uint8_t type, uint64_t budget, bool *pass_done, bool sync);

static int send_ram_slice(src_ctx *c, uint8_t type, uint64_t budget, bool *pass_done)
{
    return send_ram_slice_sync(c, type, budget, pass_done, false);
}

/* A sync point of its own (dirty sync, before postcopy). */
static int multifd_sync_point(src_ctx *c)
{
    if (c->mr) {
        /* No page of this pass may land in its slot after the next pass's. */
        return lm_mapped_ram_src_flush(c->mr, &c->err);
    }
    if (!c->mf_open) {
        return 0;
    }
    return send_ram_slice_sync(c, LM_REC_SECTION_PART, 0, NULL, true);
}

/* Mapped-ram's share of a RAM section: the layout in START, pages into
 * the file (not the stream), and the bitmaps once END wrote the last. */
static int mapped_ram_slice(src_ctx *c, uint8_t type, uint64_t budget, bool *done)
{
    int ret = 0;
    if (type == LM_REC_SECTION_START) {
        ret = lm_mapped_ram_src_layout(c->mr, c->ch, &c->err);
    }
    if (ret == 0 && budget) {
        ret = lm_mapped_ram_src_send(c->mr, budget, done, &c->err);
    }
    if (ret == 0 && type == LM_REC_SECTION_END) {
        ret = lm_mapped_ram_src_finish(c->mr, &c->err);
    }
    return ret;
}

static int mapped_ram_setup(src_ctx *c)
{
    lm_engine *e = c->e;
    lm_mapped_ram_src_cfg cfg = { .fd = lm_channel_fd(c->ch), .rl = &e->rl };
    pthread_mutex_lock(&e->lock);
    cfg.threads = e->caps[LM_CAP_MULTIFD] ? (unsigned)e->params.multifd_channels : 0;
    cfg.zero_detect = e->params.zero_page_detection != LM_ZERO_NONE;
    pthread_mutex_unlock(&e->lock);
    cfg.checksum = c->checksum;
    return lm_mapped_ram_src_new(&cfg, &e->saver, &c->mr, &c->err);
}

static int send_ram_slice_sync(src_ctx *c, uint8_t type, uint64_t budget, bool *pass_done, bool sync)
{
    lm_engine *e = c->e;
    if (type == LM_REC_SECTION_START) {
        lm_stream_write_section_full(c->ch, type, LM_RAM_SECTION_ID, LM_RAM_SECTION_IDSTR, 0, 1);
    } else {
        lm_stream_write_section_short(c->ch, type, LM_RAM_SECTION_ID);
    }
    bool done = true;
    int ret = 0;
    if (c->mr) {
        ret = mapped_ram_slice(c, type, budget, &done);
    } else if (budget && c->mf_open) {
        ret = lm_multifd_src_send(c->mf, budget, &done, &c->err);
    } else if (budget) {
        ret = lm_ram_save_send(&e->saver, c->ch, budget, NULL, &done, &c->err);
    }
    if (ret == 0 && sync && c->mf_open) {
        ret = put_multifd_sync(c);
    }
    if (ret == 0) {
        lm_channel_put_u8(c->ch, LM_RAM_EOS);
        ret = lm_stream_write_footer(c->ch, LM_RAM_SECTION_ID);
    }
    if (ret == 0 && sync) {
        ret = lm_channel_flush(c->ch);
    }
    if (pass_done) {
        *pass_done = done;
    }
    return ret < 0 ? (lm_channel_error(c->ch, &c->err), ret) : 0;
}

/* What the main channel says when a multifd channel woke it; finish()
 * replaces it with the channel's own reason. */
#define MULTIFD_WAKE_WHY "a multifd channel failed"

static void multifd_failed(void *opaque)
{
    /* Wake the migration thread wherever it waits on the main channel. */
    lm_engine_wake_main(opaque, -EIO, MULTIFD_WAKE_WHY);
}

/* Announces multifd on the main channel, then opens its connections: before
 * any other (postcopy's preempt connection opens at ADVISE, after). */
static int multifd_setup(src_ctx *c)
{
    lm_engine *e = c->e;
    lm_multifd_src_cfg cfg = {
        .uri = &e->uri,
        .rl = &e->rl,
        .should_abort = connect_should_abort,
        .on_fail = multifd_failed,
        .opaque = e,
        .threads = &e->threads,
    };
    pthread_mutex_lock(&e->lock);
    cfg.channels = (unsigned)e->params.multifd_channels;
    cfg.compression = (uint8_t)e->params.multifd_compression;
    cfg.zstd_level = (int)e->params.multifd_zstd_level;
    cfg.zero = e->params.zero_page_detection;
    cfg.zero_copy = e->params.zero_copy_send;
    pthread_mutex_unlock(&e->lock);
    cfg.checksum = c->checksum;
    for (size_t i = 0; i < e->nblocks; i++) {
        if (e->blocks[i]->page_size > LM_MULTIFD_MAX_PAYLOAD / 2) {
            return lm_error_set(&c->err, -EINVAL, "multifd: RAM block '%s' has pages too large",
                                e->blocks[i]->name);
        }
    }
    lm_multifd_setup su = { .channels = (uint16_t)cfg.channels, .compression = cfg.compression,
                            .flags = cfg.checksum ? LM_MULTIFD_SETUP_CHECKSUM : 0 };
    if (getrandom(su.id, sizeof(su.id), 0) != (ssize_t)sizeof(su.id)) {
        /* Not secret, only distinct per migration. */
        uint64_t t = lm_now_ns();
        memcpy(su.id, &t, sizeof(t));
        memcpy(su.id + 8, e->uuid, 8);
    }
    uint8_t body[LM_MULTIFD_SETUP_LEN];
    lm_multifd_setup_encode(&su, body);
    lm_stream_write_command(c->ch, LM_CMD_MULTIFD_SETUP, body, sizeof(body));
    int ret = lm_channel_flush(c->ch);
    if (ret < 0) {
        return lm_channel_error(c->ch, &c->err);
    }
    ret = lm_multifd_src_start(&cfg, &e->saver, su.id, &c->mf, &c->err);
    pthread_mutex_lock(&e->lock);
    e->mf_src = c->mf;
    if (c->mf && e->cancel_requested) {
        lm_multifd_src_shutdown(c->mf, -ECANCELED, "migration cancelled");
    }
    pthread_mutex_unlock(&e->lock);
    c->mf_open = ret == 0;
    return ret;
}

/* Multifd ends: a last sync point, END on every channel; from here pages
 * go on the main channel (postcopy) or nowhere (EOF follows). */
static int multifd_close(src_ctx *c)
{
    if (!c->mf_open) {
        return 0;
    }
    int ret = multifd_sync_point(c);
    if (ret == 0) {
        ret = lm_multifd_src_finish(c->mf, &c->err);
    }
    c->mf_open = false;
    return ret;
}

static int setup(src_ctx *c)
{
    lm_engine *e = c->e;
    int fd, pid;
    int ret = lm_transport_connect(&e->uri, &fd, &pid, connect_should_abort, e, &c->err);
    if (ret < 0) {
        return ret;
    }
    c->ch = lm_channel_new(fd, "migration channel", &e->rl);
    if (!c->ch) {
        close(fd);
        return lm_error_set(&c->err, -ENOMEM, "out of memory");
    }
    lm_channel_set_child(c->ch, pid);
    if (e->uri.kind == LM_TRANSPORT_EXEC) {
        lm_channel_set_child_command(c->ch, e->uri.path);
    }
    set_channel(e, c->ch);
    ret = lm_tls_client(c->ch, &e->uri, &c->err);
    if (ret < 0) {
        return ret;
    }
    c->return_path = lm_cap(e, LM_CAP_RETURN_PATH) &&
                     (e->uri.kind == LM_TRANSPORT_UNIX || e->uri.kind == LM_TRANSPORT_TCP);
    if (lm_cap(e, LM_CAP_DIRTY_LIMIT) && !lm_dirtylimit_available(e)) {
        /* QEMU asks for KVM's dirty ring; livemig for the embedder's count. */
        return lm_error_set(&c->err, -ENOTSUP, "dirty-limit needs per-vCPU dirty reports: the "
                                               "embedder registered no lm_vcpu_ops");
    }
    if (lm_cap(e, LM_CAP_SWITCHOVER_ACK) && !c->return_path) {
        return lm_error_set(&c->err, -EINVAL, "switchover-ack needs the return path, which only "
                            "unix: and tcp: migrations have");
    }

    bool mapped_ram = lm_cap(e, LM_CAP_MAPPED_RAM);
    /* A saved file is checked when it is restored, maybe years later: on
     * by default there.  On a socket TLS covers the wire; x-checksum asks. */
    c->checksum = e->uri.kind == LM_TRANSPORT_FILE || lm_cap(e, LM_CAP_X_CHECKSUM);
    lm_stream_config cfg = { .flags = (c->return_path ? LM_CONFIG_RETURN_PATH : 0) |
                                      (mapped_ram ? LM_CONFIG_MAPPED_RAM : 0) |
                                      (c->checksum ? LM_CONFIG_CHECKSUM : 0) |
                                      (lm_cap(e, LM_CAP_VALIDATE_UUID) ? LM_CONFIG_VALIDATE_UUID : 0) };
    pthread_mutex_lock(&e->lock);
    memcpy(cfg.uuid, e->uuid, LM_UUID_LEN);
    enum lm_dirty_tracker_kind tracker = e->params.x_dirty_tracker;
    bool hot_groups = e->params.x_dirty_hot_groups;
    pthread_mutex_unlock(&e->lock);

    lm_stream_write_header_version(c->ch, c->checksum ? LM_STREAM_VERSION_CHECKSUM
                                                      : LM_STREAM_VERSION);
    lm_stream_write_config(c->ch, &cfg, e->blocks, e->nblocks);
    if (lm_cap(e, LM_CAP_MULTIFD) && !mapped_ram) {
        ret = multifd_setup(c);
        if (ret < 0) {
            return ret;
        }
    }
    if (lm_cap(e, LM_CAP_POSTCOPY_RAM)) {
        lm_pc_src_ctx pc;
        lm_engine_pc_src_ctx(e, &pc);
        c->pc = lm_pc_src_new(&pc);
        if (!c->pc) {
            return lm_error_set(&c->err, -ENOMEM, "out of memory");
        }
        ret = lm_pc_src_advise(c->pc, c->ch, &e->uri, &c->err);
        if (ret < 0) {
            return ret;
        }
    }
    ret = lm_ram_save_setup(&e->saver, e->blocks, e->nblocks, tracker, &c->err);
    if (ret < 0) {
        return ret;
    }
    ret = lm_dirty_tracker_set_hot_groups(e->saver.tracker, hot_groups, &c->err);
    if (ret < 0) {
        return ret;
    }
    e->saver.checksum = c->checksum;
    pthread_mutex_lock(&e->lock);
    snprintf(e->stats.dirty_tracker, sizeof(e->stats.dirty_tracker), "%s",
             lm_dirty_tracker_name(e->saver.tracker));
    pthread_mutex_unlock(&e->lock);
    if (mapped_ram) {
        ret = mapped_ram_setup(c);
        if (ret < 0) {
            return ret;
        }
    }
    ret = send_ram_slice(c, LM_REC_SECTION_START, 0, NULL);
    if (ret == 0) {
        ret = lm_devices_save_setup(e, c->ch, &c->err);
    }
    if (ret == 0) {
        ret = lm_channel_flush(c->ch);
    }
    return ret < 0 ? (lm_channel_error(c->ch, &c->err), ret) : 0;
}

/* Throttles the whole guest one step harder (auto-converge). */
static void throttle_step(src_ctx *c)
{
    lm_engine *e = c->e;
    if (!e->cb.vm_throttle) {
        return;
    }
    pthread_mutex_lock(&e->lock);
    int pct = e->stats.throttle_percent;
    pct = pct ? pct + (int)e->params.cpu_throttle_increment : (int)e->params.cpu_throttle_initial;
    if (pct > (int)e->params.max_cpu_throttle) {
        pct = (int)e->params.max_cpu_throttle;
    }
    bool changed = pct != e->stats.throttle_percent;
    e->stats.throttle_percent = pct;
    pthread_mutex_unlock(&e->lock);
    if (changed) {
        e->cb.vm_throttle(e->opaque, pct);
    }
}

/* dirty-limit (QEMU's migration_dirty_limit_guest): every vCPU held near
 * vcpu-dirty-limit, each by its own throttle. */
static void dirty_limit_guest(src_ctx *c)
{
    lm_engine *e = c->e;
    pthread_mutex_lock(&e->lock);
    uint64_t limit = e->params.vcpu_dirty_limit;
    pthread_mutex_unlock(&e->lock);
    if (lm_dirtylimit_migration_engage(e, limit)) {
        lm_debug("dirty-limit: every vCPU limited to %llu MB/s", (unsigned long long)limit);
    }
}

/* Auto-converge and dirty-limit (QEMU's migration_trigger_throttle): when
 * the guest dirtied more than throttle-trigger-threshold % of what we sent
 * in a period, twice, throttle its vCPUs harder, or limit each vCPU. */
static void maybe_throttle(src_ctx *c, uint64_t dirtied, uint64_t sent)
{
    lm_engine *e = c->e;
    bool dirty_limit = lm_cap(e, LM_CAP_DIRTY_LIMIT);
    if ((!lm_cap(e, LM_CAP_AUTO_CONVERGE) && !dirty_limit) || sent == 0) {
        return;
    }
    if (lm_cap(e, LM_CAP_X_AUTO_POSTCOPY)) {
        return; /* its stall detector decides when to fall back on them */
    }
    pthread_mutex_lock(&e->lock);
    uint64_t threshold = e->params.throttle_trigger_threshold;
    pthread_mutex_unlock(&e->lock);
    bool trigger = lm_sat_mul(dirtied, 100) > lm_sat_mul(sent, threshold);
    if (!trigger || ++c->throttle_triggers < 2) {
        return;
    }
    c->throttle_triggers = 0;
    if (dirty_limit) {
        dirty_limit_guest(c);
    } else {
        throttle_step(c);
    }
}

/* x-dirty-hot-groups serves the long passes; the tracker retires them when
 * the remaining stops shrinking, or at once when a throttle works on the
 * guest, whose effect only an exact dirty set shows (dirty.h). */
static void review_hot_groups(src_ctx *c)
{
    lm_engine *e = c->e;
    pthread_mutex_lock(&e->lock);
    bool throttled = e->stats.throttle_percent > 0;
    pthread_mutex_unlock(&e->lock);
    throttled = throttled || lm_dirtylimit_migration_owned(e);
    if (lm_dirty_tracker_review_hot_groups(e->saver.tracker, throttled)) {
        lm_debug("x-dirty-hot-groups: retired (%s): exact dirty tracking from the next sync",
                 throttled ? "the guest is throttled" : "what remains stopped shrinking");
    }
}

/* x-auto-postcopy acted: say so (events) and do it. */
static void auto_postcopy_act(src_ctx *c, lm_conv_action act, uint64_t pass)
{
    lm_engine *e = c->e;
    lm_warn("x-auto-postcopy: precopy stopped converging at pass %llu: %s",
            (unsigned long long)pass, act == LM_CONV_GIVE_UP ? "nothing to fall back to"
                                                             : lm_conv_action_name(act));
    if (act == LM_CONV_POSTCOPY) {
        pthread_mutex_lock(&e->lock);
        e->postcopy_requested = true; /* as migrate-start-postcopy */
        pthread_mutex_unlock(&e->lock);
    } else if (act == LM_CONV_DIRTY_LIMIT) {
        dirty_limit_guest(c);
    } else if (act == LM_CONV_AUTO_CONVERGE) {
        throttle_step(c);
    }
    if (e->cb.on_event) {
        lm_event ev = { .kind = LM_EVENT_AUTO_POSTCOPY, .status = LM_STATUS_ACTIVE, .pass = pass,
                        .detail = lm_conv_action_name(act) };
        e->cb.on_event(e->opaque, &ev);
    }
}

/* What a switchover costs besides moving bytes (core/breakdown.h): what
 * the last pass measured (its dirty sync, the return path's empty round
 * trip) and what the switchovers so far taught.  Called with the engine
 * lock. */
static uint64_t fixed_cost_ns(lm_engine *e, lm_bd_fixed *parts)
{
    lm_bd_probe probe = { .sync_ns = e->stats.sync_ns, .rtt_ns = e->stats.rtt_now_ns,
                          .tail_ns = lm_sat_add(e->stats.tail_probe_ns, e->stats.mf_end_probe_ns) };
    return lm_bd_fixed_estimate(&e->learned, &probe, parts);
}

/* Keeps a new expected-downtime with its terms (shown, per switchover,
 * beside the measured parts); returns it.  fixed: the sum of parts, as
 * fixed_cost_ns returned it.  Called with the engine lock. */
static uint64_t set_expected(lm_stats *st, const lm_bd_fixed *parts, uint64_t fixed, uint64_t bytes_ns)
{
    st->expected_downtime_ns = lm_sat_add(fixed, bytes_ns);
    st->expected_fixed_ns = fixed;
    st->expected_parts = *parts;
    st->expected_bytes_ns = bytes_ns;
    return st->expected_downtime_ns;
}

/* The rate the tail moves at: the source's (bw), unless the destination
 * said it loads slower (they work at once, so the slower one sets the
 * pace).  Called with the engine lock. */
static uint64_t tail_rate(lm_engine *e, uint64_t bw)
{
    uint64_t dst = e->stats.dest_load_bw;
    return dst && dst < bw ? dst : bw;
}

/* Runs of dirty pages over guest RAM: a scattered tail costs the
 * stop-copy once per run (a claim, a write-protect, a send). */
static uint64_t dirty_runs(lm_engine *e)
{
    uint64_t runs = 0;
    for (size_t i = 0; i < e->nblocks; i++) {
        if (e->blocks[i]->dirty) {
            runs += lm_bitmap_count_runs(e->blocks[i]->dirty, e->blocks[i]->npages);
        }
    }
    return runs;
}

/* How long the stop-copy takes to move `bytes` in `runs` runs, beyond the
 * tail's fixed cost.  QEMU's pricing (bytes over the switchover's rate)
 * where the operator gave avail-switchover-bandwidth or nothing was
 * learned yet; else each run at the cost earlier stop-copies taught
 * (core/breakdown.h) plus the bytes at the destination's load rate, which
 * that cost was learned against (the pass rates swing with what the pass
 * met: zero pages, faulting vCPUs, runs of a whole guest; where the
 * destination did not say its rate, the runs' cost holds their bytes).
 * Called with the engine lock; keeps that rate for the lesson. */
static uint64_t ram_tail_ns(lm_engine *e, uint64_t bytes, uint64_t runs, uint64_t rate)
{
    uint64_t run_bw = e->stats.dest_load_bw;
    e->stats.tail_run_bw = run_bw;
    e->stats.tail_by_runs = !e->params.avail_switchover_bandwidth && lm_bd_run_learned(&e->learned);
    if (!e->stats.tail_by_runs) {
        return lm_per_second(bytes, rate);
    }
    uint64_t bytes_ns = run_bw ? lm_per_second(bytes, run_bw) : 0; /* else in the runs' cost */
    return lm_sat_add(lm_sat_mul(runs, lm_bd_run_ns(&e->learned, e->stats.rtt_now_ns)), bytes_ns);
}

/* One DRAIN..BACKLOG round trip: the destination answers once everything
 * sent before the DRAIN is loaded; *backlog is what it says arrived behind
 * it, not loaded yet, *lag how long the answer took. */
static int drain_once(src_ctx *c, uint64_t *backlog, uint64_t *lag, uint64_t *load_bw)
{
    uint8_t body[4];
    lm_store_be32(body, ++c->ping_seq);
    uint64_t t = lm_now_ns();
    int ret = lm_stream_write_command(c->ch, LM_CMD_DRAIN, body, sizeof(body));
    if (ret == 0) {
        ret = lm_channel_flush(c->ch);
    }
    if (ret < 0) {
        return lm_channel_error(c->ch, &c->err);
    }
    lm_rp_msg *m = malloc(sizeof(*m));
    if (!m) {
        return lm_error_set(&c->err, -ENOMEM, "out of memory");
    }
    for (;;) {
        ret = lm_rp_read_msg(c->ch, m, &c->err);
        if (ret < 0) {
            break;
        }
        if (m->type == LM_RP_BACKLOG && m->status == c->ping_seq) {
            break;
        }
        if (m->type == LM_RP_SWITCHOVER_ACK) {
            c->sw_acked = true; /* the destination sends it just before a BACKLOG */
            continue;
        }
        if (m->type == LM_RP_SHUT) {
            ret = lm_error_set(&c->err, -EIO, "the destination failed to load the migration");
            break;
        }
        if (m->type != LM_RP_BACKLOG) {
            ret = lm_error_set(&c->err, -EBADMSG, "unexpected return-path message 0x%x in precopy",
                               m->type);
            break;
        }
    }
    *backlog = m->backlog;
    if (ret == 0 && m->load_bw) {
        *load_bw = m->load_bw;
    }
    free(m);
    *lag = lm_now_ns() - t;
    return ret;
}

/* The destination owns part of the blackout: whatever it received but has
 * not loaded yet must be loaded before the guest can run there.  Before
 * stopping the guest, ask it to answer once everything sent so far is
 * loaded (DRAIN, answered by BACKLOG), and wait: the switchover then
 * starts with nothing queued there.  Then a few more, with nothing queued:
 * the quickest is the return path's own round trip (its latency both ways and
 * the destination's wake-up), which the fixed part counts.  Meanwhile the
 * guest ran on: *more is what it dirtied during the waits (at the last
 * pass's dirty rate) and what the destination says is queued behind the
 * DRAINs: bytes that join the tail. */
static int drain_destination(src_ctx *c, uint64_t dirty_bps, uint64_t *more)
{
    lm_engine *e = c->e;
    uint64_t backlog = 0, lag = 0, rtt = UINT64_MAX, waited, load_bw = 0;
    int ret = drain_once(c, &backlog, &lag, &load_bw);
    waited = lag;
    /* The smallest of a few: one descheduled answer must not count. */
    for (int i = 0; ret == 0 && i < EMPTY_ROUND_TRIPS; i++) {
        uint64_t more_backlog = 0, one = 0;
        ret = drain_once(c, &more_backlog, &one, &load_bw);
        backlog = lm_sat_add(backlog, more_backlog);
        waited = lm_sat_add(waited, one);
        rtt = LM_MIN(rtt, one);
    }
    if (ret < 0) {
        return ret;
    }
    *more = lm_sat_add(lm_sat_u64((double)dirty_bps * (double)waited / 1e9), backlog);
    pthread_mutex_lock(&e->lock);
    lm_stats *st = &e->stats;
    st->dest_lag_ns = lag;
    st->dest_backlog = backlog;
    st->dest_load_bw = load_bw;
    st->drains += 1 + EMPTY_ROUND_TRIPS;
    if (!st->rtt_ns || rtt < st->rtt_ns) {
        st->rtt_ns = rtt;
    }
    st->rtt_now_ns = rtt;
    pthread_mutex_unlock(&e->lock);
    lm_debug("destination drained in %llu us, then an empty round trip in %llu us (%llu bytes "
             "queued behind)", (unsigned long long)(lag / 1000), (unsigned long long)(rtt / 1000),
             (unsigned long long)backlog);
    return 0;
}

/* Pages the saver sent so far, as data or as zero pages. */
static uint64_t pages_sent(lm_engine *e)
{
    const lm_ram_stats *rs = &e->saver.stats;
    return __atomic_load_n(&rs->normal_pages, __ATOMIC_RELAXED) +
           __atomic_load_n(&rs->zero_pages, __ATOMIC_RELAXED);
}

static uint64_t st_start_ns(lm_engine *e)
{
    pthread_mutex_lock(&e->lock);
    uint64_t t = e->stats.start_ns;
    pthread_mutex_unlock(&e->lock);
    return t;
}

/* switchover-ack: let the destination's devices get on for a moment
 * (a cancel ends the wait at once). */
static void wait_for_ack_poll(lm_engine *e)
{
    struct timespec ts = lm_timespec_after(CLOCK_REALTIME, ACK_POLL_MS * 1000000ull);
    pthread_mutex_lock(&e->lock);
    if (!e->cancel_requested) {
        pthread_cond_timedwait(&e->cond, &e->lock, &ts);
    }
    pthread_mutex_unlock(&e->lock);
}

/* Syncs the dirty log, measures the last pass and decides whether to switch
 * over now.  The downtime limit is a ceiling, not a target: while passes
 * keep shrinking what remains, keep iterating. */
static int sync_and_decide(src_ctx *c, bool *switch_now)
{
    lm_engine *e = c->e;
    /* No page of the last pass may land after the same page of the next. */
    uint64_t sp_start = lm_now_ns();
    uint64_t sp_held = lm_ratelimit_held_ns(&e->rl);
    bool mf = c->mf_open;
    int ret = multifd_sync_point(c);
    if (ret < 0) {
        return ret;
    }
    uint64_t now = lm_now_ns();
    /* With multifd the stop-copy's RAM tail ends with the channels' END
     * (lm_multifd_src_finish: a packet on each channel, the senders
     * waited for): a sync point like this one, not held back by the cap.
     * A first migration has no switchover to learn it from, and left out
     * it priced a 300-byte tail at 20-90 us that took 0.5-1.2 ms. */
    uint64_t mf_end_ns = mf ? lm_sat_sub(now - sp_start, lm_ratelimit_held_ns(&e->rl) - sp_held)
                            : 0;
    uint64_t sent_total = sent_bytes(c);
    uint64_t new_bytes = 0;
    ret = lm_ram_save_sync(&e->saver, &new_bytes, &c->err);
    if (ret < 0) {
        return ret;
    }
    /* The probe of the switchover's "sync" part: the dirty sync alone.
     * The sync point above waited for the senders to write a pass of
     * pages; the switchover's comes right after the deciding pass's, with
     * nothing queued and nothing sent since (it writes no packet), and
     * the channels' END is timed in its "ram-tail" (and predicted in the
     * tail's term, above).  Counting the pass's sync point here (twice)
     * put 0.6-5 ms on a 0.2 ms part. */
    uint64_t sync_ns = lm_now_ns() - now;
    uint64_t pending_ram = lm_ram_save_pending(&e->saver);
    uint64_t pending_dev = lm_devices_pending(e, true, NULL);
    uint64_t pending = lm_sat_add(pending_ram, pending_dev);
    uint64_t pending_runs = dirty_runs(e);
    uint64_t elapsed = now - c->pass_start_ns;
    uint64_t sent = sent_total - c->pass_start_bytes;
    /* The rate the stop-copy gets once max-bandwidth is lifted: what the
     * pass's slices moved in their time sending, not counting the time the
     * cap held them, nor the time the thread waited for a CPU (the running
     * vCPUs and the destination share the host's CPUs; the stop-copy runs
     * with the vCPUs stopped), nor the dirty sync.  An upper bound where
     * the link is slower than the cap's bursts, which the socket buffers
     * hide: set avail-switchover-bandwidth there.  Passes after the first
     * are pooled until together they say enough (one of a few pages timed
     * alone gave rates off by 100x either way).  The first sync (setup's)
     * ends no pass; the second ends the first. */
    uint64_t busy = c->pass_run_ns, run_bytes = c->pass_run_bytes;
    uint64_t small_ns = c->pass_small_ns, small_bytes = c->pass_small_bytes;
    c->pass_run_ns = c->pass_run_bytes = c->pass_small_ns = c->pass_small_bytes = 0;
    if (++c->syncs == 2) {
        c->first_pass_bw = busy ? lm_per_second(run_bytes, busy) : 0;
    } else if (c->syncs > 2 && run_bytes > 0) {
        c->pool_bytes = lm_sat_add(c->pool_bytes, run_bytes);
        c->pool_busy_ns = lm_sat_add(c->pool_busy_ns, busy);
        if (c->pool_bytes >= RATE_SAMPLE_BYTES && c->pool_busy_ns > 0) {
            c->unlimited_bw = lm_per_second(c->pool_bytes, c->pool_busy_ns);
            c->pool_bytes = c->pool_busy_ns = 0;
        }
    }
    /* The faster of the first pass (long runs of pages, but it read the
     * zero pages too) and the latest later passes (the tail's pages, but
     * scattered, each claim write-protecting while the vCPUs fault on the
     * same memory: a page cost 0.2-0.7 ms of the sender's CPU there
     * against 0.04 ms in the stop-copy); never the capped wall-clock rate.
     * What the tail takes beyond it is learned (core/breakdown.h). */
    uint64_t unlimited_bw = LM_MAX(c->unlimited_bw, c->first_pass_bw);

    pthread_mutex_lock(&e->lock);
    lm_stats *st = &e->stats;
    st->passes++;
    uint64_t pass = st->passes;
    if (pass > 1 && elapsed > 0) {
        st->bandwidth = (uint64_t)((double)sent * 1e9 / (double)elapsed);
        st->dirty_pages_rate = (uint64_t)((double)(new_bytes / 4096) * 1e9 / (double)elapsed);
        st->pages_per_second = (uint64_t)((double)(sent / 4096) * 1e9 / (double)elapsed);
    }
    st->pending_ram = pending_ram;
    st->pending_devices = pending_dev;
    st->precopy_bytes = sent_total;
    st->sync_ns = sync_ns;
    st->mf_end_probe_ns = mf_end_ns;
    /* The stop-copy runs without max-bandwidth: avail-switchover-bandwidth
     * when set (QEMU), else the rate measured while not held back. */
    uint64_t bw = e->params.avail_switchover_bandwidth ? e->params.avail_switchover_bandwidth
                  : unlimited_bw                      ? unlimited_bw
                                                      : st->bandwidth;
    st->switchover_bw = bw;
    uint64_t rate = tail_rate(e, bw);
    st->tail_bw = rate;
    /* The tail is one more slice: what this pass's cheapest slice took
     * on its CPU beyond its bytes at that rate is the probe of the tail's
     * own cost (core/breakdown.h), until a switchover taught it. */
    if (small_bytes && rate) {
        /* Per run the pass had to send: a slice of a scattered pass holds
         * many runs, a tail of a few runs pays a few of their costs. */
        st->tail_probe_ns = lm_sat_sub(small_ns, lm_per_second(small_bytes, rate)) /
                            LM_MAX(c->pass_runs, 1);
    }
    c->pass_runs = pending_runs;
    uint64_t pass_bw = st->bandwidth;
    int throttle = st->throttle_percent;
    uint64_t limit_ns = lm_sat_mul(e->params.downtime_limit, 1000000);
    lm_bd_fixed parts;
    uint64_t fixed = fixed_cost_ns(e, &parts);
    uint64_t expected = 0;
    if (bw) {
        /* QEMU's expected-downtime (what was dirty at this sync over the
         * bandwidth), plus what a switchover costs besides bytes, plus what
         * the destination last said it had received but not loaded. */
        uint64_t bytes = lm_sat_add(pending, st->dest_backlog);
        expected = set_expected(st, &parts, fixed, ram_tail_ns(e, bytes, pending_runs, rate));
    }
    pthread_mutex_unlock(&e->lock);

    if (pass > 1) {
        maybe_throttle(c, new_bytes, sent);
    }
    lm_conv_input ci = {
        .rec = { .pass = pass, .start_ns = c->pass_start_ns, .duration_ns = elapsed,
                 .dirty_bytes = new_bytes, .sent_bytes = sent, .bandwidth = pass_bw,
                 .remaining = pending, .throttle_percent = throttle,
                 .dirty_limit = lm_dirtylimit_migration_owned(e),
                 .dirty_limit_throttle_us = lm_dirtylimit_throttle_us_per_round(e) },
        .pending = pending, .switchover_bw = bw, .expected_ns = expected, .limit_ns = limit_ns,
        .fits = pending <= NEGLIGIBLE_BYTES || (bw && expected <= limit_ns),
        .postcopy_possible = c->pc != NULL,
    };
    lm_conv_action act = lm_convergence_update(e, &c->conv, &ci);
    /* After the update: whoever the event wakes reads this pass's numbers
     * (x-convergence, stats.last_pass). */
    lm_emit_pass(e, pass);
    if (act != LM_CONV_NONE) {
        auto_postcopy_act(c, act, pass);
    }
    review_hot_groups(c);

    *switch_now = false;
    /* The first pass has not run yet: there is no bandwidth to judge by. */
    if (pass > 1 && bw) {
        bool fits = expected <= limit_ns;
        if (pending <= NEGLIGIBLE_BYTES) {
            /* Another pass cannot make the fixed part smaller. */
            if (!fits) {
                lm_warn("switching over with an expected downtime of %llu us over the limit: "
                        "nearly nothing is dirty, another pass would not help",
                        (unsigned long long)(expected / 1000));
            }
            *switch_now = true;
        } else if (fits) {
            c->fitting_passes++;
            bool shrinking = lm_sat_mul(pending, 100) <
                             lm_sat_mul(c->prev_pending, 100 - SHRINK_PERCENT);
            if (!shrinking || c->fitting_passes >= MAX_FITTING_PASSES) {
                *switch_now = true;
            }
        } else {
            c->fitting_passes = 0;
        }
        if (*switch_now && c->return_path) {
            uint64_t dirty_bps = elapsed ? lm_per_second(new_bytes, elapsed) : 0;
            uint64_t more = 0;
            ret = drain_destination(c, dirty_bps, &more);
            if (ret < 0) {
                return ret;
            }
            /* The prediction again, with the round trip just measured and
             * what joined the tail meanwhile. */
            uint64_t tail = lm_sat_add(pending, more);
            /* What joined it meanwhile counted as a run a page: the
             * guest's writes land scattered. */
            uint64_t tail_runs = lm_sat_add(pending_runs, more / 4096);
            pthread_mutex_lock(&e->lock);
            fixed = fixed_cost_ns(e, &parts);
            rate = tail_rate(e, bw); /* the destination said how fast it loads */
            st->tail_bw = rate;
            expected = set_expected(st, &parts, fixed, ram_tail_ns(e, tail, tail_runs, rate));
            pthread_mutex_unlock(&e->lock);
            if (expected > limit_ns && tail > NEGLIGIBLE_BYTES) {
                *switch_now = false;
            }
            lm_debug("fixed part %llu us: stop %llu sync %llu round trip %llu rest %llu tail %llu "
                     "(%u of 4 learned); tail %llu bytes in %llu runs at %llu B/s (source %llu, "
                     "destination loads %llu), %llu ns a run", (unsigned long long)(fixed / 1000),
                     (unsigned long long)(parts.stop_ns / 1000),
                     (unsigned long long)(parts.sync_ns / 1000),
                     (unsigned long long)(parts.rtt_ns / 1000),
                     (unsigned long long)(parts.rest_ns / 1000),
                     (unsigned long long)(parts.tail_ns / 1000), parts.learned,
                     (unsigned long long)tail, (unsigned long long)tail_runs,
                     (unsigned long long)rate, (unsigned long long)bw,
                     (unsigned long long)st->dest_load_bw,
                     (unsigned long long)lm_bd_run_ns(&e->learned, st->rtt_now_ns));
        }
        lm_debug("pass %llu: pending %llu (ram %llu dev %llu) bw %llu B/s expected %llu us -> %s",
                 (unsigned long long)pass, (unsigned long long)pending,
                 (unsigned long long)pending_ram, (unsigned long long)pending_dev,
                 (unsigned long long)bw, (unsigned long long)(expected / 1000),
                 *switch_now ? "switchover" : "iterate");
    }
    bool ack_wait = false;
    if (*switch_now && lm_cap(e, LM_CAP_SWITCHOVER_ACK) && !c->sw_acked) {
        /* switchover-ack: ready, but a device on the destination is not:
         * iterate on (QEMU's migration_can_switchover). */
        *switch_now = false;
        ack_wait = true;
    }
    pthread_mutex_lock(&e->lock);
    /* Once ready, the source waits for the ack until it comes, even
     * through passes that would not have fitted anyway. */
    st->sw_ack_waiting = (st->sw_ack_waiting || ack_wait) && !c->sw_acked;
    bool ack_waiting = st->sw_ack_waiting;
    st->sw_acked = c->sw_acked;
    pthread_mutex_unlock(&e->lock);

    lm_pass_record rec = {
        .pass = pass,
        .start_us = lm_sat_sub(c->pass_start_ns, st_start_ns(e)) / 1000,
        .duration_us = elapsed / 1000,
        .pages_dirtied = new_bytes / (e->nblocks ? e->blocks[0]->page_size : 4096),
        .pages_sent = pages_sent(e) - c->pass_start_pages,
        .bytes_sent = sent,
        .remaining = pending,
        .bandwidth = elapsed ? lm_per_second(sent, elapsed) : 0,
        .dirty_rate = elapsed ? lm_per_second(new_bytes, elapsed) : 0,
        .cpu_throttle_percentage = throttle,
        .dirty_limit_active = ci.rec.dirty_limit,
        .dirty_limit_throttle_time_per_round = ci.rec.dirty_limit_throttle_us,
        /* The same state query-migrate shows: a pass that would not
         * have fitted still waits for the ack. */
        .switchover_ack_pending = ack_waiting,
    };
    lm_history_add(&e->history, &rec);

    if (ack_wait) {
        wait_for_ack_poll(e);
    }
    c->prev_pending = pending;
    c->pass_start_ns = lm_now_ns();
    c->pass_start_bytes = sent_bytes(c);
    c->pass_start_held = lm_ratelimit_held_ns(&e->rl);
    c->pass_start_pages = pages_sent(e);
    return 0;
}

/* migrate-start-postcopy was asked for (and postcopy-ram is on). */
static bool postcopy_wanted(src_ctx *c)
{
    if (!c->pc) {
        return false;
    }
    pthread_mutex_lock(&c->e->lock);
    bool want = c->e->postcopy_requested;
    pthread_mutex_unlock(&c->e->lock);
    return want;
}

/* A slice takes at most ~100 ms at the bandwidth cap, so that
 * migrate-start-postcopy acts within a small batch of its request even
 * under a low max-bandwidth (a 32 MiB slice at 3 MiB/s took 10 s). */
static uint64_t slice_bytes(src_ctx *c)
{
    pthread_mutex_lock(&c->e->lock);
    uint64_t cap = c->e->params.max_bandwidth;
    pthread_mutex_unlock(&c->e->lock);
    return cap ? LM_MIN(SLICE_BYTES, LM_MAX(cap / 10, MIN_SLICE_BYTES)) : SLICE_BYTES;
}

/* One pass: RAM slices interleaved with every iterative device's share. */
static int send_pass(src_ctx *c)
{
    lm_engine *e = c->e;
    bool ram_done = false, devs_done = false;
    while (!ram_done) {
        if (cancelled(e)) {
            return -ECANCELED;
        }
        if (postcopy_wanted(c)) {
            break; /* switch now: what is left moves in postcopy */
        }
        uint64_t slice = slice_bytes(c);
        uint64_t t0 = lm_now_ns(), bytes0 = sent_bytes(c);
        uint64_t held0 = lm_ratelimit_held_ns(&e->rl), wait0 = lm_thread_runq_wait_ns();
        uint64_t cpu0 = lm_thread_cpu_ns();
        int ret = send_ram_slice(c, LM_REC_SECTION_PART, slice, &ram_done);
        if (ret == 0 && !devs_done) {
            ret = lm_devices_save_iterate(e, c->ch, slice, &devs_done, &c->err);
        }
        if (ret < 0) {
            return ret;
        }
        /* The slice's time sending: its wall time less the time the cap
         * held it and the time this thread waited for a CPU. */
        uint64_t bytes = sent_bytes(c) - bytes0;
        if (bytes) {
            uint64_t off = lm_sat_add(lm_ratelimit_held_ns(&e->rl) - held0,
                                      lm_thread_runq_wait_ns() - wait0);
            c->pass_run_ns = lm_sat_add(c->pass_run_ns, lm_sat_sub(lm_now_ns() - t0, off));
            c->pass_run_bytes += bytes;
            /* Its CPU time: what a slice costs the sender itself (the
             * tail's probe), without the waits for locks the faulting
             * vCPUs hold, which the stop-copy does not meet. */
            uint64_t cpu = lm_thread_cpu_ns() - cpu0;
            if (bytes >= TAIL_PROBE_BYTES && (!c->pass_small_bytes || cpu < c->pass_small_ns)) {
                c->pass_small_ns = cpu;
                c->pass_small_bytes = bytes;
            }
        }
    }
    return lm_channel_flush(c->ch) < 0 ? lm_channel_error(c->ch, &c->err) : 0;
}

/* pause-before-switchover: wait in pre-switchover for migrate-continue. */
static int maybe_pause(src_ctx *c)
{
    lm_engine *e = c->e;
    if (!lm_cap(e, LM_CAP_PAUSE_BEFORE_SWITCHOVER)) {
        return 0;
    }
    if (!lm_set_state(e, LM_STATUS_ACTIVE, LM_STATUS_PRE_SWITCHOVER)) {
        return -ECANCELED;
    }
    pthread_mutex_lock(&e->lock);
    while (!e->continue_requested && !e->cancel_requested) {
        pthread_cond_wait(&e->cond, &e->lock);
    }
    bool go = !e->cancel_requested;
    pthread_mutex_unlock(&e->lock);
    return go ? 0 : -ECANCELED;
}

/* ---- postcopy (docs/postcopy.md) ---- */

/* The connection broke during postcopy: nothing is lost (every page stays
 * here), wait in postcopy-paused for `migrate resume=true`, reconnect and
 * run the recovery handshake.  0 once postcopy-active again. */
static int postcopy_pause_and_resume(src_ctx *c)
{
    lm_engine *e = c->e;
    lm_pc_src_stop(c->pc);
    set_channel(e, NULL);
    if (c->ch) {
        lm_channel_close(c->ch, NULL);
        c->ch = NULL;
    }
    lm_warn("postcopy paused: %s", c->err.msg[0] ? c->err.msg : "connection lost");
    lm_set_state_any(e, LM_STATUS_POSTCOPY_PAUSED);
    for (;;) {
        pthread_mutex_lock(&e->lock);
        while (!e->resume_requested && !e->cancel_requested) {
            pthread_cond_wait(&e->cond, &e->lock);
        }
        bool cancel = e->cancel_requested;
        lm_uri uri = e->resume_uri;
        e->resume_requested = false;
        pthread_mutex_unlock(&e->lock);
        if (cancel) {
            return -ECANCELED;
        }
        lm_error_clear(&c->err);
        lm_set_state(e, LM_STATUS_POSTCOPY_PAUSED, LM_STATUS_POSTCOPY_RECOVER_SETUP);
        int fd, pid;
        int ret = lm_transport_connect(&uri, &fd, &pid, connect_should_abort, e, &c->err);
        if (ret == 0) {
            c->ch = lm_channel_new(fd, "migration channel", NULL);
            if (!c->ch) {
                close(fd);
                ret = lm_error_set(&c->err, -ENOMEM, "out of memory");
            }
        }
        if (ret == 0) {
            set_channel(e, c->ch);
            ret = lm_tls_client(c->ch, &uri, &c->err);
        }
        if (ret == 0) {
            lm_set_state(e, LM_STATUS_POSTCOPY_RECOVER_SETUP, LM_STATUS_POSTCOPY_RECOVER);
            ret = lm_pc_src_recover(c->pc, c->ch, &uri, &c->err);
        }
        if (ret == 0 && lm_set_state(e, LM_STATUS_POSTCOPY_RECOVER, LM_STATUS_POSTCOPY_ACTIVE)) {
            return 0;
        }
        /* Recovery failed: back to paused, it may be retried. */
        lm_warn("postcopy recovery failed: %s", c->err.msg[0] ? c->err.msg : "interrupted");
        lm_pc_src_stop(c->pc);
        set_channel(e, NULL);
        if (c->ch) {
            lm_channel_close(c->ch, NULL);
            c->ch = NULL;
        }
        if (cancelled(e)) {
            return -ECANCELED;
        }
        lm_set_state_any(e, LM_STATUS_POSTCOPY_PAUSED);
    }
}

static int precopy_confirm(src_ctx *c, uint64_t stop_ns, uint64_t before);
static int postcopy_run(src_ctx *c, uint64_t stop_ns, uint64_t before);

/* The one switchover path, precopy and postcopy alike (seed 000): stop the
 * guest, [pre-switchover], device, a last dirty sync, then
 *   precopy:  the remaining RAM, device state, globalstate, [vmdesc], EOF,
 *             and the destination's confirmation on the return path;
 *   postcopy: the list of pages to discard, LISTEN, device state,
 *             globalstate and a PING; in postcopy-device until its PONG
 *             says the destination loaded all of it (a failure until then
 *             restarts our guest), then RUN: the guest runs there at once
 *             and the pages follow, those it faults on first.
 * Postcopy never builds the JSON description: the stream is live. */
static int switchover(src_ctx *c, bool postcopy)
{
    lm_engine *e = c->e;
    bool was_running = e->cb.vm_is_running ? e->cb.vm_is_running(e->opaque) : true;
    pthread_mutex_lock(&e->lock);
    bool vmdesc = e->params.x_vmdesc && !postcopy;
    pthread_mutex_unlock(&e->lock);
    if (vmdesc) {
        c->vmdesc = lm_devices_describe(e); /* layout only: not downtime */
    }
    uint64_t stop_ns = lm_now_ns();
    lm_bd_start(&c->bd, stop_ns);
    lm_history_switchover(&e->history, stop_ns);
    if (e->cb.vm_stop) {
        e->cb.vm_stop(e->opaque);
    }
    lm_bd_mark(&c->bd, "stop");
    /* QEMU's stop-copy: max-bandwidth no longer applies (main channel,
     * multifd and mapped-ram share e->rl; writers asleep on it wake). */
    lm_ratelimit_lift(&e->rl, true);
    pthread_mutex_lock(&e->lock);
    e->guest_stopped_by_us = was_running;
    e->guest_was_running = was_running;
    e->stats.stop_ns = stop_ns;
    pthread_mutex_unlock(&e->lock);

    int ret = maybe_pause(c);
    if (ret < 0) {
        return ret;
    }
    if (lm_cap(e, LM_CAP_PAUSE_BEFORE_SWITCHOVER)) {
        lm_bd_mark(&c->bd, "pause"); /* waiting for migrate-continue */
    }
    if (c->return_path && !postcopy) {
        /* The destination's clock for its share of the blackout starts here. */
        ret = lm_stream_write_command(c->ch, LM_CMD_SWITCHOVER, NULL, 0);
        if (ret == 0) {
            ret = lm_channel_flush(c->ch);
        }
        if (ret < 0) {
            return lm_channel_error(c->ch, &c->err);
        }
    }
    lm_status from = lm_cap(e, LM_CAP_PAUSE_BEFORE_SWITCHOVER) ? LM_STATUS_PRE_SWITCHOVER
                                                                : LM_STATUS_ACTIVE;
    if (!lm_set_state(e, from, LM_STATUS_DEVICE)) {
        return -ECANCELED;
    }
    uint64_t before = sent_bytes(c);
    uint64_t newly;
    /* Multifd carries precopy only.  Before postcopy its channels are
     * flushed and closed (all of it is loaded before LISTEN); in precopy the
     * rest goes on them too, then they end and the destination loads all of
     * it before it starts the guest. */
    ret = postcopy ? multifd_close(c) : multifd_sync_point(c);
    if (ret == 0) {
        ret = lm_ram_save_sync(&e->saver, &newly, &c->err);
    }
    c->tail_runs = dirty_runs(e);
    lm_bd_mark(&c->bd, "sync");
    if (ret == 0 && postcopy) {
        lm_ram_save_freeze_hint(&e->saver);
        ret = lm_pc_src_send_discards(c->pc, c->ch, &c->err);
        if (ret == 0) {
            ret = lm_pc_write_command(c->ch, LM_CMD_POSTCOPY_LISTEN, NULL, 0);
        }
    } else if (ret == 0) {
        ret = send_ram_slice_sync(c, LM_REC_SECTION_END, UINT64_MAX, NULL, c->mf_open);
        if (ret == 0 && c->mf_open) {
            ret = lm_multifd_src_finish(c->mf, &c->err);
            c->mf_open = false;
        }
    }
    lm_bd_mark(&c->bd, postcopy ? "discard" : "ram-tail");
    if (ret == 0) {
        e->bd_src = &c->bd; /* each device's save gets its own part */
        ret = lm_devices_save_complete(e, c->ch, &c->err);
        e->bd_src = NULL;
    }
    if (ret == 0) {
        uint8_t running = was_running;
        lm_stream_write_section_full(c->ch, LM_REC_SECTION_FULL, LM_GLOBALSTATE_SECTION_ID,
                                     LM_GLOBALSTATE_IDSTR, 0, 1);
        lm_stream_write_payload(c->ch, &running, 1);
        ret = lm_stream_write_footer(c->ch, LM_GLOBALSTATE_SECTION_ID);
    }
    if (ret == 0 && vmdesc) {
        ret = lm_devices_write_vmdesc(c->vmdesc, c->ch, &c->err);
    }
    if (ret == 0 && postcopy) {
        /* Its PONG says the device state is loaded there (postcopy-device). */
        ret = lm_pc_write_ping(c->ch, LM_PING_DEVICES_LOADED);
    }
    if (ret == 0 && !postcopy) {
        ret = lm_channel_put_u8(c->ch, LM_REC_EOF);
    }
    if (ret == 0) {
        ret = lm_channel_flush(c->ch);
    }
    if (ret < 0) {
        lm_channel_error(c->ch, &c->err);
        return ret; /* the destination has not run the guest: ours runs on */
    }
    return postcopy ? postcopy_run(c, stop_ns, before) : precopy_confirm(c, stop_ns, before);
}

/* The switchover is over (t_end): joins the destination's parts (if it
 * sent them) onto the source's, keeps the breakdown for query-migrate and
 * learns the fixed cost of a switchover from it. */
static void record_breakdown(src_ctx *c, uint64_t t_sent, uint64_t t_end)
{
    lm_engine *e = c->e;
    lm_bd joined;
    pthread_mutex_lock(&e->lock);
    uint64_t latency = e->stats.rtt_ns / 2;
    pthread_mutex_unlock(&e->lock);
    /* What the destination did after it read the last record (its parts
     * after its last wait for bytes) happened after t_sent: the latency
     * cannot eat into it.  (The round trip includes the destination's own
     * work, so half of it overstates the latency.) */
    uint64_t after_eof = 0;
    for (unsigned i = c->have_bd_dst ? c->bd_dst.n : 0; i-- > 0;) {
        if (!strcmp(c->bd_dst.part[i].name, "dst:wait")) {
            break;
        }
        after_eof += c->bd_dst.part[i].ns;
    }
    uint64_t wait = t_end > t_sent ? t_end - t_sent : 0;
    if (latency > lm_sat_sub(wait, after_eof)) {
        latency = lm_sat_sub(wait, after_eof);
    }
    if (c->have_bd_dst || t_end > t_sent) {
        lm_bd_join(&c->bd, t_sent, t_end, c->have_bd_dst ? &c->bd_dst : NULL, latency, &joined);
    } else {
        joined = c->bd;
    }
    pthread_mutex_lock(&e->lock);
    lm_stats *st = &e->stats;
    st->bd = joined;
    st->bd_dst = c->bd_dst;
    st->bd_dst.n = c->have_bd_dst ? c->bd_dst.n : 0;
    st->bd_expected_ns = st->expected_downtime_ns;
    st->bd_fixed_ns = st->expected_fixed_ns;
    st->bd_expected_parts = st->expected_parts;
    st->bd_expected_bytes_ns = st->expected_bytes_ns;
    st->has_breakdown = true;
    /* Robust to one odd run on a loaded host (a vCPU thread descheduled
     * for 50 ms): core/breakdown.h. */
    lm_bd_tail tail = { .bytes = st->downtime_bytes, .runs = c->tail_runs, .bw = st->tail_bw,
                        .run_bw = st->tail_run_bw, .by_runs = st->tail_by_runs,
                        .rtt_ns = st->rtt_now_ns };
    lm_bd_learn(&e->learned, &joined, &tail);
    pthread_mutex_unlock(&e->lock);
}

/* Precopy: the destination confirms it loaded everything and runs the
 * guest; only then is the source's copy given up. */
static int precopy_confirm(src_ctx *c, uint64_t stop_ns, uint64_t before)
{
    lm_engine *e = c->e;
    uint64_t t_sent = lm_now_ns();
    lm_bd_mark_at(&c->bd, "send", t_sent);
    pthread_mutex_lock(&e->lock);
    e->stats.downtime_bytes = sent_bytes(c) - before;
    e->stats.precopy_bytes = before;
    pthread_mutex_unlock(&e->lock);
    if (c->return_path) {
        /* The destination's share of the blackout, then its verdict. */
        lm_rp_msg *m = malloc(sizeof(*m));
        if (!m) {
            return lm_error_set(&c->err, -ENOMEM, "out of memory");
        }
        int ret;
        for (;;) {
            ret = lm_rp_read_msg(c->ch, m, &c->err);
            if (ret < 0 || m->type == LM_RP_SHUT) {
                break;
            }
            if (m->type == LM_RP_DOWNTIME) {
                lm_engine_read_downtime(m, &c->bd_dst);
                c->have_bd_dst = true;
            } else if (m->type != LM_RP_BACKLOG && m->type != LM_RP_SWITCHOVER_ACK) {
                ret = lm_error_set(&c->err, -EBADMSG, "unexpected return-path message 0x%x at the "
                                   "end of precopy", m->type);
                break;
            }
        }
        uint32_t status = m->status;
        bool shut = ret == 0;
        free(m);
        if (ret < 0 && ret != -EBADMSG) {
            lm_error_clear(&c->err);
            lm_error_set(&c->err, ret, "lost the destination before it confirmed the load");
            return ret;
        }
        if (ret < 0) {
            return ret;
        }
        if (!shut || status != 0) {
            return lm_error_set(&c->err, -EIO, "the destination failed to load the migration");
        }
    }
    uint64_t t_end = lm_now_ns();
    pthread_mutex_lock(&e->lock);
    e->stats.downtime_ns = t_end - stop_ns;
    pthread_mutex_unlock(&e->lock);
    record_breakdown(c, t_sent, t_end);
    return 0;
}

/* Postcopy's point of no return: nothing is committed until the
 * destination has loaded the device state and said so (the PONG to the
 * PING after it); until then any failure, or a cancel, restarts our guest,
 * and the destination never got RUN. */
static int postcopy_wait_devices(src_ctx *c)
{
    lm_engine *e = c->e;
    int ret = lm_pc_src_start_rp(c->pc, c->ch, &c->err);
    if (ret == 0 && !lm_set_state(e, LM_STATUS_DEVICE, LM_STATUS_POSTCOPY_DEVICE)) {
        ret = -ECANCELED;
    }
    if (ret == 0) {
        ret = lm_pc_src_wait_pong(c->pc, LM_PING_DEVICES_LOADED, &c->err);
    }
    /* Cancelled meanwhile: still ours to restart. */
    if (ret == 0 && (cancelled(e) ||
                     !lm_set_state(e, LM_STATUS_POSTCOPY_DEVICE, LM_STATUS_POSTCOPY_ACTIVE))) {
        ret = -ECANCELED;
    }
    return ret;
}

/* Postcopy: commit, RUN, then serve requests and stream the rest until
 * the destination has every page, recovering from broken connections. */
static int postcopy_run(src_ctx *c, uint64_t stop_ns, uint64_t before)
{
    lm_engine *e = c->e;
    int ret = postcopy_wait_devices(c);
    if (ret < 0) {
        lm_pc_src_stop(c->pc);
        return ret;
    }
    /* From RUN on, the destination may run the guest: ours never runs
     * again, whatever happens to the connection. */
    pthread_mutex_lock(&e->lock);
    e->postcopy_started = true;
    e->guest_stopped_by_us = false;
    pthread_mutex_unlock(&e->lock);
    lm_pc_write_command(c->ch, LM_CMD_POSTCOPY_RUN, NULL, 0);
    ret = lm_channel_flush(c->ch);
    uint64_t t_run = lm_now_ns();
    if (ret == 0) {
        lm_bd_mark_at(&c->bd, "send", t_run);
        record_breakdown(c, t_run, t_run); /* the guest may run there now: no destination part */
    }
    pthread_mutex_lock(&e->lock);
    e->stats.downtime_ns = t_run - stop_ns;
    e->stats.downtime_bytes = sent_bytes(c) - before;
    e->stats.precopy_bytes = before;
    pthread_mutex_unlock(&e->lock);
    for (;;) {
        bool dest_failed = false;
        if (ret == 0) {
            ret = lm_pc_src_run(c->pc, c->ch, &c->err);
        }
        if (ret == 0) {
            ret = lm_pc_src_wait_shut(c->pc, &dest_failed, &c->err);
        }
        if (ret == 0 || dest_failed || cancelled(e)) {
            break;
        }
        lm_channel_error(c->ch, &c->err);
        ret = postcopy_pause_and_resume(c);
        if (ret < 0) {
            break;
        }
    }
    lm_pc_src_stop(c->pc);
    return ret;
}

static void finish(src_ctx *c, int ret)
{
    lm_engine *e = c->e;
    free(c->vmdesc);
    c->vmdesc = NULL;
    if (c->pc) {
        lm_pc_src_free(c->pc);
        c->pc = NULL;
    }
    if (c->mf) {
        lm_error merr = LM_ERROR_INIT;
        if (ret < 0 && strstr(c->err.msg, MULTIFD_WAKE_WHY) &&
            lm_multifd_src_error(c->mf, &merr) < 0) {
            /* The main channel only knows that a sender failed (it was
             * woken, maybe first): the sender's reason is the cause. */
            lm_error_clear(&c->err);
            lm_error_propagate(&c->err, &merr);
        }
        /* Stops the senders (they read guest RAM) before its bitmaps go. */
        pthread_mutex_lock(&e->lock);
        e->stats.multifd_bytes = lm_multifd_src_bytes(c->mf);
        e->stats.zc_missed = lm_multifd_src_zc_missed(c->mf);
        lm_multifd_src_zc_stats(c->mf, &e->stats.zc_sends, &e->stats.zc_copied);
        e->mf_src = NULL;
        pthread_mutex_unlock(&e->lock);
        lm_multifd_src_free(c->mf);
        c->mf = NULL;
        c->mf_open = false;
    }
    if (c->mr) {
        /* Stops the writers (they read guest RAM) before its bitmaps go. */
        lm_mapped_ram_src_free(c->mr);
        c->mr = NULL;
    }
    lm_ram_save_cleanup(&e->saver);
    lm_devices_save_cleanup(e);
    lm_ratelimit_lift(&e->rl, false); /* a retry runs under max-bandwidth again */
    set_channel(e, NULL);
    if (c->ch) {
        lm_error cerr = LM_ERROR_INIT;
        int cret = lm_channel_close(c->ch, &cerr);
        if (ret == 0 && cret < 0) {
            ret = cret;
            lm_error_propagate(&c->err, &cerr);
        } else if ((ret == -EPIPE || ret == -ECONNRESET) && cret < 0) {
            /* An exec: command that closed the stream by failing: its exit
             * status says why, "connection closed by peer" does not. */
            lm_error_clear(&c->err);
            lm_error_propagate(&c->err, &cerr);
        }
        c->ch = NULL;
    }
    lm_dirtylimit_migration_release(e); /* QEMU lifts them at the end too */
    if (e->cb.vm_throttle) {
        pthread_mutex_lock(&e->lock);
        bool throttled = e->stats.throttle_percent != 0;
        e->stats.throttle_percent = 0;
        pthread_mutex_unlock(&e->lock);
        if (throttled) {
            e->cb.vm_throttle(e->opaque, 0);
        }
    }
    pthread_mutex_lock(&e->lock);
    e->stats.end_ns = lm_now_ns();
    lm_history_end(&e->history, e->stats.end_ns);
    bool restart = ret < 0 && e->guest_stopped_by_us;
    bool was_cancel = e->cancel_requested;
    bool postcopy = e->postcopy_started;
    e->guest_stopped_by_us = false;
    e->postcopy_requested = false;
    pthread_mutex_unlock(&e->lock);

    if (ret == 0) {
        /* The source guest stays stopped (postmigrate): two copies never run. */
        lm_set_state(e, postcopy ? LM_STATUS_POSTCOPY_ACTIVE : LM_STATUS_DEVICE,
                     LM_STATUS_COMPLETED);
        return;
    }
    if (postcopy) {
        /* The guest ran on the destination: ours must not run again, and
         * the migration cannot be undone (cancel included). */
        if (!lm_error_is_set(&c->err) || was_cancel) {
            lm_error_clear(&c->err);
            lm_error_set(&c->err, ret, "postcopy migration %s: the guest's state is split between "
                         "both sides", was_cancel ? "cancelled" : "failed");
        }
        lm_engine_fail(e, &c->err);
        lm_warn("%s", c->err.msg);
        lm_set_state_any(e, LM_STATUS_FAILED);
        return;
    }
    /* Nothing lost: the source guest runs on as it did before. */
    if (restart && e->cb.vm_start) {
        e->cb.vm_start(e->opaque);
    }
    if (was_cancel) {
        lm_set_state_any(e, LM_STATUS_CANCELLING);
        lm_set_state(e, LM_STATUS_CANCELLING, LM_STATUS_CANCELLED);
    } else {
        if (!lm_error_is_set(&c->err)) {
            lm_error_set(&c->err, ret, "migration failed: %s", strerror(-ret));
        }
        lm_engine_fail(e, &c->err);
        lm_warn("migration failed: %s", c->err.msg);
        lm_set_state_any(e, LM_STATUS_FAILED);
    }
}

void *lm_migration_thread(void *arg)
{
    src_ctx c = { .e = arg };
    lm_engine *e = c.e;
    lm_thread_list_add(&e->threads, "mig/src/main"); /* QEMU's name */
    memset(&c.err, 0, sizeof(c.err));
    int ret = setup(&c);
    pthread_mutex_lock(&e->lock);
    e->stats.setup_ns = lm_now_ns() - e->stats.start_ns;
    pthread_mutex_unlock(&e->lock);
    if (ret == 0 && (cancelled(e) || !lm_set_state(e, LM_STATUS_SETUP, LM_STATUS_ACTIVE))) {
        ret = -ECANCELED;
    }
    c.pass_start_ns = lm_now_ns();
    c.pass_start_bytes = c.ch ? sent_bytes(&c) : 0;
    c.pass_start_held = lm_ratelimit_held_ns(&e->rl);
    lm_convergence_begin(e, &c.conv);
    c.pass_start_pages = pages_sent(e);
    while (ret == 0) {
        bool switch_now;
        ret = sync_and_decide(&c, &switch_now);
        if (ret < 0 || switch_now || postcopy_wanted(&c)) {
            break;
        }
        ret = send_pass(&c);
    }
    if (ret == 0) {
        ret = cancelled(e) ? -ECANCELED : switchover(&c, postcopy_wanted(&c));
    }
    if (ret < 0 && cancelled(e)) {
        ret = -ECANCELED;
    }
    finish(&c, ret);
    lm_thread_list_remove(&e->threads);
    return NULL;
}
