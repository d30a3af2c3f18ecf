/*
 * test_config.c - the configuration parser: defaults, every directive into
 * its field, syntax, route inheritance and matching, and every error message
 * with its exact "FILE:LINE:" prefix. Texts are parsed from memory under the
 * name "t.conf"; the sample conf/idemproxy.conf is loaded from the repository
 * root (the working directory of `make unit`).
 */
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <llhttp.h>

#include "config.h"

#define SAMPLE "conf/idemproxy.conf"
#define UPSTREAM_LINE "\nupstream http://127.0.0.1:9000\n"
#define MAX_ERRORS 64

struct errors {
    char *msg[MAX_ERRORS];
    int n;
};

static void collect(void *arg, const char *message)
{
    struct errors *e = arg;
    if (e->n < MAX_ERRORS)
        e->msg[e->n++] = xstrdup(message);
}

static void errors_free(struct errors *e)
{
    for (int i = 0; i < e->n; i++) {
        free(e->msg[i]);
        e->msg[i] = NULL;
    }
    e->n = 0;
}

static void errors_print(const struct errors *e)
{
    for (int i = 0; i < e->n; i++)
        fprintf(stderr, "  error: %s\n", e->msg[i]);
}

static bool errors_have(const struct errors *e, const char *needle)
{
    for (int i = 0; i < e->n; i++)
        if (strstr(e->msg[i], needle) != NULL)
            return true;
    return false;
}

/* text + an upstream line after it (so line numbers are unchanged). */
static char *with_upstream(const char *text)
{
    size_t n = strlen(text);
    char *s = xmalloc(n + sizeof(UPSTREAM_LINE));
    memcpy(s, text, n);
    memcpy(s + n, UPSTREAM_LINE, sizeof(UPSTREAM_LINE));
    return s;
}

static struct config *parse_raw(const char *text, struct errors *e)
{
    return config_parse("t.conf", text, strlen(text), collect, e);
}

/* Parses text plus an upstream; fails the test on any error. */
static struct config *parse_ok(const char *text)
{
    struct errors e = {{NULL}, 0};
    char *full = with_upstream(text);
    struct config *cfg = parse_raw(full, &e);
    if (cfg == NULL || e.n != 0)
        errors_print(&e);
    ck_assert_int_eq(e.n, 0);
    ck_assert_ptr_nonnull(cfg);
    errors_free(&e);
    free(full);
    return cfg;
}

/* Parses text plus an upstream; the parse must fail and report `needle`. */
static void expect_error(const char *text, const char *needle)
{
    struct errors e = {{NULL}, 0};
    char *full = with_upstream(text);
    struct config *cfg = parse_raw(full, &e);
    if (!errors_have(&e, needle)) {
        fprintf(stderr, "expected \"%s\" for:\n%s\ngot:\n", needle, text);
        errors_print(&e);
    }
    ck_assert_ptr_null(cfg);
    ck_assert(errors_have(&e, needle));
    errors_free(&e);
    free(full);
}

static uint64_t method_bit(llhttp_method_t m)
{
    return 1ull << m;
}

/* ---- defaults ---------------------------------------------------------- */

START_TEST(test_defaults)
{
    struct config *cfg = parse_ok("");
    const struct policy *g = &cfg->global;

    ck_assert_str_eq(cfg->file, "t.conf");
    ck_assert_int_eq(cfg->refcount, 1);
    ck_assert_int_eq(cfg->nlistens, 1);
    ck_assert_str_eq(cfg->listens[0].host, "127.0.0.1");
    ck_assert_str_eq(cfg->listens[0].port, "8080");
    ck_assert(!cfg->listens[0].tls);
    ck_assert_int_eq(cfg->nupstreams, 1);
    ck_assert_uint_eq(cfg->upstream_fail_timeout_ms, 10000);
    ck_assert_str_eq(cfg->redis_host, "127.0.0.1");
    ck_assert_str_eq(cfg->redis_port, "6379");
    ck_assert_ptr_null(cfg->redis_unix);
    ck_assert_int_eq(cfg->redis_db, 0);
    ck_assert_ptr_null(cfg->redis_user);
    ck_assert_ptr_null(cfg->redis_password_file);
    ck_assert_ptr_null(cfg->redis_password);
    ck_assert_uint_eq(cfg->redis_timeout_ms, 1000);
    ck_assert_str_eq(cfg->key_prefix, "idem:");
    ck_assert_str_eq(cfg->key_header, "Idempotency-Key");
    ck_assert_str_eq(cfg->replay_header, "Idempotent-Replayed");
    ck_assert_ptr_null(cfg->error_doc_url);
    ck_assert_int_eq(cfg->nroutes, 0);
    ck_assert_int_eq(cfg->on_store_error, ON_STORE_ERROR_REJECT);
    ck_assert_int_eq(cfg->workers, 0);
    ck_assert_int_eq(cfg->max_connections, 10000);
    ck_assert_uint_eq(cfg->max_header_size, 16 * 1024);
    ck_assert_int_eq(cfg->upstream_keepalive, 256);
    ck_assert_int_eq(cfg->upstream_max_conns, 1024);
    ck_assert_uint_eq(cfg->client_header_timeout_ms, 10000);
    ck_assert_uint_eq(cfg->client_body_timeout_ms, 30000);
    ck_assert_uint_eq(cfg->idle_timeout_ms, 60000);
    ck_assert_uint_eq(cfg->upstream_connect_timeout_ms, 3000);
    ck_assert_uint_eq(cfg->upstream_timeout_ms, 30000);
    ck_assert_uint_eq(cfg->shutdown_timeout_ms, 30000);
    ck_assert_str_eq(cfg->access_log, "stderr");
    ck_assert_str_eq(cfg->error_log, "stderr");
    ck_assert_int_eq(cfg->log_level, LOG_INFO);
    ck_assert_ptr_null(cfg->admin_listen.host);
    ck_assert_ptr_null(cfg->token_endpoint);
    ck_assert_str_eq(cfg->token_header, "Idempotency-Token");
    ck_assert_uint_eq(cfg->token_ttl_ms, 600000);

    ck_assert_uint_eq(g->methods, method_bit(HTTP_POST) | method_bit(HTTP_PUT) |
                                      method_bit(HTTP_PATCH) | method_bit(HTTP_DELETE));
    ck_assert_int_eq(g->nkeys, 1);
    ck_assert_int_eq(g->keys[0].kind, KEY_SOURCE_HEADER);
    ck_assert_str_eq(g->keys[0].name, "Idempotency-Key");
    ck_assert(!g->require_key);
    ck_assert(!g->require_token);
    ck_assert(!g->bypass);
    ck_assert_uint_eq(g->ttl_ms, 24ull * 3600 * 1000);
    ck_assert_uint_eq(g->lock_ttl_ms, 60000);
    ck_assert_int_eq(g->nscopes, 1);
    ck_assert_int_eq(g->scopes[0].kind, KEY_SOURCE_HEADER);
    ck_assert_str_eq(g->scopes[0].name, "Authorization");
    ck_assert_uint_eq(g->fingerprint, FP_METHOD | FP_PATH | FP_BODY);
    ck_assert_int_eq(g->nfp_headers, 0);
    for (int s = 0; s < CONFIG_MAX_STATUS; s++) {
        bool want = s == 500 || s == 502 || s == 503 || s == 504 || s == 408 || s == 429;
        ck_assert_msg(g->release_on[s] == want, "release_on[%d]", s);
    }
    ck_assert_int_eq(g->on_duplicate, ON_DUPLICATE_REPLAY);
    ck_assert_int_eq(g->on_inflight, ON_INFLIGHT_REJECT);
    ck_assert_uint_eq(g->max_request_body, 1024 * 1024);
    ck_assert_uint_eq(g->max_cached_body, 1024 * 1024);
    config_unref(cfg);
}
END_TEST

