/*
 * tg_proxy.c: the upstream half of a request (see tg_proxy.h).
 *
 * States (r->proxy_state):
 *   CONNECTING  non-blocking connect, connect_ms timer
 *   SENDING     head written; request body pumped from the client (the
 *               upstream is also watched for an early response)
 *   WAIT_RESP   everything sent; reading the response head, read_ms timer
 *   RESP_BODY   streaming the response body to the client
 *   TUNNEL      after 101 Switching Protocols: bytes both ways
 *
 * Backpressure: each direction moves at most one buffer at a time. When the
 * receiving socket does not take everything, the rest waits in its write
 * queue and the producing side stops reading until the queue drains, so a
 * request holds at most about one buffer per direction, whatever the body
 * size.
 *
 * Retries: a failed attempt is retried on another target (up to `retries`)
 * when nothing of the response came back and either the connect failed
 * (nothing was sent) or the method is idempotent and the request has no
 * body to replay. A pooled connection that turns out closed before any
 * response byte is replayed once on a fresh connection without counting as
 * a failure: that is the keep-alive race every proxy has to absorb.
 *
 * https targets: CONNECTING also covers the TLS handshake (connect_ms
 * bounds both, as nginx's proxy_connect_timeout does); a failed handshake
 * or certificate check is a connect failure (502, retried elsewhere, the
 * reason logged). Everything after it goes through tg_io_*().
 */
#include "tg_proxy.h"
#include "tg_conn.h"
#include "tg_log.h"
#include "tg_response.h"
#include "tg_tls.h"
#include "tg_upstream.h"

#include <errno.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
    PX_NONE = 0,
    PX_CONNECTING,
    PX_SENDING,
    PX_WAIT_RESP,
    PX_RESP_BODY,
    PX_TUNNEL,
};

static const char CRLF[] = "\r\n";
static const char LAST_CHUNK[] = "0\r\n\r\n";

static void attempt(tg_request_t *r);
static void start_exchange(tg_request_t *r);
static void upstream_io_cb(struct ev_loop *loop, ev_io *io, int revents);
static void upstream_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void pump_up(tg_request_t *r);
static void read_response(tg_request_t *r);
static void resp_body_pump(tg_request_t *r);
static void tunnel_pump(tg_request_t *r);

static double now_of(tg_request_t *r) { return ev_now(r->worker->loop); }

/* Decrypted response bytes waiting inside the SSL do not make the socket
 * readable: while reads are watched, deliver them as a read event. */
static void up_feed_pending(tg_upconn_t *uc) {
    if (uc->ssl && ev_is_active(&uc->io) && (uc->io.events & EV_READ) && tg_tls_pending(uc->ssl))
        ev_feed_event(uc->u->worker->loop, &uc->io, EV_READ);
}

static void up_events(tg_upconn_t *uc, int events) {
    struct ev_loop *loop = uc->u->worker->loop;
    if (ev_is_active(&uc->io) && (uc->io.events & (EV_READ | EV_WRITE)) == events) return;
    ev_io_stop(loop, &uc->io);
    if (events) {
        ev_io_modify(&uc->io, events);   /* same fd: no forced epoll_ctl */
        ev_io_start(loop, &uc->io);
        up_feed_pending(uc);
    }
}

static void up_timer(tg_upconn_t *uc, int ms) {
    struct ev_loop *loop = uc->u->worker->loop;
    ev_timer_stop(loop, &uc->timer);
    if (ms > 0) {
        ev_timer_set(&uc->timer, ms / 1000.0, 0.);
        ev_timer_start(loop, &uc->timer);
    }
}

static int method_idempotent(int m) {
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_TRACE
        || m == HTTP_PUT || m == HTTP_DELETE;
}

/* Releases the attempt's connection: to the pool when the exchange ended
 * cleanly, closed otherwise. */
static void release_upconn(tg_request_t *r, int reusable) {
    tg_upconn_t *uc = r->uc;
    if (uc == NULL) return;
    r->uc = NULL;
    uc->data = NULL;
    if (r->active_counted) {
        r->upstream->balancer.targets[uc->target].active--;
        r->active_counted = 0;
    }
    if (reusable) tg_upstream_pool_put(uc);
    else tg_upstream_conn_close(uc);
}

void tg_proxy_abort(tg_request_t *r) {
    release_upconn(r, 0);
    r->proxy_state = PX_NONE;
}

/* An attempt failed. Decides between a replay, a retry and the error. */
/* How an attempt failed: decides what may be tried again. */
enum {
    FAIL_CONNECT = 1,   /* nothing was sent */
    FAIL_CLOSED,        /* EOF or reset from the peer (the keep-alive race) */
    FAIL_TIMEOUT,       /* the upstream may still be working on it */
    FAIL_INVALID,       /* garbage, oversize head, bad framing */
};

