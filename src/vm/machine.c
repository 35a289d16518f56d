/*
 * The machine: construction, run state, engine callbacks.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "machine.h"
#include "vm_qmp.h"

/* ------------------------------------------------------------------------ */
/* Guest start/stop, with m->lock held.  Return true when the vCPUs actually
 * changed, so the caller emits STOP/RESUME once the lock is released. */

static bool guest_stop_locked(vm *m)
{
    if (m->rv) {
        if (!rv_machine_running(m->rv)) {
            return false;
        }
        rv_machine_pause(m->rv);
        return true;
    }
    if (!vcpus_running(m->cpus)) {
        return false;
    }
    m->last_stop_ns = vm_now_ns();
    vcpus_pause(m->cpus);
    vm_clock_stop(&m->clock);
    return true;
}

static bool guest_start_locked(vm *m)
{
    if (m->rv) {
        if (m->shutting_down || rv_machine_running(m->rv)) {
            return false;
        }
        rv_machine_resume(m->rv);
        return true;
    }
    if (m->shutting_down || vcpus_running(m->cpus)) {
        return false;
    }
    vm_clock_start(&m->clock);
    vcpus_resume(m->cpus);
    m->last_start_ns = vm_now_ns();
    return true;
}

static void emit_change(vm *m, bool stopped, bool started)
{
    if (stopped) {
        vm_emit(m, "STOP", NULL);
    }
    if (started) {
        vm_emit(m, "RESUME", NULL);
    }
}

/* The migration did not complete: give the guest back the state it had
 * before the engine stopped it for switchover. */
