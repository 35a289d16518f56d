#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel/channel.h"
#include "channel/tls.h"
#include "channel/zerocopy.h"
#include "common/failure.h"
#include "common/util.h"
#include "livemig/buffer.h"

#define WBUF_SIZE (256 * 1024)
/* put_mem's pipe: one PAGES record (1 MiB) per vmsplice when allowed. */
#define VPIPE_BYTES (1 << 20)
/* One buffered read takes at most this much: enough for a run of record
 * headers, small enough that little of the bulk data after a header is
 * copied through the buffer rather than read straight into place. */
#define RBUF_SIZE (16 * 1024)
#define MAX_EXT_IOV 62
/* Bytes one MSG_ZEROCOPY sendmsg pins at most: the kernel charges a whole
 * call to RLIMIT_MEMLOCK at once, often only 8 MiB, shared by all channels. */
#define ZC_MAX_SEND (1u << 20)
/* ENOBUFS with nothing of ours in flight: another process of the same user
 * may give locked memory back; wait this many times 2 ms, then give up. */
#define ZC_NOBUFS_TRIES 50

struct lm_channel {
    int fd;
    int wake[2];     /* non-socket reads poll on this too, so shutdown wakes them */
    int child_pid;
    char child_cmd[128]; /* the exec: command, for its exit status message */
    bool is_socket;
    /* A unix socket: put_mem sends by reference only here.  Spliced into
     * tcp (loopback), pages went 3x slower in whole migrations (640
     * against 2152 MB/s; the destination's CPU per GiB 1.48 against
     * 0.22), into a unix socket faster (4 GiB: 2.58 against 1.40 GiB/s). */
    bool is_unix;
    bool is_file; /* a regular file: FIONREAD would say what is left of it */
    char name[64];
    lm_ratelimit *rl;

    uint8_t *wbuf;
    size_t wlen;

    uint8_t *rbuf;
    size_t rpos, rlen;

    pthread_mutex_t err_lock;
    int err_code; /* read lock-free on the fast path */
    lm_error err;

    uint64_t bytes_out;
    uint64_t bytes_in;

    bool zerocopy;   /* lm_channel_put_ext_zerocopy sends with MSG_ZEROCOPY */
    bool no_sendfile; /* sendfile() refused this fd: put_file writes from memory */
    bool no_pread;    /* TLS: pread() refused the RAM fd: put_file writes from memory */
    bool no_vmsplice; /* vmsplice() refused: put_mem writes from memory */
    int vpipe[2];     /* put_mem: pages go through it by reference (vmsplice, splice) */
    size_t vpipe_cap;
    lm_zerocopy zc;
    /* TLS (channel/tls.h): every read and write goes through the session;
     * a return path shares its main channel's. */
    lm_tls_session *tls;
};

static int socket_family(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    return getsockname(fd, (struct sockaddr *)&ss, &len) == 0 ? ss.ss_family : AF_UNSPEC;
}

