/*
 * The machine: ties guest RAM, vCPUs, devices and the engine together and
 * owns the run state (QEMU's RunState, the part query-status shows).
 *
 * Run states and who moves between them:
 *   prelaunch      --paused, never started          -> running (cont)
 *   running        the vCPUs run                    -> paused (stop),
 *                                                      finish-migrate (engine vm_stop)
 *   paused         stopped by the user              -> running (cont)
 *   inmigrate      --incoming: waiting for/loading  -> running (engine vm_start:
 *                  a migration                         autostart and the source ran)
 *                                                      or paused (-S, or the source
 *                                                      guest was stopped)
 *   finish-migrate the engine stopped the guest for -> postmigrate (completed),
 *                  switchover                          back to what it was (failed,
 *                                                      cancelled)
 *   postmigrate    an outgoing migration completed  -> running (cont)
 *
 * Every transition happens under one lock; STOP and RESUME QMP events are
 * emitted after it is released whenever the vCPUs actually stop or start.
 */
#ifndef LIVEMIG_VM_MACHINE_H
#define LIVEMIG_VM_MACHINE_H

#include <pthread.h>
#include <stdbool.h>

#include <jansson.h>

#include "livemig/livemig.h"
#include "devices.h"
#include "guest_ram.h"
#include "options.h"
#include "qmp/objects.h"
#include "qmp/qmp.h"
#include "riscv/rv_machine.h"
#include "vcpu.h"
#include "vram.h"
#include "workload.h"

typedef enum vm_runstate {
    VM_PRELAUNCH,
    VM_RUNNING,
    VM_PAUSED,
    VM_INMIGRATE,
    VM_FINISH_MIGRATE,
    VM_POSTMIGRATE,
} vm_runstate;

typedef struct vm {
    vm_options opts;
    lm_engine *engine;
    guest_ram *ram;
    workload *wl;
    vcpus *cpus;
    vm_clock clock;
    vm_serial serial;
    vram *vram;             /* NULL without --vram */
    rv_machine *rv;         /* --machine riscv-virt: instead of wl, cpus, clock, serial */
    int exit_code;          /* riscv-virt: what the guest asked to exit with */
    qmp_objects *objects;   /* TLS credentials and authz: --object, object-add */

    pthread_mutex_t lock;   /* the run state below */
    vm_runstate state;
    vm_runstate state_before_switchover; /* restored if the migration fails */
    bool autostart;         /* destination: run once the migration is in */
    bool incoming_loaded;   /* destination: an incoming migration succeeded */
    bool exit_on_error;     /* destination: exit when the incoming migration
                             * fails (migrate-incoming's exit-on-error) */
    bool postcopy_seen;     /* outgoing: the destination ran the guest */
    bool shutting_down;

    pthread_mutex_t qmp_lock; /* qmp, so events never race its teardown */
    qmp_server *qmp;

    int quit_fd;            /* eventfd: main() leaves its loop */
    const char *quit_reason;
} vm;

int vm_new(const vm_options *o, vm **out, lm_error *err);
/* Starts the QMP server, then the incoming migration or the guest. */
int vm_launch(vm *m, lm_error *err);
/* Stops everything and frees it; the QMP socket is unlinked. */
void vm_free(vm *m);

/* The quit reason of a destination that exits because its incoming
 * migration failed (exit status 1). */
#define VM_QUIT_INCOMING_FAILED "incoming-migration-failed"

/* Ask main() to exit (QMP quit); safe from any thread. */
void vm_request_quit(vm *m, const char *reason);
int vm_quit_fd(const vm *m);

/* QMP stop / cont. */
int vm_stop_cmd(vm *m, lm_error *err);
int vm_cont_cmd(vm *m, lm_error *err);
/* query-status: QEMU's status name; *running whether the vCPUs run. */
const char *vm_status(vm *m, bool *running);

/* Run fn with every vCPU parked and resume them afterwards if they ran
 * (x-verify-memory, x-query-memory-hash).  The run state is unchanged and
 * no STOP/RESUME event is sent: the guest does not notice. */
void vm_with_guest_frozen(vm *m, void (*fn)(vm *m, void *arg), void *arg);

/* Emit a QMP event (takes data); no-op without a QMP socket. */
void vm_emit(vm *m, const char *event, json_t *data);

#endif
