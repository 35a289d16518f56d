#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/threadlist.h"

void lm_thread_list_init(lm_thread_list *l)
{
    memset(l, 0, sizeof(*l));
    pthread_mutex_init(&l->lock, NULL);
}

void lm_thread_list_destroy(lm_thread_list *l)
{
    free(l->v);
    pthread_mutex_destroy(&l->lock);
}

void lm_thread_list_add(lm_thread_list *l, const char *fmt, ...)
{
    lm_thread_entry ent = { .tid = (int)gettid() };
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ent.name, sizeof(ent.name), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&l->lock);
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        lm_thread_entry *v = realloc(l->v, cap * sizeof(*v));
        if (v) {
            l->v = v;
            l->cap = cap;
        }
    }
    if (l->n < l->cap) {
        l->v[l->n++] = ent;
    }
    pthread_mutex_unlock(&l->lock);
}

void lm_thread_list_remove(lm_thread_list *l)
{
    int tid = (int)gettid();
    pthread_mutex_lock(&l->lock);
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].tid == tid) {
            memmove(l->v + i, l->v + i + 1, (l->n - i - 1) * sizeof(l->v[0]));
            l->n--;
            break;
        }
    }
    pthread_mutex_unlock(&l->lock);
}

size_t lm_thread_list_foreach(lm_thread_list *l,
                              void (*fn)(void *opaque, const char *name, int tid), void *opaque)
{
    pthread_mutex_lock(&l->lock);
    size_t n = l->n;
    for (size_t i = 0; i < n; i++) {
        fn(opaque, l->v[i].name, l->v[i].tid);
    }
    pthread_mutex_unlock(&l->lock);
    return n;
}
