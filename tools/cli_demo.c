/*
 * livemig demo: start two livemig-vm machines, migrate the running one live
 * to the other, prove the guest's memory arrived intact and that the guest
 * carries on on the destination, and clean everything up.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "orchestrate.h"
#include "qmp_client.h"

#define VM_START_TIMEOUT_MS 60000
#define VM_QUIT_TIMEOUT_MS 5000
#define CONSOLE_LINES 4

typedef struct demo_opts {
    const char *memory;
    const char *workload;
    const char *smp;
    const char *dirty_rate;
    const char **caps;
    size_t ncaps;
    const char **params;
    size_t nparams;
    double timeout_s;
    bool keep;
} demo_opts;

typedef struct vm_proc {
    const char *role;        /* "source" / "destination" */
    pid_t pid;
    char qmp[PATH_MAX];
    char serial[PATH_MAX];
    char log[PATH_MAX];
} vm_proc;

static void usage(FILE *f)
{
    fprintf(f,
"Usage: livemig demo [options]\n"
"\n"
"Start two livemig-vm machines in a temp dir, migrate the running one live to\n"
"the other with a progress bar, verify the destination's memory, and show the\n"
"guest's console carrying on on the destination.  Everything is cleaned up on\n"
"exit, also on failure and ^C.\n"
"\n"
"Options:\n"
"  --memory SIZE        guest RAM (default 1G; K/M/G suffixes)\n"
"  --smp N              vCPUs (default 2)\n"
"  --workload KIND      increment | random | idle (default random)\n"
"  --dirty-rate RATE    bytes/s the guest dirties, K/M/G (default 64M)\n"
"  --cap NAME[=on|off]  migration capability on both sides (repeatable)\n"
"  --param NAME=VALUE   migration parameter on the source (repeatable)\n"
"  --timeout SEC        cancel the migration after SEC seconds (default 300)\n"
"  --keep               keep the temp dir (logs, consoles) for inspection\n"
"  -h, --help           this help\n"
"\n"
"The livemig-vm binary is $LIVEMIG_VM, or the one next to this executable.\n"
"Exit status: 0 only when the migration completed and verification passed.\n");
}

/* ------------------------------------------------------------------------ */
/* livemig-vm processes */

static int find_vm_binary(char *out, size_t len)
{
    const char *env = getenv("LIVEMIG_VM");
    if (env && *env) {
        if (access(env, X_OK) != 0) {
            cli_errorf("demo: $LIVEMIG_VM '%s' is not executable", env);
            return -ENOENT;
        }
        snprintf(out, len, "%s", env);
        return 0;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        char *dir = dirname(self);
        static const char *const rel[] = { "livemig-vm", "src/vm/livemig-vm", "../livemig-vm", NULL };
        for (int i = 0; rel[i]; i++) {
            snprintf(out, len, "%s/%s", dir, rel[i]);
            if (access(out, X_OK) == 0) {
                return 0;
            }
        }
    }
    cli_errorf("demo: cannot find livemig-vm next to the livemig executable; set $LIVEMIG_VM");
    return -ENOENT;
}

