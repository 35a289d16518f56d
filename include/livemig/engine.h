/*
 * liblivemig engine: the public face of the migration engine.
 *
 * An embedder (a VMM) creates one engine, registers its RAM blocks and
 * devices, and hands three callbacks over (stop vCPUs, start vCPUs,
 * throttle vCPUs).  It then either starts an outgoing migration
 * (lm_engine_migrate) or waits for an incoming one (lm_engine_incoming);
 * the engine runs its own threads and reports progress through events and
 * lm_engine_query().
 *
 * Thread safety: every lm_engine_* function may be called from any thread.
 * The engine never calls back into the embedder while holding its own
 * lock, and callbacks may call lm_engine_query().
 */
#ifndef LIVEMIG_ENGINE_H
#define LIVEMIG_ENGINE_H

#include "livemig/api.h"

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "livemig/device.h"
#include "livemig/error.h"
#include "livemig/ram.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_engine lm_engine;

/* Migration status, named as QEMU's MigrationStatus. */
typedef enum lm_status {
    LM_STATUS_NONE,
    LM_STATUS_SETUP,
    LM_STATUS_CANCELLING,
    LM_STATUS_CANCELLED,
    LM_STATUS_ACTIVE,
    LM_STATUS_POSTCOPY_ACTIVE,
    LM_STATUS_POSTCOPY_PAUSED,
    LM_STATUS_POSTCOPY_RECOVER_SETUP,
    LM_STATUS_POSTCOPY_RECOVER,
    LM_STATUS_COMPLETED,
    LM_STATUS_FAILED,
    LM_STATUS_PRE_SWITCHOVER,
    LM_STATUS_DEVICE,
    /* Postcopy's device phase: the destination loads the device state and
     * has not run the guest; a failure here restarts the source guest. */
    LM_STATUS_POSTCOPY_DEVICE,
    LM_STATUS__COUNT
} lm_status;

LM_API const char *lm_status_name(lm_status s);

typedef enum lm_event_kind {
    LM_EVENT_MIGRATION,      /* status changed: ev.status */
    LM_EVENT_MIGRATION_PASS, /* a new dirty-sync pass: ev.pass */
    /* x-auto-postcopy acted at pass ev.pass: ev.detail names what it did
     * ("postcopy", "dirty-limit", "auto-converge" or "none"). */
    LM_EVENT_AUTO_POSTCOPY,
} lm_event_kind;

typedef struct lm_event {
    lm_event_kind kind;
    lm_status status;
    uint64_t pass;
    const char *detail; /* NULL unless the kind says otherwise; valid during the call */
} lm_event;

/* Growable structs (lm_callbacks, lm_info, lm_dirtyrate_info, and
 * lm_ram_desc in ram.h): the caller sets the first member, struct_size, to
 * sizeof() the struct as its headers declare it (the LM_*_INIT macros do).
 * The library reads (callbacks, descriptions) or writes (query results)
 * only that many bytes, so a program built against an older, smaller
 * layout keeps working with a newer library: the members it does not know
 * count as zero / NULL.  A query sets struct_size to the bytes it wrote,
 * so a newer program sees what an older library did not fill.  0 stands
 * for the first layout (livemig 0.1).  Members are only ever added at the
 * end.  (lm_vmstate, lm_field and lm_iter_ops are fixed: a new need gets
 * a new struct.) */
