/*
 * tg_core.h: what every core file shares: the return-code set, string
 * slices and a few small helpers. Nothing here allocates.
 *
 * Return codes (nginx's set): a function returns one of these, never an HTTP
 * status. HTTP statuses travel separately into tg_request_finalize().
 */
#ifndef TG_CORE_H
#define TG_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#define TG_OK        0
#define TG_ERROR    -1
#define TG_AGAIN    -2   /* needs more input / would block; call again */
#define TG_DECLINED -3   /* not mine / not applicable */
#define TG_DONE     -4   /* finished, nothing more to do */

/* A slice: pointer + length, not NUL-terminated. Borrowed: the owner of the
 * memory it points into is stated wherever a slice is stored. */
typedef struct {
    const char *p;
    size_t      len;
} tg_str_t;

#define tg_string(s)     ((tg_str_t){ (s), sizeof(s) - 1 })
#define tg_null_string   ((tg_str_t){ NULL, 0 })
#define tg_nelems(a)     (sizeof(a) / sizeof((a)[0]))
#define tg_min(a, b)     ((a) < (b) ? (a) : (b))
#define tg_max(a, b)     ((a) > (b) ? (a) : (b))
#define tg_unused(x)     ((void)(x))
#define tg_likely(x)     __builtin_expect(!!(x), 1)
#define tg_unlikely(x)   __builtin_expect(!!(x), 0)

static inline int tg_str_eq(tg_str_t a, const char *lit, size_t litlen) {
    return a.len == litlen && memcmp(a.p, lit, litlen) == 0;
}

static inline unsigned char tg_ascii_lower(unsigned char c) {
    return (unsigned char)(c + (((unsigned)(c - 'A') < 26u) << 5));
}

/* Header names are compared per header per request, and most comparisons
 * of equal-length names fail on the first byte: check it before paying
 * strncasecmp's call. */
static inline int tg_str_caseeq(tg_str_t a, const char *lit, size_t litlen) {
    return a.len == litlen
        && (litlen == 0 || tg_ascii_lower((unsigned char)a.p[0]) == tg_ascii_lower((unsigned char)lit[0]))
        && strncasecmp(a.p, lit, litlen) == 0;
}

#define tg_str_eq_lit(s, lit)     tg_str_eq((s), (lit), sizeof(lit) - 1)
#define tg_str_caseeq_lit(s, lit) tg_str_caseeq((s), (lit), sizeof(lit) - 1)

/* Writes v in decimal at p and returns the end: the hot path formats a few
 * numbers per request, and sprintf costs ten times as much. */
static inline char *tg_fmt_uint(char *p, uint64_t v) {
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

#endif
