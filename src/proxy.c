/*
 * proxy.c - one request's life: an exchange.
 *
 * server.c hands over each request as it is parsed. The exchange decides,
 * with the route's policy, whether idempotency applies, and then runs one of
 * two paths:
 *
 *   pass (not covered, no key, or store down with on_store_error pass):
 *     head --> connect upstream at once --> body streamed --> response streamed
 *
 *   idempotent (covered and keyed):
 *     head --> body buffered (max_request_body) --> claim in Redis
 *       claimed    --> forward --> response buffered (max_cached_body)
 *                                  --> complete / release / mark unknown --> answer
 *       in flight  --> 409 conflict          done, same fingerprint --> replay
 *       unknown    --> 409 outcome-unknown   other fingerprint      --> 422
 *
 * States, each transition through ex_set_state():
 *
 *   RECEIVING -> CLAIMING -> CONNECTING -> WAITING -> FINISHING -> DONE
 *                   |   ^
 *                   v   | woken (pub/sub) or deadline: claim again
 *                  PARKED          (on_inflight wait, SPEC §4.4)
 *
 *   Any state may end in DONE with an answer.
 *
 * The client may leave at any time (proxy_client_gone). Before the request
 * is complete that abandons the exchange; after it, an idempotent exchange
 * runs to the end so that its response is stored and a retry gets the replay.
 * A pass-through exchange whose client left is aborted, as nginx does.
 *
 * Memory: an exchange is freed once it is DONE and no store operation still
 * holds a pointer to it (store_ops == 0); store callbacks always come.
 *
 * The way to the upstream and back (forwarding, the response, upstream
 * errors) is proxy_upstream.c; struct exchange is in exchange.h.
 */
#include "proxy.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "exchange.h"
#include "latency.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "problem.h"
#include "record.h"
#include "seal.h"
#include "server.h"
#include "store.h"
#include "upstream.h"
#include "webhook.h"

#define PASS_BODY_HIGH_WATER (256 * 1024)

/* Bytes of covered request bodies held in memory by every worker, against
 * max_buffered_bodies; each exchange returns what it took when it is freed. */
static _Atomic uint64_t buffered_bytes;

static const char *const ex_state_name[] = {"receiving", "claiming",  "parked", "connecting",
                                            "waiting",   "finishing", "done"};

void ex_finish(struct exchange *ex);
static void on_claimed(void *arg, const struct claim_result *res, const char *error);
static void on_late_claim_released(void *arg, bool applied, const char *error);
static void on_wait_deadline(evutil_socket_t fd, short what, void *arg);

/* ---- state and lifetime ------------------------------------------------- */

void ex_set_state(struct exchange *ex, enum ex_state next)
{
    log_debug("request %s %s key=%s: %s -> %s", ex->peer, ex->req->url, ex->key ? ex->key : "-",
              ex_state_name[ex->state], ex_state_name[next]);
    ex->state = next;
}

static void ex_free(struct exchange *ex)
{
    struct runtime *rt = ex->rt;
    if (ex->up)
        upstream_conn_abort(ex->up);
    /* The timers live in ex's own allocation (ex_new): deleted, not freed. */
    evtimer_del(ex->timer);
    evtimer_del(ex->renew);
    evtimer_del(ex->wait_timer);
    if (ex->body)
        evbuffer_free(ex->body);
    atomic_fetch_sub(&buffered_bytes, ex->budgeted);
    if (ex->resp_body)
        evbuffer_free(ex->resp_body);
    http_message_free(ex->req);
    http_message_free(ex->resp);
    free(ex->key);
    free(ex->record);
    free(ex->rkey);
    free(ex->token_key);
    upstream_pool_unref(ex->pool);
    store_unref(ex->store);
    config_unref(ex->cfg);
    free(ex);
    rt->exchanges--;
    if (rt->draining && rt->on_idle)
        rt->on_idle(rt);
}

void ex_maybe_free(struct exchange *ex)
{
    if (ex->state == EX_DONE && ex->store_ops == 0)
        ex_free(ex);
}

static void log_exchange(struct exchange *ex)
{
    const char *url = ex->req->url ? ex->req->url : "";
    struct access_entry e = {
        .client = ex->peer,
        .method = llhttp_method_name((llhttp_method_t)ex->req->method),
        .path = url,
        .path_len = ex->req->url_len,
        .route = ex->route,
        .status = ex->status,
        .idem = ex->idem,
        .key = ex->key,
        .scope = ex->key ? ex->scope : NULL,
        .upstream = ex->upstream_name[0] ? ex->upstream_name : NULL,
        .upstream_ms = ex->upstream_ms,
        .ms = now_monotonic_ms() - ex->t_start,
        .bytes = ex->bytes,
        .client_gone = ex->client_gone,
    };
    log_access(&e);
    metrics_request(ex->route ? ex->route : "default", ex->idem, ex->status, e.ms);
}

/* An answer begins: a client that closed its side by now may be gone (the
 * access log's client_gone; TCP cannot tell a half-close from a close). */
static void note_client_gone(struct exchange *ex)
{
    if (client_peer_closed(ex->client))
        ex->client_gone = true;
}

/*
 * The answer is out (or nobody is left to hear it): log and stop timers.
 * Never frees: every entry point into this file ends with ex_maybe_free(),
 * so no caller up the stack is left holding a freed exchange.
 */
void ex_finish(struct exchange *ex)
{
    if (ex->state == EX_DONE)
        return;
    if (ex->up) {
        upstream_conn_abort(ex->up);
        ex->up = NULL;
    }
    if (ex->client) {
        /* Nothing complete can be sent any more (the upstream broke mid-body). */
        client_abort(ex->client);
        ex->client = NULL;
    }
    if (ex->watch) {
        store_unwatch(ex->store, ex->watch);
        ex->watch = NULL;
        ex->rt->parked--;
    }
    evtimer_del(ex->timer);
    evtimer_del(ex->renew);
    evtimer_del(ex->wait_timer);
    if (ex->status == 0) /* no answer of ours: what the upstream began, or nothing */
        ex->status = ex->resp ? ex->resp->status : 499;
    ex_set_state(ex, EX_DONE);
    log_exchange(ex);
}