/* unknown_ttl: a policy's own ttl unless given (SPEC §4.6); a global one is
 * inherited like any other, a route's own wins. */
START_TEST(test_unknown_ttl_follows_ttl)
{
    struct config *cfg = parse_ok("ttl 2h\nroute /a { ttl 3h }\nroute /b { unknown_ttl 5m }\n");
    ck_assert_uint_eq(cfg->global.unknown_ttl_ms, 2 * 3600 * 1000);
    for (int i = 0; i < cfg->nroutes; i++) {
        const struct policy *p = &cfg->routes[i].policy;
        if (strcmp(cfg->routes[i].prefix, "/a") == 0)
            ck_assert_uint_eq(p->unknown_ttl_ms, 3 * 3600 * 1000);
        else
            ck_assert_uint_eq(p->unknown_ttl_ms, 5 * 60 * 1000);
    }
    config_unref(cfg);
    cfg = parse_ok("unknown_ttl 1h\nroute /a { ttl 3h }\n");
    ck_assert_uint_eq(cfg->routes[0].policy.unknown_ttl_ms, 3600 * 1000);
    config_unref(cfg);
    expect_error("unknown_ttl 0s\n", "unknown_ttl: must be greater than 0");
}
END_TEST

START_TEST(test_listen_replaces_default)
{
    struct config *cfg = parse_ok("listen 0.0.0.0:80\nlisten [::1]:8443\n");
    ck_assert_int_eq(cfg->nlistens, 2);
    ck_assert_str_eq(cfg->listens[0].host, "0.0.0.0");
    ck_assert_str_eq(cfg->listens[0].port, "80");
    ck_assert_str_eq(cfg->listens[1].host, "::1");
    ck_assert_str_eq(cfg->listens[1].port, "8443");
    config_unref(cfg);
}
END_TEST

/* ---- every directive into its field ------------------------------------ */

START_TEST(test_global_directives)
{
    struct config *cfg = parse_ok("upstream_fail_timeout 2s\n"
                                  "redis redis.internal:6380\n"
                                  "redis_db 3\n"
                                  "redis_user proxy\n"
                                  "redis_timeout 250ms\n"
                                  "key_prefix app:\n"
                                  "key_header X-Request-Key\n"
                                  "replay_header X-Replayed\n"
                                  "error_doc_url https://example.com/idem\n"
                                  "on_store_error pass\n"
                                  "workers 4\n"
                                  "max_connections 50\n"
                                  "max_header_size 32k\n"
                                  "upstream_keepalive 0\n"
                                  "upstream_max_conns 8\n"
                                  "client_header_timeout 1s\n"
                                  "client_body_timeout 2s\n"
                                  "idle_timeout 3s\n"
                                  "upstream_connect_timeout 4s\n"
                                  "upstream_timeout 5s\n"
                                  "shutdown_timeout 6s\n"
                                  "access_log /var/log/idemproxy/access.log\n"
                                  "error_log /var/log/idemproxy/error.log\n"
                                  "log_level debug\n"
                                  "admin_listen 127.0.0.1:9090\n"
                                  "token_endpoint /idem/token\n"
                                  "token_header X-Token\n"
                                  "token_ttl 1h\n");
    ck_assert_uint_eq(cfg->upstream_fail_timeout_ms, 2000);
    ck_assert_str_eq(cfg->redis_host, "redis.internal");
    ck_assert_str_eq(cfg->redis_port, "6380");
    ck_assert_int_eq(cfg->redis_db, 3);
    ck_assert_str_eq(cfg->redis_user, "proxy");
    ck_assert_uint_eq(cfg->redis_timeout_ms, 250);
    ck_assert_str_eq(cfg->key_prefix, "app:");
    ck_assert_str_eq(cfg->key_header, "X-Request-Key");
    ck_assert_str_eq(cfg->global.keys[0].name, "X-Request-Key");
    ck_assert_str_eq(cfg->replay_header, "X-Replayed");
    ck_assert_str_eq(cfg->error_doc_url, "https://example.com/idem");
    ck_assert_int_eq(cfg->on_store_error, ON_STORE_ERROR_PASS);
    ck_assert_int_eq(cfg->workers, 4);
    ck_assert_int_eq(cfg->max_connections, 50);
    ck_assert_uint_eq(cfg->max_header_size, 32 * 1024);
    ck_assert_int_eq(cfg->upstream_keepalive, 0);
    ck_assert_int_eq(cfg->upstream_max_conns, 8);
    ck_assert_uint_eq(cfg->client_header_timeout_ms, 1000);
    ck_assert_uint_eq(cfg->client_body_timeout_ms, 2000);
    ck_assert_uint_eq(cfg->idle_timeout_ms, 3000);
    ck_assert_uint_eq(cfg->upstream_connect_timeout_ms, 4000);
    ck_assert_uint_eq(cfg->upstream_timeout_ms, 5000);
    ck_assert_uint_eq(cfg->shutdown_timeout_ms, 6000);
    ck_assert_str_eq(cfg->access_log, "/var/log/idemproxy/access.log");
    ck_assert_str_eq(cfg->error_log, "/var/log/idemproxy/error.log");
    ck_assert_int_eq(cfg->log_level, LOG_DEBUG);
    ck_assert_str_eq(cfg->admin_listen.host, "127.0.0.1");
    ck_assert_str_eq(cfg->admin_listen.port, "9090");
    ck_assert_str_eq(cfg->token_endpoint, "/idem/token");
    ck_assert_str_eq(cfg->token_header, "X-Token");
    ck_assert_uint_eq(cfg->token_ttl_ms, 3600000);
    config_unref(cfg);
}
END_TEST

START_TEST(test_enum_values)
{
    struct config *cfg = parse_ok("log_level error\naccess_log off\nworkers auto\n");
    ck_assert_int_eq(cfg->log_level, LOG_ERROR);
    ck_assert_str_eq(cfg->access_log, "off");
    ck_assert_int_eq(cfg->workers, 0);
    config_unref(cfg);
    cfg = parse_ok("log_level warn\nworkers 0\nadmin_listen off\ntoken_endpoint off\n");
    ck_assert_int_eq(cfg->log_level, LOG_WARN);
    ck_assert_int_eq(cfg->workers, 0);
    ck_assert_ptr_null(cfg->admin_listen.host);
    ck_assert_ptr_null(cfg->token_endpoint);
    config_unref(cfg);
}
END_TEST

START_TEST(test_global_policy_directives)
{
    struct config *cfg = parse_ok("methods GET POST M-SEARCH\n"
                                  "require_key on\n"
                                  "ttl 7d\n"
                                  "lock_ttl 5m\n"
                                  "scope none\n"
                                  "fingerprint method query header:Content-Type header:X-A\n"
                                  "release_on 5xx 408\n"
                                  "on_duplicate reject\n"
                                  "on_inflight wait 5s\n"
                                  "max_request_body 64k\n"
                                  "max_cached_body 0\n");
    const struct policy *g = &cfg->global;
    ck_assert_uint_eq(g->methods,
                      method_bit(HTTP_GET) | method_bit(HTTP_POST) | method_bit(HTTP_MSEARCH));
    ck_assert(g->require_key);
    ck_assert_uint_eq(g->ttl_ms, 7ull * 86400 * 1000);
    ck_assert_uint_eq(g->lock_ttl_ms, 300000);
    ck_assert_int_eq(g->nscopes, 0);
    ck_assert_uint_eq(g->fingerprint, FP_METHOD | FP_QUERY);
    ck_assert_int_eq(g->nfp_headers, 2);
    ck_assert_str_eq(g->fp_headers[0], "Content-Type");
    ck_assert_str_eq(g->fp_headers[1], "X-A");
    for (int s = 100; s < CONFIG_MAX_STATUS; s++)
        ck_assert_msg(g->release_on[s] == (s >= 500 || s == 408), "release_on[%d]", s);
    ck_assert_int_eq(g->on_duplicate, ON_DUPLICATE_REJECT);
    ck_assert_int_eq(g->on_inflight, ON_INFLIGHT_WAIT);
    ck_assert_uint_eq(g->inflight_wait_ms, 5000);
    ck_assert_uint_eq(g->max_request_body, 64 * 1024);
    ck_assert_uint_eq(g->max_cached_body, 0);
    config_unref(cfg);
}
END_TEST

