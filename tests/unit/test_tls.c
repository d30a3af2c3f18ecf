/*
 * test_tls.c - tls_new(): what it accepts, and the FILE:LINE message for
 * every file or setting it refuses (the messages an operator reads after
 * `idemproxy -t` or a failed reload).
 *
 * Keys and self-signed certificates are made here with OpenSSL's API, in a
 * temporary directory per test.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "config.h"
#include "tls.h"
#include "unit.h"

#define MAX_ERRORS 8

struct errors {
    char *msg[MAX_ERRORS];
    int n;
};

static void collect(void *arg, const char *message)
{
    struct errors *e = arg;
    if (e->n < MAX_ERRORS)
        e->msg[e->n++] = xstrdup(message);
}

static bool errors_have(const struct errors *e, const char *needle)
{
    for (int i = 0; i < e->n; i++)
        if (strstr(e->msg[i], needle) != NULL)
            return true;
    return false;
}

static void errors_free(struct errors *e)
{
    for (int i = 0; i < e->n; i++)
        free(e->msg[i]);
    e->n = 0;
}

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/idemproxy-tls-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static char *path_of(const char *name)
{
    char *p = xmalloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

/* NAME.pem (a self-signed certificate for localhost) and NAME.key (mode 0600). */
static void make_pair(const char *name)
{
    char file[128];
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    ck_assert_ptr_nonnull(key);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *subject = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1,
                               -1, 0);
    X509_set_issuer_name(x, subject);
    ck_assert_int_gt(X509_sign(x, key, EVP_sha256()), 0);

    snprintf(file, sizeof(file), "%s/%s.pem", dir, name);
    FILE *f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    PEM_write_X509(f, x);
    fclose(f);
    snprintf(file, sizeof(file), "%s/%s.key", dir, name);
    f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    ck_assert_int_eq(chmod(file, 0600), 0);
    X509_free(x);
    EVP_PKEY_free(key);
}

