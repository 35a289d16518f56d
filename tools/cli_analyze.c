/*
 * livemig analyze FILE [--json]: what a saved stream or mapped-ram file
 * holds (QEMU's analyze-migration.py, CRIU's crit): the header, the
 * configuration, every section (device fields decoded through the vmdesc
 * when the stream has one), RAM summarised per block, every checksum
 * checked; and, for a broken file, the byte offset where it stops making
 * sense and why.
 *
 * The file is mapped and walked with the library's bounded reader
 * (lm_rbuf) under the wire format's own constants (stream/format.h) and
 * checksums (stream/checksum.h).  The loader's parser cannot be used as it
 * is: it checks everything against a live machine's blocks and devices
 * and writes into guest RAM, where this only reports.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common/bitmap.h"
#include "common/util.h"
#include "livemig/buffer.h"
#include "ram/mapped_ram.h"
#include "stream/checksum.h"
#include "stream/format.h"
#include "stream/stream.h"

typedef struct ablock {
    char name[256];
    uint64_t size;
    uint32_t page_size;
    unsigned shift;
    uint64_t npages;
    uint8_t *sends;          /* per page: how often it was sent (saturating) */
    uint64_t data_pages, zero_pages, records;
    uint64_t csum_ok, csum_bad;
    json_t *first_bad;       /* the first record or chunk whose checksum failed */
    bool mapped;             /* mapped-ram: its region was found */
} ablock;

typedef struct analyzer {
    const uint8_t *base;
    size_t size;
    lm_rbuf r;               /* the cursor over the whole file */
    uint32_t version, flags;
    bool have_config, checksum;
    ablock *blocks;
    size_t nblocks;
    char *idstr[LM_MAX_SECTIONS];
    uint32_t instance[LM_MAX_SECTIONS];
    json_t *sections;        /* every device / globalstate section */
    json_t *commands;
    json_t *vmdesc;
    uint64_t ram_sections;
    bool eof;
    bool failed;
    uint64_t err_off;
    char err[512];
} analyzer;

static const char *const rec_names[] = {
    [LM_REC_CONFIG] = "CONFIG", [LM_REC_SECTION_START] = "START", [LM_REC_SECTION_PART] = "PART",
    [LM_REC_SECTION_END] = "END", [LM_REC_SECTION_FULL] = "FULL", [LM_REC_EOF] = "EOF",
    [LM_REC_COMMAND] = "COMMAND", [LM_REC_VMDESC] = "VMDESC",
};

/* The first problem sticks: where (offset) and why. */
__attribute__((format(printf, 3, 4)))
static int bad(analyzer *a, uint64_t off, const char *fmt, ...)
{
    if (!a->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(a->err, sizeof(a->err), fmt, ap);
        va_end(ap);
        a->failed = true;
        a->err_off = off;
    }
    return -EBADMSG;
}

static uint64_t pos(const analyzer *a)
{
    return a->r.pos;
}

/* n bytes at the cursor, or a "file ends" error naming what was read. */
static const uint8_t *take(analyzer *a, uint64_t n, const char *what)
{
    if (lm_rbuf_remaining(&a->r) < n) {
        bad(a, pos(a), "the file ends inside %s (%" PRIu64 " bytes needed, %zu left)", what, n,
            lm_rbuf_remaining(&a->r));
        return NULL;
    }
    const uint8_t *p = a->base + a->r.pos;
    a->r.pos += n;
    return p;
}

static int get32(analyzer *a, uint32_t *v, const char *what)
{
    const uint8_t *p = take(a, 4, what);
    return p ? (*v = lm_load_be32(p), 0) : -EBADMSG;
}

