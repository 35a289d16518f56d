/* livemig info: query-migrate in the shape of QEMU's HMP `info migrate`. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "qmp_client.h"

static void usage(FILE *f)
{
    fprintf(f,
"Usage: livemig info SOCK\n"
"\n"
"Show the migration state of the machine behind the QMP socket SOCK, like\n"
"QEMU's `info migrate`.\n");
}

static const char *sz(json_t *obj, const char *key, char *buf, size_t len)
{
    return cli_fmt_size(cli_json_u64(obj, key), buf, len);
}

/* x-convergence: the forecast and its reason; x-auto-postcopy's state. */
static void print_convergence(json_t *cv, json_t *ap, FILE *f)
{
    if (json_is_object(cv)) {
        char dirty[32], bw[32], eta[32];
        cli_fmt_size(cli_json_u64(cv, "dirty-rate"), dirty, sizeof(dirty));
        cli_fmt_size(cli_json_u64(cv, "bandwidth"), bw, sizeof(bw));
        json_t *t = json_object_get(cv, "estimated-time");
        if (json_is_string(t)) {
            snprintf(eta, sizeof(eta), "never at this rate");
        } else {
            snprintf(eta, sizeof(eta), "%llu ms", (unsigned long long)cli_json_u64(cv, "estimated-time"));
        }
        fprintf(f, "Convergence:\n");
        fprintf(f, "  %-22sdirty=%s/s, link=%s/s, ratio=%.2f, trend=%s\n", "Rates:", dirty, bw,
                cli_json_num(cv, "ratio"), cli_json_str(cv, "trend"));
        fprintf(f, "  %-22s%s, downtime now %llu ms\n", "Estimated time:", eta,
                (unsigned long long)cli_json_u64(cv, "downtime"));
        fprintf(f, "  %-22s%s\n", "Reason:", cli_json_str(cv, "reason"));
    }
    if (json_is_object(ap)) {
        fprintf(f, "%-24s%s", "Auto-postcopy:", cli_json_str(ap, "state"));
        if (json_object_get(ap, "pass")) {
            fprintf(f, " (pass %llu)", (unsigned long long)cli_json_u64(ap, "pass"));
        }
        fputc('\n', f);
    }
}

/* x-downtime-breakdown: the parts that tile the downtime, in µs. */
static void print_breakdown(json_t *bd, FILE *f)
{
    if (!bd) {
        return;
    }
    fprintf(f, "Downtime breakdown (us): total=%llu, expected=%llu (fixed %llu)\n",
            (unsigned long long)cli_json_u64(bd, "downtime-us"),
            (unsigned long long)cli_json_u64(bd, "expected-downtime-us"),
            (unsigned long long)cli_json_u64(bd, "fixed-us"));
    const char *lists[3] = { "parts", "destination", "expected-parts" };
    const char *titles[3] = { "Parts:", "Destination's own:", "Expected:" };
    for (int l = 0; l < 3; l++) {
        json_t *parts = json_object_get(bd, lists[l]);
        if (!json_array_size(parts)) {
            continue;
        }
        fprintf(f, "  %-22s", titles[l]);
        for (size_t i = 0; i < json_array_size(parts); i++) {
            json_t *p = json_array_get(parts, i);
            fprintf(f, "%s%s=%llu", i ? ", " : "", cli_json_str(p, "name"),
                    (unsigned long long)cli_json_u64(p, "us"));
        }
        fputc('\n', f);
    }
}

