/*
 * tg_redis.c: the worker's non-blocking Redis client (see tg_redis.h).
 *
 * Connections. The shared connection carries every ordinary command of the
 * worker, pipelined: hiredis appends each command to one output buffer (a
 * loop turn's worth goes out in one write) and matches replies to
 * callbacks in order. It connects at first use, not at worker start, so a
 * gateway whose plugins never touch Redis never dials it. The handshake
 * (AUTH, SELECT) is queued right behind the connect and the first commands
 * right behind the handshake, so a first use costs one round trip more,
 * not a failure. A connection that breaks is re-dialled at the next use;
 * a connect that fails starts a back-off (50 ms doubling to 2 s) during
 * which commands fail at once ("redis unavailable") and a timer retries in
 * the background. Nothing ever queues without bound: the per-call timeout
 * ends every wait, and TG_REDIS_MAX_PENDING caps what may be in flight.
 *
 * Blocking commands (BLPOP, XREAD BLOCK, WAIT...) would stall everything
 * pipelined behind them, so each takes a connection of its own from a pool
 * of at most `pool_size` per worker, kept open while idle (closed after
 * TG_REDIS_IDLE_TIMEOUT). When such a command times out its connection is
 * closed: Redis is still blocked on it and would answer into the next use.
 *
 * Timeouts. hiredis async has none, so every operation arms an ev_timer.
 * When it fires first the waiter is resumed with "timeout" and the reply,
 * when it comes, is dropped (its callback finds the operation finished).
 * The connection stays in use: a slow command delays what follows it on any
 * connection anyway, Redis being single-threaded. Only when more than
 * TG_REDIS_MAX_ABANDONED timed-out replies are outstanding (Redis stuck or
 * hopelessly behind) is the shared connection dropped and re-dialled.
 *
 * Lifetimes. An operation (one wait: a command or a pipeline) is
 * refcounted: one reference per reply callback still due, one for the
 * reader (the Lua side, released by tg_ffi_redis_done(), or by us when the
 * waiter went away). Connections find their conn_t through ac->data, which
 * is cleared whenever we let go of a context, so callbacks that hiredis runs
 * while tearing a context down (NULL replies) never touch a conn_t that
 * moved on. Waking Lua happens inside hiredis callbacks; Lua may send new
 * commands from there (hiredis allows it), and nothing Lua can call frees a
 * context synchronously.
 */
#include "tg_redis.h"
#include "tg_log.h"
#include "tg_lua.h"
#include "tg_pool.h"
#include "tg_worker.h"

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

/* Commands in flight on the shared connection. Beyond this new ones fail
 * ("redis busy") instead of piling up behind a Redis that cannot keep up;
 * the number is far above what a worker produces within a timeout. */
#define TG_REDIS_MAX_PENDING    16384
/* Timed-out commands whose replies are still due on the shared connection.
 * More means Redis is stuck or far behind: reconnect rather than keep
 * reading a backlog nobody waits for. */
#define TG_REDIS_MAX_ABANDONED  256
/* Reconnect back-off after a failed connect: 50 ms doubling to 2 s. */
#define TG_REDIS_BACKOFF_MIN    0.05
#define TG_REDIS_BACKOFF_MAX    2.0
/* TCP connect + AUTH + SELECT must finish within this (or the command
 * timeout when longer): hiredis 0.14 has no connect timeout of its own. */
#define TG_REDIS_CONNECT_TIMEOUT 1.0
/* A blocking command re-checks this often whether its waiter went away, so
 * a client that leaves gives its pool connection back within a second. */
#define TG_REDIS_CANCEL_POLL    1.0
/* Redis notices a blocking command's own timeout on its clock (serverCron
 * runs at hz 10 by default: up to ~100 ms late), so the wait for one is its
 * block time plus at least this, not plus the bare per-call timeout. */
