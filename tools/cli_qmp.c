/* livemig qmp: run any QMP command and print its reply. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qmp_client.h"

static void usage(FILE *f)
{
    fprintf(f,
"Usage: livemig qmp [--timeout SEC] SOCK COMMAND [JSON-ARGS]\n"
"\n"
"Run COMMAND on the machine behind the QMP socket SOCK and pretty-print the\n"
"reply's return value.  JSON-ARGS is the \"arguments\" object, e.g.\n"
"  livemig qmp /tmp/src.sock migrate-set-parameters '{\"downtime-limit\": 100}'\n"
"\n"
"Exit status: 0 on a return, 1 on an error reply (printed on stderr as\n"
"CLASS: DESC) or a connection failure, 2 on a bad command line.\n");
}

int cli_qmp(int argc, char **argv)
{
    int i = 1;
    double timeout_s = QMPC_DEFAULT_TIMEOUT_MS / 1000.0;
    for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return CLI_EXIT_OK;
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            if (cli_parse_seconds(argv[++i], &timeout_s) < 0) {
                cli_errorf("qmp: bad --timeout '%s'", argv[i]);
                return CLI_EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            cli_errorf("qmp: unknown option '%s'", argv[i]);
            usage(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    int nargs = argc - i;
    if (nargs < 2 || nargs > 3) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *sock = argv[i], *cmd = argv[i + 1];
    json_t *args = NULL;
    if (nargs == 3) {
        json_error_t je;
        args = json_loads(argv[i + 2], 0, &je);
        if (!args) {
            cli_errorf("qmp: JSON-ARGS: %s (column %d)", je.text, je.column);
            return CLI_EXIT_USAGE;
        }
        if (!json_is_object(args)) {
            cli_errorf("qmp: JSON-ARGS must be an object");
            json_decref(args);
            return CLI_EXIT_USAGE;
        }
    }

    qmpc *c = NULL;
    lm_error err = LM_ERROR_INIT;
    int tmo = (int)(timeout_s * 1000.0);
    if (qmpc_connect(sock, tmo, &c, &err) < 0) {
        cli_errorf("qmp: %s", err.msg);
        json_decref(args);
        return CLI_EXIT_FAIL;
    }
    json_t *ret = NULL;
    int r = qmpc_execute(c, cmd, args, tmo, &ret, &err);
    if (r < 0) {
        if (r == -EREMOTEIO) {
            fprintf(stderr, "%s: %s\n", qmpc_last_error_class(c), err.msg);
        } else {
            cli_errorf("qmp: %s", err.msg);
        }
        qmpc_close(c);
        return CLI_EXIT_FAIL;
    }
    char *text = json_dumps(ret, JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
    printf("%s\n", text ? text : "{}");
    free(text);
    json_decref(ret);
    qmpc_close(c);
    return CLI_EXIT_OK;
}