/* ---- answering ---------------------------------------------------------- */

void answer_problem(struct exchange *ex, enum problem_code code, const struct header_list *extra)
{
    ex->status = problem_status(code);
    if (ex->client) {
        struct problem p = {
            .code = code,
            .key = ex->key,
            .body_template = ex->policy ? ex->policy->error_body : ex->cfg->global.error_body,
            .content_type =
                ex->policy ? ex->policy->error_content_type : ex->cfg->global.error_content_type,
        };
        note_client_gone(ex);
        ex->bytes = client_respond_problem(ex->client, &p, extra);
        ex->client = NULL;
    }
    ex_finish(ex);
}

/* A problem with Retry-After: the seconds of pttl_ms (a lease or window
 * left), at least 1. */
static void answer_retry_later(struct exchange *ex, enum problem_code code, int64_t pttl_ms)
{
    struct header_list extra;
    headers_init(&extra);
    char secs[24];
    long long s = pttl_ms > 0 ? (pttl_ms + 999) / 1000 : 1;
    snprintf(secs, sizeof(secs), "%lld", s < 1 ? 1 : s);
    headers_add_cstr(&extra, "Retry-After", secs);
    answer_problem(ex, code, &extra);
    headers_clear(&extra);
}

/* 409 `conflict`: Retry-After is when the first attempt is likely done
 * (latency.c), not the whole lease it holds. */
static void answer_conflict(struct exchange *ex, int64_t lease_left_ms)
{
    int64_t s =
        latency_retry_after(ex->cfg, ex->route_index, ex->policy->lock_ttl_ms, lease_left_ms);
    answer_retry_later(ex, PROBLEM_CONFLICT, s * 1000);
}

bool response_has_no_body(const struct exchange *ex, int status)
{
    return http_response_has_no_body(ex->req->method, status);
}

void start_client_response(struct exchange *ex, int64_t content_length)
{
    struct http_message *resp = ex->resp;
    bool no_body = response_has_no_body(ex, resp->status);
    /* resp's fields are end-to-end already (on_up_head); framing is the client's. */
    if (ex->degraded)
        headers_add_cstr(&resp->headers, "Idempotency-Degraded", "true");
    note_client_gone(ex);
    client_respond_head(ex->client, resp->status, &resp->headers, no_body ? -1 : content_length,
                        no_body);
}

/* Sends the buffered upstream response (or, when streamed, its held-back end). */
void answer_buffered(struct exchange *ex)
{
    ex->status = ex->resp->status;
    if (ex->client && !ex->streaming)
        start_client_response(ex, (int64_t)ex->resp_body_len);
    if (ex->client) {
        size_t n = evbuffer_get_length(ex->resp_body);
        client_respond_body(ex->client, (const char *)evbuffer_pullup(ex->resp_body, -1), n);
    }
    if (ex->client) {
        ex->bytes = client_respond_end(ex->client);
        ex->client = NULL;
    }
    ex_finish(ex);
}

static void answer_replay(struct exchange *ex, const struct record *rec)
{
    ex->status = rec->status;
    ex->idem = "replay";
    if (ex->client == NULL) {
        ex_finish(ex);
        return;
    }
    struct header_list h;
    headers_init(&h);
    for (int i = 0; i < rec->headers.count; i++) {
        const struct header *f = &rec->headers.items[i];
        if (!strn_case_equal(f->name, f->name_len, "Date") &&
            !strn_case_equal(f->name, f->name_len, "Content-Length"))
            headers_add(&h, f->name, f->name_len, f->value, f->value_len);
    }
    char date[64];
    http_date_now(date, sizeof(date));
    headers_add_cstr(&h, "Date", date);
    headers_add_cstr(&h, ex->cfg->replay_header, "true");
    if (rec->body_omitted)
        headers_add_cstr(&h, "Idempotency-Replay", "omitted");
    bool no_body = response_has_no_body(ex, rec->status);
    note_client_gone(ex);
    client_respond_head(ex->client, rec->status, &h, (int64_t)rec->body_len, no_body);
    client_respond_body(ex->client, rec->body, rec->body_len);
    ex->bytes = client_respond_end(ex->client);
    ex->client = NULL;
    headers_clear(&h);
    ex_finish(ex);
}

/* ---- store continuations ------------------------------------------------ */

/* How long after its lease an owner's change is still sent again (at most
 * unknown_ttl): the process keeps the exchange, response included, in
 * memory meanwhile. */
#define OWNER_LATE_MAX_MS (5 * 60 * 1000)

/*
 * A Redis that failed to answer (a timeout, a lost connection, a failover)
 * may well take the owner's change of the key (its completion, or its
 * release) a moment later, and a new primary has the claim with the same
 * owner token (SPEC §8), so the change is sent again (250 ms, doubling to
 * 2 s). Past the lease the key reads as unknown, but it still holds our
 * token until unknown_ttl has passed, so a late change still lands (SPEC
 * §4.6): it is sent while the lease lasts and OWNER_LATE_MAX_MS after.
 * Returns whether `again` was scheduled; the exchange lives until it runs.
 */
static bool retry_owner_change(struct exchange *ex, const char *what, const char *error,
                               event_callback_fn again)
{
    uint64_t now = now_monotonic_ms();
    uint64_t delay = ex->complete_retry_ms ? ex->complete_retry_ms * 2 : 250;
    delay = delay > 2000 ? 2000 : delay;
    uint64_t late = ex->policy->unknown_ttl_ms < OWNER_LATE_MAX_MS ? ex->policy->unknown_ttl_ms
                                                                   : OWNER_LATE_MAX_MS;
    uint64_t until = ex->lease_until_ms + late;
    if (now + delay + 100 >= until) {
        log_error("request %s key=%s: %s failed (%s) until the lease ran out and beyond; the key "
                  "reads unknown until unknown_ttl passes, then a retry executes again",
                  ex->peer, ex->key, what, error);
        return false;
    }
    if (ex->complete_retry_ms == 0) /* the first time; the rest at debug */
        log_warn("request %s key=%s: %s failed (%s); sending it again (%llu ms more at most)",
                 ex->peer, ex->key, what, error, (unsigned long long)(until - now));
    else
        log_debug("request %s key=%s: %s failed again (%s)", ex->peer, ex->key, what, error);
    ex->complete_retry_ms = delay;
    ex->store_ops++; /* held by the timer: the exchange lives until it fires */
    evtimer_assign(ex->wait_timer, ex->rt->base, again, ex);
    struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)(delay % 1000) * 1000};
    evtimer_add(ex->wait_timer, &tv);
    return true;
}

