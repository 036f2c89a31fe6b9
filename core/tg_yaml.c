/*
 * tg_yaml.c: libyaml's event stream into the tg_yaml node tree (see
 * tg_yaml.h). The event API is used rather than libyaml's document loader
 * because it gives every node its position directly and lets us refuse
 * merge keys and duplicate keys at the place they occur, with the line and
 * column the user needs to fix them.
 *
 * Aliases share the anchored node instead of copying it: the tree is never
 * mutated after loading, so sharing is safe and costs no memory. Consumers
 * (JSON serialization, Lua tables) still expand aliases when they walk, so
 * the loader counts nodes as if every alias were expanded and refuses a
 * document that explodes ("billion laughs").
 *
 * Only the first error is reported: after a syntax error libyaml cannot go
 * on, and a half-built tree would only produce confusing follow-up errors.
 */
#include "tg_yaml.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* Nesting depth. The loader and every consumer recurse per level, and a
 * config needs fewer than ten; 64 leaves room for deep plugin configs. */
#define TG_YAML_MAX_DEPTH 64
/* Nodes counted with every alias expanded; bounds what consumers that expand
 * aliases will walk. A 10,000-route config has a few hundred thousand. */
#define TG_YAML_MAX_NODES (4u << 20)
/* Largest file read; a config is a few megabytes at most. */
#define TG_YAML_MAX_FILE (64u << 20)

#define YAML_STR_TAG "tag:yaml.org,2002:str"

typedef struct {
    char           *name;     /* malloc'ed */
    tg_yaml_node_t *node;
    size_t          nodes;    /* size of node with aliases expanded */
} anchor_t;

/* One map entry while the map is being read; the position is the key's own
 * (an aliased key's node carries the anchor's position). */
typedef struct {
    tg_yaml_node_t *key;
    tg_yaml_node_t *value;
    int             line, col;
    int             index;
} entry_t;

typedef struct {
    tg_pool_t     *pool;
    yaml_parser_t  parser;
    const char    *name;
    const char    *buf;       /* input, to place reader (encoding) errors */
    size_t         len;
    char          *err;
    size_t         errlen;
    int            failed;
    anchor_t      *anchors;   /* in definition order; later ones win */
    int            nanchors;
    int            anchors_cap;
    size_t         nodes;
} loader_t;

