/*
 * admin_keys.c - the keys admin API (SPEC §9): an operator shows, releases
 * or deletes one idempotency key on the admin listener (admin.c hands over
 * every path under /keys/).
 *
 *   GET    /keys/KEY?SCOPE            what the key holds
 *   POST   /keys/KEY/release?SCOPE    in flight or unknown -> absent; 409 if done
 *   DELETE /keys/KEY?SCOPE            any state -> absent
 *   SCOPE: scope=VALUE (scope2=, ... for a policy's further sources), or
 *          scope_hash=HEX, or nothing (the anonymous scope); route=PREFIX
 *          for a route's scope sources and, with key_namespace route, its keys
 *
 *   request --bearer token (hashed, compared in constant time)--> 401
 *           --path and query--------------------------------------> 400 / 405
 *           --policy_scope, policy_record_key: the Redis key a request makes
 *           --store_admin: one script reads the key and deletes it if asked
 *   answer  --> 503 / 404 / 409 / 200 with what the key was; one warn line
 *
 * The main thread has no worker's store, so this module keeps one of its
 * own on the main loop (store.c, built like a worker's from the running
 * configuration, so any store kind works), and every call is answered from
 * its callback: nothing blocks the loop that also runs signals and probes.
 * The store exists while admin_token_file is set, made on the loop's first
 * turn (the Redis and sentinel names are resolved by then), so that a call
 * finds it connected: with sentinels, a store that has not yet heard where
 * the primary is fails its operations at once. What a call reports and the deletion it makes are
 * one Lua script (store_keys.c SCRIPT_ADMIN), so a key that becomes done between a look and a
 * release is never released.
 */
#include "admin_keys.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "flush.h"
#include "headers.h"
#include "keysource.h"
#include "log.h"
#include "policy.h"
#include "problem.h"
#include "record.h"
#include "seal.h"
#include "store.h"
#include "tls.h"
#include "util.h"

#define KEYS_PATH "/keys/"
#define RELEASE_SUFFIX "/release"

struct admin_keys {
    struct event_base *base;
    struct flusher *flusher; /* the store's writes on the main loop */
    struct config *cfg;      /* referenced: main's running configuration */
    struct tls *tls;         /* referenced */
    struct store *store;     /* NULL while the API is off, or until the loop's first turn */
    struct event *connect;   /* that first turn */
    struct key_call *calls;  /* waiting for Redis */
    /* 401s: one line per UNAUTHORIZED_LOG_MS at most (a client trying tokens
     * must not fill the disk); those answered within it are counted, and
     * the count is written when it ends */
    uint64_t unauthorized_said_ms;     /* when a 401 line was last written; 0: never */
    unsigned long unauthorized_unsaid; /* 401s answered since, not written */
    char unauthorized_last_peer[80];   /* the last of those callers */
    struct event *unauthorized_tally;  /* writes the count at the window's end */
};

#define UNAUTHORIZED_LOG_MS 10000

/* One call waiting for Redis; freed in its callback. */
struct key_call {
    struct admin_keys *ak; /* NULL once let go (admin_keys_free): req is not ours then */
    struct evhttp_request *req;
    enum keys_admin_action action;
    char *key;
    char *rkey;
    char scope[POLICY_SCOPE_HASH_LEN + 1];
    char peer[80];
    struct key_call *prev, *next;
};

static const char *const action_name[] = {
    [KEYS_ADMIN_SHOW] = "show", [KEYS_ADMIN_RELEASE] = "release", [KEYS_ADMIN_DELETE] = "delete"};
static const char *const action_done[] = {[KEYS_ADMIN_SHOW] = "shown",
                                          [KEYS_ADMIN_RELEASE] = "released",
                                          [KEYS_ADMIN_DELETE] = "deleted"};

/* ---- answers ------------------------------------------------------------ */

static void peer_of(struct evhttp_request *req, char *out, size_t cap)
{
    char *addr = NULL;
    ev_uint16_t port = 0;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon != NULL)
        evhttp_connection_get_peer(evcon, &addr, &port);
    if (addr != NULL && strchr(addr, ':') != NULL)
        snprintf(out, cap, "[%s]:%u", addr, (unsigned)port);
    else
        snprintf(out, cap, "%s:%u", addr != NULL ? addr : "?", (unsigned)port);
}

