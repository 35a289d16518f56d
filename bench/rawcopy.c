/* rawcopy: the raw socket and memcpy limits that bench/throughput.py puts
 * beside livemig's and QEMU's migration throughput.
 *
 *   rawcopy socket SIZE STREAMS unix|tcp DEST [SRCFILE [write|sendfile [read|pwrite|splice]]]
 *   rawcopy memcpy SIZE fresh|fresh-thp|populated [SRCFILE]
 *   rawcopy warm SIZE
 *
 * DEST: fresh, fresh-thp, populated (anonymous memory), or file:PATH (a
 * file created empty at PATH, SIZE long, as a file-backed destination's
 * RAM; removed at the end).
 *
 * socket: a sender process writes SIZE bytes from its buffer (SRCFILE
 * copied into an anonymous buffer, as an anonymous guest's RAM touched by
 * its own process is; or a filled anonymous buffer) or sends them from
 * SRCFILE's page cache (sendfile) over STREAMS connections, each carrying one
 * contiguous slice; the receiver reads each slice straight into its part of
 * a destination mapping that is either freshly mmapped (never touched, as a
 * migration destination's RAM is) or populated beforehand.  The clock runs
 * in the receiver from the 'go' byte it sends on every connection to the
 * last byte read.  Before it maps the destination, and only once the
 * sender has its source in place (it connects after that), the receiver
 * touches and frees SIZE bytes of anonymous memory (as 'warm' does): the
 * order of every engine's run in bench/throughput.py (source ready, warm,
 * destination started).  Warming before the sender set its source up gave
 * the warmed memory to the source and left the destination the host's
 * coldest pages (the 4 GiB anonymous floor's 1.95 CPU-s/GiB).  fresh-thp: freshly mmapped with MADV_HUGEPAGE, as
 * livemig-vm's and QEMU's anonymous guest RAM is; populated: the same,
 * every page touched beforehand.  sendfile: the sender
 * sends its slice of SRCFILE from the page cache instead of write()ing it
 * from the mapping (the way livemig sends file-backed RAM).
 * write (the default): the sender copies SRCFILE into an anonymous buffer
 * first (as an anonymous guest's RAM, touched by its own process) and
 * write()s from it.  The receiver read()s into the destination mapping
 * (read), or, for a file: destination, read()s into a 4 MiB buffer and
 * pwrite()s it at its offset (pwrite), or splice()s socket -> pipe -> file
 * (splice), neither touching the file's mapping.
 * memcpy: one thread copies SIZE bytes from the buffer into the destination.
 * warm: map SIZE bytes of anonymous memory, touch every page, unmap: the
 * bench runs it before each measurement so that every engine's destination
 * finds the host's free memory in the same state.
 *
 * Prints one line: "bytes=N seconds=S GBps=X GiBps=Y src_cpu=S dst_cpu=S"
 * (CPU seconds of each side over the copy).
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
#include <sys/resource.h>
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

static int do_warm(uint64_t size)
{
    uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        die("mmap warm");
    }
    madvise(p, size, MADV_HUGEPAGE);
    touch(p, size);
    munmap(p, size);
    return 0;
}

static int dest_fd = -1;

static uint8_t *map_dest(uint64_t size, const char *state)
{
    if (!strncmp(state, "file:", 5)) {
        dest_fd = open(state + 5, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (dest_fd < 0 || ftruncate(dest_fd, (off_t)size) < 0) {
            die(state + 5);
        }
        uint8_t *f = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, dest_fd, 0);
        if (f == MAP_FAILED) {
            die("mmap dest file");
        }
        return f;
    }
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
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            die("mmap source");
        }
        madvise(p, size, MADV_HUGEPAGE);
        for (uint64_t off = 0; off < size;) {
            ssize_t n = pread(fd, p + off, size - off > CHUNK ? CHUNK : size - off, (off_t)off);
            if (n <= 0) {
                die("read source");
            }
            off += (uint64_t)n;
        }
        close(fd);
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

static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

enum recv_method { RECV_READ, RECV_PWRITE, RECV_SPLICE };

struct stream {
    int fd;
    uint8_t *base;
    uint64_t len;
    int file_fd;    /* >= 0: sendfile from here (sender), write here (receiver) */
    off_t file_off;
    enum recv_method how;
};

static void recv_pwrite(struct stream *s)
{
    uint8_t *buf = malloc(CHUNK);
    if (!buf) {
        die("malloc");
    }
    uint64_t done = 0;
    while (done < s->len) {
        uint64_t want = s->len - done;
        ssize_t n = read(s->fd, buf, want > CHUNK ? CHUNK : want);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("read");
        }
        for (ssize_t w = 0; w < n;) {
            ssize_t k = pwrite(s->file_fd, buf + w, (size_t)(n - w), s->file_off + (off_t)(done + w));
            if (k <= 0) {
                die("pwrite");
            }
            w += k;
        }
        done += (uint64_t)n;
    }
    free(buf);
}

