/*
 * tg_lua_api.c: the C side of the PDK: plain-C functions that
 * lua/tollgate/ modules call through LuaJIT FFI (declared in
 * lua/tollgate/ffi.lua). They read the request in place (slices into its
 * head, no Lua tables built per request), record plugin edits in the
 * request's pool, and never block, yield or finish a request themselves.
 * Validation of arguments that would corrupt the wire format (CR/LF in a
 * header value, a space in a path) happens here; the Lua side turns a -1
 * into error(msg, 2).
 */
#include "tg_lua.h"
#include "tg_conn.h"
#include "tg_log.h"
#include "tg_response.h"
#include "tg_tls.h"
#include "tg_upstream.h"

#include <stdio.h>

static int valid_name(const char *p, size_t n) { return tg_http_is_token(p, n); }

static int valid_value(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
    }
    return 1;
}

/* ---- request ---- */

const tg_str_t *tg_ffi_req_method(tg_request_t *r) { return &r->http->method_name; }
const tg_str_t *tg_ffi_req_path(tg_request_t *r) { return &r->path; }
const tg_str_t *tg_ffi_req_raw_query(tg_request_t *r) { return &r->http->query; }
const tg_str_t *tg_ffi_req_upstream_uri(tg_request_t *r) { return &r->upstream_uri; }
const char *tg_ffi_req_client_ip(tg_request_t *r) { return r->client_ip; }
const char *tg_ffi_req_host(tg_request_t *r) { return r->host; }
int tg_ffi_req_port(tg_request_t *r) { return r->local_port; }
int tg_ffi_req_https(tg_request_t *r) { return r->https; }

/* The verified client certificate (mTLS listeners) as four strings:
 * subject, issuer, serial, SHA-256 fingerprint; owned by the connection.
 * 0 when there is none, or the connection is already gone. */
int tg_ffi_req_client_cert(tg_request_t *r, const char **out) {
    if (r->conn == NULL) return 0;
    const tg_tls_peer_t *p = tg_conn_peer(r->conn);
    if (p == NULL) return 0;
    out[0] = p->subject;
    out[1] = p->issuer;
    out[2] = p->serial;
    out[3] = p->fingerprint_sha256;
    return 1;
}
int tg_ffi_req_http_minor(tg_request_t *r) { return r->http->http_minor; }
const char *tg_ffi_req_route_name(tg_request_t *r) { return r->route ? r->route->name : NULL; }
double tg_ffi_req_start_time(tg_request_t *r) { return r->start; }

const tg_http_header_t *tg_ffi_req_headers(tg_request_t *r, int *n) {
    return tg_request_headers(r, n);
}

const tg_http_header_t *tg_ffi_req_header(tg_request_t *r, const char *name, size_t len) {
    int n;
    const tg_http_header_t *h = tg_request_headers(r, &n);
    return tg_http_header_find(h, n, name, len);
}

/* mode: TG_HDR_SET / ADD / CLEAR. -1: invalid name or value; -2: a header
 * the core manages (Host goes through set_host(), framing is the core's). */
int tg_ffi_req_header_set(tg_request_t *r, const char *name, size_t nlen,
                          const char *value, size_t vlen, int mode) {
    if (!valid_name(name, nlen) || (mode != TG_HDR_CLEAR && !valid_value(value, vlen))) return -1;
    tg_str_t n = { name, nlen };
    if (tg_str_caseeq_lit(n, "content-length") || tg_str_caseeq_lit(n, "transfer-encoding")
        || tg_str_caseeq_lit(n, "connection"))
        return -2;
    if (tg_str_caseeq_lit(n, "host")) {
        /* The upstream Host is one value, chosen in the proxy: record it. */
        if (mode == TG_HDR_CLEAR) r->host_override = tg_null_string;
        else r->host_override = (tg_str_t){ tg_pool_strndup(r->pool, value, vlen), vlen };
        return 0;
    }
    tg_hdr_list_edit(r->pool, tg_request_req_hdrs(r), mode, name, nlen, value, vlen);
    return 0;
}

