#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "channel/transport.h"
#include "common/clock.h"
#include "common/util.h"

struct lm_listener {
    lm_uri uri;
    int listen_fd;    /* sockets */
    int single_fd;    /* fd/exec/file: handed out once */
    int single_pid;
    int wake[2];      /* abort pipe */
    char address[600];
};

int lm_uri_parse(const char *uri, lm_uri *u, lm_error *err)
{
    memset(u, 0, sizeof(*u));
    u->fd = -1;
    if (!uri) {
        return lm_error_set(err, -EINVAL, "missing migration URI");
    }
    if (!strncmp(uri, "unix:", 5)) {
        u->kind = LM_TRANSPORT_UNIX;
        if (!uri[5] || strlen(uri + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            return lm_error_set(err, -EINVAL, "invalid unix socket path in '%s'", uri);
        }
        snprintf(u->path, sizeof(u->path), "%s", uri + 5);
        return 0;
    }
    if (!strncmp(uri, "tcp:", 4)) {
        const char *hp = uri + 4, *colon;
        u->kind = LM_TRANSPORT_TCP;
        if (*hp == '[') {
            const char *close = strchr(hp, ']');
            if (!close || close[1] != ':' || (size_t)(close - hp - 1) >= sizeof(u->host)) {
                return lm_error_set(err, -EINVAL, "invalid IPv6 address in '%s'", uri);
            }
            memcpy(u->host, hp + 1, (size_t)(close - hp - 1));
            colon = close + 1;
        } else {
            colon = strrchr(hp, ':');
            if (!colon || (size_t)(colon - hp) >= sizeof(u->host)) {
                return lm_error_set(err, -EINVAL, "'%s': expected tcp:HOST:PORT", uri);
            }
            memcpy(u->host, hp, (size_t)(colon - hp));
        }
        const char *port = colon + 1;
        char *end;
        long p = strtol(port, &end, 10);
        if (!*port || *end || p < 0 || p > 65535) {
            return lm_error_set(err, -EINVAL, "invalid port in '%s'", uri);
        }
        snprintf(u->port, sizeof(u->port), "%ld", p);
        if (!u->host[0]) {
            snprintf(u->host, sizeof(u->host), "0.0.0.0");
        }
        return 0;
    }
    if (!strncmp(uri, "fd:", 3)) {
        char *end;
        long fd = strtol(uri + 3, &end, 10);
        u->kind = LM_TRANSPORT_FD;
        if (!uri[3] || *end || fd < 0 || fd > 1 << 20 || fcntl((int)fd, F_GETFD) < 0) {
            return lm_error_set(err, -EBADF, "'%s': not an open file descriptor", uri);
        }
        u->fd = (int)fd;
        return 0;
    }
    if (!strncmp(uri, "exec:", 5)) {
        u->kind = LM_TRANSPORT_EXEC;
        if (!uri[5] || strlen(uri + 5) >= sizeof(u->path)) {
            return lm_error_set(err, -EINVAL, "invalid command in '%s'", uri);
        }
        snprintf(u->path, sizeof(u->path), "%s", uri + 5);
        return 0;
    }
    if (!strncmp(uri, "file:", 5)) {
        u->kind = LM_TRANSPORT_FILE;
        /* Options follow the path: ",offset=N" and ",fd=M" (a descriptor
         * already open on the file, e.g. dup'ed from a QMP fd set). */
        const char *opt_off = strstr(uri + 5, ",offset=");
        const char *opt_fd = strstr(uri + 5, ",fd=");
        const char *end_path = opt_off && (!opt_fd || opt_off < opt_fd) ? opt_off : opt_fd;
        size_t len = end_path ? (size_t)(end_path - uri - 5) : strlen(uri + 5);
        if (!len || len >= sizeof(u->path)) {
            return lm_error_set(err, -EINVAL, "invalid file path in '%s'", uri);
        }
        memcpy(u->path, uri + 5, len);
        if (opt_off) {
            char *end;
            const char *num = opt_off + 8;
            errno = 0;
            unsigned long long off = strtoull(num, &end, 0);
            if (!*num || (*end && *end != ',') || errno || *num == '-') {
                return lm_error_set(err, -EINVAL, "invalid offset in '%s'", uri);
            }
            u->offset = off;
        }
        if (opt_fd) {
            char *end;
            const char *num = opt_fd + 4;
            long fd = strtol(num, &end, 10);
            if (!*num || (*end && *end != ',') || fd < 0 || fd > 1 << 20 ||
                fcntl((int)fd, F_GETFD) < 0) {
                return lm_error_set(err, -EBADF, "'%s': not an open file descriptor", uri);
            }
            u->fd = (int)fd;
        }
        return 0;
    }
    return lm_error_set(err, -EINVAL,
                        "unknown migration protocol in '%s' (expected unix:, tcp:, fd:, exec: or file:)",
                        uri);
}

bool lm_uri_multi_channel(const lm_uri *u)
{
    return u->kind == LM_TRANSPORT_UNIX || u->kind == LM_TRANSPORT_TCP;
}

/* tcp: TCP_NODELAY only, as QEMU's multifd channels (a lone small message,
 * a return-path reply, must not wait for an ACK); buffer sizes are left to
 * the kernel.  Setting SO_SNDBUF or SO_RCVBUF locks a tcp socket's buffer
 * and turns its autotuning off (tcp_rmem's maximum here is 32 MiB), and
 * net.core.rmem_max/wmem_max cap the request silently (208 KiB on a stock
 * Debian 12: a 416 KiB window, crippling on a real link).  Unix stream
 * sockets have no autotuning: 4 MiB lets a sender queue a few records. */
static void tune_socket(int fd, bool tcp)
{
    int one = 1, buf = 4 << 20;
    if (tcp) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

static int spawn_command(const char *cmd, int *fd, int *pid, lm_error *err)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return lm_error_set_errno(err, -errno, "exec: socketpair");
    }
    pid_t child = fork();
    if (child < 0) {
        int code = -errno;
        close(sv[0]);
        close(sv[1]);
        return lm_error_set_errno(err, code, "exec: fork");
    }
    if (child == 0) {
        /* The command's stdin and stdout are the migration stream; no other
         * descriptor of ours leaks into it. */
        dup2(sv[1], 0);
        dup2(sv[1], 1);
        close_range(3, ~0u, 0);
        signal(SIGPIPE, SIG_DFL);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    *fd = sv[0];
    *pid = child;
    return 0;
}

/* A save never follows a symbolic link in its last component: a link
 * planted where the image goes cannot redirect guest memory elsewhere. */
#define SAVE_OPEN_FLAGS (O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC)

/* A descriptor handed over in the URI (",fd=M") must allow what the
 * migration does with it: QEMU's fd sets match on the access mode. */
static int check_fd_access(const lm_uri *u, bool writing, lm_error *err)
{
    int fl = fcntl(u->fd, F_GETFL);
    if (fl < 0) {
        return lm_error_set_errno(err, -errno, "'%s': descriptor %d", u->path, u->fd);
    }
    int mode = fl & O_ACCMODE;
    if (writing ? mode == O_RDONLY : mode == O_WRONLY) {
        return lm_error_set(err, -EACCES, "'%s': descriptor %d is not open for %s", u->path,
                            u->fd, writing ? "writing" : "reading");
    }
    return 0;
}

/* Opens the file, or with ",fd=M" uses M: a save takes M over once it
 * succeeded (on failure M stays with whoever put it in the URI), a restore
 * works on a duplicate, so the caller closes its M once listen returned. */
static int open_file(const lm_uri *u, bool writing, int *fd, lm_error *err)
{
    int f;
    if (u->fd >= 0) {
        int ret = check_fd_access(u, writing, err);
        if (ret < 0) {
            return ret;
        }
        f = writing ? u->fd : fcntl(u->fd, F_DUPFD_CLOEXEC, 3);
    } else {
        f = writing ? open(u->path, SAVE_OPEN_FLAGS, 0600) : open(u->path, O_RDONLY | O_CLOEXEC);
    }
    if (f < 0 && writing && errno == ELOOP) {
        return lm_error_set(err, -ELOOP, "cannot open '%s' for writing: it is a symbolic link",
                            u->path);
    }
    if (f < 0) {
        return lm_error_set_errno(err, -errno, "cannot open '%s'", u->path);
    }
    int ret = 0;
    if (writing && ftruncate(f, (off_t)u->offset) < 0) {
        ret = lm_error_set_errno(err, -errno, "cannot truncate '%s'", u->path);
    } else if (lseek(f, (off_t)u->offset, SEEK_SET) < 0) {
        ret = lm_error_set_errno(err, -errno, "cannot seek '%s' to %llu", u->path,
                                 (unsigned long long)u->offset);
    }
    if (ret < 0) {
        if (f != u->fd) {
            close(f);
        }
        return ret;
    }
    *fd = f;
    return 0;
}

int lm_transport_check_file(const lm_uri *u, lm_error *err)
{
    if (u->kind != LM_TRANSPORT_FILE) {
        return 0;
    }
    if (u->fd >= 0) {
        return check_fd_access(u, true, err);
    }
    /* Opened as the save will open it, but not truncated: nothing changes
     * yet.  Non-blocking, so a FIFO without a reader does not hold the
     * command (ENXIO): the migration thread waits for that one. */
    int f = open(u->path, SAVE_OPEN_FLAGS | O_NONBLOCK, 0600);
    if (f < 0 && errno == ENXIO) {
        return 0;
    }
    if (f < 0 && errno == ELOOP) {
        return lm_error_set(err, -ELOOP, "cannot open '%s' for writing: it is a symbolic link",
                            u->path);
    }
    if (f < 0) {
        return lm_error_set_errno(err, -errno, "cannot open '%s'", u->path);
    }
    close(f);
    return 0;
}

/* Non-blocking connect that can be abandoned; the socket ends up blocking. */
static int connect_abortable(int s, const struct sockaddr *sa, socklen_t len,
                             bool (*should_abort)(void *), void *opaque)
{
    int flags = fcntl(s, F_GETFL);
    fcntl(s, F_SETFL, flags | O_NONBLOCK);
    int ret = 0;
    for (;;) {
        if (connect(s, sa, len) == 0) {
            break;
        }
        int e = errno;
        if (e == EISCONN) {
            break;
        }
        if (e != EINPROGRESS && e != EAGAIN && e != EALREADY && e != EINTR) {
            ret = -e;
            break;
        }
        if (should_abort && should_abort(opaque)) {
            ret = -ECANCELED;
            break;
        }
        if (e == EAGAIN) {
            /* Unix socket with a full backlog: retry shortly. */
            struct timespec ts = { 0, 20 * 1000 * 1000 };
            nanosleep(&ts, NULL);
            continue;
        }
        struct pollfd p = { s, POLLOUT, 0 };
        int n = poll(&p, 1, 100);
        if (n > 0) {
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            ret = -soerr;
            break;
        }
    }
    fcntl(s, F_SETFL, flags);
    return ret;
}

int lm_transport_connect(const lm_uri *u, int *fd, int *pid, bool (*should_abort)(void *),
                         void *opaque, lm_error *err)
{
    *pid = 0;
    *fd = -1;
    switch (u->kind) {
    case LM_TRANSPORT_UNIX: {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) {
            return lm_error_set_errno(err, -errno, "socket");
        }
        memcpy(sa.sun_path, u->path, strnlen(u->path, sizeof(sa.sun_path) - 1)); /* length checked by lm_uri_parse */
        tune_socket(s, false);
        int code = connect_abortable(s, (struct sockaddr *)&sa, sizeof(sa), should_abort, opaque);
        if (code < 0) {
            close(s);
            return lm_error_set_errno(err, code, "failed to connect to unix:%s", u->path);
        }
        *fd = s;
        return 0;
    }
    case LM_TRANSPORT_TCP: {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
        int rc = getaddrinfo(u->host, u->port, &hints, &res);
        if (rc) {
            return lm_error_set(err, -EHOSTUNREACH, "cannot resolve '%s': %s", u->host,
                                gai_strerror(rc));
        }
        int code = -ECONNREFUSED;
        for (ai = res; ai; ai = ai->ai_next) {
            int s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (s < 0) {
                code = -errno;
                continue;
            }
            tune_socket(s, true);
            code = connect_abortable(s, ai->ai_addr, ai->ai_addrlen, should_abort, opaque);
            if (code == 0) {
                *fd = s;
                break;
            }
            close(s);
            if (code == -ECANCELED) {
                break;
            }
        }
        freeaddrinfo(res);
        if (*fd < 0) {
            return lm_error_set_errno(err, code, "failed to connect to tcp:%s:%s", u->host, u->port);
        }
        return 0;
    }
    case LM_TRANSPORT_FD:
        *fd = u->fd;
        return 0;
    case LM_TRANSPORT_EXEC:
        return spawn_command(u->path, fd, pid, err);
    case LM_TRANSPORT_FILE:
        return open_file(u, true, fd, err);
    }
    return lm_error_set(err, -EINVAL, "unknown transport");
}

