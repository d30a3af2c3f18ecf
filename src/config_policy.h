/*
 * config_policy.h - the policy directives whose values are more than one
 * scalar (methods, key, scope, fingerprint, release_on, on_inflight), and
 * the life of the strings a struct policy owns: copy for inheritance, free.
 *
 * Setters: each parses the arguments of one directive, given after its name
 * (argc >= 1; config.c has already checked the count against its table), into
 * p, replacing what the directive set before. It returns NULL, or a short
 * phrase saying what is wrong: a literal, or text formatted into msg (size
 * bytes), which the caller prefixes with "FILE:LINE: NAME: ". After a failure
 * the field may hold part of the value; the parse as a whole fails anyway,
 * and config_policy_free() still frees it.
 */
#ifndef IDEM_CONFIG_POLICY_H
#define IDEM_CONFIG_POLICY_H

#include <stddef.h>

#include "config.h"

/* methods GET POST ...: wire names llhttp knows. Sets p->methods. */
const char *config_policy_set_methods(struct policy *p, int argc, char *const *argv, char *msg,
                                      size_t size);

/* key header:NAME | query:NAME | form:NAME | json:/pointer | token ... */
const char *config_policy_set_keys(struct policy *p, int argc, char *const *argv, char *msg,
                                   size_t size);

/* scope header:NAME... | none: up to CONFIG_MAX_SCOPE_SOURCES headers, joined */
const char *config_policy_set_scope(struct policy *p, int argc, char *const *argv, char *msg,
                                    size_t size);

/* fingerprint method path query body header:NAME ... */
const char *config_policy_set_fingerprint(struct policy *p, int argc, char *const *argv, char *msg,
                                          size_t size);

/* release_on 503 5xx ...: statuses 100..599 and classes 1xx..5xx. */
const char *config_policy_set_release_on(struct policy *p, int argc, char *const *argv, char *msg,
                                         size_t size);

/* on_inflight reject | wait DURATION */
const char *config_policy_set_on_inflight(struct policy *p, int argc, char *const *argv, char *msg,
                                          size_t size);

/*
 * Copy a directive's fields from src into dst (a route inheriting from the
 * global policy), deep-copying strings and freeing what dst held there.
 */
void config_policy_inherit_keys(struct policy *dst, const struct policy *src);
void config_policy_inherit_scope(struct policy *dst, const struct policy *src);
void config_policy_inherit_fingerprint(struct policy *dst, const struct policy *src);
void config_policy_inherit_on_inflight(struct policy *dst, const struct policy *src);

void config_policy_inherit_error_body(struct policy *dst, const struct policy *src);
void config_policy_inherit_error_content_type(struct policy *dst, const struct policy *src);

/* Frees the strings p owns and leaves them empty; p itself is not freed. */
void config_policy_free(struct policy *p);

#endif
