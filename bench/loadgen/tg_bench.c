/*
 * tg_bench.c: the benchmark load client. One libev process that speaks
 * HTTP/1.1 to one server on loopback and prints one JSON object.
 *
 * Why not only wrk: wrk is closed-loop. Each connection sends its next
 * request when the previous answer arrives, so when the server stalls the
 * client stops sending, and the stall shows up as a single slow request
 * instead of the hundreds that a real client population would have queued
 * behind it ("coordinated omission"). The open-loop mode here fixes the
 * schedule in advance: request i is due at T0 + i / rate, whatever happened
 * before. A due request goes out on a free connection; when none is free it
 * waits in a backlog, and its latency is counted from the time it was due,
 * not from the time it was finally sent. Wake-ups come from a timerfd with
 * a 1 ns timer slack (libev's own timers round to the millisecond through
 * epoll_wait), and every request already due at a wake-up is sent at once.
 *
 * Latencies go into log-linear buckets (HdrHistogram's layout): exact below
 * 256 ns, then 128 linear sub-buckets per power of two, so every recorded
 * value is within 0.8% of the truth and the histogram is a fixed 59 KiB. A
 * percentile is reported as the upper edge of its bucket (never flattering).
 *
 * Modes:
 *   --rate R            open loop at R requests/s (the latency mode)
 *   (no --rate)         closed loop: every connection sends back to back
 *                       (max-throughput mode when wrk is not installed, and
 *                       the Connection: close runs, which wrk handles badly)
 *   --idle N --hold S   open N keep-alive connections, one request on each,
 *                       print the JSON once all have answered, then hold
 *                       them idle S seconds (the harness measures the
 *                       server's memory meanwhile) and close them.
 *   --tls [--sni NAME]  any of the above over TLS (OpenSSL, no certificate
 *                       verification: the bench's certificate is self-signed).
 *                       A connection handshakes once when it is set up; with
 *                       --close that is once per request, resumed from the
 *                       last session the server gave us.
 *
 * Only loopback targets are accepted: this tool exists to load servers we
 * start ourselves on this machine.
 *
 * Out-of-memory policy: a load client that cannot allocate has nothing
 * useful to report; it exits with a message.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ev.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Bounds. */
#define BENCH_MAX_CONNS       60000              /* -c / --idle: one fd each */
#define BENCH_BUF             (16 * 1024)        /* per-connection read buffer; a response head must fit */
#define BENCH_MAX_DURATION    600.0              /* -d: ten minutes is more than any cell needs */
#define BENCH_MAX_RATE        2000000.0          /* --rate */
#define BENCH_BACKLOG         (1 << 20)          /* due-but-unsent requests remembered; more is an overload error */
#define BENCH_MAX_HEADERS     64                 /* -H options */
#define BENCH_MAX_VARY        1000000            /* --vary-file lines */
#define BENCH_DRAIN_MAX_S     5.0                /* open loop: how long in-flight requests may finish after the schedule ends */
#define BENCH_CONNECTING_MAX  512                /* idle mode: connections being set up at once */
#define BENCH_READS_PER_EVENT 16                 /* read() calls per readiness event */
#define BENCH_MAX_WATCH       64                 /* --watch-pids */
#define BENCH_TLS_RECORD      SSL3_RT_MAX_PLAIN_LENGTH  /* --tls: a request goes out as one record */

/* Histogram: values in ns; SUB_BITS of mantissa per power of two. */
#define H_SUB_BITS   7
#define H_SUB        (1 << H_SUB_BITS)
#define H_BUCKETS    ((64 - H_SUB_BITS) * H_SUB + 2 * H_SUB)

typedef struct {
    uint64_t counts[H_BUCKETS];
    uint64_t total, max, min;
    double   sum;
} hist_t;

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * H_SUB)
        return (unsigned)v;
    unsigned e = 63 - (unsigned)__builtin_clzll(v);   /* >= H_SUB_BITS + 1 */
    unsigned k = e - H_SUB_BITS;
    return (k << H_SUB_BITS) + (unsigned)(v >> k);
}

/* Highest value that lands in bucket b (HdrHistogram's "highest equivalent"). */
static uint64_t hist_upper(unsigned b)
{
    if (b < 2 * H_SUB)
        return b;
    unsigned k = (b >> H_SUB_BITS) - 1;
    uint64_t m = b - ((uint64_t)k << H_SUB_BITS);
    return ((m + 1) << k) - 1;
}

static void hist_record(hist_t *h, uint64_t v)
{
    unsigned i = hist_index(v);
    if (i >= H_BUCKETS)
        i = H_BUCKETS - 1;
    h->counts[i]++;
    h->total++;
    h->sum += (double)v;
    if (v > h->max) h->max = v;
    if (h->total == 1 || v < h->min) h->min = v;
}

static uint64_t hist_percentile(const hist_t *h, double p)
{
    if (h->total == 0)
        return 0;
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->total);
    if (want < 1) want = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t u = hist_upper(i);
            return u > h->max ? h->max : u;
        }
    }
    return h->max;
}

/* ------------------------------------------------------------------------ */

enum { C_DISCONNECTED, C_CONNECTING, C_HANDSHAKE, C_IDLE, C_BUSY };
enum { P_HEAD, P_BODY_CL, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_CRLF, P_TRAILERS, P_UNTIL_EOF, P_DONE };
enum { E_CONNECT, E_RESET, E_EOF, E_TIMEOUT, E_PARSE, E_INCOMPLETE, E_OVERLOAD, E_COUNT };
static const char *error_names[E_COUNT] = { "connect", "reset", "eof", "timeout", "parse", "incomplete", "overload" };

typedef struct conn conn_t;
struct conn {
    ev_io     io;
    ev_timer  tmo;
    int       fd;
    SSL      *ssl;           /* --tls: this connection's TLS state, else NULL */
    int       state;
    int       id;
    uint64_t  intended;      /* ns: when this request was due */
    uint64_t  sent;          /* ns: when its first byte went out */
    int       has_req;
    int       reused;        /* the connection served a request before this one */
    int       retried;       /* this request already got its one retry */
    int       got_bytes;     /* some response byte arrived */
    unsigned  vary;          /* --vary-file line of this request */
    struct iovec iov[3];
    int       iovcnt;
    size_t    to_write;
    char     *buf;
    size_t    pos, len;
    int       pstate;
    int64_t   remaining;
    int       status;
    int       resp_close;
    conn_t   *next_free;
};