/* Sends a problem document (problem.c); fields already on req's output stay. */
static void send_problem(const struct config *cfg, struct evhttp_request *req,
                         enum problem_code code, const char *detail, const char *key)
{
    struct problem p = {.code = code, .detail = detail, .key = key};
    struct header_list h;
    size_t len;
    headers_init(&h);
    char *body = problem_render(&p, cfg->error_doc_url, &h, &len);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    for (int i = 0; i < h.count; i++)
        evhttp_add_header(out, h.items[i].name, h.items[i].value);
    evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    evhttp_send_reply(req, problem_status(code), NULL, NULL);
    free(body);
    headers_clear(&h);
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    default: return "other method";
    }
}

/* A refused call: said at warn (every call is), then answered. The path
 * only: the query may hold a client's raw scope value, a credential. */
static void refuse(const struct config *cfg, struct evhttp_request *req, enum problem_code code,
                   const char *detail)
{
    char peer[80];
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    peer_of(req, peer, sizeof(peer));
    log_warn("admin: %s: %s %s: %d %s", peer, method_name(evhttp_request_get_command(req)),
             path != NULL ? path : "", problem_status(code), detail);
    send_problem(cfg, req, code, detail, NULL);
}

/* ,"name":"escaped" */
static void put_string(struct evbuffer *b, const char *name, const char *s, size_t len)
{
    char *esc = xmalloc(6 * len + 1);
    size_t n = log_json_escape(s, len, esc, 6 * len + 1);
    if (name != NULL)
        evbuffer_add_printf(b, ",\"%s\":", name);
    evbuffer_add_printf(b, "\"%.*s\"", (int)n, esc);
    free(esc);
}

/* ,"name":N or null when Redis said -1 (no expiry). */
static void put_ms(struct evbuffer *b, const char *name, int64_t ms)
{
    if (ms < 0)
        evbuffer_add_printf(b, ",\"%s\":null", name);
    else
        evbuffer_add_printf(b, ",\"%s\":%lld", name, (long long)ms);
}

/* A done key's stored response, read through record.h (opened first when
 * sealed, seal.h): status, header fields in order, body size, whether the
 * body was omitted. A sealed record this configuration cannot open (no key
 * file, or changed in Redis) shows as "record":"sealed". */
static void put_record(struct evbuffer *b, const struct seal_keys *keys, const char *rkey,
                       const struct claim_result *k)
{
    struct record rec;
    const char *bytes = k->record;
    size_t len = k->record_len;
    char *opened = NULL;
    bool sealed = seal_is_sealed(k->record, k->record_len);
    evbuffer_add_printf(b, ",\"sealed\":%s", sealed ? "true" : "false");
    if (sealed && seal_open(keys, rkey, k->fingerprint, k->fingerprint_len, k->record,
                            k->record_len, &opened, &len, NULL) != SEAL_OPENED) {
        evbuffer_add_printf(b, ",\"record\":\"sealed\"");
        return;
    }
    if (opened != NULL)
        bytes = opened;
    int decoded = record_decode(bytes, len, &rec);
    free(opened);
    if (decoded != IDEM_OK) {
        evbuffer_add_printf(b, ",\"record\":\"unreadable\"");
        return;
    }
    evbuffer_add_printf(b, ",\"status\":%d,\"headers\":[", rec.status);
    for (int i = 0; i < rec.headers.count; i++) {
        const struct header *h = &rec.headers.items[i];
        evbuffer_add_printf(b, "%s[", i > 0 ? "," : "");
        put_string(b, NULL, h->name, h->name_len);
        evbuffer_add(b, ",", 1);
        put_string(b, NULL, h->value, h->value_len);
        evbuffer_add(b, "]", 1);
    }
    evbuffer_add_printf(b, "],\"body_size\":%zu,\"body_omitted\":%s", rec.body_len,
                        rec.body_omitted ? "true" : "false");
    record_free(&rec);
}

static const char *state_name(const struct key_admin_result *r)
{
    if (!r->ours)
        return "foreign";
    switch (r->key.state) {
    case KEY_STATE_INFLIGHT: return "inflight";
    case KEY_STATE_DONE: return "done";
    case KEY_STATE_UNKNOWN: return "unknown";
    default: return "foreign";
    }
}

/*
 * What the key was before the call, as JSON. created_at is null: neither
 * the value nor the record carries a time, and the ttl it was stored with
 * may have been another than today's, so none is made up.
 */
