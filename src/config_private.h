/*
 * config_private.h - what config.c (the table, the blocks, the checks) and
 * config_net.c (the network and store directives) share. Not an interface:
 * config.h is.
 */
#ifndef IDEM_CONFIG_PRIVATE_H
#define IDEM_CONFIG_PRIVATE_H

#include <stdbool.h>

#include "util.h"

struct parser;
struct directive;

/* One call of a setter: the directive, its arguments and where they go. */
struct setting {
    struct parser *ps;
    const struct directive *d;
    void *base;  /* struct config, or struct policy for D_POLICY rows */
    void *field; /* base + d->offset */
    int argc;    /* arguments after the directive name */
    char **argv;
};

/* Formats into the parser's message buffer; the result lives until the
 * next call. */
const char *config_phrase(struct parser *ps, const char *fmt, ...) PRINTF_LIKE(2, 3);

/* A host name or numeric address as a directive may give it. */
bool config_valid_host(const char *host, bool bracketed);

/* config_net.c's setters: NULL, or a phrase saying what is wrong. */
const char *set_listen(struct setting *s);
const char *set_trusted_proxies(struct setting *s);
const char *set_admin_listen(struct setting *s);
const char *set_upstream(struct setting *s);
const char *set_redis(struct setting *s);
const char *set_redis_sentinel(struct setting *s);
const char *set_redis_cluster(struct setting *s);
const char *set_min_replicas(struct setting *s);

#endif