static void print_info(json_t *info, FILE *f)
{
    char a[32], b[32], c[32];
    const char *status = cli_migration_status(info);

    fprintf(f, "%-24s%s", "Status:", status);
    const char *edesc = cli_json_str(info, "error-desc");
    if (strcmp(status, "failed") == 0 && edesc[0]) {
        fprintf(f, " (%s)", edesc);
    }
    fputc('\n', f);

    json_t *sa;
    size_t i;
    json_array_foreach(json_object_get(info, "socket-address"), i, sa) {
        const char *type = cli_json_str(sa, "type");
        if (strcmp(type, "inet") == 0) {
            const char *host = cli_json_str(sa, "host");
            bool v6 = strchr(host, ':') != NULL;
            fprintf(f, "%-24stcp:%s%s%s:%s\n", i == 0 ? "Socket address:" : "", v6 ? "[" : "",
                    host, v6 ? "]" : "", cli_json_str(sa, "port"));
        } else if (strcmp(type, "unix") == 0) {
            fprintf(f, "%-24sunix:%s\n", i == 0 ? "Socket address:" : "", cli_json_str(sa, "path"));
        } else {
            fprintf(f, "%-24s%s\n", i == 0 ? "Socket address:" : "", type);
        }
    }

    if (json_object_get(info, "total-time")) {
        fprintf(f, "%-24stotal=%llu", "Time (ms):",
                (unsigned long long)cli_json_u64(info, "total-time"));
        if (json_object_get(info, "setup-time")) {
            fprintf(f, ", setup=%llu", (unsigned long long)cli_json_u64(info, "setup-time"));
        }
        if (json_object_get(info, "expected-downtime")) {
            fprintf(f, ", exp_down=%llu",
                    (unsigned long long)cli_json_u64(info, "expected-downtime"));
        }
        if (json_object_get(info, "downtime")) {
            fprintf(f, ", down=%llu", (unsigned long long)cli_json_u64(info, "downtime"));
        }
        fputc('\n', f);
    }
    if (json_object_get(info, "remaining")) {
        fprintf(f, "%-24s%s\n", "Remaining:", sz(info, "remaining", a, sizeof(a)));
    }
    if (json_object_get(info, "cpu-throttle-percentage")) {
        fprintf(f, "%-24s%llu%%\n", "CPU throttle:",
                (unsigned long long)cli_json_u64(info, "cpu-throttle-percentage"));
    }
    if (json_object_get(info, "dirty-tracker")) {
        fprintf(f, "%-24s%s\n", "Dirty tracker:", cli_json_str(info, "dirty-tracker"));
    }

    json_t *ram = json_object_get(info, "ram");
    if (ram) {
        fprintf(f, "RAM info:\n");
        fprintf(f, "  %-22s%0.2f\n", "Throughput (Mbps):", cli_json_num(ram, "mbps"));
        fprintf(f, "  %-22spagesize=%s, total=%s\n", "Sizes:", sz(ram, "page-size", a, sizeof(a)),
                sz(ram, "total", b, sizeof(b)));
        fprintf(f, "  %-22stransferred=%s, remain=%s\n", "Transfers:",
                sz(ram, "transferred", a, sizeof(a)), sz(ram, "remaining", b, sizeof(b)));
        fprintf(f, "    %-20sprecopy=%s, multifd=%s, postcopy=%s\n", "Channels:",
                sz(ram, "precopy-bytes", a, sizeof(a)), sz(ram, "multifd-bytes", b, sizeof(b)),
                sz(ram, "postcopy-bytes", c, sizeof(c)));
        fprintf(f, "    %-20snormal=%llu, zero=%llu\n", "Page Types:",
                (unsigned long long)cli_json_u64(ram, "normal"),
                (unsigned long long)cli_json_u64(ram, "duplicate"));
        fprintf(f, "  %-22stransfer=%llu", "Page Rates (pps):",
                (unsigned long long)cli_json_u64(ram, "pages-per-second"));
        if (cli_json_u64(ram, "dirty-pages-rate")) {
            fprintf(f, ", dirty=%llu", (unsigned long long)cli_json_u64(ram, "dirty-pages-rate"));
        }
        fputc('\n', f);
        fprintf(f, "  %-22sdirty_syncs=%llu", "Others:",
                (unsigned long long)cli_json_u64(ram, "dirty-sync-count"));
        if (cli_json_u64(ram, "postcopy-requests")) {
            fprintf(f, ", postcopy_req=%llu",
                    (unsigned long long)cli_json_u64(ram, "postcopy-requests"));
        }
        if (cli_json_u64(ram, "downtime-bytes")) {
            fprintf(f, ", downtime_ram=%llu",
                    (unsigned long long)cli_json_u64(ram, "downtime-bytes"));
        }
        fputc('\n', f);
    }
    /* switchover-ack: who holds the switchover (docs/timeline.md). */
    const char *ack = cli_json_str(info, "x-switchover-ack");
    if (ack[0]) {
        fprintf(f, "%-24s%s\n", "Switchover ack:",
                strcmp(ack, "waiting") == 0 ? "waiting for the destination's devices" : ack);
    }
    if (json_object_get(info, "x-switchover-ack-pending")) {
        fprintf(f, "%-24s%llu device(s) not ready\n", "Switchover ack:",
                (unsigned long long)cli_json_u64(info, "x-switchover-ack-pending"));
    }
    print_breakdown(json_object_get(info, "x-downtime-breakdown"), f);
    print_convergence(json_object_get(info, "x-convergence"),
                      json_object_get(info, "x-auto-postcopy"), f);
}

int cli_info(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    qmpc *c = NULL;
    lm_error err = LM_ERROR_INIT;
    json_t *info = NULL;
    if (qmpc_connect(argv[1], 5000, &c, &err) < 0 ||
        qmpc_execute(c, "query-migrate", NULL, QMPC_DEFAULT_TIMEOUT_MS, &info, &err) < 0) {
        cli_errorf("info: %s", err.msg);
        qmpc_close(c);
        return CLI_EXIT_FAIL;
    }
    print_info(info, stdout);
    json_decref(info);
    qmpc_close(c);
    return CLI_EXIT_OK;
}
