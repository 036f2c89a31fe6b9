/*
 * tg_http.c: the strict HTTP/1.1 layer (see tg_http.h).
 *
 * A head goes through three passes. (1) scan_head() finds the end of the
 * head, byte by byte and resumably, refusing bare CR / bare LF and enforcing
 * max_head and (early, while the request line is still arriving) max_uri.
 * (2) The complete head is checked line by line on its raw bytes: request or
 * status line, header-name tokens, value characters, obs-fold, header count.
 * (3) Only then does http-parser see it, in one http_parser_execute() call,
 * to tokenize; its callbacks record slices and on_headers_complete returns 1
 * so it never touches a body. The framing facts (Host, Content-Length,
 * Transfer-Encoding, Connection, Upgrade, Expect) are derived here from the
 * slices, not from http-parser's flags, because Debian's build is lenient.
 *
 * Bodies: the chunked decoder is an own byte-wise state machine, so nothing
 * about chunk framing is left to http-parser either.
 *
 * Nothing here allocates; every slice points into the caller's buffer (or at
 * a string literal, for a defaulted path).
 */
#include "tg_http.h"

#include <http_parser.h>

/* Character classes, one byte per octet. */
#define C_TCHAR  0x01   /* token (RFC 9110 5.6.2) */
#define C_TARGET 0x02   /* request-target: visible ASCII except '#' */
#define C_UNRES  0x04   /* unreserved (RFC 3986 2.3) */
#define C_HEX    0x08
#define C_FVCHAR 0x10   /* field-vchar: VCHAR / obs-text */

static const uint8_t ctype[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 00 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 10 */
    0x00, 0x13, 0x12, 0x11, 0x13, 0x13, 0x13, 0x13, 0x12, 0x12, 0x13, 0x13, 0x12, 0x17, 0x17, 0x12,  /* 20 */
    0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,  /* 30 */
    0x12, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17,  /* 40 */
    0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x12, 0x12, 0x12, 0x13, 0x17,  /* 50 */
    0x13, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17,  /* 60 */
    0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17, 0x12, 0x13, 0x12, 0x17, 0x00,  /* 70 */
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,  /* 80 */
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,  /* 90 */
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,  /* a0 */
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,  /* b0 */
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,  /* c0 */
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,  /* d0 */
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,  /* e0 */
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,  /* f0 */
};

#define is_class(c, cl)  (ctype[(unsigned char)(c)] & (cl))
#define is_tchar(c)      is_class(c, C_TCHAR)
#define is_ows(c)        ((c) == ' ' || (c) == '\t')
#define is_digit(c)      ((c) >= '0' && (c) <= '9')
/* field-content octet: HTAB, SP, VCHAR, obs-text; no other CTL, no DEL */
#define is_field_char(c) (is_ows(c) || is_class(c, C_FVCHAR))

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static tg_str_t trim_ows(tg_str_t s) {
    while (s.len && is_ows(s.p[0])) { s.p++; s.len--; }
    while (s.len && is_ows(s.p[s.len - 1])) s.len--;
    return s;
}

/* ---- pass 1: the end of the head ---------------------------------------- */

/*
 * Scans buf from st->scanned up to min(len, max_head). Every check depends
 * only on bytes at or before the one looked at, so feeding a head whole or
 * one byte at a time meets the same error at the same byte. `start` (the
 * offset after skipped leading empty lines) is recomputed per call from the
 * buffer's first bytes; that costs at most TG_HTTP_MAX_LEADING_CRLF steps.
 * max_uri == 0 means no request-line tracking (responses).
 */
