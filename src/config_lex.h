/*
 * config_lex.h - the configuration lexer: text in, one statement at a time
 * out. It knows the syntax of the file (SPEC §3) and nothing of directives.
 *
 * A statement is the words of one directive: unquoted runs and "quoted"
 * segments (only \" and \\ escape), ended by a newline or ";"
 * (CONFIG_LEX_END), "{" (CONFIG_LEX_OPEN), "}" (CONFIG_LEX_CLOSE) or the end
 * of the text (CONFIG_LEX_EOF). "#" outside quotes starts a comment that runs
 * to the end of the line. Empty statements are skipped, so a brace or EOF
 * may come with no words.
 *
 * Errors: a lexical error (unterminated quote, bad escape, NUL byte) is passed
 * to the caller's callback with its line as soon as it is found, and marks
 * the statement `bad`; lexing goes on, so one run finds them all.
 */
#ifndef IDEM_CONFIG_LEX_H
#define IDEM_CONFIG_LEX_H

#include <stdbool.h>
#include <stddef.h>

struct config_lex;

/* Receives one lexical error: the line it is on and a short phrase. */
typedef void (*config_lex_error_fn)(void *arg, int line, const char *message);

enum config_lex_term {
    CONFIG_LEX_END,   /* newline or ";" after at least one word */
    CONFIG_LEX_OPEN,  /* "{" */
    CONFIG_LEX_CLOSE, /* "}" */
    CONFIG_LEX_EOF,   /* end of the text */
};

/* A statement as the lexer returns it; the lexer owns every string. */
struct config_lex_stmt {
    char **argv; /* argc words; "" for an empty quoted word */
    int argc;
    int line; /* of the first word, or of the brace when there is none */
    bool bad; /* a lexical error was reported: do not run it */
};

/*
 * A lexer over text[0..len), which may contain NUL bytes (reported as
 * errors) and must outlive the lexer. on_error may be NULL. Lines count
 * from 1.
 */
struct config_lex *config_lex_new(const char *text, size_t len, config_lex_error_fn on_error,
                                  void *arg);

/* Frees the lexer and its current statement. */
void config_lex_free(struct config_lex *lx);

/*
 * Reads the next statement and returns how it ended. *st points to it; it is
 * valid until the next call or config_lex_free(). After CONFIG_LEX_EOF every
 * further call returns CONFIG_LEX_EOF again, with no words.
 */
enum config_lex_term config_lex_next(struct config_lex *lx, const struct config_lex_stmt **st);

/*
 * Looks past blanks, newlines and comments: when the next token is "{",
 * consumes it and returns true; otherwise consumes nothing and returns
 * false. Lets `route PREFIX` be followed by "{" on a later line.
 */
bool config_lex_open_brace_follows(struct config_lex *lx);

#endif
