/*
 * tls.c - the OpenSSL side of idemproxy: contexts built from a configuration,
 * TLS bufferevents for both directions, session-ticket keys, and the reason
 * a handshake failed in words an operator can act on.
 *
 *   main: config ──tls_new()──> struct tls { server SSL_CTX, client SSL_CTX }
 *         (every file read and checked here, errors as FILE:LINE)
 *           │ tls_ref() per worker, swapped at reload
 *           v
 *   worker: accept ──tls_accept_bufferevent()──> SSL (server ctx) in a bufferevent
 *           pool   ──tls_upstream_bufferevent()─> SSL (client ctx) + SNI + name check
 *
 * SSL_CTX is safe to share between threads for SSL_new(); each SSL object
 * holds a reference to its context, so a connection outlives the struct tls
 * it was made from. Session tickets of every worker and every context are
 * sealed with one process-wide key pair that rotates (ticket_key_cb), so a
 * client resumes on whichever worker accepts it, and across a reload.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/util.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* A ticket key seals new tickets for this long, then opens old ones for as
 * long again: a ticket is never accepted after twice this. */
#define TICKET_KEY_SECONDS 3600

/* What a listener accepts (HTTP/1.0 clients are served too), and what an
 * upstream connection offers. */
static const unsigned char alpn_server[] = "\x08http/1.1\x08http/1.0";
static const unsigned char alpn_http11[] = "\x08http/1.1";

#define TLS_OPTIONS (SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION)

/*
 * A client that closes without close_notify is, for the listener, a plain
 * EOF: request framing decides whether a message was whole, as over TCP.
 * An upstream is held to close_notify (OpenSSL 3's default): a response
 * body that ends with the connection is whole only with it (RFC 9112 §9.8),
 * so a cut one is an error, never a short body stored and replayed.
 */
#define TLS_SERVER_OPTIONS (TLS_OPTIONS | SSL_OP_IGNORE_UNEXPECTED_EOF)

struct tls {
    int refcount;
    SSL_CTX *server; /* NULL without a tls listener */
    SSL_CTX *client; /* NULL without an https upstream */
    SSL_CTX *redis;  /* NULL without redis_tls on */
    char *redis_server_name;
    bool verify;       /* upstream_tls_verify */
    char *server_name; /* upstream_tls_server_name, NULL: each upstream's host */
};

/* ---- errors ------------------------------------------------------------ */

struct reporter {
    const struct config *cfg;
    config_error_fn on_error;
    void *arg;
    int nerrors;
};

static void report(struct reporter *r, const char *directive, const char *fmt, ...)
    PRINTF_LIKE(3, 4);

/* "FILE:LINE: directive: message", the form config.c uses. */
static void report(struct reporter *r, const char *directive, const char *fmt, ...)
{
    char body[768];
    char out[1024 + 768];
    int line = config_directive_line(r->cfg, directive);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(out, sizeof(out), "%.1000s:%d: %s: %s", r->cfg->file, line, directive, body);
    else
        snprintf(out, sizeof(out), "%.1000s: %s: %s", r->cfg->file, directive, body);
    r->nerrors++;
    if (r->on_error != NULL)
        r->on_error(r->arg, out);
}

/* The reason of the oldest error queued on this thread (the cause; later
 * ones are consequences), and the queue emptied. */
static const char *openssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (reason != NULL)
        snprintf(buf, len, "%s", reason);
    else if (e != 0)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "unknown error");
    ERR_clear_error();
    return buf;
}

/* ---- files ------------------------------------------------------------- */

static bool file_stat(struct reporter *r, const char *directive, const char *path, struct stat *st)
{
    if (stat(path, st) != 0) {
        report(r, directive, "cannot read %s: %s", path, strerror(errno));
        return false;
    }
    return true;
}

static bool readable(struct reporter *r, const char *directive, const char *path)
{
    struct stat st;
    return file_stat(r, directive, path, &st);
}