static struct {
    struct ev_loop *loop;
    const char *host;
    int         port;
    const char *path;
    char       *prefix;  size_t prefix_len;     /* request line + fixed headers */
    char      **vary;    size_t *vary_len; unsigned nvary;
    int         nconns;
    double      duration;
    double      rate;
    uint64_t    max_responses;
    int         close_each;
    double      timeout_s;
    int         idle_n;
    double      hold_s;
    int         tls;
    const char *sni;
    SSL_CTX    *tls_ctx;          /* one for every connection */
    SSL_SESSION *tls_session;     /* the newest session the server gave us: new connections resume it */
    int         tls_reported;     /* the first TLS failure was printed */
    struct sockaddr_storage addr; socklen_t addrlen;

    conn_t     *conns;
    conn_t     *free_list;        /* connections with no request: idle keep-alive or disconnected */
    uint64_t   *backlog;          /* ring of due times */
    size_t      bl_head, bl_len;

    uint64_t    t0, t_end, interval_ns, next_i, total_sched;
    int         sched_done;
    int         tfd;
    ev_io       tfd_io;
    ev_timer    stop_timer;
    ev_signal   sigterm, sigint;
    int         finishing;

    hist_t      lat, lag;
    uint64_t    sent, responses, ok, st[6], errors[E_COUNT], retries, connects, extra_bytes;
    uint64_t    last_done;
    unsigned    vary_next;
    int         in_flight;
    int         connecting;
    int         idle_done, idle_ready;
    int         preconnect_pending;
    ev_timer    preconnect_timer;
    uint64_t    idle_closed_by_server;
    int         watch_pids[BENCH_MAX_WATCH];
    int         nwatch;
    long long   watch_t0, watch_t1;      /* summed utime+stime ticks at the window's edges */
    uint64_t    watch_ns0, watch_ns1;
} B;

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tg-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) die("out of memory");
    return p;
}

static void conn_dispatch(conn_t *c, uint64_t intended);
static void idle_progress(void);

/* --watch-pids: the server's CPU time (utime + stime from /proc/PID/stat,
 * in clock ticks) over exactly the measured window, so connection set-up
 * before T0 and tear-down after it are not charged to the requests. */
