/*
 * The engine's private state, shared by the core modules (engine.c: API and
 * registration; state.c: state machine and events; params.c: capabilities
 * and parameters; migration.c: the source's migration thread; incoming.c:
 * the destination's load thread; devices.c: device sections).
 */
#ifndef LM_CORE_ENGINE_INTERNAL_H
#define LM_CORE_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "channel/channel.h"
#include "channel/ratelimit.h"
#include "channel/transport.h"
#include "common/threadlist.h"
#include "core/breakdown.h"
#include "core/convergence.h"
#include "core/history.h"
#include "livemig/engine.h"
#include "livemig/tls.h"
#include "ram/dirty.h"
#include "ram/multifd.h"
#include "ram/multifd_wire.h"
#include "ram/ram_save.h"
#include "stream/format.h"

typedef struct lm_device_entry {
    char idstr[256];
    uint32_t instance;
    uint32_t section_id;
    const lm_vmstate *vms;    /* non-iterative */
    const lm_iter_ops *ops;   /* iterative */
    uint32_t version;         /* iterative devices' stream version */
    void *opaque;
    bool pass_done;           /* iterative: nothing more this pass */
} lm_device_entry;

enum lm_capability {
    LM_CAP_EVENTS,
    LM_CAP_PAUSE_BEFORE_SWITCHOVER,
    LM_CAP_VALIDATE_UUID,
    LM_CAP_AUTO_CONVERGE,
    LM_CAP_RETURN_PATH,
    LM_CAP_POSTCOPY_RAM,
    LM_CAP_POSTCOPY_PREEMPT,
    LM_CAP_POSTCOPY_BLOCKTIME,
    LM_CAP_MULTIFD,
    LM_CAP_ZERO_COPY_SEND, /* the same switch as the zero-copy-send parameter */
    LM_CAP_MAPPED_RAM,
    LM_CAP_X_CHECKSUM, /* page data checksums on any transport (always on for file:) */
    LM_CAP_DIRTY_LIMIT,      /* throttle each vCPU to vcpu-dirty-limit (dirtylimit.c) */
    LM_CAP_X_AUTO_POSTCOPY,  /* switch to postcopy when precopy stalls (convergence.c) */
    LM_CAP_SWITCHOVER_ACK, /* the destination's devices hold the switchover until ready */
    LM_CAP__COUNT
};

typedef struct lm_params {
    uint64_t max_bandwidth;              /* bytes/s, 0 = unlimited */
    uint64_t downtime_limit;             /* ms */
    uint64_t avail_switchover_bandwidth; /* bytes/s, 0 = use the measured rate */
    uint64_t throttle_trigger_threshold; /* percent */
    uint64_t cpu_throttle_initial;
    uint64_t cpu_throttle_increment;
    uint64_t max_cpu_throttle;
    bool cpu_throttle_tailslow;
    bool x_vmdesc;                       /* send the JSON device description */
    enum lm_dirty_tracker_kind x_dirty_tracker;
    uint64_t max_postcopy_bandwidth;     /* bytes/s of the background stream, 0 = unlimited */
    uint64_t multifd_channels;           /* 1..64 */
    enum lm_multifd_compression multifd_compression;
    uint64_t multifd_zstd_level;         /* 0..20 (0: zstd's default) */
    enum lm_zero_detection zero_page_detection;
    bool zero_copy_send;                 /* MSG_ZEROCOPY on multifd senders */
    char tls_creds[128];                 /* id of a tls-creds-* object; "": no TLS */
    char tls_hostname[256];              /* the server certificate's name; "": the tcp: host */
    char tls_authz[128];                 /* id of an authz-* object checking clients */
    uint64_t x_handshake_timeout;        /* ms an incoming connection may take to say hello */
    uint64_t x_vcpu_dirty_limit_period;  /* ms between the dirty-limit controller's samples */
    uint64_t vcpu_dirty_limit;           /* MiB/s per vCPU under a dirty-limit migration */
    uint64_t x_auto_postcopy_passes;     /* stalled passes before x-auto-postcopy acts */
    uint64_t x_auto_postcopy_time;       /* ms of precopy not shrinking before it acts, 0: no bound */
    bool x_dirty_hot_groups;             /* uffd-wp leaves hot 2 MiB groups writable (dirty.h) */
} lm_params;

