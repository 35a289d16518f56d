/* livemig: the command line of the livemig live-migration engine. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "livemig/livemig.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} commands[] = {
    { "migrate", cli_migrate, "migrate a running machine to another one (both over QMP)" },
    { "info", cli_info, "show a machine's migration state (like QEMU's `info migrate`)" },
    { "qmp", cli_qmp, "run any QMP command and print the reply" },
    { "demo", cli_demo, "start two livemig-vm machines and migrate one to the other" },
    { "analyze", cli_analyze, "print the records of a saved stream and check it (--json)" },
    { "timeline", cli_timeline, "draw a migration's passes against time (PNG/SVG, gnuplot)" },
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: livemig COMMAND [ARGS...]\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    }
    fprintf(f, "\n`livemig COMMAND --help` describes each command.\n"
               "`livemig --version` prints the version.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        if (argc > 2 && strcmp(cmd, "help") == 0) {
            char help[] = "--help";
            char *sub[] = { argv[2], help, NULL };
            for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
                if (strcmp(argv[2], commands[i].name) == 0) {
                    return commands[i].fn(2, sub);
                }
            }
        }
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("livemig %s\n", lm_version());
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(cmd, commands[i].name) == 0) {
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "livemig: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return CLI_EXIT_USAGE;
}
