/*
 * Growable public structs (include/livemig/engine.h): the caller says in
 * `struct_size` how many bytes of the struct it knows.  0 stands for the first
 * layout (livemig 0.1): a caller that zeroed the struct before the field
 * existed.  The library reads or writes no byte past the size it settles on.
 * A member added later starts past the previous layout's sizeof, never in
 * its tail padding (an old caller leaves garbage there).
 */
#ifndef LM_COMMON_ABI_H
#define LM_COMMON_ABI_H

#include <stddef.h>

/* The bytes of a struct the library may touch: `given` as the caller set
 * it (0: the first layout, v1), never more than the library's own. */
static inline size_t lm_abi_size(size_t given, size_t v1, size_t current)
{
    size_t n = given ? given : v1;
    return n < current ? n : current;
}

/* The size of a layout that ends with member `last` (the last member of a
 * published version). */
#define LM_ABI_END(type, last) (offsetof(type, last) + sizeof(((type *)0)->last))

#endif
