/*
 * livemig-vm: the reference machine.
 *
 * main() parses the command line, builds the machine, and then only waits:
 * for SIGINT/SIGTERM/SIGHUP (read from a signalfd, the signals being
 * blocked in every thread) or for QMP quit (an eventfd).  Then it tears the
 * machine down in order: vCPUs, QMP server (unlinks the socket), engine,
 * memory.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "machine.h"

int main(int argc, char **argv)
{
    vm_options opts;
    lm_error err = LM_ERROR_INIT;
    vm *m = NULL;
    sigset_t sigs;

    int ret = vm_options_parse(&opts, argc, argv, &err);
    if (ret == 1) {
        return 0;
    }
    if (ret < 0) {
        fprintf(stderr, "livemig-vm: %s\n", err.msg);
        return 1;
    }

    /* Block the exit signals before any thread exists, so every thread
     * inherits the mask and only the signalfd sees them. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
    if (sfd < 0) {
        fprintf(stderr, "livemig-vm: signalfd: %s\n", strerror(errno));
        return 1;
    }

    if (vm_new(&opts, &m, &err) < 0 || vm_launch(m, &err) < 0) {
        fprintf(stderr, "livemig-vm: %s\n", err.msg[0] ? err.msg : "cannot start the machine");
        vm_free(m);
        close(sfd);
        return 1;
    }
    char size[32];
    if (opts.ram.size % (1ull << 30) == 0) {
        snprintf(size, sizeof(size), "%" PRIu64 " GiB", opts.ram.size >> 30);
    } else if (opts.ram.size % (1ull << 20) == 0) {
        snprintf(size, sizeof(size), "%" PRIu64 " MiB", opts.ram.size >> 20);
    } else {
        snprintf(size, sizeof(size), "%" PRIu64 " KiB", opts.ram.size >> 10);
    }
    fprintf(stderr, "livemig-vm: '%s' %s (%s, %u block%s), %u vCPU%s, %s %s%s%s%s\n",
            opts.name, size, guest_ram_backend_name(opts.ram.backend),
            opts.ram.nblocks, opts.ram.nblocks == 1 ? "" : "s", opts.smp, opts.smp == 1 ? "" : "s",
            opts.machine == VM_MACHINE_RISCV_VIRT ? "machine" : "workload",
            opts.machine == VM_MACHINE_RISCV_VIRT ? "riscv-virt" : workload_kind_name(opts.workload.kind),
            opts.incoming ? ", incoming " : "", opts.incoming ? opts.incoming : "",
            opts.paused ? ", paused" : "");

    const char *reason = NULL;
    while (!reason) {
        struct pollfd pfd[2] = {
            { .fd = sfd, .events = POLLIN },
            { .fd = vm_quit_fd(m), .events = POLLIN },
        };
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            fprintf(stderr, "livemig-vm: poll: %s\n", strerror(errno));
            break;
        }
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                reason = "host-signal";
            }
        }
        if (pfd[1].revents & POLLIN) {
            reason = __atomic_load_n(&m->quit_reason, __ATOMIC_RELAXED);
            if (!reason) {
                reason = "host-qmp-quit";
            }
        }
    }
    bool by_guest = reason && strncmp(reason, "guest-", 6) == 0;
    vm_emit(m, "SHUTDOWN", json_pack("{s:b, s:s}", "guest", by_guest, "reason",
                                     reason ? reason : "host-error"));
    int code = by_guest ? __atomic_load_n(&m->exit_code, __ATOMIC_RELAXED) : 0;
    vm_free(m);
    close(sfd);
    if (reason && strcmp(reason, VM_QUIT_INCOMING_FAILED) == 0) {
        code = 1;
    }
    return code;
}
