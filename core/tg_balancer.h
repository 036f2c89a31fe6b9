/*
 * tg_balancer.h: per-worker runtime state of one upstream's targets and the
 * choice of a target for a request: smooth weighted round robin (nginx's),
 * least connections (weighted), or a consistent-hash ring (so adding a
 * target moves few keys) keyed by client IP or a header.
 *
 * Passive health: a target that fails max_fails times within
 * fail_timeout_ms is marked down for fail_timeout_ms, then gets traffic
 * again (a success resets its count). When every target is down, pick
 * returns -1 (the proxy answers 503).
 *
 * All times are seconds as doubles (ev_now()). Nothing here does I/O.
 */
#ifndef TG_BALANCER_H
#define TG_BALANCER_H

#include "tg_core.h"
#include "tg_conf.h"

typedef struct {
    const tg_conf_target_t *conf;
    int     fails;          /* failures in the current window */
    double  fail_start;     /* start of the failure window */
    double  down_until;     /* 0 when up */
    int     active;         /* requests in flight (least_conn) */
    int     current_weight; /* smooth weighted round robin state */
} tg_balancer_target_t;

typedef struct {
    const tg_conf_upstream_t *conf;
    tg_balancer_target_t     *targets;    /* conf->ntargets entries */
    int                       ntargets;
    uint32_t                 *ring_hash;  /* sorted points of the hash ring */
    uint16_t                 *ring_target;/* target index of each point */
    int                       nring;
} tg_balancer_t;

/* Initializes b for conf (mallocs its arrays). */
void tg_balancer_init(tg_balancer_t *b, const tg_conf_upstream_t *conf);
void tg_balancer_free(tg_balancer_t *b);

/* Picks a target index, skipping targets that are down and those whose bit
 * is set in `exclude` (targets already tried by this request; at most 64
 * targets are distinguished). key/keylen: the hash key for balance: hash
 * (ignored otherwise; an empty key hashes like any other). Returns -1 when
 * no target is available. */
int tg_balancer_pick(tg_balancer_t *b, double now, uint64_t exclude,
                     const char *key, size_t keylen);

/* Reports the outcome of a request's attempt on target i: ok=1 success
 * (resets fails), ok=0 failure (counts towards max_fails). */
void tg_balancer_report(tg_balancer_t *b, int i, int ok, double now);

/* 1 when target i is currently marked down. */
int tg_balancer_is_down(const tg_balancer_t *b, int i, double now);

/* 32-bit hash used by the ring (exposed for tests). */
uint32_t tg_balancer_hash(const char *key, size_t len);

#endif
