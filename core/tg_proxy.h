/*
 * tg_proxy.h: the upstream half of a request: balance, connect (or take a
 * pooled connection), send the rebuilt head and stream the body up, read the
 * response head, rebuild it for the client and stream the body down, then
 * return the connection to the pool. Retries, passive health, timeouts and
 * WebSocket/Upgrade tunnelling live here.
 */
#ifndef TG_PROXY_H
#define TG_PROXY_H

#include "tg_request.h"

/* Starts proxying r to r->route->upstream (or r->upstream if a plugin
 * picked another one). Ends in tg_request_done or tg_request_finalize. */
void tg_proxy_start(tg_request_t *r);

/* Client-side events forwarded by tg_request while proxying. */
void tg_proxy_client_readable(tg_request_t *r);
void tg_proxy_client_writable(tg_request_t *r);
void tg_proxy_client_timeout(tg_request_t *r);

/* Tears down the upstream side of r (closing the connection): used when
 * the client goes away or the request ends early. */
void tg_proxy_abort(tg_request_t *r);

#endif
