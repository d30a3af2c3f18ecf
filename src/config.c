/*
 * config.c - the configuration file (SPEC §3): text in, struct config out.
 *
 * Owns the directive table, the block structure, the scalar and secret-file
 * setters and the post-parse resolution. The syntax of the file is
 * config_lex.c's, the syntax of single values config_value.c's, the
 * policy directives with compound values config_policy.c's, and the
 * directives that name network places (listeners, upstreams, the Redis
 * store) config_net.c's (through config_private.h). Pure except for
 * reads: config_load() reads the file, and the setters of directives that
 * name a secret's file (passwords, the admin token, record keys, webhook
 * secrets) read it, so that a bad one fails the check (-t) and the reload,
 * not a request.
 *
 *   text --config_lex_next()--> (line, argv, terminator)
 *        --run_directive()---> directives[] row --setter--> field of struct
 *                              config (global-only rows) or struct policy
 *                              (rows flagged D_POLICY: cfg->global at top
 *                              level, the open route's policy inside a block)
 *   EOF  --finish()----------> defaults for every directive not given
 *                              -> global keys from key_header
 *                              -> routes inherit what they did not set
 *                              -> cross-checks -> routes sorted, longest first
 *
 * Blocks: a statement ended by "{" opens one; only `route PREFIX {` is valid.
 *
 *      top level --route /p {--> in route --}--> top level
 *          |  ^                     |  ^
 *          {  }  (any other block,  {  }  (nested route: reported,
 *          v  |   reported, skipped) v  |   contents skipped)
 *        skipping (skip_depth > 0: statements ignored, braces counted)
 *
 * Errors: every one, the lexer's included (through lex_error()), is reported
 * through on_error as "FILE:LINE: message" and parsing goes on, so one run
 * shows them all; a config is returned only when none was reported. Setters
 * return NULL or a short phrase (a literal, or one formatted into the
 * parser's msg buffer by config_phrase() or by config_policy.c); run_directive()
 * adds "FILE:LINE: NAME: ".
 *
 * Ownership: struct config owns every string it points to, and each policy
 * (global and every route) owns its own key, scope and fingerprint-header
 * strings: inheritance deep-copies them (config_policy_inherit_*()).
 * config_unref() frees all of it once.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "config_lex.h"
#include "config_policy.h"
#include "config_private.h"
#include "config_value.h"
#include "problem.h"
#include "webhook.h"

#define PASSWORD_MAX 1024
#define ADMIN_TOKEN_MIN 16
#define WORKERS_MAX 1024
#define DEFAULT_ARGS_MAX 8

/* Returns NULL on success or a phrase describing what is wrong. */
typedef const char *(*setter_fn)(struct setting *s);
/* Copies a policy field that owns memory or spans several members. */
typedef void (*inherit_fn)(struct policy *dst, const struct policy *src);

enum {
    D_GLOBAL = 1u << 0, /* allowed at top level */
    D_ROUTE = 1u << 1,  /* allowed inside a route block */
    D_BOTH = D_GLOBAL | D_ROUTE,
    D_POLICY = 1u << 2,   /* offset is into struct policy, else struct config */
    D_MULTI = 1u << 3,    /* may be given more than once */
    D_REQUIRED = 1u << 4, /* must be given */
    D_BLOCK = 1u << 5,    /* opens a block; handled by the framework */
};

struct directive {
    const char *name;
    setter_fn set;
    size_t offset;
    size_t size; /* of the field, for inheritance by plain copy */
    unsigned flags;
    int min_args;
    int max_args;             /* -1: no limit */
    const char *def;          /* default as blank-separated arguments; NULL: none */
    const char *const *words; /* set_enum: the keyword of each enum value, NULL-ended */
    inherit_fn inherit;       /* NULL: copy `size` bytes at `offset` */
};

static const char *set_password_file(struct setting *s);
static const char *set_record_key_file(struct setting *s);
static const char *set_verify(struct setting *s);
static const char *set_duration(struct setting *s);
static const char *set_size(struct setting *s);
static const char *set_bool(struct setting *s);
static const char *set_enum(struct setting *s);
static const char *set_string(struct setting *s);
static const char *set_header_name(struct setting *s);
static const char *set_url(struct setting *s);
static const char *set_uint(struct setting *s);
static const char *set_count(struct setting *s);
static const char *set_count_or_off(struct setting *s);
static const char *set_workers(struct setting *s);
static const char *set_access_log(struct setting *s);
static const char *set_error_log(struct setting *s);
static const char *set_token_endpoint(struct setting *s);
static const char *set_tls_protocols(struct setting *s);
static const char *set_server_name(struct setting *s);
static const char *set_methods(struct setting *s);
static const char *set_keys(struct setting *s);
static const char *set_scope(struct setting *s);
static const char *set_fingerprint(struct setting *s);
static const char *set_release_on(struct setting *s);
static const char *set_on_inflight(struct setting *s);
static const char *set_error_body(struct setting *s);
static const char *set_error_content_type(struct setting *s);

/* Word lists for set_enum, in enum order. */
static const char *const on_duplicate_words[] = {"replay", "reject", NULL};
static const char *const on_store_error_words[] = {"reject", "pass", NULL};
static const char *const route_case_words[] = {"sensitive", "insensitive", NULL};
static const char *const key_namespace_words[] = {"global", "route", NULL};
static const char *const log_level_words[] = {"error", "warn", "info", "debug", NULL};

#define CFG(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)
#define POL(f) offsetof(struct policy, f), sizeof(((struct policy *)0)->f)
#define G D_GLOBAL
#define GM (D_GLOBAL | D_MULTI)
#define P (D_BOTH | D_POLICY)
#define R (D_ROUTE | D_POLICY)

/*
 * Every directive, in the order of SPEC §3. Defaults are applied after the
 * whole file is read, through the same setter, to every directive not given;
 * `key` has none: the global keys come from key_header (see finish()).
 */
