/*
 * tg_httpc.c: the outgoing HTTP/1.1 client of a worker (see tg_httpc.h).
 *
 * One callout (tg_httpc_req_t) goes RESOLVE -> CONNECT -> EXCHANGE -> DONE.
 * A pooled connection skips the first two; a numeric host or a fresh cache
 * entry skips RESOLVE. In EXCHANGE the request bytes are written while the
 * response is already being read (a server may answer early), and the
 * response is read into one growing buffer: head first (parsed in place,
 * then copied out), then the body in the same buffer (chunked data is
 * decoded in place, so the buffer holds exactly the body at the end).
 *
 * Ownership: the request is owned by this file until its coroutine is
 * woken; from then on by the Lua side, which frees it with
 * tg_ffi_http_free(). A callout that completes while tg_ffi_http_start() is
 * still running (refused at once, a bad host) must not resume the
 * coroutine that has not yielded yet: its wake is deferred to a zero timer.
 *
 * Name resolution: getaddrinfo() blocks, so a worker never calls it. glibc's
 * getaddrinfo_a() (in libc itself since 2.34, no -lanl) runs the lookup in a
 * helper thread and notifies a thread of its own (SIGEV_THREAD); that
 * thread only links the finished query into a list under a mutex and
 * ev_async_send()s the loop. Everything else happens in the loop thread.
 * Lookups of one name are shared by every callout waiting for it.
 *
 * https: after the connect comes a HANDSHAKE state (tg_tls.h; SNI is the
 * host, the certificate is checked against it unless the caller turned
 * verification off). Client contexts are made at the first https callout
 * of a worker, one per CA file (the system bundle when none), and kept
 * for the worker's life. Pooled connections are keyed by scheme, trust
 * (CA and verification) and host:port, so a connection made under weaker
 * checks never serves a callout that asked for stronger ones.
 */
#include "tg_httpc.h"
#include "tg_log.h"
#include "tg_lua.h"
#include "tg_pool.h"
#include "tg_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* A DNS name is at most 253 characters (RFC 1035); the buffer rounds up. */
#define TG_HTTPC_MAX_HOST        255
/* "host:port", after "s<trust>:" for https */
#define TG_HTTPC_KEY_MAX         (TG_HTTPC_MAX_HOST + 16)
/* TLS client contexts per worker: the system bundle plus a few CA files. */
#define TG_HTTPC_TLS_CTX_MAX     8
/* Addresses kept per name: enough to fall back from ::1 to 127.0.0.1 or
 * across a few A records, without a connect storm to a dead host. */
#define TG_HTTPC_MAX_ADDRS       4
/* Names cached per worker: callouts go to a handful of services. */
#define TG_HTTPC_DNS_CACHE       64
/* Seconds a resolved name is reused (getaddrinfo does not tell the TTL). */
#define TG_HTTPC_DNS_TTL         60.0
/* Idle pooled connections per host:port and per worker: callouts are
 * occasional, a few warm connections cover them. */
#define TG_HTTPC_POOL_PER_KEY    16
#define TG_HTTPC_POOL_MAX        64
/* Seconds an idle pooled connection is kept. Servers close idle
 * connections themselves (often after 5-60 s); the idle watcher notices. */
#define TG_HTTPC_IDLE_TIMEOUT    30.0
/* Requests per connection before it is retired. */
#define TG_HTTPC_MAX_CONN_REQUESTS 1000
/* A response head larger than this is refused (invalid response). */
#define TG_HTTPC_MAX_HEAD        (64 * 1024)
/* First size of the read buffer: most callout responses fit. */
#define TG_HTTPC_INITIAL_BUF     4096
/* Room ensured before each read of a body of unknown length. */
#define TG_HTTPC_READ_CHUNK      (64 * 1024)
/* Reads per readiness event: a fast server cannot starve the loop (the
 * level-triggered watcher fires again next iteration). */
#define TG_HTTPC_READS_PER_EVENT 16
/* Interim (1xx) heads skipped before the final one. */
#define TG_HTTPC_MAX_INTERIM     8

typedef struct {
    struct sockaddr_storage sa;
    socklen_t               len;
} addr_t;

typedef struct {
    char      name[TG_HTTPC_MAX_HOST + 1];
    addr_t    addrs[TG_HTTPC_MAX_ADDRS];   /* port 0 */
    int       naddrs;
    ev_tstamp expires;                     /* 0: empty slot */
} dns_entry_t;

typedef struct dns_query_s {
    struct gaicb        cb;
    struct addrinfo     hints;
    struct sigevent     sev;
    char                name[TG_HTTPC_MAX_HOST + 1];
    tg_httpc_t         *hc;
    struct dns_query_s *done_next;   /* hc->dns_done, under hc->mu */
    tg_link_t           link;        /* hc->queries (loop thread only) */
    tg_link_t           waiters;     /* tg_httpc_req_t.dns_link */
} dns_query_t;

typedef struct hconn_s {
    tg_link_t       link;            /* hc->idle while pooled */
    tg_httpc_t     *hc;
    tg_httpc_req_t *req;             /* the callout using it; NULL while idle */
    int             fd;
    int             events;
    ev_io           io;
    ev_timer        idle;
    char            key[TG_HTTPC_KEY_MAX];
    int             nrequests;
    struct ssl_st  *ssl;             /* https */
    unsigned        reused:1;
} hconn_t;

typedef struct {
    char              *ca_file;      /* NULL: the system bundle */
    struct ssl_ctx_st *ctx;
} tls_ctx_t;

