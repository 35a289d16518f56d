/*
 * Console backends and their I/O thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "rv_chardev.h"

#define OUT_SIZE (64 * 1024)
#define IN_SIZE 4096

enum chr_kind { CHR_STDOUT, CHR_FILE, CHR_NONE, CHR_UNIX };

struct rv_chardev {
    enum chr_kind kind;
    int out_fd;              /* stdout or file */
    int in_fd;               /* stdin for CHR_STDOUT, else -1 */
    int listen_fd, client_fd;
    char *path;              /* unix: unlinked at close */
    int event_fd;            /* wakes the thread: output queued, or quit */
    pthread_t thread;
    bool started;

    pthread_mutex_t lock;    /* everything below */
    bool quit;
    uint8_t out[OUT_SIZE];   /* ring of output not yet sent to the client */
    size_t out_head, out_len;
    uint8_t in[IN_SIZE];     /* ring of typed input not yet taken */
    size_t in_head, in_len;
    void (*input)(void *opaque);
    void *opaque;
};

int rv_chardev_open(const char *spec, rv_chardev **out, lm_error *err)
{
    rv_chardev *c = calloc(1, sizeof(*c));
    if (!c) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    c->out_fd = c->in_fd = c->listen_fd = c->client_fd = c->event_fd = -1;
    pthread_mutex_init(&c->lock, NULL);
    int ret;
    if (strcmp(spec, "stdout") == 0) {
        c->kind = CHR_STDOUT;
        c->out_fd = STDOUT_FILENO;
        c->in_fd = STDIN_FILENO;
    } else if (strcmp(spec, "none") == 0) {
        c->kind = CHR_NONE;
    } else if (strncmp(spec, "file:", 5) == 0 && spec[5]) {
        c->kind = CHR_FILE;
        c->out_fd = open(spec + 5, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (c->out_fd < 0) {
            ret = lm_error_set_errno(err, -errno, "cannot open serial file '%s'", spec + 5);
            goto fail;
        }
    } else if (strncmp(spec, "unix:", 5) == 0 && spec[5]) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        c->kind = CHR_UNIX;
        if (strlen(spec + 5) >= sizeof(sa.sun_path)) {
            ret = lm_error_set(err, -ENAMETOOLONG, "--serial: socket path too long");
            goto fail;
        }
        strcpy(sa.sun_path, spec + 5);
        c->path = strdup(spec + 5);
        c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (!c->path || c->listen_fd < 0) {
            ret = lm_error_set_errno(err, -errno, "serial socket");
            goto fail;
        }
        unlink(sa.sun_path);
        if (bind(c->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            listen(c->listen_fd, 1) < 0) {
            ret = lm_error_set_errno(err, -errno, "cannot listen on serial socket '%s'", spec + 5);
            free(c->path);
            c->path = NULL;
            goto fail;
        }
    } else {
        ret = lm_error_set(err, -EINVAL, "--serial '%s': expected stdout, file:PATH, unix:PATH or none",
                           spec);
        goto fail;
    }
    c->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->event_fd < 0) {
        ret = lm_error_set_errno(err, -errno, "eventfd");
        goto fail;
    }
    *out = c;
    return 0;
fail:
    rv_chardev_close(c);
    return ret;
}

static void kick(rv_chardev *c)
{
    uint64_t one = 1;
    ssize_t r = write(c->event_fd, &one, sizeof(one));
    (void)r; /* a full counter wakes the thread anyway */
}

void rv_chardev_write(rv_chardev *c, uint8_t byte)
{
    switch (c->kind) {
    case CHR_NONE:
        return;
    case CHR_STDOUT:
    case CHR_FILE: {
        ssize_t r = write(c->out_fd, &byte, 1);
        (void)r; /* a console that cannot be written loses output, as QEMU's */
        return;
    }
    case CHR_UNIX:
        break;
    }
    pthread_mutex_lock(&c->lock);
    bool was_empty = c->out_len == 0;
    if (c->out_len == OUT_SIZE) {
        /* Full: drop the oldest byte; the newest output matters most. */
        c->out_head = (c->out_head + 1) % OUT_SIZE;
        c->out_len--;
    }
    c->out[(c->out_head + c->out_len) % OUT_SIZE] = byte;
    c->out_len++;
    bool connected = c->client_fd >= 0;
    pthread_mutex_unlock(&c->lock);
    if (was_empty && connected) {
        kick(c);
    }
}

size_t rv_chardev_read(rv_chardev *c, uint8_t *buf, size_t n)
{
    size_t got = 0;
    pthread_mutex_lock(&c->lock);
    bool was_full = c->in_len == IN_SIZE;
    while (got < n && c->in_len > 0) {
        buf[got++] = c->in[c->in_head];
        c->in_head = (c->in_head + 1) % IN_SIZE;
        c->in_len--;
    }
    pthread_mutex_unlock(&c->lock);
    if (was_full && got) {
        kick(c); /* room again: read more input */
    }
    return got;
}

