/*
 * tg_request.c: a request from its complete head to its access-log line
 * (see tg_request.h): routing, the phase state machine (rewrite and access
 * plugins, then a local response or the proxy), the request-body pump
 * shared by the proxy, echo and plugins, finalization and logging.
 * Response heads and bodies are written by tg_response.c.
 */
#include "tg_request.h"
#include "tg_admin.h"
#include "tg_conn.h"
#include "tg_log.h"
#include "tg_lua.h"
#include "tg_proxy.h"
#include "tg_response.h"
#include "tg_router.h"
#include "tg_upstream.h"

#include <ctype.h>
#include <errno.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

/* Request pools start with one block big enough for the head copy, the
 * parsed header array and the rebuilt upstream head of a typical request. */
#define TG_REQUEST_POOL_BLOCK (16 * 1024)
/* Access-log lines longer than this are truncated (paths are the only long
 * field and they are bounded by max_uri_bytes, 8 KiB by default). */
#define TG_ACCESS_LINE_MAX 12288

static void request_run(tg_request_t *r);
static void redirect_https(tg_request_t *r);

static void rebase(tg_str_t *s, const char *from, const char *to) {
    if (s->p) s->p = to + (s->p - from);
}

/* Host without the port, lowercased, into r->host. TG_ERROR if unusable. */
static int set_host(tg_request_t *r) {
    tg_str_t h = r->http->host;
    size_t n = h.len;
    if (n == 0) {   /* HTTP/1.0 without Host */
        r->host[0] = '\0';
        r->host_len = 0;
        return TG_OK;
    }
    if (h.p[0] == '[') {
        const char *e = memchr(h.p, ']', n);
        if (e == NULL) return TG_ERROR;
        n = (size_t)(e - h.p) + 1;
    } else {
        const char *colon = memchr(h.p, ':', n);
        if (colon) n = (size_t)(colon - h.p);
    }
    /* "example.com." names the same host as "example.com" (nginx agrees). */
    if (n > 1 && h.p[n - 1] == '.') n--;
    if (n >= sizeof(r->host)) return TG_ERROR;
    for (size_t i = 0; i < n; i++) r->host[i] = (char)tolower((unsigned char)h.p[i]);
    r->host[n] = '\0';
    r->host_len = n;
    return TG_OK;
}

/* Path after strip_prefix, plus the query: what the upstream is asked for. */
static void set_upstream_uri(tg_request_t *r) {
    const tg_conf_route_t *rt = r->route;
    const char *p = r->path.p;
    size_t n = r->path.len;
    if (rt->strip_prefix && n >= rt->strip_prefix_len
        && memcmp(p, rt->strip_prefix, rt->strip_prefix_len) == 0
        && (n == rt->strip_prefix_len || p[rt->strip_prefix_len] == '/'
            || rt->strip_prefix[rt->strip_prefix_len - 1] == '/')) {
        p += rt->strip_prefix_len;
        n -= rt->strip_prefix_len;
        if (rt->strip_prefix[rt->strip_prefix_len - 1] == '/') {
            /* "/api/" stripped from "/api/x" leaves "x": keep its slash. */
            p--;
            n++;
        }
    }
    tg_str_t q = r->http->query;
    size_t total = (n ? n : 1) + (q.p ? q.len + 1 : 0);
    char *u = tg_pool_alloc(r->pool, total + 1);
    size_t k = 0;
    if (n == 0) u[k++] = '/';
    else { memcpy(u, p, n); k = n; }
    if (q.p) {
        u[k++] = '?';
        memcpy(u + k, q.p, q.len);
        k += q.len;
    }
    u[k] = '\0';
    r->upstream_uri.p = u;
    r->upstream_uri.len = k;
}