struct tg_httpc_s {
    tg_worker_t     *worker;
    tg_link_t        active;         /* callouts in flight */
    tg_link_t        idle;           /* pooled connections, most recent first */
    int              nidle;
    tg_link_t        queries;        /* lookups in flight */
    ev_prepare       reap;           /* runs while callouts are in flight */
    ev_async         dns_async;
    pthread_mutex_t  mu;
    dns_query_t     *dns_done;       /* under mu */
    int              closed;         /* under mu */
    int              starting;       /* inside tg_ffi_http_start */
    dns_entry_t      cache[TG_HTTPC_DNS_CACHE];
    tls_ctx_t        tls[TG_HTTPC_TLS_CTX_MAX];
    int              ntls;
};

enum { ST_RESOLVE = 1, ST_CONNECT, ST_HANDSHAKE, ST_EXCHANGE, ST_DONE };
enum { BODY_HEAD = 0, BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE };

struct tg_httpc_req_s {
    tg_link_t          link;         /* hc->active until finished */
    tg_httpc_t        *hc;
    tg_lua_wait_t     *wt;
    int                state;
    unsigned           flags;
    char               host[TG_HTTPC_MAX_HOST + 1];
    int                port;
    char               key[TG_HTTPC_KEY_MAX];
    addr_t             addrs[TG_HTTPC_MAX_ADDRS];
    int                naddrs, addr_i;
    int                last_errno;   /* of the last failed connect */
    dns_query_t       *query;
    tg_link_t          dns_link;
    hconn_t           *conn;
    ev_timer           timer;        /* whole-callout deadline; deferred wake */

    char              *out;          /* request bytes (head + body) */
    size_t             outlen, outoff;
    size_t             max_body;

    char              *rb;           /* response bytes: head, then body */
    size_t             rlen, rcap;
    size_t             blen;         /* chunked: decoded body bytes at rb[0..blen) */
    uint64_t           clen;         /* Content-Length */
    int                mode;         /* BODY_* (BODY_HEAD: head not complete) */
    int                ninterim;
    tg_http_scan_t     scan;
    tg_http_chunked_t  chunked;
    tg_http_response_t resp;         /* slices into head */
    char              *head;
    size_t             body_len;     /* final body: rb[0..body_len) */

    unsigned           sent:1;       /* whole request written */
    unsigned           got_bytes:1;  /* a response byte arrived on this connection */
    unsigned           retried:1;    /* replayed once after a stale pooled connection */
    unsigned           no_pool:1;    /* next connection must be fresh */
    unsigned           reusable:1;   /* the connection may go back to the pool */
    unsigned           was_reused:1; /* the response came over a pooled connection */
    struct ssl_ctx_st *tls_ctx;      /* https: the context to connect with */
    const char        *err;          /* static string or errbuf; NULL: success */
    char               errbuf[192];
};

static void exchange_start(tg_httpc_req_t *req);
static void connected(tg_httpc_req_t *req);
static int send_more(tg_httpc_req_t *req);
static void connect_next(tg_httpc_req_t *req);
static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents);

static struct ev_loop *loop_of(tg_httpc_t *hc) { return hc->worker->loop; }

/* ---- connections and the pool ---- */

static hconn_t *conn_new(tg_httpc_t *hc, int fd, const char *key) {
    hconn_t *c = tg_xcalloc(1, sizeof(*c));
    tg_link_init(&c->link);
    c->hc = hc;
    c->fd = fd;
    snprintf(c->key, sizeof(c->key), "%s", key);
    ev_io_init(&c->io, conn_io_cb, fd, 0);
    c->io.data = c;
    ev_init(&c->idle, NULL);
    return c;
}

static void conn_close(hconn_t *c) {
    struct ev_loop *loop = loop_of(c->hc);
    ev_io_stop(loop, &c->io);
    ev_timer_stop(loop, &c->idle);
    tg_tls_free(c->ssl);
    close(c->fd);
    free(c);
}

/* Watches exactly `events` on c's socket. */
static void conn_watch(hconn_t *c, int events) {
    if (c->events == events && (events == 0 || ev_is_active(&c->io))) return;
    struct ev_loop *loop = loop_of(c->hc);
    ev_io_stop(loop, &c->io);
    c->events = events;
    if (events) {
        ev_io_modify(&c->io, events);   /* same fd: no forced epoll_ctl */
        ev_io_start(loop, &c->io);
    }
}

static void pool_remove(hconn_t *c) {
    tg_link_remove(&c->link);
    c->hc->nidle--;
}

static void idle_timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    hconn_t *c = t->data;
    pool_remove(c);
    conn_close(c);
}

/* Parks a connection whose exchange ended cleanly, or closes it. */
static void pool_put(hconn_t *c) {
    tg_httpc_t *hc = c->hc;
    c->req = NULL;
    if (hc->worker->draining || c->nrequests >= TG_HTTPC_MAX_CONN_REQUESTS) {
        conn_close(c);
        return;
    }
    /* Full: drop the oldest of this key (or of all), keep the warm one. */
    int same = 0;
    hconn_t *oldest_same = NULL;
    for (tg_link_t *l = hc->idle.next; l != &hc->idle; l = l->next) {
        hconn_t *x = tg_link_data(l, hconn_t, link);
        if (strcmp(x->key, c->key) == 0) {
            same++;
            oldest_same = x;
        }
    }
    hconn_t *victim = NULL;
    if (same >= TG_HTTPC_POOL_PER_KEY) victim = oldest_same;
    else if (hc->nidle >= TG_HTTPC_POOL_MAX) victim = tg_link_data(hc->idle.prev, hconn_t, link);
    if (victim) {
        pool_remove(victim);
        conn_close(victim);
    }
    /* Readable while idle = the peer closed or sent bytes nobody asked
     * for: conn_io_cb closes it (req is NULL). */
    conn_watch(c, EV_READ);
    ev_timer_init(&c->idle, idle_timer_cb, TG_HTTPC_IDLE_TIMEOUT, 0.);
    c->idle.data = c;
    ev_timer_start(loop_of(hc), &c->idle);
    tg_link_insert(&hc->idle, &c->link);
    hc->nidle++;
}

