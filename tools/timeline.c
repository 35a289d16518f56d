/*
 * The migration timeline, drawn by gnuplot (tools/timeline.h).
 *
 * The history becomes gnuplot's inline data block in a script written to
 * a temporary directory; gnuplot runs as a child with a time limit, its
 * messages kept for the error.  Nothing here draws a pixel.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "timeline.h"

#define GNUPLOT_TIMEOUT_MS 60000
#define MIB (1024.0 * 1024.0)

timeline_format timeline_format_of(const char *path)
{
    size_t n = strlen(path);
    return n >= 4 && strcasecmp(path + n - 4, ".svg") == 0 ? TIMELINE_SVG : TIMELINE_PNG;
}

/* A gnuplot single-quoted string: '' stands for one quote; no newlines. */
static int put_quoted(FILE *f, const char *s, lm_error *err)
{
    if (strpbrk(s, "\n\r")) {
        return lm_error_set(err, -EINVAL, "timeline: a file name with a line break: '%s'", s);
    }
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') {
            fputc('\'', f);
        }
        fputc(*s, f);
    }
    fputc('\'', f);
    return 0;
}

/* Rates are drawn over windows of at least this share of the timeline
 * (1/RATE_WINDOWS of it): a pass of a few hundred µs, as the last ones
 * often are, says "1 GB/s" of a few pages and would flatten the rest. */
#define RATE_WINDOWS 60

/* Two data blocks.  $passes: one line per pass, at the sync that ended it:
 * time (s) and remaining (MiB), after a first line for the migration's
 * start.  $rates: one line per window of consecutive passes, at its
 * start: dirty rate and bandwidth over the window (MiB/s), the highest
 * throttle in it (%); a last line closes the last window. */
static void put_data(FILE *f, json_t *passes)
{
    fprintf(f, "$passes << EOD\n");
    size_t i, n = json_array_size(passes);
    json_t *p;
    json_array_foreach(passes, i, p) {
        double end_s = (double)(cli_json_u64(p, "start-us") + cli_json_u64(p, "duration-us")) / 1e6;
        fprintf(f, "%.6f %.3f\n", end_s, (double)cli_json_u64(p, "remaining") / MIB);
    }
    fprintf(f, "EOD\n$rates << EOD\n");
    json_t *first = json_array_get(passes, 0), *last = json_array_get(passes, n - 1);
    double t0 = (double)cli_json_u64(first, "start-us") / 1e6;
    double t_end = (double)(cli_json_u64(last, "start-us") + cli_json_u64(last, "duration-us")) / 1e6;
    double min_window = (t_end - t0) / RATE_WINDOWS;
    double w_start = -1, w_len = 0, w_sent = 0, w_dirtied = 0, dirty = 0, bw = 0;
    int w_throttle = 0, throttle = 0;
    json_array_foreach(passes, i, p) {
        double start = (double)cli_json_u64(p, "start-us") / 1e6;
        double len = (double)cli_json_u64(p, "duration-us") / 1e6;
        if (w_start < 0) {
            w_start = start;
        }
        w_len += len;
        w_sent += (double)cli_json_u64(p, "bytes-sent");
        w_dirtied += (double)cli_json_u64(p, "dirty-rate") * len;
        int t = (int)cli_json_u64(p, "cpu-throttle-percentage");
        w_throttle = t > w_throttle ? t : w_throttle;
        if ((w_len >= min_window || i == n - 1) && w_len > 0) {
            dirty = w_dirtied / w_len / MIB;
            bw = w_sent / w_len / MIB;
            throttle = w_throttle;
            fprintf(f, "%.6f %.3f %.3f %d\n", w_start, dirty, bw, throttle);
            w_start = -1;
            w_len = w_sent = w_dirtied = 0;
            w_throttle = 0;
        }
    }
    fprintf(f, "%.6f %.3f %.3f %d\nEOD\n", t_end, dirty, bw, throttle);
}