static void render_key(struct evbuffer *b, const struct key_call *c,
                       const struct key_admin_result *r)
{
    evbuffer_add_printf(b, "{\"action\":\"%s\"", action_done[c->action]);
    put_string(b, "key", c->key, strlen(c->key));
    put_string(b, "scope", c->scope, strlen(c->scope));
    put_string(b, "redis_key", c->rkey, strlen(c->rkey));
    put_string(b, "state", state_name(r), strlen(state_name(r)));
    evbuffer_add_printf(b, ",\"legacy\":%s", r->legacy ? "true" : "false");
    if (!r->ours)
        put_string(b, "redis_type", r->redis_type, strlen(r->redis_type));
    else
        put_string(b, "fingerprint", r->key.fingerprint, r->key.fingerprint_len);
    if (r->ours && r->key.state == KEY_STATE_INFLIGHT)
        put_ms(b, "lease_ms", r->key.pttl_ms);
    put_ms(b, "ttl_ms", r->expiry_ms);
    if (r->ours && r->key.state == KEY_STATE_DONE)
        put_record(b, &c->ak->cfg->record_keys, c->rkey, &r->key);
    evbuffer_add_printf(b, ",\"created_at\":null}\n");
}

static void log_call(const struct key_call *c, const char *outcome)
{
    log_warn("admin: %s: %s key \"%s\" scope %s (%s): %s", c->peer, action_name[c->action], c->key,
             c->scope, c->rkey, outcome);
}

/* Redis answered (or could not be reached): the call's one answer. */
static void answer(struct key_call *c, const struct key_admin_result *r, const char *error)
{
    const struct config *cfg = c->ak->cfg;
    char outcome[160];
    if (error != NULL) {
        snprintf(outcome, sizeof(outcome), "redis: %s", error);
        log_call(c, outcome);
        evhttp_add_header(evhttp_request_get_output_headers(c->req), "Retry-After", "1");
        send_problem(cfg, c->req, PROBLEM_STORE_UNAVAILABLE,
                     c->action == KEYS_ADMIN_SHOW
                         ? "Redis cannot be reached."
                         : "Redis did not answer: the change may or may not have been made. "
                           "Show the key before trying again.",
                     c->key);
        return;
    }
    if (!r->found) {
        log_call(c, "absent");
        send_problem(cfg, c->req, PROBLEM_NOT_FOUND, NULL, c->key);
        return;
    }
    snprintf(outcome, sizeof(outcome), "was %s%s%s", state_name(r),
             r->legacy ? " (hash layout)" : "", r->deleted ? ", now absent" : "");
    log_call(c, outcome);
    if (c->action == KEYS_ADMIN_RELEASE && !r->deleted) {
        send_problem(cfg, c->req, PROBLEM_ALREADY_COMPLETED,
                     r->ours ? "The key is done: its response is stored and replayed. DELETE "
                               "it to let the next request execute again."
                             : "The key holds no idempotency state that a release frees.",
                     c->key);
        return;
    }
    struct evbuffer *body = evhttp_request_get_output_buffer(c->req);
    render_key(body, c, r);
    struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_send_reply(c->req, HTTP_OK, NULL, NULL);
}

static void call_free(struct key_call *c)
{
    if (c->ak != NULL) {
        if (c->prev != NULL)
            c->prev->next = c->next;
        else
            c->ak->calls = c->next;
        if (c->next != NULL)
            c->next->prev = c->prev;
    }
    free(c->key);
    free(c->rkey);
    free(c);
}

static void on_result(void *arg, const struct key_admin_result *r, const char *error)
{
    struct key_call *c = arg;
    if (c->ak != NULL)
        answer(c, r, error);
    call_free(c);
}

/* ---- the request -------------------------------------------------------- */

enum token_check { TOKEN_OK, TOKEN_MISSING, TOKEN_WRONG };

static void sha256(const char *s, size_t len, unsigned char out[32])
{
    unsigned int n = 0;
    if (EVP_Digest(s, len, out, &n, EVP_sha256(), NULL) != 1)
        abort(); /* as policy.c: only when OpenSSL cannot allocate */
}

/*
 * "Authorization: Bearer TOKEN" against admin_token. Both are hashed first,
 * so the comparison takes the same time whatever their lengths and wherever
 * they first differ.
 */
static enum token_check check_token(const struct config *cfg, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return TOKEN_MISSING;
    size_t n;
    const char *t = trim_ows(h + 7, strlen(h + 7), &n);
    unsigned char given[32], want[32];
    sha256(t, n, given);
    sha256(cfg->admin_token, strlen(cfg->admin_token), want);
    return CRYPTO_memcmp(given, want, sizeof(want)) == 0 ? TOKEN_OK : TOKEN_WRONG;
}

