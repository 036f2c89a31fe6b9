/*
 * tg_conf.c: the YAML tree (tg_yaml) checked against the core schema and
 * turned into an immutable tg_conf_t snapshot (see tg_conf.h).
 *
 * The schema is data, nginx style: each map in the config has a table of
 * fields (key -> setter -> offset, plus bounds), and one walker, check_map(),
 * reports unknown keys, missing required keys and calls the setters. Tables
 * are walked in their own order, not the document's, so that sections other
 * sections refer to (listen, upstreams) are done before routes.
 *
 * Nothing stops at the first problem: every setter reports into the error
 * list with the YAML path of the value ("routes[2].upstream: ...") and the
 * walk goes on, so one run of `tollgate -t` shows everything to fix. A value
 * with an error keeps its default, so later checks see something sane.
 *
 * Everything the snapshot keeps is allocated in conf->pool; paths and other
 * scratch go to a temporary pool that dies with the load.
 */
#include "tg_conf.h"
#include "tg_http.h"
#include "tg_log.h"
#include "tg_router.h"
#include "tg_tls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <http_parser.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#define TG_CONF_POOL_BLOCK     16384
#define TG_CONF_MAX_WORKERS    256    /* more processes than this is a typo */
#define TG_CONF_MAX_WEIGHT     10000  /* keeps smooth-WRR sums far from overflow */
#define TG_CONF_BACKLOG        511    /* nginx's default listen backlog */
#define TG_CONF_DEFAULT_PORT   80
#define TG_CONF_DEFAULT_TLS_PORT 443
#define TG_REDIS_DEFAULT_PORT  6379

/* The only mutable global: snapshots are numbered per process so that
 * caches keyed by version (compiled patterns, limiters) see a reload. */
static unsigned conf_version;

/* Method names exactly as http_method_str() spells them, indexed by
 * enum http_method; kept here so the config does not depend on the parser
 * library being linked. */
static const char *const method_names[] = {
#define XX(num, name, string) [num] = #string,
    HTTP_METHOD_MAP(XX)
#undef XX
};

/* Response headers the gateway frames itself; letting a config set them
 * would produce a second, contradicting copy. */
static const char *const reserved_headers[] = {
    "content-length", "transfer-encoding", "connection",
};

/* ------------------------------------------------------------------ */
/* errors                                                              */

void tg_conf_errors_add(tg_conf_errors_t *errs, const char *fmt, ...) {
    if (errs == NULL) return;
    if (errs->n >= TG_CONF_MAX_ERRORS) {
        errs->dropped++;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    char *msg = tg_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
    errs->msg[errs->n++] = msg;
}

void tg_conf_errors_free(tg_conf_errors_t *errs) {
    if (errs == NULL) return;
    for (int i = 0; i < errs->n; i++) free(errs->msg[i]);
    errs->n = 0;
    errs->dropped = 0;
}

/* ------------------------------------------------------------------ */
/* the checker                                                         */

typedef struct {
    tg_conf_t        *conf;
    tg_pool_t        *pool;        /* conf->pool: what the snapshot keeps */
    tg_pool_t        *tmp;         /* paths and scratch, freed after the load */
    tg_conf_errors_t *errs;
    const char       *name;        /* file name, the "path" of the root */
    int               nerr;
    int               listen_ok;   /* every listen entry parsed */
} ck_t;

static void ck_err(ck_t *ck, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ck_err(ck_t *ck, const char *path, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ck->nerr++;
    tg_conf_errors_add(ck->errs, "%s: %s", path[0] ? path : ck->name, msg);
}

static const char *path_key(ck_t *ck, const char *path, const char *key) {
    return path[0] ? tg_pool_printf(ck->tmp, "%s.%s", path, key) : key;
}

static const char *path_index(ck_t *ck, const char *path, int i) {
    return tg_pool_printf(ck->tmp, "%s[%d]", path, i);
}

typedef struct field_s field_t;
typedef void (*field_set_pt)(ck_t *ck, const char *path, tg_yaml_node_t *val,
                             void *obj, const field_t *f);

struct field_s {
    const char     *key;
    field_set_pt    set;
    size_t          off;       /* where the setter writes, inside obj */
    long long       min, max;  /* integer setters */
    unsigned        flags;
    const field_t  *sub;       /* set_section: the nested map's fields */
    size_t          nsub;
};

#define F_REQUIRED 0x1
#define F_NULL_OK  0x2         /* null means "not set": keep the default */

static const field_t *field_find(const field_t *fields, size_t n, const char *key) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(fields[i].key, key) == 0) return &fields[i];
    return NULL;
}

/* The one walker: unknown keys, then every known field in table order. */
static int check_map(ck_t *ck, const char *path, tg_yaml_node_t *node,
                     const field_t *fields, size_t nfields, void *obj) {
    if (node == NULL || node->type != TG_YAML_MAP) {
        ck_err(ck, path, "expected a map");
        return TG_ERROR;
    }
    for (int i = 0; i < node->n; i++)
        if (field_find(fields, nfields, node->keys[i]->scalar) == NULL)
            ck_err(ck, path_key(ck, path, node->keys[i]->scalar), "unknown key");

    for (size_t i = 0; i < nfields; i++) {
        const field_t *f = &fields[i];
        tg_yaml_node_t *v = tg_yaml_map_get(node, f->key);
        if (v == NULL) {
            if (f->flags & F_REQUIRED) ck_err(ck, path, "missing \"%s\"", f->key);
            continue;
        }
        if ((f->flags & F_NULL_OK) && tg_yaml_is_null(v)) continue;
        f->set(ck, path_key(ck, path, f->key), v, obj, f);
    }
    return TG_OK;
}

static void set_section(ck_t *ck, const char *path, tg_yaml_node_t *val,
                        void *obj, const field_t *f) {
    check_map(ck, path, val, f->sub, f->nsub, (char *)obj + f->off);
}

/* ------------------------------------------------------------------ */
/* scalar helpers and generic setters                                  */

static int is_string(const tg_yaml_node_t *v) {
    return v && v->type == TG_YAML_SCALAR && !tg_yaml_is_null(v);
}

/* Any non-null scalar is accepted as a string, as written: `password: 1234`
 * means the characters, not a number. */
static const char *want_string(ck_t *ck, const char *path, tg_yaml_node_t *v, int nonempty) {
    if (!is_string(v)) {
        ck_err(ck, path, "expected a string");
        return NULL;
    }
    if (nonempty && v->len == 0) {
        ck_err(ck, path, "must not be empty");
        return NULL;
    }
    if (strlen(v->scalar) != v->len) {
        ck_err(ck, path, "must not contain NUL bytes");
        return NULL;
    }
    return v->scalar;
}

static int want_seq(ck_t *ck, const char *path, tg_yaml_node_t *v) {
    if (v->type != TG_YAML_SEQ) {
        ck_err(ck, path, "expected a list");
        return 0;
    }
    return 1;
}

static int want_int(ck_t *ck, const char *path, tg_yaml_node_t *v,
                    long long min, long long max, long long *out) {
    if (tg_yaml_as_int(v, out) && *out >= min && *out <= max) return 1;
    if (max >= INT_MAX && min == 1) ck_err(ck, path, "expected a positive integer");
    else if (max >= INT_MAX && min == 0) ck_err(ck, path, "expected a non-negative integer");
    else if (max >= INT_MAX) ck_err(ck, path, "expected an integer >= %lld", min);
    else ck_err(ck, path, "expected an integer between %lld and %lld", min, max);
    return 0;
}

static void set_int(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    long long v;
    if (want_int(ck, path, val, f->min, f->max, &v)) *(int *)((char *)obj + f->off) = (int)v;
}

static void set_size(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    long long v;
    if (want_int(ck, path, val, f->min, f->max, &v)) *(size_t *)((char *)obj + f->off) = (size_t)v;
}

static void set_bool(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    int b;
    if (tg_yaml_as_bool(val, &b)) *(int *)((char *)obj + f->off) = b;
    else ck_err(ck, path, "expected true or false");
}

static void set_str(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    const char *s = want_string(ck, path, val, 1);
    if (s) *(char **)((char *)obj + f->off) = tg_pool_strdup(ck->pool, s);
}

static char *lowercase_dup(tg_pool_t *pool, const char *s) {
    char *d = tg_pool_strdup(pool, s);
    for (char *p = d; *p; p++) *p = (char)tolower((unsigned char)*p);
    return d;
}

/* RFC 9110 token characters, for header names. */
static int is_token(const char *s) {
    if (*s == '\0') return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c)) continue;
        if (strchr("!#$%&'*+-.^_`|~", c) == NULL) return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* addresses                                                           */

/* 1..65535, digits only. */
static int parse_port(const char *s, size_t len, uint16_t *out) {
    unsigned long v = 0;
    if (len == 0 || len > 5) return TG_ERROR;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return TG_ERROR;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v == 0 || v > 65535) return TG_ERROR;
    *out = (uint16_t)v;
    return TG_OK;
}