/* 1 when the socket has neither EOF nor stray data waiting. */
static int still_open(hconn_t *c) {
    char ch;
    if (c->ssl && tg_tls_pending(c->ssl)) return 0;
    ssize_t n = recv(c->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* A live idle connection for key, removed from the pool; NULL if none. */
static hconn_t *pool_get(tg_httpc_t *hc, const char *key) {
    tg_link_t *l = hc->idle.next;
    while (l != &hc->idle) {
        hconn_t *c = tg_link_data(l, hconn_t, link);
        l = l->next;
        if (strcmp(c->key, key) != 0) continue;
        pool_remove(c);
        ev_timer_stop(loop_of(hc), &c->idle);
        if (!still_open(c)) {
            conn_close(c);
            continue;
        }
        conn_watch(c, 0);
        c->reused = 1;
        return c;
    }
    return NULL;
}

/* ---- finishing a callout ---- */

static void req_free(tg_httpc_req_t *req) {
    free(req->out);
    free(req->rb);
    free(req->head);
    free(req);
}

static void reap_update(tg_httpc_t *hc) {
    if (tg_link_empty(&hc->active)) ev_prepare_stop(loop_of(hc), &hc->reap);
    else if (!ev_is_active(&hc->reap)) ev_prepare_start(loop_of(hc), &hc->reap);
}

/* Releases everything the callout holds in the loop: its connection (to
 * the pool when it ended cleanly), its place in a lookup, its timer. */
static void detach(tg_httpc_req_t *req, int pool_ok) {
    tg_httpc_t *hc = req->hc;
    if (req->conn) {
        hconn_t *c = req->conn;
        req->conn = NULL;
        if (pool_ok) pool_put(c);
        else conn_close(c);
    }
    if (req->query) {
        tg_link_remove(&req->dns_link);
        req->query = NULL;
    }
    ev_timer_stop(loop_of(hc), &req->timer);
    free(req->out);
    req->out = NULL;
    tg_link_remove(&req->link);
    reap_update(hc);
}

/* Resumes the coroutine (the Lua side reads the result and frees req), or
 * frees req when the coroutine went away meanwhile. Nothing may touch req
 * after this. */
static void wake(tg_httpc_req_t *req) {
    tg_lua_wait_t *wt = req->wt;
    req->wt = NULL;
    if (wt == NULL || tg_lua_wait_cancelled(wt)) {
        if (wt) tg_lua_wake(wt);   /* only frees the handle */
        req_free(req);
        return;
    }
    tg_lua_wake(wt);
}

/* Ends the callout with err (NULL: the response is complete). */
static void finish(tg_httpc_req_t *req, const char *err) {
    tg_httpc_t *hc = req->hc;
    req->err = err;
    req->state = ST_DONE;
    detach(req, err == NULL && req->reusable);
    if (hc->starting) {
        /* The coroutine has not yielded yet: wake it from the loop. */
        ev_timer_set(&req->timer, 0., 0.);
        ev_timer_start(loop_of(hc), &req->timer);
        return;
    }
    wake(req);
}

static void fail_errno(tg_httpc_req_t *req, int e) {
    switch (e) {
    case ECONNREFUSED: finish(req, "connection refused"); return;
    case ECONNRESET:
    case EPIPE:        finish(req, "connection reset"); return;
    case ETIMEDOUT:    finish(req, "timeout"); return;
    case ENETUNREACH:  finish(req, "network unreachable"); return;
    case EHOSTUNREACH: finish(req, "host unreachable"); return;
    default:
        snprintf(req->errbuf, sizeof(req->errbuf), "%s", strerror(e));
        if (req->errbuf[0] >= 'A' && req->errbuf[0] <= 'Z') req->errbuf[0] += 'a' - 'A';
        finish(req, req->errbuf);
    }
}

/* Tears down a callout whose coroutine is gone, or any at worker exit
 * (after tg_lua_free): tg_lua_wake() then only frees the handle. */
static void abort_req(tg_httpc_req_t *req) {
    req->state = ST_DONE;
    detach(req, 0);
    tg_lua_wait_t *wt = req->wt;
    req->wt = NULL;
    if (wt) tg_lua_wake(wt);
    req_free(req);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    tg_httpc_req_t *req = t->data;
    if (req->state == ST_DONE) {
        wake(req);   /* deferred wake of a callout that ended while starting */
        return;
    }
    finish(req, "timeout");
}

/* Before each loop iteration, while callouts are in flight: a request that
 * went away (freed, or its phase abandoned) only marks its wait cancelled,
 * so its callout is found and torn down here. */
static void reap_cb(struct ev_loop *loop, ev_prepare *p, int revents) {
    tg_httpc_t *hc = p->data;
    tg_link_t *l = hc->active.next;
    while (l != &hc->active) {
        tg_httpc_req_t *req = tg_link_data(l, tg_httpc_req_t, link);
        l = l->next;
        if (req->wt && tg_lua_wait_cancelled(req->wt)) abort_req(req);
    }
}

/* ---- name resolution ---- */

static dns_entry_t *cache_find(tg_httpc_t *hc, const char *name) {
    ev_tstamp now = ev_now(loop_of(hc));
    for (int i = 0; i < TG_HTTPC_DNS_CACHE; i++) {
        dns_entry_t *e = &hc->cache[i];
        if (e->expires > now && strcmp(e->name, name) == 0) return e;
    }
    return NULL;
}

static void cache_put(tg_httpc_t *hc, const char *name, const addr_t *addrs, int n) {
    ev_tstamp now = ev_now(loop_of(hc));
    dns_entry_t *slot = NULL;
    for (int i = 0; i < TG_HTTPC_DNS_CACHE; i++) {
        dns_entry_t *e = &hc->cache[i];
        if (strcmp(e->name, name) == 0 || e->expires <= now) {
            slot = e;
            break;
        }
        if (slot == NULL || e->expires < slot->expires) slot = e;   /* oldest */
    }
    snprintf(slot->name, sizeof(slot->name), "%s", name);
    memcpy(slot->addrs, addrs, sizeof(addr_t) * (size_t)n);
    slot->naddrs = n;
    slot->expires = now + TG_HTTPC_DNS_TTL;
}

static void set_addrs(tg_httpc_req_t *req, const addr_t *addrs, int n) {
    req->naddrs = n;
    req->addr_i = 0;
    for (int i = 0; i < n; i++) {
        req->addrs[i] = addrs[i];
        struct sockaddr_storage *sa = &req->addrs[i].sa;
        if (sa->ss_family == AF_INET) ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)req->port);
        else ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)req->port);
    }
}