void tg_request_start(tg_conn_t *c, const tg_http_request_t *parsed) {
    tg_worker_t *w = c->worker;
    tg_pool_t *pool = tg_pool_create(TG_REQUEST_POOL_BLOCK);
    tg_request_t *r = tg_pool_calloc(pool, sizeof(*r));
    r->pool = pool;
    r->conn = c;
    r->worker = w;
    r->start = ev_now(w->loop);
    r->target = -1;
    r->phase = TG_PHASE_ROUTE;
    r->resp_content_length = -1;
    r->lua_co_ref = r->lua_ctx_ref = -1;
    memcpy(r->client_ip, c->ip, sizeof(r->client_ip));
    r->local_port = c->listener->port;
    r->https = c->ssl != NULL;
    c->r = r;

    /* Copy the head out of the connection buffer: the buffer is reused for
     * the body and the next request, the request keeps its head. */
    tg_buf_t *b = c->rbuf;
    const char *base = b->data + b->start;
    r->head = tg_pool_alloc(pool, parsed->head_len);
    memcpy(r->head, base, parsed->head_len);
    size_t hsize = offsetof(tg_http_request_t, headers)
                 + sizeof(tg_http_header_t) * (size_t)parsed->nheaders;
    r->http = tg_pool_alloc(pool, sizeof(tg_http_request_t));
    memcpy(r->http, parsed, hsize);
    memcpy(&r->http->nheaders, &parsed->nheaders,
           sizeof(tg_http_request_t) - offsetof(tg_http_request_t, nheaders));
    tg_http_request_t *h = r->http;
    rebase(&h->method_name, base, r->head);
    rebase(&h->target, base, r->head);
    if (h->path.p >= base && h->path.p < base + parsed->head_len) rebase(&h->path, base, r->head);
    rebase(&h->query, base, r->head);
    rebase(&h->host, base, r->head);
    for (int i = 0; i < h->nheaders; i++) {
        rebase(&h->headers[i].name, base, r->head);
        rebase(&h->headers[i].value, base, r->head);
    }
    b->start += parsed->head_len;

    if (h->chunked) {
        r->has_body = 1;
    } else if (h->content_length > 0) {
        r->has_body = 1;
        r->body_left = h->content_length;
    } else {
        r->body_done = 1;
    }
    if (!h->keepalive) c->close_after = 1;
    if (c->nrequests + 1 >= w->conf->limits.max_keepalive_requests) c->close_after = 1;

    if (set_host(r) != TG_OK) {
        tg_request_finalize(r, 400);
        return;
    }
    char *np = tg_pool_alloc(pool, h->path.len + 1);
    ssize_t nlen = tg_http_normalize_path(h->path.p, h->path.len, np);
    if (nlen < 0) {
        tg_request_finalize(r, 400);
        return;
    }
    np[nlen] = '\0';
    r->path.p = np;
    r->path.len = (size_t)nlen;

    if (w->conf->limits.max_body_bytes && h->content_length > 0
        && (uint64_t)h->content_length > w->conf->limits.max_body_bytes) {
        tg_request_finalize(r, 413);
        return;
    }

    if (c->listener->admin) {
        tg_admin_handle(r);
        return;
    }
    if (c->listener->redirect_https) {
        redirect_https(r);
        return;
    }

    r->route = tg_router_match(w->conf->router, r->host, r->host_len, h->method,
                               c->listener->port, r->path.p, r->path.len);
    if (r->route == NULL) {
        tg_request_finalize(r, 404);
        return;
    }
    set_upstream_uri(r);
    if (w->lua) r->lua_phases = tg_lua_route_phases(w->lua, r->route->index);
    r->phase = TG_PHASE_REWRITE;
    request_run(r);
}

/* A plain listener with redirect_https answers everything with a 301 to
 * the same host and target over https (the first TLS listener's port, or
 * 443), before routing: nothing of the request reaches a plugin or an
 * upstream over plain HTTP. */
static void redirect_https(tg_request_t *r) {
    const tg_http_request_t *h = r->http;
    uint16_t port = r->conn->listener->https_port;
    if (r->host_len == 0) {
        tg_request_finalize(r, 400);
        return;
    }
    size_t cap = r->host_len + h->path.len + h->query.len + 32;
    char *loc = tg_pool_alloc(r->pool, cap), *p = loc;
    memcpy(p, "https://", 8);
    p += 8;
    memcpy(p, r->host, r->host_len);
    p += r->host_len;
    if (port != 443) {
        *p++ = ':';
        p = tg_fmt_uint(p, port);
    }
    memcpy(p, h->path.p, h->path.len);
    p += h->path.len;
    if (h->query.p) {
        *p++ = '?';
        memcpy(p, h->query.p, h->query.len);
        p += h->query.len;
    }
    tg_hdr_list_edit(r->pool, &r->resp_hdrs, TG_HDR_SET, "Location", 8, loc, (size_t)(p - loc));
    r->phase = TG_PHASE_HEADER_FILTER;
    static const char body[] = "{\"error\":\"Moved Permanently\"}";
    tg_response_local(r, 301, body, sizeof(body) - 1);
}

