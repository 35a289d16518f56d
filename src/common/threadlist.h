/*
 * Thread list: the threads a migration runs, by name and kernel thread id,
 * for QEMU's query-migrationthreads.  Each thread adds itself when it
 * starts and removes itself before it returns, so the list says what runs
 * now.  Any thread may read it.
 */
#ifndef LM_COMMON_THREADLIST_H
#define LM_COMMON_THREADLIST_H

#include <pthread.h>
#include <stddef.h>

#define LM_THREAD_NAME_MAX 32

typedef struct lm_thread_entry {
    char name[LM_THREAD_NAME_MAX];
    int tid;
} lm_thread_entry;

typedef struct lm_thread_list {
    pthread_mutex_t lock;
    lm_thread_entry *v;
    size_t n, cap;
} lm_thread_list;

void lm_thread_list_init(lm_thread_list *l);
void lm_thread_list_destroy(lm_thread_list *l);
/* The calling thread, under name (printf format).  Out of memory leaves it
 * unlisted: the list is for observers, the migration does not depend on it. */
void lm_thread_list_add(lm_thread_list *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Removes the calling thread (nothing if it is not listed). */
void lm_thread_list_remove(lm_thread_list *l);
/* Calls fn for each listed thread, oldest first, under the list's lock:
 * fn must not add or remove threads.  Returns how many there were. */
size_t lm_thread_list_foreach(lm_thread_list *l,
                              void (*fn)(void *opaque, const char *name, int tid), void *opaque);

#endif