START_TEST(test_route_directives)
{
    struct config *cfg = parse_ok("route /orders {\n"
                                  "    methods PUT\n"
                                  "    key header:X-Key query:k form:notify_id json:/a/b~1c token\n"
                                  "    require_key on\n"
                                  "    require_token on\n"
                                  "    ttl 1h\n"
                                  "    lock_ttl 2m\n"
                                  "    scope header:X-Tenant\n"
                                  "    fingerprint body header:X-Sig\n"
                                  "    release_on 4XX\n"
                                  "    on_duplicate reject\n"
                                  "    on_inflight wait 250ms\n"
                                  "    max_request_body 512\n"
                                  "    max_cached_body 1g\n"
                                  "    bypass on\n"
                                  "}\n"
                                  "token_endpoint /idem/token\n");
    const struct policy *p;
    ck_assert_int_eq(cfg->nroutes, 1);
    ck_assert_str_eq(cfg->routes[0].prefix, "/orders");
    ck_assert_int_eq(cfg->routes[0].line, 1);
    p = &cfg->routes[0].policy;
    ck_assert_uint_eq(p->methods, method_bit(HTTP_PUT));
    ck_assert_int_eq(p->nkeys, 5);
    ck_assert_int_eq(p->keys[0].kind, KEY_SOURCE_HEADER);
    ck_assert_str_eq(p->keys[0].name, "X-Key");
    ck_assert_int_eq(p->keys[1].kind, KEY_SOURCE_QUERY);
    ck_assert_str_eq(p->keys[1].name, "k");
    ck_assert_int_eq(p->keys[2].kind, KEY_SOURCE_FORM);
    ck_assert_str_eq(p->keys[2].name, "notify_id");
    ck_assert_int_eq(p->keys[3].kind, KEY_SOURCE_JSON);
    ck_assert_str_eq(p->keys[3].name, "/a/b~1c");
    ck_assert_int_eq(p->keys[4].kind, KEY_SOURCE_TOKEN);
    ck_assert_ptr_null(p->keys[4].name);
    ck_assert(p->require_key);
    ck_assert(p->require_token);
    ck_assert_uint_eq(p->ttl_ms, 3600000);
    ck_assert_uint_eq(p->lock_ttl_ms, 120000);
    ck_assert_int_eq(p->nscopes, 1);
    ck_assert_str_eq(p->scopes[0].name, "X-Tenant");
    ck_assert_uint_eq(p->fingerprint, FP_BODY);
    ck_assert_int_eq(p->nfp_headers, 1);
    ck_assert_str_eq(p->fp_headers[0], "X-Sig");
    ck_assert(p->release_on[400] && p->release_on[499] && !p->release_on[500]);
    ck_assert_int_eq(p->on_duplicate, ON_DUPLICATE_REJECT);
    ck_assert_int_eq(p->on_inflight, ON_INFLIGHT_WAIT);
    ck_assert_uint_eq(p->inflight_wait_ms, 250);
    ck_assert_uint_eq(p->max_request_body, 512);
    ck_assert_uint_eq(p->max_cached_body, 1024ull * 1024 * 1024);
    ck_assert(p->bypass);
    /* the global policy is untouched */
    ck_assert_uint_eq(cfg->global.ttl_ms, 24ull * 3600 * 1000);
    ck_assert(!cfg->global.bypass);
    config_unref(cfg);
}
END_TEST

START_TEST(test_upstreams)
{
    struct config *cfg = parse_ok("upstream http://a.internal:8001 http://[::1]:8002/\n"
                                  "upstream HTTP://10.0.0.1\n");
    /* parse_ok adds http://127.0.0.1:9000 as the last one */
    ck_assert_int_eq(cfg->nupstreams, 4);
    ck_assert_str_eq(cfg->upstreams[0].url, "http://a.internal:8001");
    ck_assert_str_eq(cfg->upstreams[0].host, "a.internal");
    ck_assert_str_eq(cfg->upstreams[0].port, "8001");
    ck_assert_str_eq(cfg->upstreams[0].host_header, "a.internal:8001");
    ck_assert(!cfg->upstreams[0].tls);
    ck_assert_str_eq(cfg->upstreams[1].host, "::1");
    ck_assert_str_eq(cfg->upstreams[1].port, "8002");
    ck_assert_str_eq(cfg->upstreams[1].host_header, "[::1]:8002");
    ck_assert_str_eq(cfg->upstreams[2].host, "10.0.0.1");
    ck_assert_str_eq(cfg->upstreams[2].port, "80");
    ck_assert_str_eq(cfg->upstreams[2].host_header, "10.0.0.1");
    ck_assert_str_eq(cfg->upstreams[3].host_header, "127.0.0.1:9000");
    config_unref(cfg);
}
END_TEST

START_TEST(test_tls_directives)
{
    struct config *cfg = parse_ok("upstream https://api.example HTTPS://[::1]:8443\n");
    ck_assert(cfg->upstreams[0].tls);
    ck_assert_str_eq(cfg->upstreams[0].host, "api.example");
    ck_assert_str_eq(cfg->upstreams[0].port, "443");
    ck_assert_str_eq(cfg->upstreams[0].host_header, "api.example");
    ck_assert(cfg->upstreams[1].tls);
    ck_assert_str_eq(cfg->upstreams[1].host, "::1");
    ck_assert_str_eq(cfg->upstreams[1].port, "8443");
    ck_assert(!cfg->upstreams[2].tls);
    ck_assert(config_tls_upstream(cfg));
    ck_assert(!config_tls_listener(cfg));
    /* the defaults */
    ck_assert_uint_eq(cfg->tls_protocols, TLS_PROTO_12 | TLS_PROTO_13);
    ck_assert_str_eq(cfg->upstream_tls_ca, "system");
    ck_assert(cfg->upstream_tls_verify);
    ck_assert(!cfg->upstream_host);
    ck_assert_ptr_null(cfg->tls_certificate);
    ck_assert_ptr_null(cfg->upstream_tls_server_name);
    ck_assert_ptr_nonnull(strstr(cfg->tls_ciphers, "ECDHE-RSA-AES128-GCM-SHA256"));
    config_unref(cfg);

    cfg = parse_ok("listen 127.0.0.1:8443 tls\n"
                   "listen 127.0.0.1:8080 reuseport\n"
                   "listen [::1]:8443 reuseport tls\n"
                   "tls_certificate /etc/idemproxy/cert.pem\n"
                   "tls_certificate_key /etc/idemproxy/key.pem\n"
                   "tls_protocols TLSv1.3\n"
                   "tls_ciphers ECDHE-RSA-AES256-GCM-SHA384\n"
                   "tls_ciphersuites TLS_AES_256_GCM_SHA384\n"
                   "upstream_tls_ca /etc/ssl/private-ca.pem\n"
                   "upstream_tls_server_name api.internal\n"
                   "upstream_tls_certificate /etc/idemproxy/client.pem\n"
                   "upstream_tls_certificate_key /etc/idemproxy/client.key\n"
                   "upstream_tls_verify off\n"
                   "upstream_host on\n");
    ck_assert(cfg->listens[0].tls && !cfg->listens[0].reuseport);
    ck_assert(!cfg->listens[1].tls && cfg->listens[1].reuseport);
    ck_assert(cfg->listens[2].tls && cfg->listens[2].reuseport);
    ck_assert(config_tls_listener(cfg));
    ck_assert_str_eq(cfg->tls_certificate, "/etc/idemproxy/cert.pem");
    ck_assert_str_eq(cfg->tls_certificate_key, "/etc/idemproxy/key.pem");
    ck_assert_uint_eq(cfg->tls_protocols, TLS_PROTO_13);
    ck_assert_str_eq(cfg->tls_ciphers, "ECDHE-RSA-AES256-GCM-SHA384");
    ck_assert_str_eq(cfg->tls_ciphersuites, "TLS_AES_256_GCM_SHA384");
    ck_assert_str_eq(cfg->upstream_tls_ca, "/etc/ssl/private-ca.pem");
    ck_assert_str_eq(cfg->upstream_tls_server_name, "api.internal");
    ck_assert_str_eq(cfg->upstream_tls_certificate, "/etc/idemproxy/client.pem");
    ck_assert_str_eq(cfg->upstream_tls_certificate_key, "/etc/idemproxy/client.key");
    ck_assert(!cfg->upstream_tls_verify);
    ck_assert(cfg->upstream_host);
    ck_assert_int_eq(config_directive_line(cfg, "listen"), 1);
    ck_assert_int_eq(config_directive_line(cfg, "tls_certificate_key"), 5);
    ck_assert_int_eq(config_directive_line(cfg, "upstream_host"), 14);
    ck_assert_int_eq(config_directive_line(cfg, "ttl"), 0);
    config_unref(cfg);
}
END_TEST

