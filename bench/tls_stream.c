/*
 * The TLS floor: what the migration channel itself costs to move bytes
 * through TLS, without any migration around it.  A sender process writes
 * N MiB through an lm_channel (lm_channel_put_ext of 256 KiB pieces, as
 * precopy sends runs of pages) to a receiver process that reads them
 * (lm_channel_get into 256 KiB pieces of a 64 MiB buffer), over tcp
 * loopback, plain and then with TLS (the certificates of
 * scripts/make-test-certs.sh, x509 with verify-peer, GnuTLS defaults).
 * Prints MB/s and the CPU seconds per GiB of each process, the figure
 * that a loaded machine disturbs least.
 *
 *   build/bench/bench-tls-stream CERTDIR [MiB] [rounds] [PRIORITY] [fresh]
 *
 * PRIORITY: a GnuTLS priority string for both sides (the credentials'
 * `priority`), e.g. PERFORMANCE (AES-128-GCM first); default NORMAL.
 * fresh: the receiver reads into memory it never touched, MiB of it, as
 * a destination loads guest RAM (default: a populated 64 MiB buffer).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "channel/channel.h"
#include "channel/tls.h"
#include "channel/transport.h"

#define PIECE (256 * 1024)
#define BUF (64u << 20)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static const char *priority; /* NULL: the default */
static bool fresh;             /* the receiver's memory: never touched */

static lm_tls_config *config(const char *certs, bool server)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", certs, server ? "server" : "client");
    lm_tls_creds *c = NULL;
    lm_error err = LM_ERROR_INIT;
    if (lm_tls_creds_x509_new(dir, server ? LM_TLS_ENDPOINT_SERVER : LM_TLS_ENDPOINT_CLIENT, true,
                              priority, &c, &err) < 0) {
        fprintf(stderr, "credentials: %s\n", err.msg);
        exit(1);
    }
    return lm_tls_config_new(c, NULL, NULL, "localhost");
}

/* The receiver: reads `total` bytes, writes its CPU seconds to `report`. */
static int receive(lm_listener *l, uint64_t total, int report)
{
    lm_error err = LM_ERROR_INIT;
    int fd, pid;
    if (lm_listener_accept(l, &fd, &pid, &err) < 0) {
        fprintf(stderr, "accept: %s\n", err.msg);
        return 1;
    }
    lm_channel *ch = lm_channel_new(fd, "bench-dst", NULL);
    uint64_t span = fresh ? total : BUF;
    uint8_t *buf = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!ch || buf == MAP_FAILED) {
        return 1;
    }
    if (!fresh) {
        memset(buf, 1, BUF); /* the destination's memory, populated */
    }
    double c0 = cpu_self();
    if (lm_tls_server(ch, l, &err) < 0) {
        fprintf(stderr, "receiver: %s\n", err.msg);
        return 1;
    }
    uint64_t off = 0;
    for (uint64_t done = 0; done < total; done += PIECE) {
        uint8_t hdr[16];
        if (lm_channel_get(ch, hdr, sizeof(hdr)) < 0 || lm_channel_get(ch, buf + off, PIECE) < 0) {
            lm_channel_error(ch, &err);
            fprintf(stderr, "receiver: %s\n", err.msg);
            return 1;
        }
        off = (off + PIECE) % span;
    }
    uint8_t ack = 1;
    double cpu = cpu_self() - c0;
    if (write(report, &cpu, sizeof(cpu)) != sizeof(cpu) || write(fd, &ack, 1) != 1) {
        return 1;
    }
    lm_channel_close(ch, NULL);
    munmap(buf, span);
    return 0;
}

static int one_run(const char *certs, uint64_t total, bool tls, const uint8_t *data)
{
    lm_error err = LM_ERROR_INIT;
    lm_uri luri, curi;
    if (lm_uri_parse("tcp:127.0.0.1:0", &luri, &err) < 0) {
        return -1;
    }
    luri.tls = tls ? config(certs, true) : NULL;
    lm_listener *l;
    if (lm_transport_listen(&luri, &l, &err) < 0 ||
        lm_uri_parse(lm_listener_address(l), &curi, &err) < 0) {
        fprintf(stderr, "listen: %s\n", err.msg);
        return -1;
    }
    curi.tls = tls ? config(certs, false) : NULL;
    int rep[2];
    if (pipe(rep) < 0) {
        return -1;
    }
    pid_t child = fork();
    if (child == 0) {
        close(rep[0]);
        _exit(receive(l, total, rep[1]));
    }
    close(rep[1]);
    int fd, pid;
    if (lm_transport_connect(&curi, &fd, &pid, NULL, NULL, &err) < 0) {
        fprintf(stderr, "connect: %s\n", err.msg);
        return -1;
    }
    lm_channel *ch = lm_channel_new(fd, "bench-src", NULL);
    if (lm_tls_client(ch, &curi, &err) < 0) {
        fprintf(stderr, "sender: %s\n", err.msg);
        return -1;
    }
    double t0 = now(), c0 = cpu_self();
    uint64_t off = 0;
    for (uint64_t done = 0; done < total; done += PIECE) {
        uint8_t hdr[16] = { 0 };
        struct iovec v = { (void *)(data + off), PIECE };
        if (lm_channel_put(ch, hdr, sizeof(hdr)) < 0 || lm_channel_put_ext(ch, &v, 1) < 0) {
            lm_channel_error(ch, &err);
            fprintf(stderr, "sender: %s\n", err.msg);
            return -1;
        }
        off = (off + PIECE) % BUF;
    }
    uint8_t ack = 0;
    if (lm_channel_flush(ch) < 0) {
        return -1;
    }
    double cpu_src = cpu_self() - c0;
    double cpu_dst = 0;
    if (read(fd, &ack, 1) != 1 || read(rep[0], &cpu_dst, sizeof(cpu_dst)) != sizeof(cpu_dst)) {
        fprintf(stderr, "the receiver failed\n");
        return -1;
    }
    double wall = now() - t0;
    int status;
    waitpid(child, &status, 0);
    lm_channel_close(ch, NULL);
    lm_listener_close(l);
    lm_tls_config_free((lm_tls_config *)luri.tls);
    lm_tls_config_free((lm_tls_config *)curi.tls);
    close(rep[0]);
    double gib = (double)total / (1u << 30);
    printf("| %s | %.0f | %.2f | %.2f |\n", tls ? "TLS" : "plain",
           (double)total / wall / 1e6, cpu_src / gib, cpu_dst / gib);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CERTDIR [MiB] [rounds] [PRIORITY] [fresh]\n", argv[0]);
        return 2;
    }
    uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 0) : 1024;
    int rounds = argc > 3 ? atoi(argv[3]) : 1;
    priority = argc > 4 && strcmp(argv[4], "NORMAL") ? argv[4] : NULL;
    fresh = argc > 5 && !strcmp(argv[5], "fresh");
    uint64_t total = (mib << 20) / PIECE * PIECE;
    uint8_t *data = malloc(BUF);
    if (!data) {
        return 1;
    }
    srand(1);
    for (size_t i = 0; i < BUF; i++) {
        data[i] = (uint8_t)rand();
    }
    printf("| channel | MB/s | sender CPU s/GiB | receiver CPU s/GiB |\n|---|---|---|---|\n");
    for (int r = 0; r < rounds; r++) {
        if (one_run(argv[1], total, false, data) < 0 || one_run(argv[1], total, true, data) < 0) {
            return 1;
        }
    }
    free(data);
    return 0;
}