typedef struct lm_callbacks {
    size_t struct_size; /* sizeof(lm_callbacks), or 0 (see above) */
    /* Stop every vCPU and return once none runs (guest memory frozen). */
    void (*vm_stop)(void *opaque);
    /* Start (or resume) the vCPUs. */
    void (*vm_start)(void *opaque);
    /* Optional: is the guest running now?  The engine asks before it stops
     * the guest for switchover, so that a failed or cancelled migration
     * restarts only a guest that was running.  NULL: assume running. */
    bool (*vm_is_running)(void *opaque);
    /* Make each vCPU sleep `percent` % of its time (0 = no throttle). */
    void (*vm_throttle)(void *opaque, int percent);
    /* A migration event.  Called from engine threads, without engine locks. */
    void (*on_event)(void *opaque, const lm_event *ev);
    /* Destination: the migration finished loading (success) or failed.  On
     * success the engine has already called vm_start if the guest is to run
     * (autostart on and the source's guest was running); otherwise the guest
     * waits for the embedder to start it.  May be NULL. */
    void (*incoming_done)(void *opaque, bool success);
} lm_callbacks;

#define LM_CALLBACKS_INIT { .struct_size = sizeof(lm_callbacks) }

LM_API lm_engine *lm_engine_new(const lm_callbacks *cb, void *opaque, lm_error *err);
LM_API void lm_engine_free(lm_engine *e);

/* Registration: before the first migration. */
LM_API int lm_engine_add_ram(lm_engine *e, const lm_ram_desc *desc,
                      lm_ram_block **block_out, lm_error *err);
LM_API int lm_engine_add_device(lm_engine *e, const char *idstr, uint32_t instance,
                         const lm_vmstate *vms, void *opaque, lm_error *err);
LM_API int lm_engine_add_iterative(lm_engine *e, const char *idstr, uint32_t instance,
                            uint32_t version, const lm_iter_ops *ops,
                            void *opaque, lm_error *err);
LM_API void lm_engine_set_uuid(lm_engine *e, const uint8_t uuid[16]);
/* Destination only: start the guest when the migration completes (default
 * true).  Off is QEMU's -S: the guest stays paused until the embedder
 * starts it. */
LM_API void lm_engine_set_autostart(lm_engine *e, bool autostart);

/* Capabilities and parameters, by QEMU's names (qapi/migration.json). */
typedef enum lm_param_type {
    LM_PARAM_U64,
    LM_PARAM_BOOL,
    LM_PARAM_STR, /* free text or one of `choices` */
} lm_param_type;

typedef struct lm_param_desc {
    const char *name;
    lm_param_type type;
    uint64_t min, max;   /* LM_PARAM_U64 bounds, inclusive */
    const char *const *choices; /* LM_PARAM_STR enumerations, NULL-terminated; NULL = free text */
} lm_param_desc;

LM_API const char *const *lm_capability_names(void); /* NULL-terminated */
LM_API int lm_engine_set_capability(lm_engine *e, const char *name, bool on, lm_error *err);
LM_API int lm_engine_get_capability(lm_engine *e, const char *name, bool *on, lm_error *err);

LM_API const lm_param_desc *lm_param_descs(void); /* terminated by name == NULL */
/* The checks a set makes first, against the parameter's row alone (bounds,
 * choices, length), setting nothing: for a caller that checks several
 * values before it sets any (QMP's migrate-set-parameters). */
LM_API int lm_param_check_u64(const char *name, uint64_t v, lm_error *err);
LM_API int lm_param_check_str(const char *name, const char *v, lm_error *err);
LM_API int lm_engine_set_param_u64(lm_engine *e, const char *name, uint64_t v, lm_error *err);
LM_API int lm_engine_set_param_bool(lm_engine *e, const char *name, bool v, lm_error *err);
LM_API int lm_engine_set_param_str(lm_engine *e, const char *name, const char *v, lm_error *err);
LM_API int lm_engine_get_param_u64(lm_engine *e, const char *name, uint64_t *v, lm_error *err);
LM_API int lm_engine_get_param_bool(lm_engine *e, const char *name, bool *v, lm_error *err);
/* Copies into buf (NUL-terminated, truncated to bufsz). */
LM_API int lm_engine_get_param_str(lm_engine *e, const char *name, char *buf, size_t bufsz, lm_error *err);