/* Sends the response a plugin asked for with tg.response.exit(). */
static void respond_exit(tg_request_t *r) {
    tg_response_local(r, r->exit_status ? r->exit_status : 200, r->exit_body, r->exit_body_len);
}

/* Runs the phases from r->phase on until the request waits (Lua I/O, the
 * body, the upstream) or is answered. Re-entered by tg_request_lua_resumed. */
static void request_run(tg_request_t *r) {
    for (;;) {
        switch (r->phase) {
        case TG_PHASE_REWRITE:
        case TG_PHASE_ACCESS: {
            int rc = TG_OK;
            if (r->lua_phases & TG_LUA_BIT(r->phase)) rc = tg_lua_run_phase(r, r->phase);
            if (rc == TG_AGAIN || rc == TG_DECLINED) return;   /* waiting, or gone */
            if (rc == TG_DONE) { r->phase = TG_PHASE_HEADER_FILTER; respond_exit(r); return; }
            if (rc == TG_ERROR) { r->phase = TG_PHASE_HEADER_FILTER; tg_request_finalize(r, 500); return; }
            r->phase = r->phase == TG_PHASE_REWRITE ? TG_PHASE_ACCESS : TG_PHASE_BALANCER;
            break;
        }
        case TG_PHASE_BALANCER: {
            const tg_conf_response_t *resp = r->route->response;
            if (resp) {
                r->phase = TG_PHASE_HEADER_FILTER;
                if (resp->echo) tg_response_echo(r);
                else tg_response_static(r, resp);
                return;
            }
            tg_proxy_start(r);
            return;
        }
        default:
            return;
        }
    }
}

void tg_request_lua_resumed(tg_request_t *r, int rc) {
    if (r->phase == TG_PHASE_LOG || r->phase == TG_PHASE_DONE) {
        /* The log phase finished after the response: release the request. */
        if (rc != TG_AGAIN) {
            r->log_pending = 0;
            r->phase = TG_PHASE_DONE;
            tg_request_free(r);
        }
        return;
    }
    if (rc == TG_AGAIN) return;
    if (rc == TG_DONE) { r->phase = TG_PHASE_HEADER_FILTER; respond_exit(r); return; }
    if (rc == TG_ERROR) { r->phase = TG_PHASE_HEADER_FILTER; tg_request_finalize(r, 500); return; }
    if (r->body_read_wanted && !r->body_done) return;   /* body pump resumes us */
    r->phase = r->phase == TG_PHASE_REWRITE ? TG_PHASE_ACCESS : TG_PHASE_BALANCER;
    request_run(r);
}

/* Skips a request body that is already entirely buffered, so that a local
 * reply sent without reading it can keep the connection. Otherwise the
 * connection closes after the reply: the body is never parsed as a request. */
void tg_request_skip_buffered_body(tg_request_t *r) {
    tg_conn_t *c = r->conn;
    if (r->body_done || c == NULL) return;
    tg_buf_t *b = c->rbuf;
    size_t len = b ? tg_buf_len(b) : 0;
    if (!r->http->chunked) {
        if ((int64_t)len >= r->body_left) {
            b->start += (size_t)r->body_left;
            r->body_left = 0;
            r->body_done = 1;
            return;
        }
    } else if (len > 0) {
        tg_http_chunked_t copy = r->body_chunked;
        size_t off = 0;
        for (;;) {
            const char *d;
            size_t dl;
            ssize_t n = tg_http_chunked_decode(&copy, b->data + b->start + off, len - off, &d, &dl);
            if (n < 0) break;
            off += (size_t)n;
            if (copy.done) {
                b->start += off;
                r->body_done = 1;
                return;
            }
            if (off >= len || n == 0) break;
        }
    }
    c->close_after = c->must_linger = 1;
}

