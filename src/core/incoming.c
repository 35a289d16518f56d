/*
 * The destination's load thread: accept the connection, check the header
 * and configuration against the local machine, load sections until the end
 * marker, then start the guest and confirm on the return path.
 *
 * Every length, count and index read from the wire is checked before use;
 * a hostile or corrupt stream ends in `failed` with a message saying what
 * was wrong, never a write outside guest RAM.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "channel/tls.h"
#include "common/clock.h"
#include "common/threadtime.h"
#include "common/util.h"
#include "core/engine_internal.h"
#include "livemig/buffer.h"
#include "core/postcopy_ctx.h"
#include "ram/mapped_ram.h"
#include "ram/multifd.h"
#include "ram/ram_load.h"
#include "ram/stream_config.h"
#include "stream/stream.h"

enum section_kind { SECTION_RAM, SECTION_DEVICE, SECTION_GLOBALSTATE };

typedef struct section_slot {
    enum section_kind kind;
    lm_device_entry *dev;
    uint32_t version;
    bool used;
} section_slot;

/* The load rate the destination reports: the fastest of its last
 * LOAD_RATE_WINDOWS windows of this many bytes, counting RAM sections of
 * LOAD_RATE_SAMPLE_BYTES or more only (a few pages timed alone say
 * little). */
#define LOAD_RATE_WINDOW_BYTES (256ull << 10)
#define LOAD_RATE_SAMPLE_BYTES (64ull << 10)
#define LOAD_RATE_WINDOWS 4

typedef struct dst_ctx {
    lm_engine *e;
    lm_channel *ch;
    lm_error err;
    lm_stream_config cfg;
    uint32_t version;    /* the header's */
    bool have_config;
    lm_ram_block *map[LM_MAX_RAM_BLOCKS];
    lm_ram_loader loader;
    section_slot sections[LM_MAX_SECTIONS];
    bool source_running; /* from the globalstate section; true when absent */
    lm_pc_dst *pc;       /* postcopy: from ADVISE on */
    bool pc_listening;   /* LISTEN seen: guest RAM is registered; failures pause */
    bool pc_run;         /* RUN seen (or implied by a resume): the guest may run here */
    bool pc_advised;     /* ADVISE seen: the source reads the return path from here on */
    bool pc_acked;       /* the device state is loaded and said so: the source may commit */
    lm_multifd_dst *mf;  /* multifd: from MULTIFD_SETUP until its channels end */
    uint64_t multifd_bytes; /* read on multifd channels that ended */
    lm_mapped_ram_dst *mr;  /* mapped-ram: from CONFIG on */
    /* Per registered device (e->devs order): DEV_STARTED once its START
     * loaded, DEV_COMPLETE once its END or FULL did; checked at EOF. */
    uint8_t *dev_loaded;
    bool globalstate_loaded;
    lm_bd bd;               /* this side's share of the blackout, from SWITCHOVER on */
    /* The RAM loads' pace, told to the source with each BACKLOG: bytes
     * loaded from this channel in the latest window and the CPU time they
     * took (waiting for bytes is no load time), and the last window's
     * rate.  Recent loads, not all of them: the first pass's first touches
     * of fresh memory cost more than the tail's pages, loaded before. */
    uint64_t load_bytes;
    uint64_t load_cpu_ns;
    uint64_t load_bw;
    uint64_t load_window_bw[LOAD_RATE_WINDOWS]; /* the last windows' rates */
    unsigned load_windows;
} dst_ctx;

enum { DEV_STARTED = 1, DEV_COMPLETE = 2 };

/* One RAM section loaded: bytes from the channel in cpu_ns of this
 * thread's CPU time.  A section of a few pages is mostly its own cost: no
 * rate.  Each full window's rate joins the last few, and the fastest of
 * them is the rate told: a window slowed by first touches of fresh memory
 * or by reclaim is only ever slower than the tail's loads of pages loaded
 * before. */
static void note_ram_load(dst_ctx *c, uint64_t bytes, uint64_t cpu_ns)
{
    if (bytes < LOAD_RATE_SAMPLE_BYTES) {
        return;
    }
    c->load_cpu_ns += cpu_ns;
    c->load_bytes += bytes;
    if (c->load_bytes < LOAD_RATE_WINDOW_BYTES || !c->load_cpu_ns) {
        return;
    }
    c->load_window_bw[c->load_windows++ % LOAD_RATE_WINDOWS] =
        lm_per_second(c->load_bytes, c->load_cpu_ns);
    c->load_bw = 0;
    for (unsigned i = 0; i < LOAD_RATE_WINDOWS; i++) {
        c->load_bw = LM_MAX(c->load_bw, c->load_window_bw[i]);
    }
    c->load_bytes = c->load_cpu_ns = 0;
}

/* The load rate a BACKLOG tells (0: nothing to say yet).  Before a whole
 * window: what there is, once it says something. */
static uint64_t load_rate(dst_ctx *c)
{
    if (!c->load_bw && c->load_bytes >= LOAD_RATE_SAMPLE_BYTES && c->load_cpu_ns) {
        c->load_bw = lm_per_second(c->load_bytes, c->load_cpu_ns);
    }
    return c->load_bw;
}

