/* lmwire: the wire between two TUN devices of tests/integration/netns.py —
 * the delay and the loss that netem would add, for a kernel without netem.
 *
 *     lmwire FD_A FD_B ONE_WAY_SECONDS LOSS_FRACTION SEED
 *
 * Every packet read from one device is written to the other ONE_WAY_SECONDS
 * later, unless it is dropped (a LOSS_FRACTION of them, drawn from SEED, or
 * all of them while the cable is pulled).  The rate is not ours: `tc tbf`
 * on each device holds it, so a sender sees the back-pressure of a real
 * link's queue instead of drops.
 *
 * Why C: the Python forwarder it replaces topped out at 29-50 MB/s on this
 * loaded 2-core host, so a "1 Gbit/s" link carried a third of that.  Here
 * each direction is a byte ring of timestamped packets (one delay for all,
 * so it stays in order), filled by batches of non-blocking reads and
 * drained by the due writes; one ppoll sleeps until the next packet is due
 * or a device has something to read.
 *
 * Signals: SIGUSR1 pulls the cable (everything read is dropped), SIGUSR2
 * puts it back, SIGTERM ends the process; so does its parent's death.
 * LMWIRE_DEBUG=1 prints packets and bytes per second on stderr. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define RING_BYTES (16u << 20) /* per direction: ~130 ms of 1 Gbit/s */
#define MAX_PACKET 65536u      /* the TUN MTU is at most 65535 */
#define READ_BATCH 64          /* packets read from one device per wakeup */
#define WRAP_MARK UINT32_MAX

/* One packet in a ring: its header, then its bytes, padded to 16. */
struct record {
    uint64_t due_ns;
    uint32_t len;
    uint32_t pad;
};

/* The packets on their way from one device to the other, oldest first. */
struct ring {
    unsigned char *bytes;
    size_t head, tail, used;
    int out_fd;
    uint64_t dropped_full;
};

static volatile sig_atomic_t cable_pulled;
static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        cable_pulled = 1;
    else if (sig == SIGUSR2)
        cable_pulled = 0;
    else
        stopping = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t record_size(size_t len)
{
    return sizeof(struct record) + ((len + 15) & ~(size_t)15);
}

/* xorshift64*: the loss draws, reproducible from the seed. */
static uint64_t rng_state;

static double rng_unit(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / (double)(1ull << 53);
}

/* Queue a packet; false when the ring is full (the packet is lost, as in a
 * router's full queue). */
static int ring_push(struct ring *r, const void *pkt, size_t len, uint64_t due_ns)
{
    size_t need = record_size(len);
    size_t rem = RING_BYTES - r->tail;

    if (rem < need) {
        /* Not enough room before the end: skip the rest of the buffer,
         * if the space from the start up to the head can take it. */
        if (r->used + rem + need > RING_BYTES)
            return 0;
        if (rem >= sizeof(struct record)) {
            struct record mark = {.len = WRAP_MARK};
            memcpy(r->bytes + r->tail, &mark, sizeof mark);
        }
        r->used += rem;
        r->tail = 0;
    }
    if (r->used + need > RING_BYTES)
        return 0;
    struct record h = {.due_ns = due_ns, .len = (uint32_t)len};
    memcpy(r->bytes + r->tail, &h, sizeof h);
    memcpy(r->bytes + r->tail + sizeof h, pkt, len);
    r->tail += need;
    if (r->tail == RING_BYTES)
        r->tail = 0;
    r->used += need;
    return 1;
}

/* The oldest packet's header, past any wrap mark; NULL when empty. */
static const struct record *ring_front(struct ring *r)
{
    while (r->used) {
        size_t rem = RING_BYTES - r->head;
        struct record h;
        if (rem < sizeof h) {
            r->used -= rem;
            r->head = 0;
            continue;
        }
        memcpy(&h, r->bytes + r->head, sizeof h);
        if (h.len == WRAP_MARK) {
            r->used -= rem;
            r->head = 0;
            continue;
        }
        return (const struct record *)(r->bytes + r->head);
    }
    return NULL;
}

