/*
 * tg_tls.c: TLS contexts built from the config, and non-blocking TLS I/O
 * (see tg_tls.h).
 *
 * Server side: one SSL_CTX per TLS listener (they differ only in client
 * certificate settings; listeners without their own share one). Each
 * context carries the first certificate as its default; a certificate
 * callback, which OpenSSL runs once the ClientHello (and so the SNI name)
 * is known and before it picks a signature algorithm, switches the SSL to
 * the certificate whose names match: an exact name first, then a "*."
 * wildcard one label deep; no SNI or no match keeps the first. Names come
 * from the certificate itself (its DNS subjectAltNames, else its CN), so
 * the config lists files, not names.
 *
 * Defaults are Mozilla's "intermediate" profile: TLS 1.2 and 1.3 only,
 * ECDHE with AEAD ciphers for TLS 1.2, no renegotiation, no compression.
 * Session tickets (keys made when the context is built, so shared by all
 * workers of a generation and new after a reload) and a per-worker session
 * cache give resumption.
 *
 * Client side: one SSL_CTX per upstream with https targets, verification
 * on unless `verify: false`; each connection names its target in SNI (not
 * for IP literals, which RFC 6066 forbids) and checks the certificate
 * against that name. The last session per target is kept by the worker's
 * upstream pool for resumption.
 *
 * OpenSSL's error queue is per thread and shared with everything else in
 * the process (the Lua crypto module uses OpenSSL too), so it is cleared
 * before every call whose result is read through SSL_get_error().
 */
#include "tg_tls.h"
#include "tg_log.h"
#include "tg_pool.h"

#include <ctype.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Plaintext per SSL_write when small pieces are gathered: one full record. */
#define TG_TLS_RECORD 16384
/* Certificate chains longer than this are refused when verifying peers. */
#define TG_TLS_VERIFY_DEPTH 10

/* Mozilla "intermediate" TLS 1.2 suites (TLS 1.3 suites are OpenSSL's). */
#define TG_TLS_DEFAULT_CIPHERS \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static const unsigned char alpn_http11[] = "\x08http/1.1";

typedef struct {
    X509            *x509;
    STACK_OF(X509)  *chain;     /* intermediates after the leaf in the file */
    EVP_PKEY        *pkey;
    char           **names;     /* lowercase DNS names, "*.x.y" for wildcards */
    int              nnames;
} tls_cert_t;

struct tg_tls_conf_s {
    tls_cert_t *certs;
    int         ncerts;
    SSL_CTX    *server_default;  /* listeners without their own client_ca */
};

/* ------------------------------------------------------------------ */
/* errors                                                              */

/* The most useful line of OpenSSL's error queue ("no start line", "key
 * values mismatch"), then the queue is cleared. */
static const char *ssl_reason(void) {
    static char buf[256];
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, sizeof(buf), "%s", r ? r : (e ? "unknown error" : "unknown reason"));
    ERR_clear_error();
    return buf;
}

/* strerror() with a lowercase first letter (house style for messages). */
static const char *errno_text(int e) {
    static char buf[128];
    snprintf(buf, sizeof(buf), "%s", strerror(e));
    buf[0] = (char)tolower((unsigned char)buf[0]);
    return buf;
}

/* Encrypted keys would make OpenSSL prompt on the terminal of a daemon:
 * refuse them instead (the message says so). */
static int no_password_cb(char *buf, int size, int rwflag, void *u) {
    return -1;
}

/* ------------------------------------------------------------------ */
/* loading certificates and keys                                       */

static FILE *open_file(tg_conf_errors_t *errs, const char *ypath, const char *file, int *nerr) {
    FILE *f = fopen(file, "r");
    if (f == NULL) {
        tg_conf_errors_add(errs, "%s: cannot load \"%s\": %s", ypath, file, errno_text(errno));
        (*nerr)++;
    }
    return f;
}

