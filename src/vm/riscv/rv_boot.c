/*
 * Image loading, the device tree and the reset vector.
 */
#include <errno.h>
#include <fcntl.h>
#include <libfdt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rv_boot.h"

#define FDT_MAX (64 * 1024)
#define FW_DYNAMIC_INFO_MAGIC 0x4942534full /* "OSBI" */
#define FW_DYNAMIC_INFO_VERSION 2
#define FW_NEXT_MODE_S 1
#define MIB (1024ull * 1024)

/* Reads the file into guest RAM at physical address pa; *size gets its size. */
static int load_image(rv_machine *m, const char *what, const char *path, uint64_t pa,
                      uint64_t *size, lm_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return lm_error_set_errno(err, -errno, "cannot open %s '%s'", what, path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int ret = lm_error_set_errno(err, -errno, "%s '%s'", what, path);
        close(fd);
        return ret;
    }
    uint64_t len = (uint64_t)st.st_size;
    if (pa < RV_RAM_BASE || pa - RV_RAM_BASE > m->ram_size || len > m->ram_size - (pa - RV_RAM_BASE)) {
        close(fd);
        return lm_error_set(err, -EFBIG, "%s '%s' (%llu bytes) does not fit in RAM at 0x%llx", what,
                            path, (unsigned long long)len, (unsigned long long)pa);
    }
    uint8_t *dst = m->ram + (pa - RV_RAM_BASE);
    uint64_t done = 0;
    while (done < len) {
        ssize_t r = read(fd, dst + done, len - done);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            int ret = lm_error_set_errno(err, r < 0 ? -errno : -EIO, "cannot read %s '%s'", what, path);
            close(fd);
            return ret;
        }
        done += (uint64_t)r;
    }
    close(fd);
    *size = len;
    return 0;
}

static int prop_cells(void *fdt, const char *name, const uint32_t *cells, int n)
{
    fdt32_t be[64];
    for (int i = 0; i < n; i++) {
        be[i] = cpu_to_fdt32(cells[i]);
    }
    return fdt_property(fdt, name, be, n * (int)sizeof(fdt32_t));
}

static int prop_reg(void *fdt, uint64_t base, uint64_t size)
{
    uint32_t c[4] = { (uint32_t)(base >> 32), (uint32_t)base, (uint32_t)(size >> 32), (uint32_t)size };
    return prop_cells(fdt, "reg", c, 4);
}

static int prop_strings(void *fdt, const char *name, const char *const *s, int n)
{
    char buf[256];
    int len = 0;
    for (int i = 0; i < n; i++) {
        int l = (int)strlen(s[i]) + 1;
        memcpy(buf + len, s[i], (size_t)l);
        len += l;
    }
    return fdt_property(fdt, name, buf, len);
}

