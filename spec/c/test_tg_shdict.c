/*
 * test_tg_shdict.c: shared dictionaries (core/tg_shdict.c). Every operation
 * and its edge cases; expiry against an injected clock; LRU eviction order
 * and the SAFE/add refusal to evict; allocator churn of mixed sizes (no
 * "no memory" while live data is well under capacity, and all memory back
 * after deleting everything); exact incr across forked processes; a process
 * SIGKILLed while holding the lock; zones kept across config syncs. Ends
 * with ns/op figures for get/set/incr (information only, never asserted).
 */
#include "tg_shdict.h"
#include "tg_conf.h"
#include "tg_log.h"
#include "tg_test.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KB 1024
#define MB (1024 * 1024)

static uint64_t fake_now = 1000000;
static uint64_t fake_clock(void) { return fake_now; }

/* ---- helpers ---------------------------------------------------------- */

static int set_str(tg_shdict_t *d, int op, const char *k, const char *v, size_t vlen,
                   int64_t ttl, int *forcible, const char **err) {
    return tg_shdict_store(d, op, k, strlen(k), TG_SHDICT_TSTRING, v, vlen, 0, ttl, 0,
                           forcible, err);
}

static int set_num(tg_shdict_t *d, const char *k, double v, int64_t ttl, uint32_t flags) {
    const char *err;
    return tg_shdict_store(d, TG_SHDICT_SET, k, strlen(k), TG_SHDICT_TNUMBER, NULL, 0, v,
                           ttl, flags, NULL, &err);
}

typedef struct {
    int         rc;
    int         type;
    char        small[64];
    char       *str;          /* small, or malloc'ed by tg_shdict_get */
    size_t      len;
    double      num;
    uint32_t    flags;
    int         stale;
    const char *err;
} got_t;

static void get_k(tg_shdict_t *d, const char *k, size_t klen, int stale, got_t *g) {
    g->str = g->small;
    g->len = sizeof(g->small);
    g->num = -1;
    g->err = NULL;
    g->rc = tg_shdict_get(d, k, klen, &g->type, &g->str, &g->len, &g->num, &g->flags,
                          stale, &g->stale, &g->err);
}

static void got_free(got_t *g) {
    if (g->str != g->small) tg_shdict_free_buf(g->str);
    g->str = g->small;
}

static void get(tg_shdict_t *d, const char *k, got_t *g) {
    get_k(d, k, strlen(k), 0, g);
}

static int exists(tg_shdict_t *d, const char *k) {
    got_t g;
    get(d, k, &g);
    got_free(&g);
    return g.rc == TG_OK && g.type != TG_SHDICT_TNIL;
}

static double get_num(tg_shdict_t *d, const char *k) {
    got_t g;
    get(d, k, &g);
    return g.type == TG_SHDICT_TNUMBER ? g.num : -12345;
}

static int count_keys(tg_shdict_t *d) {
    char *buf;
    size_t len;
    int n;
    const char *err;
    tg_shdict_get_keys(d, 0, &buf, &len, &n, &err);
    tg_shdict_free_buf(buf);
    return n;
}

static tg_shdict_t *zone(const char *name, size_t size) {
    const char *err = NULL;
    tg_shdict_t *d = tg_shdict_create(name, size, &err);
    CHECK_MSG(d != NULL, "create %s: %s", name, err ? err : "");
    return d;
}

/* ---- values, keys, errors -------------------------------------------- */