#define TG_REDIS_BLOCK_SLACK_MS 500.0
/* Idle pool connections are closed after this; swept at this interval. */
#define TG_REDIS_IDLE_TIMEOUT   60.0
#define TG_REDIS_SWEEP_INTERVAL 10.0
/* Finished operations kept for reuse, with buffers up to these sizes. */
#define TG_REDIS_FREE_OPS       64
#define TG_REDIS_KEEP_NODES     64
#define TG_REDIS_KEEP_STRS      4096

#define container_of(p, type, field) ((type *)((char *)(p) - offsetof(type, field)))

typedef enum { CONN_IDLE, CONN_CONNECTING, CONN_READY } conn_state_e;

typedef struct tg_redis_op_s tg_redis_op_t;

typedef struct {
    tg_redis_t        *red;
    redisAsyncContext *ac;            /* NULL while not connected */
    conn_state_e       state;
    unsigned           dedicated:1;   /* a blocking-pool connection */
    unsigned           gen;           /* increases with every connect */
    int                handshake_left;/* AUTH / SELECT replies still due */
    int                pending;       /* command replies due on ac */
    int                abandoned;     /* of which the operation timed out */
    int                failures;      /* shared: consecutive failed connects */
    unsigned           flush_wanted:1;/* commands queued, written before the poll */
    ev_tstamp          backoff;       /* shared: the current retry delay */
    ev_tstamp          idle_since;    /* dedicated, idle */
    ev_timer           timer;         /* connect timeout; shared: retries */
    tg_link_t          link;          /* dedicated: in red->idle or red->busy */
    tg_redis_op_t     *op;            /* dedicated: the operation it serves */
} conn_t;

struct tg_redis_op_s {
    tg_redis_result_t  res;           /* first member: what Lua sees */
    tg_redis_t        *red;
    tg_lua_wait_t     *wt;            /* NULL once finished */
    conn_t            *conn;          /* dedicated connection serving it */
    unsigned           gen;           /* shared connection generation at send */
    int                ncmds;
    int                due;           /* reply callbacks not run yet */
    int                refs;          /* due + the reader (+ transient) */
    unsigned           sent_ready:1;  /* the connection was ready at send */
    unsigned           send_failed:1;
    ev_tstamp          deadline;      /* blocking: 0 = none */
    ev_timer           timer;
    tg_redis_node_t   *nodes;
    size_t             nnodes, cap_nodes;
    char              *strs;
    size_t             nstrs, cap_strs;
    tg_redis_op_t     *next_free;
};

struct tg_redis_s {
    struct ev_loop        *loop;
    const tg_conf_redis_t *conf;
    conn_t                 shared;
    tg_link_t              idle;       /* pool connections, most recent first */
    tg_link_t              busy;
    int                    ndedicated; /* idle + busy */
    ev_timer               sweep;
    ev_prepare             flush;      /* writes queued commands before the poll */
    unsigned               in_flush:1;
    tg_redis_op_t         *free_ops;
    int                    nfree_ops;
    unsigned               closing:1;
    char                   addr[300];  /* "host:port" for log lines */
};

static void conn_fail(conn_t *cn, const char *why, int free_ac);
static int conn_connect(conn_t *cn);

/* ------------------------------------------------------------------ */
/* operations                                                          */

static tg_redis_op_t *op_new(tg_redis_t *red) {
    tg_redis_op_t *op = red->free_ops;
    if (op) {
        red->free_ops = op->next_free;
        red->nfree_ops--;
    } else {
        op = tg_xcalloc(1, sizeof(*op));
    }
    op->res.status = TG_REDIS_PENDING;
    op->res.nreplies = 0;
    op->res.nodes = NULL;
    op->res.strs = NULL;
    op->red = red;
    op->wt = NULL;
    op->conn = NULL;
    op->gen = 0;
    op->ncmds = op->due = op->refs = 0;
    op->sent_ready = op->send_failed = 0;
    op->deadline = 0;
    op->nnodes = op->nstrs = 0;
    op->next_free = NULL;
    return op;
}