static void attempt_failed(tg_request_t *r, int status, const char *what, int kind) {
    tg_upconn_t *uc = r->uc;
    const tg_conf_upstream_t *ucf = r->upstream->conf;
    const char *addr = ucf->targets[r->target].addr.text;
    int reused = uc && uc->reused;
    int got_response = r->resp_started;
    int connect_phase = kind == FAIL_CONNECT;
    int idempotent = method_idempotent(r->http->method);
    int replayable = !r->has_body || r->body_override.p || (r->body_mem && r->body_done);
    if (r->upstream_status == 0) r->upstream_ms = (now_of(r) - r->upstream_start) * 1000.0;
    if (r->nattempt_log < TG_REQUEST_MAX_ATTEMPT_LOG) {
        r->attempt_log[r->nattempt_log].target = (int16_t)r->target;
        r->attempt_log[r->nattempt_log++].status = (int16_t)status;
    }
    release_upconn(r, 0);
    r->worker->my_stats->upstream_errors++;

    if (r->header_sent) {
        tg_log_write(TG_LOG_ERR, r->request_id, "upstream \"%s\" %s %s while sending the response",
                     ucf->name, addr, what);
        tg_balancer_report(&r->upstream->balancer, r->target, 0, now_of(r));
        tg_request_finalize(r, status);
        return;
    }
    /* Only a reused connection the peer closed before answering is the
     * keep-alive race; a timeout means the upstream may be working on the
     * request, and a non-idempotent request is never sent twice. */
    if (kind == FAIL_CLOSED && reused && !got_response && replayable && idempotent
        && !r->stale_replayed) {
        /* The pooled connection was closed by the peer as we reused it. */
        tg_log_write(TG_LOG_INFO, r->request_id, "upstream \"%s\" %s: reused connection %s, replaying on a new one",
                     ucf->name, addr, what);
        r->stale_replayed = 1;
        r->no_pool = 1;
        r->tried &= ~(1ULL << (r->target & 63));
        r->attempts--;
        memset(&r->resp_scan, 0, sizeof(r->resp_scan));
        attempt(r);
        return;
    }
    tg_log_write(TG_LOG_ERR, r->request_id, "upstream \"%s\" %s %s (attempt %d)",
                 ucf->name, addr, what, r->attempts);
    tg_balancer_report(&r->upstream->balancer, r->target, 0, now_of(r));
    r->last_error = status;
    if (!got_response && r->attempts <= ucf->retries
        && (connect_phase || (idempotent && replayable))) {
        memset(&r->resp_scan, 0, sizeof(r->resp_scan));
        r->resp_started = 0;
        attempt(r);
        return;
    }
    tg_request_finalize(r, status);
}

/* ---- the upstream request head ---- */

/* 1 when the client's Connection header names this header (hop-by-hop). */
static int connection_lists(const tg_request_t *r, tg_str_t name) {
    const tg_http_request_t *h = r->http;
    for (int i = 0; i < h->nheaders; i++)
        if (tg_str_caseeq_lit(h->headers[i].name, "connection")
            && tg_http_token_list_has(h->headers[i].value, name.p, name.len))
            return 1;
    return 0;
}

static int is_replaced(tg_str_t n) {
    return tg_str_caseeq_lit(n, "host") || tg_str_caseeq_lit(n, "content-length")
        || tg_str_caseeq_lit(n, "expect") || tg_str_caseeq_lit(n, "x-forwarded-for")
        || tg_str_caseeq_lit(n, "x-forwarded-proto") || tg_str_caseeq_lit(n, "x-forwarded-host")
        || tg_str_caseeq_lit(n, "x-forwarded-port") || tg_str_caseeq_lit(n, "x-real-ip");
}

#define PUT(s, n) do { memcpy(p, (s), (n)); p += (n); } while (0)
#define PUTS(lit) PUT(lit, sizeof(lit) - 1)

