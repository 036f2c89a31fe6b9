/*
 * tg_yaml.h: YAML (libyaml) into a plain tree of scalars, sequences and maps,
 * each node with its line and column, allocated in a caller's pool. The
 * config checker (tg_conf.c) and the Lua runtime (plugin configs become Lua
 * tables) walk this tree; neither sees libyaml.
 *
 * Anchors and aliases are resolved by copying the reference; merge keys
 * ("<<") are not supported and reported as an error. Duplicate map keys are
 * an error (YAML 1.2 says so and a silent "last one wins" hides typos).
 */
#ifndef TG_YAML_H
#define TG_YAML_H

#include "tg_core.h"
#include "tg_pool.h"

typedef enum {
    TG_YAML_SCALAR = 1,
    TG_YAML_SEQ,
    TG_YAML_MAP,
} tg_yaml_type_e;

typedef struct tg_yaml_node_s tg_yaml_node_t;

struct tg_yaml_node_s {
    tg_yaml_type_e   type;
    int              line;        /* 1-based, of the node's start */
    int              col;         /* 1-based */
    /* SCALAR: NUL-terminated value; `plain` is 1 when unquoted (so `null`,
     * `true`, `10` are typed) and 0 when quoted (always a string). */
    char            *scalar;
    size_t           len;
    int              plain;
    /* SEQ: items[0..n); MAP: keys[0..n) (scalars) and items[0..n) values,
     * in document order. */
    int              n;
    tg_yaml_node_t **items;
    tg_yaml_node_t **keys;
};

/* Parses the file at path. On success returns the root (an empty map for an
 * empty document). On failure returns NULL and writes "file:line:col: msg"
 * into err. */
tg_yaml_node_t *tg_yaml_load_file(tg_pool_t *pool, const char *path,
                                  char *err, size_t errlen);
/* Same, from memory (name is used in messages). */
tg_yaml_node_t *tg_yaml_load_string(tg_pool_t *pool, const char *name,
                                    const char *buf, size_t len,
                                    char *err, size_t errlen);

/* Map lookup by key; NULL when absent or when map is not a MAP. */
tg_yaml_node_t *tg_yaml_map_get(const tg_yaml_node_t *map, const char *key);

/* Typed views of a plain scalar. Each returns 1 and sets *out when the node
 * is a scalar of that type, else 0. Booleans: true/false (YAML 1.2 core
 * schema; yes/no/on/off are strings). Integers: decimal, optional sign. */
int tg_yaml_is_null(const tg_yaml_node_t *node);   /* null, ~, empty plain */
int tg_yaml_as_bool(const tg_yaml_node_t *node, int *out);
int tg_yaml_as_int(const tg_yaml_node_t *node, long long *out);
int tg_yaml_as_number(const tg_yaml_node_t *node, double *out);

#endif