static void op_unref(tg_redis_op_t *op) {
    if (--op->refs > 0) return;
    tg_redis_t *red = op->red;
    ev_timer_stop(red->loop, &op->timer);
    if (red->closing || red->nfree_ops >= TG_REDIS_FREE_OPS) {
        free(op->nodes);
        free(op->strs);
        free(op);
        return;
    }
    /* Keep small buffers for the next operation; a huge reply's go. */
    if (op->cap_nodes > TG_REDIS_KEEP_NODES) {
        free(op->nodes);
        op->nodes = NULL;
        op->cap_nodes = 0;
    }
    if (op->cap_strs > TG_REDIS_KEEP_STRS) {
        free(op->strs);
        op->strs = NULL;
        op->cap_strs = 0;
    }
    op->next_free = red->free_ops;
    red->free_ops = op;
    red->nfree_ops++;
}

/* Appends r (and, for an array, its elements) to op's flat buffers. Depth
 * is bounded by hiredis' reader (7 levels). */
static void op_push_reply(tg_redis_op_t *op, const redisReply *r) {
    if (op->nnodes == op->cap_nodes) {
        op->cap_nodes = op->cap_nodes ? op->cap_nodes * 2 : 16;
        op->nodes = tg_xrealloc(op->nodes, op->cap_nodes * sizeof(*op->nodes));
    }
    size_t at = op->nnodes++;
    tg_redis_node_t *n = &op->nodes[at];
    n->type = r->type;
    n->n = 0;
    n->integer = 0;
    n->len = 0;
    n->off = 0;
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        if (op->nstrs + r->len > op->cap_strs) {
            size_t cap = op->cap_strs ? op->cap_strs : 256;
            while (cap < op->nstrs + r->len) cap *= 2;
            op->strs = tg_xrealloc(op->strs, cap);
            op->cap_strs = cap;
        }
        if (r->len) memcpy(op->strs + op->nstrs, r->str, r->len);
        n->off = op->nstrs;
        n->len = r->len;
        op->nstrs += r->len;
        break;
    case REDIS_REPLY_INTEGER:
        n->integer = r->integer;
        break;
    case REDIS_REPLY_ARRAY:
        n->n = (int)r->elements;
        for (size_t i = 0; i < r->elements; i++) op_push_reply(op, r->element[i]);
        break;
    default:   /* NIL */
        break;
    }
}

/* Marks op finished (first call wins) without waking anyone yet. */
static int op_set(tg_redis_op_t *op, int status) {
    if (op->res.status != TG_REDIS_PENDING) return 0;
    op->res.status = status;
    op->res.nodes = op->nodes;
    op->res.strs = op->strs;
    ev_timer_stop(op->red->loop, &op->timer);
    return 1;
}

/* Resumes the waiter of a finished op. The caller holds a reference if it
 * uses op afterwards (the Lua side may release the reader's one). */
static void op_wake(tg_redis_op_t *op) {
    tg_lua_wait_t *wt = op->wt;
    if (wt == NULL) return;
    op->wt = NULL;
    if (op->red->closing || tg_lua_wait_cancelled(wt)) {
        tg_lua_wake(wt);     /* only frees the handle */
        op_unref(op);        /* the reader's reference: nobody will read */
        return;
    }
    tg_lua_wake(wt);         /* Lua reads op->res and calls tg_ffi_redis_done */
}

static void op_finish(tg_redis_op_t *op, int status) {
    if (op_set(op, status)) op_wake(op);
}

/* ------------------------------------------------------------------ */
/* output                                                              */

/* hiredis asks for writability after every command it queues. Arming the
 * write watcher for that costs an epoll_ctl pair and a poll round per
 * command; instead a ready connection is only marked, and flush_cb writes
 * everything marked once per loop turn, right before the poll (commands of
 * all requests of that turn go out in one write). While flushing, or when
 * the socket is full or still connecting, the real watcher is used.
 * Measured: ~20% less worker CPU per sequential round trip. This relies on
 * no other prepare watcher resuming Lua (a command queued after flush_cb ran
 * in this turn would wait for the next poll); none does. */