static size_t build_request_head(tg_request_t *r, char **out) {
    const tg_http_request_t *h = r->http;
    const tg_conf_target_t *t = &r->upstream->conf->targets[r->target];
    int nh;
    const tg_http_header_t *hd = tg_request_headers(r, &nh);
    size_t cap = h->head_len + r->upstream_uri.len + strlen(t->host_header) + r->host_override.len + 512;
    for (int i = 0; r->req_hdrs && i < nh; i++) cap += hd[i].name.len + hd[i].value.len + 4;
    char *buf = tg_pool_alloc(r->pool, cap), *p = buf;

    PUT(h->method_name.p, h->method_name.len);
    PUTS(" ");
    PUT(r->upstream_uri.p, r->upstream_uri.len);
    PUTS(" HTTP/1.1\r\nHost: ");
    if (r->host_override.p) PUT(r->host_override.p, r->host_override.len);
    else if (r->route->preserve_host && h->host.len) PUT(h->host.p, h->host.len);
    else PUT(t->host_header, strlen(t->host_header));
    PUTS("\r\n");

    int conn_opts = tg_http_has_connection_options(h->headers, h->nheaders);
    for (int i = 0; i < nh; i++) {
        tg_str_t n = hd[i].name, v = hd[i].value;
        if (tg_http_is_hop_by_hop(n) || is_replaced(n) || (conn_opts && connection_lists(r, n))) continue;
        PUT(n.p, n.len);
        PUTS(": ");
        PUT(v.p, v.len);
        PUTS("\r\n");
    }
    /* X-Forwarded-For: every value the client sent, in order, then the
     * client's address (the de-facto order proxies append in). */
    PUTS("X-Forwarded-For: ");
    for (int i = 0; i < nh; i++) {
        if (!tg_str_caseeq_lit(hd[i].name, "x-forwarded-for") || hd[i].value.len == 0) continue;
        PUT(hd[i].value.p, hd[i].value.len);
        PUTS(", ");
    }
    PUT(r->client_ip, strlen(r->client_ip));
    PUTS("\r\nX-Real-IP: ");
    PUT(r->client_ip, strlen(r->client_ip));
    if (r->https) PUTS("\r\nX-Forwarded-Proto: https\r\n");
    else PUTS("\r\nX-Forwarded-Proto: http\r\n");
    if (h->host.len) {
        PUTS("X-Forwarded-Host: ");
        PUT(h->host.p, h->host.len);
        PUTS("\r\n");
    }
    PUTS("X-Forwarded-Port: ");
    p = tg_fmt_uint(p, r->local_port);
    PUTS("\r\n");
    if (r->body_override.p || (r->body_mem && r->body_done))
    {
        PUTS("Content-Length: ");
        p = tg_fmt_uint(p, tg_request_body(r).len);
        PUTS("\r\n");
    }
    else if (h->chunked) PUTS("Transfer-Encoding: chunked\r\n");
    else if (h->content_length >= 0) {
        PUTS("Content-Length: ");
        p = tg_fmt_uint(p, (uint64_t)h->content_length);
        PUTS("\r\n");
    }
    if (h->upgrade) {
        tg_str_t up = tg_request_header(r, "upgrade", 7);
        PUTS("Connection: upgrade\r\nUpgrade: ");
        PUT(up.p, up.len);
        PUTS("\r\n");
    }
    PUTS("\r\n");
    *out = buf;
    return (size_t)(p - buf);
}

/* ---- attempts ---- */

/* Advances an https target's handshake; starts the exchange when done. */
static void handshake(tg_request_t *r) {
    tg_upconn_t *uc = r->uc;
    char err[256], what[300];
    int events = 0;
    int rc = tg_upstream_handshake(uc, &events, err, sizeof(err));
    if (rc == TG_AGAIN) {
        up_events(uc, events);
        return;
    }
    if (rc != TG_OK) {
        snprintf(what, sizeof(what), "TLS handshake failed: %s", err);
        attempt_failed(r, 502, what, FAIL_CONNECT);
        return;
    }
    up_timer(uc, 0);
    start_exchange(r);
}

static void start_exchange(tg_request_t *r) {
    tg_upconn_t *uc = r->uc;
    char *head;
    size_t n = build_request_head(r, &head);
    struct iovec iov[2] = { { head, n }, { NULL, 0 } };
    int iovcnt = 1;
    if (r->body_override.p || (r->body_mem && r->body_done)) {
        /* A plugin read or replaced the body: it goes from memory. */
        tg_str_t b = tg_request_body(r);
        iov[1] = (struct iovec){ (void *)b.p, b.len };
        iovcnt = 2;
        r->up_body_sent = 1;
    }
    uc->nrequests++;
    r->proxy_state = PX_SENDING;
    if (tg_io_writev(&uc->wq, uc->fd, uc->ssl, iov, iovcnt) == TG_ERROR) {
        attempt_failed(r, 502, "reset the connection", FAIL_CLOSED);
        return;
    }
    pump_up(r);
}

