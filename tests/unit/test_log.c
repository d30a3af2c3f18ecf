/*
 * test_log.c - the JSON escape, error-log line format and level filtering,
 * access-log lines, configure failures and reopen after rotation.
 *
 * Each test runs in its own forked process (fork mode), so the module's
 * static state starts fresh; each test calls log_close() so LeakSanitizer
 * sees nothing left behind.
 */
#include <dirent.h>
#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "unit.h"

#define TS_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/idemproxy-log.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *de;
    char path[512];

    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", tmpdir, de->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(tmpdir);
}

static void tmp_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

/* Reads a whole small file into a malloc'd NUL-terminated buffer; NULL if absent. */
static char *slurp(const char *path, size_t *lenp)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = xmalloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
    }
    fclose(f);
    buf[len] = '\0';
    if (lenp != NULL)
        *lenp = len;
    return buf;
}

static int matches(const char *text, const char *pattern)
{
    regex_t re;
    ck_assert_int_eq(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB | REG_NEWLINE), 0);
    int r = regexec(&re, text, 0, NULL, 0);
    regfree(&re);
    return r == 0;
}

static int count_lines(const char *text)
{
    int n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    ck_assert_ptr_nonnull(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

/* Whether any descriptor of this process refers to path. */
static int has_open(const char *path)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    char link[512], target[512];
    int found = 0;

    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d)) != NULL) {
        snprintf(link, sizeof(link), "/proc/self/fd/%s", de->d_name);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        found |= strcmp(target, path) == 0;
    }
    closedir(d);
    return found;
}

static void configure(const char *error_log, const char *access_log, enum log_level level)
{
    struct config cfg;
    char err[256] = "";

    memset(&cfg, 0, sizeof(cfg));
    cfg.error_log = (char *)error_log;
    cfg.access_log = (char *)access_log;
    cfg.log_level = level;
    ck_assert_msg(log_configure(&cfg, err, sizeof(err)) == IDEM_OK, "log_configure: %s", err);
}

/* ---- log_json_escape ------------------------------------------------------ */

static void check_escape(const char *in, size_t len, const char *want)
{
    char out[64];
    size_t need = log_json_escape(in, len, out, sizeof(out));
    ck_assert_str_eq(out, want);
    ck_assert_uint_eq(need, strlen(want));
}

START_TEST(escape_cases)
{
    check_escape("plain/path?a=1", 14, "plain/path?a=1");
    check_escape("a\"b", 3, "a\\\"b");
    check_escape("a\\b", 3, "a\\\\b");
    check_escape("a\nb", 3, "a\\u000ab");
    check_escape("\x01", 1, "\\u0001");
    check_escape("\x1f\x7f", 2, "\\u001f\\u007f");
    check_escape("\xff", 1, "\\u00ff");
    check_escape("\xc3\xa9", 2, "\\u00c3\\u00a9");
    check_escape("a\0b", 3, "a\\u0000b");
    check_escape("", 0, "");
}
END_TEST

START_TEST(escape_truncation)
{
    char out[8];

    /* Returns what the whole escape needs; writes cap-1 bytes and a NUL. */
    ck_assert_uint_eq(log_json_escape("abcdefghij", 10, out, 4), 10);
    ck_assert_str_eq(out, "abc");

    /* An escape is never cut in half: the output stays a valid string body. */
    ck_assert_uint_eq(log_json_escape("a\"b", 3, out, 3), 4);
    ck_assert_str_eq(out, "a");
    ck_assert_uint_eq(log_json_escape("ab\x01", 3, out, 8), 8);
    ck_assert_str_eq(out, "ab");
    ck_assert_uint_eq(log_json_escape("\xff\xff", 2, out, 8), 12);
    ck_assert_str_eq(out, "\\u00ff");

    /* cap 0 only measures. */
    ck_assert_uint_eq(log_json_escape("a\"b", 3, NULL, 0), 4);
}
END_TEST

/* ---- error log ------------------------------------------------------------ */

START_TEST(error_line_format_and_level)
{
    char path[256];
    make_tmpdir();
    tmp_path(path, sizeof(path), "error.log");
    configure(path, "off", LOG_INFO);

    ck_assert(log_enabled(LOG_ERROR));
    ck_assert(log_enabled(LOG_INFO));
    ck_assert(!log_enabled(LOG_DEBUG));

    log_info("hello %d from %s", 42, "10.0.0.1:5555");
    log_debug("not at info");
    log_warn("careful");
    log_error("broken");

    char *text = slurp(path, NULL);
    ck_assert_ptr_nonnull(text);
    ck_assert_int_eq(count_lines(text), 3);
    ck_assert_msg(matches(text, "^" TS_RE " info hello 42 from 10\\.0\\.0\\.1:5555$"), "%s", text);
    ck_assert_msg(matches(text, "^" TS_RE " warn careful$"), "%s", text);
    ck_assert_msg(matches(text, "^" TS_RE " error broken$"), "%s", text);
    ck_assert_ptr_null(strstr(text, "not at info"));
    free(text);

    log_close();
    remove_tmpdir();
}
END_TEST