static int listen_socket(lm_listener *l, lm_error *err)
{
    const lm_uri *u = &l->uri;
    if (u->kind == LM_TRANSPORT_UNIX) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) {
            return lm_error_set_errno(err, -errno, "socket");
        }
        memcpy(sa.sun_path, u->path, strnlen(u->path, sizeof(sa.sun_path) - 1)); /* length checked by lm_uri_parse */
        unlink(u->path);
        if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s, 128) < 0) {
            int code = -errno;
            close(s);
            return lm_error_set_errno(err, code, "failed to listen on unix:%s", u->path);
        }
        l->listen_fd = s;
        snprintf(l->address, sizeof(l->address), "unix:%s", u->path);
        return 0;
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res;
    int rc = getaddrinfo(u->host, u->port, &hints, &res);
    if (rc) {
        return lm_error_set(err, -EADDRNOTAVAIL, "cannot resolve '%s': %s", u->host,
                            gai_strerror(rc));
    }
    int code = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        int one = 1;
        if (s < 0) {
            code = -errno;
            continue;
        }
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(s, ai->ai_addr, ai->ai_addrlen) == 0 && listen(s, 128) == 0) {
            l->listen_fd = s;
            break;
        }
        code = -errno;
        close(s);
    }
    freeaddrinfo(res);
    if (l->listen_fd < 0) {
        return lm_error_set_errno(err, code, "failed to listen on tcp:%s:%s", u->host, u->port);
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN + 1] = "", port[16] = "";
    getsockname(l->listen_fd, (struct sockaddr *)&ss, &sl);
    getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
                NI_NUMERICHOST | NI_NUMERICSERV);
    if (ss.ss_family == AF_INET6) {
        snprintf(l->address, sizeof(l->address), "tcp:[%s]:%s", host, port);
    } else {
        snprintf(l->address, sizeof(l->address), "tcp:%s:%s", host, port);
    }
    return 0;
}

