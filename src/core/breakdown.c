#include "core/breakdown.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/clock.h"
#include "common/util.h"

void lm_bd_start(lm_bd *b, uint64_t now_ns)
{
    memset(b, 0, sizeof(*b));
    b->start_ns = now_ns;
    b->last_ns = now_ns;
    b->on = true;
}

static void append(lm_bd *b, const char *name, uint64_t ns)
{
    if (b->n == LM_BD_MAX_PARTS) {
        /* Out of slots: the time still counts, under the last name. */
        b->part[b->n - 1].ns += ns;
        return;
    }
    lm_bd_part *p = &b->part[b->n++];
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->ns = ns;
}

void lm_bd_mark_at(lm_bd *b, const char *name, uint64_t now_ns)
{
    if (!b->on) {
        return;
    }
    uint64_t ns = now_ns > b->last_ns ? now_ns - b->last_ns : 0;
    b->last_ns = now_ns > b->last_ns ? now_ns : b->last_ns;
    if (b->n && !strncmp(b->part[b->n - 1].name, name, LM_BD_NAME_MAX - 1)) {
        b->part[b->n - 1].ns += ns;
    } else {
        append(b, name, ns);
    }
}

void lm_bd_mark(lm_bd *b, const char *name)
{
    if (b->on) {
        lm_bd_mark_at(b, name, lm_now_ns());
    }
}

void lm_bd_add(lm_bd *b, const char *name, uint64_t ns)
{
    for (unsigned i = 0; i < b->n; i++) {
        if (!strncmp(b->part[i].name, name, LM_BD_NAME_MAX - 1)) {
            b->part[i].ns += ns;
            return;
        }
    }
    append(b, name, ns);
}

uint64_t lm_bd_total(const lm_bd *b)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < b->n; i++) {
        t += b->part[i].ns;
    }
    return t;
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

size_t lm_bd_encode(const lm_bd *b, uint8_t *buf, size_t cap)
{
    if (cap < 2) {
        return 0;
    }
    size_t off = 2;
    unsigned n = 0;
    for (unsigned i = 0; i < b->n; i++) {
        size_t len = strnlen(b->part[i].name, LM_BD_NAME_MAX - 1);
        if (off + 1 + len + 8 > cap) {
            break;
        }
        buf[off] = (uint8_t)len;
        memcpy(buf + off + 1, b->part[i].name, len);
        put_be(buf + off + 1 + len, b->part[i].ns, 8);
        off += 1 + len + 8;
        n++;
    }
    put_be(buf, n, 2);
    return off;
}

int lm_bd_decode(const uint8_t *buf, size_t len, lm_bd *b, lm_error *err)
{
    memset(b, 0, sizeof(*b));
    if (len < 2) {
        return lm_error_set(err, -EBADMSG, "return path: DOWNTIME of %zu bytes", len);
    }
    unsigned n = (unsigned)get_be(buf, 2);
    if (n > LM_BD_MAX_PARTS) {
        return lm_error_set(err, -EBADMSG, "return path: DOWNTIME with %u parts", n);
    }
    size_t off = 2;
    for (unsigned i = 0; i < n; i++) {
        if (off + 1 > len) {
            return lm_error_set(err, -EBADMSG, "return path: DOWNTIME cut short");
        }
        size_t nl = buf[off];
        if (nl == 0 || nl >= LM_BD_NAME_MAX || off + 1 + nl + 8 > len) {
            return lm_error_set(err, -EBADMSG, "return path: DOWNTIME part %u malformed", i);
        }
        lm_bd_part *p = &b->part[b->n++];
        for (size_t k = 0; k < nl; k++) {
            uint8_t ch = buf[off + 1 + k];
            /* Names end up in JSON and on terminals: printable ASCII only. */
            p->name[k] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
        }
        p->name[nl] = '\0';
        p->ns = get_be(buf + off + 1 + nl, 8);
        off += 1 + nl + 8;
    }
    if (off != len) {
        return lm_error_set(err, -EBADMSG, "return path: DOWNTIME has %zu trailing bytes", len - off);
    }
    return 0;
}

/* The destination's wait for bytes is, seen from the source, bytes still
 * on their way. */
static const char *joined_name(const char *dst_name)
{
    return strcmp(dst_name, "dst:wait") ? dst_name : "transfer";
}