static void hook_add_write(void *privdata) {
    redisLibevEvents *e = privdata;
    conn_t *cn = e->context->data;
    if (cn == NULL || cn->state != CONN_READY || cn->red->in_flush) {
        redisLibevAddWrite(privdata);
        return;
    }
    cn->flush_wanted = 1;
    if (!ev_is_active(&cn->red->flush)) ev_prepare_start(cn->red->loop, &cn->red->flush);
}

static void flush_conn(conn_t *cn) {
    if (!cn->flush_wanted) return;
    cn->flush_wanted = 0;
    /* May tear the context down on a write error (its callbacks run). */
    if (cn->ac && cn->state == CONN_READY) redisAsyncHandleWrite(cn->ac);
}

static void flush_cb(struct ev_loop *loop, ev_prepare *p, int revents) {
    tg_redis_t *red = container_of(p, tg_redis_t, flush);
    ev_prepare_stop(loop, p);
    red->in_flush = 1;
    flush_conn(&red->shared);
    /* Only the connection being flushed can go away meanwhile (Lua woken
     * by its failure may only queue commands, which then use the real
     * watcher), so the saved next pointer stays valid. */
    tg_link_t *l = red->busy.next;
    while (l != &red->busy) {
        tg_link_t *next = l->next;
        flush_conn(tg_link_data(l, conn_t, link));
        l = next;
    }
    red->in_flush = 0;
}

/* ------------------------------------------------------------------ */
/* connections                                                         */

static void conn_init(conn_t *cn, tg_redis_t *red, int dedicated);

/* Lets go of cn's context (callbacks still due on it will find no conn_t)
 * and returns it for the caller to free, or not when hiredis is already
 * tearing it down. */
static redisAsyncContext *conn_detach(conn_t *cn) {
    redisAsyncContext *ac = cn->ac;
    if (ac) ac->data = NULL;
    cn->ac = NULL;
    cn->state = CONN_IDLE;
    cn->flush_wanted = 0;
    cn->pending = cn->abandoned = cn->handshake_left = 0;
    ev_timer_stop(cn->red->loop, &cn->timer);
    return ac;
}

/* A pool connection leaves the pool for good (its context is detached). */
static void dedicated_forget(conn_t *cn) {
    tg_redis_t *red = cn->red;
    tg_link_remove(&cn->link);
    red->ndedicated--;
    if (cn->op) cn->op->conn = NULL;
    ev_timer_stop(red->loop, &cn->timer);
    free(cn);
}

static void dedicated_close(conn_t *cn) {
    redisAsyncContext *ac = conn_detach(cn);
    dedicated_forget(cn);
    if (ac) redisAsyncFree(ac);   /* due callbacks run now with NULL replies */
}

static void shared_retry_later(tg_redis_t *red, const char *why) {
    conn_t *cn = &red->shared;
    cn->failures++;
    if (cn->failures == 1) {
        /* Logged once per outage; the retries that follow stay quiet. */
        tg_log_error("redis %s unavailable: %s (retrying in the background)", red->addr, why);
        cn->backoff = TG_REDIS_BACKOFF_MIN;
    } else {
        tg_log_debug("redis %s: reconnect failed: %s", red->addr, why);
        cn->backoff = tg_min(cn->backoff * 2, TG_REDIS_BACKOFF_MAX);
    }
    if (red->closing) return;
    ev_timer_set(&cn->timer, cn->backoff, 0.);
    ev_timer_start(red->loop, &cn->timer);
}

/* A connect or handshake failed. free_ac: the context is ours to free
 * (otherwise hiredis is freeing it). */
