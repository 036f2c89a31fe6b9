/*
 * test_tg_conf.c: the config checker (core/tg_conf.c). The full contract
 * example loads with every field as written; every kind of error is
 * reported with its exact path; several errors come out of one load; the
 * helpers (addresses, sizes, redis urls, JSON bodies) are table-driven.
 */
#include "tg_conf.h"
#include "tg_log.h"
#include "tg_test.h"

#include <arpa/inet.h>
#include <http_parser.h>
#include <stdlib.h>
#include <unistd.h>

/* Building blocks for small configs: a listener, an upstream, one route. */
#define L "listen: [\"127.0.0.1:8080\"]\n"
#define U "upstreams: { users: { targets: [ { url: \"http://127.0.0.1:3001\" } ] } }\n"
#define R(body) L U "routes:\n  - " body "\n"
#define UP(body) L "upstreams:\n  u: " body "\n"

/* The contract's example, shape for shape. One value differs: the route's
 * `ports` must name a listen port, so it is 8080, not 3001. */
static const char full_yaml[] =
    "worker_processes: auto\n"
    "listen: [\"127.0.0.1:8080\", \"[::1]:8081\"]\n"
    "admin: { listen: \"127.0.0.1:9901\" }\n"
    "access_log: { path: stdout, format: json }\n"
    "error_log: { path: stderr, level: info }\n"
    "limits: { max_header_bytes: 16384, max_body_bytes: 10485760, header_timeout_ms: 10000,\n"
    "          body_timeout_ms: 60000, keepalive_timeout_ms: 60000, max_keepalive_requests: 10000,\n"
    "          max_uri_bytes: 4096, max_headers: 50, send_timeout_ms: 5000 }\n"
    "redis: { host: 127.0.0.1, port: 6379, db: 0, password: null, timeout_ms: 50, pool_size: 32 }\n"
    "shared_dicts: { ratelimit: 10m, cache: 64M }\n"
    "shutdown_timeout_ms: 30000\n"
    "upstreams:\n"
    "  users:\n"
    "    targets: [ { url: \"http://127.0.0.1:3001\", weight: 1 }, { url: \"http://localhost\", weight: 3 } ]\n"
    "    balance: round_robin\n"
    "    hash_on: ip\n"
    "    timeouts: { connect_ms: 1000, send_ms: 10000, read_ms: 30000 }\n"
    "    keepalive: 64\n"
    "    keepalive_timeout_ms: 60000\n"
    "    keepalive_requests: 10000\n"
    "    retries: 1\n"
    "    passive_health: { max_fails: 3, fail_timeout_ms: 10000 }\n"
    "  hashed:\n"
    "    targets: [ { url: \"http://[::1]:3002/\" } ]\n"
    "    balance: hash\n"
    "    hash_on: header:X-User-ID\n"
    "routes:\n"
    "  - name: users-v1\n"
    "    paths: [\"/api/v1/users\", \"=/api/v1/me\", \"~^/api/v[0-9]+/u\"]\n"
    "    hosts: [\"api.example.com\", \"*.Example.ORG\"]\n"
    "    methods: [GET, POST]\n"
    "    ports: [8080]\n"
    "    strip_prefix: \"/api/v1\"\n"
    "    preserve_host: false\n"
    "    upstream: users\n"
    "    plugins: { key-auth: {}, cors: false }\n"
    "    plugin_order: [a, b]\n"
    "  - name: health\n"
    "    paths: [\"=/health\"]\n"
    "    response: { status: 200, json: { status: ok } }\n"
    "  - name: echo\n"
    "    paths: [\"/echo\"]\n"
    "    response: { echo: true }\n"
    "  - paths: [\"/teapot\"]\n"
    "    response: { status: 418, body: \"short and stout\", headers: { X-Tea: earl-grey, X-Num: 5 } }\n"
    "plugins: { request-id: { header: X-Request-ID } }\n"
    "plugins_path: [\"plugins\"]\n";

static int errs_has(const tg_conf_errors_t *errs, const char *msg) {
    for (int i = 0; i < errs->n; i++)
        if (strcmp(errs->msg[i], msg) == 0) return 1;
    return 0;
}

static void errs_dump(const tg_conf_errors_t *errs) {
    for (int i = 0; i < errs->n; i++) fprintf(stderr, "    got: %s\n", errs->msg[i]);
}

static tg_conf_t *load_ok(const char *yaml) {
    tg_conf_errors_t errs = { 0 };
    tg_conf_t *conf = tg_conf_load_string("t.yaml", yaml, strlen(yaml), &errs);
    CHECK_MSG(conf != NULL && errs.n == 0, "load failed with %d errors", errs.n);
    if (conf == NULL) errs_dump(&errs);
    tg_conf_errors_free(&errs);
    return conf;
}

