/*
 * A program built against older, smaller layouts of the growable public
 * structs (engine.h) still works with this library: lm_callbacks with two
 * callbacks, an lm_ram_desc without its fd members and an lm_info that
 * ends after socket_address, each placed against a guard page so that a
 * library touching one byte past the caller's layout crashes the test.
 * A guest RAM block is saved to a file with them and restored by an engine
 * using today's layouts; the memory must arrive byte for byte.  Also: a
 * struct_size larger than the library's (a newer program) is filled only
 * as far as the library knows, and says so.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <livemig/livemig.h>

#define RAM_SIZE (1u << 20)
#define PAGE     4096u

/* The layouts an older livemig could have had (members only ever added
 * at the end). */
struct old_callbacks {
    size_t struct_size;
    void (*vm_stop)(void *opaque);
    void (*vm_start)(void *opaque);
};

struct old_ram_desc {
    size_t struct_size;
    const char *name;
    void *host;
    uint64_t size;
    uint32_t page_size;
    unsigned flags;
};

#define OLD_INFO_SIZE ((offsetof(lm_info, socket_address) + LM_URI_MAX + 7) & ~(size_t)7)

static int stops, starts;

static void vm_stop(void *opaque) { (void)opaque; stops++; }
static void vm_start(void *opaque) { (void)opaque; starts++; }

static int fail(const char *what, const lm_error *err)
{
    fprintf(stderr, "FAIL %s%s%s\n", what, err && err->msg[0] ? ": " : "", err ? err->msg : "");
    return 1;
}

/* len bytes that end where an inaccessible page begins. */
static void *against_guard(size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t span = (len + pg - 1) / pg * pg;
    uint8_t *p = mmap(NULL, span + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p + span, pg, PROT_NONE) < 0) {
        perror("mmap");
        exit(1);
    }
    return p + span - len;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Polls with the old, smaller lm_info until the migration ends. */
static lm_status wait_end(lm_engine *e, lm_info *info, size_t size)
{
    for (int i = 0; i < 30000; i++) {
        info->struct_size = size;
        lm_engine_query(e, info);
        if (info->struct_size != size) {
            fprintf(stderr, "FAIL query said %zu bytes for a %zu-byte layout\n",
                    info->struct_size, size);
            exit(1);
        }
        if (info->status == LM_STATUS_COMPLETED || info->status == LM_STATUS_FAILED ||
            info->status == LM_STATUS_CANCELLED) {
            return info->status;
        }
        sleep_ms(10);
    }
    return info->status;
}

int main(void)
{
    char dir[] = "/tmp/lm-old-layout-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char uri[128];
    snprintf(uri, sizeof(uri), "file:%s/image", dir);
    uint8_t *src_ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *dst_ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src_ram == MAP_FAILED || dst_ram == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < RAM_SIZE; i++) {
        src_ram[i] = (uint8_t)(i * 131 + (i >> 12));
    }

    /* Source: every struct in its old layout. */
    struct old_callbacks *ocb = against_guard(sizeof(*ocb));
    *ocb = (struct old_callbacks){ sizeof(*ocb), vm_stop, vm_start };
    lm_error err = LM_ERROR_INIT;
    lm_engine *src = lm_engine_new((const lm_callbacks *)ocb, NULL, &err);
    if (!src) {
        return fail("lm_engine_new (old callbacks)", &err);
    }
    struct old_ram_desc *od = against_guard(sizeof(*od));
    *od = (struct old_ram_desc){ sizeof(*od), "ram0", src_ram, RAM_SIZE, PAGE, 0 };
    if (lm_engine_add_ram(src, (const lm_ram_desc *)od, NULL, &err) < 0) {
        return fail("lm_engine_add_ram (old desc)", &err);
    }
    lm_info *oinfo = against_guard(OLD_INFO_SIZE);
    if (lm_engine_migrate(src, uri, false, &err) < 0) {
        return fail("lm_engine_migrate", &err);
    }
    if (wait_end(src, oinfo, OLD_INFO_SIZE) != LM_STATUS_COMPLETED) {
        fprintf(stderr, "FAIL save: %s (%s)\n", lm_status_name(oinfo->status), oinfo->error_desc);
        return 1;
    }
    if (stops != 1) {
        fprintf(stderr, "FAIL vm_stop called %d times\n", stops);
        return 1;
    }

    /* A newer program: its lm_info is larger than ours. */
    size_t bigger = sizeof(lm_info) + 64;
    uint8_t *big = calloc(1, bigger);
    memset(big + sizeof(lm_info), 0xa5, 64);
    ((lm_info *)(void *)big)->struct_size = bigger;
    lm_engine_query(src, (lm_info *)(void *)big);
    if (((lm_info *)(void *)big)->struct_size != sizeof(lm_info) ||
        ((lm_info *)(void *)big)->status != LM_STATUS_COMPLETED) {
        fprintf(stderr, "FAIL a larger lm_info: size %zu\n", ((lm_info *)(void *)big)->struct_size);
        return 1;
    }
    for (size_t i = sizeof(lm_info); i < bigger; i++) {
        if (big[i] != 0xa5) {
            fprintf(stderr, "FAIL byte %zu past the library's lm_info was written\n", i);
            return 1;
        }
    }
    free(big);
    lm_engine_free(src);

    /* Destination: today's layouts. */
    lm_callbacks cb = LM_CALLBACKS_INIT;
    cb.vm_stop = vm_stop;
    cb.vm_start = vm_start;
    lm_engine *dst = lm_engine_new(&cb, NULL, &err);
    lm_ram_desc d = LM_RAM_DESC_INIT;
    d.name = "ram0";
    d.host = dst_ram;
    d.size = RAM_SIZE;
    d.page_size = PAGE;
    if (!dst || lm_engine_add_ram(dst, &d, NULL, &err) < 0) {
        return fail("destination set-up", &err);
    }
    lm_engine_set_autostart(dst, false);
    if (lm_engine_incoming(dst, uri, &err) < 0) {
        return fail("lm_engine_incoming", &err);
    }
    lm_info *info = calloc(1, sizeof(*info));
    if (wait_end(dst, info, sizeof(*info)) != LM_STATUS_COMPLETED) {
        fprintf(stderr, "FAIL restore: %s (%s)\n", lm_status_name(info->status), info->error_desc);
        return 1;
    }
    free(info);
    lm_engine_free(dst);
    if (memcmp(src_ram, dst_ram, RAM_SIZE) != 0) {
        fprintf(stderr, "FAIL restored memory differs\n");
        return 1;
    }
    char path[160];
    snprintf(path, sizeof(path), "%s/image", dir);
    unlink(path);
    rmdir(dir);
    printf("old layouts: saved with a %zu-byte lm_callbacks, %zu-byte lm_ram_desc and %zu-byte "
           "lm_info (today %zu, %zu, %zu); restored byte for byte\n", sizeof(struct old_callbacks),
           sizeof(struct old_ram_desc), (size_t)OLD_INFO_SIZE, sizeof(lm_callbacks),
           sizeof(lm_ram_desc), sizeof(lm_info));
    return 0;
}
