/*
 * The machine's QMP commands.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "machine.h"
#include "vm_qmp.h"

/* None of these commands takes an argument; like QEMU, refuse strays. */
static const char *const no_args[] = { NULL };
#define CHECK_NO_ARGS(args, err) \
    do { \
        if (qmp_args_check((args), no_args, (err)) < 0) { \
            return NULL; \
        } \
    } while (0)

static json_t *cmd_stop(void *opaque, json_t *args, lm_error *err)
{
    CHECK_NO_ARGS(args, err);

    return vm_stop_cmd(opaque, err) < 0 ? NULL : json_object();
}

static json_t *cmd_cont(void *opaque, json_t *args, lm_error *err)
{
    CHECK_NO_ARGS(args, err);

    return vm_cont_cmd(opaque, err) < 0 ? NULL : json_object();
}

static json_t *cmd_quit(void *opaque, json_t *args, lm_error *err)
{
    CHECK_NO_ARGS(args, err);

    /* main() tears the machine down; this reply goes out first because the
     * server flushes its clients when it is freed. */
    vm_request_quit(opaque, "host-qmp-quit");
    return json_object();
}

static json_t *cmd_query_status(void *opaque, json_t *args, lm_error *err)
{
    bool running;

    CHECK_NO_ARGS(args, err);
    const char *status = vm_status(opaque, &running);

    return json_pack("{s:b, s:b, s:s}", "running", running, "singlestep", 0, "status", status);
}

struct verify_job {
    struct vm_verify res;
    int error;
};

static void do_verify(vm *m, void *arg)
{
    struct verify_job *job = arg;
    unsigned n = vcpus_count(m->cpus);
    wl_regs *regs = calloc(n, sizeof(*regs));

    if (!regs) {
        job->error = -ENOMEM;
        return;
    }
    vcpus_copy_regs(m->cpus, regs);
    workload_verify(m->wl, regs, n, &job->res);
    free(regs);
    if (m->vram) {
        vram_verify(m->vram, &job->res);
    }
}

static json_t *cmd_verify_memory(void *opaque, json_t *args, lm_error *err)
{
    vm *m = opaque;
    struct verify_job job = { { 0 }, 0 };
    char msg[sizeof(job.res.message)];

    CHECK_NO_ARGS(args, err);
    if (m->rv) {
        lm_error_set(err, -ENOTSUP, "x-verify-memory: the riscv-virt guest checks itself "
                     "(compare x-query-memory-hash instead)");
        return NULL;
    }
    vm_with_guest_frozen(m, do_verify, &job);
    if (job.error) {
        lm_error_set_errno(err, job.error, "x-verify-memory");
        return NULL;
    }
    bool ok = job.res.mismatches == 0;
    if (ok) {
        snprintf(msg, sizeof(msg), "%s workload: %" PRIu64 " pages%s consistent",
                 workload_kind_name(workload_get_kind(m->wl)), job.res.pages,
                 m->vram ? " and the vram chunks" : "");
    } else {
        snprintf(msg, sizeof(msg), "%s", job.res.message);
    }
    json_t *r = json_pack("{s:b, s:I, s:I, s:s}", "ok", ok, "pages", (json_int_t)job.res.pages,
                          "mismatches", (json_int_t)job.res.mismatches, "message", msg);
    if (r && m->vram) {
        json_object_set_new(r, "vram-chunks", json_integer((json_int_t)job.res.chunks));
    }
    return r;
}

static json_t *cmd_query_workload(void *opaque, json_t *args, lm_error *err)
{
    vm *m = opaque;
    uint64_t steps, passes;

    CHECK_NO_ARGS(args, err);
    if (m->rv) {
        lm_error_set(err, -ENOTSUP, "x-query-workload: riscv-virt runs no synthetic workload");
        return NULL;
    }
    vcpus_progress(m->cpus, &steps, &passes);
    pthread_mutex_lock(&m->lock);
    uint64_t stop_ns = m->last_stop_ns, start_ns = m->last_start_ns;
    pthread_mutex_unlock(&m->lock);
    json_t *r = json_pack("{s:I, s:I, s:s, s:i, s:I, s:I}", "steps", (json_int_t)steps, "passes",
                          (json_int_t)passes, "workload",
                          workload_kind_name(workload_get_kind(m->wl)), "vcpus",
                          (int)vcpus_count(m->cpus), "x-last-stop-ns", (json_int_t)stop_ns,
                          "x-last-start-ns", (json_int_t)start_ns);
    /* Each vCPU's own counters: dirty-limit throttles one at a time. */
    json_t *per = json_array();
    for (unsigned i = 0; r && per && i < vcpus_count(m->cpus); i++) {
        vcpu_stats st;
        vcpus_vcpu_stats(m->cpus, i, &st);
        json_array_append_new(per, json_pack("{s:I, s:I, s:i, s:I}", "steps", (json_int_t)st.steps,
                                             "dirty-pages", (json_int_t)st.dirty_pages,
                                             "throttle", st.throttle, "throttle-ns",
                                             (json_int_t)st.throttle_ns));
    }
    if (r && per) {
        json_object_set_new(r, "per-vcpu", per);
    } else {
        json_decref(per);
    }
    return r;
}

