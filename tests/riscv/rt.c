/* Runtime of the bare-metal test programs; see rt.h. */
#include "rt.h"

volatile struct rt_trap_record rt_last_trap;
void (*volatile rt_irq_hook)(uint64_t cause);
static volatile int trap_armed;
static volatile unsigned traps_since_armed;
static int failures;

#define UART_THR 0
#define UART_LSR 5
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

static volatile uint8_t *const uart = (volatile uint8_t *)UART_BASE;

void rt_uart_putc(char c)
{
    while (!(uart[UART_LSR] & LSR_THRE))
        ;
    uart[UART_THR] = (uint8_t)c;
}

static int stdout_putc(char c, FILE *f)
{
    (void)f;
    rt_uart_putc(c);
    return (unsigned char)c;
}

/* picolibc's stdio writes through this stream. */
static FILE uart_stream = FDEV_SETUP_STREAM(stdout_putc, NULL, NULL, _FDEV_SETUP_WRITE);
FILE *const stdout = &uart_stream;
FILE *const stderr = &uart_stream;

void rt_exit(int code)
{
    if (failures && code == 0)
        code = 1;
    printf("exit: %d\n", code);
    while (!(uart[UART_LSR] & LSR_TEMT))
        ;
    volatile uint32_t *fin = (volatile uint32_t *)FINISHER_BASE;
    *fin = code == 0 ? 0x5555 : ((uint32_t)code << 16) | 0x3333;
    for (;;)
        asm volatile("wfi");
}

void rt_fail(const char *why)
{
    printf("FAIL: %s\n", why);
    failures++;
}

void rt_hex(const char *label, uint64_t v)
{
    printf("%s: %016lx\n", label, (unsigned long)v);
}

void rt_check(const char *what, uint64_t got, uint64_t want)
{
    if (got != want) {
        printf("FAIL: %s: got %016lx want %016lx\n", what, (unsigned long)got,
               (unsigned long)want);
        failures++;
    }
}

void rt_expect_trap(void)
{
    traps_since_armed = 0;
    rt_last_trap.cause = rt_last_trap.epc = rt_last_trap.tval = 0;
    rt_last_trap.mode = 0;
    asm volatile("" ::: "memory");
    trap_armed = 1;
}

unsigned rt_traps_taken(void)
{
    trap_armed = 0;
    asm volatile("" ::: "memory");
    return traps_since_armed;
}

void rt_print_trap(const char *what)
{
    unsigned n = rt_traps_taken();
    printf("%s: traps=%u mode=%d cause=%016lx epc=%016lx tval=%016lx\n", what, n,
           rt_last_trap.mode, (unsigned long)rt_last_trap.cause,
           (unsigned long)rt_last_trap.epc, (unsigned long)rt_last_trap.tval);
}

/* Length of the instruction at pc: 2 for compressed, else 4. */
static uint64_t insn_len(uint64_t pc)
{
    uint16_t low = *(volatile uint16_t *)pc;
    return (low & 3) == 3 ? 4 : 2;
}

uint64_t rt_trap(uint64_t cause, uint64_t epc, uint64_t tval, uint64_t *frame, int mode)
{
    int interrupt = (int64_t)cause < 0;
    if (interrupt && rt_irq_hook) {
        rt_last_trap.cause = cause;
        rt_last_trap.epc = epc;
        rt_last_trap.tval = tval;
        rt_last_trap.mode = mode;
        rt_last_trap.count++;
        traps_since_armed++;
        rt_irq_hook(cause);
        return epc;
    }
    if (!trap_armed || interrupt) {
        printf("UNEXPECTED TRAP: mode=%d cause=%016lx epc=%016lx tval=%016lx\n", mode,
               (unsigned long)cause, (unsigned long)epc, (unsigned long)tval);
        rt_exit(2);
    }
    trap_armed = 0;   /* a second trap before rt_traps_taken() is fatal */
    rt_last_trap.cause = cause;
    rt_last_trap.epc = epc;
    rt_last_trap.tval = tval;
    rt_last_trap.mode = mode;
    rt_last_trap.count++;
    traps_since_armed++;
    if ((cause == 8 || cause == 9) && mode == 3 && frame[17] == RT_ECALL_TO_M)
        csr_set(mstatus, 3UL << 11);
    switch (cause) {
    case 0:  /* instruction address misaligned */
    case 1:  /* instruction access fault */
    case 12: /* instruction page fault */
        return frame[1];
    default:
        return epc + insn_len(epc);
    }
}
