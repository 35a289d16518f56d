/*
 * The switchover's accounting: max-bandwidth lifted for the stop-copy
 * (channel/ratelimit.h) and the downtime breakdown (core/breakdown.h).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "channel/ratelimit.h"
#include "common/clock.h"
#include "core/breakdown.h"
#include "postcopy/return_path.h"
#include "stream/format.h"

typedef struct writer {
    lm_ratelimit *rl;
    int done; /* atomic */
} writer;

static void *write_a_lot(void *opaque)
{
    writer *w = opaque;
    /* 64 MB at 1 MB/s: a minute, unless the limit is lifted. */
    for (int i = 0; i < 64; i++) {
        lm_ratelimit_consume(w->rl, 1u << 20);
    }
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* A writer asleep on max-bandwidth wakes when the stop-copy lifts it, and
 * the time it slept was counted. */
static void test_lift_wakes_writer(void **state)
{
    (void)state;
    lm_ratelimit rl;
    lm_ratelimit_init(&rl, 1u << 20);
    writer w = { .rl = &rl };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, write_a_lot, &w), 0);
    /* Wait until it is held back (bounded: 30 s on any machine). */
    for (int i = 0; i < 3000 && lm_ratelimit_held_ns(&rl) == 0; i++) {
        usleep(10000);
    }
    assert_true(lm_ratelimit_held_ns(&rl) > 0);
    assert_int_equal(__atomic_load_n(&w.done, __ATOMIC_ACQUIRE), 0);
    lm_ratelimit_lift(&rl, true);
    for (int i = 0; i < 3000 && !__atomic_load_n(&w.done, __ATOMIC_ACQUIRE); i++) {
        usleep(10000);
    }
    assert_int_equal(__atomic_load_n(&w.done, __ATOMIC_ACQUIRE), 1);
    pthread_join(t, NULL);
    /* Lifted: nothing is held back, nothing is counted. */
    uint64_t held = lm_ratelimit_held_ns(&rl);
    lm_ratelimit_consume(&rl, 64u << 20);
    assert_int_equal(lm_ratelimit_delay_ns(&rl), 0);
    assert_int_equal(lm_ratelimit_held_ns(&rl), held);
    /* Put back: the limit applies again (a retry). */
    lm_ratelimit_lift(&rl, false);
    lm_ratelimit_charge(&rl, 16u << 20);
    assert_true(lm_ratelimit_delay_ns(&rl) > 0);
    lm_ratelimit_destroy(&rl);
}

/* Marks tile the interval; consecutive marks of one name merge. */
static void test_marks_tile(void **state)
{
    (void)state;
    lm_bd b;
    memset(&b, 0, sizeof(b));
    lm_bd_mark_at(&b, "ignored", 5); /* not started */
    assert_int_equal(b.n, 0);
    lm_bd_start(&b, 1000);
    lm_bd_mark_at(&b, "stop", 1100);
    lm_bd_mark_at(&b, "sync", 1300);
    lm_bd_mark_at(&b, "sync", 1350);
    lm_bd_mark_at(&b, "send", 2000);
    assert_int_equal(b.n, 3);
    assert_int_equal(b.part[1].ns, 250);
    assert_int_equal(lm_bd_total(&b), 1000);
    /* More parts than slots: the time still counts. */
    lm_bd_start(&b, 0);
    char name[16];
    for (int i = 0; i < LM_BD_MAX_PARTS + 10; i++) {
        snprintf(name, sizeof(name), "p%d", i);
        lm_bd_mark_at(&b, name, (uint64_t)(i + 1) * 10);
    }
    assert_int_equal(b.n, LM_BD_MAX_PARTS);
    assert_int_equal(lm_bd_total(&b), (LM_BD_MAX_PARTS + 10) * 10);
}

