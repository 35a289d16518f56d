/*
 * The small machine the stream fuzzer loads into and the seed generator
 * saves from: the same registration on both sides, so a seed is a real
 * stream this machine accepts and the fuzzer starts from deep inside the
 * loader.
 *
 *   ram0  128 KiB, ram1 16 KiB, 4 KiB pages, each between two PROT_NONE
 *         guard pages: a write outside guest RAM kills the run.
 *   dev0  a vmstate device with a field of every type (and one added in
 *         version 2), its state struct fenced by canaries.
 *   iter0 an iterative device whose chunks say where they go in a 3 KiB
 *         buffer (be16 offset, be16 length, bytes); its load refuses a
 *         chunk that would not fit.
 *
 * fm_check() aborts, naming the damage, when a canary or the iterative
 * device's bookkeeping was overwritten: the loader wrote where it must not.
 */
#ifndef LIVEMIG_FUZZ_MACHINE_H
#define LIVEMIG_FUZZ_MACHINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "livemig/livemig.h"

#define FM_PAGE 4096u
#define FM_RAM0_SIZE (128u * 1024u)
#define FM_RAM1_SIZE (16u * 1024u)
#define FM_ITER_SIZE 3072u
#define FM_ITER_CHUNK 1024u
#define FM_CANARY 0x5a5aa5a5deadbeefull

typedef struct fm_dev {
    uint64_t canary_lo;
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    bool flag;
    uint8_t bytes[16];
    uint32_t regs[4];
    uint64_t v2_only; /* carried from version 2 on */
    uint64_t canary_hi;
} fm_dev;

typedef struct fm_iter {
    uint64_t canary_lo;
    uint8_t data[FM_ITER_SIZE];
    uint64_t canary_hi;
    uint32_t sent;    /* source: bytes of data already sent */
    uint32_t loads;   /* destination: chunks loaded */
} fm_iter;

typedef struct fuzz_machine {
    uint8_t *map[2];  /* guard + RAM + guard */
    size_t map_len[2];
    uint8_t *ram[2];
    lm_ram_block *block[2];
    fm_dev dev;
    fm_iter iter;
    bool running;     /* what vm_is_running answers (the source's guest) */
} fuzz_machine;

/* Maps guest RAM (zeroed); NULL on failure. */
fuzz_machine *fm_new(void);
void fm_free(fuzz_machine *m);
/* Zeroes RAM and device state and sets the canaries, for a new run. */
void fm_reset(fuzz_machine *m);
/* Fills the device state from seed (the source side). */
void fm_fill_devices(fuzz_machine *m, unsigned seed);
/* Registers ram0, ram1, dev0 and iter0 with e, in that order. */
int fm_register(fuzz_machine *m, lm_engine *e, lm_error *err);
/* Aborts with a message when something outside guest RAM was damaged. */
void fm_check(const fuzz_machine *m);
/* Callbacks for an engine whose opaque is the machine. */
extern const lm_callbacks fm_callbacks;

#endif