static void send_release(struct exchange *ex);

static void on_release_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct exchange *ex = arg;
    ex->store_ops--; /* the timer's hold becomes the operation's */
    send_release(ex);
}

/* The client is answered at the first attempt; a release that failed is
 * sent again, or the key would read unknown for unknown_ttl though nothing
 * was executed. */
static void on_released_then_answer(void *arg, bool applied, const char *error)
{
    struct exchange *ex = arg;
    ex->store_ops--;
    if (!error && !applied && ex->complete_retry_ms == 0) {
        log_warn("request %s key=%s: lease was lost before release", ex->peer, ex->key);
        metrics_lease_lost();
    }
    bool first = ex->state != EX_DONE;
    if (first && ex->then_send_response)
        answer_buffered(ex); /* ends the exchange's timers: the retry's is armed after */
    else if (first)
        answer_problem(ex, ex->then_problem, NULL);
    if (error)
        retry_owner_change(ex, "releasing the key", error, on_release_retry);
    ex_maybe_free(ex);
}

static void send_release(struct exchange *ex)
{
    ex->store_ops++;
    store_release(ex->store, ex->rkey, ex->owner, ex->token_key, ex->cfg->token_ttl_ms,
                  on_released_then_answer, ex);
}

/* Releases the key; then answers with the buffered response or a problem. */
void release_then(struct exchange *ex, bool send_response, enum problem_code problem)
{
    ex->then_send_response = send_response;
    ex->then_problem = problem;
    ex->owns_key = false;
    ex_set_state(ex, EX_FINISHING);
    send_release(ex);
}

static void on_unknown_then_answer(void *arg, bool applied, const char *error)
{
    struct exchange *ex = arg;
    ex->store_ops--;
    if (error)
        log_error("request %s key=%s: cannot mark the outcome unknown (%s); the key stays "
                  "locked until its lease expires",
                  ex->peer, ex->key, error);
    else if (!applied)
        log_warn("request %s key=%s: lease was lost before the outcome was recorded", ex->peer,
                 ex->key);
    if (ex->then_relay)
        answer_buffered(ex);
    else if (ex->streaming || ex->client == NULL)
        ex_finish(ex);
    else
        answer_problem(ex, ex->then_problem, NULL);
    ex_maybe_free(ex);
}

/*
 * The upstream may or may not have executed the request: block the key for
 * unknown_ttl. When it surely executed (its answer came, but cannot be
 * stored as whole), for at least as long as an answer would have been kept.
 */
void mark_unknown_then(struct exchange *ex, enum problem_code then)
{
    ex->then_problem = then;
    ex->owns_key = false;
    ex_set_state(ex, EX_FINISHING);
    ex->store_ops++;
    uint64_t ms = ex->then_relay && ex->policy->ttl_ms > ex->policy->unknown_ttl_ms
                      ? ex->policy->ttl_ms
                      : ex->policy->unknown_ttl_ms;
    store_mark_unknown(ex->store, ex->rkey, ex->owner, ex->fingerprint, ms, on_unknown_then_answer,
                       ex);
}

static void send_complete(struct exchange *ex);

static void on_complete_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct exchange *ex = arg;
    ex->store_ops--; /* the timer's hold becomes the operation's */
    send_complete(ex);
}

/* The client has its answer at the first attempt either way. */
static void on_completed(void *arg, bool applied, const char *error)
{
    struct exchange *ex = arg;
    ex->store_ops--;
    if (!error && !applied && ex->complete_retry_ms != 0)
        log_info("request %s key=%s: the response was not stored again: an earlier attempt "
                 "stored it, or the key was freed meanwhile",
                 ex->peer, ex->key);
    else if (!error && !applied) {
        log_warn("request %s key=%s: lease was lost (expired and taken); response not stored",
                 ex->peer, ex->key);
        metrics_lease_lost();
    }
    if (ex->state != EX_DONE)
        answer_buffered(ex); /* ends the exchange's timers: the retry's is armed after */
    if (error)
        retry_owner_change(ex, "storing the response", error, on_complete_retry);
    ex_maybe_free(ex);
}

static void send_complete(struct exchange *ex)
{
    ex->store_ops++;
    store_complete(ex->store, ex->rkey, ex->owner, ex->fingerprint, ex->record, ex->record_len,
                   ex->policy->ttl_ms, on_completed, ex);
}

void store_response(struct exchange *ex)
{
    size_t len;
    const char *body = ex->streaming ? "" : (const char *)evbuffer_pullup(ex->resp_body, -1);
    size_t body_len = ex->streaming ? 0 : ex->resp_body_len;
    char *rec = record_encode(ex->resp->status, ex->streaming, &ex->resp->headers, body ? body : "",
                              body_len, &len);
    ex->owns_key = false;
    ex_set_state(ex, EX_FINISHING);
    if (rec == NULL) {
        /* The upstream executed: a retry must not run it again. */
        log_error("request %s key=%s: response cannot be encoded; the key is marked unknown",
                  ex->peer, ex->key);
        ex->then_relay = true;
        mark_unknown_then(ex, PROBLEM_UPSTREAM_UNAVAILABLE);
        return;
    }
    if (ex->cfg->record_keys.n > 0) {
        char *sealed = seal_record(&ex->cfg->record_keys, ex->rkey, ex->fingerprint,
                                   POLICY_FINGERPRINT_LEN, rec, len, &len);
        free(rec);
        if (sealed == NULL) {
            log_error("request %s key=%s: response cannot be sealed (OpenSSL); the key is "
                      "marked unknown",
                      ex->peer, ex->key);
            ex->then_relay = true;
            mark_unknown_then(ex, PROBLEM_UPSTREAM_UNAVAILABLE);
            return;
        }
        rec = sealed;
    }
    ex->record = rec;
    ex->record_len = len;
    send_complete(ex);
}