static int scan_head(tg_http_scan_t *st, const char *buf, size_t len,
                     size_t max_head, size_t max_uri, int request,
                     size_t *startp, size_t *head_len, int *status) {
    size_t start = 0, i, limit;
    int n;

    if (request) {
        for (n = 0; n < TG_HTTP_MAX_LEADING_CRLF && start + 1 < len
                    && buf[start] == '\r' && buf[start + 1] == '\n'; n++)
            start += 2;
    }
    *startp = start;

    limit = tg_min(len, max_head);
    i = st->scanned;
    if (!request || st->line_done) {
        /* Header lines: jump line to line with memchr (SIMD) instead of
         * looking at every byte; same checks as the byte loop below. A CR
         * that ended the previous call's bytes must be followed by LF. */
        if (i > 0 && i < limit && buf[i - 1] == '\r' && buf[i] != '\n') {
            *status = 400;
            return TG_ERROR;
        }
        while (i < limit) {
            const char *lf = memchr(buf + i, '\n', limit - i);
            size_t end = lf ? (size_t)(lf - buf) : limit;
            const char *cr = memchr(buf + i, '\r', end - i);
            if (lf == NULL) {
                /* Incomplete line: only a CR as the very last byte may wait
                 * for its LF. */
                if (cr && (size_t)(cr - buf) + 1 < limit) {
                    *status = 400;     /* bare CR */
                    return TG_ERROR;
                }
                break;
            }
            if (end == 0 || buf[end - 1] != '\r' || (cr && (size_t)(cr - buf) != end - 1)) {
                *status = 400;         /* bare LF, or a CR inside the line */
                return TG_ERROR;
            }
            if (end >= start + 3 && buf[end - 2] == '\n' && buf[end - 3] == '\r') {
                st->scanned = end + 1;
                *head_len = end + 1;
                return TG_OK;
            }
            if (end > start) st->line_done = 1;
            i = end + 1;
        }
        st->scanned = i;   /* the start of the incomplete line */
        if (len >= max_head) {
            *status = 431;
            return TG_ERROR;
        }
        return TG_AGAIN;
    }
    for (; i < limit; i++) {
        char c = buf[i];

        if (i > 0 && buf[i - 1] == '\r' && c != '\n') {
            *status = 400;             /* bare CR */
            return TG_ERROR;
        }
        if (c == '\n') {
            if (i == 0 || buf[i - 1] != '\r') {
                *status = 400;         /* bare LF */
                return TG_ERROR;
            }
            if (i >= start + 3 && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
                st->scanned = i + 1;
                *head_len = i + 1;
                return TG_OK;
            }
            if (i > start)
                st->line_done = 1;
            continue;
        }
        if (!request || st->line_done || i < start)
            continue;
        if (c == ' ') {
            if (st->target_off == 0)
                st->target_off = i + 1;
            else
                st->target_done = 1;
        } else if (c != '\r' && st->target_off && !st->target_done
                   && i + 1 - st->target_off > max_uri) {
            *status = 414;
            return TG_ERROR;
        }
    }
    st->scanned = limit;
    if (len >= max_head) {
        *status = 431;
        return TG_ERROR;
    }
    return TG_AGAIN;
}

/* ---- pass 2: raw line checks --------------------------------------------- */

/* "HTTP/1.0" or "HTTP/1.1": 0 and *minor set; "HTTP/d.d" otherwise: 505;
 * anything else: 400. */
static int check_version(const char *v, size_t n, int *minor) {
    if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || !is_digit(v[5]) || v[6] != '.'
        || !is_digit(v[7]))
        return 400;
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return 505;
    *minor = v[7] - '0';
    return 0;
}

/* host[:port] with host = IP-literal or 1*unreserved, port = 1*5DIGIT
 * <= 65535. Stricter than RFC 3986 reg-name: no pct-encoding, no
 * sub-delims, no userinfo; nothing a real hostname needs. */
static int valid_authority(const char *p, size_t n) {
    size_t i = 0, digits;
    unsigned long port = 0;

    if (n == 0) return 0;
    if (p[0] == '[') {
        for (i = 1; i < n && p[i] != ']'; i++)
            if (!is_class(p[i], C_HEX) && p[i] != ':' && p[i] != '.') return 0;
        if (i == n || i == 1) return 0;
        i++;
    } else {
        while (i < n && is_class(p[i], C_UNRES)) i++;
        if (i == 0) return 0;
    }
    if (i == n) return 1;
    if (p[i] != ':') return 0;
    for (i++, digits = 0; i < n; i++, digits++) {
        if (!is_digit(p[i]) || digits == 5) return 0;
        port = port * 10 + (unsigned long)(p[i] - '0');
    }
    return digits > 0 && port <= 65535;
}

static const struct { const char *name; int method; } methods[] = {
#define XX(num, name, string) { #string, HTTP_##name },
    HTTP_METHOD_MAP(XX)
#undef XX
};

/* Checks the request line p[0..n) (without CRLF) and fills method_name,
 * method, target, path, query, http_minor and host (absolute-form). */