/* Source: start migrating to uri ("unix:PATH", "tcp:HOST:PORT", "fd:N",
 * "exec:CMD", "file:PATH[,offset=N]").  Returns once the migration thread
 * runs; progress is reported by events and lm_engine_query(). */
LM_API int lm_engine_migrate(lm_engine *e, const char *uri, bool resume, lm_error *err);
/* Destination: listen on (or open) uri and load the incoming migration. */
LM_API int lm_engine_incoming(lm_engine *e, const char *uri, lm_error *err);
/* Cancel the running migration (source or destination). */
LM_API int lm_engine_cancel(lm_engine *e, lm_error *err);
/* The migration threads running now (QEMU's query-migrationthreads): the
 * source's migration thread "mig/src/main" and its multifd senders
 * "mig/src/send_N", each with its kernel thread id.  fn is called once per
 * thread under an internal lock, so it must not call into the engine.
 * Returns how many there were.  Any thread. */
LM_API size_t lm_engine_migration_threads(lm_engine *e,
                                          void (*fn)(void *opaque, const char *name,
                                                     int thread_id),
                                          void *opaque);
/* Leave a pause state (pre-switchover) named by `state`. */
LM_API int lm_engine_continue(lm_engine *e, const char *state, lm_error *err);

/* Postcopy (docs/postcopy.md).  Needs capability postcopy-ram on both
 * sides and a socket transport.
 *
 * Source: switch the migration in progress to postcopy at the next chance
 * (right after lm_engine_migrate(): as soon as it has set up).  Refused
 * when no migration is in progress; the request ends with its migration. */
LM_API int lm_engine_start_postcopy(lm_engine *e, lm_error *err);
/* Either side, in postcopy-active or postcopy-recover: break the
 * connection on purpose; both sides go to postcopy-paused (migrate-pause). */
LM_API int lm_engine_pause(lm_engine *e, lm_error *err);
/* Destination, in postcopy-paused: listen on uri for the source's resume
 * (migrate-recover).  The source then calls lm_engine_migrate(uri, true). */
LM_API int lm_engine_recover(lm_engine *e, const char *uri, lm_error *err);
/* Destination: thread id of vCPU `index`, for postcopy-blocktime's
 * per-vCPU figures.  Call at registration time. */
#define LM_MAX_VCPUS 64
LM_API int lm_engine_set_vcpu_thread(lm_engine *e, unsigned index, int tid, lm_error *err);

/* True while this engine is the destination of a migration (from
 * lm_engine_incoming() until the load finished or failed). */
LM_API bool lm_engine_is_incoming(lm_engine *e);

#define LM_URI_MAX 512

/* x-downtime-breakdown: where the downtime of the last switchover went. */
#define LM_DOWNTIME_PARTS_MAX 64
typedef struct lm_downtime_part {
    char name[48];  /* "stop", "sync", "ram-tail", "save:DEV", "dst:load:DEV", ... */
    uint64_t us;
} lm_downtime_part;

typedef struct lm_downtime_breakdown {
    uint64_t downtime_us;          /* guest stopped here .. the destination confirmed */
    uint64_t expected_us;          /* expected-downtime at the switchover decision */
    uint64_t fixed_us;             /* its part that does not depend on bytes */
    unsigned nexpected;            /* expected_us term by term: "stop", "sync", */
    lm_downtime_part expected[8];  /* "round-trip", "rest", "tail", "bytes" */
    unsigned nparts;               /* parts: they tile downtime_us */
    lm_downtime_part parts[LM_DOWNTIME_PARTS_MAX];
    unsigned ndest;                /* the destination's own parts, on its clock */
    lm_downtime_part dest[LM_DOWNTIME_PARTS_MAX];
} lm_downtime_breakdown;

/* x-convergence: the source's forecast, recomputed at every dirty sync
 * (docs/architecture.md, convergence).  Rates in bytes/s. */
