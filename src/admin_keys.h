/*
 * admin_keys.h - the keys admin API (SPEC §9) on the admin listener:
 * show, release and delete one idempotency key, behind the bearer token of
 * admin_token_file. Runs on the main thread's loop, with a Redis store of
 * its own on that loop.
 */
#ifndef IDEM_ADMIN_KEYS_H
#define IDEM_ADMIN_KEYS_H

#include <stdbool.h>

struct event_base;
struct evhttp_request;
struct config;
struct tls;
struct admin_keys;

/* cfg and tls are referenced (the ones main runs on). With admin_token_file
 * set, the store connects on the loop's first turn, when main has resolved
 * the names of Redis and the sentinels. */
struct admin_keys *admin_keys_new(struct event_base *base, struct config *cfg, struct tls *tls);

/* A reload took effect: the token, the policies and the key prefix come from
 * cfg now; a changed Redis target gets a new store, and a token file no
 * longer set closes it (calls still waiting on the old one are answered 503
 * when it closes on the next loop turn). */
void admin_keys_reconfigure(struct admin_keys *ak, struct config *cfg, struct tls *tls);

/* Whether a path belongs to the API ("/keys/..."). */
bool admin_keys_path(const char *path);

/*
 * Answers req (a path admin_keys_path accepted), now or when Redis has, unless
 * the API is off (no admin_token_file): then returns false and leaves req to
 * the caller, to be answered as any unknown path.
 */
bool admin_keys_serve(struct admin_keys *ak, struct evhttp_request *req);

/* Before evhttp_free(): requests still waiting for Redis are let go
 * unanswered (evhttp frees them), and the store is closed. Accepts NULL. */
void admin_keys_free(struct admin_keys *ak);

#endif