/* Resolves host (a bracket-less literal or a name) and takes the first
 * result: the gateway connects to one address per target, and resolving
 * at load keeps DNS out of the request path. */
static int addr_resolve(tg_pool_t *pool, const char *host, int v6_literal, uint16_t port,
                        tg_conf_addr_t *out, char *err, size_t errlen) {
    struct addrinfo hints, *res = NULL;
    char portstr[8], ip[INET6_ADDRSTRLEN];

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = v6_literal ? AF_INET6 : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (v6_literal ? AI_NUMERICHOST : 0);
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);

    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(err, errlen, "cannot resolve \"%s\": %s", host,
                 rc ? gai_strerror(rc) : "no address");
        if (res) freeaddrinfo(res);
        return TG_ERROR;
    }
    memset(&out->addr, 0, sizeof(out->addr));
    memcpy(&out->addr, res->ai_addr, res->ai_addrlen);
    out->addrlen = res->ai_addrlen;
    int family = res->ai_family;
    freeaddrinfo(res);

    if (getnameinfo((struct sockaddr *)&out->addr, out->addrlen, ip, sizeof(ip),
                    NULL, 0, NI_NUMERICHOST) != 0) {
        snprintf(err, errlen, "cannot format the address of \"%s\"", host);
        return TG_ERROR;
    }
    out->text = family == AF_INET6 ? tg_pool_printf(pool, "[%s]:%u", ip, (unsigned)port)
                                   : tg_pool_printf(pool, "%s:%u", ip, (unsigned)port);
    out->host = tg_pool_strdup(pool, host);
    out->port = port;
    return TG_OK;
}

/* Splits "host:port", "[v6]:port" (port optional when allow_no_port) into a
 * NUL-terminated host (written into hostbuf) and the port text. */
static int split_host_port(const char *s, size_t len, char *hostbuf, size_t hostcap,
                           int *v6, const char **port, size_t *portlen,
                           char *err, size_t errlen) {
    const char *hend, *rest, *end = s + len;

    *v6 = 0;
    if (len > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (rb == NULL) {
            snprintf(err, errlen, "missing \"]\" in \"%.*s\"", (int)len, s);
            return TG_ERROR;
        }
        if (rb == s + 1) {
            snprintf(err, errlen, "empty address in \"[]\"");
            return TG_ERROR;
        }
        *v6 = 1;
        s++;
        hend = rb;
        rest = rb + 1;
    } else {
        const char *colon = memchr(s, ':', len);
        if (colon && memchr(colon + 1, ':', len - (size_t)(colon + 1 - s))) {
            snprintf(err, errlen, "IPv6 addresses must be in brackets, like \"[::1]:8080\"");
            return TG_ERROR;
        }
        hend = colon ? colon : s + len;
        rest = hend;
    }
    size_t hlen = (size_t)(hend - s);
    if (hlen >= hostcap) {
        snprintf(err, errlen, "host name too long");
        return TG_ERROR;
    }
    memcpy(hostbuf, s, hlen);
    hostbuf[hlen] = '\0';

    if (rest == end) {
        *port = NULL;
        *portlen = 0;
    } else if (*rest == ':') {
        *port = rest + 1;
        *portlen = (size_t)(end - rest - 1);
    } else {
        snprintf(err, errlen, "unexpected \"%.*s\" after \"]\"", (int)(end - rest), rest);
        return TG_ERROR;
    }
    return TG_OK;
}

int tg_conf_addr_parse(tg_pool_t *pool, const char *text, tg_conf_addr_t *out,
                       char *err, size_t errlen) {
    char host[NI_MAXHOST];
    const char *port;
    size_t portlen, len = strlen(text);
    int v6;
    uint16_t portnum;

    if (len == 0) {
        snprintf(err, errlen, "empty address");
        return TG_ERROR;
    }
    for (size_t i = 0; i < len; i++) {
        if (isspace((unsigned char)text[i])) {
            /* "host:port ssl" is taken apart by parse_listen(); here it
             * means an address that cannot have options (admin). */
            snprintf(err, errlen, "invalid address \"%s\": expected host:port "
                     "(nothing may follow it)", text);
            return TG_ERROR;
        }
    }
    /* "8080" alone: all digits is a port. */
    if (strspn(text, "0123456789") == len) {
        host[0] = '\0';
        port = text;
        portlen = len;
        v6 = 0;
    } else {
        if (split_host_port(text, len, host, sizeof(host), &v6, &port, &portlen, err, errlen) != TG_OK)
            return TG_ERROR;
        if (port == NULL) {
            snprintf(err, errlen, "invalid address \"%s\": expected host:port", text);
            return TG_ERROR;
        }
    }
    if (parse_port(port, portlen, &portnum) != TG_OK) {
        snprintf(err, errlen, "invalid port in \"%s\" (expected 1-65535)", text);
        return TG_ERROR;
    }
    if (host[0] == '\0' || strcmp(host, "*") == 0) strcpy(host, "0.0.0.0");
    return addr_resolve(pool, host, v6, portnum, out, err, errlen);
}

int tg_conf_size_parse(const char *text, size_t *out) {
    const char *p = text;
    unsigned long long v = 0, mult = 1;

    if (*p < '0' || *p > '9') return TG_ERROR;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (ULLONG_MAX - 9) / 10) return TG_ERROR;
        v = v * 10 + (unsigned long long)(*p - '0');
    }
    switch (*p) {
    case '\0': break;
    case 'k': case 'K': mult = 1ULL << 10; p++; break;
    case 'm': case 'M': mult = 1ULL << 20; p++; break;
    case 'g': case 'G': mult = 1ULL << 30; p++; break;
    default: return TG_ERROR;
    }
    if (*p != '\0' || v == 0 || v > SIZE_MAX / mult) return TG_ERROR;
    *out = (size_t)(v * mult);
    return TG_OK;
}

/* ------------------------------------------------------------------ */
/* top level scalars                                                   */

static void set_worker_processes(ck_t *ck, const char *path, tg_yaml_node_t *val,
                                 void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    long long n;
    if (is_string(val) && strcmp(val->scalar, "auto") == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        conf->worker_processes = (int)tg_min(tg_max(cpus, 1L), (long)TG_CONF_MAX_WORKERS);
    } else if (tg_yaml_as_int(val, &n) && n >= 1 && n <= TG_CONF_MAX_WORKERS) {
        conf->worker_processes = (int)n;
    } else {
        ck_err(ck, path, "expected \"auto\" or an integer between 1 and %d", TG_CONF_MAX_WORKERS);
    }
}