#define LM_CONVERGENCE_HISTORY 8
typedef struct lm_convergence {
    bool valid;                /* two passes measured */
    uint64_t pass;
    uint64_t dirty_rate;       /* how fast the guest dirties: the larger of the two below */
    uint64_t tracker_dirty_rate; /* distinct pages newly dirty over the last pass */
    uint64_t vcpu_dirty_rate;  /* the vCPUs' own count (lm_vcpu_ops), 0 without it */
    uint64_t bandwidth;        /* what precopy moved over the last pass */
    double ratio;              /* dirty_rate / bandwidth */
    char trend[16];            /* "shrinking", "flat", "growing" */
    unsigned npending;         /* remaining bytes at the last syncs, oldest first */
    uint64_t pending[LM_CONVERGENCE_HISTORY];
    unsigned stalled_passes;   /* in a row: not shrinking while the guest dirties at link speed */
    bool never;                /* will not converge at this rate */
    uint64_t eta_ms;           /* time to completion at this rate (when !never) */
    uint64_t downtime_ms;      /* what switching over now would cost */
    int heavy_vcpu;            /* the vCPU dirtying most, -1: unknown */
    unsigned heavy_vcpu_percent;
    char heavy_block[LM_RAM_NAME_MAX]; /* the block holding most of what remains */
    unsigned heavy_block_percent;
    char reason[256];          /* in words */
    /* x-auto-postcopy: "" (off), "watching", or what it did: "postcopy",
     * "dirty-limit", "auto-converge", "none" (nothing to fall back to). */
    char auto_postcopy[16];
    uint64_t auto_postcopy_pass;
} lm_convergence;

/* A snapshot of the migration's state and statistics (query-migrate). */
typedef struct lm_info {
    size_t struct_size;         /* in: sizeof(lm_info); out: bytes filled */
    lm_status status;
    bool incoming;              /* this side is the destination */
    bool has_stats;             /* a migration ran since start-up */
    uint64_t total_time_ms;     /* running migration: so far */
    uint64_t setup_time_ms;
    uint64_t downtime_ms;       /* completed: guest stopped on src -> runs on dst */
    uint64_t expected_downtime_ms;
    uint64_t remaining;         /* system-wide bytes still to move (RAM + devices) */
    /* RAM statistics (query-migrate's "ram" object). */
    uint64_t ram_transferred;
    uint64_t ram_remaining;
    uint64_t ram_total;
    uint64_t ram_duplicate;     /* zero pages */
    uint64_t ram_normal;        /* pages sent as data */
    uint64_t ram_normal_bytes;
    uint64_t ram_page_size;
    uint64_t dirty_pages_rate;  /* pages per second, last pass */
    uint64_t dirty_sync_count;  /* passes */
    uint64_t precopy_bytes;
    uint64_t downtime_bytes;
    uint64_t postcopy_bytes;
    uint64_t postcopy_requests;
    uint64_t multifd_bytes;     /* sent (source) / received (destination) on multifd channels */
    /* zero-copy-send: channel flushes (one per channel at each dirty sync)
     * at which the kernel had copied every send instead of zero-copying;
     * the MSG_ZEROCOPY sends, and how many of them the kernel copied. */
    uint64_t dirty_sync_missed_zero_copy;
    uint64_t zero_copy_sends;
    uint64_t zero_copy_copied;
    double mbps;                /* throughput, megabits per second */
    uint64_t pages_per_second;
    uint64_t device_bytes;      /* device state sent */
    int cpu_throttle_percentage;
    char dirty_tracker[32];     /* "uffd-wp-async", "manual", "dirty-log", "…+dirty-log" */
    char error_desc[LM_ERROR_MSG_MAX];
    char socket_address[LM_URI_MAX]; /* listening address (port 0 resolved) */
    /* Destination with postcopy-blocktime: time during which every vCPU
     * was blocked on a missing page at once, and each vCPU's own total. */
    bool has_blocktime;
    uint64_t postcopy_blocktime_ms;
    unsigned nvcpus;
    uint64_t vcpu_blocktime_ms[LM_MAX_VCPUS];
    /* Source, once switched over. */
    bool has_downtime_breakdown;
    lm_downtime_breakdown downtime_breakdown;
    uint64_t switchover_bandwidth; /* bytes/s the stop-copy is expected to get */
    uint64_t destination_backlog;  /* bytes it had not loaded at its last report */
    uint64_t destination_drains;   /* times the source waited for it to catch up */
    lm_convergence convergence;    /* source: x-convergence */
    /* dirty-limit: QEMU's dirty-limit-throttle-time-per-round (µs), and
     * whether a migration's limits are in force. */
    uint64_t dirty_limit_throttle_time_per_round;
    bool dirty_limit_active;
    /* switchover-ack: the source is ready to switch over and waits for the
     * destination's ack / the ack arrived (source); approvals still
     * outstanding (destination). */
    bool switchover_ack_waiting;
    bool switchover_acked;
    unsigned switchover_ack_pending;
    /* Source: the rate (bytes/s) the destination said its RAM loads reach
     * (its last BACKLOG; 0: not said), which expected-downtime uses when
     * it is below switchover_bandwidth. */
    uint64_t destination_load_rate;
} lm_info;