lm_channel *lm_channel_new(int fd, const char *name, lm_ratelimit *rl)
{
    lm_channel *ch = calloc(1, sizeof(*ch));
    if (!ch) {
        return NULL;
    }
    struct stat st;
    ch->fd = fd;
    bool st_ok = fstat(fd, &st) == 0;
    ch->is_socket = st_ok && S_ISSOCK(st.st_mode);
    ch->is_file = st_ok && S_ISREG(st.st_mode);
    ch->is_unix = ch->is_socket && socket_family(fd) == AF_UNIX;
    ch->wbuf = malloc(WBUF_SIZE);
    ch->rbuf = malloc(RBUF_SIZE);
    if (!ch->wbuf || !ch->rbuf) {
        free(ch->wbuf);
        free(ch->rbuf);
        free(ch);
        return NULL;
    }
    snprintf(ch->name, sizeof(ch->name), "%s", name ? name : "channel");
    ch->rl = rl;
    ch->wake[0] = ch->wake[1] = -1;
    ch->vpipe[0] = ch->vpipe[1] = -1;
    if (!ch->is_socket && pipe2(ch->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        ch->wake[0] = ch->wake[1] = -1;
    }
    pthread_mutex_init(&ch->err_lock, NULL);
    return ch;
}

void lm_channel_set_child(lm_channel *ch, int pid)
{
    ch->child_pid = pid;
}

void lm_channel_set_child_command(lm_channel *ch, const char *cmd)
{
    snprintf(ch->child_cmd, sizeof(ch->child_cmd), "%s", cmd);
}

int lm_channel_fd(const lm_channel *ch)
{
    return ch->fd;
}

void lm_channel_set_ratelimit(lm_channel *ch, lm_ratelimit *rl)
{
    ch->rl = rl;
}

const char *lm_channel_name(const lm_channel *ch)
{
    return ch->name;
}

int lm_channel_close(lm_channel *ch, lm_error *err)
{
    int ret = 0;
    if (!ch) {
        return 0;
    }
    if (ch->fd >= 0) {
        close(ch->fd);
    }
    lm_tls_session_unref(ch->tls);
    if (ch->wake[0] >= 0) {
        close(ch->wake[0]);
        close(ch->wake[1]);
    }
    if (ch->vpipe[0] >= 0) {
        close(ch->vpipe[0]);
        close(ch->vpipe[1]);
    }
    if (ch->child_pid > 0) {
        int status = 0;
        pid_t r;
        while ((r = waitpid(ch->child_pid, &status, 0)) < 0 && errno == EINTR) {
        }
        if (r < 0) {
            ret = lm_error_set_errno(err, -errno, "%s: cannot wait for the command", ch->name);
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            if (ch->child_cmd[0]) {
                ret = lm_error_set(err, -EIO, "exec: '%s' exited with status %d", ch->child_cmd,
                                   code);
            } else {
                ret = lm_error_set(err, -EIO, "%s: command exited with status %d", ch->name, code);
            }
        }
    }
    pthread_mutex_destroy(&ch->err_lock);
    free(ch->wbuf);
    free(ch->rbuf);
    free(ch);
    return ret;
}

int lm_channel_set_error(lm_channel *ch, int code, const char *fmt, ...)
{
    lm_error e = LM_ERROR_INIT;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
    va_end(ap);
    e.code = code;
    pthread_mutex_lock(&ch->err_lock);
    lm_failure_set_locked(&ch->err_code, &ch->err, code, &e);
    code = ch->err_code;
    pthread_mutex_unlock(&ch->err_lock);
    return code;
}

int lm_channel_error(lm_channel *ch, lm_error *err)
{
    int code = __atomic_load_n(&ch->err_code, __ATOMIC_ACQUIRE);
    if (code && err) {
        pthread_mutex_lock(&ch->err_lock);
        lm_error_propagate(err, &ch->err);
        pthread_mutex_unlock(&ch->err_lock);
    }
    return code;
}

void lm_channel_shutdown(lm_channel *ch, int code, const char *why)
{
    lm_channel_set_error(ch, code, "%s: %s", ch->name, why);
    if (ch->is_socket) {
        shutdown(ch->fd, SHUT_RDWR);
    } else if (ch->wake[1] >= 0) {
        char c = 1;
        ssize_t r = write(ch->wake[1], &c, 1);
        (void)r;
    }
    if (ch->child_pid > 0) {
        kill(ch->child_pid, SIGTERM);
    }
}

static inline int sticky(lm_channel *ch)
{
    return __atomic_load_n(&ch->err_code, __ATOMIC_ACQUIRE);
}

static int io_error(lm_channel *ch, int code, const char *what)
{
    if (code == -EPIPE || code == -ECONNRESET) {
        return lm_channel_set_error(ch, code, "%s: connection closed by peer while %s",
                                    ch->name, what);
    }
    return lm_channel_set_error(ch, code, "%s: %s failed: %s", ch->name, what, strerror(-code));
}

/* Charges iov's bytes to the rate limit (waiting as it says); returns them. */
static uint64_t charge_iov(lm_channel *ch, const struct iovec *iov, int cnt)
{
    uint64_t total = 0;
    for (int i = 0; i < cnt; i++) {
        total += iov[i].iov_len;
    }
    if (ch->rl) {
        lm_ratelimit_consume(ch->rl, total);
    }
    return total;
}

/* A TLS write sets the channel's error itself (its message says more). */
static int write_all(lm_channel *ch, struct iovec *iov, int cnt, int flags)
{
    if (ch->tls) {
        lm_error terr = LM_ERROR_INIT;
        int ret = lm_tls_writev(ch->tls, iov, cnt, &terr);
        if (ret < 0 && !sticky(ch)) {
            lm_channel_set_error(ch, ret, "%s", terr.msg);
        }
        return ret;
    }
    if (!ch->is_socket) {
        return lm_writev_full(ch->fd, iov, cnt);
    }
    while (cnt > 0) {
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)cnt };
        ssize_t n = sendmsg(ch->fd, &msg, MSG_NOSIGNAL | flags);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        lm_iov_advance(&iov, &cnt, (size_t)n);
    }
    return 0;
}

/* The first bytes of iov, at most max of them, as their own iovec array
 * (at most MAX_EXT_IOV + 1 entries); returns its length. */