/* Runs in glibc's notification thread: hand the query to the loop. */
static void dns_notify(union sigval v) {
    dns_query_t *q = v.sival_ptr;
    tg_httpc_t *hc = q->hc;
    pthread_mutex_lock(&hc->mu);
    if (!hc->closed) {
        q->done_next = hc->dns_done;
        hc->dns_done = q;
        ev_async_send(loop_of(hc), &hc->dns_async);
    }
    pthread_mutex_unlock(&hc->mu);
}

static void dns_complete(tg_httpc_t *hc, dns_query_t *q) {
    tg_link_remove(&q->link);
    addr_t addrs[TG_HTTPC_MAX_ADDRS];
    int n = 0;
    int rc = gai_error(&q->cb);
    if (rc == 0) {
        for (struct addrinfo *ai = q->cb.ar_result; ai && n < TG_HTTPC_MAX_ADDRS; ai = ai->ai_next) {
            if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                || ai->ai_addrlen > sizeof(addrs[n].sa))
                continue;
            memset(&addrs[n], 0, sizeof(addrs[n]));
            memcpy(&addrs[n].sa, ai->ai_addr, ai->ai_addrlen);
            addrs[n].len = ai->ai_addrlen;
            n++;
        }
    }
    if (q->cb.ar_result) freeaddrinfo(q->cb.ar_result);
    if (n > 0) cache_put(hc, q->name, addrs, n);
    else tg_log_warn("http client: cannot resolve \"%s\": %s", q->name,
                     rc ? gai_strerror(rc) : "no address");
    /* Each waiter may resume Lua (which may start callouts): take them off
     * the query one by one; q is already out of hc->queries. */
    while (!tg_link_empty(&q->waiters)) {
        tg_httpc_req_t *req = tg_link_data(q->waiters.next, tg_httpc_req_t, dns_link);
        tg_link_remove(&req->dns_link);
        req->query = NULL;
        if (req->wt && tg_lua_wait_cancelled(req->wt)) {
            abort_req(req);
        } else if (n == 0) {
            finish(req, "could not resolve host");
        } else {
            set_addrs(req, addrs, n);
            connect_next(req);
        }
    }
    free(q);
}

static void dns_async_cb(struct ev_loop *loop, ev_async *a, int revents) {
    tg_httpc_t *hc = a->data;
    pthread_mutex_lock(&hc->mu);
    dns_query_t *q = hc->dns_done;
    hc->dns_done = NULL;
    pthread_mutex_unlock(&hc->mu);
    while (q) {
        dns_query_t *next = q->done_next;
        dns_complete(hc, q);
        q = next;
    }
}

static void resolve(tg_httpc_req_t *req) {
    tg_httpc_t *hc = req->hc;
    req->state = ST_RESOLVE;
    for (tg_link_t *l = hc->queries.next; l != &hc->queries; l = l->next) {
        dns_query_t *q = tg_link_data(l, dns_query_t, link);
        if (strcmp(q->name, req->host) == 0) {
            tg_link_insert(&q->waiters, &req->dns_link);
            req->query = q;
            return;
        }
    }
    dns_query_t *q = tg_xcalloc(1, sizeof(*q));
    snprintf(q->name, sizeof(q->name), "%s", req->host);
    q->hc = hc;
    tg_link_init(&q->waiters);
    q->hints.ai_family = AF_UNSPEC;
    q->hints.ai_socktype = SOCK_STREAM;
    q->cb.ar_name = q->name;
    q->cb.ar_request = &q->hints;
    q->sev.sigev_notify = SIGEV_THREAD;
    q->sev.sigev_notify_function = dns_notify;
    q->sev.sigev_value.sival_ptr = q;
    struct gaicb *list[1] = { &q->cb };
    int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, &q->sev);
    if (rc != 0) {
        tg_log_warn("http client: cannot start resolving \"%s\": %s", q->name, gai_strerror(rc));
        free(q);
        finish(req, "could not resolve host");
        return;
    }
    tg_link_insert(&hc->queries, &q->link);
    tg_link_insert(&q->waiters, &req->dns_link);
    req->query = q;
}

