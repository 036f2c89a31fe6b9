/*
 * test_tg_router.c: tg_router precedence, segment boundaries, host / method /
 * port narrowing and scale. Routes are built by hand from small spec tables
 * (no YAML), so this test depends only on tg_router.c and tg_pool.c.
 */
#include "tg_router.h"
#include "tg_test.h"

#include <http_parser.h>
#include <stdlib.h>
#include <time.h>

/* One route as text: paths and hosts are space-separated; a path starting
 * with "=" is exact, with "~" a regex, else a prefix (as in the config). */
typedef struct {
    const char *name;
    const char *paths;
    const char *hosts;      /* NULL = any */
    uint64_t    methods;    /* 0 = any */
    const char *ports;      /* NULL = any */
} route_spec_t;

typedef struct {
    const char *host;
    int         method;
    uint16_t    port;
    const char *path;
    const char *want;       /* route name, NULL = no match */
} match_case_t;

#define M(m) (1ULL << (m))

static int split(tg_pool_t *pool, const char *s, char ***out) {
    int n = 0;
    *out = NULL;
    if (s == NULL) return 0;
    char *copy = tg_pool_strdup(pool, s), *save = NULL;
    char **v = tg_pool_alloc(pool, sizeof(char *) * (strlen(s) / 2 + 1));
    for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) v[n++] = t;
    *out = v;
    return n;
}

static tg_conf_route_t *routes_make(tg_pool_t *pool, const route_spec_t *spec, int n) {
    tg_conf_route_t *routes = tg_pool_calloc(pool, sizeof(*routes) * n);
    for (int i = 0; i < n; i++) {
        tg_conf_route_t *r = &routes[i];
        char **words;
        r->name = (char *)spec[i].name;
        r->index = i;
        r->npaths = split(pool, spec[i].paths, &words);
        r->paths = tg_pool_calloc(pool, sizeof(*r->paths) * (r->npaths ? r->npaths : 1));
        for (int j = 0; j < r->npaths; j++) {
            char *w = words[j];
            r->paths[j].kind = w[0] == '=' ? TG_PATH_EXACT : w[0] == '~' ? TG_PATH_REGEX : TG_PATH_PREFIX;
            if (r->paths[j].kind != TG_PATH_PREFIX) w++;
            r->paths[j].path = w;
            r->paths[j].len = strlen(w);
        }
        r->nhosts = split(pool, spec[i].hosts, &r->hosts);
        r->methods = spec[i].methods;
        char **ports;
        r->nports = split(pool, spec[i].ports, &ports);
        if (r->nports) {
            r->ports = tg_pool_alloc(pool, sizeof(uint16_t) * r->nports);
            for (int j = 0; j < r->nports; j++) r->ports[j] = (uint16_t)atoi(ports[j]);
        }
    }
    return routes;
}

static void run_cases(const char *set, const route_spec_t *spec, int nspec,
                      const match_case_t *cases, int ncases) {
    tg_pool_t *pool = tg_pool_create(4096);
    tg_conf_route_t *routes = routes_make(pool, spec, nspec);
    char err[256] = "";
    tg_router_t *router = tg_router_build(routes, nspec, err, sizeof(err));
    CHECK_MSG(router != NULL, "%s: build failed: %s", set, err);
    if (router == NULL) { tg_pool_destroy(pool); return; }

    for (int i = 0; i < ncases; i++) {
        const match_case_t *c = &cases[i];
        const char *host = c->host ? c->host : "";
        const tg_conf_route_t *r = tg_router_match(router, host, strlen(host), c->method,
                                                   c->port ? c->port : 80, c->path, strlen(c->path));
        const char *got = r ? r->name : NULL;
        int ok = (got == NULL && c->want == NULL) || (got && c->want && strcmp(got, c->want) == 0);
        CHECK_MSG(ok, "%s: method %d %s%s port %u: got \"%s\", want \"%s\"", set,
                  c->method, host, c->path, c->port ? c->port : 80,
                  got ? got : "(none)", c->want ? c->want : "(none)");
    }
    tg_router_free(router);
    tg_pool_destroy(pool);
}