static void test_full_example(void) {
    tg_conf_t *conf = load_ok(full_yaml);
    if (conf == NULL) return;

    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK_INT(conf->worker_processes, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
    CHECK_INT(conf->refcount, 1);
    CHECK_STR(conf->path, "t.yaml");
    CHECK(conf->root != NULL && conf->root->type == TG_YAML_MAP);
    CHECK(conf->router == NULL);

    CHECK_INT(conf->nlistens, 2);
    CHECK_STR(conf->listens[0].addr.text, "127.0.0.1:8080");
    CHECK_STR(conf->listens[0].addr.host, "127.0.0.1");
    CHECK_INT(conf->listens[0].addr.port, 8080);
    CHECK_INT(conf->listens[0].addr.addr.ss_family, AF_INET);
    CHECK_INT(conf->listens[0].addr.addrlen, sizeof(struct sockaddr_in));
    CHECK_INT(conf->listens[0].backlog, 511);
    CHECK_STR(conf->listens[1].addr.text, "[::1]:8081");
    CHECK_STR(conf->listens[1].addr.host, "::1");
    CHECK_INT(conf->listens[1].addr.addr.ss_family, AF_INET6);
    CHECK(conf->admin != NULL && strcmp(conf->admin->addr.text, "127.0.0.1:9901") == 0);

    CHECK_STR(conf->access_log_path, "stdout");
    CHECK_INT(conf->access_log_json, 1);
    CHECK_STR(conf->error_log_path, "stderr");
    CHECK_INT(conf->error_log_level, TG_LOG_INFO);
    CHECK_INT(conf->shutdown_timeout_ms, 30000);

    CHECK_INT(conf->limits.max_header_bytes, 16384);
    CHECK_INT(conf->limits.max_body_bytes, 10485760);
    CHECK_INT(conf->limits.header_timeout_ms, 10000);
    CHECK_INT(conf->limits.body_timeout_ms, 60000);
    CHECK_INT(conf->limits.keepalive_timeout_ms, 60000);
    CHECK_INT(conf->limits.max_keepalive_requests, 10000);
    CHECK_INT(conf->limits.max_uri_bytes, 4096);
    CHECK_INT(conf->limits.max_headers, 50);
    CHECK_INT(conf->limits.send_timeout_ms, 5000);

    CHECK_STR(conf->redis.host, "127.0.0.1");
    CHECK_INT(conf->redis.port, 6379);
    CHECK_INT(conf->redis.db, 0);
    CHECK(conf->redis.password == NULL);
    CHECK(conf->redis.username == NULL);
    CHECK_INT(conf->redis.timeout_ms, 50);
    CHECK_INT(conf->redis.pool_size, 32);

    CHECK_INT(conf->nshared_dicts, 2);
    CHECK_STR(conf->shared_dicts[0].name, "ratelimit");
    CHECK_INT(conf->shared_dicts[0].size, 10 << 20);
    CHECK_STR(conf->shared_dicts[1].name, "cache");
    CHECK_INT(conf->shared_dicts[1].size, 64 << 20);

    CHECK_INT(conf->nupstreams, 2);
    tg_conf_upstream_t *up = tg_conf_upstream_find(conf, "users");
    CHECK(up == &conf->upstreams[0]);
    CHECK(tg_conf_upstream_find(conf, "nope") == NULL);
    CHECK_STR(up->name, "users");
    CHECK_INT(up->index, 0);
    CHECK_INT(up->ntargets, 2);
    CHECK_STR(up->targets[0].url, "http://127.0.0.1:3001");
    CHECK_STR(up->targets[0].scheme, "http");
    CHECK_STR(up->targets[0].host, "127.0.0.1");
    CHECK_STR(up->targets[0].host_header, "127.0.0.1:3001");
    CHECK_STR(up->targets[0].addr.text, "127.0.0.1:3001");
    CHECK_INT(up->targets[0].weight, 1);
    CHECK_STR(up->targets[1].host, "localhost");
    CHECK_STR(up->targets[1].host_header, "localhost");   /* port 80 is implied */
    CHECK_INT(up->targets[1].addr.port, 80);
    CHECK_INT(up->targets[1].weight, 3);
    CHECK_INT(up->balance, TG_BALANCE_ROUND_ROBIN);
    CHECK_INT(up->hash_key, TG_HASH_KEY_IP);
    CHECK_INT(up->connect_ms, 1000);
    CHECK_INT(up->send_ms, 10000);
    CHECK_INT(up->read_ms, 30000);
    CHECK_INT(up->keepalive, 64);
    CHECK_INT(up->keepalive_timeout_ms, 60000);
    CHECK_INT(up->keepalive_requests, 10000);
    CHECK_INT(up->retries, 1);
    CHECK_INT(up->max_fails, 3);
    CHECK_INT(up->fail_timeout_ms, 10000);

    tg_conf_upstream_t *hashed = tg_conf_upstream_find(conf, "hashed");
    CHECK_INT(hashed->index, 1);
    CHECK_INT(hashed->balance, TG_BALANCE_HASH);
    CHECK_INT(hashed->hash_key, TG_HASH_KEY_HEADER);
    CHECK_STR(hashed->hash_header, "x-user-id");
    CHECK_STR(hashed->targets[0].host, "::1");
    CHECK_STR(hashed->targets[0].host_header, "[::1]:3002");
    CHECK_STR(hashed->targets[0].addr.text, "[::1]:3002");

    CHECK_INT(conf->nroutes, 4);
    tg_conf_route_t *r = &conf->routes[0];
    CHECK_STR(r->name, "users-v1");
    CHECK_INT(r->index, 0);
    CHECK_INT(r->npaths, 3);
    CHECK_INT(r->paths[0].kind, TG_PATH_PREFIX);
    CHECK_STR(r->paths[0].path, "/api/v1/users");
    CHECK_INT(r->paths[0].len, 13);
    CHECK_INT(r->paths[1].kind, TG_PATH_EXACT);
    CHECK_STR(r->paths[1].path, "/api/v1/me");
    CHECK_INT(r->paths[2].kind, TG_PATH_REGEX);
    CHECK_STR(r->paths[2].path, "^/api/v[0-9]+/u");
    CHECK_INT(r->nhosts, 2);
    CHECK_STR(r->hosts[0], "api.example.com");
    CHECK_STR(r->hosts[1], "*.example.org");
    CHECK(r->methods == ((1ULL << HTTP_GET) | (1ULL << HTTP_POST)));
    CHECK_INT(r->nports, 1);
    CHECK_INT(r->ports[0], 8080);
    CHECK_STR(r->strip_prefix, "/api/v1");
    CHECK_INT(r->strip_prefix_len, 7);
    CHECK_INT(r->preserve_host, 0);
    CHECK(r->upstream == up);
    CHECK(r->response == NULL);
    CHECK(r->plugins != NULL && r->plugins->type == TG_YAML_MAP && r->plugins->n == 2);
    CHECK(r->plugin_order != NULL && r->plugin_order->n == 2);

    r = &conf->routes[1];
    CHECK_STR(r->name, "health");
    CHECK(r->upstream == NULL);
    CHECK_INT(r->preserve_host, 1);
    CHECK_INT(r->methods, 0);
    CHECK(r->hosts == NULL && r->ports == NULL && r->strip_prefix == NULL && r->plugins == NULL);
    CHECK(r->response != NULL);
    if (r->response) {
        CHECK_INT(r->response->status, 200);
        CHECK_STR(r->response->body, "{\"status\":\"ok\"}");
        CHECK_INT(r->response->body_len, 15);
        CHECK_STR(r->response->content_type, "application/json");
        CHECK_INT(r->response->echo, 0);
    }

    r = &conf->routes[2];
    CHECK_STR(r->name, "echo");
    CHECK(r->response && r->response->echo == 1 && r->response->body == NULL);

    r = &conf->routes[3];
    CHECK_STR(r->name, "route-3");                 /* default name */
    CHECK(r->response != NULL);
    if (r->response) {
        CHECK_INT(r->response->status, 418);
        CHECK_STR(r->response->body, "short and stout");
        CHECK_STR(r->response->content_type, "text/plain; charset=utf-8");
        CHECK_INT(r->response->nheaders, 2);
        CHECK_STR(r->response->headers[0].name, "X-Tea");
        CHECK_STR(r->response->headers[0].value, "earl-grey");
        CHECK_STR(r->response->headers[1].value, "5");
    }

    CHECK(conf->plugins != NULL && conf->plugins->n == 1);
    CHECK(conf->plugins_path != NULL && conf->plugins_path->n == 1);

    /* Refcounting and versions. */
    unsigned v1 = conf->version;
    CHECK(tg_conf_ref(conf) == conf);
    CHECK_INT(conf->refcount, 2);
    tg_conf_unref(conf);
    CHECK_INT(conf->refcount, 1);
    tg_conf_t *again = load_ok(full_yaml);
    if (again) CHECK(again->version > v1);
    tg_conf_unref(again);
    tg_conf_unref(conf);
}

static void test_defaults(void) {
    tg_conf_t *conf = load_ok("listen: [\":8080\"]\n");
    if (conf == NULL) return;
    CHECK_INT(conf->worker_processes, 1);
    CHECK_STR(conf->listens[0].addr.text, "0.0.0.0:8080");
    CHECK(conf->admin == NULL);
    CHECK_STR(conf->access_log_path, "stdout");
    CHECK_INT(conf->access_log_json, 1);
    CHECK_STR(conf->error_log_path, "stderr");
    CHECK_INT(conf->error_log_level, TG_LOG_INFO);
    CHECK_INT(conf->shutdown_timeout_ms, 30000);
    CHECK_INT(conf->limits.max_header_bytes, 16384);
    CHECK_INT(conf->limits.max_uri_bytes, 8192);
    CHECK_INT(conf->limits.max_body_bytes, 10485760);
    CHECK_INT(conf->limits.max_headers, 100);
    CHECK_INT(conf->limits.header_timeout_ms, 10000);
    CHECK_INT(conf->limits.body_timeout_ms, 60000);
    CHECK_INT(conf->limits.send_timeout_ms, 60000);
    CHECK_INT(conf->limits.keepalive_timeout_ms, 60000);
    CHECK_INT(conf->limits.max_keepalive_requests, 10000);
    CHECK_STR(conf->redis.host, "127.0.0.1");
    CHECK_INT(conf->redis.port, 6379);
    CHECK_INT(conf->redis.db, 0);
    CHECK(conf->redis.password == NULL);
    CHECK_INT(conf->redis.timeout_ms, 50);
    CHECK_INT(conf->redis.pool_size, 32);
    CHECK_INT(conf->nshared_dicts, 0);
    CHECK_INT(conf->nupstreams, 0);
    CHECK_INT(conf->nroutes, 0);                   /* no routes is allowed */
    CHECK(conf->plugins == NULL && conf->plugins_path == NULL);
    tg_conf_unref(conf);

    /* Upstream and route defaults; access_log off; null sections. */
    conf = load_ok("listen: [\"8080\"]\n"
                   "access_log: { path: off }\n"
                   "limits:\n"
                   "upstreams: { u: { targets: [ { url: \"http://127.0.0.1:81\" } ] } }\n"
                   "routes: [ { paths: [/], upstream: u } ]\n");
    if (conf == NULL) return;
    CHECK(conf->access_log_path == NULL);
    CHECK_INT(conf->limits.max_header_bytes, 16384);
    tg_conf_upstream_t *up = &conf->upstreams[0];
    CHECK_INT(up->targets[0].weight, 1);
    CHECK_INT(up->balance, TG_BALANCE_ROUND_ROBIN);
    CHECK_INT(up->connect_ms, 1000);
    CHECK_INT(up->send_ms, 10000);
    CHECK_INT(up->read_ms, 30000);
    CHECK_INT(up->keepalive, 64);
    CHECK_INT(up->keepalive_timeout_ms, 60000);
    CHECK_INT(up->keepalive_requests, 10000);
    CHECK_INT(up->retries, 1);
    CHECK_INT(up->max_fails, 3);
    CHECK_INT(up->fail_timeout_ms, 10000);
    CHECK_STR(conf->routes[0].name, "route-0");
    CHECK_INT(conf->routes[0].preserve_host, 1);
    tg_conf_unref(conf);

    conf = load_ok(L "worker_processes: \"auto\"\nerror_log: { level: debug, path: /tmp/x.log }\n");
    if (conf) {
        CHECK(conf->worker_processes >= 1);
        CHECK_INT(conf->error_log_level, TG_LOG_DEBUG);
        CHECK_STR(conf->error_log_path, "/tmp/x.log");
    }
    tg_conf_unref(conf);
    conf = load_ok(L "worker_processes: 256\n");
    if (conf) CHECK_INT(conf->worker_processes, 256);
    tg_conf_unref(conf);
}

/* One problem per config; the exact message, and no other error. */
static const struct {
    const char *yaml;
    const char *err;
} error_cases[] = {
    /* unknown keys, at every level */
    { L "pathz: 1\n", "pathz: unknown key" },
    { R("{ paths: [/a], upstream: users, pathz: [/b] }"), "routes[0].pathz: unknown key" },
    { R("{ paths: [/a], response: { stats: 200 } }"), "routes[0].response.stats: unknown key" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], timeouts: { connect: 5 } }"),
      "upstreams.u.timeouts.connect: unknown key" },
    { L "limits: { max_body: 1 }\n", "limits.max_body: unknown key" },
    /* root */
    { "- a\n", "t.yaml: expected a map at the top level" },
    { "worker_processes: 2\n", "t.yaml: missing \"listen\"" },
    { L "worker_processes: 0\n", "worker_processes: expected \"auto\" or an integer between 1 and 256" },
    { L "worker_processes: many\n", "worker_processes: expected \"auto\" or an integer between 1 and 256" },
    { L "shutdown_timeout_ms: -5\n", "shutdown_timeout_ms: expected a non-negative integer" },
    /* listen */
    { "listen: []\n", "listen: expected at least one \"host:port\"" },
    { "listen: \"127.0.0.1:8080\"\n", "listen: expected a list" },
    { "listen: [\"127.0.0.1:8080\", \"127.0.0.1:8443 ssl\"]\n",
      "listen[1]: a TLS listener needs certificates (tls.certificates)" },
    { "listen: [\"127.0.0.1:8443 tls\"]\n",
      "listen[0]: unknown listen option \"tls\" in \"127.0.0.1:8443 tls\" (expected \"host:port\" or \"host:port ssl\")" },
    { "listen: [ { address: \"127.0.0.1:8443\", tls: true } ]\n",
      "listen[0]: a TLS listener needs certificates (tls.certificates)" },
    { "listen: [ { address: \"127.0.0.1:8443\", tls: true, redirect_https: true } ]\n",
      "listen[0].redirect_https: only a plain (non-TLS) listener can redirect to https" },
    { "listen: [ { address: \"127.0.0.1:8080\", client_ca: ca.pem } ]\n",
      "listen[0].client_ca: client certificates need \"tls: true\"" },
    { "listen: [ { address: \"127.0.0.1:8080\", a: 1 } ]\n", "listen[0].a: unknown key" },
    { "listen: [ { tls: true } ]\n", "listen[0]: missing \"address\"" },
    { L "admin: { listen: \"127.0.0.1:9901 ssl\" }\n",
      "admin.listen: invalid address \"127.0.0.1:9901 ssl\": expected host:port (nothing may follow it)" },
    { "listen: [\"127.0.0.1\"]\n", "listen[0]: invalid address \"127.0.0.1\": expected host:port" },
    { "listen: [\"127.0.0.1:0\"]\n", "listen[0]: invalid port in \"127.0.0.1:0\" (expected 1-65535)" },
    { "listen: [\"::1:8080\"]\n", "listen[0]: IPv6 addresses must be in brackets, like \"[::1]:8080\"" },
    { "listen: [\"[::1:8080\"]\n", "listen[0]: missing \"]\" in \"[::1:8080\"" },
    { "listen: [\"[zz]:8080\"]\n", "listen[0]: cannot resolve \"zz\": Name or service not known" },
    { "listen: [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n", "listen[1]: \"127.0.0.1:8080\" is listed twice" },
    { "listen: [ [a] ]\n", "listen[0]: expected \"host:port\" or a map with \"address\"" },
    /* tls */
    { L "tls: { protocols: [TLSv1.1] }\n",
      "tls.protocols[0]: \"TLSv1.1\" is not supported: it is insecure (expected TLSv1.2 or TLSv1.3)" },
    { L "tls: { protocols: [TLSv9] }\n", "tls.protocols[0]: unknown protocol \"TLSv9\" (expected TLSv1.2 or TLSv1.3)" },
    { L "tls: { protocols: [] }\n", "tls.protocols: expected at least one of TLSv1.2, TLSv1.3" },
    { L "tls: { certificates: [] }\n", "tls.certificates: expected at least one { cert, key }" },
    { L "tls: { certificates: [ { cert: a.crt } ] }\n", "tls.certificates[0]: missing \"key\"" },
    { L "tls: { verify_client: required }\n",
      "tls.verify_client: needs \"client_ca\" (the CA that signs client certificates)" },
    { L "tls: { verify_client: maybe }\n", "tls.verify_client: expected one of required, optional, off" },
    { L "tls: { session_tickets: 2 }\n", "tls.session_tickets: expected true or false" },
    { L "tls: { handshake_timeout_ms: 0 }\n", "tls.handshake_timeout_ms: expected a positive integer" },
    { L "tls: { certificate: [] }\n", "tls.certificate: unknown key" },
    /* admin, logs */
    { L "admin: { listen: \"127.0.0.1:8080\" }\n", "admin.listen: \"127.0.0.1:8080\" is already used by listen[0]" },
    { L "admin: {}\n", "admin: missing \"listen\"" },
    { L "access_log: { format: text }\n", "access_log.format: expected \"json\" (the only format for now)" },
    { L "access_log: { path: \"\" }\n", "access_log.path: must not be empty" },
    { L "error_log: { level: verbose }\n", "error_log.level: expected one of debug, info, notice, warn, error, crit" },
    { L "error_log: [stderr]\n", "error_log: expected a map" },
    /* limits */
    { L "limits: { max_header_bytes: 0 }\n", "limits.max_header_bytes: expected a positive integer" },
    { L "limits: { max_header_bytes: \"16384\" }\n", "limits.max_header_bytes: expected a positive integer" },
    { L "limits: { max_header_bytes: 1.5 }\n", "limits.max_header_bytes: expected a positive integer" },
    { L "limits: { max_body_bytes: -1 }\n", "limits.max_body_bytes: expected a non-negative integer" },
    { L "limits: { max_headers: 200 }\n", "limits.max_headers: expected an integer between 1 and 128" },
    { L "limits: { header_timeout_ms: null }\n", "limits.header_timeout_ms: expected a positive integer" },
    { L "limits: 5\n", "limits: expected a map" },
    /* redis */
    { L "redis: { url: \"redis://h:6379/0\", host: h }\n",
      "redis.url: cannot be combined with \"host\" (the url sets it)" },
    { L "redis: { url: \"http://x\" }\n", "redis.url: expected \"redis://[user:pass@]host[:port][/db]\"" },
    { L "redis: { url: \"rediss://x\" }\n", "redis.url: TLS to redis (rediss://) is not supported yet" },
    { L "redis: { url: \"redis://h/x\" }\n", "redis.url: invalid database number \"x\"" },
    { L "redis: { url: \"redis://h:0\" }\n", "redis.url: invalid port (expected 1-65535)" },
    { L "redis: { url: \"redis://user@h\" }\n", "redis.url: a user needs a password (\"redis://user:pass@host\")" },
    { L "redis: { url: \"redis://:p%zz@h\" }\n", "redis.url: bad percent-escape in the user or password" },
    { L "redis: { url: \"redis:///0\" }\n", "redis.url: missing host; expected \"redis://[user:pass@]host[:port][/db]\"" },
    { L "redis: { port: 70000 }\n", "redis.port: expected an integer between 1 and 65535" },
    { L "redis: { password: [a] }\n", "redis.password: expected a string" },
    { L "redis: { pool_size: 0 }\n", "redis.pool_size: expected a positive integer" },
    /* shared dicts */
    { L "shared_dicts: { cache: 10x }\n",
      "shared_dicts.cache: expected a size like \"10m\" (a positive number with optional k, m or g)" },
    { L "shared_dicts: { cache: 0 }\n",
      "shared_dicts.cache: expected a size like \"10m\" (a positive number with optional k, m or g)" },
    { L "shared_dicts: [a]\n", "shared_dicts: expected a map of name: size" },
    /* upstreams */
    { L "upstreams: [a]\n", "upstreams: expected a map of upstream name: upstream" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], tls: { verify: false } }"),
      "upstreams.u.tls: no target is https:// (TLS settings would be ignored)" },
    { UP("{ targets: [ { url: \"https://127.0.0.1\" } ], tls: { client_cert: c.pem } }"),
      "upstreams.u.tls: \"client_cert\" and \"client_key\" go together" },
    { UP("{ targets: [ { url: \"https://127.0.0.1\" } ], tls: { sni: \"a b\" } }"),
      "upstreams.u.tls.sni: invalid host name \"a b\"" },
    { UP("{ targets: [ { url: \"https://127.0.0.1\" } ], tls: { ca_file: /nonexistent/ca.pem } }"),
      "upstreams.u.tls.ca_file: cannot load \"/nonexistent/ca.pem\": no such file or directory" },
    { UP("{ targets: [ { url: \"https://127.0.0.1\" } ], tls: { verify: 1 } }"),
      "upstreams.u.tls.verify: expected true or false" },
    { UP("{ targets: [ { url: \"http://127.0.0.1:3001/api\" } ] }"),
      "upstreams.u.targets[0].url: a target url is scheme://host[:port] only, found \"/api\" after it" },
    { UP("{ targets: [ { url: \"http://127.0.0.1?x=1\" } ] }"),
      "upstreams.u.targets[0].url: a target url is scheme://host[:port] only, found \"?x=1\" after it" },
    { UP("{ targets: [ { url: \"ftp://x\" } ] }"),
      "upstreams.u.targets[0].url: unsupported scheme in \"ftp://x\" (expected http:// or https://)" },
    { UP("{ targets: [ { url: \"127.0.0.1:3001\" } ] }"),
      "upstreams.u.targets[0].url: expected a url like \"http://host:port\"" },
    { UP("{ targets: [ { url: \"http://127.0.0.1:99999\" } ] }"),
      "upstreams.u.targets[0].url: invalid port in \"http://127.0.0.1:99999\" (expected 1-65535)" },
    { UP("{ targets: [ { url: \"http://user:pw@127.0.0.1\" } ] }"),
      "upstreams.u.targets[0].url: credentials are not allowed in a target url" },
    { UP("{ targets: [ { url: \"http://[zz]:80\" } ] }"),
      "upstreams.u.targets[0].url: cannot resolve \"zz\": Name or service not known" },
    { UP("{ targets: [ { weight: 2 } ] }"), "upstreams.u.targets[0]: missing \"url\"" },
    { UP("{ targets: [ \"http://127.0.0.1\" ] }"), "upstreams.u.targets[0]: expected a map" },
    { UP("{ targets: [] }"), "upstreams.u.targets: expected at least one target" },
    { UP("{ balance: hash }"), "upstreams.u: missing \"targets\"" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\", weight: 0 } ] }"),
      "upstreams.u.targets[0].weight: expected an integer between 1 and 10000" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], balance: random }"),
      "upstreams.u.balance: expected one of round_robin, least_conn, hash" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], balance: hash, hash_on: cookie }"),
      "upstreams.u.hash_on: expected \"ip\" or \"header:NAME\"" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], balance: hash, hash_on: \"header:\" }"),
      "upstreams.u.hash_on: expected \"ip\" or \"header:NAME\"" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], timeouts: { connect_ms: 0 } }"),
      "upstreams.u.timeouts.connect_ms: expected a positive integer" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], keepalive: -1 }"),
      "upstreams.u.keepalive: expected a non-negative integer" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], retries: x }"),
      "upstreams.u.retries: expected a non-negative integer" },
    { UP("{ targets: [ { url: \"http://127.0.0.1\" } ], passive_health: { max_fails: x } }"),
      "upstreams.u.passive_health.max_fails: expected a non-negative integer" },
    /* routes */
    { L "routes: { a: 1 }\n", "routes: expected a list" },
    { L "routes: [5]\n", "routes[0]: expected a map" },
    { R("{ response: { status: 204 } }"), "routes[0]: missing \"paths\"" },
    { R("{ paths: [/a] }"), "routes[0]: missing \"upstream\" or \"response\"" },
    { R("{ paths: [/a], upstream: users, response: { echo: true } }"),
      "routes[0]: \"upstream\" and \"response\" are exclusive" },
    { R("{ paths: [/a], upstream: userz }"), "routes[0].upstream: unknown upstream \"userz\"" },
    { R("{ paths: [], upstream: users }"), "routes[0].paths: expected at least one path" },
    { R("{ paths: /a, upstream: users }"), "routes[0].paths: expected a list" },
    { R("{ paths: [api], upstream: users }"),
      "routes[0].paths[0]: must start with \"/\" (or \"=/\" for exact, \"~\" for a regex)" },
    { R("{ paths: [\"=health\"], upstream: users }"),
      "routes[0].paths[0]: must start with \"/\" (or \"=/\" for exact, \"~\" for a regex)" },
    { R("{ paths: [/a, \"~^/v[0-9+/\"], upstream: users }"),
      "routes[0].paths[1]: invalid regex: missing terminating ] for character class at offset 9" },
    { R("{ paths: [\"~(\"], upstream: users }"),
      "routes[0].paths[0]: invalid regex: missing closing parenthesis at offset 1" },
    { R("{ paths: [\"~\"], upstream: users }"), "routes[0].paths[0]: empty regex after \"~\"" },
    { R("{ paths: [\"/a?b=1\"], upstream: users }"),
      "routes[0].paths[0]: must not contain \"?\", \"#\" or whitespace" },
    { R("{ paths: [/a], hosts: [\"a.*.com\"], upstream: users }"),
      "routes[0].hosts[0]: only a leading \"*.\" wildcard is allowed" },
    { R("{ paths: [/a], hosts: [\"*\"], upstream: users }"),
      "routes[0].hosts[0]: only a leading \"*.\" wildcard is allowed" },
    { R("{ paths: [/a], hosts: [\"api.example.com:8080\"], upstream: users }"),
      "routes[0].hosts[0]: invalid host \"api.example.com:8080\" (a name without port)" },
    { R("{ paths: [/a], methods: [GET, get], upstream: users }"),
      "routes[0].methods[1]: unknown method \"get\" (methods are uppercase: \"GET\")" },
    { R("{ paths: [/a], methods: [FETCH], upstream: users }"), "routes[0].methods[0]: unknown method \"FETCH\"" },
    { R("{ paths: [/a], ports: [9999], upstream: users }"), "routes[0].ports[0]: no listen entry has port 9999" },
    { R("{ paths: [/a], ports: [0], upstream: users }"),
      "routes[0].ports[0]: expected an integer between 1 and 65535" },
    { R("{ paths: [/a], strip_prefix: api, upstream: users }"), "routes[0].strip_prefix: must start with \"/\"" },
    { R("{ paths: [/a], preserve_host: yes, upstream: users }"), "routes[0].preserve_host: expected true or false" },
    { R("{ paths: [/a], plugins: { cors: true }, upstream: users }"),
      "routes[0].plugins.cors: expected a map (use {} for defaults) or false" },
    { R("{ paths: [/a], plugins: [cors], upstream: users }"),
      "routes[0].plugins: expected a map of plugin name: config" },
    { R("{ paths: [/a], plugin_order: a, upstream: users }"), "routes[0].plugin_order: expected a list" },
    { R("{ paths: [/a], plugin_order: [a, {}], upstream: users }"), "routes[0].plugin_order[1]: expected a string" },
    { R("{ name: \"\", paths: [/a], upstream: users }"), "routes[0].name: must not be empty" },
    { L U "routes:\n  - { name: x, paths: [/a], upstream: users }\n  - { name: x, paths: [/b], upstream: users }\n",
      "routes[1].name: duplicate route name \"x\" (also routes[0])" },
    { L U "routes:\n  - { paths: [/a], upstream: users }\n  - { name: route-0, paths: [/b], upstream: users }\n",
      "routes[1].name: duplicate route name \"route-0\" (also routes[0])" },
    /* static responses */
    { R("{ paths: [/a], response: { json: {}, body: x } }"), "routes[0].response: \"json\" and \"body\" are exclusive" },
    { R("{ paths: [/a], response: { echo: true, json: 1 } }"),
      "routes[0].response: \"echo\" excludes \"json\" and \"body\"" },
    { R("{ paths: [/a], response: { status: 600 } }"),
      "routes[0].response.status: expected an integer between 200 and 599" },
    { R("{ paths: [/a], response: { echo: 1 } }"), "routes[0].response.echo: expected true or false" },
    { R("{ paths: [/a], response: { body: [x] } }"), "routes[0].response.body: expected a string" },
    { R("{ paths: [/a], response: { headers: { Content-Length: 5 } } }"),
      "routes[0].response.headers.Content-Length: set by the gateway, cannot be configured" },
    { R("{ paths: [/a], response: { headers: { content-type: text/html } } }"),
      "routes[0].response.headers.content-type: use \"content_type\" instead" },
    { R("{ paths: [/a], response: { headers: { X-A: \"a\\r\\nb\" } } }"),
      "routes[0].response.headers.X-A: control characters are not allowed" },
    { R("{ paths: [/a], response: { headers: { \"Bad Name\": x } } }"),
      "routes[0].response.headers.Bad Name: invalid header name" },
    { R("{ paths: [/a], response: 204 }"), "routes[0].response: expected a map" },
    /* global plugins */
    { L "plugins: [a]\n", "plugins: expected a map of plugin name: config" },
    { L "plugins: { cors: 1 }\n", "plugins.cors: expected a map (use {} for defaults) or false" },
    { L "plugins_path: [\"\"]\n", "plugins_path[0]: must not be empty" },
    /* YAML problems come as one "file:line:col: message" */
    { "listen: [\"127.0.0.1:8080\"]\nlisten: []\n", "t.yaml:2:1: duplicate key \"listen\" (first at line 1)" },
    { L "routes:\n  - paths: [/a\n    upstream: users\n",
      "t.yaml:4:13: did not find expected ',' or ']' (while parsing a flow sequence at line 3)" },
    { L "x: &a {k: 1}\ny: {<<: *a}\n",
      "t.yaml:3:5: merge keys (\"<<\") are not supported; repeat the keys or use an alias for the whole value" },
};