void lm_bd_join(const lm_bd *src, uint64_t t4_ns, uint64_t t5_ns, const lm_bd *dst,
                uint64_t latency_ns, lm_bd *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < src->n; i++) {
        lm_bd_add(out, src->part[i].name, src->part[i].ns);
    }
    uint64_t wait = t5_ns > t4_ns ? t5_ns - t4_ns : 0;
    uint64_t conf = latency_ns < wait ? latency_ns : wait;
    /* [t4, dst_end] in the source's time, filled back to front. */
    uint64_t room = wait - conf;
    lm_bd laid;
    memset(&laid, 0, sizeof(laid));
    for (unsigned i = dst ? dst->n : 0; i-- > 0 && room > 0;) {
        uint64_t ns = dst->part[i].ns < room ? dst->part[i].ns : room;
        lm_bd_add(&laid, joined_name(dst->part[i].name), ns);
        room -= ns;
    }
    /* Before the destination's first part: bytes still travelling. */
    if (room) {
        lm_bd_add(&laid, "transfer", room);
    }
    /* Source order first, then the destination's in its own order. */
    if (dst) {
        for (unsigned i = 0; i < dst->n; i++) {
            const char *name = joined_name(dst->part[i].name);
            for (unsigned k = 0; k < laid.n; k++) {
                if (!strcmp(laid.part[k].name, name)) {
                    lm_bd_add(out, name, laid.part[k].ns);
                    laid.part[k].ns = 0;
                    laid.part[k].name[0] = '\0';
                }
            }
        }
    }
    for (unsigned k = 0; k < laid.n; k++) {
        if (laid.part[k].name[0]) {
            lm_bd_add(out, laid.part[k].name, laid.part[k].ns);
        }
    }
    lm_bd_add(out, "confirmation", conf);
    out->start_ns = src->start_ns;
    out->last_ns = t5_ns;
}

uint64_t lm_bd_fixed_ns(const lm_bd *joined)
{
    uint64_t fixed = 0;
    for (unsigned i = 0; i < joined->n; i++) {
        const char *n = joined->part[i].name;
        if (strcmp(n, "ram-tail") && strcmp(n, "dst:ram-tail") && strcmp(n, "transfer")) {
            fixed += joined->part[i].ns;
        }
    }
    return fixed;
}

static uint64_t part_ns(const lm_bd *b, const char *name, bool *found)
{
    uint64_t ns = 0;
    for (unsigned i = 0; i < b->n; i++) {
        if (!strcmp(b->part[i].name, name)) {
            ns += b->part[i].ns;
            if (found) {
                *found = true;
            }
        }
    }
    return ns;
}

uint64_t lm_bd_bytes_ns(const lm_bd *joined)
{
    return part_ns(joined, "ram-tail", NULL) + part_ns(joined, "transfer", NULL) +
           part_ns(joined, "dst:ram-tail", NULL);
}

static void add_sample(lm_bd_series *s, uint64_t ns)
{
    s->v[s->n++ % LM_BD_SAMPLES] = ns;
}

/* How many of its samples a series still holds. */
static unsigned series_len(const lm_bd_series *s)
{
    return LM_MIN(s->n, (unsigned)LM_BD_SAMPLES);
}

static uint64_t typical(const lm_bd_series *s, uint64_t probe);

