/*
 * tg_http.h: the strict HTTP/1.1 layer. http-parser (Debian's 2.9, built
 * non-strict) tokenizes request heads as a second, independent reading;
 * this layer finds the end of the head itself, rejects everything RFC
 * 9112/9110 forbids that http-parser lets through, and derives the framing
 * facts the proxy needs. Upstream response heads are held to the same byte
 * rules and tokenized by this layer alone (http-parser's second pass cost a
 * quarter of a proxied request's CPU).
 * Bodies are framed by tg_http_chunked_decode() (strict) or by
 * Content-Length, not by http-parser.
 *
 * Zero-copy: every tg_str_t points into the caller's buffer, valid while the
 * buffer's bytes stay where they are. Nothing here allocates.
 *
 * Rejected (with the status the caller sends, then closes):
 *   400 bare LF or bare CR anywhere in the head, obs-fold, a header name that
 *       is not a token (e.g. "Transfer-Encoding : chunked"), CTLs in values,
 *       bad request line (extra spaces, bad method token), '#', SP, CTL or
 *       bytes >= 0x80 in the target, missing Host in HTTP/1.1, more than one
 *       Host, Content-Length with Transfer-Encoding, more than one
 *       Content-Length, malformed Content-Length, "chunked" twice or not
 *       last, Transfer-Encoding in an HTTP/1.0 request, bad absolute-form;
 *   405 CONNECT (a gateway does not tunnel arbitrary TCP);
 *   414 request target longer than max_uri;
 *   417 Expect other than 100-continue;
 *   431 head longer than max_head or more than max_headers header lines;
 *   501 unknown method, or a transfer coding other than chunked;
 *   505 HTTP version other than 1.0 and 1.1.
 * Where a head breaks several rules, the first one met wins: the end-of-head
 * scan (line endings, 414, 431 for size) runs first, byte by byte; then the
 * request line (method syntax 400, version 400/505, target 414/400, unknown
 * method 501, CONNECT 405, target form 400), the header lines in order
 * (431 for count, 400), and last the framing and semantic checks.
 *
 * Choices beyond the RFC's MUSTs, all on the strict side:
 *   - the method must be uppercase letters or '-' (else 400) and one that
 *     http-parser knows (else 501);
 *   - absolute-form is "http://" or "https://" (any case) followed by an
 *     authority of unreserved characters or an IP literal and an optional
 *     port 0..65535; userinfo is refused. The Host header is still required
 *     in HTTP/1.1 and is validated the same way (an empty Host is a 400);
 *   - Transfer-Encoding: "chunked" twice or not last is 400, any other
 *     coding (also "gzip" alone) is 501; TE with CL or in HTTP/1.0 is 400;
 *   - Upgrade counts only in HTTP/1.1 with "Connection: upgrade"; Expect:
 *     100-continue is ignored (flag 0) in HTTP/1.0, any other Expect is 417;
 *   - a response must start with its status line (no leading CRLFs); a
 *     response Transfer-Encoding other than a lone "chunked", or any TE in an
 *     HTTP/1.0 response, is an error.
 */
#ifndef TG_HTTP_H
#define TG_HTTP_H

#include "tg_core.h"
#include <sys/types.h>

/* Hard bound of the header array; the config's max_headers is <= this. */
#define TG_HTTP_MAX_HEADERS 128

/* Empty lines skipped before a request line (RFC 9112 2.2 asks for at least
 * one; a few cover clients that send CRLF after a POST body). */
#define TG_HTTP_MAX_LEADING_CRLF 4

/* Chunk-size line incl. extensions and CRLF: a real client sends a few
 * bytes; the bound keeps a peer from streaming extensions forever. */
#define TG_HTTP_CHUNK_LINE_MAX 1024

/* Whole trailer section incl. the final CRLF; trailers are dropped anyway. */
#define TG_HTTP_TRAILER_MAX 8192

typedef struct {
    tg_str_t name;
    tg_str_t value;    /* OWS trimmed on both sides */
} tg_http_header_t;

typedef struct {
    size_t max_head;     /* whole head incl. request line, final CRLF and any
                            leading empty lines (i.e. head_len <= max_head) */
    size_t max_uri;      /* request target */
    int    max_headers;  /* header lines; values <= 0 or above
                            TG_HTTP_MAX_HEADERS mean TG_HTTP_MAX_HEADERS */
} tg_http_limits_t;

/* Resumable scan state: how far the end-of-head search got, so a head that
 * arrives one byte at a time is scanned in linear time. Zero it per head. */
typedef struct {
    size_t   scanned;
    size_t   target_off;     /* request: offset of the target once the first
                                SP of the request line was seen, else 0 */
    unsigned target_done:1;  /* request: the SP after the target was seen */
    unsigned line_done:1;    /* request: the request line is complete */
} tg_http_scan_t;

typedef struct {
    int       method;          /* enum http_method (http_parser.h) */
    tg_str_t  method_name;
    tg_str_t  target;          /* raw request-target as sent */
    tg_str_t  path;            /* path part: origin-form, or from absolute-form
                                  (a static "/" when that has no path); "*"
                                  for OPTIONS * */
    tg_str_t  query;           /* after '?' (without it); p == NULL: no '?' */
    int       http_minor;      /* 0 or 1 (major is always 1) */
    tg_http_header_t headers[TG_HTTP_MAX_HEADERS];
    int       nheaders;
    tg_str_t  host;            /* Host value, or the absolute-form authority
                                  (host[:port] as sent; NULL only in an
                                  HTTP/1.0 request without either) */
    int64_t   content_length;  /* -1 when absent */
    unsigned  chunked:1;           /* Transfer-Encoding: chunked */
    unsigned  keepalive:1;         /* version default + Connection tokens */
    unsigned  upgrade:1;           /* Connection: upgrade and an Upgrade header */
    unsigned  expect_continue:1;   /* Expect: 100-continue */
    size_t    head_len;        /* bytes of the head incl. the final CRLF CRLF
                                  (and any leading empty lines skipped) */
} tg_http_request_t;

