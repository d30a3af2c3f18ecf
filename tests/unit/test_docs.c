/*
 * test_docs.c - the documentation against the directive table (STYLE 14):
 * every directive config.c knows has a "### `name`" section in
 * docs/configuration.md and a line in conf/idemproxy.conf, and every such
 * section names a directive that exists. Paths are relative to the
 * repository root, the working directory of `make unit`.
 *
 *   config_directive_name(i) --+--> headings of docs/configuration.md
 *                              |      (a) each directive has one, once
 *                              |      (b) each heading names a directive
 *                              |--> lines of conf/idemproxy.conf
 *                              |      (c) each directive appears
 *                              '--> build/man/idemproxy.conf.5, made from
 *                                     the reference by scripts/manpage.py
 *                                     (d) each directive has a ".SS name"
 *
 * A failure names every offending directive or heading, so one run shows
 * all of them.
 */
#include "unit.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "config.h"

#define REFERENCE "docs/configuration.md"
#define SAMPLE "conf/idemproxy.conf"
#define MAN_PAGE "build/man/idemproxy.conf.5" /* `make unit` makes it first */
#define HEADING "### `"
#define MAX_HEADINGS 256
#define NAME_MAX_LEN 64
#define LIST_MAX 2048

/* Reads a whole file into a NUL-terminated buffer the caller frees. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    size_t len = 0;
    size_t cap = 0;

    ck_assert_msg(f != NULL, "%s: %s (run from the repository root)", path, strerror(errno));
    for (;;) {
        size_t n;
        if (cap - len < 4096) {
            cap = cap != 0 ? cap * 2 : 65536;
            text = xrealloc(text, cap);
        }
        n = fread(text + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    ck_assert_msg(!ferror(f), "%s: read error", path);
    fclose(f);
    text[len] = '\0';
    return text;
}

/* The headings of the reference: "### `NAME`" outside fenced code blocks. */
struct headings {
    char name[MAX_HEADINGS][NAME_MAX_LEN];
    int line[MAX_HEADINGS];
    int n;
};

static void collect_headings(const char *text, struct headings *h)
{
    bool fenced = false;
    int lineno = 1;

    h->n = 0;
    for (const char *line = text; *line != '\0'; lineno++) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);

        if (len >= 3 && strncmp(line, "```", 3) == 0) {
            fenced = !fenced;
        } else if (!fenced && len > strlen(HEADING) &&
                   strncmp(line, HEADING, strlen(HEADING)) == 0) {
            const char *name = line + strlen(HEADING);
            const char *close = memchr(name, '`', len - strlen(HEADING));
            size_t nlen = close != NULL ? (size_t)(close - name) : len - strlen(HEADING);

            ck_assert_msg(h->n < MAX_HEADINGS, "%s: more than %d headings", REFERENCE,
                          MAX_HEADINGS);
            snprintf(h->name[h->n], NAME_MAX_LEN, "%.*s", (int)nlen, name);
            h->line[h->n] = lineno;
            h->n++;
        }
        line += len + (end != NULL ? 1 : 0);
    }
}

static bool is_directive(const char *name)
{
    for (int i = 0; config_directive_name(i) != NULL; i++)
        if (strcmp(config_directive_name(i), name) == 0)
            return true;
    return false;
}

/* Appends " name", or " name (WHAT line N)" when line > 0, to a failure list. */
static void list_add(char *list, const char *name, const char *what, int line)
{
    size_t used = strlen(list);
    if (used >= LIST_MAX)
        return;
    if (line > 0)
        snprintf(list + used, LIST_MAX - used, " %s (%s line %d)", name, what, line);
    else
        snprintf(list + used, LIST_MAX - used, " %s", name);
}

/* A test of one line (ended by '\n' or '\0') against a directive name. */
typedef bool line_match_fn(const char *line, const char *name);

/*
 * Whether a line of the sample is, or shows, the directive: optional
 * blanks, an optional "#", optional blanks, the name, then a blank.
 */
static bool sample_line_shows(const char *line, const char *name)
{
    size_t nlen = strlen(name);
    const char *p = line + strspn(line, " \t");

    if (*p == '#')
        p++;
    p += strspn(p, " \t");
    return strncmp(p, name, nlen) == 0 && (p[nlen] == ' ' || p[nlen] == '\t');
}

/* Whether a line of the man page is ".SS NAME", exactly. */
static bool man_line_is_section(const char *line, const char *name)
{
    size_t nlen = strlen(name);
    return strncmp(line, ".SS ", 4) == 0 && strncmp(line + 4, name, nlen) == 0 &&
           (line[4 + nlen] == '\n' || line[4 + nlen] == '\0');
}