static void write_file(const char *name, const char *content, mode_t mode)
{
    char *p = path_of(name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(content, f);
    fclose(f);
    ck_assert_int_eq(chmod(p, mode), 0);
    free(p);
}

/*
 * Parses text (a valid configuration; "DIR" in it is replaced by the test's
 * directory) and runs tls_new() on it. Returns the result, errors in *e.
 */
static struct tls *tls_for(const char *text, struct errors *e)
{
    char full[4096];
    size_t used = 0;
    for (const char *p = text; *p != '\0' && used < sizeof(full) - 64;) {
        if (strncmp(p, "DIR", 3) == 0) {
            used += (size_t)snprintf(full + used, sizeof(full) - used, "%s", dir);
            p += 3;
        } else {
            full[used++] = *p++;
        }
    }
    full[used] = '\0';
    struct errors parse_errors = {{NULL}, 0};
    struct config *cfg = config_parse("t.conf", full, used, collect, &parse_errors);
    if (cfg == NULL)
        fprintf(stderr, "does not parse: %s\n", parse_errors.msg[0]);
    ck_assert_ptr_nonnull(cfg);
    struct tls *tls = tls_new(cfg, collect, e);
    config_unref(cfg);
    return tls;
}

#define LISTENER                                                                                   \
    "upstream http://127.0.0.1:9000\n"                                                             \
    "listen 127.0.0.1:8443 tls\n"
#define PAIR(cert, key)                                                                            \
    "tls_certificate DIR/" cert "\n"                                                               \
    "tls_certificate_key DIR/" key "\n"

static void expect_error(const char *text, const char *needle)
{
    struct errors e = {{NULL}, 0};
    struct tls *tls = tls_for(text, &e);
    if (!errors_have(&e, needle)) {
        fprintf(stderr, "expected \"%s\", got %d error(s):\n", needle, e.n);
        for (int i = 0; i < e.n; i++)
            fprintf(stderr, "  %s\n", e.msg[i]);
    }
    ck_assert_ptr_null(tls);
    ck_assert(errors_have(&e, needle));
    errors_free(&e);
}

static void expect_ok(const char *text)
{
    struct errors e = {{NULL}, 0};
    struct tls *tls = tls_for(text, &e);
    for (int i = 0; i < e.n; i++)
        fprintf(stderr, "unexpected: %s\n", e.msg[i]);
    ck_assert_int_eq(e.n, 0);
    ck_assert_ptr_nonnull(tls);
    ck_assert_ptr_eq(tls_ref(tls), tls);
    tls_unref(tls);
    tls_unref(tls);
    errors_free(&e);
}

START_TEST(test_plain_needs_nothing)
{
    expect_ok("upstream http://127.0.0.1:9000\n");
}
END_TEST

START_TEST(test_listener_ok)
{
    make_pair("a");
    expect_ok(LISTENER PAIR("a.pem", "a.key"));
    expect_ok(LISTENER PAIR("a.pem", "a.key") "tls_protocols TLSv1.3\n"
                                              "tls_ciphersuites TLS_AES_128_GCM_SHA256\n");
}
END_TEST

START_TEST(test_key_readable_by_others)
{
    make_pair("a");
    char *key = path_of("a.key");
    char want[256];
    ck_assert_int_eq(chmod(key, 0644), 0);
    snprintf(want, sizeof(want),
             "t.conf:4: tls_certificate_key: %s is readable by group or others (mode 0644); "
             "chmod 600 it",
             key);
    expect_error(LISTENER PAIR("a.pem", "a.key"), want);
    ck_assert_int_eq(chmod(key, 0640), 0);
    expect_error(LISTENER PAIR("a.pem", "a.key"), "(mode 0640)");
    free(key);
}
END_TEST

START_TEST(test_missing_and_bad_files)
{
    make_pair("a");
    expect_error(LISTENER PAIR("nope.pem", "a.key"), "t.conf:3: tls_certificate: cannot read ");
    expect_error(LISTENER PAIR("nope.pem", "a.key"), "nope.pem: No such file or directory");
    write_file("junk.pem", "not a certificate\n", 0644);
    expect_error(LISTENER PAIR("junk.pem", "a.key"), "t.conf:3: tls_certificate: cannot load ");
    write_file("junk.key", "not a key\n", 0600);
    expect_error(LISTENER PAIR("a.pem", "junk.key"), "t.conf:4: tls_certificate_key: cannot load ");
}
END_TEST

START_TEST(test_key_of_another_certificate)
{
    make_pair("a");
    make_pair("b");
    expect_error(LISTENER PAIR("a.pem", "b.key"), "t.conf:4: tls_certificate_key: ");
    expect_error(LISTENER PAIR("a.pem", "b.key"), "b.key is not the key of ");
}
END_TEST

START_TEST(test_bad_cipher_lists)
{
    make_pair("a");
    expect_error(LISTENER PAIR("a.pem", "a.key") "tls_ciphers NOPE-NOPE\n",
                 "t.conf:5: tls_ciphers: no usable cipher in \"NOPE-NOPE\"");
    expect_error(LISTENER PAIR("a.pem", "a.key") "tls_ciphersuites TLS_NOPE\n",
                 "t.conf:5: tls_ciphersuites: no usable suite in \"TLS_NOPE\"");
}
END_TEST

START_TEST(test_every_problem_reported)
{
    struct errors e = {{NULL}, 0};
    make_pair("a");
    ck_assert_int_eq(chmod(dir, 0700), 0);
    struct tls *tls = tls_for(LISTENER PAIR("nope.pem", "nope.key") "tls_ciphers NOPE\n"
                                                                    "upstream https://x\n"
                                                                    "upstream_tls_ca DIR/ca.pem\n",
                              &e);
    ck_assert_ptr_null(tls);
    ck_assert_int_eq(e.n, 4);
    ck_assert(errors_have(&e, "t.conf:3: tls_certificate: cannot read"));
    ck_assert(errors_have(&e, "t.conf:4: tls_certificate_key: cannot read"));
    ck_assert(errors_have(&e, "t.conf:5: tls_ciphers: "));
    ck_assert(errors_have(&e, "t.conf:7: upstream_tls_ca: cannot read"));
    errors_free(&e);
}
END_TEST

START_TEST(test_upstream_side)
{
    make_pair("ca");
    make_pair("client");
    expect_ok("upstream https://api.example\n");
    expect_ok("upstream https://api.example\nupstream_tls_ca DIR/ca.pem\n"
              "upstream_tls_certificate DIR/client.pem\n"
              "upstream_tls_certificate_key DIR/client.key\n");
    write_file("junk.pem", "junk\n", 0644);
    expect_error("upstream https://api.example\nupstream_tls_ca DIR/junk.pem\n",
                 "t.conf:2: upstream_tls_ca: cannot load ");
    ck_assert_int_eq(chmod(dir, 0755), 0);
    char *key = path_of("client.key");
    ck_assert_int_eq(chmod(key, 0604), 0);
    free(key);
    expect_error("upstream https://api.example\n"
                 "upstream_tls_certificate DIR/client.pem\n"
                 "upstream_tls_certificate_key DIR/client.key\n",
                 "t.conf:3: upstream_tls_certificate_key: ");
    /* the files of an unused side are not read */
    expect_ok("upstream http://api.example\nupstream_tls_ca DIR/missing.pem\n"
              "tls_certificate DIR/missing.pem\n");
}
END_TEST

static Suite *tls_suite(void)
{
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("tls_new");
    tcase_add_checked_fixture(tc, make_dir, remove_dir);
    tcase_add_test(tc, test_plain_needs_nothing);
    tcase_add_test(tc, test_listener_ok);
    tcase_add_test(tc, test_key_readable_by_others);
    tcase_add_test(tc, test_missing_and_bad_files);
    tcase_add_test(tc, test_key_of_another_certificate);
    tcase_add_test(tc, test_bad_cipher_lists);
    tcase_add_test(tc, test_every_problem_reported);
    tcase_add_test(tc, test_upstream_side);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(tls_suite)