/* ---- connecting ---- */

static void handshake(tg_httpc_req_t *req) {
    hconn_t *c = req->conn;
    char err[160];
    int events = 0;
    int rc = tg_tls_handshake(c->ssl, &events, err, sizeof(err));
    if (rc == TG_AGAIN) {
        conn_watch(c, events);
        return;
    }
    if (rc == TG_OK) {
        exchange_start(req);
        return;
    }
    if (rc == TG_DONE) {
        finish(req, "connection closed");
        return;
    }
    snprintf(req->errbuf, sizeof(req->errbuf), "tls handshake failed: %s", err);
    finish(req, req->errbuf);
}

/* The TCP connection is up: TLS first for https, then the exchange. */
static void connected(tg_httpc_req_t *req) {
    hconn_t *c = req->conn;
    if (req->tls_ctx == NULL) {
        exchange_start(req);
        return;
    }
    unsigned char bin[16];
    int ip = inet_pton(AF_INET, req->host, bin) == 1 || inet_pton(AF_INET6, req->host, bin) == 1;
    c->ssl = tg_tls_client_new(req->tls_ctx, c->fd, req->host, ip, !(req->flags & TG_HTTPC_NO_VERIFY), NULL);
    if (c->ssl == NULL) {
        finish(req, "out of memory");
        return;
    }
    req->state = ST_HANDSHAKE;
    handshake(req);
}

/* Connect errors after which the next address of the name is tried. */
static int try_next_errno(int e) {
    return e == ECONNREFUSED || e == ENETUNREACH || e == EHOSTUNREACH
        || e == EADDRNOTAVAIL || e == EAFNOSUPPORT;
}

static void connect_next(tg_httpc_req_t *req) {
    tg_httpc_t *hc = req->hc;
    while (req->addr_i < req->naddrs) {
        addr_t *a = &req->addrs[req->addr_i++];
        int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            req->last_errno = errno;
            if (try_next_errno(errno)) continue;
            fail_errno(req, errno);
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int rc = connect(fd, (struct sockaddr *)&a->sa, a->len);
        if (rc < 0 && errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            req->last_errno = e;
            if (try_next_errno(e)) continue;
            fail_errno(req, e);
            return;
        }
        req->conn = conn_new(hc, fd, req->key);
        req->conn->req = req;
        if (rc == 0) {
            connected(req);
        } else {
            req->state = ST_CONNECT;
            conn_watch(req->conn, EV_WRITE);
        }
        return;
    }
    fail_errno(req, req->last_errno ? req->last_errno : ECONNREFUSED);
}

/* Gets the callout a connection: pooled, or a new one to the host's
 * addresses (resolving the name first when needed). */
