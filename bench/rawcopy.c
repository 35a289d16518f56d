/* rawcopy: the raw socket and memcpy limits that bench/throughput.py puts
 * beside livemig's and QEMU's migration throughput.
 *
 *   rawcopy socket SIZE STREAMS unix|tcp fresh|fresh-thp|populated [SRCFILE [write|sendfile]]
 *   rawcopy memcpy SIZE fresh|fresh-thp|populated [SRCFILE]
 *
 * socket: a sender process writes SIZE bytes from its buffer (SRCFILE
 * mmapped MAP_SHARED and pre-faulted, as a file-backed guest's RAM is; or a
 * filled anonymous buffer) over STREAMS connections, each carrying one
 * contiguous slice; the receiver reads each slice straight into its part of
 * a destination mapping that is either freshly mmapped (never touched, as a
 * migration destination's RAM is) or populated beforehand.  The clock runs
 * in the receiver from the 'go' byte it sends on every connection to the
 * last byte read.  fresh-thp: freshly mmapped with MADV_HUGEPAGE, as
 * livemig-vm's and QEMU's anonymous guest RAM is; populated: the same,
 * every page touched beforehand.  sendfile: the sender
 * sends its slice of SRCFILE from the page cache instead of write()ing it
 * from the mapping (the way livemig sends file-backed RAM).
 * memcpy: one thread copies SIZE bytes from the buffer into the destination.
 *
 * Prints one line: "bytes=N seconds=S GBps=X GiBps=Y".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_STREAMS 16
#define CHUNK (4u << 20)

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    case 't': case 'T': v <<= 40; break;
    case 0: break;
    default: fprintf(stderr, "bad size %s\n", s); exit(2);
    }
    return v;
}

static void touch(uint8_t *p, uint64_t size)
{
    for (uint64_t off = 0; off < size; off += 4096) {
        ((volatile uint8_t *)p)[off] = 0;
    }
}

static uint8_t *map_dest(uint64_t size, const char *state)
{
    uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        die("mmap dest");
    }
    if (!strcmp(state, "populated")) {
        madvise(p, size, MADV_HUGEPAGE);
        touch(p, size);
    } else if (!strcmp(state, "fresh-thp")) {
        madvise(p, size, MADV_HUGEPAGE);
    } else if (strcmp(state, "fresh")) {
        fprintf(stderr, "dest state must be fresh, fresh-thp or populated\n");
        exit(2);
    }
    return p;
}

static uint8_t *map_source(uint64_t size, const char *file)
{
    uint8_t *p;
    if (file) {
        int fd = open(file, O_RDONLY);
        if (fd < 0) {
            die(file);
        }
        struct stat st;
        if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < size) {
            fprintf(stderr, "%s: shorter than %llu\n", file, (unsigned long long)size);
            exit(2);
        }
        p = mmap(NULL, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
        close(fd);
        if (p == MAP_FAILED) {
            die("mmap source");
        }
    } else {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            die("mmap source");
        }
        for (uint64_t off = 0; off < size; off += 8) {
            *(uint64_t *)(p + off) = off * 0x9E3779B97F4A7C15ull;
        }
    }
    /* fault the whole source in (reads), so only the copy is timed */
    volatile uint8_t sink = 0;
    for (uint64_t off = 0; off < size; off += 4096) {
        sink ^= p[off];
    }
    (void)sink;
    return p;
}

static void report(uint64_t bytes, double secs)
{
    printf("bytes=%llu seconds=%.6f GBps=%.3f GiBps=%.3f\n", (unsigned long long)bytes, secs,
           bytes / secs / 1e9, bytes / secs / (double)(1ull << 30));
}

struct stream {
    int fd;
    uint8_t *base;
    uint64_t len;
    int file_fd;    /* >= 0: sendfile from here */
    off_t file_off;
};

static void *recv_stream(void *opaque)
{
    struct stream *s = opaque;
    uint64_t done = 0;
    while (done < s->len) {
        uint64_t want = s->len - done;
        ssize_t n = read(s->fd, s->base + done, want > CHUNK ? CHUNK : want);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("read");
        }
        done += n;
    }
    return NULL;
}

static void *send_stream(void *opaque)
{
    struct stream *s = opaque;
    char go;
    if (read(s->fd, &go, 1) != 1) {
        die("read go");
    }
    uint64_t done = 0;
    while (done < s->len) {
        uint64_t want = s->len - done;
        ssize_t n;
        if (s->file_fd >= 0) {
            off_t pos = s->file_off + (off_t)done;
            n = sendfile(s->fd, s->file_fd, &pos, want > CHUNK ? CHUNK : want);
        } else {
            n = write(s->fd, s->base + done, want > CHUNK ? CHUNK : want);
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("write");
        }
        done += n;
    }
    return NULL;
}

