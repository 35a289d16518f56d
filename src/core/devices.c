/*
 * Device sections: the iterative devices' share of every pass, the
 * stop-copy state of every device, the vmdesc, and loading on the
 * destination.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "core/engine_internal.h"
#include "stream/stream.h"
#include "stream/vmstate.h"

static int write_chunk(lm_engine *e, lm_channel *ch, uint8_t type, lm_device_entry *d,
                       const lm_wbuf *buf)
{
    if (type == LM_REC_SECTION_START || type == LM_REC_SECTION_FULL) {
        lm_stream_write_section_full(ch, type, d->section_id, d->idstr, d->instance, d->version);
    } else {
        lm_stream_write_section_short(ch, type, d->section_id);
    }
    lm_stream_write_payload(ch, buf->data, buf->len);
    int ret = lm_stream_write_footer(ch, d->section_id);
    pthread_mutex_lock(&e->lock);
    e->stats.device_bytes += buf->len;
    pthread_mutex_unlock(&e->lock);
    return ret;
}

static int check_buf(const lm_device_entry *d, lm_wbuf *b, lm_error *err)
{
    if (b->error) {
        return lm_error_set(err, b->error, "device '%s': out of memory", d->idstr);
    }
    if (b->len > LM_DEVICE_CHUNK_MAX) {
        return lm_error_set(err, -EMSGSIZE, "device '%s': chunk of %zu bytes exceeds %u", d->idstr,
                            b->len, LM_DEVICE_CHUNK_MAX);
    }
    return 0;
}

int lm_devices_save_setup(lm_engine *e, lm_channel *ch, lm_error *err)
{
    lm_wbuf b;
    lm_wbuf_init(&b);
    int ret = 0;
    for (size_t i = 0; i < e->ndevs && ret == 0; i++) {
        lm_device_entry *d = &e->devs[i];
        if (!d->ops) {
            continue;
        }
        d->pass_done = false;
        lm_wbuf_reset(&b);
        if (d->ops->save_setup) {
            ret = d->ops->save_setup(d->opaque, &b, err);
        }
        if (ret == 0) {
            ret = check_buf(d, &b, err);
        }
        if (ret == 0) {
            ret = write_chunk(e, ch, LM_REC_SECTION_START, d, &b);
        }
    }
    lm_wbuf_free(&b);
    if (ret < 0 && !lm_error_is_set(err)) {
        lm_channel_error(ch, err);
    }
    return ret;
}

int lm_devices_save_iterate(lm_engine *e, lm_channel *ch, uint64_t share, bool *all_done,
                            lm_error *err)
{
    lm_wbuf b;
    lm_wbuf_init(&b);
    int ret = 0;
    *all_done = true;
    for (size_t i = 0; i < e->ndevs && ret == 0; i++) {
        lm_device_entry *d = &e->devs[i];
        if (!d->ops || d->pass_done || !d->ops->save_iterate) {
            continue;
        }
        lm_wbuf_reset(&b);
        int r = d->ops->save_iterate(d->opaque, &b, share, err);
        if (r < 0) {
            ret = r;
            break;
        }
        d->pass_done = r > 0;
        if (!d->pass_done) {
            *all_done = false;
        }
        ret = check_buf(d, &b, err);
        if (ret == 0 && b.len) {
            ret = write_chunk(e, ch, LM_REC_SECTION_PART, d, &b);
        }
    }
    lm_wbuf_free(&b);
    if (ret < 0 && !lm_error_is_set(err)) {
        lm_channel_error(ch, err);
    }
    return ret;
}

/* A new pass: every iterative device gets its share again. */
static void new_pass(lm_engine *e)
{
    for (size_t i = 0; i < e->ndevs; i++) {
        e->devs[i].pass_done = false;
    }
}

uint64_t lm_devices_pending(lm_engine *e, bool exact, uint64_t *precopy)
{
    uint64_t stop = 0, pre = 0;
    if (exact) {
        new_pass(e);
    }
    for (size_t i = 0; i < e->ndevs; i++) {
        lm_device_entry *d = &e->devs[i];
        if (!d->ops) {
            continue;
        }
        lm_pending p = { 0, 0 };
        d->ops->query_pending(d->opaque, exact, &p);
        stop = lm_sat_add(stop, p.stopcopy_bytes);
        pre = lm_sat_add(pre, p.precopy_bytes);
    }
    if (precopy) {
        *precopy = pre;
    }
    return stop;
}

int lm_devices_save_complete(lm_engine *e, lm_channel *ch, lm_error *err)
{
    lm_wbuf b;
    lm_wbuf_init(&b);
    int ret = 0;
    /* Iterative devices end their sections, then every other device's state
     * goes in one FULL section each. */
    for (size_t i = 0; i < e->ndevs && ret == 0; i++) {
        lm_device_entry *d = &e->devs[i];
        lm_wbuf_reset(&b);
        if (d->ops) {
            ret = d->ops->save_complete(d->opaque, &b, err);
        } else {
            ret = lm_vmstate_save(d->vms, d->opaque, &b, err);
        }
        if (ret == 0) {
            ret = check_buf(d, &b, err);
        }
        if (ret == 0) {
            ret = write_chunk(e, ch, d->ops ? LM_REC_SECTION_END : LM_REC_SECTION_FULL, d, &b);
        }
        if (e->bd_src) {
            char part[LM_BD_NAME_MAX];
            snprintf(part, sizeof(part), "save:%.40s", d->idstr); /* names are cut to fit */
            lm_bd_mark(e->bd_src, part);
        }
    }
    lm_wbuf_free(&b);
    if (ret < 0 && !lm_error_is_set(err)) {
        lm_channel_error(ch, err);
    }
    return ret;
}