static int iov_prefix(const struct iovec *iov, int cnt, uint64_t max, struct iovec *out,
                      uint64_t *bytes)
{
    int k = 0;
    *bytes = 0;
    while (k < cnt && k < MAX_EXT_IOV + 1 && *bytes < max) {
        out[k] = iov[k];
        out[k].iov_len = (size_t)LM_MIN((uint64_t)out[k].iov_len, max - *bytes);
        *bytes += out[k].iov_len;
        k++;
    }
    return k;
}

/* Write every byte of iov; sockets use MSG_NOSIGNAL so a dead peer is an
 * error, not a SIGPIPE.  flags: more sendmsg flags (MSG_MORE).  Under a
 * bandwidth cap the bytes go in pieces of one window's budget, each charged
 * just before it is written: a dead peer or a shutdown is then seen after
 * one piece, not after the whole write has waited out its cost (a 32 MiB
 * slice at 1 MB/s would sleep half a minute before its first byte). */
static int write_iov_flags(lm_channel *ch, struct iovec *iov, int cnt, int flags)
{
    uint64_t piece = ch->rl ? lm_ratelimit_window_bytes(ch->rl) : 0;
    int ret = 0;
    if (piece == 0) {
        uint64_t total = charge_iov(ch, iov, cnt);
        ret = write_all(ch, iov, cnt, flags);
        if (ret == 0) {
            __atomic_fetch_add(&ch->bytes_out, total, __ATOMIC_RELAXED);
        }
    }
    while (piece && cnt > 0 && ret == 0 && !sticky(ch)) {
        struct iovec part[MAX_EXT_IOV + 1];
        uint64_t bytes;
        int k = iov_prefix(iov, cnt, piece, part, &bytes);
        lm_ratelimit_consume(ch->rl, bytes);
        ret = sticky(ch) ? 0 : write_all(ch, part, k, flags);
        if (ret == 0) {
            __atomic_fetch_add(&ch->bytes_out, bytes, __ATOMIC_RELAXED);
            lm_iov_advance(&iov, &cnt, (size_t)bytes);
        }
    }
    if (ret < 0) {
        return sticky(ch) ? sticky(ch) : io_error(ch, ret, "writing");
    }
    return sticky(ch);
}

static int write_iov(lm_channel *ch, struct iovec *iov, int cnt)
{
    return write_iov_flags(ch, iov, cnt, 0);
}

int lm_channel_flush(lm_channel *ch)
{
    if (sticky(ch)) {
        return sticky(ch);
    }
    if (ch->wlen == 0) {
        return 0;
    }
    struct iovec iov = { ch->wbuf, ch->wlen };
    ch->wlen = 0;
    return write_iov(ch, &iov, 1);
}

int lm_channel_put(lm_channel *ch, const void *p, size_t n)
{
    if (sticky(ch) || n == 0) {
        return sticky(ch);
    }
    if (n >= WBUF_SIZE / 2) {
        struct iovec ext = { (void *)p, n };
        return lm_channel_put_ext(ch, &ext, 1);
    }
    if (ch->wlen + n > WBUF_SIZE) {
        int ret = lm_channel_flush(ch);
        if (ret < 0) {
            return ret;
        }
    }
    memcpy(ch->wbuf + ch->wlen, p, n);
    ch->wlen += n;
    return 0;
}

int lm_channel_put_u8(lm_channel *ch, uint8_t v)
{
    return lm_channel_put(ch, &v, 1);
}

int lm_channel_put_be16(lm_channel *ch, uint16_t v)
{
    uint8_t b[2];
    lm_store_be16(b, v);
    return lm_channel_put(ch, b, 2);
}

int lm_channel_put_be32(lm_channel *ch, uint32_t v)
{
    uint8_t b[4];
    lm_store_be32(b, v);
    return lm_channel_put(ch, b, 4);
}

int lm_channel_put_be64(lm_channel *ch, uint64_t v)
{
    uint8_t b[8];
    lm_store_be64(b, v);
    return lm_channel_put(ch, b, 8);
}

static int put_ext_flags(lm_channel *ch, const struct iovec *ext, int n, int flags)
{
    if (sticky(ch)) {
        return sticky(ch);
    }
    while (n > 0) {
        struct iovec iov[MAX_EXT_IOV + 1];
        int cnt = 0;
        if (ch->wlen) {
            iov[cnt++] = (struct iovec){ ch->wbuf, ch->wlen };
            ch->wlen = 0;
        }
        int take = n < MAX_EXT_IOV ? n : MAX_EXT_IOV;
        memcpy(&iov[cnt], ext, (size_t)take * sizeof(*ext));
        cnt += take;
        int ret = write_iov_flags(ch, iov, cnt, flags);
        if (ret < 0) {
            return ret;
        }
        ext += take;
        n -= take;
    }
    if (ch->wlen) {
        struct iovec rest = { ch->wbuf, ch->wlen };
        ch->wlen = 0;
        return write_iov_flags(ch, &rest, 1, flags);
    }
    return 0;
}