static int addr_equal(const tg_conf_addr_t *a, const tg_conf_addr_t *b) {
    return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

/* A path from the config, made absolute against the config's directory so
 * that a reload from another working directory reads the same file. */
static char *conf_file_path(ck_t *ck, const char *s) {
    if (s[0] == '/') return tg_pool_strdup(ck->pool, s);
    return tg_pool_printf(ck->pool, "%s/%s", ck->conf->prefix, s);
}

static void set_file(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    const char *s = want_string(ck, path, val, 1);
    if (s) *(char **)((char *)obj + f->off) = conf_file_path(ck, s);
}

static void set_verify_client(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    const char *s = is_string(val) ? val->scalar : "";
    int *out = (int *)((char *)obj + f->off);
    if (strcmp(s, "required") == 0) *out = TG_TLS_VERIFY_REQUIRED;
    else if (strcmp(s, "optional") == 0) *out = TG_TLS_VERIFY_OPTIONAL;
    else if (strcmp(s, "off") == 0) *out = TG_TLS_VERIFY_NONE;
    else ck_err(ck, path, "expected one of required, optional, off");
}

static void set_listen_address(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_listen_t *l = obj;
    char err[512];
    const char *s = want_string(ck, path, val, 0);
    if (s == NULL) return;
    if (tg_conf_addr_parse(ck->pool, s, &l->addr, err, sizeof(err)) != TG_OK) ck_err(ck, path, "%s", err);
}

/* The map form of a listen entry. */
static const field_t listen_fields[] = {
    { "address",        set_listen_address, 0, 0, 0, F_REQUIRED, NULL, 0 },
    { "tls",            set_bool, offsetof(tg_conf_listen_t, tls), 0, 0, 0, NULL, 0 },
    { "redirect_https", set_bool, offsetof(tg_conf_listen_t, redirect_https), 0, 0, 0, NULL, 0 },
    { "client_ca",      set_file, offsetof(tg_conf_listen_t, client_ca), 0, 0, F_NULL_OK, NULL, 0 },
    { "verify_client",  set_verify_client, offsetof(tg_conf_listen_t, verify_client), 0, 0, 0, NULL, 0 },
};

/* "host:port", "host:port ssl" (nginx's spelling), or
 * { address: "host:port", tls: true, redirect_https: ..., client_ca: ... }. */
static int parse_listen(ck_t *ck, const char *path, tg_yaml_node_t *v, tg_conf_listen_t *l,
                        int options) {
    char err[512];
    int nerr = ck->nerr;
    l->backlog = TG_CONF_BACKLOG;
    l->verify_client = -1;
    l->yaml_path = tg_pool_strdup(ck->pool, path);
    if (options && v->type == TG_YAML_MAP) {
        check_map(ck, path, v, listen_fields, tg_nelems(listen_fields), l);
        if (ck->nerr != nerr) return TG_ERROR;
        if (l->tls && l->redirect_https) {
            ck_err(ck, path_key(ck, path, "redirect_https"), "only a plain (non-TLS) listener can redirect to https");
            return TG_ERROR;
        }
        if (!l->tls && (l->client_ca || l->verify_client >= 0)) {
            ck_err(ck, path_key(ck, path, l->client_ca ? "client_ca" : "verify_client"),
                   "client certificates need \"tls: true\"");
            return TG_ERROR;
        }
        return TG_OK;
    }
    if (options && v->type != TG_YAML_SCALAR) {
        ck_err(ck, path, "expected \"host:port\" or a map with \"address\"");
        return TG_ERROR;
    }
    const char *s = want_string(ck, path, v, 0);
    if (s == NULL) return TG_ERROR;
    const char *sp = options ? strpbrk(s, " \t") : NULL;
    if (sp) {
        /* Options after the address: only "ssl" exists. */
        const char *opt = sp + strspn(sp, " \t");
        size_t olen = strcspn(opt, " \t");
        if (olen == 3 && strncmp(opt, "ssl", 3) == 0 && opt[3 + strspn(opt + 3, " \t")] == '\0') {
            l->tls = 1;
            s = tg_pool_strndup(ck->tmp, s, (size_t)(sp - s));
        } else {
            ck_err(ck, path, "unknown listen option \"%.*s\" in \"%s\" (expected \"host:port\" or \"host:port ssl\")",
                   (int)olen, opt, s);
            return TG_ERROR;
        }
    }
    if (tg_conf_addr_parse(ck->pool, s, &l->addr, err, sizeof(err)) != TG_OK) {
        ck_err(ck, path, "%s", err);
        return TG_ERROR;
    }
    return TG_OK;
}

static void set_listen(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    if (!want_seq(ck, path, val)) return;
    if (val->n == 0) {
        ck_err(ck, path, "expected at least one \"host:port\"");
        return;
    }
    conf->listens = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*conf->listens));
    int ok = 1;
    for (int i = 0; i < val->n; i++) {
        const char *ipath = path_index(ck, path, i);
        tg_conf_listen_t *l = &conf->listens[conf->nlistens];
        if (parse_listen(ck, ipath, val->items[i], l, 1) != TG_OK) { ok = 0; continue; }
        int dup = -1;
        for (int j = 0; j < conf->nlistens && dup < 0; j++)
            if (addr_equal(&conf->listens[j].addr, &l->addr)) dup = j;
        if (dup >= 0) {
            ck_err(ck, ipath, "\"%s\" is listed twice", l->addr.text);
            ok = 0;
            continue;
        }
        conf->nlistens++;
    }
    ck->listen_ok = ok;
}

static void set_admin_listen(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    tg_conf_listen_t *l = tg_pool_calloc(ck->pool, sizeof(*l));
    if (parse_listen(ck, path, val, l, 0) != TG_OK) return;
    for (int i = 0; i < conf->nlistens; i++) {
        if (addr_equal(&conf->listens[i].addr, &l->addr)) {
            ck_err(ck, path, "\"%s\" is already used by listen[%d]", l->addr.text, i);
            return;
        }
    }
    conf->admin = l;
}

/* ------------------------------------------------------------------ */
/* tls (the files are loaded by tg_tls_conf_build, after the walk)     */

static const field_t cert_fields[] = {
    { "cert", set_file, offsetof(tg_conf_cert_t, cert), 0, 0, F_REQUIRED, NULL, 0 },
    { "key",  set_file, offsetof(tg_conf_cert_t, key), 0, 0, F_REQUIRED, NULL, 0 },
};

static void set_tls_certificates(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_tls_t *t = obj;
    if (!want_seq(ck, path, val)) return;
    if (val->n == 0) {
        ck_err(ck, path, "expected at least one { cert, key }");
        return;
    }
    t->certs = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*t->certs));
    t->ncerts = val->n;
    for (int i = 0; i < val->n; i++)
        check_map(ck, path_index(ck, path, i), val->items[i], cert_fields, tg_nelems(cert_fields), &t->certs[i]);
}

static void set_tls_protocols(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_tls_t *t = obj;
    if (!want_seq(ck, path, val)) return;
    if (val->n == 0) {
        ck_err(ck, path, "expected at least one of TLSv1.2, TLSv1.3");
        return;
    }
    int bits = 0;
    for (int i = 0; i < val->n; i++) {
        const char *ipath = path_index(ck, path, i);
        const char *s = want_string(ck, ipath, val->items[i], 1);
        if (s == NULL) continue;
        if (strcmp(s, "TLSv1.2") == 0) bits |= TG_TLS_V12;
        else if (strcmp(s, "TLSv1.3") == 0) bits |= TG_TLS_V13;
        else if (strcmp(s, "TLSv1") == 0 || strcmp(s, "TLSv1.1") == 0 || strncmp(s, "SSLv", 4) == 0)
            ck_err(ck, ipath, "\"%s\" is not supported: it is insecure (expected TLSv1.2 or TLSv1.3)", s);
        else ck_err(ck, ipath, "unknown protocol \"%s\" (expected TLSv1.2 or TLSv1.3)", s);
    }
    if (bits) t->protocols = bits;
}

static const field_t tls_fields[] = {
    { "certificates",    set_tls_certificates, 0, 0, 0, 0, NULL, 0 },
    { "protocols",       set_tls_protocols, 0, 0, 0, 0, NULL, 0 },
    { "ciphers",         set_str, offsetof(tg_conf_tls_t, ciphers), 0, 0, F_NULL_OK, NULL, 0 },
    { "ciphersuites",    set_str, offsetof(tg_conf_tls_t, ciphersuites), 0, 0, F_NULL_OK, NULL, 0 },
    { "session_tickets", set_bool, offsetof(tg_conf_tls_t, session_tickets), 0, 0, 0, NULL, 0 },
    { "session_timeout_ms", set_int, offsetof(tg_conf_tls_t, session_timeout_ms), 1000, INT_MAX, 0, NULL, 0 },
    { "session_cache",   set_int, offsetof(tg_conf_tls_t, session_cache), 0, INT_MAX, 0, NULL, 0 },
    { "client_ca",       set_file, offsetof(tg_conf_tls_t, client_ca), 0, 0, F_NULL_OK, NULL, 0 },
    { "verify_client",   set_verify_client, offsetof(tg_conf_tls_t, verify_client), 0, 0, 0, NULL, 0 },
    { "handshake_timeout_ms", set_int, offsetof(tg_conf_tls_t, handshake_timeout_ms), 1, INT_MAX, 0, NULL, 0 },
};

static void set_tls(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    conf->tls.present = 1;
    check_map(ck, path, val, tls_fields, tg_nelems(tls_fields), &conf->tls);
}

/* Cross-checks between listen, tls and upstreams once all are read. */
static void check_tls(ck_t *ck, tg_conf_t *conf) {
    uint16_t https_port = 443;
    int ntls = 0;
    for (int i = 0; i < conf->nlistens; i++) {
        tg_conf_listen_t *l = &conf->listens[i];
        if (!l->tls) continue;
        if (ntls++ == 0) https_port = l->addr.port;
        if (conf->tls.ncerts == 0)
            ck_err(ck, l->yaml_path, "a TLS listener needs certificates (tls.certificates)");
    }
    for (int i = 0; i < conf->nlistens; i++) conf->listens[i].https_port = https_port;
    if (conf->tls.verify_client > TG_TLS_VERIFY_NONE && conf->tls.client_ca == NULL)
        ck_err(ck, "tls.verify_client", "needs \"client_ca\" (the CA that signs client certificates)");
    for (int i = 0; i < conf->nlistens; i++) {
        tg_conf_listen_t *l = &conf->listens[i];
        if (l->verify_client > TG_TLS_VERIFY_NONE && l->client_ca == NULL && conf->tls.client_ca == NULL)
            ck_err(ck, path_key(ck, l->yaml_path, "verify_client"),
                   "needs \"client_ca\" here or in tls");
    }
    for (int i = 0; i < conf->nupstreams; i++) {
        tg_conf_upstream_t *up = &conf->upstreams[i];
        if (up->tls.present && !up->has_tls_targets && up->ntargets > 0)
            ck_err(ck, tg_pool_printf(ck->tmp, "upstreams.%s.tls", up->name),
                   "no target is https:// (TLS settings would be ignored)");
    }
}