static void begin(tg_httpc_req_t *req) {
    tg_httpc_t *hc = req->hc;
    if ((req->flags & TG_HTTPC_KEEPALIVE) && !req->no_pool) {
        hconn_t *c = pool_get(hc, req->key);
        if (c) {
            c->req = req;
            req->conn = c;
            exchange_start(req);
            return;
        }
    }
    addr_t a;
    memset(&a, 0, sizeof(a));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&a.sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a.sa;
    if (inet_pton(AF_INET, req->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        a.len = sizeof(*s4);
        set_addrs(req, &a, 1);
        connect_next(req);
        return;
    }
    if (inet_pton(AF_INET6, req->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        a.len = sizeof(*s6);
        set_addrs(req, &a, 1);
        connect_next(req);
        return;
    }
    dns_entry_t *e = cache_find(hc, req->host);
    if (e) {
        set_addrs(req, e->addrs, e->naddrs);
        connect_next(req);
        return;
    }
    resolve(req);
}

/* ---- the exchange ---- */

static void exchange_start(tg_httpc_req_t *req) {
    hconn_t *c = req->conn;
    req->state = ST_EXCHANGE;
    req->was_reused = c->reused;
    c->nrequests++;
    req->outoff = 0;
    req->sent = 0;
    req->got_bytes = 0;
    req->rlen = 0;
    req->mode = BODY_HEAD;
    req->ninterim = 0;
    memset(&req->scan, 0, sizeof(req->scan));
    /* Write at once: a connected socket almost always takes the whole
     * request, which saves a loop turn and a watcher change. */
    send_more(req);
}

/* A pooled connection that the server had closed fails before any byte
 * of the answer: replay once on a fresh connection, when that is safe. */
static int stale_retry(tg_httpc_req_t *req) {
    if (!req->conn || !req->conn->reused || req->got_bytes || req->retried
        || !(req->flags & TG_HTTPC_IDEMPOTENT))
        return 0;
    conn_close(req->conn);
    req->conn = NULL;
    req->retried = 1;
    req->no_pool = 1;
    begin(req);
    return 1;
}

/* Writes what the socket takes. TG_OK: still exchanging on this
 * connection; TG_DONE: the callout failed or was replayed elsewhere (req
 * may be gone). */
static int send_more(tg_httpc_req_t *req) {
    hconn_t *c = req->conn;
    while (c->ssl && req->outoff < req->outlen) {
        /* A retry after TG_AGAIN passes the same bytes: out is stable. */
        int w = tg_tls_write(c->ssl, req->out + req->outoff, req->outlen - req->outoff);
        if (w == TG_AGAIN) {
            conn_watch(c, EV_READ | EV_WRITE);
            return TG_OK;
        }
        if (w == TG_ERROR) {
            if (!stale_retry(req)) finish(req, "connection reset");
            return TG_DONE;
        }
        req->outoff += (size_t)w;
    }
    while (req->outoff < req->outlen) {
        ssize_t n = send(c->fd, req->out + req->outoff, req->outlen - req->outoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_watch(c, EV_READ | EV_WRITE);
                return TG_OK;
            }
            int e = errno;
            if (!stale_retry(req)) fail_errno(req, e);
            return TG_DONE;
        }
        req->outoff += (size_t)n;
    }
    req->sent = 1;
    conn_watch(c, EV_READ);
    return TG_OK;
}

static int grow(tg_httpc_req_t *req, size_t want) {
    if (req->rcap >= want) return TG_OK;
    size_t cap = req->rcap ? req->rcap : TG_HTTPC_INITIAL_BUF;
    while (cap < want) cap *= 2;
    char *p = realloc(req->rb, cap);
    if (p == NULL) return TG_ERROR;
    req->rb = p;
    req->rcap = cap;
    return TG_OK;
}

/* The response is complete: rb[0..body_len) is the body. */
static void complete(tg_httpc_req_t *req, size_t body_len, int reusable) {
    req->body_len = body_len;
    req->reusable = reusable && req->sent && (req->flags & TG_HTTPC_KEEPALIVE);
    finish(req, NULL);
}

/* HEAD responses: the parser cannot know the request was HEAD and calls a
 * response without length close-delimited; decide from Connection. */
static int head_keepalive(const tg_http_response_t *resp) {
    const tg_http_header_t *h = tg_http_header_find(resp->headers, resp->nheaders, "connection", 10);
    int close_tok = h && tg_http_token_list_has(h->value, "close", 5);
    int ka_tok = h && tg_http_token_list_has(h->value, "keep-alive", 10);
    return resp->http_minor == 1 ? !close_tok : ka_tok && !close_tok;
}

/* Parses what arrived. TG_AGAIN: read more. TG_DONE: the callout finished
 * (req may be gone). */
static int process(tg_httpc_req_t *req) {
    if (req->mode == BODY_HEAD) {
        tg_http_response_t *resp = &req->resp;
        for (;;) {
            int rc = tg_http_parse_response(&req->scan, req->rb, req->rlen, TG_HTTPC_MAX_HEAD, resp);
            if (rc == TG_AGAIN) {
                if (req->rlen >= TG_HTTPC_MAX_HEAD) break;   /* head too large */
                return TG_AGAIN;
            }
            if (rc == TG_ERROR) break;
            if (resp->status >= 200) goto head_done;
            /* 101 answers an upgrade we never ask for. */
            if (resp->status == 101 || ++req->ninterim > TG_HTTPC_MAX_INTERIM) break;
            memmove(req->rb, req->rb + resp->head_len, req->rlen - resp->head_len);
            req->rlen -= resp->head_len;
            memset(&req->scan, 0, sizeof(req->scan));
        }
        finish(req, "invalid response");
        return TG_DONE;

    head_done:;
        /* Keep the head apart: the buffer becomes the body. */
        size_t hl = resp->head_len;
        free(req->head);
        req->head = tg_xmalloc(hl);
        memcpy(req->head, req->rb, hl);
        const char *base = req->rb;
#define REB(s) do { if ((s).p) (s).p = req->head + ((s).p - base); } while (0)
        REB(resp->reason);
        for (int i = 0; i < resp->nheaders; i++) {
            REB(resp->headers[i].name);
            REB(resp->headers[i].value);
        }
#undef REB
        memmove(req->rb, req->rb + hl, req->rlen - hl);
        req->rlen -= hl;
        int is_head = req->flags & TG_HTTPC_HEAD;
        if (tg_http_response_bodyless(is_head ? HTTP_HEAD : HTTP_GET, resp->status)) {
            req->mode = BODY_NONE;
            int ka = is_head ? head_keepalive(resp) : resp->keepalive;
            complete(req, 0, ka && req->rlen == 0);
            return TG_DONE;
        }
        if (resp->chunked) {
            req->mode = BODY_CHUNKED;
            req->blen = 0;
            memset(&req->chunked, 0, sizeof(req->chunked));
        } else if (resp->content_length >= 0) {
            if ((uint64_t)resp->content_length > req->max_body) {
                finish(req, "response too large");
                return TG_DONE;
            }
            req->mode = BODY_LENGTH;
            req->clen = (uint64_t)resp->content_length;
            if (req->rcap < req->clen) {
                /* Exactly the announced size: no doubling for big bodies. */
                char *p = realloc(req->rb, req->clen);
                if (p == NULL) {
                    finish(req, "response too large");
                    return TG_DONE;
                }
                req->rb = p;
                req->rcap = req->clen;
            }
            if (req->rlen >= req->clen) {
                /* Bytes beyond the body: the connection is out of step. */
                complete(req, req->clen, resp->keepalive && req->rlen == req->clen);
                return TG_DONE;
            }
            return TG_AGAIN;
        } else {
            req->mode = BODY_CLOSE;
        }
    }

    switch (req->mode) {
    case BODY_LENGTH:
        if (req->rlen >= req->clen) {
            complete(req, req->clen, req->resp.keepalive);
            return TG_DONE;
        }
        return TG_AGAIN;
    case BODY_CHUNKED: {
        /* rb[0..blen) is decoded body, rb[blen..rlen) raw bytes. Decoded
         * data never lies before blen, so it moves down in place. */
        size_t off = req->blen;
        while (off < req->rlen && !req->chunked.done) {
            const char *d;
            size_t dl;
            ssize_t used = tg_http_chunked_decode(&req->chunked, req->rb + off, req->rlen - off, &d, &dl);
            if (used < 0) {
                finish(req, "invalid response");
                return TG_DONE;
            }
            if (dl) {
                if (req->blen + dl > req->max_body) {
                    finish(req, "response too large");
                    return TG_DONE;
                }
                memmove(req->rb + req->blen, d, dl);
                req->blen += dl;
            }
            off += (size_t)used;
            if (used == 0) break;
        }
        size_t left = req->rlen - off;
        if (req->chunked.done) {
            complete(req, req->blen, req->resp.keepalive && left == 0);
            return TG_DONE;
        }
        memmove(req->rb + req->blen, req->rb + off, left);
        req->rlen = req->blen + left;
        return TG_AGAIN;
    }
    case BODY_CLOSE:
        if (req->rlen > req->max_body) {
            finish(req, "response too large");
            return TG_DONE;
        }
        return TG_AGAIN;
    }
    return TG_AGAIN;
}

static void on_eof(tg_httpc_req_t *req) {
    if (req->mode == BODY_CLOSE) {
        complete(req, req->rlen, 0);
        return;
    }
    if (req->mode == BODY_HEAD && stale_retry(req)) return;
    finish(req, "connection closed");
}

static void read_more(tg_httpc_req_t *req) {
    hconn_t *c = req->conn;
    for (int i = 0; i < TG_HTTPC_READS_PER_EVENT; i++) {
        size_t want;
        switch (req->mode) {
        case BODY_HEAD:
            if (req->rlen == req->rcap && grow(req, req->rcap ? req->rcap * 2 : TG_HTTPC_INITIAL_BUF) != TG_OK) {
                finish(req, "invalid response");
                return;
            }
            want = tg_min(req->rcap, (size_t)TG_HTTPC_MAX_HEAD) - req->rlen;
            break;
        case BODY_LENGTH:
            want = req->clen - req->rlen;   /* exactly the body, never beyond */
            break;
        default:
            if (req->rcap - req->rlen < TG_HTTPC_READ_CHUNK / 4
                && grow(req, req->rlen + TG_HTTPC_READ_CHUNK) != TG_OK) {
                finish(req, "response too large");
                return;
            }
            want = req->rcap - req->rlen;
        }
        ssize_t n = tg_io_read(c->fd, c->ssl, req->rb + req->rlen, want);
        if (n == TG_AGAIN) return;
        if (n < 0) {
            int e = c->ssl ? ECONNRESET : errno;
            if (req->mode == BODY_HEAD && stale_retry(req)) return;
            fail_errno(req, e);
            return;
        }
        if (n == 0) {
            on_eof(req);
            return;
        }
        req->got_bytes = 1;
        req->rlen += (size_t)n;
        if (process(req) != TG_AGAIN) return;
    }
    /* Out of reads for this event with plaintext still inside the SSL:
     * the socket may be empty, so come back on the next turn ourselves. */
    if (c->ssl && tg_tls_pending(c->ssl)) ev_feed_event(loop_of(req->hc), &c->io, EV_READ);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents) {
    hconn_t *c = io->data;
    tg_httpc_req_t *req = c->req;
    if (req == NULL) {
        /* Pooled and idle: the peer closed or sent something unasked. */
        pool_remove(c);
        conn_close(c);
        return;
    }
    if (req->state == ST_CONNECT) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err) {
            conn_close(c);
            req->conn = NULL;
            req->last_errno = err;
            if (try_next_errno(err)) connect_next(req);
            else fail_errno(req, err);
            return;
        }
        connected(req);
        return;
    }
    if (req->state == ST_HANDSHAKE) {
        handshake(req);
        return;
    }
    /* EXCHANGE: the answer may come before the request is all written. */
    if ((revents & EV_WRITE) && !req->sent && send_more(req) == TG_DONE) return;
    if (revents & EV_READ) read_more(req);
}

