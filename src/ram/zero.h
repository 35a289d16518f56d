/* Zero-page detection: the hot check of every page the sender reads. */
#ifndef LM_RAM_ZERO_H
#define LM_RAM_ZERO_H

#include <stdbool.h>
#include <stddef.h>

/* True when len bytes at p (8-byte aligned, len a multiple of 64) are all zero. */
bool lm_buffer_is_zero(const void *p, size_t len);

#endif