static void test_errors(void) {
    for (size_t k = 0; k < tg_nelems(error_cases); k++) {
        tg_conf_errors_t errs = { 0 };
        const char *yaml = error_cases[k].yaml;
        tg_conf_t *conf = tg_conf_load_string("t.yaml", yaml, strlen(yaml), &errs);
        CHECK_MSG(conf == NULL, "case %zu loaded: %s", k, error_cases[k].err);
        CHECK_MSG(errs.n == 1 && errs_has(&errs, error_cases[k].err),
                  "case %zu: want \"%s\", got %d errors", k, error_cases[k].err, errs.n);
        if (errs.n != 1 || !errs_has(&errs, error_cases[k].err)) errs_dump(&errs);
        tg_conf_unref(conf);
        tg_conf_errors_free(&errs);
    }
}

/* Everything wrong at once, and every problem is in the list. */
static void test_many_errors(void) {
    static const char yaml[] =
        "worker_processes: 0\n"
        "listen: [\"127.0.0.1:8080\", \"nope\"]\n"
        "limits: { max_header_bytes: -1, max_headerz: 1 }\n"
        "redis: { url: \"redis://a:1/0\", db: 2 }\n"
        "upstreams:\n"
        "  users:\n"
        "    targets: [ { url: \"https://127.0.0.1\" }, { url: \"http://127.0.0.1\", weight: -1 } ]\n"
        "routes:\n"
        "  - { paths: [api], upstream: userz }\n"
        "  - { paths: [/ok], upstream: users }\n"
        "  - { response: { status: 99 } }\n"
        "  - { paths: [\"~[\"], upstream: users, hosts: [a.*.b], methods: [get] }\n";
    static const char *const want[] = {
        "worker_processes: expected \"auto\" or an integer between 1 and 256",
        "listen[1]: invalid address \"nope\": expected host:port",
        "limits.max_headerz: unknown key",
        "limits.max_header_bytes: expected a positive integer",
        "redis.url: cannot be combined with \"db\" (the url sets it)",
        "upstreams.users.targets[1].weight: expected an integer between 1 and 10000",
        "routes[0].paths[0]: must start with \"/\" (or \"=/\" for exact, \"~\" for a regex)",
        "routes[0].upstream: unknown upstream \"userz\"",
        "routes[2]: missing \"paths\"",
        "routes[2].response.status: expected an integer between 200 and 599",
        "routes[3].paths[0]: invalid regex: missing terminating ] for character class at offset 1",
        "routes[3].hosts[0]: only a leading \"*.\" wildcard is allowed",
        "routes[3].methods[0]: unknown method \"get\" (methods are uppercase: \"GET\")",
    };
    tg_conf_errors_t errs = { 0 };
    tg_conf_t *conf = tg_conf_load_string("t.yaml", yaml, sizeof(yaml) - 1, &errs);
    CHECK(conf == NULL);
    CHECK_INT(errs.n, tg_nelems(want));
    for (size_t k = 0; k < tg_nelems(want); k++)
        CHECK_MSG(errs_has(&errs, want[k]), "missing \"%s\"", want[k]);
    if (errs.n != (int)tg_nelems(want)) errs_dump(&errs);
    tg_conf_errors_free(&errs);
    CHECK_INT(errs.n, 0);

    /* The list is bounded; what does not fit is counted. */
    char big[16384];
    size_t n = (size_t)snprintf(big, sizeof(big), L);
    for (int i = 0; i < TG_CONF_MAX_ERRORS + 44; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "k%d: 1\n", i);
    conf = tg_conf_load_string("t.yaml", big, n, &errs);
    CHECK(conf == NULL);
    CHECK_INT(errs.n, TG_CONF_MAX_ERRORS);
    CHECK_INT(errs.dropped, 44);
    tg_conf_errors_free(&errs);
}

