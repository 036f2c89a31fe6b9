/*
 * tg_response.c: response heads and bodies to the client (see
 * tg_response.h), the header-list helpers plugins edit through, and the
 * local responses (errors, static routes, echo).
 */
#include "tg_response.h"
#include "tg_conn.h"
#include "tg_log.h"
#include "tg_lua.h"

#include <ctype.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>

static const char CRLF[] = "\r\n";
static const char LAST_CHUNK[] = "0\r\n\r\n";

/* ---- header lists ---- */

const tg_http_header_t *tg_hdr_list_find(const tg_hdr_list_t *l, const char *name, size_t len) {
    return tg_http_header_find(l->h, l->n, name, len);
}

static void list_reserve(tg_pool_t *pool, tg_hdr_list_t *l, int extra) {
    if (l->n + extra <= l->cap) return;
    int cap = l->cap ? l->cap * 2 : 16;
    while (cap < l->n + extra) cap *= 2;
    tg_http_header_t *h = tg_pool_alloc(pool, sizeof(*h) * (size_t)cap);
    if (l->n) memcpy(h, l->h, sizeof(*h) * (size_t)l->n);
    l->h = h;
    l->cap = cap;
}

void tg_hdr_list_edit(tg_pool_t *pool, tg_hdr_list_t *l, int mode,
                      const char *name, size_t nlen, const char *value, size_t vlen) {
    if (mode != TG_HDR_ADD) {
        int k = 0;
        for (int i = 0; i < l->n; i++) {
            tg_str_t n = l->h[i].name;
            if (tg_str_caseeq(n, name, nlen)) continue;
            l->h[k++] = l->h[i];
        }
        l->n = k;
    }
    if (mode == TG_HDR_CLEAR) return;
    list_reserve(pool, l, 1);
    /* Name and value in one allocation: both live as long as the request. */
    char *p = tg_pool_alloc(pool, nlen + vlen + 2);
    memcpy(p, name, nlen);
    p[nlen] = '\0';
    if (vlen) memcpy(p + nlen + 1, value, vlen);
    p[nlen + 1 + vlen] = '\0';
    l->h[l->n].name = (tg_str_t){ p, nlen };
    l->h[l->n].value = (tg_str_t){ p + nlen + 1, vlen };
    l->n++;
}

tg_hdr_list_t *tg_request_req_hdrs(tg_request_t *r) {
    if (r->req_hdrs) return r->req_hdrs;
    tg_hdr_list_t *l = tg_pool_calloc(r->pool, sizeof(*l));
    list_reserve(r->pool, l, r->http->nheaders + 8);
    memcpy(l->h, r->http->headers, sizeof(tg_http_header_t) * (size_t)r->http->nheaders);
    l->n = r->http->nheaders;
    r->req_hdrs = l;
    return l;
}

const tg_http_header_t *tg_request_headers(const tg_request_t *r, int *n) {
    if (r->req_hdrs) {
        *n = r->req_hdrs->n;
        return r->req_hdrs->h;
    }
    *n = r->http->nheaders;
    return r->http->headers;
}

tg_str_t tg_request_header(const tg_request_t *r, const char *name, size_t len) {
    int n;
    const tg_http_header_t *h = tg_request_headers(r, &n);
    const tg_http_header_t *f = tg_http_header_find(h, n, name, len);
    return f ? f->value : tg_null_string;
}

/* ---- head and body ---- */

#define PUT(s, n) do { memcpy(p, (s), (n)); p += (n); } while (0)
#define PUTS(lit) PUT(lit, sizeof(lit) - 1)