typedef struct {
    int       status;          /* 100..999 */
    tg_str_t  reason;
    int       http_minor;
    tg_http_header_t headers[TG_HTTP_MAX_HEADERS];
    int       nheaders;
    int64_t   content_length;  /* -1 when absent */
    unsigned  chunked:1;
    unsigned  keepalive:1;     /* the upstream connection may be reused: version
                                  default + Connection, and 0 for 101 and for
                                  a body delimited by close (no CL, not chunked,
                                  status not 1xx/204/304; also for a HEAD
                                  response, which this cannot know) */
    unsigned  upgrade:1;       /* 101 Switching Protocols */
    size_t    head_len;
} tg_http_response_t;

/* Parses a request head from buf[0..len). Returns TG_OK when a complete,
 * valid head is in buf (req filled, req->head_len set); TG_AGAIN when more
 * bytes are needed and nothing invalid was seen yet; TG_ERROR with *status
 * set (see the list above). `st` carries the scan position between calls
 * on the same, growing buffer. */
int tg_http_parse_request(tg_http_scan_t *st, const char *buf, size_t len,
                          const tg_http_limits_t *lim, tg_http_request_t *req,
                          int *status);

/* Parses an upstream response head. Same returns; TG_ERROR means the
 * upstream sent garbage (the proxy answers 502). Responses are held to the
 * same framing rules (no CL+TE, one CL, strict line endings), and to
 * TG_HTTP_MAX_HEADERS header lines. A 1xx head is returned like any other:
 * the caller parses the next head from buf + head_len with a zeroed scan. */
int tg_http_parse_response(tg_http_scan_t *st, const char *buf, size_t len,
                           size_t max_head, tg_http_response_t *resp);

/* 1 when a response to `method` (enum http_method) with this status has no
 * body whatever its headers say (HEAD, 1xx, 204, 304). */
int tg_http_response_bodyless(int method, int status);

/* Strict chunked decoder state; zero it per body. */
typedef struct {
    int       state;
    uint64_t  remaining;       /* bytes left in the current chunk */
    size_t    line_len;        /* bytes of the current size / trailer line */
    size_t    trailer_len;     /* bytes of the trailer section */
    unsigned  name_match;      /* trailer name: forbidden names still matching */
    unsigned  digits;          /* hex digits of the current chunk-size */
    unsigned  done:1;          /* last chunk and trailers consumed */
} tg_http_chunked_t;

/* Decodes in[0..len). Returns the number of bytes consumed (0..len) and sets
 * data/datalen to a slice of body data inside in (datalen may be 0); call
 * again with the rest until all is consumed or c->done. At most one data
 * slice per call. Once done, bytes after the final CRLF (a pipelined
 * request) are not consumed and later calls return 0. Returns TG_ERROR on
 * anything malformed: non-hex or overlong size, bad chunk extension, a line
 * not ended by exactly CRLF, anything but CRLF after chunk data, an invalid
 * trailer field, or Content-Length / Transfer-Encoding / Host in trailers,
 * a size line over TG_HTTP_CHUNK_LINE_MAX or trailers over
 * TG_HTTP_TRAILER_MAX. Trailer fields are validated and dropped. */
ssize_t tg_http_chunked_decode(tg_http_chunked_t *c, const char *in, size_t len,
                               const char **data, size_t *datalen);

/* Writes the chunk-size line for a chunk of n bytes ("1a\r\n", lowercase
 * hex, NUL-terminated) into out (at least 20 bytes); returns its length
 * without the NUL. */
size_t tg_http_chunk_header(char *out, size_t n);

/* Normalizes a path for routing and forwarding: percent-decodes unreserved
 * characters (ALPHA DIGIT - . _ ~, RFC 3986 6.2.2.2), then removes dot
 * segments (RFC 3986 5.2.4). out must hold len bytes. Returns the new
 * length, or -1 for a path that climbs above the root, has a malformed
 * %-escape, an encoded NUL, or does not start with '/'. Escapes of other
 * characters (e.g. "%2F") are kept exactly as written, hex case included;
 * "//" is kept. Decoded dots take part in dot-segment removal
 * ("/a/%2e%2e/b" -> "/b"). in and out may not overlap. */
ssize_t tg_http_normalize_path(const char *in, size_t len, char *out);

/* 1 when a Connection header lists an option other than close and
 * keep-alive (a header name to drop when forwarding): most messages have
 * none, and the per-header check is then skipped. */
int tg_http_has_connection_options(const tg_http_header_t *h, int n);

/* 1 when p[0..len) is a non-empty token (RFC 9110 5.6.2): a header name. */
int tg_http_is_token(const char *p, size_t len);

/* 1 when the comma-separated, case-insensitive token list `value` contains
 * token (e.g. Connection: keep-alive, Upgrade). */
int tg_http_token_list_has(tg_str_t value, const char *token, size_t toklen);

/* 1 for headers a proxy must not forward as is: Connection, Keep-Alive,
 * Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, and any
 * Proxy-* header (Proxy-Authorization, Proxy-Authenticate). */
int tg_http_is_hop_by_hop(tg_str_t name);

/* Finds the first header named name (case-insensitive); NULL if absent. */
const tg_http_header_t *tg_http_header_find(const tg_http_header_t *headers,
                                            int n, const char *name, size_t len);

/* Reason phrase of a status code ("Not Found"), "Unknown" for others. */
const char *tg_http_status_text(int status);

#endif