static long long watch_ticks(void)
{
    long long total = 0;
    for (int i = 0; i < B.nwatch; i++) {
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", B.watch_pids[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = 0;
        char *p = strrchr(buf, ')');          /* the command name may hold spaces */
        if (!p) continue;
        unsigned long long ut = 0, st = 0;
        /* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
        if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
            total += (long long)(ut + st);
    }
    return total;
}

static void watch_mark(int end)
{
    if (!B.nwatch) return;
    if (end) { B.watch_t1 = watch_ticks(); B.watch_ns1 = now_ns(); }
    else { B.watch_t0 = watch_ticks(); B.watch_ns0 = now_ns(); }
}
static void conn_available(conn_t *c);
static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void tls_close(conn_t *c);

static int is_open(void) { return B.rate > 0; }
static int is_idle_mode(void) { return B.idle_n > 0; }

static void conn_close(conn_t *c)
{
    if (c->ssl)
        tls_close(c);
    if (c->fd >= 0) {
        ev_io_stop(B.loop, &c->io);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == C_CONNECTING)
        B.connecting--;
    c->state = C_DISCONNECTED;
    c->reused = 0;
    c->pos = c->len = 0;
}

static void watch(conn_t *c, int events)
{
    if (c->io.events == events && ev_is_active(&c->io))
        return;
    ev_io_stop(B.loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(B.loop, &c->io);
}

/* ------------------------------------------------------------------------
 * --tls. OpenSSL runs on the same non-blocking sockets and libev watchers:
 * when an SSL call cannot go on, SSL_get_error() says which direction it
 * waits for and the watcher is pointed there; the call is repeated on the
 * next event (io_cb decides which call from the connection's state).
 */

/* The client session cache: OpenSSL hands over every session the server
 * issues (TLS 1.3 tickets arrive after the handshake, inside SSL_read), and
 * the newest one is what the next new connection offers to resume. */
static int tls_new_session(SSL *ssl, SSL_SESSION *sess)
{
    (void)ssl;
    SSL_SESSION_free(B.tls_session);
    B.tls_session = sess;
    return 1;                               /* we keep the reference */
}

static void tls_init(void)
{
    B.tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!B.tls_ctx)
        die("--tls: cannot create an OpenSSL context (error %lu)", ERR_get_error());
    /* The bench's certificate is self-signed, and what is measured is the
     * server's work, not whether we trust it. */
    SSL_CTX_set_verify(B.tls_ctx, SSL_VERIFY_NONE, NULL);
    /* A server that closes a keep-alive connection without close_notify
     * ends the stream, as a FIN does over plain TCP; not an error. */
    SSL_CTX_set_options(B.tls_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* A write that had to wait is retried from a new copy of the same bytes. */
    SSL_CTX_set_mode(B.tls_ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(B.tls_ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(B.tls_ctx, tls_new_session);
}

/* After an SSL call failed with SSL_get_error() == err: 1 when OpenSSL only
 * waits for the socket (the watcher now waits for that direction), 0 when
 * the connection is broken. */
static int tls_want(conn_t *c, int err)
{
    if (err == SSL_ERROR_WANT_READ) { watch(c, EV_READ); return 1; }
    if (err == SSL_ERROR_WANT_WRITE) { watch(c, EV_WRITE); return 1; }
    return 0;
}

/* A failed handshake counts as a connect error. The first one is printed
 * too, with OpenSSL's reason (no TLS on that port, no common cipher...),
 * which the counts cannot tell; the rest are only counted. */
static void tls_report_handshake_failure(int err)
{
    if (!B.tls_reported) {
        char why[256];
        unsigned long e = ERR_peek_last_error();
        if (e)
            ERR_error_string_n(e, why, sizeof why);
        else if (err == SSL_ERROR_SYSCALL && errno)
            snprintf(why, sizeof why, "%s", strerror(errno));
        else
            snprintf(why, sizeof why, "the server closed the connection (SSL error %d)", err);
        fprintf(stderr, "tg-bench: TLS handshake with %s:%d failed: %s (later failures are only counted)\n",
                B.host, B.port, why);
        B.tls_reported = 1;
    }
    ERR_clear_error();      /* a stale error would make the next SSL_get_error() lie */
}

/* close_notify (one non-blocking try) before SSL_free: a clean end for the
 * server, and OpenSSL marks the session of a connection freed without a
 * shutdown not resumable, which would spoil resumption for the others. */
static void tls_close(conn_t *c)
{
    if (SSL_is_init_finished(c->ssl))
        SSL_shutdown(c->ssl);
    ERR_clear_error();                      /* e.g. EPIPE: the server closed first */
    SSL_free(c->ssl);
    c->ssl = NULL;
}

/* read(2) for either kind of connection: > 0 bytes, 0 at the end of the
 * stream, -1 with errno EAGAIN when the watcher now waits for the socket
 * (over TLS, possibly for writability), else another errno. */
static ssize_t conn_recv(conn_t *c, char *buf, size_t len)
{
    if (!c->ssl)
        return read(c->fd, buf, len);
    int n = SSL_read(c->ssl, buf, (int)len);        /* len <= BENCH_BUF */
    if (n > 0)
        return n;
    int err = SSL_get_error(c->ssl, n);
    if (tls_want(c, err)) {
        errno = EAGAIN;
        return -1;
    }
    ERR_clear_error();
    if (err == SSL_ERROR_ZERO_RETURN)
        return 0;
    errno = ECONNRESET;
    return -1;
}

static void request_end(conn_t *c)
{
    c->has_req = 0;
    ev_timer_stop(B.loop, &c->tmo);
    B.in_flight--;
}

static void request_failed(conn_t *c, int err)
{
    /* A keep-alive connection the server closed just as we reused it: no
     * response byte came back, so retry once on a fresh connection, as
     * every HTTP client library does. Anything else is an error. */
    int retry = (err == E_EOF || err == E_RESET) && c->reused && !c->got_bytes && !c->retried;
    conn_close(c);
    if (retry) {
        B.retries++;
        c->retried = 1;
        conn_dispatch(c, c->intended);
        return;
    }
    B.errors[err]++;
    request_end(c);
    conn_available(c);
}

static void request_done(conn_t *c)
{
    uint64_t t = now_ns();
    B.responses++;
    B.last_done = t;
    int cls = c->status / 100;
    if (cls >= 1 && cls <= 5) B.st[cls]++;
    if (cls == 2) B.ok++;
    /* Open loop: from when the request was due. Closed loop: from the send. */
    uint64_t from = is_open() ? c->intended : c->sent;
    if (!is_idle_mode() && (!is_open() || c->intended < B.t_end))
        hist_record(&B.lat, t > from ? t - from : 0);
    if (c->pos < c->len)
        B.extra_bytes += c->len - c->pos;       /* we never pipeline: stray bytes */
    c->pos = c->len = 0;
    c->reused = 1;
    if (c->resp_close || B.close_each)
        conn_close(c);
    else {
        c->state = C_IDLE;
        watch(c, EV_READ);                      /* notice a server-side close while idle */
    }
    request_end(c);
    if (is_idle_mode()) {
        idle_progress();
        return;
    }
    conn_available(c);
}

/* A connection with no request takes the next one due (open loop: from the
 * backlog; closed loop: at once) or waits on the free list. */
static void conn_available(conn_t *c)
{
    if (is_idle_mode()) {
        idle_progress();
        return;
    }
    if (B.finishing)
        return;
    if (is_open()) {
        if (B.bl_len > 0) {
            uint64_t due = B.backlog[B.bl_head];
            B.bl_head = (B.bl_head + 1) % BENCH_BACKLOG;
            B.bl_len--;
            conn_dispatch(c, due);
            return;
        }
        c->next_free = B.free_list;
        B.free_list = c;
        return;
    }
    if (B.max_responses && B.sent >= B.max_responses) {
        c->next_free = B.free_list;
        B.free_list = c;
        return;
    }
    conn_dispatch(c, now_ns());
}

static int conn_connect(conn_t *c)
{
    int fd = socket(B.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    B.connects++;
    if (connect(fd, (struct sockaddr *)&B.addr, B.addrlen) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->state = C_CONNECTING;
    B.connecting++;
    ev_io_set(&c->io, fd, EV_WRITE);
    ev_io_start(B.loop, &c->io);
    return 0;
}

/* --tls: the whole request in one SSL_write, so it travels as one record
 * (and one segment), as the plain writev sends it; main() checked that it
 * fits. Until SSL_write succeeds the iovecs stay as they are, so a retry
 * after WANT_READ/WANT_WRITE copies the same bytes again. */
static void conn_write_tls(conn_t *c)
{
    char rec[BENCH_TLS_RECORD];
    size_t n = 0;
    for (int i = 0; i < c->iovcnt; i++) {
        memcpy(rec + n, c->iov[i].iov_base, c->iov[i].iov_len);
        n += c->iov[i].iov_len;
    }
    int r = SSL_write(c->ssl, rec, (int)n);
    if (r > 0) {
        c->to_write = 0;
        watch(c, EV_READ);
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (tls_want(c, err))
        return;
    ERR_clear_error();
    request_failed(c, E_RESET);
}

static void conn_write(conn_t *c)
{
    if (c->ssl) {
        conn_write_tls(c);
        return;
    }
    while (c->to_write > 0) {
        ssize_t n = writev(c->fd, c->iov, c->iovcnt);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                watch(c, EV_WRITE);
                return;
            }
            request_failed(c, E_RESET);
            return;
        }
        c->to_write -= (size_t)n;
        size_t k = (size_t)n;
        for (int i = 0; i < c->iovcnt && k > 0; i++) {
            size_t t = k < c->iov[i].iov_len ? k : c->iov[i].iov_len;
            c->iov[i].iov_base = (char *)c->iov[i].iov_base + t;
            c->iov[i].iov_len -= t;
            k -= t;
        }
    }
    watch(c, EV_READ);
}

static void conn_send(conn_t *c)
{
    c->state = C_BUSY;
    c->pstate = P_HEAD;
    c->got_bytes = 0;
    c->status = 0;
    c->resp_close = 0;
    c->pos = c->len = 0;
    c->iovcnt = 0;
    c->iov[c->iovcnt++] = (struct iovec){ B.prefix, B.prefix_len };
    if (B.nvary)
        c->iov[c->iovcnt++] = (struct iovec){ B.vary[c->vary], B.vary_len[c->vary] };
    c->iov[c->iovcnt++] = (struct iovec){ (void *)"\r\n", 2 };
    c->to_write = 0;
    for (int i = 0; i < c->iovcnt; i++)
        c->to_write += c->iov[i].iov_len;
    c->sent = now_ns();
    if (is_open() && c->sent > c->intended)
        hist_record(&B.lag, c->sent - c->intended);
    conn_write(c);
}

static void conn_dispatch(conn_t *c, uint64_t intended)
{
    if (!c->has_req) {
        c->has_req = 1;
        c->retried = 0;
        B.in_flight++;
        B.sent++;
        c->vary = B.nvary ? B.vary_next++ % B.nvary : 0;
    }
    c->intended = intended;
    if (B.timeout_s > 0) {
        ev_timer_stop(B.loop, &c->tmo);
        ev_timer_set(&c->tmo, B.timeout_s, 0.);
        ev_timer_start(B.loop, &c->tmo);
    }
    if (c->state == C_CONNECTING || c->state == C_HANDSHAKE)
        return;             /* set up ahead (open loop), not ready yet: conn_ready() sends */
    if (c->fd < 0) {
        if (conn_connect(c) < 0) {
            B.errors[E_CONNECT]++;
            request_end(c);
            if (is_idle_mode()) { idle_progress(); return; }
            /* Do not spin on a refused port: the next request gets this
             * connection only when it comes off the free list again. */
            c->next_free = B.free_list;
            B.free_list = c;
        }
        return;
    }
    conn_send(c);
}

/* Response parsing: only what framing needs (status, length, chunked, close). */
static int parse_head(conn_t *c, const char *p, size_t n)
{
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0)
        return -1;
    int minor = p[7] - '0';
    c->status = atoi(p + 9);
    if (c->status < 100 || c->status > 999)
        return -1;
    int64_t cl = -1;
    int chunked = 0, conn_close_h = 0, conn_keep = 0;
    const char *line = memchr(p, '\n', n);
    const char *end = p + n;
    while (line && line + 1 < end) {
        line++;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) break;
        size_t ll = (size_t)(eol - line);
        if (ll > 0 && line[ll - 1] == '\r') ll--;
        if (ll == 0) break;
        if (ll > 15 && strncasecmp(line, "content-length:", 15) == 0)
            cl = strtoll(line + 15, NULL, 10);
        else if (ll > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0)
            chunked = memmem(line, ll, "chunked", 7) != NULL;
        else if (ll > 11 && strncasecmp(line, "connection:", 11) == 0) {
            conn_close_h = memmem(line, ll, "close", 5) != NULL;
            conn_keep = memmem(line, ll, "eep-alive", 9) != NULL;
        }
        line = eol;
    }
    c->resp_close = conn_close_h || (minor == 0 && !conn_keep);
    if (c->status < 200) {
        c->pstate = P_HEAD;                 /* interim: the real head follows */
        return 0;
    }
    if (c->status == 204 || c->status == 304) {
        c->pstate = P_DONE;
    } else if (chunked) {
        c->pstate = P_CHUNK_SIZE;
    } else if (cl >= 0) {
        c->remaining = cl;
        c->pstate = cl == 0 ? P_DONE : P_BODY_CL;
    } else {
        c->pstate = P_UNTIL_EOF;
        c->resp_close = 1;
    }
    return 0;
}

/* Returns 1 when the response is complete, 0 for more input, -1 on error. */
static int parse(conn_t *c)
{
    for (;;) {
        char *p = c->buf + c->pos;
        size_t n = c->len - c->pos;
        switch (c->pstate) {
        case P_HEAD: {
            char *e = memmem(p, n, "\r\n\r\n", 4);
            if (!e) {
                if (c->len == BENCH_BUF && c->pos == 0) return -1;
                return 0;
            }
            size_t hl = (size_t)(e - p) + 4;
            if (parse_head(c, p, hl) < 0) return -1;
            c->pos += hl;
            break;
        }
        case P_BODY_CL: {
            size_t t = (int64_t)n < c->remaining ? n : (size_t)c->remaining;
            c->pos += t;
            c->remaining -= (int64_t)t;
            if (c->remaining == 0) c->pstate = P_DONE;
            else return 0;
            break;
        }
        case P_CHUNK_SIZE: {
            char *e = memmem(p, n, "\r\n", 2);
            if (!e) return (c->len == BENCH_BUF && c->pos == 0) ? -1 : 0;
            char *endp;
            long long sz = strtoll(p, &endp, 16);
            if (endp == p || sz < 0) return -1;
            c->pos += (size_t)(e - p) + 2;
            if (sz == 0) c->pstate = P_TRAILERS;
            else { c->remaining = sz; c->pstate = P_CHUNK_DATA; }
            break;
        }
        case P_CHUNK_DATA: {
            size_t t = (int64_t)n < c->remaining ? n : (size_t)c->remaining;
            c->pos += t;
            c->remaining -= (int64_t)t;
            if (c->remaining == 0) c->pstate = P_CHUNK_CRLF;
            else return 0;
            break;
        }
        case P_CHUNK_CRLF:
            if (n < 2) return 0;
            if (p[0] != '\r' || p[1] != '\n') return -1;
            c->pos += 2;
            c->pstate = P_CHUNK_SIZE;
            break;
        case P_TRAILERS: {
            char *e = memmem(p, n, "\r\n", 2);
            if (!e) return (c->len == BENCH_BUF && c->pos == 0) ? -1 : 0;
            c->pos += (size_t)(e - p) + 2;
            if (e == p) c->pstate = P_DONE;
            break;
        }
        case P_UNTIL_EOF:
            c->pos = c->len;
            return 0;
        case P_DONE:
            return 1;
        }
    }
}

static void conn_read(conn_t *c)
{
    for (int round = 0; round < BENCH_READS_PER_EVENT; round++) {
        if (!c->buf)
            c->buf = xmalloc(BENCH_BUF);
        if (c->pos > 0) {
            memmove(c->buf, c->buf + c->pos, c->len - c->pos);
            c->len -= c->pos;
            c->pos = 0;
        }
        ssize_t n = conn_recv(c, c->buf + c->len, BENCH_BUF - c->len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            request_failed(c, E_RESET);
            return;
        }
        if (n == 0) {
            if (c->got_bytes && c->pstate == P_UNTIL_EOF) {
                c->pstate = P_DONE;
                c->resp_close = 1;
                request_done(c);
                return;
            }
            request_failed(c, E_EOF);
            return;
        }
        c->got_bytes = 1;
        c->len += (size_t)n;
        int r = parse(c);
        if (r < 0) { request_failed(c, E_PARSE); return; }
        if (r > 0) { request_done(c); return; }
    }
    /* Bytes OpenSSL has already decrypted wake no watcher: come back for them. */
    if (c->ssl && SSL_pending(c->ssl) > 0)
        ev_feed_event(B.loop, &c->io, EV_READ);
}

static void preconnect_done(void);

/* The connection is usable (TCP up, and the TLS handshake done with --tls). */
static void conn_ready(conn_t *c)
{
    if (!c->has_req) {
        /* Open loop, before T0: connections are set up ahead so that
         * connection setup does not land in the first latencies. */
        c->state = C_IDLE;
        watch(c, EV_READ);
        preconnect_done();
        return;
    }
    conn_send(c);
}

static void conn_setup_failed(conn_t *c)
{
    conn_close(c);
    if (!c->has_req) {
        preconnect_done();
        return;
    }
    B.errors[E_CONNECT]++;
    request_end(c);
    if (is_idle_mode()) { idle_progress(); return; }
    c->next_free = B.free_list;
    B.free_list = c;
}

/* Drives SSL_connect until it finishes. Keep-alive connections handshake
 * once, when they are set up before T0, outside the measured window. In
 * --close mode this runs for every request, after its intended send time:
 * the open loop counts the handshake (resumed, when the server allows it)
 * in that request's latency, as it counts the TCP connect; the closed loop,
 * measuring from the first byte sent, counts neither. */
static void tls_handshake(conn_t *c)
{
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        conn_ready(c);
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (tls_want(c, err))
        return;
    tls_report_handshake_failure(err);
    conn_setup_failed(c);
}

static void tls_start(conn_t *c)
{
    c->ssl = SSL_new(B.tls_ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd) || !SSL_set_tlsext_host_name(c->ssl, B.sni))
        die("out of memory (setting up a TLS connection)");
    if (B.tls_session)
        SSL_set_session(c->ssl, B.tls_session);
    c->state = C_HANDSHAKE;
    tls_handshake(c);
}

/* The non-blocking connect() finished, one way or the other. */
static void conn_connected(conn_t *c)
{
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    B.connecting--;
    c->state = C_BUSY;
    if (err)
        conn_setup_failed(c);
    else if (B.tls)
        tls_start(c);
    else
        conn_ready(c);
}

/* Readable while idle: the server closed (or sent junk); drop it. Over TLS
 * it is mostly the session tickets sent after the handshake, which
 * SSL_read takes in (to tls_new_session) without returning data. */
static void conn_idle_input(conn_t *c)
{
    char tmp[256];
    ssize_t n = conn_recv(c, tmp, sizeof tmp);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_close(c);
        if (is_idle_mode()) B.idle_closed_by_server++;
    } else if (n > 0)
        B.extra_bytes += (uint64_t)n;
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    conn_t *c = (conn_t *)w;
    (void)loop; (void)revents;
    switch (c->state) {
    case C_CONNECTING: conn_connected(c); return;
    case C_HANDSHAKE:  tls_handshake(c); return;
    case C_IDLE:       conn_idle_input(c); return;
    }
    /* Busy: what is left to do decides, not the event, since over TLS a
     * write may wait for readability and a read for writability. */
    if (c->to_write > 0)
        conn_write(c);
    else
        conn_read(c);
}

static void tmo_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    conn_t *c = (conn_t *)((char *)w - offsetof(conn_t, tmo));
    (void)loop; (void)revents;
    if (!c->has_req) return;
    conn_close(c);
    B.errors[E_TIMEOUT]++;
    request_end(c);
    if (is_idle_mode()) { idle_progress(); return; }
    conn_available(c);
}