static int parse_config(analyzer *a, uint64_t at)
{
    uint32_t len;
    if (get32(a, &len, "the configuration's length") < 0) {
        return -EBADMSG;
    }
    if (a->have_config) {
        return bad(a, at, "a second configuration record");
    }
    if (len > LM_CONFIG_MAX_LEN) {
        return bad(a, at, "configuration record of %u bytes (at most %u)", len, LM_CONFIG_MAX_LEN);
    }
    const uint8_t *body = take(a, len, "the configuration record");
    if (!body) {
        return -EBADMSG;
    }
    lm_rbuf c;
    uint8_t uuid[LM_UUID_LEN];
    uint32_t n;
    lm_rbuf_init(&c, body, len);
    if (lm_rbuf_get(&c, uuid, sizeof(uuid)) < 0 || lm_rbuf_get_be32(&c, &a->flags) < 0 ||
        lm_rbuf_get_be32(&c, &n) < 0) {
        return bad(a, at, "truncated configuration record");
    }
    if (n > LM_MAX_RAM_BLOCKS) {
        return bad(a, at, "%u RAM blocks (at most %u)", n, LM_MAX_RAM_BLOCKS);
    }
    a->blocks = calloc(n + 1, sizeof(ablock));
    if (!a->blocks) {
        return bad(a, at, "out of memory");
    }
    a->nblocks = n;
    for (uint32_t i = 0; i < n; i++) {
        ablock *b = &a->blocks[i];
        if (lm_rbuf_get_str8(&c, b->name, sizeof(b->name)) < 0 ||
            lm_rbuf_get_be64(&c, &b->size) < 0 || lm_rbuf_get_be32(&c, &b->page_size) < 0) {
            return bad(a, at, "truncated configuration record (block %u)", i);
        }
        if (b->page_size < 4096 || (b->page_size & (b->page_size - 1)) || !b->size ||
            b->size % b->page_size) {
            return bad(a, at, "RAM block '%s': size %" PRIu64 " and page size %u do not fit",
                       b->name, b->size, b->page_size);
        }
        b->shift = (unsigned)__builtin_ctz(b->page_size);
        b->npages = b->size >> b->shift;
        b->sends = calloc(b->npages, 1);
        if (!b->sends) {
            return bad(a, at, "out of memory");
        }
    }
    if (lm_rbuf_remaining(&c)) {
        return bad(a, at, "%zu trailing bytes in the configuration record", lm_rbuf_remaining(&c));
    }
    a->checksum = a->flags & LM_CONFIG_CHECKSUM;
    if (a->checksum && a->version < LM_STREAM_VERSION_CHECKSUM) {
        return bad(a, at, "a version %u stream cannot carry checksums", a->version);
    }
    a->have_config = true;
    return 0;
}

static void note_sent(ablock *b, uint64_t first, uint32_t count)
{
    for (uint64_t p = first; p < first + count; p++) {
        if (b->sends[p] < 255) {
            b->sends[p]++;
        }
    }
}

static void csum_result(ablock *b, bool ok, const char *where, uint64_t off, uint64_t first,
                        uint64_t last)
{
    if (ok) {
        b->csum_ok++;
        return;
    }
    if (!b->csum_bad++) {
        b->first_bad = json_pack("{s:s, s:I, s:I, s:I}", "in", where, "offset", (json_int_t)off,
                                 "first_page", (json_int_t)first, "last_page", (json_int_t)last);
    }
}

