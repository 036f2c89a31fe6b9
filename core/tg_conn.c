/*
 * tg_conn.c: client connections (see tg_conn.h).
 *
 * Reading a head: bytes are appended to the connection's buffer and the
 * strict parser (tg_http.c) is run over what has arrived; it remembers how
 * far it scanned, so a head sent one byte at a time costs linear time. A
 * complete head is handed to tg_request_start(), which copies it out of the
 * buffer; whatever follows it in the buffer is the body or the next
 * pipelined request.
 *
 * Pipelined requests are served one at a time, in order. When a request
 * finishes and bytes of the next are already buffered, the connection feeds
 * itself an event instead of recursing, so a long pipeline cannot grow the
 * stack and other connections get their turn.
 *
 * TLS listeners add a HANDSHAKE state before the first head, bounded by
 * the handshake timeout; reads and writes go through tg_io_*(). A client
 * that speaks plain HTTP to a TLS port gets a plain 400 saying so (nginx
 * does the same) and the connection closes; failed handshakes are logged
 * at info with OpenSSL's reason and closed.
 */
#include "tg_conn.h"
#include "tg_log.h"
#include "tg_pool.h"
#include "tg_request.h"
#include "tg_tls.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Accept at most this many connections per readiness event, so one busy
 * listener cannot starve the connections already accepted. */
#define TG_ACCEPT_BATCH 64

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void conn_process(tg_conn_t *c);
static void reject_head(tg_conn_t *c, int status, const char *detail);

/* Decrypted bytes waiting inside the SSL never make the socket readable:
 * while reads are watched, deliver them as a read event (a feed on a
 * watcher that is stopped before the callback runs is dropped by libev). */
static void feed_pending(tg_conn_t *c) {
    if (c->ssl && (c->events & EV_READ) && tg_tls_pending(c->ssl))
        ev_feed_event(c->worker->loop, &c->io, EV_READ);
}

void tg_conn_set_events(tg_conn_t *c, int events) {
    if (c->events == events) return;
    struct ev_loop *loop = c->worker->loop;
    ev_io_stop(loop, &c->io);
    c->events = events;
    if (events) {
        /* ev_io_modify, not ev_io_set: the fd is the same, and ev_io_set
         * would force an epoll_ctl (a failing ADD) on every restart. */
        ev_io_modify(&c->io, events);
        ev_io_start(loop, &c->io);
    }
    feed_pending(c);
}

/* Lazy timeouts (libev's advice for idle timers): a keep-alive connection
 * changes its timeout several times per request, and each stop/start is a
 * heap operation among every connection's timer. Here a new timeout only
 * records its deadline while the running timer fires no later than that
 * deadline; the callback then re-arms for what is left. Clearing (ms <= 0)
 * only forgets the deadline. The heap is touched when a timeout gets
 * shorter, or about once per timeout period. */
void tg_conn_set_timer(tg_conn_t *c, int ms) {
    struct ev_loop *loop = c->worker->loop;
    if (ms <= 0) {
        c->deadline = 0;
        return;
    }
    ev_tstamp at = ev_now(loop) + ms / 1000.0;
    c->deadline = at;
    if (ev_is_active(&c->timer) && c->timer_at <= at) return;
    ev_timer_stop(loop, &c->timer);
    ev_timer_set(&c->timer, ms / 1000.0, 0.);
    c->timer_at = at;
    ev_timer_start(loop, &c->timer);
}

/* In the timer callback: 1 when the connection's timeout has really
 * expired; otherwise re-arms for the rest (or stays off) and returns 0. */
static int conn_timeout_due(tg_conn_t *c) {
    struct ev_loop *loop = c->worker->loop;
    if (c->deadline == 0) return 0;
    ev_tstamp left = c->deadline - ev_now(loop);
    if (left > 0.001) {
        ev_timer_set(&c->timer, left, 0.);
        c->timer_at = c->deadline;
        ev_timer_start(loop, &c->timer);
        return 0;
    }
    c->deadline = 0;
    return 1;
}