static void fail_at(loader_t *ld, size_t line0, size_t col0, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail_at(loader_t *ld, size_t line0, size_t col0, const char *fmt, ...) {
    if (ld->failed) return;
    ld->failed = 1;
    if (ld->err == NULL || ld->errlen == 0) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(ld->err, ld->errlen, "%s:%zu:%zu: %s", ld->name, line0 + 1, col0 + 1, msg);
}

static void fail_mark(loader_t *ld, yaml_mark_t m, const char *msg) {
    fail_at(ld, m.line, m.column, "%s", msg);
}

/* libyaml's reader reports encoding errors by byte offset only. */
static void offset_to_pos(const char *buf, size_t len, size_t off, size_t *line, size_t *col) {
    *line = 0;
    *col = 0;
    for (size_t i = 0; i < off && i < len; i++) {
        if (buf[i] == '\n') { (*line)++; *col = 0; }
        else (*col)++;
    }
}

static void parser_failed(loader_t *ld) {
    yaml_parser_t *p = &ld->parser;
    const char *problem = p->problem ? p->problem : "invalid YAML";
    size_t line, col;

    switch (p->error) {
    case YAML_MEMORY_ERROR:
        fail_at(ld, 0, 0, "out of memory while parsing");
        break;
    case YAML_READER_ERROR:
        offset_to_pos(ld->buf, ld->len, p->problem_offset, &line, &col);
        fail_at(ld, line, col, "%s", problem);
        break;
    default:
        if (p->context)
            fail_at(ld, p->problem_mark.line, p->problem_mark.column,
                    "%s (%s at line %zu)", problem, p->context, p->context_mark.line + 1);
        else
            fail_at(ld, p->problem_mark.line, p->problem_mark.column, "%s", problem);
        break;
    }
}

static int next_event(loader_t *ld, yaml_event_t *ev) {
    if (!yaml_parser_parse(&ld->parser, ev)) {
        parser_failed(ld);
        return 0;
    }
    return 1;
}

static tg_yaml_node_t *node_new(loader_t *ld, tg_yaml_type_e type, yaml_mark_t m) {
    tg_yaml_node_t *n = tg_pool_calloc(ld->pool, sizeof(*n));
    n->type = type;
    n->line = (int)m.line + 1;
    n->col = (int)m.column + 1;
    return n;
}

static int count_nodes(loader_t *ld, size_t n, yaml_mark_t m) {
    ld->nodes += n;
    if (ld->nodes > TG_YAML_MAX_NODES) {
        fail_at(ld, m.line, m.column, "document too large (more than %u nodes with aliases expanded)",
                TG_YAML_MAX_NODES);
        return 0;
    }
    return 1;
}

static void anchor_add(loader_t *ld, const yaml_char_t *name, tg_yaml_node_t *node, size_t nodes) {
    if (name == NULL) return;
    if (ld->nanchors == ld->anchors_cap) {
        ld->anchors_cap = ld->anchors_cap ? ld->anchors_cap * 2 : 16;
        ld->anchors = tg_xrealloc(ld->anchors, (size_t)ld->anchors_cap * sizeof(anchor_t));
    }
    anchor_t *a = &ld->anchors[ld->nanchors++];
    a->name = tg_xstrdup((const char *)name);
    a->node = node;
    a->nodes = nodes;
}

static anchor_t *anchor_find(loader_t *ld, const yaml_char_t *name) {
    /* Backwards: YAML lets an anchor be redefined, and an alias refers to
     * the most recent definition. */
    for (int i = ld->nanchors - 1; i >= 0; i--)
        if (strcmp(ld->anchors[i].name, (const char *)name) == 0) return &ld->anchors[i];
    return NULL;
}

/* Tags would give scalars types we do not model; only the ones that mean
 * "this is a string" or restate the node's kind are accepted. */
static int tag_ok(loader_t *ld, const yaml_char_t *tag, const char *kind_tag, yaml_mark_t m) {
    if (tag == NULL) return 1;
    const char *t = (const char *)tag;
    if (strcmp(t, "!") == 0 || strcmp(t, kind_tag) == 0) return 1;
    fail_at(ld, m.line, m.column, "unsupported tag \"%s\"", t);
    return 0;
}

static tg_yaml_node_t *load_node(loader_t *ld, yaml_event_t *ev, int depth, size_t *nodes);

/* Grows a malloc'ed array of `size`-byte elements to hold one more. */
static void *grow(void *arr, int n, int *cap, size_t size) {
    if (n < *cap) return arr;
    *cap = *cap ? *cap * 2 : 8;
    return tg_xrealloc(arr, (size_t)*cap * size);
}

static tg_yaml_node_t **pool_copy_ptrs(loader_t *ld, tg_yaml_node_t **src, int n) {
    if (n == 0) return NULL;
    tg_yaml_node_t **dst = tg_pool_alloc(ld->pool, (size_t)n * sizeof(*dst));
    memcpy(dst, src, (size_t)n * sizeof(*dst));
    return dst;
}

static tg_yaml_node_t *load_scalar(loader_t *ld, yaml_event_t *ev, size_t *nodes) {
    tg_yaml_node_t *n;
    const char *tag = (const char *)ev->data.scalar.tag;

    if (!tag_ok(ld, ev->data.scalar.tag, YAML_STR_TAG, ev->start_mark)) return NULL;
    if (!count_nodes(ld, 1, ev->start_mark)) return NULL;
    n = node_new(ld, TG_YAML_SCALAR, ev->start_mark);
    n->len = ev->data.scalar.length;
    n->scalar = tg_pool_strndup(ld->pool, (const char *)ev->data.scalar.value, n->len);
    /* Any explicit tag we accept means "string", so it disables typing. */
    n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && tag == NULL;
    *nodes = 1;
    anchor_add(ld, ev->data.scalar.anchor, n, 1);
    return n;
}

static tg_yaml_node_t *load_seq(loader_t *ld, yaml_event_t *start, int depth, size_t *nodes) {
    tg_yaml_node_t **items = NULL, *n = NULL;
    int nitems = 0, cap = 0;
    size_t total = 1;
    yaml_event_t ev;

    if (!tag_ok(ld, start->data.sequence_start.tag, "tag:yaml.org,2002:seq", start->start_mark))
        return NULL;
    for (;;) {
        if (!next_event(ld, &ev)) goto done;
        if (ev.type == YAML_SEQUENCE_END_EVENT) { yaml_event_delete(&ev); break; }
        size_t sub = 0;
        tg_yaml_node_t *item = load_node(ld, &ev, depth + 1, &sub);
        yaml_event_delete(&ev);
        if (item == NULL) goto done;
        items = grow(items, nitems, &cap, sizeof(*items));
        items[nitems++] = item;
        total += sub;
    }
    if (!count_nodes(ld, 1, start->start_mark)) goto done;
    n = node_new(ld, TG_YAML_SEQ, start->start_mark);
    n->n = nitems;
    n->items = pool_copy_ptrs(ld, items, nitems);
    *nodes = total;
    anchor_add(ld, start->data.sequence_start.anchor, n, total);
done:
    free(items);
    return n;
}

static int entry_cmp(const void *a, const void *b) {
    const entry_t *x = a, *y = b;
    if (x->key->len != y->key->len) return x->key->len < y->key->len ? -1 : 1;
    int c = memcmp(x->key->scalar, y->key->scalar, x->key->len);
    if (c) return c;
    return x->index - y->index;
}

/* Finds the duplicate key that comes first in the document. Sorting keeps
 * this O(n log n) for the large maps plugin configs can contain. */
static int check_duplicates(loader_t *ld, const entry_t *entries, int n) {
    if (n < 2) return 1;
    entry_t *sorted = tg_xmalloc((size_t)n * sizeof(*sorted));
    memcpy(sorted, entries, (size_t)n * sizeof(*sorted));
    qsort(sorted, (size_t)n, sizeof(*sorted), entry_cmp);

    const entry_t *dup = NULL, *first = NULL, *run = &sorted[0];
    for (int i = 1; i < n; i++) {
        if (sorted[i].key->len == run->key->len
            && memcmp(sorted[i].key->scalar, run->key->scalar, run->key->len) == 0) {
            if (dup == NULL || sorted[i].index < dup->index) { dup = &sorted[i]; first = run; }
        } else {
            run = &sorted[i];
        }
    }
    if (dup)
        fail_at(ld, (size_t)dup->line - 1, (size_t)dup->col - 1,
                "duplicate key \"%s\" (first at line %d)", dup->key->scalar, first->line);
    free(sorted);
    return dup == NULL;
}

static tg_yaml_node_t *load_map(loader_t *ld, yaml_event_t *start, int depth, size_t *nodes) {
    entry_t *entries = NULL;
    tg_yaml_node_t *n = NULL;
    int nentries = 0, cap = 0;
    size_t total = 1;
    yaml_event_t ev;

    if (!tag_ok(ld, start->data.mapping_start.tag, "tag:yaml.org,2002:map", start->start_mark))
        return NULL;
    for (;;) {
        if (!next_event(ld, &ev)) goto done;
        if (ev.type == YAML_MAPPING_END_EVENT) { yaml_event_delete(&ev); break; }

        yaml_mark_t km = ev.start_mark;
        size_t ksub = 0, vsub = 0;
        tg_yaml_node_t *key = load_node(ld, &ev, depth + 1, &ksub);
        yaml_event_delete(&ev);
        if (key == NULL) goto done;
        if (key->type != TG_YAML_SCALAR) {
            fail_mark(ld, km, "map keys must be scalars");
            goto done;
        }
        if (key->plain && strcmp(key->scalar, "<<") == 0) {
            fail_mark(ld, km, "merge keys (\"<<\") are not supported; repeat the keys or use an alias for the whole value");
            goto done;
        }

        if (!next_event(ld, &ev)) goto done;
        tg_yaml_node_t *value = load_node(ld, &ev, depth + 1, &vsub);
        yaml_event_delete(&ev);
        if (value == NULL) goto done;

        entries = grow(entries, nentries, &cap, sizeof(*entries));
        entries[nentries] = (entry_t){ key, value, (int)km.line + 1, (int)km.column + 1, nentries };
        nentries++;
        total += ksub + vsub;
    }
    if (!check_duplicates(ld, entries, nentries)) goto done;
    if (!count_nodes(ld, 1, start->start_mark)) goto done;

    n = node_new(ld, TG_YAML_MAP, start->start_mark);
    n->n = nentries;
    if (nentries) {
        n->keys = tg_pool_alloc(ld->pool, (size_t)nentries * sizeof(*n->keys));
        n->items = tg_pool_alloc(ld->pool, (size_t)nentries * sizeof(*n->items));
        for (int i = 0; i < nentries; i++) {
            n->keys[i] = entries[i].key;
            n->items[i] = entries[i].value;
        }
    }
    *nodes = total;
    anchor_add(ld, start->data.mapping_start.anchor, n, total);
done:
    free(entries);
    return n;
}

/* Builds the node that starts with *ev (which the caller deletes). */
static tg_yaml_node_t *load_node(loader_t *ld, yaml_event_t *ev, int depth, size_t *nodes) {
    anchor_t *a;

    if (depth > TG_YAML_MAX_DEPTH) {
        fail_at(ld, ev->start_mark.line, ev->start_mark.column,
                "nesting deeper than %d levels", TG_YAML_MAX_DEPTH);
        return NULL;
    }
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        a = anchor_find(ld, ev->data.alias.anchor);
        if (a == NULL) {
            /* Also what a self-referencing anchor looks like: the anchor is
             * registered only once its node is complete. */
            fail_at(ld, ev->start_mark.line, ev->start_mark.column,
                    "undefined alias \"%s\"", (const char *)ev->data.alias.anchor);
            return NULL;
        }
        if (!count_nodes(ld, a->nodes, ev->start_mark)) return NULL;
        *nodes = a->nodes;
        return a->node;
    case YAML_SCALAR_EVENT:
        return load_scalar(ld, ev, nodes);
    case YAML_SEQUENCE_START_EVENT:
        return load_seq(ld, ev, depth, nodes);
    case YAML_MAPPING_START_EVENT:
        return load_map(ld, ev, depth, nodes);
    default:
        fail_mark(ld, ev->start_mark, "unexpected YAML event");
        return NULL;
    }
}