static void test_basic(void) {
    tg_shdict_t *d = zone("basic", 256 * KB);
    size_t initial = tg_shdict_free_space(d);
    const char *err;
    got_t g;

    CHECK_STR(tg_shdict_name(d), "basic");
    CHECK_INT(tg_shdict_capacity(d), 256 * KB);
    CHECK(initial > 200 * KB && initial < 256 * KB);

    get(d, "missing", &g);
    CHECK_INT(g.rc, TG_OK);
    CHECK_INT(g.type, TG_SHDICT_TNIL);

    /* Strings, binary-safe keys and values. */
    CHECK_INT(set_str(d, TG_SHDICT_SET, "a", "hello", 5, 0, NULL, &err), TG_OK);
    get(d, "a", &g);
    CHECK_INT(g.type, TG_SHDICT_TSTRING);
    CHECK_INT(g.len, 5);
    CHECK(memcmp(g.str, "hello", 5) == 0);
    CHECK_INT(g.flags, 0);

    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, "k\0x", 3, TG_SHDICT_TSTRING, "v\0w", 3, 0,
                              0, 0, NULL, &err), TG_OK);
    get_k(d, "k\0x", 3, 0, &g);
    CHECK_INT(g.type, TG_SHDICT_TSTRING);
    CHECK(g.len == 3 && memcmp(g.str, "v\0w", 3) == 0);
    get_k(d, "k", 1, 0, &g);
    CHECK_INT(g.type, TG_SHDICT_TNIL);
    get_k(d, "k\0y", 3, 0, &g);
    CHECK_INT(g.type, TG_SHDICT_TNIL);

    CHECK_INT(set_str(d, TG_SHDICT_SET, "empty", "", 0, 0, NULL, &err), TG_OK);
    get(d, "empty", &g);
    CHECK(g.type == TG_SHDICT_TSTRING && g.len == 0);

    /* Numbers, booleans, flags. */
    CHECK_INT(set_num(d, "n", 3.5, 0, 7), TG_OK);
    get(d, "n", &g);
    CHECK(g.type == TG_SHDICT_TNUMBER && g.num == 3.5 && g.flags == 7);
    CHECK_INT(set_num(d, "n", -1e300, 0, 0xffffffffu), TG_OK);
    get(d, "n", &g);
    CHECK(g.num == -1e300 && g.flags == 0xffffffffu);
    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, "t", 1, TG_SHDICT_TBOOLEAN, NULL, 0, 1, 0, 0,
                              NULL, &err), TG_OK);
    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, "f", 1, TG_SHDICT_TBOOLEAN, NULL, 0, 0, 0, 0,
                              NULL, &err), TG_OK);
    get(d, "t", &g);
    CHECK(g.type == TG_SHDICT_TBOOLEAN && g.num == 1);
    get(d, "f", &g);
    CHECK(g.type == TG_SHDICT_TBOOLEAN && g.num == 0);

    /* Overwrites change type and size both ways; in place when it fits. */
    char big[3000];
    memset(big, 'b', sizeof(big));
    CHECK_INT(set_str(d, TG_SHDICT_SET, "a", big, sizeof(big), 0, NULL, &err), TG_OK);
    get(d, "a", &g);
    CHECK(g.str != g.small && g.len == sizeof(big) && memcmp(g.str, big, sizeof(big)) == 0);
    got_free(&g);
    CHECK_INT(set_str(d, TG_SHDICT_SET, "a", "xy", 2, 0, NULL, &err), TG_OK);
    get(d, "a", &g);
    CHECK(g.len == 2 && memcmp(g.str, "xy", 2) == 0);
    CHECK_INT(set_num(d, "a", 42, 0, 0), TG_OK);
    CHECK(get_num(d, "a") == 42);
    CHECK_INT(set_str(d, TG_SHDICT_SET, "a", "again", 5, 0, NULL, &err), TG_OK);
    get(d, "a", &g);
    CHECK(g.type == TG_SHDICT_TSTRING && g.len == 5);

    /* Delete, and nil = delete for set. */
    CHECK_INT(tg_shdict_delete(d, "a", 1, &err), TG_OK);
    CHECK(!exists(d, "a"));
    CHECK_INT(tg_shdict_delete(d, "a", 1, &err), TG_OK);
    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, "n", 1, TG_SHDICT_TNIL, NULL, 0, 0, 0, 0,
                              NULL, &err), TG_OK);
    CHECK(!exists(d, "n"));

    /* Keys: 1..65535 bytes. */
    char *longkey = malloc(TG_SHDICT_KEY_MAX + 1);
    memset(longkey, 'k', TG_SHDICT_KEY_MAX + 1);
    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, longkey, TG_SHDICT_KEY_MAX, TG_SHDICT_TNUMBER,
                              NULL, 0, 1, 0, 0, NULL, &err), TG_OK);
    get_k(d, longkey, TG_SHDICT_KEY_MAX, 0, &g);
    CHECK(g.type == TG_SHDICT_TNUMBER && g.num == 1);
    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, longkey, TG_SHDICT_KEY_MAX + 1,
                              TG_SHDICT_TNUMBER, NULL, 0, 1, 0, 0, NULL, &err), TG_ERROR);
    CHECK_STR(err, "key too long");
    get_k(d, longkey, TG_SHDICT_KEY_MAX + 1, 0, &g);
    CHECK(g.rc == TG_ERROR && strcmp(g.err, "key too long") == 0);
    CHECK_INT(tg_shdict_delete(d, longkey, TG_SHDICT_KEY_MAX, &err), TG_OK);
    free(longkey);

    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, "", 0, TG_SHDICT_TNUMBER, NULL, 0, 1, 0, 0,
                              NULL, &err), TG_ERROR);
    CHECK_STR(err, "empty key");
    get_k(d, "", 0, 0, &g);
    CHECK(g.rc == TG_ERROR && strcmp(g.err, "empty key") == 0);
    double v = 1;
    CHECK_INT(tg_shdict_incr(d, "", 0, &v, 0, 0, 0, NULL, &err), TG_ERROR);
    CHECK_STR(err, "empty key");

    /* Bad arguments. */
    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, "x", 1, 9, NULL, 0, 0, 0, 0, NULL, &err), TG_ERROR);
    CHECK_STR(err, "bad value type");
    CHECK_INT(tg_shdict_store(d, TG_SHDICT_ADD, "x", 1, TG_SHDICT_TNIL, NULL, 0, 0, 0, 0, NULL,
                              &err), TG_ERROR);
    CHECK_STR(err, "bad value type");
    CHECK_INT(set_str(d, TG_SHDICT_SET, "x", "v", 1, -1, NULL, &err), TG_ERROR);
    CHECK_STR(err, "bad ttl");

    /* A value larger than the zone: no memory, even with eviction. */
    char *huge = calloc(1, 300 * KB);
    int forcible = 0;
    CHECK_INT(set_str(d, TG_SHDICT_SET, "huge", huge, 300 * KB, 0, &forcible, &err), TG_ERROR);
    CHECK_STR(err, "no memory");
    free(huge);

    /* Everything freed: all memory is back in one piece. */
    tg_shdict_flush_all(d);
    CHECK_INT(tg_shdict_free_space(d), initial);
    CHECK_INT(count_keys(d), 0);
    tg_shdict_destroy(d);
}