/* TLS keys that need no files: listener forms, https targets, defaults. */
static void test_tls(void) {
    tg_conf_t *conf = load_ok(
        "listen: [ \"127.0.0.1:8080\", { address: \"127.0.0.1:8081\", redirect_https: true } ]\n"
        "upstreams:\n"
        "  a: { targets: [ { url: \"https://localhost\" }, { url: \"https://127.0.0.1:8443\" },\n"
        "                  { url: \"http://127.0.0.1:3001\" } ] }\n"
        "  b: { targets: [ { url: \"https://127.0.0.1\" } ], tls: { verify: false, sni: Backend.Internal } }\n");
    if (conf == NULL) return;
    CHECK_INT(conf->listens[0].tls, 0);
    CHECK_INT(conf->listens[0].redirect_https, 0);
    CHECK_INT(conf->listens[1].redirect_https, 1);
    CHECK_INT(conf->listens[1].https_port, 443);         /* no TLS listener: the default port */
    CHECK_INT(conf->tls.protocols, TG_TLS_V12 | TG_TLS_V13);
    CHECK_INT(conf->tls.session_tickets, 1);
    const tg_conf_upstream_t *a = &conf->upstreams[0], *b = &conf->upstreams[1];
    CHECK_INT(a->has_tls_targets, 1);
    CHECK(a->tls_ctx != NULL);                           /* client context built at load */
    CHECK_INT(a->tls.verify, 1);
    CHECK_STR(a->targets[0].scheme, "https");
    CHECK_INT(a->targets[0].addr.port, 443);
    CHECK_STR(a->targets[0].host_header, "localhost");   /* 443 is implied */
    CHECK_STR(a->targets[0].tls_name, "localhost");
    CHECK_INT(a->targets[0].tls_name_ip, 0);
    CHECK_STR(a->targets[1].host_header, "127.0.0.1:8443");
    CHECK_INT(a->targets[1].tls_name_ip, 1);
    CHECK_INT(a->targets[2].tls, 0);
    CHECK_INT(b->tls.verify, 0);
    CHECK_STR(b->targets[0].tls_name, "Backend.Internal");
    CHECK_INT(b->targets[0].tls_name_ip, 0);
    tg_conf_unref(conf);
}

