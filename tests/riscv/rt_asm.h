/* Register save/restore for the trap vectors in start.S: frame slot i
 * holds x<i> (slot 0 unused, slot 2 gets the interrupted sp). */
#define FRAME_SIZE (32 * 8)

.macro SAVE_GPRS
    .irp i, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    sd      x\i, \i*8(sp)
    .endr
.endm

.macro RESTORE_GPRS
    .irp i, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      x\i, \i*8(sp)
    .endr
.endm