static void test_add_replace(void) {
    tg_shdict_t *d = zone("addrep", 64 * KB);
    const char *err;
    got_t g;

    CHECK_INT(set_str(d, TG_SHDICT_ADD, "k", "1", 1, 0, NULL, &err), TG_OK);
    CHECK_INT(set_str(d, TG_SHDICT_ADD, "k", "2", 1, 0, NULL, &err), TG_DECLINED);
    CHECK_STR(err, "exists");
    CHECK_INT(set_str(d, TG_SHDICT_ADD | TG_SHDICT_SAFE, "k", "2", 1, 0, NULL, &err), TG_DECLINED);
    CHECK_STR(err, "exists");
    get(d, "k", &g);
    CHECK(g.len == 1 && g.str[0] == '1');

    CHECK_INT(set_str(d, TG_SHDICT_REPLACE, "nope", "1", 1, 0, NULL, &err), TG_DECLINED);
    CHECK_STR(err, "not found");
    CHECK(!exists(d, "nope"));
    CHECK_INT(set_str(d, TG_SHDICT_REPLACE, "k", "333", 3, 0, NULL, &err), TG_OK);
    get(d, "k", &g);
    CHECK(g.len == 3 && memcmp(g.str, "333", 3) == 0);
    CHECK_INT(set_str(d, TG_SHDICT_SAFE, "s", "1", 1, 0, NULL, &err), TG_OK);
    CHECK(exists(d, "s"));
    tg_shdict_destroy(d);
}

/* ---- expiry (injected clock) ----------------------------------------- */

static void test_expiry(void) {
    tg_shdict_t *d = zone("expiry", 256 * KB);
    const char *err;
    int64_t ttl;
    got_t g;
    double v;

    tg_shdict_set_clock(fake_clock);
    fake_now = 1000000;

    CHECK_INT(set_str(d, TG_SHDICT_SET, "k", "val", 3, 100, NULL, &err), TG_OK);
    CHECK_INT(tg_shdict_ttl(d, "k", 1, &ttl, &err), TG_OK);
    CHECK_INT(ttl, 100);
    fake_now += 99;
    CHECK(exists(d, "k"));
    CHECK_INT(tg_shdict_ttl(d, "k", 1, &ttl, &err), TG_OK);
    CHECK_INT(ttl, 1);
    fake_now += 1;
    CHECK(!exists(d, "k"));
    CHECK_INT(tg_shdict_ttl(d, "k", 1, &ttl, &err), TG_DECLINED);
    CHECK_STR(err, "not found");
    CHECK_INT(tg_shdict_expire(d, "k", 1, 10, &err), TG_DECLINED);

    /* get_stale still sees it, flagged. */
    get_k(d, "k", 1, 1, &g);
    CHECK(g.type == TG_SHDICT_TSTRING && g.len == 3 && g.stale == 1);
    CHECK_INT(set_str(d, TG_SHDICT_SET, "live", "x", 1, 0, NULL, &err), TG_OK);
    get_k(d, "live", 4, 1, &g);
    CHECK(g.type == TG_SHDICT_TSTRING && g.stale == 0);

    /* Expired counts as missing for replace and add. */
    CHECK_INT(set_str(d, TG_SHDICT_REPLACE, "k", "r", 1, 0, NULL, &err), TG_DECLINED);
    CHECK_INT(set_str(d, TG_SHDICT_ADD, "k", "a", 1, 0, NULL, &err), TG_OK);
    get(d, "k", &g);
    CHECK(g.len == 1 && g.str[0] == 'a');
    CHECK_INT(tg_shdict_ttl(d, "k", 1, &ttl, &err), TG_OK);
    CHECK_INT(ttl, 0);                          /* add without ttl: never */

    /* expire() sets and clears a TTL. */
    CHECK_INT(tg_shdict_expire(d, "k", 1, 500, &err), TG_OK);
    CHECK_INT(tg_shdict_ttl(d, "k", 1, &ttl, &err), TG_OK);
    CHECK_INT(ttl, 500);
    fake_now += 300;
    CHECK_INT(tg_shdict_expire(d, "k", 1, 0, &err), TG_OK);
    fake_now += 100000;
    CHECK(exists(d, "k"));
    CHECK_INT(tg_shdict_expire(d, "k", 1, -5, &err), TG_ERROR);
    CHECK_STR(err, "bad ttl");

    /* incr on an expired counter: "not found" without init, else restart. */
    CHECK_INT(set_num(d, "c", 10, 50, 3), TG_OK);
    fake_now += 50;
    v = 1;
    CHECK_INT(tg_shdict_incr(d, "c", 1, &v, 0, 0, 0, NULL, &err), TG_DECLINED);
    CHECK_STR(err, "not found");
    v = 1;
    CHECK_INT(tg_shdict_incr(d, "c", 1, &v, 1, 100, 20, NULL, &err), TG_OK);
    CHECK(v == 101);
    get(d, "c", &g);
    CHECK(g.num == 101 && g.flags == 0);
    CHECK_INT(tg_shdict_ttl(d, "c", 1, &ttl, &err), TG_OK);
    CHECK_INT(ttl, 20);
    /* An expired string under the key is replaced by the new counter. */
    CHECK_INT(set_str(d, TG_SHDICT_SET, "s", "str", 3, 10, NULL, &err), TG_OK);
    fake_now += 10;
    v = 2;
    CHECK_INT(tg_shdict_incr(d, "s", 1, &v, 1, 0, 0, NULL, &err), TG_OK);
    CHECK(v == 2 && get_num(d, "s") == 2);

    /* flush_expired with and without a limit; get_keys skips expired. */
    tg_shdict_flush_all(d);
    char k[32];
    for (int i = 0; i < 10; i++) {
        snprintf(k, sizeof(k), "exp%d", i);
        CHECK_INT(set_num(d, k, i, 10, 0), TG_OK);
    }
    for (int i = 0; i < 5; i++) {
        snprintf(k, sizeof(k), "keep%d", i);
        CHECK_INT(set_num(d, k, i, 0, 0), TG_OK);
    }
    CHECK_INT(count_keys(d), 15);
    fake_now += 10;
    CHECK_INT(count_keys(d), 5);
    CHECK_INT(tg_shdict_flush_expired(d, 3), 3);
    CHECK_INT(tg_shdict_flush_expired(d, 0), 7);
    CHECK_INT(tg_shdict_flush_expired(d, 0), 0);
    get_k(d, "exp1", 4, 1, &g);
    CHECK_INT(g.type, TG_SHDICT_TNIL);          /* really gone now */
    CHECK_INT(count_keys(d), 5);

    tg_shdict_set_clock(NULL);
    tg_shdict_destroy(d);
}