static void conn_fail(conn_t *cn, const char *why, int free_ac) {
    tg_redis_t *red = cn->red;
    redisAsyncContext *ac = conn_detach(cn);
    if (cn->dedicated) {
        tg_log_warn("redis %s: connection for a blocking command failed: %s", red->addr, why);
        dedicated_forget(cn);
    } else {
        shared_retry_later(red, why);
    }
    /* Inside one of ac's callbacks hiredis defers this until it returns. */
    if (free_ac && ac) redisAsyncFree(ac);
}

/* hiredis is tearing a connection down (EOF, I/O error). */
static void conn_lost(conn_t *cn, const char *why) {
    if (cn->state != CONN_READY) {
        conn_fail(cn, why, 0);
        return;
    }
    conn_detach(cn);
    if (cn->dedicated) {
        dedicated_forget(cn);
        return;
    }
    /* Re-dialled at the next use, like a first connect. */
    tg_log_warn("redis %s: connection lost: %s", cn->red->addr, why);
}

static void conn_ready(conn_t *cn) {
    ev_timer_stop(cn->red->loop, &cn->timer);
    cn->state = CONN_READY;
    if (!cn->dedicated) {
        if (cn->failures > 0) tg_log_notice("redis %s: connected again", cn->red->addr);
        cn->failures = 0;
        cn->backoff = 0;
    }
}

static void connect_cb(const redisAsyncContext *ac, int status) {
    conn_t *cn = ac->data;
    if (cn == NULL) return;
    if (status != REDIS_OK) {
        conn_fail(cn, ac->errstr && ac->errstr[0] ? ac->errstr : "connect failed", 0);
        return;
    }
    if (cn->handshake_left == 0) conn_ready(cn);
}

static void disconnect_cb(const redisAsyncContext *ac, int status) {
    conn_t *cn = ac->data;
    if (cn == NULL) return;
    conn_lost(cn, status == REDIS_OK || !ac->errstr || !ac->errstr[0] ? "closed" : ac->errstr);
}

/* AUTH / SELECT replies; privdata names the command for the log. */
static void handshake_cb(redisAsyncContext *ac, void *reply, void *privdata) {
    conn_t *cn = ac->data;
    redisReply *r = reply;
    if (cn == NULL) return;
    if (r == NULL) {
        conn_fail(cn, "closed during the handshake", 0);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char why[192];
        snprintf(why, sizeof(why), "%s failed: %.*s", (const char *)privdata,
                 (int)tg_min(r->len, (size_t)150), r->str);
        conn_fail(cn, why, 1);
        return;
    }
    if (--cn->handshake_left == 0) conn_ready(cn);
}

/* Timer of a connection: the connect timeout while connecting; for the
 * shared connection after a failure, the next retry. */
static void conn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    conn_t *cn = container_of(t, conn_t, timer);
    if (cn->state == CONN_CONNECTING) conn_fail(cn, "connect timeout", 1);
    else if (cn->state == CONN_IDLE && !cn->dedicated) conn_connect(cn);
}

/* Dials Redis and queues the handshake. On TG_ERROR the failure has been
 * handled (a pool connection is gone, the shared one backs off). */