/*
 * Percent-decodes the key's path segment ('+' is itself in a path) into a
 * malloc'd key, or NULL when an escape is malformed or the key is not 1..255
 * bytes of visible ASCII or space, as keys are (policy.h).
 */
static char *decode_key(const char *s, size_t len)
{
    char *out = xmalloc(len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi = i + 2 < len ? hex_digit_value((unsigned char)s[i + 1]) : -1;
            int lo = hi >= 0 ? hex_digit_value((unsigned char)s[i + 2]) : -1;
            if (lo < 0)
                goto bad;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c < 0x20 || c > 0x7e)
            goto bad;
        out[n++] = (char)c;
    }
    if (n == 0 || n > POLICY_MAX_KEY_LEN)
        goto bad;
    out[n] = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* The query parameter for the scope source i: scope, scope2, scope3, ... */
static void scope_param(int i, char out[16])
{
    if (i == 0)
        snprintf(out, 16, "scope");
    else
        snprintf(out, 16, "scope%d", i + 1);
}

/* Whether every parameter of the query is one the API knows: a typo
 * ("scop=") must not silently address the anonymous scope. */
static bool params_known(const char *q)
{
    while (q != NULL && *q != '\0') {
        size_t n = strcspn(q, "=&");
        bool known = (n == 10 && strncmp(q, "scope_hash", n) == 0) ||
                     (n == 5 && strncmp(q, "route", n) == 0);
        for (int i = 0; i < CONFIG_MAX_SCOPE_SOURCES && !known; i++) {
            char name[16];
            scope_param(i, name);
            known = n == strlen(name) && strncmp(q, name, n) == 0;
        }
        if (!known && n > 0)
            return false;
        q = strchr(q, '&');
        q = q != NULL ? q + 1 : NULL;
    }
    return true;
}

/* A query parameter: IDEM_OK with *out malloc'd or NULL when absent;
 * IDEM_ERR when given twice or with a malformed escape. */
static int param(const char *q, const char *name, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (q == NULL)
        return IDEM_OK;
    enum ks_result r = keysource_param(q, strlen(q), name, out, len);
    return r == KS_FOUND || r == KS_ABSENT ? IDEM_OK : IDEM_ERR;
}