static int write_script(const char *path, json_t *hist, const timeline_opts *o,
                        const char *title, const char *const out[2], lm_error *err)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        return lm_error_set_errno(err, -errno, "timeline: cannot write %s", path);
    }
    json_t *passes = json_object_get(hist, "passes");
    bool throttled = false;
    size_t i;
    json_t *p;
    json_array_foreach(passes, i, p) {
        throttled = throttled || cli_json_u64(p, "cpu-throttle-percentage") != 0;
    }
    put_data(f, passes);
    fprintf(f, "set title ");
    int ret = put_quoted(f, title, err);
    fprintf(f, "\nset xlabel 'time since the migration started (s)'\n"
               "set ylabel 'remaining (MiB)'\n"
               "set y2label 'MiB/s%s'\n"
               "set ytics nomirror\nset y2tics\nset yrange [0:*]\nset y2range [0:*]\n"
               "set grid\nset key outside bottom center horizontal\n",
            throttled ? ", throttle %" : "");
    /* The time axis reaches the end of the migration, so that a
     * switchover after the last pass is on the picture. */
    json_t *last = json_array_get(passes, json_array_size(passes) - 1);
    double x_max = (double)(cli_json_u64(last, "start-us") + cli_json_u64(last, "duration-us")) / 1e6;
    double end_s = (double)cli_json_u64(hist, "end-us") / 1e6;
    double sw_s = (double)cli_json_u64(hist, "switchover-us") / 1e6;
    x_max = end_s > x_max ? end_s : x_max;
    x_max = sw_s > x_max ? sw_s : x_max;
    fprintf(f, "set xrange [0:%.6f]\n", x_max > 0 ? x_max * 1.02 : 1.0);
    if (json_object_get(hist, "switchover-us")) {
        double sw = (double)cli_json_u64(hist, "switchover-us") / 1e6;
        fprintf(f, "set arrow from %.6f, graph 0 to %.6f, graph 1 nohead lw 2 dt 2 lc rgb '#c00000'\n"
                   "set label 'switchover' at %.6f, graph 0.95 right offset -0.5,0 tc rgb '#c00000'\n",
                sw, sw, sw);
    }
    for (int k = 0; k < 2 && ret == 0; k++) {
        if (!out[k]) {
            continue;
        }
        if (k == TIMELINE_PNG) {
            fprintf(f, "set terminal pngcairo size %u,%u font 'sans,10'\n", o->width, o->height);
        } else {
            fprintf(f, "set terminal svg size %u,%u fixed font 'sans,10'\n", o->width, o->height);
        }
        fprintf(f, "set output ");
        ret = put_quoted(f, out[k], err);
        fprintf(f, "\nplot $passes using 1:2 axes x1y1 with linespoints lw 2 pt 7 ps 0.6 "
                   "lc rgb '#1f5fa8' title 'remaining', \\\n"
                   "     $rates using 1:2 axes x1y2 with steps lw 1.5 lc rgb '#d07000' "
                   "title 'dirty rate', \\\n"
                   "     $rates using 1:3 axes x1y2 with steps lw 1.5 lc rgb '#2a8a2a' "
                   "title 'bandwidth'%s\n"
                   "unset output\n",
                throttled ? ", \\\n     $rates using 1:4 axes x1y2 with steps lw 1 dt 3 "
                            "lc rgb '#7a2a9a' title 'cpu throttle (%)'"
                          : "");
    }
    if (fclose(f) != 0 && ret == 0) {
        ret = lm_error_set_errno(err, -errno, "timeline: cannot write %s", path);
    }
    return ret;
}

/* Runs gnuplot on the script, within GNUPLOT_TIMEOUT_MS; its messages
 * (in log) make the error. */
static int run_gnuplot(const char *script, const char *log, lm_error *err)
{
    pid_t pid = fork();
    if (pid < 0) {
        return lm_error_set_errno(err, -errno, "timeline: cannot start gnuplot");
    }
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int nul = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (nul >= 0) {
            dup2(nul, 0);
        }
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    int64_t deadline = cli_now_ms() + GNUPLOT_TIMEOUT_MS;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            break;
        }
        if (r < 0 && errno != EINTR) {
            return lm_error_set_errno(err, -errno, "timeline: waiting for gnuplot");
        }
        if (cli_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return lm_error_set(err, -ETIMEDOUT, "timeline: gnuplot ran for more than %d s",
                                GNUPLOT_TIMEOUT_MS / 1000);
        }
        cli_sleep_ms(10);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        return 0;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
        return lm_error_set(err, -ENOENT, "timeline: gnuplot is not installed (Debian: "
                            "apt-get install gnuplot-nox; scripts/deps.sh lists it)");
    }
    char msg[256] = "";
    FILE *f = fopen(log, "r");
    if (f) {
        size_t n = fread(msg, 1, sizeof(msg) - 1, f);
        msg[n] = '\0';
        fclose(f);
    }
    return lm_error_set(err, -EIO, "timeline: gnuplot failed: %s", msg[0] ? msg : "no message");
}

int timeline_render(qmpc *src, const timeline_opts *o, const char *png, const char *svg,
                    lm_error *err)
{
    json_t *hist = NULL, *info = NULL;
    int ret = qmpc_execute(src, "x-query-migration-history", NULL, QMPC_DEFAULT_TIMEOUT_MS, &hist,
                           err);
    if (ret < 0) {
        return ret;
    }
    json_t *passes = json_object_get(hist, "passes");
    if (!json_is_array(passes) || json_array_size(passes) == 0) {
        json_decref(hist);
        return lm_error_set(err, -ENODATA, "timeline: %s has no migration timeline (it has not "
                            "been the source of a migration)", qmpc_path(src));
    }
    char title[256];
    if (o->title) {
        snprintf(title, sizeof(title), "%s", o->title);
    } else {
        lm_error qerr = LM_ERROR_INIT;
        snprintf(title, sizeof(title), "livemig migration timeline: %zu passes",
                 json_array_size(passes));
        if (qmpc_execute(src, "query-migrate", NULL, QMPC_DEFAULT_TIMEOUT_MS, &info, &qerr) == 0 &&
            json_object_get(info, "downtime")) {
            size_t n = strlen(title);
            snprintf(title + n, sizeof(title) - n, ", %s, downtime %llu ms",
                     cli_migration_status(info),
                     (unsigned long long)cli_json_u64(info, "downtime"));
        }
        json_decref(info);
    }
    char dir[] = "/tmp/livemig-timeline-XXXXXX";
    if (!mkdtemp(dir)) {
        json_decref(hist);
        return lm_error_set_errno(err, -errno, "timeline: cannot create a temporary directory");
    }
    char script[sizeof(dir) + 16], log[sizeof(dir) + 16];
    snprintf(script, sizeof(script), "%s/plot.gp", dir);
    snprintf(log, sizeof(log), "%s/gnuplot.log", dir);
    const char *out[2] = { [TIMELINE_PNG] = png, [TIMELINE_SVG] = svg };
    ret = write_script(script, hist, o, title, out, err);
    json_decref(hist);
    if (ret == 0) {
        ret = run_gnuplot(script, log, err);
    }
    cli_rmtree(dir);
    return ret;
}