START_TEST(test_redis_unix)
{
    struct config *cfg = parse_ok("redis unix:/run/redis/redis.sock\n");
    ck_assert_ptr_null(cfg->redis_host);
    ck_assert_ptr_null(cfg->redis_port);
    ck_assert_str_eq(cfg->redis_unix, "/run/redis/redis.sock");
    config_unref(cfg);
    cfg = parse_ok("redis [::1]:6379\n");
    ck_assert_str_eq(cfg->redis_host, "::1");
    ck_assert_str_eq(cfg->redis_port, "6379");
    config_unref(cfg);
}
END_TEST

/* Writes content to a new temporary file; returns its malloc'd path. */
static char *temp_file(const char *content)
{
    char *path = xstrdup("/tmp/idemproxy-test-XXXXXX");
    int fd = mkstemp(path);
    size_t n = strlen(content);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, content, n), (ssize_t)n);
    close(fd);
    return path;
}

START_TEST(test_password_file)
{
    char *path = temp_file("s3cret pass\n");
    char text[256];
    struct config *cfg;

    snprintf(text, sizeof(text), "redis_password_file %s\n", path);
    cfg = parse_ok(text);
    ck_assert_str_eq(cfg->redis_password_file, path);
    ck_assert_str_eq(cfg->redis_password, "s3cret pass");
    config_unref(cfg);
    unlink(path);
    free(path);

    path = temp_file("no-newline");
    snprintf(text, sizeof(text), "redis_password_file \"%s\"\n", path);
    cfg = parse_ok(text);
    ck_assert_str_eq(cfg->redis_password, "no-newline");
    config_unref(cfg);
    unlink(path);
    free(path);
}
END_TEST

