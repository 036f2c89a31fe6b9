/*
 * test_tg_balancer.c: smooth weighted round robin sequences, exclusion,
 * passive health, least_conn, and the consistent-hash ring's stability and
 * distribution. Upstreams are built by hand (no YAML).
 */
#include "tg_balancer.h"
#include "tg_test.h"

#include <stdlib.h>

#define MAX_TARGETS 8

/* An upstream with targets "10.0.0.<i+1>:8080" and the given weights. */
typedef struct {
    tg_conf_upstream_t up;
    tg_conf_target_t   targets[MAX_TARGETS];
    char               hosts[MAX_TARGETS][32];
} upstream_t;

static void upstream_make(upstream_t *u, tg_balance_e balance, const int *weights, int n) {
    memset(u, 0, sizeof(*u));
    u->up.name = "test";
    u->up.balance = balance;
    u->up.targets = u->targets;
    u->up.ntargets = n;
    u->up.max_fails = 3;
    u->up.fail_timeout_ms = 10000;
    for (int i = 0; i < n; i++) {
        snprintf(u->hosts[i], sizeof(u->hosts[i]), "10.0.0.%d", i + 1);
        u->targets[i].host = u->hosts[i];
        u->targets[i].addr.host = u->hosts[i];
        u->targets[i].addr.port = 8080;
        u->targets[i].weight = weights[i];
    }
}

/* Weighted round robin sequences, nginx's exact order. */
static const struct {
    int         weights[MAX_TARGETS];
    int         n;
    const char *sequence;          /* 'a' = target 0, ... one full cycle */
} rr_cases[] = {
    { { 5, 1, 1 }, 3, "aabacaa" },
    { { 1, 1, 1 }, 3, "abc" },
    { { 2, 1 }, 2, "aba" },
    { { 3, 2 }, 2, "ababa" },
    { { 1 }, 1, "a" },
};

static void test_rr_sequences(void) {
    for (size_t c = 0; c < tg_nelems(rr_cases); c++) {
        upstream_t u;
        tg_balancer_t b;
        upstream_make(&u, TG_BALANCE_ROUND_ROBIN, rr_cases[c].weights, rr_cases[c].n);
        tg_balancer_init(&b, &u.up);
        const char *want = rr_cases[c].sequence;
        size_t len = strlen(want);
        char got[64] = "";
        for (size_t k = 0; k < 2 * len; k++)          /* two cycles: it repeats */
            got[k] = 'a' + tg_balancer_pick(&b, 0, 0, NULL, 0);
        char want2[64];
        snprintf(want2, sizeof(want2), "%s%s", want, want);
        CHECK_STR(got, want2);
        tg_balancer_free(&b);
    }
}

static void test_exclude(void) {
    static const int w[] = { 5, 1, 1 };
    tg_balance_e kinds[] = { TG_BALANCE_ROUND_ROBIN, TG_BALANCE_LEAST_CONN, TG_BALANCE_HASH };
    for (size_t k = 0; k < tg_nelems(kinds); k++) {
        upstream_t u;
        tg_balancer_t b;
        upstream_make(&u, kinds[k], w, 3);
        tg_balancer_init(&b, &u.up);
        int bad = 0;
        for (int i = 0; i < 100; i++) {
            char key[16];
            int len = snprintf(key, sizeof(key), "k%d", i);
            if (tg_balancer_pick(&b, 0, 1u << 0, key, len) == 0) bad++;
            int p = tg_balancer_pick(&b, 0, (1u << 0) | (1u << 2), key, len);
            if (p != 1) bad++;
        }
        CHECK_MSG(bad == 0, "balance %d: %d picks ignored the exclusion mask", (int)kinds[k], bad);
        CHECK_INT(tg_balancer_pick(&b, 0, 7, "k", 1), -1);
        tg_balancer_free(&b);
    }
}

/* Passive health, one step per row: report (or just check) at `t`. */
enum { FAIL, OK, NONE };
static const struct {
    double t;
    int    report;       /* FAIL, OK or NONE */
    int    want_down;    /* after the step */
} health_steps[] = {
    /* max_fails 3 within 10 s marks down for 10 s */
    { 0.0, FAIL, 0 }, { 1.0, FAIL, 0 }, { 2.0, FAIL, 1 },
    { 11.9, NONE, 1 }, { 12.0, NONE, 0 },           /* back after fail_timeout */
    /* one failure right after coming back marks it down again */
    { 13.0, FAIL, 1 }, { 22.9, NONE, 1 }, { 23.0, NONE, 0 },
    /* a success resets the count */
    { 23.5, OK, 0 }, { 24.0, FAIL, 0 }, { 25.0, FAIL, 0 }, { 25.5, OK, 0 },
    { 26.0, FAIL, 0 }, { 27.0, FAIL, 0 },
    /* failures spread beyond the window do not add up */
    { 38.0, FAIL, 0 }, { 39.0, FAIL, 0 }, { 40.0, FAIL, 1 },
    /* a success clears a down mark */
    { 41.0, OK, 0 },
};

