/*
 * tg_conn.h: a client connection: accepting it, reading request heads
 * (pipelined requests are taken from the buffer one after the other), the
 * idle keep-alive state, writing with backpressure, timeouts and closing.
 *
 * States: [HANDSHAKE (TLS listeners: until the handshake completes, within
 * the handshake timeout) ->] IDLE (keep-alive, no buffer held) -> HEAD (bytes of a head are
 * arriving; header_timeout_ms runs) -> REQUEST (a tg_request_t owns the
 * connection's reading and writing until it calls tg_conn_request_done)
 * -> IDLE or LINGER (flushing the last response, then close).
 */
#ifndef TG_CONN_H
#define TG_CONN_H

#include "tg_core.h"
#include "tg_buf.h"
#include "tg_http.h"
#include "tg_worker.h"

#include <netinet/in.h>
#include <arpa/inet.h>

typedef enum {
    TG_CONN_IDLE = 0,
    TG_CONN_HANDSHAKE,
    TG_CONN_HEAD,
    TG_CONN_REQUEST,
    TG_CONN_LINGER,
} tg_conn_state_e;

struct tg_conn_s {
    tg_link_t        link;        /* in worker->conns */
    tg_worker_t     *worker;
    tg_listener_t   *listener;
    int              fd;
    ev_io            io;
    ev_timer         timer;
    ev_tstamp        deadline;    /* when the current timeout expires; 0: none (see tg_conn_set_timer) */
    ev_tstamp        timer_at;    /* when `timer` was started to fire */
    int              events;      /* EV_READ / EV_WRITE currently watched */
    tg_conn_state_e  state;
    char             ip[INET6_ADDRSTRLEN];
    uint16_t         port;
    tg_buf_t        *rbuf;        /* held while a request is being read */
    tg_wqueue_t      wq;
    tg_http_scan_t   scan;
    tg_request_t    *r;           /* current request, if any */
    struct ssl_st   *ssl;         /* TLS listener: the session (tg_tls.h) */
    void            *peer;        /* tg_tls_peer_t of the client certificate,
                                     made at the first ask (tg_conn_peer) */
    unsigned         peer_done:1;  /* peer was looked up (it may be NULL) */
    int              nrequests;   /* finished requests on this connection */
    unsigned         close_after:1; /* close once the current response is out */
    unsigned         lingering:1;   /* half-closed, discarding input before close */
    unsigned         must_linger:1; /* input may be left unread: linger before close */
};

/* Accept callback of a listener's ev_io. */
void tg_conn_accept_cb(struct ev_loop *loop, ev_io *io, int revents);

/* Watches exactly `events` (EV_READ | EV_WRITE | 0) on the socket. */
void tg_conn_set_events(tg_conn_t *c, int events);
/* (Re)arms the connection timer to fire after ms milliseconds; 0 stops it. */
void tg_conn_set_timer(tg_conn_t *c, int ms);

/* Writes iov (see tg_wqueue_writev). On TG_AGAIN the connection watches
 * EV_WRITE and calls tg_request_client_writable() when drained. */
int tg_conn_send(tg_conn_t *c, const struct iovec *iov, int iovcnt);

/* Whether the client is still there, without consuming request bytes:
 * 1 bytes are waiting, 0 it closed (or the connection failed), TG_AGAIN
 * nothing yet. */
int tg_conn_peek(tg_conn_t *c);

/* The client certificate of a TLS connection (a tg_tls_peer_t *), or NULL
 * when there is none. Computed once per connection; owned by it. */
void *tg_conn_peer(tg_conn_t *c);

/* Reads into c->rbuf (taking a buffer if needed, compacting when the room
 * runs out). Returns bytes read (> 0), 0 on EOF, TG_AGAIN, or TG_ERROR. */
ssize_t tg_conn_read(tg_conn_t *c);

/* The request is finished (response fully handed to the socket or the
 * connection must go): continues with the next pipelined request, idles,
 * lingers or closes. Frees nothing of the request (tg_request_free does). */
void tg_conn_request_done(tg_conn_t *c);

/* Closes now, freeing the connection and any request it has. */
void tg_conn_close(tg_conn_t *c);

/* Drain: closes an idle connection now, marks a busy one close_after. */
void tg_conn_drain(tg_conn_t *c);

#endif
