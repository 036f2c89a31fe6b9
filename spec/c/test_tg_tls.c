/*
 * test_tg_tls.c: the TLS I/O layer (core/tg_tls.c) over a real TLS session
 * between two non-blocking sockets of a socketpair with small buffers, so
 * that writes block often: what tg_tls_writev queues after SSL_write says
 * "would block" must be exactly what the retry needs, and every byte must
 * arrive once, in order, whatever the iovec shapes. Also: plaintext left
 * inside the SSL is reported by tg_tls_pending, tg_tls_peek sees data and
 * close_notify, and a plain HTTP request to the server side is recognized.
 * The certificate is made in memory (no files).
 */
#include "tg_tls.h"
#include "tg_test.h"

#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

static SSL_CTX *server_ctx(void) {
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"test.local", -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_sign(x, key, EVP_sha256());
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate(ctx, x);
    SSL_CTX_use_PrivateKey(ctx, key);
    /* What tg_tls.c sets on listener contexts (the parts that matter here). */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

static SSL_CTX *client_ctx(void) {
    char err[256];
    SSL_CTX *ctx = tg_tls_client_ctx_new(NULL, err, sizeof(err));
    CHECK_MSG(ctx != NULL, "%s", err);
    return ctx;
}

static int sockbuf = 4096;   /* socket buffer sizes of the next pair */

static void small_nonblocking(int fd) {
    int sz = sockbuf;   /* the kernel doubles it; still far below what we send */
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

typedef struct {
    int      fds[2];
    SSL_CTX *sctx, *cctx;
    SSL     *server, *client;
} pair_t;

/* A connected pair with a finished handshake (no verification: the
 * certificate is self-signed and the name is not the point here). */
static int pair_open(pair_t *p) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, p->fds) != 0) return -1;
    small_nonblocking(p->fds[0]);
    small_nonblocking(p->fds[1]);
    p->sctx = server_ctx();
    p->cctx = client_ctx();
    p->server = tg_tls_server_new(p->sctx, p->fds[0]);
    p->client = tg_tls_client_new(p->cctx, p->fds[1], "test.local", 0, 0, NULL);
    char err[256];
    int ev, done_s = 0, done_c = 0;
    for (int i = 0; i < 1000 && !(done_s && done_c); i++) {
        if (!done_c) {
            int rc = tg_tls_handshake(p->client, &ev, err, sizeof(err));
            if (rc == TG_OK) done_c = 1;
            else if (rc != TG_AGAIN) { fprintf(stderr, "client handshake: %s\n", err); return -1; }
        }
        if (!done_s) {
            int rc = tg_tls_handshake(p->server, &ev, err, sizeof(err));
            if (rc == TG_OK) done_s = 1;
            else if (rc != TG_AGAIN) { fprintf(stderr, "server handshake: %s\n", err); return -1; }
        }
    }
    return done_s && done_c ? 0 : -1;
}

static void pair_close(pair_t *p) {
    tg_tls_free(p->server);
    tg_tls_free(p->client);
    SSL_CTX_free(p->sctx);
    tg_tls_ctx_free(p->cctx);
    close(p->fds[0]);
    close(p->fds[1]);
}

/* Deterministic bytes: position i holds f(i), so order and gaps show. */
static unsigned char byte_at(size_t i) { return (unsigned char)((i * 131u + (i >> 8)) & 0xff); }

/* Sends `total` bytes as iovecs of varied shapes (tiny pieces that get
 * gathered, pieces larger than a record, empty ones) through
 * tg_tls_writev / tg_tls_flush while the other side reads `step` bytes at
 * a time. With small socket buffers a write blocks inside its first
 * record; with larger ones it blocks after some records of an iovec. */