static void on_renewed(void *arg, bool applied, const char *error)
{
    struct exchange *ex = arg;
    ex->store_ops--;
    if (applied)
        ex->lease_until_ms = ex->renew_sent_ms + ex->policy->lock_ttl_ms;
    if (error && ex->owns_key && (ex->state == EX_CONNECTING || ex->state == EX_WAITING)) {
        /* Again soon, not in lock_ttl/3: the lease runs out meanwhile. */
        uint64_t ms = ex->policy->lock_ttl_ms / 10 < 1000 ? ex->policy->lock_ttl_ms / 10 : 1000;
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
        evtimer_add(ex->renew, &tv);
    }
    if (error)
        log_warn("request %s key=%s: lease renewal failed: %s", ex->peer, ex->key, error);
    else if (!applied) {
        log_warn("request %s key=%s: lease lost while the upstream works; the response will "
                 "not be stored",
                 ex->peer, ex->key);
        metrics_lease_lost();
    }
    ex_maybe_free(ex);
}

static void on_late_claim_released(void *arg, bool applied, const char *error)
{
    struct exchange *ex = arg;
    (void)applied;
    ex->store_ops--;
    if (error)
        log_warn("request %s key=%s: giving back a late claim failed (%s); the key frees "
                 "itself after lock_ttl",
                 ex->peer, ex->key, error);
    ex_maybe_free(ex);
}

static void arm_renew(struct exchange *ex)
{
    uint64_t ms = ex->policy->lock_ttl_ms / 3;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(ex->renew, &tv);
}

static void on_renew_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct exchange *ex = arg;
    if (!ex->owns_key || (ex->state != EX_CONNECTING && ex->state != EX_WAITING))
        return;
    ex->store_ops++;
    ex->renew_sent_ms = now_monotonic_ms();
    store_renew(ex->store, ex->rkey, ex->owner, ex->policy->lock_ttl_ms, ex->policy->unknown_ttl_ms,
                on_renewed, ex);
    arm_renew(ex);
}

/* ---- claim -------------------------------------------------------------- */

/*
 * The stored record of a done key, opened when records are sealed (SPEC
 * §10). A record that does not open is never replayed, nor run again: the
 * client gets 503 and the operator an error line. Returns the bytes to
 * decode (*opened, malloc'd, when they had to be opened), or NULL when it
 * answered.
 */
static const char *stored_record(struct exchange *ex, const struct claim_result *res, size_t *len,
                                 char **opened)
{
    const struct seal_keys *keys = &ex->cfg->record_keys;
    uint8_t id[SEAL_KEY_ID_LEN] = {0};
    char id_hex[2 * SEAL_KEY_ID_LEN + 1];
    const char *why;
    *opened = NULL;
    *len = res->record_len;
    if (keys->n == 0 && !seal_is_sealed(res->record, res->record_len))
        return res->record;
    switch (seal_open(keys, ex->rkey, res->fingerprint, res->fingerprint_len, res->record,
                      res->record_len, opened, len, id)) {
    case SEAL_OPENED: return *opened;
    case SEAL_NOT_SEALED: why = "is not sealed although record_encryption_key_file is set"; break;
    case SEAL_UNKNOWN_KEY:
        why = keys->n == 0 ? "is sealed and no record_encryption_key_file is set"
                           : "is sealed with a key no record_encryption_key_file holds";
        break;
    default: why = "fails authentication (changed in Redis, or stored under another key)"; break;
    }
    hex_encode(id, SEAL_KEY_ID_LEN, id_hex);
    bool sealed = seal_is_sealed(res->record, res->record_len);
    log_error("request %s key=%s: the stored response in %s %s%s%s; not replayed, answering 503",
              ex->peer, ex->key, ex->rkey, why, sealed ? ", key id " : "", sealed ? id_hex : "");
    ex->idem = "store_error";
    answer_problem(ex, PROBLEM_STORE_UNAVAILABLE, NULL);
    return NULL;
}

/*
 * Whether the fingerprint stored with the key is this request's. With
 * sealed records it is keyed (seal_fingerprint): under the sealing key, or
 * an older one during a rotation; or in clear, stored before sealing was
 * switched on (such a record is still refused by stored_record()).
 */
static bool same_request(const struct exchange *ex, const struct claim_result *res)
{
    const struct seal_keys *keys = &ex->cfg->record_keys;
    if (res->fingerprint_len != POLICY_FINGERPRINT_LEN)
        return false;
    if (memcmp(res->fingerprint, ex->fingerprint, POLICY_FINGERPRINT_LEN) == 0)
        return true;
    if (keys->n == 0)
        return false;
    if (memcmp(res->fingerprint, ex->fingerprint_raw, POLICY_FINGERPRINT_LEN) == 0)
        return true;
    for (int i = 1; i < keys->n; i++) {
        char fp[POLICY_FINGERPRINT_LEN + 1];
        seal_fingerprint(&keys->keys[i], ex->fingerprint_raw, fp);
        if (memcmp(res->fingerprint, fp, POLICY_FINGERPRINT_LEN) == 0)
            return true;
    }
    return false;
}

static void answer_done(struct exchange *ex, const struct claim_result *res)
{
    struct record rec;
    char *opened;
    size_t len;
    const char *stored = stored_record(ex, res, &len, &opened);
    if (stored == NULL)
        return;
    int decoded = record_decode(stored, len, &rec);
    free(opened);
    if (decoded != IDEM_OK) {
        log_error("request %s key=%s: stored record is unreadable; answering 409", ex->peer,
                  ex->key);
        ex->idem = "reject";
        answer_retry_later(ex, PROBLEM_CONFLICT, res->pttl_ms);
        return;
    }
    if (ex->policy->on_duplicate == ON_DUPLICATE_REJECT) {
        struct header_list extra;
        headers_init(&extra);
        char status[8];
        snprintf(status, sizeof(status), "%d", rec.status);
        headers_add_cstr(&extra, "Idempotency-Original-Status", status);
        ex->idem = "reject";
        answer_problem(ex, PROBLEM_ALREADY_COMPLETED, &extra);
        headers_clear(&extra);
    } else {
        answer_replay(ex, &rec);
    }
    record_free(&rec);
}

