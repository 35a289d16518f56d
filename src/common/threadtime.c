#include "common/threadtime.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

uint64_t lm_thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t lm_thread_runq_wait_ns(void)
{
    /* "<on cpu ns> <waiting on a runqueue ns> <timeslices>" */
    int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    char buf[96];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    char *end;
    strtoull(buf, &end, 10);
    if (end == buf) {
        return 0;
    }
    unsigned long long wait = strtoull(end, NULL, 10);
    return (uint64_t)wait;
}
