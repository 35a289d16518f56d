/*
 * LM_API marks the functions liblivemig exports.  The library is built
 * with -fvisibility=hidden, so everything else (channels, bitmaps, the
 * stream code) stays internal and may change between versions; a test
 * (tests/api) checks that the shared library exports exactly what the
 * public headers declare.
 */
#ifndef LIVEMIG_API_H
#define LIVEMIG_API_H

#if defined(__GNUC__) || defined(__clang__)
#define LM_API __attribute__((visibility("default")))
#else
#define LM_API
#endif

#endif