static void test_redis_url(void) {
    static const struct {
        const char *url;
        const char *host, *user, *pass;
        int port, db;
    } cases[] = {
        { "redis://10.0.0.5",                  "10.0.0.5", NULL, NULL, 6379, 0 },
        { "redis://cache.local:6380/3",        "cache.local", NULL, NULL, 6380, 3 },
        { "redis://:s3cret@127.0.0.1:6379/0",  "127.0.0.1", NULL, "s3cret", 6379, 0 },
        { "redis://app:p%40ss%3Aw@h/",         "h", "app", "p@ss:w", 6379, 0 },
        { "redis://app:p@ss@h:1",              "h", "app", "p@ss", 1, 0 },
        { "REDIS://[::1]:7000/15",             "::1", NULL, NULL, 7000, 15 },
    };
    for (size_t k = 0; k < tg_nelems(cases); k++) {
        char yaml[256];
        snprintf(yaml, sizeof(yaml), L "redis: { url: \"%s\", timeout_ms: 20 }\n", cases[k].url);
        tg_conf_t *conf = load_ok(yaml);
        if (conf == NULL) continue;
        CHECK_STR(conf->redis.host, cases[k].host);
        CHECK_INT(conf->redis.port, cases[k].port);
        CHECK_INT(conf->redis.db, cases[k].db);
        CHECK_INT(conf->redis.timeout_ms, 20);
        CHECK_INT(conf->redis.pool_size, 32);
        if (cases[k].user) CHECK_STR(conf->redis.username, cases[k].user);
        else CHECK(conf->redis.username == NULL);
        if (cases[k].pass) CHECK_STR(conf->redis.password, cases[k].pass);
        else CHECK(conf->redis.password == NULL);
        tg_conf_unref(conf);
    }
    tg_conf_t *conf = load_ok(L "redis: { host: r.local, port: 6380, db: 2, password: 1234 }\n");
    if (conf) {
        CHECK_STR(conf->redis.host, "r.local");
        CHECK_INT(conf->redis.port, 6380);
        CHECK_INT(conf->redis.db, 2);
        CHECK_STR(conf->redis.password, "1234");   /* scalars are strings as written */
    }
    tg_conf_unref(conf);
}