int tg_response_send_head(tg_request_t *r) {
    tg_conn_t *c = r->conn;
    r->phase = TG_PHASE_HEADER_FILTER;
    if (r->lua_phases & TG_LUA_BIT(TG_PHASE_HEADER_FILTER)) tg_lua_header_filter(r);
    if ((r->lua_phases & TG_LUA_BIT(TG_PHASE_BODY_FILTER)) && r->frame == TG_FRAME_LENGTH
        && r->http->method != HTTP_HEAD) {
        /* Plugins may change the body's length: stream it chunked. */
        if (r->http->http_minor >= 1) r->frame = TG_FRAME_CHUNKED;
        else r->frame = TG_FRAME_CLOSE;
    }
    if (r->frame == TG_FRAME_CLOSE) c->close_after = 1;
    if (r->worker->draining) c->close_after = 1;

    size_t cap = 256;
    for (int i = 0; i < r->resp_hdrs.n; i++) cap += r->resp_hdrs.h[i].name.len + r->resp_hdrs.h[i].value.len + 4;
    /* The upstream's reason phrase only when its head was parsed and the
     * status is still the upstream's. */
    int upstream_reason = r->resp && r->upstream_status && r->status == r->upstream_status;
    if (upstream_reason) cap += r->resp->reason.len;
    char *buf = tg_pool_alloc(r->pool, cap), *p = buf;
    PUTS("HTTP/1.1 ");
    p = tg_fmt_uint(p, (uint64_t)r->status);
    PUTS(" ");
    if (upstream_reason && r->resp->reason.len) {
        PUT(r->resp->reason.p, r->resp->reason.len);
    } else {
        const char *reason = tg_http_status_text(r->status);
        PUT(reason, strlen(reason));
    }
    PUTS("\r\n");
    if (r->local_response) {
        const char *d = tg_worker_date(r->worker);
        PUTS("Date: ");
        PUT(d, strlen(d));
        PUTS("\r\nServer: tollgate\r\n");
    }
    for (int i = 0; i < r->resp_hdrs.n; i++) {
        tg_str_t n = r->resp_hdrs.h[i].name, v = r->resp_hdrs.h[i].value;
        PUT(n.p, n.len);
        PUTS(": ");
        PUT(v.p, v.len);
        PUTS("\r\n");
    }
    if (r->frame == TG_FRAME_LENGTH || (r->frame == TG_FRAME_NONE && r->resp_content_length >= 0))
    {
        PUTS("Content-Length: ");
        p = tg_fmt_uint(p, (uint64_t)tg_max(r->resp_content_length, 0));
        PUTS("\r\n");
    }
    else if (r->frame == TG_FRAME_CHUNKED)
        PUTS("Transfer-Encoding: chunked\r\n");
    if (c->close_after) PUTS("Connection: close\r\n");
    else if (r->http->http_minor == 0) PUTS("Connection: keep-alive\r\n");
    PUTS("\r\n");

    r->header_sent = 1;
    r->phase = TG_PHASE_BODY_FILTER;
    /* Kept back: one writev for head and first body bytes saves a syscall
     * per response. tg_response_flush_head() sends it alone when the body
     * is not there yet. */
    r->pending_head = (tg_str_t){ buf, (size_t)(p - buf) };
    r->bytes_sent += r->pending_head.len;
    return TG_OK;
}

int tg_response_flush_head(tg_request_t *r) {
    if (r->pending_head.p == NULL) return TG_OK;
    struct iovec iov = { (void *)r->pending_head.p, r->pending_head.len };
    r->pending_head = tg_null_string;
    tg_conn_t *c = r->conn;
    if (c == NULL) return TG_OK;
    if (tg_conn_send(c, &iov, 1) == TG_ERROR) {
        tg_conn_close(c);
        return TG_ERROR;
    }
    return TG_OK;
}

int tg_response_send_body(tg_request_t *r, const char *data, size_t len, int last) {
    if (r->body_eof_sent) return TG_OK;
    if (last) r->body_eof_sent = 1;
    if (r->frame == TG_FRAME_NONE || r->http->method == HTTP_HEAD) return tg_response_flush_head(r);
    if (r->lua_phases & TG_LUA_BIT(TG_PHASE_BODY_FILTER)) {
        const char *out;
        size_t outlen;
        if (tg_lua_body_filter(r, data, len, last, &out, &outlen) == TG_OK) {
            data = out;
            len = outlen;
        }
    }
    struct iovec iov[5];
    int n = 0;
    char hdr[24];
    if (r->pending_head.p) {
        iov[n++] = (struct iovec){ (void *)r->pending_head.p, r->pending_head.len };
        r->pending_head = tg_null_string;
    }
    int body_from = n;
    if (r->frame == TG_FRAME_CHUNKED) {
        if (len) {
            iov[n++] = (struct iovec){ hdr, tg_http_chunk_header(hdr, len) };
            iov[n++] = (struct iovec){ (void *)data, len };
            iov[n++] = (struct iovec){ (void *)CRLF, 2 };
        }
        if (last) iov[n++] = (struct iovec){ (void *)LAST_CHUNK, sizeof(LAST_CHUNK) - 1 };
    } else if (len) {
        iov[n++] = (struct iovec){ (void *)data, len };
    }
    if (n == 0) return TG_OK;
    for (int k = body_from; k < n; k++) r->bytes_sent += iov[k].iov_len;
    tg_conn_t *c = r->conn;
    int rc = tg_conn_send(c, iov, n);
    if (rc == TG_ERROR) {
        tg_log_write(TG_LOG_INFO, r->request_id, "client %s closed the connection during the response", r->client_ip);
        tg_conn_close(c);
        return TG_ERROR;
    }
    return rc;
}

/* ---- local responses ---- */