/* Write every packet that is due; returns the next due time, or 0. */
static uint64_t ring_send_due(struct ring *r, uint64_t now)
{
    const struct record *h;
    while ((h = ring_front(r)) != NULL) {
        if (h->due_ns > now)
            return h->due_ns;
        /* A device that is down or full loses the packet, as a wire would. */
        ssize_t n = write(r->out_fd, (const unsigned char *)h + sizeof *h, h->len);
        (void)n;
        size_t size = record_size(h->len);
        r->head += size;
        if (r->head == RING_BYTES)
            r->head = 0;
        r->used -= size;
    }
    return 0;
}

/* Read what the device has (a batch at most) into the ring towards its peer. */
static void read_batch(int fd, struct ring *r, unsigned char *scratch, uint64_t one_way_ns,
                       double loss, uint64_t *packets, uint64_t *bytes)
{
    for (int i = 0; i < READ_BATCH; i++) {
        ssize_t n = read(fd, scratch, MAX_PACKET);
        if (n <= 0)
            return; /* EAGAIN, or a device that is down */
        *packets += 1;
        *bytes += (uint64_t)n;
        if (cable_pulled || (loss > 0 && rng_unit() < loss))
            continue;
        if (!ring_push(r, scratch, (size_t)n, now_ns() + one_way_ns))
            r->dropped_full++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: lmwire FD_A FD_B ONE_WAY_SECONDS LOSS_FRACTION SEED\n");
        return 2;
    }
    int fd[2] = {atoi(argv[1]), atoi(argv[2])};
    uint64_t one_way_ns = (uint64_t)(strtod(argv[3], NULL) * 1e9);
    double loss = strtod(argv[4], NULL);
    rng_state = strtoull(argv[5], NULL, 10) * 0x9E3779B97F4A7C15ull + 1;

    prctl(PR_SET_PDEATHSIG, SIGTERM);
    prctl(PR_SET_TIMERSLACK, 1UL); /* wake at the due time, not 50 µs later */
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct ring ring[2]; /* ring[i]: packets read from fd[i], for fd[1 - i] */
    unsigned char *scratch = malloc(MAX_PACKET);
    for (int i = 0; i < 2; i++) {
        ring[i] = (struct ring){.bytes = malloc(RING_BYTES), .out_fd = fd[1 - i]};
        if (!ring[i].bytes || !scratch) {
            fprintf(stderr, "lmwire: out of memory\n");
            return 1;
        }
    }
    for (int i = 0; i < 2; i++) {
        int fl = fcntl(fd[i], F_GETFL);
        if (fl < 0 || fcntl(fd[i], F_SETFL, fl | O_NONBLOCK) < 0) {
            perror("lmwire: fcntl");
            return 1;
        }
    }

    int debug = getenv("LMWIRE_DEBUG") != NULL;
    uint64_t packets = 0, bytes = 0, stats_at = now_ns();
    while (!stopping) {
        uint64_t now = now_ns();
        uint64_t next = 0;
        for (int i = 0; i < 2; i++) {
            uint64_t due = ring_send_due(&ring[i], now);
            if (due && (!next || due < next))
                next = due;
        }
        struct pollfd pfd[2] = {{.fd = fd[0], .events = POLLIN}, {.fd = fd[1], .events = POLLIN}};
        struct timespec wait, *waitp = NULL;
        if (next) {
            uint64_t d = next > now ? next - now : 0;
            wait = (struct timespec){.tv_sec = (time_t)(d / 1000000000u),
                                     .tv_nsec = (long)(d % 1000000000u)};
            waitp = &wait;
        }
        int n = ppoll(pfd, 2, waitp, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("lmwire: ppoll");
            return 1;
        }
        for (int i = 0; i < 2; i++) {
            if (pfd[i].revents & POLLIN)
                read_batch(fd[i], &ring[i], scratch, one_way_ns, loss, &packets, &bytes);
            else if (pfd[i].revents & (POLLERR | POLLHUP | POLLNVAL))
                return 0; /* the device is gone (its namespace deleted): nothing to carry */
        }
        if (debug && now_ns() - stats_at > 1000000000u) {
            fprintf(stderr, "lmwire: %llu packets, %llu bytes/s, %llu dropped (queue full)\n",
                    (unsigned long long)packets, (unsigned long long)bytes,
                    (unsigned long long)(ring[0].dropped_full + ring[1].dropped_full));
            packets = bytes = 0;
            stats_at = now_ns();
        }
    }
    return 0;
}