static int check_request_line(const char *p, size_t n, size_t max_uri,
                              tg_http_request_t *req) {
    const char *sp1, *sp2, *t, *end = p + n, *q;
    size_t tlen, i;
    int rc, upper = 1;

    sp1 = memchr(p, ' ', n);
    if (sp1 == NULL || sp1 == p) return 400;
    for (q = p; q < sp1; q++) {
        if (!is_tchar(*q)) return 400;
        if (!((*q >= 'A' && *q <= 'Z') || *q == '-')) upper = 0;
    }
    t = sp1 + 1;
    sp2 = memchr(t, ' ', (size_t)(end - t));
    if (sp2 == NULL || sp2 == t) return 400;
    if (memchr(sp2 + 1, ' ', (size_t)(end - sp2 - 1)) != NULL) return 400;
    if ((rc = check_version(sp2 + 1, (size_t)(end - sp2 - 1), &req->http_minor)))
        return rc;

    tlen = (size_t)(sp2 - t);
    if (tlen > max_uri) return 414;
    for (i = 0; i < tlen; i++)
        if (!is_class(t[i], C_TARGET)) return 400;

    req->method_name = (tg_str_t){ p, (size_t)(sp1 - p) };
    req->method = -1;
    for (i = 0; i < tg_nelems(methods); i++) {
        if (tg_str_eq(req->method_name, methods[i].name, strlen(methods[i].name))) {
            req->method = methods[i].method;
            break;
        }
    }
    if (req->method < 0) return upper ? 501 : 400;
    if (req->method == HTTP_CONNECT) return 405;

    req->target = (tg_str_t){ t, tlen };
    req->query = tg_null_string;

    if (t[0] == '/') {
        req->path = req->target;
    } else if (tlen == 1 && t[0] == '*') {
        if (req->method != HTTP_OPTIONS) return 400;
        req->path = req->target;
        return 0;
    } else {
        /* absolute-form */
        const char *a, *ae;
        if (tlen > 7 && strncasecmp(t, "http://", 7) == 0) a = t + 7;
        else if (tlen > 8 && strncasecmp(t, "https://", 8) == 0) a = t + 8;
        else return 400;
        for (ae = a; ae < sp2 && *ae != '/' && *ae != '?'; ae++) {}
        if (!valid_authority(a, (size_t)(ae - a))) return 400;
        req->host = (tg_str_t){ a, (size_t)(ae - a) };
        if (ae == sp2 || *ae == '?')
            req->path = tg_string("/");
        else
            req->path = (tg_str_t){ ae, (size_t)(sp2 - ae) };
        if (ae < sp2 && *ae == '?') {
            req->query = (tg_str_t){ ae + 1, (size_t)(sp2 - ae - 1) };
            return 0;
        }
    }
    q = memchr(req->path.p, '?', req->path.len);
    if (q != NULL) {
        req->query = (tg_str_t){ q + 1, (size_t)(req->path.p + req->path.len - q - 1) };
        req->path.len = (size_t)(q - req->path.p);
    }
    return 0;
}

/* Checks the status line p[0..n): HTTP/1.x SP 3DIGIT [SP reason]. The SP
 * before an empty reason is optional because many servers omit it. */
static int check_status_line(const char *p, size_t n, tg_http_response_t *resp) {
    size_t i;
    if (n < 12 || check_version(p, 8, &resp->http_minor) != 0 || p[8] != ' '
        || !is_digit(p[9]) || !is_digit(p[10]) || !is_digit(p[11]) || p[9] == '0')
        return -1;
    resp->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (n == 12) {
        resp->reason = (tg_str_t){ p + 12, 0 };
        return 0;
    }
    if (p[12] != ' ') return -1;
    for (i = 13; i < n; i++)
        if (!is_field_char(p[i])) return -1;
    resp->reason = (tg_str_t){ p + 13, n - 13 };
    return 0;
}

/* Checks the header lines between `p` (first byte after the start line's
 * CRLF) and `end` (the final empty line's CR). Returns 0, 400 or 431 and
 * the number of lines in *count. */
/* Checks every header line; with `out`, also records each as name and
 * OWS-trimmed value slices (the response path tokenizes here: see
 * tg_http_parse_response). */
static int check_header_lines(const char *p, const char *end, int max_headers,
                              int *count, tg_http_header_t *out) {
    int n = 0;
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));   /* CRLF, pass 1 */
        const char *q = p, *colon;
        if (n == max_headers) return 431;
        if (is_ows(*p)) return 400;                            /* obs-fold */
        while (q < eol && is_tchar(*q)) q++;
        if (q == p || q == eol || *q != ':') return 400;
        colon = q;
        for (q++; q < eol; q++)
            if (!is_field_char(*q)) return 400;
        if (out) {
            out[n].name = (tg_str_t){ p, (size_t)(colon - p) };
            out[n].value = trim_ows((tg_str_t){ colon + 1, (size_t)(eol - colon - 1) });
        }
        n++;
        p = eol + 2;
    }
    *count = n;
    return 0;
}

/* ---- pass 3: tokenizing with http-parser --------------------------------- */

typedef struct {
    tg_http_header_t *headers;
    int              *nheaders;
    int               max;
    tg_str_t          url;
    int               last;      /* 0, CB_FIELD, CB_VALUE */
} tok_ctx_t;

#define CB_FIELD 1
#define CB_VALUE 2

