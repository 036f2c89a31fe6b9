/*
 * tg_request.h: one request's life, from a complete head to the access-log
 * line. The steps are an explicit state machine (house style 8):
 *
 *   ROUTE -> REWRITE -> ACCESS -> BALANCER -> PROXY (send head + stream body
 *   up, read response head) -> HEADER_FILTER -> BODY_FILTER (stream body
 *   down) -> LOG
 *
 * REWRITE / ACCESS / HEADER_FILTER / BODY_FILTER are where the Lua runtime
 * plugs in; a route with no plugin for a phase skips it without cost. A
 * local response (404, a static `response:` route, an error) jumps to LOG
 * through tg_request_finalize(); LOG always runs exactly once.
 *
 * Memory: the request's pool holds a copy of the head (the connection's
 * buffer is reused for the body and the next request) and everything else
 * request-scoped; tg_request_free() releases it in one step.
 */
#ifndef TG_REQUEST_H
#define TG_REQUEST_H

#include "tg_core.h"
#include "tg_conf.h"
#include "tg_http.h"
#include "tg_pool.h"
#include "tg_worker.h"

struct tg_upconn_s;

typedef enum {
    TG_PHASE_ROUTE = 0,
    TG_PHASE_REWRITE,
    TG_PHASE_ACCESS,
    TG_PHASE_BALANCER,
    TG_PHASE_PROXY,
    TG_PHASE_HEADER_FILTER,
    TG_PHASE_BODY_FILTER,
    TG_PHASE_LOG,
    TG_PHASE_DONE,
} tg_phase_e;

/* How the response body is framed on the way to the client. */
typedef enum {
    TG_FRAME_NONE = 0,      /* no body */
    TG_FRAME_LENGTH,        /* Content-Length */
    TG_FRAME_CHUNKED,       /* chunked (HTTP/1.1 clients) */
    TG_FRAME_CLOSE,         /* until close (HTTP/1.0 clients, unknown length) */
} tg_frame_e;

/* A mutable header list in the request's pool (plugin edits). */
typedef struct {
    tg_http_header_t *h;
    int               n;
    int               cap;
} tg_hdr_list_t;

struct tg_request_s {
    tg_conn_t          *conn;
    tg_worker_t        *worker;
    tg_pool_t          *pool;
    tg_phase_e          phase;
    ev_tstamp           start;

    tg_http_request_t  *http;          /* slices into `head` */
    char               *head;          /* copy of the request head */
    tg_str_t            path;          /* normalized path (in the pool) */
    char                host[256];     /* Host without port, lowercased */
    size_t              host_len;
    const tg_conf_route_t *route;
    tg_str_t            upstream_uri;  /* path after strip_prefix + query */

    /* request body, as read from the client */
    int64_t             body_left;     /* Content-Length bytes still to read */
    tg_http_chunked_t   body_chunked;
    uint64_t            body_bytes;    /* decoded body bytes received */
    unsigned            has_body:1;
    unsigned            body_done:1;
    unsigned            continue_sent:1;
    void               *body_mem;      /* whole body in memory (echo, get_body) */

    /* upstream side (tg_proxy.c) */
    tg_upstream_t      *upstream;
    struct tg_upconn_s *uc;
    int                 target;        /* -1 before the balancer ran */
    uint64_t            tried;         /* bit mask of targets tried */
    int                 attempts;
    ev_tstamp           upstream_start;
    double              upstream_ms;   /* time to the response head, last try */
    int                 upstream_status;
    tg_http_response_t *resp;
    tg_http_scan_t      resp_scan;
    int64_t             resp_left;     /* upstream Content-Length left */
    tg_http_chunked_t   resp_chunked;
    unsigned            resp_from_upstream_chunked:1;
    unsigned            resp_until_close:1;
    unsigned            resp_started:1;  /* a response byte came back */
    unsigned            upstream_reusable:1;
    unsigned            tunnel:1;
    unsigned            up_body_sent:1;  /* whole request body handed upstream */
    unsigned            resp_up_done:1;  /* whole upstream body read */
    unsigned            early_response:1;/* answered before the body was sent */
    unsigned            no_pool:1;       /* next attempt needs a fresh connection */
    unsigned            stale_replayed:1;/* replayed once after a stale pooled conn */
    unsigned            active_counted:1;/* counted in the target's `active` */
    int                 last_error;      /* status of the last failed attempt */
    /* Each attempt's target and outcome (upstream status, or 502/504 for a
     * failure), for plugins such as circuit-breaker (tg.upstream.get_attempts). */
#define TG_REQUEST_MAX_ATTEMPT_LOG 8
    struct { int16_t target; int16_t status; } attempt_log[TG_REQUEST_MAX_ATTEMPT_LOG];
    int                 nattempt_log;
    int                 proxy_state;

    /* response to the client */
    int                 status;
    tg_frame_e          frame;
    unsigned            header_sent:1;  /* committed (maybe still in pending_head) */
    tg_str_t            pending_head;   /* head not written yet: it goes out with
                                           the first body bytes, in one writev */
    unsigned            response_done:1;
    uint64_t            bytes_sent;    /* bytes handed to the socket */

    const char         *request_id;    /* set by the request-id plugin */
    char                client_ip[46]; /* copied: the log phase may outlive the connection */
    uint16_t            local_port;
    unsigned            https:1;       /* arrived over TLS */

    /* plugin edits of the upstream request (NULL/empty: as received) */
    tg_hdr_list_t      *req_hdrs;      /* the headers going upstream */
    tg_str_t            body_override; /* set_body(); p != NULL when set */
    tg_str_t            host_override; /* set_header("Host", v); p != NULL when set */
    unsigned            body_read_wanted:1; /* a plugin waits for the whole body */
    unsigned            body_for_echo:1;    /* the echo response waits for it */