/* Precedence and segment boundaries; no "/" catch-all so misses show. */
static const route_spec_t precedence_routes[] = {
    { "health-exact",  "=/health", NULL, 0, NULL },
    { "health-prefix", "/health", NULL, 0, NULL },
    { "health-regex",  "~^/health", NULL, 0, NULL },
    { "h-regex",       "~^/h", NULL, 0, NULL },
    { "api",           "/api", NULL, 0, NULL },
    { "api-v1",        "/api/v1", NULL, 0, NULL },
    { "users",         "/api/v1/users", NULL, 0, NULL },
    { "v-any",         "~^/v[0-9]+/", NULL, 0, NULL },
    { "v1",            "~^/v1/", NULL, 0, NULL },
    { "multi",         "=/multi /m/ ~^/mm[0-9]$ /m/", NULL, 0, NULL },
    { "dir",           "/dir/", NULL, 0, NULL },
};

static const match_case_t precedence_cases[] = {
    /* exact > prefix > regex */
    { NULL, HTTP_GET, 0, "/health", "health-exact" },
    { NULL, HTTP_GET, 0, "/health/live", "health-prefix" },
    { NULL, HTTP_GET, 0, "/healthz", "health-regex" },     /* not a segment boundary */
    { NULL, HTTP_GET, 0, "/hx", "h-regex" },
    /* longest prefix, segment boundaries */
    { NULL, HTTP_GET, 0, "/api/v1/users", "users" },
    { NULL, HTTP_GET, 0, "/api/v1/users/42", "users" },
    { NULL, HTTP_GET, 0, "/api/v1/users/", "users" },
    { NULL, HTTP_GET, 0, "/api/v1/usersX", "api-v1" },
    { NULL, HTTP_GET, 0, "/api/v1", "api-v1" },
    { NULL, HTTP_GET, 0, "/api/v1/", "api-v1" },
    { NULL, HTTP_GET, 0, "/api/v2/users", "api" },
    { NULL, HTTP_GET, 0, "/api", "api" },
    { NULL, HTTP_GET, 0, "/apix", NULL },
    { NULL, HTTP_GET, 0, "/ap", NULL },
    /* a prefix ending in "/" matches below it only */
    { NULL, HTTP_GET, 0, "/dir", NULL },
    { NULL, HTTP_GET, 0, "/dir/", "dir" },
    { NULL, HTTP_GET, 0, "/dir/a/b", "dir" },
    /* regexes in config order */
    { NULL, HTTP_GET, 0, "/v1/x", "v-any" },
    { NULL, HTTP_GET, 0, "/v22/x", "v-any" },
    { NULL, HTTP_GET, 0, "/v1", NULL },
    /* one route, several paths of mixed kinds (one listed twice) */
    { NULL, HTTP_GET, 0, "/multi", "multi" },
    { NULL, HTTP_GET, 0, "/m/anything", "multi" },
    { NULL, HTTP_GET, 0, "/mm7", "multi" },
    { NULL, HTTP_GET, 0, "/multi/x", NULL },
    { NULL, HTTP_GET, 0, "/m", NULL },
    /* no match */
    { NULL, HTTP_GET, 0, "/nothing", NULL },
    { NULL, HTTP_GET, 0, "", NULL },
};

/* Host, method and port narrowing, with a "/" catch-all. */
static const route_spec_t narrowing_routes[] = {
    { "root",         "/", NULL, 0, NULL },
    { "app-wild",     "/app", "*.example.com", 0, NULL },
    { "app-exact",    "/app", "app.example.com", 0, NULL },
    { "app-any",      "/app", NULL, 0, NULL },
    { "app-wild-eu",  "/app", "*.eu.example.com", 0, NULL },
    { "w-mixed",      "/w", "a.example.com *.example.com", 0, NULL },
    { "w-wild",       "/w", "*.example.com", 0, NULL },
    { "w-exact",      "/w", "b.example.com", 0, NULL },
    { "m-get",        "/m", NULL, M(HTTP_GET) | M(HTTP_HEAD), NULL },
    { "m-post",       "/m", NULL, M(HTTP_POST), NULL },
    { "m-sub-del",    "/m/sub", NULL, M(HTTP_DELETE), NULL },
    { "p-tls",        "/p", NULL, 0, "8443" },
    { "p-plain",      "/p", NULL, 0, "8080 9090" },
    { "e-exact-host", "=/e", "app.example.com", M(HTTP_GET), NULL },
    { "e-prefix",     "/e", NULL, 0, NULL },
    { "r-host",       "~^/r/", "r.example.com", 0, NULL },
};

