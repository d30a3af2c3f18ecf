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

#include "util.h"

/* Appends ", " and more to a list-valued field (or starts it). */
static void put_list_field(struct http_head_writer *w, const char *name, const struct header *prev,
                           const char *more)
{
    http_head_add_cstr(w, name);
    http_head_add(w, ": ", 2);
    if (prev) {
        http_head_add(w, prev->value, prev->value_len);
        http_head_add(w, ", ", 2);
    }
    http_head_add_cstr(w, more);
    http_head_add(w, "\r\n", 2);
}

void forward_request_head(const struct forward_head *f, struct evbuffer *out)
{
    const struct http_message *req = f->req;
    const struct header_list *in = &req->headers;
    const struct header *host = NULL, *xff = NULL, *via = NULL;
    bool has_xfh = false;
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
        if (strn_case_equal(h->name, h->name_len, "X-Forwarded-For")) {
            xff = xff ? xff : h;
            continue;
        }
        if (strn_case_equal(h->name, h->name_len, "Via")) {
            via = via ? via : h;
            continue;
        }
        /* Framing is ours; a buffered body's 100-continue was answered by
         * server.c, a streamed body's is the upstream's to answer. */
        if (strn_case_equal(h->name, h->name_len, "Content-Length") ||
            strn_case_equal(h->name, h->name_len, "X-Forwarded-Proto") ||
            (strn_case_equal(h->name, h->name_len, "Expect") && !f->pass_expect))
            continue;
        if (strn_case_equal(h->name, h->name_len, "Host")) {
            host = host ? host : h;
            continue;
        }
        if (strn_case_equal(h->name, h->name_len, "X-Forwarded-Host"))
            has_xfh = true;
        http_head_add_field(&w, h->name, h->name_len, h->value, h->value_len);
    }
    if (host == NULL || f->replace_host)
        http_head_add_field(&w, "Host", 4, f->upstream_host, strlen(f->upstream_host));
    else
        http_head_add_field(&w, host->name, host->name_len, host->value, host->value_len);
    put_list_field(&w, "X-Forwarded-For", xff, f->peer);
    if (f->client_tls)
        HTTP_HEAD_ADD_LITERAL(&w, "X-Forwarded-Proto: https\r\n");
    else
        HTTP_HEAD_ADD_LITERAL(&w, "X-Forwarded-Proto: http\r\n");
    if (f->websocket)
        HTTP_HEAD_ADD_LITERAL(&w, "Connection: upgrade\r\nUpgrade: websocket\r\n");
    if (host && !has_xfh)
        http_head_add_field(&w, "X-Forwarded-Host", 16, host->value, host->value_len);
    put_list_field(&w, "Via", via, req->minor == 0 ? "1.0 idemproxy" : "1.1 idemproxy");
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