/* The joined parts tile [t0, t5] exactly, whatever the destination says. */
static void test_join_tiles(void **state)
{
    (void)state;
    lm_bd src, dst, out;
    lm_bd_start(&src, 0);
    lm_bd_mark_at(&src, "stop", 100);
    lm_bd_mark_at(&src, "ram-tail", 400);
    lm_bd_mark_at(&src, "send", 500); /* t4 = 500 */
    lm_bd_start(&dst, 7000000);       /* another clock */
    lm_bd_mark_at(&dst, "dst:wait", 7000200);
    lm_bd_mark_at(&dst, "dst:ram-tail", 7000450);
    lm_bd_mark_at(&dst, "dst:wait", 7000460);
    lm_bd_mark_at(&dst, "dst:load:cpu", 7000500);
    lm_bd_mark_at(&dst, "dst:restart", 7000600);
    /* t5 = 800, latency 50: the destination's parts end at 750 and are cut
     * at 500: restart 100, load 40, wait 10 -> transfer, ram-tail 100. */
    lm_bd_join(&src, 500, 800, &dst, 50, &out);
    assert_int_equal(lm_bd_total(&out), 800);
    uint64_t got[6] = { 0 };
    const char *names[6] = { "dst:restart", "dst:load:cpu", "transfer", "dst:ram-tail",
                             "confirmation", "stop" };
    for (unsigned i = 0; i < out.n; i++) {
        for (int k = 0; k < 6; k++) {
            if (!strcmp(out.part[i].name, names[k])) {
                got[k] = out.part[i].ns;
            }
        }
    }
    assert_int_equal(got[0], 100);
    assert_int_equal(got[1], 40);
    assert_int_equal(got[2], 10);
    assert_int_equal(got[3], 100);
    assert_int_equal(got[4], 50);
    assert_int_equal(got[5], 100);
    /* The bytes-dependent parts are not fixed cost. */
    assert_int_equal(lm_bd_fixed_ns(&out), 800 - 300 - 10 - 100);
    /* A destination that claims more than the wait, or nothing at all. */
    dst.part[0].ns = 1000000;
    lm_bd_join(&src, 500, 800, &dst, 10000, &out);
    assert_int_equal(lm_bd_total(&out), 800);
    lm_bd_join(&src, 500, 800, NULL, 0, &out);
    assert_int_equal(lm_bd_total(&out), 800);
}

/* The wire form round-trips; malformed bodies are refused. */
static void test_wire(void **state)
{
    (void)state;
    lm_bd b, d;
    lm_bd_start(&b, 0);
    lm_bd_mark_at(&b, "dst:wait", 10);
    lm_bd_mark_at(&b, "dst:load:a-device-with-a-rather-long-name-that-is-cut", 30);
    uint8_t buf[LM_BD_WIRE_MAX];
    size_t len = lm_bd_encode(&b, buf, sizeof(buf));
    lm_error err = LM_ERROR_INIT;
    assert_int_equal(lm_bd_decode(buf, len, &d, &err), 0);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.part[1].name, b.part[1].name);
    assert_int_equal(d.part[1].ns, 20);
    /* Cut short, trailing bytes, a zero-length name, too many parts. */
    assert_int_equal(lm_bd_decode(buf, len - 1, &d, &err), -EBADMSG);
    assert_int_equal(lm_bd_decode(buf, 1, &d, &err), -EBADMSG);
    uint8_t more[LM_BD_WIRE_MAX + 1];
    memcpy(more, buf, len);
    more[len] = 0;
    assert_int_equal(lm_bd_decode(more, len + 1, &d, &err), -EBADMSG);
    uint8_t zero[] = { 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1 };
    assert_int_equal(lm_bd_decode(zero, sizeof(zero), &d, &err), -EBADMSG);
    uint8_t many[] = { 0xff, 0xff };
    assert_int_equal(lm_bd_decode(many, sizeof(many), &d, &err), -EBADMSG);
    /* Unprintable bytes in a name never reach JSON or a terminal. */
    uint8_t odd[] = { 0, 1, 2, 'a', 0x1b, 0, 0, 0, 0, 0, 0, 0, 7 };
    assert_int_equal(lm_bd_decode(odd, sizeof(odd), &d, &err), 0);
    assert_string_equal(d.part[0].name, "a?");
    assert_int_equal(d.part[0].ns, 7);
}

