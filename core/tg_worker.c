/*
 * tg_worker.c: a worker process's life (see tg_worker.h): set up the loop,
 * listeners and upstream runtimes from the snapshot, serve until told to
 * drain or stop, then release everything.
 */
#include "tg_worker.h"
#include "tg_conn.h"
#include "tg_httpc.h"
#include "tg_log.h"
#include "tg_lua.h"
#include "tg_pool.h"
#include "tg_redis.h"
#include "tg_upstream.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Idle read buffers a worker keeps for reuse; beyond this they are freed so
 * that a burst does not pin its peak memory forever. */
#define TG_WORKER_MAX_FREE_BUFS 256
/* A read buffer holds at least a whole request head. */
#define TG_WORKER_MIN_BUF (16 * 1024)

static void drain_timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    tg_worker_t *w = t->data;
    tg_log_warn("drain timeout: closing %d connection(s) still open", w->nconns);
    ev_break(loop, EVBREAK_ALL);
}

void tg_worker_drain(tg_worker_t *w) {
    if (w->draining) return;
    w->draining = 1;
    /* Close our copies of the listening sockets: the master and the next
     * generation hold their own, and a socket nobody else holds (graceful
     * stop, an address the new config dropped) must refuse new clients
     * rather than queue them. */
    for (int i = 0; i < w->nlisteners; i++) {
        ev_io_stop(w->loop, &w->listeners[i].io);
        close(w->listeners[i].fd);
        w->listeners[i].fd = -1;
    }
    tg_link_t *l = w->conns.next;
    while (l != &w->conns) {
        tg_link_t *next = l->next;
        tg_conn_drain(tg_link_data(l, tg_conn_t, link));
        l = next;
    }
    /* Pooled upstream connections are not needed any more. */
    for (int i = 0; i < w->nupstreams; i++) tg_upstream_close_idle(&w->upstreams[i]);
    if (w->nconns == 0) {
        ev_break(w->loop, EVBREAK_ALL);
        return;
    }
    ev_timer_init(&w->drain_timer, drain_timer_cb, w->conf->shutdown_timeout_ms / 1000.0, 0.);
    w->drain_timer.data = w;
    ev_timer_start(w->loop, &w->drain_timer);
    ev_unref(w->loop);
}

void tg_worker_conn_closed(tg_worker_t *w) {
    if (w->draining) {
        if (w->nconns == 0) ev_break(w->loop, EVBREAK_ALL);
        return;
    }
    /* Accepting may have been paused for lack of descriptors. */
    for (int i = 0; i < w->nlisteners; i++)
        if (w->listeners[i].fd >= 0 && !ev_is_active(&w->listeners[i].io))
            ev_io_start(w->loop, &w->listeners[i].io);
}

const char *tg_worker_date(tg_worker_t *w) {
    ev_tstamp now = ev_now(w->loop);
    if (now - w->date_at >= 1.0 || w->date[0] == '\0') {
        time_t t = (time_t)now;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(w->date, sizeof(w->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        w->date_at = (ev_tstamp)t;
    }
    return w->date;
}

static void sig_term_cb(struct ev_loop *loop, ev_signal *s, int revents) {
    tg_worker_t *w = s->data;
    tg_log_info("draining (generation %u)", w->generation);
    tg_worker_drain(w);
}

static void sig_stop_cb(struct ev_loop *loop, ev_signal *s, int revents) {
    ev_break(loop, EVBREAK_ALL);
}

static void sig_ignore_cb(struct ev_loop *loop, ev_signal *s, int revents) {
}

static void flush_prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents) {
    tg_access_log_flush();
}

static uint16_t local_port(int fd) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0) return 0;
    if (sa.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&sa)->sin_port);
    if (sa.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
    return 0;
}