static void send_claim(struct exchange *ex)
{
    const struct config *cfg = ex->cfg;
    struct claim_request req = {
        .rkey = ex->rkey,
        .fingerprint = ex->fingerprint,
        .owner = ex->owner,
        .lock_ttl_ms = ex->policy->lock_ttl_ms,
        .unknown_ttl_ms = ex->policy->unknown_ttl_ms,
        .will_wait = ex->policy->on_inflight == ON_INFLIGHT_WAIT,
        .token_key = ex->token_key,
    };
    char *quota_key = NULL;
    if (cfg->max_keys_per_scope > 0) {
        /* "<prefix>quota:<scope>": one counter of new keys per tenant */
        size_t n = strlen(cfg->key_prefix) + 6 + strlen(ex->scope) + 1;
        quota_key = xmalloc(n);
        snprintf(quota_key, n, "%squota:%s", cfg->key_prefix, ex->scope);
        req.quota_key = quota_key;
        req.max_keys = (uint64_t)cfg->max_keys_per_scope;
        req.quota_window_ms = cfg->global.ttl_ms;
    }
    ex->claim_outstanding = true;
    ex->store_ops++;
    ex->lease_until_ms = now_monotonic_ms() + ex->policy->lock_ttl_ms; /* if it claims */
    store_claim(ex->store, &req, on_claimed, ex);                      /* copies what it sends */
    free(quota_key);
}

/* The lease left now, from the last time Redis told us. */
static int64_t wait_pttl_left(const struct exchange *ex)
{
    int64_t elapsed = (int64_t)(now_monotonic_ms() - ex->last_pttl_at);
    return ex->last_pttl_ms > elapsed ? ex->last_pttl_ms - elapsed : 1;
}

static void on_wake(void *arg)
{
    struct exchange *ex = arg;
    if (ex->state != EX_PARKED)
        return;
    if (ex->claim_outstanding)
        ex->claim_again = true;
    else
        send_claim(ex);
}

static void on_wait_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct exchange *ex = arg;
    log_info("request %s key=%s: still in flight after on_inflight wait; answering 409", ex->peer,
             ex->key);
    ex->idem = "inflight";
    answer_conflict(ex, wait_pttl_left(ex));
    ex_maybe_free(ex);
}

/* The key is in flight elsewhere: wait for its announcement (SPEC §4.4). */
static void park(struct exchange *ex)
{
    if (ex->watch != NULL)
        return; /* woken, claimed again, still in flight: keep waiting */
    ex_set_state(ex, EX_PARKED);
    ex->rt->parked++;
    ex->watch = store_watch(ex->store, ex->rkey, on_wake, ex);
    uint64_t ms = ex->policy->inflight_wait_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(ex->wait_timer, &tv);
    /* The first attempt may have finished between our claim and the watch:
     * look once more now that any later announcement will reach us. */
    send_claim(ex);
}

static void answer_store_unavailable(struct exchange *ex)
{
    struct header_list extra;
    headers_init(&extra);
    headers_add_cstr(&extra, "Retry-After", "1");
    answer_problem(ex, PROBLEM_STORE_UNAVAILABLE, &extra);
    headers_clear(&extra);
}

static void on_store_unavailable(struct exchange *ex, const char *error)
{
    ex->idem = "store_error";
    if (ex->rt->cfg->on_store_error == ON_STORE_ERROR_PASS) {
        log_warn("request %s key=%s: store unavailable (%s); forwarding UNPROTECTED "
                 "(on_store_error pass)",
                 ex->peer, ex->key, error);
        ex->degraded = true;
        ex->idempotent = false;
        forward(ex);
        return;
    }
    log_warn("request %s key=%s: store unavailable (%s); answering 503 (on_store_error reject)",
             ex->peer, ex->key, error);
    answer_store_unavailable(ex);
}

static void handle_claim(struct exchange *ex, const struct claim_result *res)
{
    if (res->state == KEY_STATE_TOKEN_INVALID) {
        ex->idem = "token_invalid";
        answer_problem(ex, PROBLEM_TOKEN_INVALID, NULL);
    } else if (res->state == KEY_STATE_REPLICAS_SHORT) {
        /* Redis answers, but a failover could lose the claim: never
         * forwarded, whatever on_store_error says (the store logs it). */
        ex->idem = "store_error";
        log_info("request %s key=%s: claim not confirmed by redis_min_replicas replicas; "
                 "answering 503",
                 ex->peer, ex->key);
        answer_store_unavailable(ex);
    } else if (res->state == KEY_STATE_QUOTA) {
        ex->idem = "quota";
        log_info("request %s key=%s: scope %s has max_keys_per_scope (%d) keys; answering 429",
                 ex->peer, ex->key, ex->scope, ex->cfg->max_keys_per_scope);
        answer_retry_later(ex, PROBLEM_QUOTA_EXCEEDED, res->pttl_ms);
    } else if (res->state == KEY_STATE_CLAIMED) {
        if (ex->watch) {
            store_unwatch(ex->store, ex->watch);
            ex->watch = NULL;
            ex->rt->parked--;
            evtimer_del(ex->wait_timer);
        }
        ex->owns_key = true;
        ex->idem = "miss";
        arm_renew(ex);
        forward(ex);
    } else if (!same_request(ex, res) &&
               !(res->state == KEY_STATE_DONE &&
                 seal_key_missing(&ex->cfg->record_keys, res->record, res->record_len))) {
        /* (a record sealed under a key since removed has its fingerprint
         * keyed with it too: that is answer_done's 503, not a mismatch) */
        ex->idem = "mismatch";
        answer_problem(ex, PROBLEM_FINGERPRINT_MISMATCH, NULL);
    } else if (res->state == KEY_STATE_INFLIGHT) {
        ex->last_pttl_ms = res->pttl_ms;
        ex->last_pttl_at = now_monotonic_ms();
        if (ex->policy->on_inflight == ON_INFLIGHT_WAIT) {
            park(ex);
            return;
        }
        ex->idem = "inflight";
        answer_conflict(ex, res->pttl_ms);
    } else if (res->state == KEY_STATE_UNKNOWN) {
        ex->idem = "unknown";
        answer_retry_later(ex, PROBLEM_OUTCOME_UNKNOWN, res->pttl_ms);
    } else {
        answer_done(ex, res);
    }
}