static void attempt(tg_request_t *r) {
    tg_upstream_t *u = r->upstream;
    const tg_conf_upstream_t *ucf = u->conf;
    tg_str_t key = tg_null_string;
    if (ucf->balance == TG_BALANCE_HASH) {
        if (ucf->hash_key == TG_HASH_KEY_HEADER) key = tg_request_header(r, ucf->hash_header, strlen(ucf->hash_header));
        else key = (tg_str_t){ r->conn->ip, strlen(r->conn->ip) };
    }
    int i = tg_balancer_pick(&u->balancer, now_of(r), r->tried, key.p ? key.p : "", key.len);
    if (i < 0) {
        if (r->attempts == 0) {
            tg_log_write(TG_LOG_ERR, r->request_id, "upstream \"%s\": no target available (all marked down)", ucf->name);
            tg_request_finalize(r, 503);
        } else {
            tg_request_finalize(r, r->last_error ? r->last_error : 502);
        }
        return;
    }
    r->target = i;
    r->tried |= 1ULL << (i & 63);
    r->attempts++;
    r->resp_started = 0;
    u->balancer.targets[i].active++;
    r->active_counted = 1;
    r->upstream_start = now_of(r);

    tg_upconn_t *uc = r->no_pool ? NULL : tg_upstream_pool_get(u, i);
    r->no_pool = 0;
    if (uc == NULL) {
        uc = tg_upstream_connect(u, i);
        if (uc == NULL) {
            char what[128];
            snprintf(what, sizeof(what), "connect failed: %s", strerror(errno));
            u->balancer.targets[i].active--;
            r->active_counted = 0;
            attempt_failed(r, 502, what, FAIL_CONNECT);
            return;
        }
    }
    r->uc = uc;
    uc->data = r;
    if (uc->reused) {
        /* The pooled connection's fd is registered already. */
        ev_set_cb(&uc->io, upstream_io_cb);
        ev_io_modify(&uc->io, 0);
    } else {
        ev_io_init(&uc->io, upstream_io_cb, uc->fd, 0);
    }
    uc->io.data = uc;
    ev_init(&uc->timer, upstream_timer_cb);
    uc->timer.data = uc;
    if (!uc->connected) {
        r->proxy_state = PX_CONNECTING;
        up_events(uc, EV_WRITE);
        up_timer(uc, ucf->connect_ms);
        return;
    }
    if (uc->handshaking) {
        r->proxy_state = PX_CONNECTING;
        up_timer(uc, ucf->connect_ms);
        handshake(r);
        return;
    }
    start_exchange(r);
}

void tg_proxy_start(tg_request_t *r) {
    tg_worker_t *w = r->worker;
    if (r->upstream == NULL) r->upstream = &w->upstreams[r->route->upstream->index];
    r->phase = TG_PHASE_PROXY;
    /* Reading the client is driven by the body pump from here on. */
    tg_conn_set_events(r->conn, 0);
    attempt(r);
}

/* ---- request body, client -> upstream ---- */

static int upstream_sink(tg_request_t *r, const char *data, size_t len, int last) {
    tg_upconn_t *uc = r->uc;
    if (r->up_body_sent) return TG_OK;
    struct iovec iov[4];
    int n = 0;
    char hdr[24];
    if (r->http->chunked) {
        if (len) {
            iov[n++] = (struct iovec){ hdr, tg_http_chunk_header(hdr, len) };
            iov[n++] = (struct iovec){ (void *)data, len };
            iov[n++] = (struct iovec){ (void *)CRLF, 2 };
        }
        if (last) iov[n++] = (struct iovec){ (void *)LAST_CHUNK, sizeof(LAST_CHUNK) - 1 };
    } else if (len) {
        iov[n++] = (struct iovec){ (void *)data, len };
    }
    if (last) r->up_body_sent = 1;
    if (n == 0) return TG_OK;
    int rc = tg_io_writev(&uc->wq, uc->fd, uc->ssl, iov, n);
    if (rc == TG_ERROR) {
        attempt_failed(r, 502, "reset the connection while receiving the body", FAIL_CLOSED);
        return TG_ERROR;
    }
    return rc == TG_AGAIN ? TG_AGAIN : TG_OK;
}

static void pump_up(tg_request_t *r) {
    tg_upconn_t *uc = r->uc;
    tg_conn_t *c = r->conn;
    const tg_conf_upstream_t *ucf = r->upstream->conf;
    if (!tg_wqueue_empty(&uc->wq)) {
        /* The upstream is slow to take what we have: stop reading the client. */
        tg_conn_set_events(c, c->events & ~EV_READ);
        tg_conn_set_timer(c, 0);
        up_events(uc, EV_READ | EV_WRITE);
        up_timer(uc, ucf->send_ms);
        return;
    }
    if (!r->up_body_sent) {
        if (r->body_done && !r->has_body) {
            r->up_body_sent = 1;
        } else {
            int rc = tg_request_body_pump(r, upstream_sink);
            if (rc == TG_ERROR) return;
            if (!tg_wqueue_empty(&uc->wq)) {
                tg_conn_set_events(c, c->events & ~EV_READ);
                tg_conn_set_timer(c, 0);
                up_events(uc, EV_READ | EV_WRITE);
                up_timer(uc, ucf->send_ms);
                return;
            }
            if (rc == TG_AGAIN) {
                /* Waiting for the client (pump armed its read and body
                 * timer); an early upstream answer is still noticed. */
                up_events(uc, EV_READ);
                up_timer(uc, 0);
                return;
            }
        }
    }
    /* Everything is sent. The client stays watched so that a client that
     * goes away is noticed (tg_proxy_client_readable). */
    tg_conn_set_events(c, c->events | EV_READ);
    tg_conn_set_timer(c, 0);
    r->proxy_state = PX_WAIT_RESP;
    up_events(uc, EV_READ);
    up_timer(uc, ucf->read_ms);
}