/* A private key that others can read is a key that others may have. */
static bool private_file(struct reporter *r, const char *directive, const char *path)
{
    struct stat st;
    if (!file_stat(r, directive, path, &st))
        return false;
    if (st.st_mode & (S_IRGRP | S_IROTH)) {
        report(r, directive, "%s is readable by group or others (mode %04o); chmod 600 it", path,
               (unsigned)(st.st_mode & 07777));
        return false;
    }
    return true;
}

/* Encrypted keys would make OpenSSL ask for a passphrase on the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)arg;
    return 0;
}

/* Certificate chain and its key, checked to belong together. */
static void load_pair(struct reporter *r, SSL_CTX *ctx, const char *cert_directive,
                      const char *cert, const char *key_directive, const char *key)
{
    char why[256];
    bool cert_ok = readable(r, cert_directive, cert);
    bool key_ok = private_file(r, key_directive, key);

    if (cert_ok && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        report(r, cert_directive, "cannot load %s: %s", cert, openssl_reason(why, sizeof(why)));
        cert_ok = false;
    }
    if (key_ok && SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        /* OpenSSL checks the key against the certificate as it loads it. */
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
            report(r, key_directive, "%s is not the key of %s", key, cert);
        else
            report(r, key_directive,
                   "cannot load %s: %s (a PEM private key is needed; encrypted keys are not "
                   "supported)",
                   key, openssl_reason(why, sizeof(why)));
        ERR_clear_error();
        key_ok = false;
    }
    if (cert_ok && key_ok && SSL_CTX_check_private_key(ctx) != 1)
        report(r, key_directive, "%s is not the key of %s: %s", key, cert,
               openssl_reason(why, sizeof(why)));
}

/* ---- session tickets --------------------------------------------------- */

struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    time_t born; /* 0: no key */
};

static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ticket_key ticket_keys[2]; /* [0] seals and opens, [1] only opens */

/* Under ticket_lock. */
static void rotate_ticket_keys(time_t now)
{
    struct ticket_key *cur = &ticket_keys[0];
    if (cur->born != 0 && now - cur->born < TICKET_KEY_SECONDS)
        return;
    if (cur->born != 0 && now - cur->born < 2 * TICKET_KEY_SECONDS)
        ticket_keys[1] = *cur;
    else
        OPENSSL_cleanse(&ticket_keys[1], sizeof(ticket_keys[1]));
    if (RAND_bytes(cur->name, sizeof(cur->name)) != 1 ||
        RAND_bytes(cur->aes, sizeof(cur->aes)) != 1 ||
        RAND_bytes(cur->hmac, sizeof(cur->hmac)) != 1) {
        OPENSSL_cleanse(cur, sizeof(*cur)); /* no tickets rather than weak ones */
        return;
    }
    cur->born = now;
}

/*
 * OpenSSL's ticket callback: enc 1 seals a new ticket with the current key,
 * enc 0 finds the key a presented ticket names. Returns 1 (use), 2 (use and
 * issue a fresh ticket: it was sealed by the previous key), 0 (unknown key:
 * full handshake) or -1 (error).
 */
static int ticket_key_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                         EVP_MAC_CTX *hctx, int enc)
{
    (void)ssl;
    struct ticket_key key;
    int which = -1;

    pthread_mutex_lock(&ticket_lock);
    rotate_ticket_keys(time(NULL));
    for (int i = 0; i < (enc ? 1 : 2); i++) {
        if (ticket_keys[i].born != 0 &&
            (enc || memcmp(name, ticket_keys[i].name, sizeof(ticket_keys[i].name)) == 0)) {
            key = ticket_keys[i];
            which = i;
            break;
        }
    }
    pthread_mutex_unlock(&ticket_lock);
    if (which < 0)
        return 0;

    int rc = which == 0 ? 1 : 2;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof(key.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (enc) {
        memcpy(name, key.name, sizeof(key.name));
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1)
            rc = -1;
    }
    if (rc > 0 && (EVP_CipherInit_ex(cctx, EVP_aes_256_cbc(), NULL, key.aes, iv, enc) != 1 ||
                   EVP_MAC_CTX_set_params(hctx, params) != 1))
        rc = -1;
    OPENSSL_cleanse(&key, sizeof(key));
    return rc;
}