/* ---- incr --------------------------------------------------------------- */

static void test_incr(void) {
    tg_shdict_t *d = zone("incr", 64 * KB);
    const char *err;
    int64_t ttl;
    double v;

    tg_shdict_set_clock(fake_clock);
    v = 1;
    CHECK_INT(tg_shdict_incr(d, "n", 1, &v, 0, 0, 0, NULL, &err), TG_DECLINED);
    CHECK_STR(err, "not found");
    CHECK(!exists(d, "n"));

    v = 1;
    CHECK_INT(tg_shdict_incr(d, "n", 1, &v, 1, 10, 0, NULL, &err), TG_OK);
    CHECK(v == 11);
    v = 1;
    CHECK_INT(tg_shdict_incr(d, "n", 1, &v, 0, 0, 0, NULL, &err), TG_OK);
    CHECK(v == 12);
    v = -2.5;
    CHECK_INT(tg_shdict_incr(d, "n", 1, &v, 1, 1000, 5, NULL, &err), TG_OK);
    CHECK(v == 9.5);                            /* init and init_ttl ignored */
    CHECK_INT(tg_shdict_ttl(d, "n", 1, &ttl, &err), TG_OK);
    CHECK_INT(ttl, 0);

    /* A live key keeps its TTL and flags. */
    CHECK_INT(set_num(d, "t", 1, 1000, 9), TG_OK);
    fake_now += 400;
    v = 1;
    CHECK_INT(tg_shdict_incr(d, "t", 1, &v, 1, 0, 5, NULL, &err), TG_OK);
    CHECK(v == 2);
    CHECK_INT(tg_shdict_ttl(d, "t", 1, &ttl, &err), TG_OK);
    CHECK_INT(ttl, 600);
    got_t g;
    get(d, "t", &g);
    CHECK_INT(g.flags, 9);

    /* Not a number. */
    CHECK_INT(set_str(d, TG_SHDICT_SET, "s", "12", 2, 0, NULL, &err), TG_OK);
    v = 1;
    CHECK_INT(tg_shdict_incr(d, "s", 1, &v, 1, 0, 0, NULL, &err), TG_DECLINED);
    CHECK_STR(err, "not a number");
    CHECK_INT(tg_shdict_store(d, TG_SHDICT_SET, "b", 1, TG_SHDICT_TBOOLEAN, NULL, 0, 1, 0, 0,
                              NULL, &err), TG_OK);
    CHECK_INT(tg_shdict_incr(d, "b", 1, &v, 0, 0, 0, NULL, &err), TG_DECLINED);
    CHECK_STR(err, "not a number");
    CHECK_INT(tg_shdict_incr(d, "n", 1, &v, 1, 0, -1, NULL, &err), TG_ERROR);
    CHECK_STR(err, "bad ttl");

    tg_shdict_set_clock(NULL);
    tg_shdict_destroy(d);
}

/* ---- eviction ----------------------------------------------------------- */

#define VAL 200