void tg_proxy_client_readable(tg_request_t *r) {
    switch (r->proxy_state) {
    case PX_SENDING:
        pump_up(r);
        break;
    case PX_TUNNEL:
        tunnel_pump(r);
        break;
    default: {
        /* Readable while we wait for or stream the response: either the
         * client went away (then the upstream work is abandoned, as nginx
         * does) or it pipelined its next request (left queued). */
        int n = tg_conn_peek(r->conn);
        if (n == 0) {
            tg_log_write(TG_LOG_INFO, r->request_id, "client %s closed the connection while waiting for the response",
                         r->client_ip);
            tg_conn_close(r->conn);
            return;
        }
        if (n > 0) tg_conn_set_events(r->conn, r->conn->events & ~EV_READ);
    }
    }
}

void tg_proxy_client_writable(tg_request_t *r) {
    if (r->proxy_state == PX_RESP_BODY) resp_body_pump(r);
    else if (r->proxy_state == PX_TUNNEL) tunnel_pump(r);
}

void tg_proxy_client_timeout(tg_request_t *r) {
    tg_conn_t *c = r->conn;
    if (r->proxy_state == PX_SENDING && !r->body_done) {
        tg_log_write(TG_LOG_INFO, r->request_id, "client %s timed out sending the body", c->ip);
        tg_request_finalize(r, 408);
        return;
    }
    tg_log_write(TG_LOG_INFO, r->request_id, "client %s timed out reading the response", c->ip);
    tg_conn_close(c);
}

/* ---- response head, upstream -> client ---- */

static ssize_t read_upstream(tg_request_t *r) {
    tg_upconn_t *uc = r->uc;
    if (uc->buf == NULL) uc->buf = tg_buf_get(&r->worker->bufs);
    tg_buf_t *b = uc->buf;
    if (tg_buf_len(b) == 0) b->start = b->end = 0;
    if (tg_buf_room(b) == 0) tg_buf_compact(b);
    if (tg_buf_room(b) == 0) return TG_AGAIN;
    ssize_t n = tg_io_read(uc->fd, uc->ssl, b->data + b->end, tg_buf_room(b));
    if (n > 0) {
        b->end += (size_t)n;
        up_feed_pending(uc);
    }
    return n;
}

static int connection_lists_resp(const tg_http_response_t *resp, tg_str_t name) {
    for (int i = 0; i < resp->nheaders; i++)
        if (tg_str_caseeq_lit(resp->headers[i].name, "connection")
            && tg_http_token_list_has(resp->headers[i].value, name.p, name.len))
            return 1;
    return 0;
}

static void start_tunnel(tg_request_t *r);

static void send_response_head(tg_request_t *r) {
    tg_http_response_t *resp = r->resp;
    tg_conn_t *c = r->conn;
    int bodyless = tg_http_response_bodyless(r->http->method, resp->status);

    r->frame = TG_FRAME_CHUNKED;
    if (bodyless) {
        r->resp_up_done = 1;
        r->frame = TG_FRAME_NONE;
        r->resp_content_length = resp->content_length;   /* HEAD: informative */
    } else if (resp->chunked) {
        r->resp_from_upstream_chunked = 1;
    } else if (resp->content_length >= 0) {
        r->resp_left = resp->content_length;
        if (r->resp_left == 0) r->resp_up_done = 1;
        r->frame = TG_FRAME_LENGTH;
        r->resp_content_length = resp->content_length;
    } else {
        r->resp_until_close = 1;
    }
    if (r->frame == TG_FRAME_CHUNKED && r->http->http_minor == 0) r->frame = TG_FRAME_CLOSE;
    if (r->early_response) c->close_after = 1;

    /* The headers plugins see and the client gets: the upstream's, minus
     * hop-by-hop ones and the framing, which the core sets; then those a
     * plugin set before the response existed (in access, e.g. rate-limit
     * headers), replacing upstream headers of the same name. */
    tg_hdr_list_t pre = r->resp_hdrs;
    tg_hdr_list_t *l = &r->resp_hdrs;
    l->n = 0;
    l->cap = 0;
    l->h = NULL;
    int conn_opts = tg_http_has_connection_options(resp->headers, resp->nheaders);
    int cap = resp->nheaders + pre.n + 8;
    l->h = tg_pool_alloc(r->pool, sizeof(*l->h) * (size_t)cap);
    l->cap = cap;
    for (int i = 0; i < resp->nheaders; i++) {
        tg_str_t n = resp->headers[i].name;
        if (tg_http_is_hop_by_hop(n) || (conn_opts && connection_lists_resp(resp, n))) continue;
        if (tg_str_caseeq_lit(n, "content-length")) continue;
        /* A plugin's header replaces the upstream's of the same name. */
        if (pre.n && tg_http_header_find(pre.h, pre.n, n.p, n.len)) continue;
        l->h[l->n++] = resp->headers[i];
    }
    /* ... keeping every value the plugin added; the pool already owns them. */
    if (pre.n) memcpy(l->h + l->n, pre.h, sizeof(*pre.h) * (size_t)pre.n);
    l->n += pre.n;
    r->status = resp->status;
    r->proxy_state = PX_RESP_BODY;
    if (tg_response_send_head(r) != TG_OK) return;
    resp_body_pump(r);
}