/* A PAGES or ZERO record, its type byte at `at`. */
static int parse_ram_pages(analyzer *a, uint8_t type, uint64_t at)
{
    const uint8_t *h = take(a, 14, "a RAM record's header");
    if (!h) {
        return -EBADMSG;
    }
    uint16_t bi = lm_load_be16(h);
    uint64_t first = lm_load_be64(h + 2);
    uint32_t count = lm_load_be32(h + 10);
    if (bi >= a->nblocks) {
        return bad(a, at, "RAM record names block %u, but the configuration has %zu", bi,
                   a->nblocks);
    }
    ablock *b = &a->blocks[bi];
    if (count == 0 || first >= b->npages || count > b->npages - first) {
        return bad(a, at, "RAM record for block '%s': pages %" PRIu64 "+%u out of range (%" PRIu64
                   " pages)", b->name, first, count, b->npages);
    }
    /* Checksums: the pages' own (PAGES), then one over the type byte,
     * header and that table (stream-format.md §4d). */
    uint64_t nsums = a->checksum && type == LM_RAM_PAGES ? count : 0;
    if (nsums > LM_CSUM_MAX_PAGES) {
        return bad(a, at, "a PAGES record of %u pages with checksums (at most %u)", count,
                   LM_CSUM_MAX_PAGES);
    }
    const uint8_t *sums = a->checksum ? take(a, nsums * 8 + 8, "a RAM record's checksums") : NULL;
    if (a->checksum && !sums) {
        return -EBADMSG;
    }
    if (sums && lm_csum(a->base + at, 15 + nsums * 8, 0) != lm_load_be64(sums + nsums * 8)) {
        return bad(a, at, "checksum mismatch: the header of a RAM record for block '%s' pages %"
                   PRIu64 "-%" PRIu64, b->name, first, first + count - 1);
    }
    uint64_t len = type == LM_RAM_PAGES ? (uint64_t)count << b->shift : 0;
    const uint8_t *data = take(a, len, "a PAGES record's data");
    if (!data) {
        return -EBADMSG;
    }
    for (uint64_t i = 0; i < nsums; i++) {
        bool ok = lm_csum_page(data + (i << b->shift), b->page_size, first + i) ==
                  lm_load_be64(sums + i * 8);
        csum_result(b, ok, "PAGES record", at, first + i, first + i);
    }
    note_sent(b, first, count);
    b->records++;
    if (type == LM_RAM_PAGES) {
        b->data_pages += count;
    } else {
        b->zero_pages += count;
    }
    return 0;
}

/* A mapped-ram block: the record, its bitmap, [checksum table,] pages. */
static int parse_mapped_block(analyzer *a, uint64_t at)
{
    const uint8_t *rec = take(a, LM_MAPPED_RAM_RECORD_LEN, "a MAPPED_BLOCK record");
    if (!rec) {
        return -EBADMSG;
    }
    if (!(a->flags & LM_CONFIG_MAPPED_RAM)) {
        return bad(a, at, "MAPPED_BLOCK record without mapped-ram in the configuration");
    }
    uint16_t bi = lm_load_be16(rec);
    uint32_t version = lm_load_be32(rec + 2), psize = lm_load_be32(rec + 6);
    uint64_t boff = lm_load_be64(rec + 10), poff = lm_load_be64(rec + 18);
    if (bi >= a->nblocks || a->blocks[bi].mapped) {
        return bad(a, at, "MAPPED_BLOCK names block %u (%s)", bi,
                   bi >= a->nblocks ? "no such block" : "described twice");
    }
    ablock *b = &a->blocks[bi];
    uint32_t want = a->checksum ? LM_MAPPED_RAM_VERSION_CHECKSUM : LM_MAPPED_RAM_VERSION;
    if (version != want || psize != b->page_size || boff != pos(a)) {
        return bad(a, at, "MAPPED_BLOCK of '%s': version %u (expected %u), page size %u, bitmap "
                   "at %" PRIu64 " (expected %" PRIu64 ")", b->name, version, want, psize, boff,
                   pos(a));
    }
    uint64_t words = LM_BITMAP_WORDS(b->npages);
    uint64_t chunk = b->page_size >= LM_MAPPED_RAM_CSUM_CHUNK
                         ? 1 : LM_MAPPED_RAM_CSUM_CHUNK >> b->shift;
    uint64_t nchunks = a->checksum ? LM_DIV_ROUND_UP(b->npages, chunk) : 0;
    if (poff < boff || poff - boff < (words + nchunks) * 8 || poff % b->page_size) {
        return bad(a, at, "MAPPED_BLOCK of '%s': pages at %" PRIu64 " overlap its bitmap or are "
                   "misaligned", b->name, poff);
    }
    if (poff > a->size || b->size > a->size - poff) {
        return bad(a, at, "the file is truncated: the pages of RAM block '%s' end at offset %"
                   PRIu64 ", the file has %zu bytes", b->name, poff + b->size, a->size);
    }
    const uint8_t *bm = a->base + boff, *table = bm + words * 8, *pages = a->base + poff;
    uint8_t ent[(LM_MAPPED_RAM_CSUM_CHUNK >> 12) * 8];
    for (uint64_t p = 0; p < b->npages; p++) {
        bool present = (lm_load_be64(bm + (p / 64) * 8) >> (p % 64)) & 1;
        if (present) {
            b->data_pages++;
        } else {
            b->zero_pages++;
        }
        b->sends[p] = 1;
        if (!a->checksum) {
            continue;
        }
        uint64_t i = p % chunk;
        lm_store_be64(ent + i * 8, present ? lm_csum(pages + (p << b->shift), b->page_size, p) : 0);
        if (i + 1 == chunk || p + 1 == b->npages) {
            uint64_t k = p / chunk;
            bool ok = lm_csum(ent, (i + 1) * 8, 0) == lm_load_be64(table + k * 8);
            csum_result(b, ok, "mapped-ram chunk", poff + ((k * chunk) << b->shift), k * chunk, p);
        }
    }
    b->mapped = true;
    b->records++;
    a->r.pos = poff + b->size;
    return 0;
}