static int conn_connect(conn_t *cn) {
    tg_redis_t *red = cn->red;
    const tg_conf_redis_t *c = red->conf;
    /* A host name is resolved here with a blocking getaddrinfo(); configs
     * should name Redis by address (docs/redis.md). */
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (ac == NULL) {
        conn_fail(cn, "out of memory", 0);
        return TG_ERROR;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof(why), "%s", ac->errstr ? ac->errstr : "connect failed");
        redisAsyncFree(ac);
        conn_fail(cn, why, 0);
        return TG_ERROR;
    }
    ac->data = cn;
    redisLibevAttach(red->loop, ac);
    ac->ev.addWrite = hook_add_write;
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    cn->ac = ac;
    cn->gen++;
    cn->state = CONN_CONNECTING;
    cn->pending = cn->abandoned = cn->handshake_left = 0;

    const char *argv[3];
    size_t lens[3];
    int argc = 0;
    if (c->password) {
        argv[argc] = "AUTH";
        lens[argc++] = 4;
        if (c->username) {
            argv[argc] = c->username;
            lens[argc] = strlen(c->username);
            argc++;
        }
        argv[argc] = c->password;
        lens[argc] = strlen(c->password);
        argc++;
        if (redisAsyncCommandArgv(ac, handshake_cb, "AUTH", argc, argv, lens) == REDIS_OK)
            cn->handshake_left++;
    }
    if (c->db != 0) {
        char db[16];
        argv[0] = "SELECT";
        lens[0] = 6;
        argv[1] = db;
        lens[1] = (size_t)snprintf(db, sizeof(db), "%d", c->db);
        if (redisAsyncCommandArgv(ac, handshake_cb, "SELECT", 2, argv, lens) == REDIS_OK)
            cn->handshake_left++;
    }
    ev_timer_set(&cn->timer, tg_max(TG_REDIS_CONNECT_TIMEOUT, c->timeout_ms / 1000.0), 0.);
    ev_timer_start(red->loop, &cn->timer);
    return TG_OK;
}

static void conn_init(conn_t *cn, tg_redis_t *red, int dedicated) {
    memset(cn, 0, sizeof(*cn));
    cn->red = red;
    cn->dedicated = dedicated ? 1 : 0;
    ev_timer_init(&cn->timer, conn_timer_cb, 0., 0.);
    tg_link_init(&cn->link);
}

/* ------------------------------------------------------------------ */
/* the blocking pool                                                   */

static void sweep_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    tg_redis_t *red = container_of(t, tg_redis_t, sweep);
    ev_tstamp now = ev_now(loop);
    tg_link_t *l = red->idle.next;
    while (l != &red->idle) {
        tg_link_t *next = l->next;
        conn_t *cn = tg_link_data(l, conn_t, link);
        if (now - cn->idle_since >= TG_REDIS_IDLE_TIMEOUT) dedicated_close(cn);
        l = next;
    }
}

/* An idle pool connection, or a new one while the pool has room. NULL with
 * *rc set otherwise. */
static conn_t *pool_get(tg_redis_t *red, int *rc) {
    conn_t *cn;
    if (!tg_link_empty(&red->idle)) {
        cn = tg_link_data(red->idle.next, conn_t, link);
        tg_link_remove(&cn->link);
        tg_link_insert(&red->busy, &cn->link);
        return cn;
    }
    if (red->ndedicated >= red->conf->pool_size) {
        *rc = TG_REDIS_E_BUSY;
        return NULL;
    }
    cn = tg_xmalloc(sizeof(*cn));
    conn_init(cn, red, 1);
    red->ndedicated++;
    tg_link_insert(&red->busy, &cn->link);
    if (conn_connect(cn) != TG_OK) {   /* cn is gone */
        *rc = TG_REDIS_E_UNAVAILABLE;
        return NULL;
    }
    if (!ev_is_active(&red->sweep)) ev_timer_start(red->loop, &red->sweep);
    return cn;
}

static void pool_release(conn_t *cn) {
    cn->op = NULL;
    cn->idle_since = ev_now(cn->red->loop);
    tg_link_remove(&cn->link);
    tg_link_insert(&cn->red->idle, &cn->link);
}

