/*
 * Command-line parsing for livemig-vm.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"
#include "options.h"

#define DEFAULT_VRAM_RATE (1024 * 1024) /* 1 MiB/s: "modest" next to RAM */

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
"Usage: %s [OPTION]...\n"
"livemig's reference machine: guest RAM, vCPU threads running a workload,\n"
"small devices and a QMP socket, embedding liblivemig.\n"
"\n"
"Guest RAM:\n"
"  -m, --memory SIZE          guest RAM (default 512M; K/M/G/T suffixes)\n"
"      --blocks N             split RAM into N equal blocks ram0..ramN-1 (default 1)\n"
"      --memory-backend B     anon (default), memfd, hugetlbfs or file:PATH\n"
"      --thp                  postcopy places anon RAM in 2M huge pages\n"
"      --no-thp               no MADV_HUGEPAGE advice on anon RAM (given by default)\n"
"      --dirty-log            keep a dirty log the engine pulls at each sync (as KVM's)\n"
"\n"
"Guest:\n"
"      --smp N                vCPU threads (default 1)\n"
"      --workload W           increment (default), random or idle\n"
"      --dirty-rate BYTES/s   total dirtying rate, split among vCPUs (0 = unlimited)\n"
"      --vcpu-dirty-rate R0,R1,...  one rate per vCPU instead (0 = unlimited)\n"
"      --working-set PCT%%|SIZE random: the part of RAM written (default 100%%)\n"
"      --seed N               PRNG seed (default 1)\n"
"      --vram SIZE            add the iterative 'vram' device of SIZE bytes\n"
"      --vram-rate BYTES/s    how fast the running guest rewrites vram (default 1M)\n"
"\n"
"Machine:\n"
"      --incoming URI|defer   wait for an incoming migration\n"
"      --qmp unix:PATH        QMP control socket (a bare PATH works too)\n"
"      --qmp-mode MODE        its permissions, octal (default 0600: owner only)\n"
"  -S, --paused               do not start the guest until 'cont' (also after\n"
"                             an incoming migration completes)\n"
"      --name NAME            guest name (serial output, default 'vm')\n"
"      --uuid UUID            machine UUID, 8-4-4-4-12 hex\n"
"      --serial stdout|file:PATH|none   console output (default stdout)\n"
"      --object TYPE,id=ID,...|JSON     create an object as QMP object-add\n"
"                             does (tls-creds-x509, tls-creds-psk, authz-simple,\n"
"                             authz-list)\n"
"\n"
"RISC-V machine (--machine riscv-virt: QEMU's virt platform, RV64GC harts):\n"
"      --machine synthetic|riscv-virt   the machine (default synthetic)\n"
"      --bios FILE            M-mode firmware (default Debian's OpenSBI fw_dynamic.bin)\n"
"      --kernel FILE          next stage at 0x80200000 (U-Boot, a Linux Image)\n"
"      --initrd FILE          initial ramdisk\n"
"      --append STRING        kernel command line (/chosen/bootargs)\n"
"      --drive file=PATH      a virtio-blk disk on that image (both sides of a\n"
"                             migration open the same file)\n"
"      --device virtio-rng-device   a virtio-rng (entropy from the host)\n"
"      --serial unix:PATH     the console on a listening socket (also stdout,\n"
"                             file:PATH, none; stdout reads input from stdin)\n"
"  -h, --help                 this text\n"
"\n"
"QMP: the migration commands, object-add, object-del, stop, cont,\n"
"query-status, quit, and\n"
"x-verify-memory, x-query-workload, x-query-memory-hash.\n",
            prog);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = (char)tolower((unsigned char)c);
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

int vm_parse_uuid(const char *s, uint8_t uuid[16])
{
    static const int dash[] = { 8, 13, 18, 23 };
    unsigned n = 0;

    if (strlen(s) != 36) {
        return -EINVAL;
    }
    for (int i = 0; i < 36;) {
        if (i == dash[0] || i == dash[1] || i == dash[2] || i == dash[3]) {
            if (s[i] != '-') {
                return -EINVAL;
            }
            i++;
            continue;
        }
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0) {
            return -EINVAL;
        }
        uuid[n++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return n == 16 ? 0 : -EINVAL;
}

static int parse_uint(const char *opt, const char *s, unsigned long long max,
                      unsigned long long *out, lm_error *err)
{
    char *end;

    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno || v > max) {
        return lm_error_set(err, -EINVAL, "%s '%s': expected a number up to %llu", opt, s, max);
    }
    *out = v;
    return 0;
}