static void on_claimed(void *arg, const struct claim_result *res, const char *error)
{
    struct exchange *ex = arg;
    ex->store_ops--;
    ex->claim_outstanding = false;
    if (ex->state == EX_DONE) {
        /* Answered meanwhile (wait deadline, client gone). A claim that won
         * the key must give it back, or it would stay locked for lock_ttl. */
        if (res && res->state == KEY_STATE_CLAIMED) {
            ex->store_ops++;
            store_release(ex->store, ex->rkey, ex->owner, ex->token_key, ex->cfg->token_ttl_ms,
                          on_late_claim_released, ex);
        }
    } else if (error && ex->watch) {
        /* This key was seen in flight: forwarding it now, unprotected, could
         * run it twice. The promise wins over on_store_error pass. */
        log_warn("request %s key=%s: store unavailable while waiting (%s); answering 409", ex->peer,
                 ex->key, error);
        ex->idem = "inflight";
        answer_conflict(ex, wait_pttl_left(ex));
    } else if (error) {
        on_store_unavailable(ex, error);
    } else {
        handle_claim(ex, res);
        if (ex->state == EX_PARKED && ex->claim_again && !ex->claim_outstanding) {
            ex->claim_again = false;
            send_claim(ex);
        }
    }
    ex_maybe_free(ex);
}

static void request_view(const struct exchange *ex, struct request_view *v)
{
    const char *url = ex->req->url ? ex->req->url : "";
    const char *q = memchr(url, '?', ex->req->url_len);
    memset(v, 0, sizeof(*v));
    v->method = ex->req->method;
    v->method_name = llhttp_method_name((llhttp_method_t)ex->req->method);
    v->path = url;
    v->path_len = q ? (size_t)(q - url) : ex->req->url_len;
    v->query = q ? q + 1 : NULL;
    v->query_len = q ? ex->req->url_len - (size_t)(q - url) - 1 : 0;
    v->headers = &ex->req->headers;
    if (ex->body) {
        v->body_len = evbuffer_get_length(ex->body);
        v->body = (const char *)evbuffer_pullup(ex->body, -1);
    }
}

static void claim(struct exchange *ex)
{
    struct request_view v;
    request_view(ex, &v);
    policy_scope(ex->policy, &v, ex->scope);
    policy_fingerprint(ex->policy, &v, ex->fingerprint);
    if (ex->cfg->record_keys.n > 0) { /* stored keyed: Redis may be read by others */
        memcpy(ex->fingerprint_raw, ex->fingerprint, sizeof(ex->fingerprint_raw));
        seal_fingerprint(&ex->cfg->record_keys.keys[0], ex->fingerprint_raw, ex->fingerprint);
    }
    const char *ns =
        ex->cfg->key_namespace == KEY_NAMESPACE_ROUTE ? (ex->route ? ex->route : "") : NULL;
    bool tagged = ex->cfg->ncluster_seeds > 0; /* a cluster: one slot per key and its token */
    ex->rkey = policy_record_key(ex->cfg->key_prefix, ex->scope, ns, ex->key, tagged);
    if (ex->by_token)
        ex->token_key = policy_token_key(ex->cfg->key_prefix, ex->scope, ex->key, tagged);
    if (store_random_token(ex->owner) != IDEM_OK) {
        log_error("request %s: no randomness for an owner token", ex->peer);
        answer_problem(ex, PROBLEM_STORE_UNAVAILABLE, NULL);
        return;
    }
    ex_set_state(ex, EX_CLAIMING);
    send_claim(ex);
}

/* ---- one-time tokens (SPEC §4.3) ---------------------------------------- */

static void on_token_stored(void *arg, bool applied, const char *error)
{
    struct exchange *ex = arg;
    (void)applied;
    ex->store_ops--;
    if (error) {
        log_warn("request %s: cannot store a new token: %s; answering 503", ex->peer, error);
        ex->idem = "store_error";
        answer_retry_later(ex, PROBLEM_STORE_UNAVAILABLE, 1000);
        ex_maybe_free(ex);
        return;
    }
    char body[160];
    int n = snprintf(body, sizeof(body), "{\"token\":\"%s\",\"expires_in\":%llu}\n", ex->key,
                     (unsigned long long)(ex->cfg->token_ttl_ms / 1000));
    ex->status = 201;
    if (ex->client) {
        struct header_list h;
        headers_init(&h);
        char date[64];
        http_date_now(date, sizeof(date));
        headers_add_cstr(&h, "Date", date);
        headers_add_cstr(&h, "Content-Type", "application/json");
        headers_add_cstr(&h, "Cache-Control", "no-store");
        headers_add_cstr(&h, ex->cfg->token_header, ex->key);
        client_respond_head(ex->client, 201, &h, n, false);
        client_respond_body(ex->client, body, (size_t)n);
        ex->bytes = client_respond_end(ex->client);
        ex->client = NULL;
        headers_clear(&h);
    }
    ex_finish(ex);
    ex_maybe_free(ex);
}

/* POST <token_endpoint>: a fresh 128-bit token in the caller's scope. */
static void issue_token(struct exchange *ex)
{
    ex->idem = "token";
    if (ex->req->method != HTTP_POST) {
        struct header_list extra;
        headers_init(&extra);
        headers_add_cstr(&extra, "Allow", "POST");
        answer_problem(ex, PROBLEM_METHOD_NOT_ALLOWED, &extra);
        headers_clear(&extra);
        return;
    }
    char token[33];
    if (store_random_token(token) != IDEM_OK) {
        answer_problem(ex, PROBLEM_STORE_UNAVAILABLE, NULL);
        return;
    }
    struct request_view v;
    request_view(ex, &v);
    policy_scope(ex->policy, &v, ex->scope);
    ex->key = xstrdup(token);
    ex->token_key =
        policy_token_key(ex->cfg->key_prefix, ex->scope, token, ex->cfg->ncluster_seeds > 0);
    ex->store_ops++;
    store_new_token(ex->store, ex->token_key, ex->cfg->token_ttl_ms, on_token_stored, ex);
}