/* ---- contexts ---------------------------------------------------------- */

/* ALPN: HTTP/1.1 (or 1.0) or, like nginx, no handshake at all. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    unsigned char *chosen = NULL;
    if (SSL_select_next_proto(&chosen, outlen, alpn_server, sizeof(alpn_server) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *server_ctx_new(const struct config *cfg, struct reporter *r)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        report(r, "listen", "cannot create a TLS context: %s", openssl_reason(why, sizeof(why)));
        return NULL;
    }
    unsigned p = cfg->tls_protocols;
    SSL_CTX_set_min_proto_version(ctx, (p & TLS_PROTO_12) ? TLS1_2_VERSION : TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, (p & TLS_PROTO_13) ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, TLS_SERVER_OPTIONS);
    /* Idle keep-alive connections give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1)
        report(r, "tls_ciphers", "no usable cipher in \"%s\": %s", cfg->tls_ciphers,
               openssl_reason(why, sizeof(why)));
    if (SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites) != 1)
        report(r, "tls_ciphersuites", "no usable suite in \"%s\": %s", cfg->tls_ciphersuites,
               openssl_reason(why, sizeof(why)));
    load_pair(r, ctx, "tls_certificate", cfg->tls_certificate, "tls_certificate_key",
              cfg->tls_certificate_key);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    /* Resumption by tickets only: no per-process session cache to fill. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_timeout(ctx, TICKET_KEY_SECONDS);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb);
    return ctx;
}

/* A client context (for upstreams or for Redis): TLS 1.2 or later, the CA
 * file or "system", peer verification when verify, an optional client
 * certificate; problems reported under the directives named. */
static SSL_CTX *client_ctx_common(struct reporter *r, bool verify, const char *ca_directive,
                                  const char *ca, const char *cert_directive, const char *cert,
                                  const char *key_directive, const char *key)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        report(r, ca_directive, "cannot create a TLS context: %s",
               openssl_reason(why, sizeof(why)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, TLS_OPTIONS);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (verify)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (strcmp(ca, "system") == 0) {
        if (SSL_CTX_set_default_verify_paths(ctx) != 1)
            report(r, ca_directive, "cannot load the system certificate store: %s",
                   openssl_reason(why, sizeof(why)));
    } else if (readable(r, ca_directive, ca) && SSL_CTX_load_verify_file(ctx, ca) != 1) {
        report(r, ca_directive, "cannot load %s: %s", ca, openssl_reason(why, sizeof(why)));
    }
    if (cert != NULL)
        load_pair(r, ctx, cert_directive, cert, key_directive, key);
    return ctx;
}

static SSL_CTX *client_ctx_new(const struct config *cfg, struct reporter *r)
{
    SSL_CTX *ctx =
        client_ctx_common(r, cfg->upstream_tls_verify, "upstream_tls_ca", cfg->upstream_tls_ca,
                          "upstream_tls_certificate", cfg->upstream_tls_certificate,
                          "upstream_tls_certificate_key", cfg->upstream_tls_certificate_key);
    if (ctx != NULL)
        SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11) - 1);
    return ctx;
}

/* TLS to Redis and sentinels (SPEC §8): always verified. */
static SSL_CTX *redis_ctx_new(const struct config *cfg, struct reporter *r)
{
    return client_ctx_common(r, true, "redis_tls_ca", cfg->redis_tls_ca, "redis_tls_certificate",
                             cfg->redis_tls_certificate, "redis_tls_certificate_key",
                             cfg->redis_tls_certificate_key);
}

struct tls *tls_new(const struct config *cfg, config_error_fn on_error, void *arg)
{
    struct reporter r = {cfg, on_error, arg, 0};
    struct tls *tls = xcalloc(1, sizeof(*tls));