START_TEST(error_level_debug)
{
    char path[256];
    make_tmpdir();
    tmp_path(path, sizeof(path), "error.log");
    configure(path, "off", LOG_DEBUG);
    log_debug("now visible");
    char *text = slurp(path, NULL);
    ck_assert_msg(matches(text, "^" TS_RE " debug now visible$"), "%s", text);
    free(text);

    /* At error, a warning is filtered. */
    configure(path, "off", LOG_ERROR);
    log_warn("hidden");
    text = slurp(path, NULL);
    ck_assert_int_eq(count_lines(text), 1);
    free(text);

    log_close();
    remove_tmpdir();
}
END_TEST

START_TEST(error_line_truncated_and_sanitised)
{
    char path[256];
    static char big[10000];
    make_tmpdir();
    tmp_path(path, sizeof(path), "error.log");
    configure(path, "off", LOG_INFO);

    memset(big, 'x', sizeof(big) - 1);
    log_error("%s", big);
    log_warn("peer sent \"a\nforged\r\x1b[31m\"");

    size_t len;
    char *text = slurp(path, &len);
    ck_assert_int_eq(count_lines(text), 2);
    char *nl = strchr(text, '\n');
    ck_assert_uint_le((size_t)(nl - text) + 1, 4096);
    ck_assert(nl - text > 4000);
    ck_assert(memcmp(nl - 4, "x...", 4) == 0);
    ck_assert_msg(matches(nl + 1, "^" TS_RE " warn peer sent \"a\\?forged\\?\\?\\[31m\"$"), "%s",
                  nl + 1);
    free(text);

    log_close();
    remove_tmpdir();
}
END_TEST

START_TEST(stderr_before_configure)
{
    char path[256];
    make_tmpdir();
    tmp_path(path, sizeof(path), "stderr");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    close(fd);

    ck_assert(log_enabled(LOG_INFO));
    ck_assert(!log_enabled(LOG_DEBUG));
    log_info("early");
    log_debug("early debug");

    char *text = slurp(path, NULL);
    ck_assert_msg(matches(text, "^" TS_RE " info early$"), "%s", text);
    ck_assert_int_eq(count_lines(text), 1);
    free(text);

    log_close();
    remove_tmpdir();
}
END_TEST

START_TEST(configure_failure_keeps_previous)
{
    char path[256], bad[256];
    struct config cfg;
    char err[256] = "";

    make_tmpdir();
    tmp_path(path, sizeof(path), "error.log");
    tmp_path(bad, sizeof(bad), "missing/dir/access.log");
    configure(path, "off", LOG_INFO);

    memset(&cfg, 0, sizeof(cfg));
    cfg.error_log = "stderr";
    cfg.access_log = bad;
    cfg.log_level = LOG_DEBUG;
    ck_assert_int_eq(log_configure(&cfg, err, sizeof(err)), IDEM_ERR);
    ck_assert_msg(strstr(err, bad) != NULL, "%s", err);
    ck_assert_msg(strstr(err, "No such file or directory") != NULL, "%s", err);

    /* The old error log and level are still in force. */
    ck_assert(!log_enabled(LOG_DEBUG));
    log_info("still here");
    char *text = slurp(path, NULL);
    ck_assert_msg(matches(text, "^" TS_RE " info still here$"), "%s", text);
    free(text);

    /* A failing error_log path is reported the same way. */
    cfg.error_log = bad;
    cfg.access_log = "off";
    ck_assert_int_eq(log_configure(&cfg, err, sizeof(err)), IDEM_ERR);
    ck_assert_msg(strstr(err, bad) != NULL, "%s", err);

    log_close();
    remove_tmpdir();
}
END_TEST