static int spawn_vm(const char *bin, const demo_opts *o, vm_proc *vm, bool incoming)
{
    char serial_arg[PATH_MAX + 8];
    snprintf(serial_arg, sizeof(serial_arg), "file:%s", vm->serial);
    const char *argv[32];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--name";
    argv[n++] = incoming ? "dst" : "src";
    argv[n++] = "--memory";
    argv[n++] = o->memory;
    argv[n++] = "--smp";
    argv[n++] = o->smp;
    argv[n++] = "--workload";
    argv[n++] = o->workload;
    argv[n++] = "--dirty-rate";
    argv[n++] = o->dirty_rate;
    argv[n++] = "--qmp";
    argv[n++] = vm->qmp;
    argv[n++] = "--serial";
    argv[n++] = serial_arg;
    if (incoming) {
        argv[n++] = "--incoming";
        argv[n++] = "defer";
    }
    argv[n] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        cli_errorf("demo: fork: %s", strerror(errno));
        return -errno;
    }
    if (pid == 0) {
        /* Our own process group: the terminal's ^C reaches only the demo,
         * which then shuts the machines down in order.  If the demo dies
         * without cleaning up, the machines die with it. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(127);
        }
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        int fd = open(vm->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (nul >= 0) {
            dup2(nul, 0);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    vm->pid = pid;
    return 0;
}

static void print_log_tail(const vm_proc *vm)
{
    struct stat st;
    if (stat(vm->log, &st) != 0 || st.st_size == 0) {
        return;
    }
    FILE *f = fopen(vm->log, "r");
    if (!f) {
        return;
    }
    char line[512];
    fprintf(stderr, "--- %s's output (%s) ---\n", vm->role, vm->log);
    int n = 0;
    while (fgets(line, sizeof(line), f) && n++ < 40) {
        fputs(line, stderr);
    }
    fclose(f);
}

/* Wait until the machine's QMP socket answers; notice an early death. */
static int wait_vm_ready(vm_proc *vm)
{
    int64_t deadline = cli_now_ms() + VM_START_TIMEOUT_MS;
    for (;;) {
        int status;
        pid_t w = waitpid(vm->pid, &status, WNOHANG);
        if (w == vm->pid) {
            vm->pid = 0;
            if (WIFEXITED(status)) {
                cli_errorf("demo: the %s livemig-vm exited with status %d", vm->role,
                           WEXITSTATUS(status));
            } else {
                cli_errorf("demo: the %s livemig-vm was killed by signal %d", vm->role,
                           WTERMSIG(status));
            }
            print_log_tail(vm);
            return -ECHILD;
        }
        qmpc *c = NULL;
        lm_error err = LM_ERROR_INIT;
        if (access(vm->qmp, F_OK) == 0 && qmpc_connect(vm->qmp, 2000, &c, &err) == 0) {
            qmpc_close(c);
            return 0;
        }
        if (cli_interrupted) {
            return -EINTR;
        }
        if (cli_now_ms() > deadline) {
            cli_errorf("demo: the %s livemig-vm did not open %s within %d s", vm->role, vm->qmp,
                       VM_START_TIMEOUT_MS / 1000);
            print_log_tail(vm);
            return -ETIMEDOUT;
        }
        cli_sleep_ms(50);
    }
}

/* quit over QMP, then SIGTERM, then SIGKILL. */
static void stop_vm(vm_proc *vm)
{
    if (vm->pid <= 0) {
        return;
    }
    qmpc *c = NULL;
    lm_error err = LM_ERROR_INIT;
    qmpc_set_abort_flag(NULL); /* shut down even after ^C */
    if (qmpc_connect(vm->qmp, 1000, &c, &err) == 0) {
        qmpc_execute(c, "quit", NULL, 1000, NULL, &err);
        qmpc_close(c);
    }
    int sig = SIGTERM;
    int64_t deadline = cli_now_ms() + VM_QUIT_TIMEOUT_MS;
    for (;;) {
        int status;
        pid_t w = waitpid(vm->pid, &status, WNOHANG);
        if (w == vm->pid || (w < 0 && errno == ECHILD)) {
            break;
        }
        if (cli_now_ms() > deadline) {
            kill(vm->pid, sig);
            if (sig == SIGKILL) {
                waitpid(vm->pid, &status, 0);
                break;
            }
            fprintf(stderr, "livemig: the %s livemig-vm did not quit, sending SIGTERM\n",
                    vm->role);
            sig = SIGKILL;
            deadline = cli_now_ms() + 2000;
        }
        cli_sleep_ms(20);
    }
    vm->pid = 0;
}

/* ------------------------------------------------------------------------ */
/* The guest's console */

/* Print the last `max` complete lines of path from byte `from` on. */
static long show_console(const char *title, const char *path, long from, int max)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("%s: (no console output)\n", title);
        return from;
    }
    if (from > 0) {
        fseek(f, from, SEEK_SET);
    }
    char lines[CONSOLE_LINES * 2][256];
    int count = 0;
    char buf[256];
    while (fgets(buf, sizeof(buf), f)) {
        if (!strchr(buf, '\n')) {
            continue; /* partial line being written, or too long */
        }
        snprintf(lines[count % (CONSOLE_LINES * 2)], sizeof(lines[0]), "%s", buf);
        count++;
    }
    long end = ftell(f);
    fclose(f);
    printf("%s:\n", title);
    if (count == 0) {
        printf("    (no new lines)\n");
    }
    int first = count > max ? count - max : 0;
    for (int i = first; i < count; i++) {
        printf("    %s", lines[i % (CONSOLE_LINES * 2)]);
    }
    fflush(stdout);
    return end;
}

/* Sum of every "steps" member in a x-query-workload reply (the whole
 * machine, whether it reports totals or per-vCPU blocks). */
static uint64_t sum_steps(json_t *v)
{
    uint64_t sum = 0;
    if (json_is_object(v)) {
        json_t *s = json_object_get(v, "steps");
        if (json_is_integer(s)) {
            return (uint64_t)json_integer_value(s);
        }
        const char *k;
        json_t *child;
        json_object_foreach(v, k, child) {
            sum += sum_steps(child);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) {
            sum += sum_steps(child);
        }
    }
    return sum;
}

