#include "postcopy/postcopy.h"

int lm_pc_write_command(lm_channel *ch, uint16_t cmd, const void *body, uint16_t len)
{
    lm_channel_put_u8(ch, LM_REC_COMMAND);
    lm_channel_put_be16(ch, cmd);
    lm_channel_put_be16(ch, len);
    return len ? lm_channel_put(ch, body, len) : lm_channel_error(ch, NULL);
}
