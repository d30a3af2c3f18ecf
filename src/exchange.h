/*
 * exchange.h - one request's life, shared by the two files that run it
 * (private to them; the rest of the program sees proxy.h):
 *
 *   proxy.c           the exchange's state, policy, claim, store
 *                     continuations and answers; the entry points from server.c
 *   proxy_upstream.c  the way to the upstream and back: forwarding the head
 *                     and body, the response streamed or buffered, upstream
 *                     errors and timeouts, WebSocket upgrades
 *
 * Every function declared here takes an exchange and may answer it, but
 * never frees it: each entry point (a callback from server.c, upstream.c,
 * store.c or a timer) ends with ex_maybe_free().
 */
#ifndef IDEM_EXCHANGE_H
#define IDEM_EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/util.h>

#include "policy.h"
#include "problem.h"

struct evbuffer;
struct event;
struct http_message;

enum ex_state {
    EX_RECEIVING,
    EX_CLAIMING,
    EX_PARKED,
    EX_CONNECTING,
    EX_WAITING,
    EX_FINISHING,
    EX_DONE
};

struct exchange {
    struct runtime *rt;
    struct config *cfg;
    struct upstream_pool *pool;
    struct store *store; /* the Redis target it began with, held across reloads */
    const struct policy *policy;
    const char *route; /* the matched route's prefix; NULL for the global policy */
    int route_index;   /* into cfg->routes; cfg->nroutes for the global policy (latency.c) */
    struct client *client;
    struct http_message *req;
    char peer[64];
    bool client_tls;  /* X-Forwarded-Proto: https */
    bool client_gone; /* the client left before its answer (access log) */
    bool tunnel;      /* a WebSocket offer passed on: a 101 turns the connection into a tunnel */
    enum ex_state state;

    bool idempotent;  /* the key is claimed or being claimed */
    bool key_pending; /* the key comes from the body: decided when it is complete */
    bool verify_only; /* a method the route does not cover, buffered for its signature */
    bool by_token;    /* the key is a one-time token (SPEC §4.3) */
    bool token_endpoint;
    char *token_key; /* Redis key of the token this request consumes */
    bool degraded;   /* store unreachable, forwarded unprotected (on_store_error pass) */
    bool owns_key;   /* our claim succeeded and nothing released it yet */
    char *key;
    char scope[POLICY_SCOPE_HASH_LEN + 1];
    char fingerprint[POLICY_FINGERPRINT_LEN + 1];     /* as stored: keyed with sealed records */
    char fingerprint_raw[POLICY_FINGERPRINT_LEN + 1]; /* with sealed records: the request's own */
    char *rkey;
    char owner[33];

    struct evbuffer *body; /* idempotent: the whole body; pass: bytes not yet sent */
    size_t body_len;
    uint64_t budgeted; /* bytes of buffered_bytes this exchange holds */
    bool request_complete;

    struct upstream_conn *up;
    char upstream_name[80];
    struct http_message *resp;
    struct evbuffer *resp_body;
    size_t resp_body_len;
    bool streaming; /* the response head went to the client before the end */
    bool paused;    /* upstream reading paused for a slow client */

    struct event *timer; /* upstream_timeout */
    struct event *renew; /* lease renewal every lock_ttl/3 */

    /* Parked duplicate (on_inflight wait): woken by store_watch or its deadline. */
    struct store_watch *watch;
    struct event *wait_timer;
    bool claim_outstanding;
    bool claim_again; /* a wake came while a claim was outstanding */
    int64_t last_pttl_ms;
    uint64_t last_pttl_at;
    int store_ops;

    bool head_sent; /* the request head is in the upstream's output */
    /* What to answer once a release or mark-unknown has landed in Redis. */
    bool then_send_response;
    enum problem_code then_problem;
    bool then_relay; /* after mark_unknown: the upstream's answer, not then_problem */
    /* The lease: surely ours until lease_until_ms (monotonic), counted from
     * when the claim or the last applied renewal was sent. */
    uint64_t lease_until_ms;
    uint64_t renew_sent_ms;
    /* A completion that failed is sent again while the lease lasts. */
    char *record;
    size_t record_len;
    uint64_t complete_retry_ms;
    bool upstream_tls; /* the upstream connection is TLS: a close after close_notify is an end */
    uint64_t t_start;
    uint64_t t_upstream;
    int64_t upstream_ms;
    const char *idem;
    int status;
    uint64_t bytes;
};

/* proxy.c */
void ex_set_state(struct exchange *ex, enum ex_state next);
void ex_maybe_free(struct exchange *ex);
/* The answer is out (or nobody is left to hear it): log and stop timers. */
void ex_finish(struct exchange *ex);
void answer_problem(struct exchange *ex, enum problem_code code, const struct header_list *extra);
bool response_has_no_body(const struct exchange *ex, int status);
void start_client_response(struct exchange *ex, int64_t content_length);
void answer_buffered(struct exchange *ex);
void release_then(struct exchange *ex, bool send_response, enum problem_code problem);
void mark_unknown_then(struct exchange *ex, enum problem_code then);
void store_response(struct exchange *ex);

/* proxy_upstream.c */
/* Takes an upstream connection for the exchange and sends what it has. */
void forward(struct exchange *ex);
/* The whole request is in the upstream's output buffer. */
void request_sent(struct exchange *ex);
/* Writes a piece of a streamed request body, re-framed for the upstream. */
void write_body_piece(struct exchange *ex, struct evbuffer *out, const char *data, size_t len);
/* Lets the upstream's response flow again (a slow client drained, or left). */
void resume_upstream(struct exchange *ex);
void on_upstream_timeout(evutil_socket_t fd, short what, void *arg);

#endif
