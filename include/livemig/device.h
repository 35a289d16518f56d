/*
 * Device state API.
 *
 * A VMM describes each device to the engine in one of two ways:
 *
 *  - Non-iterative devices (registers, small state) are described by a
 *    declarative field table (lm_vmstate).  The engine serialises the
 *    fields at switchover, loads them on the destination, and derives the
 *    JSON device description (vmdesc) from the same table.
 *
 *  - Iterative devices (large state that changes while the guest runs, as
 *    a GPU's or NIC's) implement lm_iter_ops.  They get a share of every
 *    precopy pass (iterative devices are never serialised behind one
 *    another) and report what remains through one query_pending() call.
 *
 * Guest RAM is not a device: it is registered with lm_engine_add_ram().
 */
#ifndef LIVEMIG_DEVICE_H
#define LIVEMIG_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "livemig/buffer.h"
#include "livemig/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lm_field_type {
    LM_FIELD_U8,
    LM_FIELD_U16,
    LM_FIELD_U32,
    LM_FIELD_U64,
    LM_FIELD_I64,
    LM_FIELD_BOOL,  /* stored as a C bool, one byte on the wire */
    LM_FIELD_BYTES, /* raw bytes, count = length */
} lm_field_type;

typedef struct lm_field {
    const char *name;
    size_t offset;      /* offset in the device's state struct */
    lm_field_type type;
    uint32_t count;     /* array elements (or byte length for BYTES); 1 for scalars */
    uint32_t since;     /* first version that carries the field (0 = always) */
} lm_field;

#define LM_FIELD_SCALAR(st, member, t) \
    { #member, offsetof(st, member), (t), 1, 0 }
#define LM_FIELD_ARRAY(st, member, t, n) \
    { #member, offsetof(st, member), (t), (n), 0 }

typedef struct lm_vmstate {
    const char *name;     /* used in vmdesc */
    uint32_t version;     /* version written by this build */
    uint32_t min_version; /* oldest version this build can load */
    const lm_field *fields;
    size_t nfields;
    /* Optional hooks; may be NULL. */
    int (*pre_save)(void *opaque, lm_error *err);
    int (*post_load)(void *opaque, uint32_t version, lm_error *err);
} lm_vmstate;

/* What an iterative device still has to send. */
typedef struct lm_pending {
    uint64_t precopy_bytes;  /* can still move while the guest runs */
    uint64_t stopcopy_bytes; /* must move while the guest is stopped */
} lm_pending;

typedef struct lm_iter_ops {
    /* Called on the source when the migration starts. */
    int (*save_setup)(void *opaque, lm_wbuf *out, lm_error *err);
    /* Append at most about `budget` bytes of precopy data to out.  Returns
     * 1 when the device has nothing more to send for now, 0 when it has
     * more, or a negative errno. */
    int (*save_iterate)(void *opaque, lm_wbuf *out, uint64_t budget, lm_error *err);
    /* Called with the guest stopped: append everything that remains. */
    int (*save_complete)(void *opaque, lm_wbuf *out, lm_error *err);
    /* exact=false must be cheap (called often); exact=true may sync. */
    void (*query_pending)(void *opaque, bool exact, lm_pending *out);
    /* Destination: load one non-empty chunk written by
     * save_setup/iterate/complete, in the order they were written. */
    int (*load)(void *opaque, lm_rbuf *in, uint32_t version, lm_error *err);
    /* Source: the migration ended (completed, failed or cancelled). */
    void (*save_cleanup)(void *opaque);
    /* Destination, switchover-ack on: asked once as the load starts; true
     * when the device will call lm_engine_approve_switchover() once it is
     * ready (QEMU's switchover_ack_needed).  May be NULL. */
    bool (*switchover_ack_needed)(void *opaque);
} lm_iter_ops;

#ifdef __cplusplus
}
#endif

#endif
