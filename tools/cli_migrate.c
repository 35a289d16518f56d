/* livemig migrate: drive a migration between two running machines. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "orchestrate.h"
#include "qmp_client.h"
#include "timeline.h"

static void usage(FILE *f)
{
    fprintf(f,
"Usage: livemig migrate --from SOCK --to SOCK [options]\n"
"\n"
"Migrate a running machine to another one, driving both over QMP as a\n"
"management tool would: set capabilities on both sides and parameters on\n"
"the source, start the destination listening (migrate-incoming), start the\n"
"source (migrate), follow the progress, then verify the destination's\n"
"memory (x-verify-memory).\n"
"\n"
"Options:\n"
"  --from SOCK          QMP socket of the source\n"
"  --to SOCK            QMP socket of the destination\n"
"  --uri URI            migration channel (default: a Unix socket in a temp\n"
"                       dir); unix:PATH, tcp:HOST:PORT, ...\n"
"  --cap NAME[=on|off]  set a capability on both sides (repeatable)\n"
"  --param NAME=VALUE   set a parameter on the source (repeatable; numbers\n"
"                       accept K/M/G, booleans on/off); multifd-* also on\n"
"                       the destination\n"
"  --timeout SEC        cancel the migration after SEC seconds\n"
"  --no-incoming        the destination already listens on --uri (it was\n"
"                       started with --incoming URI): skip migrate-incoming\n"
"  --no-verify          do not run x-verify-memory on the destination\n"
"  --timeline FILE      at the end, draw the source's timeline into FILE\n"
"                       (PNG; SVG when FILE ends in .svg; see livemig timeline)\n"
"  -h, --help           this help\n"
"\n"
"Exit status: 0 when the migration completed and verification did not fail,\n"
"1 on failure, cancellation, timeout or a verification mismatch, 2 on a bad\n"
"command line.\n");
}

/* --timeline: the picture of how it went, whatever the outcome. */
static int write_timeline(const char *src, const char *path)
{
    lm_error err = LM_ERROR_INIT;
    qmpc *q = NULL;
    timeline_opts o = { TIMELINE_DEFAULT_WIDTH, TIMELINE_DEFAULT_HEIGHT, NULL };
    bool svg = timeline_format_of(path) == TIMELINE_SVG;
    int ret = qmpc_connect(src, QMPC_DEFAULT_TIMEOUT_MS, &q, &err);
    if (ret == 0) {
        ret = timeline_render(q, &o, svg ? NULL : path, svg ? path : NULL, &err);
    }
    qmpc_close(q);
    if (ret < 0) {
        cli_errorf("migrate: %s", err.msg);
        return ret;
    }
    printf("timeline written to %s\n", path);
    return 0;
}

int cli_migrate(int argc, char **argv)
{
    enum { OPT_FROM = 256, OPT_TO, OPT_URI, OPT_CAP, OPT_PARAM, OPT_TIMEOUT, OPT_NO_INCOMING,
           OPT_NO_VERIFY, OPT_TIMELINE };
    static const struct option longopts[] = {
        { "from", required_argument, NULL, OPT_FROM },
        { "to", required_argument, NULL, OPT_TO },
        { "uri", required_argument, NULL, OPT_URI },
        { "cap", required_argument, NULL, OPT_CAP },
        { "param", required_argument, NULL, OPT_PARAM },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "no-incoming", no_argument, NULL, OPT_NO_INCOMING },
        { "no-verify", no_argument, NULL, OPT_NO_VERIFY },
        { "timeline", required_argument, NULL, OPT_TIMELINE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    mig_opts o = { .verify = true };
    const char *timeline = NULL;
    const char **caps = calloc((size_t)argc + 1, sizeof(*caps));
    const char **params = calloc((size_t)argc + 1, sizeof(*params));
    int ret = CLI_EXIT_USAGE;
    int c;

    if (!caps || !params) {
        goto out;
    }
    o.caps = caps;
    o.params = params;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_FROM: o.src = optarg; break;
        case OPT_TO: o.dst = optarg; break;
        case OPT_URI: o.uri = optarg; break;
        case OPT_CAP: caps[o.ncaps++] = optarg; break;
        case OPT_PARAM: params[o.nparams++] = optarg; break;
        case OPT_TIMEOUT:
            if (cli_parse_seconds(optarg, &o.timeout_s) < 0) {
                cli_errorf("migrate: bad --timeout '%s' (seconds)", optarg);
                goto out;
            }
            break;
        case OPT_NO_INCOMING: o.no_incoming = true; break;
        case OPT_NO_VERIFY: o.verify = false; break;
        case OPT_TIMELINE: timeline = optarg; break;
        case 'h':
            usage(stdout);
            ret = CLI_EXIT_OK;
            goto out;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc) {
        cli_errorf("migrate: unexpected argument '%s'", argv[optind]);
        goto out;
    }
    if (!o.src || !o.dst) {
        cli_errorf("migrate: --from and --to are required (see livemig migrate --help)");
        goto out;
    }

    cli_install_signals();
    mig_result res;
    lm_error err = LM_ERROR_INIT;
    int r = mig_run(&o, &res, &err);
    if (r < 0 && !res.status[0]) {
        /* Nothing ran: just the reason. */
        cli_errorf("migrate: %s", err.msg);
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    mig_print_summary(&res, stdout);
    if (timeline && write_timeline(o.src, timeline) < 0) {
        r = r < 0 ? r : -1;
        if (!err.msg[0]) {
            lm_error_set(&err, -EIO, "the timeline was not written");
        }
    }
    fflush(stdout);
    if (r < 0) {
        cli_errorf("migrate: %s", err.msg);
        ret = CLI_EXIT_FAIL;
    } else if (res.verify_ran && !res.verify_ok) {
        cli_errorf("migrate: destination memory verification FAILED: %s", res.verify_msg);
        ret = CLI_EXIT_FAIL;
    } else {
        ret = CLI_EXIT_OK;
    }
out:
    free(caps);
    free(params);
    return ret;
}
