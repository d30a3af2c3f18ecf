/*
 * sdnotify.h - systemd's notify protocol (sd_notify(3)), implemented on a
 * datagram socket so we need no libsystemd: READY=1, RELOADING=1,
 * STOPPING=1, WATCHDOG=1 and STATUS=.
 *
 * Does nothing when NOTIFY_SOCKET is not set. Never blocks: the socket is
 * non-blocking and a lost datagram is only logged at debug.
 */
#ifndef IDEM_SDNOTIFY_H
#define IDEM_SDNOTIFY_H

#include <stdint.h>

/* Sends one state string, e.g. "READY=1\nSTATUS=serving". */
void sdnotify_send(const char *state);

/*
 * The watchdog interval systemd asked for (WATCHDOG_USEC, honouring
 * WATCHDOG_PID), in microseconds; 0 when disabled.
 */
uint64_t sdnotify_watchdog_usec(void);

#endif
