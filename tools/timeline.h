/*
 * The migration timeline as a picture: reads x-query-migration-history
 * (and query-migrate, for the title) from a source machine and has
 * gnuplot draw bytes remaining, the dirty rate and the bandwidth against
 * time, the switchover marked, into a PNG (pngcairo) or an SVG.  Used by
 * `livemig timeline` and `livemig migrate --timeline`.
 */
#ifndef LIVEMIG_TOOLS_TIMELINE_H
#define LIVEMIG_TOOLS_TIMELINE_H

#include <stdbool.h>

#include "livemig/error.h"
#include "qmp_client.h"

#define TIMELINE_DEFAULT_WIDTH 960
#define TIMELINE_DEFAULT_HEIGHT 540

typedef enum timeline_format { TIMELINE_PNG, TIMELINE_SVG } timeline_format;

typedef struct timeline_opts {
    unsigned width, height; /* pixels (PNG) or SVG user units */
    const char *title;      /* NULL: "livemig migration timeline" */
} timeline_opts;

/* The format a file name asks for: .svg is SVG, anything else PNG. */
timeline_format timeline_format_of(const char *path);

/* Draws the source's timeline into each of the paths given (NULL: none).
 * Fails with a clear message when the machine has no timeline (it never
 * was the source of a migration) or gnuplot is missing or fails. */
int timeline_render(qmpc *src, const timeline_opts *o, const char *png, const char *svg,
                    lm_error *err);

#endif