/* ------------------------------------------------------------------ */
/* replies and timeouts                                                */

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata) {
    tg_redis_op_t *op = privdata;
    conn_t *cn = ac->data;
    redisReply *r = reply;
    op->due--;
    if (cn) {
        cn->pending--;
        if (op->res.status != TG_REDIS_PENDING) cn->abandoned--;
    }
    if (r == NULL) {
        /* hiredis is tearing the context down: an error, EOF, or our own
         * redisAsyncFree (then cn is already detached). */
        if (cn) conn_lost(cn, ac->errstr && ac->errstr[0] ? ac->errstr : "closed");
        op_finish(op, op->sent_ready ? TG_REDIS_LOST : TG_REDIS_UNAVAILABLE);
    } else if (op->res.status == TG_REDIS_PENDING) {
        op_push_reply(op, r);
        if (++op->res.nreplies == op->ncmds) {
            if (op->conn) {
                conn_t *dc = op->conn;
                op->conn = NULL;
                pool_release(dc);
            }
            op_finish(op, TG_REDIS_OK);
        }
    }
    op_unref(op);
}

static void op_timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
    tg_redis_op_t *op = container_of(t, tg_redis_op_t, timer);
    tg_redis_t *red = op->red;
    ev_tstamp now = ev_now(loop);

    if (!op->send_failed && op->conn && op->wt && !tg_lua_wait_cancelled(op->wt)
        && (op->deadline == 0 || now < op->deadline)) {
        /* A blocking command within its time, its waiter still there. */
        ev_tstamp next = TG_REDIS_CANCEL_POLL;
        if (op->deadline && op->deadline - now < next) next = op->deadline - now;
        ev_timer_set(t, next, 0.);
        ev_timer_start(loop, t);
        return;
    }

    int status = op->send_failed ? TG_REDIS_UNAVAILABLE : TG_REDIS_TIMEOUT;
    op->refs++;
    conn_t *dc = op->conn;
    if (dc) {
        /* Redis is still blocked on that connection: close it (that also
         * unblocks Redis). The status is set first so the NULL replies
         * this produces do not count as a lost connection. */
        op->conn = NULL;
        dc->op = NULL;
        op_set(op, status);
        dedicated_close(dc);
        op_wake(op);
    } else {
        conn_t *sh = &red->shared;
        if (sh->ac && op->gen == sh->gen) sh->abandoned += op->due;
        op_set(op, status);
        if (sh->ac && sh->abandoned > TG_REDIS_MAX_ABANDONED) {
            tg_log_warn("redis %s: %d timed-out commands still unanswered; reconnecting",
                        red->addr, sh->abandoned);
            redisAsyncContext *ac = conn_detach(sh);
            redisAsyncFree(ac);   /* other waiters on it: "connection lost" */
        }
        op_wake(op);
    }
    op_unref(op);
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                           */