static void read_response(tg_request_t *r) {
    tg_upconn_t *uc = r->uc;
    ssize_t n = read_upstream(r);
    if (n == TG_AGAIN) {
        if (uc->buf && tg_buf_room(uc->buf) == 0) {
            attempt_failed(r, 502, "sent a response head larger than the buffer", FAIL_INVALID);
        }
        return;
    }
    if (n == 0 || n == TG_ERROR) {
        int any = uc->buf && tg_buf_len(uc->buf) > 0;
        if (any) r->resp_started = 1;
        attempt_failed(r, 502, n == 0 ? "closed the connection before the response"
                                      : "reset the connection", FAIL_CLOSED);
        return;
    }
    r->resp_started = 1;
    tg_buf_t *b = uc->buf;
    if (r->resp == NULL) {
        /* Not calloc: the 4 KiB header array is written by the parser. */
        r->resp = tg_pool_alloc(r->pool, sizeof(tg_http_response_t));
        memset(r->resp, 0, offsetof(tg_http_response_t, headers));
        r->resp->nheaders = 0;
        r->resp->head_len = 0;
    }
    for (;;) {
        int rc = tg_http_parse_response(&r->resp_scan, b->data + b->start, tg_buf_len(b),
                                        b->size - 1, r->resp);
        if (rc == TG_AGAIN) return;
        if (rc == TG_ERROR) {
            attempt_failed(r, 502, "sent an invalid response", FAIL_INVALID);
            return;
        }
        if (r->resp->status >= 100 && r->resp->status < 200 && r->resp->status != 101) {
            /* Interim response (100 Continue...): the client got ours. */
            b->start += r->resp->head_len;
            memset(&r->resp_scan, 0, sizeof(r->resp_scan));
            if (tg_buf_len(b) == 0) return;
            continue;
        }
        break;
    }
    /* The response head is copied into the request pool: the buffer is
     * reused for the body. */
    tg_http_response_t *resp = r->resp;
    char *copy = tg_pool_alloc(r->pool, resp->head_len);
    const char *base = b->data + b->start;
    memcpy(copy, base, resp->head_len);
#define REB(s) do { if ((s).p) (s).p = copy + ((s).p - base); } while (0)
    REB(resp->reason);
    for (int i = 0; i < resp->nheaders; i++) {
        REB(resp->headers[i].name);
        REB(resp->headers[i].value);
    }
#undef REB
    b->start += resp->head_len;
    r->upstream_status = resp->status;
    r->upstream_ms = (now_of(r) - r->upstream_start) * 1000.0;
    if (r->nattempt_log < TG_REQUEST_MAX_ATTEMPT_LOG) {
        r->attempt_log[r->nattempt_log].target = (int16_t)r->target;
        r->attempt_log[r->nattempt_log++].status = (int16_t)resp->status;
    }
    tg_balancer_report(&r->upstream->balancer, r->target, 1, now_of(r));
    up_timer(uc, 0);

    if (resp->status == 101) {
        if (!r->http->upgrade) {
            attempt_failed(r, 502, "switched protocols without an upgrade request", FAIL_INVALID);
            return;
        }
        start_tunnel(r);
        return;
    }
    if (!r->up_body_sent) {
        /* The upstream answered before taking the whole body (e.g. 413):
         * forward the answer and close: the rest of the body is unread. */
        r->early_response = 1;
        tg_conn_set_events(r->conn, r->conn->events & ~EV_READ);
        tg_conn_set_timer(r->conn, 0);
        r->conn->close_after = 1;
    }
    send_response_head(r);
}

/* ---- response body, upstream -> client ---- */

static void finish_response(tg_request_t *r) {
    tg_upconn_t *uc = r->uc;
    /* Reusable only after a clean, complete exchange with nothing extra
     * buffered (bytes past the response mean the peer is out of sync). */
    int reusable = r->resp->keepalive && !r->resp_until_close && r->up_body_sent
                && !r->early_response && uc && (uc->buf == NULL || tg_buf_len(uc->buf) == 0);
    release_upconn(r, reusable);
    r->proxy_state = PX_NONE;
    r->response_done = 1;
    tg_request_done(r);
}