/* A scope hash as keys carry it: "-" or POLICY_SCOPE_HASH_LEN lower-case hex. */
static bool scope_hash_valid(const char *s, size_t len)
{
    if (len == 1 && s[0] == '-')
        return true;
    if (len != POLICY_SCOPE_HASH_LEN)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/*
 * The scope a request with these scope values would have: the policy's
 * source headers set to the values given and hashed by policy_scope, the
 * proxy's own function (trimming included). A source without a value is a
 * header the request did not carry. Returns NULL or the reason for a 400.
 */
static const char *scope_from_values(const struct policy *p, const char *q,
                                     char out[POLICY_SCOPE_HASH_LEN + 1])
{
    struct header_list h;
    const char *why = NULL;
    headers_init(&h);
    for (int i = 0; i < CONFIG_MAX_SCOPE_SOURCES && why == NULL; i++) {
        char name[16], *v;
        size_t len;
        scope_param(i, name);
        if (param(q, name, &v, &len) != IDEM_OK)
            why = "a scope parameter is given twice or has a malformed %-escape";
        else if (v != NULL && i >= p->nscopes)
            why = p->nscopes == 0 ? "this policy's scope is none: its keys live in the anonymous "
                                    "scope, so give no scope"
                                  : "more scope values than the policy has scope sources";
        else if (v != NULL)
            headers_add(&h, p->scopes[i].name, strlen(p->scopes[i].name), v, len);
        free(v);
    }
    if (why == NULL) {
        struct request_view view = {.headers = &h};
        policy_scope(p, &view, out);
    }
    headers_clear(&h);
    return why;
}

/* The call's scope (scope_hash, or scope values, or the anonymous scope). */
static const char *resolve_scope(const struct policy *p, const char *q, struct key_call *c)
{
    char *hash;
    size_t len;
    if (param(q, "scope_hash", &hash, &len) != IDEM_OK)
        return "scope_hash is given twice or has a malformed %-escape";
    if (hash == NULL)
        return scope_from_values(p, q, c->scope);
    const char *why = NULL;
    char *other = NULL;
    size_t olen;
    if (!scope_hash_valid(hash, len))
        why = "scope_hash must be \"-\" or 32 lower-case hex digits, as keys carry it";
    else if (param(q, "scope", &other, &olen) != IDEM_OK || other != NULL)
        why = "give scope or scope_hash, not both";
    else
        memcpy(c->scope, hash, len + 1);
    free(other);
    free(hash);
    return why;
}

/*
 * The Redis key the call is about, as policy_record_key names it for a
 * request: the route (route=PREFIX, exactly as configured) chooses the scope
 * sources and, with key_namespace route, the namespace. Returns NULL or the
 * reason for a 400.
 */
static const char *resolve_key(const struct config *cfg, const char *q, struct key_call *c)
{
    char *route;
    size_t len;
    const struct route *rt = NULL;
    if (param(q, "route", &route, &len) != IDEM_OK) {
        free(route);
        return "route is given twice or has a malformed %-escape";
    }
    for (int i = 0; route != NULL && i < cfg->nroutes && rt == NULL; i++)
        if (strcmp(cfg->routes[i].prefix, route) == 0)
            rt = &cfg->routes[i];
    bool unknown = route != NULL && rt == NULL;
    free(route);
    if (unknown)
        return "no route block has that prefix (route= takes it exactly as configured)";
    const char *why = resolve_scope(rt != NULL ? &rt->policy : &cfg->global, q, c);
    if (why != NULL)
        return why;
    const char *ns = cfg->key_namespace == KEY_NAMESPACE_ROUTE ? (rt ? rt->prefix : "") : NULL;
    c->rkey = policy_record_key(cfg->key_prefix, c->scope, ns, c->key, cfg->ncluster_seeds > 0);
    return NULL;
}

/* The action a method and path ask for; -1 with *allow set when the method
 * does not fit the path (405). The key's raw segment goes to seg/seg_len. */
static int parse_action(struct evhttp_request *req, const char *path, const char **seg,
                        size_t *seg_len, const char **allow)
{
    *seg = path + strlen(KEYS_PATH);
    *seg_len = strlen(*seg);
    size_t sl = strlen(RELEASE_SUFFIX);
    bool release = *seg_len > sl && strcmp(*seg + *seg_len - sl, RELEASE_SUFFIX) == 0;
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (release) {
        *seg_len -= sl;
        *allow = "POST";
        return m == EVHTTP_REQ_POST ? KEYS_ADMIN_RELEASE : -1;
    }
    *allow = "GET, DELETE";
    return m == EVHTTP_REQ_GET ? KEYS_ADMIN_SHOW : m == EVHTTP_REQ_DELETE ? KEYS_ADMIN_DELETE : -1;
}

bool admin_keys_path(const char *path)
{
    return path != NULL && strncmp(path, KEYS_PATH, strlen(KEYS_PATH)) == 0;
}

/* A call that passed the token: its key, scope and action, then Redis. */
static void start_call(struct admin_keys *ak, struct evhttp_request *req, const char *path,
                       const char *query)
{
    const char *seg, *allow;
    size_t seg_len;
    int action = parse_action(req, path, &seg, &seg_len, &allow);
    if (action < 0) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
        refuse(ak->cfg, req, PROBLEM_METHOD_NOT_ALLOWED, "Method not allowed on this path.");
        return;
    }
    struct key_call *c = xcalloc(1, sizeof(*c));
    c->req = req;
    c->action = (enum keys_admin_action)action;
    peer_of(req, c->peer, sizeof(c->peer));
    const char *why = NULL;
    if (memchr(seg, '/', seg_len) != NULL || (c->key = decode_key(seg, seg_len)) == NULL)
        why = "The key must be 1 to 255 visible ASCII characters, %-encoded in the path "
              "(a '/' in a key as %2F).";
    else if (!params_known(query))
        why = "Unknown query parameter (known: scope, scope2..scope4, scope_hash, route).";
    else
        why = resolve_key(ak->cfg, query, c);
    if (why != NULL) {
        refuse(ak->cfg, req, PROBLEM_BAD_REQUEST, why);
        call_free(c);
        return;
    }
    if (ak->store == NULL) /* a call before the loop's first turn */
        ak->store = store_new(ak->base, ak->flusher, ak->cfg, ak->tls);
    c->ak = ak;
    c->next = ak->calls;
    if (ak->calls != NULL)
        ak->calls->prev = c;
    ak->calls = c;
    store_admin(ak->store, c->rkey, c->action, on_result, c);
}