static bool restore_after_switchover_locked(vm *m)
{
    if (m->state != VM_FINISH_MIGRATE) {
        return false;
    }
    if (m->postcopy_seen) {
        /* The destination has run the guest: running it here too would
         * fork it.  Stay stopped, as QEMU does. */
        return false;
    }
    m->state = m->state_before_switchover;
    if (m->state == VM_RUNNING) {
        return guest_start_locked(m);
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* Engine callbacks (engine threads, no engine lock held) */

static void cb_vm_stop(void *opaque)
{
    vm *m = opaque;
    bool stopped = false;

    pthread_mutex_lock(&m->lock);
    switch (m->state) {
    case VM_RUNNING:
        if (lm_engine_is_incoming(m->engine)) {
            /* A destination that runs (postcopy) and is asked to stop. */
            stopped = guest_stop_locked(m);
            m->state = VM_PAUSED;
            break;
        }
        /* fall through */
    case VM_PRELAUNCH:
    case VM_PAUSED:
    case VM_POSTMIGRATE:
        m->state_before_switchover = m->state;
        stopped = guest_stop_locked(m);
        m->state = VM_FINISH_MIGRATE;
        break;
    case VM_INMIGRATE:
    case VM_FINISH_MIGRATE:
        stopped = guest_stop_locked(m); /* already stopped: idempotent */
        break;
    }
    pthread_mutex_unlock(&m->lock);
    emit_change(m, stopped, false);
}

static void cb_vm_start(void *opaque)
{
    vm *m = opaque;
    bool started = false;

    pthread_mutex_lock(&m->lock);
    switch (m->state) {
    case VM_INMIGRATE:
        /* Destination: the guest is in (or postcopy starts it early).  The
         * engine starts it only when autostart is on and the source's guest
         * was running. */
        started = guest_start_locked(m);
        m->state = VM_RUNNING;
        break;
    case VM_FINISH_MIGRATE:
        /* Source: the engine gives the guest back after a failure. */
        started = restore_after_switchover_locked(m);
        break;
    case VM_RUNNING:
        started = guest_start_locked(m); /* normally already running */
        break;
    case VM_PRELAUNCH:
    case VM_PAUSED:
    case VM_POSTMIGRATE:
        /* Stopped by the user or done: not the engine's to start. */
        break;
    }
    pthread_mutex_unlock(&m->lock);
    emit_change(m, false, started);
}

static bool cb_vm_is_running(void *opaque)
{
    vm *m = opaque;
    pthread_mutex_lock(&m->lock);
    bool running = m->state == VM_RUNNING;
    pthread_mutex_unlock(&m->lock);
    return running;
}

static void cb_vm_throttle(void *opaque, int percent)
{
    vm *m = opaque;
    vcpus_set_throttle(m->cpus, percent);
}

static void cb_on_event(void *opaque, const lm_event *ev)
{
    vm *m = opaque;
    bool started = false;

    /* As QEMU: MIGRATION and MIGRATION_PASS go out only with the
     * `events` capability on (management tools turn it on). */
    bool events = false;
    lm_engine_get_capability(m->engine, "events", &events, NULL);
    pthread_mutex_lock(&m->qmp_lock);
    if (m->qmp && events) {
        qmp_emit_migration_event(m->qmp, ev);
    }
    pthread_mutex_unlock(&m->qmp_lock);

    if (ev->kind != LM_EVENT_MIGRATION) {
        return;
    }
    lm_info info = LM_INFO_INIT;
    lm_engine_query(m->engine, &info);
    if (info.incoming) {
        return; /* the destination's run state follows vm_start/incoming_done */
    }

    pthread_mutex_lock(&m->lock);
    switch (ev->status) {
    case LM_STATUS_SETUP:
        m->postcopy_seen = false;
        break;
    case LM_STATUS_POSTCOPY_ACTIVE:
        m->postcopy_seen = true;
        break;
    case LM_STATUS_COMPLETED:
        if (m->state == VM_FINISH_MIGRATE) {
            m->state = VM_POSTMIGRATE;
        }
        break;
    case LM_STATUS_FAILED:
    case LM_STATUS_CANCELLED:
        /* The engine restarts the guest itself; doing it here as well
         * (idempotent) keeps the source alive whatever the order. */
        started = restore_after_switchover_locked(m);
        break;
    default:
        break;
    }
    pthread_mutex_unlock(&m->lock);
    emit_change(m, false, started);
}

static void cb_incoming_done(void *opaque, bool success)
{
    vm *m = opaque;

    pthread_mutex_lock(&m->lock);
    if (success) {
        m->incoming_loaded = true;
        /* The engine already started the guest if it was to run; otherwise
         * (-S, or a guest stopped on the source) it waits for cont. */
        if (m->state == VM_INMIGRATE) {
            m->state = VM_PAUSED;
        }
    }
    bool exit_on_error = m->exit_on_error;
    pthread_mutex_unlock(&m->lock);
    if (success) {
        return;
    }
    lm_info *info = calloc(1, sizeof(*info));
    if (info) {
        info->struct_size = sizeof(*info); /* the whole of this build's layout */
        lm_engine_query(m->engine, info);
    }
    const char *why = info && info->error_desc[0] ? info->error_desc : "unknown error";
    if (exit_on_error) {
        /* QEMU's default: a destination whose migration failed holds no
         * guest worth keeping; the management tool reads the exit status. */
        fprintf(stderr, "livemig-vm: incoming migration failed: %s; exiting (exit-on-error)\n",
                why);
        vm_request_quit(m, VM_QUIT_INCOMING_FAILED);
    } else {
        fprintf(stderr, "livemig-vm: incoming migration failed: %s; still waiting (inmigrate)\n",
                why);
    }
    free(info);
}

/* ------------------------------------------------------------------------ */
/* The guest's periodic work, on vCPU 0 between batches of steps. */

static void guest_tick(void *opaque)
{
    vm *m = opaque;
    int64_t t = vm_clock_now(&m->clock);

    if (vm_serial_due(&m->serial, t)) {
        uint64_t steps, passes;
        vcpus_progress(m->cpus, &steps, &passes);
        vm_serial_print(&m->serial, t, steps, passes);
    }
    if (m->vram) {
        vram_tick(m->vram, vm_now_ns());
    }
}

/* ------------------------------------------------------------------------ */

/* The guest wrote the test device: power off (or reset, which this
 * machine does as a power-off, as QEMU with -no-reboot). */
static void riscv_shutdown(void *opaque, int code, bool reset)
{
    vm *m = opaque;
    __atomic_store_n(&m->exit_code, code, __ATOMIC_RELAXED);
    vm_request_quit(m, reset ? "guest-reset" : "guest-shutdown");
}

static int riscv_new(vm *m, lm_error *err)
{
    const vm_options *o = &m->opts;
    int ret;
    rv_machine_config cfg = {
        .smp = o->smp,
        .bios = o->bios,
        .kernel = o->kernel,
        .initrd = o->initrd,
        .append = o->append,
        .drive = o->drive,
        .rng = o->rng,
        .serial = o->serial_spec,
        .incoming = o->incoming != NULL,
    };
    if ((ret = guest_ram_new(&o->ram, &m->ram, err)) < 0 ||
        (ret = guest_ram_register(m->ram, m->engine, err)) < 0 ||
        (ret = rv_machine_new(&cfg, m->ram, &m->rv, err)) < 0) {
        return ret;
    }
    m->rv->shutdown = riscv_shutdown;
    m->rv->shutdown_opaque = m;
    if ((ret = rv_machine_register(m->rv, m->engine, err)) < 0) {
        return ret;
    }
    if (o->has_uuid) {
        lm_engine_set_uuid(m->engine, o->uuid);
    }
    return 0;
}

int vm_new(const vm_options *o, vm **out, lm_error *err)
{
    int ret;

    *out = NULL;
    vm *m = calloc(1, sizeof(*m));
    if (!m) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    m->opts = *o;
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->qmp_lock, NULL);
    vm_clock_init(&m->clock);
    m->autostart = !o->paused;
    m->state = o->incoming ? VM_INMIGRATE : VM_PRELAUNCH;
    m->quit_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->quit_fd < 0) {
        ret = lm_error_set_errno(err, -errno, "eventfd");
        goto fail;
    }

    const lm_callbacks cb = {
        .vm_stop = cb_vm_stop,
        .vm_start = cb_vm_start,
        .vm_is_running = cb_vm_is_running,
        .vm_throttle = cb_vm_throttle,
        .on_event = cb_on_event,
        .incoming_done = cb_incoming_done,
    };
    m->engine = lm_engine_new(&cb, m, err);
    if (!m->engine) {
        ret = lm_error_is_set(err) ? err->code : -ENOMEM;
        goto fail;
    }
    if (o->machine == VM_MACHINE_RISCV_VIRT) {
        ret = riscv_new(m, err);
        if (ret < 0) {
            goto fail;
        }
        *out = m;
        return 0;
    }
    if ((ret = guest_ram_new(&o->ram, &m->ram, err)) < 0 ||
        (ret = guest_ram_register(m->ram, m->engine, err)) < 0 ||
        (ret = workload_new(&o->workload, m->ram, o->smp, &m->wl, err)) < 0 ||
        (ret = vcpus_new(o->smp, m->wl, guest_tick, m, &m->cpus, err)) < 0 ||
        (ret = vcpus_register(m->cpus, m->engine, err)) < 0 ||
        (ret = vm_clock_register(&m->clock, m->engine, err)) < 0 ||
        (ret = vm_serial_open(&m->serial, o->serial, o->serial_path, o->name, err)) < 0 ||
        (ret = vm_serial_register(&m->serial, m->engine, err)) < 0) {
        goto fail;
    }
    if (o->vram_size) {
        if ((ret = vram_new(o->vram_size, o->vram_rate, o->workload.seed, &m->vram, err)) < 0 ||
            (ret = vram_register(m->vram, m->engine, err)) < 0) {
            goto fail;
        }
    }
    if (o->has_uuid) {
        lm_engine_set_uuid(m->engine, o->uuid);
    }
    m->objects = qmp_objects_new();
    if (!m->objects) {
        ret = lm_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    for (unsigned i = 0; i < o->nobjects; i++) {
        if ((ret = qmp_objects_add_opts(m->objects, o->objects[i], err)) < 0) {
            goto fail;
        }
    }
    lm_tls_resolver r = qmp_objects_tls_resolver(m->objects);
    lm_engine_set_tls_resolver(m->engine, &r);
    *out = m;
    return 0;

fail:
    vm_free(m);
    return ret;
}

int vm_launch(vm *m, lm_error *err)
{
    const vm_options *o = &m->opts;
    bool started = false;

    if (o->qmp_path) {
        qmp_server *s = qmp_server_new_mode(o->qmp_path, o->qmp_mode, err);
        if (!s) {
            return lm_error_is_set(err) ? err->code : -EINVAL;
        }
        qmp_register_migration_commands(s, m->engine);
        qmp_register_object_commands(s, m->objects);
        vm_qmp_register(m, s);
        int ret = qmp_server_start(s, err);
        if (ret < 0) {
            qmp_server_free(s);
            return ret;
        }
        pthread_mutex_lock(&m->qmp_lock);
        m->qmp = s;
        pthread_mutex_unlock(&m->qmp_lock);
    }

    if (o->incoming) {
        lm_engine_set_autostart(m->engine, m->autostart);
        if (strcmp(o->incoming, "defer") != 0) {
            int ret = lm_engine_incoming(m->engine, o->incoming, err);
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    if (o->paused) {
        return 0; /* prelaunch until cont */
    }
    pthread_mutex_lock(&m->lock);
    started = guest_start_locked(m);
    m->state = VM_RUNNING;
    pthread_mutex_unlock(&m->lock);
    emit_change(m, false, started);
    return 0;
}

void vm_free(vm *m)
{
    if (!m) {
        return;
    }
    /* Stop the guest first and for good: a cancelled migration must not
     * restart it while we tear down. */
    /* A destination in postcopy may have vCPUs blocked on missing pages,
     * which could never park: end the migration first (that unregisters
     * guest RAM and lets them go). */
    if (m->engine && lm_engine_is_incoming(m->engine)) {
        lm_engine_cancel(m->engine, NULL);
        for (int i = 0; i < 500 && lm_engine_is_incoming(m->engine); i++) {
            usleep(10000);
        }
    }
    pthread_mutex_lock(&m->lock);
    m->shutting_down = true;
    if (m->cpus || m->rv) {
        guest_stop_locked(m);
    }
    pthread_mutex_unlock(&m->lock);

    /* No QMP handler (they use the engine) runs after this, and no event
     * reaches a freed server. */
    pthread_mutex_lock(&m->qmp_lock);
    qmp_server *s = m->qmp;
    m->qmp = NULL;
    pthread_mutex_unlock(&m->qmp_lock);
    qmp_server_free(s);

    if (m->engine) {
        lm_engine_cancel(m->engine, NULL);
        lm_engine_free(m->engine);
    }
    rv_machine_free(m->rv);
    qmp_objects_free(m->objects);
    vcpus_free(m->cpus);
    vram_free(m->vram);
    workload_free(m->wl);
    guest_ram_free(m->ram);
    vm_serial_close(&m->serial);
    vm_clock_destroy(&m->clock);
    if (m->quit_fd >= 0) {
        close(m->quit_fd);
    }
    pthread_mutex_destroy(&m->qmp_lock);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void vm_request_quit(vm *m, const char *reason)
{
    uint64_t one = 1;

    __atomic_store_n(&m->quit_reason, reason, __ATOMIC_RELAXED);
    ssize_t r = write(m->quit_fd, &one, sizeof(one));
    (void)r; /* a full counter already wakes main() */
}

int vm_quit_fd(const vm *m)
{
    return m->quit_fd;
}

/* ------------------------------------------------------------------------ */
/* QMP-facing operations */

int vm_stop_cmd(vm *m, lm_error *err)
{
    bool stopped = false;

    pthread_mutex_lock(&m->lock);
    switch (m->state) {
    case VM_RUNNING:
        stopped = guest_stop_locked(m);
        m->state = VM_PAUSED;
        break;
    case VM_INMIGRATE:
        /* As QEMU: stop before the migration is in means "stay paused
         * when it is". */
        m->autostart = false;
        lm_engine_set_autostart(m->engine, false);
        if (m->incoming_loaded) {
            stopped = guest_stop_locked(m);
            m->state = VM_PAUSED;
        }
        break;
    case VM_FINISH_MIGRATE:
        /* Do not restart the guest if this migration fails. */
        m->state_before_switchover = VM_PAUSED;
        break;
    case VM_PRELAUNCH:
    case VM_PAUSED:
    case VM_POSTMIGRATE:
        break;
    }
    pthread_mutex_unlock(&m->lock);
    emit_change(m, stopped, false);
    return 0;
}

/* The engine reports `completed` a moment before its MIGRATION event
 * reaches cb_on_event: a query in between already sees the outcome. */
static void settle_switchover_locked(vm *m)
{
    if (m->state != VM_FINISH_MIGRATE) {
        return;
    }
    lm_info info = LM_INFO_INIT;
    lm_engine_query(m->engine, &info);
    if (!info.incoming && info.status == LM_STATUS_COMPLETED) {
        m->state = VM_POSTMIGRATE;
    }
}

int vm_cont_cmd(vm *m, lm_error *err)
{
    bool started = false;
    int ret = 0;

    pthread_mutex_lock(&m->lock);
    settle_switchover_locked(m);
    if (m->state == VM_RUNNING) {
        goto out;
    }
    if (lm_engine_is_incoming(m->engine) ||
        (m->state == VM_INMIGRATE && !m->incoming_loaded)) {
        ret = lm_error_set(err, -EBUSY, "Guest is waiting for an incoming migration (inmigrate); "
                           "it can run once the migration has completed");
        goto out;
    }
    if (m->state == VM_FINISH_MIGRATE) {
        ret = lm_error_set(err, -EBUSY, "Guest is stopped for migration switchover (finish-migrate)");
        goto out;
    }
    started = guest_start_locked(m);
    m->state = VM_RUNNING;
out:
    pthread_mutex_unlock(&m->lock);
    emit_change(m, false, started);
    return ret;
}

static const char *runstate_name(vm_runstate s)
{
    switch (s) {
    case VM_PRELAUNCH: return "prelaunch";
    case VM_RUNNING: return "running";
    case VM_PAUSED: return "paused";
    case VM_INMIGRATE: return "inmigrate";
    case VM_FINISH_MIGRATE: return "finish-migrate";
    case VM_POSTMIGRATE: return "postmigrate";
    }
    return "paused";
}

const char *vm_status(vm *m, bool *running)
{
    pthread_mutex_lock(&m->lock);
    settle_switchover_locked(m);
    vm_runstate s = m->state;
    pthread_mutex_unlock(&m->lock);

    *running = s == VM_RUNNING;
    if (!*running && lm_engine_is_incoming(m->engine)) {
        return "inmigrate";
    }
    return runstate_name(s);
}

void vm_with_guest_frozen(vm *m, void (*fn)(vm *m, void *arg), void *arg)
{
    pthread_mutex_lock(&m->lock);
    if (m->rv) {
        bool was = rv_machine_running(m->rv);
        if (was) {
            rv_machine_pause(m->rv);
        }
        fn(m, arg);
        if (was) {
            rv_machine_resume(m->rv);
        }
        pthread_mutex_unlock(&m->lock);
        return;
    }
    bool was = vcpus_running(m->cpus);
    if (was) {
        vcpus_pause(m->cpus);
    }
    fn(m, arg);
    if (was) {
        vcpus_resume(m->cpus);
    }
    pthread_mutex_unlock(&m->lock);
}

void vm_emit(vm *m, const char *event, json_t *data)
{
    pthread_mutex_lock(&m->qmp_lock);
    if (m->qmp) {
        qmp_server_emit(m->qmp, event, data);
    } else {
        json_decref(data);
    }
    pthread_mutex_unlock(&m->qmp_lock);
}