static void set_access_log_path(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    const char *s = want_string(ck, path, val, 1);
    if (s) conf->access_log_path = strcmp(s, "off") == 0 ? NULL : tg_pool_strdup(ck->pool, s);
}

static void set_access_log_format(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    if (is_string(val) && strcmp(val->scalar, "json") == 0) conf->access_log_json = 1;
    else ck_err(ck, path, "expected \"json\" (the only format for now)");
}

static void set_log_level(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    int level = is_string(val) ? tg_log_level_parse(val->scalar) : -1;
    if (level < 0) ck_err(ck, path, "expected one of debug, info, notice, warn, error, crit");
    else conf->error_log_level = level;
}

/* ------------------------------------------------------------------ */
/* redis                                                               */

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..len) into the pool; NULL on a bad escape. Passwords
 * in URLs must escape '@', ':' and '/', so decoding is what users expect. */
static char *percent_decode(tg_pool_t *pool, const char *s, size_t len) {
    char *d = tg_pool_alloc(pool, len + 1), *o = d;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') { *o++ = s[i]; continue; }
        if (i + 2 >= len) return NULL;
        int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
        if (hi < 0 || lo < 0) return NULL;
        char c = (char)(hi * 16 + lo);
        if (c == '\0') return NULL;
        *o++ = c;
        i += 2;
    }
    *o = '\0';
    return d;
}

static void set_redis_url(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    static const char usage[] = "expected \"redis://[user:pass@]host[:port][/db]\"";
    tg_conf_redis_t *r = obj;
    char host[NI_MAXHOST], err[256];
    const char *port;
    size_t portlen;
    int v6;

    const char *url = want_string(ck, path, val, 1);
    if (url == NULL) return;
    if (strncasecmp(url, "rediss://", 9) == 0) {
        ck_err(ck, path, "TLS to redis (rediss://) is not supported yet");
        return;
    }
    if (strncasecmp(url, "redis://", 8) != 0) {
        ck_err(ck, path, "%s", usage);
        return;
    }
    const char *auth = url + 8;
    size_t alen = strcspn(auth, "/?#");
    const char *tail = auth + alen;

    /* The last '@' ends the userinfo: an unescaped '@' in a password is
     * common enough to tolerate. */
    const char *at = NULL;
    for (const char *p = auth; p < tail; p++) if (*p == '@') at = p;
    char *user = NULL, *pass = NULL;
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        size_t ulen = colon ? (size_t)(colon - auth) : (size_t)(at - auth);
        user = percent_decode(ck->pool, auth, ulen);
        if (colon) pass = percent_decode(ck->pool, colon + 1, (size_t)(at - colon - 1));
        if (user == NULL || (colon && pass == NULL)) {
            ck_err(ck, path, "bad percent-escape in the user or password");
            return;
        }
        if (user[0] && (pass == NULL || pass[0] == '\0')) {
            ck_err(ck, path, "a user needs a password (\"redis://user:pass@host\")");
            return;
        }
        auth = at + 1;
    }
    if (split_host_port(auth, (size_t)(tail - auth), host, sizeof(host), &v6,
                        &port, &portlen, err, sizeof(err)) != TG_OK) {
        ck_err(ck, path, "%s", err);
        return;
    }
    if (host[0] == '\0') {
        ck_err(ck, path, "missing host; %s", usage);
        return;
    }
    uint16_t portnum = TG_REDIS_DEFAULT_PORT;
    if (port && parse_port(port, portlen, &portnum) != TG_OK) {
        ck_err(ck, path, "invalid port (expected 1-65535)");
        return;
    }
    long long db = 0;
    if (*tail == '/' && tail[1] != '\0') {
        char *end;
        errno = 0;
        db = strtoll(tail + 1, &end, 10);
        if (!isdigit((unsigned char)tail[1]) || *end != '\0' || errno || db > INT_MAX) {
            ck_err(ck, path, "invalid database number \"%s\"", tail + 1);
            return;
        }
    } else if (*tail != '\0' && strcmp(tail, "/") != 0) {
        ck_err(ck, path, "unexpected \"%s\"; %s", tail, usage);
        return;
    }
    r->host = tg_pool_strdup(ck->pool, host);
    r->port = portnum;
    r->db = (int)db;
    r->username = user && user[0] ? user : NULL;
    r->password = pass && pass[0] ? pass : NULL;
}

static void set_redis_password(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_redis_t *r = obj;
    const char *s = want_string(ck, path, val, 0);
    if (s) r->password = s[0] ? tg_pool_strdup(ck->pool, s) : NULL;
}

static const field_t redis_fields[] = {
    { "url",        set_redis_url,      0, 0, 0, 0, NULL, 0 },
    { "host",       set_str,            offsetof(tg_conf_redis_t, host), 0, 0, 0, NULL, 0 },
    { "port",       set_int,            offsetof(tg_conf_redis_t, port), 1, 65535, 0, NULL, 0 },
    { "db",         set_int,            offsetof(tg_conf_redis_t, db), 0, INT_MAX, 0, NULL, 0 },
    { "password",   set_redis_password, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "timeout_ms", set_int,            offsetof(tg_conf_redis_t, timeout_ms), 1, INT_MAX, 0, NULL, 0 },
    { "pool_size",  set_int,            offsetof(tg_conf_redis_t, pool_size), 1, INT_MAX, 0, NULL, 0 },
};

static void set_redis(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    static const char *const url_parts[] = { "host", "port", "db", "password" };
    tg_conf_t *conf = obj;
    if (tg_yaml_map_get(val, "url")) {
        for (size_t i = 0; i < tg_nelems(url_parts); i++)
            if (tg_yaml_map_get(val, url_parts[i]))
                ck_err(ck, path_key(ck, path, "url"), "cannot be combined with \"%s\" (the url sets it)",
                       url_parts[i]);
    }
    check_map(ck, path, val, redis_fields, tg_nelems(redis_fields), &conf->redis);
}

/* ------------------------------------------------------------------ */
/* shared dicts, plugins                                               */

static void set_shared_dicts(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    if (val->type != TG_YAML_MAP) {
        ck_err(ck, path, "expected a map of name: size");
        return;
    }
    if (val->n == 0) return;
    conf->shared_dicts = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*conf->shared_dicts));
    for (int i = 0; i < val->n; i++) {
        const char *name = val->keys[i]->scalar;
        const char *kpath = path_key(ck, path, name);
        size_t size;
        if (name[0] == '\0') {
            ck_err(ck, kpath, "empty name");
            continue;
        }
        if (!is_string(val->items[i]) || tg_conf_size_parse(val->items[i]->scalar, &size) != TG_OK) {
            ck_err(ck, kpath, "expected a size like \"10m\" (a positive number with optional k, m or g)");
            continue;
        }
        tg_conf_shdict_t *d = &conf->shared_dicts[conf->nshared_dicts++];
        d->name = tg_pool_strdup(ck->pool, name);
        d->size = size;
    }
}

/* A plugins map: name -> config map, or false to switch a global plugin off
 * for one route. The node is kept raw; the Lua runtime checks schemas. */
static void set_plugins(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    if (val->type != TG_YAML_MAP) {
        ck_err(ck, path, "expected a map of plugin name: config");
        return;
    }
    int ok = 1;
    for (int i = 0; i < val->n; i++) {
        tg_yaml_node_t *v = val->items[i];
        int b;
        if (val->keys[i]->len == 0) {
            ck_err(ck, path, "empty plugin name");
            ok = 0;
        } else if (v->type != TG_YAML_MAP && !(tg_yaml_as_bool(v, &b) && b == 0)) {
            ck_err(ck, path_key(ck, path, val->keys[i]->scalar),
                   "expected a map (use {} for defaults) or false");
            ok = 0;
        }
    }
    if (ok) *(tg_yaml_node_t **)((char *)obj + f->off) = val;
}

/* A list of non-empty strings, kept raw (plugins_path, plugin_order). */
/* A sequence kept as a raw tree for the Lua runtime to check. */
static void set_raw_seq(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    if (!want_seq(ck, path, val)) return;
    *(tg_yaml_node_t **)((char *)obj + f->off) = val;
}

static void set_string_seq(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    if (!want_seq(ck, path, val)) return;
    int ok = 1;
    for (int i = 0; i < val->n; i++)
        if (want_string(ck, path_index(ck, path, i), val->items[i], 1) == NULL) ok = 0;
    if (ok) *(tg_yaml_node_t **)((char *)obj + f->off) = val;
}

/* ------------------------------------------------------------------ */
/* upstreams                                                           */