/* Statistics of the current (or last) migration; guarded by the engine lock
 * except where noted. */
typedef struct lm_stats {
    uint64_t start_ns;
    uint64_t setup_ns;       /* setup time */
    uint64_t end_ns;         /* 0 while running */
    uint64_t stop_ns;        /* guest stopped for switchover */
    uint64_t downtime_ns;
    uint64_t passes;
    uint64_t bandwidth;      /* bytes/s measured over the last pass */
    uint64_t dirty_pages_rate;
    uint64_t pending_ram;    /* RAM dirty bytes at the last sync */
    uint64_t pending_devices;/* iterative devices' stop-copy bytes at the last sync */
    uint64_t precopy_bytes;
    uint64_t downtime_bytes;
    uint64_t device_bytes;
    uint64_t pages_per_second;
    int throttle_percent;
    char dirty_tracker[32];
    uint64_t multifd_bytes;  /* of the last migration, once it ended */
    uint64_t zc_missed;      /* dirty-sync-missed-zero-copy, once it ended */
    uint64_t zc_sends;       /* zero-copy-send: MSG_ZEROCOPY sends, once it ended */
    uint64_t zc_copied;      /* of those, the ones the kernel copied */
    /* The switchover's accounting (docs/architecture.md, convergence). */
    uint64_t expected_downtime_ns; /* computed at the last dirty sync */
    uint64_t expected_fixed_ns;    /* its part that does not depend on bytes */
    lm_bd_fixed expected_parts;    /* that fixed part, term by term */
    uint64_t expected_bytes_ns;    /* and the part that moves the bytes */
    uint64_t switchover_bw;  /* bytes/s the stop-copy is expected to get */
    uint64_t sync_ns;        /* the last dirty sync took (not the sync point before it) */
    uint64_t rtt_ns;         /* lowest PING..BACKLOG round trip (0: none yet) */
    uint64_t rtt_now_ns;     /* the last empty PING..BACKLOG round trip (0: none yet) */
    uint64_t dest_lag_ns;    /* the last PING..BACKLOG: the destination caught up */
    uint64_t dest_backlog;   /* bytes the destination had not loaded at its last BACKLOG */
    uint64_t dest_load_bw;   /* bytes/s its RAM loads reached on its CPU (0: not said) */
    uint64_t tail_bw;        /* bytes/s expected-downtime gave the tail (with dest_load_bw) */
    uint64_t tail_probe_ns;  /* the last pass's quickest slice beyond its bytes, per run */
    uint64_t mf_end_probe_ns; /* multifd: the last pass's sync point (the tail's END is one) */
    uint64_t tail_run_bw;    /* bytes/s the tail's runs were priced against */
    bool tail_by_runs;       /* the tail was priced by its runs (lm_bd_run_ns) */
    uint64_t drains;         /* PING..BACKLOG round trips */
    bool has_breakdown;      /* source: the switchover ended, bd holds it */
    uint64_t bd_expected_ns; /* expected downtime at the switchover decision */
    uint64_t bd_fixed_ns;    /* the fixed part it used */
    lm_bd_fixed bd_expected_parts; /* its terms, and its bytes part: */
    uint64_t bd_expected_bytes_ns; /* x-downtime-breakdown's expected-parts */
    lm_bd bd;                /* joined: tiles the downtime */
    lm_bd bd_dst;            /* the destination's own parts */
    lm_convergence convergence; /* x-convergence, as of the last sync (convergence.c) */
    lm_conv_pass last_pass;     /* the last pass's numbers (convergence.c) */
    bool sw_ack_waiting;     /* source: was ready to switch over, no SWITCHOVER_ACK yet */
    bool sw_acked;           /* source: the destination's SWITCHOVER_ACK arrived */
} lm_stats;

/*
 * Locks of an engine, outermost first.  A thread holding one may take any
 * below it, never one above:
 *
 *   1. e->lock: every member below not marked otherwise (atomics and the
 *      thread list say so beside them); each group of struct lm_engine
 *      says how it is guarded (registration: written under it only before
 *      the first migration, read without it afterwards).
 *   2. Locks of what the engine stops, wakes or reads while holding
 *      e->lock (cancel, migrate-pause, yank, wake_main, query): a channel's
 *      error lock (lm_channel_shutdown), a listener's abort, a rate limit,
 *      multifd's lock (lm_multifd_src_shutdown, lm_multifd_dst_cancel),
 *      the postcopy destination's blocktime lock (lm_pc_dst_blocktime).
 *   3. Leaves, taken under anything, taking nothing: threads' lock, the
 *      log handler's.
 *
 * Calls back into the engine from level 2 (multifd's on_fail, postcopy's
 * lm_engine_wake_main) are made after their own lock is released: that is
 * what lets them take e->lock.  The embedder's callbacks (lm_callbacks)
 * are called with no engine lock held.
 */
