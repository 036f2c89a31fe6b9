/*
 * tg_router.h: maps (host, method, port, path) to a route.
 *
 * Precedence, most specific first:
 *   1. exact paths ("=/health"), looked up in a hash table;
 *   2. prefix paths, longest first, from a radix tree; a prefix matches on a
 *      segment boundary only: "/api/v1/users" matches "/api/v1/users",
 *      "/api/v1/users/42" and "/api/v1/users?x" but not "/api/v1/usersX";
 *      a prefix ending in "/" (including "/") matches anything below it;
 *   3. regexes ("~^/v[0-9]+/"), PCRE2 with JIT, tried in config order.
 * Among routes with the same path, one listing the request's host beats one
 * with a wildcard host ("*.example.com"), which beats one with no hosts;
 * then a route that lists methods or ports beats one that does not; ties
 * go to config order. Hosts, methods and ports only narrow: a route
 * that lists them matches only those. When the path matches but nothing
 * else does, the search goes on with the next, less specific candidate.
 *
 * Cost: exact and prefix lookups are independent of the number of routes
 * (hash + radix walk over the path's length); 10,000 routes cost about what
 * 10 do. The router is built once per config snapshot and never mutated, so
 * workers read it without locks.
 */
#ifndef TG_ROUTER_H
#define TG_ROUTER_H

#include "tg_core.h"
#include "tg_conf.h"

typedef struct tg_router_s tg_router_t;

/* Builds the router over routes[0..n). Returns NULL and writes
 * "routes[i].paths[j]: message" into err on a bad regex. */
tg_router_t *tg_router_build(tg_conf_route_t *routes, int n,
                             char *err, size_t errlen);
void tg_router_free(tg_router_t *router);

/* Finds the route for a request. host: the Host header without port,
 * lowercased by the caller (may be empty). method: enum http_method.
 * port: local port of the listener. path: the normalized path, without the
 * query. Returns NULL when no route matches. Allocates nothing. */
const tg_conf_route_t *tg_router_match(const tg_router_t *router,
                                       const char *host, size_t hostlen,
                                       int method, uint16_t port,
                                       const char *path, size_t pathlen);

#endif