int lm_channel_put_ext(lm_channel *ch, const struct iovec *ext, int n)
{
    return put_ext_flags(ch, ext, n, 0);
}

/* Whether this thread has SIGPIPE blocked for sendfile_nosignal().  Per
 * thread by nature (signal masks are); set once, as changing the mask
 * around every call costs as much as the call on a small send. */
static __thread bool sigpipe_blocked;

/* sendfile() raises SIGPIPE when a socket's peer is gone (it has no
 * MSG_NOSIGNAL): the sending thread keeps SIGPIPE blocked from its first
 * call on, and takes back the one a call raised, so that neither the
 * embedder nor a later unblock sees it.  Only the engine's own threads
 * send RAM. */
static void block_sigpipe(sigset_t *pipe_only)
{
    sigemptyset(pipe_only);
    sigaddset(pipe_only, SIGPIPE);
    if (!sigpipe_blocked) {
        pthread_sigmask(SIG_BLOCK, pipe_only, NULL);
        sigpipe_blocked = true;
    }
}

static void take_sigpipe(ssize_t n, const sigset_t *pipe_only)
{
    static const struct timespec no_wait = { 0, 0 };
    if (n < 0 && errno == EPIPE) {
        int saved = errno;
        sigtimedwait(pipe_only, NULL, &no_wait);
        errno = saved;
    }
}

static ssize_t sendfile_nosignal(int out, int in, off_t *off, size_t len)
{
    sigset_t pipe_only;
    block_sigpipe(&pipe_only);
    ssize_t n = sendfile(out, in, off, len);
    take_sigpipe(n, &pipe_only);
    return n;
}

/* splice() into a socket raises SIGPIPE as sendfile() does. */
static ssize_t splice_nosignal(int in, int out, size_t len)
{
    sigset_t pipe_only;
    block_sigpipe(&pipe_only);
    ssize_t n = splice(in, NULL, out, NULL, len, SPLICE_F_MOVE | SPLICE_F_MORE);
    take_sigpipe(n, &pipe_only);
    return n;
}

/* TLS encrypts in this process, so the pages must pass through it: read
 * from the file (page cache) into the write buffer, not through the
 * mapping, whose first touch would populate page tables behind the dirty
 * tracker's back (every page read that way looks written at the next
 * sync, and is sent twice). */
static int put_file_tls(lm_channel *ch, const struct iovec *hdr, int nhdr, int fd, uint64_t off,
                        size_t len, const void *mem)
{
    int ret = nhdr ? lm_channel_put_ext(ch, hdr, nhdr) : lm_channel_flush(ch);
    size_t done = 0;
    while (ret == 0 && done < len) {
        ssize_t n = pread(fd, ch->wbuf, LM_MIN(len - done, (size_t)WBUF_SIZE),
                          (off_t)(off + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && done == 0 && (errno == EBADF || errno == EINVAL)) {
            /* A write-only RAM fd: from memory from now on. */
            ch->no_pread = true;
            struct iovec data = { (void *)mem, len };
            return lm_channel_put_ext(ch, &data, 1);
        }
        if (n <= 0) {
            int code = n < 0 ? -errno : -EIO;
            return sticky(ch) ? sticky(ch) : io_error(ch, code, "reading RAM from its file");
        }
        struct iovec data = { ch->wbuf, (size_t)n };
        ret = write_iov(ch, &data, 1);
        done += (size_t)n;
    }
    return ret;
}

int lm_channel_put_file(lm_channel *ch, const struct iovec *hdr, int nhdr, int fd, uint64_t off,
                        const void *mem, size_t len)
{
    /* TLS encrypts in this process: the kernel cannot send the page cache. */
    if (!ch->no_sendfile && !ch->tls) {
        /* MSG_MORE: TCP may put the headers in the data's first segment. */
        int ret = put_ext_flags(ch, hdr, nhdr, MSG_MORE);
        if (ret < 0) {
            return ret;
        }
        size_t done = 0;
        while (done < len) {
            off_t pos = (off_t)(off + done);
            ssize_t n = sendfile_nosignal(ch->fd, fd, &pos, len - done);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && done == 0 &&
                (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP || errno == EBADF)) {
                /* An O_APPEND output, a write-only RAM fd: write from
                 * memory from now on. */
                ch->no_sendfile = true;
                break;
            }
            if (n < 0) {
                int code = -errno;
                return sticky(ch) ? sticky(ch) : io_error(ch, code, "sending RAM from its file");
            }
            if (n == 0) {
                return lm_channel_set_error(ch, -EIO, "%s: the RAM file ends before offset %llu",
                                            ch->name, (unsigned long long)(off + done));
            }
            done += (size_t)n;
        }
        if (!ch->no_sendfile) {
            if (ch->rl) {
                lm_ratelimit_consume(ch->rl, len);
            }
            __atomic_fetch_add(&ch->bytes_out, len, __ATOMIC_RELAXED);
            return sticky(ch);
        }
        nhdr = 0; /* already sent */
    }
    if (ch->tls && !ch->no_pread) {
        return put_file_tls(ch, hdr, nhdr, fd, off, len, mem);
    }
    struct iovec data = { (void *)mem, len };
    int ret = nhdr ? lm_channel_put_ext(ch, hdr, nhdr) : 0;
    return ret < 0 ? ret : lm_channel_put_ext(ch, &data, 1);
}