#define LM_INFO_INIT { .struct_size = sizeof(lm_info) }

/* Fills the first out->struct_size bytes of *out (see lm_callbacks). */
LM_API void lm_engine_query(lm_engine *e, lm_info *out);

/* Dirty-rate measurement (QEMU's calc-dirty-rate / query-dirty-rate): how
 * fast the guest dirties its RAM, measured with the migration's own dirty
 * tracker while no migration runs.  mode: "dirty-bitmap" (our tracker; the
 * default when NULL), "page-sampling" and "dirty-ring" are refused.
 * calc_time_ms: 50..60000.  sample_pages: page-sampling's pages per GiB,
 * recorded as QEMU does (0 = its default, 512; else 128..4096).  Returns at once; the measurement runs on its own
 * thread.  Refused while a migration runs, and a migration is refused while
 * a measurement runs. */
LM_API int lm_engine_calc_dirty_rate(lm_engine *e, uint64_t calc_time_ms, const char *mode,
                                     uint64_t sample_pages, lm_error *err);

typedef enum lm_dirtyrate_status {
    LM_DIRTYRATE_UNSTARTED,
    LM_DIRTYRATE_MEASURING,
    LM_DIRTYRATE_MEASURED,
} lm_dirtyrate_status;

#define LM_DIRTYRATE_MAX_BLOCKS 256

typedef struct lm_dirtyrate_block {
    char name[LM_RAM_NAME_MAX];
    uint64_t dirty_pages;    /* distinct pages written during the window */
    uint64_t dirty_rate;     /* MiB/s (QEMU's "MB/s") */
} lm_dirtyrate_block;

/* One vCPU's share, where the embedder counts them (lm_vcpu_ops): pages
 * it wrote in the window (a page written twice counts twice). */
typedef struct lm_dirtyrate_vcpu {
    uint64_t dirty_pages;
    uint64_t dirty_rate;     /* MiB/s */
} lm_dirtyrate_vcpu;

typedef struct lm_dirtyrate_info {
    size_t struct_size;      /* in: sizeof(lm_dirtyrate_info); out: bytes filled */
    lm_dirtyrate_status status;
    int64_t start_time;      /* seconds since the Epoch */
    uint64_t calc_time_ms;   /* asked for while measuring, measured once done */
    char mode[16];
    uint64_t sample_pages;
    bool has_rate;           /* measured and the tracker worked */
    uint64_t dirty_rate;     /* MiB/s over all blocks */
    uint64_t dirty_pages;
    /* The window, CLOCK_MONOTONIC ns: lets a caller compare the rate with
     * its own counters over exactly the same time. */
    uint64_t window_start_ns;
    uint64_t window_end_ns;
    char tracker[32];        /* the tracker that measured */
    char error[LM_ERROR_MSG_MAX]; /* measured without a rate: why */
    size_t nblocks;
    lm_dirtyrate_block blocks[LM_DIRTYRATE_MAX_BLOCKS];
    unsigned nvcpus;         /* 0 without lm_vcpu_ops */
    lm_dirtyrate_vcpu vcpus[LM_MAX_VCPUS];
} lm_dirtyrate_info;