static void test_size_parse(void) {
    static const struct {
        const char *text;
        int         rc;
        size_t      size;
    } cases[] = {
        { "4096", TG_OK, 4096 },
        { "64k", TG_OK, 64 << 10 },
        { "64K", TG_OK, 64 << 10 },
        { "10m", TG_OK, 10 << 20 },
        { "10M", TG_OK, 10 << 20 },
        { "1g", TG_OK, 1UL << 30 },
        { "3G", TG_OK, 3UL << 30 },
        { "0", TG_ERROR, 0 },
        { "0m", TG_ERROR, 0 },
        { "", TG_ERROR, 0 },
        { "m", TG_ERROR, 0 },
        { "10mb", TG_ERROR, 0 },
        { "10 m", TG_ERROR, 0 },
        { "-1m", TG_ERROR, 0 },
        { "1t", TG_ERROR, 0 },
        { "1.5m", TG_ERROR, 0 },
        { "99999999999999999999", TG_ERROR, 0 },
        { "18014398509481984g", TG_ERROR, 0 },
    };
    for (size_t k = 0; k < tg_nelems(cases); k++) {
        size_t size = 0;
        int rc = tg_conf_size_parse(cases[k].text, &size);
        CHECK_MSG(rc == cases[k].rc, "\"%s\": rc %d", cases[k].text, rc);
        if (rc == TG_OK) CHECK_MSG(size == cases[k].size, "\"%s\": %zu", cases[k].text, size);
    }
}

