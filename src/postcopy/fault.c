#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "common/util.h"
#include "postcopy/fault.h"

/* A fault on a received page: one received as zero and never populated
 * (a zero page of private memory received before LISTEN, or one of shared
 * memory left as a hole) gets a zero page; one placed just now is found
 * present, and its vCPU only woken. */
static void place_received(lm_pc_dst *d, uint32_t wi, lm_ram_block *b, uint64_t page)
{
    lm_error err = LM_ERROR_INIT;
    if (lm_pc_uffd_place(d, wi, lm_ram_block_page(b, page), NULL, b->page_size, &err) < 0) {
        lm_warn("%s", err.msg);
    }
    lm_pc_blocktime_end(d, wi, page, 1);
}

static void handle_fault(lm_pc_dst *d, uint64_t addr, int tid)
{
    uint32_t wi;
    lm_ram_block *b = NULL;
    for (wi = 0; wi < d->nblocks; wi++) {
        lm_ram_block *c = d->blocks[wi];
        if (addr >= (uintptr_t)c->host && addr - (uintptr_t)c->host < c->size) {
            b = c;
            break;
        }
    }
    if (!b) {
        lm_warn("postcopy: fault at 0x%llx outside guest RAM", (unsigned long long)addr);
        return;
    }
    uint64_t page = (addr - (uintptr_t)b->host) >> b->page_shift;
    lm_pc_trace_mark(d->trace, LM_PCT_FAULT, '-', wi, page);
    uint64_t hp = lm_pc_hp_pages(b);
    uint64_t hp_first = page & ~(hp - 1);
    lm_pc_blocktime_begin(d, tid, wi, page);
    if (lm_pc_test(b->received, page)) {
        place_received(d, wi, b, page);
        return;
    }
    /* This page goes in as soon as it arrives, even when the rest of its
     * THP host page is still on its way. */
    if (lm_pc_set_range(d->waiting[wi], page, 1) && lm_pc_pause_for(b)) {
        __atomic_add_fetch(&d->nwaiting, 1, __ATOMIC_ACQ_REL);
    }
    /* Pairs with leave_zero_run's barrier: mark `waiting`, then read
     * `received`. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (lm_pc_test(b->received, page)) {
        /* Received between the test above and the mark: placed (its
         * placer may have cleared the bit before it was set, and no one
         * else would), or a zero page left as a hole, which no one would
         * place; placing it here wakes this vCPU either way. */
        if (lm_pc_clear_range(d->waiting[wi], page, 1) && lm_pc_pause_for(b)) {
            lm_pc_waiting_done(d, 1);
        }
        place_received(d, wi, b, page);
        return;
    }
    if (lm_pc_test(d->requested[wi], hp_first)) {
        return; /* asked already: the answer wakes this vCPU too */
    }
    lm_pc_set_range(d->requested[wi], hp_first, hp);
    /* The faulting page alone: the source sends its whole host page, that
     * page first. */
    lm_pc_send_request(d, wi, page, 1);
    lm_pc_trace_mark(d->trace, LM_PCT_REQ, '-', wi, page);
    /* Placed between the test above and now: nothing is lost (the copy
     * woke the vCPU), but the blocktime entry must end. */
    if (lm_pc_test(b->received, page)) {
        lm_pc_blocktime_end(d, wi, page, 1);
    }
}

static void *fault_thread_fn(void *arg)
{
    lm_pc_dst *d = arg;
    struct uffd_msg msgs[16];
    lm_pc_urgent_thread("fault");
    for (;;) {
        struct pollfd p[2] = { { d->uffd, POLLIN, 0 }, { d->wake_fd, POLLIN, 0 } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            lm_warn("postcopy fault thread: poll failed: %s", strerror(errno));
            break;
        }
        if (p[1].revents) {
            break;
        }
        ssize_t n = read(d->uffd, msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                continue;
            }
            lm_warn("postcopy fault thread: read failed: %s", strerror(errno));
            break;
        }
        for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
                handle_fault(d, msgs[i].arg.pagefault.address, (int)msgs[i].arg.pagefault.feat.ptid);
            }
        }
    }
    return NULL;
}

int lm_pc_fault_start(lm_pc_dst *d, lm_error *err)
{
    d->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->wake_fd < 0) {
        return lm_error_set_errno(err, -errno, "eventfd");
    }
    int rc = pthread_create(&d->fault_thread, NULL, fault_thread_fn, d);
    if (rc) {
        return lm_error_set(err, -rc, "cannot create the postcopy fault thread");
    }
    d->fault_running = true;
    return 0;
}

void lm_pc_fault_stop(lm_pc_dst *d)
{
    if (d->fault_running) {
        uint64_t one = 1;
        ssize_t r = write(d->wake_fd, &one, sizeof(one));
        (void)r;
        pthread_join(d->fault_thread, NULL);
        d->fault_running = false;
    }
    if (d->wake_fd >= 0) {
        close(d->wake_fd);
        d->wake_fd = -1;
    }
}