/* ---- FFI ---- */

/* The worker's client context for ca_file (NULL: the system bundle), made
 * at first use; NULL with the reason in err. */
static struct ssl_ctx_st *tls_ctx_for(tg_httpc_t *hc, const char *ca_file, int *index,
                                      char *err, size_t errlen) {
    for (int i = 0; i < hc->ntls; i++) {
        const char *f = hc->tls[i].ca_file;
        if ((f == NULL && ca_file == NULL) || (f && ca_file && strcmp(f, ca_file) == 0)) {
            *index = i;
            return hc->tls[i].ctx;
        }
    }
    if (hc->ntls == TG_HTTPC_TLS_CTX_MAX) {
        snprintf(err, errlen, "too many different ca_file values (at most %d)", TG_HTTPC_TLS_CTX_MAX - 1);
        return NULL;
    }
    struct ssl_ctx_st *ctx = tg_tls_client_ctx_new(ca_file, err, errlen);
    if (ctx == NULL) return NULL;
    hc->tls[hc->ntls].ca_file = ca_file ? tg_xstrdup(ca_file) : NULL;
    hc->tls[hc->ntls].ctx = ctx;
    *index = hc->ntls++;
    return ctx;
}

tg_httpc_req_t *tg_ffi_http_start(const char *host, size_t hlen, int port,
                                  const char *head, size_t headlen,
                                  const char *body, size_t bodylen,
                                  int flags, int timeout_ms, double max_body,
                                  const char *ca_file) {
    tg_worker_t *w = tg_lua_worker();
    if (w == NULL || w->httpc == NULL) return NULL;
    tg_lua_wait_t *wt = tg_lua_wait_begin();
    if (wt == NULL) return NULL;
    tg_httpc_t *hc = w->httpc;
    tg_httpc_req_t *req = tg_xcalloc(1, sizeof(*req));
    req->hc = hc;
    req->wt = wt;
    req->flags = (unsigned)flags;
    req->port = port;
    req->max_body = max_body < 0 ? 0 : max_body > (double)SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)max_body;
    tg_link_init(&req->dns_link);
    req->outlen = headlen + bodylen;
    req->out = tg_xmalloc(req->outlen ? req->outlen : 1);
    if (headlen) memcpy(req->out, head, headlen);
    if (bodylen) memcpy(req->out + headlen, body, bodylen);
    tg_link_insert(&hc->active, &req->link);
    reap_update(hc);
    ev_timer_init(&req->timer, timer_cb, (timeout_ms > 0 ? timeout_ms : 0) / 1000.0, 0.);
    req->timer.data = req;
    ev_timer_start(w->loop, &req->timer);

    int saved = hc->starting;
    hc->starting = 1;
    int trust = 0;
    if (hlen == 0 || hlen > TG_HTTPC_MAX_HOST || memchr(host, '\0', hlen) || port <= 0 || port > 65535) {
        finish(req, "invalid host");
    } else if ((flags & TG_HTTPC_TLS)
               && (req->tls_ctx = tls_ctx_for(hc, ca_file, &trust, req->errbuf, sizeof(req->errbuf))) == NULL) {
        finish(req, req->errbuf);
    } else {
        memcpy(req->host, host, hlen);
        req->host[hlen] = '\0';
        if (flags & TG_HTTPC_TLS)
            snprintf(req->key, sizeof(req->key), "s%c%d:%s:%d", (flags & TG_HTTPC_NO_VERIFY) ? 'n' : 'v',
                     trust, req->host, port);
        else
            snprintf(req->key, sizeof(req->key), "%s:%d", req->host, port);
        begin(req);
    }
    hc->starting = saved;
    return req;
}