static int do_socket(uint64_t size, int streams, const char *transport, const char *state,
                     const char *file, const char *method)
{
    int use_sendfile = method && !strcmp(method, "sendfile");
    if (use_sendfile && !file) {
        fprintf(stderr, "sendfile needs SRCFILE\n");
        return 2;
    }
    int unix_sock = !strcmp(transport, "unix");
    if (!unix_sock && strcmp(transport, "tcp")) {
        fprintf(stderr, "transport must be unix or tcp\n");
        return 2;
    }
    if (streams < 1 || streams > MAX_STREAMS) {
        fprintf(stderr, "streams must be 1..%d\n", MAX_STREAMS);
        return 2;
    }
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct sockaddr_in sin = { .sin_family = AF_INET };
    struct sockaddr *sa;
    socklen_t salen;
    int lfd = socket(unix_sock ? AF_UNIX : AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) {
        die("socket");
    }
    if (unix_sock) {
        snprintf(sun.sun_path, sizeof(sun.sun_path), "/tmp/rawcopy-%d.sock", (int)getpid());
        unlink(sun.sun_path);
        sa = (struct sockaddr *)&sun;
        salen = sizeof(sun);
    } else {
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin.sin_port = 0;
        sa = (struct sockaddr *)&sin;
        salen = sizeof(sin);
    }
    if (bind(lfd, sa, salen) < 0 || listen(lfd, MAX_STREAMS) < 0) {
        die("bind/listen");
    }
    if (!unix_sock) {
        if (getsockname(lfd, sa, &salen) < 0) {
            die("getsockname");
        }
    }
    uint64_t slice = (size / streams) & ~4095ull;

    pid_t pid = fork();
    if (pid < 0) {
        die("fork");
    }
    if (pid == 0) {
        /* sender */
        close(lfd);
        uint8_t *src = map_source(size, file);
        struct stream st[MAX_STREAMS];
        pthread_t th[MAX_STREAMS];
        for (int i = 0; i < streams; i++) {
            st[i].fd = socket(unix_sock ? AF_UNIX : AF_INET, SOCK_STREAM, 0);
            if (st[i].fd < 0 || connect(st[i].fd, sa, salen) < 0) {
                die("connect");
            }
            if (!unix_sock) {
                int one = 1;
                setsockopt(st[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            }
            /* stream i announces itself so the receiver maps it to slice i */
            uint8_t idx = i;
            if (write(st[i].fd, &idx, 1) != 1) {
                die("write idx");
            }
            st[i].base = src + (uint64_t)i * slice;
            st[i].len = i == streams - 1 ? size - (uint64_t)i * slice : slice;
            st[i].file_fd = use_sendfile ? open(file, O_RDONLY) : -1;
            st[i].file_off = (off_t)((uint64_t)i * slice);
        }
        for (int i = 0; i < streams; i++) {
            pthread_create(&th[i], NULL, send_stream, &st[i]);
        }
        for (int i = 0; i < streams; i++) {
            pthread_join(th[i], NULL);
            close(st[i].fd);
        }
        _exit(0);
    }

    /* receiver */
    uint8_t *dst = map_dest(size, state);
    struct stream st[MAX_STREAMS];
    pthread_t th[MAX_STREAMS];
    for (int i = 0; i < streams; i++) {
        int fd = accept(lfd, NULL, NULL);
        uint8_t idx;
        if (fd < 0 || read(fd, &idx, 1) != 1 || idx >= streams) {
            die("accept");
        }
        st[idx].fd = fd;
        st[idx].base = dst + (uint64_t)idx * slice;
        st[idx].len = idx == streams - 1 ? size - (uint64_t)idx * slice : slice;
    }
    double t0 = now();
    for (int i = 0; i < streams; i++) {
        if (write(st[i].fd, "g", 1) != 1) {
            die("write go");
        }
    }
    for (int i = 0; i < streams; i++) {
        pthread_create(&th[i], NULL, recv_stream, &st[i]);
    }
    for (int i = 0; i < streams; i++) {
        pthread_join(th[i], NULL);
    }
    double t1 = now();
    int status;
    waitpid(pid, &status, 0);
    if (unix_sock) {
        unlink(sun.sun_path);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "sender failed\n");
        return 1;
    }
    report(size, t1 - t0);
    return 0;
}

static int do_memcpy(uint64_t size, const char *state, const char *file)
{
    uint8_t *src = map_source(size, file);
    uint8_t *dst = map_dest(size, state);
    double t0 = now();
    for (uint64_t off = 0; off < size; off += CHUNK) {
        uint64_t n = size - off < CHUNK ? size - off : CHUNK;
        memcpy(dst + off, src + off, n);
    }
    double t1 = now();
    if (memcmp(dst, src, 4096) || memcmp(dst + size - 4096, src + size - 4096, 4096)) {
        fprintf(stderr, "memcpy mismatch\n");
        return 1;
    }
    report(size, t1 - t0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 6 && !strcmp(argv[1], "socket")) {
        return do_socket(parse_size(argv[2]), atoi(argv[3]), argv[4], argv[5],
                         argc > 6 ? argv[6] : NULL, argc > 7 ? argv[7] : NULL);
    }
    if (argc >= 4 && !strcmp(argv[1], "memcpy")) {
        return do_memcpy(parse_size(argv[2]), argv[3], argc > 4 ? argv[4] : NULL);
    }
    fprintf(stderr,
            "usage: %s socket SIZE STREAMS unix|tcp fresh|fresh-thp|populated [SRCFILE [write|sendfile]]\n"
            "       %s memcpy SIZE fresh|fresh-thp|populated [SRCFILE]\n",
            argv[0], argv[0]);
    return 2;
}