static void publish_progress(dst_ctx *c)
{
    lm_engine *e = c->e;
    pthread_mutex_lock(&e->lock);
    e->dest_pages = c->loader.pages_loaded;
    e->dest_zero = c->loader.zero_pages;
    e->dest_multifd_bytes = c->multifd_bytes;
    if (c->ch) {
        e->dest_bytes = lm_channel_bytes_read(c->ch);
    }
    pthread_mutex_unlock(&e->lock);
}

static void multifd_failed(void *opaque)
{
    /* Wake the load thread wherever it waits on the main channel. */
    lm_engine_wake_main(opaque, -EIO, "a multifd channel failed");
}

static int multifd_sync(void *opaque, uint64_t seq, lm_error *err)
{
    dst_ctx *c = opaque;
    if (!c->mf) {
        return lm_error_set(err, -EBADMSG, "MULTIFD_SYNC record without multifd");
    }
    return lm_multifd_dst_sync(c->mf, seq, err);
}

/* Stops the receivers (after they ended, or on failure) and keeps their
 * counts. */
static void multifd_close(dst_ctx *c)
{
    if (!c->mf) {
        return;
    }
    lm_engine *e = c->e;
    pthread_mutex_lock(&e->lock);
    e->mf_dst = NULL;
    pthread_mutex_unlock(&e->lock);
    uint64_t pages, zero, bytes;
    lm_multifd_dst_stop(c->mf);
    lm_multifd_dst_stats(c->mf, &pages, &zero, &bytes);
    lm_multifd_dst_free(c->mf);
    c->mf = NULL;
    c->loader.pages_loaded += pages;
    c->loader.zero_pages += zero;
    c->multifd_bytes += bytes;
}

/* Everything sent on the multifd channels is in guest RAM, and they end. */
static int multifd_finish(dst_ctx *c)
{
    if (!c->mf) {
        return 0;
    }
    int ret = lm_multifd_dst_finish(c->mf, &c->err);
    if (ret == 0) {
        multifd_close(c);
    }
    return ret;
}

/* x-handshake-timeout: how long an accepted connection may take to send
 * its first bytes before it is dropped for the next one. */
static unsigned handshake_ms(lm_engine *e)
{
    pthread_mutex_lock(&e->lock);
    unsigned ms = (unsigned)e->params.x_handshake_timeout;
    pthread_mutex_unlock(&e->lock);
    return ms;
}

static int multifd_start(dst_ctx *c, const uint8_t *body, uint16_t len)
{
    lm_engine *e = c->e;
    lm_multifd_setup su;
    if (!c->have_config || c->mf) {
        return lm_error_set(&c->err, -EBADMSG, "unexpected MULTIFD_SETUP");
    }
    int ret = lm_multifd_setup_parse(body, len, &su, &c->err);
    if (ret < 0) {
        return ret;
    }
    if (!lm_cap(e, LM_CAP_MULTIFD)) {
        return lm_error_set(&c->err, -EINVAL, "the source uses multifd, but capability multifd is "
                            "off on the destination");
    }
    if (!lm_uri_multi_channel(&e->uri)) {
        return lm_error_set(&c->err, -EINVAL, "multifd needs a socket transport (unix: or tcp:)");
    }
    /* As QEMU: both sides must be set to the same compression. */
    pthread_mutex_lock(&e->lock);
    enum lm_multifd_compression mine = e->params.multifd_compression;
    pthread_mutex_unlock(&e->lock);
    enum lm_multifd_compression theirs = su.compression == LM_MULTIFD_COMP_ZSTD
                                             ? LM_MULTIFD_COMP_ZSTD : LM_MULTIFD_COMP_NONE;
    if (mine != theirs) {
        return lm_error_set(&c->err, -EINVAL, "the source sends multifd-compression %s, but this "
                            "destination has multifd-compression %s (set the same on both sides)",
                            lm_multifd_compression_name(theirs), lm_multifd_compression_name(mine));
    }
    pthread_mutex_lock(&e->lock);
    lm_listener *l = e->listener;
    pthread_mutex_unlock(&e->lock);
    if (!(su.flags & LM_MULTIFD_SETUP_CHECKSUM) != !(c->cfg.flags & LM_CONFIG_CHECKSUM)) {
        return lm_error_set(&c->err, -EBADMSG, "MULTIFD_SETUP and the configuration disagree "
                            "about checksums");
    }
    ret = lm_multifd_dst_start(l, &su, c->map, e->nblocks, handshake_ms(e), multifd_failed, e,
                               &c->mf, &c->err);
    pthread_mutex_lock(&e->lock);
    e->mf_dst = c->mf;
    pthread_mutex_unlock(&e->lock);
    if (ret == 0) {
        c->loader.multifd_sync = multifd_sync;
        c->loader.multifd_opaque = c;
    }
    return ret;
}

static int mapped_block(void *opaque, lm_channel *ch, lm_error *err)
{
    dst_ctx *c = opaque;
    return lm_mapped_ram_dst_load_block(c->mr, ch, err);
}

/* A mapped-ram file needs the capability here too (as in QEMU), and the
 * capability needs such a file: the two layouts cannot be told apart
 * safely otherwise. */