void lm_devices_save_cleanup(lm_engine *e)
{
    for (size_t i = 0; i < e->ndevs; i++) {
        if (e->devs[i].ops && e->devs[i].ops->save_cleanup) {
            e->devs[i].ops->save_cleanup(e->devs[i].opaque);
        }
    }
}

/* The JSON description is built only here, i.e. only when it is sent. */
char *lm_devices_describe(lm_engine *e)
{
    json_t *devices = json_array();
    for (size_t i = 0; i < e->ndevs; i++) {
        lm_device_entry *d = &e->devs[i];
        json_t *desc = d->vms ? lm_vmstate_describe(d->vms)
                              : json_pack("{s:s, s:I}", "vmsd_name", d->idstr, "version",
                                          (json_int_t)d->version);
        json_object_set_new(desc, "name", json_string(d->idstr));
        json_object_set_new(desc, "instance_id", json_integer(d->instance));
        json_object_set_new(desc, "iterative", json_boolean(d->ops != NULL));
        json_array_append_new(devices, desc);
    }
    json_t *blocks = json_array();
    for (size_t i = 0; i < e->nblocks; i++) {
        json_array_append_new(blocks, json_pack("{s:s, s:I, s:I}", "name", e->blocks[i]->name,
                                                "size", (json_int_t)e->blocks[i]->size,
                                                "page_size", (json_int_t)e->blocks[i]->page_size));
    }
    json_t *root = json_pack("{s:o, s:o}", "ram_blocks", blocks, "devices", devices);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return text;
}

int lm_devices_write_vmdesc(const char *text, lm_channel *ch, lm_error *err)
{
    if (!text) {
        return lm_error_set(err, -ENOMEM, "cannot build the device description");
    }
    size_t len = strlen(text);
    lm_channel_put_u8(ch, LM_REC_VMDESC);
    lm_channel_put_be32(ch, (uint32_t)len);
    int ret = lm_channel_put(ch, text, len);
    return ret < 0 ? lm_channel_error(ch, err) : 0;
}

lm_device_entry *lm_devices_find(lm_engine *e, const char *idstr, uint32_t instance)
{
    for (size_t i = 0; i < e->ndevs; i++) {
        if (!strcmp(e->devs[i].idstr, idstr) && e->devs[i].instance == instance) {
            return &e->devs[i];
        }
    }
    return NULL;
}

/* Reads a chunk of len bytes (len within LM_DEVICE_CHUNK_MAX) into a
 * buffer that grows as the bytes arrive: a peer that promises 64 MiB and
 * sends 9 costs 64 KiB, not 64 MiB. */
static int read_chunk(lm_channel *ch, uint32_t len, uint8_t **out, lm_error *err)
{
    size_t cap = len < (64u << 10) ? (len ? len : 1) : (64u << 10);
    size_t got = 0;
    uint8_t *buf = malloc(cap);
    while (buf && got < len) {
        if (got == cap) {
            size_t next = cap * 2 < len ? cap * 2 : len;
            uint8_t *grown = realloc(buf, next);
            if (!grown) {
                break;
            }
            buf = grown;
            cap = next;
        }
        if (lm_channel_get(ch, buf + got, cap - got) < 0) {
            free(buf);
            return lm_channel_error(ch, err);
        }
        got = cap;
    }
    if (!buf || got < len) {
        free(buf);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    *out = buf;
    return 0;
}

int lm_devices_load(lm_engine *e, lm_device_entry *d, uint32_t version, lm_channel *ch,
                    lm_error *err)
{
    uint32_t len;
    if (lm_channel_get_be32(ch, &len) < 0) {
        return lm_channel_error(ch, err);
    }
    if (len > LM_DEVICE_CHUNK_MAX) {
        return lm_error_set(err, -EBADMSG, "device '%s': chunk of %u bytes exceeds the %u limit",
                            d->idstr, len, LM_DEVICE_CHUNK_MAX);
    }
    uint8_t *buf = NULL;
    int ret = read_chunk(ch, len, &buf, err);
    if (ret < 0) {
        return ret;
    }
    lm_rbuf r;
    lm_rbuf_init(&r, buf, len);
    if (d->ops) {
        if (version != d->version) {
            ret = lm_error_set(err, -EINVAL, "device '%s': stream version %u, this side has %u",
                               d->idstr, version, d->version);
        } else if (len == 0) {
            ret = 0; /* an empty chunk (no save_setup, say) carries nothing to load */
        } else {
            ret = d->ops->load(d->opaque, &r, version, err);
            if (ret < 0 && !lm_error_is_set(err)) {
                lm_error_set(err, ret, "device '%s': load failed", d->idstr);
            }
        }
    } else {
        ret = lm_vmstate_load(d->vms, d->opaque, version, &r, err);
    }
    pthread_mutex_lock(&e->lock);
    e->dest_bytes += len;
    pthread_mutex_unlock(&e->lock);
    free(buf);
    return ret;
}