/* Extends s by a callback's data. The head is fed in one piece, so a split
 * callback continues exactly where the previous one ended. */
static int extend(tg_str_t *s, const char *at, size_t len) {
    if (s->p == NULL) { *s = (tg_str_t){ at, len }; return 0; }
    if (at != s->p + s->len) return 1;
    s->len += len;
    return 0;
}

static int on_url_cb(http_parser *hp, const char *at, size_t len) {
    tok_ctx_t *t = hp->data;
    return extend(&t->url, at, len);
}

static int on_header_field_cb(http_parser *hp, const char *at, size_t len) {
    tok_ctx_t *t = hp->data;
    if (t->last == CB_FIELD)
        return extend(&t->headers[*t->nheaders - 1].name, at, len);
    if (*t->nheaders == t->max) return 1;
    t->headers[*t->nheaders] = (tg_http_header_t){ { at, len }, tg_null_string };
    (*t->nheaders)++;
    t->last = CB_FIELD;
    return 0;
}

static int on_header_value_cb(http_parser *hp, const char *at, size_t len) {
    tok_ctx_t *t = hp->data;
    if (t->last == 0) return 1;
    t->last = CB_VALUE;
    return extend(&t->headers[*t->nheaders - 1].value, at, len);
}

static int on_headers_complete_cb(http_parser *hp) {
    return 1;   /* no body: bodies are framed by this layer, not http-parser */
}

static const http_parser_settings tok_settings = {
    .on_url = on_url_cb,
    .on_header_field = on_header_field_cb,
    .on_header_value = on_header_value_cb,
    .on_headers_complete = on_headers_complete_cb,
};

/* Runs http-parser over the complete, already checked head. Returns 0 or an
 * HTTP status for the request case. */
static int tokenize(enum http_parser_type type, const char *p, size_t n,
                    tg_http_header_t *headers, int *nheaders, int expect,
                    http_parser *hp, tg_str_t *url) {
    tok_ctx_t t = { headers, nheaders, TG_HTTP_MAX_HEADERS, tg_null_string, 0 };
    size_t done;
    int i;

    http_parser_init(hp, type);
    /* Never lenient: both flags must stay 0 (http_parser_init zeroes them). */
    hp->allow_chunked_length = 0;
    hp->lenient_http_headers = 0;
    hp->data = &t;
    *nheaders = 0;
    done = http_parser_execute(hp, &tok_settings, p, n);
    switch (HTTP_PARSER_ERRNO(hp)) {
    case HPE_OK: break;
    case HPE_INVALID_METHOD: return 501;
    case HPE_INVALID_VERSION: return 505;
    case HPE_HEADER_OVERFLOW: return 431;
    default: return 400;
    }
    if (done != n || *nheaders != expect) return 400;
    for (i = 0; i < *nheaders; i++) {
        if (headers[i].value.p == NULL)
            headers[i].value = (tg_str_t){ headers[i].name.p + headers[i].name.len, 0 };
        headers[i].value = trim_ows(headers[i].value);
    }
    *url = t.url;
    return 0;
}

/* ---- framing and semantics ------------------------------------------------ */

typedef struct {
    int      nhost, ncl, nte, nchunked, chunked_last, te_other, te_bad;
    int      conn_close, conn_keepalive, conn_upgrade, upgrade_hdr, expect_bad,
             expect_continue;
    int64_t  content_length;
    tg_str_t host;
} framing_t;

/* Content-Length = 1*DIGIT that fits int64; -1 otherwise. */
static int64_t parse_cl(tg_str_t v) {
    int64_t n = 0;
    size_t i;
    if (v.len == 0) return -1;
    for (i = 0; i < v.len; i++) {
        if (!is_digit(v.p[i])) return -1;
        if (n > (INT64_MAX - (v.p[i] - '0')) / 10) return -1;
        n = n * 10 + (v.p[i] - '0');
    }
    return n;
}

/* Walks one Transfer-Encoding value; the values of several TE lines form
 * one list, so the state lives in f. */
static void scan_te(tg_str_t v, framing_t *f) {
    const char *p = v.p, *end = v.p + v.len, *comma, *semi;
    tg_str_t el, name;
    size_t i;

    for (;; p = comma + 1) {
        comma = memchr(p, ',', (size_t)(end - p));
        el = trim_ows((tg_str_t){ p, (size_t)((comma ? comma : end) - p) });
        if (el.len > 0) {                           /* skip empty elements */
            semi = memchr(el.p, ';', el.len);
            name = trim_ows((tg_str_t){ el.p, semi ? (size_t)(semi - el.p) : el.len });
            for (i = 0; i < name.len && is_tchar(name.p[i]); i++) {}
            if (name.len == 0 || i < name.len) {
                f->te_bad = 1;
            } else if (tg_str_caseeq_lit(name, "chunked")) {
                if (semi) f->te_bad = 1;            /* chunked has no params */
                f->nchunked++;
                f->chunked_last = 1;
            } else {
                f->te_other = 1;
                f->chunked_last = 0;
            }
        }
        if (comma == NULL) break;
    }
}

