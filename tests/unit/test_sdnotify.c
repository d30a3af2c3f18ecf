/*
 * test_sdnotify.c - the notify datagram reaches a socket named by a path or
 * by an abstract name; a missing or odd NOTIFY_SOCKET is harmless; the
 * watchdog interval honours WATCHDOG_PID.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "sdnotify.h"
#include "unit.h"

/* Binds a datagram socket to addr (len bytes); returns it. */
static int bind_receiver(const struct sockaddr_un *addr, socklen_t len)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_msg(bind(fd, (const struct sockaddr *)addr, len) == 0, "bind: %s", strerror(errno));
    return fd;
}

/* The one datagram waiting on fd, NUL-terminated; fails if none is queued. */
static void receive(int fd, char *buf, size_t cap)
{
    ssize_t n = recv(fd, buf, cap - 1, MSG_DONTWAIT);
    ck_assert_msg(n >= 0, "recv: %s", strerror(errno));
    buf[n] = '\0';
}

static void assert_nothing_queued(int fd)
{
    char buf[16];
    ck_assert_int_lt(recv(fd, buf, sizeof(buf), MSG_DONTWAIT), 0);
    ck_assert_int_eq(errno, EAGAIN);
}

START_TEST(send_to_path)
{
    char dir[] = "/tmp/idemproxy-sdnotify.XXXXXX";
    struct sockaddr_un addr;
    char buf[256];

    ck_assert_ptr_nonnull(mkdtemp(dir));
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/notify", dir);
    int fd = bind_receiver(&addr, sizeof(addr));

    ck_assert_int_eq(setenv("NOTIFY_SOCKET", addr.sun_path, 1), 0);
    sdnotify_send("READY=1");
    receive(fd, buf, sizeof(buf));
    ck_assert_str_eq(buf, "READY=1");

    sdnotify_send("STOPPING=1\nSTATUS=draining 3 connections");
    receive(fd, buf, sizeof(buf));
    ck_assert_str_eq(buf, "STOPPING=1\nSTATUS=draining 3 connections");
    assert_nothing_queued(fd);

    close(fd);
    unlink(addr.sun_path);
    rmdir(dir);
}
END_TEST

START_TEST(send_to_abstract)
{
    char name[64];
    struct sockaddr_un addr;
    char buf[256];

    snprintf(name, sizeof(name), "@idemproxy-test-%ld", (long)getpid());
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path + 1, name + 1, strlen(name) - 1);
    /* Abstract names are exactly their length: no trailing NULs belong to them. */
    int fd =
        bind_receiver(&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name)));

    ck_assert_int_eq(setenv("NOTIFY_SOCKET", name, 1), 0);
    sdnotify_send("READY=1\nSTATUS=serving");
    receive(fd, buf, sizeof(buf));
    ck_assert_str_eq(buf, "READY=1\nSTATUS=serving");
    assert_nothing_queued(fd);
    close(fd);
}
END_TEST

START_TEST(unset_or_unusable_socket)
{
    /* At debug, so the messages about dropped datagrams are formatted too. */
    struct config cfg;
    char err[128];
    memset(&cfg, 0, sizeof(cfg));
    cfg.error_log = "stderr";
    cfg.access_log = "off";
    cfg.log_level = LOG_DEBUG;
    ck_assert_int_eq(log_configure(&cfg, err, sizeof(err)), IDEM_OK);

    ck_assert_int_eq(unsetenv("NOTIFY_SOCKET"), 0);
    sdnotify_send("READY=1");

    ck_assert_int_eq(setenv("NOTIFY_SOCKET", "", 1), 0);
    sdnotify_send("READY=1");

    ck_assert_int_eq(setenv("NOTIFY_SOCKET", "relative/path", 1), 0);
    sdnotify_send("READY=1");

    ck_assert_int_eq(setenv("NOTIFY_SOCKET", "@", 1), 0);
    sdnotify_send("READY=1");

    char long_name[200];
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[0] = '/';
    long_name[sizeof(long_name) - 1] = '\0';
    ck_assert_int_eq(setenv("NOTIFY_SOCKET", long_name, 1), 0);
    sdnotify_send("READY=1");

    /* Nobody listening: the datagram is lost and only logged at debug. */
    ck_assert_int_eq(setenv("NOTIFY_SOCKET", "/nonexistent/idemproxy/notify", 1), 0);
    sdnotify_send("WATCHDOG=1");
    log_close();
}
END_TEST

START_TEST(watchdog_usec)
{
    char pid[32];

    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 0);

    setenv("WATCHDOG_USEC", "30000000", 1);
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 30000000);

    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 30000000);

    snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 0);

    setenv("WATCHDOG_PID", "not-a-pid", 1);
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");

    setenv("WATCHDOG_USEC", "", 1);
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "-5", 1);
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "30s", 1);
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "0", 1);
    ck_assert_uint_eq(sdnotify_watchdog_usec(), 0);
}
END_TEST

static Suite *sdnotify_suite(void)
{
    Suite *s = suite_create("sdnotify");
    TCase *tc = tcase_create("sdnotify");

    tcase_add_test(tc, send_to_path);
    tcase_add_test(tc, send_to_abstract);
    tcase_add_test(tc, unset_or_unusable_socket);
    tcase_add_test(tc, watchdog_usec);
    suite_add_tcase(s, tc);
    return s;
}

UNIT_MAIN(sdnotify_suite)