static int parse_target_url(ck_t *ck, const char *path, const char *url, tg_conf_target_t *t) {
    char host[NI_MAXHOST], err[512];
    const char *port;
    size_t portlen;
    int v6;

    int tls = strncasecmp(url, "https://", 8) == 0;
    if (!tls && strncasecmp(url, "http://", 7) != 0) {
        if (strstr(url, "://")) ck_err(ck, path, "unsupported scheme in \"%s\" (expected http:// or https://)", url);
        else ck_err(ck, path, "expected a url like \"http://host:port\"");
        return TG_ERROR;
    }
    t->tls = tls;   /* known even if the rest fails: no misleading "no https target" */
    const char *auth = url + (tls ? 8 : 7);
    size_t alen = strcspn(auth, "/?#");
    const char *tail = auth + alen;
    /* A lone "/" is the empty path; anything more would have to be joined
     * with the request's path, which routes do with strip_prefix instead. */
    if (*tail != '\0' && strcmp(tail, "/") != 0) {
        ck_err(ck, path, "a target url is scheme://host[:port] only, found \"%s\" after it", tail);
        return TG_ERROR;
    }
    if (memchr(auth, '@', alen)) {
        ck_err(ck, path, "credentials are not allowed in a target url");
        return TG_ERROR;
    }
    if (split_host_port(auth, alen, host, sizeof(host), &v6, &port, &portlen, err, sizeof(err)) != TG_OK) {
        ck_err(ck, path, "%s", err);
        return TG_ERROR;
    }
    if (host[0] == '\0') {
        ck_err(ck, path, "missing host");
        return TG_ERROR;
    }
    uint16_t defport = tls ? TG_CONF_DEFAULT_TLS_PORT : TG_CONF_DEFAULT_PORT;
    uint16_t portnum = defport;
    if (port && parse_port(port, portlen, &portnum) != TG_OK) {
        ck_err(ck, path, "invalid port in \"%s\" (expected 1-65535)", url);
        return TG_ERROR;
    }
    if (addr_resolve(ck->pool, host, v6, portnum, &t->addr, err, sizeof(err)) != TG_OK) {
        ck_err(ck, path, "%s", err);
        return TG_ERROR;
    }
    const char *hh = v6 ? tg_pool_printf(ck->tmp, "[%s]", host) : host;
    t->url = tg_pool_strdup(ck->pool, url);
    t->scheme = tls ? "https" : "http";
    t->tls = tls;
    t->host = tg_pool_strdup(ck->pool, host);
    t->host_header = portnum == defport
        ? tg_pool_strdup(ck->pool, hh)
        : tg_pool_printf(ck->pool, "%s:%u", hh, (unsigned)portnum);
    return TG_OK;
}

static void set_target_url(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    const char *url = want_string(ck, path, val, 1);
    if (url) parse_target_url(ck, path, url, obj);
}

static const field_t target_fields[] = {
    { "url",    set_target_url, 0, 0, 0, F_REQUIRED, NULL, 0 },
    { "weight", set_int,        offsetof(tg_conf_target_t, weight), 1, TG_CONF_MAX_WEIGHT, 0, NULL, 0 },
};

static void set_targets(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_upstream_t *up = obj;
    if (!want_seq(ck, path, val)) return;
    if (val->n == 0) {
        ck_err(ck, path, "expected at least one target");
        return;
    }
    up->targets = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*up->targets));
    up->ntargets = val->n;
    for (int i = 0; i < val->n; i++) {
        up->targets[i].weight = 1;
        check_map(ck, path_index(ck, path, i), val->items[i], target_fields,
                  tg_nelems(target_fields), &up->targets[i]);
    }
}

static void set_balance(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_upstream_t *up = obj;
    const char *s = is_string(val) ? val->scalar : "";
    if (strcmp(s, "round_robin") == 0) up->balance = TG_BALANCE_ROUND_ROBIN;
    else if (strcmp(s, "least_conn") == 0) up->balance = TG_BALANCE_LEAST_CONN;
    else if (strcmp(s, "hash") == 0) up->balance = TG_BALANCE_HASH;
    else ck_err(ck, path, "expected one of round_robin, least_conn, hash");
}

/* Checked whatever the balance is, but only used with balance: hash; the
 * contract's example sets it beside round_robin, so that must stay valid. */
static void set_hash_on(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_upstream_t *up = obj;
    const char *s = is_string(val) ? val->scalar : "";
    if (strcmp(s, "ip") == 0) {
        up->hash_key = TG_HASH_KEY_IP;
    } else if (strncmp(s, "header:", 7) == 0 && is_token(s + 7)) {
        up->hash_key = TG_HASH_KEY_HEADER;
        up->hash_header = lowercase_dup(ck->pool, s + 7);
    } else {
        ck_err(ck, path, "expected \"ip\" or \"header:NAME\"");
    }
}

static const field_t timeout_fields[] = {
    { "connect_ms", set_int, offsetof(tg_conf_upstream_t, connect_ms), 1, INT_MAX, 0, NULL, 0 },
    { "send_ms",    set_int, offsetof(tg_conf_upstream_t, send_ms), 1, INT_MAX, 0, NULL, 0 },
    { "read_ms",    set_int, offsetof(tg_conf_upstream_t, read_ms), 1, INT_MAX, 0, NULL, 0 },
};

static const field_t passive_health_fields[] = {
    { "max_fails",       set_int, offsetof(tg_conf_upstream_t, max_fails), 0, INT_MAX, 0, NULL, 0 },
    { "fail_timeout_ms", set_int, offsetof(tg_conf_upstream_t, fail_timeout_ms), 1, INT_MAX, 0, NULL, 0 },
};

static int host_ok(const char *h);

static const field_t upstream_tls_fields[] = {
    { "ca_file",     set_file, offsetof(tg_conf_upstream_tls_t, ca_file), 0, 0, F_NULL_OK, NULL, 0 },
    { "verify",      set_bool, offsetof(tg_conf_upstream_tls_t, verify), 0, 0, 0, NULL, 0 },
    { "sni",         set_str,  offsetof(tg_conf_upstream_tls_t, sni), 0, 0, F_NULL_OK, NULL, 0 },
    { "client_cert", set_file, offsetof(tg_conf_upstream_tls_t, client_cert), 0, 0, F_NULL_OK, NULL, 0 },
    { "client_key",  set_file, offsetof(tg_conf_upstream_tls_t, client_key), 0, 0, F_NULL_OK, NULL, 0 },
};

static void set_upstream_tls(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_upstream_t *up = obj;
    up->tls.present = 1;
    check_map(ck, path, val, upstream_tls_fields, tg_nelems(upstream_tls_fields), &up->tls);
    if ((up->tls.client_cert == NULL) != (up->tls.client_key == NULL))
        ck_err(ck, path, "\"client_cert\" and \"client_key\" go together");
    if (up->tls.sni && !host_ok(up->tls.sni))
        ck_err(ck, path_key(ck, path, "sni"), "invalid host name \"%s\"", up->tls.sni);
}

/* What each https target presents as SNI and verifies the certificate
 * against: tls.sni when set, else the host of its url. */
static void upstream_tls_names(ck_t *ck, tg_conf_upstream_t *up) {
    for (int i = 0; i < up->ntargets; i++) {
        tg_conf_target_t *t = &up->targets[i];
        if (!t->tls) continue;
        up->has_tls_targets = 1;
        if (t->host == NULL) continue;   /* the url had an error */
        t->tls_name = up->tls.sni ? up->tls.sni : t->host;
        unsigned char bin[16];
        t->tls_name_ip = inet_pton(AF_INET, t->tls_name, bin) == 1 || inet_pton(AF_INET6, t->tls_name, bin) == 1;
    }
}

static const field_t upstream_fields[] = {
    { "targets",   set_targets, 0, 0, 0, F_REQUIRED, NULL, 0 },
    { "balance",   set_balance, 0, 0, 0, 0, NULL, 0 },
    { "hash_on",   set_hash_on, 0, 0, 0, 0, NULL, 0 },
    { "timeouts",  set_section, 0, 0, 0, F_NULL_OK, timeout_fields, tg_nelems(timeout_fields) },
    { "keepalive", set_int, offsetof(tg_conf_upstream_t, keepalive), 0, INT_MAX, 0, NULL, 0 },
    { "keepalive_timeout_ms", set_int, offsetof(tg_conf_upstream_t, keepalive_timeout_ms), 1, INT_MAX, 0, NULL, 0 },
    { "keepalive_requests", set_int, offsetof(tg_conf_upstream_t, keepalive_requests), 1, INT_MAX, 0, NULL, 0 },
    { "retries",   set_int, offsetof(tg_conf_upstream_t, retries), 0, INT_MAX, 0, NULL, 0 },
    { "passive_health", set_section, 0, 0, 0, F_NULL_OK, passive_health_fields, tg_nelems(passive_health_fields) },
    { "tls",       set_upstream_tls, 0, 0, 0, F_NULL_OK, NULL, 0 },
};

