/*
 * tg_shdict.c: shared dictionaries in shared memory (see tg_shdict.h).
 *
 * One zone per configured dict: a single mmap(MAP_SHARED|MAP_ANONYMOUS)
 * region made by the master before it forks. Every worker, of this
 * generation and of every later one, inherits the mapping at the same
 * virtual address, so plain pointers inside a zone are valid in all of them.
 * That is why zones are never unmapped or moved, and why a zone created on
 * reload is only visible to workers forked after it.
 *
 * Layout of a zone:
 *
 *   [ header: lock, hash seed, LRU sentinel, allocator state, name ]
 *   [ hash buckets: one pointer per 256 bytes of zone, a power of two ]
 *   [ arena: blocks of entries and free blocks ...     ][ sentinel ]
 *
 * Entries (node_t) hold key and value inline, are chained in a bucket, and
 * sit on one LRU list (head = most recently used). Expiry is checked on
 * access against a millisecond CLOCK_MONOTONIC, which is system-wide and so
 * agrees across processes (not across a reboot, which the zones don't
 * survive either).
 *
 * The allocator is TLSF-style segregated fit (Masmano et al.): every block
 * carries its own and its physical predecessor's size, free blocks are
 * coalesced with both neighbours at once, and free lists are kept per size
 * class (a power-of-two range split into 16 sub-ranges) with two bitmaps, so
 * allocation and release are O(1) and a request is served from the smallest
 * class whose blocks all fit ("good fit"). Unlike a slab allocator, memory
 * never gets stuck in a size class: under set/delete churn of mixed sizes
 * the free space merges back (the churn test checks this). Cost: 16 bytes
 * of header per entry, and a large value may not fit even when free_space
 * says it would, if free memory is split between live entries.
 *
 * When an allocation fails, up to TG_SHDICT_EXPIRE_SCAN entries at the cold
 * end of the LRU list are checked and the expired ones freed; then, unless
 * the store is SAFE, live entries are evicted from the cold end, at most
 * TG_SHDICT_MAX_EVICT per store (the caller is told: "forcible").
 *
 * Locking: one process-shared, robust mutex per zone, held for one short
 * operation. If its owner died holding it, the next locker gets EOWNERDEAD,
 * marks the mutex consistent and carries on. If the owner died in the middle
 * of changing the zone (z->dirty), lists and blocks may be half-linked;
 * rather than walk a possibly corrupt heap, the zone is reset to empty and a
 * warning logged: a lost counter is better than a crashed worker.
 */
#include "tg_shdict.h"
#include "tg_log.h"
#include "tg_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define TG_SHDICT_MAGIC       0x7467736864696374ULL   /* "tgshdict" */
#define TG_SHDICT_BUCKET_BYTES 256   /* zone bytes per hash bucket: chains stay short for ~100-byte entries */
#define TG_SHDICT_EXPIRE_SCAN 64     /* cold entries checked for expiry when memory runs out */
#define TG_SHDICT_MAX_EVICT   64     /* live entries evicted at most per store: bounds lock time */
#define TG_SHDICT_FIT_SCAN    32     /* free blocks tried first-fit when good fit finds none */
#define TG_SHDICT_TAIL_EXPIRE 2      /* expired entries freed at the cold end on every write */
#define TG_SHDICT_MAX_SIZE    ((size_t)1 << 40)  /* allocator classes cover up to this */

/* ------------------------------------------------------------------ */
/* layout                                                              */

typedef struct q_s {
    struct q_s *prev, *next;
} q_t;

typedef struct node_s {
    q_t            lru;          /* first member: a q_t * is a node_t * */
    struct node_s *hnext;        /* hash chain */
    uint64_t       expires;      /* ms on the monotonic clock; 0 = never */
    uint32_t       hash;
    uint32_t       user_flags;
    uint32_t       value_len;
    uint16_t       key_len;
    uint8_t        type;         /* TG_SHDICT_T* */
    uint8_t        pad;
    char           data[];       /* key, then value */
} node_t;

/* Block header, in front of every block (used or free). Sizes include the
 * header and are multiples of 16, so bit 0 is free for the "used" flag. */
typedef struct blk_s {
    size_t prev_size;            /* physical predecessor's size; 0 = first */
    size_t size;
} blk_t;

typedef struct fblk_s {
    blk_t          h;
    struct fblk_s *next, *prev;  /* free list of its size class */
} fblk_t;

