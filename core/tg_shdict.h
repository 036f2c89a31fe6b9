/*
 * tg_shdict.h: shared dictionaries (`tg.shared.dict(name)`), one shared
 * memory zone per name configured under `shared_dicts:`, visible to every
 * worker of every generation. The semantics are OpenResty's ngx.shared.DICT:
 * string / number / boolean values with 32-bit user flags, per-key TTLs in
 * milliseconds checked on access, LRU eviction when a zone is full, and
 * `incr` with an initial value and TTL as one locked operation (what makes
 * local rate limiting exact across workers).
 *
 * The API uses plain C types only so that the Lua wrapper
 * (lua/tollgate/shdict.lua) calls it through the LuaJIT FFI. Keys are
 * binary-safe, 1..TG_SHDICT_KEY_MAX bytes, and are copied, never kept.
 * Every call takes the zone's process-shared lock for a short, bounded time
 * and never blocks on anything else. Errors come back as static strings
 * through `err` (never freed).
 *
 * Return codes: TG_OK on success; TG_DECLINED for an expected "no" ("exists",
 * "not found", "not a number"); TG_ERROR for bad arguments or "no memory".
 */
#ifndef TG_SHDICT_H
#define TG_SHDICT_H

#include "tg_core.h"
#include "tg_conf.h"

typedef struct tg_shdict_s tg_shdict_t;   /* a zone; opaque, lives in shm */

#define TG_SHDICT_KEY_MAX   65535      /* keys are stored with a 16-bit length */
#define TG_SHDICT_NAME_MAX  255        /* dict names, from the config */
#define TG_SHDICT_MIN_SIZE  (32 * 1024) /* header + hash table + a few entries */

/* Value types; the numbers are Lua's type tags, as in lua-nginx-module. */
#define TG_SHDICT_TNIL      0
#define TG_SHDICT_TBOOLEAN  1
#define TG_SHDICT_TNUMBER   3
#define TG_SHDICT_TSTRING   4

/* tg_shdict_store() operations; combine SAFE with the others. */
#define TG_SHDICT_SET       0x0   /* create or overwrite */
#define TG_SHDICT_ADD       0x1   /* only if the key is missing or expired;
                                     never evicts (implies SAFE) */
#define TG_SHDICT_REPLACE   0x2   /* only if the key exists and is live */
#define TG_SHDICT_SAFE      0x4   /* never evict live entries: "no memory" */

/* ---- zones and the registry (master) ------------------------------------ */

/* Creates, in the master before it forks, a zone for every configured dict
 * that has none yet, and marks the configured ones active. An existing zone
 * is kept with its data; a changed size keeps the old zone and logs a notice
 * (resizing needs a restart). Zones are never unmapped: workers of an older
 * generation may still use a dict the new config removed; such a dict is
 * only hidden from tg_shdict_find() in processes forked afterwards. Failures
 * (mmap, bad size, name too long) go to errs and make it return TG_ERROR;
 * the zones created before the failure stay. */
int tg_shdict_zones_sync(const tg_conf_t *conf, tg_conf_errors_t *errs);

/* The active zone called name[0..len), or NULL. Read-only use of the
 * registry: safe in workers, which got their copy of it at fork. */
tg_shdict_t *tg_shdict_find(const char *name, size_t len);

/* A standalone zone of size bytes (rounded up to pages), not registered.
 * The registry uses it; tests use it directly. NULL with err on failure. */
tg_shdict_t *tg_shdict_create(const char *name, size_t size, const char **err);
/* Unmaps a standalone zone. Never call it on a registered zone. */
void tg_shdict_destroy(tg_shdict_t *d);

/* The zone's name (NUL-terminated, in the zone). */
const char *tg_shdict_name(const tg_shdict_t *d);

/* ---- operations (any process) ------------------------------------------ */

/* Looks key up. Not found (or expired, unless get_stale): TG_OK with
 * *value_type = TG_SHDICT_TNIL. A number or boolean (0/1) comes back in
 * *num_value. A string is copied into *str_buf when it fits in *str_len
 * bytes; otherwise *str_buf is replaced by a malloc'ed buffer that the
 * caller frees with tg_shdict_free_buf(). *str_len is set to the length.
 * *is_stale (may be NULL) tells whether a get_stale hit had expired.
 * TG_ERROR with err on a bad key or when malloc fails. */
