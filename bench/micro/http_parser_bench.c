/*
 * http_parser_bench.c (S0): what tokenizing one request head with
 * http-parser (the library the core uses, Debian's 2.9) costs on this CPU,
 * for a typical gateway request: request line, Host, 6 common headers and a
 * bearer token. Callbacks only record slices, as the core's do. Prints one
 * JSON object with ns per request head.
 */
#include <http_parser.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define ROUNDS 1000000   /* heads parsed; ~0.3 s */

static const char HEAD[] =
    "GET /api/v1/users/42?fields=name,email HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench\r\n"
    "Accept: application/json\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl\r\n"
    "X-Request-Id: 0f8fad5b-d9cb-469f-a165-70867728950e\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

static size_t seen;
static int on_data(http_parser *p, const char *at, size_t len) { (void)p; (void)at; seen += len; return 0; }
static int on_done(http_parser *p) { (void)p; return 0; }

int main(void)
{
    http_parser_settings s;
    memset(&s, 0, sizeof s);
    s.on_url = on_data;
    s.on_header_field = on_data;
    s.on_header_value = on_data;
    s.on_headers_complete = on_done;
    http_parser p;
    size_t len = sizeof HEAD - 1;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < ROUNDS; i++) {
        http_parser_init(&p, HTTP_REQUEST);
        size_t n = http_parser_execute(&p, &s, HEAD, len);
        if (n != len || p.http_errno != HPE_OK) {
            fprintf(stderr, "parse error: %s\n", http_errno_name(p.http_errno));
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / ROUNDS;
    printf("{\"head_bytes\":%zu,\"ns_per_head\":%.1f,\"rounds\":%d}\n", len, ns, ROUNDS);
    return seen == 0;
}