struct lm_engine {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* The migration threads running now (query-migrationthreads); its own
     * lock, taken under nothing else. */
    lm_thread_list threads;

    /* Registration: what the embedder set up.  Written under e->lock, and
     * only before the first migration (cb and opaque at creation); read
     * without it by the migration threads afterwards. */
    struct {
        lm_callbacks cb;
        void *opaque;
        lm_ram_block *blocks[LM_MAX_RAM_BLOCKS];
        size_t nblocks;
        lm_device_entry *devs;
        size_t ndevs;
        uint8_t uuid[LM_UUID_LEN];
        bool autostart;
        lm_tls_resolver tls_resolver;
        unsigned nvcpus;            /* registered vCPU threads (blocktime) */
        int vcpu_tids[LM_MAX_VCPUS];
        struct lm_dirtylimit *dirtylimit; /* lm_vcpu_ops and dirty limits (dirtylimit.c), NULL without ops */
    };

    /* Settings (params.c): e->lock.  Fixed while a migration runs, except
     * the parameters QEMU lets change then. */
    struct {
        bool caps[LM_CAP__COUNT];
        lm_params params;
        /* What max-bandwidth / max-postcopy-bandwidth drive; each its own
         * lock (level 2). */
        lm_ratelimit rl;
        lm_ratelimit pc_rl;         /* max-postcopy-bandwidth: the background stream only */
    };

    /* The current migration: e->lock unless marked. */
    struct {
        lm_status status;
        /* What lm_engine_query reports: `status` once its MIGRATION event has
         * been handed to on_event, so that nobody sees a status before the
         * event announcing it (QEMU's order).  status_gen counts transitions. */
        lm_status visible_status;
        uint64_t status_gen;
        bool incoming;
        bool thread_started;
        pthread_t thread;
        bool cancel_requested;
        bool continue_requested;
        bool guest_stopped_by_us;
        bool guest_was_running;  /* source: at switchover */
        lm_uri uri;
        /* TLS of the current (or last) migration, resolved from tls-creds at
         * its start and kept until the next one: its connections point at it. */
        struct lm_tls_config *tls;
        lm_channel *ch;        /* set while a channel is open (for cancel) */
        lm_listener *listener; /* destination */
        lm_error error;
        char socket_address[LM_URI_MAX];
        lm_bd *bd_src;       /* source, during switchover: devices.c marks each save */
        lm_ram_saver saver;  /* source RAM state; stats read with atomics */

        /* Postcopy (src/postcopy/, docs/postcopy.md). */
        bool postcopy_requested;    /* migrate-start-postcopy (may precede migrate) */
        bool postcopy_started;      /* the destination may run the guest: never restart ours */
        bool resume_requested;      /* source: migrate resume=true while paused */
        lm_uri resume_uri;
        lm_listener *recover_listener; /* destination: migrate-recover, handed to the load thread */
        lm_channel *ch_preempt;     /* set while open (migrate-pause, cancel) */
        lm_channel *ch_rp;          /* the return path's own channel (shutdown only) */
        struct lm_multifd_src *mf_src; /* source: set while multifd runs (cancel, stats) */
        struct lm_multifd_dst *mf_dst; /* destination: set while multifd runs (stats) */
        struct lm_pc_dst *pc_dst;   /* destination's postcopy state, for blocktime */

        /* switchover-ack, destination: approvals outstanding (devices that
         * said switchover_ack_needed and have not approved yet); once it
         * drops to 0, sw_ack_due asks the load thread to send the ack. */
        unsigned sw_ack_pending;
        bool sw_ack_armed;        /* counted at the start of this load */
        bool sw_ack_due;

        /* calc-dirty-rate (dirtyrate.c), beside migrations: NULL until first used. */
        struct lm_dirtyrate *dirtyrate;
    };