static int fill_safe(tg_shdict_t *d, const char *prefix) {
    char k[32], v[VAL];
    const char *err;
    int n = 0;
    memset(v, 'v', sizeof(v));
    for (;;) {
        snprintf(k, sizeof(k), "%s%d", prefix, n);
        if (set_str(d, TG_SHDICT_SAFE, k, v, sizeof(v), 0, NULL, &err) != TG_OK) break;
        n++;
    }
    CHECK_STR(err, "no memory");
    return n;
}

static void test_lru(void) {
    tg_shdict_t *d = zone("lru", 64 * KB);
    char k[32], v[VAL];
    const char *err;
    int forcible;

    memset(v, 'w', sizeof(v));
    int n = fill_safe(d, "k");
    CHECK_MSG(n > 150 && n < 300, "%d entries of %d bytes in 64k", n, VAL);

    /* Full: add and safe_set refuse to evict, and nothing is lost. */
    forcible = 0;
    CHECK_INT(set_str(d, TG_SHDICT_ADD, "new", v, sizeof(v), 0, &forcible, &err), TG_ERROR);
    CHECK_STR(err, "no memory");
    CHECK_INT(forcible, 0);
    CHECK_INT(set_str(d, TG_SHDICT_SAFE, "new", v, sizeof(v), 0, &forcible, &err), TG_ERROR);
    CHECK_INT(set_str(d, TG_SHDICT_ADD | TG_SHDICT_SAFE, "new", v, sizeof(v), 0, &forcible, &err),
              TG_ERROR);
    CHECK_INT(count_keys(d), n);
    CHECK(exists(d, "k0"));

    /* Read k0 and k1: they become the most recent. Then 10 plain sets evict
     * the oldest others, k2 first, one each (same sizes), and say so. */
    CHECK(exists(d, "k1"));
    for (int i = 0; i < 10; i++) {
        snprintf(k, sizeof(k), "x%d", i);
        forcible = 0;
        CHECK_INT(set_str(d, TG_SHDICT_SET, k, v, sizeof(v), 0, &forcible, &err), TG_OK);
        CHECK_INT(forcible, 1);
    }
    CHECK(exists(d, "k0"));
    CHECK(exists(d, "k1"));
    int evicted = 0, first_kept = -1;
    for (int i = 2; i < n; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        if (!exists(d, k)) {
            evicted++;
            CHECK_MSG(first_kept < 0, "k%d evicted after k%d was kept", i, first_kept);
        } else if (first_kept < 0) {
            first_kept = i;
        }
    }
    CHECK_MSG(evicted >= 10 && evicted <= 12, "%d evicted for 10 sets", evicted);
    for (int i = 0; i < 10; i++) {
        snprintf(k, sizeof(k), "x%d", i);
        CHECK(exists(d, k));
    }
    snprintf(k, sizeof(k), "k%d", n - 1);
    CHECK(exists(d, k));

    /* incr with init evicts too, and says so. */
    double one = 1;
    forcible = 0;
    CHECK_INT(tg_shdict_incr(d, "ctr-with-a-long-key-name-to-need-a-bigger-block", 47, &one,
                             1, 0, 0, &forcible, &err), TG_OK);
    CHECK_INT(forcible, 1);

    /* Expired entries go first, without "forcible". */
    tg_shdict_flush_all(d);
    tg_shdict_set_clock(fake_clock);
    n = 0;
    for (;;) {
        snprintf(k, sizeof(k), "e%d", n);
        if (set_str(d, TG_SHDICT_SAFE, k, v, sizeof(v), n % 2 ? 100 : 0, NULL, &err) != TG_OK)
            break;
        n++;
    }
    fake_now += 100;
    for (int i = 0; i < 5; i++) {
        snprintf(k, sizeof(k), "y%d", i);
        forcible = 0;
        CHECK_INT(set_str(d, TG_SHDICT_SAFE, k, v, sizeof(v), 0, &forcible, &err), TG_OK);
        CHECK_INT(forcible, 0);
    }
    int live_lost = 0;
    for (int i = 0; i < n; i += 2) {
        snprintf(k, sizeof(k), "e%d", i);
        live_lost += !exists(d, k);
    }
    CHECK_INT(live_lost, 0);
    tg_shdict_set_clock(NULL);
    tg_shdict_destroy(d);
}

/* ---- allocator churn ---------------------------------------------------- */

#define CHURN_KEYS 2000
#define CHURN_OPS  200000

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* Mixed sizes: many small, some medium, a few large. */
static size_t churn_size(void) {
    uint32_t r = rnd() % 100;
    if (r < 60) return 1 + rnd() % 100;
    if (r < 90) return 100 + rnd() % 900;
    return 1000 + rnd() % 7000;
}

static void fill_pattern(char *v, size_t len, uint32_t seed) {
    for (size_t i = 0; i < len; i++) v[i] = (char)(seed + i * 31);
}

