/*
 * upstream.c - the test upstream: a small HTTP/1.1 server that the
 * end-to-end tests put behind idemproxy, so they can count how many times a
 * request was really executed and steer how the "API" answers.
 *
 * One process, one libevent loop, evhttp for the protocol. Every request that
 * is not a control path is one execution: it bumps a global counter and a
 * counter for the raw value of its Idempotency-Key header, at the moment it
 * is received (so a request whose answer is delayed or never sent counts).
 *
 *   request ──> count ──> X-Test-Delay? ──timer──> X-Test-Close? ──> drop conn
 *                              │                         │
 *                              └──── no delay ───────────┴──> reply
 *
 * Request headers that steer the answer:
 *   X-Test-Delay: MS        answer after MS milliseconds (a timer; never sleeps)
 *   X-Test-Status: N        status code (default 201 for POST, 200 otherwise)
 *   X-Test-Body-Size: N     body of N bytes of a repeating pattern
 *   X-Test-Chunked: 1       send the body with chunked transfer coding
 *   X-Test-Close: 1         after the delay, close without any answer
 *
 * The default body is JSON describing what was received:
 *   {"n":COUNT,"method":"POST","path":"/orders","body_len":N,
 *    "body_fnv":"<FNV-1a 64 of the body, hex>","key":"<raw key or null>"}
 * with X-Upstream-Count, X-Custom: yes, every X-Echo-* request header echoed,
 * and X-Forwarded-For / -Proto / -Host and Via echoed as X-Seen-*.
 *
 * Control paths (not counted): GET /__count, GET /__count?key=K, POST /__reset,
 * GET /__connections (connections that carried counted requests).
 *
 * TLS (for idemproxy's `upstream https://`): with -c CERT.pem -k KEY.pem the
 * same port speaks HTTPS instead of HTTP (evhttp over bufferevent_openssl);
 * everything above works the same. ALPN "http/1.1" is selected when offered.
 * With -C CA.pem as well, a client certificate is required and verified
 * against that CA (mTLS); a client without one fails the handshake. Over TLS
 * every answer (control paths too) also carries:
 *   X-Seen-Client-Cn      the client certificate's subject CN, or "none"
 *   X-Seen-Sni            the server name the client sent (SNI), or "none"
 *   X-Seen-Tls-Protocol   the negotiated protocol version, e.g. "TLSv1.3"
 *   X-Seen-Alpn           the negotiated ALPN protocol, or "none"
 *
 *   test-upstream -p PORT [-a ADDR] [-c CERT.pem -k KEY.pem [-C CA.pem]]
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define KEY_BUCKETS 1024
#define MAX_DELAY_MS (600 * 1000)
#define MAX_BODY_SIZE (256 * 1024 * 1024)

/* Per-key execution counter; chained hash table. */
struct key_count {
    char *key;
    uint64_t count;
    struct key_count *next;
};

/*
 * A request whose answer waits for a timer. Owned by the pending list until
 * the timer fires or the process stops; the evhttp_request stays evhttp's
 * (see pending_fire for the case where its connection went away).
 */
struct pending {
    struct evhttp_request *req;
    struct event *timer;
    int status;
    bool close_conn;
    struct evbuffer *body;
    struct evkeyvalq headers; /* extra response headers */
    bool chunked;
    struct pending *prev, *next;
};

static uint64_t g_count;
/* Connections that carried counted requests: proves upstream keep-alive. */
static uint64_t g_connections;
#define MAX_LIVE_CONNS 256
static struct evhttp_connection *g_live[MAX_LIVE_CONNS];
static struct key_count *g_keys[KEY_BUCKETS];
static struct pending *g_pending;
static struct event_base *g_base;
/* Non-NULL when serving HTTPS (-c/-k). */
static SSL_CTX *g_ssl_ctx;

static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static struct key_count **key_slot(const char *key)
{
    uint64_t h = fnv1a64((const unsigned char *)key, strlen(key));
    struct key_count **slot = &g_keys[h % KEY_BUCKETS];
    while (*slot != NULL && strcmp((*slot)->key, key) != 0)
        slot = &(*slot)->next;
    return slot;
}

