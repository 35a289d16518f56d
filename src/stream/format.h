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
    LM_RAM_PAGES = 0x01, /* be16 block, be64 first, be32 count, count*page_size bytes */
    LM_RAM_ZERO = 0x02,  /* be16 block, be64 first, be32 count */
    LM_RAM_EOS = 0x03,   /* end of this section's RAM payload */
};

/* Return path (destination -> source) messages: be16 type, be16 len, body. */
enum lm_rp_type {
    LM_RP_SHUT = 0x01, /* be32 status: 0 = loaded and running, else failure */
    LM_RP_PONG = 0x02,
};

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