/* The pipe put_mem passes pages through, as large as allowed: each
 * vmsplice+splice pair moves at most its capacity. */
static int open_vpipe(lm_channel *ch)
{
    if (pipe2(ch->vpipe, O_CLOEXEC) < 0) {
        ch->vpipe[0] = ch->vpipe[1] = -1;
        return -errno;
    }
    (void)fcntl(ch->vpipe[1], F_SETPIPE_SZ, VPIPE_BYTES);
    int cap = fcntl(ch->vpipe[1], F_GETPIPE_SZ);
    ch->vpipe_cap = cap > 0 ? (size_t)cap : 65536;
    return 0;
}

/* Puts [mem, mem+len) into the pipe and splices it all into the socket.
 * Returns the bytes sent, or <0: -EOPNOTSUPP when vmsplice refused
 * before anything was queued (nothing sent, nothing in the pipe). */
static ssize_t vmsplice_out(lm_channel *ch, const uint8_t *mem, size_t len)
{
    struct iovec v = { (void *)mem, LM_MIN(len, ch->vpipe_cap) };
    ssize_t n;
    while ((n = vmsplice(ch->vpipe[1], &v, 1, 0)) < 0 && errno == EINTR) {
    }
    if (n <= 0) {
        return n == 0 || errno == EINVAL || errno == ENOSYS || errno == EPERM ? -EOPNOTSUPP : -errno;
    }
    for (size_t left = (size_t)n; left > 0;) {
        ssize_t m = splice_nosignal(ch->vpipe[0], ch->fd, left);
        if (m < 0 && errno == EINTR) {
            continue;
        }
        if (m <= 0) {
            /* The pipe still holds pages of this record: the channel is
             * broken for good (the error sticks). */
            return io_error(ch, m < 0 ? -errno : -EIO, "sending RAM");
        }
        left -= (size_t)m;
    }
    return n;
}

/* Whether put_mem may hand this channel's pages to the kernel by
 * reference at all (channel.h says when not). */
static bool by_reference_allowed(const lm_channel *ch)
{
    return ch->is_unix && !ch->tls && !ch->zerocopy && !ch->no_vmsplice;
}

bool lm_channel_mem_by_reference(const lm_channel *ch, size_t len)
{
    return len >= LM_CHANNEL_BY_REFERENCE_MIN && by_reference_allowed(ch);
}

int lm_channel_put_mem(lm_channel *ch, const struct iovec *hdr, int nhdr, const void *mem, size_t len)
{
    if (by_reference_allowed(ch) && (ch->vpipe[0] >= 0 || open_vpipe(ch) == 0)) {
        int ret = put_ext_flags(ch, hdr, nhdr, MSG_MORE);
        if (ret < 0) {
            return ret;
        }
        size_t done = 0;
        while (done < len) {
            ssize_t n = vmsplice_out(ch, (const uint8_t *)mem + done, len - done);
            if (n == -EOPNOTSUPP) {
                /* The rest from memory, and everything from now on. */
                ch->no_vmsplice = true;
                break;
            }
            if (n < 0) {
                return sticky(ch) ? sticky(ch) : io_error(ch, (int)n, "sending RAM");
            }
            done += (size_t)n;
        }
        if (ch->rl) {
            lm_ratelimit_consume(ch->rl, done);
        }
        __atomic_fetch_add(&ch->bytes_out, done, __ATOMIC_RELAXED);
        if (done == len) {
            return sticky(ch);
        }
        struct iovec rest = { (uint8_t *)mem + done, len - done };
        return lm_channel_put_ext(ch, &rest, 1);
    }
    struct iovec data = { (void *)mem, len };
    int ret = nhdr ? lm_channel_put_ext(ch, hdr, nhdr) : 0;
    return ret < 0 ? ret : lm_channel_put_ext(ch, &data, 1);
}