static void add_name(tls_cert_t *c, const char *p, size_t len) {
    if (len == 0 || memchr(p, '\0', len)) return;   /* an embedded NUL is an attack */
    char *n = tg_xmalloc(len + 1);
    for (size_t i = 0; i < len; i++) n[i] = (char)tolower((unsigned char)p[i]);
    n[len] = '\0';
    c->names = tg_xrealloc(c->names, sizeof(char *) * (size_t)(c->nnames + 1));
    c->names[c->nnames++] = n;
}

/* The names SNI is matched against: DNS subjectAltNames, else the CN
 * (what browsers accept, minus the CN fallback they dropped; kept here for
 * old self-signed certificates). */
static void cert_names(tls_cert_t *c) {
    GENERAL_NAMES *sans = X509_get_ext_d2i(c->x509, NID_subject_alt_name, NULL, NULL);
    if (sans) {
        for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
            if (g->type != GEN_DNS) continue;
            add_name(c, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                     (size_t)ASN1_STRING_length(g->d.dNSName));
        }
        GENERAL_NAMES_free(sans);
    }
    if (c->nnames) return;
    X509_NAME *subj = X509_get_subject_name(c->x509);
    int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    if (idx < 0) return;
    unsigned char *utf8 = NULL;
    int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)));
    if (len > 0) add_name(c, (const char *)utf8, (size_t)len);
    OPENSSL_free(utf8);
}

static void cert_free(tls_cert_t *c) {
    X509_free(c->x509);
    sk_X509_pop_free(c->chain, X509_free);
    EVP_PKEY_free(c->pkey);
    for (int i = 0; i < c->nnames; i++) free(c->names[i]);
    free(c->names);
    memset(c, 0, sizeof(*c));
}

/* Loads a PEM certificate (leaf, then any intermediates) and its key; ypath
 * is the YAML path of the entry ("tls.certificates[1]"), cert_key / key_key
 * the names of its two keys. Returns the number of errors reported. */
static int load_cert(tg_conf_errors_t *errs, const char *ypath, const char *cert_key,
                     const char *key_key, const char *certfile, const char *keyfile,
                     tls_cert_t *out) {
    int nerr = 0;
    char cpath[512], kpath[512];
    snprintf(cpath, sizeof(cpath), "%s.%s", ypath, cert_key);
    snprintf(kpath, sizeof(kpath), "%s.%s", ypath, key_key);
    memset(out, 0, sizeof(*out));
    ERR_clear_error();

    FILE *f = open_file(errs, cpath, certfile, &nerr);
    if (f) {
        out->x509 = PEM_read_X509(f, NULL, no_password_cb, NULL);
        if (out->x509 == NULL) {
            tg_conf_errors_add(errs, "%s: cannot load \"%s\": not a PEM certificate (%s)",
                               cpath, certfile, ssl_reason());
            nerr++;
        } else {
            out->chain = sk_X509_new_null();
            X509 *x;
            while ((x = PEM_read_X509(f, NULL, no_password_cb, NULL)) != NULL) sk_X509_push(out->chain, x);
            /* The loop ends at the end of the file ("no start line"); any
             * other reason is a damaged intermediate. */
            unsigned long e = ERR_peek_last_error();
            if (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
                tg_conf_errors_add(errs, "%s: cannot load the chain in \"%s\": %s", cpath, certfile, ssl_reason());
                nerr++;
            }
            ERR_clear_error();
        }
        fclose(f);
    }
    f = open_file(errs, kpath, keyfile, &nerr);
    if (f) {
        out->pkey = PEM_read_PrivateKey(f, NULL, no_password_cb, NULL);
        if (out->pkey == NULL) {
            unsigned long e = ERR_peek_last_error();
            int encrypted = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ;
            if (encrypted)
                tg_conf_errors_add(errs, "%s: cannot load \"%s\": the key is encrypted (passphrases are not supported)",
                                   kpath, keyfile);
            else
                tg_conf_errors_add(errs, "%s: cannot load \"%s\": not a PEM private key (%s)", kpath, keyfile,
                                   ssl_reason());
            ERR_clear_error();
            nerr++;
        }
        fclose(f);
    }
    if (out->x509 && out->pkey && X509_check_private_key(out->x509, out->pkey) != 1) {
        ERR_clear_error();
        tg_conf_errors_add(errs, "%s: key \"%s\" does not match certificate \"%s\"", kpath, keyfile, certfile);
        nerr++;
    }
    if (nerr) {
        cert_free(out);
        return nerr;
    }
    cert_names(out);
    return 0;
}

