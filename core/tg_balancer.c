/*
 * tg_balancer.c: choosing a target of one upstream (see tg_balancer.h).
 *
 *   - round robin is nginx's smooth weighted round robin: every pick adds
 *     each available target's weight to its current_weight, takes the
 *     largest, and subtracts the total weight from the winner. Weights 5,1,1
 *     give a a b a c a a: the heavy target's turns are spread out instead of
 *     coming in a burst;
 *   - least_conn picks the lowest active/weight; ties are broken by the same
 *     smooth round robin among the tied targets (as nginx does). The caller
 *     increments targets[i].active when a request starts on target i and
 *     decrements it when that attempt ends; this file only reads it;
 *   - hash is a consistent-hash ring: each target puts ~160 points per unit
 *     of weight on a 32-bit circle, a key goes to the first point clockwise
 *     from its hash, so adding or removing a target moves about 1/n of keys.
 *
 * Passive health: max_fails failures within fail_timeout mark a target down
 * for fail_timeout. When it comes back, its failure window is still open, so
 * one more failure right away marks it down again (nginx's single probe
 * request); a success clears everything. max_fails == 0 disables marking.
 *
 * When every target is down (or excluded), pick returns -1 and the proxy
 * answers 503 at once. nginx would instead try all targets anyway; we prefer
 * failing fast over sending traffic to targets just seen failing.
 *
 * A balancer is per worker and used by one thread; nothing here locks.
 */
#include "tg_balancer.h"

#include <stdio.h>
#include <stdlib.h>

/* Virtual points per unit of weight: ~160 keeps each target's share of the
 * ring within a few percent of its weight (the figure nginx and ketama use). */
#define RING_POINTS_PER_WEIGHT 160
/* Cap on ring points per upstream (8 bytes each, per worker): 64k points is
 * 512 KiB, enough for ~400 targets of weight 1 at full resolution; beyond
 * that every target's points are scaled down proportionally. */
#define RING_MAX_POINTS 65536
/* ring_target is 16-bit: targets beyond this are left off the ring. */
#define RING_MAX_TARGETS 65535

typedef struct {
    uint32_t hash;
    uint16_t target;
} ring_point_t;


uint32_t tg_balancer_hash(const char *key, size_t len) {
    /* 32-bit FNV-1a, then murmur3's finalizer: FNV alone leaves keys that
     * differ in the last byte ("host:80#1", "host:80#2") close together,
     * which would cluster a target's points on the ring. */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 16777619u;
    }
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static int weight_of(const tg_balancer_target_t *t) {
    return t->conf->weight > 0 ? t->conf->weight : 1;
}

static int point_cmp(const void *a, const void *b) {
    const ring_point_t *x = a, *y = b;
    if (x->hash != y->hash) return x->hash < y->hash ? -1 : 1;
    return (int)x->target - (int)y->target;
}

static void ring_build(tg_balancer_t *b) {
    int nt = tg_min(b->ntargets, RING_MAX_TARGETS);
    uint64_t want = 0;
    for (int i = 0; i < nt; i++)
        want += (uint64_t)RING_POINTS_PER_WEIGHT * weight_of(&b->targets[i]);
    if (want == 0) return;

    ring_point_t *pts = tg_xmalloc(sizeof(*pts) * tg_min(want, (uint64_t)RING_MAX_POINTS + nt));
    int n = 0;
    char key[512];
    for (int i = 0; i < nt; i++) {
        const tg_conf_target_t *tc = b->targets[i].conf;
        uint64_t np = (uint64_t)RING_POINTS_PER_WEIGHT * weight_of(&b->targets[i]);
        if (want > RING_MAX_POINTS) np = tg_max(1, np * RING_MAX_POINTS / want);
        /* Points are named after the target as written, not after its
         * position, so adding or reordering targets keeps the others'
         * points where they were. */
        const char *host = tc->host ? tc->host : tc->addr.host ? tc->addr.host : "";
        for (uint64_t k = 0; k < np; k++) {
            int len = snprintf(key, sizeof(key), "%s:%u#%llu", host, (unsigned)tc->addr.port,
                               (unsigned long long)k);
            if (len >= (int)sizeof(key)) len = sizeof(key) - 1;
            pts[n].hash = tg_balancer_hash(key, len);
            pts[n].target = (uint16_t)i;
            n++;
        }
    }
    qsort(pts, n, sizeof(*pts), point_cmp);

    b->ring_hash = tg_xmalloc(sizeof(*b->ring_hash) * n);
    b->ring_target = tg_xmalloc(sizeof(*b->ring_target) * n);
    for (int i = 0; i < n; i++) {
        b->ring_hash[i] = pts[i].hash;
        b->ring_target[i] = pts[i].target;
    }
    b->nring = n;
    free(pts);
}

void tg_balancer_init(tg_balancer_t *b, const tg_conf_upstream_t *conf) {
    memset(b, 0, sizeof(*b));
    b->conf = conf;
    b->ntargets = conf->ntargets;
    b->targets = tg_xcalloc(conf->ntargets, sizeof(*b->targets));
    for (int i = 0; i < conf->ntargets; i++) b->targets[i].conf = &conf->targets[i];
    if (conf->balance == TG_BALANCE_HASH) ring_build(b);
}