/* The tree, in the order and with the names QEMU's virt machine uses. */
static int build_fdt(rv_machine *m, const rv_machine_config *cfg, void *fdt, uint64_t initrd_start,
                     uint64_t initrd_end)
{
    unsigned n = m->nharts;
    uint32_t ph_plic = 2 * n + 1, ph_test = 2 * n + 2;
    char name[64];
    int r = 0;

#define T(x) do { if ((r = (x)) < 0) return r; } while (0)
    T(fdt_create(fdt, FDT_MAX));
    T(fdt_finish_reservemap(fdt));
    T(fdt_begin_node(fdt, ""));
    T(fdt_property_u32(fdt, "#address-cells", 2));
    T(fdt_property_u32(fdt, "#size-cells", 2));
    T(fdt_property_string(fdt, "compatible", "riscv-virtio"));
    T(fdt_property_string(fdt, "model", "riscv-virtio,qemu"));

    T(fdt_begin_node(fdt, "chosen"));
    if (initrd_end) {
        T(fdt_property_u64(fdt, "linux,initrd-end", initrd_end));
        T(fdt_property_u64(fdt, "linux,initrd-start", initrd_start));
    }
    if (cfg->append) {
        T(fdt_property_string(fdt, "bootargs", cfg->append));
    }
    T(fdt_property_string(fdt, "stdout-path", "/soc/serial@10000000"));
    T(fdt_end_node(fdt));

    T(fdt_begin_node(fdt, "poweroff"));
    T(fdt_property_u32(fdt, "value", 0x5555));
    T(fdt_property_u32(fdt, "offset", 0));
    T(fdt_property_u32(fdt, "regmap", ph_test));
    T(fdt_property_string(fdt, "compatible", "syscon-poweroff"));
    T(fdt_end_node(fdt));

    T(fdt_begin_node(fdt, "reboot"));
    T(fdt_property_u32(fdt, "value", 0x7777));
    T(fdt_property_u32(fdt, "offset", 0));
    T(fdt_property_u32(fdt, "regmap", ph_test));
    T(fdt_property_string(fdt, "compatible", "syscon-reboot"));
    T(fdt_end_node(fdt));

    snprintf(name, sizeof(name), "memory@%llx", (unsigned long long)RV_RAM_BASE);
    T(fdt_begin_node(fdt, name));
    T(fdt_property_string(fdt, "device_type", "memory"));
    T(prop_reg(fdt, RV_RAM_BASE, m->ram_size));
    T(fdt_end_node(fdt));

    T(fdt_begin_node(fdt, "cpus"));
    T(fdt_property_u32(fdt, "#address-cells", 1));
    T(fdt_property_u32(fdt, "#size-cells", 0));
    T(fdt_property_u32(fdt, "timebase-frequency", (uint32_t)RV_TIMEBASE_HZ));
    for (int i = (int)n - 1; i >= 0; i--) {
        snprintf(name, sizeof(name), "cpu@%d", i);
        T(fdt_begin_node(fdt, name));
        T(fdt_property_u32(fdt, "phandle", 2 * (uint32_t)i + 1));
        T(fdt_property_string(fdt, "device_type", "cpu"));
        T(fdt_property_u32(fdt, "reg", (uint32_t)i));
        T(fdt_property_string(fdt, "status", "okay"));
        T(fdt_property_string(fdt, "compatible", "riscv"));
        T(fdt_property_string(fdt, "riscv,isa", "rv64imafdc_zicsr_zifencei_zihintpause_zba_zbb_zbs_sstc"));
        T(fdt_property_string(fdt, "mmu-type", "riscv,sv48"));
        T(fdt_begin_node(fdt, "interrupt-controller"));
        T(fdt_property_u32(fdt, "#interrupt-cells", 1));
        T(fdt_property(fdt, "interrupt-controller", NULL, 0));
        T(fdt_property_string(fdt, "compatible", "riscv,cpu-intc"));
        T(fdt_property_u32(fdt, "phandle", 2 * (uint32_t)i + 2));
        T(fdt_end_node(fdt));
        T(fdt_end_node(fdt));
    }
    T(fdt_begin_node(fdt, "cpu-map"));
    T(fdt_begin_node(fdt, "cluster0"));
    for (unsigned i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "core%u", i);
        T(fdt_begin_node(fdt, name));
        T(fdt_property_u32(fdt, "cpu", 2 * i + 1));
        T(fdt_end_node(fdt));
    }
    T(fdt_end_node(fdt));
    T(fdt_end_node(fdt));
    T(fdt_end_node(fdt)); /* cpus */

    T(fdt_begin_node(fdt, "soc"));
    T(fdt_property_u32(fdt, "#address-cells", 2));
    T(fdt_property_u32(fdt, "#size-cells", 2));
    T(fdt_property_string(fdt, "compatible", "simple-bus"));
    T(fdt_property(fdt, "ranges", NULL, 0));

    snprintf(name, sizeof(name), "serial@%llx", (unsigned long long)RV_UART_BASE);
    T(fdt_begin_node(fdt, name));
    T(fdt_property_u32(fdt, "interrupts", RV_UART_IRQ));
    T(fdt_property_u32(fdt, "interrupt-parent", ph_plic));
    T(fdt_property_u32(fdt, "clock-frequency", 0x384000));
    T(prop_reg(fdt, RV_UART_BASE, 0x100));
    T(fdt_property_string(fdt, "compatible", "ns16550a"));
    T(fdt_end_node(fdt));

    snprintf(name, sizeof(name), "test@%llx", (unsigned long long)RV_TEST_BASE);
    T(fdt_begin_node(fdt, name));
    T(fdt_property_u32(fdt, "phandle", ph_test));
    T(prop_reg(fdt, RV_TEST_BASE, 0x1000));
    static const char *const test_compat[] = { "sifive,test1", "sifive,test0", "syscon" };
    T(prop_strings(fdt, "compatible", test_compat, 3));
    T(fdt_end_node(fdt));

    for (int i = RV_VIRTIO_COUNT - 1; i >= 0; i--) {
        uint64_t base = RV_VIRTIO_BASE + 0x1000ull * (unsigned)i;
        snprintf(name, sizeof(name), "virtio_mmio@%llx", (unsigned long long)base);
        T(fdt_begin_node(fdt, name));
        T(fdt_property_u32(fdt, "interrupts", RV_VIRTIO_IRQ + (uint32_t)i));
        T(fdt_property_u32(fdt, "interrupt-parent", ph_plic));
        T(prop_reg(fdt, base, 0x1000));
        T(fdt_property_string(fdt, "compatible", "virtio,mmio"));
        T(fdt_end_node(fdt));
    }

    uint32_t cells[4 * RV_MAX_HARTS];
    snprintf(name, sizeof(name), "plic@%llx", (unsigned long long)RV_PLIC_BASE);
    T(fdt_begin_node(fdt, name));
    T(fdt_property_u32(fdt, "phandle", ph_plic));
    T(fdt_property_u32(fdt, "riscv,ndev", 0x60));
    T(prop_reg(fdt, RV_PLIC_BASE, RV_PLIC_SIZE));
    for (unsigned i = 0; i < n; i++) {
        cells[4 * i] = 2 * i + 2;
        cells[4 * i + 1] = RV_IRQ_MEI;
        cells[4 * i + 2] = 2 * i + 2;
        cells[4 * i + 3] = RV_IRQ_SEI;
    }
    T(prop_cells(fdt, "interrupts-extended", cells, 4 * (int)n));
    T(fdt_property(fdt, "interrupt-controller", NULL, 0));
    static const char *const plic_compat[] = { "sifive,plic-1.0.0", "riscv,plic0" };
    T(prop_strings(fdt, "compatible", plic_compat, 2));
    T(fdt_property_u32(fdt, "#address-cells", 0));
    T(fdt_property_u32(fdt, "#interrupt-cells", 1));
    T(fdt_end_node(fdt));

    snprintf(name, sizeof(name), "clint@%llx", (unsigned long long)RV_CLINT_BASE);
    T(fdt_begin_node(fdt, name));
    for (unsigned i = 0; i < n; i++) {
        cells[4 * i] = 2 * i + 2;
        cells[4 * i + 1] = RV_IRQ_MSI;
        cells[4 * i + 2] = 2 * i + 2;
        cells[4 * i + 3] = RV_IRQ_MTI;
    }
    T(prop_cells(fdt, "interrupts-extended", cells, 4 * (int)n));
    T(prop_reg(fdt, RV_CLINT_BASE, 0x10000));
    static const char *const clint_compat[] = { "sifive,clint0", "riscv,clint0" };
    T(prop_strings(fdt, "compatible", clint_compat, 2));
    T(fdt_end_node(fdt));

    T(fdt_end_node(fdt)); /* soc */
    T(fdt_end_node(fdt)); /* root */
    T(fdt_finish(fdt));