int lm_transport_listen(const lm_uri *u, lm_listener **out, lm_error *err)
{
    lm_listener *l = calloc(1, sizeof(*l));
    if (!l) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    l->uri = *u;
    l->listen_fd = l->single_fd = -1;
    if (pipe2(l->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        int code = -errno;
        free(l);
        return lm_error_set_errno(err, code, "pipe");
    }
    int ret = 0;
    switch (u->kind) {
    case LM_TRANSPORT_UNIX:
    case LM_TRANSPORT_TCP:
        ret = listen_socket(l, err);
        break;
    case LM_TRANSPORT_FD:
        l->single_fd = u->fd;
        break;
    case LM_TRANSPORT_EXEC:
        ret = spawn_command(u->path, &l->single_fd, &l->single_pid, err);
        break;
    case LM_TRANSPORT_FILE:
        ret = open_file(u, false, &l->single_fd, err);
        break;
    }
    if (ret < 0) {
        close(l->wake[0]);
        close(l->wake[1]);
        free(l);
        return ret;
    }
    *out = l;
    return 0;
}

int lm_listener_accept(lm_listener *l, int *fd, int *pid, lm_error *err)
{
    *pid = 0;
    if (l->listen_fd < 0) {
        if (l->single_fd < 0) {
            return lm_error_set(err, -EPIPE, "this transport carries a single stream");
        }
        *fd = l->single_fd;
        *pid = l->single_pid;
        l->single_fd = -1;
        return 0;
    }
    for (;;) {
        struct pollfd p[2] = { { l->listen_fd, POLLIN, 0 }, { l->wake[0], POLLIN, 0 } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return lm_error_set_errno(err, -errno, "poll");
        }
        if (p[1].revents) {
            return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
        }
        int s = accept4(l->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) {
                continue;
            }
            return lm_error_set_errno(err, -errno, "accept");
        }
        tune_socket(s, l->uri.kind == LM_TRANSPORT_TCP);
        *fd = s;
        return 0;
    }
}