tg_redis_t *tg_redis_new(tg_worker_t *w) {
    tg_redis_t *red = tg_xcalloc(1, sizeof(*red));
    red->loop = w->loop;
    red->conf = &w->conf->redis;
    conn_init(&red->shared, red, 0);
    tg_link_init(&red->idle);
    tg_link_init(&red->busy);
    ev_timer_init(&red->sweep, sweep_cb, TG_REDIS_SWEEP_INTERVAL, TG_REDIS_SWEEP_INTERVAL);
    ev_prepare_init(&red->flush, flush_cb);
    const char *host = red->conf->host ? red->conf->host : "127.0.0.1";
    snprintf(red->addr, sizeof(red->addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d",
             host, red->conf->port);
    return red;
}

void tg_redis_free(tg_redis_t *red) {
    if (red == NULL) return;
    red->closing = 1;
    ev_timer_stop(red->loop, &red->sweep);
    ev_prepare_stop(red->loop, &red->flush);
    redisAsyncContext *ac = conn_detach(&red->shared);
    if (ac) redisAsyncFree(ac);
    while (!tg_link_empty(&red->idle)) dedicated_close(tg_link_data(red->idle.next, conn_t, link));
    while (!tg_link_empty(&red->busy)) dedicated_close(tg_link_data(red->busy.next, conn_t, link));
    while (red->free_ops) {
        tg_redis_op_t *op = red->free_ops;
        red->free_ops = op->next_free;
        free(op->nodes);
        free(op->strs);
        free(op);
    }
    free(red);
}

/* ------------------------------------------------------------------ */
/* FFI                                                                 */

tg_redis_result_t *tg_ffi_redis_send(int ncmds, const int *argc, const char **argv,
                                     const size_t *lens, int blocking, double timeout_ms,
                                     double block_ms, int *rc) {
    tg_worker_t *w = tg_lua_worker();
    tg_redis_t *red = w ? w->redis : NULL;
    if (red == NULL || red->closing || ncmds < 1 || (blocking && ncmds != 1)) {
        *rc = TG_REDIS_E_UNAVAILABLE;
        return NULL;
    }
    if (timeout_ms <= 0) timeout_ms = red->conf->timeout_ms;

    conn_t *cn;
    if (blocking) {
        /* The shared connection tracks whether Redis is up (and backs off
         * when it is not), so a blocking command dials it too. */
        conn_t *sh = &red->shared;
        if (sh->state == CONN_IDLE && sh->failures == 0) conn_connect(sh);
        if (sh->failures > 0) {
            *rc = TG_REDIS_E_UNAVAILABLE;
            return NULL;
        }
        cn = pool_get(red, rc);
        if (cn == NULL) return NULL;
    } else {
        cn = &red->shared;
        /* Commands queue behind a connect only while nothing has failed
         * yet (first use, or re-dial after a drop); during a back-off they
         * fail at once. */
        if (cn->failures > 0 || (cn->state == CONN_IDLE && conn_connect(cn) != TG_OK)) {
            *rc = TG_REDIS_E_UNAVAILABLE;
            return NULL;
        }
        if (cn->pending + ncmds > TG_REDIS_MAX_PENDING) {
            *rc = TG_REDIS_E_BUSY;
            return NULL;
        }
    }

    tg_lua_wait_t *wt = tg_lua_wait_begin();
    if (wt == NULL) {
        if (blocking) pool_release(cn);
        *rc = TG_REDIS_E_NOYIELD;
        return NULL;
    }

    tg_redis_op_t *op = op_new(red);
    op->wt = wt;
    op->ncmds = ncmds;
    op->refs = 1;                       /* the reader */
    op->sent_ready = cn->state == CONN_READY;
    op->gen = cn->gen;
    if (blocking) {
        op->conn = cn;
        cn->op = op;
    }
    for (int i = 0, k = 0; i < ncmds; k += argc[i], i++) {
        if (redisAsyncCommandArgv(cn->ac, reply_cb, op, argc[i], argv + k, lens + k) == REDIS_OK) {
            op->refs++;
            op->due++;
            cn->pending++;
        } else {
            op->send_failed = 1;   /* cannot happen on a live context */
        }
    }

    /* The wait ends in a callback, never before the Lua side has yielded:
     * even a failed send completes from the timer. */
    ev_tstamp first;
    if (op->send_failed) {
        first = 0.;
    } else if (blocking) {
        ev_tstamp wait = (block_ms + tg_max(timeout_ms, TG_REDIS_BLOCK_SLACK_MS)) / 1000.0;
        op->deadline = block_ms < 0 ? 0 : ev_now(red->loop) + wait;
        first = TG_REDIS_CANCEL_POLL;
        if (op->deadline && wait < first) first = wait;
    } else {
        first = timeout_ms / 1000.0;
    }
    ev_timer_init(&op->timer, op_timer_cb, first, 0.);
    ev_timer_start(red->loop, &op->timer);
    *rc = 0;
    return &op->res;
}

void tg_ffi_redis_done(tg_redis_result_t *res) {
    if (res) op_unref((tg_redis_op_t *)res);
}

void tg_ffi_redis_sha1_hex(const char *s, size_t len, char *out) {
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(s, len, md, &n, EVP_sha1(), NULL) != 1) n = 0;
    for (unsigned int i = 0; i < n && i < 20; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[n >= 20 ? 40 : 2 * n] = '\0';
}