static int query_steps(const char *sock, uint64_t *steps, lm_error *err)
{
    qmpc *c = NULL;
    json_t *ret = NULL;
    int r = qmpc_connect(sock, 5000, &c, err);
    if (r == 0) {
        r = qmpc_execute(c, "x-query-workload", NULL, QMPC_DEFAULT_TIMEOUT_MS, &ret, err);
    }
    if (r == 0) {
        *steps = sum_steps(ret);
        json_decref(ret);
    }
    qmpc_close(c);
    return r;
}

static const char *query_run_state(const char *sock, char *buf, size_t len)
{
    qmpc *c = NULL;
    json_t *ret = NULL;
    lm_error err = LM_ERROR_INIT;
    snprintf(buf, len, "unknown");
    if (qmpc_connect(sock, 5000, &c, &err) == 0 &&
        qmpc_execute(c, "query-status", NULL, QMPC_DEFAULT_TIMEOUT_MS, &ret, &err) == 0) {
        snprintf(buf, len, "%s", cli_json_str(ret, "status"));
    }
    json_decref(ret);
    qmpc_close(c);
    return buf;
}

/* ------------------------------------------------------------------------ */

static int run_demo(const demo_opts *o, const char *dir, vm_proc *src, vm_proc *dst)
{
    char bin[PATH_MAX];
    if (find_vm_binary(bin, sizeof(bin)) < 0) {
        return CLI_EXIT_FAIL;
    }
    printf("livemig demo: %s guest RAM, %s vCPUs, %s workload at %s/s dirty rate\n", o->memory,
           o->smp, o->workload, o->dirty_rate);
    printf("  machines:  %s\n  work dir:  %s\n", bin, dir);
    fflush(stdout);

    if (spawn_vm(bin, o, src, false) < 0 || spawn_vm(bin, o, dst, true) < 0) {
        return CLI_EXIT_FAIL;
    }
    if (wait_vm_ready(src) < 0 || wait_vm_ready(dst) < 0) {
        return CLI_EXIT_FAIL;
    }
    printf("  source:      pid %d, QMP %s\n", (int)src->pid, src->qmp);
    printf("  destination: pid %d, QMP %s (--incoming defer)\n\n", (int)dst->pid, dst->qmp);
    fflush(stdout);

    /* Let the guest print a line or two first. */
    for (int i = 0; i < 25 && !cli_interrupted; i++) {
        cli_sleep_ms(100);
    }
    if (cli_interrupted) {
        return CLI_EXIT_FAIL;
    }
    show_console("Guest console on the source", src->serial, 0, CONSOLE_LINES);
    printf("\nMigrating live: source -> destination\n");
    fflush(stdout);

    mig_opts mo = {
        .src = src->qmp, .dst = dst->qmp,
        .caps = o->caps, .ncaps = o->ncaps,
        .params = o->params, .nparams = o->nparams,
        .timeout_s = o->timeout_s, .verify = true,
    };
    mig_result res;
    lm_error err = LM_ERROR_INIT;
    int r = mig_run(&mo, &res, &err);
    printf("\n");
    if (res.status[0]) {
        mig_print_summary(&res, stdout);
        fflush(stdout);
    }
    if (r < 0) {
        cli_errorf("demo: %s", err.msg);
        return CLI_EXIT_FAIL;
    }

    /* The guest carries on on the destination. */
    uint64_t steps0 = 0, steps1 = 0;
    lm_error werr = LM_ERROR_INIT;
    int wr = query_steps(dst->qmp, &steps0, &werr);
    long dst_off = 0;
    printf("\n");
    for (int i = 0; i < 20 && !cli_interrupted; i++) {
        cli_sleep_ms(100);
    }
    show_console("Guest console on the destination (2 s after the switchover)", dst->serial,
                 dst_off, CONSOLE_LINES);
    if (wr == 0) {
        wr = query_steps(dst->qmp, &steps1, &werr);
    }
    char state[32];
    query_run_state(dst->qmp, state, sizeof(state));
    bool progressed = false;
    if (wr < 0) {
        printf("\nGuest on the destination: %s; x-query-workload failed: %s\n", state, werr.msg);
    } else {
        progressed = steps1 > steps0 || strcmp(o->workload, "idle") == 0;
        printf("\nGuest on the destination: %s; workload steps %llu -> %llu (%s)\n", state,
               (unsigned long long)steps0, (unsigned long long)steps1,
               steps1 > steps0 ? "running" : "NOT PROGRESSING");
    }

    bool ok = res.verify_ran && res.verify_ok && (progressed || wr < 0);
    printf("\nResult: %s\n", ok ? "PASS - memory verified on the destination"
                                : !res.verify_ran ? "FAIL - verification did not run"
                                : !res.verify_ok ? "FAIL - destination memory differs"
                                                 : "FAIL - the guest is not running on the destination");
    fflush(stdout);
    return ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

int cli_demo(int argc, char **argv)
{
    enum { OPT_MEMORY = 256, OPT_WORKLOAD, OPT_SMP, OPT_DIRTY_RATE, OPT_CAP, OPT_PARAM,
           OPT_TIMEOUT, OPT_KEEP };
    static const struct option longopts[] = {
        { "memory", required_argument, NULL, OPT_MEMORY },
        { "workload", required_argument, NULL, OPT_WORKLOAD },
        { "smp", required_argument, NULL, OPT_SMP },
        { "dirty-rate", required_argument, NULL, OPT_DIRTY_RATE },
        { "cap", required_argument, NULL, OPT_CAP },
        { "param", required_argument, NULL, OPT_PARAM },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "keep", no_argument, NULL, OPT_KEEP },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    demo_opts o = {
        .memory = "1G", .workload = "random", .smp = "2", .dirty_rate = "64M",
        .timeout_s = 300,
    };
    const char **caps = calloc((size_t)argc + 1, sizeof(*caps));
    const char **params = calloc((size_t)argc + 1, sizeof(*params));
    int ret = CLI_EXIT_USAGE;
    int c;
    uint64_t tmp;

    if (!caps || !params) {
        goto out;
    }
    o.caps = caps;
    o.params = params;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_MEMORY:
            if (cli_parse_size(optarg, &tmp) < 0 || tmp == 0) {
                cli_errorf("demo: bad --memory '%s'", optarg);
                goto out;
            }
            o.memory = optarg;
            break;
        case OPT_WORKLOAD:
            if (strcmp(optarg, "increment") && strcmp(optarg, "random") && strcmp(optarg, "idle")) {
                cli_errorf("demo: --workload must be increment, random or idle");
                goto out;
            }
            o.workload = optarg;
            break;
        case OPT_SMP: {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 1024) {
                cli_errorf("demo: bad --smp '%s'", optarg);
                goto out;
            }
            o.smp = optarg;
            break;
        }
        case OPT_DIRTY_RATE:
            if (cli_parse_size(optarg, &tmp) < 0) {
                cli_errorf("demo: bad --dirty-rate '%s' (bytes/s, K/M/G)", optarg);
                goto out;
            }
            o.dirty_rate = optarg;
            break;
        case OPT_CAP: caps[o.ncaps++] = optarg; break;
        case OPT_PARAM: params[o.nparams++] = optarg; break;
        case OPT_TIMEOUT:
            if (cli_parse_seconds(optarg, &o.timeout_s) < 0) {
                cli_errorf("demo: bad --timeout '%s'", optarg);
                goto out;
            }
            break;
        case OPT_KEEP: o.keep = true; break;
        case 'h':
            usage(stdout);
            ret = CLI_EXIT_OK;
            goto out;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc) {
        cli_errorf("demo: unexpected argument '%s'", argv[optind]);
        goto out;
    }

    cli_install_signals();
    qmpc_set_abort_flag(&cli_interrupted);
    char dir[] = "/tmp/livemig-demo-XXXXXX";
    if (!mkdtemp(dir)) {
        cli_errorf("demo: mkdtemp: %s", strerror(errno));
        ret = CLI_EXIT_FAIL;
        goto out;
    }
    vm_proc src = { .role = "source" }, dst = { .role = "destination" };
    snprintf(src.qmp, sizeof(src.qmp), "%s/src.qmp", dir);
    snprintf(dst.qmp, sizeof(dst.qmp), "%s/dst.qmp", dir);
    snprintf(src.serial, sizeof(src.serial), "%s/src-console.log", dir);
    snprintf(dst.serial, sizeof(dst.serial), "%s/dst-console.log", dir);
    snprintf(src.log, sizeof(src.log), "%s/src.log", dir);
    snprintf(dst.log, sizeof(dst.log), "%s/dst.log", dir);

    ret = run_demo(&o, dir, &src, &dst);
    if (cli_interrupted) {
        fprintf(stderr, "livemig: demo interrupted, cleaning up\n");
        ret = CLI_EXIT_FAIL;
    }
    if (ret != CLI_EXIT_OK && !cli_interrupted) {
        print_log_tail(&src);
        print_log_tail(&dst);
    }
    stop_vm(&src);
    stop_vm(&dst);
    if (o.keep) {
        printf("Kept %s\n", dir);
    } else {
        cli_rmtree(dir);
    }
out:
    free(caps);
    free(params);
    return ret;
}