static void test_writev_under_pressure(int bufsize, size_t step) {
    sockbuf = bufsize;
    pair_t p;
    if (pair_open(&p) != 0) { CHECK(!"handshake"); return; }
    const size_t total = 3 * 1024 * 1024 + 77;
    unsigned char *src = malloc(total), *dst = malloc(total);
    for (size_t i = 0; i < total; i++) src[i] = byte_at(i);
    static const size_t shapes[] = { 3, 0, 5, 40000, 1, 16384, 2, 700, 16383, 16385, 9 };
    tg_wqueue_t q = { 0 };
    size_t sent = 0, got = 0, shape = 0;
    int again = 0, rounds = 0;
    while (got < total && rounds++ < 2000000) {
        if (sent < total && tg_wqueue_empty(&q)) {
            struct iovec iov[6];
            int n = 0;
            for (; n < 6 && sent < total; n++) {
                size_t len = tg_min(shapes[shape++ % tg_nelems(shapes)], total - sent);
                iov[n] = (struct iovec){ src + sent, len };
                sent += len;
            }
            int rc = tg_tls_writev(p.server, &q, iov, n);
            CHECK(rc != TG_ERROR);
            if (rc == TG_ERROR) break;
            if (rc == TG_AGAIN) again++;
        } else if (!tg_wqueue_empty(&q)) {
            if (tg_tls_flush(p.server, &q) == TG_ERROR) { CHECK(!"flush failed"); break; }
        }
        /* The reader takes little at a time. */
        ssize_t n = tg_tls_read(p.client, (char *)dst + got, tg_min(step, total - got));
        if (n > 0) got += (size_t)n;
        else CHECK_MSG(n == TG_AGAIN, "read returned %zd", n);
    }
    CHECK_INT(got, total);
    CHECK(again > 10);                        /* the queue path really ran */
    CHECK(memcmp(src, dst, total) == 0);
    CHECK(tg_wqueue_empty(&q));
    tg_wqueue_reset(&q);
    free(src);
    free(dst);
    pair_close(&p);
}

static void test_pending_and_peek(void) {
    pair_t p;
    if (pair_open(&p) != 0) { CHECK(!"handshake"); return; }
    char msg[1000], buf[1000];
    for (size_t i = 0; i < sizeof(msg); i++) msg[i] = (char)byte_at(i);
    CHECK_INT(tg_tls_peek(p.server), TG_AGAIN);          /* nothing yet */
    CHECK_INT(tg_tls_write(p.client, msg, sizeof(msg)), sizeof(msg));
    CHECK_INT(tg_tls_peek(p.server), 1);                  /* data, not consumed */
    CHECK_INT(tg_tls_read(p.server, buf, 10), 10);        /* one record, read in part */
    CHECK_INT(tg_tls_pending(p.server), 1);               /* the rest waits in the SSL */
    char probe;
    CHECK(recv(p.fds[0], &probe, 1, MSG_PEEK | MSG_DONTWAIT) < 0);   /* ...not in the socket */
    CHECK_INT(tg_tls_read(p.server, buf + 10, sizeof(buf) - 10), sizeof(buf) - 10);
    CHECK(memcmp(buf, msg, sizeof(msg)) == 0);
    CHECK_INT(tg_tls_pending(p.server), 0);
    tg_tls_shutdown(p.client);                            /* close_notify */
    CHECK_INT(tg_tls_peek(p.server), 0);
    CHECK_INT(tg_tls_read(p.server, buf, sizeof(buf)), 0);
    pair_close(&p);
}

static void test_plain_http_to_server(void) {
    int fds[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
    small_nonblocking(fds[0]);
    SSL_CTX *ctx = server_ctx();
    SSL *s = tg_tls_server_new(ctx, fds[0]);
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_INT(write(fds[1], req, sizeof(req) - 1), sizeof(req) - 1);
    char err[256];
    int ev = 0;
    CHECK_INT(tg_tls_handshake(s, &ev, err, sizeof(err)), TG_DECLINED);
    tg_tls_free(s);
    close(fds[0]);
    close(fds[1]);
    /* a peer that goes away without a word: TG_DONE, nothing to log */
    socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
    small_nonblocking(fds[0]);
    s = tg_tls_server_new(ctx, fds[0]);
    close(fds[1]);
    int rc = tg_tls_handshake(s, &ev, err, sizeof(err));
    CHECK_MSG(rc == TG_DONE, "rc %d (%s)", rc, rc == TG_ERROR ? err : "");
    tg_tls_free(s);
    SSL_CTX_free(ctx);
    close(fds[0]);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* as in the workers */
    test_writev_under_pressure(4096, 1500);
    test_writev_under_pressure(65536, 20000);
    test_writev_under_pressure(65536, 1500);
    sockbuf = 4096;
    test_pending_and_peek();
    test_plain_http_to_server();
    TG_TEST_DONE();
}