static void resp_body_pump(tg_request_t *r) {
    tg_conn_t *c = r->conn;
    const tg_conf_upstream_t *ucf = r->upstream->conf;
    for (;;) {
        tg_upconn_t *uc = r->uc;
        if (!tg_wqueue_empty(&c->wq)) {
            /* The client is slow: stop reading the upstream until it drains
             * (tg_conn_send armed the client's write watcher and timer). */
            up_events(uc, 0);
            up_timer(uc, 0);
            return;
        }
        tg_buf_t *b = uc->buf;
        size_t len = b ? tg_buf_len(b) : 0;
        if (r->resp_up_done) {
            /* Bytes still buffered past the end of the response mean the
             * connection is out of sync: finish_response won't reuse it. */
            if (tg_response_send_body(r, NULL, 0, 1) == TG_ERROR) return;
            finish_response(r);
            return;
        }
        if (len > 0) {
            const char *data;
            size_t dlen;
            if (r->resp_from_upstream_chunked) {
                ssize_t n = tg_http_chunked_decode(&r->resp_chunked, b->data + b->start, len, &data, &dlen);
                if (n < 0) {
                    attempt_failed(r, 502, "sent a malformed chunked body", FAIL_INVALID);
                    return;
                }
                b->start += (size_t)n;
                if (r->resp_chunked.done) r->resp_up_done = 1;
            } else if (r->resp_until_close) {
                data = b->data + b->start;
                dlen = len;
                b->start += len;
            } else {
                dlen = (size_t)tg_min((int64_t)len, r->resp_left);
                data = b->data + b->start;
                b->start += dlen;
                r->resp_left -= (int64_t)dlen;
                if (r->resp_left == 0) r->resp_up_done = 1;
            }
            if (dlen || r->resp_up_done) {
                if (tg_response_send_body(r, data, dlen, r->resp_up_done) == TG_ERROR) return;
            }
            continue;
        }
        ssize_t n = read_upstream(r);
        if (n == TG_AGAIN) {
            /* The body is not here yet: the client gets the head now. */
            if (tg_response_flush_head(r) == TG_ERROR) return;
            up_events(uc, EV_READ);
            up_timer(uc, ucf->read_ms);
            return;
        }
        if (n == 0 && r->resp_until_close) {
            r->resp_up_done = 1;
            continue;
        }
        if (n <= 0) {
            attempt_failed(r, 502, "closed the connection in the middle of the response body", FAIL_CLOSED);
            return;
        }
    }
}

/* ---- tunnel (101 Switching Protocols) ---- */

static void start_tunnel(tg_request_t *r) {
    tg_http_response_t *resp = r->resp;
    tg_conn_t *c = r->conn;
    size_t cap = resp->head_len + 128;
    char *buf = tg_pool_alloc(r->pool, cap), *p = buf;
    p += sprintf(p, "HTTP/1.1 101 ");
    if (resp->reason.len) PUT(resp->reason.p, resp->reason.len);
    else PUTS("Switching Protocols");
    PUTS("\r\n");
    int conn_opts = tg_http_has_connection_options(resp->headers, resp->nheaders);
    for (int i = 0; i < resp->nheaders; i++) {
        tg_str_t n = resp->headers[i].name, v = resp->headers[i].value;
        if (tg_str_caseeq_lit(n, "upgrade")) {
            PUTS("Upgrade: ");
            PUT(v.p, v.len);
            PUTS("\r\n");
            continue;
        }
        if (tg_http_is_hop_by_hop(n) || (conn_opts && connection_lists_resp(resp, n))) continue;
        PUT(n.p, n.len);
        PUTS(": ");
        PUT(v.p, v.len);
        PUTS("\r\n");
    }
    PUTS("Connection: upgrade\r\n\r\n");
    r->status = 101;
    r->header_sent = 1;
    r->tunnel = 1;
    r->proxy_state = PX_TUNNEL;
    r->body_done = 1;      /* the rest of the stream is the tunnel's */
    c->close_after = 1;
    struct iovec iov = { buf, (size_t)(p - buf) };
    r->bytes_sent += iov.iov_len;
    if (tg_conn_send(c, &iov, 1) == TG_ERROR) {
        tg_conn_close(c);
        return;
    }
    tunnel_pump(r);
}

static void tunnel_end(tg_request_t *r) {
    release_upconn(r, 0);
    r->proxy_state = PX_NONE;
    r->response_done = 1;
    tg_request_done(r);
}

/* Moves bytes both ways. Each direction uses the reading side's buffer and
 * the writing side's queue; a direction pauses while its queue is full. */
