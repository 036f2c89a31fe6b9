/*
 * tg_pool.h: region allocator. A pool hands out memory from large blocks and
 * frees all of it at once in tg_pool_destroy(); cleanups registered on it run
 * first, in reverse order. Used for the config snapshot and per request.
 *
 * Out-of-memory policy (the only place it is written down): the gateway is
 * useless without memory for a config or a request head, so allocation
 * failure of these small, bounded objects aborts the process with a message;
 * the master restarts a worker that died. Large, client-driven sizes (bodies)
 * are bounded by config limits before they are allocated.
 */
#ifndef TG_POOL_H
#define TG_POOL_H

#include "tg_core.h"

typedef struct tg_pool_s tg_pool_t;
typedef void (*tg_pool_cleanup_pt)(void *data);

/* Creates a pool whose blocks are at least block_size bytes. */
tg_pool_t *tg_pool_create(size_t block_size);
/* Runs cleanups (last registered first), then frees every block. NULL ok. */
void tg_pool_destroy(tg_pool_t *pool);
/* Frees everything but the first block, which is kept for reuse. */
void tg_pool_reset(tg_pool_t *pool);

/* 16-byte aligned memory valid until the pool is destroyed or reset. */
void *tg_pool_alloc(tg_pool_t *pool, size_t size);
void *tg_pool_calloc(tg_pool_t *pool, size_t size);
/* NUL-terminated copy of s[0..len). */
char *tg_pool_strndup(tg_pool_t *pool, const char *s, size_t len);
char *tg_pool_strdup(tg_pool_t *pool, const char *s);
/* printf into the pool. */
char *tg_pool_printf(tg_pool_t *pool, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Registers fn(data) to run when the pool is destroyed or reset. */
void tg_pool_cleanup_add(tg_pool_t *pool, tg_pool_cleanup_pt fn, void *data);

/* malloc/calloc/realloc that abort with a message on failure (see above). */
void *tg_xmalloc(size_t size);
void *tg_xcalloc(size_t n, size_t size);
void *tg_xrealloc(void *p, size_t size);
char *tg_xstrdup(const char *s);

#endif
