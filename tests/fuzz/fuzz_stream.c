/*
 * libFuzzer target: the destination loads a whole migration stream.
 *
 * Each input is a stream as a source writes it (the seeds in
 * tests/fuzz/corpus/stream are real ones, see gen_stream_corpus.c).  It is
 * put in a memfd and loaded by a fresh engine through the file: transport
 * (/proc/self/fd/N), into the machine of fuzz_machine.h: guest RAM between
 * guard pages, device state between canaries.  The load must end (a hang
 * is libFuzzer's timeout), in completed or failed, and must not write
 * outside guest RAM or the devices' fields.
 *
 * The destination's capabilities follow the stream's configuration record
 * (mapped-ram when the stream says so, as a management tool would set it;
 * then multifd threads when the source's UUID ends in an odd byte), so
 * both layouts are reached.  The engine's warnings (one per refused input)
 * go to /dev/null while a stream loads; sanitizer reports go to the real
 * stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <sanitizer/common_interface_defs.h>

#include "fuzz_machine.h"
#include "stream/format.h"
#include "stream/stream.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static fuzz_machine *machine;
static int memfd = -1;
static int real_stderr = -1;
static int devnull = -1;
static bool verbose; /* FUZZ_VERBOSE=1: how each load ended */

typedef struct run {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    bool success;
} run;

static void on_done(void *opaque, bool success)
{
    run *r = opaque;
    pthread_mutex_lock(&r->lock);
    r->done = true;
    r->success = success;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void on_vm_nop(void *opaque)
{
}

static void die(const char *what, const char *msg)
{
    dprintf(real_stderr, "fuzz_stream: %s: %s\n", what, msg);
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    machine = fm_new();
    memfd = memfd_create("fuzz-stream", MFD_CLOEXEC);
    verbose = getenv("FUZZ_VERBOSE") != NULL;
    real_stderr = dup(2);
    devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (!machine || memfd < 0 || real_stderr < 0 || devnull < 0) {
        perror("fuzz_stream: setup");
        abort();
    }
    /* Reports from any thread reach the real stderr. */
    __sanitizer_set_report_fd((void *)(intptr_t)real_stderr);
    return 0;
}

/* The configuration record's flags and the UUID's last byte, when the
 * input starts as a stream does (header, then CONFIG). */
static void peek_config(const uint8_t *d, size_t n, uint32_t *flags, uint8_t *uuid_last)
{
    *flags = 0;
    *uuid_last = 0;
    if (n < 8 + 1 + 4 + LM_UUID_LEN + 4 || d[8] != LM_REC_CONFIG) {
        return;
    }
    const uint8_t *body = d + 8 + 1 + 4;
    *uuid_last = body[LM_UUID_LEN - 1];
    *flags = (uint32_t)body[LM_UUID_LEN] << 24 | (uint32_t)body[LM_UUID_LEN + 1] << 16 |
             (uint32_t)body[LM_UUID_LEN + 2] << 8 | body[LM_UUID_LEN + 3];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ftruncate(memfd, 0) < 0 || pwrite(memfd, data, size, 0) != (ssize_t)size) {
        die("memfd", strerror(errno));
    }
    fm_reset(machine);

    run r = { .done = false };
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.cond, NULL);
    lm_callbacks cb = { .vm_stop = on_vm_nop, .vm_start = on_vm_nop, .incoming_done = on_done };

    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(&cb, &r, &err);
    if (!e || fm_register(machine, e, &err) < 0) {
        die("setup", err.msg);
    }
    uint32_t flags;
    uint8_t uuid_last;
    peek_config(data, size, &flags, &uuid_last);
    if (flags & LM_CONFIG_MAPPED_RAM) {
        if (lm_engine_set_capability(e, "mapped-ram", true, &err) < 0 ||
            ((uuid_last & 1) && lm_engine_set_capability(e, "multifd", true, &err) < 0)) {
            die("capabilities", err.msg);
        }
    }

    char uri[64];
    snprintf(uri, sizeof(uri), "file:/proc/self/fd/%d", memfd);
    dup2(devnull, 2);
    if (lm_engine_incoming(e, uri, &err) == 0) {
        pthread_mutex_lock(&r.lock);
        while (!r.done) {
            pthread_cond_wait(&r.cond, &r.lock);
        }
        pthread_mutex_unlock(&r.lock);
    }
    lm_info info = LM_INFO_INIT;
    lm_engine_query(e, &info);
    lm_engine_free(e); /* joins the incoming thread */
    dup2(real_stderr, 2);
    if (verbose) {
        dprintf(real_stderr, "fuzz_stream: %zu bytes: %s%s%s\n", size,
                r.success ? "loaded" : "refused", r.success ? "" : ": ", r.success ? "" : info.error_desc);
    }

    fm_check(machine);
    pthread_cond_destroy(&r.cond);
    pthread_mutex_destroy(&r.lock);
    return 0;
}
