/*
 * tg_router.c: the route table of one config snapshot (see tg_router.h for
 * the precedence rules). Three structures, one per path kind:
 *
 *   - exact paths: an open-addressing hash table (FNV-1a, linear probing)
 *     from path to its candidate routes;
 *   - prefix paths: a radix tree (compressed trie) over the path's bytes.
 *     Each node that ends a configured prefix holds that prefix's candidate
 *     routes and a link to its nearest such ancestor, so a lookup walks down
 *     once over the request path and then goes back up the links, longest
 *     prefix first, without a stack;
 *   - regexes: a flat array in config order, each compiled with PCRE2 and,
 *     when the platform allows, JIT-compiled.
 *
 * Everything is built once from the config, in the router's own pool, and
 * never changes afterwards. The router borrows the routes and their path
 * strings from the config snapshot that owns it, so it must be freed before
 * that snapshot's pool (tg_conf_unref does so).
 *
 * Candidate lists are ordered by host class (routes listing an exact host
 * first, then routes listing only wildcards, then routes without hosts) and
 * config order within a class. A lookup on one list keeps the best host
 * match among the routes whose method and port also fit: an exact host beats
 * a wildcard, a longer wildcard suffix beats a shorter one ("*.a.example.com"
 * over "*.example.com", as nginx does), either beats no hosts, and ties go to
 * config order. The list is usually a handful of routes; the scan stops at
 * the first exact-host hit, and at the hostless tail once something matched.
 */
#include "tg_router.h"

#include <stdio.h>
#include <stdlib.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Pool block size for the router's nodes and arrays; big enough that a small
 * config fits in one block, small enough not to matter for tiny ones. */
#define ROUTER_POOL_BLOCK 16384

/* Host match scores; higher is more specific. A wildcard scores 1 + the
 * length of its ".suffix", which is always below HOST_EXACT. */
#define HOST_NONE   0                  /* route lists no hosts */
#define HOST_EXACT  (1 << 30)
#define HOST_NOMATCH -1                /* route lists hosts, none fits */

typedef struct {
    tg_str_t name;                     /* without the "*" for wildcards */
    int      wildcard;                 /* name is ".example.com" */
} route_host_t;

/* Per-route data precomputed at build time so that matching does no
 * strlen() and no parsing. */
typedef struct {
    const tg_conf_route_t *route;
    route_host_t          *hosts;
    int                    nhosts;
    int                    host_class; /* 0 exact host, 1 wildcards only, 2 none */
    int                    narrow;     /* methods and/or ports listed: 0..2 */
    int                    order;      /* position in routes[]: config order */
} route_info_t;

typedef struct {
    route_info_t **items;
    int            n;
} cand_list_t;

typedef struct {
    const char  *key;                  /* NULL = empty slot; borrowed from conf */
    size_t       len;
    uint64_t     hash;
    cand_list_t  cands;
} exact_slot_t;

typedef struct radix_node_s radix_node_t;
struct radix_node_s {
    const char    *label;              /* edge bytes from the parent; borrowed */
    size_t         label_len;
    size_t         depth;              /* full prefix length at this node's end */
    int            slash_end;          /* prefix ends in '/': no boundary check */
    cand_list_t    cands;              /* n == 0 when no prefix ends here */
    radix_node_t  *up;                 /* nearest ancestor with candidates */
    unsigned char *first;              /* first byte of each child's label, sorted */
    radix_node_t **children;
    int            nchildren;
};

/* match_data is allocated once per regex at build time and reused by every
 * match. That is only safe because a router is used by one thread: each
 * worker process matches on its own copy-on-write image of the snapshot. A
 * threaded caller would need match data per thread. */
typedef struct {
    pcre2_code       *code;
    pcre2_match_data *match_data;
    route_info_t     *info;
} regex_entry_t;

struct tg_router_s {
    tg_pool_t     *pool;               /* owns everything but the PCRE2 objects */
    route_info_t  *infos;              /* one per route */
    exact_slot_t  *exact;              /* capacity exact_mask + 1, or NULL */
    size_t         exact_mask;
    radix_node_t  *radix;              /* NULL when no prefix paths */
    regex_entry_t *regexes;
    int            nregexes;
};

/* One (path, route) pair, the unit the build sorts and groups. */
typedef struct {
    const char   *path;
    size_t        len;
    route_info_t *info;
} path_entry_t;


static uint64_t fnv1a64(const char *p, size_t len) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Orders entries by path bytes (a prefix sorts before its extensions), then
 * host class, then config order: the order candidate lists need. */