/* Open-loop scheduler: send everything that is due, then sleep until the
 * next due time on the timerfd. */
static void arm_timerfd(uint64_t at)
{
    struct itimerspec its = { { 0, 0 }, { (time_t)(at / 1000000000ull), (long)(at % 1000000000ull) } };
    timerfd_settime(B.tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void schedule_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    uint64_t exp;
    (void)loop; (void)w; (void)revents;
    if (read(B.tfd, &exp, sizeof exp) < 0 && errno != EAGAIN) return;
    if (B.sched_done || B.finishing) return;
    uint64_t now = now_ns();
    for (;;) {
        uint64_t due = B.t0 + B.next_i * B.interval_ns;
        if (due >= B.t_end) {
            B.sched_done = 1;
            B.total_sched = B.next_i;
            ev_io_stop(B.loop, &B.tfd_io);
            return;
        }
        if (due > now) {
            arm_timerfd(due);
            return;
        }
        B.next_i++;
        conn_t *c = B.free_list;
        if (c) {
            B.free_list = c->next_free;
            conn_dispatch(c, due);
        } else if (B.bl_len < BENCH_BACKLOG) {
            B.backlog[(B.bl_head + B.bl_len) % BENCH_BACKLOG] = due;
            B.bl_len++;
        } else
            B.errors[E_OVERLOAD]++;
    }
}

static void stop_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void schedule_start(void)
{
    if (ev_is_active(&B.tfd_io)) return;
    ev_timer_stop(B.loop, &B.preconnect_timer);
    watch_mark(0);
    B.t0 = now_ns();
    B.t_end = B.t0 + (uint64_t)(B.duration * 1e9);
    ev_io_start(B.loop, &B.tfd_io);
    arm_timerfd(B.t0);
    ev_timer_set(&B.stop_timer, B.duration, 0.);
    ev_timer_start(B.loop, &B.stop_timer);
}

static void preconnect_done(void)
{
    if (--B.preconnect_pending == 0)
        schedule_start();
}

static void preconnect_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop; (void)w; (void)revents;
    schedule_start();
}