static int mapped_ram_start(dst_ctx *c)
{
    lm_engine *e = c->e;
    bool stream = c->cfg.flags & LM_CONFIG_MAPPED_RAM;
    pthread_mutex_lock(&e->lock);
    bool cap = e->caps[LM_CAP_MAPPED_RAM];
    unsigned threads = e->caps[LM_CAP_MULTIFD] ? (unsigned)e->params.multifd_channels : 1;
    pthread_mutex_unlock(&e->lock);
    if (stream && !cap) {
        return lm_error_set(&c->err, -EINVAL, "the file was saved with mapped-ram, but capability "
                            "mapped-ram is off on the destination");
    }
    if (cap && !stream) {
        return lm_error_set(&c->err, -EINVAL, "capability mapped-ram is on, but the stream was not "
                            "saved with mapped-ram");
    }
    if (!stream) {
        return 0;
    }
    int ret = lm_mapped_ram_dst_new(c->map, e->nblocks, threads, c->loader.checksum, &c->mr,
                                    &c->err);
    if (ret == 0) {
        c->loader.mapped_block = mapped_block;
        c->loader.mapped_opaque = c;
    }
    return ret;
}

/* Keeps the counts of pages loaded from the file. */
static void mapped_ram_close(dst_ctx *c)
{
    if (!c->mr) {
        return;
    }
    uint64_t pages, zero, bytes;
    lm_mapped_ram_dst_stats(c->mr, &pages, &zero, &bytes);
    c->loader.pages_loaded += pages;
    c->loader.zero_pages += zero;
    lm_mapped_ram_dst_free(c->mr);
    c->mr = NULL;
}

static int load_config(dst_ctx *c)
{
    lm_engine *e = c->e;
    if (c->have_config) {
        return lm_error_set(&c->err, -EBADMSG, "duplicate configuration record");
    }
    int ret = lm_stream_read_config(c->ch, &c->cfg, e->blocks, e->nblocks, c->map, &c->err);
    if (ret < 0) {
        return ret;
    }
    if ((c->cfg.flags & LM_CONFIG_CHECKSUM) && c->version < LM_STREAM_VERSION_CHECKSUM) {
        return lm_error_set(&c->err, -EBADMSG, "a version %u stream cannot carry checksums",
                            c->version);
    }
    /* As QEMU: the source's validate-uuid decides (it sends its UUID for
     * checking); the destination's capability plays no part. */
    if (c->cfg.flags & LM_CONFIG_VALIDATE_UUID) {
        pthread_mutex_lock(&e->lock);
        bool same = !memcmp(c->cfg.uuid, e->uuid, LM_UUID_LEN);
        pthread_mutex_unlock(&e->lock);
        if (!same) {
            return lm_error_set(&c->err, -EINVAL,
                                "UUID of the source does not match this machine's (the source set "
                                "validate-uuid)");
        }
    }
    c->have_config = true;
    c->dev_loaded = calloc(e->ndevs + 1, 1);
    if (!c->dev_loaded) {
        return lm_error_set(&c->err, -ENOMEM, "out of memory");
    }
    ret = lm_ram_load_setup(&c->loader, c->map, e->nblocks, &c->err);
    c->loader.checksum = c->cfg.flags & LM_CONFIG_CHECKSUM;
    return ret < 0 ? ret : mapped_ram_start(c);
}

/* Reads a section header and returns its slot. */
static int section_header(dst_ctx *c, uint8_t type, section_slot **out)
{
    uint32_t id;
    if (!c->have_config) {
        return lm_error_set(&c->err, -EBADMSG, "section before the configuration record");
    }
    if (lm_channel_get_be32(c->ch, &id) < 0) {
        return lm_channel_error(c->ch, &c->err);
    }
    if (id >= LM_MAX_SECTIONS) {
        return lm_error_set(&c->err, -EBADMSG, "section id %u out of range", id);
    }
    section_slot *s = &c->sections[id];
    if (type == LM_REC_SECTION_START || type == LM_REC_SECTION_FULL) {
        char idstr[256];
        uint8_t len;
        uint32_t instance, version;
        if (lm_channel_get_u8(c->ch, &len) < 0 || lm_channel_get(c->ch, idstr, len) < 0 ||
            lm_channel_get_be32(c->ch, &instance) < 0 || lm_channel_get_be32(c->ch, &version) < 0) {
            return lm_channel_error(c->ch, &c->err);
        }
        idstr[len] = '\0';
        if (!strcmp(idstr, LM_RAM_SECTION_IDSTR)) {
            if (version != 1 || instance != 0) {
                return lm_error_set(&c->err, -EINVAL, "unsupported RAM section version %u", version);
            }
            s->kind = SECTION_RAM;
            s->dev = NULL;
        } else if (!strcmp(idstr, LM_GLOBALSTATE_IDSTR)) {
            if (type != LM_REC_SECTION_FULL || version != 1) {
                return lm_error_set(&c->err, -EBADMSG, "malformed globalstate section");
            }
            s->kind = SECTION_GLOBALSTATE;
            s->dev = NULL;
        } else {
            s->kind = SECTION_DEVICE;
            s->dev = lm_devices_find(c->e, idstr, instance);
            if (!s->dev) {
                return lm_error_set(&c->err, -ENOENT, "unknown device '%s' instance %u in the stream",
                                    idstr, instance);
            }
            if ((type == LM_REC_SECTION_FULL) != (s->dev->ops == NULL)) {
                return lm_error_set(&c->err, -EBADMSG, "device '%s': wrong kind of section", idstr);
            }
        }
        s->version = version;
        s->used = true;
    } else if (!s->used) {
        return lm_error_set(&c->err, -EBADMSG, "section %u continued before it started", id);
    }
    *out = s;
    return (int)id;
}