/* Replaces the path sent upstream (the query is kept). -1 if invalid. */
int tg_ffi_req_set_path(tg_request_t *r, const char *p, size_t len) {
    if (len == 0 || p[0] != '/') return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#') return -1;
    }
    const char *q = memchr(r->upstream_uri.p, '?', r->upstream_uri.len);
    size_t qlen = q ? r->upstream_uri.len - (size_t)(q - r->upstream_uri.p) : 0;
    char *u = tg_pool_alloc(r->pool, len + qlen + 1);
    memcpy(u, p, len);
    if (qlen) memcpy(u + len, q, qlen);
    u[len + qlen] = '\0';
    r->upstream_uri = (tg_str_t){ u, len + qlen };
    return 0;
}

/* Replaces the query sent upstream (raw, already encoded; NULL removes it). */
int tg_ffi_req_set_query(tg_request_t *r, const char *q, size_t len) {
    for (size_t i = 0; q && i < len; i++) {
        unsigned char c = (unsigned char)q[i];
        if (c <= 0x20 || c >= 0x7f || c == '#') return -1;
    }
    const char *qm = memchr(r->upstream_uri.p, '?', r->upstream_uri.len);
    size_t plen = qm ? (size_t)(qm - r->upstream_uri.p) : r->upstream_uri.len;
    char *u = tg_pool_alloc(r->pool, plen + (q ? len + 1 : 0) + 1);
    memcpy(u, r->upstream_uri.p, plen);
    size_t k = plen;
    if (q) {
        u[k++] = '?';
        memcpy(u + k, q, len);
        k += len;
    }
    u[k] = '\0';
    r->upstream_uri = (tg_str_t){ u, k };
    return 0;
}

/* The body read by get_body (after tg_ffi_req_read_body returned 0). */
const char *tg_ffi_req_body(tg_request_t *r, size_t *len) {
    tg_str_t b = tg_request_body(r);
    *len = b.len;
    return b.p;
}

/* Replaces the body sent upstream. Requires the body to be read first (the
 * Lua side calls get_body), so the client's body is never left unread. */
int tg_ffi_req_set_body(tg_request_t *r, const char *p, size_t len) {
    if (!r->body_done) return -1;
    r->body_override = (tg_str_t){ tg_pool_strndup(r->pool, p, len), len };
    return 0;
}

void tg_ffi_req_set_id(tg_request_t *r, const char *id, size_t len) {
    r->request_id = tg_pool_strndup(r->pool, id, len);
}

/* Picks another configured upstream (canary). -1 if unknown. */
int tg_ffi_upstream_set(tg_request_t *r, const char *name, size_t len) {
    tg_worker_t *w = r->worker;
    for (int i = 0; i < w->conf->nupstreams; i++) {
        const char *n = w->conf->upstreams[i].name;
        if (strlen(n) == len && memcmp(n, name, len) == 0) {
            r->upstream = &w->upstreams[i];
            return 0;
        }
    }
    return -1;
}

const char *tg_ffi_upstream_name(tg_request_t *r) {
    if (r->upstream) return r->upstream->conf->name;
    if (r->route && r->route->upstream) return r->route->upstream->name;
    return NULL;
}

/* ---- response ---- */

/* tg.response.exit: records status and body; the Lua side then yields
 * TG_LUA_EXIT. Headers were set with tg_ffi_resp_header_set before. */
int tg_ffi_resp_exit(tg_request_t *r, int status, const char *body, size_t len) {
    if (status < 200 || status > 599) return -1;
    r->exit_status = status;
    r->exit_body = body ? tg_pool_strndup(r->pool, body, len) : "";
    r->exit_body_len = body ? len : 0;
    return 0;
}