static void derive(const tg_http_header_t *h, int n, framing_t *f) {
    int i;
    memset(f, 0, sizeof(*f));
    f->content_length = -1;
    for (i = 0; i < n; i++) {
        tg_str_t name = h[i].name, v = h[i].value;
        switch (name.len) {
        case 4:
            if (tg_str_caseeq_lit(name, "host")) { f->nhost++; f->host = v; }
            break;
        case 6:
            if (tg_str_caseeq_lit(name, "expect")) {
                if (tg_str_caseeq_lit(v, "100-continue")) f->expect_continue = 1;
                else f->expect_bad = 1;
            }
            break;
        case 7:
            if (tg_str_caseeq_lit(name, "upgrade") && v.len) f->upgrade_hdr = 1;
            break;
        case 10:
            if (tg_str_caseeq_lit(name, "connection")) {
                if (tg_http_token_list_has(v, "close", 5)) f->conn_close = 1;
                if (tg_http_token_list_has(v, "keep-alive", 10)) f->conn_keepalive = 1;
                if (tg_http_token_list_has(v, "upgrade", 7)) f->conn_upgrade = 1;
            }
            break;
        case 14:
            if (tg_str_caseeq_lit(name, "content-length")) {
                f->ncl++;
                f->content_length = parse_cl(v);
            }
            break;
        case 17:
            if (tg_str_caseeq_lit(name, "transfer-encoding")) {
                f->nte++;
                scan_te(v, f);
            }
            break;
        }
    }
}

/* The message framing shared by requests and responses; 0 or a status. */
static int check_framing(const framing_t *f, int minor) {
    if (f->ncl > 1 || (f->ncl == 1 && f->content_length < 0)) return 400;
    if (f->nte == 0) return 0;
    if (minor == 0 || f->ncl) return 400;
    if (f->te_bad || f->nchunked > 1 || (f->nchunked == 1 && !f->chunked_last))
        return 400;
    if (f->te_other) return 501;
    if (f->nchunked == 0) return 400;               /* only empty elements */
    return 0;
}

int tg_http_parse_request(tg_http_scan_t *st, const char *buf, size_t len,
                          const tg_http_limits_t *lim, tg_http_request_t *req,
                          int *status) {
    size_t start, head_len, max_uri = lim->max_uri ? lim->max_uri : SIZE_MAX;
    const char *line_end;
    int rc, nlines, max_headers = lim->max_headers;
    http_parser hp;
    tg_str_t url;
    framing_t f;

    if (max_headers <= 0 || max_headers > TG_HTTP_MAX_HEADERS)
        max_headers = TG_HTTP_MAX_HEADERS;

    rc = scan_head(st, buf, len, lim->max_head, max_uri, 1, &start, &head_len,
                   status);
    if (rc != TG_OK) return rc;

    req->host = tg_null_string;
    req->nheaders = 0;
    req->content_length = -1;
    req->chunked = req->keepalive = req->upgrade = req->expect_continue = 0;
    req->head_len = head_len;

    /* The line ends at its CR: pass 1 proved every CR starts a CRLF. */
    line_end = memchr(buf + start, '\r', head_len - start);
    rc = check_request_line(buf + start, (size_t)(line_end - (buf + start)),
                            max_uri, req);
    if (rc == 0)
        rc = check_header_lines(line_end + 2, buf + head_len - 2, max_headers,
                                &nlines, NULL);
    if (rc == 0)
        rc = tokenize(HTTP_REQUEST, buf + start, head_len - start, req->headers,
                      &req->nheaders, nlines, &hp, &url);
    if (rc == 0 && (hp.method != (unsigned) req->method || hp.http_major != 1
                    || hp.http_minor != (unsigned) req->http_minor
                    || !tg_str_eq(url, req->target.p, req->target.len)))
        rc = 400;                       /* http-parser read it differently */
    if (rc != 0) {
        *status = rc;
        return TG_ERROR;
    }

    derive(req->headers, req->nheaders, &f);
    if ((rc = check_framing(&f, req->http_minor)) != 0) {
        *status = rc;
        return TG_ERROR;
    }
    if (f.nhost > 1 || (f.nhost == 0 && req->http_minor == 1)
        || (f.nhost == 1 && !valid_authority(f.host.p, f.host.len))) {
        *status = 400;
        return TG_ERROR;
    }
    if (f.expect_bad) {
        *status = 417;
        return TG_ERROR;
    }
    if (req->host.p == NULL)            /* absolute-form authority wins */
        req->host = f.host;
    req->content_length = f.nte ? -1 : f.content_length;
    req->chunked = f.nchunked == 1;
    req->keepalive = req->http_minor == 1 ? !f.conn_close
                                          : f.conn_keepalive && !f.conn_close;
    req->upgrade = req->http_minor == 1 && f.conn_upgrade && f.upgrade_hdr;
    req->expect_continue = req->http_minor == 1 && f.expect_continue;
    return TG_OK;
}

