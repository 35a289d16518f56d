/* Runtime of the bare-metal RISC-V test programs in tests/riscv:
 * console output on the virt machine's ns16550a UART (polled), exit
 * through the SiFive test finisher, and trap bookkeeping so that a test
 * can provoke a trap and print what the hart reported.
 *
 * Every program prints deterministic lines (values in hex) that
 * tests/integration/test_riscv_isa.py compares between QEMU and
 * livemig-vm; a program that detects a broken invariant itself calls
 * rt_fail(), which makes the finisher report failure. */
#ifndef LIVEMIG_TESTS_RISCV_RT_H
#define LIVEMIG_TESTS_RISCV_RT_H

#include <stdint.h>
#include <stdio.h>

#define UART_BASE     0x10000000UL
#define FINISHER_BASE 0x100000UL
#define CLINT_BASE    0x2000000UL

/* What the last trap reported; count says how many traps were taken. */
struct rt_trap_record {
    uint64_t cause, epc, tval;
    int mode;        /* 3: taken in M-mode, 1: in S-mode */
    unsigned count;
};
extern volatile struct rt_trap_record rt_last_trap;

/* Traps are fatal unless expected: rt_expect_trap() arms the handler for
 * one trap, rt_traps_taken() returns how many happened since and disarms.
 * An expected synchronous trap resumes after the trapping instruction, or
 * at ra for instruction-fetch faults (the tests fetch from bad addresses
 * only through a call).  Interrupts resume where they struck after
 * rt_irq_hook (if set) has quietened their source. */
void rt_expect_trap(void);
/* An expected ecall from U or S with a7 == RT_ECALL_TO_M resumes in M. */
#define RT_ECALL_TO_M 0x4d
unsigned rt_traps_taken(void);
void rt_print_trap(const char *what);
extern void (*volatile rt_irq_hook)(uint64_t cause);

void rt_fail(const char *why);
void rt_exit(int code) __attribute__((noreturn));
void rt_uart_putc(char c);

/* Prints "label: 0123456789abcdef". */
void rt_hex(const char *label, uint64_t v);
/* Checks an invariant the spec fixes; prints and records a failure. */
void rt_check(const char *what, uint64_t got, uint64_t want);

/* Minimal CSR access. */
#define csr_read(csr) ({ uint64_t _v; asm volatile("csrr %0, " #csr : "=r"(_v)); _v; })
#define csr_write(csr, v) asm volatile("csrw " #csr ", %0" :: "r"((uint64_t)(v)) : "memory")
#define csr_set(csr, v) asm volatile("csrs " #csr ", %0" :: "r"((uint64_t)(v)) : "memory")
#define csr_clear(csr, v) asm volatile("csrc " #csr ", %0" :: "r"((uint64_t)(v)) : "memory")

extern char m_trap_vector[], s_trap_vector[];

#endif
