/*
 * tg_redis.h: the worker's non-blocking Redis client behind tg.redis (see
 * DESIGN.md "Redis" and docs/redis.md).
 *
 * hiredis async contexts on the worker's libev loop, to the config's
 * top-level `redis:` block. Ordinary commands share one pipelined
 * connection per worker (replies come back in order, so any number of
 * requests can have commands in flight at once); commands that block in
 * Redis (BLPOP, XREAD BLOCK, WAIT...) each take a dedicated connection
 * from a small pool (at most `pool_size`), so they never hold up the
 * shared one. Nothing here blocks: while Redis is unreachable commands fail
 * at once and the shared connection is retried in the background with an
 * exponential back-off.
 *
 * The Lua side (lua/tollgate/redis.lua) calls tg_ffi_redis_send() from a
 * request or timer coroutine, yields (runtime.wait()), and when resumed
 * reads the result in place (tg_redis_result_t: replies flattened into one
 * array of nodes plus one string buffer, no Lua tables built in C) and
 * releases it with tg_ffi_redis_done().
 */
#ifndef TG_REDIS_H
#define TG_REDIS_H

#include "tg_conf.h"

typedef struct tg_redis_s  tg_redis_t;
typedef struct tg_worker_s tg_worker_t;

/* Final status of an operation (tg_redis_result_t.status; mirrored in
 * lua/tollgate/redis.lua). */
#define TG_REDIS_PENDING     -1
#define TG_REDIS_OK           0  /* every reply arrived (one may be a Redis error reply) */
#define TG_REDIS_TIMEOUT      1  /* the per-call timeout passed first */
#define TG_REDIS_UNAVAILABLE  2  /* no usable connection (down, refused, AUTH failed) */
#define TG_REDIS_LOST         3  /* the connection broke after the command went out */

/* Why tg_ffi_redis_send() started nothing (*rc when it returns NULL). */
#define TG_REDIS_E_NOYIELD     -1  /* not in a coroutine that may yield */
#define TG_REDIS_E_UNAVAILABLE -2  /* Redis is down (back-off running) */
#define TG_REDIS_E_BUSY        -3  /* shared connection or blocking pool full */

/* One reply value, pre-order: an array node is followed by its n
 * elements. type is hiredis' REDIS_REPLY_* (STRING 1, ARRAY 2, INTEGER 3,
 * NIL 4, STATUS 5, ERROR 6). */
typedef struct {
    int       type;
    int       n;          /* ARRAY: number of elements */
    long long integer;    /* INTEGER */
    size_t    len;        /* STRING, STATUS, ERROR: bytes at strs + off */
    size_t    off;
} tg_redis_node_t;

/* What Lua reads after the wait. nodes/strs hold `nreplies` top-level
 * values (one per command sent), valid until tg_ffi_redis_done(). */
typedef struct {
    int              status;     /* TG_REDIS_* */
    int              nreplies;
    tg_redis_node_t *nodes;
    const char      *strs;
} tg_redis_result_t;

/* Creates the worker's client (cheap: nothing connects until the first
 * command). Borrows w and w->conf for its life. */
tg_redis_t *tg_redis_new(tg_worker_t *w);
/* Closes every connection; operations still pending complete without
 * resuming anyone (call after the Lua VM is gone). NULL is fine. */
void tg_redis_free(tg_redis_t *red);

/* ---- FFI (lua/tollgate/redis.lua) ---- */

/* Starts ncmds commands as one operation: command i has argc[i] arguments,
 * taken in order from argv/lens (copied before returning). blocking: the
 * commands may block in Redis (one command; a dedicated connection);
 * block_ms is how long it may block (< 0: forever), and the wait ends after
 * block_ms + max(timeout_ms, 500 ms). timeout_ms <= 0: the config's
 * redis.timeout_ms. On success registers the
 * running coroutine (tg_lua_wait_begin) and returns the result the Lua side
 * reads after it is resumed; it then must call tg_ffi_redis_done(). On
 * failure returns NULL with *rc = TG_REDIS_E_*. */
tg_redis_result_t *tg_ffi_redis_send(int ncmds, const int *argc, const char **argv,
                                     const size_t *lens, int blocking, double timeout_ms,
                                     double block_ms, int *rc);
/* Releases a result returned by tg_ffi_redis_send(). */
void tg_ffi_redis_done(tg_redis_result_t *res);
/* Lowercase hex SHA1 of s (EVALSHA's script id) into out[41]. */
void tg_ffi_redis_sha1_hex(const char *s, size_t len, char *out);

#endif
