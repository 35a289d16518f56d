#include "common/threadtime.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
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

/* Each thread's /proc/thread-self/schedstat, opened on its first reading
 * and read again from offset 0 after that (the switchover's estimate reads
 * it around every slice of a pass: an open and a close per reading cost
 * more than the read).  The key's destructor closes it when its thread
 * exits; without the key, every reading opens its own. */
static pthread_once_t schedstat_once = PTHREAD_ONCE_INIT;
static pthread_key_t schedstat_key;
static bool schedstat_key_ok;
static __thread int schedstat_fd = -1;

static void close_schedstat(void *fd_plus_one)
{
    close((int)(intptr_t)fd_plus_one - 1);
}

static void create_schedstat_key(void)
{
    schedstat_key_ok = pthread_key_create(&schedstat_key, close_schedstat) == 0;
}

static int open_schedstat(void)
{
    return open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
}

/* The calling thread's cached fd, opened now if need be; -1 when it
 * cannot be kept (or opened). */
static int cached_schedstat_fd(void)
{
    if (schedstat_fd >= 0) {
        return schedstat_fd;
    }
    pthread_once(&schedstat_once, create_schedstat_key);
    if (!schedstat_key_ok) {
        return -1;
    }
    int fd = open_schedstat();
    if (fd < 0) {
        return -1;
    }
    /* The value is fd + 1: a destructor runs only for a non-NULL one. */
    if (pthread_setspecific(schedstat_key, (void *)(intptr_t)(fd + 1)) != 0) {
        close(fd);
        return -1;
    }
    schedstat_fd = fd;
    return fd;
}

uint64_t lm_thread_runq_wait_ns(void)
{
    /* "<on cpu ns> <waiting on a runqueue ns> <timeslices>" */
    int fd = cached_schedstat_fd();
    bool own = fd < 0;
    if (own && (fd = open_schedstat()) < 0) {
        return 0;
    }
    char buf[96];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (own) {
        close(fd);
    }
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
