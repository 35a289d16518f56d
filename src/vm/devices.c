/*
 * Devices: the guest clock and the serial console.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "devices.h"
#include "vmutil.h"

#define NS_PER_SEC ((int64_t)1000000000)

/* ------------------------------------------------------------------------ */
/* clock */

void vm_clock_init(vm_clock *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
}

void vm_clock_destroy(vm_clock *c)
{
    pthread_mutex_destroy(&c->lock);
}

static int64_t clock_now_locked(const vm_clock *c)
{
    return c->running ? (int64_t)vm_now_ns() - c->offset : c->guest_ns;
}

int64_t vm_clock_now(vm_clock *c)
{
    pthread_mutex_lock(&c->lock);
    int64_t t = clock_now_locked(c);
    pthread_mutex_unlock(&c->lock);
    return t;
}

void vm_clock_start(vm_clock *c)
{
    pthread_mutex_lock(&c->lock);
    if (!c->running) {
        c->offset = (int64_t)vm_now_ns() - c->guest_ns;
        c->running = true;
    }
    pthread_mutex_unlock(&c->lock);
}

void vm_clock_stop(vm_clock *c)
{
    pthread_mutex_lock(&c->lock);
    if (c->running) {
        c->guest_ns = clock_now_locked(c);
        c->running = false;
    }
    pthread_mutex_unlock(&c->lock);
}

static int clock_pre_save(void *opaque, lm_error *err)
{
    vm_clock *c = opaque;

    /* Normally the guest is stopped and guest_ns is already the time at
     * stop; if the state is saved while it runs, save the time now. */
    pthread_mutex_lock(&c->lock);
    c->guest_ns = clock_now_locked(c);
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static int clock_post_load(void *opaque, uint32_t version, lm_error *err)
{
    vm_clock *c = opaque;

    if (c->guest_ns < 0) {
        return lm_error_set(err, -EINVAL, "clock: negative guest time %" PRId64 " ns", c->guest_ns);
    }
    /* The loaded guest_ns is where the clock resumes; if the guest somehow
     * runs already, re-base the running clock on it. */
    pthread_mutex_lock(&c->lock);
    if (c->running) {
        c->offset = (int64_t)vm_now_ns() - c->guest_ns;
    }
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static const lm_field clock_fields[] = {
    LM_FIELD_SCALAR(vm_clock, guest_ns, LM_FIELD_I64),
};

static const lm_vmstate clock_vmstate = {
    .name = "clock",
    .version = 1,
    .min_version = 1,
    .fields = clock_fields,
    .nfields = sizeof(clock_fields) / sizeof(clock_fields[0]),
    .pre_save = clock_pre_save,
    .post_load = clock_post_load,
};

int vm_clock_register(vm_clock *c, lm_engine *e, lm_error *err)
{
    return lm_engine_add_device(e, "clock", 0, &clock_vmstate, c, err);
}

/* ------------------------------------------------------------------------ */
/* serial */

int vm_serial_parse(const char *s, serial_target *target, const char **path, lm_error *err)
{
    *path = NULL;
    if (strcmp(s, "stdout") == 0) {
        *target = SERIAL_STDOUT;
    } else if (strcmp(s, "none") == 0) {
        *target = SERIAL_NONE;
    } else if (strncmp(s, "file:", 5) == 0 && s[5] != '\0') {
        *target = SERIAL_FILE;
        *path = s + 5;
    } else {
        return lm_error_set(err, -EINVAL, "--serial '%s': expected stdout, file:PATH or none", s);
    }
    return 0;
}

int vm_serial_open(vm_serial *s, serial_target target, const char *path, const char *name,
                   lm_error *err)
{
    memset(s, 0, sizeof(*s));
    s->next_ns = NS_PER_SEC;
    snprintf(s->name, sizeof(s->name), "%s", name);
    switch (target) {
    case SERIAL_STDOUT:
        s->out = stdout;
        break;
    case SERIAL_FILE:
        s->out = fopen(path, "a");
        if (!s->out) {
            return lm_error_set_errno(err, -errno, "cannot open serial file '%s'", path);
        }
        s->close_out = true;
        break;
    case SERIAL_NONE:
        break;
    }
    return 0;
}

void vm_serial_close(vm_serial *s)
{
    if (s->close_out && s->out) {
        fclose(s->out);
    }
    s->out = NULL;
}

void vm_serial_print(vm_serial *s, int64_t guest_ns, uint64_t steps, uint64_t passes)
{
    s->lines++;
    /* The next line is a second after this one was due, not after now, so
     * the lines stay on whole seconds of guest time. */
    while (s->next_ns <= guest_ns) {
        s->next_ns += NS_PER_SEC;
    }
    if (!s->out) {
        return;
    }
    fprintf(s->out, "[guest %s] uptime %" PRId64 ".%01" PRId64 "s steps %" PRIu64 " passes %" PRIu64
            " line %" PRIu64 "\n",
            s->name, guest_ns / NS_PER_SEC, (guest_ns % NS_PER_SEC) / (NS_PER_SEC / 10), steps,
            passes, s->lines);
    fflush(s->out);
}

static int serial_post_load(void *opaque, uint32_t version, lm_error *err)
{
    vm_serial *s = opaque;
    const char *refuse = getenv("LIVEMIG_VM_FAIL_LOAD");

    /* Test hook: lets a test fail a migration in its device phase (a
     * device section the destination cannot load) without a broken
     * stream. */
    if (refuse && strcmp(refuse, "serial") == 0) {
        return lm_error_set(err, -EINVAL, "serial: state refused (LIVEMIG_VM_FAIL_LOAD=serial)");
    }
    if (s->next_ns < 0) {
        return lm_error_set(err, -EINVAL, "serial: negative next-line time %" PRId64, s->next_ns);
    }
    return 0;
}

static const lm_field serial_fields[] = {
    LM_FIELD_SCALAR(vm_serial, lines, LM_FIELD_U64),
    LM_FIELD_SCALAR(vm_serial, next_ns, LM_FIELD_I64),
};

static const lm_vmstate serial_vmstate = {
    .name = "serial",
    .version = 1,
    .min_version = 1,
    .fields = serial_fields,
    .nfields = sizeof(serial_fields) / sizeof(serial_fields[0]),
    .pre_save = NULL,
    .post_load = serial_post_load,
};

int vm_serial_register(vm_serial *s, lm_engine *e, lm_error *err)
{
    return lm_engine_add_device(e, "serial", 0, &serial_vmstate, s, err);
}
