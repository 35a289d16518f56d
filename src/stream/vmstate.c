#include <errno.h>
#include <string.h>

#include "stream/vmstate.h"

static size_t elem_size(lm_field_type t)
{
    switch (t) {
    case LM_FIELD_U8:
    case LM_FIELD_BOOL:
    case LM_FIELD_BYTES:
        return 1;
    case LM_FIELD_U16:
        return 2;
    case LM_FIELD_U32:
        return 4;
    case LM_FIELD_U64:
    case LM_FIELD_I64:
        return 8;
    }
    return 0;
}

static const char *type_name(lm_field_type t)
{
    static const char *const names[] = {
        [LM_FIELD_U8] = "uint8",  [LM_FIELD_U16] = "uint16", [LM_FIELD_U32] = "uint32",
        [LM_FIELD_U64] = "uint64", [LM_FIELD_I64] = "int64",  [LM_FIELD_BOOL] = "bool",
        [LM_FIELD_BYTES] = "buffer",
    };
    return names[t];
}

static bool field_present(const lm_field *f, uint32_t version)
{
    return f->since == 0 || f->since <= version;
}

int lm_vmstate_save(const lm_vmstate *vms, void *opaque, lm_wbuf *out, lm_error *err)
{
    if (vms->pre_save) {
        int ret = vms->pre_save(opaque, err);
        if (ret < 0) {
            return ret;
        }
    }
    for (size_t i = 0; i < vms->nfields; i++) {
        const lm_field *f = &vms->fields[i];
        const uint8_t *base = (const uint8_t *)opaque + f->offset;
        if (!field_present(f, vms->version)) {
            continue;
        }
        for (uint32_t k = 0; k < f->count; k++) {
            const uint8_t *p = base + (size_t)k * elem_size(f->type);
            switch (f->type) {
            case LM_FIELD_U8:
                lm_wbuf_put_u8(out, *p);
                break;
            case LM_FIELD_BOOL:
                lm_wbuf_put_u8(out, *(const bool *)p ? 1 : 0);
                break;
            case LM_FIELD_U16: {
                uint16_t v;
                memcpy(&v, p, 2);
                lm_wbuf_put_be16(out, v);
                break;
            }
            case LM_FIELD_U32: {
                uint32_t v;
                memcpy(&v, p, 4);
                lm_wbuf_put_be32(out, v);
                break;
            }
            case LM_FIELD_U64:
            case LM_FIELD_I64: {
                uint64_t v;
                memcpy(&v, p, 8);
                lm_wbuf_put_be64(out, v);
                break;
            }
            case LM_FIELD_BYTES:
                lm_wbuf_put(out, base, f->count);
                k = f->count;
                break;
            }
        }
    }
    if (out->error) {
        return lm_error_set(err, out->error, "device '%s': out of memory while saving", vms->name);
    }
    return 0;
}

int lm_vmstate_load(const lm_vmstate *vms, void *opaque, uint32_t version, lm_rbuf *in,
                    lm_error *err)
{
    if (version > vms->version || version < vms->min_version) {
        return lm_error_set(err, -EINVAL,
                            "device '%s': stream has version %u, this side loads %u..%u",
                            vms->name, version, vms->min_version, vms->version);
    }
    for (size_t i = 0; i < vms->nfields; i++) {
        const lm_field *f = &vms->fields[i];
        uint8_t *base = (uint8_t *)opaque + f->offset;
        if (!field_present(f, version)) {
            continue;
        }
        int ret = 0;
        for (uint32_t k = 0; k < f->count && ret == 0; k++) {
            uint8_t *p = base + (size_t)k * elem_size(f->type);
            switch (f->type) {
            case LM_FIELD_U8:
                ret = lm_rbuf_get_u8(in, p);
                break;
            case LM_FIELD_BOOL: {
                uint8_t v = 0;
                ret = lm_rbuf_get_u8(in, &v);
                if (ret == 0 && v > 1) {
                    return lm_error_set(err, -EBADMSG, "device '%s': field '%s' is not a bool",
                                        vms->name, f->name);
                }
                *(bool *)p = v;
                break;
            }
            case LM_FIELD_U16: {
                uint16_t v = 0;
                ret = lm_rbuf_get_be16(in, &v);
                memcpy(p, &v, 2);
                break;
            }
            case LM_FIELD_U32: {
                uint32_t v = 0;
                ret = lm_rbuf_get_be32(in, &v);
                memcpy(p, &v, 4);
                break;
            }
            case LM_FIELD_U64:
            case LM_FIELD_I64: {
                uint64_t v = 0;
                ret = lm_rbuf_get_be64(in, &v);
                memcpy(p, &v, 8);
                break;
            }
            case LM_FIELD_BYTES:
                ret = lm_rbuf_get(in, base, f->count);
                k = f->count;
                break;
            }
        }
        if (ret < 0) {
            return lm_error_set(err, -EBADMSG, "device '%s': truncated at field '%s'", vms->name,
                                f->name);
        }
    }
    if (lm_rbuf_remaining(in)) {
        return lm_error_set(err, -EBADMSG, "device '%s': %zu unexpected trailing bytes", vms->name,
                            lm_rbuf_remaining(in));
    }
    if (vms->post_load) {
        return vms->post_load(opaque, version, err);
    }
    return 0;
}

json_t *lm_vmstate_describe(const lm_vmstate *vms)
{
    json_t *fields = json_array();
    for (size_t i = 0; i < vms->nfields; i++) {
        const lm_field *f = &vms->fields[i];
        if (!field_present(f, vms->version)) {
            continue;
        }
        json_array_append_new(fields, json_pack("{s:s, s:s, s:I}", "name", f->name, "type",
                                                type_name(f->type), "size",
                                                (json_int_t)(elem_size(f->type) * f->count)));
    }
    return json_pack("{s:s, s:I, s:o}", "vmsd_name", vms->name, "version",
                     (json_int_t)vms->version, "fields", fields);
}