static void tunnel_pump(tg_request_t *r) {
    tg_conn_t *c = r->conn;
    tg_upconn_t *uc = r->uc;
    int idle_ms = r->upstream->conf->read_ms;
    int progress = 1, up_eof = 0, client_eof = 0;
    while (progress) {
        progress = 0;
        /* upstream -> client */
        if (tg_wqueue_empty(&c->wq)) {
            tg_buf_t *b = uc->buf;
            if (b && tg_buf_len(b)) {
                struct iovec iov = { b->data + b->start, tg_buf_len(b) };
                r->bytes_sent += iov.iov_len;
                b->start = b->end = 0;
                if (tg_conn_send(c, &iov, 1) == TG_ERROR) { tunnel_end(r); return; }
                progress = 1;
            } else {
                ssize_t n = read_upstream(r);
                if (n > 0) progress = 1;
                else if (n == 0 || n == TG_ERROR) up_eof = 1;
            }
        }
        /* client -> upstream */
        if (tg_wqueue_empty(&uc->wq)) {
            tg_buf_t *b = c->rbuf;
            if (b && tg_buf_len(b)) {
                struct iovec iov = { b->data + b->start, tg_buf_len(b) };
                b->start = b->end = 0;
                if (tg_io_writev(&uc->wq, uc->fd, uc->ssl, &iov, 1) == TG_ERROR) { tunnel_end(r); return; }
                progress = 1;
            } else {
                ssize_t n = tg_conn_read(c);
                if (n > 0) progress = 1;
                else if (n == 0 || n == TG_ERROR) client_eof = 1;
            }
        }
        if (up_eof || client_eof) break;
    }
    if ((up_eof && tg_wqueue_empty(&c->wq)) || client_eof) {
        tunnel_end(r);
        return;
    }
    if (up_eof) {
        /* Let the client's queue drain, then end (via client_writable). */
        up_events(uc, 0);
        return;
    }
    int cev = EV_READ, uev = EV_READ;
    if (!tg_wqueue_empty(&c->wq)) { cev |= EV_WRITE; uev &= ~EV_READ; }
    if (!tg_wqueue_empty(&uc->wq)) { uev |= EV_WRITE; cev &= ~EV_READ; }
    tg_conn_set_events(c, cev);
    up_events(uc, uev);
    up_timer(uc, idle_ms);
    tg_conn_set_timer(c, 0);
}

/* ---- upstream events ---- */

static void upstream_io_cb(struct ev_loop *loop, ev_io *io, int revents) {
    tg_upconn_t *uc = io->data;
    tg_request_t *r = uc->data;
    switch (r->proxy_state) {
    case PX_CONNECTING:
        if (!uc->connected && tg_upstream_connect_finish(uc) != TG_OK) {
            char what[128];
            snprintf(what, sizeof(what), "connect failed: %s", strerror(errno));
            attempt_failed(r, 502, what, FAIL_CONNECT);
            return;
        }
        if (uc->handshaking) {
            handshake(r);
            return;
        }
        up_timer(uc, 0);
        start_exchange(r);
        return;
    case PX_SENDING:
    case PX_WAIT_RESP:
        if (revents & EV_WRITE) {
            int rc = tg_io_flush(&uc->wq, uc->fd, uc->ssl);
            if (rc == TG_ERROR) {
                attempt_failed(r, 502, "reset the connection while receiving the request", FAIL_CLOSED);
                return;
            }
            if (rc == TG_OK) {
                /* pump_up may finish or free the request: return, a pending
                 * read event fires again on the next loop turn. */
                pump_up(r);
                return;
            }
        }
        if (revents & EV_READ) read_response(r);
        return;
    case PX_RESP_BODY:
        resp_body_pump(r);
        return;
    case PX_TUNNEL:
        if (revents & EV_WRITE) {
            if (tg_io_flush(&uc->wq, uc->fd, uc->ssl) == TG_ERROR) { tunnel_end(r); return; }
        }
        tunnel_pump(r);
        return;
    }
}

static void upstream_timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    tg_upconn_t *uc = t->data;
    tg_request_t *r = uc->data;
    switch (r->proxy_state) {
    case PX_CONNECTING:
        attempt_failed(r, 504, uc->connected ? "timed out in the TLS handshake" : "timed out connecting",
                       FAIL_CONNECT);
        return;
    case PX_SENDING:
        attempt_failed(r, 504, "timed out receiving the request", FAIL_TIMEOUT);
        return;
    case PX_WAIT_RESP:
        attempt_failed(r, 504, "timed out sending the response head", FAIL_TIMEOUT);
        return;
    case PX_RESP_BODY:
        attempt_failed(r, 504, "timed out sending the response body", FAIL_TIMEOUT);
        return;
    case PX_TUNNEL:
        tunnel_end(r);
        return;
    }
}