static tg_yaml_node_t *load_document(loader_t *ld) {
    yaml_event_t ev;
    tg_yaml_node_t *root = NULL;
    size_t nodes = 0;

    if (!next_event(ld, &ev)) return NULL;            /* STREAM-START */
    yaml_event_delete(&ev);
    if (!next_event(ld, &ev)) return NULL;
    if (ev.type == YAML_STREAM_END_EVENT) {           /* nothing but comments */
        yaml_mark_t m = ev.start_mark;
        yaml_event_delete(&ev);
        m.line = 0;
        m.column = 0;
        return node_new(ld, TG_YAML_MAP, m);
    }
    yaml_event_delete(&ev);                           /* DOCUMENT-START */

    if (!next_event(ld, &ev)) return NULL;
    root = load_node(ld, &ev, 0, &nodes);
    yaml_event_delete(&ev);
    if (root == NULL) return NULL;

    if (!next_event(ld, &ev)) return NULL;            /* DOCUMENT-END */
    yaml_event_delete(&ev);
    if (!next_event(ld, &ev)) return NULL;
    if (ev.type != YAML_STREAM_END_EVENT) {
        fail_mark(ld, ev.start_mark, "more than one document; a config is one document");
        yaml_event_delete(&ev);
        return NULL;
    }
    yaml_event_delete(&ev);

    /* "---" alone, or an explicit null, is an empty document. */
    if (tg_yaml_is_null(root)) {
        tg_yaml_node_t *map = tg_pool_calloc(ld->pool, sizeof(*map));
        map->type = TG_YAML_MAP;
        map->line = root->line;
        map->col = root->col;
        root = map;
    }
    return root;
}

