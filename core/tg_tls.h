/*
 * tg_tls.h: TLS on both sides of the gateway (OpenSSL 3), driven by the
 * worker's event loop: termination at TLS listeners (certificates picked by
 * SNI, ALPN http/1.1, TLS 1.2+, session resumption, optional client
 * certificates) and TLS to https:// upstream targets (verified against the
 * system CA bundle or a ca_file, SNI, optional client certificate).
 *
 * Contexts are built from the config snapshot when it loads, in the
 * master, so `tollgate -t` and a reload reject a bad certificate before any
 * worker sees it; workers inherit them across fork(), and a reload builds
 * new ones for the new generation. The snapshot owns them
 * (tg_tls_conf_free, from tg_conf_unref); an SSL holds its own reference to
 * its context, so a connection may outlive nothing it needs.
 *
 * I/O: a connection with an SSL goes through tg_tls_read / tg_tls_writev /
 * tg_tls_flush, a plain one through read() and the write queue as before;
 * tg_io_*() pick one, so plain connections pay one pointer test. The write
 * queue keeps its meaning: what SSL_write does not take is queued, and the
 * queue's bytes are exactly what the next SSL_write must retry with.
 *
 * One thing differs from a plain socket: a TLS record is decrypted whole,
 * so after a read that filled the caller's buffer, plaintext may wait
 * inside the SSL while the socket itself is empty, and epoll would never
 * say so. tg_tls_pending() tells; the connection and upstream code feed
 * themselves a read event whenever they watch for reads while it is true.
 */
#ifndef TG_TLS_H
#define TG_TLS_H

#include "tg_core.h"
#include "tg_buf.h"
#include "tg_conf.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

struct ssl_st;        /* OpenSSL's SSL */
struct ssl_ctx_st;    /* OpenSSL's SSL_CTX */

/* ---- configuration ---- */

typedef struct tg_tls_conf_s tg_tls_conf_t;   /* conf->tls_rt */

/* Loads every certificate, key and CA file conf names and builds the server
 * context of each TLS listener (listens[i].tls_ctx) and the client context
 * of each upstream with https targets (upstreams[i].tls_ctx). Each problem
 * goes into errs with its YAML path, the file and OpenSSL's reason
 * ("tls.certificates[1].key: cannot load \"/x/b.key\": no such file or
 * directory"); returns how many. What was built is released by
 * tg_tls_conf_free(), also after errors. */
int tg_tls_conf_build(tg_conf_t *conf, tg_conf_errors_t *errs);
void tg_tls_conf_free(tg_conf_t *conf);

/* How long a client may take to complete its handshake. */
static inline int tg_tls_handshake_timeout(const tg_conf_t *conf) {
    return conf->tls.handshake_timeout_ms ? conf->tls.handshake_timeout_ms
                                          : conf->limits.header_timeout_ms;
}

/* ---- connections ---- */

/* A server-side SSL for an accepted socket; NULL when out of memory. */
struct ssl_st *tg_tls_server_new(struct ssl_ctx_st *ctx, int fd);
/* A client-side SSL for a connected socket to the server `name` (sent as
 * SNI unless name_is_ip; the certificate is checked against it when the
 * context verifies and `verify` is 1; verify 0 turns checking off for this
 * connection). session_slot, if not NULL, is where the worker keeps the
 * last session of that server: it is offered for resumption, and the slot
 * is updated when the server issues a new one (the slot must outlive the
 * SSL). NULL when out of memory. */
struct ssl_st *tg_tls_client_new(struct ssl_ctx_st *ctx, int fd, const char *name, int name_is_ip,
                                 int verify, void **session_slot);

/* A standalone client context (tg.http): TLS 1.2+, ALPN http/1.1,
 * verifying against ca_file, or the system CA bundle when it is NULL.
 * NULL with the reason in err. Free with tg_tls_ctx_free. */
struct ssl_ctx_st *tg_tls_client_ctx_new(const char *ca_file, char *err, size_t errlen);
void tg_tls_ctx_free(struct ssl_ctx_st *ctx);

/* Advances the handshake. TG_OK: done. TG_AGAIN: wait for *events
 * (EV_READ or EV_WRITE) and call again. TG_DECLINED: the peer spoke plain
 * HTTP to a TLS port (server side; nothing was written). TG_DONE: the peer
 * closed without a word (nothing worth logging). TG_ERROR: failed, err says
 * why ("certificate verify failed: hostname mismatch"). */
int tg_tls_handshake(struct ssl_st *ssl, int *events, char *err, size_t errlen);

/* Like read(2): bytes (> 0), 0 at the end of the stream (close_notify, or
 * the peer closed the socket), TG_AGAIN, TG_ERROR. */
ssize_t tg_tls_read(struct ssl_st *ssl, char *buf, size_t len);
/* One SSL_write: bytes taken (> 0), TG_AGAIN or TG_ERROR. After TG_AGAIN
 * the next call must pass the same bytes again (at least as many). */
int tg_tls_write(struct ssl_st *ssl, const char *p, size_t n);
/* tg_wqueue_writev / tg_wqueue_flush over TLS (same results). */
int tg_tls_writev(struct ssl_st *ssl, tg_wqueue_t *q, const struct iovec *iov, int iovcnt);
int tg_tls_flush(struct ssl_st *ssl, tg_wqueue_t *q);
/* 1 when decrypted bytes wait inside the SSL (see above). */
int tg_tls_pending(const struct ssl_st *ssl);
/* Whether the peer is still there, without consuming application data:
 * 1 bytes are waiting, 0 the peer closed or the connection failed,
 * TG_AGAIN nothing yet. */
int tg_tls_peek(struct ssl_st *ssl);
/* Sends close_notify once, if the connection is healthy (non-blocking;
 * best effort). */
void tg_tls_shutdown(struct ssl_st *ssl);
/* tg_tls_shutdown, then frees the SSL. NULL is ignored. */
void tg_tls_free(struct ssl_st *ssl);
/* Frees a session kept in a session slot. NULL is ignored. */
void tg_tls_session_free(void *session);
/* 1 when the handshake resumed a session. */
int tg_tls_session_reused(const struct ssl_st *ssl);

/* The verified client certificate of a server-side connection, as text:
 * RFC 2253 subject and issuer, serial in hex, SHA-256 fingerprint in
 * lowercase hex. One malloc'ed block (tg_tls_peer_free); NULL when the
 * client sent none (or it did not verify). */
typedef struct {
    char *subject;
    char *issuer;
    char *serial;
    char *fingerprint_sha256;
} tg_tls_peer_t;
tg_tls_peer_t *tg_tls_peer_cert(struct ssl_st *ssl);
static inline void tg_tls_peer_free(tg_tls_peer_t *p) { free(p); }

/* ---- one I/O path for plain and TLS sockets ---- */

static inline ssize_t tg_io_read(int fd, struct ssl_st *ssl, char *buf, size_t len) {
    if (ssl) return tg_tls_read(ssl, buf, len);
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return TG_AGAIN;
        return TG_ERROR;
    }
}

static inline int tg_io_writev(tg_wqueue_t *q, int fd, struct ssl_st *ssl,
                               const struct iovec *iov, int iovcnt) {
    return ssl ? tg_tls_writev(ssl, q, iov, iovcnt) : tg_wqueue_writev(q, fd, iov, iovcnt);
}

static inline int tg_io_flush(tg_wqueue_t *q, int fd, struct ssl_st *ssl) {
    return ssl ? tg_tls_flush(ssl, q) : tg_wqueue_flush(q, fd);
}

#endif
