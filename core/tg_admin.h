/*
 * tg_admin.h: the admin API on its own listener (config `admin.listen`):
 *   GET /health  -> 200 {"status":"ok"}
 *   GET /status  -> 200 JSON: version, generation, config version, reloads,
 *                   per-worker and total counters (from tg_stats)
 * Plugins may add paths (their `admin` table, see runtime.lua); anything
 * else is 404, and other methods on the core paths 405.
 */
#ifndef TG_ADMIN_H
#define TG_ADMIN_H

#include "tg_request.h"

/* Answers r (a request on the admin listener) and finalizes it. */
void tg_admin_handle(tg_request_t *r);

#endif
