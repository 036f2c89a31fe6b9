/*
 * tg_response.h: writing responses to the client. Every response, local or
 * proxied, goes through the same two steps so that plugins see them all:
 * tg_response_send_head() runs header_filter plugins on r->status and
 * r->resp_hdrs, then writes the head with the framing the core chooses;
 * tg_response_send_body() runs body_filter plugins on each piece and frames
 * it (Content-Length, chunked, or until close).
 */
#ifndef TG_RESPONSE_H
#define TG_RESPONSE_H

#include "tg_request.h"

/* Sends the head for r->status / r->resp_hdrs / r->frame /
 * r->resp_content_length. TG_OK, or TG_ERROR when the connection is gone
 * (it has been closed; r is freed). */
int tg_response_send_head(tg_request_t *r);

/* Writes a head that send_head kept back to go out with the first body
 * bytes (used before waiting for an upstream's body). TG_OK or TG_ERROR
 * (connection closed; r is freed). */
int tg_response_flush_head(tg_request_t *r);

/* Sends one body piece (last = 1 for the final one, possibly empty).
 * TG_OK, TG_AGAIN (queued: wait for the client to drain before producing
 * more) or TG_ERROR (connection closed; r is freed). */
int tg_response_send_body(tg_request_t *r, const char *data, size_t len, int last);

/* Complete local responses; each ends the request (tg_request_done). */
/* status + body; Content-Type from r->resp_hdrs or application/json. */
void tg_response_local(tg_request_t *r, int status, const char *body, size_t len);
/* {"error":"<reason>"} with a fresh header list. */
void tg_response_error(tg_request_t *r, int status);
/* A route's `response:` block. */
void tg_response_static(tg_request_t *r, const tg_conf_response_t *resp);
/* The request as JSON (reads the body first). */
void tg_response_echo(tg_request_t *r);

#endif
