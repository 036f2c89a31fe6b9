/*
 * tg_conf.h: the configuration snapshot. tg_conf_load() reads YAML (through
 * tg_yaml), checks every key against the core schema, collects *every* error
 * with its YAML path ("routes[2].upstream: unknown upstream \"userz\""), and
 * on success returns an immutable snapshot: all strings and arrays live in
 * the snapshot's pool and are freed with it. Workers hold a reference while
 * they use a snapshot; reload builds a new one and swaps.
 *
 * Unknown keys are errors (a typo must not silently disable a limit).
 */
#ifndef TG_CONF_H
#define TG_CONF_H

#include "tg_core.h"
#include "tg_pool.h"
#include "tg_yaml.h"

#include <sys/socket.h>
#include <netinet/in.h>

/* A bounded list of error strings, each "path: message". */
#define TG_CONF_MAX_ERRORS 256   /* enough to show a badly broken file */
typedef struct {
    int   n;
    char *msg[TG_CONF_MAX_ERRORS];   /* malloc'ed; tg_conf_errors_free() */
    int   dropped;                   /* errors beyond the cap */
} tg_conf_errors_t;

void tg_conf_errors_add(tg_conf_errors_t *errs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void tg_conf_errors_free(tg_conf_errors_t *errs);

/* A resolved socket address with its text form ("127.0.0.1:8080",
 * "[::1]:8080"). */
typedef struct {
    struct sockaddr_storage addr;
    socklen_t               addrlen;
    char                   *text;
    char                   *host;     /* "127.0.0.1", "::1", "localhost" */
    uint16_t                port;
} tg_conf_addr_t;

struct ssl_ctx_st;   /* OpenSSL's SSL_CTX; only tg_tls.c looks inside */

typedef struct {
    tg_conf_addr_t addr;
    int            backlog;          /* 511 like nginx */
    int            tls;              /* "host:port ssl" or { tls: true } */
    int            redirect_https;   /* plain listener: 301 to https://host[:https_port] */
    uint16_t       https_port;       /* the first TLS listener's port, else 443 */
    char          *client_ca;        /* per-listener mTLS CA (absolute path) or NULL:
                                        the top-level tls.client_ca applies */
    int            verify_client;    /* TG_TLS_VERIFY_*, -1 = the top-level one */
    char          *yaml_path;        /* "listen[1]", for messages */
    struct ssl_ctx_st *tls_ctx;      /* built by tg_tls_conf_build; owned by it */
} tg_conf_listen_t;

/* Client certificate checking at a TLS listener. */
#define TG_TLS_VERIFY_NONE     0
#define TG_TLS_VERIFY_REQUIRED 1     /* handshake fails without a valid client cert */
#define TG_TLS_VERIFY_OPTIONAL 2     /* checked when the client sends one */

/* Protocol bits of tg_conf_tls_t.protocols. */
#define TG_TLS_V12 0x1
#define TG_TLS_V13 0x2

typedef struct {
    char *cert;                      /* absolute paths */
    char *key;
} tg_conf_cert_t;

/* The top-level `tls:` section: what every TLS listener serves. */
typedef struct {
    int             present;         /* the section was given */
    tg_conf_cert_t *certs;           /* the first one answers clients without SNI */
    int             ncerts;
    int             protocols;       /* TG_TLS_V12 | TG_TLS_V13 */
    char           *ciphers;         /* TLS 1.2 cipher list, NULL = built-in default */
    char           *ciphersuites;    /* TLS 1.3 suites, NULL = OpenSSL's default */
    int             session_tickets; /* default 1 */
    int             session_timeout_ms; /* default 300000 (tickets and cache) */
    int             session_cache;   /* sessions kept per worker, default 20000; 0 = off */
    char           *client_ca;       /* mTLS for every TLS listener, or NULL */
    int             verify_client;   /* TG_TLS_VERIFY_*, default REQUIRED with client_ca */
    int             handshake_timeout_ms; /* 0 = limits.header_timeout_ms */
} tg_conf_tls_t;

/* An upstream's `tls:` section (used by its https:// targets). */
typedef struct {
    int   present;
    char *ca_file;                   /* NULL = the system CA bundle */
    int   verify;                    /* default 1: chain and host name */
    char *sni;                       /* NULL = each target's host */
    char *client_cert;               /* both or neither */
    char *client_key;
} tg_conf_upstream_tls_t;

typedef struct {
    char           *url;             /* as written */
    char           *scheme;          /* "http" or "https" */
    int             tls;             /* https:// */
    char           *tls_name;        /* SNI and the name verified: tls.sni or host */
    int             tls_name_ip;     /* tls_name is an IP literal: no SNI, IP check */
    char           *host;            /* as written, for the Host header */
    char           *host_header;     /* "host" or "host:port" if not default */
    tg_conf_addr_t  addr;            /* resolved at load (getaddrinfo) */
    int             weight;          /* >= 1, default 1 */
} tg_conf_target_t;

typedef enum {
    TG_BALANCE_ROUND_ROBIN = 0,       /* smooth weighted round robin */
    TG_BALANCE_LEAST_CONN,
    TG_BALANCE_HASH,
} tg_balance_e;

typedef enum {
    TG_HASH_KEY_IP = 0,
    TG_HASH_KEY_HEADER,
} tg_hash_key_e;

typedef struct {
    char             *name;
    int               index;           /* position in conf->upstreams */
    tg_conf_target_t *targets;
    int               ntargets;
    tg_balance_e      balance;
    tg_hash_key_e     hash_key;        /* balance: hash */
    char             *hash_header;     /* hash key header:NAME (lowercased) */
    int               connect_ms;      /* default 1000 */
    int               send_ms;         /* default 10000 */
    int               read_ms;         /* default 30000 */
    int               keepalive;       /* idle conns per worker per target, default 64 */
    int               keepalive_timeout_ms; /* idle pooled conn lifetime, default 60000 */
    int               keepalive_requests;   /* requests per upstream conn, default 10000 */
    int               retries;         /* default 1 */
    int               max_fails;       /* default 3; 0 disables passive health */
    int               fail_timeout_ms; /* default 10000 */
    tg_conf_upstream_tls_t tls;
    int               has_tls_targets; /* some target is https:// */
    struct ssl_ctx_st *tls_ctx;        /* client context, built by tg_tls_conf_build
                                          when has_tls_targets; owned by it */
} tg_conf_upstream_t;

typedef enum {
    TG_PATH_PREFIX = 0,   /* "/api" : "/api", "/api/..." (segment boundary) */
    TG_PATH_EXACT,        /* "=/health" */
    TG_PATH_REGEX,        /* "~^/v[0-9]+/" (PCRE2) */
} tg_path_kind_e;

typedef struct {
    tg_path_kind_e kind;
    char          *path;      /* without the "=" / "~" marker */
    size_t         len;
} tg_conf_path_t;

typedef struct {
    char *name;
    char *value;
} tg_conf_header_t;

typedef struct {
    int               status;        /* default 200 */
    int               echo;          /* answer with the request as JSON */
    char             *body;          /* `json:` serialized, or `body:` text */
    size_t            body_len;
    char             *content_type;  /* application/json for json:, text/plain for body: */
    tg_conf_header_t *headers;       /* extra response headers */
    int               nheaders;
} tg_conf_response_t;

typedef struct {
    char               *name;          /* default "route-<index>" */
    int                 index;         /* position in conf->routes (config order) */
    tg_conf_path_t     *paths;
    int                 npaths;
    char              **hosts;         /* lowercased; "*.example.com" allowed */
    int                 nhosts;
    uint64_t            methods;       /* bit (1 << enum http_method); 0 = any */
    uint16_t           *ports;         /* local listener ports; NULL = any */
    int                 nports;
    char               *strip_prefix;  /* NULL = none */
    size_t              strip_prefix_len;
    int                 preserve_host; /* default 1: keep the client's Host */
    tg_conf_upstream_t *upstream;      /* NULL when response is set */
    tg_conf_response_t *response;      /* NULL when upstream is set */
    tg_yaml_node_t     *plugins;       /* raw map (Lua runtime issue) or NULL */
    tg_yaml_node_t     *plugin_order;  /* raw seq or NULL */
} tg_conf_route_t;

typedef struct {
    char     *name;
    size_t    size;                    /* bytes, from "10m", "64k", "1g" */
} tg_conf_shdict_t;

typedef struct {
    size_t max_header_bytes;           /* 16384: whole request head, else 431 */
    size_t max_uri_bytes;              /* 8192: request target, else 414 */
    size_t max_body_bytes;             /* 10485760, else 413; 0 = unlimited */
    int    max_headers;                /* 100 header lines, else 431 */
    int    header_timeout_ms;          /* 10000, else 408 and close */
    int    body_timeout_ms;            /* 60000 between body reads, else 408 */
    int    send_timeout_ms;            /* 60000 client write stall, else close */
    int    keepalive_timeout_ms;       /* 60000 idle downstream keep-alive */
    int    max_keepalive_requests;     /* 10000 per downstream connection */
} tg_conf_limits_t;

typedef struct {
    char *host;                        /* 127.0.0.1 */
    int   port;                        /* 6379 */
    int   db;                          /* 0 */
    char *password;                    /* NULL; never logged */
    char *username;                    /* NULL (ACL user, from url) */
    int   timeout_ms;                  /* 50 */
    int   pool_size;                   /* 32 */
} tg_conf_redis_t;

typedef struct tg_conf_s {
    tg_pool_t          *pool;          /* owns everything below */
    int                 refcount;      /* tg_conf_ref / tg_conf_unref */
    unsigned            version;       /* increases with every load */
    char               *path;          /* file it was read from */
    char               *prefix;        /* directory of the file, for relative paths */
    tg_yaml_node_t     *root;          /* the whole document, for the Lua runtime */

    int                 worker_processes;   /* resolved: auto = CPU count */
    tg_conf_listen_t   *listens;
    int                 nlistens;
    tg_conf_listen_t   *admin;              /* NULL if no admin listener */
    char               *access_log_path;    /* NULL = off; "stdout"; path */
    int                 access_log_json;    /* format: json (the only one now) */
    char               *error_log_path;     /* "stderr" default */
    int                 error_log_level;    /* enum tg_log_level, default info */
    int                 shutdown_timeout_ms;/* drain limit on reload/stop, 30000 */
    tg_conf_limits_t    limits;
    tg_conf_tls_t       tls;
    struct tg_tls_conf_s *tls_rt;           /* certificates and contexts
                                               (tg_tls.c); freed by tg_conf_unref */
    tg_conf_redis_t     redis;
    tg_conf_shdict_t   *shared_dicts;
    int                 nshared_dicts;
    tg_conf_upstream_t *upstreams;
    int                 nupstreams;
    tg_conf_route_t    *routes;
    int                 nroutes;
    tg_yaml_node_t     *plugins;            /* global plugins map or NULL */
    tg_yaml_node_t     *plugins_path;       /* seq or NULL */
    tg_yaml_node_t     *consumers;          /* seq or NULL (Lua runtime checks it) */

    struct tg_router_s *router;             /* built by the caller after a
                                               successful load (tg_router_build);
                                               freed by tg_conf_unref */
} tg_conf_t;

/* Loads and checks path. Returns a snapshot with refcount 1, or NULL with
 * every problem in errs (the caller frees errs). Regex paths are compiled
 * once here to report a bad pattern with its path; conf->router is left NULL
 * for the caller to build. */
tg_conf_t *tg_conf_load(const char *path, tg_conf_errors_t *errs);
/* Same, from a string (for tests); name is used in messages. */
tg_conf_t *tg_conf_load_string(const char *name, const char *yaml, size_t len,
                               tg_conf_errors_t *errs);
tg_conf_t *tg_conf_ref(tg_conf_t *conf);
void tg_conf_unref(tg_conf_t *conf);     /* frees at zero */

tg_conf_upstream_t *tg_conf_upstream_find(const tg_conf_t *conf, const char *name);

/* Parses "host:port" / "[v6]:port" / ":port" / "port" and resolves it.
 * Returns TG_OK or TG_ERROR with a message in err. */
int tg_conf_addr_parse(tg_pool_t *pool, const char *text, tg_conf_addr_t *out,
                       char *err, size_t errlen);
/* Parses "10m", "64k", "1g", "4096" into bytes; TG_ERROR if malformed. */
int tg_conf_size_parse(const char *text, size_t *out);

#endif