static void test_passive_health(void) {
    static const int w[] = { 1, 1 };
    upstream_t u;
    tg_balancer_t b;
    upstream_make(&u, TG_BALANCE_ROUND_ROBIN, w, 2);
    tg_balancer_init(&b, &u.up);
    for (size_t s = 0; s < tg_nelems(health_steps); s++) {
        double t = health_steps[s].t;
        if (health_steps[s].report != NONE) tg_balancer_report(&b, 0, health_steps[s].report == OK, t);
        CHECK_MSG(tg_balancer_is_down(&b, 0, t) == health_steps[s].want_down,
                  "step %zu at t=%.1f", s, t);
        /* a down target gets no picks */
        if (health_steps[s].want_down) {
            int got0 = 0;
            for (int i = 0; i < 10; i++) got0 += tg_balancer_pick(&b, t, 0, NULL, 0) == 0;
            CHECK_INT(got0, 0);
        }
    }
    CHECK(!tg_balancer_is_down(&b, 1, 41.0));

    /* all down: -1 until one comes back */
    for (int i = 0; i < 3; i++) {
        tg_balancer_report(&b, 0, 0, 50.0);
        tg_balancer_report(&b, 1, 0, 50.0);
    }
    CHECK_INT(tg_balancer_pick(&b, 55.0, 0, NULL, 0), -1);
    CHECK(tg_balancer_pick(&b, 60.0, 0, NULL, 0) >= 0);
    tg_balancer_free(&b);

    /* max_fails 0 never marks down */
    upstream_make(&u, TG_BALANCE_ROUND_ROBIN, w, 2);
    u.up.max_fails = 0;
    tg_balancer_init(&b, &u.up);
    for (int i = 0; i < 100; i++) tg_balancer_report(&b, 0, 0, i * 0.01);
    CHECK(!tg_balancer_is_down(&b, 0, 1.0));
    tg_balancer_free(&b);

    /* hash and least_conn also answer -1 when everything is down */
    tg_balance_e kinds[] = { TG_BALANCE_LEAST_CONN, TG_BALANCE_HASH };
    for (size_t k = 0; k < tg_nelems(kinds); k++) {
        upstream_make(&u, kinds[k], w, 2);
        u.up.max_fails = 1;
        tg_balancer_init(&b, &u.up);
        tg_balancer_report(&b, 0, 0, 0);
        CHECK_INT(tg_balancer_pick(&b, 1.0, 0, "key", 3), 1);
        tg_balancer_report(&b, 1, 0, 0);
        CHECK_INT(tg_balancer_pick(&b, 1.0, 0, "key", 3), -1);
        tg_balancer_free(&b);
    }
}

static void test_least_conn(void) {
    static const int w[] = { 1, 1, 2 };
    upstream_t u;
    tg_balancer_t b;
    upstream_make(&u, TG_BALANCE_LEAST_CONN, w, 3);
    tg_balancer_init(&b, &u.up);

    /* active/weight: 2/1, 1/1, 1/2 -> c */
    b.targets[0].active = 2; b.targets[1].active = 1; b.targets[2].active = 1;
    CHECK_INT(tg_balancer_pick(&b, 0, 0, NULL, 0), 2);
    /* 2/1, 1/1, 3/2 -> b */
    b.targets[2].active = 3;
    CHECK_INT(tg_balancer_pick(&b, 0, 0, NULL, 0), 1);
    CHECK_INT(tg_balancer_pick(&b, 0, 1u << 1, NULL, 0), 2);   /* b excluded */

    /* ties go round robin by weight: all idle -> c a b c; over 4 picks
     * each of a and b once, c twice */
    b.targets[0].active = b.targets[1].active = b.targets[2].active = 0;
    int count[3] = { 0, 0, 0 };
    for (int i = 0; i < 400; i++) count[tg_balancer_pick(&b, 0, 0, NULL, 0)]++;
    CHECK_INT(count[0], 100);
    CHECK_INT(count[1], 100);
    CHECK_INT(count[2], 200);

    /* callers track active: simulate requests that stay in flight */
    b.targets[0].active = b.targets[1].active = b.targets[2].active = 0;
    for (int i = 0; i < 40; i++) b.targets[tg_balancer_pick(&b, 0, 0, NULL, 0)].active++;
    CHECK_INT(b.targets[0].active, 10);
    CHECK_INT(b.targets[1].active, 10);
    CHECK_INT(b.targets[2].active, 20);
    tg_balancer_free(&b);
}

/* Maps keys "user-<i>" to targets. */
static void hash_map(tg_balancer_t *b, int *out, int nkeys) {
    char key[32];
    for (int i = 0; i < nkeys; i++) {
        int len = snprintf(key, sizeof(key), "user-%d", i);
        out[i] = tg_balancer_pick(b, 0, 0, key, len);
    }
}

