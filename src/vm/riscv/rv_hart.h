/*
 * One RISC-V hart (RV64IMAFDC, Zicsr, Zifencei, Zba, Zbb, Zbs, Sstc; M/S/U
 * privilege levels; Sv39/Sv48): its architectural state and the entry
 * points of the interpreter.
 *
 * The state that migrates is the first part of rv_hart (see rv_hart_vmstate
 * in rv_hart.c); the rest is a cache (the software TLB, the fetch page) or
 * belongs to the host thread.
 *
 * Memory: a virtual address is translated by the software TLB (one
 * direct-mapped table per access kind: read, write, execute) into a host
 * pointer when it lands in RAM or ROM; anything else is a device access
 * through the machine's bus.  A trap inside an instruction unwinds to the
 * run loop with longjmp: the instruction's side effects up to the trap are
 * the architectural ones (RISC-V traps are precise, and every instruction
 * writes its destination only after its last memory access).
 */
#ifndef LIVEMIG_VM_RISCV_RV_HART_H
#define LIVEMIG_VM_RISCV_RV_HART_H

#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>

#include "livemig/device.h"

struct rv_machine;

#define RV_TLB_BITS 8
#define RV_TLB_SIZE (1u << RV_TLB_BITS)
#define RV_NPMP 16
#define RV_NHPM 16          /* mhpmcounter3..18 hold their value */

enum { RV_PRIV_U = 0, RV_PRIV_S = 1, RV_PRIV_M = 3 };
enum { RV_ACC_READ = 0, RV_ACC_WRITE = 1, RV_ACC_EXEC = 2 };

/* Exception causes */
enum {
    RV_EXC_INSN_MISALIGNED = 0,
    RV_EXC_INSN_ACCESS = 1,
    RV_EXC_ILLEGAL = 2,
    RV_EXC_BREAKPOINT = 3,
    RV_EXC_LOAD_MISALIGNED = 4,
    RV_EXC_LOAD_ACCESS = 5,
    RV_EXC_STORE_MISALIGNED = 6,
    RV_EXC_STORE_ACCESS = 7,
    RV_EXC_ECALL_U = 8,
    RV_EXC_ECALL_S = 9,
    RV_EXC_ECALL_M = 11,
    RV_EXC_INSN_PAGE = 12,
    RV_EXC_LOAD_PAGE = 13,
    RV_EXC_STORE_PAGE = 15,
};

/* Interrupt bits in mip/mie */
#define RV_IRQ_SSI 1
#define RV_IRQ_MSI 3
#define RV_IRQ_STI 5
#define RV_IRQ_MTI 7
#define RV_IRQ_SEI 9
#define RV_IRQ_MEI 11
#define RV_MIP_SSIP (1ull << RV_IRQ_SSI)
#define RV_MIP_MSIP (1ull << RV_IRQ_MSI)
#define RV_MIP_STIP (1ull << RV_IRQ_STI)
#define RV_MIP_MTIP (1ull << RV_IRQ_MTI)
#define RV_MIP_SEIP (1ull << RV_IRQ_SEI)
#define RV_MIP_MEIP (1ull << RV_IRQ_MEI)

/* mstatus */
#define RV_MS_SIE (1ull << 1)
#define RV_MS_MIE (1ull << 3)
#define RV_MS_SPIE (1ull << 5)
#define RV_MS_MPIE (1ull << 7)
#define RV_MS_SPP (1ull << 8)
#define RV_MS_MPP_SHIFT 11
#define RV_MS_MPP (3ull << RV_MS_MPP_SHIFT)
#define RV_MS_FS_SHIFT 13
#define RV_MS_FS (3ull << RV_MS_FS_SHIFT)
#define RV_MS_MPRV (1ull << 17)
#define RV_MS_SUM (1ull << 18)
#define RV_MS_MXR (1ull << 19)
#define RV_MS_TVM (1ull << 20)
#define RV_MS_TW (1ull << 21)
#define RV_MS_TSR (1ull << 22)
#define RV_MS_UXL (3ull << 32)
#define RV_MS_SXL (3ull << 34)
#define RV_MS_SD (1ull << 63)

#define RV_MENVCFG_STCE (1ull << 63)

typedef struct rv_tlb_entry {
    uint64_t tag;        /* virtual page address; ~0 when empty */
    uintptr_t addend;    /* host address = addend + virtual address */
} rv_tlb_entry;