static int parse_size_opt(const char *opt, const char *s, uint64_t *out, lm_error *err)
{
    if (lm_parse_size(s, out) < 0) {
        return lm_error_set(err, -EINVAL, "%s '%s': expected a size such as 4096, 64K, 512M or 2G",
                            opt, s);
    }
    return 0;
}

/* "100M", "100M/s", "0" */
static int parse_rate(const char *opt, const char *s, uint64_t *out, lm_error *err)
{
    char buf[64];
    size_t n = strlen(s);

    if (n >= sizeof(buf)) {
        return lm_error_set(err, -EINVAL, "%s '%s': too long", opt, s);
    }
    memcpy(buf, s, n + 1);
    if (n > 2 && strcmp(buf + n - 2, "/s") == 0) {
        buf[n - 2] = '\0';
    }
    if (lm_parse_size(buf, out) < 0) {
        return lm_error_set(err, -EINVAL, "%s '%s': expected bytes per second such as 100M or 1G/s",
                            opt, s);
    }
    return 0;
}

/* --vcpu-dirty-rate R0,R1,...: one rate per vCPU, in vCPU order. */
static int parse_vcpu_rates(const char *s, workload_config *w, lm_error *err)
{
    char buf[1024];
    if (strlen(s) >= sizeof(buf)) {
        return lm_error_set(err, -EINVAL, "--vcpu-dirty-rate: too long");
    }
    snprintf(buf, sizeof(buf), "%s", s);
    w->nvcpu_rates = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (w->nvcpu_rates >= WL_MAX_VCPU_RATES) {
            return lm_error_set(err, -EINVAL, "--vcpu-dirty-rate: at most %d rates",
                                WL_MAX_VCPU_RATES);
        }
        int ret = parse_rate("--vcpu-dirty-rate", tok, &w->vcpu_rates[w->nvcpu_rates], err);
        if (ret < 0) {
            return ret;
        }
        w->nvcpu_rates++;
    }
    return w->nvcpu_rates ? 0 : lm_error_set(err, -EINVAL, "--vcpu-dirty-rate: no rate given");
}

static int parse_working_set(const char *s, workload_config *w, lm_error *err)
{
    size_t n = strlen(s);

    if (n > 1 && s[n - 1] == '%') {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (!isdigit((unsigned char)s[0]) || end != s + n - 1 || v == 0 || v > 100) {
            return lm_error_set(err, -EINVAL, "--working-set '%s': a percentage is 1%% to 100%%", s);
        }
        w->ws_percent = (unsigned)v;
        w->ws_bytes = 0;
        return 0;
    }
    if (lm_parse_size(s, &w->ws_bytes) < 0 || w->ws_bytes < VM_PAGE_SIZE) {
        return lm_error_set(err, -EINVAL, "--working-set '%s': expected PCT%% or a size of at least 4K", s);
    }
    return 0;
}

enum {
    OPT_BLOCKS = 256,
    OPT_BACKEND,
    OPT_THP,
    OPT_NO_THP,
    OPT_DIRTY_LOG,
    OPT_SMP,
    OPT_WORKLOAD,
    OPT_DIRTY_RATE,
    OPT_VCPU_DIRTY_RATE,
    OPT_WORKING_SET,
    OPT_SEED,
    OPT_VRAM,
    OPT_VRAM_RATE,
    OPT_INCOMING,
    OPT_QMP,
    OPT_QMP_MODE,
    OPT_NAME,
    OPT_UUID,
    OPT_SERIAL,
    OPT_MACHINE,
    OPT_BIOS,
    OPT_KERNEL,
    OPT_INITRD,
    OPT_APPEND,
    OPT_DRIVE,
    OPT_DEVICE,
    OPT_OBJECT,
};