static void upstream_defaults(tg_conf_upstream_t *up) {
    up->balance = TG_BALANCE_ROUND_ROBIN;
    up->hash_key = TG_HASH_KEY_IP;
    up->connect_ms = 1000;
    up->send_ms = 10000;
    up->read_ms = 30000;
    up->keepalive = 64;
    up->keepalive_timeout_ms = 60000;
    up->keepalive_requests = 10000;
    up->retries = 1;
    up->max_fails = 3;
    up->fail_timeout_ms = 10000;
    up->tls.verify = 1;
}

static void set_upstreams(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    if (val->type != TG_YAML_MAP) {
        ck_err(ck, path, "expected a map of upstream name: upstream");
        return;
    }
    if (val->n == 0) return;
    conf->upstreams = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*conf->upstreams));
    conf->nupstreams = val->n;
    /* Every upstream is registered by name even when its body has errors,
     * so routes naming it do not add a misleading "unknown upstream". */
    for (int i = 0; i < val->n; i++) {
        tg_conf_upstream_t *up = &conf->upstreams[i];
        const char *upath = path_key(ck, path, val->keys[i]->scalar);
        upstream_defaults(up);
        up->name = tg_pool_strdup(ck->pool, val->keys[i]->scalar);
        up->index = i;
        if (up->name[0] == '\0') ck_err(ck, path, "empty upstream name");
        check_map(ck, upath, val->items[i], upstream_fields, tg_nelems(upstream_fields), up);
        upstream_tls_names(ck, up);
    }
}

/* ------------------------------------------------------------------ */
/* static responses and JSON                                           */

typedef struct {
    char   *p;
    size_t  len, cap;
} jbuf_t;

static void jb_put(jbuf_t *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = tg_max(b->cap * 2, b->len + n + 1);
        b->p = tg_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void jb_lit(jbuf_t *b, const char *s) {
    jb_put(b, s, strlen(s));
}

static void json_string(jbuf_t *b, const char *s, size_t len) {
    char esc[8];
    jb_put(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':  jb_lit(b, "\\\""); break;
        case '\\': jb_lit(b, "\\\\"); break;
        case '\n': jb_lit(b, "\\n"); break;
        case '\r': jb_lit(b, "\\r"); break;
        case '\t': jb_lit(b, "\\t"); break;
        case '\b': jb_lit(b, "\\b"); break;
        case '\f': jb_lit(b, "\\f"); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                jb_lit(b, esc);
            } else {
                jb_put(b, (const char *)&s[i], 1);
            }
        }
    }
    jb_put(b, "\"", 1);
}

/* Shortest "%.*g" that reads back as the same double, so 0.1 stays "0.1";
 * whole numbers below 2^53 print without an exponent (1e3 -> 1000). */
static void json_double(jbuf_t *b, double d) {
    char num[32];
    if (d == floor(d) && fabs(d) < 9007199254740992.0) {
        snprintf(num, sizeof(num), "%.0f", d);
        jb_lit(b, num);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(num, sizeof(num), "%.*g", prec, d);
        if (strtod(num, NULL) == d) break;
    }
    jb_lit(b, num);
}

/* YAML 1.2 core schema typing for plain scalars; quoted scalars, and values
 * JSON cannot express (.inf, .nan), are strings. Depth is bounded by the
 * YAML loader. */
static void json_value(jbuf_t *b, const tg_yaml_node_t *v) {
    long long i;
    double d;
    int t;

    switch (v->type) {
    case TG_YAML_SCALAR:
        if (tg_yaml_is_null(v)) jb_lit(b, "null");
        else if (tg_yaml_as_bool(v, &t)) jb_lit(b, t ? "true" : "false");
        else if (tg_yaml_as_int(v, &i)) {
            char num[32];
            snprintf(num, sizeof(num), "%lld", i);
            jb_lit(b, num);
        } else if (tg_yaml_as_number(v, &d) && isfinite(d)) json_double(b, d);
        else json_string(b, v->scalar, v->len);
        break;
    case TG_YAML_SEQ:
        jb_put(b, "[", 1);
        for (int k = 0; k < v->n; k++) {
            if (k) jb_put(b, ",", 1);
            json_value(b, v->items[k]);
        }
        jb_put(b, "]", 1);
        break;
    case TG_YAML_MAP:
        jb_put(b, "{", 1);
        for (int k = 0; k < v->n; k++) {
            if (k) jb_put(b, ",", 1);
            json_string(b, v->keys[k]->scalar, v->keys[k]->len);
            jb_put(b, ":", 1);
            json_value(b, v->items[k]);
        }
        jb_put(b, "}", 1);
        break;
    }
}

static void set_response_json(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_response_t *resp = obj;
    jbuf_t b = { NULL, 0, 0 };
    json_value(&b, val);
    resp->body = tg_pool_strndup(ck->pool, b.p, b.len);
    resp->body_len = b.len;
    resp->content_type = "application/json";
    free(b.p);
}

static void set_response_body(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_response_t *resp = obj;
    if (val->type != TG_YAML_SCALAR) {
        ck_err(ck, path, "expected a string");
        return;
    }
    /* A body may be binary-ish (escaped "\0"), so keep the length. */
    resp->body = tg_pool_strndup(ck->pool, val->scalar, val->len);
    resp->body_len = val->len;
    resp->content_type = "text/plain; charset=utf-8";
}

static void set_response_echo(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_response_t *resp = obj;
    int b;
    if (!tg_yaml_as_bool(val, &b)) {
        ck_err(ck, path, "expected true or false");
        return;
    }
    resp->echo = b;
    if (b) resp->content_type = "application/json";
}

/* Header values become part of the response head: CR, LF and other control
 * characters would let a config split it. */
static int header_value_ok(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
    }
    return 1;
}

static void set_response_headers(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_response_t *resp = obj;
    if (val->type != TG_YAML_MAP) {
        ck_err(ck, path, "expected a map of header name: value");
        return;
    }
    if (val->n == 0) return;
    resp->headers = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*resp->headers));
    for (int i = 0; i < val->n; i++) {
        const char *name = val->keys[i]->scalar;
        const char *hpath = path_key(ck, path, name);
        tg_yaml_node_t *v = val->items[i];
        int reserved = 0;
        for (size_t k = 0; k < tg_nelems(reserved_headers); k++)
            if (strcasecmp(name, reserved_headers[k]) == 0) reserved = 1;

        if (!is_token(name)) ck_err(ck, hpath, "invalid header name");
        else if (reserved) ck_err(ck, hpath, "set by the gateway, cannot be configured");
        else if (strcasecmp(name, "content-type") == 0) ck_err(ck, hpath, "use \"content_type\" instead");
        else if (!is_string(v)) ck_err(ck, hpath, "expected a string");
        else if (!header_value_ok(v->scalar, v->len)) ck_err(ck, hpath, "control characters are not allowed");
        else {
            tg_conf_header_t *h = &resp->headers[resp->nheaders++];
            h->name = tg_pool_strdup(ck->pool, name);
            h->value = tg_pool_strndup(ck->pool, v->scalar, v->len);
        }
    }
}

static void set_response_content_type(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_response_t *resp = obj;
    const char *s = want_string(ck, path, val, 1);
    if (s == NULL) return;
    if (!header_value_ok(s, strlen(s))) ck_err(ck, path, "control characters are not allowed");
    else resp->content_type = tg_pool_strdup(ck->pool, s);
}

/* content_type last: it overrides what json/body/echo set. */
static const field_t response_fields[] = {
    { "status",       set_int, offsetof(tg_conf_response_t, status), 200, 599, 0, NULL, 0 },
    { "json",         set_response_json, 0, 0, 0, 0, NULL, 0 },
    { "body",         set_response_body, 0, 0, 0, 0, NULL, 0 },
    { "echo",         set_response_echo, 0, 0, 0, 0, NULL, 0 },
    { "headers",      set_response_headers, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "content_type", set_response_content_type, 0, 0, 0, 0, NULL, 0 },
};

static void set_route_response(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_route_t *route = obj;
    if (val->type != TG_YAML_MAP) {
        ck_err(ck, path, "expected a map");
        return;
    }
    tg_yaml_node_t *echo = tg_yaml_map_get(val, "echo");
    int has_json = tg_yaml_map_get(val, "json") != NULL;
    int has_body = tg_yaml_map_get(val, "body") != NULL;
    int echo_on = 0;
    if (echo && !tg_yaml_as_bool(echo, &echo_on)) echo_on = 0;
    if (has_json && has_body) ck_err(ck, path, "\"json\" and \"body\" are exclusive");
    if (echo_on && (has_json || has_body)) ck_err(ck, path, "\"echo\" excludes \"json\" and \"body\"");

    tg_conf_response_t *resp = tg_pool_calloc(ck->pool, sizeof(*resp));
    resp->status = 200;
    check_map(ck, path, val, response_fields, tg_nelems(response_fields), resp);
    route->response = resp;
}

/* ------------------------------------------------------------------ */
/* routes                                                              */