void tg_request_finalize(tg_request_t *r, int status) {
    if (r->uc) tg_proxy_abort(r);
    if (r->header_sent) {
        /* Too late to change the response: truncate it by closing. */
        if (r->conn && tg_response_flush_head(r) == TG_ERROR) return;   /* r is gone */
        if (r->conn) r->conn->close_after = r->conn->must_linger = 1;
        if (!r->status) r->status = status;
        tg_request_done(r);
        return;
    }
    if (r->conn && (status == 400 || status == 408)) r->conn->close_after = r->conn->must_linger = 1;
    tg_response_error(r, status);
}

/* ISO 8601 UTC time with milliseconds, for the access log. */
static size_t format_time(char *out, size_t cap, ev_tstamp t) {
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(out + n, cap - n, ".%03dZ", (int)((t - (double)s) * 1000));
    return n;
}

#define LOG_LIT(s) do { size_t _l = sizeof(s) - 1; if (pos + _l < cap) { memcpy(line + pos, s, _l); pos += _l; } } while (0)
#define LOG_STR(p, l) do { line[pos++] = '"'; tg_json_escape(line, cap - 2, &pos, (p), (l)); line[pos++] = '"'; } while (0)
#define LOG_FMT(...) do { int _n = snprintf(line + pos, cap - pos, __VA_ARGS__); if (_n > 0) pos = tg_min(cap - 1, pos + (size_t)_n); } while (0)

static void access_log(tg_request_t *r) {
    if (!tg_access_log_enabled()) return;
    char line[TG_ACCESS_LINE_MAX];
    size_t cap = sizeof(line) - 64, pos = 0;
    ev_tstamp now = ev_now(r->worker->loop);
    LOG_LIT("{\"time\":\"");
    pos += format_time(line + pos, cap - pos, r->start);
    LOG_LIT("\"");
    if (r->request_id) {
        LOG_LIT(",\"request_id\":");
        LOG_STR(r->request_id, strlen(r->request_id));
    }
    LOG_LIT(",\"client_ip\":");
    LOG_STR(r->client_ip, strlen(r->client_ip));
    LOG_LIT(",\"method\":");
    LOG_STR(r->http->method_name.p, r->http->method_name.len);
    /* The path only: query strings carry API keys and tokens. */
    LOG_LIT(",\"path\":");
    LOG_STR(r->http->path.p, r->http->path.len);
    LOG_FMT(",\"status\":%d,\"bytes_sent\":%llu,\"request_bytes\":%llu,\"duration_ms\":%.3f",
            r->status, (unsigned long long)r->bytes_sent,
            (unsigned long long)(r->http->head_len + r->body_bytes), (now - r->start) * 1000.0);
    if (r->route) {
        LOG_LIT(",\"route\":");
        LOG_STR(r->route->name, strlen(r->route->name));
    }
    if (r->upstream && r->target >= 0) {
        const tg_conf_upstream_t *u = r->upstream->conf;
        LOG_LIT(",\"upstream\":");
        LOG_STR(u->name, strlen(u->name));
        LOG_LIT(",\"upstream_addr\":");
        const char *a = u->targets[r->target].addr.text;
        LOG_STR(a, strlen(a));
        if (r->upstream_status) LOG_FMT(",\"upstream_status\":%d", r->upstream_status);
        LOG_FMT(",\"upstream_ms\":%.3f", r->upstream_ms);
    }
    LOG_LIT("}");
    tg_access_log_append(line, pos);
}

/* Counters and the access-log line; then the log plugins. Returns TG_AGAIN
 * when a log plugin waits on I/O (the request outlives its connection). */
