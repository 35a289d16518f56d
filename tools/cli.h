/*
 * The livemig command line: subcommands and the helpers they share.
 */
#ifndef LIVEMIG_TOOLS_CLI_H
#define LIVEMIG_TOOLS_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "livemig/error.h"

/* Exit statuses. */
#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1  /* the operation failed (migration, verification) */
#define CLI_EXIT_USAGE 2 /* bad command line */

/* Subcommands: argv[0] is the subcommand's name. */
int cli_migrate(int argc, char **argv);
int cli_info(int argc, char **argv);
int cli_qmp(int argc, char **argv);
int cli_demo(int argc, char **argv);
int cli_analyze(int argc, char **argv);
int cli_timeline(int argc, char **argv);

/* Set by SIGINT/SIGTERM once cli_install_signals() ran. */
extern volatile sig_atomic_t cli_interrupted;
void cli_install_signals(void);

/* "1.50 GiB", "512 KiB", "17 B" into buf. */
const char *cli_fmt_size(uint64_t bytes, char *buf, size_t len);
/* Megabits per second as "812 Mbit/s" / "3.21 Gbit/s". */
const char *cli_fmt_mbps(double mbps, char *buf, size_t len);
/* Sizes with K/M/G/T suffixes (binary). */
int cli_parse_size(const char *s, uint64_t *out);
/* Seconds as a number ("1.5"). */
int cli_parse_seconds(const char *s, double *out);

/* Integer member of a JSON object (0 when absent or not a number). */
uint64_t cli_json_u64(json_t *obj, const char *key);
double cli_json_num(json_t *obj, const char *key);
const char *cli_json_str(json_t *obj, const char *key); /* "" when absent */
/* query-migrate's status, "none" for the {} of a machine that never migrated. */
const char *cli_migration_status(json_t *info);

/* Milliseconds on the monotonic clock. */
int64_t cli_now_ms(void);
void cli_sleep_ms(int ms);

/* Remove a directory tree (best effort). */
void cli_rmtree(const char *path);

/* Print "livemig: msg" to stderr. */
void cli_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
