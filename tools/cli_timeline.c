/* livemig timeline: draw a source machine's migration timeline. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qmp_client.h"
#include "timeline.h"

static void usage(FILE *f)
{
    fprintf(f,
"Usage: livemig timeline --from SOCK [--png FILE] [--svg FILE] [options]\n"
"\n"
"Draw the timeline of the last (or current) migration of the machine behind\n"
"the QMP socket SOCK, its source (x-query-migration-history): the bytes that\n"
"remain, the guest's dirty rate and the bandwidth against time, one point\n"
"per pass, the switchover marked.  gnuplot draws it (Debian: gnuplot-nox).\n"
"\n"
"Options:\n"
"  --from SOCK          QMP socket of the migration's source\n"
"  --png FILE           write a PNG\n"
"  --svg FILE           write an SVG\n"
"  --size WxH           picture size (default %ux%u)\n"
"  --title TEXT         title (default: passes, status and downtime)\n"
"  -h, --help           this help\n"
"\n"
"Exit status: 0 when every picture was written, 1 when the machine has no\n"
"timeline or gnuplot failed, 2 on a bad command line.\n",
            TIMELINE_DEFAULT_WIDTH, TIMELINE_DEFAULT_HEIGHT);
}

/* "WxH", each 16..10000. */
static int parse_size(const char *s, unsigned *w, unsigned *h)
{
    char *end;
    unsigned long a = strtoul(s, &end, 10);
    if (end == s || (*end != 'x' && *end != 'X')) {
        return -1;
    }
    const char *rest = end + 1;
    unsigned long b = strtoul(rest, &end, 10);
    if (end == rest || *end || a < 16 || b < 16 || a > 10000 || b > 10000) {
        return -1;
    }
    *w = (unsigned)a;
    *h = (unsigned)b;
    return 0;
}

int cli_timeline(int argc, char **argv)
{
    enum { OPT_FROM = 256, OPT_PNG, OPT_SVG, OPT_SIZE, OPT_TITLE };
    static const struct option longopts[] = {
        { "from", required_argument, NULL, OPT_FROM },
        { "png", required_argument, NULL, OPT_PNG },
        { "svg", required_argument, NULL, OPT_SVG },
        { "size", required_argument, NULL, OPT_SIZE },
        { "title", required_argument, NULL, OPT_TITLE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *from = NULL, *png = NULL, *svg = NULL;
    timeline_opts o = { TIMELINE_DEFAULT_WIDTH, TIMELINE_DEFAULT_HEIGHT, NULL };
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_FROM: from = optarg; break;
        case OPT_PNG: png = optarg; break;
        case OPT_SVG: svg = optarg; break;
        case OPT_TITLE: o.title = optarg; break;
        case OPT_SIZE:
            if (parse_size(optarg, &o.width, &o.height) < 0) {
                cli_errorf("timeline: bad --size '%s' (WxH, 16..10000 each)", optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 'h':
            usage(stdout);
            return CLI_EXIT_OK;
        default:
            usage(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_errorf("timeline: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    if (!from || (!png && !svg)) {
        cli_errorf("timeline: --from and at least one of --png/--svg are required "
                   "(see livemig timeline --help)");
        return CLI_EXIT_USAGE;
    }
    lm_error err = LM_ERROR_INIT;
    qmpc *q = NULL;
    int ret = qmpc_connect(from, QMPC_DEFAULT_TIMEOUT_MS, &q, &err);
    if (ret == 0) {
        ret = timeline_render(q, &o, png, svg, &err);
    }
    qmpc_close(q);
    if (ret < 0) {
        cli_errorf("%s", err.msg);
        return CLI_EXIT_FAIL;
    }
    return CLI_EXIT_OK;
}