    /* Statistics of the current (or last) migration and what the engine
     * learned from those before: e->lock unless marked. */
    struct {
        lm_stats stats;
        /* What a switchover costs on this host besides moving bytes and what
         * each pass measures, learned from the breakdowns of the switchovers
         * so far (core/breakdown.h). */
        lm_bd_learned learned;
        uint64_t dest_pages; /* destination: pages loaded */
        uint64_t dest_zero;
        uint64_t dest_bytes;
        uint64_t dest_multifd_bytes; /* of multifd channels that ended */
        uint64_t pc_requests;       /* atomics: pages requested (dst) / served (src) */
        uint64_t pc_bytes;          /* atomics: bytes sent (src) / read (dst) after the switch */
        bool bt_valid;              /* blocktime of the last incoming postcopy */
        uint64_t bt_total_ms;
        unsigned bt_nvcpus;
        uint64_t bt_vcpu_ms[LM_MAX_VCPUS];
        lm_history history;       /* the source's timeline (x-query-migration-history); its own lock */
    };
};

/* Postcopy: a failure that pauses (both sides) instead of failing. */
static inline bool lm_status_is_postcopy(lm_status s)
{
    return s == LM_STATUS_POSTCOPY_ACTIVE || s == LM_STATUS_POSTCOPY_PAUSED ||
           s == LM_STATUS_POSTCOPY_RECOVER_SETUP || s == LM_STATUS_POSTCOPY_RECOVER;
}

/* state.c */
/* Moves from `from` to `to` when the status is `from` and the transition is
 * legal; emits the MIGRATION event.  Returns true when it moved. */
bool lm_set_state(lm_engine *e, lm_status from, lm_status to);
/* Moves to `to` from whatever the status is (if legal). */
bool lm_set_state_any(lm_engine *e, lm_status to);
bool lm_state_is_active(lm_status s);
void lm_emit_pass(lm_engine *e, uint64_t pass);
/* Records the migration's error (the first one sticks). */
void lm_engine_fail(lm_engine *e, const lm_error *err);

/* engine.c: join the migration / load thread once it ended (it may still
 * be releasing its tracker and bitmaps after the final status). */
void lm_engine_join_thread(lm_engine *e);

/* engine.c: wake the thread blocked on the main channel (a helper thread
 * saw its own connection fail); the main channel fails with code. */
void lm_engine_wake_main(lm_engine *e, int code, const char *why);

/* params.c */
void lm_params_defaults(lm_engine *e);
bool lm_cap(lm_engine *e, enum lm_capability c);
/* multifd-compression's name of c (QEMU's), for messages. */
const char *lm_multifd_compression_name(enum lm_multifd_compression c);

/* migration.c / incoming.c */
void *lm_migration_thread(void *arg);
void *lm_incoming_thread(void *arg);

/* devices.c: device sections shared by both sides. */
int lm_devices_save_setup(lm_engine *e, lm_channel *ch, lm_error *err);
/* One round of the pass: each iterative device not yet done gets `share`. */
int lm_devices_save_iterate(lm_engine *e, lm_channel *ch, uint64_t share, bool *all_done,
                            lm_error *err);
int lm_devices_save_complete(lm_engine *e, lm_channel *ch, lm_error *err);
uint64_t lm_devices_pending(lm_engine *e, bool exact, uint64_t *precopy);
void lm_devices_save_cleanup(lm_engine *e);
/* The JSON device description (vmdesc): it describes the layout, never
 * the state, so it is built before the guest stops (it took ~0.5 ms of
 * every downtime when built during the switchover).  malloc'd, NULL when
 * out of memory; written with lm_devices_write_vmdesc (NULL: the error). */
char *lm_devices_describe(lm_engine *e);
int lm_devices_write_vmdesc(const char *text, lm_channel *ch, lm_error *err);
lm_device_entry *lm_devices_find(lm_engine *e, const char *idstr, uint32_t instance);
int lm_devices_load(lm_engine *e, lm_device_entry *d, uint32_t version, lm_channel *ch,
                    lm_error *err);

/* Section id of RAM; devices take 1.. in registration order; the global
 * state takes the last id. */
#define LM_RAM_SECTION_ID 0u
#define LM_GLOBALSTATE_SECTION_ID (LM_MAX_SECTIONS - 1)

#endif