static void test_addr_parse(void) {
    static const struct {
        const char *text;
        const char *norm;   /* NULL: must fail */
        const char *host;
        int         port;
        int         family;
    } cases[] = {
        { "127.0.0.1:8080", "127.0.0.1:8080", "127.0.0.1", 8080, AF_INET },
        { "[::1]:8080",     "[::1]:8080", "::1", 8080, AF_INET6 },
        { "[::]:443",       "[::]:443", "::", 443, AF_INET6 },
        { ":8080",          "0.0.0.0:8080", "0.0.0.0", 8080, AF_INET },
        { "8080",           "0.0.0.0:8080", "0.0.0.0", 8080, AF_INET },
        { "*:80",           "0.0.0.0:80", "0.0.0.0", 80, AF_INET },
        { "0.0.0.0:65535",  "0.0.0.0:65535", "0.0.0.0", 65535, AF_INET },
        { "127.0.0.1:65536", NULL, NULL, 0, 0 },
        { "127.0.0.1:http",  NULL, NULL, 0, 0 },   /* AI_NUMERICSERV */
        { "127.0.0.1:",      NULL, NULL, 0, 0 },
        { "[::1]",           NULL, NULL, 0, 0 },
        { "[::1]x:80",       NULL, NULL, 0, 0 },
        { "[]:80",           NULL, NULL, 0, 0 },
        { "",                NULL, NULL, 0, 0 },
        { " 127.0.0.1:80",   NULL, NULL, 0, 0 },
    };
    tg_pool_t *pool = tg_pool_create(4096);
    for (size_t k = 0; k < tg_nelems(cases); k++) {
        tg_conf_addr_t a;
        char err[256] = "";
        memset(&a, 0, sizeof(a));
        int rc = tg_conf_addr_parse(pool, cases[k].text, &a, err, sizeof(err));
        if (cases[k].norm == NULL) {
            CHECK_MSG(rc == TG_ERROR && err[0] != '\0', "\"%s\" parsed", cases[k].text);
            continue;
        }
        CHECK_MSG(rc == TG_OK, "\"%s\": %s", cases[k].text, err);
        if (rc != TG_OK) continue;
        CHECK_STR(a.text, cases[k].norm);
        CHECK_STR(a.host, cases[k].host);
        CHECK_INT(a.port, cases[k].port);
        CHECK_INT(a.addr.ss_family, cases[k].family);
        uint16_t nport = cases[k].family == AF_INET ? ((struct sockaddr_in *)&a.addr)->sin_port
                                                   : ((struct sockaddr_in6 *)&a.addr)->sin6_port;
        CHECK_INT(ntohs(nport), cases[k].port);
    }
    tg_pool_destroy(pool);
}

