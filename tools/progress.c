/* Migration progress display: see progress.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cli.h"
#include "progress.h"

#define BAR_WIDTH 20

void progress_init(progress *p, FILE *out)
{
    memset(p, 0, sizeof(*p));
    p->out = out;
    p->tty = isatty(fileno(out)) && !getenv("LIVEMIG_NO_TTY");
    p->start_ms = cli_now_ms();
    p->last_ms = -1000000;
    p->width = 100;
    struct winsize ws;
    if (p->tty && ioctl(fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40) {
        p->width = ws.ws_col;
    }
}

static uint64_t remaining_of(json_t *info)
{
    json_t *ram = json_object_get(info, "ram");
    if (json_object_get(info, "remaining")) {
        return cli_json_u64(info, "remaining");
    }
    return cli_json_u64(ram, "remaining");
}

static int percent_of(json_t *info)
{
    const char *status = cli_migration_status(info);
    if (strcmp(status, "completed") == 0) {
        return 100;
    }
    if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0 ||
        strcmp(status, "cancelling") == 0) {
        return -1; /* no meaningful figure */
    }
    json_t *ram = json_object_get(info, "ram");
    uint64_t total = cli_json_u64(ram, "total");
    uint64_t rem = remaining_of(info);
    if (total == 0 || strcmp(status, "setup") == 0 || strcmp(status, "none") == 0) {
        return 0;
    }
    if (rem > total) {
        rem = total;
    }
    int pct = (int)((total - rem) * 100 / total);
    /* 100% only once it is done. */
    return pct > 99 ? 99 : pct;
}

void progress_describe(json_t *info, char *buf, size_t len)
{
    json_t *ram = json_object_get(info, "ram");
    char sent[32], left[32], rate[32];
    cli_fmt_size(cli_json_u64(ram, "transferred"), sent, sizeof(sent));
    cli_fmt_size(remaining_of(info), left, sizeof(left));
    cli_fmt_mbps(cli_json_num(ram, "mbps"), rate, sizeof(rate));
    int n = snprintf(buf, len, "pass %llu, %s sent, %s left, %s",
                     (unsigned long long)cli_json_u64(ram, "dirty-sync-count"), sent, left, rate);
    if (n < 0 || (size_t)n >= len) {
        return;
    }
    if (json_object_get(info, "expected-downtime")) {
        n += snprintf(buf + n, len - (size_t)n, ", exp. downtime %llu ms",
                      (unsigned long long)cli_json_u64(info, "expected-downtime"));
    } else if (json_object_get(info, "downtime")) {
        n += snprintf(buf + n, len - (size_t)n, ", downtime %llu ms",
                      (unsigned long long)cli_json_u64(info, "downtime"));
    }
    if ((size_t)n < len && json_object_get(info, "cpu-throttle-percentage")) {
        n += snprintf(buf + n, len - (size_t)n, ", throttle %llu%%",
                      (unsigned long long)cli_json_u64(info, "cpu-throttle-percentage"));
    }
    /* x-convergence: the forecast, and why when it says never. */
    json_t *cv = json_object_get(info, "x-convergence");
    if ((size_t)n < len && json_is_object(cv) && !strcmp(cli_migration_status(info), "active")) {
        if (json_is_string(json_object_get(cv, "estimated-time"))) {
            snprintf(buf + n, len - (size_t)n, ", never at this rate: %s",
                     cli_json_str(cv, "reason"));
        } else {
            snprintf(buf + n, len - (size_t)n, ", ETA %.1f s",
                     (double)cli_json_u64(cv, "estimated-time") / 1000.0);
        }
    }
}

void progress_update(progress *p, json_t *info)
{
    const char *status = cli_migration_status(info);
    char desc[512];
    progress_describe(info, desc, sizeof(desc));
    int pct = percent_of(info);
    int64_t now = cli_now_ms();

    if (!p->tty) {
        bool done = strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
                    strcmp(status, "cancelled") == 0;
        if (now - p->last_ms < 1000 && !done) {
            return;
        }
        p->last_ms = now;
        char pcts[16] = "   ";
        if (pct >= 0) {
            snprintf(pcts, sizeof(pcts), "%3d%%", pct);
        }
        fprintf(p->out, "[%6.1fs] %-15s %-4s  %s\n", (double)(now - p->start_ms) / 1000.0,
                status, pcts, desc);
        fflush(p->out);
        return;
    }

    char bar[BAR_WIDTH + 1];
    int fill = pct < 0 ? 0 : pct * BAR_WIDTH / 100;
    for (int i = 0; i < BAR_WIDTH; i++) {
        bar[i] = i < fill ? '#' : '-';
    }
    bar[BAR_WIDTH] = '\0';
    char line[768];
    char pcts[16] = "   ";
    if (pct >= 0) {
        snprintf(pcts, sizeof(pcts), "%3d%%", pct);
    }
    snprintf(line, sizeof(line), "%s [%s] %-4s  %s", status, bar, pcts, desc);
    /* Never wrap: a wrapped line cannot be redrawn with \r. */
    if ((int)strlen(line) > p->width - 1) {
        line[p->width - 1] = '\0';
    }
    fprintf(p->out, "\r%s\033[K", line);
    fflush(p->out);
    p->drawn = true;
}

void progress_finish(progress *p)
{
    if (p->tty && p->drawn) {
        fputc('\n', p->out);
        fflush(p->out);
    }
    p->drawn = false;
}