static void test_churn(void) {
    tg_shdict_t *d = zone("churn", 1 * MB);
    size_t initial = tg_shdict_free_space(d);
    size_t budget = 1 * MB / 2;     /* live data (with entry overhead) at most half */
    static size_t len[CHURN_KEYS];
    static uint32_t seed[CHURN_KEYS];
    static char val[8192];
    size_t live = 0, peak = 0;
    int fails = 0, forced = 0, sets = 0;
    const char *err;
    char k[32];

    memset(len, 0xff, sizeof(len));         /* SIZE_MAX = absent */
    for (int op = 0; op < CHURN_OPS; op++) {
        int i = (int)(rnd() % CHURN_KEYS);
        snprintf(k, sizeof(k), "churn:%d", i);
        size_t cost = len[i] == SIZE_MAX ? 0 : len[i] + 64 + strlen(k);
        size_t sz = churn_size();
        size_t ncost = sz + 64 + strlen(k);
        if (rnd() % 3 == 0 || live - cost + ncost > budget) {
            fails += tg_shdict_delete(d, k, strlen(k), &err) != TG_OK;
            live -= cost;
            len[i] = SIZE_MAX;
            continue;
        }
        seed[i] = rnd();
        fill_pattern(val, sz, seed[i]);
        int forcible = 0;
        sets++;
        if (set_str(d, TG_SHDICT_SAFE, k, val, sz, 0, &forcible, &err) != TG_OK) {
            if (fails++ < 5) fprintf(stderr, "churn op %d: set %zu bytes with %zu live: %s\n",
                                     op, sz, live, err);
            live -= cost;
            len[i] = SIZE_MAX;
            continue;
        }
        forced += forcible;
        live += ncost - cost;
        len[i] = sz;
        if (live > peak) peak = live;
    }
    CHECK_MSG(fails == 0, "%d of %d sets and deletes failed", fails, sets);
    CHECK_INT(forced, 0);
    CHECK_MSG(peak > budget * 9 / 10, "peak live %zu never neared the budget %zu", peak, budget);

    /* Every live value intact. */
    int bad = 0, nlive = 0;
    for (int i = 0; i < CHURN_KEYS; i++) {
        snprintf(k, sizeof(k), "churn:%d", i);
        got_t g;
        get(d, k, &g);
        if (len[i] == SIZE_MAX) {
            bad += g.type != TG_SHDICT_TNIL;
        } else {
            nlive++;
            fill_pattern(val, len[i], seed[i]);
            bad += g.type != TG_SHDICT_TSTRING || g.len != len[i] || memcmp(g.str, val, len[i]);
        }
        got_free(&g);
    }
    CHECK_INT(bad, 0);
    CHECK_INT(count_keys(d), nlive);

    /* Delete one by one: every byte coalesces back into one block. */
    for (int i = 0; i < CHURN_KEYS; i++) {
        snprintf(k, sizeof(k), "churn:%d", i);
        tg_shdict_delete(d, k, strlen(k), &err);
    }
    CHECK_INT(tg_shdict_free_space(d), initial);
    char *whole = calloc(1, initial - 256);
    CHECK_INT(set_str(d, TG_SHDICT_SAFE, "whole", whole, initial - 256, 0, NULL, &err), TG_OK);
    free(whole);
    printf("churn: %d ops, %d sets, peak live %zu of %d bytes, 0 \"no memory\" expected, %d seen\n",
           CHURN_OPS, sets, peak, 1 * MB, fails);
    tg_shdict_destroy(d);
}

/* ---- across processes --------------------------------------------------- */

#define NCHILD   4
#define NINCR    50000

static int wait_children(pid_t *pids, int n) {
    int ok = 1;
    for (int i = 0; i < n; i++) {
        int st;
        if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ok = 0;
    }
    return ok;
}

static void test_processes(void) {
    tg_shdict_t *d = zone("procs", 1 * MB);
    pid_t pids[NCHILD];
    const char *err;

    /* One hot key. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int c = 0; c < NCHILD; c++) {
        pids[c] = fork();
        if (pids[c] == 0) {
            int ok = 1;
            for (int i = 0; i < NINCR; i++) {
                double v = 1;
                const char *e;
                ok &= tg_shdict_incr(d, "hits", 4, &v, 1, 0, 0, NULL, &e) == TG_OK;
            }
            _exit(ok ? 0 : 1);
        }
    }
    CHECK(wait_children(pids, NCHILD));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(get_num(d, "hits") == NCHILD * NINCR);
    printf("contended incr: %d processes x %d on one key in %.0f ms\n", NCHILD, NINCR,
           ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 1e6);

    /* Several keys, with set/delete churn of other keys at the same time. */
    for (int c = 0; c < NCHILD; c++) {
        pids[c] = fork();
        if (pids[c] == 0) {
            int ok = 1;
            char k[32], v[600];
            memset(v, c, sizeof(v));
            for (int i = 0; i < NINCR; i++) {
                double one = 1;
                const char *e;
                snprintf(k, sizeof(k), "key%d", i % 8);
                ok &= tg_shdict_incr(d, k, strlen(k), &one, 1, 0, 0, NULL, &e) == TG_OK;
                if (i % 4 == 0) {
                    snprintf(k, sizeof(k), "junk%d:%d", c, i % 100);
                    if (i % 8 == 0) ok &= tg_shdict_delete(d, k, strlen(k), &e) == TG_OK;
                    else ok &= set_str(d, TG_SHDICT_SAFE, k, v, 1 + (size_t)i % sizeof(v), 0,
                                       NULL, &e) == TG_OK;
                }
            }
            _exit(ok ? 0 : 1);
        }
    }
    CHECK(wait_children(pids, NCHILD));
    for (int i = 0; i < 8; i++) {
        char k[32];
        snprintf(k, sizeof(k), "key%d", i);
        CHECK_MSG(get_num(d, k) == NCHILD * NINCR / 8, "%s = %.0f", k, get_num(d, k));
    }
    CHECK_INT(tg_shdict_delete(d, "hits", 4, &err), TG_OK);
    tg_shdict_destroy(d);
}