static int load_globalstate(dst_ctx *c)
{
    uint32_t len;
    uint8_t running;
    if (lm_channel_get_be32(c->ch, &len) < 0) {
        return lm_channel_error(c->ch, &c->err);
    }
    if (len != 1) {
        return lm_error_set(&c->err, -EBADMSG, "globalstate payload of %u bytes", len);
    }
    if (lm_channel_get_u8(c->ch, &running) < 0) {
        return lm_channel_error(c->ch, &c->err);
    }
    if (running > 1) {
        return lm_error_set(&c->err, -EBADMSG, "globalstate: bad run state %u", running);
    }
    c->source_running = running;
    return 0;
}

static int load_section(dst_ctx *c, uint8_t type)
{
    section_slot *s = NULL;
    int id = section_header(c, type, &s);
    if (id < 0) {
        return id;
    }
    int ret;
    switch (s->kind) {
    case SECTION_DEVICE:
        ret = lm_devices_load(c->e, s->dev, s->version, c->ch, &c->err);
        break;
    case SECTION_GLOBALSTATE:
        ret = load_globalstate(c);
        break;
    default: {
        uint64_t cpu0 = lm_thread_cpu_ns(), bytes0 = lm_channel_bytes_read(c->ch);
        ret = lm_ram_load_section(&c->loader, c->ch, &c->err);
        note_ram_load(c, lm_channel_bytes_read(c->ch) - bytes0, lm_thread_cpu_ns() - cpu0);
        break;
    }
    }
    if (ret == 0) {
        ret = lm_stream_read_footer(c->ch, (uint32_t)id, &c->err);
    }
    if (ret == 0 && s->kind == SECTION_DEVICE) {
        uint8_t *st = &c->dev_loaded[s->dev - c->e->devs];
        bool last = type == LM_REC_SECTION_END || type == LM_REC_SECTION_FULL;
        *st = last ? DEV_COMPLETE : LM_MAX(*st, DEV_STARTED);
    } else if (ret == 0 && s->kind == SECTION_GLOBALSTATE) {
        c->globalstate_loaded = true;
    }
    if (c->bd.on) {
        char part[LM_BD_NAME_MAX];
        snprintf(part, sizeof(part), "dst:%s%.30s", s->kind == SECTION_RAM ? "ram-tail" : "load:",
                 s->kind == SECTION_DEVICE ? s->dev->idstr
                 : s->kind == SECTION_GLOBALSTATE ? "globalstate" : "");
        lm_bd_mark(&c->bd, part);
    }
    return ret;
}

/* Precopy's EOF: the guest starts only if the stream carried everything:
 * every page of every block, every registered device's last section (END
 * or FULL), and the source's run state. */
static int check_complete(dst_ctx *c)
{
    lm_engine *e = c->e;
    int ret = lm_ram_load_check_complete(&c->loader, &c->err);
    if (ret < 0) {
        return ret;
    }
    for (size_t i = 0; i < e->ndevs; i++) {
        if (c->dev_loaded[i] != DEV_COMPLETE) {
            const lm_device_entry *d = &e->devs[i];
            return lm_error_set(&c->err, -EBADMSG, "the stream is incomplete: device '%s' "
                                "instance %u %s", d->idstr, d->instance,
                                c->dev_loaded[i] ? "has no END section" : "has no section");
        }
    }
    if (!c->globalstate_loaded) {
        return lm_error_set(&c->err, -EBADMSG, "the stream is incomplete: no globalstate section");
    }
    return 0;
}

/* DRAIN: everything before it is loaded (the records are loaded in order,
 * multifd's pages up to the sync point before it); answer with what has
 * arrived behind it and is not loaded yet. */
static int answer_drain(dst_ctx *c, const uint8_t *body, uint16_t len)
{
    if (len != 4) {
        return lm_error_set(&c->err, -EBADMSG, "malformed DRAIN");
    }
    if (!(c->cfg.flags & LM_CONFIG_RETURN_PATH) || c->pc_listening) {
        return lm_error_set(&c->err, -EBADMSG, "DRAIN without a return path");
    }
    /* The socket's queue, and what the channel and its TLS session have
     * read off it already. */
    uint64_t queued = lm_channel_input_pending(c->ch);
    /* switchover-ack: the devices approved; the ack goes just before the
     * BACKLOG, inside the round trip the source reads to its end (an
     * unsolicited message could be buffered by a reader that then hands
     * the socket over to postcopy's return-path thread). */
    pthread_mutex_lock(&c->e->lock);
    bool ack = c->e->sw_ack_due;
    c->e->sw_ack_due = false;
    pthread_mutex_unlock(&c->e->lock);
    int ret = ack ? lm_rp_send_switchover_ack(c->ch) : 0;
    if (ret == 0) {
        ret = lm_rp_send_backlog(c->ch, lm_load_be32(body), queued, load_rate(c));
    }
    return ret < 0 ? lm_channel_error(c->ch, &c->err) : 0;
}