static int entry_cmp(const void *a, const void *b) {
    const path_entry_t *x = a, *y = b;
    size_t n = tg_min(x->len, y->len);
    int c = memcmp(x->path, y->path, n);
    if (c != 0) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    if (x->info->host_class != y->info->host_class)
        return x->info->host_class - y->info->host_class;
    /* A route restricted to some methods or ports is more specific than
     * one that takes everything, whatever their order in the config. */
    if (x->info->narrow != y->info->narrow)
        return y->info->narrow - x->info->narrow;
    return x->info->order - y->info->order;
}

/* Copies the candidates of e[0..n) (all with the same path) into the pool,
 * dropping a route that lists the same path twice. */
static cand_list_t cands_make(tg_pool_t *pool, const path_entry_t *e, int n) {
    cand_list_t c;
    c.items = tg_pool_alloc(pool, sizeof(*c.items) * n);
    c.n = 0;
    for (int i = 0; i < n; i++) {
        if (c.n > 0 && c.items[c.n - 1] == e[i].info) continue;
        c.items[c.n++] = e[i].info;
    }
    return c;
}

static int same_path(const path_entry_t *a, const path_entry_t *b) {
    return a->len == b->len && memcmp(a->path, b->path, a->len) == 0;
}


static void infos_build(tg_router_t *r, tg_conf_route_t *routes, int n) {
    r->infos = tg_pool_calloc(r->pool, sizeof(*r->infos) * (n ? n : 1));
    for (int i = 0; i < n; i++) {
        route_info_t *ri = &r->infos[i];
        const tg_conf_route_t *rt = &routes[i];
        int exact = 0;
        ri->route = rt;
        ri->order = i;
        ri->nhosts = rt->nhosts;
        ri->hosts = tg_pool_alloc(r->pool, sizeof(*ri->hosts) * (rt->nhosts ? rt->nhosts : 1));
        for (int j = 0; j < rt->nhosts; j++) {
            const char *h = rt->hosts[j];
            route_host_t *rh = &ri->hosts[j];
            if (h[0] == '*' && h[1] == '.') {
                rh->wildcard = 1;
                rh->name = (tg_str_t){ h + 1, strlen(h + 1) };
            } else {
                rh->wildcard = 0;
                rh->name = (tg_str_t){ h, strlen(h) };
                exact = 1;
            }
        }
        ri->host_class = rt->nhosts == 0 ? 2 : exact ? 0 : 1;
        ri->narrow = (rt->methods != 0) + (rt->nports != 0);
    }
}


static void exact_build(tg_router_t *r, path_entry_t *e, int n) {
    if (n == 0) return;
    qsort(e, n, sizeof(*e), entry_cmp);

    /* Capacity: a power of two at least twice the number of distinct paths
     * (an upper bound is n), so probe chains stay short. */
    size_t cap = 8;
    while (cap < (size_t)n * 2) cap <<= 1;
    r->exact = tg_pool_calloc(r->pool, sizeof(*r->exact) * cap);
    r->exact_mask = cap - 1;

    for (int i = 0; i < n; ) {
        int j = i + 1;
        while (j < n && same_path(&e[i], &e[j])) j++;
        uint64_t h = fnv1a64(e[i].path, e[i].len);
        size_t s = h & r->exact_mask;
        while (r->exact[s].key != NULL) s = (s + 1) & r->exact_mask;
        r->exact[s].key = e[i].path;
        r->exact[s].len = e[i].len;
        r->exact[s].hash = h;
        r->exact[s].cands = cands_make(r->pool, &e[i], j - i);
        i = j;
    }
}

static const cand_list_t *exact_find(const tg_router_t *r, const char *path, size_t len) {
    if (r->exact == NULL) return NULL;
    uint64_t h = fnv1a64(path, len);
    for (size_t s = h & r->exact_mask; r->exact[s].key != NULL; s = (s + 1) & r->exact_mask) {
        const exact_slot_t *slot = &r->exact[s];
        if (slot->hash == h && slot->len == len && memcmp(slot->key, path, len) == 0)
            return &slot->cands;
    }
    return NULL;
}


/* Builds the subtree for the sorted entries e[0..n), which all share their
 * first `depth` bytes. The node's label runs from `depth` to the longest
 * prefix common to all of them (for sorted strings, that of the first and
 * the last). Recursion depth is bounded by the number of branching points
 * on one configured path, so by the longest configured prefix. */