/* A child takes the lock as if in the middle of an operation and is
 * SIGKILLed: the parent's next operation must go through. alarm() turns a
 * deadlock into a failed test run instead of a hang. */
static pid_t child_holding_lock(tg_shdict_t *d, int dirty) {
    int p[2];
    char c;
    if (pipe(p) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        tg_shdict_test_lock(d, dirty);
        if (write(p[1], "x", 1) != 1) _exit(1);
        for (;;) pause();
    }
    close(p[1]);
    CHECK_INT(read(p[0], &c, 1), 1);
    close(p[0]);
    return pid;
}

static void test_robust(void) {
    tg_shdict_t *d = zone("robust", 64 * KB);
    size_t initial = tg_shdict_free_space(d);
    const char *err;
    int st;

    alarm(30);
    CHECK_INT(set_num(d, "keep", 42, 0, 0), TG_OK);

    /* Died holding the lock, zone untouched: data kept. */
    pid_t pid = child_holding_lock(d, 0);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    CHECK(get_num(d, "keep") == 42);
    CHECK_INT(set_num(d, "after", 1, 0, 0), TG_OK);

    /* Another process already waiting for the lock when the owner dies. */
    pid = child_holding_lock(d, 0);
    pid_t waiter = fork();
    if (waiter == 0) {
        double v = 1;
        const char *e;
        _exit(tg_shdict_incr(d, "keep", 4, &v, 0, 0, 0, NULL, &e) == TG_OK && v == 43 ? 0 : 1);
    }
    usleep(50 * 1000);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    CHECK(wait_children(&waiter, 1));
    CHECK(get_num(d, "keep") == 43);

    /* Died in the middle of a change: the zone is reset, then works. */
    pid = child_holding_lock(d, 1);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    CHECK(!exists(d, "keep"));
    CHECK_INT(tg_shdict_free_space(d), initial);
    CHECK_INT(set_num(d, "keep", 1, 0, 0), TG_OK);
    CHECK(get_num(d, "keep") == 1);
    CHECK_INT(tg_shdict_delete(d, "keep", 4, &err), TG_OK);
    alarm(0);
    tg_shdict_destroy(d);
}

/* ---- zones from the config --------------------------------------------- */

static tg_conf_t *conf_with(const char *dicts) {
    char yaml[512];
    tg_conf_errors_t errs = { 0 };
    snprintf(yaml, sizeof(yaml), "listen: [\"127.0.0.1:8080\"]\nshared_dicts: %s\n", dicts);
    tg_conf_t *conf = tg_conf_load_string("test", yaml, strlen(yaml), &errs);
    CHECK_MSG(conf != NULL, "%s", errs.n ? errs.msg[0] : "?");
    tg_conf_errors_free(&errs);
    return conf;
}

static int sync_conf(const char *dicts, char *firsterr, size_t len) {
    tg_conf_t *conf = conf_with(dicts);
    tg_conf_errors_t errs = { 0 };
    int rc = tg_shdict_zones_sync(conf, &errs);
    if (firsterr) snprintf(firsterr, len, "%s", errs.n ? errs.msg[0] : "");
    tg_conf_errors_free(&errs);
    tg_conf_unref(conf);
    return rc;
}