static const struct option long_opts[] = {
    { "memory", required_argument, NULL, 'm' },
    { "blocks", required_argument, NULL, OPT_BLOCKS },
    { "memory-backend", required_argument, NULL, OPT_BACKEND },
    { "thp", no_argument, NULL, OPT_THP },
    { "no-thp", no_argument, NULL, OPT_NO_THP },
    { "dirty-log", no_argument, NULL, OPT_DIRTY_LOG },
    { "smp", required_argument, NULL, OPT_SMP },
    { "workload", required_argument, NULL, OPT_WORKLOAD },
    { "dirty-rate", required_argument, NULL, OPT_DIRTY_RATE },
    { "vcpu-dirty-rate", required_argument, NULL, OPT_VCPU_DIRTY_RATE },
    { "working-set", required_argument, NULL, OPT_WORKING_SET },
    { "seed", required_argument, NULL, OPT_SEED },
    { "vram", required_argument, NULL, OPT_VRAM },
    { "vram-rate", required_argument, NULL, OPT_VRAM_RATE },
    { "incoming", required_argument, NULL, OPT_INCOMING },
    { "qmp", required_argument, NULL, OPT_QMP },
    { "qmp-mode", required_argument, NULL, OPT_QMP_MODE },
    { "paused", no_argument, NULL, 'S' },
    { "name", required_argument, NULL, OPT_NAME },
    { "uuid", required_argument, NULL, OPT_UUID },
    { "serial", required_argument, NULL, OPT_SERIAL },
    { "machine", required_argument, NULL, OPT_MACHINE },
    { "bios", required_argument, NULL, OPT_BIOS },
    { "kernel", required_argument, NULL, OPT_KERNEL },
    { "initrd", required_argument, NULL, OPT_INITRD },
    { "append", required_argument, NULL, OPT_APPEND },
    { "drive", required_argument, NULL, OPT_DRIVE },
    { "device", required_argument, NULL, OPT_DEVICE },
    { "object", required_argument, NULL, OPT_OBJECT },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
};

