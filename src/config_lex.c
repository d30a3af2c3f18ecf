/*
 * config_lex.c - the configuration lexer: bytes of the file in, statements
 * out (see config_lex.h for the syntax). Pure: no I/O, no knowledge of
 * directives; config.c drives it and decides what a statement means.
 *
 *   text --config_lex_next()--> skip blanks, comments, empty statements
 *                               -> read_word() per word, read_quoted() per
 *                                  "quoted" segment, concatenated
 *                               -> (argv, line, bad) + how it ended:
 *                                  END (newline, ";") | OPEN | CLOSE | EOF
 *
 * Lines: lx->line counts newlines consumed so far. A statement takes the line
 * of its first word, or of its brace when it has none, so a statement that
 * ends at a newline reports where it started.
 *
 * Ownership: the lexer owns its current statement, words included; the next
 * config_lex_next() or config_lex_free() frees them. The text is borrowed.
 */
#include "config_lex.h"

#include <stdlib.h>

#include "util.h"

struct config_lex {
    const char *p; /* next byte to read */
    const char *end;
    int line;
    config_lex_error_fn on_error; /* may be NULL */
    void *arg;
    struct config_lex_stmt st; /* the statement last returned */
    int cap;                   /* of st.argv */
};

/* A word being built; s is NULL until its first character. */
struct word {
    char *s;
    size_t len;
    size_t cap;
};

static void lex_error(struct config_lex *lx, const char *message)
{
    lx->st.bad = true;
    if (lx->on_error != NULL)
        lx->on_error(lx->arg, lx->line, message);
}

static void word_add(struct word *w, char c)
{
    if (w->len + 1 >= w->cap) {
        w->cap = w->cap != 0 ? w->cap * 2 : 32;
        w->s = xrealloc(w->s, w->cap);
    }
    w->s[w->len++] = c;
    w->s[w->len] = '\0';
}

static void stmt_clear(struct config_lex_stmt *st)
{
    for (int i = 0; i < st->argc; i++) {
        free(st->argv[i]);
        st->argv[i] = NULL;
    }
    st->argc = 0;
    st->bad = false;
}

/* Takes ownership of w->s. */
static void stmt_push(struct config_lex *lx, struct word *w)
{
    struct config_lex_stmt *st = &lx->st;
    if (st->argc == lx->cap) {
        lx->cap = lx->cap != 0 ? lx->cap * 2 : 8;
        st->argv = xrealloc(st->argv, (size_t)lx->cap * sizeof(*st->argv));
    }
    st->argv[st->argc++] = w->s != NULL ? w->s : xstrdup("");
    w->s = NULL;
}

/* After the opening quote; stops after the closing one or at the line end. */
static void read_quoted(struct config_lex *lx, struct word *w)
{
    for (;;) {
        char c;
        if (lx->p == lx->end || *lx->p == '\n') {
            lex_error(lx, "unterminated quoted string");
            return;
        }
        c = *lx->p++;
        if (c == '"')
            return;
        if (c == '\\') {
            if (lx->p < lx->end && (*lx->p == '"' || *lx->p == '\\')) {
                word_add(w, *lx->p++);
                continue;
            }
            lex_error(lx, "invalid escape in quoted string: only \\\" and \\\\ are allowed");
            continue;
        }
        if (c == '\0') {
            lex_error(lx, "NUL byte in the configuration");
            continue;
        }
        word_add(w, c);
    }
}

/* One argument: unquoted characters and quoted segments, concatenated. */
static void read_word(struct config_lex *lx)
{
    struct word w = {NULL, 0, 0};
    while (lx->p < lx->end) {
        char c = *lx->p;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ';' || c == '{' || c == '}' ||
            c == '#')
            break;
        lx->p++;
        if (c == '"') {
            read_quoted(lx, &w); /* "" leaves w.s NULL: pushed as "" */
        } else if (c == '\0') {
            lex_error(lx, "NUL byte in the configuration");
        } else {
            word_add(&w, c);
        }
    }
    stmt_push(lx, &w);
}

struct config_lex *config_lex_new(const char *text, size_t len, config_lex_error_fn on_error,
                                  void *arg)
{
    struct config_lex *lx = xcalloc(1, sizeof(*lx));
    lx->p = text;
    lx->end = text + len;
    lx->line = 1;
    lx->on_error = on_error;
    lx->arg = arg;
    return lx;
}

void config_lex_free(struct config_lex *lx)
{
    stmt_clear(&lx->st);
    free(lx->st.argv);
    lx->st.argv = NULL;
    free(lx);
}

enum config_lex_term config_lex_next(struct config_lex *lx, const struct config_lex_stmt **st)
{
    struct config_lex_stmt *cur = &lx->st;

    *st = cur;
    stmt_clear(cur);
    cur->line = lx->line;
    for (;;) {
        char c;
        while (lx->p < lx->end && (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\r'))
            lx->p++;
        if (lx->p == lx->end)
            return CONFIG_LEX_EOF;
        c = *lx->p;
        if (c == '#') {
            while (lx->p < lx->end && *lx->p != '\n')
                lx->p++;
        } else if (c == '\n' || c == ';') {
            lx->p++;
            if (c == '\n')
                lx->line++; /* cur->line was taken at the first word */
            if (cur->argc > 0)
                return CONFIG_LEX_END;
            cur->line = lx->line;
        } else if (c == '{' || c == '}') {
            if (cur->argc == 0)
                cur->line = lx->line;
            lx->p++;
            return c == '{' ? CONFIG_LEX_OPEN : CONFIG_LEX_CLOSE;
        } else {
            if (cur->argc == 0)
                cur->line = lx->line;
            read_word(lx);
        }
    }
}

bool config_lex_open_brace_follows(struct config_lex *lx)
{
    const char *p = lx->p;
    int line = lx->line;
    while (p < lx->end) {
        if (*p == '\n')
            line++;
        else if (*p == '#')
            while (p + 1 < lx->end && p[1] != '\n')
                p++;
        else if (*p != ' ' && *p != '\t' && *p != '\r')
            break;
        p++;
    }
    if (p == lx->end || *p != '{')
        return false;
    lx->p = p + 1;
    lx->line = line;
    return true;
}