/* A joined breakdown with the given stop, sync, another fixed part, a RAM
 * tail and a confirmation (ns). */
static void switchover_of(lm_bd *b, uint64_t stop, uint64_t sync, uint64_t rest, uint64_t tail,
                          uint64_t conf)
{
    uint64_t t = 0;
    lm_bd_start(b, t);
    lm_bd_mark_at(b, "stop", t += stop);
    lm_bd_mark_at(b, "sync", t += sync);
    lm_bd_mark_at(b, "ram-tail", t += tail);
    lm_bd_mark_at(b, "dst:restart", t += rest);
    lm_bd_mark_at(b, "confirmation", t += conf);
}

/* The fixed part: measured parts come from now, learned ones from the
 * switchovers so far, each part on its own; one descheduled switchover
 * does not move it, a missing part is no 0. */
static void test_fixed_estimate(void **state)
{
    (void)state;
    lm_bd_learned l;
    memset(&l, 0, sizeof(l));
    lm_bd_fixed f;
    lm_bd_probe p = { .sync_ns = 300, .rtt_ns = 50 };
    /* Nothing learned: the probes, never 0 (stop, rest and tail: the
     * round trip; sync: the pass's). */
    assert_int_equal(lm_bd_fixed_estimate(&l, &p, &f), 50 + 300 + 50 + 50 + 50);
    assert_int_equal(f.learned, 0);
    assert_int_equal(f.stop_ns, 50);
    assert_int_equal(f.rest_ns, 50);
    assert_int_equal(f.tail_ns, 50);
    /* No round trip measured (no return path): the sync alone. */
    lm_bd_probe no_rtt = { .sync_ns = 300 };
    assert_int_equal(lm_bd_fixed_estimate(&l, &no_rtt, NULL), 300);

    /* The first switchover was descheduled in its stop (80 ms) and its
     * tail (30 ms for 1000 bytes predicted at 1 MB/s): one sample counts up to
     * LM_BD_OUTLIER times its probe (at least 1 us). */
    lm_bd b;
    switchover_of(&b, 80000000, 900, 5000, 30000000, 40);
    lm_bd_learn(&l, &b, &(lm_bd_tail){ .bytes = 1000, .runs = 1, .bw = 1000000, .run_bw = 1000000 });
    lm_bd_fixed_estimate(&l, &p, &f);
    assert_int_equal(f.learned, 4);
    assert_int_equal(f.stop_ns, LM_BD_OUTLIER * 1000);
    assert_int_equal(f.sync_ns, 900);
    assert_int_equal(f.rest_ns, 5000);
    assert_int_equal(f.tail_ns, LM_BD_OUTLIER * 1000);

    /* A switchover without the destination's parts (postcopy: no
     * confirmation) teaches the stop and the sync only: the rest and the
     * tail keep their one sample, not a 0. */
    lm_bd pc;
    uint64_t t = 0;
    lm_bd_start(&pc, t);
    lm_bd_mark_at(&pc, "stop", t += 100);
    lm_bd_mark_at(&pc, "sync", t += 700);
    lm_bd_mark_at(&pc, "discard", t += 10);
    lm_bd_learn(&l, &pc, &(lm_bd_tail){ .bytes = 0, .runs = 0, .bw = 0, .run_bw = 0 });
    lm_bd_fixed_estimate(&l, &p, &f);
    assert_int_equal(f.stop_ns, 100); /* the smaller of two */
    assert_int_equal(f.sync_ns, 700);
    assert_int_equal(f.rest_ns, 5000);
    assert_int_equal(f.tail_ns, LM_BD_OUTLIER * 1000);

    /* Calm ones: 1.2 ms for 1000 bytes at 1 MB/s leaves 200 us of tail. */
    switchover_of(&b, 120, 800, 9000, 1200000, 30);
    lm_bd_learn(&l, &b, &(lm_bd_tail){ .bytes = 1000, .runs = 1, .bw = 1000000, .run_bw = 1000000 });
    lm_bd_fixed_estimate(&l, &p, &f);
    assert_int_equal(f.stop_ns, 120);        /* median of {80 ms, 100, 120} */
    assert_int_equal(f.sync_ns, 800);        /* median of {900, 700, 800} */
    assert_int_equal(f.rest_ns, 5000);       /* the smaller of {5000, 9000} */
    assert_int_equal(f.tail_ns, 200000);     /* the smaller of {29 ms, 200 us} */
    /* A tail faster than its rate leaves nothing beyond its bytes. */
    switchover_of(&b, 120, 800, 9000, 500000, 30);
    lm_bd_learn(&l, &b, &(lm_bd_tail){ .bytes = 1000, .runs = 1, .bw = 1000000, .run_bw = 1000000 });
    lm_bd_fixed_estimate(&l, &p, &f);
    assert_int_equal(f.tail_ns, 200000);     /* median of {29 ms, 200 us, 0} */
    assert_int_equal(f.rest_ns, 9000);       /* median of {5000, 9000, 9000} */
    /* Only the last LM_BD_SAMPLES count: eight slow ones replace them. */
    for (int i = 0; i < LM_BD_SAMPLES; i++) {
        switchover_of(&b, 5000, 700, 7000, 7000, 30);
        lm_bd_learn(&l, &b, &(lm_bd_tail){ .bytes = 0, .runs = 0, .bw = 1000000000, .run_bw = 1000000000 });
    }
    lm_bd_fixed_estimate(&l, &p, &f);
    assert_int_equal(f.stop_ns, 5000);
    assert_int_equal(f.rest_ns, 7000);
    assert_int_equal(f.tail_ns, 7000);
    assert_int_equal(lm_bd_fixed_estimate(&l, &p, NULL), 5000 + 700 + 50 + 7000 + 7000);
    assert_int_equal(lm_bd_run_ns(&l, 50000), 0);
    assert_false(lm_bd_run_learned(&l));

    /* A tail of LM_BD_RUN_MIN runs or more teaches the cost per run (the
     * wall time of its "ram-tail", "transfer" and "dst:ram-tail" beyond
     * its bytes at the destination's load rate, per run), not the tail's
     * own cost: one sample as it is, two by the smaller, then the median. */
    unsigned tails = l.tail.n;
    lm_bd_tail scattered = { .bytes = 4000000, .runs = 1000, .bw = 100000000,
                             .run_bw = 1000000000, .rtt_ns = 50 };
    switchover_of(&b, 100, 700, 9000, 24000000, 30); /* 4 MB at 1 GB/s + 1000 x 20 us */
    lm_bd_learn(&l, &b, &scattered);
    assert_int_equal(l.tail.n, tails);
    assert_true(lm_bd_run_learned(&l));
    assert_int_equal(lm_bd_run_ns(&l, 50000), 20000);
    /* One sample counts up to LM_BD_OUTLIER times the round trip now. */
    assert_int_equal(lm_bd_run_ns(&l, 1000), LM_BD_OUTLIER * 1000);
    assert_int_equal(lm_bd_run_ns(&l, 0), LM_BD_OUTLIER * 1000);
    switchover_of(&b, 100, 700, 9000, 64000000, 30); /* 60 us a run */
    lm_bd_learn(&l, &b, &scattered);
    assert_int_equal(lm_bd_run_ns(&l, 50000), 20000);
    switchover_of(&b, 100, 700, 9000, 14000000, 30); /* 10 us a run */
    lm_bd_learn(&l, &b, &scattered);
    assert_int_equal(lm_bd_run_ns(&l, 50000), 20000); /* median of {20, 60, 10} us */
    /* Quicker than its bytes alone: 0 a run, not a wrap-around. */
    switchover_of(&b, 100, 700, 9000, 1000000, 30);
    lm_bd_learn(&l, &b, &scattered);
    assert_int_equal(l.run.v[3], 0);
    /* A switchover whose stop or rest waited for a CPU (over LM_BD_CALM
     * times what they typically take, and over the floor) is not calm: its
     * tail's 900 ms teach no cost per run, whatever it was. */
    unsigned runs = l.run.n;
    uint64_t slow = LM_BD_CALM * LM_BD_CALM_FLOOR_NS + 1;
    assert_false(lm_bd_calm(&l, slow, 9000, 50));
    assert_false(lm_bd_calm(&l, 100, slow, 50));
    assert_true(lm_bd_calm(&l, LM_BD_CALM_FLOOR_NS, LM_BD_CALM_FLOOR_NS, 50));
    switchover_of(&b, slow, 700, 9000, 900000000, 30);
    lm_bd_learn(&l, &b, &scattered);
    switchover_of(&b, 100, 700, slow, 900000000, 30);
    lm_bd_learn(&l, &b, &scattered);
    assert_int_equal(l.run.n, runs);
    assert_int_equal(lm_bd_run_ns(&l, 50000), 15000); /* median of {20, 60, 10, 0} us */
    /* A tail of a few runs then teaches the tail's own cost beyond what
     * its estimate priced, as it priced it (by runs: its bytes at the
     * destination's 1 GB/s, not the pass's 100 MB/s, and its runs at the
     * learned cost): 7 ms - 1 ms - 4 x 15 us. */
    switchover_of(&b, 100, 700, 9000, 7000000, 30);
    lm_bd_learn(&l, &b, &(lm_bd_tail){ .bytes = 1000000, .runs = 4, .bw = 100000000,
                                       .run_bw = 1000000000, .by_runs = true });
    assert_int_equal(l.tail.n, tails + 1);
    assert_int_equal(l.tail.v[tails % LM_BD_SAMPLES],
                     7000000 - 1000000 - 4 * lm_bd_run_ns(&l, 50000));
}

