/*
 * ns16550a UART at 0x10000000 (PLIC source 10), as QEMU's serial device:
 * transmission is instant (THR is always empty), received bytes wait in a
 * 16-byte FIFO; interrupts for received data and THR empty.  The registers
 * and the receive FIFO migrate; the host side (rv_chardev) does not.
 */
#ifndef LIVEMIG_VM_RISCV_UART_H
#define LIVEMIG_VM_RISCV_UART_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "livemig/engine.h"
#include "rv_chardev.h"

#define RV_UART_FIFO 16

struct rv_machine;

typedef struct rv_uart {
    /* migrated */
    uint8_t ier, lcr, mcr, scr, dll, dlm, fcr;
    bool thr_ipending;
    uint8_t rx[RV_UART_FIFO];
    uint32_t rx_head, rx_count;
    /* host side */
    struct rv_machine *m;
    rv_chardev *chr;
    pthread_mutex_t lock;
} rv_uart;

int rv_uart_new(struct rv_machine *m, rv_chardev *chr, rv_uart **out, lm_error *err);
void rv_uart_free(rv_uart *u);
int rv_uart_register(rv_uart *u, lm_engine *e, lm_error *err);
/* The chardev has input: move what fits into the FIFO. */
void rv_uart_input(void *opaque);

#endif