static const struct directive directives[] = {
    /* name, setter, offset+size, flags, min, max, default, words, inherit */
    {"listen", set_listen, CFG(listens), GM, 1, 3, "127.0.0.1:8080", NULL, NULL},
    {"upstream", set_upstream, CFG(upstreams), GM | D_REQUIRED, 1, -1, NULL, NULL, NULL},
    {"upstream_fail_timeout", set_duration, CFG(upstream_fail_timeout_ms), G, 1, 1, "10s", NULL,
     NULL},
    {"redis", set_redis, CFG(redis_host), G, 1, 1, "127.0.0.1:6379", NULL, NULL},
    {"redis_db", set_uint, CFG(redis_db), G, 1, 1, "0", NULL, NULL},
    {"redis_user", set_string, CFG(redis_user), G, 1, 1, NULL, NULL, NULL},
    {"redis_password_file", set_password_file, CFG(redis_password_file), G, 1, 1, NULL, NULL, NULL},
    {"redis_timeout", set_duration, CFG(redis_timeout_ms), G, 1, 1, "1s", NULL, NULL},
    {"redis_sentinel", set_redis_sentinel, CFG(sentinel_master), G, 2, 1 + CONFIG_MAX_SENTINELS,
     NULL, NULL, NULL},
    {"redis_cluster", set_redis_cluster, CFG(cluster_seeds), G, 1, CONFIG_MAX_CLUSTER_SEEDS, NULL,
     NULL, NULL},
    {"sentinel_user", set_string, CFG(sentinel_user), G, 1, 1, NULL, NULL, NULL},
    {"record_encryption_key_file", set_record_key_file, CFG(record_keys), GM, 1, 1, NULL, NULL,
     NULL},
    {"sentinel_password_file", set_password_file, CFG(sentinel_password_file), G, 1, 1, NULL, NULL,
     NULL},
    {"redis_min_replicas", set_min_replicas, CFG(redis_min_replicas), G, 1, 2, "0", NULL, NULL},
    {"redis_tls", set_bool, CFG(redis_tls), G, 1, 1, "off", NULL, NULL},
    {"redis_tls_ca", set_string, CFG(redis_tls_ca), G, 1, 1, "system", NULL, NULL},
    {"redis_tls_server_name", set_server_name, CFG(redis_tls_server_name), G, 1, 1, NULL, NULL,
     NULL},
    {"redis_tls_certificate", set_string, CFG(redis_tls_certificate), G, 1, 1, NULL, NULL, NULL},
    {"redis_tls_certificate_key", set_string, CFG(redis_tls_certificate_key), G, 1, 1, NULL, NULL,
     NULL},
    {"key_prefix", set_string, CFG(key_prefix), G, 1, 1, "idem:", NULL, NULL},
    {"key_header", set_header_name, CFG(key_header), G, 1, 1, "Idempotency-Key", NULL, NULL},
    {"methods", set_methods, POL(methods), P, 1, -1, "POST PUT PATCH DELETE", NULL, NULL},
    {"key", set_keys, POL(keys), R, 1, CONFIG_MAX_KEY_SOURCES, NULL, NULL,
     config_policy_inherit_keys},
    {"require_key", set_bool, POL(require_key), P, 1, 1, "off", NULL, NULL},
    {"require_token", set_bool, POL(require_token), R, 1, 1, "off", NULL, NULL},
    {"ttl", set_duration, POL(ttl_ms), P, 1, 1, "24h", NULL, NULL},
    {"lock_ttl", set_duration, POL(lock_ttl_ms), P, 1, 1, "60s", NULL, NULL},
    /* no default: a policy's own ttl (follow_ttl) */
    {"unknown_ttl", set_duration, POL(unknown_ttl_ms), P, 1, 1, NULL, NULL, NULL},
    {"scope", set_scope, POL(scopes), P, 1, CONFIG_MAX_SCOPE_SOURCES, "header:Authorization", NULL,
     config_policy_inherit_scope},
    {"fingerprint", set_fingerprint, POL(fingerprint), P, 1, -1, "method path body", NULL,
     config_policy_inherit_fingerprint},
    {"release_on", set_release_on, POL(release_on), P, 1, -1, "500 502 503 504 408 429", NULL,
     NULL},
    {"on_duplicate", set_enum, POL(on_duplicate), P, 1, 1, "replay", on_duplicate_words, NULL},
    {"on_inflight", set_on_inflight, POL(on_inflight), P, 1, 2, "reject", NULL,
     config_policy_inherit_on_inflight},
    {"on_store_error", set_enum, CFG(on_store_error), G, 1, 1, "reject", on_store_error_words,
     NULL},
    {"max_request_body", set_size, POL(max_request_body), P, 1, 1, "1m", NULL, NULL},
    {"max_cached_body", set_size, POL(max_cached_body), P, 1, 1, "1m", NULL, NULL},
    {"bypass", set_bool, POL(bypass), R, 1, 1, "off", NULL, NULL},
    {"verify", set_verify, POL(verify), R, 2, 4, NULL, NULL, NULL},
    {"error_body", set_error_body, POL(error_body), P, 1, 1, NULL, NULL,
     config_policy_inherit_error_body},
    {"error_content_type", set_error_content_type, POL(error_content_type), P, 1, 1, NULL, NULL,
     config_policy_inherit_error_content_type},
    {"replay_header", set_header_name, CFG(replay_header), G, 1, 1, "Idempotent-Replayed", NULL,
     NULL},
    {"error_doc_url", set_url, CFG(error_doc_url), G, 1, 1, NULL, NULL, NULL},
    {"workers", set_workers, CFG(workers), G, 1, 1, "auto", NULL, NULL},
    {"max_connections", set_count, CFG(max_connections), G, 1, 1, "10000", NULL, NULL},
    {"max_keys_per_scope", set_count_or_off, CFG(max_keys_per_scope), G, 1, 1, "off", NULL, NULL},
    {"max_buffered_bodies", set_size, CFG(max_buffered_bodies), G, 1, 1, "256m", NULL, NULL},
    {"max_header_size", set_size, CFG(max_header_size), G, 1, 1, "16k", NULL, NULL},
    {"upstream_keepalive", set_uint, CFG(upstream_keepalive), G, 1, 1, "256", NULL, NULL},
    {"upstream_max_conns", set_count, CFG(upstream_max_conns), G, 1, 1, "1024", NULL, NULL},
    {"client_header_timeout", set_duration, CFG(client_header_timeout_ms), G, 1, 1, "10s", NULL,
     NULL},
    {"client_body_timeout", set_duration, CFG(client_body_timeout_ms), G, 1, 1, "30s", NULL, NULL},
    {"idle_timeout", set_duration, CFG(idle_timeout_ms), G, 1, 1, "60s", NULL, NULL},
    {"client_send_timeout", set_duration, CFG(client_send_timeout_ms), G, 1, 1, "60s", NULL, NULL},
    {"upstream_connect_timeout", set_duration, CFG(upstream_connect_timeout_ms), G, 1, 1, "3s",
     NULL, NULL},
    {"upstream_timeout", set_duration, CFG(upstream_timeout_ms), G, 1, 1, "30s", NULL, NULL},
    {"shutdown_timeout", set_duration, CFG(shutdown_timeout_ms), G, 1, 1, "30s", NULL, NULL},
    {"access_log", set_access_log, CFG(access_log), G, 1, 1, "stderr", NULL, NULL},
    {"error_log", set_error_log, CFG(error_log), G, 1, 1, "stderr", NULL, NULL},
    {"log_level", set_enum, CFG(log_level), G, 1, 1, "info", log_level_words, NULL},
    {"admin_listen", set_admin_listen, CFG(admin_listen), G, 1, 1, "off", NULL, NULL},
    {"admin_token_file", set_password_file, CFG(admin_token_file), G, 1, 1, NULL, NULL, NULL},
    {"token_endpoint", set_token_endpoint, CFG(token_endpoint), G, 1, 1, "off", NULL, NULL},
    {"token_header", set_header_name, CFG(token_header), G, 1, 1, "Idempotency-Token", NULL, NULL},
    {"token_ttl", set_duration, CFG(token_ttl_ms), G, 1, 1, "10m", NULL, NULL},
    {"upstream_host", set_bool, CFG(upstream_host), G, 1, 1, "off", NULL, NULL},
    {"trusted_proxies", set_trusted_proxies, CFG(trusted_proxies), GM, 1, -1, "none", NULL, NULL},
    {"key_namespace", set_enum, CFG(key_namespace), G, 1, 1, "global", key_namespace_words, NULL},
    {"route_case", set_enum, CFG(route_case), G, 1, 1, "sensitive", route_case_words, NULL},
    {"underscores_in_headers", set_bool, CFG(underscores_in_headers), G, 1, 1, "off", NULL, NULL},
    {"tls_certificate", set_string, CFG(tls_certificate), G, 1, 1, NULL, NULL, NULL},
    {"tls_certificate_key", set_string, CFG(tls_certificate_key), G, 1, 1, NULL, NULL, NULL},
    {"tls_protocols", set_tls_protocols, CFG(tls_protocols), G, 1, 2, "TLSv1.2 TLSv1.3", NULL,
     NULL},
    {"tls_ciphers", set_string, CFG(tls_ciphers), G, 1, 1,
     "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
     "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
     NULL, NULL},
    {"tls_ciphersuites", set_string, CFG(tls_ciphersuites), G, 1, 1,
     "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256", NULL, NULL},
    {"upstream_tls_ca", set_string, CFG(upstream_tls_ca), G, 1, 1, "system", NULL, NULL},
    {"upstream_tls_server_name", set_server_name, CFG(upstream_tls_server_name), G, 1, 1, NULL,
     NULL, NULL},
    {"upstream_tls_certificate", set_string, CFG(upstream_tls_certificate), G, 1, 1, NULL, NULL,
     NULL},
    {"upstream_tls_certificate_key", set_string, CFG(upstream_tls_certificate_key), G, 1, 1, NULL,
     NULL, NULL},
    {"upstream_tls_verify", set_bool, CFG(upstream_tls_verify), G, 1, 1, "on", NULL, NULL},
    {"route", NULL, 0, 0, G | D_BLOCK | D_MULTI, 1, 1, NULL, NULL, NULL},
};