#define LM_DIRTYRATE_INFO_INIT { .struct_size = sizeof(lm_dirtyrate_info) }

/* Fills the first out->struct_size bytes of *out (see lm_callbacks). */
LM_API void lm_engine_query_dirty_rate(lm_engine *e, lm_dirtyrate_info *out);

/* x-query-migration-history: the source's timeline of its last (or
 * current) migration, one record per precopy pass, the pass ending at
 * the dirty sync that measured it.  Times are µs since the migration
 * started. */
typedef struct lm_pass_record {
    uint64_t pass;              /* dirty-sync-count at the sync that ended it */
    uint64_t start_us;
    uint64_t duration_us;
    uint64_t pages_dirtied;     /* newly dirty pages found by that sync */
    uint64_t pages_sent;        /* pages (normal and zero) sent during the pass */
    uint64_t bytes_sent;        /* bytes sent during the pass, on every channel */
    uint64_t remaining;         /* bytes still to move after the sync (RAM + devices) */
    uint64_t bandwidth;         /* bytes/s over the pass */
    uint64_t dirty_rate;        /* bytes/s dirtied over the pass */
    int cpu_throttle_percentage; /* auto-converge's throttle during the pass */
    /* dirty-limit's state during the pass (issue 12 §1: the dirty-limit
     * capability fills these; 0 while it is off), QEMU's query-migrate
     * names: whether any vCPU was held to its limit, and the throttle
     * time per round and the ring-full time, in µs. */
    bool dirty_limit_active;
    uint64_t dirty_limit_throttle_time_per_round;
    uint64_t dirty_limit_ring_full_time;
    bool switchover_ack_pending; /* switchover-ack: the source waits for the ack (since it was first ready) */
} lm_pass_record;

typedef struct lm_history_info {
    uint64_t start_ns;          /* CLOCK_MONOTONIC, the migration started */
    unsigned capacity;          /* records kept at most (the newest) */
    uint64_t dropped;           /* older records forgotten */
    bool has_switchover;
    uint64_t switchover_us;     /* the guest stopped for the switchover */
    bool has_end;
    uint64_t end_us;            /* the migration ended (completed, failed, cancelled) */
} lm_history_info;

/* The engine keeps the newest LM_HISTORY_PASSES_MAX passes. */
#define LM_HISTORY_PASSES_MAX 4096
/* Copies at most max of the newest records, oldest first, into out and
 * returns how many; info (may be NULL) gets the summary. */
LM_API size_t lm_engine_query_history(lm_engine *e, lm_pass_record *out, size_t max,
                                      lm_history_info *info);

/* switchover-ack (QEMU 8.1), destination side: with the capability on
 * (and return-path), the source does not switch over until every device
 * whose lm_iter_ops.switchover_ack_needed said yes at the start of the
 * load has called this (QEMU's qemu_loadvm_approve_switchover); the
 * destination then sends SWITCHOVER_ACK on the return path.  Any thread
 * may call it.  -EINVAL when no approval is outstanding. */
LM_API int lm_engine_approve_switchover(lm_engine *e, lm_error *err);
/* Whether the switchover-ack capability is on (QEMU's
 * migrate_switchover_ack()): a device's save handlers ask it before
 * writing what only an acking destination needs. */
LM_API bool lm_engine_switchover_ack(lm_engine *e);

#ifdef __cplusplus
}
#endif

#endif