static void test_hash_stability(void) {
    enum { NKEYS = 10000 };
    static const int w[] = { 1, 1, 1, 1, 1 };
    static int before[NKEYS], again[NKEYS], after[NKEYS];
    upstream_t u4, u5;
    tg_balancer_t b4, b5;
    upstream_make(&u4, TG_BALANCE_HASH, w, 4);
    upstream_make(&u5, TG_BALANCE_HASH, w, 5);
    tg_balancer_init(&b4, &u4.up);
    tg_balancer_init(&b5, &u5.up);
    CHECK_INT(b4.nring, 4 * 160);

    hash_map(&b4, before, NKEYS);
    hash_map(&b4, again, NKEYS);
    CHECK(memcmp(before, again, sizeof(before)) == 0);
    CHECK_INT(tg_balancer_pick(&b4, 0, 0, "", 0), tg_balancer_pick(&b4, 0, 0, "", 0));

    hash_map(&b5, after, NKEYS);
    int moved = 0, moved_elsewhere = 0;
    for (int i = 0; i < NKEYS; i++) {
        if (before[i] != after[i]) {
            moved++;
            if (after[i] != 4) moved_elsewhere++;   /* only to the new target */
        }
    }
    CHECK_MSG(moved < NKEYS * 40 / 100, "%d of %d keys moved", moved, NKEYS);
    CHECK_MSG(moved > NKEYS * 5 / 100, "%d of %d keys moved", moved, NKEYS);
    CHECK_INT(moved_elsewhere, 0);
    printf("info: adding a 5th target moved %.1f%% of keys (ideal 20%%)\n", 100.0 * moved / NKEYS);

    /* a down target's keys go to the next point clockwise; the rest stay */
    tg_balancer_report(&b4, 2, 0, 0);
    tg_balancer_report(&b4, 2, 0, 0);
    tg_balancer_report(&b4, 2, 0, 0);
    hash_map(&b4, again, NKEYS);
    int changed_other = 0, on_down = 0;
    for (int i = 0; i < NKEYS; i++) {
        if (again[i] == 2) on_down++;
        if (before[i] != 2 && again[i] != before[i]) changed_other++;
    }
    CHECK_INT(on_down, 0);
    CHECK_INT(changed_other, 0);

    tg_balancer_free(&b4);
    tg_balancer_free(&b5);
}

/* Over 100k picks every policy gives each target its weight's share. */
static void test_distribution(void) {
    enum { NPICKS = 100000 };
    static const int w[] = { 5, 3, 2 };
    static const struct { tg_balance_e kind; double tolerance; } kinds[] = {
        { TG_BALANCE_ROUND_ROBIN, 0.001 },
        { TG_BALANCE_LEAST_CONN, 0.001 },   /* all idle: round robin among ties */
        { TG_BALANCE_HASH, 0.04 },          /* 160 points per weight: a few % */
    };
    for (size_t k = 0; k < tg_nelems(kinds); k++) {
        upstream_t u;
        tg_balancer_t b;
        upstream_make(&u, kinds[k].kind, w, 3);
        tg_balancer_init(&b, &u.up);
        int count[3] = { 0, 0, 0 };
        char key[32];
        for (int i = 0; i < NPICKS; i++) {
            int len = snprintf(key, sizeof(key), "192.168.%d.%d", (i >> 8) & 255, i & 255);
            if (kinds[k].kind == TG_BALANCE_HASH)
                len = snprintf(key, sizeof(key), "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
            int p = tg_balancer_pick(&b, 0, 0, key, len);
            if (p >= 0) count[p]++;
        }
        for (int t = 0; t < 3; t++) {
            double share = (double)count[t] / NPICKS, want = w[t] / 10.0;
            CHECK_MSG(share > want - kinds[k].tolerance && share < want + kinds[k].tolerance,
                      "balance %d target %d: share %.3f, want %.3f", (int)kinds[k].kind, t, share, want);
        }
        if (kinds[k].kind == TG_BALANCE_HASH)
            printf("info: hash shares for weights 5,3,2: %.3f %.3f %.3f\n",
                   (double)count[0] / NPICKS, (double)count[1] / NPICKS, (double)count[2] / NPICKS);
        tg_balancer_free(&b);
    }
}

static void test_ring_cap(void) {
    /* weights far above the cap: points are scaled, shares kept */
    static const int w[] = { 300, 200, 100 };
    upstream_t u;
    tg_balancer_t b;
    upstream_make(&u, TG_BALANCE_HASH, w, 3);
    tg_balancer_init(&b, &u.up);
    CHECK(b.nring <= 65536 + 3);
    CHECK(b.nring > 60000);
    int sorted = 1;
    for (int i = 1; i < b.nring; i++) sorted &= b.ring_hash[i - 1] <= b.ring_hash[i];
    CHECK(sorted);
    tg_balancer_free(&b);
}

int main(void) {
    test_rr_sequences();
    test_exclude();
    test_passive_health();
    test_least_conn();
    test_hash_stability();
    test_distribution();
    test_ring_cap();
    TG_TEST_DONE();
}