#undef G
#undef GM
#undef P
#undef R

#define NDIRECTIVES ARRAY_LEN(directives)

struct parser {
    const char *name; /* file name for messages */
    struct config_lex *lex;
    config_error_fn on_error; /* may be NULL */
    void *arg;
    int nerrors;
    struct config *cfg;
    int global_seen[NDIRECTIVES];   /* line where each was given at top level; 0: not given */
    int (*route_seen)[NDIRECTIVES]; /* the same per route, parallel to cfg->routes */
    int routes_cap;
    int cur_route;  /* index of the open route block, -1 at top level */
    int skip_depth; /* > 0 while inside a block that was rejected */
    char msg[512];  /* config_phrase() output */
};

static void report(struct parser *ps, int line, const char *fmt, ...) PRINTF_LIKE(3, 4);

/* Formats into ps->msg; the result lives until the next config_phrase(). */
const char *config_phrase(struct parser *ps, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->msg, sizeof(ps->msg), fmt, ap);
    va_end(ap);
    return ps->msg;
}

/* Reports one error as "FILE:LINE: message", or "FILE: message" for line 0. */
static void report(struct parser *ps, int line, const char *fmt, ...)
{
    char body[768];
    char out[1024 + 768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(out, sizeof(out), "%.1000s:%d: %s", ps->name, line, body);
    else
        snprintf(out, sizeof(out), "%.1000s: %s", ps->name, body);
    ps->nerrors++;
    if (ps->on_error != NULL)
        ps->on_error(ps->arg, out);
}

static const struct directive *find_directive(const char *name)
{
    for (size_t i = 0; i < NDIRECTIVES; i++)
        if (strcmp(directives[i].name, name) == 0)
            return &directives[i];
    return NULL;
}

static int directive_index(const char *name)
{
    return (int)(find_directive(name) - directives);
}

const char *config_directive_name(int i)
{
    return i >= 0 && (size_t)i < NDIRECTIVES ? directives[i].name : NULL;
}

/* ---- setters --------------------------------------------------------- */

static const char *set_duration(struct setting *s)
{
    uint64_t ms;
    if (config_parse_duration(s->argv[0], &ms) != IDEM_OK)
        return config_phrase(s->ps, "expected a duration like 30s, got \"%s\"", s->argv[0]);
    if (ms == 0)
        return "must be greater than 0";
    *(uint64_t *)s->field = ms;
    return NULL;
}

static const char *set_size(struct setting *s)
{
    if (config_parse_size(s->argv[0], (size_t *)s->field) != IDEM_OK)
        return config_phrase(s->ps, "expected a size like 512, 64k, 1m or 1g, got \"%s\"",
                             s->argv[0]);
    return NULL;
}

static const char *set_bool(struct setting *s)
{
    if (strcmp(s->argv[0], "on") == 0)
        *(bool *)s->field = true;
    else if (strcmp(s->argv[0], "off") == 0)
        *(bool *)s->field = false;
    else
        return config_phrase(s->ps, "expected on or off, got \"%s\"", s->argv[0]);
    return NULL;
}

/* The field is an enum; s->d->words names its values in order. */
static const char *set_enum(struct setting *s)
{
    const char *const *words = s->d->words;
    size_t used = 0;
    int n = 0;

    for (n = 0; words[n] != NULL; n++) {
        if (strcmp(s->argv[0], words[n]) == 0) {
            *(int *)s->field = n;
            return NULL;
        }
    }
    used = (size_t)snprintf(s->ps->msg, sizeof(s->ps->msg), "expected ");
    for (int i = 0; i < n && used < sizeof(s->ps->msg); i++)
        used += (size_t)snprintf(s->ps->msg + used, sizeof(s->ps->msg) - used, "%s%s",
                                 i == 0 ? "" : (i == n - 1 ? " or " : ", "), words[i]);
    if (used < sizeof(s->ps->msg))
        snprintf(s->ps->msg + used, sizeof(s->ps->msg) - used, ", got \"%s\"", s->argv[0]);
    return s->ps->msg;
}

static const char *set_string(struct setting *s)
{
    char **field = s->field;
    free(*field);
    *field = xstrdup(s->argv[0]);
    return NULL;
}

static const char *set_header_name(struct setting *s)
{
    if (!config_valid_header_name(s->argv[0]))
        return config_phrase(s->ps, "not a valid header name: \"%s\"", s->argv[0]);
    return set_string(s);
}

/* error_doc_url: goes into a Link header, so no blanks, quotes or <>. */
static const char *set_url(struct setting *s)
{
    const char *url = s->argv[0];
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return config_phrase(s->ps, "expected an http:// or https:// URL, got \"%s\"", url);
    for (const char *p = url; *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || strchr("<>\"", *p) != NULL)
            return "the URL must not contain blanks, quotes or angle brackets";
    return set_string(s);
}

static const char *set_uint(struct setting *s)
{
    if (config_parse_int(s->argv[0], 0, INT32_MAX, s->field) != IDEM_OK)
        return config_phrase(s->ps, "expected a number 0 or more, got \"%s\"", s->argv[0]);
    return NULL;
}

static const char *set_count(struct setting *s)
{
    if (config_parse_int(s->argv[0], 1, INT32_MAX, s->field) != IDEM_OK)
        return config_phrase(s->ps, "expected a number 1 or more, got \"%s\"", s->argv[0]);
    return NULL;
}

/* A count, or off (0). */
static const char *set_count_or_off(struct setting *s)
{
    if (strcmp(s->argv[0], "off") == 0) {
        *(int *)s->field = 0;
        return NULL;
    }
    if (config_parse_int(s->argv[0], 1, INT32_MAX, s->field) != IDEM_OK)
        return config_phrase(s->ps, "expected a number 1 or more, or off, got \"%s\"", s->argv[0]);
    return NULL;
}

static const char *set_workers(struct setting *s)
{
    if (strcmp(s->argv[0], "auto") == 0) {
        *(int *)s->field = 0;
        return NULL;
    }
    if (config_parse_int(s->argv[0], 0, WORKERS_MAX, s->field) != IDEM_OK)
        return config_phrase(s->ps, "expected auto or a number 0..%d, got \"%s\"", WORKERS_MAX,
                             s->argv[0]);
    return NULL;
}

static const char *set_access_log(struct setting *s)
{
    if (s->argv[0][0] == '\0')
        return "expected a path, stderr or off";
    return set_string(s);
}

static const char *set_error_log(struct setting *s)
{
    if (s->argv[0][0] == '\0' || strcmp(s->argv[0], "off") == 0)
        return config_phrase(s->ps, "expected a path or stderr, got \"%s\"", s->argv[0]);
    return set_string(s);
}

static const char *set_token_endpoint(struct setting *s)
{
    char **field = s->field;
    if (strcmp(s->argv[0], "off") == 0) {
        free(*field);
        *field = NULL;
        return NULL;
    }
    if (s->argv[0][0] != '/')
        return config_phrase(s->ps, "expected a path starting with \"/\" or off, got \"%s\"",
                             s->argv[0]);
    return set_string(s);
}

/* tls_protocols: TLSv1.2 and/or TLSv1.3. */
static const char *set_tls_protocols(struct setting *s)
{
    unsigned bits = 0;
    for (int i = 0; i < s->argc; i++) {
        if (strcmp(s->argv[i], "TLSv1.2") == 0)
            bits |= TLS_PROTO_12;
        else if (strcmp(s->argv[i], "TLSv1.3") == 0)
            bits |= TLS_PROTO_13;
        else
            return config_phrase(s->ps, "expected TLSv1.2 and/or TLSv1.3, got \"%s\"", s->argv[i]);
    }
    *(unsigned *)s->field = bits;
    return NULL;
}

static const char *set_server_name(struct setting *s)
{
    if (!config_valid_host(s->argv[0], false))
        return config_phrase(s->ps, "expected a host name, got \"%s\"", s->argv[0]);
    return set_string(s);
}

static const char *set_password_file(struct setting *s)
{
    struct config *cfg = s->base;
    const char *path = s->argv[0];
    char buf[PASSWORD_MAX + 2]; /* room for a newline, and one byte to detect more */
    const char *err = NULL;
    size_t n = 0;
    int read_errno = 0;
    /* The admin token is new: it must be private from the start. Redis
     * passwords keep what deployments have (often 0640, group of the
     * service user). */
    bool admin = s->field == (void *)&cfg->admin_token_file;
    if (admin) {
        if (read_private_file(path, buf, sizeof(buf), &n, s->ps->msg, sizeof(s->ps->msg)) != NULL)
            return s->ps->msg;
    } else {
        FILE *f = fopen(path, "r");
        if (f == NULL)
            return config_phrase(s->ps, "cannot read \"%s\": %s", path, strerror(errno));
        n = fread(buf, 1, sizeof(buf), f);
        read_errno = ferror(f) ? errno : 0;
        fclose(f);
    }
    if (n < sizeof(buf) && n > 0 && buf[n - 1] == '\n')
        n--;
    if (n < sizeof(buf) && n > 0 && buf[n - 1] == '\r')
        n--;
    if (read_errno != 0)
        err = config_phrase(s->ps, "cannot read \"%s\": %s", path, strerror(read_errno));
    else if (n > PASSWORD_MAX)
        err = config_phrase(s->ps, "\"%s\" is longer than %d bytes", path, PASSWORD_MAX);
    else if (n == 0)
        err = config_phrase(s->ps, "\"%s\" is empty", path);
    else if (memchr(buf, '\0', n) != NULL)
        err = config_phrase(s->ps, "\"%s\" contains a NUL byte", path);
    else if (admin && n < ADMIN_TOKEN_MIN)
        err = config_phrase(
            s->ps, "\"%s\" holds %zu bytes: a token needs %d at least (openssl rand -hex 32)", path,
            n, ADMIN_TOKEN_MIN);
    if (err == NULL) {
        char **secret = s->field == (void *)&cfg->sentinel_password_file ? &cfg->sentinel_password
                        : s->field == (void *)&cfg->admin_token_file     ? &cfg->admin_token
                                                                         : &cfg->redis_password;
        free(*(char **)s->field);
        *(char **)s->field = xstrdup(path);
        free(*secret);
        *secret = xstrndup(buf, n);
    }
    explicit_bzero(buf, sizeof(buf));
    return err;
}

/* record_encryption_key_file PATH, repeatable (SPEC §10): the first seals,
 * every one opens. */
static const char *set_record_key_file(struct setting *s)
{
    struct seal_keys *keys = &((struct config *)s->base)->record_keys;
    struct seal_key key;
    const char *err = NULL;
    if (keys->n == SEAL_MAX_KEYS)
        return config_phrase(s->ps, "at most %d keys", SEAL_MAX_KEYS);
    if (seal_key_load(s->argv[0], &key, s->ps->msg, sizeof(s->ps->msg)) != NULL)
        return s->ps->msg;
    for (int i = 0; i < keys->n && err == NULL; i++)
        if (memcmp(keys->keys[i].id, key.id, SEAL_KEY_ID_LEN) == 0)
            err = config_phrase(s->ps, "\"%s\" holds a key given already", s->argv[0]);
    if (err == NULL)
        keys->keys[keys->n++] = key;
    OPENSSL_cleanse(&key, sizeof(key));
    return err;
}

/* verify SCHEME SECRET_FILE [tolerance DUR] (SPEC §11), on a route. */
static const char *set_verify(struct setting *s)
{
    struct webhook_verifier **field = s->field;
    enum webhook_scheme scheme;
    uint64_t tolerance_ms = WEBHOOK_DEFAULT_TOLERANCE_MS;
    if (!webhook_scheme_parse(s->argv[0], &scheme))
        return config_phrase(s->ps, "expected stripe, github, standard or shopify, got \"%s\"",
                             s->argv[0]);
    if (s->argc == 3 || (s->argc == 4 && strcmp(s->argv[2], "tolerance") != 0))
        return "expected `tolerance DURATION` after the secret file";
    if (s->argc == 4 && !webhook_scheme_has_timestamp(scheme))
        return config_phrase(s->ps, "%s signatures carry no timestamp: no tolerance to set",
                             s->argv[0]);
    if (s->argc == 4 &&
        (config_parse_duration(s->argv[3], &tolerance_ms) != IDEM_OK || tolerance_ms < 1000))
        return config_phrase(s->ps, "bad tolerance \"%s\" (a duration of 1s or more)", s->argv[3]);
    struct webhook_verifier *v = webhook_verifier_new(scheme, tolerance_ms);
    if (webhook_load_secrets(v, s->argv[1], s->ps->msg, sizeof(s->ps->msg)) != NULL) {
        webhook_verifier_free(v);
        return s->ps->msg;
    }
    webhook_verifier_free(*field);
    *field = v;
    return NULL;
}

/* error_body FILE: the API's own error format, read and checked now. */
static const char *set_error_body(struct setting *s)
{
    struct policy *p = s->base;
    const char *path = s->argv[0];
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return config_phrase(s->ps, "cannot read \"%s\": %s", path, strerror(errno));
    char *text = xmalloc(PROBLEM_TEMPLATE_MAX + 2);
    size_t n = fread(text, 1, PROBLEM_TEMPLATE_MAX + 1, f);
    int read_errno = ferror(f) ? errno : 0;
    fclose(f);
    text[n] = '\0';
    const char *err = NULL;
    char why[256];
    if (read_errno != 0)
        err = config_phrase(s->ps, "cannot read \"%s\": %s", path, strerror(read_errno));
    else if (n > PROBLEM_TEMPLATE_MAX)
        err = config_phrase(s->ps, "\"%s\" is longer than %d bytes", path, PROBLEM_TEMPLATE_MAX);
    else if (n == 0 || memchr(text, '\0', n) != NULL)
        err = config_phrase(s->ps, "\"%s\" is empty or holds a NUL byte", path);
    else if (problem_template_check(text, why, sizeof(why)) != NULL)
        err = config_phrase(s->ps, "%s: %s", path, why);
    if (err != NULL) {
        free(text);
        return err;
    }
    free(p->error_body);
    p->error_body = text;
    return NULL;
}

/* error_content_type TYPE: a media type, as it goes in Content-Type. */
static const char *set_error_content_type(struct setting *s)
{
    struct policy *p = s->base;
    const char *v = s->argv[0];
    const char *slash = strchr(v, '/');
    for (const char *c = v; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return config_phrase(s->ps, "expected a media type like application/json, got \"%s\"",
                                 v);
    if (slash == NULL || slash == v || slash[1] == '\0')
        return config_phrase(s->ps, "expected a media type like application/json, got \"%s\"", v);
    free(p->error_content_type);
    p->error_content_type = xstrdup(v);
    return NULL;
}

/*
 * The policy directives with compound values are parsed by config_policy.c
 * into the policy being set (s->base for D_POLICY rows), with ps->msg for
 * their phrases.
 */
static const char *set_methods(struct setting *s)
{
    return config_policy_set_methods(s->base, s->argc, s->argv, s->ps->msg, sizeof(s->ps->msg));
}

static const char *set_keys(struct setting *s)
{
    return config_policy_set_keys(s->base, s->argc, s->argv, s->ps->msg, sizeof(s->ps->msg));
}

static const char *set_scope(struct setting *s)
{
    return config_policy_set_scope(s->base, s->argc, s->argv, s->ps->msg, sizeof(s->ps->msg));
}

static const char *set_fingerprint(struct setting *s)
{
    return config_policy_set_fingerprint(s->base, s->argc, s->argv, s->ps->msg, sizeof(s->ps->msg));
}

static const char *set_release_on(struct setting *s)
{
    return config_policy_set_release_on(s->base, s->argc, s->argv, s->ps->msg, sizeof(s->ps->msg));
}

static const char *set_on_inflight(struct setting *s)
{
    return config_policy_set_on_inflight(s->base, s->argc, s->argv, s->ps->msg, sizeof(s->ps->msg));
}

/* ---- framework ------------------------------------------------------- */

static void open_route(struct parser *ps, const struct config_lex_stmt *st)
{
    struct config *cfg = ps->cfg;
    const char *prefix = st->argv[1];
    struct route *r;

    if (prefix[0] != '/')
        report(ps, st->line, "route: prefix must start with \"/\", got \"%s\"", prefix);
    for (int i = 0; i < cfg->nroutes; i++)
        if (strcmp(cfg->routes[i].prefix, prefix) == 0)
            report(ps, st->line, "route: duplicate prefix \"%s\" (first on line %d)", prefix,
                   cfg->routes[i].line);
    if (cfg->nroutes == ps->routes_cap) {
        ps->routes_cap = ps->routes_cap != 0 ? ps->routes_cap * 2 : 8;
        cfg->routes = xrealloc(cfg->routes, (size_t)ps->routes_cap * sizeof(*cfg->routes));
        ps->route_seen = xrealloc(ps->route_seen, (size_t)ps->routes_cap * sizeof(*ps->route_seen));
    }
    r = &cfg->routes[cfg->nroutes];
    memset(r, 0, sizeof(*r));
    memset(ps->route_seen[cfg->nroutes], 0, sizeof(ps->route_seen[0]));
    r->prefix = xstrdup(prefix);
    r->line = st->line;
    ps->cur_route = cfg->nroutes++;
}

/* A statement ended by "{". Anything but a valid route is reported and skipped. */
static void open_block(struct parser *ps, const struct config_lex_stmt *st)
{
    const char *name = st->argv[0];
    if (strcmp(name, "route") != 0) {
        if (find_directive(name) != NULL)
            report(ps, st->line, "%s: does not take a block", name);
        else
            report(ps, st->line, "unknown directive \"%s\"", name);
    } else if (ps->cur_route >= 0) {
        report(ps, st->line, "route: nested route blocks are not allowed");
    } else if (st->argc != 2) {
        report(ps, st->line, "route: expected \"route PREFIX {\"");
    } else {
        open_route(ps, st);
        return;
    }
    ps->skip_depth++;
}

static void close_block(struct parser *ps, int line)
{
    if (ps->skip_depth > 0)
        ps->skip_depth--;
    else if (ps->cur_route >= 0)
        ps->cur_route = -1;
    else
        report(ps, line, "unexpected \"}\"");
}

static void run_directive(struct parser *ps, const struct config_lex_stmt *st)
{
    const struct directive *d = find_directive(st->argv[0]);
    bool in_route = ps->cur_route >= 0;
    int nargs = st->argc - 1;
    int *seen;
    struct setting s;
    const char *err;

    if (d == NULL) {
        report(ps, st->line, "unknown directive \"%s\"", st->argv[0]);
        return;
    }
    if (d->flags & D_BLOCK) {
        report(ps, st->line, "%s: expected \"{\" after the prefix", d->name);
        return;
    }
    if (in_route && !(d->flags & D_ROUTE)) {
        report(ps, st->line, "%s: not allowed inside a route", d->name);
        return;
    }
    if (!in_route && !(d->flags & D_GLOBAL)) {
        report(ps, st->line, "%s: only allowed inside a route", d->name);
        return;
    }
    seen = in_route ? &ps->route_seen[ps->cur_route][d - directives]
                    : &ps->global_seen[d - directives];
    if (*seen != 0 && !(d->flags & D_MULTI)) {
        report(ps, st->line, "%s: duplicate directive (first on line %d)", d->name, *seen);
        return;
    }
    if (*seen == 0)
        *seen = st->line;
    if (nargs < d->min_args || (d->max_args >= 0 && nargs > d->max_args)) {
        if (d->min_args == d->max_args)
            report(ps, st->line, "%s: expected %d argument%s, got %d", d->name, d->min_args,
                   d->min_args == 1 ? "" : "s", nargs);
        else if (d->max_args < 0)
            report(ps, st->line, "%s: expected at least %d argument%s, got %d", d->name,
                   d->min_args, d->min_args == 1 ? "" : "s", nargs);
        else
            report(ps, st->line, "%s: expected %d to %d arguments, got %d", d->name, d->min_args,
                   d->max_args, nargs);
        return;
    }
    s.ps = ps;
    s.d = d;
    if (!(d->flags & D_POLICY))
        s.base = ps->cfg;
    else
        s.base = in_route ? &ps->cfg->routes[ps->cur_route].policy : &ps->cfg->global;
    s.field = (char *)s.base + d->offset;
    s.argc = nargs;
    s.argv = st->argv + 1;
    err = d->set(&s);
    if (err != NULL)
        report(ps, st->line, "%s: %s", d->name, err);
}

/* Lexical errors come here, in order with the parser's own. */
static void lex_error(void *arg, int line, const char *message)
{
    report(arg, line, "%s", message);
}

static void parse_text(struct parser *ps)
{
    for (;;) {
        const struct config_lex_stmt *st;
        enum config_lex_term t = config_lex_next(ps->lex, &st);
        if (t == CONFIG_LEX_END && !st->bad && strcmp(st->argv[0], "route") == 0 &&
            config_lex_open_brace_follows(ps->lex))
            t = CONFIG_LEX_OPEN;
        if (t == CONFIG_LEX_OPEN && (ps->skip_depth > 0 || st->bad))
            ps->skip_depth++;
        else if (st->argc > 0 && ps->skip_depth == 0 && !st->bad && t == CONFIG_LEX_OPEN)
            open_block(ps, st);
        else if (st->argc > 0 && ps->skip_depth == 0 && !st->bad)
            run_directive(ps, st);
        else if (t == CONFIG_LEX_OPEN) {
            report(ps, st->line, "unexpected \"{\"");
            ps->skip_depth++;
        }
        if (t == CONFIG_LEX_CLOSE)
            close_block(ps, st->line);
        if (t == CONFIG_LEX_EOF)
            break;
    }
    if (ps->cur_route >= 0)
        report(ps, ps->cfg->routes[ps->cur_route].line,
               "route: block not closed: \"}\" missing before the end of the file");
}

/* Runs a directive's default through its setter, as if it had been written. */
static void apply_default(struct parser *ps, const struct directive *d)
{
    char buf[128];
    char *argv[DEFAULT_ARGS_MAX];
    struct setting s;
    const char *err;
    int argc = 0;

    snprintf(buf, sizeof(buf), "%s", d->def);
    char *save = NULL; /* strtok_r: workers parse the configuration at the same time */
    for (char *tok = strtok_r(buf, " ", &save); tok != NULL && argc < DEFAULT_ARGS_MAX;
         tok = strtok_r(NULL, " ", &save))
        argv[argc++] = tok;
    s.ps = ps;
    s.d = d;
    s.base = (d->flags & D_POLICY) ? (void *)&ps->cfg->global : (void *)ps->cfg;
    s.field = (char *)s.base + d->offset;
    s.argc = argc;
    s.argv = argv;
    err = d->set(&s);
    if (err != NULL) /* a bug in the table, shown rather than hidden */
        report(ps, 0, "%s: default \"%s\": %s", d->name, d->def, err);
}

static void check_lock_ttl(struct parser *ps, int line, uint64_t lock_ttl_ms)
{
    char a[32];
    if (lock_ttl_ms != 0 && lock_ttl_ms <= ps->cfg->upstream_timeout_ms)
        report(ps, line, "lock_ttl: must be greater than upstream_timeout (%s)",
               config_format_duration(ps->cfg->upstream_timeout_ms, a));
}

/* A token can only come from the token endpoint: without one, every request
 * to such a route would be refused. */
static void check_token_source(struct parser *ps, const struct route *route, const struct policy *p)
{
    if (ps->cfg->token_endpoint != NULL)
        return;
    bool wants = p->require_token;
    for (int k = 0; k < p->nkeys; k++)
        wants = wants || p->keys[k].kind == KEY_SOURCE_TOKEN;
    if (wants)
        report(ps, route->line, "route %s: tokens need a token_endpoint", route->prefix);
}

/* What tls.c needs to build its contexts; the files themselves are its. */
static void check_tls(struct parser *ps)
{
    struct config *cfg = ps->cfg;
    int listen = ps->global_seen[directive_index("listen")];
    int cert = ps->global_seen[directive_index("upstream_tls_certificate")];
    int key = ps->global_seen[directive_index("upstream_tls_certificate_key")];

    if (config_tls_listener(cfg) &&
        (cfg->tls_certificate == NULL || cfg->tls_certificate_key == NULL))
        report(ps, listen, "listen: a tls listener needs tls_certificate and tls_certificate_key");
    if ((cert != 0) != (key != 0))
        report(ps, cert != 0 ? cert : key,
               "upstream_tls_certificate and upstream_tls_certificate_key go together");
    cert = ps->global_seen[directive_index("redis_tls_certificate")];
    key = ps->global_seen[directive_index("redis_tls_certificate_key")];
    if ((cert != 0) != (key != 0))
        report(ps, cert != 0 ? cert : key,
               "redis_tls_certificate and redis_tls_certificate_key go together");
    if (cfg->redis_tls && cfg->redis_unix != NULL)
        report(ps, ps->global_seen[directive_index("redis_tls")],
               "redis_tls: not over a unix socket (redis unix:...)");
}

static int compare_routes(const void *a, const void *b)
{
    const struct route *ra = a;
    const struct route *rb = b;
    size_t la = strlen(ra->prefix);
    size_t lb = strlen(rb->prefix);
    if (la != lb)
        return la > lb ? -1 : 1;
    return strcmp(ra->prefix, rb->prefix);
}

/* unknown_ttl not given (here or globally): as long as the policy's ttl,
 * the time a done answer would have been kept (SPEC §4.6). */
static void follow_ttl(struct policy *p)
{
    if (p->unknown_ttl_ms == 0)
        p->unknown_ttl_ms = p->ttl_ms;
}

/*
 * Exactly one directive names the store, and what a cluster cannot do is
 * refused: a quota counter is per scope, so in another slot than the key a
 * claim script touches; a cluster has database 0 only; a key_prefix brace
 * would change the hash tag the key names carry.
 */
static void check_store(struct parser *ps)
{
    const struct config *cfg = ps->cfg;
    const char *names[] = {"redis", "redis_sentinel", "redis_cluster"};
    size_t first = ARRAY_LEN(names); /* the one named first in the file */
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        int line = ps->global_seen[directive_index(names[i])];
        if (line != 0 &&
            (first == ARRAY_LEN(names) || line < ps->global_seen[directive_index(names[first])]))
            first = i;
    }
    for (size_t i = 0; i < ARRAY_LEN(names) && first < ARRAY_LEN(names); i++) {
        int line = ps->global_seen[directive_index(names[i])];
        if (line != 0 && i != first)
            report(ps, line, "%s: the store is named twice (%s, line %d): keep one", names[i],
                   names[first], ps->global_seen[directive_index(names[first])]);
    }
    int cluster = ps->global_seen[directive_index("redis_cluster")];
    if (cluster == 0)
        return;
    if (cfg->max_keys_per_scope > 0)
        report(ps, ps->global_seen[directive_index("max_keys_per_scope")],
               "max_keys_per_scope: not supported with redis_cluster (line %d): the scope's "
               "counter lives in another slot than its keys",
               cluster);
    if (cfg->redis_db != 0)
        report(ps, ps->global_seen[directive_index("redis_db")],
               "redis_db: a Redis Cluster has database 0 only (redis_cluster, line %d)", cluster);
    if (cfg->key_prefix != NULL && strpbrk(cfg->key_prefix, "{}") != NULL)
        report(ps, ps->global_seen[directive_index("key_prefix")],
               "key_prefix: no '{' or '}' with redis_cluster (line %d): keys carry their own "
               "hash tag",
               cluster);
}

/*
 * After EOF: defaults, derived keys, inheritance and cross-checks. A field
 * whose directive failed to parse is left zero; the cross-checks skip zero
 * durations so that one mistake is reported once.
 */
static void finish(struct parser *ps)
{
    struct config *cfg = ps->cfg;
    int lock = directive_index("lock_ttl");
    int timeout = directive_index("upstream_timeout");
    char a[32];

    for (size_t i = 0; i < NDIRECTIVES; i++) {
        const struct directive *d = &directives[i];
        if (ps->global_seen[i] != 0)
            continue;
        if (d->def != NULL)
            apply_default(ps, d);
        if (d->flags & D_REQUIRED)
            report(ps, 0, "%s: required directive missing", d->name);
    }
    if (cfg->global.nkeys == 0 && cfg->key_header != NULL) {
        cfg->global.keys[0].kind = KEY_SOURCE_HEADER;
        cfg->global.keys[0].name = xstrdup(cfg->key_header);
        cfg->global.nkeys = 1;
    }

    if (cfg->redis_min_replicas > 0 &&
        cfg->redis_min_replicas_timeout_ms * 3 > cfg->redis_timeout_ms)
        report(ps, ps->global_seen[directive_index("redis_min_replicas")],
               "redis_min_replicas: its timeout must be at most a third of redis_timeout (%s): "
               "WAIT holds up the commands behind it",
               config_format_duration(cfg->redis_timeout_ms, a));
    check_store(ps);
    if (ps->global_seen[lock] != 0)
        check_lock_ttl(ps, ps->global_seen[lock], cfg->global.lock_ttl_ms);
    else if (cfg->global.lock_ttl_ms <= cfg->upstream_timeout_ms)
        report(ps, ps->global_seen[timeout], "upstream_timeout: must be less than lock_ttl (%s)",
               config_format_duration(cfg->global.lock_ttl_ms, a));

    for (int r = 0; r < cfg->nroutes; r++) {
        struct policy *dst = &cfg->routes[r].policy;
        for (size_t i = 0; i < NDIRECTIVES; i++) {
            const struct directive *d = &directives[i];
            if (!(d->flags & D_POLICY) || ps->route_seen[r][i] != 0)
                continue;
            if (d->inherit != NULL)
                d->inherit(dst, &cfg->global);
            else
                memcpy((char *)dst + d->offset, (const char *)&cfg->global + d->offset, d->size);
        }
        if (ps->route_seen[r][lock] != 0)
            check_lock_ttl(ps, ps->route_seen[r][lock], dst->lock_ttl_ms);
        check_token_source(ps, &cfg->routes[r], dst);
        if (dst->bypass && dst->verify != NULL)
            report(ps, ps->route_seen[r][directive_index("verify")],
                   "verify: `bypass on` forwards without checking anything; drop one of them");
        follow_ttl(dst);
    }
    follow_ttl(&cfg->global); /* after the routes: they inherit "not given" */
    if (cfg->nroutes > 1)
        qsort(cfg->routes, (size_t)cfg->nroutes, sizeof(*cfg->routes), compare_routes);
    check_tls(ps);
    cfg->lines = xcalloc(NDIRECTIVES, sizeof(*cfg->lines));
    memcpy(cfg->lines, ps->global_seen, sizeof(ps->global_seen));
}

/* ---- public ---------------------------------------------------------- */

struct config *config_parse(const char *name, const char *text, size_t len,
                            config_error_fn on_error, void *arg)
{
    struct parser *ps = xcalloc(1, sizeof(*ps));
    struct config *cfg = xcalloc(1, sizeof(*cfg));

    cfg->file = xstrdup(name);
    cfg->refcount = 1;
    ps->name = name;
    ps->lex = config_lex_new(text, len, lex_error, ps);
    ps->on_error = on_error;
    ps->arg = arg;
    ps->cfg = cfg;
    ps->cur_route = -1;

    parse_text(ps);
    finish(ps);

    if (ps->nerrors != 0) {
        config_unref(cfg);
        cfg = NULL;
    }
    config_lex_free(ps->lex);
    ps->lex = NULL;
    free(ps->route_seen);
    ps->route_seen = NULL;
    free(ps);
    return cfg;
}

/* Reports a failure to read the file itself: "FILE: what: strerror". */
static void report_io(const char *path, const char *what, int err, config_error_fn on_error,
                      void *arg)
{
    char msg[1200];
    snprintf(msg, sizeof(msg), "%.1000s: %s: %s", path, what, strerror(err));
    if (on_error != NULL)
        on_error(arg, msg);
}

int config_read_file(const char *path, char **text_out, size_t *len_out, config_error_fn on_error,
                     void *arg)
{
    char *text = NULL;
    size_t len = 0;
    size_t cap = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        report_io(path, "cannot open", errno, on_error, arg);
        return IDEM_ERR;
    }
    for (;;) {
        if (cap - len < 4096) {
            cap = cap != 0 ? cap * 2 : 16384;
            text = xrealloc(text, cap);
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int rc = IDEM_OK;
    if (ferror(f)) {
        report_io(path, "cannot read", errno, on_error, arg);
        rc = IDEM_ERR;
    }
    fclose(f);
    if (rc != IDEM_OK) {
        free(text);
        return rc;
    }
    text[len] = '\0'; /* cap - len >= 4096 here */
    *text_out = text;
    *len_out = len;
    return IDEM_OK;
}

struct config *config_load(const char *path, config_error_fn on_error, void *arg)
{
    char *text;
    size_t len;
    if (config_read_file(path, &text, &len, on_error, arg) != IDEM_OK)
        return NULL;
    struct config *cfg = config_parse(path, text, len, on_error, arg);
    free(text);
    return cfg;
}

/* The count is atomic: workers on other threads may hold references. */
struct config *config_ref(struct config *cfg)
{
    __atomic_add_fetch(&cfg->refcount, 1, __ATOMIC_RELAXED);
    return cfg;
}

void config_unref(struct config *cfg)
{
    if (cfg == NULL || __atomic_sub_fetch(&cfg->refcount, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (int i = 0; i < cfg->nroutes; i++) {
        free(cfg->routes[i].prefix);
        config_policy_free(&cfg->routes[i].policy);
    }
    free(cfg->routes);
    config_policy_free(&cfg->global);
    for (int i = 0; i < cfg->nupstreams; i++) {
        free(cfg->upstreams[i].url);
        free(cfg->upstreams[i].host);
        free(cfg->upstreams[i].port);
        free(cfg->upstreams[i].host_header);
    }
    for (int i = 0; i < cfg->nlistens; i++) {
        free(cfg->listens[i].host);
        free(cfg->listens[i].port);
    }
    free(cfg->admin_listen.host);
    free(cfg->admin_listen.port);
    free(cfg->redis_host);
    free(cfg->redis_port);
    free(cfg->redis_unix);
    free(cfg->redis_user);
    free(cfg->redis_password_file);
    seal_keys_clear(&cfg->record_keys);
    if (cfg->redis_password != NULL)
        explicit_bzero(cfg->redis_password, strlen(cfg->redis_password));
    free(cfg->redis_password);
    free(cfg->sentinel_master);
    for (int i = 0; i < cfg->nsentinels; i++) {
        free(cfg->sentinels[i].host);
        free(cfg->sentinels[i].port);
        free(cfg->sentinels[i].ip);
    }
    for (int i = 0; i < cfg->ncluster_seeds; i++) {
        free(cfg->cluster_seeds[i].host);
        free(cfg->cluster_seeds[i].port);
        free(cfg->cluster_seeds[i].ip);
    }
    free(cfg->sentinel_user);
    free(cfg->sentinel_password_file);
    if (cfg->sentinel_password != NULL)
        explicit_bzero(cfg->sentinel_password, strlen(cfg->sentinel_password));
    free(cfg->sentinel_password);
    free(cfg->admin_token_file);
    if (cfg->admin_token != NULL)
        explicit_bzero(cfg->admin_token, strlen(cfg->admin_token));
    free(cfg->admin_token);
    free(cfg->key_prefix);
    free(cfg->key_header);
    free(cfg->replay_header);
    free(cfg->error_doc_url);
    free(cfg->access_log);
    free(cfg->error_log);
    free(cfg->token_endpoint);
    free(cfg->token_header);
    free(cfg->tls_certificate);
    free(cfg->tls_certificate_key);
    free(cfg->tls_ciphers);
    free(cfg->tls_ciphersuites);
    free(cfg->redis_tls_ca);
    free(cfg->redis_tls_server_name);
    free(cfg->redis_tls_certificate);
    free(cfg->redis_tls_certificate_key);
    free(cfg->redis_ip);
    free(cfg->upstream_tls_ca);
    free(cfg->upstream_tls_server_name);
    free(cfg->upstream_tls_certificate);
    free(cfg->upstream_tls_certificate_key);
    free(cfg->lines);
    free(cfg->file);
    free(cfg);
}

int config_directive_line(const struct config *cfg, const char *name)
{
    const struct directive *d = find_directive(name);
    return d != NULL && cfg->lines != NULL ? cfg->lines[d - directives] : 0;
}

bool config_tls_listener(const struct config *cfg)
{
    for (int i = 0; i < cfg->nlistens; i++)
        if (cfg->listens[i].tls)
            return true;
    return false;
}

bool config_tls_upstream(const struct config *cfg)
{
    for (int i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].tls)
            return true;
    return false;
}

const struct route *config_route_for(const struct config *cfg, const char *path, size_t len)
{
    bool fold = cfg->route_case == ROUTE_CASE_INSENSITIVE;
    for (int i = 0; i < cfg->nroutes; i++) {
        const struct route *r = &cfg->routes[i];
        size_t n = strlen(r->prefix);
        if (n <= len && (fold ? strncasecmp(path, r->prefix, n) : memcmp(path, r->prefix, n)) == 0)
            return r;
    }
    return NULL;
}

const struct policy *config_policy_for(const struct config *cfg, const char *path, size_t len)
{
    const struct route *r = config_route_for(cfg, path, len);
    return r ? &r->policy : &cfg->global;
}