static void finish(void)
{
    if (B.finishing) return;
    B.finishing = 1;
    if (!is_idle_mode()) watch_mark(1);
    uint64_t t = now_ns();
    /* Open loop: whatever is still owed an answer is a failure, and its
     * latency so far is recorded as a lower bound, so an overloaded server
     * cannot look fast by not answering. */
    if (is_open()) {
        for (size_t i = 0; i < B.bl_len; i++) {
            uint64_t due = B.backlog[(B.bl_head + i) % BENCH_BACKLOG];
            if (due < B.t_end) hist_record(&B.lat, t - due);
            B.errors[E_INCOMPLETE]++;
        }
        for (int i = 0; i < B.nconns; i++) {
            conn_t *c = &B.conns[i];
            if (c->has_req) {
                if (c->intended < B.t_end) hist_record(&B.lat, t - c->intended);
                B.errors[E_INCOMPLETE]++;
            }
        }
    }
    ev_break(B.loop, EVBREAK_ALL);
}

static void stop_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop; (void)w; (void)revents;
    if (is_idle_mode()) {
        finish();
        return;
    }
    if (is_open()) {
        /* After the schedule ends, wait for in-flight and backlogged
         * requests (bounded), then finish. */
        uint64_t t = now_ns();
        double drain = B.timeout_s < BENCH_DRAIN_MAX_S ? B.timeout_s : BENCH_DRAIN_MAX_S;
        if (B.in_flight == 0 && B.bl_len == 0) { finish(); return; }
        if (t >= B.t_end + (uint64_t)(drain * 1e9)) { finish(); return; }
        ev_timer_set(&B.stop_timer, 0.005, 0.);
        ev_timer_start(B.loop, &B.stop_timer);
        return;
    }
    finish();
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop; (void)w; (void)revents;
    finish();
}

