/*
 * tg_httpc.h: the worker's outgoing HTTP/1.1 client, behind the PDK's
 * tg.http.request{} (JWKS fetches, auth callouts, log shipping).
 *
 * Everything runs on the worker's libev loop: a numeric address is used as
 * is, a host name is resolved by glibc's getaddrinfo_a() in its own helper
 * thread, whose completion is signalled into the loop with an ev_async, and
 * kept in a small per-worker cache (TG_HTTPC_DNS_TTL); the connect, the
 * write and the read are non-blocking. The calling Lua coroutine waits
 * through tg_lua_wait_begin() / tg_lua_wake() and sees only the end result.
 *
 * Responses are parsed by the core's strict parser (tg_http.h): 1xx heads
 * are skipped, HEAD/204/304 have no body, bodies are framed by
 * Content-Length, strict chunked decoding or the close of the connection;
 * redirects are returned, not followed. Idle keep-alive connections are
 * pooled per "host:port" (LIFO, small caps, idle timeout), watched for a
 * peer close while idle and peeked before reuse, like the upstream pools.
 *
 * A callout whose coroutine went away (its request was freed, the phase
 * abandoned) is torn down on the next loop iteration: its connection is
 * closed, its wait handle released; nothing is resumed.
 */
#ifndef TG_HTTPC_H
#define TG_HTTPC_H

#include "tg_core.h"
#include "tg_http.h"
#include "tg_worker.h"

typedef struct tg_httpc_s     tg_httpc_t;
typedef struct tg_httpc_req_s tg_httpc_req_t;

/* The per-worker client state (pools, DNS cache, callouts in flight).
 * Created before the worker's Lua VM; freed after it (tg_lua_free first, so
 * that pending callouts release their waits without resuming Lua). */
tg_httpc_t *tg_httpc_new(tg_worker_t *w);
void tg_httpc_free(tg_httpc_t *hc);

/* Flags of tg_ffi_http_start(). */
#define TG_HTTPC_HEAD       0x1   /* HEAD request: the response has no body */
#define TG_HTTPC_KEEPALIVE  0x2   /* take from and return to the pool */
#define TG_HTTPC_IDEMPOTENT 0x4   /* may be replayed once after a stale pooled connection */
#define TG_HTTPC_TLS        0x8   /* https: TLS to the server */
#define TG_HTTPC_NO_VERIFY  0x10  /* https without checking the certificate */

/*
 * FFI (lua/tollgate/http.lua). tg_ffi_http_start() begins a callout for the
 * running coroutine and returns its handle; the Lua side must then yield
 * (runtime.wait()) and, once resumed, read the result and free the handle
 * with tg_ffi_http_free(). NULL means the running context may not yield
 * (header_filter, body_filter, init_worker): nothing was started.
 * host is a DNS name or a numeric IPv4/IPv6 address (no brackets); head is
 * the complete request head, body the bytes after it (both copied).
 * With TG_HTTPC_TLS the exchange runs over TLS (SNI = host), verified
 * against ca_file (NULL: the system CA bundle) unless TG_HTTPC_NO_VERIFY;
 * a failed handshake is "tls handshake failed: <reason>".
 * timeout_ms bounds resolve + connect + handshake + send + read; max_body bounds the
 * response body. Errors surface as strings (tg_ffi_http_error): "timeout",
 * "connection refused", "connection reset", "connection closed", "invalid
 * response", "response too large", "could not resolve host", ...
 */
tg_httpc_req_t *tg_ffi_http_start(const char *host, size_t hlen, int port,
                                  const char *head, size_t headlen,
                                  const char *body, size_t bodylen,
                                  int flags, int timeout_ms, double max_body,
                                  const char *ca_file);
/* NULL when a response was received, else the error. */
const char *tg_ffi_http_error(const tg_httpc_req_t *h);
int tg_ffi_http_status(const tg_httpc_req_t *h);
/* Response headers as received (slices valid until tg_ffi_http_free). */
const tg_http_header_t *tg_ffi_http_headers(const tg_httpc_req_t *h, int *n);
const char *tg_ffi_http_body(const tg_httpc_req_t *h, size_t *len);
/* 1 when the response came over a pooled (reused) connection. */
int tg_ffi_http_reused(const tg_httpc_req_t *h);
void tg_ffi_http_free(tg_httpc_req_t *h);

#endif