void tg_conn_accept_cb(struct ev_loop *loop, ev_io *io, int revents) {
    tg_listener_t *ls = io->data;
    tg_worker_t *w = ls->worker;
    for (int i = 0; i < TG_ACCEPT_BATCH && !w->draining; i++) {
        struct sockaddr_storage sa;
        socklen_t salen = sizeof(sa);
        int fd = accept4(ls->fd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) {
                /* Out of descriptors: stop accepting until a connection
                 * closes (worker re-enables listeners then). */
                tg_log_error("accept() failed: %s; pausing accepts", strerror(errno));
                for (int k = 0; k < w->nlisteners; k++) ev_io_stop(loop, &w->listeners[k].io);
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        tg_conn_t *c = tg_xcalloc(1, sizeof(*c));
        c->worker = w;
        c->listener = ls;
        c->fd = fd;
        if (sa.ss_family == AF_INET) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
            inet_ntop(AF_INET, &s4->sin_addr, c->ip, sizeof(c->ip));
            c->port = ntohs(s4->sin_port);
        } else if (sa.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&sa;
            inet_ntop(AF_INET6, &s6->sin6_addr, c->ip, sizeof(c->ip));
            c->port = ntohs(s6->sin6_port);
        } else {
            strcpy(c->ip, "unix");
        }
        ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
        c->io.data = c;
        c->events = 0;
        ev_init(&c->timer, conn_timer_cb);
        c->timer.data = c;
        tg_link_insert(&w->conns, &c->link);
        w->nconns++;
        w->my_stats->connections_active++;
        w->my_stats->connections_total++;
        if (ls->tls_ctx) {
            c->ssl = tg_tls_server_new(ls->tls_ctx, fd);
            if (c->ssl == NULL) {
                tg_log_error("cannot start TLS for %s: out of memory", c->ip);
                tg_conn_close(c);
                continue;
            }
            c->state = TG_CONN_HANDSHAKE;
            tg_conn_set_events(c, EV_READ);
            tg_conn_set_timer(c, tg_tls_handshake_timeout(w->conf));
            continue;
        }
        /* The first request must arrive within header_timeout_ms. */
        c->state = TG_CONN_HEAD;
        tg_conn_set_events(c, EV_READ);
        tg_conn_set_timer(c, w->conf->limits.header_timeout_ms);
    }
}

void tg_conn_close(tg_conn_t *c) {
    tg_worker_t *w = c->worker;
    if (c->r) {
        tg_request_t *r = c->r;
        c->r = NULL;
        r->conn = NULL;
        tg_request_free(r);
    }
    ev_io_stop(w->loop, &c->io);
    ev_timer_stop(w->loop, &c->timer);
    tg_tls_free(c->ssl);
    tg_tls_peer_free(c->peer);
    close(c->fd);
    tg_buf_put(&w->bufs, c->rbuf);
    tg_wqueue_reset(&c->wq);
    tg_link_remove(&c->link);
    w->nconns--;
    w->my_stats->connections_active--;
    free(c);
    tg_worker_conn_closed(w);
}

ssize_t tg_conn_read(tg_conn_t *c) {
    if (c->rbuf == NULL) c->rbuf = tg_buf_get(&c->worker->bufs);
    tg_buf_t *b = c->rbuf;
    if (tg_buf_room(b) == 0) tg_buf_compact(b);
    if (tg_buf_room(b) == 0) return TG_AGAIN;   /* caller must consume first */
    ssize_t n = tg_io_read(c->fd, c->ssl, b->data + b->end, tg_buf_room(b));
    if (n > 0) {
        b->end += (size_t)n;
        feed_pending(c);
    }
    return n;
}