START_TEST(configure_switch_closes_old_file)
{
    char a[256], b[256];
    make_tmpdir();
    tmp_path(a, sizeof(a), "a.log");
    tmp_path(b, sizeof(b), "b.log");

    int before = open_fds();
    configure(a, a, LOG_INFO);
    ck_assert_int_eq(open_fds(), before + 2);
    log_info("to a");

    ck_assert(has_open(a));

    configure(b, "off", LOG_INFO);
    log_info("to b");
    ck_assert(!has_open(a));
    ck_assert(has_open(b));

    /* The files are released; only the descriptor numbers are kept. */
    configure("stderr", "stderr", LOG_INFO);
    ck_assert(!has_open(b));
    ck_assert_int_le(open_fds(), before + 2);

    char *ta = slurp(a, NULL);
    char *tb = slurp(b, NULL);
    ck_assert_msg(matches(ta, "^" TS_RE " info to a$") && count_lines(ta) == 1, "%s", ta);
    ck_assert_msg(matches(tb, "^" TS_RE " info to b$") && count_lines(tb) == 1, "%s", tb);
    free(ta);
    free(tb);

    log_close();
    ck_assert_int_eq(open_fds(), before);
    remove_tmpdir();
}
END_TEST

/* ---- access log ----------------------------------------------------------- */

START_TEST(access_line_keys_and_nulls)
{
    char path[256];
    make_tmpdir();
    tmp_path(path, sizeof(path), "access.log");
    configure("stderr", path, LOG_INFO);

    struct access_entry e = {
        .client = "192.0.2.7:51234",
        .method = "POST",
        .path = "/orders?x=\"1\"TRAILING",
        .path_len = strlen("/orders?x=\"1\""),
        .route = "/ord\"ers",
        .status = 201,
        .idem = "miss",
        .key = "k-\x01\xff",
        .scope = "0123abcd",
        .upstream = "127.0.0.1:8080",
        .upstream_ms = 12,
        .ms = 15,
        .bytes = 1234,
    };
    log_access(&e);

    struct access_entry n = {
        .method = "GET",
        .path = "/",
        .path_len = 1,
        .status = 400,
        .idem = "nokey",
        .upstream_ms = -1,
        .ms = 0,
        .bytes = 0,
    };
    log_access(&n);

    char *text = slurp(path, NULL);
    ck_assert_int_eq(count_lines(text), 2);
    ck_assert_msg(matches(text, "^\\{\"ts\":\"" TS_RE "\",\"client\":\"192\\.0\\.2\\.7:51234\","
                                "\"method\":\"POST\",\"path\":\"/orders\\?x=\\\\\"1\\\\\"\","
                                "\"route\":\"/ord\\\\\"ers\",\"status\":201,\"idem\":\"miss\","
                                "\"key\":\"k-\\\\u0001\\\\u00ff\","
                                "\"scope\":\"0123abcd\",\"upstream\":\"127\\.0\\.0\\.1:8080\","
                                "\"upstream_ms\":12,\"ms\":15,\"bytes\":1234\\}$"),
                  "%s", text);
    ck_assert_msg(matches(text, "^\\{\"ts\":\"" TS_RE "\",\"client\":null,\"method\":\"GET\","
                                "\"path\":\"/\",\"route\":null,\"status\":400,\"idem\":\"nokey\","
                                "\"key\":null,"
                                "\"scope\":null,\"upstream\":null,\"upstream_ms\":null,"
                                "\"ms\":0,\"bytes\":0\\}$"),
                  "%s", text);
    free(text);

    log_close();
    remove_tmpdir();
}
END_TEST

START_TEST(access_long_paths)
{
    char path[256];
    static char long_path[16384];
    make_tmpdir();
    tmp_path(path, sizeof(path), "access.log");
    configure("stderr", path, LOG_INFO);

    /* 16 KiB of plain characters is logged whole. */
    memset(long_path, 'a', sizeof(long_path));
    long_path[0] = '/';
    struct access_entry e = {
        .method = "GET",
        .path = long_path,
        .path_len = sizeof(long_path),
        .status = 200,
        .idem = "bypass",
        .upstream_ms = 1,
    };
    log_access(&e);

    /* 16 KiB that escapes to 96 KiB is cut on an escape boundary, marked "...". */
    memset(long_path + 1, 0xff, sizeof(long_path) - 1);
    log_access(&e);

    char *text = slurp(path, NULL);
    ck_assert_int_eq(count_lines(text), 2);
    char *first = text;
    char *second = strchr(text, '\n') + 1;
    second[-1] = '\0';

    char *start = strstr(first, "\"path\":\"/aaaa");
    char *end = strstr(first, "aaaa\",\"route\":null,\"status\":200,");
    ck_assert(start != NULL && end != NULL);
    start += strlen("\"path\":\"");
    end += strlen("aaaa");
    ck_assert_int_eq(end - start, (long)sizeof(long_path));

    ck_assert_uint_lt(strlen(second), 24 * 1024);
    ck_assert_msg(matches(second, "\"path\":\"/(\\\\u00ff)+\\.\\.\\.\",\"route\":null,"
                                  "\"status\":200,\"idem\":"
                                  "\"bypass\",.*\"bytes\":0\\}$"),
                  "%.200s", second);
    free(text);

    log_close();
    remove_tmpdir();
}
END_TEST

