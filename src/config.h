/*
 * config.h - the parsed configuration (SPEC §3) and the policy a request runs
 * under.
 *
 * A struct config is immutable once config_load() returns it. Reload builds a
 * new one and swaps it in only when it validates; requests in flight keep a
 * reference (config_ref/config_unref) to the one they started under.
 *
 * struct policy holds everything a `route` block may override. The global
 * directives fill config->global; after the whole file is read, every route's
 * unset fields are copied from it, so code that serves a request looks at
 * exactly one fully-resolved policy.
 */
#ifndef IDEM_CONFIG_H
#define IDEM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config_value.h" /* config_parse_duration(), config_parse_size() */
#include "seal.h"
#include "util.h"

struct webhook_verifier;

#define CONFIG_DEFAULT_FILE "/etc/idemproxy/idemproxy.conf"
#define CONFIG_MAX_LISTEN 16
#define CONFIG_MAX_UPSTREAM 32
#define CONFIG_MAX_KEY_SOURCES 8
#define CONFIG_MAX_FP_HEADERS 8
#define CONFIG_MAX_SCOPE_SOURCES 4
#define CONFIG_MAX_STATUS 600
#define CONFIG_MAX_SENTINELS 8
#define CONFIG_MAX_CLUSTER_SEEDS 16

enum key_source_kind {
    KEY_SOURCE_NONE = 0, /* scope none */
    KEY_SOURCE_HEADER,   /* header:NAME */
    KEY_SOURCE_QUERY,    /* query:NAME */
    KEY_SOURCE_FORM,     /* form:NAME */
    KEY_SOURCE_JSON,     /* json:/pointer */
    KEY_SOURCE_TOKEN,    /* token */
};

struct key_source {
    enum key_source_kind kind;
    char *name; /* header/query/form name or JSON pointer; NULL for NONE/TOKEN */
};

enum fingerprint_part {
    FP_METHOD = 1u << 0,
    FP_PATH = 1u << 1,
    FP_QUERY = 1u << 2,
    FP_BODY = 1u << 3,
    FP_JSON = 1u << 4, /* the body as canonical JSON (json_canon.h), else its bytes */
};

enum on_duplicate { ON_DUPLICATE_REPLAY, ON_DUPLICATE_REJECT };
enum on_inflight { ON_INFLIGHT_REJECT, ON_INFLIGHT_WAIT };
enum on_store_error { ON_STORE_ERROR_REJECT, ON_STORE_ERROR_PASS };
enum route_case { ROUTE_CASE_SENSITIVE, ROUTE_CASE_INSENSITIVE };
enum key_namespace { KEY_NAMESPACE_GLOBAL, KEY_NAMESPACE_ROUTE };

/* An address block of trusted_proxies: family AF_INET or AF_INET6. */
struct cidr {
    int family;
    unsigned char addr[16];
    int bits;
};

#define CONFIG_MAX_TRUSTED_PROXIES 64
enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

struct policy {
    uint64_t methods; /* bit (1 << llhttp_method_t) per covered method */
    struct key_source keys[CONFIG_MAX_KEY_SOURCES];
    int nkeys;
    bool require_key;
    bool require_token;
    bool bypass;
    uint64_t ttl_ms;
    uint64_t lock_ttl_ms;
    uint64_t unknown_ttl_ms; /* an outcome not known blocks its key this long */
    struct key_source scopes[CONFIG_MAX_SCOPE_SOURCES]; /* headers; none: nscopes 0 */
    int nscopes;
    unsigned fingerprint; /* enum fingerprint_part bits */
    char *fp_headers[CONFIG_MAX_FP_HEADERS];
    int nfp_headers;
    bool release_on[CONFIG_MAX_STATUS]; /* indexed by status code */
    enum on_duplicate on_duplicate;
    enum on_inflight on_inflight;
    uint64_t inflight_wait_ms;
    size_t max_request_body;
    size_t max_cached_body;
    char *error_body;         /* error_body's text (a template), NULL: problem documents */
    char *error_content_type; /* NULL: application/json when error_body is set */
    /* verify (SPEC §11): the route's webhook signature check; NULL: none */
    struct webhook_verifier *verify;
};

struct route {
    char *prefix;
    int line;
    struct policy policy;
};

struct listen_addr {
    char *host; /* numeric address, without brackets for IPv6 */
    char *port;
    bool tls;       /* `tls`: TLS is terminated here */
    bool reuseport; /* `reuseport`: bound with SO_REUSEPORT */
};

struct upstream_url {
    char *url;  /* as written */
    char *host; /* without brackets */
    char *port;
    char *host_header; /* "host[:port]" as sent in Host when upstream_host is on */
    bool tls;          /* https:// */
    /* Filled by upstream_resolve() in the main thread, once per load, so
     * that every worker connects to the same address and none resolves. */
    struct sockaddr_storage addr;
    socklen_t addrlen;
};

/* Bits of tls_protocols. */
enum tls_protocol { TLS_PROTO_12 = 1u << 0, TLS_PROTO_13 = 1u << 1 };

struct config {
    char *file;
    int refcount;

    struct listen_addr listens[CONFIG_MAX_LISTEN];
    int nlistens;
    struct upstream_url upstreams[CONFIG_MAX_UPSTREAM];
    int nupstreams;
    uint64_t upstream_fail_timeout_ms;