/* A RAM section's payload, up to its EOS. */
static int parse_ram(analyzer *a)
{
    for (;;) {
        uint64_t at = pos(a);
        const uint8_t *t = take(a, 1, "a RAM record");
        if (!t) {
            return -EBADMSG;
        }
        int ret = 0;
        switch (*t) {
        case LM_RAM_EOS:
            return 0;
        case LM_RAM_PAGES:
        case LM_RAM_ZERO:
            ret = parse_ram_pages(a, *t, at);
            break;
        case LM_RAM_MULTIFD_SYNC:
            ret = take(a, 8, "a MULTIFD_SYNC record") ? 0 : -EBADMSG;
            break;
        case LM_RAM_MAPPED_BLOCK:
            ret = parse_mapped_block(a, at);
            break;
        default:
            return bad(a, at, "unknown RAM record type 0x%02x", *t);
        }
        if (ret < 0) {
            return ret;
        }
    }
}

static int parse_section(analyzer *a, uint8_t type, uint64_t at)
{
    uint32_t id, instance = 0, version = 0;
    if (!a->have_config) {
        return bad(a, at, "a section before the configuration record");
    }
    if (get32(a, &id, "a section header") < 0) {
        return -EBADMSG;
    }
    if (id >= LM_MAX_SECTIONS) {
        return bad(a, at, "section id %u out of range", id);
    }
    if (type == LM_REC_SECTION_START || type == LM_REC_SECTION_FULL) {
        const uint8_t *l = take(a, 1, "a section header");
        const uint8_t *name = l ? take(a, *l, "a section's name") : NULL;
        if (!name || get32(a, &instance, "a section header") < 0 ||
            get32(a, &version, "a section header") < 0) {
            return -EBADMSG;
        }
        free(a->idstr[id]);
        a->idstr[id] = strndup((const char *)name, *l);
        a->instance[id] = instance;
    } else if (!a->idstr[id]) {
        return bad(a, at, "section %u continued before it started", id);
    }
    const char *idstr = a->idstr[id];
    int ret = 0;
    if (!strcmp(idstr, LM_RAM_SECTION_IDSTR)) {
        a->ram_sections++;
        ret = parse_ram(a);
    } else {
        uint32_t len;
        if (get32(a, &len, "a device payload's length") < 0) {
            return -EBADMSG;
        }
        if (len > LM_DEVICE_CHUNK_MAX) {
            return bad(a, at, "device '%s': payload of %u bytes (at most %u)", idstr, len,
                       LM_DEVICE_CHUNK_MAX);
        }
        uint64_t data = pos(a);
        if (!take(a, len, "a device payload")) {
            return -EBADMSG;
        }
        json_array_append_new(a->sections,
                              json_pack("{s:I, s:s, s:I, s:s, s:I, s:I, s:I, s:I}", "offset",
                                        (json_int_t)at, "type", rec_names[type], "id",
                                        (json_int_t)id, "idstr", idstr, "instance",
                                        (json_int_t)a->instance[id], "version",
                                        (json_int_t)version, "size", (json_int_t)len,
                                        "payload_offset", (json_int_t)data));
    }
    if (ret < 0) {
        return ret;
    }
    uint64_t foot_at = pos(a);
    uint32_t footer;
    if (get32(a, &footer, "a section footer") < 0) {
        return -EBADMSG;
    }
    if (footer != id) {
        return bad(a, foot_at, "section footer mismatch: expected section %u, found %u", id, footer);
    }
    return 0;
}