static int skip_vmdesc(dst_ctx *c)
{
    uint32_t len;
    if (lm_channel_get_be32(c->ch, &len) < 0) {
        return lm_channel_error(c->ch, &c->err);
    }
    if (len > LM_VMDESC_MAX) {
        return lm_error_set(&c->err, -EBADMSG, "device description too long (%u bytes)", len);
    }
    return lm_channel_skip(c->ch, len) < 0 ? lm_channel_error(c->ch, &c->err) : 0;
}

/* Postcopy's COMMAND records (docs/postcopy.md). */
/* From here on the guest runs on this side (if it ran on the source);
 * missing pages fault in. */
static void postcopy_run(dst_ctx *c)
{
    lm_engine *e = c->e;
    c->pc_run = true;
    lm_set_state(e, LM_STATUS_POSTCOPY_DEVICE, LM_STATUS_POSTCOPY_ACTIVE);
    pthread_mutex_lock(&e->lock);
    bool autostart = e->autostart && c->source_running;
    pthread_mutex_unlock(&e->lock);
    if (autostart && e->cb.vm_start) {
        e->cb.vm_start(e->opaque);
    }
}

/* PING: everything before it is loaded; PONG says so on the return path
 * (shared with the fault thread once LISTEN registered guest RAM). */
static int answer_ping(dst_ctx *c, const uint8_t *body, uint16_t len)
{
    if (!c->have_config || len != 4) {
        return lm_error_set(&c->err, -EBADMSG, "unexpected or malformed PING");
    }
    uint32_t value = lm_load_be32(body);
    int ret = c->pc_listening ? lm_pc_dst_send_pong(c->pc, value) : lm_rp_write_pong(c->ch, value);
    if (ret < 0) {
        return lm_error_set(&c->err, ret, "cannot answer PING %u on the return path", value);
    }
    if (c->pc_listening && value == LM_PING_DEVICES_LOADED) {
        c->pc_acked = true;
    }
    return 0;
}

static int load_command(dst_ctx *c)
{
    lm_engine *e = c->e;
    uint16_t cmd, len;
    if (lm_channel_get_be16(c->ch, &cmd) < 0 || lm_channel_get_be16(c->ch, &len) < 0) {
        return lm_channel_error(c->ch, &c->err);
    }
    uint8_t *body = malloc(len ? len : 1);
    if (!body) {
        return lm_error_set(&c->err, -ENOMEM, "out of memory");
    }
    int ret = lm_channel_get(c->ch, body, len) < 0 ? lm_channel_error(c->ch, &c->err) : 0;
    if (ret < 0) {
        goto out;
    }
    switch (cmd) {
    case LM_CMD_MULTIFD_SETUP:
        ret = multifd_start(c, body, len);
        break;
    case LM_CMD_PING:
        ret = answer_ping(c, body, len);
        break;
    case LM_CMD_DRAIN:
        ret = answer_drain(c, body, len);
        break;
    case LM_CMD_SWITCHOVER:
        /* The source's guest stopped: this side's share starts now. */
        ret = len ? lm_error_set(&c->err, -EBADMSG, "malformed SWITCHOVER") : 0;
        lm_bd_start(&c->bd, lm_now_ns());
        break;
    case LM_CMD_POSTCOPY_ADVISE:
        c->pc_advised = true;
        if (!c->have_config || c->pc || len != 4) {
            ret = lm_error_set(&c->err, -EBADMSG, "unexpected or malformed POSTCOPY_ADVISE");
            break;
        }
        if (!lm_cap(e, LM_CAP_POSTCOPY_RAM)) {
            ret = lm_error_set(&c->err, -EINVAL, "the source uses postcopy, but capability "
                               "postcopy-ram is off on the destination");
            break;
        }
        lm_pc_dst_ctx pc;
        lm_engine_pc_dst_ctx(e, &pc);
        ret = lm_pc_dst_new(&pc, c->map, e->nblocks, lm_load_be32(body), &c->pc, &c->err);
        if (ret == 0) {
            pthread_mutex_lock(&e->lock);
            e->pc_dst = c->pc;
            lm_listener *l = e->listener;
            pthread_mutex_unlock(&e->lock);
            if (lm_pc_dst_preempt(c->pc)) {
                if (!lm_uri_multi_channel(&e->uri)) {
                    ret = lm_error_set(&c->err, -EINVAL, "postcopy-preempt needs a socket transport");
                } else {
                    ret = lm_pc_dst_start_preempt(c->pc, l, &c->err);
                }
            }
        }
        break;
    case LM_CMD_POSTCOPY_DISCARD:
        ret = c->pc ? lm_pc_dst_discard(c->pc, body, len, &c->err)
                    : lm_error_set(&c->err, -EBADMSG, "POSTCOPY_DISCARD without ADVISE");
        break;
    case LM_CMD_POSTCOPY_LISTEN:
        if (!c->pc || c->pc_listening || len) {
            ret = lm_error_set(&c->err, -EBADMSG, "unexpected or malformed POSTCOPY_LISTEN");
            break;
        }
        /* Guest RAM is written directly no more: multifd must be done. */
        ret = multifd_finish(c);
        if (ret == 0) {
            ret = lm_pc_dst_listen(c->pc, &c->loader, &c->err);
        }
        if (ret == 0) {
            c->pc_listening = true;
            ret = lm_pc_dst_set_rp(c->pc, c->ch, false, &c->err);
        }
        if (ret == 0 && !lm_set_state(e, LM_STATUS_ACTIVE, LM_STATUS_POSTCOPY_DEVICE)) {
            ret = -ECANCELED;
        }
        break;
    case LM_CMD_POSTCOPY_RUN:
        if (!c->pc_listening || c->pc_run || len) {
            ret = lm_error_set(&c->err, -EBADMSG, "unexpected or malformed POSTCOPY_RUN");
            break;
        }
        postcopy_run(c);
        break;
    default:
        ret = lm_error_set(&c->err, -EBADMSG, "unexpected command 0x%04x", cmd);
        break;
    }
out:
    free(body);
    return ret;
}

