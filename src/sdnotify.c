/*
 * sdnotify.c - systemd's notify protocol without libsystemd.
 *
 * A state string is one datagram to the AF_UNIX socket named by
 * NOTIFY_SOCKET: a filesystem path ("/run/systemd/notify") or, when it starts
 * with '@', a name in the abstract namespace (the '@' becomes a NUL and the
 * address length is exact, since abstract names are not NUL-terminated).
 *
 * Each call opens a socket, sends and closes it. Messages are rare (start,
 * reload, stop, and a watchdog ping every few seconds), so the extra syscalls
 * cost nothing; in exchange no descriptor is shared between threads or left
 * to close at exit, and a changed NOTIFY_SOCKET is honoured. The socket is
 * non-blocking: when systemd's queue is full the datagram is dropped and
 * logged at debug rather than stalling an event loop.
 */
#include "sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

/* Fills addr from NOTIFY_SOCKET; returns the address length, 0 when unusable. */
static socklen_t notify_address(const char *name, struct sockaddr_un *addr)
{
    size_t len = strlen(name);

    if ((name[0] != '/' && name[0] != '@') || len < 2 || len > sizeof(addr->sun_path))
        return 0;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, name, len);
    if (name[0] == '@') {
        addr->sun_path[0] = '\0';
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    if (len == sizeof(addr->sun_path)) /* no room for the terminating NUL */
        return 0;
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

void sdnotify_send(const char *state)
{
    const char *name = getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr;

    if (name == NULL || name[0] == '\0')
        return;
    socklen_t addrlen = notify_address(name, &addr);
    if (addrlen == 0) {
        log_debug("sd_notify: unsupported NOTIFY_SOCKET %s", name);
        return;
    }

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        log_debug("sd_notify: socket: %s", strerror(errno));
        return;
    }
    ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr, addrlen);
    if (n < 0)
        log_debug("sd_notify: sending to %s: %s", name, strerror(errno));
    close(fd);
}

/* A decimal number with nothing around it; IDEM_ERR otherwise. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;

    if (s == NULL || s[0] < '0' || s[0] > '9')
        return IDEM_ERR;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return IDEM_ERR;
    *out = v;
    return IDEM_OK;
}

uint64_t sdnotify_watchdog_usec(void)
{
    uint64_t usec;
    uint64_t pid;
    const char *pid_env = getenv("WATCHDOG_PID");

    if (parse_u64(getenv("WATCHDOG_USEC"), &usec) != IDEM_OK)
        return 0;
    /* Set by systemd for the main process; a child that inherited it must not ping. */
    if (pid_env != NULL && (parse_u64(pid_env, &pid) != IDEM_OK || pid != (uint64_t)getpid()))
        return 0;
    return usec;
}