/* admin_token_file: read like a password, into its own field; empty is an error. */
START_TEST(test_admin_token_file)
{
    char *path = temp_file("tok-0123456789abcdef\n");
    char text[256];
    struct config *cfg = parse_ok("admin_listen 127.0.0.1:9090\n");
    ck_assert_ptr_null(cfg->admin_token);
    config_unref(cfg);

    snprintf(text, sizeof(text), "admin_token_file %s\n", path);
    cfg = parse_ok(text);
    ck_assert_str_eq(cfg->admin_token_file, path);
    ck_assert_str_eq(cfg->admin_token, "tok-0123456789abcdef");
    ck_assert_ptr_null(cfg->redis_password);
    config_unref(cfg);
    unlink(path);
    free(path);

    struct errors e = {{NULL}, 0};
    path = temp_file("\n");
    snprintf(text, sizeof(text), "admin_token_file %s" UPSTREAM_LINE, path);
    ck_assert_ptr_null(parse_raw(text, &e));
    char needle[256];
    snprintf(needle, sizeof(needle), "t.conf:1: admin_token_file: \"%s\" is empty", path);
    ck_assert(errors_have(&e, needle));
    errors_free(&e);
    unlink(path);
    free(path);

    /* a guessable token, and one others may read, are refused */
    path = temp_file("short-token\n");
    snprintf(text, sizeof(text), "admin_token_file %s" UPSTREAM_LINE, path);
    ck_assert_ptr_null(parse_raw(text, &e));
    ck_assert(errors_have(&e, "a token needs 16 at least"));
    errors_free(&e);
    unlink(path);
    free(path);
    path = temp_file("tok-0123456789abcdef\n");
    chmod(path, 0644);
    snprintf(text, sizeof(text), "admin_token_file %s" UPSTREAM_LINE, path);
    ck_assert_ptr_null(parse_raw(text, &e));
    ck_assert(errors_have(&e, "chmod 600"));
    errors_free(&e);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(test_password_file_errors_never_show_password)
{
    struct errors e = {{NULL}, 0};
    char *path = temp_file("");
    char text[256];
    char needle[256];
    struct config *cfg;

    snprintf(text, sizeof(text), "redis_password_file %s" UPSTREAM_LINE, path);
    cfg = parse_raw(text, &e);
    ck_assert_ptr_null(cfg);
    snprintf(needle, sizeof(needle), "t.conf:1: redis_password_file: \"%s\" is empty", path);
    ck_assert(errors_have(&e, needle));
    errors_free(&e);
    unlink(path);
    free(path);

    /* a readable password next to an error elsewhere: not in any message */
    path = temp_file("hunter2\n");
    snprintf(text, sizeof(text), "redis_password_file %s\nttl bad" UPSTREAM_LINE, path);
    cfg = parse_raw(text, &e);
    ck_assert_ptr_null(cfg);
    ck_assert_int_eq(e.n, 1);
    ck_assert(!errors_have(&e, "hunter2"));
    errors_free(&e);
    unlink(path);
    free(path);
}
END_TEST

/* ---- syntax ------------------------------------------------------------ */

START_TEST(test_quotes_and_escapes)
{
    struct config *cfg = parse_ok("key_prefix \"a b;c#d{e}\"\n"
                                  "access_log \"/var/log/with \\\"quote\\\" and \\\\\"\n"
                                  "redis_user \"\"\n"
                                  "error_log pre\"fix \"post\n");
    ck_assert_str_eq(cfg->key_prefix, "a b;c#d{e}");
    ck_assert_str_eq(cfg->access_log, "/var/log/with \"quote\" and \\");
    ck_assert_str_eq(cfg->redis_user, "");
    ck_assert_str_eq(cfg->error_log, "prefix post");
    config_unref(cfg);
}
END_TEST

START_TEST(test_comments_and_semicolons)
{
    struct config *cfg = parse_ok("# a comment line\n"
                                  "   # indented comment\n"
                                  "\n"
                                  "ttl 1h # trailing comment\n"
                                  "lock_ttl 2m; redis_db 2;; max_connections 7;\n"
                                  "key_prefix x#not-part\n"
                                  "\r\n"
                                  "idle_timeout 9s\r\n"
                                  "\tlog_level\twarn\n");
    ck_assert_uint_eq(cfg->global.ttl_ms, 3600000);
    ck_assert_uint_eq(cfg->global.lock_ttl_ms, 120000);
    ck_assert_int_eq(cfg->redis_db, 2);
    ck_assert_int_eq(cfg->max_connections, 7);
    ck_assert_str_eq(cfg->key_prefix, "x");
    ck_assert_uint_eq(cfg->idle_timeout_ms, 9000);
    ck_assert_int_eq(cfg->log_level, LOG_WARN);
    config_unref(cfg);
}
END_TEST

START_TEST(test_block_forms)
{
    struct config *cfg =
        parse_ok("route /webhooks/github { key header:X-GitHub-Delivery; scope none }\n"
                 "route /empty {}\n"
                 "route /brace-below\n"
                 "# a comment between\n"
                 "{\n"
                 "    ttl 5s\n"
                 "}\n"
                 "route /a { ttl 1s; } ttl 2h\n"
                 "route /b {\n"
                 "    ttl 3s }\n");
    const struct policy *p;
    ck_assert_int_eq(cfg->nroutes, 5);
    p = config_policy_for(cfg, "/webhooks/github", 16);
    ck_assert_int_eq(p->nkeys, 1);
    ck_assert_str_eq(p->keys[0].name, "X-GitHub-Delivery");
    ck_assert_int_eq(p->nscopes, 0);
    ck_assert_uint_eq(config_policy_for(cfg, "/brace-below", 12)->ttl_ms, 5000);
    ck_assert_uint_eq(config_policy_for(cfg, "/a", 2)->ttl_ms, 1000);
    ck_assert_uint_eq(config_policy_for(cfg, "/b", 2)->ttl_ms, 3000);
    ck_assert_uint_eq(cfg->global.ttl_ms, 7200000);
    /* /empty inherits the global ttl, set after its block */
    ck_assert_uint_eq(config_policy_for(cfg, "/empty", 6)->ttl_ms, 7200000);
    config_unref(cfg);
}
END_TEST

/* ---- routes ------------------------------------------------------------ */

START_TEST(test_route_inheritance)
{
    struct config *cfg = parse_ok("route /pay { ttl 1h }\n"
                                  "key_header X-Idem\n"
                                  "scope header:X-Tenant\n"
                                  "fingerprint method header:X-Sig\n"
                                  "on_inflight wait 3s\n"
                                  "release_on 503\n"
                                  "methods POST\n");
    const struct policy *g = &cfg->global;
    const struct policy *p = &cfg->routes[0].policy;

    ck_assert_uint_eq(p->ttl_ms, 3600000);
    ck_assert_uint_eq(g->ttl_ms, 24ull * 3600 * 1000);
    ck_assert_uint_eq(p->methods, method_bit(HTTP_POST));
    ck_assert_uint_eq(p->lock_ttl_ms, g->lock_ttl_ms);
    ck_assert_int_eq(p->nkeys, 1);
    ck_assert_str_eq(p->keys[0].name, "X-Idem");
    ck_assert_ptr_ne(p->keys[0].name, g->keys[0].name); /* each policy owns its strings */
    ck_assert_str_eq(p->scopes[0].name, "X-Tenant");
    ck_assert_ptr_ne(p->scopes[0].name, g->scopes[0].name);
    ck_assert_uint_eq(p->fingerprint, FP_METHOD);
    ck_assert_int_eq(p->nfp_headers, 1);
    ck_assert_str_eq(p->fp_headers[0], "X-Sig");
    ck_assert_ptr_ne(p->fp_headers[0], g->fp_headers[0]);
    ck_assert_int_eq(p->on_inflight, ON_INFLIGHT_WAIT);
    ck_assert_uint_eq(p->inflight_wait_ms, 3000);
    ck_assert(p->release_on[503] && !p->release_on[500]);
    ck_assert_uint_eq(p->max_request_body, g->max_request_body);
    ck_assert_uint_eq(p->max_cached_body, g->max_cached_body);
    ck_assert_int_eq(p->on_duplicate, g->on_duplicate);
    ck_assert(!p->require_key && !p->require_token && !p->bypass);
    config_unref(cfg);
}
END_TEST

START_TEST(test_longest_prefix)
{
    struct config *cfg = parse_ok("route /a { ttl 1s }\n"
                                  "route /a/b/c { ttl 3s }\n"
                                  "route /a/b { ttl 2s }\n"
                                  "route /z { ttl 4s }\n");
    ck_assert_int_eq(cfg->nroutes, 4);
    ck_assert_str_eq(cfg->routes[0].prefix, "/a/b/c");
    ck_assert_str_eq(cfg->routes[1].prefix, "/a/b");
    ck_assert_int_eq(cfg->routes[1].line, 3);
    ck_assert_uint_eq(config_policy_for(cfg, "/a/b/c/d", 8)->ttl_ms, 3000);
    ck_assert_uint_eq(config_policy_for(cfg, "/a/b/x", 6)->ttl_ms, 2000);
    ck_assert_uint_eq(config_policy_for(cfg, "/a/bc", 5)->ttl_ms, 2000); /* byte prefix */
    ck_assert_uint_eq(config_policy_for(cfg, "/a", 2)->ttl_ms, 1000);
    ck_assert_uint_eq(config_policy_for(cfg, "/z", 2)->ttl_ms, 4000);
    ck_assert_ptr_eq(config_policy_for(cfg, "/", 1), &cfg->global);
    ck_assert_ptr_eq(config_policy_for(cfg, "/b", 2), &cfg->global);
    /* only len bytes of path count */
    ck_assert_uint_eq(config_policy_for(cfg, "/a/b/c", 4)->ttl_ms, 2000);
    config_unref(cfg);
}
END_TEST

/* ---- value parsers ----------------------------------------------------- */

START_TEST(test_durations)
{
    static const struct {
        const char *s;
        uint64_t ms;
    } good[] = {{"250ms", 250},    {"30s", 30000}, {"5m", 300000},  {"24h", 86400000},
                {"7d", 604800000}, {"0s", 0},      {"1000ms", 1000}};
    static const char *const bad[] = {"30",
                                      "",
                                      "s",
                                      "1.5s",
                                      "30S",
                                      "-1s",
                                      "30 s",
                                      "1h30m",
                                      "ms",
                                      "5w",
                                      "99999999999999999999s",
                                      "300000000000000d"};
    uint64_t ms;
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        ck_assert_msg(config_parse_duration(good[i].s, &ms) == IDEM_OK, "%s", good[i].s);
        ck_assert_uint_eq(ms, good[i].ms);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        ck_assert_msg(config_parse_duration(bad[i], &ms) == IDEM_ERR, "%s", bad[i]);
}
END_TEST

START_TEST(test_sizes)
{
    static const struct {
        const char *s;
        size_t n;
    } good[] = {{"512", 512},    {"0", 0},        {"64k", 65536},     {"64K", 65536},
                {"1m", 1048576}, {"1M", 1048576}, {"1g", 1073741824}, {"2G", 2147483648u}};
    static const char *const bad[] = {"",
                                      "k",
                                      "1kb",
                                      "-1",
                                      "1t",
                                      "1.5m",
                                      " 1",
                                      "1 ",
                                      "99999999999999999999999",
                                      "99999999999999g"};
    size_t n;
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        ck_assert_msg(config_parse_size(good[i].s, &n) == IDEM_OK, "%s", good[i].s);
        ck_assert_uint_eq(n, good[i].n);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        ck_assert_msg(config_parse_size(bad[i], &n) == IDEM_ERR, "%s", bad[i]);
}
END_TEST

/* ---- errors ------------------------------------------------------------ */

/* Each case is parsed with an upstream line appended after it. */
static const struct {
    const char *text;
    const char *error;
} error_cases[] = {
    /* unknown directive, argument counts, duplicates, scopes */
    {"ttl 1h\nfoo bar\n", "t.conf:2: unknown directive \"foo\""},
    {"ttl 1h 2h\n", "t.conf:1: ttl: expected 1 argument, got 2"},
    {"methods\n", "t.conf:1: methods: expected at least 1 argument, got 0"},
    {"on_inflight wait 1s 2s\n", "t.conf:1: on_inflight: expected 1 to 2 arguments, got 3"},
    {"route /a { key header:a header:b header:c header:d header:e header:f header:g header:h "
     "header:i }\n",
     "t.conf:1: key: expected 1 to 8 arguments, got 9"},
    {"ttl 1h\nttl 2h\n", "t.conf:2: ttl: duplicate directive (first on line 1)"},
    {"route /a {\n ttl 1h\n\n ttl 2h\n}\n", "t.conf:4: ttl: duplicate directive (first on line 2)"},
    {"route /a {\n  upstream http://x:1\n}\n", "t.conf:2: upstream: not allowed inside a route"},
    {"route /a { listen 127.0.0.1:1 }\n", "t.conf:1: listen: not allowed inside a route"},
    {"route /a { redis_db 1 }\n", "t.conf:1: redis_db: not allowed inside a route"},
    {"key header:X\n", "t.conf:1: key: only allowed inside a route"},
    {"bypass on\n", "t.conf:1: bypass: only allowed inside a route"},
    {"require_token on\n", "t.conf:1: require_token: only allowed inside a route"},
    /* values */
    {"\n\nttl abc\n", "t.conf:3: ttl: expected a duration like 30s, got \"abc\""},
    {"lock_ttl 60\n", "t.conf:1: lock_ttl: expected a duration like 30s, got \"60\""},
    {"redis_timeout 0s\n", "t.conf:1: redis_timeout: must be greater than 0"},
    {"max_request_body 1x\n",
     "t.conf:1: max_request_body: expected a size like 512, 64k, 1m or 1g, got \"1x\""},
    {"route /a { max_cached_body big }\n", "t.conf:1: max_cached_body: expected a size"},
    {"require_key yes\n", "t.conf:1: require_key: expected on or off, got \"yes\""},
    {"route /a { bypass true }\n", "t.conf:1: bypass: expected on or off, got \"true\""},
    {"methods POST FETCH\n", "t.conf:1: methods: unknown method \"FETCH\""},
    {"methods post\n", "t.conf:1: methods: unknown method \"post\""},
    {"route /a { key cookie:x }\n", "t.conf:1: key: unknown key source \"cookie:x\""},
    {"route /a { key json:order_no }\n",
     "t.conf:1: key: expected a JSON pointer like json:/order_no, got \"json:order_no\""},
    {"route /a { key json:/a~2 }\n", "t.conf:1: key: expected a JSON pointer"},
    {"route /a { key header: }\n", "t.conf:1: key: not a valid header name in \"header:\""},
    {"route /a { key query: }\n", "t.conf:1: key: missing parameter name in \"query:\""},
    {"scope query:tenant\n",
     "t.conf:1: scope: expected header:NAME... or none, got \"query:tenant\""},
    {"scope token\n", "t.conf:1: scope: expected header:NAME... or none"},
    {"scope \"header:X Y\"\n", "t.conf:1: scope: not a valid header name"},
    {"fingerprint method cookie\n", "t.conf:1: fingerprint: unknown part \"cookie\""},
    {"fingerprint header:a header:b header:c header:d header:e header:f header:g header:h "
     "header:i\n",
     "t.conf:1: fingerprint: too many header: parts (at most 8)"},
    {"release_on 600\n",
     "t.conf:1: release_on: expected a status 100..599 or a class like 5xx, got \"600\""},
    {"release_on 500 99\n", "t.conf:1: release_on: expected a status 100..599"},
    {"release_on 6xx\n", "t.conf:1: release_on: expected a status 100..599"},
    {"route /a { release_on abc }\n", "t.conf:1: release_on: expected a status"},
    {"on_duplicate ignore\n", "t.conf:1: on_duplicate: expected replay or reject, got \"ignore\""},
    {"on_inflight queue\n", "t.conf:1: on_inflight: expected reject or wait DURATION"},
    {"on_inflight wait\n", "t.conf:1: on_inflight: wait needs a duration"},
    {"on_inflight wait 5\n", "t.conf:1: on_inflight: expected a duration like 30s, got \"5\""},
    {"on_inflight reject 5s\n", "t.conf:1: on_inflight: reject takes no duration"},
    {"on_store_error ignore\n", "t.conf:1: on_store_error: expected reject or pass"},
    {"log_level loud\n", "t.conf:1: log_level: expected error, warn, info or debug, got \"loud\""},
    {"workers many\n", "t.conf:1: workers: expected auto or a number 0..1024, got \"many\""},
    {"workers -1\n", "t.conf:1: workers: expected auto or a number"},
    {"max_connections 0\n", "t.conf:1: max_connections: expected a number 1 or more, got \"0\""},
    {"upstream_keepalive -5\n", "t.conf:1: upstream_keepalive: expected a number 0 or more"},
    {"redis_db x\n", "t.conf:1: redis_db: expected a number 0 or more, got \"x\""},
    {"key_header \"Idem Key\"\n", "t.conf:1: key_header: not a valid header name: \"Idem Key\""},
    {"error_log off\n", "t.conf:1: error_log: expected a path or stderr, got \"off\""},
    {"token_endpoint idem/token\n",
     "t.conf:1: token_endpoint: expected a path starting with \"/\" or off"},
    {"error_doc_url docs\n", "t.conf:1: error_doc_url: expected an http:// or https:// URL"},
    /* addresses */
    {"listen localhost:8080\n", "t.conf:1: listen: expected a numeric address like 127.0.0.1:8080"},
    {"listen 127.0.0.1\n", "t.conf:1: listen: expected HOST:PORT, got \"127.0.0.1\""},
    {"listen 127.0.0.1:0\n", "t.conf:1: listen: port must be 1..65535, got \"0\""},
    {"listen 127.0.0.1:65536\n", "t.conf:1: listen: port must be 1..65535, got \"65536\""},
    {"listen ::1:8080\n", "t.conf:1: listen: IPv6 addresses go in brackets"},
    {"listen [::1:8080\n", "t.conf:1: listen: expected [IPV6]:PORT"},
    {"listen [127.0.0.1]:8080\n", "t.conf:1: listen: expected a numeric address"},
    {"listen 127.0.0.1:8443 tls\n",
     "t.conf:1: listen: a tls listener needs tls_certificate and tls_certificate_key"},
    {"listen 127.0.0.1:8443 tls\ntls_certificate /c.pem\n",
     "t.conf:1: listen: a tls listener needs tls_certificate and tls_certificate_key"},
    {"listen 127.0.0.1:8443 ssl\n", "t.conf:1: listen: unexpected parameter \"ssl\""},
    {"listen 127.0.0.1:8443 tls tls\n", "t.conf:1: listen: unexpected parameter \"tls\""},
    {"tls_protocols TLSv1.1\n", "t.conf:1: tls_protocols: expected TLSv1.2 and/or TLSv1.3"},
    {"tls_protocols TLSv1.2 TLSv1.3 TLSv1.3\n",
     "t.conf:1: tls_protocols: expected 1 to 2 arguments, got 3"},
    {"upstream_tls_certificate /c.pem\n",
     "t.conf:1: upstream_tls_certificate and upstream_tls_certificate_key go together"},
    {"\nupstream_tls_certificate_key /k.pem\n",
     "t.conf:2: upstream_tls_certificate and upstream_tls_certificate_key go together"},
    {"upstream_tls_server_name \"a b\"\n",
     "t.conf:1: upstream_tls_server_name: expected a host name"},
    {"upstream_tls_verify maybe\n", "t.conf:1: upstream_tls_verify: expected on or off"},
    {"upstream_host yes\n", "t.conf:1: upstream_host: expected on or off"},
    {"listen 127.0.0.1:1\nlisten 127.0.0.1:1\n",
     "t.conf:2: listen: duplicate address \"127.0.0.1:1\""},
    {"admin_listen :9090\n", "t.conf:1: admin_listen: missing host in \":9090\""},
    {"upstream ftp://api\n", "t.conf:1: upstream: expected a URL like http://host:port"},
    {"upstream http://api:80/v1\n", "t.conf:1: upstream: an upstream URL cannot have a path"},
    {"upstream http://user@api:80\n", "t.conf:1: upstream: invalid host"},
    {"upstream http://api:http\n", "t.conf:1: upstream: port must be 1..65535"},
    {"upstream http://\n", "t.conf:1: upstream: missing host"},
    {"redis localhost\n", "t.conf:1: redis: expected HOST:PORT, got \"localhost\""},
    {"redis unix:\n", "t.conf:1: redis: expected unix:PATH with a path"},
    {"redis_password_file /nonexistent/redis-password\n",
     "t.conf:1: redis_password_file: cannot read \"/nonexistent/redis-password\": No such file"},
    /* blocks */
    {"route /a {\n  ttl 1h\n", "t.conf:1: route: block not closed"},
    {"ttl 1h\n\nroute /a {\nroute /b {\n}\n", "t.conf:3: route: block not closed"},
    {"}\n", "t.conf:1: unexpected \"}\""},
    {"route /a { ttl 1h }\n}\n", "t.conf:2: unexpected \"}\""},
    {"{\n}\n", "t.conf:1: unexpected \"{\""},
    {"route /a {\n  route /b {\n  }\n}\n", "t.conf:2: route: nested route blocks are not allowed"},
    {"route /a\nttl 1s\n", "t.conf:1: route: expected \"{\" after the prefix"},
    {"route {\n}\n", "t.conf:1: route: expected \"route PREFIX {\""},
    {"route /a /b {\n}\n", "t.conf:1: route: expected \"route PREFIX {\""},
    {"route api {\n}\n", "t.conf:1: route: prefix must start with \"/\", got \"api\""},
    {"route /a {}\nroute /a {}\n", "t.conf:2: route: duplicate prefix \"/a\" (first on line 1)"},
    {"ttl 1h {\n}\n", "t.conf:1: ttl: does not take a block"},
    {"server {\n}\n", "t.conf:1: unknown directive \"server\""},
    /* lexical */
    {"key_prefix \"abc\n", "t.conf:1: unterminated quoted string"},
    {"key_prefix \"a\\nb\"\n", "t.conf:1: invalid escape in quoted string"},
    /* cross-checks */
    {"lock_ttl 30s\n", "t.conf:1: lock_ttl: must be greater than upstream_timeout (30s)"},
    {"route /f { require_token on }\n", "t.conf:1: route /f: tokens need a token_endpoint"},
    {"\nroute /g { key header:X token }\n", "t.conf:2: route /g: tokens need a token_endpoint"},
    {"\nupstream_timeout 90s\n", "t.conf:2: upstream_timeout: must be less than lock_ttl (1m)"},
    {"upstream_timeout 2m\nlock_ttl 90s\n",
     "t.conf:2: lock_ttl: must be greater than upstream_timeout (2m)"},
    {"route /a {\n  ttl 1h\n  lock_ttl 10s\n}\n",
     "t.conf:3: lock_ttl: must be greater than upstream_timeout (30s)"},
    {"upstream_timeout 1500ms\nroute /a { lock_ttl 1s }\n",
     "t.conf:2: lock_ttl: must be greater than upstream_timeout (1500ms)"},
};

START_TEST(test_error_case)
{
    expect_error(error_cases[_i].text, error_cases[_i].error);
}
END_TEST

START_TEST(test_missing_upstream)
{
    struct errors e = {{NULL}, 0};
    struct config *cfg = parse_raw("ttl 1h\n", &e);
    ck_assert_ptr_null(cfg);
    ck_assert_int_eq(e.n, 1);
    ck_assert_str_eq(e.msg[0], "t.conf: upstream: required directive missing");
    errors_free(&e);
}
END_TEST

START_TEST(test_every_error_reported)
{
    struct errors e = {{NULL}, 0};
    struct config *cfg = parse_raw("ttl abc\n"
                                   "nonsense 1\n"
                                   "route /a {\n"
                                   "  listen 127.0.0.1:1\n"
                                   "  lock_ttl 5s\n"
                                   "  methods GOT\n"
                                   "}\n"
                                   "}\n"
                                   "require_key maybe\n",
                                   &e);
    static const char *const want[] = {
        "t.conf:1: ttl: expected a duration like 30s, got \"abc\"",
        "t.conf:2: unknown directive \"nonsense\"",
        "t.conf:4: listen: not allowed inside a route",
        "t.conf:6: methods: unknown method \"GOT\"",
        "t.conf:8: unexpected \"}\"",
        "t.conf:9: require_key: expected on or off, got \"maybe\"",
        "t.conf: upstream: required directive missing",
        "t.conf:5: lock_ttl: must be greater than upstream_timeout (30s)",
    };
    ck_assert_ptr_null(cfg);
    if (e.n != (int)ARRAY_LEN(want))
        errors_print(&e);
    ck_assert_int_eq(e.n, (int)ARRAY_LEN(want));
    for (size_t i = 0; i < ARRAY_LEN(want); i++)
        ck_assert_str_eq(e.msg[i], want[i]);
    errors_free(&e);
}
END_TEST

START_TEST(test_error_in_failed_directive_reported_once)
{
    /* a lock_ttl that failed to parse is not also reported by the cross-check */
    struct errors e = {{NULL}, 0};
    struct config *cfg = parse_raw("lock_ttl x\nroute /a { lock_ttl y }" UPSTREAM_LINE, &e);
    ck_assert_ptr_null(cfg);
    ck_assert_int_eq(e.n, 2);
    errors_free(&e);
}
END_TEST

START_TEST(test_too_many_listens)
{
    char text[2048] = "";
    size_t used = 0;
    for (int i = 1; i <= CONFIG_MAX_LISTEN + 1; i++)
        used += (size_t)snprintf(text + used, sizeof(text) - used, "listen 127.0.0.1:%d\n", i);
    expect_error(text, "t.conf:17: listen: too many listen addresses (at most 16)");
}
END_TEST

START_TEST(test_too_many_upstreams)
{
    char text[4096] = "upstream";
    size_t used = strlen(text);
    for (int i = 1; i <= CONFIG_MAX_UPSTREAM + 1; i++)
        used += (size_t)snprintf(text + used, sizeof(text) - used, " http://h:%d", i);
    expect_error(text, "t.conf:1: upstream: too many upstreams (at most 32)");
}
END_TEST

START_TEST(test_nul_byte)
{
    struct errors e = {{NULL}, 0};
    static const char text[] = "ttl 1\0h\nupstream http://a:1\n";
    struct config *cfg = config_parse("t.conf", text, sizeof(text) - 1, collect, &e);
    ck_assert_ptr_null(cfg);
    ck_assert(errors_have(&e, "t.conf:1: NUL byte in the configuration"));
    errors_free(&e);
}
END_TEST

START_TEST(test_load_missing_file)
{
    struct errors e = {{NULL}, 0};
    struct config *cfg = config_load("/nonexistent/idemproxy.conf", collect, &e);
    ck_assert_ptr_null(cfg);
    ck_assert_int_eq(e.n, 1);
    ck_assert_str_eq(e.msg[0], "/nonexistent/idemproxy.conf: cannot open: No such file or "
                               "directory");
    errors_free(&e);
}
END_TEST

START_TEST(test_load_file_names_errors)
{
    struct errors e = {{NULL}, 0};
    char *path = temp_file("upstream http://a:1\n\nttl forever\n");
    char needle[256];
    struct config *cfg = config_load(path, collect, &e);
    ck_assert_ptr_null(cfg);
    snprintf(needle, sizeof(needle), "%s:3: ttl: expected a duration like 30s, got \"forever\"",
             path);
    ck_assert_int_eq(e.n, 1);
    ck_assert_str_eq(e.msg[0], needle);
    errors_free(&e);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(test_refcount)
{
    struct config *cfg = parse_ok("");
    ck_assert_ptr_eq(config_ref(cfg), cfg);
    ck_assert_int_eq(cfg->refcount, 2);
    config_unref(cfg);
    ck_assert_int_eq(cfg->refcount, 1);
    config_unref(cfg);
    config_unref(NULL);
}
END_TEST

/* ---- the sample configuration ----------------------------------------- */

/* The sample's text, malloc'd and NUL-terminated. */
static char *read_sample(void)
{
    FILE *f = fopen(SAMPLE, "rb");
    char *text = xmalloc(65536);
    size_t n;
    ck_assert_msg(f != NULL, "%s: %s (run from the repository root)", SAMPLE, strerror(errno));
    n = fread(text, 1, 65535, f);
    fclose(f);
    text[n] = '\0';
    return text;
}

START_TEST(test_sample_loads)
{
    struct errors e = {{NULL}, 0};
    struct config *cfg = config_load(SAMPLE, collect, &e);
    errors_print(&e);
    ck_assert_ptr_nonnull(cfg);
    ck_assert_int_eq(e.n, 0);
    ck_assert_str_eq(cfg->file, SAMPLE);
    ck_assert_int_eq(cfg->nlistens, 1);
    ck_assert_str_eq(cfg->listens[0].port, "8080");
    ck_assert_int_eq(cfg->nupstreams, 1);
    ck_assert_str_eq(cfg->upstreams[0].host_header, "127.0.0.1:9000");
    ck_assert_str_eq(cfg->redis_port, "6379");
    ck_assert_int_eq(cfg->nroutes, 0);
    config_unref(cfg);
}
END_TEST

/* The first word of a line once any leading "#" and blanks are removed. */
static size_t first_word(const char *line, const char **word)
{
    while (*line == '#' || *line == ' ' || *line == '\t')
        line++;
    *word = line;
    return strcspn(line, " \t\n");
}

START_TEST(test_sample_documents_every_directive)
{
    char *text = read_sample();
    for (int i = 0; config_directive_name(i) != NULL; i++) {
        const char *name = config_directive_name(i);
        bool found = false;
        for (const char *line = text; *line != '\0' && !found;) {
            const char *word;
            size_t n = first_word(line, &word);
            found = n == strlen(name) && memcmp(word, name, n) == 0;
            line += strcspn(line, "\n");
            line += *line == '\n';
        }
        ck_assert_msg(found, "%s does not document \"%s\"", SAMPLE, name);
    }
    ck_assert_ptr_null(config_directive_name(-1));
    free(text);
}
END_TEST

/*
 * Every commented-out directive line ("#name args", "#    name args") in the
 * sample must parse on its own, at top level or, for route-only directives,
 * inside a route: the documented defaults and examples are valid.
 */
START_TEST(test_sample_examples_parse)
{
    char *text = read_sample();
    int checked = 0;
    for (const char *line = text; *line != '\0';) {
        size_t len = strcspn(line, "\n");
        const char *word;
        size_t n = first_word(line, &word);
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)(n < 63 ? n : 63), word);
        if (line[0] == '#' && word[n] == ' ' && strcmp(name, "route") != 0 &&
            strcmp(name, "redis_password_file") != 0 && strcmp(name, "error_body") != 0 &&
            strcmp(name, "sentinel_password_file") != 0 &&
            strcmp(name, "record_encryption_key_file") != 0 && strcmp(name, "verify") != 0 &&
            strcmp(name, "admin_token_file") != 0) {
            /* (those that read a file at load: tested with real files elsewhere) */
            bool known = false;
            for (int i = 0; config_directive_name(i) != NULL; i++)
                known = known || strcmp(config_directive_name(i), name) == 0;
            if (known) {
                char stmt[512];
                struct errors e = {{NULL}, 0};
                struct config *cfg;
                snprintf(stmt, sizeof(stmt), "%.*s" UPSTREAM_LINE, (int)(line + len - word), word);
                cfg = parse_raw(stmt, &e);
                if (cfg == NULL && errors_have(&e, "only allowed inside a route")) {
                    errors_free(&e);
                    snprintf(stmt, sizeof(stmt), "route /t {\n%.*s\n}" UPSTREAM_LINE,
                             (int)(line + len - word), word);
                    cfg = parse_raw(stmt, &e);
                }
                /* Directives that only make sense with a partner get it. */
                bool redis = strncmp(name, "redis_", 6) == 0;
                const char *partner =
                    errors_have(&e, "a tls listener needs")
                        ? "tls_certificate /c.pem\ntls_certificate_key /k.pem\n"
                    : errors_have(&e, "go together") && strstr(name, "_key") != NULL
                        ? (redis ? "redis_tls_certificate /c.pem\n"
                                 : "upstream_tls_certificate /c.pem\n")
                    : errors_have(&e, "go together")
                        ? (redis ? "redis_tls_certificate_key /k.pem\n"
                                 : "upstream_tls_certificate_key /k.pem\n")
                        : NULL;
                if (cfg == NULL && partner != NULL) {
                    errors_free(&e);
                    snprintf(stmt, sizeof(stmt), "%.*s" UPSTREAM_LINE "%s",
                             (int)(line + len - word), word, partner);
                    cfg = parse_raw(stmt, &e);
                }
                if (cfg == NULL)
                    errors_print(&e);
                ck_assert_msg(cfg != NULL, "sample line does not parse: %.*s", (int)len, line);
                config_unref(cfg);
                errors_free(&e);
                checked++;
            }
        }
        line += len;
        line += *line == '\n';
    }
    ck_assert_int_ge(checked, 40);
    free(text);
}
END_TEST

