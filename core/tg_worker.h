/*
 * tg_worker.h: one worker process: its event loop, the config snapshot it
 * serves, the listening sockets it accepts on, its upstream runtimes
 * (balancer state and connection pools), buffers and counters. Everything a
 * connection or request needs is reached from here; there is no other
 * global state in a worker.
 *
 * A worker never reloads: the master starts a new generation with the new
 * config and tells the old one to drain (SIGTERM): stop accepting, finish
 * in-flight requests with "Connection: close", close idle connections,
 * exit, or exit anyway when shutdown_timeout_ms passes.
 */
#ifndef TG_WORKER_H
#define TG_WORKER_H

#include "tg_core.h"
#include "tg_buf.h"
#include "tg_conf.h"
#include "tg_stats.h"

#include <ev.h>

typedef struct tg_conn_s     tg_conn_t;
typedef struct tg_request_s  tg_request_t;
typedef struct tg_upstream_s tg_upstream_t;
typedef struct tg_worker_s   tg_worker_t;

/* A listening socket inherited from the master. */
typedef struct {
    tg_worker_t *worker;
    int          fd;
    ev_io        io;
    uint16_t     port;        /* local port, for route narrowing */
    unsigned     admin:1;     /* serves the admin API, not routes */
    unsigned     redirect_https:1; /* answers every request with a 301 to https */
    uint16_t     https_port;  /* where redirect_https points */
    struct ssl_ctx_st *tls_ctx; /* TLS listener: its context (the config's) */
} tg_listener_t;

/* Intrusive doubly linked list of connections (for draining). */
typedef struct tg_link_s {
    struct tg_link_s *prev, *next;
} tg_link_t;

struct tg_worker_s {
    struct ev_loop     *loop;
    tg_conf_t          *conf;         /* reference held for the worker's life */
    int                 slot;         /* 0..N-1, stable across generations */
    unsigned            generation;
    tg_stats_t         *stats;        /* shared region; may be NULL in tests */
    tg_stats_worker_t  *my_stats;     /* this slot's entry (or a private one) */
    tg_stats_worker_t   local_stats;

    tg_listener_t      *listeners;
    int                 nlisteners;

    tg_upstream_t      *upstreams;    /* one per conf->upstreams[i] */
    int                 nupstreams;

    struct tg_lua_s    *lua;          /* the worker's Lua VM */
    struct tg_redis_s  *redis;        /* tg.redis connections (tg_redis.h) */
    struct tg_httpc_s  *httpc;        /* outgoing HTTP client (tg.http) */
    tg_buf_list_t       bufs;         /* read buffers */
    tg_link_t           conns;        /* all client connections */
    int                 nconns;

    unsigned            draining:1;
    ev_timer            drain_timer;  /* hard limit of the drain */
    ev_signal           sig_term, sig_int, sig_quit, sig_hup;
    ev_prepare          flush_prepare; /* access-log flush per loop turn */
    ev_check            accept_check;  /* re-enables accept after EMFILE */

    char                date[64];     /* cached "Date:" value, per second */
    ev_tstamp           date_at;
};

/* Runs a worker until it exits. listen_fds[i] matches conf->listens[i];
 * admin_fd is -1 without an admin listener. Returns the exit status. */
int tg_worker_run(tg_conf_t *conf, int slot, unsigned generation,
                  tg_stats_t *stats, const int *listen_fds, int admin_fd);

/* Starts a graceful drain (also used on SIGTERM). */
void tg_worker_drain(tg_worker_t *w);
/* Called when a connection closes; finishes a drain when none are left. */
void tg_worker_conn_closed(tg_worker_t *w);
/* The cached IMF-fixdate for Date headers (refreshed once a second). */
const char *tg_worker_date(tg_worker_t *w);

static inline void tg_link_init(tg_link_t *l) { l->prev = l->next = l; }
static inline void tg_link_insert(tg_link_t *head, tg_link_t *l) {
    l->next = head->next; l->prev = head; head->next->prev = l; head->next = l;
}
static inline void tg_link_remove(tg_link_t *l) {
    l->prev->next = l->next; l->next->prev = l->prev; l->prev = l->next = l;
}
static inline int tg_link_empty(const tg_link_t *head) { return head->next == head; }
#define tg_link_data(l, type, field) ((type *)((char *)(l) - offsetof(type, field)))

#endif
