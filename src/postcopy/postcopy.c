#include "postcopy/postcopy.h"

int lm_pc_write_command(lm_channel *ch, uint16_t cmd, const void *body, uint16_t len)
{
    lm_channel_put_u8(ch, LM_REC_COMMAND);
    lm_channel_put_be16(ch, cmd);
    lm_channel_put_be16(ch, len);
    return len ? lm_channel_put(ch, body, len) : lm_channel_error(ch, NULL);
}

static inline uint64_t word_mask(uint64_t bit, uint64_t take)
{
    return (take == 64 ? ~0ull : ((1ull << take) - 1)) << bit;
}

uint64_t lm_pc_clear_range(uint64_t *map, uint64_t first, uint64_t n)
{
    uint64_t cleared = 0;
    for (uint64_t p = first, end = first + n; p < end;) {
        uint64_t bit = p % 64, take = 64 - bit < end - p ? 64 - bit : end - p;
        uint64_t mask = word_mask(bit, take);
        uint64_t old = __atomic_fetch_and(&map[p / 64], ~mask, __ATOMIC_ACQ_REL);
        cleared += (uint64_t)__builtin_popcountll(old & mask);
        p += take;
    }
    return cleared;
}

uint64_t lm_pc_set_range(uint64_t *map, uint64_t first, uint64_t n)
{
    uint64_t set = 0;
    for (uint64_t p = first, end = first + n; p < end;) {
        uint64_t bit = p % 64, take = 64 - bit < end - p ? 64 - bit : end - p;
        uint64_t mask = word_mask(bit, take);
        uint64_t old = __atomic_fetch_or(&map[p / 64], mask, __ATOMIC_ACQ_REL);
        set += (uint64_t)__builtin_popcountll(~old & mask);
        p += take;
    }
    return set;
}

bool lm_pc_all_set(const uint64_t *map, uint64_t first, uint64_t n)
{
    for (uint64_t p = first, end = first + n; p < end;) {
        uint64_t bit = p % 64, take = 64 - bit < end - p ? 64 - bit : end - p;
        uint64_t mask = word_mask(bit, take);
        if ((__atomic_load_n(&map[p / 64], __ATOMIC_ACQUIRE) & mask) != mask) {
            return false;
        }
        p += take;
    }
    return true;
}