/* Idle mode: open the connections with at most BENCH_CONNECTING_MAX
 * requests in flight; once every one has answered (or failed), say so and
 * hold them for --hold seconds. */
static int idle_next, idle_filling;

static void idle_fill(void)
{
    if (idle_filling) return;            /* a failure inside conn_dispatch lands here again */
    idle_filling = 1;
    while (idle_next < B.nconns && B.in_flight < BENCH_CONNECTING_MAX && !B.finishing)
        conn_dispatch(&B.conns[idle_next++], now_ns());
    idle_filling = 0;
}

static void idle_progress(void)
{
    B.idle_done++;
    idle_fill();
    if (B.idle_ready || B.idle_done < B.nconns)
        return;
    B.idle_ready = 1;
    uint64_t open = 0;
    for (int i = 0; i < B.nconns; i++) open += B.conns[i].fd >= 0;
    ev_timer_stop(B.loop, &B.stop_timer);
    printf("{\"ready\":true,\"open\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"errors\":%" PRIu64 "}\n",
           open, B.ok, B.errors[E_CONNECT] + B.errors[E_RESET] + B.errors[E_EOF] + B.errors[E_TIMEOUT] + B.errors[E_PARSE]);
    fflush(stdout);
    ev_timer_set(&B.stop_timer, B.hold_s, 0.);
    ev_timer_start(B.loop, &B.stop_timer);
}

/* ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
        "usage: tg-bench --port P [--host 127.0.0.1] [--path /] [-H 'Name: v']...\n"
        "                [-c CONNS] [-d SECONDS] [--rate RPS] [-n RESPONSES]\n"
        "                [--close] [--timeout-ms MS] [--vary-file FILE]\n"
        "                [--idle N --hold SECONDS] [--watch-pids PID,PID]\n"
        "                [--tls [--sni NAME]]\n"
        "  --rate R      open loop, R requests/s, latency from the intended send time\n"
        "  (no --rate)   closed loop, each connection back to back\n"
        "  --close       Connection: close, one connection per request\n"
        "  --vary-file   one header line per line; request i carries line i mod N\n"
        "  --idle N      N keep-alive connections, one request each, then held idle\n"
        "  --watch-pids  report those processes' CPU ticks over the measured window\n"
        "  --tls         HTTPS: handshake once per connection (no certificate check,\n"
        "                sessions resumed); SNI 127.0.0.1 unless --sni NAME\n");
    exit(2);
}

static void load_vary(const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f) die("cannot open %s: %s", file, strerror(errno));
    size_t cap = 1024;
    B.vary = xmalloc(cap * sizeof *B.vary);
    B.vary_len = xmalloc(cap * sizeof *B.vary_len);
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    while ((n = getline(&line, &lcap, f)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        if (n == 0) continue;
        if (B.nvary >= BENCH_MAX_VARY) die("%s: more than %d lines", file, BENCH_MAX_VARY);
        if (B.nvary == cap) {
            cap *= 2;
            B.vary = realloc(B.vary, cap * sizeof *B.vary);
            B.vary_len = realloc(B.vary_len, cap * sizeof *B.vary_len);
            if (!B.vary || !B.vary_len) die("out of memory");
        }
        char *s = xmalloc((size_t)n + 2);
        memcpy(s, line, (size_t)n);
        memcpy(s + n, "\r\n", 2);
        B.vary[B.nvary] = s;
        B.vary_len[B.nvary++] = (size_t)n + 2;
    }
    free(line);
    fclose(f);
    if (B.nvary == 0) die("%s: no lines", file);
}

/* --tls sends each request as one record (see conn_write_tls). */
static void check_request_fits_tls_record(void)
{
    size_t longest = 0;
    for (unsigned i = 0; i < B.nvary; i++)
        if (B.vary_len[i] > longest) longest = B.vary_len[i];
    size_t size = B.prefix_len + longest + 2;
    if (size > BENCH_TLS_RECORD)
        die("--tls: a request of %zu bytes does not fit one TLS record (%d bytes)", size, BENCH_TLS_RECORD);
}