int tg_conn_peek(tg_conn_t *c) {
    if (c->ssl) return tg_tls_peek(c->ssl);
    char c1;
    ssize_t n = recv(c->fd, &c1, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return 1;
    if (n == 0) return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return TG_AGAIN;
    return 0;
}

void *tg_conn_peer(tg_conn_t *c) {
    if (c->ssl == NULL) return NULL;
    if (!c->peer_done) {
        c->peer = tg_tls_peer_cert(c->ssl);
        c->peer_done = 1;
    }
    return c->peer;
}

int tg_conn_send(tg_conn_t *c, const struct iovec *iov, int iovcnt) {
    int rc = tg_io_writev(&c->wq, c->fd, c->ssl, iov, iovcnt);
    if (rc == TG_AGAIN) {
        tg_conn_set_events(c, c->events | EV_WRITE);
        tg_conn_set_timer(c, c->worker->conf->limits.send_timeout_ms);
    }
    return rc;
}

/* How long a closing connection keeps reading (and discarding) what the
 * client still sends, so that closing with unread input does not reset the
 * connection before the client has read our last response (nginx's
 * lingering close). */
#define TG_LINGER_MS 2000
#define TG_LINGER_MAX_READS 64   /* bounded work per readiness event */

/* 1 when the client's input has bytes we have not read. */
static int input_pending(int fd) {
    char b;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/* Last response handed to the socket: once it is flushed, half-close, drain
 * the client's input for a while, then close. Like nginx's `lingering_close
 * on`, only when input may be left unread (an error, a body not read, bytes
 * buffered or arriving): a client that asked for Connection: close and sent
 * nothing more is closed at once, which saves a read, a timer and an
 * epoll round trip per connection. TLS connections always linger. */
static void linger_start(tg_conn_t *c) {
    tg_worker_t *w = c->worker;
    c->state = TG_CONN_LINGER;
    if (c->rbuf && tg_buf_len(c->rbuf) > 0) c->must_linger = 1;
    tg_buf_put(&w->bufs, c->rbuf);
    c->rbuf = NULL;
    if (!tg_wqueue_empty(&c->wq)) {
        tg_conn_set_events(c, EV_WRITE);
        tg_conn_set_timer(c, w->conf->limits.send_timeout_ms);
        return;
    }
    if (!c->must_linger && c->ssl == NULL && !input_pending(c->fd)) {
        tg_conn_close(c);
        return;
    }
    if (c->ssl) tg_tls_shutdown(c->ssl);   /* close_notify before the FIN */
    shutdown(c->fd, SHUT_WR);
    c->lingering = 1;
    tg_conn_set_events(c, EV_READ);
    tg_conn_set_timer(c, TG_LINGER_MS);
}

static void linger_read(tg_conn_t *c) {
    char sink[4096];
    for (int i = 0; i < TG_LINGER_MAX_READS; i++) {
        ssize_t n = read(c->fd, sink, sizeof(sink));
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        break;   /* EOF or error: the client is done */
    }
    tg_conn_close(c);
}

/* Sends a minimal error for a head that never became a request and closes
 * after it. No request exists, so this is logged here. detail, if any,
 * goes into the body as "message". */
static void reject_head(tg_conn_t *c, int status, const char *detail) {
    char buf[512];
    const char *reason = tg_http_status_text(status);
    char body[160];
    int blen = detail ? snprintf(body, sizeof(body), "{\"error\":\"%s\",\"message\":\"%s\"}", reason, detail)
                      : snprintf(body, sizeof(body), "{\"error\":\"%s\"}", reason);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                     status, reason, tg_worker_date(c->worker), blen, body);
    struct iovec iov = { buf, (size_t)n };
    if (detail) tg_log_info("rejected request head from %s: %d %s (%s)", c->ip, status, reason, detail);
    else tg_log_info("rejected request head from %s: %d %s", c->ip, status, reason);
    if (tg_access_log_enabled()) {
        /* One access-log line for every answer, even when there was no
         * request to speak of (nothing of the head is logged: unparsed). */
        char line[256];
        size_t pos = 0;
        time_t now = (time_t)ev_now(c->worker->loop);
        struct tm tm;
        gmtime_r(&now, &tm);
        pos += strftime(line, sizeof(line), "{\"time\":\"%Y-%m-%dT%H:%M:%SZ\",\"client_ip\":\"", &tm);
        tg_json_escape(line, sizeof(line) - 96, &pos, c->ip, strlen(c->ip));
        pos += (size_t)snprintf(line + pos, sizeof(line) - pos,
                                "\",\"status\":%d,\"bytes_sent\":%d,\"rejected\":true}", status, n);
        tg_access_log_append(line, tg_min(pos, sizeof(line) - 1));
    }
    tg_worker_t *w = c->worker;
    if (status >= 500) w->my_stats->status_5xx++; else w->my_stats->status_4xx++;
    w->my_stats->requests++;
    /* Whatever else the client sent is not a request: never parse it. */
    c->must_linger = 1;
    if (tg_conn_send(c, &iov, 1) == TG_ERROR) {
        tg_conn_close(c);
        return;
    }
    linger_start(c);
}

/* Parses whatever is buffered; starts a request when a head is complete. */
static void conn_process(tg_conn_t *c) {
    tg_worker_t *w = c->worker;
    static tg_http_request_t parsed;   /* scratch: one head is parsed at a time */
    tg_http_limits_t lim = {
        .max_head = w->conf->limits.max_header_bytes,
        .max_uri = w->conf->limits.max_uri_bytes,
        .max_headers = w->conf->limits.max_headers,
    };
    tg_buf_t *b = c->rbuf;
    if (b == NULL || tg_buf_len(b) == 0) return;
    if (c->state == TG_CONN_IDLE) {
        c->state = TG_CONN_HEAD;
        memset(&c->scan, 0, sizeof(c->scan));
        tg_conn_set_timer(c, w->conf->limits.header_timeout_ms);
    }
    int status = 0;
    int rc = tg_http_parse_request(&c->scan, b->data + b->start, tg_buf_len(b), &lim, &parsed, &status);
    if (rc == TG_AGAIN) {
        if (tg_buf_len(b) >= lim.max_head) {
            reject_head(c, 431, NULL);
            return;
        }
        return;
    }
    if (rc == TG_ERROR) {
        reject_head(c, status ? status : 400, NULL);
        return;
    }
    memset(&c->scan, 0, sizeof(c->scan));
    c->state = TG_CONN_REQUEST;
    tg_conn_set_timer(c, 0);
    tg_request_start(c, &parsed);
}

static void conn_read_head(tg_conn_t *c) {
    ssize_t n = tg_conn_read(c);
    if (n == TG_AGAIN) {
        if (c->rbuf && tg_buf_room(c->rbuf) == 0 && c->rbuf->start == 0) {
            reject_head(c, 431, NULL);
            return;
        }
        if (c->rbuf && tg_buf_len(c->rbuf) == 0 && c->state == TG_CONN_IDLE) {
            tg_buf_put(&c->worker->bufs, c->rbuf);
            c->rbuf = NULL;
        }
        return;
    }
    if (n == 0 || n == TG_ERROR) {
        /* Client went away (possibly mid-head: nothing to answer). */
        tg_conn_close(c);
        return;
    }
    conn_process(c);
}

/* Drives a TLS listener's handshake; on success the connection waits for
 * its first request head like a plain one. */
static void conn_handshake(tg_conn_t *c) {
    tg_worker_t *w = c->worker;
    char err[256];
    int events = 0;
    int rc = tg_tls_handshake(c->ssl, &events, err, sizeof(err));
    switch (rc) {
    case TG_AGAIN:
        tg_conn_set_events(c, events);
        return;
    case TG_OK:
        c->state = TG_CONN_HEAD;
        tg_conn_set_timer(c, w->conf->limits.header_timeout_ms);
        tg_conn_set_events(c, EV_READ);
        feed_pending(c);
        return;
    case TG_DECLINED:
        /* Answer in plain text: the client cannot read anything else. */
        tg_tls_free(c->ssl);
        c->ssl = NULL;
        c->state = TG_CONN_HEAD;
        reject_head(c, 400, "plain HTTP request sent to the HTTPS port");
        return;
    case TG_DONE:
        tg_conn_close(c);
        return;
    default:
        tg_log_info("TLS handshake with %s failed: %s", c->ip, err);
        tg_conn_close(c);
        return;
    }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents) {
    tg_conn_t *c = io->data;
    if (c->state == TG_CONN_HANDSHAKE) {
        conn_handshake(c);
        return;
    }
    if (revents & EV_WRITE) {
        int rc = tg_io_flush(&c->wq, c->fd, c->ssl);
        if (rc == TG_ERROR) {
            tg_conn_close(c);
            return;
        }
        if (rc == TG_OK) {
            tg_conn_set_events(c, c->events & ~EV_WRITE);
            if (c->state == TG_CONN_LINGER) {
                linger_start(c);
                return;
            }
            if (c->r) {
                /* The send timer guards a stalled client only: it is
                 * drained now (the request re-arms what it still waits for). */
                tg_conn_set_timer(c, 0);
                tg_request_client_writable(c->r);
                return;   /* c may be gone */
            }
            /* The previous response drained: read the next request. */
            tg_conn_set_events(c, EV_READ);
            if (c->rbuf && tg_buf_len(c->rbuf) > 0) {
                tg_conn_set_timer(c, c->worker->conf->limits.header_timeout_ms);
                conn_process(c);
            } else {
                c->state = TG_CONN_IDLE;
                tg_conn_set_timer(c, c->worker->conf->limits.keepalive_timeout_ms);
            }
            return;
        }
    }
    if (revents & (EV_READ | EV_CUSTOM)) {
        switch (c->state) {
        case TG_CONN_IDLE:
        case TG_CONN_HEAD:
            if (revents & EV_READ) conn_read_head(c);
            else conn_process(c);
            break;
        case TG_CONN_REQUEST:
            if (c->r) tg_request_client_readable(c->r);
            break;
        case TG_CONN_LINGER:
            if (c->lingering) linger_read(c);
            else tg_conn_set_events(c, c->events & ~EV_READ);
            break;
        case TG_CONN_HANDSHAKE:
            break;
        }
    }
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    tg_conn_t *c = t->data;
    if (!conn_timeout_due(c)) return;
    switch (c->state) {
    case TG_CONN_IDLE:
        tg_conn_close(c);
        break;
    case TG_CONN_HEAD:
        if (c->rbuf && tg_buf_len(c->rbuf) > 0) reject_head(c, 408, NULL);
        else tg_conn_close(c);
        break;
    case TG_CONN_HANDSHAKE:
        tg_log_info("TLS handshake with %s timed out", c->ip);
        tg_conn_close(c);
        break;
    case TG_CONN_REQUEST:
        if (c->r) tg_request_client_timeout(c->r);
        else tg_conn_close(c);
        break;
    case TG_CONN_LINGER:
        tg_conn_close(c);
        break;
    }
}

void tg_conn_request_done(tg_conn_t *c) {
    tg_worker_t *w = c->worker;
    c->r = NULL;
    c->nrequests++;
    if (c->close_after || w->draining) {
        linger_start(c);
        return;
    }
    c->state = TG_CONN_IDLE;
    memset(&c->scan, 0, sizeof(c->scan));
    if (!tg_wqueue_empty(&c->wq)) {
        /* Let the last response drain before reading the next request:
         * a client that pipelines without reading gets backpressure. */
        c->state = TG_CONN_HEAD;
        tg_conn_set_events(c, EV_WRITE);
        tg_conn_set_timer(c, w->conf->limits.send_timeout_ms);
        return;
    }
    if (c->rbuf && tg_buf_len(c->rbuf) > 0) {
        /* A pipelined request is already buffered. */
        c->state = TG_CONN_HEAD;
        tg_conn_set_timer(c, w->conf->limits.header_timeout_ms);
        tg_conn_set_events(c, EV_READ);
        ev_feed_event(w->loop, &c->io, EV_CUSTOM);
        return;
    }
    tg_buf_put(&w->bufs, c->rbuf);
    c->rbuf = NULL;
    tg_conn_set_events(c, EV_READ);
    tg_conn_set_timer(c, w->conf->limits.keepalive_timeout_ms);
}

void tg_conn_drain(tg_conn_t *c) {
    if (c->state == TG_CONN_IDLE || c->state == TG_CONN_HANDSHAKE) {
        tg_conn_close(c);
        return;
    }
    c->close_after = 1;
}