/* Checks that a CA file exists and holds certificates; the path for
 * messages is ypath. */
static int check_ca_file(tg_conf_errors_t *errs, const char *ypath, const char *file) {
    int nerr = 0;
    FILE *f = open_file(errs, ypath, file, &nerr);
    if (f == NULL) return nerr;
    fclose(f);
    X509_STORE *st = X509_STORE_new();
    ERR_clear_error();
    if (X509_STORE_load_file(st, file) != 1) {
        tg_conf_errors_add(errs, "%s: cannot load \"%s\": %s", ypath, file, ssl_reason());
        nerr++;
    }
    X509_STORE_free(st);
    return nerr;
}

/* ------------------------------------------------------------------ */
/* server contexts                                                     */

/* Index of the certificate for an SNI name: exact, then wildcard, then 0. */
static int pick_cert(const tg_tls_conf_t *rt, const char *name) {
    for (int i = 0; i < rt->ncerts; i++)
        for (int k = 0; k < rt->certs[i].nnames; k++)
            if (strcasecmp(rt->certs[i].names[k], name) == 0) return i;
    const char *dot = strchr(name, '.');
    if (dot == NULL || dot == name) return 0;
    for (int i = 0; i < rt->ncerts; i++)
        for (int k = 0; k < rt->certs[i].nnames; k++) {
            const char *n = rt->certs[i].names[k];
            if (n[0] == '*' && n[1] == '.' && strcasecmp(n + 1, dot) == 0) return i;
        }
    return 0;
}

static int cert_cb(SSL *ssl, void *arg) {
    const tg_tls_conf_t *rt = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    int i = name ? pick_cert(rt, name) : 0;
    if (i == 0) return 1;   /* the context's own certificate */
    const tls_cert_t *c = &rt->certs[i];
    return SSL_use_cert_and_key(ssl, c->x509, c->pkey, c->chain, 1) == 1 ? 1 : 0;
}

/* HTTP/1.1 when the client offers it; otherwise no ALPN at all rather than
 * a fatal alert (a client offering only "http/1.0" still gets served). */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg) {
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof(alpn_http11) - 1, in, inlen)
        == OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static void set_protocols(SSL_CTX *ctx, int protocols) {
    SSL_CTX_set_min_proto_version(ctx, (protocols & TG_TLS_V12) ? TLS1_2_VERSION : TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, (protocols & TG_TLS_V13) ? TLS1_3_VERSION : TLS1_2_VERSION);
}

/* A server context; ca / verify are the client certificate settings,
 * ca_path the YAML path they came from. report: also report problems of
 * the shared settings (ciphers), done once. */