int tg_ffi_resp_status(tg_request_t *r) { return r->status ? r->status : r->exit_status; }

int tg_ffi_resp_set_status(tg_request_t *r, int status) {
    if (r->header_sent || status < 200 || status > 599) return -1;
    r->status = status;
    return 0;
}

const tg_http_header_t *tg_ffi_resp_headers(tg_request_t *r, int *n) {
    *n = r->resp_hdrs.n;
    return r->resp_hdrs.h;
}

const tg_http_header_t *tg_ffi_resp_header(tg_request_t *r, const char *name, size_t len) {
    return tg_hdr_list_find(&r->resp_hdrs, name, len);
}

int tg_ffi_resp_header_set(tg_request_t *r, const char *name, size_t nlen,
                           const char *value, size_t vlen, int mode) {
    if (r->header_sent) return -3;
    if (!valid_name(name, nlen) || (mode != TG_HDR_CLEAR && !valid_value(value, vlen))) return -1;
    tg_str_t n = { name, nlen };
    if (tg_str_caseeq_lit(n, "content-length") || tg_str_caseeq_lit(n, "transfer-encoding")
        || tg_str_caseeq_lit(n, "connection"))
        return -2;
    tg_hdr_list_edit(r->pool, &r->resp_hdrs, mode, name, nlen, value, vlen);
    return 0;
}

int tg_ffi_resp_upstream_status(tg_request_t *r) { return r->upstream_status; }

/* ---- misc ---- */

void tg_ffi_log(int level, tg_request_t *r, const char *msg, size_t len) {
    if (!tg_log_enabled(level)) return;
    tg_log_write(level, r ? r->request_id : NULL, "%.*s", (int)len, msg);
}

double tg_ffi_now(void) {
    tg_worker_t *w = tg_lua_worker();
    return w ? ev_now(w->loop) : 0.0;
}

int tg_ffi_worker_slot(void) {
    tg_worker_t *w = tg_lua_worker();
    return w ? w->slot : -1;
}

/* ---- upstream targets (circuit breakers, canaries) ---- */

static tg_upstream_t *current_upstream(tg_request_t *r) {
    if (r->upstream) return r->upstream;
    if (r->route && r->route->upstream) return &r->worker->upstreams[r->route->upstream->index];
    return NULL;
}

int tg_ffi_upstream_ntargets(tg_request_t *r) {
    tg_upstream_t *u = current_upstream(r);
    return u ? u->conf->ntargets : 0;
}

/* "host:port" of target i (0-based) of the current upstream, or NULL. */
const char *tg_ffi_upstream_target_addr(tg_request_t *r, int i) {
    tg_upstream_t *u = current_upstream(r);
    if (u == NULL || i < 0 || i >= u->conf->ntargets) return NULL;
    return u->conf->targets[i].addr.text;
}

/* Keeps target i out of this request's choices (before the balancer). */
int tg_ffi_upstream_exclude_target(tg_request_t *r, int i) {
    tg_upstream_t *u = current_upstream(r);
    if (u == NULL || i < 0 || i >= u->conf->ntargets || i > 63) return -1;
    r->tried |= 1ULL << i;
    return 0;
}

int tg_ffi_upstream_nattempts(tg_request_t *r) { return r->nattempt_log; }

/* Attempt i: its target index and status (upstream status, or 502/504 when
 * the attempt failed). -1 when out of range. */
int tg_ffi_upstream_attempt(tg_request_t *r, int i, int *target) {
    if (i < 0 || i >= r->nattempt_log) return -1;
    *target = r->attempt_log[i].target;
    return r->attempt_log[i].status;
}

/* Every body_filter plugin of this request declined to touch the body (in
 * header_filter): the core skips body_filter and keeps the framing. */
void tg_ffi_resp_skip_body_filter(tg_request_t *r) {
    r->lua_phases &= ~TG_LUA_BIT(TG_PHASE_BODY_FILTER);
}