/* ---- entry points from server.c ----------------------------------------- */

static struct exchange *ex_new(struct runtime *rt, struct client *c, struct http_message *req)
{
    /* One allocation for the exchange and its three timers. */
    size_t event_size = event_get_struct_event_size();
    struct exchange *ex = xcalloc(1, sizeof(*ex) + 3 * event_size);
    ex->timer = (struct event *)(ex + 1);
    ex->renew = (struct event *)((char *)ex->timer + event_size);
    ex->wait_timer = (struct event *)((char *)ex->renew + event_size);
    evtimer_assign(ex->timer, rt->base, on_upstream_timeout, ex);
    evtimer_assign(ex->renew, rt->base, on_renew_timer, ex);
    evtimer_assign(ex->wait_timer, rt->base, on_wait_deadline, ex);
    ex->rt = rt;
    ex->cfg = config_ref(rt->cfg);
    ex->store = store_ref(rt->store);
    ex->pool = rt->pool;
    upstream_pool_ref(ex->pool);
    ex->client = c;
    ex->req = req;
    copy_cstr(ex->peer, sizeof(ex->peer), client_peer(c));
    ex->client_tls = client_tls(c);
    ex->t_start = now_monotonic_ms();
    ex->upstream_ms = -1;
    ex->state = EX_RECEIVING;
    rt->exchanges++;
    if (req->url == NULL) {
        req->url = xstrdup("/");
        req->url_len = 1;
    }
    return ex;
}

/* Returns NULL when the request was answered at once. */
static struct exchange *begin_pass(struct exchange *ex, const char *idem)
{
    ex->idem = idem;
    if (ex->body == NULL)
        ex->body = evbuffer_new();
    forward(ex);
    return ex;
}

/*
 * Takes n bytes of the process-wide budget for buffered bodies
 * (max_buffered_bodies), or answers 503 `overloaded` and returns false: a
 * flood of slow, large covered bodies must not grow the process without
 * bound. The exchange gives back what it took when it is freed.
 */
static bool take_budget(struct exchange *ex, uint64_t n)
{
    uint64_t total = atomic_fetch_add(&buffered_bytes, n) + n;
    if (total <= ex->cfg->max_buffered_bodies) {
        ex->budgeted += n;
        return true;
    }
    atomic_fetch_sub(&buffered_bytes, n);
    log_warn("request %s: covered bodies in memory would exceed max_buffered_bodies "
             "(%zu bytes); answering 503",
             ex->peer, ex->cfg->max_buffered_bodies);
    ex->idem = "overloaded";
    answer_retry_later(ex, PROBLEM_OVERLOADED, 1000);
    return false;
}

/* A policy whose only key source is the token header (require_token on). */
static const struct policy token_only_policy = {
    .keys = {{.kind = KEY_SOURCE_TOKEN}},
    .nkeys = 1,
};

/*
 * Finds the request's key and sets the exchange on its path: idempotent, or
 * pass-through without a key. Returns false when it answered (400).
 */
static bool decide_key(struct exchange *ex)
{
    const struct policy *p = ex->policy;
    struct request_view v;
    request_view(ex, &v);
    v.token_header = ex->cfg->token_header;
    enum key_source_kind kind = KEY_SOURCE_NONE;
    enum key_result r =
        policy_extract_key_from(p->require_token ? &token_only_policy : p, &v, &ex->key, &kind);
    ex->by_token = kind == KEY_SOURCE_TOKEN;
    if (r == KEY_FOUND) {
        ex->idempotent = true;
        return true;
    }
    if (p->require_token || (r == KEY_INVALID && ex->by_token)) {
        ex->idem = "token_invalid";
        answer_problem(ex, PROBLEM_TOKEN_INVALID, NULL);
        return false;
    }
    if (r == KEY_INVALID) {
        ex->idem = "invalid";
        answer_problem(ex, PROBLEM_INVALID_KEY, NULL);
        return false;
    }
    if (p->require_key) {
        ex->idem = "nokey";
        answer_problem(ex, PROBLEM_MISSING_KEY, NULL);
        return false;
    }
    ex->idem = "nokey";
    return true;
}

/*
 * A covered body must read one way for idemproxy and the application: one
 * Content-Type (several: 400), and, where the key is in the body, no
 * Content-Encoding (415): a key idemproxy cannot see in a gzipped body is
 * one the application still finds, and runs again. Returns false when it
 * answered.
 */
static bool body_readable(struct exchange *ex)
{
    const struct header_list *h = &ex->req->headers;
    if (headers_count(h, "Content-Type") > 1) {
        ex->idem = "invalid";
        answer_problem(ex, PROBLEM_BAD_REQUEST, NULL);
        return false;
    }
    if (!policy_key_needs_body(ex->policy))
        return true;
    for (int i = 0; i < h->count; i++) {
        const struct header *f = &h->items[i];
        size_t n;
        const char *v = trim_ows(f->value, f->value_len, &n);
        if (strn_case_equal(f->name, f->name_len, "Content-Encoding") &&
            !strn_case_equal(v, n, "identity")) {
            ex->idem = "invalid";
            answer_problem(ex, PROBLEM_UNSUPPORTED_ENCODING, NULL);
            return false;
        }
    }
    return true;
}

/*
 * The sender's signature over the whole request (SPEC §11), checked before
 * the key is read: a forgery is answered 401 and neither claims its key nor
 * reaches the upstream. Returns false when it answered.
 */