int vm_options_parse(vm_options *o, int argc, char **argv, lm_error *err)
{
    unsigned long long v;
    int c, ret = 0;

    memset(o, 0, sizeof(*o));
    o->ram.size = 512ull << 20;
    o->ram.nblocks = 1;
    o->ram.backend = GUEST_RAM_ANON;
    o->smp = 1;
    o->workload.kind = WORKLOAD_INCREMENT;
    o->workload.ws_percent = 100;
    o->workload.seed = 1;
    o->vram_rate = DEFAULT_VRAM_RATE;
    o->qmp_mode = 0600;
    o->name = "vm";
    o->serial = SERIAL_STDOUT;

    optind = 1;
    opterr = 0;
    while (ret == 0 && (c = getopt_long(argc, argv, ":m:Sh", long_opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            ret = parse_size_opt("--memory", optarg, &o->ram.size, err);
            break;
        case OPT_BLOCKS:
            ret = parse_uint("--blocks", optarg, 4096, &v, err);
            o->ram.nblocks = (unsigned)v;
            break;
        case OPT_BACKEND:
            ret = guest_ram_parse_backend(optarg, &o->ram, err);
            break;
        case OPT_THP:
            o->ram.thp = true;
            break;
        case OPT_DIRTY_LOG:
            o->ram.dirty_log = true;
            break;
        case OPT_NO_THP:
            o->ram.no_thp_advice = true;
            break;
        case OPT_SMP:
            ret = parse_uint("--smp", optarg, 1024, &v, err);
            o->smp = (unsigned)v;
            break;
        case OPT_WORKLOAD:
            ret = workload_parse_kind(optarg, &o->workload.kind, err);
            break;
        case OPT_DIRTY_RATE:
            ret = parse_rate("--dirty-rate", optarg, &o->workload.dirty_rate, err);
            break;
        case OPT_VCPU_DIRTY_RATE:
            ret = parse_vcpu_rates(optarg, &o->workload, err);
            break;
        case OPT_WORKING_SET:
            ret = parse_working_set(optarg, &o->workload, err);
            break;
        case OPT_SEED:
            ret = parse_uint("--seed", optarg, UINT64_MAX, &v, err);
            o->workload.seed = v;
            break;
        case OPT_VRAM:
            ret = parse_size_opt("--vram", optarg, &o->vram_size, err);
            break;
        case OPT_VRAM_RATE:
            ret = parse_rate("--vram-rate", optarg, &o->vram_rate, err);
            break;
        case OPT_INCOMING:
            o->incoming = optarg;
            break;
        case OPT_QMP:
            o->qmp_path = strncmp(optarg, "unix:", 5) == 0 ? optarg + 5 : optarg;
            if (o->qmp_path[0] == '\0') {
                ret = lm_error_set(err, -EINVAL, "--qmp: expected unix:PATH");
            }
            break;
        case OPT_QMP_MODE: {
            char *end;
            errno = 0;
            unsigned long mode = strtoul(optarg, &end, 8);
            if (!*optarg || *end || errno || mode > 0777 || (mode & 0600) != 0600) {
                ret = lm_error_set(err, -EINVAL, "--qmp-mode: expected octal permissions from 0600 "
                                   "to 0777 (the owner keeps read and write), not '%s'", optarg);
            }
            o->qmp_mode = (unsigned)mode;
            break;
        }
        case 'S':
            o->paused = true;
            break;
        case OPT_NAME:
            o->name = optarg;
            break;
        case OPT_UUID:
            if (vm_parse_uuid(optarg, o->uuid) < 0) {
                ret = lm_error_set(err, -EINVAL, "--uuid '%s': expected 8-4-4-4-12 hex digits", optarg);
            }
            o->has_uuid = true;
            break;
        case OPT_SERIAL:
            o->serial_spec = optarg; /* checked once the machine is known */
            break;
        case OPT_MACHINE:
            if (strcmp(optarg, "synthetic") == 0) {
                o->machine = VM_MACHINE_SYNTHETIC;
            } else if (strcmp(optarg, "riscv-virt") == 0) {
                o->machine = VM_MACHINE_RISCV_VIRT;
            } else {
                ret = lm_error_set(err, -EINVAL, "--machine '%s': expected synthetic or riscv-virt",
                                   optarg);
            }
            break;
        case OPT_BIOS:
            o->bios = optarg;
            break;
        case OPT_KERNEL:
            o->kernel = optarg;
            break;
        case OPT_INITRD:
            o->initrd = optarg;
            break;
        case OPT_APPEND:
            o->append = optarg;
            break;
        case OPT_DRIVE:
            o->drive = optarg;
            break;
        case OPT_DEVICE:
            /* QEMU's -device name for the virtio-mmio entropy device. */
            if (strcmp(optarg, "virtio-rng-device") == 0 || strcmp(optarg, "virtio-rng") == 0) {
                o->rng = true;
            } else {
                ret = lm_error_set(err, -EINVAL, "--device '%s': only virtio-rng-device exists",
                                   optarg);
            }
            break;
        case OPT_OBJECT:
            if (o->nobjects == VM_MAX_OBJECTS) {
                ret = lm_error_set(err, -E2BIG, "at most %d --object", VM_MAX_OBJECTS);
            } else {
                o->objects[o->nobjects++] = optarg;
            }
            break;
        case 'h':
            usage(stdout, argv[0]);
            return 1;
        case ':':
            ret = lm_error_set(err, -EINVAL, "option '%s' needs an argument", argv[optind - 1]);
            break;
        default:
            ret = lm_error_set(err, -EINVAL, "unknown option '%s' (see --help)", argv[optind - 1]);
            break;
        }
    }
    if (ret == 0 && optind < argc) {
        ret = lm_error_set(err, -EINVAL, "unexpected argument '%s' (see --help)", argv[optind]);
    }
    if (ret == 0 && o->machine == VM_MACHINE_SYNTHETIC) {
        if (o->bios || o->kernel || o->initrd || o->append || o->drive || o->rng) {
            ret = lm_error_set(err, -EINVAL, "--bios, --kernel, --initrd, --append, --drive and "
                               "--device need --machine riscv-virt");
        } else if (o->serial_spec) {
            ret = vm_serial_parse(o->serial_spec, &o->serial, &o->serial_path, err);
        }
    }
    if (ret == 0 && o->machine == VM_MACHINE_RISCV_VIRT) {
        if (!o->bios) {
            o->bios = VM_DEFAULT_BIOS;
        }
        if (!o->serial_spec) {
            o->serial_spec = "stdout";
        }
        if (o->initrd && !o->kernel) {
            ret = lm_error_set(err, -EINVAL, "--initrd needs --kernel");
        }
    }
    return ret;
}