static SSL_CTX *server_ctx(tg_conf_t *conf, tg_tls_conf_t *rt, const char *ca, int verify,
                           const char *ca_path, int report, tg_conf_errors_t *errs, int *nerr) {
    const tg_conf_tls_t *t = &conf->tls;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tg_conf_errors_add(errs, "tls: cannot create a TLS context: %s", ssl_reason());
        (*nerr)++;
        return NULL;
    }
    set_protocols(ctx, t->protocols);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION
                        | SSL_OP_IGNORE_UNEXPECTED_EOF | (t->session_tickets ? 0 : SSL_OP_NO_TICKET));
    /* Partial writes + a movable retry buffer let the write queue hand
     * SSL_write whatever it holds (see tg_tls_writev); idle connections
     * give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                     | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, no_password_cb);
    const char *ciphers = t->ciphers ? t->ciphers : TG_TLS_DEFAULT_CIPHERS;
    if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
        if (report) {
            tg_conf_errors_add(errs, "tls.ciphers: no usable cipher in \"%s\" (%s)", ciphers, ssl_reason());
            (*nerr)++;
        }
        ERR_clear_error();
    }
    if (t->ciphersuites && SSL_CTX_set_ciphersuites(ctx, t->ciphersuites) != 1) {
        if (report) {
            tg_conf_errors_add(errs, "tls.ciphersuites: no usable TLS 1.3 suite in \"%s\" (%s)",
                               t->ciphersuites, ssl_reason());
            (*nerr)++;
        }
        ERR_clear_error();
    }
    /* Resumption: the id context is required once client certificates are
     * verified, and harmless otherwise. */
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"tollgate", 8);
    SSL_CTX_set_timeout(ctx, (long)(t->session_timeout_ms / 1000));
    if (t->session_cache > 0) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(ctx, t->session_cache);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);

    if (rt->ncerts > 0) {
        const tls_cert_t *c = &rt->certs[0];
        if (SSL_CTX_use_cert_and_key(ctx, c->x509, c->pkey, c->chain, 1) != 1) {
            tg_conf_errors_add(errs, "tls.certificates[0]: cannot use it: %s", ssl_reason());
            (*nerr)++;
        }
        SSL_CTX_set_cert_cb(ctx, cert_cb, rt);
    }
    if (ca && verify != TG_TLS_VERIFY_NONE) {
        int n = check_ca_file(errs, ca_path, ca);
        if (n == 0) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
            if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 || names == NULL) {
                tg_conf_errors_add(errs, "%s: cannot load \"%s\": %s", ca_path, ca, ssl_reason());
                sk_X509_NAME_pop_free(names, X509_NAME_free);
                n++;
            } else {
                SSL_CTX_set_client_CA_list(ctx, names);
            }
        }
        *nerr += n;
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER
                           | (verify == TG_TLS_VERIFY_REQUIRED ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
        SSL_CTX_set_verify_depth(ctx, TG_TLS_VERIFY_DEPTH);
    }
    return ctx;
}

/* ------------------------------------------------------------------ */
/* client contexts                                                     */

/* The server issued a session (TLS 1.3 sends it after the handshake):
 * keep it in the target's slot for the next connection. */
static int client_session_cb(SSL *ssl, SSL_SESSION *sess) {
    void **slot = SSL_get_app_data(ssl);
    if (slot == NULL) return 0;
    if (*slot) SSL_SESSION_free(*slot);
    *slot = sess;
    return 1;   /* we own the reference now */
}

/* What every client context shares: TLS 1.2+, ALPN http/1.1, sessions
 * kept by the caller (client_session_cb). */
static SSL_CTX *client_ctx_base(void) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) return NULL;
    set_protocols(ctx, TG_TLS_V12 | TG_TLS_V13);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                     | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, no_password_cb);
    SSL_CTX_set_cipher_list(ctx, TG_TLS_DEFAULT_CIPHERS);
    SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11) - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, client_session_cb);
    return ctx;
}

SSL_CTX *tg_tls_client_ctx_new(const char *ca_file, char *err, size_t errlen) {
    SSL_CTX *ctx = client_ctx_base();
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create a TLS context: %s", ssl_reason());
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_verify_depth(ctx, TG_TLS_VERIFY_DEPTH);
    ERR_clear_error();
    if (ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1
                : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        if (ca_file) {
            snprintf(err, errlen, "cannot load \"%s\": %s", ca_file, ssl_reason());
            SSL_CTX_free(ctx);
            return NULL;
        }
        ERR_clear_error();   /* no system bundle: verification will say so */
    }
    return ctx;
}

