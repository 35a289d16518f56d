#include "postcopy/postcopy.h"

#include "stream/stream.h"

int lm_pc_write_command(lm_channel *ch, uint16_t cmd, const void *body, uint16_t len)
{
    return lm_stream_write_command(ch, cmd, body, len);
}