static uint64_t key_get(const char *key)
{
    struct key_count **slot = key_slot(key);
    return *slot != NULL ? (*slot)->count : 0;
}

/* Returns -1 when out of memory (the count is then lost, loudly). */
static int key_bump(const char *key)
{
    struct key_count **slot = key_slot(key);
    if (*slot == NULL) {
        struct key_count *kc = calloc(1, sizeof(*kc));
        if (kc == NULL)
            return -1;
        kc->key = strdup(key);
        if (kc->key == NULL) {
            free(kc);
            return -1;
        }
        *slot = kc;
    }
    (*slot)->count++;
    return 0;
}

static void keys_clear(void)
{
    for (size_t i = 0; i < KEY_BUCKETS; i++) {
        struct key_count *kc = g_keys[i];
        while (kc != NULL) {
            struct key_count *next = kc->next;
            free(kc->key);
            free(kc);
            kc = next;
        }
        g_keys[i] = NULL;
    }
}

/* Parses a non-negative decimal no larger than max; -1 on anything else. */
static long parse_num(const char *s, long max)
{
    if (s == NULL || *s == '\0')
        return -1;
    errno = 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    while (end != NULL && (*end == ' ' || *end == '\t'))
        end++;
    if (errno != 0 || end == NULL || *end != '\0' || v < 0 || v > max)
        return -1;
    return v;
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "UNKNOWN";
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
    }
}

/* Appends s as a JSON string (with quotes), escaping what JSON requires. */
static void json_string(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            evbuffer_add_printf(out, "\\%c", *p);
        else if (*p < 0x20 || *p >= 0x7f)
            evbuffer_add_printf(out, "\\u%04x", (unsigned)*p);
        else
            evbuffer_add(out, p, 1);
    }
    evbuffer_add(out, "\"", 1);
}

/* The SSL object of the connection that carried req; NULL over plain HTTP. */
static SSL *request_ssl(struct evhttp_request *req)
{
    if (g_ssl_ctx == NULL)
        return NULL;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon == NULL)
        return NULL;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    return bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL;
}

/* Adds the X-Seen-Client-Cn / -Sni / -Tls-Protocol / -Alpn answer headers. */
static void add_tls_headers(struct evhttp_request *req, struct evkeyvalq *out)
{
    SSL *ssl = request_ssl(req);
    if (ssl == NULL)
        return;
    char cn[256] = "none";
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (peer != NULL) {
        X509_NAME *subject = X509_get_subject_name(peer);
        if (subject == NULL ||
            X509_NAME_get_text_by_NID(subject, NID_commonName, cn, (int)sizeof(cn)) <= 0)
            snprintf(cn, sizeof(cn), "%s", "none");
        X509_free(peer);
    }
    evhttp_add_header(out, "X-Seen-Client-Cn", cn);
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    evhttp_add_header(out, "X-Seen-Sni", sni != NULL ? sni : "none");
    evhttp_add_header(out, "X-Seen-Tls-Protocol", SSL_get_version(ssl));
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    char alpn_text[256] = "none";
    if (alpn != NULL && alpn_len > 0)
        snprintf(alpn_text, sizeof(alpn_text), "%.*s", (int)alpn_len, (const char *)alpn);
    evhttp_add_header(out, "X-Seen-Alpn", alpn_text);
}

static void reply_text(struct evhttp_request *req, int status, const char *text)
{
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evbuffer_add(buf, text, strlen(text));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    add_tls_headers(req, evhttp_request_get_output_headers(req));
    evhttp_send_reply(req, status, reason_phrase(status), buf);
    evbuffer_free(buf);
}

