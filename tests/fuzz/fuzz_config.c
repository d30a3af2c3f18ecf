/*
 * fuzz_config.c - libFuzzer target for the configuration parser: the lexer
 * (config_lex.c), the directive table and its setters (config.c,
 * config_value.c, config_policy.c) and route resolution.
 *
 *   input --config_parse("fuzz.conf")--> config or NULL + errors (discarded,
 *   but counted and checked) --> config_policy_for over a few paths -->
 *   config_ref / config_unref twice, which frees everything
 *
 * Invariants (a broken one traps):
 *   - NULL exactly when at least one error was reported, and every message
 *     names the file ("fuzz.conf:LINE: ..." or "fuzz.conf: ...");
 *   - a config has a listener and an upstream; upstream_timeout is below
 *     every lock_ttl (global and per route), as SPEC §3 says it is checked;
 *   - routes are sorted longest prefix first, and config_policy_for returns
 *     the global policy or the policy of a route whose prefix starts the path.
 *
 * redis_password_file opens the file it names while parsing. An input that
 * names anything but a regular file there (a FIFO, /dev/stdin, a tty) is
 * skipped: reading it could block the run. The statements are found with
 * the same lexer the parser uses, so quoting cannot hide the directive.
 *
 * Build and run: make fuzz (corpus tests/fuzz/config/).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "config_lex.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

#define NAME "fuzz.conf"

struct errors {
    int count;
};

static void on_error(void *arg, const char *message)
{
    struct errors *e = arg;
    e->count++;
    CHECK(message != NULL);
    CHECK(strncmp(message, NAME ":", sizeof(NAME)) == 0);
}

/* Whether every redis_password_file statement names a regular file (or none). */
static bool password_files_are_regular(const char *text, size_t len)
{
    struct config_lex *lx = config_lex_new(text, len, NULL, NULL);
    bool ok = true;
    for (int guard = 0; ok && guard < 1000000; guard++) {
        const struct config_lex_stmt *st = NULL;
        enum config_lex_term t = config_lex_next(lx, &st);
        for (int i = 0; ok && st != NULL && i + 1 < st->argc; i++) {
            /* any word, not just the first: be generous about what the parser may do */
            if (strcmp(st->argv[i], "redis_password_file") == 0) {
                struct stat sb;
                ok = stat(st->argv[i + 1], &sb) == 0 && S_ISREG(sb.st_mode);
            }
        }
        if (t == CONFIG_LEX_EOF)
            break;
    }
    config_lex_free(lx);
    return ok;
}

static void check_policy_for(const struct config *cfg, const char *path)
{
    size_t len = strlen(path);
    const struct policy *p = config_policy_for(cfg, path, len);
    CHECK(p != NULL);
    if (p == &cfg->global)
        return;
    bool found = false;
    for (int i = 0; i < cfg->nroutes; i++) {
        const struct route *r = &cfg->routes[i];
        if (&r->policy != p)
            continue;
        size_t n = strlen(r->prefix);
        CHECK(n <= len && memcmp(path, r->prefix, n) == 0);
        found = true;
    }
    CHECK(found);
}

static void check_config(const struct config *cfg)
{
    CHECK(cfg->nlistens >= 1 && cfg->nlistens <= CONFIG_MAX_LISTEN);
    CHECK(cfg->nupstreams >= 1 && cfg->nupstreams <= CONFIG_MAX_UPSTREAM);
    CHECK(cfg->global.lock_ttl_ms > cfg->upstream_timeout_ms);
    for (int i = 0; i < cfg->nroutes; i++) {
        const struct route *r = &cfg->routes[i];
        CHECK(r->prefix != NULL);
        CHECK(r->policy.lock_ttl_ms > cfg->upstream_timeout_ms);
        if (i > 0)
            CHECK(strlen(cfg->routes[i - 1].prefix) >= strlen(r->prefix));
    }
    static const char *const paths[] = {
        "/", "/orders", "/orders/1", "/webhooks/alipay", "/coupons/claim?x=1", ""};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        check_policy_for(cfg, paths[i]);
    for (int i = 0; i < cfg->nroutes; i++)
        check_policy_for(cfg, cfg->routes[i].prefix);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    if (!password_files_are_regular(text, size))
        return 0;

    struct errors e = {0};
    struct config *cfg = config_parse(NAME, text, size, on_error, &e);
    CHECK((cfg == NULL) == (e.count > 0));
    if (cfg == NULL)
        return 0;
    CHECK(cfg->refcount == 1);
    check_config(cfg);
    struct config *again = config_ref(cfg);
    CHECK(again == cfg && cfg->refcount == 2);
    config_unref(again);
    config_unref(cfg);
    return 0;
}