static radix_node_t *radix_build(tg_pool_t *pool, path_entry_t *e, int n,
                                 size_t depth, radix_node_t *up) {
    radix_node_t *node = tg_pool_calloc(pool, sizeof(*node));
    size_t lcp = depth, maxl = tg_min(e[0].len, e[n - 1].len);
    while (lcp < maxl && e[0].path[lcp] == e[n - 1].path[lcp]) lcp++;

    node->label = e[0].path + depth;
    node->label_len = lcp - depth;
    node->depth = lcp;
    node->slash_end = lcp > 0 && e[0].path[lcp - 1] == '/';
    node->up = up;

    /* Entries ending exactly here sort first (a prefix before its
     * extensions). */
    int k = 0;
    while (k < n && e[k].len == lcp) k++;
    if (k > 0) {
        node->cands = cands_make(pool, e, k);
        up = node;
    }

    int nchildren = 0;
    for (int i = k; i < n; i++)
        if (i == k || e[i].path[lcp] != e[i - 1].path[lcp]) nchildren++;
    if (nchildren == 0) return node;

    node->first = tg_pool_alloc(pool, nchildren);
    node->children = tg_pool_alloc(pool, sizeof(*node->children) * nchildren);
    for (int i = k; i < n; ) {
        int j = i + 1;
        while (j < n && e[j].path[lcp] == e[i].path[lcp]) j++;
        node->first[node->nchildren] = (unsigned char)e[i].path[lcp];
        node->children[node->nchildren++] = radix_build(pool, &e[i], j - i, lcp, up);
        i = j;
    }
    return node;
}

static radix_node_t *radix_child(const radix_node_t *node, unsigned char c) {
    int lo = 0, hi = node->nchildren;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (node->first[mid] < c) lo = mid + 1;
        else hi = mid;
    }
    return lo < node->nchildren && node->first[lo] == c ? node->children[lo] : NULL;
}

/* Walks down as far as the path goes; returns the deepest node with
 * candidates whose whole prefix is a prefix of the path, or NULL. Segment
 * boundaries are checked by the caller while going back up. */
static const radix_node_t *radix_deepest(const radix_node_t *node, const char *path, size_t len) {
    const radix_node_t *deepest = NULL;
    size_t pos = 0;
    while (node != NULL) {
        if (len - pos < node->label_len || memcmp(path + pos, node->label, node->label_len) != 0)
            break;
        pos += node->label_len;
        if (node->cands.n > 0) deepest = node;
        if (pos == len) break;
        node = radix_child(node, (unsigned char)path[pos]);
    }
    return deepest;
}


static int host_score(const route_info_t *ri, const char *host, size_t hostlen) {
    if (ri->nhosts == 0) return HOST_NONE;
    int best = HOST_NOMATCH;
    for (int i = 0; i < ri->nhosts; i++) {
        const route_host_t *h = &ri->hosts[i];
        if (!h->wildcard) {
            if (h->name.len == hostlen && memcmp(h->name.p, host, hostlen) == 0)
                return HOST_EXACT;
        } else if (hostlen > h->name.len                       /* at least one label */
                   && memcmp(host + hostlen - h->name.len, h->name.p, h->name.len) == 0) {
            best = tg_max(best, 1 + (int)h->name.len);
        }
    }
    return best;
}

static int method_port_fit(const tg_conf_route_t *rt, int method, uint16_t port) {
    if (rt->methods != 0 && (method < 0 || method > 63 || !(rt->methods & (1ULL << method))))
        return 0;
    if (rt->nports == 0) return 1;
    for (int i = 0; i < rt->nports; i++)
        if (rt->ports[i] == port) return 1;
    return 0;
}

static const tg_conf_route_t *cands_match(const cand_list_t *c, const char *host, size_t hostlen,
                                          int method, uint16_t port) {
    const route_info_t *best = NULL;
    int best_score = HOST_NOMATCH;
    for (int i = 0; i < c->n; i++) {
        const route_info_t *ri = c->items[i];
        if (ri->host_class == 2 && best != NULL) break;   /* hostless loses to any host hit */
        int s = host_score(ri, host, hostlen);
        if (s == HOST_NOMATCH || !method_port_fit(ri->route, method, port)) continue;
        /* Candidates are sorted most specific first: on equal host scores
         * the first that fits wins. */
        if (s > best_score) {
            best = ri;
            best_score = s;
        }
        if (s == HOST_EXACT || s == HOST_NONE) break;   /* nothing later beats it */
    }
    return best ? best->route : NULL;
}


static void regexes_free(tg_router_t *r) {
    for (int i = 0; i < r->nregexes; i++) {
        pcre2_match_data_free(r->regexes[i].match_data);
        pcre2_code_free(r->regexes[i].code);
    }
    r->nregexes = 0;
}

