/*
 * test_tg_http.c: unit tests for core/tg_http.c. Every head and every chunked
 * body is run twice, whole and fed one byte at a time (each step in a fresh
 * heap buffer of exactly the bytes so far, so ASan catches a read past len);
 * both runs must agree. Expectations are "key=value" tokens that must all
 * appear in a one-line description of the parse result.
 */
#include "tg_test.h"
#include "tg_http.h"

#include <http_parser.h>
#include <stdlib.h>

#define RAW(s) s, sizeof(s) - 1
#define ERR    TG_ERROR
#define OK     TG_OK
#define AGAIN  TG_AGAIN

static const tg_http_limits_t deflim = { 8192, 2048, 64 };

/* ---- helpers -------------------------------------------------------------- */

/* Appends s with spaces as '~' and other unprintables as \xNN. */
static void put_value(char **o, char *end, tg_str_t s) {
    size_t i;
    if (s.p == NULL) { *o += snprintf(*o, (size_t)(end - *o), "-"); return; }
    for (i = 0; i < s.len && *o < end - 5; i++) {
        unsigned char c = (unsigned char) s.p[i];
        if (c == ' ') *(*o)++ = '~';
        else if (c < 0x21 || c >= 0x7f) *o += snprintf(*o, (size_t)(end - *o), "\\x%02x", c);
        else *(*o)++ = (char) c;
    }
    **o = '\0';
}

static void put_str(char **o, char *end, const char *key, tg_str_t s) {
    *o += snprintf(*o, (size_t)(end - *o), " %s=", key);
    put_value(o, end, s);
}

static void put_headers(char **o, char *end, const tg_http_header_t *h, int n) {
    int i;
    for (i = 0; i < n; i++) {
        char key[16];
        snprintf(key, sizeof(key), "h%d", i);
        put_str(o, end, key, h[i].name);
        *o += snprintf(*o, (size_t)(end - *o), ":");
        put_value(o, end, h[i].value);
    }
}

static void describe_req(const tg_http_request_t *r, char *out, size_t outlen) {
    char *o = out, *end = out + outlen;
    o += snprintf(o, outlen, "mid=%d", r->method);
    put_str(&o, end, "m", r->method_name);
    put_str(&o, end, "t", r->target);
    put_str(&o, end, "p", r->path);
    put_str(&o, end, "q", r->query);
    put_str(&o, end, "h", r->host);
    o += snprintf(o, (size_t)(end - o), " v=%d cl=%lld ch=%d ka=%d up=%d ex=%d hl=%zu nh=%d",
                  r->http_minor, (long long) r->content_length, r->chunked,
                  r->keepalive, r->upgrade, r->expect_continue, r->head_len,
                  r->nheaders);
    put_headers(&o, end, r->headers, r->nheaders);
}

static void describe_resp(const tg_http_response_t *r, char *out, size_t outlen) {
    char *o = out, *end = out + outlen;
    o += snprintf(o, outlen, "s=%d", r->status);
    put_str(&o, end, "r", r->reason);
    o += snprintf(o, (size_t)(end - o), " v=%d cl=%lld ch=%d ka=%d up=%d hl=%zu nh=%d",
                  r->http_minor, (long long) r->content_length, r->chunked,
                  r->keepalive, r->upgrade, r->head_len, r->nheaders);
    put_headers(&o, end, r->headers, r->nheaders);
}

/* Every space-separated token of expect must be a token of desc. */
static void check_expect(const char *name, const char *desc, const char *expect) {
    char padded[8192], tok[512];
    const char *p = expect;
    snprintf(padded, sizeof(padded), " %s ", desc);
    while (p && *p) {
        size_t n = strcspn(p, " ");
        if (n) {
            snprintf(tok, sizeof(tok), " %.*s ", (int) n, p);
            CHECK_MSG(strstr(padded, tok) != NULL, "%s: want %s in [%s]", name, tok, desc);
        }
        p += n;
        while (*p == ' ') p++;
    }
}

/* ---- requests -------------------------------------------------------------- */

typedef struct {
    int    rc, status;
    size_t at;          /* bytes in the buffer when the result came */
    char   desc[8192];
} outcome_t;

static int parse_req_copy(tg_http_scan_t *st, const char *raw, size_t len,
                          const tg_http_limits_t *lim, outcome_t *out) {
    static tg_http_request_t req;
    char *b = malloc(len ? len : 1);
    memcpy(b, raw, len);
    memset(&req, 0xa5, sizeof(req));
    out->status = 0;
    out->rc = tg_http_parse_request(st, b, len, lim, &req, &out->status);
    out->at = len;
    out->desc[0] = '\0';
    if (out->rc == TG_OK) describe_req(&req, out->desc, sizeof(out->desc));
    free(b);
    return out->rc;
}

static void run_req(const char *name, const char *raw, size_t len,
                    const tg_http_limits_t *lim, int rc, int status,
                    const char *expect) {
    static outcome_t whole, step;
    tg_http_scan_t st = { 0 };
    size_t i;

    if (lim == NULL) lim = &deflim;
    parse_req_copy(&st, raw, len, lim, &whole);
    CHECK_MSG(whole.rc == rc, "%s: rc %d, want %d (status %d)", name, whole.rc, rc, whole.status);
    if (rc == TG_ERROR)
        CHECK_MSG(whole.status == status, "%s: status %d, want %d", name, whole.status, status);
    if (rc == TG_OK && expect)
        check_expect(name, whole.desc, expect);

    memset(&st, 0, sizeof(st));
    step.rc = TG_AGAIN;
    for (i = 1; i <= len; i++)
        if (parse_req_copy(&st, raw, i, lim, &step) != TG_AGAIN) break;
    CHECK_MSG(step.rc == whole.rc, "%s: byte-wise rc %d, whole %d", name, step.rc, whole.rc);
    if (whole.rc == TG_ERROR)
        CHECK_MSG(step.status == whole.status, "%s: byte-wise status %d, whole %d",
                  name, step.status, whole.status);
    if (whole.rc == TG_OK)
        CHECK_MSG(strcmp(step.desc, whole.desc) == 0, "%s: byte-wise [%s] whole [%s]",
                  name, step.desc, whole.desc);
}

typedef struct {
    const char *name;
    const char *raw;
    size_t      len;
    int         rc, status;
    const char *expect;
} req_case_t;

#define H11 " HTTP/1.1\r\nHost: a\r\n"