int lm_channel_enable_zerocopy(lm_channel *ch, lm_error *err)
{
    if (!ch->is_socket) {
        return lm_error_set(err, -ENOTSOCK, "%s: zero-copy sends need a socket", ch->name);
    }
    if (ch->tls) {
        return lm_error_set(err, -EINVAL, "%s: zero-copy sends cannot go through TLS "
                            "(records are encrypted into new buffers)", ch->name);
    }
    int ret = lm_zerocopy_enable(ch->fd, ch->name, err);
    if (ret == 0) {
        ch->zerocopy = true;
    }
    return ret;
}

/* Up to ZC_MAX_SEND bytes and MAX_EXT_IOV entries of iov, into out. */
static int iov_head(const struct iovec *iov, int cnt, struct iovec *out)
{
    size_t sum = 0;
    int k = 0;
    while (k < cnt && k < MAX_EXT_IOV && sum < ZC_MAX_SEND) {
        out[k] = iov[k];
        out[k].iov_len = LM_MIN(out[k].iov_len, (size_t)ZC_MAX_SEND - sum);
        sum += out[k].iov_len;
        k++;
    }
    return k;
}

/* sendmsg said ENOBUFS: the pages a zero-copy send pins are charged to
 * RLIMIT_MEMLOCK (unless CAP_IPC_LOCK) and its notification to the
 * socket's optmem; completions give both back, so reap some and retry. */
static int zc_no_buffers(lm_channel *ch, int *tries)
{
    if (lm_zerocopy_outstanding(&ch->zc)) {
        int ret = lm_zerocopy_reap(&ch->zc, ch->fd, true);
        return ret < 0 ? ret : 0;
    }
    if (++*tries > ZC_NOBUFS_TRIES) {
        return -ENOBUFS;
    }
    usleep(2000);
    return 0;
}

static int zc_error(lm_channel *ch, int code)
{
    if (code == -ENOBUFS || code == -ENOMEM || code == -EPERM) {
        return lm_channel_set_error(
            ch, code,
            "%s: zero-copy send refused (%s): the process cannot pin more guest memory; raise "
            "its locked-memory limit (RLIMIT_MEMLOCK, ulimit -l) or grant CAP_IPC_LOCK, or turn "
            "zero-copy-send off",
            ch->name, strerror(-code));
    }
    return io_error(ch, code, "writing (zero-copy)");
}

/* Like write_iov, with MSG_ZEROCOPY: iov's memory may still be read by the
 * kernel when this returns, until lm_channel_zerocopy_flush(). */
static int write_iov_zc(lm_channel *ch, struct iovec *iov, int cnt)
{
    uint64_t total = charge_iov(ch, iov, cnt);
    int ret = 0, tries = 0;
    while (cnt > 0 && ret == 0 && !sticky(ch)) {
        struct iovec head[MAX_EXT_IOV];
        struct msghdr msg = { .msg_iov = head, .msg_iovlen = (size_t)iov_head(iov, cnt, head) };
        ssize_t n = sendmsg(ch->fd, &msg, MSG_NOSIGNAL | MSG_ZEROCOPY);
        if (n > 0) {
            lm_zerocopy_sent(&ch->zc);
            lm_iov_advance(&iov, &cnt, (size_t)n);
            tries = 0;
            /* Keep the error queue (and what it charges) short. */
            ret = lm_zerocopy_reap(&ch->zc, ch->fd, false);
            ret = ret < 0 ? ret : 0;
        } else if (n == 0) {
            ret = -EIO;
        } else if (errno == ENOBUFS) {
            ret = zc_no_buffers(ch, &tries);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd p = { ch->fd, POLLOUT, 0 };
            ret = poll(&p, 1, -1) < 0 && errno != EINTR ? -errno : 0;
        } else if (errno != EINTR) {
            ret = -errno;
        }
    }
    if (ret < 0) {
        return sticky(ch) ? sticky(ch) : zc_error(ch, ret);
    }
    if (!sticky(ch)) {
        __atomic_fetch_add(&ch->bytes_out, total, __ATOMIC_RELAXED);
    }
    return sticky(ch);
}