static int parse_records(analyzer *a)
{
    const uint8_t *h = take(a, 8, "the header");
    if (!h) {
        return -EBADMSG;
    }
    if (lm_load_be32(h) != LM_STREAM_MAGIC) {
        return bad(a, 0, "not a livemig stream (bad magic 0x%08x)", lm_load_be32(h));
    }
    a->version = lm_load_be32(h + 4);
    if (a->version != LM_STREAM_VERSION && a->version != LM_STREAM_VERSION_CHECKSUM) {
        return bad(a, 4, "unsupported stream version %u", a->version);
    }
    for (;;) {
        uint64_t at = pos(a);
        if (!lm_rbuf_remaining(&a->r)) {
            return bad(a, at, "the file ends without an EOF record");
        }
        const uint8_t *t = take(a, 1, "a record");
        int ret;
        switch (*t) {
        case LM_REC_CONFIG:
            ret = parse_config(a, at);
            break;
        case LM_REC_SECTION_START:
        case LM_REC_SECTION_PART:
        case LM_REC_SECTION_END:
        case LM_REC_SECTION_FULL:
            ret = parse_section(a, *t, at);
            break;
        case LM_REC_COMMAND: {
            const uint8_t *c = take(a, 4, "a COMMAND record");
            ret = c && take(a, lm_load_be16(c + 2), "a COMMAND's body") ? 0 : -EBADMSG;
            if (ret == 0) {
                json_array_append_new(a->commands, json_pack("{s:I, s:I}", "offset",
                                                             (json_int_t)at, "command",
                                                             (json_int_t)lm_load_be16(c)));
            }
            break;
        }
        case LM_REC_VMDESC: {
            uint32_t len;
            const uint8_t *text = NULL;
            ret = get32(a, &len, "the VMDESC length");
            if (ret == 0 && len > LM_VMDESC_MAX) {
                ret = bad(a, at, "device description of %u bytes (at most %u)", len, LM_VMDESC_MAX);
            }
            if (ret == 0 && !(text = take(a, len, "the device description"))) {
                ret = -EBADMSG;
            }
            if (ret == 0) {
                json_error_t jerr;
                json_decref(a->vmdesc);
                a->vmdesc = json_loadb((const char *)text, len, 0, &jerr);
                if (!a->vmdesc) {
                    ret = bad(a, at, "the device description is not JSON: %s", jerr.text);
                }
            }
            break;
        }
        case LM_REC_EOF:
            a->eof = true;
            if (lm_rbuf_remaining(&a->r)) {
                return bad(a, pos(a), "%zu bytes after the EOF record", lm_rbuf_remaining(&a->r));
            }
            return 0;
        default:
            return bad(a, at, "unknown record type 0x%02x", *t);
        }
        if (ret < 0) {
            return ret;
        }
    }
}

/* ---- device fields through the vmdesc ---- */