int tg_http_parse_response(tg_http_scan_t *st, const char *buf, size_t len,
                           size_t max_head, tg_http_response_t *resp) {
    size_t start, head_len;
    const char *line_end;
    int rc, status, nlines;
    framing_t f;

    rc = scan_head(st, buf, len, max_head, 0, 0, &start, &head_len, &status);
    if (rc != TG_OK) return rc == TG_AGAIN ? TG_AGAIN : TG_ERROR;

    resp->nheaders = 0;
    resp->content_length = -1;
    resp->chunked = resp->keepalive = resp->upgrade = 0;
    resp->head_len = head_len;

    /* Responses come from our own upstreams and are held to the same byte
     * rules, checked above; tokenizing them again with http-parser cost a
     * quarter of a proxied request's CPU (callgrind), so the strict line
     * checker records the header slices itself. Requests still go through
     * http-parser as a second, independent reading. */
    line_end = memchr(buf, '\r', head_len);
    if (check_status_line(buf, (size_t)(line_end - buf), resp) != 0
        || check_header_lines(line_end + 2, buf + head_len - 2,
                              TG_HTTP_MAX_HEADERS, &nlines, resp->headers) != 0)
        return TG_ERROR;
    resp->nheaders = nlines;

    derive(resp->headers, resp->nheaders, &f);
    /* A response coding other than chunked would have to be forwarded with
     * close-delimited framing and its TE header; refuse it instead. */
    if (check_framing(&f, resp->http_minor) != 0) return TG_ERROR;

    resp->content_length = f.nte ? -1 : f.content_length;
    resp->chunked = f.nchunked == 1;
    resp->upgrade = resp->status == 101;
    resp->keepalive = resp->http_minor == 1 ? !f.conn_close
                                            : f.conn_keepalive && !f.conn_close;
    if (resp->status == 101
        || (!resp->chunked && resp->content_length < 0
            && !tg_http_response_bodyless(-1, resp->status)))
        resp->keepalive = 0;
    return TG_OK;
}

int tg_http_response_bodyless(int method, int status) {
    return method == HTTP_HEAD || (status >= 100 && status < 200)
           || status == 204 || status == 304;
}

/* ---- chunked bodies ---------------------------------------------------------- */

enum {
    CH_SIZE = 0,      /* chunk-size hex digits */
    CH_EXT_WS,        /* BWS before ';' or CR */
    CH_EXT_NAME_WS,   /* BWS after ';' */
    CH_EXT_NAME,
    CH_EXT_NAME_END,  /* BWS after a name: '=', ';' or CR */
    CH_EXT_VAL_WS,    /* BWS after '=' */
    CH_EXT_TOKEN,
    CH_EXT_QS,
    CH_EXT_QS_ESC,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER,       /* start of a trailer line, or the final CR */
    CH_TR_NAME,
    CH_TR_VALUE,
    CH_TR_LF,
    CH_FINAL_LF,
};

/* Trailer names that must not appear: a downstream that merges trailers
 * into the head would re-frame the message or reroute it. */
static const tg_str_t forbidden_trailers[] = {
    { "content-length", 14 }, { "transfer-encoding", 17 }, { "host", 4 },
};

#define ALL_FORBIDDEN ((1u << tg_nelems(forbidden_trailers)) - 1)

