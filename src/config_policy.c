/*
 * config_policy.c - the policy directives that take more than one scalar,
 * and the strings a struct policy owns. Pure: config.c's table calls these
 * setters with a directive's arguments, and its inheritance step calls the
 * inherit functions; nothing here knows files, lines or the table.
 *
 *   argv --config_policy_set_*()--> fields of one struct policy (global or
 *        |                          a route's), or a phrase in msg
 *   global policy --config_policy_inherit_*()--> each route field the route
 *                                                did not set (deep copies)
 *   config_unref() --config_policy_free()--> key, scope and header strings,
 *                                            the webhook verifier
 *
 * Ownership: every policy owns its key-source names, its scope name and its
 * fingerprint header names; nothing is shared between policies.
 */
#include "config_policy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "config_value.h"
#include "webhook.h"

static const char *say(char *msg, size_t size, const char *fmt, ...) PRINTF_LIKE(3, 4);

/* Formats into the caller's msg and returns it. */
static const char *say(char *msg, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, size, fmt, ap);
    va_end(ap);
    return msg;
}

/* ---- ownership ------------------------------------------------------- */

static void clear_keys(struct policy *p)
{
    for (int i = 0; i < p->nkeys; i++) {
        free(p->keys[i].name);
        p->keys[i].name = NULL;
    }
    p->nkeys = 0;
}

static void clear_fp_headers(struct policy *p)
{
    for (int i = 0; i < p->nfp_headers; i++) {
        free(p->fp_headers[i]);
        p->fp_headers[i] = NULL;
    }
    p->nfp_headers = 0;
}

static void clear_scopes(struct policy *p)
{
    for (int i = 0; i < p->nscopes; i++) {
        free(p->scopes[i].name);
        p->scopes[i].name = NULL;
    }
    p->nscopes = 0;
}

void config_policy_free(struct policy *p)
{
    clear_keys(p);
    clear_fp_headers(p);
    clear_scopes(p);
    free(p->error_body);
    p->error_body = NULL;
    free(p->error_content_type);
    p->error_content_type = NULL;
    webhook_verifier_free(p->verify);
    p->verify = NULL;
}

void config_policy_inherit_error_body(struct policy *dst, const struct policy *src)
{
    free(dst->error_body);
    dst->error_body = src->error_body ? xstrdup(src->error_body) : NULL;
}

void config_policy_inherit_error_content_type(struct policy *dst, const struct policy *src)
{
    free(dst->error_content_type);
    dst->error_content_type = src->error_content_type ? xstrdup(src->error_content_type) : NULL;
}

static struct key_source copy_source(const struct key_source *src)
{
    struct key_source ks = {src->kind, src->name != NULL ? xstrdup(src->name) : NULL};
    return ks;
}

void config_policy_inherit_keys(struct policy *dst, const struct policy *src)
{
    clear_keys(dst);
    for (int i = 0; i < src->nkeys; i++)
        dst->keys[i] = copy_source(&src->keys[i]);
    dst->nkeys = src->nkeys;
}

void config_policy_inherit_scope(struct policy *dst, const struct policy *src)
{
    clear_scopes(dst);
    for (int i = 0; i < src->nscopes; i++)
        dst->scopes[i] = copy_source(&src->scopes[i]);
    dst->nscopes = src->nscopes;
}

void config_policy_inherit_fingerprint(struct policy *dst, const struct policy *src)
{
    clear_fp_headers(dst);
    dst->fingerprint = src->fingerprint;
    for (int i = 0; i < src->nfp_headers; i++)
        dst->fp_headers[i] = xstrdup(src->fp_headers[i]);
    dst->nfp_headers = src->nfp_headers;
}

void config_policy_inherit_on_inflight(struct policy *dst, const struct policy *src)
{
    dst->on_inflight = src->on_inflight;
    dst->inflight_wait_ms = src->inflight_wait_ms;
}

/* ---- setters --------------------------------------------------------- */

/* The HTTP methods llhttp knows, by their wire names. */
static const struct {
    int id;
    const char *name;
} http_methods[] = {
#define METHOD_ROW(num, name, string) {num, #string},
    HTTP_METHOD_MAP(METHOD_ROW)
#undef METHOD_ROW
};

const char *config_policy_set_methods(struct policy *p, int argc, char *const *argv, char *msg,
                                      size_t size)
{
    uint64_t bits = 0;
    for (int i = 0; i < argc; i++) {
        size_t m = 0;
        while (m < ARRAY_LEN(http_methods) && strcmp(http_methods[m].name, argv[i]) != 0)
            m++;
        if (m == ARRAY_LEN(http_methods))
            return say(msg, size, "unknown method \"%s\"", argv[i]);
        bits |= 1ull << http_methods[m].id;
    }
    p->methods = bits;
    return NULL;
}

/* RFC 6901: "/" then reference tokens where "~" is only in "~0" or "~1". */
static bool valid_json_pointer(const char *p)
{
    if (*p != '/')
        return false;
    for (; *p != '\0'; p++)
        if (*p == '~' && p[1] != '0' && p[1] != '1')
            return false;
    return true;
}