static int load_records(dst_ctx *c);

/* switchover-ack (QEMU's qemu_loadvm_state_switchover_ack_needed): as the
 * load starts, count the devices that will approve the switchover; with
 * none, the ack is due at once. */
static void arm_switchover_ack(dst_ctx *c)
{
    lm_engine *e = c->e;
    if (!lm_cap(e, LM_CAP_SWITCHOVER_ACK) || !(c->cfg.flags & LM_CONFIG_RETURN_PATH)) {
        return;
    }
    unsigned n = 0;
    for (size_t i = 0; i < e->ndevs; i++) {
        lm_device_entry *d = &e->devs[i];
        if (d->ops && d->ops->switchover_ack_needed && d->ops->switchover_ack_needed(d->opaque)) {
            n++;
        }
    }
    pthread_mutex_lock(&e->lock);
    e->sw_ack_armed = true;
    e->sw_ack_pending = n;
    e->sw_ack_due = n == 0;
    pthread_mutex_unlock(&e->lock);
}

static int load_stream(dst_ctx *c)
{
    int ret = lm_stream_read_header_version(c->ch, &c->version, &c->err);
    if (ret < 0) {
        return ret;
    }
    if (!lm_set_state(c->e, LM_STATUS_SETUP, LM_STATUS_ACTIVE)) {
        return -ECANCELED;
    }
    return load_records(c);
}

static int load_records(dst_ctx *c)
{
    int ret;
    uint64_t records = 0;
    for (;;) {
        uint8_t type;
        if (lm_channel_get_u8(c->ch, &type) < 0) {
            return lm_channel_error(c->ch, &c->err);
        }
        lm_bd_mark(&c->bd, "dst:wait");
        switch (type) {
        case LM_REC_CONFIG:
            ret = load_config(c);
            if (ret == 0) {
                arm_switchover_ack(c);
            }
            break;
        case LM_REC_SECTION_START:
        case LM_REC_SECTION_PART:
        case LM_REC_SECTION_END:
        case LM_REC_SECTION_FULL:
            ret = load_section(c, type);
            break;
        case LM_REC_VMDESC:
            ret = skip_vmdesc(c);
            break;
        case LM_REC_COMMAND:
            ret = load_command(c);
            break;
        case LM_REC_EOF:
            if (c->pc_listening && !c->pc_run) {
                return lm_error_set(&c->err, -EBADMSG, "stream ended in postcopy before RUN");
            }
            if (c->pc_listening) {
                /* Pages still travelling on the preempt channel. */
                return lm_pc_dst_wait_all(c->pc, c->ch, &c->err);
            }
            /* Pages still travelling on the multifd channels. */
            ret = multifd_finish(c);
            lm_bd_mark(&c->bd, "dst:multifd");
            if (ret == 0 && c->mr) {
                ret = lm_mapped_ram_dst_check_complete(c->mr, &c->err);
            }
            if (ret < 0) {
                return ret;
            }
            return c->have_config ? check_complete(c)
                                  : lm_error_set(&c->err, -EBADMSG, "stream ended before its configuration");
        default:
            return lm_error_set(&c->err, -EBADMSG, "unknown record type 0x%02x after %llu bytes", type,
                                (unsigned long long)lm_channel_bytes_read(c->ch));
        }
        if (ret < 0) {
            return ret;
        }
        if ((++records & 63) == 0) {
            publish_progress(c);
        }
    }
}

/* Accepts the source's resume on the listener migrate-recover opened
 * (postcopy-recover-setup) and runs the destination's half of the
 * handshake (postcopy-recover).  migrate-pause interrupts either: the
 * listener is aborted or the connection shut down, and the caller goes
 * back to postcopy-paused for another migrate-recover. */