typedef struct rv_hart {
    /* ---- architectural state: migrates (rv_hart_vmstate) ---- */
    uint64_t x[32];
    uint64_t f[32];
    uint64_t pc;
    uint64_t priv;
    uint64_t fcsr;           /* frm << 5 | fflags */
    uint64_t mstatus;
    uint64_t medeleg, mideleg;
    uint64_t mie;
    uint64_t mip;            /* the software-writable bits: SSIP, STIP, SEIP */
    uint64_t mtvec, mscratch, mepc, mcause, mtval;
    uint64_t mcounteren, mcountinhibit, menvcfg;
    uint64_t stvec, sscratch, sepc, scause, stval, satp, scounteren, senvcfg;
    uint64_t stimecmp;       /* Sstc */
    uint64_t pmpcfg[RV_NPMP / 8];
    uint64_t pmpaddr[RV_NPMP];
    uint64_t mhpmcounter[RV_NHPM];
    uint64_t mhpmevent[RV_NHPM];
    uint64_t instret;        /* minstret and mcycle */
    bool wfi;                /* waiting for an interrupt */

    /* ---- host side ---- */
    uint32_t hartid;
    struct rv_machine *m;
    uint32_t irq_lines;      /* atomic: MSIP, MEIP, SEIP driven by devices */
    bool lr_valid;           /* LR reservation (dropped on trap and migration) */
    uint64_t lr_addr, lr_val;
    int budget;              /* instructions left in this batch */
    rv_tlb_entry tlb[3][RV_TLB_SIZE];
    uint64_t fetch_page;     /* virtual page of fetch_host, ~0 when none */
    uint8_t *fetch_host;
    jmp_buf trap_jb;
} rv_hart;

extern const lm_vmstate rv_hart_vmstate;

void rv_hart_init(rv_hart *h, struct rv_machine *m, uint32_t hartid);
/* Put the hart in its reset state at pc. */
void rv_hart_reset(rv_hart *h, uint64_t pc);

/* Runs up to `n` instructions (fewer when something needs the run loop's
 * attention: an interrupt may have become pending, a WFI). */
void rv_hart_run(rv_hart *h, int n);
/* Takes a pending enabled interrupt if there is one; true if taken. */
bool rv_hart_check_interrupts(rv_hart *h);
/* mip as the guest reads it: software bits, device lines, timers. */
uint64_t rv_hart_mip(rv_hart *h);
/* Whether an interrupt is pending and enabled in mie (WFI wakes on it,
 * whatever the global enables). */
bool rv_hart_wfi_wakeup(rv_hart *h);

/* Device side: set or clear a line (RV_MIP_MSIP/MEIP/SEIP) of a hart;
 * safe from any thread. */
void rv_hart_set_line(rv_hart *h, uint32_t bit, bool level);

/* Drop every cached translation (sfence.vma, satp, privilege changes). */
void rv_tlb_flush(rv_hart *h);

/* Raise an exception in the current instruction; does not return. */
__attribute__((noreturn)) void rv_raise(rv_hart *h, uint64_t cause, uint64_t tval);

/* Memory accesses of the current instruction at a virtual address; they
 * raise the access's fault themselves. */
uint64_t rv_load(rv_hart *h, uint64_t va, unsigned size);
void rv_store(rv_hart *h, uint64_t va, unsigned size, uint64_t val);
/* A host pointer to `size` naturally aligned bytes of RAM for an atomic
 * access (AMO, LR/SC): raises misaligned / access / page faults. */
void *rv_atomic_ptr(rv_hart *h, uint64_t va, unsigned size, bool store);

/* CSRs (rv_csr.c).  Return false when the access is illegal. */
bool rv_csr_read(rv_hart *h, unsigned csr, uint64_t *val);
bool rv_csr_write(rv_hart *h, unsigned csr, uint64_t val);

/* Floating point (rv_fp.c): executes one of the FP opcodes. */
void rv_exec_fp(rv_hart *h, uint32_t insn);
/* Raise illegal instruction unless mstatus.FS is on; marks it dirty. */
void rv_fp_check(rv_hart *h, uint32_t insn);

/* Compressed instructions (rv_rvc.c): the 32-bit equivalent, 0 if illegal. */
uint32_t rv_expand_compressed(uint16_t c);

#endif