static bool any_line(const char *text, const char *name, line_match_fn *match)
{
    for (const char *line = text; *line != '\0';) {
        const char *end = strchr(line, '\n');
        if (match(line, name))
            return true;
        if (end == NULL)
            break;
        line = end + 1;
    }
    return false;
}

static bool sample_has(const char *text, const char *name)
{
    return any_line(text, name, sample_line_shows);
}

static bool man_has_section(const char *text, const char *name)
{
    return any_line(text, name, man_line_is_section);
}

/* Fails, naming every directive of the table for which no line of the file
 * at path matches; what says what was looked for. */
static void assert_every_directive(const char *path, line_match_fn *match, const char *what)
{
    char *text = read_text(path);
    char missing[LIST_MAX] = "";

    for (int i = 0; config_directive_name(i) != NULL; i++)
        if (!any_line(text, config_directive_name(i), match))
            list_add(missing, config_directive_name(i), NULL, 0);
    ck_assert_msg(missing[0] == '\0', "%s has no %s for:%s", path, what, missing);
    free(text);
}

START_TEST(every_directive_has_a_section)
{
    char *text = read_text(REFERENCE);
    struct headings *h = xcalloc(1, sizeof(*h));
    char missing[LIST_MAX] = "";
    char twice[LIST_MAX] = "";

    collect_headings(text, h);
    for (int i = 0; config_directive_name(i) != NULL; i++) {
        const char *name = config_directive_name(i);
        int seen = 0;
        int last = 0;
        for (int k = 0; k < h->n; k++) {
            if (strcmp(h->name[k], name) == 0) {
                seen++;
                last = h->line[k];
            }
        }
        if (seen == 0)
            list_add(missing, name, NULL, 0);
        else if (seen > 1)
            list_add(twice, name, "again on", last);
    }
    ck_assert_msg(missing[0] == '\0', "%s has no \"### `name`\" section for:%s", REFERENCE,
                  missing);
    ck_assert_msg(twice[0] == '\0', "%s documents more than once:%s", REFERENCE, twice);
    free(h);
    free(text);
}
END_TEST

START_TEST(every_section_names_a_directive)
{
    char *text = read_text(REFERENCE);
    struct headings *h = xcalloc(1, sizeof(*h));
    char unknown[LIST_MAX] = "";

    collect_headings(text, h);
    ck_assert_msg(h->n > 0, "%s has no \"### `name`\" headings at all", REFERENCE);
    for (int k = 0; k < h->n; k++)
        if (!is_directive(h->name[k]))
            list_add(unknown, h->name[k], "on", h->line[k]);
    ck_assert_msg(unknown[0] == '\0', "%s: headings that name no directive of the table:%s",
                  REFERENCE, unknown);
    free(h);
    free(text);
}
END_TEST

START_TEST(every_directive_is_in_the_sample)
{
    assert_every_directive(SAMPLE, sample_line_shows, "line that is or shows (#name ...) it");
}
END_TEST

START_TEST(every_directive_is_in_the_man_page)
{
    assert_every_directive(MAN_PAGE, man_line_is_section, "\".SS name\" section");
}
END_TEST

/* The line matchers themselves, so that (c) and (d) cannot pass by accident. */
START_TEST(man_matcher)
{
    ck_assert(man_has_section(".SH X\n.SS ttl\n", "ttl"));
    ck_assert(!man_has_section(".SS lock_ttl\n", "ttl"));
    ck_assert(!man_has_section(".SS ttl_x\n", "ttl"));
    ck_assert(!man_has_section("ttl\n.PP\n", "ttl"));
    ck_assert(!man_has_section(".SS \"ttl\"\n", "ttl"));
}
END_TEST

START_TEST(sample_matcher)
{
    ck_assert(sample_has("ttl 24h\n", "ttl"));
    ck_assert(sample_has("#ttl 24h\n", "ttl"));
    ck_assert(sample_has("# x\n#    ttl\t7d", "ttl"));
    ck_assert(!sample_has("lock_ttl 60s\n", "ttl"));
    ck_assert(!sample_has("ttl\n", "ttl"));
    ck_assert(!sample_has("# the ttl is 24h\n", "ttl"));
    ck_assert(!sample_has("## ttl 24h\n", "ttl"));
}
END_TEST

static Suite *docs_suite(void)
{
    Suite *s = suite_create("docs");
    TCase *tc = tcase_create("docs");
    tcase_add_test(tc, every_directive_has_a_section);
    tcase_add_test(tc, every_section_names_a_directive);
    tcase_add_test(tc, every_directive_is_in_the_sample);
    tcase_add_test(tc, sample_matcher);
    tcase_add_test(tc, every_directive_is_in_the_man_page);
    tcase_add_test(tc, man_matcher);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(docs_suite)
