/*
 * The machine's small devices, each a declarative field table.
 *
 *  clock   the guest clock in ns.  It runs only while the guest runs, so a
 *          stopped guest sees no time pass; at switchover it is saved as
 *          the guest time at stop, and the destination resumes counting
 *          from that value (no jump across the migration).
 *
 *  serial  the guest's console: once a second of guest time the guest
 *          prints a progress line.  Its line counter and the time of the
 *          next line migrate, so output continues on the destination.
 */
#ifndef LIVEMIG_VM_DEVICES_H
#define LIVEMIG_VM_DEVICES_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "livemig/engine.h"

typedef struct vm_clock {
    int64_t guest_ns;      /* migrated: the guest time when it stopped */
    /* private */
    pthread_mutex_t lock;
    bool running;
    int64_t offset;        /* running: guest time = host monotonic - offset */
} vm_clock;

void vm_clock_init(vm_clock *c);
void vm_clock_destroy(vm_clock *c);
int64_t vm_clock_now(vm_clock *c);
/* The guest starts/stops: the clock runs or freezes at the current time. */
void vm_clock_start(vm_clock *c);
void vm_clock_stop(vm_clock *c);
int vm_clock_register(vm_clock *c, lm_engine *e, lm_error *err);

typedef enum serial_target {
    SERIAL_STDOUT,
    SERIAL_FILE,
    SERIAL_NONE,
} serial_target;

typedef struct vm_serial {
    uint64_t lines;        /* migrated: lines printed so far */
    int64_t next_ns;       /* migrated: guest time of the next line */
    /* private */
    FILE *out;             /* NULL for SERIAL_NONE */
    bool close_out;
    char name[64];
} vm_serial;

/* Parses "stdout", "none" or "file:PATH". */
int vm_serial_parse(const char *s, serial_target *target, const char **path, lm_error *err);
int vm_serial_open(vm_serial *s, serial_target target, const char *path, const char *name,
                   lm_error *err);
void vm_serial_close(vm_serial *s);
int vm_serial_register(vm_serial *s, lm_engine *e, lm_error *err);
/* Called by the guest (vCPU 0) while it runs: is a line due? */
static inline bool vm_serial_due(const vm_serial *s, int64_t guest_ns)
{
    return guest_ns >= s->next_ns;
}
void vm_serial_print(vm_serial *s, int64_t guest_ns, uint64_t steps, uint64_t passes);

#endif
