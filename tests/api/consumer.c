/*
 * An embedder's first program, built against an installed liblivemig with
 * nothing but `pkg-config --cflags --libs livemig` (tests/api/install.sh
 * compiles it as C and, as consumer.cc, as C++).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <livemig/livemig.h>

static int logged;

static void on_log(void *opaque, lm_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    (void)msg;
    logged++;
}

static void vm_stop(void *opaque) { (void)opaque; }
static void vm_start(void *opaque) { (void)opaque; }

int main(void)
{
    if (strcmp(lm_version(), LM_VERSION_STRING) != 0) {
        fprintf(stderr, "headers say %s, library says %s\n", LM_VERSION_STRING, lm_version());
        return 1;
    }
    lm_set_log_handler(on_log, NULL);

    lm_callbacks cb;
    memset(&cb, 0, sizeof(cb));
    cb.struct_size = sizeof(cb);
    cb.vm_stop = vm_stop;
    cb.vm_start = vm_start;
    lm_error err = LM_ERROR_INIT;
    lm_engine *e = lm_engine_new(&cb, NULL, &err);
    if (!e) {
        fprintf(stderr, "lm_engine_new: %s\n", err.msg);
        return 1;
    }
    static unsigned char ram[1 << 20] __attribute__((aligned(4096)));
    lm_ram_desc desc;
    memset(&desc, 0, sizeof(desc));
    desc.struct_size = sizeof(desc);
    desc.name = "ram0";
    desc.host = ram;
    desc.size = sizeof(ram);
    desc.page_size = 4096;
    lm_ram_block *blk = NULL;
    if (lm_engine_add_ram(e, &desc, &blk, &err) < 0) {
        fprintf(stderr, "lm_engine_add_ram: %s\n", err.msg);
        return 1;
    }
    /* A refused call fills the error object, as every call does. */
    if (lm_engine_set_param_u64(e, "no-such-parameter", 1, &err) == 0 || !err.msg[0]) {
        fprintf(stderr, "an unknown parameter was accepted\n");
        return 1;
    }
    lm_info *info = (lm_info *)calloc(1, sizeof(*info));
    info->struct_size = sizeof(*info);
    lm_engine_query(e, info);
    int ok = info->status == LM_STATUS_NONE;
    free(info);
    lm_engine_free(e);
    printf("livemig %s: engine created, queried and freed\n", lm_version());
    return ok ? 0 : 1;
}