static int accept_resume(dst_ctx *c, lm_listener *l)
{
    lm_engine *e = c->e;
    int fd, pid;
    int ret = lm_listener_accept(l, &fd, &pid, &c->err);
    if (ret == -ECANCELED) {
        lm_error_clear(&c->err);
        return lm_error_set(&c->err, ret, "recovery interrupted while listening");
    }
    if (ret < 0) {
        return ret;
    }
    c->ch = lm_channel_new(fd, "incoming migration channel", NULL);
    if (!c->ch) {
        close(fd);
        return lm_error_set(&c->err, -ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&e->lock);
    e->ch = c->ch;
    if (e->cancel_requested) {
        lm_channel_shutdown(c->ch, -ECANCELED, "incoming migration cancelled");
    }
    pthread_mutex_unlock(&e->lock);
    /* A peer is connected: the handshake starts (QEMU's postcopy-recover),
     * however long it says nothing. */
    if (!lm_set_state(e, LM_STATUS_POSTCOPY_RECOVER_SETUP, LM_STATUS_POSTCOPY_RECOVER)) {
        return -ECANCELED;
    }
    uint8_t type;
    uint16_t cmd, len;
    ret = lm_tls_server(c->ch, l, &c->err);
    if (ret == 0) {
        ret = lm_stream_read_header(c->ch, &c->err);
    }
    if (ret == 0 && (lm_channel_get_u8(c->ch, &type) < 0 || lm_channel_get_be16(c->ch, &cmd) < 0 ||
                     lm_channel_get_be16(c->ch, &len) < 0)) {
        ret = lm_channel_error(c->ch, &c->err);
    }
    if (ret == 0 && (type != LM_REC_COMMAND || cmd != LM_CMD_POSTCOPY_RESUME || len != 0)) {
        ret = lm_error_set(&c->err, -EBADMSG, "a recovery stream must start with POSTCOPY_RESUME");
    }
    lm_pc_dst_reset_main(c->pc);
    if (ret == 0) {
        ret = lm_pc_dst_set_rp(c->pc, c->ch, true, &c->err);
    }
    if (ret == 0) {
        ret = lm_pc_dst_start_preempt(c->pc, l, &c->err);
    }
    if (ret == 0 && !lm_set_state(e, LM_STATUS_POSTCOPY_RECOVER, LM_STATUS_POSTCOPY_ACTIVE)) {
        ret = -ECANCELED;
    }
    if (ret == 0 && !c->pc_run) {
        /* The link broke between LISTEN and RUN.  A source resumes only
         * after it sent RUN, so the guest runs here now. */
        postcopy_run(c);
    }
    return ret;
}

/* Errors that say the connection broke, not that the stream was wrong. */
static bool link_failure(int ret)
{
    switch (-ret) {
    case EPIPE:
    case ECONNRESET:
    case ECONNABORTED:
    case EIO:
    case ETIMEDOUT:
    case ENOTCONN:
    case ENETDOWN:
    case ENETUNREACH:
    case EHOSTUNREACH:
        return true;
    default:
        return false;
    }
}

/* Drops the broken connection(s) and waits in postcopy-paused.  The guest
 * runs on; a vCPU that faults waits (its page stays requested).  Returns 0
 * once the source resumed, <0 when cancelled. */
static int pause_and_recover(dst_ctx *c)
{
    lm_engine *e = c->e;
    for (;;) {
        lm_pc_dst_stop_preempt(c->pc);
        /* Runs read before the break go in now (and half pages go). */
        lm_pc_dst_reset_main(c->pc);
        lm_pc_dst_set_rp(c->pc, NULL, false, NULL);
        pthread_mutex_lock(&e->lock);
        e->ch = NULL;
        lm_listener *old = e->listener;
        e->listener = NULL;
        pthread_mutex_unlock(&e->lock);
        if (c->ch) {
            lm_channel_close(c->ch, NULL);
            c->ch = NULL;
        }
        lm_listener_close(old);
        lm_warn("postcopy paused: %s", c->err.msg[0] ? c->err.msg : "connection lost");
        lm_set_state_any(e, LM_STATUS_POSTCOPY_PAUSED);

        pthread_mutex_lock(&e->lock);
        while (!e->recover_listener && !e->cancel_requested) {
            pthread_cond_wait(&e->cond, &e->lock);
        }
        lm_listener *l = e->recover_listener;
        e->recover_listener = NULL;
        e->listener = l;
        bool cancel = e->cancel_requested;
        pthread_mutex_unlock(&e->lock);
        if (cancel) {
            return -ECANCELED;
        }
        lm_error_clear(&c->err);
        int ret = accept_resume(c, l);
        if (ret == 0) {
            return 0;
        }
        pthread_mutex_lock(&e->lock);
        cancel = e->cancel_requested;
        pthread_mutex_unlock(&e->lock);
        if (cancel) {
            return -ECANCELED;
        }
        /* Recovery failed: back to paused; migrate-recover may retry. */
    }
}

void *lm_incoming_thread(void *arg)
{
    dst_ctx *c = calloc(1, sizeof(*c));
    lm_engine *e = arg;
    int ret;
    if (!c) {
        lm_error oom = LM_ERROR_INIT;
        lm_error_set(&oom, -ENOMEM, "out of memory");
        lm_engine_fail(e, &oom);
        lm_set_state_any(e, LM_STATUS_FAILED);
        return NULL;
    }
    c->e = e;
    c->source_running = true;
    int fd, pid;
    ret = lm_listener_accept_ready(e->listener, 8 /* magic, version */, handshake_ms(e), &fd, &pid,
                                   &c->err);
    if (ret == 0) {
        c->ch = lm_channel_new(fd, "incoming migration channel", NULL);
        if (!c->ch) {
            close(fd);
            ret = lm_error_set(&c->err, -ENOMEM, "out of memory");
        } else {
            lm_channel_set_child(c->ch, pid);
            pthread_mutex_lock(&e->lock);
            e->ch = c->ch;
            if (e->cancel_requested) {
                lm_channel_shutdown(c->ch, -ECANCELED, "incoming migration cancelled");
            }
            pthread_mutex_unlock(&e->lock);
            ret = lm_tls_server(c->ch, e->listener, &c->err);
            if (ret == 0) {
                ret = load_stream(c);
            }
            /* Once the guest runs here, any failure pauses: the source keeps
             * every page and a recovery may yet finish.  Between the device
             * state's PONG and RUN a broken link pauses too (the source may
             * have committed and sent RUN); before that PONG the source has
             * not committed (it restarts its guest), so this side fails.
             * A cancel ends it (pausing again would only spin). */
            while (ret < 0 && ret != -ECANCELED &&
                   (c->pc_run || (c->pc_acked && link_failure(ret)))) {
                ret = pause_and_recover(c);
                if (ret == 0) {
                    ret = load_records(c);
                }
            }
        }
    }
    if (ret < 0 && c->mf) {
        /* A receiver's failure woke the load thread: report its cause. */
        lm_error mf_err = LM_ERROR_INIT;
        if (lm_multifd_dst_error(c->mf, &mf_err) < 0) {
            lm_error_clear(&c->err);
            lm_error_propagate(&c->err, &mf_err);
        }
    }
    multifd_close(c);
    mapped_ram_close(c);
    publish_progress(c);
    bool success = ret == 0;
    if (success) {
        pthread_mutex_lock(&e->lock);
        /* A guest stopped on the source stays stopped here (QEMU's
         * globalstate): the management tool starts it with `cont`. */
        bool autostart = e->autostart && c->source_running;
        pthread_mutex_unlock(&e->lock);
        if (autostart && e->cb.vm_start) {
            e->cb.vm_start(e->opaque);
        }
        if (e->cb.incoming_done) {
            e->cb.incoming_done(e->opaque, true);
        }
        lm_bd_mark(&c->bd, "dst:restart");
    }
    if (c->pc) {
        /* No page moves any more; the return path is shared with the
         * fault thread, so SHUT goes through it. */
        lm_pc_dst_stop_preempt(c->pc);
        if (c->ch && c->pc_listening) {
            lm_pc_dst_send_shut(c->pc, success ? 0 : 1);
        }
        lm_info bt;
        memset(&bt, 0, sizeof(bt));
        lm_pc_dst_blocktime(c->pc, &bt);
        pthread_mutex_lock(&e->lock);
        e->pc_dst = NULL;
        e->bt_valid = bt.has_blocktime;
        e->bt_total_ms = bt.postcopy_blocktime_ms;
        e->bt_nvcpus = bt.nvcpus;
        memcpy(e->bt_vcpu_ms, bt.vcpu_blocktime_ms, sizeof(e->bt_vcpu_ms));
        pthread_mutex_unlock(&e->lock);
        lm_pc_dst_free(c->pc);
        c->pc = NULL;
    }
    if (c->ch && ((c->cfg.flags & LM_CONFIG_RETURN_PATH) || c->pc_advised) && !c->pc_listening) {
        /* Tell the source where the blackout went here, and whether it may
         * give its copy up. */
        if (success && c->bd.on) {
            lm_engine_send_downtime(c->ch, &c->bd);
        }
        lm_rp_write_shut(c->ch, success ? 0 : 1);
    }
    pthread_mutex_lock(&e->lock);
    e->ch = NULL;
    lm_listener *l = e->listener;
    e->listener = NULL;
    e->stats.end_ns = lm_now_ns();
    pthread_mutex_unlock(&e->lock);
    if (c->ch) {
        lm_error cerr = LM_ERROR_INIT;
        lm_channel_close(c->ch, success ? &cerr : NULL);
    }
    lm_listener_close(l);
    if (c->have_config) {
        lm_ram_load_cleanup(&c->loader);
    }
    free(c->dev_loaded);
    if (success) {
        lm_set_state(e, c->pc_listening ? LM_STATUS_POSTCOPY_ACTIVE : LM_STATUS_ACTIVE,
                     LM_STATUS_COMPLETED);
    } else {
        if (!lm_error_is_set(&c->err)) {
            lm_error_set(&c->err, ret, "incoming migration failed: %s", strerror(-ret));
        }
        lm_engine_fail(e, &c->err);
        lm_warn("incoming migration failed: %s", c->err.msg);
        if (e->cb.incoming_done) {
            e->cb.incoming_done(e->opaque, false);
        }
        lm_set_state_any(e, LM_STATUS_FAILED);
    }
    free(c);
    return NULL;
}
