/*
 * Migration orchestration, as a management tool does it: configure both
 * sides, start the destination listening, start the source, follow the
 * progress, wait for the destination, verify its memory.  Used by
 * `livemig migrate` and `livemig demo`.
 */
#ifndef LIVEMIG_TOOLS_ORCHESTRATE_H
#define LIVEMIG_TOOLS_ORCHESTRATE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "livemig/error.h"

typedef struct mig_opts {
    const char *src;           /* source QMP socket */
    const char *dst;           /* destination QMP socket */
    const char *uri;           /* NULL: a Unix socket in a temp dir */
    const char **caps;         /* "NAME" (on) or "NAME=on|off", on both sides */
    size_t ncaps;
    const char **params;       /* "NAME=VALUE", source (multifd-* on both) */
    size_t nparams;
    double timeout_s;          /* 0: wait forever */
    bool no_incoming;          /* the destination already listens on uri */
    bool verify;               /* x-verify-memory on the destination */
} mig_opts;

typedef struct mig_result {
    bool completed;            /* source and destination completed */
    bool verify_ran;
    bool verify_ok;
    char verify_msg[512];
    char status[32];           /* source's final status */
    uint64_t total_ms, setup_ms, downtime_ms;
    uint64_t transferred;      /* RAM bytes sent */
    uint64_t passes;           /* dirty-sync-count */
    double mbps;
} mig_result;

/* 0 when the migration completed (verification is reported in res, not in
 * the return value); -errno with the reason (error-desc, timeout,
 * interruption) otherwise. */
int mig_run(const mig_opts *o, mig_result *res, lm_error *err);
void mig_print_summary(const mig_result *r, FILE *out);

#endif
