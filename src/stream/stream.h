/*
 * Writing and reading the framing of a migration stream: header,
 * configuration, section headers and footers, device payloads, the end
 * marker.  Everything read is validated here or by the caller before use.
 */
#ifndef LM_STREAM_STREAM_H
#define LM_STREAM_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel/channel.h"
#include "livemig/error.h"
#include "stream/format.h"

/* Config flags (be32 in the configuration record). */
#define LM_CONFIG_RETURN_PATH (1u << 0) /* source waits for RP_SHUT */
#define LM_CONFIG_MAPPED_RAM (1u << 1)  /* RAM lies at fixed offsets in the file (§4c) */
#define LM_CONFIG_CHECKSUM (1u << 2)    /* page data carries xxh3 checksums (§4d) */
#define LM_CONFIG_VALIDATE_UUID (1u << 3) /* the source asks that its UUID be checked */

/* A COMMAND record: u8 REC_COMMAND, be16 cmd, be16 len, body (buffered,
 * not flushed). */
int lm_stream_write_command(lm_channel *ch, uint16_t cmd, const void *body, uint16_t len);

int lm_stream_write_header(lm_channel *ch);
/* version: LM_STREAM_VERSION, or LM_STREAM_VERSION_CHECKSUM when the
 * configuration will have LM_CONFIG_CHECKSUM. */
int lm_stream_write_header_version(lm_channel *ch, uint32_t version);
int lm_stream_read_header(lm_channel *ch, lm_error *err);
/* The same, telling which version the stream has. */
int lm_stream_read_header_version(lm_channel *ch, uint32_t *version, lm_error *err);

typedef struct lm_stream_config {
    uint8_t uuid[LM_UUID_LEN];
    uint32_t flags;
} lm_stream_config;

int lm_stream_write_section_full(lm_channel *ch, uint8_t type, uint32_t id, const char *idstr,
                                 uint32_t instance, uint32_t version);
int lm_stream_write_section_short(lm_channel *ch, uint8_t type, uint32_t id);
int lm_stream_write_footer(lm_channel *ch, uint32_t id);
int lm_stream_read_footer(lm_channel *ch, uint32_t id, lm_error *err);
/* Device payloads: be32 length + bytes. */
int lm_stream_write_payload(lm_channel *ch, const void *data, size_t len);

/* Return path messages. */
int lm_rp_write_shut(lm_channel *ch, uint32_t status);
int lm_rp_write_pong(lm_channel *ch, uint32_t value);
/* Reads one message; fills type and (for SHUT and PONG) its value. */
int lm_rp_read(lm_channel *ch, uint16_t *type, uint32_t *status, lm_error *err);
/* Reading them: postcopy/return_path.h (lm_rp_read_msg). */

#endif
