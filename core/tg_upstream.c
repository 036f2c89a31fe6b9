/*
 * tg_upstream.c: upstream connections and their per-target pools (see
 * tg_upstream.h). An https target's connection carries its SSL through the
 * pool, so a reused connection skips the handshake; a new one offers the
 * target's last session for an abbreviated handshake.
 */
#include "tg_upstream.h"
#include "tg_log.h"
#include "tg_pool.h"
#include "tg_tls.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

void tg_upstream_init(tg_upstream_t *u, tg_worker_t *w, const tg_conf_upstream_t *conf) {
    memset(u, 0, sizeof(*u));
    u->worker = w;
    u->conf = conf;
    tg_balancer_init(&u->balancer, conf);
    u->pools = tg_xcalloc((size_t)conf->ntargets, sizeof(tg_upstream_pool_t));
    for (int i = 0; i < conf->ntargets; i++) tg_link_init(&u->pools[i].idle);
}

void tg_upstream_close_idle(tg_upstream_t *u) {
    if (u->pools == NULL) return;
    for (int i = 0; i < u->conf->ntargets; i++) {
        tg_upstream_pool_t *p = &u->pools[i];
        while (!tg_link_empty(&p->idle)) {
            tg_upconn_t *uc = tg_link_data(p->idle.next, tg_upconn_t, link);
            tg_link_remove(&uc->link);
            p->nidle--;
            tg_upstream_conn_close(uc);
        }
    }
}

void tg_upstream_free(tg_upstream_t *u) {
    if (u->pools == NULL) return;
    tg_upstream_close_idle(u);
    for (int i = 0; i < u->conf->ntargets; i++) tg_tls_session_free(u->pools[i].tls_session);
    free(u->pools);
    u->pools = NULL;
    tg_balancer_free(&u->balancer);
}

void tg_upstream_conn_close(tg_upconn_t *uc) {
    struct ev_loop *loop = uc->u->worker->loop;
    ev_io_stop(loop, &uc->io);
    ev_timer_stop(loop, &uc->timer);
    tg_tls_free(uc->ssl);
    if (uc->fd >= 0) close(uc->fd);
    tg_buf_put(&uc->u->worker->bufs, uc->buf);
    tg_wqueue_reset(&uc->wq);
    free(uc);
}

/* An idle pooled connection became readable: the peer closed it or sent
 * bytes nobody asked for. Either way it cannot be reused. */
static void idle_io_cb(struct ev_loop *loop, ev_io *io, int revents) {
    tg_upconn_t *uc = io->data;
    tg_upstream_pool_t *p = &uc->u->pools[uc->target];
    tg_link_remove(&uc->link);
    p->nidle--;
    tg_upstream_conn_close(uc);
}

static void idle_timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    idle_io_cb(loop, (ev_io *)&((tg_upconn_t *)t->data)->io, 0);
}

void tg_upstream_pool_put(tg_upconn_t *uc) {
    tg_upstream_t *u = uc->u;
    tg_worker_t *w = u->worker;
    tg_upstream_pool_t *p = &u->pools[uc->target];
    if (w->draining || u->conf->keepalive <= 0
        || uc->nrequests >= u->conf->keepalive_requests
        || (uc->ssl && tg_tls_pending(uc->ssl))) {   /* bytes nobody asked for */
        tg_upstream_conn_close(uc);
        return;
    }
    if (p->nidle >= u->conf->keepalive) {
        /* Full: drop the oldest, keep the one just used (it is warm). */
        tg_upconn_t *old = tg_link_data(p->idle.prev, tg_upconn_t, link);
        tg_link_remove(&old->link);
        p->nidle--;
        tg_upstream_conn_close(old);
    }
    tg_buf_put(&w->bufs, uc->buf);
    uc->buf = NULL;
    tg_wqueue_reset(&uc->wq);
    uc->data = NULL;
    ev_io_stop(w->loop, &uc->io);
    ev_timer_stop(w->loop, &uc->timer);
    /* Same fd as in use: switch callback and events without forcing an
     * epoll_ctl (ev_io_init would). */
    ev_set_cb(&uc->io, idle_io_cb);
    ev_io_modify(&uc->io, EV_READ);
    uc->io.data = uc;
    ev_io_start(w->loop, &uc->io);
    ev_timer_init(&uc->timer, idle_timer_cb, u->conf->keepalive_timeout_ms / 1000.0, 0.);
    uc->timer.data = uc;
    ev_timer_start(w->loop, &uc->timer);
    tg_link_insert(&p->idle, &uc->link);
    p->nidle++;
}

/* 1 when the socket has neither EOF nor stray data waiting. */
static int still_open(tg_upconn_t *uc) {
    char c;
    if (uc->ssl && tg_tls_pending(uc->ssl)) return 0;
    ssize_t n = recv(uc->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

tg_upconn_t *tg_upstream_pool_get(tg_upstream_t *u, int i) {
    tg_upstream_pool_t *p = &u->pools[i];
    while (!tg_link_empty(&p->idle)) {
        tg_upconn_t *uc = tg_link_data(p->idle.next, tg_upconn_t, link);
        tg_link_remove(&uc->link);
        p->nidle--;
        ev_io_stop(u->worker->loop, &uc->io);
        ev_timer_stop(u->worker->loop, &uc->timer);
        if (!still_open(uc)) {
            tg_upstream_conn_close(uc);
            continue;
        }
        uc->reused = 1;
        return uc;
    }
    return NULL;
}

tg_upconn_t *tg_upstream_connect(tg_upstream_t *u, int i) {
    const tg_conf_target_t *t = &u->conf->targets[i];
    int fd = socket(t->addr.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int rc = connect(fd, (const struct sockaddr *)&t->addr.addr, t->addr.addrlen);
    if (rc < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    tg_upconn_t *uc = tg_xcalloc(1, sizeof(*uc));
    tg_link_init(&uc->link);
    uc->u = u;
    uc->target = i;
    uc->fd = fd;
    uc->connected = rc == 0;
    if (t->tls) {
        uc->ssl = tg_tls_client_new(u->conf->tls_ctx, fd, t->tls_name, t->tls_name_ip, 1,
                                    &u->pools[i].tls_session);
        if (uc->ssl == NULL) {
            close(fd);
            free(uc);
            errno = ENOMEM;
            return NULL;
        }
        uc->handshaking = 1;
    }
    ev_init(&uc->io, NULL);
    ev_init(&uc->timer, NULL);
    return uc;
}

int tg_upstream_connect_finish(tg_upconn_t *uc) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(uc->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return TG_ERROR;
    if (err) {
        errno = err;
        return TG_ERROR;
    }
    uc->connected = 1;
    return TG_OK;
}

int tg_upstream_handshake(tg_upconn_t *uc, int *events, char *err, size_t errlen) {
    int rc = tg_tls_handshake(uc->ssl, events, err, errlen);
    if (rc == TG_OK) {
        uc->handshaking = 0;
        return TG_OK;
    }
    if (rc == TG_AGAIN) return TG_AGAIN;
    if (rc == TG_DONE) snprintf(err, errlen, "the server closed the connection");
    return TG_ERROR;
}
