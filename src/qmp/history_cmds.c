/*
 * x-query-migration-history: the source's timeline of its last (or
 * current) migration, one entry per precopy pass (docs/timeline.md).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "livemig/engine.h"
#include "qmp/qmp.h"

static json_t *pass_json(const lm_pass_record *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "pass", qmp_u64(r->pass));
    json_object_set_new(o, "start-us", qmp_u64(r->start_us));
    json_object_set_new(o, "duration-us", qmp_u64(r->duration_us));
    json_object_set_new(o, "pages-dirtied", qmp_u64(r->pages_dirtied));
    json_object_set_new(o, "pages-sent", qmp_u64(r->pages_sent));
    json_object_set_new(o, "bytes-sent", qmp_u64(r->bytes_sent));
    json_object_set_new(o, "remaining", qmp_u64(r->remaining));
    json_object_set_new(o, "bandwidth", qmp_u64(r->bandwidth));
    json_object_set_new(o, "dirty-rate", qmp_u64(r->dirty_rate));
    json_object_set_new(o, "cpu-throttle-percentage", json_integer(r->cpu_throttle_percentage));
    json_object_set_new(o, "dirty-limit", json_boolean(r->dirty_limit_active));
    json_object_set_new(o, "dirty-limit-throttle-time-per-round",
                        qmp_u64(r->dirty_limit_throttle_time_per_round));
    json_object_set_new(o, "dirty-limit-ring-full-time", qmp_u64(r->dirty_limit_ring_full_time));
    json_object_set_new(o, "switchover-ack-pending", json_boolean(r->switchover_ack_pending));
    return o;
}

static json_t *cmd_query_history(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { NULL };
    if (qmp_args_check(args, known, err) < 0) {
        return NULL;
    }
    lm_pass_record *recs = calloc(LM_HISTORY_PASSES_MAX, sizeof(*recs));
    if (!recs) {
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    lm_history_info info;
    size_t n = lm_engine_query_history(opaque, recs, LM_HISTORY_PASSES_MAX, &info);
    json_t *passes = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(passes, pass_json(&recs[i]));
    }
    free(recs);
    json_t *o = json_object();
    json_object_set_new(o, "passes", passes);
    json_object_set_new(o, "capacity", json_integer(info.capacity));
    json_object_set_new(o, "dropped", qmp_u64(info.dropped));
    if (info.has_switchover) {
        json_object_set_new(o, "switchover-us", qmp_u64(info.switchover_us));
    }
    if (info.has_end) {
        json_object_set_new(o, "end-us", qmp_u64(info.end_us));
    }
    return o;
}

void qmp_register_history_commands(qmp_server *s, struct lm_engine *e)
{
    qmp_server_register(s, "x-query-migration-history", cmd_query_history, e);
}