static unsigned elem_size(const char *type)
{
    static const struct {
        const char *name;
        unsigned size;
    } t[] = { { "uint8", 1 }, { "bool", 1 }, { "uint16", 2 }, { "uint32", 4 }, { "uint64", 8 },
              { "int64", 8 }, { "buffer", 1 } };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if (!strcmp(type, t[i].name)) {
            return t[i].size;
        }
    }
    return 0;
}

/* A big-endian integer field (JSON integers are signed 64-bit: a uint64
 * above INT64_MAX shows as its two's complement). */
static json_t *scalar(const uint8_t *p, unsigned size)
{
    uint64_t v = size == 1 ? p[0] : size == 2 ? lm_load_be16(p) : size == 4 ? lm_load_be32(p)
                                                                          : lm_load_be64(p);
    return json_integer((json_int_t)v);
}

/* Decodes sec's payload with the vmdesc's fields of its device. */
static void decode_fields(analyzer *a, json_t *sec)
{
    json_t *devs = json_object_get(a->vmdesc, "devices");
    const char *idstr = cli_json_str(sec, "idstr");
    uint64_t instance = cli_json_u64(sec, "instance");
    size_t i;
    json_t *d, *desc = NULL;
    json_array_foreach(devs, i, d) {
        if (!strcmp(cli_json_str(d, "name"), idstr) && cli_json_u64(d, "instance_id") == instance) {
            desc = d;
        }
    }
    json_t *fields = desc ? json_object_get(desc, "fields") : NULL;
    if (!json_is_array(fields)) {
        return; /* an iterative device: its payload is its own */
    }
    const uint8_t *p = a->base + cli_json_u64(sec, "payload_offset");
    uint64_t left = cli_json_u64(sec, "size");
    json_t *out = json_object();
    json_t *f;
    json_array_foreach(fields, i, f) {
        const char *type = cli_json_str(f, "type");
        unsigned es = elem_size(type);
        uint64_t size = cli_json_u64(f, "size");
        if (!es || size % es || size > left) {
            json_object_set_new(sec, "fields_error",
                                json_sprintf("field '%s' (%s, %" PRIu64 " bytes) does not fit the "
                                             "payload", cli_json_str(f, "name"), type, size));
            break;
        }
        json_t *v;
        if (!strcmp(type, "buffer")) {
            char *hex = malloc(size * 2 + 1);
            for (uint64_t k = 0; hex && k < size; k++) {
                snprintf(hex + k * 2, 3, "%02x", p[k]);
            }
            v = hex ? json_stringn(hex, size * 2) : json_null();
            free(hex);
        } else if (size == es) {
            v = !strcmp(type, "bool") ? json_boolean(p[0]) : scalar(p, es);
        } else {
            v = json_array();
            for (uint64_t k = 0; k < size; k += es) {
                json_array_append_new(v, scalar(p + k, es));
            }
        }
        json_object_set_new(out, cli_json_str(f, "name"), v);
        p += size;
        left -= size;
    }
    if (left && !json_object_get(sec, "fields_error")) {
        json_object_set_new(sec, "fields_error",
                            json_sprintf("%" PRIu64 " payload bytes left after the fields", left));
    }
    json_object_set_new(sec, "fields", out);
}

/* ---- the report ---- */