void tg_response_local(tg_request_t *r, int status, const char *body, size_t len) {
    tg_request_skip_buffered_body(r);
    r->status = status;
    r->local_response = 1;
    r->frame = TG_FRAME_LENGTH;
    r->resp_content_length = (int64_t)len;
    if (status == 204 || status == 304) {
        /* No body and no length for these (RFC 9110 8.6, 15.4.5). */
        r->frame = TG_FRAME_NONE;
        r->resp_content_length = -1;
        tg_hdr_list_edit(r->pool, &r->resp_hdrs, TG_HDR_CLEAR, "Content-Type", 12, NULL, 0);
    } else if (tg_hdr_list_find(&r->resp_hdrs, "content-type", 12) == NULL) {
        tg_hdr_list_edit(r->pool, &r->resp_hdrs, TG_HDR_ADD, "Content-Type", 12,
                         "application/json", 16);
    }
    if (tg_response_send_head(r) != TG_OK) return;
    if (tg_response_send_body(r, body, len, 1) == TG_ERROR) return;
    r->response_done = 1;
    tg_request_done(r);
}

void tg_response_error(tg_request_t *r, int status) {
    char body[128];
    int n = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", tg_http_status_text(status));
    r->resp_hdrs.n = 0;
    r->exit_status = 0;
    if (status == 400 || status == 408 || status == 413 || status == 414 || status == 431)
        if (!r->body_done && r->conn) r->conn->close_after = 1;
    tg_response_local(r, status, tg_pool_strndup(r->pool, body, (size_t)n), (size_t)n);
}

void tg_response_static(tg_request_t *r, const tg_conf_response_t *resp) {
    for (int i = 0; i < resp->nheaders; i++)
        tg_hdr_list_edit(r->pool, &r->resp_hdrs, TG_HDR_ADD, resp->headers[i].name,
                         strlen(resp->headers[i].name), resp->headers[i].value,
                         strlen(resp->headers[i].value));
    const char *ct = resp->content_type ? resp->content_type : "application/json";
    if (resp->status != 204 && resp->status != 304)
        tg_hdr_list_edit(r->pool, &r->resp_hdrs, TG_HDR_SET, "Content-Type", 12, ct, strlen(ct));
    tg_response_local(r, resp->status, resp->body ? resp->body : "", resp->body ? resp->body_len : 0);
}

#define OUT_LIT(s) do { size_t _l = sizeof(s) - 1; if (pos + _l < cap) { memcpy(out + pos, s, _l); pos += _l; } } while (0)
#define OUT_STR(p, l) do { out[pos++] = '"'; tg_json_escape(out, cap - 2, &pos, (p), (l)); out[pos++] = '"'; } while (0)

void tg_response_echo(tg_request_t *r) {
    r->body_for_echo = 1;
    int rc = tg_request_read_body(r);
    if (rc != TG_OK) return;   /* the body pump calls us again when complete */
    tg_http_request_t *h = r->http;
    tg_str_t body = tg_request_body(r);
    int nh;
    const tg_http_header_t *hd = tg_request_headers(r, &nh);
    size_t cap = 512 + h->head_len * 6 + body.len * 6 + strlen(r->route->name) * 6;
    for (int i = 0; i < nh; i++) cap += (hd[i].name.len + hd[i].value.len) * 6 + 8;
    char *out = tg_pool_alloc(r->pool, cap);
    size_t pos = 0;
    cap -= 8;
    OUT_LIT("{\"method\":");
    OUT_STR(h->method_name.p, h->method_name.len);
    OUT_LIT(",\"path\":");
    OUT_STR(r->path.p, r->path.len);
    OUT_LIT(",\"query\":");
    if (h->query.p) OUT_STR(h->query.p, h->query.len);
    else OUT_LIT("null");
    OUT_LIT(",\"uri\":");
    OUT_STR(h->target.p, h->target.len);
    pos += (size_t)snprintf(out + pos, cap - pos, ",\"http_version\":\"1.%d\",\"client_ip\":", h->http_minor);
    OUT_STR(r->client_ip, strlen(r->client_ip));
    OUT_LIT(",\"route\":");
    OUT_STR(r->route->name, strlen(r->route->name));
    OUT_LIT(",\"headers\":{");
    for (int i = 0; i < nh; i++) {
        char name[256];
        size_t nl = tg_min(hd[i].name.len, sizeof(name));
        for (size_t k = 0; k < nl; k++) name[k] = (char)tolower((unsigned char)hd[i].name.p[k]);
        if (i) OUT_LIT(",");
        OUT_STR(name, nl);
        OUT_LIT(":");
        OUT_STR(hd[i].value.p, hd[i].value.len);
    }
    OUT_LIT("},\"body\":");
    OUT_STR(body.p, body.len);
    OUT_LIT("}");
    tg_hdr_list_edit(r->pool, &r->resp_hdrs, TG_HDR_SET, "Content-Type", 12, "application/json", 16);
    tg_response_local(r, r->route->response->status, out, pos);
}