static void print_hist(const char *name, const hist_t *h)
{
    printf("\"%s\":{\"count\":%" PRIu64 ",\"min\":%.1f,\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,"
           "\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f}",
           name, h->total, h->min / 1e3, h->total ? h->sum / (double)h->total / 1e3 : 0.0,
           hist_percentile(h, 50) / 1e3, hist_percentile(h, 90) / 1e3,
           hist_percentile(h, 99) / 1e3, hist_percentile(h, 99.9) / 1e3, h->max / 1e3);
}

int main(int argc, char **argv)
{
    const char *headers[BENCH_MAX_HEADERS];
    int nheaders = 0;
    const char *vary_file = NULL;
    B.host = "127.0.0.1";
    B.path = "/";
    B.nconns = 32;
    B.duration = 5;
    B.timeout_s = 5;
    B.hold_s = 5;
    B.tfd = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!v) usage(); i++; } while (0)
        if (!strcmp(a, "--host")) { NEED(); B.host = v; }
        else if (!strcmp(a, "--port")) { NEED(); B.port = atoi(v); }
        else if (!strcmp(a, "--path")) { NEED(); B.path = v; }
        else if (!strcmp(a, "-H")) { NEED(); if (nheaders == BENCH_MAX_HEADERS) die("too many -H"); headers[nheaders++] = v; }
        else if (!strcmp(a, "-c")) { NEED(); B.nconns = atoi(v); }
        else if (!strcmp(a, "-d")) { NEED(); B.duration = atof(v); }
        else if (!strcmp(a, "-n")) { NEED(); B.max_responses = strtoull(v, NULL, 10); }
        else if (!strcmp(a, "--rate")) { NEED(); B.rate = atof(v); }
        else if (!strcmp(a, "--close")) B.close_each = 1;
        else if (!strcmp(a, "--timeout-ms")) { NEED(); B.timeout_s = atof(v) / 1000.0; }
        else if (!strcmp(a, "--vary-file")) { NEED(); vary_file = v; }
        else if (!strcmp(a, "--idle")) { NEED(); B.idle_n = atoi(v); }
        else if (!strcmp(a, "--hold")) { NEED(); B.hold_s = atof(v); }
        else if (!strcmp(a, "--tls")) B.tls = 1;
        else if (!strcmp(a, "--sni")) { NEED(); B.sni = v; }
        else if (!strcmp(a, "--watch-pids")) {
            NEED();
            for (const char *q = v; *q && B.nwatch < BENCH_MAX_WATCH; ) {
                int pid = atoi(q);
                if (pid > 0) B.watch_pids[B.nwatch++] = pid;
                q = strchr(q, ',');
                if (!q) break;
                q++;
            }
        }
        else usage();