void tg_tls_ctx_free(SSL_CTX *ctx) {
    SSL_CTX_free(ctx);
}

static SSL_CTX *client_ctx(tg_conf_upstream_t *up, tg_conf_errors_t *errs, int *nerr) {
    const tg_conf_upstream_tls_t *t = &up->tls;
    char ypath[512];
    SSL_CTX *ctx = client_ctx_base();
    if (ctx == NULL) {
        tg_conf_errors_add(errs, "upstreams.%s.tls: cannot create a TLS context: %s", up->name, ssl_reason());
        (*nerr)++;
        return NULL;
    }
    if (t->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_verify_depth(ctx, TG_TLS_VERIFY_DEPTH);
        if (t->ca_file) {
            snprintf(ypath, sizeof(ypath), "upstreams.%s.tls.ca_file", up->name);
            int n = check_ca_file(errs, ypath, t->ca_file);
            if (n == 0 && SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL) != 1) {
                tg_conf_errors_add(errs, "%s: cannot load \"%s\": %s", ypath, t->ca_file, ssl_reason());
                n++;
            }
            *nerr += n;
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            /* No system bundle: every handshake will fail verification and
             * say so; not a config error. */
            ERR_clear_error();
        }
    }
    if (t->client_cert && t->client_key) {
        tls_cert_t c;
        snprintf(ypath, sizeof(ypath), "upstreams.%s.tls", up->name);
        int n = load_cert(errs, ypath, "client_cert", "client_key", t->client_cert, t->client_key, &c);
        if (n == 0) {
            if (SSL_CTX_use_cert_and_key(ctx, c.x509, c.pkey, c.chain, 1) != 1) {
                tg_conf_errors_add(errs, "%s.client_cert: cannot use it: %s", ypath, ssl_reason());
                n++;
            }
            cert_free(&c);
        }
        *nerr += n;
    }
    return ctx;
}

/* ------------------------------------------------------------------ */
/* building and freeing                                                */

int tg_tls_conf_build(tg_conf_t *conf, tg_conf_errors_t *errs) {
    int nerr = 0, incomplete = 0, need = conf->tls.present;
    for (int i = 0; i < conf->nlistens; i++) if (conf->listens[i].tls) need = 1;
    for (int i = 0; i < conf->nupstreams; i++) if (conf->upstreams[i].has_tls_targets) need = 1;
    if (!need) return 0;

    tg_tls_conf_t *rt = tg_xcalloc(1, sizeof(*rt));
    conf->tls_rt = rt;
    const tg_conf_tls_t *t = &conf->tls;
    if (t->ncerts) {
        rt->certs = tg_xcalloc((size_t)t->ncerts, sizeof(*rt->certs));
        for (int i = 0; i < t->ncerts; i++) {
            if (t->certs[i].cert == NULL || t->certs[i].key == NULL) {
                incomplete = 1;   /* already reported by the checker */
                continue;
            }
            char ypath[64];
            snprintf(ypath, sizeof(ypath), "tls.certificates[%d]", i);
            int n = load_cert(errs, ypath, "cert", "key", t->certs[i].cert, t->certs[i].key, &rt->certs[i]);
            nerr += n;
            if (n == 0 && rt->certs[i].nnames == 0)
                tg_log_warn("tls.certificates[%d]: \"%s\" names no host (no DNS subjectAltName or CN): "
                            "SNI never selects it", i, t->certs[i].cert);
        }
        rt->ncerts = t->ncerts;
    }
    /* The shared server context: checked whenever certificates are given,
     * so that -t validates a tls section even before a listener uses it. */
    if (rt->ncerts && nerr == 0 && !incomplete) {
        int verify = t->verify_client >= 0 ? t->verify_client : TG_TLS_VERIFY_REQUIRED;
        rt->server_default = server_ctx(conf, rt, t->client_ca, verify, "tls.client_ca", 1, errs, &nerr);
    }
    for (int i = 0; i < conf->nlistens && rt->server_default; i++) {
        tg_conf_listen_t *l = &conf->listens[i];
        if (!l->tls) continue;
        if (l->client_ca == NULL && l->verify_client < 0) {
            SSL_CTX_up_ref(rt->server_default);
            l->tls_ctx = rt->server_default;
            continue;
        }
        const char *ca = l->client_ca ? l->client_ca : t->client_ca;
        int verify = l->verify_client >= 0 ? l->verify_client
                   : t->verify_client >= 0 ? t->verify_client : TG_TLS_VERIFY_REQUIRED;
        char ypath[256];
        snprintf(ypath, sizeof(ypath), "%s.client_ca", l->yaml_path);
        l->tls_ctx = server_ctx(conf, rt, ca, verify, l->client_ca ? ypath : "tls.client_ca", 0, errs, &nerr);
    }
    for (int i = 0; i < conf->nupstreams; i++) {
        tg_conf_upstream_t *up = &conf->upstreams[i];
        if (up->has_tls_targets) up->tls_ctx = client_ctx(up, errs, &nerr);
    }
    return nerr;
}

