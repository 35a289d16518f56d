/*
 * The machine's own QMP commands (the migration commands are registered by
 * qmp_register_migration_commands()):
 *
 *   migrate-incoming     replaces the engine's: refused unless the machine
 *                        waits for a migration (--incoming)
 *   stop, cont, quit
 *   query-status         {"running", "singlestep": false, "status"} as QEMU's
 *   x-verify-memory      {"ok", "pages", "mismatches", "message"}: the
 *                        workload's invariant over guest RAM (and vram)
 *   x-query-workload     {"steps", "passes"} summed over the vCPUs
 *   x-query-memory-hash  {"hash": 16 hex digits, "bytes"}: XXH64 of all
 *                        guest RAM blocks in order
 *
 * The checks park the vCPUs while they read guest memory and let them go
 * again afterwards if they ran.
 */
#ifndef LIVEMIG_VM_VM_QMP_H
#define LIVEMIG_VM_VM_QMP_H

#include "qmp/qmp.h"

struct vm;
void vm_qmp_register(struct vm *m, qmp_server *s);

#endif