ssize_t tg_http_chunked_decode(tg_http_chunked_t *c, const char *in, size_t len,
                               const char **data, size_t *datalen) {
    size_t i = 0, k;

    *data = in;
    *datalen = 0;
    if (c->done) return 0;

    while (i < len) {
        unsigned char ch = (unsigned char) in[i];

        if (c->state == CH_DATA) {
            size_t n = (size_t) tg_min((uint64_t)(len - i), c->remaining);
            *data = in + i;
            *datalen = n;
            c->remaining -= n;
            if (c->remaining == 0) c->state = CH_DATA_CR;
            return (ssize_t)(i + n);
        }

        if (c->state <= CH_SIZE_LF) {
            if (++c->line_len > TG_HTTP_CHUNK_LINE_MAX) return TG_ERROR;
        } else if (c->state >= CH_TRAILER) {
            if (++c->trailer_len > TG_HTTP_TRAILER_MAX) return TG_ERROR;
        }
        i++;

        switch (c->state) {
        case CH_SIZE: {
            int h = hexval(ch);
            if (h >= 0) {
                if (++c->digits > 16) return TG_ERROR;
                c->remaining = (c->remaining << 4) | (uint64_t) h;
                break;
            }
            if (c->digits == 0) return TG_ERROR;
            if (is_ows(ch)) c->state = CH_EXT_WS;
            else if (ch == ';') c->state = CH_EXT_NAME_WS;
            else if (ch == '\r') c->state = CH_SIZE_LF;
            else return TG_ERROR;
            break;
        }
        case CH_EXT_WS:
            if (is_ows(ch)) break;
            if (ch == ';') c->state = CH_EXT_NAME_WS;
            else if (ch == '\r') c->state = CH_SIZE_LF;
            else return TG_ERROR;
            break;
        case CH_EXT_NAME_WS:
            if (is_ows(ch)) break;
            if (!is_tchar(ch)) return TG_ERROR;
            c->state = CH_EXT_NAME;
            break;
        case CH_EXT_NAME:
            if (is_tchar(ch)) break;
            /* fall through */
        case CH_EXT_NAME_END:
            if (is_ows(ch)) c->state = CH_EXT_NAME_END;
            else if (ch == '=') c->state = CH_EXT_VAL_WS;
            else if (ch == ';') c->state = CH_EXT_NAME_WS;
            else if (ch == '\r') c->state = CH_SIZE_LF;
            else return TG_ERROR;
            break;
        case CH_EXT_VAL_WS:
            if (is_ows(ch)) break;
            if (ch == '"') c->state = CH_EXT_QS;
            else if (is_tchar(ch)) c->state = CH_EXT_TOKEN;
            else return TG_ERROR;
            break;
        case CH_EXT_TOKEN:
            if (is_tchar(ch)) break;
            if (is_ows(ch)) c->state = CH_EXT_WS;
            else if (ch == ';') c->state = CH_EXT_NAME_WS;
            else if (ch == '\r') c->state = CH_SIZE_LF;
            else return TG_ERROR;
            break;
        case CH_EXT_QS:
            if (ch == '"') c->state = CH_EXT_WS;
            else if (ch == '\\') c->state = CH_EXT_QS_ESC;
            else if (!is_field_char(ch)) return TG_ERROR;
            break;
        case CH_EXT_QS_ESC:
            if (!is_field_char(ch)) return TG_ERROR;
            c->state = CH_EXT_QS;
            break;
        case CH_SIZE_LF:
            if (ch != '\n') return TG_ERROR;
            c->line_len = 0;
            c->digits = 0;
            c->state = c->remaining ? CH_DATA : CH_TRAILER;
            break;
        case CH_DATA_CR:
            if (ch != '\r') return TG_ERROR;
            c->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (ch != '\n') return TG_ERROR;
            c->state = CH_SIZE;
            break;
        case CH_TRAILER:
            if (ch == '\r') { c->state = CH_FINAL_LF; break; }
            if (!is_tchar(ch)) return TG_ERROR;       /* also obs-fold */
            c->line_len = 0;
            c->name_match = ALL_FORBIDDEN;
            c->state = CH_TR_NAME;       /* and match this first byte: */
            /* fall through */
        case CH_TR_NAME:
            if (ch == ':') {
                for (k = 0; k < tg_nelems(forbidden_trailers); k++)
                    if ((c->name_match & (1u << k))
                        && forbidden_trailers[k].len == c->line_len)
                        return TG_ERROR;
                c->state = CH_TR_VALUE;
                break;
            }
            if (!is_tchar(ch)) return TG_ERROR;
            for (k = 0; k < tg_nelems(forbidden_trailers); k++)
                if ((c->name_match & (1u << k))
                    && (c->line_len >= forbidden_trailers[k].len
                        || forbidden_trailers[k].p[c->line_len]
                           != (ch | 0x20)))
                    c->name_match &= ~(1u << k);
            c->line_len++;
            break;
        case CH_TR_VALUE:
            if (ch == '\r') c->state = CH_TR_LF;
            else if (!is_field_char(ch)) return TG_ERROR;
            break;
        case CH_TR_LF:
            if (ch != '\n') return TG_ERROR;
            c->state = CH_TRAILER;
            break;
        case CH_FINAL_LF:
            if (ch != '\n') return TG_ERROR;
            c->done = 1;
            return (ssize_t) i;
        default:
            return TG_ERROR;
        }
    }
    return (ssize_t) i;
}