static bool signature_valid(struct exchange *ex)
{
    const struct webhook_verifier *v = ex->policy->verify;
    if (v == NULL)
        return true;
    size_t len = evbuffer_get_length(ex->body);
    const char *body = len ? (const char *)evbuffer_pullup(ex->body, -1) : "";
    enum webhook_result r = webhook_verify(v, &ex->req->headers, body, len, (int64_t)time(NULL));
    if (r == WEBHOOK_VALID)
        return true;
    log_info("request %s route %s: %s webhook signature %s; not claimed, not forwarded", ex->peer,
             ex->route ? ex->route : "(global)", webhook_scheme_name(v->scheme),
             webhook_result_phrase(r));
    ex->idem = "signature_invalid";
    answer_problem(ex, PROBLEM_SIGNATURE_INVALID, NULL);
    return false;
}

static bool is_token_endpoint(const struct exchange *ex, size_t path_len)
{
    const char *ep = ex->cfg->token_endpoint;
    if (ep == NULL || strlen(ep) != path_len)
        return false;
    return (ex->cfg->route_case == ROUTE_CASE_INSENSITIVE
                ? strncasecmp(ep, ex->req->url, path_len)
                : memcmp(ep, ex->req->url, path_len)) == 0;
}

struct exchange *proxy_begin(struct runtime *rt, struct client *c, struct http_message *req)
{
    struct exchange *ex = ex_new(rt, c, req);
    const char *url = req->url;
    const char *q = memchr(url, '?', req->url_len);
    size_t path_len = q ? (size_t)(q - url) : req->url_len;
    const struct route *route = config_route_for(ex->cfg, url, path_len);
    ex->policy = route ? &route->policy : &ex->cfg->global;
    ex->route = route ? route->prefix : NULL;
    ex->route_index = route ? (int)(route - ex->cfg->routes) : ex->cfg->nroutes;

    if (is_token_endpoint(ex, path_len)) {
        ex->token_endpoint = true; /* answered when the request is complete */
        return ex;
    }
    if (!policy_covers(ex->policy, req->method)) {
        if (ex->policy->verify == NULL)
            return begin_pass(ex, "bypass");
        /* Not idempotent, but signed: nothing reaches the upstream unchecked. */
        ex->idem = "bypass";
        ex->verify_only = true;
    } else if (!body_readable(ex)) {
        ex_maybe_free(ex);
        return NULL;
    }
    ex->body = evbuffer_new();
    /* Buffered like a covered body, decided at the end: the key is in the
     * body, or the signature covers it (SPEC §11: nothing goes upstream,
     * keyed or not, before it is checked). */
    if (ex->policy->verify != NULL ||
        (policy_key_needs_body(ex->policy) && !ex->policy->require_token))
        ex->key_pending = true;
    else if (!decide_key(ex)) {
        ex_maybe_free(ex);
        return NULL;
    }
    if (!ex->idempotent && !ex->key_pending) {
        forward(ex); /* no key: stream it */
        return ex;
    }
    /* The body will be buffered: refuse at once what cannot fit. */
    if (req->has_content_length && req->content_length > ex->policy->max_request_body) {
        ex->idem = "too_large";
        answer_problem(ex, PROBLEM_PAYLOAD_TOO_LARGE, NULL);
        ex_maybe_free(ex);
        return NULL;
    }
    /* A declared length is reserved before any of it arrives. */
    if (req->has_content_length && !take_budget(ex, req->content_length)) {
        ex_maybe_free(ex);
        return NULL;
    }
    return ex;
}

bool proxy_streams_request(const struct exchange *ex)
{
    return !ex->idempotent && !ex->key_pending && !ex->token_endpoint;
}

bool proxy_request_body(struct exchange *ex, const char *data, size_t len)
{
    ex->body_len += len;
    if (ex->token_endpoint)
        return true; /* the token endpoint ignores bodies */
    if (ex->idempotent || ex->key_pending) {
        if (ex->body_len > ex->policy->max_request_body) {
            ex->idem = "too_large";
            answer_problem(ex, PROBLEM_PAYLOAD_TOO_LARGE, NULL);
            ex_maybe_free(ex);
            return false;
        }
        if (ex->body_len > ex->budgeted && !take_budget(ex, ex->body_len - ex->budgeted)) {
            ex_maybe_free(ex);
            return false;
        }
        evbuffer_add(ex->body, data, len);
        return true;
    }
    struct evbuffer *out = ex->head_sent ? upstream_conn_output(ex->up) : ex->body;
    if (ex->head_sent)
        write_body_piece(ex, out, data, len);
    else
        evbuffer_add(out, data, len);
    /* The upstream (or its connect) is slower than the client: stop reading. */
    if (evbuffer_get_length(out) > PASS_BODY_HIGH_WATER && ex->client)
        client_set_reading(ex->client, false);
    return true;
}

void proxy_request_complete(struct exchange *ex)
{
    ex->request_complete = true;
    if (ex->token_endpoint) {
        issue_token(ex);
        ex_maybe_free(ex);
        return;
    }
    if (ex->key_pending) {
        ex->key_pending = false;
        if (!signature_valid(ex) || (!ex->verify_only && !decide_key(ex))) {
            ex_maybe_free(ex);
            return;
        }
        if (!ex->idempotent) {
            forward(ex); /* no key in the body: pass it on as it is */
            return;
        }
    }
    if (ex->idempotent) {
        claim(ex);
        ex_maybe_free(ex);
        return;
    }
    /* Pass-through: the head may already be upstream. */
    if (ex->head_sent)
        request_sent(ex);
}

void proxy_client_gone(struct exchange *ex)
{
    ex->client = NULL;
    ex->client_gone = true;
    if (ex->state == EX_DONE)
        return;
    if (!ex->request_complete || !ex->idempotent || ex->degraded || ex->state == EX_PARKED) {
        log_info("request %s key=%s: client went away; abandoning the request", ex->peer,
                 ex->key ? ex->key : "-");
        ex->status = 499;
        ex_finish(ex);
        ex_maybe_free(ex);
        return;
    }
    log_info("request %s key=%s: client went away; finishing so the response is stored", ex->peer,
             ex->key);
    resume_upstream(ex); /* nobody to wait for any more */
}

void proxy_client_drained(struct exchange *ex)
{
    resume_upstream(ex);
}