#define BLK_USED      ((size_t)1)
#define BLK_HDR       sizeof(blk_t)
#define BLK_MIN       sizeof(fblk_t)
#define ALIGN_SHIFT   4
#define SL_BITS       4
#define SL_COUNT      (1 << SL_BITS)
#define FL_SHIFT      (SL_BITS + ALIGN_SHIFT)
#define SMALL_BLOCK   ((size_t)1 << FL_SHIFT)  /* below: one class per 16 bytes */
#define FL_COUNT      34                       /* classes up to TG_SHDICT_MAX_SIZE */

struct tg_shdict_s {
    uint64_t        magic;
    pthread_mutex_t mutex;
    int             dirty;       /* the lock holder is changing the zone */
    size_t          size;        /* the whole mapping */
    uint64_t        seed[2];     /* SipHash key: hash flooding needs it secret */
    node_t        **buckets;
    size_t          mask;
    q_t             lru;         /* next = most recent, prev = coldest */
    size_t          nentries;

    char           *arena;       /* first block */
    char           *arena_end;   /* the sentinel block header */
    size_t          free_bytes;  /* sum of free block sizes */
    uint64_t        fl_bitmap;
    uint32_t        sl_bitmap[FL_COUNT];
    fblk_t         *free_heads[FL_COUNT][SL_COUNT];

    char            name[TG_SHDICT_NAME_MAX + 1];
};

/* ------------------------------------------------------------------ */
/* clock                                                               */

static uint64_t monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Test hook only (tg_shdict_set_clock); per process, never changed in the
 * gateway. */
static uint64_t (*now_ms_fn)(void) = monotonic_ms;

void tg_shdict_set_clock(uint64_t (*now_ms)(void)) {
    now_ms_fn = now_ms ? now_ms : monotonic_ms;
}

/* The clock is read at most once per operation and only if an entry with a
 * TTL is involved: most counters and caches never pay for it. */
typedef struct {
    uint64_t v;
    int      have;
} now_t;

static inline uint64_t now_get(now_t *now) {
    if (!now->have) {
        now->v = now_ms_fn();
        now->have = 1;
    }
    return now->v;
}

static inline int expired(const node_t *n, now_t *now) {
    return n->expires != 0 && n->expires <= now_get(now);
}

static inline uint64_t expires_at(int64_t ttl_ms, now_t *now) {
    return ttl_ms > 0 ? now_get(now) + (uint64_t)ttl_ms : 0;
}

/* ------------------------------------------------------------------ */
/* hashing: SipHash-1-3 with a random key per zone, as Redis does, because
 * keys (client IPs, header values) are chosen by clients.               */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
} while (0)