static void set_route_name(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_route_t *route = obj;
    const char *s = want_string(ck, path, val, 1);
    if (s) route->name = tg_pool_strdup(ck->pool, s);
}

/* Compiled once here only to report a bad pattern with its path; the router
 * compiles (and JITs) its own copy. */
static void check_regex(ck_t *ck, const char *path, const char *re, size_t len) {
    int errcode;
    PCRE2_SIZE erroff;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)re, len, 0, &errcode, &erroff, NULL);
    if (code) {
        pcre2_code_free(code);
        return;
    }
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(errcode, msg, sizeof(msg));
    ck_err(ck, path, "invalid regex: %s at offset %zu", (const char *)msg, (size_t)erroff);
}

static void set_route_paths(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_route_t *route = obj;
    if (!want_seq(ck, path, val)) return;
    if (val->n == 0) {
        ck_err(ck, path, "expected at least one path");
        return;
    }
    route->paths = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*route->paths));
    for (int i = 0; i < val->n; i++) {
        const char *ipath = path_index(ck, path, i);
        const char *s = want_string(ck, ipath, val->items[i], 1);
        if (s == NULL) continue;
        tg_conf_path_t *p = &route->paths[route->npaths];
        if (s[0] == '~') {
            p->kind = TG_PATH_REGEX;
            s++;
            if (*s == '\0') { ck_err(ck, ipath, "empty regex after \"~\""); continue; }
            check_regex(ck, ipath, s, strlen(s));
        } else {
            p->kind = s[0] == '=' ? TG_PATH_EXACT : TG_PATH_PREFIX;
            if (s[0] == '=') s++;
            if (s[0] != '/') {
                ck_err(ck, ipath, "must start with \"/\" (or \"=/\" for exact, \"~\" for a regex)");
                continue;
            }
            /* The router matches the path without the query. */
            if (strpbrk(s, "?# \t")) {
                ck_err(ck, ipath, "must not contain \"?\", \"#\" or whitespace");
                continue;
            }
        }
        p->path = tg_pool_strdup(ck->pool, s);
        p->len = strlen(s);
        route->npaths++;
    }
}

/* Host names as the router compares them: lowercase, no port, and at most
 * one leading "*." wildcard. */
static int host_ok(const char *h) {
    if (strncmp(h, "*.", 2) == 0) h += 2;
    if (*h == '\0') return 0;
    if (*h == '[') {
        size_t n = strlen(h);
        return n > 2 && h[n - 1] == ']' && strspn(h + 1, "0123456789abcdefABCDEF:.") == n - 2;
    }
    for (; *h; h++)
        if (!isalnum((unsigned char)*h) && *h != '-' && *h != '.' && *h != '_') return 0;
    return 1;
}

static void set_route_hosts(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_route_t *route = obj;
    if (!want_seq(ck, path, val)) return;
    if (val->n == 0) return;
    route->hosts = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*route->hosts));
    for (int i = 0; i < val->n; i++) {
        const char *ipath = path_index(ck, path, i);
        const char *s = want_string(ck, ipath, val->items[i], 1);
        if (s == NULL) continue;
        if (strchr(s, '*') && (strncmp(s, "*.", 2) != 0 || strchr(s + 1, '*'))) {
            ck_err(ck, ipath, "only a leading \"*.\" wildcard is allowed");
            continue;
        }
        if (!host_ok(s)) {
            ck_err(ck, ipath, "invalid host \"%s\" (a name without port)", s);
            continue;
        }
        route->hosts[route->nhosts++] = lowercase_dup(ck->pool, s);
    }
}

static void set_route_methods(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_route_t *route = obj;
    if (!want_seq(ck, path, val)) return;
    for (int i = 0; i < val->n; i++) {
        const char *ipath = path_index(ck, path, i);
        const char *s = want_string(ck, ipath, val->items[i], 1);
        if (s == NULL) continue;
        int m = -1, folded = -1;
        for (size_t k = 0; k < tg_nelems(method_names); k++) {
            if (method_names[k] == NULL) continue;
            if (strcmp(s, method_names[k]) == 0) m = (int)k;
            else if (strcasecmp(s, method_names[k]) == 0) folded = (int)k;
        }
        if (m >= 0) route->methods |= 1ULL << m;
        else if (folded >= 0) ck_err(ck, ipath, "unknown method \"%s\" (methods are uppercase: \"%s\")",
                                     s, method_names[folded]);
        else ck_err(ck, ipath, "unknown method \"%s\"", s);
    }
}

static void set_route_ports(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_route_t *route = obj;
    tg_conf_t *conf = ck->conf;
    if (!want_seq(ck, path, val)) return;
    if (val->n == 0) return;
    route->ports = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*route->ports));
    for (int i = 0; i < val->n; i++) {
        const char *ipath = path_index(ck, path, i);
        long long port;
        if (!want_int(ck, ipath, val->items[i], 1, 65535, &port)) continue;
        int found = 0;
        for (int k = 0; k < conf->nlistens; k++)
            if (conf->listens[k].addr.port == port) found = 1;
        /* With a broken listen list the check would only add noise. */
        if (!found && ck->listen_ok) {
            ck_err(ck, ipath, "no listen entry has port %lld", port);
            continue;
        }
        route->ports[route->nports++] = (uint16_t)port;
    }
}

static void set_route_strip_prefix(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_route_t *route = obj;
    const char *s = want_string(ck, path, val, 1);
    if (s == NULL) return;
    if (s[0] != '/') {
        ck_err(ck, path, "must start with \"/\"");
        return;
    }
    route->strip_prefix = tg_pool_strdup(ck->pool, s);
    route->strip_prefix_len = strlen(s);
}

static void set_route_upstream(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_route_t *route = obj;
    const char *s = want_string(ck, path, val, 1);
    if (s == NULL) return;
    route->upstream = tg_conf_upstream_find(ck->conf, s);
    if (route->upstream == NULL) ck_err(ck, path, "unknown upstream \"%s\"", s);
}

static const field_t route_fields[] = {
    { "name",          set_route_name, 0, 0, 0, 0, NULL, 0 },
    { "paths",         set_route_paths, 0, 0, 0, F_REQUIRED, NULL, 0 },
    { "hosts",         set_route_hosts, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "methods",       set_route_methods, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "ports",         set_route_ports, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "strip_prefix",  set_route_strip_prefix, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "preserve_host", set_bool, offsetof(tg_conf_route_t, preserve_host), 0, 0, 0, NULL, 0 },
    { "upstream",      set_route_upstream, 0, 0, 0, 0, NULL, 0 },
    { "response",      set_route_response, 0, 0, 0, 0, NULL, 0 },
    { "plugins",       set_plugins, offsetof(tg_conf_route_t, plugins), 0, 0, F_NULL_OK, NULL, 0 },
    { "plugin_order",  set_string_seq, offsetof(tg_conf_route_t, plugin_order), 0, 0, F_NULL_OK, NULL, 0 },
};