/* GET /__count[?key=K] and POST /__reset. Returns true when it answered. */
static bool handle_control(struct evhttp_request *req)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL)
        return false;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char num[32];

    if (strcmp(path, "/__count") == 0 && cmd == EVHTTP_REQ_GET) {
        const char *query = evhttp_uri_get_query(uri);
        uint64_t n = g_count;
        if (query != NULL) {
            struct evkeyvalq params;
            TAILQ_INIT(&params);
            if (evhttp_parse_query_str(query, &params) == 0) {
                const char *key = evhttp_find_header(&params, "key");
                if (key != NULL)
                    n = key_get(key);
            }
            evhttp_clear_headers(&params);
        }
        snprintf(num, sizeof(num), "%" PRIu64, n);
        reply_text(req, 200, num);
        return true;
    }
    if (strcmp(path, "/__connections") == 0 && cmd == EVHTTP_REQ_GET) {
        snprintf(num, sizeof(num), "%" PRIu64, g_connections);
        reply_text(req, 200, num);
        return true;
    }
    if (strcmp(path, "/__reset") == 0 && cmd == EVHTTP_REQ_POST) {
        g_count = 0;
        g_connections = 0;
        keys_clear();
        reply_text(req, 200, "0");
        return true;
    }
    return false;
}

static void add_pattern(struct evbuffer *body, long size)
{
    static const char pattern[] = "0123456789abcdefghijklmnopqrstuvwxyz\n";
    const size_t plen = sizeof(pattern) - 1;
    while (size > 0) {
        size_t n = (size_t)size < plen ? (size_t)size : plen;
        evbuffer_add(body, pattern, n);
        size -= (long)n;
    }
}

static void pending_unlink(struct pending *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        g_pending = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

static void pending_free(struct pending *p)
{
    event_free(p->timer);
    evbuffer_free(p->body);
    evhttp_clear_headers(&p->headers);
    free(p);
}

/*
 * Sends the prepared answer, or closes the connection for X-Test-Close.
 * When the client went away while the answer waited, evhttp has detached the
 * request from its connection and left it to us: evhttp_send_reply frees such
 * a request, and for X-Test-Close we free it ourselves.
 */
static void pending_send(struct pending *p)
{
    struct evhttp_request *req = p->req;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);

    if (p->close_conn) {
        if (evcon != NULL)
            evhttp_connection_free(evcon); /* frees req with it */
        else
            evhttp_request_free(req);
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    for (struct evkeyval *kv = TAILQ_FIRST(&p->headers); kv != NULL; kv = TAILQ_NEXT(kv, next))
        evhttp_add_header(out, kv->key, kv->value);
    if (p->chunked && evcon != NULL) {
        evhttp_send_reply_start(req, p->status, reason_phrase(p->status));
        /* Two chunks, so a proxy sees real chunk boundaries. */
        size_t len = evbuffer_get_length(p->body);
        struct evbuffer *first = evbuffer_new();
        if (first != NULL) {
            evbuffer_remove_buffer(p->body, first, len / 2);
            evhttp_send_reply_chunk(req, first);
            evbuffer_free(first);
        }
        evhttp_send_reply_chunk(req, p->body);
        evhttp_send_reply_end(req);
        return;
    }
    evhttp_send_reply(req, p->status, reason_phrase(p->status), p->body);
}

static void pending_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pending *p = arg;
    pending_unlink(p);
    pending_send(p);
    pending_free(p);
}

static void on_conn_close(struct evhttp_connection *conn, void *arg)
{
    (void)arg;
    for (int i = 0; i < MAX_LIVE_CONNS; i++)
        if (g_live[i] == conn)
            g_live[i] = NULL;
}

/* Counts a connection the first time it carries a counted request. */
static void note_connection(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    int free_slot = -1;
    for (int i = 0; i < MAX_LIVE_CONNS; i++) {
        if (g_live[i] == conn)
            return;
        if (g_live[i] == NULL && free_slot < 0)
            free_slot = i;
    }
    g_connections++;
    if (free_slot >= 0) {
        g_live[free_slot] = conn;
        evhttp_connection_set_closecb(conn, on_conn_close, NULL);
    }
}