static const req_case_t req_cases[] = {
    /* valid requests */
    { "simple GET", RAW("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), OK, 0,
      "m=GET mid=1 t=/ p=/ q=- h=example.com v=1 cl=-1 ch=0 ka=1 up=0 ex=0 hl=37 nh=1 h0=Host:example.com" },
    { "path and query", RAW("GET /a/b?x=1&y=2?z" H11 "\r\n"), OK, 0,
      "t=/a/b?x=1&y=2?z p=/a/b q=x=1&y=2?z h=a" },
    { "empty query", RAW("GET /a?" H11 "\r\n"), OK, 0, "p=/a q=" },
    { "POST content-length", RAW("POST /up" H11 "Content-Length: 5\r\n\r\nhello"), OK, 0,
      "m=POST mid=3 cl=5 ch=0 hl=49" },
    { "CL leading zeros", RAW("POST /" H11 "Content-Length: 007\r\n\r\n"), OK, 0, "cl=7" },
    { "CL zero", RAW("POST /" H11 "Content-Length: 0\r\n\r\n"), OK, 0, "cl=0" },
    { "CL int64 max", RAW("POST /" H11 "Content-Length: 9223372036854775807\r\n\r\n"), OK, 0,
      "cl=9223372036854775807" },
    { "CL with OWS", RAW("POST /" H11 "Content-Length: \t 12  \r\n\r\n"), OK, 0, "cl=12" },
    /* http-parser refuses HTAB after the digits, though it is OWS (quirk) */
    { "CL with trailing HTAB", RAW("POST /" H11 "Content-Length: 12\t\r\n\r\n"), ERR, 400, NULL },
    { "POST chunked", RAW("POST /" H11 "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), OK, 0,
      "ch=1 cl=-1 hl=56" },
    { "chunked any case, empty elements", RAW("POST /" H11 "Transfer-Encoding: , CHUNKED ,\r\n\r\n"), OK, 0, "ch=1" },
    { "1.0 defaults to close", RAW("GET / HTTP/1.0\r\n\r\n"), OK, 0, "v=0 ka=0 h=- nh=0" },
    { "1.0 keep-alive", RAW("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), OK, 0, "v=0 ka=1" },
    { "1.0 with Host", RAW("GET / HTTP/1.0\r\nHost: b.example\r\n\r\n"), OK, 0, "h=b.example" },
    { "1.1 defaults to keep-alive", RAW("GET /" H11 "\r\n"), OK, 0, "ka=1" },
    { "1.1 close", RAW("GET /" H11 "Connection: close\r\n\r\n"), OK, 0, "ka=0" },
    { "close beats keep-alive", RAW("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"), OK, 0, "ka=0" },
    { "token list", RAW("GET /" H11 "Connection: foo,  close\r\n\r\n"), OK, 0, "ka=0" },
    { "websocket", RAW("GET /ws" H11 "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n"), OK, 0,
      "up=1 ka=1 nh=3" },
    { "Upgrade without Connection: upgrade", RAW("GET /ws" H11 "Upgrade: websocket\r\n\r\n"), OK, 0, "up=0" },
    { "Connection: upgrade without Upgrade", RAW("GET /ws" H11 "Connection: upgrade\r\n\r\n"), OK, 0, "up=0" },
    { "upgrade ignored in 1.0", RAW("GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"), OK, 0, "up=0" },
    { "Expect: 100-continue", RAW("POST /" H11 "Content-Length: 3\r\nExpect: 100-Continue\r\n\r\n"), OK, 0, "ex=1 cl=3" },
    { "Expect ignored in 1.0", RAW("POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"), OK, 0, "ex=0" },
    { "absolute-form", RAW("GET http://api.example.com:8080/v1/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"), OK, 0,
      "h=api.example.com:8080 p=/v1/x q=q=1 t=http://api.example.com:8080/v1/x?q=1" },
    { "absolute-form no path", RAW("GET http://a.b HTTP/1.1\r\nHost: a.b\r\n\r\n"), OK, 0, "h=a.b p=/ q=-" },
    { "absolute-form query only", RAW("GET HTTPS://a.b?x=y HTTP/1.1\r\nHost: a.b\r\n\r\n"), OK, 0, "h=a.b p=/ q=x=y" },
    { "absolute-form IPv6", RAW("GET http://[::1]:80/x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), OK, 0, "h=[::1]:80 p=/x" },
    { "OPTIONS *", RAW("OPTIONS *" H11 "\r\n"), OK, 0, "m=OPTIONS t=* p=* q=-" },
    { "M-SEARCH", RAW("M-SEARCH /" H11 "\r\n"), OK, 0, "m=M-SEARCH" },
    { "PURGE", RAW("PURGE /x" H11 "\r\n"), OK, 0, "m=PURGE" },
    { "leading CRLFs", RAW("\r\n\r\nGET /" H11 "\r\n"), OK, 0, "hl=31" },
    { "4 leading CRLFs", RAW("\r\n\r\n\r\n\r\nGET /" H11 "\r\n"), OK, 0, "hl=35" },
    { "pipelined", RAW("GET /1" H11 "\r\nGET /2" H11 "\r\n"), OK, 0, "p=/1 hl=28" },
    { "OWS trimmed, empty values", RAW("GET /" H11 "X-A:   v  w \t\r\nX-E:\r\nX-F: \r\nX-G: g\r\n\r\n"), OK, 0,
      "nh=5 h1=X-A:v~~w h2=X-E: h3=X-F: h4=X-G:g" },
    { "obs-text in value", RAW("GET /" H11 "X: caf\xc3\xa9\r\n\r\n"), OK, 0, "h1=X:caf\\xc3\\xa9" },
    { "tab in value", RAW("GET /" H11 "X: a\tb\r\n\r\n"), OK, 0, "h1=X:a\\x09b" },
    { "odd but legal target chars", RAW("GET /a{b}|c\"<>^`\\ HTTP/1.1\r\nHost: a\r\n\r\n"), OK, 0, "p=/a{b}|c\"<>^`\\" },
    { "Host with port", RAW("GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"), OK, 0, "h=a.example:8080" },

    /* incomplete */
    { "empty", "", 0, AGAIN, 0, NULL },
    { "no end yet", RAW("GET /" H11), AGAIN, 0, NULL },
    { "half of the end", RAW("GET /" H11 "\r"), AGAIN, 0, NULL },
    { "leading CRLF only", RAW("\r\n\r\n"), AGAIN, 0, NULL },

    /* line endings */
    { "bare LF in request line", RAW("GET / HTTP/1.1\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "bare LF ends head", RAW("GET / HTTP/1.1\r\nHost: a\n\n"), ERR, 400, NULL },
    { "bare LF in value", RAW("GET /" H11 "X: a\nb\r\n\r\n"), ERR, 400, NULL },
    { "leading bare LF", RAW("\nGET /" H11 "\r\n"), ERR, 400, NULL },
    { "bare CR", RAW("GET /" H11 "X: a\rb\r\n\r\n"), ERR, 400, NULL },
    { "CR CR", RAW("GET /" H11 "\r\r\n"), ERR, 400, NULL },
    { "\\r\\n\\rX terminator", RAW("GET /" H11 "\rXGET /evil HTTP/1.1\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "5 leading CRLFs", RAW("\r\n\r\n\r\n\r\n\r\nGET /" H11 "\r\n"), ERR, 400, NULL },

    /* header lines */
    { "obs-fold", RAW("GET /" H11 "X: a\r\n b\r\n\r\n"), ERR, 400, NULL },
    { "obs-fold tab", RAW("GET /" H11 "X: a\r\n\tb\r\n\r\n"), ERR, 400, NULL },
    { "space before first header", RAW("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), ERR, 400, NULL },
    { "space before colon", RAW("POST /" H11 "Transfer-Encoding : chunked\r\n\r\n"), ERR, 400, NULL },
    { "space in name", RAW("GET /" H11 "X Y: a\r\n\r\n"), ERR, 400, NULL },
    { "no colon", RAW("GET /" H11 "Xa\r\n\r\n"), ERR, 400, NULL },
    { "empty name", RAW("GET /" H11 ": a\r\n\r\n"), ERR, 400, NULL },
    { "bad name char", RAW("GET /" H11 "X(a): a\r\n\r\n"), ERR, 400, NULL },
    { "NUL in value", RAW("GET /" H11 "X: a\0b\r\n\r\n"), ERR, 400, NULL },
    { "CTL in value", RAW("GET /" H11 "X: a\x01" "b\r\n\r\n"), ERR, 400, NULL },
    { "DEL in value", RAW("GET /" H11 "X: a\x7f\r\n\r\n"), ERR, 400, NULL },
    { "0x80 in name", RAW("GET /" H11 "X\x80: a\r\n\r\n"), ERR, 400, NULL },

    /* request line */
    { "double space", RAW("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "trailing space", RAW("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "space in target", RAW("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "no version", RAW("GET /\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "empty request line", RAW("\r\n\r\n\r\n\r\n\r\n\r\n"), ERR, 400, NULL },
    { "leading space", RAW(" GET /" H11 "\r\n"), ERR, 400, NULL },
    { "tab separator", RAW("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "lowercase method", RAW("get /" H11 "\r\n"), ERR, 400, NULL },
    { "method not a token", RAW("G@T /" H11 "\r\n"), ERR, 400, NULL },
    { "unknown method", RAW("BREW /" H11 "\r\n"), ERR, 501, NULL },
    { "method prefix", RAW("GETS /" H11 "\r\n"), ERR, 501, NULL },
    { "CONNECT", RAW("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"), ERR, 405, NULL },
    { "# in target", RAW("GET /a#frag" H11 "\r\n"), ERR, 400, NULL },
    { "0x80 in target", RAW("GET /caf\xc3\xa9" H11 "\r\n"), ERR, 400, NULL },
    { "CTL in target", RAW("GET /a\x01" H11 "\r\n"), ERR, 400, NULL },
    { "* with GET", RAW("GET *" H11 "\r\n"), ERR, 400, NULL },
    { "relative target", RAW("GET a/b" H11 "\r\n"), ERR, 400, NULL },
    { "authority-form with GET", RAW("GET example.com:80" H11 "\r\n"), ERR, 400, NULL },
    { "absolute-form ftp", RAW("GET ftp://a/b" H11 "\r\n"), ERR, 400, NULL },
    { "absolute-form empty host", RAW("GET http:///x" H11 "\r\n"), ERR, 400, NULL },
    { "absolute-form userinfo", RAW("GET http://u@a/x" H11 "\r\n"), ERR, 400, NULL },
    { "absolute-form bad port", RAW("GET http://a:99999/x" H11 "\r\n"), ERR, 400, NULL },
    { "absolute-form empty port", RAW("GET http://a:/x" H11 "\r\n"), ERR, 400, NULL },
    { "absolute-form scheme only", RAW("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "HTTP/2.0", RAW("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), ERR, 505, NULL },
    { "HTTP/9.9", RAW("GET / HTTP/9.9\r\nHost: a\r\n\r\n"), ERR, 505, NULL },
    { "HTTP/1.2", RAW("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), ERR, 505, NULL },
    { "HTTP/0.9", RAW("GET / HTTP/0.9\r\n\r\n"), ERR, 505, NULL },
    { "HTTP/1.10", RAW("GET / HTTP/1.10\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "lowercase version", RAW("GET / http/1.1\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "version garbage", RAW("GET / FOO\r\nHost: a\r\n\r\n"), ERR, 400, NULL },
    { "505 before missing Host", RAW("GET / HTTP/2.0\r\n\r\n"), ERR, 505, NULL },

    /* Host */
    { "missing Host", RAW("GET / HTTP/1.1\r\n\r\n"), ERR, 400, NULL },
    { "duplicate Host", RAW("GET /" H11 "Host: a\r\n\r\n"), ERR, 400, NULL },
    { "duplicate Host, other case", RAW("GET /" H11 "hOST: b\r\n\r\n"), ERR, 400, NULL },
    { "empty Host", RAW("GET / HTTP/1.1\r\nHost:\r\n\r\n"), ERR, 400, NULL },
    { "Host with space", RAW("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), ERR, 400, NULL },
    { "Host with userinfo", RAW("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), ERR, 400, NULL },
    { "Host bad port", RAW("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"), ERR, 400, NULL },
    { "absolute-form still needs Host", RAW("GET http://a/ HTTP/1.1\r\n\r\n"), ERR, 400, NULL },

    /* framing */
    { "CL + TE", RAW("POST /" H11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), ERR, 400, NULL },
    { "TE + CL", RAW("POST /" H11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), ERR, 400, NULL },
    { "TE gzip + CL", RAW("POST /" H11 "Transfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n"), ERR, 400, NULL },
    { "two CL", RAW("POST /" H11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n"), ERR, 400, NULL },
    { "two equal CL", RAW("POST /" H11 "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"), ERR, 400, NULL },
    { "CL list", RAW("POST /" H11 "Content-Length: 5, 5\r\n\r\n"), ERR, 400, NULL },
    { "CL negative", RAW("POST /" H11 "Content-Length: -1\r\n\r\n"), ERR, 400, NULL },
    { "CL plus", RAW("POST /" H11 "Content-Length: +5\r\n\r\n"), ERR, 400, NULL },
    { "CL hex", RAW("POST /" H11 "Content-Length: 0x5\r\n\r\n"), ERR, 400, NULL },
    { "CL empty", RAW("POST /" H11 "Content-Length:\r\n\r\n"), ERR, 400, NULL },
    { "CL inner space", RAW("POST /" H11 "Content-Length: 1 2\r\n\r\n"), ERR, 400, NULL },
    { "CL overflow", RAW("POST /" H11 "Content-Length: 9223372036854775808\r\n\r\n"), ERR, 400, NULL },
    { "CL huge", RAW("POST /" H11 "Content-Length: 99999999999999999999999\r\n\r\n"), ERR, 400, NULL },
    { "chunked twice", RAW("POST /" H11 "Transfer-Encoding: chunked, chunked\r\n\r\n"), ERR, 400, NULL },
    { "chunked on two lines", RAW("POST /" H11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), ERR, 400, NULL },
    { "chunked not last", RAW("POST /" H11 "Transfer-Encoding: chunked, gzip\r\n\r\n"), ERR, 400, NULL },
    { "chunked with params", RAW("POST /" H11 "Transfer-Encoding: chunked;x=1\r\n\r\n"), ERR, 400, NULL },
    { "TE empty", RAW("POST /" H11 "Transfer-Encoding:\r\n\r\n"), ERR, 400, NULL },
    { "TE not a token", RAW("POST /" H11 "Transfer-Encoding: \"chunked\"\r\n\r\n"), ERR, 400, NULL },
    { "TE in HTTP/1.0", RAW("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), ERR, 400, NULL },
    { "TE gzip", RAW("POST /" H11 "Transfer-Encoding: gzip\r\n\r\n"), ERR, 501, NULL },
    { "TE gzip, chunked", RAW("POST /" H11 "Transfer-Encoding: gzip, chunked\r\n\r\n"), ERR, 501, NULL },
    { "TE gzip line, chunked line", RAW("POST /" H11 "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"), ERR, 501, NULL },
    { "TE identity", RAW("POST /" H11 "Transfer-Encoding: identity\r\n\r\n"), ERR, 501, NULL },
    { "Expect other", RAW("POST /" H11 "Expect: 200-ok\r\n\r\n"), ERR, 417, NULL },
    { "Expect with params", RAW("POST /" H11 "Expect: 100-continue; x\r\n\r\n"), ERR, 417, NULL },
};

/* A request "GET <target> HTTP/1.1\r\nHost: a\r\n" plus nx "X: 1" lines and
 * one "P: <pad>" line, padded to exactly total bytes (0: no pad line). */
static size_t build_req(char *out, size_t cap, size_t tlen, int nx, size_t total) {
    size_t n = 0, i;
    int k;
    n += (size_t) snprintf(out + n, cap - n, "GET /");
    for (i = 1; i < tlen; i++) out[n++] = 'a';
    n += (size_t) snprintf(out + n, cap - n, " HTTP/1.1\r\nHost: a\r\n");
    for (k = 0; k < nx; k++) n += (size_t) snprintf(out + n, cap - n, "X: 1\r\n");
    if (total) {
        size_t fixed = n + strlen("P: \r\n\r\n");
        n += (size_t) snprintf(out + n, cap - n, "P: ");
        for (i = fixed; i < total; i++) out[n++] = 'p';
        n += (size_t) snprintf(out + n, cap - n, "\r\n");
    }
    n += (size_t) snprintf(out + n, cap - n, "\r\n");
    return n;
}

static void test_request_limits(void) {
    static char b[20000];
    tg_http_limits_t lim = { 128, 32, 4 };
    size_t n;

    n = build_req(b, sizeof(b), 32, 0, 0);
    run_req("target at max_uri", b, n, &lim, OK, 0, NULL);
    n = build_req(b, sizeof(b), 33, 0, 0);
    run_req("target over max_uri", b, n, &lim, ERR, 414, NULL);
    /* the request line never ends: 414 as soon as the target passes max_uri */
    n = build_req(b, sizeof(b), 60, 0, 0);
    run_req("request line at max_uri, incomplete", b, 4 + 32, &lim, AGAIN, 0, NULL);
    run_req("early 414", b, 4 + 33, &lim, ERR, 414, NULL);

    n = build_req(b, sizeof(b), 1, 2, 128);
    CHECK_INT(n, 128);
    run_req("head at max_head", b, n, &lim, OK, 0, "hl=128 nh=4");
    n = build_req(b, sizeof(b), 1, 2, 129);
    run_req("head over max_head", b, n, &lim, ERR, 431, NULL);
    run_req("incomplete head at max_head", b, 128, &lim, ERR, 431, NULL);
    run_req("incomplete head below max_head", b, 127, &lim, AGAIN, 0, NULL);
    n = build_req(b + 2, sizeof(b) - 2, 1, 2, 126);
    memcpy(b, "\r\n", 2);
    run_req("leading CRLF within max_head", b, n + 2, &lim, OK, 0, "hl=128");
    n = build_req(b + 2, sizeof(b) - 2, 1, 2, 127);
    run_req("leading CRLF counts against max_head", b, n + 2, &lim, ERR, 431, NULL);

    n = build_req(b, sizeof(b), 1, 3, 0);
    run_req("headers at max_headers", b, n, &lim, OK, 0, "nh=4");
    n = build_req(b, sizeof(b), 1, 4, 0);
    run_req("headers over max_headers", b, n, &lim, ERR, 431, NULL);

    /* max_headers 0 or too big means TG_HTTP_MAX_HEADERS */
    lim = (tg_http_limits_t){ sizeof(b), 64, 0 };
    n = build_req(b, sizeof(b), 1, TG_HTTP_MAX_HEADERS - 1, 0);
    run_req("TG_HTTP_MAX_HEADERS", b, n, &lim, OK, 0, "nh=128");
    n = build_req(b, sizeof(b), 1, TG_HTTP_MAX_HEADERS, 0);
    run_req("over TG_HTTP_MAX_HEADERS", b, n, &lim, ERR, 431, NULL);
}

static void test_requests(void) {
    size_t i;
    tg_http_request_t req;
    tg_http_scan_t st = { 0 };
    int status = 0;
    http_parser hp;

    for (i = 0; i < tg_nelems(req_cases); i++) {
        const req_case_t *c = &req_cases[i];
        run_req(c->name, c->raw, c->len, NULL, c->rc, c->status, c->expect);
    }
    test_request_limits();

    /* http-parser's lenient switches are off after init (tokenize relies on it) */
    http_parser_init(&hp, HTTP_REQUEST);
    CHECK(hp.allow_chunked_length == 0 && hp.lenient_http_headers == 0);

    /* slices point into the caller's buffer */
    {
        static const char raw[] = "POST /p?q HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy";
        CHECK_INT(tg_http_parse_request(&st, raw, sizeof(raw) - 1, &deflim, &req, &status), TG_OK);
        CHECK(req.path.p == raw + 5 && req.query.p == raw + 8 && req.host.p == raw + 26);
        CHECK(req.headers[1].value.p == raw + 45);
        CHECK_INT(req.method, HTTP_POST);
        CHECK_INT(req.head_len, sizeof(raw) - 3);
    }
}

/* ---- responses ---------------------------------------------------------------- */

static int parse_resp_copy(tg_http_scan_t *st, const char *raw, size_t len,
                           size_t max_head, outcome_t *out) {
    static tg_http_response_t resp;
    char *b = malloc(len ? len : 1);
    memcpy(b, raw, len);
    memset(&resp, 0xa5, sizeof(resp));
    out->rc = tg_http_parse_response(st, b, len, max_head, &resp);
    out->desc[0] = '\0';
    if (out->rc == TG_OK) describe_resp(&resp, out->desc, sizeof(out->desc));
    free(b);
    return out->rc;
}

static void run_resp(const char *name, const char *raw, size_t len,
                     size_t max_head, int rc, const char *expect) {
    static outcome_t whole, step;
    tg_http_scan_t st = { 0 };
    size_t i;

    parse_resp_copy(&st, raw, len, max_head, &whole);
    CHECK_MSG(whole.rc == rc, "%s: rc %d, want %d", name, whole.rc, rc);
    if (rc == TG_OK && expect) check_expect(name, whole.desc, expect);

    memset(&st, 0, sizeof(st));
    step.rc = TG_AGAIN;
    for (i = 1; i <= len; i++)
        if (parse_resp_copy(&st, raw, i, max_head, &step) != TG_AGAIN) break;
    CHECK_MSG(step.rc == whole.rc, "%s: byte-wise rc %d, whole %d", name, step.rc, whole.rc);
    if (whole.rc == TG_OK)
        CHECK_MSG(strcmp(step.desc, whole.desc) == 0, "%s: byte-wise [%s] whole [%s]",
                  name, step.desc, whole.desc);
}

typedef struct {
    const char *name;
    const char *raw;
    size_t      len;
    int         rc;
    const char *expect;
} resp_case_t;

static const resp_case_t resp_cases[] = {
    { "200 CL", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), OK,
      "s=200 r=OK v=1 cl=5 ch=0 ka=1 up=0 hl=38 nh=1 h0=Content-Length:5" },
    { "chunked", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), OK, "cl=-1 ch=1 ka=1" },
    { "no framing: read until close", RAW("HTTP/1.1 200 OK\r\nX: y\r\n\r\nbody..."), OK, "cl=-1 ch=0 ka=0" },
    { "1.0 CL", RAW("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"), OK, "v=0 cl=0 ka=0" },
    { "1.0 keep-alive", RAW("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"), OK, "v=0 ka=1" },
    { "1.1 close", RAW("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"), OK, "ka=0" },
    { "204", RAW("HTTP/1.1 204 No Content\r\n\r\n"), OK, "s=204 r=No~Content cl=-1 ka=1" },
    { "304", RAW("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"), OK, "s=304 ka=1" },
    { "101", RAW("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"), OK,
      "s=101 up=1 ka=0 hl=77" },
    { "100", RAW("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), OK, "s=100 hl=25 ka=1" },
    { "empty reason", RAW("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"), OK, "s=200 r= " },
    { "no reason, no SP", RAW("HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n"), OK, "s=404 r=" },
    { "reason with obs-text", RAW("HTTP/1.1 200 \xc3\xa7" "a va\r\nContent-Length: 0\r\n\r\n"), OK, "s=200" },
    { "status 599", RAW("HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n"), OK, "s=599" },
    { "incomplete", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"), AGAIN, NULL },
    { "garbage status line", RAW("HTTP/1.1 OK\r\n\r\n"), ERR, NULL },
    { "two-digit status", RAW("HTTP/1.1 20 OK\r\n\r\n"), ERR, NULL },
    { "status 099", RAW("HTTP/1.1 099 X\r\n\r\n"), ERR, NULL },
    { "status 2000", RAW("HTTP/1.1 2000 X\r\n\r\n"), ERR, NULL },
    { "double space", RAW("HTTP/1.1  200 OK\r\n\r\n"), ERR, NULL },
    { "not HTTP", RAW("ICY 200 OK\r\n\r\n"), ERR, NULL },
    { "HTTP/2.0", RAW("HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"), ERR, NULL },
    { "HTTP/1.2", RAW("HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n"), ERR, NULL },
    { "CTL in reason", RAW("HTTP/1.1 200 O\x01K\r\n\r\n"), ERR, NULL },
    { "leading CRLF", RAW("\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), ERR, NULL },
    { "CL + TE", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), ERR, NULL },
    { "two CL", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"), ERR, NULL },
    { "bad CL", RAW("HTTP/1.1 200 OK\r\nContent-Length: 5a\r\n\r\n"), ERR, NULL },
    { "TE gzip", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), ERR, NULL },
    { "chunked not last", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), ERR, NULL },
    { "TE in 1.0", RAW("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), ERR, NULL },
    { "bare LF", RAW("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"), ERR, NULL },
    { "\\r\\n\\rX", RAW("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\rX\r\n\r\n"), ERR, NULL },
    { "obs-fold", RAW("HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"), ERR, NULL },
    { "space before colon", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n"), ERR, NULL },
    { "NUL in value", RAW("HTTP/1.1 200 OK\r\nX: \0\r\nContent-Length: 0\r\n\r\n"), ERR, NULL },
};

static void test_responses(void) {
    static char b[512];
    tg_http_response_t resp;
    tg_http_scan_t st = { 0 };
    size_t i, n;
    static const char two[] = "HTTP/1.1 100 Continue\r\n\r\n"
                              "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    for (i = 0; i < tg_nelems(resp_cases); i++) {
        const resp_case_t *c = &resp_cases[i];
        run_resp(c->name, c->raw, c->len, 8192, c->rc, c->expect);
    }

    /* 100 then 200: the caller loops, with a fresh scan state per head */
    CHECK_INT(tg_http_parse_response(&st, two, sizeof(two) - 1, 8192, &resp), TG_OK);
    CHECK_INT(resp.status, 100);
    n = resp.head_len;
    memset(&st, 0, sizeof(st));
    CHECK_INT(tg_http_parse_response(&st, two + n, sizeof(two) - 1 - n, 8192, &resp), TG_OK);
    CHECK_INT(resp.status, 200);
    CHECK_INT(resp.content_length, 2);
    CHECK_INT(n + resp.head_len, sizeof(two) - 3);

    /* max_head */
    n = (size_t) snprintf(b, sizeof(b), "HTTP/1.1 200 OK\r\nX: %040d\r\n\r\n", 0);
    run_resp("response at max_head", b, n, n, OK, "s=200");
    run_resp("response over max_head", b, n, n - 1, ERR, NULL);

    /* bodyless */
    CHECK(tg_http_response_bodyless(HTTP_HEAD, 200));
    CHECK(tg_http_response_bodyless(HTTP_GET, 100));
    CHECK(tg_http_response_bodyless(HTTP_GET, 101));
    CHECK(tg_http_response_bodyless(HTTP_GET, 204));
    CHECK(tg_http_response_bodyless(HTTP_GET, 304));
    CHECK(!tg_http_response_bodyless(HTTP_GET, 200));
    CHECK(!tg_http_response_bodyless(HTTP_POST, 404));
    CHECK(!tg_http_response_bodyless(HTTP_GET, 205));
}

/* ---- chunked ------------------------------------------------------------------- */

typedef struct {
    ssize_t consumed;     /* or TG_ERROR */
    int     done;
    size_t  datalen;
    char    data[16384];
} chunk_outcome_t;

static void decode_whole(const char *raw, size_t len, chunk_outcome_t *o) {
    tg_http_chunked_t c = { 0 };
    char *b = malloc(len ? len : 1);
    size_t off = 0;
    memcpy(b, raw, len);
    o->datalen = 0;
    for (;;) {
        const char *d;
        size_t dl;
        ssize_t r = tg_http_chunked_decode(&c, b + off, len - off, &d, &dl);
        if (r < 0) { off = (size_t) -1; break; }
        CHECK(dl <= (size_t) r && (dl == 0 || (d >= b + off && d + dl <= b + off + r)));
        memcpy(o->data + o->datalen, d, dl);
        o->datalen += dl;
        off += (size_t) r;
        if (c.done || off == len) break;
        CHECK_MSG(r > 0, "decoder made no progress at %zu", off);
        if (r == 0) break;
    }
    o->consumed = off == (size_t) -1 ? TG_ERROR : (ssize_t) off;
    o->done = c.done;
    free(b);
}

static void decode_bytewise(const char *raw, size_t len, chunk_outcome_t *o) {
    tg_http_chunked_t c = { 0 };
    size_t i;
    o->datalen = 0;
    o->consumed = 0;
    for (i = 0; i < len; i++) {
        const char *d;
        size_t dl;
        char *one = malloc(1);
        ssize_t r;
        one[0] = raw[i];
        r = tg_http_chunked_decode(&c, one, 1, &d, &dl);
        if (r > 0 && dl) o->data[o->datalen++] = *d;
        free(one);
        if (r < 0) { o->consumed = TG_ERROR; break; }
        if (r == 0) { CHECK(c.done); break; }
        o->consumed++;
    }
    o->done = c.done;
}

static void run_chunked(const char *name, const char *raw, size_t len,
                        ssize_t consumed, const char *data, int done) {
    static chunk_outcome_t whole, step;
    decode_whole(raw, len, &whole);
    decode_bytewise(raw, len, &step);
    CHECK_MSG(whole.consumed == consumed, "%s: consumed %zd, want %zd", name, whole.consumed, consumed);
    CHECK_MSG(step.consumed == whole.consumed, "%s: byte-wise consumed %zd, whole %zd",
              name, step.consumed, whole.consumed);
    CHECK_MSG(whole.done == done && step.done == done, "%s: done %d/%d, want %d",
              name, whole.done, step.done, done);
    if (consumed >= 0 && data) {
        CHECK_MSG(whole.datalen == strlen(data) && memcmp(whole.data, data, whole.datalen) == 0,
                  "%s: data [%.*s], want [%s]", name, (int) whole.datalen, whole.data, data);
        CHECK_MSG(step.datalen == whole.datalen && memcmp(step.data, whole.data, step.datalen) == 0,
                  "%s: byte-wise data differs", name);
    }
}

typedef struct {
    const char *name;
    const char *raw;
    size_t      len;
    ssize_t     consumed;   /* TG_ERROR, or bytes consumed */
    const char *data;
    int         done;
} chunk_case_t;

#define ALL ((ssize_t) -100)   /* consumed == len */

static const chunk_case_t chunk_cases[] = {
    { "multi-chunk", RAW("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), ALL, "hello world", 1 },
    { "hex sizes", RAW("A\r\n0123456789\r\nb\r\nabcdefghijk\r\n0\r\n\r\n"), ALL, "0123456789abcdefghijk", 1 },
    { "leading zeros", RAW("0005\r\nhello\r\n000\r\n\r\n"), ALL, "hello", 1 },
    { "16 digits", RAW("0000000000000005\r\nhello\r\n0\r\n\r\n"), ALL, "hello", 1 },
    { "extensions", RAW("5;foo=bar\r\nhello\r\n0;last\r\n\r\n"), ALL, "hello", 1 },
    { "extensions with BWS", RAW("5 ; foo = bar ;baz\t;q=\"a \\\"b\\\" c\"  \r\nhello\r\n0\r\n\r\n"), ALL, "hello", 1 },
    { "trailers", RAW("3\r\nabc\r\n0\r\nX-Sum: abc\r\nY:\r\nHostname: x\r\nContent-Lengths: 1\r\n\r\n"), ALL, "abc", 1 },
    { "pipelined after end", RAW("3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), 13, "abc", 1 },
    { "pipelined after trailers", RAW("0\r\nA: b\r\n\r\nX"), 11, "", 1 },
    { "incomplete data", RAW("5\r\nhel"), ALL, "hel", 0 },
    { "incomplete trailer", RAW("0\r\nX: y\r\n"), ALL, "", 0 },
    { "max size, incomplete", RAW("ffffffffffffffff\r\nab"), ALL, "ab", 0 },
    { "bad hex", RAW("5g\r\nhello\r\n0\r\n\r\n"), ERR, NULL, 0 },
    { "no digits", RAW("\r\nhello\r\n"), ERR, NULL, 0 },
    { "0x prefix", RAW("0x5\r\nhello\r\n"), ERR, NULL, 0 },
    { "negative", RAW("-5\r\nhello\r\n"), ERR, NULL, 0 },
    { "overlong size", RAW("00000000000000005\r\nhello\r\n0\r\n\r\n"), ERR, NULL, 0 },
    { "overflowing size", RAW("10000000000000000\r\n"), ERR, NULL, 0 },
    { "space before size", RAW(" 5\r\nhello\r\n"), ERR, NULL, 0 },
    { "\\r\\r after size", RAW("5\r\rhello\r\n0\r\n\r\n"), ERR, NULL, 0 },
    { "bare LF after size", RAW("5\nhello\r\n0\r\n\r\n"), ERR, NULL, 0 },
    { "two bogus bytes after data", RAW("5\r\nhelloXY0\r\n\r\n"), ERR, NULL, 0 },
    { "bare LF after data", RAW("5\r\nhello\n0\r\n\r\n"), ERR, NULL, 0 },
    { "CR only after data", RAW("5\r\nhello\r0\r\n\r\n"), ERR, NULL, 0 },
    { "LF only after data", RAW("5\r\nhelloX\n0\r\n\r\n"), ERR, NULL, 0 },
    { "data longer than size", RAW("3\r\nhello\r\n"), ERR, NULL, 0 },
    { "empty ext name", RAW("5;\r\nhello\r\n"), ERR, NULL, 0 },
    { "ext without name", RAW("5;=x\r\nhello\r\n"), ERR, NULL, 0 },
    { "ext empty value", RAW("5;a=\r\nhello\r\n"), ERR, NULL, 0 },
    { "ext bad char", RAW("5;a@b\r\nhello\r\n"), ERR, NULL, 0 },
    { "ext unterminated quote", RAW("5;a=\"b\r\nhello\r\n"), ERR, NULL, 0 },
    { "ext two values", RAW("5;a=b c\r\nhello\r\n"), ERR, NULL, 0 },
    { "bare LF ends last chunk", RAW("0\n\r\n"), ERR, NULL, 0 },
    { "bare LF at the end", RAW("0\r\n\n"), ERR, NULL, 0 },
    { "\\r\\r at the end", RAW("0\r\n\r\r"), ERR, NULL, 0 },
    { "CL in trailer", RAW("0\r\nContent-Length: 5\r\n\r\n"), ERR, NULL, 0 },
    { "CL in trailer, lowercase", RAW("0\r\ncontent-length: 5\r\n\r\n"), ERR, NULL, 0 },
    { "TE in trailer", RAW("0\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), ERR, NULL, 0 },
    { "Host in trailer", RAW("0\r\nHOST: evil\r\n\r\n"), ERR, NULL, 0 },
    { "trailer space before colon", RAW("0\r\nX : 1\r\n\r\n"), ERR, NULL, 0 },
    { "trailer obs-fold", RAW("0\r\nX: 1\r\n 2\r\n\r\n"), ERR, NULL, 0 },
    { "trailer without colon", RAW("0\r\nX\r\n\r\n"), ERR, NULL, 0 },
    { "trailer NUL", RAW("0\r\nX: a\0\r\n\r\n"), ERR, NULL, 0 },
    { "trailer bare LF", RAW("0\r\nX: a\n\r\n"), ERR, NULL, 0 },
};

static void test_chunked(void) {
    static char b[20000];
    size_t i, n;

    for (i = 0; i < tg_nelems(chunk_cases); i++) {
        const chunk_case_t *c = &chunk_cases[i];
        run_chunked(c->name, c->raw, c->len, c->consumed == ALL ? (ssize_t) c->len : c->consumed,
                    c->data, c->done);
    }

    /* size line bound: exactly TG_HTTP_CHUNK_LINE_MAX bytes incl. CRLF passes */
    n = (size_t) snprintf(b, sizeof(b), "1;e=");
    while (n < TG_HTTP_CHUNK_LINE_MAX - 2) b[n++] = 'x';
    n += (size_t) snprintf(b + n, sizeof(b) - n, "\r\nz\r\n0\r\n\r\n");
    run_chunked("size line at the bound", b, n, (ssize_t) n, "z", 1);
    memmove(b + 5, b + 4, n - 4);
    run_chunked("size line over the bound", b, n + 1, TG_ERROR, NULL, 0);

    /* trailer bound: TG_HTTP_TRAILER_MAX bytes incl. the final CRLF pass */
    n = (size_t) snprintf(b, sizeof(b), "0\r\nX: ");
    while (n < 3 + TG_HTTP_TRAILER_MAX - 4) b[n++] = 'v';
    n += (size_t) snprintf(b + n, sizeof(b) - n, "\r\n\r\n");
    run_chunked("trailers at the bound", b, n, (ssize_t) n, "", 1);
    memmove(b + 7, b + 6, n - 6);
    run_chunked("trailers over the bound", b, n + 1, TG_ERROR, NULL, 0);

    /* after done, nothing more is consumed */
    {
        tg_http_chunked_t c = { 0 };
        const char *d;
        size_t dl;
        CHECK_INT(tg_http_chunked_decode(&c, "0\r\n\r\nGET", 8, &d, &dl), 5);
        CHECK(c.done);
        CHECK_INT(tg_http_chunked_decode(&c, "GET", 3, &d, &dl), 0);
        CHECK_INT(dl, 0);
    }
}

static void test_chunk_header(void) {
    char out[20];
    CHECK_INT(tg_http_chunk_header(out, 0), 3);
    CHECK_STR(out, "0\r\n");
    CHECK_INT(tg_http_chunk_header(out, 26), 4);
    CHECK_STR(out, "1a\r\n");
    CHECK_INT(tg_http_chunk_header(out, 4096), 6);
    CHECK_STR(out, "1000\r\n");
    CHECK_INT(tg_http_chunk_header(out, SIZE_MAX), 18);
    CHECK_STR(out, "ffffffffffffffff\r\n");
}

/* ---- paths and helpers --------------------------------------------------------- */

static const struct { const char *in, *out; } path_cases[] = {
    { "/", "/" },
    { "/a/b", "/a/b" },
    { "/a/b/", "/a/b/" },
    { "/a/./b/../c", "/a/c" },
    { "/a/.", "/a/" },
    { "/a/..", "/" },
    { "/a/b/..", "/a/" },
    { "/.", "/" },
    { "/a//b", "/a//b" },
    { "/a//..", "/a/" },
    { "/.a/..b/...", "/.a/..b/..." },
    { "/%7euser", "/~user" },
    { "/%7Euser", "/~user" },
    { "/%41%62%2d%5f%2E%30", "/Ab-_.0" },
    { "/a%2Fb", "/a%2Fb" },
    { "/a%2fb", "/a%2fb" },
    { "/a%20b", "/a%20b" },
    { "/%25", "/%25" },
    { "/a/%2e%2e/b", "/b" },
    { "/a/%2E/b", "/a/b" },
    { "/a/.%2e/b", "/b" },
    { "/../x", NULL },
    { "/..", NULL },
    { "/a/../..", NULL },
    { "/a/b/../../../c", NULL },
    { "/%2e%2e/x", NULL },
    { "/%zz", NULL },
    { "/%4", NULL },
    { "/%", NULL },
    { "/a%g1", NULL },
    { "/%00", NULL },
    { "/a%00b", NULL },
    { "a/b", NULL },
    { "", NULL },
    { "*", NULL },
};

static void test_paths(void) {
    size_t i;
    for (i = 0; i < tg_nelems(path_cases); i++) {
        const char *in = path_cases[i].in, *want = path_cases[i].out;
        size_t len = strlen(in);
        char *b = malloc(len ? len : 1), *out = malloc(len ? len : 1), got[256];
        ssize_t n;
        memcpy(b, in, len);
        n = tg_http_normalize_path(b, len, out);
        if (want == NULL) {
            CHECK_MSG(n == -1, "normalize(\"%s\") = %zd, want -1", in, n);
        } else {
            snprintf(got, sizeof(got), "%.*s", n < 0 ? 0 : (int) n, out);
            CHECK_MSG(n == (ssize_t) strlen(want) && strcmp(got, want) == 0,
                      "normalize(\"%s\") = \"%s\" (%zd), want \"%s\"", in, got, n, want);
        }
        free(b);
        free(out);
    }
}

static void test_helpers(void) {
    static const tg_http_header_t hs[] = {
        { { "Host", 4 }, { "a", 1 } },
        { { "X-Id", 4 }, { "1", 1 } },
        { { "x-id", 4 }, { "2", 1 } },
    };
    const tg_http_header_t *h;
    static const int listed[] = {
        100, 101, 200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304,
        305, 306, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409,
        410, 411, 412, 413, 414, 415, 416, 417, 418, 421, 422, 423, 424, 425,
        426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505,
    };
    size_t i;

    CHECK(tg_http_token_list_has(tg_string("keep-alive, Upgrade"), "upgrade", 7));
    CHECK(tg_http_token_list_has(tg_string(" close "), "close", 5));
    CHECK(tg_http_token_list_has(tg_string(",,\tclose,,"), "close", 5));
    CHECK(tg_http_token_list_has(tg_string("a, b ,c"), "b", 1));
    CHECK(!tg_http_token_list_has(tg_string("closed"), "close", 5));
    CHECK(!tg_http_token_list_has(tg_string("clo"), "close", 5));
    CHECK(!tg_http_token_list_has(tg_string(""), "close", 5));
    CHECK(!tg_http_token_list_has(tg_null_string, "close", 5));
    CHECK(!tg_http_token_list_has(tg_string("keep-alive"), "", 0));

    CHECK(tg_http_is_hop_by_hop(tg_string("Connection")));
    CHECK(tg_http_is_hop_by_hop(tg_string("keep-alive")));
    CHECK(tg_http_is_hop_by_hop(tg_string("Proxy-Connection")));
    CHECK(tg_http_is_hop_by_hop(tg_string("proxy-authorization")));
    CHECK(tg_http_is_hop_by_hop(tg_string("Proxy-Authenticate")));
    CHECK(tg_http_is_hop_by_hop(tg_string("TE")));
    CHECK(tg_http_is_hop_by_hop(tg_string("Trailer")));
    CHECK(tg_http_is_hop_by_hop(tg_string("Transfer-Encoding")));
    CHECK(tg_http_is_hop_by_hop(tg_string("UPGRADE")));
    CHECK(!tg_http_is_hop_by_hop(tg_string("Host")));
    CHECK(!tg_http_is_hop_by_hop(tg_string("Content-Length")));
    CHECK(!tg_http_is_hop_by_hop(tg_string("Trailers")));
    CHECK(!tg_http_is_hop_by_hop(tg_string("Proxy")));
    CHECK(!tg_http_is_hop_by_hop(tg_string("Tex")));

    h = tg_http_header_find(hs, 3, "x-ID", 4);
    CHECK(h == &hs[1]);
    CHECK(tg_http_header_find(hs, 3, "host", 4) == &hs[0]);
    CHECK(tg_http_header_find(hs, 3, "Hos", 3) == NULL);
    CHECK(tg_http_header_find(hs, 0, "Host", 4) == NULL);

    CHECK_STR(tg_http_status_text(200), "OK");
    CHECK_STR(tg_http_status_text(404), "Not Found");
    CHECK_STR(tg_http_status_text(431), "Request Header Fields Too Large");
    CHECK_STR(tg_http_status_text(505), "HTTP Version Not Supported");
    CHECK_STR(tg_http_status_text(999), "Unknown");
    CHECK_STR(tg_http_status_text(0), "Unknown");
    for (i = 0; i < tg_nelems(listed); i++)
        CHECK_MSG(strcmp(tg_http_status_text(listed[i]), "Unknown") != 0, "status %d", listed[i]);
}

int main(void) {
    test_requests();
    test_responses();
    test_chunked();
    test_chunk_header();
    test_paths();
    test_helpers();
    TG_TEST_DONE();
}