/* Waits until `need` bytes can be peeked on s, the abort pipe fires, or
 * the deadline (0: none) passes.  0: ready; -ETIMEDOUT; -EPIPE: the peer
 * closed first; -ECANCELED; other -errno. */
static int wait_handshake(lm_listener *l, int s, size_t need, uint64_t deadline_ns)
{
    char peek[64];
    for (;;) {
        ssize_t n = recv(s, peek, LM_MIN(need, sizeof(peek)), MSG_PEEK | MSG_DONTWAIT);
        if (n >= 0 && (size_t)n >= LM_MIN(need, sizeof(peek))) {
            return 0;
        }
        if (n == 0) {
            return -EPIPE;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return -errno;
        }
        int wait_ms = -1;
        if (deadline_ns) {
            uint64_t now = lm_now_ns();
            if (now >= deadline_ns) {
                return -ETIMEDOUT;
            }
            wait_ms = (int)LM_MIN((deadline_ns - now + 999999) / 1000000, (uint64_t)INT32_MAX);
        }
        /* Part of the handshake is there: poll would report the socket
         * readable at once, so look again in a little while instead. */
        bool partial = n > 0;
        if (partial && (wait_ms < 0 || wait_ms > 10)) {
            wait_ms = 10;
        }
        struct pollfd p[2] = { { l->wake[0], POLLIN, 0 }, { s, partial ? 0 : POLLIN, 0 } };
        if (poll(p, 2, wait_ms) < 0 && errno != EINTR) {
            return -errno;
        }
        if (p[0].revents) {
            return -ECANCELED;
        }
    }
}