const char *tg_ffi_http_error(const tg_httpc_req_t *h) { return h->err; }
int tg_ffi_http_status(const tg_httpc_req_t *h) { return h->resp.status; }
int tg_ffi_http_reused(const tg_httpc_req_t *h) { return h->was_reused; }

const tg_http_header_t *tg_ffi_http_headers(const tg_httpc_req_t *h, int *n) {
    *n = h->err ? 0 : h->resp.nheaders;
    return h->resp.headers;
}

const char *tg_ffi_http_body(const tg_httpc_req_t *h, size_t *len) {
    *len = h->err ? 0 : h->body_len;
    return *len ? h->rb : "";
}

void tg_ffi_http_free(tg_httpc_req_t *h) {
    if (h) req_free(h);
}

/* ---- life ---- */

tg_httpc_t *tg_httpc_new(tg_worker_t *w) {
    tg_httpc_t *hc = tg_xcalloc(1, sizeof(*hc));
    hc->worker = w;
    tg_link_init(&hc->active);
    tg_link_init(&hc->idle);
    tg_link_init(&hc->queries);
    pthread_mutex_init(&hc->mu, NULL);
    ev_prepare_init(&hc->reap, reap_cb);
    hc->reap.data = hc;
    ev_async_init(&hc->dns_async, dns_async_cb);
    hc->dns_async.data = hc;
    ev_async_start(w->loop, &hc->dns_async);
    ev_unref(w->loop);   /* the async watcher alone does not keep the loop alive */
    return hc;
}

void tg_httpc_free(tg_httpc_t *hc) {
    if (hc == NULL) return;
    struct ev_loop *loop = loop_of(hc);
    while (!tg_link_empty(&hc->active))
        abort_req(tg_link_data(hc->active.next, tg_httpc_req_t, link));
    while (!tg_link_empty(&hc->idle)) {
        hconn_t *c = tg_link_data(hc->idle.next, hconn_t, link);
        pool_remove(c);
        conn_close(c);
    }
    ev_prepare_stop(loop, &hc->reap);
    for (int i = 0; i < hc->ntls; i++) {
        tg_tls_ctx_free(hc->tls[i].ctx);
        free(hc->tls[i].ca_file);
    }
    hc->ntls = 0;
    ev_ref(loop);
    ev_async_stop(loop, &hc->dns_async);
    pthread_mutex_lock(&hc->mu);
    hc->closed = 1;
    int pending = !tg_link_empty(&hc->queries);
    pthread_mutex_unlock(&hc->mu);
    /* A lookup still running in glibc's thread owns its query until it
     * notifies; the worker is exiting, so those (and hc, whose mutex the
     * notification takes) are left to the process exit. */
    if (pending) return;
    pthread_mutex_destroy(&hc->mu);
    free(hc);
}