#undef T
    return 0;
}

static void put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8); /* the guest is little-endian, as the host */
}


int rv_boot_prepare(rv_machine *m, const rv_machine_config *cfg, bool load_ram, lm_error *err)
{
    uint64_t size, initrd_start = 0, initrd_end = 0;
    int ret;

    if (load_ram) {
        if ((ret = load_image(m, "firmware", cfg->bios, RV_RAM_BASE, &size, err)) < 0) {
            return ret;
        }
        if (cfg->kernel) {
            uint64_t ksize;
            if ((ret = load_image(m, "kernel", cfg->kernel, RV_KERNEL_BASE, &ksize, err)) < 0) {
                return ret;
            }
            if (cfg->initrd) {
                /* Far enough above the kernel that it can unpack itself. */
                uint64_t off = m->ram_size / 2 < 128 * MIB ? m->ram_size / 2 : 128 * MIB;
                initrd_start = (RV_KERNEL_BASE + off + 0xfff) & ~0xfffull;
                if ((ret = load_image(m, "initrd", cfg->initrd, initrd_start, &size, err)) < 0) {
                    return ret;
                }
                initrd_end = initrd_start + size;
            }
        }
    }

    uint8_t *fdt = calloc(1, FDT_MAX);
    if (!fdt) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    if ((ret = build_fdt(m, cfg, fdt, initrd_start, initrd_end)) < 0) {
        free(fdt);
        return lm_error_set(err, -EINVAL, "device tree: %s", fdt_strerror(ret));
    }
    uint64_t fdt_size = fdt_totalsize(fdt);
    uint64_t ram_end = RV_RAM_BASE + m->ram_size;
    uint64_t top = ram_end < 3072 * MIB ? ram_end : 3072 * MIB;
    if (top - RV_RAM_BASE < fdt_size + 4 * MIB) {
        free(fdt);
        return lm_error_set(err, -EINVAL, "RAM too small for the machine");
    }
    uint64_t fdt_addr = (top - fdt_size) & ~(2 * MIB - 1);
    if (load_ram) {
        memcpy(m->ram + (fdt_addr - RV_RAM_BASE), fdt, fdt_size);
    }
    free(fdt);

    /* The reset vector, as QEMU's riscv_setup_rom_reset_vec(). */
    static const uint32_t reset_vec[] = {
        0x00000297, /* 1: auipc t0, 0 */
        0x02828613, /*    addi  a2, t0, 40   (fw_dynamic_info) */
        0xf1402573, /*    csrr  a0, mhartid */
        0x0202b583, /*    ld    a1, 32(t0)   (fdt address) */
        0x0182b283, /*    ld    t0, 24(t0)   (firmware entry) */
        0x00028067, /*    jr    t0 */
    };
    uint8_t *rom = m->mrom;
    memset(rom, 0, sizeof(m->mrom));
    memcpy(rom, reset_vec, sizeof(reset_vec));
    put64(rom + 24, RV_RAM_BASE);
    put64(rom + 32, fdt_addr);
    uint8_t *info = rom + 40;
    put64(info + 0, FW_DYNAMIC_INFO_MAGIC);
    put64(info + 8, FW_DYNAMIC_INFO_VERSION);
    put64(info + 16, cfg->kernel ? RV_KERNEL_BASE : 0);
    put64(info + 24, FW_NEXT_MODE_S);
    put64(info + 32, 0);   /* options */
    put64(info + 40, 0);   /* boot_hart */
    return 0;
}