static void handle_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    if (handle_control(req))
        return;
    note_connection(req);

    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *key = evhttp_find_header(in, "Idempotency-Key");

    g_count++;
    if (key != NULL && key_bump(key) != 0)
        fprintf(stderr, "test-upstream: out of memory counting a key\n");

    struct pending *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    TAILQ_INIT(&p->headers);
    p->req = req;
    p->body = evbuffer_new();
    p->timer = evtimer_new(g_base, pending_fire, p);
    if (p->body == NULL || p->timer == NULL) {
        if (p->body != NULL)
            evbuffer_free(p->body);
        if (p->timer != NULL)
            event_free(p->timer);
        free(p);
        evhttp_send_error(req, 500, "out of memory");
        return;
    }

    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    long status = parse_num(evhttp_find_header(in, "X-Test-Status"), 999);
    p->status = status >= 100 ? (int)status : (cmd == EVHTTP_REQ_POST ? 201 : 200);
    const char *close_hdr = evhttp_find_header(in, "X-Test-Close");
    p->close_conn = close_hdr != NULL && strcmp(close_hdr, "1") == 0;
    const char *chunked_hdr = evhttp_find_header(in, "X-Test-Chunked");
    p->chunked = chunked_hdr != NULL && strcmp(chunked_hdr, "1") == 0;

    char num[32];
    snprintf(num, sizeof(num), "%" PRIu64, g_count);
    evhttp_add_header(&p->headers, "X-Upstream-Count", num);
    evhttp_add_header(&p->headers, "X-Custom", "yes");
    add_tls_headers(req, &p->headers);
    for (struct evkeyval *kv = TAILQ_FIRST(in); kv != NULL; kv = TAILQ_NEXT(kv, next)) {
        if (strncasecmp(kv->key, "X-Echo-", 7) == 0)
            evhttp_add_header(&p->headers, kv->key, kv->value);
    }
    static const char *const seen[][2] = {
        {"X-Forwarded-For", "X-Seen-Forwarded-For"},
        {"X-Forwarded-Proto", "X-Seen-Forwarded-Proto"},
        {"X-Forwarded-Host", "X-Seen-Forwarded-Host"},
        {"Via", "X-Seen-Via"},
    };
    for (size_t i = 0; i < sizeof(seen) / sizeof(seen[0]); i++) {
        const char *v = evhttp_find_header(in, seen[i][0]);
        if (v != NULL)
            evhttp_add_header(&p->headers, seen[i][1], v);
    }

    long body_size = parse_num(evhttp_find_header(in, "X-Test-Body-Size"), MAX_BODY_SIZE);
    if (body_size >= 0) {
        add_pattern(p->body, body_size);
        evhttp_add_header(&p->headers, "Content-Type", "application/octet-stream");
    } else {
        struct evbuffer *req_body = evhttp_request_get_input_buffer(req);
        size_t body_len = evbuffer_get_length(req_body);
        const unsigned char *bytes = evbuffer_pullup(req_body, -1);
        uint64_t fnv = fnv1a64(bytes, body_len);
        evbuffer_add_printf(p->body, "{\"n\":%" PRIu64 ",\"method\":", g_count);
        json_string(p->body, method_name(cmd));
        evbuffer_add(p->body, ",\"path\":", 8);
        json_string(p->body, evhttp_request_get_uri(req));
        evbuffer_add_printf(
            p->body, ",\"body_len\":%zu,\"body_fnv\":\"%016" PRIx64 "\",\"key\":", body_len, fnv);
        if (key != NULL)
            json_string(p->body, key);
        else
            evbuffer_add(p->body, "null", 4);
        evbuffer_add(p->body, "}", 1);
        evhttp_add_header(&p->headers, "Content-Type", "application/json");
    }

    long delay = parse_num(evhttp_find_header(in, "X-Test-Delay"), MAX_DELAY_MS);
    if (delay <= 0) {
        pending_send(p);
        pending_free(p);
        return;
    }
    struct timeval tv = {.tv_sec = delay / 1000, .tv_usec = (delay % 1000) * 1000};
    p->next = g_pending;
    if (g_pending != NULL)
        g_pending->prev = p;
    g_pending = p;
    evtimer_add(p->timer, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

/* ALPN: picks "http/1.1" when the client offers it, else no ALPN at all. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char http11[] = "http/1.1";
    unsigned int i = 0;
    while (i < inlen) {
        unsigned int n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == sizeof(http11) - 1 && memcmp(in + i + 1, http11, n) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* evhttp's bufferevent factory: every accepted connection speaks TLS. */
static struct bufferevent *make_tls_bev(struct event_base *base, void *arg)
{
    SSL_CTX *ctx = arg;
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL)
        return NULL;
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        SSL_free(ssl);
        return NULL;
    }
    /* Clients (idemproxy's pool) may close without close_notify. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

static void print_ssl_errors(const char *what)
{
    fprintf(stderr, "test-upstream: %s\n", what);
    unsigned long e;
    char buf[256];
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        fprintf(stderr, "  %s\n", buf);
    }
}

/* The server context for -c/-k (and -C for client certificates). */
static SSL_CTX *make_ssl_ctx(const char *cert, const char *key, const char *client_ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        print_ssl_errors("SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        print_ssl_errors("cannot load the certificate (-c)");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        print_ssl_errors("cannot load the key (-k) or it does not match the certificate");
        goto fail;
    }
    if (client_ca != NULL) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);
        if (names == NULL || SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
            if (names != NULL)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            print_ssl_errors("cannot load the client CA (-C)");
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        /* Resumed sessions keep the verified peer; one context, one id. */
        static const unsigned char sid_ctx[] = "test-upstream";
        SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: test-upstream -p PORT [-a ADDR] [-c CERT.pem -k KEY.pem [-C CA.pem]]\n");
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    const char *cert = NULL, *key = NULL, *client_ca = NULL;
    long port = -1;
    int opt;
    int rc = 1;
    struct evhttp *http = NULL;
    struct event *sigterm = NULL, *sigint = NULL;

    while ((opt = getopt(argc, argv, "p:a:c:k:C:h")) != -1) {
        switch (opt) {
        case 'p': port = parse_num(optarg, 65535); break;
        case 'a': addr = optarg; break;
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 'C': client_ca = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (port < 0 || (cert == NULL) != (key == NULL) || (client_ca != NULL && cert == NULL)) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (cert != NULL) {
        g_ssl_ctx = make_ssl_ctx(cert, key, client_ca);
        if (g_ssl_ctx == NULL)
            return 2;
    }

    g_base = event_base_new();
    if (g_base == NULL) {
        fprintf(stderr, "test-upstream: event_base_new failed\n");
        goto out;
    }
    http = evhttp_new(g_base);
    if (http == NULL) {
        fprintf(stderr, "test-upstream: evhttp_new failed\n");
        goto out;
    }
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                         EVHTTP_REQ_TRACE | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(http, handle_request, NULL);
    if (g_ssl_ctx != NULL)
        evhttp_set_bevcb(http, make_tls_bev, g_ssl_ctx);
    evhttp_set_timeout(http, 120);
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(http, addr, (uint16_t)port);
    if (bound == NULL) {
        fprintf(stderr, "test-upstream: cannot listen on %s:%ld: %s\n", addr, port,
                strerror(errno));
        rc = 2;
        goto out;
    }
    sigterm = evsignal_new(g_base, SIGTERM, on_signal, g_base);
    sigint = evsignal_new(g_base, SIGINT, on_signal, g_base);
    if (sigterm == NULL || sigint == NULL || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "test-upstream: cannot install signal handlers\n");
        goto out;
    }

    printf("ready %ld\n", port);
    fflush(stdout);
    event_base_dispatch(g_base);
    rc = 0;

out:
    /* Requests still waiting: detached ones are ours to free, the others go
     * with their connection in evhttp_free. */
    while (g_pending != NULL) {
        struct pending *p = g_pending;
        pending_unlink(p);
        if (evhttp_request_get_connection(p->req) == NULL)
            evhttp_request_free(p->req);
        pending_free(p);
    }
    if (sigint != NULL)
        event_free(sigint);
    if (sigterm != NULL)
        event_free(sigterm);
    if (http != NULL)
        evhttp_free(http);
    if (g_base != NULL)
        event_base_free(g_base);
    if (g_ssl_ctx != NULL)
        SSL_CTX_free(g_ssl_ctx);
    keys_clear();
    return rc;
}
