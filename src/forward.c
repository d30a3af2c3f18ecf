/*
 * forward.c - writes the request head for the upstream in one pass over the
 * client's fields (see forward.h):
 *
 *   client fields --hop-by-hop, framing, forwarding fields dropped-->
 *     end-to-end fields, in order --> Host, X-Forwarded-*, Via, framing --> out
 *
 * The head is composed with http_head_writer (one copy into the output). Its
 * bytes come from a head http.c accepted, so every name is a token and every
 * value free of CR, LF and NUL: nothing here can write a second request.
 */
#include "forward.h"

#include <string.h>
#include <strings.h>

#include "util.h"

/* Writes "name: " every value of the fields called name, in order, joined
 * by ", ", then ours. */
static void put_joined_field(struct http_head_writer *w, const char *name,
                             const struct header_list *in, bool keep_theirs, const char *ours)
{
    http_head_add_cstr(w, name);
    http_head_add(w, ": ", 2);
    for (int i = 0; keep_theirs && i < in->count; i++) {
        const struct header *h = &in->items[i];
        if (strn_case_equal(h->name, h->name_len, name) && h->value_len > 0) {
            http_head_add(w, h->value, h->value_len);
            http_head_add(w, ", ", 2);
        }
    }
    http_head_add_cstr(w, ours);
    http_head_add(w, "\r\n", 2);
}

/* Fields that override what the request says it is (its method, its
 * target) in frameworks that honour them: Symfony and IIS route on
 * X-Original-URL, method-override middlewares run X-HTTP-Method-Override.
 * idemproxy judged the request line, so only a trusted proxy may send them. */
static const char *const override_fields[] = {
    "X-Original-URL", "X-Rewrite-URL",     "X-HTTP-Method-Override",
    "X-HTTP-Method",  "X-Method-Override",
};

/* Fields that say where a request came from, or what it really is:
 * whoever sent them is trusted to tell the truth, or they are not passed on. */
static bool is_forwarding_field(const struct header *h)
{
    if ((h->name_len > 12 && strncasecmp(h->name, "X-Forwarded-", 12) == 0) ||
        strn_case_equal(h->name, h->name_len, "Forwarded") ||
        strn_case_equal(h->name, h->name_len, "X-Real-IP"))
        return true;
    for (size_t i = 0; i < ARRAY_LEN(override_fields); i++)
        if (strn_case_equal(h->name, h->name_len, override_fields[i]))
            return true;
    return false;
}

void forward_request_head(const struct forward_head *f, struct evbuffer *out)
{
    const struct http_message *req = f->req;
    const struct header_list *in = &req->headers;
    const struct header *host = NULL;
    bool has_xfh = false, has_xfp = false;
    struct http_head_writer w;
    http_head_begin(&w, out);
    http_head_add_cstr(&w, llhttp_method_name((llhttp_method_t)req->method));
    http_head_add(&w, " ", 1);
    http_head_add(&w, req->url, req->url_len);
    HTTP_HEAD_ADD_LITERAL(&w, " HTTP/1.1\r\n");
    for (int i = 0; i < in->count; i++) {
        const struct header *h = &in->items[i];
        if (headers_is_hop_by_hop(in, h))
            continue;
        /* Written below, joined; framing is ours; a buffered body's
         * 100-continue was answered by server.c, a streamed body's is the
         * upstream's to answer. */
        if (strn_case_equal(h->name, h->name_len, "X-Forwarded-For") ||
            strn_case_equal(h->name, h->name_len, "Via") ||
            strn_case_equal(h->name, h->name_len, "Content-Length") ||
            (strn_case_equal(h->name, h->name_len, "Expect") && !f->pass_expect))
            continue;
        if (strn_case_equal(h->name, h->name_len, "Host")) {
            host = host ? host : h;
            continue;
        }
        if (is_forwarding_field(h)) {
            if (!f->trusted_peer)
                continue;
            has_xfh = has_xfh || strn_case_equal(h->name, h->name_len, "X-Forwarded-Host");
            has_xfp = has_xfp || strn_case_equal(h->name, h->name_len, "X-Forwarded-Proto");
        }
        http_head_add_field(&w, h->name, h->name_len, h->value, h->value_len);
    }
    if (host == NULL || f->replace_host)
        http_head_add_field(&w, "Host", 4, f->upstream_host, strlen(f->upstream_host));
    else
        http_head_add_field(&w, host->name, host->name_len, host->value, host->value_len);
    put_joined_field(&w, "X-Forwarded-For", in, f->trusted_peer, f->peer);
    if (!has_xfp && f->client_tls)
        HTTP_HEAD_ADD_LITERAL(&w, "X-Forwarded-Proto: https\r\n");
    else if (!has_xfp)
        HTTP_HEAD_ADD_LITERAL(&w, "X-Forwarded-Proto: http\r\n");
    if (f->websocket)
        HTTP_HEAD_ADD_LITERAL(&w, "Connection: upgrade\r\nUpgrade: websocket\r\n");
    if (host && !has_xfh)
        http_head_add_field(&w, "X-Forwarded-Host", 16, host->value, host->value_len);
    put_joined_field(&w, "Via", in, true, req->minor == 0 ? "1.0 idemproxy" : "1.1 idemproxy");
    if (f->framing == FORWARD_LENGTH) {
        HTTP_HEAD_ADD_LITERAL(&w, "Content-Length: ");
        http_head_add_uint(&w, (unsigned long long)f->length, 10);
        HTTP_HEAD_ADD_LITERAL(&w, "\r\n");
    } else if (f->framing == FORWARD_CHUNKED) {
        HTTP_HEAD_ADD_LITERAL(&w, "Transfer-Encoding: chunked\r\n");
    }
    HTTP_HEAD_ADD_LITERAL(&w, "\r\n");
    http_head_end(&w);
}
