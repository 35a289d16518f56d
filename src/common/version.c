/* The loaded library's version (include/livemig/version.h). */
#include "livemig/version.h"

const char *lm_version(void)
{
    return LM_VERSION_STRING;
}
