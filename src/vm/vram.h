/*
 * vram: an iterative device, as a GPU's memory would be.
 *
 * SIZE bytes of process memory (not guest RAM) in 4 KiB chunks, each with a
 * generation number.  While the guest runs, vCPU 0's tick rewrites random
 * chunks with pattern(chunk, gen[chunk]) at a modest rate; the device keeps
 * its own dirty bitmap of chunks and migrates through lm_iter_ops: setup
 * marks everything dirty, every precopy pass sends dirty chunks up to its
 * budget, switchover sends the rest.  A mutex makes mutation and saving
 * safe against each other.
 *
 * Wire format of every buffer this device writes (big-endian), a sequence
 * of records until the buffer ends:
 *   'S' be64 nchunks be32 chunk_size   geometry (save_setup)
 *   'C' be32 index be32 gen  data[4096] one chunk
 *   'R' be64 rng                         the mutator's PRNG (save_complete)
 *   'I'                                  the initial data is sent: every chunk
 *                                        went at least once (switchover-ack only)
 *
 * switchover-ack (QEMU 8.1, as VFIO uses it): on the destination the
 * device holds the switchover until its precopy data is loaded: it
 * approves once it loaded 'I'.  vram_withhold_ack() is a test hook that
 * keeps the approval back (a device that is never ready) until released.
 */
#ifndef LIVEMIG_VM_VRAM_H
#define LIVEMIG_VM_VRAM_H

#include <stdbool.h>
#include <stdint.h>

#include "livemig/engine.h"
#include "vmutil.h"

typedef struct vram vram;

/* rate: bytes/s rewritten while the guest runs (0 = never). */
int vram_new(uint64_t size, uint64_t rate, uint64_t seed, vram **out, lm_error *err);
void vram_free(vram *v);
int vram_register(vram *v, lm_engine *e, lm_error *err);

/* The guest runs (vCPU 0's tick): rewrite what the rate allows by now. */
void vram_tick(vram *v, uint64_t now_ns);
/* Every chunk equals pattern(chunk, gen[chunk]) (gen 0: zero). */
void vram_verify(vram *v, struct vm_verify *res);
/* Test hook: withhold the switchover approval (true) or give it now if
 * it is due (false). */
void vram_withhold_ack(vram *v, bool withhold);

#endif