void tg_tls_conf_free(tg_conf_t *conf) {
    tg_tls_conf_t *rt = conf->tls_rt;
    for (int i = 0; i < conf->nlistens; i++) {
        SSL_CTX_free(conf->listens[i].tls_ctx);
        conf->listens[i].tls_ctx = NULL;
    }
    for (int i = 0; i < conf->nupstreams; i++) {
        SSL_CTX_free(conf->upstreams[i].tls_ctx);
        conf->upstreams[i].tls_ctx = NULL;
    }
    if (rt == NULL) return;
    SSL_CTX_free(rt->server_default);
    for (int i = 0; i < rt->ncerts; i++) cert_free(&rt->certs[i]);
    free(rt->certs);
    free(rt);
    conf->tls_rt = NULL;
}

/* ------------------------------------------------------------------ */
/* connections                                                         */

/* A new SSL object on fd, or NULL (out of memory). */
static SSL *ssl_on_fd(SSL_CTX *ctx, int fd) {
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL) return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    return ssl;
}

SSL *tg_tls_server_new(SSL_CTX *ctx, int fd) {
    SSL *ssl = ssl_on_fd(ctx, fd);
    if (ssl == NULL) return NULL;
    SSL_set_accept_state(ssl);
    return ssl;
}

SSL *tg_tls_client_new(SSL_CTX *ctx, int fd, const char *name, int name_is_ip, int verify,
                       void **session_slot) {
    SSL *ssl = ssl_on_fd(ctx, fd);
    if (ssl == NULL) return NULL;
    SSL_set_connect_state(ssl);
    if (!name_is_ip) SSL_set_tlsext_host_name(ssl, name);
    if (!verify) SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    if (SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE) {
        if (name_is_ip) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
        } else {
            SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            SSL_set1_host(ssl, name);
        }
    }
    if (session_slot) {
        SSL_set_app_data(ssl, session_slot);
        if (*session_slot) SSL_set_session(ssl, *session_slot);
    }
    return ssl;
}

void tg_tls_session_free(void *session) {
    SSL_SESSION_free(session);
}

int tg_tls_session_reused(const SSL *ssl) {
    return SSL_session_reused(ssl);
}

/* A fatal error: no close_notify may follow it. */
static void failed(SSL *ssl) {
    SSL_set_quiet_shutdown(ssl, 1);
    ERR_clear_error();
}

