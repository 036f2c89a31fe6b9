/*
 * tg_pool.c: region allocator (see tg_pool.h). Blocks are singly linked; an
 * allocation larger than a quarter block gets a block of its own so that big
 * objects do not waste the tail of a shared block.
 */
#include "tg_pool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define TG_POOL_ALIGN 16

typedef struct tg_pool_block_s {
    struct tg_pool_block_s *next;
    size_t                  size;   /* usable bytes after the header */
    size_t                  used;
} tg_pool_block_t;

typedef struct tg_pool_cleanup_s {
    struct tg_pool_cleanup_s *next;
    tg_pool_cleanup_pt        fn;
    void                     *data;
} tg_pool_cleanup_t;

struct tg_pool_s {
    tg_pool_block_t   *head;        /* current block, allocation happens here */
    tg_pool_block_t   *first;       /* the block created with the pool */
    tg_pool_cleanup_t *cleanups;
    size_t             block_size;
};

#define BLOCK_HDR ((sizeof(tg_pool_block_t) + TG_POOL_ALIGN - 1) & ~(size_t)(TG_POOL_ALIGN - 1))

static void oom(size_t size) {
    fprintf(stderr, "tollgate: out of memory allocating %zu bytes\n", size);
    abort();
}

void *tg_xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (p == NULL) oom(size);
    return p;
}

void *tg_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL) oom(n * size);
    return p;
}

void *tg_xrealloc(void *p, size_t size) {
    void *q = realloc(p, size ? size : 1);
    if (q == NULL) oom(size);
    return q;
}

char *tg_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = tg_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

static tg_pool_block_t *block_new(size_t size) {
    tg_pool_block_t *b = tg_xmalloc(BLOCK_HDR + size);
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

tg_pool_t *tg_pool_create(size_t block_size) {
    tg_pool_t *pool = tg_xcalloc(1, sizeof(*pool));
    if (block_size < 256) block_size = 256;
    pool->block_size = block_size;
    pool->first = pool->head = block_new(block_size);
    return pool;
}

static void run_cleanups(tg_pool_t *pool) {
    tg_pool_cleanup_t *c = pool->cleanups;
    pool->cleanups = NULL;
    for (; c; c = c->next) c->fn(c->data);
}

void tg_pool_reset(tg_pool_t *pool) {
    run_cleanups(pool);
    tg_pool_block_t *b = pool->head;
    while (b && b != pool->first) {
        tg_pool_block_t *next = b->next;
        free(b);
        b = next;
    }
    /* Blocks are pushed in front of the list, so everything before `first`
     * is newer; `first` may also have big blocks linked after it. */
    b = pool->first->next;
    while (b) {
        tg_pool_block_t *next = b->next;
        free(b);
        b = next;
    }
    pool->first->next = NULL;
    pool->first->used = 0;
    pool->head = pool->first;
}

void tg_pool_destroy(tg_pool_t *pool) {
    if (pool == NULL) return;
    tg_pool_reset(pool);
    free(pool->first);
    free(pool);
}

void *tg_pool_alloc(tg_pool_t *pool, size_t size) {
    size = (size + TG_POOL_ALIGN - 1) & ~(size_t)(TG_POOL_ALIGN - 1);
    tg_pool_block_t *b = pool->head;
    if (b->size - b->used >= size) {
        void *p = (char *)b + BLOCK_HDR + b->used;
        b->used += size;
        return p;
    }
    if (size > pool->block_size / 4) {
        /* Big allocation: own block, linked behind head so head keeps its tail. */
        tg_pool_block_t *big = block_new(size);
        big->used = size;
        big->next = b->next;
        b->next = big;
        return (char *)big + BLOCK_HDR;
    }
    tg_pool_block_t *nb = block_new(pool->block_size);
    nb->next = pool->head;
    pool->head = nb;
    nb->used = size;
    return (char *)nb + BLOCK_HDR;
}

void *tg_pool_calloc(tg_pool_t *pool, size_t size) {
    void *p = tg_pool_alloc(pool, size);
    memset(p, 0, size);
    return p;
}

char *tg_pool_strndup(tg_pool_t *pool, const char *s, size_t len) {
    char *d = tg_pool_alloc(pool, len + 1);
    if (len) memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

char *tg_pool_strdup(tg_pool_t *pool, const char *s) {
    return tg_pool_strndup(pool, s, strlen(s));
}

char *tg_pool_printf(tg_pool_t *pool, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    char *d = tg_pool_alloc(pool, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}

void tg_pool_cleanup_add(tg_pool_t *pool, tg_pool_cleanup_pt fn, void *data) {
    tg_pool_cleanup_t *c = tg_pool_alloc(pool, sizeof(*c));
    c->fn = fn;
    c->data = data;
    c->next = pool->cleanups;
    pool->cleanups = c;
}