int lm_channel_put_ext_zerocopy(lm_channel *ch, const struct iovec *ext, int n)
{
    if (!ch->zerocopy) {
        return lm_channel_put_ext(ch, ext, n);
    }
    if (sticky(ch) || n == 0) {
        return sticky(ch);
    }
    /* The buffer is reused at once: it goes copied, ahead of the pages
     * (MSG_MORE: in the same segment where it can). */
    int ret = put_ext_flags(ch, NULL, 0, MSG_MORE);
    if (ret < 0) {
        return ret;
    }
    while (n > 0) {
        struct iovec iov[MAX_EXT_IOV];
        int take = LM_MIN(n, MAX_EXT_IOV);
        memcpy(iov, ext, (size_t)take * sizeof(*ext));
        ret = write_iov_zc(ch, iov, take);
        if (ret < 0) {
            return ret;
        }
        ext += take;
        n -= take;
    }
    return 0;
}

int lm_channel_zerocopy_flush(lm_channel *ch, bool *missed)
{
    if (missed) {
        *missed = false;
    }
    if (!ch->zerocopy || sticky(ch)) {
        return sticky(ch);
    }
    int ret = lm_zerocopy_flush(&ch->zc, ch->fd, missed);
    if (ret < 0) {
        return sticky(ch) ? sticky(ch) : io_error(ch, ret, "waiting for zero-copy completions");
    }
    return 0;
}

void lm_channel_zerocopy_stats(const lm_channel *ch, uint64_t *sends, uint64_t *copied)
{
    *sends = __atomic_load_n(&ch->zc.sends, __ATOMIC_RELAXED);
    *copied = __atomic_load_n(&ch->zc.copied, __ATOMIC_RELAXED);
}

/* A pipe cannot be shut down: wait for data or for lm_channel_shutdown(). */
static int wait_readable(lm_channel *ch)
{
    if (ch->is_socket || ch->wake[0] < 0) {
        return 0;
    }
    for (;;) {
        struct pollfd p[2] = { { ch->fd, POLLIN, 0 }, { ch->wake[0], POLLIN, 0 } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (p[1].revents) {
            return sticky(ch) ? sticky(ch) : -ECANCELED;
        }
        return 0;
    }
}

/* One read of up to n bytes into p, through TLS when the channel has it:
 * >0, 0 at end of stream, or -errno (TLS: the message already recorded). */
static ssize_t read_some(lm_channel *ch, void *p, size_t n)
{
    if (ch->tls) {
        lm_error terr = LM_ERROR_INIT;
        ssize_t r = lm_tls_read(ch->tls, p, n, &terr);
        if (r < 0) {
            lm_channel_set_error(ch, (int)r, "%s", terr.msg);
            errno = (int)-r;
            return -1;
        }
        return r;
    }
    return read(ch->fd, p, n);
}

/* Refill the read buffer with whatever is available (at least one byte). */
static int fill(lm_channel *ch)
{
    for (;;) {
        int w = wait_readable(ch);
        if (w < 0) {
            return sticky(ch) ? sticky(ch) : io_error(ch, w, "reading");
        }
        ssize_t r = read_some(ch, ch->rbuf, RBUF_SIZE);
        if (r > 0) {
            ch->rpos = 0;
            ch->rlen = (size_t)r;
            __atomic_fetch_add(&ch->bytes_in, (uint64_t)r, __ATOMIC_RELAXED);
            return 0;
        }
        if (r == 0) {
            return sticky(ch) ? sticky(ch)
                              : lm_channel_set_error(ch, -EPIPE, "%s: unexpected end of stream",
                                                     ch->name);
        }
        if (errno != EINTR) {
            int code = -errno;
            return sticky(ch) ? sticky(ch) : io_error(ch, code, "reading");
        }
    }
}

int lm_channel_wait_input(lm_channel *ch)
{
    /* Bytes buffered here (or inside a TLS session, which poll cannot
     * see): the next read returns without waiting anyway. */
    if (sticky(ch) || ch->rpos < ch->rlen || ch->tls || !ch->is_socket) {
        return sticky(ch);
    }
    struct pollfd p = { ch->fd, POLLIN, 0 };
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    return sticky(ch);
}

int lm_channel_get(lm_channel *ch, void *p, size_t n)
{
    uint8_t *out = p;
    if (sticky(ch)) {
        return sticky(ch);
    }
    while (n > 0) {
        size_t avail = ch->rlen - ch->rpos;
        if (avail) {
            size_t take = avail < n ? avail : n;
            memcpy(out, ch->rbuf + ch->rpos, take);
            ch->rpos += take;
            out += take;
            n -= take;
            continue;
        }
        if (n >= RBUF_SIZE) {
            /* Bulk data: read straight into the destination.  (Through a
             * 256 KiB buffer instead, a plain tcp channel alone ran faster,
             * but whole migrations over tcp ran slower: 1025 against
             * 2152 MB/s, destination 0.63 against 0.22 CPU-s/GiB.) */
            int w = wait_readable(ch);
            if (w < 0) {
                return sticky(ch) ? sticky(ch) : io_error(ch, w, "reading");
            }
            ssize_t r = read_some(ch, out, n);
            if (r > 0) {
                __atomic_fetch_add(&ch->bytes_in, (uint64_t)r, __ATOMIC_RELAXED);
                out += r;
                n -= (size_t)r;
                continue;
            }
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r == 0) {
                return sticky(ch) ? sticky(ch)
                                  : lm_channel_set_error(ch, -EPIPE,
                                                         "%s: unexpected end of stream", ch->name);
            }
            int code = -errno;
            return sticky(ch) ? sticky(ch) : io_error(ch, code, "reading");
        }
        int ret = fill(ch);
        if (ret < 0) {
            return ret;
        }
    }
    return sticky(ch);
}