static const char *parse_key_source(const char *arg, struct key_source *out, char *msg, size_t size)
{
    if (strcmp(arg, "token") == 0) {
        out->kind = KEY_SOURCE_TOKEN;
        out->name = NULL;
        return NULL;
    }
    if (strncmp(arg, "header:", 7) == 0) {
        if (!config_valid_header_name(arg + 7))
            return say(msg, size, "not a valid header name in \"%s\"", arg);
        out->kind = KEY_SOURCE_HEADER;
        out->name = xstrdup(arg + 7);
    } else if (strncmp(arg, "query:", 6) == 0 || strncmp(arg, "form:", 5) == 0) {
        const char *name = strchr(arg, ':') + 1;
        if (*name == '\0')
            return say(msg, size, "missing parameter name in \"%s\"", arg);
        out->kind = arg[0] == 'q' ? KEY_SOURCE_QUERY : KEY_SOURCE_FORM;
        out->name = xstrdup(name);
    } else if (strncmp(arg, "json:", 5) == 0) {
        if (!valid_json_pointer(arg + 5))
            return say(msg, size, "expected a JSON pointer like json:/order_no, got \"%s\"", arg);
        out->kind = KEY_SOURCE_JSON;
        out->name = xstrdup(arg + 5);
    } else {
        return say(msg, size,
                   "unknown key source \"%s\" (expected header:NAME, query:NAME, form:NAME, "
                   "json:/pointer or token)",
                   arg);
    }
    return NULL;
}

const char *config_policy_set_keys(struct policy *p, int argc, char *const *argv, char *msg,
                                   size_t size)
{
    clear_keys(p);
    for (int i = 0; i < argc; i++) {
        const char *err = parse_key_source(argv[i], &p->keys[p->nkeys], msg, size);
        if (err != NULL)
            return err;
        p->nkeys++;
    }
    return NULL;
}

const char *config_policy_set_scope(struct policy *p, int argc, char *const *argv, char *msg,
                                    size_t size)
{
    clear_scopes(p);
    if (argc == 1 && strcmp(argv[0], "none") == 0)
        return NULL;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "header:", 7) != 0)
            return say(msg, size, "expected header:NAME... or none, got \"%s\"", arg);
        if (!config_valid_header_name(arg + 7))
            return say(msg, size, "not a valid header name in \"%s\"", arg);
        p->scopes[p->nscopes++] = (struct key_source){KEY_SOURCE_HEADER, xstrdup(arg + 7)};
    }
    return NULL;
}

const char *config_policy_set_fingerprint(struct policy *p, int argc, char *const *argv, char *msg,
                                          size_t size)
{
    static const struct {
        const char *name;
        unsigned bit;
    } parts[] = {{"method", FP_METHOD},
                 {"path", FP_PATH},
                 {"query", FP_QUERY},
                 {"body", FP_BODY},
                 {"json", FP_JSON}};

    clear_fp_headers(p);
    p->fingerprint = 0;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        size_t k = 0;
        while (k < ARRAY_LEN(parts) && strcmp(parts[k].name, arg) != 0)
            k++;
        if (k < ARRAY_LEN(parts)) {
            p->fingerprint |= parts[k].bit;
        } else if (strncmp(arg, "header:", 7) == 0) {
            if (!config_valid_header_name(arg + 7))
                return say(msg, size, "not a valid header name in \"%s\"", arg);
            if (p->nfp_headers == CONFIG_MAX_FP_HEADERS)
                return say(msg, size, "too many header: parts (at most %d)", CONFIG_MAX_FP_HEADERS);
            p->fp_headers[p->nfp_headers++] = xstrdup(arg + 7);
        } else {
            return say(msg, size,
                       "unknown part \"%s\" (expected method, path, query, body, json or "
                       "header:NAME)",
                       arg);
        }
    }
    if ((p->fingerprint & FP_BODY) && (p->fingerprint & FP_JSON))
        return say(msg, size, "json is the body read as JSON: give body or json, not both");
    return NULL;
}

const char *config_policy_set_release_on(struct policy *p, int argc, char *const *argv, char *msg,
                                         size_t size)
{
    memset(p->release_on, 0, sizeof(p->release_on));
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        int status;
        if (arg[0] >= '1' && arg[0] <= '5' && (arg[1] == 'x' || arg[1] == 'X') &&
            (arg[2] == 'x' || arg[2] == 'X') && arg[3] == '\0') {
            int base = (arg[0] - '0') * 100;
            for (int c = base; c < base + 100; c++)
                p->release_on[c] = true;
        } else if (strlen(arg) == 3 && config_parse_int(arg, 100, 599, &status) == IDEM_OK) {
            p->release_on[status] = true;
        } else {
            return say(msg, size, "expected a status 100..599 or a class like 5xx, got \"%s\"",
                       arg);
        }
    }
    return NULL;
}

const char *config_policy_set_on_inflight(struct policy *p, int argc, char *const *argv, char *msg,
                                          size_t size)
{
    uint64_t ms;

    if (strcmp(argv[0], "reject") == 0) {
        if (argc != 1)
            return "reject takes no duration";
        p->on_inflight = ON_INFLIGHT_REJECT;
        p->inflight_wait_ms = 0;
        return NULL;
    }
    if (strcmp(argv[0], "wait") != 0)
        return say(msg, size, "expected reject or wait DURATION, got \"%s\"", argv[0]);
    if (argc != 2)
        return "wait needs a duration, like: on_inflight wait 5s";
    if (config_parse_duration(argv[1], &ms) != IDEM_OK || ms == 0)
        return say(msg, size, "expected a duration like 30s, got \"%s\"", argv[1]);
    p->on_inflight = ON_INFLIGHT_WAIT;
    p->inflight_wait_ms = ms;
    return NULL;
}