size_t tg_http_chunk_header(char *out, size_t n) {
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t k = 0, i;
    do {
        tmp[k++] = hex[n & 0xf];
        n >>= 4;
    } while (n);
    for (i = 0; i < k; i++) out[i] = tmp[k - 1 - i];
    out[k] = '\r';
    out[k + 1] = '\n';
    out[k + 2] = '\0';
    return k + 2;
}

/* ---- paths and header helpers ---------------------------------------------- */

ssize_t tg_http_normalize_path(const char *in, size_t len, char *out) {
    size_t i, n = 0, r, w;

    if (len == 0 || in[0] != '/') return -1;

    /* 1. decode %XX of unreserved characters; keep other escapes verbatim */
    for (i = 0; i < len; i++) {
        if (in[i] != '%') { out[n++] = in[i]; continue; }
        if (i + 2 >= len) return -1;
        int hi = hexval((unsigned char) in[i + 1]), lo = hexval((unsigned char) in[i + 2]);
        if (hi < 0 || lo < 0) return -1;
        unsigned char d = (unsigned char)(hi << 4 | lo);
        if (d == 0) return -1;
        if (is_class(d, C_UNRES)) {
            out[n++] = (char) d;
        } else {
            out[n++] = in[i];
            out[n++] = in[i + 1];
            out[n++] = in[i + 2];
        }
        i += 2;
    }

    /* 2. remove dot segments in place; the output is "/seg" repeated and
     * never longer than what has been read, so w <= r holds throughout. */
    for (r = 0, w = 0; r < n; ) {
        size_t s = r + 1, e = s;                  /* out[r] == '/' */
        while (e < n && out[e] != '/') e++;
        if (e - s == 1 && out[s] == '.') {
            if (e == n) out[w++] = '/';
        } else if (e - s == 2 && out[s] == '.' && out[s + 1] == '.') {
            if (w == 0) return -1;                /* above the root */
            while (out[--w] != '/') {}
            if (e == n) out[w++] = '/';
        } else {
            memmove(out + w, out + r, e - r);
            w += e - r;
        }
        r = e;
    }
    return (ssize_t) w;
}

int tg_http_is_token(const char *p, size_t len) {
    if (len == 0) return 0;
    for (size_t i = 0; i < len; i++)
        if (!is_tchar(p[i])) return 0;
    return 1;
}

int tg_http_token_list_has(tg_str_t value, const char *token, size_t toklen) {
    const char *p = value.p, *end = value.p + value.len, *comma;
    if (value.p == NULL) return 0;
    for (;; p = comma + 1) {
        comma = memchr(p, ',', (size_t)(end - p));
        if (tg_str_caseeq(trim_ows((tg_str_t){ p, (size_t)((comma ? comma : end) - p) }),
                          token, toklen))
            return 1;
        if (comma == NULL) return 0;
    }
}

int tg_http_has_connection_options(const tg_http_header_t *h, int n) {
    for (int i = 0; i < n; i++) {
        if (!tg_str_caseeq_lit(h[i].name, "connection") || h[i].value.p == NULL) continue;
        const char *p = h[i].value.p, *end = p + h[i].value.len, *comma;
        for (;; p = comma + 1) {
            comma = memchr(p, ',', (size_t)(end - p));
            tg_str_t t = trim_ows((tg_str_t){ p, (size_t)((comma ? comma : end) - p) });
            if (t.len && !tg_str_caseeq_lit(t, "close") && !tg_str_caseeq_lit(t, "keep-alive"))
                return 1;
            if (comma == NULL) break;
        }
    }
    return 0;
}

int tg_http_is_hop_by_hop(tg_str_t name) {
    if (name.len >= 6 && tg_str_caseeq((tg_str_t){ name.p, 6 }, "proxy-", 6)) return 1;
    return tg_str_caseeq_lit(name, "connection")
        || tg_str_caseeq_lit(name, "keep-alive")
        || tg_str_caseeq_lit(name, "te")
        || tg_str_caseeq_lit(name, "trailer")
        || tg_str_caseeq_lit(name, "transfer-encoding")
        || tg_str_caseeq_lit(name, "upgrade");
}

const tg_http_header_t *tg_http_header_find(const tg_http_header_t *headers,
                                            int n, const char *name, size_t len) {
    int i;
    for (i = 0; i < n; i++)
        if (tg_str_caseeq(headers[i].name, name, len)) return &headers[i];
    return NULL;
}

/* The IANA registry's phrases (RFC 9110 wording); 306 and 418 are
 * registered as "(Unused)". */
const char *tg_http_status_text(int status) {
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 306: return "Unused";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "Unused";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    default:  return "Unknown";
    }
}