static void do_hash(vm *m, void *arg)
{
    *(uint64_t *)arg = guest_ram_hash(m->ram);
}

static json_t *cmd_query_memory_hash(void *opaque, json_t *args, lm_error *err)
{
    vm *m = opaque;
    uint64_t h = 0;
    char hex[17];

    CHECK_NO_ARGS(args, err);
    vm_with_guest_frozen(m, do_hash, &h);
    snprintf(hex, sizeof(hex), "%016" PRIx64, h);
    return json_pack("{s:s, s:I}", "hash", hex, "bytes", (json_int_t)m->ram->size);
}

/*
 * migrate-incoming, wrapped with the machine's check: only a machine that
 * waits for a migration (started with --incoming) may load one, or the
 * engine would overwrite the RAM of a guest that runs.  QEMU refuses it the
 * same way ("For use with '-incoming defer'").  Registered after
 * qmp_register_migration_commands(), it replaces the plain command.
 */
static json_t *cmd_migrate_incoming(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "uri", "channels", "exit-on-error", NULL };
    vm *m = opaque;
    char uri[4096];
    bool running, exit_on_error = true;

    if (qmp_args_check(args, known, err) < 0 ||
        qmp_arg_bool(args, "exit-on-error", false, &exit_on_error, err) < 0) {
        return NULL;
    }
    if (lm_engine_is_incoming(m->engine)) {
        lm_error_set(err, -EBUSY, "An incoming migration is already in progress");
        return NULL;
    }
    if (strcmp(vm_status(m, &running), "inmigrate") != 0) {
        lm_error_set(err, -EINVAL, "The incoming migration has not been requested: start the "
                     "machine with --incoming defer");
        return NULL;
    }
    /* The address last: an fd:NAME is taken from the table only when the
     * command will use it. */
    pthread_mutex_lock(&m->lock);
    m->exit_on_error = exit_on_error;
    pthread_mutex_unlock(&m->lock);
    int fdset_fd = -1;
    if (qmp_migration_uri(m->qmp, args, uri, sizeof(uri), err) < 0 ||
        qmp_migration_uri_fdset(m->qmp, uri, sizeof(uri), false, &fdset_fd, err) < 0) {
        return NULL;
    }
    int ret = lm_engine_incoming(m->engine, uri, err);
    if (fdset_fd >= 0) {
        close(fdset_fd); /* the restore works on a duplicate */
    }
    return ret < 0 ? NULL : json_object();
}

/* Test hook for switchover-ack: the vram device withholds its approval
 * (a destination device that is never ready) until told otherwise. */
static json_t *cmd_vram_withhold_ack(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "withhold", NULL };
    vm *m = opaque;
    bool withhold = true;

    if (qmp_args_check(args, known, err) < 0 ||
        qmp_arg_bool(args, "withhold", true, &withhold, err) < 0) {
        return NULL;
    }
    if (!m->vram) {
        lm_error_set(err, -ENODEV, "x-vram-withhold-ack: the machine has no vram (start it with --vram)");
        return NULL;
    }
    vram_withhold_ack(m->vram, withhold);
    return json_object();
}

void vm_qmp_register(vm *m, qmp_server *s)
{
    qmp_server_register(s, "migrate-incoming", cmd_migrate_incoming, m);
    qmp_server_register(s, "stop", cmd_stop, m);
    qmp_server_register(s, "cont", cmd_cont, m);
    qmp_server_register(s, "quit", cmd_quit, m);
    qmp_server_register(s, "query-status", cmd_query_status, m);
    qmp_server_register(s, "x-verify-memory", cmd_verify_memory, m);
    qmp_server_register(s, "x-query-workload", cmd_query_workload, m);
    qmp_server_register(s, "x-query-memory-hash", cmd_query_memory_hash, m);
    qmp_server_register(s, "x-vram-withhold-ack", cmd_vram_withhold_ack, m);
}