static const match_case_t narrowing_cases[] = {
    /* "/" catch-all */
    { NULL, HTTP_GET, 0, "/", "root" },
    { NULL, HTTP_GET, 0, "/anything/at/all", "root" },
    /* exact host > wildcard > none; longer wildcard > shorter */
    { "app.example.com", HTTP_GET, 0, "/app", "app-exact" },
    { "x.example.com", HTTP_GET, 0, "/app/1", "app-wild" },
    { "a.b.example.com", HTTP_GET, 0, "/app", "app-wild" },
    { "x.eu.example.com", HTTP_GET, 0, "/app", "app-wild-eu" },
    { "example.com", HTTP_GET, 0, "/app", "app-any" },        /* wildcard needs a label */
    { "other.org", HTTP_GET, 0, "/app", "app-any" },
    { "", HTTP_GET, 0, "/app", "app-any" },
    /* a route with an exact and a wildcard host; ties by config order */
    { "a.example.com", HTTP_GET, 0, "/w", "w-mixed" },
    { "z.example.com", HTTP_GET, 0, "/w", "w-mixed" },
    { "b.example.com", HTTP_GET, 0, "/w", "w-exact" },
    { "other.org", HTTP_GET, 0, "/w", "root" },                 /* falls through to "/" */
    /* methods narrow; a mismatch falls through to a less specific route */
    { NULL, HTTP_GET, 0, "/m", "m-get" },
    { NULL, HTTP_HEAD, 0, "/m", "m-get" },
    { NULL, HTTP_POST, 0, "/m", "m-post" },
    { NULL, HTTP_PUT, 0, "/m", "root" },
    { NULL, HTTP_DELETE, 0, "/m/sub", "m-sub-del" },
    { NULL, HTTP_GET, 0, "/m/sub/x", "m-get" },
    { "app.example.com", HTTP_GET, 0, "/e", "e-exact-host" },
    { "app.example.com", HTTP_POST, 0, "/e", "e-prefix" },    /* exact path -> prefix */
    { "other.org", HTTP_GET, 0, "/e", "e-prefix" },
    /* ports narrow */
    { NULL, HTTP_GET, 8443, "/p", "p-tls" },
    { NULL, HTTP_GET, 9090, "/p/x", "p-plain" },
    { NULL, HTTP_GET, 8080, "/p", "p-plain" },
    { NULL, HTTP_GET, 80, "/p", "root" },
    /* regexes narrow by host too, but "/" is a prefix and wins first */
    { "r.example.com", HTTP_GET, 0, "/r/1", "root" },
};

/* Without "/" the host narrowing of a regex route shows. */
static const route_spec_t regex_host_routes[] = {
    { "r-host", "~^/r/", "r.example.com", 0, NULL },
    { "r-any",  "~^/r/", NULL, 0, NULL },
};

static const match_case_t regex_host_cases[] = {
    { "r.example.com", HTTP_GET, 0, "/r/1", "r-host" },
    { "x.example.com", HTTP_GET, 0, "/r/1", "r-any" },
    { "x.example.com", HTTP_GET, 0, "/q/1", NULL },
};

static void test_bad_regex(void) {
    static const route_spec_t spec[] = {
        { "ok",  "~^/fine/", NULL, 0, NULL },
        { "bad", "/p ~^/(unclosed", NULL, 0, NULL },
    };
    tg_pool_t *pool = tg_pool_create(4096);
    tg_conf_route_t *routes = routes_make(pool, spec, 2);
    char err[256] = "";
    tg_router_t *router = tg_router_build(routes, 2, err, sizeof(err));
    CHECK(router == NULL);
    CHECK_MSG(strncmp(err, "routes[1].paths[1]: ", 20) == 0, "err \"%s\"", err);
    tg_router_free(router);
    tg_pool_destroy(pool);
}