START_TEST(test_directive_names)
{
    int n = 0;
    ck_assert_str_eq(config_directive_name(0), "listen");
    while (config_directive_name(n) != NULL)
        n++;
    ck_assert_int_ge(n, 45);
    ck_assert_ptr_null(config_directive_name(n));
}
END_TEST

Suite *config_suite(void);

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("parse");
    TCase *errors = tcase_create("errors");
    TCase *sample = tcase_create("sample");

    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_unknown_ttl_follows_ttl);
    tcase_add_test(tc, test_listen_replaces_default);
    tcase_add_test(tc, test_global_directives);
    tcase_add_test(tc, test_enum_values);
    tcase_add_test(tc, test_global_policy_directives);
    tcase_add_test(tc, test_route_directives);
    tcase_add_test(tc, test_upstreams);
    tcase_add_test(tc, test_tls_directives);
    tcase_add_test(tc, test_redis_unix);
    tcase_add_test(tc, test_password_file);
    tcase_add_test(tc, test_admin_token_file);
    tcase_add_test(tc, test_quotes_and_escapes);
    tcase_add_test(tc, test_comments_and_semicolons);
    tcase_add_test(tc, test_block_forms);
    tcase_add_test(tc, test_route_inheritance);
    tcase_add_test(tc, test_longest_prefix);
    tcase_add_test(tc, test_durations);
    tcase_add_test(tc, test_sizes);
    tcase_add_test(tc, test_refcount);
    tcase_add_test(tc, test_directive_names);
    suite_add_tcase(s, tc);

    tcase_add_loop_test(errors, test_error_case, 0, (int)ARRAY_LEN(error_cases));
    tcase_add_test(errors, test_missing_upstream);
    tcase_add_test(errors, test_every_error_reported);
    tcase_add_test(errors, test_error_in_failed_directive_reported_once);
    tcase_add_test(errors, test_password_file_errors_never_show_password);
    tcase_add_test(errors, test_too_many_listens);
    tcase_add_test(errors, test_too_many_upstreams);
    tcase_add_test(errors, test_nul_byte);
    tcase_add_test(errors, test_load_missing_file);
    tcase_add_test(errors, test_load_file_names_errors);
    suite_add_tcase(s, errors);

    tcase_add_test(sample, test_sample_loads);
    tcase_add_test(sample, test_sample_documents_every_directive);
    tcase_add_test(sample, test_sample_examples_parse);
    suite_add_tcase(s, sample);
    return s;
}

UNIT_MAIN(config_suite)