tg_yaml_node_t *tg_yaml_load_string(tg_pool_t *pool, const char *name,
                                    const char *buf, size_t len,
                                    char *err, size_t errlen) {
    loader_t ld;
    memset(&ld, 0, sizeof(ld));
    ld.pool = pool;
    ld.name = name ? name : "(string)";
    ld.buf = buf;
    ld.len = len;
    ld.err = err;
    ld.errlen = errlen;
    if (err && errlen) err[0] = '\0';

    if (!yaml_parser_initialize(&ld.parser)) {
        fail_at(&ld, 0, 0, "cannot initialize the YAML parser");
        return NULL;
    }
    yaml_parser_set_input_string(&ld.parser, (const unsigned char *)buf, len);
    tg_yaml_node_t *root = load_document(&ld);
    yaml_parser_delete(&ld.parser);

    for (int i = 0; i < ld.nanchors; i++) free(ld.anchors[i].name);
    free(ld.anchors);
    return ld.failed ? NULL : root;
}

tg_yaml_node_t *tg_yaml_load_file(tg_pool_t *pool, const char *path,
                                  char *err, size_t errlen) {
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) != 0) goto fail;
    if (!S_ISREG(st.st_mode)) { errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL; goto fail; }
    if ((unsigned long long)st.st_size > TG_YAML_MAX_FILE) { errno = EFBIG; goto fail; }
    buf = tg_xmalloc((size_t)st.st_size + 1);
    /* Read until EOF rather than trusting st_size: the file may be replaced
     * or grow while we read it. */
    for (;;) {
        if (len == (size_t)st.st_size + 1) { errno = EFBIG; goto fail; }
        ssize_t n = read(fd, buf + len, (size_t)st.st_size + 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) goto fail;
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    tg_yaml_node_t *root = tg_yaml_load_string(pool, path, buf, len, err, errlen);
    free(buf);
    return root;

fail:
    if (err && errlen) snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    free(buf);
    return NULL;
}