static void test_empty(void) {
    char err[64];
    tg_router_t *router = tg_router_build(NULL, 0, err, sizeof(err));
    CHECK(router != NULL);
    CHECK(tg_router_match(router, "", 0, HTTP_GET, 80, "/", 1) == NULL);
    tg_router_free(router);
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* n prefix routes "/svc/N"; every one must match its own subtree and only
 * at a segment boundary. Returns the rough cost of one match in ns. */
static double svc_routes(int n) {
    tg_pool_t *pool = tg_pool_create(1 << 16);
    tg_conf_route_t *routes = tg_pool_calloc(pool, sizeof(*routes) * n);
    for (int i = 0; i < n; i++) {
        routes[i].name = tg_pool_printf(pool, "svc-%d", i);
        routes[i].index = i;
        routes[i].npaths = 1;
        routes[i].paths = tg_pool_calloc(pool, sizeof(tg_conf_path_t));
        routes[i].paths[0].kind = TG_PATH_PREFIX;
        routes[i].paths[0].path = tg_pool_printf(pool, "/svc/%d", i);
        routes[i].paths[0].len = strlen(routes[i].paths[0].path);
    }
    char err[128];
    tg_router_t *router = tg_router_build(routes, n, err, sizeof(err));
    CHECK(router != NULL);

    int bad = 0;
    char path[64];
    for (int i = 0; i < n; i++) {
        int len = snprintf(path, sizeof(path), "/svc/%d/items/%d", i, i * 7);
        const tg_conf_route_t *r = tg_router_match(router, "", 0, HTTP_GET, 80, path, len);
        if (r != &routes[i]) bad++;
        len = snprintf(path, sizeof(path), "/svc/%d", i);
        if (tg_router_match(router, "", 0, HTTP_GET, 80, path, len) != &routes[i]) bad++;
        len = snprintf(path, sizeof(path), "/svc/%dx/items", i);
        if (tg_router_match(router, "", 0, HTTP_GET, 80, path, len) != NULL) bad++;
    }
    CHECK_MSG(bad == 0, "%d of %d routes: %d mismatches", n, n, bad);
    CHECK(tg_router_match(router, "", 0, HTTP_GET, 80, "/svc", 4) == NULL);
    CHECK(tg_router_match(router, "", 0, HTTP_GET, 80, "/svc/", 5) == NULL);

    /* Rough cost of one match, information only (no timing assertions in
     * tests). Paths are prepared first so only the match is timed. */
    enum { NPATHS = 64, ROUNDS = 20000 };
    char paths[NPATHS][64];
    int lens[NPATHS];
    for (int i = 0; i < NPATHS; i++)
        lens[i] = snprintf(paths[i], sizeof(paths[i]), "/svc/%d/items/42", (i * 7919) % n);
    uintptr_t sink = 0;
    double t0 = now_ns();
    for (int k = 0; k < ROUNDS; k++)
        for (int i = 0; i < NPATHS; i++)
            sink += (uintptr_t)tg_router_match(router, "", 0, HTTP_GET, 80, paths[i], lens[i]);
    double ns = (now_ns() - t0) / ((double)ROUNDS * NPATHS);
    CHECK(sink != 0);

    tg_router_free(router);
    tg_pool_destroy(pool);
    return ns;
}

int main(void) {
    run_cases("precedence", precedence_routes, tg_nelems(precedence_routes),
              precedence_cases, tg_nelems(precedence_cases));
    run_cases("narrowing", narrowing_routes, tg_nelems(narrowing_routes),
              narrowing_cases, tg_nelems(narrowing_cases));
    run_cases("regex-host", regex_host_routes, tg_nelems(regex_host_routes),
              regex_host_cases, tg_nelems(regex_host_cases));
    test_bad_regex();
    test_empty();

    double ns10 = svc_routes(10);
    double ns10k = svc_routes(10000);
    printf("info: prefix match %.0f ns with 10 routes, %.0f ns with 10,000 routes\n", ns10, ns10k);

    TG_TEST_DONE();
}
