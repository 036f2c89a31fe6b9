/*
 * tg_stats.h: counters every worker publishes for the admin API. The master
 * maps one shared, anonymous region before forking; each worker slot owns
 * one entry and is its only writer (plain stores, no locks); /status sums
 * them. Survives reloads: a new generation's worker takes over its slot.
 */
#ifndef TG_STATS_H
#define TG_STATS_H

#include "tg_core.h"
#include <sys/types.h>

#define TG_STATS_MAX_WORKERS 256   /* matches the worker_processes bound */

typedef struct {
    volatile pid_t    pid;
    volatile unsigned generation;
    volatile uint64_t requests;            /* finished requests */
    volatile uint64_t connections_active;  /* client connections open */
    volatile uint64_t connections_total;
    volatile uint64_t status_2xx, status_3xx, status_4xx, status_5xx;
    volatile uint64_t upstream_errors;
} tg_stats_worker_t;

typedef struct {
    volatile unsigned generation;          /* current generation (master) */
    volatile unsigned config_version;
    volatile unsigned reloads_ok;
    volatile unsigned reloads_failed;
    volatile double   started_at;
    tg_stats_worker_t workers[TG_STATS_MAX_WORKERS];
} tg_stats_t;

/* Maps the shared region (zeroed). NULL on failure. */
tg_stats_t *tg_stats_create(void);

#endif
