/*
 * admin.c - the admin listener (SPEC §3 admin_listen, §4.5).
 *
 * A separate address, served by libevent's evhttp on the main thread's event
 * loop rather than by server.c: these endpoints are read by probes and
 * scrapers, not clients, and need none of the proxy's request machinery.
 * evhttp owns the admin connections; nothing here is counted as a client
 * connection or written to the access log. The gauges come from every worker
 * through struct admin_source.
 *
 *   GET|HEAD /healthz  200 "ok"                while the process runs
 *            /readyz   200 "ready"             while every worker reaches Redis
 *                      503 "redis unreachable" otherwise
 *                      503 "draining"          after SIGTERM
 *            /metrics  200 Prometheus text 0.0.4 (metrics_render, gauges
 *                      read from the workers at the moment of the scrape)
 *            anything else 404
 *   other methods      405 with Allow: GET, HEAD
 *   /keys/...          the keys admin API (admin_keys.c), any method; 404 as
 *                      an unknown path while admin_token_file is not set
 */
#include "admin.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_keys.h"
#include "metrics.h"
#include "util.h"

#define ADMIN_TIMEOUT_SECS 10
#define ADMIN_MAX_HEADERS (8 * 1024)
#define ADMIN_MAX_BODY 1024 /* a body is never read; a small one still gets its 405 */

/* Methods evhttp hands to on_request, which answers 405 to all but GET and HEAD. */
#define ADMIN_METHODS_PARSED                                                                       \
    (EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |     \
     EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH)

struct admin {
    struct admin_source src;
    struct evhttp *http; /* owns the bound socket and every admin connection */
    struct admin_keys *keys;
};

/*
 * Sends what is in the request's output buffer. libevent 2.1's evhttp writes
 * the body of an answer to HEAD too, and a keep-alive client then reads it
 * as the start of the next answer: for HEAD the body is dropped here and
 * its length given as Content-Length.
 */
static void send_reply(struct evhttp_request *req, int code, const char *reason)
{
    struct evbuffer *body = evhttp_request_get_output_buffer(req);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        char len[32];
        snprintf(len, sizeof(len), "%zu", evbuffer_get_length(body));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", len);
        evbuffer_drain(body, evbuffer_get_length(body));
    }
    evhttp_send_reply(req, code, reason, NULL);
}

/* Sends a short text/plain answer. */
static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/plain; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-store");
    evbuffer_add(evhttp_request_get_output_buffer(req), text, strlen(text));
    send_reply(req, code, reason);
}

/* Draining first: a load balancer should stop sending before the listeners close. */
static void serve_readyz(struct admin *a, struct evhttp_request *req)
{
    struct metrics_gauges g;
    a->src.gauges(a->src.arg, &g);
    if (a->src.draining(a->src.arg))
        reply_text(req, HTTP_SERVUNAVAIL, "Service Unavailable", "draining\n");
    else if (!g.redis_up)
        reply_text(req, HTTP_SERVUNAVAIL, "Service Unavailable", "redis unreachable\n");
    else if (g.redis_oom)
        reply_text(req, HTTP_SERVUNAVAIL, "Service Unavailable",
                   "redis refusing writes (out of memory)\n");
    else
        reply_text(req, HTTP_OK, "OK", "ready\n");
}

static void serve_metrics(struct admin *a, struct evhttp_request *req)
{
    struct metrics_gauges g;
    a->src.gauges(a->src.arg, &g);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-store");
    metrics_render(evhttp_request_get_output_buffer(req), &g);
    send_reply(req, HTTP_OK, "OK");
}

/* evhttp's callback for every admin request; answers each one before returning. */
static void on_request(struct evhttp_request *req, void *arg)
{
    struct admin *a = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;

    enum evhttp_cmd_type method = evhttp_request_get_command(req);

    if (admin_keys_path(path)) {
        if (!admin_keys_serve(a->keys, req))
            reply_text(req, HTTP_NOTFOUND, "Not Found", "not found\n");
    } else if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", "method not allowed\n");
    } else if (path != NULL && strcmp(path, "/healthz") == 0) {
        reply_text(req, HTTP_OK, "OK", "ok\n");
    } else if (path != NULL && strcmp(path, "/readyz") == 0) {
        serve_readyz(a, req);
    } else if (path != NULL && strcmp(path, "/metrics") == 0) {
        serve_metrics(a, req);
    } else {
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found\n");
    }
}

static int parse_port(const char *s, ev_uint16_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v == 0 || v > 65535)
        return IDEM_ERR;
    *out = (ev_uint16_t)v;
    return IDEM_OK;
}

struct admin *admin_start(struct event_base *base, struct config *cfg, struct tls *tls,
                          const struct admin_source *src, char *err, size_t errlen)
{
    const struct listen_addr *la = &cfg->admin_listen;
    struct admin *a = NULL;
    ev_uint16_t port;

    if (errlen > 0)
        err[0] = '\0';
    if (la->host == NULL)
        return NULL;
    if (parse_port(la->port, &port) != IDEM_OK) {
        snprintf(err, errlen, "admin_listen %s:%s: bad port", la->host, la->port);
        return NULL;
    }

    a = xcalloc(1, sizeof(*a));
    a->src = *src;
    a->http = evhttp_new(base);
    if (a->http == NULL) {
        snprintf(err, errlen, "admin_listen %s:%s: cannot create the HTTP server", la->host,
                 la->port);
        goto fail;
    }
    evhttp_set_allowed_methods(a->http, ADMIN_METHODS_PARSED);
    evhttp_set_timeout(a->http, ADMIN_TIMEOUT_SECS);
    evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS);
    evhttp_set_max_body_size(a->http, ADMIN_MAX_BODY);
    evhttp_set_gencb(a->http, on_request, a);

    if (evhttp_bind_socket_with_handle(a->http, la->host, port) == NULL) {
        int e = EVUTIL_SOCKET_ERROR();
        snprintf(err, errlen, "admin_listen %s:%s: cannot listen: %s", la->host, la->port,
                 e != 0 ? evutil_socket_error_to_string(e) : "address not usable");
        goto fail;
    }
    a->keys = admin_keys_new(base, cfg, tls);
    return a;

fail:
    if (a->http != NULL)
        evhttp_free(a->http);
    free(a);
    return NULL;
}

void admin_reconfigure(struct admin *a, struct config *cfg, struct tls *tls)
{
    if (a != NULL)
        admin_keys_reconfigure(a->keys, cfg, tls);
}

void admin_free(struct admin *a)
{
    if (a == NULL)
        return;
    admin_keys_free(a->keys); /* first: its waiting requests belong to evhttp */
    evhttp_free(a->http);
    free(a);
}
