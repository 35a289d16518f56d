#include <stdint.h>
#include <string.h>

#include "ram/zero.h"

bool lm_buffer_is_zero(const void *p, size_t len)
{
    const uint64_t *w = p;
    /* Non-zero pages usually differ in their first bytes: look there first
     * so the common "data" case costs one cache line. */
    if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) {
        return false;
    }
    size_t n = len / sizeof(uint64_t);
    for (size_t i = 8; i < n; i += 8) {
        /* OR a whole cache line together: the compiler vectorises this. */
        uint64_t acc = w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] |
                       w[i + 6] | w[i + 7];
        if (acc) {
            return false;
        }
    }
    return true;
}