static int regexes_build(tg_router_t *r, tg_conf_route_t *routes, int n, int count,
                         char *err, size_t errlen) {
    r->regexes = tg_pool_calloc(r->pool, sizeof(*r->regexes) * (count ? count : 1));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < routes[i].npaths; j++) {
            const tg_conf_path_t *p = &routes[i].paths[j];
            if (p->kind != TG_PATH_REGEX) continue;
            int ec;
            PCRE2_SIZE off;
            pcre2_code *code = pcre2_compile((PCRE2_SPTR)p->path, p->len, 0, &ec, &off, NULL);
            if (code == NULL) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(ec, msg, sizeof(msg));
                snprintf(err, errlen, "routes[%d].paths[%d]: bad regex \"%s\": %s at offset %zu",
                         i, j, p->path, (const char *)msg, (size_t)off);
                return TG_ERROR;
            }
            /* JIT is an optimization: without it (unsupported CPU, or
             * SELinux forbidding executable memory) the interpreter gives
             * the same answers, only slower. */
            (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
            /* Only match/no-match is needed, so one ovector pair suffices. */
            pcre2_match_data *md = pcre2_match_data_create(1, NULL);
            if (md == NULL) {
                pcre2_code_free(code);
                fprintf(stderr, "tollgate: out of memory allocating regex match data\n");
                abort();
            }
            regex_entry_t *re = &r->regexes[r->nregexes++];
            re->code = code;
            re->match_data = md;
            re->info = &r->infos[i];
        }
    }
    return TG_OK;
}


tg_router_t *tg_router_build(tg_conf_route_t *routes, int n, char *err, size_t errlen) {
    tg_router_t *r = tg_xcalloc(1, sizeof(*r));
    r->pool = tg_pool_create(ROUTER_POOL_BLOCK);
    infos_build(r, routes, n);

    int nexact = 0, nprefix = 0, nregex = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < routes[i].npaths; j++)
            switch (routes[i].paths[j].kind) {
            case TG_PATH_EXACT:  nexact++; break;
            case TG_PATH_PREFIX: nprefix++; break;
            case TG_PATH_REGEX:  nregex++; break;
            }

    if (regexes_build(r, routes, n, nregex, err, errlen) != TG_OK) {
        tg_router_free(r);
        return NULL;
    }

    /* Scratch arrays for sorting; the structures keep only what they need. */
    path_entry_t *ex = tg_xmalloc(sizeof(*ex) * (nexact ? nexact : 1));
    path_entry_t *px = tg_xmalloc(sizeof(*px) * (nprefix ? nprefix : 1));
    nexact = nprefix = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < routes[i].npaths; j++) {
            const tg_conf_path_t *p = &routes[i].paths[j];
            path_entry_t pe = { p->path, p->len, &r->infos[i] };
            if (p->kind == TG_PATH_EXACT) ex[nexact++] = pe;
            else if (p->kind == TG_PATH_PREFIX) px[nprefix++] = pe;
        }
    }

    exact_build(r, ex, nexact);
    if (nprefix > 0) {
        qsort(px, nprefix, sizeof(*px), entry_cmp);
        r->radix = radix_build(r->pool, px, nprefix, 0, NULL);
    }
    free(ex);
    free(px);
    return r;
}

void tg_router_free(tg_router_t *router) {
    if (router == NULL) return;
    regexes_free(router);
    tg_pool_destroy(router->pool);
    free(router);
}

const tg_conf_route_t *tg_router_match(const tg_router_t *router,
                                       const char *host, size_t hostlen,
                                       int method, uint16_t port,
                                       const char *path, size_t pathlen) {
    const tg_conf_route_t *rt;
    if (host == NULL) {
        host = "";
        hostlen = 0;
    }

    const cand_list_t *c = exact_find(router, path, pathlen);
    if (c != NULL && (rt = cands_match(c, host, hostlen, method, port)) != NULL)
        return rt;

    for (const radix_node_t *node = radix_deepest(router->radix, path, pathlen);
         node != NULL; node = node->up) {
        /* Segment boundary: the prefix ends in '/', or the path ends or
         * goes on with '/' right after it. */
        if (!node->slash_end && node->depth != pathlen && path[node->depth] != '/')
            continue;
        if ((rt = cands_match(&node->cands, host, hostlen, method, port)) != NULL)
            return rt;
    }

    for (int i = 0; i < router->nregexes; i++) {
        const regex_entry_t *re = &router->regexes[i];
        const tg_conf_route_t *cand = re->info->route;
        if (host_score(re->info, host, hostlen) == HOST_NOMATCH
            || !method_port_fit(cand, method, port))
            continue;                  /* cheap checks before running the regex */
        if (pcre2_match(re->code, (PCRE2_SPTR)path, pathlen, 0, 0, re->match_data, NULL) >= 0)
            return cand;
    }
    return NULL;
}