static json_t *report(analyzer *a)
{
    json_t *blocks = json_array();
    uint64_t bad_sums = 0;
    for (size_t i = 0; i < a->nblocks; i++) {
        ablock *b = &a->blocks[i];
        uint64_t settled = 0, passes = 0;
        for (uint64_t p = 0; p < b->npages; p++) {
            settled += b->sends[p] != 0;
            passes = LM_MAX(passes, (uint64_t)b->sends[p]);
        }
        json_t *jb = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "name", b->name,
                               "size", (json_int_t)b->size, "page_size", (json_int_t)b->page_size,
                               "pages", (json_int_t)b->npages, "pages_settled",
                               (json_int_t)settled, "data_pages", (json_int_t)b->data_pages,
                               "zero_pages", (json_int_t)b->zero_pages, "records",
                               (json_int_t)b->records, "max_sends_per_page", (json_int_t)passes);
        if (a->checksum) {
            json_object_set_new(jb, "checksums", json_pack("{s:I, s:I}", "ok",
                                                           (json_int_t)b->csum_ok, "bad",
                                                           (json_int_t)b->csum_bad));
            if (b->first_bad) {
                json_object_set(jb, "first_bad_checksum", b->first_bad);
            }
        }
        bad_sums += b->csum_bad;
        json_array_append_new(blocks, jb);
    }
    if (a->vmdesc) {
        size_t i;
        json_t *s;
        json_array_foreach(a->sections, i, s) {
            decode_fields(a, s);
        }
    }
    json_t *flags = json_array();
    if (a->flags & LM_CONFIG_RETURN_PATH) {
        json_array_append_new(flags, json_string("return-path"));
    }
    if (a->flags & LM_CONFIG_MAPPED_RAM) {
        json_array_append_new(flags, json_string("mapped-ram"));
    }
    if (a->flags & LM_CONFIG_CHECKSUM) {
        json_array_append_new(flags, json_string("checksum"));
    }
    bool ok = !a->failed && a->eof && bad_sums == 0;
    json_t *root = json_pack("{s:b, s:I, s:{s:I}, s:o, s:I, s:o, s:o, s:o, s:b, s:b}", "ok", ok,
                             "file_size", (json_int_t)a->size, "header", "version",
                             (json_int_t)a->version, "config_flags", flags, "ram_sections",
                             (json_int_t)a->ram_sections, "ram_blocks", blocks, "sections",
                             json_incref(a->sections), "commands", json_incref(a->commands),
                             "vmdesc", a->vmdesc != NULL, "eof", a->eof);
    if (a->failed) {
        json_object_set_new(root, "error", json_pack("{s:I, s:s}", "offset",
                                                     (json_int_t)a->err_off, "reason", a->err));
    } else if (bad_sums) {
        json_object_set_new(root, "error", json_pack("{s:s}", "reason",
                                                     "page data does not match its checksums"));
    }
    return root;
}

static void print_text(json_t *rep)
{
    printf("stream version %" PRIu64 ", %" PRIu64 " bytes; configuration flags:",
           cli_json_u64(json_object_get(rep, "header"), "version"), cli_json_u64(rep, "file_size"));
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(rep, "config_flags"), i, v) {
        printf(" %s", json_string_value(v));
    }
    printf("\nRAM (%" PRIu64 " sections):\n", cli_json_u64(rep, "ram_sections"));
    json_array_foreach(json_object_get(rep, "ram_blocks"), i, v) {
        char sz[32];
        printf("  %-10s %s, %" PRIu64 "-byte pages: %" PRIu64 " of %" PRIu64 " pages settled; %"
               PRIu64 " data and %" PRIu64 " zero pages in %" PRIu64 " records; a page sent at "
               "most %" PRIu64 " times", cli_json_str(v, "name"),
               cli_fmt_size(cli_json_u64(v, "size"), sz, sizeof(sz)), cli_json_u64(v, "page_size"),
               cli_json_u64(v, "pages_settled"), cli_json_u64(v, "pages"),
               cli_json_u64(v, "data_pages"), cli_json_u64(v, "zero_pages"),
               cli_json_u64(v, "records"), cli_json_u64(v, "max_sends_per_page"));
        json_t *cs = json_object_get(v, "checksums");
        if (cs) {
            printf("; checksums %" PRIu64 " ok, %" PRIu64 " bad", cli_json_u64(cs, "ok"),
                   cli_json_u64(cs, "bad"));
        }
        json_t *fb = json_object_get(v, "first_bad_checksum");
        if (fb) {
            printf(" (first: %s at offset %" PRIu64 ", pages %" PRIu64 "-%" PRIu64 ")",
                   cli_json_str(fb, "in"), cli_json_u64(fb, "offset"),
                   cli_json_u64(fb, "first_page"), cli_json_u64(fb, "last_page"));
        }
        printf("\n");
    }
    printf("sections:\n");
    json_array_foreach(json_object_get(rep, "sections"), i, v) {
        printf("  @%-10" PRIu64 " %-5s %s %" PRIu64 " (id %" PRIu64 ", version %" PRIu64 "): %"
               PRIu64 " bytes", cli_json_u64(v, "offset"), cli_json_str(v, "type"),
               cli_json_str(v, "idstr"), cli_json_u64(v, "instance"), cli_json_u64(v, "id"),
               cli_json_u64(v, "version"), cli_json_u64(v, "size"));
        json_t *f = json_object_get(v, "fields");
        if (f) {
            char *text = json_dumps(f, JSON_COMPACT);
            printf(" %s", text ? text : "");
            free(text);
        }
        printf("\n");
    }
    printf("vmdesc: %s; EOF record: %s\n", json_is_true(json_object_get(rep, "vmdesc")) ? "yes" : "no",
           json_is_true(json_object_get(rep, "eof")) ? "yes" : "no");
    json_t *e = json_object_get(rep, "error");
    if (e && json_object_get(e, "offset")) {
        printf("BROKEN at offset %" PRIu64 ": %s\n", cli_json_u64(e, "offset"),
               cli_json_str(e, "reason"));
    } else if (e) {
        printf("BROKEN: %s\n", cli_json_str(e, "reason"));
    } else {
        printf("OK: the stream is whole and every checksum matches\n");
    }
}