static int log_phase(tg_request_t *r) {
    if (r->phase == TG_PHASE_LOG || r->phase == TG_PHASE_DONE) return TG_OK;
    r->phase = TG_PHASE_LOG;
    tg_stats_worker_t *st = r->worker->my_stats;
    st->requests++;
    int s = r->status;
    if (s >= 500) st->status_5xx++;
    else if (s >= 400) st->status_4xx++;
    else if (s >= 300) st->status_3xx++;
    else st->status_2xx++;
    access_log(r);
    if (r->lua_phases & TG_LUA_BIT(TG_PHASE_LOG)) {
        int rc = tg_lua_run_phase(r, TG_PHASE_LOG);
        if (rc == TG_AGAIN) {
            r->log_pending = 1;
            return TG_AGAIN;
        }
    }
    r->phase = TG_PHASE_DONE;
    return TG_OK;
}

void tg_request_done(tg_request_t *r) {
    tg_conn_t *c = r->conn;
    if (!r->body_done && c) c->close_after = c->must_linger = 1;
    if (r->uc) tg_proxy_abort(r);
    if (c) {
        c->r = NULL;
        r->conn = NULL;
    }
    if (log_phase(r) == TG_OK) tg_request_free(r);
    if (c) tg_conn_request_done(c);
}

void tg_request_free(tg_request_t *r) {
    if (r->uc) tg_proxy_abort(r);
    if (r->conn && r->conn->r == r) r->conn->r = NULL;
    r->conn = NULL;
    if (r->phase != TG_PHASE_DONE && !r->log_pending) {
        /* The client went away mid-request: log it as nginx's 499. */
        if (!r->status || !r->response_done) r->status = 499;
        if (log_phase(r) == TG_AGAIN) return;   /* freed when the log phase ends */
    }
    if (r->log_pending) return;
    if (r->hold) {
        /* Ended from inside a Lua phase (e.g. the body a plugin waits for
         * was too large): the caller up the stack releases it. */
        r->free_pending = 1;
        return;
    }
    tg_request_release(r);
}

void tg_request_release(tg_request_t *r) {
    tg_lua_request_free(r);
    tg_pool_destroy(r->pool);
}

int tg_request_body_pump(tg_request_t *r, tg_body_sink_pt sink) {
    tg_conn_t *c = r->conn;
    tg_worker_t *w = r->worker;
    uint64_t max = w->conf->limits.max_body_bytes;
    for (;;) {
        tg_buf_t *b = c->rbuf;
        size_t len = b ? tg_buf_len(b) : 0;
        if (r->body_done) {
            return sink(r, NULL, 0, 1) == TG_ERROR ? TG_ERROR : TG_OK;
        }
        if (len > 0) {
            const char *data;
            size_t dlen;
            if (r->http->chunked) {
                ssize_t n = tg_http_chunked_decode(&r->body_chunked, b->data + b->start, len, &data, &dlen);
                if (n < 0) {
                    tg_log_write(TG_LOG_INFO, r->request_id, "malformed chunked request body from %s", r->client_ip);
                    c->close_after = 1;
                    tg_request_finalize(r, 400);
                    return TG_ERROR;
                }
                b->start += (size_t)n;
                if (r->body_chunked.done) r->body_done = 1;
            } else {
                size_t n = (size_t)tg_min((int64_t)len, r->body_left);
                data = b->data + b->start;
                dlen = n;
                b->start += n;
                r->body_left -= (int64_t)n;
                if (r->body_left == 0) r->body_done = 1;
            }
            r->body_bytes += dlen;
            if (max && r->body_bytes > max) {
                c->close_after = 1;
                tg_request_finalize(r, 413);
                return TG_ERROR;
            }
            if (dlen == 0 && !r->body_done) continue;
            int rc = sink(r, data, dlen, r->body_done);
            if (rc == TG_ERROR) return TG_ERROR;
            if (r->body_done) return TG_OK;
            if (rc == TG_AGAIN) return TG_AGAIN;
            continue;
        }
        if (r->http->expect_continue && !r->continue_sent) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            struct iovec iov = { (void *)cont, sizeof(cont) - 1 };
            r->continue_sent = 1;
            if (tg_conn_send(c, &iov, 1) == TG_ERROR) {
                tg_request_finalize(r, 400);
                return TG_ERROR;
            }
        }
        ssize_t n = tg_conn_read(c);
        if (n > 0) continue;
        if (n == TG_AGAIN) {
            tg_conn_set_events(c, c->events | EV_READ);
            tg_conn_set_timer(c, w->conf->limits.body_timeout_ms);
            return TG_AGAIN;
        }
        /* EOF or error mid-body: the client is gone or broke the stream. */
        tg_log_write(TG_LOG_INFO, r->request_id, "client %s closed the connection while sending the body", r->client_ip);
        tg_conn_close(c);
        return TG_ERROR;
    }
}