START_TEST(access_off_and_stderr)
{
    char path[256];
    make_tmpdir();
    tmp_path(path, sizeof(path), "stderr");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    close(fd);

    struct access_entry e = {.method = "GET", .path = "/x", .path_len = 2, .upstream_ms = -1};
    configure("stderr", "off", LOG_INFO);
    log_access(&e);
    configure("stderr", "stderr", LOG_INFO);
    log_access(&e);

    char *text = slurp(path, NULL);
    ck_assert_int_eq(count_lines(text), 1);
    ck_assert(strstr(text, "\"path\":\"/x\"") != NULL);
    free(text);

    log_close();
    remove_tmpdir();
}
END_TEST

/* ---- reopen ----------------------------------------------------------------- */

START_TEST(reopen_after_rename)
{
    char elog[256], alog[256], erot[256], arot[256];
    make_tmpdir();
    tmp_path(elog, sizeof(elog), "error.log");
    tmp_path(alog, sizeof(alog), "access.log");
    tmp_path(erot, sizeof(erot), "error.log.1");
    tmp_path(arot, sizeof(arot), "access.log.1");
    configure(elog, alog, LOG_INFO);

    struct access_entry e = {.method = "GET", .path = "/old", .path_len = 4, .upstream_ms = -1};
    log_info("before rotation");
    log_access(&e);

    ck_assert_int_eq(rename(elog, erot), 0);
    ck_assert_int_eq(rename(alog, arot), 0);
    log_info("after rename, before reopen");
    log_reopen();
    log_info("after reopen");
    e.path = "/new";
    log_access(&e);

    char *t = slurp(erot, NULL);
    ck_assert_int_eq(count_lines(t), 2);
    ck_assert(strstr(t, "before rotation") && strstr(t, "after rename, before reopen"));
    free(t);
    t = slurp(elog, NULL);
    ck_assert_msg(matches(t, "^" TS_RE " info after reopen$") && count_lines(t) == 1, "%s", t);
    free(t);
    t = slurp(arot, NULL);
    ck_assert(count_lines(t) == 1 && strstr(t, "\"/old\""));
    free(t);
    t = slurp(alog, NULL);
    ck_assert(count_lines(t) == 1 && strstr(t, "\"/new\""));
    free(t);

    log_close();
    remove_tmpdir();
}
END_TEST

START_TEST(reopen_failure_keeps_old_file)
{
    char sub[256], elog[300];
    make_tmpdir();
    tmp_path(sub, sizeof(sub), "sub");
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    snprintf(elog, sizeof(elog), "%s/error.log", sub);
    configure(elog, "off", LOG_INFO);
    log_info("one");

    /* Rotate the directory away: the path can no longer be opened. */
    char moved[256];
    tmp_path(moved, sizeof(moved), "moved");
    ck_assert_int_eq(rename(sub, moved), 0);
    log_reopen();
    log_info("two");

    char rotated[300];
    snprintf(rotated, sizeof(rotated), "%s/error.log", moved);
    char *t = slurp(rotated, NULL);
    ck_assert_int_eq(count_lines(t), 3);
    ck_assert_msg(matches(t, "^" TS_RE " error error_log: cannot reopen .*/sub/error\\.log: "
                             "No such file or directory"),
                  "%s", t);
    ck_assert(strstr(t, " info two\n") != NULL);
    free(t);

    log_close();
    unlink(rotated);
    rmdir(moved);
    remove_tmpdir();
}
END_TEST

static Suite *log_suite(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");

    tcase_add_test(tc, escape_cases);
    tcase_add_test(tc, escape_truncation);
    tcase_add_test(tc, error_line_format_and_level);
    tcase_add_test(tc, error_level_debug);
    tcase_add_test(tc, error_line_truncated_and_sanitised);
    tcase_add_test(tc, stderr_before_configure);
    tcase_add_test(tc, configure_failure_keeps_previous);
    tcase_add_test(tc, configure_switch_closes_old_file);
    tcase_add_test(tc, access_line_keys_and_nulls);
    tcase_add_test(tc, access_long_paths);
    tcase_add_test(tc, access_off_and_stderr);
    tcase_add_test(tc, reopen_after_rename);
    tcase_add_test(tc, reopen_failure_keeps_old_file);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(log_suite)