int tg_tls_handshake(SSL *ssl, int *events, char *err, size_t errlen) {
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(ssl);
    if (rc == 1) return TG_OK;
    int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ) { *events = EV_READ; return TG_AGAIN; }
    if (e == SSL_ERROR_WANT_WRITE) { *events = EV_WRITE; return TG_AGAIN; }
    unsigned long code = ERR_peek_error();
    int sys = errno;
    if (ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_HTTP_REQUEST) {
        snprintf(err, errlen, "plain HTTP request");
        failed(ssl);
        return TG_DECLINED;
    }
    if (e == SSL_ERROR_SYSCALL && code == 0) {
        failed(ssl);
        if (sys == 0 || sys == ECONNRESET) return TG_DONE;   /* the peer just went away */
        snprintf(err, errlen, "%s", errno_text(sys));
        return TG_ERROR;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        failed(ssl);
        return TG_DONE;
    }
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) {
        snprintf(err, errlen, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    } else {
        const char *r = code ? ERR_reason_error_string(code) : NULL;
        snprintf(err, errlen, "%s", r ? r : "protocol error");
    }
    failed(ssl);
    return TG_ERROR;
}

ssize_t tg_tls_read(SSL *ssl, char *buf, size_t len) {
    if (len > INT32_MAX) len = INT32_MAX;
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(ssl, buf, (int)len);
    if (n > 0) return n;
    switch (SSL_get_error(ssl, n)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return TG_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        /* close_notify, or a plain close (SSL_OP_IGNORE_UNEXPECTED_EOF):
         * a close-delimited body ends there, as over plain TCP. */
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && errno == 0) {
            failed(ssl);
            return 0;
        }
        /* fall through */
    default:
        failed(ssl);
        return TG_ERROR;
    }
}

/* Moves (i, off) forward by n bytes of iov. */
static void iov_advance(const struct iovec *iov, int iovcnt, int *i, size_t *off, size_t n) {
    while (*i < iovcnt && n > 0) {
        size_t left = iov[*i].iov_len - *off;
        if (n < left) {
            *off += n;
            return;
        }
        n -= left;
        (*i)++;
        *off = 0;
    }
    while (*i < iovcnt && iov[*i].iov_len == *off) { (*i)++; *off = 0; }
}

int tg_tls_write(SSL *ssl, const char *p, size_t n) {
    if (n > INT32_MAX) n = INT32_MAX;
    ERR_clear_error();
    int w = SSL_write(ssl, p, (int)n);
    if (w > 0) return w;
    int e = SSL_get_error(ssl, w);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return TG_AGAIN;
    failed(ssl);
    return TG_ERROR;
}

/*
 * Small pieces (a chunk header, CRLF) are gathered into one record; a piece
 * of a record or more goes to SSL_write as it is. When SSL_write would
 * block, it has kept (encrypted) a prefix of what it was given and must be
 * called again with the same bytes: everything from that position on is
 * queued, so the queue starts with exactly those bytes, and the partial +
 * moving-buffer modes accept the queue's longer, relocated copy.
 */
int tg_tls_writev(SSL *ssl, tg_wqueue_t *q, const struct iovec *iov, int iovcnt) {
    if (!tg_wqueue_empty(q)) {
        for (int i = 0; i < iovcnt; i++) tg_wqueue_append(q, iov[i].iov_base, iov[i].iov_len);
        return tg_tls_flush(ssl, q);
    }
    char gather[TG_TLS_RECORD];
    int i = 0;
    size_t off = 0;
    iov_advance(iov, iovcnt, &i, &off, 0);
    while (i < iovcnt) {
        const char *p;
        size_t n, left = iov[i].iov_len - off;
        if (left >= TG_TLS_RECORD || i == iovcnt - 1) {
            p = (const char *)iov[i].iov_base + off;
            n = left;
        } else {
            int j = i;
            size_t o = off;
            n = 0;
            while (j < iovcnt && n < sizeof(gather)) {
                size_t take = tg_min(iov[j].iov_len - o, sizeof(gather) - n);
                memcpy(gather + n, (const char *)iov[j].iov_base + o, take);
                n += take;
                o += take;
                if (o == iov[j].iov_len) { j++; o = 0; }
            }
            p = gather;
        }
        int w = tg_tls_write(ssl, p, n);
        if (w == TG_ERROR) return TG_ERROR;
        if (w == TG_AGAIN) break;
        iov_advance(iov, iovcnt, &i, &off, (size_t)w);
    }
    if (i >= iovcnt) return TG_OK;
    tg_wqueue_append(q, (const char *)iov[i].iov_base + off, iov[i].iov_len - off);
    for (i++; i < iovcnt; i++) tg_wqueue_append(q, iov[i].iov_base, iov[i].iov_len);
    return TG_AGAIN;
}