/* ---- whole body in memory (echo, tg.request.get_body) ---- */

typedef struct {
    char   *p;
    size_t  len;
    size_t  cap;
} mem_body_t;

static int mem_sink(tg_request_t *r, const char *data, size_t len, int last) {
    mem_body_t *m = (mem_body_t *)r->body_mem;
    if (m == NULL) {
        m = tg_pool_calloc(r->pool, sizeof(*m));
        r->body_mem = (char *)m;
    }
    if (len) {
        if (m->len + len > m->cap) {
            /* Grow geometrically: the pool frees everything at the end. */
            size_t cap = m->cap ? m->cap * 2 : 4096;
            while (cap < m->len + len) cap *= 2;
            char *np = tg_pool_alloc(r->pool, cap);
            if (m->len) memcpy(np, m->p, m->len);
            m->p = np;
            m->cap = cap;
        }
        memcpy(m->p + m->len, data, len);
        m->len += len;
    }
    if (!last) return TG_OK;
    tg_conn_set_events(r->conn, r->conn->events & ~EV_READ);
    tg_conn_set_timer(r->conn, 0);
    if (r->body_read_wanted) {
        r->body_read_wanted = 0;
        if (r->lua_wait) tg_lua_wake(r->lua_wait);
        return TG_ERROR;   /* stop the pump: the request moved on */
    }
    if (r->body_for_echo) {
        tg_response_echo(r);
        return TG_ERROR;
    }
    return TG_OK;          /* read synchronously: the caller carries on */
}

tg_str_t tg_request_body(const tg_request_t *r) {
    const mem_body_t *m = (const mem_body_t *)r->body_mem;
    if (r->body_override.p) return r->body_override;
    if (m == NULL) return (tg_str_t){ "", 0 };
    return (tg_str_t){ m->p ? m->p : "", m->len };
}

int tg_request_read_body(tg_request_t *r) {
    if (r->body_mem && r->body_done) return TG_OK;
    if (!r->has_body) {
        r->body_done = 1;
        return TG_OK;
    }
    if (r->body_done) return TG_OK;   /* body already streamed elsewhere */
    int rc = tg_request_body_pump(r, mem_sink);
    if (rc == TG_OK) return TG_OK;
    if (rc == TG_ERROR) return TG_ERROR;
    return TG_AGAIN;
}

void tg_request_client_readable(tg_request_t *r) {
    if (r->phase == TG_PHASE_PROXY || r->proxy_state) {
        tg_proxy_client_readable(r);
        return;
    }
    if (!r->body_done && (r->body_read_wanted || r->body_for_echo)) {
        tg_request_body_pump(r, mem_sink);
        return;
    }
    /* Either the client went away (a request waiting in Lua is then
     * abandoned) or it pipelined its next request (left in the socket until
     * this response is out). */
    int peek = tg_conn_peek(r->conn);
    if (peek == 0) {
        tg_conn_close(r->conn);
        return;
    }
    tg_conn_set_events(r->conn, r->conn->events & ~EV_READ);
}

void tg_request_client_writable(tg_request_t *r) {
    if (!r->body_done && (r->conn->events & EV_READ))
        tg_conn_set_timer(r->conn, r->worker->conf->limits.body_timeout_ms);
    if (r->phase == TG_PHASE_PROXY || r->proxy_state) tg_proxy_client_writable(r);
}

void tg_request_client_timeout(tg_request_t *r) {
    if (r->phase == TG_PHASE_PROXY || r->proxy_state) {
        tg_proxy_client_timeout(r);
        return;
    }
    if (!r->body_done) {
        tg_log_write(TG_LOG_INFO, r->request_id, "client %s timed out sending the body", r->client_ip);
        tg_request_finalize(r, 408);
        return;
    }
    tg_conn_close(r->conn);
}