int lm_listener_accept_ready(lm_listener *l, size_t need, unsigned timeout_ms, int *fd, int *pid,
                             lm_error *err)
{
    if (l->listen_fd < 0 || need == 0) {
        return lm_listener_accept(l, fd, pid, err);
    }
    for (;;) {
        int s;
        int ret = lm_listener_accept(l, &s, pid, err);
        if (ret < 0) {
            return ret;
        }
        uint64_t deadline = timeout_ms ? lm_now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
        ret = wait_handshake(l, s, need, deadline);
        if (ret == 0) {
            *fd = s;
            return 0;
        }
        close(s);
        if (ret == -ECANCELED) {
            return lm_error_set(err, -ECANCELED, "incoming migration cancelled");
        }
        if (ret == -ETIMEDOUT) {
            lm_warn("%s: dropped a connection that did not complete its handshake within %u ms",
                    l->address, timeout_ms);
        } else {
            lm_warn("%s: dropped a connection that closed before its handshake (%s)", l->address,
                    strerror(-ret));
        }
    }
}

const char *lm_listener_address(const lm_listener *l)
{
    return l->address;
}

const lm_uri *lm_listener_uri(const lm_listener *l)
{
    return &l->uri;
}

void lm_listener_abort(lm_listener *l)
{
    char c = 1;
    ssize_t r = write(l->wake[1], &c, 1);
    (void)r;
}

void lm_listener_close(lm_listener *l)
{
    if (!l) {
        return;
    }
    if (l->listen_fd >= 0) {
        close(l->listen_fd);
        if (l->uri.kind == LM_TRANSPORT_UNIX) {
            unlink(l->uri.path);
        }
    }
    if (l->single_fd >= 0) {
        close(l->single_fd);
    }
    close(l->wake[0]);
    close(l->wake[1]);
    free(l);
}