static void test_zones_sync(void) {
    char err[256];
    CHECK(tg_shdict_find("ratelimit", 9) == NULL);

    CHECK_INT(sync_conf("{ ratelimit: 64k, cache: 128k }", NULL, 0), TG_OK);
    tg_shdict_t *rl = tg_shdict_find("ratelimit", 9);
    tg_shdict_t *cache = tg_shdict_find("cache", 5);
    CHECK(rl != NULL && cache != NULL && rl != cache);
    CHECK_INT(tg_shdict_capacity(rl), 64 * KB);
    CHECK_INT(tg_shdict_capacity(cache), 128 * KB);
    CHECK(tg_shdict_find("ratelimitXYZ", 9) == rl);     /* length, not NUL */
    CHECK(tg_shdict_find("ratelimit", 8) == NULL);
    CHECK(tg_shdict_find("nope", 4) == NULL);
    CHECK_INT(set_num(rl, "n", 5, 0, 0), TG_OK);
    CHECK_INT(set_num(cache, "c", 6, 0, 0), TG_OK);

    /* Same names: same zones, same data. */
    CHECK_INT(sync_conf("{ ratelimit: 64k, cache: 128k }", NULL, 0), TG_OK);
    CHECK(tg_shdict_find("ratelimit", 9) == rl);
    CHECK(get_num(rl, "n") == 5);

    /* A new name is added; a size change keeps the old zone. */
    CHECK_INT(sync_conf("{ ratelimit: 256k, cache: 128k, sessions: 64k }", NULL, 0), TG_OK);
    CHECK(tg_shdict_find("ratelimit", 9) == rl);
    CHECK_INT(tg_shdict_capacity(rl), 64 * KB);
    tg_shdict_t *sess = tg_shdict_find("sessions", 8);
    CHECK(sess != NULL && sess != rl && sess != cache);

    /* A removed name is hidden, not unmapped; back again with its data. */
    CHECK_INT(sync_conf("{ ratelimit: 64k, sessions: 64k }", NULL, 0), TG_OK);
    CHECK(tg_shdict_find("cache", 5) == NULL);
    CHECK(get_num(cache, "c") == 6);
    CHECK_INT(sync_conf("{ ratelimit: 64k, cache: 128k }", NULL, 0), TG_OK);
    CHECK(tg_shdict_find("cache", 5) == cache);
    CHECK(get_num(cache, "c") == 6);
    CHECK(tg_shdict_find("sessions", 8) == NULL);

    /* A zone that cannot be made fails the sync and changes nothing. */
    CHECK_INT(sync_conf("{ ratelimit: 64k, tiny: 1k }", err, sizeof(err)), TG_ERROR);
    CHECK_STR(err, "shared_dicts.tiny: size too small (at least 32k)");
    CHECK(tg_shdict_find("cache", 5) == cache);
    CHECK(tg_shdict_find("tiny", 4) == NULL);

    const char *e;
    char longname[TG_SHDICT_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK(tg_shdict_create(longname, 64 * KB, &e) == NULL);
    CHECK_STR(e, "name too long (at most 255 bytes)");
}

static void test_get_keys(void) {
    tg_shdict_t *d = zone("keys", 64 * KB);
    char *buf;
    size_t len;
    int n;
    const char *err;

    CHECK_INT(tg_shdict_get_keys(d, 0, &buf, &len, &n, &err), TG_OK);
    CHECK(n == 0 && buf == NULL && len == 0);
    set_num(d, "a", 1, 0, 0);
    set_num(d, "bb", 1, 0, 0);
    set_num(d, "ccc", 1, 0, 0);
    CHECK_INT(tg_shdict_get_keys(d, 0, &buf, &len, &n, &err), TG_OK);
    CHECK_INT(n, 3);
    CHECK_INT(len, 3 * 2 + 6);
    CHECK(memcmp(buf, "\0\3ccc\0\2bb\0\1a", 12) == 0);  /* most recent first */
    tg_shdict_free_buf(buf);
    CHECK_INT(tg_shdict_get_keys(d, 2, &buf, &len, &n, &err), TG_OK);
    CHECK_INT(n, 2);
    tg_shdict_free_buf(buf);
    tg_shdict_destroy(d);
}

/* ---- ns/op (information only) ------------------------------------------ */

static double elapsed_ns(struct timespec a, struct timespec b) {
    return (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
}

static void bench(void) {
    enum { NKEYS = 10000, N = 1000000 };
    tg_shdict_t *d = zone("bench", 16 * MB);
    static char keys[NKEYS][24];
    struct timespec t0, t1;
    const char *err;
    char buf[64];

    for (int i = 0; i < NKEYS; i++) snprintf(keys[i], sizeof(keys[i]), "ratelimit:10.0.%d.%d", i / 256, i % 256);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N; i++) {
        const char *k = keys[i % NKEYS];
        tg_shdict_store(d, TG_SHDICT_SET, k, strlen(k), TG_SHDICT_TSTRING, "some-value-32-bytes-long-xxxxxxx",
                        32, 0, 60000, 0, NULL, &err);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double set_ns = elapsed_ns(t0, t1) / N;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N; i++) {
        const char *k = keys[i % NKEYS];
        int type;
        char *p = buf;
        size_t len = sizeof(buf);
        double num;
        uint32_t flags;
        tg_shdict_get(d, k, strlen(k), &type, &p, &len, &num, &flags, 0, NULL, &err);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double get_ns = elapsed_ns(t0, t1) / N;

    tg_shdict_flush_all(d);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N; i++) {
        const char *k = keys[i % NKEYS];
        double v = 1;
        tg_shdict_incr(d, k, strlen(k), &v, 1, 0, 60000, NULL, &err);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double incr_ns = elapsed_ns(t0, t1) / N;
    CHECK(get_num(d, keys[0]) == N / NKEYS);

    printf("bench (1 process, %d keys, uncontended): get %.0f ns/op, set %.0f ns/op, incr %.0f ns/op\n",
           NKEYS, get_ns, set_ns, incr_ns);
    tg_shdict_destroy(d);
}

int main(void) {
    tg_log_open("stderr", TG_LOG_WARN);
    test_basic();
    test_add_replace();
    test_expiry();
    test_incr();
    test_lru();
    test_churn();
    test_processes();
    test_robust();
    test_zones_sync();
    test_get_keys();
    bench();
    TG_TEST_DONE();
}
