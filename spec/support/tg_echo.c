/*
 * tg_echo.c: the test upstream. One small, fast HTTP/1.1 server that every
 * spec and benchmark points the gateway at. By default it answers each
 * request with a JSON description of exactly what it received (method, target,
 * headers in order, body), so a spec can assert what the gateway forwarded.
 * Request headers named X-Echo-* turn it into a misbehaving upstream (slow,
 * chunked, resetting, hanging, lying about its length...), and because they
 * are ordinary request headers they travel through the gateway untouched.
 *
 * Design: one process, one libev loop, non-blocking sockets, keep-alive and
 * pipelining. http-parser tokenizes requests; the parser is paused after
 * every complete message so responses leave in request order even when one
 * of them is delayed: while a response is in progress ("busy") later
 * pipelined bytes wait unparsed in the connection's input buffer.
 *
 * Out-of-memory policy: this is a test fixture, so an allocation failure
 * aborts the process with a message. A fixture that limps on would make
 * specs fail in confusing ways far from the cause.
 *
 * Usage: tg-echo [--host 127.0.0.1] [--port 0] [--fixed-body N]
 * The first stdout line is "listening <port>" (flushed) once the socket is
 * bound and listening, so a spec can start it and read the port race-free.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ev.h>
#include <http_parser.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* Bounds. Every loop and buffer below is limited by one of these. */
#define ECHO_READ_CHUNK       (64 * 1024)        /* bytes asked of one read() */
#define ECHO_MAX_INBUF        (1024 * 1024)      /* unparsed input kept while busy; beyond it we stop reading (backpressure) */
#define ECHO_OUT_HIGH         (256 * 1024)       /* queued output before we stop parsing/reading more */
#define ECHO_MAX_BODY         (16 * 1024 * 1024) /* request body bytes echoed; the rest is only counted */
#define ECHO_MAX_HEADERS      1000               /* header lines remembered per request; http-parser caps the bytes at 80 KiB */
#define ECHO_MAX_DELAY_MS     600000             /* X-Echo-Delay-Ms / slow-body step: ten minutes is "forever" in a spec */
#define ECHO_MAX_PIECES       65536              /* X-Echo-Chunked */
#define ECHO_MAX_X_BODY       ((uint64_t)1 << 32) /* X-Echo-Body-Size: streamed from a static slab, so large is cheap */
#define ECHO_SLAB             (64 * 1024)        /* bytes produced per write when streaming a body */
#define ECHO_WRITE_ROUNDS     64                 /* write() calls per event, so one fast reader cannot starve the rest */
#define ECHO_RUN_ROUNDS       64                 /* parse/flush rounds per event, same reason */
#define ECHO_ACCEPT_BATCH     256                /* accept() calls per readiness event */
#define ECHO_LINGER_MS        2000               /* how long a closing connection drains unread input */
#define ECHO_ACCEPT_PAUSE_S   0.1                /* back-off when out of file descriptors */
#define ECHO_MAX_FIXED_BODY   (64 * 1024 * 1024) /* --fixed-body */

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tg-echo: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* ---- growable byte buffer ----------------------------------------------
 * `pos` is the consumed prefix: input buffers advance it as the parser eats
 * bytes, output buffers as write() succeeds. */

typedef struct {
    char   *data;
    size_t  len;
    size_t  cap;
    size_t  pos;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        die("out of memory (%zu bytes)", cap);
    b->data = p;
    b->cap = cap;
}

