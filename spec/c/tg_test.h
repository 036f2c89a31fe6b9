/*
 * tg_test.h: the few macros the C unit tests share. Each test file is one
 * executable run by ctest; it prints every failure with file:line and ends
 * with "N passed, N failed", exiting 1 on any failure.
 */
#ifndef TG_TEST_H
#define TG_TEST_H

#include <stdio.h>
#include <string.h>

static int tg_test_passed, tg_test_failed;

#define CHECK(cond) do { \
    if (cond) tg_test_passed++; \
    else { tg_test_failed++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_MSG(cond, ...) do { \
    if (cond) tg_test_passed++; \
    else { tg_test_failed++; fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
           fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
} while (0)

#define CHECK_INT(a, b) do { long long _a = (long long)(a), _b = (long long)(b); \
    CHECK_MSG(_a == _b, "%lld != %lld", _a, _b); } while (0)

#define CHECK_STR(a, b) do { const char *_a = (a), *_b = (b); \
    CHECK_MSG(_a && _b && strcmp(_a, _b) == 0, "\"%s\" != \"%s\"", _a ? _a : "(null)", _b ? _b : "(null)"); } while (0)

#define TG_TEST_DONE() do { \
    printf("%d passed, %d failed\n", tg_test_passed, tg_test_failed); \
    return tg_test_failed ? 1 : 0; \
} while (0)

#endif
