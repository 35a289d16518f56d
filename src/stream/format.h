/*
 * Wire format v1 (see docs/stream-format.md, which documents it byte by
 * byte).  All integers are big-endian.
 *
 *   stream   := header config record* EOF
 *   header   := be32 LM_STREAM_MAGIC, be32 LM_STREAM_VERSION
 *   config   := u8 REC_CONFIG, be32 len, config-body (len bytes)
 *   record   := section | command | vmdesc
 *   section  := u8 REC_SECTION_{START|FULL}, be32 id, str8 idstr, be32 instance, be32 version,
 *               payload, be32 id (footer)
 *             | u8 REC_SECTION_{PART|END}, be32 id, payload, be32 id (footer)
 *   payload  := ram-records (section "ram") | be32 len, bytes (devices)
 */
#ifndef LM_STREAM_FORMAT_H
#define LM_STREAM_FORMAT_H

#define LM_STREAM_MAGIC 0x4c4d4947u /* "LMIG" */
#define LM_STREAM_VERSION 1u
/* A stream whose CONFIG has LM_CONFIG_CHECKSUM set says version 2, so a
 * reader that knows only version 1 refuses it instead of misreading the
 * longer RAM records; everything else is the same. */
#define LM_STREAM_VERSION_CHECKSUM 2u

enum lm_record_type {
    LM_REC_CONFIG = 0x01,
    LM_REC_SECTION_START = 0x02,
    LM_REC_SECTION_PART = 0x03,
    LM_REC_SECTION_END = 0x04,
    LM_REC_SECTION_FULL = 0x05,
    LM_REC_EOF = 0x06,
    LM_REC_COMMAND = 0x07,
    LM_REC_VMDESC = 0x08,
};

/* Records inside the "ram" section's payload. */
enum lm_ram_record_type {
    LM_RAM_PAGES = 0x01, /* be16 block, be64 first, be32 count, [be64 csum], count*page_size bytes */
    LM_RAM_ZERO = 0x02,  /* be16 block, be64 first, be32 count, [be64 csum] */
    LM_RAM_EOS = 0x03,   /* end of this section's RAM payload */
    /* Postcopy preempt connection only: be16 block, be64 page, be32 1,
     * page_size bytes: a requested page alone, placed at once, between
     * the records of another host page (docs/stream-format.md §4a). */
    LM_RAM_LONE = 0x06,
    LM_RAM_MULTIFD_SYNC = 0x04, /* be64 seq: every multifd channel's pages before its SYNC seq are loaded */
    LM_RAM_MAPPED_BLOCK = 0x05, /* mapped-ram: be16 block, be32 version, be32 page_size,
                                 * be64 bitmap_offset, be64 pages_offset (stream-format.md §4c) */
};

/* COMMAND records (postcopy control): u8 REC_COMMAND, be16 command,
 * be16 len, len bytes.  See docs/postcopy.md for when each is sent. */
enum lm_command {
    LM_CMD_POSTCOPY_ADVISE = 0x01,  /* be32 flags (LM_ADVISE_*): postcopy may follow */
    LM_CMD_POSTCOPY_DISCARD = 0x02, /* be16 block, be16 n, n x (be64 first, be64 count) */
    LM_CMD_POSTCOPY_LISTEN = 0x03,  /* empty: register guest RAM with userfaultfd */
    LM_CMD_POSTCOPY_RUN = 0x04,     /* empty: start the guest */
    LM_CMD_POSTCOPY_RESUME = 0x05,  /* empty: first record of a recovery stream */
    LM_CMD_MULTIFD_SETUP = 0x06,    /* be16 channels, u8 compression, u8 0, 16-byte id */
    LM_CMD_PING = 0x07,             /* be32 value: PONG(value) once everything before is loaded */
    /* The switchover's accounting (docs/architecture.md, convergence). */
    LM_CMD_DRAIN = 0x10,            /* be32 seq: answer BACKLOG once everything before is placed */
    LM_CMD_SWITCHOVER = 0x11,       /* empty: the source stopped its guest; the blackout began */
};
/* The PINGs postcopy waits for (docs/postcopy.md). */
#define LM_PING_POSTCOPY_ADVISED 1u /* after ADVISE: the destination can do postcopy */
#define LM_PING_DEVICES_LOADED 2u   /* after the device state: postcopy may commit */
#define LM_ADVISE_PREEMPT (1u << 0) /* urgent pages on a second connection */
#define LM_COMMAND_MAX_LEN 65535u
#define LM_DISCARD_MAX_RANGES 4095u /* (65535 - 4) / 16 */

/* Return path (destination -> source) messages: be16 type, be16 len, body. */
enum lm_rp_type {
    LM_RP_SHUT = 0x01,        /* be32 status: 0 = loaded and running, else failure */
    LM_RP_PONG = 0x02,        /* be32 value: the answer to COMMAND PING(value) */
    LM_RP_REQ_PAGES = 0x03,   /* be16 block, be64 first page, be32 count (one host page) */
    LM_RP_RECV_BITMAP = 0x04, /* be16 block, be64 first word, be16 n, n x be64 words */
    LM_RP_RESUME_ACK = 0x05,  /* empty: the bitmaps are sent, resume postcopy */
    LM_RP_SWITCHOVER_ACK = 0x06, /* empty: switchover-ack, every device is ready to switch */
    LM_RP_BACKLOG = 0x10,     /* be32 seq of the PING, be64 bytes received but not yet loaded */
    LM_RP_DOWNTIME = 0x11,    /* the destination's share of the blackout (core/breakdown.h) */
};
#define LM_RP_BITMAP_MAX_WORDS 4096u

/* The postcopy preempt connection opens with be32 magic, be32 version,
 * then carries RAM records (PAGES/ZERO) of requested pages only. */
#define LM_PREEMPT_MAGIC 0x4c4d5043u /* "LMPC" */

/* With checksums, a PAGES record carries a table of its pages' checksums:
 * at most this many pages (the source sends at most 1 MiB per record). */
#define LM_CSUM_MAX_PAGES 1024u

#define LM_RAM_SECTION_IDSTR "ram"
/* Built-in FULL section: the source guest's run state at switchover
 * (payload be32 1, u8 running), so a guest stopped on the source stays
 * stopped on the destination (QEMU's globalstate). */
#define LM_GLOBALSTATE_IDSTR "globalstate"
#define LM_CONFIG_MAX_LEN (1u << 20)
#define LM_DEVICE_CHUNK_MAX (64u << 20)
#define LM_VMDESC_MAX (16u << 20)
#define LM_MAX_SECTIONS 1024u
#define LM_MAX_RAM_BLOCKS 256u
#define LM_UUID_LEN 16

#endif