static void buf_append(buf_t *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_puts(buf_t *b, const char *s) { buf_append(b, s, strlen(s)); }

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    buf_reserve(b, 256);
    va_start(ap, fmt);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        die("vsnprintf failed");
    if ((size_t)n >= b->cap - b->len) {
        buf_reserve(b, (size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

static size_t buf_pending(const buf_t *b) { return b->len - b->pos; }

/* Drop the consumed prefix. Cheap when everything was consumed (the common
 * case); otherwise a memmove, only when the prefix is worth reclaiming. */
static void buf_compact(buf_t *b)
{
    if (b->pos == b->len) {
        b->pos = b->len = 0;
    } else if (b->pos > 0 && b->pos >= b->cap / 2) {
        memmove(b->data, b->data + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
    }
}

static void buf_free(buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ---- JSON strings --------------------------------------------------------
 * Valid UTF-8 passes through unchanged (lua-cjson returns it byte for byte);
 * any other byte >= 0x80 becomes \u00XX, so the output is always valid JSON.
 * Binary bodies therefore do not round-trip exactly; body_length is exact. */

static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;

    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else return 0;

    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

static void buf_json_str(buf_t *b, const char *str, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    buf_append(b, "\"", 1);
    while (i < len) {
        /* Reserve per block rather than len * 6 up front: a 16 MiB body
         * would otherwise reserve 96 MiB it almost never uses. */
        size_t block = len - i < 4096 ? len - i : 4096;
        size_t end = i + block;
        buf_reserve(b, block * 6 + 8);
        char *o = b->data + b->len;
        while (i < end) {
            unsigned char ch = s[i];
            if (ch >= 0x80) {
                size_t n = utf8_seq_len(s + i, len - i);
                if (n) {
                    memcpy(o, s + i, n);
                    o += n;
                    i += n;
                    continue;
                }
            }
            switch (ch) {
            case '"':  *o++ = '\\'; *o++ = '"'; break;
            case '\\': *o++ = '\\'; *o++ = '\\'; break;
            case '\n': *o++ = '\\'; *o++ = 'n'; break;
            case '\r': *o++ = '\\'; *o++ = 'r'; break;
            case '\t': *o++ = '\\'; *o++ = 't'; break;
            case '\b': *o++ = '\\'; *o++ = 'b'; break;
            case '\f': *o++ = '\\'; *o++ = 'f'; break;
            default:
                if (ch < 0x20 || ch >= 0x7f) {
                    *o++ = '\\'; *o++ = 'u'; *o++ = '0'; *o++ = '0';
                    *o++ = hex[ch >> 4]; *o++ = hex[ch & 15];
                } else {
                    *o++ = (char)ch;
                }
            }
            i++;
        }
        b->len = (size_t)(o - b->data);
    }
    buf_append(b, "\"", 1);
}

/* ---- SHA-1 and base64, only for Sec-WebSocket-Accept --------------------- */

static uint32_t rol32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20])
{
    uint32_t h[5] = { 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0 };
    uint64_t bits = (uint64_t)len * 8;
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char block[64];

    for (size_t off = 0; off < total; off += 64) {
        for (size_t i = 0; i < 64; i++) {
            size_t k = off + i;
            if (k < len) block[i] = msg[k];
            else if (k == len) block[i] = 0x80;
            else if (k >= total - 8) block[i] = (unsigned char)(bits >> (8 * (total - 1 - k)));
            else block[i] = 0;
        }
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
                   (uint32_t)block[4 * i + 2] << 8 | block[4 * i + 3];
        for (int i = 16; i < 80; i++)
            w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20)      { f = (b & c) | (~b & d);          k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d;                   k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else             { f = b ^ c ^ d;                   k = 0xCA62C1D6; }
            uint32_t t = rol32(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol32(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static void base64(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        *out++ = tab[in[i] >> 2];
        *out++ = tab[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
        *out++ = tab[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
        *out++ = tab[in[i + 2] & 63];
    }
    if (i < n) {
        *out++ = tab[in[i] >> 2];
        if (i + 1 < n) {
            *out++ = tab[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
            *out++ = tab[(in[i + 1] & 15) << 2];
        } else {
            *out++ = tab[(in[i] & 3) << 4];
            *out++ = '=';
        }
        *out++ = '=';
    }
    *out = '\0';
}

/* ---- server and connection ------------------------------------------------ */

typedef struct {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
    int      trailer;            /* arrived after the chunked body */
} hdr_t;

typedef enum {
    CONN_HTTP = 0,   /* parsing requests, answering them */
    CONN_TUNNEL,     /* after 101: echo every byte back */
    CONN_HANG,       /* X-Echo-Mode: hang: read and discard, never answer */
    CONN_LINGER,     /* response sent, write side shut: drain input, then close */
} conn_state_e;

typedef enum {
    MODE_NORMAL = 0,
    MODE_GARBAGE,
    MODE_RESET,
    MODE_CLOSE_EARLY,
    MODE_NO_LENGTH,
    MODE_HANG,
    MODE_SLOW_BODY,
    MODE_UPGRADE,
} mode_e;

typedef struct server_s server_t;

typedef struct conn_s {
    server_t     *srv;
    int           fd;
    ev_io         rio, wio;
    ev_timer      timer;          /* delay, slow-body steps, linger deadline */
    http_parser   parser;
    conn_state_e  state;
    buf_t         in, out;
    char          remote_addr[INET6_ADDRSTRLEN];
    int           remote_port;
    unsigned long requests;       /* on this connection, /__stats included */
    unsigned long counted_epoch;  /* stats epoch this connection was counted in, 0 = not counted */
    int           eof;            /* peer finished sending */
    int           dead;           /* close at the end of the current event */

    /* The request being parsed. Reset by on_message_begin, which runs only
     * after the previous response was started (the parser is paused). */
    buf_t         url, hstore, body;
    hdr_t        *hdrs;
    int           nhdrs, hcap;
    int           hdr_cb;         /* 0 none, 1 last callback was a field, 2 a value */
    int           hdr_drop;       /* current header is beyond ECHO_MAX_HEADERS */
    int           in_trailers;
    int           msg_done;       /* on_message_complete fired; dispatch pending */
    uint64_t      body_length;
    int           chunked_request;

    /* The response in progress. */
    int           busy;           /* parser stays paused until the response is fully queued */
    int           close_after;    /* close (lingering) once output is flushed */
    mode_e        mode;
    buf_t         resp_head, resp_body;
    int           head_only;      /* HEAD, 1xx, 204, 304: head without body */
    int           x_body;         /* body is x_len bytes of 'x', not resp_body */
    uint64_t      body_total, body_sent;
    int           pieces, piece_idx;  /* > 0: Transfer-Encoding: chunked in that many pieces */
    int           producing;      /* flush keeps calling produce_body() */
    int           slow_ms;
} conn_t;

struct server_s {
    struct ev_loop *loop;
    int             lfd;
    ev_io           accept_io;
    ev_timer        accept_pause;
    ev_signal       sigterm, sigint;
    unsigned long   requests, connections, active;
    unsigned long   epoch;        /* bumped by /__stats/reset */
    size_t          fixed_len;    /* --fixed-body: prebuilt responses, else 0 */
    buf_t           fixed_keepalive, fixed_close, fixed_keepalive10;
    int             fixed;
};

static http_parser_settings echo_settings, fixed_settings;
static char x_slab[ECHO_SLAB];

static void conn_run(conn_t *c);

/* ---- http-parser callbacks: they only record; dispatch happens outside the
 * parser so one code path handles pausing, pipelining and upgrades. -------- */

static int on_message_begin(http_parser *p)
{
    conn_t *c = p->data;
    c->url.len = 0;
    c->hstore.len = 0;
    c->body.len = 0;
    c->nhdrs = 0;
    c->hdr_cb = 0;
    c->hdr_drop = 0;
    c->in_trailers = 0;
    c->body_length = 0;
    c->chunked_request = 0;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    buf_append(&c->url, at, n);
    return 0;
}

/* Field and value callbacks may each arrive in several pieces when a header
 * spans two reads: a field callback after a value starts a new header, and
 * repeated callbacks of one kind append. Headers beyond ECHO_MAX_HEADERS are
 * dropped whole (hdr_drop) rather than failing the request. */
static int on_header_field(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (c->hdr_cb != 1) {
        c->hdr_cb = 1;
        c->hdr_drop = c->nhdrs >= ECHO_MAX_HEADERS;
        if (c->hdr_drop)
            return 0;
        if (c->nhdrs == c->hcap) {
            c->hcap = c->hcap ? c->hcap * 2 : 32;
            c->hdrs = realloc(c->hdrs, sizeof(hdr_t) * (size_t)c->hcap);
            if (c->hdrs == NULL)
                die("out of memory (headers)");
        }
        hdr_t *h = &c->hdrs[c->nhdrs++];
        h->name_off = h->value_off = (uint32_t)c->hstore.len;
        h->name_len = h->value_len = 0;
        h->trailer = c->in_trailers;
    }
    if (c->hdr_drop)
        return 0;
    buf_append(&c->hstore, at, n);
    c->hdrs[c->nhdrs - 1].name_len += (uint32_t)n;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    int first = c->hdr_cb != 2;
    c->hdr_cb = 2;
    if (c->hdr_drop || c->nhdrs == 0)
        return 0;
    hdr_t *h = &c->hdrs[c->nhdrs - 1];
    if (first) {
        h->value_off = (uint32_t)c->hstore.len;
        h->value_len = 0;
    }
    buf_append(&c->hstore, at, n);
    h->value_len += (uint32_t)n;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    c->body_length += n;
    if (c->body.len < ECHO_MAX_BODY) {
        size_t keep = ECHO_MAX_BODY - c->body.len;
        buf_append(&c->body, at, n < keep ? n : keep);
    }
    return 0;
}

static const char *hdr_name(conn_t *c, int i) { return c->hstore.data + c->hdrs[i].name_off; }
static const char *hdr_value(conn_t *c, int i) { return c->hstore.data + c->hdrs[i].value_off; }

static int hdr_is(conn_t *c, int i, const char *name)
{
    size_t n = strlen(name);
    return !c->hdrs[i].trailer && c->hdrs[i].name_len == n && strncasecmp(hdr_name(c, i), name, n) == 0;
}

static int value_is(conn_t *c, int i, const char *v)
{
    size_t n = strlen(v);
    return c->hdrs[i].value_len == n && strncasecmp(hdr_value(c, i), v, n) == 0;
}

/* Index of the first (non-trailer) header `name`, or -1. */
static int hdr_find(conn_t *c, const char *name)
{
    for (int i = 0; i < c->nhdrs; i++)
        if (hdr_is(c, i, name))
            return i;
    return -1;
}

/* Count a request that reached the echo for /__stats ("requests" and, once
 * per stats epoch, its connection). */
static void count_request(conn_t *c)
{
    server_t *srv = c->srv;
    srv->requests++;
    if (c->counted_epoch != srv->epoch) {
        srv->connections++;
        c->counted_epoch = srv->epoch;
    }
}

static void response_json(conn_t *c, int status, buf_t *b);
static void build_head(conn_t *c, buf_t *h, int status, const char *ctype,
                       int64_t clen, int chunked, int connection_close);

/* Expect: 100-continue is answered as soon as the head is complete and
 * before any body is read, which is when a real server would. A request
 * carrying X-Echo-Expect-Reject: 417 gets a final 417 instead, its body is
 * never read, and the connection is closed after the answer. */
static int on_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    c->in_trailers = 1;
    c->hdr_cb = 0;
    c->chunked_request = (p->flags & F_CHUNKED) != 0;

    int e = hdr_find(c, "expect");
    if (e < 0 || !value_is(c, e, "100-continue"))
        return 0;
    int r = hdr_find(c, "x-echo-expect-reject");
    if (r >= 0 && value_is(c, r, "417")) {
        c->requests++;
        count_request(c);
        c->resp_body.len = 0;
        response_json(c, 417, &c->resp_body);
        c->resp_head.len = 0;
        build_head(c, &c->resp_head, 417, "application/json", (int64_t)c->resp_body.len, 0, 1);
        buf_append(&c->out, c->resp_head.data, c->resp_head.len);
        buf_append(&c->out, c->resp_body.data, c->resp_body.len);
        c->close_after = 1;
        http_parser_pause(p, 1);
        return 0;
    }
    int has_body = (p->flags & F_CHUNKED) ||
                   (p->content_length > 0 && p->content_length != UINT64_MAX);
    if (has_body)
        buf_puts(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    c->msg_done = 1;
    http_parser_pause(p, 1);
    return 0;
}

/* ---- responses --------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:  return "Unknown";
    }
}

/* Parse a decimal in [0, max] from a header value; -1 when malformed. */
static int64_t parse_num(const char *s, size_t n, int64_t max)
{
    int64_t v = 0;
    size_t i = 0;
    while (i < n && s[i] == ' ') i++;
    while (n > i && s[n - 1] == ' ') n--;
    if (i == n)
        return -1;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
        if (v > max)
            return -1;
    }
    return v;
}

/* The status line and headers. clen < 0 means no Content-Length. An
 * X-Echo-Response-Header naming Content-Type replaces ours. */
static void build_head(conn_t *c, buf_t *h, int status, const char *ctype,
                       int64_t clen, int chunked, int connection_close)
{
    int own_ctype = 0;
    for (int i = 0; i < c->nhdrs; i++) {
        if (hdr_is(c, i, "x-echo-response-header") && c->hdrs[i].value_len >= 13 &&
            strncasecmp(hdr_value(c, i), "content-type:", 13) == 0)
            own_ctype = 1;
    }
    buf_printf(h, "HTTP/1.1 %d %s\r\nServer: tg-echo\r\n", status, reason_phrase(status));
    if (ctype && !own_ctype)
        buf_printf(h, "Content-Type: %s\r\n", ctype);
    if (chunked)
        buf_puts(h, "Transfer-Encoding: chunked\r\n");
    else if (clen >= 0)
        buf_printf(h, "Content-Length: %" PRId64 "\r\n", clen);
    if (connection_close)
        buf_puts(h, "Connection: close\r\n");
    else if (c->parser.http_major == 1 && c->parser.http_minor == 0)
        buf_puts(h, "Connection: keep-alive\r\n");
    for (int i = 0; i < c->nhdrs; i++) {
        if (!hdr_is(c, i, "x-echo-response-header"))
            continue;
        const char *v = hdr_value(c, i);
        size_t n = c->hdrs[i].value_len;
        const char *colon = memchr(v, ':', n);
        if (colon == NULL || colon == v)
            continue;
        const char *val = colon + 1;
        while (val < v + n && *val == ' ') val++;
        buf_append(h, v, (size_t)(colon - v));
        buf_puts(h, ": ");
        buf_append(h, val, (size_t)(v + n - val));
        buf_puts(h, "\r\n");
    }
    buf_puts(h, "\r\n");
}

static void json_header_pairs(conn_t *c, buf_t *b, int trailers)
{
    int first = 1;
    buf_puts(b, "[");
    for (int i = 0; i < c->nhdrs; i++) {
        if (c->hdrs[i].trailer != trailers)
            continue;
        buf_puts(b, first ? "[" : ",[");
        first = 0;
        buf_json_str(b, hdr_name(c, i), c->hdrs[i].name_len);
        buf_puts(b, ",");
        buf_json_str(b, hdr_value(c, i), c->hdrs[i].value_len);
        buf_puts(b, "]");
    }
    buf_puts(b, "]");
}

/* The echo document. "headers" lowercases names and joins repeats with ", "
 * in first-seen order; "header_list" keeps the wire names and order.
 * Quadratic in the header count, which ECHO_MAX_HEADERS keeps small. */
static void response_json(conn_t *c, int status, buf_t *b)
{
    const char *uri = c->url.data ? c->url.data : "";
    size_t ulen = c->url.len;
    const char *q = memchr(uri, '?', ulen);
    size_t plen = q ? (size_t)(q - uri) : ulen;
    char low[256];

    buf_puts(b, "{\"method\":");
    const char *m = http_method_str((enum http_method)c->parser.method);
    buf_json_str(b, m, strlen(m));
    buf_puts(b, ",\"path\":");
    buf_json_str(b, uri, plen);
    buf_puts(b, ",\"query\":");
    if (q)
        buf_json_str(b, q + 1, ulen - plen - 1);
    else
        buf_puts(b, "null");
    buf_puts(b, ",\"uri\":");
    buf_json_str(b, uri, ulen);
    buf_printf(b, ",\"http_version\":\"%d.%d\",\"headers\":{",
               c->parser.http_major, c->parser.http_minor);
    int first = 1;
    for (int i = 0; i < c->nhdrs; i++) {
        hdr_t *h = &c->hdrs[i];
        if (h->trailer)
            continue;
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = !c->hdrs[j].trailer && c->hdrs[j].name_len == h->name_len &&
                   strncasecmp(hdr_name(c, j), hdr_name(c, i), h->name_len) == 0;
        if (seen)
            continue;
        if (!first)
            buf_puts(b, ",");
        first = 0;
        size_t n = h->name_len < sizeof(low) ? h->name_len : sizeof(low) - 1;
        for (size_t k = 0; k < n; k++)
            low[k] = (char)tolower((unsigned char)hdr_name(c, i)[k]);
        buf_json_str(b, low, n);
        buf_puts(b, ":");
        /* Join this header's value with every later repeat. */
        buf_t joined = { 0 };
        buf_append(&joined, hdr_value(c, i), h->value_len);
        for (int j = i + 1; j < c->nhdrs; j++) {
            if (!c->hdrs[j].trailer && c->hdrs[j].name_len == h->name_len &&
                strncasecmp(hdr_name(c, j), hdr_name(c, i), h->name_len) == 0) {
                buf_puts(&joined, ", ");
                buf_append(&joined, hdr_value(c, j), c->hdrs[j].value_len);
            }
        }
        buf_json_str(b, joined.data, joined.len);
        buf_free(&joined);
    }
    buf_puts(b, "},\"header_list\":");
    json_header_pairs(c, b, 0);
    buf_puts(b, ",\"trailer_list\":");
    json_header_pairs(c, b, 1);
    buf_puts(b, ",\"body\":");
    buf_json_str(b, c->body.data ? c->body.data : "", c->body.len);
    buf_printf(b, ",\"body_length\":%" PRIu64 ",\"chunked_request\":%s,"
               "\"remote_addr\":\"%s\",\"remote_port\":%d,\"connection_requests\":%lu,"
               "\"status\":%d}",
               c->body_length, c->chunked_request ? "true" : "false",
               c->remote_addr, c->remote_port, c->requests, status);
}

/* Queue the next piece of a streamed or chunked body. Each call produces
 * one chunk (chunked) or one slab (Content-Length), so every chunk leaves in
 * its own write() and the gateway really sees the body in pieces. */
static void produce_body(conn_t *c)
{
    uint64_t left = c->body_total - c->body_sent;

    if (c->pieces > 0) {
        /* Piece i gets total/pieces bytes, the first total%pieces one more.
         * Empty pieces are skipped: an empty chunk would end the body. */
        while (c->piece_idx < c->pieces) {
            uint64_t sz = c->body_total / (uint64_t)c->pieces +
                          ((uint64_t)c->piece_idx < c->body_total % (uint64_t)c->pieces ? 1 : 0);
            c->piece_idx++;
            if (sz == 0)
                continue;
            buf_printf(&c->out, "%" PRIx64 "\r\n", sz);
            uint64_t done = 0;
            while (done < sz) {
                size_t n = sz - done > ECHO_SLAB ? ECHO_SLAB : (size_t)(sz - done);
                buf_append(&c->out, c->x_body ? x_slab : c->resp_body.data + c->body_sent + done, n);
                done += n;
            }
            buf_puts(&c->out, "\r\n");
            c->body_sent += sz;
            break;
        }
        if (c->piece_idx >= c->pieces) {
            buf_puts(&c->out, "0\r\n\r\n");
            c->producing = 0;
        }
        return;
    }

    size_t n = left > ECHO_SLAB ? ECHO_SLAB : (size_t)left;
    buf_append(&c->out, c->x_body ? x_slab : c->resp_body.data + c->body_sent, n);
    c->body_sent += n;
    if (c->body_sent >= c->body_total)
        c->producing = 0;
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* Put the prepared response on the wire (immediately, or when the
 * X-Echo-Delay-Ms timer fires). */
static void start_response(conn_t *c)
{
    server_t *srv = c->srv;

    switch (c->mode) {
    case MODE_GARBAGE:
        buf_puts(&c->out, "NOT HTTP AT ALL\r\n\r\n");
        c->close_after = 1;
        return;

    case MODE_RESET: {
        /* SO_LINGER with a zero timeout makes close() send RST. */
        struct linger lg = { 1, 0 };
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        c->out.len = c->out.pos = 0;
        c->dead = 1;
        return;
    }

    case MODE_CLOSE_EARLY:
        buf_puts(&c->out, "HTTP/1.1 200 OK\r\nServer: tg-echo\r\nContent-Type: text/plain\r\n"
                          "Content-Length: 100\r\n\r\n0123456789");
        c->close_after = 1;
        return;

    case MODE_HANG:
        c->state = CONN_HANG;
        return;

    case MODE_UPGRADE:
        /* Bytes the client pipelined after the upgrade request already
         * belong to the tunnel: echo them after the 101. */
        buf_append(&c->out, c->resp_head.data, c->resp_head.len);
        buf_append(&c->out, c->in.data + c->in.pos, buf_pending(&c->in));
        c->in.pos = c->in.len = 0;
        c->state = CONN_TUNNEL;
        return;

    case MODE_SLOW_BODY:
        buf_append(&c->out, c->resp_head.data, c->resp_head.len);
        if (c->head_only || c->body_total == 0)
            return;
        c->busy = 1;
        ev_timer_set(&c->timer, c->slow_ms / 1000.0, c->slow_ms / 1000.0);
        ev_timer_start(srv->loop, &c->timer);
        return;

    case MODE_NO_LENGTH:
    case MODE_NORMAL:
        buf_append(&c->out, c->resp_head.data, c->resp_head.len);
        if (c->head_only || (c->body_total == 0 && c->pieces == 0))
            return;
        if (c->pieces == 0 && !c->x_body) {
            buf_append(&c->out, c->resp_body.data, c->resp_body.len);
            return;
        }
        /* Streamed: flush calls produce_body() each time the output
         * drains, and the parser waits until the last piece is queued. */
        c->producing = 1;
        c->busy = 1;
        return;
    }
}

static void respond_stats(conn_t *c, int reset)
{
    server_t *srv = c->srv;
    if (reset) {
        srv->requests = 0;
        srv->connections = 0;
        srv->epoch++;
    } else if (c->counted_epoch == srv->epoch && c->requests == 1) {
        /* A connection opened just to read the stats is not counted, so a
         * spec can assert "connections == 0" through its own connection. */
        srv->connections--;
        c->counted_epoch = 0;
    }
    c->resp_body.len = 0;
    buf_printf(&c->resp_body, "{\"requests\":%lu,\"connections\":%lu,\"active_connections\":%lu}",
               srv->requests, srv->connections, srv->active);
    c->resp_head.len = 0;
    int close = !http_should_keep_alive(&c->parser);
    build_head(c, &c->resp_head, 200, "application/json", (int64_t)c->resp_body.len, 0, close);
    buf_append(&c->out, c->resp_head.data, c->resp_head.len);
    buf_append(&c->out, c->resp_body.data, c->resp_body.len);
    if (close)
        c->close_after = 1;
}

/* A complete request: read the X-Echo-* controls, build the response and
 * start it now or after the requested delay. */
static void dispatch_request(conn_t *c)
{
    server_t *srv = c->srv;
    http_parser *p = &c->parser;
    const char *uri = c->url.data ? c->url.data : "";
    size_t plen = c->url.len;
    const char *q = memchr(uri, '?', plen);
    if (q)
        plen = (size_t)(q - uri);

    c->requests++;

    if (srv->fixed) {
        count_request(c);
        int keep = http_should_keep_alive(p);
        buf_t *r = !keep ? &srv->fixed_close
                 : (p->http_minor == 0 ? &srv->fixed_keepalive10 : &srv->fixed_keepalive);
        buf_append(&c->out, r->data, r->len);
        if (!keep)
            c->close_after = 1;
        return;
    }

    if (p->method == HTTP_GET && plen == 8 && memcmp(uri, "/__stats", 8) == 0) {
        respond_stats(c, 0);
        return;
    }
    if (p->method == HTTP_POST && plen == 14 && memcmp(uri, "/__stats/reset", 14) == 0) {
        respond_stats(c, 1);
        return;
    }

    count_request(c);

    int status = 200, delay_ms = 0, pieces = 0, want_close = 0;
    int64_t x_size = -1;
    mode_e mode = MODE_NORMAL;
    int slow_ms = 0, websocket = 0, ws_key = -1;

    for (int i = 0; i < c->nhdrs; i++) {
        if (c->hdrs[i].trailer)
            continue;
        const char *v = hdr_value(c, i);
        size_t n = c->hdrs[i].value_len;
        int64_t num;
        if (hdr_is(c, i, "x-echo-status")) {
            if ((num = parse_num(v, n, 999)) >= 100)
                status = (int)num;
        } else if (hdr_is(c, i, "x-echo-delay-ms")) {
            if ((num = parse_num(v, n, ECHO_MAX_DELAY_MS)) >= 0)
                delay_ms = (int)num;
        } else if (hdr_is(c, i, "x-echo-chunked")) {
            if ((num = parse_num(v, n, ECHO_MAX_PIECES)) >= 0)
                pieces = (int)num;
        } else if (hdr_is(c, i, "x-echo-body-size")) {
            x_size = parse_num(v, n, (int64_t)ECHO_MAX_X_BODY);
        } else if (hdr_is(c, i, "x-echo-close")) {
            want_close = parse_num(v, n, 1) == 1;
        } else if (hdr_is(c, i, "x-echo-mode")) {
            if (value_is(c, i, "garbage")) mode = MODE_GARBAGE;
            else if (value_is(c, i, "reset")) mode = MODE_RESET;
            else if (value_is(c, i, "close-early")) mode = MODE_CLOSE_EARLY;
            else if (value_is(c, i, "no-length")) mode = MODE_NO_LENGTH;
            else if (value_is(c, i, "hang")) mode = MODE_HANG;
            else if (n > 10 && strncasecmp(v, "slow-body:", 10) == 0 &&
                     (num = parse_num(v + 10, n - 10, ECHO_MAX_DELAY_MS)) >= 1) {
                mode = MODE_SLOW_BODY;
                slow_ms = (int)num;
            }
        } else if (hdr_is(c, i, "upgrade")) {
            for (size_t k = 0; k + 9 <= n && !websocket; k++)
                websocket = strncasecmp(v + k, "websocket", 9) == 0;
        } else if (hdr_is(c, i, "sec-websocket-key")) {
            ws_key = i;
        }
    }

    /* http-parser sets `upgrade` only for Upgrade + Connection: upgrade
     * (or CONNECT); anything else gets the ordinary JSON echo. */
    if (p->upgrade && websocket && p->method != HTTP_CONNECT)
        mode = MODE_UPGRADE;

    int close = want_close || !http_should_keep_alive(p) ||
                mode == MODE_NO_LENGTH;
    int bodiless = status < 200 || status == 204 || status == 304;
    int head_only = bodiless || p->method == HTTP_HEAD;

    c->mode = mode;
    c->slow_ms = slow_ms;
    c->head_only = head_only;
    c->x_body = x_size >= 0;
    c->pieces = (pieces > 0 && !head_only && mode == MODE_NORMAL) ? pieces : 0;
    c->piece_idx = 0;
    c->body_sent = 0;
    c->resp_head.len = 0;
    c->resp_body.len = 0;

    if (mode == MODE_UPGRADE) {
        buf_puts(&c->resp_head, "HTTP/1.1 101 Switching Protocols\r\nServer: tg-echo\r\n"
                                "Upgrade: websocket\r\nConnection: Upgrade\r\n");
        if (ws_key >= 0) {
            buf_t k = { 0 };
            unsigned char digest[20];
            char accept[32];
            buf_append(&k, hdr_value(c, ws_key), c->hdrs[ws_key].value_len);
            buf_puts(&k, WS_GUID);
            sha1((unsigned char *)k.data, k.len, digest);
            base64(digest, sizeof(digest), accept);
            buf_printf(&c->resp_head, "Sec-WebSocket-Accept: %s\r\n", accept);
            buf_free(&k);
        }
        buf_puts(&c->resp_head, "\r\n");
    } else {
        const char *ctype = "application/json";
        if (c->x_body) {
            ctype = "text/plain";
            c->body_total = (uint64_t)x_size;
        } else {
            response_json(c, status, &c->resp_body);
            c->body_total = c->resp_body.len;
        }
        if (bodiless) {
            /* 1xx, 204 and 304 have no body and announce none. */
            build_head(c, &c->resp_head, status, NULL, -1, 0, close);
            c->body_total = 0;
        } else {
            int64_t clen = (mode == MODE_NO_LENGTH || c->pieces > 0) ? -1 : (int64_t)c->body_total;
            if (mode == MODE_NO_LENGTH) {
                /* No Content-Length, no Transfer-Encoding, no
                 * Connection: close either: the body ends at EOF only. */
                build_head(c, &c->resp_head, status, ctype, -1, 0, 0);
            } else {
                build_head(c, &c->resp_head, status, ctype, clen, c->pieces > 0, close);
            }
        }
    }

    if (close && mode != MODE_UPGRADE)
        c->close_after = 1;

    if (delay_ms > 0) {
        c->busy = 1;
        ev_timer_set(&c->timer, delay_ms / 1000.0, 0.);
        ev_timer_start(srv->loop, &c->timer);
        return;
    }
    start_response(c);
}

static void respond_bad_request(conn_t *c)
{
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    count_request(c);
    c->resp_body.len = 0;
    buf_printf(&c->resp_body, "{\"error\":\"%s\"}", http_errno_name(err));
    c->nhdrs = 0;          /* no X-Echo-* controls on a request we could not parse */
    c->resp_head.len = 0;
    build_head(c, &c->resp_head, 400, "application/json", (int64_t)c->resp_body.len, 0, 1);
    buf_append(&c->out, c->resp_head.data, c->resp_head.len);
    buf_append(&c->out, c->resp_body.data, c->resp_body.len);
    c->close_after = 1;
}

/* Feed buffered input to the parser, one message at a time, as long as no
 * response is in progress and the output queue is not backed up. */
static void process_input(conn_t *c)
{
    const http_parser_settings *settings = c->srv->fixed ? &fixed_settings : &echo_settings;

    while (c->state == CONN_HTTP && !c->busy && !c->close_after && !c->dead &&
           buf_pending(&c->in) > 0 && buf_pending(&c->out) < ECHO_OUT_HIGH) {
        size_t avail = buf_pending(&c->in);
        size_t n = http_parser_execute(&c->parser, settings, c->in.data + c->in.pos, avail);
        c->in.pos += n;
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        if (err == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            if (c->msg_done) {
                c->msg_done = 0;
                dispatch_request(c);
            }
            continue;
        }
        if (err != HPE_OK) {
            respond_bad_request(c);
            break;
        }
        if (n < avail)
            break;  /* not reached: upgrades stop via the pause above */
    }
    buf_compact(&c->in);
}

/* ---- connection I/O ------------------------------------------------------ */

static void conn_free(conn_t *c)
{
    server_t *srv = c->srv;
    ev_io_stop(srv->loop, &c->rio);
    ev_io_stop(srv->loop, &c->wio);
    ev_timer_stop(srv->loop, &c->timer);
    close(c->fd);
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->url);
    buf_free(&c->hstore);
    buf_free(&c->body);
    buf_free(&c->resp_head);
    buf_free(&c->resp_body);
    free(c->hdrs);
    free(c);
    srv->active--;
}

/* Write queued output; refill it from produce_body() while a streamed
 * response is in progress. Sets `dead` on a write error. */
static void conn_flush(conn_t *c)
{
    for (int i = 0; i < ECHO_WRITE_ROUNDS && !c->dead; i++) {
        if (buf_pending(&c->out) == 0) {
            c->out.pos = c->out.len = 0;
            if (!c->producing)
                break;
            produce_body(c);
            if (!c->producing)
                c->busy = 0;
            continue;
        }
        ssize_t n = write(c->fd, c->out.data + c->out.pos, buf_pending(&c->out));
        if (n > 0) {
            c->out.pos += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            c->dead = 1;
        }
    }
    buf_compact(&c->out);
}

/* Graceful close: shut our write side so the client sees EOF after the
 * response, then read and discard until the client closes or the deadline.
 * Closing with unread input would send RST and could destroy the response
 * before the client read it (e.g. the 417 answer to an unread body). */
static void conn_linger(conn_t *c)
{
    shutdown(c->fd, SHUT_WR);
    c->state = CONN_LINGER;
    c->busy = 0;
    ev_timer_stop(c->srv->loop, &c->timer);
    ev_timer_set(&c->timer, ECHO_LINGER_MS / 1000.0, 0.);
    ev_timer_start(c->srv->loop, &c->timer);
}

/* The one place that decides what happens next for a connection: parse,
 * write, close, and which watchers to keep. Every event ends here. */
static void conn_run(conn_t *c)
{
    struct ev_loop *loop = c->srv->loop;

    for (int round = 0; round < ECHO_RUN_ROUNDS && !c->dead; round++) {
        process_input(c);
        conn_flush(c);
        if (c->busy || c->state != CONN_HTTP || c->close_after ||
            buf_pending(&c->in) == 0 || buf_pending(&c->out) >= ECHO_OUT_HIGH)
            break;
    }

    if (c->dead) {
        conn_free(c);
        return;
    }

    int out_empty = buf_pending(&c->out) == 0 && !c->producing;
    if (out_empty) {
        if (c->state == CONN_HTTP && c->close_after && !c->busy) {
            if (c->eof) {
                conn_free(c);
                return;
            }
            conn_linger(c);
        } else if (c->eof && (c->state == CONN_TUNNEL || (c->state == CONN_HTTP && !c->busy))) {
            conn_free(c);
            return;
        }
    }

    int want_read;
    switch (c->state) {
    case CONN_HTTP:
        want_read = !c->eof && buf_pending(&c->in) < ECHO_MAX_INBUF &&
                    buf_pending(&c->out) < ECHO_OUT_HIGH;
        break;
    case CONN_TUNNEL:
        want_read = !c->eof && buf_pending(&c->out) < ECHO_OUT_HIGH;
        break;
    default:
        want_read = !c->eof;
        break;
    }
    if (want_read && !ev_is_active(&c->rio))
        ev_io_start(loop, &c->rio);
    else if (!want_read && ev_is_active(&c->rio))
        ev_io_stop(loop, &c->rio);

    int want_write = c->state != CONN_LINGER && (buf_pending(&c->out) > 0 || c->producing);
    if (want_write && !ev_is_active(&c->wio))
        ev_io_start(loop, &c->wio);
    else if (!want_write && ev_is_active(&c->wio))
        ev_io_stop(loop, &c->wio);
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    conn_t *c = w->data;
    static char discard[ECHO_READ_CHUNK];
    buf_t *dst = c->state == CONN_HTTP ? &c->in : c->state == CONN_TUNNEL ? &c->out : NULL;
    char *ptr = discard;

    if (dst) {
        buf_reserve(dst, ECHO_READ_CHUNK);
        ptr = dst->data + dst->len;
    }
    ssize_t n = read(c->fd, ptr, ECHO_READ_CHUNK);
    if (n > 0) {
        if (dst)
            dst->len += (size_t)n;
    } else if (n == 0) {
        c->eof = 1;
        if (c->state == CONN_LINGER || c->state == CONN_HANG)
            c->dead = 1;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        c->dead = 1;
    }
    conn_run(c);
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    conn_run(w->data);
}

/* One timer per connection, three uses: the X-Echo-Delay-Ms wait, the
 * slow-body drip, and the lingering-close deadline. */
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    conn_t *c = w->data;

    if (c->state == CONN_LINGER) {
        conn_free(c);
        return;
    }
    if (c->mode == MODE_SLOW_BODY && c->busy && c->timer.repeat > 0.) {
        if (c->body_sent < c->body_total) {
            buf_append(&c->out, c->x_body ? x_slab : c->resp_body.data + c->body_sent, 1);
            c->body_sent++;
        }
        if (c->body_sent >= c->body_total) {
            ev_timer_stop(loop, &c->timer);
            c->timer.repeat = 0.;
            c->busy = 0;
        }
    } else {
        /* The delay is over. */
        ev_timer_stop(loop, &c->timer);
        c->busy = 0;
        c->timer.repeat = 0.;
        start_response(c);
    }
    conn_run(c);
}

static void conn_new(server_t *srv, int fd, struct sockaddr_storage *ss)
{
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        die("out of memory (connection)");
    c->srv = srv;
    c->fd = fd;
    if (ss->ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, c->remote_addr, sizeof(c->remote_addr));
        c->remote_port = ntohs(a->sin6_port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, c->remote_addr, sizeof(c->remote_addr));
        c->remote_port = ntohs(a->sin_port);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    ev_io_init(&c->rio, read_cb, fd, EV_READ);
    ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
    ev_init(&c->timer, timer_cb);
    c->rio.data = c->wio.data = c->timer.data = c;
    srv->connections++;
    srv->active++;
    c->counted_epoch = srv->epoch;
    ev_io_start(srv->loop, &c->rio);
}

/* ---- listener ------------------------------------------------------------ */

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    server_t *srv = w->data;
    for (int i = 0; i < ECHO_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(srv->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_new(srv, fd, &ss);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Level-triggered: without a pause we would spin on the
             * pending connection until a descriptor frees up. */
            fprintf(stderr, "tg-echo: accept: %s; pausing\n", strerror(errno));
            ev_io_stop(loop, &srv->accept_io);
            ev_timer_set(&srv->accept_pause, ECHO_ACCEPT_PAUSE_S, 0.);
            ev_timer_start(loop, &srv->accept_pause);
        }
        break;
    }
}

static void accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    server_t *srv = w->data;
    ev_io_start(loop, &srv->accept_io);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static int listen_on(const char *host, const char *port)
{
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        die("cannot resolve %s: %s", host, gai_strerror(rc));
    int fd = -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        die("cannot listen on %s port %s: %s", host, port, strerror(errno));
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        die("getsockname: %s", strerror(errno));
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* --fixed-body N: the three possible responses are built once, so each
 * request costs one parse and one memcpy. The body is `{"b":"xxx…"}`
 * padded to exactly N bytes (plain 'x's when N is too small for that). */
static void build_fixed(server_t *srv, size_t n)
{
    buf_t body = { 0 };
    if (n >= 8) {
        buf_puts(&body, "{\"b\":\"");
        for (size_t i = 0; i < n - 8; i++)
            buf_append(&body, "x", 1);
        buf_puts(&body, "\"}");
    } else {
        for (size_t i = 0; i < n; i++)
            buf_append(&body, "x", 1);
    }
    const char *conn_hdr[3] = { "", "Connection: close\r\n", "Connection: keep-alive\r\n" };
    buf_t *dst[3] = { &srv->fixed_keepalive, &srv->fixed_close, &srv->fixed_keepalive10 };
    for (int i = 0; i < 3; i++) {
        buf_printf(dst[i], "HTTP/1.1 200 OK\r\nServer: tg-echo\r\nContent-Type: application/json\r\n"
                           "Content-Length: %zu\r\n%s\r\n", n, conn_hdr[i]);
        buf_append(dst[i], body.data, body.len);
    }
    buf_free(&body);
}

static void usage(void)
{
    fprintf(stderr, "usage: tg-echo [--host 127.0.0.1] [--port 0] [--fixed-body N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "0";
    long fixed = -1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
            host = argv[++i];
        } else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = argv[++i];
        } else if (strcmp(argv[i], "--fixed-body") == 0 && i + 1 < argc) {
            char *end;
            fixed = strtol(argv[++i], &end, 10);
            if (*end || fixed < 0 || fixed > ECHO_MAX_FIXED_BODY)
                die("--fixed-body: expected 0..%d", ECHO_MAX_FIXED_BODY);
        } else {
            usage();
        }
    }

    signal(SIGPIPE, SIG_IGN);
    /* Benchmarks open thousands of connections: take the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(x_slab, 'x', sizeof(x_slab));

    echo_settings.on_message_begin = on_message_begin;
    echo_settings.on_url = on_url;
    echo_settings.on_header_field = on_header_field;
    echo_settings.on_header_value = on_header_value;
    echo_settings.on_headers_complete = on_headers_complete;
    echo_settings.on_body = on_body;
    echo_settings.on_message_complete = on_message_complete;
    fixed_settings.on_message_complete = on_message_complete;

    server_t srv;
    memset(&srv, 0, sizeof(srv));
    srv.epoch = 1;
    if (fixed >= 0) {
        srv.fixed = 1;
        srv.fixed_len = (size_t)fixed;
        build_fixed(&srv, (size_t)fixed);
    }
    srv.loop = ev_default_loop(EVFLAG_AUTO);
    srv.lfd = listen_on(host, port);

    ev_io_init(&srv.accept_io, accept_cb, srv.lfd, EV_READ);
    srv.accept_io.data = &srv;
    ev_io_start(srv.loop, &srv.accept_io);
    ev_init(&srv.accept_pause, accept_pause_cb);
    srv.accept_pause.data = &srv;
    ev_signal_init(&srv.sigterm, signal_cb, SIGTERM);
    ev_signal_start(srv.loop, &srv.sigterm);
    ev_signal_init(&srv.sigint, signal_cb, SIGINT);
    ev_signal_start(srv.loop, &srv.sigint);

    printf("listening %d\n", bound_port(srv.lfd));
    fflush(stdout);

    ev_run(srv.loop, 0);

    /* Open connections die with the process; the kernel closes them. */
    close(srv.lfd);
    buf_free(&srv.fixed_keepalive);
    buf_free(&srv.fixed_close);
    buf_free(&srv.fixed_keepalive10);
    return 0;
}