int tg_shdict_get(tg_shdict_t *d, const char *key, size_t key_len,
                  int *value_type, char **str_buf, size_t *str_len,
                  double *num_value, uint32_t *user_flags,
                  int get_stale, int *is_stale, const char **err);

/* set / add / replace, optionally SAFE (see TG_SHDICT_SET...). value_type
 * TNIL deletes. Strings come from str[0..str_len), numbers and booleans
 * (0/1) from num. ttl_ms 0 means never expires. *forcible (may be NULL) is
 * set to 1 when live entries were evicted to make room. TG_DECLINED with
 * "exists" (add) or "not found" (replace); TG_ERROR with "no memory".
 * As in OpenResty, a store that fails for lack of memory has already
 * dropped the key's old value. */
int tg_shdict_store(tg_shdict_t *d, int op, const char *key, size_t key_len,
                    int value_type, const char *str, size_t str_len,
                    double num, int64_t ttl_ms, uint32_t user_flags,
                    int *forcible, const char **err);

/* Removes key. TG_OK whether or not it was there. */
int tg_shdict_delete(tg_shdict_t *d, const char *key, size_t key_len,
                     const char **err);

/* Adds *value to the number at key and returns the sum in *value, in one
 * locked step. A missing or expired key becomes init + *value with TTL
 * init_ttl_ms when has_init (may evict: *forcible), else TG_DECLINED "not
 * found". A live key keeps its TTL and flags. TG_DECLINED "not a number" if
 * the value is not a number. */
int tg_shdict_incr(tg_shdict_t *d, const char *key, size_t key_len,
                   double *value, int has_init, double init,
                   int64_t init_ttl_ms, int *forcible, const char **err);

/* Sets a live key's TTL (0 = never expires). TG_DECLINED "not found". */
int tg_shdict_expire(tg_shdict_t *d, const char *key, size_t key_len,
                     int64_t ttl_ms, const char **err);
/* A live key's remaining TTL in *ttl_ms (0 = never expires; an entry due
 * this millisecond reports 1 until it expires). TG_DECLINED "not found". */
int tg_shdict_ttl(tg_shdict_t *d, const char *key, size_t key_len,
                  int64_t *ttl_ms, const char **err);

/* Drops every entry and returns all memory at once (unlike OpenResty,
 * which only marks entries expired; get_stale finds nothing afterwards). */
void tg_shdict_flush_all(tg_shdict_t *d);
/* Frees expired entries, at most max of them (0 = all); returns how many.
 * Walks the whole LRU list under the lock: a maintenance call. */
int tg_shdict_flush_expired(tg_shdict_t *d, int max);

/* Up to max (0 = all) live keys, least recently used last, in one malloc'ed
 * buffer of records [uint16 length, big-endian][key bytes]; *count keys,
 * *len bytes. The caller frees *buf with tg_shdict_free_buf(); *buf is NULL
 * when there are no keys. TG_ERROR "no memory" if malloc fails. Holds the
 * lock for the whole walk: a maintenance call. */
int tg_shdict_get_keys(tg_shdict_t *d, int max, char **buf, size_t *len,
                       int *count, const char **err);

/* Frees a buffer returned by tg_shdict_get() or tg_shdict_get_keys(). */
void tg_shdict_free_buf(char *buf);

/* Mapping size in bytes, and bytes currently free for entries (the sum of
 * free blocks: one large value may still not fit if memory is split). */
size_t tg_shdict_capacity(const tg_shdict_t *d);
size_t tg_shdict_free_space(tg_shdict_t *d);

/* ---- test hooks ---------------------------------------------------------- */

/* Replaces the millisecond clock (CLOCK_MONOTONIC) of this process; NULL
 * restores it. Tests only: expiry becomes deterministic. */
void tg_shdict_set_clock(uint64_t (*now_ms)(void));
/* Takes the zone lock and keeps it, as a process dying inside an operation
 * would. dirty = 1 also marks the zone as being modified: the next locker
 * then finds the owner dead mid-change and resets the zone. Tests only. */
void tg_shdict_test_lock(tg_shdict_t *d, int dirty);

#endif