/* The 401s of a window that were not written one by one. */
static void unauthorized_tally_write(struct admin_keys *ak)
{
    if (ak->unauthorized_unsaid == 0)
        return;
    log_warn("admin: %lu more 401s in the %d s after the last such line (the last from %s)",
             ak->unauthorized_unsaid, UNAUTHORIZED_LOG_MS / 1000, ak->unauthorized_last_peer);
    ak->unauthorized_said_ms = now_monotonic_ms();
    ak->unauthorized_unsaid = 0;
}

static void on_unauthorized_tally(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    unauthorized_tally_write(arg);
}

/* 401, written as refuse() does unless a 401 line (or a count of them) was
 * written within UNAUTHORIZED_LOG_MS: then only counted. */
static void refuse_unauthorized(struct admin_keys *ak, struct evhttp_request *req,
                                enum token_check t)
{
    const char *detail = t == TOKEN_MISSING ? "No bearer token." : "Wrong bearer token.";
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                      t == TOKEN_MISSING ? "Bearer" : "Bearer error=\"invalid_token\"");
    uint64_t now = now_monotonic_ms();
    uint64_t since = now - ak->unauthorized_said_ms;
    if (ak->unauthorized_said_ms == 0 || since >= UNAUTHORIZED_LOG_MS) {
        ak->unauthorized_said_ms = now;
        refuse(ak->cfg, req, PROBLEM_UNAUTHORIZED, detail);
        return;
    }
    peer_of(req, ak->unauthorized_last_peer, sizeof(ak->unauthorized_last_peer));
    if (ak->unauthorized_unsaid++ == 0) {
        uint64_t ms = UNAUTHORIZED_LOG_MS - since;
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
        evtimer_add(ak->unauthorized_tally, &tv);
    }
    send_problem(ak->cfg, req, PROBLEM_UNAUTHORIZED, detail, NULL);
}

bool admin_keys_serve(struct admin_keys *ak, struct evhttp_request *req)
{
    if (ak == NULL || ak->cfg->admin_token == NULL)
        return false;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    enum token_check t = check_token(ak->cfg, req);
    if (t != TOKEN_OK) {
        refuse_unauthorized(ak, req, t);
        return true;
    }
    start_call(ak, req, evhttp_uri_get_path(uri), evhttp_uri_get_query(uri));
    return true;
}

/* ---- life --------------------------------------------------------------- */

/* The API is on: its store connects (if it has not yet). */
static void on_connect(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct admin_keys *ak = arg;
    if (ak->store == NULL && ak->cfg->admin_token != NULL)
        ak->store = store_new(ak->base, ak->flusher, ak->cfg, ak->tls);
}

struct admin_keys *admin_keys_new(struct event_base *base, struct config *cfg, struct tls *tls)
{
    struct admin_keys *ak = xcalloc(1, sizeof(*ak));
    ak->base = base;
    ak->flusher = flusher_new(base);
    ak->cfg = config_ref(cfg);
    ak->tls = tls_ref(tls);
    ak->connect = evtimer_new(base, on_connect, ak);
    ak->unauthorized_tally = evtimer_new(base, on_unauthorized_tally, ak);
    struct timeval zero = {0, 0};
    evtimer_add(ak->connect, &zero);
    return ak;
}

void admin_keys_reconfigure(struct admin_keys *ak, struct config *cfg, struct tls *tls)
{
    if (ak->store != NULL && (cfg->admin_token == NULL || store_target_differs(ak->store, cfg))) {
        store_unref(ak->store); /* freed on the next turn: its calls are answered 503 */
        ak->store = NULL;
    } else if (ak->store != NULL) {
        store_reconfigure(ak->store, cfg);
    }
    config_unref(ak->cfg);
    ak->cfg = config_ref(cfg);
    tls_unref(ak->tls);
    ak->tls = tls_ref(tls);
    on_connect(-1, 0, ak); /* names resolved: the new target at once */
}

void admin_keys_free(struct admin_keys *ak)
{
    if (ak == NULL)
        return;
    for (struct key_call *c = ak->calls; c != NULL; c = c->next)
        c->ak = NULL; /* answered by the store's end below, freed there */
    ak->calls = NULL;
    event_free(ak->connect);
    unauthorized_tally_write(ak); /* a count the window's end would have written */
    event_free(ak->unauthorized_tally);
    store_unref(ak->store);
    store_free_released(); /* after the loop: nothing else would free it */
    flusher_free(ak->flusher);
    config_unref(ak->cfg);
    tls_unref(ak->tls);
    free(ak);
}