    tls->refcount = 1;
    tls->verify = cfg->upstream_tls_verify;
    if (cfg->upstream_tls_server_name != NULL)
        tls->server_name = xstrdup(cfg->upstream_tls_server_name);
    if (config_tls_listener(cfg))
        tls->server = server_ctx_new(cfg, &r);
    if (config_tls_upstream(cfg))
        tls->client = client_ctx_new(cfg, &r);
    if (cfg->redis_tls) {
        tls->redis = redis_ctx_new(cfg, &r);
        if (cfg->redis_tls_server_name != NULL)
            tls->redis_server_name = xstrdup(cfg->redis_tls_server_name);
    }
    if (r.nerrors != 0) {
        tls_unref(tls);
        return NULL;
    }
    return tls;
}

bool tls_describe_certificate(const struct tls *tls, char *buf, size_t len, int *days_left)
{
    X509 *x = tls->server != NULL ? SSL_CTX_get0_certificate(tls->server) : NULL;
    BIO *bio = x != NULL ? BIO_new(BIO_s_mem()) : NULL;
    if (bio == NULL)
        return false;
    BIO_puts(bio, "subject ");
    X509_NAME_print_ex(bio, X509_get_subject_name(x), 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
    BIGNUM *serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = serial != NULL ? BN_bn2hex(serial) : NULL;
    BIO_printf(bio, ", serial %s, valid until ", hex != NULL ? hex : "?");
    ASN1_TIME_print(bio, X509_get0_notAfter(x));
    int days = 0, secs = 0;
    ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x));
    *days_left = days;
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    snprintf(buf, len, "%.*s", (int)n, data);
    OPENSSL_free(hex);
    BN_free(serial);
    BIO_free(bio);
    return true;
}

struct tls *tls_ref(struct tls *tls)
{
    __atomic_add_fetch(&tls->refcount, 1, __ATOMIC_RELAXED);
    return tls;
}