void lm_bd_learn(lm_bd_learned *l, const lm_bd *joined, const lm_bd_tail *tail)
{
    bool has_stop = false, has_sync = false, has_conf = false, has_tail = false;
    uint64_t stop = part_ns(joined, "stop", &has_stop);
    uint64_t sync = part_ns(joined, "sync", &has_sync);
    /* The confirmation is the round trip's, measured anew every time. */
    uint64_t conf = part_ns(joined, "confirmation", &has_conf);
    part_ns(joined, "ram-tail", &has_tail);
    uint64_t fixed = lm_bd_fixed_ns(joined);
    uint64_t known = stop + sync + conf;
    uint64_t rest = fixed > known ? fixed - known : 0;
    /* Whether this switchover's threads got their CPUs when they asked,
     * judged before its own samples join: see lm_bd_calm. */
    bool calm = has_stop && has_conf && lm_bd_calm(l, stop, rest, tail->rtt_ns);
    l->n++;
    if (has_stop) {
        add_sample(&l->stop, stop);
    }
    if (has_sync) {
        add_sample(&l->sync, sync);
    }
    /* Without the destination's confirmation (postcopy ends at RUN) the
     * destination's parts are missing: no sample of the rest. */
    if (has_conf) {
        add_sample(&l->rest, rest);
    }
    uint64_t took = lm_bd_bytes_ns(joined);
    if (!has_tail || !has_conf) {
        return; /* postcopy: the tail's end is not known */
    }
    if (tail->runs >= LM_BD_RUN_MIN) {
        /* What the tail took, beyond its bytes at the destination's load
         * rate, per run: its wall time (the socket and the destination
         * set it as much as the sender: the sender's CPU time taught 0 a
         * run for tails that took 3 ms), but only from a calm switchover,
         * as one whose threads waited for a CPU would teach 10-100x the
         * cost of a run for the next one. */
        if (calm) {
            uint64_t bytes_ns = tail->run_bw ? lm_per_second(tail->bytes, tail->run_bw) : 0;
            add_sample(&l->run, lm_sat_sub(took, bytes_ns) / tail->runs);
        }
    } else if (tail->bw) {
        /* Beyond what its estimate priced, as it priced it. */
        uint64_t priced = lm_per_second(tail->bytes, tail->bw);
        if (tail->by_runs) {
            priced = lm_sat_add(lm_sat_mul(tail->runs, lm_bd_run_ns(l, tail->rtt_ns)),
                                tail->run_bw ? lm_per_second(tail->bytes, tail->run_bw) : 0);
        }
        add_sample(&l->tail, lm_sat_sub(took, priced));
    }
}

bool lm_bd_calm(const lm_bd_learned *l, uint64_t stop_ns, uint64_t rest_ns, uint64_t rtt_ns)
{
    uint64_t stop_ref = LM_MAX(typical(&l->stop, rtt_ns), (uint64_t)LM_BD_CALM_FLOOR_NS);
    uint64_t rest_ref = LM_MAX(typical(&l->rest, rtt_ns), (uint64_t)LM_BD_CALM_FLOOR_NS);
    return stop_ns <= lm_sat_mul(stop_ref, LM_BD_CALM) &&
           rest_ns <= lm_sat_mul(rest_ref, LM_BD_CALM);
}

/* A part's estimate from its samples, or its probe (core/breakdown.h). */
static uint64_t typical(const lm_bd_series *s, uint64_t probe)
{
    unsigned n = series_len(s);
    if (n == 0) {
        return probe;
    }
    if (n == 1) {
        /* One sample may be a descheduled switchover: bounded by its
         * probe (at least 1 us, so that a 0 probe does not veto it). */
        uint64_t cap = LM_BD_OUTLIER * (probe > 1000 ? probe : 1000);
        return s->v[0] < cap ? s->v[0] : cap;
    }
    uint64_t v[LM_BD_SAMPLES];
    memcpy(v, s->v, n * sizeof(*v));
    for (unsigned i = 1; i < n; i++) { /* insertion sort: n <= 8 */
        for (unsigned k = i; k > 0 && v[k - 1] > v[k]; k--) {
            uint64_t t = v[k];
            v[k] = v[k - 1];
            v[k - 1] = t;
        }
    }
    if (n == 2) {
        return v[0]; /* of two, a descheduled one is the larger */
    }
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

uint64_t lm_bd_run_ns(const lm_bd_learned *l, uint64_t rtt_ns)
{
    return l->run.n ? typical(&l->run, rtt_ns) : 0;
}

uint64_t lm_bd_fixed_estimate(const lm_bd_learned *l, const lm_bd_probe *p, lm_bd_fixed *out)
{
    lm_bd_fixed f = { .rtt_ns = p->rtt_ns };
    f.stop_ns = typical(&l->stop, p->rtt_ns);
    f.sync_ns = typical(&l->sync, p->sync_ns);
    f.rest_ns = typical(&l->rest, p->rtt_ns);
    f.tail_ns = typical(&l->tail, p->tail_ns > p->rtt_ns ? p->tail_ns : p->rtt_ns);
    f.learned = (l->stop.n > 0) + (l->sync.n > 0) + (l->rest.n > 0) + (l->tail.n > 0);
    if (out) {
        *out = f;
    }
    return f.stop_ns + f.sync_ns + f.rtt_ns + f.rest_ns + f.tail_ns;
}