static uint32_t key_hash(const uint64_t seed[2], const char *key, size_t len) {
    const unsigned char *in = (const unsigned char *)key;
    const unsigned char *end = in + len - (len % 8);
    uint64_t v0 = 0x736f6d6570736575ULL ^ seed[0];
    uint64_t v1 = 0x646f72616e646f6dULL ^ seed[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ seed[0];
    uint64_t v3 = 0x7465646279746573ULL ^ seed[1];
    uint64_t b = (uint64_t)len << 56;

    for (; in != end; in += 8) {
        uint64_t m;
        memcpy(&m, in, 8);        /* host order: the hash never leaves the host */
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    switch (len & 7) {
    case 7: b |= (uint64_t)in[6] << 48; /* fall through */
    case 6: b |= (uint64_t)in[5] << 40; /* fall through */
    case 5: b |= (uint64_t)in[4] << 32; /* fall through */
    case 4: b |= (uint64_t)in[3] << 24; /* fall through */
    case 3: b |= (uint64_t)in[2] << 16; /* fall through */
    case 2: b |= (uint64_t)in[1] << 8;  /* fall through */
    case 1: b |= (uint64_t)in[0];       break;
    default: break;
    }
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    uint64_t h = v0 ^ v1 ^ v2 ^ v3;
    return (uint32_t)(h ^ (h >> 32));
}

/* ------------------------------------------------------------------ */
/* LRU queue                                                           */

static inline void q_init(q_t *q) { q->prev = q->next = q; }

static inline void q_remove(q_t *x) {
    x->prev->next = x->next;
    x->next->prev = x->prev;
}

static inline void q_insert_head(q_t *h, q_t *x) {
    x->next = h->next;
    x->prev = h;
    h->next->prev = x;
    h->next = x;
}

static inline void q_touch(q_t *h, q_t *x) {
    if (h->next != x) {
        q_remove(x);
        q_insert_head(h, x);
    }
}

/* ------------------------------------------------------------------ */
/* allocator (TLSF-style, see the top of the file)                     */

static inline size_t blk_size(const blk_t *b) { return b->size & ~BLK_USED; }
static inline blk_t *blk_next(blk_t *b) { return (blk_t *)((char *)b + blk_size(b)); }
static inline blk_t *blk_of(void *p) { return (blk_t *)((char *)p - BLK_HDR); }

static inline int fls_size(size_t s) { return 63 - __builtin_clzll((unsigned long long)s); }

static inline void mapping(size_t size, int *fl, int *sl) {
    if (size < SMALL_BLOCK) {
        *fl = 0;
        *sl = (int)(size >> ALIGN_SHIFT);
    } else {
        int t = fls_size(size);
        *fl = t - FL_SHIFT + 1;
        *sl = (int)((size >> (t - SL_BITS)) & (SL_COUNT - 1));
    }
}

static void free_insert(tg_shdict_t *z, fblk_t *b) {
    int fl, sl;
    mapping(blk_size(&b->h), &fl, &sl);
    b->prev = NULL;
    b->next = z->free_heads[fl][sl];
    if (b->next) b->next->prev = b;
    z->free_heads[fl][sl] = b;
    z->fl_bitmap |= (uint64_t)1 << fl;
    z->sl_bitmap[fl] |= 1u << sl;
}

static void free_remove(tg_shdict_t *z, fblk_t *b) {
    int fl, sl;
    mapping(blk_size(&b->h), &fl, &sl);
    if (b->next) b->next->prev = b->prev;
    if (b->prev) {
        b->prev->next = b->next;
    } else {
        z->free_heads[fl][sl] = b->next;
        if (b->next == NULL) {
            z->sl_bitmap[fl] &= ~(1u << sl);
            if (z->sl_bitmap[fl] == 0) z->fl_bitmap &= ~((uint64_t)1 << fl);
        }
    }
}

/* b is free and on no list: merge it with free neighbours and file it. */
static void blk_release(tg_shdict_t *z, blk_t *b) {
    z->free_bytes += blk_size(b);
    blk_t *next = blk_next(b);
    if (!(next->size & BLK_USED)) {
        free_remove(z, (fblk_t *)next);
        b->size += next->size;
    }
    if (b->prev_size) {
        blk_t *prev = (blk_t *)((char *)b - b->prev_size);
        if (!(prev->size & BLK_USED)) {
            free_remove(z, (fblk_t *)prev);
            prev->size += b->size;
            b = prev;
        }
    }
    blk_next(b)->prev_size = blk_size(b);
    free_insert(z, (fblk_t *)b);
}

/* Shrinks used block b to need bytes if the rest makes a block. */
static void blk_split(tg_shdict_t *z, blk_t *b, size_t need) {
    size_t rest = blk_size(b) - need;
    if (rest < BLK_MIN) return;
    b->size = need | BLK_USED;
    blk_t *r = (blk_t *)((char *)b + need);
    r->prev_size = need;
    r->size = rest;
    blk_next(r)->prev_size = rest;
    blk_release(z, r);
}

static inline size_t blk_need(size_t n) {
    size_t need = (n + BLK_HDR + 15) & ~(size_t)15;
    return need < BLK_MIN ? BLK_MIN : need;
}

static void *blk_alloc(tg_shdict_t *z, size_t n) {
    size_t need = blk_need(n);
    size_t search = need;
    int fl, sl;

    /* Round up to the next class boundary so that any block found fits. */
    if (search >= SMALL_BLOCK) search += ((size_t)1 << (fls_size(search) - SL_BITS)) - 1;
    mapping(search, &fl, &sl);

    fblk_t *b = NULL;
    uint32_t slmap = fl < FL_COUNT ? z->sl_bitmap[fl] & (~0u << sl) : 0;
    if (slmap == 0 && fl + 1 < FL_COUNT) {
        uint64_t flmap = z->fl_bitmap & (~(uint64_t)0 << (fl + 1));
        if (flmap) {
            fl = __builtin_ctzll(flmap);
            slmap = z->sl_bitmap[fl];
        }
    }
    if (slmap) {
        b = z->free_heads[fl][__builtin_ctz(slmap)];
    } else {
        /* No class whose every block fits: the blocks of need's own class
         * may still hold one big enough (e.g. a value nearly as large as
         * the whole free arena). A bounded first-fit look. */
        mapping(need, &fl, &sl);
        b = fl < FL_COUNT ? z->free_heads[fl][sl] : NULL;
        for (int i = 0; b && blk_size(&b->h) < need; i++)
            b = i < TG_SHDICT_FIT_SCAN ? b->next : NULL;
        if (b == NULL) return NULL;
    }
    free_remove(z, b);
    z->free_bytes -= blk_size(&b->h);
    b->h.size |= BLK_USED;
    blk_split(z, &b->h, need);
    return (char *)b + BLK_HDR;
}

static void blk_free(tg_shdict_t *z, void *p) {
    blk_t *b = blk_of(p);
    b->size &= ~BLK_USED;
    blk_release(z, b);
}

/* Empties the zone: no entries, the arena one free block. */
static void zone_reset(tg_shdict_t *z) {
    memset(z->buckets, 0, (z->mask + 1) * sizeof(node_t *));
    q_init(&z->lru);
    z->nentries = 0;
    z->free_bytes = 0;
    z->fl_bitmap = 0;
    memset(z->sl_bitmap, 0, sizeof(z->sl_bitmap));
    memset(z->free_heads, 0, sizeof(z->free_heads));

    blk_t *first = (blk_t *)z->arena;
    blk_t *sentinel = (blk_t *)z->arena_end;
    first->prev_size = 0;
    first->size = (size_t)(z->arena_end - z->arena);
    sentinel->prev_size = first->size;
    sentinel->size = 0 | BLK_USED;
    first->size |= BLK_USED;
    blk_free(z, (char *)first + BLK_HDR);
}

/* ------------------------------------------------------------------ */
/* lock                                                                */

/* The dirty flag must be set before the first change and cleared after the
 * last one in program order, or a SIGKILL between them would go unnoticed;
 * the signal fences stop the compiler from moving stores across it. */
static void zone_lock(tg_shdict_t *z) {
    int rc = pthread_mutex_lock(&z->mutex);
    if (tg_unlikely(rc != 0)) {
        if (rc != EOWNERDEAD) {
            tg_log_write(TG_LOG_CRIT, NULL, "shared dict \"%s\": lock failed: %s",
                         z->name, strerror(rc));
            abort();
        }
        pthread_mutex_consistent(&z->mutex);
        if (z->dirty) {
            zone_reset(z);
            tg_log_warn("shared dict \"%s\": a process died while changing it, "
                        "all entries dropped", z->name);
        } else {
            tg_log_notice("shared dict \"%s\": a process died holding its lock", z->name);
        }
    }
    __atomic_store_n(&z->dirty, 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static void zone_unlock(tg_shdict_t *z) {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&z->dirty, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&z->mutex);
}

void tg_shdict_test_lock(tg_shdict_t *d, int dirty) {
    pthread_mutex_lock(&d->mutex);
    d->dirty = dirty;
}

/* ------------------------------------------------------------------ */
/* entries                                                             */

static node_t *node_lookup(tg_shdict_t *z, uint32_t hash, const char *key, size_t klen) {
    for (node_t *n = z->buckets[hash & z->mask]; n; n = n->hnext) {
        if (n->hash == hash && n->key_len == klen && memcmp(n->data, key, klen) == 0)
            return n;
    }
    return NULL;
}

static void node_free(tg_shdict_t *z, node_t *n) {
    node_t **pp = &z->buckets[n->hash & z->mask];
    while (*pp != n) pp = &(*pp)->hnext;
    *pp = n->hnext;
    q_remove(&n->lru);
    z->nentries--;
    blk_free(z, n);
}

/* Frees up to n expired entries at the cold end, stopping at a live one:
 * cheap garbage collection on every write, as OpenResty does. */
static void expire_tail(tg_shdict_t *z, int n, now_t *now) {
    while (n-- > 0 && z->lru.prev != &z->lru) {
        node_t *cold = (node_t *)z->lru.prev;
        if (!expired(cold, now)) return;
        node_free(z, cold);
    }
}

/* Allocates an entry of size bytes, making room as described at the top.
 * Frees entries: the caller must hold no node pointers across it. */
static node_t *node_alloc(tg_shdict_t *z, size_t size, int safe, int *forcible, now_t *now) {
    node_t *n = blk_alloc(z, size);
    if (n) return n;

    int freed = 0;
    q_t *q = z->lru.prev;
    for (int i = 0; i < TG_SHDICT_EXPIRE_SCAN && q != &z->lru; i++) {
        node_t *cold = (node_t *)q;
        q = q->prev;
        if (expired(cold, now)) {
            node_free(z, cold);
            freed = 1;
        }
    }
    if (freed && (n = blk_alloc(z, size)) != NULL) return n;
    if (safe) return NULL;

    for (int i = 0; i < TG_SHDICT_MAX_EVICT && z->lru.prev != &z->lru; i++) {
        node_t *cold = (node_t *)z->lru.prev;
        if (!expired(cold, now)) *forcible = 1;
        node_free(z, cold);
        if ((n = blk_alloc(z, size)) != NULL) return n;
    }
    return NULL;
}

static void node_link(tg_shdict_t *z, node_t *n, uint32_t hash, const char *key, size_t klen) {
    n->hash = hash;
    n->key_len = (uint16_t)klen;
    n->pad = 0;
    memcpy(n->data, key, klen);
    n->hnext = z->buckets[hash & z->mask];
    z->buckets[hash & z->mask] = n;
    q_insert_head(&z->lru, &n->lru);
    z->nentries++;
}

static void node_set_value(node_t *n, int type, const char *str, size_t len, double num) {
    char *v = n->data + n->key_len;
    n->type = (uint8_t)type;
    switch (type) {
    case TG_SHDICT_TSTRING:
        n->value_len = (uint32_t)len;
        if (len) memcpy(v, str, len);
        break;
    case TG_SHDICT_TNUMBER:
        n->value_len = sizeof(double);
        memcpy(v, &num, sizeof(double));
        break;
    default: /* boolean */
        n->value_len = 1;
        v[0] = num != 0;
        break;
    }
}

static inline double node_number(const node_t *n) {
    double d;
    memcpy(&d, n->data + n->key_len, sizeof(double));
    return d;
}

static int key_check(const char *key, size_t klen, const char **err) {
    if (klen == 0) {
        *err = "empty key";
        return TG_ERROR;
    }
    if (klen > TG_SHDICT_KEY_MAX || key == NULL) {
        *err = key ? "key too long" : "bad key";
        return TG_ERROR;
    }
    return TG_OK;
}

/* ------------------------------------------------------------------ */
/* operations                                                          */

int tg_shdict_get(tg_shdict_t *z, const char *key, size_t klen,
                  int *value_type, char **str_buf, size_t *str_len,
                  double *num_value, uint32_t *user_flags,
                  int get_stale, int *is_stale, const char **err) {
    if (key_check(key, klen, err) != TG_OK) return TG_ERROR;
    uint32_t hash = key_hash(z->seed, key, klen);
    now_t now = { 0, 0 };
    int rc = TG_OK;

    *value_type = TG_SHDICT_TNIL;
    *user_flags = 0;
    if (is_stale) *is_stale = 0;

    zone_lock(z);
    node_t *n = node_lookup(z, hash, key, klen);
    int stale = n && expired(n, &now);
    if (n == NULL || (stale && !get_stale)) goto done;

    const char *v = n->data + n->key_len;
    switch (n->type) {
    case TG_SHDICT_TSTRING:
        if (n->value_len > *str_len) {
            /* malloc under the lock: rare (the Lua side's buffer is 4 KiB)
             * and the only way to copy a value that may change after. */
            char *p = malloc(n->value_len);
            if (p == NULL) {
                *err = "no memory";
                rc = TG_ERROR;
                goto done;
            }
            *str_buf = p;
        }
        if (n->value_len) memcpy(*str_buf, v, n->value_len);
        *str_len = n->value_len;
        break;
    case TG_SHDICT_TNUMBER:
        *num_value = node_number(n);
        break;
    default:
        *num_value = v[0];
        break;
    }
    *value_type = n->type;
    *user_flags = n->user_flags;
    if (is_stale) *is_stale = stale;
    if (!stale) q_touch(&z->lru, &n->lru);
done:
    zone_unlock(z);
    return rc;
}

int tg_shdict_store(tg_shdict_t *z, int op, const char *key, size_t klen,
                    int value_type, const char *str, size_t str_len,
                    double num, int64_t ttl_ms, uint32_t user_flags,
                    int *forcible, const char **err) {
    int dummy;
    size_t vlen;

    if (forcible == NULL) forcible = &dummy;
    *forcible = 0;
    if (key_check(key, klen, err) != TG_OK) return TG_ERROR;
    switch (value_type) {
    case TG_SHDICT_TSTRING:
        if (str == NULL && str_len) {
            *err = "bad value";
            return TG_ERROR;
        }
        vlen = str_len;
        break;
    case TG_SHDICT_TNUMBER:  vlen = sizeof(double); break;
    case TG_SHDICT_TBOOLEAN: vlen = 1; break;
    case TG_SHDICT_TNIL:
        if ((op & ~TG_SHDICT_SAFE) != TG_SHDICT_SET) {
            *err = "bad value type";
            return TG_ERROR;
        }
        return tg_shdict_delete(z, key, klen, err);
    default:
        *err = "bad value type";
        return TG_ERROR;
    }
    if (ttl_ms < 0) {
        *err = "bad ttl";
        return TG_ERROR;
    }
    if (vlen > UINT32_MAX) {
        *err = "value too large";
        return TG_ERROR;
    }

    uint32_t hash = key_hash(z->seed, key, klen);
    size_t size = sizeof(node_t) + klen + vlen;
    now_t now = { 0, 0 };
    int rc = TG_OK;

    zone_lock(z);
    expire_tail(z, TG_SHDICT_TAIL_EXPIRE, &now);
    node_t *n = node_lookup(z, hash, key, klen);
    int live = n && !expired(n, &now);

    if ((op & TG_SHDICT_ADD) && live) {
        *err = "exists";
        rc = TG_DECLINED;
        goto done;
    }
    if ((op & TG_SHDICT_REPLACE) && !live) {
        *err = "not found";
        rc = TG_DECLINED;
        goto done;
    }

    if (n && blk_size(blk_of(n)) - BLK_HDR >= size) {
        /* Fits where it is (same-size updates: counters, timestamps). */
        blk_split(z, blk_of(n), blk_need(size));
        q_touch(&z->lru, &n->lru);
    } else {
        if (n) node_free(z, n);   /* OpenResty's order: old value goes first */
        /* add never evicts live entries (tollgate's rule; OpenResty's add
         * does, only safe_add refuses): an add is a "create if absent"
         * claim, and must not win by pushing out someone else's entry. */
        n = node_alloc(z, size, op & (TG_SHDICT_SAFE | TG_SHDICT_ADD), forcible, &now);
        if (n == NULL) {
            *err = "no memory";
            rc = TG_ERROR;
            goto done;
        }
        node_link(z, n, hash, key, klen);
    }
    node_set_value(n, value_type, str, str_len, num);
    n->user_flags = user_flags;
    n->expires = expires_at(ttl_ms, &now);
done:
    zone_unlock(z);
    return rc;
}

int tg_shdict_delete(tg_shdict_t *z, const char *key, size_t klen, const char **err) {
    if (key_check(key, klen, err) != TG_OK) return TG_ERROR;
    uint32_t hash = key_hash(z->seed, key, klen);
    zone_lock(z);
    node_t *n = node_lookup(z, hash, key, klen);
    if (n) node_free(z, n);
    zone_unlock(z);
    return TG_OK;
}

int tg_shdict_incr(tg_shdict_t *z, const char *key, size_t klen,
                   double *value, int has_init, double init,
                   int64_t init_ttl_ms, int *forcible, const char **err) {
    int dummy;

    if (forcible == NULL) forcible = &dummy;
    *forcible = 0;
    if (key_check(key, klen, err) != TG_OK) return TG_ERROR;
    if (init_ttl_ms < 0) {
        *err = "bad ttl";
        return TG_ERROR;
    }

    uint32_t hash = key_hash(z->seed, key, klen);
    now_t now = { 0, 0 };
    int rc = TG_OK;
    double num;

    zone_lock(z);
    expire_tail(z, TG_SHDICT_TAIL_EXPIRE, &now);
    node_t *n = node_lookup(z, hash, key, klen);

    if (n && !expired(n, &now)) {
        if (n->type != TG_SHDICT_TNUMBER) {
            *err = "not a number";
            rc = TG_DECLINED;
            goto done;
        }
        num = node_number(n) + *value;
        memcpy(n->data + n->key_len, &num, sizeof(double));
        q_touch(&z->lru, &n->lru);
        *value = num;
        goto done;
    }

    if (!has_init) {
        *err = "not found";
        rc = TG_DECLINED;
        goto done;
    }

    num = init + *value;
    if (n && n->type == TG_SHDICT_TNUMBER) {
        q_touch(&z->lru, &n->lru);           /* an expired counter: reuse it */
    } else {
        if (n) node_free(z, n);
        n = node_alloc(z, sizeof(node_t) + klen + sizeof(double), 0, forcible, &now);
        if (n == NULL) {
            *err = "no memory";
            rc = TG_ERROR;
            goto done;
        }
        node_link(z, n, hash, key, klen);
    }
    node_set_value(n, TG_SHDICT_TNUMBER, NULL, 0, num);
    n->user_flags = 0;
    n->expires = expires_at(init_ttl_ms, &now);
    *value = num;
done:
    zone_unlock(z);
    return rc;
}

int tg_shdict_expire(tg_shdict_t *z, const char *key, size_t klen,
                     int64_t ttl_ms, const char **err) {
    if (key_check(key, klen, err) != TG_OK) return TG_ERROR;
    if (ttl_ms < 0) {
        *err = "bad ttl";
        return TG_ERROR;
    }
    uint32_t hash = key_hash(z->seed, key, klen);
    now_t now = { 0, 0 };
    int rc = TG_OK;

    zone_lock(z);
    node_t *n = node_lookup(z, hash, key, klen);
    if (n == NULL || expired(n, &now)) {
        *err = "not found";
        rc = TG_DECLINED;
    } else {
        n->expires = expires_at(ttl_ms, &now);
    }
    zone_unlock(z);
    return rc;
}

int tg_shdict_ttl(tg_shdict_t *z, const char *key, size_t klen,
                  int64_t *ttl_ms, const char **err) {
    if (key_check(key, klen, err) != TG_OK) return TG_ERROR;
    uint32_t hash = key_hash(z->seed, key, klen);
    now_t now = { 0, 0 };
    int rc = TG_OK;

    zone_lock(z);
    node_t *n = node_lookup(z, hash, key, klen);
    if (n == NULL || expired(n, &now)) {
        *err = "not found";
        rc = TG_DECLINED;
    } else {
        *ttl_ms = n->expires ? (int64_t)(n->expires - now_get(&now)) : 0;
    }
    zone_unlock(z);
    return rc;
}

void tg_shdict_flush_all(tg_shdict_t *z) {
    zone_lock(z);
    zone_reset(z);
    zone_unlock(z);
}

int tg_shdict_flush_expired(tg_shdict_t *z, int max) {
    now_t now = { 0, 0 };
    int freed = 0;

    zone_lock(z);
    q_t *q = z->lru.prev;
    while (q != &z->lru && (max <= 0 || freed < max)) {
        node_t *n = (node_t *)q;
        q = q->prev;
        if (expired(n, &now)) {
            node_free(z, n);
            freed++;
        }
    }
    zone_unlock(z);
    return freed;
}

int tg_shdict_get_keys(tg_shdict_t *z, int max, char **buf, size_t *len,
                       int *count, const char **err) {
    now_t now = { 0, 0 };
    size_t total = 0;
    int n = 0, rc = TG_OK;

    *buf = NULL;
    *len = 0;
    *count = 0;
    zone_lock(z);
    for (q_t *q = z->lru.next; q != &z->lru && (max <= 0 || n < max); q = q->next) {
        node_t *e = (node_t *)q;
        if (expired(e, &now)) continue;
        total += 2 + e->key_len;
        n++;
    }
    if (n == 0) goto done;

    char *p = malloc(total);
    if (p == NULL) {
        *err = "no memory";
        rc = TG_ERROR;
        goto done;
    }
    size_t off = 0;
    int i = 0;
    for (q_t *q = z->lru.next; q != &z->lru && i < n; q = q->next) {
        node_t *e = (node_t *)q;
        if (expired(e, &now)) continue;
        p[off] = (char)(e->key_len >> 8);
        p[off + 1] = (char)(e->key_len & 0xff);
        memcpy(p + off + 2, e->data, e->key_len);
        off += 2 + e->key_len;
        i++;
    }
    *buf = p;
    *len = total;
    *count = n;
done:
    zone_unlock(z);
    return rc;
}

void tg_shdict_free_buf(char *buf) {
    free(buf);
}

size_t tg_shdict_capacity(const tg_shdict_t *z) {
    return z->size;
}

size_t tg_shdict_free_space(tg_shdict_t *z) {
    zone_lock(z);
    size_t n = z->free_bytes;
    zone_unlock(z);
    return n;
}

const char *tg_shdict_name(const tg_shdict_t *z) {
    return z->name;
}

/* ------------------------------------------------------------------ */
/* zones                                                               */

tg_shdict_t *tg_shdict_create(const char *name, size_t size, const char **err) {
    size_t namelen = strlen(name);
    long page = sysconf(_SC_PAGESIZE);

    if (namelen == 0 || namelen > TG_SHDICT_NAME_MAX) {
        *err = namelen ? "name too long (at most 255 bytes)" : "empty name";
        return NULL;
    }
    if (size < TG_SHDICT_MIN_SIZE) {
        *err = "size too small (at least 32k)";
        return NULL;
    }
    if (size > TG_SHDICT_MAX_SIZE) {
        *err = "size too large (at most 1024g)";
        return NULL;
    }
    size = (size + (size_t)page - 1) & ~((size_t)page - 1);

    tg_shdict_t *z = mmap(NULL, size, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (z == MAP_FAILED) {
        *err = "cannot map shared memory";
        return NULL;
    }

    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&z->mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
        munmap(z, size);
        *err = "cannot create the zone lock";
        return NULL;
    }

    z->magic = TG_SHDICT_MAGIC;
    z->size = size;
    memcpy(z->name, name, namelen + 1);
    if (getrandom(z->seed, sizeof(z->seed), GRND_NONBLOCK) != sizeof(z->seed)) {
        /* No entropy yet (early boot): weaker, still per-zone. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        z->seed[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)z;
        z->seed[1] = (uint64_t)ts.tv_sec ^ 0x9e3779b97f4a7c15ULL;
    }

    /* Buckets: a power of two, about one per TG_SHDICT_BUCKET_BYTES. */
    size_t hdr = (sizeof(*z) + 15) & ~(size_t)15;
    size_t nb = 16;
    while (nb * 2 <= size / TG_SHDICT_BUCKET_BYTES) nb *= 2;
    z->buckets = (node_t **)((char *)z + hdr);
    z->mask = nb - 1;
    z->arena = (char *)z + ((hdr + nb * sizeof(node_t *) + 15) & ~(size_t)15);
    z->arena_end = (char *)z + size - BLK_HDR;
    zone_reset(z);
    return z;
}

void tg_shdict_destroy(tg_shdict_t *z) {
    if (z == NULL) return;
    pthread_mutex_destroy(&z->mutex);
    munmap(z, z->size);
}

/*
 * The registry of zones by name: the one exception in the core to "no
 * global mutable state". The FFI finds a dict by name from Lua, without a
 * tg_worker_t at hand, and a zone must outlive every config snapshot. Only
 * the master writes it (tg_shdict_zones_sync, between forks); a worker reads
 * the copy it inherited at fork and never changes it, so no locking.
 */
typedef struct {
    tg_shdict_t *zone;
    int          active;     /* named in the latest synced config */
} registry_entry_t;

static struct {
    registry_entry_t *e;
    int               n;
    int               cap;
} registry;

static registry_entry_t *registry_lookup(const char *name, size_t len) {
    for (int i = 0; i < registry.n; i++) {
        const char *zn = registry.e[i].zone->name;
        if (strlen(zn) == len && memcmp(zn, name, len) == 0) return &registry.e[i];
    }
    return NULL;
}

int tg_shdict_zones_sync(const tg_conf_t *conf, tg_conf_errors_t *errs) {
    long page = sysconf(_SC_PAGESIZE);
    int rc = TG_OK;

    /* Create what is missing first; flip the active set only if all of it
     * worked, so a failed reload leaves the dicts as they were. */
    for (int i = 0; i < conf->nshared_dicts; i++) {
        const tg_conf_shdict_t *d = &conf->shared_dicts[i];
        registry_entry_t *e = registry_lookup(d->name, strlen(d->name));
        if (e) {
            size_t want = (d->size + (size_t)page - 1) & ~((size_t)page - 1);
            if (want != e->zone->size) {
                tg_log_notice("shared dict \"%s\": size changed from %zu to %zu bytes; "
                              "keeping the old zone until a restart",
                              d->name, e->zone->size, want);
            }
            continue;
        }
        const char *err;
        tg_shdict_t *z = tg_shdict_create(d->name, d->size, &err);
        if (z == NULL) {
            tg_conf_errors_add(errs, "shared_dicts.%s: %s", d->name, err);
            rc = TG_ERROR;
            continue;
        }
        if (registry.n == registry.cap) {
            registry.cap = registry.cap ? registry.cap * 2 : 8;
            registry.e = tg_xrealloc(registry.e, (size_t)registry.cap * sizeof(*registry.e));
        }
        registry.e[registry.n++] = (registry_entry_t){ z, 0 };
    }
    if (rc != TG_OK) return rc;

    for (int i = 0; i < registry.n; i++) registry.e[i].active = 0;
    for (int i = 0; i < conf->nshared_dicts; i++) {
        const char *name = conf->shared_dicts[i].name;
        registry_lookup(name, strlen(name))->active = 1;
    }
    return TG_OK;
}

tg_shdict_t *tg_shdict_find(const char *name, size_t len) {
    registry_entry_t *e = registry_lookup(name, len);
    return e && e->active ? e->zone : NULL;
}