    /* the response as it will be sent: status + headers without framing
     * (Content-Length / Transfer-Encoding / Connection are the core's) */
    tg_hdr_list_t       resp_hdrs;
    int64_t             resp_content_length; /* -1 unknown */
    const char         *local_body;    /* local response body (pool/static) */
    size_t              local_body_len;

    /* tg.response.exit() */
    int                 exit_status;
    const char         *exit_body;
    size_t              exit_body_len;

    /* Lua */
    unsigned            lua_phases;    /* TG_LUA_BIT()s of the route */
    void               *lua_co;        /* lua_State * of the request's coroutine */
    int                 lua_co_ref;
    int                 lua_ctx_ref;
    struct tg_lua_wait_s *lua_wait;    /* pending I/O of the coroutine */
    unsigned            lua_running:1; /* inside a resume (no re-entry) */
    unsigned            lua_co_idle:1; /* the coroutine last yielded between phases:
                                          it may serve another request */
    unsigned            log_pending:1; /* log phase still running after done */
    unsigned            free_pending:1;/* freed while held (see hold) */
    int                 hold;          /* >0 while C code up the stack still uses r:
                                          tg_request_free then only marks it */
    unsigned            local_response:1; /* generated here: add Date, Server */
    unsigned            body_eof_sent:1;  /* last piece of the body sent */
};

/* Takes a complete head from c->rbuf (parsed into `parsed`, slices into the
 * buffer), copies it into a new request, consumes it from the buffer and
 * runs the request. */
void tg_request_start(tg_conn_t *c, const tg_http_request_t *parsed);

/* Ends the request with `status`: when no response head was sent yet, sends
 * a JSON error body {"error":"<reason>"}; when it was, the response cannot
 * be fixed any more and the connection is closed after what was sent. Then
 * LOG runs and the connection moves on. */
void tg_request_finalize(tg_request_t *r, int status);

/* Sends a complete local response (head + body) and finalizes. headers are
 * extra "Name: value\r\n" lines (may be NULL). */
void tg_request_respond(tg_request_t *r, int status, const char *content_type,
                        const char *body, size_t len, const char *headers);

/* The response is completely handed to the socket: LOG, then the
 * connection's next step. */
void tg_request_done(tg_request_t *r);

/* Called by the connection when its write queue drained. */
void tg_request_client_writable(tg_request_t *r);
/* Called by the connection when the client socket is readable. */
void tg_request_client_readable(tg_request_t *r);
/* Called by the connection timer while a request runs. */
void tg_request_client_timeout(tg_request_t *r);

/* Request body pump shared by the proxy and local responses: delivers body
 * data from the client to `sink` until the body ends (TG_OK), the client
 * must be waited for (TG_AGAIN, read watcher armed) or `sink` says it is
 * full (TG_AGAIN, sink's job to resume), or an error finalized the request
 * (TG_ERROR). sink returns TG_OK to continue or TG_AGAIN to stop after
 * taking the data; `last` is 1 with the final (possibly empty) piece. */
typedef int (*tg_body_sink_pt)(tg_request_t *r, const char *data, size_t len, int last);
int tg_request_body_pump(tg_request_t *r, tg_body_sink_pt sink);

/* Ends the request's life: aborts the upstream side, runs LOG if it did not
 * run yet, then frees the request and its pool (tg_request_release) — or,
 * while r->hold is set, only marks it for the holder to release. */
void tg_request_free(tg_request_t *r);
void tg_request_release(tg_request_t *r);

/* Header value of the request as it will go upstream (client headers with
 * plugin edits), case-insensitive; a NULL slice when absent. */
tg_str_t tg_request_header(const tg_request_t *r, const char *name, size_t len);

/* The request headers as they will go upstream. */
const tg_http_header_t *tg_request_headers(const tg_request_t *r, int *n);

/* Header list edits. mode: TG_HDR_SET (replace all of that name),
 * TG_HDR_ADD, TG_HDR_CLEAR. Copies name and value into the pool. */
#define TG_HDR_SET   0
#define TG_HDR_ADD   1
#define TG_HDR_CLEAR 2
void tg_hdr_list_edit(tg_pool_t *pool, tg_hdr_list_t *l, int mode,
                      const char *name, size_t nlen, const char *value, size_t vlen);
const tg_http_header_t *tg_hdr_list_find(const tg_hdr_list_t *l, const char *name, size_t len);
/* Makes r->req_hdrs a mutable copy of the client headers (first edit). */
tg_hdr_list_t *tg_request_req_hdrs(tg_request_t *r);

/* The Lua coroutine of r finished waiting: continue r's state machine with
 * the phase result (TG_OK, TG_DONE, TG_ERROR). */
void tg_request_lua_resumed(tg_request_t *r, int rc);

/* Reads the whole request body into memory (tg.request.get_body, echo):
 * TG_OK when it is there (tg_request_body), TG_AGAIN while reading (the
 * pump wakes the waiting Lua coroutine), TG_ERROR when the request was
 * finalized (413, 400, client gone). */
int tg_request_read_body(tg_request_t *r);
/* The body read into memory, or the plugin's replacement (set_body). */
tg_str_t tg_request_body(const tg_request_t *r);
/* Consumes a body already entirely buffered; else marks the connection to
 * close after the response (a body we did not read is never parsed as the
 * next request). */
void tg_request_skip_buffered_body(tg_request_t *r);

#endif
