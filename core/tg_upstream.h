/*
 * tg_upstream.h: a worker's runtime view of one configured upstream: the
 * balancer state of its targets and, per target, a LIFO pool of idle
 * keep-alive connections.
 *
 * Pool rules (DESIGN.md "Upstreams"): at most conf->keepalive idle
 * connections per target; an idle connection is watched for readability so
 * that a peer close (or unexpected bytes) drops it at once, and it expires
 * after keepalive_timeout_ms. tg_upstream_pool_get() also peeks the socket
 * before handing a connection out, catching a close that arrived in the same
 * loop iteration. LIFO keeps the hottest connections in use and lets the
 * coldest expire.
 */
#ifndef TG_UPSTREAM_H
#define TG_UPSTREAM_H

#include "tg_core.h"
#include "tg_balancer.h"
#include "tg_buf.h"
#include "tg_worker.h"

typedef struct tg_upconn_s {
    tg_link_t       link;       /* in the target's idle list while pooled */
    tg_upstream_t  *u;
    int             target;     /* index into u->conf->targets */
    int             fd;
    ev_io           io;
    ev_timer        timer;      /* connect / send / read / idle timeout */
    tg_wqueue_t     wq;         /* request bytes the socket did not take */
    tg_buf_t       *buf;        /* response read buffer while in use */
    int             nrequests;  /* requests sent on this connection */
    struct ssl_st  *ssl;        /* https target: the TLS session (tg_tls.h) */
    unsigned        connected:1;
    unsigned        handshaking:1; /* TLS handshake not finished yet */
    unsigned        reused:1;   /* came from the pool for this request */
    void           *data;       /* the request using it */
} tg_upconn_t;

typedef struct {
    tg_link_t idle;             /* most recently used first */
    int       nidle;
    void     *tls_session;      /* https: the last session the target issued,
                                   offered for resumption (SSL_SESSION *) */
} tg_upstream_pool_t;

struct tg_upstream_s {
    tg_worker_t              *worker;
    const tg_conf_upstream_t *conf;
    tg_balancer_t             balancer;
    tg_upstream_pool_t       *pools;      /* one per target */
};

/* Sets up u for conf (balancer + empty pools). */
void tg_upstream_init(tg_upstream_t *u, tg_worker_t *w, const tg_conf_upstream_t *conf);
/* Closes every pooled connection and frees u's arrays. */
void tg_upstream_free(tg_upstream_t *u);

/* Closes the idle pooled connections (drain). */
void tg_upstream_close_idle(tg_upstream_t *u);

/* A live idle connection to target i, removed from the pool, its watchers
 * stopped and `reused` set; NULL when the pool has none. */
tg_upconn_t *tg_upstream_pool_get(tg_upstream_t *u, int i);
/* Parks a connection whose last exchange ended cleanly; closes it instead
 * when the pool is full, the worker drains or it served its quota. */
void tg_upstream_pool_put(tg_upconn_t *uc);

/* Starts a non-blocking connect to target i. Returns the connection with
 * connected = 0 while in progress (connected = 1 if it finished at once),
 * or NULL with errno set when it failed immediately. The caller starts the
 * watchers with its own callbacks. */
tg_upconn_t *tg_upstream_connect(tg_upstream_t *u, int i);
/* Completes a connect after writability: TG_OK or TG_ERROR (errno set).
 * For an https target the TLS handshake follows (handshaking is set). */
int tg_upstream_connect_finish(tg_upconn_t *uc);
/* Advances the TLS handshake of an https target (see tg_tls_handshake):
 * TG_OK (handshaking cleared), TG_AGAIN (wait for *events) or TG_ERROR with
 * the reason in err. */
int tg_upstream_handshake(tg_upconn_t *uc, int *events, char *err, size_t errlen);

/* Stops the watchers and closes the socket; frees the connection. */
void tg_upstream_conn_close(tg_upconn_t *uc);

#endif
