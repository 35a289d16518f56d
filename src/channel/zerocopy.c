/*
 * MSG_ZEROCOPY completion accounting.  See zerocopy.h.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/errqueue.h>

#include "channel/zerocopy.h"

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif

static int set_so_zerocopy(int fd)
{
    int one = 1;
    return setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) < 0 ? -errno : 0;
}

int lm_zerocopy_enable(int fd, const char *what, lm_error *err)
{
    int ret = set_so_zerocopy(fd);
    return ret < 0 ? lm_error_set_errno(err, ret, "%s: the kernel refuses SO_ZEROCOPY", what) : 0;
}

int lm_zerocopy_probe(int family)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    int ret = set_so_zerocopy(fd);
    close(fd);
    return ret;
}

void lm_zerocopy_sent(lm_zerocopy *zc)
{
    __atomic_store_n(&zc->sends, zc->sends + 1, __ATOMIC_RELAXED);
}

uint64_t lm_zerocopy_outstanding(const lm_zerocopy *zc)
{
    return zc->sends - zc->completed;
}

/* Accounts one notification: ids [lo, hi] (32-bit, may wrap). */
static int account(lm_zerocopy *zc, const struct sock_extended_err *ee)
{
    if (ee->ee_origin != SO_EE_ORIGIN_ZEROCOPY) {
        /* TCP queues nothing else unless asked (IP_RECVERR, timestamps). */
        return ee->ee_errno ? -(int)ee->ee_errno : -EPROTO;
    }
    if (ee->ee_errno != 0) {
        return -(int)ee->ee_errno;
    }
    uint64_t n = (uint64_t)(uint32_t)(ee->ee_data - ee->ee_info) + 1;
    if (n > lm_zerocopy_outstanding(zc)) {
        return -EPROTO; /* more completions than sends: not ours to trust */
    }
    __atomic_store_n(&zc->completed, zc->completed + n, __ATOMIC_RELAXED);
    if (ee->ee_code & SO_EE_CODE_ZEROCOPY_COPIED) {
        __atomic_store_n(&zc->copied, zc->copied + n, __ATOMIC_RELAXED);
    } else {
        zc->flush_real = true;
    }
    zc->flush_completed += n;
    return (int)(n > INT32_MAX ? INT32_MAX : n);
}

/* One message from the error queue: sends completed, 0 when the queue is
 * empty, or -errno. */
static int read_one(lm_zerocopy *zc, int fd)
{
    union {
        char buf[CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in6))];
        struct cmsghdr align;
    } ctl;
    struct msghdr msg = { .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
    ssize_t r;
    do {
        r = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        bool v4 = cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR;
        bool v6 = cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR;
        if (v4 || v6) {
            struct sock_extended_err ee;
            memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
            return account(zc, &ee);
        }
    }
    return -EPROTO;
}

/* Blocks until the error queue has something, or the socket is shut down
 * or failed.  *hup: shut down (by us, on cancel, or by the peer). */
static int wait_errqueue(int fd, bool *hup)
{
    struct pollfd p = { fd, 0, 0 }; /* POLLERR and POLLHUP need no asking */
    for (;;) {
        if (poll(&p, 1, -1) >= 0) {
            break;
        }
        if (errno != EINTR) {
            return -errno;
        }
    }
    if (p.revents & POLLNVAL) {
        return -EBADF;
    }
    *hup = p.revents & POLLHUP;
    return 0;
}

int lm_zerocopy_reap(lm_zerocopy *zc, int fd, bool wait)
{
    bool hup = false;
    if (wait) {
        int ret = wait_errqueue(fd, &hup);
        if (ret < 0) {
            return ret;
        }
    }
    int got = 0;
    for (;;) {
        int n = read_one(zc, fd);
        if (n < 0) {
            return n;
        }
        if (n == 0) {
            break;
        }
        got = got > INT32_MAX - n ? INT32_MAX : got + n;
    }
    if (got || !wait) {
        return got;
    }
    /* Woken with nothing to read: POLLERR for the socket's own error
     * (reading SO_ERROR clears it, so this cannot spin), or a shutdown. */
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr) {
        return -soerr;
    }
    return hup ? -EPIPE : 0;
}

int lm_zerocopy_flush(lm_zerocopy *zc, int fd, bool *missed)
{
    while (lm_zerocopy_outstanding(zc)) {
        int ret = lm_zerocopy_reap(zc, fd, true);
        if (ret < 0) {
            return ret;
        }
    }
    if (missed) {
        *missed = zc->flush_completed && !zc->flush_real;
    }
    zc->flush_completed = 0;
    zc->flush_real = false;
    return 0;
}