static void test_methods(void) {
    tg_conf_t *conf = load_ok(R("{ paths: [/a], upstream: users, "
                                "methods: [DELETE, GET, HEAD, OPTIONS, PATCH, M-SEARCH, SOURCE] }"));
    if (conf == NULL) return;
    uint64_t want = (1ULL << HTTP_DELETE) | (1ULL << HTTP_GET) | (1ULL << HTTP_HEAD)
                  | (1ULL << HTTP_OPTIONS) | (1ULL << HTTP_PATCH) | (1ULL << HTTP_MSEARCH)
                  | (1ULL << HTTP_SOURCE);
    CHECK(conf->routes[0].methods == want);
    CHECK(conf->routes[0].methods & 1);            /* DELETE is method 0 */
    tg_conf_unref(conf);

    conf = load_ok(R("{ paths: [/a], upstream: users, methods: [] }"));
    if (conf) CHECK_INT(conf->routes[0].methods, 0);   /* empty = any */
    tg_conf_unref(conf);
}

/* `json:` bodies: YAML 1.2 core schema typing, compact output, document order. */
static void test_json_bodies(void) {
    static const struct {
        const char *yaml;
        const char *json;
    } cases[] = {
        { "{ status: ok }", "{\"status\":\"ok\"}" },
        { "{ b: 1, a: { c: [] }, d: {} }", "{\"b\":1,\"a\":{\"c\":[]},\"d\":{}}" },
        { "[1, -2, +5, 007, 1.5, .5, 1e3, 0.1, -0.25]", "[1,-2,5,7,1.5,0.5,1000,0.1,-0.25]" },
        { "[true, False, null, ~, yes, on, 0x1f, .inf, .nan, 1.2.3]",
          "[true,false,null,null,\"yes\",\"on\",\"0x1f\",\".inf\",\".nan\",\"1.2.3\"]" },
        { "[\"1\", 'true', \"null\", '']", "[\"1\",\"true\",\"null\",\"\"]" },
        { "\"q\\\"b\\\\s\\n\\t\\x01\\u00e9\"", "\"q\\\"b\\\\s\\n\\t\\u0001\xc3\xa9\"" },
        { "99999999999999999999", "1e+20" },
        { "1.5e300", "1.5e+300" },
        { "-0.0", "-0" },
        { "hello world", "\"hello world\"" },
        { "[&x {k: v}, *x]", "[{\"k\":\"v\"},{\"k\":\"v\"}]" },
        { "{ 1: one, null: n }", "{\"1\":\"one\",\"null\":\"n\"}" },
    };
    for (size_t k = 0; k < tg_nelems(cases); k++) {
        char yaml[512];
        snprintf(yaml, sizeof(yaml), L "routes:\n  - paths: [/j]\n    response:\n      json: %s\n",
                 cases[k].yaml);
        tg_conf_t *conf = load_ok(yaml);
        if (conf == NULL) { fprintf(stderr, "    case: %s\n", cases[k].yaml); continue; }
        tg_conf_response_t *resp = conf->routes[0].response;
        CHECK_STR(resp->body, cases[k].json);
        CHECK_INT(resp->body_len, strlen(cases[k].json));
        CHECK_STR(resp->content_type, "application/json");
        tg_conf_unref(conf);
    }

    /* content_type overrides; body keeps escaped NULs by length. */
    tg_conf_t *conf = load_ok(L "routes:\n  - paths: [/t]\n    response: { body: \"a\\0b\", "
                              "content_type: application/octet-stream, status: 201 }\n");
    if (conf) {
        tg_conf_response_t *resp = conf->routes[0].response;
        CHECK_INT(resp->status, 201);
        CHECK_INT(resp->body_len, 3);
        CHECK(memcmp(resp->body, "a\0b", 3) == 0);
        CHECK_STR(resp->content_type, "application/octet-stream");
    }
    tg_conf_unref(conf);
}

static void test_file_load(void) {
    char dir[] = "/tmp/tg_conf_testXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof(path), "%s/tollgate.yaml", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f == NULL) return;
    fputs(full_yaml, f);
    fclose(f);

    tg_conf_errors_t errs = { 0 };
    tg_conf_t *conf = tg_conf_load(path, &errs);
    CHECK_MSG(conf != NULL, "%d errors", errs.n);
    if (conf) {
        CHECK_STR(conf->path, path);
        CHECK_STR(conf->prefix, dir);
        CHECK_INT(conf->nroutes, 4);
    }
    tg_conf_unref(conf);
    tg_conf_errors_free(&errs);

    /* Errors from a file carry its name. */
    f = fopen(path, "w");
    fputs("listen: [\"127.0.0.1:8080\"]\nlimits:\n  max_headers: 1\n  max_headers: 2\n", f);
    fclose(f);
    CHECK(tg_conf_load(path, &errs) == NULL);
    char want[512];
    snprintf(want, sizeof(want), "%s:4:3: duplicate key \"max_headers\" (first at line 3)", path);
    CHECK_INT(errs.n, 1);
    CHECK_MSG(errs_has(&errs, want), "want %s", want);
    tg_conf_errors_free(&errs);

    unlink(path);
    CHECK(tg_conf_load(path, &errs) == NULL);
    snprintf(want, sizeof(want), "%s: cannot read: No such file or directory", path);
    CHECK_MSG(errs_has(&errs, want), "want %s", want);
    tg_conf_errors_free(&errs);
    rmdir(dir);

    /* An empty document is an empty map: only "listen" is missing. */
    CHECK(tg_conf_load_string("t.yaml", "", 0, &errs) == NULL);
    CHECK_INT(errs.n, 1);
    CHECK(errs_has(&errs, "t.yaml: missing \"listen\""));
    tg_conf_errors_free(&errs);
}

int main(void) {
    test_full_example();
    test_defaults();
    test_errors();
    test_many_errors();
    test_tls();
    test_redis_url();
    test_size_parse();
    test_addr_parse();
    test_methods();
    test_json_bodies();
    test_file_load();
    TG_TEST_DONE();
}
