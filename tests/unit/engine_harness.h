/*
 * A minimal embedder for engine tests: guest RAM blocks, a writer thread
 * standing in for vCPUs, and the stop/start callbacks.  Used by tests that
 * migrate between two processes without livemig-vm.
 */
#ifndef LM_TEST_ENGINE_HARNESS_H
#define LM_TEST_ENGINE_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "livemig/livemig.h"

typedef struct harness {
    lm_engine *engine;
    uint8_t *ram;
    uint64_t size;
    lm_ram_block *block;
    pthread_t writer;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool run, parked, quit, writer_started;
    uint64_t writes;
    uint64_t seed;
    bool sequential; /* writer touches pages in order instead of at random */
    struct { uint64_t counter; } regs; /* migrates as a device */
} harness;

int harness_init(harness *h, uint64_t size, bool populate);
void harness_start_writer(harness *h);
void harness_destroy(harness *h);
uint64_t harness_hash(const harness *h);
/* Waits until the engine's status is one of completed/failed/cancelled;
 * returns it.  Gives up after timeout_ms with LM_STATUS__COUNT. */
lm_status harness_wait_end(harness *h, unsigned timeout_ms);

#endif
