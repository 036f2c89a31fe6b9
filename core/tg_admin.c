/*
 * tg_admin.c: the admin API (see tg_admin.h). Served by whichever worker
 * accepts the connection; the numbers come from the shared stats region,
 * so every worker answers for the whole instance.
 */
#include "tg_admin.h"
#include "tg_conn.h"
#include "tg_lua.h"
#include "tg_response.h"
#include "tg_version.h"

#include <http_parser.h>
#include <stdio.h>

static void status_json(tg_request_t *r) {
    tg_worker_t *w = r->worker;
    tg_stats_t *st = w->stats;
    size_t cap = 1024 + (size_t)w->conf->worker_processes * 256;
    char *out = tg_pool_alloc(r->pool, cap);
    size_t pos = 0;
#define OUT(...) do { int _n = snprintf(out + pos, cap - pos, __VA_ARGS__); if (_n > 0) pos = tg_min(cap - 1, pos + (size_t)_n); } while (0)
    OUT("{\"version\":\"%s\",\"generation\":%u,\"config_version\":%u,",
        TG_VERSION, st ? st->generation : w->generation, st ? st->config_version : w->conf->version);
    OUT("\"reloads\":{\"ok\":%u,\"failed\":%u},", st ? st->reloads_ok : 0, st ? st->reloads_failed : 0);
    OUT("\"uptime_s\":%.0f,", st ? ev_now(w->loop) - st->started_at : 0.0);
    uint64_t req = 0, act = 0, tot = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, ue = 0;
    OUT("\"workers\":[");
    int first = 1;
    for (int i = 0; i < TG_STATS_MAX_WORKERS && st; i++) {
        tg_stats_worker_t *ws = &st->workers[i];
        if (ws->pid <= 0) continue;   /* free, or reserved for a starting worker */
        OUT("%s{\"slot\":%d,\"pid\":%d,\"generation\":%u,\"requests\":%llu,\"connections_active\":%llu}",
            first ? "" : ",", i, (int)ws->pid, ws->generation,
            (unsigned long long)ws->requests, (unsigned long long)ws->connections_active);
        first = 0;
        req += ws->requests; act += ws->connections_active; tot += ws->connections_total;
        s2 += ws->status_2xx; s3 += ws->status_3xx; s4 += ws->status_4xx; s5 += ws->status_5xx;
        ue += ws->upstream_errors;
    }
    OUT("],\"requests\":%llu,\"connections_active\":%llu,\"connections_total\":%llu,"
        "\"status\":{\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu},\"upstream_errors\":%llu}",
        (unsigned long long)req, (unsigned long long)act, (unsigned long long)tot,
        (unsigned long long)s2, (unsigned long long)s3, (unsigned long long)s4,
        (unsigned long long)s5, (unsigned long long)ue);
#undef OUT
    tg_response_local(r, 200, out, pos);
}

void tg_admin_handle(tg_request_t *r) {
    int m = r->http->method;
    int core_path = tg_str_eq_lit(r->path, "/health") || tg_str_eq_lit(r->path, "/status");
    if (!core_path) {
        /* Plugins may serve admin paths of their own (synchronously). */
        const char *body;
        size_t len;
        tg_request_skip_buffered_body(r);
        int status = tg_lua_admin(r, &body, &len);
        if (status) {
            tg_response_local(r, status, body, len);
            return;
        }
        tg_request_finalize(r, 404);
        return;
    }
    if (m != HTTP_GET && m != HTTP_HEAD) {
        tg_request_finalize(r, 405);
        return;
    }
    if (tg_str_eq_lit(r->path, "/health")) {
        static const char ok[] = "{\"status\":\"ok\"}";
        tg_response_local(r, 200, ok, sizeof(ok) - 1);
        return;
    }
    if (tg_str_eq_lit(r->path, "/status")) {
        status_json(r);
        return;
    }
    tg_request_finalize(r, 404);
}