tg_yaml_node_t *tg_yaml_map_get(const tg_yaml_node_t *map, const char *key) {
    if (map == NULL || map->type != TG_YAML_MAP) return NULL;
    size_t klen = strlen(key);
    for (int i = 0; i < map->n; i++)
        if (map->keys[i]->len == klen && memcmp(map->keys[i]->scalar, key, klen) == 0)
            return map->items[i];
    return NULL;
}

static int plain_scalar(const tg_yaml_node_t *node) {
    return node && node->type == TG_YAML_SCALAR && node->plain;
}

static int scalar_is(const tg_yaml_node_t *node, const char *const *words, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(node->scalar, words[i]) == 0) return 1;
    return 0;
}

int tg_yaml_is_null(const tg_yaml_node_t *node) {
    static const char *const nulls[] = { "", "~", "null", "Null", "NULL" };
    return plain_scalar(node) && scalar_is(node, nulls, tg_nelems(nulls));
}

int tg_yaml_as_bool(const tg_yaml_node_t *node, int *out) {
    static const char *const trues[] = { "true", "True", "TRUE" };
    static const char *const falses[] = { "false", "False", "FALSE" };
    if (!plain_scalar(node)) return 0;
    if (scalar_is(node, trues, tg_nelems(trues))) { *out = 1; return 1; }
    if (scalar_is(node, falses, tg_nelems(falses))) { *out = 0; return 1; }
    return 0;
}

/* YAML 1.2 core schema decimal integer: [-+]?[0-9]+ over the whole scalar. */
static int int_syntax(const tg_yaml_node_t *node) {
    const char *s = node->scalar, *end = s + node->len;
    if (s < end && (*s == '-' || *s == '+')) s++;
    if (s == end) return 0;
    for (; s < end; s++)
        if (*s < '0' || *s > '9') return 0;
    return 1;
}

int tg_yaml_as_int(const tg_yaml_node_t *node, long long *out) {
    if (!plain_scalar(node) || !int_syntax(node)) return 0;
    errno = 0;
    long long v = strtoll(node->scalar, NULL, 10);
    if (errno == ERANGE) return 0;
    *out = v;
    return 1;
}

/* Core schema float: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static int float_syntax(const tg_yaml_node_t *node) {
    const char *s = node->scalar, *end = s + node->len;
    int before = 0, after = 0;
    if (s < end && (*s == '-' || *s == '+')) s++;
    while (s < end && *s >= '0' && *s <= '9') { s++; before++; }
    if (s < end && *s == '.') {
        s++;
        while (s < end && *s >= '0' && *s <= '9') { s++; after++; }
    }
    if (before == 0 && after == 0) return 0;
    if (s < end && (*s == 'e' || *s == 'E')) {
        int exp = 0;
        s++;
        if (s < end && (*s == '-' || *s == '+')) s++;
        while (s < end && *s >= '0' && *s <= '9') { s++; exp++; }
        if (exp == 0) return 0;
    }
    return s == end;
}

int tg_yaml_as_number(const tg_yaml_node_t *node, double *out) {
    static const char *const infs[] = { ".inf", ".Inf", ".INF" };
    static const char *const nans[] = { ".nan", ".NaN", ".NAN" };
    if (!plain_scalar(node)) return 0;

    const char *s = node->scalar;
    double sign = 1.0;
    if (*s == '-' || *s == '+') sign = (*s == '-') ? -1.0 : 1.0;
    for (size_t i = 0; i < tg_nelems(infs); i++) {
        if (strcmp(s, infs[i]) == 0
            || ((*s == '-' || *s == '+') && strcmp(s + 1, infs[i]) == 0)) {
            *out = sign * INFINITY;
            return 1;
        }
    }
    if (scalar_is(node, nans, tg_nelems(nans))) { *out = NAN; return 1; }
    if (!float_syntax(node) || strlen(s) != node->len) return 0;
    *out = strtod(s, NULL);   /* ERANGE still yields the right inf/0 */
    return 1;
}