static int route_name_cmp(const void *a, const void *b) {
    const tg_conf_route_t *x = *(tg_conf_route_t *const *)a, *y = *(tg_conf_route_t *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : x->index - y->index;
}

/* Names identify routes in logs and metrics, so they must be unique. Sorted
 * rather than compared pairwise: configs with thousands of routes exist. */
static void check_route_names(ck_t *ck, tg_conf_t *conf) {
    if (conf->nroutes < 2) return;
    tg_conf_route_t **byname = tg_pool_alloc(ck->tmp, (size_t)conf->nroutes * sizeof(*byname));
    for (int i = 0; i < conf->nroutes; i++) byname[i] = &conf->routes[i];
    qsort(byname, (size_t)conf->nroutes, sizeof(*byname), route_name_cmp);
    for (int i = 1, first = 0; i < conf->nroutes; i++) {
        if (strcmp(byname[i]->name, byname[first]->name) != 0) { first = i; continue; }
        ck_err(ck, tg_pool_printf(ck->tmp, "routes[%d].name", byname[i]->index),
               "duplicate route name \"%s\" (also routes[%d])", byname[i]->name, byname[first]->index);
    }
}

static void set_routes(ck_t *ck, const char *path, tg_yaml_node_t *val, void *obj, const field_t *f) {
    tg_conf_t *conf = obj;
    if (!want_seq(ck, path, val)) return;
    if (val->n == 0) return;
    conf->routes = tg_pool_calloc(ck->pool, (size_t)val->n * sizeof(*conf->routes));
    conf->nroutes = val->n;
    for (int i = 0; i < val->n; i++) {
        tg_conf_route_t *route = &conf->routes[i];
        tg_yaml_node_t *node = val->items[i];
        const char *rpath = path_index(ck, path, i);
        route->index = i;
        route->preserve_host = 1;
        if (check_map(ck, rpath, node, route_fields, tg_nelems(route_fields), route) == TG_OK) {
            int has_up = tg_yaml_map_get(node, "upstream") != NULL;
            int has_resp = tg_yaml_map_get(node, "response") != NULL;
            if (has_up && has_resp) ck_err(ck, rpath, "\"upstream\" and \"response\" are exclusive");
            else if (!has_up && !has_resp) ck_err(ck, rpath, "missing \"upstream\" or \"response\"");
        }
        if (route->name == NULL) route->name = tg_pool_printf(ck->pool, "route-%d", i);
    }
    check_route_names(ck, conf);
}

/* ------------------------------------------------------------------ */
/* root                                                                */

static const field_t access_log_fields[] = {
    { "path",   set_access_log_path, 0, 0, 0, 0, NULL, 0 },
    { "format", set_access_log_format, 0, 0, 0, 0, NULL, 0 },
};

static const field_t error_log_fields[] = {
    { "path",  set_str, offsetof(tg_conf_t, error_log_path), 0, 0, 0, NULL, 0 },
    { "level", set_log_level, 0, 0, 0, 0, NULL, 0 },
};

static const field_t admin_fields[] = {
    { "listen", set_admin_listen, 0, 0, 0, F_REQUIRED, NULL, 0 },
};

#define LIMIT(field, fn, min, max) \
    { #field, fn, offsetof(tg_conf_limits_t, field), min, max, 0, NULL, 0 }

static const field_t limits_fields[] = {
    LIMIT(max_header_bytes,       set_size, 1, LLONG_MAX),
    LIMIT(max_uri_bytes,          set_size, 1, LLONG_MAX),
    LIMIT(max_body_bytes,         set_size, 0, LLONG_MAX),   /* 0 = unlimited */
    LIMIT(max_headers,            set_int,  1, TG_HTTP_MAX_HEADERS),
    LIMIT(header_timeout_ms,      set_int,  1, INT_MAX),
    LIMIT(body_timeout_ms,        set_int,  1, INT_MAX),
    LIMIT(send_timeout_ms,        set_int,  1, INT_MAX),
    LIMIT(keepalive_timeout_ms,   set_int,  1, INT_MAX),
    LIMIT(max_keepalive_requests, set_int,  1, INT_MAX),
};

/* Order matters: listen before admin (address clash) and routes (ports),
 * upstreams before routes. */
static const field_t root_fields[] = {
    { "worker_processes", set_worker_processes, 0, 0, 0, 0, NULL, 0 },
    { "listen",       set_listen, 0, 0, 0, F_REQUIRED, NULL, 0 },
    { "tls",          set_tls, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "admin",        set_section, 0, 0, 0, F_NULL_OK, admin_fields, tg_nelems(admin_fields) },
    { "access_log",   set_section, 0, 0, 0, F_NULL_OK, access_log_fields, tg_nelems(access_log_fields) },
    { "error_log",    set_section, 0, 0, 0, F_NULL_OK, error_log_fields, tg_nelems(error_log_fields) },
    { "limits",       set_section, offsetof(tg_conf_t, limits), 0, 0, F_NULL_OK, limits_fields, tg_nelems(limits_fields) },
    { "redis",        set_redis, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "shared_dicts", set_shared_dicts, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "shutdown_timeout_ms", set_int, offsetof(tg_conf_t, shutdown_timeout_ms), 0, INT_MAX, 0, NULL, 0 },
    { "upstreams",    set_upstreams, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "routes",       set_routes, 0, 0, 0, F_NULL_OK, NULL, 0 },
    { "plugins",      set_plugins, offsetof(tg_conf_t, plugins), 0, 0, F_NULL_OK, NULL, 0 },
    { "plugins_path", set_string_seq, offsetof(tg_conf_t, plugins_path), 0, 0, F_NULL_OK, NULL, 0 },
    /* Checked in detail by the Lua runtime (lua/tollgate/consumers.lua). */
    { "consumers",    set_raw_seq, offsetof(tg_conf_t, consumers), 0, 0, F_NULL_OK, NULL, 0 },
};

static void conf_defaults(tg_conf_t *conf) {
    conf->worker_processes = 1;
    conf->access_log_path = "stdout";
    conf->access_log_json = 1;
    conf->error_log_path = "stderr";
    conf->error_log_level = TG_LOG_INFO;
    conf->shutdown_timeout_ms = 30000;

    conf->limits.max_header_bytes = 16384;
    conf->limits.max_uri_bytes = 8192;
    conf->limits.max_body_bytes = 10485760;
    conf->limits.max_headers = 100;
    conf->limits.header_timeout_ms = 10000;
    conf->limits.body_timeout_ms = 60000;
    conf->limits.send_timeout_ms = 60000;
    conf->limits.keepalive_timeout_ms = 60000;
    conf->limits.max_keepalive_requests = 10000;

    conf->tls.protocols = TG_TLS_V12 | TG_TLS_V13;
    conf->tls.session_tickets = 1;
    conf->tls.session_timeout_ms = 300000;
    conf->tls.session_cache = 20000;
    conf->tls.verify_client = -1;

    conf->redis.host = "127.0.0.1";
    conf->redis.port = TG_REDIS_DEFAULT_PORT;
    conf->redis.db = 0;
    conf->redis.timeout_ms = 50;
    conf->redis.pool_size = 32;
}

/* Directory of path, absolute when it can be, so relative paths in the
 * config keep working after the process changes directory. */
static char *dir_of(tg_pool_t *pool, const char *path) {
    char *abs = realpath(path, NULL);
    const char *p = abs ? abs : path;
    const char *slash = strrchr(p, '/');
    char *dir;
    if (slash == NULL) dir = tg_pool_strdup(pool, ".");
    else if (slash == p) dir = tg_pool_strdup(pool, "/");
    else dir = tg_pool_strndup(pool, p, (size_t)(slash - p));
    free(abs);
    return dir;
}

static tg_conf_t *conf_check(tg_pool_t *pool, tg_yaml_node_t *root, const char *name,
                             char *prefix, tg_conf_errors_t *errs) {
    tg_conf_t *conf = tg_pool_calloc(pool, sizeof(*conf));
    ck_t ck = { conf, pool, tg_pool_create(4096), errs, name, 0, 1 };

    conf->pool = pool;
    conf->refcount = 1;
    conf->path = tg_pool_strdup(pool, name);
    conf->prefix = prefix;
    conf->root = root;
    conf_defaults(conf);

    if (root->type != TG_YAML_MAP) ck_err(&ck, "", "expected a map at the top level");
    else check_map(&ck, "", root, root_fields, tg_nelems(root_fields), conf);
    check_tls(&ck, conf);
    /* Certificates and keys are loaded now, so that `tollgate -t` and a
     * reload catch a bad file; done even when other keys had errors, so
     * one run shows everything. */
    ck.nerr += tg_tls_conf_build(conf, errs);

    tg_pool_destroy(ck.tmp);
    if (ck.nerr) {
        tg_tls_conf_free(conf);
        tg_pool_destroy(pool);
        return NULL;
    }
    conf->version = ++conf_version;
    return conf;
}

static tg_conf_t *conf_load(const char *name, const char *path, const char *yaml, size_t len,
                            tg_conf_errors_t *errs) {
    char err[1024];
    tg_pool_t *pool = tg_pool_create(TG_CONF_POOL_BLOCK);
    tg_yaml_node_t *root = path ? tg_yaml_load_file(pool, path, err, sizeof(err))
                                : tg_yaml_load_string(pool, name, yaml, len, err, sizeof(err));
    if (root == NULL) {
        tg_conf_errors_add(errs, "%s", err);
        tg_pool_destroy(pool);
        return NULL;
    }
    char *prefix;
    if (path) {
        prefix = dir_of(pool, path);
    } else {
        char *cwd = getcwd(NULL, 0);
        prefix = tg_pool_strdup(pool, cwd ? cwd : ".");
        free(cwd);
    }
    return conf_check(pool, root, name, prefix, errs);
}

tg_conf_t *tg_conf_load(const char *path, tg_conf_errors_t *errs) {
    return conf_load(path, path, NULL, 0, errs);
}

tg_conf_t *tg_conf_load_string(const char *name, const char *yaml, size_t len,
                               tg_conf_errors_t *errs) {
    return conf_load(name ? name : "(string)", NULL, yaml, len, errs);
}

tg_conf_t *tg_conf_ref(tg_conf_t *conf) {
    conf->refcount++;
    return conf;
}

void tg_conf_unref(tg_conf_t *conf) {
    if (conf == NULL || --conf->refcount > 0) return;
    if (conf->router) tg_router_free(conf->router);
    tg_tls_conf_free(conf);
    tg_pool_destroy(conf->pool);
}

tg_conf_upstream_t *tg_conf_upstream_find(const tg_conf_t *conf, const char *name) {
    for (int i = 0; i < conf->nupstreams; i++)
        if (strcmp(conf->upstreams[i].name, name) == 0) return &conf->upstreams[i];
    return NULL;
}