void tls_unref(struct tls *tls)
{
    if (tls == NULL || __atomic_sub_fetch(&tls->refcount, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    SSL_CTX_free(tls->server);
    SSL_CTX_free(tls->client);
    SSL_CTX_free(tls->redis);
    free(tls->server_name);
    free(tls->redis_server_name);
    free(tls);
}

/* ---- connections ------------------------------------------------------- */

static struct bufferevent *ssl_bufferevent(struct event_base *base, int fd, SSL *ssl,
                                           enum bufferevent_ssl_state state, int options)
{
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, fd, ssl, state, options);
    if (bev == NULL) {
        SSL_free(ssl);
        return NULL;
    }
    /* See TLS_SERVER_OPTIONS: the same for libevent's own check. */
    if (state == BUFFEREVENT_SSL_ACCEPTING)
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

struct bufferevent *tls_accept_bufferevent(struct tls *tls, struct event_base *base, int fd,
                                           bool listener_tls, int options)
{
    if (!listener_tls)
        return bufferevent_socket_new(base, fd, options);
    SSL *ssl = tls->server != NULL ? SSL_new(tls->server) : NULL;
    if (ssl == NULL)
        return NULL;
    return ssl_bufferevent(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, options);
}

/* A client SSL for name (SNI unless an address; checked when verify). */
static SSL *client_ssl(SSL_CTX *ctx, const char *name, bool verify)
{
    SSL *ssl = ctx != NULL ? SSL_new(ctx) : NULL;
    if (ssl == NULL)
        return NULL;
    unsigned char addr[16];
    bool ip = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
    /* SNI carries names only (RFC 6066 §3); an address is checked as one. */
    if (!ip)
        SSL_set_tlsext_host_name(ssl, name);
    if (verify) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if ((ip ? X509_VERIFY_PARAM_set1_ip_asc(param, name)
                : X509_VERIFY_PARAM_set1_host(param, name, 0)) != 1) {
            SSL_free(ssl);
            return NULL;
        }
    }
    return ssl;
}

struct bufferevent *tls_upstream_bufferevent(struct tls *tls, struct event_base *base,
                                             const char *host, bool https)
{
    if (!https)
        return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (tls == NULL)
        return NULL;
    SSL *ssl =
        client_ssl(tls->client, tls->server_name != NULL ? tls->server_name : host, tls->verify);
    if (ssl == NULL)
        return NULL;
    return ssl_bufferevent(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
}

struct bufferevent *tls_redis_bufferevent(struct tls *tls, struct event_base *base,
                                          const char *host)
{
    SSL *ssl = client_ssl(tls->redis, tls->redis_server_name ? tls->redis_server_name : host, true);
    if (ssl == NULL)
        return NULL;
    return ssl_bufferevent(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
}

/* Alerts that end a handshake: the peer's application never saw a byte. */
static bool handshake_alert(unsigned long err)
{
    int reason = ERR_GET_REASON(err);
    if (reason < SSL_AD_REASON_OFFSET)
        return false;
    switch (reason - SSL_AD_REASON_OFFSET) {
    case SSL_AD_HANDSHAKE_FAILURE:
    case SSL_AD_BAD_CERTIFICATE:
    case SSL_AD_UNSUPPORTED_CERTIFICATE:
    case SSL_AD_CERTIFICATE_REVOKED:
    case SSL_AD_CERTIFICATE_EXPIRED:
    case SSL_AD_CERTIFICATE_UNKNOWN:
    case SSL_AD_UNKNOWN_CA:
    case SSL_AD_ACCESS_DENIED:
    case SSL_AD_PROTOCOL_VERSION:
    case SSL_AD_INSUFFICIENT_SECURITY:
    case SSL_AD_CERTIFICATE_REQUIRED:
    case SSL_AD_NO_APPLICATION_PROTOCOL: return true;
    default: return false;
    }
}

enum tls_failure tls_error_reason(struct bufferevent *bev, char *buf, size_t len)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    unsigned long first = 0;
    unsigned long e;

    /* libevent hands them back newest first, so the last real one is the
     * cause; it also records SSL_get_error()'s small code (no library),
     * which names nothing. */
    while ((e = bufferevent_get_openssl_error(bev)) != 0)
        if (ERR_GET_LIB(e) != 0)
            first = e;
    ERR_clear_error();
    if (first != 0) {
        const char *reason = ERR_reason_error_string(first);
        long verify = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
        if (ERR_GET_REASON(first) == SSL_R_CERTIFICATE_VERIFY_FAILED && verify != X509_V_OK)
            snprintf(buf, len, "certificate verify failed: %s",
                     X509_verify_cert_error_string(verify));
        else if (reason != NULL)
            snprintf(buf, len, "%s", reason);
        else
            ERR_error_string_n(first, buf, len);
        return handshake_alert(first) ? TLS_FAILURE_REFUSED : TLS_FAILURE_TLS;
    }
    int err = EVUTIL_SOCKET_ERROR();
    if (err != 0)
        snprintf(buf, len, "%s", evutil_socket_error_to_string(err));
    else
        snprintf(buf, len, "connection closed");
    return TLS_FAILURE_SOCKET;
}

bool tls_read_refusal(struct bufferevent *bev, char *buf, size_t len)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    char byte;
    if (ssl == NULL)
        return false;
    ERR_clear_error();
    int n = SSL_read(ssl, &byte, 1);
    unsigned long e = n <= 0 && SSL_get_error(ssl, n) == SSL_ERROR_SSL ? ERR_peek_error() : 0;
    bool refused = e != 0 && handshake_alert(e);
    if (refused)
        snprintf(buf, len, "%s", ERR_reason_error_string(e));
    ERR_clear_error();
    return refused;
}

bool tls_handshake_begun(struct bufferevent *bev)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    BIO *rbio = ssl != NULL ? SSL_get_rbio(ssl) : NULL;
    return rbio == NULL || BIO_number_read(rbio) > 0;
}
