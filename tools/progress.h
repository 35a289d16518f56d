/*
 * The migration progress display: a bar redrawn in place on a terminal, or
 * one plain line per second when stderr is not a terminal (logs, CI).
 */
#ifndef LIVEMIG_TOOLS_PROGRESS_H
#define LIVEMIG_TOOLS_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

typedef struct progress {
    FILE *out;
    bool tty;
    bool drawn;          /* a bar is on the current line */
    int64_t start_ms;
    int64_t last_ms;     /* last line printed (non-tty) */
    int width;           /* terminal columns */
} progress;

void progress_init(progress *p, FILE *out);
/* Show the state from a query-migrate reply (borrowed). */
void progress_update(progress *p, json_t *info);
/* End the bar's line (before printing anything else). */
void progress_finish(progress *p);

/* One line describing a query-migrate reply, without the bar (len >= 160). */
void progress_describe(json_t *info, char *buf, size_t len);

#endif