void tg_balancer_free(tg_balancer_t *b) {
    free(b->targets);
    free(b->ring_hash);
    free(b->ring_target);
    memset(b, 0, sizeof(*b));
}

int tg_balancer_is_down(const tg_balancer_t *b, int i, double now) {
    return b->targets[i].down_until > now;
}

/* Bits beyond 63 cannot be expressed in the mask: such targets are never
 * excluded (a retry may land on one already tried). */
static int available(const tg_balancer_t *b, int i, double now, uint64_t exclude) {
    if (i < 64 && (exclude & (1ULL << i))) return 0;
    return !tg_balancer_is_down(b, i, now);
}

void tg_balancer_report(tg_balancer_t *b, int i, int ok, double now) {
    tg_balancer_target_t *t = &b->targets[i];
    const tg_conf_upstream_t *uc = b->conf;
    if (ok) {
        t->fails = 0;
        t->fail_start = 0;
        t->down_until = 0;
        return;
    }
    if (uc->max_fails <= 0) return;

    double timeout = uc->fail_timeout_ms / 1000.0;
    if (t->fails == 0 || now - t->fail_start > timeout) {
        t->fails = 0;
        t->fail_start = now;
    }
    t->fails++;
    if (t->fails >= uc->max_fails) {
        t->down_until = now + timeout;
        /* Open the next window when the down period ends, so a failure of
         * the first request after it re-marks the target at once. */
        t->fail_start = t->down_until;
    }
}

/* Smooth weighted round robin over the available targets, optionally only
 * those in `among` (least_conn ties); -1 if none. */
static int pick_swrr(tg_balancer_t *b, double now, uint64_t exclude, const uint8_t *among) {
    int best = -1;
    int64_t total = 0;
    for (int i = 0; i < b->ntargets; i++) {
        if ((among && !among[i]) || !available(b, i, now, exclude)) continue;
        tg_balancer_target_t *t = &b->targets[i];
        int w = weight_of(t);
        t->current_weight += w;
        total += w;
        if (best < 0 || t->current_weight > b->targets[best].current_weight) best = i;
    }
    if (best >= 0) b->targets[best].current_weight -= (int)total;
    return best;
}

/* Bounded by the targets' count; a small stack array covers usual sizes. */
#define LEAST_CONN_STACK 256

static int pick_least_conn(tg_balancer_t *b, double now, uint64_t exclude) {
    int best = -1, ties = 0;
    for (int i = 0; i < b->ntargets; i++) {
        if (!available(b, i, now, exclude)) continue;
        if (best < 0) { best = i; ties = 1; continue; }
        /* active_i / w_i vs active_best / w_best, without division */
        int64_t l = (int64_t)b->targets[i].active * weight_of(&b->targets[best]);
        int64_t r = (int64_t)b->targets[best].active * weight_of(&b->targets[i]);
        if (l < r) { best = i; ties = 1; }
        else if (l == r) ties++;
    }
    if (ties <= 1) return best;

    uint8_t stack[LEAST_CONN_STACK];
    uint8_t *among = b->ntargets <= LEAST_CONN_STACK ? stack : tg_xmalloc(b->ntargets);
    const tg_balancer_target_t *bt = &b->targets[best];
    for (int i = 0; i < b->ntargets; i++) {
        const tg_balancer_target_t *t = &b->targets[i];
        among[i] = available(b, i, now, exclude)
                   && (int64_t)t->active * weight_of(bt) == (int64_t)bt->active * weight_of(t);
    }
    int pick = pick_swrr(b, now, exclude, among);
    if (among != stack) free(among);
    return pick;
}

static int pick_hash(tg_balancer_t *b, double now, uint64_t exclude, const char *key, size_t keylen) {
    if (b->nring == 0) return -1;
    int any = 0;
    for (int i = 0; i < b->ntargets && !any; i++) any = available(b, i, now, exclude);
    if (!any) return -1;

    uint32_t h = tg_balancer_hash(key ? key : "", key ? keylen : 0);
    int lo = 0, hi = b->nring;          /* first point >= h */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (b->ring_hash[mid] < h) lo = mid + 1;
        else hi = mid;
    }
    /* Clockwise, wrapping; at most one lap. Targets left off the ring
     * (beyond RING_MAX_TARGETS) may be the only available ones. */
    for (int k = 0; k < b->nring; k++) {
        int i = b->ring_target[(lo + k) % b->nring];
        if (available(b, i, now, exclude)) return i;
    }
    return -1;
}

int tg_balancer_pick(tg_balancer_t *b, double now, uint64_t exclude,
                     const char *key, size_t keylen) {
    switch (b->conf->balance) {
    case TG_BALANCE_LEAST_CONN: return pick_least_conn(b, now, exclude);
    case TG_BALANCE_HASH:       return pick_hash(b, now, exclude, key, keylen);
    case TG_BALANCE_ROUND_ROBIN:
    default:                    return pick_swrr(b, now, exclude, NULL);
    }
}
