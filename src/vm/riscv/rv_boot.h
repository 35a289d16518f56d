/*
 * Booting the virt machine as QEMU does with -bios fw_dynamic.bin:
 *
 *  - the firmware is loaded at the start of RAM (0x80000000), the next
 *    stage (--kernel, a raw image: U-Boot or a Linux Image) at 0x80200000,
 *    an --initrd above the kernel;
 *  - a device tree describing the machine is generated with libfdt and
 *    placed at the end of RAM (below 3 GiB, 2 MiB aligned);
 *  - MROM at 0x1000 holds QEMU's reset vector, which every hart runs:
 *    a0 = mhartid, a1 = the FDT's address, a2 = fw_dynamic_info (OpenSBI's
 *    struct: magic, version 2, next_addr, next_mode S, options, boot_hart),
 *    then jumps to the firmware.
 */
#ifndef LIVEMIG_VM_RISCV_BOOT_H
#define LIVEMIG_VM_RISCV_BOOT_H

#include "rv_machine.h"

/* Builds the MROM; with load_ram, also loads the images and the FDT into
 * RAM (a migration destination gets RAM from the source instead). */
int rv_boot_prepare(rv_machine *m, const rv_machine_config *cfg, bool load_ram, lm_error *err);

#endif
