/*
 * ns16550a registers.
 */
#include <errno.h>
#include <stdlib.h>

#include "../rv_machine.h"
#include "rv_plic.h"
#include "rv_uart.h"

#define LCR_DLAB 0x80
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define IER_RDI 0x01
#define IER_THRI 0x02
#define IIR_NO_INT 0x01
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define FCR_ENABLE 0x01

static void refill_locked(rv_uart *u)
{
    while (u->rx_count < RV_UART_FIFO) {
        uint8_t b;
        if (rv_chardev_read(u->chr, &b, 1) != 1) {
            break;
        }
        u->rx[(u->rx_head + u->rx_count) % RV_UART_FIFO] = b;
        u->rx_count++;
    }
}

static void update_irq_locked(rv_uart *u)
{
    bool level = ((u->ier & IER_RDI) && u->rx_count > 0) || ((u->ier & IER_THRI) && u->thr_ipending);
    rv_plic_set_irq(u->m->plic, RV_UART_IRQ, level);
}

static uint8_t iir_locked(rv_uart *u)
{
    uint8_t fifo = (u->fcr & FCR_ENABLE) ? 0xc0 : 0;
    if ((u->ier & IER_RDI) && u->rx_count > 0) {
        return fifo | IIR_RDI;
    }
    if ((u->ier & IER_THRI) && u->thr_ipending) {
        return fifo | IIR_THRI;
    }
    return fifo | IIR_NO_INT;
}

void rv_uart_input(void *opaque)
{
    rv_uart *u = opaque;
    pthread_mutex_lock(&u->lock);
    refill_locked(u);
    update_irq_locked(u);
    pthread_mutex_unlock(&u->lock);
}

static uint64_t uart_read(void *opaque, uint64_t off, unsigned size)
{
    rv_uart *u = opaque;
    uint8_t v = 0;

    pthread_mutex_lock(&u->lock);
    switch (off) {
    case 0:
        if (u->lcr & LCR_DLAB) {
            v = u->dll;
        } else {
            refill_locked(u);
            if (u->rx_count > 0) {
                v = u->rx[u->rx_head];
                u->rx_head = (u->rx_head + 1) % RV_UART_FIFO;
                u->rx_count--;
                refill_locked(u);
            }
        }
        break;
    case 1:
        v = (u->lcr & LCR_DLAB) ? u->dlm : u->ier;
        break;
    case 2:
        v = iir_locked(u);
        if ((v & 0x0f) == IIR_THRI) {
            u->thr_ipending = false; /* reading IIR acknowledges THR empty */
        }
        break;
    case 3:
        v = u->lcr;
        break;
    case 4:
        v = u->mcr;
        break;
    case 5:
        refill_locked(u);
        v = LSR_THRE | LSR_TEMT | (u->rx_count > 0 ? LSR_DR : 0);
        break;
    case 6:
        v = 0xb0; /* DCD, DSR, CTS: a connected line */
        break;
    case 7:
        v = u->scr;
        break;
    default:
        break;
    }
    update_irq_locked(u);
    pthread_mutex_unlock(&u->lock);
    return v;
}

static void uart_write(void *opaque, uint64_t off, unsigned size, uint64_t val)
{
    rv_uart *u = opaque;
    uint8_t v = (uint8_t)val;

    pthread_mutex_lock(&u->lock);
    switch (off) {
    case 0:
        if (u->lcr & LCR_DLAB) {
            u->dll = v;
        } else {
            rv_chardev_write(u->chr, v);
            u->thr_ipending = true; /* sent at once: THR empty again */
        }
        break;
    case 1:
        if (u->lcr & LCR_DLAB) {
            u->dlm = v;
        } else {
            if (!(u->ier & IER_THRI) && (v & IER_THRI)) {
                u->thr_ipending = true;
            }
            u->ier = v & 0x0f;
        }
        break;
    case 2:
        u->fcr = v & 0xc9;
        if (v & 0x02) {
            u->rx_head = u->rx_count = 0; /* clear the receive FIFO */
        }
        break;
    case 3:
        u->lcr = v;
        break;
    case 4:
        u->mcr = v & 0x1f;
        break;
    case 7:
        u->scr = v;
        break;
    default:
        break;
    }
    update_irq_locked(u);
    pthread_mutex_unlock(&u->lock);
}

static int uart_post_load(void *opaque, uint32_t version, lm_error *err)
{
    rv_uart *u = opaque;
    if (u->rx_head >= RV_UART_FIFO || u->rx_count > RV_UART_FIFO) {
        return lm_error_set(err, -EINVAL, "uart: receive FIFO head %u count %u", u->rx_head,
                            u->rx_count);
    }
    pthread_mutex_lock(&u->lock);
    update_irq_locked(u);
    pthread_mutex_unlock(&u->lock);
    return 0;
}

static const lm_field uart_fields[] = {
    LM_FIELD_SCALAR(rv_uart, ier, LM_FIELD_U8),
    LM_FIELD_SCALAR(rv_uart, lcr, LM_FIELD_U8),
    LM_FIELD_SCALAR(rv_uart, mcr, LM_FIELD_U8),
    LM_FIELD_SCALAR(rv_uart, scr, LM_FIELD_U8),
    LM_FIELD_SCALAR(rv_uart, dll, LM_FIELD_U8),
    LM_FIELD_SCALAR(rv_uart, dlm, LM_FIELD_U8),
    LM_FIELD_SCALAR(rv_uart, fcr, LM_FIELD_U8),
    LM_FIELD_SCALAR(rv_uart, thr_ipending, LM_FIELD_BOOL),
    LM_FIELD_ARRAY(rv_uart, rx, LM_FIELD_BYTES, RV_UART_FIFO),
    LM_FIELD_SCALAR(rv_uart, rx_head, LM_FIELD_U32),
    LM_FIELD_SCALAR(rv_uart, rx_count, LM_FIELD_U32),
};

static const lm_vmstate uart_vmstate = {
    .name = "riscv-uart",
    .version = 1,
    .min_version = 1,
    .fields = uart_fields,
    .nfields = sizeof(uart_fields) / sizeof(uart_fields[0]),
    .post_load = uart_post_load,
};

int rv_uart_new(struct rv_machine *m, rv_chardev *chr, rv_uart **out, lm_error *err)
{
    rv_uart *u = calloc(1, sizeof(*u));
    if (!u) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    u->m = m;
    u->chr = chr;
    pthread_mutex_init(&u->lock, NULL);
    rv_machine_map(m, RV_UART_BASE, 0x100, uart_read, uart_write, u);
    *out = u;
    return 0;
}

void rv_uart_free(rv_uart *u)
{
    if (u) {
        pthread_mutex_destroy(&u->lock);
        free(u);
    }
}

int rv_uart_register(rv_uart *u, lm_engine *e, lm_error *err)
{
    return lm_engine_add_device(e, "riscv-uart", 0, &uart_vmstate, u, err);
}
