/*
 * store_sentinel.h - where the primary is, for a store on Redis Sentinel
 * (SPEC §8, `redis_sentinel`): the topology half of a store; store.c keeps
 * the connections to the primary and asks this module where it is.
 */
#ifndef IDEM_STORE_SENTINEL_H
#define IDEM_STORE_SENTINEL_H

#include <stddef.h>

#include "config.h"
#include "util.h"

struct event_base;
struct flusher;
struct sentinel;

/* The primary is at ip:port: found by asking, or announced by
 * +switch-master. Called from the loop, never inside sentinel_*(). */
typedef void (*sentinel_primary_fn)(void *arg, const char *ip, const char *port);

/* Resolves the Redis, sentinel and cluster seed names to numeric addresses
 * (cfg->redis_ip, cfg->sentinels[].ip, cfg->cluster_seeds[].ip),
 * in the main thread at each load, so that no worker resolves on its loop. */
int store_resolve(struct config *cfg, char *err, size_t errlen) MUST_CHECK;

/* Starts asking at once and watching for switches. */
struct tls;
/* tls: TLS to the sentinels (redis_tls), else NULL; the caller keeps it
 * alive for as long as s. */
struct sentinel *sentinel_new(struct event_base *base, struct flusher *flusher,
                              const struct config *cfg, struct tls *tls,
                              sentinel_primary_fn on_primary, void *arg);
/* The primary's link failed, or it said READONLY / LOADING / MASTERDOWN:
 * asks the sentinels again (once, if already asking). */
void sentinel_rediscover(struct sentinel *s);
void sentinel_free(struct sentinel *s);

/* Whether cfg names other sentinels, master or credentials than s. */
bool sentinel_differs(const struct sentinel *s, const struct config *cfg);

#endif