int tg_tls_flush(SSL *ssl, tg_wqueue_t *q) {
    while (q->off < q->len) {
        int w = tg_tls_write(ssl, q->data + q->off, q->len - q->off);
        if (w == TG_ERROR) return TG_ERROR;
        if (w == TG_AGAIN) return TG_AGAIN;
        q->off += (size_t)w;
    }
    tg_wqueue_reset(q);
    return TG_OK;
}

int tg_tls_pending(const SSL *ssl) {
    return SSL_pending(ssl) > 0;
}

int tg_tls_peek(SSL *ssl) {
    if (SSL_pending(ssl) > 0) return 1;
    char c;
    ERR_clear_error();
    errno = 0;
    int n = SSL_peek(ssl, &c, 1);
    if (n > 0) return 1;
    int e = SSL_get_error(ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return TG_AGAIN;
    if (e != SSL_ERROR_ZERO_RETURN) failed(ssl);
    ERR_clear_error();
    return 0;
}

void tg_tls_shutdown(SSL *ssl) {
    if (!SSL_is_init_finished(ssl) || SSL_get_quiet_shutdown(ssl)
        || (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN))
        return;
    ERR_clear_error();
    SSL_shutdown(ssl);   /* sends close_notify; we never wait for the peer's */
    ERR_clear_error();
}

void tg_tls_free(SSL *ssl) {
    if (ssl == NULL) return;
    tg_tls_shutdown(ssl);
    SSL_free(ssl);
}

/* ------------------------------------------------------------------ */
/* client certificates                                                 */

static size_t name_text(X509_NAME *name, char *out, size_t cap) {
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL) return 0;
    X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253);
    int n = BIO_read(b, out, (int)cap - 1);
    BIO_free(b);
    if (n < 0) n = 0;
    out[n] = '\0';
    return (size_t)n;
}

tg_tls_peer_t *tg_tls_peer_cert(SSL *ssl) {
    X509 *x = SSL_get0_peer_certificate(ssl);
    if (x == NULL || SSL_get_verify_result(ssl) != X509_V_OK) return NULL;
    char subject[1024], issuer[1024], serial[128] = "", fp[2 * EVP_MAX_MD_SIZE + 1] = "";
    size_t ls = name_text(X509_get_subject_name(x), subject, sizeof(subject));
    size_t li = name_text(X509_get_issuer_name(x), issuer, sizeof(issuer));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    if (bn) {
        char *hex = BN_bn2hex(bn);
        if (hex) snprintf(serial, sizeof(serial), "%s", hex);
        OPENSSL_free(hex);
        BN_free(bn);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (X509_digest(x, EVP_sha256(), md, &mdlen) == 1)
        for (unsigned k = 0; k < mdlen; k++) snprintf(fp + 2 * k, 3, "%02x", md[k]);
    ERR_clear_error();
    size_t lr = strlen(serial), lf = strlen(fp);
    tg_tls_peer_t *p = tg_xmalloc(sizeof(*p) + ls + li + lr + lf + 4);
    char *s = (char *)(p + 1);
    p->subject = memcpy(s, subject, ls + 1); s += ls + 1;
    p->issuer = memcpy(s, issuer, li + 1); s += li + 1;
    p->serial = memcpy(s, serial, lr + 1); s += lr + 1;
    p->fingerprint_sha256 = memcpy(s, fp, lf + 1);
    return p;
}
