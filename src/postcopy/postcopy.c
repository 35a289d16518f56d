#include "postcopy/postcopy.h"

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/util.h"
#include "stream/stream.h"

int lm_pc_write_command(lm_channel *ch, uint16_t cmd, const void *body, uint16_t len)
{
    return lm_stream_write_command(ch, cmd, body, len);
}

/* 0.1 ms, the shortest slice the kernel takes. */
#define URGENT_SLICE_NS 100000ull

/* The kernel's struct sched_attr (linux/sched/types.h clashes with libc's
 * sched.h). */
struct pc_sched_attr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
    uint32_t sched_util_min;
    uint32_t sched_util_max;
};

void lm_pc_urgent_thread(const char *what)
{
#if defined(SYS_sched_setattr) && defined(SYS_sched_getattr)
    struct pc_sched_attr a;
    memset(&a, 0, sizeof(a));
    if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0) < 0 || a.sched_policy != SCHED_OTHER) {
        return; /* whoever set another policy knows better */
    }
    a.size = sizeof(a);
    a.sched_runtime = URGENT_SLICE_NS;
    a.sched_flags = 0;
    if (syscall(SYS_sched_setattr, 0, &a, 0) < 0) {
        lm_debug("postcopy: %s thread keeps the default time slice (%s)", what, strerror(errno));
    }
#else
    (void)what;
#endif
}
