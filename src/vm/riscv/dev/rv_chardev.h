/*
 * The console's host side (--serial): stdout (input from stdin), a file
 * (no input), none, or unix:PATH, a listening socket as QEMU's
 * `-serial unix:PATH,server=on,wait=off`: the connected client gets what
 * the guest prints and what it writes is typed into the guest; while no
 * client is connected, output is kept in a bounded buffer (the newest
 * 64 KiB) and handed to the next client.  One client at a time; another
 * may connect after it leaves.
 *
 * Input waits in a small buffer until the UART takes it (rv_chardev_read);
 * the I/O thread calls the `input` callback when bytes arrive.
 */
#ifndef LIVEMIG_VM_RISCV_CHARDEV_H
#define LIVEMIG_VM_RISCV_CHARDEV_H

#include <stddef.h>
#include <stdint.h>

#include "livemig/error.h"

typedef struct rv_chardev rv_chardev;

int rv_chardev_open(const char *spec, rv_chardev **out, lm_error *err);
void rv_chardev_close(rv_chardev *c);
/* Starts the I/O thread; input(opaque) is called when input arrives. */
int rv_chardev_start(rv_chardev *c, void (*input)(void *opaque), void *opaque, lm_error *err);
void rv_chardev_write(rv_chardev *c, uint8_t byte);
/* Takes up to n typed bytes; returns how many. */
size_t rv_chardev_read(rv_chardev *c, uint8_t *buf, size_t n);

#endif