    char *redis_host; /* NULL when redis_unix is set */
    char *redis_port;
    char *redis_unix;
    int redis_db;
    char *redis_user;
    char *redis_password_file;
    char *redis_password; /* read from redis_password_file at load; never logged */
    /* record_encryption_key_file (SPEC §10): read at load; none: records in clear */
    struct seal_keys record_keys;
    uint64_t redis_timeout_ms;
    /* redis_sentinel (SPEC §8): the primary is asked of these; NULL: off */
    char *sentinel_master;
    struct redis_addr {
        char *host; /* as written */
        char *port;
        char *ip; /* numeric, filled by store_resolve() in the main thread */
    } sentinels[CONFIG_MAX_SENTINELS];
    int nsentinels;
    /* redis_cluster (SPEC §8): seed nodes, asked for the slot map; 0: off */
    struct redis_addr cluster_seeds[CONFIG_MAX_CLUSTER_SEEDS];
    int ncluster_seeds;
    char *sentinel_user;
    char *sentinel_password_file;
    char *sentinel_password; /* never logged */
    int redis_min_replicas;  /* a claim counts once WAIT says this many replicas have it */
    bool redis_tls;          /* to Redis and the sentinels (tls.c builds the context) */
    char *redis_tls_ca;      /* "system" or a path */
    char *redis_tls_server_name;
    char *redis_tls_certificate;
    char *redis_tls_certificate_key;
    char *redis_ip; /* redis_host, numeric: filled by store_resolve() in the main thread */
    uint64_t redis_min_replicas_timeout_ms;

    char *key_prefix;
    char *key_header; /* also global.keys[0] unless a `key` directive is added */
    char *replay_header;
    char *error_doc_url; /* NULL when none */

    struct policy global;
    struct route *routes; /* sorted by prefix length, longest first */
    int nroutes;
    enum route_case route_case;       /* how route prefixes compare with paths */
    enum key_namespace key_namespace; /* route: a record's key names its route */

    enum on_store_error on_store_error;

    int workers; /* 0 = auto */
    int max_connections;
    size_t max_buffered_bodies; /* covered bodies in memory, whole process */
    int max_keys_per_scope;     /* new keys per scope per global ttl; 0: off */
    size_t max_header_size;
    int upstream_keepalive;
    int upstream_max_conns;

    uint64_t client_header_timeout_ms;
    uint64_t client_body_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t client_send_timeout_ms; /* a client that reads nothing this long is closed */
    uint64_t upstream_connect_timeout_ms;
    uint64_t upstream_timeout_ms;
    uint64_t shutdown_timeout_ms;

    char *access_log; /* path, "stderr" or "off" */
    char *error_log;  /* path or "stderr" */
    enum log_level log_level;

    struct listen_addr admin_listen; /* host NULL when off */
    char *admin_token_file;          /* NULL: the keys admin API is off (SPEC §9) */
    char *admin_token;               /* read from admin_token_file at load; never logged */
    char *token_endpoint;            /* NULL when off */
    char *token_header;
    uint64_t token_ttl_ms;

    bool upstream_host;          /* Host: the upstream's host[:port] instead of the client's */
    bool underscores_in_headers; /* keep request fields with '_' in their name */
    struct cidr trusted_proxies[CONFIG_MAX_TRUSTED_PROXIES]; /* whose forwarding fields count */
    int ntrusted_proxies;

    /* TLS (SPEC §7): paths and settings only; tls.c loads and checks the files. */
    char *tls_certificate; /* NULL when not given */
    char *tls_certificate_key;
    unsigned tls_protocols; /* enum tls_protocol bits */
    char *tls_ciphers;
    char *tls_ciphersuites;
    char *upstream_tls_ca;          /* "system" or a path */
    char *upstream_tls_server_name; /* NULL: each upstream's host */
    char *upstream_tls_certificate;
    char *upstream_tls_certificate_key;
    bool upstream_tls_verify;

    int *lines; /* line of each directive of the table, 0 when not given */
};

/*
 * Receives one message per error, already formatted "FILE:LINE: message"
 * (or "FILE: message" when no line applies).
 */
typedef void (*config_error_fn)(void *arg, const char *message);

/*
 * Reads and validates a configuration file. Returns a config with refcount 1,
 * or NULL after reporting every error found through on_error.
 */
struct config *config_load(const char *path, config_error_fn on_error, void *arg) MUST_CHECK;

/* Reads a whole file into *text (malloc'd, NUL-terminated, *len bytes);
 * errors go through on_error as "FILE: cannot open: ...". */
int config_read_file(const char *path, char **text, size_t *len, config_error_fn on_error,
                     void *arg) MUST_CHECK;

/* Parses configuration text; `name` is used in messages. Same contract. */
struct config *config_parse(const char *name, const char *text, size_t len,
                            config_error_fn on_error, void *arg) MUST_CHECK;

struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg); /* frees at zero */

/* The policy for a request path: the longest matching route, or global. */
/* Whether a peer address (numeric, as server.c formats it) is in trusted_proxies. */
bool config_trusts_peer(const struct config *cfg, const char *peer);

/* The route whose prefix the path (normalised, without its query) starts
 * with, the longest one; NULL when none. route_case decides how letters compare. */
const struct route *config_route_for(const struct config *cfg, const char *path, size_t len);
const struct policy *config_policy_for(const struct config *cfg, const char *path, size_t len);

/*
 * The name of the i-th directive of the configuration table, NULL past the
 * end: lets tests check that the sample configuration and the reference name
 * every directive.
 */
const char *config_directive_name(int i);

/* The line where a global directive was given first, 0 when it was not:
 * lets code that checks what the file names (tls.c) report FILE:LINE. */
int config_directive_line(const struct config *cfg, const char *name);

/* Does any listener, or any upstream, use TLS? */
/* Whether a and b are the same address and port (both off, too). */
bool listen_addr_same(const struct listen_addr *a, const struct listen_addr *b);

bool config_tls_listener(const struct config *cfg);
bool config_tls_upstream(const struct config *cfg);

#endif