#undef NEED
    }
    if (B.port <= 0 || B.port > 65535) usage();
    if (B.idle_n > 0) B.nconns = B.idle_n;
    if (B.nconns < 1 || B.nconns > BENCH_MAX_CONNS) die("-c must be 1..%d", BENCH_MAX_CONNS);
    if (!(B.duration > 0 && B.duration <= BENCH_MAX_DURATION)) die("-d must be in (0, %.0f]", BENCH_MAX_DURATION);
    if (B.rate < 0 || B.rate > BENCH_MAX_RATE) die("--rate must be in (0, %.0f]", BENCH_MAX_RATE);
    if (!(B.hold_s >= 0 && B.hold_s <= BENCH_MAX_DURATION)) die("--hold out of range");
    if (B.path[0] != '/') die("--path must start with /");
    if (B.sni && !B.tls) die("--sni needs --tls");
    if (!B.sni) B.sni = "127.0.0.1";

    memset(&B.addr, 0, sizeof B.addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&B.addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&B.addr;
    if (inet_pton(AF_INET, B.host, &a4->sin_addr) == 1) {
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127) die("only loopback targets (127.0.0.0/8, ::1)");
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)B.port);
        B.addrlen = sizeof *a4;
    } else if (inet_pton(AF_INET6, B.host, &a6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) die("only loopback targets (127.0.0.0/8, ::1)");
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)B.port);
        B.addrlen = sizeof *a6;
    } else
        die("--host must be a numeric loopback address");

    /* The request, built once. */
    size_t cap = 256 + strlen(B.path) + strlen(B.host);
    for (int i = 0; i < nheaders; i++) cap += strlen(headers[i]) + 2;
    B.prefix = xmalloc(cap);
    int hostv6 = B.addr.ss_family == AF_INET6;
    int n = snprintf(B.prefix, cap, "GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\n", B.path,
                     hostv6 ? "[" : "", B.host, hostv6 ? "]" : "", B.port);
    for (int i = 0; i < nheaders; i++)
        n += snprintf(B.prefix + n, cap - (size_t)n, "%s\r\n", headers[i]);
    if (B.close_each)
        n += snprintf(B.prefix + n, cap - (size_t)n, "Connection: close\r\n");
    B.prefix_len = (size_t)n;
    if (vary_file) load_vary(vary_file);
    if (B.tls) {
        check_request_fits_tls_record();
        tls_init();
    }

    /* Enough descriptors for every connection, and exact timer wake-ups. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if ((rlim_t)B.nconns + 16 > rl.rlim_cur)
            die("%d connections need more file descriptors than the limit (%llu)", B.nconns, (unsigned long long)rl.rlim_cur);
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);

    B.loop = ev_default_loop(EVFLAG_AUTO);
    B.conns = calloc((size_t)B.nconns, sizeof *B.conns);
    if (!B.conns) die("out of memory");
    for (int i = B.nconns - 1; i >= 0; i--) {
        conn_t *c = &B.conns[i];
        c->fd = -1;
        c->id = i;
        ev_init(&c->io, io_cb);
        ev_init(&c->tmo, tmo_cb);
        c->next_free = B.free_list;
        B.free_list = c;
    }
    ev_signal_init(&B.sigterm, signal_cb, SIGTERM);
    ev_signal_init(&B.sigint, signal_cb, SIGINT);
    ev_signal_start(B.loop, &B.sigterm);
    ev_signal_start(B.loop, &B.sigint);
    ev_init(&B.stop_timer, stop_cb);

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    B.t0 = now_ns();
    B.t_end = B.t0 + (uint64_t)(B.duration * 1e9);

    if (is_idle_mode()) {
        B.free_list = NULL;
        idle_fill();
        /* Setting up N connections is bounded too: -d is the budget. */
        ev_timer_set(&B.stop_timer, B.duration + B.timeout_s, 0.);
        ev_timer_start(B.loop, &B.stop_timer);
    } else if (is_open()) {
        B.backlog = xmalloc(BENCH_BACKLOG * sizeof *B.backlog);
        B.interval_ns = (uint64_t)(1e9 / B.rate);
        if (B.interval_ns == 0) B.interval_ns = 1;
        B.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (B.tfd < 0) die("timerfd_create: %s", strerror(errno));
        ev_io_init(&B.tfd_io, schedule_cb, B.tfd, EV_READ);
        B.t_end = UINT64_MAX;
        B.preconnect_pending = B.nconns + 1;
        for (int i = 0; i < B.nconns; i++)
            if (conn_connect(&B.conns[i]) < 0)
                B.preconnect_pending--;
        ev_timer_init(&B.preconnect_timer, preconnect_timeout_cb, 2.0, 0.);
        ev_timer_start(B.loop, &B.preconnect_timer);
        preconnect_done();      /* the +1 above: starts now if nothing is pending */
    } else {
        ev_timer_set(&B.stop_timer, B.duration, 0.);
        ev_timer_start(B.loop, &B.stop_timer);
        watch_mark(0);
        conn_t *list = B.free_list;
        B.free_list = NULL;
        while (list) {
            conn_t *c = list;
            list = c->next_free;
            conn_available(c);
        }
    }

    /* Closed loop with -n: stop once enough answers came back. */
    for (;;) {
        ev_run(B.loop, EVRUN_ONCE);
        if (B.finishing) break;
        if (!is_open() && !is_idle_mode() && B.max_responses && B.responses + B.errors[E_CONNECT] + B.errors[E_RESET]
            + B.errors[E_EOF] + B.errors[E_TIMEOUT] + B.errors[E_PARSE] >= B.max_responses) {
            watch_mark(1);
            break;
        }
    }
    uint64_t t_stop = now_ns();
    getrusage(RUSAGE_SELF, &ru1);

    double elapsed = (double)(t_stop - B.t0) / 1e9;
    double window = is_open() ? (double)((B.last_done > B.t0 ? B.last_done : t_stop) - B.t0) / 1e9 : elapsed;
    if (!is_open() && !is_idle_mode() && !B.max_responses && window > B.duration) window = B.duration;
    double cpu_user = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
    double cpu_sys = (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    uint64_t errs = 0;
    for (int i = 0; i < E_COUNT; i++) errs += B.errors[i];

    printf("{\"tool\":\"tg-bench\",\"mode\":\"%s\",\"target\":\"%s:%d%s\",\"connections\":%d,",
           is_idle_mode() ? "idle" : is_open() ? "open" : "closed", B.host, B.port, B.path, B.nconns);
    printf("\"close_each\":%s,%s\"rate\":%.1f,\"duration_s\":%.3f,\"elapsed_s\":%.3f,",
           B.close_each ? "true" : "false", B.tls ? "\"tls\":true," : "", B.rate, B.duration, elapsed);
    printf("\"scheduled\":%" PRIu64 ",\"sent\":%" PRIu64 ",\"responses\":%" PRIu64 ",\"ok\":%" PRIu64 ",",
           is_open() ? (B.total_sched ? B.total_sched : B.next_i) : B.sent, B.sent, B.responses, B.ok);
    printf("\"status\":{\"1xx\":%" PRIu64 ",\"2xx\":%" PRIu64 ",\"3xx\":%" PRIu64 ",\"4xx\":%" PRIu64 ",\"5xx\":%" PRIu64 "},",
           B.st[1], B.st[2], B.st[3], B.st[4], B.st[5]);
    printf("\"errors\":{");
    for (int i = 0; i < E_COUNT; i++)
        printf("\"%s\":%" PRIu64 ",", error_names[i], B.errors[i]);
    printf("\"total\":%" PRIu64 "},\"retried\":%" PRIu64 ",\"connects\":%" PRIu64 ",\"stray_bytes\":%" PRIu64 ",",
           errs, B.retries, B.connects, B.extra_bytes);
    if (is_idle_mode()) {
        uint64_t open = 0;
        for (int i = 0; i < B.nconns; i++) open += B.conns[i].fd >= 0;
        printf("\"idle_open_at_end\":%" PRIu64 ",\"idle_closed_by_server\":%" PRIu64 ",", open, B.idle_closed_by_server);
    }
    printf("\"achieved_rps\":%.1f,", window > 0 ? (double)B.ok / window : 0.0);
    print_hist("latency_us", &B.lat);
    printf(",");
    print_hist("send_lag_us", &B.lag);
    if (B.nwatch)
        printf(",\"watch\":{\"ticks\":%lld,\"clk_tck\":%ld,\"window_s\":%.3f}",
               B.watch_t1 - B.watch_t0, sysconf(_SC_CLK_TCK), (double)(B.watch_ns1 - B.watch_ns0) / 1e9);
    printf(",\"cpu\":{\"user_s\":%.3f,\"sys_s\":%.3f,\"util\":%.3f}}\n",
           cpu_user, cpu_sys, elapsed > 0 ? (cpu_user + cpu_sys) / elapsed : 0.0);
    fflush(stdout);
    return 0;
}