static void analyzer_free(analyzer *a)
{
    for (size_t i = 0; a->blocks && i < a->nblocks; i++) {
        free(a->blocks[i].sends);
        json_decref(a->blocks[i].first_bad);
    }
    free(a->blocks);
    for (size_t i = 0; i < LM_MAX_SECTIONS; i++) {
        free(a->idstr[i]);
    }
    json_decref(a->sections);
    json_decref(a->commands);
    json_decref(a->vmdesc);
}

int cli_analyze(int argc, char **argv)
{
    const char *path = NULL;
    bool as_json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            as_json = true;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("Usage: livemig analyze FILE [--json]\n\n"
                   "Reads a stream saved with `migrate file:FILE` (plain or mapped-ram) and prints\n"
                   "its header, configuration, sections (device fields decoded when the stream\n"
                   "has a vmdesc, x-vmdesc), RAM per block, and checks every checksum.  A broken\n"
                   "file is reported with the byte offset where it stops making sense.\n"
                   "Exit status 0: whole and intact; 1: broken; 2: usage.\n");
            return CLI_EXIT_OK;
        } else if (!path && argv[i][0] != '-') {
            path = argv[i];
        } else {
            cli_errorf("analyze: unexpected argument '%s'", argv[i]);
            return CLI_EXIT_USAGE;
        }
    }
    if (!path) {
        cli_errorf("analyze: which file? (livemig analyze FILE [--json])");
        return CLI_EXIT_USAGE;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        cli_errorf("analyze: %s: %s", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return CLI_EXIT_FAIL;
    }
    analyzer a;
    memset(&a, 0, sizeof(a));
    a.size = (size_t)st.st_size;
    void *map = a.size ? mmap(NULL, a.size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (map == MAP_FAILED) {
        cli_errorf("analyze: cannot map %s: %s", path, strerror(errno));
        return CLI_EXIT_FAIL;
    }
    a.base = map;
    lm_rbuf_init(&a.r, a.base, a.size);
    a.sections = json_array();
    a.commands = json_array();
    parse_records(&a);
    json_t *rep = report(&a);
    if (as_json) {
        char *text = json_dumps(rep, JSON_INDENT(2));
        printf("%s\n", text ? text : "{}");
        free(text);
    } else {
        print_text(rep);
    }
    bool ok = json_is_true(json_object_get(rep, "ok"));
    json_decref(rep);
    analyzer_free(&a);
    if (map) {
        munmap(map, a.size);
    }
    return ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