int lm_channel_get_u8(lm_channel *ch, uint8_t *v)
{
    if (ch->rpos < ch->rlen && !sticky(ch)) {
        *v = ch->rbuf[ch->rpos++];
        return 0;
    }
    return lm_channel_get(ch, v, 1);
}

int lm_channel_get_be16(lm_channel *ch, uint16_t *v)
{
    uint8_t b[2];
    int ret = lm_channel_get(ch, b, 2);
    if (!ret) {
        *v = lm_load_be16(b);
    }
    return ret;
}

int lm_channel_get_be32(lm_channel *ch, uint32_t *v)
{
    uint8_t b[4];
    int ret = lm_channel_get(ch, b, 4);
    if (!ret) {
        *v = lm_load_be32(b);
    }
    return ret;
}

int lm_channel_get_be64(lm_channel *ch, uint64_t *v)
{
    uint8_t b[8];
    int ret = lm_channel_get(ch, b, 8);
    if (!ret) {
        *v = lm_load_be64(b);
    }
    return ret;
}

int lm_channel_skip(lm_channel *ch, uint64_t n)
{
    uint8_t tmp[4096];
    while (n > 0) {
        size_t take = n < sizeof(tmp) ? (size_t)n : sizeof(tmp);
        int ret = lm_channel_get(ch, tmp, take);
        if (ret < 0) {
            return ret;
        }
        n -= take;
    }
    return 0;
}

void lm_channel_attach_tls(lm_channel *ch, lm_tls_session *t)
{
    ch->tls = lm_tls_session_ref(t);
    ch->no_sendfile = true;
}

bool lm_channel_is_tls(const lm_channel *ch)
{
    return ch->tls != NULL;
}

int lm_channel_dup(lm_channel *ch, const char *name, lm_channel **out, lm_error *err)
{
    *out = NULL;
    int fd = dup(ch->fd);
    if (fd < 0) {
        return lm_error_set_errno(err, -errno, "cannot duplicate the migration socket");
    }
    lm_channel *c = lm_channel_new(fd, name, NULL);
    if (!c) {
        close(fd);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    if (ch->tls) {
        lm_channel_attach_tls(c, ch->tls);
    }
    *out = c;
    return 0;
}

int lm_channel_tell(lm_channel *ch, uint64_t *off)
{
    if (sticky(ch)) {
        return sticky(ch);
    }
    off_t cur = lseek(ch->fd, 0, SEEK_CUR);
    if (cur < 0) {
        return io_error(ch, -errno, "seeking");
    }
    *off = (uint64_t)cur + ch->wlen - (ch->rlen - ch->rpos);
    return 0;
}

int lm_channel_seek(lm_channel *ch, uint64_t off)
{
    int ret = lm_channel_flush(ch);
    if (ret < 0) {
        return ret;
    }
    if (off > (uint64_t)INT64_MAX) {
        return lm_channel_set_error(ch, -EINVAL, "%s: offset %llu out of range", ch->name,
                                    (unsigned long long)off);
    }
    ch->rpos = ch->rlen = 0;
    if (lseek(ch->fd, (off_t)off, SEEK_SET) < 0) {
        return io_error(ch, -errno, "seeking");
    }
    return 0;
}

uint64_t lm_channel_bytes_written(const lm_channel *ch)
{
    return __atomic_load_n(&ch->bytes_out, __ATOMIC_RELAXED);
}

uint64_t lm_channel_bytes_read(const lm_channel *ch)
{
    return __atomic_load_n(&ch->bytes_in, __ATOMIC_RELAXED);
}

uint64_t lm_channel_input_pending(lm_channel *ch)
{
    uint64_t n = ch->rlen - ch->rpos;
    int queued = 0;
    if (!ch->is_file && ioctl(ch->fd, FIONREAD, &queued) == 0 && queued > 0) {
        n += (uint64_t)queued;
    }
    if (ch->tls) {
        n += lm_tls_pending(ch->tls);
    }
    return n;
}
