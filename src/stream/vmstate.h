/*
 * Non-iterative device state from a declarative field table: serialise,
 * load (with version checks), and describe as JSON (vmdesc).
 */
#ifndef LM_STREAM_VMSTATE_H
#define LM_STREAM_VMSTATE_H

#include <jansson.h>

#include "livemig/buffer.h"
#include "livemig/device.h"
#include "livemig/error.h"

int lm_vmstate_save(const lm_vmstate *vms, void *opaque, lm_wbuf *out, lm_error *err);
int lm_vmstate_load(const lm_vmstate *vms, void *opaque, uint32_t version, lm_rbuf *in,
                    lm_error *err);
/* {"vmsd_name", "version", "fields": [{"name", "type", "size"}]} — a new reference. */
json_t *lm_vmstate_describe(const lm_vmstate *vms);

#endif
