#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/util.h"
#include "postcopy/trace.h"

/* Enough for every fault of a run of the latency bench several times over. */
#define TRACE_MAX 65536u

typedef struct trace_mark {
    uint64_t ns;
    uint64_t page;
    uint32_t block;
    uint8_t ev;
    char chan;
} trace_mark;

struct lm_pc_trace {
    char path[256];
    char role[8];
    uint32_t n; /* atomic: marks taken (may pass TRACE_MAX) */
    trace_mark marks[TRACE_MAX];
};

static const char *const event_names[LM_PCT_NEVENTS] = {
    "fault", "req", "queued", "taken", "sent", "hdr", "data", "placed",
};

lm_pc_trace *lm_pc_trace_open(const char *role)
{
    const char *path = getenv("LIVEMIG_POSTCOPY_TRACE");
    if (!path || !*path) {
        return NULL;
    }
    lm_pc_trace *t = calloc(1, sizeof(*t));
    if (!t) {
        return NULL;
    }
    snprintf(t->path, sizeof(t->path), "%s", path);
    snprintf(t->role, sizeof(t->role), "%s", role);
    return t;
}

void lm_pc_trace_mark(lm_pc_trace *t, lm_pc_trace_event ev, char chan, uint32_t block, uint64_t page)
{
    if (!t) {
        return;
    }
    uint32_t i = __atomic_fetch_add(&t->n, 1, __ATOMIC_RELAXED);
    if (i < TRACE_MAX) {
        t->marks[i] = (trace_mark){ lm_now_ns(), page, block, (uint8_t)ev, chan };
    }
}

void lm_pc_trace_close(lm_pc_trace *t)
{
    if (!t) {
        return;
    }
    uint32_t n = LM_MIN(__atomic_load_n(&t->n, __ATOMIC_ACQUIRE), TRACE_MAX);
    size_t cap = (size_t)n * 80 + 1, len = 0;
    char *out = malloc(cap);
    int fd = open(t->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out && fd >= 0) {
        for (uint32_t i = 0; i < n; i++) {
            const trace_mark *m = &t->marks[i];
            len += (size_t)snprintf(out + len, cap - len, "%s %s %c %u %llu %llu\n", t->role,
                                    event_names[m->ev < LM_PCT_NEVENTS ? m->ev : 0], m->chan, m->block,
                                    (unsigned long long)m->page, (unsigned long long)m->ns);
        }
        /* One write: the other side may append to the same file. */
        if (write(fd, out, len) != (ssize_t)len) {
            lm_warn("LIVEMIG_POSTCOPY_TRACE: cannot write %s", t->path);
        }
    } else {
        lm_warn("LIVEMIG_POSTCOPY_TRACE: cannot write %s", t->path);
    }
    if (fd >= 0) {
        close(fd);
    }
    free(out);
    free(t);
}