static void recv_splice(struct stream *s)
{
    int p[2];
    if (pipe(p) < 0) {
        die("pipe");
    }
    fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    uint64_t done = 0;
    while (done < s->len) {
        uint64_t want = s->len - done;
        ssize_t n = splice(s->fd, NULL, p[1], NULL, want > (1u << 20) ? (1u << 20) : want,
                           SPLICE_F_MOVE);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("splice in");
        }
        for (ssize_t w = 0; w < n;) {
            loff_t off = s->file_off + (off_t)(done + w);
            ssize_t k = splice(p[0], NULL, s->file_fd, &off, (size_t)(n - w), SPLICE_F_MOVE);
            if (k <= 0) {
                die("splice out");
            }
            w += k;
        }
        done += (uint64_t)n;
    }
    close(p[0]);
    close(p[1]);
}

static void *recv_stream(void *opaque)
{
    struct stream *s = opaque;
    if (s->how == RECV_PWRITE) {
        recv_pwrite(s);
        return NULL;
    }
    if (s->how == RECV_SPLICE) {
        recv_splice(s);
        return NULL;
    }
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
                     const char *file, const char *method, const char *recv_how)
{
    int use_sendfile = method && !strcmp(method, "sendfile");
    enum recv_method how = RECV_READ;
    if (recv_how && !strcmp(recv_how, "pwrite")) {
        how = RECV_PWRITE;
    } else if (recv_how && !strcmp(recv_how, "splice")) {
        how = RECV_SPLICE;
    } else if (recv_how && strcmp(recv_how, "read")) {
        fprintf(stderr, "receive method must be read, pwrite or splice\n");
        return 2;
    }
    if (how != RECV_READ && strncmp(state, "file:", 5)) {
        fprintf(stderr, "pwrite and splice need a file: destination\n");
        return 2;
    }
    int cpu_pipe[2];
    if (pipe(cpu_pipe) < 0) {
        die("pipe");
    }
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
        close(cpu_pipe[0]);
        /* sendfile sends from SRCFILE's page cache: no copy of it is made
         * (a file-backed source holds no anonymous memory either). */
        uint8_t *src = use_sendfile ? NULL : map_source(size, file);
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
            st[i].base = src ? src + (uint64_t)i * slice : NULL;
            st[i].len = i == streams - 1 ? size - (uint64_t)i * slice : slice;
            st[i].file_fd = use_sendfile ? open(file, O_RDONLY) : -1;
            st[i].file_off = (off_t)((uint64_t)i * slice);
        }
        double c0 = cpu_now();
        for (int i = 0; i < streams; i++) {
            pthread_create(&th[i], NULL, send_stream, &st[i]);
        }
        for (int i = 0; i < streams; i++) {
            pthread_join(th[i], NULL);
            close(st[i].fd);
        }
        double used = cpu_now() - c0;
        if (write(cpu_pipe[1], &used, sizeof(used)) != sizeof(used)) {
            _exit(1);
        }
        _exit(0);
    }

    /* receiver: the sender connects once its source is in place */
    close(cpu_pipe[1]);
    struct stream st[MAX_STREAMS];
    pthread_t th[MAX_STREAMS];
    for (int i = 0; i < streams; i++) {
        int fd = accept(lfd, NULL, NULL);
        uint8_t idx;
        if (fd < 0 || read(fd, &idx, 1) != 1 || idx >= streams) {
            die("accept");
        }
        st[idx].fd = fd;
    }
    do_warm(size);
    uint8_t *dst = map_dest(size, state);
    for (int idx = 0; idx < streams; idx++) {
        st[idx].base = dst + (uint64_t)idx * slice;
        st[idx].len = idx == streams - 1 ? size - (uint64_t)idx * slice : slice;
        st[idx].file_fd = dest_fd;
        st[idx].file_off = (off_t)((uint64_t)idx * slice);
        st[idx].how = how;
    }
    double c0 = cpu_now();
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
    double dst_cpu = cpu_now() - c0, src_cpu = -1;
    int status;
    if (read(cpu_pipe[0], &src_cpu, sizeof(src_cpu)) != sizeof(src_cpu)) {
        src_cpu = -1;
    }
    waitpid(pid, &status, 0);
    if (unix_sock) {
        unlink(sun.sun_path);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "sender failed\n");
        return 1;
    }
    if (dest_fd >= 0) {
        unlink(state + 5);
    }
    report(size, t1 - t0);
    printf("src_cpu=%.3f dst_cpu=%.3f\n", src_cpu, dst_cpu);
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
                         argc > 6 ? argv[6] : NULL, argc > 7 ? argv[7] : NULL,
                         argc > 8 ? argv[8] : NULL);
    }
    if (argc == 3 && !strcmp(argv[1], "warm")) {
        return do_warm(parse_size(argv[2]));
    }
    if (argc >= 4 && !strcmp(argv[1], "memcpy")) {
        return do_memcpy(parse_size(argv[2]), argv[3], argc > 4 ? argv[4] : NULL);
    }
    fprintf(stderr,
            "usage: %s socket SIZE STREAMS unix|tcp fresh|fresh-thp|populated|file:PATH [SRCFILE "
            "[write|sendfile [read|pwrite|splice]]]\n"
            "       %s memcpy SIZE fresh|fresh-thp|populated [SRCFILE]\n"
            "       %s warm SIZE\n",
            argv[0], argv[0], argv[0]);
    return 2;
}