/* Moves queued output to the client; with c->lock held. */
static void flush_locked(rv_chardev *c)
{
    while (c->out_len > 0 && c->client_fd >= 0) {
        size_t chunk = c->out_len;
        if (c->out_head + chunk > OUT_SIZE) {
            chunk = OUT_SIZE - c->out_head;
        }
        ssize_t w = send(c->client_fd, c->out + c->out_head, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                return;
            }
            close(c->client_fd); /* gone: keep the output for the next one */
            c->client_fd = -1;
            return;
        }
        c->out_head = (c->out_head + (size_t)w) % OUT_SIZE;
        c->out_len -= (size_t)w;
    }
}

/* Reads typed input from fd into the ring; false at EOF or error. */
static bool read_input_locked(rv_chardev *c, int fd)
{
    uint8_t buf[512];
    size_t room = IN_SIZE - c->in_len;
    if (room == 0) {
        return true;
    }
    ssize_t r = read(fd, buf, room < sizeof(buf) ? room : sizeof(buf));
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        return true;
    }
    if (r <= 0) {
        return false;
    }
    for (ssize_t i = 0; i < r; i++) {
        c->in[(c->in_head + c->in_len) % IN_SIZE] = buf[i];
        c->in_len++;
    }
    return true;
}

static void *chardev_thread(void *arg)
{
    rv_chardev *c = arg;

    for (;;) {
        struct pollfd pfd[3];
        int n = 0, in_idx = -1, listen_idx = -1;

        pthread_mutex_lock(&c->lock);
        if (c->quit) {
            pthread_mutex_unlock(&c->lock);
            break;
        }
        pfd[n++] = (struct pollfd){ .fd = c->event_fd, .events = POLLIN };
        int in_fd = c->kind == CHR_UNIX ? c->client_fd : c->in_fd;
        if (in_fd >= 0) {
            short ev = 0;
            if (c->in_len < IN_SIZE) {
                ev |= POLLIN;
            }
            if (c->kind == CHR_UNIX && c->out_len > 0) {
                ev |= POLLOUT;
            }
            in_idx = n;
            pfd[n++] = (struct pollfd){ .fd = in_fd, .events = ev };
        }
        if (c->kind == CHR_UNIX && c->client_fd < 0) {
            listen_idx = n;
            pfd[n++] = (struct pollfd){ .fd = c->listen_fd, .events = POLLIN };
        }
        pthread_mutex_unlock(&c->lock);

        if (poll(pfd, (nfds_t)n, -1) < 0 && errno != EINTR) {
            break;
        }
        if (pfd[0].revents & POLLIN) {
            uint64_t v;
            ssize_t r = read(c->event_fd, &v, sizeof(v));
            (void)r;
        }
        bool got_input = false;
        pthread_mutex_lock(&c->lock);
        if (listen_idx >= 0 && (pfd[listen_idx].revents & POLLIN)) {
            int fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0) {
                c->client_fd = fd;
            }
        }
        if (in_idx >= 0 && pfd[in_idx].revents) {
            size_t before = c->in_len;
            if ((pfd[in_idx].revents & (POLLIN | POLLHUP | POLLERR)) && !read_input_locked(c, in_fd)) {
                if (c->kind == CHR_UNIX) {
                    if (c->client_fd >= 0) {
                        close(c->client_fd);
                    }
                    c->client_fd = -1;
                } else {
                    c->in_fd = -1; /* stdin at EOF: no more input */
                }
            }
            got_input = c->in_len > before;
        }
        if (c->kind == CHR_UNIX) {
            flush_locked(c);
        }
        void (*input)(void *) = c->input;
        void *opaque = c->opaque;
        pthread_mutex_unlock(&c->lock);
        if (got_input && input) {
            input(opaque);
        }
    }
    return NULL;
}

int rv_chardev_start(rv_chardev *c, void (*input)(void *opaque), void *opaque, lm_error *err)
{
    pthread_mutex_lock(&c->lock);
    c->input = input;
    c->opaque = opaque;
    pthread_mutex_unlock(&c->lock);
    if (c->kind == CHR_NONE || c->kind == CHR_FILE) {
        return 0;
    }
    int ret = pthread_create(&c->thread, NULL, chardev_thread, c);
    if (ret) {
        return lm_error_set(err, -ret, "cannot start the console thread");
    }
    c->started = true;
    return 0;
}

void rv_chardev_close(rv_chardev *c)
{
    if (!c) {
        return;
    }
    if (c->started) {
        pthread_mutex_lock(&c->lock);
        c->quit = true;
        pthread_mutex_unlock(&c->lock);
        kick(c);
        pthread_join(c->thread, NULL);
    }
    if (c->kind == CHR_UNIX) {
        pthread_mutex_lock(&c->lock);
        /* Last output to a connected client, best effort. */
        flush_locked(c);
        pthread_mutex_unlock(&c->lock);
    }
    if (c->kind == CHR_FILE && c->out_fd >= 0) {
        close(c->out_fd);
    }
    if (c->client_fd >= 0) {
        close(c->client_fd);
    }
    if (c->listen_fd >= 0) {
        close(c->listen_fd);
    }
    if (c->path) {
        unlink(c->path);
        free(c->path);
    }
    if (c->event_fd >= 0) {
        close(c->event_fd);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}