/* The destination's BACKLOG carries its load rate (20 bytes); one without
 * it (12 bytes) reads as "rate unknown", any other length is refused. */
static void test_backlog_load_rate(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    lm_channel *w = lm_channel_new(sv[0], "destination", NULL);
    lm_channel *r = lm_channel_new(sv[1], "source", NULL);
    assert_non_null(w);
    assert_non_null(r);
    lm_error err = LM_ERROR_INIT;
    static lm_rp_msg m;
    assert_int_equal(lm_rp_send_backlog(w, 7, 4096, 123456789), 0);
    assert_int_equal(lm_rp_read_msg(r, &m, &err), 0);
    assert_int_equal(m.type, LM_RP_BACKLOG);
    assert_int_equal(m.status, 7);
    assert_int_equal(m.backlog, 4096);
    assert_int_equal(m.load_bw, 123456789);
    /* The older form: seq and backlog only. */
    lm_channel_put_be16(w, LM_RP_BACKLOG);
    lm_channel_put_be16(w, 12);
    lm_channel_put_be32(w, 8);
    lm_channel_put_be64(w, 1);
    assert_int_equal(lm_channel_flush(w), 0);
    m.load_bw = 99;
    assert_int_equal(lm_rp_read_msg(r, &m, &err), 0);
    assert_int_equal(m.status, 8);
    assert_int_equal(m.backlog, 1);
    assert_int_equal(m.load_bw, 0);
    /* A length that is neither. */
    lm_channel_put_be16(w, LM_RP_BACKLOG);
    lm_channel_put_be16(w, 16);
    assert_int_equal(lm_channel_flush(w), 0);
    assert_int_equal(lm_rp_read_msg(r, &m, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "BACKLOG of 16 bytes"));
    lm_channel_close(w, NULL);
    lm_channel_close(r, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lift_wakes_writer),
        cmocka_unit_test(test_marks_tile),
        cmocka_unit_test(test_join_tiles),
        cmocka_unit_test(test_wire),
        cmocka_unit_test(test_fixed_estimate),
        cmocka_unit_test(test_backlog_load_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