int tg_worker_run(tg_conf_t *conf, int slot, unsigned generation,
                  tg_stats_t *stats, const int *listen_fds, int admin_fd) {
    tg_worker_t *w = tg_xcalloc(1, sizeof(*w));
    char role[32];
    snprintf(role, sizeof(role), "worker %d", slot);
    tg_log_set_role(role);
    w->loop = ev_default_loop(EVFLAG_AUTO);
    w->conf = tg_conf_ref(conf);
    w->slot = slot;
    w->generation = generation;
    w->stats = stats;
    w->my_stats = stats ? &stats->workers[slot] : &w->local_stats;
    tg_link_init(&w->conns);

    if (tg_access_log_open(conf->access_log_path) != TG_OK)
        tg_log_error("cannot open access log \"%s\": %m", conf->access_log_path);

    size_t bufsize = tg_max((size_t)TG_WORKER_MIN_BUF, conf->limits.max_header_bytes + 1);
    tg_buf_list_init(&w->bufs, bufsize, TG_WORKER_MAX_FREE_BUFS);

    w->nupstreams = conf->nupstreams;
    w->upstreams = tg_xcalloc((size_t)(conf->nupstreams ? conf->nupstreams : 1), sizeof(tg_upstream_t));
    for (int i = 0; i < conf->nupstreams; i++) tg_upstream_init(&w->upstreams[i], w, &conf->upstreams[i]);

    w->httpc = tg_httpc_new(w);   /* before the VM: timers may call out */
    /* Plugins enforce policy (auth, limits): without them the worker must
     * not serve, so a VM that fails to start stops the worker (fail closed;
     * the master restarts it with a back-off). */
    w->lua = tg_lua_new(conf, w);
    if (w->lua == NULL) {
        tg_log_crit("cannot start the Lua runtime; exiting");
        return 1;
    }
    /* Connects lazily, at the first tg.redis command. */
    w->redis = tg_redis_new(w);

    w->nlisteners = conf->nlistens + (admin_fd >= 0 ? 1 : 0);
    w->listeners = tg_xcalloc((size_t)w->nlisteners, sizeof(tg_listener_t));
    for (int i = 0; i < w->nlisteners; i++) {
        tg_listener_t *ls = &w->listeners[i];
        ls->worker = w;
        ls->fd = i < conf->nlistens ? listen_fds[i] : admin_fd;
        ls->admin = i >= conf->nlistens;
        ls->port = local_port(ls->fd);
        if (!ls->admin) {
            ls->tls_ctx = conf->listens[i].tls_ctx;
            ls->redirect_https = conf->listens[i].redirect_https;
            ls->https_port = conf->listens[i].https_port;
        }
        ev_io_init(&ls->io, tg_conn_accept_cb, ls->fd, EV_READ);
        ls->io.data = ls;
        ev_io_start(w->loop, &ls->io);
    }

    ev_signal_init(&w->sig_term, sig_term_cb, SIGTERM);
    ev_signal_init(&w->sig_int, sig_stop_cb, SIGINT);
    ev_signal_init(&w->sig_quit, sig_stop_cb, SIGQUIT);
    ev_signal_init(&w->sig_hup, sig_ignore_cb, SIGHUP);
    ev_signal *sigs[] = { &w->sig_term, &w->sig_int, &w->sig_quit, &w->sig_hup };
    for (size_t i = 0; i < tg_nelems(sigs); i++) {
        sigs[i]->data = w;
        ev_signal_start(w->loop, sigs[i]);
        ev_unref(w->loop);   /* signals alone do not keep the loop alive */
    }
    ev_prepare_init(&w->flush_prepare, flush_prepare_cb);
    ev_prepare_start(w->loop, &w->flush_prepare);
    ev_unref(w->loop);

    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (stats) {
        w->my_stats->pid = getpid();
        w->my_stats->generation = generation;
    }
    tg_log_info("started (generation %u, config version %u)", generation, conf->version);
    ev_run(w->loop, 0);

    /* Exit: close whatever is left (drain timeout or fast stop). */
    while (!tg_link_empty(&w->conns)) tg_conn_close(tg_link_data(w->conns.next, tg_conn_t, link));
    for (int i = 0; i < w->nupstreams; i++) tg_upstream_free(&w->upstreams[i]);
    tg_lua_free(w->lua);
    w->lua = NULL;
    /* After the VM: operations still pending complete without resuming. */
    tg_redis_free(w->redis);
    w->redis = NULL;
    tg_httpc_free(w->httpc);   /* after the VM: pending callouts resume nothing */
    w->httpc = NULL;
    tg_access_log_close();
    tg_log_info("exiting");
    return 0;
}
